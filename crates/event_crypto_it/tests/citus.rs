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
                    "SELECT count(*), count(*) FILTER (WHERE payload->>'email' NOT LIKE '$ec2$%'
                                                        OR payload#>>'{{address,street}}' NOT LIKE '$ec2$%'),
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

    // a subject without a key: the shard trigger has the coordinator create it (tests/citus.rs, new_subjects_*)
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
        // its rows are kept under the key id's digest (issue 15), computed on every node (catalog_secrets is a
        // reference table too)
        let tombstone: i64 = cl
            .query_one(
                "SELECT count(*) FROM event_crypto.keys
                 WHERE key_id = event_crypto.key_id_digest(event_crypto.subject_key_id($1, 'u3', 1)) AND status = 'shredded'",
                &[&prefix],
            )
            .unwrap()
            .get(0);
        assert_eq!(tombstone, 1);
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
            "SELECT count(*) FROM event_crypto.audit_log WHERE action = 'forget_subject'
             AND subject = event_crypto.key_id_digest(event_crypto.subject_key_id($1, 'u3', 1))
             AND key_ids @> ARRAY[event_crypto.key_id_digest(event_crypto.subject_key_id($1, 'u3', 1))]",
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
            &format!("SELECT count(*) FROM {t} WHERE subject_id = 'm1' AND payload->>'email' NOT LIKE '$ec2$%'"),
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
    assert!(first.starts_with("$ec2$"), "stored encrypted: {first}");
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
fn reencrypt_table_passes_over_every_shard_of_a_partitioned_table_distributed_by_bigint() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut c, mut workers)) = citus("reencrypt") else {
        return;
    };
    let tg = tag("re");
    let t = format!("ev_{tg}");
    let prefix = format!("{tg}:");
    let subjects: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    // a partitioned table distributed by a bigint tenant id, keyed by another column (the subject); rows written
    // before protect(): plaintext on the shards
    for sql in [
        format!(
            "CREATE TABLE {t} (id bigserial, tenant_id bigint NOT NULL, subject_id text NOT NULL, created_at date NOT NULL,
                               payload jsonb, PRIMARY KEY (tenant_id, id, created_at)) PARTITION BY RANGE (created_at)"
        ),
        format!("CREATE TABLE {t}_2025 PARTITION OF {t} FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"),
        format!("CREATE TABLE {t}_2026 PARTITION OF {t} FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"),
        format!("SELECT create_distributed_table('{t}', 'tenant_id')"),
    ] {
        c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let insert = |c: &mut Client, n: i32| {
        c.execute(
            &format!(
                "INSERT INTO {t} (tenant_id, subject_id, created_at, payload)
                 SELECT i % 5, s, DATE '2025-06-01' + (i * 40), jsonb_build_object('email', s || '@x.io', 'i', i)
                 FROM unnest($1::text[]) s, generate_series(1, $2) i"
            ),
            &[&subjects, &n],
        )
        .unwrap();
    };
    insert(&mut c, 5);
    c.batch_execute(&format!(
        "SELECT event_crypto.protect('{t}', 'payload', fields => ARRAY['email'], key_column => 'subject_id', key_prefix => '{prefix}')"
    ))
    .unwrap();
    let total = (subjects.len() * 5) as i64;
    let encrypted = |c: &mut Client| -> i64 {
        c.query_one(
            &format!("SELECT count(*) FROM {t} WHERE payload->>'email' LIKE '$ec2$%'"),
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(
        encrypted(&mut c),
        0,
        "protect() leaves existing rows to reencrypt_table()"
    );

    // the shell table on the coordinator holds no rows: one batch over it must not end "finished" having seen none
    let e = c
        .query(
            &format!("SELECT * FROM event_crypto.reencrypt_batch('{t}_2025', 'payload', 100)"),
            &[],
        )
        .expect_err("reencrypt_batch on a distributed table");
    let (code, message, _, hint) = event_crypto_it::sql_error(&e);
    assert_eq!(code, "0A000", "{message}");
    assert!(message.contains("Citus distributed table"), "{message}");
    assert!(hint.unwrap_or_default().contains("reencrypt_table"));

    // reencrypt_table on the coordinator: every shard of every partition, in batches of 3 on the nodes holding them;
    // the subjects' keys are made by the coordinator at the shard triggers' request
    let counts = |c: &mut Client| -> (i64, i64, i64) {
        let r = c
            .query_one(&format!("CALL event_crypto.reencrypt_table('{t}', 'payload', 3)"), &[])
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    // (a pass goes by physical position up to where the table ended when it began: the new versions of rows it
    // rewrote in a page it had not finished are seen again, and counted as scanned, not rewritten)
    let (scanned, rewritten, invalid) = counts(&mut c);
    assert!(scanned >= total, "every row seen: {scanned}");
    assert_eq!((rewritten, invalid), (total, 0), "every row encrypted");
    assert_eq!(encrypted(&mut c), total);
    let emails: Vec<Option<String>> = c
        .query(
            &format!(
                "SELECT event_crypto.decrypt_fields(payload)->>'email' FROM {t} WHERE subject_id = 'p3' ORDER BY id"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(emails, vec![Some("p3@x.io".to_string()); 5]);
    // the passes ran on the workers: their progress rows name the shards they passed over
    let mut shards_done = 0i64;
    for w in workers.iter_mut() {
        let n: i64 = w
            .query_one(
                "SELECT count(*) FROM event_crypto.reencrypt_progress
                 WHERE table_name::text LIKE $1 || '%' AND finished_at IS NOT NULL",
                &[&t],
            )
            .unwrap()
            .get(0);
        shards_done += n;
    }
    let shards: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid IN ($1::text::regclass, $2::text::regclass)",
            &[&format!("{t}_2025"), &format!("{t}_2026")],
        )
        .unwrap()
        .get(0);
    assert_eq!(shards_done, shards, "one finished pass per shard");

    // rotation, then retirement: the old version's use is counted on the shards, and re-encryption frees it
    let key: String = c
        .query_one("SELECT event_crypto.subject_key_id($1, 'p3', 1)", &[&prefix])
        .unwrap()
        .get(0);
    c.execute("SELECT event_crypto.rotate_key($1)", &[&key]).unwrap();
    let used = |c: &mut Client| -> i64 {
        c.query(
            "SELECT coalesce(sum(rows), 0)::bigint FROM event_crypto.key_version_usage($1, 1)",
            &[&key],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .sum()
    };
    assert_eq!(used(&mut c), 5, "the shards' rows under version 1 are counted");
    let e = c
        .execute("SELECT event_crypto.retire_key_version($1, 1)", &[&key])
        .unwrap_err();
    assert_eq!(event_crypto_it::sql_error(&e).0, "55006", "{e}");
    let (scanned, rewritten, invalid) = counts(&mut c);
    assert!(scanned >= total, "every row seen: {scanned}");
    assert_eq!((rewritten, invalid), (5, 0), "only p3's rows are rewritten");
    assert_eq!(used(&mut c), 0);
    c.execute("SELECT event_crypto.retire_key_version($1, 1)", &[&key])
        .unwrap();
    assert_eq!(
        c.query(
            &format!("SELECT event_crypto.decrypt_fields(payload)->>'email' FROM {t} WHERE subject_id = 'p3'"),
            &[]
        )
        .unwrap()
        .len(),
        5
    );
    c.batch_execute(&format!("DROP TABLE {t} CASCADE")).unwrap();
}

#[test]
#[ignore = "needs a Citus coordinator and two workers (EC_CITUS_COORDINATOR, EC_CITUS_WORKERS): run with -- --ignored, see docs/scaling.md#citus"]
fn new_subjects_get_their_key_from_the_coordinator_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut c, mut workers)) = citus("new_subjects") else {
        return;
    };
    let tg = tag("new");
    let t = format!("ev_{tg}");
    let prefix = format!("{tg}:");
    let tenant = format!("tenant-{tg}");
    let app = format!("app_{tg}");
    distributed_events(&mut c, &t, &prefix, &tenant);
    // the application has its table privileges only: no event_crypto role, no USAGE on the schema
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {app}; CREATE ROLE {app} LOGIN;
         GRANT INSERT, SELECT ON {t} TO {app}; GRANT USAGE ON SEQUENCE {t}_id_seq TO {app};"
    ))
    .unwrap();
    let coordinator = std::env::var("EC_CITUS_COORDINATOR").unwrap();
    let app_conn = || Client::connect(&format!("{coordinator} user={app}"), NoTls).unwrap();

    // 24 subjects no key exists for, from two sessions at once, each inserting every subject: the shard triggers on
    // both workers ask the coordinator, and each subject ends up with exactly one key
    let subjects: Vec<String> = (0..24).map(|i| format!("n{i}")).collect();
    let threads: Vec<_> = (0..2)
        .map(|k| {
            let (t, subjects, mut a) = (t.clone(), subjects.clone(), app_conn());
            std::thread::spawn(move || {
                let mut order = subjects.clone();
                if k == 1 {
                    order.reverse();
                }
                for s in &order {
                    a.execute(
                        &format!(
                            "INSERT INTO {t} (subject_id, stream_id, payload)
                             VALUES ($1, 'stream-' || $1, jsonb_build_object('email', upper($1) || '@X.io'))"
                        ),
                        &[s],
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let key_rows = |cl: &mut Client| -> Vec<(String, i32, String, Vec<u8>)> {
        cl.query(
            "SELECT key_id, version, created_by, wrapped_key FROM event_crypto.keys
             WHERE key_id LIKE $1 || '%' ORDER BY key_id, version",
            &[&prefix],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    };
    let on_coordinator = key_rows(&mut c);
    assert_eq!(
        on_coordinator.len(),
        subjects.len(),
        "one key per subject: {on_coordinator:?}"
    );
    assert!(
        on_coordinator.iter().all(|(_, v, by, _)| *v == 1 && *by == app),
        "created for the inserting role"
    );
    for w in workers.iter_mut() {
        assert_eq!(key_rows(w), on_coordinator, "every node holds the same keys");
    }
    let (rows, plain): (i64, i64) = {
        let r = c
            .query_one(
                &format!("SELECT count(*), count(*) FILTER (WHERE payload->>'email' NOT LIKE '$ec2$%') FROM {t}"),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, plain), (48, 0), "every row stored encrypted");
    assert_eq!(
        decrypted_emails(&mut c, &t, "n7"),
        vec![Some("N7@X.io".to_string()), Some("N7@X.io".to_string())]
    );
    // the creations are audited on the coordinator as automatic, by the inserting role
    let audited: i64 = c
        .query_one(
            "SELECT count(DISTINCT k) FROM event_crypto.audit_log, unnest(key_ids) AS k
             WHERE k IN (SELECT event_crypto.key_id_digest(event_crypto.subject_key_id($1, s, 1)) FROM unnest($3::text[]) s)
               AND action = 'create_key' AND details->>'inserter' = $2",
            &[&prefix, &app, &subjects],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, subjects.len() as i64, "every creation is in the audit log");

    // REPEATABLE READ: the key the coordinator committed is read by the shard trigger all the same
    let mut a = app_conn();
    let mut tx = a
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .unwrap();
    tx.execute(
        &format!("INSERT INTO {t} (subject_id, stream_id, payload) VALUES ('rr', 'x', '{{\"email\":\"rr@x.io\"}}')"),
        &[],
    )
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(decrypted_emails(&mut c, &t, "rr"), vec![Some("rr@x.io".to_string())]);

    // an insert that rolls back keeps the key it had created (as create_key() would): it is committed on every node
    let mut tx = a.transaction().unwrap();
    tx.execute(
        &format!("INSERT INTO {t} (subject_id, stream_id, payload) VALUES ('gone', 'x', '{{\"email\":\"g@x.io\"}}')"),
        &[],
    )
    .unwrap();
    tx.rollback().unwrap();
    for cl in std::iter::once(&mut c).chain(workers.iter_mut()) {
        let n: i64 = cl
            .query_one(
                "SELECT count(*) FROM event_crypto.keys WHERE key_id = event_crypto.subject_key_id($1, 'gone', 1)",
                &[&prefix],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }

    // an insert in a session on a worker (Citus's metadata is on every node): rows for its own shards and for the
    // other worker's, all of new subjects; each key is made by the coordinator, none inside the inserting
    // transaction (which would hold Citus's lock on the catalog that the other worker's request then waits for)
    let worker_conn = std::env::var("EC_CITUS_WORKERS").unwrap();
    let worker_conn = worker_conn.split(';').next().unwrap();
    let mut on_worker = Client::connect(&format!("{worker_conn} user={app}"), NoTls).unwrap();
    on_worker
        .execute(
            &format!(
                "INSERT INTO {t} (subject_id, stream_id, payload)
                 SELECT 'w' || i, 'x', jsonb_build_object('email', i || '@x.io') FROM generate_series(1, 12) i"
            ),
            &[],
        )
        .unwrap();
    let from_worker: i64 = c
        .query_one(
            "SELECT count(*) FROM event_crypto.keys WHERE key_id LIKE $1 || 'w%'",
            &[&prefix],
        )
        .unwrap()
        .get(0);
    assert_eq!(from_worker, 12);
    assert_eq!(decrypted_emails(&mut c, &t, "w7"), vec![Some("7@x.io".to_string())]);
    drop(on_worker);

    // a transaction that wrote the key catalog itself (create_key) and then inserts a new subject's event: the
    // coordinator's write waits for that transaction's lock; the request is cancelled after
    // event_crypto.citus_key_request_timeout and the row refused, rather than waiting forever
    c.execute("ALTER SYSTEM SET event_crypto.citus_key_request_timeout = '1s'", &[])
        .unwrap();
    c.execute("SELECT pg_reload_conf()", &[]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT event_crypto.create_key($1 || 'explicit')", &[&prefix])
        .unwrap();
    let started = std::time::Instant::now();
    let e = tx
        .execute(
            &format!(
                "INSERT INTO {t} (subject_id, stream_id, payload) VALUES ('late', 'x', '{{\"email\":\"l@x.io\"}}')"
            ),
            &[],
        )
        .unwrap_err();
    let waited = started.elapsed();
    tx.rollback().unwrap();
    c.execute("ALTER SYSTEM RESET event_crypto.citus_key_request_timeout", &[])
        .unwrap();
    c.execute("SELECT pg_reload_conf()", &[]).unwrap();
    let (code, msg, detail, hint) = sql_error(&e);
    assert_eq!(code, "55000", "{msg}");
    assert!(detail.unwrap_or_default().contains("statement timeout"), "{msg}");
    assert!(hint.unwrap_or_default().contains("transaction of their own"));
    assert!(waited < std::time::Duration::from_secs(8), "{waited:?}");

    // the coordinator's function: not callable by the application, and it creates only what the column would
    let e = a
        .execute(
            "SELECT event_crypto.citus_create_key($1::text::regclass, 'payload', $2 || 'x', current_user)",
            &[&t, &prefix],
        )
        .unwrap_err();
    assert_eq!(sql_error(&e).0, "42501", "{e}");
    for (key_id, role) in [
        ("someone-elses-key".to_string(), app.clone()),
        (format!("{prefix}x#2"), app.clone()), // a later generation while the first is not shredded
        (format!("{prefix}x"), "postgres_no_such_role".to_string()),
    ] {
        let e = c
            .execute(
                "SELECT event_crypto.citus_create_key($1::text::regclass, 'payload', $2, $3)",
                &[&t, &key_id, &role],
            )
            .unwrap_err();
        assert_eq!(sql_error(&e).0, "42501", "{key_id} for {role}: {e}");
    }
    c.batch_execute(&format!("REVOKE INSERT ON {t} FROM {app}")).unwrap();
    let e = c
        .execute(
            "SELECT event_crypto.citus_create_key($1::text::regclass, 'payload', $2 || 'x', $3)",
            &[&t, &prefix, &app],
        )
        .unwrap_err();
    assert_eq!(sql_error(&e).0, "42501", "a role that may not insert: {e}");

    drop(a);
    c.batch_execute(&format!("DROP TABLE {t} CASCADE; DROP ROLE {app}"))
        .unwrap();
}

#[test]
#[ignore = "needs a Citus coordinator and two workers (EC_CITUS_COORDINATOR, EC_CITUS_WORKERS): run with -- --ignored, see docs/scaling.md#citus"]
fn retention_on_a_distributed_table_forgets_inactive_subjects_on_every_node() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((mut c, mut workers)) = citus("retention") else {
        return;
    };
    let tg = tag("ret");
    let t = format!("ev_{tg}");
    let prefix = format!("{tg}:");
    for sql in [
        format!(
            "CREATE TABLE {t} (id bigserial, subject_id text NOT NULL, created_at timestamptz NOT NULL, payload jsonb,
                               PRIMARY KEY (subject_id, id))"
        ),
        format!("SELECT create_distributed_table('{t}', 'subject_id')"),
        format!(
            "SELECT event_crypto.protect('{t}', 'payload', fields => ARRAY['email'], key_column => 'subject_id', key_prefix => '{prefix}')"
        ),
    ] {
        c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    // 6 subjects gone quiet three years ago, 6 active now, spread over both workers
    c.execute(
        &format!(
            "INSERT INTO {t} (subject_id, created_at, payload)
             SELECT CASE WHEN i <= 6 THEN 'old' ELSE 'new' END || i,
                    CASE WHEN i <= 6 THEN now() - interval '3 years' ELSE now() END,
                    jsonb_build_object('email', i || '@x.io')
             FROM generate_series(1, 12) i"
        ),
        &[],
    )
    .unwrap();
    c.execute(
        "SELECT event_crypto.set_retention(\"table\" => $1::text::regclass, inactive_for => '2 years', time_column => 'created_at')",
        &[&t],
    )
    .unwrap();
    let due = |c: &mut Client, dry: bool| -> Vec<(Option<String>, String)> {
        c.query(
            "SELECT subject, reason FROM event_crypto.enforce_retention(dry_run => $1) WHERE key_id LIKE $2 || '%' OR key_id IS NULL ORDER BY subject",
            &[&dry, &prefix],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let planned = due(&mut c, true);
    assert_eq!(
        planned.iter().filter_map(|(s, _)| s.clone()).collect::<Vec<_>>(),
        (1..=6).map(|i| format!("old{i}")).collect::<Vec<_>>(),
        "the inactive subjects, read from the shards: {planned:?}"
    );
    due(&mut c, false);
    // every node: the old subjects' keys shredded, the new ones' live; the old events read as shredded
    for cl in std::iter::once(&mut c).chain(workers.iter_mut()) {
        let r = cl
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'shredded' AND key_id IN
                            (SELECT event_crypto.key_id_digest($1 || 'old' || i) FROM generate_series(1, 6) i)),
                        count(*) FILTER (WHERE status <> 'shredded' AND key_id LIKE $1 || 'new%')
                 FROM event_crypto.keys",
                &[&prefix],
            )
            .unwrap();
        assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (6, 6));
    }
    let readable: i64 = c
        .query_one(
            &format!("SELECT count(event_crypto.decrypt_fields(payload)->>'email') FILTER (WHERE event_crypto.decrypt_fields(payload)->>'email' LIKE '%@x.io') FROM {t}"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(readable, 6, "only the active subjects' events still read");
    c.batch_execute(&format!(
        "SELECT event_crypto.drop_retention(\"table\" => '{t}'); DROP TABLE {t} CASCADE"
    ))
    .unwrap();
}
