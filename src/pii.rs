//! PII detection (issue 17): `detect_pii(payload)` reports where a document holds personal data, and
//! `suggest_protection(table, column, sample_rows)` what a table's sample holds and the `protect()` call that would
//! cover it. The detectors are the core's (`event_crypto_core::pii`); the protect trigger's guard
//! (`unprotected_pii`) is in `protect::trigger`.
//!
//! suggest_protection reads the table with the caller's own rights: it checks the caller's SELECT privilege on the
//! column, then reads as the caller inside a security-restricted operation with a pinned search_path (row-level
//! security applies to the caller as it would to their own SELECT; code the table's owner wrote never runs with
//! more rights than the caller's). The table comes as a regclass and is named by its quoted catalog name, the
//! column quoted: nothing given is spliced into SQL as text.

use crate::access::{acting_role_oid, as_catalog_owner, as_restricted, Table};
use crate::error::{spi_error, OrRaise};
use crate::jsonb::Jsonb;
use crate::protect::admin::literal;
use crate::protect::config::{config_row_columns, ConfigRow};
use crate::sqltypes::{Name, RegClass};
use event_crypto_core::path::FieldPath;
use event_crypto_core::pii::{detect, Kind};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use std::collections::{BTreeMap, BTreeSet};

/// Rows suggest_protection reads at most.
const MAX_SAMPLE_ROWS: i32 = 100_000;

/// Where a document holds personal data: each (path, kind) once, with the detector's confidence. Paths are in the
/// syntax protect() takes (`items[*].card`); a scalar document's own value has the empty path. Pure: reads no
/// catalog, no key.
#[pg_extern(immutable, parallel_safe)]
fn detect_pii(
    payload: Option<Jsonb>,
) -> TableIterator<'static, (name!(path, String), name!(kind, String), name!(confidence, f32))> {
    let Some(payload) = payload else {
        return TableIterator::new(Vec::new());
    };
    let report = detect(&payload.document()).or_raise();
    if report.truncated {
        pgrx::notice!(
            "event_crypto.detect_pii: the document was inspected in part (at most {} values and {} findings)",
            event_crypto_core::pii::MAX_VALUES,
            event_crypto_core::pii::MAX_FINDINGS
        );
    }
    TableIterator::new(
        report
            .findings
            .into_iter()
            .map(|f| (f.path, f.kind.as_str().to_string(), f.confidence))
            .collect::<Vec<_>>(),
    )
}

fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| crate::error::raise(Error::null_argument(name)))
}

/// Columns a per-subject key is commonly taken from, in order of preference.
const SUBJECT_COLUMNS: &[&str] = &[
    "subject_id",
    "subject",
    "user_id",
    "customer_id",
    "account_id",
    "person_id",
    "tenant_id",
];

/// What personal data a sample of `table`.`column` holds (the first `sample_rows` rows a plain SELECT returns, as
/// the caller sees them): per (path, kind) the rows it was found in and their share of the rows read, with the
/// protect() call that would encrypt every path found (added to the column's configuration when it has one).
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn suggest_protection(
    table: Option<RegClass>,
    column: Option<Name>,
    sample_rows: default!(Option<i32>, 1000),
) -> TableIterator<
    'static,
    (
        name!(path, String),
        name!(kind, String),
        name!(rows, i64),
        name!(share, f32),
        name!(protect_call, String),
    ),
> {
    let relid = required(table, "table").0;
    let column = required(column, "column").0;
    let sample_rows = required(sample_rows, "sample_rows");
    if !(1..=MAX_SAMPLE_ROWS).contains(&sample_rows) {
        crate::error::raise(Error::invalid_argument(format!(
            "sample_rows must be between 1 and {MAX_SAMPLE_ROWS}"
        )));
    }
    TableIterator::new(suggest(relid, &column, sample_rows).or_raise())
}

type Suggestion = (String, String, i64, f32, String);

fn suggest(relid: pg_sys::Oid, column: &str, sample_rows: i32) -> Result<Vec<Suggestion>> {
    let t = Table::lookup_any(relid)?.ok_or_else(|| {
        Error::new(
            ErrorKind::WrongObjectType,
            format!("relation with OID {} does not exist", relid.to_u32()),
        )
    })?;
    let ty = crate::reencrypt::column_type(relid, column).ok_or_else(|| {
        Error::new(
            ErrorKind::ConfigColumn,
            format!("column \"{column}\" of {} does not exist", t.name),
        )
    })?;
    // the caller's own SELECT privilege on the column (on the table, or on the column alone)
    let may_read = crate::catalog::one::<bool>(
        "SELECT pg_catalog.has_column_privilege($1::pg_catalog.oid, $2::pg_catalog.text, 'SELECT')",
        &[relid.into(), column.into()],
    )?
    .unwrap_or(false);
    if !may_read {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("permission denied for column \"{column}\" of table {}", t.name),
        )
        .with_detail("event_crypto.suggest_protection() reads the column with the caller's rights: it needs the SELECT privilege on it."));
    }
    if ty != pg_sys::JSONBOID && ty != pg_sys::JSONOID {
        return Err(Error::new(
            ErrorKind::WrongColumnType,
            format!("column \"{column}\" of {} is not of type jsonb or json", t.name),
        ));
    }
    let sql = format!(
        "SELECT {}::pg_catalog.jsonb FROM {} LIMIT $1",
        quote_identifier(column),
        t.name
    );
    let mut counts: BTreeMap<(String, Kind), i64> = BTreeMap::new();
    let mut read = 0i64;
    as_restricted(acting_role_oid(), false, || {
        Spi::connect(|client| -> Result<()> {
            let mut cursor = client
                .try_open_cursor(sql.as_str(), &[sample_rows.into()])
                .map_err(spi_error)?;
            loop {
                pgrx::check_for_interrupts!();
                let batch = cursor.fetch(100).map_err(spi_error)?;
                if batch.is_empty() {
                    break;
                }
                for r in batch {
                    read += 1;
                    let Some(p) = r.get::<Jsonb>(1).map_err(spi_error)? else {
                        continue;
                    };
                    let doc = event_crypto_core::jsonb::Document::from_datum(p.bytes())?;
                    for f in detect(&doc)?.findings {
                        *counts.entry((f.path, f.kind)).or_default() += 1;
                    }
                }
            }
            Ok(())
        })
    })?;
    if counts.is_empty() {
        return Ok(Vec::new());
    }
    // what is found at a tokenized path is a token (and a path is encrypted or tokenized, not both): not reported
    let existing = existing_config(relid, column)?;
    let tokenized: Vec<FieldPath> = existing
        .as_ref()
        .map(|c| {
            c.tokenize_fields
                .iter()
                .filter_map(|t| crate::protect::config::parse_token_field(t).ok().map(|(p, _)| p))
                .collect()
        })
        .unwrap_or_default();
    if !tokenized.is_empty() {
        counts.retain(|(path, _), _| {
            FieldPath::parse(path).map_or(true, |p| {
                !tokenized.iter().any(|t| crate::protect::config::paths_overlap(t, &p))
            })
        });
        if counts.is_empty() {
            return Ok(Vec::new());
        }
    }
    let call = protect_call(&t, column, existing, counts.keys().map(|(p, _)| p.as_str()))?;
    let mut rows: Vec<Suggestion> = counts
        .into_iter()
        .map(|((path, kind), n)| {
            (
                path,
                kind.as_str().to_string(),
                n,
                n as f32 / read.max(1) as f32,
                call.clone(),
            )
        })
        .collect();
    rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)).then_with(|| a.1.cmp(&b.1)));
    Ok(rows)
}

/// The configuration row of `relid`.`column`, if it is protected.
fn existing_config(relid: pg_sys::Oid, column: &str) -> Result<Option<ConfigRow>> {
    as_catalog_owner(|| {
        Spi::connect(|c| -> Result<Option<ConfigRow>> {
            let r = c
                .select(
                    &format!(
                        "SELECT {columns} FROM event_crypto.protected_columns \
                         WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                           AND column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name",
                        columns = config_row_columns(),
                    ),
                    Some(1),
                    &[relid.into(), column.into()],
                )
                .map_err(spi_error)?;
            r.into_iter().next().map(|r| ConfigRow::from_spi(&r, 1)).transpose()
        })
    })
}

/// The protect() call that encrypts `paths` too: the column's configuration with the paths added, or a new one
/// keyed per subject by a column with a usual name (else one key for the table), with `unprotected_pii => 'warn'`.
fn protect_call<'a>(
    t: &Table,
    column: &str,
    existing: Option<ConfigRow>,
    paths: impl Iterator<Item = &'a str>,
) -> Result<String> {
    let mut fields: BTreeSet<String> = existing
        .as_ref()
        .map(|c| c.fields.iter().cloned().collect())
        .unwrap_or_default();
    fields.extend(paths.filter(|p| !p.is_empty()).map(String::from));
    let array =
        |v: &BTreeSet<String>| format!("ARRAY[{}]", v.iter().map(|f| literal(f)).collect::<Vec<_>>().join(", "));
    let mut args = vec![
        format!("{}::regclass", literal(&t.name)),
        literal(column),
        format!("fields => {}", array(&fields)),
    ];
    match existing {
        Some(c) => {
            if let Some(k) = &c.key_id {
                args.push(format!("key_id => {}", literal(k)));
            }
            if let Some(k) = &c.key_column {
                args.push(format!("key_column => {}", literal(k)));
                if c.key_prefix != "subject:" {
                    args.push(format!("key_prefix => {}", literal(&c.key_prefix)));
                }
            }
            if let Some(k) = &c.context_column {
                args.push(format!("context_column => {}", literal(k)));
            }
            if let (Some(k), Some(by)) = (&c.type_column, &c.fields_by_type) {
                args.push(format!("type_column => {}", literal(k)));
                args.push(format!("fields_by_type => {}", literal(&by.to_string())));
            }
            if c.on_forgotten != "error" {
                args.push(format!("on_forgotten => {}", literal(&c.on_forgotten)));
            }
            if c.allow_unlisted_types {
                args.push("allow_unlisted_types => true".into());
            }
            let guard = if c.unprotected_pii == "ignore" {
                "warn"
            } else {
                c.unprotected_pii.as_str()
            };
            args.push(format!("unprotected_pii => {}", literal(guard)));
            if c.compress != "none" {
                args.push(format!("compress => {}", literal(&c.compress)));
            }
            if !c.tokenize_fields.is_empty() {
                args.push(format!(
                    "tokenize_fields => ARRAY[{}]",
                    c.tokenize_fields
                        .iter()
                        .map(|f| literal(f))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        None => {
            let subject = SUBJECT_COLUMNS
                .iter()
                .find(|c| **c != column && crate::reencrypt::column_type(t.oid, c).is_some());
            match subject {
                Some(c) => args.push(format!("key_column => {}", literal(c))),
                None => args.push(format!("key_id => {}", literal(&format!("table:{}", t.relname)))),
            }
            args.push("unprotected_pii => 'warn'".into());
        }
    }
    Ok(format!("SELECT event_crypto.protect({});", args.join(", ")))
}
