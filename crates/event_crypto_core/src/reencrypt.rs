//! Re-encryption: moving envelopes to the newest version of their key id (same plaintext, same location and
//! context, fresh nonce), and inspecting which key versions a document uses, without decrypting anything.

use crate::aead::{Cipher, NONCE_LEN};
use crate::document::{may_hold_envelope, rewrite_children, root_envelope, ChildRewriter, KeyLookup, KeySource};
use crate::envelope::{looks_like_envelope, seal_into, Envelope, Scratch, SealKey};
use crate::error::{Error, Result};
use crate::jsonb::{
    copy_value, new_datum_buffer, set_varlena_header, too_deep, Container, Document, EntryType, Parsed, Value,
    MAX_DEPTH, T_CONTAINER, T_STRING,
};
use crate::path::Location;
use std::rc::Rc;

/// The version new encryptions of a key id use.
pub trait NewestKey {
    /// The active version of `key_id` and its cipher; `None` when the key id is shredded or has no active
    /// version (its envelopes are then left as they are).
    fn newest_key(&mut self, key_id: &str) -> Result<Option<(u32, Rc<Cipher>)>>;

    /// Called after each value sealed under `key_id` version `version` (for usage counting).
    fn sealed(&mut self, key_id: &str, version: u32);
}

/// Rewrites every envelope of a document whose key version is older than its key id's active version.
pub struct Reencryptor<'a, K: KeySource + NewestKey> {
    keys: &'a mut K,
    context: Option<&'a [u8]>,
    loc: Location,
    aad: Vec<u8>,
    blob: Vec<u8>,
    scratch: Scratch,
    /// Envelopes moved to a newer version.
    pub reencrypted: usize,
    /// Envelopes already under the active version (or whose key id has none), left as they are.
    pub current: usize,
    /// Envelopes whose key or key version is shredded, left as they are.
    pub shredded: usize,
}

impl<K: KeySource + NewestKey> Drop for Reencryptor<'_, K> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.blob);
    }
}

impl<'a, K: KeySource + NewestKey> Reencryptor<'a, K> {
    pub fn new(keys: &'a mut K, context: Option<&'a [u8]>) -> Self {
        Reencryptor {
            keys,
            context,
            loc: Location::root(),
            aad: Vec::new(),
            blob: Vec::new(),
            scratch: Scratch::default(),
            reencrypted: 0,
            current: 0,
            shredded: 0,
        }
    }

    /// Writes the document with stale envelopes re-encrypted into `out` (a datum with its header). Returns false,
    /// leaving `out` unspecified, when nothing changed and the document can be kept as it is. An envelope that
    /// does not authenticate (tampered, wrong context, moved) fails the whole document: nothing is re-encrypted
    /// that could not be decrypted.
    pub fn reencrypt_document(&mut self, doc: &Document<'_>, out: &mut Vec<u8>) -> Result<bool> {
        self.loc = Location::root();
        let before = self.reencrypted;
        let root = doc.root();
        if root.is_scalar() {
            let Some(s) = root_envelope(doc)? else {
                return Ok(false);
            };
            let mut text = Vec::new();
            self.reseal(s, &mut text)?;
            if self.reencrypted == before {
                return Ok(false);
            }
            Parsed::String(text).write_document(out)?;
            return Ok(true);
        }
        new_datum_buffer(out);
        self.rewrite(root, out, 0)?;
        if self.reencrypted == before {
            return Ok(false);
        }
        set_varlena_header(out)?;
        Ok(true)
    }

    fn rewrite(&mut self, c: Container<'_>, out: &mut Vec<u8>, depth: usize) -> Result<()> {
        rewrite_children(self, c, out, depth)
    }

    /// Appends the envelope text `s` to `out`, re-encrypted under the newest version when it is older.
    fn reseal(&mut self, s: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let text =
            std::str::from_utf8(s).map_err(|_| Error::malformed(&self.loc.display(), "the value is not UTF-8"))?;
        let mut env = Envelope::parse_reusing(text, &self.loc, std::mem::take(&mut self.blob))?;
        let keep = |this: &mut Self, env: Envelope, out: &mut Vec<u8>| {
            this.blob = env.into_blob();
            out.extend_from_slice(s);
        };
        let newest = match self.keys.newest_key(&env.key_id)? {
            Some((v, c)) if v > env.key_version => (v, c),
            _ => {
                self.current += 1;
                keep(self, env, out);
                return Ok(());
            }
        };
        let old = match self.keys.decryption_key(&env.key_id, env.key_version)? {
            KeyLookup::Found(c) => c,
            // a disabled version stays as it is too: moving it would need its key
            KeyLookup::Shredded | KeyLookup::Disabled => {
                self.shredded += 1;
                keep(self, env, out);
                return Ok(());
            }
        };
        let nonce: Result<[u8; NONCE_LEN]> = crate::random::nonce();
        let key_id = env.key_id.clone();
        let result = match (env.open_in_place(&old, &self.loc, self.context, &mut self.aad), nonce) {
            (Ok(pt), Ok(nonce)) => {
                let key = SealKey {
                    cipher: &newest.1,
                    key_id: &key_id,
                    version: newest.0,
                };
                seal_into(&key, &self.loc, self.context, pt, &nonce, &mut self.scratch, out)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let mut blob = env.into_blob();
        zeroize::Zeroize::zeroize(&mut blob);
        self.blob = blob;
        result?;
        self.keys.sealed(&key_id, newest.0);
        self.reencrypted += 1;
        Ok(())
    }
}

impl<K: KeySource + NewestKey> ChildRewriter for Reencryptor<'_, K> {
    fn location(&mut self) -> &mut Location {
        &mut self.loc
    }

    fn child(&mut self, v: Value<'_>, out: &mut Vec<u8>, depth: usize) -> Result<EntryType> {
        match v {
            Value::String(s) if looks_like_envelope(s) => {
                self.reseal(s, out)?;
                Ok(T_STRING)
            }
            Value::Object(c) | Value::Array(c) if may_hold_envelope(c, depth + 1)? => {
                self.rewrite(c, out, depth + 1)?;
                Ok(T_CONTAINER)
            }
            other => copy_value(out, &other),
        }
    }
}

/// Calls `f` with every envelope of a document (parsed, not authenticated) until it returns `true`; returns
/// whether it did. A string that claims to be an envelope but does not parse is an error, as on decryption.
pub fn any_envelope(doc: &Document<'_>, mut f: impl FnMut(&Envelope) -> Result<bool>) -> Result<bool> {
    fn walk(
        v: Value<'_>,
        loc: &mut Location,
        depth: usize,
        f: &mut dyn FnMut(&Envelope) -> Result<bool>,
    ) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        match v {
            Value::String(s) if looks_like_envelope(s) => {
                let text =
                    std::str::from_utf8(s).map_err(|_| Error::malformed(&loc.display(), "the value is not UTF-8"))?;
                f(&Envelope::parse(text, loc)?)
            }
            Value::Object(c) => {
                for pair in c.pairs() {
                    let (k, child) = pair?;
                    let mark = loc.push_key_bytes(k);
                    let hit = walk(child, loc, depth + 1, f);
                    loc.truncate(mark);
                    if hit? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Value::Array(c) => {
                for (i, e) in c.elements().enumerate() {
                    let mark = loc.push_index(i);
                    let hit = walk(e?, loc, depth + 1, f);
                    loc.truncate(mark);
                    if hit? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }
    walk(doc.value()?, &mut Location::root(), 0, &mut f)
}

/// Whether [`Reencryptor`] would move some envelope of the document: one under an older version than its key
/// id's active one, whose own version still exists (envelopes under a destroyed version stay as they are).
pub fn has_stale_envelopes<K: KeySource + NewestKey>(doc: &Document<'_>, keys: &mut K) -> Result<bool> {
    any_envelope(doc, |env| {
        if !matches!(keys.newest_key(&env.key_id)?, Some((v, _)) if v > env.key_version) {
            return Ok(false);
        }
        Ok(matches!(
            keys.decryption_key(&env.key_id, env.key_version)?,
            KeyLookup::Found(_)
        ))
    })
}

/// Whether some envelope of the document is under `key_id` version `version`.
pub fn uses_key_version(doc: &Document<'_>, key_id: &str, version: u32) -> Result<bool> {
    any_envelope(doc, |env| Ok(env.key_id == key_id && env.key_version == version))
}

/// Whether some envelope written into free text (a `text` or `json` column, a document stored as text) is under
/// `key_id` version `version`. Every `$ec1$` in the text starts a candidate: the base64url characters after it
/// must parse as an envelope (headers only; nothing is decrypted). Text that merely looks like an envelope and
/// does not parse is not one here (free text may hold anything); the count is of values that do hold one.
pub fn text_uses_key_version(text: &[u8], key_id: &str, version: u32) -> bool {
    let prefix = crate::envelope::PREFIX.as_bytes();
    let finder = memchr::memmem::Finder::new(prefix);
    let mut from = 0;
    let loc = Location::root();
    while let Some(at) = finder.find(&text[from..]) {
        let start = from + at;
        let body = &text[start + prefix.len()..];
        let len = body
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
            .count();
        let token = &text[start..start + prefix.len() + len];
        if let Ok(t) = std::str::from_utf8(token) {
            if let Ok(env) = Envelope::parse(t, &loc) {
                if env.key_id == key_id && env.key_version == version {
                    return true;
                }
            }
        }
        from = start + prefix.len() + len;
    }
    false
}
