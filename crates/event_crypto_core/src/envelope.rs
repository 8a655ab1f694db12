//! The envelope: the JSON string that replaces an encrypted field. Specified in `docs/format.md`.
//!
//! ```text
//! text    = prefix base64url-no-padding(blob)
//! blob    = header nonce(12) ciphertext tag(16)
//! format 1: prefix "$ec1$", header = algorithm(1) flags(1) key_id_len(1) key_id(key_id_len, UTF-8) key_version(4, big-endian)
//! format 2: prefix "$ec2$", header = (algorithm << 4 | flags)(1) key_handle(8, big-endian, not 0) key_version(LEB128, minimal)
//! aad     = prefix header location 0x00 [ u32be(len(context)) context ]     -- context part only when flag 0x01
//! flags   = 0x01: bound to a context; 0x02 (format 2 only): the plaintext is a zstd frame of the JSON text
//! ```
//!
//! Format 1 names the key by its id, format 2 by the key id's handle: a random 64-bit number the key catalog stores
//! with the key id (so an envelope no longer carries a subject id, and is 40-odd bytes shorter for a key per
//! subject). Both are read forever; new envelopes are written in the format the caller names ([`KeyRef`]).

use crate::aead::{Algorithm, Cipher, NONCE_LEN, TAG_LEN};
use crate::error::{display_path, Error, ErrorKind, Result};
use crate::path::Location;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt;
use std::num::NonZeroU64;

/// The text prefix of format 1.
pub const PREFIX_V1: &str = "$ec1$";
/// The text prefix of format 2.
pub const PREFIX_V2: &str = "$ec2$";
/// Flag: the envelope is bound to a context.
pub const FLAG_CONTEXT: u8 = 0x01;
/// Flag (format 2 only): the plaintext is a zstd frame of the value's JSON text ([`crate::compress`]).
pub const FLAG_COMPRESSED: u8 = 0x02;
/// The longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 255;
/// The longest string PostgreSQL stores inside a jsonb value (JENTRY_OFFLENMASK).
pub const MAX_ENVELOPE_LEN: usize = (1 << 28) - 1;
/// The highest key version (the key catalog's versions are PostgreSQL integers).
pub const MAX_KEY_VERSION: u32 = i32::MAX as u32;
/// The longest LEB128 encoding of a key version (31 bits in groups of 7).
const MAX_LEB128_LEN: usize = 5;
/// Bytes a format 1 envelope adds to its plaintext besides the key id, before base64.
pub const FIXED_OVERHEAD_V1: usize = 3 + 4 + NONCE_LEN + TAG_LEN;
/// Bytes a format 2 envelope adds to its plaintext besides the version's LEB128 bytes, before base64.
pub const FIXED_OVERHEAD_V2: usize = 1 + 8 + NONCE_LEN + TAG_LEN;

/// An envelope format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `$ec1$`: the key named by its id.
    V1,
    /// `$ec2$`: the key named by its handle.
    V2,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::V1, Format::V2];
    /// The format new encryptions write unless told otherwise.
    pub const DEFAULT: Format = Format::V2;

    /// The format's number (the digits of its prefix).
    pub fn number(self) -> u32 {
        match self {
            Format::V1 => 1,
            Format::V2 => 2,
        }
    }

    pub fn from_number(n: i64) -> Option<Format> {
        match n {
            1 => Some(Format::V1),
            2 => Some(Format::V2),
            _ => None,
        }
    }

    pub fn prefix(self) -> &'static str {
        match self {
            Format::V1 => PREFIX_V1,
            Format::V2 => PREFIX_V2,
        }
    }
}

/// A key id's handle: a random, non-zero 64-bit number, the same for every version of the key id, stored with it
/// in the key catalog and unique there. It is never derived from the key id, so it says nothing about the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHandle(NonZeroU64);

impl KeyHandle {
    /// `None` for 0, which is never a handle.
    pub const fn new(v: u64) -> Option<KeyHandle> {
        match NonZeroU64::new(v) {
            Some(n) => Some(KeyHandle(n)),
            None => None,
        }
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The handle from its form in the key catalog (a PostgreSQL bigint with the same 64 bits).
    pub fn from_i64(v: i64) -> Option<KeyHandle> {
        KeyHandle::new(v as u64)
    }

    /// The handle as the key catalog stores it (a PostgreSQL bigint with the same 64 bits).
    pub fn to_i64(self) -> i64 {
        self.get() as i64
    }

    pub fn to_be_bytes(self) -> [u8; 8] {
        self.get().to_be_bytes()
    }
}

impl fmt::Display for KeyHandle {
    /// 16 lowercase hex digits (the 8 bytes as the envelope holds them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.get())
    }
}

/// How an envelope names its key: by id (format 1) or by handle (format 2). Sealing under a `KeyRef` writes the
/// format that names the key that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    Id(&'a str),
    Handle(KeyHandle),
}

impl KeyRef<'_> {
    /// The format that names a key this way.
    pub fn format(&self) -> Format {
        match self {
            KeyRef::Id(_) => Format::V1,
            KeyRef::Handle(_) => Format::V2,
        }
    }
}

impl fmt::Display for KeyRef<'_> {
    /// `"<key id>"`, or `with handle <16 hex digits>`: what follows "key" in a message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Id(id) => write!(f, "\"{id}\""),
            KeyRef::Handle(h) => write!(f, "with handle {h}"),
        }
    }
}

/// Everything a key id can be named by in an envelope: its id and (once the key catalog has given it one) its
/// handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyNames<'a> {
    pub key_id: &'a str,
    pub handle: Option<KeyHandle>,
}

impl<'a> KeyNames<'a> {
    /// Whether an envelope's key reference names this key.
    pub fn names(&self, key: KeyRef<'_>) -> bool {
        match key {
            KeyRef::Id(id) => id == self.key_id,
            KeyRef::Handle(h) => self.handle == Some(h),
        }
    }

    /// How an envelope of format `format` names this key. Format 2 needs the handle.
    pub fn key_ref(&self, format: Format) -> Result<KeyRef<'a>> {
        match (format, self.handle) {
            (Format::V1, _) => Ok(KeyRef::Id(self.key_id)),
            (Format::V2, Some(h)) => Ok(KeyRef::Handle(h)),
            (Format::V2, None) => Err(Error::new(
                ErrorKind::CatalogAccess,
                format!("encryption key \"{}\" has no handle", self.key_id),
            )
            .with_detail("Envelopes of format 2 name their key by the handle the key catalog stores with it.")
            .with_hint("ALTER EXTENSION event_crypto UPDATE gives every key a handle; until then set event_crypto.envelope_format = 1.")),
        }
    }
}

/// The key a parsed envelope names (owned: the envelope's buffer is reused).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ParsedKey {
    Id(String),
    Handle(KeyHandle),
}

fn parsed_label(key: &ParsedKey) -> String {
    match key {
        ParsedKey::Id(id) => KeyRef::Id(id).to_string(),
        ParsedKey::Handle(h) => KeyRef::Handle(*h).to_string(),
    }
}

/// A parsed (not yet authenticated) envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub format: Format,
    pub algorithm: Algorithm,
    pub flags: u8,
    pub key_version: u32,
    key: ParsedKey,
    blob: Vec<u8>,
    header_len: usize,
}

/// Whether a string claims to be an envelope of any version (`$ec<digits>$`); such strings are never treated as
/// plaintext: they must parse, or decryption fails closed.
pub fn looks_like_envelope(s: impl AsRef<[u8]>) -> bool {
    let b = s.as_ref();
    if b.len() < 5 || &b[..3] != b"$ec" {
        return false;
    }
    let digits = b[3..].iter().take_while(|c| c.is_ascii_digit()).count();
    digits > 0 && b.get(3 + digits) == Some(&b'$')
}

/// Validates a key id: 1 to 255 bytes of UTF-8 without control characters.
pub fn check_key_id(key_id: &str) -> Result<()> {
    if key_id.is_empty() {
        return Err(Error::invalid_argument("key id must not be empty"));
    }
    if key_id.len() > MAX_KEY_ID_LEN {
        return Err(Error::invalid_argument(format!(
            "key id is {} bytes long; the limit is 255",
            key_id.len()
        )));
    }
    if key_id.chars().any(char::is_control) {
        return Err(Error::invalid_argument("key id must not contain control characters"));
    }
    Ok(())
}

/// Appends the unsigned LEB128 encoding of `v` (7 bits a byte, least significant first, the high bit set on every
/// byte but the last; minimal: no trailing zero groups).
pub fn write_leb128(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// The number of bytes [`write_leb128`] writes for `v`.
pub fn leb128_len(v: u32) -> usize {
    let bits = 32 - v.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Reads a key version in minimal unsigned LEB128 from the start of `b`: (version, bytes read). Refuses
/// truncation, encodings longer than 5 bytes or not minimal, 0 and versions above 2^31 - 1.
fn read_version_leb128(b: &[u8]) -> std::result::Result<(u32, usize), &'static str> {
    let mut v: u64 = 0;
    for i in 0..MAX_LEB128_LEN {
        let Some(&byte) = b.get(i) else {
            return Err("the envelope is truncated");
        };
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err("the key version is not minimally encoded");
            }
            if v == 0 {
                return Err("the key version is 0");
            }
            if v > u64::from(MAX_KEY_VERSION) {
                return Err("the key version is out of range");
            }
            return Ok((v as u32, i + 1));
        }
    }
    Err("the key version is out of range")
}

fn write_header(out: &mut Vec<u8>, algorithm: Algorithm, flags: u8, key: KeyRef<'_>, version: u32) {
    match key {
        KeyRef::Id(key_id) => {
            out.push(algorithm.code());
            out.push(flags);
            out.push(key_id.len() as u8);
            out.extend_from_slice(key_id.as_bytes());
            out.extend_from_slice(&version.to_be_bytes());
        }
        KeyRef::Handle(h) => {
            out.push(algorithm.code() << 4 | flags);
            out.extend_from_slice(&h.to_be_bytes());
            write_leb128(out, version);
        }
    }
}

fn build_aad(aad: &mut Vec<u8>, format: Format, header: &[u8], location: &Location, context: Option<&[u8]>) {
    aad.clear();
    aad.extend_from_slice(format.prefix().as_bytes());
    aad.extend_from_slice(header);
    aad.extend_from_slice(location.encoded());
    aad.push(0x00);
    if let Some(c) = context {
        aad.extend_from_slice(&(c.len() as u32).to_be_bytes());
        aad.extend_from_slice(c);
    }
}

/// What to encrypt with: a cipher, the version of its key, and how the envelope names the key (which decides the
/// format written).
pub struct SealKey<'a> {
    pub cipher: &'a Cipher,
    pub key: KeyRef<'a>,
    pub version: u32,
}

impl SealKey<'_> {
    /// Checks what the header will hold: a valid key id (format 1), a version from 1 to 2^31 - 1.
    pub fn check(&self) -> Result<()> {
        if let KeyRef::Id(id) = self.key {
            check_key_id(id)?;
        }
        if !(1..=MAX_KEY_VERSION).contains(&self.version) {
            return Err(Error::invalid_argument(format!(
                "key version {} is out of range (1 to 2147483647)",
                self.version
            )));
        }
        Ok(())
    }

    /// Bytes the envelope adds to the plaintext, before base64.
    pub fn overhead(&self) -> usize {
        match self.key {
            KeyRef::Id(id) => FIXED_OVERHEAD_V1 + id.len(),
            KeyRef::Handle(_) => FIXED_OVERHEAD_V2 + leb128_len(self.version),
        }
    }
}

/// Reusable buffers for sealing many values.
#[derive(Default)]
pub struct Scratch {
    blob: Vec<u8>,
    aad: Vec<u8>,
}

/// Encrypts `plaintext` (the JSON text of a value) bound to `location` and `context`, in the format `key.key`
/// names the key in.
pub fn seal(
    key: &SealKey<'_>,
    location: &Location,
    context: Option<&[u8]>,
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
    scratch: &mut Scratch,
) -> Result<String> {
    key.check()?;
    let mut out = Vec::new();
    seal_into(key, location, context, plaintext, 0, nonce, scratch, &mut out)?;
    String::from_utf8(out).map_err(|_| Error::new(ErrorKind::MalformedEnvelope, "an envelope is not ASCII"))
}

/// [`seal`] of a value already compressed: `frame` is a zstd frame of the value's JSON text, and the envelope
/// carries [`FLAG_COMPRESSED`]. Format 2 only. (For frozen vectors and tests; encryption compresses through
/// [`crate::document::Encryptor::compress`].)
pub fn seal_compressed(
    key: &SealKey<'_>,
    location: &Location,
    context: Option<&[u8]>,
    frame: &[u8],
    nonce: &[u8; NONCE_LEN],
    scratch: &mut Scratch,
) -> Result<String> {
    key.check()?;
    if key.key.format() != Format::V2 {
        return Err(compression_needs_format_2());
    }
    let mut out = Vec::new();
    seal_into(key, location, context, frame, FLAG_COMPRESSED, nonce, scratch, &mut out)?;
    String::from_utf8(out).map_err(|_| Error::new(ErrorKind::MalformedEnvelope, "an envelope is not ASCII"))
}

/// The error of asking for compression while writing envelopes of format 1 (which has no compressed flag).
pub fn compression_needs_format_2() -> Error {
    Error::new(ErrorKind::Unsupported, "compression needs envelope format 2")
        .with_detail("Envelopes of format 1 have no flag for a compressed value; event_crypto.envelope_format is 1.")
        .with_hint("Set event_crypto.envelope_format = 2, or encrypt with compress => 'none'.")
}

/// [`seal_into`] of a value's JSON text, zstd-compressed first (into `packed`) when `compression` asks for it and
/// that makes it smaller ([`crate::compress::maybe_compress`]); returns whether the envelope holds it compressed
/// ([`FLAG_COMPRESSED`]). How encryption and re-encryption seal a value. The caller has checked the key.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn seal_json_into(
    key: &SealKey<'_>,
    location: &Location,
    context: Option<&[u8]>,
    json: &[u8],
    compression: crate::compress::Compression,
    packed: &mut Vec<u8>,
    nonce: &[u8; NONCE_LEN],
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<bool> {
    let compressed = crate::compress::maybe_compress(compression, json, packed)?;
    let (payload, flags) = if compressed {
        (&packed[..], FLAG_COMPRESSED)
    } else {
        (json, 0)
    };
    seal_into(key, location, context, payload, flags, nonce, scratch, out)?;
    Ok(compressed)
}

/// [`seal`], appending the envelope text to `out` (no allocation once the buffers have grown). The caller has
/// checked the key ([`SealKey::check`]). `extra_flags`: 0, or [`FLAG_COMPRESSED`] (format 2) when `plaintext` is
/// a zstd frame.
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal_into(
    key: &SealKey<'_>,
    location: &Location,
    context: Option<&[u8]>,
    plaintext: &[u8],
    extra_flags: u8,
    nonce: &[u8; NONCE_LEN],
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<()> {
    let format = key.key.format();
    let prefix = format.prefix();
    let blob_len = key.overhead() + plaintext.len();
    let text_len = prefix.len() + blob_len.div_ceil(3) * 4;
    if text_len > MAX_ENVELOPE_LEN {
        return Err(Error::too_large(
            &location.display(),
            &format!("the envelope would be {text_len} bytes; a jsonb string holds at most {MAX_ENVELOPE_LEN}"),
        ));
    }
    debug_assert!(extra_flags & !FLAG_COMPRESSED == 0 && (extra_flags == 0 || format == Format::V2));
    let flags = if context.is_some() { FLAG_CONTEXT } else { 0 } | extra_flags;
    let blob = &mut scratch.blob;
    blob.clear();
    blob.reserve(blob_len);
    write_header(blob, key.cipher.algorithm(), flags, key.key, key.version);
    let header_len = blob.len();
    build_aad(&mut scratch.aad, format, &blob[..header_len], location, context);
    blob.extend_from_slice(nonce);
    let ct_start = blob.len();
    blob.extend_from_slice(plaintext);
    let tag = key.cipher.seal_in_place(nonce, &scratch.aad, &mut blob[ct_start..]);
    blob.extend_from_slice(&tag);
    // one allocation at most for the text (a fresh `out` would otherwise grow twice: prefix, then body)
    out.reserve(text_len);
    out.extend_from_slice(prefix.as_bytes());
    let start = out.len();
    out.resize(
        start + base64::encoded_len(blob.len(), false).expect("bounded above"),
        0,
    );
    let written = URL_SAFE_NO_PAD
        .encode_slice(&blob[..], &mut out[start..])
        .expect("the buffer has the encoded length");
    out.truncate(start + written);
    Ok(())
}

/// The header of a format 1 blob: (algorithm, flags, key, version, header length).
fn parse_header_v1(blob: &[u8]) -> std::result::Result<(Algorithm, u8, ParsedKey, u32, usize), &'static str> {
    if blob.len() < 3 {
        return Err("the envelope is truncated");
    }
    let algorithm = Algorithm::from_code(blob[0]).ok_or("the algorithm code is unknown")?;
    let flags = blob[1];
    if flags & !FLAG_CONTEXT != 0 {
        return Err("reserved flag bits are set");
    }
    let kid_len = blob[2] as usize;
    if kid_len == 0 {
        return Err("the key id is empty");
    }
    let header_len = 3 + kid_len + 4;
    if blob.len() < header_len + NONCE_LEN + TAG_LEN {
        return Err("the envelope is truncated");
    }
    let key_id = std::str::from_utf8(&blob[3..3 + kid_len]).map_err(|_| "the key id is not UTF-8")?;
    if key_id.chars().any(char::is_control) {
        return Err("the key id contains control characters");
    }
    let v = &blob[3 + kid_len..header_len];
    let key_version = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
    if key_version == 0 {
        return Err("the key version is 0");
    }
    Ok((
        algorithm,
        flags,
        ParsedKey::Id(key_id.to_string()),
        key_version,
        header_len,
    ))
}

/// The header of a format 2 blob: (algorithm, flags, key, version, header length).
fn parse_header_v2(blob: &[u8]) -> std::result::Result<(Algorithm, u8, ParsedKey, u32, usize), &'static str> {
    let Some(&first) = blob.first() else {
        return Err("the envelope is truncated");
    };
    let algorithm = Algorithm::from_code(first >> 4).ok_or("the algorithm code is unknown")?;
    let flags = first & 0x0f;
    if flags & !(FLAG_CONTEXT | FLAG_COMPRESSED) != 0 {
        return Err("reserved flag bits are set");
    }
    let Some(h) = blob.get(1..9) else {
        return Err("the envelope is truncated");
    };
    let handle = KeyHandle::new(u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]))
        .ok_or("the key handle is 0")?;
    let (key_version, n) = read_version_leb128(&blob[9..])?;
    let header_len = 9 + n;
    if blob.len() < header_len + NONCE_LEN + TAG_LEN {
        return Err("the envelope is truncated");
    }
    Ok((algorithm, flags, ParsedKey::Handle(handle), key_version, header_len))
}

impl Envelope {
    /// Parses the text form. `location` is only used in error messages.
    pub fn parse(text: &str, location: &Location) -> Result<Envelope> {
        Self::parse_reusing(text, location, Vec::new())
    }

    /// [`Envelope::parse`], decoding into `blob`'s allocation (get it back with [`Envelope::into_blob`]).
    pub fn parse_reusing(text: &str, location: &Location, mut blob: Vec<u8>) -> Result<Envelope> {
        let bad = |reason: &str| Error::malformed(&location.display(), reason);
        let (format, b64) = if let Some(b) = text.strip_prefix(PREFIX_V2) {
            (Format::V2, b)
        } else if let Some(b) = text.strip_prefix(PREFIX_V1) {
            (Format::V1, b)
        } else {
            if looks_like_envelope(text) {
                let v: String = text[3..].chars().take_while(|c| c.is_ascii_digit()).take(9).collect();
                return Err(Error::new(
                    ErrorKind::UnsupportedVersion,
                    format!(
                        "unsupported envelope format version {v} at {}",
                        display_path(&location.display())
                    ),
                )
                .with_hint("This build reads envelope format versions 1 and 2; upgrade event_crypto."));
            }
            return Err(bad("the value does not start with $ec1$ or $ec2$"));
        };
        blob.clear();
        URL_SAFE_NO_PAD
            .decode_vec(b64, &mut blob)
            .map_err(|_| bad("the body is not canonical unpadded base64url"))?;
        let header = match format {
            Format::V1 => parse_header_v1(&blob),
            Format::V2 => parse_header_v2(&blob),
        };
        let (algorithm, flags, key, key_version, header_len) = header.map_err(bad)?;
        Ok(Envelope {
            format,
            algorithm,
            flags,
            key_version,
            key,
            blob,
            header_len,
        })
    }

    /// How the envelope names its key.
    pub fn key(&self) -> KeyRef<'_> {
        match &self.key {
            ParsedKey::Id(id) => KeyRef::Id(id),
            ParsedKey::Handle(h) => KeyRef::Handle(*h),
        }
    }

    pub fn has_context(&self) -> bool {
        self.flags & FLAG_CONTEXT != 0
    }

    /// Whether the plaintext is a zstd frame of the value's JSON text (format 2 flag 0x02); opening decompresses it.
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&self.blob[self.header_len..self.header_len + NONCE_LEN]);
        n
    }

    /// Authenticates and decrypts. Returns the plaintext (the JSON text of the original value).
    pub fn open(
        mut self,
        cipher: &Cipher,
        location: &Location,
        context: Option<&[u8]>,
        aad: &mut Vec<u8>,
    ) -> Result<Vec<u8>> {
        let range = self.open_range(cipher, location, context, aad)?;
        self.blob.truncate(range.end);
        self.blob.drain(..range.start);
        Ok(self.blob)
    }

    /// Authenticates and decrypts in place; returns the plaintext, which lives in the envelope's buffer.
    pub fn open_in_place(
        &mut self,
        cipher: &Cipher,
        location: &Location,
        context: Option<&[u8]>,
        aad: &mut Vec<u8>,
    ) -> Result<&[u8]> {
        let range = self.open_range(cipher, location, context, aad)?;
        Ok(&self.blob[range])
    }

    /// The decoded buffer, for reuse by the next [`Envelope::parse_reusing`].
    pub fn into_blob(self) -> Vec<u8> {
        self.blob
    }

    /// The decoded buffer (after a successful open, the plaintext is at the range it returned).
    pub(crate) fn blob(&self) -> &[u8] {
        &self.blob
    }

    pub(crate) fn open_range(
        &mut self,
        cipher: &Cipher,
        location: &Location,
        context: Option<&[u8]>,
        aad: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        self.open_range_as(cipher, location, context, aad, None)
    }

    /// [`Envelope::open_range`]; `key_label`, called only when authentication fails, names the key in the
    /// message (what follows "key": the quoted key id a format 2 envelope's handle belongs to). Without it the
    /// envelope's own key reference is named.
    pub(crate) fn open_range_as(
        &mut self,
        cipher: &Cipher,
        location: &Location,
        context: Option<&[u8]>,
        aad: &mut Vec<u8>,
        key_label: Option<&mut dyn FnMut() -> String>,
    ) -> Result<std::ops::Range<usize>> {
        let version = self.key_version;
        let mut key_label = key_label;
        let mut label = || match key_label.as_mut() {
            Some(f) => f(),
            None => parsed_label(&self.key),
        };
        let mut fail = |detail: &str| {
            Error::new(
                ErrorKind::AuthenticationFailed,
                format!(
                    "envelope at {} failed authentication under key {} version {version}",
                    display_path(&location.display()),
                    label()
                ),
            )
            .with_detail(detail.to_string())
            .with_hint("The envelope was altered, moved from another field or row, or is bound to another context.")
        };
        match (self.has_context(), context.is_some()) {
            (true, false) => {
                return Err(Error::new(
                    ErrorKind::ContextMismatch,
                    format!(
                        "envelope at {} is bound to a context, but no context was given",
                        display_path(&location.display())
                    ),
                )
                .with_hint("Pass the context the value was encrypted with (the context argument)."))
            }
            (false, true) => {
                return Err(Error::new(
                    ErrorKind::ContextMismatch,
                    format!(
                        "envelope at {} is not bound to a context, but a context was given",
                        display_path(&location.display())
                    ),
                )
                .with_hint("Call without a context for values encrypted without one."))
            }
            _ => {}
        }
        if cipher.algorithm() != self.algorithm {
            return Err(fail("the algorithm in the envelope differs from the key's algorithm"));
        }
        build_aad(aad, self.format, &self.blob[..self.header_len], location, context);
        let nonce = self.nonce();
        let tag_start = self.blob.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&self.blob[tag_start..]);
        let ct_start = self.header_len + NONCE_LEN;
        if !cipher.open_in_place(&nonce, aad, &mut self.blob[ct_start..tag_start], &tag) {
            return Err(fail("the authentication tag does not match"));
        }
        if !self.is_compressed() {
            return Ok(ct_start..tag_start);
        }
        // Authenticated first, then decompressed (bounded: crate::compress) into a buffer that replaces the blob;
        // the compressed plaintext is wiped.
        let mut plain = Vec::new();
        let r = crate::compress::decompress(&self.blob[ct_start..tag_start], &location.display(), &mut plain);
        zeroize::Zeroize::zeroize(&mut self.blob);
        r?;
        self.blob = plain;
        Ok(0..self.blob.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::LocStep;

    const HANDLE: KeyHandle = match KeyHandle::new(0x0123_4567_89ab_cdef) {
        Some(h) => h,
        None => panic!(),
    };

    fn cipher(a: Algorithm) -> Cipher {
        Cipher::new(a, &[7u8; 32])
    }

    fn refs() -> [KeyRef<'static>; 2] {
        [KeyRef::Id("tenant-42"), KeyRef::Handle(HANDLE)]
    }

    fn seal_as(key: KeyRef<'_>, c: &Cipher, loc: &Location, ctx: Option<&[u8]>, pt: &[u8]) -> String {
        let k = SealKey {
            cipher: c,
            key,
            version: 3,
        };
        seal(
            &k,
            loc,
            ctx,
            pt,
            &crate::random::nonce().unwrap(),
            &mut Scratch::default(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_header() {
        for key in refs() {
            for a in Algorithm::ALL {
                let c = cipher(a);
                let loc = Location::from_steps(&[LocStep::Key("email")]);
                let text = seal_as(key, &c, &loc, Some(b"stream-1"), b"\"a@x.io\"");
                assert!(text.starts_with(key.format().prefix()));
                assert!(looks_like_envelope(&text));
                let env = Envelope::parse(&text, &loc).unwrap();
                assert_eq!(env.format, key.format());
                assert_eq!(env.algorithm, a);
                assert_eq!(env.key(), key);
                assert_eq!(env.key_version, 3);
                assert!(env.has_context());
                let pt = env.open(&c, &loc, Some(b"stream-1"), &mut Vec::new()).unwrap();
                assert_eq!(pt, b"\"a@x.io\"");
            }
        }
    }

    #[test]
    fn binds_location_and_context() {
        for key in refs() {
            let c = cipher(Algorithm::Aes256Gcm);
            let loc = Location::from_steps(&[LocStep::Key("email")]);
            let other = Location::from_steps(&[LocStep::Key("phone")]);
            let text = seal_as(key, &c, &loc, Some(b"s1"), b"1");
            let e = Envelope::parse(&text, &other)
                .unwrap()
                .open(&c, &other, Some(b"s1"), &mut Vec::new())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
            let e = Envelope::parse(&text, &loc)
                .unwrap()
                .open(&c, &loc, Some(b"s2"), &mut Vec::new())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
            let e = Envelope::parse(&text, &loc)
                .unwrap()
                .open(&c, &loc, None, &mut Vec::new())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ContextMismatch);
            let plain = seal_as(key, &c, &loc, None, b"1");
            let e = Envelope::parse(&plain, &loc)
                .unwrap()
                .open(&c, &loc, Some(b"s1"), &mut Vec::new())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ContextMismatch);
            let wrong_key = Cipher::new(Algorithm::Aes256Gcm, &[8u8; 32]);
            let e = Envelope::parse(&plain, &loc)
                .unwrap()
                .open(&wrong_key, &loc, None, &mut Vec::new())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
            let chacha = cipher(Algorithm::ChaCha20Poly1305);
            let e = Envelope::parse(&plain, &loc)
                .unwrap()
                .open(&chacha, &loc, None, &mut Vec::new())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
        }
    }

    #[test]
    fn every_flipped_byte_fails_closed() {
        for key in refs() {
            let c = cipher(Algorithm::Aes256Gcm);
            let loc = Location::from_steps(&[LocStep::Key("email")]);
            let text = seal_as(key, &c, &loc, None, b"\"secret@example.com\"");
            let bytes = text.as_bytes();
            for i in 0..bytes.len() {
                for flip in [0x01u8, 0x20, 0x80] {
                    let mut t = bytes.to_vec();
                    t[i] ^= flip;
                    let Ok(s) = String::from_utf8(t) else {
                        continue;
                    };
                    let r = Envelope::parse(&s, &loc).and_then(|e| e.open(&c, &loc, None, &mut Vec::new()));
                    let e = r.expect_err("a modified envelope must not decrypt");
                    assert!(
                        matches!(
                            e.kind(),
                            ErrorKind::MalformedEnvelope
                                | ErrorKind::AuthenticationFailed
                                | ErrorKind::UnsupportedVersion
                                | ErrorKind::ContextMismatch
                        ),
                        "byte {i}: {e}"
                    );
                    assert!(!e.to_string().contains("secret"), "no plaintext in messages");
                }
            }
            for cut in 0..text.len() {
                assert!(Envelope::parse(&text[..cut], &loc)
                    .and_then(|e| e.open(&c, &loc, None, &mut Vec::new()))
                    .is_err());
            }
            let mut extended = text.clone();
            extended.push_str("AA");
            assert!(Envelope::parse(&extended, &loc)
                .and_then(|e| e.open(&c, &loc, None, &mut Vec::new()))
                .is_err());
        }
    }

    /// Every bit of a format 2 blob flipped, and every byte replaced by every value, below the base64 layer: the
    /// envelope never opens, and each header byte is refused for what it is.
    #[test]
    fn every_blob_byte_of_format_2_fails_closed() {
        let c = cipher(Algorithm::ChaCha20Poly1305);
        let loc = Location::from_steps(&[LocStep::Key("email")]);
        let text = seal_as(
            KeyRef::Handle(HANDLE),
            &c,
            &loc,
            Some(b"ctx"),
            b"\"secret@example.com\"",
        );
        let blob = URL_SAFE_NO_PAD.decode(&text[5..]).unwrap();
        assert_eq!(blob.len(), 1 + 8 + 1 + 12 + 20 + 16);
        for i in 0..blob.len() {
            for v in 0..=255u8 {
                if v == blob[i] {
                    continue;
                }
                let mut b = blob.clone();
                b[i] = v;
                let s = format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(&b));
                let e = Envelope::parse(&s, &loc)
                    .and_then(|e| e.open(&c, &loc, Some(b"ctx"), &mut Vec::new()))
                    .expect_err("a modified envelope must not decrypt");
                let expected: &[ErrorKind] = match i {
                    // the algorithm: unknown codes are malformed, the other known one does not authenticate;
                    // the flags: other bits are malformed, the context bit cleared is a context mismatch
                    0 => &[
                        ErrorKind::MalformedEnvelope,
                        ErrorKind::AuthenticationFailed,
                        ErrorKind::ContextMismatch,
                    ],
                    // the version byte: 0 and continuation bits (then truncated or not minimal) are malformed
                    9 => &[ErrorKind::MalformedEnvelope, ErrorKind::AuthenticationFailed],
                    _ => &[ErrorKind::AuthenticationFailed],
                };
                assert!(expected.contains(&e.kind()), "byte {i} = {v:#04x}: {e}");
            }
        }
        // the whole handle zeroed is malformed; another handle parses and does not authenticate
        let mut b = blob.clone();
        b[1..9].fill(0);
        let s = format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(&b));
        assert_eq!(
            Envelope::parse(&s, &loc).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
    }

    #[test]
    fn format_2_headers_are_parsed_strictly() {
        let loc = Location::root();
        let body = [0u8; NONCE_LEN + TAG_LEN];
        let blob = |first: u8, handle: u64, version: &[u8]| {
            let mut b = vec![first];
            b.extend_from_slice(&handle.to_be_bytes());
            b.extend_from_slice(version);
            b.extend_from_slice(&body);
            format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(b))
        };
        let parse = |s: &str| Envelope::parse(s, &loc);
        let detail = |s: &str| parse(s).unwrap_err().detail().unwrap_or("").to_string();
        // good ones
        for (version, bytes) in [
            (1u32, &[0x01][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (MAX_KEY_VERSION, &[0xff, 0xff, 0xff, 0xff, 0x07]),
        ] {
            let e = parse(&blob(0x10, 5, bytes)).unwrap();
            assert_eq!(
                (e.key_version, e.key(), e.has_context()),
                (version, KeyRef::Handle(KeyHandle::new(5).unwrap()), false)
            );
            let mut w = Vec::new();
            write_leb128(&mut w, version);
            assert_eq!(w, bytes);
            assert_eq!(leb128_len(version), bytes.len());
        }
        assert!(parse(&blob(0x21, 5, &[1])).unwrap().has_context());
        assert_eq!(
            parse(&blob(0x21, 5, &[1])).unwrap().algorithm,
            Algorithm::ChaCha20Poly1305
        );
        // algorithm codes and flag bits
        for first in [0x00, 0x30, 0xf0, 0x01] {
            assert_eq!(
                detail(&blob(first, 5, &[1])),
                "the algorithm code is unknown",
                "{first:#x}"
            );
        }
        for first in [0x14, 0x18, 0x1c, 0x1f, 0x24] {
            assert_eq!(
                detail(&blob(first, 5, &[1])),
                "reserved flag bits are set",
                "{first:#x}"
            );
        }
        // the handle
        assert_eq!(detail(&blob(0x10, 0, &[1])), "the key handle is 0");
        // versions: 0, not minimal, too long, out of range
        assert_eq!(detail(&blob(0x10, 5, &[0x00])), "the key version is 0");
        assert_eq!(
            detail(&blob(0x10, 5, &[0x80, 0x00])),
            "the key version is not minimally encoded"
        );
        assert_eq!(
            detail(&blob(0x10, 5, &[0x81, 0x00])),
            "the key version is not minimally encoded"
        );
        assert_eq!(
            detail(&blob(0x10, 5, &[0xff, 0x80, 0x00])),
            "the key version is not minimally encoded"
        );
        assert_eq!(
            detail(&blob(0x10, 5, &[0x80, 0x80, 0x80, 0x80, 0x08])),
            "the key version is out of range"
        );
        assert_eq!(
            detail(&blob(0x10, 5, &[0xff, 0xff, 0xff, 0xff, 0x0f])),
            "the key version is out of range"
        );
        assert_eq!(
            detail(&blob(0x10, 5, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01])),
            "the key version is out of range"
        );
        // lengths: every cut of a minimal envelope is refused
        let full = URL_SAFE_NO_PAD.decode(&blob(0x10, 5, &[0xac, 0x02])[5..]).unwrap();
        for cut in 0..full.len() {
            let s = format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(&full[..cut]));
            assert_eq!(
                parse(&s).unwrap_err().kind(),
                ErrorKind::MalformedEnvelope,
                "cut at {cut}"
            );
        }
        assert!(parse(&format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(&full))).is_ok());
    }

    #[test]
    fn a_handle_swapped_for_another_does_not_authenticate() {
        let c = cipher(Algorithm::Aes256Gcm);
        let loc = Location::from_steps(&[LocStep::Key("email")]);
        let text = seal_as(KeyRef::Handle(HANDLE), &c, &loc, None, b"1");
        let mut blob = URL_SAFE_NO_PAD.decode(&text[5..]).unwrap();
        blob[1..9].copy_from_slice(&0x0123_4567_89ab_cdeeu64.to_be_bytes());
        let forged = format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(&blob));
        let env = Envelope::parse(&forged, &loc).unwrap();
        assert_eq!(
            env.key(),
            KeyRef::Handle(KeyHandle::new(0x0123_4567_89ab_cdee).unwrap())
        );
        // even with the very key the envelope was sealed under: the handle is authenticated
        let e = env.open(&c, &loc, None, &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
        assert!(e.message().contains("with handle 0123456789abcdee version 3"), "{e}");
        // and the same body under the other format's prefix does not parse or open either
        let as_v1 = text.replacen(PREFIX_V2, PREFIX_V1, 1);
        assert!(Envelope::parse(&as_v1, &loc)
            .and_then(|e| e.open(&c, &loc, None, &mut Vec::new()))
            .is_err());
    }

    #[test]
    fn sealing_checks_the_key_and_version() {
        let c = cipher(Algorithm::Aes256Gcm);
        let loc = Location::root();
        for (key, version) in [
            (KeyRef::Id(""), 1),
            (KeyRef::Id("k"), 0),
            (KeyRef::Handle(HANDLE), 0),
            (KeyRef::Handle(HANDLE), MAX_KEY_VERSION + 1),
        ] {
            let k = SealKey {
                cipher: &c,
                key,
                version,
            };
            assert!(seal(&k, &loc, None, b"1", &[0; 12], &mut Scratch::default()).is_err());
        }
        let names = KeyNames {
            key_id: "k",
            handle: None,
        };
        assert_eq!(names.key_ref(Format::V1).unwrap(), KeyRef::Id("k"));
        assert_eq!(names.key_ref(Format::V2).unwrap_err().kind(), ErrorKind::CatalogAccess);
        let names = KeyNames {
            key_id: "k",
            handle: Some(HANDLE),
        };
        assert!(names.names(KeyRef::Id("k")) && names.names(KeyRef::Handle(HANDLE)));
        assert!(!names.names(KeyRef::Id("j")) && !names.names(KeyRef::Handle(KeyHandle::new(1).unwrap())));
        assert_eq!(KeyHandle::from_i64(-1).unwrap().get(), u64::MAX);
        assert_eq!(KeyHandle::from_i64(-1).unwrap().to_i64(), -1);
        assert!(KeyHandle::from_i64(0).is_none());
        assert_eq!(HANDLE.to_string(), "0123456789abcdef");
    }

    #[test]
    fn versions_and_prefixes() {
        let loc = Location::root();
        assert_eq!(
            Envelope::parse("$ec3$AAAA", &loc).unwrap_err().kind(),
            ErrorKind::UnsupportedVersion
        );
        assert_eq!(
            Envelope::parse("$ec10$AAAA", &loc).unwrap_err().kind(),
            ErrorKind::UnsupportedVersion
        );
        assert_eq!(
            Envelope::parse("$ec02$AAAA", &loc).unwrap_err().kind(),
            ErrorKind::UnsupportedVersion
        );
        for prefix in [PREFIX_V1, PREFIX_V2] {
            assert_eq!(
                Envelope::parse(prefix, &loc).unwrap_err().kind(),
                ErrorKind::MalformedEnvelope
            );
            assert_eq!(
                Envelope::parse(&format!("{prefix}!!!!"), &loc).unwrap_err().kind(),
                ErrorKind::MalformedEnvelope
            );
            assert!(looks_like_envelope(prefix));
        }
        assert_eq!(
            Envelope::parse("hello", &loc).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
        assert!(!looks_like_envelope("$ec$x"));
        assert!(!looks_like_envelope("$eca$"));
        assert!(!looks_like_envelope(""));
        assert_eq!(Format::from_number(2), Some(Format::V2));
        assert_eq!(Format::from_number(3), None);
        assert_eq!(Format::DEFAULT.number(), 2);
    }

    #[test]
    fn key_ids_are_checked() {
        assert!(check_key_id("").is_err());
        assert!(check_key_id(&"k".repeat(256)).is_err());
        assert!(check_key_id(&"k".repeat(255)).is_ok());
        assert!(check_key_id("a\nb").is_err());
        assert!(check_key_id("subject:ünï").is_ok());
    }
}
