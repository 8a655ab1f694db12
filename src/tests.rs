//! In-process tests of internals (the SQL API is covered by pg_regress, several sessions by the integration tests).
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::error::sqlstate;
    use crate::keys;
    use event_crypto_core::ErrorKind;
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode;

    #[pg_test]
    fn master_key_is_loaded_from_the_command() {
        let id = Spi::get_one::<String>("SELECT event_crypto.master_key_id()")
            .unwrap()
            .unwrap();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[pg_test]
    fn the_cache_serves_repeat_lookups_and_is_dropped_when_the_catalog_changes() {
        Spi::run("SELECT event_crypto.create_key('cache-1'), event_crypto.create_key('cache-2')").unwrap();
        keys::invalidate_keys();
        let a = keys::lookup("cache-1").unwrap();
        let b = keys::lookup("cache-1").unwrap();
        assert!(
            std::rc::Rc::ptr_eq(&a, &b),
            "the second lookup is served from the cache"
        );
        keys::lookup("cache-2").unwrap();
        assert_eq!(keys::cached_count(), 2);
        // Any change to the catalog, even one made by hand, fires the statement trigger.
        Spi::run("UPDATE event_crypto.keys SET created_by = created_by WHERE key_id = 'cache-2'").unwrap();
        assert_eq!(keys::cached_count(), 0);
        keys::lookup("cache-1").unwrap();
        Spi::run("SELECT event_crypto.shred_key('cache-1')").unwrap();
        assert_eq!(keys::cached_count(), 0);
        assert!(keys::lookup("cache-1").unwrap().shredded);
    }

    /// Envelopes of format 2 name their key by handle: the cache finds keys by handle too, so a scan costs one
    /// catalog query per key (its handle's key id, for the row binding) and one load, and none in steady state,
    /// as for format 1.
    #[pg_test]
    fn format_2_envelopes_are_served_from_the_cache_by_handle() {
        Spi::run("CREATE TABLE hc (id serial, subject text, payload jsonb)").unwrap();
        Spi::run(
            "SELECT event_crypto.protect('hc', 'payload', fields => ARRAY['email', 'card'], key_column => 'subject', \
                                         key_prefix => 'hc:')",
        )
        .unwrap();
        Spi::run(
            "INSERT INTO hc (subject, payload) SELECT 's' || (i % 5), jsonb_build_object('email', i || '@x.io', 'card', '4111') \
             FROM generate_series(1, 200) i",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM hc WHERE payload->>'email' LIKE '$ec2$%'").unwrap(),
            Some(200)
        );
        let reads = |sql: &str| {
            let before = keys::catalog_reads();
            assert_eq!(Spi::get_one::<i64>(sql).unwrap(), Some(200), "{sql}");
            keys::catalog_reads() - before
        };
        let view = "SELECT count(*) FROM hc_decrypted WHERE payload->>'email' LIKE '%@x.io'";
        let unbound = "SELECT count(*) FROM hc WHERE event_crypto.decrypt_fields(payload)->>'card' = '4111'";
        let stale = "SELECT count(*) FROM hc WHERE NOT event_crypto.needs_reencryption(payload)";
        let usage = "SELECT count(*) FROM hc WHERE event_crypto.uses_key_version(payload, 'hc:' || subject, 1)";
        keys::invalidate_keys();
        let first = reads(view);
        assert!(first <= 10, "{first} catalog queries for 5 keys");
        for sql in [view, unbound, stale, usage] {
            assert_eq!(reads(sql), 0, "steady state: {sql}");
        }
        keys::invalidate_keys();
        assert!(reads(unbound) <= 5, "one load per key, by handle");
        keys::invalidate_keys();
        assert!(reads(usage) <= 5, "a handle per key id, no key unwrapped");
        // the cache is keyed by handle as much as by key id: bounded alike
        assert!(keys::cached_count() <= 5);
    }

    #[pg_test]
    fn the_key_cache_is_bounded() {
        // 120,000 keys made 92 MB of cache in one session (issue 11, item 15): the cache keeps at most
        // event_crypto.key_cache_size key ids, dropping the one cached longest ago
        Spi::run("SET event_crypto.key_cache_size = 16").unwrap();
        Spi::run("SELECT event_crypto.create_key('bound-' || i) FROM generate_series(1, 100) i").unwrap();
        keys::invalidate_keys();
        for i in 1..=100 {
            keys::lookup(&format!("bound-{i}")).unwrap();
            assert!(keys::cached_count() <= 16, "{} cached", keys::cached_count());
        }
        assert_eq!(keys::cached_count(), 16);
        let a = keys::lookup("bound-100").unwrap();
        let b = keys::lookup("bound-100").unwrap();
        assert!(
            std::rc::Rc::ptr_eq(&a, &b),
            "the newest entries are still served from the cache"
        );
        Spi::run("RESET event_crypto.key_cache_size").unwrap();
    }

    #[pg_test]
    fn a_failing_statement_in_a_subtransaction_leaves_the_transaction_usable() {
        Spi::run("CREATE TABLE subx (n int)").unwrap();
        let r = crate::access::in_subtransaction(|| {
            Spi::run("INSERT INTO subx VALUES (1)").unwrap();
            Spi::run("SELECT 1 / 0").unwrap();
        });
        let caught = r.expect_err("the division raised");
        assert_eq!(caught.sqlstate, "22012");
        // the subtransaction's insert is gone, the transaction goes on
        Spi::run("INSERT INTO subx VALUES (2)").unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT sum(n) FROM subx").unwrap(), Some(2));
    }

    #[pg_test]
    fn unknown_keys_are_not_cached() {
        keys::invalidate_keys();
        let e = keys::lookup("never-created").err().expect("unknown");
        assert_eq!(e.kind(), ErrorKind::UnknownKey);
        assert_eq!(keys::cached_count(), 0);
    }

    #[pg_test]
    fn a_digest_secret_made_by_a_rolled_back_subtransaction_is_forgotten_with_it() {
        // (each test runs in a transaction that rolls back: the catalog has no digest secret yet)
        Spi::run("DELETE FROM event_crypto.catalog_secrets").unwrap();
        let made = crate::access::in_subtransaction(|| {
            let k = crate::tombstones::digest_key_for_write()
                .unwrap()
                .expect("the table exists");
            let d = k.digest("subject:alice");
            crate::error::raise(event_crypto_core::Error::invalid_argument(d))
        });
        let Err(lost) = made else {
            panic!("the subtransaction rolled back")
        };
        let lost = lost.message;
        assert_eq!(
            crate::tombstones::tombstone_id("subject:alice").unwrap(),
            None,
            "not cached past the rollback"
        );
        let now = crate::tombstones::digest_key_for_write()
            .unwrap()
            .unwrap()
            .digest("subject:alice");
        assert_ne!(now, lost, "a new secret, not the rolled-back one");
        assert_eq!(
            crate::tombstones::tombstone_id("subject:alice").unwrap(),
            Some(now.clone())
        );
        // a shred moves the key id's rows under that digest, and a lookup still finds them
        Spi::run("SELECT event_crypto.create_key('subject:alice'), event_crypto.shred_key('subject:alice')").unwrap();
        let stored = Spi::get_one::<String>("SELECT string_agg(DISTINCT key_id, ',') FROM event_crypto.keys WHERE key_id LIKE '%alice%' OR key_id = event_crypto.key_id_digest('subject:alice')")
            .unwrap()
            .unwrap();
        assert_eq!(stored, now);
        keys::invalidate_keys();
        assert!(keys::lookup("subject:alice").unwrap().shredded);
    }

    #[pg_test]
    fn audit_rows_name_every_key_id_and_subject_by_digest() {
        let mut ids = vec!["tenant:1".to_string(), "subject:alice@x.io".to_string()];
        let mut details = serde_json::json!({
            "skipped_keys": {"tenant:7": "master key 41aa… that wrapped it is not in this server's master key ring"},
            "damaged_keys": ["\"tenant:8\" version 2", "\"tenant:9\" version 1 and 3 more"],
            "destroyed": [{"key_id": "tenant:1", "version": 1}],
            "failed": [{"key_id": "tenant:10", "version": 2, "error": "encryption key \"tenant:10\" version 2 failed"}],
            "skipped_policies": [{"policy_id": 3, "key_prefix": "user:", "subject": "bob@x.io", "reason": "r"}],
            "note": "a \"quoted\" word and an unmatched \" quote",
            "count": 2,
        });
        let changed = crate::tombstones::audit_row_for_storage(&mut ids, &mut details, "subject:").unwrap();
        assert!(changed);
        let d = |k: &str| crate::tombstones::key_id_digest_of(k);
        assert_eq!(ids, vec![d("tenant:1"), d("subject:alice@x.io")]);
        let text = details.to_string();
        for clear in [
            "tenant:1\"",
            "tenant:7",
            "tenant:8",
            "tenant:9",
            "tenant:10",
            "alice",
            "bob",
        ] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert!(details["skipped_keys"].get(d("tenant:7")).is_some());
        assert_eq!(details["damaged_keys"][0], format!("\"{}\" version 2", d("tenant:8")));
        assert_eq!(details["destroyed"][0]["key_id"], d("tenant:1"));
        assert_eq!(
            details["failed"][0]["error"],
            format!("encryption key \"{}\" version 2 failed", d("tenant:10"))
        );
        assert_eq!(details["skipped_policies"][0]["subject"], d("user:bob@x.io"));
        assert_eq!(details["note"], "a \"quoted\" word and an unmatched \" quote");
        assert_eq!(details["count"], 2);
        // again: nothing left to change
        assert!(!crate::tombstones::audit_row_for_storage(&mut ids, &mut details, "subject:").unwrap());
    }

    /// The protect trigger remembers each subject's key (`protect::seals`) for as long as the key catalog stands:
    /// a rotation is used from the next row on, and any change to the catalog (a forget here) drops every
    /// remembered key at once, key material included.
    #[pg_test]
    fn remembered_subject_keys_never_outlive_a_change_to_the_key_catalog() {
        use crate::protect::seals;
        Spi::run("CREATE TABLE seal_t (id serial, subject text, stream uuid, payload jsonb)").unwrap();
        Spi::run(
            "SELECT event_crypto.protect('seal_t', 'payload', fields => '{email}', key_column => 'subject',
                                         key_prefix => 'seal:', context_column => 'stream')",
        )
        .unwrap();
        let insert = |n: i32| {
            Spi::run(&format!(
                "INSERT INTO seal_t (subject, stream, payload) SELECT 's' || (i % 3), gen_random_uuid(),
                   jsonb_build_object('email', 'e' || i) FROM generate_series(1, {n}) i"
            ))
            .unwrap()
        };
        // first rows: the keys are created (the catalog changes), the following rows remember them
        insert(12);
        insert(12);
        assert_eq!(seals::remembered(), 3);
        Spi::run("SELECT event_crypto.rotate_key('seal:s0')").unwrap();
        assert_eq!(seals::remembered(), 0, "a rotation ends what was remembered");
        insert(3);
        let v2 = Spi::get_one::<i64>(
            "SELECT count(*) FROM seal_t WHERE id > 24 AND subject = 's0'
               AND event_crypto.uses_key_version(payload, 'seal:s0', 2)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(v2, 1, "the row written after the rotation is under the new version");
        insert(3);
        assert_eq!(seals::remembered(), 3);
        Spi::run("SELECT event_crypto.forget_subject('s1', 'seal:')").unwrap();
        assert_eq!(seals::remembered(), 0, "a forget drops every remembered key");
        let refused = crate::access::in_subtransaction(|| {
            Spi::run(
                "INSERT INTO seal_t (subject, stream, payload) VALUES ('s1', gen_random_uuid(), '{\"email\": \"x\"}')",
            )
            .unwrap();
        });
        assert_eq!(
            refused
                .expect_err("a forgotten subject's new rows are refused")
                .sqlstate,
            "23514"
        );
    }

    #[pg_test]
    fn nonces_never_repeat_within_one_insert_select() {
        Spi::run("SELECT event_crypto.create_key('nonce')").unwrap();
        let distinct = Spi::get_one::<i64>(
            "SELECT count(DISTINCT substr(p->>'v', 1, 40)) FROM (
               SELECT event_crypto.encrypt_fields('{\"v\":\"same\"}', '{v}', 'nonce') AS p FROM generate_series(1, 5000)) s",
        )
        .unwrap()
        .unwrap();
        // the first 40 characters cover the header and the nonce
        assert_eq!(distinct, 5000);
    }

    #[pg_test]
    fn no_error_kind_maps_to_an_internal_error() {
        for k in ErrorKind::ALL {
            assert_ne!(sqlstate(k), PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "{k:?}");
        }
    }

    fn pg_jsonb(text: &str) -> Vec<u8> {
        let c = std::ffi::CString::new(text).unwrap();
        // SAFETY: jsonb_in on a NUL-terminated string; the result is a jsonb datum in the current context.
        unsafe {
            let d = pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(c.as_ptr()))])
                .unwrap();
            crate::jsonb::Jsonb::from_datum_packed(d).bytes().to_vec()
        }
    }

    fn pg_numeric(text: &str) -> (Vec<u8>, String) {
        let c = std::ffi::CString::new(text).unwrap();
        // SAFETY: numeric_in(cstring, oid, typmod) then numeric_out; both return palloc'd values.
        unsafe {
            let d = pgrx::direct_function_call_as_datum(
                pg_sys::numeric_in,
                &[
                    Some(pg_sys::Datum::from(c.as_ptr())),
                    Some(pg_sys::InvalidOid.into()),
                    Some((-1i32).into()),
                ],
            )
            .unwrap();
            let p = d.cast_mut_ptr::<pg_sys::varlena>();
            let bytes = std::slice::from_raw_parts(p as *const u8, pgrx::varlena::varsize_any(p)).to_vec();
            let out = pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::numeric_out, &[Some(d)]).unwrap();
            (bytes, out.to_str().unwrap().to_string())
        }
    }

    /// The core's binary jsonb writer produces exactly the bytes jsonb_in produces, and its reader and JSON text
    /// output round-trip through jsonb_in, on documents that exercise every JSON type, numbers PostgreSQL keeps
    /// digit for digit, escapes, unicode, empty containers, scalar roots, repeated keys and more than 32 children
    /// (where jsonb stores offsets instead of lengths).
    #[pg_test]
    fn binary_jsonb_matches_postgres_byte_for_byte() {
        use event_crypto_core::jsonb::{from_json_text, to_json_text};
        let wide_array = format!(
            "[{}]",
            (0..100)
                .map(|i| format!("{{\"k{i}\":[{i},\"s{i}\"]}}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let wide_object = format!(
            "{{{}}}",
            (0..80)
                .map(|i| format!("\"key{i}\":{}.5", i * 37))
                .collect::<Vec<_>>()
                .join(",")
        );
        let samples = [
            r#"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#,
            r#"{"n":12.50,"big":123456789012345678901234567890.000001,"neg":-0.0,"exp":1e-7,"int":-42,"e":1E+3}"#,
            r#"{"s":"quote \" backslash \\ tab \t newline \n unicode \u00e9 ✓ \ud83d\ude00 \/"}"#,
            r#"{"":"empty key","a.b":{"[*]":[]},"z":{},"arr":[[],[{}],[[1]]]}"#,
            r#"{"dup":1,"x":2,"dup":3}"#,
            r#"[1,"two",{"three":3},[4]]"#,
            r#""just a string""#,
            r#"3.14159265358979323846264338327950288"#,
            r#"true"#,
            r#"null"#,
            r#"  { "spaced" :  [ 1 , 2 ] }  "#,
            &wide_array,
            &wide_object,
        ];
        for text in samples {
            let pg = pg_jsonb(text);
            let mine = from_json_text(text).unwrap();
            assert_eq!(mine, pg, "{text}");
            let printed = to_json_text(&pg).unwrap();
            assert_eq!(pg_jsonb(&printed), pg, "{text} printed as {printed}");
        }
    }

    /// numeric_in and numeric_out, reimplemented in the core, agree with PostgreSQL on a generated set of numbers
    /// (short and long headers, negative weights, display scales, exponents).
    #[pg_test]
    fn numeric_conversion_matches_postgres() {
        use event_crypto_core::jsonb::{numeric_from_text, numeric_to_text};
        let mut inputs: Vec<String> = vec![
            "0".into(),
            "-0".into(),
            "0.000".into(),
            "1e1000".into(),
            "-1e-1000".into(),
        ];
        let mantissas = [
            "1",
            "9",
            "10",
            "9999",
            "10000",
            "123456789",
            "1.5",
            "0.0001",
            "12.340",
            "99999999.99999999",
        ];
        for m in mantissas {
            for e in [-300, -70, -64, -9, -4, -1, 0, 1, 3, 4, 5, 8, 63, 64, 252, 256, 300] {
                inputs.push(format!("{m}e{e}"));
                inputs.push(format!("-{m}E{e}"));
            }
            inputs.push(m.to_string());
            inputs.push(format!("{m}{}", "0".repeat(260)));
            inputs.push(format!("0.{}{}", "0".repeat(255), m.replace('.', "")));
        }
        for text in &inputs {
            let (pg_bytes, pg_text) = pg_numeric(text);
            let mine = numeric_from_text(text.as_bytes()).unwrap();
            assert_eq!(mine, pg_bytes, "{text}");
            let mut out = String::new();
            numeric_to_text(&pg_bytes, &mut out).unwrap();
            assert_eq!(out, pg_text, "{text}");
        }
    }

    #[pg_test(error = "encryption key does not exist or has been shredded")]
    fn encrypting_with_an_unknown_key_raises() {
        Spi::run("SELECT event_crypto.encrypt_fields('{\"a\":1}', '{a}', 'tenant-x')").unwrap();
    }

    /// A grant from consumer_keys() opens, with the consumer's private key and the row's own fields, to the data
    /// key the server encrypts with: an envelope encrypted in SQL decrypts with it outside the key catalog. Any
    /// field of the grant's row changed (another consumer, key id, version, expiry) does not open.
    #[pg_test]
    fn consumer_grants_open_to_the_data_key() {
        use event_crypto_core::aead::{Algorithm, Cipher};
        use event_crypto_core::document::{Decryptor, KeyLookup, KeySource, OnShredded};
        use event_crypto_core::envelope::{KeyHandle, KeyRef};
        use event_crypto_core::grant::{open_grant, GrantInfo, Purpose};
        use event_crypto_core::hpke::PrivateKey;
        use std::rc::Rc;

        let sk = PrivateKey::generate().unwrap();
        let pk = sk.public_key().to_text();
        Spi::run("SELECT event_crypto.create_key('grant:k'), event_crypto.rotate_key('grant:k')").unwrap();
        Spi::run(&format!(
            "SELECT event_crypto.create_consumer('grant-c', '{pk}', 'grant:%', '1 minute')"
        ))
        .unwrap();
        let envelope = Spi::get_one::<String>("SELECT event_crypto.encrypt_value('\"secret@example.com\"', 'grant:k')")
            .unwrap()
            .unwrap();
        let (key_id, handle, version, algorithm, grant, issued, expires) = Spi::connect(|c| {
            let r = c
                .select(
                    "SELECT key_id, handle, version, algorithm, grant_data,
                            (extract(epoch FROM issued_at) * 1000000)::int8, (extract(epoch FROM expires_at) * 1000000)::int8
                     FROM event_crypto.consumer_keys('grant-c', '[{\"key_id\": \"grant:k\", \"version\": 2}]')",
                    None,
                    &[],
                )
                .unwrap()
                .first();
            (
                r.get::<String>(1).unwrap().unwrap(),
                r.get::<String>(2).unwrap().unwrap(),
                r.get::<i32>(3).unwrap().unwrap(),
                r.get::<String>(4).unwrap().unwrap(),
                r.get::<Vec<u8>>(5).unwrap().unwrap(),
                r.get::<i64>(6).unwrap().unwrap(),
                r.get::<i64>(7).unwrap().unwrap(),
            )
        });
        assert_eq!((key_id.as_str(), version), ("grant:k", 2));
        assert_eq!(expires - issued, 60_000_000);
        let handle = KeyHandle::from_i64(u64::from_str_radix(&handle, 16).unwrap() as i64).unwrap();
        let algorithm = Algorithm::from_name(&algorithm).unwrap();
        let info = GrantInfo {
            consumer: "grant-c",
            key_id: &key_id,
            handle,
            version: 2,
            purpose: Purpose::Data,
            algorithm,
            issued_at: issued,
            expires_at: expires,
        };
        let key = open_grant(&sk, &info, &grant).unwrap();

        struct One(Rc<Cipher>, KeyHandle);
        impl KeySource for One {
            fn decryption_key(&mut self, key: KeyRef<'_>, version: u32) -> event_crypto_core::Result<KeyLookup> {
                assert_eq!((key, version), (KeyRef::Handle(self.1), 2));
                Ok(KeyLookup::Found(self.0.clone()))
            }
        }
        let mut source = One(Rc::new(Cipher::new(algorithm, &key)), handle);
        let plain = Decryptor::new(&mut source, None, OnShredded::Error)
            .decrypt_value(&envelope)
            .unwrap();
        let mut out = Vec::new();
        plain.unwrap().write_document(&mut out).unwrap();
        let text = event_crypto_core::jsonb::to_json_text(&out).unwrap();
        assert_eq!(text, "\"secret@example.com\"");

        for changed in [
            GrantInfo {
                consumer: "grant-d",
                ..info
            },
            GrantInfo {
                key_id: "grant:l",
                ..info
            },
            GrantInfo { version: 1, ..info },
            GrantInfo {
                expires_at: expires + 1,
                ..info
            },
            GrantInfo {
                purpose: Purpose::BlindIndex,
                ..info
            },
        ] {
            let Err(e) = open_grant(&sk, &changed, &grant) else {
                panic!("a changed grant must not open");
            };
            assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
        }
        let other = PrivateKey::generate().unwrap();
        assert!(
            open_grant(&other, &info, &grant).is_err(),
            "another consumer's private key does not open it"
        );
    }
}
