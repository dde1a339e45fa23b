//! SwiGLU activation of the Llama MLP: h = silu(gate) * up.

use super::simd::{multiversion, sigmoid};
use rayon::prelude::*;

/// Elements per parallel task (element-wise, so any split gives the same bits).
const TASK: usize = 16 * 1024;

/// gate, up, h: `[tokens, intermediate]`.
pub fn swiglu_forward(gate: &[f32], up: &[f32], h: &mut [f32]) {
    h.par_chunks_mut(TASK)
        .zip(gate.par_chunks(TASK).zip(up.par_chunks(TASK)))
        .for_each(|(h, (g, u))| forward_chunk(g, u, h));
}

multiversion! {
    fn forward_chunk(gate: &[f32], up: &[f32], h: &mut [f32]) {
        for ((o, &g), &u) in h.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

/// Adds dL/dgate and dL/dup given dL/dh. All `[tokens, intermediate]`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dh: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    dgate
        .par_chunks_mut(TASK)
        .zip(dup.par_chunks_mut(TASK))
        .zip(gate.par_chunks(TASK).zip(up.par_chunks(TASK)).zip(dh.par_chunks(TASK)))
        .for_each(|((dg, du), ((g, u), d))| backward_chunk(g, u, d, dg, du));
}

multiversion! {
    fn backward_chunk(gate: &[f32], up: &[f32], dh: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for ((((dg, du), &g), &u), &d) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(dh) {
            let s = sigmoid(g);
            let silu = g * s;
            *du += d * silu;
            // d silu/dg = s + g*s*(1-s)
            *dg += d * u * (s + g * s * (1.0 - s));
        }
    }
}

/// [`swiglu_backward`] in place, for buffers that are done with: `gate` and `up` become
/// dL/dgate and dL/dup (the bits `swiglu_backward` adds into zeroed buffers).
pub fn swiglu_backward_in_place(gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
    gate.par_chunks_mut(TASK)
        .zip(up.par_chunks_mut(TASK))
        .zip(dh.par_chunks(TASK))
        .for_each(|((g, u), d)| backward_in_place_chunk(g, u, d));
}

multiversion! {
    fn backward_in_place_chunk(gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
        for ((g, u), &d) in gate.iter_mut().zip(up.iter_mut()).zip(dh) {
            let (gv, uv) = (*g, *u);
            let s = sigmoid(gv);
            let silu = gv * s;
            // 0 + …: what adding into a zeroed buffer gives (a -0 becomes +0).
            *u = 0.0 + d * silu;
            *g = 0.0 + d * uv * (s + gv * s * (1.0 - s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let f = |i: usize, k: f32| ((i as f32 * k).sin() * 12.0, (i as f32 * k * 1.7).cos() * 2.0);
        let gate: Vec<f32> = (0..n).map(|i| f(i, 0.37).0).collect();
        let up: Vec<f32> = (0..n).map(|i| f(i, 0.11).1).collect();
        let dh: Vec<f32> = (0..n).map(|i| f(i, 0.23).1).collect();
        (gate, up, dh)
    }

    #[test]
    fn backward_in_place_gives_the_bits_of_backward_into_zeros() {
        let n = TASK + 101;
        let (mut gate, up, dh) = inputs(n);
        gate[3] = -200.0;
        gate[4] = 0.0;
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        swiglu_backward(&gate, &up, &dh, &mut dg, &mut du);
        let (mut g2, mut u2) = (gate.clone(), up.clone());
        swiglu_backward_in_place(&mut g2, &mut u2, &dh);
        for i in 0..n {
            assert_eq!(g2[i].to_bits(), dg[i].to_bits(), "dgate[{i}]");
            assert_eq!(u2[i].to_bits(), du[i].to_bits(), "dup[{i}]");
        }
    }

    #[test]
    fn forward_and_backward_match_f64_formulas() {
        // Longer than one task, with a ragged end.
        let n = TASK * 2 + 37;
        let (mut gate, up, dh) = inputs(n);
        gate[5] = -200.0;
        gate[6] = 200.0;
        let mut h = vec![0f32; n];
        swiglu_forward(&gate, &up, &mut h);
        let (mut dg, mut du) = (vec![0.5f32; n], vec![-0.25f32; n]);
        swiglu_backward(&gate, &up, &dh, &mut dg, &mut du);
        for i in 0..n {
            let (g, u, d) = (gate[i] as f64, up[i] as f64, dh[i] as f64);
            let s = 1.0 / (1.0 + (-g).exp());
            let want_h = g * s * u;
            let want_du = -0.25 + d * g * s;
            let want_dg = 0.5 + d * u * (s + g * s * (1.0 - s));
            let tol = |w: f64| 1e-6 * (1.0 + w.abs());
            assert!(
                (h[i] as f64 - want_h).abs() <= tol(want_h),
                "h[{i}] {} vs {want_h}",
                h[i]
            );
            assert!(
                (du[i] as f64 - want_du).abs() <= tol(want_du),
                "dup[{i}] {} vs {want_du}",
                du[i]
            );
            assert!(
                (dg[i] as f64 - want_dg).abs() <= tol(want_dg),
                "dgate[{i}] {} vs {want_dg}",
                dg[i]
            );
        }
    }
}
