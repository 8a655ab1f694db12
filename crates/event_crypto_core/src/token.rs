//! Tokenization: deterministic stand-in values (tokens) for values that other systems must not see.
//!
//! The token key of a key id is derived from the key id's blind-index root (the random 32 bytes the catalog keeps
//! wrapped beside every version of the key id, carried over by rotation and overwritten with NULL by a shred),
//! under a label of its own, so it is independent of the blind-index key and of every data key:
//!
//! `token_key = HKDF-SHA256(salt = "event_crypto/token/v1", ikm = root, info = key_id)`
//!
//! `prf(purpose, format, attempt, value) = HMAC-SHA256(token_key, purpose || 0x00 || format || 0x00 || attempt as
//! u32 big-endian || value)`, with `purpose` = `"token"` for the token itself and `"lookup"` for the digest the
//! vault finds a value's existing token by.
//!
//! Formats (`attempt` starts at 0 and is raised when a token is already another value's: see [`Tokenizer::resolve`]):
//! - `opaque`: `tok_` + base64url (no padding) of the first 16 bytes of the PRF (128 bits, 22 characters);
//! - `card`: 16 digits, Luhn-valid: 11 digits from the PRF (its first 8 bytes as a big-endian integer modulo
//!   10^11), then the check digit, then the last four digits of the input card number (12 to 19 digits, spaces
//!   and hyphens between them allowed). A token equal to the input's digits is never given: the next attempt is
//!   taken;
//! - `email`: the local part is `t` + 15 characters of lowercase base32 (RFC 4648 alphabet) of the PRF (75 bits),
//!   then `@` and the input's domain exactly as given.
//!
//! A key id's tokens can be recomputed only while its blind-index root exists: shredding the key id destroys the
//! root, and with it the ability to recompute (or confirm a guess against) its tokens.

use crate::aead::KEY_LEN;
use crate::error::{Error, ErrorKind, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Largest value tokenized (bytes): tokens stand in for identifiers, not documents.
pub const MAX_VALUE_LEN: usize = 8192;
/// Attempts made before giving up on finding a free token (each collision costs one; two are astronomically rare
/// for `opaque` and `email`, and for `card` they need about 10^5 values with one last four under one key id).
pub const MAX_ATTEMPTS: u32 = 32;
/// Length of the lookup digest the vault keeps beside each token.
pub const LOOKUP_LEN: usize = 32;

/// What a token looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    Opaque,
    Card,
    Email,
}

impl TokenFormat {
    /// Parses `'opaque'`, `'card'` or `'email'`; the argument is never echoed in the error.
    pub fn parse(s: &str) -> Result<TokenFormat> {
        match s {
            "opaque" => Ok(TokenFormat::Opaque),
            "card" => Ok(TokenFormat::Card),
            "email" => Ok(TokenFormat::Email),
            _ => Err(Error::invalid_argument("unknown token format").with_hint("Use 'opaque', 'card' or 'email'.")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenFormat::Opaque => "opaque",
            TokenFormat::Card => "card",
            TokenFormat::Email => "email",
        }
    }
}

/// Checks a value before it is tokenized in `format`: its size, and for `card` and `email` its shape. Returns the
/// card number's digits for `card` (separators removed). Messages never contain the value.
pub fn check_value(value: &str, format: TokenFormat) -> Result<Option<Vec<u8>>> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::new(ErrorKind::TooLarge, "value is too large to tokenize")
            .with_detail(format!("Values of up to {MAX_VALUE_LEN} bytes can be tokenized.")));
    }
    match format {
        TokenFormat::Opaque => Ok(None),
        TokenFormat::Card => {
            let mut digits = Vec::with_capacity(19);
            let mut last_was_sep = true;
            for b in value.bytes() {
                match b {
                    b'0'..=b'9' => {
                        digits.push(b - b'0');
                        last_was_sep = false;
                    }
                    b' ' | b'-' if !last_was_sep => last_was_sep = true,
                    _ => return Err(not_a_card()),
                }
                if digits.len() > 19 {
                    return Err(not_a_card());
                }
            }
            if last_was_sep || digits.len() < 12 {
                return Err(not_a_card());
            }
            Ok(Some(digits))
        }
        TokenFormat::Email => {
            let Some(at) = value.rfind('@') else {
                return Err(not_an_email());
            };
            let (local, domain) = (&value[..at], &value[at + 1..]);
            let bad = |s: &str| s.bytes().any(|b| b.is_ascii_control() || b == b' ');
            if local.is_empty()
                || local.len() > 64
                || domain.is_empty()
                || domain.len() > 253
                || bad(local)
                || bad(domain)
            {
                return Err(not_an_email());
            }
            Ok(None)
        }
    }
}

fn not_a_card() -> Error {
    Error::invalid_argument("value is not a card number")
        .with_detail("Format 'card' takes 12 to 19 digits, optionally grouped by single spaces or hyphens.")
}

fn not_an_email() -> Error {
    Error::invalid_argument("value is not an e-mail address")
        .with_detail("Format 'email' takes local@domain: a local part of 1 to 64 bytes and a domain of 1 to 253 bytes, without spaces or control characters.")
}

/// The keyed token function of one key id (the HMAC state is precomputed once, and wiped on drop).
pub struct Tokenizer {
    mac: Hmac<Sha256>,
    /// Test hook: reduces every PRF output to one of this many values, so that collisions can be forced.
    #[cfg(test)]
    tiny_space: Option<u8>,
}

impl Drop for Tokenizer {
    fn drop(&mut self) {
        crate::wipe(&mut self.mac);
    }
}

/// What the vault says about a candidate token (see [`Tokenizer::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The token was free and is now this value's (the vault row was written).
    Claimed,
    /// The value already has a token in the vault (this one, or the one returned): use it.
    Existing(String),
    /// Another value holds this token (under this key id or another): try the next attempt.
    Taken,
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

impl Tokenizer {
    pub fn new(root: &[u8; KEY_LEN], key_id: &str) -> Tokenizer {
        let hk = Hkdf::<Sha256>::new(Some(b"event_crypto/token/v1"), root);
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(key_id.as_bytes(), k.as_mut())
            .expect("32 bytes is a valid HKDF output length");
        Tokenizer {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(k.as_ref()).expect("HMAC takes any key length"),
            #[cfg(test)]
            tiny_space: None,
        }
    }

    fn prf(&self, purpose: &[u8], format: TokenFormat, attempt: u32, value: &str) -> Zeroizing<[u8; 32]> {
        let mut mac = self.mac.clone();
        mac.update(purpose);
        mac.update(&[0]);
        mac.update(format.name().as_bytes());
        mac.update(&[0]);
        mac.update(&attempt.to_be_bytes());
        mac.update(value.as_bytes());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&mac.finalize_reset().into_bytes());
        crate::wipe(&mut mac);
        #[cfg(test)]
        if let Some(n) = self.tiny_space {
            if purpose == b"token" {
                // n tokens per attempt, other ones at each attempt
                let x = (out[0] % n).wrapping_add((attempt as u8).wrapping_mul(n));
                *out = [x; 32];
            }
        }
        out
    }

    /// The digest the vault finds a value's token by (per key id and format; never the token itself).
    pub fn lookup_digest(&self, value: &str, format: TokenFormat) -> [u8; LOOKUP_LEN] {
        *self.prf(b"lookup", format, 0, value)
    }

    /// The token of `value` at `attempt` (0 unless earlier attempts collided). `value` must have passed
    /// [`check_value`] for `format`. `None`: this attempt gives no usable token (a card token equal to the input).
    pub fn token(&self, value: &str, format: TokenFormat, attempt: u32) -> Result<Option<String>> {
        let card = check_value(value, format)?;
        let r = self.prf(b"token", format, attempt, value);
        Ok(match format {
            TokenFormat::Opaque => Some(format!("tok_{}", URL_SAFE_NO_PAD.encode(&r[..16]))),
            TokenFormat::Card => {
                let digits = card.expect("check_value returns the digits of a card number");
                let n = u64::from_be_bytes(r[..8].try_into().expect("8 bytes")) % 100_000_000_000;
                let mut out = [0u8; 16];
                let mut m = n;
                for d in out[..11].iter_mut().rev() {
                    *d = (m % 10) as u8;
                    m /= 10;
                }
                out[12..].copy_from_slice(&digits[digits.len() - 4..]);
                out[11] = luhn_fill(&out, 11);
                if out[..] == digits[..] {
                    None
                } else {
                    Some(out.iter().map(|d| char::from(b'0' + d)).collect())
                }
            }
            TokenFormat::Email => {
                let domain = &value[value.rfind('@').expect("check_value found an @") + 1..];
                // 15 characters of 5 bits from the first 10 bytes
                let bits = u128::from_be_bytes({
                    let mut b = [0u8; 16];
                    b[..10].copy_from_slice(&r[..10]);
                    b
                });
                let local: String = (0..15)
                    .map(|i| char::from(BASE32[((bits >> (123 - 5 * i)) & 31) as usize]))
                    .collect();
                Some(format!("t{local}@{domain}"))
            }
        })
    }

    /// Finds the token of `value`: each attempt's token is offered to `claim` (which asks the vault) until one is
    /// claimed for this value or turns out to be its token already; a token another value holds (under this key id
    /// or any other) moves on to the next attempt. Deterministic for a given vault: the same value always ends at
    /// the same token, because it is first looked up by its lookup digest (the caller does that before calling),
    /// and otherwise claims the first free attempt. Fails with `54000` after [`MAX_ATTEMPTS`] attempts.
    pub fn resolve(
        &self,
        value: &str,
        format: TokenFormat,
        mut claim: impl FnMut(&str) -> Result<Claim>,
    ) -> Result<String> {
        check_value(value, format)?;
        for attempt in 0..MAX_ATTEMPTS {
            crate::check_interrupts();
            let Some(t) = self.token(value, format, attempt)? else {
                continue;
            };
            match claim(&t)? {
                Claim::Claimed => return Ok(t),
                Claim::Existing(e) => return Ok(e),
                Claim::Taken => {}
            }
        }
        Err(Error::new(ErrorKind::TooLarge, "no free token found for the value")
            .with_detail(format!(
                "{MAX_ATTEMPTS} candidate tokens were each held by another value."
            ))
            .with_hint("Use format 'opaque' (128-bit tokens), or spread the values over more key ids."))
    }

    #[cfg(test)]
    fn with_tiny_space(mut self, n: u8) -> Tokenizer {
        self.tiny_space = Some(n);
        self
    }
}

/// The digit at `pos` that makes `digits` (16 of them) pass the Luhn check.
fn luhn_fill(digits: &[u8; 16], pos: usize) -> u8 {
    let mut sum = 0u32;
    let mut doubled_at_pos = false;
    for (i, &d) in digits.iter().enumerate() {
        // positions counted from the right, the rightmost being 1; even ones are doubled
        let doubled = (16 - i).is_multiple_of(2);
        if i == pos {
            doubled_at_pos = doubled;
            continue;
        }
        let v = u32::from(d) * if doubled { 2 } else { 1 };
        sum += if v > 9 { v - 9 } else { v };
    }
    let need = (10 - sum % 10) % 10;
    if !doubled_at_pos {
        need as u8
    } else {
        // the digit whose doubled Luhn value is `need`
        (0..10u8)
            .find(|&c| {
                let v = u32::from(c) * 2;
                (if v > 9 { v - 9 } else { v }) == need
            })
            .expect("every residue is some digit doubled")
    }
}

/// Whether a digit string passes the Luhn check.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        if !c.is_ascii_digit() {
            return false;
        }
        let mut v = u32::from(c - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn t() -> Tokenizer {
        Tokenizer::new(&[7u8; 32], "subject:alice")
    }

    /// A vault as a map token -> (key id, value), claiming the way the extension's vault does.
    fn claim_in<'a>(
        vault: &'a mut HashMap<String, (String, String)>,
        key_id: &'a str,
        value: &'a str,
    ) -> impl FnMut(&str) -> Result<Claim> + 'a {
        move |tok: &str| match vault.get(tok) {
            Some((k, v)) if k == key_id && v == value => Ok(Claim::Existing(tok.to_string())),
            Some(_) => Ok(Claim::Taken),
            None => {
                vault.insert(tok.to_string(), (key_id.to_string(), value.to_string()));
                Ok(Claim::Claimed)
            }
        }
    }

    #[test]
    fn known_answers() {
        // Frozen: tokens stored in other systems must stay valid across releases. Computed independently of this
        // code (Python's hmac and hashlib, from the construction in the module documentation).
        let k = t();
        assert_eq!(
            k.token("alice@example.com", TokenFormat::Opaque, 0).unwrap().unwrap(),
            "tok_gYDaWifF9v5APm8Psr2m1Q"
        );
        assert_eq!(
            k.token("4111 1111 1111 1111", TokenFormat::Card, 0).unwrap().unwrap(),
            "6241409426741111"
        );
        assert_eq!(
            k.token("alice@example.com", TokenFormat::Email, 0).unwrap().unwrap(),
            "t4qckjqgte5dsqmm@example.com"
        );
        assert_eq!(
            hex::encode(k.lookup_digest("alice@example.com", TokenFormat::Opaque)),
            "eecc71a3a6c628728116614210f14444f0b56858a9891df026af0873ec3ee8d6"
        );
    }

    #[test]
    fn deterministic_and_keyed() {
        let a = t();
        let b = Tokenizer::new(&[7u8; 32], "subject:bob");
        let c = Tokenizer::new(&[8u8; 32], "subject:alice");
        for f in [TokenFormat::Opaque, TokenFormat::Card, TokenFormat::Email] {
            let v = if f == TokenFormat::Card {
                "4111111111111111"
            } else {
                "a@x.io"
            };
            let ta = a.token(v, f, 0).unwrap().unwrap();
            assert_eq!(ta, a.token(v, f, 0).unwrap().unwrap());
            assert_ne!(ta, b.token(v, f, 0).unwrap().unwrap());
            assert_ne!(ta, c.token(v, f, 0).unwrap().unwrap());
            assert_ne!(ta, a.token(v, f, 1).unwrap().unwrap());
        }
        // the lookup digest is not the token's PRF output
        let d = a.lookup_digest("x", TokenFormat::Opaque);
        assert!(!a
            .token("x", TokenFormat::Opaque, 0)
            .unwrap()
            .unwrap()
            .contains(&URL_SAFE_NO_PAD.encode(&d[..16])));
        assert_ne!(d, a.lookup_digest("x", TokenFormat::Email));
    }

    #[test]
    fn opaque_shape() {
        for v in ["", "x", &"y".repeat(MAX_VALUE_LEN)] {
            let tok = t().token(v, TokenFormat::Opaque, 0).unwrap().unwrap();
            assert_eq!(tok.len(), 26);
            assert!(tok.starts_with("tok_"));
            assert!(tok[4..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
        let e = t()
            .token(&"y".repeat(MAX_VALUE_LEN + 1), TokenFormat::Opaque, 0)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
    }

    #[test]
    fn card_tokens_are_luhn_valid_keep_last_four_and_differ_from_input() {
        let k = t();
        let mut n = 0u64;
        for i in 0..2000u64 {
            let input = format!("{:016}", 4_000_000_000_000_000 + i * 7_919_333);
            let Some(tok) = k.token(&input, TokenFormat::Card, 0).unwrap() else {
                continue;
            };
            n += 1;
            assert_eq!(tok.len(), 16);
            assert!(luhn_valid(&tok), "{tok}");
            assert_eq!(&tok[12..], &input[12..]);
            assert_ne!(tok, input);
        }
        assert!(n > 1990);
        // 12- and 19-digit inputs, grouped
        for input in [
            "4111-1111-1111-1111",
            "4111 1111 1111 1111",
            "123456789012",
            "1234567890123456789",
        ] {
            let tok = k.token(input, TokenFormat::Card, 0).unwrap().unwrap();
            assert!(luhn_valid(&tok));
            let digits: String = input.chars().filter(char::is_ascii_digit).collect();
            assert_eq!(&tok[12..], &digits[digits.len() - 4..]);
        }
        for bad in [
            "",
            "4111",
            "4111 1111 1111 111x",
            "41111111111111111111",
            " 4111111111111111",
            "4111111111111111-",
            "4111--1111111111111",
            "४१११११११११११११११",
        ] {
            let e = k.token(bad, TokenFormat::Card, 0).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert!(!e.message().contains(bad) || bad.is_empty());
        }
        assert!(luhn_valid("4111111111111111"));
        assert!(!luhn_valid("4111111111111112"));
    }

    #[test]
    fn a_card_token_equal_to_its_input_is_never_given() {
        // Find an input whose attempt 0 token is the input itself is infeasible; check the rule through the tiny
        // space instead: every PRF output is the same byte, so the token is predictable.
        let k = t().with_tiny_space(1);
        let tok = k.token("4111111111111111", TokenFormat::Card, 0).unwrap().unwrap();
        // the same input as that token: attempt 0 gives None (equal), so resolve never returns the input
        assert_eq!(k.token(&tok, TokenFormat::Card, 0).unwrap(), None);
        let mut vault = HashMap::new();
        let other = k
            .resolve(&tok, TokenFormat::Card, claim_in(&mut vault, "k", &tok))
            .unwrap();
        assert_ne!(other, tok);
        assert!(luhn_valid(&other) && other[12..] == tok[12..]);
    }

    #[test]
    fn email_shape() {
        let k = t();
        let tok = k
            .token("Alice.Smith+x@Example.COM", TokenFormat::Email, 0)
            .unwrap()
            .unwrap();
        assert!(tok.ends_with("@Example.COM"));
        assert_eq!(tok.len(), 16 + 1 + "Example.COM".len());
        assert!(tok[..16].bytes().all(|b| BASE32.contains(&b)));
        // the last @ splits
        let tok = k.token("\"a@b\"@x.io", TokenFormat::Email, 0).unwrap().unwrap();
        assert!(tok.ends_with("@x.io"));
        for bad in [
            "",
            "alice",
            "@x.io",
            "alice@",
            "al ice@x.io",
            "a@x\n.io",
            &format!("{}@x.io", "a".repeat(65)),
        ] {
            assert_eq!(
                k.token(bad, TokenFormat::Email, 0).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    fn formats_parse_without_echo() {
        assert_eq!(TokenFormat::parse("card").unwrap(), TokenFormat::Card);
        let e = TokenFormat::parse("4111111111111111").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(!e.message().contains("4111"));
    }

    #[test]
    fn collisions_are_detected_and_resolved_deterministically() {
        // a space of 3 tokens per attempt: collisions are certain among a handful of values
        let k = t().with_tiny_space(3);
        let mut vault: HashMap<String, (String, String)> = HashMap::new();
        let values: Vec<String> = (0..12).map(|i| format!("value-{i}")).collect();
        let mut given = Vec::new();
        for v in &values {
            let tok = k.resolve(v, TokenFormat::Opaque, claim_in(&mut vault, "k", v)).unwrap();
            given.push(tok);
        }
        // every value has its own token
        let mut distinct = given.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), values.len());
        // asking again gives the same tokens (the vault says which is the value's)
        for (v, tok) in values.iter().zip(&given) {
            assert_eq!(
                &k.resolve(v, TokenFormat::Opaque, claim_in(&mut vault, "k", v)).unwrap(),
                tok
            );
        }
        // a token held under another key id is a collision too: the value gets another token
        let other = Tokenizer::new(&[7u8; 32], "k2").with_tiny_space(3);
        let tok = other
            .resolve("value-0", TokenFormat::Opaque, claim_in(&mut vault, "k2", "value-0"))
            .unwrap();
        assert!(!given.contains(&tok));
        // card tokens collide too, and stay Luhn-valid with the last four
        let mut vault = HashMap::new();
        let mut cards = Vec::new();
        for i in 0..5u64 {
            let input = format!("4000{:08}1234", i);
            let tok = k
                .resolve(&input, TokenFormat::Card, claim_in(&mut vault, "k", &input))
                .unwrap();
            assert!(luhn_valid(&tok) && tok.ends_with("1234") && tok != input);
            cards.push(tok);
        }
        cards.sort();
        cards.dedup();
        assert_eq!(cards.len(), 5);
        // a vault where every candidate is taken ends with 54000, never with a token another value holds
        let mut asked = 0;
        let e = k
            .resolve("b", TokenFormat::Opaque, |_| {
                asked += 1;
                Ok(Claim::Taken)
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert_eq!(asked, MAX_ATTEMPTS);
    }
}
