//! Counting key use without writing per row: how many values each key version encrypted (AES-GCM with random
//! 96-bit nonces is safe for about 2^32 encryptions per key) and decrypted, and, with
//! `event_crypto.audit_decrypt = on`, how many fields each session decrypted per key id.
//!
//! A backend adds to a counter cell of the cached key (no hashing on the hot path) and, when its transaction
//! ends, moves what it counted into a table in shared memory (two lock acquisitions per transaction). The
//! maintenance run (`event_crypto.run_maintenance()`, or the background worker) moves the shared counts of its
//! database into `event_crypto.key_usage` and the decryption counts into the audit log, and rotates key versions
//! that reached `event_crypto.rotate_after_encryptions`. The shared table needs `shared_preload_libraries`; without
//! it nothing is counted (documented).
//!
//! No count is dropped silently (issue 12, item 7):
//! - The shared table has [`SLOTS`] counters for all databases. One database holds at most [`DB_LIMIT`] of them,
//!   so a database nobody flushes never crowds the others out.
//! - A committing transaction whose counts the shared table cannot take, or that counted under more than
//!   [`BULK`] keys (a bulk insert of new subjects), writes them into the catalog itself in its pre-commit
//!   callback (`key_usage`, and `decrypt` audit rows), as the catalog owner and in a subtransaction: it never makes
//!   the commit fail.
//! - Counts of a transaction that rolls back (its nonces were drawn all the same) or cannot write (read-only,
//!   standby, parallel worker) go to the shared table; what it cannot take is kept by the backend (up to
//!   [`HELD_MAX`] counters), which says so in one WARNING per transaction and tries again at its next transaction
//!   end (and writes it at its next commit).
//! - Counts a transaction moved into the catalog (its own, or a flush's) are given back if the transaction or
//!   the subtransaction rolls back (a flush that fails, a maintenance run cancelled by `statement_timeout`).
//! - When a backend exits it puts what it still keeps into the shared table, which then may fill up to
//!   [`EXIT_LIMIT`]; anything left is counted as lost for its database (a LOG line), and the next flush in that
//!   database reports it (`"lost"`, which makes its maintenance action not ok) and records it in a `usage_lost`
//!   audit row. Counts of a server that stops before a flush are lost (the flush interval bounds the loss; the
//!   rotation threshold leaves a wide margin).
//! - Decryptions per key version ([`Kind::Read`]) are statistics and follow their own rule (`place_reads`): never
//!   written by the reading transaction, never held by a backend, at most half of the table; what does not fit is
//!   counted apart and reported by the flush as not counted, without making it fail. A standby counts none.
//!
//! What is counted is a [`Kind`]: each has its own counters, its own lost count and its own way into the catalog
//! (`crate::maintenance::write_counts`).

use crate::access::{in_subtransaction, Caught};
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::rc::Rc;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

const TRANCHE: &CStr = c"event_crypto usage";
/// Counters in the shared table, for all databases.
pub const SLOTS: usize = 8192;
/// New counters are taken while fewer than this many are in use (linear probing stays short).
const LIMIT: usize = SLOTS * 3 / 4;
/// ... by one database, while it has fewer than this many.
pub const DB_LIMIT: usize = SLOTS / 2;
/// A backend that exits may fill the table up to this (its counts are lost otherwise), whatever its database has.
const EXIT_LIMIT: usize = SLOTS * 7 / 8;
/// Databases the shared table keeps track of at once (counters in use and lost counts).
const DATABASES: usize = 64;
/// A transaction that counted under more key (version)s than this writes its counts into the catalog itself.
pub const BULK: usize = 512;
/// Decryption counters ([`Kind::Read`]) may take this share of the table and of a database's part of it.
const READ_SHARE: usize = 2;
/// Counters a backend keeps while neither the shared table nor the catalog can take them; beyond it they are lost
/// (counted).
const HELD_MAX: usize = 100_000;

/// What a counter counts. To add a kind: a variant, its entry in [`Kind::ALL`], its name, whether it is counted
/// per session, and its way into the catalog in `crate::maintenance::write_counts`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Kind {
    Encrypt = 1,
    Decrypt = 2,
    /// Attempts to decrypt under a key version `retire_key_version` disabled (counted per key version, whatever
    /// `audit_decrypt` says: an application still reading such data must show up before it is destroyed).
    Disabled = 3,
    /// Fields decrypted per key version (always counted: `key_usage.decryptions`, the stats views).
    Read = 4,
}

/// Number of kinds.
pub const KINDS: usize = Kind::ALL.len();

impl Kind {
    /// Every kind, in the order of their codes (`ALL[k.index()] == k`).
    pub const ALL: [Kind; 4] = [Kind::Encrypt, Kind::Decrypt, Kind::Disabled, Kind::Read];

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    fn of_code(code: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == code)
    }

    /// Its name in reports (`flush_usage()`, the `usage_lost` audit row).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Encrypt => "encryptions",
            Kind::Decrypt => "audited_decryptions",
            Kind::Disabled => "disabled_decryptions",
            Kind::Read => "decryptions",
        }
    }

    /// Whether a counter is kept per session (role, process, session start) rather than per key version only.
    fn per_session(self) -> bool {
        match self {
            Kind::Encrypt | Kind::Disabled | Kind::Read => false,
            Kind::Decrypt => true,
        }
    }
}

/// What a slot counts; written only under the exclusive lock, read under the shared lock.
#[repr(C)]
#[derive(Clone, Copy)]
struct Meta {
    session_start: i64,
    database: u32,
    version: u32,
    role: u32,
    pid: i32,
    kind: u8,
    /// 0 for an empty slot (key ids are 1 to 255 bytes).
    key_len: u8,
    key: [u8; 255],
}

const EMPTY: Meta = Meta {
    session_start: 0,
    database: 0,
    version: 0,
    role: 0,
    pid: 0,
    kind: 0,
    key_len: 0,
    key: [0; 255],
};

#[repr(C)]
struct Slot {
    count: AtomicU64,
    meta: std::cell::UnsafeCell<Meta>,
}

impl Slot {
    /// The slot's identity. Callers hold the table lock (shared or exclusive), so no one writes it meanwhile.
    fn meta(&self) -> &Meta {
        // SAFETY: writes happen only under the exclusive lock, which excludes every reader.
        unsafe { &*self.meta.get() }
    }
}

/// One database's share of the table: counters in use (changed under the exclusive lock) and counts lost
/// (added to under either lock). `database` 0 marks a free entry.
#[repr(C)]
struct Database {
    database: AtomicU32,
    used: AtomicU32,
    lost: [AtomicU64; KINDS],
}

#[repr(C)]
struct Table {
    used: AtomicU32,
    /// Counts lost in a database that had no entry in `databases` (all taken): reported by every flush.
    lost_unattributed: [AtomicU64; KINDS],
    databases: [Database; DATABASES],
    slots: [Slot; SLOTS],
}

impl Table {
    /// The entry of `database`, if it has one.
    fn database(&self, database: u32) -> Option<&Database> {
        self.databases
            .iter()
            .find(|d| d.database.load(Ordering::Relaxed) == database)
    }

    /// The entry of `database`, taking a free one if it has none.
    ///
    /// # Safety
    /// The caller holds the table's lock in exclusive mode.
    unsafe fn database_entry(&self, database: u32) -> Option<&Database> {
        if let Some(d) = self.database(database) {
            return Some(d);
        }
        let free = self.databases.iter().find(|d| {
            d.database.load(Ordering::Relaxed) == 0
                || (d.used.load(Ordering::Relaxed) == 0 && d.lost.iter().all(|l| l.load(Ordering::Relaxed) == 0))
        })?;
        free.database.store(database, Ordering::Relaxed);
        free.used.store(0, Ordering::Relaxed);
        Some(free)
    }
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(std::ptr::null_mut());
static LOCK: AtomicPtr<pg_sys::LWLock> = AtomicPtr::new(std::ptr::null_mut());
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Registers the shared table; called from `_PG_init` while the library is preloaded.
pub fn request_shared_memory() {
    // SAFETY: _PG_init runs once in the postmaster, single-threaded, before shared memory exists.
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by the postmaster at the point where add-ins request space.
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Table>());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: the standard add-in start-up sequence; the table is zeroed in place (all zero = empty) the first
    // time, under AddinShmemInitLock.
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let t = pg_sys::ShmemInitStruct(
            c"event_crypto usage counters".as_ptr(),
            std::mem::size_of::<Table>(),
            &mut found,
        )
        .cast::<Table>();
        if !found {
            std::ptr::write_bytes(t.cast::<u8>(), 0, std::mem::size_of::<Table>());
        }
        TABLE.store(t, Ordering::Release);
        LOCK.store(
            &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock,
            Ordering::Release,
        );
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Whether counts can be kept (the library was preloaded).
pub fn available() -> bool {
    !TABLE.load(Ordering::Acquire).is_null()
}

struct Guard(*mut pg_sys::LWLock);

impl Guard {
    fn new(mode: pg_sys::LWLockMode::Type) -> Option<(Guard, &'static Table)> {
        let t = TABLE.load(Ordering::Acquire);
        let l = LOCK.load(Ordering::Acquire);
        if t.is_null() || l.is_null() {
            return None;
        }
        // SAFETY: the lock and table live in shared memory for the life of the server.
        unsafe {
            pg_sys::LWLockAcquire(l, mode);
            Some((Guard(l), &*t))
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: acquired in Guard::new by this backend.
        unsafe { pg_sys::LWLockRelease(self.0) };
    }
}

/// The identity of one counter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CounterKey {
    pub kind: Kind,
    pub database: u32,
    pub key_id: String,
    pub version: u32,
    pub role: u32,
    pub pid: i32,
    pub session_start: i64,
}

impl CounterKey {
    fn hash(&self) -> usize {
        // FNV-1a: cheap, and the table is private to the server (no adversarial keys from outside).
        let mut h: u64 = 0xcbf29ce484222325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100000001b3);
            }
        };
        eat(&[self.kind as u8]);
        eat(&self.database.to_le_bytes());
        eat(self.key_id.as_bytes());
        eat(&self.version.to_le_bytes());
        eat(&self.role.to_le_bytes());
        eat(&self.pid.to_le_bytes());
        eat(&self.session_start.to_le_bytes());
        h as usize
    }

    fn matches(&self, s: &Slot) -> bool {
        let s = s.meta();
        s.key_len as usize == self.key_id.len()
            && s.kind == self.kind as u8
            && s.database == self.database
            && s.version == self.version
            && s.role == self.role
            && s.pid == self.pid
            && s.session_start == self.session_start
            && &s.key[..self.key_id.len()] == self.key_id.as_bytes()
    }

    /// The counter a slot holds (`None` for a kind this build does not know).
    fn of(s: &Slot) -> Option<CounterKey> {
        let s = s.meta();
        Some(CounterKey {
            kind: Kind::of_code(s.kind)?,
            database: s.database,
            key_id: String::from_utf8_lossy(&s.key[..s.key_len as usize]).into_owned(),
            version: s.version,
            role: s.role,
            pid: s.pid,
            session_start: s.session_start,
        })
    }

    /// Whether a slot can hold it (key ids are 1 to 255 bytes; anything else is never counted in shared memory).
    fn fits(&self) -> bool {
        !self.key_id.is_empty() && self.key_id.len() <= 255
    }
}

fn find(t: &Table, k: &CounterKey) -> Result<usize, Option<usize>> {
    let start = k.hash() % SLOTS;
    for i in 0..SLOTS {
        let at = (start + i) % SLOTS;
        let s = &t.slots[at];
        if s.meta().key_len == 0 {
            return Err(Some(at));
        }
        if k.matches(s) {
            return Ok(at);
        }
    }
    Err(None)
}

/// Writes counter `k` with count `n` into the empty slot `at`, counting it for database `d`.
///
/// # Safety
/// The caller holds the table's lock in exclusive mode, so no other backend reads or writes the slot.
unsafe fn claim(t: &Table, d: &Database, at: usize, k: &CounterKey, n: u64) {
    let mut m = Meta {
        session_start: k.session_start,
        database: k.database,
        version: k.version,
        role: k.role,
        pid: k.pid,
        kind: k.kind as u8,
        key_len: k.key_id.len() as u8,
        ..EMPTY
    };
    m.key[..k.key_id.len()].copy_from_slice(k.key_id.as_bytes());
    // SAFETY: per the contract, nothing else reads or writes the slot while it is written.
    unsafe { *t.slots[at].meta.get() = m };
    t.slots[at].count.store(n, Ordering::Relaxed);
    t.used.fetch_add(1, Ordering::Relaxed);
    d.used.fetch_add(1, Ordering::Relaxed);
}

/// How far a new counter of kind `kind` may fill the table, and its database's share (`None`: no limit per
/// database). Decryption counts are statistics and take at most half of what the others may ([`READ_SHARE`]), so
/// that a read-heavy workload never takes the room encryption counts (the nonce budget) need.
fn limits(kind: Kind, exiting: bool) -> (usize, Option<usize>) {
    match kind {
        Kind::Read => (LIMIT / READ_SHARE, Some(DB_LIMIT / READ_SHARE)),
        _ if exiting => (EXIT_LIMIT, None),
        _ => (LIMIT, Some(DB_LIMIT)),
    }
}

/// Adds counts to the shared table: to counters that exist under the shared lock, then new counters under one
/// exclusive lock, while the table and the counter's database have room for its kind (see [`limits`]; an exiting
/// backend may go further, see [`EXIT_LIMIT`]). Returns what it could not take.
fn add_shared(items: Vec<(CounterKey, u64)>, exiting: bool) -> Vec<(CounterKey, u64)> {
    let items: Vec<(CounterKey, u64)> = items.into_iter().filter(|(k, n)| *n > 0 && k.fits()).collect();
    if items.is_empty() {
        return items;
    }
    let has_room = |t: &Table, k: &CounterKey, d: Option<&Database>| {
        let (table, db) = limits(k.kind, exiting);
        (t.used.load(Ordering::Relaxed) as usize) < table
            && db.is_none_or(|db| d.is_none_or(|d| (d.used.load(Ordering::Relaxed) as usize) < db))
    };
    let (missing, room): (Vec<(CounterKey, u64)>, bool) = {
        let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_SHARED) else {
            return items;
        };
        let missing: Vec<(CounterKey, u64)> = items
            .into_iter()
            .filter(|(k, n)| match find(t, k) {
                Ok(at) => {
                    t.slots[at].count.fetch_add(*n, Ordering::Relaxed);
                    false
                }
                Err(_) => true,
            })
            .collect();
        // No new counter can be had: do not take the exclusive lock (what is missing is tried again later).
        let room = missing.iter().any(|(k, _)| has_room(t, k, t.database(k.database)));
        (missing, room)
    };
    if missing.is_empty() || !room {
        return missing;
    }
    let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_EXCLUSIVE) else {
        return missing;
    };
    missing
        .into_iter()
        .filter(|(k, n)| match find(t, k) {
            Ok(at) => {
                t.slots[at].count.fetch_add(*n, Ordering::Relaxed);
                false
            }
            Err(Some(at)) if has_room(t, k, t.database(k.database)) => {
                // SAFETY: the exclusive lock is held.
                match unsafe { t.database_entry(k.database) } {
                    Some(d) => {
                        // SAFETY: the exclusive lock is held.
                        unsafe { claim(t, d, at, k, *n) };
                        false
                    }
                    None => true,
                }
            }
            _ => true,
        })
        .collect()
}

/// Every non-zero counter of database `database`, left in place (`usage_pending()`, `usage_pending_counts()`).
pub fn snapshot(database: u32) -> Vec<(CounterKey, u64)> {
    let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_SHARED) else {
        return Vec::new();
    };
    t.slots
        .iter()
        .filter(|s| s.meta().key_len > 0 && s.meta().database == database)
        .filter_map(|s| {
            let n = s.count.load(Ordering::Relaxed);
            (n > 0).then(|| CounterKey::of(s).map(|k| (k, n))).flatten()
        })
        .collect()
}

/// Takes every count of database `database` out of the shared table (each count is taken by one caller only), for
/// the caller to write into the catalog. They are given back if this transaction, or the subtransaction taking
/// them, rolls back.
pub fn take(database: u32) -> Vec<(CounterKey, u64)> {
    let taken: Vec<(CounterKey, u64)> = {
        let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_SHARED) else {
            return Vec::new();
        };
        t.slots
            .iter()
            .filter(|s| s.meta().key_len > 0 && s.meta().database == database)
            .filter_map(|s| {
                let k = CounterKey::of(s)?;
                let n = s.count.swap(0, Ordering::Relaxed);
                (n > 0).then_some((k, n))
            })
            .collect()
    };
    // in key order, like every writer of key_usage (crate::maintenance::write_counts)
    let taken = merge(taken);
    if !taken.is_empty() {
        moved(Moved::Counts(taken.clone()));
    }
    taken
}

/// Takes the counts lost in database `database` (and those lost where no database could be told), per kind, for
/// the caller to report and record. Given back like [`take`]'s.
pub fn take_lost(database: u32) -> [u64; KINDS] {
    let mut lost = [0u64; KINDS];
    {
        let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_SHARED) else {
            return lost;
        };
        if let Some(d) = t.database(database) {
            for (l, s) in lost.iter_mut().zip(&d.lost) {
                *l += s.swap(0, Ordering::Relaxed);
            }
        }
        for (l, s) in lost.iter_mut().zip(&t.lost_unattributed) {
            *l += s.swap(0, Ordering::Relaxed);
        }
    }
    if lost.iter().any(|n| *n > 0) {
        moved(Moved::Lost(database, lost));
    }
    lost
}

/// Counts `lost` as lost for `database`.
fn add_lost(database: u32, lost: [u64; KINDS]) {
    if lost.iter().all(|n| *n == 0) {
        return;
    }
    let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_EXCLUSIVE) else {
        return;
    };
    // SAFETY: the exclusive lock is held.
    let into = match unsafe { t.database_entry(database) } {
        Some(d) => &d.lost,
        None => &t.lost_unattributed,
    };
    for (s, n) in into.iter().zip(lost) {
        s.fetch_add(n, Ordering::Relaxed);
    }
}

/// After a flush: drops counters that are zero when the table is a quarter full, and the counters and lost counts
/// of databases that no longer exist (`live` lists those that do).
pub fn tidy(live: &[u32]) {
    let dead = |db: u32| db != 0 && !live.contains(&db);
    {
        let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_SHARED) else {
            return;
        };
        let some_dead = t.databases.iter().any(|d| dead(d.database.load(Ordering::Relaxed)));
        if (t.used.load(Ordering::Relaxed) as usize) < SLOTS / 4 && !some_dead {
            return;
        }
    }
    let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_EXCLUSIVE) else {
        return;
    };
    let live_counters: Vec<(CounterKey, u64)> = t
        .slots
        .iter()
        .filter(|s| s.meta().key_len > 0 && !dead(s.meta().database))
        .filter_map(|s| {
            let n = s.count.load(Ordering::Relaxed);
            (n > 0).then(|| CounterKey::of(s).map(|k| (k, n))).flatten()
        })
        .collect();
    for s in &t.slots {
        // SAFETY: the exclusive lock is held.
        unsafe { *s.meta.get() = EMPTY };
        s.count.store(0, Ordering::Relaxed);
    }
    t.used.store(0, Ordering::Relaxed);
    for d in &t.databases {
        d.used.store(0, Ordering::Relaxed);
        if dead(d.database.load(Ordering::Relaxed)) {
            d.database.store(0, Ordering::Relaxed);
            for l in &d.lost {
                l.store(0, Ordering::Relaxed);
            }
        }
    }
    for (k, n) in live_counters {
        if let Err(Some(at)) = find(t, &k) {
            // SAFETY: the exclusive lock is held.
            if let Some(d) = unsafe { t.database_entry(k.database) } {
                // SAFETY: the exclusive lock is held.
                unsafe { claim(t, d, at, &k, n) };
            }
        }
    }
}

/// A backend's running count for one key (version), shared with the cache entry that increments it.
#[derive(Default)]
pub struct Counter {
    count: Cell<u64>,
    registered: Cell<bool>,
}

/// What a counter is registered under in this backend until its transaction ends.
struct Pending {
    kind: Kind,
    key_id: String,
    version: u32,
    counter: Rc<Counter>,
}

/// Counts this transaction moved out of the shared table or the backend into the catalog: given back if it rolls
/// back.
enum Moved {
    Counts(Vec<(CounterKey, u64)>),
    Lost(u32, [u64; KINDS]),
}

thread_local! {
    /// Counters used in this transaction.
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// Counts neither the shared table nor the catalog could take yet.
    static HELD: RefCell<Vec<(CounterKey, u64)>> = const { RefCell::new(Vec::new()) };
    /// What this transaction moved into the catalog, with the subtransaction that did (see [`Moved`]).
    static MOVED: RefCell<Vec<(Moved, pg_sys::SubTransactionId)>> = const { RefCell::new(Vec::new()) };
    /// Whether this transaction has warned about held counts.
    static WARNED: Cell<bool> = const { Cell::new(false) };
    /// Whether the exit callback is registered.
    static AT_EXIT: Cell<bool> = const { Cell::new(false) };
}

fn moved(m: Moved) {
    // SAFETY: reads the current subtransaction's id.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let _ = MOVED.try_with(|v| {
        if let Ok(mut v) = v.try_borrow_mut() {
            v.push((m, sub));
        }
    });
    register_exit();
}

/// Puts back what a rolled-back (sub)transaction had moved into the catalog.
fn give_back(m: Moved) {
    match m {
        Moved::Counts(items) => hold(items),
        Moved::Lost(database, lost) => add_lost(database, lost),
    }
}

/// Counts `n` uses of a key (version). Cheap: a cell update, plus a registration on first use in a transaction.
pub fn note(counter: &Rc<Counter>, kind: Kind, key_id: &str, version: u32, n: u64) {
    if n == 0 || !available() {
        return;
    }
    counter.count.set(counter.count.get() + n);
    if !counter.registered.get() {
        counter.registered.set(true);
        let _ = PENDING.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.push(Pending {
                    kind,
                    key_id: key_id.to_string(),
                    version,
                    counter: counter.clone(),
                });
            }
        });
        register_exit();
    }
}

/// This transaction's counts and the held ones, merged per counter and sorted (the order in which the catalog's
/// rows are locked). The counters start again from zero.
fn collect() -> Vec<(CounterKey, u64)> {
    let nothing = PENDING
        .try_with(|p| p.try_borrow().map(|p| p.is_empty()).unwrap_or(true))
        .unwrap_or(true)
        && HELD
            .try_with(|h| h.try_borrow().map(|h| h.is_empty()).unwrap_or(true))
            .unwrap_or(true);
    if nothing {
        return Vec::new();
    }
    // SAFETY: plain reads of backend-global variables.
    let (database, role, pid, start) = unsafe {
        (
            pg_sys::MyDatabaseId.to_u32(),
            pg_sys::GetUserId().to_u32(),
            pg_sys::MyProcPid,
            pg_sys::MyStartTimestamp,
        )
    };
    let mut items: Vec<(CounterKey, u64)> = HELD
        .try_with(|h| {
            h.try_borrow_mut()
                .map(|mut h| std::mem::take(&mut *h))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let _ = PENDING.try_with(|p| {
        let Ok(mut pending) = p.try_borrow_mut() else {
            return;
        };
        for p in pending.drain(..) {
            let n = p.counter.count.replace(0);
            p.counter.registered.set(false);
            if n == 0 {
                continue;
            }
            let session = p.kind.per_session();
            items.push((
                CounterKey {
                    kind: p.kind,
                    database,
                    key_id: p.key_id,
                    version: p.version,
                    role: if session { role } else { 0 },
                    pid: if session { pid } else { 0 },
                    session_start: if session { start } else { 0 },
                },
                n,
            ));
        }
    });
    let (reads, rest): (Vec<_>, Vec<_>) = merge(items).into_iter().partition(|(k, _)| k.kind == Kind::Read);
    place_reads(reads);
    rest
}

/// Decryption counts are statistics: they go to the shared table only, never into the catalog from the reading
/// transaction (a read-only query must not write) and are never kept by the backend. What the table has no room
/// for is counted as lost for its database (reported by the next flush as `lost.decryptions`). A standby counts
/// none: nothing there can flush them (docs/operations.md says that the figures are the primary's).
fn place_reads(reads: Vec<(CounterKey, u64)>) {
    // SAFETY: reads shared recovery state.
    if reads.is_empty() || unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    let mut lost: Vec<(u32, [u64; KINDS])> = Vec::new();
    for (k, n) in add_shared(reads, false) {
        match lost.iter_mut().find(|(d, _)| *d == k.database) {
            Some((_, l)) => l[k.kind.index()] += n,
            None => {
                let mut l = [0; KINDS];
                l[k.kind.index()] = n;
                lost.push((k.database, l));
            }
        }
    }
    for (database, lost) in lost {
        add_lost(database, lost);
    }
}

fn merge(mut items: Vec<(CounterKey, u64)>) -> Vec<(CounterKey, u64)> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(CounterKey, u64)> = Vec::with_capacity(items.len());
    for (k, n) in items {
        match out.last_mut() {
            Some((last, m)) if *last == k => *m += n,
            _ => out.push((k, n)),
        }
    }
    out
}

/// Keeps counts in the backend (bounded by [`HELD_MAX`]: beyond it they are counted as lost).
fn hold(items: Vec<(CounterKey, u64)>) {
    if items.is_empty() {
        return;
    }
    let _ = HELD.try_with(|h| {
        let Ok(mut h) = h.try_borrow_mut() else {
            return;
        };
        h.extend(items);
        if h.len() > HELD_MAX {
            *h = merge(std::mem::take(&mut *h));
        }
        if h.len() > HELD_MAX {
            let over = h.split_off(HELD_MAX);
            drop(h);
            lose(over, "this session already keeps too many");
        }
    });
}

fn held() -> u64 {
    HELD.try_with(|h| h.try_borrow().map(|h| h.iter().map(|(_, n)| n).sum()).unwrap_or(0))
        .unwrap_or(0)
}

/// Counts as lost what could not be kept anywhere, and says so in the server log.
fn lose(items: Vec<(CounterKey, u64)>, why: &str) {
    let mut per_db: Vec<(u32, [u64; KINDS])> = Vec::new();
    for (k, n) in items {
        match per_db.iter_mut().find(|(d, _)| *d == k.database) {
            Some((_, l)) => l[k.kind.index()] += n,
            None => {
                let mut l = [0; KINDS];
                l[k.kind.index()] = n;
                per_db.push((k.database, l));
            }
        }
    }
    for (database, lost) in per_db {
        add_lost(database, lost);
        let what: Vec<String> = Kind::ALL
            .iter()
            .filter(|k| lost[k.index()] > 0)
            .map(|k| format!("{} {}", lost[k.index()], k.name()))
            .collect();
        pgrx::log!(
            "event_crypto: {} of database {database} could not be counted per key: {why}; the next flush_usage() in that database reports them as lost",
            what.join(" and ")
        );
    }
}

/// Moves this backend's counts into shared memory (at transaction end, and before a flush); what it cannot take
/// is kept. Returns the number of counts kept.
pub fn publish() -> u64 {
    let rest = add_shared(collect(), false);
    hold(rest);
    held()
}

/// Whether this transaction may write the catalog now.
fn can_write() -> std::result::Result<(), &'static str> {
    // SAFETY: reads of backend-global state.
    unsafe {
        if pg_sys::RecoveryInProgress() {
            Err("the server is a standby")
        } else if pg_sys::XactReadOnly {
            Err("this transaction is read-only")
        } else if pg_sys::IsInParallelMode() || pg_sys::ParallelWorkerNumber >= 0 {
            Err("this is a parallel worker")
        } else {
            Ok(())
        }
    }
}

/// The pre-commit step (see the module comment): a bulk transaction's counts, and what the shared table cannot
/// take, are written into the catalog with the transaction.
fn pre_commit() {
    let items = collect();
    if items.is_empty() {
        return;
    }
    let bulk = items.len() > BULK;
    let rest = if bulk { items } else { add_shared(items, false) };
    if rest.is_empty() {
        return;
    }
    let why = match can_write() {
        Ok(()) => {
            // SAFETY: at pre-commit no statement snapshot is active any more and SPI needs one; pushed here and
            // popped below (an error inside is caught by the subtransaction, which leaves the stack as it was).
            unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
            let r = in_subtransaction(|| crate::maintenance::write_counts(&rest));
            // SAFETY: pops the snapshot pushed above.
            unsafe { pg_sys::PopActiveSnapshot() };
            match r {
                Ok(()) => {
                    moved(Moved::Counts(rest));
                    return;
                }
                Err(Caught { sqlstate, message }) => {
                    format!("writing them into event_crypto.key_usage failed ({sqlstate}: {message})")
                }
            }
        }
        Err(why) => why.to_string(),
    };
    let rest = if bulk { add_shared(rest, false) } else { rest };
    hold(rest);
    warn_held(&why);
}

/// One WARNING per transaction when the backend keeps counts it could not record.
fn warn_held(why: &str) {
    let n = held();
    if n == 0 || WARNED.with(|w| w.replace(true)) {
        return;
    }
    pgrx::pg_sys::panic::ErrorReport::new(
        pgrx::PgSqlErrorCode::ERRCODE_WARNING,
        format!("event_crypto: {n} key usage counts are held back in this session"),
        "event_crypto",
    )
    .set_detail(format!(
        "The shared usage table has no room for them in this database and {why}. This session keeps them and records them at its next commit, or in the shared table when it ends; counts that cannot be recorded even then are counted as lost and reported by flush_usage()."
    ))
    .set_hint("Run SELECT * FROM event_crypto.run_maintenance() in this database (or let the background worker run there) so that counts move into event_crypto.key_usage.")
    .report(pgrx::PgLogLevel::WARNING);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => pre_commit(),
        XACT_EVENT_PRE_PREPARE if MOVED.with(|m| !m.borrow().is_empty()) => {
            crate::error::raise(
                event_crypto_core::Error::new(
                    event_crypto_core::ErrorKind::Unsupported,
                    "cannot PREPARE a transaction that moved event_crypto usage counts into the catalog",
                )
                .with_detail("If the prepared transaction were rolled back, the counts it moved would be lost.")
                .with_hint("Flush usage counts in an ordinary transaction."),
            );
        }
        XACT_EVENT_COMMIT => {
            MOVED.with(|m| m.borrow_mut().clear());
            end_of_transaction("they were counted after this transaction's pre-commit step");
        }
        XACT_EVENT_PREPARE => end_of_transaction("this transaction was prepared (two-phase commit)"),
        XACT_EVENT_ABORT => {
            let back = MOVED.with(|m| std::mem::take(&mut *m.borrow_mut()));
            for (m, _) in back {
                give_back(m);
            }
            end_of_transaction("this transaction rolled back");
        }
        XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT => end_of_transaction("this is a parallel worker"),
        _ => {}
    }
}

fn end_of_transaction(why: &str) {
    if publish() > 0 {
        warn_held(why);
    }
    WARNED.with(|w| w.set(false));
}

/// What a subtransaction moved into the catalog is given back if it rolls back, and belongs to its parent if it
/// commits (a subtransaction's moves are always the newest).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            let mut back = Vec::new();
            let _ = MOVED.try_with(|m| {
                if let Ok(mut m) = m.try_borrow_mut() {
                    while m.last().is_some_and(|(_, by)| *by >= sub) {
                        back.extend(m.pop().map(|(m, _)| m));
                    }
                }
            });
            for m in back {
                give_back(m);
            }
        }
        SUBXACT_EVENT_COMMIT_SUB => {
            let _ = MOVED.try_with(|m| {
                if let Ok(mut m) = m.try_borrow_mut() {
                    for (_, by) in m.iter_mut().rev().take_while(|(_, by)| *by >= sub) {
                        *by = parent;
                    }
                }
            });
        }
        _ => {}
    }
}

/// When the backend exits (after its last transaction was rolled back), what it still keeps goes to the shared
/// table, which may then fill further ([`EXIT_LIMIT`]); the rest is counted as lost.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn at_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    let rest = add_shared(collect(), true);
    if !rest.is_empty() {
        lose(rest, "the shared usage table was full when the session ended");
    }
}

fn register_exit() {
    if AT_EXIT.with(|a| a.replace(true)) {
        return;
    }
    // SAFETY: registers a callback run once when this backend exits, while shared memory and its locks are still
    // usable (on_shmem_exit callbacks run after the transaction was rolled back, before the process detaches).
    unsafe { pg_sys::on_shmem_exit(Some(at_exit), pg_sys::Datum::from(0)) };
}

/// Registers the transaction callbacks that publish counts; called from `_PG_init` after the audit log's (so that
/// this pre-commit step, which may write `decrypt` audit rows, runs before the audit log seals the transaction's
/// rows: PostgreSQL calls the callbacks registered last first).
pub fn register_callback() {
    // SAFETY: registers static callbacks once per process.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}
