//! Compression before encryption (envelope format 2, flag 0x02): round trips at and around the threshold,
//! incompressible values stored as they are, format 1 refused, the flag authenticated, frozen compressed
//! envelopes, and a decompression bomb inside a valid envelope refused fast without exhausting memory.

use base64::Engine;
use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::compress::{Compression, DEFAULT_THRESHOLD, MAX_DECOMPRESSED_LEN};
use event_crypto_core::document::{Decryptor, Encryptor, KeyLookup, KeySource, OnShredded};
use event_crypto_core::envelope::{seal_compressed, Envelope, KeyHandle, KeyRef, Scratch, SealKey, FLAG_COMPRESSED};
use event_crypto_core::jsonb::{from_json_text, to_json_text, Document};
use event_crypto_core::path::{FieldPath, LocStep, Location, Selector};
use event_crypto_core::{ErrorKind, Result};
use std::rc::Rc;
use std::time::Instant;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const HANDLE: KeyHandle = match KeyHandle::new(0x6b6b_6b6b_0000_0001) {
    Some(h) => h,
    None => panic!(),
};
const ZSTD: Compression = Compression::Zstd {
    threshold: DEFAULT_THRESHOLD,
};

struct Keys(Rc<Cipher>);

impl KeySource for Keys {
    fn decryption_key(&mut self, _key: KeyRef<'_>, _version: u32) -> Result<KeyLookup> {
        Ok(KeyLookup::Found(self.0.clone()))
    }
}

fn cipher() -> Rc<Cipher> {
    Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[7u8; 32]))
}

/// The blob (header, nonce, ciphertext, tag) of a format 2 envelope.
fn blob(text: &str) -> Vec<u8> {
    B64.decode(&text[5..]).unwrap()
}

fn decrypt_value(c: &Rc<Cipher>, text: &str) -> Result<String> {
    let mut keys = Keys(c.clone());
    let v = Decryptor::new(&mut keys, None, OnShredded::Error)
        .decrypt_value(text)?
        .unwrap();
    let mut out = Vec::new();
    v.write_document(&mut out)?;
    to_json_text(&out)
}

/// A JSON string whose text is exactly `len` bytes (quotes included).
fn string_of(len: usize) -> String {
    format!("\"{}\"", "ab".repeat(len).chars().take(len - 2).collect::<String>())
}

#[test]
fn round_trips_at_and_around_the_threshold() {
    let c = cipher();
    for len in [
        2,
        100,
        DEFAULT_THRESHOLD - 1,
        DEFAULT_THRESHOLD,
        DEFAULT_THRESHOLD + 1,
        DEFAULT_THRESHOLD + 2,
        4096,
        65536,
    ] {
        let text = string_of(len);
        assert_eq!(text.len(), len);
        let datum = from_json_text(&text).unwrap();
        let doc = Document::from_datum(&datum).unwrap();
        let mut e = Encryptor::new(&c, KeyRef::Handle(HANDLE), 3, None).compress(ZSTD);
        let env = e.encrypt_value(&doc.value().unwrap()).unwrap();
        let parsed = Envelope::parse(&env, &Location::root()).unwrap();
        // compressed exactly when the JSON text is over the threshold (repetitive text always compresses)
        assert_eq!(parsed.is_compressed(), len > DEFAULT_THRESHOLD, "len {len}");
        assert_eq!(e.compressed, usize::from(len > DEFAULT_THRESHOLD));
        if len > 1000 {
            assert!(env.len() < len / 4, "len {len}: {}", env.len());
        }
        assert_eq!(decrypt_value(&c, &env).unwrap(), text, "len {len}");
        // without compression: no flag, the same layout as ever
        let plain = Encryptor::new(&c, KeyRef::Handle(HANDLE), 3, None)
            .encrypt_value(&doc.value().unwrap())
            .unwrap();
        assert!(!Envelope::parse(&plain, &Location::root()).unwrap().is_compressed());
        assert_eq!(blob(&plain)[0], 0x10);
        assert_eq!(blob(&plain).len(), 1 + 8 + 1 + 12 + len + 16);
    }
}

#[test]
fn incompressible_values_are_stored_as_they_are() {
    let c = cipher();
    // JSON text is never random bytes, but short random text (or any value when the threshold is 0) does not
    // shrink: zstd's frame costs more than it saves
    let everything = Compression::Zstd { threshold: 0 };
    for n in [1usize, 12, 48, 90] {
        let mut random = vec![0u8; n];
        getrandom::fill(&mut random).unwrap();
        let text = format!("\"{}\"", B64.encode(&random));
        let datum = from_json_text(&text).unwrap();
        let doc = Document::from_datum(&datum).unwrap();
        let mut e = Encryptor::new(&c, KeyRef::Handle(HANDLE), 1, None).compress(everything);
        let env = e.encrypt_value(&doc.value().unwrap()).unwrap();
        assert!(
            !Envelope::parse(&env, &Location::root()).unwrap().is_compressed(),
            "{n}"
        );
        assert_eq!(e.compressed, 0);
        assert_eq!(blob(&env).len(), 1 + 8 + 1 + 12 + text.len() + 16);
        assert_eq!(decrypt_value(&c, &env).unwrap(), text);
    }
    for small in ["1", "true", "null", "\"a@x.io\""] {
        let datum = from_json_text(small).unwrap();
        let doc = Document::from_datum(&datum).unwrap();
        let env = Encryptor::new(&c, KeyRef::Handle(HANDLE), 1, None)
            .compress(everything)
            .encrypt_value(&doc.value().unwrap())
            .unwrap();
        assert_eq!(blob(&env)[0], 0x10, "{small}");
    }
}

#[test]
fn documents_compress_field_by_field_and_decrypt() {
    let c = cipher();
    let big: Vec<String> = (0..200).map(|i| format!("{{\"sku\":\"A-{i}\",\"qty\":{i}}}")).collect();
    let text = format!(
        "{{\"id\":1,\"email\":\"a@x.io\",\"items\":[{}],\"note\":{}}}",
        big.join(","),
        string_of(300)
    );
    let datum = from_json_text(&text).unwrap();
    let doc = Document::from_datum(&datum).unwrap();
    let paths = [
        FieldPath::parse("email").unwrap(),
        FieldPath::parse("items").unwrap(),
        FieldPath::parse("note").unwrap(),
    ];
    let mut e = Encryptor::new(&c, KeyRef::Handle(HANDLE), 1, Some(b"ctx")).compress(ZSTD);
    let mut out = Vec::new();
    assert_eq!(
        e.encrypt_document(&doc, &Selector::new(&paths).unwrap(), &mut out)
            .unwrap(),
        3
    );
    assert_eq!(e.compressed, 2, "items and note; not the short e-mail address");
    assert!(out.len() < text.len() / 3);
    let mut keys = Keys(c.clone());
    let mut back = Vec::new();
    let mut d = Decryptor::new(&mut keys, Some(b"ctx"), OnShredded::Error);
    assert!(d
        .decrypt_document(&Document::from_datum(&out).unwrap(), &mut back)
        .unwrap());
    assert_eq!(back, datum);
}

#[test]
fn format_1_refuses_compression() {
    let c = cipher();
    let datum = from_json_text(&string_of(1000)).unwrap();
    let doc = Document::from_datum(&datum).unwrap();
    let e = Encryptor::new(&c, KeyRef::Id("k"), 1, None)
        .compress(ZSTD)
        .encrypt_value(&doc.value().unwrap())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.message().contains("format 2"), "{e}");
    // and 'none' under format 1 is format 1 as ever
    let env = Encryptor::new(&c, KeyRef::Id("k"), 1, None)
        .compress(Compression::None)
        .encrypt_value(&doc.value().unwrap())
        .unwrap();
    assert!(env.starts_with("$ec1$"));
    // a format 1 header with the compressed bit is refused as reserved
    let mut b = blob(&env);
    b[1] |= FLAG_COMPRESSED;
    let forged = format!("$ec1${}", B64.encode(&b));
    let e = Envelope::parse(&forged, &Location::root()).unwrap_err();
    assert_eq!(e.detail(), Some("reserved flag bits are set"));
}

#[test]
fn the_flag_is_authenticated() {
    let c = cipher();
    let datum = from_json_text(&string_of(1000)).unwrap();
    let doc = Document::from_datum(&datum).unwrap();
    let env = Encryptor::new(&c, KeyRef::Handle(HANDLE), 1, None)
        .compress(ZSTD)
        .encrypt_value(&doc.value().unwrap())
        .unwrap();
    let mut b = blob(&env);
    assert_eq!(b[0], 0x10 | FLAG_COMPRESSED);
    b[0] &= !FLAG_COMPRESSED;
    let cleared = format!("$ec2${}", B64.encode(&b));
    assert_eq!(
        decrypt_value(&c, &cleared).unwrap_err().kind(),
        ErrorKind::AuthenticationFailed
    );
    // and set on an uncompressed envelope
    let plain = Encryptor::new(&c, KeyRef::Handle(HANDLE), 1, None)
        .encrypt_value(&doc.value().unwrap())
        .unwrap();
    let mut b = blob(&plain);
    b[0] |= FLAG_COMPRESSED;
    let set = format!("$ec2${}", B64.encode(&b));
    assert_eq!(
        decrypt_value(&c, &set).unwrap_err().kind(),
        ErrorKind::AuthenticationFailed
    );
    // unknown flag bits are refused before any key is looked up
    for bit in [0x04u8, 0x08] {
        let mut b = blob(&env);
        b[0] |= bit;
        let t = format!("$ec2${}", B64.encode(&b));
        let e = decrypt_value(&c, &t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MalformedEnvelope);
        assert_eq!(e.detail(), Some("reserved flag bits are set"));
    }
}

/// A zstd frame of 1 GB of zeros (about 32 KB), sealed in a valid, authenticated envelope under the test key (only
/// a key holder can make one; event_crypto's encryption never does): decryption stops at the cap, fast, with
/// TooLarge (54000), having allocated at most the cap.
#[test]
fn a_decompression_bomb_fails_cleanly_and_fast() {
    use std::io::Read;
    let c = cipher();
    let zeros = std::io::repeat(b'0').take(1 << 30);
    let frame = zstd::stream::encode_all(zeros, 1).unwrap();
    assert!(frame.len() < 1 << 20, "{}", frame.len());
    let key = SealKey {
        cipher: &c,
        key: KeyRef::Handle(HANDLE),
        version: 1,
    };
    let loc = Location::from_steps(&[LocStep::Key("doc")]);
    let env = seal_compressed(&key, &loc, None, &frame, &[5; 12], &mut Scratch::default()).unwrap();
    let start = Instant::now();
    let e = Envelope::parse(&env, &loc)
        .unwrap()
        .open(&c, &loc, None, &mut Vec::new())
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
    assert!(e.message().contains("doc"), "{e}");
    assert!(e.detail().unwrap().contains(&MAX_DECOMPRESSED_LEN.to_string()));
    assert!(took.as_secs() < 10, "{took:?}");
    // the same through the document decryptor
    let datum = from_json_text(&format!("{{\"doc\":\"{env}\"}}")).unwrap();
    let mut keys = Keys(c.clone());
    let e = Decryptor::new(&mut keys, None, OnShredded::Error)
        .decrypt_document(&Document::from_datum(&datum).unwrap(), &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TooLarge);
    // a frame that is not zstd at all, authenticated: malformed, not a panic
    let env = seal_compressed(&key, &loc, None, b"not a zstd frame", &[6; 12], &mut Scratch::default()).unwrap();
    let e = Envelope::parse(&env, &loc)
        .unwrap()
        .open(&c, &loc, None, &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MalformedEnvelope);
}
