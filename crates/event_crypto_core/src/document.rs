//! Encrypting and decrypting fields of a JSON document in place.

use crate::aead::{Cipher, NONCE_LEN};
use crate::envelope::{looks_like_envelope, seal, Envelope, Scratch, SealKey};
use crate::error::{Error, ErrorKind, Result};
use crate::path::{FieldPath, Location, Step};
use serde_json::Value;
use std::rc::Rc;

/// Checks a context argument: NULL means "no context"; an empty string is refused because it almost always
/// means a missing value coalesced to '' and would bind data to nothing meaningful.
pub fn check_context(context: Option<&str>) -> Result<Option<&[u8]>> {
    match context {
        Some("") => Err(Error::invalid_argument("context must not be an empty string")
            .with_hint("Pass NULL for no context, or a non-empty value such as the stream id.")),
        Some(c) => Ok(Some(c.as_bytes())),
        None => Ok(None),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Encrypts values one at a time with fresh nonces, reusing buffers.
pub struct Encryptor<'a> {
    key: SealKey<'a>,
    context: Option<&'a [u8]>,
    scratch: Scratch,
    plaintext: Vec<u8>,
}

impl<'a> Encryptor<'a> {
    pub fn new(cipher: &'a Cipher, key_id: &'a str, version: u32, context: Option<&'a [u8]>) -> Encryptor<'a> {
        Encryptor {
            key: SealKey {
                cipher,
                key_id,
                version,
            },
            context,
            scratch: Scratch::default(),
            plaintext: Vec::new(),
        }
    }

    fn seal_value(&mut self, v: &Value, loc: &Location, nonce: &[u8; NONCE_LEN]) -> Result<String> {
        self.plaintext.clear();
        serde_json::to_writer(&mut self.plaintext, v).expect("serialising a JSON value into memory cannot fail");
        seal(&self.key, loc, self.context, &self.plaintext, nonce, &mut self.scratch)
    }

    /// Encrypts a single value bound to the document root (`encrypt_value`).
    pub fn encrypt_value(&mut self, v: &Value) -> Result<String> {
        let nonce = crate::random::nonce()?;
        self.seal_value(v, &Location::root(), &nonce)
    }

    /// Encrypts every field that the paths select. Absent paths are skipped; values that already are envelopes
    /// are left as they are. Returns the number of values encrypted.
    pub fn encrypt_fields(&mut self, doc: &mut Value, paths: &[FieldPath]) -> Result<usize> {
        if !matches!(doc, Value::Object(_) | Value::Array(_)) {
            return Err(Error::invalid_argument(format!(
                "payload must be a JSON object or array, not a {}",
                type_name(doc)
            ))
            .with_hint("Use event_crypto.encrypt_value() to encrypt a single value."));
        }
        let mut count = 0;
        let mut loc = Location::root();
        for p in paths {
            self.walk(doc, p.steps(), &mut loc, &mut count)?;
        }
        Ok(count)
    }

    fn walk(&mut self, v: &mut Value, steps: &[Step], loc: &mut Location, count: &mut usize) -> Result<()> {
        let Some((step, rest)) = steps.split_first() else {
            if let Value::String(s) = v {
                if looks_like_envelope(s) && Envelope::parse(s, loc).is_ok() {
                    return Ok(());
                }
            }
            let nonce = crate::random::nonce()?;
            *v = Value::String(self.seal_value(v, loc, &nonce)?);
            *count += 1;
            return Ok(());
        };
        match (step, v) {
            (Step::Key(k), Value::Object(map)) => {
                if let Some(child) = map.get_mut(k.as_str()) {
                    let mark = loc.push_key(k);
                    self.walk(child, rest, loc, count)?;
                    loc.truncate(mark);
                }
            }
            (Step::Index(i), Value::Array(items)) => {
                if let Some(child) = items.get_mut(*i) {
                    let mark = loc.push_index(*i);
                    self.walk(child, rest, loc, count)?;
                    loc.truncate(mark);
                }
            }
            (Step::Wildcard, Value::Array(items)) => {
                for (i, child) in items.iter_mut().enumerate() {
                    let mark = loc.push_index(i);
                    self.walk(child, rest, loc, count)?;
                    loc.truncate(mark);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether any field the paths select still holds plaintext (a value that is not an envelope). Lets a caller
/// skip resolving a key for documents that are already fully encrypted (replays, restores, unrelated UPDATEs).
pub fn needs_encryption(doc: &Value, paths: &[FieldPath]) -> bool {
    fn walk(v: &Value, steps: &[Step]) -> bool {
        let Some((step, rest)) = steps.split_first() else {
            return !matches!(v, Value::String(s) if looks_like_envelope(s));
        };
        match (step, v) {
            (Step::Key(k), Value::Object(map)) => map.get(k.as_str()).is_some_and(|c| walk(c, rest)),
            (Step::Index(i), Value::Array(items)) => items.get(*i).is_some_and(|c| walk(c, rest)),
            (Step::Wildcard, Value::Array(items)) => items.iter().any(|c| walk(c, rest)),
            _ => false,
        }
    }
    paths.iter().any(|p| walk(doc, p.steps()))
}

/// The single value a wildcard-free path selects, if present.
pub fn value_at<'v>(doc: &'v Value, path: &FieldPath) -> Option<&'v Value> {
    let mut v = doc;
    for step in path.steps() {
        v = match (step, v) {
            (Step::Key(k), Value::Object(map)) => map.get(k.as_str())?,
            (Step::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// What decryption does with a value whose key was shredded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShredded {
    /// Replace the value with JSON null (the default).
    Null,
    /// Leave the envelope in place.
    Keep,
    /// Raise the shredded-key error.
    Error,
}

impl OnShredded {
    pub fn parse(s: &str) -> Result<OnShredded> {
        match s {
            "null" => Ok(OnShredded::Null),
            "keep" => Ok(OnShredded::Keep),
            "error" => Ok(OnShredded::Error),
            other => Err(Error::invalid_argument(format!(
                "unknown on_shredded policy \"{}\"",
                crate::aead::truncate_for_message(other)
            ))
            .with_hint("Use 'null', 'keep' or 'error'.")),
        }
    }
}

/// The outcome of looking up the key of an envelope.
pub enum KeyLookup {
    Found(Rc<Cipher>),
    Shredded,
}

/// Looks up keys by (key id, version); errors for unknown keys, master key problems and so on.
pub trait KeySource {
    fn decryption_key(&mut self, key_id: &str, version: u32) -> Result<KeyLookup>;
}

/// Decrypts every envelope in a document, wherever it is.
pub struct Decryptor<'a, K: KeySource> {
    keys: &'a mut K,
    context: Option<&'a [u8]>,
    on_shredded: OnShredded,
    aad: Vec<u8>,
    pub decrypted: usize,
    pub shredded: usize,
}

impl<'a, K: KeySource> Decryptor<'a, K> {
    pub fn new(keys: &'a mut K, context: Option<&'a [u8]>, on_shredded: OnShredded) -> Self {
        Decryptor {
            keys,
            context,
            on_shredded,
            aad: Vec::new(),
            decrypted: 0,
            shredded: 0,
        }
    }

    /// Decrypts one envelope text at `loc`; `Ok(None)` when the key is shredded and the policy keeps or nulls it.
    fn open(&mut self, text: &str, loc: &Location) -> Result<Option<Value>> {
        let env = Envelope::parse(text, loc)?;
        let cipher = match self.keys.decryption_key(&env.key_id, env.key_version)? {
            KeyLookup::Found(c) => c,
            KeyLookup::Shredded => {
                self.shredded += 1;
                return match self.on_shredded {
                    OnShredded::Error => Err(Error::key_shredded(&env.key_id)),
                    _ => Ok(None),
                };
            }
        };
        let pt = env.open(&cipher, loc, self.context, &mut self.aad)?;
        let v: Value = serde_json::from_slice(&pt).map_err(|_| {
            Error::new(ErrorKind::MalformedEnvelope, "decrypted value is not JSON")
                .with_detail("the envelope authenticated but its content is not a JSON value")
        })?;
        self.decrypted += 1;
        Ok(Some(v))
    }

    /// Decrypts a single value encrypted by `encrypt_value` (bound to the root location).
    pub fn decrypt_value(&mut self, text: &str) -> Result<Option<Value>> {
        match self.open(text, &Location::root())? {
            Some(v) => Ok(Some(v)),
            None if self.on_shredded == OnShredded::Keep => Ok(Some(Value::String(text.to_string()))),
            None => Ok(None),
        }
    }

    pub fn decrypt_document(&mut self, doc: &mut Value) -> Result<()> {
        let mut loc = Location::root();
        self.walk(doc, &mut loc)
    }

    fn walk(&mut self, v: &mut Value, loc: &mut Location) -> Result<()> {
        match v {
            Value::String(s) if looks_like_envelope(s) => {
                if let Some(plain) = self.open(s, loc)? {
                    *v = plain;
                } else if self.on_shredded == OnShredded::Null {
                    *v = Value::Null;
                }
            }
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    let mark = loc.push_key(k);
                    self.walk(child, loc)?;
                    loc.truncate(mark);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    let mark = loc.push_index(i);
                    self.walk(child, loc)?;
                    loc.truncate(mark);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
