// Prints frozen test vectors (used once to create the FROZEN_V1 and FROZEN_V2 tables of tests/known_answers.rs;
// kept to document how they were made): `cargo run -p event_crypto_core --example gen_vectors`. The last lines are
// the compressed format 2 vectors (FROZEN_COMPRESSED): zstd level 3 frames of the plaintexts of
// `compressed_plaintext` (the same function is in tests/known_answers.rs).
use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::envelope::{seal, seal_compressed, KeyHandle, KeyRef, Scratch, SealKey};
use event_crypto_core::path::{LocStep, Location};

/// (algorithm, location, context, plaintext JSON)
type Case<'a> = (Algorithm, &'a [LocStep<'a>], Option<&'a [u8]>, &'a str);

/// (algorithm, location, context, version) of a compressed vector.
type CompressedCase<'a> = (Algorithm, &'a [LocStep<'a>], Option<&'a [u8]>, u32);

/// The handle of the format 2 vectors.
const FROZEN_HANDLE: u64 = 0x5ec2_f00d_0000_0007;

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
    let handle = KeyHandle::new(FROZEN_HANDLE).unwrap();
    // format 1 (key id "frozen-key", version 7), then format 2 (the handle above, version 7; the last case also
    // with version 300, whose LEB128 takes two bytes)
    for (format, key_ref) in [(1, KeyRef::Id("frozen-key")), (2, KeyRef::Handle(handle))] {
        for (i, (alg, steps, ctx, pt)) in cases.iter().enumerate() {
            let versions: &[u32] = if format == 2 && i == cases.len() - 1 {
                &[7, 300]
            } else {
                &[7]
            };
            for &version in versions {
                let c = Cipher::new(*alg, &key);
                let loc = Location::from_steps(steps);
                let nonce = [i as u8 + 1; 12];
                let k = SealKey {
                    cipher: &c,
                    key: key_ref,
                    version,
                };
                let s = seal(&k, &loc, *ctx, pt.as_bytes(), &nonce, &mut Scratch::default()).unwrap();
                println!(
                    "format {format} version {version} {alg:?} {} {:?} {pt} => {s}",
                    loc.display(),
                    ctx.map(|c| String::from_utf8_lossy(c).to_string())
                );
            }
        }
    }
    // compressed (format 2, flag 0x02): nonce 0x11, 0x12, 0x13
    let compressed: &[CompressedCase] = &[
        (Algorithm::Aes256Gcm, &[LocStep::Key("doc")], None, 7),
        (
            Algorithm::ChaCha20Poly1305,
            &[LocStep::Key("items"), LocStep::Index(1), LocStep::Key("note")],
            Some(b"stream-7"),
            7,
        ),
        (Algorithm::Aes256Gcm, &[], None, 300),
    ];
    for (i, (alg, steps, ctx, version)) in compressed.iter().enumerate() {
        let c = Cipher::new(*alg, &key);
        let loc = Location::from_steps(steps);
        let pt = compressed_plaintext(i);
        let frame = zstd::bulk::compress(pt.as_bytes(), 3).unwrap();
        let k = SealKey {
            cipher: &c,
            key: KeyRef::Handle(handle),
            version: *version,
        };
        let s = seal_compressed(&k, &loc, *ctx, &frame, &[0x11 + i as u8; 12], &mut Scratch::default()).unwrap();
        println!("compressed {i} ({} -> {} bytes) => {s}", pt.len(), frame.len());
    }
}

/// The plaintexts of the compressed vectors.
fn compressed_plaintext(i: usize) -> String {
    match i {
        0 => format!(
            "{{\"note\":\"{}\",\"n\":[1,2,3]}}",
            "the quick brown fox jumps over the lazy dog. ".repeat(8)
        ),
        1 => format!("\"{}\"", "lorem ipsum dolor sit amet ".repeat(12)),
        _ => format!(
            "[{}]",
            (0..15)
                .map(|n| format!("{{\"sku\":\"A-{n}\",\"qty\":1}}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}
