//! Randomness: data keys and key handles come straight from the OS CSPRNG; nonces come from a per-process ChaCha20 CSPRNG seeded
//! from the OS. The nonce generator reseeds after a fork, so two PostgreSQL backends forked from one process never
//! share a stream: a `pthread_atfork` child handler, registered before the first seeding, bumps a fork counter
//! that each draw compares (a memory read instead of a `getpid` system call per nonce). Should the handler not
//! register, every draw compares the process id instead.

use crate::aead::{SecretKey, KEY_LEN, NONCE_LEN};
use crate::error::{Error, ErrorKind, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;
use zeroize::Zeroizing;

/// Reseed from the OS after this many nonces, bounding how much output depends on one seed.
const RESEED_AFTER: u64 = 1 << 24;

/// Forks seen by this process's lineage since the handler was registered.
static FORKS: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();
static ATFORK_OK: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

fn register_fork_handler() {
    ATFORK.call_once(|| {
        // SAFETY: registers a child handler that only touches an atomic (async-signal-safe).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        ATFORK_OK.store(rc == 0, Ordering::Relaxed);
    });
}

/// Identifies the process a generator was seeded in: the fork counter, or the pid without a handler.
fn lineage() -> u64 {
    if ATFORK_OK.load(Ordering::Relaxed) {
        FORKS.load(Ordering::Relaxed)
    } else {
        u64::from(std::process::id()) | 1 << 63
    }
}

struct NonceRng {
    lineage: u64,
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

/// A fresh key handle (a random non-zero 64-bit number, never derived from anything) from the OS CSPRNG.
pub fn key_handle() -> Result<crate::envelope::KeyHandle> {
    loop {
        let mut b = [0u8; 8];
        os_random(&mut b)?;
        if let Some(h) = crate::envelope::KeyHandle::new(u64::from_be_bytes(b)) {
            return Ok(h);
        }
    }
}

fn seeded() -> Result<NonceRng> {
    register_fork_handler();
    let mut seed = Zeroizing::new([0u8; 32]);
    os_random(seed.as_mut())?;
    Ok(NonceRng {
        lineage: lineage(),
        drawn: 0,
        rng: ChaCha20Rng::from_seed(*seed),
    })
}

/// Fills `out` with nonces, one per 12-byte chunk, with a single fork check for the batch.
pub fn fill_nonces(out: &mut [[u8; NONCE_LEN]]) -> Result<()> {
    NONCE_RNG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let stale = match slot.as_ref() {
            None => true,
            Some(r) => r.lineage != lineage() || r.drawn >= RESEED_AFTER,
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
    fn a_forked_child_draws_other_nonces_than_its_parent() {
        let _ = nonce().unwrap(); // seeded (and the handler registered) before the fork
        let mut fds = [0i32; 2];
        // SAFETY: a pipe, a fork, and in the child only a nonce, a write and _exit.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let n = nonce().unwrap_or([0; NONCE_LEN]);
                libc::write(fds[1], n.as_ptr().cast(), NONCE_LEN);
                libc::_exit(0);
            }
            let mut child = [0u8; NONCE_LEN];
            assert_eq!(
                libc::read(fds[0], child.as_mut_ptr().cast(), NONCE_LEN),
                NONCE_LEN as isize
            );
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            let parent = nonce().unwrap();
            assert_ne!(
                child, parent,
                "the child reseeded instead of repeating the parent's next nonce"
            );
            assert_ne!(child, [0; NONCE_LEN]);
        }
    }

    #[test]
    fn handles_are_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(key_handle().unwrap()));
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
