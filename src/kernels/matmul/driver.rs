//! Blocking and threading of `C[m, n] (+)= A[m, k] · B[k, n]`.
//!
//! A is packed once per call into panels of `mr` rows; the output is cut into tiles of
//! `mb x nb` whose sizes depend only on the shape; each tile is one rayon task that packs
//! (dequantizes) its `kc x nb` slices of B and runs the microkernel over them. Each output
//! element's reduction over k runs inside one task, in ascending order, so neither the
//! tiling nor the scheduling changes a bit of the result. The reduction runs as fixed
//! chunks of `CHAIN` steps whose partial sums are added to the output, which bounds the
//! rounding error of long reductions. Only a reduction longer than
//! `KO` (the backward through a vocabulary-sized weight) is cut into passes, which run one
//! after another, each continuing from the sums the previous one stored: same order, and
//! the packed copy of A stays bounded.

use super::decode_layout::DecodeLayout;
use crate::quant::DType;
use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;

/// A register-blocked microkernel computing tiles of up to `mr x nr`.
#[derive(Clone, Copy)]
pub(super) struct Kernel {
    pub mr: usize,
    pub nr: usize,
    /// `tiles[r - 1]` computes the first `r` rows of a tile: the chain
    /// `s = 0 (+ a[p*mr + i] * b[p*nr + j])` over `p = 0..kc` in order, each step a fused
    /// multiply-add, then `c[i*ldc + j] = add ? c[i*ldc + j] + s : s`, for `i < r`,
    /// `j < nr`. Short blocks of rows (one token) then cost what they compute.
    ///
    /// Safety: `a` is readable for `kc*mr`, `b` for `kc*nr` elements; rows `i < r` of `c`
    /// are readable and writable for `nr` elements from `c + i*ldc`; the CPU has the unit.
    pub tiles: &'static [TileFn],
    /// Packs `B[p][j] = src[j * ld + p]` (`rows <= nr` rows of `kc`) into
    /// `dst[p * nr + j]`, leaving `j >= rows` untouched.
    ///
    /// Safety: the CPU has the unit (extents are checked).
    pub transpose: TransposeFn,
    /// `crate::quant::dequantize_row_unchecked`, the same bits, faster where it can be.
    ///
    /// Safety: the CPU has the unit.
    pub dequant: DequantFn,
    /// Expands and transposes a group of weight rows in one pass:
    /// `dst[p * nr + r] = element p of rows[r]`, where `rows[r]` holds the stored bytes of
    /// `kc` elements; rows past `rows.len()` untouched. Returns false, having written
    /// nothing, when it has no fast path for the format or the shape.
    ///
    /// Safety: the CPU has the unit (extents are checked).
    pub dequant_t: DequantTFn,
    /// Set for kernels whose panels hold pairs of reduction steps (bf16 products): turns a
    /// packed f32 panel of `steps` rows of `width` into `steps.div_ceil(2)` rows of pairs
    /// in place, row `q`'s lane `c` holding steps `2q` (low half) and `2q + 1` (high half)
    /// rounded to bf16, a missing last step as zero. The tiles then read `kc.div_ceil(2)`
    /// rows of pairs for `kc` steps.
    ///
    /// Safety: the CPU has the unit.
    pub pairs: Option<PairsFn>,
    /// Expands weight rows `j..j + rows` (`j` a multiple of 16) over reduction steps
    /// `p0..p1` from the weight's [`DecodeLayout`] into a panel like
    /// [`Self::dequant_t`]'s (`dst[(p - p0) * nr + r]`): the same values, read as whole
    /// vectors. Returns false, having written nothing, when the steps are not whole blocks
    /// of the layout.
    ///
    /// Safety: the CPU has the unit (extents are checked).
    pub dequant_packed: Option<DequantPackedFn>,
}

pub(super) type DequantPackedFn =
    unsafe fn(layout: &DecodeLayout, j: usize, rows: usize, p0: usize, p1: usize, nr: usize, dst: &mut [f32]) -> bool;

pub(super) type PairsFn = unsafe fn(panel: &mut [f32], width: usize, steps: usize);

pub(super) type TileFn = unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool);

pub(super) type TransposeFn = unsafe fn(src: &[f32], ld: usize, rows: usize, kc: usize, nr: usize, dst: &mut [f32]);

pub(super) type DequantFn = unsafe fn(dtype: DType, src: &[u8], dst: &mut [f32]);

pub(super) type DequantTFn = unsafe fn(dtype: DType, rows: &[&[u8]], kc: usize, nr: usize, dst: &mut [f32]) -> bool;

/// The left operand: row `i`, reduction index `p`.
pub(super) trait ASource: Sync {
    /// Packs rows `i0..i1` and reduction indices `p0..p1` into panels of `mr` rows:
    /// `dst[panel][p - p0][r]`, rows past `i1` zero.
    fn pack(&self, kern: &Kernel, i0: usize, i1: usize, p0: usize, p1: usize, dst: &mut [f32]);
}

/// The right operand: reduction index `p`, column `j`.
pub(super) trait BSource: Sync {
    /// Reduction chunks start at multiples of this (quantized blocks along p).
    fn p_align(&self) -> usize {
        1
    }
    /// Column tiles start at multiples of this (quantized blocks along j).
    fn j_align(&self) -> usize {
        1
    }
    /// Packs `ps x js` (`p0..p1 x j0..j1`) into groups of `nr` columns:
    /// `dst[group][p - p0][c]`, columns past `j1` zero. `scratch` is the task's to resize
    /// and reuse.
    fn pack(&self, kern: &Kernel, ps: Range<usize>, js: Range<usize>, dst: &mut [f32], scratch: &mut Vec<f32>);
    /// Asks for the stored bytes a later [`Self::pack`] of `ps x js` will read (a hint:
    /// no effect on the values). The tasks spread it over the tiles of the chunk before.
    fn prefetch(&self, _ps: Range<usize>, _js: Range<usize>) {}
    /// Whether tasks should take up to [`NB_WIDE`] columns: a pack that reads a short
    /// slice of each of the chunk's stored rows shares the cache lines at its ends with
    /// the neighbouring tasks' slices, which by their turn have left the cache when the
    /// weight is larger than it; and each task reads its chunk of A once more.
    fn wide_tasks(&self) -> bool {
        false
    }
}

/// Reduction chunk per B pack: a `KC x nr` micro-panel of B stays in L1.
const KC: usize = 256;
/// Reduction chunk per A pack: bounds the packed copy of A to `m x KO` floats (3 MiB for
/// 768 rows; the chunks add into C at `KC` boundaries, where the tasks already do).
const KO: usize = 1024;
/// Target columns per task: one register-tile width of the widest kernel, so that with
/// few rows every weight row is still expanded once, yet a model's 576 columns make 18
/// tasks.
const NB: usize = 32;
/// Target columns per task for a source that asks for [`BSource::wide_tasks`], when the
/// columns still make three tasks per thread. Measured on dY·W through the vocabulary
/// weight (Q8_0, 49152 x 576, 64 to 200 rows): 10-25% faster than 32 columns on one
/// thread, 5-10% on two; the model's own projections, at 512 rows, within 2%.
const NB_WIDE: usize = 96;
/// Rows per task: at least this many to amortize a task's dequantization of B, ...
const MB_MIN: usize = 128;
/// ... at most this many so its packed A slice stays in L2.
const MB_MAX: usize = 512;
/// Tasks wanted for load balance before rows are split.
const TASKS: usize = 16;
/// Largest `mr * nr` of any kernel (edge tiles go through a stack buffer).
const TILE_MAX: usize = 1024;
/// Widest `nr` of any kernel.
pub(super) const MAX_NR: usize = 64;

/// Tile sizes. The reduction's chunks (`kc`, `ko`) are a function of the shape and the
/// kernel only, which keeps every output's sums the same for any thread count; the task
/// extents (`mb`, `nb`) may follow the thread count, which decides only who computes what.
struct Plan {
    kc: usize,
    ko: usize,
    mb: usize,
    nb: usize,
    m_tiles: usize,
    n_tiles: usize,
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}

fn plan(kern: &Kernel, m: usize, n: usize, k: usize, b: &dyn BSource) -> Plan {
    let kc = KC.next_multiple_of(b.p_align()).min(k.max(1));
    let ko = (KO / kc).max(1) * kc;
    let unit = lcm(kern.nr, b.j_align());
    let target = if b.wide_tasks() {
        (n / (3 * rayon::current_num_threads())).clamp(NB, NB_WIDE)
    } else {
        NB
    };
    let nb = target.div_ceil(unit).max(1) * unit;
    let n_tiles = n.div_ceil(nb);
    let m_panels = m.div_ceil(kern.mr);
    let splits = TASKS
        .div_ceil(n_tiles)
        .min(m / MB_MIN)
        .max(m.div_ceil(MB_MAX))
        .clamp(1, m_panels.max(1));
    let mb = m_panels.div_ceil(splits) * kern.mr;
    Plan {
        kc,
        ko,
        mb,
        nb,
        m_tiles: m.div_ceil(mb),
        n_tiles,
    }
}

thread_local! {
    static A_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static B_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static TAIL_A_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static TAIL_B_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's buffer `key` grown to `len`. A nested use on the same thread
/// (rayon may run another task while this one waits) finds it taken and allocates.
fn with_buf<R>(key: &'static std::thread::LocalKey<Cell<Vec<f32>>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    // Packed panels start on a cache line: the transposes store whole lines.
    const ALIGN: usize = 64 / size_of::<f32>();
    let mut buf = key.take();
    if buf.len() < len + ALIGN {
        // Exactly: a doubled capacity would stay with the thread for good.
        buf.reserve_exact(len + ALIGN - buf.len());
        buf.resize(len + ALIGN, 0.0);
    }
    let skip = buf.as_ptr().align_offset(64).min(ALIGN);
    let r = f(&mut buf[skip..skip + len]);
    key.set(buf);
    r
}

/// The output matrix shared by the tasks, each writing its own disjoint tile.
#[derive(Clone, Copy)]
pub(super) struct COut {
    pub ptr: *mut f32,
    pub ldc: usize,
}
// SAFETY: tasks write disjoint tiles of the matrix; the borrow it came from outlives them.
unsafe impl Send for COut {}
unsafe impl Sync for COut {}

impl COut {
    /// Element `at` of the output (a method: a closure that calls it captures the whole
    /// `COut`, which is `Sync`, rather than its pointer alone).
    pub(super) fn at(self, at: usize) -> *mut f32 {
        self.ptr.wrapping_add(at)
    }
}

/// The extents `[m, n]` of a product's output and its reduction length `k`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// The output `C` of a product: row-major, rows `ldc` apart, overwritten or added to.
pub(super) struct Output<'a> {
    pub c: &'a mut [f32],
    pub ldc: usize,
    pub accumulate: bool,
}

/// A short second product added to the output of the first, `C += A2[m, k] · B2[k, n]`
/// with `k <= KC` (a LoRA branch's rank): the bits of a separate [`run`] that adds into
/// the first one's output, applied to each tile while it is still in cache. Separately,
/// that product reads and writes the whole output again for a handful of multiply-adds
/// per element, and ran at a tenth of the machine's peak.
#[derive(Clone, Copy)]
pub(super) struct Tail<'a> {
    pub a: &'a dyn ASource,
    pub b: &'a dyn BSource,
    pub k: usize,
}

impl Tail<'_> {
    /// Whether `kern` can apply it within a product (else the caller runs it separately).
    pub(super) fn fits(&self, kern: &Kernel) -> bool {
        self.k <= KC && kern.pairs.is_none() && self.b.p_align() == 1 && self.b.j_align() == 1
    }
}

/// `C[m, n] (+)= A[m, k] · B[k, n]`.
///
/// The caller has checked that `a` and `b` cover the shape; this checks `c`.
pub(super) fn run(kern: Kernel, dims: Dims, a: &dyn ASource, b: &dyn BSource, out: Output) {
    run_tail(kern, dims, a, b, out, None);
}

/// [`run`], then `tail` (whose operands cover `[m, tail.k]` and `[tail.k, n]`, and which
/// [`Tail::fits`] the kernel) added to the output, the bits of two separate runs.
pub(super) fn run_tail(kern: Kernel, dims: Dims, a: &dyn ASource, b: &dyn BSource, out: Output, tail: Option<Tail>) {
    let Dims { m, n, k } = dims;
    let Output { c, ldc, accumulate } = out;
    // A product over nothing adds nothing.
    let tail = tail.filter(|t| t.k > 0);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n
            && (m - 1)
                .checked_mul(ldc)
                .and_then(|x| x.checked_add(n))
                .is_some_and(|x| x <= c.len()),
        "output of {m}x{n} with leading dimension {ldc} does not fit {} elements",
        c.len()
    );
    assert!(kern.mr * kern.nr <= TILE_MAX && kern.nr <= MAX_NR && kern.tiles.len() == kern.mr);
    if let Some(t) = tail {
        assert!(t.fits(&kern), "a tail the kernel cannot apply");
    }
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        if let Some(t) = tail {
            run(
                kern,
                Dims { m, n, k: t.k },
                t.a,
                t.b,
                Output {
                    c,
                    ldc,
                    accumulate: true,
                },
            );
        }
        return;
    }
    let plan = plan(&kern, m, n, k, b);
    let m_panels = m.div_ceil(kern.mr);
    let out = COut {
        ptr: c.as_mut_ptr(),
        ldc,
    };
    let tail_k = tail.map_or(0, |t| t.k);
    with_buf(&TAIL_A_BUF, m_panels * kern.mr * tail_k, |tp| {
        if let Some(t) = tail {
            for (q, dst) in tp.chunks_mut(kern.mr * t.k).enumerate() {
                let i0 = q * kern.mr;
                t.a.pack(&kern, i0, (i0 + kern.mr).min(m), 0, t.k, dst);
            }
        }
        let tp = &*tp;
        with_buf(&A_BUF, m_panels * kern.mr * plan.ko.min(k), |ap| {
            for po in (0..k).step_by(plan.ko) {
                let pe = (po + plan.ko).min(k);
                let panel = kern.mr * (pe - po);
                let ap = &mut ap[..m_panels * panel];
                ap.par_chunks_mut(panel).enumerate().for_each(|(q, dst)| {
                    let i0 = q * kern.mr;
                    a.pack(&kern, i0, (i0 + kern.mr).min(m), po, pe, dst);
                    if let Some(pairs) = kern.pairs {
                        // SAFETY: the kernel's unit was checked by its caller.
                        unsafe { pairs(dst, kern.mr, pe - po) };
                    }
                });
                let ap = &*ap;
                // The tail goes with the last pass, after each tile's whole reduction.
                let tail = tail.filter(|_| pe == k).map(|t| TailPacked { a: tp, b: t.b, k: t.k });
                (0..plan.m_tiles * plan.n_tiles).into_par_iter().for_each(|t| {
                    let (mt, nt) = (t % plan.m_tiles, t / plan.m_tiles);
                    let block = Block {
                        rows: mt * plan.mb..((mt + 1) * plan.mb).min(m),
                        cols: nt * plan.nb..((nt + 1) * plan.nb).min(n),
                        ps: po..pe,
                    };
                    task(&kern, &plan, block, ap, b, out, accumulate || po > 0, tail);
                });
            }
        });
    });
}

/// A [`Tail`] with its left operand packed into panels of `mr` rows of `k`.
#[derive(Clone, Copy)]
struct TailPacked<'a> {
    a: &'a [f32],
    b: &'a dyn BSource,
    k: usize,
}

/// One task's share of a product: output rows and columns, over the reduction range `ps`.
struct Block {
    rows: Range<usize>,
    cols: Range<usize>,
    ps: Range<usize>,
}

/// One output block; `load` when it already holds a partial sum (or the caller's values
/// to add to); `tail` added to each tile after its last chunk.
#[allow(clippy::too_many_arguments)]
fn task(
    kern: &Kernel,
    plan: &Plan,
    block: Block,
    ap: &[f32],
    b: &dyn BSource,
    out: COut,
    load: bool,
    tail: Option<TailPacked>,
) {
    let Block { rows, cols, ps } = block;
    let (mr, nr) = (kern.mr, kern.nr);
    let groups = cols.len().div_ceil(nr);
    let a_panel = mr * ps.len();
    let tail_k = tail.map_or(0, |t| t.k);
    with_buf(&TAIL_B_BUF, groups * nr * tail_k, |tb| {
        with_buf(&B_BUF, groups * nr * plan.kc, |bp| {
            let mut scratch = SCRATCH.take();
            if let Some(t) = tail {
                t.b.pack(kern, 0..t.k, cols.clone(), tb, &mut scratch);
            }
            let tb = &*tb;
            for p0 in ps.clone().step_by(plan.kc) {
                let p1 = (p0 + plan.kc).min(ps.end);
                let kc = p1 - p0;
                let bp = &mut bp[..groups * nr * kc];
                b.pack(kern, p0..p1, cols.clone(), bp, &mut scratch);
                if let Some(pairs) = kern.pairs {
                    for bg in bp.chunks_exact_mut(nr * kc) {
                        // SAFETY: the kernel's unit was checked by its caller.
                        unsafe { pairs(bg, nr, kc) };
                    }
                }
                let load = load || p0 > ps.start;
                let tail = tail.filter(|_| p1 == ps.end);
                // The next chunk's rows of B, asked for a few at a time between the tiles of
                // this one, arrive while it computes.
                let next = p1..(p1 + plan.kc).min(ps.end);
                let tiles = groups * rows.len().div_ceil(mr);
                let per_tile = next.len().div_ceil(tiles);
                let mut ahead = next.start;
                for g in 0..groups {
                    let j = cols.start + g * nr;
                    let nrv = nr.min(cols.end - j);
                    let bg = &bp[g * nr * kc..(g + 1) * nr * kc];
                    for i in rows.clone().step_by(mr) {
                        if ahead < next.end {
                            let till = (ahead + per_tile).min(next.end);
                            b.prefetch(ahead..till, cols.clone());
                            ahead = till;
                        }
                        let mrv = mr.min(rows.end - i);
                        let off = (i / mr) * a_panel + slots(kern, p0 - ps.start) * mr;
                        let ag = &ap[off..off + mr * slots(kern, kc)];
                        // SAFETY: `ag` and `bg` hold kc*mr and kc*nr elements; the tile
                        // (i..i+mrv, j..j+nrv) lies inside the output checked in `run` and
                        // belongs to this task alone; the kernel's unit was checked by `Isa`.
                        // The tail's panels: rows i.. of its packed A, group g of its packed B.
                        let tail = tail.map(|t| {
                            let panel = mr * t.k;
                            let ta = &t.a[(i / mr) * panel..(i / mr + 1) * panel];
                            let tbg = &tb[g * nr * t.k..(g + 1) * nr * t.k];
                            (t.k, ta.as_ptr(), tbg.as_ptr())
                        });
                        unsafe {
                            let c = out.ptr.add(i * out.ldc + j);
                            let (ag, bg) = (ag.as_ptr(), bg.as_ptr());
                            if nrv == nr {
                                let c = COut { ptr: c, ldc: out.ldc };
                                chain(kern, mrv, kc, ag, bg, c, load);
                                if let Some((tk, ta, tbg)) = tail {
                                    chain(kern, mrv, tk, ta, tbg, c, true);
                                }
                            } else {
                                let mut t = [0.0f32; TILE_MAX];
                                if load {
                                    for r in 0..mrv {
                                        std::ptr::copy_nonoverlapping(
                                            c.add(r * out.ldc),
                                            t.as_mut_ptr().add(r * nr),
                                            nrv,
                                        );
                                    }
                                }
                                let tc = COut {
                                    ptr: t.as_mut_ptr(),
                                    ldc: nr,
                                };
                                chain(kern, mrv, kc, ag, bg, tc, load);
                                if let Some((tk, ta, tbg)) = tail {
                                    chain(kern, mrv, tk, ta, tbg, tc, true);
                                }
                                for r in 0..mrv {
                                    std::ptr::copy_nonoverlapping(t.as_ptr().add(r * nr), c.add(r * out.ldc), nrv);
                                }
                            }
                        }
                    }
                }
            }
            SCRATCH.set(scratch);
        });
    });
}

/// Reduction steps one fused-multiply-add chain runs before its sum is added to the output.
/// Restarting the chain from zero keeps each partial sum small, so the rounding error of a
/// long reduction (the vocabulary projection's logits reach ~20 from 576 terms of ~0.5)
/// grows with the number of chunks rather than the number of terms. The chunking depends
/// only on the reduction length, so results stay independent of threads.
pub(super) const CHAIN: usize = 64;

/// `c (+)= a · b` over `kc` reduction steps, as chains of at most [`CHAIN`] steps each
/// computed from zero and then added to the first `rows` rows of `c`.
///
/// Safety: as [`Kernel::tiles`]`[rows - 1]` for `kc` steps.
unsafe fn chain(kern: &Kernel, rows: usize, kc: usize, a: *const f32, b: *const f32, c: COut, load: bool) {
    let (tile, mr, nr) = (kern.tiles[rows - 1], kern.mr, kern.nr);
    let (c, ldc) = (c.ptr, c.ldc);
    let mut s0 = 0;
    while s0 < kc {
        let sk = CHAIN.min(kc - s0);
        // SAFETY: s0 + sk <= kc keeps both panels in bounds; `c` is the caller's tile.
        // The tile adds its chain to `c` in registers when `c` already holds a sum.
        unsafe {
            tile(
                sk,
                a.add(slots(kern, s0) * mr),
                b.add(slots(kern, s0) * nr),
                c,
                ldc,
                s0 > 0 || load,
            )
        };
        s0 += sk;
    }
}

/// Rows of a packed panel that hold `steps` reduction steps (pairs of them for kernels
/// with [`Kernel::pairs`]; every offset passed to `slots` is even).
fn slots(kern: &Kernel, steps: usize) -> usize {
    if kern.pairs.is_some() { steps.div_ceil(2) } else { steps }
}

/// Portable [`Kernel::dequant`].
pub(super) unsafe fn dequant_generic(dtype: DType, src: &[u8], dst: &mut [f32]) {
    crate::quant::dequantize_row_unchecked(dtype, src, dst);
}

/// [`Kernel::dequant_t`] for units without a fused path.
pub(super) unsafe fn dequant_t_none(_dtype: DType, _rows: &[&[u8]], _kc: usize, _nr: usize, _dst: &mut [f32]) -> bool {
    false
}

/// Portable [`Kernel::transpose`].
pub(super) unsafe fn transpose_generic(src: &[f32], ld: usize, rows: usize, kc: usize, nr: usize, dst: &mut [f32]) {
    for (r, row) in src.chunks(ld).take(rows).enumerate() {
        for (p, &v) in row[..kc].iter().enumerate() {
            dst[p * nr + r] = v;
        }
    }
}
