//! The two AEAD algorithms and a cipher instance that keeps its expanded key schedule (zeroized on drop).
//!
//! # AES-256-GCM: instructions chosen at run time
//!
//! Why: the RustCrypto crates detect AES-NI and PCLMULQDQ at run time, but only their innermost functions are
//! compiled with those instructions; every layer around them (aes-gcm's counter mode and tag, the GHASH update
//! loop, each crate's detection branch) is compiled for the baseline x86-64 CPU and cannot inline them, so a short
//! field pays a chain of calls per 16-byte block. The same code built with `-C target-cpu=native` runs a row of
//! three short seals about 40% faster, but that build needs those instructions on every machine it runs on.
//!
//! Wrapping `Aes256Gcm::encrypt_in_place_detached` in a `#[target_feature]` function does not help (measured: no
//! change): target features apply to a function's own body and to what LLVM inlines into it, and aes-gcm's generic
//! functions (shared by all callers, too large for the inliner) stay out-of-line, compiled without the features.
//! Neither do the crates' own options: their `cfg`s only force the software backends (`aes_force_soft`,
//! `polyval_force_soft`), and their `autodetect` modules are the run-time detection described above.
//!
//! How: on x86-64, AES-256-GCM (NIST SP 800-38D, 96-bit nonces) is composed in the `x86` module from the
//! RustCrypto primitives, used through their backend closures so that all the per-block work runs in one function
//! compiled with the instructions:
//!
//! - AES: the `aes` crate's encryption backend (`BlockEncrypt::encrypt_with_backend` hands its AES-NI backend to
//!   our closure, or its software backend on a CPU without AES-NI);
//! - GHASH: the `ghash` crate's backend (`UniversalHash::update_with_backend`; POLYVAL's CLMUL multiply);
//! - our code lays out the blocks only: J0 = nonce ‖ 0³¹ ‖ 1, the counters (inc32) and the keystream XOR, the GHASH
//!   input (AAD and ciphertext zero-padded, then both lengths in bits), tag = GHASH ⊕ E(J0), the constant-time tag
//!   comparison, and wiping a buffer whose tag did not verify (decryption shares the pass with GHASH). No AES round
//!   or field multiplication is written here.
//!
//! That function (`gcm_blocks`) is generic and `#[inline(always)]`, called from `gcm_blocks_x86`, compiled with
//! `#[target_feature(enable = "aes,pclmulqdq,sse2,ssse3,sse4.1")]`, where the crates' block functions inline. The
//! choice is made when a [`Cipher`] is created: `std::is_x86_feature_detected!` once per process (cached in a
//! `OnceLock`), checked again right before the one `unsafe` call. Without those instructions, on other
//! architectures, or when forced, AES-256-GCM is the aes-gcm crate's `Aes256Gcm`, as before. ChaCha20-Poly1305
//! always uses its crate: its slowness on short fields is poly1305 0.8's AVX2 backend, whose intrinsics are not
//! inlined even inside the crate's own AVX2 functions, and a `#[target_feature]` wrapper does not reach them.
//!
//! Testing: `Cipher::with_backend` forces a backend: the aes-gcm crate, the composition with the instructions, or
//! the composition compiled without them (tests only). The unit tests below check that they agree byte for byte
//! (every length from 0 to 300 bytes and some long ones, AAD lengths around the block size), open each other's
//! output, reject every tampering, match NIST's GCM test cases, and that [`Cipher::new`] picks the accelerated
//! backend on a CPU that has the instructions. The integration tests (known answers, frozen envelopes) run through
//! [`Cipher::new`]. `RUSTFLAGS="--cfg aes_force_soft --cfg polyval_force_soft"` makes the crates hand their software
//! backends to the same composition.

use crate::error::{Error, ErrorKind, Result};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::ChaCha20Poly1305;
use zeroize::Zeroizing;

/// Nonce length shared by both algorithms (96 bits).
pub const NONCE_LEN: usize = 12;
/// Tag length shared by both algorithms (128 bits).
pub const TAG_LEN: usize = 16;
/// Data key length (256 bits).
pub const KEY_LEN: usize = 32;

/// A 256-bit key held in memory that is zeroed when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305];

    /// The name used in SQL and in the key catalog.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "aes-256-gcm",
            Algorithm::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The byte that identifies the algorithm inside an envelope.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => 1,
            Algorithm::ChaCha20Poly1305 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Algorithm> {
        match code {
            1 => Some(Algorithm::Aes256Gcm),
            2 => Some(Algorithm::ChaCha20Poly1305),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Result<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                // the argument is not echoed: a value passed in the wrong position must not reach a log
                "unknown algorithm",
            )
            .with_hint("Supported algorithms are aes-256-gcm (the default) and chacha20-poly1305.")
        })
    }
}

/// Shortens an argument echoed in a message (names only, never values being encrypted).
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A keyed AEAD instance. Its key material (expanded key schedule, GHASH key) is zeroized on drop.
pub struct Cipher(Keyed);

enum Keyed {
    /// AES-256-GCM by the aes-gcm crate.
    Aes(Box<Aes256Gcm>),
    /// AES-256-GCM composed from the aes and ghash crates' backends, with AES-NI and PCLMULQDQ inlined.
    #[cfg(target_arch = "x86_64")]
    AesX86(Box<x86::Aes256GcmX86>),
    ChaCha(Box<ChaCha20Poly1305>),
}

/// Which implementation of AES-256-GCM a [`Cipher`] uses (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The aes-gcm crate, as compiled for the target's baseline CPU.
    Portable,
    /// The composition in [`x86`], run with AES-NI and PCLMULQDQ enabled (only where the CPU has them).
    #[cfg(target_arch = "x86_64")]
    X86,
    /// The same composition compiled without those features (tests only: it checks the composition apart from
    /// the code generation).
    #[cfg(all(test, target_arch = "x86_64"))]
    X86Baseline,
}

impl Backend {
    /// The fastest backend this CPU runs (detected once per process).
    pub(crate) fn detect() -> Backend {
        #[cfg(target_arch = "x86_64")]
        if x86::cpu_ready() {
            return Backend::X86;
        }
        Backend::Portable
    }
}

/// Asks the CPU to bring `len` bytes from `p` into its caches (a hint: no effect on any result).
#[inline(always)]
pub fn prefetch_bytes<T: ?Sized>(p: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = p as *const u8;
        for off in (0..len).step_by(64) {
            // SAFETY: PREFETCHT0 (SSE, part of x86-64) never faults, whatever the address; it reads nothing the
            // program sees.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(off) as *const i8)
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

impl Cipher {
    /// Brings the key schedule a seal will read into the CPU's caches ahead of the seal, for a caller that knows the
    /// key early and has other work to do first (a trigger switching keys from row to row).
    pub fn prefetch(&self) {
        match &self.0 {
            #[cfg(target_arch = "x86_64")]
            Keyed::AesX86(c) => c.prefetch(),
            _ => {}
        }
    }

    pub fn new(algorithm: Algorithm, key: &[u8; KEY_LEN]) -> Cipher {
        Cipher::with_backend(algorithm, key, Backend::detect())
    }

    /// [`Cipher::new`] with the given AES-256-GCM backend; [`Backend::X86`] falls back to the portable one on a CPU
    /// without the instructions. ChaCha20-Poly1305 has one implementation.
    pub(crate) fn with_backend(algorithm: Algorithm, key: &[u8; KEY_LEN], backend: Backend) -> Cipher {
        Cipher(match (algorithm, backend) {
            #[cfg(target_arch = "x86_64")]
            (Algorithm::Aes256Gcm, Backend::X86) if x86::cpu_ready() => {
                Keyed::AesX86(Box::new(x86::Aes256GcmX86::new(key, true)))
            }
            #[cfg(all(test, target_arch = "x86_64"))]
            (Algorithm::Aes256Gcm, Backend::X86Baseline) => Keyed::AesX86(Box::new(x86::Aes256GcmX86::new(key, false))),
            (Algorithm::Aes256Gcm, _) => Keyed::Aes(Box::new(Aes256Gcm::new(key.into()))),
            (Algorithm::ChaCha20Poly1305, _) => Keyed::ChaCha(Box::new(ChaCha20Poly1305::new(key.into()))),
        })
    }

    /// The AES-256-GCM implementation in use (`Portable` for ChaCha20-Poly1305).
    #[cfg(test)]
    pub(crate) fn backend(&self) -> Backend {
        match &self.0 {
            #[cfg(target_arch = "x86_64")]
            Keyed::AesX86(c) if c.accelerated() => Backend::X86,
            #[cfg(target_arch = "x86_64")]
            Keyed::AesX86(_) => Backend::X86Baseline,
            Keyed::Aes(_) | Keyed::ChaCha(_) => Backend::Portable,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            Keyed::Aes(_) => Algorithm::Aes256Gcm,
            #[cfg(target_arch = "x86_64")]
            Keyed::AesX86(_) => Algorithm::Aes256Gcm,
            Keyed::ChaCha(_) => Algorithm::ChaCha20Poly1305,
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = match &self.0 {
            Keyed::Aes(c) => c.encrypt_in_place_detached(nonce.into(), aad, buf).ok().map(Into::into),
            #[cfg(target_arch = "x86_64")]
            Keyed::AesX86(c) => c.seal(nonce, aad, buf),
            Keyed::ChaCha(c) => c.encrypt_in_place_detached(nonce.into(), aad, buf).ok().map(Into::into),
        };
        // Only fails for messages over the algorithm's limit (64 GiB), far beyond a jsonb value (1 GB).
        tag.expect("AEAD input within the algorithm's length limit")
    }

    /// Decrypts `buf` in place; false when the tag does not verify (buf is then unspecified and must be dropped).
    pub fn open_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        match &self.0 {
            Keyed::Aes(c) => c.decrypt_in_place_detached(nonce.into(), aad, buf, tag.into()).is_ok(),
            #[cfg(target_arch = "x86_64")]
            Keyed::AesX86(c) => c.open(nonce, aad, buf, tag),
            Keyed::ChaCha(c) => c.decrypt_in_place_detached(nonce.into(), aad, buf, tag.into()).is_ok(),
        }
    }
}

/// AES-256-GCM on x86-64 with the per-block work compiled for AES-NI and PCLMULQDQ (see the module documentation).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KEY_LEN, NONCE_LEN, TAG_LEN};
    use aes::cipher::{BlockBackend, BlockClosure, BlockEncrypt, BlockSizeUser, KeyInit, ParBlocks};
    use aes::Aes256Enc;
    use aes_gcm::aead::consts::U16;
    use aes_gcm::aead::generic_array::GenericArray;
    use ghash::universal_hash::{UhfBackend, UhfClosure, UniversalHash};
    use ghash::GHash;
    use std::sync::OnceLock;
    use subtle::ConstantTimeEq;
    use zeroize::Zeroize;

    type Block = GenericArray<u8, U16>;

    /// The longest plaintext GCM allows: 2^32 - 2 counter blocks (SP 800-38D, 5.2.1.1).
    const MAX_TEXT: u64 = (1 << 36) - 32;
    /// The longest associated data aes-gcm accepts (the portable backend's limit, kept the same).
    const MAX_AAD: u64 = 1 << 36;

    /// Whether this CPU has every instruction [`gcm_blocks_x86`] is compiled with; detected once per process.
    pub(super) fn cpu_ready() -> bool {
        static READY: OnceLock<bool> = OnceLock::new();
        *READY.get_or_init(|| {
            std::is_x86_feature_detected!("aes")
                && std::is_x86_feature_detected!("pclmulqdq")
                && std::is_x86_feature_detected!("sse2")
                && std::is_x86_feature_detected!("ssse3")
                && std::is_x86_feature_detected!("sse4.1")
        })
    }

    /// The AES key schedule (encryption only) and GHASH keyed with H = E(K, 0^128); both crates zeroize them on
    /// drop (their `zeroize` features).
    pub(super) struct Aes256GcmX86 {
        aes: Aes256Enc,
        ghash: GHash,
        /// Run the block work in [`gcm_blocks_x86`] (false only in tests, and on a CPU without the features).
        accelerate: bool,
    }

    impl Aes256GcmX86 {
        pub(super) fn new(key: &[u8; KEY_LEN], accelerate: bool) -> Self {
            let aes = Aes256Enc::new(key.into());
            let mut h = Block::default();
            aes.encrypt_block(&mut h);
            let ghash = GHash::new(&h);
            h.zeroize();
            Aes256GcmX86 {
                aes,
                ghash,
                accelerate: accelerate && cpu_ready(),
            }
        }

        /// The AES-NI round keys (the first 240 bytes of the key schedule) and the GHASH key.
        pub(super) fn prefetch(&self) {
            super::prefetch_bytes(&self.aes, 256);
            super::prefetch_bytes(&self.ghash, std::mem::size_of::<GHash>());
        }

        #[cfg(test)]
        pub(super) fn accelerated(&self) -> bool {
            self.accelerate
        }

        /// Encrypts `buf` in place and returns the tag; `None` over GCM's length limits.
        pub(super) fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
            self.run(nonce, aad, Text::Encrypt(buf)).map(Into::into)
        }

        /// The block work of a seal or an open over `text`, and the tag it computes (GHASH xor E(J0)); `None` over
        /// GCM's length limits, with nothing done.
        fn run(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], text: Text<'_>) -> Option<Block> {
            let len = match &text {
                Text::Encrypt(b) | Text::Decrypt(b) => b.len(),
            };
            if len as u64 > MAX_TEXT || aad.len() as u64 > MAX_AAD {
                return None;
            }
            let mut ghash = self.ghash.clone();
            let mut mask = Block::default();
            self.aes.encrypt_with_backend(WithAes {
                accelerate: self.accelerate,
                ghash: &mut ghash,
                j0: j0(nonce),
                aad,
                text,
                mask: &mut mask,
            });
            let mut tag = ghash.finalize();
            xor(&mut tag, &mask);
            mask.zeroize();
            Some(tag)
        }

        /// Decrypts `buf` in place and checks the tag; false when it does not verify, and `buf` is then wiped
        /// (decryption and GHASH share one pass over the blocks; no unauthenticated plaintext is left behind).
        pub(super) fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
            let Some(mut expected) = self.run(nonce, aad, Text::Decrypt(&mut *buf)) else {
                return false;
            };
            let valid: bool = expected.as_slice().ct_eq(tag).into();
            // the expected tag of a forged message is a valid tag for it: do not leave it behind either
            expected.zeroize();
            if !valid {
                buf.zeroize();
            }
            valid
        }
    }

    /// J0 for a 96-bit nonce: nonce ‖ 0^31 ‖ 1.
    fn j0(nonce: &[u8; NONCE_LEN]) -> Block {
        let mut j0 = Block::default();
        j0[..NONCE_LEN].copy_from_slice(nonce);
        j0[15] = 1;
        j0
    }

    #[inline(always)]
    fn xor(a: &mut Block, b: &Block) {
        for (x, y) in a.iter_mut().zip(b) {
            *x ^= y;
        }
    }

    enum Text<'a> {
        /// Sealing: encrypt, then hash the ciphertext.
        Encrypt(&'a mut [u8]),
        /// Opening: hash the ciphertext, then decrypt it.
        Decrypt(&'a mut [u8]),
    }

    /// Runs inside the aes crate's encryption function, with its backend; passes it on to GHASH's.
    struct WithAes<'a> {
        accelerate: bool,
        ghash: &'a mut GHash,
        j0: Block,
        aad: &'a [u8],
        text: Text<'a>,
        mask: &'a mut Block,
    }

    impl BlockSizeUser for WithAes<'_> {
        type BlockSize = U16;
    }

    impl BlockClosure for WithAes<'_> {
        #[inline(always)]
        fn call<A: BlockBackend<BlockSize = U16>>(self, aes: &mut A) {
            self.ghash.update_with_backend(WithBoth {
                accelerate: self.accelerate,
                aes,
                j0: self.j0,
                aad: self.aad,
                text: self.text,
                mask: self.mask,
            });
        }
    }

    /// Runs inside the ghash crate's update, with both backends.
    struct WithBoth<'a, A> {
        accelerate: bool,
        aes: &'a mut A,
        j0: Block,
        aad: &'a [u8],
        text: Text<'a>,
        mask: &'a mut Block,
    }

    impl<A> BlockSizeUser for WithBoth<'_, A> {
        type BlockSize = U16;
    }

    impl<A: BlockBackend<BlockSize = U16>> UhfClosure for WithBoth<'_, A> {
        #[inline(always)]
        fn call<G: UhfBackend<BlockSize = U16>>(self, ghash: &mut G) {
            if self.accelerate && cpu_ready() {
                // SAFETY: cpu_ready() has just confirmed (is_x86_feature_detected!) that this CPU has every feature
                // gcm_blocks_x86 is compiled with.
                unsafe { gcm_blocks_x86(self.aes, ghash, &self.j0, self.aad, self.text, self.mask) }
            } else {
                gcm_blocks(self.aes, ghash, &self.j0, self.aad, self.text, self.mask)
            }
        }
    }

    /// [`gcm_blocks`] with the instructions enabled, so that the crates' AES-NI and CLMUL block functions inline.
    #[target_feature(enable = "aes,pclmulqdq,sse2,ssse3,sse4.1")]
    fn gcm_blocks_x86<A: BlockBackend<BlockSize = U16>, G: UhfBackend<BlockSize = U16>>(
        aes: &mut A,
        ghash: &mut G,
        j0: &Block,
        aad: &[u8],
        text: Text<'_>,
        mask: &mut Block,
    ) {
        gcm_blocks(aes, ghash, j0, aad, text, mask)
    }

    /// The block work of a seal or an open: mask = E(J0), the counter mode, and GHASH over
    /// AAD ‖ pad ‖ ciphertext ‖ pad ‖ len(AAD)₆₄ ‖ len(ciphertext)₆₄ (lengths in bits).
    #[inline(always)]
    fn gcm_blocks<A: BlockBackend<BlockSize = U16>, G: UhfBackend<BlockSize = U16>>(
        aes: &mut A,
        ghash: &mut G,
        j0: &Block,
        aad: &[u8],
        text: Text<'_>,
        mask: &mut Block,
    ) {
        let len = match text {
            // A short field (the usual one: fewer blocks than the backend's parallel width): the tag mask and the
            // keystream in one parallel call, whose blocks go through the AES rounds side by side instead of one
            // after the other.
            Text::Encrypt(buf) if buf.len().div_ceil(16) < ParBlocks::<A>::default().len() => {
                mask_and_ctr(aes, j0, buf, mask);
                hash_padded(ghash, aad);
                hash_padded(ghash, buf);
                buf.len()
            }
            Text::Encrypt(buf) => {
                *mask = *j0;
                aes.proc_block(mask.into());
                hash_padded(ghash, aad);
                ctr(aes, j0, buf);
                hash_padded(ghash, buf);
                buf.len()
            }
            Text::Decrypt(buf) if buf.len().div_ceil(16) < ParBlocks::<A>::default().len() => {
                hash_padded(ghash, aad);
                hash_padded(ghash, buf);
                mask_and_ctr(aes, j0, buf, mask);
                buf.len()
            }
            Text::Decrypt(buf) => {
                *mask = *j0;
                aes.proc_block(mask.into());
                hash_padded(ghash, aad);
                hash_padded(ghash, buf);
                ctr(aes, j0, buf);
                buf.len()
            }
        };
        let mut lengths = Block::default();
        lengths[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(len as u64 * 8).to_be_bytes());
        ghash.proc_block(&lengths);
    }

    #[inline(always)]
    fn hash_padded<G: UhfBackend<BlockSize = U16>>(ghash: &mut G, data: &[u8]) {
        let mut blocks = data.chunks_exact(16);
        for b in &mut blocks {
            ghash.proc_block(Block::from_slice(b));
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            ghash.proc_block(&zero_padded(rest));
        }
    }

    /// A partial block (1 to 15 bytes) zero-padded to 16, assembled in registers from overlapping loads: copying the
    /// bytes into a zeroed block and loading it back stalls on store forwarding, which every field (and most AAD)
    /// paid twice a seal.
    #[inline(always)]
    fn zero_padded(rest: &[u8]) -> Block {
        let (lo, hi) = if rest.len() >= 8 {
            (le_bytes(&rest[..8]), le_bytes(&rest[8..]))
        } else {
            (le_bytes(rest), 0)
        };
        let mut block = Block::default();
        block.copy_from_slice(&((u128::from(hi) << 64) | u128::from(lo)).to_le_bytes());
        block
    }

    /// Up to 8 bytes as a little-endian integer (the missing high bytes zero), from at most two overlapping loads.
    #[inline(always)]
    fn le_bytes(b: &[u8]) -> u64 {
        let n = b.len();
        let (head, tail, width) = if n >= 8 {
            return u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        } else if n >= 4 {
            (
                u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                u64::from(u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]])),
                4,
            )
        } else if n >= 2 {
            (
                u64::from(u16::from_le_bytes([b[0], b[1]])),
                u64::from(u16::from_le_bytes([b[n - 2], b[n - 1]])),
                2,
            )
        } else if n == 1 {
            return u64::from(b[0]);
        } else {
            return 0;
        };
        // the tail's bytes land at n - width..n; where they overlap the head they are the same bytes
        head | tail << (8 * (n - width))
    }

    /// mask = E(J0) and counter mode from inc32(J0) over `buf`, which has fewer blocks than the backend's parallel
    /// width, in one parallel call; wipes the keystream it leaves on the stack.
    #[inline(always)]
    fn mask_and_ctr<A: BlockBackend<BlockSize = U16>>(aes: &mut A, j0: &Block, buf: &mut [u8], mask: &mut Block) {
        let mut blocks = ParBlocks::<A>::default();
        let n = buf.len().div_ceil(16);
        debug_assert!(n < blocks.len());
        let mut counter = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]);
        blocks[0] = *j0;
        for block in &mut blocks[1..=n] {
            counter = counter.wrapping_add(1);
            block[..12].copy_from_slice(&j0[..12]);
            block[12..].copy_from_slice(&counter.to_be_bytes());
        }
        aes.proc_par_blocks((&mut blocks).into());
        *mask = blocks[0];
        for (bytes, block) in buf.chunks_mut(16).zip(&blocks[1..]) {
            for (b, k) in bytes.iter_mut().zip(block) {
                *b ^= k;
            }
        }
        for block in blocks.iter_mut() {
            block.as_mut_slice().zeroize();
        }
    }

    /// Counter mode from inc32(J0): XORs the keystream into `buf`. Works the backend's parallel width at a time
    /// (8 blocks with AES-NI) and wipes the keystream it leaves on the stack.
    #[inline(always)]
    fn ctr<A: BlockBackend<BlockSize = U16>>(aes: &mut A, j0: &Block, buf: &mut [u8]) {
        let mut counter = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]);
        let mut keystream = ParBlocks::<A>::default();
        let width = keystream.len();
        let mut used = 0;
        for chunk in buf.chunks_mut(16 * width) {
            let n = chunk.len().div_ceil(16);
            for block in &mut keystream[..n] {
                counter = counter.wrapping_add(1);
                block[..12].copy_from_slice(&j0[..12]);
                block[12..].copy_from_slice(&counter.to_be_bytes());
            }
            if n == width {
                aes.proc_par_blocks((&mut keystream).into());
            } else {
                for block in &mut keystream[..n] {
                    aes.proc_block(block.into());
                }
            }
            for (bytes, block) in chunk.chunks_mut(16).zip(&keystream) {
                for (b, k) in bytes.iter_mut().zip(block) {
                    *b ^= k;
                }
            }
            used = used.max(n);
        }
        for block in &mut keystream[..used] {
            block.as_mut_slice().zeroize();
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn zero_padded_matches_a_byte_copy() {
            let data: Vec<u8> = (1..=16u8).map(|i| i.wrapping_mul(17)).collect();
            for n in 1..16 {
                let mut expected = [0u8; 16];
                expected[..n].copy_from_slice(&data[..n]);
                assert_eq!(super::zero_padded(&data[..n]).as_slice(), expected, "{n} bytes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()).unwrap(), a);
            assert_eq!(Algorithm::from_code(a.code()).unwrap(), a);
        }
        let e = Algorithm::from_name("des").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(Algorithm::from_name("AES-256-GCM").is_err(), "names are case-sensitive");
        assert!(Algorithm::from_code(0).is_none());
        assert!(Algorithm::from_code(3).is_none());
    }

    /// Every AES-256-GCM backend this build has; on x86-64 with AES-NI and PCLMULQDQ the x86 ones really are
    /// accelerated (asserted in `new_picks_the_fastest_backend`).
    fn aes_backends() -> Vec<Backend> {
        #[cfg(target_arch = "x86_64")]
        return vec![Backend::Portable, Backend::X86, Backend::X86Baseline];
        #[cfg(not(target_arch = "x86_64"))]
        return vec![Backend::Portable];
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn new_picks_the_fastest_backend() {
        let aes = Cipher::new(Algorithm::Aes256Gcm, &[1; KEY_LEN]);
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: bool| f;
            let cpu = has(std::is_x86_feature_detected!("aes"))
                && has(std::is_x86_feature_detected!("pclmulqdq"))
                && has(std::is_x86_feature_detected!("ssse3"))
                && has(std::is_x86_feature_detected!("sse4.1"));
            assert_eq!(aes.backend(), if cpu { Backend::X86 } else { Backend::Portable });
            // forcing the portable backend works whatever the CPU
            let portable = Cipher::with_backend(Algorithm::Aes256Gcm, &[1; KEY_LEN], Backend::Portable);
            assert_eq!(portable.backend(), Backend::Portable);
            let baseline = Cipher::with_backend(Algorithm::Aes256Gcm, &[1; KEY_LEN], Backend::X86Baseline);
            assert_eq!(baseline.backend(), Backend::X86Baseline);
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(aes.backend(), Backend::Portable);
        let chacha = Cipher::new(Algorithm::ChaCha20Poly1305, &[1; KEY_LEN]);
        assert_eq!(chacha.backend(), Backend::Portable);
        assert_eq!(chacha.algorithm(), Algorithm::ChaCha20Poly1305);
        assert_eq!(aes.algorithm(), Algorithm::Aes256Gcm);
    }

    /// NIST's GCM test cases 13 to 16 (AES-256; "The Galois/Counter Mode of Operation", McGrew and Viega), on
    /// every backend.
    #[test]
    fn nist_gcm_test_cases_on_every_backend() {
        let h = |s: &str| hex::decode(s).unwrap();
        let k15 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let p15 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
        let c15 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
        let cases = [
            // key, nonce, aad, plaintext, ciphertext, tag
            (
                &"00".repeat(32)[..],
                &"00".repeat(12)[..],
                "",
                "",
                "",
                "530f8afbc74536b9a963b4f1c4cb738b",
            ),
            (
                &"00".repeat(32)[..],
                &"00".repeat(12)[..],
                "",
                &"00".repeat(16)[..],
                "cea7403d4d606b6e074ec5d3baf39d18",
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                k15,
                "cafebabefacedbaddecaf888",
                "",
                p15,
                c15,
                "b094dac5d93471bdec1a502270e3cc6c",
            ),
            (
                k15,
                "cafebabefacedbaddecaf888",
                "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                &p15[..120],
                &c15[..120],
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for backend in aes_backends() {
            for (i, (key, nonce, aad, pt, ct, tag)) in cases.iter().enumerate() {
                let c = Cipher::with_backend(Algorithm::Aes256Gcm, &h(key).try_into().unwrap(), backend);
                let nonce: [u8; NONCE_LEN] = h(nonce).try_into().unwrap();
                let mut buf = h(pt);
                let t = c.seal_in_place(&nonce, &h(aad), &mut buf);
                assert_eq!(hex::encode(&buf), *ct, "{backend:?}, case {}", 13 + i);
                assert_eq!(hex::encode(t), *tag, "{backend:?}, case {}", 13 + i);
                assert!(c.open_in_place(&nonce, &h(aad), &mut buf, &t));
                assert_eq!(hex::encode(&buf), *pt);
            }
        }
    }

    /// The backends give byte-identical ciphertexts and tags and open each other's output, for every length from 0
    /// to 300 bytes (the 8-block batches of AES-NI, partial blocks) and AAD lengths around the block size.
    #[test]
    fn backends_agree_byte_for_byte() {
        let key: [u8; KEY_LEN] = pattern(KEY_LEN, 9).try_into().unwrap();
        let ciphers: Vec<Cipher> = aes_backends()
            .into_iter()
            .map(|b| Cipher::with_backend(Algorithm::Aes256Gcm, &key, b))
            .collect();
        for len in (0..=300).chain([1000, 4096 + 7, (1 << 20) + 5]) {
            for aad_len in [0, 1, 15, 16, 17, 60, 129] {
                let nonce: [u8; NONCE_LEN] = pattern(NONCE_LEN, len as u8 ^ aad_len as u8).try_into().unwrap();
                let aad = pattern(aad_len, 3);
                let pt = pattern(len, 5);
                let mut reference = pt.clone();
                let reference_tag = ciphers[0].seal_in_place(&nonce, &aad, &mut reference);
                for (i, c) in ciphers.iter().enumerate() {
                    let mut buf = pt.clone();
                    let tag = c.seal_in_place(&nonce, &aad, &mut buf);
                    assert!(
                        buf == reference && tag == reference_tag,
                        "backend {i}, len {len}, aad {aad_len}"
                    );
                    for opener in &ciphers {
                        let mut back = buf.clone();
                        assert!(opener.open_in_place(&nonce, &aad, &mut back, &tag));
                        assert!(back == pt, "backend {i}, len {len}, aad {aad_len}");
                    }
                }
            }
        }
    }

    /// A changed ciphertext, tag, AAD or nonce fails on every backend; the x86 backend, which decrypts while it
    /// authenticates, wipes the buffer when the tag does not verify.
    #[test]
    fn tampering_fails_on_every_backend() {
        for backend in aes_backends() {
            let c = Cipher::with_backend(Algorithm::Aes256Gcm, &[7; KEY_LEN], backend);
            let nonce = [4u8; NONCE_LEN];
            let aad = pattern(40, 1);
            let mut ct = pattern(37, 2);
            let tag = c.seal_in_place(&nonce, &aad, &mut ct);
            let fails = |nonce: &[u8; NONCE_LEN], aad: &[u8], ct: &[u8], tag: &[u8; TAG_LEN]| {
                let mut buf = ct.to_vec();
                let ok = c.open_in_place(nonce, aad, &mut buf, tag);
                if backend != Backend::Portable {
                    assert!(buf.iter().all(|&b| b == 0), "{backend:?}: buffer not wiped");
                }
                !ok
            };
            for i in 0..ct.len() {
                let mut bad = ct.clone();
                bad[i] ^= 0x10;
                assert!(fails(&nonce, &aad, &bad, &tag), "{backend:?}: ciphertext byte {i}");
            }
            for i in 0..TAG_LEN {
                let mut bad = tag;
                bad[i] ^= 0x01;
                assert!(fails(&nonce, &aad, &ct, &bad), "{backend:?}: tag byte {i}");
            }
            for i in 0..aad.len() {
                let mut bad = aad.clone();
                bad[i] ^= 0x80;
                assert!(fails(&nonce, &bad, &ct, &tag), "{backend:?}: aad byte {i}");
            }
            assert!(fails(&[5u8; NONCE_LEN], &aad, &ct, &tag), "{backend:?}: nonce");
            assert!(fails(&nonce, &aad[1..], &ct, &tag), "{backend:?}: shorter aad");
            assert!(fails(&nonce, &aad, &ct[1..], &tag), "{backend:?}: shorter ciphertext");
            let other = Cipher::with_backend(Algorithm::Aes256Gcm, &[8; KEY_LEN], backend);
            let mut buf = ct.clone();
            assert!(
                !other.open_in_place(&nonce, &aad, &mut buf, &tag),
                "{backend:?}: other key"
            );
        }
    }

    #[test]
    fn truncates_long_names_in_messages() {
        let long = "x".repeat(500);
        let e = Algorithm::from_name(&long).unwrap_err();
        assert!(e.message().len() < 100);
    }
}
