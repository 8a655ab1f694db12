//! No internals in client-facing errors (issue 11, item 11): SPI and permission errors raised inside the
//! extension's Rust code used to carry a Rust backtrace (`pgrx::spi::query::execute`, `event_crypto::protect::…`)
//! in their DETAIL whenever the server ran with RUST_BACKTRACE set. Cluster A runs with RUST_BACKTRACE=1
//! (tests/clusters.sh); every error below must carry its own message and SQLSTATE and nothing of the code that
//! raised it.

use event_crypto_it::{connect, fresh_db};

/// What a Rust backtrace or a source location looks like in text.
const INTERNALS: &[&str] = &[
    "backtrace",
    "pgrx",
    "event_crypto::",
    "std::",
    "core::",
    ".rs:",
    "src/",
    "rust_begin_unwind",
];

fn check(c: &mut postgres::Client, what: &str, sql: &str, must_fail: bool) {
    match c.batch_execute(sql) {
        Ok(()) => assert!(!must_fail, "{what}: expected an error"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{what}: not a database error: {e}"));
            let texts = [Some(db.message()), db.detail(), db.hint(), db.where_()];
            for t in texts.into_iter().flatten() {
                for marker in INTERNALS {
                    assert!(!t.contains(marker), "{what}: the error shows {marker:?}: {t}");
                }
            }
            eprintln!("{what}: {} {}", db.code().code(), db.message());
        }
    }
}

#[test]
fn errors_raised_inside_the_extension_carry_no_backtrace() {
    let db = fresh_db("A", "ec_internals");
    let mut c = connect("A", &db);
    c.batch_execute(
        "CREATE ROLE int_admin_{p} IN ROLE event_crypto_admin;
         CREATE SCHEMA int_locked;
         CREATE TABLE int_locked.t (id serial, subject text, payload jsonb, idx text);
         GRANT USAGE ON SCHEMA int_locked TO int_admin_{p};
         GRANT TRIGGER, SELECT ON int_locked.t TO int_admin_{p};
         CREATE TABLE int_t (id serial, subject text, payload jsonb, idx text);
         SELECT count(*) FROM event_crypto.protect('int_t', 'payload', fields => ARRAY['email'], key_column => 'subject');
         SELECT count(*) FROM event_crypto.add_blind_index('int_t', 'payload', 'email', 'idx', 'int-tenant');
         INSERT INTO int_t (subject, payload) VALUES ('ann', '{\"email\": \"a@x.io\"}');
         GRANT SELECT ON int_t TO int_admin_{p};
         CREATE FUNCTION int_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the owner says no'; END $$;
         CREATE TABLE int_manual (id serial, p jsonb);
         SELECT event_crypto.create_key('int:k');
         INSERT INTO int_manual (p) SELECT event_crypto.encrypt_fields('{\"x\": 1}', '{x}', 'int:k');
         SELECT event_crypto.rotate_key('int:k');
         CREATE TRIGGER int_fail BEFORE UPDATE ON int_manual FOR EACH ROW EXECUTE FUNCTION int_fail();
         CREATE TABLE int_big AS SELECT jsonb_build_object('a', (SELECT jsonb_agg(i) FROM generate_series(1, 2000000) i)) AS doc;"
            .replace("{p}", &std::process::id().to_string())
            .as_str(),
    )
    .unwrap();
    let role = format!("int_admin_{}", std::process::id());
    // CREATE VIEW refused inside protect() (no CREATE on the schema): a PostgreSQL error raised through SPI
    check(
        &mut c,
        "protect() without CREATE on the schema",
        &format!(
            "SET ROLE {role}; SELECT event_crypto.protect('int_locked.t', 'payload', fields => ARRAY['email'], key_column => 'subject')"
        ),
        true,
    );
    c.batch_execute("RESET ROLE").unwrap();
    // an owner's trigger that raises while reencrypt_batch rewrites the table (SPI, as the owner)
    check(
        &mut c,
        "reencrypt_batch with a failing trigger",
        "SELECT * FROM event_crypto.reencrypt_batch('int_manual', 'p')",
        true,
    );
    // a statement timeout inside the document walk (an interrupt raised inside the extension)
    check(
        &mut c,
        "statement timeout while encrypting",
        "SET statement_timeout = '200ms'; SELECT event_crypto.encrypt_fields(doc, '{a[*]}', 'int:k') FROM int_big",
        true,
    );
    c.batch_execute("RESET statement_timeout").unwrap();
    // the report's example: forgetting a subject of a table the admin may not update (now skipped and reported,
    // no error at all; before, a permission error with a backtrace)
    check(
        &mut c,
        "forget_subject without UPDATE on a table",
        &format!("SET ROLE {role}; SELECT event_crypto.forget_subject('ann')"),
        false,
    );
    c.batch_execute("RESET ROLE").unwrap();
    // our own errors (no SPI involved)
    check(
        &mut c,
        "unknown key",
        "SELECT event_crypto.encrypt_value('1', 'int:never')",
        true,
    );
    check(
        &mut c,
        "bad path",
        "SELECT event_crypto.encrypt_fields('{}', '{a[}', 'int:k')",
        true,
    );
}
