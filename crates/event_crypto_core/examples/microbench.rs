//! Times the core's hot paths on a benchmark-shaped event, without PostgreSQL:
//!     cargo run --release -p event_crypto_core --example microbench
use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::document::{check_envelopes, Decryptor, Encryptor, KeyLookup, KeySource, OnShredded};
use event_crypto_core::envelope::{KeyHandle, KeyRef};
use event_crypto_core::jsonb::{from_json_text, Document};
use event_crypto_core::path::{FieldPath, Selector};
use event_crypto_core::Result;
use std::rc::Rc;
use std::time::Instant;

struct One(Rc<Cipher>);
impl KeySource for One {
    fn decryption_key(&mut self, _: KeyRef<'_>, _: u32) -> Result<KeyLookup> {
        Ok(KeyLookup::Found(self.0.clone()))
    }
}

fn main() {
    let doc = from_json_text(
        r#"{"email":"user12345@example.com","phone":"+1-555-0012345","ssn":"000012345","name":"Name 12345",
            "address":{"street":"12345 Main St","city":"Springfield","zip":"12345"},"amount":142.8571428571428571,
            "currency":"EUR","items":[{"sku":"A12345","qty":1,"price":9.99},{"sku":"B","qty":2,"price":1.5}]}"#,
    )
    .unwrap();
    let d = Document::from_datum(&doc).unwrap();
    let paths: Vec<FieldPath> = ["email", "phone", "ssn"]
        .iter()
        .map(|p| FieldPath::parse(p).unwrap())
        .collect();
    let sel = Selector::new(&paths).unwrap();
    let c = Rc::new(Cipher::new(Algorithm::Aes256Gcm, &[7u8; 32]));
    let ctx = b"0b5f2c1e-8d4a-4f6e-9a3b-2c1d0e9f8a7b";
    let n = 200_000;
    // envelopes of format 2 (what new encryptions write): the key named by its handle
    let handle = KeyHandle::new(0x5eed_0000_0000_0001).unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        Encryptor::new(&c, KeyRef::Handle(handle), 1, Some(ctx))
            .encrypt_document(&d, &sel, &mut out)
            .unwrap();
    }
    println!(
        "encrypt_document, 3 fields: {:.0} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let enc = out.clone();
    let e = Document::from_datum(&enc).unwrap();
    let mut keys = One(c.clone());
    let t = Instant::now();
    for _ in 0..n {
        Decryptor::new(&mut keys, Some(ctx), OnShredded::Error)
            .decrypt_document(&e, &mut out)
            .unwrap();
    }
    println!(
        "decrypt_document, 3 fields: {:.0} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    // what a protected table's trigger does before it keeps a row: find and check every envelope
    let bound = |k: KeyRef<'_>| k == KeyRef::Handle(handle);
    let t = Instant::now();
    for _ in 0..n {
        check_envelopes(&d, &mut keys, Some(ctx), &bound, |_, _| Ok(())).unwrap();
    }
    println!(
        "check_envelopes, plaintext event (no envelope): {:.0} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        check_envelopes(&e, &mut keys, Some(ctx), &bound, |_, _| Ok(())).unwrap();
    }
    println!(
        "check_envelopes, stored event (3 envelopes authenticated): {:.0} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let mut tag = [0u8; 16];
    let mut buf = [0u8; 24];
    let aad = [1u8; 80];
    let t = Instant::now();
    for i in 0..n {
        buf[0] = i as u8;
        tag = c.seal_in_place(&[i as u8; 12], &aad, &mut buf);
    }
    println!(
        "AES-256-GCM, 24 B + 80 B AAD: {:.0} ns ({})",
        t.elapsed().as_nanos() as f64 / n as f64,
        tag[0]
    );
}
