//! Field encryption over whole documents: every JSON type under both algorithms, paths, idempotence, shredding.

use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::document::{
    check_context, needs_encryption, value_at, Decryptor, Encryptor, KeyLookup, KeySource, OnShredded,
};
use event_crypto_core::envelope::{looks_like_envelope, Envelope};
use event_crypto_core::path::{FieldPath, Location};
use event_crypto_core::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::rc::Rc;

struct Keys {
    cipher: Rc<Cipher>,
    shredded: bool,
}

impl KeySource for Keys {
    fn decryption_key(&mut self, key_id: &str, version: u32) -> Result<KeyLookup> {
        if key_id != "k" || version != 1 {
            return Err(Error::unknown_key(key_id));
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
    let c = Rc::new(Cipher::new(alg, &[3u8; 32]));
    let n = Encryptor::new(&c, "k", 1, ctx)
        .encrypt_fields(doc, &paths(ALL))
        .unwrap();
    (c, n)
}

#[test]
fn every_type_round_trips_under_both_algorithms() {
    for alg in Algorithm::ALL {
        for ctx in [None, Some(&b"stream-1"[..])] {
            let original = sample();
            let mut doc = original.clone();
            let (c, n) = encrypt(alg, &mut doc, ctx);
            assert_eq!(n, 14, "absent paths are skipped");
            assert!(looks_like_envelope(doc["email"].as_str().unwrap()));
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
            d.decrypt_document(&mut doc).unwrap();
            assert_eq!(d.decrypted, 14);
            assert_eq!(doc, original);
            assert_eq!(doc["n"].to_string(), "12.50", "numbers keep their exact text");
        }
    }
}

#[test]
fn same_value_twice_differs_and_no_double_encryption() {
    let mut a = json!({"email": "a@x.io"});
    let mut b = a.clone();
    let (c, _) = encrypt(Algorithm::Aes256Gcm, &mut a, None);
    Encryptor::new(&c, "k", 1, None)
        .encrypt_fields(&mut b, &paths(&["email"]))
        .unwrap();
    assert_ne!(a["email"], b["email"]);
    let before = a.clone();
    let n = Encryptor::new(&c, "k", 1, None)
        .encrypt_fields(&mut a, &paths(&["email", "email"]))
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(a, before, "an envelope is never encrypted again");
}

#[test]
fn encrypting_a_parent_then_child_does_not_double_encrypt() {
    let mut doc = json!({"address": {"street": "x"}});
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    let n = Encryptor::new(&c, "k", 1, None)
        .encrypt_fields(&mut doc, &paths(&["address", "address.street"]))
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
    Decryptor::new(&mut keys, None, OnShredded::Null)
        .decrypt_document(&mut doc)
        .unwrap();
    assert_eq!(doc["email"], Value::Null);
    assert_eq!(doc["items"][0]["card"], Value::Null);
    assert_eq!(doc["address"]["city"], json!("Springfield"), "other fields are intact");

    let mut doc = enc.clone();
    Decryptor::new(&mut keys, None, OnShredded::Keep)
        .decrypt_document(&mut doc)
        .unwrap();
    assert_eq!(doc, enc);

    let mut doc = enc.clone();
    let e = Decryptor::new(&mut keys, None, OnShredded::Error)
        .decrypt_document(&mut doc)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyShredded);
    assert!(OnShredded::parse("drop").is_err());
}

#[test]
fn moving_an_envelope_between_fields_fails() {
    let mut doc = json!({"email": "a@x.io", "phone": "555", "list": ["x", "y"]});
    let c = Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]));
    Encryptor::new(&c, "k", 1, None)
        .encrypt_fields(&mut doc, &paths(&["email", "phone", "list[*]"]))
        .unwrap();
    let mut keys = Keys {
        cipher: c,
        shredded: false,
    };
    let mut swapped = doc.clone();
    swapped["email"] = doc["phone"].clone();
    let e = Decryptor::new(&mut keys, None, OnShredded::Error)
        .decrypt_document(&mut swapped)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    assert!(!e.to_string().contains("555"));
    let mut reordered = doc.clone();
    reordered["list"] = json!([doc["list"][1], doc["list"][0]]);
    let e = Decryptor::new(&mut keys, None, OnShredded::Error)
        .decrypt_document(&mut reordered)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
}

#[test]
fn non_container_payloads_and_contexts() {
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    for v in [json!("a string"), json!(1), json!(null), json!(true)] {
        let mut d = v.clone();
        let e = Encryptor::new(&c, "k", 1, None)
            .encrypt_fields(&mut d, &paths(&["x"]))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
    let mut arr = json!([{"email": "a"}, {"email": "b"}]);
    assert_eq!(
        Encryptor::new(&c, "k", 1, None)
            .encrypt_fields(&mut arr, &paths(&["[*].email"]))
            .unwrap(),
        2
    );
    assert_eq!(check_context(Some("")).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(check_context(None).unwrap(), None);
}

#[test]
fn single_values_are_bound_to_the_root() {
    let c = Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]));
    let text = Encryptor::new(&c, "k", 1, Some(b"ctx"))
        .encrypt_value(&json!({"x": [1, 2]}))
        .unwrap();
    let mut keys = Keys {
        cipher: c.clone(),
        shredded: false,
    };
    let v = Decryptor::new(&mut keys, Some(b"ctx"), OnShredded::Error)
        .decrypt_value(&text)
        .unwrap();
    assert_eq!(v, Some(json!({"x": [1, 2]})));
    // A field envelope is not a single value, and vice versa.
    let mut doc = json!({"email": "a"});
    Encryptor::new(&c, "k", 1, None)
        .encrypt_fields(&mut doc, &paths(&["email"]))
        .unwrap();
    let e = Decryptor::new(&mut keys, None, OnShredded::Error)
        .decrypt_value(doc["email"].as_str().unwrap())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    let mut moved = json!({"email": text});
    let e = Decryptor::new(&mut keys, Some(b"ctx"), OnShredded::Error)
        .decrypt_document(&mut moved)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
}

#[test]
fn strings_claiming_to_be_envelopes_fail_closed() {
    let mut keys = Keys {
        cipher: Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32])),
        shredded: false,
    };
    for fake in ["$ec1$", "$ec1$not-base64!", "$ec9$AAAA", "$ec1$AQAA"] {
        let mut doc = json!({ "x": fake });
        assert!(
            Decryptor::new(&mut keys, None, OnShredded::Null)
                .decrypt_document(&mut doc)
                .is_err(),
            "{fake}"
        );
    }
    let mut doc = json!({"x": "$ec is just text", "y": "$ecx$"});
    let before = doc.clone();
    Decryptor::new(&mut keys, None, OnShredded::Null)
        .decrypt_document(&mut doc)
        .unwrap();
    assert_eq!(doc, before);
    assert!(Envelope::parse("$ec1$", &Location::root()).is_err());
}

#[test]
fn unknown_keys_are_errors() {
    let mut doc = json!({"email": "a"});
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    Encryptor::new(&c, "other", 1, None)
        .encrypt_fields(&mut doc, &paths(&["email"]))
        .unwrap();
    let mut keys = Keys {
        cipher: Rc::new(c),
        shredded: false,
    };
    let e = Decryptor::new(&mut keys, None, OnShredded::Null)
        .decrypt_document(&mut doc)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownKey);
    assert!(e.message().contains("\"other\""));
}

#[test]
fn needs_encryption_sees_only_plaintext_at_selected_paths() {
    let c = Cipher::new(Algorithm::Aes256Gcm, &[1u8; 32]);
    let mut doc = json!({"email": "a", "items": [{"card": "1"}, {"card": "2"}], "other": "x"});
    let p = paths(&["email", "items[*].card", "missing"]);
    assert!(needs_encryption(&doc, &p));
    Encryptor::new(&c, "k", 1, None)
        .encrypt_fields(&mut doc, &paths(&["email", "items[0].card"]))
        .unwrap();
    assert!(needs_encryption(&doc, &p), "items[1].card is still plaintext");
    Encryptor::new(&c, "k", 1, None).encrypt_fields(&mut doc, &p).unwrap();
    assert!(!needs_encryption(&doc, &p));
    assert!(!needs_encryption(&json!({"x": 1}), &p));
    assert!(
        needs_encryption(&json!({"email": null}), &p),
        "JSON null is a value to encrypt"
    );
}

#[test]
fn value_at_follows_a_path() {
    let doc = json!({"a": {"b": [10, {"c": "x"}]}});
    assert_eq!(
        value_at(&doc, &FieldPath::parse("a.b[1].c").unwrap()),
        Some(&json!("x"))
    );
    assert_eq!(value_at(&doc, &FieldPath::parse("a.z").unwrap()), None);
    assert_eq!(value_at(&doc, &FieldPath::parse("a.b[5]").unwrap()), None);
    assert!(FieldPath::parse("a[*]").unwrap().has_wildcard());
}
