//! A hot standby (issue 13): cluster S is a streaming replica of A made with pg_basebackup (tests/clusters.sh).
//! On the standby decryption, the decrypted view, blind index lookups and export_subject work; a shred or
//! forget_subject on the primary reaches standby sessions that had the key cached as soon as it is replayed;
//! whatever must write fails with 25006 and a clear message; reading never tries to write. Promoted, the standby
//! carries on: keys, counters and the audit chain.

use event_crypto_it::{connect, dsn, fresh_db, one, pg_bin, scratch, sql_error};
use postgres::Client;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Waits until the standby has replayed everything the primary has written so far.
fn wait_for_replay(primary: &mut Client, standby: &mut Client) {
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up: bool = standby
            .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn])
            .unwrap()
            .get(0);
        if caught_up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not replay {lsn} within a minute"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn emails(c: &mut Client, subject: &str) -> Vec<Value> {
    c.query(
        "SELECT event_crypto.decrypt_fields(payload)->'email' FROM events WHERE subject = $1 ORDER BY id",
        &[&subject],
    )
    .unwrap()
    .iter()
    .map(|r| r.get::<_, Value>(0))
    .collect()
}

fn sqlstate_of(c: &mut Client, sql: &str) -> (String, String) {
    let e = c.batch_execute(sql).expect_err(sql);
    let (code, message, _, _) = sql_error(&e);
    (code, message)
}

#[test]
fn a_hot_standby_reads_follows_shreds_refuses_writes_and_carries_on_when_promoted() {
    let mut probe = connect("S", "postgres");
    let in_recovery: bool = probe.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(
        in_recovery,
        "cluster S is not a standby (was it promoted by an earlier run? restart the clusters with tests/clusters.sh)"
    );

    let db = fresh_db("A", "ec_standby");
    let mut primary = connect("A", &db);
    primary
        .batch_execute(
            "CREATE TABLE events (id serial PRIMARY KEY, subject text, payload jsonb, email_idx text);
             SELECT event_crypto.protect('events', 'payload', fields => '{email}', key_column => 'subject');
             SELECT event_crypto.create_key('tenant-index');
             SELECT event_crypto.add_blind_index('events', 'payload', 'email', 'email_idx', 'tenant-index');
             INSERT INTO events (subject, payload)
             SELECT s, jsonb_build_object('email', s || i || '@x.io', 'n', i)
             FROM unnest(ARRAY['alice', 'bob', 'carol']) s, generate_series(1, 20) i;",
        )
        .unwrap();
    wait_for_replay(&mut primary, &mut probe);
    let mut standby = connect("S", &db);
    let mut cached = connect("S", &db);

    // reads: decryption, the decrypted view, blind index lookups, export
    assert!(emails(&mut standby, "alice")
        .iter()
        .enumerate()
        .all(|(i, v)| v == &Value::String(format!("alice{}@x.io", i + 1))));
    assert_eq!(
        one(
            &mut standby,
            "SELECT count(*) FROM events_decrypted WHERE payload->>'email' LIKE 'bob%@x.io'"
        ),
        20
    );
    assert_eq!(
        one(
            &mut standby,
            "SELECT count(*) FROM events WHERE email_idx = event_crypto.blind_index('carol7@x.io', 'tenant-index')"
        ),
        1
    );
    let export: Value = standby
        .query_one("SELECT event_crypto.export_subject('bob')", &[])
        .unwrap()
        .get(0);
    assert_eq!(export["complete"], Value::Bool(true));
    assert_eq!(
        export["audited"],
        Value::Bool(false),
        "an export on a standby says it is not audited"
    );
    assert_eq!(export["tables"][0]["rows"].as_array().map(Vec::len), Some(20));
    // the count a retirement checks is a read too
    assert_eq!(
        one(
            &mut standby,
            "SELECT sum(rows)::bigint FROM event_crypto.key_version_usage('subject:bob', 1) WHERE table_name LIKE '%events'"
        ),
        20
    );
    // encrypting under an existing key is a read: it works (its count stays in the standby's memory)
    let env: String = standby
        .query_one("SELECT event_crypto.encrypt_value('\"x\"', 'subject:alice')", &[])
        .unwrap()
        .get(0);
    assert!(env.starts_with("$ec2$"));
    // decryptions are counted on the primary only: the reads above left nothing pending on the standby (nothing
    // there could flush them into the catalog)
    let pending: i64 = one(
        &mut standby,
        "SELECT coalesce(sum(decryptions), 0)::bigint FROM event_crypto.usage_pending_counts()",
    );
    assert_eq!(pending, 0, "a standby keeps no decryption counts");
    // a reading session that keeps alice's and carol's keys cached
    assert!(emails(&mut cached, "alice").iter().all(|v| v.is_string()));
    assert!(emails(&mut cached, "carol").iter().all(|v| v.is_string()));

    // writes: refused with 25006, never XX000
    for (sql, what) in [
        ("SELECT event_crypto.create_key('new-key')", "create encryption key"),
        (
            "SELECT event_crypto.rotate_key('subject:alice')",
            "rotate encryption key",
        ),
        ("SELECT event_crypto.shred_key('subject:alice')", "shred encryption key"),
        ("SELECT event_crypto.forget_subject('alice')", "forget a subject"),
    ] {
        let (code, message) = sqlstate_of(&mut standby, sql);
        assert_eq!(code, "25006", "{sql}: {message}");
        assert!(
            message.contains(what) && message.contains("hot standby"),
            "{sql}: {message}"
        );
    }
    // encrypt_fields never creates keys (on the primary neither): an unknown key id is 42704 as there
    let (code, _) = sqlstate_of(&mut standby, "SELECT event_crypto.encrypt_value('1', 'not-yet-a-key')");
    assert_eq!(code, "42704");
    for sql in [
        "INSERT INTO events (subject, payload) VALUES ('dave', '{\"email\":\"d@x.io\"}')",
        "SELECT event_crypto.protect('events', 'payload', fields => '{email}', key_column => 'subject')",
    ] {
        let (code, message) = sqlstate_of(&mut standby, sql);
        assert!(code == "25006" || code == "0A000", "{sql}: {code} {message}");
        assert_ne!(code, "XX000", "{sql}: {message}");
    }

    // the maintenance run reports every action failed, saying why
    let rows = standby
        .query("SELECT ok, detail::text FROM event_crypto.run_maintenance()", &[])
        .unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        let (ok, detail): (bool, String) = (r.get(0), r.get(1));
        assert!(
            !ok && detail.contains("25006") && detail.contains("hot standby"),
            "{detail}"
        );
    }

    // a shred and a forget on the primary reach the standby's cached sessions once replayed
    primary
        .batch_execute("SELECT event_crypto.shred_key('subject:alice'); SELECT event_crypto.forget_subject('carol');")
        .unwrap();
    wait_for_replay(&mut primary, &mut probe);
    assert!(
        emails(&mut cached, "alice").iter().all(Value::is_null),
        "the shred reached the cached session"
    );
    assert!(
        emails(&mut cached, "carol").iter().all(Value::is_null),
        "the forget reached the cached session"
    );
    assert_eq!(
        one(
            &mut cached,
            "SELECT count(*) FROM events WHERE subject = 'carol' AND email_idx IS NOT NULL"
        ),
        0,
        "carol's blind index values were cleared"
    );
    assert!(emails(&mut cached, "bob").iter().all(Value::is_string));
    let (code, _) = sqlstate_of(
        &mut cached,
        "SELECT event_crypto.decrypt_fields(payload, on_shredded => 'error') FROM events WHERE subject = 'alice'",
    );
    assert_eq!(code, "55000", "on_shredded => 'error' says the key is shredded");
    let reads_on_standby = one(&mut standby, "SELECT count(*) FROM event_crypto.audit_log");

    // promoted, the standby carries on: new keys, inserts, counters, the audit chain
    drop((standby, cached));
    let dir = format!("{}/s", scratch());
    let st = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &pg_bin("pg_ctl")])
        .args(["-D", &format!("{dir}/data"), "-w", "promote"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "pg_ctl promote failed");
    let mut promoted = connect("S", &db);
    let in_recovery: bool = promoted.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(!in_recovery);
    promoted
        .batch_execute(
            "INSERT INTO events (subject, payload) VALUES ('dave', '{\"email\":\"dave@x.io\"}'), ('bob', '{\"email\":\"bob99@x.io\"}');
             SELECT event_crypto.create_key('after-promotion');",
        )
        .unwrap();
    assert_eq!(emails(&mut promoted, "dave"), vec![Value::String("dave@x.io".into())]);
    assert!(
        emails(&mut promoted, "alice").iter().all(Value::is_null),
        "a shredded key stays shredded"
    );
    let (code, _) = sqlstate_of(
        &mut promoted,
        "INSERT INTO events (subject, payload) VALUES ('carol', '{\"email\":\"back@x.io\"}')",
    );
    assert_eq!(code, "23514", "a forgotten subject stays forgotten");
    let verified: bool = promoted
        .query_one("SELECT bool_and(ok) FROM event_crypto.verify_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(verified, "the audit chain verifies after promotion");
    assert!(one(&mut promoted, "SELECT count(*) FROM event_crypto.audit_log") > reads_on_standby);
    let flushed: Value = promoted
        .query_one(
            "SELECT detail FROM event_crypto.run_maintenance() WHERE action = 'flush_usage'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        flushed.is_object(),
        "the promoted server flushes usage counts: {flushed}"
    );
    assert!(
        one(
            &mut promoted,
            "SELECT coalesce(sum(encryptions), 0)::bigint FROM event_crypto.key_usage WHERE key_id = 'subject:dave'"
        ) >= 1,
        "encryptions on the promoted server are counted"
    );
    let _ = dsn("S");
}
