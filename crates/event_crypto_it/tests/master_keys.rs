//! Master key handling across real servers: dump/restore with the same and another master key, and servers whose
//! key file is unsafe or missing.

use event_crypto_it::{connect, fresh_db, pg_dump, pg_restore, sql_error, texts};

#[test]
fn dump_and_restore_decrypts_identically_with_the_same_master_key_and_fails_clearly_with_another() {
    let src = fresh_db("A", "ec_dump_src");
    let mut c = connect("A", &src);
    c.batch_execute(
        "SELECT event_crypto.create_key('subject:alice');
         SELECT event_crypto.create_key('subject:bob', 'chacha20-poly1305');
         SELECT event_crypto.rotate_key('subject:bob');
         SELECT event_crypto.create_key('subject:carol');
         CREATE TABLE events (id serial PRIMARY KEY, subject text, payload jsonb, email_idx text);
         INSERT INTO events (subject, payload, email_idx)
         SELECT s, event_crypto.encrypt_fields(jsonb_build_object('email', s || '@x.io', 'amount', 12.50, 'tags', jsonb_build_array(s, 1, null)),
                                            '{email,tags}', 'subject:' || s, 'stream-' || s),
                event_crypto.blind_index(s || '@x.io', 'subject:' || s)
         FROM unnest(ARRAY['alice', 'bob', 'carol']) AS s;
         SELECT event_crypto.shred_key('subject:carol');",
    )
    .unwrap();
    let stored_before = texts(&mut c, "SELECT payload::text FROM events ORDER BY id");

    let dump = pg_dump("A", &src);
    // The dump holds ciphertext and wrapped keys only.
    let bytes = std::fs::read(&dump).unwrap();
    let hay = String::from_utf8_lossy(&bytes);
    for secret in ["alice@x.io", "bob@x.io", "carol@x.io"] {
        assert!(!hay.contains(secret), "{secret} appears in the dump");
    }

    for cluster in ["A", "B"] {
        let dst = format!("ec_dump_dst_{}_{}", cluster.to_lowercase(), std::process::id());
        pg_restore(cluster, &dump, &dst);
        let mut r = connect(cluster, &dst);
        let stored = texts(&mut r, "SELECT payload::text FROM events ORDER BY id");
        assert_eq!(stored, stored_before, "restore must not re-encrypt or alter envelopes");
        // The audit log arrives with its chain and head, sealed as it was (not re-sealed), and verifies.
        let q_audit =
            "SELECT action || ':' || seq || ':' || encode(row_hash, 'hex') FROM event_crypto.audit_log ORDER BY seq";
        assert_eq!(texts(&mut r, q_audit), texts(&mut c, q_audit));
        let v = r
            .query_one("SELECT ok, rows_checked FROM event_crypto.verify_audit_log()", &[])
            .unwrap();
        assert!(v.get::<_, bool>(0));
        assert_eq!(v.get::<_, i64>(1), 5, "create, create, rotate, create, shred");
        let q = "SELECT event_crypto.decrypt_fields(payload, 'stream-' || subject)::text FROM events ORDER BY id";
        if cluster == "A" {
            let original = texts(&mut c, q);
            let restored = texts(&mut r, q);
            assert_eq!(restored, original, "same master key: identical plaintext after restore");
            assert!(restored[0].contains("alice@x.io") && restored[1].contains("bob@x.io"));
            assert!(
                restored[2].contains("\"email\": null"),
                "carol stays shredded after restore: {}",
                restored[2]
            );
            let idx = texts(&mut r, "SELECT event_crypto.blind_index('alice@x.io', 'subject:alice')");
            let orig_idx: String = c
                .query_one("SELECT email_idx FROM events WHERE id = 1", &[])
                .unwrap()
                .get(0);
            assert_eq!(idx[0], orig_idx, "blind index values survive a restore");
        } else {
            let e = r.query(q, &[]).unwrap_err();
            let (code, msg, detail, hint) = sql_error(&e);
            assert_eq!(code, "28000", "{msg}");
            assert!(msg.contains("master key mismatch"), "{msg}");
            assert!(detail.unwrap_or_default().contains("wrapped by master key"));
            assert!(hint.unwrap_or_default().contains("event_crypto.master_key_file"));
            let e = r
                .query_one("SELECT event_crypto.encrypt_value('1', 'subject:alice')", &[])
                .unwrap_err();
            assert_eq!(sql_error(&e).0, "28000");
        }
    }
}

#[test]
fn unsafe_or_missing_master_keys_give_clear_errors_not_crashes() {
    for (cluster, code, needle) in [
        ("C", "F0000", "accessible by group or others"),
        ("D", "F0000", "inside the data directory"),
        ("E", "F0000", "no event_crypto master key is configured"),
    ] {
        let db = fresh_db(cluster, "ec_badkey");
        let mut c = connect(cluster, &db);
        for q in [
            "SELECT event_crypto.create_key('k')",
            "SELECT event_crypto.master_key_id()",
            "SELECT event_crypto.decrypt_fields('{\"a\":\"$ec1$AQAKZnJvemVuLWtleQAAAAcBAQEBAQEBAQEBAQEPyPZ_uj3u7_E_eerlbwW1bzF98bCu3XQ\"}')",
        ] {
            let e = c.query_one(q, &[]).unwrap_err();
            let (got, msg, detail, hint) = sql_error(&e);
            let all = format!("{msg} {}", detail.clone().unwrap_or_default());
            assert_eq!(got, code, "{cluster}: {q}: {all}");
            assert!(all.contains(needle), "{cluster}: {all}");
            assert!(hint.unwrap_or_default().contains("event_crypto.master_key_file"), "the hint names the settings");
        }
        // The backend survived: the same connection still answers.
        let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
    }
}
