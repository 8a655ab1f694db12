//! Trigger functions: cache invalidation on the catalog tables, and the row trigger of protected tables.

use crate::error::OrRaise;
use pgrx::prelude::*;
use pgrx::PgTupleDesc;

/// Statement trigger on `event_crypto.keys`, `protected_columns` and `blind_indexes`: a change sends a relcache
/// invalidation for the table, so every backend drops what it cached from it (at its next transaction start at
/// the latest); this backend drops it at once.
#[pg_trigger]
fn catalog_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    if let Ok(rel) = trigger.relation() {
        // SAFETY: the relation is open for the duration of the trigger call.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel.oid()) };
        crate::keys::relation_changed(rel.oid());
        // On a Citus node the trigger fires on the node's placement of the table (event_crypto.keys_102008): the
        // caches are those of the table itself (a shred on the coordinator reaches every node's sessions).
        if let Some(table) = crate::protect::target::citus_table_of_shard(rel.oid()).or_raise() {
            // SAFETY: as above, for the table the placement belongs to.
            unsafe { pg_sys::CacheInvalidateRelcacheByRelid(table) };
            crate::keys::relation_changed(table);
        }
    }
    Ok(None)
}

/// The row trigger `protect()` installs: `BEFORE INSERT OR UPDATE ... FOR EACH ROW EXECUTE FUNCTION
/// event_crypto.protect_trigger('<column>')`.
#[pg_trigger]
fn protect_trigger<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    let replaced = crate::protect::protect_row(trigger).or_raise();
    let td = trigger.trigger_data();
    // SAFETY: the relation and tuples come from the firing trigger.
    unsafe {
        let tupdesc = PgTupleDesc::from_pg_unchecked((*td.tg_relation).rd_att);
        let tuple = replaced.unwrap_or(
            if td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_UPDATE {
                td.tg_newtuple
            } else {
                td.tg_trigtuple
            },
        );
        Ok(Some(PgHeapTuple::from_heap_tuple(tupdesc, tuple)))
    }
}

/// BEFORE INSERT OR UPDATE row trigger on `event_crypto.protected_columns` and `event_crypto.blind_indexes`:
/// every row is validated against its table, whoever writes it.
#[pg_trigger]
fn config_check<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    crate::protect::admin::check_config_row(trigger).or_raise();
    Ok(trigger.new())
}

/// BEFORE INSERT OR UPDATE OF handle row trigger on `event_crypto.keys` (`keys_handle`, enabled always): every row
/// of a key id has the key id's handle, which never changes, and no other key id has it. A row without a handle (a
/// dump of a release before handles, a row written by hand) gets the key id's handle, or a new random one. A
/// collision (catalogs merged by a restore) is refused with a message that says so.
#[pg_trigger]
fn keys_handle<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, PgHeapTupleError> {
    Ok(crate::keys::check_handle_row(trigger).or_raise())
}

/// AFTER INSERT row trigger on the audit log: the row is sealed into the chain when the transaction commits.
#[pg_trigger]
fn audit_pending<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    if let Some(new) = trigger.new() {
        if let Ok(Some(id)) = new.get_by_name::<i64>("id") {
            crate::audit::note_pending(id);
        }
    }
    Ok(None)
}
