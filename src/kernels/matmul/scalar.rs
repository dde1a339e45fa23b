//! Portable microkernel. It uses `mul_add` so that its results are the same bits as the
//! SIMD kernels' fused multiply-adds (on a CPU without FMA it is slow but still exact).

use super::driver::{Kernel, dequant_generic, dequant_t_none, transpose_generic};

const MR: usize = 4;
const NR: usize = 8;

pub(super) const SCALAR: Kernel = Kernel {
    mr: MR,
    nr: NR,
    tiles: &[tile::<1>, tile::<2>, tile::<3>, tile::<4>],
    transpose: transpose_generic,
    dequant: dequant_generic,
    dequant_t: dequant_t_none,
    pairs: None,
    dequant_packed: None,
};

/// The first `R` rows of a tile. Safety: see `Kernel::tiles`.
unsafe fn tile<const R: usize>(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    // SAFETY: the caller guarantees the extents documented on `Kernel::tiles`.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, kc * NR),
        )
    };
    let mut acc = [[0.0f32; NR]; R];
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (row, &ai) in acc.iter_mut().zip(ap) {
            for (o, &bj) in row.iter_mut().zip(bp) {
                *o = ai.mul_add(bj, *o);
            }
        }
    }
    for (i, row) in acc.iter_mut().enumerate() {
        if add {
            // SAFETY: row i of the tile is readable for NR elements.
            let old = unsafe { std::ptr::read_unaligned(c.add(i * ldc).cast::<[f32; NR]>()) };
            for (o, v) in row.iter_mut().zip(old) {
                *o += v;
            }
        }
        // SAFETY: row i of the tile is writable for NR elements.
        unsafe { std::ptr::write_unaligned(c.add(i * ldc).cast::<[f32; NR]>(), *row) };
    }
}
