//! The consumer's cache of data keys: what `consumer_keys` answered for each (key, version), until when.
//!
//! A granted key is kept as a ready [`Cipher`] (the core's cipher type holds and wipes the key material) until the
//! local time of the request that fetched it plus the grant's lifetime (`expires_at - issued_at`): the consumer's
//! clock need not agree with the server's. A shredded version is final and is kept for good. Other answers
//! (disabled, withheld, unknown) are kept for [`KeyCache::status_ttl`], then asked again.

use event_crypto_core::document::{KeyLookup, KeySource};
use event_crypto_core::envelope::{KeyHandle, KeyRef};
use event_crypto_core::json::OwnedKeyRef;
use event_crypto_core::{Cipher, Error, ErrorKind, Result};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What the database answered for one (key, version).
#[derive(Clone)]
pub enum Status {
    /// The data key, ready to decrypt.
    Granted(Rc<Cipher>),
    /// The version or the whole key id was shredded.
    Shredded,
    /// The version is disabled (retire_key_version).
    Disabled,
    /// The key id is outside the consumer's key pattern.
    Withheld,
    /// No such key id, handle or version.
    Unknown,
}

impl Status {
    /// The status names of `consumer_keys`.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Granted(_) => "granted",
            Status::Shredded => "shredded",
            Status::Disabled => "disabled",
            Status::Withheld => "withheld",
            Status::Unknown => "unknown",
        }
    }
}

struct Entry {
    status: Status,
    /// None: never expires (shredded).
    expires: Option<Instant>,
}

impl Entry {
    fn fresh_at(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// Keys fetched for a consumer, by how envelopes name them.
pub struct KeyCache {
    by_handle: HashMap<(KeyHandle, u32), Entry>,
    by_id: HashMap<String, HashMap<u32, Entry>>,
    /// The key id of each handle the database named (for messages).
    key_ids: HashMap<KeyHandle, String>,
    /// How long an answer other than granted or shredded is kept.
    pub status_ttl: Duration,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::new(Duration::from_secs(60))
    }
}

impl KeyCache {
    pub fn new(status_ttl: Duration) -> KeyCache {
        KeyCache {
            by_handle: HashMap::new(),
            by_id: HashMap::new(),
            key_ids: HashMap::new(),
            status_ttl,
        }
    }

    fn entry(&self, key: KeyRef<'_>, version: u32) -> Option<&Entry> {
        match key {
            KeyRef::Handle(h) => self.by_handle.get(&(h, version)),
            KeyRef::Id(id) => self.by_id.get(id).and_then(|m| m.get(&version)),
        }
    }

    /// Whether (key, version) must be fetched before decrypting at `now`: never fetched, or expired.
    pub fn needs(&self, key: &OwnedKeyRef, version: u32, now: Instant) -> bool {
        !self.entry(borrow(key), version).is_some_and(|e| e.fresh_at(now))
    }

    /// Records an answer fetched by a request made at `requested_at`. `lifetime` is the grant's
    /// `expires_at - issued_at` (granted keys only; ignored for the other statuses).
    pub fn insert(
        &mut self,
        key: &OwnedKeyRef,
        version: u32,
        status: Status,
        key_id: Option<&str>,
        requested_at: Instant,
        lifetime: Duration,
    ) {
        let expires = match status {
            Status::Shredded => None,
            Status::Granted(_) => Some(requested_at + lifetime),
            _ => Some(requested_at + self.status_ttl),
        };
        if let (OwnedKeyRef::Handle(h), Some(id)) = (key, key_id) {
            self.key_ids.insert(*h, id.to_string());
        }
        let entry = Entry { status, expires };
        match key {
            OwnedKeyRef::Handle(h) => {
                self.by_handle.insert((*h, version), entry);
            }
            OwnedKeyRef::Id(id) => {
                self.by_id.entry(id.clone()).or_default().insert(version, entry);
            }
        }
    }

    /// The status cached for (key, version) at `now`, if any and not expired.
    pub fn status(&self, key: KeyRef<'_>, version: u32, now: Instant) -> Option<&Status> {
        self.entry(key, version).filter(|e| e.fresh_at(now)).map(|e| &e.status)
    }

    /// Drops every expired entry (their ciphers are wiped as they drop).
    pub fn purge(&mut self, now: Instant) {
        self.by_handle.retain(|_, e| e.fresh_at(now));
        for m in self.by_id.values_mut() {
            m.retain(|_, e| e.fresh_at(now));
        }
        self.by_id.retain(|_, m| !m.is_empty());
    }

    /// The number of (key, version) entries held, expired ones included.
    pub fn len(&self) -> usize {
        self.by_handle.len() + self.by_id.values().map(|m| m.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A [`KeySource`] over the cache as it stands at `now`.
    pub fn at(&mut self, now: Instant) -> CacheAt<'_> {
        CacheAt { cache: self, now }
    }
}

fn borrow(key: &OwnedKeyRef) -> KeyRef<'_> {
    match key {
        OwnedKeyRef::Id(id) => KeyRef::Id(id),
        OwnedKeyRef::Handle(h) => KeyRef::Handle(*h),
    }
}

/// The cache seen at one instant, as the core's decryptors look keys up.
pub struct CacheAt<'a> {
    cache: &'a mut KeyCache,
    now: Instant,
}

impl KeySource for CacheAt<'_> {
    fn decryption_key(&mut self, key: KeyRef<'_>, version: u32) -> Result<KeyLookup> {
        let status = match self.cache.status(key, version, self.now) {
            Some(Status::Granted(c)) => return Ok(KeyLookup::Found(c.clone())),
            Some(Status::Shredded) => return Ok(KeyLookup::Shredded),
            Some(Status::Disabled) => return Ok(KeyLookup::Disabled),
            // Some(true): withheld, Some(false): unknown, None: not fetched or expired
            other => other.map(|s| matches!(s, Status::Withheld)),
        };
        // what follows "key" in the message: the key id where the database named it
        let label = match key {
            KeyRef::Id(_) => key.to_string(),
            KeyRef::Handle(h) => match self.cache.key_ids.get(&h) {
                Some(id) => KeyRef::Id(id).to_string(),
                None => key.to_string(),
            },
        };
        match status {
            Some(true) => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("key {label} version {version} is withheld from this consumer"),
            )
            .with_detail("The key id is outside the consumer's key pattern.")),
            Some(false) => Err(Error::new(
                ErrorKind::UnknownKey,
                format!("key {label} version {version} does not exist"),
            )),
            None => Err(Error::new(
                ErrorKind::NotReady,
                format!("key {label} version {version} was not fetched, or its grant expired"),
            )
            .with_hint("Decrypt through Consumer, which fetches the keys a batch needs first.")),
        }
    }

    fn key_id_of(&mut self, handle: KeyHandle) -> Option<String> {
        self.cache.key_ids.get(&handle).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_crypto_core::Algorithm;

    fn h(v: u64) -> OwnedKeyRef {
        OwnedKeyRef::Handle(KeyHandle::new(v).unwrap())
    }

    fn granted() -> Status {
        Status::Granted(Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[7u8; 32])))
    }

    #[test]
    fn a_grant_lives_for_its_lifetime_from_the_local_request_time() {
        let mut c = KeyCache::default();
        let t0 = Instant::now();
        assert!(c.needs(&h(1), 1, t0));
        c.insert(&h(1), 1, granted(), Some("subject:a"), t0, Duration::from_secs(2));
        assert!(!c.needs(&h(1), 1, t0));
        assert!(!c.needs(&h(1), 1, t0 + Duration::from_millis(1999)));
        assert!(c.needs(&h(1), 1, t0 + Duration::from_secs(2)));
        // another version of the same key is its own entry
        assert!(c.needs(&h(1), 2, t0));
        assert!(matches!(
            c.status(KeyRef::Handle(KeyHandle::new(1).unwrap()), 1, t0),
            Some(Status::Granted(_))
        ));
        assert!(c
            .status(
                KeyRef::Handle(KeyHandle::new(1).unwrap()),
                1,
                t0 + Duration::from_secs(3)
            )
            .is_none());
    }

    #[test]
    fn shredded_is_final_and_other_answers_follow_status_ttl() {
        let mut c = KeyCache::new(Duration::from_secs(10));
        let t0 = Instant::now();
        c.insert(&h(1), 1, Status::Shredded, None, t0, Duration::ZERO);
        c.insert(&h(2), 1, Status::Withheld, None, t0, Duration::from_secs(1000));
        c.insert(
            &OwnedKeyRef::Id("k".into()),
            3,
            Status::Unknown,
            None,
            t0,
            Duration::ZERO,
        );
        let later = t0 + Duration::from_secs(86_400 * 365);
        assert!(!c.needs(&h(1), 1, later));
        assert!(!c.needs(&h(2), 1, t0 + Duration::from_secs(9)));
        assert!(c.needs(&h(2), 1, t0 + Duration::from_secs(10)));
        assert!(!c.needs(&OwnedKeyRef::Id("k".into()), 3, t0));
        assert!(c.needs(&OwnedKeyRef::Id("k".into()), 3, t0 + Duration::from_secs(11)));
        assert_eq!(c.len(), 3);
        c.purge(t0 + Duration::from_secs(11));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_key_source_maps_each_status() {
        let mut c = KeyCache::default();
        let t0 = Instant::now();
        let hd = |v| KeyRef::Handle(KeyHandle::new(v).unwrap());
        c.insert(&h(1), 1, granted(), Some("subject:alice"), t0, Duration::from_secs(60));
        c.insert(&h(2), 1, Status::Shredded, None, t0, Duration::ZERO);
        c.insert(&h(3), 1, Status::Disabled, None, t0, Duration::ZERO);
        c.insert(&h(4), 1, Status::Withheld, None, t0, Duration::ZERO);
        c.insert(&h(5), 1, Status::Unknown, None, t0, Duration::ZERO);
        let mut src = c.at(t0);
        assert!(matches!(src.decryption_key(hd(1), 1), Ok(KeyLookup::Found(_))));
        assert!(matches!(src.decryption_key(hd(2), 1), Ok(KeyLookup::Shredded)));
        assert!(matches!(src.decryption_key(hd(3), 1), Ok(KeyLookup::Disabled)));
        let e = src.decryption_key(hd(4), 1).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            src.decryption_key(hd(5), 1).err().unwrap().kind(),
            ErrorKind::UnknownKey
        );
        let e = src.decryption_key(hd(6), 1).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NotReady);
        assert_eq!(
            src.key_id_of(KeyHandle::new(1).unwrap()).as_deref(),
            Some("subject:alice")
        );
        // an expired grant is not used
        let mut late = c.at(t0 + Duration::from_secs(61));
        assert_eq!(late.decryption_key(hd(1), 1).err().unwrap().kind(), ErrorKind::NotReady);
    }
}
