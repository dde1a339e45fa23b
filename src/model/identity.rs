//! What names a base model in the adapters trained on it: a name that is safe to write
//! into a shared file (never a local path), and a fingerprint of its weights that loading
//! checks, so that an adapter is not silently applied to another base of the same shape.

use super::Model;
use sha2::{Digest, Sha256};

impl Model {
    /// The model's name: GGUF `general.name`, else the file's stem; an HF directory's
    /// folder name. Never a path.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `sha256:` and the hex digest of the architecture, the dimensions, and the first and
    /// last row of every matrix, dequantized to f32 in HF layout (plus every norm vector
    /// and bias). Equal for a GGUF file and the f32 safetensors `nudge convert` makes of it
    /// (the same values); different for another quantization, a fine-tune or another
    /// model. It reads two rows per matrix, so it costs little.
    pub fn fingerprint(&self) -> String {
        let c = &self.config;
        let mut h = Sha256::new();
        h.update(b"nudge-base-fingerprint-v1\0");
        h.update(c.architecture.gguf_name().as_bytes());
        for d in [
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        ] {
            h.update((d as u64).to_le_bytes());
        }
        let floats = |h: &mut Sha256, v: &[f32]| {
            for x in v {
                h.update(x.to_le_bytes());
            }
        };
        let mut row = Vec::new();
        for t in self.weights.matrices() {
            let w = self.weights.view(t);
            h.update((t.rows as u64).to_le_bytes());
            h.update((t.cols as u64).to_le_bytes());
            row.resize(t.cols, 0.0);
            for r in [0, t.rows.saturating_sub(1)] {
                w.row(r, &mut row);
                floats(&mut h, &row);
            }
        }
        floats(&mut h, &self.weights.norm);
        for l in &self.weights.layers {
            floats(&mut h, &l.input_layernorm);
            floats(&mut h, &l.post_attention_layernorm);
            for b in [&l.q_bias, &l.k_bias, &l.v_bias].into_iter().flatten() {
                floats(&mut h, b);
            }
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}
