//! The binary jsonb reader and the document walks on arbitrary bytes (a corrupted or hostile datum): never a panic,
//! never an out-of-bounds read; encryption and decryption either work or return an error.
#![no_main]

use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::document::{
    check_envelopes, may_contain_envelope, Checked, Decryptor, Encryptor, KeyLookup, KeySource, OnShredded,
};
use event_crypto_core::envelope::{KeyHandle, KeyRef};
use event_crypto_core::jsonb::{from_json_text, to_json_text, Document};
use event_crypto_core::path::{FieldPath, Selector};
use event_crypto_core::{ErrorKind, Result};
use libfuzzer_sys::fuzz_target;
use std::rc::Rc;

struct OneKey(Rc<Cipher>);

impl KeySource for OneKey {
    fn decryption_key(&mut self, _key: KeyRef<'_>, _version: u32) -> Result<KeyLookup> {
        Ok(KeyLookup::Found(self.0.clone()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = Document::from_datum(data) else {
        return;
    };
    let _ = to_json_text(data);
    let cipher = Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[9u8; 32]));
    let paths: Vec<FieldPath> = ["email", "a.b", "items[*].card", "[0]", "x[3].y"]
        .iter()
        .map(|p| FieldPath::parse(p).unwrap())
        .collect();
    // Whether the datum is exactly what PostgreSQL stores for its JSON text (every datum PostgreSQL writes is):
    // for those, encrypting then decrypting must give the same bytes back. A damaged datum only has to be
    // handled without a panic or an out-of-bounds read.
    let canonical = to_json_text(data)
        .ok()
        .and_then(|t| from_json_text(&t).ok())
        .is_some_and(|b| b == data);
    // both envelope formats: the key named by its id (format 1) or by a handle (format 2)
    let key = if data.len() % 2 == 0 {
        KeyRef::Id("fuzz")
    } else {
        KeyRef::Handle(KeyHandle::new(0x0fed_cba9_8765_4321).unwrap())
    };
    let mut out = Vec::new();
    let encrypted = Encryptor::new(&cipher, key, 1, None).encrypt_document(&doc, &Selector::new(&paths).unwrap(), &mut out);
    if let Ok(n) = encrypted {
        if let Ok(enc) = Document::from_datum(&out) {
            let mut plain = Vec::new();
            let opened = Decryptor::new(&mut OneKey(cipher.clone()), None, OnShredded::Null).decrypt_document(&enc, &mut plain);
            if canonical && n > 0 && !has_envelope_lookalike(data) {
                assert!(opened.expect("what was just encrypted decrypts"), "something was decrypted");
                assert_eq!(plain, data, "decrypt(encrypt(doc)) == doc, byte for byte");
                // and a protected table's trigger accepts every envelope as bound to this row
                let mut seen = 0;
                let found = check_envelopes(&enc, &mut OneKey(cipher.clone()), None, &|k| k == key, |_, c| {
                    assert!(matches!(c, Checked::Opened(_)));
                    seen += 1;
                    Ok(())
                })
                .expect("fresh envelopes are bound to their row");
                assert_eq!((found, seen), (n, n));
                // the trigger's shortcut never hides an envelope
                assert!(may_contain_envelope(&enc), "a document with {n} envelopes passes the prefilter");
            }
        } else {
            assert!(!canonical, "the writer's output of a sound document parses");
        }
    } else {
        assert!(
            !canonical || doc.root().is_scalar() || n_is_error_ok(&encrypted),
            "a sound object or array encrypts: {encrypted:?}"
        );
    }
    let mut keys = OneKey(cipher);
    let _ = Decryptor::new(&mut keys, None, OnShredded::Null).decrypt_document(&doc, &mut out);
});

/// Strings in the input that already claim to be envelopes make decryption of the result fail by design.
fn has_envelope_lookalike(data: &[u8]) -> bool {
    data.windows(3).any(|w| w == b"$ec")
}

/// Errors a sound object or array may still get: nesting deeper than the limit, values too large.
fn n_is_error_ok(r: &Result<usize>) -> bool {
    matches!(r, Err(e) if matches!(e.kind(), ErrorKind::TooLarge))
}
