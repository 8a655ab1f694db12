//! The audit log `event_crypto.audit_log`: one row per key lifecycle, configuration and subject action, written
//! only by event_crypto's own code paths (no role may insert into it directly, and no SQL function writes a row
//! its caller describes), and sealed into a hash chain when the writing transaction commits.
//!
//! Sealing happens in the transaction's pre-commit callback, after every deferred trigger has run: the
//! transaction takes the chain's lock (a self-conflicting lock on `event_crypto.audit_head`), reads the newest
//! head with the newest snapshot (so REPEATABLE READ and SERIALIZABLE writers seal as well as READ COMMITTED
//! ones), numbers and hashes all its new rows at once and appends the new head. The lock is therefore held only
//! while the transaction commits: nothing a session does before (`SET CONSTRAINTS ALL IMMEDIATE`, a long
//! transaction, `pg_sleep`) holds it, and a prepared transaction that wrote audit rows is refused. Each commit
//! seals its rows in one pass, however many it wrote.

use crate::access::{acting_role, as_catalog_owner, session_role};
use crate::catalog::get;
use crate::error::{raise, spi_error, spi_failed, OrRaise};
use event_crypto_core::audit::chain_hash;
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;
use std::cell::RefCell;

thread_local! {
    /// Ids of the audit rows this transaction inserted (also by hand), to seal at commit.
    static PENDING: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
}

/// Appends an audit row for the acting role (and the session's role); returns its id.
pub fn record(action: &str, subject: Option<&str>, key_ids: &[String], details: Value) -> i64 {
    let actor = acting_role();
    let session = session_role();
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "INSERT INTO event_crypto.audit_log (actor, session_actor, action, subject, key_ids, details) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    Some(1),
                    &[
                        actor.as_str().into(),
                        session.as_str().into(),
                        action.into(),
                        subject.into(),
                        key_ids.to_vec().into(),
                        JsonB(details).into(),
                    ],
                )
                .and_then(|t| t.first().get_one::<i64>())
                .unwrap_or_else(|e| spi_failed(e))
                .unwrap_or_else(|| raise(Error::new(ErrorKind::CatalogAccess, "no audit row was written")))
        })
    })
}

/// The chain hash of an audit row: SHA-256 over a domain label, the previous row's hash and the row's canonical
/// content (built by `event_crypto.audit_content`). Used by the seal and by `verify_audit_log()`.
#[pg_extern(immutable, parallel_safe, strict)]
fn audit_chain_hash(prev: &[u8], content: &str) -> Vec<u8> {
    match chain_hash(prev, content.as_bytes()) {
        Ok(h) => h.to_vec(),
        Err(e) => raise(e),
    }
}

/// Remembers an audit row inserted in this transaction, for the seal at commit (the `audit_pending` trigger,
/// see `crate::triggers`).
pub fn note_pending(id: i64) {
    PENDING.with(|p| p.borrow_mut().push(id));
}

/// Whether the audit log still exists (it does not once the extension was dropped in this transaction).
fn audit_log_exists() -> bool {
    // SAFETY: plain catalog lookups by name; missing objects give InvalidOid.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"event_crypto".as_ptr(), true);
        nsp != pg_sys::InvalidOid && pg_sys::get_relname_relid(c"audit_head".as_ptr(), nsp) != pg_sys::InvalidOid
    }
}

/// The newest chain head, read with the newest snapshot (the chain's lock is held, so every earlier sealer has
/// committed): (position, hash); position 0 and 32 zero bytes for an empty chain.
fn latest_head() -> Result<(i64, Vec<u8>)> {
    let query = c"SELECT seq, row_hash FROM event_crypto.audit_head ORDER BY seq DESC LIMIT 1";
    // SAFETY: SPI is connected by the caller; the snapshot pushed here is popped before returning (and by
    // transaction abort if the query raises); the result is read while SPI_tuptable is valid.
    unsafe {
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        let rc = pg_sys::SPI_execute(query.as_ptr(), true, 1);
        pg_sys::PopActiveSnapshot();
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            return Err(Error::new(
                ErrorKind::CatalogAccess,
                "the audit chain head could not be read",
            ));
        }
        if pg_sys::SPI_processed == 0 {
            return Ok((0, vec![0u8; 32]));
        }
        let table = pg_sys::SPI_tuptable;
        let tuple = *(*table).vals;
        let desc = (*table).tupdesc;
        let mut null = false;
        let seq = pg_sys::SPI_getbinval(tuple, desc, 1, &mut null);
        let seq = if null { None } else { i64::from_datum(seq, false) };
        let hash = pg_sys::SPI_getbinval(tuple, desc, 2, &mut null);
        let hash = if null { None } else { Vec::<u8>::from_datum(hash, false) };
        match (seq, hash) {
            (Some(s), Some(h)) => Ok((s, h)),
            _ => Err(Error::new(
                ErrorKind::CatalogAccess,
                "the audit chain head holds a NULL",
            )),
        }
    }
}

/// Seals this transaction's unsealed audit rows (see the module comment).
fn seal(ids: &[i64]) {
    if !audit_log_exists() {
        return;
    }
    // At pre-commit no statement snapshot is active any more; read-only SPI needs one. (The chain head is read
    // with the newest snapshot regardless, see latest_head.)
    // SAFETY: pushed here and popped below; an error aborts the transaction, which pops it.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let r = as_catalog_owner(|| {
        Spi::connect_mut(|client| -> Result<()> {
            let rows: Vec<i64> = client
                .select(
                    "SELECT id FROM event_crypto.audit_log WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND seq IS NULL ORDER BY id",
                    None,
                    &[ids.to_vec().into()],
                )
                .map_err(spi_error)?
                .map(|r| get::<i64>(&r, 1, "id"))
                .collect::<Result<_>>()?;
            if rows.is_empty() {
                return Ok(());
            }
            client
                .update(
                    "LOCK TABLE event_crypto.audit_head IN SHARE ROW EXCLUSIVE MODE",
                    None,
                    &[],
                )
                .map_err(spi_error)?;
            let (head_seq, head_hash) = latest_head()?;
            let seqs: Vec<i64> = (1..=rows.len() as i64).map(|i| head_seq + i).collect();
            let contents: Vec<String> = client
                .select(
                    "SELECT event_crypto.audit_content(pg_catalog.jsonb_populate_record(l, pg_catalog.jsonb_build_object('seq', u.seq))) \
                     FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[])) AS u(id, seq) \
                     JOIN event_crypto.audit_log l ON l.id OPERATOR(pg_catalog.=) u.id ORDER BY u.seq",
                    None,
                    &[rows.clone().into(), seqs.clone().into()],
                )
                .map_err(spi_error)?
                .map(|r| get::<String>(&r, 1, "content"))
                .collect::<Result<_>>()?;
            let mut prev = head_hash;
            let mut prevs = Vec::with_capacity(rows.len());
            let mut hashes = Vec::with_capacity(rows.len());
            for c in &contents {
                let h = chain_hash(&prev, c.as_bytes())?.to_vec();
                prevs.push(prev);
                hashes.push(h.clone());
                prev = h;
            }
            client
                .update(
                    "UPDATE event_crypto.audit_log l SET seq = u.seq, prev_hash = u.prev, row_hash = u.hash \
                     FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]), \
                                     pg_catalog.unnest($3::pg_catalog.bytea[]), pg_catalog.unnest($4::pg_catalog.bytea[])) \
                          AS u(id, seq, prev, hash) \
                     WHERE l.id OPERATOR(pg_catalog.=) u.id",
                    None,
                    &[rows.into(), seqs.clone().into(), prevs.into(), hashes.into()],
                )
                .map_err(spi_error)?;
            client
                .update(
                    "INSERT INTO event_crypto.audit_head (seq, row_hash) VALUES ($1, $2)",
                    None,
                    &[seqs.last().copied().into(), prev.into()],
                )
                .map_err(spi_error)?;
            Ok(())
        })
    });
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    r.or_raise()
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => {
            let ids = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            if !ids.is_empty() {
                seal(&ids);
            }
        }
        XACT_EVENT_PRE_PREPARE if PENDING.with(|p| !p.borrow().is_empty()) => {
            raise(
                Error::new(
                    ErrorKind::Unsupported,
                    "cannot PREPARE a transaction that wrote event_crypto audit rows",
                )
                .with_detail("Audit rows are sealed into the audit chain when their transaction commits; a prepared transaction would hold the chain until COMMIT PREPARED.")
                .with_hint("Commit the key, configuration or subject changes in an ordinary transaction."),
            );
        }
        XACT_EVENT_ABORT | XACT_EVENT_COMMIT | XACT_EVENT_PREPARE => PENDING.with(|p| p.borrow_mut().clear()),
        _ => {}
    }
}

/// Registers the transaction callback that seals audit rows; called from `_PG_init`.
pub fn register_callback() {
    // SAFETY: registers a static callback once per process.
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}
