//! No identifier of a forgotten subject stays in event_crypto's own tables (issue 15).
//!
//! A key id that is shredded whole (`shred_key`, `forget_subject`, retention) keeps its catalog rows — they are
//! what refuses its re-creation and makes its envelopes read as shredded — but under a keyed digest of the key id
//! (its *tombstone*, [`event_crypto_core::digest`]) instead of the key id itself. The audit log names every key id
//! and subject by the same digest. Whoever knows a key id (or a subject id and its key prefix) computes the digest
//! and finds it (`key_id_digest()`, `was_forgotten()`, `verify_forget_receipt()`); whoever holds a dump without
//! the master key cannot compute one, so cannot confirm a guessed e-mail address.
//!
//! The digest secret is one random key per catalog, made on first need (the first key created, or the first
//! shred) and stored only wrapped by the master key in `event_crypto.catalog_secrets` (dumped with the catalog,
//! rewrapped by `rewrap_keys`, a Citus reference table like the key catalog). Each backend keeps the digest
//! function it derives from it, and drops it when that table changes (a statement trigger sends a relcache
//! invalidation, also when the transaction that made the secret rolls back).
//!
//! Until `ALTER EXTENSION event_crypto UPDATE` has created the table (a new library under an older release's
//! objects), nothing is digested and everything works as before; the update converts what was written meanwhile.

use crate::access::as_catalog_owner;
use crate::catalog::{get, get_opt};
use crate::error::{raise, spi_error, OrRaise};
use event_crypto_core::digest::{self, DigestKey, SECRET_NAME};
use event_crypto_core::random::random_key;
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::rc::Rc;

/// The digest function this backend derived from the catalog secret, with the oid of the table it came from.
struct Cached {
    table: pg_sys::Oid,
    key: Rc<DigestKey>,
}

thread_local! {
    static CACHED: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// Relcache invalidation callback, registered in `_PG_init`: drops the digest function when the secrets table
/// changes (or on a full reset).
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let _ = CACHED.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            if relid == pg_sys::InvalidOid || c.as_ref().is_some_and(|k| k.table == relid) {
                *c = None;
            }
        }
    });
}

pub fn register_invalidation() {
    // SAFETY: called once from _PG_init; the callback only touches this module's thread-local state.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0usize)) };
}

/// The oid of `event_crypto.catalog_secrets`, or `None` while the database has an older release's objects.
fn secrets_table() -> Option<pg_sys::Oid> {
    // SAFETY: plain catalog lookups by name; missing objects give InvalidOid.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"event_crypto".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::get_relname_relid(c"catalog_secrets".as_ptr(), nsp);
        (rel != pg_sys::InvalidOid).then_some(rel)
    }
}

/// The stored secret: its wrapped bytes and the master key that wrapped them, read with the newest snapshot (a
/// REPEATABLE READ transaction must find a secret made after it started, as it finds tombstones made since).
fn read_secret() -> Result<Option<(Vec<u8>, String)>> {
    let query = c"SELECT wrapped_secret, master_key_id FROM event_crypto.catalog_secrets WHERE name OPERATOR(pg_catalog.=) 'key-id-digest'";
    as_catalog_owner(|| {
        Spi::connect(|_client| {
            // SAFETY: SPI is connected; the snapshot pushed here is popped before returning (and by transaction
            // abort if the query raises); the result is read while SPI_tuptable is valid.
            unsafe {
                // a parallel worker may not take a new snapshot: it reads with the leader's
                let latest = !pg_sys::IsInParallelMode();
                if latest {
                    pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
                }
                let rc = pg_sys::SPI_execute(query.as_ptr(), true, 1);
                if latest {
                    pg_sys::PopActiveSnapshot();
                }
                if rc != pg_sys::SPI_OK_SELECT as i32 {
                    return Err(Error::new(
                        ErrorKind::CatalogAccess,
                        "the event_crypto catalog secret could not be read",
                    ));
                }
                if pg_sys::SPI_processed == 0 {
                    return Ok(None);
                }
                let table = pg_sys::SPI_tuptable;
                let tuple = *(*table).vals;
                let desc = (*table).tupdesc;
                let mut null = false;
                let w = pg_sys::SPI_getbinval(tuple, desc, 1, &mut null);
                let wrapped = if null { None } else { Vec::<u8>::from_datum(w, false) };
                let m = pg_sys::SPI_getbinval(tuple, desc, 2, &mut null);
                let master = if null { None } else { String::from_datum(m, false) };
                match (wrapped, master) {
                    (Some(w), Some(m)) => Ok(Some((w, m))),
                    _ => Err(Error::new(
                        ErrorKind::CatalogAccess,
                        "the event_crypto catalog secret holds a NULL",
                    )),
                }
            }
        })
    })
}

fn mismatch(wrapped_by: &str, ring: &event_crypto_core::master::MasterKeyRing) -> Error {
    Error::new(
        ErrorKind::MasterKeyMismatch,
        "master key mismatch for the event_crypto catalog's digest secret",
    )
    .with_detail(format!(
        "The secret was wrapped by master key {wrapped_by}; this server's master key ring holds {}.",
        ring.describe()
    ))
    .with_hint("Add the master key the catalog was wrapped by to the ring and restart the server.")
}

/// The catalog's digest function, or `None` when the catalog has no digest secret (then no tombstone and no
/// digest exists anywhere in it) or the secrets table does not exist yet.
pub fn digest_key() -> Result<Option<Rc<DigestKey>>> {
    if let Some(k) = CACHED.with(|c| c.borrow().as_ref().map(|k| k.key.clone())) {
        return Ok(Some(k));
    }
    let Some(table) = secrets_table() else {
        return Ok(None);
    };
    let Some((wrapped, master_id)) = read_secret()? else {
        return Ok(None);
    };
    let ring = crate::master::get()?;
    let m = ring.get(&master_id).ok_or_else(|| mismatch(&master_id, ring))?;
    let secret = m.unwrap_secret(&wrapped, SECRET_NAME)?;
    let key = Rc::new(DigestKey::new(&secret));
    // (the secret's buffer is zeroized when dropped; the HMAC state derived from it is wiped with the DigestKey)
    drop(secret);
    CACHED.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = Some(Cached {
                table,
                key: key.clone(),
            });
        }
    });
    Ok(Some(key))
}

/// The catalog's digest function, making the secret first if the catalog has none (a writing path: the caller
/// has checked that the transaction may write). `None` only while the secrets table does not exist yet.
pub fn digest_key_for_write() -> Result<Option<Rc<DigestKey>>> {
    if let Some(k) = digest_key()? {
        return Ok(Some(k));
    }
    if secrets_table().is_none() {
        return Ok(None);
    }
    let m = crate::master::get()?.active();
    let secret = random_key()?;
    let wrapped = m.wrap_secret(&secret, SECRET_NAME)?;
    // (the secret's buffer is zeroized when dropped)
    drop(secret);
    // Two sessions making the first secret at once: the primary key makes one wait for the other, and both use the
    // one that was stored.
    as_catalog_owner(|| {
        crate::catalog::modify(
            "INSERT INTO event_crypto.catalog_secrets (name, wrapped_secret, master_key_id) \
             VALUES ('key-id-digest', $1, $2) ON CONFLICT DO NOTHING",
            &[wrapped.into(), m.id().into()],
        )
    })?;
    digest_key()?.map(Some).ok_or_else(|| {
        Error::new(
            ErrorKind::CatalogAccess,
            "the event_crypto catalog secret was not stored",
        )
    })
}

/// The tombstone name of `key_id` (its digest), or `None` when the catalog has no digest secret (then no key id
/// has a tombstone).
pub fn tombstone_id(key_id: &str) -> Result<Option<String>> {
    Ok(digest_key()?.map(|k| k.digest(key_id)))
}

/// The digest that names `subject` under `key_prefix` in the audit log (a writing path); `None` while the secrets
/// table does not exist yet (the subject is then recorded as it is, and the update converts it).
pub fn subject_digest_for_write(key_prefix: &str, subject: &str) -> Result<Option<String>> {
    Ok(digest_key_for_write()?.map(|k| k.subject_digest(key_prefix, subject)))
}

/// Whether `key_id` has a tombstone: it was shredded whole and only its digest remains in the catalog.
pub fn is_tombstoned(key_id: &str) -> Result<bool> {
    let Some(t) = tombstone_id(key_id)? else {
        return Ok(false);
    };
    Ok(as_catalog_owner(|| {
        crate::catalog::one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM event_crypto.keys WHERE key_id OPERATOR(pg_catalog.=) $1)",
            &[t.as_str().into()],
        )
    })?
    .unwrap_or(false))
}

/// Replaces a key id shredded whole by its tombstone everywhere event_crypto keeps it: its key catalog rows (every
/// version, all shredded: no key material, the same dates and roles), its usage counts, its record in
/// `legacy_subject_keys` (the owner subject by digest too), and mentions in the last maintenance run's result.
/// Does nothing while a version is live, or before the update created the secrets table. Returns whether rows
/// were moved.
pub fn entomb(key_id: &str) -> Result<bool> {
    let Some(dk) = digest_key_for_write()? else {
        return Ok(false);
    };
    let t = dk.digest(key_id);
    let moved = as_catalog_owner(|| -> Result<bool> {
        let moved = Spi::connect_mut(|c| {
            c.update(
                // renamed in place: each row keeps everything else, its handle included (format 2 envelopes under the
                // key find the tombstone by it and read as shredded); the handle trigger fires on UPDATE OF handle only
                "WITH moved AS (UPDATE event_crypto.keys k SET key_id = $2, wrapped_key = NULL, wrapped_index_key = NULL \
                                 WHERE k.key_id OPERATOR(pg_catalog.=) $1 \
                                   AND NOT EXISTS (SELECT 1 FROM event_crypto.keys l WHERE l.key_id OPERATOR(pg_catalog.=) $1 \
                                                      AND l.status OPERATOR(pg_catalog.<>) 'shredded') \
                                 RETURNING 1) \
                 SELECT pg_catalog.count(*) FROM moved",
                Some(1),
                &[key_id.into(), t.as_str().into()],
            )
            .and_then(|r| r.first().get_one::<i64>())
            .map_err(spi_error)
        })?
        .unwrap_or(0);
        if moved == 0 {
            return Ok(false);
        }
        crate::catalog::modify(
            "WITH gone AS (DELETE FROM event_crypto.key_usage u WHERE u.key_id OPERATOR(pg_catalog.=) $1 RETURNING u.*) \
             INSERT INTO event_crypto.key_usage AS u (key_id, version, encryptions, decryptions, disabled_decryptions, updated_at) \
             SELECT $2, g.version, g.encryptions, g.decryptions, g.disabled_decryptions, g.updated_at FROM gone g \
             ON CONFLICT (key_id, version) DO UPDATE \
             SET encryptions = u.encryptions OPERATOR(pg_catalog.+) EXCLUDED.encryptions, \
                 decryptions = u.decryptions OPERATOR(pg_catalog.+) EXCLUDED.decryptions, \
                 disabled_decryptions = u.disabled_decryptions OPERATOR(pg_catalog.+) EXCLUDED.disabled_decryptions",
            &[key_id.into(), t.as_str().into()],
        )?;
        if crate::keys::legacy_keys_exist() {
            let owners: Vec<(String, String)> = Spi::connect(|c| {
                c.select(
                    "SELECT key_prefix, subject FROM event_crypto.legacy_subject_keys WHERE key_id OPERATOR(pg_catalog.=) $1",
                    None,
                    &[key_id.into()],
                )
                .map_err(spi_error)?
                .map(|r| Ok((get::<String>(&r, 1, "key_prefix")?, get::<String>(&r, 2, "subject")?)))
                .collect::<Result<_>>()
            })?;
            for (prefix, subject) in owners {
                crate::catalog::modify(
                    "UPDATE event_crypto.legacy_subject_keys SET key_id = $3, subject = $4 \
                     WHERE key_id OPERATOR(pg_catalog.=) $1 AND key_prefix OPERATOR(pg_catalog.=) $2",
                    &[
                        key_id.into(),
                        prefix.as_str().into(),
                        t.as_str().into(),
                        dk.subject_digest(&prefix, &subject).as_str().into(),
                    ],
                )?;
            }
        }
        scrub_maintenance_record(&Mentions::from([(key_id.to_string(), t.clone())]))?;
        Ok(true)
    })?;
    Ok(moved)
}

/// Replaces mentions of shredded key ids in the last maintenance run's result (a key that could not be rotated,
/// a version that failed to be destroyed), which is kept until the next run.
fn scrub_maintenance_record(mentions: &Mentions) -> Result<()> {
    let Some(JsonB(mut v)) =
        crate::catalog::one::<JsonB>("SELECT last_result FROM event_crypto.maintenance_status", &[])?
    else {
        return Ok(());
    };
    if scrub(&mut v, mentions) {
        crate::catalog::modify(
            "UPDATE event_crypto.maintenance_status SET last_result = $1",
            &[JsonB(v).into()],
        )?;
    }
    Ok(())
}

/// Key ids and their digests, by key id.
pub type Mentions = std::collections::HashMap<String, String>;

/// Replaces, in a JSON value, every string equal to a key id of `mentions`, every object member named by one, and
/// every quoted mention of one inside a longer string (messages name key ids in double quotes), by its digest.
/// Returns whether anything changed. Linear in the size of the value (each quoted part is looked up).
pub fn scrub(v: &mut Value, mentions: &Mentions) -> bool {
    if mentions.is_empty() {
        return false;
    }
    match v {
        Value::String(s) => {
            if let Some(d) = mentions.get(s.as_str()) {
                *s = d.clone();
                return true;
            }
            scrub_quoted(s, mentions)
        }
        Value::Array(a) => a.iter_mut().fold(false, |acc, x| scrub(x, mentions) | acc),
        Value::Object(m) => {
            let mut changed = false;
            let renamed: Vec<(String, String)> = m
                .keys()
                .filter_map(|name| mentions.get(name).map(|d| (name.clone(), d.clone())))
                .collect();
            for (from, to) in renamed {
                if let Some(x) = m.remove(&from) {
                    m.insert(to, x);
                    changed = true;
                }
            }
            for x in m.values_mut() {
                changed |= scrub(x, mentions);
            }
            changed
        }
        _ => false,
    }
}

/// Replaces every `"<key id>"` of `mentions` inside `s` by `"<digest>"`.
fn scrub_quoted(s: &mut String, mentions: &Mentions) -> bool {
    if !s.contains('"') {
        return false;
    }
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut rest = s.as_str();
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        match after.find('"') {
            Some(close) => {
                let inner = &after[..close];
                match mentions.get(inner) {
                    Some(d) => {
                        out.push_str(d);
                        changed = true;
                    }
                    None => out.push_str(inner),
                }
                out.push('"');
                rest = &after[close + 1..];
            }
            None => {
                rest = after;
                break;
            }
        }
    }
    out.push_str(rest);
    if changed {
        *s = out;
    }
    changed
}

/// Key ids an audit row's details name besides its `key_ids`: members `key_id`, the keys of `skipped_keys`, and
/// the quoted key id at the start of each `damaged_keys` entry (`"tenant:7" version 2`).
fn mentioned_key_ids(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| mentioned_key_ids(x, out)),
        Value::Object(m) => {
            for (name, x) in m {
                match (name.as_str(), x) {
                    ("key_id", Value::String(s)) => out.push(s.clone()),
                    ("skipped_keys", Value::Object(k)) => out.extend(k.keys().cloned()),
                    ("damaged_keys", Value::Array(a)) => out.extend(a.iter().filter_map(|e| {
                        let s = e.as_str()?.strip_prefix('"')?;
                        Some(s[..s.find('"')?].to_string())
                    })),
                    _ => mentioned_key_ids(x, out),
                }
            }
        }
        _ => {}
    }
}

/// Subject ids an audit row's details name (`subject` members, e.g. a retention policy's subject that could not
/// be forgotten), each replaced by its digest under the entry's `key_prefix` (or `default_prefix`).
fn scrub_subjects(v: &mut Value, dk: &DigestKey, default_prefix: &str) -> bool {
    match v {
        Value::Array(a) => a
            .iter_mut()
            .fold(false, |acc, x| scrub_subjects(x, dk, default_prefix) | acc),
        Value::Object(m) => {
            let prefix = m
                .get("key_prefix")
                .and_then(Value::as_str)
                .unwrap_or(default_prefix)
                .to_string();
            let mut changed = false;
            if let Some(Value::String(s)) = m.get_mut("subject") {
                if !digest::is_digest(s) {
                    *s = dk.subject_digest(&prefix, s);
                    changed = true;
                }
            }
            for (name, x) in m.iter_mut() {
                if name != "subject" {
                    changed |= scrub_subjects(x, dk, &prefix);
                }
            }
            changed
        }
        _ => false,
    }
}

/// What an audit row stores: its key ids as digests, and its details with every key id and subject they name
/// replaced by digests (`subject` members under `key_prefix`, or `default_prefix`). Unchanged while the secrets
/// table does not exist yet (`ALTER EXTENSION event_crypto UPDATE` converts such rows). Returns whether anything
/// changed.
pub fn audit_row_for_storage(key_ids: &mut [String], details: &mut Value, default_prefix: &str) -> Result<bool> {
    let mut mentions: Vec<String> = key_ids.iter().filter(|k| !digest::is_digest(k)).cloned().collect();
    mentioned_key_ids(details, &mut mentions);
    mentions.retain(|k| !digest::is_digest(k));
    let has_subject = details.to_string().contains("\"subject\"");
    if mentions.is_empty() && !has_subject {
        return Ok(false);
    }
    let Some(dk) = digest_key_for_write()? else {
        return Ok(false);
    };
    let mut pairs = Mentions::with_capacity(mentions.len());
    for k in mentions {
        pairs.entry(k).or_insert_with_key(|k| dk.digest(k));
    }
    let mut changed = false;
    for k in key_ids.iter_mut() {
        if let Some(d) = pairs.get(k.as_str()) {
            *k = d.clone();
            changed = true;
        }
    }
    changed |= scrub_subjects(details, &dk, default_prefix);
    changed |= scrub(details, &pairs);
    Ok(changed)
}

/// The text of a key id as an audit row or `key_usage` stores it when its key catalog rows are gone: its digest
/// (the key id itself before the update created the secrets table).
pub fn stored_key_id(key_id: &str) -> Result<String> {
    Ok(digest_key_for_write()?.map_or_else(|| key_id.to_string(), |k| k.digest(key_id)))
}

/// The key ids usage counts are recorded under in `key_usage`: each key id whose catalog rows hold its name, and
/// the digest of one shredded whole since the counts were made (its rows are its tombstone's now).
pub fn usage_key_ids(ids: Vec<String>) -> Result<Vec<String>> {
    let Some(dk) = digest_key()? else {
        return Ok(ids);
    };
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    let named: Vec<String> = as_catalog_owner(|| {
        crate::catalog::all(
            "SELECT DISTINCT key_id FROM event_crypto.keys WHERE key_id OPERATOR(pg_catalog.=) ANY ($1)",
            &[distinct.into()],
            "key_id",
        )
    })?;
    Ok(ids
        .into_iter()
        .map(|k| if named.contains(&k) { k } else { dk.digest(&k) })
        .collect())
}

/// The digest of `key_id` (the catalog has a digest secret; for tests).
#[cfg(any(test, feature = "pg_test"))]
pub fn key_id_digest_of(key_id: &str) -> String {
    digest_key().unwrap().expect("a digest secret").digest(key_id)
}

/// The digest of a key id as the audit log and the key catalog's tombstones hold it, to search them:
/// `SELECT * FROM event_crypto.audit_log WHERE key_ids @> ARRAY[event_crypto.key_id_digest('tenant-42')]`. Any
/// text (a key id, or a key prefix and escaped subject id). NULL while the catalog has no digest secret yet
/// (nothing has been recorded under a digest).
#[pg_extern(stable, parallel_safe)]
fn key_id_digest(key_id: Option<&str>) -> Option<String> {
    let key_id = key_id.unwrap_or_else(|| raise(Error::null_argument("key_id")));
    tombstone_id(key_id).or_raise()
}

/// Whether `subject` (of the kind `key_prefix`, chosen as `forget_subject` chooses it) has been forgotten: the key
/// catalog holds the tombstone of its first key generation, so new events of the subject are refused (or, with
/// `on_forgotten => 'new_key'`, get a later generation). The catalog does not hold the subject id: this recomputes
/// its digest.
#[pg_extern(stable, parallel_restricted)]
fn was_forgotten(subject: Option<&str>, key_prefix: default!(Option<&str>, "NULL")) -> bool {
    let subject = subject.unwrap_or_else(|| raise(Error::null_argument("subject")));
    event_crypto_core::subject::check_subject(subject).or_raise();
    let prefix = crate::protect::subjects::subject_kind(key_prefix, "was_forgotten").or_raise();
    let Ok(first) = event_crypto_core::subject::subject_key_id(&prefix, subject, 1) else {
        // no key of this subject can exist under this prefix: none was ever shredded
        return false;
    };
    is_tombstoned(&first).or_raise()
}

/// Checks a receipt `forget_subject(subject)` returned against the audit log: its audit row exists, records a
/// forget of this subject (by digest) under the receipt's key prefix, with the receipt's key ids, counts and
/// outcome, and is sealed into the chain with a hash that matches its content (or is this transaction's own,
/// unsealed yet). The chain as a whole: `verify_audit_log()`.
#[pg_extern(stable, parallel_restricted)]
fn verify_forget_receipt(subject: Option<&str>, receipt: Option<JsonB>) -> bool {
    let subject = subject.unwrap_or_else(|| raise(Error::null_argument("subject")));
    let JsonB(receipt) = receipt.unwrap_or_else(|| raise(Error::null_argument("receipt")));
    verify_receipt(subject, &receipt).or_raise()
}

/// An audit row as a receipt is checked against: action, subject, key ids, details, whether its hash holds.
type AuditRow = (String, Option<String>, Vec<String>, Value, bool);

fn verify_receipt(subject: &str, receipt: &Value) -> Result<bool> {
    let (Some(prefix), Some(audit_id)) = (
        receipt.get("key_prefix").and_then(Value::as_str),
        receipt.get("audit_id").and_then(Value::as_i64),
    ) else {
        return Ok(false);
    };
    let Some(dk) = digest_key()? else {
        return Ok(false);
    };
    let row = as_catalog_owner(|| {
        Spi::connect(|c| -> Result<Option<AuditRow>> {
            let t = c
                .select(
                    "SELECT l.action, l.subject, l.key_ids, l.details, \
                            CASE WHEN l.seq IS NULL THEN l.xact_id OPERATOR(pg_catalog.=) pg_catalog.pg_current_xact_id_if_assigned() \
                                 ELSE l.row_hash OPERATOR(pg_catalog.=) event_crypto.audit_chain_hash(l.prev_hash, event_crypto.audit_content(l)) END \
                     FROM event_crypto.audit_log l WHERE l.id OPERATOR(pg_catalog.=) $1",
                    Some(1),
                    &[audit_id.into()],
                )
                .map_err(spi_error)?;
            match t.into_iter().next() {
                None => Ok(None),
                Some(r) => Ok(Some((
                    get::<String>(&r, 1, "action")?,
                    get_opt::<String>(&r, 2, "subject")?,
                    get::<Vec<String>>(&r, 3, "key_ids")?,
                    get::<JsonB>(&r, 4, "details")?.0,
                    get_opt::<bool>(&r, 5, "sealed")?.unwrap_or(false),
                ))),
            }
        })
    })?;
    let Some((action, stored_subject, stored_ids, details, sealed)) = row else {
        return Ok(false);
    };
    if action != "forget_subject" || !sealed || stored_subject.as_deref() != Some(&dk.subject_digest(prefix, subject)) {
        return Ok(false);
    }
    let same = |name: &str| details.get(name) == receipt.get(name);
    if ![
        "key_prefix",
        "versions_destroyed",
        "tombstones",
        "complete",
        "already_forgotten",
    ]
    .iter()
    .all(|n| same(n))
    {
        return Ok(false);
    }
    let Some(ids) = receipt.get("key_ids").and_then(Value::as_array) else {
        return Ok(false);
    };
    let mut receipt_ids: Vec<String> = ids.iter().filter_map(Value::as_str).map(|k| dk.digest(k)).collect();
    if receipt_ids.len() != ids.len() {
        return Ok(false);
    }
    let mut stored_ids = stored_ids;
    receipt_ids.sort();
    stored_ids.sort();
    Ok(receipt_ids == stored_ids)
}

/// For `ALTER EXTENSION event_crypto UPDATE` to 0.3.0 (called by the update script, which drops it again; not
/// part of a fresh install): replaces every key id shredded whole by its tombstone, rewrites every audit row so
/// that it names key ids and subjects by digest, re-seals the chain from the first row it changed, and records
/// that in an audit row (`digest_catalog`) with the old chain head. Returns what it did.
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn upgrade_to_digests() -> JsonB {
    JsonB(convert_catalog().or_raise())
}

fn convert_catalog() -> Result<Value> {
    // key ids shredded whole that still hold their name
    let shredded: Vec<String> = as_catalog_owner(|| {
        crate::catalog::all(
            "SELECT key_id FROM event_crypto.keys GROUP BY key_id \
             HAVING pg_catalog.bool_and(status OPERATOR(pg_catalog.=) 'shredded') ORDER BY key_id",
            &[],
            "key_id",
        )
    })?
    .into_iter()
    .filter(|k: &String| !digest::is_digest(k))
    .collect();
    // every audit row in chain order (unsealed ones last)
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i64, Option<i64>, Option<String>, Vec<String>, Value)> = as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT id, seq, subject, key_ids, details FROM event_crypto.audit_log ORDER BY seq NULLS LAST, id",
                None,
                &[],
            )
            .map_err(spi_error)?
            .map(|r| {
                Ok((
                    get::<i64>(&r, 1, "id")?,
                    get_opt::<i64>(&r, 2, "seq")?,
                    get_opt::<String>(&r, 3, "subject")?,
                    get::<Vec<String>>(&r, 4, "key_ids")?,
                    get::<JsonB>(&r, 5, "details")?.0,
                ))
            })
            .collect::<Result<Vec<_>>>()
        })
    })?;
    let needs_subject = |s: &Option<String>| s.as_deref().is_some_and(|s| !digest::is_digest(s));
    let audit_work = rows.iter().any(|(_, _, subject, ids, details)| {
        needs_subject(subject) || ids.iter().any(|k| !digest::is_digest(k)) || {
            let mut m = Vec::new();
            mentioned_key_ids(details, &mut m);
            !m.is_empty() || details.to_string().contains("\"subject\"")
        }
    });
    if shredded.is_empty() && !audit_work {
        return Ok(json!({"tombstones": 0, "audit_rows_rewritten": 0}));
    }
    crate::keys::require_writable("convert the event_crypto catalog to digests")?;
    let dk = digest_key_for_write()
        .map_err(|e| {
            let hint = format!(
                "{} The update to 0.3.0 replaces shredded key ids and the audit log's key ids and subject ids by digests under a secret wrapped by the master key: load the master key ring (shared_preload_libraries and event_crypto.master_key_file or master_key_command), restart, and run ALTER EXTENSION event_crypto UPDATE again.",
                e.hint().unwrap_or("")
            );
            e.with_hint(hint.trim_start().to_string())
        })?
        .ok_or_else(|| Error::new(ErrorKind::CatalogAccess, "event_crypto.catalog_secrets is missing"))?;
    let mut tombstones = 0;
    for k in &shredded {
        if entomb(k)? {
            tombstones += 1;
        }
    }
    // the audit log: rows rewritten in place, then the chain re-sealed from the first one that changed
    let mut rewritten = 0i64;
    let mut first_changed: Option<i64> = None;
    for (id, seq, subject, mut ids, mut details) in rows {
        let prefix = details
            .get("key_prefix")
            .and_then(Value::as_str)
            .unwrap_or("subject:")
            .to_string();
        let mut changed = audit_row_for_storage(&mut ids, &mut details, &prefix)?;
        let subject = match subject {
            Some(s) if !digest::is_digest(&s) => {
                changed = true;
                Some(dk.subject_digest(&prefix, &s))
            }
            other => other,
        };
        if !changed {
            continue;
        }
        rewritten += 1;
        if let Some(s) = seq {
            first_changed = Some(first_changed.map_or(s, |f: i64| f.min(s)));
        }
        as_catalog_owner(|| {
            crate::catalog::modify(
                "UPDATE event_crypto.audit_log SET subject = $2, key_ids = $3, details = $4 WHERE id OPERATOR(pg_catalog.=) $1",
                &[id.into(), subject.into(), ids.into(), JsonB(details).into()],
            )
        })?;
    }
    let mut out = json!({"tombstones": tombstones, "audit_rows_rewritten": rewritten});
    if let Some(from) = first_changed {
        let (old_seq, old_hash) = reseal_from(from)?;
        let details = json!({
            "reason": "event_crypto 0.3.0 names key ids and subjects by keyed digests: audit rows written before were rewritten and the chain re-sealed from the first of them",
            "audit_rows_rewritten": rewritten,
            "resealed_from_seq": from,
            "old_head_seq": old_seq,
            "old_head_hash": hex(&old_hash),
            "tombstones": tombstones,
        });
        crate::audit::record("digest_catalog", None, &[], details.clone());
        out["resealed_from_seq"] = json!(from);
        out["old_head_seq"] = json!(old_seq);
        out["old_head_hash"] = json!(hex(&old_hash));
    } else if rewritten > 0 || tombstones > 0 {
        crate::audit::record(
            "digest_catalog",
            None,
            &[],
            json!({"audit_rows_rewritten": rewritten, "tombstones": tombstones}),
        );
    }
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Recomputes `prev_hash` and `row_hash` of every sealed audit row from position `from` on, in order, and the
/// recorded chain heads from there; returns the old head (position and hash).
fn reseal_from(from: i64) -> Result<(i64, Vec<u8>)> {
    as_catalog_owner(|| {
        Spi::connect_mut(|c| -> Result<(i64, Vec<u8>)> {
            let head = c
                .select(
                    "SELECT seq, row_hash FROM event_crypto.audit_head ORDER BY seq DESC LIMIT 1",
                    Some(1),
                    &[],
                )
                .map_err(spi_error)?;
            let (old_seq, old_hash) = match head.into_iter().next() {
                Some(r) => (get::<i64>(&r, 1, "seq")?, get::<Vec<u8>>(&r, 2, "row_hash")?),
                None => (0, vec![0u8; 32]),
            };
            let mut prev: Vec<u8> = if from <= 1 {
                event_crypto_core::audit::GENESIS.to_vec()
            } else {
                c.select(
                    "SELECT row_hash FROM event_crypto.audit_log WHERE seq OPERATOR(pg_catalog.=) $1",
                    Some(1),
                    &[(from - 1).into()],
                )
                .map_err(spi_error)?
                .next()
                .map(|r| get::<Vec<u8>>(&r, 1, "row_hash"))
                .transpose()?
                .ok_or_else(|| Error::new(ErrorKind::CatalogAccess, "the audit chain has a gap"))?
            };
            let rows: Vec<(i64, i64, String)> = c
                .select(
                    "SELECT l.id, l.seq, event_crypto.audit_content(l) FROM event_crypto.audit_log l \
                     WHERE l.seq OPERATOR(pg_catalog.>=) $1 ORDER BY l.seq",
                    None,
                    &[from.into()],
                )
                .map_err(spi_error)?
                .map(|r| {
                    Ok((
                        get::<i64>(&r, 1, "id")?,
                        get::<i64>(&r, 2, "seq")?,
                        get::<String>(&r, 3, "content")?,
                    ))
                })
                .collect::<Result<_>>()?;
            let (mut ids, mut seqs, mut prevs, mut hashes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, seq, content) in rows {
                let h = event_crypto_core::audit::chain_hash(&prev, content.as_bytes())?.to_vec();
                ids.push(id);
                seqs.push(seq);
                prevs.push(std::mem::replace(&mut prev, h.clone()));
                hashes.push(h);
            }
            c.update(
                "UPDATE event_crypto.audit_log l SET prev_hash = u.prev, row_hash = u.hash \
                 FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.bytea[]), \
                                 pg_catalog.unnest($3::pg_catalog.bytea[])) AS u(id, prev, hash) \
                 WHERE l.id OPERATOR(pg_catalog.=) u.id",
                None,
                &[ids.into(), prevs.into(), hashes.clone().into()],
            )
            .map_err(spi_error)?;
            c.update(
                "UPDATE event_crypto.audit_head h SET row_hash = u.hash \
                 FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.bytea[])) AS u(seq, hash) \
                 WHERE h.seq OPERATOR(pg_catalog.=) u.seq",
                None,
                &[seqs.into(), hashes.into()],
            )
            .map_err(spi_error)?;
            Ok((old_seq, old_hash))
        })
    })
}

/// Moves the catalog's digest secret to the active master key when an older key of the ring wrapped it (the first
/// step of every `rewrap_keys_batch`; audited as a `rewrap_keys` row naming the secret). It is not a key version and
/// is not counted among them: `master_key_status()` keeps its master key from being called removable until it has
/// moved. Returns whether it moved. A secret that does not unwrap is left as it is, with a WARNING.
pub fn rewrap_secret() -> Result<bool> {
    if secrets_table().is_none() {
        return Ok(false);
    }
    let ring = crate::master::get()?;
    let active = ring.active().id().to_string();
    let Some((wrapped, from)) = read_secret()? else {
        return Ok(false);
    };
    if from == active || ring.get(&from).is_none() {
        // (wrapped by a master key that is not in the ring: master_key_status() lists it, not removable)
        return Ok(false);
    }
    let moved = match ring.rewrap_secret(&from, &wrapped, SECRET_NAME) {
        Ok(w) => w,
        Err(e) => {
            crate::error::warn(&e.with_hint(
                "The catalog's digest secret stays under its old master key: restore event_crypto.catalog_secrets from a backup before removing that key.",
            ));
            return Ok(false);
        }
    };
    let n = as_catalog_owner(|| {
        crate::catalog::modify(
            "UPDATE event_crypto.catalog_secrets SET wrapped_secret = $1, master_key_id = $2 \
             WHERE name OPERATOR(pg_catalog.=) 'key-id-digest' AND master_key_id OPERATOR(pg_catalog.=) $3",
            &[moved.into(), active.as_str().into(), from.as_str().into()],
        )
    })?;
    if n > 0 {
        crate::audit::record(
            "rewrap_keys",
            None,
            &[],
            json!({"catalog_secret": SECRET_NAME, "to_master_key_id": active, "from_master_key_ids": [from]}),
        );
    }
    Ok(n > 0)
}

/// The master key that wraps the catalog's digest secret, if there is one (`master_key_status`: that master key
/// is not removable).
pub fn secret_master_key() -> Option<String> {
    secrets_table()?;
    read_secret().ok().flatten().map(|(_, m)| m)
}
