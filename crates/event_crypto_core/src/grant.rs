//! Key grants: a data key (or blind-index key) sealed to a consumer's X25519 public key with [`crate::hpke`], so
//! a consumer can decrypt outside PostgreSQL without the master key.
//!
//! A grant is [`GRANT_LEN`] bytes: `enc (32) || ChaCha20-Poly1305(key) (32) || tag (16)`, sealed with the HPKE info
//! [`INFO`] and the associated data [`aad`], which binds the key to everything the consumer is told about it
//! ([`GrantInfo`]): opening a grant with any field changed fails with [`ErrorKind::AuthenticationFailed`].

use crate::aead::{Algorithm, SecretKey, KEY_LEN};
use crate::envelope::KeyHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::hpke::{self, PrivateKey, PublicKey};

/// What a granted key is for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Purpose {
    /// A data key: opens envelopes (code 0).
    Data,
    /// A blind-index key (code 1).
    BlindIndex,
}

impl Purpose {
    /// The byte that stands for the purpose in the associated data.
    pub fn code(self) -> u8 {
        match self {
            Purpose::Data => 0,
            Purpose::BlindIndex => 1,
        }
    }

    pub fn from_code(code: u8) -> Option<Purpose> {
        match code {
            0 => Some(Purpose::Data),
            1 => Some(Purpose::BlindIndex),
            _ => None,
        }
    }

    /// The name used in SQL (`consumer_keys`): `data` or `blind_index`.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Data => "data",
            Purpose::BlindIndex => "blind_index",
        }
    }

    pub fn from_name(name: &str) -> Option<Purpose> {
        match name {
            "data" => Some(Purpose::Data),
            "blind_index" => Some(Purpose::BlindIndex),
            _ => None,
        }
    }
}

/// Everything a grant is bound to (its associated data, see [`aad`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GrantInfo<'a> {
    /// The consumer's name.
    pub consumer: &'a str,
    pub key_id: &'a str,
    pub handle: KeyHandle,
    pub version: u32,
    pub purpose: Purpose,
    /// The algorithm of the data key (for [`Purpose::BlindIndex`], the key's algorithm too).
    pub algorithm: Algorithm,
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    pub issued_at: i64,
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    pub expires_at: i64,
}

/// The HPKE info of every grant.
pub const INFO: &[u8] = b"event_crypto consumer key grant v1";

/// The length of a grant: `enc || ChaCha20-Poly1305(key) || tag`.
pub const GRANT_LEN: usize = hpke::KEY_LEN + KEY_LEN + crate::aead::TAG_LEN;

/// The first bytes of the associated data.
const AAD_LABEL: &[u8] = b"event_crypto grant v1";

/// The longest consumer name or key id a grant can be bound to (its length is a 16-bit number in [`aad`]).
pub const MAX_NAME_LEN: usize = u16::MAX as usize;

/// The associated data of a grant, byte for byte (integers big-endian):
///
/// ```text
/// "event_crypto grant v1"        21 bytes of ASCII
/// purpose                        u8    0 data, 1 blind index (Purpose::code)
/// len(consumer)                  u16
/// consumer                       the UTF-8 bytes of the consumer's name
/// len(key_id)                    u16
/// key_id                         the UTF-8 bytes of the key id
/// handle                         u64   the key id's handle
/// version                        u32   the key version
/// algorithm                      u8    Algorithm::code (1 AES-256-GCM, 2 ChaCha20-Poly1305)
/// issued_at                      i64   microseconds since the Unix epoch
/// expires_at                     i64   microseconds since the Unix epoch
/// ```
///
/// # Panics
///
/// When the consumer name or the key id is longer than [`MAX_NAME_LEN`] bytes ([`seal_grant`] and [`open_grant`]
/// refuse those with an error first).
pub fn aad(info: &GrantInfo) -> Vec<u8> {
    let consumer = u16::try_from(info.consumer.len()).expect("consumer name of at most 65535 bytes");
    let key_id = u16::try_from(info.key_id.len()).expect("key id of at most 65535 bytes");
    let mut a = Vec::with_capacity(AAD_LABEL.len() + 1 + 2 + info.consumer.len() + 2 + info.key_id.len() + 37);
    a.extend_from_slice(AAD_LABEL);
    a.push(info.purpose.code());
    a.extend_from_slice(&consumer.to_be_bytes());
    a.extend_from_slice(info.consumer.as_bytes());
    a.extend_from_slice(&key_id.to_be_bytes());
    a.extend_from_slice(info.key_id.as_bytes());
    a.extend_from_slice(&info.handle.to_be_bytes());
    a.extend_from_slice(&info.version.to_be_bytes());
    a.push(info.algorithm.code());
    a.extend_from_slice(&info.issued_at.to_be_bytes());
    a.extend_from_slice(&info.expires_at.to_be_bytes());
    a
}

fn check_lengths(info: &GrantInfo) -> Result<()> {
    if info.consumer.len() > MAX_NAME_LEN || info.key_id.len() > MAX_NAME_LEN {
        return Err(Error::invalid_argument(
            "a key grant's consumer name and key id must each be at most 65535 bytes long",
        ));
    }
    Ok(())
}

/// Seals `key` to the consumer's public key `pk`, bound to `info`. Returns [`GRANT_LEN`] bytes.
pub fn seal_grant(pk: &PublicKey, info: &GrantInfo, key: &[u8; KEY_LEN]) -> Result<Vec<u8>> {
    check_lengths(info)?;
    let (enc, ct) = hpke::seal(pk, INFO, &aad(info), key)?;
    Ok(grant_bytes(&enc, &ct))
}

/// [`seal_grant`] with the HPKE ephemeral key given: deterministic, for frozen test vectors only. Never reuse
/// `sk_e`.
#[doc(hidden)]
pub fn seal_grant_with_ephemeral(
    sk_e: &PrivateKey,
    pk: &PublicKey,
    info: &GrantInfo,
    key: &[u8; KEY_LEN],
) -> Result<Vec<u8>> {
    check_lengths(info)?;
    let (enc, ct) = hpke::seal_with_ephemeral(sk_e, pk, INFO, &aad(info), key)?;
    Ok(grant_bytes(&enc, &ct))
}

fn grant_bytes(enc: &[u8; hpke::KEY_LEN], ct: &[u8]) -> Vec<u8> {
    let mut g = Vec::with_capacity(GRANT_LEN);
    g.extend_from_slice(enc);
    g.extend_from_slice(ct);
    debug_assert_eq!(g.len(), GRANT_LEN);
    g
}

/// Opens a grant with the consumer's private key `sk`. `info` must be exactly what it was sealed with: any other
/// value of any field gives [`ErrorKind::AuthenticationFailed`]; a grant that is not [`GRANT_LEN`] bytes long
/// gives [`ErrorKind::InvalidArgument`].
pub fn open_grant(sk: &PrivateKey, info: &GrantInfo, grant: &[u8]) -> Result<SecretKey> {
    if grant.len() != GRANT_LEN {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("a key grant is {GRANT_LEN} bytes long, not {}", grant.len()),
        ));
    }
    check_lengths(info)?;
    let (enc, ct) = grant.split_at(hpke::KEY_LEN);
    let enc: &[u8; hpke::KEY_LEN] = enc.try_into().expect("split at KEY_LEN");
    let pt = hpke::open(sk, enc, INFO, &aad(info), ct).map_err(|e| match e.kind() {
        ErrorKind::AuthenticationFailed => Error::new(
            ErrorKind::AuthenticationFailed,
            format!(
                "the grant of version {} of key \"{}\" does not open for consumer \"{}\"",
                info.version, info.key_id, info.consumer
            ),
        )
        .with_detail("It was sealed to another consumer's key, for other key details, or it was altered."),
        _ => e,
    })?;
    let mut key = SecretKey::new([0u8; KEY_LEN]);
    key.copy_from_slice(&pt);
    Ok(key)
}
