//! `protect()`, `unprotect()`, `add_blind_index()`, `drop_blind_index()`: the only way the protection
//! configuration changes. Each checks that the calling role may change the table's triggers (the TRIGGER
//! privilege, which its owner has), validates, writes the configuration as the catalog owner (no other role may
//! write those tables) and records an audit row. DDL on the table (its trigger, the decrypted view) runs as the
//! caller with a pinned search_path, every name quoted and every object found by oid: nothing stored is ever
//! spliced into SQL as text.
//!
//! The `config_check` trigger validates every row written to `event_crypto.protected_columns` and
//! `event_crypto.blind_indexes`, whoever writes it (a superuser by hand, pg_restore, logical replication).

use super::config::{build, by_type_lists, parse_paths, resolve_col, type_name, ColumnType, ConfigRow};
use crate::access::{acting_role, as_catalog_owner, with_safe_search_path, Privilege, Table};
use crate::catalog::{get, get_opt, ANCESTORS, DESCENDANTS};
use crate::error::{raise, spi_error, OrRaise};
use crate::sqltypes::{Name, RegClass};
use event_crypto_core::blind::Normalize;
use event_crypto_core::envelope::check_key_id;
use event_crypto_core::path::{FieldPath, Selector};
use event_crypto_core::subject::{check_key_prefix, prefixes_overlap};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::{AllocatedByRust, FromDatum, JsonB, PgTupleDesc};
use serde_json::json;

/// A protection configuration of (table, column), as given to protect() or found in a row of
/// `event_crypto.protected_columns`.
pub struct ConfigInput {
    pub relid: pg_sys::Oid,
    pub column: String,
    pub cfg: ConfigRow,
}

/// Runs `f` with the descriptor of table `relid` (opened with AccessShareLock).
fn with_desc<R>(relid: pg_sys::Oid, f: impl FnOnce(&PgTupleDesc<'_>) -> Result<R>) -> Result<R> {
    // SAFETY: the relation is opened with a lock for the duration of `f` and closed again.
    unsafe {
        let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        if rel.is_null() {
            return Err(Error::new(
                ErrorKind::WrongObjectType,
                format!("relation with OID {} does not exist", relid.to_u32()),
            ));
        }
        let desc = PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let r = f(&desc);
        drop(desc);
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        r
    }
}

fn column_exists(desc: &PgTupleDesc<'_>, table: &Table, name: &str) -> Result<()> {
    if desc.iter().any(|a| !a.is_dropped() && a.name() == name) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::ConfigColumn,
        format!("column \"{name}\" of {} does not exist", table.name),
    ))
}

/// The key prefixes other protected columns use (and `subject:`, which forget_subject always covers).
fn other_prefixes(relid: pg_sys::Oid, column: &str) -> Result<Vec<String>> {
    let mut v: Vec<String> = as_catalog_owner(|| {
        crate::catalog::all(
            "SELECT DISTINCT key_prefix FROM event_crypto.protected_columns \
             WHERE key_column IS NOT NULL \
               AND NOT (table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                        AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name)",
            &[relid.into(), column.into()],
            "key_prefix",
        )
    })?;
    v.push("subject:".into());
    Ok(v)
}

/// Checks a protection configuration against the table as it is.
pub fn validate(input: &ConfigInput) -> Result<()> {
    let table = Table::open(input.relid)?;
    if (input.cfg.key_id.is_none()) == (input.cfg.key_column.is_none()) {
        return Err(
            Error::invalid_argument("give exactly one of key_id and key_column").with_hint(
                "key_id encrypts every row under one key; key_column takes a per-subject key id from a column.",
            ),
        );
    }
    if (input.cfg.type_column.is_none()) != (input.cfg.fields_by_type.is_none()) {
        return Err(Error::invalid_argument("type_column and fields_by_type go together"));
    }
    if input.cfg.allow_unlisted_types && input.cfg.type_column.is_none() {
        return Err(Error::invalid_argument(
            "allow_unlisted_types needs type_column and fields_by_type",
        ));
    }
    for c in [&input.cfg.key_column, &input.cfg.context_column, &input.cfg.type_column]
        .into_iter()
        .flatten()
    {
        if c == &input.column {
            return Err(Error::invalid_argument(
                "the key, context and type columns must differ from the protected column",
            ));
        }
    }
    event_crypto_core::compress::Compression::parse(&input.cfg.compress, 0)?;
    if !["error", "new_key"].contains(&input.cfg.on_forgotten.as_str()) {
        return Err(Error::invalid_argument("on_forgotten must be error or new_key"));
    }
    if super::config::PiiGuard::parse(&input.cfg.unprotected_pii).is_none() {
        return Err(Error::invalid_argument("unprotected_pii must be ignore, warn or error"));
    }
    if (input.cfg.unprotected_pii != "ignore" || input.cfg.compress != "none" || !input.cfg.tokenize_fields.is_empty())
        && !crate::keys::catalog().pii_guard
    {
        return Err(Error::new(
            ErrorKind::NotReady,
            "the PII guard, compression and tokenize_fields need the SQL objects of event_crypto 0.3.0",
        )
        .with_hint("Run ALTER EXTENSION event_crypto UPDATE."));
    }
    if let Some(k) = &input.cfg.key_id {
        check_key_id(k)?;
    }
    let by_type = match &input.cfg.fields_by_type {
        Some(v) => by_type_lists(v)?,
        None => Vec::new(),
    };
    if input.cfg.fields.is_empty() && input.cfg.fields_by_type.is_none() {
        return Err(Error::invalid_argument("no fields to protect")
            .with_hint("Pass fields, or type_column with fields_by_type."));
    }
    let fields = parse_paths(&input.cfg.fields)?;
    Selector::new(&fields)?;
    for (_, texts) in &by_type {
        let mut all = fields.clone();
        all.extend(parse_paths(texts)?);
        Selector::new(&all)?;
    }
    // a value is either encrypted or tokenized: no tokenize_fields path may meet a path of fields (or of any
    // type's list), at the same place or above or below it
    super::config::token_selectors(&input.cfg.tokenize_fields)?;
    let encrypted: Vec<FieldPath> = fields
        .iter()
        .cloned()
        .chain(
            by_type
                .iter()
                .map(|(_, t)| parse_paths(t))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten(),
        )
        .collect();
    for t in &input.cfg.tokenize_fields {
        let (p, _) = super::config::parse_token_field(t)?;
        if let Some(e) = encrypted.iter().find(|e| super::config::paths_overlap(&p, e)) {
            return Err(Error::invalid_argument(format!(
                "tokenize_fields \"{}\" overlaps the encrypted field \"{}\"",
                event_crypto_core::aead::truncate_for_message(p.text()),
                event_crypto_core::aead::truncate_for_message(e.text())
            ))
            .with_detail(
                "A value is either encrypted (fields, fields_by_type) or tokenized (tokenize_fields), not both.",
            )
            .with_hint("Remove the path from one of the lists."));
        }
    }
    if input.cfg.key_column.is_some() {
        check_key_prefix(&input.cfg.key_prefix)?;
        for other in other_prefixes(input.relid, &input.column)? {
            if prefixes_overlap(&input.cfg.key_prefix, &other) {
                return Err(Error::invalid_argument(format!(
                    "key_prefix \"{}\" overlaps the key prefix \"{other}\" of another protected table",
                    input.cfg.key_prefix
                ))
                .with_detail("When one prefix begins with the other, a subject of one table and a subject of the other can get the same key id, and forgetting one would destroy the other's data.")
                .with_hint("Use the same prefix for tables whose subjects are the same, or prefixes that do not begin with one another."));
            }
        }
    }
    with_desc(input.relid, |desc| {
        column_exists(desc, &table, &input.column)?;
        for c in [&input.cfg.key_column, &input.cfg.context_column, &input.cfg.type_column]
            .into_iter()
            .flatten()
        {
            column_exists(desc, &table, c)?;
        }
        // resolves every column with its type (the protected column must be jsonb)
        build(
            &input.column,
            desc,
            ConfigRow {
                table: table.name.clone(),
                ..input.cfg.clone()
            },
            Vec::new(),
        )
        .map(|_| ())
    })
}

/// Checks a blind index definition against the table as it is.
pub fn validate_blind(
    relid: pg_sys::Oid,
    column: &str,
    field: &str,
    target: &str,
    key_id: &str,
    normalize: Option<&str>,
) -> Result<()> {
    let table = Table::open(relid)?;
    let p = FieldPath::parse(field)?;
    if p.has_wildcard() {
        return Err(Error::new(
            ErrorKind::InvalidPath,
            format!("field path \"{field}\" selects several values"),
        )
        .with_hint("A blind index covers exactly one value per row: use a path without [*]."));
    }
    Normalize::parse(normalize)?;
    check_key_id(key_id)?;
    if target == column {
        return Err(Error::invalid_argument(
            "the blind index column must differ from the protected column",
        ));
    }
    with_desc(relid, |desc| {
        column_exists(desc, &table, target)?;
        resolve_col(desc, &table.name, target, ColumnType::BlindIndex).map_err(|e| {
            if e.kind() == ErrorKind::WrongColumnType {
                let ty = desc
                    .iter()
                    .find(|a| !a.is_dropped() && a.name() == target)
                    .map(|a| type_name(a.type_oid().value()))
                    .unwrap_or_default();
                Error::new(
                    ErrorKind::WrongColumnType,
                    format!("blind index column \"{target}\" must be text, not {ty}"),
                )
            } else {
                e
            }
        })?;
        Ok(())
    })
}

fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| raise(Error::null_argument(name)))
}

/// A single-quoted SQL literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A view protect() made for `table`: its schema-qualified, quoted name and its owner; `None` if the oid is no
/// longer a view built on that table (it was dropped, and the oid may since name someone else's object).
fn our_view(table: pg_sys::Oid, oid: pg_sys::Oid) -> Option<(String, pg_sys::Oid)> {
    Spi::connect(|c| {
        c.select(
            "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname), \
                    c.relowner \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE c.oid OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) 'v' \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w \
                           JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                                                      AND d.objid OPERATOR(pg_catalog.=) w.oid \
                           WHERE w.ev_class OPERATOR(pg_catalog.=) c.oid \
                             AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                             AND d.refobjid OPERATOR(pg_catalog.=) $2)",
            Some(1),
            &[oid.into(), table.into()],
        )
        .map_err(spi_error)
        .and_then(|t| {
            t.into_iter()
                .next()
                .map(|r| Ok((get::<String>(&r, 1, "name")?, get::<pg_sys::Oid>(&r, 2, "relowner")?)))
                .transpose()
        })
        .or_raise()
    })
}

/// The name of the trigger protect() installs on a table for `column` (at most 63 bytes: a long column name is
/// shortened and ends in a digest of the whole name, so the name is never truncated into another's).
pub fn trigger_name(column: &str) -> String {
    event_crypto_core::names::derived_name("event_crypto_protect_", column)
}

/// The protect trigger of `column` on the table, found by what it runs (event_crypto.protect_trigger with the
/// column as its argument), not by its name: names made by earlier releases (truncated) are found too.
pub fn protect_trigger_of(relid: pg_sys::Oid, column: &str) -> Option<String> {
    crate::catalog::one::<String>(
        "SELECT t.tgname::pg_catalog.text FROM pg_catalog.pg_trigger t \
         WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND NOT t.tgisinternal \
           AND t.tgfoid OPERATOR(pg_catalog.=) 'event_crypto.protect_trigger()'::pg_catalog.regprocedure \
           AND t.tgnargs OPERATOR(pg_catalog.=) 1 \
           AND t.tgargs OPERATOR(pg_catalog.=) (pg_catalog.convert_to($2, pg_catalog.getdatabaseencoding()) \
                                                OPERATOR(pg_catalog.||) '\\x00'::pg_catalog.bytea) \
         ORDER BY 1 LIMIT 1",
        &[relid.into(), column.into()],
    )
    .or_raise()
}

fn ddl(sql: &str) {
    with_safe_search_path(|| Spi::run(sql)).unwrap_or_else(|e| crate::error::spi_failed(e));
}

/// DDL on an object event_crypto made (the protect trigger, the decrypted view), run as the object's owner in a
/// security-restricted operation: the caller's right to change the table's triggers was checked, and DROP
/// TRIGGER and CREATE OR REPLACE VIEW need ownership, which an admin with the TRIGGER privilege lacks.
fn ddl_as(owner: pg_sys::Oid, sql: &str) {
    crate::access::as_restricted(owner, false, || Spi::run(sql)).unwrap_or_else(|e| crate::error::spi_failed(e));
}

/// `CREATE TRIGGER` of the protect trigger of `column` on the table named `table` (quoted, as `Table::name`), run
/// as the current role with a pinned search_path.
pub(crate) fn create_protect_trigger(table: &str, column: &str) {
    ddl(&format!(
        "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION event_crypto.protect_trigger({})",
        quote_identifier(trigger_name(column)),
        literal(column)
    ));
}

/// The protection row of (table, column), as protect() returns it.
fn config_row(relid: pg_sys::Oid, column: &str) -> Option<PgHeapTuple<'static, AllocatedByRust>> {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT p FROM event_crypto.protected_columns p \
                 WHERE p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND p.column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
                Some(1),
                &[relid.into(), column.into()],
            )
            .map_err(spi_error)
            .and_then(|t| t.into_iter().next().map(|r| get_opt(&r, 1, "p")).transpose().map(Option::flatten))
            .or_raise()
        })
    })
}

/// Encrypts the given fields of a jsonb column on every INSERT and UPDATE, and creates `<table>_decrypted`.
/// Calling it again updates the configuration. Needs the TRIGGER privilege on the table (its owner has it) and
/// CREATE on the table's schema (for the view).
#[allow(clippy::too_many_arguments)]
///
/// (Its C symbol is `protect_0_3_wrapper`: 0.2.0's SQL objects call `protect_wrapper` with one argument less,
/// which `crate::compat` forwards here until ALTER EXTENSION UPDATE.)
#[pg_extern(name = "protect", volatile, parallel_unsafe, requires = ["catalog"])]
fn protect_0_3(
    table: Option<RegClass>,
    column: Option<Name>,
    fields: default!(Option<Vec<Option<String>>>, "NULL"),
    key_id: default!(Option<String>, "NULL"),
    key_column: default!(Option<Name>, "NULL"),
    key_prefix: default!(Option<String>, "'subject:'"),
    context_column: default!(Option<Name>, "NULL"),
    type_column: default!(Option<Name>, "NULL"),
    fields_by_type: default!(Option<JsonB>, "NULL"),
    on_forgotten: default!(Option<String>, "'error'"),
    view_name: default!(Option<Name>, "NULL"),
    allow_unlisted_types: default!(Option<bool>, false),
    unprotected_pii: default!(Option<String>, "'ignore'"),
    compress: default!(Option<String>, "'none'"),
    tokenize_fields: default!(Option<Vec<Option<String>>>, "NULL"),
) -> pgrx::composite_type!('static, "protected_columns") {
    crate::keys::require_writable("call event_crypto.protect()").or_raise();
    let _citus = crate::citus::SequentialDdl::begin();
    let relid = required(table, "table").0;
    let column = required(column, "column").0;
    let key_prefix = required(key_prefix, "key_prefix");
    let on_forgotten = required(on_forgotten, "on_forgotten");
    let allow_unlisted_types = required(allow_unlisted_types, "allow_unlisted_types");
    let unprotected_pii = required(unprotected_pii, "unprotected_pii");
    let compress = required(compress, "compress");
    let fields: Vec<String> = fields
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            f.unwrap_or_else(|| raise(Error::null_argument("fields").with_detail("the array contains a NULL element")))
        })
        .collect();
    let tokenize_fields: Vec<String> = tokenize_fields
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            f.unwrap_or_else(|| {
                raise(Error::null_argument("tokenize_fields").with_detail("the array contains a NULL element"))
            })
        })
        .collect();
    let t = Table::open(relid).or_raise();
    t.require(&[Privilege::Trigger], "event_crypto.protect()").or_raise();
    super::partitions::refuse_partition(&t, "event_crypto.protect()").or_raise();
    super::partitions::refuse_own_config_below(&t, &column).or_raise();
    let input = ConfigInput {
        relid,
        column: column.clone(),
        cfg: ConfigRow {
            table: t.name.clone(),
            fields,
            key_id,
            key_column: key_column.map(|n| n.0),
            key_prefix,
            context_column: context_column.map(|n| n.0),
            type_column: type_column.map(|n| n.0),
            fields_by_type: fields_by_type.map(|j| j.0),
            on_forgotten,
            allow_unlisted_types,
            unprotected_pii,
            compress,
            tokenize_fields,
        },
    };
    validate(&input).or_raise();

    // The trigger, as the caller (CREATE TRIGGER checks the TRIGGER privilege itself too).
    if let Some(old) = protect_trigger_of(relid, &column) {
        ddl_as(
            t.owner,
            &format!("DROP TRIGGER {} ON {}", quote_identifier(&old), t.name),
        );
    }
    create_protect_trigger(&t.name, &column);

    let old_view: Option<pg_sys::Oid> = as_catalog_owner(|| {
        crate::catalog::one::<pg_sys::Oid>(
            "SELECT decrypted_view::pg_catalog.oid FROM event_crypto.protected_columns \
             WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
            &[relid.into(), column.as_str().into()],
        )
    })
    .or_raise();
    let view_rel = view_name
        .map(|n| n.0)
        .unwrap_or_else(|| format!("{}_decrypted", t.relname));
    let (view, view_oid) = make_view(&t, &input, view_rel, old_view);

    let role = acting_role();
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            // (the SQL objects of a release before 0.3.0 have neither the PII guard's column nor compress; validate()
            // allowed only their defaults there)
            let (pii_column, pii_value, pii_set) = if crate::keys::catalog().pii_guard {
                (
                    ", unprotected_pii, compress, tokenize_fields",
                    ", $14, $15, $16",
                    " unprotected_pii = EXCLUDED.unprotected_pii, compress = EXCLUDED.compress, \
                     tokenize_fields = EXCLUDED.tokenize_fields,",
                )
            } else {
                ("", "", "")
            };
            let args = [
                relid.into(),
                column.as_str().into(),
                input.cfg.fields.clone().into(),
                input.cfg.key_id.as_deref().into(),
                input.cfg.key_column.as_deref().into(),
                input.cfg.key_prefix.as_str().into(),
                input.cfg.context_column.as_deref().into(),
                input.cfg.type_column.as_deref().into(),
                input.cfg.fields_by_type.clone().map(JsonB).into(),
                input.cfg.on_forgotten.as_str().into(),
                view_oid.into(),
                role.as_str().into(),
                input.cfg.allow_unlisted_types.into(),
                input.cfg.unprotected_pii.as_str().into(),
                input.cfg.compress.as_str().into(),
                input.cfg.tokenize_fields.clone().into(),
            ];
            c.update(
                &format!(
                    "INSERT INTO event_crypto.protected_columns AS p \
                        (table_name, column_name, fields, key_id, key_column, key_prefix, context_column, type_column, \
                         fields_by_type, on_forgotten, decrypted_view, protected_by, allow_unlisted_types{pii_column}) \
                     VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::pg_catalog.oid::pg_catalog.regclass, $12, $13{pii_value}) \
                     ON CONFLICT ON CONSTRAINT protected_columns_pkey DO UPDATE SET \
                        fields = EXCLUDED.fields, key_id = EXCLUDED.key_id, key_column = EXCLUDED.key_column, \
                        key_prefix = EXCLUDED.key_prefix, context_column = EXCLUDED.context_column, \
                        type_column = EXCLUDED.type_column, fields_by_type = EXCLUDED.fields_by_type, \
                        on_forgotten = EXCLUDED.on_forgotten, decrypted_view = EXCLUDED.decrypted_view, \
                        allow_unlisted_types = EXCLUDED.allow_unlisted_types,{pii_set} protected_at = EXCLUDED.protected_at, protected_by = EXCLUDED.protected_by"
                ),
                None,
                &args[..if pii_value.is_empty() { 13 } else { 16 }],
            )
            .map(|_| ())
            .map_err(spi_error)
            .or_raise()
        })
    });
    let inheritors = protect_inheritors(relid, &column);
    crate::audit::record(
        "protect",
        None,
        &input.cfg.key_id.iter().cloned().collect::<Vec<_>>(),
        json!({
            "table": t.name, "column": column, "fields": input.cfg.fields, "key_column": input.cfg.key_column,
            "key_prefix": input.cfg.key_column.as_ref().map(|_| &input.cfg.key_prefix), "context_column": input.cfg.context_column,
            "type_column": input.cfg.type_column, "fields_by_type": input.cfg.fields_by_type,
            "on_forgotten": input.cfg.on_forgotten, "allow_unlisted_types": input.cfg.allow_unlisted_types,
            "unprotected_pii": input.cfg.unprotected_pii, "compress": input.cfg.compress,
            "tokenize_fields": input.cfg.tokenize_fields, "view": view,
            "inheritors": inheritors,
        }),
    );
    config_row(relid, &column)
        .unwrap_or_else(|| raise(Error::new(ErrorKind::CatalogAccess, "the configuration was not stored")))
}

/// Tables that inherit from `relid` (INHERITS, at any depth; not partitions, which PostgreSQL gives the trigger of
/// their partitioned table itself).
fn inheritors(relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    crate::catalog::all(
        &format!("{DESCENDANTS}SELECT DISTINCT d.oid FROM down d JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.oid \
         WHERE d.depth OPERATOR(pg_catalog.>) 0 AND NOT c.relispartition ORDER BY 1"),
        &[relid.into()],
        "oid",
    )
    .or_raise()
}

/// Gives every table that inherits from `relid` (INHERITS) the protect trigger of `column`, unless it has its
/// own: rows inserted into a child show through the parent and its decrypted view, so they must be encrypted
/// like the parent's (the trigger finds the parent's configuration). The trigger is made by the extension's
/// owner (a child's owner need not be allowed to run the trigger function). Returns the tables it was added to.
fn protect_inheritors(relid: pg_sys::Oid, column: &str) -> Vec<String> {
    let mut done = Vec::new();
    for child in inheritors(relid) {
        if protect_trigger_of(child, column).is_some() {
            continue;
        }
        let Ok(Some(t)) = Table::lookup(child) else { continue };
        let has_column = with_desc(child, |desc| {
            Ok(desc.iter().any(|a| !a.is_dropped() && a.name() == column))
        })
        .unwrap_or(false);
        if !has_column {
            continue;
        }
        as_catalog_owner(|| create_protect_trigger(&t.name, column));
        done.push(t.name);
    }
    done
}

/// Removes the protect trigger of `column` from the tables that inherit from `relid` and are no longer covered
/// by any configuration (their own or an ancestor's).
fn unprotect_inheritors(relid: pg_sys::Oid, column: &str) {
    for child in inheritors(relid) {
        let Some(name) = protect_trigger_of(child, column) else {
            continue;
        };
        if crate::protect::config::config_of_table(child, column)
            .ok()
            .flatten()
            .is_some()
        {
            continue;
        }
        let Ok(Some(t)) = Table::lookup(child) else { continue };
        as_catalog_owner(|| ddl(&format!("DROP TRIGGER {} ON {}", quote_identifier(&name), t.name)));
    }
}

/// Internal, called by the extension's event trigger when a table is created or altered (`created`: by CREATE
/// TABLE): gives a table that inherits from a protected table (INHERITS, ALTER TABLE ... INHERIT) the protect
/// triggers of its ancestors' protected columns, and warns when a new table has every column of a protected
/// table without being protected (`CREATE TABLE ... (LIKE protected INCLUDING ALL)`: what is inserted there is
/// stored in plaintext). Returns how many triggers it added. Not granted to anyone: only the event trigger runs
/// it.
#[pg_extern(volatile, parallel_unsafe)]
fn ddl_table_changed(table: Option<RegClass>, created: default!(Option<bool>, false)) -> i32 {
    let relid = required(table, "table").0;
    let created = created.unwrap_or(false);
    let parents: Vec<(pg_sys::Oid, String)> = as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                &format!("{ANCESTORS}SELECT DISTINCT p.table_name::pg_catalog.oid, p.column_name::pg_catalog.text \
                 FROM event_crypto.protected_columns p JOIN up ON p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) up.oid \
                 WHERE up.depth OPERATOR(pg_catalog.>) 0 ORDER BY 1, 2"),
                None,
                &[relid.into()],
            )
            .map_err(spi_error)?
            .map(|r| Ok((get::<pg_sys::Oid>(&r, 1, "table_name")?, get::<String>(&r, 2, "column_name")?)))
            .collect::<Result<Vec<_>>>()
        })
    })
    .or_raise();
    let mut added = 0;
    for (parent, column) in &parents {
        let tables = protect_inheritors(*parent, column);
        if tables.is_empty() {
            continue;
        }
        added += tables.len() as i32;
        let parent_name = Table::lookup(*parent).ok().flatten().map(|t| t.name);
        crate::audit::record(
            "protect",
            None,
            &[],
            json!({"tables": tables, "column": column, "inherited_from": parent_name, "automatic": true}),
        );
    }
    if created && parents.is_empty() {
        warn_copies_of_protected(relid);
    }
    added
}

/// Warns when `relid` (a new table that inherits from nothing protected) has every column of a protected table,
/// with the same types, and is not protected itself: a copy made with LIKE, whose inserts would be stored in
/// plaintext. Copies of a partitioned table are not warned about: they are how partitions are made before they
/// are attached (pg_partman makes every partition so), and attaching one checks that it holds no plaintext.
fn warn_copies_of_protected(relid: pg_sys::Oid) {
    let copies: Vec<(String, String)> = as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT DISTINCT p.table_name::pg_catalog.text, p.column_name::pg_catalog.text \
                 FROM event_crypto.protected_columns p \
                 WHERE p.table_name::pg_catalog.oid OPERATOR(pg_catalog.<>) $1 \
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class pc \
                                   WHERE pc.oid OPERATOR(pg_catalog.=) p.table_name::pg_catalog.oid \
                                     AND pc.relkind OPERATOR(pg_catalog.=) 'p') \
                   AND NOT EXISTS (SELECT 1 FROM event_crypto.protected_columns q \
                                   WHERE q.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                                     AND q.column_name OPERATOR(pg_catalog.=) p.column_name) \
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                                   WHERE a.attrelid OPERATOR(pg_catalog.=) p.table_name::pg_catalog.oid \
                                     AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
                                     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b \
                                                     WHERE b.attrelid OPERATOR(pg_catalog.=) $1 \
                                                       AND b.attname OPERATOR(pg_catalog.=) a.attname \
                                                       AND b.atttypid OPERATOR(pg_catalog.=) a.atttypid \
                                                       AND NOT b.attisdropped)) \
                 ORDER BY 1, 2",
                None,
                &[relid.into()],
            )
            .map_err(spi_error)?
            .map(|r| {
                Ok((
                    get::<String>(&r, 1, "table_name")?,
                    get::<String>(&r, 2, "column_name")?,
                ))
            })
            .collect::<Result<Vec<_>>>()
        })
    })
    .or_raise();
    let Some(name) = Table::lookup(relid).ok().flatten().map(|t| t.name) else {
        return;
    };
    for (source, column) in copies {
        let report = pgrx::pg_sys::panic::ErrorReport::new(
            pgrx::PgSqlErrorCode::ERRCODE_WARNING,
            format!("event_crypto: table {name} has the columns of protected table {source}, but its column \"{column}\" is not protected"),
            "event_crypto",
        )
        .set_detail("Rows inserted into it are stored as they come, in plaintext (a copy made with CREATE TABLE ... LIKE takes no triggers).")
        .set_hint(format!(
            "Protect it as {source} is: SELECT event_crypto.protect('{}', '{}', ...);",
            name.replace('\'', "''"),
            column.replace('\'', "''")
        ));
        report.report(pgrx::PgLogLevel::WARNING);
    }
}

/// Internal, called by the extension's event trigger after `ALTER TABLE ... RENAME COLUMN` (the column's new
/// name is at `attnum` of `table`): the configuration names the column again, on the table and on every table
/// that inherits from it (PostgreSQL renames theirs too). A stored name that no longer exists is the one the
/// column had: the configuration rows, blind indexes, retention policy and re-encryption progress that used it
/// take the new name, the protect trigger is re-made with it, and the decrypted view's column is renamed and the
/// view refreshed. Returns the tables it changed. Not granted to anyone.
#[pg_extern(volatile, parallel_unsafe)]
fn follow_column_rename(table: Option<RegClass>, attnum: Option<i32>) -> Vec<String> {
    let relid = required(table, "table").0;
    let attnum = required(attnum, "attnum");
    let Some(new) = crate::catalog::one::<String>(
        "SELECT attname::pg_catalog.text FROM pg_catalog.pg_attribute \
         WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.=) $2::pg_catalog.int2 AND NOT attisdropped",
        &[relid.into(), attnum.into()],
    )
    .or_raise() else {
        return Vec::new();
    };
    let mut tables = vec![relid];
    tables.extend(
        crate::catalog::all::<pg_sys::Oid>(
            &format!("{DESCENDANTS}SELECT DISTINCT oid FROM down WHERE depth OPERATOR(pg_catalog.>) 0 ORDER BY 1"),
            &[relid.into()],
            "oid",
        )
        .or_raise(),
    );
    let mut changed = Vec::new();
    for x in tables {
        let Ok(Some(t)) = Table::lookup(x) else { continue };
        // every name stored for x, and the columns its own protect triggers name
        let stored: Vec<String> = as_catalog_owner(|| {
            crate::catalog::all(
                "SELECT DISTINCT n::pg_catalog.text FROM ( \
                     SELECT pg_catalog.unnest(ARRAY[p.column_name, p.key_column, p.context_column, p.type_column]) \
                       FROM event_crypto.protected_columns p WHERE p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                     UNION ALL SELECT pg_catalog.unnest(ARRAY[b.column_name, b.target_column]) \
                       FROM event_crypto.blind_indexes b WHERE b.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                     UNION ALL SELECT r.time_column FROM event_crypto.retention_policies r \
                       WHERE r.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                     UNION ALL SELECT g.column_name FROM event_crypto.reencrypt_progress g \
                       WHERE g.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                     UNION ALL SELECT pg_catalog.convert_from(pg_catalog.substr(tg.tgargs, 1, \
                                          pg_catalog.length(tg.tgargs) OPERATOR(pg_catalog.-) 1), pg_catalog.getdatabaseencoding())::pg_catalog.name \
                       FROM pg_catalog.pg_trigger tg \
                       WHERE tg.tgrelid OPERATOR(pg_catalog.=) $1 AND NOT tg.tgisinternal AND tg.tgparentid OPERATOR(pg_catalog.=) 0 \
                         AND tg.tgfoid OPERATOR(pg_catalog.=) 'event_crypto.protect_trigger()'::pg_catalog.regprocedure \
                         AND tg.tgnargs OPERATOR(pg_catalog.=) 1) s(n) \
                 WHERE n IS NOT NULL AND NOT EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) $1 \
                        AND a.attname OPERATOR(pg_catalog.=) n AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped) \
                 ORDER BY 1",
                &[x.into()],
                "name",
            )
        })
        .or_raise();
        let has_new = with_desc(x, |d| Ok(d.iter().any(|a| !a.is_dropped() && a.name() == new))).unwrap_or(false);
        let old = match stored.as_slice() {
            [] => continue,
            [one] if has_new => one.clone(),
            _ => {
                pgrx::warning!(
                    "event_crypto: the protection configuration of {} names columns that no longer exist ({}); run event_crypto.protect() for it again",
                    t.name,
                    stored.join(", ")
                );
                continue;
            }
        };
        rename_in_config(&t, &old, &new);
        changed.push(t.name.clone());
    }
    if !changed.is_empty() {
        crate::audit::record("follow_rename", None, &[], json!({"tables": changed, "new_name": new}));
    }
    changed
}

/// Renames `old` to `new` wherever the configuration of `t` stores it (see [`follow_column_rename`]).
fn rename_in_config(t: &Table, old: &str, new: &str) {
    let x = t.oid;
    as_catalog_owner(|| {
        Spi::connect_mut(|c| -> Result<()> {
            // (a regclass parameter, not an oid: on Citus every node resolves it to its own oid, see crate::citus)
            let args = [RegClass(x).into(), old.into(), new.into()];
            // blind_indexes references (table, column) of protected_columns: take its rows out while the key changes
            let rename = |n: String| if n == old { new.to_string() } else { n };
            let mut blind: Vec<(String, String, String, String, Option<String>)> = Vec::new();
            for r in c
                .update(
                    "DELETE FROM event_crypto.blind_indexes WHERE table_name OPERATOR(pg_catalog.=) $1 \
                     RETURNING column_name::pg_catalog.text, field, target_column::pg_catalog.text, key_id, normalize",
                    None,
                    &[RegClass(x).into()],
                )
                .map_err(spi_error)?
            {
                blind.push((
                    rename(get(&r, 1, "column_name")?),
                    get(&r, 2, "field")?,
                    rename(get(&r, 3, "target_column")?),
                    get(&r, 4, "key_id")?,
                    get_opt(&r, 5, "normalize")?,
                ));
            }
            let swap = |col: &str| format!("{col} = CASE WHEN {col} OPERATOR(pg_catalog.=) $2::pg_catalog.name THEN $3::pg_catalog.name ELSE {col} END");
            c.update(
                &format!(
                    "UPDATE event_crypto.protected_columns SET {}, {}, {}, {} WHERE table_name OPERATOR(pg_catalog.=) $1",
                    swap("column_name"),
                    swap("key_column"),
                    swap("context_column"),
                    swap("type_column")
                ),
                None,
                &args,
            )
            .map_err(spi_error)?;
            for (column, field, target, key_id, normalize) in blind {
                c.update(
                    "INSERT INTO event_crypto.blind_indexes (table_name, column_name, field, target_column, key_id, normalize) \
                     VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4, $5, $6)",
                    None,
                    &[
                        x.into(),
                        column.as_str().into(),
                        field.as_str().into(),
                        target.as_str().into(),
                        key_id.as_str().into(),
                        normalize.as_deref().into(),
                    ],
                )
                .map_err(spi_error)?;
            }
            for (table, column) in [("retention_policies", "time_column"), ("reencrypt_progress", "column_name")] {
                c.update(
                    &format!(
                        "UPDATE event_crypto.{table} SET {column} = $3 \
                         WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND {column} OPERATOR(pg_catalog.=) $2::pg_catalog.name"
                    ),
                    None,
                    &args,
                )
                .map_err(spi_error)?;
            }
            Ok(())
        })
    })
    .or_raise();
    // The protect trigger names the column it encrypts: make it again with the new name.
    if let Some(trigger) = protect_trigger_of(x, old) {
        as_catalog_owner(|| {
            ddl(&format!("DROP TRIGGER {} ON {}", quote_identifier(&trigger), t.name));
            create_protect_trigger(&t.name, new);
        });
    }
    // The decrypted views: their column follows the table's, and they are made again (decrypt_row names the
    // protected column).
    let views: Vec<pg_sys::Oid> = as_catalog_owner(|| {
        crate::catalog::all(
            "SELECT decrypted_view::pg_catalog.oid FROM event_crypto.protected_columns \
             WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND decrypted_view IS NOT NULL",
            &[x.into()],
            "decrypted_view",
        )
    })
    .or_raise();
    for v in views {
        let Some((name, owner)) = our_view(x, v) else { continue };
        let has_old = crate::catalog::one::<bool>(
            "SELECT true FROM pg_catalog.pg_attribute WHERE attrelid OPERATOR(pg_catalog.=) $1 \
             AND attname OPERATOR(pg_catalog.=) $2::pg_catalog.name AND NOT attisdropped",
            &[v.into(), old.into()],
        )
        .or_raise()
        .unwrap_or(false);
        if has_old {
            ddl_as(
                owner,
                &format!(
                    "ALTER VIEW {name} RENAME COLUMN {} TO {}",
                    quote_identifier(old),
                    quote_identifier(new)
                ),
            );
        }
    }
    for (_, column, _, ok, reason) in refresh_decrypted_views(Some(RegClass(x))) {
        if !ok {
            pgrx::warning!(
                "event_crypto: the decrypted view of {}.{} could not be refreshed: {}",
                t.name,
                quote_identifier(&column),
                reason.unwrap_or_default()
            );
        }
    }
}

/// Creates (or replaces) the decrypted view of a protected column, named `view_rel` in the table's schema; the
/// previous view (`old_view`, by oid) goes if it had another name. A relation that has the name and is not the
/// previous view is someone else's and is never replaced (42710). Returns the view's quoted name and oid.
fn make_view(
    t: &Table,
    input: &ConfigInput,
    mut view_rel: String,
    old_view: Option<pg_sys::Oid>,
) -> (String, pg_sys::Oid) {
    // PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes; so does the view found by name below.
    while view_rel.len() > pg_sys::NAMEDATALEN as usize - 1 {
        view_rel.pop();
    }
    let schema: String = crate::catalog::one::<String>(
        "SELECT pg_catalog.quote_ident(nspname) FROM pg_catalog.pg_namespace WHERE oid OPERATOR(pg_catalog.=) $1",
        &[t.namespace.into()],
    )
    .or_raise()
    .unwrap_or_else(|| {
        raise(Error::new(
            ErrorKind::CatalogAccess,
            "the table's schema could not be read",
        ))
    });
    let view = format!("{schema}.{}", quote_identifier(&view_rel));
    let previous = old_view.and_then(|o| our_view(t.oid, o));
    if let Some((old, owner)) = &previous {
        if *old != view {
            ddl_as(*owner, &format!("DROP VIEW {old}"));
        }
    }
    let named = |name: &str| {
        crate::catalog::one::<pg_sys::Oid>(
            "SELECT c.oid FROM pg_catalog.pg_class c \
             WHERE c.relnamespace OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2::pg_catalog.name",
            &[t.namespace.into(), name.into()],
        )
        .or_raise()
    };
    if let Some(o) = named(&view_rel) {
        if Some(o) != old_view {
            raise(
                Error::new(
                    ErrorKind::DuplicateKey,
                    format!(
                        "relation {view} already exists and is not the decrypted view of {}",
                        t.name
                    ),
                )
                .with_hint("Pass another name as view_name, or drop that relation."),
            );
        }
    }
    let select_list = view_select_list(t, input);
    let create = format!(
        "CREATE OR REPLACE VIEW {view} WITH (security_invoker = true) AS SELECT {select_list} FROM {} t",
        t.name
    );
    match &previous {
        // replacing this table's own view (same name): as its owner
        Some((old, owner)) if *old == view => ddl_as(*owner, &create),
        // a new view: as the caller, who needs CREATE on the schema and owns it
        _ => ddl(&create),
    }
    let oid = named(&view_rel).unwrap_or_else(|| {
        raise(Error::new(
            ErrorKind::CatalogAccess,
            "the decrypted view was not created",
        ))
    });
    (view, oid)
}

/// The decrypted view's columns: the table's, with the protected one decrypted under each row's own key.
fn view_select_list(t: &Table, input: &ConfigInput) -> String {
    let text_of = |c: &Option<String>| match c {
        Some(c) => format!("pg_catalog.format('%s', t.{})", quote_identifier(c)),
        None => "NULL::pg_catalog.text".to_string(),
    };
    // a json column is read as jsonb and its decrypted form given back as json (the view keeps the column's type)
    let decrypt = |json: bool| {
        format!(
        "event_crypto.decrypt_row({arg}, '{oid}'::pg_catalog.regclass, {colname}::pg_catalog.name, {key}, {ctx}){cast}",
        arg = if json { format!("pg_catalog.to_jsonb(t.{})", quote_identifier(&input.column)) } else { format!("t.{}", quote_identifier(&input.column)) },
        cast = if json { "::pg_catalog.json" } else { "" },
        oid = t.oid.to_u32(),
        colname = literal(&input.column),
        key = text_of(&input.cfg.key_column),
        ctx = text_of(&input.cfg.context_column),
    )
    };
    let cols: Vec<String> = with_desc(t.oid, |desc| {
        Ok(desc
            .iter()
            .filter(|a| !a.is_dropped())
            .map(|a| {
                let q = quote_identifier(a.name());
                if a.name() == input.column {
                    format!("{} AS {q}", decrypt(a.type_oid().value() == pg_sys::JSONOID))
                } else {
                    format!("t.{q}")
                }
            })
            .collect())
    })
    .or_raise();
    cols.join(", ")
}

/// Stops protecting a column: its trigger, its decrypted view and its configuration (blind indexes included) go.
/// Returns whether it was protected. Needs the TRIGGER privilege on the table.
#[pg_extern(volatile, parallel_unsafe)]
fn unprotect(table: Option<RegClass>, column: Option<Name>) -> bool {
    crate::keys::require_writable("call event_crypto.unprotect()").or_raise();
    let _citus = crate::citus::SequentialDdl::begin();
    let relid = required(table, "table").0;
    let column = required(column, "column").0;
    let t = Table::open(relid).or_raise();
    t.require(&[Privilege::Trigger], "event_crypto.unprotect()").or_raise();
    if config_row(relid, &column).is_none() {
        // a partition protected through its tree: only the root's protection can be removed
        super::partitions::refuse_partition(&t, "event_crypto.unprotect()").or_raise();
    }
    let view: Option<Option<pg_sys::Oid>> = as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                "DELETE FROM event_crypto.protected_columns \
                 WHERE table_name OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                 RETURNING decrypted_view::pg_catalog.oid",
                None,
                &[RegClass(relid).into(), column.as_str().into()],
            )
            .map_err(spi_error)
            .and_then(|t| {
                t.into_iter()
                    .next()
                    .map(|r| get_opt::<pg_sys::Oid>(&r, 1, "decrypted_view"))
                    .transpose()
            })
            .or_raise()
        })
    });
    let Some(view) = view else {
        return false;
    };
    if let Some(old) = protect_trigger_of(relid, &column) {
        ddl_as(
            t.owner,
            &format!("DROP TRIGGER {} ON {}", quote_identifier(&old), t.name),
        );
    }
    unprotect_inheritors(relid, &column);
    let mut dropped_view = None;
    if let Some((name, owner)) = view.and_then(|o| our_view(relid, o)) {
        ddl_as(owner, &format!("DROP VIEW {name}"));
        dropped_view = Some(name);
    }
    crate::audit::record(
        "unprotect",
        None,
        &[],
        json!({"table": t.name, "column": column, "view": dropped_view}),
    );
    true
}

/// Fills `target_column` with the blind index of `field` (one value per row) on every INSERT and UPDATE of the
/// protected column. Needs the TRIGGER privilege on the table.
#[pg_extern(volatile, parallel_unsafe, requires = ["catalog"])]
fn add_blind_index(
    table: Option<RegClass>,
    column: Option<Name>,
    field: Option<String>,
    target_column: Option<Name>,
    key_id: Option<String>,
    normalization: default!(Option<String>, "NULL"),
) -> pgrx::composite_type!('static, "blind_indexes") {
    crate::keys::require_writable("call event_crypto.add_blind_index()").or_raise();
    let _citus = crate::citus::SequentialDdl::begin();
    let relid = required(table, "table").0;
    let column = required(column, "column").0;
    let field = required(field, "field");
    let target = required(target_column, "target_column").0;
    let key_id = required(key_id, "key_id");
    let normalize = normalization; // stored in the column `normalize` of event_crypto.blind_indexes
    let t = Table::open(relid).or_raise();
    t.require(&[Privilege::Trigger], "event_crypto.add_blind_index()")
        .or_raise();
    if config_row(relid, &column).is_none() {
        super::partitions::refuse_partition(&t, "event_crypto.add_blind_index()").or_raise();
    }
    if super::config::config_of_table(relid, &column).or_raise().is_none() {
        raise(
            Error::new(
                ErrorKind::NotReady,
                format!("column \"{column}\" of {} is not protected", t.name),
            )
            .with_hint("Call event_crypto.protect() first."),
        );
    }
    validate_blind(relid, &column, &field, &target, &key_id, normalize.as_deref()).or_raise();
    let row = as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                "INSERT INTO event_crypto.blind_indexes AS b (table_name, column_name, field, target_column, key_id, normalize) \
                 VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4, $5, $6) \
                 ON CONFLICT ON CONSTRAINT blind_indexes_pkey DO UPDATE SET \
                    column_name = EXCLUDED.column_name, field = EXCLUDED.field, key_id = EXCLUDED.key_id, \
                    normalize = EXCLUDED.normalize \
                 RETURNING ROW(b.table_name, b.column_name, b.field, b.target_column, b.key_id, b.normalize)::event_crypto.blind_indexes",
                None,
                &[
                    relid.into(),
                    column.as_str().into(),
                    field.as_str().into(),
                    target.as_str().into(),
                    key_id.as_str().into(),
                    normalize.as_deref().into(),
                ],
            )
            .map_err(spi_error)
            .and_then(|t| t.into_iter().next().map(|r| get(&r, 1, "b")).transpose())
            .or_raise()
        })
    });
    crate::audit::record(
        "add_blind_index",
        None,
        std::slice::from_ref(&key_id),
        json!({"table": t.name, "column": column, "field": field, "target_column": target, "normalize": normalize}),
    );
    row.unwrap_or_else(|| raise(Error::new(ErrorKind::CatalogAccess, "the blind index was not stored")))
}

/// Stops filling a blind index column. Returns whether it was configured. Needs the TRIGGER privilege.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_blind_index(table: Option<RegClass>, target_column: Option<Name>) -> bool {
    crate::keys::require_writable("call event_crypto.drop_blind_index()").or_raise();
    let _citus = crate::citus::SequentialDdl::begin();
    let relid = required(table, "table").0;
    let target = required(target_column, "target_column").0;
    let t = Table::open(relid).or_raise();
    t.require(&[Privilege::Trigger], "event_crypto.drop_blind_index()")
        .or_raise();
    let n = as_catalog_owner(|| {
        crate::catalog::modify(
            "DELETE FROM event_crypto.blind_indexes \
             WHERE table_name OPERATOR(pg_catalog.=) $1 AND target_column OPERATOR(pg_catalog.=) $2::pg_catalog.name",
            &[RegClass(relid).into(), target.as_str().into()],
        )
    })
    .or_raise();
    if n == 0 {
        super::partitions::refuse_partition(&t, "event_crypto.drop_blind_index()").or_raise();
    }
    if n > 0 {
        crate::audit::record(
            "drop_blind_index",
            None,
            &[],
            json!({"table": t.name, "target_column": target}),
        );
    }
    n > 0
}

/// Checks field paths as protect() stores them: each must parse and the set must compile (54000 when it would
/// grow past the selector limit); `allow_wildcards => false` for blind indexes, which index exactly one value.
#[pg_extern(immutable, parallel_safe)]
fn validate_fields(fields: Option<Vec<Option<String>>>, allow_wildcards: default!(bool, true)) -> bool {
    let texts: Vec<String> = fields
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            f.unwrap_or_else(|| raise(Error::null_argument("fields").with_detail("the array contains a NULL element")))
        })
        .collect();
    let paths = parse_paths(&texts).or_raise();
    for (p, f) in paths.iter().zip(&texts) {
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
    Selector::new(&paths).or_raise();
    true
}

/// Checks a blind index normalisation name.
#[pg_extern(immutable, parallel_safe)]
fn validate_normalize(normalization: Option<&str>) -> bool {
    Normalize::parse(normalization).or_raise();
    true
}

/// A column of a trigger's row by name, converted with its type's FromDatum.
fn attr<T: FromDatum>(tuple: *mut pg_sys::HeapTupleData, desc: &PgTupleDesc<'_>, name: &str) -> Option<T> {
    let (i, att) = desc
        .iter()
        .enumerate()
        .find(|(_, a)| !a.is_dropped() && a.name() == name)?;
    // SAFETY: the tuple and descriptor come from the firing trigger; the attribute number is the descriptor's own.
    unsafe {
        let d = pgrx::heap_getattr_raw(tuple, std::num::NonZeroUsize::new(i + 1)?, desc.as_ptr())?;
        T::from_polymorphic_datum(d, false, att.type_oid().value())
    }
}

/// Whether two datums of one attribute have the same bytes (an UPDATE copies the values it does not change).
///
/// # Safety
/// Both are valid datums of an attribute with `byval` and `len`.
unsafe fn datum_bytes_equal(x: pg_sys::Datum, y: pg_sys::Datum, byval: bool, len: i16) -> bool {
    if byval {
        return x == y;
    }
    let (px, py) = (x.cast_mut_ptr::<u8>(), y.cast_mut_ptr::<u8>());
    let (lx, ly) = match len {
        n if n > 0 => (n as usize, n as usize),
        -1 => (
            pgrx::varlena::varsize_any(px.cast()),
            pgrx::varlena::varsize_any(py.cast()),
        ),
        _ => return false,
    };
    lx == ly && std::slice::from_raw_parts(px, lx) == std::slice::from_raw_parts(py, ly)
}

/// Whether an UPDATE of `protected_columns` only sets `decrypted_view` to NULL, every other column unchanged.
///
/// # Safety
/// `td` and `desc` are the firing row trigger's.
unsafe fn only_view_forgotten(td: &pg_sys::TriggerData, desc: &PgTupleDesc<'_>) -> bool {
    if td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK != pg_sys::TRIGGER_EVENT_UPDATE {
        return false;
    }
    let (old, new) = (td.tg_trigtuple, td.tg_newtuple);
    let mut view_nulled = false;
    for (i, att) in desc.iter().enumerate() {
        if att.is_dropped() {
            continue;
        }
        let Some(n) = std::num::NonZeroUsize::new(i + 1) else {
            return false;
        };
        let a = pgrx::heap_getattr_raw(old, n, desc.as_ptr());
        let b = pgrx::heap_getattr_raw(new, n, desc.as_ptr());
        if att.name() == "decrypted_view" {
            view_nulled = b.is_none();
            continue;
        }
        let same = match (a, b) {
            (None, None) => true,
            (Some(x), Some(y)) => datum_bytes_equal(x, y, att.attbyval, att.attlen),
            _ => false,
        };
        if !same {
            return false;
        }
    }
    view_nulled
}

/// Validates the row a BEFORE INSERT OR UPDATE trigger on `event_crypto.protected_columns` or
/// `event_crypto.blind_indexes` is about to write (the `config_check` trigger, see `crate::triggers`).
pub fn check_config_row(trigger: &PgTrigger<'_>) -> Result<()> {
    let td = trigger.trigger_data();
    // SAFETY: a row trigger's data: the relation is open, the new tuple valid for the call.
    let (rel, tuple) = unsafe {
        let op = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
        (
            &*td.tg_relation,
            if op == pg_sys::TRIGGER_EVENT_UPDATE {
                td.tg_newtuple
            } else {
                td.tg_trigtuple
            },
        )
    };
    // SAFETY: the relation's descriptor lives as long as the relation is open.
    let desc = unsafe { PgTupleDesc::from_pg_unchecked(rel.rd_att) };
    // (on a Citus node the trigger fires on the node's placement of the table: blind_indexes_102010)
    let table = super::target::table_name(rel.rd_id)?.unwrap_or_default();
    let text = |name: &str| attr::<String>(tuple, &desc, name);
    let name = |name: &str| attr::<Name>(tuple, &desc, name).map(|n| n.0);
    let required_text = |v: Option<String>, col: &str| v.ok_or_else(|| Error::null_argument(col));
    let relid = attr::<RegClass>(tuple, &desc, "table_name")
        .ok_or_else(|| Error::null_argument("table_name"))?
        .0;
    // SAFETY: the trigger's own tuples and descriptor.
    if table == "protected_columns" && unsafe { only_view_forgotten(td, &desc) } {
        // the extension's event trigger forgets a dropped decrypted view: nothing the row configures changed
        // (and a configuration that a dropped column broke must not stop the DROP)
        return Ok(());
    }
    let checked = (|| -> Result<()> {
        let column = required_text(name("column_name"), "column_name")?;
        if table == "blind_indexes" {
            return validate_blind(
                relid,
                &column,
                &required_text(text("field"), "field")?,
                &required_text(name("target_column"), "target_column")?,
                &required_text(text("key_id"), "key_id")?,
                text("normalize").as_deref(),
            );
        }
        let fields = attr::<Vec<Option<String>>>(tuple, &desc, "fields")
            .unwrap_or_default()
            .into_iter()
            .map(|f| f.ok_or_else(|| Error::null_argument("fields").with_detail("the array contains a NULL element")))
            .collect::<Result<Vec<_>>>()?;
        validate(&ConfigInput {
            relid,
            column,
            cfg: ConfigRow {
                table: String::new(), // validate() names the table itself
                fields,
                key_id: text("key_id"),
                key_column: name("key_column"),
                key_prefix: required_text(text("key_prefix"), "key_prefix")?,
                context_column: name("context_column"),
                type_column: name("type_column"),
                fields_by_type: attr::<JsonB>(tuple, &desc, "fields_by_type").map(|j| j.0),
                on_forgotten: required_text(text("on_forgotten"), "on_forgotten")?,
                allow_unlisted_types: attr::<bool>(tuple, &desc, "allow_unlisted_types")
                    .ok_or_else(|| Error::null_argument("allow_unlisted_types"))?,
                // (the SQL objects of a release before 0.3.0 have no PII guard: ignore)
                unprotected_pii: required_text(
                    text("unprotected_pii").or_else(|| (!crate::keys::catalog().pii_guard).then(|| "ignore".into())),
                    "unprotected_pii",
                )?,
                // (the SQL objects of a release before 0.3.0 have no compression: none)
                compress: required_text(
                    text("compress").or_else(|| (!crate::keys::catalog().pii_guard).then(|| "none".into())),
                    "compress",
                )?,
                // (the SQL objects of a release before 0.3.0 have no tokenization: none)
                tokenize_fields: attr::<Vec<Option<String>>>(tuple, &desc, "tokenize_fields")
                    .unwrap_or_default()
                    .into_iter()
                    .map(|f| {
                        f.ok_or_else(|| {
                            Error::null_argument("tokenize_fields").with_detail("the array contains a NULL element")
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            },
        })
    })();
    checked.map_err(|e| {
        let mut e2 = Error::new(e.kind(), format!("invalid event_crypto.{table} row: {}", e.message())).with_hint(
            "Change the protection configuration with event_crypto.protect() and event_crypto.add_blind_index().",
        );
        if let Some(d) = e.detail() {
            e2 = e2.with_detail(d.to_string());
        }
        e2
    })
}

/// Re-creates the decrypted view of every protected column the caller may change (the TRIGGER privilege) from
/// the stored configuration, keeping each view's name: after an upgrade that changed what the views call (from
/// 0.1.0, so that they decrypt each row under its own key only), or after columns were added to a table. Views
/// it could not re-create are listed with the reason. `table`: only that table's (the extension's event trigger
/// refreshes a table's views after one of its protected columns was renamed).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn refresh_decrypted_views(
    table: default!(Option<RegClass>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(column_name, String),
        name!(decrypted_view, Option<String>),
        name!(refreshed, bool),
        name!(reason, Option<String>),
    ),
> {
    crate::keys::require_writable("call event_crypto.refresh_decrypted_views()").or_raise();
    type Stored = (pg_sys::Oid, String, ConfigRow, Option<pg_sys::Oid>);
    let rows: Vec<Stored> = as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                &format!(
                    "SELECT table_name::pg_catalog.oid, column_name::pg_catalog.text, decrypted_view::pg_catalog.oid, {columns} \
                     FROM event_crypto.protected_columns \
                     WHERE $1::pg_catalog.oid IS NULL OR table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 ORDER BY 1, 2",
                    columns = super::config::config_row_columns(),
                ),
                None,
                &[table.map(|t| t.0).into()],
            )
            .map_err(spi_error)?
            .map(|r| {
                Ok((
                    get::<pg_sys::Oid>(&r, 1, "table_name")?,
                    get::<String>(&r, 2, "column_name")?,
                    ConfigRow::from_spi(&r, 4)?,
                    get_opt::<pg_sys::Oid>(&r, 3, "decrypted_view")?,
                ))
            })
            .collect::<Result<Vec<_>>>()
        })
    })
    .or_raise();
    let mut out = Vec::new();
    for (relid, column, row, old_view) in rows {
        if table.is_some() && old_view.is_none() {
            continue; // one table's views (after a rename): only those it has
        }
        let label = row.table.clone();
        let t = match Table::lookup(relid) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                out.push((label, column, None, false, Some(e.message().to_string())));
                continue;
            }
        };
        if let Err(e) = t.require(&[Privilege::Trigger], "event_crypto.refresh_decrypted_views()") {
            out.push((t.name, column, None, false, Some(e.message().to_string())));
            continue;
        }
        let view_rel = old_view
            .and_then(|o| {
                crate::catalog::one::<String>(
                    "SELECT relname::pg_catalog.text FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1 \
                     AND relkind OPERATOR(pg_catalog.=) 'v'",
                    &[o.into()],
                )
                .or_raise()
            })
            .unwrap_or_else(|| format!("{}_decrypted", t.relname));
        let input = ConfigInput {
            relid,
            column: column.clone(),
            cfg: row,
        };
        let made = crate::access::in_subtransaction(|| {
            let (view, oid) = make_view(&t, &input, view_rel.clone(), old_view);
            as_catalog_owner(|| {
                Spi::connect_mut(|c| {
                    c.update(
                        "UPDATE event_crypto.protected_columns SET decrypted_view = $3 \
                         WHERE table_name OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
                        None,
                        &[RegClass(relid).into(), column.as_str().into(), RegClass(oid).into()],
                    )
                    .map(|_| ())
                    .map_err(spi_error)
                    .or_raise()
                })
            });
            view
        });
        match made {
            Ok(view) => out.push((t.name, column, Some(view), true, None)),
            Err(c) => out.push((t.name, column, None, false, Some(c.message))),
        }
    }
    let done: Vec<String> = out.iter().filter(|r| r.3).map(|r| format!("{}.{}", r.0, r.1)).collect();
    if !out.is_empty() {
        crate::audit::record(
            "refresh_decrypted_views",
            None,
            &[],
            json!({"refreshed": done, "not_refreshed": out.iter().filter(|r| !r.3).map(|r| json!({"table": r.0, "column": r.1, "reason": r.4})).collect::<Vec<_>>()}),
        );
    }
    TableIterator::new(out)
}
