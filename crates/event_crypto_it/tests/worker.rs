//! The maintenance background worker (cluster B: `worker_database = 'postgres'`, `worker_interval = 1`):
//! usage-based rotation with a low limit, scheduled rotation and retention are each observed within two intervals
//! of becoming due; a failing action is logged and the others keep running; SIGTERM stops the worker cleanly.

use event_crypto_it::{connect, scratch};
use postgres::Client;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);

fn log_path() -> String {
    format!("{}/b/server.log", scratch())
}

fn versions(c: &mut Client, key_id: &str) -> Vec<(i32, String)> {
    c.query(
        "SELECT version, status FROM event_crypto.key_info WHERE key_id = $1 ORDER BY version",
        &[&key_id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Waits until `done` holds, at most two worker intervals (plus one second for the run itself) after `due`.
fn within_two_intervals(c: &mut Client, due: Instant, what: &str, mut done: impl FnMut(&mut Client) -> bool) {
    let deadline = due + 2 * INTERVAL + Duration::from_secs(1);
    loop {
        if done(c) {
            eprintln!(
                "{what}: observed {:?} after it became due",
                Instant::now().saturating_duration_since(due)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} was not done within two worker intervals of becoming due"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_worker_rotates_enforces_retention_survives_errors_and_stops_cleanly() {
    let mut c = connect("B", "postgres");
    // (one statement at a time: ALTER SYSTEM refuses to run in the implicit transaction of a multi-statement batch)
    for sql in [
        "DROP EXTENSION IF EXISTS event_crypto CASCADE",
        "CREATE EXTENSION event_crypto",
        "ALTER SYSTEM SET event_crypto.rotate_after_encryptions = 100",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(sql).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let worker: i32 = c
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_crypto maintenance'",
            &[],
        )
        .expect("the worker runs")
        .get(0);

    // Usage limit: 150 encryptions under version 1 with a limit of 100.
    c.batch_execute(
        "SELECT event_crypto.create_key('w:usage');
         SELECT count(event_crypto.encrypt_value(to_jsonb(i), 'w:usage')) FROM generate_series(1, 150) i;",
    )
    .unwrap();
    let due = Instant::now();
    within_two_intervals(&mut c, due, "usage rotation", |c| versions(c, "w:usage").len() == 2);
    let used: i64 = c
        .query_one(
            "SELECT encryptions FROM event_crypto.key_info WHERE key_id = 'w:usage' AND version = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(used, 150);
    assert_eq!(versions(&mut c, "w:usage")[1], (2, "active".to_string()));

    // Scheduled rotation (every 2 seconds) and retention (keys older than 3 seconds), plus a damaged key that
    // makes every scheduled rotation attempt of it fail.
    c.batch_execute(
        "SELECT event_crypto.set_rotation('w:sched:%', '2 seconds');
         SELECT event_crypto.set_retention(key_pattern => 'w:ret:%', older_than => '3 seconds');
         SELECT event_crypto.create_key('w:sched:1');
         SELECT event_crypto.create_key('w:ret:1');
         SELECT event_crypto.create_key('w:sched:broken');
         UPDATE event_crypto.keys SET wrapped_index_key = wrapped_key WHERE key_id = 'w:sched:broken';",
    )
    .unwrap();
    let created = Instant::now();
    within_two_intervals(&mut c, created + Duration::from_secs(2), "scheduled rotation", |c| {
        versions(c, "w:sched:1").len() >= 2
    });
    within_two_intervals(&mut c, created + Duration::from_secs(3), "retention", |c| {
        versions(c, "w:ret:1").iter().all(|(_, s)| s == "shredded")
    });
    assert_eq!(versions(&mut c, "w:sched:broken"), vec![(1, "active".to_string())]);
    let audited: i64 = c
        .query_one(
            "SELECT count(*) FROM event_crypto.audit_log WHERE action IN ('usage_rotation', 'scheduled_rotation', 'enforce_retention')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(audited >= 3, "each maintenance action is audited");
    let log = std::fs::read_to_string(log_path()).unwrap();
    for line in [
        "event_crypto worker: flush_usage:",
        "event_crypto worker: usage_rotation: {\"limit\": 100, \"rotated\": 1}",
        "event_crypto worker: scheduled_rotation failed:",
        "event_crypto worker: retention: {\"shredded\": 1}",
    ] {
        assert!(log.contains(line), "the server log lacks {line:?}");
    }
    // The worker is still the same process: errors in one action did not kill it.
    let still: i32 = c
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_crypto maintenance'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(still, worker);

    // SIGTERM: the worker finishes its run and exits with a log line.
    c.batch_execute(&format!("SELECT pg_terminate_backend({worker})"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(log_path())
        .unwrap()
        .contains("event_crypto worker stopped")
    {
        assert!(Instant::now() < deadline, "the worker did not log its stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    for sql in [
        "ALTER SYSTEM RESET event_crypto.rotate_after_encryptions",
        "SELECT pg_reload_conf()",
        "DROP EXTENSION event_crypto CASCADE",
    ] {
        c.batch_execute(sql).unwrap();
    }
}
