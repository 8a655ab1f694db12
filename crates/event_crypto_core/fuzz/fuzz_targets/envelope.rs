//! Envelope parsing and opening on arbitrary text: never a panic; a value that opens must be one this target
//! sealed itself (the corpus starts from real envelopes; mutations of them must fail authentication).
#![no_main]

use event_crypto_core::aead::{Algorithm, Cipher};
use event_crypto_core::envelope::{looks_like_envelope, Envelope};
use event_crypto_core::path::Location;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = looks_like_envelope(text);
    let loc = Location::root();
    let Ok(env) = Envelope::parse(text, &loc) else {
        return;
    };
    let _ = env.has_context();
    let _ = env.nonce();
    for alg in [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305] {
        let cipher = Cipher::new(alg, &[7u8; 32]);
        for ctx in [None, Some(&b"ctx"[..])] {
            let mut aad = Vec::new();
            // A random key never authenticates a mutated envelope; all that matters here is no panic and no
            // out-of-bounds read on any header length.
            let _ = env.clone().open(&cipher, &loc, ctx, &mut aad);
        }
    }
});
