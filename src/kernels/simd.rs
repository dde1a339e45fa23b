//! Runtime CPU-feature dispatch for the element-wise and attention kernels.
//!
//! Kernel bodies are written once as plain Rust over fixed 16-lane accumulators, so the
//! order of every floating-point operation is fixed by the code (the same result on AVX-512,
//! AVX2, NEON or scalar); [`multiversion!`] compiles each body once per instruction set and
//! picks one at run time, so a single x86_64 binary uses AVX-512 where it exists.
//!
//! LLVM vectorizes such bodies only when every accumulator update covers all 16 lanes and
//! the final horizontal reduction is kept apart ([`hsum16`]); for the register tiles of
//! small matrix products and whole-vector reductions, where it picks poor shapes, the
//! x86 paths are written with explicit vector code in the same operation order.

use crate::isa::Isa;

/// Defines `fn name(args) -> ret` whose body is compiled for AVX-512, AVX2+FMA and the
/// baseline, dispatched on [`Isa::best`]. The body must only call `#[inline(always)]` helpers
/// (such as [`dot16`]) so that they inherit the instruction set.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v512($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v256($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                match $crate::isa::Isa::best() {
                    // SAFETY: Isa::best() verified the CPU has these features.
                    $crate::isa::Isa::Avx512 => return unsafe { v512($($arg),*) },
                    $crate::isa::Isa::Avx2 => return unsafe { v256($($arg),*) },
                    _ => {}
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Dot product with 16 independent partial sums combined in a fixed tree.
#[inline(always)]
pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    if !ra.is_empty() {
        // Whole-vector updates only: a per-lane update derails LLVM's vectorization.
        let (mut x, mut y) = ([0f32; 16], [0f32; 16]);
        x[..ra.len()].copy_from_slice(ra);
        y[..rb.len()].copy_from_slice(rb);
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    hsum16(&acc)
}

#[inline(always)]
pub fn hsum16(acc: &[f32; 16]) -> f32 {
    // An opaque copy: LLVM otherwise shapes the accumulator loop after this tree and
    // splits its vectors.
    let acc = &std::hint::black_box(*acc);
    let mut s8 = [0f32; 8];
    for l in 0..8 {
        s8[l] = acc[l] + acc[l + 8];
    }
    let mut s4 = [0f32; 4];
    for l in 0..4 {
        s4[l] = s8[l] + s8[l + 4];
    }
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// y += a * x
#[inline(always)]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

multiversion! {
    /// Dot product of two equal-length vectors (dispatched; for callers outside a kernel).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot16(a, b)
    }
}

/// Inputs above this overflow (ln f32::MAX ≈ 88.72); clamping here keeps the exponent
/// arithmetic in range while the result still rounds to infinity.
const EXP_MAX_IN: f32 = 89.0;
/// Inputs below this underflow to zero (half the smallest subnormal is e^-103.97).
const EXP_MIN_IN: f32 = -104.0;
/// 1.5 * 2^23: adding it leaves round(y) in the low mantissa bits (for |y| < 2^22).
const ROUND_SHIFTER: f32 = 12_582_912.0;
/// ln 2 split in two: `n * LN2_HI` is exact for the |n| <= 150 used, so the reduced
/// argument loses nothing but the rounding of `n * LN2_LO`.
const LN2_HI: f32 = 355.0 / 512.0;
const LN2_LO: f32 = -2.121_944_4e-4;
/// exp(r) = 1 + r + r^2 (C2 + C3 r + C4 r^2 + C5 r^3 + C6 r^4) on |r| <= 0.35: a minimax
/// fit of the relative error (5e-9, under a tenth of an ulp).
const EXP_C2: f32 = 0.499_999_97;
const EXP_C3: f32 = 0.166_665_15;
const EXP_C4: f32 = 0.041_667_25;
const EXP_C5: f32 = 0.008_369_397;
const EXP_C6: f32 = 0.001_387_941_4;

/// e^x in f32 within 1.02 ulp (checked exhaustively, subnormal results included),
/// branch-free so that loops of it vectorize: -inf → 0, large inputs → inf, NaN → NaN. It uses no fused multiply-add,
/// so every instruction set gives the same bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Comparisons are false for NaN, which so reaches the polynomial and stays NaN.
    let x = if x > EXP_MAX_IN { EXP_MAX_IN } else { x };
    let x = if x < EXP_MIN_IN { EXP_MIN_IN } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND_SHIFTER;
    let n = shifted - ROUND_SHIFTER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let q = (((EXP_C6 * r + EXP_C5) * r + EXP_C4) * r + EXP_C3) * r + EXP_C2;
    let p = ((r * r) * q + r) + 1.0;
    // 2^n as two factors 2^(n/2) and 2^(n - n/2), each a normal float for n in
    // [-150, 129]: the product then rounds once, into the subnormals or to infinity.
    let ni = (shifted.to_bits() as i32).wrapping_sub(ROUND_SHIFTER.to_bits() as i32);
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32) << 23);
    (p * s1) * s2
}

/// 1 / (1 + e^-x), through [`exp`]: exactly 0 and 1 at the infinities.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// [`exp`] of 16 lanes.
#[inline(always)]
pub fn exp16(x: &[f32; 16]) -> [f32; 16] {
    let mut y = [0f32; 16];
    for l in 0..16 {
        y[l] = exp(x[l]);
    }
    y
}

/// The largest of 16 lanes (a NaN lane may or may not win).
#[inline(always)]
pub fn hmax16(m: &[f32; 16]) -> f32 {
    let m = &std::hint::black_box(*m);
    let mut s8 = [0f32; 8];
    for l in 0..8 {
        s8[l] = if m[l + 8] > m[l] { m[l + 8] } else { m[l] };
    }
    let mut best = s8[0];
    for &v in &s8[1..] {
        best = if v > best { v } else { best };
    }
    best
}

multiversion! {
    /// `xs[i] = e^xs[i]` ([`exp`], dispatched; for callers outside a kernel).
    pub fn exp_in_place(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            let c: &mut [f32; 16] = c.try_into().expect("chunk of 16");
            *c = exp16(c);
        }
        for x in chunks.into_remainder() {
            *x = exp(*x);
        }
    }
}

/// Instruction sets of [`tile`] (a const parameter so that a kernel generic over it is
/// compiled once per set, with the set's register tile sizes).
pub const PORTABLE: u8 = 0;
pub const AVX2: u8 = 1;
pub const AVX512: u8 = 2;

/// The left operand of a [`tile`]: element `[i][p]` at `data[i * rs + p * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Strided<'a> {
    /// Row-major, rows `ld` apart: `[i][p]` at `data[i * ld + p]`.
    pub fn rows(data: &'a [f32], ld: usize) -> Self {
        Strided { data, rs: ld, cs: 1 }
    }

    /// Column-major (a transposed row-major matrix): `[i][p]` at `data[p * ld + i]`.
    pub fn columns(data: &'a [f32], ld: usize) -> Self {
        Strided { data, rs: 1, cs: ld }
    }
}

/// The right operand of a [`tile`]: row-major, rows `ld` apart.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    pub data: &'a [f32],
    pub ld: usize,
}

impl<'a> Rows<'a> {
    pub fn new(data: &'a [f32], ld: usize) -> Self {
        Rows { data, ld }
    }

    /// The same rows from column `j` on.
    pub fn from_col(self, j: usize) -> Self {
        Rows {
            data: &self.data[j..],
            ..self
        }
    }
}

/// The output of a [`tile`]: row-major, rows `ld` apart.
#[derive(Debug)]
pub struct RowsMut<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
}

impl<'a> RowsMut<'a> {
    pub fn new(data: &'a mut [f32], ld: usize) -> Self {
        RowsMut { data, ld }
    }

    /// The same rows from column `j` on (a shorter borrow).
    pub fn from_col(&mut self, j: usize) -> RowsMut<'_> {
        RowsMut {
            data: &mut self.data[j..],
            ld: self.ld,
        }
    }
}

/// A register tile of a small matrix product:
/// `c[i][16v + l] = (add ? c[..] : 0) + alpha * Σ_{p<k} a[i][p] * b[p][16v + l]`
/// for rows `i < R`, vectors `v < C` and lanes `l < 16`. Every element sums over `p` in
/// order, one fused multiply-add per step, so every instruction set gives the same bits
/// (the portable one uses `mul_add`: exact, if slow, without FMA hardware).
///
/// `ISA` picks explicit vector code, which LLVM does not reliably find on its own for
/// this shape; it falls back to the portable code if the CPU lacks the set.
#[inline(always)]
pub fn tile<const ISA: u8, const R: usize, const C: usize>(
    k: usize,
    a: Strided, // [R, k]
    b: Rows,    // [k, 16C]
    c: RowsMut, // [R, 16C]
    alpha: f32,
    add: bool,
) {
    let (ars, acs, ldb, ldc) = (a.rs, a.cs, b.ld, c.ld);
    assert!(R > 0 && C > 0);
    assert!((R - 1) * ldc + C * 16 <= c.data.len(), "tile: c out of bounds");
    if k > 0 {
        assert!((R - 1) * ars + (k - 1) * acs < a.data.len(), "tile: a out of bounds");
        assert!((k - 1) * ldb + C * 16 <= b.data.len(), "tile: b out of bounds");
    }
    #[cfg(target_arch = "x86_64")]
    {
        if ISA == AVX512 && Isa::best() == Isa::Avx512 {
            // SAFETY: the CPU has AVX-512F; extents asserted above.
            unsafe { x86::tile_avx512::<R, C>(k, a, b, c, alpha, add) };
            return;
        }
        if ISA == AVX2 && matches!(Isa::best(), Isa::Avx2 | Isa::Avx512) {
            // SAFETY: the CPU has AVX2 and FMA; extents asserted above.
            unsafe { x86::tile_avx2::<R, C>(k, a, b, c, alpha, add) };
            return;
        }
    }
    tile_portable::<R, C>(k, a, b, c, alpha, add);
}

#[inline(always)]
fn tile_portable<const R: usize, const C: usize>(k: usize, a: Strided, b: Rows, c: RowsMut, alpha: f32, add: bool) {
    let (a, ars, acs) = (a.data, a.rs, a.cs);
    let (b, ldb) = (b.data, b.ld);
    let (c, ldc) = (c.data, c.ld);
    let mut acc = [[[0f32; 16]; C]; R];
    for p in 0..k {
        let brow = &b[p * ldb..p * ldb + C * 16];
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let x = a[i * ars + p * acs];
            for (acc_v, b_v) in acc_i.iter_mut().zip(brow.chunks_exact(16)) {
                for l in 0..16 {
                    acc_v[l] = x.mul_add(b_v[l], acc_v[l]);
                }
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        let row = &mut c[i * ldc..i * ldc + C * 16];
        for (dst, acc_v) in row.chunks_exact_mut(16).zip(acc_i) {
            for l in 0..16 {
                dst[l] = if add {
                    dst[l] + alpha * acc_v[l]
                } else {
                    alpha * acc_v[l]
                };
            }
        }
    }
}

/// Σ x over whole vectors (`x.len()` a multiple of 16): 16 lane sums in order, then the
/// fixed tree of [`hsum16`], so every instruction set gives the same bits.
#[inline(always)]
pub fn sum_vectors<const ISA: u8>(x: &[f32]) -> f32 {
    assert!(
        x.len().is_multiple_of(16),
        "sum_vectors: {} is not whole vectors",
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if ISA == AVX512 && Isa::best() == Isa::Avx512 {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { x86::sum_avx512(x) };
        }
        if ISA == AVX2 && matches!(Isa::best(), Isa::Avx2 | Isa::Avx512) {
            // SAFETY: the CPU has AVX2.
            return unsafe { x86::sum_avx2(x) };
        }
    }
    let mut acc = [0f32; 16];
    for c in x.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    hsum16(&acc)
}

/// The largest element of whole vectors (`x.len()` a multiple of 16, at least one).
#[inline(always)]
pub fn max_vectors<const ISA: u8>(x: &[f32]) -> f32 {
    assert!(
        x.len().is_multiple_of(16) && !x.is_empty(),
        "max_vectors: {} is not whole vectors",
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if ISA == AVX512 && Isa::best() == Isa::Avx512 {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { x86::max_avx512(x) };
        }
        if ISA == AVX2 && matches!(Isa::best(), Isa::Avx2 | Isa::Avx512) {
            // SAFETY: the CPU has AVX2.
            return unsafe { x86::max_avx2(x) };
        }
    }
    let mut m = [f32::NEG_INFINITY; 16];
    for c in x.chunks_exact(16) {
        for l in 0..16 {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    hmax16(&m)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Rows, RowsMut, Strided};
    use std::arch::x86_64::*;

    /// [`super::tile`] with one zmm register per 16 lanes. Safety: the CPU has
    /// AVX-512F; the extents of `a`, `b`, `c` are those `tile` asserts.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    pub(super) unsafe fn tile_avx512<const R: usize, const C: usize>(
        k: usize,
        a: Strided,
        b: Rows,
        c: RowsMut,
        alpha: f32,
        add: bool,
    ) {
        let (a, ars, acs) = (a.data.as_ptr(), a.rs, a.cs);
        let (b, ldb) = (b.data.as_ptr(), b.ld);
        let (c, ldc) = (c.data.as_mut_ptr(), c.ld);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        // SAFETY: every offset lies inside the extents the caller guarantees.
        unsafe {
            for p in 0..k {
                let bp = b.add(p * ldb);
                let mut bv = [_mm512_setzero_ps(); C];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(bp.add(16 * v));
                }
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(i * ars + p * acs));
                    for (acc_v, &b_v) in acc_i.iter_mut().zip(&bv) {
                        *acc_v = _mm512_fmadd_ps(x, b_v, *acc_v);
                    }
                }
            }
            let alpha = _mm512_set1_ps(alpha);
            for (i, acc_i) in acc.iter().enumerate() {
                for (v, &acc_v) in acc_i.iter().enumerate() {
                    let dst = c.add(i * ldc + 16 * v);
                    let r = _mm512_mul_ps(alpha, acc_v);
                    let r = if add { _mm512_add_ps(_mm512_loadu_ps(dst), r) } else { r };
                    _mm512_storeu_ps(dst, r);
                }
            }
        }
    }

    /// [`super::tile`] with two ymm registers per 16 lanes. Safety: the CPU has AVX2 and
    /// FMA; the extents of `a`, `b`, `c` are those `tile` asserts.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn tile_avx2<const R: usize, const C: usize>(
        k: usize,
        a: Strided,
        b: Rows,
        c: RowsMut,
        alpha: f32,
        add: bool,
    ) {
        let (a, ars, acs) = (a.data.as_ptr(), a.rs, a.cs);
        let (b, ldb) = (b.data.as_ptr(), b.ld);
        let (c, ldc) = (c.data.as_mut_ptr(), c.ld);
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        // SAFETY: every offset lies inside the extents the caller guarantees.
        unsafe {
            for p in 0..k {
                let bp = b.add(p * ldb);
                let mut bv = [[_mm256_setzero_ps(); 2]; C];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = [_mm256_loadu_ps(bp.add(16 * v)), _mm256_loadu_ps(bp.add(16 * v + 8))];
                }
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*a.add(i * ars + p * acs));
                    for (acc_v, b_v) in acc_i.iter_mut().zip(&bv) {
                        acc_v[0] = _mm256_fmadd_ps(x, b_v[0], acc_v[0]);
                        acc_v[1] = _mm256_fmadd_ps(x, b_v[1], acc_v[1]);
                    }
                }
            }
            let alpha = _mm256_set1_ps(alpha);
            for (i, acc_i) in acc.iter().enumerate() {
                for (v, acc_v) in acc_i.iter().enumerate() {
                    for (h, &acc_h) in acc_v.iter().enumerate() {
                        let dst = c.add(i * ldc + 16 * v + 8 * h);
                        let r = _mm256_mul_ps(alpha, acc_h);
                        let r = if add { _mm256_add_ps(_mm256_loadu_ps(dst), r) } else { r };
                        _mm256_storeu_ps(dst, r);
                    }
                }
            }
        }
    }

    /// The tree of `hsum16` on 8 lane pairs already added (`s8[l] = acc[l] + acc[l + 8]`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum8(s8: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        // (s4[0] + s4[2]) + (s4[1] + s4[3])
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hmax8(m8: __m256) -> f32 {
        let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m8), _mm256_castps256_ps128(m8));
        let m2 = _mm_max_ps(_mm_movehl_ps(m4, m4), m4);
        _mm_cvtss_f32(_mm_max_ss(_mm_movehdup_ps(m2), m2))
    }

    /// Safety: the CPU has AVX-512F; `x.len()` is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    pub(super) unsafe fn sum_avx512(x: &[f32]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for c in x.chunks_exact(16) {
            // SAFETY: c holds 16 floats.
            acc = _mm512_add_ps(acc, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        let lo = _mm512_castps512_ps256(acc);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
        hsum8(_mm256_add_ps(lo, hi))
    }

    /// Safety: the CPU has AVX2; `x.len()` is a multiple of 16.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn sum_avx2(x: &[f32]) -> f32 {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in x.chunks_exact(16) {
            // SAFETY: c holds 16 floats.
            unsafe {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(c.as_ptr()));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(c.as_ptr().add(8)));
            }
        }
        hsum8(_mm256_add_ps(lo, hi))
    }

    /// Safety: the CPU has AVX-512F; `x.len()` is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[inline]
    pub(super) unsafe fn max_avx512(x: &[f32]) -> f32 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in x.chunks_exact(16) {
            // SAFETY: c holds 16 floats.
            m = _mm512_max_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, m);
        }
        let lo = _mm512_castps512_ps256(m);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(m)));
        hmax8(_mm256_max_ps(hi, lo))
    }

    /// Safety: the CPU has AVX2; `x.len()` is a multiple of 16.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn max_avx2(x: &[f32]) -> f32 {
        let (mut lo, mut hi) = (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_set1_ps(f32::NEG_INFINITY));
        for c in x.chunks_exact(16) {
            // SAFETY: c holds 16 floats.
            unsafe {
                lo = _mm256_max_ps(_mm256_loadu_ps(c.as_ptr()), lo);
                hi = _mm256_max_ps(_mm256_loadu_ps(c.as_ptr().add(8)), hi);
            }
        }
        hmax8(_mm256_max_ps(hi, lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place of `want` (rounded to f32) from `got`.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        if w.is_infinite() {
            return if got == w { 0.0 } else { f64::INFINITY };
        }
        let ulp = if w == 0.0 {
            f32::from_bits(1) as f64
        } else {
            let next = f32::from_bits(w.abs().to_bits() + 1) as f64;
            next - w.abs() as f64
        };
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_float_range() {
        // Every 127th bit pattern from -104 up to 89 (both signs), about 17 million inputs,
        // through the dispatched (vectorized) path. (An exhaustive sweep finds 1.02 ulp.)
        let mut xs: Vec<f32> = (0..=EXP_MIN_IN.to_bits())
            .step_by(127)
            .map(f32::from_bits)
            .filter(|x| x.abs() <= -EXP_MIN_IN)
            .collect();
        xs.extend((0..=EXP_MAX_IN.to_bits()).step_by(127).map(f32::from_bits));
        xs.extend([
            EXP_MAX_IN,
            88.72283,
            88.722_84,
            -87.33654,
            -87.336_55,
            -103.97,
            -103.972_08,
            1e-30,
            -1e-30,
        ]);
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        let mut worst = (0.0, 0f32);
        for (&x, &y) in xs.iter().zip(&ys) {
            let e = ulps(y, (x as f64).exp());
            if e > worst.0 {
                worst = (e, x);
            }
            assert_eq!(y.to_bits(), exp(x).to_bits(), "vector and scalar paths differ at {x}");
        }
        assert!(worst.0 <= 1.5, "max error {} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_special_values() {
        assert_eq!(exp(f32::NEG_INFINITY).to_bits(), 0f32.to_bits());
        assert_eq!(exp(-1000.0).to_bits(), 0f32.to_bits());
        assert_eq!(exp(-104.0).to_bits(), 0f32.to_bits());
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(88.8), f32::INFINITY);
        assert_eq!(exp(1e30), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        // The largest finite and smallest nonzero results.
        assert!(exp(88.72283).is_finite() && exp(88.72283) > 3.4e38);
        assert_eq!(exp(-103.9), f32::from_bits(1));
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(f32::NAN).is_nan());
        let mut v = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, 0.0, 1.0];
        exp_in_place(&mut v);
        assert!(v[0].is_nan());
        assert_eq!(&v[1..], &[0.0, f32::INFINITY, 1.0, std::f32::consts::E]);
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let u = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(97))
                    >> 8;
                u as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// `tile` computed in f64 (the sums are short enough for a tight bound): [r, nc].
    fn tile_f64(r: usize, nc: usize, k: usize, a: Strided, b: Rows, alpha: f32) -> Vec<f64> {
        let mut out = vec![0f64; r * nc];
        for i in 0..r {
            for j in 0..nc {
                let s: f64 = (0..k)
                    .map(|p| a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.ld + j] as f64)
                    .sum();
                out[i * nc + j] = alpha as f64 * s;
            }
        }
        out
    }

    /// Output stride of the tile tests: rows of 80 computed columns and 10 untouched.
    const LDC: usize = 90;

    fn run_tile<const ISA: u8>(k: usize, a: Strided, b: Rows, c0: &[f32], add: bool) -> Vec<f32> {
        let mut c = c0.to_vec();
        let mut c = RowsMut::new(&mut c, LDC);
        tile::<ISA, 4, 4>(k, a, b, c.from_col(0), 0.375, add);
        tile::<ISA, 4, 1>(k, a, b.from_col(64), c.from_col(64), 0.375, add);
        let a4 = Strided {
            data: &a.data[4 * a.rs..],
            ..a
        };
        tile::<ISA, 2, 2>(k, a4, b, c.from_col(4 * LDC), 0.375, add);
        c.data.to_vec()
    }

    #[test]
    fn tiles_agree_bit_for_bit_across_instruction_sets_and_with_f64() {
        for (k, ars, acs) in [(0, 1, 1), (1, 3, 1), (37, 1, 9), (64, 67, 1)] {
            let a = values(6 * ars + k * acs + 1, 1);
            let ldb = 83;
            let b = values(k.max(1) * ldb, 2);
            let c0 = values(6 * LDC, 3);
            for add in [false, true] {
                let (sa, sb) = (
                    Strided {
                        data: &a,
                        rs: ars,
                        cs: acs,
                    },
                    Rows::new(&b, ldb),
                );
                let want = run_tile::<PORTABLE>(k, sa, sb, &c0, add);
                assert_eq!(want, run_tile::<AVX2>(k, sa, sb, &c0, add), "AVX2, k = {k}");
                assert_eq!(want, run_tile::<AVX512>(k, sa, sb, &c0, add), "AVX-512, k = {k}");
                let reference = tile_f64(6, 80, k, sa, sb, 0.375);
                for i in 0..6 {
                    for j in 0..LDC {
                        let (got, old) = (want[i * LDC + j] as f64, c0[i * LDC + j] as f64);
                        if j >= 80 || (i >= 4 && j >= 32) {
                            assert_eq!(got, old, "k = {k}: ({i}, {j}) is outside the tiles");
                            continue;
                        }
                        let expect = if add { old } else { 0.0 } + reference[i * 80 + j];
                        assert!(
                            (got - expect).abs() < 1e-5 * (1.0 + expect.abs()),
                            "k = {k} ({i}, {j}): {got} vs {expect}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn vector_reductions_agree_across_instruction_sets() {
        for n in [16, 48, 1024] {
            let x = values(n, 5);
            let sum = sum_vectors::<PORTABLE>(&x);
            assert_eq!(sum.to_bits(), sum_vectors::<AVX2>(&x).to_bits(), "n = {n}");
            assert_eq!(sum.to_bits(), sum_vectors::<AVX512>(&x).to_bits(), "n = {n}");
            let want: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((sum as f64 - want).abs() < 1e-4, "n = {n}: {sum} vs {want}");
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for got in [
                max_vectors::<PORTABLE>(&x),
                max_vectors::<AVX2>(&x),
                max_vectors::<AVX512>(&x),
            ] {
                assert_eq!(got, max, "n = {n}");
            }
        }
    }

    #[test]
    fn dot_handles_ragged_lengths() {
        for n in [0, 1, 15, 16, 17, 64, 100] {
            let (a, b) = (values(n, 7), values(n, 8));
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let got = dot(&a, &b);
            assert!(
                (got as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "n = {n}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn hmax16_finds_the_largest_lane() {
        for hot in 0..16 {
            let mut m = [-3.0f32; 16];
            m[hot] = 7.5;
            m[(hot + 5) % 16] = f32::NEG_INFINITY;
            assert_eq!(hmax16(&m), 7.5);
        }
    }
}
