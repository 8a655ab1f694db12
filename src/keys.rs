//! The key catalog `event_crypto.keys`, and the per-backend cache of unwrapped keys.
//!
//! Every key id has a handle (`keys.handle`: a random non-zero 64-bit number, the same in every version row,
//! unique among key ids): envelopes of format 2 name their key by it. The cache finds entries by key id and by
//! handle, so a format 2 envelope costs no more catalog queries than a format 1 one.
//!
//! The cache is dropped whenever the catalog table gets a relcache invalidation. A statement trigger on the table
//! (`event_crypto.keys_changed`) sends one on every INSERT, UPDATE, DELETE and TRUNCATE, whoever runs it (our
//! functions, a superuser by hand, pg_restore), so after a shred commits every backend forgets the key at its
//! next transaction start at the latest. Catalog reads run as the catalog's owner (privileges are checked on
//! EXECUTE of our functions), with every operator schema-qualified so the caller's search_path cannot interfere.

use crate::access::{acting_role, as_catalog_owner};
use crate::error::{raise, spi_failed};
use crate::master;
use crate::usage::{self, Counter};
use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::blind::BlindIndexer;
use event_crypto_core::document::{KeyLookup, KeySource};
use event_crypto_core::envelope::{check_key_id, Format, KeyHandle, KeyNames, KeyRef};
use event_crypto_core::master::{KeyPurpose, MasterKeyRing, WrapContext};
use event_crypto_core::random::random_key;
use event_crypto_core::reencrypt::{Newest, NewestKey};
use event_crypto_core::token::Tokenizer;
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// What the cache knows of one version of a key.
enum VersionState {
    Ready(Rc<Cipher>),
    /// Unusable for a reason that is raised when the version is needed (e.g. master key mismatch).
    Broken(Error),
    /// This version alone was destroyed (`retire_key_version`); its envelopes read as shredded.
    Destroyed,
    /// `retire_key_version` disabled this version and scheduled its destruction: decryption under it fails
    /// closed (or follows `on_shredded`), and every attempt is counted and reported.
    Disabled,
}

/// Everything about one key id, unwrapped.
pub struct KeyEntry {
    pub key_id: String,
    /// What envelopes of format 2 name the key id by (`None` only under the SQL objects of a release before 0.3.0,
    /// whose catalog has no handles).
    pub handle: Option<KeyHandle>,
    pub shredded: bool,
    /// The newest active version, if any.
    active: Option<u32>,
    /// Every version, in no particular order (a handful at most: a linear search beats hashing), with its counter
    /// of this backend: fields decrypted under it, or for a disabled version, attempts (see `usage`).
    versions: Vec<(u32, VersionState, Rc<Counter>)>,
    indexer: Option<std::result::Result<BlindIndexer, Error>>,
    /// The token function, derived from the same blind-index root under its own label (`event_crypto_core::token`).
    tokenizer: Option<std::result::Result<Tokenizer, Error>>,
    /// Encryptions under the active version, and fields decrypted when decryption auditing is on (per key id),
    /// counted by this backend (see `usage`).
    encryptions: Rc<Counter>,
    audited: Rc<Counter>,
    /// Whose key this is, where the key id was made before subject ids were escaped and its name says otherwise
    /// (`event_crypto.legacy_subject_keys`, written by the upgrade from 0.1.0): (key prefix, subject, generation).
    pub legacy_owners: Vec<(String, String, u32)>,
    /// The tombstone the key id's rows are stored under once it was shredded whole, when it was looked up by its
    /// key id (`crate::tombstones`). Such an entry is never found by its handle: an envelope naming the handle is
    /// then told by the tombstone, never by the key id (which whoever supplied the envelope need not know).
    pub tombstone: Option<String>,
}

impl KeyEntry {
    /// Brings what an encryption under this key reads into the CPU's caches ahead of it: the entry, the cipher of
    /// the active version (`cipher`) and the encryption counter.
    pub fn prefetch(&self, cipher: &event_crypto_core::aead::Cipher) {
        use event_crypto_core::aead::prefetch_bytes;
        prefetch_bytes(self, std::mem::size_of::<KeyEntry>());
        prefetch_bytes(Rc::as_ptr(&self.encryptions), 64);
        cipher.prefetch();
    }

    /// Everything envelopes name this key id by.
    pub fn names(&self) -> KeyNames<'_> {
        KeyNames {
            key_id: &self.key_id,
            handle: self.handle,
        }
    }

    /// How an envelope of `format` names this key id.
    pub fn key_ref(&self, format: Format) -> Result<KeyRef<'_>> {
        self.names().key_ref(format)
    }

    fn version(&self, v: u32) -> Option<&VersionState> {
        self.versions.iter().find(|(n, _, _)| *n == v).map(|(_, s, _)| s)
    }

    /// A version's state and its usage counter.
    fn version_counted(&self, v: u32) -> Option<(&VersionState, &Rc<Counter>)> {
        self.versions.iter().find(|(n, _, _)| *n == v).map(|(_, s, c)| (s, c))
    }

    /// The cipher and version that new encryptions use.
    pub fn encryption_key(&self) -> Result<(u32, Rc<Cipher>)> {
        if self.shredded {
            return Err(Error::key_shredded(&self.key_id)
                .with_hint("A forgotten subject must not silently get a new key; use another key id for new data."));
        }
        let v = self.active.ok_or_else(|| {
            Error::new(
                ErrorKind::KeyShredded,
                format!("encryption key \"{}\" has no active version", self.key_id),
            )
            .with_hint("Rotate the key with event_crypto.rotate_key() to create an active version.")
        })?;
        match self.version(v) {
            Some(VersionState::Ready(c)) => Ok((v, c.clone())),
            Some(VersionState::Broken(e)) => Err(e.clone()),
            Some(VersionState::Destroyed) => Err(Error::key_shredded(&self.key_id)),
            Some(VersionState::Disabled) => Err(Error::key_disabled(&self.key_id, v)),
            None => Err(Error::unknown_key_version(&self.key_id, v)),
        }
    }

    /// Counts `n` values encrypted under the active version (`version`, as returned by `encryption_key`).
    pub fn note_encrypted(&self, version: u32, n: usize) {
        usage::note(&self.encryptions, usage::Kind::Encrypt, &self.key_id, version, n as u64);
    }

    /// Counts one field decrypted under `version` (always), and with this key id for the audit log when
    /// decryption auditing is on.
    fn note_decrypted(&self, version: u32, counter: &Rc<Counter>) {
        usage::note(counter, usage::Kind::Read, &self.key_id, version, 1);
        if crate::guc::audit_decrypt() {
            usage::note(&self.audited, usage::Kind::Decrypt, &self.key_id, 0, 1);
        }
    }

    /// Reports an attempt to decrypt under a disabled version: a WARNING (which the server log keeps too) the
    /// first time in a transaction for each key version, and a count per version in the usage counters (flushed
    /// into `event_crypto.key_usage.disabled_decryptions`), so that an application still reading data under a
    /// version scheduled for destruction shows up before the data is lost.
    fn note_disabled(&self, version: u32, counter: &Rc<Counter>) {
        usage::note(counter, usage::Kind::Disabled, &self.key_id, version, 1);
        // SAFETY: MyProc is this backend's PGPROC, set for the life of a regular backend.
        let lxid = unsafe { pg_sys::MyProc.as_ref().map(|p| p.lxid).unwrap_or(0) };
        let first = DISABLED_SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            if seen.0 != lxid {
                *seen = (lxid, Vec::new());
            }
            if seen.1.iter().any(|(k, v)| *k == self.key_id && *v == version) {
                false
            } else {
                seen.1.push((self.key_id.clone(), version));
                true
            }
        });
        if first {
            pgrx::warning!(
                "event_crypto: decryption under disabled version {version} of encryption key \"{}\" refused (role {})",
                self.key_id,
                acting_role()
            );
        }
    }

    /// The active version and its cipher, or `None` when the key id is shredded or has no active version.
    pub fn newest(&self) -> Result<Option<(u32, Rc<Cipher>)>> {
        if self.shredded || self.active.is_none() {
            return Ok(None);
        }
        self.encryption_key().map(Some)
    }

    /// Whether this is a key of `subject` under `prefix` (any generation): its name says so
    /// ([`event_crypto_core::subject`]) and no record of a key made before that naming says otherwise.
    pub fn belongs_to(&self, prefix: &str, subject: &str) -> bool {
        if let Some((_, s, _)) = self.legacy_owners.iter().find(|(p, _, _)| p == prefix) {
            return s == subject;
        }
        event_crypto_core::subject::parse_subject_key_id(prefix, &self.key_id).is_some_and(|(s, _)| s == subject)
    }

    /// The key id's token function (`crate::tokens`).
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        if self.shredded {
            return Err(Error::key_shredded(&self.key_id));
        }
        match &self.tokenizer {
            Some(Ok(t)) => Ok(t),
            Some(Err(e)) => Err(e.clone()),
            None => Err(Error::unknown_key(&self.key_id)),
        }
    }

    pub fn indexer(&self) -> Result<&BlindIndexer> {
        if self.shredded {
            return Err(Error::key_shredded(&self.key_id));
        }
        match &self.indexer {
            Some(Ok(i)) => Ok(i),
            Some(Err(e)) => Err(e.clone()),
            None => Err(Error::unknown_key(&self.key_id)),
        }
    }
}

thread_local! {
    /// The disabled key versions this transaction (by local transaction id) already warned about.
    static DISABLED_SEEN: RefCell<(u32, Vec<(String, u32)>)> = const { RefCell::new((0, Vec::new())) };
}

/// The per-backend key cache, bounded by `event_crypto.key_cache_size` entries: when it is full, the entry cached
/// longest ago is dropped (first in, first out: no bookkeeping on the hot path, which only reads). Entries are
/// found by key id and by handle.
#[derive(Default)]
struct Cache {
    map: HashMap<String, Rc<KeyEntry>>,
    by_handle: HashMap<KeyHandle, Rc<KeyEntry>>,
    order: std::collections::VecDeque<String>,
}

impl Cache {
    fn get(&self, key_id: &str) -> Option<Rc<KeyEntry>> {
        self.map.get(key_id).cloned()
    }
    fn get_by_handle(&self, handle: KeyHandle) -> Option<Rc<KeyEntry>> {
        self.by_handle.get(&handle).cloned()
    }
    fn insert(&mut self, key_id: &str, entry: Rc<KeyEntry>) {
        let cap = crate::guc::key_cache_size();
        while self.map.len() >= cap {
            match self.order.pop_front() {
                Some(old) => {
                    if let Some(e) = self.map.remove(&old) {
                        if let Some(h) = e.handle {
                            self.by_handle.remove(&h);
                        }
                    }
                }
                None => break,
            }
        }
        if let (Some(h), None) = (entry.handle, &entry.tombstone) {
            self.by_handle.insert(h, entry.clone());
        }
        if self.map.insert(key_id.to_string(), entry).is_none() {
            self.order.push_back(key_id.to_string());
        }
    }
    fn clear(&mut self) {
        self.map.clear();
        self.by_handle.clear();
        self.order.clear();
    }
    #[cfg(any(test, feature = "pg_test"))]
    fn len(&self) -> usize {
        self.map.len()
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    /// Whether `event_crypto.legacy_subject_keys` has rows (looked up once per backend, reset with the cache).
    static LEGACY: Cell<Option<bool>> = const { Cell::new(None) };
    /// Bumped by every invalidation; a load that straddles one is used but not cached.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The catalog tables' oids and owner, looked up once per backend.
    static CATALOG: Cell<Option<Catalog>> = const { Cell::new(None) };
}

/// The extension's own tables, whose changes invalidate the caches.
#[derive(Clone, Copy, Debug)]
pub struct Catalog {
    pub keys: pg_sys::Oid,
    pub owner: pg_sys::Oid,
    /// Whether the key catalog has handles (`keys.handle`, from 0.3.0 on; false under the SQL objects of an
    /// earlier release, until ALTER EXTENSION UPDATE: then envelopes are written in format 1).
    pub handles: bool,
    pub protected_columns: pg_sys::Oid,
    /// Whether the configuration has the columns of 0.3.0 (`protected_columns.unprotected_pii`, `compress` and
    /// `tokenize_fields`; under the SQL objects of an earlier release every column reads as `'ignore'`, `'none'` and
    /// `'{}'` until ALTER EXTENSION UPDATE).
    pub pii_guard: bool,
    pub blind_indexes: pg_sys::Oid,
    pub legacy_subject_keys: pg_sys::Oid,
}

/// Relcache invalidation callback, registered in `_PG_init`.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    relation_changed(relid);
}

/// Drops what depends on `relid`: the key cache for the key catalog, the protection configuration cache for
/// the configuration tables and for protected tables (whose columns may have changed), everything for InvalidOid.
pub fn relation_changed(relid: pg_sys::Oid) {
    let cat = CATALOG.with(|c| c.get());
    if relid == pg_sys::InvalidOid {
        invalidate_keys();
        crate::protect::invalidate_config(None);
        CATALOG.with(|c| c.set(None));
        return;
    }
    match cat {
        Some(c) if relid == c.keys || relid == c.legacy_subject_keys => invalidate_keys(),
        Some(c) if relid == c.protected_columns || relid == c.blind_indexes => crate::protect::invalidate_config(None),
        Some(_) => crate::protect::invalidate_config(Some(relid)),
        // The catalog's oids are not known (not looked up yet, or forgotten after a change to one of its tables, and
        // no SPI is possible here): any relation may be the key catalog, so drop everything. (Keeping the keys
        // here let a session encrypt under a key whose row a later statement had deleted.)
        None => {
            invalidate_keys();
            crate::protect::invalidate_config(None);
        }
    }
    // The catalog's own oids are looked up again after any change to one of its tables: a long-lived session (the
    // maintenance worker, a pooled connection) must not keep the oids of tables a DROP EXTENSION removed, or the
    // next catalog's changes would no longer reach its caches.
    if let Some(c) = cat {
        if [c.keys, c.legacy_subject_keys, c.protected_columns, c.blind_indexes].contains(&relid) {
            CATALOG.with(|cell| cell.set(None));
        }
    }
}

pub fn register_invalidation() {
    // SAFETY: called once from _PG_init; the callback only touches this module's thread-local state.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0usize)) };
}

/// The key cache's generation: it changes with every invalidation, so whatever was derived from cached keys
/// under one generation stands as long as the generation does.
pub fn cache_generation() -> u64 {
    GENERATION.with(|g| g.get())
}

/// Forgets every cached key of this backend.
pub fn invalidate_keys() {
    GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    LEGACY.with(|l| l.set(None));
    CACHE.with(|c| {
        if let Ok(mut m) = c.try_borrow_mut() {
            m.clear();
        }
    });
    crate::protect::seals::forget_all();
}

thread_local! {
    /// Catalog queries the key cache made in this backend (for tests: a format 2 envelope must cost no more of
    /// them than a format 1 one).
    #[cfg(any(test, feature = "pg_test"))]
    static CATALOG_READS: Cell<u64> = const { Cell::new(0) };
}

fn count_catalog_read() {
    #[cfg(any(test, feature = "pg_test"))]
    CATALOG_READS.with(|c| c.set(c.get() + 1));
}

/// Catalog queries the key cache made in this backend so far (for tests).
#[cfg(any(test, feature = "pg_test"))]
pub fn catalog_reads() -> u64 {
    CATALOG_READS.with(|c| c.get())
}

/// Number of key ids cached in this backend (for tests).
#[cfg(any(test, feature = "pg_test"))]
pub fn cached_count() -> usize {
    CACHE.with(|c| c.borrow().len())
}

/// The oids of the extension's tables and their owner. Read from pg_class by name, so that a role without USAGE
/// on schema event_crypto (an application inserting into a protected table) can still get here.
pub fn catalog() -> Catalog {
    if let Some(c) = CATALOG.with(|c| c.get()) {
        return c;
    }
    // Read-only SPI: no transaction id is assigned, so this also works in parallel workers.
    type CatalogRow = (String, pg_sys::Oid, pg_sys::Oid, bool);
    let rows: std::result::Result<Vec<CatalogRow>, Error> = Spi::connect(|client| {
        client
            .select(
                "SELECT c.relname::pg_catalog.text, c.oid, c.relowner, \
                        EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid \
                                AND a.attname OPERATOR(pg_catalog.=) ANY ('{handle,unprotected_pii}'::pg_catalog.name[]) AND NOT a.attisdropped) \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE n.nspname OPERATOR(pg_catalog.=) 'event_crypto' \
                   AND c.relname OPERATOR(pg_catalog.=) ANY ('{keys,protected_columns,blind_indexes,legacy_subject_keys}'::pg_catalog.name[])",
                None,
                &[],
            )
            .map_err(crate::error::spi_error)?
            .map(|r| {
                Ok((
                    crate::catalog::get::<String>(&r, 1, "relname")?,
                    crate::catalog::get::<pg_sys::Oid>(&r, 2, "oid")?,
                    crate::catalog::get::<pg_sys::Oid>(&r, 3, "relowner")?,
                    crate::catalog::get::<bool>(&r, 4, "handle")?,
                ))
            })
            .collect()
    });
    let rows = rows.unwrap_or_else(|e| raise(e));
    let find = |name: &str| {
        rows.iter()
            .find(|(n, _, _, _)| n == name)
            .map(|(_, o, w, h)| (*o, *w, *h))
    };
    match (find("keys"), find("protected_columns"), find("blind_indexes")) {
        (Some((keys, owner, handles)), Some((protected_columns, _, pii_guard)), Some((blind_indexes, _, _))) => {
            let c = Catalog {
                keys,
                owner,
                handles,
                protected_columns,
                pii_guard,
                blind_indexes,
                legacy_subject_keys: find("legacy_subject_keys")
                    .map(|(o, _, _)| o)
                    .unwrap_or(pg_sys::InvalidOid),
            };
            CATALOG.with(|cell| cell.set(Some(c)));
            c
        }
        _ => raise(
            Error::new(ErrorKind::UnknownKey, "the event_crypto catalog is missing")
                .with_hint("CREATE EXTENSION event_crypto in this database."),
        ),
    }
}

pub(crate) struct Row {
    pub(crate) version: u32,
    pub(crate) algorithm: String,
    pub(crate) status: String,
    wrapped_key: Option<Vec<u8>>,
    wrapped_index_key: Option<Vec<u8>>,
    master_key_id: String,
    pub(crate) handle: Option<KeyHandle>,
    /// The key id (read by handle only; empty when read by key id).
    pub(crate) key_id: String,
}

/// A key id's rows. `$1`: the key id.
fn select_rows() -> &'static str {
    if catalog().handles {
        "SELECT version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id, handle, ''::pg_catalog.text \
         FROM event_crypto.keys WHERE key_id OPERATOR(pg_catalog.=) $1 ORDER BY version"
    } else {
        // the SQL objects of a release before handles (until ALTER EXTENSION UPDATE)
        "SELECT version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id, NULL::pg_catalog.int8, ''::pg_catalog.text \
         FROM event_crypto.keys WHERE key_id OPERATOR(pg_catalog.=) $1 ORDER BY version"
    }
}

/// The rows of `key_id`, or of its tombstone once it was shredded whole (`crate::tombstones`).
fn read_rows(client: &SpiClient<'_>, key_id: &str) -> Vec<Row> {
    let rows = read_named_rows(client, key_id);
    match tombstone_of(&rows, key_id) {
        Some(t) => read_named_rows(client, &t),
        None => rows,
    }
}

/// The tombstone name to read instead when `key_id` has no rows of its own.
fn tombstone_of(rows: &[Row], key_id: &str) -> Option<String> {
    if !rows.is_empty() {
        return None;
    }
    crate::tombstones::tombstone_id(key_id).unwrap_or_else(|e| raise(e))
}

/// The rows of the key id that has a handle. `$1`: the handle (the partial unique index on version 1 rows finds
/// it, and makes it the only one).
const SELECT_ROWS_BY_HANDLE: &str =
    "SELECT k.version, k.algorithm, k.status, k.wrapped_key, k.wrapped_index_key, k.master_key_id, k.handle, k.key_id \
     FROM event_crypto.keys k WHERE k.key_id OPERATOR(pg_catalog.=) ( \
         SELECT h.key_id FROM event_crypto.keys h \
         WHERE h.handle OPERATOR(pg_catalog.=) $1 AND h.version OPERATOR(pg_catalog.=) 1) \
     ORDER BY k.version";

/// A handle as the catalog stores it.
fn handle_of_column(v: Option<i64>) -> Result<Option<KeyHandle>> {
    match v {
        None => Ok(None),
        Some(v) => KeyHandle::from_i64(v).map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::CatalogAccess,
                "the event_crypto key catalog holds a key handle of 0",
            )
            .with_hint("The key catalog was changed by hand or is damaged; restore it from a backup.")
        }),
    }
}

/// The rows stored under `key_id` itself.
pub(crate) fn read_named_rows(client: &SpiClient<'_>, key_id: &str) -> Vec<Row> {
    let table = client
        .select(select_rows(), None, &[key_id.into()])
        .unwrap_or_else(|e| spi_failed(e));
    let mut rows = Vec::with_capacity(table.len());
    for r in table {
        rows.push(parse_row(&r).unwrap_or_else(|e| raise(e)));
    }
    rows
}

/// A key version row read with the columns of [`select_rows`]: version, algorithm, status, wrapped_key,
/// wrapped_index_key, master_key_id, handle, key_id.
pub(crate) fn parse_row(r: &pgrx::spi::SpiHeapTupleData<'_>) -> Result<Row> {
    use crate::catalog::{get, get_opt};
    Ok(Row {
        version: version_of(get::<i32>(r, 1, "version")?)?,
        algorithm: get(r, 2, "algorithm")?,
        status: get(r, 3, "status")?,
        wrapped_key: get_opt(r, 4, "wrapped_key")?,
        wrapped_index_key: get_opt(r, 5, "wrapped_index_key")?,
        master_key_id: get(r, 6, "master_key_id")?,
        handle: handle_of_column(get_opt(r, 7, "handle")?)?,
        key_id: get(r, 8, "key_id")?,
    })
}

/// A stored key version (the catalog's CHECK keeps it at 1 or more).
fn version_of(v: i32) -> Result<u32> {
    u32::try_from(v).ok().filter(|v| *v >= 1).ok_or_else(|| {
        Error::new(
            ErrorKind::CatalogAccess,
            "the event_crypto key catalog holds a key version below 1",
        )
        .with_hint("The key catalog was changed by hand or is damaged; restore it from a backup.")
    })
}

/// What [`read_rows_latest`] selects by.
#[derive(Clone, Copy)]
enum By<'a> {
    KeyId(&'a str),
    Handle(KeyHandle),
}

/// The catalog rows of a key id (by key id, or by its handle) as the newest committed state shows them (plus this
/// transaction's own changes), whatever the isolation level: the cache must never hold a key that an older
/// snapshot still showed after a shred committed (a REPEATABLE READ transaction would otherwise cache it past its
/// end, and a statement whose snapshot predates the shred could re-cache it after the invalidation). Shredding
/// therefore applies to every session at its next key load, inside open transactions too. Runs inside
/// `Spi::connect`.
fn read_rows_latest(by: By<'_>) -> Vec<Row> {
    let query = match by {
        By::KeyId(_) => select_rows(),
        By::Handle(_) => SELECT_ROWS_BY_HANDLE,
    };
    let query = std::ffi::CString::new(query).expect("no NUL in the query");
    let mut rows = Vec::new();
    // SAFETY: SPI is connected by the caller; the snapshot pushed here is popped before returning (and by
    // transaction abort if the query raises); the result tuples are read while SPI_tuptable is valid.
    unsafe {
        let (mut argtypes, mut values) = match by {
            By::Handle(h) => ([pg_sys::INT8OID], [pg_sys::Datum::from(h.to_i64())]),
            By::KeyId(key_id) => {
                let arg = std::ffi::CString::new(key_id)
                    .map_err(|_| ())
                    .unwrap_or_else(|()| raise(Error::invalid_argument("a key id must not contain NUL characters")));
                // cstring_to_text copies the string into a palloc'd text
                (
                    [pg_sys::TEXTOID],
                    [pg_sys::Datum::from(pg_sys::cstring_to_text(arg.as_ptr()))],
                )
            }
        };
        let nulls = [b' ' as std::ffi::c_char];
        // A parallel worker may not take a new snapshot; it reads with the leader's, and its cache dies with it
        // at the end of the query.
        let latest = !pg_sys::IsInParallelMode();
        if latest {
            pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        }
        let rc = pg_sys::SPI_execute_with_args(
            query.as_ptr(),
            1,
            argtypes.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            true, // read-only: use the snapshot pushed above, not the transaction's
            0,
        );
        if latest {
            pg_sys::PopActiveSnapshot();
        }
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            raise(
                Error::new(
                    ErrorKind::CatalogAccess,
                    "the event_crypto key catalog could not be read",
                )
                .with_detail(format!("SPI returned {rc}")),
            );
        }
        let table = pg_sys::SPI_tuptable;
        for i in 0..pg_sys::SPI_processed as usize {
            let tuple = *(*table).vals.add(i);
            let desc = (*table).tupdesc;
            let get = |col: i32| {
                let mut isnull = false;
                let d = pg_sys::SPI_getbinval(tuple, desc, col, &mut isnull);
                (d, isnull)
            };
            fn never_null<T>() -> T {
                raise(Error::new(
                    ErrorKind::CatalogAccess,
                    "the event_crypto key catalog holds a NULL where it never does",
                ))
            }
            let text_at = |col: i32| {
                let (d, isnull) = get(col);
                String::from_datum(d, isnull).unwrap_or_else(never_null)
            };
            let bytes_at = |col: i32| {
                let (d, isnull) = get(col);
                Vec::<u8>::from_datum(d, isnull)
            };
            let (v, v_null) = get(1);
            let version = i32::from_datum(v, v_null).unwrap_or_else(never_null);
            let (h, h_null) = get(7);
            rows.push(Row {
                version: version_of(version).unwrap_or_else(|e| raise(e)),
                algorithm: text_at(2),
                status: text_at(3),
                wrapped_key: bytes_at(4),
                wrapped_index_key: bytes_at(5),
                master_key_id: text_at(6),
                handle: handle_of_column(i64::from_datum(h, h_null)).unwrap_or_else(|e| raise(e)),
                key_id: text_at(8),
            });
        }
    }
    rows
}

fn mismatch(key_id: &str, version: u32, wrapped_by: &str, ring: &MasterKeyRing) -> Error {
    Error::new(
        ErrorKind::MasterKeyMismatch,
        format!("master key mismatch for encryption key \"{key_id}\" version {version}"),
    )
    .with_detail(format!(
        "The key was wrapped by master key {wrapped_by}; this server's master key ring holds {}.",
        ring.describe()
    ))
    .with_hint("Add the master key this key was wrapped by to the ring (a line of event_crypto.master_key_file or of master_key_command's output) and restart the server.")
}

pub(crate) fn unwrap_row(key_id: &str, row: &Row, purpose: KeyPurpose) -> Result<event_crypto_core::SecretKey> {
    let ring = master::get()?;
    let m = ring
        .get(&row.master_key_id)
        .ok_or_else(|| mismatch(key_id, row.version, &row.master_key_id, ring))?;
    let algorithm = Algorithm::from_name(&row.algorithm)?;
    let wrapped = match purpose {
        KeyPurpose::Data => row.wrapped_key.as_deref(),
        KeyPurpose::BlindIndex => row.wrapped_index_key.as_deref(),
    }
    .ok_or_else(|| Error::key_shredded(key_id))?;
    m.unwrap(
        wrapped,
        &WrapContext {
            key_id,
            version: row.version,
            algorithm,
            purpose,
        },
    )
}

fn build_entry(key_id: &str, rows: &[Row]) -> KeyEntry {
    let mut versions = Vec::with_capacity(rows.len());
    let mut active = None;
    let shredded = rows.iter().all(|r| r.status == "shredded");
    for row in rows {
        if row.status == "shredded" {
            if !shredded {
                versions.push((row.version, VersionState::Destroyed, Rc::default()));
            }
            continue;
        }
        if row.status == "disabled" {
            versions.push((row.version, VersionState::Disabled, Rc::default()));
            continue;
        }
        let state = match unwrap_row(key_id, row, KeyPurpose::Data) {
            Ok(k) => match Algorithm::from_name(&row.algorithm) {
                Ok(a) => VersionState::Ready(Rc::new(Cipher::new(a, &k))),
                Err(e) => VersionState::Broken(e),
            },
            Err(e) => VersionState::Broken(e),
        };
        versions.push((row.version, state, Rc::default()));
        if row.status == "active" {
            active = Some(row.version);
        }
    }
    // The blind-index root of the newest live version (all versions of a key id carry the same root): the blind
    // index and the token function are derived from it, each under its own label.
    let root = rows
        .iter()
        .rev()
        .find(|r| r.status != "shredded")
        .map(|row| unwrap_row(key_id, row, KeyPurpose::BlindIndex));
    let indexer = root.as_ref().map(|r| {
        r.as_ref()
            .map(|root| BlindIndexer::new(root, key_id))
            .map_err(Clone::clone)
    });
    let tokenizer = root.map(|r| r.map(|root| Tokenizer::new(&root, key_id)));
    KeyEntry {
        key_id: key_id.to_string(),
        // every row of a key id has its handle (the catalog's trigger keys_handle keeps them equal)
        handle: rows.iter().find_map(|r| r.handle),
        shredded,
        active,
        versions,
        indexer,
        tokenizer,
        encryptions: Rc::default(),
        audited: Rc::default(),
        legacy_owners: Vec::new(),
        tombstone: None,
    }
}

/// Looks a key id up: from the cache, or from the catalog (then cached).
pub fn lookup(key_id: &str) -> Result<Rc<KeyEntry>> {
    if let Some(e) = CACHE.with(|c| c.borrow().get(key_id)) {
        return Ok(e);
    }
    check_key_id(key_id)?;
    master::get()?;
    load(By::KeyId(key_id))?.ok_or_else(|| Error::unknown_key(key_id))
}

/// Looks up the key id a handle belongs to (what a format 2 envelope names): from the cache, or from the catalog
/// (then cached, by key id and by handle).
pub fn lookup_handle(handle: KeyHandle) -> Result<Rc<KeyEntry>> {
    if let Some(e) = CACHE.with(|c| c.borrow().get_by_handle(handle)) {
        return Ok(e);
    }
    if !catalog().handles {
        return Err(Error::unknown_key_handle(&handle));
    }
    master::get()?;
    load(By::Handle(handle))?.ok_or_else(|| Error::unknown_key_handle(&handle))
}

/// Reads a key id's rows (by key id or by handle) with the newest snapshot, unwraps them and caches the entry
/// (unless an invalidation came in between). `None`: no such key.
fn load(by: By<'_>) -> Result<Option<Rc<KeyEntry>>> {
    count_catalog_read();
    let generation = GENERATION.with(|g| g.get());
    let (rows, legacy_owners, key_id, stored) = as_catalog_owner(|| {
        Spi::connect(|client| {
            let mut rows = read_rows_latest(by);
            let key_id = match by {
                By::KeyId(k) => k.to_string(),
                By::Handle(_) => rows.first().map(|r| r.key_id.clone()).unwrap_or_default(),
            };
            // a key id shredded whole is stored under its tombstone (a handle finds the tombstone's rows directly)
            let mut stored = None;
            if let By::KeyId(k) = by {
                if let Some(t) = tombstone_of(&rows, k) {
                    rows = read_rows_latest(By::KeyId(&t));
                    stored = Some(t);
                }
            }
            let legacy = if rows.is_empty() {
                Vec::new()
            } else {
                read_legacy_owners(client, stored.as_deref().unwrap_or(&key_id))
            };
            (rows, legacy, key_id, stored)
        })
    });
    if rows.is_empty() {
        return Ok(None);
    }
    let mut entry = build_entry(&key_id, &rows);
    entry.legacy_owners = legacy_owners;
    entry.tombstone = stored;
    let entry = Rc::new(entry);
    if GENERATION.with(|g| g.get()) == generation {
        CACHE.with(|c| {
            if let Ok(mut m) = c.try_borrow_mut() {
                m.insert(&key_id, entry.clone());
            }
        });
    }
    Ok(Some(entry))
}

thread_local! {
    /// Key ids of handles [`key_id_of_handle`] read, with the cache generation they were read in.
    static HANDLE_IDS: RefCell<(u64, HashMap<KeyHandle, String>)> = RefCell::new((0, HashMap::new()));
}

/// The key id a handle belongs to, read without unwrapping anything (whether a format 2 envelope is under a key a
/// row may use is decided by key id, as for format 1, before any key is loaded): `None` when no key id has it. A
/// handle never changes (the catalog's trigger refuses it), so what was read is remembered until the next
/// invalidation (at most `event_crypto.key_cache_size` of them).
pub fn key_id_of_handle(handle: KeyHandle) -> Option<String> {
    if let Some(e) = CACHE.with(|c| c.borrow().get_by_handle(handle)) {
        return Some(e.key_id.clone());
    }
    let generation = GENERATION.with(|g| g.get());
    let known = HANDLE_IDS.with(|m| {
        let m = m.borrow();
        (m.0 == generation).then(|| m.1.get(&handle).cloned()).flatten()
    });
    if known.is_some() {
        return known;
    }
    if !catalog().handles {
        return None;
    }
    count_catalog_read();
    let key_id = as_catalog_owner(|| {
        crate::catalog::one::<String>(
            "SELECT key_id FROM event_crypto.keys \
             WHERE handle OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) 1",
            &[handle.to_i64().into()],
        )
    })
    .unwrap_or_else(|e| raise(e));
    if let Some(k) = &key_id {
        HANDLE_IDS.with(|m| {
            let mut m = m.borrow_mut();
            if m.0 != generation || m.1.len() >= crate::guc::key_cache_size() {
                *m = (generation, HashMap::new());
            }
            m.1.insert(handle, k.clone());
        });
    }
    key_id
}

thread_local! {
    /// Handles of key ids [`handle_of`] read, with the cache generation they were read in.
    static HANDLES_OF: RefCell<(u64, HashMap<String, KeyHandle>)> = RefCell::new((0, HashMap::new()));
}

/// The handle of a key id, read without unwrapping anything (for counting envelopes by their headers): `None` when
/// no such key id exists or the catalog has no handles yet. A handle never changes (the catalog's trigger refuses
/// it), so what was read is remembered until the next invalidation (at most `event_crypto.key_cache_size` of them).
pub fn handle_of(key_id: &str) -> Result<Option<KeyHandle>> {
    if let Some(e) = CACHE.with(|c| c.borrow().get(key_id)) {
        return Ok(e.handle);
    }
    let generation = GENERATION.with(|g| g.get());
    let known = HANDLES_OF.with(|m| {
        let m = m.borrow();
        (m.0 == generation).then(|| m.1.get(key_id).copied()).flatten()
    });
    if known.is_some() {
        return Ok(known);
    }
    if !catalog().handles {
        return Ok(None);
    }
    count_catalog_read();
    let v = as_catalog_owner(|| {
        crate::catalog::one::<i64>(
            "SELECT handle FROM event_crypto.keys WHERE key_id OPERATOR(pg_catalog.=) $1 ORDER BY version LIMIT 1",
            &[key_id.into()],
        )
    })?;
    let h = handle_of_column(v)?;
    if let Some(h) = h {
        HANDLES_OF.with(|m| {
            let mut m = m.borrow_mut();
            if m.0 != generation || m.1.len() >= crate::guc::key_cache_size() {
                *m = (generation, HashMap::new());
            }
            m.1.insert(key_id.to_string(), h);
        });
    }
    Ok(h)
}

/// The envelope format new encryptions write: `event_crypto.envelope_format`, or format 1 while the key catalog
/// has no handles (the SQL objects of a release before 0.3.0, until ALTER EXTENSION UPDATE).
pub fn write_format() -> Format {
    if catalog().handles {
        crate::guc::envelope_format()
    } else {
        Format::V1
    }
}

/// A handle for a new key id (random, from the OS), that no key id has yet; `None` when the catalog has no handles
/// (the SQL objects of an earlier release). Another session could take the same handle before this one inserts it
/// (a chance of 2^-64 per key): the catalog's unique index then refuses the insert. Runs inside `Spi::connect`.
pub fn new_key_handle(client: &SpiClient<'_>) -> Result<Option<i64>> {
    if !catalog().handles {
        return Ok(None);
    }
    for _ in 0..16 {
        let h = event_crypto_core::random::key_handle()?.to_i64();
        let taken = client
            .select(
                "SELECT 1 FROM event_crypto.keys WHERE handle OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) 1",
                Some(1),
                &[h.into()],
            )
            .map_err(crate::error::spi_error)?;
        if taken.is_empty() {
            return Ok(Some(h));
        }
    }
    Err(Error::new(
        ErrorKind::RandomSource,
        "no free key handle was found in 16 random draws",
    )
    .with_hint("Key handles are random 64-bit numbers: check the operating system's random number generator."))
}

/// Whether `event_crypto.legacy_subject_keys` has any row (almost never: only catalogs upgraded from 0.1.0 with
/// subject ids containing `#` or `%`, or generations of such subjects). Read once per backend.
pub fn legacy_keys_exist() -> bool {
    if let Some(b) = LEGACY.with(|l| l.get()) {
        return b;
    }
    if catalog().legacy_subject_keys == pg_sys::InvalidOid {
        // the SQL objects are still those of a release before the table (before ALTER EXTENSION UPDATE)
        LEGACY.with(|l| l.set(Some(false)));
        return false;
    }
    let b = as_catalog_owner(|| {
        crate::catalog::one::<bool>("SELECT EXISTS (SELECT 1 FROM event_crypto.legacy_subject_keys)", &[])
    })
    .unwrap_or_else(|e| raise(e))
    .unwrap_or(false);
    LEGACY.with(|l| l.set(Some(b)));
    b
}

fn read_legacy_owners(client: &SpiClient<'_>, key_id: &str) -> Vec<(String, String, u32)> {
    if !legacy_keys_exist() {
        return Vec::new();
    }
    client
        .select(
            "SELECT key_prefix, subject, generation FROM event_crypto.legacy_subject_keys \
             WHERE key_id OPERATOR(pg_catalog.=) $1",
            None,
            &[key_id.into()],
        )
        .unwrap_or_else(|e| spi_failed(e))
        .map(|r| {
            use crate::catalog::get;
            (|| -> Result<_> {
                Ok((
                    get::<String>(&r, 1, "key_prefix")?,
                    get::<String>(&r, 2, "subject")?,
                    version_of(get::<i32>(&r, 3, "generation")?)?,
                ))
            })()
            .unwrap_or_else(|e| raise(e))
        })
        .collect()
}

/// A key id to encrypt or compute blind indexes with, for the functions the encryptor role calls: a key id that
/// does not exist and one that was shredded give the same error, so those roles cannot tell a forgotten subject
/// from one that never existed (key ids that are live are visible in every envelope anyway).
pub fn usable(key_id: &str) -> Result<Rc<KeyEntry>> {
    match lookup(key_id) {
        Ok(e) if e.shredded => Err(Error::key_unavailable(key_id)),
        Err(e) if e.kind() == ErrorKind::UnknownKey => Err(Error::key_unavailable(key_id)),
        other => other,
    }
}

/// The `keys_handle` trigger's work on one row of `event_crypto.keys` (see [`crate::triggers`]): returns the row
/// to store.
pub fn check_handle_row<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByRust>>> {
    let read = |t: &PgHeapTuple<'_, pgrx::AllocatedByPostgres>| -> Result<(String, i32, Option<i64>)> {
        let col = |e: pgrx::datum::TryFromDatumError| {
            Error::new(ErrorKind::CatalogAccess, "a row of the key catalog could not be read")
                .with_detail(e.to_string())
        };
        Ok((
            t.get_by_name::<String>("key_id").map_err(col)?.unwrap_or_default(),
            t.get_by_name::<i32>("version").map_err(col)?.unwrap_or_default(),
            t.get_by_name::<i64>("handle").map_err(col)?,
        ))
    };
    let Some(new) = trigger.new() else {
        return Ok(None);
    };
    let (key_id, version, handle) = read(&new)?;
    if let Some(old) = trigger.old() {
        let (_, _, before) = read(&old)?;
        if before.is_some() && before != handle {
            return Err(Error::new(
                ErrorKind::RebindRefused,
                format!("the handle of encryption key \"{key_id}\" cannot be changed"),
            )
            .with_detail("Envelopes of format 2 name the key by its handle: with another handle they would name no key, or another one.")
            .with_hint("A key id's handle is made with it and kept until the end, after shredding too."));
        }
        if before.is_some() {
            return Ok(Some(new.into_owned()));
        }
    }
    let rel = trigger.relation().map_err(|e| {
        Error::new(ErrorKind::CatalogAccess, "the key catalog's trigger has no relation").with_detail(e.to_string())
    })?;
    if crate::protect::target::citus_table_of_shard(rel.oid())?.is_some() {
        // A placement of the Citus reference table: the coordinator checked the row and chose its handle; every
        // placement has the unique index. A random handle chosen here would differ from node to node.
        if handle.is_none() {
            return Err(Error::null_argument("handle").with_detail(
                "A row written to a Citus placement of event_crypto.keys must have the key id's handle.",
            ));
        }
        return Ok(Some(new.into_owned()));
    }
    as_catalog_owner(|| {
        Spi::connect(|client| -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByRust>>> {
            // the handle the key id's rows have, and whether this row's (key id, version) exists already: then
            // the insert conflicts (ON CONFLICT DO NOTHING discards the row, a plain INSERT fails on the primary
            // key), and only the NOT NULL check, which comes first, needs a handle
            let mut own = None;
            let mut exists = false;
            for r in client
                .select(
                    "SELECT handle, version OPERATOR(pg_catalog.=) $2 FROM event_crypto.keys \
                     WHERE key_id OPERATOR(pg_catalog.=) $1",
                    None,
                    &[key_id.as_str().into(), version.into()],
                )
                .map_err(crate::error::spi_error)?
            {
                own = own.or(crate::catalog::get_opt::<i64>(&r, 1, "handle")?);
                exists |= crate::catalog::get::<bool>(&r, 2, "version")?;
            }
            let handle = match (handle, own) {
                (None, Some(h)) => h,
                (None, None) => match new_key_handle(client)? {
                    Some(h) => h,
                    None => return Ok(Some(new.into_owned())),
                },
                (Some(_), _) if exists => return Ok(Some(new.into_owned())),
                (Some(h), Some(o)) if h != o => {
                    return Err(Error::new(
                        ErrorKind::KeyHandleConflict,
                        format!(
                            "encryption key \"{key_id}\" has handle {}; a row of it with handle {} was refused",
                            KeyHandle::from_i64(o).map_or_else(|| "0".into(), |x| x.to_string()),
                            KeyHandle::from_i64(h).map_or_else(|| "0".into(), |x| x.to_string()),
                        ),
                    )
                    .with_detail("Every version of a key id has the key id's handle.")
                    .with_hint("Two key catalogs that both have this key id were merged (a restore into a database with keys of its own): restore into an empty catalog instead."))
                }
                (Some(h), _) => h,
            };
            // no other key id has it
            let other = if exists {
                None
            } else {
                client
                    .select(
                        "SELECT key_id FROM event_crypto.keys WHERE handle OPERATOR(pg_catalog.=) $1 \
                       AND version OPERATOR(pg_catalog.=) 1 AND key_id OPERATOR(pg_catalog.<>) $2 LIMIT 1",
                        Some(1),
                        &[handle.into(), key_id.as_str().into()],
                    )
                    .map_err(crate::error::spi_error)?
                    .next()
                    .map(|r| crate::catalog::get::<String>(&r, 1, "key_id"))
                    .transpose()?
            };
            if let Some(other) = other {
                return Err(Error::new(
                    ErrorKind::KeyHandleConflict,
                    format!(
                        "key handle {} of encryption key \"{key_id}\" is already the handle of encryption key \"{other}\"",
                        KeyHandle::from_i64(handle).map_or_else(|| "0".into(), |x| x.to_string())
                    ),
                )
                .with_detail("Envelopes of format 2 name their key by its handle, so no two key ids may have the same one. Handles are random 64-bit numbers: two catalogs merged by a restore are the likely cause.")
                .with_hint("Restore the key catalog into an empty catalog (a database without keys of its own), or restore only one of the two catalogs."));
            }
            let mut row = new.into_owned();
            row.set_by_name("handle", handle).map_err(|e| {
                Error::new(ErrorKind::CatalogAccess, "the key catalog's handle could not be set")
                    .with_detail(e.to_string())
            })?;
            Ok(Some(row))
        })
    })
}

/// A [`KeySource`] over the cache (by key id for format 1 envelopes, by handle for format 2), with a one-entry
/// memo for runs of envelopes under the same key.
#[derive(Default)]
pub struct CachedKeys {
    last: Option<Rc<KeyEntry>>,
}

impl CachedKeys {
    fn entry(&mut self, key: KeyRef<'_>) -> Result<Rc<KeyEntry>> {
        match &self.last {
            Some(e) if e.names().names(key) => Ok(e.clone()),
            _ => {
                let e = match key {
                    KeyRef::Id(key_id) => lookup(key_id)?,
                    KeyRef::Handle(h) => lookup_handle(h)?,
                };
                self.last = Some(e.clone());
                Ok(e)
            }
        }
    }
}

impl KeySource for CachedKeys {
    fn key_id_of(&mut self, handle: KeyHandle) -> Option<String> {
        match &self.last {
            Some(e) if e.handle == Some(handle) => Some(e.tombstone.clone().unwrap_or_else(|| e.key_id.clone())),
            _ => key_id_of_handle(handle),
        }
    }

    fn decryption_key(&mut self, key: KeyRef<'_>, version: u32) -> Result<KeyLookup> {
        let entry = self.entry(key)?;
        if entry.shredded {
            return Ok(KeyLookup::Shredded);
        }
        match entry.version_counted(version) {
            Some((VersionState::Ready(c), counter)) => {
                entry.note_decrypted(version, counter);
                Ok(KeyLookup::Found(c.clone()))
            }
            Some((VersionState::Broken(e), _)) => Err(e.clone()),
            Some((VersionState::Destroyed, _)) => Ok(KeyLookup::Shredded),
            Some((VersionState::Disabled, counter)) => {
                entry.note_disabled(version, counter);
                Ok(KeyLookup::Disabled)
            }
            None => Err(Error::unknown_key_version(&entry.key_id, version)),
        }
    }
}

impl NewestKey for CachedKeys {
    fn newest_key(&mut self, key: KeyRef<'_>) -> Result<Option<Newest>> {
        let entry = self.entry(key)?;
        Ok(entry.newest()?.map(|(version, cipher)| Newest {
            version,
            cipher,
            key_id: entry.key_id.clone(),
            handle: entry.handle,
        }))
    }

    fn sealed(&mut self, key_id: &str, version: u32) {
        if let Ok(entry) = self.entry(KeyRef::Id(key_id)) {
            entry.note_encrypted(version, 1);
        }
    }
}

/// Refuses a change to the key catalog on a read-only server (a hot standby) or in a read-only transaction with
/// `25006` and a message that says what was attempted, before any key material is made.
pub fn require_writable(what: &str) -> Result<()> {
    // SAFETY: reads this backend's recovery and transaction state.
    let (standby, read_only) = unsafe { (pg_sys::RecoveryInProgress(), pg_sys::XactReadOnly) };
    if standby {
        return Err(Error::new(ErrorKind::ReadOnly, format!("cannot {what} on a hot standby"))
            .with_detail("A standby is read-only: keys are created, rotated and shredded on the primary and reach the standby by replication.")
            .with_hint("Do it on the primary (an insert that needs a new subject key must be written there too)."));
    }
    if read_only {
        return Err(Error::new(
            ErrorKind::ReadOnly,
            format!("cannot {what} in a read-only transaction"),
        ));
    }
    Ok(())
}

/// Inserts version 1 of `key_id` unless the key id exists. `None` when inserted; otherwise whether the existing
/// key id is shredded.
fn insert_first_version(
    key_id: &str,
    algorithm: Algorithm,
    automatic: bool,
    created_by: Option<&str>,
) -> Result<Option<bool>> {
    check_key_id(key_id)?;
    require_writable(&format!("create encryption key \"{key_id}\""))?;
    let m = master::get()?.active();
    // the catalog's digest secret exists from its first key on (the audit row names the key id by digest)
    crate::tombstones::digest_key_for_write()?;
    let role = created_by.map_or_else(acting_role, str::to_string);
    let dk = random_key()?;
    let ik = random_key()?;
    let ctx = |purpose| WrapContext {
        key_id,
        version: 1,
        algorithm,
        purpose,
    };
    let wrapped = m.wrap(&dk, &ctx(KeyPurpose::Data))?;
    let wrapped_index = m.wrap(&ik, &ctx(KeyPurpose::BlindIndex))?;
    let outcome = as_catalog_owner(|| {
        Spi::connect_mut(|client| -> Result<Option<bool>> {
            // a random handle no key id has (format 2 envelopes name the key by it)
            let handle = new_key_handle(client)?;
            let insert = if handle.is_some() {
                "INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id, created_by, handle) \
                 VALUES ($1, 1, $2, 'active', $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING version"
            } else {
                // the SQL objects of a release before handles (until ALTER EXTENSION UPDATE)
                "INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id, created_by) \
                 VALUES ($1, 1, $2, 'active', $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING version"
            };
            let mut args = vec![
                key_id.into(),
                algorithm.name().into(),
                wrapped.clone().into(),
                wrapped_index.clone().into(),
                m.id().into(),
                role.as_str().into(),
            ];
            if let Some(h) = handle {
                args.push(h.into());
            }
            // ON CONFLICT without a target also covers the one-active-version index, so concurrent creators of one
            // key id wait for each other and exactly one inserts.
            let t = client.update(insert, None, &args).unwrap_or_else(|e| spi_failed(e));
            if !t.is_empty() {
                // A shred that moved this key id to its tombstone while this insert waited for it (the key id's
                // rows were still there) leaves the tombstone, read here with the newest snapshot: the key id was
                // shredded, and the row just inserted goes again.
                match crate::tombstones::tombstone_id(key_id).unwrap_or_else(|e| raise(e)) {
                    Some(tomb) if !read_rows_latest(By::KeyId(&tomb)).is_empty() => {
                        client
                            .update(
                                "DELETE FROM event_crypto.keys WHERE key_id OPERATOR(pg_catalog.=) $1",
                                None,
                                &[key_id.into()],
                            )
                            .unwrap_or_else(|e| spi_failed(e));
                        return Ok(Some(true));
                    }
                    _ => return Ok(None),
                }
            }
            let existing = read_rows(client, key_id);
            Ok(Some(existing.iter().all(|r| r.status == "shredded")))
        })
    })?;
    if outcome.is_none() {
        let mut details =
            json!({"version": 1, "algorithm": algorithm.name(), "master_key_id": m.id(), "automatic": automatic});
        if let Some(inserter) = created_by {
            // made on a Citus coordinator at a shard trigger's request, for the role whose row needs it
            details["inserter"] = json!(inserter);
        }
        if automatic {
            // Collected and written with the transaction's other automatic creations (crate::audit).
            crate::audit::record_created(key_id, details);
        } else {
            crate::audit::record("create_key", None, &[key_id.to_string()], details);
        }
    }
    Ok(outcome)
}

/// Creates version 1 of a new key id.
pub fn create_key(key_id: &str, algorithm: Algorithm) -> Result<i32> {
    match insert_first_version(key_id, algorithm, false, None)? {
        None => Ok(1),
        Some(true) => {
            Err(Error::key_shredded(key_id).with_hint("A shredded key id is never re-created; use a new key id."))
        }
        Some(false) => Err(Error::new(
            ErrorKind::DuplicateKey,
            format!("encryption key \"{key_id}\" already exists"),
        )
        .with_hint("Use event_crypto.rotate_key() to add a new version.")),
    }
}

/// Who needs a key the protect trigger creates on first use: the relation the trigger fires on and its protected
/// column (on a Citus worker, the coordinator checks that the key is one this column's configuration creates).
pub struct KeyUser<'a> {
    pub relid: pg_sys::Oid,
    pub column: &'a str,
}

/// The key id's entry, creating the key id (AES-256-GCM) when it does not exist yet. A shredded key id is
/// returned as such, never re-created. On Citus (the key catalog is a reference table) the key is created by the
/// coordinator, in a transaction of its own ([`crate::citus::create_key_on_coordinator`]).
pub fn ensure_key(key_id: &str, user: &KeyUser<'_>) -> Result<Rc<KeyEntry>> {
    match lookup(key_id) {
        Err(e) if e.kind() == ErrorKind::UnknownKey => {
            if crate::citus::in_task() || crate::citus::key_catalog_distributed()? {
                crate::citus::create_key_on_coordinator(user.relid, user.column, key_id)?;
            } else {
                insert_first_version(key_id, Algorithm::Aes256Gcm, true, None)?;
            }
            lookup(key_id)
        }
        other => other,
    }
}

/// Creates (version 1, AES-256-GCM, audited as an automatic creation by `created_by`) a key id a protect trigger
/// needs; `true` when this call created it, `false` when it existed. For `event_crypto.citus_create_key()`,
/// which checks the request first.
pub fn create_automatic_key(key_id: &str, created_by: &str) -> Result<bool> {
    Ok(insert_first_version(key_id, Algorithm::Aes256Gcm, true, Some(created_by))?.is_none())
}

/// Adds a new active version; the previous active version is retired (it still decrypts).
pub fn rotate_key(key_id: &str, algorithm: Option<Algorithm>) -> Result<i32> {
    check_key_id(key_id)?;
    require_writable(&format!("rotate encryption key \"{key_id}\""))?;
    let m = master::get()?.active();
    let role = acting_role();
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            // Lock the key id's rows so concurrent rotations of one key id serialise.
            client
                .update(
                    "SELECT 1 FROM event_crypto.keys WHERE key_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
                    None,
                    &[key_id.into()],
                )
                .unwrap_or_else(|e| spi_failed(e));
            let rows = read_rows(client, key_id);
            if rows.is_empty() {
                return Err(Error::unknown_key(key_id));
            }
            if rows.iter().all(|r| r.status == "shredded") {
                return Err(Error::key_shredded(key_id));
            }
            // the new version has the key id's handle
            let handle = rows.iter().find_map(|r| r.handle).map(KeyHandle::to_i64);
            let newest = rows.last().expect("not empty");
            let live = rows
                .iter()
                .rev()
                .find(|r| r.status != "shredded")
                .expect("some row is live");
            let root = unwrap_row(key_id, live, KeyPurpose::BlindIndex)?;
            let version = newest
                .version
                .checked_add(1)
                .filter(|v| *v <= i32::MAX as u32)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::TooLarge,
                        format!("encryption key \"{key_id}\" has reached the highest version"),
                    )
                })?;
            let algorithm = match algorithm {
                Some(a) => a,
                None => Algorithm::from_name(&newest.algorithm)?,
            };
            let dk = random_key()?;
            let ctx = |purpose| WrapContext {
                key_id,
                version,
                algorithm,
                purpose,
            };
            let wrapped = m.wrap(&dk, &ctx(KeyPurpose::Data))?;
            let wrapped_index = m.wrap(&root, &ctx(KeyPurpose::BlindIndex))?;
            client
                .update(
                    "UPDATE event_crypto.keys SET status = 'retired', retired_at = pg_catalog.now() \
                     WHERE key_id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.=) 'active'",
                    None,
                    &[key_id.into()],
                )
                .unwrap_or_else(|e| spi_failed(e));
            let mut args = vec![
                key_id.into(),
                (version as i32).into(),
                algorithm.name().into(),
                wrapped.into(),
                wrapped_index.into(),
                m.id().into(),
                role.as_str().into(),
            ];
            let insert = if catalog().handles {
                args.push(handle.into());
                "INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id, created_by, handle) \
                 VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $8)"
            } else {
                "INSERT INTO event_crypto.keys (key_id, version, algorithm, status, wrapped_key, wrapped_index_key, master_key_id, created_by) \
                 VALUES ($1, $2, $3, 'active', $4, $5, $6, $7)"
            };
            client.update(insert, None, &args).unwrap_or_else(|e| spi_failed(e));
            // The UPDATE above fired event_crypto.keys_changed, which drops the key caches here and elsewhere.
            crate::audit::record(
                "rotate_key",
                None,
                &[key_id.to_string()],
                json!({"version": version, "algorithm": algorithm.name(), "master_key_id": m.id()}),
            );
            Ok(version as i32)
        })
    })
}

/// Destroys every version of a key id: the wrapped bytes are overwritten with NULL and the rows marked shredded,
/// then kept under the key id's digest instead of the key id (its tombstone). Returns how many versions were
/// destroyed by this call (0 when it was shredded already).
pub fn shred_key(key_id: &str) -> Result<i32> {
    check_key_id(key_id)?;
    require_writable(&format!("shred encryption key \"{key_id}\""))?;
    let role = acting_role();
    let n = as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            let t = client
                .update(
                    "UPDATE event_crypto.keys SET status = 'shredded', wrapped_key = NULL, wrapped_index_key = NULL, destroy_after = NULL, \
                     shredded_at = pg_catalog.now(), shredded_by = $2 \
                     WHERE key_id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.<>) 'shredded' RETURNING version",
                    None,
                    &[key_id.into(), role.as_str().into()],
                )
                .unwrap_or_else(|e| spi_failed(e));
            let n = t.len() as i32;
            if n == 0 && read_rows(client, key_id).is_empty() {
                return Err(Error::unknown_key(key_id));
            }
            if n > 0 {
                crate::audit::record("shred_key", None, &[key_id.to_string()], json!({"versions": n}));
            }
            Ok(n)
        })
    })?;
    // Shredded whole: only the key id's tombstone (its digest) stays in the catalog (crate::tombstones).
    crate::tombstones::entomb(key_id)?;
    // The UPDATE fired event_crypto.keys_changed, which drops the key caches here and elsewhere.
    Ok(n)
}

/// What one rewrap batch did and what is left.
pub struct RewrapOutcome {
    /// Key versions moved to the active master key by this batch.
    pub rewrapped: i64,
    /// Live key versions still wrapped by another master key of the ring (locked and damaged ones included).
    pub remaining: i64,
    /// Live key versions wrapped by a master key that is not in the ring at all (they cannot be rewrapped here).
    pub unknown_master: i64,
    /// Key versions this batch found damaged (their wrapped keys do not unwrap) and left as they are. When the
    /// batch looked at every candidate (it rewrapped fewer than it was allowed to), these are all of them.
    pub damaged: i64,
}

/// Key versions with damaged wrapped keys named in a rewrap's warning and audit row; the rest are only counted.
const DAMAGED_LISTED: usize = 20;

/// Re-wraps up to `limit` live key versions wrapped by an older master key of the ring under the active one:
/// both wrapped keys of a row move together in one UPDATE, so a crash leaves each row wholly old or wholly new,
/// and either way unwrappable by a key of the ring. Rows another transaction has locked are skipped and left
/// for a later batch. Event rows are never touched: the data keys themselves do not change.
///
/// A key version whose wrapped keys do not unwrap (damaged) is left as it is, counted and named (a bounded list,
/// in a WARNING once the batch has looked at every candidate, and in the audit row), and the batch carries on
/// past it: damaged versions never use up a batch, so a batch that rewraps fewer than `limit` has looked at every
/// candidate, and `CALL rewrap_keys()` ends. They stay counted in `remaining`.
pub fn rewrap_batch(limit: i64) -> Result<RewrapOutcome> {
    let ring = master::get()?;
    let active = ring.active().id().to_string();
    let older: Vec<String> = ring.ids().skip(1).map(String::from).collect();
    let all: Vec<String> = ring.ids().map(String::from).collect();
    let mut damaged: Vec<String> = Vec::new();
    let mut damaged_count = 0i64;
    let outcome = as_catalog_owner(|| {
        Spi::connect_mut(|client| -> Result<RewrapOutcome> {
            let mut ids = Vec::new();
            let mut versions = Vec::new();
            let mut wrapped = Vec::new();
            let mut wrapped_index = Vec::new();
            // Candidates in (key_id, version) order, a page at a time, until `limit` are rewrapped or none is left.
            let mut after: Option<(String, i32)> = None;
            loop {
                let want = limit - ids.len() as i64;
                let rows = client
                    .update(
                        "SELECT key_id, version, algorithm, wrapped_key, wrapped_index_key, master_key_id \
                         FROM event_crypto.keys \
                         WHERE wrapped_key IS NOT NULL AND master_key_id OPERATOR(pg_catalog.=) ANY ($1) \
                           AND ($3::pg_catalog.text IS NULL OR key_id OPERATOR(pg_catalog.>) $3 \
                                OR (key_id OPERATOR(pg_catalog.=) $3 AND version OPERATOR(pg_catalog.>) $4)) \
                         ORDER BY key_id, version LIMIT $2 FOR UPDATE SKIP LOCKED",
                        None,
                        &[
                            older.clone().into(),
                            want.into(),
                            after.as_ref().map(|a| a.0.clone()).into(),
                            after.as_ref().map(|a| a.1).into(),
                        ],
                    )
                    .unwrap_or_else(|e| spi_failed(e));
                let exhausted = (rows.len() as i64) < want;
                for r in rows {
                    use crate::catalog::{get, get_opt};
                    let key_id: String = get(&r, 1, "key_id")?;
                    let version: i32 = get(&r, 2, "version")?;
                    after = Some((key_id.clone(), version));
                    let moved = (|| -> Result<(Vec<u8>, Vec<u8>)> {
                        let algorithm = Algorithm::from_name(&get::<String>(&r, 3, "algorithm")?)?;
                        let from: String = get(&r, 6, "master_key_id")?;
                        let v = version_of(version)?;
                        let ctx = |purpose| WrapContext {
                            key_id: &key_id,
                            version: v,
                            algorithm,
                            purpose,
                        };
                        let missing = || {
                            Error::new(
                                ErrorKind::WrappedKeyCorrupt,
                                format!(
                                    "encryption key \"{key_id}\" version {version} has no blind-index key material"
                                ),
                            )
                        };
                        let w: Vec<u8> = get(&r, 4, "wrapped_key")?;
                        let wi: Vec<u8> = get_opt(&r, 5, "wrapped_index_key")?.ok_or_else(missing)?;
                        Ok((
                            ring.rewrap(&from, &w, &ctx(KeyPurpose::Data))?,
                            ring.rewrap(&from, &wi, &ctx(KeyPurpose::BlindIndex))?,
                        ))
                    })();
                    match moved {
                        Ok((w, wi)) => {
                            wrapped.push(w);
                            wrapped_index.push(wi);
                            versions.push(version);
                            ids.push(key_id);
                        }
                        Err(_) => {
                            // never the error's detail: only which key version, never anything of its bytes
                            damaged_count += 1;
                            if damaged.len() < DAMAGED_LISTED {
                                damaged.push(format!("\"{key_id}\" version {version}"));
                            }
                        }
                    }
                }
                if exhausted || ids.len() as i64 >= limit {
                    break;
                }
            }
            let rewrapped = ids.len() as i64;
            if rewrapped > 0 {
                client
                    .update(
                        "UPDATE event_crypto.keys k SET wrapped_key = u.w, wrapped_index_key = u.wi, master_key_id = $5 \
                         FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.int4[]), \
                                         pg_catalog.unnest($3::pg_catalog.bytea[]), pg_catalog.unnest($4::pg_catalog.bytea[])) \
                              AS u(key_id, version, w, wi) \
                         WHERE k.key_id OPERATOR(pg_catalog.=) u.key_id AND k.version OPERATOR(pg_catalog.=) u.version",
                        None,
                        &[ids.into(), versions.into(), wrapped.into(), wrapped_index.into(), active.as_str().into()],
                    )
                    .unwrap_or_else(|e| spi_failed(e));
            }
            let counts = client
                .select(
                    "SELECT pg_catalog.count(*) FILTER (WHERE master_key_id OPERATOR(pg_catalog.=) ANY ($1)), \
                            pg_catalog.count(*) FILTER (WHERE master_key_id OPERATOR(pg_catalog.<>) ALL ($2)) \
                     FROM event_crypto.keys WHERE wrapped_key IS NOT NULL",
                    Some(1),
                    &[older.clone().into(), all.clone().into()],
                )
                .unwrap_or_else(|e| spi_failed(e));
            let row = counts.first();
            // two counts, never NULL: anything else is a catalog that is not what this code reads, not zero
            let count = |i: usize| -> Result<i64> {
                row.get::<i64>(i)
                    .map_err(crate::error::spi_error)?
                    .ok_or_else(|| Error::new(ErrorKind::CatalogAccess, "the key catalog's counts could not be read"))
            };
            Ok(RewrapOutcome {
                rewrapped,
                remaining: count(1)?,
                unknown_master: count(2)?,
                damaged: damaged_count,
            })
        })
    })?;
    let listed = || {
        let mut s = damaged.join(", ");
        if damaged_count > damaged.len() as i64 {
            s.push_str(&format!(" and {} more", damaged_count - damaged.len() as i64));
        }
        s
    };
    if outcome.damaged > 0 && outcome.rewrapped < limit {
        // This batch looked at every candidate: say once which ones are damaged.
        crate::error::warn(
            &Error::new(
                ErrorKind::WrappedKeyCorrupt,
                format!(
                    "{} key versions could not be rewrapped: their wrapped keys do not unwrap",
                    outcome.damaged
                ),
            )
            .with_detail(format!("Left as they are: {}.", listed()))
            .with_hint("The key catalog rows were altered or damaged: restore them from a backup, or shred the key ids. Until then they stay under their old master key and count in remaining."),
        );
    }
    if outcome.rewrapped > 0 {
        let mut details = json!({"rewrapped": outcome.rewrapped, "remaining": outcome.remaining, "to_master_key_id": active,
                                 "from_master_key_ids": older});
        if outcome.damaged > 0 {
            details["damaged"] = json!(outcome.damaged);
            details["damaged_keys"] = json!(damaged);
        }
        crate::audit::record("rewrap_keys", None, &[], details);
    }
    Ok(outcome)
}

/// One master key as `master_key_status()` reports it.
pub struct MasterKeyStatus {
    pub master_key_id: String,
    pub in_ring: bool,
    pub active: bool,
    pub live_key_versions: i64,
}

/// Every master key of the ring and every master key the catalog names, with how many live key versions each
/// wraps. A master key that is not active and wraps nothing can be removed from the ring and destroyed.
pub fn master_key_status() -> Result<Vec<MasterKeyStatus>> {
    let ring = master::get()?;
    let counts: Vec<(String, i64)> = as_catalog_owner(|| {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT master_key_id, pg_catalog.count(*) FROM event_crypto.keys \
                     WHERE wrapped_key IS NOT NULL GROUP BY 1 ORDER BY 1",
                    None,
                    &[],
                )
                .unwrap_or_else(|e| spi_failed(e))
                .map(|r| -> Result<(String, i64)> {
                    Ok((
                        crate::catalog::get::<String>(&r, 1, "master_key_id")?,
                        crate::catalog::get::<i64>(&r, 2, "count")?,
                    ))
                })
                .collect::<Result<Vec<_>>>()
        })
    })?;
    let count_of = |id: &str| counts.iter().find(|(m, _)| m == id).map_or(0, |(_, n)| *n);
    let mut out: Vec<MasterKeyStatus> = ring
        .ids()
        .enumerate()
        .map(|(i, id)| MasterKeyStatus {
            master_key_id: id.to_string(),
            in_ring: true,
            active: i == 0,
            live_key_versions: count_of(id),
        })
        .collect();
    for (id, n) in &counts {
        if ring.get(id).is_none() {
            out.push(MasterKeyStatus {
                master_key_id: id.clone(),
                in_ring: false,
                active: false,
                live_key_versions: *n,
            });
        }
    }
    Ok(out)
}

/// The status of one version of a key id (`active`, `retired`, `disabled` or `shredded`).
pub fn version_status(key_id: &str, version: u32) -> Result<String> {
    let rows = as_catalog_owner(|| Spi::connect(|client| read_rows(client, key_id)));
    if rows.is_empty() {
        return Err(Error::unknown_key(key_id));
    }
    rows.into_iter()
        .find(|r| r.version == version)
        .map(|r| r.status)
        .ok_or_else(|| Error::unknown_key_version(key_id, version))
}

/// Disables one retired version of a key id and schedules its destruction `wait_seconds` from now; returns when
/// it will be destroyed, or `None` if the version was not retired (any more).
pub fn disable_version(key_id: &str, version: i32, wait_seconds: i32) -> Result<Option<String>> {
    // The time is computed first: on Citus the catalog is a reference table, whose RETURNING lists may not call
    // functions that are not immutable (a timestamptz's text form is not).
    let at = crate::catalog::one::<String>(
        "SELECT (pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $1))::pg_catalog.text",
        &[(wait_seconds as f64).into()],
    )?
    .unwrap_or_default();
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "UPDATE event_crypto.keys SET status = 'disabled', destroy_after = $3::pg_catalog.timestamptz \
                     WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2 \
                       AND status OPERATOR(pg_catalog.=) 'retired' RETURNING version",
                    None,
                    &[key_id.into(), version.into(), at.as_str().into()],
                )
                .map(|t| (!t.is_empty()).then(|| at.clone()))
                .map_err(crate::error::spi_error)
        })
    })
}

/// Re-enables a disabled version (back to retired: it decrypts again); returns whether it was disabled.
pub fn enable_version(key_id: &str, version: i32) -> Result<bool> {
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "UPDATE event_crypto.keys SET status = 'retired', destroy_after = NULL \
                     WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2 \
                       AND status OPERATOR(pg_catalog.=) 'disabled' RETURNING version",
                    None,
                    &[key_id.into(), version.into()],
                )
                .map(|t| !t.is_empty())
                .map_err(crate::error::spi_error)
        })
    })
}

/// Destroys one retired or disabled version of a key id: its wrapped bytes are overwritten with NULL. Returns whether it was
/// destroyed by this call.
pub fn destroy_version(key_id: &str, version: i32) -> Result<bool> {
    let role = acting_role();
    as_catalog_owner(|| {
        Spi::connect_mut(|client| {
            client
                .update(
                    "UPDATE event_crypto.keys SET status = 'shredded', wrapped_key = NULL, wrapped_index_key = NULL, destroy_after = NULL, \
                     shredded_at = pg_catalog.now(), shredded_by = $3 \
                     WHERE key_id OPERATOR(pg_catalog.=) $1 AND version OPERATOR(pg_catalog.=) $2 \
                       AND status OPERATOR(pg_catalog.=) ANY ('{retired,disabled}') RETURNING version",
                    None,
                    &[key_id.into(), version.into(), role.as_str().into()],
                )
                .map(|t| !t.is_empty())
                .map_err(crate::error::spi_error)
        })
    })
}
