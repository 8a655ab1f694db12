//! Protected event tables: the BEFORE INSERT OR UPDATE row trigger that encrypts the configured fields and
//! fills blind index columns, and the subject-level operations `forget_subject` and `export_subject`.
//!
//! The configuration (`event_crypto.protected_columns`, `event_crypto.blind_indexes`) is read once per backend
//! and table, with column names resolved to attribute numbers, and dropped on any change to the configuration
//! tables or to the protected table's definition (relcache invalidation). Keys come from the key cache, so a row
//! whose subject key is already known runs no SQL at all.

use crate::error::{raise, spi_failed, OrRaise};
use crate::jsonb::Jsonb;
use crate::keys::{self, as_catalog_owner, KeyEntry};
use event_crypto_core::blind::Normalize;
use event_crypto_core::document::{check_context, needs_encryption, value_at, Encryptor};
use event_crypto_core::envelope::looks_like_envelope;
use event_crypto_core::jsonb::{write_json, Value as JsonbValue};
use event_crypto_core::path::{FieldPath, Selector};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use pgrx::PgTupleDesc;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::num::NonZeroUsize;
use std::rc::Rc;

/// A resolved column of the protected table.
#[derive(Clone)]
struct Col {
    name: String,
    attno: NonZeroUsize,
    /// The column's type and its output function, for the text form of key and context values.
    type_oid: pg_sys::Oid,
    output: pg_sys::Oid,
}

enum KeySpec {
    Fixed(String),
    Column { col: Col, prefix: String },
}

struct BlindSpec {
    path: FieldPath,
    target: Col,
    key_id: String,
    normalize: Normalize,
}

struct Config {
    table: String,
    payload: Col,
    /// Fields for every row.
    fields: Selector,
    /// Fields for rows of a type: the common fields and the type's own.
    by_type: HashMap<String, Selector>,
    type_col: Option<Col>,
    key: KeySpec,
    context: Option<Col>,
    new_key_when_forgotten: bool,
    blind: Vec<BlindSpec>,
}

thread_local! {
    /// (table, column, configuration): a handful of entries per backend, searched linearly without allocating.
    static CONFIG: RefCell<Vec<(pg_sys::Oid, String, Rc<Config>)>> = const { RefCell::new(Vec::new()) };
}

/// Drops cached configurations: all of them, or those of one table.
pub fn invalidate_config(relid: Option<pg_sys::Oid>) {
    CONFIG.with(|c| {
        if let Ok(mut m) = c.try_borrow_mut() {
            match relid {
                None => m.clear(),
                Some(r) => m.retain(|(t, _, _)| *t != r),
            }
        }
    });
}

fn config_error(table: &str, message: String) -> Error {
    Error::new(ErrorKind::ConfigColumn, message).with_hint(format!(
        "Run event_crypto.protect() for {table} again to update its configuration."
    ))
}

fn resolve_col(tupdesc: &PgTupleDesc<'_>, table: &str, name: &str) -> Result<Col> {
    for (i, att) in tupdesc.iter().enumerate() {
        if !att.is_dropped() && att.name() == name {
            let mut output = pg_sys::InvalidOid;
            let mut varlena = false;
            // SAFETY: a valid type oid from the relation's descriptor; raises on a broken catalog.
            unsafe { pg_sys::getTypeOutputInfo(att.type_oid().value(), &mut output, &mut varlena) };
            return Ok(Col {
                name: name.to_string(),
                attno: NonZeroUsize::new(i + 1).expect("i + 1 > 0"),
                type_oid: att.type_oid().value(),
                output,
            });
        }
    }
    Err(config_error(
        table,
        format!("column \"{name}\" of protected table {table} does not exist"),
    ))
}

fn parse_paths(texts: &[String]) -> Result<Vec<FieldPath>> {
    texts.iter().map(|t| FieldPath::parse(t)).collect()
}

fn load_config(relid: pg_sys::Oid, column: &str, tupdesc: &PgTupleDesc<'_>) -> Result<Config> {
    type ConfigRow = (
        String,
        Vec<String>,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
        Option<JsonB>,
        String,
    );
    type BlindRow = (String, String, String, Option<String>);
    let (row, blind): (Option<ConfigRow>, Vec<BlindRow>) = as_catalog_owner(|| {
        Spi::connect(|client| {
            let args = [relid.into(), column.into()];
            let t = client
                .select(
                    "SELECT table_name::pg_catalog.text, fields, key_id, key_column::pg_catalog.text, key_prefix, \
                            context_column::pg_catalog.text, type_column::pg_catalog.text, fields_by_type, on_forgotten \
                     FROM event_crypto.protected_columns \
                     WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                       AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
                    Some(1),
                    &args,
                )
                .unwrap_or_else(|e| spi_failed(e));
            let row = t.into_iter().next().map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<Vec<String>>(2).ok().flatten().unwrap_or_default(),
                    r.get::<String>(3).ok().flatten(),
                    r.get::<String>(4).ok().flatten(),
                    r.get::<String>(5).ok().flatten().unwrap_or_default(),
                    r.get::<String>(6).ok().flatten(),
                    r.get::<String>(7).ok().flatten(),
                    r.get::<JsonB>(8).ok().flatten(),
                    r.get::<String>(9).ok().flatten().unwrap_or_default(),
                )
            });
            let t = client
                .select(
                    "SELECT field, target_column::pg_catalog.text, key_id, normalize FROM event_crypto.blind_indexes \
                     WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                       AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name ORDER BY target_column",
                    None,
                    &args,
                )
                .unwrap_or_else(|e| spi_failed(e));
            let blind = t
                .into_iter()
                .map(|r| {
                    (
                        r.get::<String>(1).ok().flatten().unwrap_or_default(),
                        r.get::<String>(2).ok().flatten().unwrap_or_default(),
                        r.get::<String>(3).ok().flatten().unwrap_or_default(),
                        r.get::<String>(4).ok().flatten(),
                    )
                })
                .collect();
            (row, blind)
        })
    });
    let Some((table, fields, key_id, key_column, key_prefix, context_column, type_column, by_type, on_forgotten)) = row
    else {
        return Err(Error::new(
            ErrorKind::ConfigColumn,
            format!("column \"{column}\" of this table has the event_crypto trigger but no protection configuration"),
        )
        .with_hint("Run event_crypto.protect() for the table, or drop the trigger."));
    };
    let payload = resolve_col(tupdesc, &table, column)?;
    let fields = parse_paths(&fields)?;
    let mut by_type_paths = HashMap::new();
    if let Some(JsonB(Value::Object(map))) = by_type {
        for (ty, list) in map {
            let texts: Vec<String> = list
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let mut all = fields.clone();
            all.extend(parse_paths(&texts)?);
            by_type_paths.insert(ty, Selector::new(&all));
        }
    }
    let key = match (key_id, key_column) {
        (Some(k), _) => KeySpec::Fixed(k),
        (None, Some(c)) => KeySpec::Column {
            col: resolve_col(tupdesc, &table, &c)?,
            prefix: key_prefix,
        },
        (None, None) => return Err(config_error(&table, format!("protection of {table} names no key"))),
    };
    let context = context_column.map(|c| resolve_col(tupdesc, &table, &c)).transpose()?;
    let type_col = type_column.map(|c| resolve_col(tupdesc, &table, &c)).transpose()?;
    let blind = blind
        .into_iter()
        .map(|(field, target, key_id, normalize)| {
            Ok(BlindSpec {
                path: FieldPath::parse(&field)?,
                target: resolve_col(tupdesc, &table, &target)?,
                key_id,
                normalize: Normalize::parse(normalize.as_deref())?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Config {
        table,
        payload,
        fields: Selector::new(&fields),
        by_type: by_type_paths,
        type_col,
        key,
        context,
        new_key_when_forgotten: on_forgotten == "new_key",
        blind,
    })
}

fn config(relid: pg_sys::Oid, column: &str, tupdesc: &PgTupleDesc<'_>) -> Result<Rc<Config>> {
    let cached = CONFIG.with(|m| {
        m.borrow()
            .iter()
            .find(|(t, c, _)| *t == relid && c == column)
            .map(|(_, _, cfg)| cfg.clone())
    });
    if let Some(c) = cached {
        return Ok(c);
    }
    let c = Rc::new(load_config(relid, column, tupdesc)?);
    CONFIG.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.push((relid, column.to_string(), c.clone()));
        }
    });
    Ok(c)
}

/// A row being inserted or updated.
struct Row {
    tuple: *mut pg_sys::HeapTupleData,
    tupdesc: pg_sys::TupleDesc,
}

impl Row {
    fn datum(&self, col: &Col) -> Option<pg_sys::Datum> {
        // SAFETY: tuple and descriptor come from the firing trigger; attno was resolved against this descriptor.
        unsafe { pgrx::heap_getattr_raw(self.tuple, col.attno, self.tupdesc) }
    }

    /// The text form of a column (its type's output function), as `::text` gives in SQL. text, varchar and uuid,
    /// the usual types of subject and stream ids, are formatted here without a call into PostgreSQL; the
    /// pg_regress and integration tests check the result against SQL's own `::text`.
    fn text(&self, col: &Col) -> Option<String> {
        self.datum(col).map(|d| match col.type_oid {
            // SAFETY: a non-null text/varchar datum; detoasting keeps a short header, which the slice handles.
            pg_sys::TEXTOID | pg_sys::VARCHAROID => unsafe {
                let p = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                String::from_utf8_lossy(pgrx::varlena::varlena_to_byte_slice(p)).into_owned()
            },
            pg_sys::UUIDOID => {
                // SAFETY: a uuid datum points to its 16 bytes.
                let b = unsafe { std::slice::from_raw_parts(d.cast_mut_ptr::<u8>() as *const u8, 16) };
                let mut out = String::with_capacity(36);
                for (i, byte) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out.push('-');
                    }
                    out.push(char::from(b"0123456789abcdef"[(byte >> 4) as usize]));
                    out.push(char::from(b"0123456789abcdef"[(byte & 15) as usize]));
                }
                out
            }
            // SAFETY: the output function of the column's own type, applied to a non-null datum of that type.
            _ => unsafe {
                let s = pg_sys::OidOutputFunctionCall(col.output, d);
                CStr::from_ptr(s).to_string_lossy().into_owned()
            },
        })
    }
}

/// The key a row is encrypted with.
fn row_key(cfg: &Config, row: &Row) -> Result<(String, Rc<KeyEntry>)> {
    match &cfg.key {
        KeySpec::Fixed(k) => {
            let e = keys::ensure_key(k)?;
            Ok((k.clone(), e))
        }
        KeySpec::Column { col, prefix } => {
            let subject = row.text(col).ok_or_else(|| {
                Error::new(
                    ErrorKind::NullArgument,
                    format!("key column \"{}\" of protected table {} is NULL", col.name, cfg.table),
                )
                .with_detail("The row's fields cannot be encrypted without a subject; it is refused rather than stored in plaintext.")
            })?;
            if subject.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "key column \"{}\" of protected table {} is an empty string",
                    col.name, cfg.table
                )));
            }
            let key_id = format!("{prefix}{subject}");
            let e = keys::ensure_key(&key_id)?;
            if !e.shredded {
                return Ok((key_id, e));
            }
            if !cfg.new_key_when_forgotten {
                return Err(Error::new(
                    ErrorKind::SubjectForgotten,
                    format!("subject \"{subject}\" has been forgotten: its key \"{key_id}\" was shredded"),
                )
                .with_detail(format!("New data for a forgotten subject is refused in {}.", cfg.table))
                .with_hint("To accept new events of forgotten subjects under a fresh key, call event_crypto.protect() with on_forgotten => 'new_key'."));
            }
            // A fresh key generation: "<key id>#2", "#3", ... (forget_subject shreds every generation).
            for n in 2..=10_000u32 {
                let next = format!("{key_id}#{n}");
                let e = keys::ensure_key(&next)?;
                if !e.shredded {
                    return Ok((next, e));
                }
            }
            Err(Error::new(
                ErrorKind::SubjectForgotten,
                format!("subject \"{subject}\" has no usable key generation left"),
            ))
        }
    }
}

/// The trigger's work for one row; returns the replacement tuple, or None to keep the row as it is.
pub(crate) fn protect_row(trigger: &PgTrigger<'_>) -> Result<Option<*mut pg_sys::HeapTupleData>> {
    let td = trigger.trigger_data();
    // SAFETY: PostgreSQL hands us valid trigger data for a row trigger on an open relation.
    let (rel, event) = unsafe { (&*td.tg_relation, td.tg_event) };
    let is_row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
    let is_before = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE;
    let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
    if !is_row || !is_before || !(op == pg_sys::TRIGGER_EVENT_INSERT || op == pg_sys::TRIGGER_EVENT_UPDATE) {
        return Err(Error::invalid_argument(
            "event_crypto.protect_trigger() must run BEFORE INSERT OR UPDATE FOR EACH ROW",
        ));
    }
    // The trigger's first argument, read in place (pgrx's extra_args() copies every argument into a String).
    // SAFETY: tg_trigger is valid during the call; tgargs has tgnargs NUL-terminated strings.
    let column = unsafe {
        let t = &*td.tg_trigger;
        (t.tgnargs > 0).then(|| CStr::from_ptr(*t.tgargs).to_str().unwrap_or(""))
    };
    let Some(column) = column else {
        return Err(Error::invalid_argument(
            "event_crypto.protect_trigger() needs the protected column as its argument",
        ));
    };
    let tupdesc = rel.rd_att;
    // SAFETY: the relation's descriptor lives as long as the relation is open (the whole trigger call).
    let desc = unsafe { PgTupleDesc::from_pg_unchecked(tupdesc) };
    let cfg = config(rel.rd_id, column, &desc)?;
    let is_update = op == pg_sys::TRIGGER_EVENT_UPDATE;
    let new = Row {
        tuple: if is_update { td.tg_newtuple } else { td.tg_trigtuple },
        tupdesc,
    };

    if is_update {
        // Stored envelopes are bound to the key and context of the row: changing either is refused.
        let old = Row {
            tuple: td.tg_trigtuple,
            tupdesc,
        };
        let key_col = match &cfg.key {
            KeySpec::Column { col, .. } => Some(col),
            KeySpec::Fixed(_) => None,
        };
        for col in key_col.into_iter().chain(cfg.context.as_ref()) {
            if old.text(col) != new.text(col) && new.datum(&cfg.payload).is_some() {
                return Err(Error::new(
                    ErrorKind::RebindRefused,
                    format!(
                        "column \"{}\" of protected table {} cannot be changed",
                        col.name, cfg.table
                    ),
                )
                .with_detail(format!(
                    "The encrypted fields of column \"{}\" are bound to it.",
                    cfg.payload.name
                ))
                .with_hint(
                    "Insert a new row (event) instead of moving encrypted data to another subject or context.",
                ));
            }
        }
    }

    let Some(datum) = new.datum(&cfg.payload) else {
        return Ok(None);
    };
    // SAFETY: a non-null datum of the jsonb column, detoasted for the duration of this call.
    let payload = unsafe { Jsonb::from_datum_packed(datum) };
    let doc = payload.document();

    let mut cols: Vec<i32> = Vec::new();
    let mut values: Vec<pg_sys::Datum> = Vec::new();
    let mut nulls: Vec<bool> = Vec::new();
    let mut set = |col: &Col, value: Option<pg_sys::Datum>| {
        cols.push(col.attno.get() as i32);
        values.push(value.unwrap_or(pg_sys::Datum::from(0usize)));
        nulls.push(value.is_none());
    };

    // Blind indexes are computed from the plaintext, before encryption. A value that is already an envelope
    // (replay, restore, unrelated UPDATE) keeps the index value the row came with.
    for b in &cfg.blind {
        let digest = match value_at(&doc, &b.path)? {
            None | Some(JsonbValue::Null) => None,
            Some(JsonbValue::String(s)) if looks_like_envelope(s) => continue,
            Some(JsonbValue::String(s)) => {
                let s = std::str::from_utf8(s).map_err(|_| Error::invalid_argument("a jsonb string is not UTF-8"))?;
                Some(keys::ensure_key(&b.key_id)?.indexer()?.digest(s, b.normalize))
            }
            Some(v) => {
                // numbers, booleans and containers are indexed by their compact JSON text
                let mut text = Vec::new();
                write_json(&v, &mut text, 0)?;
                let text =
                    String::from_utf8(text).map_err(|_| Error::invalid_argument("a jsonb string is not UTF-8"))?;
                Some(keys::ensure_key(&b.key_id)?.indexer()?.digest(&text, b.normalize))
            }
        };
        set(&b.target, digest.and_then(IntoDatum::into_datum));
    }

    let selector = cfg
        .type_col
        .as_ref()
        .and_then(|c| new.text(c))
        .and_then(|t| cfg.by_type.get(&t))
        .unwrap_or(&cfg.fields);
    if needs_encryption(&doc, selector)? {
        let (key_id, entry) = row_key(&cfg, &new)?;
        let context = match &cfg.context {
            None => None,
            Some(col) => Some(new.text(col).ok_or_else(|| {
                Error::new(
                    ErrorKind::NullArgument,
                    format!(
                        "context column \"{}\" of protected table {} is NULL",
                        col.name, cfg.table
                    ),
                )
                .with_detail(
                    "The row's fields are bound to their context; the row is refused rather than stored in plaintext.",
                )
            })?),
        };
        let context = check_context(context.as_deref())?;
        let (version, cipher) = entry.encryption_key()?;
        let encrypted = Jsonb::build(|out| {
            let n = Encryptor::new(&cipher, &key_id, version, context).encrypt_document(&doc, selector, out)?;
            entry.note_encrypted(version, n);
            Ok(n > 0)
        });
        if let Some(e) = encrypted {
            set(&cfg.payload, e.into_datum());
        }
    }

    if cols.is_empty() {
        return Ok(None);
    }
    // SAFETY: the arrays have one entry per replaced column; the tuple and descriptor belong to this trigger call.
    let tuple = unsafe {
        pg_sys::heap_modify_tuple_by_cols(
            new.tuple,
            tupdesc,
            cols.len() as i32,
            cols.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        )
    };
    Ok(Some(tuple))
}

/// Checks field paths as protect() stores them: each must parse; `allow_wildcards => false` for blind indexes,
/// which index exactly one value.
#[pg_extern(immutable, parallel_safe)]
fn validate_fields(fields: Option<Vec<Option<String>>>, allow_wildcards: default!(bool, true)) -> bool {
    for f in fields.unwrap_or_default() {
        let f =
            f.unwrap_or_else(|| raise(Error::null_argument("fields").with_detail("the array contains a NULL element")));
        let p = FieldPath::parse(&f).or_raise();
        if !allow_wildcards && p.has_wildcard() {
            raise(
                Error::new(
                    ErrorKind::InvalidPath,
                    format!("field path \"{f}\" selects several values"),
                )
                .with_hint("A blind index covers exactly one value per row: use a path without [*]."),
            );
        }
    }
    true
}

/// Checks a blind index normalisation name.
#[pg_extern(immutable, parallel_safe)]
fn validate_normalize(normalize: Option<&str>) -> bool {
    Normalize::parse(normalize).or_raise();
    true
}

/// A protected table whose rows are keyed per subject.
struct SubjectTable {
    table: String,
    column: String,
    key_column: String,
    key_prefix: String,
    context_column: Option<String>,
    blind_targets: Vec<String>,
}

fn subject_tables(client: &SpiClient<'_>) -> Vec<SubjectTable> {
    let t = client
        .select(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), p.column_name::pg_catalog.text, \
                    p.key_column::pg_catalog.text, p.key_prefix, p.context_column::pg_catalog.text, \
                    ARRAY(SELECT b.target_column::pg_catalog.text FROM event_crypto.blind_indexes b \
                          WHERE b.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) p.table_name::pg_catalog.oid \
                            AND b.column_name OPERATOR(pg_catalog.=) p.column_name ORDER BY 1) \
             FROM event_crypto.protected_columns p \
             JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.table_name::pg_catalog.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE p.key_column IS NOT NULL ORDER BY 1, 2",
            None,
            &[],
        )
        .unwrap_or_else(|e| spi_failed(e));
    t.into_iter()
        .map(|r| SubjectTable {
            table: r.get::<String>(1).ok().flatten().unwrap_or_default(),
            column: r.get::<String>(2).ok().flatten().unwrap_or_default(),
            key_column: r.get::<String>(3).ok().flatten().unwrap_or_default(),
            key_prefix: r.get::<String>(4).ok().flatten().unwrap_or_default(),
            context_column: r.get::<String>(5).ok().flatten(),
            blind_targets: r.get::<Vec<String>>(6).ok().flatten().unwrap_or_default(),
        })
        .collect()
}

fn check_subject(subject: Option<&str>) -> &str {
    match subject {
        None => raise(Error::null_argument("subject")),
        Some("") => raise(Error::invalid_argument("subject must not be an empty string")),
        Some(s) => s,
    }
}

/// Forgets a subject: shreds every key generation of the subject under every configured key prefix, clears the
/// subject's blind index values in protected tables, records an audit row and returns a receipt. Harmless to repeat.
#[pg_extern(volatile, parallel_unsafe)]
fn forget_subject(subject: Option<&str>) -> JsonB {
    let subject = check_subject(subject);
    let tables = as_catalog_owner(|| Spi::connect(subject_tables));
    let mut prefixes: Vec<String> = tables.iter().map(|t| t.key_prefix.clone()).collect();
    prefixes.push("subject:".to_string());
    prefixes.sort();
    prefixes.dedup();
    // A subject with no key yet under a prefix gets a shredded tombstone "<prefix><subject>" version 1, so that
    // an event arriving later is refused (on_forgotten = 'error') or gets a new generation ('new_key') instead of
    // silently creating a live key. The insert waits for a transaction that is creating that key right now (the
    // primary key's uniqueness check) and then yields to it: the key it made is found and shredded below.
    let role = keys::current_role();
    let master_id = crate::master::get()
        .map(|ring| ring.active().id().to_string())
        .unwrap_or_else(|_| "none".to_string());
    let tombstones: i64 = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            prefixes
                .iter()
                .map(|p| {
                    let base = format!("{p}{subject}");
                    client
                        .update(
                            "INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, \
                                                            master_key_id, created_by, shredded_at, shredded_by) \
                             VALUES ($1, 1, 'aes-256-gcm', 'shredded', NULL, NULL, $2, $3, pg_catalog.now(), $3) \
                             ON CONFLICT DO NOTHING RETURNING 1",
                            None,
                            &[base.as_str().into(), master_id.as_str().into(), role.as_str().into()],
                        )
                        .unwrap_or_else(|e| spi_failed(e))
                        .len() as i64
                })
                .sum()
        })
    });
    // Every existing key id of the subject: "<prefix><subject>" and its generations "<prefix><subject>#<n>".
    let mut key_ids: Vec<String> = Vec::new();
    as_catalog_owner(|| {
        Spi::connect(|client| {
            for p in &prefixes {
                let base = format!("{p}{subject}");
                let t = client
                    .select(
                        "SELECT DISTINCT key_id FROM event_crypto.keys WHERE pg_catalog.starts_with(key_id, $1)",
                        None,
                        &[base.as_str().into()],
                    )
                    .unwrap_or_else(|e| spi_failed(e));
                for r in t {
                    let k: String = r.get(1).ok().flatten().unwrap_or_default();
                    let is_generation = k.strip_prefix(&base).is_some_and(|rest| {
                        rest.is_empty()
                            || rest
                                .strip_prefix('#')
                                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    });
                    if is_generation {
                        key_ids.push(k);
                    }
                }
            }
        })
    });
    key_ids.sort();
    key_ids.dedup();
    let mut destroyed = 0;
    for k in &key_ids {
        destroyed += keys::shred_key(k).or_raise();
    }
    // Clear the subject's blind index values (as the caller: UPDATE privilege on the table is needed).
    let mut cleared: i64 = 0;
    let mut touched = Vec::new();
    Spi::connect_mut(|client| {
        for t in tables.iter().filter(|t| !t.blind_targets.is_empty()) {
            let sets: Vec<String> = t
                .blind_targets
                .iter()
                .map(|c| format!("{} = NULL", spi::quote_identifier(c)))
                .collect();
            let any: Vec<String> = t
                .blind_targets
                .iter()
                .map(|c| format!("{} IS NOT NULL", spi::quote_identifier(c)))
                .collect();
            let sql = format!(
                "UPDATE {} SET {} WHERE {}::pg_catalog.text OPERATOR(pg_catalog.=) $1 AND ({})",
                t.table,
                sets.join(", "),
                spi::quote_identifier(&t.key_column),
                any.join(" OR ")
            );
            let n = client
                .update(&sql, None, &[subject.into()])
                .unwrap_or_else(|e| spi_failed(e))
                .len() as i64;
            cleared += n;
            touched.push(json!({"table": t.table, "column": t.column, "blind_index_rows_cleared": n}));
        }
    });
    let already = destroyed == 0 && tombstones == 0;
    let details = json!({
        "versions_destroyed": destroyed,
        "tombstones": tombstones,
        "blind_index_rows_cleared": cleared,
        "tables": touched,
        "already_forgotten": already,
    });
    let audit_id = crate::audit::record("forget_subject", Some(subject), &key_ids, details.clone());
    let mut receipt = json!({
        "subject": subject,
        "key_ids": key_ids,
        "audit_id": audit_id,
    });
    if let (Value::Object(r), Value::Object(d)) = (&mut receipt, details) {
        r.extend(d);
    }
    JsonB(receipt)
}

/// Every row of the subject in every protected table keyed by subject, with the protected column decrypted
/// (the right of access). Needs SELECT on the tables and the decryptor role; records an audit row.
#[pg_extern(volatile, parallel_unsafe)]
fn export_subject(subject: Option<&str>) -> JsonB {
    let subject = check_subject(subject);
    let tables = as_catalog_owner(|| Spi::connect(subject_tables));
    let mut out = Vec::new();
    let mut rows_total: i64 = 0;
    Spi::connect(|client| {
        for t in &tables {
            let col = spi::quote_identifier(&t.column);
            let ctx = t
                .context_column
                .as_ref()
                .map(|c| format!("t.{}::pg_catalog.text", spi::quote_identifier(c)))
                .unwrap_or_else(|| "NULL".to_string());
            let sql = format!(
                "SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.||) \
                     pg_catalog.jsonb_build_object($2::pg_catalog.text, event_crypto.decrypt_fields(t.{col}, {ctx}))), '[]'::pg_catalog.jsonb) \
                 FROM {} t WHERE t.{}::pg_catalog.text OPERATOR(pg_catalog.=) $1",
                t.table,
                spi::quote_identifier(&t.key_column)
            );
            let rows = client
                .select(&sql, Some(1), &[subject.into(), t.column.as_str().into()])
                .and_then(|r| r.first().get_one::<JsonB>())
                .unwrap_or_else(|e| spi_failed(e))
                .map(|j| j.0)
                .unwrap_or(Value::Array(vec![]));
            let n = rows.as_array().map_or(0, |a| a.len()) as i64;
            rows_total += n;
            out.push(json!({"table": t.table, "column": t.column, "rows": rows}));
        }
    });
    crate::audit::record(
        "export_subject",
        Some(subject),
        &[],
        json!({"rows": rows_total, "tables": tables.len()}),
    );
    JsonB(json!({"subject": subject, "tables": out}))
}
