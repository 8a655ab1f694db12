//! Protected tables across sessions and servers: first events of one subject from two connections at once,
//! forgetting in one session while another reads, and dump/restore of a protected table.

use event_crypto_it::{connect, fresh_db, pg_dump, pg_restore, sql_error, texts};
use serde_json::Value;
use std::sync::mpsc;
use std::time::Duration;

const SCHEMA: &str = "
    SELECT event_crypto.create_key('tenant-42');
    CREATE TABLE events (id bigserial PRIMARY KEY, stream_id uuid, subject_id text, type text,
                         payload jsonb, email_idx text, created_at timestamptz DEFAULT now());
    SELECT event_crypto.protect('events', 'payload', fields => ARRAY['email','phone','address.street','cards[*].number'],
                                key_column => 'subject_id', context_column => 'stream_id');
    SELECT event_crypto.add_blind_index('events', 'payload', 'email', 'email_idx', 'tenant-42', 'lower');
    CREATE INDEX ON events (email_idx);";

fn insert(c: &mut postgres::Client, subject: &str, email: &str) -> Result<u64, postgres::Error> {
    c.execute(
        "INSERT INTO events (stream_id, subject_id, type, payload)
         VALUES ('6f1c0c8e-0000-4000-8000-000000000001', $1, 'CustomerCreated',
                 jsonb_build_object('email', $2::text, 'phone', '555', 'cards', jsonb_build_array(jsonb_build_object('number', '4111'))))",
        &[&subject, &email],
    )
}

#[test]
fn first_events_of_one_subject_from_two_connections_make_one_key() {
    let db = fresh_db("A", "ec_first");
    connect("A", &db).batch_execute(SCHEMA).unwrap();
    let mut first = connect("A", &db);
    first.batch_execute("BEGIN").unwrap();
    insert(&mut first, "alice", "a1@x.io").unwrap(); // creates subject:alice, not yet committed

    // The second connection inserts the first event of the same subject and must wait for the first.
    let (tx, rx) = mpsc::channel();
    let db2 = db.clone();
    let second = std::thread::spawn(move || {
        let mut c = connect("A", &db2);
        let r = insert(&mut c, "alice", "a2@x.io").map_err(|e| sql_error(&e).0);
        tx.send(()).unwrap();
        r
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the second insert waits for the first key"
    );
    first.batch_execute("COMMIT").unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the second insert finishes once the first commits");
    assert_eq!(second.join().unwrap(), Ok(1));

    let mut r = connect("A", &db);
    let keys: i64 = r
        .query_one(
            "SELECT count(*) FROM event_crypto.keys WHERE key_id = 'subject:alice'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(keys, 1, "one key for the subject");
    let emails = texts(&mut r, "SELECT payload->>'email' FROM events_decrypted ORDER BY id");
    assert_eq!(emails, vec!["a1@x.io", "a2@x.io"], "both events are stored and decrypt");

    // Eight connections racing on one new subject, without a transaction holding anyone back.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || {
                insert(&mut connect("A", &db), "bob", &format!("b{i}@x.io")).map_err(|e| sql_error(&e).0)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Ok(1));
    }
    let (keys, rows): (i64, i64) = {
        let row = r
            .query_one(
                "SELECT (SELECT count(*) FROM event_crypto.keys WHERE key_id = 'subject:bob'),
                        (SELECT count(*) FROM events_decrypted WHERE subject_id = 'bob' AND payload->>'email' LIKE 'b_@x.io')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((keys, rows), (1, 8));
}

#[test]
fn forgetting_in_one_session_is_seen_by_a_reader_and_blocks_new_events() {
    let db = fresh_db("A", "ec_forget");
    let mut admin = connect("A", &db);
    admin.batch_execute(SCHEMA).unwrap();
    let mut writer = connect("A", &db);
    insert(&mut writer, "alice", "alice@x.io").unwrap();
    insert(&mut writer, "bob", "bob@x.io").unwrap();
    let mut reader = connect("A", &db);
    let read = |c: &mut postgres::Client| -> Vec<(String, Value, bool)> {
        c.query(
            "SELECT subject_id, payload->'email', email_idx IS NOT NULL FROM events_decrypted ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let lookup = |c: &mut postgres::Client, email: &str| -> i64 {
        c.query_one(
            "SELECT count(*) FROM events WHERE email_idx = event_crypto.blind_index($1, 'tenant-42', 'lower')",
            &[&email],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(read(&mut reader)[0].1, "alice@x.io");
    assert_eq!(lookup(&mut reader, "ALICE@x.io"), 1);

    let receipt: Value = admin
        .query_one("SELECT event_crypto.forget_subject('alice')", &[])
        .unwrap()
        .get(0);
    assert_eq!(receipt["versions_destroyed"], 1);
    assert_eq!(receipt["blind_index_rows_cleared"], 1);

    let rows = read(&mut reader);
    assert_eq!(
        rows[0],
        ("alice".to_string(), Value::Null, false),
        "forgotten: fields null, index cleared"
    );
    assert_eq!(
        rows[1],
        ("bob".to_string(), Value::from("bob@x.io"), true),
        "other subjects intact"
    );
    assert_eq!(
        lookup(&mut reader, "alice@x.io"),
        0,
        "the erased subject is not found by the index"
    );
    assert_eq!(lookup(&mut reader, "bob@x.io"), 1);

    // The writer had alice's key cached: its next insert for alice is refused with the forgotten-subject error.
    let e = insert(&mut writer, "alice", "again@x.io").unwrap_err();
    let (code, msg, _, hint) = sql_error(&e);
    assert_eq!(code, "23514", "{msg}");
    assert!(msg.contains("forgotten") && hint.unwrap_or_default().contains("on_forgotten"));
    insert(&mut writer, "carol", "carol@x.io").unwrap();
}

#[test]
fn dump_and_restore_of_a_protected_table() {
    let src = fresh_db("A", "ec_pdump");
    let mut c = connect("A", &src);
    c.batch_execute(SCHEMA).unwrap();
    for (s, e) in [("alice", "alice@x.io"), ("bob", "bob@x.io"), ("carol", "carol@x.io")] {
        insert(&mut c, s, e).unwrap();
    }
    c.query_one("SELECT event_crypto.forget_subject('carol')", &[]).unwrap();
    let stored_q = "SELECT payload::text || coalesce(email_idx, '') FROM events ORDER BY id";
    let plain_q = "SELECT payload::text FROM events_decrypted ORDER BY id";
    let stored = texts(&mut c, stored_q);
    let plain = texts(&mut c, plain_q);

    let dst = format!("ec_pdump_dst_{}", std::process::id());
    pg_restore("A", &pg_dump("A", &src), &dst);

    let mut r = connect("A", &dst);
    let stored_after = texts(&mut r, stored_q);
    assert_eq!(
        stored_after, stored,
        "restored rows are byte-identical: nothing encrypted twice"
    );
    let plain_after = texts(&mut r, plain_q);
    assert_eq!(plain_after, plain, "the decrypted view is restored and reads the same");
    assert!(
        plain_after[2].contains("\"email\": null"),
        "a forgotten subject stays forgotten"
    );
    // The protection configuration came along: new rows are encrypted and indexed, forgotten subjects refused.
    insert(&mut r, "dave", "dave@x.io").unwrap();
    let (enc, idx): (bool, bool) = {
        let row = r.query_one("SELECT payload->>'email' LIKE '$ec2$%', email_idx = event_crypto.blind_index('dave@x.io', 'tenant-42', 'lower') FROM events WHERE subject_id = 'dave'", &[]).unwrap();
        (row.get(0), row.get(1))
    };
    assert!(enc && idx);
    let e = insert(&mut r, "carol", "c@x.io").unwrap_err();
    assert_eq!(sql_error(&e).0, "23514");
    let audit: i64 = r
        .query_one(
            // (the subject by digest, issue 15: computed with the catalog secret the dump carried)
            "SELECT count(*) FROM event_crypto.audit_log WHERE action = 'forget_subject'
             AND subject = event_crypto.key_id_digest('subject:carol')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(audit, 1, "the audit log is carried by the dump");
}
