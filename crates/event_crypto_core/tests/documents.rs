//! Field encryption over whole documents: every JSON type under both algorithms and both envelope formats, paths,
//! idempotence, shredding.

use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::document::{
    check_context, needs_encryption, replace_selected, value_at, Decryptor, Encryptor, KeyLookup, KeySource, OnShredded,
};
use event_crypto_core::envelope::{looks_like_envelope, Envelope, Format, KeyHandle, KeyRef};
use event_crypto_core::jsonb::{from_json_text, to_json_text, Document};
use event_crypto_core::path::{FieldPath, Location, Selector};
use event_crypto_core::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::rc::Rc;

// The documents are written as serde_json values for readability and converted to and from binary jsonb (the
// form the core works on) through the core's own JSON text conversion.

fn bin(v: &Value) -> Vec<u8> {
    from_json_text(&v.to_string()).unwrap()
}

fn val(datum: &[u8]) -> Value {
    serde_json::from_str(&to_json_text(datum).unwrap()).unwrap()
}

/// Encrypts the fields of `doc` in place; returns how many were encrypted.
fn encrypt_fields(e: &mut Encryptor<'_>, doc: &mut Value, paths: &[FieldPath]) -> Result<usize> {
    let b = bin(doc);
    let d = Document::from_datum(&b)?;
    let mut out = Vec::new();
    let n = e.encrypt_document(&d, &Selector::new(paths)?, &mut out)?;
    if n > 0 {
        *doc = val(&out);
    }
    Ok(n)
}

/// Decrypts `doc` in place.
fn decrypt_document<K: KeySource>(d: &mut Decryptor<'_, K>, doc: &mut Value) -> Result<()> {
    let b = bin(doc);
    let parsed = Document::from_datum(&b)?;
    let mut out = Vec::new();
    if d.decrypt_document(&parsed, &mut out)? {
        *doc = val(&out);
    }
    Ok(())
}

fn needs(doc: &Value, paths: &[FieldPath]) -> bool {
    let b = bin(doc);
    needs_encryption(&Document::from_datum(&b).unwrap(), &Selector::new(paths).unwrap()).unwrap()
}

struct Keys {
    cipher: Rc<Cipher>,
    shredded: bool,
}

/// Key "k" (the only one `Keys` knows) named by its handle, as envelopes of format 2 (the default) name it.
const K_HANDLE: KeyHandle = match KeyHandle::new(0x6b6b_6b6b_0000_0001) {
    Some(h) => h,
    None => panic!(),
};
const K: KeyRef<'static> = KeyRef::Handle(K_HANDLE);

impl KeySource for Keys {
    fn decryption_key(&mut self, key: KeyRef<'_>, version: u32) -> Result<KeyLookup> {
        match key {
            KeyRef::Id(id) if id != "k" => return Err(Error::unknown_key(id)),
            KeyRef::Handle(h) if h != K_HANDLE => return Err(Error::unknown_key_handle(&h)),
            _ if version != 1 => return Err(Error::unknown_key_version("k", version)),
            _ => {}
        }
        Ok(if self.shredded {
            KeyLookup::Shredded
        } else {
            KeyLookup::Found(self.cipher.clone())
        })
    }
}

fn paths(p: &[&str]) -> Vec<FieldPath> {
    p.iter().map(|s| FieldPath::parse(s).unwrap()).collect()
}

fn sample() -> Value {
    serde_json::from_str(
        r#"{"email": "a@x.io", "n": 12.50, "big": 123456789012345678901234567890.000001, "t": true, "f": false,
            "nul": null, "empty": "", "obj": {"a": [1, {"b": "c"}]}, "arr": [1, "two", null],
            "address": {"street": "1 Main", "city": "Springfield"},
            "items": [{"card": "4111"}, {"card": "5500", "qty": 2}, {"nocard": 1}],
            "a.b": {"c": "dotted"}, "uni": "ünïcødé ✓"}"#,
    )
    .unwrap()
}

const ALL: &[&str] = &[
    "email",
    "n",
    "big",
    "t",
    "f",
    "nul",
    "empty",
    "obj",
    "arr",
    "address.street",
    "items[*].card",
    "\"a.b\".c",
    "uni",
    "missing",
    "address.missing.deeper",
    "items[9].card",
];

fn encrypt(alg: Algorithm, doc: &mut Value, ctx: Option<&[u8]>) -> (Rc<Cipher>, usize) {
    encrypt_as(K, alg, doc, ctx)
}

fn encrypt_as(key: KeyRef<'_>, alg: Algorithm, doc: &mut Value, ctx: Option<&[u8]>) -> (Rc<Cipher>, usize) {
    let c = Rc::new(Cipher::new(alg, &[3u8; 32]));
    let n = encrypt_fields(&mut Encryptor::new(&c, key, 1, ctx), doc, &paths(ALL)).unwrap();
    (c, n)
}

#[test]
fn every_type_round_trips_under_both_algorithms() {
    for (key, format) in [(KeyRef::Id("k"), Format::V1), (K, Format::V2)] {
        for alg in Algorithm::ALL {
            for ctx in [None, Some(&b"stream-1"[..])] {
                let original = sample();
                let mut doc = original.clone();
                let (c, n) = encrypt_as(key, alg, &mut doc, ctx);
                assert_eq!(n, 14, "absent paths are skipped");
                assert!(looks_like_envelope(doc["email"].as_str().unwrap()));
                assert!(doc["email"].as_str().unwrap().starts_with(format.prefix()));
                assert!(
                    looks_like_envelope(doc["nul"].as_str().unwrap()),
                    "JSON null is encrypted too"
                );
                assert!(looks_like_envelope(doc["items"][1]["card"].as_str().unwrap()));
                assert_eq!(doc["items"][1]["qty"], json!(2));
                assert_eq!(doc["address"]["city"], json!("Springfield"));
                let text = doc.to_string();
                // Sentinels contain characters outside the base64url alphabet, so ciphertext cannot match by chance.
                for secret in [
                    "a@x.io",
                    "1 Main",
                    "\"4111\"",
                    "\"5500\"",
                    "\"dotted\"",
                    "ünïcødé",
                    "12.50",
                    "\"two\"",
                ] {
                    assert!(
                        !text.contains(secret),
                        "{secret} must not appear in the encrypted document"
                    );
                }
                let mut keys = Keys {
                    cipher: c,
                    shredded: false,
                };
                let mut d = Decryptor::new(&mut keys, ctx, OnShredded::Error);
                decrypt_document(&mut d, &mut doc).unwrap();
                assert_eq!(d.decrypted, 14);
                assert_eq!(doc, original);
                assert_eq!(doc["n"].to_string(), "12.50", "numbers keep their exact text");
            }
        }
    }
}

#[test]
fn same_value_twice_differs_and_no_double_encryption() {
    let mut a = json!({"email": "a@x.io"});
    let mut b = a.clone();
    let (c, _) = encrypt(Algorithm::Aes256Gcm, &mut a, None);
    encrypt_fields(&mut Encryptor::new(&c, K, 1, None), &mut b, &paths(&["email"])).unwrap();
    assert_ne!(a["email"], b["email"]);
    let before = a.clone();
    let n = encrypt_fields(&mut Encryptor::new(&c, K, 1, None), &mut a, &paths(&["email", "email"])).unwrap();
    assert_eq!(n, 0);
    assert_eq!(a, before, "an envelope is never encrypted again");
}

#[test]
fn encrypting_a_parent_then_child_does_not_double_encrypt() {
    let mut doc = json!({"address": {"street": "x"}});
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    let n = encrypt_fields(
        &mut Encryptor::new(&c, K, 1, None),
        &mut doc,
        &paths(&["address", "address.street"]),
    )
    .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn shredded_policies() {
    let original = sample();
    let mut enc = original.clone();
    let (c, _) = encrypt(Algorithm::ChaCha20Poly1305, &mut enc, None);
    let mut keys = Keys {
        cipher: c,
        shredded: true,
    };

    let mut doc = enc.clone();
    decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Null), &mut doc).unwrap();
    assert_eq!(doc["email"], Value::Null);
    assert_eq!(doc["items"][0]["card"], Value::Null);
    assert_eq!(doc["address"]["city"], json!("Springfield"), "other fields are intact");

    let mut doc = enc.clone();
    decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Keep), &mut doc).unwrap();
    assert_eq!(doc, enc);

    let mut doc = enc.clone();
    let e = decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Error), &mut doc).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyShredded);
    assert!(OnShredded::parse("drop").is_err());
}

#[test]
fn moving_an_envelope_between_fields_fails() {
    let mut doc = json!({"email": "a@x.io", "phone": "555", "list": ["x", "y"]});
    let c = Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]));
    encrypt_fields(
        &mut Encryptor::new(&c, K, 1, None),
        &mut doc,
        &paths(&["email", "phone", "list[*]"]),
    )
    .unwrap();
    let mut keys = Keys {
        cipher: c,
        shredded: false,
    };
    let mut swapped = doc.clone();
    swapped["email"] = doc["phone"].clone();
    let e = decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Error), &mut swapped).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    assert!(!e.to_string().contains("555"));
    let mut reordered = doc.clone();
    reordered["list"] = json!([doc["list"][1], doc["list"][0]]);
    let e = decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Error), &mut reordered).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
}

#[test]
fn non_container_payloads_and_contexts() {
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    for v in [json!("a string"), json!(1), json!(null), json!(true)] {
        let mut d = v.clone();
        let e = encrypt_fields(&mut Encryptor::new(&c, K, 1, None), &mut d, &paths(&["x"])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
    let mut arr = json!([{"email": "a"}, {"email": "b"}]);
    assert_eq!(
        encrypt_fields(&mut Encryptor::new(&c, K, 1, None), &mut arr, &paths(&["[*].email"])).unwrap(),
        2
    );
    assert_eq!(check_context(Some("")).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(check_context(None).unwrap(), None);
}

#[test]
fn single_values_are_bound_to_the_root() {
    let c = Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]));
    let x = bin(&json!({"x": [1, 2]}));
    let text = Encryptor::new(&c, K, 1, Some(b"ctx"))
        .encrypt_value(&Document::from_datum(&x).unwrap().value().unwrap())
        .unwrap();
    let mut keys = Keys {
        cipher: c.clone(),
        shredded: false,
    };
    let v = Decryptor::new(&mut keys, Some(b"ctx"), OnShredded::Error)
        .decrypt_value(&text)
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    v.write_document(&mut out).unwrap();
    assert_eq!(val(&out), json!({"x": [1, 2]}));
    // A field envelope is not a single value, and vice versa.
    let mut doc = json!({"email": "a"});
    encrypt_fields(&mut Encryptor::new(&c, K, 1, None), &mut doc, &paths(&["email"])).unwrap();
    let e = Decryptor::new(&mut keys, None, OnShredded::Error)
        .decrypt_value(doc["email"].as_str().unwrap())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    let mut moved = json!({"email": text});
    let e = decrypt_document(
        &mut Decryptor::new(&mut keys, Some(b"ctx"), OnShredded::Error),
        &mut moved,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
}

#[test]
fn strings_claiming_to_be_envelopes_fail_closed() {
    let mut keys = Keys {
        cipher: Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32])),
        shredded: false,
    };
    for fake in [
        "$ec1$",
        "$ec1$not-base64!",
        "$ec9$AAAA",
        "$ec1$AQAA",
        "$ec2$",
        "$ec2$not-base64!",
        "$ec2$EAAAAAAAAAABAQ",
        "$ec2$ a@x.io (plaintext)",
    ] {
        let mut doc = json!({ "x": fake });
        assert!(
            decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Null), &mut doc).is_err(),
            "{fake}"
        );
    }
    let mut doc = json!({"x": "$ec is just text", "y": "$ecx$"});
    let before = doc.clone();
    decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Null), &mut doc).unwrap();
    assert_eq!(doc, before);
    assert!(Envelope::parse("$ec1$", &Location::root()).is_err());
    assert!(Envelope::parse("$ec2$", &Location::root()).is_err());
}

#[test]
fn unknown_keys_are_errors() {
    let mut doc = json!({"email": "a"});
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    let mut other = doc.clone();
    encrypt_fields(
        &mut Encryptor::new(&c, KeyRef::Id("other"), 1, None),
        &mut doc,
        &paths(&["email"]),
    )
    .unwrap();
    let handle = KeyHandle::new(0x0000_0000_0000_00ff).unwrap();
    encrypt_fields(
        &mut Encryptor::new(&c, KeyRef::Handle(handle), 1, None),
        &mut other,
        &paths(&["email"]),
    )
    .unwrap();
    let mut keys = Keys {
        cipher: Rc::new(c),
        shredded: false,
    };
    let e = decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Null), &mut doc).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownKey);
    assert!(e.message().contains("\"other\""));
    let e = decrypt_document(&mut Decryptor::new(&mut keys, None, OnShredded::Null), &mut other).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownKey);
    assert!(e.message().contains("00000000000000ff"), "{e}");
}

#[test]
fn needs_encryption_sees_only_plaintext_at_selected_paths() {
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    let mut doc = json!({"email": "a", "items": [{"card": "1"}, {"card": "2"}], "other": "x"});
    let p = paths(&["email", "items[*].card", "missing"]);
    assert!(needs(&doc, &p));
    encrypt_fields(
        &mut Encryptor::new(&c, K, 1, None),
        &mut doc,
        &paths(&["email", "items[0].card"]),
    )
    .unwrap();
    assert!(needs(&doc, &p), "items[1].card is still plaintext");
    encrypt_fields(&mut Encryptor::new(&c, K, 1, None), &mut doc, &p).unwrap();
    assert!(!needs(&doc, &p));
    assert!(!needs(&json!({"x": 1}), &p));
    assert!(needs(&json!({"email": null}), &p), "JSON null is a value to encrypt");
}

#[test]
fn value_at_follows_a_path() {
    let b = bin(&json!({"a": {"b": [10, {"c": "x"}]}}));
    let doc = Document::from_datum(&b).unwrap();
    let at = |p: &str| value_at(&doc, &FieldPath::parse(p).unwrap()).unwrap();
    assert!(matches!(
        at("a.b[1].c"),
        Some(event_crypto_core::jsonb::Value::String(b"x"))
    ));
    assert!(at("a.z").is_none());
    assert!(at("a.b[5]").is_none());
    assert!(at("a.b[1].c.d").is_none());
    assert!(FieldPath::parse("a[*]").unwrap().has_wildcard());
}

#[test]
fn overlapping_patterns_encrypt_each_value_once() {
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    let mut doc = json!({"items": [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}], "address": {"street": "s"}});
    let n = encrypt_fields(
        &mut Encryptor::new(&c, K, 1, None),
        &mut doc,
        &paths(&["items[*].a", "items[0].b", "items[0].a", "address.street", "address"]),
    )
    .unwrap();
    assert_eq!(n, 4, "items[0].a, items[0].b, items[1].a and the whole address");
    assert!(looks_like_envelope(doc["address"].as_str().unwrap()));
    assert_eq!(doc["items"][1]["b"], json!("4"));
}

#[test]
fn encrypted_documents_are_laid_out_as_jsonb_lays_them_out() {
    // Members replaced by envelopes of every length modulo 4, among numbers and containers (which are aligned) and
    // in objects of more than 32 members (offsets instead of lengths): the document written must be exactly the
    // binary form of its own JSON text (what PostgreSQL's jsonb_in makes of it; the core's conversion is checked
    // against PostgreSQL byte for byte by the extension's tests), the members not selected unchanged, and
    // decryption must give back the original bytes.
    let c = Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[3u8; 32]));
    for width in [1usize, 3, 9, 31, 32, 33, 40, 70] {
        for shift in 0..4usize {
            let wide: serde_json::Map<String, Value> = (0..width)
                .map(|i| {
                    let v = match i % 5 {
                        0 => json!("s".repeat(i + shift)),
                        1 => json!(i as f64 + 0.5),
                        2 => json!({"n": i, "a": [1, "x".repeat(shift)]}),
                        3 => json!([i, null, true]),
                        _ => json!(null),
                    };
                    (format!("k{i}"), v)
                })
                .collect();
            let doc = Value::Object(wide);
            let b = bin(&doc);
            let d = Document::from_datum(&b).unwrap();
            // every third member, and one that is absent
            let mut names: Vec<String> = (0..width).step_by(3).map(|i| format!("k{i}")).collect();
            names.push("absent".into());
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let sel = Selector::new(&paths(&names)).unwrap();
            let mut out = Vec::new();
            let n = Encryptor::new(&c, K, 1, Some(b"ctx"))
                .encrypt_document(&d, &sel, &mut out)
                .unwrap();
            // (a selected null is encrypted too)
            assert_eq!(n, width.div_ceil(3), "width {width}, shift {shift}");
            assert_eq!(
                out,
                from_json_text(&to_json_text(&out).unwrap()).unwrap(),
                "width {width}, shift {shift}"
            );
            let enc = val(&out);
            for i in 0..width {
                let k = format!("k{i}");
                let encrypted = enc[&k].as_str().is_some_and(looks_like_envelope);
                assert_eq!(encrypted, i % 3 == 0, "{k}");
                if !encrypted {
                    assert_eq!(enc[&k], doc[&k], "{k}");
                }
            }
            let mut keys = Keys {
                cipher: c.clone(),
                shredded: false,
            };
            let mut back = Vec::new();
            let e = Document::from_datum(&out).unwrap();
            assert!(Decryptor::new(&mut keys, Some(b"ctx"), OnShredded::Error)
                .decrypt_document(&e, &mut back)
                .unwrap());
            assert_eq!(back, b, "width {width}, shift {shift}");
        }
    }
}

#[test]
fn rewriting_without_changes_reproduces_the_input_byte_for_byte() {
    // Objects with more than 32 keys (offsets instead of lengths), numbers and nested containers that need
    // alignment: a walk that selects nothing present must write exactly the bytes it read. (The paths fit the
    // shapes they meet: a path through a value of another shape encrypts that value whole, see below.)
    let wide: serde_json::Map<String, Value> = (0..70)
        .map(|i| (format!("k{i}"), json!([i, {"n": 1.5, "s": "x".repeat(i)}])))
        .collect();
    for doc in [sample(), Value::Object(wide), json!([1, "a", [2.25, {"b": null}]])] {
        let b = bin(&doc);
        let d = Document::from_datum(&b).unwrap();
        let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
        let mut out = Vec::new();
        let sel = Selector::new(&paths(&["k5[9].missing", "address.nothing", "[9].x", "[2][9]"])).unwrap();
        let n = Encryptor::new(&c, K, 1, None)
            .encrypt_document(&d, &sel, &mut out)
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(out, b);
    }
}

#[test]
fn bad_option_values_are_not_echoed_in_messages() {
    // A value passed in the wrong argument position (an e-mail address as the algorithm, the normalisation or the
    // shredded policy) must not end up in an error message, and so in a server log.
    let secret = "alice.secret@example.com";
    let errors = [
        Algorithm::from_name(secret).unwrap_err(),
        event_crypto_core::blind::Normalize::parse(Some(secret)).unwrap_err(),
        OnShredded::parse(secret).unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let all = format!("{e} {:?} {:?}", e.detail(), e.hint());
        assert!(!all.contains("alice"), "{all}");
    }
}

#[test]
fn a_damaged_datum_is_never_sealed_into_an_envelope_that_cannot_open() {
    // Found by the jsonb_document fuzz target: an array whose first element is an object with a NUL inside a key
    // (jsonb never stores one). Encrypting `[0]` used to seal `{"emc\u0000l": ...}`, which no decryption can turn
    // back into jsonb. It is refused instead.
    let datum = include_bytes!("../fuzz/corpus/jsonb_document/regress-482d56f729b3");
    let doc = Document::from_datum(datum).unwrap();
    let c = Cipher::new(Algorithm::Aes256Gcm, &[9u8; 32]);
    let mut out = Vec::new();
    let e = Encryptor::new(&c, K, 1, None)
        .encrypt_document(
            &doc,
            &Selector::new(&[FieldPath::parse("[0]").unwrap()]).unwrap(),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("not one jsonb can hold"), "{e}");
}

/// Issue 15's budget: the envelope of a 20-character e-mail address under a key per subject whose id is
/// `subject:` + a UUID adds at most 72 bytes to the document's JSON text in format 2 (120 in format 1, a third of
/// which was the key id), whatever the key version.
#[test]
fn envelope_overhead_of_an_email_under_a_subject_key() {
    let email = "alice.smith@mail.com";
    let key_id = "subject:4d1b1f5e-3c4a-4a7e-8f0b-6f1d2c3b4a59";
    assert_eq!((email.chars().count(), key_id.len()), (20, 44));
    let plain = json!({ "email": email, "amount": 12 });
    let c = Cipher::new(Algorithm::Aes256Gcm, &[5u8; 32]);
    let overhead = |key: KeyRef<'_>, version: u32| {
        let mut doc = plain.clone();
        encrypt_fields(
            &mut Encryptor::new(&c, key, version, Some(b"stream-1")),
            &mut doc,
            &paths(&["email"]),
        )
        .unwrap();
        doc.to_string().len() - plain.to_string().len()
    };
    let v1 = overhead(KeyRef::Id(key_id), 1);
    let v2 = overhead(K, 1);
    println!("envelope overhead of a 20-character e-mail, key id {key_id}: format 1 {v1} bytes, format 2 {v2} bytes");
    assert_eq!(v1, 120);
    assert_eq!(v2, 65);
    for version in [1, 127, 128, 16_383, 16_384, i32::MAX as u32] {
        let n = overhead(K, version);
        assert!(n <= 72, "version {version}: {n} bytes");
    }
    assert_eq!(overhead(K, i32::MAX as u32), 71);
}

/// replace_selected (the protect trigger's tokenize_fields): selected values are handed over with their location,
/// nulls and absent paths are skipped, what the callback keeps stays, everything else is copied.
#[test]
fn replace_selected_hands_over_selected_values() {
    let doc = json!({"email": "a@x.io", "n": 1, "tags": ["t1", null, 3], "keep": "k", "nil": null,
                     "obj": {"id": "i"}, "other": {"deep": "d"}});
    let b = bin(&doc);
    let d = Document::from_datum(&b).unwrap();
    let paths: Vec<FieldPath> = ["email", "tags[*]", "keep", "nil", "missing", "obj.id"]
        .iter()
        .map(|p| FieldPath::parse(p).unwrap())
        .collect();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let n = replace_selected(
        &d,
        &Selector::new(&paths).unwrap(),
        &mut |loc, v| {
            seen.push(loc.display());
            Ok(match v {
                event_crypto_core::jsonb::Value::String(s) if *s != b"k" => {
                    Some(format!("T({})", String::from_utf8_lossy(s)))
                }
                _ => None,
            })
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 3);
    seen.sort(); // (jsonb orders keys by length first)
    assert_eq!(seen, ["email", "keep", "obj.id", "tags[0]", "tags[2]"]);
    assert_eq!(
        val(&out),
        json!({"email": "T(a@x.io)", "n": 1, "tags": ["T(t1)", null, 3], "keep": "k", "nil": null,
               "obj": {"id": "T(i)"}, "other": {"deep": "d"}})
    );
    // an error from the callback stops the walk
    let e = replace_selected(
        &d,
        &Selector::new(&paths).unwrap(),
        &mut |_, _| Err(Error::invalid_argument("no")),
        &mut out,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // a root the paths cannot look into: nothing selected
    let arr = bin(&json!(["a"]));
    let n = replace_selected(
        &Document::from_datum(&arr).unwrap(),
        &Selector::new(&paths).unwrap(),
        &mut |_, _| Ok(Some("x".into())),
        &mut out,
    )
    .unwrap();
    assert_eq!(n, 0);
}
