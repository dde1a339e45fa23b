//! NEON kernels of [`super::gemv`]: the stored weight rows, four at a time, expanded with
//! the format's own dequantizer into a small buffer, then transposed so that one register
//! holds one reduction index of the four rows, and multiplied into every activation row's
//! chain: one fused multiply-add per element and row, in the tiled path's order.

use super::WeightRef;
use super::driver::CHAIN;
use super::gemv::{GroupFn, Rows};
use crate::quant::{DType, dequantize_row_unchecked};
use std::arch::aarch64::*;

/// The kernel for `w` and `m` activation rows, if there is one.
pub(super) fn group_kernel(w: &WeightRef, m: usize) -> Option<GroupFn> {
    macro_rules! pick {
        ($d:expr) => {
            match m {
                1 => Some(group::<{ $d }, 1> as GroupFn),
                2 => Some(group::<{ $d }, 2> as GroupFn),
                3 => Some(group::<{ $d }, 3> as GroupFn),
                4 => Some(group::<{ $d }, 4> as GroupFn),
                _ => None,
            }
        };
    }
    let floats = w.cols.is_multiple_of(SPAN_FLOATS);
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

// Formats as const parameters.
const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;
const Q8_0: u8 = 3;
const Q4_0: u8 = 4;
const Q4_1: u8 = 5;

/// Elements expanded at a time: a block of the quantized formats, 16 of the float ones
/// (both divide [`CHAIN`], so no span crosses a chain).
const SPAN_QUANT: usize = 32;
const SPAN_FLOATS: usize = 16;

const fn dtype(d: u8) -> DType {
    match d {
        F32 => DType::F32,
        F16 => DType::F16,
        BF16 => DType::BF16,
        Q8_0 => DType::Q8_0,
        Q4_0 => DType::Q4_0,
        _ => DType::Q4_1,
    }
}

/// Safety: see [`GroupFn`].
unsafe fn group<const D: u8, const M: usize>(rows: &Rows, x: *const f32, ldx: usize, y: *mut f32, ldy: usize) {
    let (count, k) = (rows.count, rows.k);
    let span = if matches!(D, F32 | F16 | BF16) {
        SPAN_FLOATS
    } else {
        SPAN_QUANT
    };
    for r0 in (0..count).step_by(4) {
        let n = (count - r0).min(4);
        // Rows past `count` repeat the first (computed, never stored).
        let quad: [*const u8; 4] = std::array::from_fn(|r| rows.starts[r0 + if r < n { r } else { 0 }]);
        // SAFETY: NEON is baseline on aarch64.
        let zero = unsafe { vdupq_n_f32(0.0) };
        let mut sum = [zero; M];
        let mut c0 = 0;
        while c0 < k {
            let ce = (c0 + CHAIN).min(k);
            let mut acc = [zero; M];
            for p in (c0..ce).step_by(span) {
                // SAFETY: elements p..p + span lie inside every row and activation row.
                unsafe { span_into::<D, M>(&quad, p, span, x.add(p), ldx, &mut acc) };
            }
            for (s, a) in sum.iter_mut().zip(acc) {
                // SAFETY: NEON is baseline on aarch64.
                *s = if c0 == 0 { a } else { unsafe { vaddq_f32(*s, a) } };
            }
            c0 = ce;
        }
        for (i, s) in sum.into_iter().enumerate() {
            let mut lanes = [0f32; 4];
            // SAFETY: lanes has room for 4 floats; y is writable at i * ldy + r for r < count.
            unsafe {
                vst1q_f32(lanes.as_mut_ptr(), s);
                for (r, &v) in lanes.iter().enumerate().take(n) {
                    *y.add(i * ldy + r0 + r) = v;
                }
            }
        }
    }
}

/// Elements `p..p + span` of the four rows into each activation row's chain.
///
/// Safety: the rows hold those elements (`p` and `span` whole blocks); `x` (at element
/// `p`) holds `M` rows of at least `span` at stride `ldx`.
#[inline(always)]
unsafe fn span_into<const D: u8, const M: usize>(
    quad: &[*const u8; 4],
    p: usize,
    span: usize,
    x: *const f32,
    ldx: usize,
    acc: &mut [float32x4_t; M],
) {
    let dt = dtype(D);
    let at = dt.row_bytes(p).unwrap_or(0);
    let bytes = dt.row_bytes(span).unwrap_or(0);
    let mut buf = [[0f32; SPAN_QUANT]; 4];
    for (row, out) in quad.iter().zip(buf.iter_mut()) {
        // SAFETY: the caller's contract: the row holds these bytes.
        let src = unsafe { std::slice::from_raw_parts(row.add(at), bytes) };
        dequantize_row_unchecked(dt, src, &mut out[..span]);
    }
    for c in (0..span).step_by(4) {
        // SAFETY: buf rows hold `span` floats; x holds M rows of `span` from p.
        unsafe {
            let t = transpose4([
                vld1q_f32(buf[0].as_ptr().add(c)),
                vld1q_f32(buf[1].as_ptr().add(c)),
                vld1q_f32(buf[2].as_ptr().add(c)),
                vld1q_f32(buf[3].as_ptr().add(c)),
            ]);
            for (j, w) in t.into_iter().enumerate() {
                for (i, a) in acc.iter_mut().enumerate() {
                    let xi = vdupq_n_f32(*x.add(i * ldx + c + j));
                    *a = vfmaq_f32(*a, xi, w);
                }
            }
        }
    }
}

/// Rows of four lanes to columns: lane `r` of output `j` is lane `j` of input `r`.
#[inline(always)]
fn transpose4(r: [float32x4_t; 4]) -> [float32x4_t; 4] {
    // SAFETY: NEON is baseline on aarch64.
    unsafe {
        let t0 = vreinterpretq_f64_f32(vtrn1q_f32(r[0], r[1])); // r0[0] r1[0] r0[2] r1[2]
        let t1 = vreinterpretq_f64_f32(vtrn2q_f32(r[0], r[1])); // r0[1] r1[1] r0[3] r1[3]
        let t2 = vreinterpretq_f64_f32(vtrn1q_f32(r[2], r[3]));
        let t3 = vreinterpretq_f64_f32(vtrn2q_f32(r[2], r[3]));
        [
            vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)),
            vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)),
            vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)),
            vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)),
        ]
    }
}
