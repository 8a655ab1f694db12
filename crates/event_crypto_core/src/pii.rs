//! Detection of personal data (PII) in jsonb documents: hand-written scanners, no regular expressions.
//!
//! Each detector judges one value (and, for free text, the tokens in it) with the name of the key it sits under
//! (and its parent's) as context, and gives a confidence in [0, 1]. Checksums decide where the kind has one
//! (payment cards: Luhn and known IIN prefixes; IBANs: ISO 13616 mod-97 and the country's length; Spanish DNI/NIE:
//! the control letter; Dutch BSN: the 11-test; Swedish personnummer: Luhn and a valid date); formats and key names
//! decide elsewhere (e-mail addresses, phone numbers, US SSNs, UK NINOs, IP addresses, dates of birth, names,
//! street addresses). [`detect`] walks a document and reports each (path, kind) once with its highest confidence,
//! paths in the syntax `protect()` takes, array elements as `[*]`.
//!
//! Work is bounded: at most [`MAX_VALUES`] scalar values are inspected per document, the first [`MAX_SCAN`] bytes
//! of each string, at most [`MAX_FINDINGS`] findings; the host's interrupt check runs for every container and every
//! 1,024 values. No finding carries the value it was found in.

use crate::envelope::looks_like_envelope;
use crate::error::Result;
use crate::jsonb::numeric_to_text;
use crate::jsonb::{Document, Value, MAX_DEPTH};
use std::collections::HashMap;

/// Scalar values inspected per document at most; the rest is not looked at ([`Report::truncated`]).
pub const MAX_VALUES: usize = 10_000;
/// Bytes of a string scanned at most (its beginning).
pub const MAX_SCAN: usize = 4096;
/// Findings reported per document at most.
pub const MAX_FINDINGS: usize = 1000;
/// Findings below this confidence are not reported.
pub const MIN_CONFIDENCE: f32 = 0.5;

/// What a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Email,
    Phone,
    PaymentCard,
    Iban,
    /// United States social security number (structure rules: no checksum exists).
    UsSsn,
    /// United Kingdom national insurance number (prefix and suffix rules).
    UkNino,
    /// Dutch burgerservicenummer (11-test).
    NlBsn,
    /// Spanish DNI or NIE (control letter).
    EsDni,
    /// Swedish personnummer or samordningsnummer (date and Luhn).
    SePersonnummer,
    IpAddress,
    DateOfBirth,
    PersonName,
    StreetAddress,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Email,
        Kind::Phone,
        Kind::PaymentCard,
        Kind::Iban,
        Kind::UsSsn,
        Kind::UkNino,
        Kind::NlBsn,
        Kind::EsDni,
        Kind::SePersonnummer,
        Kind::IpAddress,
        Kind::DateOfBirth,
        Kind::PersonName,
        Kind::StreetAddress,
    ];

    /// The name SQL reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::PaymentCard => "payment_card",
            Kind::Iban => "iban",
            Kind::UsSsn => "national_id:us_ssn",
            Kind::UkNino => "national_id:uk_nino",
            Kind::NlBsn => "national_id:nl_bsn",
            Kind::EsDni => "national_id:es_dni",
            Kind::SePersonnummer => "national_id:se_personnummer",
            Kind::IpAddress => "ip_address",
            Kind::DateOfBirth => "date_of_birth",
            Kind::PersonName => "person_name",
            Kind::StreetAddress => "street_address",
        }
    }
}

/// One finding: where, what, how sure. Never the value.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub path: String,
    pub kind: Kind,
    pub confidence: f32,
}

/// What [`detect`] found, and whether it stopped before the end of the document.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Some values were not inspected (more than [`MAX_VALUES`] values, or [`MAX_FINDINGS`] findings).
    pub truncated: bool,
}

// ---------------------------------------------------------------------------------------------------------------
// Key names
// ---------------------------------------------------------------------------------------------------------------

/// A key name split into lower-case words at non-alphanumeric characters and camelCase boundaries
/// (`billingAddress_line1` → `billing`, `address`, `line1`), from its first 64 bytes.
fn key_words(key: &[u8]) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for &c in key.iter().take(64) {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        cur.push(c.to_ascii_lowercase() as char);
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn any_in(k: &str, words: &[&str]) -> bool {
    words.iter().any(|w| k.contains(w))
}

fn any_word(ws: &[String], words: &[&str]) -> bool {
    ws.iter().any(|w| words.contains(&w.as_str()))
}

/// What a key name says of its value.
#[derive(Clone, Copy, Default, Debug)]
struct Hints {
    email: bool,
    phone: bool,
    card: bool,
    iban: bool,
    ssn: bool,
    national: bool,
    ip: bool,
    dob: bool,
    /// A key naming a person's name outright (first_name, surname, cardholder, ...).
    person_name: bool,
    /// The bare key `name` (or `fullname`-less variants), under a parent that names a person.
    name_of_person: bool,
    /// The bare key `name` with no telling parent.
    bare_name: bool,
    address: bool,
    /// A key that names a number which is not personal (ids, orders, amounts, versions, times).
    not_personal: bool,
    version: bool,
}

const PERSON_PARENTS: &[&str] = &[
    "customer",
    "user",
    "person",
    "contact",
    "patient",
    "employee",
    "member",
    "client",
    "author",
    "recipient",
    "sender",
    "owner",
    "holder",
    "buyer",
    "seller",
    "guest",
    "passenger",
    "traveller",
    "traveler",
    "applicant",
    "beneficiary",
    "payer",
    "payee",
    "student",
    "driver",
    "profile",
    "account",
    "billing",
    "shipping",
    "subject",
    "emergency",
];

fn hints(key: Option<&[u8]>, parent: Option<&[u8]>) -> Hints {
    let ws = key.map(key_words).unwrap_or_default();
    let k: String = ws.concat();
    let p: String = parent.map(key_words).unwrap_or_default().concat();
    let mut h = Hints {
        email: any_in(&k, &["email"]) || any_word(&ws, &["mail", "e"]) && k.contains("mail"),
        phone: any_in(&k, &["phone", "mobile", "msisdn", "whatsapp"])
            || any_word(&ws, &["tel", "fax", "cell", "telephone"]),
        card: (k.contains("card") && !any_in(&k, &["cardinal", "discard", "giftcard", "cardtype", "cardbrand"]))
            || any_word(&ws, &["pan", "cc", "ccn", "ccnum"]),
        iban: any_in(&k, &["iban", "bankaccount", "accountnumber"]),
        ssn: any_word(&ws, &["ssn", "sin"]) || k.contains("socialsecurity"),
        national: any_in(
            &k,
            &[
                "burgerservice",
                "nationalinsurance",
                "nationalid",
                "personnummer",
                "personalnumber",
                "personalid",
                "taxid",
                "identitynumber",
                "idnumber",
                "citizenid",
                "socialsecurity",
                "identification",
            ],
        ) || any_word(&ws, &["bsn", "nino", "dni", "nie", "nif", "ssn", "sofinummer"]),
        ip: any_word(&ws, &["ip", "ipv4", "ipv6", "ipaddr", "ipaddress"]) || any_in(&k, &["ipaddr", "remoteaddr"]),
        dob: any_word(&ws, &["dob", "born", "birthday", "birthdate"])
            || any_in(&k, &["birth", "geburt", "naissance", "nacimiento", "fodelse"]),
        person_name: any_in(
            &k,
            &[
                "firstname",
                "lastname",
                "surname",
                "givenname",
                "familyname",
                "fullname",
                "middlename",
                "maidenname",
                "forename",
                "customername",
                "contactname",
                "holdername",
                "cardholder",
                "accountholder",
                "nameoncard",
                "recipientname",
                "sendername",
                "billingname",
                "shippingname",
                "patientname",
                "employeename",
                "personname",
                "legalname",
            ],
        ),
        address: any_word(
            &ws,
            &[
                "address",
                "street",
                "addr",
                "residence",
                "line1",
                "line2",
                "streetaddress",
            ],
        ) || any_in(&k, &["streetaddress", "addressline"]),
        version: any_word(&ws, &["version", "ver", "release", "build", "v"]),
        ..Hints::default()
    };
    if k == "name" {
        if any_in(&p, PERSON_PARENTS) {
            h.name_of_person = true;
        } else if !any_in(
            &p,
            &[
                "product", "item", "plan", "event", "file", "company", "org", "team", "category",
            ],
        ) {
            h.bare_name = true;
        }
    }
    // "email_address", "ip_address", "mac_address", "wallet_address" are not street addresses
    if h.address && (h.email || h.ip || any_word(&ws, &["mac", "wallet", "url", "web", "host", "contract", "memory"])) {
        h.address = false;
    }
    let specific = h.email || h.phone || h.card || h.iban || h.ssn || h.national || h.ip || h.dob;
    h.not_personal = !specific
        && any_word(
            &ws,
            &[
                "id",
                "uuid",
                "order",
                "sku",
                "ref",
                "reference",
                "invoice",
                "tracking",
                "serial",
                "price",
                "amount",
                "total",
                "count",
                "qty",
                "quantity",
                "timestamp",
                "time",
                "ts",
                "hash",
                "code",
                "number",
                "no",
                "nr",
                "nonce",
                "seq",
                "sequence",
                "offset",
                "version",
                "size",
                "bytes",
                "duration",
                "latency",
                "cents",
                "transaction",
                "txn",
                "batch",
                "ticket",
                "shipment",
                "parcel",
                "sku",
                "ean",
                "isbn",
                "gtin",
            ],
        );
    h
}

// ---------------------------------------------------------------------------------------------------------------
// Checksums and small parsers
// ---------------------------------------------------------------------------------------------------------------

/// Luhn (mod 10) over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn num(d: &[u8]) -> u32 {
    d.iter()
        .fold(0u32, |a, c| a.saturating_mul(10).saturating_add(u32::from(c - b'0')))
}

/// Whether a card number's prefix and length are those of a known scheme.
fn card_scheme_ok(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| num(&d[..k.min(n)]);
    match d[0] {
        b'4' => matches!(n, 13 | 16 | 19), // Visa
        b'5' => {
            (51..=55).contains(&p(2)) && n == 16
                || p(2) == 50 && (12..=19).contains(&n)
                || (56..=58).contains(&p(2)) && (12..=19).contains(&n)
        } // Mastercard, Maestro
        b'2' => (2221..=2720).contains(&p(4)) && n == 16, // Mastercard 2-series
        b'3' => {
            (p(2) == 34 || p(2) == 37) && n == 15                              // Amex
                || (3528..=3589).contains(&p(4)) && (16..=19).contains(&n)      // JCB
                || ((300..=305).contains(&p(3)) || p(2) == 36 || p(2) == 38 || p(2) == 39) && (14..=19).contains(&n)
            // Diners
        }
        b'6' => {
            (p(4) == 6011 || p(2) == 65 || (644..=649).contains(&p(3))) && (16..=19).contains(&n) // Discover
                || p(2) == 62 && (16..=19).contains(&n)                         // UnionPay
                || (p(4) == 6304 || p(4) == 6759 || p(4) == 6761 || p(4) == 6763) && (12..=19).contains(&n)
            // Maestro
        }
        _ => false,
    }
}

/// A payment card number: 13 to 19 digits, alone or in groups separated by single spaces or hyphens (one
/// separator kind), a known scheme's prefix and length, and a valid Luhn check digit.
fn card(s: &[u8], h: &Hints) -> Option<f32> {
    let mut digits = Vec::with_capacity(19);
    let mut groups = Vec::new();
    let mut sep = None;
    let mut run = 0;
    for &c in s {
        if c.is_ascii_digit() {
            digits.push(c);
            run += 1;
        } else if (c == b' ' || c == b'-') && run > 0 && sep.is_none_or(|x| x == c) {
            sep = Some(c);
            groups.push(run);
            run = 0;
        } else {
            return None;
        }
        if digits.len() > 19 {
            return None;
        }
    }
    if run == 0 {
        return None;
    }
    groups.push(run);
    if digits.len() < 13 || !card_scheme_ok(&digits) || !luhn_valid(&digits) {
        return None;
    }
    if groups.len() > 1 {
        let fours = groups[..groups.len() - 1].iter().all(|&g| g == 4) && groups[groups.len() - 1] <= 4 + 3;
        let amex = groups == [4, 6, 5] || groups == [4, 6, 4];
        if !fours && !amex {
            return None;
        }
    }
    Some(if h.card {
        0.97
    } else if h.not_personal {
        0.4
    } else {
        0.9
    })
}

/// IBAN lengths per country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// ISO 7064 mod 97-10 of an IBAN (country and check digits moved to the end, letters as 10..35).
pub fn iban_valid(compact: &[u8]) -> bool {
    if compact.len() < 15 || compact.len() > 34 || !compact.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let cc = [compact[0].to_ascii_uppercase(), compact[1].to_ascii_uppercase()];
    if !cc.iter().all(u8::is_ascii_uppercase) || !compact[2].is_ascii_digit() || !compact[3].is_ascii_digit() {
        return false;
    }
    let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| **c == cc) else {
        return false;
    };
    if compact.len() != len {
        return false;
    }
    let mut rem = 0u32;
    for &c in compact[4..].iter().chain(&compact[..4]) {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            rem = (rem * 100 + u32::from(c - b'A' + 10)) % 97;
        }
    }
    rem == 1
}

/// An IBAN, compact or printed in groups of four separated by single spaces.
fn iban(s: &[u8], h: &Hints) -> Option<f32> {
    if s.len() > 42 {
        return None;
    }
    let compact: Vec<u8> = s.iter().copied().filter(|&c| c != b' ').collect();
    if s.contains(&b' ') {
        let groups: Vec<&[u8]> = s.split(|&c| c == b' ').collect();
        if groups.iter().rev().skip(1).any(|g| g.len() != 4)
            || groups.last().is_none_or(|g| g.is_empty() || g.len() > 4)
        {
            return None;
        }
    }
    iban_valid(&compact).then_some(if h.iban { 0.99 } else { 0.95 })
}

/// US SSN `AAA-GG-SSSS` (or 9 digits under an SSN key): area not 000, 666 or 900-999, group not 00, serial not
/// 0000, and not one of the numbers published in advertising.
fn us_ssn(s: &[u8], h: &Hints) -> Option<f32> {
    let d: Vec<u8>;
    let hyphenated = s.len() == 11 && s[3] == b'-' && s[6] == b'-';
    if hyphenated {
        d = s.iter().copied().filter(|&c| c != b'-').collect();
    } else if s.len() == 9 && (h.ssn) {
        d = s.to_vec();
    } else {
        return None;
    }
    if d.len() != 9 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let (area, group, serial) = (num(&d[..3]), num(&d[3..5]), num(&d[5..]));
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    if &d[..] == b"078051120" || &d[..] == b"219099999" || d.iter().all(|&c| c == d[0]) {
        return None;
    }
    Some(if h.ssn || h.national {
        0.95
    } else if h.not_personal || h.phone {
        0.3
    } else {
        0.75
    })
}

/// UK national insurance number: two prefix letters (first not D, F, I, Q, U, V; second not D, F, I, O, Q, U,
/// V; not BG, GB, KN, NK, NT, TN, ZZ), six digits, suffix A-D; spaces allowed between pairs.
fn uk_nino(s: &[u8], h: &Hints) -> Option<f32> {
    let c: Vec<u8> = s
        .iter()
        .copied()
        .filter(|&c| c != b' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if c.len() != 9 || s.len() > 13 {
        return None;
    }
    let (a, b) = (c[0], c[1]);
    if !a.is_ascii_uppercase() || !b.is_ascii_uppercase() || b"DFIQUV".contains(&a) || b"DFIOQUV".contains(&b) {
        return None;
    }
    if [b"BG", b"GB", b"KN", b"NK", b"NT", b"TN", b"ZZ"]
        .iter()
        .any(|p| p[..] == c[..2])
    {
        return None;
    }
    if !c[2..8].iter().all(u8::is_ascii_digit) || !b"ABCD".contains(&c[8]) {
        return None;
    }
    Some(if h.national { 0.97 } else { 0.85 })
}

/// The Dutch BSN 11-test: 9 digits d1..d9, 9·d1 + 8·d2 + … + 2·d8 − d9 ≡ 0 (mod 11), not all zero.
pub fn bsn_valid(d: &[u8]) -> bool {
    if d.len() != 9 || !d.iter().all(u8::is_ascii_digit) || d.iter().all(|&c| c == b'0') {
        return false;
    }
    let mut sum: i32 = 0;
    for (i, &c) in d[..8].iter().enumerate() {
        sum += (9 - i as i32) * i32::from(c - b'0');
    }
    sum -= i32::from(d[8] - b'0');
    sum % 11 == 0
}

/// A BSN: only under a key that names a national id or a BSN (one 9-digit number in 11 passes the test by
/// chance), or printed as `1234.56.782`.
fn nl_bsn(s: &[u8], h: &Hints) -> Option<f32> {
    let dotted = s.len() == 11 && s[4] == b'.' && s[7] == b'.';
    let d: Vec<u8> = s.iter().copied().filter(|&c| c != b'.').collect();
    if !(dotted || s.len() == 9) || !bsn_valid(&d) {
        return None;
    }
    Some(if h.national {
        0.95
    } else if dotted {
        0.7
    } else {
        0.35
    })
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

/// Spanish DNI (8 digits and a control letter) or NIE (X, Y or Z, 7 digits, control letter); a hyphen or space
/// before the letter is allowed.
fn es_dni(s: &[u8], h: &Hints) -> Option<f32> {
    let c: Vec<u8> = s
        .iter()
        .copied()
        .filter(|&c| c != b'-' && c != b' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if c.len() != 9 || s.len() > 10 {
        return None;
    }
    let lead = match c[0] {
        b'X' => Some(b'0'),
        b'Y' => Some(b'1'),
        b'Z' => Some(b'2'),
        d if d.is_ascii_digit() => None,
        _ => return None,
    };
    let mut digits = c[..8].to_vec();
    if let Some(l) = lead {
        digits[0] = l;
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    (DNI_LETTERS[(num(&digits) % 23) as usize] == c[8]).then_some(if h.national { 0.97 } else { 0.85 })
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        _ => 0,
    }
}

fn valid_date(y: u32, m: u32, d: u32) -> bool {
    (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)
}

/// Swedish personnummer: `YYMMDD-NNNN`, `YYMMDD+NNNN`, `YYYYMMDD-NNNN` or `YYYYMMDDNNNN`; the date is valid (day
/// + 60 for a samordningsnummer) and the ten digits from YYMMDD on pass Luhn.
fn se_personnummer(s: &[u8], h: &Hints) -> Option<f32> {
    let (d, separated): (Vec<u8>, bool) = match s.len() {
        11 if s[6] == b'-' || s[6] == b'+' => ([&s[..6], &s[7..]].concat(), true),
        13 if s[8] == b'-' => ([&s[2..8], &s[9..]].concat(), true),
        12 if h.national => (s[2..].to_vec(), false),
        10 if h.national => (s.to_vec(), false),
        _ => return None,
    };
    if d.len() != 10 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if s.len() >= 12 {
        let century = num(&s[..2]);
        if century != 19 && century != 20 {
            return None;
        }
    }
    let (m, mut day) = (num(&d[2..4]), num(&d[4..6]));
    if day > 60 {
        day -= 60;
    }
    if !valid_date(2000, m, day) || !luhn_valid(&d) {
        return None;
    }
    Some(if h.national {
        0.95
    } else if separated {
        0.8
    } else {
        0.5
    })
}

/// An e-mail address: a local part of 1-64 characters from the unquoted set, `@`, a domain of labels (letters,
/// digits, inner hyphens) with at least one dot and an alphabetic top-level label of two or more letters.
fn email_at(s: &[u8], at: usize) -> Option<(usize, usize)> {
    let local_ok = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&c);
    let mut start = at;
    while start > 0 && local_ok(s[start - 1]) && at - start < 64 {
        start -= 1;
    }
    while start < at && s[start] == b'.' {
        start += 1;
    }
    if start == at || s[at - 1] == b'.' || s[start..at].windows(2).any(|w| w == b"..") {
        return None;
    }
    let mut end = at + 1;
    while end < s.len() && (s[end].is_ascii_alphanumeric() || s[end] == b'-' || s[end] == b'.') && end - at < 254 {
        end += 1;
    }
    while end > at + 1 && s[end - 1] == b'.' {
        end -= 1;
    }
    let domain = &s[at + 1..end];
    let labels: Vec<&[u8]> = domain.split(|&c| c == b'.').collect();
    if labels.len() < 2 {
        return None;
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 || l[0] == b'-' || l[l.len() - 1] == b'-' {
            return None;
        }
    }
    let tld = labels[labels.len() - 1];
    if tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    Some((start, end))
}

fn ipv4(s: &[u8]) -> bool {
    let parts: Vec<&[u8]> = s.split(|&c| c == b'.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.iter().all(u8::is_ascii_digit)
                && (p.len() == 1 || p[0] != b'0')
                && num(p) <= 255
        })
}

fn ipv6(s: &[u8]) -> bool {
    if s.len() < 3 || s.len() > 45 || s.iter().filter(|&&c| c == b':').count() < 2 {
        return false;
    }
    std::str::from_utf8(s).is_ok_and(|t| t.parse::<std::net::Ipv6Addr>().is_ok())
}

fn ip(s: &[u8], h: &Hints) -> Option<f32> {
    if h.version {
        return None;
    }
    if ipv4(s) {
        // 0.0.0.0 and similar placeholders, and version-like 1.0.0.0, are weak
        let weak = s.iter().filter(|&&c| c == b'0').count() >= 3 && s.len() <= 8;
        return Some(if h.ip {
            0.95
        } else if weak {
            0.4
        } else {
            0.8
        });
    }
    ipv6(s).then_some(if h.ip { 0.95 } else { 0.85 })
}

/// A phone number: `+` and 8-15 digits (E.164, spaces, hyphens, dots and one pair of parentheses between
/// digits); `00` and 10-15 digits; a national form (10-11 digits starting with 0, or a North American
/// `(NXX) NXX-XXXX` / `NXX-NXX-XXXX`). Unseparated digit strings count only under a phone key.
fn phone(s: &[u8], h: &Hints) -> Option<f32> {
    if s.len() < 7 || s.len() > 24 {
        return None;
    }
    let plus = s[0] == b'+';
    let body = if plus { &s[1..] } else { s };
    let mut digits = Vec::with_capacity(16);
    let mut groups: Vec<usize> = Vec::new();
    let mut run = 0;
    let mut parens = 0;
    let mut seps = 0;
    let mut prev_sep = true;
    let mut sep_kinds = [false; 3];
    let mut last = 0u8;
    for &c in body {
        let prev = last;
        last = c;
        match c {
            b'0'..=b'9' => {
                digits.push(c);
                run += 1;
                prev_sep = false;
            }
            b' ' | b'-' | b'.' => {
                // two separators in a row, or one at the start, but a space after ")"
                if prev_sep && !(c == b' ' && prev == b')') {
                    return None;
                }
                sep_kinds[match c {
                    b' ' => 0,
                    b'-' => 1,
                    _ => 2,
                }] = true;
                if run > 0 {
                    groups.push(run);
                }
                run = 0;
                seps += 1;
                prev_sep = true;
            }
            b'(' if parens == 0 && run == 0 && prev != b'(' => parens = 1,
            b')' if parens == 1 && run > 0 => {
                parens = 2;
                groups.push(run);
                run = 0;
                seps += 1;
                prev_sep = true;
            }
            _ => return None,
        }
    }
    if run == 0 || parens == 1 {
        return None;
    }
    groups.push(run);
    let n = digits.len();
    // dates (2024-01-15, 15.01.2024), times and dotted versions are not phone numbers
    if !plus && (groups.len() == 3 && (groups == [4, 2, 2] || groups == [2, 2, 4]) || sep_kinds[2] && groups.len() > 3)
    {
        return None;
    }
    if plus {
        if !(8..=15).contains(&n) || digits[0] == b'0' {
            return None;
        }
        return Some(if h.phone {
            0.97
        } else if h.not_personal && seps == 0 {
            0.4
        } else {
            0.9
        });
    }
    if digits.starts_with(b"00") && (10..=15).contains(&n) && seps > 0 {
        return Some(if h.phone { 0.95 } else { 0.7 });
    }
    if seps == 0 {
        // a bare number: only under a phone key
        return (h.phone && (7..=15).contains(&n)).then_some(0.85);
    }
    let nanp =
        n == 10 && (groups == [3, 3, 4]) && (b'2'..=b'9').contains(&digits[0]) && (b'2'..=b'9').contains(&digits[3]);
    let national = digits[0] == b'0' && (10..=11).contains(&n) && groups.iter().all(|&g| g >= 2);
    if nanp || national {
        return Some(if h.phone {
            0.95
        } else if h.not_personal {
            0.35
        } else {
            0.7
        });
    }
    (h.phone && (7..=15).contains(&n)).then_some(0.8)
}

/// A date: `YYYY-MM-DD` (optionally followed by `T` and a time), `DD/MM/YYYY`, `MM/DD/YYYY`, `DD.MM.YYYY`,
/// `DD-MM-YYYY` or `YYYYMMDD`, year 1900-2030.
fn date(s: &[u8]) -> bool {
    let s = match s.iter().position(|&c| c == b'T' || c == b' ') {
        Some(p) if p == 10 => &s[..p],
        _ => s,
    };
    let all = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    let ok = |y: u32, m: u32, d: u32| (1900..=2030).contains(&y) && valid_date(y, m, d);
    match s.len() {
        10 if (s[4] == b'-' || s[4] == b'/') && s[7] == s[4] && all(&s[..4]) && all(&s[5..7]) && all(&s[8..]) => {
            ok(num(&s[..4]), num(&s[5..7]), num(&s[8..]))
        }
        10 if matches!(s[2], b'/' | b'.' | b'-') && s[5] == s[2] && all(&s[..2]) && all(&s[3..5]) && all(&s[6..]) => {
            let (a, b, y) = (num(&s[..2]), num(&s[3..5]), num(&s[6..]));
            ok(y, b, a) || ok(y, a, b)
        }
        8 if all(s) => ok(num(&s[..4]), num(&s[4..6]), num(&s[6..])),
        _ => false,
    }
}

const PARTICLES: &[&str] = &[
    "van", "de", "der", "den", "von", "da", "di", "du", "le", "la", "del", "della", "bin", "al", "ten", "ter", "y",
    "e", "dos", "das",
];

/// Words that make a capitalised phrase something other than a name.
const NOT_NAME_WORDS: &[&str] = &[
    "plan", "premium", "basic", "pro", "account", "order", "invoice", "service", "product", "team", "group", "inc",
    "ltd", "llc", "gmbh", "bv", "corp", "company", "event", "created", "updated", "deleted", "payment", "test",
    "default", "admin", "system", "user", "unknown", "none", "null", "true", "false", "street", "road", "avenue",
];

/// Whether a value reads as a person's name: 1-5 words of letters (apostrophes, hyphens, a final dot for
/// initials), each capitalised but lower-case particles (van, de, von, ...), 2-80 characters, no digits.
/// Returns the number of words.
fn name_words(s: &str) -> Option<usize> {
    let n = s.chars().count();
    if !(2..=80).contains(&n) {
        return None;
    }
    let words: Vec<&str> = s.split(' ').collect();
    if words.len() > 5 || words.iter().any(|w| w.is_empty()) {
        return None;
    }
    let mut capitalised = 0;
    for w in &words {
        let lower = w.to_lowercase();
        if NOT_NAME_WORDS.contains(&lower.trim_end_matches('.')) {
            return None;
        }
        if PARTICLES.contains(w) {
            continue;
        }
        let mut cs = w.chars();
        let first = cs.next()?;
        if !first.is_uppercase() {
            return None;
        }
        let rest: Vec<char> = cs.collect();
        let letters = |r: &[char]| r.iter().all(|c| c.is_alphabetic() || matches!(c, '\'' | '-' | '’'));
        let initial = rest.last() == Some(&'.') && rest[..rest.len() - 1].iter().all(|c| c.is_alphabetic());
        if !letters(&rest) && !initial {
            return None;
        }
        // CamelCase words are identifiers (CustomerCreated), but Mc/Mac/O'/D' names (McDonald, O'Brien)
        let inner_capital = rest.windows(2).any(|p| p[0].is_lowercase() && p[1].is_uppercase());
        if inner_capital
            && !["Mc", "Mac", "Di", "De", "La", "Le", "Van"]
                .iter()
                .any(|p| w.starts_with(p))
        {
            return None;
        }
        // all-capitals words of 4+ letters are codes (ACME, ERROR), not names
        if rest.len() >= 3 && rest.iter().all(|c| c.is_uppercase()) {
            return None;
        }
        capitalised += 1;
    }
    (capitalised > 0).then_some(words.len())
}

const STREET_WORDS: &[&str] = &[
    "street",
    "st",
    "avenue",
    "ave",
    "road",
    "rd",
    "lane",
    "ln",
    "boulevard",
    "blvd",
    "drive",
    "dr",
    "way",
    "court",
    "ct",
    "place",
    "pl",
    "square",
    "sq",
    "terrace",
    "close",
    "crescent",
    "highway",
    "hwy",
    "parkway",
    "pkwy",
    "calle",
    "rue",
    "via",
    "avenida",
    "plaza",
    "strasse",
    "straße",
    "straat",
    "weg",
    "laan",
    "plein",
    "gracht",
    "gatan",
    "vägen",
    "gade",
    "vej",
    "allee",
    "platz",
    "ring",
    "ulica",
];

/// Whether a value reads as a street address: a house number and a street word (`221B Baker Street`,
/// `Hauptstraße 5`, `Calle Mayor 12`), or, under an address key, words with a number.
fn street(s: &str, keyed: bool) -> Option<f32> {
    let n = s.chars().count();
    if !(5..=200).contains(&n) || !s.contains(' ') || s.contains('@') || s.contains("://") {
        return None;
    }
    let words: Vec<String> = s
        .split([' ', ','])
        .filter(|w| !w.is_empty())
        .map(|w| w.trim_end_matches('.').to_lowercase())
        .collect();
    let house = words.iter().any(|w| {
        let d = w.chars().take_while(char::is_ascii_digit).count();
        (1..=5).contains(&d)
            && w.chars().skip(d).all(|c| c.is_alphabetic() || c == '-' || c == '/')
            && w.chars().count() <= d + 2
    });
    let street_word = words.iter().any(|w| {
        STREET_WORDS.contains(&w.as_str())
            || [
                "straße", "strasse", "straat", "weg", "laan", "gatan", "vägen", "gade", "vej", "plein", "gracht",
            ]
            .iter()
            .any(|suf| w.len() > suf.len() + 2 && w.ends_with(suf))
    });
    let letters = words
        .iter()
        .filter(|w| w.chars().filter(|c| c.is_alphabetic()).count() >= 2)
        .count();
    if house && street_word {
        return Some(if keyed { 0.95 } else { 0.75 });
    }
    if keyed && house && letters >= 1 {
        return Some(0.8);
    }
    if keyed && street_word && letters >= 2 {
        return Some(0.55);
    }
    None
}

// ---------------------------------------------------------------------------------------------------------------
// One value
// ---------------------------------------------------------------------------------------------------------------

/// The kinds a scalar value (a string's text, or a number's) holds, with their confidence: the whole value's
/// kind first (at most one), then what free text holds (e-mail addresses, `+` phone numbers, card numbers, IBANs,
/// IP addresses). `key` and `parent`: the names of the key the value sits under and of the key above it.
pub fn classify(value: &str, key: Option<&[u8]>, parent: Option<&[u8]>, is_number: bool) -> Vec<(Kind, f32)> {
    let h = hints(key, parent);
    let mut out = Vec::new();
    let t = value.trim();
    if t.is_empty() || looks_like_envelope(t) {
        return out;
    }
    let b = t.as_bytes();
    if let Some(k) = whole(t, b, &h, is_number) {
        out.push(k);
        return out;
    }
    if !is_number && b.len() >= 8 {
        free_text(b, &h, &mut out);
    }
    out
}

fn whole(t: &str, b: &[u8], h: &Hints, is_number: bool) -> Option<(Kind, f32)> {
    if !is_number {
        if let Some(at) = b.iter().position(|&c| c == b'@') {
            if email_at(b, at) == Some((0, b.len())) {
                return Some((Kind::Email, if h.email { 0.99 } else { 0.95 }));
            }
        }
        if let Some(c) = iban(b, h) {
            return Some((Kind::Iban, c));
        }
    }
    type Check = fn(&[u8], &Hints) -> Option<f32>;
    let checks: [(Kind, Check); 6] = [
        (Kind::PaymentCard, card),
        (Kind::UsSsn, us_ssn),
        (Kind::NlBsn, nl_bsn),
        (Kind::SePersonnummer, se_personnummer),
        (Kind::EsDni, es_dni),
        (Kind::UkNino, uk_nino),
    ];
    let mut best: Option<(Kind, f32)> = None;
    for (k, f) in checks {
        if let Some(c) = f(b, h) {
            if best.is_none_or(|(_, bc)| c > bc) {
                best = Some((k, c));
            }
        }
    }
    if h.dob && date(b) {
        return Some((Kind::DateOfBirth, 0.9));
    }
    if let Some(found) = best.filter(|(_, c)| *c >= MIN_CONFIDENCE) {
        return Some(found);
    }
    if !is_number {
        if let Some(c) = ip(b, h) {
            return Some((Kind::IpAddress, c));
        }
    }
    if let Some(c) = phone(b, h) {
        return Some((Kind::Phone, c));
    }
    if is_number {
        return best;
    }
    if h.person_name || h.name_of_person || h.bare_name {
        if let Some(words) = name_words(t) {
            let c = if h.person_name {
                0.9
            } else if h.name_of_person {
                0.85
            } else if words >= 2 {
                0.6
            } else {
                0.3
            };
            return Some((Kind::PersonName, c));
        }
    }
    if let Some(c) = street(t, h.address) {
        return Some((Kind::StreetAddress, c));
    }
    best
}

/// What free text holds: e-mail addresses, card numbers and `+` phone numbers among its digit runs, IBANs and IP
/// addresses among its words.
fn free_text(b: &[u8], h: &Hints, out: &mut Vec<(Kind, f32)>) {
    let none = Hints::default();
    let mut push = |k: Kind, c: f32| {
        if let Some(e) = out.iter_mut().find(|(x, _)| *x == k) {
            e.1 = e.1.max(c);
        } else {
            out.push((k, c));
        }
    };
    // e-mail addresses around each @
    for (i, _) in b.iter().enumerate().filter(|(_, &c)| c == b'@') {
        if email_at(b, i).is_some() {
            push(Kind::Email, 0.9);
            break;
        }
    }
    // runs of digits with single spaces or hyphens between them (and a leading +)
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() || (b[i] == b'+' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            let mut j = i + 1;
            while j < b.len()
                && (b[j].is_ascii_digit()
                    || (matches!(b[j], b' ' | b'-') && b.get(j + 1).is_some_and(u8::is_ascii_digit)))
            {
                j += 1;
            }
            let boundary_before = start == 0 || !b[start - 1].is_ascii_alphanumeric() && b[start - 1] != b'.';
            let boundary_after = j == b.len()
                || !b[j].is_ascii_alphanumeric() && b[j] != b'.'
                || (b[j] == b'.' && b.get(j + 1).is_none_or(|c| !c.is_ascii_digit()));
            if boundary_before && boundary_after {
                let run = &b[start..j];
                if let Some(c) = card(run, h) {
                    push(Kind::PaymentCard, c.min(0.85));
                } else if run[0] == b'+' {
                    if let Some(c) = phone(run, &none) {
                        push(Kind::Phone, c.min(0.85));
                    }
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    // words
    for w in b.split(|c| c.is_ascii_whitespace() || b",;()[]<>\"'".contains(c)) {
        let w = w.strip_suffix(b".").unwrap_or(w);
        if w.len() < 3 {
            continue;
        }
        if w.len() >= 15 && w[0].is_ascii_uppercase() && iban(w, &none).is_some() {
            push(Kind::Iban, 0.9);
        } else if (w[0].is_ascii_digit() && ipv4(w))
            || (w.contains(&b':') && ipv6(w) && w.iter().filter(|&&c| c == b':').count() >= 3)
        {
            push(Kind::IpAddress, 0.75);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------------------------------------------

struct Walk {
    found: Vec<Finding>,
    index: HashMap<(String, Kind), usize>,
    values: usize,
    truncated: bool,
    text: String,
}

impl Walk {
    fn note(&mut self, path: &str, kind: Kind, confidence: f32) {
        if confidence < MIN_CONFIDENCE {
            return;
        }
        // (the key is owned: findings are few, the lookups are not the hot path)
        if let Some(&i) = self.index.get(&(path.to_string(), kind)) {
            let f = &mut self.found[i];
            f.confidence = f.confidence.max(confidence);
            return;
        }
        if self.found.len() >= MAX_FINDINGS {
            self.truncated = true;
            return;
        }
        self.index.insert((path.to_string(), kind), self.found.len());
        self.found.push(Finding {
            path: path.to_string(),
            kind,
            confidence,
        });
    }

    fn value(
        &mut self,
        v: Value<'_>,
        path: &mut String,
        key: Option<&[u8]>,
        parent: Option<&[u8]>,
        depth: usize,
    ) -> Result<()> {
        if self.truncated {
            return Ok(());
        }
        match v {
            Value::Object(c) => {
                if depth >= MAX_DEPTH {
                    self.truncated = true;
                    return Ok(());
                }
                crate::check_interrupts();
                for pair in c.pairs() {
                    let (k, child) = pair?;
                    let mark = path.len();
                    crate::path::push_key(path, k);
                    self.value(child, path, Some(k), key, depth + 1)?;
                    path.truncate(mark);
                    if self.truncated {
                        break;
                    }
                }
            }
            Value::Array(c) => {
                if depth >= MAX_DEPTH {
                    self.truncated = true;
                    return Ok(());
                }
                crate::check_interrupts();
                let mark = path.len();
                path.push_str("[*]");
                // elements keep the array's key as their context (phones: ["+31 …", …])
                for e in c.elements() {
                    self.value(e?, path, key, parent, depth + 1)?;
                    if self.truncated {
                        break;
                    }
                }
                path.truncate(mark);
            }
            Value::String(s) => {
                if !self.count() {
                    return Ok(());
                }
                let s = &s[..s.len().min(MAX_SCAN)];
                let s = match std::str::from_utf8(s) {
                    Ok(s) => s,
                    Err(e) => std::str::from_utf8(&s[..e.valid_up_to()]).unwrap_or_default(),
                };
                for (k, c) in classify(s, key, parent, false) {
                    self.note(path, k, c);
                }
            }
            Value::Number(n) => {
                if !self.count() || n.len() > 32 {
                    return Ok(());
                }
                let mut t = std::mem::take(&mut self.text);
                t.clear();
                if numeric_to_text(n, &mut t).is_ok() && t.len() >= 7 && t.bytes().all(|c| c.is_ascii_digit()) {
                    for (k, c) in classify(&t, key, parent, true) {
                        self.note(path, k, c);
                    }
                }
                self.text = t;
            }
            Value::Null | Value::Bool(_) => {}
        }
        Ok(())
    }

    /// Counts one scalar value; false once [`MAX_VALUES`] have been inspected.
    fn count(&mut self) -> bool {
        if self.values >= MAX_VALUES {
            self.truncated = true;
            return false;
        }
        self.values += 1;
        crate::check_interrupts_every(self.values);
        true
    }
}

/// Walks a jsonb document and reports what PII it holds, where (paths in the `protect()` syntax, `[*]` for array
/// elements, the root of a scalar document as the empty path) and how sure, each (path, kind) once.
pub fn detect(doc: &Document<'_>) -> Result<Report> {
    let mut w = Walk {
        found: Vec::new(),
        index: HashMap::new(),
        values: 0,
        truncated: false,
        text: String::new(),
    };
    let mut path = String::new();
    w.value(doc.value()?, &mut path, None, None, 0)?;
    Ok(Report {
        findings: w.found,
        truncated: w.truncated,
    })
}

/// A path as a message may show it: keys that could themselves be personal data (with a digit, an `@`, longer
/// than 40 bytes, or a value [`classify`] recognises) are shown as `…`.
pub fn redacted_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[*]") {
            out.push_str("[*]");
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix('.') {
            out.push('.');
            rest = r;
            continue;
        }
        // a key: quoted (until the unescaped closing quote) or bare (until . or [)
        let end = if rest.starts_with('"') {
            let b = rest.as_bytes();
            let mut i = 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            (i + 1).min(b.len())
        } else {
            rest.find(['.', '[']).unwrap_or(rest.len())
        };
        let key = &rest[..end];
        let suspicious = key.len() > 40
            || key.contains('@')
            || key.bytes().any(|c| c.is_ascii_digit())
            || !classify(key.trim_matches('"'), None, None, false).is_empty();
        out.push_str(if suspicious { "…" } else { key });
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests;
