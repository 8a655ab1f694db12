//! Rotation and retention policies, and the actions of a maintenance run (`run_maintenance()` in
//! `crate::maintenance` runs each in its own subtransaction).
//!
//! The policies are set through `set_rotation`, `set_retention` and `drop_retention` only (no role may write
//! their tables), each audited. Every action decides itself which keys it acts on and writes its own audit row:
//! no SQL function records an audit row that its caller describes. Retention reads protected tables as their
//! owners (`crate::access`), after checking the acting role may read them; a policy it cannot apply is reported
//! (a row with reason `skipped: …`, and `skipped_policies` in the maintenance run), never silently passed over.

use crate::access::{acting_role, as_catalog_owner, in_subtransaction, Privilege, Table};
use crate::catalog::{get, get_opt};
use crate::error::{raise, spi_error, OrRaise};
use crate::protect::config::{config_of_table, KeySpec};
use crate::sqltypes::{Name, RegClass};
use event_crypto_core::aead::Algorithm;
use event_crypto_core::master::{KeyPurpose, MasterKeyRing, WrapContext};
use event_crypto_core::subject::subject_key_id;
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::{AllocatedByRust, JsonB};
use serde_json::{json, Value};

fn positive(i: &Interval, what: &str) -> Result<()> {
    let ok = Spi::get_one_with_args::<bool>(
        "SELECT $1 OPERATOR(pg_catalog.>) '0'::pg_catalog.interval",
        &[(*i).into()],
    )
    .map_err(spi_error)?
    .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!("{what} must be positive")))
    }
}

fn policy_row(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Option<PgHeapTuple<'static, AllocatedByRust>> {
    as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(sql, Some(1), args)
                .map_err(spi_error)
                .and_then(|t| {
                    t.into_iter()
                        .next()
                        .map(|r| get_opt(&r, 1, "policy"))
                        .transpose()
                        .map(Option::flatten)
                })
                .or_raise()
        })
    })
}

/// Sets (or, with `every` NULL, removes) the rotation schedule of the key ids matching a LIKE pattern.
#[pg_extern(volatile, parallel_unsafe, requires = ["maintenance"])]
fn set_rotation(
    key_pattern: Option<&str>,
    every: Option<Interval>,
) -> Option<pgrx::composite_type!('static, "rotation_policies")> {
    crate::keys::require_writable("call event_crypto.set_rotation()").or_raise();
    let pattern = key_pattern.unwrap_or_else(|| raise(Error::null_argument("key_pattern")));
    if pattern.is_empty() {
        raise(Error::invalid_argument("key_pattern must not be empty").with_hint("Use '%' for every key id."));
    }
    let Some(every) = every else {
        let n = as_catalog_owner(|| {
            crate::catalog::modify(
                "DELETE FROM event_crypto.rotation_policies WHERE key_pattern OPERATOR(pg_catalog.=) $1",
                &[pattern.into()],
            )
        })
        .or_raise();
        if n > 0 {
            crate::audit::record(
                "set_rotation",
                None,
                &[],
                json!({"key_pattern": pattern, "every": null}),
            );
        }
        return None;
    };
    positive(&every, "the rotation interval").or_raise();
    let role = acting_role();
    let row = policy_row(
        "INSERT INTO event_crypto.rotation_policies AS p (key_pattern, rotate_every, created_by) VALUES ($1, $2, $3) \
         ON CONFLICT ON CONSTRAINT rotation_policies_pkey \
            DO UPDATE SET rotate_every = EXCLUDED.rotate_every, created_at = pg_catalog.now(), created_by = EXCLUDED.created_by \
         RETURNING p",
        &[pattern.into(), every.into(), role.as_str().into()],
    );
    crate::audit::record(
        "set_rotation",
        None,
        &[],
        json!({"key_pattern": pattern, "every": every.to_string()}),
    );
    row
}

/// Sets the retention policy of a key pattern or of a protected table keyed by subject (replacing the one it
/// had). A table policy needs SELECT on the table (its rows decide which subjects are forgotten).
#[pg_extern(volatile, parallel_unsafe, requires = ["maintenance"])]
fn set_retention(
    key_pattern: default!(Option<&str>, "NULL"),
    table: default!(Option<RegClass>, "NULL"),
    older_than: default!(Option<Interval>, "NULL"),
    inactive_for: default!(Option<Interval>, "NULL"),
    time_column: default!(Option<Name>, "NULL"),
) -> pgrx::composite_type!('static, "retention_policies") {
    crate::keys::require_writable("call event_crypto.set_retention()").or_raise();
    if key_pattern.is_none() == table.is_none() {
        raise(Error::invalid_argument("give either key_pattern or table"));
    }
    if key_pattern == Some("") {
        raise(Error::invalid_argument("key_pattern must not be empty"));
    }
    if older_than.is_none() && inactive_for.is_none() {
        raise(
            Error::invalid_argument("give older_than, inactive_for or both")
                .with_hint("Use event_crypto.drop_retention() to remove a policy."),
        );
    }
    for i in [&older_than, &inactive_for].into_iter().flatten() {
        positive(i, "retention intervals").or_raise();
    }
    let time_column = time_column.map(|n| n.0);
    if inactive_for.is_some() && (table.is_none() || time_column.is_none()) {
        raise(Error::invalid_argument(
            "inactive_for needs a table and its time_column",
        ));
    }
    let mut table_name = None;
    if let Some(rc) = table {
        let t = Table::open(rc.0).or_raise();
        t.require(&[Privilege::Select], "event_crypto.set_retention()")
            .or_raise();
        crate::protect::partitions::refuse_partition(&t, "event_crypto.set_retention()").or_raise();
        let keyed = subject_column(rc.0).or_raise();
        if keyed.is_none() {
            raise(
                Error::new(
                    ErrorKind::NotReady,
                    format!("{} is not protected with a key per subject", t.name),
                )
                .with_hint("Call event_crypto.protect() with key_column first."),
            );
        }
        if let Some(tc) = &time_column {
            check_time_column(rc.0, &t, tc).or_raise();
        }
        table_name = Some(t.name);
    }
    let role = acting_role();
    let oid = table.map(|t| t.0);
    let row = as_catalog_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                "DELETE FROM event_crypto.retention_policies \
                 WHERE key_pattern OPERATOR(pg_catalog.=) $1 OR table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $2",
                None,
                &[key_pattern.into(), oid.into()],
            )
            .map_err(spi_error)
            .or_raise();
            c.update(
                "INSERT INTO event_crypto.retention_policies AS p (key_pattern, table_name, older_than, inactive_for, time_column, created_by) \
                 VALUES ($1, $2::pg_catalog.oid::pg_catalog.regclass, $3, $4, $5, $6) RETURNING p",
                Some(1),
                &[key_pattern.into(), oid.into(), older_than.into(), inactive_for.into(), time_column.as_deref().into(), role.as_str().into()],
            )
            .map_err(spi_error)
            .and_then(|t| t.into_iter().next().map(|r| get(&r, 1, "policy")).transpose())
            .or_raise()
        })
    });
    crate::audit::record(
        "set_retention",
        None,
        &[],
        json!({"key_pattern": key_pattern, "table": table_name, "older_than": older_than.map(|i| i.to_string()),
               "inactive_for": inactive_for.map(|i| i.to_string()), "time_column": time_column}),
    );
    row.unwrap_or_else(|| {
        raise(Error::new(
            ErrorKind::CatalogAccess,
            "the retention policy was not stored",
        ))
    })
}

/// Removes the retention policy of a key pattern or a table; returns whether there was one.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_retention(key_pattern: default!(Option<&str>, "NULL"), table: default!(Option<RegClass>, "NULL")) -> bool {
    crate::keys::require_writable("call event_crypto.drop_retention()").or_raise();
    if key_pattern.is_none() == table.is_none() {
        raise(Error::invalid_argument("give either key_pattern or table"));
    }
    let oid = table.map(|t| t.0);
    let n = as_catalog_owner(|| {
        crate::catalog::modify(
            "DELETE FROM event_crypto.retention_policies \
             WHERE key_pattern OPERATOR(pg_catalog.=) $1 OR table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $2",
            &[key_pattern.into(), oid.into()],
        )
    })
    .or_raise();
    if n > 0 {
        crate::audit::record(
            "drop_retention",
            None,
            &[],
            json!({"key_pattern": key_pattern, "table_oid": oid.map(|o| o.to_u32())}),
        );
    }
    n > 0
}

/// The first protected column of a table that is keyed per subject.
fn subject_column(relid: pg_sys::Oid) -> Result<Option<String>> {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT column_name::pg_catalog.text FROM event_crypto.protected_columns \
                 WHERE table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND key_column IS NOT NULL \
                 ORDER BY column_name LIMIT 1",
                Some(1),
                &[relid.into()],
            )
            .map_err(spi_error)?
            .next()
            .map(|r| get::<String>(&r, 1, "column_name"))
            .transpose()
        })
    })
}

fn check_time_column(relid: pg_sys::Oid, t: &Table, column: &str) -> Result<()> {
    let ok = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) $1 \
                 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
                 AND a.atttypid OPERATOR(pg_catalog.=) ANY ('{timestamptz,timestamp,date}'::pg_catalog.regtype[]::pg_catalog.oid[]))",
        &[relid.into(), column.into()],
    )
    .map_err(spi_error)?
    .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::ConfigColumn,
            format!(
                "column \"{column}\" of {} does not exist or is not a timestamp or date",
                t.name
            ),
        ))
    }
}

/// A retention policy.
struct Policy {
    id: i64,
    key_pattern: Option<String>,
    table: Option<pg_sys::Oid>,
    older_than: Option<Interval>,
    inactive_for: Option<Interval>,
    time_column: Option<String>,
}

/// One key id (and for table policies the key prefix and subject) a policy wants shredded, and why.
struct Candidate {
    key_id: String,
    subject: Option<(String, String)>,
    why: String,
}

fn policies() -> Result<Vec<Policy>> {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT id, key_pattern, table_name::pg_catalog.oid, older_than, inactive_for, time_column::pg_catalog.text \
                 FROM event_crypto.retention_policies ORDER BY id",
                None,
                &[],
            )
            .map_err(spi_error)?
            .map(|r| {
                Ok(Policy {
                    id: get(&r, 1, "id")?,
                    key_pattern: get_opt(&r, 2, "key_pattern")?,
                    table: get_opt(&r, 3, "table_name")?,
                    older_than: get_opt(&r, 4, "older_than")?,
                    inactive_for: get_opt(&r, 5, "inactive_for")?,
                    time_column: get_opt(&r, 6, "time_column")?,
                })
            })
            .collect()
        })
    })
}

/// Key ids matching a pattern whose first version is older than `older_than`.
fn pattern_candidates(pattern: &str, older_than: &Interval) -> Result<Vec<Candidate>> {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT k.key_id, k.born::pg_catalog.text FROM (SELECT key_id, pg_catalog.min(created_at) AS born FROM event_crypto.keys \
                        WHERE key_id OPERATOR(pg_catalog.~~) $1 GROUP BY key_id) k \
                 WHERE k.born OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $2) ORDER BY k.key_id",
                None,
                &[pattern.into(), (*older_than).into()],
            )
            .map_err(spi_error)?
            .map(|r| {
                Ok(Candidate {
                    key_id: get(&r, 1, "key_id")?,
                    subject: None,
                    why: format!("key created {}, more than {older_than} ago", get::<String>(&r, 2, "born")?),
                })
            })
            .collect()
        })
    })
}

/// The subjects of a table policy, read as the table's owner: (subject, why).
fn table_candidates(p: &Policy, relid: pg_sys::Oid) -> std::result::Result<Vec<(String, String)>, String> {
    let t = match Table::lookup(relid) {
        Ok(Some(t)) => t,
        Ok(None) => return Err("the table no longer exists".into()),
        Err(e) => return Err(e.message().to_string()),
    };
    t.require(&[Privilege::Select], "event_crypto.enforce_retention()")
        .map_err(|e| e.message().to_string())?;
    let column = subject_column(relid)
        .map_err(|e| e.message().to_string())?
        .ok_or_else(|| "the table is no longer protected with a key per subject".to_string())?;
    let cfg = config_of_table(relid, &column)
        .map_err(|e| e.message().to_string())?
        .ok_or_else(|| "the table is no longer protected".to_string())?;
    let KeySpec::Column { col, prefix } = &cfg.key else {
        return Err("the table is no longer protected with a key per subject".into());
    };
    let kc = format!("t.{}", quote_identifier(&col.name));
    let subj = format!("pg_catalog.format('%s', {kc})");
    let mut out = Vec::new();
    if let Some(inactive) = &p.inactive_for {
        let tc = p.time_column.as_deref().ok_or("the policy has no time column")?;
        check_time_column(relid, &t, tc).map_err(|e| e.message().to_string())?;
        let tcq = format!("t.{}", quote_identifier(tc));
        let sql = format!(
            "SELECT {subj}, pg_catalog.max({tcq})::pg_catalog.timestamptz::pg_catalog.text FROM {} t WHERE {kc} IS NOT NULL GROUP BY 1 \
             HAVING pg_catalog.max({tcq})::pg_catalog.timestamptz OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1) ORDER BY 1",
            t.name
        );
        let rows = in_subtransaction(|| {
            t.as_owner(|| {
                Spi::connect(|c| -> Result<Vec<(String, String)>> {
                    c.select(&sql, None, &[(*inactive).into()])
                        .map_err(spi_error)?
                        .map(|r| Ok((get::<String>(&r, 1, "subject")?, get::<String>(&r, 2, "last")?)))
                        .collect()
                })
            })
        })
        .map_err(|c| c.message)?
        .map_err(|e| e.message().to_string())?;
        out.extend(
            rows.into_iter()
                .map(|(s, last)| (s, format!("no event since {last}, more than {inactive} ago"))),
        );
    }
    if let Some(older) = &p.older_than {
        let sql = format!(
            "SELECT DISTINCT {subj} FROM {} t WHERE {kc} IS NOT NULL ORDER BY 1",
            t.name
        );
        let subjects = in_subtransaction(|| {
            t.as_owner(|| {
                Spi::connect(|c| -> Result<Vec<String>> {
                    c.select(&sql, None, &[])
                        .map_err(spi_error)?
                        .map(|r| get::<String>(&r, 1, "subject"))
                        .collect()
                })
            })
        })
        .map_err(|c| c.message)?
        .map_err(|e| e.message().to_string())?;
        let ids: Vec<(String, String)> = subjects
            .into_iter()
            .filter_map(|s| subject_key_id(prefix, &s, 1).ok().map(|k| (s, k)))
            .collect();
        let key_ids: Vec<String> = ids.iter().map(|(_, k)| k.clone()).collect();
        let old: Vec<(String, String)> = as_catalog_owner(|| {
            Spi::connect(|c| -> Result<Vec<(String, String)>> {
                c.select(
                    "SELECT key_id, pg_catalog.min(created_at)::pg_catalog.text FROM event_crypto.keys \
                     WHERE key_id OPERATOR(pg_catalog.=) ANY ($1) GROUP BY key_id \
                     HAVING pg_catalog.min(created_at) OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $2)",
                    None,
                    &[key_ids.into(), (*older).into()],
                )
                .map_err(spi_error)?
                .map(|r| Ok((get::<String>(&r, 1, "key_id")?, get::<String>(&r, 2, "born")?)))
                .collect()
            })
        })
        .map_err(|e| e.message().to_string())?;
        for (s, k) in ids {
            if let Some((_, born)) = old.iter().find(|(id, _)| *id == k) {
                out.push((s, format!("key created {born}, more than {older} ago")));
            }
        }
    }
    Ok(out)
}

/// Whether any version of a key id is live.
fn is_live(key_id: &str) -> bool {
    as_catalog_owner(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM event_crypto.keys WHERE key_id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.<>) 'shredded')",
            &[key_id.into()],
        )
        .map_err(spi_error)
        .or_raise()
        .unwrap_or(false)
    })
}

/// What the retention policies shred now (`dry_run => false`) or would (the default): one row per key id (key
/// policies) or subject (table policies, which forget the subject: every key generation, blind index values
/// cleared). A policy that cannot be applied gives one row with no key id and the reason `skipped: …`.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn enforce_retention(
    dry_run: default!(Option<bool>, true),
) -> TableIterator<
    'static,
    (
        name!(policy_id, i64),
        name!(key_id, Option<String>),
        name!(subject, Option<String>),
        name!(reason, String),
        name!(shredded, bool),
    ),
> {
    crate::keys::require_writable("call event_crypto.enforce_retention()").or_raise();
    let dry_run = dry_run.unwrap_or_else(|| raise(Error::null_argument("dry_run")));
    TableIterator::new(retention(dry_run).or_raise())
}

/// One row of enforce_retention(): policy id, key id, subject, reason, shredded.
type RetentionRow = (i64, Option<String>, Option<String>, String, bool);

fn retention(dry_run: bool) -> Result<Vec<RetentionRow>> {
    let mut out = Vec::new();
    let mut done: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut acted: Vec<String> = Vec::new();
    let mut skipped = Vec::new();
    for p in policies()? {
        pgrx::check_for_interrupts!();
        let candidates: Vec<Candidate> = match (&p.key_pattern, p.table) {
            (Some(pattern), _) => match &p.older_than {
                Some(o) => pattern_candidates(pattern, o)?,
                None => Vec::new(),
            },
            (None, Some(relid)) => match table_candidates(&p, relid) {
                Ok(subjects) => {
                    // a configuration that cannot be read is reported as such, not as "not protected"
                    let prefix = subject_column(relid).and_then(|c| match c {
                        None => Ok(None),
                        Some(c) => Ok(config_of_table(relid, &c)?.and_then(|cfg| cfg.key_prefix().map(String::from))),
                    });
                    let prefix = match prefix {
                        Ok(Some(prefix)) => prefix,
                        other => {
                            let reason = match other {
                                Err(e) => format!("the table's protection could not be read: {}", e.message()),
                                _ => "the table is no longer protected with a key per subject".to_string(),
                            };
                            skipped.push(json!({"policy_id": p.id, "reason": reason}));
                            out.push((p.id, None, None, format!("skipped: {reason}"), false));
                            continue;
                        }
                    };
                    subjects
                        .into_iter()
                        .filter_map(|(s, why)| {
                            subject_key_id(&prefix, &s, 1).ok().map(|k| Candidate {
                                key_id: k,
                                subject: Some((prefix.clone(), s)),
                                why,
                            })
                        })
                        .collect()
                }
                Err(reason) => {
                    skipped.push(json!({"policy_id": p.id, "reason": reason}));
                    out.push((p.id, None, None, format!("skipped: {reason}"), false));
                    continue;
                }
            },
            (None, None) => Vec::new(),
        };
        for c in candidates {
            match &c.subject {
                None => {
                    if done.contains(&c.key_id) || !is_live(&c.key_id) {
                        continue;
                    }
                    done.insert(c.key_id.clone());
                    if !dry_run {
                        crate::keys::shred_key(&c.key_id)?;
                        acted.push(c.key_id.clone());
                    }
                    out.push((p.id, Some(c.key_id), None, c.why, !dry_run));
                }
                Some((prefix, s)) => {
                    // Forgetting the subject (of this table's kind only) shreds exactly its live key ids under
                    // this prefix: the dry run lists those, and the real run shreds those.
                    let live: Vec<String> = crate::protect::subjects::live_subject_key_ids(prefix, s)
                        .into_iter()
                        .filter(|k| !done.contains(k))
                        .collect();
                    if live.is_empty() {
                        continue;
                    }
                    if !dry_run {
                        if let Err(why) = in_subtransaction(|| crate::protect::subjects::forget(s, prefix)) {
                            let reason = format!("forgetting subject failed ({}): {}", why.sqlstate, why.message);
                            // (the audit row names the subject by digest under its key prefix: crate::tombstones)
                            skipped
                                .push(json!({"policy_id": p.id, "key_prefix": prefix, "subject": s, "reason": reason}));
                            out.push((p.id, None, Some(s.clone()), format!("skipped: {reason}"), false));
                            continue;
                        }
                        acted.extend(live.iter().cloned());
                    }
                    for k in live {
                        done.insert(k.clone());
                        out.push((p.id, Some(k), Some(s.clone()), c.why.clone(), !dry_run));
                    }
                }
            }
        }
    }
    if !dry_run && (!acted.is_empty() || !skipped.is_empty()) {
        crate::audit::record(
            "enforce_retention",
            None,
            &acted,
            json!({"shredded": acted.len(), "skipped_policies": skipped}),
        );
    }
    Ok(out)
}

/// One action of a maintenance run; returns what it did. Every action picks the keys it acts on itself and
/// audits what it did.
#[pg_extern(volatile, parallel_unsafe)]
fn maintenance_action(action: Option<&str>) -> JsonB {
    let action = action.unwrap_or_else(|| raise(Error::null_argument("action")));
    JsonB(run_action(action))
}

/// The actions of a maintenance run, in the order `run_maintenance()` takes them.
pub const ACTIONS: [&str; 6] = [
    "flush_usage",
    "usage_rotation",
    "scheduled_rotation",
    "retention",
    "retire",
    "token_purge",
];

/// Performs one maintenance action (one of [`ACTIONS`]) and returns what it did; raises for an unknown one.
pub fn run_action(action: &str) -> Value {
    // every action writes the catalog: on a hot standby each is reported failed with 25006 (run_maintenance keeps
    // going and says so per action)
    crate::keys::require_writable(&format!("run the maintenance action \"{action}\"")).or_raise();
    match action {
        "flush_usage" => crate::maintenance::flush(),
        "retire" => crate::retire::destroy_due(),
        "token_purge" => crate::tokens::purge(),
        "usage_rotation" => {
            let limit = crate::guc::ROTATE_AFTER_ENCRYPTIONS.get();
            let mut r = rotate_due(Due::Usage(f64::from(limit)), "usage_rotation");
            if let Value::Object(m) = &mut r {
                m.insert("limit".into(), json!(limit));
            }
            r
        }
        "scheduled_rotation" => rotate_due(Due::Scheduled, "scheduled_rotation"),
        "retention" => {
            let rows = retention(false).or_raise();
            let shredded = rows.iter().filter(|r| r.4).count();
            let skipped: Vec<Value> = rows
                .iter()
                .filter(|r| r.1.is_none())
                .map(|r| json!({"policy_id": r.0, "reason": r.3}))
                .collect();
            let mut v = json!({"shredded": shredded});
            if !skipped.is_empty() {
                v["skipped"] = json!(skipped);
            }
            v
        }
        _ => raise(
            Error::invalid_argument("unknown maintenance action")
                .with_hint("One of flush_usage, usage_rotation, scheduled_rotation, retention, retire, token_purge."),
        ),
    }
}

/// Key ids rotated per action and run; a larger backlog is worked off over several runs.
const ROTATION_CAP: usize = 1000;
/// Due key ids read at a time.
const ROTATION_PAGE: i64 = 1000;
/// Key ids that could not be rotated named (with the reason) in an action's result and audit row; the rest are
/// only counted.
const SKIPPED_LISTED: usize = 20;

/// Which key ids an action rotates: active versions past the usage limit, or due by a rotation policy.
#[derive(Clone, Copy)]
enum Due {
    Usage(f64),
    Scheduled,
}

/// A due key id: the active version (the one a rotation unwraps the blind-index root of), and where the scan
/// stands after it.
struct DueKey {
    key_id: String,
    version: i32,
    algorithm: String,
    master_key_id: String,
    wrapped_index_key: Option<Vec<u8>>,
    created_at: TimestampWithTimeZone,
}

/// The next page of due key ids after `after` (the order key of the last one read), in the action's order: by key
/// id for usage, oldest first for schedules.
fn due_page(due: Due, after: Option<&DueKey>) -> Result<Vec<DueKey>> {
    const COLUMNS: &str = "SELECT k.key_id, k.version, k.algorithm, k.master_key_id, k.wrapped_index_key, \
                                  k.created_at FROM event_crypto.keys k WHERE k.status OPERATOR(pg_catalog.=) 'active' ";
    let (sql, args): (String, Vec<pgrx::datum::DatumWithOid<'_>>) = match due {
        Due::Usage(limit) => (
            format!(
                "{COLUMNS} AND EXISTS (SELECT 1 FROM event_crypto.key_usage u \
                    WHERE u.key_id OPERATOR(pg_catalog.=) k.key_id AND u.version OPERATOR(pg_catalog.=) k.version \
                      AND u.encryptions::pg_catalog.float8 OPERATOR(pg_catalog.>=) $1) \
                 AND ($2::pg_catalog.text IS NULL OR k.key_id OPERATOR(pg_catalog.>) $2) \
                 ORDER BY k.key_id LIMIT $3"
            ),
            vec![limit.into(), after.map(|d| d.key_id.clone()).into(), ROTATION_PAGE.into()],
        ),
        Due::Scheduled => (
            format!(
                "{COLUMNS} AND EXISTS (SELECT 1 FROM event_crypto.rotation_policies p \
                    WHERE k.key_id OPERATOR(pg_catalog.~~) p.key_pattern \
                      AND k.created_at OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) p.rotate_every)) \
                 AND ($1::pg_catalog.timestamptz IS NULL OR k.created_at OPERATOR(pg_catalog.>) $1 \
                      OR (k.created_at OPERATOR(pg_catalog.=) $1 AND k.key_id OPERATOR(pg_catalog.>) $2)) \
                 ORDER BY k.created_at, k.key_id LIMIT $3"
            ),
            vec![
                after.map(|d| d.created_at).into(),
                after.map(|d| d.key_id.clone()).into(),
                ROTATION_PAGE.into(),
            ],
        ),
    };
    as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(&sql, None, &args)
                .map_err(spi_error)?
                .map(|r| {
                    Ok(DueKey {
                        key_id: get(&r, 1, "key_id")?,
                        version: get(&r, 2, "version")?,
                        algorithm: get(&r, 3, "algorithm")?,
                        master_key_id: get(&r, 4, "master_key_id")?,
                        wrapped_index_key: get_opt(&r, 5, "wrapped_index_key")?,
                        created_at: get(&r, 6, "created_at")?,
                    })
                })
                .collect()
        })
    })
}

/// Why a due key id cannot be rotated, found without touching the catalog: the master key that wrapped its
/// active version is not in the ring, or its blind-index root (which a rotation carries over) does not unwrap.
/// A rotation would fail the same way; checking first keeps such keys from using up a run.
fn cannot_rotate(ring: &MasterKeyRing, k: &DueKey) -> Option<String> {
    let Some(m) = ring.get(&k.master_key_id) else {
        return Some(format!(
            "master key {} that wrapped it is not in this server's master key ring",
            k.master_key_id
        ));
    };
    let check = || -> Result<()> {
        let version = u32::try_from(k.version)
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| Error::new(ErrorKind::CatalogAccess, "its active version is below 1"))?;
        let wrapped = k
            .wrapped_index_key
            .as_deref()
            .ok_or_else(|| Error::new(ErrorKind::WrappedKeyCorrupt, "its active version has no key material"))?;
        let ctx = WrapContext {
            key_id: &k.key_id,
            version,
            algorithm: Algorithm::from_name(&k.algorithm)?,
            purpose: KeyPurpose::BlindIndex,
        };
        m.unwrap(wrapped, &ctx).map(drop)
    };
    check().err().map(|e| e.message().to_string())
}

/// Rotates the due key ids, up to [`ROTATION_CAP`] of them, each in its own subtransaction, and audits the batch
/// as `reason`. A key id that cannot be rotated (its master key left the ring, its wrapped key is damaged, its
/// rotation fails) is skipped and reported (`skipped`: how many, `skipped_keys`: the first of them with the
/// reason) and does not count against the cap, so it never keeps the due key ids after it from rotating.
/// `more_due` says the cap was reached with key ids left to look at (the next run goes on).
fn rotate_due(due: Due, reason: &str) -> Value {
    let mut ring: Option<&MasterKeyRing> = None;
    let mut done = Vec::new();
    let mut skipped = 0usize;
    let mut listed = serde_json::Map::new();
    let mut skip = |key_id: &str, why: String| {
        skipped += 1;
        if listed.len() < SKIPPED_LISTED {
            listed.insert(key_id.to_string(), json!(why));
        }
    };
    let mut more_due = false;
    let mut last: Option<DueKey> = None;
    'scan: loop {
        let page = due_page(due, last.as_ref()).or_raise();
        let full = page.len() as i64 == ROTATION_PAGE;
        for k in page {
            pgrx::check_for_interrupts!();
            if done.len() == ROTATION_CAP {
                more_due = true;
                break 'scan;
            }
            // (the master key ring is needed only when some key id is due; without it nothing can rotate)
            let ring = *ring.get_or_insert_with(|| crate::master::get().or_raise());
            if let Some(why) = cannot_rotate(ring, &k) {
                skip(&k.key_id, why);
            } else {
                // an error rolls back this key's subtransaction only (its lock and anything it wrote)
                match in_subtransaction(|| crate::keys::rotate_key(&k.key_id, None).or_raise()) {
                    Ok(_) => done.push(k.key_id.clone()),
                    Err(c) => skip(&k.key_id, c.message),
                }
            }
            last = Some(k);
        }
        if !full {
            break;
        }
    }
    let mut v = json!({"rotated": done.len()});
    if skipped > 0 {
        v["skipped"] = json!(skipped);
        v["skipped_keys"] = Value::Object(listed);
    }
    if more_due {
        v["more_due"] = json!(true);
    }
    if !done.is_empty() || skipped > 0 {
        crate::audit::record(reason, None, &done, v.clone());
    }
    v
}
