//! Subjects of protected tables: their key ids, forgetting them (`forget_subject`), handing out their data
//! (`export_subject`), and the decryption of one row bound to its subject (`decrypt_row`, used by the decrypted
//! views).
//!
//! Everything here that touches a user table checks the acting role's privileges on it and then runs as the
//! table's owner in a security-restricted operation (`crate::access`). A table that cannot be handled (the role
//! lacks a privilege, row-level security would run its owner's policies with the caller's rights, the table is
//! gone or broken, the statement fails) is skipped and listed in the result and the audit row, and the others are
//! still handled: one table never stops the erasure of every subject.

use super::config::{config_of_table, require_config, Col, Config, KeySpec};
use super::trigger::{key_belongs_to, row_binding};
use crate::access::{as_catalog_owner, in_subtransaction, Caught, Privilege, Table};
use crate::catalog::get;
use crate::error::{raise, spi_error, spi_failed, OrRaise};
use crate::jsonb::Jsonb;
use crate::keys::{self, CachedKeys};
use crate::sqltypes::{Name, RegClass};
use event_crypto_core::document::{check_context, Decryptor, OnInvalid, OnShredded};
use event_crypto_core::jsonb::{to_json_text, Document};
use event_crypto_core::subject::{check_subject, parse_subject_key_id, subject_key_id};
use event_crypto_core::{Error, Result};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::rc::Rc;

/// The key id of generation `generation` of `subject` under `key_prefix` (what a protected table keyed by
/// subject encrypts the subject's rows with): `%` and `#` of the subject id are escaped as `%25` and `%23`, and
/// generations after the first end in `#<n>`.
#[pg_extern(immutable, parallel_safe, name = "subject_key_id")]
fn subject_key_id_sql(key_prefix: Option<&str>, subject: Option<&str>, generation: default!(Option<i32>, 1)) -> String {
    let prefix = key_prefix.unwrap_or_else(|| raise(Error::null_argument("key_prefix")));
    let subject = subject.unwrap_or_else(|| raise(Error::null_argument("subject")));
    let generation = generation.unwrap_or_else(|| raise(Error::null_argument("generation")));
    event_crypto_core::subject::check_key_prefix(prefix).or_raise();
    if generation < 1 {
        raise(Error::invalid_argument("generation must be 1 or more"));
    }
    subject_key_id(prefix, subject, generation as u32).or_raise()
}

/// The subject and generation a key id names under `key_prefix`; no row when it names none.
#[pg_extern(immutable, parallel_safe)]
fn subject_of_key_id(
    key_prefix: Option<&str>,
    key_id: Option<&str>,
) -> TableIterator<'static, (name!(subject, String), name!(generation, i32))> {
    let prefix = key_prefix.unwrap_or_else(|| raise(Error::null_argument("key_prefix")));
    let key_id = key_id.unwrap_or_else(|| raise(Error::null_argument("key_id")));
    TableIterator::new(parse_subject_key_id(prefix, key_id).map(|(s, g)| (s, g as i32)))
}

fn check_subject_arg(subject: Option<&str>) -> &str {
    let s = subject.unwrap_or_else(|| raise(Error::null_argument("subject")));
    check_subject(s).or_raise();
    s
}

/// A protected column keyed per subject.
struct SubjectColumn {
    relid: pg_sys::Oid,
    column: String,
    key_prefix: String,
}

fn subject_columns() -> Vec<SubjectColumn> {
    as_catalog_owner(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT table_name::pg_catalog.oid, column_name::pg_catalog.text, key_prefix \
                     FROM event_crypto.protected_columns WHERE key_column IS NOT NULL \
                     ORDER BY table_name::pg_catalog.oid, column_name",
                    None,
                    &[],
                )
                .unwrap_or_else(|e| spi_failed(e))
                .map(|r| {
                    Ok(SubjectColumn {
                        relid: get(&r, 1, "table_name")?,
                        column: get(&r, 2, "column_name")?,
                        key_prefix: get(&r, 3, "key_prefix")?,
                    })
                })
                .collect::<Result<Vec<_>>>()
                .or_raise()
        })
    })
}

/// The WHERE condition that selects a subject's rows: `$1` is the subject id. The key column's text output
/// (what the trigger derives the key from) must equal it; for text, varchar, uuid and integer columns an equality
/// the column's index can serve comes first.
fn subject_condition(col: &Col, subject: &str) -> String {
    let c = format!("t.{}", quote_identifier(&col.name));
    let exact = format!("pg_catalog.format('%s', {c}) OPERATOR(pg_catalog.=) $1");
    let canonical_int = |s: &str| {
        let d = s.strip_prefix('-').unwrap_or(s);
        !d.is_empty() && d.len() <= 18 && d.bytes().all(|b| b.is_ascii_digit()) && (d == "0" || !d.starts_with('0'))
    };
    let canonical_uuid = |s: &str| {
        s.len() == 36
            && s.bytes().enumerate().all(|(i, b)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    b == b'-'
                } else {
                    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
                }
            })
    };
    let indexed = match col.type_oid {
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Some(format!("{c} OPERATOR(pg_catalog.=) $1::pg_catalog.text")),
        pg_sys::UUIDOID if canonical_uuid(subject) => Some(format!("{c} OPERATOR(pg_catalog.=) $1::pg_catalog.uuid")),
        pg_sys::INT4OID | pg_sys::INT8OID | pg_sys::INT2OID if canonical_int(subject) => {
            Some(format!("{c} OPERATOR(pg_catalog.=) $1::pg_catalog.int8"))
        }
        pg_sys::UUIDOID | pg_sys::INT4OID | pg_sys::INT8OID | pg_sys::INT2OID => return "false".to_string(),
        _ => None,
    };
    match indexed {
        // the column's text is its value's own (text, varchar) or canonical (uuid, integers) text: compared
        // byte for byte without format(), which is STABLE (Citus refuses STABLE functions over columns in the
        // UPDATE of forget_subject on a distributed table)
        Some(i) => format!("{i} AND {c}::pg_catalog.text OPERATOR(pg_catalog.=) ($1::pg_catalog.text COLLATE \"C\")"),
        None => exact,
    }
}

/// Why a table was skipped.
fn skipped(relid: pg_sys::Oid, column: &str, name: Option<&str>, why: Caught) -> Value {
    json!({
        "table": name.map(String::from).unwrap_or_else(|| format!("OID {}", relid.to_u32())),
        "column": column,
        "sqlstate": why.sqlstate,
        "reason": why.message,
    })
}

fn caught_of(e: &Error) -> Caught {
    Caught {
        sqlstate: crate::access::sqlstate_text(crate::error::sqlstate(e.kind()) as i32),
        message: e.message().to_string(),
    }
}

/// Every key id of `subject` under `prefix`: its generations by name, and keys made under 0.1.0's naming that
/// are recorded as the subject's.
fn subject_key_ids(prefix: &str, subject: &str) -> Vec<String> {
    let Ok(base) = subject_key_id(prefix, subject, 1) else {
        // no key id of this subject fits under this prefix: none can exist (but a recorded legacy one)
        return legacy_key_ids(prefix, subject);
    };
    let mut out: Vec<String> = as_catalog_owner(|| {
        crate::catalog::all(
            "SELECT DISTINCT key_id FROM event_crypto.keys \
             WHERE key_id OPERATOR(pg_catalog.=) $1 \
                OR pg_catalog.starts_with(key_id, $1 OPERATOR(pg_catalog.||) '#')",
            &[base.as_str().into()],
            "key_id",
        )
    })
    .or_raise();
    out.retain(|k| key_belongs_to(prefix, subject, k));
    out.extend(legacy_key_ids(prefix, subject));
    out.extend(tombstoned_generations(prefix, subject, &out));
    out.sort();
    out.dedup();
    out
}

/// The subject's key generations that were shredded whole: only their tombstones (digests) are in the catalog, so
/// they are found by computing each generation's key id in turn, up to the first that neither has a tombstone nor
/// is among `named` (a generation is made only once the one before it is shredded).
fn tombstoned_generations(prefix: &str, subject: &str, named: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in 1..=event_crypto_core::subject::MAX_GENERATION {
        let Ok(k) = subject_key_id(prefix, subject, n) else {
            break;
        };
        if crate::tombstones::is_tombstoned(&k).or_raise() {
            out.push(k);
        } else if !named.contains(&k) {
            break;
        }
    }
    out
}

fn legacy_key_ids(prefix: &str, subject: &str) -> Vec<String> {
    if !keys::legacy_keys_exist() {
        return Vec::new();
    }
    as_catalog_owner(|| {
        crate::catalog::all(
            "SELECT key_id FROM event_crypto.legacy_subject_keys \
             WHERE key_prefix OPERATOR(pg_catalog.=) $1 AND subject OPERATOR(pg_catalog.=) $2",
            &[prefix.into(), subject.into()],
            "key_id",
        )
    })
    .or_raise()
}

/// The key prefix (kind of subject) `forget_subject` and `export_subject` act on: the one named, or else the one
/// prefix the protected tables keyed per subject use (`subject:` when none is). Several configured prefixes and
/// none named is refused: a user id and a tenant id can be the same text, and forgetting one must never destroy
/// the other's data.
pub fn subject_kind(key_prefix: Option<&str>, function: &str) -> Result<String> {
    if let Some(p) = key_prefix {
        event_crypto_core::subject::check_key_prefix(p)?;
        return Ok(p.to_string());
    }
    let mut prefixes: Vec<String> = subject_columns().into_iter().map(|c| c.key_prefix).collect();
    prefixes.sort();
    prefixes.dedup();
    match prefixes.len() {
        0 => Ok("subject:".to_string()),
        1 => Ok(prefixes.remove(0)),
        _ => Err(Error::invalid_argument(format!(
            "{function} needs key_prefix: the protected tables key their rows by {} kinds of subject",
            prefixes.len()
        ))
        .with_detail(format!(
            "Key prefixes in use: {}. The same subject id under two prefixes names two different subjects.",
            prefixes
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_hint(format!(
            "Name the kind of subject, e.g. {function}('42', key_prefix => '{}').",
            prefixes[0]
        ))),
    }
}

/// Forgets a subject of one kind (`key_prefix`; see [`subject_kind`]): shreds every key generation of the
/// subject under that prefix, clears the subject's blind index values in the protected tables keyed by that
/// prefix, records an audit row and returns a receipt. Harmless to repeat. Tables it could not clear are listed
/// under `skipped` (`complete` is then false); the keys are shredded in any case.
#[pg_extern(volatile, parallel_unsafe)]
fn forget_subject(subject: Option<&str>, key_prefix: default!(Option<&str>, "NULL")) -> JsonB {
    let subject = check_subject_arg(subject);
    crate::keys::require_writable("forget a subject").or_raise();
    let prefix = subject_kind(key_prefix, "forget_subject").or_raise();
    JsonB(forget(subject, &prefix))
}

/// The key ids of `subject` under `prefix` that have a live version: what forgetting the subject shreds.
pub fn live_subject_key_ids(prefix: &str, subject: &str) -> Vec<String> {
    let ids = subject_key_ids(prefix, subject);
    as_catalog_owner(|| {
        crate::catalog::all(
            "SELECT DISTINCT key_id FROM event_crypto.keys \
             WHERE key_id OPERATOR(pg_catalog.=) ANY ($1) AND status OPERATOR(pg_catalog.<>) 'shredded' ORDER BY key_id",
            &[ids.into()],
            "key_id",
        )
    })
    .or_raise()
}

/// forget_subject() for a checked subject id of the kind `prefix`; returns the receipt.
pub fn forget(subject: &str, prefix: &str) -> Value {
    let columns: Vec<SubjectColumn> = subject_columns()
        .into_iter()
        .filter(|c| c.key_prefix == prefix)
        .collect();
    // A subject with no key yet gets a shredded tombstone (its first key id, version 1), so that an event
    // arriving later is refused (on_forgotten = 'error') or gets a new generation ('new_key') instead of
    // silently creating a live key. The insert waits for a transaction that is creating that key right now (the
    // primary key's uniqueness check) and then yields to it: the key it made is found and shredded below.
    let role = crate::access::acting_role();
    let master_id = crate::master::get()
        .map(|ring| ring.active().id().to_string())
        .unwrap_or_else(|_| "none".to_string());
    let tombstones: i64 = match subject_key_id(prefix, subject, 1) {
        Err(_) => 0,
        // forgotten before: its tombstone refuses the key id already (the rows are under the key id's digest)
        Ok(base) if crate::tombstones::is_tombstoned(&base).or_raise() => 0,
        Ok(base) => as_catalog_owner(|| {
            Spi::connect_mut(|client| {
                // a tombstone has a handle like any key id: an envelope of format 2 under it reads as shredded
                let handle = keys::new_key_handle(client).or_raise();
                let mut args = vec![base.as_str().into(), master_id.as_str().into(), role.as_str().into()];
                let insert = match handle {
                    Some(h) => {
                        args.push(h.into());
                        "INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, \
                                                        master_key_id, created_by, shredded_at, shredded_by, handle) \
                         VALUES ($1, 1, 'aes-256-gcm', 'shredded', NULL, NULL, $2, $3, pg_catalog.now(), $3, $4) \
                         ON CONFLICT DO NOTHING RETURNING 1"
                    }
                    // the SQL objects of a release before handles (until ALTER EXTENSION UPDATE)
                    None => {
                        "INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, \
                                                        master_key_id, created_by, shredded_at, shredded_by) \
                         VALUES ($1, 1, 'aes-256-gcm', 'shredded', NULL, NULL, $2, $3, pg_catalog.now(), $3) \
                         ON CONFLICT DO NOTHING RETURNING 1"
                    }
                };
                client
                    .update(insert, None, &args)
                    .unwrap_or_else(|e| spi_failed(e))
                    .len() as i64
            })
        }),
    };
    let key_ids = subject_key_ids(prefix, subject);
    // the subject's tokens: found by their key ids' handles (taken before the shred, which moves the rows under
    // the key ids' tombstones), deleted with the keys
    let handles = crate::tokens::handles_of(&key_ids);
    let mut destroyed = 0;
    for k in &key_ids {
        destroyed += keys::shred_key(k).or_raise();
    }
    let tokens_purged = crate::tokens::delete_for(&handles);

    // Clear the subject's blind index values, table by table, as each table's owner.
    let mut cleared: i64 = 0;
    let mut touched = Vec::new();
    let mut skips = Vec::new();
    for sc in &columns {
        match clear_blind_indexes(sc, subject) {
            Ok(None) => {}
            Ok(Some((name, n))) => {
                cleared += n;
                touched.push(json!({"table": name, "column": sc.column, "blind_index_rows_cleared": n}));
            }
            Err((name, why)) => skips.push(skipped(sc.relid, &sc.column, name.as_deref(), why)),
        }
    }
    let already = destroyed == 0 && tombstones == 0 && tokens_purged == 0;
    let details = json!({
        "key_prefix": prefix,
        "versions_destroyed": destroyed,
        "tombstones": tombstones,
        "blind_index_rows_cleared": cleared,
        "tokens_purged": tokens_purged,
        "tables": touched,
        "skipped": skips,
        "complete": skips.is_empty(),
        "already_forgotten": already,
    });
    // The audit row names the subject and its key ids by digest; a reason a table gave for being skipped (a table
    // owner's trigger may quote the subject) is recorded without the subject id.
    let named = crate::tombstones::subject_digest_for_write(prefix, subject).or_raise();
    let mut recorded = details.clone();
    if let (Some(d), Some(Value::Array(skips))) = (&named, recorded.get_mut("skipped")) {
        for skip in skips {
            if let Some(Value::String(reason)) = skip.get_mut("reason") {
                if reason.contains(subject) {
                    *reason = reason.replace(subject, d);
                }
            }
        }
    }
    let audit_id = crate::audit::record(
        "forget_subject",
        Some(named.as_deref().unwrap_or(subject)),
        &key_ids,
        recorded,
    );
    let mut receipt = json!({
        "subject": subject,
        "key_prefix": prefix,
        "key_ids": key_ids,
        "audit_id": audit_id,
    });
    if let (Value::Object(r), Value::Object(d)) = (&mut receipt, details) {
        r.extend(d);
    }
    receipt
}

/// Sets the subject's blind index columns of one protected column to NULL. `Ok(None)`: the column has no blind
/// index; `Err`: skipped, with the table's name if known and why.
fn clear_blind_indexes(sc: &SubjectColumn, subject: &str) -> std::result::Result<Option<(String, i64)>, Skip> {
    let table = match Table::lookup(sc.relid) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err((
                None,
                Caught {
                    sqlstate: "42P01".into(),
                    message: "the table no longer exists".into(),
                },
            ))
        }
        Err(e) => return Err((None, caught_of(&e))),
    };
    let fail = |e: &Error| Err((Some(table.name.clone()), caught_of(e)));
    let cfg = match config_of_table(sc.relid, &sc.column) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) => return fail(&e),
    };
    if cfg.blind.is_empty() {
        return Ok(None);
    }
    let KeySpec::Column { col, .. } = &cfg.key else {
        return Ok(None);
    };
    if let Err(e) = table.require(&[Privilege::Select, Privilege::Update], "forget_subject") {
        return fail(&e);
    }
    let sets: Vec<String> = cfg
        .blind
        .iter()
        .map(|b| format!("{} = NULL", quote_identifier(&b.target.name)))
        .collect();
    let any: Vec<String> = cfg
        .blind
        .iter()
        .map(|b| format!("t.{} IS NOT NULL", quote_identifier(&b.target.name)))
        .collect();
    let sql = format!(
        "UPDATE {} t SET {} WHERE {} AND ({})",
        table.name,
        sets.join(", "),
        subject_condition(col, subject),
        any.join(" OR ")
    );
    in_subtransaction(|| {
        table.as_owner(|| {
            Spi::connect_mut(|client| {
                client
                    .update(&sql, None, &[subject.into()])
                    .unwrap_or_else(|e| spi_failed(e))
                    .len() as i64
            })
        })
    })
    .map(|n| Some((table.name.clone(), n)))
    .map_err(|c| (Some(table.name.clone()), c))
}

/// Every row of the subject in every protected table keyed by subject, with the protected column decrypted
/// under the row's own key (the right of access). Needs the decryptor role and SELECT on the tables. A table
/// whose row-level security applies to the caller is skipped (its owner's policy code would run with the
/// caller's rights) unless it is named in `trust_policies`; skipped tables are listed under `skipped`. Envelopes
/// that are not bound to their row read as null and are counted per table (`invalid_fields`). Audited.
#[pg_extern(volatile, parallel_unsafe)]
fn export_subject(
    subject: Option<&str>,
    trust_policies: default!(Option<Vec<RegClass>>, "'{}'"),
    key_prefix: default!(Option<&str>, "NULL"),
) -> JsonB {
    let subject = check_subject_arg(subject);
    let prefix = subject_kind(key_prefix, "export_subject").or_raise();
    let trusted: Vec<pg_sys::Oid> = trust_policies.unwrap_or_default().into_iter().map(|r| r.0).collect();
    let columns: Vec<SubjectColumn> = subject_columns()
        .into_iter()
        .filter(|c| c.key_prefix == prefix)
        .collect();
    let mut out = Vec::new();
    let mut skips = Vec::new();
    let mut rows_total: i64 = 0;
    for sc in &columns {
        match export_column(sc, subject, &trusted) {
            Ok(Some((v, n))) => {
                rows_total += n;
                out.push(v);
            }
            Ok(None) => {}
            Err((name, why)) => skips.push(skipped(sc.relid, &sc.column, name.as_deref(), why)),
        }
    }
    // the subject's tokens (tokenize() under its key ids), with the values they stand for
    let tokens = crate::tokens::export(&subject_key_ids(&prefix, subject));
    let token_count = tokens.len();
    // SAFETY: reads this backend's recovery state.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    let mut receipt = json!({"subject": subject, "key_prefix": prefix, "tables": out, "tokens": tokens, "skipped": skips, "complete": skips.is_empty()});
    if standby {
        // A hot standby cannot write the audit log: the export is answered, said to be unaudited in the result,
        // and logged in the standby's server log.
        receipt["audited"] = json!(false);
        pgrx::log!(
            "event_crypto: export_subject under key prefix \"{prefix}\" on a hot standby ({rows_total} rows) is not recorded in the audit log"
        );
    } else {
        let named = crate::tombstones::subject_digest_for_write(&prefix, subject).or_raise();
        crate::audit::record(
            "export_subject",
            Some(named.as_deref().unwrap_or(subject)),
            &[],
            json!({"key_prefix": prefix, "rows": rows_total, "tables": receipt["tables"].as_array().map_or(0, Vec::len), "tokens": token_count, "skipped": receipt["skipped"]}),
        );
    }
    JsonB(receipt)
}

type Skip = (Option<String>, Caught);

fn export_column(
    sc: &SubjectColumn,
    subject: &str,
    trusted: &[pg_sys::Oid],
) -> std::result::Result<Option<(Value, i64)>, Skip> {
    let table = match Table::lookup(sc.relid) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(e) => return Err((None, caught_of(&e))),
    };
    let name = Some(table.name.clone());
    let cfg = match config_of_table(sc.relid, &sc.column) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(e) => return Err((name, caught_of(&e))),
    };
    table
        .require(&[Privilege::Select], "export_subject")
        .map_err(|e| (name.clone(), caught_of(&e)))?;
    let as_caller = if table.rls_applies_to_caller() {
        if !trusted.contains(&table.oid) {
            return Err((
                name,
                Caught {
                    sqlstate: "42501".into(),
                    message: format!(
                        "row-level security of {} applies to you: its policies, which its owner controls, would run with your privileges",
                        table.name
                    ),
                },
            ));
        }
        true
    } else {
        false
    };
    let rows = in_subtransaction(|| {
        let read = || read_subject_rows(&table, &cfg, subject);
        if as_caller {
            read()
        } else {
            table.as_owner(read)
        }
    })
    .map_err(|c| (name.clone(), c))?
    .map_err(|e| (name.clone(), caught_of(&e)))?;
    let n = rows.len() as i64;
    let mut invalid = 0usize;
    let mut decrypted_rows = Vec::with_capacity(rows.len());
    for (mut row, payload, context) in rows {
        if let Some(p) = payload {
            let (v, bad) = decrypt_bound(&cfg, Some(subject), context.as_deref(), &p)
                .map_err(|e| (name.clone(), caught_of(&e)))?;
            invalid += bad;
            if let Value::Object(m) = &mut row {
                m.insert(sc.column.clone(), v);
            }
        }
        decrypted_rows.push(row);
    }
    Ok(Some((
        json!({"table": table.name, "column": sc.column, "rows": decrypted_rows, "invalid_fields": invalid}),
        n,
    )))
}

/// The subject's rows: the row without the protected column (jsonb), the protected column, the context text.
#[allow(clippy::type_complexity)]
fn read_subject_rows(
    table: &Table,
    cfg: &Config,
    subject: &str,
) -> Result<Vec<(Value, Option<Vec<u8>>, Option<String>)>> {
    let KeySpec::Column { col, .. } = &cfg.key else {
        return Ok(Vec::new());
    };
    let payload = quote_identifier(&cfg.payload.name);
    let context = match &cfg.context {
        Some(c) => format!("pg_catalog.format('%s', t.{})", quote_identifier(&c.name)),
        None => "NULL::pg_catalog.text".into(),
    };
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) $2, pg_catalog.jsonb_send(pg_catalog.to_jsonb(t.{payload})), \
                CASE WHEN t.{payload} IS NULL THEN NULL ELSE {context} END \
         FROM {} t WHERE {} ORDER BY t.ctid",
        table.name,
        subject_condition(col, subject)
    );
    Spi::connect(|client| {
        client
            .select(&sql, None, &[subject.into(), cfg.payload.name.as_str().into()])
            .map_err(spi_error)?
            .map(|r| {
                Ok((
                    get::<JsonB>(&r, 1, "row")?.0,
                    crate::catalog::get_opt::<Vec<u8>>(&r, 2, "payload")?,
                    crate::catalog::get_opt::<String>(&r, 3, "context")?,
                ))
            })
            .collect()
    })
}

/// Decrypts a payload in `jsonb_send` form bound to its row; returns it as JSON and the number of envelopes
/// that were not bound to the row (read as null).
fn decrypt_bound(cfg: &Config, subject: Option<&str>, context: Option<&str>, send: &[u8]) -> Result<(Value, usize)> {
    // jsonb_send: a version byte (1) and the JSON text
    let text = match send.split_first() {
        Some((1, t)) => std::str::from_utf8(t).map_err(|_| Error::invalid_argument("jsonb text is not UTF-8"))?,
        _ => return Err(Error::invalid_argument("unexpected jsonb_send format")),
    };
    let datum = event_crypto_core::jsonb::from_json_text(text)?;
    let doc = Document::from_datum(&datum)?;
    let context = check_context(context.filter(|c| !c.is_empty()))?;
    let binding = row_binding(cfg, subject);
    let mut keys = CachedKeys::default();
    let mut dec = Decryptor::new(&mut keys, context, OnShredded::Null).bound(&binding, OnInvalid::Null);
    let mut out = Vec::new();
    let changed = dec.decrypt_document(&doc, &mut out)?;
    let invalid = dec.invalid;
    let json_text = to_json_text(if changed { &out } else { &datum })?;
    let v: Value =
        serde_json::from_str(&json_text).map_err(|_| Error::invalid_argument("decrypted document is not JSON"))?;
    Ok((v, invalid))
}

/// Decrypts the protected column of one row of a protected table under that row's key only: the configured key
/// id, or a key of the row's subject (`key_value`, the key column's text). Envelopes under any other key,
/// bound to another context or field, malformed or failing authentication read as JSON null (`on_invalid`
/// 'null', the default; 'keep' leaves them, 'error' raises), so one bad row never makes a table unreadable.
/// What the decrypted views call.
#[pg_extern(stable, parallel_safe)]
fn decrypt_row(
    payload: Option<Jsonb>,
    table: Option<RegClass>,
    column: Option<Name>,
    key_value: Option<&str>,
    context: Option<&str>,
    on_shredded: default!(Option<&str>, "'null'"),
    on_invalid: default!(Option<&str>, "'null'"),
) -> Option<Jsonb> {
    let table = table.unwrap_or_else(|| raise(Error::null_argument("table"))).0;
    let column = column.unwrap_or_else(|| raise(Error::null_argument("column"))).0;
    let on_shredded =
        OnShredded::parse(on_shredded.unwrap_or_else(|| raise(Error::null_argument("on_shredded")))).or_raise();
    let on_invalid = match on_invalid.unwrap_or_else(|| raise(Error::null_argument("on_invalid"))) {
        "null" => OnInvalid::Null,
        "keep" => OnInvalid::Keep,
        "error" => OnInvalid::Error,
        _ => raise(Error::invalid_argument("unknown on_invalid policy").with_hint("Use 'null', 'keep' or 'error'.")),
    };
    let payload = payload?;
    let cfg: Rc<Config> = require_config(table, &column).or_raise();
    let doc = payload.document();
    let subject = key_value.filter(|s| !s.is_empty());
    let context = check_context(context.filter(|c| !c.is_empty())).or_raise();
    let binding = row_binding(&cfg, subject);
    let mut keys = CachedKeys::default();
    let decrypted = Jsonb::build(|out| {
        Decryptor::new(&mut keys, context, on_shredded)
            .bound(&binding, on_invalid)
            .decrypt_document(&doc, out)
    });
    Some(decrypted.unwrap_or(payload))
}
