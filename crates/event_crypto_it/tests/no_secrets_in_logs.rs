//! No secrets in logs: a workload that passes plaintext as bind parameters runs with log_statement = 'none',
//! log_min_messages = debug1, log_min_error_statement = error and auto_explain logging every plan, triggers every
//! error path of the extension, and then the whole server log, pg_stat_activity (sampled while the workload runs)
//! and every error's message, detail, hint and context are searched for the plaintexts and for the master key and
//! every data key (hex, base64, base64url): none may appear.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use event_crypto_core::aead::Algorithm;
use event_crypto_core::master::{KeyPurpose, MasterKeyRing, WrapContext};
use event_crypto_it::{connect, dsn, fresh_db, scratch};
use postgres::types::ToSql;
use postgres::Client;

/// Every form a secret could take in text.
fn forms(bytes: &[u8]) -> Vec<String> {
    vec![
        hex::encode(bytes),
        hex::encode_upper(bytes),
        STANDARD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        // the bytea output format
        format!("\\x{}", hex::encode(bytes)),
    ]
}

#[test]
fn no_plaintext_or_key_bytes_reach_logs_activity_or_error_reports() {
    let db = fresh_db("A", "ec_nolog");
    let mut c = connect("A", &db);
    let tag = format!("{:x}", std::process::id() as u64 * 7919 + 17);
    let secrets: Vec<String> = (0..6).map(|i| format!("sentinel{i}-{tag}@plain.example")).collect();
    let setup = "SET log_statement = 'none';
                 SET log_min_messages = debug1;
                 SET log_min_error_statement = error;
                 SET client_min_messages = debug1;
                 LOAD 'auto_explain';
                 SET auto_explain.log_min_duration = 0;
                 SET auto_explain.log_analyze = on;
                 SET auto_explain.log_verbose = on;
                 SET auto_explain.log_nested_statements = on;
                 SET plan_cache_mode = force_generic_plan;";
    c.batch_execute(setup).unwrap();
    c.batch_execute(
        "SELECT event_crypto.create_key('log:k');
         SELECT event_crypto.create_key('log:gone');
         CREATE TABLE ev (id serial PRIMARY KEY, subject text, stream text, payload jsonb, email_idx text);
         SELECT event_crypto.protect('ev', 'payload', fields => ARRAY['email', 'deep.ssn'], key_column => 'subject',
                                     context_column => 'stream');
         SELECT event_crypto.add_blind_index('ev', 'payload', 'email', 'email_idx', 'log:k');",
    )
    .unwrap();

    // A second session samples pg_stat_activity while the workload runs.
    let sampler_dsn = format!("{} dbname={db}", dsn("A"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut s = Client::connect(&sampler_dsn, postgres::NoTls).unwrap();
        let mut texts = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            for r in s
                .query("SELECT coalesce(query, '') FROM pg_stat_activity", &[])
                .unwrap()
            {
                texts.push(r.get::<_, String>(0));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        texts
    });

    let doc = |s: &str| serde_json::json!({"email": s, "deep": {"ssn": s}, "name": s});
    let mut reports: Vec<String> = Vec::new();
    let mut expect_error = |c: &mut Client, sql: &str, params: &[&(dyn ToSql + Sync)], code: &str| {
        let e = c.query(sql, params).expect_err(sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
        reports.push(format!(
            "{} | {} | {} | {} | {}",
            db.message(),
            db.detail().unwrap_or(""),
            db.hint().unwrap_or(""),
            db.where_().unwrap_or(""),
            db.code().code()
        ));
    };

    // Ordinary use, every value a bind parameter.
    for (i, s) in secrets.iter().enumerate() {
        let subject = format!("u{i}");
        let stream = format!("stream-{i}");
        c.execute(
            "INSERT INTO ev (subject, stream, payload) VALUES ($1, $2, $3)",
            &[&subject, &stream, &doc(s)],
        )
        .unwrap();
        let back: serde_json::Value = c
            .query_one(
                "SELECT event_crypto.decrypt_fields(payload, stream) FROM ev WHERE subject = $1",
                &[&subject],
            )
            .unwrap()
            .get(0);
        assert_eq!(back["email"], serde_json::json!(s));
        c.query(
            "SELECT count(*) FROM ev WHERE email_idx = event_crypto.blind_index($1, 'log:k')",
            &[s],
        )
        .unwrap();
        c.query("SELECT event_crypto.encrypt_value(to_jsonb($1::text), 'log:k')", &[s])
            .unwrap();
    }
    let s0 = secrets[0].as_str();
    let env: String = c
        .query_one(
            "SELECT event_crypto.encrypt_value(to_jsonb($1::text), 'log:k', 'ctx')",
            &[&s0],
        )
        .unwrap()
        .get(0);
    let enc_doc: serde_json::Value = c
        .query_one(
            "SELECT event_crypto.encrypt_fields($1, '{email}', 'log:k', 'ctx')",
            &[&doc(s0)],
        )
        .unwrap()
        .get(0);
    c.batch_execute("SELECT event_crypto.shred_key('log:gone')").unwrap();

    // Every error path, with the secret in the arguments.
    let null_key: Option<&str> = None;
    let secret_doc = doc(s0);
    let secret_text = serde_json::json!(s0);
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_fields($1, '{email}', $2)",
        &[&secret_doc, &null_key],
        "22004",
    );
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_fields($1, '{email}', 'log:k', '')",
        &[&secret_doc],
        "22023",
    );
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_fields($1, '{email}', 'log:k')",
        &[&secret_text],
        "22023",
    );
    expect_error(&mut c, "SELECT event_crypto.create_key('x', $1)", &[&s0], "22023");
    expect_error(
        &mut c,
        "SELECT event_crypto.blind_index($1, 'log:k', $1)",
        &[&s0],
        "22023",
    );
    expect_error(
        &mut c,
        "SELECT event_crypto.decrypt_fields($1, NULL, $2)",
        &[&enc_doc, &s0],
        "22023",
    );
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_fields($1, '{email}', 'log:nope')",
        &[&secret_doc],
        "42704",
    );
    // (the same error as an unknown key id: encryptors cannot tell a forgotten subject from one never seen)
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_fields($1, '{email}', 'log:gone')",
        &[&secret_doc],
        "42704",
    );
    expect_error(&mut c, "SELECT event_crypto.rotate_key('log:gone')", &[], "55000");
    expect_error(&mut c, "SELECT event_crypto.create_key('log:k')", &[], "42710");
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_fields($1, ARRAY['em[ail'], 'log:k')",
        &[&secret_doc],
        "42601",
    );
    expect_error(
        &mut c,
        "SELECT event_crypto.decrypt_value($1, 'wrong')",
        &[&env],
        "XX001",
    );
    expect_error(&mut c, "SELECT event_crypto.decrypt_value($1)", &[&env], "22000");
    expect_error(
        &mut c,
        "SELECT event_crypto.decrypt_fields($1, 'other')",
        &[&enc_doc],
        "XX001",
    );
    let at = env.len() - 10;
    let swap = if &env[at..at + 1] == "A" { "B" } else { "A" };
    let tampered = format!("{}{swap}{}", &env[..at], &env[at + 1..]);
    expect_error(
        &mut c,
        "SELECT event_crypto.decrypt_value($1, 'ctx')",
        &[&tampered],
        "XX001",
    );
    let malformed = format!("$ec1$!{s0}");
    expect_error(&mut c, "SELECT event_crypto.decrypt_value($1)", &[&malformed], "22P02");
    let future = env.replacen("$ec2$", "$ec7$", 1);
    expect_error(&mut c, "SELECT event_crypto.decrypt_value($1)", &[&future], "0A000");
    let deep = format!("{}\"{s0}\"{}", "[".repeat(1100), "]".repeat(1100));
    expect_error(
        &mut c,
        "SELECT event_crypto.decrypt_fields($1::text::jsonb)",
        &[&deep],
        "54000",
    );
    expect_error(
        &mut c,
        "UPDATE ev SET stream = $1 WHERE subject = 'u1'",
        &[&s0],
        "0A000",
    );
    c.batch_execute("SELECT event_crypto.forget_subject('u2')").unwrap();
    expect_error(
        &mut c,
        "INSERT INTO ev (subject, stream, payload) VALUES ('u2', 's', $1)",
        &[&secret_doc],
        "23514",
    );
    expect_error(
        &mut c,
        "INSERT INTO ev (subject, stream, payload) VALUES ('u3', NULL, $1)",
        &[&secret_doc],
        "22004",
    );
    expect_error(
        &mut c,
        "SELECT event_crypto.retire_key_version('subject:u0', 1)",
        &[],
        "55006",
    );
    c.batch_execute("CREATE ROLE nolog_nobody").ok();
    c.batch_execute("SET ROLE nolog_nobody").unwrap();
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_value(to_jsonb($1::text), 'log:k')",
        &[&s0],
        "42501",
    );
    c.batch_execute("RESET ROLE").unwrap();
    c.batch_execute(setup).unwrap(); // (SET ROLE/RESET keep the settings; this is only belt and braces)
                                     // Master key mismatch: a key row wrapped by a master key the ring lacks.
    c.batch_execute(
        "INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id)
         SELECT 'log:foreign', 1, algorithm, 'active', wrapped_key, wrapped_index_key, 'feedfacefeedface'
         FROM event_crypto.keys WHERE key_id = 'log:k' AND version = 1",
    )
    .unwrap();
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_value(to_jsonb($1::text), 'log:foreign')",
        &[&s0],
        "28000",
    );
    // A damaged wrapped key.
    c.batch_execute("UPDATE event_crypto.keys SET wrapped_key = wrapped_index_key WHERE key_id = 'log:foreign'; UPDATE event_crypto.keys SET master_key_id = event_crypto.master_key_id() WHERE key_id = 'log:foreign'").unwrap();
    expect_error(
        &mut c,
        "SELECT event_crypto.encrypt_value(to_jsonb($1::text), 'log:foreign')",
        &[&s0],
        "XX001",
    );
    // No master key at all (cluster E) and an unsafe key file (cluster C).
    for cluster in ["C", "E"] {
        let other = fresh_db(cluster, "ec_nolog");
        let mut o = connect(cluster, &other);
        let e = o
            .query("SELECT event_crypto.encrypt_value(to_jsonb($1::text), 'k')", &[&s0])
            .expect_err("no usable master key");
        let d = e.as_db_error().unwrap();
        assert_eq!(d.code().code(), "F0000");
        reports.push(format!(
            "{} | {} | {}",
            d.message(),
            d.detail().unwrap_or(""),
            d.hint().unwrap_or("")
        ));
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let activity = sampler.join().unwrap();
    assert!(!activity.is_empty());

    // The keys: the master key (from its file) and every data and blind-index key, unwrapped here.
    let key_text = std::fs::read(format!("{}/a/master.key", scratch())).unwrap();
    let ring = MasterKeyRing::parse_text(&key_text).unwrap();
    let mut key_forms: Vec<String> = Vec::new();
    let master_hex = String::from_utf8(key_text.clone()).unwrap().trim().to_string();
    key_forms.extend(forms(&hex::decode(&master_hex).unwrap()));
    for r in c
        .query(
            "SELECT key_id, version, algorithm, wrapped_key, wrapped_index_key FROM event_crypto.keys
              WHERE wrapped_key IS NOT NULL AND master_key_id = event_crypto.master_key_id() AND key_id <> 'log:foreign'",
            &[],
        )
        .unwrap()
    {
        let key_id: String = r.get(0);
        let version: i32 = r.get(1);
        let algorithm = Algorithm::from_name(&r.get::<_, String>(2)).unwrap();
        for (col, purpose) in [(3, KeyPurpose::Data), (4, KeyPurpose::BlindIndex)] {
            let wrapped: Vec<u8> = r.get(col);
            let ctx = WrapContext {
                key_id: &key_id,
                version: version as u32,
                algorithm,
                purpose,
            };
            let k = ring.active().unwrap(&wrapped, &ctx).unwrap();
            key_forms.extend(forms(&k[..]));
        }
    }
    assert!(
        key_forms.len() >= 5 * 9,
        "master key + at least 4 key versions with 2 keys each"
    );

    let log = std::fs::read_to_string(format!("{}/a/server.log", scratch())).unwrap();
    assert!(
        log.contains("duration:") && log.contains("Query Text"),
        "auto_explain logged plans"
    );
    let haystacks = [
        ("server log", log.as_str()),
        ("pg_stat_activity", &activity.join("\n")),
        ("error reports", &reports.join("\n")),
    ];
    for (name, hay) in haystacks {
        for s in &secrets {
            assert!(!hay.contains(s.as_str()), "a plaintext appears in the {name}");
        }
        for k in &key_forms {
            assert!(!hay.contains(k.as_str()), "key bytes appear in the {name}");
        }
    }
    eprintln!(
        "searched {} bytes of server log, {} activity samples, {} error reports for {} plaintexts and {} key encodings",
        log.len(),
        activity.len(),
        reports.len(),
        secrets.len(),
        key_forms.len()
    );
}

/// What the threat model documents: auto_explain prints the constants of a *custom* plan, and PostgreSQL plans a
/// one-off statement with its bind parameters substituted, so a plaintext passed as a parameter reaches the log
/// unless generic plans are forced (then the plan shows `$1`).
#[test]
fn auto_explain_prints_bind_values_of_custom_plans_and_not_of_generic_ones() {
    let db = fresh_db("A", "ec_explain");
    let mut c = connect("A", &db);
    c.batch_execute(
        "SELECT event_crypto.create_key('explain:k');
         LOAD 'auto_explain';
         SET auto_explain.log_min_duration = 0;
         SET auto_explain.log_verbose = on;",
    )
    .unwrap();
    let tag = format!("{:x}", std::process::id() as u64 * 104_729 + 3);
    let custom = format!("custom-{tag}@plain.example");
    let generic = format!("generic-{tag}@plain.example");
    let sql = "SELECT event_crypto.encrypt_value(to_jsonb($1::text), 'explain:k')";
    c.query(sql, &[&custom]).unwrap();
    c.batch_execute("SET plan_cache_mode = force_generic_plan").unwrap();
    c.query(sql, &[&generic]).unwrap();
    let log = std::fs::read_to_string(format!("{}/a/server.log", scratch())).unwrap();
    assert!(
        log.contains(&custom),
        "PostgreSQL no longer inlines bind values into logged plans: update the threat model"
    );
    assert!(
        !log.contains(&generic),
        "with force_generic_plan the plan must show $1, not the value"
    );
}
