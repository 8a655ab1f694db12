//! Randomness: data keys come straight from the OS CSPRNG; nonces come from a per-process ChaCha20 CSPRNG seeded
//! from the OS. The nonce generator remembers the process id it was seeded in and reseeds after a fork, so two
//! PostgreSQL backends forked from one postmaster never share a stream.

use crate::aead::{SecretKey, KEY_LEN, NONCE_LEN};
use crate::error::{Error, ErrorKind, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::cell::RefCell;
use zeroize::Zeroizing;

/// Reseed from the OS after this many nonces, bounding how much output depends on one seed.
const RESEED_AFTER: u64 = 1 << 24;

struct NonceRng {
    pid: u32,
    drawn: u64,
    rng: ChaCha20Rng,
}

thread_local! {
    static NONCE_RNG: RefCell<Option<NonceRng>> = const { RefCell::new(None) };
}

fn os_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| {
        Error::new(
            ErrorKind::RandomSource,
            "the operating system's random number generator failed",
        )
        .with_detail(e.to_string())
    })
}

/// A fresh random 256-bit key from the OS CSPRNG.
pub fn random_key() -> Result<SecretKey> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    os_random(key.as_mut())?;
    Ok(key)
}

fn seeded() -> Result<NonceRng> {
    let mut seed = Zeroizing::new([0u8; 32]);
    os_random(seed.as_mut())?;
    Ok(NonceRng {
        pid: std::process::id(),
        drawn: 0,
        rng: ChaCha20Rng::from_seed(*seed),
    })
}

/// Fills `out` with nonces, one per 12-byte chunk, with a single fork check for the batch.
pub fn fill_nonces(out: &mut [[u8; NONCE_LEN]]) -> Result<()> {
    NONCE_RNG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let pid = std::process::id();
        let stale = match slot.as_ref() {
            None => true,
            Some(r) => r.pid != pid || r.drawn >= RESEED_AFTER,
        };
        if stale {
            *slot = Some(seeded()?);
        }
        let r = slot.as_mut().expect("seeded above");
        for n in out.iter_mut() {
            r.rng.fill_bytes(n);
        }
        r.drawn += out.len() as u64;
        Ok(())
    })
}

/// One nonce.
pub fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [[0u8; NONCE_LEN]; 1];
    fill_nonces(&mut n)?;
    Ok(n[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nonces_are_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            assert!(seen.insert(nonce().unwrap()));
        }
    }

    #[test]
    fn keys_are_distinct_and_not_zero() {
        let a = random_key().unwrap();
        let b = random_key().unwrap();
        assert_ne!(*a, *b);
        assert_ne!(*a, [0u8; 32]);
    }
}
