//! Retiring key versions without losing data by mistake (issue 12): `retire_key_version` never destroys a version
//! that stored values still use, and otherwise first *disables* it for `event_crypto.retire_wait` (7 days by
//! default, as cloud KMSs schedule deletion rather than delete): decryption under a disabled version fails closed
//! (`38004`, or follows `on_shredded`), every attempt is counted and reported (`crate::keys`), `cancel_retire`
//! re-enables it, and only then does the maintenance run destroy it (`destroy_due`). `force => true` destroys at
//! once. Shredding (`shred_key`, `forget_subject`) stays immediate: erasure never waits.
//!
//! Whether a version is still used is counted by `key_version_usage`: every json, jsonb, text, varchar and char
//! column (and arrays of them) of every table and materialized view of the database outside the system schemas,
//! not only the protected tables: data written with `encrypt_fields` directly counts as much as data a trigger
//! encrypted. Each table is read as its owner in a security-restricted operation with `row_security = off`
//! (after checking the caller's SELECT privilege), so rows a row-level security policy hides from the caller are
//! counted too. A count that cannot be made (no privilege, a table whose policies apply to its owner as well,
//! another session's temporary table, values that do not parse) is reported as unknown (`rows` NULL) and is never
//! taken as zero: the retirement is refused.

use crate::access::{in_subtransaction, Table};
use crate::catalog::get;
use crate::error::{raise, spi_error, OrRaise};
use crate::jsonb::Jsonb;
use event_crypto_core::envelope::KeyNames;
use event_crypto_core::reencrypt::{text_uses_key_version, uses_key_version};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use serde_json::json;

fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| raise(Error::null_argument(name)))
}

fn check_version(key_id: &str, version: i32) -> Result<()> {
    event_crypto_core::envelope::check_key_id(key_id)?;
    if version < 1 {
        return Err(Error::invalid_argument(format!(
            "key version {version} does not exist (versions start at 1)"
        )));
    }
    Ok(())
}

/// How many values of one column use a key version.
pub struct ColumnUsage {
    /// The table's name, quoted and schema-qualified (or its OID if it is gone).
    pub label: String,
    pub column: String,
    /// `None`: the count could not be made (see `note`).
    pub rows: Option<i64>,
    /// Values that could not be read (a jsonb document that does not parse as one).
    pub unreadable: i64,
    pub note: Option<String>,
}

impl ColumnUsage {
    fn blocks(&self) -> bool {
        self.rows != Some(0) || self.unreadable > 0
    }
}

/// A column that may hold envelopes: (table, column, whether it is jsonb, whether the caller may read it,
/// whether the table is another session's temporary table).
struct Candidate {
    table: pg_sys::Oid,
    column: String,
    jsonb: bool,
    readable: bool,
    foreign_temp: bool,
}

fn candidates() -> Result<Vec<Candidate>> {
    // Evaluated as the caller (has_column_privilege: current_user), with every name schema-qualified.
    Spi::connect(|c| {
        c.select(
            "SELECT c.oid, a.attname::pg_catalog.text, \
                    COALESCE(NULLIF(t.typbasetype, 0), t.oid) OPERATOR(pg_catalog.=) 'pg_catalog.jsonb'::pg_catalog.regtype, \
                    pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT'), \
                    c.relpersistence OPERATOR(pg_catalog.=) 't' AND c.relnamespace OPERATOR(pg_catalog.<>) pg_catalog.pg_my_temp_schema() \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
                                           AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
             JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
             LEFT JOIN pg_catalog.pg_type e ON e.oid OPERATOR(pg_catalog.=) t.typelem AND t.typcategory OPERATOR(pg_catalog.=) 'A' \
             WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,m}') \
               AND n.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema,event_crypto}') \
               AND n.nspname OPERATOR(pg_catalog.!~~) 'pg\\_toast%' \
               AND (COALESCE(NULLIF(t.typbasetype, 0), t.oid) OPERATOR(pg_catalog.=) ANY ('{json,jsonb,text,varchar,bpchar}'::pg_catalog.regtype[]::pg_catalog.oid[]) \
                    OR e.oid OPERATOR(pg_catalog.=) ANY ('{json,jsonb,text,varchar,bpchar}'::pg_catalog.regtype[]::pg_catalog.oid[])) \
             ORDER BY c.oid, a.attnum",
            None,
            &[],
        )
        .map_err(spi_error)?
        .map(|r| {
            Ok(Candidate {
                table: get(&r, 1, "oid")?,
                column: get(&r, 2, "attname")?,
                jsonb: get(&r, 3, "jsonb")?,
                readable: get(&r, 4, "readable")?,
                foreign_temp: get(&r, 5, "foreign_temp")?,
            })
        })
        .collect()
    })
}

/// Counts, in one pass over `t`, the values of each of `columns` (name, jsonb?) that hold an envelope under
/// version `version` of the key `key` names (format 1 envelopes by key id, format 2 by handle): (rows,
/// unreadable) per column.
fn scan_table(t: &Table, columns: &[(String, bool)], key: KeyNames<'_>, version: u32) -> Result<Vec<(i64, i64)>> {
    let list: Vec<String> = columns
        .iter()
        .map(|(c, jsonb)| {
            if *jsonb {
                format!("t.{}::pg_catalog.jsonb", quote_identifier(c))
            } else {
                format!("t.{}::pg_catalog.text", quote_identifier(c))
            }
        })
        .collect();
    // ONLY: a parent and its children are each counted once, as themselves.
    let sql = format!("SELECT {} FROM ONLY {} t", list.join(", "), t.name);
    t.as_owner(|| {
        Spi::connect(|client| -> Result<Vec<(i64, i64)>> {
            let mut counts = vec![(0i64, 0i64); columns.len()];
            let mut cursor = client.try_open_cursor(sql.as_str(), &[]).map_err(spi_error)?;
            loop {
                pgrx::check_for_interrupts!();
                let batch = cursor.fetch(1000).map_err(spi_error)?;
                // SAFETY: the table fetch() just set; freed once this batch is counted.
                let raw = unsafe { pg_sys::SPI_tuptable };
                if batch.is_empty() {
                    break;
                }
                for r in batch {
                    for (i, (_, jsonb)) in columns.iter().enumerate() {
                        let used = if *jsonb {
                            let Some(p) = r.get::<Jsonb>(i + 1).map_err(spi_error)? else {
                                continue;
                            };
                            event_crypto_core::jsonb::Document::from_datum(p.bytes())
                                .and_then(|d| uses_key_version(&d, key, version))
                        } else {
                            let Some(s) = r.get::<&str>(i + 1).map_err(spi_error)? else {
                                continue;
                            };
                            Ok(text_uses_key_version(s.as_bytes(), key, version))
                        };
                        match used {
                            Ok(true) => counts[i].0 += 1,
                            Ok(false) => {}
                            Err(_) => counts[i].1 += 1,
                        }
                    }
                }
                // SAFETY: nothing refers to the batch any more.
                unsafe { pg_sys::SPI_freetuptable(raw) };
            }
            Ok(counts)
        })
    })
}

/// Every column of the database that may hold envelopes, with how many of its values use `key_id` version
/// `version` (`rows: None` where that could not be counted, and why).
pub fn usage(key_id: &str, version: u32) -> Result<Vec<ColumnUsage>> {
    // envelopes of format 2 name the key id by its handle
    let key = KeyNames {
        key_id,
        handle: crate::keys::handle_of(key_id)?,
    };
    let cands = candidates()?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < cands.len() {
        let table = cands[i].table;
        let mut j = i;
        while j < cands.len() && cands[j].table == table {
            j += 1;
        }
        let group = &cands[i..j];
        i = j;
        pgrx::check_for_interrupts!();
        let unknown = |label: &str, c: &Candidate, why: String| ColumnUsage {
            label: label.to_string(),
            column: c.column.clone(),
            rows: None,
            unreadable: 0,
            note: Some(why),
        };
        let t = match Table::lookup_any(table) {
            Ok(Some(t)) => t,
            Ok(None) => continue, // dropped since: nothing stored in it any more
            Err(e) => {
                let label = format!("OID {}", table.to_u32());
                out.extend(group.iter().map(|c| unknown(&label, c, e.message().to_string())));
                continue;
            }
        };
        if group[0].foreign_temp {
            out.extend(
                group
                    .iter()
                    .map(|c| unknown(&t.name, c, "a temporary table of another session cannot be read".into())),
            );
            continue;
        }
        let (readable, unreadable): (Vec<&Candidate>, Vec<&Candidate>) = group.iter().partition(|c| c.readable);
        out.extend(unreadable.into_iter().map(|c| {
            unknown(
                &t.name,
                c,
                format!("permission denied: SELECT on this column of {} is needed", t.name),
            )
        }));
        if readable.is_empty() {
            continue;
        }
        let cols: Vec<(String, bool)> = readable.iter().map(|c| (c.column.clone(), c.jsonb)).collect();
        match in_subtransaction(|| scan_table(&t, &cols, key, version)) {
            Ok(Ok(counts)) => {
                for (c, (rows, bad)) in readable.iter().zip(counts) {
                    out.push(ColumnUsage {
                        label: t.name.clone(),
                        column: c.column.clone(),
                        rows: Some(rows),
                        unreadable: bad,
                        note: (bad > 0).then(|| format!("{bad} values are not documents that can be read")),
                    });
                }
            }
            Ok(Err(e)) => out.extend(readable.iter().map(|c| unknown(&t.name, c, e.message().to_string()))),
            Err(caught) => out.extend(readable.iter().map(|c| unknown(&t.name, c, caught.message.clone()))),
        }
    }
    // the token vault (schema event_crypto, not among the candidates): its values are under a key version too
    if let Some(h) = key.handle {
        let n = crate::access::as_catalog_owner(|| {
            crate::catalog::one::<i64>(
                "SELECT pg_catalog.count(*) FROM event_crypto.token_vault \
                 WHERE key_handle OPERATOR(pg_catalog.=) $1 AND key_version OPERATOR(pg_catalog.=) $2",
                &[h.to_i64().into(), (version as i32).into()],
            )
        })?
        .unwrap_or(0);
        out.push(ColumnUsage {
            label: "event_crypto.token_vault".to_string(),
            column: "value".to_string(),
            rows: Some(n),
            unreadable: 0,
            note: None,
        });
    }
    Ok(out)
}

/// Per column of the database that may hold envelopes (json, jsonb, text, varchar, char and arrays of them, in
/// every table and materialized view outside the system schemas), how many values use `key_id` version
/// `version`. Lists the columns that do, and those it could not count (`rows` NULL, with the reason in `note`);
/// columns without such values are left out. Each table is read as its owner with row-level security off (so
/// rows its policies hide from the caller count too), after checking the caller's SELECT privilege.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn key_version_usage(
    key_id: Option<&str>,
    version: Option<i32>,
) -> TableIterator<
    'static,
    (
        name!(table_name, Option<String>),
        name!(column_name, String),
        name!(rows, Option<i64>),
        name!(unreadable, i64),
        name!(note, Option<String>),
    ),
> {
    let key_id = required(key_id, "key_id");
    let version = required(version, "version");
    check_version(key_id, version).or_raise();
    let rows = usage(key_id, version as u32).or_raise();
    TableIterator::new(
        rows.into_iter()
            .filter(|u| u.blocks())
            .map(|u| (Some(u.label), u.column, u.rows, u.unreadable, u.note)),
    )
}

/// Retires one version of a key id (`retire_key_version`). Refuses the active version, and (unless `force`) a
/// version that stored values still use or that cannot be shown to be unused; otherwise disables it until
/// `event_crypto.retire_wait` has passed (the maintenance run destroys it then), or with `force` destroys it at
/// once (its envelopes read as shredded).
pub fn retire_version(key_id: &str, version: i32, force: bool) -> Result<serde_json::Value> {
    check_version(key_id, version)?;
    let status = crate::keys::version_status(key_id, version as u32)?;
    match status.as_str() {
        "shredded" => {
            return Ok(json!({"key_id": key_id, "version": version, "destroyed": false, "already_destroyed": true}))
        }
        "active" => {
            return Err(Error::new(
                ErrorKind::KeyInUse,
                format!("version {version} of encryption key \"{key_id}\" is its active version"),
            )
            .with_hint("Rotate the key (event_crypto.rotate_key), re-encrypt (event_crypto.reencrypt_table), then retire the old version."))
        }
        "disabled" if !force => {
            let after = destroy_after(key_id, version)?;
            return Ok(json!({"key_id": key_id, "version": version, "destroyed": false, "disabled": true,
                             "already_disabled": true, "destroy_after": after}));
        }
        _ => {}
    }
    if force {
        let destroyed = crate::keys::destroy_version(key_id, version)?;
        if destroyed {
            crate::audit::record(
                "retire_key_version",
                None,
                &[key_id.to_string()],
                json!({"version": version, "forced": true, "destroyed": true}),
            );
        }
        return Ok(json!({"key_id": key_id, "version": version, "destroyed": destroyed, "forced": true}));
    }
    let columns = usage(key_id, version as u32)?;
    let in_use: Vec<String> = columns
        .iter()
        .filter(|u| u.rows.is_some_and(|n| n > 0))
        .map(|u| {
            format!(
                "{} rows of {}.{}",
                u.rows.unwrap_or(0),
                u.label,
                quote_identifier(&u.column)
            )
        })
        .collect();
    let unknown: Vec<String> = columns
        .iter()
        .filter(|u| u.rows.is_none() || u.unreadable > 0)
        .map(|u| {
            format!(
                "{}.{} ({})",
                u.label,
                quote_identifier(&u.column),
                u.note.as_deref().unwrap_or("not counted")
            )
        })
        .collect();
    let checked = columns.len();
    if !in_use.is_empty() || !unknown.is_empty() {
        let mut detail = Vec::new();
        if !in_use.is_empty() {
            detail.push(format!("Still encrypted under it: {}.", bounded(&in_use)));
        }
        if !unknown.is_empty() {
            detail.push(format!("Could not be checked: {}.", bounded(&unknown)));
        }
        return Err(Error::new(
            ErrorKind::KeyInUse,
            if in_use.is_empty() {
                format!("version {version} of encryption key \"{key_id}\" cannot be shown to be unused")
            } else {
                format!("version {version} of encryption key \"{key_id}\" still encrypts stored values")
            },
        )
        .with_detail(detail.join(" "))
        .with_hint("See SELECT * FROM event_crypto.key_version_usage(key_id, version); CALL event_crypto.reencrypt_table() on those columns (with the privileges to read them), or pass force => true to destroy it anyway (those fields then read as shredded)."));
    }
    let wait = crate::guc::retire_wait_secs();
    let Some(after) = crate::keys::disable_version(key_id, version, wait)? else {
        // changed under us (another session retired, shredded or destroyed it): report what it is now
        return retire_version(key_id, version, false);
    };
    crate::audit::record(
        "disable_key_version",
        None,
        &[key_id.to_string()],
        json!({"version": version, "destroy_after": after, "retire_wait_seconds": wait, "columns_checked": checked}),
    );
    Ok(
        json!({"key_id": key_id, "version": version, "destroyed": false, "disabled": true, "destroy_after": after,
              "columns_checked": checked}),
    )
}

/// At most 20 items of a list, and how many more.
fn bounded(items: &[String]) -> String {
    let mut s = items.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 20 {
        s.push_str(&format!(" and {} more", items.len() - 20));
    }
    s
}

fn destroy_after(key_id: &str, version: i32) -> Result<Option<String>> {
    crate::access::as_catalog_owner(|| {
        crate::catalog::one::<String>(
            "SELECT destroy_after::pg_catalog.text FROM event_crypto.keys \
             WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2",
            &[key_id.into(), version.into()],
        )
    })
}

/// Re-enables a version `retire_key_version` disabled (it decrypts again and is no longer scheduled for
/// destruction). Returns whether it was disabled; a destroyed version cannot come back (`55000`).
#[pg_extern(volatile, parallel_unsafe)]
fn cancel_retire(key_id: Option<&str>, version: Option<i32>) -> bool {
    crate::keys::require_writable("call event_crypto.cancel_retire()").or_raise();
    let key_id = required(key_id, "key_id");
    let version = required(version, "version");
    check_version(key_id, version).or_raise();
    let status = crate::keys::version_status(key_id, version as u32).or_raise();
    if status == "shredded" {
        raise(Error::key_shredded(key_id).with_detail(format!(
            "Version {version} was destroyed; destroyed key material cannot come back."
        )));
    }
    let enabled = crate::keys::enable_version(key_id, version).or_raise();
    if enabled {
        crate::audit::record(
            "cancel_retire",
            None,
            &[key_id.to_string()],
            json!({"version": version}),
        );
    }
    enabled
}

/// The maintenance action `retire`: destroys every disabled version whose `destroy_after` has passed, each in
/// its own subtransaction; reports what it destroyed and what failed.
pub fn destroy_due() -> serde_json::Value {
    let due: Vec<(String, i32)> = crate::access::as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT key_id, version FROM event_crypto.keys \
                 WHERE status OPERATOR(pg_catalog.=) 'disabled' AND destroy_after OPERATOR(pg_catalog.<=) pg_catalog.now() \
                 ORDER BY destroy_after, key_id, version",
                None,
                &[],
            )
            .map_err(spi_error)?
            .map(|r| Ok((get::<String>(&r, 1, "key_id")?, get::<i32>(&r, 2, "version")?)))
            .collect::<Result<Vec<_>>>()
        })
    })
    .or_raise();
    let mut destroyed = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut failed = Vec::new();
    for (k, v) in &due {
        pgrx::check_for_interrupts!();
        match in_subtransaction(|| crate::keys::destroy_version(k, *v)) {
            Ok(Ok(true)) => {
                destroyed.push(json!({"key_id": k, "version": v}));
                ids.push(k.clone());
            }
            Ok(Ok(false)) => {} // re-enabled, shredded or destroyed meanwhile
            Ok(Err(e)) => failed.push(json!({"key_id": k, "version": v, "error": e.message()})),
            Err(c) => failed.push(json!({"key_id": k, "version": v, "sqlstate": c.sqlstate, "error": c.message})),
        }
    }
    if !destroyed.is_empty() {
        ids.sort();
        ids.dedup();
        crate::audit::record(
            "retire_key_version",
            None,
            &ids,
            json!({"destroyed": destroyed, "scheduled": true}),
        );
    }
    let mut v = json!({"destroyed": destroyed.len()});
    if !failed.is_empty() {
        v["failed"] = json!(failed);
    }
    v
}
