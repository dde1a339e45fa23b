//! Packed attention against a row-by-row f64 reference.

use super::*;

fn values(len: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
        })
        .collect()
}

fn spans(list: &[(usize, Option<usize>)]) -> AttnLayout {
    let mut start = 0;
    let spans = list
        .iter()
        .map(|&(len, parent)| {
            let s = Span { start, len, parent };
            start += len;
            s
        })
        .collect();
    AttnLayout::new(spans).expect("valid layout")
}

/// Layouts covering: one causal sequence longer than a task, several sequences, two
/// packed preference pairs, a chain of spans deeper than one level with a span longer
/// than a task, an empty span and single tokens.
fn layouts() -> Vec<(&'static str, AttnLayout)> {
    vec![
        // Longer than 16 tasks of 64 tokens.
        ("one sequence", AttnLayout::sequences(&[1100])),
        ("sequences", AttnLayout::sequences(&[5, 70, 1, 17])),
        (
            "preference pairs",
            spans(&[
                (23, None),
                (19, Some(0)),
                (7, Some(0)),
                (40, None),
                (33, Some(3)),
                (29, Some(3)),
            ]),
        ),
        (
            "chain",
            spans(&[
                (10, None),
                (9, Some(0)),
                (0, Some(1)),
                (80, Some(1)),
                (3, Some(0)),
                (1, Some(4)),
            ]),
        ),
    ]
}

fn shapes() -> Vec<AttnShape> {
    vec![
        AttnShape {
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
        },
        AttnShape {
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 24,
        },
        AttnShape {
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 8,
        },
    ]
}

struct Case {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
}

fn case(layout: &AttnLayout, shape: AttnShape, seed: u64) -> Case {
    let n = layout.n_tokens();
    Case {
        q: values(n * shape.q_width(), seed, 3.0),
        k: values(n * shape.kv_width(), seed + 1, 3.0),
        v: values(n * shape.kv_width(), seed + 2, 2.0),
        dout: values(n * shape.q_width(), seed + 3, 2.0),
    }
}

/// Row by row in f64: out, lse, and the gradients dq, dk, dv.
fn reference<'c>(c: &'c Case, layout: &AttnLayout, shape: AttnShape) -> [Vec<f64>; 5] {
    let n = layout.n_tokens();
    let (hd, qw, kvw, h) = (shape.head_dim, shape.q_width(), shape.kv_width(), shape.n_heads);
    let group = h / shape.n_kv_heads;
    let scale = 1.0 / (hd as f64).sqrt();
    let (mut out, mut lse) = (vec![0f64; n * qw], vec![0f64; n * h]);
    let (mut dq, mut dk, mut dv) = (vec![0f64; n * qw], vec![0f64; n * kvw], vec![0f64; n * kvw]);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    let mut ranges = Vec::new();
    for t in 0..n {
        layout.key_ranges(t, &mut ranges);
        let keys: Vec<usize> = ranges.iter().flat_map(|&(a, b)| a..b).collect();
        for head in 0..h {
            let kvh = head / group;
            let qa = t * qw + head * hd;
            let qh = &c.q[qa..qa + hd];
            let kv = |x: &'c [f32], j: usize| -> &'c [f32] { &x[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd] };
            let s: Vec<f64> = keys.iter().map(|&j| dot(qh, kv(&c.k, j)) * scale).collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
            let l = max + sum.ln();
            lse[t * h + head] = l;
            let p: Vec<f64> = s.iter().map(|x| (x - l).exp()).collect();
            for (&j, &pj) in keys.iter().zip(&p) {
                for (d, &vd) in kv(&c.v, j).iter().enumerate() {
                    out[qa + d] += pj * vd as f64;
                }
            }
            let doh = &c.dout[qa..qa + hd];
            let dsum: f64 = (0..hd).map(|d| doh[d] as f64 * out[qa + d]).sum();
            for (&j, &pj) in keys.iter().zip(&p) {
                let dp = dot(doh, kv(&c.v, j));
                let ds = pj * (dp - dsum);
                let kj = kv(&c.k, j);
                for d in 0..hd {
                    dq[qa + d] += ds * scale * kj[d] as f64;
                    dk[j * kvw + kvh * hd + d] += ds * scale * qh[d] as f64;
                    dv[j * kvw + kvh * hd + d] += pj * doh[d] as f64;
                }
            }
        }
    }
    [out, lse, dq, dk, dv]
}

fn assert_close(name: &str, what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: {what} length");
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-3);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * scale,
            "{name}: {what}[{i}] = {g}, reference {w} (tolerance {tol} x {scale})"
        );
    }
}

fn run(c: &Case, layout: &AttnLayout, shape: AttnShape, init: f32) -> [Vec<f32>; 5] {
    let n = layout.n_tokens();
    let (qw, kvw) = (shape.q_width(), shape.kv_width());
    let (mut out, mut lse) = (vec![f32::NAN; n * qw], vec![f32::NAN; n * shape.n_heads]);
    attention_forward(&c.q, &c.k, &c.v, layout, shape, &mut out, &mut lse);
    let (mut dq, mut dk, mut dv) = (vec![init; n * qw], vec![init; n * kvw], vec![init; n * kvw]);
    let saved = AttnSaved {
        q: &c.q,
        k: &c.k,
        v: &c.v,
        out: &out,
        lse: &lse,
    };
    let grads = AttnGrads {
        dq: &mut dq,
        dk: &mut dk,
        dv: &mut dv,
    };
    attention_backward(saved, &c.dout, layout, shape, grads);
    [out, lse, dq, dk, dv]
}

#[test]
fn forward_and_backward_match_the_row_by_row_reference() {
    for (name, layout) in layouts() {
        for shape in shapes() {
            let c = case(&layout, shape, 7);
            let want = reference(&c, &layout, shape);
            // The gradients are added to what the buffers hold.
            let got = run(&c, &layout, shape, 0.5);
            let label = format!("{name}, {shape:?}");
            assert_close(&label, "out", &got[0], &want[0], 2e-6);
            assert_close(&label, "lse", &got[1], &want[1], 2e-6);
            for (i, what) in [(2, "dq"), (3, "dk"), (4, "dv")] {
                let shifted: Vec<f64> = want[i].iter().map(|x| x + 0.5).collect();
                assert_close(&label, what, &got[i], &shifted, 4e-6);
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    for ((_, layout), shape) in layouts().into_iter().zip(shapes().into_iter().cycle()) {
        let c = case(&layout, shape, 11);
        let runs: Vec<[Vec<f32>; 5]> = [1, 2, 3]
            .iter()
            .map(|&threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool");
                pool.install(|| run(&c, &layout, shape, 0.0))
            })
            .collect();
        for r in &runs[1..] {
            for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&r[i]),
                    bits(&runs[0][i]),
                    "{what} differs between thread counts, {shape:?}"
                );
            }
        }
    }
}

#[test]
fn extreme_scores_stay_finite() {
    // Scores of several hundred: the softmax must subtract the row maximum.
    let layout = AttnLayout::sequences(&[40]);
    let shape = shapes()[0];
    let mut c = case(&layout, shape, 3);
    for x in c.q.iter_mut() {
        *x *= 40.0;
    }
    let want = reference(&c, &layout, shape);
    let got = run(&c, &layout, shape, 0.0);
    assert!(got.iter().all(|g| g.iter().all(|x| x.is_finite())));
    assert_close("large scores", "out", &got[0], &want[0], 1e-5);
    assert_close("large scores", "lse", &got[1], &want[1], 1e-6);
}
