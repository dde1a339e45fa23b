//! Operand sources: strided f32 matrices and frozen weights in their stored format.

use super::WeightRef;
use super::driver::{ASource, BSource, Kernel, MAX_NR};
use std::ops::Range;

/// `A[i][p] = alpha * data[i * rs + p * cs]`.
pub(super) struct StridedA<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
    alpha: f32,
}

impl<'a> StridedA<'a> {
    pub(super) fn new(data: &'a [f32], rs: usize, cs: usize, alpha: f32) -> Self {
        StridedA { data, rs, cs, alpha }
    }
}

impl ASource for StridedA<'_> {
    fn pack(&self, kern: &Kernel, i0: usize, i1: usize, p0: usize, p1: usize, dst: &mut [f32]) {
        let (mr, kc) = (kern.mr, p1 - p0);
        let rows = i1 - i0;
        // A one-column matrix has both strides 1: it is read as the general case below,
        // since the transposing copy needs rows `rs >= kc` apart.
        if self.cs == 1 && self.rs != 1 {
            if rows < mr {
                dst.fill(0.0);
            }
            // SAFETY: the kernel's unit was checked when it was chosen.
            unsafe { (kern.transpose)(&self.data[i0 * self.rs + p0..], self.rs, rows, kc, mr, dst) };
        } else {
            // Rows of A are columns of storage: each p is a contiguous run of rows.
            for (p, out) in dst.chunks_mut(mr).enumerate() {
                let at = (p0 + p) * self.cs + i0 * self.rs;
                if self.rs == 1 {
                    out[..rows].copy_from_slice(&self.data[at..at + rows]);
                } else {
                    for (r, o) in out[..rows].iter_mut().enumerate() {
                        *o = self.data[at + r * self.rs];
                    }
                }
                out[rows..].fill(0.0);
            }
        }
        if self.alpha != 1.0 {
            for v in dst.iter_mut() {
                *v *= self.alpha;
            }
        }
    }
}

/// `B[p][j] = alpha * data[p * rs + j * cs]`.
pub(super) struct StridedB<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
    alpha: f32,
}

impl<'a> StridedB<'a> {
    pub(super) fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        StridedB {
            data,
            rs,
            cs,
            alpha: 1.0,
        }
    }

    /// The same operand, each element scaled by `alpha` (rounded once, as [`StridedA`]
    /// scales its elements).
    pub(super) fn scaled(self, alpha: f32) -> Self {
        StridedB { alpha, ..self }
    }
}

impl BSource for StridedB<'_> {
    fn pack(&self, kern: &Kernel, ps: Range<usize>, js: Range<usize>, dst: &mut [f32], _scratch: &mut Vec<f32>) {
        let (p0, p1, j0, j1) = (ps.start, ps.end, js.start, js.end);
        let (nr, kc) = (kern.nr, p1 - p0);
        for (g, group) in dst.chunks_mut(kc * nr).enumerate() {
            let jg = j0 + g * nr;
            let cols = nr.min(j1 - jg);
            // As in StridedA: a one-row or one-column B has both strides 1.
            if self.rs == 1 && self.cs != 1 {
                // Columns of B are rows of storage: transpose them.
                if cols < nr {
                    group.fill(0.0);
                }
                let src = &self.data[jg * self.cs + p0..];
                // SAFETY: the kernel's unit was checked when it was chosen.
                unsafe { (kern.transpose)(src, self.cs, cols, kc, nr, group) };
            } else {
                for (p, out) in group.chunks_mut(nr).enumerate() {
                    let row = &self.data[(p0 + p) * self.rs..];
                    if self.cs == 1 {
                        out[..cols].copy_from_slice(&row[jg..jg + cols]);
                    } else {
                        for (c, o) in out[..cols].iter_mut().enumerate() {
                            *o = row[(jg + c) * self.cs];
                        }
                    }
                    out[cols..].fill(0.0);
                }
            }
        }
        if self.alpha != 1.0 {
            for v in dst.iter_mut() {
                *v *= self.alpha;
            }
        }
    }
}

/// `B[p][j] = W[j][p]`: the forward product `x · Wᵀ`.
pub(super) struct WeightT<'a, 'w>(pub &'a WeightRef<'w>);

impl BSource for WeightT<'_, '_> {
    fn p_align(&self) -> usize {
        self.0.dtype.block_len()
    }

    fn pack(&self, kern: &Kernel, ps: Range<usize>, js: Range<usize>, dst: &mut [f32], scratch: &mut Vec<f32>) {
        let (p0, p1, j0, j1) = (ps.start, ps.end, js.start, js.end);
        let (nr, kc) = (kern.nr, p1 - p0);
        if scratch.len() < nr * kc {
            scratch.resize(nr * kc, 0.0);
        }
        for (g, group) in dst.chunks_mut(kc * nr).enumerate() {
            let jg = j0 + g * nr;
            let rows = nr.min(j1 - jg);
            if rows < nr {
                group.fill(0.0);
            }
            // The copy regrouped for decoding, when there is one, is read as whole vectors.
            if let (Some(layout), Some(packed)) = (self.0.decode, kern.dequant_packed)
                && layout.fits(self.0)
                // SAFETY: the kernel's unit was checked when it was chosen.
                && unsafe { packed(layout, jg, rows, p0, p1, nr, group) }
            {
                continue;
            }
            let mut srcs: [&[u8]; MAX_NR] = [&[]; MAX_NR];
            for (r, src) in srcs[..rows].iter_mut().enumerate() {
                *src = self.0.row_bytes_range(jg + r, p0, p1);
            }
            // SAFETY: the kernel's unit was checked when it was chosen.
            if unsafe { (kern.dequant_t)(self.0.dtype, &srcs[..rows], kc, nr, group) } {
                continue;
            }
            // Without a fused expansion, stored f32 rows are already the values: transposed
            // straight from the weight instead of copied out row by row first (in a profile
            // of an AVX2 forward pass over F32 weights, the copies and the transpose took 19%
            // of the samples before, the transpose alone 12% after).
            if let Some(rows_f32) = self.stored_f32(jg, rows) {
                // SAFETY: the kernel's unit was checked when it was chosen.
                unsafe { (kern.transpose)(&rows_f32[p0..], self.0.cols, rows, kc, nr, group) };
                continue;
            }
            for (r, buf) in scratch.chunks_mut(kc).take(rows).enumerate() {
                self.0.row_range(kern.dequant, jg + r, p0, p1, buf);
            }
            // SAFETY: the kernel's unit was checked when it was chosen.
            unsafe { (kern.transpose)(scratch, kc, rows, kc, nr, group) };
        }
    }
}

impl WeightT<'_, '_> {
    /// Rows `j..j + rows` of an F32 weight stored in order, as the f32 slice from row
    /// `j`'s first element, when the bytes are aligned for f32.
    fn stored_f32(&self, j: usize, rows: usize) -> Option<&[f32]> {
        let w = self.0;
        if w.dtype != crate::quant::DType::F32 || w.order != super::RowOrder::Stored || rows == 0 {
            return None;
        }
        let bytes = &w.data[j * w.cols * 4..(j + rows) * w.cols * 4];
        // SAFETY: any bit pattern is an f32; the length and alignment are checked.
        let (head, floats, _) = unsafe { bytes.align_to::<f32>() };
        head.is_empty().then_some(floats)
    }
}

/// `B[p][j] = W[p][j]`: the backward product `dy · W`.
pub(super) struct WeightN<'a, 'w>(pub &'a WeightRef<'w>);

impl BSource for WeightN<'_, '_> {
    fn j_align(&self) -> usize {
        self.0.dtype.block_len()
    }

    fn wide_tasks(&self) -> bool {
        true
    }

    fn pack(&self, kern: &Kernel, ps: Range<usize>, js: Range<usize>, dst: &mut [f32], scratch: &mut Vec<f32>) {
        let (p0, p1, j0, j1) = (ps.start, ps.end, js.start, js.end);
        let (nr, kc) = (kern.nr, p1 - p0);
        let bl = self.0.dtype.block_len();
        if nr.is_multiple_of(bl) {
            // Each group of columns is whole blocks (j0 is block-aligned): expand in place.
            for p in 0..kc {
                for (g, jg) in (j0..j1).step_by(nr).enumerate() {
                    let je = (jg + nr).min(j1);
                    let out = &mut dst[(g * kc + p) * nr..(g * kc + p + 1) * nr];
                    self.0.row_range(kern.dequant, p0 + p, jg, je, out);
                    out[je - jg..].fill(0.0);
                }
            }
            return;
        }
        // Groups split blocks: expand the tile's columns once, then copy.
        if scratch.len() < j1 - j0 {
            scratch.resize(j1 - j0, 0.0);
        }
        let row = &mut scratch[..j1 - j0];
        for p in 0..kc {
            if p + ROWS_AHEAD < kc {
                prefetch(self.0.row_bytes_range(p0 + p + ROWS_AHEAD, j0, j1));
            }
            self.0.row_range(kern.dequant, p0 + p, j0, j1, row);
            for (g, chunk) in row.chunks(nr).enumerate() {
                let out = &mut dst[(g * kc + p) * nr..(g * kc + p + 1) * nr];
                out[..chunk.len()].copy_from_slice(chunk);
                out[chunk.len()..].fill(0.0);
            }
        }
    }

    /// Each reduction step `p` is a stored weight row, a whole row (kilobytes) after the
    /// last: the hardware prefetcher does not follow that stride across pages, and a
    /// chunk's pack met its 256 misses one after another.
    fn prefetch(&self, ps: Range<usize>, js: Range<usize>) {
        for p in ps {
            prefetch(self.0.row_bytes_range(p, js.start, js.end));
        }
    }
}

/// How many weight rows ahead [`WeightN`] asks for the bytes it will read where a group of
/// columns splits a block (the K-quants), besides what [`BSource::prefetch`] asked for
/// during the chunk before: in eight runs at the 1B shapes alternated with a build
/// without it, the medians of Q4_K and Q6_K dY·W were 1-4 points higher with it (within
/// the noise; kept for the first chunk of each task, which nothing asked for).
const ROWS_AHEAD: usize = 8;

/// Asks for the cache lines of `bytes` (a hint: no effect on the values).
#[inline]
fn prefetch(bytes: &[u8]) {
    // Every line the bytes touch, the last one too when they do not start on a line.
    #[cfg(target_arch = "x86_64")]
    {
        let (start, end) = (bytes.as_ptr() as usize, bytes.as_ptr() as usize + bytes.len());
        for line in (start & !63..end).step_by(64) {
            // SAFETY: a prefetch reads nothing observable, whatever the address.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
