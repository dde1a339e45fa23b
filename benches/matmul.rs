//! Throughput of the matrix products at the shapes of a SmolLM2-135M training step
//! (512 tokens; hidden 576, intermediate 1536). Criterion's "elem/s" are FLOP/s
//! (2 per multiply-add).
//!
//! `cargo bench --bench matmul -- --warm-up-time 1 --measurement-time 3`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nudge::kernels::matmul::{Mat, MatMut, RowOrder, Update, WeightRef, gemm, matmul_w_acc, matmul_wt};
use nudge::quant::DType;

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

fn weight_bytes(dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    match dtype {
        DType::F32 => values(rows * cols, 1).iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::Q4_1 => {
            let blocks = rows * cols / 32;
            let mut out = Vec::with_capacity(blocks * 20);
            for b in 0..blocks {
                out.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                out.extend_from_slice(&half::f16::from_f32(-0.08).to_le_bytes());
                out.extend((0..16).map(|i| (b * 31 + i * 7) as u8));
            }
            out
        }
        _ => unreachable!("benchmarked formats: F32, Q4_1"),
    }
}

const M: usize = 512;
const SHAPES: [(usize, usize); 2] = [(1536, 576), (576, 1536)];

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    for dtype in [DType::F32, DType::Q4_1] {
        for (n, k) in SHAPES {
            let data = weight_bytes(dtype, n, k);
            let w = WeightRef::new(dtype, n, k, &data, RowOrder::Stored).unwrap();
            let flops = 2 * M * n * k;
            group.throughput(Throughput::Elements(flops as u64));
            let x = values(M * k, 2);
            let mut y = vec![0.0; M * n];
            let id = format!("{dtype}/m{M}_n{n}_k{k}");
            group.bench_function(BenchmarkId::new("forward", &id), |bch| {
                bch.iter(|| matmul_wt(&x, M, &w, &mut y))
            });
            let dy = values(M * n, 3);
            let mut dx = vec![0.0; M * k];
            group.bench_function(BenchmarkId::new("backward", &id), |bch| {
                bch.iter(|| matmul_w_acc(&dy, M, &w, &mut dx))
            });
            // Decoding: one activation row, bound by reading the weight (bytes per second).
            group.throughput(Throughput::Bytes(data.len() as u64));
            let mut y1 = vec![0.0; n];
            group.bench_function(BenchmarkId::new("decode", format!("{dtype}/m1_n{n}_k{k}")), |bch| {
                bch.iter(|| matmul_wt(&x[..k], 1, &w, &mut y1))
            });
        }
    }
    // Attention scores of one head: q · kᵀ over 512 positions.
    let (m, n, k) = (M, M, 64);
    let (a, b) = (values(m * k, 4), values(n * k, 5));
    let mut out = vec![0.0; m * n];
    group.throughput(Throughput::Elements((2 * m * n * k) as u64));
    group.bench_function(BenchmarkId::new("gemm_nt", format!("m{m}_n{n}_k{k}")), |bch| {
        bch.iter(|| {
            let (a, b) = (Mat::new(&a, m, k), Mat::new(&b, n, k).t());
            gemm(1.0, a, b, MatMut::new(&mut out, m, n), Update::Overwrite)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
