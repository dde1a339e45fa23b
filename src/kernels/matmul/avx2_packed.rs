//! AVX2 kernels over a [`DecodeLayout`]: decoding's products, and the prefill's panels
//! expanded from the copy. A group of 16 rows is two 8-lane halves (rows 0..8, 8..16),
//! each half's values at a fixed offset inside every block of the layout; both halves
//! run side by side with the arithmetic of the AVX-512 kernels (`x86_gemv`), so each
//! output is the same chain of fused multiply-adds and the bits are the same.

use super::decode_layout::DecodeLayout;
use super::driver::CHAIN;
use super::gemv::PackedFn;
use super::x86::{BF16, F16, F32, Q4_0, Q4_1, Q8_0};
use super::x86_gemv::{PREFETCH_AHEAD, packed_block_shape};
use crate::quant::DType;
use std::arch::x86_64::*;

/// The kernel for a layout of `dtype` and `m` activation rows, if there is one (the CPU
/// has AVX2, FMA and F16C: the caller's `Isa::Avx2`).
pub(super) fn packed_kernel(dtype: DType, m: usize) -> Option<PackedFn> {
    // `J` chains of an output run interleaved: with one or two activation rows, four
    // chains of two halves keep eight multiply-adds in flight; from four rows on, the rows
    // do. Eight and sixteen rows run four at a time (16 registers: more accumulators
    // would spill) over the group's weights expanded once per chain.
    macro_rules! pick {
        ($d:expr) => {
            match m {
                1 => Some(packed_group::<{ $d }, 1, 4> as PackedFn),
                2 => Some(packed_group::<{ $d }, 2, 2> as PackedFn),
                3 => Some(packed_group::<{ $d }, 3, 1> as PackedFn),
                4 => Some(packed_group::<{ $d }, 4, 1> as PackedFn),
                8 => Some(expanded_once::<{ $d }, 2> as PackedFn),
                16 => Some(expanded_once::<{ $d }, 4> as PackedFn),
                _ => None,
            }
        };
    }
    match dtype {
        DType::Q4_1 => pick!(Q4_1),
        DType::Q4_0 => pick!(Q4_0),
        DType::Q8_0 => pick!(Q8_0),
        // A float block is one multiply-add per 32 bytes: one chain at a time reads the
        // copy front to back, as the AVX-512 kernel does.
        DType::F32 => match m {
            1 => Some(packed_group::<F32, 1, 1> as PackedFn),
            2 => Some(packed_group::<F32, 2, 1> as PackedFn),
            3 => Some(packed_group::<F32, 3, 1> as PackedFn),
            4 => Some(packed_group::<F32, 4, 1> as PackedFn),
            8 => Some(by_fours::<F32, 2> as PackedFn),
            16 => Some(by_fours::<F32, 4> as PackedFn),
            _ => None,
        },
        DType::F16 => pick!(F16),
        DType::BF16 => pick!(BF16),
        _ => None,
    }
}

/// `4 N` activation rows as `N` runs of [`packed_group`] over four of them.
///
/// Safety: see [`PackedFn`]; the CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn by_fours<const D: u8, const N: usize>(
    group: *const u8,
    count: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
) {
    for q in 0..N {
        // SAFETY: rows 4q..4q + 4 of x and y are inside the caller's 4 N rows.
        unsafe { packed_group::<D, 4, 1>(group, count, k, x.add(4 * q * ldx), ldx, y.add(4 * q * ldy), ldy) };
    }
}

/// `4 N` activation rows over one group, each chain's weights expanded once into an L1
/// scratch (`CHAIN` columns of the 16 rows) that four rows at a time then read: expanded
/// by each run of four instead, a quantized weight cost about as many instructions as the
/// multiply-adds it fed. Each output's chains are [`packed_group`]'s: the same bits.
///
/// Safety: see [`PackedFn`]; the CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expanded_once<const D: u8, const N: usize>(
    group: *const u8,
    count: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
) {
    const { assert!(N <= 4, "at most 16 activation rows") };
    let (bb, cols) = packed_block_shape(D);
    let mut w = [[0f32; 16]; CHAIN];
    // The running sums of each activation row's 16 outputs.
    let mut sum = [[0f32; 16]; 16];
    let mut c0 = 0;
    while c0 < k {
        // The layout holds whole blocks, so a chain is too.
        let len = CHAIN.min(k - c0);
        for b in 0..len / cols {
            // SAFETY: block c0 / cols + b of the group is inside the caller's extents;
            // `w` holds its columns as rows of 16.
            unsafe {
                let block = group.add((c0 / cols + b) * bb);
                prefetch_ahead::<D>(block);
                expand_block::<D>(block, w[b * cols].as_mut_ptr(), 16);
            }
        }
        for q in 0..N {
            // Per activation row, its two halves' chains.
            let mut acc = [[_mm256_setzero_ps(); 2]; 4];
            for (t, wt) in w.iter().enumerate().take(len) {
                // SAFETY: `wt` holds 16 floats; element c0 + t of activation rows 4q..4q + 4
                // is inside x (the caller's contract).
                unsafe {
                    let wh = [_mm256_loadu_ps(wt.as_ptr()), _mm256_loadu_ps(wt.as_ptr().add(8))];
                    for (i, a) in acc.iter_mut().enumerate() {
                        let xi = _mm256_set1_ps(*x.add((4 * q + i) * ldx + c0 + t));
                        a[0] = _mm256_fmadd_ps(xi, wh[0], a[0]);
                        a[1] = _mm256_fmadd_ps(xi, wh[1], a[1]);
                    }
                }
            }
            for (s, a) in sum[4 * q..4 * q + 4].iter_mut().zip(&acc) {
                for (h, &a) in a.iter().enumerate() {
                    let at = s[8 * h..].as_mut_ptr();
                    // SAFETY: `s` holds 16 floats.
                    unsafe {
                        let v = if c0 == 0 {
                            a
                        } else {
                            _mm256_add_ps(_mm256_loadu_ps(at), a)
                        };
                        _mm256_storeu_ps(at, v);
                    }
                }
            }
        }
        c0 += CHAIN;
    }
    for (i, s) in sum.iter().take(4 * N).enumerate() {
        // SAFETY: y is writable at i * ldy + r for r < count (at most 16).
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), y.add(i * ldy), count) };
    }
}

/// One group of 16 rows (`count` of them real) into `y`, in the chain order of the
/// AVX-512 kernels: the same bits.
///
/// Safety: see [`PackedFn`]; the CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn packed_group<const D: u8, const M: usize, const J: usize>(
    group: *const u8,
    count: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
) {
    let (bb, cols) = packed_block_shape(D);
    // The running sums of the 16 rows, per activation row (on the stack: 2 M registers
    // would not fit beside the chains'); one load, add and store per chain of 64 steps.
    let mut sum = [[0f32; 16]; M];
    let mut c0 = 0;
    while c0 < k {
        let mut acc = [[[_mm256_setzero_ps(); M]; 2]; J];
        for at in (0..CHAIN).step_by(cols) {
            for (j, acc) in acc.iter_mut().enumerate() {
                let p = c0 + j * CHAIN + at;
                if p >= k {
                    continue;
                }
                // SAFETY: block p / cols of the group and elements p..p + cols of each
                // activation row are inside the caller's extents.
                unsafe {
                    let block = group.add(p / cols * bb);
                    prefetch_ahead::<D>(block);
                    block_into::<D, M>(block, x.add(p), ldx, acc);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            if c0 + j * CHAIN >= k {
                break;
            }
            for (i, s) in sum.iter_mut().enumerate() {
                for (h, a) in acc.iter().enumerate() {
                    let at = s[8 * h..].as_mut_ptr();
                    // SAFETY: `s` holds 16 floats; AVX2 is the caller's contract.
                    unsafe {
                        let v = if c0 + j == 0 {
                            a[i]
                        } else {
                            _mm256_add_ps(_mm256_loadu_ps(at), a[i])
                        };
                        _mm256_storeu_ps(at, v);
                    }
                }
            }
        }
        c0 += J * CHAIN;
    }
    for (i, s) in sum.iter().enumerate() {
        // SAFETY: y is writable at i * ldy + r for r < count (at most 16).
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), y.add(i * ldy), count) };
    }
}

/// Asks for the block [`PREFETCH_AHEAD`] blocks on (a hint: the address may lie past the
/// layout, and a prefetch does not fault). As in the AVX-512 kernel, float blocks are left
/// to the hardware.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch_ahead<const D: u8>(block: *const u8) {
    let (bb, _) = packed_block_shape(D);
    if !matches!(D, F32 | F16 | BF16) {
        for line in (0..bb).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_AHEAD * bb + line).cast());
        }
    }
}

/// One block of the layout (`cols` elements of the 16 rows) into each activation row's
/// chain: `acc[h][i]` is half `h` of activation row `i`.
///
/// Safety: `block` is a whole block of format `D`; `x` (at the block's first element)
/// holds `M` rows of `cols` at stride `ldx`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_into<const D: u8, const M: usize>(
    block: *const u8,
    x: *const f32,
    ldx: usize,
    acc: &mut [[__m256; M]; 2],
) {
    macro_rules! fma_all {
        ($h:expr, $p:expr, $w:expr) => {{
            let w = $w;
            for i in 0..M {
                // (Used inside the unsafe block below: element $p of activation row i is
                // inside x.)
                let xi = _mm256_set1_ps(*x.add(i * ldx + $p));
                acc[$h][i] = _mm256_fmadd_ps(xi, w, acc[$h][i]);
            }
        }};
    }
    // SAFETY: the caller's contract.
    unsafe {
        match D {
            F32 | F16 | BF16 => {
                for t in 0..16 {
                    fma_all!(0, t, load8::<D>(block, 16 * t));
                    fma_all!(1, t, load8::<D>(block, 16 * t + 8));
                }
            }
            Q8_0 => {
                let (d, _) = block_scales::<D>(block);
                for c in 0..8 {
                    for h in 0..2 {
                        for (b, w) in q8_word(block, c, h, d[h]).into_iter().enumerate() {
                            fma_all!(h, 4 * c + b, w);
                        }
                    }
                }
            }
            _ => {
                let (d, offset) = block_scales::<D>(block);
                for high in [false, true] {
                    for c in 0..4 {
                        for h in 0..2 {
                            for (b, w) in q4_word(block, c, h, high, d[h], offset[h]).into_iter().enumerate() {
                                fma_all!(h, 16 * usize::from(high) + 4 * c + b, w);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The scales of a quantized block's 16 rows, per half, and the offset each value adds:
/// Q4_1's minimum, Q4_0's `-8 d`, nothing for Q8_0.
///
/// Safety: `block` is readable for its 64 header bytes; the CPU has AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn block_scales<const D: u8>(block: *const u8) -> ([__m256; 2], [__m256; 2]) {
    // SAFETY: the caller's contract.
    let head = unsafe { heads(block) };
    let d = [scales(head[0], 0), scales(head[1], 0)];
    let offset = match D {
        Q4_1 => [scales(head[0], 16), scales(head[1], 16)],
        Q4_0 => {
            let m8 = _mm256_set1_ps(-8.0);
            [_mm256_mul_ps(d[0], m8), _mm256_mul_ps(d[1], m8)]
        }
        _ => [_mm256_setzero_ps(); 2],
    };
    (d, offset)
}

/// Elements `4c..4c + 4` of half `h` of a Q8_0 block: byte `b` of quant word `c`,
/// sign-extended, times the scale (the reference's product).
///
/// Safety: `block` is a whole Q8_0 block of the layout; the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q8_word(block: *const u8, c: usize, h: usize, d: __m256) -> [__m256; 4] {
    // SAFETY: the caller's contract: word c's half h lies inside the block.
    let v = unsafe { _mm256_loadu_si256(block.add(64 + 64 * c + 32 * h).cast()) };
    let q = [
        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(v)),
        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<16>(v)),
        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<8>(v)),
        _mm256_srai_epi32::<24>(v),
    ];
    // (No closures: they would not be inlined into this unit's code.)
    [
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(q[0])),
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(q[1])),
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(q[2])),
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(q[3])),
    ]
}

/// Elements `16 high + 4c + b` (`b < 4`) of half `h` of a Q4_0 / Q4_1 block: the low (or
/// high) nibble of byte `b` of quant word `c`, as `d * q + offset` in one fused
/// multiply-add. The reference rounds `d * q + m` (Q4_1) and `d * (q - 8)` (Q4_0) after
/// an exact product (`d` an f16, `q` below 16), so this is the same value, as
/// `x86_gemv::quant_block` explains.
///
/// Safety: `block` is a whole Q4_0 or Q4_1 block of the layout; the CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_word(block: *const u8, c: usize, h: usize, high: bool, d: __m256, offset: __m256) -> [__m256; 4] {
    // SAFETY: the caller's contract: word c's half h lies inside the block.
    let v = unsafe { _mm256_loadu_si256(block.add(64 + 64 * c + 32 * h).cast()) };
    let v = if high { _mm256_srli_epi32::<4>(v) } else { v };
    let nibble = _mm256_set1_epi32(0x0f);
    let q = [
        _mm256_and_si256(v, nibble),
        _mm256_and_si256(_mm256_srli_epi32::<8>(v), nibble),
        _mm256_and_si256(_mm256_srli_epi32::<16>(v), nibble),
        _mm256_and_si256(_mm256_srli_epi32::<24>(v), nibble),
    ];
    [
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q[0]), offset),
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q[1]), offset),
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q[2]), offset),
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q[3]), offset),
    ]
}

/// The 16 rows' first 32-bit header words of a quantized block, as two halves.
///
/// Safety: `block` is readable for 64 bytes; the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn heads(block: *const u8) -> [__m256i; 2] {
    // SAFETY: the caller's contract.
    unsafe {
        [
            _mm256_loadu_si256(block.cast()),
            _mm256_loadu_si256(block.add(32).cast()),
        ]
    }
}

/// The f16 at bit `SHIFT` (0 or 16) of each of 8 header words, as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scales(head: __m256i, shift: i32) -> __m256 {
    let halves = if shift == 0 {
        _mm256_and_si256(head, _mm256_set1_epi32(0xffff))
    } else {
        _mm256_srli_epi32::<16>(head)
    };
    // Each word holds a value below 2^16, so the saturating pack keeps it exactly.
    let packed = _mm_packus_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256::<1>(halves));
    _mm256_cvtph_ps(packed)
}

/// Eight floats of a float block from element `e` (as the format's reference expands
/// them: bf16 NaNs quieted as `x86::load16` does).
///
/// Safety: the block holds elements `e..e + 8`; the CPU has AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load8<const D: u8>(block: *const u8, e: usize) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe {
        match D {
            F32 => _mm256_loadu_ps(block.add(4 * e).cast()),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(block.add(2 * e).cast())),
            _ => {
                let x = _mm256_cvtepu16_epi32(_mm_loadu_si128(block.add(2 * e).cast()));
                let nan = _mm256_cmpgt_epi32(
                    _mm256_and_si256(x, _mm256_set1_epi32(0x7fff)),
                    _mm256_set1_epi32(0x7f80),
                );
                let bits = _mm256_or_si256(x, _mm256_and_si256(nan, _mm256_set1_epi32(0x40)));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
            }
        }
    }
}

/// See [`super::driver::Kernel::dequant_packed`]. Safety: the CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequant_packed(
    layout: &DecodeLayout,
    j: usize,
    rows: usize,
    p0: usize,
    p1: usize,
    nr: usize,
    dst: &mut [f32],
) -> bool {
    let expand = match layout.dtype {
        DType::Q4_1 => expand_block::<Q4_1>,
        DType::Q4_0 => expand_block::<Q4_0>,
        DType::Q8_0 => expand_block::<Q8_0>,
        DType::F32 => expand_block::<F32>,
        DType::F16 => expand_block::<F16>,
        DType::BF16 => expand_block::<BF16>,
        _ => return false,
    };
    layout.panel_blocks((j, rows), (p0, p1), nr, dst, |block, out| {
        // SAFETY: `block` is a whole block of the layout; `out` holds the block's columns
        // as rows of `nr` from the group's 16 lanes (`panel_blocks` checked the extents);
        // the CPU has AVX2, FMA and F16C (this function's contract).
        unsafe { expand(block.as_ptr(), out.as_mut_ptr(), nr) }
    })
}

/// Element `t` of the 16 rows of a block to `out + t * ld`, as the reference dequantizer
/// computes it.
///
/// Safety: `block` is a whole block of format `D`; `out` is writable for 16 floats at each
/// of the block's columns `t * ld`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn expand_block<const D: u8>(block: *const u8, out: *mut f32, ld: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        match D {
            F32 | F16 | BF16 => {
                for t in 0..16 {
                    for h in 0..2 {
                        _mm256_storeu_ps(out.add(t * ld + 8 * h), load8::<D>(block, 16 * t + 8 * h));
                    }
                }
            }
            Q8_0 => {
                let (d, _) = block_scales::<D>(block);
                for c in 0..8 {
                    for (h, &d) in d.iter().enumerate() {
                        for (b, w) in q8_word(block, c, h, d).into_iter().enumerate() {
                            _mm256_storeu_ps(out.add((4 * c + b) * ld + 8 * h), w);
                        }
                    }
                }
            }
            _ => {
                let (d, offset) = block_scales::<D>(block);
                for high in [false, true] {
                    for c in 0..4 {
                        for h in 0..2 {
                            for (b, w) in q4_word(block, c, h, high, d[h], offset[h]).into_iter().enumerate() {
                                let t = 16 * usize::from(high) + 4 * c + b;
                                _mm256_storeu_ps(out.add(t * ld + 8 * h), w);
                            }
                        }
                    }
                }
            }
        }
    }
}
