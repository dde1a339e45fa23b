//! Matrix products over memory-mapped weights of any [`crate::quant::DType`].
//! (Reference implementation; the blocked SIMD kernels replace it.)

use crate::quant::{DType, dequantize_row_unchecked};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOrder {
    Stored,
    RopeUnpermute { head_dim: usize },
}

#[derive(Clone, Copy)]
pub struct WeightRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    pub order: RowOrder,
}

impl WeightRef<'_> {
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let phys = match self.order {
            RowOrder::Stored => r,
            RowOrder::RopeUnpermute { head_dim } => {
                let (h, i) = (r / head_dim, r % head_dim);
                let half = head_dim / 2;
                h * head_dim + if i < half { 2 * i } else { 2 * (i - half) + 1 }
            }
        };
        let rb = self.dtype.row_bytes(self.cols).unwrap_or(0);
        dequantize_row_unchecked(self.dtype, &self.data[phys * rb..(phys + 1) * rb], out);
    }
}

/// y[m, n] = x[m, k] · W^T
pub fn matmul_wt(x: &[f32], m: usize, w: &WeightRef, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let mut wt = vec![0f32; n * k];
    wt.par_chunks_mut(k).enumerate().for_each(|(r, row)| w.row(r, row));
    y[..m * n].par_chunks_mut(n).enumerate().for_each(|(i, yr)| {
        let xr = &x[i * k..(i + 1) * k];
        for (j, o) in yr.iter_mut().enumerate() {
            *o = crate::kernels::simd::dot(xr, &wt[j * k..(j + 1) * k]);
        }
    });
}

/// dx[m, k] += dy[m, n] · W
pub fn matmul_w_acc(dy: &[f32], m: usize, w: &WeightRef, dx: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let mut wt = vec![0f32; n * k];
    wt.par_chunks_mut(k).enumerate().for_each(|(r, row)| w.row(r, row));
    dx[..m * k].par_chunks_mut(k).enumerate().for_each(|(i, dxr)| {
        for j in 0..n {
            let g = dy[i * n + j];
            for (o, &wv) in dxr.iter_mut().zip(&wt[j * k..(j + 1) * k]) {
                *o += g * wv;
            }
        }
    });
}

/// C[m,n] (+)= alpha * op(A) · op(B), row-major with leading dimensions.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    transa: bool,
    transb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for p in 0..k {
                let av = if transa { a[p * lda + i] } else { a[i * lda + p] };
                let bv = if transb { b[j * ldb + p] } else { b[p * ldb + j] };
                s += av * bv;
            }
            let o = &mut c[i * ldc + j];
            *o = if accumulate { *o + alpha * s } else { alpha * s };
        }
    }
}
