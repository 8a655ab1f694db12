//! Re-encrypting a protected table after rotating every subject key, with the backend killed (kill -9) half way:
//! after crash recovery nothing is lost, the pass resumes where it stopped, finishes, and the old key versions can
//! then be retired. Runs on cluster F (its own server: the crash restarts every backend of that server).

use event_crypto_it::{connect, connect_when_up, f_dir, fresh_db, kill9_and_wait_for_reset, one, texts};
use std::time::{Duration, Instant};

const ROWS: i64 = 6000;
const DECRYPTED: &str = "SELECT event_crypto.decrypt_fields(payload, stream)::text FROM events ORDER BY id";

#[test]
fn reencrypt_table_survives_a_crash_and_resumes() {
    let db = fresh_db("F", "ec_reenc");
    let mut c = connect("F", &db);
    c.batch_execute(&format!(
        "CREATE TABLE events (id bigserial PRIMARY KEY, subject text, stream text, payload jsonb, email_idx text);
         -- the first 1,000 rows predate protection: plaintext, to be migrated by the pass
         INSERT INTO events (subject, stream, payload)
         SELECT 's' || (i % 50), 'stream-' || i, jsonb_build_object('email', 'u' || i || '@x.io', 'n', i)
         FROM generate_series(1, 1000) i;
         SELECT event_crypto.protect('events', 'payload', fields => ARRAY['email'], key_column => 'subject',
                                     context_column => 'stream');
         SELECT event_crypto.add_blind_index('events', 'payload', 'email', 'email_idx', 'index-key');
         INSERT INTO events (subject, stream, payload)
         SELECT 's' || (i % 50), 'stream-' || i, jsonb_build_object('email', 'u' || i || '@x.io', 'n', i)
         FROM generate_series(1001, {ROWS}) i;
         SELECT count(event_crypto.rotate_key('subject:s' || s)) FROM generate_series(0, 49) s;"
    ))
    .unwrap_or_else(|e| panic!("setup: {e}"));
    let before = texts(&mut c, DECRYPTED);
    assert_eq!(before.len() as i64, ROWS);
    assert!(before[0].contains("u1@x.io") && before[ROWS as usize - 1].contains(&format!("u{ROWS}@x.io")));
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM events WHERE event_crypto.needs_reencryption(payload, '{email}')"
        ),
        ROWS,
        "every row: 1,000 in plaintext, 5,000 under version 1"
    );

    // Slow each batch down so the pass can be killed half way.
    c.batch_execute(
        "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$;
         CREATE TRIGGER slow_down AFTER UPDATE ON events FOR EACH STATEMENT EXECUTE FUNCTION slow_down();",
    )
    .unwrap();
    let mut worker = connect("F", &db);
    let pid: i32 = worker.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let handle =
        std::thread::spawn(move || worker.batch_execute("CALL event_crypto.reencrypt_table('events', 'payload', 200)"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let progress = "SELECT coalesce((SELECT batches FROM event_crypto.reencrypt_progress), 0)";
    while one(&mut c, progress) < 5 {
        assert!(
            Instant::now() < deadline && !handle.is_finished(),
            "the pass made no progress or stopped early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9_and_wait_for_reset(&f_dir(), pid);
    assert!(handle.join().unwrap().is_err(), "the re-encrypting backend was killed");
    drop(c);

    let mut c = connect_when_up("F", &db);
    let batches = one(&mut c, "SELECT batches FROM event_crypto.reencrypt_progress");
    let rewritten = one(&mut c, "SELECT rows_rewritten FROM event_crypto.reencrypt_progress");
    let left = one(
        &mut c,
        "SELECT count(*) FROM events WHERE event_crypto.needs_reencryption(payload, '{email}')",
    );
    eprintln!("reencrypt_table killed after {batches} committed batches: {rewritten} rows rewritten, {left} left");
    assert!(batches >= 5 && left > 0, "killed half way");
    assert_eq!(
        rewritten + left,
        ROWS,
        "each row is either rewritten by a committed batch or still to do"
    );
    assert_eq!(
        texts(&mut c, DECRYPTED),
        before,
        "nothing lost: every row decrypts to what was inserted"
    );

    // Resume: the same CALL continues after the last committed batch.
    c.batch_execute("DROP TRIGGER slow_down ON events").unwrap();
    let r = c
        .simple_query("CALL event_crypto.reencrypt_table('events', 'payload', 500)")
        .unwrap();
    let row = r
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().to_string(), r.get(1).unwrap().to_string()))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(
        row.1.parse::<i64>().unwrap(),
        ROWS,
        "the pass rewrote every row once: {row:?}"
    );
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM events WHERE event_crypto.needs_reencryption(payload, '{email}')"
        ),
        0
    );
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM events WHERE event_crypto.uses_key_version(payload, 'subject:' || subject, 2)"
        ),
        ROWS
    );
    assert_eq!(
        one(&mut c, "SELECT count(email_idx) FROM events"),
        ROWS,
        "migrated rows got blind index values"
    );
    assert_eq!(texts(&mut c, DECRYPTED), before);

    // Every version 1 can now be retired: disabled first, destroyed by the maintenance run once
    // event_crypto.retire_wait has passed (made due here); the data still reads the same.
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM generate_series(0, 49) s \
             WHERE (event_crypto.retire_key_version('subject:s' || s, 1))->>'disabled' = 'true'"
        ),
        50
    );
    assert_eq!(texts(&mut c, DECRYPTED), before);
    c.batch_execute(
        "UPDATE event_crypto.keys SET destroy_after = now() WHERE key_id LIKE 'subject:s%' AND status = 'disabled'",
    )
    .unwrap();
    assert_eq!(
        one(
            &mut c,
            "SELECT (event_crypto.maintenance_action('retire')->>'destroyed')::bigint"
        ),
        50
    );
    assert_eq!(texts(&mut c, DECRYPTED), before);
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM event_crypto.key_info WHERE key_id LIKE 'subject:s%' AND version = 1 AND NOT has_key_material"),
        50
    );
    let ok: bool = c
        .query_one("SELECT ok FROM event_crypto.verify_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(ok);
}
