//! event_crypto on Citus: a coordinator and two workers (docs/scaling.md#citus).
//!
//! Runs against the clusters `tests/citus-clusters.sh` starts from a PostgreSQL with Citus installed, whose
//! connection strings it reads from `EC_CITUS_COORDINATOR` and `EC_CITUS_WORKERS` (`;`-separated). Citus is not
//! packaged for the CI machine: when the variables are unset, the clusters cannot be reached or `citus` is not in
//! `pg_available_extensions`, every test here prints why and passes without checking anything (a skip, said so).
//!
//! The tests share the clusters' database `postgres` (a Citus database needs its workers added); each works on
//! tables and subjects of its own.

use event_crypto_it::sql_error;
use postgres::{Client, NoTls};
use serde_json::Value;

/// The tests run one at a time: Citus serializes shard moves against the creation of colocated tables.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Connections to the coordinator and the workers, or `None` (printed why) when there is no Citus to test.
fn citus(test: &str) -> Option<(Client, Vec<Client>)> {
    let skip = |why: String| {
        eprintln!("SKIPPED citus::{test}: {why} (see docs/scaling.md#citus; CI has no Citus)");
        None
    };
    let Ok(coordinator) = std::env::var("EC_CITUS_COORDINATOR") else {
        return skip("EC_CITUS_COORDINATOR is not set".into());
    };
    let workers = std::env::var("EC_CITUS_WORKERS").unwrap_or_default();
    let mut c = match Client::connect(&coordinator, NoTls) {
        Ok(c) => c,
        Err(e) => return skip(format!("the Citus coordinator cannot be reached: {e}")),
    };
    let available: bool = c
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'citus')",
            &[],
        )
        .unwrap()
        .get(0);
    if !available {
        return skip("citus is not in pg_available_extensions".into());
    }
    let mut ws = Vec::new();
    for w in workers.split(';').filter(|w| !w.trim().is_empty()) {
        match Client::connect(w, NoTls) {
            Ok(w) => ws.push(w),
            Err(e) => return skip(format!("a Citus worker cannot be reached: {e}")),
        }
    }
    if ws.len() < 2 {
        return skip(format!("EC_CITUS_WORKERS names {} workers, the tests need 2", ws.len()));
    }
    Some((c, ws))
}

/// A tag for this test's tables, subjects and key prefix.
fn tag(test: &str) -> String {
    format!("{test}_{}", std::process::id())
}

/// A distributed, protected event table `t` keyed by subject under `prefix`, with a blind index under `tenant`.
fn distributed_events(c: &mut Client, t: &str, prefix: &str, tenant: &str) {
    // one transaction each: Citus creates the shards in parallel, and a transaction that did so cannot then write
    // the catalog's reference tables (protect() itself runs its DDL on the shards sequentially)
    // (no citus.enable_unsafe_triggers in this session: protect() and add_blind_index() turn it on for their DDL)
    for sql in [
        format!(
            "CREATE TABLE {t} (id bigserial, subject_id text NOT NULL, stream_id text NOT NULL, payload jsonb,
                               email_idx text, PRIMARY KEY (subject_id, id))"
        ),
        format!("SELECT create_distributed_table('{t}', 'subject_id')"),
        format!("SELECT event_crypto.create_key('{tenant}')"),
        format!(
            "SELECT event_crypto.protect('{t}', 'payload', fields => ARRAY['email', 'address.street'],
                                         key_column => 'subject_id', key_prefix => '{prefix}',
                                         context_column => 'stream_id')"
        ),
        format!("SELECT event_crypto.add_blind_index('{t}', 'payload', 'email', 'email_idx', '{tenant}', 'lower')"),
    ] {
        c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

fn create_subject_keys(c: &mut Client, prefix: &str, subjects: &[String]) {
    for s in subjects {
        c.execute(
            "SELECT event_crypto.create_key(event_crypto.subject_key_id($1, $2, 1))",
            &[&prefix, s],
        )
        .unwrap();
    }
}

fn insert_events(c: &mut Client, t: &str, subjects: &[String], per_subject: i32) {
    c.execute(
        &format!(
            "INSERT INTO {t} (subject_id, stream_id, payload)
             SELECT s, 'stream-' || s, jsonb_build_object('email', upper(s) || '@X.io', 'n', i,
                                                          'address', jsonb_build_object('street', i || ' Main St'))
             FROM unnest($1::text[]) AS s, generate_series(1, $2) AS i"
        ),
        &[&subjects, &per_subject],
    )
    .unwrap();
}

fn decrypted_emails(c: &mut Client, t: &str, subject: &str) -> Vec<Option<String>> {
    c.query(
        &format!("SELECT event_crypto.decrypt_fields(payload, stream_id)->>'email' FROM {t} WHERE subject_id = $1 ORDER BY id"),
        &[&subject],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Rows of the protection configuration, on one node, that name a relation that does not exist (there).
fn dangling_configuration(cl: &mut Client) -> i64 {
    cl.query_one(
        "SELECT (SELECT count(*) FROM event_crypto.protected_columns p
                  WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = p.table_name::oid))
              + (SELECT count(*) FROM event_crypto.blind_indexes b
                  WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = b.table_name::oid))",
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
#[ignore = "needs a Citus coordinator and two workers (EC_CITUS_COORDINATOR, EC_CITUS_WORKERS): run with -- --ignored, see docs/scaling.md#citus"]
fn shards_encrypt_with_one_key_per_subject_and_everything_reads_across_nodes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut c, mut workers)) = citus("shards_encrypt") else {
        return;
    };
    let tg = tag("enc");
    let t = format!("ev_{tg}");
    let prefix = format!("{tg}:");
    let tenant = format!("tenant-{tg}");
    distributed_events(&mut c, &t, &prefix, &tenant);
    let subjects: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    create_subject_keys(&mut c, &prefix, &subjects);

    // the protect trigger reached every shard, on both workers
    let shards: i64 = c
        .query_one(
            "SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = $1::text::regclass",
            &[&t],
        )
        .unwrap()
        .get(0);
    assert_eq!(shards, 2, "the table's shards are on both workers");

    // multi-row INSERT through the coordinator: the shard triggers on the workers encrypt
    insert_events(&mut c, &t, &subjects, 5);
    let (rows, plain, idx): (i64, i64, i64) = {
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE payload->>'email' NOT LIKE '$ec1$%'
                                                        OR payload#>>'{{address,street}}' NOT LIKE '$ec1$%'),
                            count(email_idx) FROM {t}"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        (rows, plain, idx),
        (60, 0, 60),
        "every row stored encrypted, with its blind index"
    );

    // exactly one key per subject in the cluster: the same single row on every node
    let key_rows = |cl: &mut Client| -> Vec<(String, Vec<u8>)> {
        cl.query(
            "SELECT key_id, wrapped_key FROM event_crypto.keys WHERE key_id LIKE $1 || '%' ORDER BY key_id, version",
            &[&prefix],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let on_coordinator = key_rows(&mut c);
    assert_eq!(on_coordinator.len(), subjects.len());
    for w in workers.iter_mut() {
        assert_eq!(
            key_rows(w),
            on_coordinator,
            "a worker holds the same keys as the coordinator"
        );
    }

    // decrypt_fields in a multi-shard query (pushed down to the workers), the decrypted view, blind index lookups
    let all: Vec<Option<String>> = c
        .query(
            &format!(
                "SELECT event_crypto.decrypt_fields(payload, stream_id)->>'email' FROM {t} ORDER BY subject_id, id"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(all.len(), 60);
    assert!(all.iter().all(|e| e.as_deref().is_some_and(|e| e.ends_with("@X.io"))));
    let viewed: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {t}_decrypted WHERE payload->>'email' = 'S3@X.io'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(viewed, 5, "the decrypted view reads across the shards");
    let found: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {t} WHERE email_idx = event_crypto.blind_index('s7@x.io', $1, 'lower')"),
            &[&tenant],
        )
        .unwrap()
        .get(0);
    assert_eq!(found, 5, "blind index lookup");

    // export_subject on the coordinator
    let export: Value = c
        .query_one("SELECT event_crypto.export_subject('s5', '{}', $1)", &[&prefix])
        .unwrap()
        .get(0);
    let text = export.to_string();
    assert_eq!(
        text.matches("S5@X.io").count(),
        5,
        "export holds the subject's 5 events: {text}"
    );

    // a subject without a key: the worker cannot create one; a clear error, nothing stored
    let e = c
        .execute(
            &format!(
                "INSERT INTO {t} (subject_id, stream_id, payload) VALUES ('newcomer', 'x', '{{\"email\":\"n@x.io\"}}')"
            ),
            &[],
        )
        .unwrap_err();
    let (code, msg, _, hint) = sql_error(&e);
    assert_eq!(code, "55000", "{msg}");
    assert!(msg.contains("a Citus worker cannot create it"), "{msg}");
    assert!(hint.unwrap_or_default().contains("create_key"));
    let newcomer: i64 = c
        .query_one(&format!("SELECT count(*) FROM {t} WHERE subject_id = 'newcomer'"), &[])
        .unwrap()
        .get(0);
    assert_eq!(newcomer, 0);
    // with its key created on the coordinator, the same insert works
    create_subject_keys(&mut c, &prefix, &["newcomer".to_string()]);
    c.execute(
        &format!(
            "INSERT INTO {t} (subject_id, stream_id, payload) VALUES ('newcomer', 'x', '{{\"email\":\"n@x.io\"}}')"
        ),
        &[],
    )
    .unwrap();
    assert_eq!(
        decrypted_emails(&mut c, &t, "newcomer"),
        vec![Some("n@x.io".to_string())]
    );

    // an envelope copied to another subject's event is refused on the shard
    let copied: Value = c
        .query_one(&format!("SELECT payload FROM {t} WHERE subject_id = 's2' LIMIT 1"), &[])
        .unwrap()
        .get(0);
    let e = c
        .execute(
            &format!("INSERT INTO {t} (subject_id, stream_id, payload) VALUES ('s1', 'stream-s1', $1)"),
            &[&copied],
        )
        .unwrap_err();
    assert_eq!(sql_error(&e).0, "23514");
    // (INSERT ... SELECT and COPY reach the shards by COPY: Citus re-raises a worker's error there as XX000, with
    // event_crypto's message and detail)
    let e = c
        .execute(
            &format!(
                "INSERT INTO {t} (subject_id, stream_id, payload)
                 SELECT 's1', 'stream-s1', payload FROM {t} WHERE subject_id = 's2' LIMIT 1"
            ),
            &[],
        )
        .unwrap_err();
    assert!(sql_error(&e).1.contains("does not belong to this row"), "{e}");

    c.batch_execute(&format!("DROP TABLE {t} CASCADE")).unwrap();
}

#[test]
#[ignore = "needs a Citus coordinator and two workers (EC_CITUS_COORDINATOR, EC_CITUS_WORKERS): run with -- --ignored, see docs/scaling.md#citus"]
fn forget_subject_on_the_coordinator_reaches_every_node_and_cached_sessions() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut c, mut workers)) = citus("forget_subject") else {
        return;
    };
    let tg = tag("fgt");
    let t = format!("ev_{tg}");
    let prefix = format!("{tg}:");
    let tenant = format!("tenant-{tg}");
    distributed_events(&mut c, &t, &prefix, &tenant);
    let subjects: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    create_subject_keys(&mut c, &prefix, &subjects);
    insert_events(&mut c, &t, &subjects, 4);

    // a session on each worker decrypts u3's event (and so caches its key)
    let payload: Value = c
        .query_one(&format!("SELECT payload FROM {t} WHERE subject_id = 'u3' LIMIT 1"), &[])
        .unwrap()
        .get(0);
    let decrypt = |w: &mut Client| -> Option<String> {
        w.query_one(
            "SELECT event_crypto.decrypt_fields($1, 'stream-u3')->>'email'",
            &[&payload],
        )
        .unwrap()
        .get(0)
    };
    for w in workers.iter_mut() {
        assert_eq!(decrypt(w).as_deref(), Some("U3@X.io"));
    }

    let receipt: Value = c
        .query_one("SELECT event_crypto.forget_subject('u3', $1)", &[&prefix])
        .unwrap()
        .get(0);
    assert_eq!(receipt["complete"], Value::Bool(true), "{receipt}");
    assert_eq!(receipt["already_forgotten"], Value::Bool(false), "{receipt}");

    // the cached worker sessions stop decrypting at their next transaction
    for w in workers.iter_mut() {
        assert_eq!(
            decrypt(w),
            None,
            "a worker session that had the key cached no longer decrypts"
        );
    }
    // every node's copy of the key is shredded (one distributed transaction)
    for cl in std::iter::once(&mut c).chain(workers.iter_mut()) {
        let live: i64 = cl
            .query_one(
                "SELECT count(*) FROM event_crypto.keys WHERE key_id = event_crypto.subject_key_id($1, 'u3', 1)
                 AND (status <> 'shredded' OR wrapped_key IS NOT NULL)",
                &[&prefix],
            )
            .unwrap()
            .get(0);
        assert_eq!(live, 0);
    }
    // the subject's blind index values are cleared on its shard; the others' stay
    let (u3_idx, others_idx): (i64, i64) = {
        let r = c
            .query_one(
                &format!(
                    "SELECT count(email_idx) FILTER (WHERE subject_id = 'u3'),
                            count(email_idx) FILTER (WHERE subject_id <> 'u3') FROM {t}"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((u3_idx, others_idx), (0, 28));
    // reads through the coordinator (pushed down to the shards) see null; the others still decrypt
    assert!(decrypted_emails(&mut c, &t, "u3").iter().all(Option::is_none));
    assert_eq!(decrypted_emails(&mut c, &t, "u4")[0].as_deref(), Some("U4@X.io"));
    // the audit log of the coordinator records it
    let audited: i64 = c
        .query_one(
            "SELECT count(*) FROM event_crypto.audit_log WHERE action = 'forget_subject' AND subject = 'u3'
             AND key_ids @> ARRAY[event_crypto.subject_key_id($1, 'u3', 1)]",
            &[&prefix],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, 1);
    // a new event of the forgotten subject is refused on the shard
    let e = c
        .execute(
            &format!(
                "INSERT INTO {t} (subject_id, stream_id, payload) VALUES ('u3', 'x', '{{\"email\":\"again@x.io\"}}')"
            ),
            &[],
        )
        .unwrap_err();
    assert_eq!(sql_error(&e).0, "23514");

    // dropping the table removes its configuration on every node (each node's rows name its own oids)
    c.batch_execute(&format!("DROP TABLE {t} CASCADE")).unwrap();
    for cl in std::iter::once(&mut c).chain(workers.iter_mut()) {
        assert_eq!(
            dangling_configuration(cl),
            0,
            "no node keeps configuration rows of dropped tables"
        );
        let n: i64 = cl
            .query_one(
                "SELECT count(*) FROM event_crypto.protected_columns WHERE table_name::text = $1",
                &[&t],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
}

#[test]
#[ignore = "needs a Citus coordinator and two workers (EC_CITUS_COORDINATOR, EC_CITUS_WORKERS): run with -- --ignored, see docs/scaling.md#citus"]
fn a_shard_move_keeps_the_trigger_and_the_data() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut c, _workers)) = citus("shard_move") else {
        return;
    };
    let tg = tag("mv");
    let t = format!("ev_{tg}");
    let prefix = format!("{tg}:");
    let tenant = format!("tenant-{tg}");
    distributed_events(&mut c, &t, &prefix, &tenant);
    let subjects: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    create_subject_keys(&mut c, &prefix, &subjects);
    insert_events(&mut c, &t, &subjects, 3);

    // move m1's shard (with its colocated shards) to the other worker
    let r = c
        .query_one(
            "SELECT s.shardid, s.nodename, s.nodeport,
                    (SELECT n.nodeport FROM pg_dist_node n WHERE n.noderole = 'primary' AND n.shouldhaveshards
                       AND n.nodeport <> s.nodeport ORDER BY n.nodeport LIMIT 1)
             FROM citus_shards s
             WHERE s.table_name = $1::text::regclass
               AND s.shardid = get_shard_id_for_distribution_column($1::text::regclass, 'm1')",
            &[&t],
        )
        .unwrap();
    let (shard, host, from, to): (i64, String, i32, i32) = (r.get(0), r.get(1), r.get(2), r.get(3));
    c.batch_execute("CALL citus_cleanup_orphaned_resources()").unwrap();
    c.execute(
        "SELECT citus_move_shard_placement($1, $2, $3, $2, $4, shard_transfer_mode => 'block_writes')",
        &[&shard, &host, &from, &to],
    )
    .unwrap();
    let now: i32 = c
        .query_one("SELECT nodeport FROM citus_shards WHERE shardid = $1", &[&shard])
        .unwrap()
        .get(0);
    assert_eq!(now, to, "the shard moved");

    // the moved rows still decrypt; a new row on the moved shard is encrypted by its trigger
    assert!(decrypted_emails(&mut c, &t, "m1")
        .iter()
        .all(|e| e.as_deref() == Some("M1@X.io")));
    insert_events(&mut c, &t, &["m1".to_string()], 1);
    let plain: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {t} WHERE subject_id = 'm1' AND payload->>'email' NOT LIKE '$ec1$%'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "the moved shard keeps its protect trigger");
    assert_eq!(decrypted_emails(&mut c, &t, "m1").len(), 4);

    c.batch_execute(&format!("DROP TABLE {t} CASCADE")).unwrap();
}

#[test]
#[ignore = "needs a Citus coordinator and two workers (EC_CITUS_COORDINATOR, EC_CITUS_WORKERS): run with -- --ignored, see docs/scaling.md#citus"]
fn an_application_role_inserts_and_rotation_and_unprotect_reach_the_shards() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut c, mut workers)) = citus("rotation") else {
        return;
    };
    let tg = tag("rot");
    let t = format!("ev_{tg}");
    let prefix = format!("{tg}:");
    let tenant = format!("tenant-{tg}");
    let app = format!("app_{tg}");
    distributed_events(&mut c, &t, &prefix, &tenant);
    let subjects: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    create_subject_keys(&mut c, &prefix, &subjects);

    // the application has its table privileges only: no event_crypto role, no USAGE on the schema
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {app}; CREATE ROLE {app} LOGIN;
         GRANT INSERT, SELECT ON {t} TO {app}; GRANT USAGE ON SEQUENCE {t}_id_seq TO {app};"
    ))
    .unwrap();
    let coordinator = std::env::var("EC_CITUS_COORDINATOR").unwrap();
    let mut a = Client::connect(&format!("{coordinator} user={app}"), NoTls).unwrap();
    let insert = |cl: &mut Client, s: &str| -> String {
        cl.query_one(
            &format!(
                "INSERT INTO {t} (subject_id, stream_id, payload) VALUES ($1, 'stream-' || $1,
                   jsonb_build_object('email', upper($1) || '@X.io')) RETURNING payload->>'email'"
            ),
            &[&s],
        )
        .unwrap()
        .get(0)
    };
    let first = insert(&mut a, "r1");
    assert!(first.starts_with("$ec1$"), "stored encrypted: {first}");
    assert_eq!(event_crypto_it::envelope_version(&first), 1);

    // rotation on the coordinator: the shards encrypt under the new version at once, and the old one still reads
    c.execute(
        "SELECT event_crypto.rotate_key(event_crypto.subject_key_id($1, 'r1', 1))",
        &[&prefix],
    )
    .unwrap();
    let second = insert(&mut a, "r1");
    assert_eq!(event_crypto_it::envelope_version(&second), 2, "new rows use version 2");
    assert_eq!(
        decrypted_emails(&mut c, &t, "r1"),
        vec![Some("R1@X.io".to_string()), Some("R1@X.io".to_string())]
    );

    // unprotect on the coordinator: no node keeps the configuration, no shard keeps the trigger
    let removed: bool = c
        .query_one(&format!("SELECT event_crypto.unprotect('{t}', 'payload')"), &[])
        .unwrap()
        .get(0);
    assert!(removed);
    for cl in std::iter::once(&mut c).chain(workers.iter_mut()) {
        let n: i64 = cl
            .query_one(
                "SELECT count(*) FROM event_crypto.protected_columns WHERE table_name::text = $1",
                &[&t],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
    assert_eq!(
        insert(&mut a, "r2"),
        "R2@X.io",
        "an unprotected table stores what it is given"
    );

    drop(a);
    c.batch_execute(&format!("DROP TABLE {t} CASCADE; DROP ROLE {app}"))
        .unwrap();
}

#[test]
#[ignore = "needs a Citus coordinator and two workers (EC_CITUS_COORDINATOR, EC_CITUS_WORKERS): run with -- --ignored, see docs/scaling.md#citus"]
fn reencryption_of_a_distributed_table_is_refused_rather_than_finished_having_seen_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut c, _workers)) = citus("reencrypt") else {
        return;
    };
    let tg = tag("re");
    let t = format!("ev_{tg}");
    let prefix = format!("{tg}:");
    let subjects: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    // rows written before protect(): plaintext on the shards
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id bigserial, subject_id text NOT NULL, payload jsonb, PRIMARY KEY (subject_id, id))"
    ))
    .unwrap();
    c.batch_execute(&format!("SELECT create_distributed_table('{t}', 'subject_id')"))
        .unwrap();
    c.execute(
        &format!(
            "INSERT INTO {t} (subject_id, payload) SELECT s, jsonb_build_object('email', s || '@x.io') FROM unnest($1::text[]) s"
        ),
        &[&subjects],
    )
    .unwrap();
    c.batch_execute(&format!(
        "SELECT event_crypto.protect('{t}', 'payload', fields => ARRAY['email'], key_column => 'subject_id', key_prefix => '{prefix}')"
    ))
    .unwrap();
    create_subject_keys(&mut c, &prefix, &subjects);
    // the shell table on the coordinator holds no rows: a pass over it must not end "finished" having seen none
    let e = c
        .query(
            &format!("SELECT * FROM event_crypto.reencrypt_batch('{t}', 'payload', 100)"),
            &[],
        )
        .expect_err("reencrypt_batch on a distributed table");
    let (code, message, _, _) = event_crypto_it::sql_error(&e);
    assert_eq!(code, "0A000", "{message}");
    assert!(message.contains("Citus distributed table"), "{message}");
    // what the hint says works: an UPDATE through the coordinator, encrypted by the shard triggers
    c.batch_execute(&format!("UPDATE {t} SET payload = payload")).unwrap();
    let encrypted: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {t} WHERE payload->>'email' LIKE '$ec1$%'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(encrypted, subjects.len() as i64);
    let emails: Vec<Option<String>> = c
        .query(
            &format!("SELECT event_crypto.decrypt_fields(payload)->>'email' FROM {t} ORDER BY subject_id"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        emails,
        subjects.iter().map(|s| Some(format!("{s}@x.io"))).collect::<Vec<_>>()
    );
    c.batch_execute(&format!("DROP TABLE {t} CASCADE")).unwrap();
}
