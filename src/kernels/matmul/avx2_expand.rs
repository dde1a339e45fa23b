//! AVX2 expansions of stored weights into the tiled kernel's panels: a row of any float
//! format at vector width (`dequant_avx2`), and groups of rows expanded and transposed in
//! registers (`dequant_t_avx2`), so a forward product's panel never passes through an
//! f32 copy of the rows in their stored order.
//!
//! Without them, f16 and bf16 rows were widened one element at a time, and each panel of
//! a forward product went through two passes (the rows expanded into a scratch copy, then
//! transposed from it). Counted by cachegrind on one thread at 200 rows, a bf16 `dY·W`
//! took 8% fewer instructions, a bf16 `X·Wᵀ` 2% and a Q4_1 `X·Wᵀ` 0.5% fewer, with 5-6%
//! fewer L1 misses; in time, the gains are within a shared machine's noise. The
//! arithmetic is the reference dequantizer's (`crate::quant`), so the bits are those of
//! the AVX-512 path and the portable one.

use super::driver::dequant_generic;
use super::x86::{BF16, F16, F32, Q4_0, Q4_1, Q8_0, store_first, transpose8};
use crate::quant::DType;
use std::arch::x86_64::*;

/// Safety: the CPU has AVX2, FMA and F16C. See `Kernel::dequant`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequant_avx2(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    // Whole blocks, as the reference expands them.
    let len = (dst.len() / bl).min(src.len() / bb) * bl;
    // A float row by eights, a few left for the portable path.
    let whole = len / 8 * 8;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: the unit is the caller's contract; `src` holds `len` elements in whole
    // blocks and `dst` at least `len` floats.
    unsafe {
        let done = match dtype {
            DType::F32 => {
                std::ptr::copy_nonoverlapping(s, d.cast::<u8>(), len * 4);
                len
            }
            DType::F16 => expand::<F16>(s, whole, d),
            DType::BF16 => expand::<BF16>(s, whole, d),
            // The block formats go to `crate::quant`'s vector paths, which convert a
            // block's scales once rather than once per eight elements.
            _ => 0,
        };
        dequant_generic(dtype, &src[done / bl * bb..len / bl * bb], &mut dst[done..len]);
    }
}

/// Elements `0..n` (a multiple of 8) of a stored float row into `dst`; returns `n`.
///
/// Safety: the CPU has AVX2, FMA and F16C; the row holds `n` elements in format `D` and
/// `dst` is writable for `n` floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand<const D: u8>(row: *const u8, n: usize, dst: *mut f32) -> usize {
    for p in (0..n).step_by(8) {
        // SAFETY: p + 8 <= n elements of the row and of dst.
        unsafe { _mm256_storeu_ps(dst.add(p), load8::<D>(row, p)) };
    }
    n
}

/// Safety: the CPU has AVX2, FMA and F16C. See `Kernel::dequant_t`.
pub(super) unsafe fn dequant_t_avx2(dtype: DType, rows: &[&[u8]], kc: usize, nr: usize, dst: &mut [f32]) -> bool {
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
    if !kc.is_multiple_of(8) || rows.len() > nr || dst.len() < kc * nr || rows.iter().any(|r| Some(r.len()) != bytes) {
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

/// Expands 8 rows x 8 elements into registers and transposes them: `dst[p * nr + r]` is
/// element `p` of `rows[r]`, for `p < kc` (a multiple of 8).
///
/// Safety: the CPU has AVX2, FMA and F16C; every row holds `kc` elements in format `D`;
/// `dst` holds `kc` rows of `nr >= rows.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequant_t_rows<const D: u8>(rows: &[&[u8]], kc: usize, nr: usize, dst: *mut f32) {
    for (r0, group) in rows.chunks(8).enumerate().map(|(q, g)| (8 * q, g)) {
        let full = <&[&[u8]; 8]>::try_from(group).ok();
        for p in (0..kc).step_by(8) {
            let v = match full {
                // A fixed count keeps the 8 vectors in registers.
                // SAFETY: each row holds kc >= p + 8 elements.
                Some(rows) => std::array::from_fn(|i| unsafe { load8::<D>(rows[i].as_ptr(), p) }),
                None => {
                    let mut v = [_mm256_setzero_ps(); 8];
                    for (v, row) in v.iter_mut().zip(group) {
                        // SAFETY: the row holds kc >= p + 8 elements.
                        *v = unsafe { load8::<D>(row.as_ptr(), p) };
                    }
                    v
                }
            };
            for (t, v) in transpose8(v).iter().enumerate() {
                // SAFETY: dst holds kc rows of nr >= r0 + group.len() elements.
                unsafe { store_first(dst.add((p + t) * nr + r0), *v, group.len()) };
            }
        }
    }
}

/// Elements `p..p + 8` (`p` a multiple of 8) of a stored row, with the reference
/// dequantizer's arithmetic.
///
/// Safety: the CPU has AVX2, FMA and F16C; the row holds elements `p..p + 8` and, for
/// block formats, their whole block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<const D: u8>(row: *const u8, p: usize) -> __m256 {
    let (block, at) = (p / 32, p % 32);
    let scale = |b: *const u8| {
        // SAFETY: `b` points at an f16 inside the row.
        let bits = unsafe { b.cast::<u16>().read_unaligned() };
        _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le(bits)))))
    };
    // Elements 0..16 of a 4-bit block are the low nibbles of its 16 bytes, 16..32 the
    // high ones: eight of them as 32-bit lanes.
    let nibbles = |qs: *const u8| {
        // SAFETY: the block's quant bytes `at % 16 .. at % 16 + 8` lie inside it.
        let q = unsafe { _mm_loadl_epi64(qs.add(at % 16).cast()) };
        let q = if at < 16 { q } else { _mm_srli_epi16::<4>(q) };
        _mm256_cvtepu8_epi32(_mm_and_si128(q, _mm_set1_epi8(0x0f)))
    };
    // SAFETY: the caller guarantees the row holds elements p..p+8 and their block.
    unsafe {
        match D {
            F32 => _mm256_loadu_ps(row.add(4 * p).cast()),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(row.add(2 * p).cast())),
            BF16 => {
                let x = _mm256_cvtepu16_epi32(_mm_loadu_si128(row.add(2 * p).cast()));
                // A NaN comes out quiet, as `half` makes it (the magnitudes compared are
                // below 2^15, so the signed compare is the unsigned one).
                let nan = _mm256_cmpgt_epi32(
                    _mm256_and_si256(x, _mm256_set1_epi32(0x7fff)),
                    _mm256_set1_epi32(0x7f80),
                );
                let bits = _mm256_or_si256(x, _mm256_and_si256(nan, _mm256_set1_epi32(0x40)));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
            }
            Q8_0 => {
                let b = row.add(34 * block);
                let q = _mm_loadl_epi64(b.add(2 + at).cast());
                _mm256_mul_ps(scale(b), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)))
            }
            Q4_0 => {
                let b = row.add(18 * block);
                let q = _mm256_sub_epi32(nibbles(b.add(2)), _mm256_set1_epi32(8));
                _mm256_mul_ps(scale(b), _mm256_cvtepi32_ps(q))
            }
            _ => {
                let b = row.add(20 * block);
                // `d * q` is exact (an f16 times a nibble): one rounding, as the
                // reference's multiply then add.
                _mm256_fmadd_ps(scale(b), _mm256_cvtepi32_ps(nibbles(b.add(4))), scale(b.add(2)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Isa;
    use crate::quant::dequantize_row_unchecked;

    const FORMATS: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
    ];

    /// Bytes of every pattern (NaNs signalling and quiet, infinities, subnormals and any
    /// block scale among them), from a fixed-seed generator.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn rows_expand_to_the_reference_bits() {
        if !Isa::Avx2.is_supported() {
            eprintln!("skipped: this CPU lacks AVX2, FMA or F16C, so nothing runs these kernels");
            return;
        }
        for dtype in FORMATS {
            // Whole blocks, and float rows with a few elements past the last eight.
            for len in [32, 64, 96, 256, 4096, 33, 4099, 7, 1] {
                if len % dtype.block_len() != 0 {
                    continue;
                }
                let src = bytes(dtype.row_bytes(len).unwrap(), len as u64);
                let mut want = vec![0f32; len];
                dequantize_row_unchecked(dtype, &src, &mut want);
                let mut got = vec![f32::NAN; len];
                // SAFETY: the CPU has AVX2, FMA and F16C (Isa::Avx2 checks all three).
                unsafe { dequant_avx2(dtype, &src, &mut got) };
                assert_eq!(bits(&got), bits(&want), "{dtype}, {len} elements");
            }
        }
    }

    #[test]
    fn row_groups_expand_transposed_to_the_reference_bits() {
        if !Isa::Avx2.is_supported() {
            eprintln!("skipped: this CPU lacks AVX2, FMA or F16C, so nothing runs these kernels");
            return;
        }
        let nr = 16;
        for dtype in FORMATS {
            for (rows, kc) in [(16, 64), (11, 96), (3, 32), (8, 256), (1, 64)] {
                let row_bytes = dtype.row_bytes(kc).unwrap();
                let src = bytes(rows * row_bytes, (rows * kc) as u64);
                let stored: Vec<&[u8]> = src.chunks(row_bytes).collect();
                let mut got = vec![-1f32; kc * nr];
                // SAFETY: as above.
                assert!(
                    unsafe { dequant_t_avx2(dtype, &stored, kc, nr, &mut got) },
                    "{dtype}: no fused path"
                );
                let mut row = vec![0f32; kc];
                for (r, s) in stored.iter().enumerate() {
                    dequantize_row_unchecked(dtype, s, &mut row);
                    let column: Vec<f32> = (0..kc).map(|p| got[p * nr + r]).collect();
                    assert_eq!(bits(&column), bits(&row), "{dtype}, row {r} of {rows}, {kc} steps");
                }
                // Lanes past the rows are left as they were.
                assert!(
                    (0..kc).all(|p| got[p * nr + rows..(p + 1) * nr].iter().all(|&v| v == -1.0)),
                    "{dtype}: wrote past {rows} rows"
                );
            }
            // A reduction that is not whole vectors is declined, untouched.
            if dtype.block_len() == 1 {
                let src = bytes(dtype.row_bytes(12).unwrap(), 3);
                let mut dst = vec![-1f32; 12 * nr];
                // SAFETY: as above.
                assert!(!unsafe { dequant_t_avx2(dtype, &[&src], 12, nr, &mut dst) });
                assert!(dst.iter().all(|&v| v == -1.0));
            }
        }
    }
}
