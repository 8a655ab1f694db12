//! Re-encryption: moving envelopes to the newest version of their key id and to the envelope format new
//! encryptions write (same plaintext, same location and context, fresh nonce), and inspecting which key versions
//! a document uses, without decrypting anything.

use crate::aead::{Cipher, NONCE_LEN};
use crate::compress::{Compression, DEFAULT_THRESHOLD};
use crate::document::{
    key_label, may_hold_envelope, rewrite_children, root_envelope, ChildRewriter, KeyLookup, KeySource,
};
use crate::envelope::{
    looks_like_envelope, seal_json_into, Envelope, Format, KeyHandle, KeyNames, KeyRef, Scratch, SealKey, PREFIX_V1,
    PREFIX_V2,
};
use crate::error::{Error, Result};
use crate::jsonb::{
    copy_value, new_datum_buffer, set_varlena_header, too_deep, Container, Document, EntryType, Parsed, Value,
    MAX_DEPTH, T_CONTAINER, T_STRING,
};
use crate::path::Location;
use std::rc::Rc;

/// The version new encryptions of a key id use, with its cipher and what envelopes name the key id by.
pub struct Newest {
    pub version: u32,
    pub cipher: Rc<Cipher>,
    pub key_id: String,
    pub handle: Option<KeyHandle>,
}

impl Newest {
    pub fn names(&self) -> KeyNames<'_> {
        KeyNames {
            key_id: &self.key_id,
            handle: self.handle,
        }
    }
}

/// The version new encryptions of a key id use.
pub trait NewestKey {
    /// The active version of the key id an envelope names (`key`: its id, or its handle), its cipher and names;
    /// `None` when the key id is shredded or has no active version (its envelopes are then left as they are).
    fn newest_key(&mut self, key: KeyRef<'_>) -> Result<Option<Newest>>;

    /// Called after each value sealed under `key_id` version `version` (for usage counting).
    fn sealed(&mut self, key_id: &str, version: u32);
}

/// Whether an envelope of `format` under `version` moves when its key id's active version is `newest` and new
/// envelopes are written in `target`: to a newer version, or to the target format (under the same version).
fn moves(format: Format, version: u32, newest: u32, target: Format) -> bool {
    newest > version || (newest == version && format != target)
}

/// Rewrites every envelope of a document whose key version is older than its key id's active version, or whose
/// format is not the one new envelopes are written in.
pub struct Reencryptor<'a, K: KeySource + NewestKey> {
    keys: &'a mut K,
    context: Option<&'a [u8]>,
    format: Format,
    /// `None`: each envelope keeps its own (a compressed one is compressed again); `Some`: the column's setting.
    compression: Option<Compression>,
    loc: Location,
    aad: Vec<u8>,
    blob: Vec<u8>,
    packed: Vec<u8>,
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
        zeroize::Zeroize::zeroize(&mut self.packed);
    }
}

impl<'a, K: KeySource + NewestKey> Reencryptor<'a, K> {
    pub fn new(keys: &'a mut K, context: Option<&'a [u8]>) -> Self {
        Reencryptor {
            keys,
            context,
            format: Format::DEFAULT,
            compression: None,
            loc: Location::root(),
            aad: Vec::new(),
            blob: Vec::new(),
            packed: Vec::new(),
            scratch: Scratch::default(),
            reencrypted: 0,
            current: 0,
            shredded: 0,
        }
    }

    /// Writes envelopes in `format` (default: [`Format::DEFAULT`]); envelopes in the other format move to it.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Compresses re-encrypted values as `compression` says (a protected column's setting). Without it, each
    /// envelope keeps its own: a compressed one is compressed again (with the default threshold), others are not.
    /// Envelopes written in format 1 are never compressed (that format has no flag for it).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
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

    /// Appends the envelope text `s` to `out`, re-encrypted under the newest version (and in the format new
    /// envelopes are written in) when it is older (or in the other format).
    fn reseal(&mut self, s: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let text =
            std::str::from_utf8(s).map_err(|_| Error::malformed(&self.loc.display(), "the value is not UTF-8"))?;
        let mut env = Envelope::parse_reusing(text, &self.loc, std::mem::take(&mut self.blob))?;
        let keep = |this: &mut Self, env: Envelope, out: &mut Vec<u8>| {
            this.blob = env.into_blob();
            out.extend_from_slice(s);
        };
        let newest = match self.keys.newest_key(env.key())? {
            Some(n) if moves(env.format, env.key_version, n.version, self.format) => n,
            _ => {
                self.current += 1;
                keep(self, env, out);
                return Ok(());
            }
        };
        // how the new envelope names the key (format 2 needs the key id's handle)
        let target = match newest.names().key_ref(self.format) {
            Ok(_) => self.format,
            Err(e) => {
                self.blob = env.into_blob();
                return Err(e);
            }
        };
        let old = match self.keys.decryption_key(env.key(), env.key_version)? {
            KeyLookup::Found(c) => c,
            // a disabled version stays as it is too: moving it would need its key
            KeyLookup::Shredded | KeyLookup::Disabled => {
                self.shredded += 1;
                keep(self, env, out);
                return Ok(());
            }
        };
        let nonce: Result<[u8; NONCE_LEN]> = crate::random::nonce();
        let compression = match (target, self.compression) {
            (Format::V1, _) => Compression::None,
            (Format::V2, Some(c)) => c,
            (Format::V2, None) if env.is_compressed() => Compression::Zstd {
                threshold: DEFAULT_THRESHOLD,
            },
            (Format::V2, None) => Compression::None,
        };
        let handle = match env.key() {
            KeyRef::Handle(h) => Some(h),
            KeyRef::Id(_) => None,
        };
        let keys = &mut *self.keys;
        let opened = match handle {
            Some(h) => env.open_range_as(
                &old,
                &self.loc,
                self.context,
                &mut self.aad,
                Some(&mut || key_label(keys, KeyRef::Handle(h))),
            ),
            None => env.open_range(&old, &self.loc, self.context, &mut self.aad),
        };
        let result = match (opened, nonce, newest.names().key_ref(target)) {
            (Ok(range), Ok(nonce), Ok(key_ref)) => {
                let key = SealKey {
                    cipher: &newest.cipher,
                    key: key_ref,
                    version: newest.version,
                };
                let pt = &env.blob()[range];
                key.check().and_then(|()| {
                    seal_json_into(
                        &key,
                        &self.loc,
                        self.context,
                        pt,
                        compression,
                        &mut self.packed,
                        &nonce,
                        &mut self.scratch,
                        out,
                    )
                    .map(|_| ())
                })
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        };
        let mut blob = env.into_blob();
        zeroize::Zeroize::zeroize(&mut blob);
        self.blob = blob;
        result?;
        self.keys.sealed(&newest.key_id, newest.version);
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

/// Whether [`Reencryptor`] (writing envelopes in `format`) would move some envelope of the document: one under an
/// older version than its key id's active one, or in the other format, whose own version still exists
/// (envelopes under a destroyed version stay as they are).
pub fn has_stale_envelopes<K: KeySource + NewestKey>(doc: &Document<'_>, keys: &mut K, format: Format) -> Result<bool> {
    any_envelope(doc, |env| {
        if !matches!(keys.newest_key(env.key())?, Some(n) if moves(env.format, env.key_version, n.version, format)) {
            return Ok(false);
        }
        Ok(matches!(
            keys.decryption_key(env.key(), env.key_version)?,
            KeyLookup::Found(_)
        ))
    })
}

/// Whether some envelope of the document is under version `version` of the key `key` names: format 1 envelopes
/// by its id, format 2 envelopes by its handle.
pub fn uses_key_version(doc: &Document<'_>, key: KeyNames<'_>, version: u32) -> Result<bool> {
    any_envelope(doc, |env| Ok(key.names(env.key()) && env.key_version == version))
}

/// Whether some envelope written into free text (a `text` or `json` column, a document stored as text) is under
/// version `version` of the key `key` names. Every `$ec1$` and `$ec2$` in the text starts a candidate: the
/// base64url characters after it must parse as an envelope (headers only; nothing is decrypted). Text that merely
/// looks like an envelope and does not parse is not one here (free text may hold anything); the count is of
/// values that do hold one.
pub fn text_uses_key_version(text: &[u8], key: KeyNames<'_>, version: u32) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"$ec"));
    let mut from = 0;
    let loc = Location::root();
    while let Some(at) = FINDER.find(&text[from..]) {
        let start = from + at;
        let rest = &text[start..];
        let prefix_len = if rest.starts_with(PREFIX_V1.as_bytes()) || rest.starts_with(PREFIX_V2.as_bytes()) {
            PREFIX_V1.len()
        } else {
            from = start + 3;
            continue;
        };
        let len = rest[prefix_len..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
            .count();
        let token = &rest[..prefix_len + len];
        if let Ok(t) = std::str::from_utf8(token) {
            if let Ok(env) = Envelope::parse(t, &loc) {
                if key.names(env.key()) && env.key_version == version {
                    return true;
                }
            }
        }
        from = start + prefix_len + len;
    }
    false
}
