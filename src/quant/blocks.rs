//! ggml block formats. Layouts follow ggml's `block_q*` structs (little-endian):
//! the arithmetic is written without fused multiply-add so the expansion is
//! bit-identical to ggml's reference dequantizers.

use super::DType;
use half::f16;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q8_0: `{ d: f16, qs: [i8; 32] }`, y = d * q.
fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

/// Q4_0: `{ d: f16, qs: [u8; 16] }`, low nibbles are elements 0..16, high 16..32,
/// y = d * (q - 8).
fn q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let q = block[2 + j];
        lo[j] = d * ((q & 0x0f) as i32 - 8) as f32;
        hi[j] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: `{ d: f16, m: f16, qs: [u8; 16] }`, y = d * q + m.
fn q4_1(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let (lo, hi) = out.split_at_mut(16);
    for j in 0..16 {
        let q = block[4 + j];
        lo[j] = d * (q & 0x0f) as f32 + m;
        hi[j] = d * (q >> 4) as f32 + m;
    }
}

pub(super) fn dequantize_blocks(dtype: DType, src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::dequantize_blocks(crate::isa::Isa::best(), dtype, src, dst) {
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if crate::isa::Isa::best() == crate::isa::Isa::Neon && neon::dequantize_blocks(dtype, src, dst) {
        return;
    }
    scalar_blocks(dtype, src, dst);
}

/// The portable path; also the reference the vector paths are tested against.
fn scalar_blocks(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let f: fn(&[u8], &mut [f32]) = match dtype {
        DType::Q8_0 => q8_0,
        DType::Q4_0 => q4_0,
        DType::Q4_1 => q4_1,
        DType::Q4_K => super::k_quants::q4_k,
        DType::Q6_K => super::k_quants::q6_k,
        DType::F32 | DType::F16 | DType::BF16 => {
            return super::dequantize_row_unchecked(dtype, src, dst);
        }
    };
    for (block, out) in src
        .chunks_exact(dtype.block_bytes())
        .zip(dst.chunks_exact_mut(dtype.block_len()))
    {
        f(block, out);
    }
}

/// AVX2 and AVX-512 expansions of the 32-element formats, chosen at run time. Each
/// lane does the scalar path's operations (integer widening, one f32 multiply, for
/// Q4_1 one f32 add; never a fused multiply-add), so results are bit-identical.
/// NEON expansions of the 32-element formats: each lane widens the integer and does the
/// scalar path's one f32 multiply (and, for Q4_1, one f32 add), so results are
/// bit-identical.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{DType, f16_at};
    use std::arch::aarch64::*;

    /// Expands whole blocks like the scalar path; `false` for a format without a NEON
    /// path (the caller falls back).
    pub(super) fn dequantize_blocks(dtype: DType, src: &[u8], dst: &mut [f32]) -> bool {
        match dtype {
            DType::Q8_0 => q8_0(src, dst),
            DType::Q4_0 => q4::<false>(src, dst),
            DType::Q4_1 => q4::<true>(src, dst),
            _ => return false,
        }
        true
    }

    /// 16 signed bytes as four vectors of four f32, `d *` each (`+ m` with `WITH_MIN`).
    /// Safety: `y` has room for 16 floats.
    #[inline(always)]
    unsafe fn expand16<const WITH_MIN: bool>(q: int8x16_t, d: float32x4_t, m: float32x4_t, y: *mut f32) {
        // SAFETY: the caller's contract; NEON is baseline on aarch64.
        unsafe {
            let (lo, hi) = (vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q));
            for (k, w) in [
                vmovl_s16(vget_low_s16(lo)),
                vmovl_high_s16(lo),
                vmovl_s16(vget_low_s16(hi)),
                vmovl_high_s16(hi),
            ]
            .into_iter()
            .enumerate()
            {
                let v = vmulq_f32(d, vcvtq_f32_s32(w));
                let v = if WITH_MIN { vaddq_f32(v, m) } else { v };
                vst1q_f32(y.add(4 * k), v);
            }
        }
    }

    fn q8_0(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
            let d = f16_at(b, 0);
            // SAFETY: bytes 2..34 of the block, floats 0..32 of its output.
            unsafe {
                let (d, zero) = (vdupq_n_f32(d), vdupq_n_f32(0.0));
                for k in 0..2 {
                    let q = vld1q_s8(b.as_ptr().add(2 + 16 * k).cast());
                    expand16::<false>(q, d, zero, y.as_mut_ptr().add(16 * k));
                }
            }
        }
    }

    /// Q4_0 (`WITH_MIN = false`: 18-byte blocks, y = d * (q - 8)) and Q4_1
    /// (`WITH_MIN = true`: 20-byte blocks, y = d * q + m); low nibbles are elements 0..16.
    fn q4<const WITH_MIN: bool>(src: &[u8], dst: &mut [f32]) {
        let block_bytes = if WITH_MIN { 20 } else { 18 };
        for (b, y) in src.chunks_exact(block_bytes).zip(dst.chunks_exact_mut(32)) {
            let d = f16_at(b, 0);
            let m = if WITH_MIN { f16_at(b, 2) } else { 0.0 };
            // SAFETY: the 16 quant bytes end at the block's end; floats 0..32 of its output.
            unsafe {
                let q = vld1q_u8(b.as_ptr().add(block_bytes - 16));
                let mask = vdupq_n_u8(0x0f);
                let (lo, hi) = (vandq_u8(q, mask), vshrq_n_u8::<4>(q));
                // |q - 8| <= 8 fits a signed byte; Q4_1's 0..15 do as they are.
                let centre = |x: uint8x16_t| {
                    let x = vreinterpretq_s8_u8(x);
                    if WITH_MIN { x } else { vsubq_s8(x, vdupq_n_s8(8)) }
                };
                let (d, m) = (vdupq_n_f32(d), vdupq_n_f32(m));
                expand16::<WITH_MIN>(centre(lo), d, m, y.as_mut_ptr());
                expand16::<WITH_MIN>(centre(hi), d, m, y.as_mut_ptr().add(16));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::DType;
    use crate::isa::Isa;
    use std::arch::x86_64::*;

    /// Expands whole blocks like the scalar path; `false` when `dtype` or `isa` has no
    /// vector path (the caller falls back). `isa` must be supported by this CPU.
    pub(super) fn dequantize_blocks(isa: Isa, dtype: DType, src: &[u8], dst: &mut [f32]) -> bool {
        debug_assert!(isa.is_supported(), "{isa:?} is not supported by this CPU");
        // SAFETY: `isa` is supported by this CPU (the callers pass Isa::best() or a unit
        // from Isa::supported()), which is what the target features of
        // the called functions require; they read and write only inside the exact-size
        // block chunks they are given.
        unsafe {
            match (isa, dtype) {
                (Isa::Avx2, DType::Q8_0) => q8_0_avx2(src, dst),
                (Isa::Avx2, DType::Q4_0) => q4_avx2::<false>(src, dst),
                (Isa::Avx2, DType::Q4_1) => q4_avx2::<true>(src, dst),
                (Isa::Avx512, DType::Q8_0) => q8_0_avx512(src, dst),
                (Isa::Avx512, DType::Q4_0) => q4_avx512::<false>(src, dst),
                (Isa::Avx512, DType::Q4_1) => q4_avx512::<true>(src, dst),
                (Isa::Avx2, DType::Q4_K) => q4_k::<Avx2Lanes>(src, dst),
                (Isa::Avx2, DType::Q6_K) => q6_k::<Avx2Lanes>(src, dst),
                (Isa::Avx512, DType::Q4_K) => q4_k::<Avx512Lanes>(src, dst),
                (Isa::Avx512, DType::Q6_K) => q6_k::<Avx512Lanes>(src, dst),
                _ => return false,
            }
        }
        true
    }

    /// The f16 at `b[i..i + 2]` widened exactly, in hardware (AVX-512F implies F16C).
    #[inline]
    #[target_feature(enable = "f16c")]
    fn f16_at(b: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([b[i], b[i + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Low and high nibbles of the 16 quant bytes at `qs`: elements 0..16 and 16..32.
    /// Q4_0 stores q + 8, so it is re-centred here in 8-bit lanes (|q - 8| <= 8).
    #[inline(always)]
    unsafe fn nibbles<const WITH_MIN: bool>(qs: *const u8) -> (__m128i, __m128i) {
        // SAFETY: the caller passes a pointer to 16 readable bytes; SSE2 is part of
        // every x86_64 CPU.
        unsafe {
            let q = _mm_loadu_si128(qs as *const __m128i);
            let mask = _mm_set1_epi8(0x0f);
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
            if WITH_MIN {
                (lo, hi)
            } else {
                let eight = _mm_set1_epi8(8);
                (_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight))
            }
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q8_0_avx2(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
            let d = _mm256_set1_ps(f16_at(b, 0));
            for k in 0..4 {
                // SAFETY: bytes 2 + 8k .. 10 + 8k <= 34 and floats 8k .. 8k + 8 <= 32.
                unsafe {
                    let q = _mm_loadl_epi64(b.as_ptr().add(2 + 8 * k) as *const __m128i);
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                    _mm256_storeu_ps(y.as_mut_ptr().add(8 * k), _mm256_mul_ps(d, v));
                }
            }
        }
    }

    /// Q4_0 (`WITH_MIN = false`: 18-byte blocks, y = d * (q - 8)) and Q4_1
    /// (`WITH_MIN = true`: 20-byte blocks, y = d * q + m).
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn q4_avx2<const WITH_MIN: bool>(src: &[u8], dst: &mut [f32]) {
        let block_bytes = if WITH_MIN { 20 } else { 18 };
        let qs_at = block_bytes - 16;
        for (b, y) in src.chunks_exact(block_bytes).zip(dst.chunks_exact_mut(32)) {
            let d = _mm256_set1_ps(f16_at(b, 0));
            let m = _mm256_set1_ps(if WITH_MIN { f16_at(b, 2) } else { 0.0 });
            // SAFETY: the 16 quant bytes end at the block's end; the four stores cover
            // floats 0..32 of the block's output.
            unsafe {
                let (lo, hi) = nibbles::<WITH_MIN>(b.as_ptr().add(qs_at));
                for (k, q) in [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)]
                    .into_iter()
                    .enumerate()
                {
                    let v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
                    let v = if WITH_MIN { _mm256_add_ps(v, m) } else { v };
                    _mm256_storeu_ps(y.as_mut_ptr().add(8 * k), v);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn q8_0_avx512(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
            let d = _mm512_set1_ps(f16_at(b, 0));
            for k in 0..2 {
                // SAFETY: bytes 2 + 16k .. 18 + 16k <= 34 and floats 16k .. 16k + 16 <= 32.
                unsafe {
                    let q = _mm_loadu_si128(b.as_ptr().add(2 + 16 * k) as *const __m128i);
                    let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                    _mm512_storeu_ps(y.as_mut_ptr().add(16 * k), _mm512_mul_ps(d, v));
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn q4_avx512<const WITH_MIN: bool>(src: &[u8], dst: &mut [f32]) {
        let block_bytes = if WITH_MIN { 20 } else { 18 };
        let qs_at = block_bytes - 16;
        for (b, y) in src.chunks_exact(block_bytes).zip(dst.chunks_exact_mut(32)) {
            let d = _mm512_set1_ps(f16_at(b, 0));
            let m = _mm512_set1_ps(if WITH_MIN { f16_at(b, 2) } else { 0.0 });
            // SAFETY: as in `q4_avx2`, with two stores of 16 floats.
            unsafe {
                let (lo, hi) = nibbles::<WITH_MIN>(b.as_ptr().add(qs_at));
                for (k, q) in [lo, hi].into_iter().enumerate() {
                    let v = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
                    let v = if WITH_MIN { _mm512_add_ps(v, m) } else { v };
                    _mm512_storeu_ps(y.as_mut_ptr().add(16 * k), v);
                }
            }
        }
    }

    /// Stores 16 small integers (signed bytes) as `scale * q - offset`, one f32 multiply
    /// and one subtract per element, as the scalar K-quant paths compute them.
    trait Lanes {
        /// Safety: the CPU has the unit; `y` has room for 16 floats.
        unsafe fn store16(q: __m128i, scale: f32, offset: f32, y: *mut f32);
    }

    struct Avx2Lanes;
    struct Avx512Lanes;

    impl Lanes for Avx2Lanes {
        #[inline(always)]
        unsafe fn store16(q: __m128i, scale: f32, offset: f32, y: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { store16_avx2(q, scale, offset, y) }
        }
    }

    impl Lanes for Avx512Lanes {
        #[inline(always)]
        unsafe fn store16(q: __m128i, scale: f32, offset: f32, y: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { store16_avx512(q, scale, offset, y) }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store16_avx2(q: __m128i, scale: f32, offset: f32, y: *mut f32) {
        let (d, m) = (_mm256_set1_ps(scale), _mm256_set1_ps(offset));
        for (k, q) in [q, _mm_srli_si128::<8>(q)].into_iter().enumerate() {
            let v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
            // SAFETY: floats 8k..8k + 8 of the caller's 16.
            unsafe { _mm256_storeu_ps(y.add(8 * k), _mm256_sub_ps(v, m)) };
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store16_avx512(q: __m128i, scale: f32, offset: f32, y: *mut f32) {
        let v = _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
        // SAFETY: the caller's 16 floats.
        unsafe { _mm512_storeu_ps(y, _mm512_sub_ps(v, _mm512_set1_ps(offset))) };
    }

    /// `k_quants::q4_k`, 16 elements at a time: the same sub-block scales (products
    /// rounded to f32 in the same order), then `d*sc * q - dmin*m` per element.
    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn q4_k<L: Lanes>(src: &[u8], dst: &mut [f32]) {
        let mask = _mm_set1_epi8(0x0f);
        for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(256)) {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            for chunk in 0..4 {
                let (sc_lo, m_lo) = super::super::k_quants::scale_min_k4(2 * chunk, scales);
                let (sc_hi, m_hi) = super::super::k_quants::scale_min_k4(2 * chunk + 1, scales);
                let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
                let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
                for half in 0..2 {
                    // SAFETY: bytes 16 + 32 chunk + 16 half + 16 <= 144; floats
                    // 64 chunk + 16 half (+ 32) + 16 <= 256.
                    unsafe {
                        let q = _mm_loadu_si128(b.as_ptr().add(16 + 32 * chunk + 16 * half).cast());
                        let at = y.as_mut_ptr().add(64 * chunk + 16 * half);
                        L::store16(_mm_and_si128(q, mask), d_lo, min_lo, at);
                        L::store16(_mm_and_si128(_mm_srli_epi16::<4>(q), mask), d_hi, min_hi, at.add(32));
                    }
                }
            }
        }
    }

    /// `k_quants::q6_k`, 16 elements at a time: `(d * sc) * (q - 32)`, the scale's product
    /// rounded first as the scalar path rounds it. The scalar path subtracts nothing
    /// after the product; subtracting zero keeps every bit (`x - 0.0 == x`, NaN stays NaN).
    #[inline]
    #[target_feature(enable = "f16c")]
    unsafe fn q6_k<L: Lanes>(src: &[u8], dst: &mut [f32]) {
        let (low4, low2, bias) = (_mm_set1_epi8(0x0f), _mm_set1_epi8(3), _mm_set1_epi8(32));
        for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(256)) {
            let d = f16_at(b, 208);
            for half in 0..2 {
                let sc = &b[192 + 8 * half..200 + 8 * half];
                for is in 0..2 {
                    let l = 16 * is;
                    // SAFETY: ql bytes 64 half + l (+ 32) + 16 <= 128, qh bytes
                    // 128 + 32 half + l + 16 <= 192; floats 128 half + l + 96 + 16 <= 256.
                    unsafe {
                        let ql0 = _mm_loadu_si128(b.as_ptr().add(64 * half + l).cast());
                        let ql1 = _mm_loadu_si128(b.as_ptr().add(64 * half + l + 32).cast());
                        let h = _mm_loadu_si128(b.as_ptr().add(128 + 32 * half + l).cast());
                        // The two high bits of element group k sit at bits 2k, 2k + 1 of h.
                        let high = |k: i32| {
                            let bits = _mm_and_si128(_mm_srl_epi16(h, _mm_cvtsi32_si128(2 * k)), low2);
                            _mm_slli_epi16::<4>(bits)
                        };
                        let quants = [
                            _mm_or_si128(_mm_and_si128(ql0, low4), high(0)),
                            _mm_or_si128(_mm_and_si128(ql1, low4), high(1)),
                            _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(ql0), low4), high(2)),
                            _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(ql1), low4), high(3)),
                        ];
                        let out = y.as_mut_ptr().add(128 * half + l);
                        for (k, q) in quants.into_iter().enumerate() {
                            let scale = d * (sc[is + 2 * k] as i8) as f32;
                            L::store16(_mm_sub_epi8(q, bias), scale, 0.0, out.add(32 * k));
                        }
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::scalar_blocks;
        use super::*;

        /// Blocks with random quants and scales drawn from every kind of f16: normal,
        /// subnormal, zero, infinite and NaN.
        fn random_blocks(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
            let mut state = seed;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let specials: [u16; 8] = [0x0000, 0x8000, 0x0001, 0x8200, 0x7c00, 0xfc00, 0x7e00, 0x7bff];
            let mut bytes: Vec<u8> = (0..n * dtype.block_bytes()).map(|_| next() as u8).collect();
            let scales_at: &[usize] = match dtype {
                DType::Q4_1 | DType::Q4_K => &[0, 2],
                DType::Q6_K => &[208],
                _ => &[0],
            };
            for (i, block) in bytes.chunks_exact_mut(dtype.block_bytes()).enumerate() {
                for (s, &at) in scales_at.iter().enumerate() {
                    let bits = match next() % 4 {
                        0 => specials[(i + s) % specials.len()],
                        // finite values of moderate size
                        _ => half::f16::from_f32((next() % 2001) as f32 / 1000.0 - 1.0).to_bits(),
                    };
                    block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
                }
            }
            bytes
        }

        #[test]
        fn vector_paths_match_scalar_bit_for_bit() {
            let levels: Vec<Isa> = Isa::supported();
            for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K] {
                for (seed, n) in [(1u64, 1usize), (2, 7), (3, 300)] {
                    let src = random_blocks(dtype, n, seed);
                    let mut want = vec![0f32; n * dtype.block_len()];
                    scalar_blocks(dtype, &src, &mut want);
                    for &level in &levels {
                        let mut got = vec![1f32; n * dtype.block_len()];
                        if !dequantize_blocks(level, dtype, &src, &mut got) {
                            assert!(matches!(level, Isa::Scalar | Isa::Neon), "{dtype} {level:?}");
                            continue;
                        }
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            // Which NaN an operation on two NaNs returns is not specified
                            // (the compiler may swap commutative operands): NaN must stay
                            // NaN, every other value must match exactly.
                            if w.is_nan() {
                                assert!(g.is_nan(), "{dtype} {level:?} element {i}: {g} vs NaN");
                                continue;
                            }
                            assert_eq!(g.to_bits(), w.to_bits(), "{dtype} {level:?} element {i}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }
}
