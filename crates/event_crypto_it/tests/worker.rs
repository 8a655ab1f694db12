//! The maintenance background worker (cluster B: `worker_database = 'postgres'`, `worker_role = 'ec_worker'`,
//! `worker_interval = 1`): it runs as its role, never as a superuser; usage-based rotation with a low limit,
//! scheduled rotation and retention are each observed within two intervals of becoming due; a table owner's
//! trigger that retention fires runs as the owner, powerless (issue 11, item 1: it used to run as the bootstrap
//! superuser, and the owner became superuser within seconds); a failing action is logged and the others keep
//! running, and every run is recorded for operators (`stats_maintenance`); SIGTERM stops the worker cleanly; a
//! superuser as worker_role is refused.

use event_crypto_it::{connect, restart_cluster, scratch};
use postgres::Client;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_secs(1);

fn log_path() -> String {
    format!("{}/b/server.log", scratch())
}

fn versions(c: &mut Client, key_id: &str) -> Vec<(i32, String)> {
    c.query(
        // (a key id shredded whole is kept under its digest: issue 15)
        "SELECT version, status FROM event_crypto.key_info WHERE key_id IN ($1, event_crypto.key_id_digest($1)) ORDER BY version",
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
        "GRANT event_crypto_admin TO ec_worker",
        "ALTER SYSTEM SET event_crypto.rotate_after_encryptions = 100",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(sql).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (worker, user): (i32, String) = c
        .query_one(
            "SELECT pid, usename::text FROM pg_stat_activity WHERE backend_type = 'event_crypto maintenance'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .expect("the worker runs");
    assert_eq!(user, "ec_worker", "the worker runs as event_crypto.worker_role");

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

    // A table owner's statement trigger that tries to make its owner superuser, on a table whose subjects a
    // retention policy forgets: forgetting clears the blind index values with an UPDATE, which the worker runs as
    // the table's owner in a security-restricted operation.
    c.batch_execute(
        "DROP TABLE IF EXISTS w_t5, w_stolen;
         DROP FUNCTION IF EXISTS w_pwn();
         DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'w_owner') THEN
             EXECUTE 'DROP OWNED BY w_owner'; EXECUTE 'DROP ROLE w_owner'; END IF; END $$;
         CREATE ROLE w_owner;
         GRANT CREATE ON SCHEMA public TO w_owner;
         CREATE TABLE w_stolen (who name, what text);
         GRANT INSERT ON w_stolen TO PUBLIC;
         CREATE TABLE w_t5 (id serial PRIMARY KEY, subject text, payload jsonb, idx text);
         ALTER TABLE w_t5 OWNER TO w_owner;
         SELECT count(*) FROM event_crypto.protect('w_t5', 'payload', fields => ARRAY['email'], key_column => 'subject',
                                                   key_prefix => 'w5:');
         SELECT count(*) FROM event_crypto.add_blind_index('w_t5', 'payload', 'email', 'idx', 'w5-tenant');
         INSERT INTO w_t5 (subject, payload) VALUES ('zoe', jsonb_build_object('email', 'zoe@x.io'));
         SET ROLE w_owner;
         CREATE FUNCTION w_pwn() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             BEGIN
                 EXECUTE 'ALTER ROLE w_owner SUPERUSER';
                 INSERT INTO public.w_stolen VALUES (current_user, 'became superuser');
             EXCEPTION WHEN OTHERS THEN
                 INSERT INTO public.w_stolen VALUES (current_user, SQLSTATE);
             END;
             RETURN NULL;
         END $$;
         CREATE TRIGGER a_pwn BEFORE UPDATE ON w_t5 FOR EACH STATEMENT EXECUTE FUNCTION w_pwn();
         GRANT SELECT, UPDATE ON w_t5 TO ec_worker;
         RESET ROLE;
         SELECT event_crypto.set_retention(\"table\" => 'w_t5', older_than => '1 second');",
    )
    .unwrap();
    let set = Instant::now();
    assert_eq!(versions(&mut c, "w5:zoe"), vec![(1, "active".to_string())]);
    within_two_intervals(
        &mut c,
        set + Duration::from_secs(1),
        "retention of a table's subjects",
        |c| versions(c, "w5:zoe") == vec![(1, "shredded".to_string())],
    );
    let superuser: bool = c
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'w_owner'", &[])
        .unwrap()
        .get(0);
    assert!(!superuser, "the table owner did not become superuser");
    let stolen: Vec<(String, String)> = c
        .query("SELECT who::text, what FROM w_stolen", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!stolen.is_empty(), "the owner's trigger ran");
    assert!(
        stolen.iter().all(|(who, what)| who == "w_owner" && what == "42501"),
        "it ran as its owner, and ALTER ROLE was refused: {stolen:?}"
    );
    let forget_actor: String = c
        .query_one(
            "SELECT actor::text FROM event_crypto.audit_log WHERE action = 'forget_subject'
             AND subject = event_crypto.key_id_digest('w5:zoe')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(forget_actor, "ec_worker", "the audit log names the worker's role");
    let audited: i64 = c
        .query_one(
            "SELECT count(*) FROM event_crypto.audit_log WHERE action IN ('usage_rotation', 'scheduled_rotation', 'enforce_retention')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(audited >= 3, "each maintenance action is audited");
    // Operators see the worker's runs (event_crypto.stats_maintenance): by its role, through the worker, with the
    // action that failed on the damaged key named.
    let (runs, runs_not_ok, by, via, not_ok): (i64, i64, String, String, Vec<String>) = c
        .query_one(
            "SELECT runs, runs_not_ok, last_run_by::text, last_run_via, last_not_ok_actions FROM event_crypto.stats_maintenance",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .unwrap();
    assert!(runs >= 3 && runs_not_ok >= 1, "runs {runs}, not ok {runs_not_ok}");
    assert_eq!((by.as_str(), via.as_str()), ("ec_worker", "event_crypto maintenance"));
    assert_eq!(not_ok, vec!["scheduled_rotation".to_string()]);
    let log = std::fs::read_to_string(log_path()).unwrap();
    for line in [
        "event_crypto worker: flush_usage:",
        "event_crypto worker: usage_rotation: {\"limit\": 100, \"rotated\": 1}",
        "event_crypto worker: scheduled_rotation failed or was incomplete:",
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
        "DROP TABLE w_t5, w_stolen",
        "DROP FUNCTION w_pwn()",
    ] {
        c.batch_execute(sql).unwrap();
    }

    // A superuser as worker_role: the worker says so and does not run maintenance.
    c.batch_execute("ALTER SYSTEM SET event_crypto.worker_role = 'postgres'")
        .unwrap();
    drop(c);
    restart_cluster("b");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(log_path())
        .unwrap()
        .contains("event_crypto.worker_role \"postgres\" is a superuser")
    {
        assert!(Instant::now() < deadline, "the worker did not refuse a superuser role");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = connect("B", "postgres");
    let running: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_crypto maintenance'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(running, 0, "no maintenance runs as a superuser");
    c.batch_execute("ALTER SYSTEM RESET event_crypto.worker_role").unwrap();
    drop(c);
    restart_cluster("b");
}
