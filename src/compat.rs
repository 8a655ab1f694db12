//! C symbols that the SQL objects of earlier releases name and this release no longer implements.
//!
//! Between installing a new build and `ALTER EXTENSION event_crypto UPDATE`, a database still has the SQL objects
//! of the release it was created with, and they call into the new library by symbol name. Every symbol an earlier
//! release's script references stays defined (tests/upgrade.sh checks it against the previous release's script):
//! those still implemented under the same name keep working, and those whose function was removed raise a clear
//! error here instead of PostgreSQL's "could not find function" or worse.

use crate::error::raise;
use event_crypto_core::{Error, ErrorKind};
use pgrx::pg_sys;

/// The version-1 calling convention record PostgreSQL looks up as `pg_finfo_<symbol>`.
static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

fn removed(function: &str, release: &str, why: &str) -> ! {
    raise(
        Error::new(
            ErrorKind::NotReady,
            format!("event_crypto.{function}() was removed in event_crypto {release}"),
        )
        .with_detail(why.to_string())
        .with_hint("The server runs a newer event_crypto library than this database's SQL objects: run ALTER EXTENSION event_crypto UPDATE."),
    )
}

/// 0.1.0's `record_maintenance(text, text[], jsonb)`: removed in 0.2.0 (any caller could write audit rows).
#[no_mangle]
pub extern "C" fn pg_finfo_record_maintenance_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1
}

/// See [`pg_finfo_record_maintenance_wrapper`].
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo`, which is not used.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn record_maintenance_wrapper(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    removed(
        "record_maintenance",
        "0.2.0",
        "Audit rows are written only by the functions whose actions they describe.",
    )
}
