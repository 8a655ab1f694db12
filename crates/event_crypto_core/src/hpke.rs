//! Hybrid public key encryption (RFC 9180), base mode, single shot, for one suite only:
//! DHKEM(X25519, HKDF-SHA256) (kem_id 0x0020), HKDF-SHA256 (kdf_id 0x0001), ChaCha20-Poly1305 (aead_id 0x0003).
//!
//! It seals data keys to a consumer's X25519 public key (see [`crate::grant`]), so that a consumer can decrypt
//! outside PostgreSQL without ever holding the master key.
//!
//! Composition, following RFC 9180 step by step:
//!
//! - DH: `x25519-dalek` (RFC 7748 X25519). An all-zero DH output (a public key of small order) is refused, as
//!   RFC 9180 §7.1.4 requires: [`ErrorKind::InvalidArgument`].
//! - `LabeledExtract(salt, label, ikm) = HKDF-Extract(salt, "HPKE-v1" || suite_id || label || ikm)` and
//!   `LabeledExpand(prk, label, info, L) = HKDF-Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info, L)`
//!   (§4), HMAC-SHA256 from `hmac`/`hkdf`. The KEM's suite_id is `"KEM" || I2OSP(0x0020, 2)` (§4.1); the key
//!   schedule's is `"HPKE" || I2OSP(0x0020, 2) || I2OSP(0x0001, 2) || I2OSP(0x0003, 2)` (§5.1).
//! - Encap/Decap (§4.1): `shared_secret = LabeledExpand(LabeledExtract("", "eae_prk", dh), "shared_secret",
//!   enc || pkRm, 32)`, `enc` the ephemeral public key.
//! - KeySchedule, mode base (§5.1): `psk = psk_id = ""`; `key_schedule_context = 0x00 || psk_id_hash || info_hash`;
//!   `secret = LabeledExtract(shared_secret, "secret", "")`; `key` (32 bytes) and `base_nonce` (12 bytes) expanded
//!   from it. The exporter secret is not derived (no exports).
//! - Seal/Open with sequence number 0 only: the nonce is `base_nonce`; ChaCha20-Poly1305 through [`Cipher`].
//!
//! Every secret (DH output, PRKs, shared secret, key, the HMAC/HKDF states) lives in zeroized buffers or is wiped
//! after use; private keys are zeroized on drop. Checked against the test vector of RFC 9180 Appendix A.2.1.
//!
//! # Text forms
//!
//! - Public key: `ecpk1:` followed by the standard base64 (with padding) of the 32 bytes.
//! - Private key (a key file's content): `ecsk1:` followed by the standard base64 of the 32 bytes, one line.
//!
//! Parsing trims ASCII white space around the text; error messages never contain the text.

use crate::aead::{Algorithm, Cipher, NONCE_LEN, TAG_LEN};
use crate::error::{Error, ErrorKind, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// The length of X25519 public and private keys, and of `enc` (the encapsulated key: an X25519 public key).
pub const KEY_LEN: usize = 32;

/// KEM identifier of DHKEM(X25519, HKDF-SHA256).
pub const KEM_ID: u16 = 0x0020;
/// KDF identifier of HKDF-SHA256.
pub const KDF_ID: u16 = 0x0001;
/// AEAD identifier of ChaCha20-Poly1305.
pub const AEAD_ID: u16 = 0x0003;

/// The text form of a public key starts with this.
pub const PUBLIC_KEY_PREFIX: &str = "ecpk1:";
/// The text form of a private key starts with this.
pub const PRIVATE_KEY_PREFIX: &str = "ecsk1:";

/// Mode identifier of the base mode (§5.1, Table 1).
const MODE_BASE: u8 = 0x00;
/// Length of the hash output of HKDF-SHA256 (Nh), and of the KEM's shared secret (Nsecret).
const NH: usize = 32;
/// The KEM's suite_id: "KEM" || I2OSP(kem_id, 2).
const KEM_SUITE_ID: [u8; 5] = [b'K', b'E', b'M', 0x00, 0x20];
/// The key schedule's suite_id: "HPKE" || I2OSP(kem_id, 2) || I2OSP(kdf_id, 2) || I2OSP(aead_id, 2).
const HPKE_SUITE_ID: [u8; 10] = [b'H', b'P', b'K', b'E', 0x00, 0x20, 0x00, 0x01, 0x00, 0x03];
/// The version label of every labeled extract and expand.
const VERSION_LABEL: &[u8] = b"HPKE-v1";

/// An X25519 private key. Zeroized on drop; `Debug` never shows it.
pub struct PrivateKey(x25519_dalek::StaticSecret);

/// An X25519 public key (the 32 bytes of RFC 7748).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PublicKey([u8; KEY_LEN]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// A new private key from the operating system's random source; [`ErrorKind::RandomSource`] when it fails.
    pub fn generate() -> Result<PrivateKey> {
        let bytes = crate::random::random_key()?;
        Ok(PrivateKey::from_bytes(&bytes))
    }

    /// The private key with these 32 bytes (clamped when used, as RFC 7748 says; the bytes are kept as given).
    pub fn from_bytes(b: &[u8; KEY_LEN]) -> PrivateKey {
        PrivateKey(x25519_dalek::StaticSecret::from(*b))
    }

    /// The key's 32 bytes, in a buffer that is zeroized when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// Parses the text of a private key file: `ecsk1:` and the standard base64 of the 32 bytes, with optional
    /// white space around it. The text is never part of an error.
    pub fn parse_text(text: &str) -> Result<PrivateKey> {
        let bytes = parse_key_text(text, PRIVATE_KEY_PREFIX).map_err(|reason| {
            Error::invalid_argument("invalid event_crypto private key")
                .with_detail(reason)
                .with_hint("A private key file holds one line: ecsk1: followed by the standard base64 of 32 bytes.")
        })?;
        Ok(PrivateKey::from_bytes(&bytes))
    }

    /// The text form (`ecsk1:` + base64 + a line feed), the content of a private key file; zeroized when dropped.
    pub fn to_text(&self) -> Zeroizing<String> {
        let bytes = self.to_bytes();
        // the capacity is exact, so the key text is never copied by a reallocation
        let mut s = Zeroizing::new(String::with_capacity(PRIVATE_KEY_PREFIX.len() + 44 + 1));
        s.push_str(PRIVATE_KEY_PREFIX);
        STANDARD.encode_string(bytes.as_ref(), &mut s);
        s.push('\n');
        s
    }
}

impl PublicKey {
    pub fn from_bytes(b: [u8; KEY_LEN]) -> PublicKey {
        PublicKey(b)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses `ecpk1:` and the standard base64 (with padding) of the 32 bytes, with optional white space around
    /// it. The text is never part of an error.
    pub fn parse_text(text: &str) -> Result<PublicKey> {
        let bytes = parse_key_text(text, PUBLIC_KEY_PREFIX).map_err(|reason| {
            Error::invalid_argument("invalid event_crypto public key")
                .with_detail(reason)
                .with_hint("A public key is written ecpk1: followed by the standard base64 (with padding) of 32 bytes.")
        })?;
        Ok(PublicKey(*bytes))
    }

    /// The text form: `ecpk1:` and the standard base64 of the 32 bytes.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(PUBLIC_KEY_PREFIX.len() + 44);
        s.push_str(PUBLIC_KEY_PREFIX);
        STANDARD.encode_string(self.0, &mut s);
        s
    }
}

impl fmt::Display for PublicKey {
    /// The text form (`ecpk1:…`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// The 32 bytes of a key's text form; the error is a reason that never quotes the text.
fn parse_key_text(text: &str, prefix: &str) -> std::result::Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let t = text.trim_ascii();
    let Some(b64) = t.strip_prefix(prefix) else {
        return Err(format!("the key does not start with {prefix}"));
    };
    // base64 decoding wants room for its estimate (33 bytes for 44 characters) before it checks the length
    let mut buf = Zeroizing::new([0u8; 48]);
    let n = match STANDARD.decode_slice(b64.as_bytes(), buf.as_mut()) {
        Ok(n) => n,
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            return Err(format!("the key is longer than {KEY_LEN} bytes"))
        }
        Err(base64::DecodeSliceError::DecodeError(_)) => {
            return Err(format!("the text after {prefix} is not standard base64 with padding"))
        }
    };
    if n != KEY_LEN {
        return Err(format!("the key is {n} bytes long, not {KEY_LEN}"));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&buf[..KEY_LEN]);
    Ok(key)
}

/// `LabeledExtract(salt, label, ikm)` (§4): HKDF-Extract, that is HMAC-SHA256 keyed with `salt`, of
/// `"HPKE-v1" || suite_id || label || ikm`.
fn labeled_extract(suite_id: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Zeroizing<[u8; NH]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(VERSION_LABEL);
    mac.update(suite_id);
    mac.update(label);
    mac.update(ikm);
    let mut out = mac.finalize_reset().into_bytes();
    crate::wipe(&mut mac);
    let mut prk = Zeroizing::new([0u8; NH]);
    prk.copy_from_slice(&out);
    out.as_mut_slice().zeroize();
    prk
}

/// `LabeledExpand(prk, label, info, L)` (§4) with `L = out.len()`: HKDF-Expand of `prk` with the info
/// `I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info` (`info` given in parts, concatenated).
fn labeled_expand(suite_id: &[u8], prk: &[u8; NH], label: &[u8], info: &[&[u8]], out: &mut [u8]) {
    let len = u16::try_from(out.len())
        .expect("HPKE expands at most 32 bytes here")
        .to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![&len, VERSION_LABEL, suite_id, label];
    parts.extend_from_slice(info);
    let mut hk = Hkdf::<Sha256>::from_prk(prk).expect("the PRK is one hash output long");
    hk.expand_multi_info(&parts, out)
        .expect("HKDF-SHA256 expands up to 8160 bytes");
    crate::wipe(&mut hk);
}

/// The DH output `sk`·`pk`; Err for an all-zero output (a public key of small order: RFC 9180 §7.1.4).
fn dh(sk: &PrivateKey, pk: &[u8; KEY_LEN]) -> Result<x25519_dalek::SharedSecret> {
    let shared = sk.0.diffie_hellman(&x25519_dalek::PublicKey::from(*pk));
    if bool::from(shared.as_bytes().ct_eq(&[0u8; KEY_LEN])) {
        return Err(
            Error::invalid_argument("the X25519 public key is of small order").with_detail(
                "The Diffie-Hellman result is all zero (RFC 9180, section 7.1.4): the key is not a usable public key.",
            ),
        );
    }
    Ok(shared)
}

/// `ExtractAndExpand(dh, kem_context)` (§4.1) with `kem_context = enc || pkRm`.
fn extract_and_expand(dh: &[u8; KEY_LEN], enc: &[u8; KEY_LEN], pk_r: &[u8; KEY_LEN]) -> Zeroizing<[u8; NH]> {
    let eae_prk = labeled_extract(&KEM_SUITE_ID, b"", b"eae_prk", dh);
    let mut shared_secret = Zeroizing::new([0u8; NH]);
    labeled_expand(
        &KEM_SUITE_ID,
        &eae_prk,
        b"shared_secret",
        &[enc, pk_r],
        shared_secret.as_mut(),
    );
    shared_secret
}

/// `Encap(pkR)` (§4.1) with the ephemeral key `sk_e`: (shared_secret, enc).
fn encap(sk_e: &PrivateKey, pk_r: &PublicKey) -> Result<(Zeroizing<[u8; NH]>, [u8; KEY_LEN])> {
    let shared = dh(sk_e, &pk_r.0)?;
    let enc = sk_e.public_key().0;
    Ok((extract_and_expand(shared.as_bytes(), &enc, &pk_r.0), enc))
}

/// `Decap(enc, skR)` (§4.1): the shared secret.
fn decap(enc: &[u8; KEY_LEN], sk_r: &PrivateKey) -> Result<Zeroizing<[u8; NH]>> {
    let shared = dh(sk_r, enc)?;
    Ok(extract_and_expand(shared.as_bytes(), enc, &sk_r.public_key().0))
}

/// The AEAD key and base nonce of a context.
struct Schedule {
    key: Zeroizing<[u8; 32]>,
    base_nonce: [u8; NONCE_LEN],
}

/// `key_schedule_context = mode || psk_id_hash || info_hash` for the base mode.
fn key_schedule_context(info: &[u8]) -> [u8; 1 + 2 * NH] {
    let psk_id_hash = labeled_extract(&HPKE_SUITE_ID, b"", b"psk_id_hash", b"");
    let info_hash = labeled_extract(&HPKE_SUITE_ID, b"", b"info_hash", info);
    let mut ctx = [0u8; 1 + 2 * NH];
    ctx[0] = MODE_BASE;
    ctx[1..1 + NH].copy_from_slice(psk_id_hash.as_ref());
    ctx[1 + NH..].copy_from_slice(info_hash.as_ref());
    ctx
}

/// `KeySchedule(mode_base, shared_secret, info, "", "")` (§5.1), without the exporter secret.
fn key_schedule(shared_secret: &[u8; NH], info: &[u8]) -> Schedule {
    let ctx = key_schedule_context(info);
    let secret = labeled_extract(&HPKE_SUITE_ID, shared_secret, b"secret", b"");
    let mut s = Schedule {
        key: Zeroizing::new([0u8; 32]),
        base_nonce: [0u8; NONCE_LEN],
    };
    labeled_expand(&HPKE_SUITE_ID, &secret, b"key", &[&ctx], s.key.as_mut());
    labeled_expand(&HPKE_SUITE_ID, &secret, b"base_nonce", &[&ctx], &mut s.base_nonce);
    s
}

/// Seals `plaintext` to `pk_r` under a fresh ephemeral key (`SetupBaseS` then `Seal` with sequence number 0).
/// Returns `(enc, ciphertext || tag)`.
pub fn seal(pk_r: &PublicKey, info: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<([u8; KEY_LEN], Vec<u8>)> {
    let sk_e = PrivateKey::generate()?;
    seal_with_ephemeral(&sk_e, pk_r, info, aad, plaintext)
}

/// [`seal`] with the ephemeral private key given: deterministic, for test vectors. Never reuse `sk_e`.
pub fn seal_with_ephemeral(
    sk_e: &PrivateKey,
    pk_r: &PublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; KEY_LEN], Vec<u8>)> {
    let (shared_secret, enc) = encap(sk_e, pk_r)?;
    let s = key_schedule(&shared_secret, info);
    let cipher = Cipher::new(Algorithm::ChaCha20Poly1305, &s.key);
    let mut ct = Vec::with_capacity(plaintext.len() + TAG_LEN);
    ct.extend_from_slice(plaintext);
    // sequence number 0: the nonce is base_nonce itself
    let tag = cipher.seal_in_place(&s.base_nonce, aad, &mut ct);
    ct.extend_from_slice(&tag);
    Ok((enc, ct))
}

/// Opens what [`seal`] made for `sk_r`'s public key (`SetupBaseR` then `Open` with sequence number 0). Any
/// difference in `enc`, `info`, `aad` or `ct` gives [`ErrorKind::AuthenticationFailed`] (an `enc` of small order
/// gives [`ErrorKind::InvalidArgument`]).
pub fn open(sk_r: &PrivateKey, enc: &[u8; KEY_LEN], info: &[u8], aad: &[u8], ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let Some(n) = ct.len().checked_sub(TAG_LEN) else {
        return Err(auth_failed());
    };
    let shared_secret = decap(enc, sk_r)?;
    let s = key_schedule(&shared_secret, info);
    let cipher = Cipher::new(Algorithm::ChaCha20Poly1305, &s.key);
    let mut pt = Zeroizing::new(ct[..n].to_vec());
    let tag: [u8; TAG_LEN] = ct[n..].try_into().expect("TAG_LEN bytes");
    if !cipher.open_in_place(&s.base_nonce, aad, &mut pt, &tag) {
        return Err(auth_failed());
    }
    Ok(pt)
}

fn auth_failed() -> Error {
    Error::new(ErrorKind::AuthenticationFailed, "HPKE decryption failed")
        .with_detail("The sealed data was altered, or was sealed to another public key or with other associated data.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<const N: usize>(s: &str) -> [u8; N] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    // RFC 9180, Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base setup
    // (mode 0, kem_id 32, kdf_id 1, aead_id 3).
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    const SK_EM: &str = "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600";
    const PK_EM: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
    const SK_RM: &str = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb";
    const PK_RM: &str = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
    const ENC: &str = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
    const SHARED_SECRET: &str = "0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7";
    const KEY_SCHEDULE_CONTEXT: &str = "00431df6cd95e11ff49d7013563baf7f11588c75a6611ee2a4404a49306ae4cfc5b69c5718a60cc5876c358d3f7fc31ddb598503f67be58ea1e798c0bb19eb9796";
    const SECRET: &str = "5b9cd775e64b437a2335cf499361b2e0d5e444d5cb41a8a53336d8fe402282c6";
    const KEY: &str = "ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91";
    const BASE_NONCE: &str = "5c4d98150661b848853b547f";
    // the encryption with sequence number 0
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";
    const AAD: &str = "436f756e742d30";
    const CT: &str = "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28";

    #[test]
    fn suite_ids_are_those_of_rfc_9180() {
        assert_eq!(&KEM_SUITE_ID[..3], b"KEM");
        assert_eq!(KEM_SUITE_ID[3..], KEM_ID.to_be_bytes());
        assert_eq!(&HPKE_SUITE_ID[..4], b"HPKE");
        assert_eq!(HPKE_SUITE_ID[4..6], KEM_ID.to_be_bytes());
        assert_eq!(HPKE_SUITE_ID[6..8], KDF_ID.to_be_bytes());
        assert_eq!(HPKE_SUITE_ID[8..], AEAD_ID.to_be_bytes());
    }

    #[test]
    fn rfc_9180_a_2_1_key_schedule() {
        let sk_e = PrivateKey::from_bytes(&h(SK_EM));
        let sk_r = PrivateKey::from_bytes(&h(SK_RM));
        assert_eq!(sk_e.public_key().as_bytes(), &h(PK_EM));
        assert_eq!(sk_r.public_key().as_bytes(), &h(PK_RM));
        let info = hex::decode(INFO).unwrap();

        let (shared_secret, enc) = encap(&sk_e, &sk_r.public_key()).unwrap();
        assert_eq!(enc, h(ENC));
        assert_eq!(*shared_secret, h::<32>(SHARED_SECRET));
        assert_eq!(*decap(&enc, &sk_r).unwrap(), h::<32>(SHARED_SECRET));

        assert_eq!(key_schedule_context(&info), h::<65>(KEY_SCHEDULE_CONTEXT));
        let secret = labeled_extract(&HPKE_SUITE_ID, &shared_secret[..], b"secret", b"");
        assert_eq!(*secret, h::<32>(SECRET));
        let s = key_schedule(&shared_secret, &info);
        assert_eq!(*s.key, h::<32>(KEY));
        assert_eq!(s.base_nonce, h::<12>(BASE_NONCE));
    }

    #[test]
    fn rfc_9180_a_2_1_first_encryption() {
        let sk_e = PrivateKey::from_bytes(&h(SK_EM));
        let sk_r = PrivateKey::from_bytes(&h(SK_RM));
        let info = hex::decode(INFO).unwrap();
        let aad = hex::decode(AAD).unwrap();
        let pt = hex::decode(PT).unwrap();
        let (enc, ct) = seal_with_ephemeral(&sk_e, &PublicKey::from_bytes(h(PK_RM)), &info, &aad, &pt).unwrap();
        assert_eq!(enc, h(ENC));
        assert_eq!(hex::encode(&ct), CT);
        let opened = open(&sk_r, &enc, &info, &aad, &ct).unwrap();
        assert_eq!(*opened, pt);
    }
}
