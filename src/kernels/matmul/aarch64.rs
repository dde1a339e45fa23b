//! aarch64 NEON microkernel (`8 x 12`): rows of A are broadcast, rows of B are three
//! 4-lane vectors; `vfmaq_f32` is a fused multiply-add, so results match the other units.

use super::driver::{Kernel, dequant_generic, dequant_t_none, transpose_generic};
use std::arch::aarch64::*;

const MR: usize = 8;
const NR: usize = 12;

pub(super) const NEON: Kernel = Kernel {
    mr: MR,
    nr: NR,
    tiles: &[
        tile::<1>, tile::<2>, tile::<3>, tile::<4>, tile::<5>, tile::<6>, tile::<7>, tile::<8>,
    ],
    transpose: transpose_generic,
    dequant: dequant_generic,
    dequant_t: dequant_t_none,
    pairs: None,
    dequant_packed: None,
};

/// The first `R` rows of a tile. Safety: see `Kernel::tiles`.
unsafe fn tile<const R: usize>(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    // SAFETY: the extents of a, b and c are the caller's contract; NEON is baseline.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 3]; R];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = vld1q_f32(b);
            let b1 = vld1q_f32(b.add(4));
            let b2 = vld1q_f32(b.add(8));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = vdupq_n_f32(*a.add(i));
                row[0] = vfmaq_f32(row[0], ai, b0);
                row[1] = vfmaq_f32(row[1], ai, b1);
                row[2] = vfmaq_f32(row[2], ai, b2);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, r) in row.iter().enumerate() {
                let at = c.add(i * ldc + 4 * v);
                let r = if add { vaddq_f32(vld1q_f32(at), *r) } else { *r };
                vst1q_f32(at, r);
            }
        }
    }
}
