//! What a protected table relies on (issue 11): envelopes bound to their row, values of an unexpected shape
//! encrypted whole, bounded field path selections.

use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::document::{
    check_envelopes, may_contain_envelope, needs_encryption, Checked, Decryptor, Encryptor, KeyLookup, KeySource,
    OnInvalid, OnShredded,
};
use event_crypto_core::envelope::{looks_like_envelope, Format, KeyHandle, KeyNames, KeyRef};
use event_crypto_core::jsonb::{from_json_text, to_json_text, Document};
use event_crypto_core::path::{FieldPath, Selector, MAX_SELECTOR_NODES};
use event_crypto_core::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

fn bin(v: &Value) -> Vec<u8> {
    from_json_text(&v.to_string()).unwrap()
}

fn val(datum: &[u8]) -> Value {
    serde_json::from_str(&to_json_text(datum).unwrap()).unwrap()
}

fn paths(p: &[&str]) -> Vec<FieldPath> {
    p.iter().map(|s| FieldPath::parse(s).unwrap()).collect()
}

/// Key ids with their ciphers and handles (key id i has handle 0x1000 + i); the ones in `shredded` are shredded.
/// Envelopes are written in `format`.
struct Keys {
    ciphers: HashMap<String, (KeyHandle, Rc<Cipher>)>,
    shredded: Vec<String>,
    format: Format,
}

impl Keys {
    fn new(ids: &[&str]) -> Keys {
        Keys {
            ciphers: ids
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    (
                        k.to_string(),
                        (
                            KeyHandle::new(0x1000 + i as u64).unwrap(),
                            Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[i as u8 + 1; 32])),
                        ),
                    )
                })
                .collect(),
            shredded: Vec::new(),
            format: Format::V2,
        }
    }
    fn cipher(&self, id: &str) -> Rc<Cipher> {
        self.ciphers[id].1.clone()
    }
    fn names<'a>(&self, id: &'a str) -> KeyNames<'a> {
        KeyNames {
            key_id: id,
            handle: self.ciphers.get(id).map(|(h, _)| *h),
        }
    }
    /// The key id an envelope's key reference names.
    fn resolve(&self, key: KeyRef<'_>) -> Option<String> {
        match key {
            KeyRef::Id(id) => self.ciphers.contains_key(id).then(|| id.to_string()),
            KeyRef::Handle(h) => self.ciphers.iter().find(|(_, (x, _))| *x == h).map(|(k, _)| k.clone()),
        }
    }
}

impl KeySource for Keys {
    fn decryption_key(&mut self, key: KeyRef<'_>, version: u32) -> Result<KeyLookup> {
        let Some(key_id) = self.resolve(key) else {
            return Err(match key {
                KeyRef::Id(id) => Error::unknown_key(id),
                KeyRef::Handle(h) => Error::unknown_key_handle(&h),
            });
        };
        if self.shredded.contains(&key_id) {
            return Ok(KeyLookup::Shredded);
        }
        match self.ciphers.get(&key_id) {
            Some((_, c)) if version == 1 => Ok(KeyLookup::Found(c.clone())),
            _ => Err(Error::unknown_key_version(&key_id, version)),
        }
    }

    fn key_id_of(&mut self, handle: KeyHandle) -> Option<String> {
        self.resolve(KeyRef::Handle(handle))
    }
}

fn encrypt(keys: &Keys, key_id: &str, context: Option<&str>, doc: &Value, p: &[&str]) -> Result<Value> {
    let b = bin(doc);
    let d = Document::from_datum(&b)?;
    let cipher = keys.cipher(key_id);
    let mut out = Vec::new();
    let n = Encryptor::new(
        &cipher,
        keys.names(key_id).key_ref(keys.format)?,
        1,
        context.map(str::as_bytes),
    )
    .encrypt_document(&d, &Selector::new(&paths(p))?, &mut out)?;
    Ok(if n > 0 { val(&out) } else { doc.clone() })
}

fn check(keys: &mut Keys, doc: &Value, allowed: &str, context: Option<&str>) -> Result<Vec<(String, bool)>> {
    let b = bin(doc);
    let d = Document::from_datum(&b)?;
    let mut seen = Vec::new();
    let names = keys.names(allowed);
    check_envelopes(&d, keys, context.map(str::as_bytes), &|k| names.names(k), |loc, c| {
        seen.push((loc.display(), matches!(c, Checked::Opened(_))));
        Ok(())
    })?;
    Ok(seen)
}

#[test]
fn a_value_of_another_shape_is_encrypted_whole() {
    let keys = Keys::new(&["k"]);
    let doc = json!({
        "cards": {"number": "4111 1111 1111 1111"},        // an object where cards[*] expects an array
        "address": "1 Main St",                            // a string where address.street expects an object
        "phones": [{"n": "555"}],                          // an array where phones.n expects an object
        "ok": {"street": "kept"},
        "none": null,                                      // null holds nothing: left as it is
        "n": 7
    });
    let p = [
        "cards[*].number",
        "address.street",
        "phones.n",
        "ok.street",
        "none.x",
        "n.x",
    ];
    assert!(needs_encryption(
        &Document::from_datum(&bin(&doc)).unwrap(),
        &Selector::new(&paths(&p)).unwrap()
    )
    .unwrap());
    let enc = encrypt(&keys, "k", None, &doc, &p).unwrap();
    for f in ["cards", "address", "phones", "n"] {
        assert!(
            looks_like_envelope(enc[f].as_str().unwrap_or("")),
            "{f} is encrypted whole: {enc}"
        );
    }
    assert!(looks_like_envelope(enc["ok"]["street"].as_str().unwrap()));
    assert_eq!(enc["none"], Value::Null);
    // nothing left to do, and it decrypts to the original document
    assert!(!needs_encryption(
        &Document::from_datum(&bin(&enc)).unwrap(),
        &Selector::new(&paths(&p)).unwrap()
    )
    .unwrap());
    let again = encrypt(&keys, "k", None, &enc, &p).unwrap();
    assert_eq!(again, enc, "idempotent");
    let b = bin(&enc);
    let mut out = Vec::new();
    let mut k = Keys::new(&["k"]);
    Decryptor::new(&mut k, None, OnShredded::Null)
        .decrypt_document(&Document::from_datum(&b).unwrap(), &mut out)
        .unwrap();
    assert_eq!(val(&out), doc);
}

#[test]
fn a_root_the_paths_cannot_look_into_is_refused() {
    let keys = Keys::new(&["k"]);
    let e = encrypt(&keys, "k", None, &json!([{"email": "a@x.io"}]), &["email"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("payload is an array"), "{e}");
    let e = encrypt(&keys, "k", None, &json!({"a": 1}), &["[0]"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // paths for both shapes: whichever the root is fits
    encrypt(&keys, "k", None, &json!([{"email": "a@x.io"}]), &["email", "[*].email"]).unwrap();
}

#[test]
fn interleaved_wildcards_are_bounded() {
    // 'a' || repeat('[*]', j) || '[0]' || repeat('[*]', d - j - 1) for j in 0..d doubles the tree at every level
    for d in [18usize, 22, 26, 40] {
        let texts: Vec<String> = (0..d)
            .map(|j| format!("a{}[0]{}", "[*]".repeat(j), "[*]".repeat(d - j - 1)))
            .collect();
        let p: Vec<FieldPath> = texts.iter().map(|t| FieldPath::parse(t).unwrap()).collect();
        let t = Instant::now();
        let r = Selector::new(&p);
        assert!(t.elapsed().as_secs_f64() < 2.0, "d = {d} took {:?}", t.elapsed());
        match r {
            Ok(s) => assert!(s.node_count() <= MAX_SELECTOR_NODES + 1),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::TooLarge);
                assert!(d > 14, "d = {d} is small enough to compile");
            }
        }
    }
    // an ordinary configuration compiles
    let many: Vec<String> = (0..500).map(|i| format!("f{i}.sub[*].x")).collect();
    let p: Vec<FieldPath> = many.iter().map(|t| FieldPath::parse(t).unwrap()).collect();
    assert!(Selector::new(&p).is_ok());
}

#[test]
fn the_checker_accepts_only_envelopes_bound_to_the_row() {
    for format in Format::ALL {
        checker_accepts_only_envelopes_bound_to_the_row(format);
    }
}

fn checker_accepts_only_envelopes_bound_to_the_row(format: Format) {
    let mut keys = Keys::new(&["subject:alice", "subject:mallory"]);
    keys.format = format;
    let alice = encrypt(
        &keys,
        "subject:alice",
        Some("s1"),
        &json!({"email": "a@x.io", "n": 1}),
        &["email"],
    )
    .unwrap();
    // as stored: bound to alice and stream s1
    assert_eq!(
        check(&mut keys, &alice, "subject:alice", Some("s1")).unwrap(),
        vec![("email".to_string(), true)]
    );
    // copied into mallory's row: refused, naming alice's key (a format 2 envelope's handle looked up)
    let e = check(&mut keys, &alice, "subject:mallory", Some("s1")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::EnvelopeNotBound);
    assert_eq!(
        e.detail(),
        Some("The envelope names key \"subject:alice\"; it is under a key this row is not encrypted with.")
    );
    // its key reference forged to mallory's (her id, or her handle): bound by name, but it does not authenticate
    let forged = json!({"email": rekey(alice["email"].as_str().unwrap(), &keys, "subject:mallory"), "n": 1});
    let e = check(&mut keys, &forged, "subject:mallory", Some("s1")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::EnvelopeNotBound);
    assert!(e.detail().unwrap().contains("does not authenticate"), "{e:?}");
    // a handle no key has
    if format == Format::V2 {
        let mut unknown = Keys::new(&["subject:alice", "subject:mallory"]);
        let stray = json!({"email": rekey(alice["email"].as_str().unwrap(), &Keys::new(&["", "", "x"]), "x"), "n": 1});
        let e = check(&mut unknown, &stray, "subject:alice", Some("s1")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::EnvelopeNotBound);
        assert_eq!(
            e.detail(),
            Some("The envelope names key with handle 0000000000001002; it is under a key this row is not encrypted with.")
        );
    }
    // into another stream of alice
    let e = check(&mut keys, &alice, "subject:alice", Some("s2")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::EnvelopeNotBound);
    // into a table without context
    let e = check(&mut keys, &alice, "subject:alice", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::EnvelopeNotBound);
    // moved to another field, or nested under an unconfigured one
    let moved = json!({"phone": alice["email"], "n": 1});
    assert_eq!(
        check(&mut keys, &moved, "subject:alice", Some("s1"))
            .unwrap_err()
            .kind(),
        ErrorKind::EnvelopeNotBound
    );
    let nested = json!({"notes": {"x": alice["email"]}});
    assert_eq!(
        check(&mut keys, &nested, "subject:alice", Some("s1"))
            .unwrap_err()
            .kind(),
        ErrorKind::EnvelopeNotBound
    );
    // a plaintext claiming to be an envelope
    for fake in ["$ec1$ bob-new@x.io (plaintext)", "$ec2$ bob-new@x.io (plaintext)"] {
        let fake = json!({ "email": fake });
        assert_eq!(
            check(&mut keys, &fake, "subject:alice", Some("s1")).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
    }
    // a version that does not exist
    let env = alice["email"].as_str().unwrap().to_string();
    let other_version = reversion(&env, 7);
    assert_eq!(
        check(&mut keys, &json!({"email": other_version}), "subject:alice", Some("s1"))
            .unwrap_err()
            .kind(),
        ErrorKind::EnvelopeNotBound
    );
    // the row's own key shredded: accepted (a restore of a forgotten subject's events), but nothing opened
    keys.shredded.push("subject:alice".into());
    assert_eq!(
        check(&mut keys, &alice, "subject:alice", Some("s1")).unwrap(),
        vec![("email".to_string(), false)]
    );
    // a document without envelopes has nothing to check
    assert!(check(&mut keys, &json!({"a": [1, {"b": "c"}]}), "x", None)
        .unwrap()
        .is_empty());
}

/// An envelope with its header's key version replaced (it then fails authentication, or names a version that
/// does not exist). Format 2: versions below 128 (one LEB128 byte).
fn reversion(env: &str, v: u32) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if let Some(body) = env.strip_prefix("$ec2$") {
        let mut blob = b64.decode(body).unwrap();
        assert!(v < 128 && blob[9] < 128);
        blob[9] = v as u8;
        return format!("$ec2${}", b64.encode(blob));
    }
    let mut blob = b64.decode(env.strip_prefix("$ec1$").unwrap()).unwrap();
    let kid = blob[2] as usize;
    blob[3 + kid..7 + kid].copy_from_slice(&v.to_be_bytes());
    format!("$ec1${}", b64.encode(blob))
}

/// An envelope with its header's key reference replaced by how `keys` names `key_id` (a format 1 envelope's key id,
/// a format 2 envelope's handle).
fn rekey(env: &str, keys: &Keys, key_id: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if let Some(body) = env.strip_prefix("$ec2$") {
        let mut blob = b64.decode(body).unwrap();
        blob[1..9].copy_from_slice(&keys.names(key_id).handle.unwrap().to_be_bytes());
        return format!("$ec2${}", b64.encode(blob));
    }
    let mut blob = b64.decode(env.strip_prefix("$ec1$").unwrap()).unwrap();
    let kid = blob[2] as usize;
    let mut forged = vec![blob[0], blob[1], key_id.len() as u8];
    forged.extend_from_slice(key_id.as_bytes());
    forged.extend_from_slice(&blob[3 + kid..]);
    blob = forged;
    format!("$ec1${}", b64.encode(blob))
}

#[test]
fn bound_decryption_reads_foreign_or_broken_envelopes_as_null_or_keeps_them() {
    for format in Format::ALL {
        bound_decryption(format);
    }
}

fn bound_decryption(format: Format) {
    let mut keys = Keys::new(&["subject:alice", "subject:mallory"]);
    keys.format = format;
    let alice = encrypt(&keys, "subject:alice", None, &json!({"email": "a@x.io"}), &["email"]).unwrap();
    let mallory = encrypt(&keys, "subject:mallory", None, &json!({"email": "m@x.io"}), &["email"]).unwrap();
    let mixed = json!({"email": mallory["email"], "stolen": alice["email"], "fake": "$ec1$!!", "plain": 1});
    let b = bin(&mixed);
    let d = Document::from_datum(&b).unwrap();
    let names = keys.names("subject:mallory");
    let allowed = move |k: KeyRef<'_>| names.names(k);
    for (policy, stolen, fake) in [
        (OnInvalid::Null, Value::Null, Value::Null),
        (OnInvalid::Keep, alice["email"].clone(), json!("$ec1$!!")),
    ] {
        let mut out = Vec::new();
        let mut dec = Decryptor::new(&mut keys, None, OnShredded::Null).bound(&allowed, policy);
        assert!(dec.decrypt_document(&d, &mut out).unwrap());
        assert_eq!((dec.decrypted, dec.invalid), (1, 2));
        let v = val(&out);
        assert_eq!(v["email"], json!("m@x.io"));
        assert_eq!(v["stolen"], stolen);
        assert_eq!(v["fake"], fake);
        assert_eq!(v["plain"], json!(1));
    }
    let mut out = Vec::new();
    let foreign = bin(&json!({"email": mallory["email"], "stolen": alice["email"]}));
    let e = Decryptor::new(&mut keys, None, OnShredded::Null)
        .bound(&allowed, OnInvalid::Error)
        .decrypt_document(&Document::from_datum(&foreign).unwrap(), &mut out)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::EnvelopeNotBound);
    // unbound decryption (decrypt_fields) still opens any key's envelopes
    let only_alice = bin(&alice);
    let mut out = Vec::new();
    Decryptor::new(&mut keys, None, OnShredded::Null)
        .decrypt_document(&Document::from_datum(&only_alice).unwrap(), &mut out)
        .unwrap();
    assert_eq!(val(&out)["email"], json!("a@x.io"));
}

#[test]
fn the_prefilter_finds_every_envelope_wherever_it_is() {
    let keys = Keys::new(&["k"]);
    let inner = encrypt(&keys, "k", None, &json!({"a": "secret"}), &["a"]).unwrap()["a"].clone();
    for doc in [
        json!({"a": inner}),
        json!({"deep": [{"x": [1, {"y": inner}]}]}),
        json!([null, true, 1.5, inner]),
        json!({"k": {"$e$c": [inner]}}),
        inner.clone(),
    ] {
        let b = bin(&doc);
        let d = Document::from_datum(&b).unwrap();
        assert!(may_contain_envelope(&d), "{doc}");
        // found: it authenticates where it was made, and is refused anywhere else (its location is bound)
        let mut keys = Keys::new(&["k"]);
        match check(&mut keys, &doc, "k", None) {
            Ok(seen) => assert_eq!(seen, vec![("a".to_string(), true)], "{doc}"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::EnvelopeNotBound, "{doc}"),
        }
    }
    // no "$ec" anywhere: nothing to walk; "$ec" in a key or a plain string: walked, nothing found
    for (doc, prefiltered) in [
        (json!({"email": "a@x.io", "n": [1, 2, {"z": "$e c"}]}), false),
        (json!({"$ec1$": "key, not value"}), true),
        (json!({"price": "$ec is not an envelope"}), true),
    ] {
        let b = bin(&doc);
        let d = Document::from_datum(&b).unwrap();
        assert_eq!(may_contain_envelope(&d), prefiltered, "{doc}");
        let mut keys = Keys::new(&["k"]);
        assert!(check(&mut keys, &doc, "k", None).unwrap().is_empty(), "{doc}");
    }
}
