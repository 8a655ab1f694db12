//! Decrypting documents held as [`serde_json::Value`] (feature `json`): what a consumer outside PostgreSQL reads
//! from a table or a change stream, decrypted exactly as the SQL function `decrypt_fields(payload, context,
//! on_shredded)` decrypts a jsonb document.
//!
//! Every string that is an envelope, wherever it is, is opened under the location it sits at (the path of object
//! keys and array indices, [`Location`]) and the context, through a [`KeySource`], by the core's own envelope code
//! ([`crate::document::open_at`]); its plaintext, parsed as JSON with numbers kept exactly (serde_json's
//! `arbitrary_precision`), replaces the string. A document that is itself one envelope (what `encrypt_value`
//! makes) is opened at the root location. The rules are those of [`crate::document::Decryptor`]:
//!
//! - a shredded key or version follows [`OnShredded`]: JSON null, the envelope kept, or the shredded-key error;
//! - a disabled version (retire_key_version) reads as shredded under `null` and `keep`, and fails with
//!   [`ErrorKind::KeyDisabled`] under `error`;
//! - an envelope that is malformed, of an unknown format, bound to another context (or to none), moved from
//!   another field, altered, or under an unknown key is an error;
//! - documents and decrypted values may nest [`MAX_DEPTH`] levels deep, as in jsonb.
//!
//! In addition, a key the source may not hand out (a consumer whose key pattern excludes it; the source returns
//! an error of kind [`ErrorKind::PermissionDenied`]) follows [`OnWithheld`].

use crate::document::{open_at, shredded_error, KeySource, OnShredded};
use crate::envelope::{looks_like_envelope, Envelope, KeyHandle, KeyRef};
use crate::error::{Error, ErrorKind, Result};
use crate::jsonb::{too_deep, MAX_DEPTH};
use crate::path::Location;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// What decryption does with an envelope whose key the key source withholds (reports as
/// [`ErrorKind::PermissionDenied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnWithheld {
    /// Leave the envelope text in place (the default).
    #[default]
    Keep,
    /// Replace the value with JSON null.
    Null,
    /// Return the key source's error.
    Error,
}

impl OnWithheld {
    /// `keep`, `null` or `error`.
    pub fn parse(s: &str) -> Result<OnWithheld> {
        match s {
            "keep" => Ok(OnWithheld::Keep),
            "null" => Ok(OnWithheld::Null),
            "error" => Ok(OnWithheld::Error),
            _ => Err(Error::invalid_argument("unknown on_withheld policy").with_hint("Use 'keep', 'null' or 'error'.")),
        }
    }
}

/// How an envelope names its key, owned: a key id (format 1) or a key id's handle (format 2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnedKeyRef {
    Id(String),
    Handle(KeyHandle),
}

impl OwnedKeyRef {
    pub fn as_key_ref(&self) -> KeyRef<'_> {
        match self {
            OwnedKeyRef::Id(id) => KeyRef::Id(id),
            OwnedKeyRef::Handle(h) => KeyRef::Handle(*h),
        }
    }
}

impl From<KeyRef<'_>> for OwnedKeyRef {
    fn from(k: KeyRef<'_>) -> OwnedKeyRef {
        match k {
            KeyRef::Id(id) => OwnedKeyRef::Id(id.to_string()),
            KeyRef::Handle(h) => OwnedKeyRef::Handle(h),
        }
    }
}

impl fmt::Display for OwnedKeyRef {
    /// As [`KeyRef`] shows: `"<key id>"` or `with handle <16 hex digits>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_key_ref().fmt(f)
    }
}

/// Every (key, version) the envelopes of `doc` name, added to `out` (deduplicated by the set), for fetching the
/// keys of a batch of documents at once before decrypting them. Strings that look like envelopes but do not parse
/// are skipped (decryption reports them).
pub fn envelope_keys(doc: &Value, out: &mut HashSet<(OwnedKeyRef, u32)>) {
    let root = Location::root();
    let mut blob = Vec::new();
    let mut stack = vec![doc];
    let mut seen = 0usize;
    while let Some(v) = stack.pop() {
        crate::check_interrupts_every(seen);
        seen += 1;
        match v {
            Value::String(s) if looks_like_envelope(s) => {
                // the location only appears in parse errors, which are skipped here
                if let Ok(env) = Envelope::parse_reusing(s, &root, std::mem::take(&mut blob)) {
                    out.insert((OwnedKeyRef::from(env.key()), env.key_version));
                    blob = env.into_blob();
                }
            }
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
}

/// Decrypts every envelope of a [`serde_json::Value`] document, wherever it is (see the module documentation).
pub struct JsonDecryptor<'a, K: KeySource> {
    keys: &'a mut K,
    context: Option<&'a [u8]>,
    on_shredded: OnShredded,
    on_withheld: OnWithheld,
    loc: Location,
    aad: Vec<u8>,
    /// The decoded envelope being opened (reused; wiped after every envelope).
    blob: Vec<u8>,
    /// Envelopes decrypted.
    pub decrypted: usize,
    /// Envelopes whose key or version is shredded or disabled.
    pub shredded: usize,
    /// Envelopes whose key the key source withheld.
    pub withheld: usize,
}

/// What replaces an envelope.
enum Outcome {
    Plain(Value),
    Null,
    Keep,
}

impl<'a, K: KeySource> JsonDecryptor<'a, K> {
    /// Decrypts with the keys of `keys`, envelopes bound to `context` (`None`: envelopes bound to no context;
    /// check a caller's text with [`crate::document::check_context`]), shredded keys handled by `on_shredded`.
    /// Withheld keys are kept ([`OnWithheld::Keep`]) unless [`JsonDecryptor::on_withheld`] says otherwise.
    pub fn new(keys: &'a mut K, context: Option<&'a [u8]>, on_shredded: OnShredded) -> Self {
        JsonDecryptor {
            keys,
            context,
            on_shredded,
            on_withheld: OnWithheld::default(),
            loc: Location::root(),
            aad: Vec::new(),
            blob: Vec::new(),
            decrypted: 0,
            shredded: 0,
            withheld: 0,
        }
    }

    /// What to do with envelopes whose key the source withholds.
    pub fn on_withheld(mut self, p: OnWithheld) -> Self {
        self.on_withheld = p;
        self
    }

    /// Decrypts `doc` in place. On an error `doc` may be partly decrypted: drop it.
    pub fn decrypt(&mut self, doc: &mut Value) -> Result<()> {
        self.loc = Location::root();
        match doc {
            Value::Object(_) | Value::Array(_) => self.walk(doc, 0),
            // a document that is one envelope, as encrypt_value makes them: bound to the root location
            _ => self.child(doc, 0),
        }
    }

    /// Walks container `v` at `depth` (the document root is at 0).
    fn walk(&mut self, v: &mut Value, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        match v {
            Value::Object(map) => {
                for (i, (k, child)) in map.iter_mut().enumerate() {
                    crate::check_interrupts_every(i);
                    if may_be_or_hold_envelope(child) {
                        let mark = self.loc.push_key(k);
                        let r = self.child(child, depth + 1);
                        self.loc.truncate(mark);
                        r?;
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    crate::check_interrupts_every(i);
                    if may_be_or_hold_envelope(child) {
                        let mark = self.loc.push_index(i);
                        let r = self.child(child, depth + 1);
                        self.loc.truncate(mark);
                        r?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Decrypts value `v`, at `depth` and at the current location.
    fn child(&mut self, v: &mut Value, depth: usize) -> Result<()> {
        match v {
            Value::String(s) if looks_like_envelope(s.as_bytes()) => {
                match self.open(s.as_bytes(), depth)? {
                    Outcome::Plain(plain) => *v = plain,
                    Outcome::Null => *v = Value::Null,
                    Outcome::Keep => {}
                }
                Ok(())
            }
            Value::Object(_) | Value::Array(_) => self.walk(v, depth),
            _ => Ok(()),
        }
    }

    /// Opens one envelope at the current location; its value will sit at `depth`.
    fn open(&mut self, text: &[u8], depth: usize) -> Result<Outcome> {
        let opened =
            open_at(self.keys, text, &self.loc, self.context, &mut self.aad, &mut self.blob).and_then(|range| {
                match range {
                    Some(r) => parse_plaintext(&self.blob[r], depth).map(Some),
                    None => Ok(None),
                }
            });
        zeroize::Zeroize::zeroize(&mut self.blob);
        let unopened = |keep: bool| if keep { Outcome::Keep } else { Outcome::Null };
        match opened {
            Ok(Some(v)) => {
                self.decrypted += 1;
                Ok(Outcome::Plain(v))
            }
            Ok(None) => {
                self.shredded += 1;
                if self.on_shredded == OnShredded::Error {
                    return Err(shredded_error(self.keys, text, &self.loc));
                }
                Ok(unopened(self.on_shredded == OnShredded::Keep))
            }
            Err(e) if e.kind() == ErrorKind::KeyDisabled && self.on_shredded != OnShredded::Error => {
                self.shredded += 1;
                Ok(unopened(self.on_shredded == OnShredded::Keep))
            }
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                self.withheld += 1;
                match self.on_withheld {
                    OnWithheld::Error => Err(e),
                    p => Ok(unopened(p == OnWithheld::Keep)),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether a value is an envelope or a container (that may hold one): only those are visited with a location.
fn may_be_or_hold_envelope(v: &Value) -> bool {
    match v {
        Value::String(s) => looks_like_envelope(s.as_bytes()),
        Value::Object(_) | Value::Array(_) => true,
        _ => false,
    }
}

/// Parses a decrypted plaintext that will sit at `depth`. The nesting is checked first against [`MAX_DEPTH`] (the
/// limit jsonb's writer applies to a decrypted value in the SQL functions), so serde_json can parse without its
/// own, lower recursion limit.
fn parse_plaintext(pt: &[u8], depth: usize) -> Result<Value> {
    if depth + nesting(pt, MAX_DEPTH + 1) > MAX_DEPTH {
        return Err(too_deep());
    }
    let mut de = serde_json::Deserializer::from_slice(pt);
    de.disable_recursion_limit();
    Value::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|_| {
            Error::new(ErrorKind::MalformedEnvelope, "decrypted value is not JSON")
                .with_detail("the envelope authenticated but its content is not a JSON value jsonb can hold")
        })
}

/// The depth of the most deeply nested value of the JSON text `t` relative to its top value (0 for a scalar or an
/// empty container, 1 for `[1]` or `{"a":1}`), counting no further than `limit`. Not a validation: the parser does
/// that afterwards.
pub fn nesting(t: &[u8], limit: usize) -> usize {
    let (mut level, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &c in t {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' => {}
            b']' | b'}' => level = level.saturating_sub(1),
            _ => {
                // a value starts here (or continues: a number's or a literal's further characters, at the same
                // level); an object key always comes with a value at its level
                deepest = deepest.max(level);
                match c {
                    b'[' | b'{' => level += 1,
                    b'"' => in_string = true,
                    _ => {}
                }
                if deepest >= limit {
                    return limit;
                }
            }
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_value_depth() {
        for (t, n) in [
            ("1", 0),
            ("\"a\"", 0),
            ("[]", 0),
            ("{}", 0),
            ("[1]", 1),
            ("[[]]", 1),
            ("[[1]]", 2),
            ("{\"a\":1}", 1),
            ("{\"a\":{\"b\":[]}}", 2),
            ("{\"a\":{\"b\":[null]}}", 3),
            ("[\"[[[[\", 1]", 1),
            ("[\"\\\"[[\", {}]", 1),
            (" [ 1 , [ 2 ] ] ", 2),
        ] {
            assert_eq!(nesting(t.as_bytes(), 100), n, "{t}");
        }
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert_eq!(nesting(deep.as_bytes(), 1001), 1001);
    }

    #[test]
    fn on_withheld_parses() {
        assert_eq!(OnWithheld::parse("keep").unwrap(), OnWithheld::Keep);
        assert_eq!(OnWithheld::parse("null").unwrap(), OnWithheld::Null);
        assert_eq!(OnWithheld::parse("error").unwrap(), OnWithheld::Error);
        assert_eq!(OnWithheld::default(), OnWithheld::Keep);
        assert_eq!(
            OnWithheld::parse("Keep").unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
