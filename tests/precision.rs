//! `Precision::Bf16`: the frozen weights' products with both operands rounded to bf16 and
//! summed in f32, against an independent reference (the operands rounded to bf16, the
//! product in f64); decoding-sized products keep the exact f32 path; results do not depend
//! on the thread count; a CPU without bf16 dot products gets an error naming what is
//! missing.

use nudge::bench::weights::{Rng, random_weight};
use nudge::kernels::matmul::{Precision, RowOrder, WeightRef, matmul_w_acc, matmul_wt};
use nudge::quant::{DType, dequantize_row};

fn bf16(v: f32) -> f64 {
    half::bf16::from_f32(v).to_f64()
}

fn dequantized(dtype: DType, rows: usize, cols: usize, data: &[u8]) -> Vec<f32> {
    let rb = dtype.row_bytes(cols).unwrap();
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        dequantize_row(dtype, &data[r * rb..(r + 1) * rb], &mut out[r * cols..(r + 1) * cols]).unwrap();
    }
    out
}

/// `got[i, j]` against `c0[i, j] + sum_p bf16(a[i, p]) bf16(b[p, j])` in f64, within
/// f32 rounding of the sums: `1e-5 (|c0| + sum_p |a b|)`. Returns the largest deviation
/// from `f32_product` relative to the same scale, to show the rounding happened.
fn check(
    what: &str,
    got: &[f32],
    f32_product: &[f32],
    dims: (usize, usize, usize),
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
    c0: impl Fn(usize, usize) -> f32,
) -> f64 {
    let (m, n, k) = dims;
    let mut largest = 0.0f64;
    for i in 0..m {
        for j in 0..n {
            let scale = c0(i, j).abs() as f64 + (0..k).map(|p| (a(i, p) as f64 * b(p, j) as f64).abs()).sum::<f64>();
            let want = c0(i, j) as f64 + (0..k).map(|p| bf16(a(i, p)) * bf16(b(p, j))).sum::<f64>();
            let g = got[i * n + j] as f64;
            assert!(
                (g - want).abs() <= 1e-5 * scale + 1e-30,
                "{what}: [{i}, {j}] = {g}, bf16 product {want} (scale {scale})"
            );
            largest = largest.max((g - f32_product[i * n + j] as f64).abs() / scale);
        }
    }
    largest
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn bf16_products_are_the_bf16_rounded_product_or_a_named_error() {
    let mut rng = Rng(29);
    if let Err(e) = Precision::Bf16.check() {
        // Only a CPU without bf16 dot products gets here: the error says so, and a weight
        // cannot be switched to it.
        let msg = e.to_string();
        assert!(msg.contains("bf16") && msg.contains("AVX512-BF16"), "{msg}");
        let data = random_weight(&mut rng, DType::Q4_1, 2, 32);
        let w = WeightRef::new(DType::Q4_1, 2, 32, &data, RowOrder::Stored).unwrap();
        assert!(w.with_precision(Precision::Bf16).is_err());
        return;
    }
    // More rows than decoding's path takes; an odd reduction (a last step paired with
    // zero); a reduction of several packed chunks; ragged tiles.
    for (dtype, m, n, k) in [
        (DType::F32, 17, 45, 257),
        (DType::Q4_1, 37, 100, 320),
        (DType::Q8_0, 40, 70, 2080),
        (DType::F16, 29, 33, 96),
        (DType::Q4_K, 20, 19, 512),
    ] {
        let data = random_weight(&mut rng, dtype, n, k);
        let exact = WeightRef::new(dtype, n, k, &data, RowOrder::Stored).unwrap();
        let w = exact.with_precision(Precision::Bf16).unwrap();
        let wf = dequantized(dtype, n, k, &data);
        let x = rng.vec(m * k);
        let (mut y, mut y32) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_wt(&x, m, &w, &mut y);
        matmul_wt(&x, m, &exact, &mut y32);
        let what = format!("forward {dtype} m={m} n={n} k={k}");
        let dev = check(
            &what,
            &y,
            &y32,
            (m, n, k),
            |i, p| x[i * k + p],
            |p, j| wf[j * k + p],
            |_, _| 0.0,
        );
        // bf16 keeps 8 significant bits: the products must differ from f32's somewhere.
        assert!(dev > 1e-4, "{what}: bf16 result within {dev:e} of f32's: not rounded");

        let dy = rng.vec(m * n);
        let dx0 = rng.vec(m * k);
        let (mut dx, mut dx32) = (dx0.clone(), dx0.clone());
        matmul_w_acc(&dy, m, &w, &mut dx);
        matmul_w_acc(&dy, m, &exact, &mut dx32);
        let what = format!("backward {dtype} m={m} n={n} k={k}");
        let dev = check(
            &what,
            &dx,
            &dx32,
            (m, k, n),
            |i, p| dy[i * n + p],
            |p, j| wf[p * k + j],
            |i, j| dx0[i * k + j],
        );
        assert!(dev > 1e-4, "{what}: bf16 result within {dev:e} of f32's: not rounded");
    }
}

#[test]
fn bf16_leaves_decoding_exact_and_does_not_depend_on_threads() {
    if Precision::Bf16.check().is_err() {
        // Covered by the test above: this CPU has no bf16 kernel to compare.
        return;
    }
    let mut rng = Rng(31);
    let (n, k) = (150, 608);
    let data = random_weight(&mut rng, DType::Q4_1, n, k);
    let exact = WeightRef::new(DType::Q4_1, n, k, &data, RowOrder::Stored).unwrap();
    let w = exact.with_precision(Precision::Bf16).unwrap();
    for m in [1, 4, 16] {
        let x = rng.vec(m * k);
        let (mut y, mut y32) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_wt(&x, m, &w, &mut y);
        matmul_wt(&x, m, &exact, &mut y32);
        assert!(
            y.iter().zip(&y32).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{m} rows: not the f32 path"
        );
    }
    let m = 300;
    let x = rng.vec(m * k);
    let dy = rng.vec(m * n);
    let run = |threads| {
        in_pool(threads, || {
            let mut y = vec![0.0; m * n];
            matmul_wt(&x, m, &w, &mut y);
            let mut dx = vec![0.0; m * k];
            matmul_w_acc(&dy, m, &w, &mut dx);
            (y, dx)
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert!(
            one.0.iter().zip(&other.0).all(|(a, b)| a.to_bits() == b.to_bits()),
            "forward, {threads} threads"
        );
        assert!(
            one.1.iter().zip(&other.1).all(|(a, b)| a.to_bits() == b.to_bits()),
            "backward, {threads} threads"
        );
    }
}
