//! Products with a thin side, `C[m, n] (+)= A[m, k] · B[k, n]` with `n` or `m` at most
//! [`THIN`] (a LoRA rank), on AVX2 and FMA: the wide operand is read where it lies.
//!
//! The driver packs its operands, which pays for itself when each packed element meets a
//! tile's worth of multiply-adds. Here the wide operand meets only the thin side's few: a
//! LoRA branch's products do 16 flops per element of their `[T, in]` or `[T, out]`
//! operand, and packing it took most of their time (the branch ran at 9-14% of the FMA
//! peak). The thin operand is small and is packed; the wide one is read in place:
//!
//! - [`thin_n`]: `n <= THIN`, `A` stored row-major. Each step broadcasts one element of
//!   each of `R` rows of `A` against the thin `B`'s row (one or two vectors).
//! - [`thin_m`]: `m <= THIN`, `B` stored row-major. Each step loads 16 columns of a row of
//!   `B` (a cache line) against `R` broadcast elements of the packed thin `A`.
//!
//! Each output is the chain the driver computes (`driver::CHAIN` steps from zero, in
//! ascending order, each sum then added to the output), so the bits are the driver's for
//! any split of the work. Only the operand read in place must be unscaled; the packed one
//! is scaled as the driver's packs scale (one rounded multiply per element).

use super::THIN;
use super::driver::{CHAIN, COut};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Tasks wanted for load balance.
const TASKS: usize = 16;

/// The thin operand, indexed by its thin side `i` and the reduction step `p`: element
/// `[i][p]` is `scale * data[i * rs + p * cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
    pub scale: f32,
}

impl View<'_> {
    /// `dst[p * width + i] = [i][p]` for rows `i < rows`, steps `p < k`; zero past `rows`.
    fn pack_t(&self, rows: usize, k: usize, width: usize) -> Vec<f32> {
        let mut dst = vec![0f32; k * width];
        for (p, out) in dst.chunks_exact_mut(width).enumerate() {
            for (i, o) in out[..rows].iter_mut().enumerate() {
                *o = self.data[i * self.rs + p * self.cs];
            }
        }
        if self.scale != 1.0 {
            for v in dst.iter_mut() {
                *v *= self.scale;
            }
        }
        dst
    }
}

/// `C[m, n] (+)= A · B` with `a` as `[i][p]` and `b` as `[j][p]`, `c` holding rows `ldc`
/// apart, if a thin route applies (false, having done nothing, if none does):
/// [`thin_n`], [`thin_m`], or [`thin_m`] on `Cᵀ = Bᵀ Aᵀ` when `n` is thin and A's
/// transpose is stored row-major (the same chains, so the same bits, written transposed).
///
/// Safety: the CPU has AVX2 and FMA; the caller checked every extent.
pub(super) unsafe fn run(
    a: View,
    b: View,
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    add: bool,
) -> bool {
    let out = |data, trans| OutMut { data, ldc, trans };
    // SAFETY: the caller's unit and extents; each route's operand is stored as it needs.
    unsafe {
        if n <= THIN && a.cs == 1 && a.scale == 1.0 {
            thin_n(a.data, a.rs, b, (m, n, k), c, ldc, add);
        } else if m <= THIN && b.rs == 1 && b.scale == 1.0 {
            thin_m(a, b.data, b.cs, (m, n, k), out(c, false), add);
        } else if n <= THIN && a.rs == 1 && a.scale == 1.0 {
            thin_m(b, a.data, a.cs, (n, m, k), out(c, true), add);
        } else {
            return false;
        }
    }
    true
}

/// Rows of `A` per tile of [`thin_n`], by vectors of `B`'s row: 12 and 6 accumulators
/// cover the FMA latency of two pipes, and the broadcasts stay within three loads a cycle.
const THIN_N_ROWS: [usize; 2] = [12, 6];

/// `C[m, n] (+)= A · B` for `n <= THIN`: `a` stored row-major with rows `lda` apart and
/// unscaled, `b` the thin operand (`[j][p]` is `B[p][j]`), `c` holding rows `ldc` apart
/// (the caller checked every extent).
///
/// Safety: the CPU has AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
unsafe fn thin_n(
    a: &[f32],
    lda: usize,
    b: View,
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    ldc: usize,
    add: bool,
) {
    debug_assert!(n <= THIN && n > 0);
    let nv = n.div_ceil(8);
    let bp = b.pack_t(n, k, nv * 8);
    let rows = THIN_N_ROWS[nv - 1];
    let blocks = m.div_ceil(rows);
    let per_task = blocks.div_ceil(TASKS).max(1);
    let out = COut {
        ptr: c.as_mut_ptr(),
        ldc,
    };
    let bp = &bp[..];
    (0..blocks.div_ceil(per_task)).into_par_iter().for_each(|task| {
        let i_end = ((task + 1) * per_task * rows).min(m);
        // Each tile's rows of A are read whole, start to end, before the next tile's:
        // streams the hardware prefetchers follow (with the chains outside, 256 bytes of
        // each of the tile's rows in turn, a product ran at 33 rather than 41 GF/s on one
        // thread).
        for i in (task * per_task * rows..i_end).step_by(rows) {
            let r = rows.min(i_end - i);
            for p0 in (0..k).step_by(CHAIN) {
                let sk = CHAIN.min(k - p0);
                let load = add || p0 > 0;
                // SAFETY: rows i..i+r of A hold steps p0..p0+sk (the caller checked A's
                // extent); bp holds k rows of nv vectors; the tile's rows of C lie inside
                // the checked output and belong to this task alone.
                unsafe {
                    let (ap, bq) = (a.as_ptr().add(i * lda + p0), bp.as_ptr().add(p0 * nv * 8));
                    let c = Tile {
                        ptr: out.at(i * out.ldc),
                        rs: out.ldc,
                        cs: 1,
                        cols: n,
                    };
                    if nv == 1 {
                        tile_n_dispatch::<1>(r, sk, ap, lda, bq, c, load);
                    } else {
                        tile_n_dispatch::<2>(r, sk, ap, lda, bq, c, load);
                    }
                }
            }
        }
    });
}

#[inline(always)]
unsafe fn tile_n_dispatch<const NV: usize>(
    r: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: Tile,
    add: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match r {
            1 => tile_n::<1, NV>(kc, a, lda, b, c, add),
            2 => tile_n::<2, NV>(kc, a, lda, b, c, add),
            3 => tile_n::<3, NV>(kc, a, lda, b, c, add),
            4 => tile_n::<4, NV>(kc, a, lda, b, c, add),
            5 => tile_n::<5, NV>(kc, a, lda, b, c, add),
            6 => tile_n::<6, NV>(kc, a, lda, b, c, add),
            7 => tile_n::<7, NV>(kc, a, lda, b, c, add),
            8 => tile_n::<8, NV>(kc, a, lda, b, c, add),
            9 => tile_n::<9, NV>(kc, a, lda, b, c, add),
            10 => tile_n::<10, NV>(kc, a, lda, b, c, add),
            11 => tile_n::<11, NV>(kc, a, lda, b, c, add),
            _ => tile_n::<12, NV>(kc, a, lda, b, c, add),
        }
    }
}

/// `R` rows of `[R, c.cols]`: `a` row `i` at `a + i * lda`, read along `kc` steps; `b`
/// packed `[kc, NV * 8]`; then `c (+)=` the sums, `c.cols <= NV * 8` columns.
///
/// Safety: the CPU has AVX2 and FMA; the extents above are readable, `c`'s tile writable.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_n<const R: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: Tile,
    add: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); NV]; R];
    // SAFETY: the caller's extents.
    unsafe {
        for p in 0..kc {
            let bv: [__m256; NV] = std::array::from_fn(|v| _mm256_loadu_ps(b.add(p * NV * 8 + v * 8)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(i * lda + p));
                for v in 0..NV {
                    acc[v] = _mm256_fmadd_ps(ai, bv[v], acc[v]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            store(c, i, acc, add);
        }
    }
}

/// Row `i` of the tile `c` `= (add ? c + s : s)` for the sums `s` of that row
/// (`c.cols <= 8 * s.len() <= 16`).
///
/// Safety: the CPU has AVX2; the tile's row is writable.
#[target_feature(enable = "avx2")]
unsafe fn store(c: Tile, i: usize, s: &[__m256], add: bool) {
    // SAFETY: the caller's extents; partial or transposed rows go through a stack copy.
    unsafe {
        let row = c.ptr.add(i * c.rs);
        if c.cs == 1 && c.cols == 8 * s.len() {
            for (v, &s) in s.iter().enumerate() {
                let at = row.add(v * 8);
                let s = if add { _mm256_add_ps(_mm256_loadu_ps(at), s) } else { s };
                _mm256_storeu_ps(at, s);
            }
            return;
        }
        // A partial row, or a transposed output whose row goes down a column (once a
        // chain).
        let mut t = [0f32; 16];
        for (v, &s) in s.iter().enumerate() {
            _mm256_storeu_ps(t.as_mut_ptr().add(v * 8), s);
        }
        for (l, &s) in t[..c.cols].iter().enumerate() {
            let at = row.add(l * c.cs);
            *at = if add { *at + s } else { s };
        }
    }
}

/// [`thin_m`]'s output: `c: [m, n]` with rows `ldc` apart, or when `trans` its transpose
/// `[n, m]` so stored.
struct OutMut<'a> {
    data: &'a mut [f32],
    ldc: usize,
    trans: bool,
}

/// One tile's place in the output: element `[i][l]` at `ptr + i * rs + l * cs`, `cols`
/// columns.
#[derive(Clone, Copy)]
struct Tile {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
    cols: usize,
}

/// Columns per tile of [`thin_m`]: one cache line of a row of `B`.
const THIN_M_COLS: usize = 16;
/// Most rows per tile of [`thin_m`] (12 accumulators).
const THIN_M_ROWS: usize = 6;

/// `C[m, n] (+)= A · B` for `m <= THIN`: `a` the thin operand, `b` stored row-major with
/// rows `ldb` apart and unscaled, `c` holding rows `ldc` apart, or when `c.trans` the
/// transpose `Cᵀ` stored so (the caller checked every extent).
///
/// Safety: the CPU has AVX2 and FMA.
#[allow(clippy::too_many_arguments)]
unsafe fn thin_m(a: View, b: &[f32], ldb: usize, (m, n, k): (usize, usize, usize), c: OutMut, add: bool) {
    debug_assert!(m <= THIN && m > 0);
    let ap = a.pack_t(m, k, m);
    // Rows in even blocks (8 = 4 + 4 rather than 6 + 2): a tile's accumulators must cover
    // the FMA latency.
    let row_blocks = m.div_ceil(THIN_M_ROWS);
    // The columns past the last whole line of B, packed (zero-padded) so that the tile
    // never reads past a row.
    let whole = n / THIN_M_COLS * THIN_M_COLS;
    let edge = (whole < n).then(|| {
        let w = n - whole;
        let mut e = vec![0f32; k * THIN_M_COLS];
        for (p, out) in e.chunks_exact_mut(THIN_M_COLS).enumerate() {
            out[..w].copy_from_slice(&b[p * ldb + whole..p * ldb + n]);
        }
        e
    });
    let groups = n.div_ceil(THIN_M_COLS);
    let per_task = groups.div_ceil(TASKS).max(1);
    let out = COut {
        ptr: c.data.as_mut_ptr(),
        ldc: c.ldc,
    };
    let trans = c.trans;
    let (ap, edge) = (&ap[..], edge.as_deref());
    (0..groups.div_ceil(per_task)).into_par_iter().for_each(|task| {
        for g in task * per_task..((task + 1) * per_task).min(groups) {
            let j = g * THIN_M_COLS;
            let cols = THIN_M_COLS.min(n - j);
            // A whole line is read in place, the edge from its padded copy.
            let (bsrc, ld) = match edge {
                Some(e) if j == whole => (e, THIN_M_COLS),
                _ => (&b[j..], ldb),
            };
            for p0 in (0..k).step_by(CHAIN) {
                let sk = CHAIN.min(k - p0);
                let load = add || p0 > 0;
                let mut i = 0;
                for blk in 0..row_blocks {
                    let r = (m - i).div_ceil(row_blocks - blk);
                    // SAFETY: rows p0..p0+sk of B's columns j..j+16 are inside B (whole
                    // lines end at or before n; the edge copy holds 16 columns); ap holds
                    // k rows of m; the tile's rows i..i+r, columns j..j+cols of C lie
                    // inside the checked output and belong to this task alone.
                    unsafe {
                        let aq = ap.as_ptr().add(p0 * m + i);
                        let bq = bsrc.as_ptr().add(p0 * ld);
                        let (cp, rs, cs) = if trans {
                            (out.at(j * out.ldc + i), 1, out.ldc)
                        } else {
                            (out.at(i * out.ldc + j), out.ldc, 1)
                        };
                        let c = Tile { ptr: cp, rs, cs, cols };
                        match r {
                            1 => tile_m::<1>(sk, aq, m, bq, ld, c, load),
                            2 => tile_m::<2>(sk, aq, m, bq, ld, c, load),
                            3 => tile_m::<3>(sk, aq, m, bq, ld, c, load),
                            4 => tile_m::<4>(sk, aq, m, bq, ld, c, load),
                            5 => tile_m::<5>(sk, aq, m, bq, ld, c, load),
                            _ => tile_m::<6>(sk, aq, m, bq, ld, c, load),
                        }
                    }
                    i += r;
                }
            }
        }
    });
}

/// `R` rows of `[R, c.cols]`: `a` packed with rows `lda` apart per step (`a + p * lda + i`),
/// `b` a row of 16 columns every `ldb`; then `c (+)=` the sums, `c.cols <= 16` columns.
///
/// Safety: the CPU has AVX2 and FMA; the extents above are readable, `c`'s tile writable.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_m<const R: usize>(kc: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: Tile, add: bool) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY: the caller's extents.
    unsafe {
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * ldb));
            let b1 = _mm256_loadu_ps(b.add(p * ldb + 8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(p * lda + i));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            store(c, i, acc, add);
        }
    }
}
