//! Trigger functions.

use pgrx::prelude::*;

/// Statement trigger on `event_crypto.keys`: every change sends a relcache invalidation for the table, so every
/// backend drops its key cache (at its next transaction start at the latest); this backend drops it at once.
#[pg_trigger]
fn keys_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    if let Ok(rel) = trigger.relation() {
        // SAFETY: the relation is open for the duration of the trigger call.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel.oid()) };
    }
    crate::keys::invalidate_all();
    Ok(None)
}
