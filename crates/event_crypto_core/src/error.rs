//! The one error type of event_crypto. Every message names key ids and field paths where useful, and never a
//! plaintext value or key bytes. The SQL layer maps [`ErrorKind`] to a SQLSTATE once (`src/error.rs` of the
//! extension).

use std::fmt;

/// The classes of failure, each of which has its own SQLSTATE at the SQL boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A required argument was NULL (22004).
    NullArgument,
    /// An argument has an invalid value: algorithm, key id, normalisation, policy, payload type (22023).
    InvalidArgument,
    /// A field path could not be parsed (42601).
    InvalidPath,
    /// The envelope is not well formed: prefix, base64, lengths, reserved bits (22P02).
    MalformedEnvelope,
    /// The envelope declares a format version this build does not know (0A000).
    UnsupportedVersion,
    /// The envelope's context binding does not match the call (context given / not given) (22023 class, own code).
    ContextMismatch,
    /// The AEAD tag did not verify: tampered, moved to another path, or another context (XX001).
    AuthenticationFailed,
    /// No key with that id (42704).
    UnknownKey,
    /// A key with that id exists already (42710).
    DuplicateKey,
    /// The key was shredded (55000).
    KeyShredded,
    /// No master key configured or it could not be loaded (F0000).
    MasterKeyUnavailable,
    /// The data key was wrapped by a different master key (28000).
    MasterKeyMismatch,
    /// A wrapped data key does not unwrap although the master key id matches (XX001).
    WrappedKeyCorrupt,
    /// A value is too large for the envelope or for jsonb (54000).
    TooLarge,
    /// The operating system's random source failed (58000).
    RandomSource,
    /// A new row for a forgotten (shredded) subject was refused (23514).
    SubjectForgotten,
    /// An UPDATE would re-bind stored ciphertext to another key or context (0A000).
    RebindRefused,
    /// A column named in a protection configuration does not exist or has the wrong type (42703).
    ConfigColumn,
    /// The extension's own catalog could not be read or written through SPI (55000).
    CatalogAccess,
    /// A key version is still in use: it is the active version, or stored rows are still encrypted under it (55006).
    KeyInUse,
    /// An envelope entering a protected column is not bound to the row: another key id, another context, another
    /// field, or it does not authenticate (23514).
    EnvelopeNotBound,
    /// The calling role lacks a privilege event_crypto checks itself, e.g. TRIGGER on a table for protect() (42501).
    PermissionDenied,
    /// The object is not of the kind the function works on, e.g. protect() of a view (42809).
    WrongObjectType,
    /// A column has a type event_crypto cannot work with (42804).
    WrongColumnType,
    /// Something the call needs is not in place, e.g. add_blind_index() on an unprotected column (55000).
    NotReady,
    /// A feature or a combination that is not supported, e.g. PREPARE TRANSACTION after writing audit rows (0A000).
    Unsupported,
    /// A row of a type the configuration has no field list for (fields_by_type without "*" or
    /// allow_unlisted_types), refused rather than stored in plaintext (23514).
    UnlistedType,
    /// The key version is disabled: retire_key_version() scheduled its destruction; decryption under it fails
    /// closed until cancel_retire() re-enables it or the maintenance run destroys it (38004).
    KeyDisabled,
    /// A table holds configured fields in plaintext where that is not allowed, e.g. a table attached as a partition
    /// of a protected table (23514).
    PlaintextRows,
    /// The server is read-only (a hot standby) and the call must write, e.g. creating a key (25006).
    ReadOnly,
    /// A key handle is already another key id's, or a key id's rows would have different handles (catalogs merged
    /// by a restore) (23505).
    KeyHandleConflict,
}

impl ErrorKind {
    /// Every kind, in declaration order (`ALL[k.ordinal()] == k`, checked by a unit test).
    pub const ALL: [ErrorKind; 31] = [
        ErrorKind::NullArgument,
        ErrorKind::InvalidArgument,
        ErrorKind::InvalidPath,
        ErrorKind::MalformedEnvelope,
        ErrorKind::UnsupportedVersion,
        ErrorKind::ContextMismatch,
        ErrorKind::AuthenticationFailed,
        ErrorKind::UnknownKey,
        ErrorKind::DuplicateKey,
        ErrorKind::KeyShredded,
        ErrorKind::MasterKeyUnavailable,
        ErrorKind::MasterKeyMismatch,
        ErrorKind::WrappedKeyCorrupt,
        ErrorKind::TooLarge,
        ErrorKind::RandomSource,
        ErrorKind::SubjectForgotten,
        ErrorKind::RebindRefused,
        ErrorKind::ConfigColumn,
        ErrorKind::CatalogAccess,
        ErrorKind::KeyInUse,
        ErrorKind::EnvelopeNotBound,
        ErrorKind::PermissionDenied,
        ErrorKind::WrongObjectType,
        ErrorKind::WrongColumnType,
        ErrorKind::NotReady,
        ErrorKind::Unsupported,
        ErrorKind::UnlistedType,
        ErrorKind::KeyDisabled,
        ErrorKind::PlaintextRows,
        ErrorKind::ReadOnly,
        ErrorKind::KeyHandleConflict,
    ];

    /// The position of the kind in [`ErrorKind::ALL`]; the exhaustive match makes a new kind impossible to forget.
    pub const fn ordinal(self) -> usize {
        match self {
            ErrorKind::NullArgument => 0,
            ErrorKind::InvalidArgument => 1,
            ErrorKind::InvalidPath => 2,
            ErrorKind::MalformedEnvelope => 3,
            ErrorKind::UnsupportedVersion => 4,
            ErrorKind::ContextMismatch => 5,
            ErrorKind::AuthenticationFailed => 6,
            ErrorKind::UnknownKey => 7,
            ErrorKind::DuplicateKey => 8,
            ErrorKind::KeyShredded => 9,
            ErrorKind::MasterKeyUnavailable => 10,
            ErrorKind::MasterKeyMismatch => 11,
            ErrorKind::WrappedKeyCorrupt => 12,
            ErrorKind::TooLarge => 13,
            ErrorKind::RandomSource => 14,
            ErrorKind::SubjectForgotten => 15,
            ErrorKind::RebindRefused => 16,
            ErrorKind::ConfigColumn => 17,
            ErrorKind::CatalogAccess => 18,
            ErrorKind::KeyInUse => 19,
            ErrorKind::EnvelopeNotBound => 20,
            ErrorKind::PermissionDenied => 21,
            ErrorKind::WrongObjectType => 22,
            ErrorKind::WrongColumnType => 23,
            ErrorKind::NotReady => 24,
            ErrorKind::Unsupported => 25,
            ErrorKind::UnlistedType => 26,
            ErrorKind::KeyDisabled => 27,
            ErrorKind::PlaintextRows => 28,
            ErrorKind::ReadOnly => 29,
            ErrorKind::KeyHandleConflict => 30,
        }
    }
}

/// The error type of the core. `message` never includes plaintext or key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    // Constructors for the common cases, so messages stay uniform.

    pub fn null_argument(name: &str) -> Self {
        Error::new(ErrorKind::NullArgument, format!("argument \"{name}\" must not be NULL"))
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }
    pub fn unknown_key(key_id: &str) -> Self {
        Error::new(
            ErrorKind::UnknownKey,
            format!("encryption key \"{key_id}\" does not exist"),
        )
        .with_hint("Create it with event_crypto.create_key().")
    }
    pub fn unknown_key_version(key_id: &str, version: u32) -> Self {
        Error::new(
            ErrorKind::UnknownKey,
            format!("version {version} of encryption key \"{key_id}\" does not exist"),
        )
    }
    /// A format 2 envelope names a key handle that no key id of the catalog has.
    pub fn unknown_key_handle(handle: &dyn fmt::Display) -> Self {
        Error::new(ErrorKind::UnknownKey, format!("no encryption key has handle {handle}"))
            .with_detail("Envelopes of format 2 name their key by the handle the key catalog stores with the key id.")
    }
    /// A key id that cannot be used to encrypt or index: unknown and shredded key ids give the same error, so a
    /// role that may encrypt cannot tell a subject that was forgotten from one that never existed.
    pub fn key_unavailable(_key_id: &str) -> Self {
        Error::new(
            ErrorKind::UnknownKey,
            // no key id: a shredded one may name a forgotten subject (and the message is the same for both)
            "encryption key does not exist or has been shredded".to_string(),
        )
        .with_hint("An administrator can see which key ids exist in event_crypto.key_info.")
    }
    pub fn key_disabled(key_id: &str, version: u32) -> Self {
        Error::new(
            ErrorKind::KeyDisabled,
            format!("version {version} of encryption key \"{key_id}\" is disabled"),
        )
        .with_detail("retire_key_version() disabled it and scheduled its destruction: data encrypted under it cannot be read until the version is re-enabled, and after the destruction never.")
        .with_hint("If this data is still needed, re-enable the version with event_crypto.cancel_retire() and re-encrypt it (event_crypto.reencrypt_table) before retiring the version again.")
    }
    pub fn key_shredded(_key_id: &str) -> Self {
        // no key id: it may name a forgotten subject, which must not reach a message or the server log
        Error::new(ErrorKind::KeyShredded, "encryption key has been shredded")
            .with_detail("A shredded key is destroyed for good; data encrypted under it cannot be read and no new data can be encrypted under its id.")
    }
    pub fn malformed(path: &str, reason: &str) -> Self {
        Error::new(
            ErrorKind::MalformedEnvelope,
            format!("malformed envelope at {}", display_path(path)),
        )
        .with_detail(reason.to_string())
    }
    pub fn too_large(path: &str, what: &str) -> Self {
        Error::new(
            ErrorKind::TooLarge,
            format!("value at {} is too large to encrypt", display_path(path)),
        )
        .with_detail(what.to_string())
    }
}

/// Renders a path for messages: the document root has an empty path.
pub fn display_path(path: &str) -> String {
    if path.is_empty() {
        "the document root".to_string()
    } else {
        format!("path \"{path}\"")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_kinds_are_listed_once_in_order() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.ordinal(), i, "{k:?}");
        }
        // No gaps and no duplicates: ALL holds ordinals 0..len exactly once. (The compiler forces every new kind
        // into ordinal() and into the SQLSTATE mapping, whose matches are exhaustive.)
        let max = ErrorKind::ALL.iter().map(|k| k.ordinal()).max().unwrap();
        assert_eq!(max + 1, ErrorKind::ALL.len());
    }

    #[test]
    fn display_has_message_and_detail_only() {
        let e = Error::new(ErrorKind::UnknownKey, "m").with_detail("d").with_hint("h");
        assert_eq!(e.to_string(), "m (d)");
        assert_eq!(display_path(""), "the document root");
        assert_eq!(display_path("a.b"), "path \"a.b\"");
    }
}
