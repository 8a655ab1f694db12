//! Encrypting and decrypting fields of a jsonb document, working on its binary form: selected values are
//! replaced, everything else is copied byte for byte.

use crate::aead::{Cipher, NONCE_LEN};
use crate::envelope::{check_key_id, looks_like_envelope, seal_into, Envelope, Scratch, SealKey};
use crate::error::{Error, ErrorKind, Result};
use crate::jsonb::{
    copy_value, new_datum_buffer, parse_json, set_varlena_header, too_deep, write_json, write_string, Container,
    ContainerWriter, Document, EntryType, Parsed, Value, MAX_DEPTH, T_CONTAINER, T_NULL,
};
use crate::path::{FieldPath, Location, Selector, SelectorNode, Step};
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

/// Whether a string is an envelope that belongs where it is (structurally; authentication happens on decryption).
fn is_envelope_at(s: &[u8], loc: &Location) -> bool {
    looks_like_envelope(s) && std::str::from_utf8(s).is_ok_and(|t| Envelope::parse(t, loc).is_ok())
}

/// The buffers an encryptor works in, kept per thread between encryptors so a scan allocates them once.
#[derive(Default)]
struct Buffers {
    scratch: Scratch,
    plaintext: Vec<u8>,
    loc: Location,
}

thread_local! {
    static SPARE: std::cell::RefCell<Option<Buffers>> = const { std::cell::RefCell::new(None) };
}

/// Encrypts values one at a time with fresh nonces, reusing its buffers.
pub struct Encryptor<'a> {
    key: SealKey<'a>,
    context: Option<&'a [u8]>,
    scratch: Scratch,
    plaintext: Vec<u8>,
    loc: Location,
    count: usize,
}

impl Drop for Encryptor<'_> {
    fn drop(&mut self) {
        // the plaintext buffer is wiped before it waits for the next encryptor
        zeroize::Zeroize::zeroize(&mut self.plaintext);
        let bufs = Buffers {
            scratch: std::mem::take(&mut self.scratch),
            plaintext: std::mem::take(&mut self.plaintext),
            loc: std::mem::take(&mut self.loc),
        };
        if bufs.plaintext.capacity() <= 1 << 16 {
            let _ = SPARE.try_with(|s| s.replace(Some(bufs)));
        }
    }
}

impl<'a> Encryptor<'a> {
    pub fn new(cipher: &'a Cipher, key_id: &'a str, version: u32, context: Option<&'a [u8]>) -> Encryptor<'a> {
        let bufs = SPARE.try_with(|s| s.take()).ok().flatten().unwrap_or_default();
        Encryptor {
            key: SealKey {
                cipher,
                key_id,
                version,
            },
            context,
            scratch: bufs.scratch,
            plaintext: bufs.plaintext,
            loc: bufs.loc,
            count: 0,
        }
    }

    /// Appends the envelope of `v` (bound to the current location) to `out`.
    fn seal_value(&mut self, v: &Value<'_>, out: &mut Vec<u8>) -> Result<()> {
        self.plaintext.clear();
        write_json(v, &mut self.plaintext, 0)?;
        // Only what decrypts back into jsonb is sealed: a damaged datum (a string that is not UTF-8 or holds a NUL,
        // a corrupt number) must not become an envelope that can never be opened into a value again (found by the
        // jsonb_document fuzz target). Strings, the usual case, are checked directly; numbers and containers are
        // parsed back as decryption would.
        let sound = match v {
            Value::String(s) => !s.contains(&0) && std::str::from_utf8(s).is_ok(),
            Value::Null | Value::Bool(_) => true,
            _ => parse_json(&self.plaintext).is_ok(),
        };
        if !sound {
            return Err(
                Error::invalid_argument("a value to encrypt is not one jsonb can hold").with_detail(
                    "The jsonb datum is damaged: a string is not UTF-8 or holds a NUL, or a number is corrupt.",
                ),
            );
        }
        let nonce: [u8; NONCE_LEN] = crate::random::nonce()?;
        seal_into(
            &self.key,
            &self.loc,
            self.context,
            &self.plaintext,
            &nonce,
            &mut self.scratch,
            out,
        )?;
        self.count += 1;
        Ok(())
    }

    /// Encrypts a single value bound to the document root (`encrypt_value`); returns the envelope text.
    pub fn encrypt_value(&mut self, v: &Value<'_>) -> Result<String> {
        check_key_id(self.key.key_id)?;
        let mut out = Vec::new();
        self.loc = Location::root();
        self.seal_value(v, &mut out)?;
        Ok(String::from_utf8(out).expect("an envelope is ASCII"))
    }

    /// Encrypts every field that the selector selects, writing the new document (a datum with its header) into
    /// `out`. Absent fields are skipped; values that already are envelopes are left as they are. Returns the
    /// number of values encrypted; when it is 0 the document can be kept as it is (see also [`needs_encryption`]).
    pub fn encrypt_document(&mut self, doc: &Document<'_>, selector: &Selector, out: &mut Vec<u8>) -> Result<usize> {
        let root = doc.root();
        if root.is_scalar() {
            return Err(Error::invalid_argument(format!(
                "payload must be a JSON object or array, not a {}",
                doc.value()?.type_name()
            ))
            .with_hint("Use event_crypto.encrypt_value() to encrypt a single value."));
        }
        check_key_id(self.key.key_id)?;
        self.count = 0;
        self.loc = Location::root();
        new_datum_buffer(out);
        self.rewrite(root, selector.root(), out, 0)?;
        set_varlena_header(out)?;
        Ok(self.count)
    }

    fn rewrite(&mut self, c: Container<'_>, node: &SelectorNode, out: &mut Vec<u8>, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        if c.is_object() {
            let mut w = ContainerWriter::object_like(out, &c)?;
            for pair in c.pairs() {
                let (k, v) = pair?;
                let ty = match node.key(k) {
                    Some(n) => {
                        let mark = self.loc.push_key_bytes(k);
                        self.child_at(mark, v, n, out, depth)?
                    }
                    None => copy_value(out, &v)?,
                };
                w.done(out, ty)?;
            }
        } else {
            let mut w = ContainerWriter::array(out, c.len())?;
            for (i, e) in c.elements().enumerate() {
                let v = e?;
                let ty = match node.index(i) {
                    Some(n) => {
                        let mark = self.loc.push_index(i);
                        self.child_at(mark, v, n, out, depth)?
                    }
                    None => copy_value(out, &v)?,
                };
                w.done(out, ty)?;
            }
        }
        Ok(())
    }

    /// [`Encryptor::child`] at a location pushed just before (`mark`), which it pops again.
    fn child_at(
        &mut self,
        mark: usize,
        v: Value<'_>,
        node: &SelectorNode,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<EntryType> {
        let ty = self.child(v, node, out, depth);
        self.loc.truncate(mark);
        ty
    }

    fn child(&mut self, v: Value<'_>, node: &SelectorNode, out: &mut Vec<u8>, depth: usize) -> Result<EntryType> {
        if node.is_selected() {
            if let Value::String(s) = v {
                if is_envelope_at(s, &self.loc) {
                    return Ok(write_string(out, s));
                }
            }
            self.seal_value(&v, out)?;
            return Ok(crate::jsonb::T_STRING);
        }
        match v {
            Value::Object(c) | Value::Array(c) if node.has_children() => {
                self.rewrite(c, node, out, depth + 1)?;
                Ok(T_CONTAINER)
            }
            other => copy_value(out, &other),
        }
    }
}

/// Whether any field the selector selects still holds plaintext (a value that is not an envelope). Lets a caller
/// skip resolving a key for documents that are already fully encrypted (replays, restores, unrelated UPDATEs).
pub fn needs_encryption(doc: &Document<'_>, selector: &Selector) -> Result<bool> {
    fn walk(v: Value<'_>, n: &SelectorNode, depth: usize) -> Result<bool> {
        if n.is_selected() {
            return Ok(!matches!(v, Value::String(s) if looks_like_envelope(s)));
        }
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        match v {
            Value::Object(c) => {
                for (k, child) in n.keys() {
                    if let Some(x) = c.get(k.as_bytes())? {
                        if walk(x, child, depth + 1)? {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            }
            Value::Array(c) => {
                for (i, e) in c.elements().enumerate() {
                    if let Some(child) = n.index(i) {
                        if walk(e?, child, depth + 1)? {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }
    let root = doc.root();
    if root.is_scalar() {
        return Ok(false);
    }
    walk(doc.value()?, selector.root(), 0)
}

/// The single value a wildcard-free path selects, if present.
pub fn value_at<'v>(doc: &Document<'v>, path: &FieldPath) -> Result<Option<Value<'v>>> {
    if doc.root().is_scalar() {
        return Ok(None);
    }
    let mut v = doc.value()?;
    for step in path.steps() {
        let next = match (step, v) {
            (Step::Key(k), Value::Object(c)) => c.get(k.as_bytes())?,
            (Step::Index(i), Value::Array(c)) => c.index(*i)?,
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return Ok(None),
        }
    }
    Ok(Some(v))
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
            // the argument is not echoed: a value passed in the wrong position must not reach a log
            _ => Err(Error::invalid_argument("unknown on_shredded policy").with_hint("Use 'null', 'keep' or 'error'.")),
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
    /// The decoded envelope being opened (reused).
    blob: Vec<u8>,
    loc: Location,
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
            blob: Vec::new(),
            loc: Location::root(),
            decrypted: 0,
            shredded: 0,
        }
    }

    /// Authenticates and decrypts one envelope text at the current location and hands the plaintext to `f`;
    /// `Ok(None)` when the key is shredded and the policy keeps or nulls it.
    fn unseal<R>(&mut self, text: &[u8], f: impl FnOnce(&[u8]) -> Result<R>) -> Result<Option<R>> {
        let loc = &self.loc;
        let text = std::str::from_utf8(text).map_err(|_| Error::malformed(&loc.display(), "the value is not UTF-8"))?;
        let mut env = Envelope::parse_reusing(text, loc, std::mem::take(&mut self.blob))?;
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
        let result = env
            .open_in_place(&cipher, loc, self.context, &mut self.aad)
            .and_then(|pt| {
                f(pt).map_err(|e| match e.kind() {
                    // what the JSON parser refuses; size limits keep their own kind
                    ErrorKind::InvalidArgument => {
                        Error::new(ErrorKind::MalformedEnvelope, "decrypted value is not JSON").with_detail(
                            "the envelope authenticated but its content is not a JSON value jsonb can hold",
                        )
                    }
                    _ => e,
                })
            });
        let mut blob = env.into_blob();
        zeroize::Zeroize::zeroize(&mut blob);
        self.blob = blob;
        let r = result?;
        self.decrypted += 1;
        Ok(Some(r))
    }

    fn open(&mut self, text: &[u8]) -> Result<Option<Parsed>> {
        self.unseal(text, parse_json)
    }

    /// Decrypts a single value encrypted by `encrypt_value` (bound to the root location).
    pub fn decrypt_value(&mut self, text: &str) -> Result<Option<Parsed>> {
        self.loc = Location::root();
        match self.open(text.as_bytes())? {
            Some(v) => Ok(Some(v)),
            None if self.on_shredded == OnShredded::Keep => Ok(Some(Parsed::String(text.as_bytes().to_vec()))),
            None => Ok(None),
        }
    }

    /// Writes the document with every envelope decrypted into `out` (a datum with its header). Returns false,
    /// leaving `out` unspecified, when the document holds no envelope and can be kept as it is.
    pub fn decrypt_document(&mut self, doc: &Document<'_>, out: &mut Vec<u8>) -> Result<bool> {
        self.loc = Location::root();
        let (before_d, before_s) = (self.decrypted, self.shredded);
        let root = doc.root();
        if root.is_scalar() {
            let Some(s) = root_envelope(doc)? else {
                return Ok(false);
            };
            match self.open(s)? {
                Some(v) => v.write_document(out)?,
                None if self.on_shredded == OnShredded::Null => Parsed::Null.write_document(out)?,
                None => return Ok(false),
            }
            return Ok(true);
        }
        new_datum_buffer(out);
        self.rewrite(root, out, 0)?;
        if (self.decrypted, self.shredded) == (before_d, before_s) {
            return Ok(false);
        }
        set_varlena_header(out)?;
        Ok(true)
    }

    fn rewrite(&mut self, c: Container<'_>, out: &mut Vec<u8>, depth: usize) -> Result<()> {
        rewrite_children(self, c, out, depth)
    }
}

impl<K: KeySource> ChildRewriter for Decryptor<'_, K> {
    #[inline]
    fn location(&mut self) -> &mut Location {
        &mut self.loc
    }

    fn child(&mut self, v: Value<'_>, out: &mut Vec<u8>, depth: usize) -> Result<EntryType> {
        match v {
            Value::String(s) if looks_like_envelope(s) => {
                match self.unseal(s, |pt| write_plaintext(pt, out, depth + 1))? {
                    Some(ty) => Ok(ty),
                    None if self.on_shredded == OnShredded::Null => Ok(T_NULL),
                    None => Ok(write_string(out, s)),
                }
            }
            Value::Object(c) | Value::Array(c) if may_hold_envelope(c, depth + 1)? => {
                self.rewrite(c, out, depth + 1)?;
                Ok(T_CONTAINER)
            }
            other => copy_value(out, &other),
        }
    }
}

/// The envelope a scalar document consists of (what `encrypt_value` stored as a jsonb string), if it is one.
pub(crate) fn root_envelope<'a>(doc: &Document<'a>) -> Result<Option<&'a [u8]>> {
    Ok(match doc.value()? {
        Value::String(s) if looks_like_envelope(s) => Some(s),
        _ => None,
    })
}

/// A walk that rebuilds every container it enters and decides child by child (decryption, re-encryption).
pub(crate) trait ChildRewriter {
    /// The location of the child being written (pushed and popped by [`rewrite_children`]).
    fn location(&mut self) -> &mut Location;
    /// Writes one child (at the current location) and returns its entry type.
    fn child(&mut self, v: Value<'_>, out: &mut Vec<u8>, depth: usize) -> Result<EntryType>;
}

/// Rewrites container `c` into `out`: object keys kept byte for byte, each child written by `r.child` at its
/// location.
#[inline]
pub(crate) fn rewrite_children<R: ChildRewriter + ?Sized>(
    r: &mut R,
    c: Container<'_>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    if c.is_object() {
        let mut w = ContainerWriter::object_like(out, &c)?;
        for pair in c.pairs() {
            let (k, v) = pair?;
            let mark = r.location().push_key_bytes(k);
            let ty = r.child(v, out, depth);
            r.location().truncate(mark);
            w.done(out, ty?)?;
        }
    } else {
        let mut w = ContainerWriter::array(out, c.len())?;
        for (i, e) in c.elements().enumerate() {
            let mark = r.location().push_index(i);
            let ty = r.child(e?, out, depth);
            r.location().truncate(mark);
            w.done(out, ty?)?;
        }
    }
    Ok(())
}

/// Writes a decrypted plaintext (JSON text) as a jsonb child. A plain string, the usual case, is copied straight
/// from between its quotes; anything else goes through the JSON parser.
fn write_plaintext(pt: &[u8], out: &mut Vec<u8>, depth: usize) -> Result<EntryType> {
    if let [b'"', inner @ .., b'"'] = pt {
        if inner.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\') && std::str::from_utf8(inner).is_ok() {
            return Ok(write_string(out, inner));
        }
    }
    parse_json(pt)?.write(out, depth)
}

/// Whether a container holds a string that looks like an envelope anywhere inside (keys aside); containers
/// without one are copied whole instead of being rebuilt.
pub(crate) fn may_hold_envelope(c: Container<'_>, depth: usize) -> Result<bool> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let check = |v: Value<'_>| -> Result<bool> {
        match v {
            Value::String(s) => Ok(looks_like_envelope(s)),
            Value::Object(inner) | Value::Array(inner) => may_hold_envelope(inner, depth + 1),
            _ => Ok(false),
        }
    };
    if c.is_object() {
        for v in c.values() {
            if check(v?)? {
                return Ok(true);
            }
        }
    } else {
        for v in c.elements() {
            if check(v?)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
