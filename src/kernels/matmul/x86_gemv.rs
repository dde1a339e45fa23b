//! AVX-512 kernels of [`super::gemv`]: 16 stored weight rows expanded into registers that
//! hold one reduction index across the 16 rows, each multiplied into every activation
//! row's chain. Quantized blocks are regrouped as 32-bit words before they are expanded
//! (word `c` of the 16 rows' quants in one register), so no f32 value is ever transposed;
//! the expansion is the reference dequantizer's arithmetic.

use super::WeightRef;
use super::decode_layout::DecodeLayout;
use super::driver::CHAIN;
use super::gemv::{GroupFn, PackedFn, Rows};
use super::x86::{load16, transpose16};
use crate::quant::DType;
use std::arch::x86_64::*;

/// The kernel for `w` and `m` activation rows, if there is one (the CPU has AVX-512F and
/// F16C: the caller's `Isa::Avx512`).
pub(super) fn group_kernel(w: &WeightRef, m: usize) -> Option<GroupFn> {
    // Block headers are gathered with 32-bit offsets from the group's first row.
    if w.data.len() > i32::MAX as usize {
        return None;
    }
    // `G` groups of 16 rows are expanded side by side. Two would give one activation row
    // two independent chains; on the AVX-512 machine measured (`nudge bench generate`,
    // SmolLM2 Q4_1, one thread, runs alternated) two were no faster than one, within the
    // machine's drift. One is simpler; the knob stays for other cores. Batched decoding's
    // 8 and 16 rows come here too: expanding each block once into registers for all rows
    // beat the tiled path's expanded panels (SmolLM2 Q4_1, 2 threads, runs alternated:
    // 8 rows 390 → 452 tokens/s, 16 rows 518 → 562).
    macro_rules! pick {
        ($d:expr) => {
            match m {
                1 => Some(group::<{ $d }, 1, 1> as GroupFn),
                2 => Some(group::<{ $d }, 2, 1> as GroupFn),
                3 => Some(group::<{ $d }, 3, 1> as GroupFn),
                4 => Some(group::<{ $d }, 4, 1> as GroupFn),
                8 => Some(group::<{ $d }, 8, 1> as GroupFn),
                16 => Some(group::<{ $d }, 16, 1> as GroupFn),
                _ => None,
            }
        };
    }
    let floats = w.cols.is_multiple_of(16);
    match w.dtype {
        DType::Q4_1 => pick!(Q4_1),
        DType::Q4_0 => pick!(Q4_0),
        DType::Q8_0 => pick!(Q8_0),
        DType::F32 if floats => pick!(F32),
        DType::F16 if floats => pick!(F16),
        DType::BF16 if floats => pick!(BF16),
        _ => None,
    }
}

// Formats as const parameters (the float ones are `x86::load16`'s codes).
const F32: u8 = super::x86::F32;
const F16: u8 = super::x86::F16;
const BF16: u8 = super::x86::BF16;
const Q8_0: u8 = super::x86::Q8_0;
const Q4_0: u8 = super::x86::Q4_0;
const Q4_1: u8 = super::x86::Q4_1;

/// Safety: see [`GroupFn`]; the CPU has AVX-512F and F16C.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn group<const D: u8, const M: usize, const G: usize>(
    rows: &Rows,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
) {
    for at in (0..rows.warm.len()).step_by(64) {
        // SAFETY: `at` is inside `warm`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(rows.warm.as_ptr().add(at).cast()) };
    }
    let count = rows.count;
    let parts = count.div_ceil(16 * G);
    for (n, r0) in (0..count).step_by(16 * G).enumerate() {
        let mut part = [rows.starts[r0]; 32];
        part[..count - r0].copy_from_slice(&rows.starts[r0..count]);
        // Each part asks for its share of the next call's rows.
        let share = rows.ahead.len().div_ceil(parts);
        let ahead = &rows.ahead[(n * share).min(rows.ahead.len())..((n + 1) * share).min(rows.ahead.len())];
        let io = Io {
            x,
            ldx,
            y: y.wrapping_add(r0),
            ldy,
        };
        // SAFETY: the caller's contract, for rows r0..count.
        unsafe { groups::<D, M, G>(&part, (count - r0).min(16 * G), rows.k, ahead, &io) };
    }
}

/// The activation rows `x` (`ldx` apart) and the output rows `y` (`ldy` apart) of a call.
#[derive(Clone, Copy)]
struct Io {
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
}

/// [`group`] for at most `16 * G` rows, asking for `ahead` as it goes.
///
/// Safety: see [`GroupFn`]; the CPU has AVX-512F and F16C.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn groups<const D: u8, const M: usize, const G: usize>(
    rows: &[*const u8; 32],
    count: usize,
    k: usize,
    ahead: &[u8],
    io: &Io,
) {
    let Io { x, ldx, y, ldy } = *io;
    // Rows past `count` in a group of 16 repeat its first; a second group past `count`
    // repeats the first row (computed, never stored).
    let groups: [[*const u8; 16]; G] = std::array::from_fn(|g| {
        std::array::from_fn(|r| {
            if 16 * g + r < count {
                rows[16 * g + r]
            } else {
                rows[16 * g.min((count - 1) / 16)]
            }
        })
    });
    // The lines of `ahead` are spread over the steps of the reduction.
    let step = if matches!(D, F32 | F16 | BF16) { 16 } else { 32 };
    let lines = ahead.len().div_ceil(64);
    let per_step = lines.div_ceil(k.div_ceil(step).max(1));
    let mut next_line = 0;
    let offsets: [__m512i; G] = std::array::from_fn(|g| {
        let base = groups[g][0];
        // SAFETY: the rows lie in one tensor, whose size the caller bounded by i32::MAX.
        let o: [i32; 16] = std::array::from_fn(|r| unsafe { groups[g][r].offset_from(base) } as i32);
        // SAFETY: 16 i32 values.
        unsafe { _mm512_loadu_si512(o.as_ptr().cast()) }
    });
    let mut sum = [[_mm512_setzero_ps(); M]; G];
    let mut c0 = 0;
    while c0 < k {
        let ce = (c0 + CHAIN).min(k);
        let mut acc = [[_mm512_setzero_ps(); M]; G];
        // SAFETY: c0..ce lies inside each row and inside each activation row.
        unsafe {
            match D {
                F32 | F16 | BF16 => {
                    for p in (c0..ce).step_by(16) {
                        for _ in 0..per_step.min(lines - next_line) {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().add(64 * next_line).cast());
                            next_line += 1;
                        }
                        for (rows, acc) in groups.iter().zip(acc.iter_mut()) {
                            floats16::<D, M>(rows, p, x.add(p), ldx, acc);
                        }
                    }
                }
                _ => {
                    for p in (c0..ce).step_by(32) {
                        for _ in 0..per_step.min(lines - next_line) {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().add(64 * next_line).cast());
                            next_line += 1;
                        }
                        quant_block::<D, M, G, false>(
                            &groups,
                            &offsets,
                            p / 32,
                            std::ptr::null(),
                            x.add(p),
                            ldx,
                            &mut acc,
                        );
                    }
                }
            }
        }
        for (s, a) in sum.iter_mut().flatten().zip(acc.into_iter().flatten()) {
            *s = if c0 == 0 { a } else { _mm512_add_ps(*s, a) };
        }
        c0 = ce;
    }
    for (g, sums) in sum.into_iter().enumerate() {
        let rows = count.saturating_sub(16 * g).min(16);
        if rows == 0 {
            break;
        }
        let mask = ((1u32 << rows) - 1) as __mmask16;
        for (i, s) in sums.into_iter().enumerate() {
            // SAFETY: y is writable at i * ldy + r for r < count.
            unsafe { _mm512_mask_storeu_ps(y.add(i * ldy + 16 * g), mask, s) };
        }
    }
}

/// Elements `p..p + 16` of the 16 rows, transposed into one register per element, into
/// each activation row's chain.
///
/// Safety: the rows hold elements `p..p + 16`; `x` (at element `p`) holds `M` rows of at
/// least 16 at stride `ldx`.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn floats16<const D: u8, const M: usize>(
    rows: &[*const u8; 16],
    p: usize,
    x: *const f32,
    ldx: usize,
    acc: &mut [__m512; M],
) {
    // SAFETY: the caller's contract.
    let v: [__m512; 16] = std::array::from_fn(|r| unsafe { load16::<D>(rows[r], p) });
    let v = transpose16(v);
    for (t, w) in v.into_iter().enumerate() {
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: element t of activation row i is inside x.
            let xi = _mm512_set1_ps(unsafe { *x.add(i * ldx + t) });
            *a = _mm512_fmadd_ps(xi, w, *a);
        }
    }
}

/// One quantized block (32 elements) of the 16 rows into each activation row's chain.
///
/// Safety: every row holds block `block`; `x` (at the block's first element) holds `M`
/// rows of at least 32 at stride `ldx`; `offsets` are the rows' byte offsets from `rows[0]`.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn quant_block<const D: u8, const M: usize, const G: usize, const PACKED: bool>(
    rows: &[[*const u8; 16]; G],
    offsets: &[__m512i; G],
    block: usize,
    packed: *const u8,
    x: *const f32,
    ldx: usize,
    acc: &mut [[__m512; M]; G],
) {
    let (block_bytes, quants_at) = match D {
        Q4_1 => (20, 4),
        Q4_0 => (18, 2),
        _ => (34, 2),
    };
    let at = block * block_bytes;
    // SAFETY: the caller's contract: each row holds the block's bytes.
    unsafe {
        // The first 32-bit word of each row's block: the f16 scale (and, for Q4_1, the f16
        // minimum), read for the 16 rows at once.
        // (No closures here: they would not be inlined into this unit's code.)
        let mut head = [_mm512_setzero_si512(); G];
        let mut d = [_mm512_setzero_ps(); G];
        for g in 0..G {
            head[g] = if PACKED {
                _mm512_loadu_si512(packed.cast())
            } else {
                _mm512_i32gather_epi32::<1>(offsets[g], rows[g][0].add(at).cast())
            };
            d[g] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head[g]));
        }
        // Element `$p` of group `$g`'s rows (`$w`) into each activation row's chain.
        macro_rules! fma_all {
            ($g:expr, $p:expr, $w:expr) => {{
                let w = $w;
                for i in 0..M {
                    let xi = _mm512_set1_ps(*x.add(i * ldx + $p));
                    acc[$g][i] = _mm512_fmadd_ps(xi, w, acc[$g][i]);
                }
            }};
        }
        match D {
            Q8_0 => {
                // Element p is byte p % 4 of word p / 4, sign-extended.
                macro_rules! word {
                    ($words:expr, $c:expr, $p:expr) => {{
                        for g in 0..G {
                            let v = $words[g][$c];
                            let bytes = [
                                _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(v)),
                                _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(v)),
                                _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(v)),
                                _mm512_srai_epi32::<24>(v),
                            ];
                            for (b, q) in bytes.into_iter().enumerate() {
                                fma_all!(g, $p + b, _mm512_mul_ps(d[g], _mm512_cvtepi32_ps(q)));
                            }
                        }
                    }};
                }
                let mut lo = [[_mm512_setzero_si512(); 4]; G];
                for g in 0..G {
                    lo[g] = if PACKED {
                        loads4(packed.add(64))
                    } else {
                        words(&rows[g], at + quants_at)
                    };
                }
                word!(lo, 0, 0);
                word!(lo, 1, 4);
                word!(lo, 2, 8);
                word!(lo, 3, 12);
                let mut hi = [[_mm512_setzero_si512(); 4]; G];
                for g in 0..G {
                    hi[g] = if PACKED {
                        loads4(packed.add(320))
                    } else {
                        words(&rows[g], at + quants_at + 16)
                    };
                }
                word!(hi, 0, 16);
                word!(hi, 1, 20);
                word!(hi, 2, 24);
                word!(hi, 3, 28);
            }
            _ => {
                let mut qs = [[_mm512_setzero_si512(); 4]; G];
                let mut min = [_mm512_setzero_ps(); G];
                for g in 0..G {
                    qs[g] = if PACKED {
                        loads4(packed.add(64))
                    } else {
                        words(&rows[g], at + quants_at)
                    };
                    min[g] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(head[g])));
                }
                let nibble = _mm512_set1_epi32(0x0f);
                // The reference computes `d * q + m` (Q4_1) and `d * (q - 8)` (Q4_0) with
                // a rounded product. `d` is an f16 (11 significant bits) and `q` below 16,
                // so `d * q` is exact in f32 and one fused multiply-add rounds the same
                // exact sum the reference's addition rounds: the same bits, one step less.
                // (Q4_0 as `d * q + (-8 d)`: `8 d` and `d * (q - 8)` are exact too.)
                let mut offset = [_mm512_setzero_ps(); G];
                for g in 0..G {
                    offset[g] = if D == Q4_1 {
                        min[g]
                    } else {
                        _mm512_mul_ps(d[g], _mm512_set1_ps(-8.0))
                    };
                }
                macro_rules! value {
                    ($g:expr, $q:expr) => {
                        _mm512_fmadd_ps(d[$g], _mm512_cvtepi32_ps($q), offset[$g])
                    };
                }
                // Elements 0..16 are the low nibbles of bytes 0..16, elements 16..32 the
                // high ones: byte b of word c holds elements 4c + b and 16 + 4c + b.
                macro_rules! word {
                    ($c:expr, $p:expr, $high:literal) => {{
                        for g in 0..G {
                            let v = qs[g][$c];
                            let v = if $high { _mm512_srli_epi32::<4>(v) } else { v };
                            let nibbles = [
                                _mm512_and_si512(v, nibble),
                                _mm512_and_si512(_mm512_srli_epi32::<8>(v), nibble),
                                _mm512_and_si512(_mm512_srli_epi32::<16>(v), nibble),
                                _mm512_and_si512(_mm512_srli_epi32::<24>(v), nibble),
                            ];
                            for (b, q) in nibbles.into_iter().enumerate() {
                                fma_all!(g, $p + b, value!(g, q));
                            }
                        }
                    }};
                }
                word!(0, 0, false);
                word!(1, 4, false);
                word!(2, 8, false);
                word!(3, 12, false);
                word!(0, 16, true);
                word!(1, 20, true);
                word!(2, 24, true);
                word!(3, 28, true);
            }
        }
    }
}

/// Four registers from `p`, 64 bytes apart. Safety: `p` is readable for 256 bytes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn loads4(p: *const u8) -> [__m512i; 4] {
    // SAFETY: the caller's contract.
    std::array::from_fn(|c| unsafe { _mm512_loadu_si512(p.add(64 * c).cast()) })
}

/// The 16 bytes at `at` of each row as four registers: register `c` holds word `c` (bytes
/// `4c..4c + 4`) of rows 0..16, one row per lane.
///
/// Safety: every row is readable for 16 bytes from `at`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn words(rows: &[*const u8; 16], at: usize) -> [__m512i; 4] {
    // quad[q]: rows 4q..4q + 4, one row per 128-bit lane. (No closures: see `quant_block`.)
    let mut quad = [_mm512_setzero_si512(); 4];
    for (q, z) in quad.iter_mut().enumerate() {
        // SAFETY: the caller's contract.
        unsafe {
            let r = &rows[4 * q..4 * q + 4];
            *z = _mm512_castsi128_si512(_mm_loadu_si128(r[0].add(at).cast()));
            *z = _mm512_inserti32x4::<1>(*z, _mm_loadu_si128(r[1].add(at).cast()));
            *z = _mm512_inserti32x4::<2>(*z, _mm_loadu_si128(r[2].add(at).cast()));
            *z = _mm512_inserti32x4::<3>(*z, _mm_loadu_si128(r[3].add(at).cast()));
        }
    }
    // Lane r of word c is word c of row r: word (r % 4) * 4 + c of quad r / 4. One index
    // serves both halves: bit 4 picks the second quad of the pair.
    // Word 0 of rows 0..8 (the pattern repeats for rows 8..16); word c is c further on.
    let word0 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    let mut out = [_mm512_setzero_si512(); 4];
    for (c, o) in out.iter_mut().enumerate() {
        let idx = _mm512_add_epi32(word0, _mm512_set1_epi32(c as i32));
        let first = _mm512_permutex2var_epi32(quad[0], idx, quad[1]);
        let second = _mm512_permutex2var_epi32(quad[2], idx, quad[3]);
        *o = _mm512_mask_blend_epi32(0xff00, first, second);
    }
    out
}

/// The kernel for a [`super::decode_layout::DecodeLayout`] of `dtype` and `m` activation
/// rows, if there is one (the CPU has AVX-512F and F16C).
pub(super) fn packed_kernel(dtype: DType, m: usize) -> Option<PackedFn> {
    macro_rules! pick {
        ($d:expr) => {
            match m {
                1 => Some(packed_group::<{ $d }, 1, 4> as PackedFn),
                2 => Some(packed_group::<{ $d }, 2, 4> as PackedFn),
                3 => Some(packed_group::<{ $d }, 3, 2> as PackedFn),
                4 => Some(packed_group::<{ $d }, 4, 2> as PackedFn),
                8 => Some(packed_group::<{ $d }, 8, 1> as PackedFn),
                16 => Some(packed_group::<{ $d }, 16, 1> as PackedFn),
                _ => None,
            }
        };
    }
    match dtype {
        DType::Q4_1 => pick!(Q4_1),
        DType::Q4_0 => pick!(Q4_0),
        DType::Q8_0 => pick!(Q8_0),
        // One chain at a time, so that the kernel reads the copy front to back: a single
        // thread streamed about a tenth faster so than hopping between the four chains'
        // blocks (BENCHMARKS.md, 2026-12-03), and a float block (one multiply-add per 64
        // bytes) leaves the chain's latency far below the memory's pace.
        DType::F32 => match m {
            1 => Some(packed_group::<F32, 1, 1> as PackedFn),
            2 => Some(packed_group::<F32, 2, 1> as PackedFn),
            3 => Some(packed_group::<F32, 3, 1> as PackedFn),
            4 => Some(packed_group::<F32, 4, 1> as PackedFn),
            8 => Some(packed_group::<F32, 8, 1> as PackedFn),
            16 => Some(packed_group::<F32, 16, 1> as PackedFn),
            _ => None,
        },
        DType::F16 => pick!(F16),
        DType::BF16 => pick!(BF16),
        _ => None,
    }
}

/// How many blocks ahead of the one being multiplied [`packed_group`] asks for every line
/// of a block: with the hardware's prefetcher alone the kernel waited on memory. 8 to 64
/// blocks ahead measured alike, all well ahead of one line four blocks ahead (BENCHMARKS.md,
/// 2026-12-03). Float blocks, read one chain at a time front to back, are left to the
/// hardware: asking for their lines too cost one thread's F32 decoding 12% of its speed.
pub(super) const PREFETCH_AHEAD: usize = 16;

/// Bytes and columns of one block of a [`DecodeLayout`] of format code `d` (as
/// `DecodeLayout::block_bytes` and `block_cols` give them for a `DType`).
pub(super) const fn packed_block_shape(d: u8) -> (usize, usize) {
    match d {
        Q8_0 => (576, 32),
        Q4_0 | Q4_1 => (320, 32),
        F32 => (1024, 16),
        _ => (512, 16),
    }
}

/// One regrouped group of 16 rows (`count` of them real) into `y`, in the chain order of
/// [`groups`]: the same bits.
///
/// Safety: see [`PackedFn`]; the CPU has AVX-512F and F16C.
#[target_feature(enable = "avx512f,f16c")]
unsafe fn packed_group<const D: u8, const M: usize, const J: usize>(
    group: *const u8,
    count: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
) {
    let floats = matches!(D, F32 | F16 | BF16);
    let (bb, cols) = packed_block_shape(D);
    let none = [[std::ptr::null::<u8>(); 16]; 1];
    let offsets = [_mm512_setzero_si512(); 1];
    // With 8 or more activation rows, the chains' accumulators take most of the 32
    // registers: the running sums then live in `y` (one load and store per chain of 64
    // steps, the same additions) rather than spilling in the loop.
    let sums_in_y = M >= 8;
    let mask = ((1u32 << count) - 1) as __mmask16;
    let mut sum = [_mm512_setzero_ps(); M];
    // A chain's multiply-adds wait on each other; the chains of an output do not. `J` of
    // them run interleaved in separate registers, then add to the sum in their order:
    // the same bits. (Spelled out chain by chain so that each one's registers are named
    // at compile time.)
    let mut c0 = 0;
    while c0 < k {
        let mut acc = [[[_mm512_setzero_ps(); M]; 1]; J];
        for at in (0..CHAIN).step_by(cols) {
            macro_rules! chain {
                ($j:literal) => {
                    if let Some(acc) = acc.get_mut($j) {
                        let p = c0 + $j * CHAIN + at;
                        if p < k {
                            // SAFETY: block p / cols of the group and elements p..p + cols
                            // of each activation row are inside the caller's extents.
                            unsafe {
                                let block = group.add(p / cols * bb);
                                if !floats {
                                    for line in (0..bb).step_by(64) {
                                        _mm_prefetch::<_MM_HINT_T0>(
                                            block.wrapping_add(PREFETCH_AHEAD * bb + line).cast(),
                                        );
                                    }
                                }
                                if floats {
                                    // Column t of the 16 rows is element 16 t onwards.
                                    for t in 0..16 {
                                        let w = load16::<D>(block, 16 * t);
                                        for (i, a) in acc[0].iter_mut().enumerate() {
                                            let xi = _mm512_set1_ps(*x.add(i * ldx + p + t));
                                            *a = _mm512_fmadd_ps(xi, w, *a);
                                        }
                                    }
                                } else {
                                    quant_block::<D, M, 1, true>(&none, &offsets, p / 32, block, x.add(p), ldx, acc);
                                }
                            }
                        }
                    }
                };
            }
            chain!(0);
            chain!(1);
            chain!(2);
            chain!(3);
        }
        macro_rules! add {
            ($j:literal) => {
                if let Some(acc) = acc.get($j)
                    && c0 + $j * CHAIN < k
                {
                    if sums_in_y {
                        for (i, a) in acc[0].into_iter().enumerate() {
                            // SAFETY: y is writable (and, after the first chain, written)
                            // at i * ldy + r for r < count.
                            unsafe {
                                let at = y.add(i * ldy);
                                let s = if c0 + $j == 0 {
                                    a
                                } else {
                                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), a)
                                };
                                _mm512_mask_storeu_ps(at, mask, s);
                            }
                        }
                    } else {
                        for (s, a) in sum.iter_mut().zip(acc[0]) {
                            *s = if c0 + $j == 0 { a } else { _mm512_add_ps(*s, a) };
                        }
                    }
                }
            };
        }
        add!(0);
        add!(1);
        add!(2);
        add!(3);
        c0 += J * CHAIN;
    }
    if !sums_in_y {
        for (i, s) in sum.into_iter().enumerate() {
            // SAFETY: y is writable at i * ldy + r for r < count.
            unsafe { _mm512_mask_storeu_ps(y.add(i * ldy), mask, s) };
        }
    }
}

/// See [`super::driver::Kernel::dequant_packed`]. Safety: the CPU has AVX-512F and F16C.
#[target_feature(enable = "avx512f,f16c")]
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
        // the CPU has AVX-512F and F16C (this function's contract).
        unsafe { expand(block.as_ptr(), out.as_mut_ptr(), nr) }
    })
}

/// Element `t` of the 16 rows of a regrouped block to `out + t * ld`, as the reference
/// dequantizer computes it (see [`quant_block`] for why one fused multiply-add is exact).
///
/// Safety: `block` is a whole block of the layout of format `D`; `out` is writable for 16
/// floats at each of the block's columns `t * ld`.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn expand_block<const D: u8>(block: *const u8, out: *mut f32, ld: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        match D {
            F32 | F16 | BF16 => {
                for t in 0..16 {
                    _mm512_storeu_ps(out.add(t * ld), load16::<D>(block, 16 * t));
                }
            }
            Q8_0 => {
                let head = _mm512_loadu_si512(block.cast());
                let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
                let words = [loads4(block.add(64)), loads4(block.add(320))];
                for c in 0..8 {
                    let v = words[c / 4][c % 4];
                    let bytes = [
                        _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(v)),
                        _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(v)),
                        _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(v)),
                        _mm512_srai_epi32::<24>(v),
                    ];
                    for (b, q) in bytes.into_iter().enumerate() {
                        _mm512_storeu_ps(out.add((4 * c + b) * ld), _mm512_mul_ps(d, _mm512_cvtepi32_ps(q)));
                    }
                }
            }
            _ => {
                let head = _mm512_loadu_si512(block.cast());
                let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
                let offset = if D == Q4_1 {
                    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(head)))
                } else {
                    _mm512_mul_ps(d, _mm512_set1_ps(-8.0))
                };
                let nibble = _mm512_set1_epi32(0x0f);
                let qs = loads4(block.add(64));
                for (c, v) in qs.into_iter().enumerate() {
                    for b in 0..4 {
                        let shifted = _mm512_srlv_epi32(v, _mm512_set1_epi32(8 * b as i32));
                        let lo = _mm512_and_si512(shifted, nibble);
                        let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(shifted), nibble);
                        // (No closure: it would not be inlined into this unit's code.)
                        macro_rules! value {
                            ($q:expr) => {
                                _mm512_fmadd_ps(d, _mm512_cvtepi32_ps($q), offset)
                            };
                        }
                        _mm512_storeu_ps(out.add((4 * c + b) * ld), value!(lo));
                        _mm512_storeu_ps(out.add((16 + 4 * c + b) * ld), value!(hi));
                    }
                }
            }
        }
    }
}
