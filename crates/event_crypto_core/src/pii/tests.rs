use super::*;
use crate::jsonb::from_json_text;

fn kinds(key: &str, value: &str) -> Vec<Kind> {
    classify(value, Some(key.as_bytes()), None, false)
        .into_iter()
        .filter(|(_, c)| *c >= MIN_CONFIDENCE)
        .map(|(k, _)| k)
        .collect()
}

fn one(key: &str, value: &str) -> Option<Kind> {
    let k = kinds(key, value);
    assert!(k.len() <= 1, "{key}={value}: {k:?}");
    k.first().copied()
}

fn doc(json: &str) -> Report {
    let d = from_json_text(json).unwrap();
    detect(&Document::from_datum(&d).unwrap()).unwrap()
}

fn found(json: &str) -> Vec<(String, &'static str)> {
    let mut v: Vec<_> = doc(json)
        .findings
        .into_iter()
        .map(|f| (f.path, f.kind.as_str()))
        .collect();
    v.sort();
    v
}

#[test]
fn emails() {
    for v in ["alice@example.com", "a.b+tag@sub.example.co.uk", "x_y@mail-host.io"] {
        assert_eq!(one("contact", v), Some(Kind::Email), "{v}");
    }
    for v in [
        "alice@localhost",
        "@example.com",
        "alice@",
        "a@b.c",
        "alice@exa_mple.com",
        "a..b@example.com",
        "user@-x.com",
        "v1.2@3.4",
    ] {
        assert_eq!(one("contact", v), None, "{v}");
    }
    assert_eq!(
        kinds("note", "please write to bob@example.org today"),
        vec![Kind::Email]
    );
}

#[test]
fn cards() {
    for v in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "2223003122003222",
        "3530111333300000",
    ] {
        assert_eq!(one("card", v), Some(Kind::PaymentCard), "{v}");
        assert_eq!(one("value", v), Some(Kind::PaymentCard), "{v}");
    }
    // invalid Luhn, unknown prefix, wrong grouping, mixed separators, too short/long
    for v in [
        "4111111111111112",
        "9111111111111111",
        "4111 11111111 1111",
        "4111-1111 1111-1111",
        "411111111111",
        "41111111111111111111",
    ] {
        assert_eq!(one("card", v), None, "{v}");
    }
    assert!(luhn_valid(b"79927398713") && !luhn_valid(b"79927398710"));
    // an order id that happens to pass Luhn, under an order key: not reported
    assert_eq!(one("order_id", "4111111111111111"), None);
    assert_eq!(
        kinds("comment", "paid with 4111 1111 1111 1111 yesterday"),
        vec![Kind::PaymentCard]
    );
}

#[test]
fn ibans() {
    for v in [
        "NL91ABNA0417164300",
        "NL91 ABNA 0417 1643 00",
        "DE89370400440532013000",
        "GB29NWBK60161331926819",
        "FR1420041010050500013M02606",
    ] {
        assert_eq!(one("account", v), Some(Kind::Iban), "{v}");
    }
    for v in [
        "NL92ABNA0417164300",
        "NL91ABNA041716430",
        "XX91ABNA0417164300",
        "NL91 ABNA 0417164300",
        "DE89370400440532013001",
    ] {
        assert_eq!(one("account", v), None, "{v}");
    }
    assert_eq!(
        kinds("memo", "refund to DE89370400440532013000 please"),
        vec![Kind::Iban]
    );
}

#[test]
fn national_ids() {
    // US SSN: structure
    assert_eq!(one("x", "123-45-6789"), Some(Kind::UsSsn));
    assert_eq!(one("ssn", "123456789"), Some(Kind::UsSsn));
    for v in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",
        "123-45-0000",
        "078-05-1120",
    ] {
        assert_eq!(one("ssn", v), None, "{v}");
    }
    // UK NINO
    assert_eq!(one("x", "AB123456C"), Some(Kind::UkNino));
    assert_eq!(one("nino", "AB 12 34 56 C"), Some(Kind::UkNino));
    for v in ["DA123456C", "BG123456C", "AB123456E", "AB12345C"] {
        assert_eq!(one("nino", v), None, "{v}");
    }
    // Dutch BSN: 11-test, only under a telling key or dotted
    assert!(bsn_valid(b"111222333") && bsn_valid(b"123456782") && !bsn_valid(b"123456789"));
    assert_eq!(one("bsn", "123456782"), Some(Kind::NlBsn));
    assert_eq!(one("x", "1234.56.782"), Some(Kind::NlBsn));
    assert_eq!(one("bsn", "123456789"), None);
    assert_eq!(one("order_id", "123456782"), None);
    // Spanish DNI / NIE
    assert_eq!(one("x", "12345678Z"), Some(Kind::EsDni));
    assert_eq!(one("x", "X1234567L"), Some(Kind::EsDni));
    assert_eq!(one("dni", "12345678-Z"), Some(Kind::EsDni));
    assert_eq!(one("x", "12345678A"), None);
    // Swedish personnummer: date and Luhn
    assert_eq!(one("x", "811218-9876"), Some(Kind::SePersonnummer));
    assert_eq!(one("x", "19811218-9876"), Some(Kind::SePersonnummer));
    assert_eq!(one("personnummer", "198112189876"), Some(Kind::SePersonnummer));
    assert_eq!(one("x", "811218-9875"), None);
    assert_eq!(one("x", "811318-9876"), None);
}

#[test]
fn phones() {
    for v in [
        "+31 6 12345678",
        "+14155552671",
        "+44 20 7946 0958",
        "+1 (415) 555-2671",
        "(415) 555-2671",
        "415-555-2671",
        "06 12345678",
        "020 794 6095",
        "0044 20 7946 0958",
    ] {
        assert_eq!(one("contact", v), Some(Kind::Phone), "{v}");
    }
    assert_eq!(one("phone", "0612345678"), Some(Kind::Phone));
    // bare numbers without a phone key, dates, versions, prices, timestamps, zero country code
    for v in [
        "0612345678",
        "2024-01-15",
        "15.01.2024",
        "1.2.3.4567",
        "1,299.00",
        "1705321845",
        "+0 123 456 789",
        "12:30:45",
        "2024-01-15T12:30:45Z",
    ] {
        assert_eq!(one("contact", v), None, "{v}");
    }
    assert_eq!(kinds("note", "call +31 6 12345678 after five"), vec![Kind::Phone]);
}

#[test]
fn ips() {
    for v in ["192.168.1.20", "8.8.8.8", "2001:db8::1", "fe80::1ff:fe23:4567:890a"] {
        assert_eq!(one("client", v), Some(Kind::IpAddress), "{v}");
    }
    for v in ["256.1.1.1", "01.2.3.4", "1.2.3", "12:30:45", "00:1a:2b:3c:4d:5e"] {
        assert_eq!(one("client", v), None, "{v}");
    }
    assert_eq!(one("version", "1.2.3.4"), None);
    assert_eq!(kinds("log", "login from 203.0.113.9 failed"), vec![Kind::IpAddress]);
}

#[test]
fn dates_of_birth() {
    for (k, v) in [
        ("dob", "1985-03-12"),
        ("date_of_birth", "12/03/1985"),
        ("birthDate", "12.03.1985"),
        ("born", "19850312"),
    ] {
        assert_eq!(one(k, v), Some(Kind::DateOfBirth), "{k}");
    }
    assert_eq!(one("dob", "1985-02-30"), None);
    assert_eq!(one("dob", "not a date"), None);
    assert_eq!(one("created_at", "1985-03-12"), None);
    let mut t = String::new();
    crate::jsonb::numeric_from_text(b"19850312")
        .map(|n| numeric_to_text(&n, &mut t))
        .unwrap()
        .unwrap();
    assert_eq!(
        found(r#"{"dob": 19850312}"#),
        vec![("dob".to_string(), "date_of_birth")]
    );
}

#[test]
fn names_and_addresses() {
    assert_eq!(one("first_name", "Alice"), Some(Kind::PersonName));
    assert_eq!(one("lastName", "van der Berg"), Some(Kind::PersonName));
    assert_eq!(one("first_name", "x7"), None);
    assert_eq!(one("name", "Alice Smith"), Some(Kind::PersonName));
    assert_eq!(one("name", "Premium Plan"), None);
    assert_eq!(one("name", "ACME"), None);
    assert_eq!(
        found(r#"{"product": {"name": "Blue Widget"}, "customer": {"name": "Bob"}}"#),
        vec![("customer.name".to_string(), "person_name")]
    );
    assert_eq!(one("street", "221B Baker Street"), Some(Kind::StreetAddress));
    assert_eq!(one("address", "Hauptstraße 5, 10115 Berlin"), Some(Kind::StreetAddress));
    assert_eq!(one("note", "1600 Pennsylvania Avenue"), Some(Kind::StreetAddress));
    assert_eq!(one("email_address", "a@b.io"), Some(Kind::Email));
    assert_eq!(
        one("wallet_address", "0x52908400098527886E0F7030069857D2E4169EE7"),
        None
    );
    assert_eq!(one("note", "Take 2 pills a day"), None);
}

#[test]
fn documents_and_paths() {
    let f = found(
        r#"{"email": "a@example.com", "items": [{"card": "4111111111111111"}, {"card": "5555555555554444"}],
            "a.b": {"phone": "+31 6 12345678"}, "contacts": ["+14155552671", "+442079460958"], "n": 12.5,
            "nested": [[{"ip": "10.0.0.1"}]], "enc": "$ec2$AAAA", "ok": true, "nil": null}"#,
    );
    assert_eq!(
        f,
        vec![
            ("\"a.b\".phone".to_string(), "phone"),
            ("contacts[*]".to_string(), "phone"),
            ("email".to_string(), "email"),
            ("items[*].card".to_string(), "payment_card"),
            ("nested[*][*].ip".to_string(), "ip_address"),
        ]
    );
    // every path parses as a protect() path
    for (p, _) in &f {
        crate::path::FieldPath::parse(p).unwrap();
    }
    // a scalar document: the empty path
    assert_eq!(found(r#""alice@example.com""#), vec![(String::new(), "email")]);
    assert!(found("{}").is_empty() && found("[]").is_empty() && found("null").is_empty());
}

#[test]
fn bounded() {
    // more values than inspected
    let many = format!("[{}]", vec!["\"x\""; MAX_VALUES + 10].join(","));
    assert!(doc(&many).truncated);
    // a long string: only its beginning is scanned
    let long = format!("{{\"note\": \"{} a@example.com\"}}", "x".repeat(MAX_SCAN + 10));
    let r = doc(&long);
    assert!(r.findings.is_empty() && !r.truncated);
    // deep nesting is walked (within jsonb's own limit)
    let deep = format!("{}{{\"email\": \"a@example.com\"}}{}", "[".repeat(200), "]".repeat(200));
    assert_eq!(doc(&deep).findings.len(), 1);
    // findings are capped
    let wide = format!(
        "{{{}}}",
        (0..MAX_FINDINGS + 5)
            .map(|i| format!("\"k{i}\": \"a@example.com\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let r = doc(&wide);
    assert!(r.truncated && r.findings.len() == MAX_FINDINGS);
}

#[test]
fn redaction() {
    assert_eq!(redacted_path("customer.email"), "customer.email");
    assert_eq!(redacted_path("items[*].card"), "items[*].card");
    assert_eq!(redacted_path("by_mail.\"alice@example.com\".phone"), "by_mail.….phone");
    assert_eq!(redacted_path("users.u12345.email"), "users.….email");
    assert_eq!(redacted_path("\"a.b\".c"), "\"a.b\".c");
}

// ---------------------------------------------------------------------------------------------------------------
// Precision and recall on a generated, labelled corpus (deterministic seed)
// ---------------------------------------------------------------------------------------------------------------

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
    }
}

fn luhn_digit(partial: &str) -> char {
    (0..10u8)
        .map(|d| char::from(b'0' + d))
        .find(|&d| luhn_valid(format!("{partial}{d}").as_bytes()))
        .unwrap()
}

fn iban_for(cc: &str, bban: &str) -> String {
    let mut rem = 0u32;
    for c in bban.bytes().chain(cc.bytes()).chain(*b"00") {
        rem = if c.is_ascii_digit() {
            (rem * 10 + u32::from(c - b'0')) % 97
        } else {
            (rem * 100 + u32::from(c - b'A' + 10)) % 97
        };
    }
    format!("{cc}{:02}{bban}", 98 - rem)
}

const FIRST: &[&str] = &[
    "Alice",
    "Bob",
    "Chloé",
    "Dmitri",
    "Eva",
    "Farid",
    "Grace",
    "Hiroshi",
    "Ingrid",
    "José",
    "Katarzyna",
    "Liam",
    "Mei",
    "Noah",
    "Olga",
    "Pieter",
    "Sven",
    "Zoë",
];
const LAST: &[&str] = &[
    "Smith",
    "García",
    "Jansen",
    "Müller",
    "O'Brien",
    "Nakamura",
    "Kowalski",
    "Andersson",
    "Dubois",
    "Rossi",
    "Nguyen",
    "Okafor",
    "Smith-Jones",
];
const STREETS: &[&str] = &[
    "Baker Street",
    "Main St",
    "Oak Avenue",
    "Elm Road",
    "Sunset Blvd",
    "Maple Lane",
    "Park Drive",
    "Kerkstraat",
    "Hauptstraße",
    "Calle Mayor",
    "Drottninggatan",
    "Rue de Rivoli",
];

/// One labelled sample: a document and the (path, kind) it holds, or None for a look-alike.
fn sample(r: &mut Rng, i: usize) -> (String, String, Option<Kind>) {
    let q = |k: &str, v: &str| (format!("{{\"{k}\": \"{v}\"}}"), k.to_string());
    let (doc, path, kind) = match i % 26 {
        0 => {
            let v = format!(
                "{}.{}{}@{}.{}",
                r.pick(FIRST).to_lowercase(),
                r.pick(LAST).to_lowercase().replace(['\'', 'é', 'ü', 'í'], ""),
                r.below(100),
                r.pick(&["example", "mail", "corp-x"]),
                r.pick(&["com", "io", "nl", "co.uk"])
            );
            let v = v.replace(['é', 'ö', 'ë', 'ç'], "e");
            let (d, p) = q(r.pick(&["email", "contact", "login", "to"]), &v);
            (d, p, Some(Kind::Email))
        }
        1 => {
            let v = match r.below(5) {
                0 => format!("+{} {} {}", r.range(1, 99), r.range(10, 999), r.digits(7)),
                1 => format!("+{}{}", r.range(1, 9), r.digits(10)),
                2 => format!("({}) {}-{}", r.range(201, 989), r.range(201, 999), r.digits(4)),
                3 => format!("0{} {}", r.range(10, 99), r.digits(8)),
                _ => format!("{}-{}-{}", r.range(201, 989), r.range(201, 999), r.digits(4)),
            };
            let (d, p) = q(r.pick(&["phone", "mobile", "contact", "tel", "data"]), &v);
            (d, p, Some(Kind::Phone))
        }
        2 => {
            let prefix = r.pick(&["4", "51", "55", "2221", "34", "37", "6011", "65", "3530"]);
            let len = if prefix == "34" || prefix == "37" { 15 } else { 16 };
            let partial = format!("{prefix}{}", r.digits(len - 1 - prefix.len()));
            let n = format!("{partial}{}", luhn_digit(&partial));
            let v = if len == 16 && r.below(2) == 0 {
                n.as_bytes()
                    .chunks(4)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                n
            };
            let (d, p) = q(r.pick(&["card_number", "pan", "payment", "value"]), &v);
            (d, p, Some(Kind::PaymentCard))
        }
        3 => {
            let v = match r.below(3) {
                0 => iban_for("NL", &format!("{}{}", r.pick(&["ABNA", "INGB", "RABO"]), r.digits(10))),
                1 => iban_for("DE", &r.digits(18)),
                _ => iban_for("GB", &format!("NWBK{}", r.digits(14))),
            };
            let (d, p) = q(r.pick(&["iban", "account", "payout_to"]), &v);
            (d, p, Some(Kind::Iban))
        }
        4 => {
            let mut a = r.range(1, 899);
            if a == 666 {
                a = 665;
            }
            let v = format!("{a:03}-{:02}-{:04}", r.range(1, 99), r.range(1, 9999));
            let (d, p) = q(r.pick(&["ssn", "tax_id", "social_security_number", "data"]), &v);
            (d, p, Some(Kind::UsSsn))
        }
        5 => {
            let v = format!(
                "{}{}{}{}",
                r.pick(&["A", "B", "C", "E", "H", "J", "K", "L", "M", "P", "R", "S", "W"]),
                r.pick(&["A", "B", "C", "E", "H", "J", "K", "L", "M", "P", "R", "S", "W"]),
                r.digits(6),
                r.pick(&["A", "B", "C", "D"])
            );
            let (d, p) = q(r.pick(&["nino", "ni_number", "national_insurance"]), &v);
            (d, p, Some(Kind::UkNino))
        }
        6 => {
            let v = loop {
                let c = r.digits(9);
                if bsn_valid(c.as_bytes()) {
                    break c;
                }
            };
            let (d, p) = q(r.pick(&["bsn", "burgerservicenummer", "national_id", "data"]), &v);
            (d, p, Some(Kind::NlBsn))
        }
        7 => {
            let n = r.range(0, 99_999_999);
            let v = if r.below(3) == 0 {
                let n = n % 10_000_000;
                let l = ["X", "Y", "Z"][(n % 3) as usize];
                let full: u64 = format!("{}{n:07}", (n % 3)).parse().unwrap();
                format!("{l}{n:07}{}", DNI_LETTERS[(full % 23) as usize] as char)
            } else {
                format!("{n:08}{}", DNI_LETTERS[(n % 23) as usize] as char)
            };
            let (d, p) = q(r.pick(&["dni", "nie", "document", "id_number"]), &v);
            (d, p, Some(Kind::EsDni))
        }
        8 => {
            let (y, m) = (r.range(30, 99), r.range(1, 12));
            let dd = r.range(1, 28);
            let partial = format!("{y:02}{m:02}{dd:02}{}", r.digits(3));
            let v = format!("{}-{}{}", &partial[..6], &partial[6..], luhn_digit(&partial));
            let (d, p) = q(r.pick(&["personnummer", "personal_number", "id", "data"]), &v);
            (d, p, Some(Kind::SePersonnummer))
        }
        9 => {
            let v = if r.below(3) == 0 {
                format!("2001:db8:{:x}::{:x}", r.below(65535), r.below(65535))
            } else {
                format!(
                    "{}.{}.{}.{}",
                    r.range(1, 223),
                    r.below(256),
                    r.below(256),
                    r.range(1, 254)
                )
            };
            let (d, p) = q(r.pick(&["ip", "client_ip", "remote_addr", "source"]), &v);
            (d, p, Some(Kind::IpAddress))
        }
        10 => {
            let (y, m, dd) = (r.range(1930, 2010), r.range(1, 12), r.range(1, 28));
            let v = match r.below(3) {
                0 => format!("{y}-{m:02}-{dd:02}"),
                1 => format!("{dd:02}/{m:02}/{y}"),
                _ => format!("{dd:02}.{m:02}.{y}"),
            };
            let (d, p) = q(r.pick(&["dob", "date_of_birth", "birthDate", "born_on", "date"]), &v);
            (d, p, Some(Kind::DateOfBirth))
        }
        11 => {
            let (k, v) = match r.below(3) {
                0 => (
                    r.pick(&["first_name", "firstName", "given_name"]),
                    r.pick(FIRST).to_string(),
                ),
                1 => (
                    r.pick(&["last_name", "surname", "family_name"]),
                    r.pick(LAST).to_string(),
                ),
                _ => ("full_name", format!("{} {}", r.pick(FIRST), r.pick(LAST))),
            };
            let (d, p) = q(k, &v);
            (d, p, Some(Kind::PersonName))
        }
        12 => {
            let v = format!("{} {}", r.pick(FIRST), r.pick(LAST));
            (
                format!(
                    "{{\"{}\": {{\"name\": \"{v}\"}}}}",
                    r.pick(&["customer", "user", "contact"])
                ),
                String::new(),
                Some(Kind::PersonName),
            )
        }
        13 => {
            let s = r.pick(STREETS);
            let v = if s.ends_with("straße")
                || s.ends_with("straat")
                || s.ends_with("gatan")
                || s.starts_with("Calle")
                || s.starts_with("Rue")
            {
                format!("{s} {}", r.range(1, 300))
            } else {
                format!("{} {s}", r.range(1, 3000))
            };
            let (d, p) = q(r.pick(&["street", "address", "address_line1", "note", "data"]), &v);
            (d, p, Some(Kind::StreetAddress))
        }
        // look-alikes
        14 => {
            // order ids: 16 digits that pass no checksum
            let mut n = format!("{}{}", r.pick(&["4", "5", "6", "3"]), r.digits(15));
            if luhn_valid(n.as_bytes()) {
                let last = (n.pop().unwrap() as u8 - b'0' + 1) % 10;
                n.push(char::from(b'0' + last));
            }
            let (d, p) = q(r.pick(&["order_id", "reference", "value", "card_number"]), &n);
            (d, p, None)
        }
        15 => {
            let v = match r.below(4) {
                0 => format!("{}.{}.{}", r.below(20), r.below(50), r.below(300)),
                1 => format!("{}.{}.{}.{}", r.below(20), r.below(10), r.below(10), r.below(20000)),
                2 => format!("v{}.{}.{}-rc{}", r.below(20), r.below(50), r.below(300), r.below(9)),
                _ => format!("{}.{}.{}.{}", r.below(9), r.below(9), r.below(9), r.below(9)),
            };
            let (d, p) = q(r.pick(&["version", "app_version", "build"]), &v);
            (d, p, None)
        }
        16 => {
            let v = match r.below(4) {
                0 => format!(
                    "2024-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    r.range(1, 12),
                    r.range(1, 28),
                    r.below(24),
                    r.below(60),
                    r.below(60)
                ),
                1 => format!("{}", r.range(1_500_000_000, 1_800_000_000)),
                2 => format!("{:02}:{:02}:{:02}", r.below(24), r.below(60), r.below(60)),
                _ => format!("2024-{:02}-{:02}", r.range(1, 12), r.range(1, 28)),
            };
            let (d, p) = q(r.pick(&["created_at", "timestamp", "at", "date", "updated"]), &v);
            (d, p, None)
        }
        17 => {
            let v = match r.below(4) {
                0 => format!("{},{:03}.{:02}", r.range(1, 99), r.below(1000), r.below(100)),
                1 => format!("{}.{:02}", r.range(1, 9999), r.below(100)),
                2 => format!("EUR {} {:03},{:02}", r.range(1, 99), r.below(1000), r.below(100)),
                _ => format!("${}.{:02}", r.range(1, 9999), r.below(100)),
            };
            let (d, p) = q(r.pick(&["price", "amount", "total", "value", "phone"]), &v);
            (d, p, None)
        }
        18 => {
            // IBAN, card, DNI, BSN and personnummer look-alikes with a wrong check digit
            let v = match r.below(4) {
                0 => {
                    let i = iban_for("NL", &format!("ABNA{}", r.digits(10)));
                    let d = (i.as_bytes()[3] - b'0' + 1) % 10;
                    format!("{}{}{}", &i[..3], d, &i[4..])
                }
                1 => {
                    let n = r.range(0, 99_999_999);
                    format!("{n:08}{}", DNI_LETTERS[((n + 1) % 23) as usize] as char)
                }
                2 => {
                    let partial = format!(
                        "{:02}{:02}{:02}{}",
                        r.range(30, 99),
                        r.range(1, 12),
                        r.range(1, 28),
                        r.digits(3)
                    );
                    let good = luhn_digit(&partial) as u8 - b'0';
                    format!("{}-{}{}", &partial[..6], &partial[6..], (good + 1) % 10)
                }
                _ => loop {
                    let c = r.digits(9);
                    if !bsn_valid(c.as_bytes()) {
                        break c;
                    }
                },
            };
            let (d, p) = q(r.pick(&["account", "document", "ref", "bsn"]), &v);
            (d, p, None)
        }
        19 => {
            let v = format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                r.next() as u32,
                r.below(65536),
                r.below(4096),
                r.below(4096),
                r.next() & 0xFFFF_FFFF_FFFF
            );
            let (d, p) = q(r.pick(&["id", "event_id", "stream_id"]), &v);
            (d, p, None)
        }
        20 => {
            let v = format!(
                "{} {}",
                r.pick(&["Premium", "Basic", "Blue", "Deluxe", "Family"]),
                r.pick(&["Plan", "Widget", "Bundle", "Edition", "Pack"])
            );
            (
                format!(
                    "{{\"{}\": {{\"name\": \"{v}\"}}}}",
                    r.pick(&["product", "item", "plan"])
                ),
                String::new(),
                None,
            )
        }
        21 => {
            let v = r.pick(&[
                "OrderPlaced",
                "PaymentCaptured",
                "CustomerCreated",
                "ACTIVE",
                "pending",
                "shipped",
                "The quick brown fox",
                "Take 2 pills a day",
                "Page 3 of 10",
                "Room 101",
            ]);
            let (d, p) = q(r.pick(&["type", "status", "note", "comment", "name", "first_name"]), v);
            (d, p, None)
        }
        22 => {
            // 9- and 10-digit numbers: order numbers, tracking numbers, counts
            let v = format!("{}", r.range(100_000_000, 9_999_999_999));
            (
                format!(
                    "{{\"{}\": {v}}}",
                    r.pick(&["order_number", "tracking", "count", "bytes"])
                ),
                String::new(),
                None,
            )
        }
        23 => {
            let v = format!(
                "{}-{}-{:06}",
                r.pick(&["INC", "ORD", "INV"]),
                r.range(2019, 2025),
                r.below(1_000_000)
            );
            let (d, p) = q(r.pick(&["ticket", "reference", "invoice"]), &v);
            (d, p, None)
        }
        24 => {
            let v = format!("{:040x}", r.next() as u128 * r.next() as u128);
            let (d, p) = q(r.pick(&["sha", "hash", "commit", "address"]), &v[..40]);
            (d, p, None)
        }
        _ => {
            let v = format!(
                "{} {}",
                r.pick(&["Kitchen", "Warehouse", "Store", "Office"]),
                r.range(1, 40)
            );
            let (d, p) = q(r.pick(&["location", "site", "warehouse"]), &v);
            (d, p, None)
        }
    };
    let path = if path.is_empty() {
        // the nested name samples
        let d: Vec<&str> = doc.splitn(3, '"').collect();
        format!("{}.name", d[1])
    } else {
        path
    };
    (doc, path, kind)
}

/// Per kind: (true positives, false positives, false negatives).
fn measure(n: usize) -> HashMap<Kind, (u32, u32, u32)> {
    let mut r = Rng(0x5eed_0017);
    let mut m: HashMap<Kind, (u32, u32, u32)> = HashMap::new();
    for i in 0..n {
        let (json, path, label) = sample(&mut r, i);
        let rep = doc(&json);
        let got: Vec<Kind> = rep.findings.iter().filter(|f| f.path == path).map(|f| f.kind).collect();
        assert!(
            rep.findings.iter().all(|f| f.path == path),
            "{json}: {:?}",
            rep.findings
        );
        if let Some(k) = label {
            let e = m.entry(k).or_default();
            if got.contains(&k) {
                e.0 += 1;
            } else {
                e.2 += 1;
                eprintln!("missed {k:?}: {json}");
            }
        }
        for k in got {
            if Some(k) != label {
                m.entry(k).or_default().1 += 1;
                eprintln!("false {k:?}: {json}");
            }
        }
    }
    m
}

/// `cargo test -p event_crypto_core --lib pii::tests::precision_recall -- --nocapture` prints the table in
/// docs/pii.md.
#[test]
fn precision_recall() {
    let m = measure(26 * 400);
    println!("| kind | samples | precision | recall |\n| --- | ---: | ---: | ---: |");
    let (mut tp_all, mut fp_all, mut fn_all) = (0, 0, 0);
    for k in Kind::ALL {
        let (tp, fp, fnn) = m.get(&k).copied().unwrap_or_default();
        let p = f64::from(tp) / f64::from((tp + fp).max(1));
        let rc = f64::from(tp) / f64::from((tp + fnn).max(1));
        println!("| {} | {} | {:.3} | {:.3} |", k.as_str(), tp + fnn, p, rc);
        tp_all += tp;
        fp_all += fp;
        fn_all += fnn;
        // (BSN and personnummer without a telling key, and a date under "date", are missed by design)
        let (pf, rf) = match k {
            Kind::NlBsn | Kind::SePersonnummer | Kind::DateOfBirth => (0.95, 0.7),
            Kind::PersonName | Kind::StreetAddress | Kind::Phone => (0.9, 0.8),
            _ => (0.95, 0.9),
        };
        assert!(p >= pf, "{k:?} precision {p}");
        assert!(rc >= rf, "{k:?} recall {rc}");
    }
    println!(
        "| all | {} | {:.3} | {:.3} |",
        tp_all + fn_all,
        f64::from(tp_all) / f64::from(tp_all + fp_all),
        f64::from(tp_all) / f64::from(tp_all + fn_all)
    );
}
