//! The Llama-family network (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2) in float32,
//! with optional LoRA on its projections: the forward pass, and next to it the backward
//! pass that produces gradients for the adapter only (the base stays frozen).

use super::weights::{Layer, Proj, TensorSlice, Weights};
use super::{KvCache, Model};
use crate::adapter::{Adapter, LoraPair};
use crate::error::{Error, Result};
use crate::kernels::attention::{AttnLayout, AttnShape, attention_backward, attention_forward};
use crate::kernels::attention_cached::attention_cached;
use crate::kernels::lora::{dropout, lora_backward, lora_forward};
use crate::kernels::matmul::{matmul_w_acc, matmul_wt};
use crate::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::kernels::rope::{RopeTable, rope_backward, rope_forward};
use crate::kernels::swiglu::{swiglu_backward, swiglu_forward};
use rayon::prelude::*;

/// Adapter dropout during training: masks are a function of (seed, layer, projection).
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

/// The adapter (if any) a forward pass applies, with training-time dropout.
#[derive(Clone, Copy, Default)]
pub struct LoraCtx<'a> {
    pub adapter: Option<&'a Adapter>,
    pub dropout: Option<Dropout>,
}

impl LoraCtx<'_> {
    fn pair(&self, layer: usize, p: Proj) -> Option<(&LoraPair, usize, f32)> {
        let a = self.adapter?;
        a.get(layer, p).map(|pair| (pair, a.config.r, a.scale()))
    }
    fn dropout_seed(&self, layer: usize, p: Proj) -> Option<(f32, u64)> {
        self.dropout.filter(|d| d.p > 0.0).map(|d| {
            (
                d.p,
                d.seed ^ ((layer as u64) << 8 | p as u64).wrapping_mul(0x2545f4914f6cdd1d),
            )
        })
    }
}

/// Every intermediate of one layer for `T` tokens (the backward pass's inputs).
#[derive(Default)]
pub(crate) struct LayerActs {
    x_in: Vec<f32>,   // [T, hidden] layer input
    xn1: Vec<f32>,    // [T, hidden] input_layernorm output
    inv1: Vec<f32>,   // [T]
    q: Vec<f32>,      // [T, q_dim] after rope
    k: Vec<f32>,      // [T, kv_dim] after rope
    v: Vec<f32>,      // [T, kv_dim]
    attn: Vec<f32>,   // [T, q_dim]
    lse: Vec<f32>,    // [T, heads]
    x_mid: Vec<f32>,  // [T, hidden] residual after attention
    xn2: Vec<f32>,    // [T, hidden]
    inv2: Vec<f32>,   // [T]
    gate: Vec<f32>,   // [T, intermediate]
    up: Vec<f32>,     // [T, intermediate]
    act: Vec<f32>,    // [T, intermediate]
    proj: Vec<f32>,   // [T, hidden] scratch
    u: [Vec<f32>; 7], // per projection: [T, r] = x_lora Aᵀ
    xdrop: Vec<f32>,  // scratch for a dropped-out LoRA input
}

impl LayerActs {
    fn sized(model: &Model, t: usize) -> Self {
        let c = &model.config;
        let z = |n: usize| vec![0f32; n];
        LayerActs {
            x_in: Vec::new(),
            xn1: z(t * c.hidden_size),
            inv1: z(t),
            q: z(t * c.q_dim()),
            k: z(t * c.kv_dim()),
            v: z(t * c.kv_dim()),
            attn: z(t * c.q_dim()),
            lse: z(t * c.num_attention_heads),
            x_mid: z(t * c.hidden_size),
            xn2: z(t * c.hidden_size),
            inv2: z(t),
            gate: z(t * c.intermediate_size),
            up: z(t * c.intermediate_size),
            act: z(t * c.intermediate_size),
            proj: z(t * c.hidden_size),
            u: Default::default(),
            xdrop: Vec::new(),
        }
    }

    /// Bytes held by the activations the backward pass needs.
    pub(crate) fn bytes_for(model: &Model, t: usize, r: usize) -> usize {
        let c = &model.config;
        4 * t
            * (4 * c.hidden_size
                + 2
                + 2 * c.q_dim()
                + 2 * c.kv_dim()
                + c.num_attention_heads
                + 3 * c.intermediate_size
                + 7 * r)
    }
}

/// Gradient buffers of one layer's backward pass, reused from layer to layer.
#[derive(Default)]
struct BackScratch {
    d_act: Vec<f32>,
    d_gate: Vec<f32>,
    d_up: Vec<f32>,
    d_xn2: Vec<f32>,
    d_attn: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    d_xn1: Vec<f32>,
}

/// `v` resized to `n` zeros (its allocation is kept across calls).
fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.clear();
    v.resize(n, 0.0);
    v
}

/// What the backward pass needs from a training forward pass.
pub struct Tape {
    layout: AttnLayout,
    table: RopeTable,
    /// Per layer: all activations, or only the input (recomputed in the backward pass).
    layers: Vec<LayerActs>,
    keep: Vec<bool>,
    final_in: Vec<f32>,  // [T, hidden] input of the final norm
    final_inv: Vec<f32>, // [T]
    pub(crate) t: usize,
}

/// How much of the forward pass the training step keeps for the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Recompute {
    /// Keep every layer's activations (fastest, most memory).
    Never,
    /// Keep only each layer's input; recompute the rest during the backward pass.
    Always,
    /// Keep whole layers while they fit in this many bytes, recompute the others.
    Budget(usize),
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

    fn check_adapter(&self, lora: &LoraCtx) -> Result<()> {
        if let Some(a) = lora.adapter {
            a.check_fits(&self.config, std::path::Path::new("<adapter>"))?;
        }
        Ok(())
    }

    /// Embedding rows of `tokens`: `[T, hidden]`.
    pub(crate) fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let e = self.weights.view(&self.weights.embed_tokens);
        let mut x = vec![0f32; tokens.len() * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            e.row(t as usize, row);
        }
        x
    }

    /// The final hidden states (after the last RMSNorm) of a packed batch: `[T, hidden]`.
    pub fn hidden_states(&self, tokens: &[u32], layout: &AttnLayout) -> Result<Vec<f32>> {
        self.hidden_states_with(tokens, layout, LoraCtx::default())
    }

    /// [`Self::hidden_states`] with an adapter applied.
    pub fn hidden_states_with(&self, tokens: &[u32], layout: &AttnLayout, lora: LoraCtx) -> Result<Vec<f32>> {
        self.check_tokens(tokens, layout)?;
        self.check_adapter(&lora)?;
        let t = tokens.len();
        let mut x = self.embed(tokens);
        let table = RopeTable::new(&self.inv_freq, layout.positions());
        let mut s = LayerActs::sized(self, t);
        for (li, layer) in self.weights.layers.iter().enumerate() {
            self.layer_forward(li, layer, &mut x, layout, &table, &lora, &mut s);
        }
        let mut out = vec![0f32; t * self.config.hidden_size];
        rmsnorm_forward(&x, &self.weights.norm, self.config.rms_norm_eps, &mut out, &mut s.inv1);
        Ok(out)
    }

    /// A training forward pass: final hidden states `[T, hidden]` and the tape for
    /// [`Self::backward`].
    pub fn forward_train(
        &self,
        tokens: &[u32],
        layout: &AttnLayout,
        lora: LoraCtx,
        recompute: Recompute,
    ) -> Result<(Vec<f32>, Tape)> {
        self.check_tokens(tokens, layout)?;
        self.check_adapter(&lora)?;
        let t = tokens.len();
        let n_layers = self.config.num_hidden_layers;
        let r = lora.adapter.map_or(0, |a| a.config.r);
        let per_layer = LayerActs::bytes_for(self, t, r);
        let kept = match recompute {
            Recompute::Never => n_layers,
            Recompute::Always => 0,
            Recompute::Budget(b) => (b / per_layer.max(1)).min(n_layers),
        };
        // The last layers are kept: their backward runs first, before any recomputation.
        let keep: Vec<bool> = (0..n_layers).map(|l| l >= n_layers - kept).collect();
        let table = RopeTable::new(&self.inv_freq, layout.positions());
        let mut x = self.embed(tokens);
        let mut layers = Vec::with_capacity(n_layers);
        let mut scratch = LayerActs::sized(self, t);
        for (li, layer) in self.weights.layers.iter().enumerate() {
            let x_in = x.clone();
            if keep[li] {
                let mut acts = LayerActs::sized(self, t);
                self.layer_forward(li, layer, &mut x, layout, &table, &lora, &mut acts);
                acts.x_in = x_in;
                layers.push(acts);
            } else {
                self.layer_forward(li, layer, &mut x, layout, &table, &lora, &mut scratch);
                layers.push(LayerActs {
                    x_in,
                    ..Default::default()
                });
            }
        }
        let mut out = vec![0f32; t * self.config.hidden_size];
        let mut final_inv = vec![0f32; t];
        rmsnorm_forward(
            &x,
            &self.weights.norm,
            self.config.rms_norm_eps,
            &mut out,
            &mut final_inv,
        );
        let tape = Tape {
            layout: layout.clone(),
            table,
            layers,
            keep,
            final_in: x,
            final_inv,
            t,
        };
        Ok((out, tape))
    }

    /// Adds into `grads` (an adapter-shaped gradient buffer) the gradient of the loss whose
    /// derivative with respect to the final hidden states is `dh`: `[T, hidden]`.
    pub fn backward(&self, tape: Tape, lora: LoraCtx, dh: &[f32], grads: &mut Adapter) {
        let Tape {
            layout,
            table,
            mut layers,
            keep,
            final_in,
            final_inv,
            t,
        } = tape;
        let h = self.config.hidden_size;
        let mut dx = vec![0f32; t * h];
        rmsnorm_backward(&final_in, &self.weights.norm, &final_inv, dh, &mut dx);
        let mut scratch = BackScratch::default();
        let mut spare: Option<LayerActs> = None;
        for li in (0..self.config.num_hidden_layers).rev() {
            let layer = &self.weights.layers[li];
            let mut acts = std::mem::take(&mut layers[li]);
            if !keep[li] {
                // Recomputed layers share one set of activation buffers.
                let x_in = std::mem::take(&mut acts.x_in);
                acts = spare.take().unwrap_or_else(|| LayerActs::sized(self, t));
                let mut x = x_in.clone();
                self.layer_forward(li, layer, &mut x, &layout, &table, &lora, &mut acts);
                acts.x_in = x_in;
            }
            self.layer_backward(li, layer, &acts, &layout, &table, &lora, &mut dx, grads, &mut scratch);
            if !keep[li] {
                spare = Some(acts);
            }
        }
    }

    /// One decoder layer in place on the residual stream x: `[T, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        li: usize,
        l: &Layer,
        x: &mut [f32],
        layout: &AttnLayout,
        table: &RopeTable,
        lora: &LoraCtx,
        s: &mut LayerActs,
    ) {
        let cfg = &self.config;
        let t = layout.n_tokens();
        let w = &self.weights;
        let eps = cfg.rms_norm_eps;
        rmsnorm_forward(x, &l.input_layernorm, eps, &mut s.xn1, &mut s.inv1);
        for (p, bias) in [(Proj::Q, &l.q_bias), (Proj::K, &l.k_bias), (Proj::V, &l.v_bias)] {
            let mut y = std::mem::take(match p {
                Proj::Q => &mut s.q,
                Proj::K => &mut s.k,
                _ => &mut s.v,
            });
            self.linear_forward(
                li,
                p,
                w,
                &s.xn1,
                t,
                l.proj(p),
                bias.as_deref(),
                lora,
                &mut s.u,
                &mut s.xdrop,
                &mut y,
            );
            match p {
                Proj::Q => s.q = y,
                Proj::K => s.k = y,
                _ => s.v = y,
            }
        }
        rope_forward(&mut s.q, cfg.num_attention_heads, table);
        rope_forward(&mut s.k, cfg.num_key_value_heads, table);
        attention_forward(&s.q, &s.k, &s.v, layout, self.attn_shape(), &mut s.attn, &mut s.lse);
        let mut proj = std::mem::take(&mut s.proj);
        self.linear_forward(
            li,
            Proj::O,
            w,
            &s.attn,
            t,
            &l.o_proj,
            None,
            lora,
            &mut s.u,
            &mut s.xdrop,
            &mut proj,
        );
        add_into(x, &proj);
        s.x_mid.copy_from_slice(x);
        rmsnorm_forward(x, &l.post_attention_layernorm, eps, &mut s.xn2, &mut s.inv2);
        let (mut gate, mut up) = (std::mem::take(&mut s.gate), std::mem::take(&mut s.up));
        self.linear_forward(
            li,
            Proj::Gate,
            w,
            &s.xn2,
            t,
            &l.gate_proj,
            None,
            lora,
            &mut s.u,
            &mut s.xdrop,
            &mut gate,
        );
        self.linear_forward(
            li,
            Proj::Up,
            w,
            &s.xn2,
            t,
            &l.up_proj,
            None,
            lora,
            &mut s.u,
            &mut s.xdrop,
            &mut up,
        );
        swiglu_forward(&gate, &up, &mut s.act);
        (s.gate, s.up) = (gate, up);
        self.linear_forward(
            li,
            Proj::Down,
            w,
            &s.act,
            t,
            &l.down_proj,
            None,
            lora,
            &mut s.u,
            &mut s.xdrop,
            &mut proj,
        );
        add_into(x, &proj);
        s.proj = proj;
    }

    /// Backward of [`Self::layer_forward`]: dx: `[T, hidden]` holds dL/d(layer output) and
    /// becomes dL/d(layer input); adapter gradients are added into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        li: usize,
        l: &Layer,
        a: &LayerActs,
        layout: &AttnLayout,
        table: &RopeTable,
        lora: &LoraCtx,
        dx: &mut [f32],
        grads: &mut Adapter,
        s: &mut BackScratch,
    ) {
        let cfg = &self.config;
        let t = layout.n_tokens();
        let w = &self.weights;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        // MLP: out = x_mid + down(silu(gate(xn2)) * up(xn2))
        let d_act = zeroed(&mut s.d_act, t * i);
        self.linear_backward(li, Proj::Down, w, &a.act, t, &l.down_proj, lora, &a.u, dx, d_act, grads);
        let (d_gate, d_up) = (zeroed(&mut s.d_gate, t * i), zeroed(&mut s.d_up, t * i));
        swiglu_backward(&a.gate, &a.up, d_act, d_gate, d_up);
        let d_xn2 = zeroed(&mut s.d_xn2, t * h);
        self.linear_backward(
            li,
            Proj::Gate,
            w,
            &a.xn2,
            t,
            &l.gate_proj,
            lora,
            &a.u,
            d_gate,
            d_xn2,
            grads,
        );
        self.linear_backward(li, Proj::Up, w, &a.xn2, t, &l.up_proj, lora, &a.u, d_up, d_xn2, grads);
        // dx (dL/d x_mid) = residual + norm path
        rmsnorm_backward(&a.x_mid, &l.post_attention_layernorm, &a.inv2, d_xn2, dx);
        // Attention: x_mid = x_in + o(attn(q, k, v))
        let d_attn = zeroed(&mut s.d_attn, t * cfg.q_dim());
        self.linear_backward(li, Proj::O, w, &a.attn, t, &l.o_proj, lora, &a.u, dx, d_attn, grads);
        let (dq, dk, dv) = (
            zeroed(&mut s.dq, t * cfg.q_dim()),
            zeroed(&mut s.dk, t * cfg.kv_dim()),
            zeroed(&mut s.dv, t * cfg.kv_dim()),
        );
        attention_backward(
            &a.q,
            &a.k,
            &a.v,
            &a.attn,
            &a.lse,
            d_attn,
            layout,
            self.attn_shape(),
            dq,
            dk,
            dv,
        );
        rope_backward(dq, cfg.num_attention_heads, table);
        rope_backward(dk, cfg.num_key_value_heads, table);
        let d_xn1 = zeroed(&mut s.d_xn1, t * h);
        self.linear_backward(li, Proj::Q, w, &a.xn1, t, &l.q_proj, lora, &a.u, dq, d_xn1, grads);
        self.linear_backward(li, Proj::K, w, &a.xn1, t, &l.k_proj, lora, &a.u, dk, d_xn1, grads);
        self.linear_backward(li, Proj::V, w, &a.xn1, t, &l.v_proj, lora, &a.u, dv, d_xn1, grads);
        rmsnorm_backward(&a.x_in, &l.input_layernorm, &a.inv1, d_xn1, dx);
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.config.num_attention_heads,
            n_kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// `y[T, out]` = `x[T, in]` · Wᵀ (+ bias) (+ scale · (drop(x) Aᵀ) Bᵀ, keeping drop(x) Aᵀ in u).
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &self,
        li: usize,
        p: Proj,
        w: &Weights,
        x: &[f32],
        t: usize,
        ws: &TensorSlice,
        bias: Option<&[f32]>,
        lora: &LoraCtx,
        u: &mut [Vec<f32>; 7],
        xdrop: &mut Vec<f32>,
        y: &mut [f32],
    ) {
        matmul_wt(x, t, &w.view(ws), y);
        if let Some(b) = bias {
            for row in y.chunks_exact_mut(b.len()) {
                add_into(row, b);
            }
        }
        if let Some((pair, r, scale)) = lora.pair(li, p) {
            let ui = &mut u[p as usize];
            ui.resize(t * r, 0.0);
            let xin = match lora.dropout_seed(li, p) {
                Some((prob, seed)) => {
                    xdrop.resize(x.len(), 0.0);
                    dropout(x, prob, seed, xdrop);
                    &xdrop[..]
                }
                None => x,
            };
            lora_forward(xin, t, &pair.a, &pair.b, r, scale, ui, y);
        }
    }

    /// `dx[T, in]` += dy · W (+ the LoRA branch's input gradient); adapter gradients into grads.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        li: usize,
        p: Proj,
        w: &Weights,
        x: &[f32],
        t: usize,
        ws: &TensorSlice,
        lora: &LoraCtx,
        u: &[Vec<f32>; 7],
        dy: &[f32],
        dx: &mut [f32],
        grads: &mut Adapter,
    ) {
        matmul_w_acc(dy, t, &w.view(ws), dx);
        let Some((pair, r, scale)) = lora.pair(li, p) else {
            return;
        };
        let g = grads.layers[li][p as usize]
            .as_mut()
            .expect("gradient buffer shaped like the adapter");
        match lora.dropout_seed(li, p) {
            None => lora_backward(
                x,
                t,
                &pair.a,
                &pair.b,
                r,
                scale,
                &u[p as usize],
                dy,
                &mut g.a,
                &mut g.b,
                dx,
            ),
            Some((prob, seed)) => {
                let mut xd = vec![0f32; x.len()];
                dropout(x, prob, seed, &mut xd);
                let mut dxd = vec![0f32; x.len()];
                lora_backward(
                    &xd,
                    t,
                    &pair.a,
                    &pair.b,
                    r,
                    scale,
                    &u[p as usize],
                    dy,
                    &mut g.a,
                    &mut g.b,
                    &mut dxd,
                );
                // d drop(x)/dx is the same mask and scale.
                dropout(&dxd.clone(), prob, seed, &mut dxd);
                add_into(dx, &dxd);
            }
        }
    }
}

// Incremental forward for generation: new tokens run against the keys and values of the
// past ones, kept in a KvCache, instead of recomputing the whole sequence. One call may
// carry several sequences (a batch of replies), each with its own cache: their rows share
// the projections' matrix products, attention reads each sequence's own cache. The
// kernels are batch-invariant, so a sequence gets the same bits alone or in a batch.

/// One sequence of a batched cached forward ([`Model::extend_batch`]): `tokens` run at
/// positions `cache.len()..` of `cache`.
pub struct CachedSeq<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

impl Model {
    /// Runs `tokens` after the `cache.len()` tokens already in `cache` (positions
    /// `cache.len()..`), appends their keys and values, and returns their final hidden
    /// states (after the last RMSNorm): `[n, hidden]`. An adapter must stay the same for
    /// every call on one cache. On error the cache is unchanged.
    pub fn extend(&self, tokens: &[u32], cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Vec<f32>> {
        let lora = LoraCtx { adapter, dropout: None };
        self.check_adapter(&lora)?;
        let start = self.check_cached(tokens, cache)?;
        self.forward_cached(&mut [CachedSeq { tokens, cache }], &[start], &lora)
    }

    /// [`Self::extend`] for several sequences at once, each with its own cache (distinct
    /// caches, possibly of different lengths): the hidden states of every sequence's new
    /// tokens, one after the other: [Σ n, hidden]. Each sequence's rows are bit-identical
    /// to what [`Self::extend`] gives it alone. An error names the sequence
    /// ([`Error::Request`]) and leaves every cache unchanged.
    pub fn extend_batch(&self, seqs: &mut [CachedSeq<'_>], adapter: Option<&Adapter>) -> Result<Vec<f32>> {
        let lora = LoraCtx { adapter, dropout: None };
        self.check_adapter(&lora)?;
        let starts = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| self.check_cached(s.tokens, s.cache).map_err(|e| e.for_request(i)))
            .collect::<Result<Vec<_>>>()?;
        self.forward_cached(seqs, &starts, &lora)
    }

    /// Logits of the next token after `tokens` (appended to `cache`): `[vocab]`.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::invalid("prefill needs at least one token"));
        }
        let h = self.extend(tokens, cache, adapter)?;
        let hidden = self.config.hidden_size;
        Ok(self.logits(&h[h.len() - hidden..]))
    }

    /// Logits of the token after `token`, which is appended to `cache`: `[vocab]`.
    pub fn decode_step(&self, token: u32, cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Vec<f32>> {
        self.prefill(&[token], cache, adapter)
    }

    /// One decode step of a batch: `tokens[i]` is appended to `caches[i]`; returns the
    /// logits of each row's next token: `[B, vocab]`, row `i` bit-identical to
    /// [`Self::decode_step`] of `tokens[i]` on `caches[i]` alone. An error names the row
    /// ([`Error::Request`]) and leaves every cache unchanged.
    pub fn decode_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        adapter: Option<&Adapter>,
    ) -> Result<Vec<f32>> {
        if tokens.len() != caches.len() {
            return Err(Error::invalid(format!(
                "decode_batch: {} tokens for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        let mut seqs: Vec<CachedSeq> = tokens
            .iter()
            .zip(caches.iter_mut())
            .map(|(t, c)| CachedSeq {
                tokens: std::slice::from_ref(t),
                cache: c,
            })
            .collect();
        let h = self.extend_batch(&mut seqs, adapter)?;
        Ok(self.logits(&h))
    }

    /// Checks `tokens` can run after `cache`; returns their first position.
    fn check_cached(&self, tokens: &[u32], cache: &KvCache) -> Result<usize> {
        cache.check_fits(&self.config)?;
        let start = cache.len();
        let vocab = self.config.vocab_size;
        if let Some((i, &id)) = tokens.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
            return Err(Error::TokenOutOfVocabulary {
                id,
                position: start + i,
                vocab_size: vocab,
            });
        }
        let end = start
            .checked_add(tokens.len())
            .ok_or_else(|| Error::invalid("sequence length overflows"))?;
        let max = self.config.max_position_embeddings;
        if end > max {
            return Err(Error::SequenceTooLong { len: end, max });
        }
        u32::try_from(end).map_err(|_| Error::invalid("position overflows u32"))?;
        Ok(start)
    }

    /// The cached forward of checked sequences (`starts[i]` = `seqs[i].cache.len()`).
    fn forward_cached(&self, seqs: &mut [CachedSeq<'_>], starts: &[usize], lora: &LoraCtx) -> Result<Vec<f32>> {
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        for (seq, &start) in seqs.iter_mut().zip(starts) {
            let n = seq.tokens.len();
            tokens.extend_from_slice(seq.tokens);
            positions.extend((start..start + n).map(|p| p as u32));
            seq.cache.reserve(n);
        }
        let n = tokens.len();
        let table = RopeTable::new(&self.inv_freq, &positions);
        let mut x = self.embed(&tokens);
        let mut s = LayerActs::sized(self, n);
        for (li, layer) in self.weights.layers.iter().enumerate() {
            self.layer_forward_cached(li, layer, &mut x, seqs, starts, &table, lora, &mut s);
        }
        for (seq, &start) in seqs.iter_mut().zip(starts) {
            seq.cache.set_len(start + seq.tokens.len());
        }
        let mut out = vec![0f32; n * self.config.hidden_size];
        rmsnorm_forward(&x, &self.weights.norm, self.config.rms_norm_eps, &mut out, &mut s.inv1);
        Ok(out)
    }

    /// [`Self::layer_forward`] for the new tokens of `seqs` (their rows one after the other
    /// in x: [Σ n, hidden]; sequence `i`'s at positions `starts[i]..`): the projections and
    /// the MLP run on all rows at once; each sequence's keys and values are appended to
    /// layer `li` of its cache and its queries attend to that cache.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward_cached(
        &self,
        li: usize,
        l: &Layer,
        x: &mut [f32],
        seqs: &mut [CachedSeq<'_>],
        starts: &[usize],
        table: &RopeTable,
        lora: &LoraCtx,
        s: &mut LayerActs,
    ) {
        let cfg = &self.config;
        let n = x.len() / cfg.hidden_size;
        let w = &self.weights;
        let eps = cfg.rms_norm_eps;
        rmsnorm_forward(x, &l.input_layernorm, eps, &mut s.xn1, &mut s.inv1);
        let linear =
            |p: Proj, input: &[f32], bias: Option<&[f32]>, y: &mut [f32], u: &mut [Vec<f32>; 7], xd: &mut Vec<f32>| {
                self.linear_forward(li, p, w, input, n, l.proj(p), bias, lora, u, xd, y)
            };
        linear(Proj::Q, &s.xn1, l.q_bias.as_deref(), &mut s.q, &mut s.u, &mut s.xdrop);
        linear(Proj::K, &s.xn1, l.k_bias.as_deref(), &mut s.k, &mut s.u, &mut s.xdrop);
        linear(Proj::V, &s.xn1, l.v_bias.as_deref(), &mut s.v, &mut s.u, &mut s.xdrop);
        rope_forward(&mut s.q, cfg.num_attention_heads, table);
        rope_forward(&mut s.k, cfg.num_key_value_heads, table);
        let (qw, kvw) = (cfg.q_dim(), cfg.kv_dim());
        // Each sequence's query rows and attention output rows.
        let mut parts = Vec::with_capacity(seqs.len());
        let (mut q, mut out) = (&s.q[..], &mut s.attn[..]);
        let mut row = 0;
        for (seq, &start) in seqs.iter_mut().zip(starts) {
            let m = seq.tokens.len();
            let rows = row * kvw..(row + m) * kvw;
            seq.cache.append(li, start, &s.k[rows.clone()], &s.v[rows]);
            let (qs, qrest) = q.split_at(m * qw);
            let (os, orest) = std::mem::take(&mut out).split_at_mut(m * qw);
            (q, out) = (qrest, orest);
            parts.push((&*seq.cache, start, qs, os));
            row += m;
        }
        let shape = self.attn_shape();
        parts.into_par_iter().for_each(|(cache, start, q, out)| {
            let (k, v) = cache.layer(li).expect("the cache fits the model");
            attention_cached(q, k, v, start, shape, out);
        });
        linear(Proj::O, &s.attn, None, &mut s.proj, &mut s.u, &mut s.xdrop);
        add_into(x, &s.proj);
        rmsnorm_forward(x, &l.post_attention_layernorm, eps, &mut s.xn2, &mut s.inv2);
        linear(Proj::Gate, &s.xn2, None, &mut s.gate, &mut s.u, &mut s.xdrop);
        linear(Proj::Up, &s.xn2, None, &mut s.up, &mut s.u, &mut s.xdrop);
        swiglu_forward(&s.gate, &s.up, &mut s.act);
        linear(Proj::Down, &s.act, None, &mut s.proj, &mut s.u, &mut s.xdrop);
        add_into(x, &s.proj);
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
