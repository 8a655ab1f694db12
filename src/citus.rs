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
//!   of its own on other nodes). So a shard trigger that needs a new key (a new subject's) asks the coordinator to
//!   create it ([`create_key_on_coordinator`]): the coordinator checks the request, writes the key to every node
//!   in a distributed transaction of its own and commits before the trigger carries on with it. There is still
//!   exactly one key per subject in the cluster: concurrent requests for one key id wait for each other on the
//!   coordinator's unique index, and one inserts.
//! - The catalog names tables by `regclass`, and every node has its own oids: writes that select rows by table
//!   bind a `regclass` parameter, which Citus sends by name ([`CatalogAccess`] makes it schema-qualified), and
//!   drops are followed on each node's own placement (`event_crypto.citus_sql_drop()`, sql/citus.sql).
//! - Citus is detected at run time only (`crate::protect::target`): nothing here needs Citus to build or run.

use crate::error::{raise, OrRaise};
use crate::protect::config::KeySpec;
use crate::sqltypes::{Name, RegClass};
use event_crypto_core::envelope::check_key_id;
use event_crypto_core::subject::{parse_subject_key_id, subject_key_id};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use std::ffi::CStr;

/// `utils/timeout.h` (PostgreSQL 15), which pgrx does not bind: `STATEMENT_TIMEOUT` of `enum TimeoutId`.
const STATEMENT_TIMEOUT: std::ffi::c_int = 3;
extern "C-unwind" {
    fn enable_timeout_after(id: std::ffi::c_int, delay_ms: std::ffi::c_int);
    fn get_timeout_active(id: std::ffi::c_int) -> bool;
}

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

/// Whether this backend runs a Citus task (a shard trigger, a function pushed down to a worker) with Citus loaded:
/// then event_crypto's catalog, a set of reference tables, cannot be written from here.
pub fn in_task() -> bool {
    in_citus_task() && citus_loaded()
}

/// Whether event_crypto's key catalog is a Citus reference table here (`citus_setup()` has run). Then every key the
/// protect trigger creates on first use is created by the coordinator in a transaction of its own, from any node
/// and session: a key created inside the inserting transaction would hold Citus's lock on the catalog until that
/// transaction ends, and a shard trigger of the same transaction asking the coordinator for another key would wait
/// for it forever (Citus's deadlock detection does not see a wait across `run_command_on_coordinator`).
pub fn key_catalog_distributed() -> Result<bool> {
    if !citus_loaded() || !crate::protect::target::citus_installed()? {
        return Ok(false);
    }
    Ok(crate::catalog::one::<bool>(
        "SELECT true FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
        &[crate::keys::catalog().keys.into()],
    )?
    .unwrap_or(false))
}

/// Has the coordinator create `key_id`, a key the protect trigger of `relid`.`column` (a shard, in a Citus task)
/// creates on first use: a task cannot write the key catalog (a reference table), the coordinator can, in one
/// distributed transaction that reaches every node.
///
/// Used in a Citus task (which cannot write the catalog) and, on Citus, in every other session too
/// ([`key_catalog_distributed`]). The request goes over a new connection to the coordinator (`run_command_on_coordinator`) as the catalog's owner,
/// the role Citus itself connects between nodes as, which runs `event_crypto.citus_create_key(table, column,
/// key_id, inserter)` in a transaction of its own. That function, which no other role may call, checks that the
/// inserting role may insert into (or update) the table's protected column and that the column's configuration
/// creates this key id (its fixed key, a blind index key, or a subject key of its prefix), creates the key
/// (audited as an automatic creation by the inserting role) and commits on every node before the answer comes
/// back. The caller then finds the key in this node's
/// placement of the catalog (read with the latest snapshot, so also in REPEATABLE READ). The key stays if the
/// insert that needed it rolls back, as a key made by `create_key()` would.
pub fn create_key_on_coordinator(relid: pg_sys::Oid, column: &str, key_id: &str) -> Result<()> {
    let table = crate::protect::target::configured_relation(relid)?;
    let table = crate::access::Table::open(table)?;
    let inserter = crate::access::acting_role();
    // Every value is a quoted literal in a constant statement; the table's name is quoted and schema-qualified.
    let command = format!(
        "SELECT event_crypto.citus_create_key({}::pg_catalog.regclass, {}, {}, {})",
        quote_literal(&table.name)?,
        quote_literal(column)?,
        quote_literal(key_id)?,
        quote_literal(&inserter)?
    );
    // Not in a subtransaction: in a session that coordinates a distributed statement itself (an insert on a worker
    // with Citus's metadata, an INSERT ... SELECT whose rows also go to other nodes), Citus would send the savepoint
    // to connections still busy with that statement. A failure on the coordinator comes back as an answer;
    // run_command_on_coordinator() raises only when the coordinator is not in Citus's metadata (its own error).
    let answer = crate::access::as_catalog_owner(|| {
        pgrx::Spi::connect(|c| -> Result<Option<(Option<bool>, Option<String>)>> {
            let t = c
                .select(
                    "SELECT success, result FROM pg_catalog.run_command_on_coordinator($1)",
                    Some(1),
                    &[command.as_str().into()],
                )
                .map_err(crate::error::spi_error)?;
            match t.into_iter().next() {
                None => Ok(None),
                Some(r) => Ok(Some((
                    crate::catalog::get_opt::<bool>(&r, 1, "success")?,
                    crate::catalog::get_opt::<String>(&r, 2, "result")?,
                ))),
            }
        })
    });
    let failed = |why: String| {
        Error::new(
            ErrorKind::NotReady,
            format!("encryption key \"{key_id}\" does not exist, and the Citus coordinator did not create it"),
        )
        .with_detail(why)
        .with_hint("On Citus a new key is created by the coordinator (event_crypto.citus_create_key()), asked over a connection as the extension's owner: the coordinator must be in Citus's metadata (citus_set_coordinator_host()) and accept that role's connections, as Citus itself needs. A request cancelled by event_crypto.citus_key_request_timeout usually waited for this transaction's own earlier create_key(), rotate_key() or shred_key(): run those in a transaction of their own. See docs/scaling.md#citus.")
    };
    match answer {
        Ok(Some((Some(true), _))) => Ok(()),
        Ok(Some((_, result))) => Err(failed(format!(
            "The coordinator answered: {}",
            bounded(result.as_deref().unwrap_or("no answer"))
        ))),
        Ok(None) => Err(failed("No coordinator answered.".into())),
        Err(e) => Err(failed(format!("The request failed: {}", bounded(e.message())))),
    }
}

/// The first 500 characters of a message from another node.
fn bounded(s: &str) -> String {
    let mut out: String = s.chars().take(500).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// `s` as an SQL string literal (PostgreSQL's quote_literal: doubled quotes, `E''` when it has backslashes).
fn quote_literal(s: &str) -> Result<String> {
    let c = std::ffi::CString::new(s).map_err(|_| Error::invalid_argument("a name or key id must not contain NUL"))?;
    // SAFETY: quote_literal_cstr returns a palloc'd, NUL-terminated copy of its argument, quoted; copied at once.
    unsafe {
        let q = pg_sys::quote_literal_cstr(c.as_ptr());
        let out = CStr::from_ptr(q).to_string_lossy().into_owned();
        pg_sys::pfree(q.cast());
        Ok(out)
    }
}

/// The coordinator's side of a shard trigger's request for a new key ([`create_key_on_coordinator`]): creates
/// `key_id` if the protect trigger of `table`.`column_name` would create it on first use for a row `inserter` may
/// write. Callable by the catalog's owner only (no grant); `true` when this call created the key.
#[pg_extern(volatile, parallel_unsafe)]
fn citus_create_key(
    table: Option<RegClass>,
    column_name: Option<Name>,
    key_id: Option<&str>,
    inserter: Option<&str>,
) -> bool {
    let (Some(table), Some(column), Some(key_id), Some(inserter)) = (table, column_name, key_id, inserter) else {
        raise(Error::null_argument("table, column_name, key_id and inserter"))
    };
    create_requested_key(table.0, &column.0, key_id, inserter).or_raise()
}

fn create_requested_key(relid: pg_sys::Oid, column: &str, key_id: &str, inserter: &str) -> Result<bool> {
    // The request is bounded (event_crypto.citus_key_request_timeout): a transaction that wrote the key catalog
    // before it inserted the row that asks (create_key() then an insert of a new subject, in one transaction) holds
    // Citus's lock on the catalog, which this write would wait for while that transaction waits for the row.
    // SAFETY: arms this backend's statement timeout, as statement_timeout would, unless one is armed already; it is
    // disarmed when the statement ends.
    unsafe {
        if !get_timeout_active(STATEMENT_TIMEOUT) {
            enable_timeout_after(STATEMENT_TIMEOUT, crate::guc::citus_key_request_timeout_ms());
        }
    }
    check_key_id(key_id)?;
    crate::keys::require_writable(&format!("create encryption key \"{key_id}\""))?;
    let table = crate::access::Table::open(relid)?;
    let cfg = crate::protect::config::require_config(relid, column)?;
    let denied = |why: String| {
        Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "key id \"{key_id}\" is not created for role \"{inserter}\" by column \"{column}\" of {}",
                table.name
            ),
        )
        .with_detail(why)
    };
    // the inserting role, by name (role oids differ between nodes; names are what Citus keeps the same)
    let role =
        std::ffi::CString::new(inserter).map_err(|_| Error::invalid_argument("a role name must not contain NUL"))?;
    // SAFETY: a catalog lookup by name; InvalidOid when the role does not exist (missing_ok).
    let role = unsafe { pg_sys::get_role_oid(role.as_ptr(), true) };
    if role == pg_sys::InvalidOid {
        return Err(denied("The role does not exist on the coordinator.".into()));
    }
    let may_write = crate::catalog::one::<bool>(
        "SELECT pg_catalog.has_column_privilege($1, $2, $3, 'INSERT, UPDATE')",
        &[role.into(), relid.into(), column.into()],
    )?
    .unwrap_or(false);
    if !may_write {
        return Err(denied("The role may neither insert into nor update the column.".into()));
    }
    let by_config = match &cfg.key {
        KeySpec::Fixed(k) => k == key_id,
        KeySpec::Column { prefix, .. } => match parse_subject_key_id(prefix, key_id) {
            None => false,
            Some((_, 1)) => true,
            // a later generation only once the one before it is shredded, in a table that takes new keys then
            Some((subject, generation)) => {
                cfg.new_key_when_forgotten
                    && crate::keys::lookup(&subject_key_id(prefix, &subject, generation - 1)?).is_ok_and(|e| e.shredded)
            }
        },
    };
    if !by_config && !cfg.blind.iter().any(|b| b.key_id == key_id) {
        return Err(denied("The column's protection creates its own key, its blind index keys, and the first key generation of each subject (a later one once the generation before it is shredded, with on_forgotten => 'new_key'); this is none of them.".into()));
    }
    crate::keys::create_automatic_key(key_id, inserter)
}
