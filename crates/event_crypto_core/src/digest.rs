//! Keyed digests of key ids: what event_crypto's own tables keep instead of a key id (and so instead of a subject
//! id) wherever it would outlive a shred — the tombstone rows of shredded key ids in the key catalog, and every
//! key id and subject the audit log names.
//!
//! `digest_key = HKDF-SHA256(salt = "event_crypto/catalog-digest/v1", ikm = the catalog's digest secret,
//! info = "key id digest")`; `digest(key_id) = MARK "kd1:" base64url(HMAC-SHA256(digest_key, key_id))`.
//!
//! - The secret is 32 random bytes made once per catalog and stored only wrapped by the master key (like a data
//!   key, but never used to encrypt), so whoever holds a dump or a backup without the master key cannot compute a
//!   digest and cannot confirm a guessed key id (an e-mail address, a customer number) offline.
//! - The HKDF step gives the digest its own key: the secret is used for nothing else.
//! - The text form starts with a control character ([`MARK`]), which no key id can contain
//!   ([`crate::envelope::check_key_id`]): a digest is never a valid key id, so a tombstone can never be taken for a
//!   live key, and no key id can be created, rotated or shredded under a digest's name.
//! - A subject is named by the digest of its first key id (`key_prefix` + the escaped subject id,
//!   [`crate::subject`]), which is what the tombstone of a forgotten subject holds too.

use crate::aead::KEY_LEN;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The first character of every digest's text form: ASCII SUB (0x1A), a control character, which key ids cannot
/// hold. psql shows it as `\x1A`, JSON as `\u001a`.
pub const MARK: char = '\u{1a}';

/// The start of a digest's text form: the mark and the scheme (`kd1`: HMAC-SHA256 under the HKDF-derived key).
pub const PREFIX: &str = "\u{1a}kd1:";

/// Length of a digest's text form in bytes: the prefix and 43 base64url characters (256 bits, no padding).
pub const TEXT_LEN: usize = PREFIX.len() + 43;

/// The name of the catalog secret in the associated data of its wrapping (see `crate::master`).
pub const SECRET_NAME: &str = "key-id-digest";

/// The digest function of one catalog (the HMAC state is precomputed once, and wiped on drop).
pub struct DigestKey {
    mac: Hmac<Sha256>,
}

impl Drop for DigestKey {
    fn drop(&mut self) {
        crate::wipe(&mut self.mac);
    }
}

impl DigestKey {
    /// The digest function of the catalog secret `secret` (the caller zeroizes the secret; the key derived from it
    /// here lives only in a zeroized buffer and in the HMAC state, which is wiped on drop).
    pub fn new(secret: &[u8; KEY_LEN]) -> DigestKey {
        let mut hk = Hkdf::<Sha256>::new(Some(b"event_crypto/catalog-digest/v1"), secret);
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(b"key id digest", k.as_mut())
            .expect("32 bytes is a valid HKDF output length");
        crate::wipe(&mut hk);
        DigestKey {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(k.as_ref()).expect("HMAC takes any key length"),
        }
    }

    /// The text form of the digest of `key_id` (any text: a key id, or a prefix and escaped subject id too long to
    /// be one).
    pub fn digest(&self, key_id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(key_id.as_bytes());
        let out = mac.finalize_reset().into_bytes();
        crate::wipe(&mut mac);
        let mut s = String::with_capacity(TEXT_LEN);
        s.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(out, &mut s);
        s
    }

    /// The digest that names subject `subject` under `key_prefix`: the digest of its first key id, computed even
    /// when that key id would be too long to exist.
    pub fn subject_digest(&self, key_prefix: &str, subject: &str) -> String {
        let mut id = String::with_capacity(key_prefix.len() + subject.len());
        id.push_str(key_prefix);
        id.push_str(&crate::subject::escape_subject(subject));
        self.digest(&id)
    }
}

/// Whether `s` is the text form of a digest (not a key id).
pub fn is_digest(s: &str) -> bool {
    s.len() == TEXT_LEN && s.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::check_key_id;

    #[test]
    fn keyed_deterministic_and_never_a_key_id() {
        let a = DigestKey::new(&[1u8; 32]);
        let b = DigestKey::new(&[2u8; 32]);
        let d = a.digest("subject:alice@example.com");
        assert_eq!(d, a.digest("subject:alice@example.com"));
        assert_ne!(d, a.digest("subject:alice@example.org"));
        assert_ne!(
            d,
            b.digest("subject:alice@example.com"),
            "another catalog secret, another digest"
        );
        assert!(is_digest(&d));
        assert_eq!(d.len(), TEXT_LEN);
        assert!(!d.contains("alice"));
        assert!(check_key_id(&d).is_err(), "a digest is never a valid key id");
        assert!(!is_digest("subject:alice"));
        assert!(!is_digest(PREFIX));
    }

    #[test]
    fn a_subject_is_named_by_its_first_key_id() {
        let k = DigestKey::new(&[7u8; 32]);
        assert_eq!(k.subject_digest("subject:", "alice"), k.digest("subject:alice"));
        assert_eq!(
            k.subject_digest("subject:", "dave#2"),
            k.digest(&crate::subject::subject_key_id("subject:", "dave#2", 1).unwrap())
        );
        assert_ne!(k.subject_digest("subject:", "dave#2"), k.digest("subject:dave#2"));
        assert_ne!(k.subject_digest("user:", "42"), k.subject_digest("tenant:", "42"));
        // a subject too long for a key id still has a digest
        let long = "x".repeat(300);
        assert!(crate::subject::subject_key_id("subject:", &long, 1).is_err());
        assert!(is_digest(&k.subject_digest("subject:", &long)));
    }

    #[test]
    fn known_answer() {
        // Frozen: tombstones and audit rows hold these digests; the scheme must never change under the same name
        // (a new scheme gets a new tag after the mark).
        let k = DigestKey::new(&[0u8; 32]);
        assert_eq!(k.digest("subject:alice"), KAT);
    }

    // (computed independently: Python hmac/hashlib, HKDF by RFC 5869)
    const KAT: &str = "\u{1a}kd1:PFZsje4DmpIinzwAkAhT5jthWGslqYqn-QclseAh5Hc";
}
