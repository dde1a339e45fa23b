//! x86_64 microkernels: AVX-512F (`12 x 32`) and AVX2+FMA (`6 x 16`). Rows of A are
//! broadcast, rows of B are vectors; every accumulator lives in a register for the
//! whole reduction chunk.

use super::driver::{Kernel, dequant_generic, dequant_t_none};
use crate::quant::DType;
use half::f16;
use std::arch::x86_64::*;

const MR512: usize = 12;
const MR2: usize = 6;

pub(super) const AVX512: Kernel = Kernel {
    mr: MR512,
    nr: 32,
    tiles: &[
        tile_avx512::<1>,
        tile_avx512::<2>,
        tile_avx512::<3>,
        tile_avx512::<4>,
        tile_avx512::<5>,
        tile_avx512::<6>,
        tile_avx512::<7>,
        tile_avx512::<8>,
        tile_avx512::<9>,
        tile_avx512::<10>,
        tile_avx512::<11>,
        tile_avx512::<12>,
    ],
    transpose: transpose_avx512,
    dequant: dequant_avx512,
    dequant_t: dequant_t_avx512,
    pairs: None,
    dequant_packed: None,
};

pub(super) const AVX2: Kernel = Kernel {
    mr: MR2,
    nr: 16,
    tiles: &[
        tile_avx2::<1>,
        tile_avx2::<2>,
        tile_avx2::<3>,
        tile_avx2::<4>,
        tile_avx2::<5>,
        tile_avx2::<6>,
    ],
    transpose: transpose_avx2,
    // Set where the kernel is chosen (`avx2_expand`'s, which use this module's transposes).
    dequant: dequant_generic,
    dequant_t: dequant_t_none,
    pairs: None,
    dequant_packed: None,
};

/// The first `R` rows of a `12 x 32` tile. Safety: see `Kernel::tiles`; the CPU has
/// AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize>(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    // SAFETY: the extents of a, b and c are the caller's contract.
    unsafe {
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for i in 0..R {
                let ai = _mm512_set1_ps(*a.add(i));
                lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
            }
            a = a.add(MR512);
            b = b.add(32);
        }
        for i in 0..R {
            if add {
                lo[i] = _mm512_add_ps(_mm512_loadu_ps(c.add(i * ldc)), lo[i]);
                hi[i] = _mm512_add_ps(_mm512_loadu_ps(c.add(i * ldc + 16)), hi[i]);
            }
            _mm512_storeu_ps(c.add(i * ldc), lo[i]);
            _mm512_storeu_ps(c.add(i * ldc + 16), hi[i]);
        }
    }
}

/// The first `R` rows of a `6 x 16` tile. Safety: see `Kernel::tiles`; the CPU has AVX2
/// and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize>(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    // SAFETY: the extents of a, b and c are the caller's contract.
    unsafe {
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for i in 0..R {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                lo[i] = _mm256_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(ai, b1, hi[i]);
            }
            a = a.add(MR2);
            b = b.add(16);
        }
        for i in 0..R {
            if add {
                lo[i] = _mm256_add_ps(_mm256_loadu_ps(c.add(i * ldc)), lo[i]);
                hi[i] = _mm256_add_ps(_mm256_loadu_ps(c.add(i * ldc + 8)), hi[i]);
            }
            _mm256_storeu_ps(c.add(i * ldc), lo[i]);
            _mm256_storeu_ps(c.add(i * ldc + 8), hi[i]);
        }
    }
}

/// Safety: the CPU has AVX-512F. See `Kernel::transpose`.
unsafe fn transpose_avx512(src: &[f32], ld: usize, rows: usize, kc: usize, nr: usize, dst: &mut [f32]) {
    if rows == 0 || kc == 0 {
        return;
    }
    assert!(rows <= nr && dst.len() >= kc * nr && ld >= kc && src.len() >= (rows - 1) * ld + kc);
    // SAFETY: extents checked above; the unit is the caller's contract.
    unsafe { transpose_avx512_unchecked(src.as_ptr(), ld, rows, kc, nr, dst.as_mut_ptr()) }
}

#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512_unchecked(src: *const f32, ld: usize, rows: usize, kc: usize, nr: usize, dst: *mut f32) {
    let full = kc / 16 * 16;
    for r0 in (0..rows).step_by(16) {
        let nrow = (rows - r0).min(16);
        let mask: __mmask16 = ((1u32 << nrow) - 1) as __mmask16;
        // SAFETY: rows r0..r0+nrow of src hold kc elements at stride ld; dst holds kc rows
        // of nr and r0 + nrow <= nr; masked-off lanes are not accessed.
        unsafe {
            for p in (0..full).step_by(16) {
                let mut v = [_mm512_setzero_ps(); 16];
                for (i, v) in v.iter_mut().enumerate() {
                    if i < nrow {
                        *v = _mm512_loadu_ps(src.add((r0 + i) * ld + p));
                    }
                }
                let v = transpose16(v);
                for (t, v) in v.iter().enumerate() {
                    _mm512_mask_storeu_ps(dst.add((p + t) * nr + r0), mask, *v);
                }
            }
            for p in full..kc {
                for i in 0..nrow {
                    *dst.add(p * nr + r0 + i) = *src.add((r0 + i) * ld + p);
                }
            }
        }
    }
}

/// Safety: the CPU has AVX2. See `Kernel::transpose`.
unsafe fn transpose_avx2(src: &[f32], ld: usize, rows: usize, kc: usize, nr: usize, dst: &mut [f32]) {
    if rows == 0 || kc == 0 {
        return;
    }
    assert!(rows <= nr && dst.len() >= kc * nr && ld >= kc && src.len() >= (rows - 1) * ld + kc);
    // SAFETY: extents checked above; the unit is the caller's contract.
    unsafe { transpose_avx2_unchecked(src.as_ptr(), ld, rows, kc, nr, dst.as_mut_ptr()) }
}

/// Blocks of 8 rows by 8 steps through registers: the portable transpose's element-wise
/// strided stores took 11% of the samples of an AVX2 forward pass over F32 weights, this
/// one 3%.
#[target_feature(enable = "avx2")]
unsafe fn transpose_avx2_unchecked(src: *const f32, ld: usize, rows: usize, kc: usize, nr: usize, dst: *mut f32) {
    let full = kc / 8 * 8;
    for r0 in (0..rows).step_by(8) {
        let nrow = (rows - r0).min(8);
        // SAFETY: rows r0..r0+nrow of src hold kc elements at stride ld; dst holds kc rows
        // of nr and r0 + nrow <= nr; lanes from nrow on are not stored.
        unsafe {
            for p in (0..full).step_by(8) {
                let mut v = [_mm256_setzero_ps(); 8];
                for (i, v) in v.iter_mut().enumerate().take(nrow) {
                    *v = _mm256_loadu_ps(src.add((r0 + i) * ld + p));
                }
                for (t, v) in transpose8(v).iter().enumerate() {
                    store_first(dst.add((p + t) * nr + r0), *v, nrow);
                }
            }
            for p in full..kc {
                for i in 0..nrow {
                    *dst.add(p * nr + r0 + i) = *src.add((r0 + i) * ld + p);
                }
            }
        }
    }
}

/// Stores lanes `0..n` of `v` (`n <= 8`) at `dst`, with plain stores of 4, 2 and 1 lanes:
/// AVX2's masked store is microcoded on AMD's cores before Zen 4, and with it the
/// transposes took 15% of the samples of a 2-thread training step there.
///
/// Safety: the CPU has AVX2; `dst` is writable for `n` elements.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn store_first(dst: *mut f32, v: __m256, n: usize) {
    // SAFETY: each store writes lanes below n, inside the caller's extent.
    unsafe {
        if n == 8 {
            _mm256_storeu_ps(dst, v);
            return;
        }
        let (mut part, mut at, mut left) = (_mm256_castps256_ps128(v), 0, n);
        if left >= 4 {
            _mm_storeu_ps(dst, part);
            (part, at, left) = (_mm256_extractf128_ps::<1>(v), 4, left - 4);
        }
        if left >= 2 {
            _mm_storel_pd(dst.add(at).cast(), _mm_castps_pd(part));
            (part, at, left) = (_mm_movehl_ps(part, part), at + 2, left - 2);
        }
        if left == 1 {
            _mm_store_ss(dst.add(at), part);
        }
    }
}

/// 8x8 transpose in registers: interleave 32-bit pairs, then 64-bit, then 128-bit lanes.
#[target_feature(enable = "avx2")]
pub(super) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4q + c]: rows 4q..4q + 4 of columns c and c + 4 (one per 128-bit lane).
    let mut u = [_mm256_setzero_ps(); 8];
    for q in 0..2 {
        u[4 * q] = _mm256_shuffle_ps::<0x44>(t[4 * q], t[4 * q + 2]);
        u[4 * q + 1] = _mm256_shuffle_ps::<0xee>(t[4 * q], t[4 * q + 2]);
        u[4 * q + 2] = _mm256_shuffle_ps::<0x44>(t[4 * q + 1], t[4 * q + 3]);
        u[4 * q + 3] = _mm256_shuffle_ps::<0xee>(t[4 * q + 1], t[4 * q + 3]);
    }
    let mut out = [_mm256_setzero_ps(); 8];
    for c in 0..4 {
        out[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
        out[c + 4] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
    }
    out
}

/// 16x16 transpose in registers: interleave 32-bit, then 64-bit pairs, then 128-bit lanes
/// twice.
#[target_feature(enable = "avx512f")]
pub(super) fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4q + c]: rows 4q..4q+4 of columns c, c+4, c+8, c+12 (one per 128-bit lane).
    let mut u = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let (lo0, hi0) = (_mm512_castps_pd(t[4 * q]), _mm512_castps_pd(t[4 * q + 2]));
        let (lo1, hi1) = (_mm512_castps_pd(t[4 * q + 1]), _mm512_castps_pd(t[4 * q + 3]));
        u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, hi0));
        u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, hi0));
        u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo1, hi1));
        u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo1, hi1));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[c + 8] = _mm512_shuffle_f32x4::<0xdd>(v0, v2);
        out[c + 4] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[c + 12] = _mm512_shuffle_f32x4::<0xdd>(v1, v3);
    }
    out
}

/// Safety: the CPU has AVX-512F. Same bits as `dequantize_row_unchecked`: the block
/// scales are applied with a separate multiply and add, as the reference does.
unsafe fn dequant_avx512(dtype: DType, src: &[u8], dst: &mut [f32]) {
    // SAFETY: the unit is the caller's contract.
    unsafe {
        match dtype {
            DType::F32 => {
                let n = dst.len().min(src.len() / 4);
                std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), n * 4);
            }
            DType::F16 => f16_avx512(src, dst),
            DType::BF16 => bf16_avx512(src, dst),
            DType::Q8_0 => q8_0_avx512(src, dst),
            DType::Q4_0 => q4_avx512::<false>(src, dst),
            DType::Q4_1 => q4_avx512::<true>(src, dst),
            _ => dequant_generic(dtype, src, dst),
        }
    }
}

/// One f16 scale, converted by F16C (exact, as `half` converts it).
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[target_feature(enable = "avx512f,f16c")]
fn f16_avx512(src: &[u8], dst: &mut [f32]) {
    let mut s = src.chunks_exact(32);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: s holds 32 bytes and d 16 floats.
        unsafe {
            let h = _mm256_loadu_si256(s.as_ptr().cast());
            _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h));
        }
    }
    for (s, d) in s.remainder().chunks_exact(2).zip(d.into_remainder()) {
        *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
    }
}

#[target_feature(enable = "avx512f,f16c")]
fn bf16_avx512(src: &[u8], dst: &mut [f32]) {
    let mut s = src.chunks_exact(32);
    let mut d = dst.chunks_exact_mut(16);
    for (s, d) in (&mut s).zip(&mut d) {
        // SAFETY: s holds 32 bytes and d 16 floats.
        unsafe {
            let x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().cast()));
            // A NaN comes out quiet, as `half` makes it.
            let nan = _mm512_cmpgt_epu32_mask(
                _mm512_and_si512(x, _mm512_set1_epi32(0x7fff)),
                _mm512_set1_epi32(0x7f80),
            );
            let bits = _mm512_mask_or_epi32(x, nan, x, _mm512_set1_epi32(0x40));
            let bits = _mm512_slli_epi32::<16>(bits);
            _mm512_storeu_ps(d.as_mut_ptr(), _mm512_castsi512_ps(bits));
        }
    }
    for (s, d) in s.remainder().chunks_exact(2).zip(d.into_remainder()) {
        *d = half::bf16::from_le_bytes([s[0], s[1]]).to_f32();
    }
}

#[target_feature(enable = "avx512f,f16c")]
fn q8_0_avx512(src: &[u8], dst: &mut [f32]) {
    for (b, out) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(f16_at(b, 0));
        // SAFETY: b holds 34 bytes (32 quants from offset 2) and out 32 floats.
        unsafe {
            for h in 0..2 {
                let q = _mm_loadu_si128(b.as_ptr().add(2 + 16 * h).cast());
                let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * h), _mm512_mul_ps(d, q));
            }
        }
    }
}

/// Q4_0 (`d * (q - 8)`) and Q4_1 (`d * q + m`): low nibbles are elements 0..16.
#[target_feature(enable = "avx512f,f16c")]
fn q4_avx512<const WITH_MIN: bool>(src: &[u8], dst: &mut [f32]) {
    let (bytes, qs) = if WITH_MIN { (20, 4) } else { (18, 2) };
    for (b, out) in src.chunks_exact(bytes).zip(dst.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(f16_at(b, 0));
        // SAFETY: b holds 16 quant bytes from offset qs, out 32 floats.
        unsafe {
            let q = _mm_loadu_si128(b.as_ptr().add(qs).cast());
            let nib = _mm_set1_epi8(0x0f);
            let halves = [_mm_and_si128(q, nib), _mm_and_si128(_mm_srli_epi16::<4>(q), nib)];
            for (h, q) in halves.into_iter().enumerate() {
                let q = _mm512_cvtepu8_epi32(q);
                let y = if WITH_MIN {
                    let m = _mm512_set1_ps(f16_at(b, 2));
                    // Exact product, one rounding: the reference's bits (see `load16`).
                    _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(q), m)
                } else {
                    let q = _mm512_sub_epi32(q, _mm512_set1_epi32(8));
                    _mm512_mul_ps(d, _mm512_cvtepi32_ps(q))
                };
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * h), y);
            }
        }
    }
}

/// Formats with a fused expand-and-transpose, as const parameters.
pub(super) const F32: u8 = 0;
pub(super) const F16: u8 = 1;
pub(super) const BF16: u8 = 2;
pub(super) const Q8_0: u8 = 3;
pub(super) const Q4_0: u8 = 4;
pub(super) const Q4_1: u8 = 5;

/// Safety: the CPU has AVX-512F and F16C. See `Kernel::dequant_t`.
unsafe fn dequant_t_avx512(dtype: DType, rows: &[&[u8]], kc: usize, nr: usize, dst: &mut [f32]) -> bool {
    let code = match dtype {
        DType::F32 => F32,
        DType::F16 => F16,
        DType::BF16 => BF16,
        DType::Q8_0 => Q8_0,
        DType::Q4_0 => Q4_0,
        DType::Q4_1 => Q4_1,
        _ => return false,
    };
    let bytes = dtype.row_bytes(kc);
    if !kc.is_multiple_of(16) || rows.len() > nr || dst.len() < kc * nr || rows.iter().any(|r| Some(r.len()) != bytes) {
        return false;
    }
    // SAFETY: every row holds kc elements in `dtype` and dst kc rows of nr; the unit is
    // the caller's contract.
    unsafe {
        match code {
            F32 => dequant_t_rows::<F32>(rows, kc, nr, dst.as_mut_ptr()),
            F16 => dequant_t_rows::<F16>(rows, kc, nr, dst.as_mut_ptr()),
            BF16 => dequant_t_rows::<BF16>(rows, kc, nr, dst.as_mut_ptr()),
            Q8_0 => dequant_t_rows::<Q8_0>(rows, kc, nr, dst.as_mut_ptr()),
            Q4_0 => dequant_t_rows::<Q4_0>(rows, kc, nr, dst.as_mut_ptr()),
            _ => dequant_t_rows::<Q4_1>(rows, kc, nr, dst.as_mut_ptr()),
        }
    }
    true
}

/// Expands 16 rows x 16 elements into registers and transposes them, so the weight never
/// passes through an f32 copy in its stored order.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn dequant_t_rows<const D: u8>(rows: &[&[u8]], kc: usize, nr: usize, dst: *mut f32) {
    // The rows sit a whole stored row apart: ask for all their lines at once rather than
    // meeting the misses one by one (this is what bounds a one-token product).
    for row in rows {
        for at in (0..row.len()).step_by(64) {
            // SAFETY: `at` is inside the row.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(at).cast()) };
        }
    }
    for (r0, group) in rows.chunks(16).enumerate().map(|(q, g)| (16 * q, g)) {
        let mask: __mmask16 = ((1u32 << group.len()) - 1) as __mmask16;
        let full = <&[&[u8]; 16]>::try_from(group).ok();
        for p in (0..kc).step_by(16) {
            let v = match full {
                // A fixed count keeps the 16 vectors in registers.
                // SAFETY: each row holds kc >= p + 16 elements.
                Some(rows) => std::array::from_fn(|i| unsafe { load16::<D>(rows[i].as_ptr(), p) }),
                None => {
                    let mut v = [_mm512_setzero_ps(); 16];
                    for (v, row) in v.iter_mut().zip(group) {
                        // SAFETY: the row holds kc >= p + 16 elements.
                        *v = unsafe { load16::<D>(row.as_ptr(), p) };
                    }
                    v
                }
            };
            let v = transpose16(v);
            for (t, v) in v.iter().enumerate() {
                // SAFETY: dst holds kc rows of nr >= r0 + group.len() elements.
                unsafe { _mm512_mask_storeu_ps(dst.add((p + t) * nr + r0), mask, *v) };
            }
        }
    }
}

/// Elements `p..p + 16` (`p` a multiple of 16) of a stored row, with the reference
/// dequantizer's arithmetic.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
pub(super) unsafe fn load16<const D: u8>(row: *const u8, p: usize) -> __m512 {
    let (block, half) = (p / 32, (p / 16) % 2);
    let scale = |at: *const u8| {
        // SAFETY: `at` points at an f16 inside the row.
        let bits = unsafe { at.cast::<u16>().read_unaligned() };
        _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le(
            bits,
        ))))))
    };
    let nibbles = |q: __m128i| {
        let q = if half == 0 { q } else { _mm_srli_epi16::<4>(q) };
        _mm512_cvtepu8_epi32(_mm_and_si128(q, _mm_set1_epi8(0x0f)))
    };
    // SAFETY: the caller guarantees the row holds elements p..p+16 and their block.
    unsafe {
        match D {
            F32 => _mm512_loadu_ps(row.add(4 * p).cast()),
            F16 => _mm512_cvtph_ps(_mm256_loadu_si256(row.add(2 * p).cast())),
            BF16 => {
                let x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(row.add(2 * p).cast()));
                let nan = _mm512_cmpgt_epu32_mask(
                    _mm512_and_si512(x, _mm512_set1_epi32(0x7fff)),
                    _mm512_set1_epi32(0x7f80),
                );
                let bits = _mm512_mask_or_epi32(x, nan, x, _mm512_set1_epi32(0x40));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
            }
            Q8_0 => {
                let b = row.add(34 * block);
                let q = _mm_loadu_si128(b.add(2 + 16 * half).cast());
                _mm512_mul_ps(scale(b), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)))
            }
            Q4_0 => {
                let b = row.add(18 * block);
                let q = nibbles(_mm_loadu_si128(b.add(2).cast()));
                let q = _mm512_sub_epi32(q, _mm512_set1_epi32(8));
                _mm512_mul_ps(scale(b), _mm512_cvtepi32_ps(q))
            }
            _ => {
                let b = row.add(20 * block);
                let q = nibbles(_mm_loadu_si128(b.add(4).cast()));
                // `d * q` is exact (an f16 times a nibble): one rounding, as the reference's
                // multiply then add.
                _mm512_fmadd_ps(scale(b), _mm512_cvtepi32_ps(q), scale(b.add(2)))
            }
        }
    }
}
