//! Tokenization (issue 17): `tokenize`, `detokenize` and the token vault `event_crypto.token_vault`.
//!
//! A token is computed by the key id's token function (`event_crypto_core::token`: a PRF derived from the key id's
//! blind-index root under its own label), so it is deterministic per key id, and it is recorded in the vault with
//! the value, encrypted under the key id's data key (an envelope of format 2, whose associated data binds it to the
//! token). The vault names the key id by its handle, which never changes and which a shredded key id's tombstone
//! keeps: nothing in the vault names a key id or a subject.
//!
//! The vault is written by the catalog owner only (these functions run as it after checking their own inputs);
//! its rows are found by token (`detokenize`) and by `(key_handle, format, value_digest)`, a keyed digest of the
//! value (`tokenize`: the same value gets the token it already has). A token another value holds, under this key
//! id or another, is a collision: the next attempt is taken (`Tokenizer::resolve`).

use crate::access::as_catalog_owner;
use crate::catalog::{get, get_opt};
use crate::error::{raise, spi_error, OrRaise};
use crate::keys::{self, CachedKeys, KeyEntry};
use event_crypto_core::document::{Decryptor, Encryptor, OnShredded};
use event_crypto_core::envelope::{Format, KeyHandle};
use event_crypto_core::jsonb::{Parsed, Value};
use event_crypto_core::token::{check_value, Claim, TokenFormat};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use serde_json::{json, Value as Json};

/// The longest text that can be a token (an e-mail token: 16 + 1 + a domain of up to 253 bytes).
const MAX_TOKEN_LEN: usize = 270;

fn no_handles() -> Error {
    Error::new(
        ErrorKind::NotReady,
        "tokenization needs the SQL objects of event_crypto 0.3.0",
    )
    .with_hint("Run ALTER EXTENSION event_crypto UPDATE.")
}

/// The token of `value` under `entry` (a live key id) in `format`: the one the vault holds for it, or a new one
/// recorded in the vault. The caller checked that this transaction may write.
pub fn tokenize_with(entry: &KeyEntry, value: &str, format: TokenFormat) -> Result<String> {
    check_value(value, format)?;
    let tokenizer = entry.tokenizer()?;
    let handle = entry.handle.ok_or_else(no_handles)?.to_i64();
    let digest = tokenizer.lookup_digest(value, format).to_vec();
    let existing = || -> Result<Option<String>> {
        as_catalog_owner(|| {
            crate::catalog::one::<String>(
                "SELECT token FROM event_crypto.token_vault \
                 WHERE key_handle OPERATOR(pg_catalog.=) $1 AND format OPERATOR(pg_catalog.=) $2 \
                   AND value_digest OPERATOR(pg_catalog.=) $3",
                &[handle.into(), format.name().into(), digest.clone().into()],
            )
        })
    };
    if let Some(t) = existing()? {
        return Ok(t);
    }
    let (version, cipher) = entry.encryption_key()?;
    let key = entry.key_ref(Format::V2)?;
    tokenizer.resolve(value, format, |token| {
        let sealed = Encryptor::new(&cipher, key, version, Some(token.as_bytes()))
            .encrypt_value(&Value::String(value.as_bytes()))?;
        // ON CONFLICT DO NOTHING: the token is held by another value (any key id), or this value got a token in a
        // transaction that committed meanwhile (the unique digest); both are told apart below.
        let inserted = as_catalog_owner(|| {
            crate::catalog::modify(
                "INSERT INTO event_crypto.token_vault (token, key_handle, key_version, format, value_digest, value) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    token.into(),
                    handle.into(),
                    (version as i32).into(),
                    format.name().into(),
                    digest.clone().into(),
                    sealed.as_str().into(),
                ],
            )
        })?;
        if inserted == 1 {
            entry.note_encrypted(version, 1);
            return Ok(Claim::Claimed);
        }
        Ok(match existing()? {
            Some(t) => Claim::Existing(t),
            None => Claim::Taken,
        })
    })
}

/// Whether `token` is a token of `entry`'s key id in `format` (the vault holds it under its handle): the protect
/// trigger keeps such a value as it is.
pub fn is_token_of(entry: &KeyEntry, token: &str, format: TokenFormat) -> Result<bool> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Ok(false);
    }
    let handle = entry.handle.ok_or_else(no_handles)?.to_i64();
    as_catalog_owner(|| {
        crate::catalog::one::<bool>(
            "SELECT true FROM event_crypto.token_vault \
             WHERE token OPERATOR(pg_catalog.=) $1 AND key_handle OPERATOR(pg_catalog.=) $2 \
               AND format OPERATOR(pg_catalog.=) $3",
            &[token.into(), handle.into(), format.name().into()],
        )
    })
    .map(|r| r.is_some())
}

/// The token of a value under a key id: `opaque` (`tok_` and 22 characters), `card` (16 digits, Luhn-valid, the
/// last four kept) or `email` (the domain kept). The same value gets the same token under the same key id.
#[pg_extern(volatile, parallel_unsafe)]
fn tokenize(value: Option<&str>, key_id: Option<&str>, format: default!(Option<&str>, "'opaque'")) -> Option<String> {
    let key_id = key_id.unwrap_or_else(|| raise(Error::null_argument("key_id")));
    let format = TokenFormat::parse(format.unwrap_or_else(|| raise(Error::null_argument("format")))).or_raise();
    let value = value?;
    check_value(value, format).or_raise();
    keys::require_writable("tokenize a value").or_raise();
    let entry = keys::usable(key_id).or_raise();
    Some(tokenize_with(&entry, value, format).or_raise())
}

/// One vault row: (key handle, the value's envelope).
fn vault_row(token: &str) -> Result<Option<(i64, String)>> {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            let t = c
                .select(
                    "SELECT key_handle, value FROM event_crypto.token_vault WHERE token OPERATOR(pg_catalog.=) $1",
                    Some(1),
                    &[token.into()],
                )
                .map_err(spi_error)?;
            match t.into_iter().next() {
                Some(r) => Ok(Some((get::<i64>(&r, 1, "key_handle")?, get::<String>(&r, 2, "value")?))),
                None => Ok(None),
            }
        })
    })
}

/// Opens a vault value (`None`: its key id or version is shredded or disabled).
fn open(token: &str, sealed: &str) -> Result<Option<String>> {
    let mut keys = CachedKeys::default();
    match Decryptor::new(&mut keys, Some(token.as_bytes()), OnShredded::Null).decrypt_value(sealed)? {
        Some(Parsed::String(b)) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| Error::new(ErrorKind::MalformedEnvelope, "a token vault value is not text")),
        None => Ok(None),
        Some(_) => Err(Error::new(
            ErrorKind::MalformedEnvelope,
            "a token vault value is not text",
        )),
    }
}

/// The value a token stands for; NULL when its key id was shredded (or the version it was recorded under was
/// destroyed), and NULL for a text that is no token of the vault: a forgotten subject's tokens read the same
/// before and after the maintenance run purges them.
#[pg_extern(stable, parallel_restricted)]
fn detokenize(token: Option<&str>) -> Option<String> {
    let token = token?;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let (handle, sealed) = vault_row(token).or_raise()?;
    let handle = KeyHandle::from_i64(handle)?;
    match keys::lookup_handle(handle) {
        Ok(e) if e.shredded => return None,
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::UnknownKey => return None,
        Err(e) => raise(e),
    }
    open(token, &sealed).or_raise()
}

/// The maintenance action `token_purge`: deletes the vault rows whose key id was shredded (or whose version was
/// destroyed, or whose handle no key id has): their values can never be read again.
pub fn purge() -> Json {
    let n = as_catalog_owner(|| {
        crate::catalog::modify(
            "DELETE FROM event_crypto.token_vault v WHERE NOT EXISTS ( \
                 SELECT FROM event_crypto.keys k \
                  WHERE k.handle OPERATOR(pg_catalog.=) v.key_handle AND k.version OPERATOR(pg_catalog.=) v.key_version \
                    AND k.status OPERATOR(pg_catalog.<>) 'shredded')",
            &[],
        )
    })
    .or_raise();
    json!({"purged": n})
}

/// The handles of `key_ids` (live or tombstoned): what their vault rows are found by.
pub fn handles_of(key_ids: &[String]) -> Vec<i64> {
    let mut out = Vec::new();
    for k in key_ids {
        let h = match keys::handle_of(k).or_raise() {
            Some(h) => Some(h),
            // a key id shredded whole is stored under its tombstone, found by its key id through lookup
            None => match keys::lookup(k) {
                Ok(e) => e.handle,
                Err(e) if e.kind() == ErrorKind::UnknownKey => None,
                Err(e) => raise(e),
            },
        };
        if let Some(h) = h {
            out.push(h.to_i64());
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Deletes the vault rows of these handles (forget_subject); returns how many.
pub fn delete_for(handles: &[i64]) -> i64 {
    if handles.is_empty() {
        return 0;
    }
    as_catalog_owner(|| {
        crate::catalog::modify(
            "DELETE FROM event_crypto.token_vault WHERE key_handle OPERATOR(pg_catalog.=) ANY ($1)",
            &[handles.to_vec().into()],
        )
    })
    .or_raise() as i64
}

/// The tokens of these key ids, with their values where the key id is live (export_subject).
pub fn export(key_ids: &[String]) -> Vec<Json> {
    let mut out = Vec::new();
    for k in key_ids {
        let Some(h) = keys::handle_of(k).or_raise() else {
            continue;
        };
        let rows: Vec<(String, String, String, String)> = as_catalog_owner(|| {
            Spi::connect(|c| {
                c.select(
                    "SELECT token, format, value, created_at::pg_catalog.text FROM event_crypto.token_vault \
                     WHERE key_handle OPERATOR(pg_catalog.=) $1 ORDER BY created_at, token",
                    None,
                    &[h.to_i64().into()],
                )
                .map_err(spi_error)?
                .map(|r| {
                    Ok((
                        get(&r, 1, "token")?,
                        get(&r, 2, "format")?,
                        get(&r, 3, "value")?,
                        get_opt::<String>(&r, 4, "created_at")?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<Vec<_>>>()
            })
        })
        .or_raise();
        for (i, (token, format, sealed, at)) in rows.into_iter().enumerate() {
            if i & 1023 == 0 {
                pgrx::check_for_interrupts!();
            }
            let value = open(&token, &sealed).or_raise();
            out.push(json!({"key_id": k, "token": token, "format": format, "value": value, "created_at": at}));
        }
    }
    out
}
