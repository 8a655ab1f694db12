//! The master key: parsed from the text a key file or key command supplies, identified by a fingerprint, and used
//! (through an HKDF-derived wrapping key, never directly) to wrap data keys with AES-256-GCM.
//!
//! The text may hold a ring of master keys, one a line (blank lines and `#` comments ignored): the first line is
//! the active key, which wraps every new or rewrapped data key; the others only unwrap keys they wrapped earlier.
//!
//! Wrapped key layout (61 bytes): `0x01 nonce(12) ciphertext(32) tag(16)`; associated data:
//! `"event_crypto/wrap/v1" 0x00 purpose 0x00 algorithm 0x00 u32be(version) key_id`.

use crate::aead::{Algorithm, Cipher, SecretKey, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Error, ErrorKind, Result};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

pub const WRAP_FORMAT: u8 = 1;
pub const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;

/// What a wrapped key is for; part of its associated data so a data key cannot be swapped for an index key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    Data,
    BlindIndex,
}

impl KeyPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            KeyPurpose::Data => b"data",
            KeyPurpose::BlindIndex => b"blind-index",
        }
    }
}

/// The identity of one wrapped key.
#[derive(Debug, Clone, Copy)]
pub struct WrapContext<'a> {
    pub key_id: &'a str,
    pub version: u32,
    pub algorithm: Algorithm,
    pub purpose: KeyPurpose,
}

/// A loaded master key. Holds only the derived wrapping cipher and the public fingerprint.
pub struct MasterKey {
    id: String,
    wrap: Cipher,
}

fn master_error(reason: impl Into<String>) -> Error {
    Error::new(ErrorKind::MasterKeyUnavailable, "the event_crypto master key could not be loaded")
        .with_detail(reason.into())
        .with_hint("Set event_crypto.master_key_file or event_crypto.master_key_command in postgresql.conf to supply 32 bytes as 64 hex digits or base64, then restart the server.")
}

impl MasterKey {
    pub fn from_bytes(key: &[u8; KEY_LEN]) -> MasterKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(b"event_crypto/master-key-id/v1");
        let fp = mac.finalize().into_bytes();
        let id = hex::encode(&fp[..8]);
        let hk = Hkdf::<Sha256>::new(Some(b"event_crypto/wrap/v1"), key);
        let mut wrap_key = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(b"wrapping key", wrap_key.as_mut())
            .expect("32 bytes is a valid HKDF output length");
        MasterKey {
            id,
            wrap: Cipher::new(Algorithm::Aes256Gcm, &wrap_key),
        }
    }

    /// Parses the text of a key file or of a key command's output: 64 hex digits or base64 of 32 bytes,
    /// surrounded by optional white space. The input is not echoed in any message.
    pub fn parse_text(text: &[u8]) -> Result<MasterKey> {
        let trimmed = trim_ascii(text);
        if trimmed.is_empty() {
            return Err(master_error("the key source supplied no key (it is empty)"));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if trimmed.len() == 64 && trimmed.iter().all(u8::is_ascii_hexdigit) {
            hex::decode_to_slice(trimmed, key.as_mut()).map_err(|_| master_error("the key is not valid hex"))?;
        } else {
            let mut decoded = Zeroizing::new(Vec::new());
            let ok = STANDARD.decode_vec(trimmed, &mut decoded).is_ok() || {
                decoded.zeroize();
                STANDARD_NO_PAD.decode_vec(trimmed, &mut decoded).is_ok()
            };
            if !ok || decoded.len() != KEY_LEN {
                return Err(master_error(
                    "the key must be 32 bytes written as 64 hex digits or as base64 (it is neither)",
                ));
            }
            key.copy_from_slice(&decoded);
        }
        if key.iter().all(|&b| b == 0) {
            return Err(master_error("the key is all zero bytes"));
        }
        Ok(MasterKey::from_bytes(&key))
    }

    /// The public fingerprint recorded beside every key it wraps (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn aad(ctx: &WrapContext<'_>) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + ctx.key_id.len());
        aad.extend_from_slice(b"event_crypto/wrap/v1\0");
        aad.extend_from_slice(ctx.purpose.label());
        aad.push(0);
        aad.extend_from_slice(ctx.algorithm.name().as_bytes());
        aad.push(0);
        aad.extend_from_slice(&ctx.version.to_be_bytes());
        aad.extend_from_slice(ctx.key_id.as_bytes());
        aad
    }

    pub fn wrap(&self, key: &[u8; KEY_LEN], ctx: &WrapContext<'_>) -> Result<Vec<u8>> {
        self.seal_wrapped(key, &Self::aad(ctx))
    }

    /// The wrapped form of `key` under `aad`: format byte, nonce, encrypted key, tag ([`WRAPPED_LEN`] bytes).
    fn seal_wrapped(&self, key: &[u8; KEY_LEN], aad: &[u8]) -> Result<Vec<u8>> {
        let nonce = crate::random::nonce()?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(WRAP_FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(key);
        let tag = self.wrap.seal_in_place(&nonce, aad, &mut out[1 + NONCE_LEN..]);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens what [`Self::seal_wrapped`] made under `aad`; `Err(true)`: the bytes do not have the wrapped form,
    /// `Err(false)`: the tag does not match.
    fn open_wrapped(&self, wrapped: &[u8], aad: &[u8]) -> std::result::Result<SecretKey, bool> {
        if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_FORMAT {
            return Err(true);
        }
        let nonce: [u8; NONCE_LEN] = wrapped[1..1 + NONCE_LEN].try_into().expect("length checked");
        let tag: [u8; TAG_LEN] = wrapped[1 + NONCE_LEN + KEY_LEN..].try_into().expect("length checked");
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&wrapped[1 + NONCE_LEN..1 + NONCE_LEN + KEY_LEN]);
        if !self.wrap.open_in_place(&nonce, aad, key.as_mut(), &tag) {
            return Err(false);
        }
        Ok(key)
    }

    /// Unwraps a data key. A failure here means the wrapped bytes or their catalog row were altered (the caller
    /// has already checked that this master key's id is the one recorded for the key).
    pub fn unwrap(&self, wrapped: &[u8], ctx: &WrapContext<'_>) -> Result<SecretKey> {
        let corrupt = |why: &str| {
            Error::new(
                ErrorKind::WrappedKeyCorrupt,
                format!(
                    "wrapped key for \"{}\" version {} does not unwrap",
                    ctx.key_id, ctx.version
                ),
            )
            .with_detail(why.to_string())
            .with_hint("The key catalog row was altered or damaged; restore event_crypto.keys from a backup.")
        };
        self.open_wrapped(wrapped, &Self::aad(ctx)).map_err(|shape| {
            corrupt(if shape {
                "the wrapped key has the wrong length or format byte"
            } else {
                "the authentication tag does not match"
            })
        })
    }
}

/// The master keys a key file or key command supplies: the active one first, then older ones kept to unwrap
/// the data keys they wrapped until `rewrap_keys` has moved those to the active key.
pub struct MasterKeyRing {
    keys: Vec<MasterKey>,
}

/// The most master keys one ring holds.
pub const MAX_RING: usize = 16;

impl MasterKeyRing {
    /// Parses one key a line (64 hex digits or base64 of 32 bytes); blank lines and lines starting with `#` are
    /// skipped. The first key is the active one. A repeated key or more than [`MAX_RING`] keys is refused.
    /// Messages name line numbers and fingerprints only, never key text.
    pub fn parse_text(text: &[u8]) -> Result<MasterKeyRing> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = trim_ascii(line);
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let key = MasterKey::parse_text(line)
                .map_err(|e| master_error(format!("line {}: {}", n + 1, e.detail().unwrap_or("not a key"))))?;
            if let Some(first) = keys.iter().position(|k| k.id() == key.id()) {
                return Err(master_error(format!(
                    "line {}: master key {} appears twice in the ring (first as key {})",
                    n + 1,
                    key.id(),
                    first + 1
                )));
            }
            if keys.len() == MAX_RING {
                return Err(master_error(format!("the ring holds more than {MAX_RING} master keys")));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(master_error("the key source supplied no key (it is empty)"));
        }
        Ok(MasterKeyRing { keys })
    }

    /// A ring of the given keys, the first active.
    pub fn from_keys(keys: Vec<MasterKey>) -> Option<MasterKeyRing> {
        (!keys.is_empty()).then_some(MasterKeyRing { keys })
    }

    /// The key that wraps new and rewrapped data keys.
    pub fn active(&self) -> &MasterKey {
        &self.keys[0]
    }

    /// The key of the ring with fingerprint `id`.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// The fingerprints, active first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(MasterKey::id)
    }

    /// The fingerprints as one line for messages: `"a1b2... (active), c3d4..."`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, id) in self.ids().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(id);
            if i == 0 {
                s.push_str(" (active)");
            }
        }
        s
    }

    /// The master key `from` (a fingerprint) of this ring, or an error naming what the ring holds.
    fn holding(&self, from: &str) -> Result<&MasterKey> {
        self.get(from).ok_or_else(|| {
            Error::new(
                ErrorKind::MasterKeyMismatch,
                format!("master key {from} is not in this server's master key ring"),
            )
            .with_detail(format!("The ring holds {}.", self.describe()))
        })
    }

    /// Moves a wrapped key from the master key `from` (a fingerprint of this ring) to the active key: unwraps,
    /// re-wraps with a fresh nonce under the active key. The plaintext key lives only in a zeroized buffer.
    pub fn rewrap(&self, from: &str, wrapped: &[u8], ctx: &WrapContext<'_>) -> Result<Vec<u8>> {
        let old = self.holding(from)?;
        let key = old.unwrap(wrapped, ctx)?;
        self.active().wrap(&key, ctx)
    }
}

/// Catalog secrets: random keys of the catalog itself that are not data keys (the digest secret of
/// [`crate::digest`]), wrapped by the master key like data keys, with their own associated data
/// (`"event_crypto/wrap-secret/v1" 0x00 name`), so a wrapped secret and a wrapped data key can never be taken for
/// one another. Same layout as a wrapped data key.
impl MasterKey {
    fn secret_aad(name: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(32 + name.len());
        aad.extend_from_slice(b"event_crypto/wrap-secret/v1\0");
        aad.extend_from_slice(name.as_bytes());
        aad
    }

    /// Wraps the catalog secret `name`.
    pub fn wrap_secret(&self, secret: &[u8; KEY_LEN], name: &str) -> Result<Vec<u8>> {
        self.seal_wrapped(secret, &Self::secret_aad(name))
    }

    /// Unwraps the catalog secret `name` (into a zeroized buffer). A failure means the wrapped bytes were altered.
    pub fn unwrap_secret(&self, wrapped: &[u8], name: &str) -> Result<SecretKey> {
        let corrupt = |why: &str| {
            Error::new(
                ErrorKind::WrappedKeyCorrupt,
                format!("the event_crypto catalog secret \"{name}\" does not unwrap"),
            )
            .with_detail(why.to_string())
            .with_hint("The catalog row was altered or damaged; restore it from a backup.")
        };
        self.open_wrapped(wrapped, &Self::secret_aad(name)).map_err(|shape| {
            corrupt(if shape {
                "the wrapped secret has the wrong length or format byte"
            } else {
                "the authentication tag does not match"
            })
        })
    }
}

impl MasterKeyRing {
    /// Moves the wrapped catalog secret `name` from the master key `from` to the active one (as [`Self::rewrap`]
    /// does for data keys).
    pub fn rewrap_secret(&self, from: &str, wrapped: &[u8], name: &str) -> Result<Vec<u8>> {
        let old = self.holding(from)?;
        let secret = old.unwrap_secret(wrapped, name)?;
        self.active().wrap_secret(&secret, name)
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn ctx() -> WrapContext<'static> {
        WrapContext {
            key_id: "tenant-42",
            version: 1,
            algorithm: Algorithm::Aes256Gcm,
            purpose: KeyPurpose::Data,
        }
    }

    #[test]
    fn parses_hex_and_base64_to_the_same_key() {
        let a = MasterKey::parse_text(format!("  {HEX}\n").as_bytes()).unwrap();
        let b64 = STANDARD.encode(hex::decode(HEX).unwrap());
        let b = MasterKey::parse_text(b64.as_bytes()).unwrap();
        let c = MasterKey::parse_text(b64.trim_end_matches('=').as_bytes()).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id(), c.id());
        assert_eq!(a.id().len(), 16);
        // Frozen fingerprint: the id recorded in catalogs must never change for the same key.
        assert_eq!(
            a.id(),
            MasterKey::from_bytes(&hex::decode(HEX).unwrap().try_into().unwrap()).id()
        );
    }

    #[test]
    fn rejects_bad_key_text_without_echoing_it() {
        for bad in [
            "",
            "   ",
            "abcd",
            &HEX[..62],
            &format!("{HEX}00"),
            "zz".repeat(32).as_str(),
            &"0".repeat(64),
        ] {
            let e = MasterKey::parse_text(bad.as_bytes()).err().expect("must fail");
            assert_eq!(e.kind(), ErrorKind::MasterKeyUnavailable);
            if bad.len() > 4 {
                assert!(!e.to_string().contains(bad.trim()), "the key text is never echoed");
            }
            assert!(e.hint().unwrap().contains("event_crypto.master_key_file"));
        }
    }

    #[test]
    fn a_ring_parses_one_key_a_line_the_first_active() {
        let k2 = "ff".repeat(32);
        let b64 = STANDARD.encode([7u8; 32]);
        let text = format!("# active first\n{k2}\n\n  {HEX}  \r\n# old\n{b64}\n");
        let ring = MasterKeyRing::parse_text(text.as_bytes()).unwrap();
        let ids: Vec<&str> = ring.ids().collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(ring.active().id(), MasterKey::parse_text(k2.as_bytes()).unwrap().id());
        assert_eq!(ids[1], MasterKey::parse_text(HEX.as_bytes()).unwrap().id());
        assert!(ring.get(ids[2]).is_some());
        assert!(ring.get("0000000000000000").is_none());
        assert!(ring.describe().starts_with(&format!("{} (active), ", ids[0])));
        // A single key, as before the ring existed, is a ring of one.
        let one = MasterKeyRing::parse_text(format!("{HEX}\n").as_bytes()).unwrap();
        assert_eq!(one.ids().count(), 1);
    }

    #[test]
    fn a_bad_ring_is_refused_by_line_without_echoing_keys() {
        let dup = format!("{HEX}\n{}\n", HEX.to_uppercase());
        let e = MasterKeyRing::parse_text(dup.as_bytes()).err().unwrap();
        assert!(e.detail().unwrap().contains("line 2") && e.detail().unwrap().contains("twice"));
        let bad = format!("{HEX}\nnot-a-key-{}\n", &HEX[..20]);
        let e = MasterKeyRing::parse_text(bad.as_bytes()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::MasterKeyUnavailable);
        assert!(e.detail().unwrap().contains("line 2"), "{:?}", e.detail());
        assert!(!e.to_string().contains(&HEX[..20]) && !e.detail().unwrap().contains(&HEX[..20]));
        for empty in ["", "\n\n", "# only a comment\n"] {
            assert!(MasterKeyRing::parse_text(empty.as_bytes()).is_err());
        }
        let many: String = (1..=MAX_RING as u8 + 1)
            .map(|i| format!("{}\n", hex::encode([i; 32])))
            .collect();
        assert!(MasterKeyRing::parse_text(many.as_bytes()).is_err());
    }

    #[test]
    fn rewrap_moves_a_key_to_the_active_master_key() {
        let old = MasterKey::from_bytes(&[1u8; 32]);
        let old_id = old.id().to_string();
        let dk = [42u8; 32];
        let w = old.wrap(&dk, &ctx()).unwrap();
        let ring = MasterKeyRing::from_keys(vec![MasterKey::from_bytes(&[2u8; 32]), old]).unwrap();
        let moved = ring.rewrap(&old_id, &w, &ctx()).unwrap();
        assert_ne!(moved, w);
        assert_eq!(*ring.active().unwrap(&moved, &ctx()).unwrap(), dk);
        assert!(ring.get(&old_id).unwrap().unwrap(&moved, &ctx()).is_err());
        // Bound to its identity: rewrapping under the wrong key id fails and never yields a key.
        let mut other = ctx();
        other.key_id = "tenant-43";
        assert_eq!(
            ring.rewrap(&old_id, &w, &other).unwrap_err().kind(),
            ErrorKind::WrappedKeyCorrupt
        );
        let e = ring.rewrap("00000000deadbeef", &w, &ctx()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MasterKeyMismatch);
        assert!(e.detail().unwrap().contains("(active)"));
    }

    #[test]
    fn wrap_round_trip_and_binding() {
        let m = MasterKey::parse_text(HEX.as_bytes()).unwrap();
        let dk = [9u8; 32];
        let w = m.wrap(&dk, &ctx()).unwrap();
        assert_eq!(w.len(), WRAPPED_LEN);
        assert_eq!(*m.unwrap(&w, &ctx()).unwrap(), dk);
        let mut other = ctx();
        other.version = 2;
        assert_eq!(m.unwrap(&w, &other).unwrap_err().kind(), ErrorKind::WrappedKeyCorrupt);
        let mut other = ctx();
        other.purpose = KeyPurpose::BlindIndex;
        assert!(m.unwrap(&w, &other).is_err());
        let mut other = ctx();
        other.key_id = "tenant-43";
        assert!(m.unwrap(&w, &other).is_err());
        let mut other = ctx();
        other.algorithm = Algorithm::ChaCha20Poly1305;
        assert!(m.unwrap(&w, &other).is_err());
        let m2 = MasterKey::from_bytes(&[5u8; 32]);
        assert_ne!(m.id(), m2.id());
        assert!(m2.unwrap(&w, &ctx()).is_err());
        for i in 0..w.len() {
            let mut t = w.clone();
            t[i] ^= 1;
            assert!(m.unwrap(&t, &ctx()).is_err());
        }
        assert!(m.unwrap(&w[..60], &ctx()).is_err());
    }

    #[test]
    fn catalog_secrets_are_wrapped_apart_from_data_keys() {
        let m = MasterKey::parse_text(HEX.as_bytes()).unwrap();
        let secret = [3u8; 32];
        let w = m.wrap_secret(&secret, "key-id-digest").unwrap();
        assert_eq!(w.len(), WRAPPED_LEN);
        assert_eq!(*m.unwrap_secret(&w, "key-id-digest").unwrap(), secret);
        assert_ne!(
            w,
            m.wrap_secret(&secret, "key-id-digest").unwrap(),
            "a fresh nonce per wrap"
        );
        assert_eq!(
            m.unwrap_secret(&w, "other").unwrap_err().kind(),
            ErrorKind::WrappedKeyCorrupt
        );
        // a wrapped secret is no wrapped data key, whatever its context, and the reverse
        for purpose in [KeyPurpose::Data, KeyPurpose::BlindIndex] {
            let ctx = WrapContext {
                key_id: "key-id-digest",
                version: 1,
                algorithm: Algorithm::Aes256Gcm,
                purpose,
            };
            assert!(m.unwrap(&w, &ctx).is_err());
            let dk = m.wrap(&secret, &ctx).unwrap();
            assert!(m.unwrap_secret(&dk, "key-id-digest").is_err());
        }
        assert!(MasterKey::from_bytes(&[5u8; 32])
            .unwrap_secret(&w, "key-id-digest")
            .is_err());
        for i in 0..w.len() {
            let mut t = w.clone();
            t[i] ^= 1;
            assert!(m.unwrap_secret(&t, "key-id-digest").is_err());
        }
        let e = m.unwrap_secret(&w[..60], "key-id-digest").unwrap_err();
        assert!(!e.to_string().contains("030303"), "never key bytes in a message");
    }

    #[test]
    fn rewrap_moves_a_catalog_secret_to_the_active_master_key() {
        let old = MasterKey::from_bytes(&[1u8; 32]);
        let old_id = old.id().to_string();
        let w = old.wrap_secret(&[8u8; 32], "key-id-digest").unwrap();
        let ring = MasterKeyRing::from_keys(vec![MasterKey::from_bytes(&[2u8; 32]), old]).unwrap();
        let moved = ring.rewrap_secret(&old_id, &w, "key-id-digest").unwrap();
        assert_eq!(
            *ring.active().unwrap_secret(&moved, "key-id-digest").unwrap(),
            [8u8; 32]
        );
        assert!(ring
            .get(&old_id)
            .unwrap()
            .unwrap_secret(&moved, "key-id-digest")
            .is_err());
        assert_eq!(
            ring.rewrap_secret("00000000deadbeef", &w, "key-id-digest")
                .unwrap_err()
                .kind(),
            ErrorKind::MasterKeyMismatch
        );
    }
}
