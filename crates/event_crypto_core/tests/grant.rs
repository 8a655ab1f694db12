//! Key grants: a data key sealed to a consumer's public key, bound to everything the consumer is told about it.

use event_crypto_core::aead::Algorithm;
use event_crypto_core::envelope::KeyHandle;
use event_crypto_core::grant::{
    aad, open_grant, seal_grant, seal_grant_with_ephemeral, GrantInfo, Purpose, GRANT_LEN, INFO, MAX_NAME_LEN,
};
use event_crypto_core::hpke::{PrivateKey, PublicKey};
use event_crypto_core::ErrorKind;

const HANDLE: KeyHandle = match KeyHandle::new(0x5ec2_f00d_0000_0007) {
    Some(h) => h,
    None => panic!(),
};

fn info() -> GrantInfo<'static> {
    GrantInfo {
        consumer: "analytics",
        key_id: "subject:alice",
        handle: HANDLE,
        version: 3,
        purpose: Purpose::Data,
        algorithm: Algorithm::ChaCha20Poly1305,
        issued_at: 1_700_000_000_123_456,
        expires_at: 1_700_000_300_123_456,
    }
}

fn consumer() -> PrivateKey {
    PrivateKey::from_bytes(&[0x11; 32])
}

#[test]
fn round_trip() {
    let sk = consumer();
    let key = [0x42u8; 32];
    for purpose in [Purpose::Data, Purpose::BlindIndex] {
        for algorithm in Algorithm::ALL {
            let i = GrantInfo {
                purpose,
                algorithm,
                ..info()
            };
            let g = seal_grant(&sk.public_key(), &i, &key).unwrap();
            assert_eq!(g.len(), GRANT_LEN);
            assert_eq!(*open_grant(&sk, &i, &g).unwrap(), key);
        }
    }
    // fresh ephemeral keys: two grants of one key differ
    let a = seal_grant(&sk.public_key(), &info(), &key).unwrap();
    let b = seal_grant(&sk.public_key(), &info(), &key).unwrap();
    assert_ne!(a, b);
}

#[test]
fn every_field_is_bound() {
    let sk = consumer();
    let key = [0x42u8; 32];
    let g = seal_grant(&sk.public_key(), &info(), &key).unwrap();
    let other_handle = KeyHandle::new(0x5ec2_f00d_0000_0008).unwrap();
    let changed: Vec<(&str, GrantInfo)> = vec![
        (
            "consumer",
            GrantInfo {
                consumer: "analytic",
                ..info()
            },
        ),
        ("consumer empty", GrantInfo { consumer: "", ..info() }),
        (
            "key_id",
            GrantInfo {
                key_id: "subject:alicf",
                ..info()
            },
        ),
        (
            "handle",
            GrantInfo {
                handle: other_handle,
                ..info()
            },
        ),
        ("version", GrantInfo { version: 4, ..info() }),
        (
            "purpose",
            GrantInfo {
                purpose: Purpose::BlindIndex,
                ..info()
            },
        ),
        (
            "algorithm",
            GrantInfo {
                algorithm: Algorithm::Aes256Gcm,
                ..info()
            },
        ),
        (
            "issued_at",
            GrantInfo {
                issued_at: 1_700_000_000_123_457,
                ..info()
            },
        ),
        (
            "expires_at",
            GrantInfo {
                expires_at: 1_700_000_300_123_457,
                ..info()
            },
        ),
        // the length prefixes keep the two strings apart
        (
            "boundary",
            GrantInfo {
                consumer: "analyticss",
                key_id: "ubject:alice",
                ..info()
            },
        ),
    ];
    for (what, i) in changed {
        let e = open_grant(&sk, &i, &g).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{what}");
        assert!(!e.to_string().contains("42424242"));
    }
    // another consumer's private key
    let e = open_grant(&PrivateKey::from_bytes(&[0x12; 32]), &info(), &g).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed);
    // every bit of the grant
    for bit in 0..GRANT_LEN * 8 {
        let mut t = g.clone();
        t[bit / 8] ^= 1 << (bit % 8);
        let e = open_grant(&sk, &info(), &t).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::AuthenticationFailed | ErrorKind::InvalidArgument),
            "bit {bit}"
        );
    }
}

#[test]
fn wrong_length_is_refused() {
    let sk = consumer();
    let g = seal_grant(&sk.public_key(), &info(), &[7; 32]).unwrap();
    for t in [&g[..0], &g[..GRANT_LEN - 1], &g[..32]] {
        let e = open_grant(&sk, &info(), t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("80 bytes"));
    }
    let mut longer = g.clone();
    longer.push(0);
    assert_eq!(
        open_grant(&sk, &info(), &longer).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn over_long_names_are_refused() {
    let sk = consumer();
    let long = "x".repeat(MAX_NAME_LEN + 1);
    for i in [
        GrantInfo {
            consumer: &long,
            ..info()
        },
        GrantInfo {
            key_id: &long,
            ..info()
        },
    ] {
        let e = seal_grant(&sk.public_key(), &i, &[7; 32]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let e = open_grant(&sk, &i, &[0; GRANT_LEN]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
    let longest = "x".repeat(MAX_NAME_LEN);
    let i = GrantInfo {
        key_id: &longest,
        ..info()
    };
    let g = seal_grant(&sk.public_key(), &i, &[7; 32]).unwrap();
    assert_eq!(*open_grant(&sk, &i, &g).unwrap(), [7; 32]);
}

#[test]
fn small_order_consumer_key_is_refused() {
    let e = seal_grant(&PublicKey::from_bytes([0; 32]), &info(), &[7; 32]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn aad_layout_byte_for_byte() {
    let mut expected = Vec::new();
    expected.extend_from_slice(b"event_crypto grant v1");
    expected.push(0); // purpose: data
    expected.extend_from_slice(&[0, 9]);
    expected.extend_from_slice(b"analytics");
    expected.extend_from_slice(&[0, 13]);
    expected.extend_from_slice(b"subject:alice");
    expected.extend_from_slice(&[0x5e, 0xc2, 0xf0, 0x0d, 0, 0, 0, 7]);
    expected.extend_from_slice(&[0, 0, 0, 3]);
    expected.push(2); // chacha20-poly1305
    expected.extend_from_slice(&1_700_000_000_123_456i64.to_be_bytes());
    expected.extend_from_slice(&1_700_000_300_123_456i64.to_be_bytes());
    assert_eq!(aad(&info()), expected);
    assert_eq!(
        hex::encode(aad(&info())),
        "6576656e745f63727970746f206772616e74207631\
         00\
         0009616e616c7974696373\
         000d7375626a6563743a616c696365\
         5ec2f00d00000007\
         00000003\
         02\
         00060a2418202240\
         00060a242a01c540"
    );
    let bi = GrantInfo {
        purpose: Purpose::BlindIndex,
        algorithm: Algorithm::Aes256Gcm,
        issued_at: -1,
        ..info()
    };
    let a = aad(&bi);
    assert_eq!(a[21], 1);
    assert_eq!(a[21 + 1 + 2 + 9 + 2 + 13 + 8 + 4], 1);
    assert_eq!(a[a.len() - 16..a.len() - 8], [0xff; 8]);
    assert_eq!(INFO, b"event_crypto consumer key grant v1");
    assert_eq!(
        (Purpose::Data.code(), Purpose::BlindIndex.code()),
        (0, 1),
        "codes of the AAD"
    );
    for p in [Purpose::Data, Purpose::BlindIndex] {
        assert_eq!(Purpose::from_code(p.code()), Some(p));
        assert_eq!(Purpose::from_name(p.name()), Some(p));
    }
    assert_eq!(Purpose::from_name("blind_index"), Some(Purpose::BlindIndex));
    assert_eq!(Purpose::from_code(2), None);
}

/// A grant made by `seal_grant_with_ephemeral` with the ephemeral private key 0x22 * 32, for the consumer whose
/// private key is 0x11 * 32, of the data key 0x42 * 32, with `info()`. Checked independently of this crate (X25519,
/// HKDF-SHA256 and ChaCha20-Poly1305 composed after RFC 9180 with Python's `cryptography`). Never edit it: the
/// extension and the clients must agree on this format.
const FROZEN_GRANT: &str = "0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20\
                            0e89f2896e2bf060d685f9c497716c069d580c3b7fe9de75eb65f270719530fe\
                            5058dd1428a82116c53860ddf789e644";

#[test]
fn frozen_grant() {
    let sk = consumer();
    let sk_e = PrivateKey::from_bytes(&[0x22; 32]);
    let g = seal_grant_with_ephemeral(&sk_e, &sk.public_key(), &info(), &[0x42; 32]).unwrap();
    assert_eq!(hex::encode(&g), FROZEN_GRANT);
    assert_eq!(&g[..32], sk_e.public_key().as_bytes());
    let frozen = hex::decode(FROZEN_GRANT).unwrap();
    assert_eq!(*open_grant(&sk, &info(), &frozen).unwrap(), [0x42; 32]);
}
