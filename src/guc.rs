//! Every GUC of event_crypto, under the `event_crypto.` prefix. The master key settings (file, command, timeout)
//! are postmaster-level (postgresql.conf or the server command line only) and hidden from non-superusers;
//! decryption auditing can only be changed by superusers; the rotation threshold and worker interval are
//! server-wide (postgresql.conf, reload).

use event_crypto_core::envelope::Format;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MASTER_KEY_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MASTER_KEY_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_MASTER_KEY_TIMEOUT_MS);
pub static AUDIT_DECRYPT: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static ROTATE_AFTER_ENCRYPTIONS: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_ROTATE_AFTER);
pub static WORKER_DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static WORKER_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static WORKER_ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static KEY_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_KEY_CACHE_SIZE);
pub static RETIRE_WAIT: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_RETIRE_WAIT);
pub static CITUS_KEY_REQUEST_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static ENVELOPE_FORMAT: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static COMPRESS_THRESHOLD: GucSetting<i32> =
    GucSetting::<i32>::new(event_crypto_core::compress::DEFAULT_THRESHOLD as i32);

/// Seconds between disabling a retired key version and its destruction by the maintenance run: 7 days.
pub const DEFAULT_RETIRE_WAIT: i32 = 7 * 86_400;

/// How long the master key command may take by default (milliseconds).
pub const DEFAULT_MASTER_KEY_TIMEOUT_MS: i32 = 5000;

/// Key ids a backend keeps unwrapped by default (about 800 bytes each: some 8 MB at most).
pub const DEFAULT_KEY_CACHE_SIZE: i32 = 10_000;

/// 2^31 - 1 (the largest integer setting): half the ~2^32 encryptions AES-GCM with random 96-bit nonces allows per
/// key. An integer setting, so `SHOW` prints it exactly.
pub const DEFAULT_ROTATE_AFTER: i32 = i32::MAX;

pub fn init() {
    GucRegistry::define_string_guc(
        c"event_crypto.master_key_file",
        c"Path of the file that holds the event_crypto master key (64 hex digits or base64 of 32 bytes).",
        c"The file must be a regular file with a single hard link, outside the data directory, owned by the server's OS user and not readable by group or others. Read once at server start.",
        &MASTER_KEY_FILE,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"event_crypto.master_key_command",
        c"Shell command whose standard output is the event_crypto master key (for a KMS or secret manager CLI).",
        c"Run once at server start with /bin/sh -c; must print 64 hex digits or base64 of 32 bytes and exit 0 within event_crypto.master_key_timeout. Used only when master_key_file is not set.",
        &MASTER_KEY_COMMAND,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"event_crypto.master_key_timeout",
        c"How long event_crypto.master_key_command may take to print the master key and exit.",
        c"When the time is up, the command's whole process group is killed, the server starts without the master key and every call that needs it fails, saying why.",
        &MASTER_KEY_TIMEOUT,
        100,
        600_000,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY | GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"event_crypto.audit_decrypt",
        c"Count decrypted fields per session and key id, written to event_crypto.audit_log by the maintenance run.",
        c"No row is written per decryption: counts are kept in shared memory (needs shared_preload_libraries) and flushed by event_crypto.run_maintenance() or the background worker. Only superusers can change it.",
        &AUDIT_DECRYPT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_crypto.rotate_after_encryptions",
        c"Number of encryptions after which the maintenance run rotates a key version.",
        c"AES-GCM with random 96-bit nonces allows about 2^32 encryptions per key; the default and largest value is 2^31 - 1.",
        &ROTATE_AFTER_ENCRYPTIONS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"event_crypto.worker_database",
        c"Database in which the event_crypto background worker runs maintenance (empty: no worker).",
        c"Needs shared_preload_libraries = 'event_crypto'. The worker runs event_crypto.run_maintenance() every event_crypto.worker_interval.",
        &WORKER_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"event_crypto.worker_role",
        c"Role the event_crypto background worker runs maintenance as (empty: no worker).",
        c"A LOGIN role that is not a superuser, normally a member of event_crypto_admin. The worker refuses to run as a superuser.",
        &WORKER_ROLE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_crypto.key_cache_size",
        c"Number of key ids each session keeps unwrapped in memory.",
        c"When the cache is full the key cached longest ago is dropped; it is unwrapped again on its next use.",
        &KEY_CACHE_SIZE,
        16,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_crypto.retire_wait",
        c"How long retire_key_version() keeps a key version disabled before the maintenance run destroys it.",
        c"While disabled, decryption under the version fails (every attempt is counted and logged) and cancel_retire() re-enables it. retire_key_version(..., force => true) destroys at once. Only superusers can change it.",
        &RETIRE_WAIT,
        0,
        366 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"event_crypto.citus_key_request_timeout",
        c"How long the Citus coordinator may take to create a key a shard trigger asked for.",
        c"Past it the request is cancelled and the row that needed the key is refused (55000), rather than waiting on a lock held by the transaction the row belongs to. Read on the coordinator.",
        &CITUS_KEY_REQUEST_TIMEOUT,
        100,
        600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"event_crypto.compress_threshold",
        c"With compress => 'zstd', values whose JSON text is longer than this many bytes are compressed before encryption.",
        c"Shorter values are never compressed; longer ones are when zstd makes them smaller. Compression reveals how compressible a value is through its length: see README (Compression).",
        &COMPRESS_THRESHOLD,
        0,
        event_crypto_core::compress::MAX_DECOMPRESSED_LEN as i32,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"event_crypto.envelope_format",
        c"Envelope format new encryptions write: 2 (the key named by its handle) or 1 (by its key id).",
        c"Both formats are always read. Format 2 envelopes do not carry the key id (a subject id in it would reach every copy of the data) and are shorter; format 1 is for programs outside the database that only read it. Re-encryption (reencrypt_table, reencrypt_fields) moves envelopes to the format set here.",
        &ENVELOPE_FORMAT,
        1,
        2,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_crypto.worker_interval",
        c"Seconds between two maintenance runs of the background worker.",
        c"",
        &WORKER_INTERVAL,
        1,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    // The prefix is ours: a misspelt setting (event_crypto.master_key_flie) is reported by PostgreSQL by name (a
    // WARNING when the library loads, an error for a later SET), rather than taken silently as a placeholder.
    // SAFETY: called once while the library loads, after every setting above is defined.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"event_crypto".as_ptr()) };
}

pub fn audit_decrypt() -> bool {
    AUDIT_DECRYPT.get()
}

pub fn worker_database() -> Option<String> {
    WORKER_DATABASE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

pub fn worker_role() -> Option<String> {
    WORKER_ROLE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

pub fn key_cache_size() -> usize {
    KEY_CACHE_SIZE.get().max(1) as usize
}

pub fn retire_wait_secs() -> i32 {
    RETIRE_WAIT.get()
}

pub fn worker_interval_secs() -> i32 {
    WORKER_INTERVAL.get()
}

pub fn master_key_file() -> Option<String> {
    MASTER_KEY_FILE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

pub fn master_key_timeout() -> std::time::Duration {
    std::time::Duration::from_millis(MASTER_KEY_TIMEOUT.get().max(1) as u64)
}

pub fn master_key_command() -> Option<String> {
    MASTER_KEY_COMMAND
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

/// The envelope format new encryptions write (`event_crypto.envelope_format`; see also
/// [`crate::keys::write_format`], which writes format 1 while the catalog has no handles).
pub fn envelope_format() -> Format {
    Format::from_number(i64::from(ENVELOPE_FORMAT.get())).unwrap_or(Format::DEFAULT)
}

/// The compression of `compress => name` ('none' or 'zstd'), with the threshold `event_crypto.compress_threshold`.
pub fn compression(name: &str) -> event_crypto_core::Result<event_crypto_core::compress::Compression> {
    let threshold = usize::try_from(COMPRESS_THRESHOLD.get()).unwrap_or(0);
    event_crypto_core::compress::Compression::parse(name, threshold)
}

pub fn citus_key_request_timeout_ms() -> i32 {
    CITUS_KEY_REQUEST_TIMEOUT.get()
}
