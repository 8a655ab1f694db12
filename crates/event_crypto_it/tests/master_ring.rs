//! Master key rotation on a real server (cluster F, restarted with different rings): add a new master key, rewrap
//! every data key (surviving a kill -9 of the rewrapping backend half way), remove the old master key, and decrypt
//! everything; a dump taken before the rewrap no longer opens without the old key. Also the audit log's chain over
//! committed transactions.

use event_crypto_it::{
    connect, connect_when_up, f_dir, fresh_db, kill9_and_wait_for_reset, one, pg_bin, pg_dump, pg_restore, sql_error,
    texts,
};
use postgres::Client;
use std::time::{Duration, Instant};

fn read_key(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", f_dir()))
        .unwrap()
        .trim()
        .to_string()
}

/// Writes the ring file of cluster F (the first key active) and restarts the server so it reads it.
fn set_ring_and_restart(keys: &[&str]) {
    let path = format!("{}/master.key", f_dir());
    let mut text = String::from("# test ring: the first key is active\n");
    for k in keys {
        text.push_str(k);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let st = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &pg_bin("pg_ctl")])
        .args(["-D", &format!("{}/data", f_dir()), "-w", "-m", "fast", "restart"])
        .args(["-l", &format!("{}/server.log", f_dir())])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "pg_ctl restart failed");
}

/// (fingerprint, in_ring, active, live key versions, removable) per master key.
fn status(c: &mut Client) -> Vec<(String, bool, bool, i64, bool)> {
    c.query(
        "SELECT master_key_id, in_ring, active, live_key_versions, removable FROM event_crypto.master_key_status()",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

fn live_under(c: &mut Client, master: &str) -> i64 {
    status(c).into_iter().find(|s| s.0 == master).map_or(0, |s| s.3)
}

const DECRYPTED: &str = "SELECT event_crypto.decrypt_fields(payload, stream)::text FROM events ORDER BY id";

/// Unwraps every live key: encrypts with each key id's active version, computes a blind index with each key id,
/// and decrypts the values stored under the spare keys' first versions (100 of them retired by a rotation).
/// Returns how many of these worked (an unwrappable key raises instead).
fn unwrap_every_key(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT (SELECT count(event_crypto.blind_index('probe', key_id)) + count(event_crypto.encrypt_value('1', key_id)) \
                 FROM (SELECT DISTINCT key_id FROM event_crypto.key_info WHERE status <> 'shredded') k) \
              + (SELECT count(*) FROM spare_values WHERE event_crypto.decrypt_value(e) = to_jsonb(i))",
        &[],
    )
    .unwrap()
    .get::<_, i64>(0)
}

/// CALLs the rewrap procedure (simple protocol, so its batches can commit); returns its three counts.
fn call_rewrap(c: &mut Client, batch: i32) -> (i64, i64, i64) {
    let msgs = c
        .simple_query(&format!("CALL event_crypto.rewrap_keys({batch})"))
        .unwrap();
    for m in msgs {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            let n = |i: usize| r.get(i).unwrap().parse::<i64>().unwrap();
            return (n(0), n(1), n(2));
        }
    }
    panic!("CALL returned no row");
}

#[test]
fn rewrap_survives_a_crash_then_the_old_master_key_can_be_removed() {
    let old = read_key("first.key");
    let new = read_key("new.key");
    set_ring_and_restart(&[&old]);
    let db = fresh_db("F", "ec_ring");
    let mut c = connect("F", &db);
    c.batch_execute(
        "CREATE TABLE events (id serial PRIMARY KEY, subject text, stream text, payload jsonb);
         SELECT event_crypto.protect('events', 'payload', fields => ARRAY['email', 'address.street'],
                                     key_column => 'subject', context_column => 'stream');
         INSERT INTO events (subject, stream, payload)
         SELECT 's' || (i % 300), 'stream-' || i,
                jsonb_build_object('email', 'user' || i || '@x.io', 'address', jsonb_build_object('street', i || ' Main St'), 'n', i)
         FROM generate_series(1, 1500) i;
         SELECT count(event_crypto.create_key('spare:' || i, CASE WHEN i % 2 = 0 THEN 'chacha20-poly1305' ELSE 'aes-256-gcm' END))
         FROM generate_series(1, 700) i;
         CREATE TABLE spare_values AS SELECT i, event_crypto.encrypt_value(to_jsonb(i), 'spare:' || i) AS e
         FROM generate_series(1, 700) i;
         SELECT count(event_crypto.rotate_key('spare:' || i)) FROM generate_series(1, 100) i;
         SELECT event_crypto.forget_subject('s7');",
    )
    .unwrap();
    let before = texts(&mut c, DECRYPTED);
    assert!(before[0].contains("user1@x.io"), "{}", before[0]);
    // s7's key id is kept under its keyed digest (issue 15); the catalog secret behind it is wrapped by the old key
    let s7_digest = "SELECT event_crypto.key_id_digest('subject:s7')";
    let digest_before: String = c.query_one(s7_digest, &[]).unwrap().get(0);
    let old_id: String = c.query_one("SELECT event_crypto.master_key_id()", &[]).unwrap().get(0);
    let live: i64 = c
        .query_one("SELECT count(*) FROM event_crypto.key_info WHERE has_key_material", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        live,
        299 + 700 + 100,
        "299 live subjects, 700 spare keys, 100 rotations"
    );
    let dump_before_rewrap = pg_dump("F", &db);
    drop(c);

    // 1. Add the new master key, first (active).
    set_ring_and_restart(&[&new, &old]);
    let mut c = connect("F", &db);
    let new_id: String = c.query_one("SELECT event_crypto.master_key_id()", &[]).unwrap().get(0);
    assert_ne!(new_id, old_id);
    assert_eq!(
        status(&mut c),
        vec![
            (new_id.clone(), true, true, 0, false),
            (old_id.clone(), true, false, live, false)
        ]
    );
    assert_eq!(
        texts(&mut c, DECRYPTED),
        before,
        "everything still decrypts through the old ring member"
    );
    // A key created now is wrapped by the new master key.
    c.batch_execute("SELECT event_crypto.create_key('after-rotation')")
        .unwrap();
    assert_eq!(live_under(&mut c, &new_id), 1);

    // 2. Rewrap in small batches, slowed by a test trigger so it can be killed half way.
    c.batch_execute(
        "CREATE FUNCTION public.slow_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$;
         CREATE TRIGGER slow_down AFTER UPDATE ON event_crypto.keys FOR EACH STATEMENT EXECUTE FUNCTION public.slow_down();",
    )
    .unwrap();
    let mut worker = connect("F", &db);
    let pid: i32 = worker.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let handle = std::thread::spawn(move || worker.batch_execute("CALL event_crypto.rewrap_keys(25)"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while live_under(&mut c, &new_id) < 1 + 200 {
        assert!(
            Instant::now() < deadline && !handle.is_finished(),
            "the rewrap made no progress or stopped early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9_and_wait_for_reset(&f_dir(), pid);
    assert!(handle.join().unwrap().is_err(), "the rewrapping backend was killed");
    drop(c);

    // 3. After crash recovery: some keys moved, some not, every one unwraps, nothing was lost.
    let mut c = connect_when_up("F", &db);
    let moved = live_under(&mut c, &new_id) - 1;
    let left = live_under(&mut c, &old_id);
    assert!(moved >= 200 && left > 0, "killed half way: {moved} moved, {left} left");
    eprintln!("rewrap killed half way: {moved} key versions moved, {left} left");
    assert_eq!(
        moved + left,
        live,
        "every live key version is wrapped by exactly one ring member"
    );
    assert_eq!(unwrap_every_key(&mut c), 2 * (299 + 700 + 1) + 700);
    assert_eq!(texts(&mut c, DECRYPTED), before);

    // 4. Resume to the end (the catalog's digest secret moved with the first committed batch).
    c.batch_execute("DROP TRIGGER slow_down ON event_crypto.keys").unwrap();
    let secret_moved: bool = c
        .query_one(
            "SELECT master_key_id = event_crypto.master_key_id() FROM event_crypto.catalog_secrets",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(secret_moved, "the digest secret is rewrapped with the first batch");
    assert_eq!(call_rewrap(&mut c, 100), (left, 0, 0));
    assert_eq!(
        call_rewrap(&mut c, 100),
        (0, 0, 0),
        "nothing left: a second CALL is harmless"
    );
    assert_eq!(
        status(&mut c),
        vec![
            (new_id.clone(), true, true, live + 1, false),
            (old_id.clone(), true, false, 0, true)
        ]
    );
    // Each committed batch was audited; the chain verifies.
    let audited: i64 = c
        .query_one(
            "SELECT coalesce(sum((details->>'rewrapped')::bigint), 0)::bigint FROM event_crypto.audit_log WHERE action = 'rewrap_keys'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        audited, live,
        "the rewrap_keys rows add up to every key moved (the killed batch rolled back)"
    );
    let ok: bool = c
        .query_one("SELECT ok FROM event_crypto.verify_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(ok);
    drop(c);

    // 5. Remove the old master key: everything decrypts, shredded subjects stay shredded.
    set_ring_and_restart(&[&new]);
    let mut c = connect("F", &db);
    assert_eq!(status(&mut c), vec![(new_id.clone(), true, true, live + 1, false)]);
    let after = texts(&mut c, DECRYPTED);
    assert_eq!(after, before);
    assert!(
        after.iter().any(|t| t.contains("\"email\": null")),
        "s7 stays forgotten"
    );
    assert_eq!(unwrap_every_key(&mut c), 2 * (299 + 700 + 1) + 700);
    // the digests did not change with the master key: s7 is still found by its digest, and refused
    let digest_after: String = c.query_one(s7_digest, &[]).unwrap().get(0);
    assert_eq!(digest_after, digest_before, "the same catalog secret, only rewrapped");
    let forgotten: bool = c
        .query_one("SELECT event_crypto.was_forgotten('s7')", &[])
        .unwrap()
        .get(0);
    assert!(forgotten);
    let e = c
        .batch_execute(
            "INSERT INTO events (subject, stream, payload) VALUES ('s7', 'x', '{\"email\": \"again@x.io\"}')",
        )
        .unwrap_err();
    assert_eq!(sql_error(&e).0, "23514");

    // 6. The dump taken before the rewrap needs the destroyed master key: it no longer opens.
    let restored = format!("ec_ring_old_{}", std::process::id());
    pg_restore("F", &dump_before_rewrap, &restored);
    let mut r = connect("F", &restored);
    let e = r.query(DECRYPTED, &[]).unwrap_err();
    let (code, msg, detail, _) = sql_error(&e);
    assert_eq!(code, "28000", "{msg}");
    let detail = detail.unwrap_or_default();
    assert!(
        detail.contains(&old_id) && detail.contains(&format!("{new_id} (active)")),
        "{detail}"
    );
    assert_eq!(
        status(&mut r),
        vec![
            (new_id.clone(), true, true, 0, false),
            (old_id.clone(), false, false, live, false)
        ]
    );
    // Rewrapping cannot help without the old key: those keys are reported, never touched.
    let b = r
        .query_one("SELECT * FROM event_crypto.rewrap_keys_batch()", &[])
        .unwrap();
    assert_eq!(
        (b.get::<_, i64>(0), b.get::<_, i64>(1), b.get::<_, i64>(2)),
        (0, 0, live)
    );
    set_ring_and_restart(&[&old]);
}

/// Issue 12: a damaged wrapped key (it no longer unwraps) must not make every `CALL rewrap_keys` fail, nor be
/// tried forever: the rewrap passes over it, moves every other key, reports it (the `damaged` column, a WARNING
/// naming it), keeps counting it in `remaining`, and ends.
#[test]
fn a_damaged_wrapped_key_is_passed_over_and_reported_by_rewrap() {
    let old = read_key("first.key");
    let new = read_key("new.key");
    set_ring_and_restart(&[&old]);
    let db = fresh_db("F", "ec_damaged");
    let mut c = connect("F", &db);
    c.batch_execute(
        "SELECT count(event_crypto.create_key('rw:' || lpad(i::text, 3, '0'))) FROM generate_series(1, 30) i;
         CREATE TABLE probe AS SELECT i, event_crypto.encrypt_value(to_jsonb(i), 'rw:' || lpad(i::text, 3, '0')) AS e
         FROM generate_series(1, 30) i;
         -- the first key's data key and the 15th key's blind-index key damaged (one bit), the 30th's cut short
         UPDATE event_crypto.keys SET wrapped_key = set_byte(wrapped_key, 20, get_byte(wrapped_key, 20) # 1) WHERE key_id = 'rw:001';
         UPDATE event_crypto.keys SET wrapped_index_key = set_byte(wrapped_index_key, 40, get_byte(wrapped_index_key, 40) # 1) WHERE key_id = 'rw:015';
         UPDATE event_crypto.keys SET wrapped_key = substr(wrapped_key, 1, 30) WHERE key_id = 'rw:030';",
    )
    .unwrap();
    drop(c);
    set_ring_and_restart(&[&new, &old]);
    let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = warnings.clone();
    let mut c = format!("{} dbname={db}", event_crypto_it::dsn("F"))
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |n| {
            seen.lock().unwrap().push(format!(
                "{}: {} {}",
                n.code().code(),
                n.message(),
                n.detail().unwrap_or("")
            ))
        })
        .connect(postgres::NoTls)
        .unwrap();
    let new_id: String = c.query_one("SELECT event_crypto.master_key_id()", &[]).unwrap().get(0);
    // batches of 1: the damaged first key would be the whole of every batch if it were not passed over
    let started = Instant::now();
    assert_eq!(
        call_rewrap4(&mut c, 1),
        (27, 3, 0, 3),
        "27 rewrapped; the 3 damaged ones remain, reported"
    );
    let took = started.elapsed();
    let said = warnings.lock().unwrap().clone();
    assert_eq!(said.len(), 1, "one warning for the whole CALL: {said:?}");
    assert!(
        said[0].starts_with("XX001: 3 key versions could not be rewrapped")
            && ["\"rw:001\" version 1", "\"rw:015\" version 1", "\"rw:030\" version 1"]
                .iter()
                .all(|k| said[0].contains(k)),
        "{said:?}"
    );
    assert_eq!(live_under(&mut c, &new_id), 27);
    // Every other key moved and works; the damaged ones are where they were.
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM probe WHERE i NOT IN (1, 15, 30) AND event_crypto.decrypt_value(e) = to_jsonb(i)"
        ),
        27
    );
    // Called again: nothing to move, the damaged ones are not retried forever, and `remaining` is not 0.
    assert_eq!(call_rewrap4(&mut c, 1000), (0, 3, 0, 3));
    let b = c
        .query_one("SELECT * FROM event_crypto.rewrap_keys_batch(2)", &[])
        .unwrap();
    assert_eq!((b.get::<_, i64>(0), b.get::<_, i64>(1), b.get::<_, i64>(3)), (0, 3, 3));
    // The old master key still holds the damaged rows: it is not reported removable.
    assert!(status(&mut c).iter().all(|s| !s.4));
    let audited: i64 = one(
        &mut c,
        "SELECT coalesce(sum((details->>'rewrapped')::bigint), 0)::bigint FROM event_crypto.audit_log WHERE action = 'rewrap_keys'",
    );
    assert_eq!(audited, 27);
    eprintln!("rewrap of 30 keys, 3 damaged, in batches of 1: {took:?}");
    drop(c);
    set_ring_and_restart(&[&old]);
}

/// CALLs the rewrap procedure; returns its four counts (rewrapped, remaining, unknown_master, damaged).
fn call_rewrap4(c: &mut Client, batch: i32) -> (i64, i64, i64, i64) {
    for m in c
        .simple_query(&format!("CALL event_crypto.rewrap_keys({batch})"))
        .unwrap()
    {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            let n = |i: usize| r.get(i).unwrap().parse::<i64>().unwrap();
            return (n(0), n(1), n(2), n(3));
        }
    }
    panic!("CALL returned no row");
}

#[test]
fn a_bad_ring_refuses_to_load_without_echoing_keys() {
    let old = read_key("first.key");
    // The same key twice.
    set_ring_and_restart(&[&old, &old.to_uppercase()]);
    let db = fresh_db("F", "ec_badring");
    let mut c = connect("F", &db);
    let e = c.query_one("SELECT event_crypto.master_key_id()", &[]).unwrap_err();
    let (code, msg, detail, _) = sql_error(&e);
    let detail = detail.unwrap_or_default();
    assert_eq!(code, "F0000", "{msg}");
    assert!(detail.contains("line 3") && detail.contains("twice"), "{detail}");
    assert!(
        !format!("{msg}{detail}").to_lowercase().contains(&old[..16]),
        "no key text in messages"
    );
    let log = std::fs::read_to_string(format!("{}/server.log", f_dir())).unwrap();
    assert!(
        !log.to_lowercase().contains(&old[..16]),
        "no key text in the server log"
    );
    set_ring_and_restart(&[&old]);
}

#[test]
fn the_audit_chain_holds_across_concurrent_committers_and_catches_unsealed_rows() {
    let db = fresh_db("A", "ec_audit");
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut c = connect("A", &db);
                for i in 0..20 {
                    let mut tx = c.transaction().unwrap();
                    tx.execute("SELECT event_crypto.create_key($1)", &[&format!("k{t}-{i}")])
                        .unwrap();
                    tx.execute("SELECT event_crypto.rotate_key($1)", &[&format!("k{t}-{i}")])
                        .unwrap();
                    if i % 5 == 4 {
                        tx.rollback().unwrap(); // rolled back: no audit rows, no gap in the chain
                    } else {
                        tx.commit().unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = connect("A", &db);
    let r = c
        .query_one(
            "SELECT ok, rows_checked, head_seq, problem FROM event_crypto.verify_audit_log()",
            &[],
        )
        .unwrap();
    let (ok, rows, head): (bool, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert!(ok, "{:?}", r.get::<_, Option<String>>(3));
    assert_eq!(rows, 6 * 16 * 2, "create + rotate of every committed transaction");
    assert_eq!(head, rows);
    // A row written with triggers disabled (superuser, replica role) is caught once committed.
    c.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO event_crypto.audit_log (actor, session_actor, action) VALUES ('x', 'x', 'forged');
         RESET session_replication_role;",
    )
    .unwrap();
    let r = c
        .query_one("SELECT ok, problem FROM event_crypto.verify_audit_log()", &[])
        .unwrap();
    assert!(!r.get::<_, bool>(0));
    assert!(r.get::<_, String>(1).contains("never sealed"));
}
