//! The two AEAD algorithms and a cipher instance that keeps its expanded key schedule (zeroized on drop).

use crate::error::{Error, ErrorKind, Result};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::ChaCha20Poly1305;
use zeroize::Zeroizing;

/// Nonce length shared by both algorithms (96 bits).
pub const NONCE_LEN: usize = 12;
/// Tag length shared by both algorithms (128 bits).
pub const TAG_LEN: usize = 16;
/// Data key length (256 bits).
pub const KEY_LEN: usize = 32;

/// A 256-bit key held in memory that is zeroed when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305];

    /// The name used in SQL and in the key catalog.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "aes-256-gcm",
            Algorithm::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The byte that identifies the algorithm inside an envelope.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => 1,
            Algorithm::ChaCha20Poly1305 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Algorithm> {
        match code {
            1 => Some(Algorithm::Aes256Gcm),
            2 => Some(Algorithm::ChaCha20Poly1305),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Result<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                // the argument is not echoed: a value passed in the wrong position must not reach a log
                "unknown algorithm",
            )
            .with_hint("Supported algorithms are aes-256-gcm (the default) and chacha20-poly1305.")
        })
    }
}

/// Shortens an argument echoed in a message (names only, never values being encrypted).
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A keyed AEAD instance. Both variants zeroize their key material on drop.
pub enum Cipher {
    Aes(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
}

impl Cipher {
    pub fn new(algorithm: Algorithm, key: &[u8; KEY_LEN]) -> Cipher {
        match algorithm {
            Algorithm::Aes256Gcm => Cipher::Aes(Box::new(Aes256Gcm::new(key.into()))),
            Algorithm::ChaCha20Poly1305 => Cipher::ChaCha(Box::new(ChaCha20Poly1305::new(key.into()))),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Cipher::Aes(_) => Algorithm::Aes256Gcm,
            Cipher::ChaCha(_) => Algorithm::ChaCha20Poly1305,
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = match self {
            Cipher::Aes(c) => c.encrypt_in_place_detached(nonce.into(), aad, buf),
            Cipher::ChaCha(c) => c.encrypt_in_place_detached(nonce.into(), aad, buf),
        }
        // Only fails for messages over the algorithm's limit (64 GiB), far beyond a jsonb value (1 GB).
        .expect("AEAD input within the algorithm's length limit");
        tag.into()
    }

    /// Decrypts `buf` in place; false when the tag does not verify (buf is then unspecified and must be dropped).
    pub fn open_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        match self {
            Cipher::Aes(c) => c.decrypt_in_place_detached(nonce.into(), aad, buf, tag.into()).is_ok(),
            Cipher::ChaCha(c) => c.decrypt_in_place_detached(nonce.into(), aad, buf, tag.into()).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()).unwrap(), a);
            assert_eq!(Algorithm::from_code(a.code()).unwrap(), a);
        }
        let e = Algorithm::from_name("des").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(Algorithm::from_name("AES-256-GCM").is_err(), "names are case-sensitive");
        assert!(Algorithm::from_code(0).is_none());
        assert!(Algorithm::from_code(3).is_none());
    }

    #[test]
    fn truncates_long_names_in_messages() {
        let long = "x".repeat(500);
        let e = Algorithm::from_name(&long).unwrap_err();
        assert!(e.message().len() < 100);
    }
}
