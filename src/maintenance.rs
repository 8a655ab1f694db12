//! Maintenance: moving the shared usage counters into the catalog and the audit log (`flush_usage`), one
//! maintenance run (`run_maintenance()`: every action of `crate::policies`, each in its own subtransaction, then
//! the run recorded in `event_crypto.maintenance_status`), and the background worker that calls it every
//! `event_crypto.worker_interval` in `event_crypto.worker_database`. pg_cron (or any scheduler) can run the same
//! SQL function without the worker (docs/operations.md).

use crate::access::as_catalog_owner;
use crate::error::spi_failed;
use crate::usage::{self, Kind};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use serde_json::json;
use std::ffi::CStr;
use std::time::Duration;

/// Moves the shared counters of this database into `event_crypto.key_usage` (encryptions, decryptions and
/// attempts under disabled versions, per key version) and `event_crypto.audit_log` (one `decrypt` row per session,
/// role and key id, with `event_crypto.audit_decrypt`), and records the counts that were lost (a `usage_lost`
/// audit row; decryptions the shared table had no room for are reported as `decryptions_not_counted`). Returns
/// what it wrote.
#[pg_extern(volatile, parallel_unsafe)]
fn flush_usage() -> pgrx::JsonB {
    crate::keys::require_writable("call event_crypto.flush_usage()").unwrap_or_else(|e| crate::error::raise(e));
    pgrx::JsonB(flush())
}

/// [`flush_usage`]: what it wrote. The counts are taken out of shared memory before they are written; if this
/// transaction (or the subtransaction running the flush) rolls back, they are given back (`crate::usage`).
pub fn flush() -> serde_json::Value {
    usage::publish();
    // SAFETY: reading a backend-global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let taken = usage::take(database);
    let mut lost = usage::take_lost(database);
    write_counts(&taken);
    // Decryption counts per version are statistics (crate::usage): those the shared table had no room for are
    // reported apart, and do not make the run fail.
    let uncounted_reads = std::mem::take(&mut lost[Kind::Read.index()]);
    let lost_json: serde_json::Map<String, serde_json::Value> = Kind::ALL
        .iter()
        .filter(|k| **k != Kind::Read)
        .map(|k| (k.name().to_string(), json!(lost[k.index()])))
        .collect();
    let encryptions: u64 = taken
        .iter()
        .filter(|(k, _)| k.kind == Kind::Encrypt)
        .map(|(_, n)| n)
        .sum();
    let decryptions: u64 = taken.iter().filter(|(k, _)| k.kind == Kind::Read).map(|(_, n)| n).sum();
    let mut counted: Vec<(&str, u32)> = taken
        .iter()
        .filter(|(k, _)| matches!(k.kind, Kind::Encrypt | Kind::Read | Kind::Disabled))
        .map(|(k, _)| (k.key_id.as_str(), k.version))
        .collect();
    counted.sort_unstable();
    counted.dedup();
    let key_versions = counted.len();
    let decrypt_rows = taken.iter().filter(|(k, _)| k.kind == Kind::Decrypt).count();
    let mut out = json!({"tracking": usage::available(), "key_versions": key_versions, "encryptions": encryptions,
                         "decryptions": decryptions, "decrypt_rows": decrypt_rows, "lost": lost_json});
    let disabled: u64 = taken
        .iter()
        .filter(|(k, _)| k.kind == Kind::Disabled)
        .map(|(_, n)| n)
        .sum();
    if disabled > 0 {
        // an application still reads data under a version scheduled for destruction: say so in the run's report
        out["disabled_decryptions"] = json!(disabled);
    }
    if uncounted_reads > 0 {
        out["decryptions_not_counted"] = json!(uncounted_reads);
    }
    if lost.iter().any(|n| *n > 0) {
        crate::audit::record("usage_lost", None, &[], json!(lost_json));
        out["skipped"] = json!(
            "usage counts were lost before they could be counted per key (the shared usage table was full when sessions ended); see the usage_lost audit row"
        );
    }
    if usage::available() {
        let live: Vec<pg_sys::Oid> = crate::catalog::all("SELECT oid FROM pg_catalog.pg_database", &[], "oid")
            .unwrap_or_else(|e| crate::error::raise(e));
        usage::tidy(&live.iter().map(|o| o.to_u32()).collect::<Vec<_>>());
    }
    out
}

/// Writes counts into the catalog, as the catalog owner: encryptions, decryptions and attempts under disabled
/// versions into `event_crypto.key_usage` (added to what is there), audited decryptions as `decrypt` audit rows. Used by the flush and by a transaction that writes its own
/// counts at commit (`crate::usage`). `counts` holds each counter once, sorted (so concurrent writers lock
/// `key_usage` rows in the same order).
pub fn write_counts(counts: &[(usage::CounterKey, u64)]) {
    // per key version: encryptions, decryptions and attempts under a disabled version, added to key_usage in one
    // statement
    let (mut ids, mut versions, mut encryptions, mut decryptions, mut disabled) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut d_ids, mut d_roles, mut d_pids, mut d_starts, mut d_counts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, n) in counts {
        match k.kind {
            Kind::Encrypt | Kind::Read | Kind::Disabled => {
                ids.push(k.key_id.clone());
                versions.push(k.version as i32);
                let n = i64::try_from(*n).unwrap_or(i64::MAX);
                let of = |kind: Kind| if k.kind == kind { n } else { 0 };
                encryptions.push(of(Kind::Encrypt));
                decryptions.push(of(Kind::Read));
                disabled.push(of(Kind::Disabled));
            }
            Kind::Decrypt => {
                d_ids.push(k.key_id.clone());
                d_roles.push(k.role as i64);
                d_pids.push(k.pid);
                d_starts.push(k.session_start);
                d_counts.push(*n as i64);
            }
        }
    }
    if ids.is_empty() && d_ids.is_empty() {
        return;
    }
    if !d_ids.is_empty() {
        // keys created automatically before are recorded before these rows (crate::audit)
        crate::audit::write_created();
        // the audit log names key ids by digest (crate::tombstones)
        d_ids = d_ids
            .iter()
            .map(|k| crate::tombstones::stored_key_id(k))
            .collect::<event_crypto_core::Result<Vec<_>>>()
            .unwrap_or_else(|e| crate::error::raise(e));
    }
    if !ids.is_empty() {
        // counts of a key id shredded whole since they were made go to its tombstone
        ids = crate::tombstones::usage_key_ids(ids).unwrap_or_else(|e| crate::error::raise(e));
    }
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            if !ids.is_empty() {
                // grouped: a key version counted under both kinds is one row (ON CONFLICT touches a row once)
                client
                    .update(
                        "INSERT INTO event_crypto.key_usage AS u (key_id, version, encryptions, decryptions, disabled_decryptions) \
                         SELECT r.k, r.v, pg_catalog.sum(r.e)::pg_catalog.int8, pg_catalog.sum(r.d)::pg_catalog.int8, \
                                pg_catalog.sum(r.x)::pg_catalog.int8 \
                         FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.int4[]), \
                                         pg_catalog.unnest($3::pg_catalog.int8[]), pg_catalog.unnest($4::pg_catalog.int8[]), \
                                         pg_catalog.unnest($5::pg_catalog.int8[])) AS r(k, v, e, d, x) \
                         GROUP BY r.k, r.v ORDER BY r.k, r.v \
                         ON CONFLICT (key_id, version) DO UPDATE \
                         SET encryptions = u.encryptions OPERATOR(pg_catalog.+) EXCLUDED.encryptions, \
                             decryptions = u.decryptions OPERATOR(pg_catalog.+) EXCLUDED.decryptions, \
                             disabled_decryptions = u.disabled_decryptions OPERATOR(pg_catalog.+) EXCLUDED.disabled_decryptions, \
                             updated_at = pg_catalog.now()",
                        None,
                        &[ids.into(), versions.into(), encryptions.into(), decryptions.into(), disabled.into()],
                    )
                    .unwrap_or_else(|e| spi_failed(e));
            }
            if !d_ids.is_empty() {
                // The session start is a TimestampTz: microseconds since 2000-01-01.
                client
                    .update(
                        "INSERT INTO event_crypto.audit_log (actor, session_actor, action, key_ids, details) \
                         SELECT pg_catalog.pg_get_userbyid(d.role::pg_catalog.oid), SESSION_USER, 'decrypt', ARRAY[d.key_id], \
                                pg_catalog.jsonb_build_object('fields', d.n, 'pid', d.pid, 'session_start', \
                                    pg_catalog.timestamptz '2000-01-01 00:00:00+00' OPERATOR(pg_catalog.+) \
                                    pg_catalog.make_interval(secs => d.start::pg_catalog.float8 OPERATOR(pg_catalog./) 1000000)) \
                         FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.int8[]), \
                                         pg_catalog.unnest($3::pg_catalog.int4[]), pg_catalog.unnest($4::pg_catalog.int8[]), \
                                         pg_catalog.unnest($5::pg_catalog.int8[])) AS d(key_id, role, pid, start, n)",
                        None,
                        &[d_ids.into(), d_roles.into(), d_pids.into(), d_starts.into(), d_counts.into()],
                    )
                    .unwrap_or_else(|e| spi_failed(e));
            }
        })
    });
}

/// One maintenance run: each action of [`crate::policies::ACTIONS`] in its own subtransaction. A failed action is
/// a row with `ok = false` and the error (its work rolled back), and the others still run; an action that could
/// not do everything (its result says `skipped` or `failed`) is not ok either. A cancel (`statement_timeout`)
/// stops the whole run, as it stops any statement. The run is then recorded in `event_crypto.maintenance_status`
/// (what `event_crypto.stats_maintenance` shows), unless this transaction cannot write (a hot standby, a
/// read-only transaction: there every action failed with 25006 anyway).
#[pg_extern(volatile, parallel_unsafe)]
fn run_maintenance() -> TableIterator<'static, (name!(action, String), name!(ok, bool), name!(detail, pgrx::JsonB))> {
    // SAFETY: reads the clock.
    let started = TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTimestamp() }).ok();
    let rows: Vec<(String, bool, serde_json::Value)> = crate::policies::ACTIONS
        .iter()
        .map(|&action| {
            match crate::access::in_subtransaction(|| fresh_snapshot(|| crate::policies::run_action(action))) {
                Ok(detail) => {
                    let ok = detail.get("failed").is_none() && detail.get("skipped").is_none();
                    (action.to_string(), ok, detail)
                }
                Err(c) if c.sqlstate == "57014" => {
                    // a cancel is not an action's failure: like PL/pgSQL's WHEN OTHERS, let it stop the run
                    ErrorReport::new(PgSqlErrorCode::ERRCODE_QUERY_CANCELED, c.message, "event_crypto")
                        .report(PgLogLevel::ERROR);
                    unreachable!("ereport(ERROR) does not return")
                }
                Err(c) => (
                    action.to_string(),
                    false,
                    json!({"sqlstate": c.sqlstate, "error": c.message}),
                ),
            }
        })
        .collect();
    if let Some(started) = started {
        record_run(started, &rows);
    }
    TableIterator::new(rows.into_iter().map(|(a, ok, d)| (a, ok, pgrx::JsonB(d))))
}

/// Runs `f` as PL/pgSQL runs each statement of a VOLATILE function: after the work done so far in this
/// transaction is made visible (CommandCounterIncrement) and with a new snapshot (in READ COMMITTED, one that also
/// sees what others committed meanwhile). So an action sees what the actions before it wrote (the rotation, the
/// counts the flush moved into `key_usage`), whatever its reads use.
fn fresh_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: inside a transaction; the snapshot pushed here is popped below, and an error unwinding through `f`
    // aborts the (sub)transaction, which pops it.
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let r = f();
    // SAFETY: pops the snapshot pushed above (f leaves the active snapshot stack as it found it).
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

/// Records a maintenance run in `event_crypto.maintenance_status` (one row: the last run, its result, when a run
/// was last ok and last not ok, and how many runs there were), as the catalog owner. Nothing is recorded where
/// the transaction cannot write; a failure to record (a lock timeout behind another run that has not committed)
/// is a WARNING and leaves the run's own work alone.
fn record_run(started: TimestampWithTimeZone, rows: &[(String, bool, serde_json::Value)]) {
    if crate::keys::require_writable("record the maintenance run").is_err() {
        return;
    }
    let ok = rows.iter().all(|(_, ok, _)| *ok);
    let result: Vec<serde_json::Value> = rows
        .iter()
        .map(|(action, ok, detail)| json!({"action": action, "ok": ok, "detail": detail}))
        .collect();
    let by = crate::access::acting_role();
    let via = run_via();
    let recorded = crate::access::in_subtransaction(|| {
        as_catalog_owner(|| {
            Spi::connect_mut(|client| {
                client
                    .update(
                        "INSERT INTO event_crypto.maintenance_status AS s \
                             (runs, runs_not_ok, last_started_at, last_finished_at, last_ok, last_run_by, last_run_via, \
                              last_result, last_ok_at, last_not_ok_at) \
                         SELECT 1, CASE WHEN $2 THEN 0 ELSE 1 END, $1, t.now, $2, $3, $4, $5, \
                                CASE WHEN $2 THEN t.now END, CASE WHEN NOT $2 THEN t.now END \
                         FROM (SELECT pg_catalog.clock_timestamp() AS now) t \
                         ON CONFLICT (one) DO UPDATE \
                         SET runs = s.runs OPERATOR(pg_catalog.+) 1, \
                             runs_not_ok = s.runs_not_ok OPERATOR(pg_catalog.+) EXCLUDED.runs_not_ok, \
                             last_started_at = EXCLUDED.last_started_at, last_finished_at = EXCLUDED.last_finished_at, \
                             last_ok = EXCLUDED.last_ok, last_run_by = EXCLUDED.last_run_by, \
                             last_run_via = EXCLUDED.last_run_via, last_result = EXCLUDED.last_result, \
                             last_ok_at = COALESCE(EXCLUDED.last_ok_at, s.last_ok_at), \
                             last_not_ok_at = COALESCE(EXCLUDED.last_not_ok_at, s.last_not_ok_at)",
                        None,
                        &[
                            started.into(),
                            ok.into(),
                            by.as_str().into(),
                            via.as_str().into(),
                            pgrx::JsonB(json!(result)).into(),
                        ],
                    )
                    .unwrap_or_else(|e| spi_failed(e));
            })
        })
    });
    if let Err(c) = recorded {
        warning!(
            "event_crypto: the maintenance run could not be recorded in event_crypto.maintenance_status ({}): {}",
            c.sqlstate,
            c.message
        );
    }
}

/// What ran the maintenance: the background worker's type (`event_crypto maintenance`, or pg_cron's worker when
/// pg_cron runs jobs in background workers), otherwise the session's `application_name` (pg_cron's own
/// connections say `pg_cron`).
fn run_via() -> String {
    // SAFETY: MyBgworkerEntry is set for the life of a background worker (NULL in other backends); its bgw_type and
    // application_name are NUL-terminated strings owned by the backend.
    unsafe {
        let w = pg_sys::MyBgworkerEntry;
        if !w.is_null() {
            return CStr::from_ptr((*w).bgw_type.as_ptr()).to_string_lossy().into_owned();
        }
        let a = pg_sys::application_name;
        if a.is_null() {
            String::new()
        } else {
            CStr::from_ptr(a).to_string_lossy().into_owned()
        }
    }
}

/// Counts in shared memory not yet flushed into `event_crypto.key_usage`, per key version of this database:
/// encryptions, decryptions, and attempts under a disabled version (the stats views add them to the flushed ones).
#[pg_extern(volatile, parallel_safe)]
fn usage_pending_counts() -> TableIterator<
    'static,
    (
        name!(key_id, String),
        name!(version, i32),
        name!(encryptions, i64),
        name!(decryptions, i64),
        name!(disabled_decryptions, i64),
    ),
> {
    // SAFETY: reading a backend-global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let mut rows: std::collections::BTreeMap<(String, u32), [i64; 3]> = std::collections::BTreeMap::new();
    for (k, n) in usage::snapshot(database) {
        let column = match k.kind {
            Kind::Encrypt => 0,
            Kind::Read => 1,
            Kind::Disabled => 2,
            Kind::Decrypt => continue,
        };
        let cell = &mut rows.entry((k.key_id, k.version)).or_default()[column];
        *cell = cell.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
    }
    TableIterator::new(
        rows.into_iter()
            .map(|((key_id, version), [e, d, x])| (key_id, version as i32, e, d, x)),
    )
}

/// Encryptions counted in shared memory and not yet flushed, per key version of this database (0.1.0's function,
/// which `key_info` reads; see [`usage_pending_counts`]).
#[pg_extern(volatile, parallel_safe)]
fn usage_pending() -> TableIterator<'static, (name!(key_id, String), name!(version, i32), name!(pending, i64))> {
    // SAFETY: reading a backend-global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    TableIterator::new(
        usage::snapshot(database)
            .into_iter()
            .filter(|(k, _)| k.kind == Kind::Encrypt)
            .map(|(k, n)| (k.key_id, k.version as i32, n as i64)),
    )
}

/// Whether counting works in this server (the library was preloaded).
#[pg_extern(stable, parallel_safe)]
fn usage_tracking() -> bool {
    usage::available()
}

/// Registers the background worker when `event_crypto.worker_database` is set (called from `_PG_init` while
/// preloading). It needs `event_crypto.worker_role` too: maintenance never runs as a superuser by default.
pub fn register_worker() {
    let Some(db) = crate::guc::worker_database() else {
        return;
    };
    if crate::guc::worker_role().is_none() {
        warning!(
            "event_crypto.worker_database is \"{db}\" but event_crypto.worker_role is not set: the maintenance worker is not started"
        );
        return;
    }
    BackgroundWorkerBuilder::new("event_crypto maintenance")
        .set_type("event_crypto maintenance")
        .set_function("event_crypto_worker_main")
        .set_library("event_crypto")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

/// The background worker: connects as `event_crypto.worker_role` (a LOGIN role that is not a superuser; it
/// refuses a superuser), then runs one maintenance run every `event_crypto.worker_interval`, one log line per
/// action; an error in one action is caught inside `run_maintenance()` and logged, the others still run; SIGTERM
/// stops it between runs.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn event_crypto_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let (Some(db), Some(role)) = (crate::guc::worker_database(), crate::guc::worker_role()) else {
        return;
    };
    BackgroundWorker::connect_worker_to_spi(Some(&db), Some(&role));
    // SAFETY: superuser() reads the current user's catalog entry.
    if unsafe { pg_sys::superuser() } {
        warning!(
            "event_crypto worker: event_crypto.worker_role \"{role}\" is a superuser; the worker does not run maintenance as a superuser and stops (set a role that is a member of event_crypto_admin)"
        );
        return;
    }
    log!("event_crypto worker started in database \"{db}\" as role \"{role}\"");
    let mut said_not_installed = false;
    loop {
        let interval = Duration::from_secs(crate::guc::worker_interval_secs().max(1) as u64);
        if !BackgroundWorker::wait_latch(Some(interval)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a background worker to re-read postgresql.conf after SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let installed = BackgroundWorker::transaction(|| {
            let installed = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'event_crypto')",
            )
            .ok()
            .flatten()
            .unwrap_or(false);
            if !installed {
                return false;
            }
            // An error outside the actions (the role lacks a grant, the extension is half dropped) is logged and
            // the worker waits for the next run, rather than exiting and being restarted every few seconds.
            let run = crate::access::in_subtransaction(|| {
                Spi::connect(|client| {
                    client
                        .select(
                            "SELECT action, ok, detail::pg_catalog.text FROM event_crypto.run_maintenance()",
                            None,
                            &[],
                        )?
                        .map(|r| {
                            Ok((
                                r.get::<String>(1)?.unwrap_or_default(),
                                r.get::<bool>(2)?.unwrap_or(false),
                                r.get::<String>(3)?.unwrap_or_default(),
                            ))
                        })
                        .collect::<std::result::Result<Vec<(String, bool, String)>, pgrx::spi::SpiError>>()
                })
            });
            match run {
                Ok(Ok(rows)) => {
                    for (action, ok, detail) in rows {
                        if ok {
                            log!("event_crypto worker: {action}: {detail}");
                        } else {
                            warning!("event_crypto worker: {action} failed or was incomplete: {detail}");
                        }
                    }
                }
                Ok(Err(e)) => warning!("event_crypto worker: the maintenance run could not be read: {e}"),
                Err(c) => warning!(
                    "event_crypto worker: the maintenance run failed ({}): {}",
                    c.sqlstate,
                    c.message
                ),
            }
            true
        });
        if !installed && !said_not_installed {
            log!("event_crypto worker: the extension is not installed in database \"{db}\"; nothing to do until it is");
        }
        said_not_installed = !installed;
    }
    log!("event_crypto worker stopped");
}
