//! Loading the master key ring from `event_crypto.master_key_file` or `event_crypto.master_key_command`: one
//! key a line, the first active (it wraps new and rewrapped data keys), the others kept to unwrap what they
//! wrapped until `event_crypto.rewrap_keys` has moved it to the active key.
//!
//! With `shared_preload_libraries = 'event_crypto'` the key is loaded once in the postmaster and every backend
//! inherits it; otherwise each backend loads it on first use. The outcome (the key, or why it could not be
//! loaded) is kept for the life of the process. Key bytes only ever live in zeroized buffers.

use crate::guc;
use event_crypto_core::master::MasterKeyRing;
use event_crypto_core::{Error, ErrorKind, Result};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use zeroize::Zeroizing;

static MASTER: OnceLock<std::result::Result<MasterKeyRing, Error>> = OnceLock::new();

/// The longest key file or command output read.
const MAX_KEY_TEXT: u64 = 16384;

fn unavailable(reason: impl Into<String>) -> Error {
    Error::new(ErrorKind::MasterKeyUnavailable, "the event_crypto master key could not be loaded")
        .with_detail(reason.into())
        .with_hint("Set event_crypto.master_key_file or event_crypto.master_key_command in postgresql.conf to supply 32 bytes as 64 hex digits or base64, then restart the server.")
}

fn data_directory() -> Option<std::path::PathBuf> {
    // SAFETY: DataDir is set by the postmaster before libraries are loaded and never changes afterwards.
    unsafe {
        let p = pgrx::pg_sys::DataDir;
        if p.is_null() {
            None
        } else {
            Some(std::path::PathBuf::from(
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned(),
            ))
        }
    }
}

fn load_file(path: &str) -> Result<MasterKeyRing> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(unavailable(format!(
            "event_crypto.master_key_file \"{path}\" is not an absolute path"
        )));
    }
    let canonical = p
        .canonicalize()
        .map_err(|e| unavailable(format!("cannot open event_crypto.master_key_file \"{path}\": {e}")))?;
    if let Some(dd) = data_directory().and_then(|d| d.canonicalize().ok()) {
        if canonical.starts_with(&dd) {
            return Err(unavailable(format!(
                "event_crypto.master_key_file \"{path}\" is inside the data directory, so every physical backup would carry it; keep it elsewhere"
            )));
        }
    }
    let mut f = std::fs::File::open(&canonical)
        .map_err(|e| unavailable(format!("cannot open event_crypto.master_key_file \"{path}\": {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| unavailable(format!("cannot stat \"{path}\": {e}")))?;
    if !meta.is_file() {
        return Err(unavailable(format!("\"{path}\" is not a regular file")));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    if meta.uid() != euid {
        return Err(unavailable(format!(
            "\"{path}\" must be owned by the database server's OS user (uid {euid}), not uid {}",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(unavailable(format!(
            "\"{path}\" is accessible by group or others (mode {:o}); chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    let mut text = Zeroizing::new(Vec::new());
    (&mut f)
        .take(MAX_KEY_TEXT + 1)
        .read_to_end(&mut text)
        .map_err(|e| unavailable(format!("cannot read \"{path}\": {e}")))?;
    if text.len() as u64 > MAX_KEY_TEXT {
        return Err(unavailable(format!("\"{path}\" is larger than {MAX_KEY_TEXT} bytes")));
    }
    MasterKeyRing::parse_text(&text).map_err(|e| unavailable(format!("\"{path}\": {}", e.detail().unwrap_or(""))))
}

fn load_command(cmd: &str) -> Result<MasterKeyRing> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| unavailable(format!("cannot run event_crypto.master_key_command: {e}")))?;
    let mut text = Zeroizing::new(Vec::new());
    let read = child
        .stdout
        .take()
        .expect("stdout is piped")
        .take(MAX_KEY_TEXT + 1)
        .read_to_end(&mut text);
    let status = child
        .wait()
        .map_err(|e| unavailable(format!("event_crypto.master_key_command failed: {e}")))?;
    read.map_err(|e| {
        unavailable(format!(
            "cannot read the output of event_crypto.master_key_command: {e}"
        ))
    })?;
    if !status.success() {
        return Err(unavailable(format!(
            "event_crypto.master_key_command exited with {status}"
        )));
    }
    if text.len() as u64 > MAX_KEY_TEXT {
        return Err(unavailable(format!(
            "event_crypto.master_key_command printed more than {MAX_KEY_TEXT} bytes"
        )));
    }
    MasterKeyRing::parse_text(&text).map_err(|e| {
        unavailable(format!(
            "event_crypto.master_key_command output: {}",
            e.detail().unwrap_or("")
        ))
    })
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn load() -> std::result::Result<MasterKeyRing, Error> {
    match (guc::master_key_file(), guc::master_key_command()) {
        (Some(path), _) => load_file(&path),
        (None, Some(cmd)) => load_command(&cmd),
        (None, None) => Err(Error::new(ErrorKind::MasterKeyUnavailable, "no event_crypto master key is configured")
            .with_hint("Set event_crypto.master_key_file or event_crypto.master_key_command in postgresql.conf (with shared_preload_libraries = 'event_crypto') and restart the server.")),
    }
}

/// Loads the master key now (called from `_PG_init` in the postmaster) and reports the outcome in the log.
pub fn preload() {
    let outcome = MASTER.get_or_init(load);
    match outcome {
        Ok(ring) => pgrx::log!("event_crypto: master key ring loaded: {}", ring.describe()),
        Err(e) => pgrx::warning!("event_crypto: {e}"),
    }
}

/// The master key ring, loading it on first use when the library was not preloaded.
pub fn get() -> Result<&'static MasterKeyRing> {
    MASTER.get_or_init(load).as_ref().map_err(Clone::clone)
}
