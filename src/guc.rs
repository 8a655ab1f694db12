//! Every GUC of event_crypto, under the `event_crypto.` prefix. The master key settings are postmaster-level
//! (postgresql.conf or the server command line only) and hidden from non-superusers.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static MASTER_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MASTER_KEY_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_string_guc(
        c"event_crypto.master_key_file",
        c"Path of the file that holds the event_crypto master key (64 hex digits or base64 of 32 bytes).",
        c"The file must be a regular file outside the data directory, owned by the server's OS user and not readable by group or others. Read once at server start.",
        &MASTER_KEY_FILE,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"event_crypto.master_key_command",
        c"Shell command whose standard output is the event_crypto master key (for a KMS or secret manager CLI).",
        c"Run once at server start with /bin/sh -c; must exit 0 and print 64 hex digits or base64 of 32 bytes. Used only when master_key_file is not set.",
        &MASTER_KEY_COMMAND,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY,
    );
}

pub fn master_key_file() -> Option<String> {
    MASTER_KEY_FILE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

pub fn master_key_command() -> Option<String> {
    MASTER_KEY_COMMAND
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}
