//! Decoding's products: `y[m, n] = x[m, k] · Wᵀ` for a handful of activation rows.
//!
//! A token at a time, the tiled path spends its time expanding each weight row into an f32
//! panel that is then read once. Here a unit's kernel expands 16 stored rows straight into
//! registers laid out across rows, and feeds them to the multiply-adds of every activation
//! row at once. The order of each output's reduction is the tiled path's (chains of
//! `driver::CHAIN` steps from zero, each added to the sum in turn), so a decoding step
//! gives the bits a full forward gives.

use super::WeightRef;
use super::decode_layout::{DecodeLayout, GROUP_ROWS};
use rayon::prelude::*;

/// The most activation rows one call serves; more go through the tiled path, which shares
/// each expanded weight panel between more rows. (A unit may serve only some counts up to
/// it: x86 takes 1 to 4, 8 and 16, the batched decoding sizes; the others go tiled.)
pub(super) const MAX_M: usize = 16;

/// The most weight rows one kernel call takes.
pub(super) const GROUP: usize = 32;

/// Output rows (weight rows) per task of [`matmul_wt`]: a multiple of [`GROUP`].
const TASK_ROWS: usize = 64;

/// A unit's kernel for rows `rows` (at most [`GROUP`], given as stored-row start pointers)
/// of the weight: `y[i * ldy + r] = x[i * ldx ..] · W[rows[r]]` for `i < m`, `r < count`.
///
/// Waiting on memory first bounded this path: the kernel asks for `warm` (its own rows,
/// when nothing asked for them before) at once, and for `ahead` (the next call's rows)
/// bit by bit while it works.
///
/// Safety: every pointer is the start of a stored row of `k` elements of the weight's
/// format; `x` holds `m` rows of `k` at stride `ldx`; `y` is writable at `i * ldy + r`;
/// the CPU has the unit.
pub(super) type GroupFn = unsafe fn(rows: &Rows, x: *const f32, ldx: usize, y: *mut f32, ldy: usize);

/// The weight rows of one kernel call.
// `warm` and `ahead` are for prefetching, which the NEON kernel leaves to the hardware
// (std::arch has no stable prefetch on aarch64).
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub(super) struct Rows<'a> {
    /// Start of each stored row; entries past `count` are unused.
    pub starts: [*const u8; GROUP],
    pub count: usize,
    /// Elements per row.
    pub k: usize,
    pub warm: &'a [u8],
    pub ahead: &'a [u8],
}

/// The output pointer shared by the tasks, each writing its own columns.
#[derive(Clone, Copy)]
struct YOut(*mut f32);
// SAFETY: tasks write disjoint columns of `y`; the borrow it came from outlives them.
unsafe impl Send for YOut {}
unsafe impl Sync for YOut {}

impl YOut {
    /// Column `j` of the first row (a method, so that closures capture the whole `YOut`).
    fn column(&self, j: usize) -> *mut f32 {
        self.0.wrapping_add(j)
    }
}

/// A unit's choice of kernel for a weight and a number of activation rows, if it has one.
pub(super) type PickFn = fn(w: &WeightRef, m: usize) -> Option<GroupFn>;

/// `y = x · Wᵀ` for `m <= MAX_M` rows when the unit (`pick`) has a kernel for the weight's
/// format and shape; false (nothing written) otherwise. The caller has checked the extents.
pub(super) fn matmul_wt(pick: PickFn, x: &[f32], m: usize, w: &WeightRef, y: &mut [f32]) -> bool {
    if m == 0 || m > MAX_M || w.rows == 0 || w.cols == 0 {
        return false;
    }
    let Some(kernel) = pick(w, m) else {
        return false;
    };
    let (n, k) = (w.rows, w.cols);
    debug_assert!(x.len() >= m * k && y.len() >= m * n);
    let row_bytes = w.data.len() / n.max(1);
    let out = YOut(y.as_mut_ptr());
    let tasks = n.div_ceil(TASK_ROWS);
    // The stored bytes of logical rows `r0..r1` lie between their first and last rows.
    let span = |r0: usize, r1: usize| -> &[u8] {
        if r0 >= r1 {
            return &[];
        }
        let (lo, hi) = (r0..r1).fold((usize::MAX, 0), |(lo, hi), r| {
            let p = w.physical_row(r);
            (lo.min(p), hi.max(p))
        });
        &w.data[lo * row_bytes..(hi + 1) * row_bytes]
    };
    (0..tasks).into_par_iter().for_each(|t| {
        let (start, end) = (t * TASK_ROWS, ((t + 1) * TASK_ROWS).min(n));
        for r0 in (start..end).step_by(GROUP) {
            let count = (end - r0).min(GROUP);
            let mut rows = Rows {
                starts: [w.data.as_ptr(); GROUP],
                count,
                k,
                warm: if r0 == start { span(r0, r0 + count) } else { &[] },
                ahead: span(r0 + count, (r0 + count + GROUP).min(end)),
            };
            for (r, p) in rows.starts.iter_mut().enumerate().take(count) {
                *p = w.data[w.physical_row(r0 + r) * row_bytes..].as_ptr();
            }
            // SAFETY: each pointer starts a stored row of k elements (the view is valid);
            // x holds m rows of k; the columns r0..r0+count of the m rows of y are inside
            // y and this task's alone; the kernel's unit was checked by the caller.
            unsafe { kernel(&rows, x.as_ptr(), k, out.column(r0), n) };
        }
    });
    true
}

/// A unit's kernel over one group of a [`DecodeLayout`]: `y[i * ldy + r] = x[i * ldx ..] ·
/// row r` for `i < m`, `r < count` (at most 16).
///
/// Safety: `group` starts a group of the layout of a `k`-column weight; `x` holds `m` rows
/// of `k` at stride `ldx`; `y` is writable at `i * ldy + r`; the CPU has the unit.
pub(super) type PackedFn =
    unsafe fn(group: *const u8, count: usize, k: usize, x: *const f32, ldx: usize, y: *mut f32, ldy: usize);

/// A unit's choice of kernel for a layout's format and a number of activation rows.
pub(super) type PickPackedFn = fn(dtype: crate::quant::DType, m: usize) -> Option<PackedFn>;

/// [`matmul_wt`] through `layout` (the weight regrouped): the same bits. False (nothing
/// written) when the unit has no kernel for it. The caller has checked the extents.
pub(super) fn matmul_wt_packed(pick: PickPackedFn, x: &[f32], m: usize, layout: &DecodeLayout, y: &mut [f32]) -> bool {
    if m == 0 || m > MAX_M || layout.rows == 0 || layout.cols == 0 {
        return false;
    }
    let Some(kernel) = pick(layout.dtype, m) else {
        return false;
    };
    let (n, k) = (layout.rows, layout.cols);
    debug_assert!(x.len() >= m * k && y.len() >= m * n);
    let group_bytes = layout.group_bytes();
    let bytes = layout.bytes();
    let out = YOut(y.as_mut_ptr());
    // One item per group: rayon hands each thread a contiguous run of groups (so the
    // kernel's prefetching runs on into the next group) and re-splits a run only when
    // another thread is idle, which balances the small projections (192 or 576 rows are 3
    // or 9 tasks of 64 rows, a third or a ninth of the work left to one of two threads).
    (0..n.div_ceil(GROUP_ROWS)).into_par_iter().for_each(|g| {
        let group = &bytes[g * group_bytes..(g + 1) * group_bytes];
        let count = (n - g * GROUP_ROWS).min(GROUP_ROWS);
        // SAFETY: `group` is group g of the layout of this [n, k] weight; x holds m rows
        // of k; the columns of rows 16g..16g + count of y are inside y and this item's
        // alone; the kernel's unit was checked by the caller.
        unsafe { kernel(group.as_ptr(), count, k, x.as_ptr(), k, out.column(g * GROUP_ROWS), n) };
    });
    true
}
