//! Citus: event_crypto on a coordinator and workers (docs/scaling.md#citus).
//!
//! The design: event_crypto's catalog — keys, protection configuration, blind indexes, legacy subject keys — is
//! made of **Citus reference tables** (`event_crypto.citus_setup()`, sql/citus.sql), so every node holds the same
//! rows, and every change made on the coordinator reaches every node in the coordinator's distributed transaction
//! (two-phase commit). Event tables are distributed tables with the protect trigger on every shard: rows are
//! encrypted where they are stored, with the keys of the node's own placement of the catalog.
//!
//! What Citus allows and what it does not, and how this module deals with it:
//! - A query that runs on a worker as part of a distributed query (a *task*: a shard trigger, or `decrypt_fields`
//!   pushed down to the shards) may not start another distributed execution: Citus refuses it ("cannot execute a
//!   distributed query from a query on a shard"), except, in triggers, reads and writes of local placements. A
//!   read of a reference table is local on every node, and its placements never move, so event_crypto's reads of
//!   its own catalog are allowed there ([`CatalogAccess`]: `citus.allow_nested_distributed_execution` on, for
//!   the duration of the catalog access only).
//! - A task cannot *write* a reference table: the write would have to reach every node from inside the worker's
//!   part of someone else's distributed transaction (and a worker's prepared transaction cannot hold transactions
//!   of its own on other nodes). So a key cannot be created by a shard trigger: [`check_key_creation`] refuses it
//!   with a clear error (`55000`) before anything is written, and keys are created on the coordinator
//!   (`create_key`, or the trigger of a Citus local table, which runs on the coordinator and creates keys on first
//!   use as on one server).
//! - The catalog names tables by `regclass`, and every node has its own oids: writes that select rows by table
//!   bind a `regclass` parameter, which Citus sends by name ([`CatalogAccess`] makes it schema-qualified), and
//!   drops are followed on each node's own placement (`event_crypto.citus_sql_drop()`, sql/citus.sql).
//! - Citus is detected at run time only (`crate::protect::target`): nothing here needs Citus to build or run.

use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::pg_sys;
use std::ffi::CStr;

/// The prefix of `application_name` of the connections Citus opens between nodes to run tasks (Citus's
/// `CITUS_APPLICATION_NAME_PREFIX`).
const CITUS_TASK_APPLICATION: &str = "citus_internal gpid=";

/// The setting that lets a task read event_crypto's catalog (a reference table) while it runs on a shard.
const NESTED: &CStr = c"citus.allow_nested_distributed_execution";

/// Whether this backend runs tasks for a Citus coordinator (a shard trigger, a function pushed down to a shard).
pub fn in_citus_task() -> bool {
    // SAFETY: reads a setting's current value (application_name always exists); the string is copied at once.
    unsafe {
        let p = pg_sys::GetConfigOption(c"application_name".as_ptr(), true, false);
        !p.is_null()
            && CStr::from_ptr(p)
                .to_bytes()
                .starts_with(CITUS_TASK_APPLICATION.as_bytes())
    }
}

/// Citus's setting exists (Citus is loaded in this backend).
fn citus_loaded() -> bool {
    // SAFETY: a lookup of a setting by name; NULL when it does not exist.
    unsafe { !pg_sys::GetConfigOption(NESTED.as_ptr(), true, false).is_null() }
}

/// event_crypto's access to its own catalog on a Citus node, until the guard is dropped (a GUC nest level of its
/// own, like a function's `SET` clause; an error rolls it back with the (sub)transaction). Without Citus it does
/// nothing.
/// - `search_path = pg_catalog, pg_temp`: a `regclass` value that Citus sends to the other nodes (a parameter of a
///   write to the catalog's reference tables) is sent as its name, which each node resolves to its own oid. With
///   this search path the name is always schema-qualified (every name in event_crypto's SQL is qualified anyway).
/// - in a Citus task, `citus.allow_nested_distributed_execution = on`: the catalog (reference tables) is read from
///   the node's own placements while the task runs on a shard.
pub struct CatalogAccess {
    level: Option<i32>,
}

impl CatalogAccess {
    pub fn begin() -> CatalogAccess {
        if !citus_loaded() {
            return CatalogAccess { level: None };
        }
        let task = in_citus_task();
        // SAFETY: a new GUC nest level, and settings changed at that level only (as fmgr does for a function's SET
        // clause); the level is closed in drop() or by the (sub)transaction's abort.
        unsafe {
            let level = pg_sys::NewGUCNestLevel();
            crate::access::set_local(c"search_path", c"pg_catalog, pg_temp");
            if task {
                crate::access::set_local(NESTED, c"on");
            }
            CatalogAccess { level: Some(level) }
        }
    }
}

impl Drop for CatalogAccess {
    fn drop(&mut self) {
        if let Some(level) = self.level {
            // While unwinding from an error the (sub)transaction's abort restores the setting.
            if !std::thread::panicking() {
                // SAFETY: closes the nest level opened in begin().
                unsafe { pg_sys::AtEOXact_GUC(true, level) };
            }
        }
    }
}

/// protect() and friends on a Citus distributed table, until the guard is dropped (a GUC nest level of its own;
/// without Citus it does nothing):
/// - `citus.multi_shard_modify_mode = sequential`: DDL on the shards (the trigger, the view) and writes to the
///   catalog's reference tables in one transaction must go over one connection per node, or Citus refuses the
///   catalog write after the parallel DDL;
/// - `citus.enable_unsafe_triggers = on`: Citus refuses CREATE and DROP TRIGGER on distributed tables unless it is
///   on; the protect trigger is the point of protect() (its rows are encrypted where they are stored).
pub struct SequentialDdl {
    level: Option<i32>,
}

impl SequentialDdl {
    pub fn begin() -> SequentialDdl {
        if !citus_loaded() {
            return SequentialDdl { level: None };
        }
        // SAFETY: as in CatalogAccess::begin.
        unsafe {
            let level = pg_sys::NewGUCNestLevel();
            crate::access::set_local(c"citus.multi_shard_modify_mode", c"sequential");
            crate::access::set_local(c"citus.enable_unsafe_triggers", c"on");
            SequentialDdl { level: Some(level) }
        }
    }
}

impl Drop for SequentialDdl {
    fn drop(&mut self) {
        if let Some(level) = self.level {
            if !std::thread::panicking() {
                // SAFETY: closes the nest level opened in begin().
                unsafe { pg_sys::AtEOXact_GUC(true, level) };
            }
        }
    }
}

/// Refuses to create `key_id` in a Citus task (a shard trigger, a function pushed down to a worker): the key
/// catalog is a reference table that a task cannot write (see the module's documentation). Nothing is written.
pub fn check_key_creation(key_id: &str) -> Result<()> {
    if !in_citus_task() || !citus_loaded() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::NotReady,
        format!("encryption key \"{key_id}\" does not exist, and a Citus worker cannot create it"),
    )
    .with_detail("On Citus, event_crypto's key catalog is a reference table: keys are created on the coordinator, which writes them to every node in one distributed transaction. A shard trigger or a query pushed down to a worker cannot.")
    .with_hint("Create the key on the coordinator before the first event that needs it: SELECT event_crypto.create_key(event_crypto.subject_key_id('subject:', '<subject>', 1)); see docs/scaling.md."))
}
