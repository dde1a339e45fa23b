//! Rotary position embedding in the HF ("rotate half") layout: within each head the
//! pair of dimensions (i, i + d/2) is rotated by angle pos * `inv_freq[i]`.

use crate::rope_scaling::RopeScaling;
use rayon::prelude::*;

/// Per-dimension inverse frequencies `[head_dim / 2]`, with the model's scaling applied.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f32> {
    let half = head_dim / 2;
    let base: Vec<f32> = (0..half)
        // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), all in f32.
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            (1.0f64 / (theta as f64).powf(e as f64)) as f32
        })
        .collect();
    match scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = *original_max_position_embeddings as f32;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        RopeScaling::Factors(factors) => base.iter().zip(factors).map(|(f, s)| f / s).collect(),
    }
}

/// cos/sin tables for a list of positions: each `[positions.len(), head_dim / 2]`.
pub struct RopeTable {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(inv_freq: &[f32], positions: &[u32]) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freq {
                // The angle is rounded to f32 as transformers does (f32 matmul of pos and
                // inv_freq); cos/sin of that angle are then taken at full precision.
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable { half, cos, sin }
    }
}

/// Token rows per parallel task: the rows are independent, and run serially they were
/// about 0.4% of a 2-thread training step that the other thread spent waiting.
const ROWS_PER_TASK: usize = 16;

/// Rotates one head in place: its first half `a`, its second half `b`, by the angles
/// whose cosines are `c` and sines `s`.
type Rotate = fn(a: &mut [f32], b: &mut [f32], c: &[f32], s: &[f32]);

/// Applies `rotate` to every head of every token row of `x: [tokens, n_heads * 2 * half]`,
/// rows in parallel.
fn each_head(x: &mut [f32], n_heads: usize, table: &RopeTable, rotate: Rotate) {
    let half = table.half;
    let width = n_heads * 2 * half;
    x.par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            for (r, row) in rows.chunks_exact_mut(width).enumerate() {
                let t = task * ROWS_PER_TASK + r;
                let c = &table.cos[t * half..(t + 1) * half];
                let s = &table.sin[t * half..(t + 1) * half];
                for head in row.chunks_exact_mut(2 * half) {
                    let (a, b) = head.split_at_mut(half);
                    rotate(a, b, c, s);
                }
            }
        });
}

/// Rotates x in place. x: `[tokens, n_heads * head_dim]`; table has one row per token.
pub fn rope_forward(x: &mut [f32], n_heads: usize, table: &RopeTable) {
    each_head(x, n_heads, table, |a, b, c, s| {
        for i in 0..a.len() {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * c[i] - x2 * s[i];
            b[i] = x2 * c[i] + x1 * s[i];
        }
    });
}

/// Backward of [`rope_forward`] in place: turns dL/d(rotated) into dL/d(input)
/// (the transpose rotation). dx: `[tokens, n_heads * head_dim]`.
pub fn rope_backward(dx: &mut [f32], n_heads: usize, table: &RopeTable) {
    each_head(dx, n_heads, table, |a, b, c, s| {
        for i in 0..a.len() {
            let (g1, g2) = (a[i], b[i]);
            a[i] = g1 * c[i] + g2 * s[i];
            b[i] = g2 * c[i] - g1 * s[i];
        }
    });
}
