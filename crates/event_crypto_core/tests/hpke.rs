//! HPKE (RFC 9180 base mode, X25519 / HKDF-SHA256 / ChaCha20-Poly1305) through the public API: round trips, every
//! kind of tampering, small-order keys, the text forms of keys. The RFC's known answers are unit tests in
//! `src/hpke.rs`.

use event_crypto_core::hpke::{self, open, seal, seal_with_ephemeral, PrivateKey, PublicKey, KEY_LEN};
use event_crypto_core::{Error, ErrorKind};

fn pair(seed: u8) -> (PrivateKey, PublicKey) {
    let sk = PrivateKey::from_bytes(&[seed; 32]);
    let pk = sk.public_key();
    (sk, pk)
}

/// X25519 public keys of small order (RFC 7748 section 5 and the "cofactor" list of points): every DH with them is
/// all zero.
const SMALL_ORDER: &[&str] = &[
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
];

fn small_order() -> impl Iterator<Item = [u8; 32]> {
    SMALL_ORDER.iter().map(|s| hex::decode(s).unwrap().try_into().unwrap())
}

#[test]
fn round_trips_every_length() {
    let (sk, pk) = pair(7);
    for len in [0usize, 1, 15, 16, 17, 32, 63, 64, 65, 1000, 70_000] {
        let pt: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let (enc, ct) = seal(&pk, b"info", b"aad", &pt).unwrap();
        assert_eq!(ct.len(), len + 16);
        assert_eq!(*open(&sk, &enc, b"info", b"aad", &ct).unwrap(), pt, "length {len}");
    }
}

#[test]
fn fresh_ephemeral_keys_every_seal() {
    let (_, pk) = pair(7);
    let (e1, c1) = seal(&pk, b"", b"", b"same").unwrap();
    let (e2, c2) = seal(&pk, b"", b"", b"same").unwrap();
    assert_ne!(e1, e2);
    assert_ne!(c1, c2);
}

#[test]
fn seal_with_ephemeral_is_deterministic() {
    let (sk, pk) = pair(7);
    let (sk_e, pk_e) = pair(9);
    let a = seal_with_ephemeral(&sk_e, &pk, b"i", b"a", b"p").unwrap();
    let b = seal_with_ephemeral(&sk_e, &pk, b"i", b"a", b"p").unwrap();
    assert_eq!(a, b);
    assert_eq!(&a.0, pk_e.as_bytes(), "enc is the ephemeral public key");
    assert_eq!(*open(&sk, &a.0, b"i", b"a", &a.1).unwrap(), b"p");
}

#[test]
fn any_difference_fails_authentication() {
    let (sk, pk) = pair(7);
    let (enc, ct) = seal(&pk, b"info", b"aad", b"attack at dawn").unwrap();
    let auth = |r: Result<zeroize::Zeroizing<Vec<u8>>, Error>| {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::AuthenticationFailed);
    };
    auth(open(&sk, &enc, b"info", b"aaD", &ct));
    auth(open(&sk, &enc, b"info", b"", &ct));
    auth(open(&sk, &enc, b"infO", b"aad", &ct));
    auth(open(&sk, &enc, b"", b"aad", &ct));
    // another recipient
    let (other, _) = pair(8);
    auth(open(&other, &enc, b"info", b"aad", &ct));
    // every bit of enc and of the ciphertext and tag
    for i in 0..KEY_LEN * 8 {
        let mut e = enc;
        e[i / 8] ^= 1 << (i % 8);
        match open(&sk, &e, b"info", b"aad", &ct) {
            Err(err) => assert!(
                matches!(err.kind(), ErrorKind::AuthenticationFailed | ErrorKind::InvalidArgument),
                "enc bit {i}: {err:?}"
            ),
            Ok(_) => panic!("enc bit {i} flipped and it opened"),
        }
    }
    for i in 0..ct.len() * 8 {
        let mut c = ct.clone();
        c[i / 8] ^= 1 << (i % 8);
        auth(open(&sk, &enc, b"info", b"aad", &c));
    }
    auth(open(&sk, &enc, b"info", b"aad", &ct[..ct.len() - 1]));
    auth(open(&sk, &enc, b"info", b"aad", &ct[..15]));
    auth(open(&sk, &enc, b"info", b"aad", b""));
    let mut longer = ct.clone();
    longer.push(0);
    auth(open(&sk, &enc, b"info", b"aad", &longer));
}

#[test]
fn small_order_public_keys_are_refused() {
    let (sk, _) = pair(7);
    for p in small_order() {
        let e = seal(&PublicKey::from_bytes(p), b"", b"", b"x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", hex::encode(p));
        assert!(e.message().contains("small order"));
        let e = seal_with_ephemeral(&sk, &PublicKey::from_bytes(p), b"", b"", b"x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        // as enc on the recipient's side
        let e = open(&sk, &p, b"", b"", &[0u8; 32]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", hex::encode(p));
    }
}

#[test]
fn key_bytes_round_trip() {
    let sk = PrivateKey::generate().unwrap();
    let again = PrivateKey::from_bytes(&sk.to_bytes());
    assert_eq!(sk.public_key(), again.public_key());
    assert_eq!(*again.to_bytes(), *sk.to_bytes());
    assert_ne!(*PrivateKey::generate().unwrap().to_bytes(), *sk.to_bytes());
    let pk = sk.public_key();
    assert_eq!(PublicKey::from_bytes(*pk.as_bytes()), pk);
}

#[test]
fn text_forms_print_and_parse() {
    // RFC 7748 section 6.1: Alice's private and public keys
    let sk_bytes: [u8; 32] = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
        .unwrap()
        .try_into()
        .unwrap();
    let sk = PrivateKey::from_bytes(&sk_bytes);
    assert_eq!(
        hex::encode(sk.public_key().as_bytes()),
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    );
    let text = sk.to_text();
    assert_eq!(&*text, "ecsk1:dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n");
    let pk = sk.public_key();
    assert_eq!(pk.to_text(), "ecpk1:hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=");
    assert_eq!(pk.to_string(), pk.to_text());

    assert_eq!(*PrivateKey::parse_text(&text).unwrap().to_bytes(), sk_bytes);
    assert_eq!(
        *PrivateKey::parse_text(" \t\r\necsk1:dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\r\n\n")
            .unwrap()
            .to_bytes(),
        sk_bytes
    );
    assert_eq!(PublicKey::parse_text(&pk.to_text()).unwrap(), pk);
    assert_eq!(PublicKey::parse_text(&format!("\n {}\n", pk.to_text())).unwrap(), pk);

    let fresh = PrivateKey::generate().unwrap();
    assert_eq!(
        PrivateKey::parse_text(&fresh.to_text()).unwrap().public_key(),
        fresh.public_key()
    );
}

#[test]
fn bad_text_forms_are_refused_without_echo() {
    let sk = PrivateKey::from_bytes(&[0x5a; 32]);
    let sk_text = sk.to_text();
    let b64 = sk_text.trim_end().strip_prefix("ecsk1:").unwrap().to_string();
    let pk_text = sk.public_key().to_text();
    let pk_b64 = pk_text.strip_prefix("ecpk1:").unwrap().to_string();
    let bad_private = [
        String::new(),
        b64.clone(),                                    // no prefix
        format!("ecpk1:{b64}"),                         // the public prefix
        format!("ECSK1:{b64}"),                         // prefixes are case-sensitive
        format!("ecsk1:{}", b64.trim_end_matches('=')), // no padding
        format!("ecsk1:{}", &b64[..40]),                // too short
        format!("ecsk1:{b64}AAAA"),                     // too long
        format!("ecsk1:_{}", &b64[1..]),                // base64url
        format!("ecsk1: {b64}"),                        // space inside
        format!("ecsk1:{b64}\nsecond line"),
        format!("ecsk1:{}", hex::encode([0x5a; 32])),
    ];
    for t in &bad_private {
        let e = PrivateKey::parse_text(t).expect_err(t);
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{t:?}");
        assert!(e.hint().is_some());
        assert_no_echo(&e, &b64);
    }
    let bad_public = [
        String::new(),
        pk_b64.clone(),
        format!("ecsk1:{pk_b64}"),
        format!("ecpk1:{}", pk_b64.trim_end_matches('=')),
        format!("ecpk1:{}", &pk_b64[..40]),
        format!("ecpk1:{pk_b64}AAAA"),
        format!("ecpk1:{}=", pk_b64),
        format!("ecpk1:{}", hex::encode(sk.public_key().as_bytes())),
    ];
    for t in &bad_public {
        let e = PublicKey::parse_text(t).expect_err(t);
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{t:?}");
        assert!(e.hint().is_some());
        assert_no_echo(&e, &pk_b64);
    }
}

fn assert_no_echo(e: &Error, key_text: &str) {
    for part in [Some(e.message()), e.detail(), e.hint(), Some(&e.to_string()[..])]
        .into_iter()
        .flatten()
    {
        for w in key_text.as_bytes().windows(8) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(!part.contains(w), "{part:?} quotes the key text");
        }
    }
    assert!(!format!("{e:?}").contains(&key_text[..12]));
}

#[test]
fn private_keys_never_show_in_debug() {
    let sk = PrivateKey::from_bytes(&[0xab; 32]);
    let shown = format!("{sk:?} {sk:#?}");
    assert!(
        !shown.contains("171") && !shown.to_lowercase().contains("ab"),
        "{shown}"
    );
    assert!(shown.contains("redacted"));
}

#[test]
fn suite_identifiers() {
    assert_eq!((hpke::KEM_ID, hpke::KDF_ID, hpke::AEAD_ID), (0x0020, 0x0001, 0x0003));
    assert_eq!(KEY_LEN, 32);
}
