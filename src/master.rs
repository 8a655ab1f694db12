//! Loading the master key ring from `event_crypto.master_key_file` or `event_crypto.master_key_command`: one
//! key a line, the first active (it wraps new and rewrapped data keys), the others kept to unwrap what they
//! wrapped until `event_crypto.rewrap_keys` has moved it to the active key.
//!
//! With `shared_preload_libraries = 'event_crypto'` the key is loaded once in the postmaster and every backend
//! inherits it; otherwise each backend loads it on first use. The outcome (the key, or why it could not be
//! loaded) is kept for the life of the process. Key bytes only ever live in zeroized buffers.

use crate::guc;
use event_crypto_core::keysource;
use event_crypto_core::master::MasterKeyRing;
use event_crypto_core::{Error, ErrorKind, Result};
use std::sync::OnceLock;

static MASTER: OnceLock<std::result::Result<MasterKeyRing, Error>> = OnceLock::new();

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

/// The key file: a regular file with one hard link, outside the data directory, owned by the server's OS user,
/// not accessible by group or others (a FIFO or a device is refused without being opened, so the server never
/// waits on one).
fn load_file(path: &str) -> Result<MasterKeyRing> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    let text = keysource::read_key_file(path, data_directory().as_deref(), euid)?;
    MasterKeyRing::parse_text(&text)
        .map_err(|e| keysource::unavailable(format!("\"{path}\": {}", e.detail().unwrap_or(""))))
}

/// The key command, bounded by `event_crypto.master_key_timeout`; the server log says what is being waited for
/// when it takes more than a moment.
fn load_command(cmd: &str) -> Result<MasterKeyRing> {
    let text = keysource::run_key_command(cmd, guc::master_key_timeout(), &mut |what| {
        pgrx::log!("event_crypto: {what}")
    })?;
    MasterKeyRing::parse_text(&text).map_err(|e| {
        keysource::unavailable(format!(
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
