//! event_crypto_core: everything of event_crypto that does not need PostgreSQL.
//!
//! - [`aead`]: the two AEAD algorithms behind one cipher type;
//! - [`envelope`]: the versioned, authenticated envelope that replaces an encrypted JSON field;
//! - [`master`]: the master key, its fingerprint and the wrapping of data keys;
//! - [`path`]: field path patterns and concrete locations;
//! - [`document`]: encrypting and decrypting the fields of a JSON document;
//! - [`reencrypt`]: moving envelopes to the newest key version, and which versions a document uses;
//! - [`blind`]: the blind index;
//! - [`audit`]: the hash chain of the audit log;
//! - [`random`]: keys and nonces from the OS CSPRNG;
//! - [`error`]: the one error type.

pub mod aead;
pub mod audit;
pub mod blind;
pub mod document;
pub mod envelope;
pub mod error;
pub mod jsonb;
pub mod master;
pub mod path;
pub mod random;
pub mod reencrypt;

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
