// Prints frozen test vectors (used once to create tests/vectors.rs; kept to document how they were made).
use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::envelope::{seal, Scratch, SealKey};
use event_crypto_core::path::{LocStep, Location};

/// (algorithm, location, context, plaintext JSON)
type Case<'a> = (Algorithm, &'a [LocStep<'a>], Option<&'a [u8]>, &'a str);

fn main() {
    let key = [0x42u8; 32];
    let cases: &[Case] = &[
        (Algorithm::Aes256Gcm, &[LocStep::Key("email")], None, "\"a@x.io\""),
        (
            Algorithm::ChaCha20Poly1305,
            &[LocStep::Key("email")],
            None,
            "\"a@x.io\"",
        ),
        (
            Algorithm::Aes256Gcm,
            &[LocStep::Key("address"), LocStep::Key("street")],
            Some(b"stream-7"),
            "\"1 Main\"",
        ),
        (
            Algorithm::ChaCha20Poly1305,
            &[LocStep::Key("items"), LocStep::Index(1), LocStep::Key("card")],
            Some(b"stream-7"),
            "{\"n\":4111,\"x\":[true,null]}",
        ),
        (Algorithm::Aes256Gcm, &[], None, "12.50"),
        (Algorithm::Aes256Gcm, &[LocStep::Key("a.b")], None, "\"\""),
    ];
    for (i, (alg, steps, ctx, pt)) in cases.iter().enumerate() {
        let c = Cipher::new(*alg, &key);
        let loc = Location::from_steps(steps);
        let nonce = [i as u8 + 1; 12];
        let k = SealKey {
            cipher: &c,
            key_id: "frozen-key",
            version: 7,
        };
        let s = seal(&k, &loc, *ctx, pt.as_bytes(), &nonce, &mut Scratch::default()).unwrap();
        println!(
            "{alg:?} {} {:?} {pt} => {s}",
            loc.display(),
            ctx.map(|c| String::from_utf8_lossy(c).to_string())
        );
    }
}
