//! Which configured table a relation's protection comes from: the "firing relation → configured table" step of
//! the protect trigger (and of the catalog's cache invalidation).
//!
//! - A table that is configured itself, or a partition or INHERITS child of one: the relation itself. Its nearest
//!   protected ancestor is found by `config::read_rows` (`crate::catalog::ANCESTORS`).
//! - A **Citus shard** (`events_102008` on a worker): the distributed table it is a shard of (`events`), whose
//!   shell the worker knows from Citus's metadata. Its configuration, like the rest of event_crypto's catalog, is in
//!   a Citus reference table (`event_crypto.citus_setup()`, see `crate::citus` and docs/scaling.md), so every node
//!   reads the same rows. The same holds for a placement of a reference table (`event_crypto.keys_102000`).
//!
//! Citus is never needed, at build time or at run time: its catalog (`pg_catalog.pg_dist_shard`) is only queried
//! when it exists in the database, always by constant SQL with the relation's names bound as parameters. Whether
//! it exists, and the shard → table answers, are cached per backend; the cache of a relation is dropped with the
//! relation's protection configuration (relcache invalidation).

use crate::catalog::one;
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;

thread_local! {
    /// Whether Citus's catalog exists in this database (`None`: not looked up since the last invalidation).
    static CITUS: Cell<Option<bool>> = const { Cell::new(None) };
    /// Relation → the distributed table it is a shard of (`None`: not a shard), a handful of entries per backend.
    static SHARDS: RefCell<Vec<(pg_sys::Oid, Option<pg_sys::Oid>)>> = const { RefCell::new(Vec::new()) };
}

/// Forgets what was looked up: for one relation, or (`None`) for every relation and whether Citus is installed.
pub fn invalidate(relid: Option<pg_sys::Oid>) {
    match relid {
        None => {
            CITUS.with(|c| c.set(None));
            SHARDS.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    s.clear();
                }
            });
        }
        Some(r) => SHARDS.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                s.retain(|(o, _)| *o != r);
            }
        }),
    }
}

/// Whether Citus's metadata catalog exists in this database (looked up once per backend).
pub fn citus_installed() -> Result<bool> {
    if let Some(v) = CITUS.with(|c| c.get()) {
        return Ok(v);
    }
    let v = one::<bool>(
        "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_shard') IS NOT NULL \
           AND pg_catalog.to_regprocedure('pg_catalog.shard_name(pg_catalog.regclass, pg_catalog.int8)') IS NOT NULL",
        &[],
    )?
    .unwrap_or(false);
    CITUS.with(|c| c.set(Some(v)));
    Ok(v)
}

/// The relation the protection configuration of `relid` is looked up for: the distributed table when `relid` is a
/// Citus shard of it, else `relid` itself.
pub fn configured_relation(relid: pg_sys::Oid) -> Result<pg_sys::Oid> {
    match citus_table_of_shard(relid)? {
        Some(table) => {
            require_distributed_catalog(table)?;
            Ok(table)
        }
        None => Ok(relid),
    }
}

/// The Citus distributed (or reference) table `relid` is a shard (placement) of; `None` when it is not a shard,
/// or Citus is not installed.
pub fn citus_table_of_shard(relid: pg_sys::Oid) -> Result<Option<pg_sys::Oid>> {
    if let Some(hit) = SHARDS.with(|s| s.borrow().iter().find(|(o, _)| *o == relid).map(|(_, t)| *t)) {
        return Ok(hit);
    }
    let found = match (shard_id_of_name(relid), citus_installed()?) {
        (Some((shard_id, name, schema, namespace)), true) => lookup_shard(relid, shard_id, &name, &schema, namespace)?,
        _ => None,
    };
    SHARDS.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() >= 256 {
                s.clear();
            }
            s.push((relid, found));
        }
    });
    Ok(found)
}

/// Citus names a shard `<table>_<shard id>` (a long table name is shortened, the `_<shard id>` suffix stays): the
/// shard id the name of `relid` ends with, its name and its schema's name and oid. `None` for any other name.
fn shard_id_of_name(relid: pg_sys::Oid) -> Option<(i64, String, String, pg_sys::Oid)> {
    // SAFETY: syscache lookups; a relation or schema that does not exist gives NULL, handled below.
    unsafe {
        let name = pg_sys::get_rel_name(relid);
        if name.is_null() {
            return None;
        }
        let name = CStr::from_ptr(name).to_str().ok()?.to_string();
        let (_, digits) = name.rsplit_once('_')?;
        if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let shard_id = digits.parse::<i64>().ok()?;
        let namespace = pg_sys::get_rel_namespace(relid);
        let schema = pg_sys::get_namespace_name(namespace);
        if schema.is_null() {
            return None;
        }
        let schema = CStr::from_ptr(schema).to_str().ok()?.to_string();
        Some((shard_id, name, schema, namespace))
    }
}

/// Asks Citus's metadata whether shard `shard_id` is the relation named `name` in schema `schema`: Citus's own
/// naming of the shard (`pg_catalog.shard_name`, schema-qualified outside `public`) must be exactly its name, and
/// the distributed table must be in the same schema, so a table that merely ends in digits is never taken for one.
fn lookup_shard(
    relid: pg_sys::Oid,
    shard_id: i64,
    name: &str,
    schema: &str,
    namespace: pg_sys::Oid,
) -> Result<Option<pg_sys::Oid>> {
    let logical = one::<pg_sys::Oid>(
        "SELECT s.logicalrelid::pg_catalog.oid FROM pg_catalog.pg_dist_shard s \
         JOIN pg_catalog.pg_class l ON l.oid OPERATOR(pg_catalog.=) s.logicalrelid \
         WHERE s.shardid OPERATOR(pg_catalog.=) $1 \
           AND l.relnamespace OPERATOR(pg_catalog.=) $4 \
           AND pg_catalog.shard_name(s.logicalrelid, s.shardid) OPERATOR(pg_catalog.=) ANY (ARRAY[ \
                 pg_catalog.quote_ident($2), \
                 pg_catalog.quote_ident($3) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident($2)])",
        &[shard_id.into(), name.into(), schema.into(), namespace.into()],
    )?;
    Ok(logical.filter(|l| *l != relid))
}

/// Whether `relid` is a table Citus distributes (its rows live in shards, on the workers): false without Citus.
pub fn is_citus_table(relid: pg_sys::Oid) -> Result<bool> {
    if !citus_installed()? {
        return Ok(false);
    }
    Ok(one::<bool>(
        "SELECT true FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
        &[relid.into()],
    )?
    .unwrap_or(false))
}

/// For a trigger firing on a Citus shard: event_crypto's catalog must be shared by every node (Citus reference
/// tables), or the shard would find no configuration, or encrypt under a key only its own node knows.
pub fn require_distributed_catalog(table: pg_sys::Oid) -> Result<()> {
    let cat = crate::keys::catalog();
    let shared = one::<i64>(
        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_dist_partition p \
         WHERE p.logicalrelid::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[]) \
           AND p.partmethod OPERATOR(pg_catalog.=) 'n'",
        &[vec![cat.keys, cat.protected_columns, cat.blind_indexes].into()],
    )?
    .unwrap_or(0);
    if shared == 3 {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::NotReady,
        format!(
            "{} is distributed by Citus, but event_crypto's catalog is not shared by the cluster's nodes",
            relation_name(table)
        ),
    )
    .with_detail("On a Citus shard, event_crypto reads its keys and protection configuration from Citus reference tables, which every node holds.")
    .with_hint("Run SELECT event_crypto.citus_setup() on the coordinator (see docs/scaling.md)."))
}

/// The name of the table `relid` is, or (a Citus shard or placement) is a shard of.
pub fn table_name(relid: pg_sys::Oid) -> Result<Option<String>> {
    let table = citus_table_of_shard(relid)?.unwrap_or(relid);
    // SAFETY: a syscache lookup; NULL for a relation that does not exist.
    Ok(unsafe {
        let p = pg_sys::get_rel_name(table);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    })
}

/// A relation's name, for messages.
fn relation_name(relid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup; NULL for a relation that does not exist.
    unsafe {
        let p = pg_sys::get_rel_name(relid);
        if p.is_null() {
            format!("relation {}", relid.to_u32())
        } else {
            format!("table \"{}\"", CStr::from_ptr(p).to_string_lossy())
        }
    }
}
