//! Matrix products over memory-mapped weights of any [`crate::quant::DType`].
//!
//! Forward: `y = x · Wᵀ` ([`matmul_wt`]); backward through a frozen weight:
//! `dx += dy · W` ([`matmul_w_acc`]); and a plain f32 [`gemm`] over [`Mat`] views for LoRA.
//!
//! Every output element is one chain of fused multiply-adds over the reduction index in
//! ascending order, started from zero (or from the old value when accumulating). Tiling,
//! threading and the instruction set only decide which chains run where, never the order
//! inside one, so results are bit-identical whatever the thread count, the tile sizes, the
//! batch size `m`, or the SIMD unit (AVX-512, AVX2+FMA, NEON or the scalar fallback).
//! Batch invariance matters to the engine: a token's logits do not depend on which other
//! tokens share its forward pass, so the reference model of DPO equals the policy at step 0
//! exactly, and a KV-cache step equals the full forward.
//!
//! The driver (`driver`) packs the activation operand once per call, dequantizes a panel
//! of weight rows into an f32 scratch once per task, and runs a register-blocked microkernel
//! over it (`scalar`, `x86`, `aarch64`). A forward product of a few rows (decoding) skips
//! the panel where the unit has a kernel that expands weights into registers (`gemv`).
//! A [`gemm`] with a thin side (a LoRA rank) reads its wide operand in place (`thin`).

use crate::error::{Error, Result};
use crate::isa::Isa;
use crate::quant::DType;

mod decode_layout;
mod driver;
mod gemv;
mod pack;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2_expand;
#[cfg(target_arch = "x86_64")]
mod avx2_packed;
#[cfg(target_arch = "x86_64")]
mod thin;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_bf16;
#[cfg(target_arch = "x86_64")]
mod x86_gemv;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
mod aarch64;
#[cfg(target_arch = "aarch64")]
mod aarch64_gemv;

pub use decode_layout::DecodeLayout;
use driver::{DequantFn, Dims, Kernel, Output, Tail};
use pack::{StridedA, StridedB, WeightN, WeightT};

/// Logical row order of a weight: GGUF llama files store Q/K rows permuted for interleaved
/// rope; `RopeUnpermute { head_dim }` makes logical (HF-order) row `r` read physical row
/// `head*hd + (if i < hd/2 { 2*i } else { 2*(i - hd/2) + 1 })` where `head = r / hd`,
/// `i = r % hd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOrder {
    Stored,
    RopeUnpermute { head_dim: usize },
}

/// The arithmetic of a frozen weight's products ([`matmul_wt`], [`matmul_w_acc`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 fused multiply-adds in a fixed order: the same bits on every unit, thread count
    /// and batch size (the default).
    #[default]
    F32,
    /// Both operands rounded to bf16 (8 significant bits), their products summed in f32
    /// (AVX512-BF16's `vdpbf16ps`): about twice the multiply-adds per instruction. Only
    /// products of more than a few rows change: decoding steps (at most 16 rows) keep the
    /// f32 kernels, which read the weights once whatever the arithmetic. Results stay
    /// independent of the thread count.
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this CPU runs it: an error naming what is missing otherwise.
    pub fn check(self) -> Result<()> {
        match self {
            Precision::F32 => Ok(()),
            Precision::Bf16 if bf16_kernel().is_some() => Ok(()),
            Precision::Bf16 => Err(Error::invalid(
                "precision bf16 needs bf16 dot products (x86-64 AVX512-BF16), which this CPU lacks (or NUDGE_NO_SIMD turned off): use f32"
                    .to_string(),
            )),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::invalid(format!("precision {s:?}: expected f32 or bf16"))),
        }
    }
}

/// The bf16 kernel, where the CPU has one.
fn bf16_kernel() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    if x86_bf16::is_supported() {
        return Some(with_decode_copy(x86_bf16::BF16));
    }
    None
}

/// A frozen weight matrix `[rows, cols]` (`rows` = outputs `n`, `cols` = inputs `k`),
/// row-major in its stored format, and the arithmetic of its products.
#[derive(Clone, Copy)]
pub struct WeightRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    pub order: RowOrder,
    pub precision: Precision,
    /// The same weight regrouped for decoding, when the model made it
    /// (`Model::prepare_decoding`): products of a few rows read it instead of `data`.
    pub decode: Option<&'a DecodeLayout>,
}

impl std::fmt::Debug for WeightRef<'_> {
    // The bytes are megabytes of a memory map: show their size, not their contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightRef")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.data.len())
            .field("order", &self.order)
            .field("precision", &self.precision)
            .field("decode", &self.decode.is_some())
            .finish()
    }
}

impl<'a> WeightRef<'a> {
    /// A weight view whose byte size and row order are checked against its shape.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8], order: RowOrder) -> Result<Self> {
        let w = WeightRef {
            dtype,
            rows,
            cols,
            data,
            order,
            precision: Precision::F32,
            decode: None,
        };
        w.validate()?;
        Ok(w)
    }

    /// The same weight, its products run in `precision` (checked against this CPU).
    pub fn with_precision(self, precision: Precision) -> Result<Self> {
        precision.check()?;
        Ok(WeightRef { precision, ..self })
    }

    /// Checks the invariants the kernels rely on (the fields are public, so every kernel
    /// entry checks them again).
    pub fn validate(&self) -> Result<()> {
        match self.dtype.tensor_bytes(self.rows, self.cols) {
            Some(n) if n == self.data.len() => {}
            Some(n) => {
                return Err(Error::invalid(format!(
                    "weight [{}, {}] {}: {} bytes, expected {n}",
                    self.rows,
                    self.cols,
                    self.dtype,
                    self.data.len()
                )));
            }
            None => {
                return Err(Error::invalid(format!(
                    "weight [{}, {}] {}: {} columns are not whole blocks of {}",
                    self.rows,
                    self.cols,
                    self.dtype,
                    self.cols,
                    self.dtype.block_len()
                )));
            }
        }
        if let RowOrder::RopeUnpermute { head_dim } = self.order
            && (head_dim == 0 || head_dim % 2 != 0 || !self.rows.is_multiple_of(head_dim))
        {
            return Err(Error::invalid(format!(
                "weight [{}, {}]: rope head_dim {head_dim} must be even and divide the rows",
                self.rows, self.cols
            )));
        }
        self.precision.check()
    }

    fn check(&self) {
        if let Err(e) = self.validate() {
            panic!("matmul: {e}");
        }
    }

    /// The stored row that holds logical row `r`.
    #[inline]
    pub fn physical_row(&self, r: usize) -> usize {
        match self.order {
            RowOrder::Stored => r,
            RowOrder::RopeUnpermute { head_dim } => {
                let (head, i) = (r / head_dim, r % head_dim);
                let half = head_dim / 2;
                head * head_dim + if i < half { 2 * i } else { 2 * (i - half) + 1 }
            }
        }
    }

    /// Expands logical row `r` into `out` (`cols` elements).
    ///
    /// # Panics
    /// When the view is invalid, `r >= rows` or `out.len() != cols`.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        self.check();
        assert!(r < self.rows, "row {r} of a weight with {} rows", self.rows);
        assert_eq!(out.len(), self.cols, "row buffer length");
        self.row_range(driver::dequant_generic, r, 0, self.cols, out);
    }

    /// The stored bytes of columns `c0..c1` (block-aligned) of logical row `r`; the view
    /// is valid.
    #[inline]
    fn row_bytes_range(&self, r: usize, c0: usize, c1: usize) -> &'a [u8] {
        let (bl, bb) = (self.dtype.block_len(), self.dtype.block_bytes());
        debug_assert!(c0.is_multiple_of(bl) && c1.is_multiple_of(bl) && c1 <= self.cols);
        let row_bytes = self.cols / bl * bb;
        let start = self.physical_row(r) * row_bytes;
        &self.data[start + c0 / bl * bb..start + c1 / bl * bb]
    }

    /// Expands columns `c0..c1` (block-aligned) of logical row `r`; the view is valid.
    #[inline]
    fn row_range(&self, dequant: DequantFn, r: usize, c0: usize, c1: usize, out: &mut [f32]) {
        let src = self.row_bytes_range(r, c0, c1);
        // SAFETY: `dequant` comes from a kernel whose unit was checked, or is portable.
        unsafe { dequant(self.dtype, src, &mut out[..c1 - c0]) };
    }
}

/// The microkernel of a unit (all give bit-identical results).
fn kernel(isa: Isa) -> Kernel {
    assert!(isa.is_supported(), "{isa:?} is not supported by this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernel {
            dequant: avx2_expand::dequant_avx2,
            dequant_t: avx2_expand::dequant_t_avx2,
            dequant_packed: Some(avx2_packed::dequant_packed),
            ..x86::AVX2
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => with_decode_copy(x86::AVX512),
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        Isa::Neon => aarch64::NEON,
        _ => scalar::SCALAR,
    }
}

/// An AVX-512 kernel that also expands its panels from a [`DecodeLayout`] (the decoding
/// kernels' module has that code; the microkernels' module does not depend on it).
#[cfg(target_arch = "x86_64")]
fn with_decode_copy(kern: Kernel) -> Kernel {
    Kernel {
        dequant_packed: Some(x86_gemv::dequant_packed),
        ..kern
    }
}

/// The tiled kernel of a product through `w`: the unit's, or the bf16 kernel. (`w` was
/// checked, its precision with it.)
fn product_kernel(isa: Isa, w: &WeightRef) -> Kernel {
    match w.precision {
        Precision::F32 => kernel(isa),
        Precision::Bf16 => bf16_kernel().expect("a checked weight's precision runs here"),
    }
}

/// The unit's kernels for a few activation rows, if it has them.
fn gemv_kernels(isa: Isa) -> Option<gemv::PickFn> {
    assert!(isa.is_supported(), "{isa:?} is not supported by this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(x86_gemv::group_kernel),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Some(aarch64_gemv::group_kernel),
        _ => None,
    }
}

/// The unit's kernels over a [`DecodeLayout`], if it has them.
fn packed_kernels(isa: Isa) -> Option<gemv::PickPackedFn> {
    assert!(isa.is_supported(), "{isa:?} is not supported by this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(x86_gemv::packed_kernel),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(avx2_packed::packed_kernel),
        _ => None,
    }
}

/// `y[m, n] = x[m, k] · Wᵀ` (overwrites `y`), with `n = w.rows`, `k = w.cols`.
///
/// # Panics
/// When `w` is invalid or a slice is shorter than its shape.
pub fn matmul_wt(
    x: &[f32], // [m, k]
    m: usize,
    w: &WeightRef, // [n, k]
    y: &mut [f32], // [m, n]
) {
    matmul_wt_isa(Isa::best(), x, m, w, y);
}

/// [`matmul_wt`] on a chosen unit (same bits; for tests and benchmarks).
pub fn matmul_wt_isa(
    isa: Isa,
    x: &[f32], // [m, k]
    m: usize,
    w: &WeightRef, // [n, k]
    y: &mut [f32], // [m, n]
) {
    w.check();
    let (n, k) = (w.rows, w.cols);
    assert!(x.len() >= m * k, "x has {} elements, need {m}x{k}", x.len());
    assert!(y.len() >= m * n, "y has {} elements, need {m}x{n}", y.len());
    if m <= gemv::MAX_M
        && let Some(layout) = w.decode
        && layout.fits(w)
        && let Some(pick) = packed_kernels(isa)
        && gemv::matmul_wt_packed(pick, x, m, layout, y)
    {
        return;
    }
    if m <= gemv::MAX_M
        && let Some(pick) = gemv_kernels(isa)
        && gemv::matmul_wt(pick, x, m, w, y)
    {
        return;
    }
    let a = StridedA::new(x, k, 1, 1.0);
    let out = Output {
        c: y,
        ldc: n,
        accumulate: false,
    };
    driver::run(product_kernel(isa, w), Dims { m, n, k }, &a, &WeightT(w), out);
}

/// A low-rank product added to a product through a frozen weight: `alpha · u · v`, with
/// `u: [m, r]` and `v: [r, n]` (each possibly a transposed view), as a LoRA branch adds
/// `scale · (x Aᵀ) Bᵀ` to `x Wᵀ` and `du A` to `dy W`.
#[derive(Clone, Copy, Debug)]
pub struct LowRank<'a> {
    pub alpha: f32,
    pub u: Mat<'a>,
    pub v: Mat<'a>,
}

impl LowRank<'_> {
    /// Checks it against the product's output `[m, n]` and gives its operands and rank.
    fn sources(&self, m: usize, n: usize) -> (StridedA<'_>, StridedB<'_>, usize) {
        let ((um, r), (vr, vn)) = (self.u.op_shape(), self.v.op_shape());
        assert!(
            (um, vr, vn) == (m, r, n),
            "low-rank product [{um}, {r}] · [{vr}, {vn}] added to [{m}, {n}]"
        );
        self.u.check("u");
        self.v.check("v");
        let ((urs, ucs), (vrs, vcs)) = (self.u.op_strides(), self.v.op_strides());
        (
            StridedA::new(self.u.data, urs, ucs, self.alpha),
            StridedB::new(self.v.data, vrs, vcs),
            r,
        )
    }
}

/// `y[m, n] = x[m, k] · Wᵀ + extra`: the bits of [`matmul_wt`] followed by
/// `gemm(extra.alpha, extra.u, extra.v, y, Update::Add)`, with the low-rank product added
/// to each tile of the frozen one while it is in cache where the kernels allow.
///
/// # Panics
/// When `w` is invalid or a shape disagrees.
pub fn matmul_wt_plus(
    x: &[f32], // [m, k]
    m: usize,
    w: &WeightRef, // [n, k]
    extra: LowRank,
    y: &mut [f32], // [m, n]
) {
    matmul_wt_plus_isa(Isa::best(), x, m, w, extra, y);
}

/// [`matmul_wt_plus`] on a chosen unit (same bits; for tests and benchmarks).
pub fn matmul_wt_plus_isa(
    isa: Isa,
    x: &[f32], // [m, k]
    m: usize,
    w: &WeightRef, // [n, k]
    extra: LowRank,
    y: &mut [f32], // [m, n]
) {
    w.check();
    let (n, k) = (w.rows, w.cols);
    let (ta, tb, r) = extra.sources(m, n);
    let kern = product_kernel(isa, w);
    let tail = Tail { a: &ta, b: &tb, k: r };
    // Few rows decode through the matrix-vector kernels, which have no tail.
    if m > gemv::MAX_M && tail.fits(&kern) {
        assert!(x.len() >= m * k, "x has {} elements, need {m}x{k}", x.len());
        assert!(y.len() >= m * n, "y has {} elements, need {m}x{n}", y.len());
        let a = StridedA::new(x, k, 1, 1.0);
        let out = Output {
            c: y,
            ldc: n,
            accumulate: false,
        };
        driver::run_tail(kern, Dims { m, n, k }, &a, &WeightT(w), out, Some(tail));
        return;
    }
    matmul_wt_isa(isa, x, m, w, y);
    gemm_isa(isa, extra.alpha, extra.u, extra.v, MatMut::new(y, m, n), Update::Add);
}

/// `dx[m, k] += dy[m, n] · W + extra`: the bits of [`matmul_w_acc`] followed by
/// `gemm(extra.alpha, extra.u, extra.v, dx, Update::Add)`, fused as in [`matmul_wt_plus`].
///
/// # Panics
/// When `w` is invalid or a shape disagrees.
pub fn matmul_w_acc_plus(
    dy: &[f32], // [m, n]
    m: usize,
    w: &WeightRef, // [n, k]
    extra: LowRank,
    dx: &mut [f32], // [m, k]
) {
    matmul_w_acc_plus_isa(Isa::best(), dy, m, w, extra, dx);
}

/// [`matmul_w_acc_plus`] on a chosen unit (same bits; for tests and benchmarks).
pub fn matmul_w_acc_plus_isa(
    isa: Isa,
    dy: &[f32], // [m, n]
    m: usize,
    w: &WeightRef, // [n, k]
    extra: LowRank,
    dx: &mut [f32], // [m, k]
) {
    w.check();
    let (n, k) = (w.rows, w.cols);
    let (ta, tb, r) = extra.sources(m, k);
    let kern = product_kernel(isa, w);
    let tail = Tail { a: &ta, b: &tb, k: r };
    if tail.fits(&kern) {
        assert!(dy.len() >= m * n, "dy has {} elements, need {m}x{n}", dy.len());
        assert!(dx.len() >= m * k, "dx has {} elements, need {m}x{k}", dx.len());
        let a = StridedA::new(dy, n, 1, 1.0);
        let out = Output {
            c: dx,
            ldc: k,
            accumulate: true,
        };
        driver::run_tail(kern, Dims { m, n: k, k: n }, &a, &WeightN(w), out, Some(tail));
        return;
    }
    matmul_w_acc_isa(isa, dy, m, w, dx);
    gemm_isa(isa, extra.alpha, extra.u, extra.v, MatMut::new(dx, m, k), Update::Add);
}

/// `dx[m, k] += dy[m, n] · W`, with `n = w.rows`, `k = w.cols`.
///
/// # Panics
/// When `w` is invalid or a slice is shorter than its shape.
pub fn matmul_w_acc(
    dy: &[f32], // [m, n]
    m: usize,
    w: &WeightRef,  // [n, k]
    dx: &mut [f32], // [m, k]
) {
    matmul_w_acc_isa(Isa::best(), dy, m, w, dx);
}

/// [`matmul_w_acc`] on a chosen unit (same bits; for tests and benchmarks).
pub fn matmul_w_acc_isa(
    isa: Isa,
    dy: &[f32], // [m, n]
    m: usize,
    w: &WeightRef,  // [n, k]
    dx: &mut [f32], // [m, k]
) {
    w.check();
    let (n, k) = (w.rows, w.cols);
    assert!(dy.len() >= m * n, "dy has {} elements, need {m}x{n}", dy.len());
    assert!(dx.len() >= m * k, "dx has {} elements, need {m}x{k}", dx.len());
    let a = StridedA::new(dy, n, 1, 1.0);
    let out = Output {
        c: dx,
        ldc: k,
        accumulate: true,
    };
    // The reduction runs over the weight's rows: the product is [m, k] over n.
    driver::run(product_kernel(isa, w), Dims { m, n: k, k: n }, &a, &WeightN(w), out);
}

/// A read-only f32 operand of [`gemm`]: stored row-major as `rows x cols` with stored rows
/// `ld` elements apart (`ld >= cols`), used as itself or, when `trans`, as its transpose
/// (`cols x rows`).
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub trans: bool,
}

impl<'a> Mat<'a> {
    /// The dense row-major matrix `data: [rows, cols]`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            ld: cols,
            trans: false,
        }
    }

    /// The same stored matrix, used transposed.
    pub fn t(self) -> Self {
        Mat {
            trans: !self.trans,
            ..self
        }
    }

    /// The same matrix with its stored rows `ld` elements apart.
    pub fn with_ld(self, ld: usize) -> Self {
        Mat { ld, ..self }
    }

    /// Its shape as an operand: `[rows, cols]`, or `[cols, rows]` when transposed.
    fn op_shape(&self) -> (usize, usize) {
        if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// Strides `(rs, cs)` of the operand: element `[i][p]` is `data[i * rs + p * cs]`.
    fn op_strides(&self) -> (usize, usize) {
        if self.trans { (1, self.ld) } else { (self.ld, 1) }
    }

    /// Asserts that the leading dimension covers a stored row and that every element lies
    /// inside `data`.
    fn check(&self, name: &str) {
        let Mat {
            data, rows, cols, ld, ..
        } = *self;
        assert!(
            ld >= cols,
            "gemm: leading dimension of {name} is {ld}, below its {cols} stored columns"
        );
        if rows == 0 || cols == 0 {
            return;
        }
        let last = (rows - 1).checked_mul(ld).and_then(|r| r.checked_add(cols - 1));
        assert!(
            matches!(last, Some(l) if l < data.len()),
            "gemm: {name} has {} elements, too few for {rows}x{cols} with leading dimension {ld}",
            data.len()
        );
    }
}

/// The output of [`gemm`]: `data: [rows, ld]` row-major, of which the first `cols` columns
/// are written (the rest stay untouched).
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl<'a> MatMut<'a> {
    /// The dense row-major matrix `data: [rows, cols]`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            ld: cols,
        }
    }

    /// The same matrix with its rows `ld` elements apart.
    pub fn with_ld(self, ld: usize) -> Self {
        MatMut { ld, ..self }
    }
}

/// Whether [`gemm`] overwrites its output or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// `C = alpha · A · B`
    Overwrite,
    /// `C += alpha · A · B`
    Add,
}

/// Plain f32 row-major GEMM: `c (+)= alpha · a · b` with `a: [m, k]`, `b: [k, n]` and
/// `c: [m, n]` (each `a`, `b` possibly a transposed view). `alpha` scales `a` before the
/// products.
///
/// # Panics
/// When the shapes disagree, a leading dimension is too small or a slice is shorter than
/// its shape.
pub fn gemm(alpha: f32, a: Mat, b: Mat, c: MatMut, update: Update) {
    gemm_isa(Isa::best(), alpha, a, b, c, update);
}

/// `c (+)= a · (alpha · b)`: [`gemm`] with `alpha` scaling `b`'s elements instead of `a`'s.
/// Each output is the same fused multiply-add chain whichever operand is on the left, so
/// this gives the bits of `gemm(alpha, bᵀ, aᵀ)` stored transposed: a product with a
/// handful of output columns runs as its transpose, whose handful of rows fill the
/// kernel's tiles.
///
/// # Panics
/// As [`gemm`].
pub fn gemm_scaled_b(a: Mat, alpha: f32, b: Mat, c: MatMut, update: Update) {
    gemm_scaled_b_isa(Isa::best(), a, alpha, b, c, update);
}

/// [`gemm_scaled_b`] on a chosen unit (same bits; for tests and benchmarks).
pub fn gemm_scaled_b_isa(isa: Isa, a: Mat, alpha: f32, b: Mat, c: MatMut, update: Update) {
    gemm_both(isa, (1.0, a), (alpha, b), c, update);
}

/// [`gemm`] on a chosen unit (same bits; for tests and benchmarks).
pub fn gemm_isa(isa: Isa, alpha: f32, a: Mat, b: Mat, c: MatMut, update: Update) {
    gemm_both(isa, (alpha, a), (1.0, b), c, update);
}

/// `c (+)= (alpha_a · a) · (alpha_b · b)`.
fn gemm_both(isa: Isa, (alpha, a): (f32, Mat), (beta, b): (f32, Mat), c: MatMut, update: Update) {
    let ((m, k), (kb, n)) = (a.op_shape(), b.op_shape());
    assert!(
        k == kb && (c.rows, c.cols) == (m, n),
        "gemm: shapes [{m}, {k}] · [{kb}, {n}] into [{}, {}]",
        c.rows,
        c.cols
    );
    a.check("A");
    b.check("B");
    let ldc = c.ld;
    Mat::new(c.data, c.rows, c.cols).with_ld(ldc).check("C");
    let accumulate = update == Update::Add;
    let (ars, acs) = a.op_strides();
    let (brs, bcs) = b.op_strides();
    if m > 0 && n > 0 && k > 0 {
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx2 | Isa::Avx512) {
            // A as `[i][p]`, B as `[j][p]`: whichever is thin is packed, and a wide one
            // stored row-major is read in place (see `thin`).
            let at = thin::View {
                data: a.data,
                rs: ars,
                cs: acs,
                scale: alpha,
            };
            let bt = thin::View {
                data: b.data,
                rs: bcs,
                cs: brs,
                scale: beta,
            };
            // SAFETY: the unit has AVX2 and FMA (both checked by `Isa`); the extents were
            // checked above.
            if unsafe { thin::run(at, bt, (m, n, k), c.data, ldc, accumulate) } {
                return;
            }
        }
        if n <= THIN.min(m / 2) {
            // A few output columns fill a fraction of a tile: the product runs as its
            // transpose, Cᵀ = Bᵀ Aᵀ, whose few rows fill them (the same chains, so the
            // same bits), through a transposed copy of C.
            let mut ct = vec![0f32; n * m];
            if accumulate {
                transpose(c.data, ldc, m, n, &mut ct);
            }
            let at = Mat { trans: !b.trans, ..b };
            let bt = Mat { trans: !a.trans, ..a };
            gemm_both(isa, (beta, at), (alpha, bt), MatMut::new(&mut ct, n, m), update);
            for (i, row) in c.data.chunks_mut(ldc).take(m).enumerate() {
                for (j, v) in row[..n].iter_mut().enumerate() {
                    *v = ct[j * m + i];
                }
            }
            return;
        }
    }
    let a = StridedA::new(a.data, ars, acs, alpha);
    let b = StridedB::new(b.data, brs, bcs).scaled(beta);
    let out = Output {
        c: c.data,
        ldc,
        accumulate,
    };
    driver::run(kernel(isa), Dims { m, n, k }, &a, &b, out);
}

/// The widest output side a product treats as thin (a LoRA rank): see `thin`, and the
/// transposed run in [`gemm_both`].
const THIN: usize = 16;

/// `dst: [cols, rows]` = the first `cols` columns of `src`'s `rows` rows (`ld` apart),
/// transposed.
fn transpose(src: &[f32], ld: usize, rows: usize, cols: usize, dst: &mut [f32]) {
    for (i, row) in src.chunks(ld).take(rows).enumerate() {
        for (j, &v) in row[..cols].iter().enumerate() {
            dst[j * rows + i] = v;
        }
    }
}
