//! The master key: parsed from the text a key file or key command supplies, identified by a fingerprint, and used
//! (through an HKDF-derived wrapping key, never directly) to wrap data keys with AES-256-GCM.
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
        let nonce = crate::random::nonce()?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(WRAP_FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(key);
        let tag = self
            .wrap
            .seal_in_place(&nonce, &Self::aad(ctx), &mut out[1 + NONCE_LEN..]);
        out.extend_from_slice(&tag);
        Ok(out)
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
        if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_FORMAT {
            return Err(corrupt("the wrapped key has the wrong length or format byte"));
        }
        let nonce: [u8; NONCE_LEN] = wrapped[1..1 + NONCE_LEN].try_into().expect("length checked");
        let tag: [u8; TAG_LEN] = wrapped[1 + NONCE_LEN + KEY_LEN..].try_into().expect("length checked");
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&wrapped[1 + NONCE_LEN..1 + NONCE_LEN + KEY_LEN]);
        if !self.wrap.open_in_place(&nonce, &Self::aad(ctx), key.as_mut(), &tag) {
            return Err(corrupt("the authentication tag does not match"));
        }
        Ok(key)
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
}
