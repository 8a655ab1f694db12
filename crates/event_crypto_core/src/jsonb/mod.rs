//! PostgreSQL's binary `jsonb` format, read and written directly.
//!
//! Encrypting three fields of an event should cost little more than copying it. Going through a tree of owned
//! values (or through text) costs far more than the cryptography, so documents stay in their binary form here:
//! [`Container`] reads a jsonb datum in place without copying, and [`ContainerWriter`] builds a new one in which
//! untouched strings, numbers and whole sub-containers are copied byte for byte.
//!
//! The layout (PostgreSQL's `src/include/utils/jsonb.h`, unchanged since 9.4):
//! - a varlena header, then the root container;
//! - a container is a `u32` header (count | `JB_FSCALAR` | `JB_FOBJECT` | `JB_FARRAY`), then one `u32` JEntry per
//!   child (for objects: all keys, sorted shorter-first then bytewise, then all values in the same order), then the
//!   children's data;
//! - a JEntry holds the child's type and either its length or, for every 32nd child, its end offset
//!   (`JENTRY_HAS_OFF`), so lookups need not sum every length;
//! - numbers (a `numeric` varlena) and containers start on a 4-byte boundary; the padding before them counts as
//!   part of their length;
//! - a scalar at the top level is an array of one element with `JB_FSCALAR` set.
//!
//! All integers are in the machine's byte order, as PostgreSQL stores them.

mod numeric;
mod text;

pub use numeric::{numeric_from_text, numeric_to_text};
pub use text::{from_json_text, parse_json, to_json_text, write_json, Parsed};

use crate::error::{Error, ErrorKind, Result};

const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;

const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JB_OFFSET_STRIDE: usize = 32;

/// The type bits of a JEntry.
pub type EntryType = u32;
pub const T_STRING: EntryType = 0x0000_0000;
pub const T_NUMERIC: EntryType = 0x1000_0000;
pub const T_FALSE: EntryType = 0x2000_0000;
pub const T_TRUE: EntryType = 0x3000_0000;
pub const T_NULL: EntryType = 0x4000_0000;
pub const T_CONTAINER: EntryType = 0x5000_0000;

/// The deepest nesting read or written; deeper documents are refused rather than risking the stack.
pub const MAX_DEPTH: usize = 1000;
/// The largest container the format can describe.
pub const MAX_CONTAINER_LEN: usize = JENTRY_OFFLENMASK as usize;

fn corrupt(what: &str) -> Error {
    Error::invalid_argument(format!("the jsonb value is corrupt: {what}"))
}

pub(crate) fn too_deep() -> Error {
    Error::new(
        ErrorKind::TooLarge,
        format!("the JSON document is nested more than {MAX_DEPTH} levels deep"),
    )
}

fn read_u32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| corrupt("truncated"))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Strips the varlena header of a datum (1- or 4-byte header, as a packed or plain detoasted datum has); returns
/// the bytes it covers.
pub fn varlena_payload(datum: &[u8]) -> Result<&[u8]> {
    let first = *datum.first().ok_or_else(|| corrupt("empty datum"))?;
    let (hdr, total) = if cfg!(target_endian = "little") {
        if first & 0x01 == 0x01 {
            if first == 0x01 {
                return Err(corrupt("an external TOAST pointer was not detoasted"));
            }
            (1, (first >> 1) as usize)
        } else if first & 0x03 == 0x00 {
            (4, (read_u32(datum, 0)? >> 2) as usize)
        } else {
            return Err(corrupt("a compressed datum was not detoasted"));
        }
    } else if first & 0x80 == 0x80 {
        if first == 0x80 {
            return Err(corrupt("an external TOAST pointer was not detoasted"));
        }
        (1, (first & 0x7F) as usize)
    } else if first & 0xC0 == 0x00 {
        (4, (read_u32(datum, 0)? & 0x3FFF_FFFF) as usize)
    } else {
        return Err(corrupt("a compressed datum was not detoasted"));
    };
    if total < hdr || total > datum.len() {
        return Err(corrupt("the varlena length does not match"));
    }
    Ok(&datum[hdr..total])
}

/// Writes the 4-byte varlena header for a buffer that starts with 4 reserved bytes.
pub fn set_varlena_header(buf: &mut [u8]) -> Result<()> {
    let len = buf.len();
    if len > 0x3FFF_FFFF {
        return Err(Error::new(ErrorKind::TooLarge, "the jsonb value would exceed 1 GB"));
    }
    let word = if cfg!(target_endian = "little") {
        (len as u32) << 2
    } else {
        len as u32
    };
    buf[..4].copy_from_slice(&word.to_ne_bytes());
    Ok(())
}

/// A container (object or array) inside a jsonb value, read in place.
///
/// `base` is the whole value from the root container on, `pos` where this container's header is. Offsets inside
/// the format are aligned relative to the root container, which PostgreSQL always places on a 4-byte boundary.
#[derive(Clone, Copy)]
pub struct Container<'a> {
    base: &'a [u8],
    pos: usize,
    header: u32,
}

/// One value read in place.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The string's bytes (UTF-8 in a UTF8 database), without quotes or escapes.
    String(&'a [u8]),
    /// A `numeric` varlena.
    Number(&'a [u8]),
    Array(Container<'a>),
    Object(Container<'a>),
}

impl<'a> Value<'a> {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
}

/// A jsonb document: its root container.
#[derive(Clone, Copy)]
pub struct Document<'a> {
    root: Container<'a>,
}

impl<'a> Document<'a> {
    /// Reads a jsonb datum (with its varlena header).
    pub fn from_datum(datum: &'a [u8]) -> Result<Document<'a>> {
        let base = varlena_payload(datum)?;
        let root = Container::at(base, 0)?;
        if root.is_scalar() && (root.len() != 1 || !root.is_array()) {
            return Err(corrupt("a scalar root is not a one-element array"));
        }
        Ok(Document { root })
    }

    /// The root container (a scalar document is a one-element array flagged as scalar).
    /// The datum's bytes after the varlena header: every key and string of the document is among them verbatim.
    pub fn bytes(&self) -> &'a [u8] {
        self.root.base
    }

    pub fn root(&self) -> Container<'a> {
        self.root
    }

    /// The document's value: the root container, or the scalar it wraps.
    pub fn value(&self) -> Result<Value<'a>> {
        if self.root.is_scalar() {
            self.root
                .elements()
                .next()
                .ok_or_else(|| corrupt("empty scalar root"))?
        } else {
            Ok(self.root.as_value())
        }
    }
}

/// Reads the entries of a container one after another, keeping the running offset.
struct Cursor {
    index: usize,
    offset: usize,
}

impl<'a> Container<'a> {
    fn at(base: &'a [u8], pos: usize) -> Result<Container<'a>> {
        let header = read_u32(base, pos)?;
        let kinds = header & (JB_FOBJECT | JB_FARRAY);
        if kinds != JB_FOBJECT && kinds != JB_FARRAY {
            return Err(corrupt("a container is neither an object nor an array"));
        }
        let c = Container { base, pos, header };
        if c.data_start() > base.len() {
            return Err(corrupt("a container's entries are truncated"));
        }
        Ok(c)
    }

    pub fn is_object(&self) -> bool {
        self.header & JB_FOBJECT != 0
    }
    pub fn is_array(&self) -> bool {
        self.header & JB_FARRAY != 0
    }
    pub fn is_scalar(&self) -> bool {
        self.header & JB_FSCALAR != 0
    }
    /// Number of elements (arrays) or key/value pairs (objects).
    pub fn len(&self) -> usize {
        (self.header & JB_CMASK) as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn n_entries(&self) -> usize {
        if self.is_object() {
            self.len() * 2
        } else {
            self.len()
        }
    }
    fn entry(&self, i: usize) -> u32 {
        let at = self.pos + 4 + 4 * i;
        u32::from_ne_bytes(self.base[at..at + 4].try_into().expect("4 bytes"))
    }
    fn data_start(&self) -> usize {
        self.pos + 4 + 4 * self.n_entries()
    }

    fn as_value(self) -> Value<'a> {
        if self.is_object() {
            Value::Object(self)
        } else {
            Value::Array(self)
        }
    }

    /// The raw bytes of the whole container, from its header to its last child.
    pub fn bytes(&self) -> Result<&'a [u8]> {
        let end = if self.n_entries() == 0 {
            self.data_start()
        } else {
            self.data_start() + self.end_offset(self.n_entries() - 1)
        };
        self.base
            .get(self.pos..end)
            .ok_or_else(|| corrupt("a container is truncated"))
    }

    /// Start offset (relative to the data area) of entry `index`, as PostgreSQL's getJsonbOffset computes it.
    fn start_offset(&self, index: usize) -> usize {
        let mut offset = 0usize;
        for i in (0..index).rev() {
            let e = self.entry(i);
            offset += (e & JENTRY_OFFLENMASK) as usize;
            if e & JENTRY_HAS_OFF != 0 {
                break;
            }
        }
        offset
    }

    fn end_offset(&self, index: usize) -> usize {
        let e = self.entry(index);
        if e & JENTRY_HAS_OFF != 0 {
            (e & JENTRY_OFFLENMASK) as usize
        } else {
            self.start_offset(index) + (e & JENTRY_OFFLENMASK) as usize
        }
    }

    fn cursor(&self, index: usize) -> Cursor {
        Cursor {
            index,
            offset: self.start_offset(index),
        }
    }

    fn next(&self, cur: &mut Cursor) -> Result<Value<'a>> {
        let e = self.entry(cur.index);
        let start = cur.offset;
        let end = if e & JENTRY_HAS_OFF != 0 {
            (e & JENTRY_OFFLENMASK) as usize
        } else {
            start + (e & JENTRY_OFFLENMASK) as usize
        };
        if end < start {
            return Err(corrupt("entry offsets go backwards"));
        }
        cur.index += 1;
        cur.offset = end;
        self.value(e & JENTRY_TYPEMASK, self.data_start() + start, self.data_start() + end)
    }

    fn value(&self, ty: u32, start: usize, end: usize) -> Result<Value<'a>> {
        if end > self.base.len() {
            return Err(corrupt("a value lies outside the datum"));
        }
        Ok(match ty {
            T_STRING => Value::String(&self.base[start..end]),
            T_NUMERIC => {
                let s = align4(start).min(end);
                Value::Number(&self.base[s..end])
            }
            T_FALSE => Value::Bool(false),
            T_TRUE => Value::Bool(true),
            T_NULL => Value::Null,
            T_CONTAINER => {
                let c = Container::at(self.base, align4(start))?;
                if c.is_scalar() {
                    return Err(corrupt("a nested container is flagged as scalar"));
                }
                c.as_value()
            }
            _ => return Err(corrupt("unknown entry type")),
        })
    }

    /// The elements of an array, in order.
    pub fn elements(self) -> impl Iterator<Item = Result<Value<'a>>> {
        let n = if self.is_array() { self.len() } else { 0 };
        let mut cur = self.cursor(0);
        (0..n).map(move |_| self.next(&mut cur))
    }

    /// The keys of an object, in storage order (shorter first, then bytewise).
    pub fn keys(self) -> impl Iterator<Item = Result<&'a [u8]>> {
        let n = if self.is_object() { self.len() } else { 0 };
        let mut cur = self.cursor(0);
        (0..n).map(move |_| match self.next(&mut cur)? {
            Value::String(k) => Ok(k),
            _ => Err(corrupt("an object key is not a string")),
        })
    }

    /// The values of an object, in the order of its keys.
    pub fn values(self) -> impl Iterator<Item = Result<Value<'a>>> {
        let n = if self.is_object() { self.len() } else { 0 };
        let mut cur = self.cursor(n);
        (0..n).map(move |_| self.next(&mut cur))
    }

    /// The key/value pairs of an object, in storage order.
    pub fn pairs(self) -> impl Iterator<Item = Result<(&'a [u8], Value<'a>)>> {
        let n = if self.is_object() { self.len() } else { 0 };
        let mut keys = self.cursor(0);
        let mut vals = self.cursor(n);
        (0..n).map(move |_| {
            let k = match self.next(&mut keys)? {
                Value::String(k) => k,
                _ => return Err(corrupt("an object key is not a string")),
            };
            Ok((k, self.next(&mut vals)?))
        })
    }

    /// The value of `key` in an object (binary search, as PostgreSQL does).
    pub fn get(&self, key: &[u8]) -> Result<Option<Value<'a>>> {
        if !self.is_object() {
            return Ok(None);
        }
        let n = self.len();
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let mut cur = self.cursor(mid);
            let candidate = match self.next(&mut cur)? {
                Value::String(k) => k,
                _ => return Err(corrupt("an object key is not a string")),
            };
            match compare_keys(candidate, key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let mut cur = self.cursor(mid + n);
                    return self.next(&mut cur).map(Some);
                }
            }
        }
        Ok(None)
    }

    /// Element `index` of an array.
    pub fn index(&self, index: usize) -> Result<Option<Value<'a>>> {
        if !self.is_array() || index >= self.len() {
            return Ok(None);
        }
        let mut cur = self.cursor(index);
        self.next(&mut cur).map(Some)
    }
}

/// jsonb's key order: shorter keys first, then bytewise.
pub fn compare_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Pads the buffer to a 4-byte boundary (the buffer starts at the varlena header, which is aligned).
fn pad4(out: &mut Vec<u8>) {
    let n = align4(out.len()) - out.len();
    out.extend_from_slice(&[0u8; 3][..n]);
}

/// Writes one container: call [`ContainerWriter::begin`], write each child into the buffer (keys first for an
/// object) and call [`ContainerWriter::done`] after each with its type.
pub struct ContainerWriter {
    jentry_pos: usize,
    data_start: usize,
    index: usize,
    n_entries: usize,
    total: usize,
}

impl ContainerWriter {
    /// Starts an object of `pairs` pairs.
    pub fn object(out: &mut Vec<u8>, pairs: usize) -> Result<ContainerWriter> {
        Self::begin(out, JB_FOBJECT, pairs, pairs * 2)
    }
    /// Starts an array of `elements` elements.
    pub fn array(out: &mut Vec<u8>, elements: usize) -> Result<ContainerWriter> {
        Self::begin(out, JB_FARRAY, elements, elements)
    }
    /// Starts the one-element array that wraps a scalar at the top level.
    pub fn raw_scalar(out: &mut Vec<u8>) -> Result<ContainerWriter> {
        Self::begin(out, JB_FARRAY | JB_FSCALAR, 1, 1)
    }

    /// Starts an object with the same keys as `src`: its header, key entries and key bytes are copied in one
    /// piece (keys never change when values are replaced); the caller then writes the values in `src`'s order.
    pub fn object_like(out: &mut Vec<u8>, src: &Container<'_>) -> Result<ContainerWriter> {
        if !src.is_object() {
            return Err(corrupt("an object was expected"));
        }
        let n = src.len();
        let mut w = Self::begin(out, JB_FOBJECT, n, n * 2)?;
        if n > 0 {
            let keys_end = src.end_offset(n - 1);
            let entries = src.base.get(src.pos + 4..src.pos + 4 + 4 * n);
            let key_bytes = src.base.get(src.data_start()..src.data_start() + keys_end);
            let (Some(entries), Some(key_bytes)) = (entries, key_bytes) else {
                return Err(corrupt("the keys of an object are truncated"));
            };
            out[w.jentry_pos..w.jentry_pos + 4 * n].copy_from_slice(entries);
            out.extend_from_slice(key_bytes);
            w.index = n;
            w.total = keys_end;
        }
        Ok(w)
    }

    fn begin(out: &mut Vec<u8>, flags: u32, count: usize, n_entries: usize) -> Result<ContainerWriter> {
        if count > JB_CMASK as usize {
            return Err(Error::new(
                ErrorKind::TooLarge,
                "a JSON container has too many elements",
            ));
        }
        pad4(out);
        out.extend_from_slice(&(flags | count as u32).to_ne_bytes());
        let jentry_pos = out.len();
        out.resize(jentry_pos + 4 * n_entries, 0);
        Ok(ContainerWriter {
            jentry_pos,
            data_start: out.len(),
            index: 0,
            n_entries,
            total: 0,
        })
    }

    /// Records the child just written (everything appended since the previous child).
    pub fn done(&mut self, out: &mut [u8], ty: EntryType) -> Result<()> {
        debug_assert!(self.index < self.n_entries, "more children than announced");
        let total = out.len() - self.data_start;
        if total > MAX_CONTAINER_LEN {
            return Err(Error::new(
                ErrorKind::TooLarge,
                "a JSON container would exceed the jsonb limit of 256 MB",
            ));
        }
        let meta = if self.index.is_multiple_of(JB_OFFSET_STRIDE) {
            ty | JENTRY_HAS_OFF | total as u32
        } else {
            ty | (total - self.total) as u32
        };
        let at = self.jentry_pos + 4 * self.index;
        out[at..at + 4].copy_from_slice(&meta.to_ne_bytes());
        self.total = total;
        self.index += 1;
        Ok(())
    }
}

/// Appends a string child.
pub fn write_string(out: &mut Vec<u8>, s: &[u8]) -> EntryType {
    out.extend_from_slice(s);
    T_STRING
}

/// Appends a child copied from another document, unchanged.
pub fn copy_value(out: &mut Vec<u8>, v: &Value<'_>) -> Result<EntryType> {
    Ok(match v {
        Value::Null => T_NULL,
        Value::Bool(false) => T_FALSE,
        Value::Bool(true) => T_TRUE,
        Value::String(s) => write_string(out, s),
        Value::Number(n) => {
            pad4(out);
            out.extend_from_slice(n);
            T_NUMERIC
        }
        Value::Array(c) | Value::Object(c) => {
            pad4(out);
            out.extend_from_slice(c.bytes()?);
            T_CONTAINER
        }
    })
}

/// A buffer that starts with the 4 bytes reserved for the varlena header.
pub fn new_datum_buffer(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0u8; 4]);
}

/// Writes `v` as a whole document (wrapping a scalar) into a fresh datum buffer.
pub fn write_document_value(out: &mut Vec<u8>, v: &Value<'_>) -> Result<()> {
    new_datum_buffer(out);
    match v {
        Value::Array(c) | Value::Object(c) => {
            out.extend_from_slice(c.bytes()?);
        }
        scalar => {
            let mut w = ContainerWriter::raw_scalar(out)?;
            let ty = copy_value(out, scalar)?;
            w.done(out, ty)?;
        }
    }
    set_varlena_header(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Vec<u8> {
        from_json_text(text).unwrap()
    }

    #[test]
    fn reads_what_it_writes() {
        let d = doc(r#"{"b": [1, "x", null, true, false, {"k": 2.50}], "aa": "y", "a": {}}"#);
        let d = Document::from_datum(&d).unwrap();
        let keys: Vec<_> = d.root().keys().map(|k| k.unwrap().to_vec()).collect();
        assert_eq!(
            keys,
            vec![b"a".to_vec(), b"b".to_vec(), b"aa".to_vec()],
            "shorter keys first"
        );
        let Some(Value::Array(b)) = d.root().get(b"b").unwrap() else {
            panic!("b is an array")
        };
        assert_eq!(b.len(), 6);
        assert!(matches!(b.index(1).unwrap(), Some(Value::String(b"x"))));
        assert!(d.root().get(b"zz").unwrap().is_none());
        assert_eq!(
            to_json_text(&doc(
                r#"{"b": [1, "x", null, true, false, {"k": 2.50}], "aa": "y", "a": {}}"#
            ))
            .unwrap(),
            r#"{"a":{},"b":[1,"x",null,true,false,{"k":2.50}],"aa":"y"}"#
        );
    }

    #[test]
    fn offsets_every_32nd_entry() {
        // 100 elements cross several JB_OFFSET_STRIDE boundaries; every element must still be found.
        let text = format!(
            "[{}]",
            (0..100).map(|i| format!("\"v{i}\"")).collect::<Vec<_>>().join(",")
        );
        let d = doc(&text);
        let d = Document::from_datum(&d).unwrap();
        for i in 0..100 {
            let Some(Value::String(s)) = d.root().index(i).unwrap() else {
                panic!("element {i}")
            };
            assert_eq!(s, format!("v{i}").as_bytes());
        }
        let obj = format!(
            "{{{}}}",
            (0..70)
                .map(|i| format!("\"k{i:03}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let d = doc(&obj);
        let d = Document::from_datum(&d).unwrap();
        for i in 0..70 {
            let Some(Value::Number(n)) = d.root().get(format!("k{i:03}").as_bytes()).unwrap() else {
                panic!("key {i}")
            };
            let mut s = String::new();
            numeric_to_text(n, &mut s).unwrap();
            assert_eq!(s, i.to_string());
        }
    }

    #[test]
    fn scalar_documents() {
        for t in ["\"s\"", "1", "null", "true"] {
            let d = doc(t);
            let d2 = Document::from_datum(&d).unwrap();
            assert!(d2.root().is_scalar());
            assert_eq!(to_json_text(&d).unwrap(), t);
        }
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let good = doc(r#"{"a": [1, 2, {"b": "c"}], "d": "e"}"#);
        for cut in 0..good.len() {
            let mut b = good[..cut].to_vec();
            if b.len() >= 4 {
                let word = if cfg!(target_endian = "little") {
                    (cut as u32) << 2
                } else {
                    cut as u32
                };
                b[..4].copy_from_slice(&word.to_ne_bytes());
            }
            let _ = Document::from_datum(&b).and_then(|d| to_json_text_doc(&d));
        }
        for i in 4..good.len() {
            for x in [0x00u8, 0xFF, 0x55] {
                let mut b = good.clone();
                b[i] = x;
                let _ = Document::from_datum(&b).and_then(|d| to_json_text_doc(&d));
            }
        }
    }

    fn to_json_text_doc(d: &Document<'_>) -> Result<String> {
        let mut s = Vec::new();
        write_json(&d.value()?, &mut s, 0)?;
        Ok(String::from_utf8_lossy(&s).into_owned())
    }
}
