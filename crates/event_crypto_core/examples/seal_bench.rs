//! Times the AEAD on the shape of a protected row: three fields of 20, 30 and 60 bytes, each with ~60 bytes of
//! associated data, for both algorithms. Prints ns per row (three seals or three opens): the median (and the
//! minimum) of several runs. The time is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so that other processes
//! on a busy machine do not count; with the machine idle it equals the wall time.
//!
//!     cargo run --release -p event_crypto_core --example seal_bench
//!     RUSTFLAGS="-C target-cpu=native" cargo run --release -p event_crypto_core --example seal_bench  # the ceiling
//!
//! Optional arguments: rows per run (default 200000), runs (default 9), and an algorithm name to time only that one.
//!
//! - `cipher seal` / `cipher open`: [`Cipher::seal_in_place`] / [`Cipher::open_in_place`] alone;
//! - `envelope seal`: [`envelope::seal`] (header, AAD, AEAD, base64; includes allocating the returned String);
//! - `envelope open`: [`Envelope::parse_reusing`] and [`Envelope::open_in_place`] (base64 decode, AAD, AEAD).
use event_crypto_core::aead::{Algorithm, Cipher, NONCE_LEN, TAG_LEN};
use event_crypto_core::envelope::{seal, Envelope, KeyHandle, KeyRef, Scratch, SealKey};
use event_crypto_core::path::{LocStep, Location};
use std::hint::black_box;

const FIELDS: [usize; 3] = [20, 30, 60];
const AAD_LEN: usize = 60;

/// Median and minimum over `runs` runs of `rows` calls of `row`, in ns per row (the minimum is the figure least
/// disturbed by other load on the machine).
struct Ns(f64, f64);

impl std::fmt::Display for Ns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:5.0} ({:5.0})", self.0, self.1)
    }
}

/// The CPU time this thread has used, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median_ns(rows: usize, runs: usize, mut row: impl FnMut(usize)) -> Ns {
    for i in 0..rows / 10 {
        row(i); // warm-up
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = thread_cpu_ns();
            for i in 0..rows {
                row(i);
            }
            (thread_cpu_ns() - t) as f64 / rows as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Ns(times[times.len() / 2], times[0])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(9).max(1);
    let only = args.next();
    // envelopes of format 2 (what new encryptions write): a key handle, version 1, location "email", a 36-byte
    // context (a stream's uuid)
    let handle = KeyHandle::from_i64(0x1f2e_3d4c_5b6a_7988).expect("not zero");
    let ctx = b"0b5f2c1e-8d4a-4f6e-9a3b-2c1d0e9f8a7b".as_slice();
    let loc = Location::from_steps(&[LocStep::Key("email")]);
    // prefix, algorithm and flags, handle, LEB128 version, location, end mark, context length and context
    let env_aad = 5 + 1 + 8 + 1 + loc.encoded().len() + 1 + 4 + ctx.len();
    println!(
        "ns per row of {FIELDS:?}-byte fields, median (min) of {runs} runs of {rows} rows; AAD {AAD_LEN} bytes \
         (cipher), {env_aad} bytes (envelope)"
    );
    for alg in Algorithm::ALL {
        if only.as_deref().is_some_and(|o| o != alg.name()) {
            continue;
        }
        let c = Cipher::new(alg, &[7u8; 32]);
        let aad = [0x5au8; AAD_LEN];
        let mut bufs: Vec<Vec<u8>> = FIELDS.iter().map(|&n| vec![b'x'; n]).collect();
        let mut tags = [[0u8; TAG_LEN]; 3];

        let seal_ns = median_ns(rows, runs, |i| {
            let nonce = [i as u8; NONCE_LEN];
            for (buf, tag) in bufs.iter_mut().zip(tags.iter_mut()) {
                *tag = c.seal_in_place(black_box(&nonce), black_box(&aad), black_box(buf));
            }
        });

        // sealed copies to open: opening in place would decrypt them, so each row opens fresh copies of the same
        // ciphertexts (the copies, 110 bytes, cost a few ns)
        let nonce = [1u8; NONCE_LEN];
        let sealed: Vec<(Vec<u8>, [u8; TAG_LEN])> = FIELDS
            .iter()
            .map(|&n| {
                let mut b = vec![b'x'; n];
                let t = c.seal_in_place(&nonce, &aad, &mut b);
                (b, t)
            })
            .collect();
        let open_ns = median_ns(rows, runs, |_| {
            for ((ct, tag), buf) in sealed.iter().zip(bufs.iter_mut()) {
                buf.copy_from_slice(ct);
                assert!(c.open_in_place(black_box(&nonce), black_box(&aad), black_box(buf), tag));
            }
        });

        let key = SealKey {
            cipher: &c,
            key: KeyRef::Handle(handle),
            version: 1,
        };
        let plaintexts: Vec<Vec<u8>> = FIELDS.iter().map(|&n| vec![b'x'; n]).collect();
        let mut scratch = Scratch::default();
        let env_seal_ns = median_ns(rows, runs, |i| {
            let nonce = [i as u8; NONCE_LEN];
            for pt in &plaintexts {
                black_box(seal(&key, &loc, Some(ctx), black_box(pt), &nonce, &mut scratch).unwrap());
            }
        });
        let texts: Vec<String> = plaintexts
            .iter()
            .map(|pt| seal(&key, &loc, Some(ctx), pt, &nonce, &mut scratch).unwrap())
            .collect();
        let mut blob = Vec::new();
        let mut aad_buf = Vec::new();
        let env_open_ns = median_ns(rows, runs, |_| {
            for t in &texts {
                let mut env = Envelope::parse_reusing(black_box(t), &loc, std::mem::take(&mut blob)).unwrap();
                black_box(env.open_in_place(&c, &loc, Some(ctx), &mut aad_buf).unwrap());
                blob = env.into_blob();
            }
        });

        println!(
            "{:<18} cipher seal {seal_ns}  cipher open {open_ns}  envelope seal {env_seal_ns}  envelope open \
             {env_open_ns}",
            alg.name()
        );
        black_box(tags);
    }
}
