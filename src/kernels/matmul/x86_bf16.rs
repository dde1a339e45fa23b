//! AVX512-BF16 microkernel (`12 x 32`) of [`super::Precision::Bf16`]: both operands
//! rounded to bf16 and packed as pairs of consecutive reduction steps (one 32-bit lane per
//! pair), multiplied with `vdpbf16ps`, which adds both products of a pair into an f32
//! accumulator. Twice the multiply-adds per instruction of the f32 kernel, at bf16's
//! 8 significant bits per operand.

use super::driver::Kernel;
use std::arch::x86_64::*;

const MR: usize = 12;

/// Whether the CPU has what [`BF16`] enables, on top of the AVX-512 unit it builds on
/// (which `NUDGE_NO_SIMD` turns off, and this with it).
pub(super) fn is_supported() -> bool {
    crate::isa::Isa::has_bf16_dot()
}

/// Safety of every function pointer: the CPU has AVX-512F, F16C and AVX512-BF16
/// ([`is_supported`]), as well as each one's own contract.
pub(super) const BF16: Kernel = Kernel {
    mr: MR,
    nr: 32,
    tiles: &[
        tile::<1>, tile::<2>, tile::<3>, tile::<4>, tile::<5>, tile::<6>, tile::<7>, tile::<8>, tile::<9>, tile::<10>,
        tile::<11>, tile::<12>,
    ],
    transpose: super::x86::AVX512.transpose,
    dequant: super::x86::AVX512.dequant,
    dequant_t: super::x86::AVX512.dequant_t,
    pairs: Some(pairs),
    dequant_packed: None,
};

/// The first `R` rows of a `12 x 32` tile over `kc` reduction steps, whose panels hold
/// `kc.div_ceil(2)` pairs (see `Kernel::pairs`). Safety: see `Kernel::tiles`; the CPU has
/// AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const R: usize>(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    // SAFETY: the extents of a, b and c are the caller's contract.
    unsafe {
        let (mut a, mut b) = (a.cast::<i32>(), b.cast::<i32>());
        for _ in 0..kc.div_ceil(2) {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
            for i in 0..R {
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i)));
                lo[i] = _mm512_dpbf16_ps(lo[i], ai, b0);
                hi[i] = _mm512_dpbf16_ps(hi[i], ai, b1);
            }
            a = a.add(MR);
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

/// See `Kernel::pairs`. Safety: the CPU has AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pairs(panel: &mut [f32], width: usize, steps: usize) {
    assert!(
        panel.len() >= width * steps,
        "a panel of {steps} x {width} in {} floats",
        panel.len()
    );
    let whole = steps / 2;
    for pp in 0..whole {
        let (lo, hi) = (2 * pp * width, (2 * pp + 1) * width);
        let mut c = 0;
        // SAFETY: lanes c..c + 16 of steps 2pp and 2pp + 1 lie inside the panel (checked
        // above); the pair row pp it writes was read no later than this step.
        unsafe {
            let p = panel.as_mut_ptr();
            while c + 16 <= width {
                let l = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(
                    _mm512_loadu_ps(p.add(lo + c)),
                )));
                let h = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(
                    _mm512_loadu_ps(p.add(hi + c)),
                )));
                let v = _mm512_or_si512(l, _mm512_slli_epi32::<16>(h));
                _mm512_storeu_si512(p.add(pp * width + c).cast(), v);
                c += 16;
            }
        }
        for c in c..width {
            let v = bf16_bits(panel[lo + c]) | (bf16_bits(panel[hi + c]) << 16);
            panel[pp * width + c] = f32::from_bits(v);
        }
    }
    if steps % 2 == 1 {
        // The last step pairs with a zero.
        let lo = (steps - 1) * width;
        for c in 0..width {
            panel[whole * width + c] = f32::from_bits(bf16_bits(panel[lo + c]));
        }
    }
}

/// `v` rounded to the nearest bf16 (ties to even), as `vcvtneps2bf16` rounds.
fn bf16_bits(v: f32) -> u32 {
    half::bf16::from_f32(v).to_bits() as u32
}
