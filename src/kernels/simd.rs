//! Runtime CPU-feature dispatch for the element-wise and attention kernels.
//!
//! Kernel bodies are written once as plain Rust over fixed 16-lane accumulators, so the
//! order of every floating-point operation is fixed by the code (the same result on AVX-512,
//! AVX2, NEON or scalar); `multiversion!` compiles each body once per instruction set and
//! picks one at run time, so a single x86_64 binary uses AVX-512 where it exists.
//!
//! LLVM vectorizes such bodies only when every accumulator update covers all 16 lanes and
//! the final horizontal reduction is kept apart ([`hsum16`]); for the register tiles of
//! small matrix products and whole-vector reductions, where it picks poor shapes, the
//! x86 paths are written with explicit vector code in the same operation order.

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::isa::Isa;

/// Defines `fn name(args) -> ret` whose body is compiled for AVX-512, AVX2+FMA and the
/// baseline, dispatched on [`Isa::best`](crate::isa::Isa::best). The body must only call `#[inline(always)]` helpers
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
pub const NEON: u8 = 3;

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
    #[cfg(target_arch = "aarch64")]
    if ISA == NEON && Isa::best() == Isa::Neon {
        // SAFETY: NEON is baseline on aarch64 (Isa::Neon is Scalar's only alternative);
        // extents asserted above.
        unsafe { neon::tile::<R, C>(k, a, b, c, alpha, add) };
        return;
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
    #[cfg(target_arch = "aarch64")]
    if ISA == NEON && Isa::best() == Isa::Neon {
        return neon::sum(x);
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
    #[cfg(target_arch = "aarch64")]
    if ISA == NEON && Isa::best() == Isa::Neon {
        return neon::max(x);
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

/// NEON paths of [`tile`], [`sum_vectors`] and [`max_vectors`]: four 4-lane registers
/// per 16 lanes, each lane doing the portable code's operations in its order (a fused
/// multiply-add per step; the final trees are the portable [`hsum16`] and [`hmax16`]).
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{Rows, RowsMut, Strided, hmax16, hsum16};
    use std::arch::aarch64::*;

    /// [`super::tile`]. Safety: the extents of `a`, `b`, `c` are those `tile` asserts.
    #[inline]
    pub(super) unsafe fn tile<const R: usize, const C: usize>(
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
        // SAFETY: every offset lies inside the extents the caller guarantees.
        unsafe {
            let mut acc = [[[vdupq_n_f32(0.0); 4]; C]; R];
            for p in 0..k {
                let bp = b.add(p * ldb);
                let mut bv = [[vdupq_n_f32(0.0); 4]; C];
                for (v, x) in bv.iter_mut().enumerate() {
                    for (q, x) in x.iter_mut().enumerate() {
                        *x = vld1q_f32(bp.add(16 * v + 4 * q));
                    }
                }
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let x = vdupq_n_f32(*a.add(i * ars + p * acs));
                    for (acc_v, b_v) in acc_i.iter_mut().zip(&bv) {
                        for (acc_q, &b_q) in acc_v.iter_mut().zip(b_v) {
                            *acc_q = vfmaq_f32(*acc_q, x, b_q);
                        }
                    }
                }
            }
            let alpha = vdupq_n_f32(alpha);
            for (i, acc_i) in acc.iter().enumerate() {
                for (v, acc_v) in acc_i.iter().enumerate() {
                    for (q, &acc_q) in acc_v.iter().enumerate() {
                        let dst = c.add(i * ldc + 16 * v + 4 * q);
                        let r = vmulq_f32(alpha, acc_q);
                        let r = if add { vaddq_f32(vld1q_f32(dst), r) } else { r };
                        vst1q_f32(dst, r);
                    }
                }
            }
        }
    }

    /// The 16 lanes of four registers, for the portable trees.
    #[inline(always)]
    fn lanes(v: [float32x4_t; 4]) -> [f32; 16] {
        let mut out = [0f32; 16];
        for (q, r) in v.into_iter().enumerate() {
            // SAFETY: out has room for 16 floats.
            unsafe { vst1q_f32(out.as_mut_ptr().add(4 * q), r) };
        }
        out
    }

    /// [`super::sum_vectors`]: `x.len()` is a multiple of 16.
    #[inline]
    pub(super) fn sum(x: &[f32]) -> f32 {
        // SAFETY: NEON is baseline; each chunk holds 16 floats.
        unsafe {
            let mut acc = [vdupq_n_f32(0.0); 4];
            for c in x.chunks_exact(16) {
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = vaddq_f32(*a, vld1q_f32(c.as_ptr().add(4 * q)));
                }
            }
            hsum16(&lanes(acc))
        }
    }

    /// [`super::max_vectors`]: `x.len()` is a multiple of 16. A lane keeps its value
    /// unless the new one is greater (NaN never wins), as the portable loop does; NEON's
    /// own maximum would return a NaN.
    #[inline]
    pub(super) fn max(x: &[f32]) -> f32 {
        // SAFETY: NEON is baseline; each chunk holds 16 floats.
        unsafe {
            let mut m = [vdupq_n_f32(f32::NEG_INFINITY); 4];
            for c in x.chunks_exact(16) {
                for (q, m) in m.iter_mut().enumerate() {
                    let v = vld1q_f32(c.as_ptr().add(4 * q));
                    *m = vbslq_f32(vcgtq_f32(v, *m), v, *m);
                }
            }
            hmax16(&lanes(m))
        }
    }
}

#[cfg(test)]
mod tests;
