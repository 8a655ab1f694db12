//! The protection configuration of a table: what `event_crypto.protected_columns` and `event_crypto.blind_indexes`
//! say, checked against the table as it is now.
//!
//! A configuration is read once per backend and table, with its columns resolved to attribute numbers *and
//! types*: the protected column must be jsonb and blind index columns text or varchar, whatever the catalog says
//! (a column renamed away and re-added with another type, or a configuration row written by hand, is refused
//! with `42804`, never read through a pointer of the wrong type). It is dropped on any change to the
//! configuration tables or to the table's definition (relcache invalidation), and every use checks again that the
//! row descriptor at hand still has those columns with those types ([`Config::fits`]).

use crate::access::as_catalog_owner;

use crate::catalog::{get, get_opt, ANCESTORS};
use crate::error::spi_error;
use event_crypto_core::blind::Normalize;
use event_crypto_core::path::{FieldPath, Location, Selector, Step};
use event_crypto_core::token::TokenFormat;
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;
use pgrx::{JsonB, PgTupleDesc};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::rc::Rc;

/// A resolved column of the protected table.
#[derive(Clone, Debug)]
pub struct Col {
    pub name: String,
    pub attno: NonZeroUsize,
    /// The column's type and its output function, for the text form of key and context values.
    pub type_oid: pg_sys::Oid,
    pub output: pg_sys::Oid,
}

impl Col {
    /// Whether the descriptor still has this column, undropped, at the same position with the same type.
    /// (Checked for every row: the fields are compared as stored, without converting the name or the type.)
    fn fits(&self, desc: &PgTupleDesc<'_>) -> bool {
        desc.get(self.attno.get() - 1).is_some_and(|a| {
            // SAFETY: attname is a NUL-terminated NameData.
            let name = unsafe { std::ffi::CStr::from_ptr(a.attname.data.as_ptr()) };
            !a.attisdropped && a.atttypid == self.type_oid && name.to_bytes() == self.name.as_bytes()
        })
    }
}

/// Which types a configured column may have.
#[derive(Clone, Copy)]
pub enum ColumnType {
    /// The protected column: jsonb or json.
    Payload,
    /// A blind index column: text or varchar.
    BlindIndex,
    /// A key, context or type column: any type (its text output is used).
    Any,
}

pub enum KeySpec {
    Fixed(String),
    Column { col: Col, prefix: String },
}

pub struct BlindSpec {
    pub path: FieldPath,
    /// The location the path names (blind index paths have no wildcard).
    pub location: Location,
    pub target: Col,
    pub key_id: String,
    pub normalize: Normalize,
}

pub struct Config {
    /// The table's name, for messages.
    pub table: String,
    pub payload: Col,
    /// Fields for every row.
    pub fields: Selector,
    /// Fields for rows of a type: the common fields and the type's own.
    pub by_type: HashMap<String, Selector>,
    /// Fields for rows of a type `fields_by_type` does not name (or a NULL type): the common fields and the
    /// list under `"*"`, or (`allow_unlisted_types`) the common fields alone; `None`: such rows are refused.
    pub unlisted: Option<Selector>,
    pub type_col: Option<Col>,
    pub key: KeySpec,
    pub context: Option<Col>,
    pub new_key_when_forgotten: bool,
    pub blind: Vec<BlindSpec>,
    /// The PII guard (`unprotected_pii`).
    pub guard: PiiGuard,
    /// `compress`: 'none' or 'zstd' (the threshold is read when a row is written).
    pub compress: String,
    /// `tokenize_fields`: the paths whose string values are replaced by their tokens, one selector per format
    /// (empty: nothing is tokenized).
    pub tokenize: Vec<(TokenFormat, Selector)>,
    /// The paths of `tokenize_fields` (the PII guard does not report what it finds at them: tokens look like
    /// e-mail addresses and card numbers).
    pub token_paths: Vec<FieldPath>,
}

/// What the protect trigger does about personal data outside the configured fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PiiGuard {
    Ignore,
    Warn,
    Error,
}

impl PiiGuard {
    pub fn parse(s: &str) -> Option<PiiGuard> {
        match s {
            "ignore" => Some(PiiGuard::Ignore),
            "warn" => Some(PiiGuard::Warn),
            "error" => Some(PiiGuard::Error),
            _ => None,
        }
    }
}

impl Config {
    /// Whether every configured column is still where, and of the type, it was when the configuration was read.
    pub fn fits(&self, desc: &PgTupleDesc<'_>) -> bool {
        let key = match &self.key {
            KeySpec::Column { col, .. } => Some(col),
            KeySpec::Fixed(_) => None,
        };
        std::iter::once(&self.payload)
            .chain(key)
            .chain(self.context.as_ref())
            .chain(self.type_col.as_ref())
            .chain(self.blind.iter().map(|b| &b.target))
            .all(|c| c.fits(desc))
    }

    /// The key prefix, for tables keyed per subject.
    pub fn key_prefix(&self) -> Option<&str> {
        match &self.key {
            KeySpec::Column { prefix, .. } => Some(prefix),
            KeySpec::Fixed(_) => None,
        }
    }
}

fn config_error(table: &str, message: String) -> Error {
    Error::new(ErrorKind::ConfigColumn, message).with_hint(format!(
        "Run event_crypto.protect() for {table} again to update its configuration."
    ))
}

/// Resolves a column by name and checks its type.
pub fn resolve_col(desc: &PgTupleDesc<'_>, table: &str, name: &str, ty: ColumnType) -> Result<Col> {
    for (i, att) in desc.iter().enumerate() {
        if att.is_dropped() || att.name() != name {
            continue;
        }
        let type_oid = att.type_oid().value();
        let ok = match ty {
            ColumnType::Payload => type_oid == pg_sys::JSONBOID || type_oid == pg_sys::JSONOID,
            ColumnType::BlindIndex => type_oid == pg_sys::TEXTOID || type_oid == pg_sys::VARCHAROID,
            ColumnType::Any => true,
        };
        if !ok {
            let expected = match ty {
                ColumnType::Payload => "jsonb or json",
                ColumnType::BlindIndex => "text or varchar",
                ColumnType::Any => "any type",
            };
            return Err(Error::new(
                ErrorKind::WrongColumnType,
                format!(
                    "column \"{name}\" of {table} is of type {}, not {expected}",
                    type_name(type_oid)
                ),
            )
            .with_hint(format!(
                "Run event_crypto.protect() for {table} again, or restore the column's type."
            )));
        }
        let mut output = pg_sys::InvalidOid;
        let mut varlena = false;
        // SAFETY: a valid type oid from the relation's descriptor; raises on a broken catalog.
        unsafe { pg_sys::getTypeOutputInfo(type_oid, &mut output, &mut varlena) };
        return Ok(Col {
            name: name.to_string(),
            attno: NonZeroUsize::new(i + 1).expect("i + 1 > 0"),
            type_oid,
            output,
        });
    }
    Err(config_error(
        table,
        format!("column \"{name}\" of protected table {table} does not exist"),
    ))
}

/// A type's name, for messages.
pub fn type_name(oid: pg_sys::Oid) -> String {
    // SAFETY: format_type_be handles any oid (unknown ones print as ???).
    unsafe {
        std::ffi::CStr::from_ptr(pg_sys::format_type_be(oid))
            .to_string_lossy()
            .into_owned()
    }
}

/// A row of `event_crypto.protected_columns` (its table by name, for messages).
#[derive(Clone)]
pub struct ConfigRow {
    pub table: String,
    pub fields: Vec<String>,
    pub key_id: Option<String>,
    pub key_column: Option<String>,
    pub key_prefix: String,
    pub context_column: Option<String>,
    pub type_column: Option<String>,
    pub fields_by_type: Option<Value>,
    pub on_forgotten: String,
    pub allow_unlisted_types: bool,
    pub unprotected_pii: String,
    /// 'none' or 'zstd'.
    pub compress: String,
    /// `tokenize_fields`: field paths, each optionally followed by `:opaque`, `:card` or `:email`.
    pub tokenize_fields: Vec<String>,
}

/// A row of `event_crypto.blind_indexes`.
pub struct BlindRow {
    pub field: String,
    pub target: String,
    pub key_id: String,
    pub normalize: Option<String>,
}

/// The columns of `event_crypto.protected_columns` that [`ConfigRow::from_spi`] reads, in its order (under the SQL
/// objects of a release before 0.3.0, which have neither the PII guard nor compression nor tokenization,
/// `unprotected_pii` reads as `'ignore'`, `compress` as `'none'` and `tokenize_fields` as empty).
pub fn config_row_columns() -> &'static str {
    if crate::keys::catalog().pii_guard {
        "table_name::pg_catalog.text, fields, key_id, key_column::pg_catalog.text, key_prefix, \
         context_column::pg_catalog.text, type_column::pg_catalog.text, fields_by_type, on_forgotten, \
         allow_unlisted_types, unprotected_pii, compress, tokenize_fields"
    } else {
        "table_name::pg_catalog.text, fields, key_id, key_column::pg_catalog.text, key_prefix, \
         context_column::pg_catalog.text, type_column::pg_catalog.text, fields_by_type, on_forgotten, \
         allow_unlisted_types, 'ignore'::pg_catalog.text, 'none'::pg_catalog.text, '{}'::pg_catalog.text[]"
    }
}

impl ConfigRow {
    /// Reads [`config_row_columns`] from a result row, starting at column `first` (1-based).
    pub fn from_spi(r: &SpiHeapTupleData<'_>, first: usize) -> Result<ConfigRow> {
        Ok(ConfigRow {
            table: get(r, first, "table_name")?,
            fields: get::<Vec<String>>(r, first + 1, "fields")?,
            key_id: get_opt(r, first + 2, "key_id")?,
            key_column: get_opt(r, first + 3, "key_column")?,
            key_prefix: get(r, first + 4, "key_prefix")?,
            context_column: get_opt(r, first + 5, "context_column")?,
            type_column: get_opt(r, first + 6, "type_column")?,
            fields_by_type: get_opt::<JsonB>(r, first + 7, "fields_by_type")?.map(|j| j.0),
            on_forgotten: get(r, first + 8, "on_forgotten")?,
            allow_unlisted_types: get(r, first + 9, "allow_unlisted_types")?,
            unprotected_pii: get(r, first + 10, "unprotected_pii")?,
            compress: get(r, first + 11, "compress")?,
            tokenize_fields: get::<Vec<String>>(r, first + 12, "tokenize_fields")?,
        })
    }
}

/// The configuration rows of `relid`.`column`: its own, or, for a table that inherits from a protected table
/// (INHERITS, or a partition), those of its nearest protected ancestor (resolved against the inheritor's own
/// columns by name).
fn read_rows(relid: pg_sys::Oid, column: &str) -> Result<(Option<ConfigRow>, Vec<BlindRow>)> {
    let relid = super::target::configured_relation(relid)?;
    as_catalog_owner(|| {
        Spi::connect(|client| {
            let args = [relid.into(), column.into()];
            let t = client
                .select(
                    &format!(
                        "{ANCESTORS}SELECT p.table_name::pg_catalog.oid, {columns} \
                         FROM event_crypto.protected_columns p JOIN up ON p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) up.oid \
                         WHERE p.column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                         ORDER BY up.depth LIMIT 1",
                        columns = super::config::config_row_columns(),
                    ),
                    Some(1),
                    &args,
                )
                .map_err(spi_error)?;
            let Some((owner_table, row)) = t
                .into_iter()
                .next()
                .map(|r| Ok::<_, Error>((get::<pg_sys::Oid>(&r, 1, "table_name")?, ConfigRow::from_spi(&r, 2)?)))
                .transpose()?
            else {
                return Ok((None, Vec::new()));
            };
            let t = client
                .select(
                    "SELECT field, target_column::pg_catalog.text, key_id, normalize FROM event_crypto.blind_indexes \
                     WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                       AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name ORDER BY target_column",
                    None,
                    &[owner_table.into(), column.into()],
                )
                .map_err(spi_error)?;
            let blind = t
                .into_iter()
                .map(|r| {
                    Ok(BlindRow {
                        field: get(&r, 1, "field")?,
                        target: get(&r, 2, "target_column")?,
                        key_id: get(&r, 3, "key_id")?,
                        normalize: get_opt(&r, 4, "normalize")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((Some(row), blind))
        })
    })
}

pub fn parse_paths(texts: &[String]) -> Result<Vec<FieldPath>> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i & 1023 == 0 {
                pgrx::check_for_interrupts!();
            }
            FieldPath::parse(t)
        })
        .collect()
}

/// The entry of `fields_by_type` that lists the fields of every type it does not name (and of rows whose type is
/// NULL), besides the common fields.
pub const UNLISTED_TYPES: &str = "*";

/// The field lists of `fields_by_type`: type name → paths. Refuses anything but an object of arrays of strings.
pub fn by_type_lists(by_type: &Value) -> Result<Vec<(String, Vec<String>)>> {
    let Value::Object(map) = by_type else {
        return Err(Error::invalid_argument(
            "fields_by_type must be a JSON object mapping type names to arrays of field paths",
        ));
    };
    map.iter()
        .map(|(ty, list)| {
            let texts = list
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|v| v.as_str().map(String::from))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "fields_by_type for type \"{ty}\" must be an array of field paths"
                    ))
                })?;
            Ok((ty.clone(), texts))
        })
        .collect()
}

/// Builds the configuration of `relid`.`column` from its rows, against the descriptor `desc`.
pub fn build(column: &str, desc: &PgTupleDesc<'_>, row: ConfigRow, blind: Vec<BlindRow>) -> Result<Config> {
    let table = row.table;
    let payload = resolve_col(desc, &table, column, ColumnType::Payload)?;
    let fields = parse_paths(&row.fields)?;
    let mut by_type = HashMap::new();
    if let Some(v) = &row.fields_by_type {
        for (ty, texts) in by_type_lists(v)? {
            let mut all = fields.clone();
            all.extend(parse_paths(&texts)?);
            by_type.insert(ty, Selector::new(&all)?);
        }
    }
    let unlisted = match by_type.remove(UNLISTED_TYPES) {
        Some(s) => Some(s),
        None if row.allow_unlisted_types => Some(Selector::new(&fields)?),
        None => None,
    };
    let key = match (row.key_id, row.key_column) {
        (Some(k), None) => KeySpec::Fixed(k),
        (None, Some(c)) => KeySpec::Column {
            col: resolve_col(desc, &table, &c, ColumnType::Any)?,
            prefix: row.key_prefix,
        },
        _ => {
            return Err(config_error(
                &table,
                format!("protection of {table} names no key, or two"),
            ))
        }
    };
    let context = row
        .context_column
        .map(|c| resolve_col(desc, &table, &c, ColumnType::Any))
        .transpose()?;
    let type_col = row
        .type_column
        .map(|c| resolve_col(desc, &table, &c, ColumnType::Any))
        .transpose()?;
    let blind = blind
        .into_iter()
        .map(|b| {
            let path = FieldPath::parse(&b.field)?;
            let location = Location::of_path(&path).ok_or_else(|| {
                config_error(
                    &table,
                    format!("blind index field \"{}\" selects several values", b.field),
                )
            })?;
            Ok(BlindSpec {
                path,
                location,
                target: resolve_col(desc, &table, &b.target, ColumnType::BlindIndex)?,
                key_id: b.key_id,
                normalize: Normalize::parse(b.normalize.as_deref())?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    event_crypto_core::compress::Compression::parse(&row.compress, 0)?;
    let tokenize = token_selectors(&row.tokenize_fields)?;
    let token_paths = row
        .tokenize_fields
        .iter()
        .map(|t| parse_token_field(t).map(|(p, _)| p))
        .collect::<Result<Vec<_>>>()?;
    Ok(Config {
        table,
        payload,
        fields: Selector::new(&fields)?,
        by_type,
        unlisted,
        type_col,
        key,
        context,
        new_key_when_forgotten: row.on_forgotten == "new_key",
        blind,
        guard: PiiGuard::parse(&row.unprotected_pii).unwrap_or(PiiGuard::Error),
        compress: row.compress,
        tokenize,
        token_paths,
    })
}

/// One entry of `tokenize_fields`: a field path in the syntax of `fields`, optionally followed by `:` and a token
/// format (`email:email`, `card.number:card`; without a suffix, `opaque`). The format is what follows the last `:`
/// outside double quotes; a key that contains `:` is written quoted (`"a:b"`, `"a:b":card`). An unknown format
/// is refused (22023), never taken as part of the key.
pub fn parse_token_field(text: &str) -> Result<(FieldPath, TokenFormat)> {
    let mut quoted = false;
    let mut escaped = false;
    let mut colon = None;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ':' if !quoted => colon = Some(i),
            _ => {}
        }
    }
    let (path, format) = match colon {
        Some(i) => {
            let format = TokenFormat::parse(&text[i + 1..]).map_err(|_| {
                Error::invalid_argument(format!(
                    "tokenize_fields entry \"{}\" names an unknown token format",
                    event_crypto_core::aead::truncate_for_message(text)
                ))
                .with_hint(
                    "Write path, path:opaque, path:card or path:email; quote keys that contain a colon (\"a:b\").",
                )
            })?;
            (&text[..i], format)
        }
        None => (text, TokenFormat::Opaque),
    };
    Ok((FieldPath::parse(path)?, format))
}

/// Whether two paths can select the same value, or one a value inside the other's (`a` and `a.b`, `items[*].x`
/// and `items[0]`).
pub fn paths_overlap(a: &FieldPath, b: &FieldPath) -> bool {
    a.steps().iter().zip(b.steps()).all(|(x, y)| match (x, y) {
        (Step::Key(k), Step::Key(l)) => k == l,
        (Step::Index(i), Step::Index(j)) => i == j,
        (Step::Wildcard, Step::Index(_) | Step::Wildcard) | (Step::Index(_), Step::Wildcard) => true,
        _ => false,
    })
}

/// The selectors of `tokenize_fields`, one per format used (checked: no two entries overlap).
pub fn token_selectors(texts: &[String]) -> Result<Vec<(TokenFormat, Selector)>> {
    let parsed = texts.iter().map(|t| parse_token_field(t)).collect::<Result<Vec<_>>>()?;
    for (i, (a, _)) in parsed.iter().enumerate() {
        if let Some((b, _)) = parsed[..i].iter().find(|(b, _)| paths_overlap(a, b)) {
            return Err(Error::invalid_argument(format!(
                "tokenize_fields \"{}\" and \"{}\" overlap",
                event_crypto_core::aead::truncate_for_message(b.text()),
                event_crypto_core::aead::truncate_for_message(a.text())
            ))
            .with_detail("Each value is tokenized once, in one format."));
        }
    }
    let mut out = Vec::new();
    for format in [TokenFormat::Opaque, TokenFormat::Card, TokenFormat::Email] {
        let paths: Vec<FieldPath> = parsed
            .iter()
            .filter(|(_, f)| *f == format)
            .map(|(p, _)| p.clone())
            .collect();
        if !paths.is_empty() {
            out.push((format, Selector::new(&paths)?));
        }
    }
    Ok(out)
}

fn load(relid: pg_sys::Oid, column: &str, desc: &PgTupleDesc<'_>) -> Result<Option<Config>> {
    let (row, blind) = read_rows(relid, column)?;
    row.map(|row| build(column, desc, row, blind)).transpose()
}

thread_local! {
    /// (table, column, configuration): a handful of entries per backend, searched linearly without allocating.
    static CONFIG: RefCell<Vec<(pg_sys::Oid, String, Rc<Config>)>> = const { RefCell::new(Vec::new()) };
}

/// Drops cached configurations: all of them, or those of one table.
pub fn invalidate(relid: Option<pg_sys::Oid>) {
    super::target::invalidate(relid);
    CONFIG.with(|c| {
        if let Ok(mut m) = c.try_borrow_mut() {
            match relid {
                None => m.clear(),
                Some(r) => m.retain(|(t, _, _)| *t != r),
            }
        }
    });
}

/// The configuration of `relid`.`column`, valid for the row descriptor `desc`: from the cache if it still fits
/// the descriptor, else read again (and checked against it). `None` when the column is not protected.
fn lookup(relid: pg_sys::Oid, column: &str, desc: &PgTupleDesc<'_>) -> Result<Option<Rc<Config>>> {
    let cached = CONFIG.with(|m| {
        m.borrow()
            .iter()
            .find(|(t, c, _)| *t == relid && c == column)
            .map(|(_, _, cfg)| cfg.clone())
    });
    if let Some(c) = cached {
        if c.fits(desc) {
            return Ok(Some(c));
        }
        invalidate(Some(relid));
    }
    let Some(c) = load(relid, column, desc)? else {
        return Ok(None);
    };
    let c = Rc::new(c);
    CONFIG.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.push((relid, column.to_string(), c.clone()));
        }
    });
    Ok(Some(c))
}

/// The configuration the protect trigger of `relid`.`column` works with.
pub fn config(relid: pg_sys::Oid, column: &str, desc: &PgTupleDesc<'_>) -> Result<Rc<Config>> {
    lookup(relid, column, desc)?.ok_or_else(|| {
        Error::new(
            ErrorKind::ConfigColumn,
            format!("column \"{column}\" of this table has the event_crypto trigger but no protection configuration"),
        )
        .with_hint("Run event_crypto.protect() for the table, or drop the trigger.")
    })
}

/// The configuration of `relid`.`column`, opening the table for its descriptor (for callers that are not a
/// trigger on it: the decrypted view, export, re-encryption). `None` when the column is not protected.
pub fn config_of_table(relid: pg_sys::Oid, column: &str) -> Result<Option<Rc<Config>>> {
    // SAFETY: the relation is opened with a lock for the duration of the read and closed again.
    unsafe {
        let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        if rel.is_null() {
            return Ok(None);
        }
        let desc = PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let r = lookup(relid, column, &desc);
        drop(desc);
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        r
    }
}

/// [`config_of_table`], with an unprotected column as an error (`55000`).
pub fn require_config(relid: pg_sys::Oid, column: &str) -> Result<Rc<Config>> {
    config_of_table(relid, column)?.ok_or_else(|| {
        Error::new(
            ErrorKind::NotReady,
            format!("column \"{column}\" of this table is not protected"),
        )
        .with_hint("Call event_crypto.protect() first.")
    })
}
