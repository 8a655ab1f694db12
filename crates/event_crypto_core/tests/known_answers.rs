//! Known-answer tests: the published vectors for both AEADs through our cipher type, and envelopes frozen from
//! every envelope format version (1 and 2), which must decrypt forever.

use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::envelope::{Envelope, Format, KeyHandle, KeyRef};
use event_crypto_core::path::{LocStep, Location};
use event_crypto_core::ErrorKind;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn aes_256_gcm_nist_test_case_16() {
    let key: [u8; 32] = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
        .try_into()
        .unwrap();
    let nonce: [u8; 12] = h("cafebabefacedbaddecaf888").try_into().unwrap();
    let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let mut buf = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
    let c = Cipher::new(Algorithm::Aes256Gcm, &key);
    let tag = c.seal_in_place(&nonce, &aad, &mut buf);
    assert_eq!(hex::encode(&buf), "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662");
    assert_eq!(hex::encode(tag), "76fc6ece0f4e1768cddf8853bb2d551b");
    assert!(c.open_in_place(&nonce, &aad, &mut buf, &tag));
    assert_eq!(hex::encode(&buf[..4]), "d9313225");
}

#[test]
fn chacha20_poly1305_rfc8439_section_2_8_2() {
    let key: [u8; 32] = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
        .try_into()
        .unwrap();
    let nonce: [u8; 12] = h("070000004041424344454647").try_into().unwrap();
    let aad = h("50515253c0c1c2c3c4c5c6c7");
    let mut buf = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
    let c = Cipher::new(Algorithm::ChaCha20Poly1305, &key);
    let tag = c.seal_in_place(&nonce, &aad, &mut buf);
    assert_eq!(hex::encode(&buf), "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116");
    assert_eq!(hex::encode(tag), "1ae10b594f09e26a7e902ecbd0600691");
}

/// Format version 1 envelopes, made by `examples/gen_vectors.rs` with data key 0x42 * 32, key id "frozen-key",
/// version 7 and nonce (case number) * 12. Never edit these: a release that fails this test breaks stored data.
/// (algorithm, location, context, plaintext JSON, envelope)
type Frozen = (
    Algorithm,
    &'static [LocStep<'static>],
    Option<&'static str>,
    &'static str,
    &'static str,
);

const FROZEN_V1: &[Frozen] = &[
    (
        Algorithm::Aes256Gcm,
        &[LocStep::Key("email")],
        None,
        "\"a@x.io\"",
        "$ec1$AQAKZnJvemVuLWtleQAAAAcBAQEBAQEBAQEBAQEPyPZ_uj3u7_E_eerlbwW1bzF98bCu3XQ",
    ),
    (
        Algorithm::ChaCha20Poly1305,
        &[LocStep::Key("email")],
        None,
        "\"a@x.io\"",
        "$ec1$AgAKZnJvemVuLWtleQAAAAcCAgICAgICAgICAgIOCArCtBh5tjjwcEbF3fJ0UcOCOcnY1og",
    ),
    (
        Algorithm::Aes256Gcm,
        &[LocStep::Key("address"), LocStep::Key("street")],
        Some("stream-7"),
        "\"1 Main\"",
        "$ec1$AQEKZnJvemVuLWtleQAAAAcDAwMDAwMDAwMDAwPzXRJdvWNdmEol11he4Flhs79T_2JLaDU",
    ),
    (
        Algorithm::ChaCha20Poly1305,
        &[LocStep::Key("items"), LocStep::Index(1), LocStep::Key("card")],
        Some("stream-7"),
        "{\"n\":4111,\"x\":[true,null]}",
        "$ec1$AgEKZnJvemVuLWtleQAAAAcEBAQEBAQEBAQEBAReKuKko7SZ0E0s555_00y9xK_2qTvbIjv_L0C4EtvaR0E0KqxzBywPDj8",
    ),
    (
        Algorithm::Aes256Gcm,
        &[],
        None,
        "12.50",
        "$ec1$AQAKZnJvemVuLWtleQAAAAcFBQUFBQUFBQUFBQXs3horrVLVUefrM7XJjR_UEL70UPA",
    ),
    (
        Algorithm::Aes256Gcm,
        &[LocStep::Key("a.b")],
        None,
        "\"\"",
        "$ec1$AQAKZnJvemVuLWtleQAAAAcGBgYGBgYGBgYGBgbqNiQaKmvhdcFtXw63IpltyhE",
    ),
];

#[test]
fn frozen_v1_envelopes_decrypt_forever() {
    for (i, (alg, steps, ctx, plaintext, text)) in FROZEN_V1.iter().enumerate() {
        let loc = Location::from_steps(steps);
        let env = Envelope::parse(text, &loc).unwrap();
        assert_eq!(env.format, Format::V1);
        assert_eq!(env.algorithm, *alg);
        assert_eq!(env.key(), KeyRef::Id("frozen-key"));
        assert_eq!(env.key_version, 7);
        assert_eq!(env.nonce(), [i as u8 + 1; 12]);
        let c = Cipher::new(*alg, &[0x42; 32]);
        let pt = env.open(&c, &loc, ctx.map(str::as_bytes), &mut Vec::new()).unwrap();
        assert_eq!(std::str::from_utf8(&pt).unwrap(), *plaintext, "vector {i}");
    }
}

#[test]
fn frozen_v1_envelopes_reject_other_locations_and_contexts() {
    let c = Cipher::new(Algorithm::Aes256Gcm, &[0x42; 32]);
    let (_, _, _, _, text) = FROZEN_V1[2];
    let moved = Location::from_steps(&[LocStep::Key("address"), LocStep::Key("city")]);
    let e = Envelope::parse(text, &moved)
        .unwrap()
        .open(&c, &moved, Some(b"stream-7"), &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    assert!(e.message().contains("address.city"));
    let here = Location::from_steps(&[LocStep::Key("address"), LocStep::Key("street")]);
    let e = Envelope::parse(text, &here)
        .unwrap()
        .open(&c, &here, Some(b"stream-8"), &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
}

/// Format version 2 envelopes, made by `examples/gen_vectors.rs` with data key 0x42 * 32, key handle
/// 5ec2f00d00000007, version 7 (the last case also version 300: two LEB128 bytes) and nonce (case number) * 12:
/// the same cases as format 1. Checked independently of this crate (an AES-GCM / ChaCha20-Poly1305 reader written
/// from docs/format.md alone, with Python's `cryptography`). Never edit these.
/// (algorithm, location, context, plaintext JSON, version, envelope)
type FrozenV2 = (
    Algorithm,
    &'static [LocStep<'static>],
    Option<&'static str>,
    &'static str,
    u32,
    &'static str,
);

const FROZEN_HANDLE: u64 = 0x5ec2_f00d_0000_0007;

const FROZEN_V2: &[FrozenV2] = &[
    (
        Algorithm::Aes256Gcm,
        &[LocStep::Key("email")],
        None,
        "\"a@x.io\"",
        7,
        "$ec2$EF7C8A0AAAAHBwEBAQEBAQEBAQEBAQ_I9n-6Pe7v2K7cEOtDOebyGcmkjtHUrg",
    ),
    (
        Algorithm::ChaCha20Poly1305,
        &[LocStep::Key("email")],
        None,
        "\"a@x.io\"",
        7,
        "$ec2$IF7C8A0AAAAHBwICAgICAgICAgICAg4ICsK0GHm2GEBmovFjaDeQy-LtPuEoDg",
    ),
    (
        Algorithm::Aes256Gcm,
        &[LocStep::Key("address"), LocStep::Key("street")],
        Some("stream-7"),
        "\"1 Main\"",
        7,
        "$ec2$EV7C8A0AAAAHBwMDAwMDAwMDAwMDA_NdEl29Y12Yt5VT2jg4wo7W9zrf2KH-RA",
    ),
    (
        Algorithm::ChaCha20Poly1305,
        &[LocStep::Key("items"), LocStep::Index(1), LocStep::Key("card")],
        Some("stream-7"),
        "{\"n\":4111,\"x\":[true,null]}",
        7,
        "$ec2$IV7C8A0AAAAHBwQEBAQEBAQEBAQEBF4q4qSjtJnQTSznnn_TTL3Er_apO9siO_8v690ce9ydyO_8Aw1g10-gPw",
    ),
    (
        Algorithm::Aes256Gcm,
        &[],
        None,
        "12.50",
        7,
        "$ec2$EF7C8A0AAAAHBwUFBQUFBQUFBQUFBezeGiut-pndwv92fVy2xd77g_h81g",
    ),
    (
        Algorithm::Aes256Gcm,
        &[LocStep::Key("a.b")],
        None,
        "\"\"",
        7,
        "$ec2$EF7C8A0AAAAHBwYGBgYGBgYGBgYGBuo2XSYbyPnBCTrG60njXVk2cg",
    ),
    (
        Algorithm::Aes256Gcm,
        &[LocStep::Key("a.b")],
        None,
        "\"\"",
        300,
        "$ec2$EF7C8A0AAAAHrAIGBgYGBgYGBgYGBgbqNtRE19i6OhN4FYhUFuUDuC4",
    ),
];

/// Compressed format 2 envelopes (flag 0x02: the plaintext is a zstd frame of the JSON text), made by
/// `examples/gen_vectors.rs` (zstd level 3, libzstd 1.5.7) with data key 0x42 * 32, key handle 5ec2f00d00000007 and
/// nonce 0x11, 0x12, 0x13 * 12; plaintexts from [`compressed_plaintext`]. Never edit these.
/// (algorithm, location, context, version, envelope)
type FrozenCompressed = (
    Algorithm,
    &'static [LocStep<'static>],
    Option<&'static str>,
    u32,
    &'static str,
);

const FROZEN_COMPRESSED: &[FrozenCompressed] = &[
    (
        Algorithm::Aes256Gcm,
        &[LocStep::Key("doc")],
        None,
        7,
        "$ec2$El7C8A0AAAAHBxEREREREREREREREZvSBO4Ns4B6Ppx8sxiimvpRUCDaYy24GcI9_GKQPZNyTxZnSqkKJrRGpFC7YukrP_w_StZuA6HSr4iVOmWmn7qGG7LZMSM8c0LNGLTKK_mLPEL6ivu3IwZ-EwzBAJGmVxOr6lfz",
    ),
    (
        Algorithm::ChaCha20Poly1305,
        &[LocStep::Key("items"), LocStep::Index(1), LocStep::Key("note")],
        Some("stream-7"),
        7,
        "$ec2$I17C8A0AAAAHBxISEhISEhISEhISEn9D3eZZ_PVSihASVpJ7Kd3CGa6gf8DHvjwBkSsBOhobjS2gnnlGLUkcFSb5SaH8MeSExVzf066UlJ0ASdkk",
    ),
    (
        Algorithm::Aes256Gcm,
        &[],
        None,
        300,
        "$ec2$El7C8A0AAAAHrAITExMTExMTExMTExMpXz-quhAxZ1ljEDfldTXu-YRaDt0dHPdUwIyP4Gyz6uPyf1SvYcEn2MlFASjwhDw0avFGkYeEDKEyhr3cyMjFdUYAoD2_0LLbBpOQatHXAtA2qYyBb6leOrrf1hSjuMr1uB1NdA",
    ),
];

/// The plaintexts of [`FROZEN_COMPRESSED`] (as in `examples/gen_vectors.rs`).
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

#[test]
fn frozen_compressed_envelopes_decrypt_forever() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let handle = KeyHandle::new(FROZEN_HANDLE).unwrap();
    for (i, (alg, steps, ctx, version, text)) in FROZEN_COMPRESSED.iter().enumerate() {
        let loc = Location::from_steps(steps);
        let env = Envelope::parse(text, &loc).unwrap();
        assert_eq!(env.format, Format::V2);
        assert_eq!(env.algorithm, *alg);
        assert_eq!(env.key(), KeyRef::Handle(handle));
        assert_eq!(env.key_version, *version);
        assert_eq!(env.has_context(), ctx.is_some());
        assert!(env.is_compressed());
        assert_eq!(env.nonce(), [0x11 + i as u8; 12]);
        let c = Cipher::new(*alg, &[0x42; 32]);
        let pt = env
            .clone()
            .open(&c, &loc, ctx.map(str::as_bytes), &mut Vec::new())
            .unwrap();
        let expected = compressed_plaintext(i);
        assert_eq!(std::str::from_utf8(&pt).unwrap(), expected, "vector {i}");
        // the envelope is shorter than the plaintext
        assert!(text.len() < expected.len(), "vector {i}");
        // the flag cleared (or another flag set) does not authenticate / is refused
        let mut b = b64.decode(&text[5..]).unwrap();
        assert_eq!(b[0] & 0x0f & 0x02, 0x02);
        b[0] &= !0x02;
        let t = format!("$ec2${}", b64.encode(&b));
        let e = Envelope::parse(&t, &loc)
            .unwrap()
            .open(&c, &loc, ctx.map(str::as_bytes), &mut Vec::new())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "vector {i}");
        b[0] |= 0x02 | 0x04;
        let t = format!("$ec2${}", b64.encode(&b));
        assert_eq!(
            Envelope::parse(&t, &loc).unwrap_err().kind(),
            ErrorKind::MalformedEnvelope
        );
    }
}

#[test]
fn frozen_v2_envelopes_decrypt_forever() {
    let handle = KeyHandle::new(FROZEN_HANDLE).unwrap();
    for (i, (alg, steps, ctx, plaintext, version, text)) in FROZEN_V2.iter().enumerate() {
        let loc = Location::from_steps(steps);
        let env = Envelope::parse(text, &loc).unwrap();
        assert_eq!(env.format, Format::V2);
        assert_eq!(env.algorithm, *alg);
        assert_eq!(env.key(), KeyRef::Handle(handle));
        assert_eq!(env.key_version, *version);
        assert_eq!(env.has_context(), ctx.is_some());
        assert_eq!(env.nonce(), [i.min(5) as u8 + 1; 12]);
        let c = Cipher::new(*alg, &[0x42; 32]);
        let pt = env.open(&c, &loc, ctx.map(str::as_bytes), &mut Vec::new()).unwrap();
        assert_eq!(std::str::from_utf8(&pt).unwrap(), *plaintext, "vector {i}");
    }
}

/// The same value under the same key, nonce and location in both formats: only the header (and so the tag)
/// differs, and the ciphertext is the same; the handle and version are authenticated.
#[test]
fn frozen_v2_envelopes_reject_other_locations_contexts_handles_and_versions() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let c = Cipher::new(Algorithm::Aes256Gcm, &[0x42; 32]);
    let (_, _, _, _, _, text) = FROZEN_V2[2];
    let moved = Location::from_steps(&[LocStep::Key("address"), LocStep::Key("city")]);
    let e = Envelope::parse(text, &moved)
        .unwrap()
        .open(&c, &moved, Some(b"stream-7"), &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    assert!(e.message().contains("address.city"));
    let here = Location::from_steps(&[LocStep::Key("address"), LocStep::Key("street")]);
    let e = Envelope::parse(text, &here)
        .unwrap()
        .open(&c, &here, Some(b"stream-8"), &mut Vec::new())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    // the ciphertext is format 1's (same key, nonce and plaintext): only the authenticated header differs
    let v1 = b64.decode(&FROZEN_V1[0].4[5..]).unwrap();
    let v2 = b64.decode(&FROZEN_V2[0].5[5..]).unwrap();
    assert_eq!(v1.len() - v2.len(), (3 + 10 + 4) - (1 + 8 + 1));
    assert_eq!(v1[17..17 + 12 + 8], v2[10..10 + 12 + 8], "nonce and ciphertext");
    assert_ne!(v1[v1.len() - 16..], v2[v2.len() - 16..], "the tag covers the header");
    // another handle, another version (minimal or not), the flags: parsed or refused, never opened
    let loc = Location::from_steps(&[LocStep::Key("email")]);
    for (at, byte) in [(8, 0x06u8), (9, 0x08), (0, 0x11)] {
        let mut b = v2.clone();
        b[at] = byte;
        let t = format!("$ec2${}", b64.encode(&b));
        let r = Envelope::parse(&t, &loc).and_then(|e| e.open(&c, &loc, None, &mut Vec::new()));
        assert!(r.is_err(), "byte {at} = {byte:#x}");
    }
    let mut b = v2.clone();
    b[9] = 0x87;
    b.insert(10, 0x00);
    let t = format!("$ec2${}", b64.encode(&b));
    assert_eq!(
        Envelope::parse(&t, &loc).unwrap_err().detail(),
        Some("the key version is not minimally encoded")
    );
}

/// Blind-index digests are stored in users' index columns: they must never change for the same root, key id, value.
#[test]
fn frozen_blind_index_digests() {
    use event_crypto_core::blind::{BlindIndexer, Normalize};
    let b = BlindIndexer::new(&[0x11; 32], "tenant-42");
    let none = Normalize::default();
    let lower = Normalize::parse(Some("lower")).unwrap();
    assert_eq!(b.digest("a@x.io", none), FROZEN_BI_A);
    assert_eq!(b.digest("A@X.IO", lower), FROZEN_BI_A);
    assert_eq!(b.digest("", none), FROZEN_BI_EMPTY);
}

const FROZEN_BI_A: &str = "X2zt3qcAIxvpVgW8-mPLvA";
const FROZEN_BI_EMPTY: &str = "mAJAupiekHMdamCrhOp1Ag";
