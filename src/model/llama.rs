//! The Llama-family network (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2) in float32.

use super::Model;
use super::weights::{Layer, TensorSlice, Weights};
use crate::error::{Error, Result};
use crate::kernels::attention::{AttnLayout, AttnShape, attention_forward};
use crate::kernels::matmul::matmul_wt;
use crate::kernels::rmsnorm::rmsnorm_forward;
use crate::kernels::rope::{RopeTable, rope_forward};
use crate::kernels::swiglu::swiglu_forward;

/// Scratch activations of one layer for `t` tokens, reused across layers.
struct Scratch {
    xn: Vec<f32>,      // [T, hidden]
    q: Vec<f32>,       // [T, q_dim]
    k: Vec<f32>,       // [T, kv_dim]
    v: Vec<f32>,       // [T, kv_dim]
    attn: Vec<f32>,    // [T, q_dim]
    lse: Vec<f32>,     // [T, heads]
    inv_rms: Vec<f32>, // [T]
    proj: Vec<f32>,    // [T, hidden]
    gate: Vec<f32>,    // [T, intermediate]
    up: Vec<f32>,      // [T, intermediate]
    act: Vec<f32>,     // [T, intermediate]
}

impl Model {
    pub(crate) fn check_tokens(&self, tokens: &[u32], layout: &AttnLayout) -> Result<()> {
        let vocab = self.config.vocab_size;
        if let Some((position, &id)) = tokens.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
            return Err(Error::TokenOutOfVocabulary {
                id,
                position,
                vocab_size: vocab,
            });
        }
        if layout.n_tokens() != tokens.len() {
            return Err(Error::invalid(format!(
                "{} tokens but the attention layout covers {}",
                tokens.len(),
                layout.n_tokens()
            )));
        }
        let max = self.config.max_position_embeddings;
        if layout.max_len() > max {
            return Err(Error::SequenceTooLong {
                len: layout.max_len(),
                max,
            });
        }
        Ok(())
    }

    /// Embedding rows of `tokens`: [T, hidden].
    pub(crate) fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let e = self.weights.view(&self.weights.embed_tokens);
        let mut x = vec![0f32; tokens.len() * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            e.row(t as usize, row);
        }
        x
    }

    /// The final hidden states (after the last RMSNorm) of a packed batch: [T, hidden].
    pub fn hidden_states(&self, tokens: &[u32], layout: &AttnLayout) -> Result<Vec<f32>> {
        self.check_tokens(tokens, layout)?;
        let cfg = &self.config;
        let t = tokens.len();
        let mut x = self.embed(tokens);
        let table = RopeTable::new(&self.inv_freq, layout.positions());
        let mut s = Scratch {
            xn: vec![0.0; t * cfg.hidden_size],
            q: vec![0.0; t * cfg.q_dim()],
            k: vec![0.0; t * cfg.kv_dim()],
            v: vec![0.0; t * cfg.kv_dim()],
            attn: vec![0.0; t * cfg.q_dim()],
            lse: vec![0.0; t * cfg.num_attention_heads],
            inv_rms: vec![0.0; t],
            proj: vec![0.0; t * cfg.hidden_size],
            gate: vec![0.0; t * cfg.intermediate_size],
            up: vec![0.0; t * cfg.intermediate_size],
            act: vec![0.0; t * cfg.intermediate_size],
        };
        for layer in &self.weights.layers {
            self.layer_forward(layer, &mut x, layout, &table, &mut s);
        }
        let mut out = vec![0f32; t * cfg.hidden_size];
        rmsnorm_forward(&x, &self.weights.norm, cfg.rms_norm_eps, &mut out, &mut s.inv_rms);
        Ok(out)
    }

    fn layer_forward(&self, l: &Layer, x: &mut [f32], layout: &AttnLayout, table: &RopeTable, s: &mut Scratch) {
        let cfg = &self.config;
        let t = layout.n_tokens();
        let w = &self.weights;
        rmsnorm_forward(x, &l.input_layernorm, cfg.rms_norm_eps, &mut s.xn, &mut s.inv_rms);
        linear(w, &s.xn, t, &l.q_proj, l.q_bias.as_deref(), &mut s.q);
        linear(w, &s.xn, t, &l.k_proj, l.k_bias.as_deref(), &mut s.k);
        linear(w, &s.xn, t, &l.v_proj, l.v_bias.as_deref(), &mut s.v);
        rope_forward(&mut s.q, cfg.num_attention_heads, table);
        rope_forward(&mut s.k, cfg.num_key_value_heads, table);
        let shape = AttnShape {
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        };
        attention_forward(&s.q, &s.k, &s.v, layout, shape, &mut s.attn, &mut s.lse);
        linear(w, &s.attn, t, &l.o_proj, None, &mut s.proj);
        add_into(x, &s.proj);
        rmsnorm_forward(
            x,
            &l.post_attention_layernorm,
            cfg.rms_norm_eps,
            &mut s.xn,
            &mut s.inv_rms,
        );
        linear(w, &s.xn, t, &l.gate_proj, None, &mut s.gate);
        linear(w, &s.xn, t, &l.up_proj, None, &mut s.up);
        swiglu_forward(&s.gate, &s.up, &mut s.act);
        linear(w, &s.act, t, &l.down_proj, None, &mut s.proj);
        add_into(x, &s.proj);
    }
}

/// y[T, out] = x[T, in] · W^T (+ bias)
fn linear(w: &Weights, x: &[f32], t: usize, ws: &TensorSlice, bias: Option<&[f32]>, y: &mut [f32]) {
    matmul_wt(x, t, &w.view(ws), y);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(b.len()) {
            add_into(row, b);
        }
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
