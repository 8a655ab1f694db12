//! What needs several sessions: shredding and rotation seen by a backend that had the key cached, parallel workers.

use event_crypto_it::{connect, envelope_version, fresh_db, sql_error};
use serde_json::Value;

fn setup_events(c: &mut postgres::Client) {
    c.batch_execute(
        "SELECT event_crypto.create_key('subject:alice');
         SELECT event_crypto.create_key('subject:bob', 'chacha20-poly1305');
         CREATE TABLE events (id serial PRIMARY KEY, subject text, payload jsonb);
         INSERT INTO events (subject, payload)
         SELECT s, event_crypto.encrypt_fields(jsonb_build_object('email', s || '@x.io', 'n', i), '{email}', 'subject:' || s)
         FROM unnest(ARRAY['alice', 'bob']) AS s, generate_series(1, 50) AS i;",
    )
    .unwrap();
}

fn emails(c: &mut postgres::Client, subject: &str) -> Vec<Value> {
    c.query(
        "SELECT event_crypto.decrypt_fields(payload)->'email' FROM events WHERE subject = $1 ORDER BY id",
        &[&subject],
    )
    .unwrap()
    .iter()
    .map(|r| r.get::<_, serde_json::Value>(0))
    .collect()
}

/// A fresh database with the events, an admin session, and a reader that decrypted (and so cached both keys)
/// and encrypted with alice's key.
fn reader_with_keys_cached(prefix: &str) -> (String, postgres::Client, postgres::Client) {
    let db = fresh_db("A", prefix);
    let mut admin = connect("A", &db);
    setup_events(&mut admin);
    let mut reader = connect("A", &db);
    assert!(emails(&mut reader, "alice").iter().all(|v| v == "alice@x.io"));
    reader
        .query_one("SELECT event_crypto.encrypt_value('1', 'subject:alice')", &[])
        .unwrap();
    (db, admin, reader)
}

#[test]
fn shred_in_one_session_reaches_a_session_that_had_the_key_cached() {
    let (db, mut admin, mut reader) = reader_with_keys_cached("ec_shred");

    // A reader inside an open transaction keeps its snapshot; after the shred commits, its next transaction sees it.
    let mut in_tx = connect("A", &db);
    in_tx.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").unwrap();
    assert!(emails(&mut in_tx, "alice").iter().all(|v| v == "alice@x.io"));

    let n: i32 = admin
        .query_one("SELECT event_crypto.shred_key('subject:alice')", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    assert!(
        emails(&mut reader, "alice").iter().all(Value::is_null),
        "shredded fields read as null at once"
    );
    assert!(
        emails(&mut reader, "bob").iter().all(|v| v == "bob@x.io"),
        "other subjects are intact"
    );
    let e = reader
        .query_one("SELECT event_crypto.encrypt_value('1', 'subject:alice')", &[])
        .unwrap_err();
    // (encrypting under a shredded key id gives the error of an unknown one: 42704)
    assert_eq!(sql_error(&e).0, "42704");
    let e = reader
        .query(
            "SELECT event_crypto.decrypt_fields(payload, NULL, 'error') FROM events WHERE subject = 'alice'",
            &[],
        )
        .unwrap_err();
    assert_eq!(sql_error(&e).0, "55000");

    in_tx.batch_execute("COMMIT").unwrap();
    assert!(
        emails(&mut in_tx, "alice").iter().all(Value::is_null),
        "next transaction of a long-lived session"
    );

    // A brand-new session sees it too, and the catalog holds no key material for alice.
    let mut fresh = connect("A", &db);
    assert!(emails(&mut fresh, "alice").iter().all(Value::is_null));
    let live: i64 = fresh
        .query_one("SELECT count(*) FROM event_crypto.keys WHERE key_id = 'subject:alice' AND (wrapped_key IS NOT NULL OR wrapped_index_key IS NOT NULL)", &[])
        .unwrap()
        .get(0);
    assert_eq!(live, 0);
}

#[test]
fn a_prepared_statement_does_not_outlive_a_shred() {
    let db = fresh_db("A", "ec_prep");
    let mut admin = connect("A", &db);
    setup_events(&mut admin);
    let mut reader = connect("A", &db);
    let stmt = reader
        .prepare("SELECT event_crypto.decrypt_fields(payload)->'email' FROM events WHERE subject = 'alice'")
        .unwrap();
    for _ in 0..6 {
        // enough executions for the plan cache to switch to a generic plan
        assert!(reader
            .query(&stmt, &[])
            .unwrap()
            .iter()
            .all(|r| r.get::<_, Value>(0) == "alice@x.io"));
    }
    admin
        .query_one("SELECT event_crypto.shred_key('subject:alice')", &[])
        .unwrap();
    assert!(reader
        .query(&stmt, &[])
        .unwrap()
        .iter()
        .all(|r| r.get::<_, Value>(0).is_null()));
}

#[test]
fn rotation_in_one_session_is_used_by_the_next_encryption_in_another() {
    let db = fresh_db("A", "ec_rotate");
    let mut admin = connect("A", &db);
    admin.batch_execute("SELECT event_crypto.create_key('tenant')").unwrap();
    let mut writer = connect("A", &db);
    let enc = |c: &mut postgres::Client| -> String {
        c.query_one("SELECT event_crypto.encrypt_value('\"x\"', 'tenant')", &[])
            .unwrap()
            .get(0)
    };
    let v1 = enc(&mut writer);
    assert_eq!(envelope_version(&v1), 1);
    let v: i32 = admin
        .query_one("SELECT event_crypto.rotate_key('tenant')", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
    let v2 = enc(&mut writer);
    assert_eq!(
        envelope_version(&v2),
        2,
        "the writer had version 1 cached and must switch"
    );
    // both versions still decrypt, in a third session
    let mut reader = connect("A", &db);
    for e in [&v1, &v2] {
        let v: Value = reader
            .query_one("SELECT event_crypto.decrypt_value($1)", &[e])
            .unwrap()
            .get(0);
        assert_eq!(v, "x");
    }
    // the blind index is stable across the rotation, in every session
    let bi = |c: &mut postgres::Client| -> String {
        c.query_one("SELECT event_crypto.blind_index('a@x.io', 'tenant')", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(bi(&mut writer), bi(&mut reader));
}

#[test]
fn concurrent_create_of_one_key_id_makes_one_key() {
    let db = fresh_db("A", "ec_race");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut c = connect("A", &db);
                c.query_one("SELECT event_crypto.create_key('raced')", &[])
                    .map(|_| ())
                    .map_err(|e| sql_error(&e).0)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|code| code == "42710"),
        "{results:?}"
    );
}

#[test]
fn parallel_workers_decrypt() {
    let db = fresh_db("A", "ec_parallel");
    let mut c = connect("A", &db);
    c.batch_execute(
        "SELECT event_crypto.create_key('p');
         CREATE TABLE big AS SELECT i, event_crypto.encrypt_fields(jsonb_build_object('v', i), '{v}', 'p') AS payload
         FROM generate_series(1, 20000) i;
         ANALYZE big;
         SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
         SET min_parallel_table_scan_size = 0;",
    )
    .unwrap();
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT sum((event_crypto.decrypt_fields(payload)->>'v')::int) FROM big",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("Parallel Seq Scan")), "{plan:?}");
    let sum: i64 = c
        .query_one(
            "SELECT sum((event_crypto.decrypt_fields(payload)->>'v')::int)::int8 FROM big",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(sum, 20000 * 20001 / 2);
}

/// A long-lived session (a pooled connection, the maintenance worker) that lived through DROP EXTENSION and
/// CREATE EXTENSION still sees the new catalog's shreds: it no longer keeps the dropped tables' oids, through which
/// it recognised the key catalog's invalidations (found while testing issue 11: the worker kept forgetting a
/// subject it had already forgotten, because its key cache was never dropped again).
#[test]
fn a_session_that_outlives_the_extension_sees_shreds_of_the_new_catalog() {
    let db = fresh_db("A", "ec_recreate");
    let mut admin = connect("A", &db);
    let mut pooled = connect("A", &db);
    admin.batch_execute("SELECT event_crypto.create_key('old:k')").unwrap();
    pooled
        .query_one("SELECT event_crypto.encrypt_value('1', 'old:k')", &[])
        .unwrap();
    admin
        .batch_execute(
            "DROP EXTENSION event_crypto CASCADE;
             CREATE EXTENSION event_crypto;
             SELECT event_crypto.create_key('new:k');
             CREATE TABLE ev (p text);
             INSERT INTO ev SELECT event_crypto.encrypt_value('\"secret\"', 'new:k');",
        )
        .unwrap();
    let read = |c: &mut postgres::Client| -> Option<Value> {
        c.query_one("SELECT event_crypto.decrypt_value(p) FROM ev", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(
        read(&mut pooled),
        Some(Value::String("secret".into())),
        "the key is cached now"
    );
    admin.batch_execute("SELECT event_crypto.shred_key('new:k')").unwrap();
    assert_eq!(read(&mut pooled), None, "the shred reached the session's cache");
}

/// Issue 12 (found by the isolation test forget-during-insert): a session that saw another session change the
/// protection configuration (protect(), a DROP of a protected table) forgot which table is the key catalog until
/// its next catalog lookup, and a shred arriving in between left the key in its cache: it went on encrypting and
/// decrypting under the shredded key.
#[test]
fn a_shred_after_a_configuration_change_still_reaches_a_session_with_the_key_cached() {
    let (_db, mut admin, mut reader) = reader_with_keys_cached("ec_shred_cfg");
    // another session changes the configuration, then shreds the key the reader has cached
    admin
        .batch_execute(
            "CREATE TABLE other (subject text, payload jsonb);
             SELECT event_crypto.protect('other', 'payload', fields => '{x}', key_column => 'subject');
             DROP TABLE other CASCADE;",
        )
        .unwrap();
    admin
        .query_one("SELECT event_crypto.shred_key('subject:alice')", &[])
        .unwrap();
    assert!(
        emails(&mut reader, "alice").iter().all(Value::is_null),
        "shredded fields read as null in the session that had the key cached"
    );
    let e = reader
        .query_one("SELECT event_crypto.encrypt_value('1', 'subject:alice')", &[])
        .unwrap_err();
    assert_eq!(sql_error(&e).0, "42704");
}
