//! JSON text to and from binary jsonb: what an envelope's plaintext is (the compact JSON text of the value).
//!
//! Parsing follows jsonb's rules: numbers become `numeric`, object keys are sorted shorter-first then bytewise,
//! and when a key repeats the last value wins. `\u0000` and lone surrogates are refused, as jsonb refuses them.

use super::{
    copy_value, new_datum_buffer, numeric_from_text, numeric_to_text, set_varlena_header, too_deep, write_string,
    ContainerWriter, Document, EntryType, Value, MAX_DEPTH, T_CONTAINER, T_FALSE, T_NULL, T_NUMERIC, T_TRUE,
};
use crate::error::{Error, Result};

/// Appends the compact JSON text of a value (keys in storage order, numbers as `numeric_out` prints them).
pub fn write_json(v: &Value<'_>, out: &mut Vec<u8>, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::String(s) => write_json_string(s, out),
        Value::Number(n) => {
            let mut s = String::new();
            numeric_to_text(n, &mut s)?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(c) => {
            out.push(b'[');
            for (i, e) in c.elements().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(&e?, out, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(c) => {
            out.push(b'{');
            for (i, p) in c.pairs().enumerate() {
                let (k, v) = p?;
                if i > 0 {
                    out.push(b',');
                }
                write_json_string(k, out);
                out.push(b':');
                write_json(&v, out, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Appends a JSON string literal: `"` and `\` escaped, control characters as \n, \t, ... or \u00XX.
pub fn write_json_string(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in s.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// The compact JSON text of a whole jsonb datum.
pub fn to_json_text(datum: &[u8]) -> Result<String> {
    let d = Document::from_datum(datum)?;
    let mut out = Vec::new();
    write_json(&d.value()?, &mut out, 0)?;
    String::from_utf8(out).map_err(|_| Error::invalid_argument("a jsonb string is not valid UTF-8"))
}

/// A parsed JSON value, ready to be written as binary jsonb.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Null,
    Bool(bool),
    String(Vec<u8>),
    /// A numeric datum.
    Number(Vec<u8>),
    Array(Vec<Parsed>),
    /// Pairs in jsonb order, keys unique.
    Object(Vec<(Vec<u8>, Parsed)>),
}

impl Parsed {
    /// Appends this value as a child of a container being written; returns its entry type.
    pub fn write(&self, out: &mut Vec<u8>, depth: usize) -> Result<EntryType> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(match self {
            Parsed::Null => T_NULL,
            Parsed::Bool(true) => T_TRUE,
            Parsed::Bool(false) => T_FALSE,
            Parsed::String(s) => write_string(out, s),
            Parsed::Number(n) => {
                copy_value(out, &Value::Number(n))?;
                T_NUMERIC
            }
            Parsed::Array(items) => {
                let mut w = ContainerWriter::array(out, items.len())?;
                for e in items {
                    let ty = e.write(out, depth + 1)?;
                    w.done(out, ty)?;
                }
                T_CONTAINER
            }
            Parsed::Object(pairs) => {
                let mut w = ContainerWriter::object(out, pairs.len())?;
                for (k, _) in pairs {
                    let ty = write_string(out, k);
                    w.done(out, ty)?;
                }
                for (_, v) in pairs {
                    let ty = v.write(out, depth + 1)?;
                    w.done(out, ty)?;
                }
                T_CONTAINER
            }
        })
    }

    /// Writes this value as a whole document into a fresh datum buffer.
    pub fn write_document(&self, out: &mut Vec<u8>) -> Result<()> {
        new_datum_buffer(out);
        match self {
            Parsed::Array(_) | Parsed::Object(_) => {
                self.write(out, 0)?;
            }
            scalar => {
                let mut w = ContainerWriter::raw_scalar(out)?;
                let ty = scalar.write(out, 1)?;
                w.done(out, ty)?;
            }
        }
        set_varlena_header(out)
    }
}

fn syntax(what: &str) -> Error {
    Error::invalid_argument(format!("invalid JSON: {what}"))
}

struct Parser<'t> {
    s: &'t [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8], v: Parsed) -> Result<Parsed> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(syntax("unexpected token"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Parsed> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        self.ws();
        match self.s.get(self.i) {
            None => Err(syntax("unexpected end of input")),
            Some(b'n') => self.literal(b"null", Parsed::Null),
            Some(b't') => self.literal(b"true", Parsed::Bool(true)),
            Some(b'f') => self.literal(b"false", Parsed::Bool(false)),
            Some(b'"') => Ok(Parsed::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Parsed::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Parsed::Array(items));
                        }
                        _ => return Err(syntax("expected , or ]")),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut pairs: Vec<(Vec<u8>, Parsed)> = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Parsed::Object(pairs));
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return Err(syntax("expected a string key"));
                    }
                    let k = self.string()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return Err(syntax("expected :"));
                    }
                    self.i += 1;
                    let v = self.value(depth + 1)?;
                    pairs.push((k, v));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        _ => return Err(syntax("expected , or }")),
                    }
                }
                // jsonb order; of repeated keys the last one wins (a stable sort keeps input order among equals)
                pairs.sort_by(|a, b| super::compare_keys(&a.0, &b.0));
                let mut unique: Vec<(Vec<u8>, Parsed)> = Vec::with_capacity(pairs.len());
                for p in pairs {
                    match unique.last_mut() {
                        Some(last) if last.0 == p.0 => *last = p,
                        _ => unique.push(p),
                    }
                }
                Ok(Parsed::Object(unique))
            }
            Some(_) => Err(syntax("unexpected character")),
        }
    }

    fn number(&mut self) -> Result<Parsed> {
        let start = self.i;
        let s = self.s;
        let mut i = self.i;
        if s.get(i) == Some(&b'-') {
            i += 1;
        }
        match s.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = s.get(i) {
                    i += 1;
                }
            }
            _ => return Err(syntax("invalid number")),
        }
        // at least one digit after the point and in the exponent
        let digits = |from: usize| -> Result<usize> {
            let end = from + s[from..].iter().take_while(|c| c.is_ascii_digit()).count();
            if end == from {
                return Err(syntax("invalid number"));
            }
            Ok(end)
        };
        if s.get(i) == Some(&b'.') {
            i = digits(i + 1)?;
        }
        if let Some(b'e' | b'E') = s.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = s.get(i) {
                i += 1;
            }
            i = digits(i)?;
        }
        self.i = i;
        Ok(Parsed::Number(numeric_from_text(&s[start..i])?))
    }

    fn hex4(&mut self) -> Result<u32> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| syntax("truncated \\u escape"))?;
        let text = std::str::from_utf8(h).map_err(|_| syntax("invalid \\u escape"))?;
        if !text.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(syntax("invalid \\u escape"));
        }
        self.i += 4;
        Ok(u32::from_str_radix(text, 16).expect("four hex digits"))
    }

    fn string(&mut self) -> Result<Vec<u8>> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let start = self.i;
            while let Some(&c) = self.s.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.extend_from_slice(&self.s[start..self.i]);
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let e = *self.s.get(self.i).ok_or_else(|| syntax("unterminated string"))?;
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0C),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if cp == 0 {
                                return Err(syntax("\\u0000 cannot be stored in jsonb"));
                            }
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(syntax("a high surrogate is not followed by a low one"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(syntax("invalid surrogate pair"));
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return Err(syntax("a low surrogate without a high one"));
                            }
                            let ch = char::from_u32(cp).ok_or_else(|| syntax("invalid code point"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(syntax("invalid escape")),
                    }
                }
                Some(_) => return Err(syntax("a control character inside a string")),
                None => return Err(syntax("unterminated string")),
            }
        }
    }
}

/// Parses JSON text (which must be valid UTF-8) into a value.
pub fn parse_json(text: &[u8]) -> Result<Parsed> {
    std::str::from_utf8(text).map_err(|_| syntax("the text is not valid UTF-8"))?;
    let mut p = Parser { s: text, i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != text.len() {
        return Err(syntax("trailing characters after the value"));
    }
    Ok(v)
}

/// Builds a jsonb datum from JSON text, as `jsonb_in` would.
pub fn from_json_text(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    parse_json(text.as_bytes())?.write_document(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_and_unescape() {
        let mut out = Vec::new();
        write_json_string("a\"b\\c\n\u{1}é😀/".as_bytes(), &mut out);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "\"a\\\"b\\\\c\\n\\u0001é😀/\"");
        assert_eq!(
            parse_json(&out).unwrap(),
            Parsed::String("a\"b\\c\n\u{1}é😀/".as_bytes().to_vec())
        );
        assert_eq!(
            parse_json(br#""\ud83d\ude00\u00e9\/""#).unwrap(),
            Parsed::String("😀é/".as_bytes().to_vec())
        );
    }

    #[test]
    fn refuses_what_jsonb_refuses() {
        for bad in [
            "",
            "nul",
            "[1,]",
            "{\"a\" 1}",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "01",
            "1.",
            "-",
            "\"a",
            "[1] x",
            "\"\u{1}\"",
            "{1:2}",
            ".5",
            "+1",
        ] {
            assert!(parse_json(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse_json(b"\"\xff\"").is_err(), "invalid UTF-8");
    }

    #[test]
    fn last_repeated_key_wins_and_keys_are_sorted() {
        let d = from_json_text(r#"{"bb": 1, "a": 2, "bb": 3, "c": {"y": 1, "x": 2}}"#).unwrap();
        assert_eq!(to_json_text(&d).unwrap(), r#"{"a":2,"c":{"x":2,"y":1},"bb":3}"#);
    }

    #[test]
    fn depth_is_bounded() {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(depth_checks)
            .unwrap()
            .join()
            .unwrap();
    }

    fn depth_checks() {
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(parse_json(deep.as_bytes()).is_err());
        let ok = "[".repeat(100) + &"]".repeat(100);
        let d = from_json_text(&ok).unwrap();
        assert_eq!(to_json_text(&d).unwrap(), ok);
    }
}
