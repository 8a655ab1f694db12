//! One batch of `reencrypt_table` (`reencrypt_batch`): the work over the rows of a user table that re-encryption
//! needs. (Counting the rows still under a key version before it is retired is `crate::retire`.)
//!
//! It runs on the table as its owner in a security-restricted operation, after checking the acting role's own
//! privileges (`crate::access`), and sees every row (`row_security = off`: a table whose row-level security
//! applies to its owner too is refused rather than half seen). A row whose envelopes are not what they should be
//! (malformed, not bound to the row, failing authentication) is skipped and counted (`rows_invalid`), never
//! re-encrypted and never allowed to stop the pass.

use crate::access::{as_catalog_owner, Privilege, Table};
use crate::catalog::{get, ANCESTORS};
use crate::error::{raise, spi_error, spi_failed, OrRaise};
use crate::jsonb::Jsonb;
use crate::keys::CachedKeys;
use crate::protect::config::{config_of_table, Config, KeySpec};
use crate::protect::trigger::row_binding;
use crate::sqltypes::{Name, RegClass};
use event_crypto_core::document::{check_context, check_envelopes, needs_encryption, OnInvalid};
use event_crypto_core::envelope::Format;
use event_crypto_core::jsonb::to_json_text;
use event_crypto_core::path::{FieldPath, Selector};
use event_crypto_core::reencrypt::{has_stale_envelopes, Reencryptor};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| raise(Error::null_argument(name)))
}

/// A row of `event_crypto.reencrypt_progress` that is missing or holds NULL where it never does.
fn progress_unreadable() -> Error {
    Error::new(
        ErrorKind::CatalogAccess,
        "event_crypto.reencrypt_progress could not be read",
    )
    .with_detail("The pass's progress row is missing, or holds NULL where it never does.")
}

/// The type of a column of `relid` (None if there is no such column).
pub(crate) fn column_type(relid: pg_sys::Oid, column: &str) -> Option<pg_sys::Oid> {
    crate::catalog::one::<pg_sys::Oid>(
        "SELECT atttypid FROM pg_catalog.pg_attribute \
         WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
           AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped",
        &[relid.into(), column.into()],
    )
    .or_raise()
}

/// Every field path a protected column's configuration names (for every type): the table's own configuration, or
/// that of its nearest protected ancestor (a partition, an INHERITS child), as the trigger finds it.
pub(crate) fn all_fields(relid: pg_sys::Oid, column: &str) -> Result<Selector> {
    // a Citus shard's fields are its distributed table's
    let relid = crate::protect::target::configured_relation(relid)?;
    let texts: Vec<String> = as_catalog_owner(|| {
        crate::catalog::all(
            &format!(
                "{ANCESTORS}, cfg AS ( \
                     SELECT p.* FROM event_crypto.protected_columns p JOIN up ON p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) up.oid \
                     WHERE p.column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name ORDER BY up.depth LIMIT 1) \
                 SELECT DISTINCT f FROM cfg p, \
                        LATERAL (SELECT pg_catalog.unnest(p.fields) \
                                 UNION SELECT pg_catalog.jsonb_array_elements_text(e.value) \
                                       FROM pg_catalog.jsonb_each(COALESCE(p.fields_by_type, '{{}}')) e) x(f)"
            ),
            &[relid.into(), column.into()],
            "field",
        )
    })?;
    let paths = texts.iter().map(|t| FieldPath::parse(t)).collect::<Result<Vec<_>>>()?;
    Selector::new(&paths)
}

/// What one row needs.
enum RowPlan {
    Keep,
    Rewrite(String),
    Invalid,
}

/// One batch of a pass over "table"."column": the next `batch_size` rows after the last position, of which those
/// holding an envelope under an old key version, or (protected columns) a configured field still in plaintext,
/// are rewritten; the protect trigger encrypts the plaintext fields of such rows as on any UPDATE (and fills
/// their blind index columns). Rows whose envelopes are not bound to them are skipped and counted. Needs SELECT
/// and UPDATE on the table; runs as its owner.
#[pg_extern(volatile, parallel_unsafe)]
fn reencrypt_batch(
    table: Option<RegClass>,
    column: Option<Name>,
    batch_size: default!(Option<i32>, 1000),
    context_column: default!(Option<Name>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(rows_scanned, i64),
        name!(rows_rewritten, i64),
        name!(rows_invalid, i64),
        name!(finished, bool),
    ),
> {
    crate::keys::require_writable("call event_crypto.reencrypt_batch()").or_raise();
    let relid = required(table, "table").0;
    let column = required(column, "column").0;
    let batch_size = required(batch_size, "batch_size");
    if !(1..=100_000).contains(&batch_size) {
        raise(Error::invalid_argument("batch_size must be between 1 and 100000"));
    }
    let t = Table::open(relid).or_raise();
    t.require(
        &[Privilege::Select, Privilege::Update],
        "event_crypto.reencrypt_batch()",
    )
    .or_raise();
    if t.partitioned {
        // a pass walks physical row positions: a partitioned table has none of its own, and a pass over it would
        // end at once having seen nothing
        raise(
            Error::new(
                ErrorKind::Unsupported,
                format!("{} is partitioned: its rows are in its partitions", t.name),
            )
            .with_hint("CALL event_crypto.reencrypt_table() on the partitioned table (it passes over every partition), or call reencrypt_batch() on each partition."),
        );
    }
    if crate::protect::target::is_citus_table(relid).or_raise() {
        // the shell table on this node holds no rows: a pass over it would end at once having seen nothing
        raise(
            Error::new(
                ErrorKind::Unsupported,
                format!("{} is a Citus distributed table: its rows are in its shards", t.name),
            )
            .with_hint("CALL event_crypto.reencrypt_table() on the coordinator: it passes over every shard, each batch on the node holding it (docs/scaling.md#citus)."),
        );
    }
    // a json column is read as jsonb and written back as JSON text (its key order and spacing become jsonb's)
    let json = match column_type(relid, &column) {
        None => raise(Error::new(
            ErrorKind::ConfigColumn,
            format!("column \"{column}\" of {} does not exist", t.name),
        )),
        Some(ty) if ty != pg_sys::JSONBOID && ty != pg_sys::JSONOID => raise(Error::new(
            ErrorKind::WrongColumnType,
            format!("column \"{column}\" of {} is not of type jsonb or json", t.name),
        )),
        Some(ty) => ty == pg_sys::JSONOID,
    };
    let context_column = context_column.map(|n| n.0);
    if let Some(c) = &context_column {
        if column_type(relid, c).is_none() {
            raise(Error::new(
                ErrorKind::ConfigColumn,
                format!("column \"{c}\" of {} does not exist", t.name),
            ));
        }
    }
    let cfg = config_of_table(relid, &column).or_raise();
    if let (Some(cfg), Some(c)) = (&cfg, &context_column) {
        if cfg.context.as_ref().map(|x| &x.name) != Some(c) {
            raise(
                Error::invalid_argument(format!(
                    "column \"{column}\" of {} is protected with context column {}",
                    t.name,
                    cfg.context
                        .as_ref()
                        .map(|x| quote_identifier(&x.name))
                        .unwrap_or_else(|| "none".into())
                ))
                .with_hint("Leave context_column out for protected columns: their configuration names it."),
            );
        }
    }
    let fields = cfg.as_ref().map(|_| all_fields(relid, &column).or_raise());
    let ctx_col = cfg
        .as_ref()
        .and_then(|c| c.context.as_ref().map(|x| x.name.clone()))
        .or(context_column);
    let key_col = cfg.as_ref().and_then(|c| match &c.key {
        KeySpec::Column { col, .. } => Some(col.name.clone()),
        KeySpec::Fixed(_) => None,
    });

    // The progress row: one pass per column at a time (concurrent callers wait on its lock).
    let (last, end) = as_catalog_owner(|| {
        Spi::connect_mut(|c| -> Result<(String, String)> {
            c.update(
                "INSERT INTO event_crypto.reencrypt_progress (table_name, column_name, end_ctid) \
                 VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, event_crypto.reencrypt_end($1::pg_catalog.oid::pg_catalog.regclass)) \
                 ON CONFLICT DO NOTHING",
                None,
                &[relid.into(), column.as_str().into()],
            )
            .map_err(spi_error)?;
            let row = c
                .update(
                    "SELECT finished_at IS NOT NULL, last_ctid::pg_catalog.text, end_ctid::pg_catalog.text \
                     FROM event_crypto.reencrypt_progress \
                     WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                     FOR UPDATE",
                    Some(1),
                    &[relid.into(), column.as_str().into()],
                )
                .map_err(spi_error)?;
            let r = row.first();
            let finished: bool = r.get(1).map_err(spi_error)?.unwrap_or(false);
            if finished {
                c.update(
                    "UPDATE event_crypto.reencrypt_progress SET started_at = pg_catalog.now(), updated_at = pg_catalog.now(), \
                        finished_at = NULL, last_ctid = '(0,0)', end_ctid = event_crypto.reencrypt_end(table_name), \
                        batches = 0, rows_scanned = 0, rows_rewritten = 0, rows_invalid = 0 \
                     WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
                    None,
                    &[relid.into(), column.as_str().into()],
                )
                .map_err(spi_error)?;
            }
            let r = c
                .select(
                    "SELECT last_ctid::pg_catalog.text, end_ctid::pg_catalog.text FROM event_crypto.reencrypt_progress \
                     WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
                    Some(1),
                    &[relid.into(), column.as_str().into()],
                )
                .map_err(spi_error)?;
            let r = r.first();
            Ok((
                r.get::<String>(1).map_err(spi_error)?.ok_or_else(progress_unreadable)?,
                r.get::<String>(2).map_err(spi_error)?.ok_or_else(progress_unreadable)?,
            ))
        })
    })
    .or_raise();

    let text_of = |c: &Option<String>| match c {
        Some(c) => format!("pg_catalog.format('%s', t.{})", quote_identifier(c)),
        None => "NULL::pg_catalog.text".to_string(),
    };
    let select = format!(
        "SELECT t.ctid::pg_catalog.text, {read}, {ctx}, {key} FROM {tbl} t \
         WHERE t.ctid OPERATOR(pg_catalog.>) $1::pg_catalog.tid AND t.ctid OPERATOR(pg_catalog.<) $2::pg_catalog.tid \
         ORDER BY t.ctid LIMIT $3",
        read = if json {
            // as text, parsed here: a value jsonb cannot hold (\u0000) is one row left alone, not a failed pass
            format!("t.{}::pg_catalog.text", quote_identifier(&column))
        } else {
            format!("t.{}", quote_identifier(&column))
        },
        ctx = text_of(&ctx_col),
        key = text_of(&key_col),
        tbl = t.name
    );
    let update = format!(
        "UPDATE {tbl} t SET {col} = u.v::pg_catalog.{ty} \
         FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.tid[]), pg_catalog.unnest($2::pg_catalog.text[])) AS u(ctid, v) \
         WHERE t.ctid OPERATOR(pg_catalog.=) u.ctid",
        tbl = t.name,
        col = quote_identifier(&column),
        ty = if json { "json" } else { "jsonb" }
    );
    // envelopes move to the format new encryptions write (event_crypto.envelope_format)
    let format = crate::keys::write_format();
    type Batch = (i64, Option<String>, Vec<(String, String)>, i64);
    let (scanned, last_seen, rewrite, invalid) = t
        .as_owner(|| {
            Spi::connect_mut(|c| -> Result<Batch> {
                let rows = c
                    .select(
                        &select,
                        None,
                        &[last.as_str().into(), end.as_str().into(), (batch_size as i64).into()],
                    )
                    .map_err(spi_error)?;
                let mut scanned = 0i64;
                let mut last_seen = None;
                let mut rewrite = Vec::new();
                let mut invalid = 0i64;
                for r in rows {
                    scanned += 1;
                    let ctid: String = get(&r, 1, "ctid")?;
                    last_seen = Some(ctid.clone());
                    let payload = if json {
                        let Some(text) = r.get::<String>(2).map_err(spi_error)? else {
                            continue;
                        };
                        match event_crypto_core::jsonb::from_json_text(&text) {
                            Ok(bytes) => Jsonb::from_bytes(&bytes),
                            Err(_) => {
                                invalid += 1;
                                continue;
                            }
                        }
                    } else {
                        let Some(p) = r.get::<Jsonb>(2).map_err(spi_error)? else {
                            continue;
                        };
                        p
                    };
                    let ctx: Option<String> = r.get(3).map_err(spi_error)?;
                    let subject: Option<String> = r.get(4).map_err(spi_error)?;
                    match plan_row(
                        cfg.as_deref(),
                        fields.as_ref(),
                        &payload,
                        ctx.as_deref(),
                        subject.as_deref(),
                        format,
                    ) {
                        RowPlan::Keep => {}
                        RowPlan::Invalid => invalid += 1,
                        RowPlan::Rewrite(text) => rewrite.push((ctid, text)),
                    }
                }
                Ok((scanned, last_seen, rewrite, invalid))
            })
        })
        .or_raise();
    let rewritten = rewrite.len() as i64;
    if !rewrite.is_empty() {
        let (ctids, values): (Vec<String>, Vec<String>) = rewrite.into_iter().unzip();
        t.as_owner(|| Spi::connect_mut(|c| c.update(&update, None, &[ctids.into(), values.into()]).map(|_| ())))
            .unwrap_or_else(|e| spi_failed(e));
    }
    let (total_scanned, total_rewritten, total_invalid, finished) = as_catalog_owner(|| {
        Spi::connect_mut(|c| -> Result<(i64, i64, i64, bool)> {
            let r = match &last_seen {
                None => c.update(
                    "UPDATE event_crypto.reencrypt_progress SET finished_at = pg_catalog.now(), updated_at = pg_catalog.now() \
                     WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                     RETURNING rows_scanned, rows_rewritten, rows_invalid",
                    Some(1),
                    &[relid.into(), column.as_str().into()],
                ),
                Some(l) => c.update(
                    "UPDATE event_crypto.reencrypt_progress SET last_ctid = $3::pg_catalog.tid, batches = batches OPERATOR(pg_catalog.+) 1, \
                        rows_scanned = rows_scanned OPERATOR(pg_catalog.+) $4, rows_rewritten = rows_rewritten OPERATOR(pg_catalog.+) $5, \
                        rows_invalid = rows_invalid OPERATOR(pg_catalog.+) $6, updated_at = pg_catalog.now() \
                     WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                     RETURNING rows_scanned, rows_rewritten, rows_invalid",
                    Some(1),
                    &[
                        relid.into(),
                        column.as_str().into(),
                        l.as_str().into(),
                        scanned.into(),
                        rewritten.into(),
                        invalid.into(),
                    ],
                ),
            }
            .map_err(spi_error)?;
            let r = r.first();
            // the pass's counters (NOT NULL columns): a row that is not there, or not what this code reads, is an
            // error, never a count of 0
            let count = |i: usize| -> Result<i64> {
                r.get::<i64>(i).map_err(spi_error)?.ok_or_else(progress_unreadable)
            };
            Ok((count(1)?, count(2)?, count(3)?, last_seen.is_none()))
        })
    })
    .or_raise();
    TableIterator::once((total_scanned, total_rewritten, total_invalid, finished))
}

/// Decides what one row of a re-encryption pass needs. For a protected column, every envelope must be bound
/// to the row (else the row is invalid and left alone); a row with stale envelopes (an older key version, or
/// another envelope format than `format`) or configured plaintext is rewritten (the trigger encrypts the
/// plaintext).
fn plan_row(
    cfg: Option<&Config>,
    fields: Option<&Selector>,
    payload: &Jsonb,
    ctx: Option<&str>,
    subject: Option<&str>,
    format: Format,
) -> RowPlan {
    let doc = payload.document();
    let context = match check_context(ctx.filter(|c| !c.is_empty())) {
        Ok(c) => c,
        Err(_) => return RowPlan::Invalid,
    };
    let mut keys = CachedKeys::default();
    // Rows of a protected column are judged by their binding: one that does not hold is skipped and counted. A
    // column that is not protected has no binding to judge by: an envelope that does not open with the context
    // column the call named fails the batch (most likely the call named the wrong one).
    let row_level = |kind: ErrorKind| cfg.is_some() && OnInvalid::applies_to(kind);
    if let Some(cfg) = cfg {
        let binding = row_binding(cfg, subject);
        match check_envelopes(&doc, &mut keys, context, &binding, |_, _| Ok(())) {
            Ok(_) => {}
            Err(e) if OnInvalid::applies_to(e.kind()) => return RowPlan::Invalid,
            Err(e) => raise(e),
        }
    }
    let plaintext_left = fields.is_some_and(|f| needs_encryption(&doc, f).unwrap_or(false));
    let stale = match has_stale_envelopes(&doc, &mut keys, format) {
        Ok(s) => s,
        Err(e) if row_level(e.kind()) => return RowPlan::Invalid,
        Err(e) => raise(e),
    };
    if !stale && !plaintext_left {
        return RowPlan::Keep;
    }
    let mut out = Vec::new();
    // a protected column's envelopes are compressed as its configuration says; others keep their own
    let mut reencryptor = Reencryptor::new(&mut keys, context).format(format);
    if let Some(cfg) = cfg {
        reencryptor = reencryptor.compression(crate::guc::compression(&cfg.compress).or_raise());
    }
    let r = reencryptor.reencrypt_document(&doc, &mut out);
    let datum: &[u8] = match r {
        Ok(true) => &out,
        Ok(false) => payload.bytes(),
        Err(e) if row_level(e.kind()) => return RowPlan::Invalid,
        Err(e) => raise(e),
    };
    match to_json_text(datum) {
        Ok(text) => RowPlan::Rewrite(text),
        Err(_) => RowPlan::Invalid,
    }
}
