//! What the protect trigger encrypts a row's fields with, remembered from row to row.
//!
//! Finding a subject's key through the key cache builds its key id (`subject:` + the escaped subject), checks it,
//! hashes it with SipHash, compares it with the cached key id, parses the key id back to check whose it is, and
//! follows the entry to its active version: a dozen cold cache lines for each row of a bulk insert that switches
//! subject from row to row. Here the outcome (the key's entry, the cipher of its active version and that version)
//! is kept in one record per subject, found by a fast hash (foldhash, seeded per process) of the raw bytes of the
//! key column, for as long as the key cache's generation stands: any change to the key catalog (a new key, a
//! rotation, a shred, a forget, in this session or another) ends every record. At most
//! `event_crypto.key_cache_size` records.
//!
//! Only a key that could encrypt is remembered: a shredded key, a key without an active version, a subject id
//! that is refused, each goes the long way every time (and raises its error there).

use crate::keys::{self, KeyEntry};
use event_crypto_core::aead::Cipher;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The key, cipher and version new fields of a subject (or of a table's fixed key) are encrypted with.
#[derive(Clone)]
pub struct Seal {
    pub entry: Rc<KeyEntry>,
    pub cipher: Rc<Cipher>,
    pub version: u32,
}

struct Seals {
    generation: u64,
    /// The lookup key being built (reused from row to row).
    probe: Vec<u8>,
    map: HashMap<Box<[u8]>, Seal, foldhash::fast::RandomState>,
}

thread_local! {
    static SEALS: RefCell<Seals> = RefCell::new(Seals {
        generation: u64::MAX,
        probe: Vec::new(),
        map: HashMap::default(),
    });
}

/// Which key a row's fields go under, as the lookup key of its record: for a key per subject, the policy for
/// forgotten subjects (it decides which generation a forgotten subject gets), the key prefix and the subject's
/// text; for a fixed key, its key id. The parts are separated by a byte UTF-8 never holds, so no two differ only
/// in where one part ends.
pub enum Which<'a> {
    Subject {
        new_key_when_forgotten: bool,
        prefix: &'a str,
    },
    Fixed(&'a str),
}

fn build_probe(probe: &mut Vec<u8>, which: &Which<'_>, subject: impl FnOnce(&mut Vec<u8>)) {
    probe.clear();
    match which {
        Which::Subject {
            new_key_when_forgotten,
            prefix,
        } => {
            probe.push(if *new_key_when_forgotten { b'n' } else { b'r' });
            probe.extend_from_slice(prefix.as_bytes());
            probe.push(0xff);
            subject(probe);
        }
        Which::Fixed(key_id) => {
            probe.push(b'f');
            probe.extend_from_slice(key_id.as_bytes());
        }
    }
}

/// The remembered seal of `which` (with the subject's text appended by `subject`), if this backend has one under
/// the key cache's current generation.
pub fn known(which: &Which<'_>, subject: impl FnOnce(&mut Vec<u8>)) -> Option<Seal> {
    SEALS.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        if s.generation != keys::cache_generation() {
            return None;
        }
        let s = &mut *s;
        build_probe(&mut s.probe, which, subject);
        s.map.get(&s.probe[..]).cloned()
    })
}

/// Remembers the seal found the long way for `which`, when the key cache's generation is still the one it was
/// found under (`generation`, read before the lookup: a key created by the lookup itself changed it, and is
/// remembered from the subject's next row on).
pub fn remember(which: &Which<'_>, subject: impl FnOnce(&mut Vec<u8>), generation: u64, seal: &Seal) {
    if keys::cache_generation() != generation {
        return;
    }
    SEALS.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return;
        };
        let s = &mut *s;
        if s.generation != generation || s.map.len() >= crate::guc::key_cache_size() {
            s.generation = generation;
            s.map = HashMap::default();
        }
        build_probe(&mut s.probe, which, subject);
        let probe: Box<[u8]> = s.probe[..].into();
        s.map.insert(probe, seal.clone());
    });
}

/// Drops every remembered seal (with the key cache: a shredded key's material must not outlive its entry there).
pub fn forget_all() {
    SEALS.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.generation = u64::MAX;
            s.map = HashMap::default();
        }
    });
}

/// How many seals this backend remembers (tests).
#[cfg(any(test, feature = "pg_test"))]
pub fn remembered() -> usize {
    SEALS.with(|s| {
        let s = s.borrow();
        if s.generation == keys::cache_generation() {
            s.map.len()
        } else {
            0
        }
    })
}
