//! Decrypting documents held as serde_json values (feature `json`), as a consumer outside PostgreSQL does: the
//! documents are encrypted by the core's jsonb `Encryptor`, turned into JSON text as PostgreSQL prints jsonb, parsed
//! with serde_json and decrypted by `JsonDecryptor`. Every outcome, value or error kind, is compared with what the
//! core's jsonb `Decryptor` (the SQL `decrypt_fields`) gives for the same document.
#![cfg(feature = "json")]

use event_crypto_core::aead::{Algorithm, Cipher, NONCE_LEN};
use event_crypto_core::document::{Decryptor, Encryptor, KeyLookup, KeySource, OnShredded};
use event_crypto_core::envelope::{seal, KeyHandle, KeyRef, Scratch, SealKey};
use event_crypto_core::json::{envelope_keys, JsonDecryptor, OnWithheld, OwnedKeyRef};
use event_crypto_core::jsonb::{from_json_text, to_json_text, Document, MAX_DEPTH};
use event_crypto_core::path::{FieldPath, LocStep, Location, Selector};
use event_crypto_core::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::rc::Rc;

fn bin(v: &Value) -> Vec<u8> {
    from_json_text(&v.to_string()).unwrap()
}

/// A jsonb datum as a consumer receives it: the JSON text PostgreSQL prints, parsed by serde_json (as deep as
/// jsonb nests).
fn val(datum: &[u8]) -> Value {
    let text = to_json_text(datum).unwrap();
    let mut de = serde_json::Deserializer::from_str(&text);
    de.disable_recursion_limit();
    let v = <Value as serde::Deserialize>::deserialize(&mut de).unwrap();
    de.end().unwrap();
    v
}

fn paths(p: &[&str]) -> Vec<FieldPath> {
    p.iter().map(|s| FieldPath::parse(s).unwrap()).collect()
}

/// Encrypts the fields `p` of `doc` with the core's jsonb encryptor; returns the document as a consumer sees it.
fn encrypt(doc: &Value, cipher: &Cipher, key: KeyRef<'_>, version: u32, ctx: Option<&[u8]>, p: &[&str]) -> Value {
    let b = bin(doc);
    let d = Document::from_datum(&b).unwrap();
    let mut out = Vec::new();
    let n = Encryptor::new(cipher, key, version, ctx)
        .encrypt_document(&d, &Selector::new(&paths(p)).unwrap(), &mut out)
        .unwrap();
    assert!(n > 0);
    val(&out)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Found,
    Shredded,
    Disabled,
    Withheld,
}

/// A key source with a few keys, each in a state.
struct Keys {
    entries: Vec<(OwnedKeyRef, u32, Rc<Cipher>, State)>,
}

impl Keys {
    fn new() -> Keys {
        Keys { entries: Vec::new() }
    }
    fn with(mut self, key: KeyRef<'_>, version: u32, cipher: &Rc<Cipher>, state: State) -> Keys {
        self.entries.push((key.into(), version, cipher.clone(), state));
        self
    }
    /// Key "k" by id and by handle, version 1, in `state`.
    fn k(cipher: &Rc<Cipher>, state: State) -> Keys {
        Keys::new()
            .with(KeyRef::Id("k"), 1, cipher, state)
            .with(K, 1, cipher, state)
    }
}

impl KeySource for Keys {
    fn decryption_key(&mut self, key: KeyRef<'_>, version: u32) -> Result<KeyLookup> {
        let Some((_, _, cipher, state)) = self
            .entries
            .iter()
            .find(|(k, v, _, _)| k.as_key_ref() == key && *v == version)
        else {
            return Err(match key {
                KeyRef::Id(id) => Error::unknown_key_version(id, version),
                KeyRef::Handle(h) => Error::unknown_key_handle(&h),
            });
        };
        match state {
            State::Found => Ok(KeyLookup::Found(cipher.clone())),
            State::Shredded => Ok(KeyLookup::Shredded),
            State::Disabled => Ok(KeyLookup::Disabled),
            State::Withheld => Err(Error::new(
                ErrorKind::PermissionDenied,
                "the key is outside this consumer's key pattern",
            )),
        }
    }

    fn key_id_of(&mut self, handle: KeyHandle) -> Option<String> {
        (handle == K_HANDLE).then(|| "k".to_string())
    }
}

const K_HANDLE: KeyHandle = match KeyHandle::new(0x6b6b_6b6b_0000_0001) {
    Some(h) => h,
    None => panic!(),
};
const K: KeyRef<'static> = KeyRef::Handle(K_HANDLE);
const KEY_REFS: [KeyRef<'static>; 2] = [KeyRef::Id("k"), K];

fn cipher(alg: Algorithm) -> Rc<Cipher> {
    Rc::new(Cipher::new(alg, &[3u8; 32]))
}

/// What `JsonDecryptor` gives: the decrypted document and its counters (decrypted, shredded, withheld).
fn json_decrypt(
    keys: &mut Keys,
    doc: &Value,
    ctx: Option<&[u8]>,
    on_shredded: OnShredded,
    on_withheld: OnWithheld,
) -> Result<(Value, [usize; 3])> {
    let mut d = doc.clone();
    let mut dec = JsonDecryptor::new(keys, ctx, on_shredded).on_withheld(on_withheld);
    dec.decrypt(&mut d)?;
    Ok((d, [dec.decrypted, dec.shredded, dec.withheld]))
}

/// What the SQL path (`decrypt_fields`: the jsonb `Decryptor`) gives for the same document.
fn sql_decrypt(keys: &mut Keys, doc: &Value, ctx: Option<&[u8]>, on_shredded: OnShredded) -> Result<Value> {
    let b = bin(doc);
    let parsed = Document::from_datum(&b)?;
    let mut out = Vec::new();
    if Decryptor::new(keys, ctx, on_shredded).decrypt_document(&parsed, &mut out)? {
        Ok(val(&out))
    } else {
        Ok(val(&b))
    }
}

/// Decrypts both ways; asserts they agree (the same value, or errors of the same kind) and returns the outcome.
fn both(keys: &mut Keys, doc: &Value, ctx: Option<&[u8]>, on_shredded: OnShredded) -> Result<(Value, [usize; 3])> {
    let j = json_decrypt(keys, doc, ctx, on_shredded, OnWithheld::Keep);
    let s = sql_decrypt(keys, doc, ctx, on_shredded);
    match (&j, &s) {
        (Ok((a, _)), Ok(b)) => assert_eq!(a, b, "JsonDecryptor and decrypt_fields differ"),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "{a:?} / {b:?}"),
        _ => panic!("JsonDecryptor {j:?}, decrypt_fields {s:?}"),
    }
    j
}

fn sample() -> Value {
    serde_json::from_str(
        r#"{"email": "a@x.io", "n": 12.50, "big": 123456789012345678901234567890.000001, "t": true, "f": false,
            "nul": null, "empty": "", "obj": {"a": [1, {"b": "c"}]}, "arr": [1, "two", null],
            "address": {"street": "1 Main", "city": "Springfield"},
            "items": [{"card": "4111"}, {"card": "5500", "qty": 2}, {"nocard": 1}],
            "a.b": {"c": "dotted"}, "uni": "ünïcødé ✓", "esc": "q\"uo\\te\n\u0001",
            "tiny": -0.000000000000000000000000000001, "neg": -7, "int": 9007199254740993}"#,
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
    "esc",
    "tiny",
    "neg",
    "int",
    "missing",
];

#[test]
fn decrypts_like_decrypt_fields_every_type_algorithm_and_format() {
    for key in KEY_REFS {
        for alg in Algorithm::ALL {
            for ctx in [None, Some(&b"stream-1"[..])] {
                let original = sample();
                let c = cipher(alg);
                let enc = encrypt(&original, &c, key, 1, ctx, ALL);
                assert!(enc["items"][1]["card"]
                    .as_str()
                    .unwrap()
                    .starts_with(key.format().prefix()));
                assert!(!enc.to_string().contains("a@x.io"));
                let mut keys = Keys::k(&c, State::Found);
                let (dec, counts) = both(&mut keys, &enc, ctx, OnShredded::Error).unwrap();
                assert_eq!(dec, original);
                assert_eq!(counts, [18, 0, 0]);
                // numbers keep their exact text
                assert_eq!(dec["n"].to_string(), "12.50");
                assert_eq!(dec["big"].to_string(), "123456789012345678901234567890.000001");
                assert_eq!(dec["tiny"].to_string(), "-0.000000000000000000000000000001");
                assert_eq!(dec["int"].to_string(), "9007199254740993");
                assert_eq!(dec["esc"], json!("q\"uo\\te\n\u{1}"));
            }
        }
    }
}

#[test]
fn nested_paths_and_array_elements() {
    let c = cipher(Algorithm::Aes256Gcm);
    let original = json!({
        "deep": {"a": {"b": {"c": "secret", "d": [1, 2]}}},
        "m": [[1, "x"], [2, "y"], [3]],
        "items": [{"card": "4111", "tags": ["a", {"t": "b"}]}, {"card": {"n": 5500}}],
        "list": ["p", "q", "r"],
        "keep": "plain"
    });
    for key in KEY_REFS {
        let enc = encrypt(
            &original,
            &c,
            key,
            1,
            None,
            &[
                "deep.a.b.c",
                "deep.a.b.d[1]",
                "m[*][1]",
                "items[*].card",
                "items[0].tags[1].t",
                "list[2]",
            ],
        );
        assert!(enc["m"][1][1].as_str().unwrap().starts_with("$ec"));
        assert!(enc["items"][0]["tags"][1]["t"].as_str().unwrap().starts_with("$ec"));
        assert_eq!(enc["list"][0], json!("p"));
        let mut keys = Keys::k(&c, State::Found);
        let (dec, counts) = both(&mut keys, &enc, None, OnShredded::Error).unwrap();
        assert_eq!(dec, original);
        assert_eq!(counts[0], 8);
    }
    // a document whose root is an array
    let original = json!([{"email": "a"}, "second", [{"email": "c"}]]);
    let enc = encrypt(&original, &c, K, 1, None, &["[*].email", "[1]", "[2][0].email"]);
    assert!(enc[1].as_str().unwrap().starts_with("$ec2$"));
    let (dec, counts) = both(&mut Keys::k(&c, State::Found), &enc, None, OnShredded::Error).unwrap();
    assert_eq!(dec, original);
    assert_eq!(counts[0], 3);
}

#[test]
fn context_binding() {
    let c = cipher(Algorithm::ChaCha20Poly1305);
    for key in KEY_REFS {
        let bound = encrypt(&sample(), &c, key, 1, Some(b"stream-1"), &["email", "items[*].card"]);
        let unbound = encrypt(&sample(), &c, key, 1, None, &["email", "items[*].card"]);
        let mut keys = Keys::k(&c, State::Found);
        let (dec, _) = both(&mut keys, &bound, Some(b"stream-1"), OnShredded::Error).unwrap();
        assert_eq!(dec, sample());
        let e = both(&mut keys, &bound, Some(b"stream-2"), OnShredded::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
        let e = both(&mut keys, &bound, None, OnShredded::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ContextMismatch);
        let e = both(&mut keys, &unbound, Some(b"stream-1"), OnShredded::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ContextMismatch);
        // the policies for shredded keys do not cover envelopes bound to another context
        let e = both(&mut keys, &bound, Some(b"stream-2"), OnShredded::Null).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    }
}

#[test]
fn shredded_keys_follow_on_shredded() {
    let c = cipher(Algorithm::Aes256Gcm);
    for key in KEY_REFS {
        let enc = encrypt(&sample(), &c, key, 1, None, ALL);
        let mut keys = Keys::k(&c, State::Shredded);
        let (dec, counts) = both(&mut keys, &enc, None, OnShredded::Null).unwrap();
        assert_eq!(counts, [0, 18, 0]);
        assert_eq!(dec["email"], Value::Null);
        assert_eq!(dec["items"][1]["card"], Value::Null);
        assert_eq!(dec["items"][1]["qty"], json!(2));
        assert_eq!(dec["address"]["city"], json!("Springfield"));
        let (dec, _) = both(&mut keys, &enc, None, OnShredded::Keep).unwrap();
        assert_eq!(dec, enc);
        let e = both(&mut keys, &enc, None, OnShredded::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyShredded);
    }
}

#[test]
fn disabled_versions_read_as_shredded_or_fail() {
    let c = cipher(Algorithm::Aes256Gcm);
    for key in KEY_REFS {
        let enc = encrypt(&sample(), &c, key, 1, None, &["email", "obj"]);
        let mut keys = Keys::k(&c, State::Disabled);
        let (dec, counts) = both(&mut keys, &enc, None, OnShredded::Null).unwrap();
        assert_eq!(counts, [0, 2, 0]);
        assert_eq!((&dec["email"], &dec["obj"]), (&Value::Null, &Value::Null));
        let (dec, _) = both(&mut keys, &enc, None, OnShredded::Keep).unwrap();
        assert_eq!(dec, enc);
        let e = both(&mut keys, &enc, None, OnShredded::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyDisabled);
        assert!(e.message().contains("\"k\""), "{e}");
    }
}

#[test]
fn withheld_keys_follow_on_withheld() {
    let c = cipher(Algorithm::Aes256Gcm);
    let other = cipher(Algorithm::ChaCha20Poly1305);
    let hidden_handle = KeyHandle::new(0x0123_4567_89ab_cdef).unwrap();
    let original = sample();
    for hidden in [KeyRef::Id("hr:salaries"), KeyRef::Handle(hidden_handle)] {
        // "email" and the cards under the consumer's key, "address.street" under a key it may not have
        let enc = encrypt(&original, &c, K, 1, None, &["email", "items[*].card"]);
        let enc = encrypt(&enc, &other, hidden, 2, None, &["address.street"]);
        let mut keys = Keys::k(&c, State::Found).with(hidden, 2, &other, State::Withheld);

        let (dec, counts) = json_decrypt(&mut keys, &enc, None, OnShredded::Error, OnWithheld::Keep).unwrap();
        assert_eq!(counts, [3, 0, 1]);
        assert_eq!(dec["email"], original["email"]);
        assert_eq!(dec["items"], original["items"]);
        assert_eq!(
            dec["address"]["street"], enc["address"]["street"],
            "the envelope is kept"
        );

        let (dec, counts) = json_decrypt(&mut keys, &enc, None, OnShredded::Error, OnWithheld::Null).unwrap();
        assert_eq!(counts, [3, 0, 1]);
        assert_eq!(dec["address"]["street"], Value::Null);
        assert_eq!(dec["email"], original["email"]);

        let e = json_decrypt(&mut keys, &enc, None, OnShredded::Error, OnWithheld::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        // the default is Keep
        let mut d = enc.clone();
        JsonDecryptor::new(&mut keys, None, OnShredded::Error)
            .decrypt(&mut d)
            .unwrap();
        assert_eq!(d["address"]["street"], enc["address"]["street"]);

        // the SQL path, which has no such policy, passes the key source's error on
        let e = sql_decrypt(&mut keys, &enc, None, OnShredded::Null).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }
}

#[test]
fn moved_envelopes_fail_authentication() {
    let c = cipher(Algorithm::Aes256Gcm);
    for key in KEY_REFS {
        let enc = encrypt(
            &json!({"email": "a@x.io", "phone": "555", "list": ["x", "y"], "o": {"email": "b"}}),
            &c,
            key,
            1,
            Some(b"s"),
            &["email", "phone", "list[*]", "o.email"],
        );
        let mut keys = Keys::k(&c, State::Found);
        let mut moved = Vec::new();
        let mut d = enc.clone();
        d["email"] = enc["phone"].clone();
        moved.push(d);
        let mut d = enc.clone();
        d["list"] = json!([enc["list"][1], enc["list"][0]]);
        moved.push(d);
        let mut d = enc.clone();
        d["o"]["email"] = enc["email"].clone();
        moved.push(d);
        let mut d = enc.clone();
        d["renamed"] = enc["email"].clone();
        d.as_object_mut().unwrap().remove("email");
        moved.push(d);
        moved.push(json!({"wrapped": {"email": enc["email"]}}));
        moved.push(json!([enc["email"]]));
        for d in &moved {
            let e = both(&mut keys, d, Some(b"s"), OnShredded::Null).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{d}");
            assert!(!e.to_string().contains("555"));
        }
        // the whole document as one envelope is bound to the root, and a field's envelope is not
        let e = json_decrypt(&mut keys, &enc["email"], Some(b"s"), OnShredded::Null, OnWithheld::Keep).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    }
}

#[test]
fn single_values_are_bound_to_the_root() {
    let c = cipher(Algorithm::ChaCha20Poly1305);
    let value = json!({"x": [1, 2.50, "three"]});
    let b = bin(&value);
    for key in KEY_REFS {
        let text = Encryptor::new(&c, key, 1, Some(b"ctx"))
            .encrypt_value(&Document::from_datum(&b).unwrap().value().unwrap())
            .unwrap();
        let doc = Value::String(text.clone());
        let mut keys = Keys::k(&c, State::Found);
        let (dec, counts) = both(&mut keys, &doc, Some(b"ctx"), OnShredded::Error).unwrap();
        assert_eq!(dec, value);
        assert_eq!(counts[0], 1);
        // moved into a field, it fails
        let e = both(&mut keys, &json!({ "v": text }), Some(b"ctx"), OnShredded::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
        // shredded at the root: null or kept
        let mut keys = Keys::k(&c, State::Shredded);
        assert_eq!(
            both(&mut keys, &doc, Some(b"ctx"), OnShredded::Null).unwrap().0,
            Value::Null
        );
        assert_eq!(both(&mut keys, &doc, Some(b"ctx"), OnShredded::Keep).unwrap().0, doc);
    }
    // scalars that are not envelopes stay as they are
    let mut keys = Keys::new();
    for v in [
        json!("text"),
        json!("$ec is text"),
        json!(1.50),
        json!(null),
        json!(false),
    ] {
        assert_eq!(both(&mut keys, &v, None, OnShredded::Error).unwrap(), (v, [0, 0, 0]));
    }
}

#[test]
fn invalid_envelopes_are_errors() {
    let c = cipher(Algorithm::Aes256Gcm);
    let mut keys = Keys::k(&c, State::Found);
    for (fake, kind) in [
        ("$ec1$", ErrorKind::MalformedEnvelope),
        ("$ec1$not-base64!", ErrorKind::MalformedEnvelope),
        ("$ec9$AAAA", ErrorKind::UnsupportedVersion),
        ("$ec1$AQAA", ErrorKind::MalformedEnvelope),
        ("$ec2$", ErrorKind::MalformedEnvelope),
        ("$ec2$EAAAAAAAAAABAQ", ErrorKind::MalformedEnvelope),
        ("$ec2$ a@x.io (plaintext)", ErrorKind::MalformedEnvelope),
    ] {
        for on_shredded in [OnShredded::Null, OnShredded::Keep, OnShredded::Error] {
            let e = both(&mut keys, &json!({ "a": [{ "x": fake }] }), None, on_shredded).unwrap_err();
            assert_eq!(e.kind(), kind, "{fake}");
        }
    }
    // strings that do not claim to be envelopes are text
    let doc = json!({"x": "$ec is just text", "y": "$ecx$", "z": "ec1$"});
    assert_eq!(both(&mut keys, &doc, None, OnShredded::Error).unwrap().0, doc);
    // unknown keys and versions
    let enc = encrypt(&sample(), &c, KeyRef::Id("k"), 1, None, &["email"]);
    let enc2 = encrypt(&sample(), &c, K, 2, None, &["email"]);
    for (d, mut k) in [
        (&enc, Keys::new()),
        (&enc2, Keys::new()),
        (&enc2, Keys::k(&c, State::Found)),
    ] {
        for on_shredded in [OnShredded::Null, OnShredded::Keep] {
            let e = both(&mut k, d, None, on_shredded).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnknownKey);
        }
    }
    // a damaged ciphertext
    let mut bad = enc.clone();
    let mut t = bad["email"].as_str().unwrap().to_string();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    bad["email"] = json!(t);
    let e = both(&mut keys, &bad, None, OnShredded::Null).unwrap_err();
    assert!(matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed | ErrorKind::MalformedEnvelope
    ));
}

/// Seals `plaintext` (any bytes) at `loc`, as only a holder of the key could: for plaintexts the encryptor never
/// makes.
fn seal_raw(c: &Cipher, loc: &Location, plaintext: &[u8]) -> String {
    let key = SealKey {
        cipher: c,
        key: K,
        version: 1,
    };
    seal(&key, loc, None, plaintext, &[9u8; NONCE_LEN], &mut Scratch::default()).unwrap()
}

#[test]
fn decrypted_values_must_be_json_of_bounded_depth() {
    let c = cipher(Algorithm::Aes256Gcm);
    let mut keys = Keys::k(&c, State::Found);
    let at_a = Location::from_steps(&[LocStep::Key("a")]);
    for bad in [&b"{"[..], b"[1,]", b"", b"1 2", b"\"unterminated", b"\xff", b"nul"] {
        let doc = json!({ "a": seal_raw(&c, &at_a, bad) });
        let e = both(&mut keys, &doc, None, OnShredded::Null).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MalformedEnvelope, "{bad:?}");
        assert_eq!(e.message(), "decrypted value is not JSON");
    }
    // white space around the value is JSON
    let doc = json!({ "a": seal_raw(&c, &at_a, b" [1, {\"b\": 2.0}] \n") });
    assert_eq!(
        both(&mut keys, &doc, None, OnShredded::Null).unwrap().0,
        json!({"a": [1, {"b": 2.0}]})
    );

    // A value at "a" sits at depth 1, so it may nest MAX_DEPTH - 1 levels; one more is too deep, as in jsonb. (Both
    // decryptors and serde_json recurse once per level; an unoptimised build needs less than the 2 MiB of a test
    // thread for 1,000 levels, and this thread leaves a margin.)
    let nested = |n: usize| "[".repeat(n) + "1" + &"]".repeat(n);
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            let c = cipher(Algorithm::Aes256Gcm);
            let mut keys = Keys::k(&c, State::Found);
            let at_a = Location::from_steps(&[LocStep::Key("a")]);
            let ok = json!({ "a": seal_raw(&c, &at_a, nested(MAX_DEPTH - 1).as_bytes()) });
            let (dec, _) = both(&mut keys, &ok, None, OnShredded::Error).unwrap();
            assert_eq!(dec["a"].to_string(), nested(MAX_DEPTH - 1));
            let deep = json!({ "a": seal_raw(&c, &at_a, nested(MAX_DEPTH).as_bytes()) });
            let e = both(&mut keys, &deep, None, OnShredded::Error).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TooLarge);
            // an empty container is one level less deep than one holding a value
            let empty = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
            let doc = json!({ "a": seal_raw(&c, &at_a, empty.as_bytes()) });
            both(&mut keys, &doc, None, OnShredded::Error).unwrap();
            // past the limit by far: refused before parsing
            let far = json!({ "a": seal_raw(&c, &at_a, nested(100_000).as_bytes()) });
            let e = json_decrypt(&mut keys, &far, None, OnShredded::Error, OnWithheld::Keep).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TooLarge);
            // a document deeper than jsonb allows
            let mut doc = json!(1);
            for _ in 0..=MAX_DEPTH + 1 {
                doc = json!([doc]);
            }
            let e = json_decrypt(&mut keys, &doc, None, OnShredded::Error, OnWithheld::Keep).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::TooLarge);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Envelopes frozen in tests/known_answers.rs (data key 0x42 * 32, key id "frozen-key" or handle
/// 5ec2f00d00000007, version 7 or 300), placed where they were sealed: they decrypt from serde_json values too.
#[test]
fn frozen_envelopes_of_both_formats() {
    let c = Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[0x42; 32]));
    let chacha = Rc::new(Cipher::new(Algorithm::ChaCha20Poly1305, &[0x42; 32]));
    let handle = KeyRef::Handle(KeyHandle::new(0x5ec2_f00d_0000_0007).unwrap());
    // the cipher a key source hands out is chosen by key, not by the envelope: one key source per algorithm
    let aes_keys = || {
        Keys::new()
            .with(KeyRef::Id("frozen-key"), 7, &c, State::Found)
            .with(handle, 7, &c, State::Found)
            .with(handle, 300, &c, State::Found)
    };
    let chacha_keys = || {
        Keys::new()
            .with(KeyRef::Id("frozen-key"), 7, &chacha, State::Found)
            .with(handle, 7, &chacha, State::Found)
    };

    let v1 = json!({
        "email": "$ec1$AQAKZnJvemVuLWtleQAAAAcBAQEBAQEBAQEBAQEPyPZ_uj3u7_E_eerlbwW1bzF98bCu3XQ",
        "a.b": "$ec1$AQAKZnJvemVuLWtleQAAAAcGBgYGBgYGBgYGBgbqNiQaKmvhdcFtXw63IpltyhE",
    });
    let v2 = json!({
        "email": "$ec2$EF7C8A0AAAAHBwEBAQEBAQEBAQEBAQ_I9n-6Pe7v2K7cEOtDOebyGcmkjtHUrg",
        "a.b": "$ec2$EF7C8A0AAAAHrAIGBgYGBgYGBgYGBgbqNtRE19i6OhN4FYhUFuUDuC4",
    });
    for doc in [&v1, &v2] {
        let (dec, counts) = both(&mut aes_keys(), doc, None, OnShredded::Error).unwrap();
        assert_eq!(dec, json!({"email": "a@x.io", "a.b": ""}));
        assert_eq!(counts[0], 2);
    }
    let v1 =
        json!({"address": {"street": "$ec1$AQEKZnJvemVuLWtleQAAAAcDAwMDAwMDAwMDAwPzXRJdvWNdmEol11he4Flhs79T_2JLaDU"}});
    let v2 = json!({"address": {"street": "$ec2$EV7C8A0AAAAHBwMDAwMDAwMDAwMDA_NdEl29Y12Yt5VT2jg4wo7W9zrf2KH-RA"}});
    for doc in [&v1, &v2] {
        let (dec, _) = both(&mut aes_keys(), doc, Some(b"stream-7"), OnShredded::Error).unwrap();
        assert_eq!(dec, json!({"address": {"street": "1 Main"}}));
        let e = both(&mut aes_keys(), doc, Some(b"stream-8"), OnShredded::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    }
    let v1 = json!({"items": [{}, {"card": "$ec1$AgEKZnJvemVuLWtleQAAAAcEBAQEBAQEBAQEBAReKuKko7SZ0E0s555_00y9xK_2qTvbIjv_L0C4EtvaR0E0KqxzBywPDj8"}]});
    let v2 = json!({"items": [{}, {"card": "$ec2$IV7C8A0AAAAHBwQEBAQEBAQEBAQEBF4q4qSjtJnQTSznnn_TTL3Er_apO9siO_8v690ce9ydyO_8Aw1g10-gPw"}]});
    for doc in [&v1, &v2] {
        let (dec, _) = both(&mut chacha_keys(), doc, Some(b"stream-7"), OnShredded::Error).unwrap();
        assert_eq!(dec, json!({"items": [{}, {"card": {"n": 4111, "x": [true, null]}}]}));
        // the same envelope one element earlier
        let moved = json!({"items": [{"card": doc["items"][1]["card"]}]});
        let e = both(&mut chacha_keys(), &moved, Some(b"stream-7"), OnShredded::Error).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    }
    // the root vectors: a single value, 12.50 kept exactly
    for text in [
        "$ec1$AQAKZnJvemVuLWtleQAAAAcFBQUFBQUFBQUFBQXs3horrVLVUefrM7XJjR_UEL70UPA",
        "$ec2$EF7C8A0AAAAHBwUFBQUFBQUFBQUFBezeGiut-pndwv92fVy2xd77g_h81g",
    ] {
        let (dec, _) = both(&mut aes_keys(), &json!(text), None, OnShredded::Error).unwrap();
        assert_eq!(dec.to_string(), "12.50");
    }
}

#[test]
fn envelope_keys_are_deduplicated() {
    let c = cipher(Algorithm::Aes256Gcm);
    let h2 = KeyHandle::new(0x0123_4567_89ab_cdef).unwrap();
    let doc = encrypt(
        &sample(),
        &c,
        KeyRef::Id("k"),
        1,
        None,
        &["email", "n", "items[*].card"],
    );
    let doc = encrypt(&doc, &c, K, 1, Some(b"s"), &["address.street", "uni"]);
    let doc = encrypt(&doc, &c, K, 3, None, &["obj.a[1].b", "arr[1]"]);
    let doc = encrypt(&doc, &c, KeyRef::Handle(h2), 1, None, &["\"a.b\".c"]);
    let mut doc = doc;
    doc["malformed"] = json!(["$ec1$AQAA", "$ec9$AAAA", "$ec2$", "plain", 12]);
    doc["root_value"] = json!(Encryptor::new(&c, KeyRef::Id("other"), 9, None)
        .encrypt_value(&Document::from_datum(&bin(&json!([1]))).unwrap().value().unwrap())
        .unwrap());

    let mut out = HashSet::new();
    envelope_keys(&doc, &mut out);
    let expected: HashSet<(OwnedKeyRef, u32)> = [
        (OwnedKeyRef::Id("k".into()), 1),
        (OwnedKeyRef::Handle(K_HANDLE), 1),
        (OwnedKeyRef::Handle(K_HANDLE), 3),
        (OwnedKeyRef::Handle(h2), 1),
        (OwnedKeyRef::Id("other".into()), 9),
    ]
    .into_iter()
    .collect();
    assert_eq!(out, expected);
    // a batch: the set collects over documents
    envelope_keys(&json!({"x": doc["email"], "y": [doc["uni"]]}), &mut out);
    envelope_keys(&json!(doc["root_value"]), &mut out);
    envelope_keys(&json!({"plain": true}), &mut out);
    assert_eq!(out, expected);
    // names
    assert_eq!(OwnedKeyRef::Id("k".into()).to_string(), "\"k\"");
    assert_eq!(
        OwnedKeyRef::Handle(K_HANDLE).to_string(),
        "with handle 6b6b6b6b00000001"
    );
    assert_eq!(OwnedKeyRef::from(K).as_key_ref(), K);
}
