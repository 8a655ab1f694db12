//! Re-encryption: envelopes move to the newest key version (and to the format new envelopes are written in) with
//! the same plaintext, location and context; current, shredded and foreign envelopes stay byte for byte; anything
//! that does not authenticate fails.

use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::document::{Decryptor, Encryptor, KeyLookup, KeySource, OnShredded};
use event_crypto_core::envelope::{Envelope, Format, KeyHandle, KeyNames, KeyRef};
use event_crypto_core::jsonb::{from_json_text, to_json_text, Document};
use event_crypto_core::path::{FieldPath, Location, Selector};
use event_crypto_core::reencrypt::{
    has_stale_envelopes, text_uses_key_version, uses_key_version, Newest, NewestKey, Reencryptor,
};
use event_crypto_core::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::rc::Rc;

/// Key ids with versions 1..=n and a handle each; `newest` per key id; shredded key ids and destroyed versions;
/// values sealed; the format `encrypt` writes (format 2 unless set).
#[derive(Default)]
struct Ring {
    handles: HashMap<String, KeyHandle>,
    v1: bool,
    sealed: HashMap<(String, u32), usize>,
    versions: HashMap<(String, u32), Rc<Cipher>>,
    newest: HashMap<String, u32>,
    shredded: Vec<String>,
    destroyed: Vec<(String, u32)>,
    disabled: Vec<(String, u32)>,
}

impl Ring {
    fn add(&mut self, key_id: &str, version: u32, alg: Algorithm) -> Rc<Cipher> {
        let next = 0x2000 + self.handles.len() as u64;
        self.handles
            .entry(key_id.into())
            .or_insert_with(|| KeyHandle::new(next).unwrap());
        let c = Rc::new(Cipher::new(alg, &[version as u8 + key_id.len() as u8; 32]));
        self.versions.insert((key_id.into(), version), c.clone());
        self.newest.insert(key_id.into(), version);
        c
    }
}

impl Ring {
    fn names<'a>(&self, key_id: &'a str) -> KeyNames<'a> {
        KeyNames {
            key_id,
            handle: self.handles.get(key_id).copied(),
        }
    }

    fn format(&self) -> Format {
        if self.v1 {
            Format::V1
        } else {
            Format::V2
        }
    }

    fn resolve(&self, key: KeyRef<'_>) -> Result<String> {
        match key {
            KeyRef::Id(id) => Ok(id.to_string()),
            KeyRef::Handle(h) => self
                .handles
                .iter()
                .find(|(_, x)| **x == h)
                .map(|(k, _)| k.clone())
                .ok_or_else(|| Error::unknown_key_handle(&h)),
        }
    }
}

impl KeySource for Ring {
    fn decryption_key(&mut self, key: KeyRef<'_>, version: u32) -> Result<KeyLookup> {
        let key_id = &self.resolve(key)?;
        if self.shredded.iter().any(|k| k == key_id) || self.destroyed.contains(&(key_id.to_string(), version)) {
            return Ok(KeyLookup::Shredded);
        }
        if self.disabled.contains(&(key_id.to_string(), version)) {
            return Ok(KeyLookup::Disabled);
        }
        self.versions
            .get(&(key_id.to_string(), version))
            .map(|c| KeyLookup::Found(c.clone()))
            .ok_or_else(|| Error::unknown_key_version(key_id, version))
    }
}

impl NewestKey for Ring {
    fn newest_key(&mut self, key: KeyRef<'_>) -> Result<Option<Newest>> {
        let key_id = &self.resolve(key)?;
        if self.shredded.iter().any(|k| k == key_id) {
            return Ok(None);
        }
        Ok(self.newest.get(key_id).map(|v| Newest {
            version: *v,
            cipher: self.versions[&(key_id.to_string(), *v)].clone(),
            key_id: key_id.clone(),
            handle: self.handles.get(key_id).copied(),
        }))
    }

    fn sealed(&mut self, key_id: &str, version: u32) {
        *self.sealed.entry((key_id.to_string(), version)).or_default() += 1;
    }
}

fn bin(v: &Value) -> Vec<u8> {
    from_json_text(&v.to_string()).unwrap()
}

fn val(datum: &[u8]) -> Value {
    serde_json::from_str(&to_json_text(datum).unwrap()).unwrap()
}

fn encrypt(ring: &Ring, key_id: &str, version: u32, doc: &Value, fields: &[&str], ctx: Option<&[u8]>) -> Value {
    let c = ring.versions[&(key_id.to_string(), version)].clone();
    let paths: Vec<FieldPath> = fields.iter().map(|f| FieldPath::parse(f).unwrap()).collect();
    let b = bin(doc);
    let mut out = Vec::new();
    let n = Encryptor::new(&c, ring.names(key_id).key_ref(ring.format()).unwrap(), version, ctx)
        .encrypt_document(
            &Document::from_datum(&b).unwrap(),
            &Selector::new(&paths).unwrap(),
            &mut out,
        )
        .unwrap();
    assert!(n > 0);
    val(&out)
}

fn reencrypt(ring: &mut Ring, doc: &Value, ctx: Option<&[u8]>) -> Result<(Option<Value>, usize, usize, usize)> {
    let b = bin(doc);
    let d = Document::from_datum(&b)?;
    let mut out = Vec::new();
    let mut r = Reencryptor::new(ring, ctx);
    let changed = r.reencrypt_document(&d, &mut out)?;
    let counts = (r.reencrypted, r.current, r.shredded);
    Ok((changed.then(|| val(&out)), counts.0, counts.1, counts.2))
}

fn decrypt(ring: &mut Ring, doc: &Value, ctx: Option<&[u8]>) -> Value {
    let b = bin(doc);
    let mut out = Vec::new();
    let mut d = Decryptor::new(ring, ctx, OnShredded::Null);
    if d.decrypt_document(&Document::from_datum(&b).unwrap(), &mut out)
        .unwrap()
    {
        val(&out)
    } else {
        doc.clone()
    }
}

fn version_of(v: &Value) -> u32 {
    Envelope::parse(v.as_str().unwrap(), &Location::root())
        .unwrap()
        .key_version
}

fn sample() -> Value {
    json!({"email": "a@x.io", "n": 12.50, "deep": {"list": [{"ssn": "123"}, {"ssn": "456"}], "keep": "plain"},
           "other": "x", "amount": 3})
}

#[test]
fn stale_envelopes_move_to_the_newest_version_with_the_same_plaintext() {
    for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
        let mut ring = Ring::default();
        ring.add("k", 1, alg);
        ring.add("other", 1, alg);
        let plain = sample();
        let mut enc = encrypt(
            &ring,
            "k",
            1,
            &plain,
            &["email", "n", "deep.list[*].ssn"],
            Some(b"stream-1"),
        );
        // one field under another key id, already at its newest version
        enc = encrypt(&ring, "other", 1, &enc, &["other"], Some(b"stream-1"));
        // nothing to do while version 1 is the newest
        let (same, n, current, _) = reencrypt(&mut ring, &enc, Some(b"stream-1")).unwrap();
        assert!(same.is_none());
        assert_eq!((n, current), (0, 5));
        ring.add("k", 2, Algorithm::Aes256Gcm);
        ring.add("k", 3, Algorithm::ChaCha20Poly1305);
        let b = bin(&enc);
        assert!(has_stale_envelopes(&Document::from_datum(&b).unwrap(), &mut ring, Format::V2).unwrap());
        assert!(uses_key_version(&Document::from_datum(&b).unwrap(), ring.names("k"), 1).unwrap());
        let (moved, n, current, shredded) = reencrypt(&mut ring, &enc, Some(b"stream-1")).unwrap();
        let moved = moved.expect("changed");
        assert_eq!((n, current, shredded), (4, 1, 0));
        assert_eq!(
            ring.sealed.get(&("k".to_string(), 3)),
            Some(&4),
            "every new envelope is counted"
        );
        for f in [
            &moved["email"],
            &moved["n"],
            &moved["deep"]["list"][0]["ssn"],
            &moved["deep"]["list"][1]["ssn"],
        ] {
            assert_eq!(version_of(f), 3);
        }
        assert_eq!(
            moved["other"], enc["other"],
            "an envelope already current stays byte for byte"
        );
        assert_eq!(moved["deep"]["keep"], json!("plain"));
        assert_eq!(moved["amount"], json!(3));
        assert_ne!(moved["email"], enc["email"], "a fresh nonce and version");
        assert_eq!(
            decrypt(&mut ring, &moved, Some(b"stream-1")),
            plain,
            "same plaintext, location and context"
        );
        let b = bin(&moved);
        let d = Document::from_datum(&b).unwrap();
        assert!(!has_stale_envelopes(&d, &mut ring, Format::V2).unwrap());
        assert!(
            !uses_key_version(&d, ring.names("k"), 1).unwrap() && uses_key_version(&d, ring.names("k"), 3).unwrap()
        );
        // still bound to its location and context
        let mut swapped = moved.clone();
        swapped["email"] = moved["deep"]["list"][0]["ssn"].clone();
        let b = bin(&swapped);
        let mut out = Vec::new();
        let e = Decryptor::new(&mut ring, Some(b"stream-1"), OnShredded::Null)
            .decrypt_document(&Document::from_datum(&b).unwrap(), &mut out)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    }
}

#[test]
fn shredded_keys_and_destroyed_versions_are_left_alone() {
    let mut ring = Ring::default();
    ring.add("k", 1, Algorithm::Aes256Gcm);
    ring.add("gone", 1, Algorithm::Aes256Gcm);
    let enc = encrypt(&ring, "k", 1, &sample(), &["email"], None);
    let enc = encrypt(&ring, "gone", 1, &enc, &["n"], None);
    ring.add("k", 2, Algorithm::Aes256Gcm);
    ring.add("gone", 2, Algorithm::Aes256Gcm);
    ring.shredded.push("gone".into());
    ring.destroyed.push(("k".into(), 1));
    let b = bin(&enc);
    assert!(
        !has_stale_envelopes(&Document::from_datum(&b).unwrap(), &mut ring, Format::V2).unwrap(),
        "nothing it could move"
    );
    let (changed, n, current, shredded) = reencrypt(&mut ring, &enc, None).unwrap();
    assert!(changed.is_none());
    assert_eq!(
        (n, current, shredded),
        (0, 1, 1),
        "shredded key id: current (no newest); destroyed version: shredded"
    );
}

#[test]
fn anything_that_does_not_authenticate_fails_the_document() {
    let mut ring = Ring::default();
    ring.add("k", 1, Algorithm::Aes256Gcm);
    let enc = encrypt(&ring, "k", 1, &sample(), &["email", "n"], Some(b"ctx"));
    ring.add("k", 2, Algorithm::Aes256Gcm);
    // wrong context, no context
    assert_eq!(
        reencrypt(&mut ring, &enc, Some(b"other")).unwrap_err().kind(),
        ErrorKind::AuthenticationFailed
    );
    assert_eq!(
        reencrypt(&mut ring, &enc, None).unwrap_err().kind(),
        ErrorKind::ContextMismatch
    );
    // moved to another field
    let mut moved = enc.clone();
    moved["other"] = enc["email"].clone();
    assert_eq!(
        reencrypt(&mut ring, &moved, Some(b"ctx")).unwrap_err().kind(),
        ErrorKind::AuthenticationFailed
    );
    // tampered: flip one character of the body
    let mut t = enc.clone();
    let mut s = t["email"].as_str().unwrap().to_string();
    let last = s.pop().unwrap();
    s.push(if last == 'A' { 'B' } else { 'A' });
    t["email"] = json!(s);
    assert!(reencrypt(&mut ring, &t, Some(b"ctx")).is_err());
    // malformed and unknown versions fail closed too
    let mut m = enc.clone();
    m["email"] = json!("$ec1$not-base64!");
    assert_eq!(
        reencrypt(&mut ring, &m, Some(b"ctx")).unwrap_err().kind(),
        ErrorKind::MalformedEnvelope
    );
    m["email"] = json!("$ec9$AAAA");
    assert_eq!(
        reencrypt(&mut ring, &m, Some(b"ctx")).unwrap_err().kind(),
        ErrorKind::UnsupportedVersion
    );
    // an unknown key version is an error, not a silent skip
    let mut ring2 = Ring::default();
    ring2.add("k", 1, Algorithm::Aes256Gcm);
    ring2.versions.clear();
    ring2.add("k", 2, Algorithm::Aes256Gcm);
    assert_eq!(
        reencrypt(&mut ring2, &enc, Some(b"ctx")).unwrap_err().kind(),
        ErrorKind::UnknownKey
    );
}

#[test]
fn a_scalar_root_envelope_is_reencrypted_too() {
    let mut ring = Ring::default();
    let c = ring.add("k", 1, Algorithm::Aes256Gcm);
    let text = Encryptor::new(&c, ring.names("k").key_ref(Format::V2).unwrap(), 1, None)
        .encrypt_value(&event_crypto_core::jsonb::Value::String(b"solo"))
        .unwrap();
    ring.add("k", 2, Algorithm::Aes256Gcm);
    let (moved, n, _, _) = reencrypt(&mut ring, &json!(text), None).unwrap();
    let moved = moved.unwrap();
    assert_eq!(n, 1);
    assert_eq!(version_of(&moved), 2);
    let mut d = Decryptor::new(&mut ring, None, OnShredded::Null);
    let pt = d.decrypt_value(moved.as_str().unwrap()).unwrap().unwrap();
    let mut out = Vec::new();
    pt.write_document(&mut out).unwrap();
    assert_eq!(val(&out), json!("solo"));
    // plain scalars and documents without envelopes are kept
    assert!(reencrypt(&mut ring, &json!("plain"), None).unwrap().0.is_none());
    assert!(reencrypt(&mut ring, &json!({"a": [1, {"b": "c"}]}), None)
        .unwrap()
        .0
        .is_none());
}

/// A disabled version (retire_key_version's waiting period): its envelopes are neither decrypted nor moved; they
/// read as shredded unless the caller asks for errors, which then have their own kind.
#[test]
fn disabled_versions_fail_closed_and_stay_where_they_are() {
    let mut ring = Ring::default();
    ring.add("k", 1, Algorithm::Aes256Gcm);
    let doc = encrypt(&ring, "k", 1, &sample(), &["email"], None);
    ring.add("k", 2, Algorithm::Aes256Gcm);
    ring.disabled.push(("k".into(), 1));
    assert_eq!(decrypt(&mut ring, &doc, None)["email"], Value::Null);
    let b = bin(&doc);
    let mut out = Vec::new();
    let err = Decryptor::new(&mut ring, None, OnShredded::Error)
        .decrypt_document(&Document::from_datum(&b).unwrap(), &mut out)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyDisabled);
    assert!(!err.message().contains("a@x.io"));
    let (changed, moved, _, left) = reencrypt(&mut ring, &doc, None).unwrap();
    assert_eq!((changed, moved, left), (None, 0, 1));
    assert!(!has_stale_envelopes(&Document::from_datum(&b).unwrap(), &mut ring, Format::V2).unwrap());
    // re-enabled, it decrypts again
    ring.disabled.clear();
    assert_eq!(decrypt(&mut ring, &doc, None)["email"], json!("a@x.io"));
}

/// Envelopes in free text (a text or json column): found wherever they are, by their headers only, in both
/// formats (format 1 by key id, format 2 by handle).
#[test]
fn envelopes_in_free_text_are_found_by_key_version() {
    for v1 in [true, false] {
        let mut ring = Ring { v1, ..Ring::default() };
        ring.add("tenant:7", 3, Algorithm::Aes256Gcm);
        ring.add("tenant:8", 3, Algorithm::Aes256Gcm);
        let doc = encrypt(&ring, "tenant:7", 3, &json!({"a": "secret"}), &["a"], None);
        let env = doc["a"].as_str().unwrap().to_string();
        assert!(env.starts_with(ring.format().prefix()));
        let k7 = ring.names("tenant:7");
        let k8 = ring.names("tenant:8");
        let note = format!("pasted {env}, and $ec1$ not-an-envelope $ec2$@@ $ec$ and the end");
        assert!(text_uses_key_version(note.as_bytes(), k7, 3));
        assert!(!text_uses_key_version(note.as_bytes(), k7, 2));
        assert!(!text_uses_key_version(note.as_bytes(), k8, 3));
        let json_text = doc.to_string();
        assert!(text_uses_key_version(json_text.as_bytes(), k7, 3));
        assert!(!text_uses_key_version(b"$ec1$", k7, 3));
        assert!(!text_uses_key_version(b"$ec2$", k7, 3));
        assert!(!text_uses_key_version(b"", k7, 3));
        // a damaged one still names its version (counting it as use is the safe side); one cut inside its header
        // does not
        // (cut to whole base64 groups: a cut inside one leaves non-canonical bits, which do not parse)
        let cut = env.len() - 4 - (env.len() - 5) % 4;
        assert!(text_uses_key_version(&env.as_bytes()[..cut], k7, 3));
        assert!(!text_uses_key_version(&env.as_bytes()[..12], k7, 3));
        // a key id without a handle is only found in format 1
        let no_handle = KeyNames {
            key_id: "tenant:7",
            handle: None,
        };
        assert_eq!(text_uses_key_version(note.as_bytes(), no_handle, 3), v1);
        let b = bin(&doc);
        assert_eq!(
            uses_key_version(&Document::from_datum(&b).unwrap(), no_handle, 3).unwrap(),
            v1
        );
        assert!(uses_key_version(&Document::from_datum(&b).unwrap(), k7, 3).unwrap());
        assert!(!uses_key_version(&Document::from_datum(&b).unwrap(), k8, 3).unwrap());
    }
}

/// Re-encryption moves envelopes to the format new envelopes are written in: format 1 envelopes under the active
/// version move to format 2 under that same version (the key id leaves the document), and back when format 1 is
/// asked for; the plaintext, location and context stay.
#[test]
fn envelopes_move_between_formats_under_the_same_version() {
    let mut ring = Ring {
        v1: true,
        ..Ring::default()
    };
    ring.add("subject:4d1b1f5e-3c4a-4a7e-8f0b-6f1d2c3b4a59", 1, Algorithm::Aes256Gcm);
    ring.add("other", 1, Algorithm::ChaCha20Poly1305);
    let id = "subject:4d1b1f5e-3c4a-4a7e-8f0b-6f1d2c3b4a59";
    let plain = sample();
    let old = encrypt(&ring, id, 1, &plain, &["email", "deep.list[*].ssn"], Some(b"s"));
    let old = encrypt(&ring, "other", 1, &old, &["other"], Some(b"s"));
    assert!(old.to_string().contains("$ec1$") && !old.to_string().contains("$ec2$"));
    let b = bin(&old);
    let d = Document::from_datum(&b).unwrap();
    assert!(
        !has_stale_envelopes(&d, &mut ring, Format::V1).unwrap(),
        "nothing to do for format 1"
    );
    assert!(
        has_stale_envelopes(&d, &mut ring, Format::V2).unwrap(),
        "format 1 envelopes are stale for format 2"
    );
    let (moved, n, current, _) = reencrypt(&mut ring, &old, Some(b"s")).unwrap();
    let moved = moved.expect("changed");
    assert_eq!((n, current), (4, 0));
    let text = moved.to_string();
    assert!(
        !text.contains("$ec1$") && !text.contains("4d1b1f5e"),
        "no key id left: {text}"
    );
    for f in [&moved["email"], &moved["deep"]["list"][1]["ssn"], &moved["other"]] {
        let env = Envelope::parse(f.as_str().unwrap(), &Location::root()).unwrap();
        assert_eq!((env.format, env.key_version), (Format::V2, 1), "the same version");
    }
    assert!(text.len() < old.to_string().len());
    assert_eq!(decrypt(&mut ring, &moved, Some(b"s")), plain);
    assert_eq!(
        ring.sealed.get(&(id.to_string(), 1)),
        Some(&3),
        "counted under the key id"
    );
    let b = bin(&moved);
    let d = Document::from_datum(&b).unwrap();
    assert!(!has_stale_envelopes(&d, &mut ring, Format::V2).unwrap());
    assert!(uses_key_version(&d, ring.names(id), 1).unwrap());
    // back to format 1 when that is what new envelopes are written in
    let mut out = Vec::new();
    {
        let mut r = Reencryptor::new(&mut ring, Some(b"s")).format(Format::V1);
        assert!(r.reencrypt_document(&d, &mut out).unwrap());
        assert_eq!(r.reencrypted, 4);
    }
    let back = val(&out);
    assert!(back.to_string().contains("$ec1$"));
    assert_eq!(decrypt(&mut ring, &back, Some(b"s")), plain);
    // a key id the source has no handle for cannot be written in format 2: an error, nothing half done
    ring.handles.remove("other");
    let e = reencrypt(&mut ring, &old, Some(b"s")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CatalogAccess);
    assert!(e.message().contains("\"other\" has no handle"), "{e}");
}
