//! Crashes in the middle of writes (cluster F): a backend killed with SIGKILL during bulk protected inserts, and
//! immediate shutdowns of the whole server during key rotation and during shredding. After recovery: every row
//! whose commit was acknowledged is there and decrypts to what was inserted, no key is lost, every key id has
//! exactly one active version or is wholly shredded (never half), and the audit chain verifies.

use event_crypto_it::{connect, connect_when_up, f_dir, fresh_db, kill9_and_wait_for_reset, one, pg_bin};
use postgres::Client;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn pg_ctl(args: &[&str]) {
    let data = format!("{}/data", f_dir());
    let log = format!("{}/server.log", f_dir());
    let st = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &pg_bin("pg_ctl"), "-D", &data, "-l", &log, "-w"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "pg_ctl {args:?} failed");
}

fn immediate_restart() {
    pg_ctl(&["-m", "immediate", "stop"]);
    pg_ctl(&["start"]);
}

/// Every key id has exactly one active version, or all its versions are shredded; every live key unwraps.
fn keys_are_whole(c: &mut Client) {
    assert_eq!(
        one(
            c,
            "SELECT count(*) FROM (SELECT key_id FROM event_crypto.keys GROUP BY key_id
               HAVING NOT (count(*) FILTER (WHERE status = 'active') = 1
                           OR bool_and(status = 'shredded'))) bad"
        ),
        0,
        "a key id with no or several active versions, or half shredded"
    );
    // a key id shredded whole is kept under its digest only, never under its own name (issue 15: the shred and
    // the move to the tombstone are one transaction)
    assert_eq!(
        one(
            c,
            "SELECT count(*) FROM (SELECT key_id FROM event_crypto.keys GROUP BY key_id
               HAVING bool_and(status = 'shredded') AND left(key_id, 1) <> E'\\x1A') named"
        ),
        0,
        "a key id shredded whole still under its name"
    );
    let live = one(
        c,
        "SELECT count(DISTINCT key_id) FROM event_crypto.keys WHERE status = 'active'",
    );
    assert_eq!(
        one(
            c,
            "SELECT count(event_crypto.encrypt_value('1', key_id)) FROM
               (SELECT DISTINCT key_id FROM event_crypto.keys WHERE status = 'active') k"
        ),
        live
    );
    let ok: bool = c
        .query_one("SELECT ok FROM event_crypto.verify_audit_log()", &[])
        .unwrap()
        .get(0);
    assert!(ok, "the audit chain verifies after the crash");
}

/// How the server is brought down in the middle of the work.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL of one backend: the postmaster resets all of them and recovers.
    Kill9,
    /// `pg_ctl stop -m immediate`, then a start: crash recovery of the whole cluster.
    Immediate,
}

#[test]
fn crashes_during_protected_inserts_lose_only_uncommitted_rows() {
    for fault in [Fault::Kill9, Fault::Immediate] {
        crash_during_inserts(fault);
    }
}

fn crash_during_inserts(fault: Fault) {
    let db = fresh_db("F", "ec_crash_ins");
    let mut c = connect("F", &db);
    c.batch_execute(
        "CREATE TABLE ev (id bigserial PRIMARY KEY, writer int, n int, subject text, payload jsonb,
                          UNIQUE (writer, n));
         SELECT event_crypto.protect('ev', 'payload', fields => ARRAY['email'], key_column => 'subject');",
    )
    .unwrap();
    // Four writers commit one event at a time (new subjects among them, so keys are created on the way) and
    // remember what was acknowledged; a fifth runs one big INSERT ... SELECT. Then every backend is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicI64>> = (0..4).map(|_| Arc::new(AtomicI64::new(0))).collect();
    let mut pids = Vec::new();
    let mut handles = Vec::new();
    for (w, counter) in acked.iter().enumerate() {
        let mut wc = connect("F", &db);
        pids.push(wc.query_one("SELECT pg_backend_pid()", &[]).unwrap().get::<_, i32>(0));
        let (stop, counter) = (stop.clone(), counter.clone());
        handles.push(std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let subject = format!("s{}", n % 300);
                let r = wc.execute(
                    "INSERT INTO ev (writer, n, subject, payload) VALUES ($1::int, $2::int, $3::text, jsonb_build_object('email', $3::text || '-' || $2::int || '@x.io'))",
                    &[&(w as i32), &(n as i32), &subject],
                );
                if let Err(e) = r {
                    assert!(e.as_db_error().is_none() || n > 1, "writer {w}: {e}");
                    break;
                }
                counter.store(n, Ordering::SeqCst);
            }
        }));
    }
    let mut bulk = connect("F", &db);
    pids.push(bulk.query_one("SELECT pg_backend_pid()", &[]).unwrap().get::<_, i32>(0));
    let bulk_handle = std::thread::spawn(move || {
        bulk.batch_execute(
            "INSERT INTO ev (writer, n, subject, payload)
             SELECT 99, i, 'bulk' || (i % 500), jsonb_build_object('email', 'bulk' || i || '@x.io')
             FROM generate_series(1, 2000000) i",
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !bulk_handle.is_finished(),
        "the bulk insert is still running when the crash comes"
    );
    match fault {
        // the bulk backend: the postmaster then resets every backend
        Fault::Kill9 => kill9_and_wait_for_reset(&f_dir(), pids[4]),
        Fault::Immediate => immediate_restart(),
    }
    stop.store(true, Ordering::Relaxed);
    assert!(bulk_handle.join().unwrap().is_err());
    for h in handles {
        h.join().unwrap();
    }
    drop(c);

    let mut c = connect_when_up("F", &db);
    let mut total = 0;
    for (w, counter) in acked.iter().enumerate() {
        let n = counter.load(Ordering::SeqCst);
        assert!(n > 0, "writer {w} committed something");
        let present = one(
            &mut c,
            &format!("SELECT count(*) FROM ev WHERE writer = {w} AND n <= {n}"),
        );
        assert_eq!(present, n, "writer {w}: every acknowledged row survived");
        let wrong = one(
            &mut c,
            &format!(
                "SELECT count(*) FROM ev WHERE writer = {w} AND
                   event_crypto.decrypt_fields(payload)->>'email' IS DISTINCT FROM subject || '-' || n || '@x.io'"
            ),
        );
        assert_eq!(wrong, 0, "writer {w}: every row decrypts to what was inserted");
        total += n;
    }
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM ev WHERE writer = 99"),
        0,
        "the killed bulk insert left nothing"
    );
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM event_crypto.keys WHERE key_id LIKE 'subject:bulk%'"
        ),
        0,
        "keys created by the killed transaction are gone with it"
    );
    keys_are_whole(&mut c);
    eprintln!("{fault:?} during inserts: {total} acknowledged single-row commits survived and decrypt");
}

#[test]
fn crashes_during_rotation_and_shredding_leave_keys_whole() {
    let db = fresh_db("F", "ec_crash_keys");
    let mut c = connect("F", &db);
    c.batch_execute(
        "CREATE TABLE ev (id bigserial PRIMARY KEY, subject text, payload jsonb);
         SELECT event_crypto.protect('ev', 'payload', fields => ARRAY['email'], key_column => 'subject');
         INSERT INTO ev (subject, payload) SELECT 's' || i, jsonb_build_object('email', 's' || i || '@x.io')
         FROM generate_series(1, 800) i;",
    )
    .unwrap();
    let decrypted = "SELECT event_crypto.decrypt_fields(payload)::text FROM ev ORDER BY id";
    let before: Vec<String> = c.query(decrypted, &[]).unwrap().iter().map(|r| r.get(0)).collect();
    drop(c);
    // Four runs over disjoint subjects (200 each): rotation and shredding, each hit by kill -9 and by an immediate
    // shutdown. One session rotates (or forgets) subject after subject, each in its own transaction, and records
    // what was acknowledged.
    let mut shredded_total = 0;
    for (run, (phase, fault)) in [
        ("rotation", Fault::Kill9),
        ("rotation", Fault::Immediate),
        ("shredding", Fault::Kill9),
        ("shredding", Fault::Immediate),
    ]
    .into_iter()
    .enumerate()
    {
        let first = run as i64 * 200 + 1;
        let done = Arc::new(AtomicI64::new(0));
        let mut w = connect("F", &db);
        let pid: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let done2 = done.clone();
        let handle = std::thread::spawn(move || {
            for i in first..first + 200 {
                let sql = if phase == "rotation" {
                    format!("SELECT event_crypto.rotate_key('subject:s{i}')")
                } else {
                    format!("SELECT event_crypto.forget_subject('s{i}')")
                };
                if w.batch_execute(&sql).is_err() {
                    return;
                }
                done2.fetch_add(1, Ordering::SeqCst);
            }
        });
        while done.load(Ordering::SeqCst) < 30 {
            std::thread::sleep(Duration::from_millis(5));
        }
        match fault {
            Fault::Kill9 => kill9_and_wait_for_reset(&f_dir(), pid),
            Fault::Immediate => immediate_restart(),
        }
        handle.join().unwrap();
        let acked = done.load(Ordering::SeqCst);
        assert!(
            acked < 200,
            "{phase}/{fault:?}: the crash came in the middle ({acked} done)"
        );
        let mut c = connect_when_up("F", &db);
        keys_are_whole(&mut c);
        let range = format!("substr(key_id, 10)::int BETWEEN {first} AND {}", first + 199);
        if phase == "rotation" {
            let rotated = one(
                &mut c,
                &format!("SELECT count(*) FROM event_crypto.keys WHERE key_id LIKE 'subject:s%' AND {range} AND version = 2 AND status = 'active'"),
            );
            assert!(
                rotated >= acked && rotated <= acked + 1,
                "{phase}/{fault:?}: {rotated} rotated, {acked} acknowledged"
            );
        } else {
            let shredded = one(
                &mut c,
                // (kept under the key ids' digests: issue 15)
                &format!(
                    "SELECT count(DISTINCT key_id) FROM event_crypto.keys WHERE status = 'shredded' AND key_id IN
                            (SELECT event_crypto.key_id_digest('subject:s' || i) FROM generate_series({first}, {}) i)",
                    first + 199
                ),
            );
            assert!(
                shredded >= acked && shredded <= acked + 1,
                "{phase}/{fault:?}: {shredded} shredded, {acked} acknowledged"
            );
            shredded_total += shredded;
        }
        let readable = one(
            &mut c,
            "SELECT count(*) FROM ev WHERE event_crypto.decrypt_fields(payload)->>'email' IS NOT NULL",
        );
        assert_eq!(
            readable,
            800 - shredded_total,
            "forgotten subjects read as null, every other row decrypts"
        );
        if shredded_total == 0 {
            let after: Vec<String> = c.query(decrypted, &[]).unwrap().iter().map(|r| r.get(0)).collect();
            assert_eq!(after, before, "every row still decrypts through the retired versions");
        }
        eprintln!("{fault:?} during {phase}: {acked} acknowledged, keys whole, audit chain intact");
    }
}
