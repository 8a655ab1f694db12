//! The SQL functions. Each converts its arguments, calls the core, and raises core errors through
//! [`crate::error::raise`]; nothing here does cryptography itself.

use crate::error::{raise, OrRaise};
use crate::jsonb::Jsonb;
use crate::keys::{self, CachedKeys};
use event_crypto_core::aead::Algorithm;
use event_crypto_core::blind::Normalize;
use event_crypto_core::document::{check_context, needs_encryption, Decryptor, Encryptor, OnShredded};
use event_crypto_core::envelope::KeyNames;
use event_crypto_core::path::{FieldPath, Selector};
use event_crypto_core::reencrypt::{self, has_stale_envelopes, Reencryptor};
use event_crypto_core::Error;
use pgrx::prelude::*;
use std::cell::RefCell;

fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| raise(Error::null_argument(name)))
}

thread_local! {
    /// The last `fields` array compiled, so a scan with a constant array compiles it once.
    static PATHS: RefCell<(Vec<String>, Selector)> = RefCell::new((Vec::new(), Selector::default()));
}

fn with_selector<R>(fields: &Array<'_, &str>, f: impl FnOnce(&Selector) -> R) -> R {
    let texts: Vec<&str> = fields
        .iter()
        .map(|p| {
            p.unwrap_or_else(|| {
                raise(Error::null_argument("fields").with_detail("the fields array contains a NULL element"))
            })
        })
        .collect();
    PATHS.with(|cell| {
        let stale = {
            let cached = cell.borrow();
            cached.0.len() != texts.len() || cached.0.iter().zip(&texts).any(|(a, b)| a != b)
        };
        if stale {
            // Parse first: a malformed path raises before the cache is touched.
            let paths: Vec<FieldPath> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if i & 1023 == 0 {
                        pgrx::check_for_interrupts!();
                    }
                    FieldPath::parse(t).or_raise()
                })
                .collect();
            let selector = Selector::new(&paths).or_raise();
            *cell.borrow_mut() = (texts.iter().map(|s| s.to_string()).collect(), selector);
        }
        f(&cell.borrow().1)
    })
}

/// Creates a key id with version 1; returns 1. Algorithm: 'aes-256-gcm' (default) or 'chacha20-poly1305'.
#[pg_extern(volatile, parallel_unsafe)]
fn create_key(key_id: Option<&str>, algorithm: default!(Option<&str>, "'aes-256-gcm'")) -> i32 {
    let key_id = required(key_id, "key_id");
    let algorithm = Algorithm::from_name(required(algorithm, "algorithm")).or_raise();
    keys::create_key(key_id, algorithm).or_raise()
}

/// Adds a new active version of a key id (optionally with another algorithm); returns the new version.
#[pg_extern(volatile, parallel_unsafe)]
fn rotate_key(key_id: Option<&str>, algorithm: default!(Option<&str>, "NULL")) -> i32 {
    let key_id = required(key_id, "key_id");
    let algorithm = algorithm.map(|a| Algorithm::from_name(a).or_raise());
    keys::rotate_key(key_id, algorithm).or_raise()
}

/// Destroys every version of a key id; returns how many versions this call destroyed.
#[pg_extern(volatile, parallel_unsafe)]
fn shred_key(key_id: Option<&str>) -> i32 {
    keys::shred_key(required(key_id, "key_id")).or_raise()
}

/// Encrypts the fields the paths select, each under a fresh nonce, bound to its path and the context.
/// compress: 'none' (default) or 'zstd' (values longer than event_crypto.compress_threshold bytes of JSON text are
/// compressed first when that makes them smaller; envelope format 2 only).
///
/// (C symbol `encrypt_fields_0_3_wrapper`: 0.2.0's SQL objects call `encrypt_fields_wrapper` without `compress`,
/// which `crate::compat` forwards here until ALTER EXTENSION UPDATE.)
#[pg_extern(name = "encrypt_fields", volatile, parallel_safe)]
fn encrypt_fields_0_3(
    payload: Option<Jsonb>,
    fields: Option<Array<'_, &str>>,
    key_id: Option<&str>,
    context: default!(Option<&str>, "NULL"),
    compress: default!(Option<&str>, "'none'"),
) -> Option<Jsonb> {
    let fields = required(fields, "fields");
    let key_id = required(key_id, "key_id");
    let context = check_context(context).or_raise();
    let compression = crate::guc::compression(required(compress, "compress")).or_raise();
    let payload = payload?;
    let doc = payload.document();
    let entry = keys::usable(key_id).or_raise();
    let (version, cipher) = entry.encryption_key().or_raise();
    let key = entry.key_ref(keys::write_format()).or_raise();
    let encrypted = with_selector(&fields, |selector| {
        Jsonb::build(|out| {
            let n = Encryptor::new(&cipher, key, version, context)
                .compress(compression)
                .encrypt_document(&doc, selector, out)?;
            entry.note_encrypted(version, n);
            Ok(n > 0)
        })
    });
    Some(encrypted.unwrap_or(payload))
}

/// Decrypts every envelope in the document. on_shredded: 'null' (default), 'keep' or 'error'.
#[pg_extern(stable, parallel_safe)]
fn decrypt_fields(
    payload: Option<Jsonb>,
    context: default!(Option<&str>, "NULL"),
    on_shredded: default!(Option<&str>, "'null'"),
) -> Option<Jsonb> {
    let on_shredded = OnShredded::parse(required(on_shredded, "on_shredded")).or_raise();
    let context = check_context(context).or_raise();
    let payload = payload?;
    let doc = payload.document();
    let mut keys = CachedKeys::default();
    let decrypted = Jsonb::build(|out| Decryptor::new(&mut keys, context, on_shredded).decrypt_document(&doc, out));
    Some(decrypted.unwrap_or(payload))
}

/// Encrypts one JSON value; returns the envelope text. compress: as for encrypt_fields.
///
/// (C symbol `encrypt_value_0_3_wrapper`: see `encrypt_fields`.)
#[pg_extern(name = "encrypt_value", volatile, parallel_safe)]
fn encrypt_value_0_3(
    value: Option<Jsonb>,
    key_id: Option<&str>,
    context: default!(Option<&str>, "NULL"),
    compress: default!(Option<&str>, "'none'"),
) -> Option<String> {
    let key_id = required(key_id, "key_id");
    let context = check_context(context).or_raise();
    let compression = crate::guc::compression(required(compress, "compress")).or_raise();
    let value = value?;
    let v = value.document().value().or_raise();
    let entry = keys::usable(key_id).or_raise();
    let (version, cipher) = entry.encryption_key().or_raise();
    let key = entry.key_ref(keys::write_format()).or_raise();
    let envelope = Encryptor::new(&cipher, key, version, context)
        .compress(compression)
        .encrypt_value(&v)
        .or_raise();
    entry.note_encrypted(version, 1);
    Some(envelope)
}

/// Decrypts an envelope made by encrypt_value. A shredded key gives NULL ('null'), the envelope ('keep') or an error.
#[pg_extern(stable, parallel_safe)]
fn decrypt_value(
    envelope: Option<&str>,
    context: default!(Option<&str>, "NULL"),
    on_shredded: default!(Option<&str>, "'null'"),
) -> Option<Jsonb> {
    let on_shredded = OnShredded::parse(required(on_shredded, "on_shredded")).or_raise();
    let context = check_context(context).or_raise();
    let text = envelope?;
    let mut keys = CachedKeys::default();
    let plain = Decryptor::new(&mut keys, context, on_shredded)
        .decrypt_value(text)
        .or_raise()?;
    Jsonb::build(|out| plain.write_document(out).map(|()| true))
}

/// Deterministic keyed digest of a value for equality lookups; the same under every version of the key id.
#[pg_extern(stable, parallel_safe)]
fn blind_index(
    value: Option<&str>,
    key_id: Option<&str>,
    normalization: default!(Option<&str>, "NULL"),
) -> Option<String> {
    let key_id = required(key_id, "key_id");
    let normalize = Normalize::parse(normalization).or_raise();
    let value = value?;
    let entry = keys::usable(key_id).or_raise();
    Some(entry.indexer().or_raise().digest(value, normalize))
}

/// The fingerprint (not the key) of the master key this server has loaded.
#[pg_extern(stable, parallel_safe)]
fn master_key_id() -> String {
    crate::master::get().or_raise().active().id().to_string()
}

/// Re-wraps up to `batch_size` key versions under the active master key, in the calling transaction; returns
/// what it did and what is left (`damaged`: key versions whose wrapped keys do not unwrap, passed over).
/// `CALL event_crypto.rewrap_keys()` runs it batch after batch, committing each.
#[pg_extern(volatile, parallel_unsafe)]
fn rewrap_keys_batch(
    batch_size: default!(Option<i32>, 1000),
) -> TableIterator<
    'static,
    (
        name!(rewrapped, i64),
        name!(remaining, i64),
        name!(unknown_master, i64),
        name!(damaged, i64),
    ),
> {
    crate::keys::require_writable("call event_crypto.rewrap_keys_batch()").or_raise();
    let batch_size = required(batch_size, "batch_size");
    if !(1..=100_000).contains(&batch_size) {
        raise(Error::invalid_argument("batch_size must be between 1 and 100000"));
    }
    // the catalog's digest secret first (crate::tombstones; not a key version, not counted), then the data keys
    crate::tombstones::rewrap_secret().or_raise();
    let o = keys::rewrap_batch(batch_size as i64).or_raise();
    TableIterator::once((o.rewrapped, o.remaining, o.unknown_master, o.damaged))
}

/// The master keys of the ring and those the key catalog names, with the live key versions each wraps.
#[pg_extern(stable, parallel_restricted)]
fn master_key_status() -> TableIterator<
    'static,
    (
        name!(master_key_id, String),
        name!(in_ring, bool),
        name!(active, bool),
        name!(live_key_versions, i64),
        name!(removable, bool),
    ),
> {
    let mut rows = keys::master_key_status().or_raise();
    // the master key that wraps the catalog's digest secret is needed too (crate::tombstones)
    let secret = crate::tombstones::secret_master_key();
    if let Some(m) = &secret {
        if !rows.iter().any(|s| &s.master_key_id == m) {
            rows.push(keys::MasterKeyStatus {
                master_key_id: m.clone(),
                in_ring: false,
                active: false,
                live_key_versions: 0,
            });
        }
    }
    TableIterator::new(rows.into_iter().map(move |s| {
        let removable =
            s.in_ring && !s.active && s.live_key_versions == 0 && secret.as_deref() != Some(s.master_key_id.as_str());
        (s.master_key_id, s.in_ring, s.active, s.live_key_versions, removable)
    }))
}

/// Re-encrypts every envelope whose key version is older than its key id's active version, or whose format is not
/// the one new encryptions write (`event_crypto.envelope_format`), under the active version in that format (same
/// plaintext, location and context, fresh nonce); everything else is kept byte for byte. Fails if an envelope does
/// not authenticate with this context.
#[pg_extern(volatile, parallel_safe)]
fn reencrypt_fields(payload: Option<Jsonb>, context: default!(Option<&str>, "NULL")) -> Option<Jsonb> {
    let context = check_context(context).or_raise();
    let payload = payload?;
    let doc = payload.document();
    let format = keys::write_format();
    let mut keys = CachedKeys::default();
    let moved = Jsonb::build(|out| {
        Reencryptor::new(&mut keys, context)
            .format(format)
            .reencrypt_document(&doc, out)
    });
    Some(moved.unwrap_or(payload))
}

/// Whether `reencrypt_fields` would change the document, or (with `fields`) a selected field still holds
/// plaintext. Reads headers only; decrypts nothing.
#[pg_extern(stable, parallel_safe)]
fn needs_reencryption(payload: Option<Jsonb>, fields: default!(Option<Array<'_, &str>>, "NULL")) -> Option<bool> {
    let payload = payload?;
    let doc = payload.document();
    if let Some(fields) = fields {
        if with_selector(&fields, |selector| needs_encryption(&doc, selector)).or_raise() {
            return Some(true);
        }
    }
    Some(has_stale_envelopes(&doc, &mut CachedKeys::default(), keys::write_format()).or_raise())
}

/// Whether some envelope of the document is under `key_id` version `version`: format 1 envelopes name the key id,
/// format 2 envelopes its handle (looked up in the key catalog; no key is unwrapped). Headers only.
#[pg_extern(stable, parallel_safe)]
fn uses_key_version(payload: Option<Jsonb>, key_id: Option<&str>, version: Option<i32>) -> Option<bool> {
    let key_id = required(key_id, "key_id");
    let version = required(version, "version");
    let payload = payload?;
    if version < 1 {
        return Some(false);
    }
    let names = KeyNames {
        key_id,
        handle: keys::handle_of(key_id).or_raise(),
    };
    Some(reencrypt::uses_key_version(&payload.document(), names, version as u32).or_raise())
}

/// Retires one version of a key id: refused while stored values use it (`key_version_usage`, every column of the
/// database that may hold envelopes) or while that cannot be shown; otherwise the version is disabled and the
/// maintenance run destroys it after `event_crypto.retire_wait` (`cancel_retire` re-enables it until then).
/// `force` skips the check and destroys it at once. Returns a receipt.
#[pg_extern(volatile, parallel_unsafe)]
fn retire_key_version(key_id: Option<&str>, version: Option<i32>, force: default!(Option<bool>, false)) -> pgrx::JsonB {
    crate::keys::require_writable("call event_crypto.retire_key_version()").or_raise();
    let key_id = required(key_id, "key_id");
    let version = required(version, "version");
    let force = required(force, "force");
    pgrx::JsonB(crate::retire::retire_version(key_id, version, force).or_raise())
}
