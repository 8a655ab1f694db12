//! event_crypto_core: everything of event_crypto that does not need PostgreSQL.
//!
//! - [`aead`]: the two AEAD algorithms behind one cipher type;
//! - [`envelope`]: the versioned, authenticated envelope that replaces an encrypted JSON field;
//! - [`master`]: the master key, its fingerprint and the wrapping of data keys;
//! - [`keysource`]: reading the master key file and running the master key command, never waiting for good;
//! - [`path`]: field path patterns and concrete locations;
//! - [`document`]: encrypting and decrypting the fields of a JSON document;
//! - [`reencrypt`]: moving envelopes to the newest key version, and which versions a document uses;
//! - [`blind`]: the blind index;
//! - [`compress`]: zstd compression of values before encryption (opt-in), with bounded decompression;
//! - [`hpke`]: RFC 9180 hybrid public key encryption (X25519, HKDF-SHA256, ChaCha20-Poly1305, base mode);
//! - [`grant`]: data keys sealed to a consumer's public key, for decryption outside PostgreSQL;
//! - `json` (feature `json`): decrypting documents held as `serde_json` values, as `decrypt_fields` does;
//! - [`audit`]: the hash chain of the audit log;
//! - [`pii`]: detection of personal data in documents (e-mail, phone, cards, IBANs, national ids, ...);
//! - [`digest`]: keyed digests of key ids, which the catalog keeps instead of shredded key ids and subject ids;
//! - [`subject`]: the key ids of subjects (an injective naming, generations included);
//! - [`token`]: tokenization (deterministic stand-in values, keyed per key id);
//! - [`random`]: keys and nonces from the OS CSPRNG;
//! - [`error`]: the one error type.

pub mod aead;
pub mod audit;
pub mod blind;
pub mod compress;
pub mod digest;
pub mod document;
pub mod envelope;
pub mod error;
pub mod grant;
pub mod hpke;
#[cfg(feature = "json")]
pub mod json;
pub mod jsonb;
pub mod keysource;
pub mod master;
pub mod names;
pub mod path;
pub mod pii;
pub mod random;
pub mod reencrypt;
pub mod subject;
pub mod token;

pub use aead::{Algorithm, Cipher, SecretKey};
pub use error::{Error, ErrorKind, Result};

/// Overwrites a keyed hash state (HMAC, HKDF) with zeros. These RustCrypto types hold key-derived state inline
/// and do not zeroize themselves.
///
/// Only for plain-data types without heap pointers or drop glue (the HMAC and HKDF states of `hmac`/`hkdf`).
pub(crate) fn wipe<T: Sized>(state: &mut T) {
    // SAFETY: callers pass HMAC/HKDF states, which are flat arrays and integers; all-zero bytes are a valid
    // (if meaningless) value for them and they have no drop glue that could observe it.
    unsafe { zeroize::zeroize_flat_type(state as *mut T) }
}

static INTERRUPT_CHECK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers the function long-running work calls now and then to let its host cancel it (PostgreSQL's
/// CHECK_FOR_INTERRUPTS: it raises, and the error unwinds through the core). Set once per process.
pub fn set_interrupt_check(f: fn()) {
    let _ = INTERRUPT_CHECK.set(f);
}

/// Gives the host a chance to cancel: called once per container walked and every 1,024 children of a large one,
/// for every field path compiled, and in the other loops whose length the caller's input decides.
#[inline]
pub(crate) fn check_interrupts() {
    if let Some(f) = INTERRUPT_CHECK.get() {
        f()
    }
}

/// [`check_interrupts`] every 1,024 iterations of a loop over `i`.
#[inline]
pub(crate) fn check_interrupts_every(i: usize) {
    if i & 1023 == 0 {
        check_interrupts()
    }
}
