//! Counting key use without writing per row: how many values each key version encrypted (AES-GCM with random
//! 96-bit nonces is safe for about 2^32 encryptions per key), and, with `event_crypto.audit_decrypt = on`, how
//! many fields each session decrypted per key id.
//!
//! A backend adds to a counter cell of the cached key (no hashing on the hot path) and, when its transaction
//! ends, moves what it counted into a table in shared memory (one lock acquisition per transaction). The
//! maintenance run (`event_crypto.run_maintenance()`, or the background worker) moves the shared counts into
//! `event_crypto.key_usage` and the decryption counts into the audit log, and rotates key versions that reached
//! `event_crypto.rotate_after_encryptions`. The shared table needs `shared_preload_libraries`; without it
//! nothing is counted (documented). Counts not yet flushed when the server stops are lost (the flush interval
//! bounds the loss; the rotation threshold leaves a wide margin).

use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::rc::Rc;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

const TRANCHE: &CStr = c"event_crypto usage";
const SLOTS: usize = 8192;

/// What a counter counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Encrypt = 1,
    Decrypt = 2,
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

#[repr(C)]
struct Table {
    used: AtomicU32,
    slots: [Slot; SLOTS],
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

    fn of(s: &Slot) -> CounterKey {
        let s = s.meta();
        CounterKey {
            kind: if s.kind == Kind::Decrypt as u8 {
                Kind::Decrypt
            } else {
                Kind::Encrypt
            },
            database: s.database,
            key_id: String::from_utf8_lossy(&s.key[..s.key_len as usize]).into_owned(),
            version: s.version,
            role: s.role,
            pid: s.pid,
            session_start: s.session_start,
        }
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

/// Writes counter `k` with count `n` into the empty slot `at`.
///
/// # Safety
/// The caller holds the table's lock in exclusive mode, so no other backend reads or writes the slot.
unsafe fn claim(t: &Table, at: usize, k: &CounterKey, n: u64) {
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
}

/// Adds `n` to a shared counter; false when the table is full or absent (the caller keeps the count).
fn add_shared(k: &CounterKey, n: u64) -> bool {
    if k.key_id.is_empty() || k.key_id.len() > 255 {
        return true; // cannot happen for a valid key id; never retried
    }
    {
        let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_SHARED) else {
            return false;
        };
        if let Ok(at) = find(t, k) {
            t.slots[at].count.fetch_add(n, Ordering::Relaxed);
            return true;
        }
    }
    let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_EXCLUSIVE) else {
        return false;
    };
    match find(t, k) {
        Ok(at) => {
            t.slots[at].count.fetch_add(n, Ordering::Relaxed);
            true
        }
        Err(Some(at)) if (t.used.load(Ordering::Relaxed) as usize) < SLOTS * 3 / 4 => {
            // SAFETY: the exclusive lock is held.
            unsafe { claim(t, at, k, n) };
            true
        }
        _ => false,
    }
}

/// Every non-zero counter of database `database`.
pub fn snapshot(database: u32) -> Vec<(CounterKey, u64)> {
    let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_SHARED) else {
        return Vec::new();
    };
    t.slots
        .iter()
        .filter(|s| s.meta().key_len > 0 && s.meta().database == database)
        .filter_map(|s| {
            let n = s.count.load(Ordering::Relaxed);
            (n > 0).then(|| (CounterKey::of(s), n))
        })
        .collect()
}

/// Subtracts counts that were written to the catalog, then drops zero slots when the table is half full.
pub fn subtract(flushed: &[(CounterKey, u64)]) {
    {
        let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_SHARED) else {
            return;
        };
        for (k, n) in flushed {
            if let Ok(at) = find(t, k) {
                t.slots[at].count.fetch_sub(*n, Ordering::Relaxed);
            }
        }
        if (t.used.load(Ordering::Relaxed) as usize) < SLOTS / 2 {
            return;
        }
    }
    let Some((_g, t)) = Guard::new(pg_sys::LWLockMode::LW_EXCLUSIVE) else {
        return;
    };
    let live: Vec<(CounterKey, u64)> = t
        .slots
        .iter()
        .filter(|s| s.meta().key_len > 0)
        .filter_map(|s| {
            let n = s.count.load(Ordering::Relaxed);
            (n > 0).then(|| (CounterKey::of(s), n))
        })
        .collect();
    for s in &t.slots {
        // SAFETY: the exclusive lock is held.
        unsafe { *s.meta.get() = EMPTY };
        s.count.store(0, Ordering::Relaxed);
    }
    t.used.store(0, Ordering::Relaxed);
    for (k, n) in live {
        if let Err(Some(at)) = find(t, &k) {
            // SAFETY: the exclusive lock is held.
            unsafe { claim(t, at, &k, n) };
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

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
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
    }
}

/// Moves this backend's counts into shared memory (at transaction end, and before a flush).
pub fn publish() {
    let _ = PENDING.try_with(|p| {
        let Ok(mut pending) = p.try_borrow_mut() else {
            return;
        };
        if pending.is_empty() {
            return;
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
        pending.retain(|p| {
            let n = p.counter.count.get();
            let key = CounterKey {
                kind: p.kind,
                database,
                key_id: p.key_id.clone(),
                version: p.version,
                role: if p.kind == Kind::Decrypt { role } else { 0 },
                pid: if p.kind == Kind::Decrypt { pid } else { 0 },
                session_start: if p.kind == Kind::Decrypt { start } else { 0 },
            };
            if n == 0 || add_shared(&key, n) {
                p.counter.count.set(0);
                p.counter.registered.set(false);
                false
            } else {
                true // the shared table is full: keep counting here and try again at the next transaction end
            }
        });
    });
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_PREPARE
    ) {
        publish();
    }
}

/// Registers the transaction-end callback that publishes counts; called from `_PG_init`.
pub fn register_callback() {
    // SAFETY: registers a static callback once per process.
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}
