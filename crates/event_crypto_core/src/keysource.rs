//! Reading the text of the master key ring from its two sources without ever waiting for good: the key file
//! (a regular file with one name, never opened if it is a FIFO or a device) and the key command (run in its own
//! process group, bounded in time, the whole group killed when the time is up).
//!
//! The text is returned in a zeroized buffer and never appears in a message.

use crate::error::{Error, ErrorKind, Result};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The longest key file or command output read.
pub const MAX_KEY_TEXT: usize = 16384;

/// The master key could not be loaded, and why (the hint names the settings).
pub fn unavailable(reason: impl Into<String>) -> Error {
    Error::new(ErrorKind::MasterKeyUnavailable, "the event_crypto master key could not be loaded")
        .with_detail(reason.into())
        .with_hint("Set event_crypto.master_key_file or event_crypto.master_key_command in postgresql.conf to supply 32 bytes as 64 hex digits or base64, then restart the server.")
}

/// What a file is, when it is not a regular file.
fn not_regular(ft: std::fs::FileType) -> Option<&'static str> {
    if ft.is_file() {
        None
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe), which could keep the server waiting for a writer")
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_char_device() || ft.is_block_device() {
        Some("a device")
    } else if ft.is_socket() {
        Some("a socket")
    } else {
        Some("not a plain file")
    }
}

/// Reads the key file `path` (the text of `event_crypto.master_key_file`). It must be an absolute path to a regular
/// file with exactly one hard link, outside `data_directory`, owned by `owner_uid` and not accessible by group or
/// others. Symbolic links along the path are followed (the checks apply to the file they lead to). A FIFO, a device,
/// a directory or a socket is refused without being opened (opening a FIFO waits for a writer), and what is opened
/// is checked again on its descriptor.
pub fn read_key_file(path: &str, data_directory: Option<&Path>, owner_uid: u32) -> Result<Zeroizing<Vec<u8>>> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(unavailable(format!(
            "event_crypto.master_key_file \"{path}\" is not an absolute path"
        )));
    }
    let canonical = p
        .canonicalize()
        .map_err(|e| unavailable(format!("cannot open event_crypto.master_key_file \"{path}\": {e}")))?;
    if let Some(dd) = data_directory.and_then(|d| d.canonicalize().ok()) {
        if canonical.starts_with(&dd) {
            return Err(unavailable(format!(
                "event_crypto.master_key_file \"{path}\" is inside the data directory, so every physical backup would carry it; keep it elsewhere"
            )));
        }
    }
    let check = |meta: &std::fs::Metadata| -> Result<()> {
        if let Some(what) = not_regular(meta.file_type()) {
            return Err(unavailable(format!("\"{path}\" is not a regular file: it is {what}")));
        }
        if meta.nlink() > 1 {
            return Err(unavailable(format!(
                "\"{path}\" has {} hard links; a key file must have exactly one (another name for it could be inside the data directory or readable by others)",
                meta.nlink()
            )));
        }
        Ok(())
    };
    let before = std::fs::metadata(&canonical).map_err(|e| unavailable(format!("cannot stat \"{path}\": {e}")))?;
    check(&before)?;
    // O_NONBLOCK: should the name have become a FIFO since, opening it does not wait for a writer.
    // O_NOFOLLOW: the canonical path's last component is no symbolic link; one put there since is refused.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(&canonical)
        .map_err(|e| unavailable(format!("cannot open event_crypto.master_key_file \"{path}\": {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| unavailable(format!("cannot stat \"{path}\": {e}")))?;
    check(&meta)?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(unavailable(format!(
            "\"{path}\" was replaced while it was being opened"
        )));
    }
    if meta.uid() != owner_uid {
        return Err(unavailable(format!(
            "\"{path}\" must be owned by the database server's OS user (uid {owner_uid}), not uid {}",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(unavailable(format!(
            "\"{path}\" is accessible by group or others (mode {:o}); chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    // Room for the whole text up front: a growing vector would leave copies of the key behind in freed memory.
    let mut text = Zeroizing::new(Vec::with_capacity(MAX_KEY_TEXT + 1));
    (&mut f)
        .take(MAX_KEY_TEXT as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| unavailable(format!("cannot read \"{path}\": {e}")))?;
    if text.len() > MAX_KEY_TEXT {
        return Err(unavailable(format!("\"{path}\" is larger than {MAX_KEY_TEXT} bytes")));
    }
    Ok(text)
}

/// A duration as the settings write it: `5 s`, `1500 ms`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// Whether process `pid` (a child of this process) has exited; it is left unreaped, so its process id (and the
/// id of the process group it leads) cannot be reused while the group is being killed.
fn has_exited(pid: libc::pid_t) -> bool {
    // SAFETY: waitid writes only into `info`, which is a zeroed siginfo_t owned here.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() != 0
    }
}

/// Runs the key command (`event_crypto.master_key_command`) with `/bin/sh -c` in a process group of its own, and
/// returns what it printed on standard output once it has exited (with status 0) and its standard output is
/// closed. If that takes longer than `timeout`, the whole process group is killed and reaped, and the error says
/// what was being waited for: the command to exit, or, the command having exited, a process it started that
/// still holds its standard output. When the command takes more than a moment (a second, or half the timeout
/// if that is shorter), `on_wait` is told once what is being waited for, so that the server log says why the
/// server is not up yet.
pub fn run_key_command(cmd: &str, timeout: Duration, on_wait: &mut dyn FnMut(&str)) -> Result<Zeroizing<Vec<u8>>> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    // The postmaster loads the key while it blocks every signal, and it ignores some: the command starts with no
    // signal blocked or ignored, as from a shell (a command that times itself out with SIGALRM still can).
    // SAFETY: between fork and exec only async-signal-safe calls (sigemptyset, sigprocmask, signal).
    unsafe {
        command.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| unavailable(format!("cannot run event_crypto.master_key_command: {e}")))?;
    let pid = child.id() as libc::pid_t;
    let out = child.stdout.take().expect("stdout is piped");
    let fd = out.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns (the read end of the command's stdout pipe).
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let start = Instant::now();
    let deadline = start + timeout;
    let slow = start + (timeout / 2).min(Duration::from_secs(1));
    let mut said = false;
    let mut text = Zeroizing::new(Vec::with_capacity(MAX_KEY_TEXT + 1));
    let mut buf = Zeroizing::new([0u8; 4096]);
    let mut eof = false;
    let mut exited = false;
    // Kills what is left of the command's process group, reaps the command and fails with `why`.
    let stop = |child: &mut std::process::Child, why: String| -> Error {
        // SAFETY: kill(2) of the process group the command leads; its leader is not reaped yet (see has_exited),
        // so the group id still names it.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = child.wait();
        unavailable(why)
    };
    loop {
        if !exited {
            exited = has_exited(pid);
        }
        if eof && exited {
            break;
        }
        let now = Instant::now();
        let limit = format!("{} (event_crypto.master_key_timeout)", show_duration(timeout));
        if now >= deadline {
            drop(out);
            let why = if exited {
                format!(
                    "event_crypto.master_key_command exited, but a process it started still held its standard output open after {limit}; \
                     its process group was killed (start helpers with their output redirected: helper >/dev/null &)"
                )
            } else {
                format!("event_crypto.master_key_command did not exit within {limit}; its process group was killed")
            };
            return Err(stop(&mut child, why));
        }
        if !said && now >= slow {
            said = true;
            on_wait(&if exited {
                format!(
                    "event_crypto.master_key_command has exited, but a process it started still holds its standard output open: \
                     waiting for it to close it, for up to {limit}"
                )
            } else {
                format!(
                    "waiting for event_crypto.master_key_command to print the master key and exit, for up to {limit}"
                )
            });
        }
        let step = (deadline - now).min(Duration::from_millis(20));
        if eof {
            std::thread::sleep(step);
            continue;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd; an interrupted poll is simply retried by the loop.
        unsafe { libc::poll(&mut pfd, 1, step.as_millis().max(1) as libc::c_int) };
        loop {
            // SAFETY: read into a buffer owned here, at most its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let n = n as usize;
                if text.len() + n > MAX_KEY_TEXT {
                    drop(out);
                    return Err(stop(
                        &mut child,
                        format!("event_crypto.master_key_command printed more than {MAX_KEY_TEXT} bytes"),
                    ));
                }
                text.extend_from_slice(&buf[..n]);
            } else if n == 0 {
                eof = true;
                break;
            } else {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::WouldBlock => break,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => {
                        drop(out);
                        return Err(stop(
                            &mut child,
                            format!("cannot read the output of event_crypto.master_key_command: {err}"),
                        ));
                    }
                }
            }
        }
    }
    drop(out);
    let status = child
        .wait()
        .map_err(|e| unavailable(format!("event_crypto.master_key_command failed: {e}")))?;
    if !status.success() {
        return Err(unavailable(format!(
            "event_crypto.master_key_command exited with {status}"
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ec-keysource-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    fn key_file(dir: &Path, name: &str) -> std::path::PathBuf {
        let f = dir.join(name);
        std::fs::write(&f, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        f
    }

    fn detail(e: &Error) -> String {
        assert_eq!(e.kind(), ErrorKind::MasterKeyUnavailable);
        assert!(e.hint().unwrap().contains("event_crypto.master_key_file"));
        e.detail().unwrap().to_string()
    }

    fn gone(pid: &str) -> bool {
        // a process killed and reaped (by init once its parent is gone) has no /proc entry left, or is a zombie
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(s) if s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) => return true,
                Ok(_) if Instant::now() > deadline => return false,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    #[test]
    fn a_regular_key_file_is_read_and_a_symlink_to_one_is_followed() {
        let d = scratch("regular");
        let f = key_file(&d, "k");
        let text = read_key_file(f.to_str().unwrap(), None, euid()).unwrap();
        assert_eq!(text.len(), 65);
        let l = d.join("link");
        symlink(&f, &l).unwrap();
        assert_eq!(*read_key_file(l.to_str().unwrap(), None, euid()).unwrap(), *text);
    }

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer() {
        let d = scratch("fifo");
        let f = d.join("fifo");
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = Instant::now();
        let e = read_key_file(f.to_str().unwrap(), None, euid()).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(detail(&e).contains("is not a regular file: it is a FIFO"), "{e:?}");
        // also through a symbolic link
        let l = d.join("link");
        symlink(&f, &l).unwrap();
        let e = read_key_file(l.to_str().unwrap(), None, euid()).unwrap_err();
        assert!(detail(&e).contains("FIFO"), "{e:?}");
    }

    #[test]
    fn directories_devices_and_sockets_are_refused() {
        let d = scratch("kinds");
        let e = read_key_file(d.to_str().unwrap(), None, euid()).unwrap_err();
        assert!(detail(&e).contains("it is a directory"), "{e:?}");
        let e = read_key_file("/dev/null", None, euid()).unwrap_err();
        assert!(detail(&e).contains("it is a device"), "{e:?}");
        let s = d.join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&s).unwrap();
        let e = read_key_file(s.to_str().unwrap(), None, euid()).unwrap_err();
        assert!(detail(&e).contains("it is a socket"), "{e:?}");
    }

    #[test]
    fn a_key_file_with_a_second_hard_link_is_refused() {
        let d = scratch("links");
        let f = key_file(&d, "k");
        std::fs::hard_link(&f, d.join("k2")).unwrap();
        let e = read_key_file(f.to_str().unwrap(), None, euid()).unwrap_err();
        assert!(detail(&e).contains("has 2 hard links"), "{e:?}");
        std::fs::remove_file(d.join("k2")).unwrap();
        assert!(read_key_file(f.to_str().unwrap(), None, euid()).is_ok());
    }

    #[test]
    fn the_earlier_refusals_still_hold() {
        let d = scratch("earlier");
        let f = key_file(&d, "k");
        let e = read_key_file("relative/key", None, euid()).unwrap_err();
        assert!(detail(&e).contains("not an absolute path"));
        let e = read_key_file(f.to_str().unwrap(), Some(&d), euid()).unwrap_err();
        assert!(detail(&e).contains("inside the data directory"));
        let e = read_key_file(f.to_str().unwrap(), None, euid() + 1).unwrap_err();
        assert!(detail(&e).contains("must be owned by"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_key_file(f.to_str().unwrap(), None, euid()).unwrap_err();
        assert!(detail(&e).contains("accessible by group or others"));
        let big = d.join("big");
        std::fs::write(&big, vec![b'a'; MAX_KEY_TEXT + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_key_file(big.to_str().unwrap(), None, euid()).unwrap_err();
        assert!(detail(&e).contains("larger than"));
        let e = read_key_file(d.join("missing").to_str().unwrap(), None, euid()).unwrap_err();
        assert!(detail(&e).contains("cannot open"));
    }

    fn run(cmd: &str, timeout_ms: u64) -> (Result<Zeroizing<Vec<u8>>>, Vec<String>, Duration) {
        let mut said = Vec::new();
        let t = Instant::now();
        let r = run_key_command(cmd, Duration::from_millis(timeout_ms), &mut |s| {
            said.push(s.to_string())
        });
        (r, said, t.elapsed())
    }

    #[test]
    fn a_quick_command_gives_its_output_and_says_nothing() {
        let (r, said, took) = run("printf 'abc\\n'; printf def", 5000);
        assert_eq!(&**r.unwrap(), b"abc\ndef");
        assert!(said.is_empty());
        assert!(took < Duration::from_secs(2));
        // a helper it leaves running with its output elsewhere is no concern
        let (r, _, took) = run("sleep 5 >/dev/null 2>&1 & echo key", 5000);
        assert_eq!(&**r.unwrap(), b"key\n");
        assert!(took < Duration::from_secs(2));
        let (r, _, _) = run("echo key; exit 3", 5000);
        assert!(detail(&r.unwrap_err()).contains("exited with exit status: 3"));
        let (r, _, _) = run("head -c 20000 /dev/zero", 5000);
        assert!(detail(&r.unwrap_err()).contains("more than 16384 bytes"));
    }

    #[test]
    fn a_command_that_does_not_exit_is_killed_with_its_group_at_the_timeout() {
        let d = scratch("noexit");
        let pids = d.join("pids");
        let (r, said, took) = run(
            &format!("sleep 3600 & echo $! > {0}; echo $$ >> {0}; sleep 3600", pids.display()),
            600,
        );
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let e = r.unwrap_err();
        let why = detail(&e);
        assert!(
            why.contains("did not exit within 600 ms (event_crypto.master_key_timeout)") && why.contains("killed"),
            "{why}"
        );
        assert_eq!(said.len(), 1, "said once what it waits for: {said:?}");
        assert!(
            said[0].contains("waiting for event_crypto.master_key_command to print the master key and exit"),
            "{said:?}"
        );
        for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
            assert!(gone(pid), "process {pid} of the command's group was killed");
        }
    }

    #[test]
    fn a_command_whose_child_holds_its_output_fails_at_the_timeout_saying_so() {
        let d = scratch("held");
        let pid = d.join("pid");
        let (r, said, took) = run(&format!("echo k3yt3xt; sleep 30 & echo $! > {}", pid.display()), 500);
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let why = detail(&r.unwrap_err());
        assert!(
            why.contains("exited, but a process it started still held its standard output open after 500 ms"),
            "{why}"
        );
        assert!(!why.contains("k3yt3xt"), "nothing of the output in the message");
        assert!(
            said[0].contains("still holds its standard output open: waiting for it to close it"),
            "{said:?}"
        );
        assert!(
            gone(std::fs::read_to_string(&pid).unwrap().trim()),
            "the child holding the pipe was killed"
        );
    }

    #[test]
    fn the_command_starts_with_no_signal_blocked_or_ignored() {
        // as in the postmaster while it loads the key: signals blocked (this thread only) and one ignored
        // SAFETY: changes this test thread's signal mask, restored below; SIGUSR2 ignored is harmless here.
        let old = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            libc::signal(libc::SIGUSR2, libc::SIG_IGN);
            old
        };
        let (r, _, _) = run("grep -E '^Sig(Blk|Ign):' /proc/self/status", 5000);
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        let out = String::from_utf8(r.unwrap().to_vec()).unwrap();
        let mask = |name: &str| {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap();
            u64::from_str_radix(line.split('\t').nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(mask("SigBlk:"), 0, "{out}");
        // the standard signals 1 to 31 (32 and up belong to the C library's threads)
        assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{out}");
    }

    #[test]
    fn durations_are_shown_as_the_setting_is_written() {
        assert_eq!(show_duration(Duration::from_secs(5)), "5 s");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500 ms");
    }
}
