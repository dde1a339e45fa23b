//! The matrix products against independent references: a plain fused multiply-add chain
//! (which every unit must match bit for bit) and an f64 product (which it must match
//! within rounding), over every weight format, ragged shapes, rope row order, every
//! SIMD unit of this CPU and several thread counts.

mod common;

use nudge::bench::weights::{DTYPES, Rng, random_weight};
use nudge::isa::Isa;
use nudge::kernels::matmul::{
    LowRank, Mat, MatMut, Precision, RowOrder, Update, WeightRef, gemm, gemm_isa, gemm_scaled_b_isa, matmul_w_acc,
    matmul_w_acc_isa, matmul_w_acc_plus_isa, matmul_wt, matmul_wt_isa, matmul_wt_plus_isa,
};
use nudge::quant::{DType, dequantize_row};

/// The stored rows expanded with the format's own dequantizer, in storage order.
fn dequantized(dtype: DType, rows: usize, cols: usize, data: &[u8]) -> Vec<f32> {
    let rb = dtype.row_bytes(cols).unwrap();
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        dequantize_row(dtype, &data[r * rb..(r + 1) * rb], &mut out[r * cols..(r + 1) * cols]).unwrap();
    }
    out
}

/// Steps of one fused multiply-add chain before its sum is added to the output (the
/// kernels' accuracy-preserving chunking).
const CHAIN: usize = 64;

/// The exact order every unit promises: the reduction runs as chains of [`CHAIN`] steps,
/// each `fold p: a(i,p).mul_add(b(p,j), acc)` from zero; the first chain's sum is the
/// output (or is added to `c0(i,j)` when accumulating), each later one is added to it.
fn fma_chain(
    m: usize,
    n: usize,
    k: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
    c0: impl Fn(usize, usize) -> f32,
    accumulate: bool,
) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = c0(i, j);
            for p0 in (0..k).step_by(CHAIN) {
                let mut part = 0.0f32;
                for p in p0..(p0 + CHAIN).min(k) {
                    part = a(i, p).mul_add(b(p, j), part);
                }
                acc = if p0 == 0 && !accumulate { part } else { acc + part };
            }
            c[i * n + j] = acc;
        }
    }
    c
}

/// Checks `got` against the f64 product `c0 + sum_p a(i,p) b(p,j)` within `1e-5` of
/// `|c0| + ||a_i|| ||b_j||`; `got` is `[m, n]`, the reduction runs over `k`.
fn assert_close_f64(
    what: &str,
    got: &[f32],
    (m, n, k): (usize, usize, usize),
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
    c0: impl Fn(usize, usize) -> f32,
) {
    for i in 0..m {
        let na: f64 = (0..k).map(|p| (a(i, p) as f64).powi(2)).sum::<f64>().sqrt();
        for j in 0..n {
            let nb: f64 = (0..k).map(|p| (b(p, j) as f64).powi(2)).sum::<f64>().sqrt();
            let exact: f64 = c0(i, j) as f64 + (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum::<f64>();
            let tol = 1e-5 * ((c0(i, j) as f64).abs() + na * nb) + 1e-30;
            let g = got[i * n + j] as f64;
            assert!(
                (g - exact).abs() <= tol,
                "{what}: [{i}, {j}] = {g}, f64 product {exact} (tolerance {tol})"
            );
        }
    }
}

/// Bitwise equality, where a NaN matches any NaN.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (e, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: element {e} is {g:e} ({:#010x}), expected {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// Shapes `(m, n, k)` with `k` a whole number of blocks: ragged against every tile size,
/// one token and the few rows of batched decoding (which have a path of their own),
/// reductions longer than one packed chunk, and more rows than one task takes.
fn shapes(dtype: DType) -> Vec<(usize, usize, usize)> {
    match dtype.block_len() {
        1 => vec![
            (1, 1, 1),
            (1, 70, 96),
            (2, 33, 48),
            (4, 83, 80),
            (8, 35, 64),
            (16, 49, 112),
            (5, 7, 3),
            (13, 65, 257),
            (37, 100, 320),
            (3, 40, 2081),
            (531, 19, 33),
        ],
        32 => vec![
            (1, 1, 32),
            (1, 70, 96),
            (2, 45, 160),
            (4, 131, 96),
            (8, 70, 128),
            (16, 33, 96),
            (3, 33, 64),
            (13, 65, 288),
            (37, 100, 320),
            (3, 40, 2080),
            (531, 19, 64),
        ],
        _ => vec![(1, 3, 256), (7, 45, 512), (29, 70, 768)],
    }
}

/// The formats whose dequantizer gives finite values (the others are checked only for
/// matching the chain, NaN for NaN).
fn finite(dtype: DType) -> bool {
    let mut rng = Rng(1);
    let data = random_weight(&mut rng, dtype, 1, dtype.block_len());
    dequantized(dtype, 1, dtype.block_len(), &data)
        .iter()
        .all(|v| v.is_finite())
}

#[test]
fn matmul_wt_is_the_fma_chain_and_the_f64_product_for_every_dtype_and_unit() {
    let mut rng = Rng(7);
    for dtype in DTYPES {
        for (m, n, k) in shapes(dtype) {
            let data = random_weight(&mut rng, dtype, n, k);
            let w = WeightRef::new(dtype, n, k, &data, RowOrder::Stored).unwrap();
            let wf = dequantized(dtype, n, k, &data);
            let x = rng.vec(m * k);
            let a = |i: usize, p: usize| x[i * k + p];
            let b = |p: usize, j: usize| wf[j * k + p];
            let want = fma_chain(m, n, k, a, b, |_, _| 0.0, false);
            let what = format!("{dtype} m={m} n={n} k={k}");
            if finite(dtype) {
                assert_close_f64(&what, &want, (m, n, k), a, b, |_, _| 0.0);
            }
            for isa in Isa::supported() {
                let mut y = vec![f32::NAN; m * n];
                matmul_wt_isa(isa, &x, m, &w, &mut y);
                assert_same_bits(&format!("{what} {isa:?}"), &y, &want);
            }
            let mut y = vec![0.0; m * n];
            matmul_wt(&x, m, &w, &mut y);
            assert_same_bits(&what, &y, &want);
        }
    }
}

#[test]
fn matmul_w_acc_adds_the_fma_chain_for_every_dtype_and_unit() {
    let mut rng = Rng(11);
    for dtype in DTYPES {
        for (m, n, k) in shapes(dtype) {
            // The weight is [n, k] here too; dy is [m, n] and the reduction runs over n.
            let data = random_weight(&mut rng, dtype, n, k);
            let w = WeightRef::new(dtype, n, k, &data, RowOrder::Stored).unwrap();
            let wf = dequantized(dtype, n, k, &data);
            let dy = rng.vec(m * n);
            let dx0 = rng.vec(m * k);
            let a = |i: usize, p: usize| dy[i * n + p];
            let b = |p: usize, j: usize| wf[p * k + j];
            let c0 = |i: usize, j: usize| dx0[i * k + j];
            let want = fma_chain(m, k, n, a, b, c0, true);
            let what = format!("{dtype} m={m} n={n} k={k}");
            if finite(dtype) {
                assert_close_f64(&what, &want, (m, k, n), a, b, c0);
            }
            for isa in Isa::supported() {
                let mut dx = dx0.clone();
                matmul_w_acc_isa(isa, &dy, m, &w, &mut dx);
                assert_same_bits(&format!("{what} {isa:?}"), &dx, &want);
            }
            let mut dx = dx0.clone();
            matmul_w_acc(&dy, m, &w, &mut dx);
            assert_same_bits(&what, &dx, &want);
        }
    }
}

/// A low-rank product fused into the frozen one (a LoRA branch's `scale · u Bᵀ` into
/// `x Wᵀ`, `du A` into `dy W`) gives the bits of the two run one after the other: over
/// every format and unit, ranks from 1 to past one chain, ragged rows and columns, a
/// reduction of several passes, a scale that is not a power of two, and both layouts of
/// each operand.
#[test]
fn a_fused_low_rank_product_gives_the_bits_of_the_separate_ones() {
    let mut rng = Rng(23);
    let cases: [(usize, usize, usize, usize); 7] = [
        (1, 70, 96, 8),
        (16, 33, 96, 8),
        (17, 45, 160, 8),
        (130, 70, 64, 1),
        (300, 99, 96, 16),
        (40, 33, 2080, 72),
        (20, 1100, 64, 8),
    ];
    for dtype in DTYPES {
        let bl = dtype.block_len().max(32);
        for (m, n, k, r) in cases {
            let k = k.next_multiple_of(bl);
            let n_acc = if dtype.block_len() > 32 {
                n.next_multiple_of(bl)
            } else {
                n
            };
            let what = format!("{dtype} m={m} n={n} k={k} r={r}");
            let data = random_weight(&mut rng, dtype, n, k);
            let w = WeightRef::new(dtype, n, k, &data, RowOrder::Stored).unwrap();
            let x = rng.vec(m * k);
            // Forward: u [m, r] (stored as is), B [n, r] (read transposed).
            let (u, b) = (rng.vec(m * r), rng.vec(n * r));
            let extra = LowRank {
                alpha: 0.37,
                u: Mat::new(&u, m, r),
                v: Mat::new(&b, n, r).t(),
            };
            for isa in Isa::supported() {
                let mut want = vec![f32::NAN; m * n];
                matmul_wt_isa(isa, &x, m, &w, &mut want);
                gemm_isa(isa, 0.37, extra.u, extra.v, MatMut::new(&mut want, m, n), Update::Add);
                let mut got = vec![f32::NAN; m * n];
                matmul_wt_plus_isa(isa, &x, m, &w, extra, &mut got);
                assert_same_bits(&format!("x·Wᵀ + u·Bᵀ {what} {isa:?}"), &got, &want);
            }
            // Backward: the weight [n_acc, k] has n_acc rows (whole blocks for the K-quants'
            // column groups); du [m, r] read transposed from [r, m], A [r, k] as is.
            let data = random_weight(&mut rng, dtype, n_acc, k);
            let w = WeightRef::new(dtype, n_acc, k, &data, RowOrder::Stored).unwrap();
            let dy = rng.vec(m * n_acc);
            let (du_t, a) = (rng.vec(r * m), rng.vec(r * k));
            let extra = LowRank {
                alpha: 1.0,
                u: Mat::new(&du_t, r, m).t(),
                v: Mat::new(&a, r, k),
            };
            let dx0 = rng.vec(m * k);
            for isa in Isa::supported() {
                let mut want = dx0.clone();
                matmul_w_acc_isa(isa, &dy, m, &w, &mut want);
                gemm_isa(isa, 1.0, extra.u, extra.v, MatMut::new(&mut want, m, k), Update::Add);
                let mut got = dx0.clone();
                matmul_w_acc_plus_isa(isa, &dy, m, &w, extra, &mut got);
                assert_same_bits(&format!("dy·W + du·A {what} {isa:?}"), &got, &want);
            }
        }
    }
    // bf16 products take the low-rank one separately: still the same bits.
    if Isa::has_bf16_dot() {
        let (m, n, k, r) = (64, 40, 96, 8);
        let data = random_weight(&mut rng, DType::F32, n, k);
        let w = WeightRef::new(DType::F32, n, k, &data, RowOrder::Stored)
            .unwrap()
            .with_precision(Precision::Bf16)
            .unwrap();
        let (x, u, b) = (rng.vec(m * k), rng.vec(m * r), rng.vec(n * r));
        let extra = LowRank {
            alpha: 0.37,
            u: Mat::new(&u, m, r),
            v: Mat::new(&b, n, r).t(),
        };
        let mut want = vec![0.0; m * n];
        matmul_wt(&x, m, &w, &mut want);
        gemm(0.37, extra.u, extra.v, MatMut::new(&mut want, m, n), Update::Add);
        let mut got = vec![0.0; m * n];
        matmul_wt_plus_isa(Isa::best(), &x, m, &w, extra, &mut got);
        assert_same_bits("bf16 x·Wᵀ + u·Bᵀ", &got, &want);
    }
}

/// The LoRA branch's products, whichever way they run (thin kernels, transposed), give
/// the bits of the plain products they stand for.
#[test]
fn lora_products_give_the_bits_of_their_plain_products() {
    use nudge::kernels::lora::{LoraGrads, LoraWeights, lora_backward, lora_forward};
    let mut rng = Rng(29);
    for (t, inp, out, r) in [(1, 64, 48, 8), (37, 576, 192, 8), (300, 96, 1536, 16), (513, 40, 70, 3)] {
        let what = format!("t={t} in={inp} out={out} r={r}");
        let (a, b) = (rng.vec(r * inp), rng.vec(out * r));
        let w = LoraWeights {
            a: &a,
            b: &b,
            r,
            scale: 0.37,
        };
        let (x, y0, dy) = (rng.vec(t * inp), rng.vec(t * out), rng.vec(t * out));
        let (ga0, gb0, dx0) = (rng.vec(r * inp), rng.vec(out * r), rng.vec(t * inp));

        let mut u_want = vec![0.0; t * r];
        gemm(
            1.0,
            Mat::new(&x, t, inp),
            Mat::new(&a, r, inp).t(),
            MatMut::new(&mut u_want, t, r),
            Update::Overwrite,
        );
        let mut y_want = y0.clone();
        gemm(
            0.37,
            Mat::new(&u_want, t, r),
            Mat::new(&b, out, r).t(),
            MatMut::new(&mut y_want, t, out),
            Update::Add,
        );
        let (mut u, mut y) = (vec![f32::NAN; t * r], y0.clone());
        lora_forward(w, &x, t, &mut u, &mut y);
        assert_same_bits(&format!("u {what}"), &u, &u_want);
        assert_same_bits(&format!("y {what}"), &y, &y_want);

        // The backward scales the thin operands, u and B, each element rounded once.
        let su: Vec<f32> = u.iter().map(|v| 0.37 * v).collect();
        let sb: Vec<f32> = b.iter().map(|v| 0.37 * v).collect();
        let mut gb_want = gb0.clone();
        gemm(
            1.0,
            Mat::new(&dy, t, out).t(),
            Mat::new(&su, t, r),
            MatMut::new(&mut gb_want, out, r),
            Update::Add,
        );
        let mut du = vec![0.0; t * r];
        gemm(
            1.0,
            Mat::new(&dy, t, out),
            Mat::new(&sb, out, r),
            MatMut::new(&mut du, t, r),
            Update::Overwrite,
        );
        let mut ga_want = ga0.clone();
        gemm(
            1.0,
            Mat::new(&du, t, r).t(),
            Mat::new(&x, t, inp),
            MatMut::new(&mut ga_want, r, inp),
            Update::Add,
        );
        let mut dx_want = dx0.clone();
        gemm(
            1.0,
            Mat::new(&du, t, r),
            Mat::new(&a, r, inp),
            MatMut::new(&mut dx_want, t, inp),
            Update::Add,
        );
        let (mut ga, mut gb, mut dx) = (ga0.clone(), gb0.clone(), dx0.clone());
        lora_backward(w, &x, t, &u, &dy, LoraGrads { a: &mut ga, b: &mut gb }, &mut dx);
        assert_same_bits(&format!("dA {what}"), &ga, &ga_want);
        assert_same_bits(&format!("dB {what}"), &gb, &gb_want);
        assert_same_bits(&format!("dx {what}"), &dx, &dx_want);
    }
}

/// GGUF's converter stores each head's rows as `(hd/2, 2)` interleaved pairs: physical
/// row `2*i + s` of a head holds logical row `s*hd/2 + i`.
fn rope_permuted_rows(rows: usize, head_dim: usize, row_bytes: usize, logical: &[u8]) -> Vec<u8> {
    let mut out = vec![0; logical.len()];
    for head in 0..rows / head_dim {
        for i in 0..head_dim / 2 {
            for s in 0..2 {
                let phys = head * head_dim + 2 * i + s;
                let log = head * head_dim + s * head_dim / 2 + i;
                out[phys * row_bytes..(phys + 1) * row_bytes]
                    .copy_from_slice(&logical[log * row_bytes..(log + 1) * row_bytes]);
            }
        }
    }
    out
}

#[test]
fn rope_unpermute_reads_rows_in_hf_order() {
    let mut rng = Rng(13);
    for dtype in [DType::F32, DType::Q8_0, DType::Q4_1] {
        let (m, head_dim, heads, k) = (9, 8, 3, 64);
        let n = head_dim * heads;
        let logical = random_weight(&mut rng, dtype, n, k);
        let stored = rope_permuted_rows(n, head_dim, dtype.row_bytes(k).unwrap(), &logical);
        assert_ne!(logical, stored);
        let plain = WeightRef::new(dtype, n, k, &logical, RowOrder::Stored).unwrap();
        let perm = WeightRef::new(dtype, n, k, &stored, RowOrder::RopeUnpermute { head_dim }).unwrap();

        let wf = dequantized(dtype, n, k, &logical);
        let mut row = vec![0.0; k];
        for r in 0..n {
            perm.row(r, &mut row);
            assert_same_bits(&format!("{dtype} row {r}"), &row, &wf[r * k..(r + 1) * k]);
        }

        let x = rng.vec(m * k);
        let (mut y0, mut y1) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_wt(&x, m, &plain, &mut y0);
        matmul_wt(&x, m, &perm, &mut y1);
        assert_same_bits(&format!("{dtype} forward"), &y1, &y0);

        let dy = rng.vec(m * n);
        let dx0 = rng.vec(m * k);
        let (mut d0, mut d1) = (dx0.clone(), dx0);
        matmul_w_acc(&dy, m, &plain, &mut d0);
        matmul_w_acc(&dy, m, &perm, &mut d1);
        assert_same_bits(&format!("{dtype} backward"), &d1, &d0);
    }
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn results_are_bit_identical_for_1_2_and_3_threads() {
    let mut rng = Rng(17);
    // Many tasks; one token; a reduction longer than one packed chunk of A; and dY·W over
    // 224 columns, which 1, 2 and 3 threads split into tasks of 96, 64 and 32 columns.
    for (dtype, m, n, k) in [
        (DType::Q4_1, 300, 200, 608),
        (DType::Q8_0, 1, 300, 96),
        (DType::Q8_0, 70, 300, 224),
        (DType::F16, 40, 2090, 2090),
    ] {
        let data = random_weight(&mut rng, dtype, n, k);
        let w = WeightRef::new(dtype, n, k, &data, RowOrder::Stored).unwrap();
        let x = rng.vec(m * k);
        let dy = rng.vec(m * n);
        let dx0 = rng.vec(m * k);
        let (a, b) = (rng.vec(m * k), rng.vec(k * n));
        let run = |threads: usize| {
            in_pool(threads, || {
                let mut y = vec![0.0; m * n];
                matmul_wt(&x, m, &w, &mut y);
                let mut dx = dx0.clone();
                matmul_w_acc(&dy, m, &w, &mut dx);
                let mut c = vec![0.0; m * n];
                gemm(
                    1.0,
                    Mat::new(&a, m, k),
                    Mat::new(&b, n, k).t(),
                    MatMut::new(&mut c, m, n),
                    Update::Overwrite,
                );
                (y, dx, c)
            })
        };
        let one = run(1);
        assert!(one.0.iter().chain(&one.1).chain(&one.2).all(|v| v.is_finite()));
        for threads in [2, 3] {
            let other = run(threads);
            let what = format!("{dtype} m={m} n={n} k={k}, {threads} threads");
            assert_same_bits(&format!("forward {what}"), &other.0, &one.0);
            assert_same_bits(&format!("backward {what}"), &other.1, &one.1);
            assert_same_bits(&format!("gemm {what}"), &other.2, &one.2);
        }
    }
}

#[test]
fn a_row_of_the_output_does_not_depend_on_the_other_rows() {
    let mut rng = Rng(19);
    let (m, n, k) = (45, 130, 576);
    let data = random_weight(&mut rng, DType::Q4_0, n, k);
    let w = WeightRef::new(DType::Q4_0, n, k, &data, RowOrder::Stored).unwrap();
    let x = rng.vec(m * k);
    let mut y = vec![0.0; m * n];
    matmul_wt(&x, m, &w, &mut y);
    for i in [0, 1, 17, m - 1] {
        let mut yi = vec![0.0; n];
        matmul_wt(&x[i * k..(i + 1) * k], 1, &w, &mut yi);
        assert_same_bits(&format!("row {i}"), &yi, &y[i * n..(i + 1) * n]);
    }
}

#[test]
fn gemm_handles_every_transpose_and_accumulate() {
    let mut rng = Rng(23);
    // One row or one column (a rank-1 LoRA's products) with tight leading dimensions: both
    // strides of such an operand are 1, which the packing must not read as a transpose.
    let shapes = [
        (1, 1, 1),
        (7, 5, 3),
        (29, 67, 45),
        (70, 33, 300),
        (1, 9, 40),
        (9, 1, 40),
        (1, 1, 40),
    ];
    for ((m, n, k), pad) in shapes.into_iter().flat_map(|s| [(s, true), (s, false)]) {
        for transa in [false, true] {
            for transb in [false, true] {
                for accumulate in [false, true] {
                    let alpha = 0.75;
                    // Padded leading dimensions: the padding must stay untouched.
                    let (ar, ac) = if transa { (k, m) } else { (m, k) };
                    let (br, bc) = if transb { (n, k) } else { (k, n) };
                    let (lda, ldb, ldc) = if pad { (ac + 3, bc + 1, n + 2) } else { (ac, bc, n) };
                    let a = rng.vec(ar * lda);
                    let b = rng.vec(br * ldb);
                    let c0 = rng.vec(m * ldc);
                    let opa = |i: usize, p: usize| alpha * if transa { a[p * lda + i] } else { a[i * lda + p] };
                    let opb = |p: usize, j: usize| {
                        if transb { b[j * ldb + p] } else { b[p * ldb + j] }
                    };
                    let init = |i: usize, j: usize| if accumulate { c0[i * ldc + j] } else { 0.0 };
                    let want = fma_chain(m, n, k, opa, opb, init, accumulate);
                    let what = format!("m={m} n={n} k={k} ta={transa} tb={transb} acc={accumulate}");
                    assert_close_f64(&what, &want, (m, n, k), opa, opb, init);
                    for isa in Isa::supported() {
                        let mut c = c0.clone();
                        let op = |data, rows, cols, ld, trans| Mat {
                            data,
                            rows,
                            cols,
                            ld,
                            trans,
                        };
                        let update = if accumulate { Update::Add } else { Update::Overwrite };
                        gemm_isa(
                            isa,
                            alpha,
                            op(&a, ar, ac, lda, transa),
                            op(&b, br, bc, ldb, transb),
                            MatMut::new(&mut c, m, n).with_ld(ldc),
                            update,
                        );
                        for i in 0..m {
                            let what = format!("{what} {isa:?} row {i}");
                            assert_same_bits(&what, &c[i * ldc..i * ldc + n], &want[i * n..(i + 1) * n]);
                            assert_same_bits(&what, &c[i * ldc + n..(i + 1) * ldc], &c0[i * ldc + n..(i + 1) * ldc]);
                        }
                    }
                }
            }
        }
    }
}

/// Products with a thin side (at most 16 rows or columns: a LoRA rank) read their wide
/// operand in place where it is stored row-major and unscaled, or run transposed: every
/// such route, and the scale on either operand, gives the chains of the plain product.
#[test]
fn gemm_with_a_thin_side_is_the_fma_chain_on_every_route() {
    let mut rng = Rng(31);
    // (m, n, k): thin n (one and two vectors, ragged), thin m (ragged lines of B, rows
    // split unevenly), both thin; reductions of one step, one chain and several.
    let shapes = [
        (50, 8, 300),
        (13, 3, 130),
        (29, 16, 64),
        (40, 9, 1),
        (1, 1, 70),
        (8, 100, 300),
        (16, 40, 65),
        (5, 7, 129),
        (3, 16, 200),
        (12, 12, 90),
    ];
    for (m, n, k) in shapes {
        for (transa, transb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (alpha, beta) in [(1.0, 1.0), (0.75, 1.0), (1.0, 0.75)] {
                for accumulate in [false, true] {
                    let (ar, ac) = if transa { (k, m) } else { (m, k) };
                    let (br, bc) = if transb { (n, k) } else { (k, n) };
                    let (lda, ldb, ldc) = (ac + 2, bc + 3, n + 1);
                    let a = rng.vec(ar * lda);
                    let b = rng.vec(br * ldb);
                    let c0 = rng.vec(m * ldc);
                    let opa = |i: usize, p: usize| alpha * if transa { a[p * lda + i] } else { a[i * lda + p] };
                    let opb = |p: usize, j: usize| beta * if transb { b[j * ldb + p] } else { b[p * ldb + j] };
                    let init = |i: usize, j: usize| if accumulate { c0[i * ldc + j] } else { 0.0 };
                    let want = fma_chain(m, n, k, opa, opb, init, accumulate);
                    let what =
                        format!("m={m} n={n} k={k} ta={transa} tb={transb} alpha={alpha} beta={beta} acc={accumulate}");
                    for isa in Isa::supported() {
                        let mut c = c0.clone();
                        let am = Mat {
                            data: &a,
                            rows: ar,
                            cols: ac,
                            ld: lda,
                            trans: transa,
                        };
                        let bm = Mat {
                            data: &b,
                            rows: br,
                            cols: bc,
                            ld: ldb,
                            trans: transb,
                        };
                        let cm = MatMut::new(&mut c, m, n).with_ld(ldc);
                        let update = if accumulate { Update::Add } else { Update::Overwrite };
                        if beta == 1.0 {
                            gemm_isa(isa, alpha, am, bm, cm, update);
                        } else {
                            gemm_scaled_b_isa(isa, am, beta, bm, cm, update);
                        }
                        for i in 0..m {
                            let what = format!("{what} {isa:?} row {i}");
                            assert_same_bits(&what, &c[i * ldc..i * ldc + n], &want[i * n..(i + 1) * n]);
                            assert_same_bits(&what, &c[i * ldc + n..(i + 1) * ldc], &c0[i * ldc + n..(i + 1) * ldc]);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_with_empty_reduction_clears_or_keeps_c() {
    let mut c = vec![3.0; 6];
    let (a, b) = (Mat::new(&[], 2, 0), Mat::new(&[], 0, 3));
    gemm(1.0, a, b, MatMut::new(&mut c, 2, 3), Update::Add);
    assert_eq!(c, vec![3.0; 6]);
    gemm(1.0, a, b, MatMut::new(&mut c, 2, 3), Update::Overwrite);
    assert_eq!(c, vec![0.0; 6]);
}

#[test]
fn weight_ref_rejects_bad_sizes_and_rope_heads() {
    let data = vec![0u8; 2 * 20];
    assert!(WeightRef::new(DType::Q4_1, 2, 32, &data, RowOrder::Stored).is_ok());
    assert!(WeightRef::new(DType::Q4_1, 2, 32, &data[1..], RowOrder::Stored).is_err());
    assert!(WeightRef::new(DType::Q4_1, 1, 64, &data, RowOrder::Stored).is_ok());
    assert!(WeightRef::new(DType::Q4_1, 2, 33, &data, RowOrder::Stored).is_err());
    let data = vec![0u8; 6 * 4 * 4];
    for head_dim in [0, 3, 4] {
        let r = WeightRef::new(DType::F32, 6, 4, &data, RowOrder::RopeUnpermute { head_dim });
        assert!(r.is_err(), "head_dim {head_dim}");
    }
    assert!(WeightRef::new(DType::F32, 6, 4, &data, RowOrder::RopeUnpermute { head_dim: 2 }).is_ok());
    assert!(WeightRef::new(DType::F32, 6, 4, &data, RowOrder::RopeUnpermute { head_dim: 6 }).is_ok());
}

#[test]
fn the_decoding_copy_gives_the_fma_chain_for_every_decoding_row_count() {
    use nudge::kernels::matmul::DecodeLayout;
    let mut rng = Rng(41);
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::F32,
        DType::F16,
        DType::BF16,
    ] {
        // Rows in whole groups of 16 and not; one block; several chains; rope row order.
        for (n, k, order) in [
            (48, 576, RowOrder::Stored),
            (37, 32, RowOrder::Stored),
            (70, 96, RowOrder::Stored),
            (24, 160, RowOrder::RopeUnpermute { head_dim: 8 }),
        ] {
            let data = random_weight(&mut rng, dtype, n, k);
            let w = WeightRef::new(dtype, n, k, &data, order).unwrap();
            let layout = DecodeLayout::new(&w).expect("a decoding layout for the format");
            // Bytes per row and column of the layout, and per group of 16 rows.
            let per_column = match dtype {
                DType::Q8_0 => 576 / 32,
                DType::F32 => 1024 / 16,
                DType::F16 | DType::BF16 => 512 / 16,
                _ => 320 / 32,
            };
            assert_eq!(layout.bytes().len(), n.div_ceil(16) * k * per_column);
            let copy = WeightRef {
                decode: Some(&layout),
                ..w
            };
            let mut wf = vec![0.0; n * k];
            for r in 0..n {
                w.row(r, &mut wf[r * k..(r + 1) * k]);
            }
            // Decoding's row counts read the copy in the decoding kernels, the others (and
            // 17 or more rows, prefill) in the tiled path's panels.
            for m in [1, 2, 3, 4, 5, 8, 16, 17, 40] {
                let x = rng.vec(m * k);
                let want = fma_chain(m, n, k, |i, p| x[i * k + p], |p, j| wf[j * k + p], |_, _| 0.0, false);
                for isa in Isa::supported() {
                    let mut y = vec![f32::NAN; m * n];
                    matmul_wt_isa(isa, &x, m, &copy, &mut y);
                    assert_same_bits(&format!("{dtype} {order:?} m={m} n={n} k={k} {isa:?}"), &y, &want);
                }
            }
        }
    }
    // A copy made from another weight of the same shape is not read.
    let (n, k) = (32, 64);
    let (d1, d2) = (
        random_weight(&mut rng, DType::Q4_1, n, k),
        random_weight(&mut rng, DType::Q4_1, n, k),
    );
    let w1 = WeightRef::new(DType::Q4_1, n, k, &d1, RowOrder::Stored).unwrap();
    let w2 = WeightRef::new(DType::Q4_1, n, k, &d2, RowOrder::Stored).unwrap();
    let other = DecodeLayout::new(&w2).unwrap();
    let x = rng.vec(k);
    let (mut y, mut want) = (vec![0.0; n], vec![0.0; n]);
    matmul_wt(
        &x,
        1,
        &WeightRef {
            decode: Some(&other),
            ..w1
        },
        &mut y,
    );
    matmul_wt(&x, 1, &w1, &mut want);
    assert_same_bits("another weight's copy", &y, &want);
    // Formats without the layout get none; nor do float rows not whole blocks of 16.
    let data = random_weight(&mut rng, DType::Q6_K, 4, 256);
    assert!(DecodeLayout::new(&WeightRef::new(DType::Q6_K, 4, 256, &data, RowOrder::Stored).unwrap()).is_none());
    let data = random_weight(&mut rng, DType::F32, 4, 24);
    assert!(DecodeLayout::new(&WeightRef::new(DType::F32, 4, 24, &data, RowOrder::Stored).unwrap()).is_none());
}
