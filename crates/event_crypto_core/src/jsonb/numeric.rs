//! PostgreSQL's `numeric` on-disk format, the way jsonb stores numbers: converted to and from decimal text exactly
//! as `numeric_out` and `numeric_in` do (base-10000 digits, a weight, a display scale; the short header for values
//! that fit it). The extension's tests compare both directions with PostgreSQL's own functions.

use super::{corrupt, varlena_payload};
use crate::error::{Error, ErrorKind, Result};

const DEC_DIGITS: i64 = 4;
const NUMERIC_SIGN_MASK: u16 = 0xC000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SPECIAL: u16 = 0xC000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NUMERIC_SHORT_DSCALE_MASK: u16 = 0x1F80;
const NUMERIC_SHORT_DSCALE_SHIFT: u16 = 7;
const NUMERIC_SHORT_DSCALE_MAX: i64 = 63;
const NUMERIC_SHORT_WEIGHT_SIGN_MASK: u16 = 0x0040;
const NUMERIC_SHORT_WEIGHT_MASK: u16 = 0x003F;
const NUMERIC_SHORT_WEIGHT_MAX: i64 = 63;
const NUMERIC_SHORT_WEIGHT_MIN: i64 = -64;
const NUMERIC_DSCALE_MASK: u16 = 0x3FFF;
/// numeric_in refuses exponents beyond this (NUMERIC_MAX_PRECISION).
const MAX_EXPONENT: i64 = 1000;

struct Parts<'a> {
    negative: bool,
    weight: i64,
    dscale: i64,
    digits: &'a [u8],
}

impl Parts<'_> {
    fn digit(&self, i: i64) -> u16 {
        if i < 0 || (i as usize) >= self.digits.len() / 2 {
            0
        } else {
            let at = 2 * i as usize;
            u16::from_ne_bytes([self.digits[at], self.digits[at + 1]])
        }
    }
}

fn parts(datum: &[u8]) -> Result<Parts<'_>> {
    let b = varlena_payload(datum)?;
    if b.len() < 2 {
        return Err(corrupt("a number is truncated"));
    }
    let header = u16::from_ne_bytes([b[0], b[1]]);
    if header & NUMERIC_SIGN_MASK == NUMERIC_SPECIAL {
        return Err(corrupt("a number is NaN or infinite"));
    }
    let (negative, weight, dscale, digits) = if header & NUMERIC_SIGN_MASK == NUMERIC_SHORT {
        let weight = if header & NUMERIC_SHORT_WEIGHT_SIGN_MASK != 0 {
            (header & NUMERIC_SHORT_WEIGHT_MASK) as i64 - 64
        } else {
            (header & NUMERIC_SHORT_WEIGHT_MASK) as i64
        };
        (
            header & NUMERIC_SHORT_SIGN_MASK != 0,
            weight,
            ((header & NUMERIC_SHORT_DSCALE_MASK) >> NUMERIC_SHORT_DSCALE_SHIFT) as i64,
            &b[2..],
        )
    } else {
        if b.len() < 4 {
            return Err(corrupt("a number is truncated"));
        }
        (
            header & NUMERIC_SIGN_MASK == NUMERIC_NEG,
            i16::from_ne_bytes([b[2], b[3]]) as i64,
            (header & NUMERIC_DSCALE_MASK) as i64,
            &b[4..],
        )
    };
    if !digits.len().is_multiple_of(2) {
        return Err(corrupt("a number has a partial digit"));
    }
    let p = Parts {
        negative,
        weight,
        dscale,
        digits,
    };
    if (0..(digits.len() / 2) as i64).any(|i| p.digit(i) > 9999) {
        return Err(corrupt("a number has a digit out of range"));
    }
    Ok(p)
}

/// Appends the decimal text of a numeric datum, as `numeric_out` prints it.
pub fn numeric_to_text(datum: &[u8], out: &mut String) -> Result<()> {
    let p = parts(datum)?;
    if p.negative {
        out.push('-');
    }
    let mut d: i64;
    if p.weight < 0 {
        d = p.weight + 1;
        out.push('0');
    } else {
        d = 0;
        while d <= p.weight {
            let dig = p.digit(d);
            let s = format!("{dig:04}");
            if d == 0 {
                out.push_str(s.trim_start_matches('0'));
                if dig == 0 {
                    out.push('0');
                }
            } else {
                out.push_str(&s);
            }
            d += 1;
        }
    }
    if p.dscale > 0 {
        out.push('.');
        let mut written = 0;
        while written < p.dscale {
            let s = format!("{:04}", p.digit(d));
            let take = (p.dscale - written).min(DEC_DIGITS) as usize;
            out.push_str(&s[..take]);
            written += DEC_DIGITS;
            d += 1;
        }
    }
    Ok(())
}

fn bad_number() -> Error {
    Error::invalid_argument("invalid JSON number")
}

/// Builds a numeric datum (4-byte varlena header) from a JSON number's text, as `numeric_in` does.
pub fn numeric_from_text(text: &[u8]) -> Result<Vec<u8>> {
    // an optional sign at `i`, skipped; true for '-'
    let sign = |i: &mut usize| -> bool {
        match text.get(*i) {
            Some(c @ (b'-' | b'+')) => {
                *i += 1;
                *c == b'-'
            }
            _ => false,
        }
    };
    let mut i = 0;
    let negative = sign(&mut i);
    // Decimal digits with DEC_DIGITS zeroes in front (room to align the first base-10000 digit).
    let mut dec: Vec<u8> = vec![0; DEC_DIGITS as usize];
    let (mut dweight, mut dscale, mut have_dp) = (-1i64, 0i64, false);
    while let Some(&c) = text.get(i) {
        match c {
            b'0'..=b'9' => {
                dec.push(c - b'0');
                if have_dp {
                    dscale += 1;
                } else {
                    dweight += 1;
                }
            }
            b'.' if !have_dp => have_dp = true,
            _ => break,
        }
        i += 1;
    }
    let ddigits = dec.len() as i64 - DEC_DIGITS;
    if ddigits == 0 {
        return Err(bad_number());
    }
    if let Some(b'e' | b'E') = text.get(i) {
        i += 1;
        let neg_exp = sign(&mut i);
        let start = i;
        let mut exponent: i64 = 0;
        while let Some(&c @ b'0'..=b'9') = text.get(i) {
            exponent = (exponent * 10 + (c - b'0') as i64).min(MAX_EXPONENT + 1);
            i += 1;
        }
        if i == start || exponent > MAX_EXPONENT {
            return Err(bad_number());
        }
        if neg_exp {
            exponent = -exponent;
        }
        dweight += exponent;
        dscale = (dscale - exponent).max(0);
    }
    if i != text.len() {
        return Err(bad_number());
    }
    let weight = if dweight >= 0 {
        (dweight + DEC_DIGITS) / DEC_DIGITS - 1
    } else {
        -((-dweight - 1) / DEC_DIGITS + 1)
    };
    let offset = (weight + 1) * DEC_DIGITS - (dweight + 1);
    let ndigits = (ddigits + offset + DEC_DIGITS - 1) / DEC_DIGITS;
    dec.extend_from_slice(&[0; DEC_DIGITS as usize - 1]);
    let mut digits: Vec<u16> = Vec::with_capacity(ndigits as usize);
    let mut at = (DEC_DIGITS - offset) as usize;
    for _ in 0..ndigits {
        let d = ((dec[at] as u16 * 10 + dec[at + 1] as u16) * 10 + dec[at + 2] as u16) * 10 + dec[at + 3] as u16;
        digits.push(d);
        at += DEC_DIGITS as usize;
    }
    // strip leading and trailing zero digits; zero is positive with weight 0
    let mut weight = weight;
    let lead = digits.iter().take_while(|&&d| d == 0).count();
    weight -= lead as i64;
    let digits = &digits[lead..];
    let trail = digits.iter().rev().take_while(|&&d| d == 0).count();
    let digits = &digits[..digits.len() - trail];
    let (negative, weight) = if digits.is_empty() {
        (false, 0)
    } else {
        (negative, weight)
    };

    let short =
        dscale <= NUMERIC_SHORT_DSCALE_MAX && (NUMERIC_SHORT_WEIGHT_MIN..=NUMERIC_SHORT_WEIGHT_MAX).contains(&weight);
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&[0; 4]);
    if short {
        let mut h = NUMERIC_SHORT
            | ((dscale as u16) << NUMERIC_SHORT_DSCALE_SHIFT)
            | (weight as u16 & NUMERIC_SHORT_WEIGHT_MASK);
        if negative {
            h |= NUMERIC_SHORT_SIGN_MASK;
        }
        if weight < 0 {
            h |= NUMERIC_SHORT_WEIGHT_SIGN_MASK;
        }
        out.extend_from_slice(&h.to_ne_bytes());
    } else {
        if dscale > NUMERIC_DSCALE_MASK as i64 || weight > i16::MAX as i64 || weight < i16::MIN as i64 {
            return Err(Error::new(
                ErrorKind::TooLarge,
                "a JSON number overflows the numeric format",
            ));
        }
        let sd = if negative { NUMERIC_NEG } else { 0 } | dscale as u16;
        out.extend_from_slice(&sd.to_ne_bytes());
        out.extend_from_slice(&(weight as i16).to_ne_bytes());
    }
    for d in digits {
        out.extend_from_slice(&d.to_ne_bytes());
    }
    super::set_varlena_header(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(text: &str) -> String {
        let n = numeric_from_text(text.as_bytes()).unwrap();
        let mut s = String::new();
        numeric_to_text(&n, &mut s).unwrap();
        s
    }

    #[test]
    fn text_round_trips_like_postgres() {
        for (input, output) in [
            ("0", "0"),
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("1", "1"),
            ("10000", "10000"),
            ("12345678", "12345678"),
            ("1.50", "1.50"),
            ("-2.5", "-2.5"),
            ("0.0001", "0.0001"),
            ("0.00001234", "0.00001234"),
            ("1e5", "100000"),
            ("1E-5", "0.00001"),
            ("1.5e2", "150"),
            ("1.23e-2", "0.0123"),
            (
                "123456789012345678901234567890.000000000001",
                "123456789012345678901234567890.000000000001",
            ),
            ("9999", "9999"),
            ("99999999.99999999", "99999999.99999999"),
            ("1e300", &format!("1{}", "0".repeat(300))),
            ("1e-100", &format!("0.{}1", "0".repeat(99))),
        ] {
            assert_eq!(round(input), output, "{input}");
        }
    }

    #[test]
    fn short_and_long_headers() {
        // 1e300 has weight 75: too big for the short header.
        let long = numeric_from_text(b"1e300").unwrap();
        assert_eq!(u16::from_ne_bytes([long[4], long[5]]) & NUMERIC_SHORT, 0);
        let short = numeric_from_text(b"42").unwrap();
        assert_ne!(u16::from_ne_bytes([short[4], short[5]]) & NUMERIC_SHORT, 0);
        assert_eq!(short.len(), 8, "header, short header word, one digit");
    }

    #[test]
    fn refuses_what_numeric_in_refuses() {
        for bad in ["", "-", ".", "1e", "1e+", "1x", "1e1001", "--1", "1..2"] {
            assert!(numeric_from_text(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
