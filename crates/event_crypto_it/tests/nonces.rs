//! Nonces never repeat: 200,000 encryptions under one key version, through INSERT ... SELECT, COPY and multi-row
//! VALUES into a protected table (the same plaintext in every row), all with distinct nonces; and nothing that
//! draws randomness is evaluated once and reused for many rows (VOLATILE, prepared statements, defaults).

use event_crypto_it::{connect, fresh_db, one};
use std::io::Write;

#[test]
fn two_hundred_thousand_encryptions_under_one_key_version_have_distinct_nonces() {
    let db = fresh_db("A", "ec_nonces");
    let mut c = connect("A", &db);
    c.batch_execute(
        "CREATE TABLE ev (id bigserial PRIMARY KEY, payload jsonb);
         SELECT event_crypto.create_key('nonce-key');
         SELECT event_crypto.protect('ev', 'payload', fields => ARRAY['a', 'b'], key_id => 'nonce-key');
         -- the 12 nonce bytes of an envelope (docs/format.md): format 2, after the algorithm and flags byte, the
         -- 8-byte handle and the LEB128 version; format 1, after algorithm, flags, key id length, key id and version
         CREATE FUNCTION nonce_of(e text) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT AS $$
             SELECT CASE WHEN left(e, 5) = '$ec2$'
                         THEN substring(b FROM 10 + (SELECT min(i) FROM generate_series(1, 5) i
                                                     WHERE get_byte(b, 8 + i) < 128) FOR 12)
                         ELSE substring(b FROM 3 + get_byte(b, 2) + 4 + 1 FOR 12) END
             FROM (SELECT decode(rpad(translate(substr(e, 6), '-_', '+/'), ((length(e) - 5 + 3) / 4) * 4, '='), 'base64') AS b) s
         $$;
         -- 1. INSERT ... SELECT: 60,000 rows x 2 fields
         INSERT INTO ev (payload) SELECT '{\"a\": \"same\", \"b\": 1}' FROM generate_series(1, 60000);",
    )
    .unwrap();
    // 2. COPY: 20,000 rows x 2 fields
    let mut w = c.copy_in("COPY ev (payload) FROM STDIN").unwrap();
    for _ in 0..20_000 {
        w.write_all(b"{\"a\": \"same\", \"b\": 1}\n").unwrap();
    }
    w.finish().unwrap();
    // 3. multi-row VALUES: 20 statements of 1,000 rows x 2 fields
    let values = vec!["('{\"a\": \"same\", \"b\": 1}')"; 1000].join(", ");
    for _ in 0..20 {
        c.batch_execute(&format!("INSERT INTO ev (payload) VALUES {values}"))
            .unwrap();
    }
    let rows = one(&mut c, "SELECT count(*) FROM ev");
    assert_eq!(rows, 100_000);
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM ev WHERE event_crypto.uses_key_version(payload, 'nonce-key', 1)"
        ),
        rows,
        "one key version for all"
    );
    let (total, distinct) = {
        let r = c
            .query_one(
                "SELECT count(*), count(DISTINCT n) FROM (
                     SELECT nonce_of(payload->>'a') AS n FROM ev UNION ALL SELECT nonce_of(payload->>'b') FROM ev) s",
                &[],
            )
            .unwrap();
        (r.get::<_, i64>(0), r.get::<_, i64>(1))
    };
    eprintln!("{total} encryptions under one key version, {distinct} distinct nonces");
    assert_eq!(total, 200_000);
    assert_eq!(distinct, total, "a nonce was used twice under one key version");
    assert_eq!(
        one(&mut c, "SELECT count(DISTINCT payload->>'a') FROM ev"),
        rows,
        "the same plaintext never gives the same envelope"
    );

    // Nothing is evaluated once for many rows.
    assert_eq!(
        one(
            &mut c,
            "SELECT count(DISTINCT event_crypto.encrypt_value('\"x\"', 'nonce-key')) FROM generate_series(1, 1000)"
        ),
        1000
    );
    c.batch_execute("SET plan_cache_mode = force_generic_plan").unwrap();
    let stmt = c
        .prepare("SELECT event_crypto.encrypt_value($1::text::jsonb, 'nonce-key')")
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let e: String = c.query_one(&stmt, &[&"\"x\""]).unwrap().get(0);
        assert!(seen.insert(e), "a prepared statement returned the same envelope twice");
    }
    c.batch_execute(
        "CREATE TABLE d (id int, e text DEFAULT event_crypto.encrypt_value('\"x\"', 'nonce-key'));
         INSERT INTO d (id) SELECT generate_series(1, 500);",
    )
    .unwrap();
    assert_eq!(
        one(&mut c, "SELECT count(DISTINCT e) FROM d"),
        500,
        "a column default is evaluated per row"
    );
    // The catalog agrees: everything that draws randomness is VOLATILE; nothing that reads keys is IMMUTABLE.
    let offenders: Vec<String> = c
        .query(
            "SELECT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'event_crypto'
                AND ((p.proname IN ('encrypt_fields', 'encrypt_value', 'reencrypt_fields', 'create_key', 'rotate_key',
                                    'rewrap_keys_batch', 'reencrypt_batch') AND p.provolatile <> 'v')
                  OR (p.proname IN ('decrypt_fields', 'decrypt_value', 'blind_index', 'needs_reencryption',
                                    'master_key_status', 'export_subject') AND p.provolatile = 'i'))",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(offenders.is_empty(), "{offenders:?}");
}
