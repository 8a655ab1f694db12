//! Encrypting and decrypting fields of a jsonb document, working on its binary form: selected values are
//! replaced, everything else is copied byte for byte.

use crate::aead::{Cipher, NONCE_LEN};
use crate::compress::Compression;
use crate::envelope::{
    compression_needs_format_2, looks_like_envelope, seal_json_into, Envelope, Format, KeyHandle, KeyRef, Scratch,
    SealKey,
};
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
    packed: Vec<u8>,
    loc: Location,
}

thread_local! {
    static SPARE: std::cell::RefCell<Option<Buffers>> = const { std::cell::RefCell::new(None) };
}

/// Encrypts values one at a time with fresh nonces, reusing its buffers.
pub struct Encryptor<'a> {
    key: SealKey<'a>,
    context: Option<&'a [u8]>,
    compression: Compression,
    scratch: Scratch,
    plaintext: Vec<u8>,
    /// The compressed plaintext (when compression is asked for).
    packed: Vec<u8>,
    loc: Location,
    count: usize,
    /// Values sealed compressed.
    pub compressed: usize,
}

impl Drop for Encryptor<'_> {
    fn drop(&mut self) {
        // the plaintext buffer is wiped before it waits for the next encryptor
        zeroize::Zeroize::zeroize(&mut self.plaintext);
        zeroize::Zeroize::zeroize(&mut self.packed);
        let bufs = Buffers {
            scratch: std::mem::take(&mut self.scratch),
            plaintext: std::mem::take(&mut self.plaintext),
            packed: std::mem::take(&mut self.packed),
            loc: std::mem::take(&mut self.loc),
        };
        if bufs.plaintext.capacity() <= 1 << 16 && bufs.packed.capacity() <= 1 << 16 {
            let _ = SPARE.try_with(|s| s.replace(Some(bufs)));
        }
    }
}

impl<'a> Encryptor<'a> {
    /// Encrypts under `cipher`, version `version` of a key that the envelopes name as `key` says: by its id
    /// (format 1) or by its handle (format 2).
    pub fn new(cipher: &'a Cipher, key: KeyRef<'a>, version: u32, context: Option<&'a [u8]>) -> Encryptor<'a> {
        let bufs = SPARE.try_with(|s| s.take()).ok().flatten().unwrap_or_default();
        Encryptor {
            key: SealKey { cipher, key, version },
            context,
            compression: Compression::None,
            scratch: bufs.scratch,
            plaintext: bufs.plaintext,
            packed: bufs.packed,
            loc: bufs.loc,
            count: 0,
            compressed: 0,
        }
    }

    /// Compresses values before sealing them as `compression` says (values longer than its threshold, when that
    /// makes them smaller). Needs envelope format 2: encrypting with compression under a key reference of format 1
    /// fails ([`ErrorKind::Unsupported`]).
    pub fn compress(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Refuses compression with envelopes of format 1 (no flag for it).
    fn check_compression(&self) -> Result<()> {
        if !self.compression.is_none() && self.key.key.format() != Format::V2 {
            return Err(compression_needs_format_2());
        }
        Ok(())
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
        let packed = seal_json_into(
            &self.key,
            &self.loc,
            self.context,
            &self.plaintext,
            self.compression,
            &mut self.packed,
            &nonce,
            &mut self.scratch,
            out,
        )?;
        self.count += 1;
        self.compressed += usize::from(packed);
        Ok(())
    }

    /// Encrypts a single value bound to the document root (`encrypt_value`); returns the envelope text.
    pub fn encrypt_value(&mut self, v: &Value<'_>) -> Result<String> {
        self.key.check()?;
        self.check_compression()?;
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
        self.key.check()?;
        self.check_compression()?;
        check_root_fits(&root, selector)?;
        self.count = 0;
        self.loc = Location::root();
        new_datum_buffer(out);
        self.rewrite(root, selector.root(), out, 0)?;
        set_varlena_header(out)?;
        Ok(self.count)
    }

    #[inline]
    fn rewrite(&mut self, c: Container<'_>, node: &SelectorNode, out: &mut Vec<u8>, depth: usize) -> Result<()> {
        rewrite_selected(self, c, node, out, depth)
    }

    fn child(&mut self, v: Value<'_>, node: &SelectorNode, out: &mut Vec<u8>, depth: usize) -> Result<EntryType> {
        let whole = match &v {
            _ if node.is_selected() => true,
            Value::Object(c) | Value::Array(c) if node.fits(c.is_object(), c.is_array()) => {
                self.rewrite(*c, node, out, depth + 1)?;
                return Ok(T_CONTAINER);
            }
            // JSON null holds nothing to protect
            Value::Null => false,
            // The value does not have the shape its paths expect (an object where `cards[*]` expects an array, a
            // string where `address.street` expects an object): it is encrypted whole rather than stored in
            // plaintext without a word.
            _ => node.has_children(),
        };
        if !whole {
            return copy_value(out, &v);
        }
        if let Value::String(s) = v {
            if is_envelope_at(s, &self.loc) {
                return Ok(write_string(out, s));
            }
        }
        self.seal_value(&v, out)?;
        Ok(crate::jsonb::T_STRING)
    }
}

/// Refuses a document whose root the paths cannot look into (an array where every path starts with a key, an
/// object where every path starts with `[*]` or `[N]`): nothing would be encrypted, and a document root cannot be
/// encrypted whole.
fn check_root_fits(root: &Container<'_>, selector: &Selector) -> Result<()> {
    let node = selector.root();
    if node.has_children() && !node.fits(root.is_object(), root.is_array()) {
        let (is, expected) = if root.is_array() {
            ("an array", "an object")
        } else {
            ("an object", "an array")
        };
        return Err(Error::invalid_argument(format!(
            "payload is {is}, but the field paths expect {expected} at the document root"
        ))
        .with_detail("None of the fields could be found, so nothing would be encrypted.")
        .with_hint("Check the field paths: keys select object members, [*] and [N] select array elements."));
    }
    Ok(())
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
            Value::Object(c) | Value::Array(c) if !n.fits(c.is_object(), c.is_array()) => Ok(n.has_children()),
            Value::Null => Ok(false),
            Value::String(s) if looks_like_envelope(s) => Ok(false),
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
                    crate::check_interrupts_every(i);
                    if let Some(child) = n.index(i) {
                        if walk(e?, child, depth + 1)? {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            }
            // a scalar where the paths expect a container: it is encrypted whole
            _ => Ok(n.has_children()),
        }
    }
    let root = doc.root();
    if root.is_scalar() {
        return Ok(false);
    }
    if !selector.root().has_children() {
        return Ok(false);
    }
    if !selector.root().fits(root.is_object(), root.is_array()) {
        // encrypt_document refuses it, with the reason
        return Ok(true);
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
    /// The version is disabled (its destruction is scheduled): decryption fails closed with
    /// [`ErrorKind::KeyDisabled`], or, where the caller asked shredded values to read as null or be kept
    /// (`on_shredded`), reads as shredded.
    Disabled,
}

/// Looks up keys by how envelopes name them (a key id in format 1, a key id's handle in format 2) and version;
/// errors for unknown keys, master key problems and so on.
pub trait KeySource {
    fn decryption_key(&mut self, key: KeyRef<'_>, version: u32) -> Result<KeyLookup>;

    /// The key id that has `handle`, if the source knows it: used to name the key in messages about format 2
    /// envelopes (which hold only the handle).
    fn key_id_of(&mut self, handle: KeyHandle) -> Option<String> {
        let _ = handle;
        None
    }
}

/// The error for an envelope whose key was shredded, under `on_shredded => 'error'`: it names the key as other
/// messages do (for format 2, the key id its handle belongs to).
pub(crate) fn shredded_error<K: KeySource + ?Sized>(keys: &mut K, text: &[u8], loc: &Location) -> Error {
    let key_id = match Envelope::parse(std::str::from_utf8(text).unwrap_or(""), loc) {
        Ok(e) => key_id_for_message(keys, e.key()),
        Err(_) => String::new(),
    };
    Error::key_shredded(&key_id)
}

/// What follows "key" in a message about an envelope's key: the quoted key id (for format 2, the key id its
/// handle belongs to), or "with handle …" when no key is known to have the handle.
pub(crate) fn key_label<K: KeySource + ?Sized>(keys: &mut K, key: KeyRef<'_>) -> String {
    match key {
        KeyRef::Id(_) => key.to_string(),
        KeyRef::Handle(h) => match keys.key_id_of(h) {
            // a tombstone: the key id is not known, and its digest says nothing to the reader
            Some(id) if crate::digest::is_digest(&id) => format!("{key} (of a key id shredded whole)"),
            Some(id) => KeyRef::Id(&id).to_string(),
            None => key.to_string(),
        },
    }
}

/// The key id an envelope names, for messages that quote a key id: for format 2 the key id its handle belongs
/// to, or "handle …" when no key is known to have the handle.
pub(crate) fn key_id_for_message<K: KeySource + ?Sized>(keys: &mut K, key: KeyRef<'_>) -> String {
    match key {
        KeyRef::Id(id) => id.to_string(),
        KeyRef::Handle(h) => match keys.key_id_of(h) {
            Some(id) if crate::digest::is_digest(&id) => format!("handle {h} (shredded whole)"),
            Some(id) => id,
            None => format!("handle {h}"),
        },
    }
}

/// What decryption does with an envelope that is not what it should be: malformed, of an unknown format, under a
/// key the row is not bound to, bound to another context or field, or failing authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    /// Raise the error (`decrypt_fields`, `decrypt_value`).
    Error,
    /// Replace the value with JSON null (the decrypted view, `export_subject`: one bad row must not make a whole
    /// table unreadable).
    Null,
    /// Leave the envelope text in place.
    Keep,
}

impl OnInvalid {
    /// Whether an error of this kind is a property of the one envelope (and so follows the policy) rather than of
    /// the server or the key catalog (which always raises: a missing master key must not read as nulls).
    pub fn applies_to(kind: ErrorKind) -> bool {
        matches!(
            kind,
            ErrorKind::MalformedEnvelope
                | ErrorKind::UnsupportedVersion
                | ErrorKind::EnvelopeNotBound
                | ErrorKind::ContextMismatch
                | ErrorKind::AuthenticationFailed
                | ErrorKind::UnknownKey
        )
    }
}

/// The keys a row's envelopes may use, as envelopes name them (see [`crate::subject`] for subject keys): a format 1
/// envelope by key id, a format 2 envelope by the key id's handle.
pub type Binding<'a> = &'a dyn Fn(KeyRef<'_>) -> bool;

/// What opening one envelope gave.
enum Opened<R> {
    Plain(R),
    Shredded,
    Invalid,
}

/// Parses, checks the binding of, and authenticates one envelope text at `loc`; the plaintext is in `blob` at the
/// returned range. Errors are those of the envelope (malformed, not bound, unknown key version, authentication)
/// or of the key catalog.
fn open_envelope<K: KeySource>(
    keys: &mut K,
    text: &[u8],
    loc: &Location,
    context: Option<&[u8]>,
    binding: Option<Binding<'_>>,
    aad: &mut Vec<u8>,
    blob: &mut Vec<u8>,
) -> Result<Option<std::ops::Range<usize>>> {
    let text = std::str::from_utf8(text).map_err(|_| Error::malformed(&loc.display(), "the value is not UTF-8"))?;
    let mut env = Envelope::parse_reusing(text, loc, std::mem::take(blob))?;
    let result = (|| {
        if let Some(allowed) = binding {
            if !allowed(env.key()) {
                return Err(not_bound(
                    loc,
                    &key_label(keys, env.key()),
                    "it is under a key this row is not encrypted with",
                ));
            }
        }
        let handle = match env.key() {
            KeyRef::Handle(h) => Some(h),
            KeyRef::Id(_) => None,
        };
        match keys.decryption_key(env.key(), env.key_version)? {
            KeyLookup::Found(cipher) => match handle {
                // a failure names the key id the handle belongs to, as format 1 messages do
                Some(h) => env
                    .open_range_as(
                        &cipher,
                        loc,
                        context,
                        aad,
                        Some(&mut || key_label(keys, KeyRef::Handle(h))),
                    )
                    .map(Some),
                None => env.open_range(&cipher, loc, context, aad).map(Some),
            },
            KeyLookup::Shredded => Ok(None),
            KeyLookup::Disabled => Err(Error::key_disabled(
                &key_id_for_message(keys, env.key()),
                env.key_version,
            )),
        }
    })();
    *blob = env.into_blob();
    result
}

/// Opens one envelope text found at `loc` of a document held in another form than jsonb (the `json` feature's
/// decryptor): parses it, looks its key up in `keys` and authenticates it with `context`, exactly as
/// [`Decryptor`] does for every envelope of a jsonb document. `Ok(None)`: the key or its version is shredded.
/// Otherwise the plaintext (the JSON text of the value) is in `blob` at the returned range; the caller wipes `blob`
/// when it is done with it. `aad` and `blob` are scratch buffers, reused from call to call.
///
/// Errors: those of the envelope (malformed, unsupported format, context mismatch, authentication, unknown key or
/// version), [`ErrorKind::KeyDisabled`] for a disabled version, and whatever the key source returns (a source that
/// withholds a key returns [`ErrorKind::PermissionDenied`]).
pub fn open_at<K: KeySource>(
    keys: &mut K,
    text: &[u8],
    loc: &Location,
    context: Option<&[u8]>,
    aad: &mut Vec<u8>,
    blob: &mut Vec<u8>,
) -> Result<Option<std::ops::Range<usize>>> {
    open_envelope(keys, text, loc, context, None, aad, blob)
}

/// `key_label`: what follows "key" ([`key_label`]).
fn not_bound(loc: &Location, key_label: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::EnvelopeNotBound,
        format!("envelope at {} does not belong to this row", crate::error::display_path(&loc.display())),
    )
    .with_detail(format!("The envelope names key {key_label}; {why}."))
    .with_hint("An encrypted value can only be stored in the row, field and context it was encrypted for. Insert the plaintext and let the row's key encrypt it.")
}

/// Decrypts every envelope in a document, wherever it is.
pub struct Decryptor<'a, K: KeySource> {
    keys: &'a mut K,
    context: Option<&'a [u8]>,
    on_shredded: OnShredded,
    binding: Option<Binding<'a>>,
    on_invalid: OnInvalid,
    aad: Vec<u8>,
    /// The decoded envelope being opened (reused).
    blob: Vec<u8>,
    loc: Location,
    pub decrypted: usize,
    pub shredded: usize,
    /// Envelopes handled by the `on_invalid` policy (never counted when it is `Error`: that raises).
    pub invalid: usize,
}

impl<'a, K: KeySource> Decryptor<'a, K> {
    pub fn new(keys: &'a mut K, context: Option<&'a [u8]>, on_shredded: OnShredded) -> Self {
        Decryptor {
            keys,
            context,
            on_shredded,
            binding: None,
            on_invalid: OnInvalid::Error,
            aad: Vec::new(),
            blob: Vec::new(),
            loc: Location::root(),
            decrypted: 0,
            shredded: 0,
            invalid: 0,
        }
    }

    /// Decrypts only envelopes under the key ids `binding` allows (the row's key); others, and every envelope that
    /// is malformed or does not authenticate, follow `on_invalid`.
    pub fn bound(mut self, binding: Binding<'a>, on_invalid: OnInvalid) -> Self {
        self.binding = Some(binding);
        self.on_invalid = on_invalid;
        self
    }

    /// Authenticates and decrypts one envelope text at the current location and hands the plaintext to `f`.
    fn unseal<R>(&mut self, text: &[u8], f: impl FnOnce(&[u8]) -> Result<R>) -> Result<Opened<R>> {
        let opened = open_envelope(
            self.keys,
            text,
            &self.loc,
            self.context,
            self.binding,
            &mut self.aad,
            &mut self.blob,
        )
        .and_then(|range| match range {
            None => Ok(None),
            Some(r) => f(&self.blob[r]).map(Some).map_err(|e| match e.kind() {
                // what the JSON parser refuses; size limits keep their own kind
                ErrorKind::InvalidArgument => Error::new(ErrorKind::MalformedEnvelope, "decrypted value is not JSON")
                    .with_detail("the envelope authenticated but its content is not a JSON value jsonb can hold"),
                _ => e,
            }),
        });
        zeroize::Zeroize::zeroize(&mut self.blob);
        match opened {
            Ok(Some(r)) => {
                self.decrypted += 1;
                Ok(Opened::Plain(r))
            }
            Ok(None) => {
                self.shredded += 1;
                if self.on_shredded == OnShredded::Error {
                    return Err(shredded_error(self.keys, text, &self.loc));
                }
                Ok(Opened::Shredded)
            }
            Err(e) if e.kind() == ErrorKind::KeyDisabled && self.on_shredded != OnShredded::Error => {
                self.shredded += 1;
                Ok(Opened::Shredded)
            }
            Err(e) if self.on_invalid != OnInvalid::Error && OnInvalid::applies_to(e.kind()) => {
                self.invalid += 1;
                Ok(Opened::Invalid)
            }
            Err(e) => Err(e),
        }
    }

    /// What replaces an envelope that did not open: JSON null, or the envelope text itself.
    fn unopened(&self, how: &Opened<()>) -> bool {
        // true: keep the text; false: null
        match how {
            Opened::Shredded => self.on_shredded == OnShredded::Keep,
            _ => self.on_invalid == OnInvalid::Keep,
        }
    }

    /// Decrypts a single value encrypted by `encrypt_value` (bound to the root location).
    pub fn decrypt_value(&mut self, text: &str) -> Result<Option<Parsed>> {
        self.loc = Location::root();
        match self.unseal(text.as_bytes(), parse_json)? {
            Opened::Plain(v) => Ok(Some(v)),
            Opened::Shredded if self.unopened(&Opened::Shredded) => Ok(Some(Parsed::String(text.as_bytes().to_vec()))),
            Opened::Invalid if self.unopened(&Opened::Invalid) => Ok(Some(Parsed::String(text.as_bytes().to_vec()))),
            _ => Ok(None),
        }
    }

    /// Writes the document with every envelope decrypted into `out` (a datum with its header). Returns false,
    /// leaving `out` unspecified, when the document holds no envelope and can be kept as it is.
    pub fn decrypt_document(&mut self, doc: &Document<'_>, out: &mut Vec<u8>) -> Result<bool> {
        self.loc = Location::root();
        let before = (self.decrypted, self.shredded, self.invalid);
        let root = doc.root();
        if root.is_scalar() {
            let Some(s) = root_envelope(doc)? else {
                return Ok(false);
            };
            match self.unseal(s, parse_json)? {
                Opened::Plain(v) => v.write_document(out)?,
                Opened::Shredded => {
                    if self.unopened(&Opened::Shredded) {
                        return Ok(false);
                    }
                    Parsed::Null.write_document(out)?
                }
                Opened::Invalid => {
                    if self.unopened(&Opened::Invalid) {
                        return Ok(false);
                    }
                    Parsed::Null.write_document(out)?
                }
            }
            return Ok(true);
        }
        new_datum_buffer(out);
        self.rewrite(root, out, 0)?;
        if (self.decrypted, self.shredded, self.invalid) == before {
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
                    Opened::Plain(ty) => Ok(ty),
                    Opened::Shredded if !self.unopened(&Opened::Shredded) => Ok(T_NULL),
                    Opened::Invalid if !self.unopened(&Opened::Invalid) => Ok(T_NULL),
                    _ => Ok(write_string(out, s)),
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

/// Whether a document may hold an envelope at all: jsonb keeps every string verbatim, so a datum whose bytes do
/// not contain `$ec` holds none, and the walk over its values (most rows of a protected table: plaintext from the
/// application) is skipped.
pub fn may_contain_envelope(doc: &Document<'_>) -> bool {
    static PREFIX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"$ec"));
    PREFIX.find(doc.bytes()).is_some()
}

/// How an envelope found by [`check_envelopes`] turned out.
pub enum Checked<'p> {
    /// It authenticated as this row's field; here is its plaintext (the JSON text of the value).
    Opened(&'p [u8]),
    /// It is under the row's key, which (or whose version) is shredded: nothing can be checked or read.
    Shredded,
}

/// Checks every envelope of a document, wherever it is, as a protected table's trigger does before it keeps
/// them: each must parse, be under a key id `binding` allows, and authenticate with `context` at its own location
/// (so an envelope copied from another subject, stream, field or row is refused). An envelope whose key is
/// shredded cannot be authenticated; it is accepted (replays and restores of a forgotten subject's events) and
/// reported as [`Checked::Shredded`]. `each` sees every envelope with its location. Errors: malformed envelopes
/// keep their kind (`MalformedEnvelope`, `UnsupportedVersion`); everything else about the envelope is
/// [`ErrorKind::EnvelopeNotBound`]; key catalog errors are passed on.
pub fn check_envelopes<K: KeySource>(
    doc: &Document<'_>,
    keys: &mut K,
    context: Option<&[u8]>,
    binding: Binding<'_>,
    mut each: impl FnMut(&Location, Checked<'_>) -> Result<()>,
) -> Result<usize> {
    if !may_contain_envelope(doc) {
        return Ok(0);
    }
    struct Walk<'k, K: KeySource, F> {
        keys: &'k mut K,
        context: Option<&'k [u8]>,
        binding: Binding<'k>,
        each: F,
        loc: Location,
        aad: Vec<u8>,
        blob: Vec<u8>,
        found: usize,
    }
    impl<K: KeySource, F: FnMut(&Location, Checked<'_>) -> Result<()>> Walk<'_, K, F> {
        fn envelope(&mut self, s: &[u8]) -> Result<()> {
            self.found += 1;
            let r = open_envelope(
                self.keys,
                s,
                &self.loc,
                self.context,
                Some(self.binding),
                &mut self.aad,
                &mut self.blob,
            );
            let r = match r {
                Ok(Some(range)) => (self.each)(&self.loc, Checked::Opened(&self.blob[range])),
                Ok(None) => (self.each)(&self.loc, Checked::Shredded),
                Err(e) => Err(match e.kind() {
                    ErrorKind::MalformedEnvelope | ErrorKind::UnsupportedVersion | ErrorKind::EnvelopeNotBound => e,
                    ErrorKind::AuthenticationFailed | ErrorKind::ContextMismatch | ErrorKind::UnknownKey => {
                        let label = match Envelope::parse(std::str::from_utf8(s).unwrap_or(""), &self.loc) {
                            Ok(e) => key_label(self.keys, e.key()),
                            Err(_) => "\"\"".to_string(),
                        };
                        let why = match e.kind() {
                            ErrorKind::UnknownKey => "that key or key version does not exist".to_string(),
                            ErrorKind::ContextMismatch => {
                                "it is bound to another context than this row's (or the reverse)".to_string()
                            }
                            _ => "it does not authenticate as this field of this row (it was altered, or encrypted for another field, row or context)".to_string(),
                        };
                        not_bound(&self.loc, &label, &why)
                    }
                    _ => e,
                }),
            };
            zeroize::Zeroize::zeroize(&mut self.blob);
            r
        }

        fn walk(&mut self, c: Container<'_>, depth: usize) -> Result<()> {
            if depth > MAX_DEPTH {
                return Err(too_deep());
            }
            // The location is only built for what can hold an envelope: most values of a document are plain
            // scalars, and this walk runs on every row a protected table receives.
            if c.is_object() {
                for (i, pair) in c.pairs().enumerate() {
                    crate::check_interrupts_every(i);
                    let (k, v) = pair?;
                    if Self::may_be_or_hold_envelope(&v) {
                        let mark = self.loc.push_key_bytes(k);
                        let r = self.value(v, depth);
                        self.loc.truncate(mark);
                        r?;
                    }
                }
            } else {
                for (i, e) in c.elements().enumerate() {
                    crate::check_interrupts_every(i);
                    let e = e?;
                    if Self::may_be_or_hold_envelope(&e) {
                        let mark = self.loc.push_index(i);
                        let r = self.value(e, depth);
                        self.loc.truncate(mark);
                        r?;
                    }
                }
            }
            Ok(())
        }

        fn may_be_or_hold_envelope(v: &Value<'_>) -> bool {
            match v {
                Value::String(s) => looks_like_envelope(s),
                Value::Object(_) | Value::Array(_) => true,
                _ => false,
            }
        }

        fn value(&mut self, v: Value<'_>, depth: usize) -> Result<()> {
            match v {
                Value::String(s) if looks_like_envelope(s) => self.envelope(s),
                Value::Object(c) | Value::Array(c) => self.walk(c, depth + 1),
                _ => Ok(()),
            }
        }
    }
    let mut w = Walk {
        keys,
        context,
        binding,
        each: &mut each,
        loc: Location::root(),
        aad: Vec::new(),
        blob: Vec::new(),
        found: 0,
    };
    let root = doc.root();
    if root.is_scalar() {
        if let Some(s) = root_envelope(doc)? {
            w.envelope(s)?;
        }
    } else {
        w.walk(root, 0)?;
    }
    Ok(w.found)
}

/// The envelope a scalar document consists of (what `encrypt_value` stored as a jsonb string), if it is one.
pub(crate) fn root_envelope<'a>(doc: &Document<'a>) -> Result<Option<&'a [u8]>> {
    Ok(match doc.value()? {
        Value::String(s) if looks_like_envelope(s) => Some(s),
        _ => None,
    })
}

/// A walk that rebuilds every container it enters and rewrites the children a selector selects (encryption, the
/// protect trigger's tokenization); the others are copied as they are.
pub(crate) trait SelectedRewriter {
    /// The location of the child being written (pushed and popped by [`rewrite_selected`]).
    fn location(&mut self) -> &mut Location;
    /// Writes one child the selector names (at the current location) and returns its entry type.
    fn selected_child(
        &mut self,
        v: Value<'_>,
        node: &SelectorNode,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<EntryType>;
}

/// Rewrites container `c` into `out` under selector `node`: object keys kept byte for byte, children the selector
/// names written by `r.selected_child` at their location, the others copied. (Always inlined: it is the
/// encryption's hot loop, `Encryptor::rewrite`.)
#[inline(always)]
pub(crate) fn rewrite_selected<R: SelectedRewriter + ?Sized>(
    r: &mut R,
    c: Container<'_>,
    node: &SelectorNode,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    if c.is_object() {
        let mut w = ContainerWriter::object_like(out, &c)?;
        for (i, pair) in c.pairs().enumerate() {
            crate::check_interrupts_every(i);
            let (k, v) = pair?;
            let ty = match node.key(k) {
                Some(n) => {
                    let mark = r.location().push_key_bytes(k);
                    let ty = r.selected_child(v, n, out, depth);
                    r.location().truncate(mark);
                    ty?
                }
                None => copy_value(out, &v)?,
            };
            w.done(out, ty)?;
        }
    } else {
        let mut w = ContainerWriter::array(out, c.len())?;
        for (i, e) in c.elements().enumerate() {
            crate::check_interrupts_every(i);
            let v = e?;
            let ty = match node.index(i) {
                Some(n) => {
                    let mark = r.location().push_index(i);
                    let ty = r.selected_child(v, n, out, depth);
                    r.location().truncate(mark);
                    ty?
                }
                None => copy_value(out, &v)?,
            };
            w.done(out, ty)?;
        }
    }
    Ok(())
}

impl SelectedRewriter for Encryptor<'_> {
    #[inline]
    fn location(&mut self) -> &mut Location {
        &mut self.loc
    }

    #[inline]
    fn selected_child(
        &mut self,
        v: Value<'_>,
        node: &SelectorNode,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<EntryType> {
        self.child(v, node, out, depth)
    }
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

/// Replaces selected values of a document by strings (the protect trigger's `tokenize_fields`): walks the document
/// as [`Encryptor::encrypt_document`] does and calls `f` with the location and value of every selected field that is
/// present and not JSON null (a value without the shape its paths expect counts as selected, as for encryption).
/// `f` returns the replacement string, or `None` to keep the value. Writes the new document (a datum with its
/// header) into `out` and returns how many values were replaced; when 0, the document can be kept as it is.
pub fn replace_selected(
    doc: &Document<'_>,
    selector: &Selector,
    f: &mut dyn FnMut(&Location, &Value<'_>) -> Result<Option<String>>,
    out: &mut Vec<u8>,
) -> Result<usize> {
    struct Walk<'f> {
        f: &'f mut dyn FnMut(&Location, &Value<'_>) -> Result<Option<String>>,
        loc: Location,
        count: usize,
    }
    impl SelectedRewriter for Walk<'_> {
        fn location(&mut self) -> &mut Location {
            &mut self.loc
        }

        fn selected_child(
            &mut self,
            v: Value<'_>,
            node: &SelectorNode,
            out: &mut Vec<u8>,
            depth: usize,
        ) -> Result<EntryType> {
            self.child(v, node, out, depth)
        }
    }
    impl Walk<'_> {
        fn child(&mut self, v: Value<'_>, node: &SelectorNode, out: &mut Vec<u8>, depth: usize) -> Result<EntryType> {
            let selected = match &v {
                _ if node.is_selected() => true,
                Value::Object(c) | Value::Array(c) if node.fits(c.is_object(), c.is_array()) => {
                    rewrite_selected(self, *c, node, out, depth + 1)?;
                    return Ok(T_CONTAINER);
                }
                Value::Null => false,
                _ => node.has_children(),
            };
            if !selected || matches!(v, Value::Null) {
                return copy_value(out, &v);
            }
            match (self.f)(&self.loc, &v)? {
                Some(s) => {
                    self.count += 1;
                    Ok(write_string(out, s.as_bytes()))
                }
                None => copy_value(out, &v),
            }
        }
    }
    let root = doc.root();
    if root.is_scalar() {
        return Err(Error::invalid_argument(format!(
            "payload must be a JSON object or array, not a {}",
            doc.value()?.type_name()
        )));
    }
    // (a root the paths cannot look into has nothing selected: the document is kept)
    if !selector.root().fits(root.is_object(), root.is_array()) {
        return Ok(0);
    }
    let mut w = Walk {
        f,
        loc: Location::root(),
        count: 0,
    };
    new_datum_buffer(out);
    rewrite_selected(&mut w, root, selector.root(), out, 0)?;
    set_varlena_header(out)?;
    Ok(w.count)
}
