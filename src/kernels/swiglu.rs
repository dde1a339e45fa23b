//! SwiGLU activation of the Llama MLP: h = silu(gate) * up.

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// gate, up, h: [tokens, intermediate].
pub fn swiglu_forward(gate: &[f32], up: &[f32], h: &mut [f32]) {
    for ((o, &g), &u) in h.iter_mut().zip(gate).zip(up) {
        *o = g * sigmoid(g) * u;
    }
}

/// Adds dL/dgate and dL/dup given dL/dh. All [tokens, intermediate].
pub fn swiglu_backward(gate: &[f32], up: &[f32], dh: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    for ((((dg, du), &g), &u), &d) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(dh) {
        let s = sigmoid(g);
        let silu = g * s;
        *du += d * silu;
        // d silu/dg = s + g*s*(1-s)
        *dg += d * u * (s + g * s * (1.0 - s));
    }
}
