//! Logical replication of a protected table and the key catalog from cluster A to cluster F (given A's master
//! key for this test): only ciphertext is decoded for the wire, the subscriber stores the rows exactly as the
//! publisher did (its protect trigger does not fire for replicated rows), decrypts them with the same master key,
//! and a subject forgotten on the publisher reads as null on the subscriber, also in a session that had the key
//! cached.

use event_crypto_it::{connect, dsn, fresh_db, pg_bin, scratch, texts};
use std::time::{Duration, Instant};

fn restart_f_with_key(key_file: &str) {
    let f = format!("{}/f", scratch());
    std::fs::copy(key_file, format!("{f}/master.key")).unwrap();
    let st = std::process::Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &pg_bin("pg_ctl"),
            "-D",
            &format!("{f}/data"),
            "-l",
            &format!("{f}/server.log"),
        ])
        .args(["-w", "-m", "fast", "restart"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_logical_subscriber_gets_ciphertext_decrypts_with_the_same_master_key_and_sees_shreds() {
    restart_f_with_key(&format!("{}/a/master.key", scratch()));
    let pub_db = fresh_db("A", "ec_pub");
    let sub_db = fresh_db("F", "ec_sub");
    let mut p = connect("A", &pub_db);
    let mut s = connect("F", &sub_db);
    let table = "CREATE TABLE ev (id bigint PRIMARY KEY, subject text, stream text, payload jsonb, email_idx text)";
    let protect = "SELECT event_crypto.protect('ev', 'payload', fields => ARRAY['email', 'card.number'],
                                               key_column => 'subject', context_column => 'stream');
                   SELECT event_crypto.add_blind_index('ev', 'payload', 'email', 'email_idx', 'repl-index');";
    p.batch_execute(&format!(
        "{table}; SELECT event_crypto.create_key('repl-index'); {protect}"
    ))
    .unwrap();
    // (the subscriber's protection is set up once it has copied the publisher's catalog: its audit rows name key ids
    // by digest, under the catalog secret it gets from the publisher, issue 15)
    s.batch_execute(table).unwrap();
    // What logical decoding produces for the wire, peeked through a test_decoding slot.
    p.batch_execute(&format!(
        "SELECT pg_create_logical_replication_slot('ec_peek_{pub_db}', 'test_decoding');
         INSERT INTO ev (id, subject, stream, payload)
         SELECT i, 's' || (i % 5), 'st-' || i,
                jsonb_build_object('email', 'secret' || i || '@plain.example', 'card', jsonb_build_object('number', '4111-' || i), 'n', i)
         FROM generate_series(1, 50) i;
         CREATE PUBLICATION ec_pub FOR TABLE ev, event_crypto.keys, event_crypto.catalog_secrets;"
    ))
    .unwrap();
    let decoded = texts(
        &mut p,
        &format!("SELECT data FROM pg_logical_slot_peek_changes('ec_peek_{pub_db}', NULL, NULL)"),
    );
    assert!(
        decoded.iter().any(|l| l.contains("table public.ev: INSERT")),
        "{decoded:?}"
    );
    assert!(
        decoded
            .iter()
            .all(|l| !l.contains("@plain.example") && !l.contains("4111-")),
        "plaintext in the decoded stream"
    );
    p.batch_execute(&format!("SELECT pg_drop_replication_slot('ec_peek_{pub_db}')"))
        .unwrap();

    s.batch_execute(&format!(
        "CREATE SUBSCRIPTION ec_sub_{sub_db} CONNECTION '{} dbname={pub_db}' PUBLICATION ec_pub",
        dsn("A")
    ))
    .unwrap();
    wait_for("the initial copy", || {
        s.query_one("SELECT count(*) FROM ev", &[]).unwrap().get::<_, i64>(0) == 50
            && s.query_one("SELECT count(*) FROM event_crypto.catalog_secrets", &[])
                .unwrap()
                .get::<_, i64>(0)
                == 1
    });
    s.batch_execute(protect).unwrap();
    // streamed changes too
    p.batch_execute(
        "INSERT INTO ev (id, subject, stream, payload)
         SELECT i, 's' || (i % 5), 'st-' || i,
                jsonb_build_object('email', 'secret' || i || '@plain.example', 'card', jsonb_build_object('number', '4111-' || i), 'n', i)
         FROM generate_series(51, 80) i;",
    )
    .unwrap();
    wait_for("the streamed rows", || {
        s.query_one("SELECT count(*) FROM ev", &[]).unwrap().get::<_, i64>(0) == 80
    });
    let stored = "SELECT id::text || ' ' || payload::text || ' ' || coalesce(email_idx, '') FROM ev ORDER BY id";
    assert_eq!(
        texts(&mut s, stored),
        texts(&mut p, stored),
        "the subscriber stores the publisher's rows unchanged"
    );
    let decrypted = "SELECT event_crypto.decrypt_fields(payload, stream)::text FROM ev ORDER BY id";
    let plain = texts(&mut p, decrypted);
    assert!(plain[0].contains("secret1@plain.example"));
    assert_eq!(
        texts(&mut s, decrypted),
        plain,
        "same master key: the subscriber decrypts"
    );
    let idx =
        "SELECT count(*) FROM ev WHERE email_idx = event_crypto.blind_index('secret7@plain.example', 'repl-index')";
    assert_eq!(
        s.query_one(idx, &[]).unwrap().get::<_, i64>(0),
        1,
        "blind index lookups work on the subscriber"
    );

    // Forget s3 on the publisher; the subscriber session that has its key cached reads null once the shred arrives.
    let s3 = "SELECT count(*) FROM ev WHERE subject = 's3' AND event_crypto.decrypt_fields(payload, stream)->>'email' IS NOT NULL";
    assert_eq!(s.query_one(s3, &[]).unwrap().get::<_, i64>(0), 16);
    p.batch_execute("SELECT event_crypto.forget_subject('s3')").unwrap();
    wait_for("the shred on the subscriber", || {
        s.query_one(s3, &[]).unwrap().get::<_, i64>(0) == 0
    });
    let others = "SELECT count(*) FROM ev WHERE subject <> 's3' AND event_crypto.decrypt_fields(payload, stream)->>'email' IS NOT NULL";
    assert_eq!(s.query_one(others, &[]).unwrap().get::<_, i64>(0), 64);

    s.batch_execute(&format!(
        "ALTER SUBSCRIPTION ec_sub_{sub_db} DISABLE; ALTER SUBSCRIPTION ec_sub_{sub_db} SET (slot_name = NONE);
         DROP SUBSCRIPTION ec_sub_{sub_db};"
    ))
    .unwrap();
    p.batch_execute(&format!("SELECT pg_drop_replication_slot('ec_sub_{sub_db}')"))
        .unwrap();
    restart_f_with_key(&format!("{}/f/first.key", scratch()));
}
