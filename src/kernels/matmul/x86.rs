//! x86_64 microkernels: AVX-512F (`12 x 32`) and AVX2+FMA (`6 x 16`). Rows of A are
//! broadcast, rows of B are vectors; every accumulator lives in a register for the
//! whole reduction chunk.

use super::driver::{Kernel, transpose_generic};
use std::arch::x86_64::*;

const MR512: usize = 12;

pub(super) const AVX512: Kernel = Kernel {
    mr: MR512,
    nr: 32,
    tile: tile_avx512::<MR512>,
    transpose: transpose_generic,
};

pub(super) const AVX2: Kernel = Kernel {
    mr: 6,
    nr: 16,
    tile: tile_avx2,
    transpose: transpose_generic,
};

/// Safety: see `Kernel::tile`; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const MR: usize>(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    // SAFETY: the extents of a, b and c are the caller's contract.
    unsafe {
        if load {
            for i in 0..MR {
                lo[i] = _mm512_loadu_ps(c.add(i * ldc));
                hi[i] = _mm512_loadu_ps(c.add(i * ldc + 16));
            }
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for i in 0..MR {
                let ai = _mm512_set1_ps(*a.add(i));
                lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
            }
            a = a.add(MR);
            b = b.add(32);
        }
        for i in 0..MR {
            _mm512_storeu_ps(c.add(i * ldc), lo[i]);
            _mm512_storeu_ps(c.add(i * ldc + 16), hi[i]);
        }
    }
}

/// Safety: see `Kernel::tile`; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
    const MR: usize = 6;
    let mut lo = [_mm256_setzero_ps(); MR];
    let mut hi = [_mm256_setzero_ps(); MR];
    // SAFETY: the extents of a, b and c are the caller's contract.
    unsafe {
        if load {
            for i in 0..MR {
                lo[i] = _mm256_loadu_ps(c.add(i * ldc));
                hi[i] = _mm256_loadu_ps(c.add(i * ldc + 8));
            }
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                lo[i] = _mm256_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(ai, b1, hi[i]);
            }
            a = a.add(MR);
            b = b.add(16);
        }
        for i in 0..MR {
            _mm256_storeu_ps(c.add(i * ldc), lo[i]);
            _mm256_storeu_ps(c.add(i * ldc + 8), hi[i]);
        }
    }
}
