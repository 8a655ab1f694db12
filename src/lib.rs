//! event_crypto: field-level encryption and crypto-shredding for JSONB event payloads.
//!
//! The SQL layer is thin: `api` converts types and calls `event_crypto_core`; `keys` holds the catalog and the
//! per-backend key cache; `master` loads the master key; `guc` declares settings; `error` maps errors to SQLSTATEs.

use pgrx::prelude::*;

mod access;
mod api;
mod audit;
mod catalog;
mod citus;
mod compat;
mod consumers;
mod error;
mod guc;
mod jsonb;
mod keys;
mod maintenance;
mod master;
mod pii;
mod policies;
mod protect;
mod reencrypt;
mod retire;
mod sqltypes;
mod tokens;
mod tombstones;
mod triggers;
mod usage;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // No Rust backtrace ever reaches an error's DETAIL: messages sent to clients and logs carry no internals.
    // (pgrx attaches one when backtraces are enabled; RUST_LIB_BACKTRACE=0 disables them for library captures
    // whatever RUST_BACKTRACE says. Set before anything in this process captures one.)
    // (PostgreSQL backends are single-threaded: nothing reads the environment concurrently.)
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    guc::init();
    event_crypto_core::set_interrupt_check(check_interrupts);
    keys::register_invalidation();
    tombstones::register_invalidation();
    // The audit log's callbacks first: PostgreSQL calls the ones registered last first, and the usage counters'
    // pre-commit step may write audit rows that the audit log's seals.
    audit::register_callback();
    usage::register_callback();
    // SAFETY: reading a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        master::preload();
        usage::request_shared_memory();
        maintenance::register_worker();
    }
}

/// CHECK_FOR_INTERRUPTS for the core's long loops (a pending cancel raises, and the error unwinds through them).
fn check_interrupts() {
    pgrx::check_for_interrupts!();
}

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/audit.sql", name = "audit", requires = ["catalog"]);
extension_sql_file!("../sql/lifecycle.sql", name = "lifecycle", requires = ["catalog"]);
extension_sql_file!(
    "../sql/maintenance.sql",
    name = "maintenance",
    requires = [
        "catalog",
        "lifecycle",
        maintenance::usage_pending,
        maintenance::run_maintenance
    ]
);
extension_sql_file!(
    "../sql/stats.sql",
    name = "stats",
    requires = [
        "catalog",
        "audit",
        "maintenance",
        maintenance::usage_pending,
        maintenance::usage_pending_counts
    ]
);
extension_sql_file!(
    "../sql/ddl.sql",
    name = "ddl",
    requires = ["catalog", "lifecycle", "maintenance"]
);
extension_sql_file!("../sql/citus.sql", name = "citus", requires = ["catalog"]);
extension_sql_file!("../sql/tombstones.sql", name = "tombstones", requires = ["catalog"]);
extension_sql_file!("../sql/consumers.sql", name = "consumers", requires = ["catalog"]);
extension_sql_file!("../sql/tokens.sql", name = "tokens", requires = ["catalog"]);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'event_crypto'",
            "event_crypto.master_key_command = 'echo 6ec0b1a5e5c0ffee6ec0b1a5e5c0ffee6ec0b1a5e5c0ffee6ec0b1a5e5c0ffee'",
        ]
    }
}
