//! Issue 14 (operations), on servers the tests start themselves (a throwaway data directory under the clusters'
//! scratch directory, Unix socket only, with the binaries of EC_IT_PG_BIN):
//!
//! - `docs/postgres_exporter/queries.yaml`: every query runs as a role that has exactly the grants of
//!   `docs/postgres_exporter/grants.sql` and returns exactly the columns the file declares (labels as text,
//!   metrics as numbers, no label set twice), with the figures the data behind them implies, before and after a
//!   maintenance run.
//! - pg_cron (`shared_preload_libraries = 'pg_cron,event_crypto'`, jobs scheduled as docs/operations.md shows):
//!   a `run_maintenance()` job and a `reencrypt_batch()` job run in the application's database as a role of
//!   `event_crypto_admin`; the run is recorded (`stats_maintenance`), it rotated the key version past its usage
//!   limit, and the re-encryption job advanced `reencrypt_progress` and rewrote rows under the new version.

use event_crypto_it::{as_postgres, chown_postgres, dsn, pg_bin, scratch};
use postgres::{Client, NoTls};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str = "0be7a7105c0be7a7105c0be7a7105c0be7a7105c0be7a7105c0be7a7105c0be7";

/// A throwaway server: `scratch/ops-<name>`, socket only.
struct Server {
    dir: PathBuf,
    port: u16,
}

impl Server {
    /// initdb and start with `settings` added to postgresql.conf (`{dir}` in them: the server's directory, where
    /// its socket is). `offset` picks the port (after cluster F's and the one master_key_sources.rs uses), which
    /// only names the socket.
    fn start(name: &str, offset: u16, settings: &str) -> Server {
        let f_port: u16 = dsn("F")
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .expect("EC_IT_F names a port");
        let s = Server {
            dir: PathBuf::from(scratch()).join(format!("ops-{name}")),
            port: f_port + offset,
        };
        s.stop();
        let _ = std::fs::remove_dir_all(&s.dir);
        std::fs::create_dir_all(&s.dir).unwrap();
        chown_postgres(&s.dir);
        let data = s.dir.join("data");
        as_postgres(
            &pg_bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "listen_addresses = ''\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 20\n\
             event_crypto.master_key_command = 'echo {KEY}'\n{}\n",
            s.port,
            s.dir.display(),
            settings.replace("{dir}", &s.dir.display().to_string())
        ));
        std::fs::write(&conf, text).unwrap();
        as_postgres(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                s.dir.join("server.log").to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        s
    }

    fn connect(&self, user: &str, db: &str) -> Client {
        postgres::Config::new()
            .host_path(&self.dir)
            .port(self.port)
            .user(user)
            .dbname(db)
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {db} as {user}: {e}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", &pg_bin("pg_ctl")])
                .args(["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// One query of queries.yaml: its metric prefix, SQL and columns (name, usage) in the order declared.
struct ExporterQuery {
    prefix: String,
    sql: String,
    columns: Vec<(String, String)>,
}

/// queries.yaml, read with PyYAML (python3-yaml, installed by .ci/setup.sh) into JSON, and checked for the shape
/// postgres_exporter's --extend.query-path reads.
fn exporter_queries() -> Vec<ExporterQuery> {
    let file = repo_file("docs/postgres_exporter/queries.yaml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            file.to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs (.ci/setup.sh installs python3-yaml)");
    assert!(
        out.status.success(),
        "queries.yaml does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = doc.as_object().expect("queries.yaml is a mapping of metric prefixes");
    assert!(!entries.is_empty());
    entries
        .iter()
        .map(|(prefix, e)| {
            let e = e.as_object().unwrap_or_else(|| panic!("{prefix}: not a mapping"));
            for k in e.keys() {
                assert!(
                    ["query", "master", "cache_seconds", "metrics"].contains(&k.as_str()),
                    "{prefix}: unknown key {k}"
                );
            }
            assert!(prefix.starts_with("event_crypto_"), "{prefix}: not under event_crypto_");
            assert_eq!(
                e.get("master"),
                Some(&Value::Bool(true)),
                "{prefix}: runs in the extension's database only"
            );
            if let Some(c) = e.get("cache_seconds") {
                assert!(c.as_u64().is_some_and(|c| c > 0), "{prefix}: cache_seconds");
            }
            let sql = e["query"]
                .as_str()
                .unwrap_or_else(|| panic!("{prefix}: query"))
                .to_string();
            let columns: Vec<(String, String)> = e["metrics"]
                .as_array()
                .unwrap_or_else(|| panic!("{prefix}: metrics is a list"))
                .iter()
                .map(|m| {
                    let m = m.as_object().unwrap();
                    assert_eq!(m.len(), 1, "{prefix}: one column per metrics entry");
                    let (name, spec) = m.iter().next().unwrap();
                    let usage = spec["usage"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{prefix}.{name}: usage"));
                    assert!(
                        ["LABEL", "GAUGE", "COUNTER"].contains(&usage),
                        "{prefix}.{name}: usage {usage}"
                    );
                    let description = spec["description"].as_str().unwrap_or_default();
                    assert!(!description.is_empty(), "{prefix}.{name}: description");
                    (name.clone(), usage.to_string())
                })
                .collect();
            assert!(columns.iter().any(|(_, u)| u != "LABEL"), "{prefix}: no metric column");
            ExporterQuery {
                prefix: prefix.clone(),
                sql,
                columns,
            }
        })
        .collect()
}

/// Runs every query of queries.yaml on `c` and checks its columns against the declaration; returns the rows of
/// each (as JSON objects), by metric prefix.
fn run_exporter_queries(c: &mut Client, queries: &[ExporterQuery]) -> std::collections::BTreeMap<String, Vec<Value>> {
    use postgres::types::Type;
    let mut out = std::collections::BTreeMap::new();
    for q in queries {
        let stmt = c
            .prepare(&q.sql)
            .unwrap_or_else(|e| panic!("{}: the query fails: {e}", q.prefix));
        let returned: Vec<(String, Type)> = stmt
            .columns()
            .iter()
            .map(|col| (col.name().to_string(), col.type_().clone()))
            .collect();
        let mut names: Vec<&str> = returned.iter().map(|(n, _)| n.as_str()).collect();
        let mut declared: Vec<&str> = q.columns.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        declared.sort_unstable();
        assert_eq!(
            names, declared,
            "{}: the columns returned and declared differ",
            q.prefix
        );
        for (name, ty) in &returned {
            let usage = &q.columns.iter().find(|(n, _)| n == name).unwrap().1;
            let ok = if usage == "LABEL" {
                [Type::TEXT, Type::VARCHAR, Type::NAME].contains(ty)
            } else {
                [
                    Type::INT2,
                    Type::INT4,
                    Type::INT8,
                    Type::FLOAT4,
                    Type::FLOAT8,
                    Type::NUMERIC,
                ]
                .contains(ty)
            };
            assert!(ok, "{}.{name}: {usage} column of type {ty}", q.prefix);
        }
        let rows: Vec<Value> = c
            .query(&format!("SELECT to_jsonb(q) FROM ({}) q", q.sql), &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, Value>(0))
            .collect();
        let labels: Vec<Vec<Value>> = rows
            .iter()
            .map(|r| {
                q.columns
                    .iter()
                    .filter(|(_, u)| u == "LABEL")
                    .map(|(n, _)| r[n].clone())
                    .collect()
            })
            .collect();
        let mut unique = labels.clone();
        unique.sort_by_key(|l| format!("{l:?}"));
        unique.dedup();
        assert_eq!(unique.len(), labels.len(), "{}: a label set appears twice", q.prefix);
        for r in &rows {
            for (n, u) in &q.columns {
                if u != "LABEL" {
                    assert!(r[n].is_number(), "{}.{n} is not a number: {r}", q.prefix);
                }
            }
        }
        out.insert(q.prefix.clone(), rows);
    }
    out
}

/// The value of metric column `column` of the one row of `prefix` (or of the row whose label `label` is `value`).
fn metric(
    rows: &std::collections::BTreeMap<String, Vec<Value>>,
    prefix: &str,
    label: Option<(&str, &str)>,
    column: &str,
) -> f64 {
    let rows = &rows[prefix];
    let row = match label {
        None => {
            assert_eq!(rows.len(), 1, "{prefix}: one row");
            &rows[0]
        }
        Some((l, v)) => rows
            .iter()
            .find(|r| r[l] == v)
            .unwrap_or_else(|| panic!("{prefix}: no row with {l} = {v}")),
    };
    row[column]
        .as_f64()
        .unwrap_or_else(|| panic!("{prefix}.{column}: {row}"))
}

#[test]
fn the_postgres_exporter_queries_run_with_the_documented_grants_and_return_what_they_declare() {
    let queries = exporter_queries();
    let s = Server::start(
        "exporter",
        2,
        "shared_preload_libraries = 'event_crypto'\nevent_crypto.rotate_after_encryptions = 10",
    );
    let mut admin = s.connect("postgres", "postgres");
    admin
        .batch_execute(
            "CREATE EXTENSION event_crypto;
             CREATE ROLE postgres_exporter LOGIN;
             SELECT event_crypto.create_key('x:used');
             SELECT count(event_crypto.encrypt_value(to_jsonb(i), 'x:used')) FROM generate_series(1, 15) i;
             SELECT event_crypto.create_key('x:half');
             SELECT count(event_crypto.encrypt_value(to_jsonb(i), 'x:half')) FROM generate_series(1, 6) i;
             SELECT event_crypto.create_key('x:gone');
             SELECT event_crypto.shred_key('x:gone');",
        )
        .unwrap();
    admin
        .batch_execute(&std::fs::read_to_string(repo_file("docs/postgres_exporter/grants.sql")).unwrap())
        .unwrap();
    let mut exporter = s.connect("postgres_exporter", "postgres");
    // the monitoring role reads figures, never keys or the list of key ids, and cannot act
    for sql in [
        "SELECT count(*) FROM event_crypto.keys",
        "SELECT count(*) FROM event_crypto.key_info",
        "SELECT count(*) FROM event_crypto.stats_key_versions",
        "SELECT count(*) FROM event_crypto.key_usage",
        "SELECT count(*) FROM event_crypto.audit_log",
        "SELECT event_crypto.run_maintenance()",
        "SELECT event_crypto.shred_key('x:used')",
    ] {
        let e = exporter.query(sql, &[]).unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{sql}: {e}");
    }

    // Before any maintenance run: 21 encryptions pending, x:used past its limit of 10, x:half at 60%.
    let before = run_exporter_queries(&mut exporter, &queries);
    let active = Some(("status", "active"));
    assert_eq!(metric(&before, "event_crypto_usage", None, "tracking"), 1.0);
    assert_eq!(
        metric(&before, "event_crypto_usage", None, "rotate_after_encryptions"),
        10.0
    );
    assert_eq!(metric(&before, "event_crypto_keys", active, "key_versions"), 2.0);
    assert_eq!(metric(&before, "event_crypto_keys", active, "encryptions"), 21.0);
    assert_eq!(
        metric(&before, "event_crypto_keys", active, "pending_encryptions"),
        21.0
    );
    assert_eq!(
        metric(&before, "event_crypto_keys", active, "nonce_budget_max_used_pct"),
        150.0
    );
    assert_eq!(
        metric(&before, "event_crypto_keys", active, "versions_over_half_budget"),
        2.0
    );
    assert_eq!(metric(&before, "event_crypto_keys", active, "versions_at_limit"), 1.0);
    assert_eq!(
        metric(
            &before,
            "event_crypto_keys",
            Some(("status", "shredded")),
            "key_versions"
        ),
        1.0
    );
    assert_eq!(before["event_crypto_keys"].len(), 4, "a row per status");
    assert_eq!(metric(&before, "event_crypto_shreds", None, "shredded_key_ids"), 1.0);
    assert!(metric(&before, "event_crypto_shreds", None, "last_shred_timestamp_seconds") > 1.6e9);
    assert_eq!(metric(&before, "event_crypto_maintenance", None, "runs_total"), 0.0);
    assert_eq!(
        metric(&before, "event_crypto_maintenance", None, "last_run_timestamp_seconds"),
        0.0
    );
    assert!(
        before["event_crypto_maintenance_action"].is_empty(),
        "no action before the first run"
    );
    assert_eq!(
        metric(&before, "event_crypto_audit", None, "head_seq"),
        4.0,
        "3 create_key, 1 shred_key"
    );
    let master = &before["event_crypto_master_keys"];
    assert_eq!(master.len(), 1);
    assert_eq!(master[0]["active"], 1);
    assert_eq!(master[0]["live_key_versions"], 2);
    assert_eq!(master[0]["master_key_id"].as_str().map(str::len), Some(16));

    // After a run: the counts flushed, x:used rotated, the run and each of its actions reported.
    admin
        .batch_execute("SELECT * FROM event_crypto.run_maintenance()")
        .unwrap();
    let after = run_exporter_queries(&mut exporter, &queries);
    for q in &queries {
        assert!(
            !after[&q.prefix].is_empty(),
            "{}: no row after a maintenance run",
            q.prefix
        );
    }
    assert_eq!(metric(&after, "event_crypto_keys", active, "key_versions"), 2.0);
    assert_eq!(metric(&after, "event_crypto_keys", active, "encryptions"), 6.0);
    assert_eq!(metric(&after, "event_crypto_keys", active, "pending_encryptions"), 0.0);
    assert_eq!(
        metric(&after, "event_crypto_keys", active, "nonce_budget_max_used_pct"),
        60.0
    );
    assert_eq!(
        metric(&after, "event_crypto_keys", active, "versions_over_half_budget"),
        1.0
    );
    assert_eq!(metric(&after, "event_crypto_keys", active, "versions_at_limit"), 0.0);
    let retired = Some(("status", "retired"));
    assert_eq!(metric(&after, "event_crypto_keys", retired, "key_versions"), 1.0);
    assert_eq!(metric(&after, "event_crypto_keys", retired, "encryptions"), 15.0);
    assert_eq!(metric(&after, "event_crypto_maintenance", None, "runs_total"), 1.0);
    assert_eq!(
        metric(&after, "event_crypto_maintenance", None, "runs_not_ok_total"),
        0.0
    );
    assert_eq!(metric(&after, "event_crypto_maintenance", None, "last_run_ok"), 1.0);
    let finished = metric(&after, "event_crypto_maintenance", None, "last_run_timestamp_seconds");
    assert_eq!(
        metric(&after, "event_crypto_maintenance", None, "last_ok_timestamp_seconds"),
        finished
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - finished).abs() < 60.0,
        "the run finished just now ({finished}, now {now})"
    );
    let actions: Vec<&str> = after["event_crypto_maintenance_action"]
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "flush_usage",
            "usage_rotation",
            "scheduled_rotation",
            "retention",
            "retire",
            "token_purge"
        ]
    );
    assert!(after["event_crypto_maintenance_action"].iter().all(|r| r["ok"] == 1));
    assert!(
        metric(&after, "event_crypto_audit", None, "head_seq")
            > metric(&before, "event_crypto_audit", None, "head_seq"),
        "the rotation was audited"
    );
    assert_eq!(after["event_crypto_master_keys"][0]["live_key_versions"], 3);
}

#[test]
fn pg_cron_runs_maintenance_and_reencryption_jobs() {
    let s = Server::start(
        "cron",
        3,
        // cron.host: the socket directory, so that pg_cron's libpq connections reach this server
        "shared_preload_libraries = 'pg_cron,event_crypto'\ncron.database_name = 'postgres'\ncron.host = '{dir}'\n\
         event_crypto.rotate_after_encryptions = 100\nlog_min_messages = warning",
    );
    let mut pg = s.connect("postgres", "postgres");
    // the application's database, with the data the two jobs work on
    pg.batch_execute("CREATE DATABASE app").unwrap();
    pg.batch_execute("CREATE ROLE ec_cron LOGIN").unwrap();
    let mut app = s.connect("postgres", "app");
    app.batch_execute(
        "CREATE EXTENSION event_crypto;
         GRANT event_crypto_admin TO ec_cron;
         SELECT event_crypto.create_key('cron:usage');
         SELECT count(event_crypto.encrypt_value(to_jsonb(i), 'cron:usage')) FROM generate_series(1, 120) i;
         SELECT event_crypto.create_key('cron:rot');
         CREATE TABLE events (id bigserial PRIMARY KEY, payload jsonb);
         INSERT INTO events (payload)
         SELECT event_crypto.encrypt_fields(jsonb_build_object('email', 'u' || i || '@x.io'), '{email}', 'cron:rot')
         FROM generate_series(1, 25) i;
         SELECT event_crypto.rotate_key('cron:rot');
         GRANT SELECT, UPDATE ON events TO ec_cron;",
    )
    .unwrap();

    // pg_cron in the postgres database; the jobs run in app as ec_cron (docs/operations.md)
    pg.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    let version: String = pg
        .query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'", &[])
        .unwrap()
        .get(0);
    let seconds = version
        .split(['.', '-'])
        .take(2)
        .map(|p| p.parse::<u32>().unwrap_or(0))
        .collect::<Vec<_>>()
        >= vec![1, 5];
    // pg_cron 1.5 and later run jobs every few seconds; before, the finest schedule is every minute
    let schedule = if seconds { "2 seconds" } else { "* * * * *" };
    eprintln!("pg_cron {version}: schedule '{schedule}'");
    for (name, command) in [
        (
            "event-crypto-maintenance",
            "SELECT * FROM event_crypto.run_maintenance()",
        ),
        (
            "event-crypto-reencrypt",
            "SELECT * FROM event_crypto.reencrypt_batch('public.events', 'payload', 10)",
        ),
    ] {
        pg.execute(
            "SELECT cron.schedule_in_database($1, $2, $3, 'app', 'ec_cron')",
            &[&name, &schedule, &command],
        )
        .unwrap();
    }

    // wait for a finished run of each job (a minute boundary, with pg_cron before 1.5)
    let t = Instant::now();
    let deadline = t + Duration::from_secs(150);
    let runs = loop {
        let runs: Vec<(String, String, String)> = pg
            .query(
                "SELECT DISTINCT ON (j.jobname) j.jobname, d.status, COALESCE(d.return_message, '')
                 FROM cron.job_run_details d JOIN cron.job j USING (jobid)
                 WHERE d.status IN ('succeeded', 'failed') ORDER BY j.jobname, d.runid",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if runs.len() == 2 {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "the pg_cron jobs did not both run within 150 s: {runs:?}; server log:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("both jobs ran after {:?}: {runs:?}", t.elapsed());
    for (name, status, message) in &runs {
        assert_eq!(status, "succeeded", "{name}: {message}");
    }
    // (by job id: unscheduling by name finds only the jobs of the role that calls it)
    pg.batch_execute(
        "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname IN ('event-crypto-maintenance', 'event-crypto-reencrypt')",
    )
    .unwrap();

    // the maintenance run: recorded for operators, by ec_cron through pg_cron, and it did its work
    let (runs, by, via, ok, not_ok): (i64, String, String, bool, Vec<String>) = app
        .query_one(
            "SELECT runs, last_run_by::text, last_run_via, last_ok, last_not_ok_actions FROM event_crypto.stats_maintenance",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .unwrap();
    assert!(runs >= 1, "the run is recorded");
    assert_eq!((by.as_str(), via.as_str()), ("ec_cron", "pg_cron"));
    assert!(ok, "every action ok: {not_ok:?}");
    let versions: Vec<(i32, String)> = app
        .query(
            "SELECT version, status FROM event_crypto.key_info WHERE key_id = 'cron:usage' ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        versions,
        [(1, "retired".to_string()), (2, "active".to_string())],
        "the usage rotation ran"
    );
    let actor: String = app
        .query_one(
            "SELECT actor::text FROM event_crypto.audit_log WHERE action = 'usage_rotation'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(actor, "ec_cron");

    // the re-encryption job: progress recorded, rows moved to version 2 of cron:rot
    let (batches, scanned, rewritten): (i64, i64, i64) = app
        .query_one(
            "SELECT batches, rows_scanned, rows_rewritten FROM event_crypto.reencrypt_progress
             WHERE table_name = 'events'::regclass AND column_name = 'payload'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .expect("reencrypt_progress has the table");
    assert!(
        batches >= 1 && scanned >= 10,
        "batches {batches}, rows scanned {scanned}"
    );
    let moved: i64 = app
        .query_one(
            "SELECT count(*) FROM events WHERE event_crypto.uses_key_version(payload, 'cron:rot', 2)",
            &[],
        )
        .unwrap()
        .get(0);
    // (a pass that ended restarts at the next call, with its counts from zero: with a schedule in seconds, more
    // batches than one may have run)
    assert!(
        moved >= 10 && moved >= rewritten,
        "rows under version 2: {moved}, rewritten in this pass: {rewritten}"
    );
}
