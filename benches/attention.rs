//! Attention and SwiGLU at the shapes of a SmolLM2-135M DPO training step: two packed
//! preference pairs (prompt 190 tokens, chosen and rejected 97 each, both seeing the
//! prompt), 9 query heads, 3 kv heads, head_dim 64; intermediate 1536.
//! Criterion's "elem/s" are FLOP/s (2 per multiply-add of the matrix products).
//!
//! `cargo bench --bench attention -- --warm-up-time 1 --measurement-time 3`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nudge::kernels::attention::{
    AttnGrads, AttnLayout, AttnSaved, AttnShape, Span, attention_backward, attention_forward,
};
use nudge::kernels::swiglu::{swiglu_backward, swiglu_forward};

fn values(len: usize, seed: u32, amp: f32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let u = ((i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503))
                >> 8) as f32
                / (1u32 << 24) as f32;
            (u - 0.5) * amp
        })
        .collect()
}

fn dpo_layout(pairs: usize, prompt: usize, answer: usize) -> AttnLayout {
    let mut spans = Vec::new();
    let mut start = 0;
    for _ in 0..pairs {
        let p = spans.len();
        for (len, parent) in [(prompt, None), (answer, Some(p)), (answer, Some(p))] {
            spans.push(Span { start, len, parent });
            start += len;
        }
    }
    AttnLayout::new(spans).expect("tiling spans")
}

/// Query-key pairs the layout attends (one head).
fn pairs(layout: &AttnLayout) -> usize {
    let mut visible = vec![0usize; layout.spans.len()];
    let mut total = 0;
    for (i, s) in layout.spans.iter().enumerate() {
        let before = s.parent.map_or(0, |p| visible[p]);
        visible[i] = before + s.len;
        total += s.len * before + s.len * (s.len + 1) / 2;
    }
    total
}

fn bench(c: &mut Criterion) {
    let shape = AttnShape {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let mut group = c.benchmark_group("attention");
    for (name, layout) in [
        ("dpo2x_190_97", dpo_layout(2, 190, 97)),
        ("seq512", AttnLayout::sequences(&[512])),
    ] {
        let t = layout.n_tokens();
        let (qw, kvw) = (shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim);
        let q = values(t * qw, 1, 2.0);
        let k = values(t * kvw, 2, 2.0);
        let v = values(t * kvw, 3, 1.0);
        let dout = values(t * qw, 4, 1.0);
        let mut out = vec![0.0; t * qw];
        let mut lse = vec![0.0; t * shape.n_heads];
        // Forward: q·kᵀ and p·v; backward recomputes q·kᵀ and adds dO·vᵀ, pᵀ·dO, dS·k, dSᵀ·q.
        let fwd_flops = 2 * 2 * pairs(&layout) * shape.n_heads * shape.head_dim;
        group.throughput(Throughput::Elements(fwd_flops as u64));
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| attention_forward(&q, &k, &v, &layout, shape, &mut out, &mut lse))
        });
        attention_forward(&q, &k, &v, &layout, shape, &mut out, &mut lse);
        let (mut dq, mut dk, mut dv) = (vec![0.0; t * qw], vec![0.0; t * kvw], vec![0.0; t * kvw]);
        group.throughput(Throughput::Elements((fwd_flops * 5 / 2) as u64));
        group.bench_function(BenchmarkId::new("backward", name), |b| {
            b.iter(|| {
                let saved = AttnSaved {
                    q: &q,
                    k: &k,
                    v: &v,
                    out: &out,
                    lse: &lse,
                };
                let grads = AttnGrads {
                    dq: &mut dq,
                    dk: &mut dk,
                    dv: &mut dv,
                };
                attention_backward(saved, &dout, &layout, shape, grads)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("swiglu");
    let n = 770 * 1536;
    let (gate, up, dh) = (values(n, 5, 8.0), values(n, 6, 2.0), values(n, 7, 1.0));
    let mut h = vec![0.0; n];
    let (mut dgate, mut dup) = (vec![0.0; n], vec![0.0; n]);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("forward", |b| b.iter(|| swiglu_forward(&gate, &up, &mut h)));
    group.bench_function("backward", |b| {
        b.iter(|| swiglu_backward(&gate, &up, &dh, &mut dgate, &mut dup))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
