//! event_crypto: field-level encryption and crypto-shredding for JSONB event payloads.
//!
//! The SQL layer is thin: `api` converts types and calls `event_crypto_core`; `keys` holds the catalog and the
//! per-backend key cache; `master` loads the master key; `guc` declares settings; `error` maps errors to SQLSTATEs.

use pgrx::prelude::*;

mod api;
mod audit;
mod error;
mod guc;
mod jsonb;
mod keys;
mod maintenance;
mod master;
mod protect;
mod triggers;
mod usage;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    keys::register_invalidation();
    usage::register_callback();
    // SAFETY: reading a flag the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        master::preload();
        usage::request_shared_memory();
        maintenance::register_worker();
    }
}

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/protect.sql", name = "protect", requires = ["catalog"]);
extension_sql_file!("../sql/audit.sql", name = "audit", requires = ["catalog"]);
extension_sql_file!("../sql/lifecycle.sql", name = "lifecycle", requires = ["catalog"]);
extension_sql_file!(
    "../sql/maintenance.sql",
    name = "maintenance",
    requires = ["catalog", "lifecycle", maintenance::usage_pending]
);
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
