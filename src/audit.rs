//! The audit log `event_crypto.audit_log`: one row per key lifecycle and subject action. Rows are written here
//! as the catalog owner and sealed into a hash chain at commit by the deferred trigger `audit_seal` (so the lock
//! on the chain head is held only while a transaction commits); `verify_audit_log()` walks the chain.

use crate::error::{raise, spi_failed};
use crate::keys::{as_catalog_owner, current_role};
use event_crypto_core::audit::chain_hash;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

/// Appends an audit row; returns its id.
pub fn record(action: &str, subject: Option<&str>, key_ids: &[String], details: Value) -> i64 {
    let actor = current_role();
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "INSERT INTO event_crypto.audit_log (actor, session_actor, action, subject, key_ids, details) \
                     VALUES ($1, SESSION_USER, $2, $3, $4, $5) RETURNING id",
                    Some(1),
                    &[
                        actor.as_str().into(),
                        action.into(),
                        subject.into(),
                        key_ids.to_vec().into(),
                        JsonB(details).into(),
                    ],
                )
                .and_then(|t| t.first().get_one::<i64>())
                .unwrap_or_else(|e| spi_failed(e))
                .unwrap_or_default()
        })
    })
}

/// The chain hash of an audit row: SHA-256 over a domain label, the previous row's hash and the row's canonical
/// content (built by `event_crypto.audit_content`). Used by the seal trigger and by `verify_audit_log()`.
#[pg_extern(immutable, parallel_safe, strict)]
fn audit_chain_hash(prev: &[u8], content: &str) -> Vec<u8> {
    match chain_hash(prev, content.as_bytes()) {
        Ok(h) => h.to_vec(),
        Err(e) => raise(e),
    }
}

/// Records a maintenance action (`usage_rotation`, `scheduled_rotation`, `enforce_retention`) with the key ids it
/// acted on; for the SQL maintenance functions, which run as their caller.
#[pg_extern(volatile, parallel_unsafe)]
fn record_maintenance(action: &str, key_ids: Vec<String>, details: pgrx::JsonB) -> i64 {
    if !matches!(action, "usage_rotation" | "scheduled_rotation" | "enforce_retention") {
        raise(
            event_crypto_core::Error::invalid_argument("not a maintenance action")
                .with_hint("One of usage_rotation, scheduled_rotation, enforce_retention."),
        );
    }
    record(action, None, &key_ids, details.0)
}
