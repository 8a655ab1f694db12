//! The audit log `event_crypto.audit_log`: one row per key lifecycle, configuration and subject action, written
//! only by event_crypto's own code paths (no role may insert into it directly, and no SQL function writes a row
//! its caller describes), and sealed into a hash chain when the writing transaction commits.
//!
//! Sealing happens in the transaction's pre-commit callback, after every deferred trigger has run: the
//! transaction reads its new rows' content (before any lock), then takes the chain's lock (a self-conflicting lock
//! on `event_crypto.audit_head`), reads the newest head with the newest snapshot (so REPEATABLE READ and
//! SERIALIZABLE writers seal as well as READ COMMITTED ones), numbers and hashes all its new rows in one pass, writes
//! them with one set-based UPDATE and appends the new head. The lock is therefore held only while the transaction
//! commits, for work linear in the rows it seals: nothing a session does before (`SET CONSTRAINTS ALL IMMEDIATE`,
//! a long transaction, `pg_sleep`) holds it, and a prepared transaction that wrote audit rows is refused.
//!
//! Keys a protect trigger creates for new subjects are not written one row each: they are collected while the
//! transaction runs and written as `create_key` rows listing up to [`KEYS_PER_ROW`] key ids each (consecutive
//! creations by the same roles with the same details), when the transaction records its next audit row of any
//! other kind or commits, whichever comes first, so the log keeps the order in which things happened. A bulk
//! insert of 40,000 new subjects writes and seals 4 rows, not 40,000 (issue 12, item 6). A key created in a
//! subtransaction that rolls back is not recorded (its key row is gone too).

use crate::access::{acting_role, as_catalog_owner, session_role};
use crate::catalog::get;
use crate::error::{raise, spi_error, spi_failed, OrRaise};
use event_crypto_core::audit::chain_hash;
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;
use std::cell::RefCell;

/// At most this many key ids in one `create_key` row written for automatically created keys.
pub const KEYS_PER_ROW: usize = 10_000;

thread_local! {
    /// Ids of the audit rows this transaction inserted (also by hand), to seal at commit.
    static PENDING: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
    /// Keys created automatically in this transaction whose `create_key` row is not written yet.
    static CREATED: RefCell<Vec<Created>> = const { RefCell::new(Vec::new()) };
    /// Those whose row is written, with the subtransaction that wrote it: if that one rolls back, the key (created
    /// before it) still exists and its row is written again.
    static WRITTEN: RefCell<Vec<(Created, pg_sys::SubTransactionId)>> = const { RefCell::new(Vec::new()) };
}

/// One automatically created key, waiting for its `create_key` row.
struct Created {
    key_id: String,
    /// The subtransaction it was created in (the parent's once that subtransaction commits).
    subxact: pg_sys::SubTransactionId,
    actor: String,
    session: String,
    details: Value,
}

/// Inserts one audit row as the catalog owner; returns its id.
fn insert_row(
    actor: &str,
    session: &str,
    action: &str,
    subject: Option<&str>,
    mut key_ids: Vec<String>,
    mut details: Value,
) -> i64 {
    // Key ids, and subjects named in the details, are stored as their digests: an audit row outlives a forget
    // (crate::tombstones). The `subject` column is given as a digest already.
    crate::tombstones::audit_row_for_storage(&mut key_ids, &mut details, "subject:").or_raise();
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "INSERT INTO event_crypto.audit_log (actor, session_actor, action, subject, key_ids, details) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    Some(1),
                    &[
                        actor.into(),
                        session.into(),
                        action.into(),
                        subject.into(),
                        key_ids.into(),
                        JsonB(details).into(),
                    ],
                )
                .and_then(|t| t.first().get_one::<i64>())
                .unwrap_or_else(|e| spi_failed(e))
                .unwrap_or_else(|| raise(Error::new(ErrorKind::CatalogAccess, "no audit row was written")))
        })
    })
}

/// Appends an audit row for the acting role (and the session's role); returns its id. The automatic key
/// creations collected before it are written first, so the log keeps the order of events. `subject` is the
/// subject's digest (`crate::tombstones::subject_digest_for_write`); key ids, and key ids and subjects the
/// details name, are replaced by their digests here.
pub fn record(action: &str, subject: Option<&str>, key_ids: &[String], details: Value) -> i64 {
    write_created();
    insert_row(
        &acting_role(),
        &session_role(),
        action,
        subject,
        key_ids.to_vec(),
        details,
    )
}

/// Records a key a protect trigger created for a new subject: collected, and written together with the others of
/// this transaction (see the module comment).
pub fn record_created(key_id: &str, details: Value) {
    // SAFETY: reads the current subtransaction's id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let created = Created {
        key_id: key_id.to_string(),
        subxact,
        actor: acting_role(),
        session: session_role(),
        details,
    };
    CREATED.with(|c| c.borrow_mut().push(created));
}

/// Writes the collected automatic key creations: one `create_key` row per run of consecutive creations with the
/// same roles and details, at most [`KEYS_PER_ROW`] key ids a row, in creation order. Called before any other audit
/// row is written, and at commit.
pub fn write_created() {
    let created = CREATED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if created.is_empty() {
        return;
    }
    let mut rest = created.as_slice();
    while let Some(first) = rest.first() {
        let run = rest
            .iter()
            .take(KEYS_PER_ROW)
            .take_while(|c| c.actor == first.actor && c.session == first.session && c.details == first.details)
            .count();
        let key_ids: Vec<String> = rest[..run].iter().map(|c| c.key_id.clone()).collect();
        insert_row(
            &first.actor,
            &first.session,
            "create_key",
            None,
            key_ids,
            first.details.clone(),
        );
        rest = &rest[run..];
    }
    // SAFETY: reads the current subtransaction's id.
    let by = unsafe { pg_sys::GetCurrentSubTransactionId() };
    WRITTEN.with(|w| w.borrow_mut().extend(created.into_iter().map(|c| (c, by))));
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

/// The canonical content of a row at position `seq`, from its content read with the position NULL: the content is
/// a jsonb array whose first element is the position, so only that element differs.
fn positioned(unpositioned: &str, seq: i64) -> Result<String> {
    match unpositioned.strip_prefix("[null") {
        Some(rest) if rest.starts_with(", ") => Ok(format!("[{seq}{rest}")),
        _ => Err(Error::new(
            ErrorKind::CatalogAccess,
            "an audit row's content does not have the expected form",
        )
        .with_detail(
            "event_crypto.audit_content() must return a jsonb array whose first element is the row's position.",
        )),
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
            // What does not depend on the chain is read before its lock: the rows and their content with the
            // position still NULL (they are this transaction's own rows; nobody else writes them).
            let rows: Vec<(i64, String)> = client
                .select(
                    "SELECT l.id, event_crypto.audit_content(l) FROM event_crypto.audit_log l \
                     WHERE l.id OPERATOR(pg_catalog.=) ANY ($1) AND l.seq IS NULL ORDER BY l.id",
                    None,
                    &[ids.to_vec().into()],
                )
                .map_err(spi_error)?
                .map(|r| Ok((get::<i64>(&r, 1, "id")?, get::<String>(&r, 2, "content")?)))
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
            // Under the lock: the head, one pass of hashing, one UPDATE and one INSERT.
            let (head_seq, head_hash) = latest_head()?;
            let n = rows.len();
            let (mut row_ids, mut seqs) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut prevs, mut hashes) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let mut prev = head_hash;
            for (i, (id, content)) in rows.into_iter().enumerate() {
                let seq = head_seq + 1 + i as i64;
                let h = chain_hash(&prev, positioned(&content, seq)?.as_bytes())?.to_vec();
                row_ids.push(id);
                seqs.push(seq);
                prevs.push(std::mem::replace(&mut prev, h.clone()));
                hashes.push(h);
            }
            let last = seqs.last().copied();
            client
                .update(
                    "UPDATE event_crypto.audit_log l SET seq = u.seq, prev_hash = u.prev, row_hash = u.hash \
                     FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.int8[]), \
                                     pg_catalog.unnest($3::pg_catalog.bytea[]), pg_catalog.unnest($4::pg_catalog.bytea[])) \
                          AS u(id, seq, prev, hash) \
                     WHERE l.id OPERATOR(pg_catalog.=) u.id",
                    None,
                    &[row_ids.into(), seqs.into(), prevs.into(), hashes.into()],
                )
                .map_err(spi_error)?;
            client
                .update(
                    "INSERT INTO event_crypto.audit_head (seq, row_hash) VALUES ($1, $2)",
                    None,
                    &[last.into(), prev.into()],
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
            if CREATED.with(|c| !c.borrow().is_empty()) && audit_log_exists() {
                // At pre-commit no statement snapshot is active any more; SPI needs one.
                // SAFETY: pushed here and popped below; an error aborts the transaction, which pops it.
                unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
                write_created();
                // SAFETY: pops the snapshot pushed above.
                unsafe { pg_sys::PopActiveSnapshot() };
            }
            let ids = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            if !ids.is_empty() {
                seal(&ids);
            }
        }
        XACT_EVENT_PRE_PREPARE
            if PENDING.with(|p| !p.borrow().is_empty()) || CREATED.with(|c| !c.borrow().is_empty()) =>
        {
            raise(
                Error::new(
                    ErrorKind::Unsupported,
                    "cannot PREPARE a transaction that wrote event_crypto audit rows",
                )
                .with_detail("Audit rows are sealed into the audit chain when their transaction commits; a prepared transaction would hold the chain until COMMIT PREPARED.")
                .with_hint("Commit the key, configuration or subject changes in an ordinary transaction."),
            );
        }
        XACT_EVENT_ABORT | XACT_EVENT_COMMIT | XACT_EVENT_PREPARE => {
            PENDING.with(|p| p.borrow_mut().clear());
            CREATED.with(|c| c.borrow_mut().clear());
            WRITTEN.with(|w| w.borrow_mut().clear());
        }
        _ => {}
    }
}

/// Keeps the collected key creations in step with subtransactions. When one rolls back, the creations made in it
/// are dropped (their key rows are gone too), and rows it wrote for creations made before it are written again
/// later (those keys still exist); when one commits, what it made and wrote belongs to its parent. Both lists only
/// ever change at their end: a subtransaction's creations and writes are always the newest.
#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    if event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB {
        return;
    }
    let _ = CREATED.try_with(|created| {
        WRITTEN.with(|written| {
            let (Ok(mut created), Ok(mut written)) = (created.try_borrow_mut(), written.try_borrow_mut()) else {
                return;
            };
            if event == SUBXACT_EVENT_ABORT_SUB {
                while created.last().is_some_and(|c| c.subxact >= sub) {
                    created.pop();
                }
                let mut again = Vec::new();
                while written.last().is_some_and(|(_, by)| *by >= sub) {
                    let (c, _) = written.pop().expect("not empty");
                    if c.subxact < sub {
                        again.push(c);
                    }
                }
                if !again.is_empty() {
                    again.reverse();
                    again.append(&mut created);
                    *created = again;
                }
            } else {
                for c in created.iter_mut().rev().take_while(|c| c.subxact >= sub) {
                    c.subxact = parent;
                }
                for (c, by) in written.iter_mut().rev().take_while(|(_, by)| *by >= sub) {
                    *by = parent;
                    if c.subxact >= sub {
                        c.subxact = parent;
                    }
                }
            }
        })
    });
}

/// Registers the transaction callbacks that write collected key creations and seal audit rows; called from
/// `_PG_init`.
pub fn register_callback() {
    // SAFETY: registers static callbacks once per process.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}
