//! Compression before encryption (opt-in): a value whose JSON text is longer than a threshold is compressed with
//! zstd (RFC 8878) before it is sealed, when that makes it smaller, and its envelope (format 2 only) carries the
//! flag [`crate::envelope::FLAG_COMPRESSED`]. Specified in `docs/format.md` (Compression).
//!
//! Decompression never trusts the frame: the content size a frame declares is ignored, the output grows in steps
//! up to a hard cap ([`MAX_DECOMPRESSED_LEN`], the longest string a jsonb value holds), the decoder's window is
//! capped ([`MAX_WINDOW_LOG`]), and the host can cancel between steps. A frame that expands beyond the cap (a
//! decompression bomb) fails with [`ErrorKind::TooLarge`] (SQLSTATE 54000) after at most that much output.
//!
//! Library: the `zstd` crate (bindings to the reference libzstd 1.5, bundled and linked statically by zstd-sys), not
//! the pure Rust `ruzstd`: the reference decoder is the most exercised one (fuzzed continuously upstream, used by
//! PostgreSQL itself for TOAST and base backups), it exposes the streaming step, the window cap and a reusable
//! context this module needs, and it has a real encoder at every level (ruzstd's encodes only at its fastest levels,
//! several times slower).

use crate::envelope::MAX_ENVELOPE_LEN;
use crate::error::{display_path, Error, ErrorKind, Result};
use std::cell::RefCell;
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// Values whose JSON text is at most this long (bytes) are never compressed, unless told otherwise.
pub const DEFAULT_THRESHOLD: usize = 256;
/// The longest plaintext a compressed envelope may expand to: the longest string jsonb holds (2^28 - 1 bytes),
/// which is also more than any uncompressed envelope can hold. Values longer than this are never compressed.
pub const MAX_DECOMPRESSED_LEN: usize = MAX_ENVELOPE_LEN;
/// The largest window a frame may need (2^23 = 8 MiB); the encoder uses 2^21 at most (level 3).
pub const MAX_WINDOW_LOG: u32 = 23;
/// The zstd level new envelopes are compressed at (zstd's default).
pub const LEVEL: i32 = 3;
/// The encoder's window (2 MiB; zstd level 3's own for large inputs).
const WINDOW_LOG: u32 = 21;
/// The first step of the output buffer while decompressing; it then doubles, up to the cap.
const FIRST_STEP: usize = 64 * 1024;

/// What encryption does before sealing a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Values are sealed as they are (the default).
    #[default]
    None,
    /// Values whose JSON text is longer than `threshold` bytes are compressed with zstd when that makes them
    /// smaller (envelope format 2 only).
    Zstd { threshold: usize },
}

impl Compression {
    /// `'none'` or `'zstd'` (with the given threshold). The argument is not echoed in the error.
    pub fn parse(name: &str, threshold: usize) -> Result<Compression> {
        match name {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd { threshold }),
            _ => Err(Error::invalid_argument("unknown compression").with_hint("Use 'none' or 'zstd'.")),
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Compression::None
    }

    /// The name `parse` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd { .. } => "zstd",
        }
    }
}

thread_local! {
    static CCTX: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

fn zstd_error(code: usize) -> Error {
    Error::new(ErrorKind::Unsupported, "zstd compression failed").with_detail(zstd_safe::get_error_name(code))
}

/// Compresses `plaintext` into `out` (cleared first) when `how` asks for it and the value is long enough; returns
/// whether `out` holds a zstd frame shorter than `plaintext` (otherwise the value is to be sealed as it is).
/// (The checks are inlined into every seal; the compression itself is kept out of the encryption's hot path.)
#[inline]
pub(crate) fn maybe_compress(how: Compression, plaintext: &[u8], out: &mut Vec<u8>) -> Result<bool> {
    let Compression::Zstd { threshold } = how else {
        return Ok(false);
    };
    if plaintext.len() <= threshold || plaintext.len() > MAX_DECOMPRESSED_LEN {
        return Ok(false);
    }
    compress_into(plaintext, out)
}

#[cold]
#[inline(never)]
fn compress_into(plaintext: &[u8], out: &mut Vec<u8>) -> Result<bool> {
    crate::check_interrupts();
    wipe(out);
    let bound = zstd_safe::compress_bound(plaintext.len());
    if out.capacity() < bound {
        *out = Vec::with_capacity(bound);
    }
    CCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let mut c = CCtx::try_create()
                .ok_or_else(|| Error::new(ErrorKind::Unsupported, "zstd compression context could not be made"))?;
            for p in [
                CParameter::CompressionLevel(LEVEL),
                CParameter::WindowLog(WINDOW_LOG),
                // the envelope's tag authenticates the frame: no checksum; no dictionary
                CParameter::ChecksumFlag(false),
                CParameter::ContentSizeFlag(true),
                CParameter::DictIdFlag(false),
            ] {
                c.set_parameter(p).map_err(zstd_error)?;
            }
            *cell = Some(c);
        }
        let c = cell.as_mut().expect("made above");
        c.compress2(out, plaintext).map_err(zstd_error)
    })?;
    Ok(out.len() < plaintext.len())
}

/// Overwrites a buffer's bytes (its whole capacity) and empties it.
fn wipe(v: &mut Vec<u8>) {
    zeroize::Zeroize::zeroize(v);
}

/// Decompresses the single zstd frame `frame` (the plaintext of a compressed envelope at `path`) into `out`
/// (cleared first). Errors: [`ErrorKind::TooLarge`] when the output would exceed [`MAX_DECOMPRESSED_LEN`] bytes,
/// [`ErrorKind::MalformedEnvelope`] when `frame` is not exactly one valid frame within the window cap. The
/// output never exceeds the cap, whatever the frame declares; on error `out` is wiped.
pub(crate) fn decompress(frame: &[u8], path: &str, out: &mut Vec<u8>) -> Result<()> {
    decompress_capped(frame, path, out, MAX_DECOMPRESSED_LEN)
}

pub(crate) fn decompress_capped(frame: &[u8], path: &str, out: &mut Vec<u8>, cap: usize) -> Result<()> {
    let r = DCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let mut d = DCtx::try_create()
                .ok_or_else(|| Error::new(ErrorKind::Unsupported, "zstd decompression context could not be made"))?;
            d.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
                .map_err(zstd_error)?;
            *cell = Some(d);
        }
        let d = cell.as_mut().expect("made above");
        // a context left mid-frame by an earlier error starts afresh
        d.reset(zstd_safe::ResetDirective::SessionOnly).map_err(zstd_error)?;
        run(d, frame, path, out, cap)
    });
    if r.is_err() {
        wipe(out);
    }
    r
}

fn run(d: &mut DCtx<'_>, frame: &[u8], path: &str, out: &mut Vec<u8>, cap: usize) -> Result<()> {
    let bad = |reason: &str| Error::malformed(path, reason);
    out.clear();
    let mut input = InBuffer::around(frame);
    loop {
        crate::check_interrupts();
        if out.len() == out.capacity() {
            if out.len() >= cap {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("compressed value at {} expands beyond the limit", display_path(path)),
                )
                .with_detail(format!(
                    "A compressed envelope's value may expand to at most {cap} bytes (the longest string jsonb holds); this one expands further and was not decompressed."
                ))
                .with_hint("The envelope was not written by event_crypto's encryption: it was forged by a holder of the key."));
            }
            // grow by doubling, in a fresh allocation (the old bytes are wiped, never left behind by a realloc)
            let step = out.len().max(FIRST_STEP).min(cap - out.len());
            let mut bigger = Vec::with_capacity(out.len() + step);
            bigger.extend_from_slice(out);
            wipe(out);
            *out = bigger;
        }
        let pos = out.len();
        let (hint, full) = {
            let mut output = OutBuffer::around_pos(out, pos);
            let hint = d.decompress_stream(&mut output, &mut input).map_err(|code| {
                bad(&format!(
                    "the compressed value is not a valid zstd frame ({})",
                    zstd_safe::get_error_name(code)
                ))
            })?;
            (hint, output.pos() == output.capacity())
        };
        if hint == 0 {
            if input.pos() != frame.len() {
                return Err(bad("bytes follow the compressed value's zstd frame"));
            }
            return Ok(());
        }
        if input.pos() == frame.len() && !full {
            return Err(bad("the compressed value's zstd frame is truncated"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_names() {
        assert_eq!(Compression::parse("none", 5).unwrap(), Compression::None);
        assert_eq!(
            Compression::parse("zstd", 5).unwrap(),
            Compression::Zstd { threshold: 5 }
        );
        let e = Compression::parse("gzip", 5).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(!e.to_string().contains("gzip"));
        assert_eq!(Compression::Zstd { threshold: 1 }.name(), "zstd");
        assert!(Compression::default().is_none());
    }

    #[test]
    fn threshold_and_gain() {
        let z = Compression::Zstd { threshold: 256 };
        let mut out = Vec::new();
        let text = format!("\"{}\"", "a".repeat(254));
        assert_eq!(text.len(), 256);
        assert!(!maybe_compress(z, text.as_bytes(), &mut out).unwrap());
        let text = format!("\"{}\"", "a".repeat(255));
        assert!(maybe_compress(z, text.as_bytes(), &mut out).unwrap());
        let mut back = Vec::new();
        decompress(&out, "", &mut back).unwrap();
        assert_eq!(back, text.as_bytes());
        assert!(!maybe_compress(Compression::None, text.as_bytes(), &mut out).unwrap());
    }

    #[test]
    fn bombs_stop_at_the_cap() {
        let zeros = vec![b'0'; 1 << 20];
        let frame = zstd::bulk::compress(&zeros, 3).unwrap();
        let mut out = Vec::new();
        let e = decompress_capped(&frame, "a", &mut out, 1000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert!(out.is_empty());
        decompress_capped(&frame, "a", &mut out, 1 << 20).unwrap();
        assert_eq!(out.len(), 1 << 20);
    }

    #[test]
    fn bad_frames_are_malformed() {
        let frame = zstd::bulk::compress(&[b'x'; 5000], 3).unwrap();
        let mut out = Vec::new();
        for cut in 0..frame.len() {
            let e = decompress(&frame[..cut], "a", &mut out).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::MalformedEnvelope, "cut {cut}");
        }
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert_eq!(
            decompress(&two, "a", &mut out).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
        let mut garbage = frame.clone();
        garbage.push(0);
        assert_eq!(
            decompress(&garbage, "a", &mut out).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
        decompress(&frame, "a", &mut out).unwrap();
        assert_eq!(out, vec![b'x'; 5000]);
    }

    #[test]
    fn windows_beyond_the_cap_are_refused() {
        // a frame whose window is 2^27 (a long input compressed with a large window, no content size)
        let mut c = CCtx::create();
        c.set_parameter(CParameter::WindowLog(27)).unwrap();
        c.set_parameter(CParameter::ContentSizeFlag(false)).unwrap();
        c.set_parameter(CParameter::CompressionLevel(1)).unwrap();
        let data: Vec<u8> = (0..(1u32 << 24))
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
        c.compress2(&mut frame, &data).unwrap();
        let mut out = Vec::new();
        let e = decompress(&frame, "a", &mut out).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MalformedEnvelope, "{e}");
    }
}
