//! Issue 12: a server whose master key source would make it wait for good still starts, promptly, says why in
//! its log, and answers every call that needs the key with "the master key could not be loaded": a FIFO as the
//! key file, a key file with a second hard link, a key command that never exits, one that leaves a process
//! holding its standard output. The key command's whole process group is killed when
//! `event_crypto.master_key_timeout` is up.
//!
//! These servers are started by the test itself (a throwaway data directory under the clusters' scratch
//! directory, Unix socket only, with the binaries of EC_IT_PG_BIN).

use event_crypto_it::{as_postgres, chown_postgres, dsn, pg_bin, scratch, sql_error};
use postgres::NoTls;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str = "5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a5ec12e7a";

struct Server {
    dir: PathBuf,
    port: u16,
}

impl Server {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A fresh data directory (initdb) under `scratch/keysrc-<name>`, owned by postgres, listening on a Unix socket
    /// in that directory only.
    fn init(name: &str) -> Server {
        // the port after cluster F's, used for the socket's name only (no TCP)
        let f_port: u16 = dsn("F")
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .and_then(|p| p.parse().ok())
            .expect("EC_IT_F names a port");
        let dir = PathBuf::from(scratch()).join(format!("keysrc-{name}"));
        let s = Server { dir, port: f_port + 1 };
        s.stop();
        let _ = std::fs::remove_dir_all(&s.dir);
        std::fs::create_dir_all(&s.dir).unwrap();
        chown_postgres(&s.dir);
        as_postgres(
            &pg_bin("initdb"),
            &[
                "-D",
                s.data().to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let conf = format!(
            "listen_addresses = ''\nport = {}\nunix_socket_directories = '{}'\nshared_preload_libraries = 'event_crypto'\n\
             fsync = off\nmax_connections = 10\ninclude_if_exists = 'case.conf'\n",
            s.port,
            s.dir.display()
        );
        let pc = s.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&pc).unwrap();
        text.push_str(&conf);
        std::fs::write(&pc, text).unwrap();
        s
    }

    /// Starts the server with `settings` (postgresql.conf lines); returns how long `pg_ctl start -w` took, or
    /// panics if it did not start within 20 s (after killing what hangs, so that the next test can run).
    fn start(&self, settings: &str) -> Duration {
        std::fs::write(self.data().join("case.conf"), settings).unwrap();
        chown_postgres(&self.data().join("case.conf"));
        let _ = std::fs::remove_file(self.log());
        let t = Instant::now();
        let ok = Command::new("runuser")
            .args(["-u", "postgres", "--", &pg_bin("pg_ctl")])
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                self.log().to_str().unwrap(),
                "-w",
                "-t",
                "20",
                "start",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        let took = t.elapsed();
        if !ok {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            self.kill();
            panic!("the server did not start within 20 s with {settings:?} (log: {log})");
        }
        took
    }

    fn stop(&self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", &pg_bin("pg_ctl")])
                .args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// A postmaster stuck in its start (signals blocked) ignores pg_ctl stop: SIGKILL it.
    fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.data().join("postmaster.pid")) {
            if let Some(pid) = pid.lines().next() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
    }

    fn connect(&self) -> postgres::Client {
        postgres::Config::new()
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(NoTls)
            .unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A key file owned by postgres, mode 600.
fn key_file(p: &Path) {
    std::fs::write(p, format!("{KEY}\n")).unwrap();
    chown_postgres(p);
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// The call needing the key fails with F0000, "could not be loaded", and a detail containing `why`.
fn key_calls_fail(s: &Server, why: &str) {
    let mut c = s.connect();
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS event_crypto").unwrap();
    for q in [
        "SELECT event_crypto.master_key_id()",
        "SELECT event_crypto.create_key('k')::text",
    ] {
        let e = c.query_one(q, &[]).unwrap_err();
        let (code, msg, detail, hint) = sql_error(&e);
        let detail = detail.unwrap_or_default();
        assert_eq!(code, "F0000", "{q}: {msg} {detail}");
        assert_eq!(msg, "the event_crypto master key could not be loaded");
        assert!(detail.contains(why), "{q}: {detail}");
        assert!(hint.unwrap_or_default().contains("event_crypto.master_key_command"));
    }
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1, "the session goes on");
}

/// Whether process `pid` is gone (or a zombie waiting for init): the command's process group was killed.
fn gone(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(st) if st.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) => return true,
            Ok(_) if Instant::now() > deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn a_fifo_as_the_key_file_is_refused_without_waiting_for_a_writer() {
    let s = Server::init("fifo");
    let fifo = s.dir.join("key.fifo");
    as_postgres("mkfifo", &["-m", "600", fifo.to_str().unwrap()]);
    let took = s.start(&format!("event_crypto.master_key_file = '{}'\n", fifo.display()));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        s.log_text().contains("is not a regular file: it is a FIFO"),
        "{}",
        s.log_text()
    );
    key_calls_fail(&s, "is not a regular file: it is a FIFO");
    // the default timeout; a postmaster setting, as the other master key settings
    let mut c = s.connect();
    let shown: String = c.query_one("SHOW event_crypto.master_key_timeout", &[]).unwrap().get(0);
    assert_eq!(shown, "5s");
    let ctx: String = c
        .query_one(
            "SELECT context FROM pg_settings WHERE name = 'event_crypto.master_key_timeout'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ctx, "postmaster");
}

#[test]
fn a_key_file_with_a_second_hard_link_is_refused() {
    let s = Server::init("links");
    let key = s.dir.join("master.key");
    key_file(&key);
    std::fs::hard_link(&key, s.dir.join("master.key.again")).unwrap();
    s.start(&format!("event_crypto.master_key_file = '{}'\n", key.display()));
    assert!(s.log_text().contains("has 2 hard links"), "{}", s.log_text());
    key_calls_fail(&s, "has 2 hard links");
    s.stop();
    // Once the other name is gone, the same file is fine: the server works with it.
    std::fs::remove_file(s.dir.join("master.key.again")).unwrap();
    s.start(&format!("event_crypto.master_key_file = '{}'\n", key.display()));
    let mut c = s.connect();
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS event_crypto; SELECT event_crypto.create_key('works')")
        .unwrap();
}

#[test]
fn a_key_command_that_never_exits_is_killed_with_its_group_at_the_timeout() {
    let s = Server::init("noexit");
    let dir = s.dir.display().to_string();
    let took = s.start(&format!(
        "event_crypto.master_key_timeout = '1s'\n\
         event_crypto.master_key_command = 'sleep 3600 & echo $! > {dir}/bg.pid; echo $$ > {dir}/sh.pid; sleep 3600'\n"
    ));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let log = s.log_text();
    assert!(
        log.contains("LOG:  event_crypto: waiting for event_crypto.master_key_command to print the master key and exit, for up to 1 s"),
        "the log says what the server waits for: {log}"
    );
    assert!(
        log.contains("WARNING:  event_crypto: the event_crypto master key could not be loaded"),
        "{log}"
    );
    key_calls_fail(
        &s,
        "event_crypto.master_key_command did not exit within 1 s (event_crypto.master_key_timeout)",
    );
    for f in ["bg.pid", "sh.pid"] {
        let pid = std::fs::read_to_string(s.dir.join(f)).unwrap();
        assert!(gone(pid.trim()), "{f}: the command's process group was killed");
    }
    eprintln!("server start with a key command that never exits, timeout 1 s: {took:?}");
}

#[test]
fn a_key_command_whose_child_holds_its_output_is_killed_at_the_timeout() {
    let s = Server::init("held");
    let dir = s.dir.display().to_string();
    let took = s.start(&format!(
        "event_crypto.master_key_timeout = '1500ms'\n\
         event_crypto.master_key_command = 'echo {KEY}; sleep 30 & echo $! > {dir}/held.pid'\n"
    ));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let log = s.log_text();
    assert!(
        log.contains("event_crypto: event_crypto.master_key_command has exited, but a process it started still holds its standard output open: waiting for it to close it, for up to 1500 ms"),
        "{log}"
    );
    key_calls_fail(
        &s,
        "exited, but a process it started still held its standard output open after 1500 ms",
    );
    let pid = std::fs::read_to_string(s.dir.join("held.pid")).unwrap();
    assert!(gone(pid.trim()), "the process holding the output was killed");
    assert!(!log.contains(&KEY[..16]), "the key never reaches the log");
    s.stop();

    // A quick command is not held up and logs no wait.
    let took = s.start(&format!("event_crypto.master_key_command = 'echo {KEY}'\n"));
    let mut c = s.connect();
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS event_crypto; SELECT event_crypto.create_key('quick')")
        .unwrap();
    assert!(!s.log_text().contains("waiting for"));
    eprintln!("server start with a quick key command: {took:?}");
}
