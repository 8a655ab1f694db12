//! Helpers for the integration tests. Connection strings come from the environment that `tests/clusters.sh`
//! writes (`EC_IT_A` ... `EC_IT_E`); a missing variable fails the test, it never skips it.

use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicU32, Ordering};

/// The connection string of cluster `name` ("A" to "E").
pub fn dsn(name: &str) -> String {
    let var = format!("EC_IT_{name}");
    std::env::var(&var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the integration tests through .ci/test.sh, which starts the clusters")
    })
}

pub fn connect(cluster: &str, db: &str) -> Client {
    Client::connect(&format!("{} dbname={db}", dsn(cluster)), NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to cluster {cluster} database {db}: {e}"))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Creates a fresh database with the extension installed; returns its name.
/// Drops and creates database `name` of `cluster` (empty, no extension).
pub fn recreate_db(cluster: &str, name: &str) {
    let mut c = connect(cluster, "postgres");
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
}

/// Creates a fresh database with the extension installed; returns its name.
pub fn fresh_db(cluster: &str, prefix: &str) -> String {
    let name = format!("{prefix}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
    recreate_db(cluster, &name);
    connect(cluster, &name)
        .batch_execute("CREATE EXTENSION event_crypto")
        .unwrap();
    name
}

/// The SQLSTATE and message of a failed statement.
pub fn sql_error(e: &postgres::Error) -> (String, String, Option<String>, Option<String>) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a database error: {e}"));
    (
        db.code().code().to_string(),
        db.message().to_string(),
        db.detail().map(String::from),
        db.hint().map(String::from),
    )
}

/// The key version recorded in an envelope's header (either format).
pub fn envelope_version(envelope: &str) -> u32 {
    event_crypto_core::envelope::Envelope::parse(envelope, &event_crypto_core::path::Location::root())
        .expect("an envelope")
        .key_version
}

/// Path of a PostgreSQL client program (pg_dump, pg_restore).
pub fn pg_bin(program: &str) -> String {
    format!(
        "{}/{program}",
        std::env::var("EC_IT_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into())
    )
}

/// The first column of every row of `sql`, as text.
pub fn texts(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Runs a PostgreSQL client program as the postgres OS user and asserts it succeeded.
fn run_pg_tool(program: &str, args: &[&str]) {
    let st = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &pg_bin(program)])
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(st.success(), "{program} {args:?} failed");
}

/// Dumps `db` of `cluster` in pg_dump's custom format; returns the file.
pub fn pg_dump(cluster: &str, db: &str) -> String {
    let file = format!(
        "{}/{db}.dump",
        std::env::var("EC_IT_SCRATCH").unwrap_or_else(|_| "/tmp".into())
    );
    run_pg_tool(
        "pg_dump",
        &["-Fc", "-f", &file, "-d", &format!("{} dbname={db}", dsn(cluster))],
    );
    file
}

/// Restores a dump into a new database `name` of `cluster` (stopping at the first error).
pub fn pg_restore(cluster: &str, dump: &str, name: &str) {
    recreate_db(cluster, name);
    run_pg_tool(
        "pg_restore",
        &[
            "--exit-on-error",
            "-d",
            &format!("{} dbname={name}", dsn(cluster)),
            dump,
        ],
    );
}

/// Connects to `db` of `cluster`, waiting up to a minute for the server (e.g. while it recovers from a crash).
pub fn connect_when_up(cluster: &str, db: &str) -> Client {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match Client::connect(&format!("{} dbname={db}", dsn(cluster)), NoTls) {
            Ok(c) => return c,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(200)),
            Err(e) => panic!("cluster {cluster} did not come back: {e}"),
        }
    }
}

/// Kills a server process with SIGKILL (the postmaster then restarts every backend and recovers).
pub fn kill9(pid: i32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -9 {pid} failed");
}

/// Kills a backend of the cluster in `dir` with SIGKILL and waits until its postmaster has reset every backend
/// (its log says so): a connection made before the postmaster noticed the death would land on the old incarnation
/// and be terminated by the reset.
pub fn kill9_and_wait_for_reset(dir: &str, pid: i32) {
    let log = format!("{dir}/server.log");
    let resets = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("all server processes terminated; reinitializing")
            .count()
    };
    let before = resets();
    kill9(pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while resets() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the postmaster of {dir} did not reset its backends"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The single bigint that `sql` returns (a count, usually).
pub fn one(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// The directory the clusters live in (`tests/clusters.sh` writes it to the environment).
pub fn scratch() -> String {
    std::env::var("EC_IT_SCRATCH").expect("EC_IT_SCRATCH is not set: run through .ci/test.sh")
}

/// The directory of cluster F, the one the tests restart with other master key rings.
pub fn f_dir() -> String {
    std::env::var("EC_IT_F_DIR").expect("EC_IT_F_DIR is not set: run through .ci/test.sh")
}

/// Restarts the server of cluster `name` ("a" to "f", the directory under the scratch directory) and waits for it.
pub fn restart_cluster(name: &str) {
    let dir = format!("{}/{name}", scratch());
    let st = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &pg_bin("pg_ctl")])
        .args(["-D", &format!("{dir}/data"), "-w", "-m", "fast", "restart"])
        .args(["-l", &format!("{dir}/server.log")])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "pg_ctl restart of cluster {name} failed");
}

/// Runs `program` with `args` as the OS user postgres (servers refuse to run as root), its output discarded;
/// panics if it fails.
pub fn as_postgres(program: &str, args: &[&str]) {
    let st = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", program])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{program} {args:?} failed");
}

/// Gives `p` to the OS user postgres.
pub fn chown_postgres(p: &std::path::Path) {
    let st = std::process::Command::new("chown")
        .args(["postgres:postgres", p.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
}
