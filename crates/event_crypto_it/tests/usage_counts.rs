//! Issue 12, item 7: the shared usage counters (8,192 for all databases) filled up and then lost counts silently:
//! after one 6,200-subject insert in another database, 100 encryptions counted 0 and `audit_decrypt` wrote
//! nothing. Now one database holds at most half of the table, a bulk transaction and a transaction the table has
//! no room for write their counts into the catalog at commit, a session keeps what it cannot record (and warns),
//! and what is lost even so (the table full when the session ends) is counted, reported and audited.
//! Cluster A preloads the library.

use event_crypto_it::{connect, dsn, fresh_db};
use postgres::{Client, NoTls};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn total_encryptions(c: &mut Client, pattern: &str) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(encryptions), 0)::bigint FROM event_crypto.key_info WHERE key_id LIKE $1",
        &[&pattern],
    )
    .unwrap()
    .get(0)
}

fn flush(c: &mut Client) -> Value {
    c.query_one("SELECT event_crypto.flush_usage()", &[]).unwrap().get(0)
}

/// `n` keys `<prefix><i>`, then one committed transaction per key encrypting one value under it: each leaves one
/// counter in the shared table (as long as there is room).
fn one_counter_per_transaction(c: &mut Client, prefix: &str, n: i32) {
    c.execute(
        "SELECT count(event_crypto.create_key($1 || g)) FROM generate_series(1, $2) g",
        &[&prefix, &n],
    )
    .unwrap();
    c.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 1..{n} LOOP PERFORM event_crypto.encrypt_value('1', '{prefix}' || i); COMMIT; END LOOP; END $$"
    ))
    .unwrap();
}

#[test]
fn another_database_filling_the_shared_table_does_not_lose_this_databases_counts() {
    let x = fresh_db("A", "usage_x");
    let y = fresh_db("A", "usage_y");
    let mut cx = connect("A", &x);
    // Database X: one insert of 7,000 new subjects (a key version and an encryption each), then 4,200 small
    // transactions under keys of their own. Before: the first filled the shared table (6,144 usable counters).
    cx.batch_execute(
        "CREATE TABLE ev (id serial PRIMARY KEY, subject text, payload jsonb);
         SELECT count(*) FROM event_crypto.protect('ev', 'payload', fields => ARRAY['email'], key_column => 'subject');
         INSERT INTO ev (subject, payload) SELECT 's' || g, '{\"email\": \"x@y.io\"}' FROM generate_series(1, 7000) g;",
    )
    .unwrap();
    one_counter_per_transaction(&mut cx, "x:", 4200);

    // Database Y: 100 encryptions in a session that then ends, 50 in a transaction that rolls back (their nonces
    // were drawn), and 10 audited decryptions.
    let mut cy = connect("A", &y);
    cy.batch_execute("SELECT event_crypto.create_key('y:k'); SELECT event_crypto.create_key('y:d');")
        .unwrap();
    let data: Vec<String> = cy
        .query(
            "SELECT event_crypto.encrypt_value(to_jsonb(g), 'y:d') FROM generate_series(1, 10) g",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(cy);
    let mut cy = connect("A", &y);
    cy.execute(
        "SELECT count(event_crypto.encrypt_value('1', 'y:k')) FROM generate_series(1, 100)",
        &[],
    )
    .unwrap();
    drop(cy);
    let mut cy = connect("A", &y);
    cy.batch_execute(
        "BEGIN; SELECT count(event_crypto.encrypt_value('1', 'y:k')) FROM generate_series(1, 50); ROLLBACK;",
    )
    .unwrap();
    cy.batch_execute("SET event_crypto.audit_decrypt = on").unwrap();
    for d in &data {
        cy.execute("SELECT event_crypto.decrypt_value($1)", &[d]).unwrap();
    }
    drop(cy);

    let mut cy = connect("A", &y);
    let f = flush(&mut cy);
    assert_eq!(
        total_encryptions(&mut cy, "y:k"),
        150,
        "every encryption of database Y is counted ({f})"
    );
    assert_eq!(total_encryptions(&mut cy, "y:d"), 10);
    assert_eq!(f["lost"]["encryptions"], 0, "{f}");
    let fields: i64 = cy
        .query_one(
            "SELECT coalesce(sum((details->>'fields')::bigint), 0)::bigint FROM event_crypto.audit_log
             WHERE action = 'decrypt' AND key_ids = ARRAY[event_crypto.key_id_digest('y:d')]",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(fields, 10, "the decryptions are audited");
    let ok: bool = cy
        .query_one("SELECT ok FROM event_crypto.verify_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(ok);

    // And database X lost nothing either.
    let f = flush(&mut cx);
    assert_eq!(f["lost"]["encryptions"], 0, "{f}");
    assert_eq!(total_encryptions(&mut cx, "subject:%"), 7000);
    assert_eq!(total_encryptions(&mut cx, "x:%"), 4200);
    drop(cx);
    drop(cy);
    let mut admin = connect("A", "postgres");
    for db in [x, y] {
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .unwrap();
    }
}

#[test]
fn counts_that_cannot_be_kept_anywhere_are_counted_as_lost_reported_and_audited() {
    let x = fresh_db("A", "usage_lx");
    let y = fresh_db("A", "usage_ly");
    let mut cx = connect("A", &x);
    let mut cy = connect("A", &y);
    flush(&mut cy); // counters of databases dropped by earlier tests go
                    // Fill the shared table to its limit: X holds at most half of it, Y the rest.
    one_counter_per_transaction(&mut cx, "x:", 4200);
    one_counter_per_transaction(&mut cy, "y:", 2100);
    assert_eq!(
        total_encryptions(&mut cy, "y:%"),
        2100,
        "what did not fit was written at commit"
    );
    // A session whose audited decryptions find no room writes them itself when it commits, sealed with the chain.
    let envelopes: Vec<String> = cy
        .query(
            "SELECT event_crypto.encrypt_value(to_jsonb(g), 'y:1') FROM generate_series(1, 5) g",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut reader = connect("A", &y);
    reader.batch_execute("SET event_crypto.audit_decrypt = on").unwrap();
    reader
        .execute(
            "SELECT count(event_crypto.decrypt_value(e)) FROM unnest($1::text[]) e",
            &[&envelopes],
        )
        .unwrap();
    let r = cy
        .query_one(
            "SELECT count(*), coalesce(sum((details->>'fields')::bigint), 0)::bigint FROM event_crypto.audit_log
             WHERE action = 'decrypt' AND key_ids = ARRAY[event_crypto.key_id_digest('y:1')] AND seq IS NOT NULL",
            &[],
        )
        .unwrap();
    let (rows, fields): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!(
        (rows, fields),
        (1, 5),
        "the decryptions are audited at commit, without a flush"
    );
    drop(reader);
    cy.execute(
        "SELECT count(event_crypto.create_key('z:' || g)) FROM generate_series(1, 1100) g",
        &[],
    )
    .unwrap();

    // A transaction under 1,100 more key versions rolls back: nothing can take its counts, so the session keeps
    // them and says so once.
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = warnings.clone();
    let mut session = format!("{} dbname={y}", dsn("A"))
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |n| seen.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())))
        .connect(NoTls)
        .unwrap();
    session
        .batch_execute(
            "BEGIN; SELECT count(event_crypto.encrypt_value('1', 'z:' || g)) FROM generate_series(1, 1100) g; ROLLBACK;",
        )
        .unwrap();
    let w = warnings.lock().unwrap().clone();
    assert_eq!(
        w.iter().filter(|m| m.contains("usage counts are held back")).count(),
        1,
        "one warning: {w:?}"
    );
    assert!(w.iter().any(|m| m.contains("1100 key usage counts")), "{w:?}");
    // The session ends: the shared table takes what it can (up to 7/8 full), the rest is lost, counted.
    drop(session);

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lost = 0;
    while lost == 0 {
        assert!(Instant::now() < deadline, "no lost counts were reported");
        std::thread::sleep(Duration::from_millis(200));
        let f = flush(&mut cy);
        lost = f["lost"]["encryptions"].as_i64().unwrap();
        if lost > 0 {
            assert!(
                f["skipped"].is_string(),
                "a flush that reports lost counts is not ok: {f}"
            );
        }
    }
    flush(&mut cy);
    let counted = total_encryptions(&mut cy, "z:%");
    assert!(lost > 0 && lost <= 1100);
    assert_eq!(
        counted + lost,
        1100,
        "every encryption is either counted per key or counted as lost"
    );
    let audited: i64 = cy
        .query_one(
            "SELECT coalesce(sum((details->>'encryptions')::bigint), 0)::bigint FROM event_crypto.audit_log
             WHERE action = 'usage_lost'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, lost, "the lost counts are recorded in the audit log");
    let ok: bool = cy
        .query_one("SELECT ok FROM event_crypto.verify_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(ok);
    drop(cx);
    drop(cy);
    let mut admin = connect("A", "postgres");
    for db in [x, y] {
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .unwrap();
    }
}
