//! The envelope: the JSON string that replaces an encrypted field. Specified in `docs/format.md`.
//!
//! ```text
//! text  = "$ec1$" base64url-no-padding(blob)
//! blob  = header nonce(12) ciphertext tag(16)
//! header = algorithm(1) flags(1) key_id_len(1) key_id(key_id_len, UTF-8) key_version(4, big-endian)
//! aad   = "$ec1$" header location 0x00 [ u32be(len(context)) context ]     -- context part only when flag 0x01
//! ```

use crate::aead::{Algorithm, Cipher, NONCE_LEN, TAG_LEN};
use crate::error::{display_path, Error, ErrorKind, Result};
use crate::path::Location;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The text prefix of format version 1.
pub const PREFIX: &str = "$ec1$";
/// The format version this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// Flag: the envelope is bound to a context.
pub const FLAG_CONTEXT: u8 = 0x01;
/// The longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 255;
/// The longest string PostgreSQL stores inside a jsonb value (JENTRY_OFFLENMASK).
pub const MAX_ENVELOPE_LEN: usize = (1 << 28) - 1;
/// Bytes an envelope adds to its plaintext besides the key id, before base64.
pub const FIXED_OVERHEAD: usize = 3 + 4 + NONCE_LEN + TAG_LEN;

/// A parsed (not yet authenticated) envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub algorithm: Algorithm,
    pub flags: u8,
    pub key_id: String,
    pub key_version: u32,
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

fn write_header(out: &mut Vec<u8>, algorithm: Algorithm, flags: u8, key_id: &str, version: u32) {
    out.push(algorithm.code());
    out.push(flags);
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
}

fn build_aad(aad: &mut Vec<u8>, header: &[u8], location: &Location, context: Option<&[u8]>) {
    aad.clear();
    aad.extend_from_slice(PREFIX.as_bytes());
    aad.extend_from_slice(header);
    aad.extend_from_slice(location.encoded());
    aad.push(0x00);
    if let Some(c) = context {
        aad.extend_from_slice(&(c.len() as u32).to_be_bytes());
        aad.extend_from_slice(c);
    }
}

/// What to encrypt with: a cipher and the identity of its key.
pub struct SealKey<'a> {
    pub cipher: &'a Cipher,
    pub key_id: &'a str,
    pub version: u32,
}

/// Reusable buffers for sealing many values.
#[derive(Default)]
pub struct Scratch {
    blob: Vec<u8>,
    aad: Vec<u8>,
}

/// Encrypts `plaintext` (the JSON text of a value) bound to `location` and `context`.
pub fn seal(
    key: &SealKey<'_>,
    location: &Location,
    context: Option<&[u8]>,
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
    scratch: &mut Scratch,
) -> Result<String> {
    check_key_id(key.key_id)?;
    let mut out = Vec::new();
    seal_into(key, location, context, plaintext, nonce, scratch, &mut out)?;
    Ok(String::from_utf8(out).expect("an envelope is ASCII"))
}

/// [`seal`], appending the envelope text to `out` (no allocation once the buffers have grown). The caller has
/// checked the key id.
pub(crate) fn seal_into(
    key: &SealKey<'_>,
    location: &Location,
    context: Option<&[u8]>,
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<()> {
    let blob_len = FIXED_OVERHEAD + key.key_id.len() + plaintext.len();
    let text_len = PREFIX.len() + blob_len.div_ceil(3) * 4;
    if text_len > MAX_ENVELOPE_LEN {
        return Err(Error::too_large(
            &location.display(),
            &format!("the envelope would be {text_len} bytes; a jsonb string holds at most {MAX_ENVELOPE_LEN}"),
        ));
    }
    let flags = if context.is_some() { FLAG_CONTEXT } else { 0 };
    let blob = &mut scratch.blob;
    blob.clear();
    blob.reserve(blob_len);
    write_header(blob, key.cipher.algorithm(), flags, key.key_id, key.version);
    let header_len = blob.len();
    build_aad(&mut scratch.aad, &blob[..header_len], location, context);
    blob.extend_from_slice(nonce);
    let ct_start = blob.len();
    blob.extend_from_slice(plaintext);
    let tag = key.cipher.seal_in_place(nonce, &scratch.aad, &mut blob[ct_start..]);
    blob.extend_from_slice(&tag);
    // one allocation at most for the text (a fresh `out` would otherwise grow twice: prefix, then body)
    out.reserve(text_len);
    out.extend_from_slice(PREFIX.as_bytes());
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

impl Envelope {
    /// Parses the text form. `location` is only used in error messages.
    pub fn parse(text: &str, location: &Location) -> Result<Envelope> {
        Self::parse_reusing(text, location, Vec::new())
    }

    /// [`Envelope::parse`], decoding into `blob`'s allocation (get it back with [`Envelope::into_blob`]).
    pub fn parse_reusing(text: &str, location: &Location, mut blob: Vec<u8>) -> Result<Envelope> {
        let bad = |reason: &str| Error::malformed(&location.display(), reason);
        let Some(b64) = text.strip_prefix(PREFIX) else {
            if looks_like_envelope(text) {
                let v: String = text[3..].chars().take_while(|c| c.is_ascii_digit()).take(9).collect();
                return Err(Error::new(
                    ErrorKind::UnsupportedVersion,
                    format!(
                        "unsupported envelope format version {v} at {}",
                        display_path(&location.display())
                    ),
                )
                .with_hint(format!(
                    "This build reads envelope format version {FORMAT_VERSION}; upgrade event_crypto."
                )));
            }
            return Err(bad("the value does not start with $ec1$"));
        };
        blob.clear();
        URL_SAFE_NO_PAD
            .decode_vec(b64, &mut blob)
            .map_err(|_| bad("the body is not canonical unpadded base64url"))?;
        if blob.len() < 3 {
            return Err(bad("the envelope is truncated"));
        }
        let algorithm = Algorithm::from_code(blob[0]).ok_or_else(|| bad("the algorithm code is unknown"))?;
        let flags = blob[1];
        if flags & !FLAG_CONTEXT != 0 {
            return Err(bad("reserved flag bits are set"));
        }
        let kid_len = blob[2] as usize;
        if kid_len == 0 {
            return Err(bad("the key id is empty"));
        }
        let header_len = 3 + kid_len + 4;
        if blob.len() < header_len + NONCE_LEN + TAG_LEN {
            return Err(bad("the envelope is truncated"));
        }
        let key_id = std::str::from_utf8(&blob[3..3 + kid_len])
            .map_err(|_| bad("the key id is not UTF-8"))?
            .to_string();
        if key_id.chars().any(char::is_control) {
            return Err(bad("the key id contains control characters"));
        }
        let v = &blob[3 + kid_len..header_len];
        let key_version = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        if key_version == 0 {
            return Err(bad("the key version is 0"));
        }
        Ok(Envelope {
            algorithm,
            flags,
            key_id,
            key_version,
            blob,
            header_len,
        })
    }

    pub fn has_context(&self) -> bool {
        self.flags & FLAG_CONTEXT != 0
    }

    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        self.blob[self.header_len..self.header_len + NONCE_LEN]
            .try_into()
            .expect("length checked in parse")
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

    pub(crate) fn open_range(
        &mut self,
        cipher: &Cipher,
        location: &Location,
        context: Option<&[u8]>,
        aad: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        let fail = |detail: &str| {
            Error::new(
                ErrorKind::AuthenticationFailed,
                format!(
                    "envelope at {} failed authentication under key \"{}\" version {}",
                    display_path(&location.display()),
                    self.key_id,
                    self.key_version
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
        build_aad(aad, &self.blob[..self.header_len], location, context);
        let nonce = self.nonce();
        let tag_start = self.blob.len() - TAG_LEN;
        let tag: [u8; TAG_LEN] = self.blob[tag_start..].try_into().expect("length checked in parse");
        let ct_start = self.header_len + NONCE_LEN;
        if !cipher.open_in_place(&nonce, aad, &mut self.blob[ct_start..tag_start], &tag) {
            return Err(fail("the authentication tag does not match"));
        }
        Ok(ct_start..tag_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::LocStep;

    fn cipher(a: Algorithm) -> Cipher {
        Cipher::new(a, &[7u8; 32])
    }

    fn seal_str(c: &Cipher, loc: &Location, ctx: Option<&[u8]>, pt: &[u8]) -> String {
        let k = SealKey {
            cipher: c,
            key_id: "tenant-42",
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
        for a in Algorithm::ALL {
            let c = cipher(a);
            let loc = Location::from_steps(&[LocStep::Key("email")]);
            let text = seal_str(&c, &loc, Some(b"stream-1"), b"\"a@x.io\"");
            assert!(text.starts_with(PREFIX));
            assert!(looks_like_envelope(&text));
            let env = Envelope::parse(&text, &loc).unwrap();
            assert_eq!(env.algorithm, a);
            assert_eq!(env.key_id, "tenant-42");
            assert_eq!(env.key_version, 3);
            assert!(env.has_context());
            let pt = env.open(&c, &loc, Some(b"stream-1"), &mut Vec::new()).unwrap();
            assert_eq!(pt, b"\"a@x.io\"");
        }
    }

    #[test]
    fn binds_location_and_context() {
        let c = cipher(Algorithm::Aes256Gcm);
        let loc = Location::from_steps(&[LocStep::Key("email")]);
        let other = Location::from_steps(&[LocStep::Key("phone")]);
        let text = seal_str(&c, &loc, Some(b"s1"), b"1");
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
        let plain = seal_str(&c, &loc, None, b"1");
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

    #[test]
    fn every_flipped_byte_fails_closed() {
        let c = cipher(Algorithm::Aes256Gcm);
        let loc = Location::from_steps(&[LocStep::Key("email")]);
        let text = seal_str(&c, &loc, None, b"\"secret@example.com\"");
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

    #[test]
    fn versions_and_prefixes() {
        let loc = Location::root();
        assert_eq!(
            Envelope::parse("$ec2$AAAA", &loc).unwrap_err().kind(),
            ErrorKind::UnsupportedVersion
        );
        assert_eq!(
            Envelope::parse("$ec10$AAAA", &loc).unwrap_err().kind(),
            ErrorKind::UnsupportedVersion
        );
        assert_eq!(
            Envelope::parse("$ec1$", &loc).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
        assert_eq!(
            Envelope::parse("$ec1$!!!!", &loc).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
        assert_eq!(
            Envelope::parse("hello", &loc).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
        assert!(!looks_like_envelope("$ec$x"));
        assert!(!looks_like_envelope("$eca$"));
        assert!(!looks_like_envelope(""));
        assert!(looks_like_envelope("$ec1$"));
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
