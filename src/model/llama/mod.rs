//! The Llama-family network (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2) in float32,
//! with optional LoRA on its projections: the forward pass, and next to it the backward
//! pass that produces gradients for the adapter only (the base stays frozen).

//!
//! One decoder-layer body ([`Model::layer_forward`]) serves every pass; only its attention
//! step differs ([`Attend`]): a packed batch of whole sequences (training, scoring), or new
//! tokens against per-sequence KV caches (generation, in [`cached`]). The projections go
//! through [`linear::Linear`].

mod cached;
mod linear;

pub use cached::CachedSeq;

use super::Model;
use super::weights::Proj;
use crate::adapter::Adapter;
use crate::buffers;
use crate::cancel::{self, Cancel};
use crate::error::{Error, Result};
use crate::kernels::attention::{AttnGrads, AttnLayout, AttnSaved, AttnShape, attention_backward, attention_forward};
use crate::kernels::attention_cached::attention_cached;
use crate::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::kernels::rope::{RopeTable, rope_backward, rope_forward};
use crate::kernels::swiglu::{swiglu_backward, swiglu_forward};
use linear::LoraActs;
use rayon::prelude::*;

/// Adapter dropout during training: masks are a function of (seed, layer, projection).
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
}

/// The adapter (if any) a forward pass applies, with training-time dropout, and the
/// caller's flag to stop it between layers.
#[derive(Clone, Copy, Default)]
pub struct LoraCtx<'a> {
    pub adapter: Option<&'a Adapter>,
    pub dropout: Option<Dropout>,
    pub cancel: Option<Cancel<'a>>,
}

impl LoraCtx<'_> {
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
    x_in: Vec<f32>,  // [T, hidden] layer input
    xn1: Vec<f32>,   // [T, hidden] input_layernorm output
    inv1: Vec<f32>,  // [T]
    q: Vec<f32>,     // [T, q_dim] after rope
    k: Vec<f32>,     // [T, kv_dim] after rope
    v: Vec<f32>,     // [T, kv_dim]
    attn: Vec<f32>,  // [T, q_dim]
    lse: Vec<f32>,   // [T, heads]
    x_mid: Vec<f32>, // [T, hidden] residual after attention
    xn2: Vec<f32>,   // [T, hidden]
    inv2: Vec<f32>,  // [T]
    gate: Vec<f32>,  // [T, intermediate]
    up: Vec<f32>,    // [T, intermediate]
    act: Vec<f32>,   // [T, intermediate]
    proj: Vec<f32>,  // [T, hidden] scratch
    lora: LoraActs,  // the LoRA branches' intermediates
}

impl LayerActs {
    fn sized(model: &Model, t: usize) -> Result<Self> {
        let c = &model.config;
        let z = |n: usize| buffers::zeros::<f32>(n, "a layer's activations");
        Ok(LayerActs {
            x_in: Vec::new(),
            xn1: z(t * c.hidden_size)?,
            inv1: z(t)?,
            q: z(t * c.q_dim())?,
            k: z(t * c.kv_dim())?,
            v: z(t * c.kv_dim())?,
            attn: z(t * c.q_dim())?,
            lse: z(t * c.num_attention_heads)?,
            x_mid: z(t * c.hidden_size)?,
            xn2: z(t * c.hidden_size)?,
            inv2: z(t)?,
            gate: z(t * c.intermediate_size)?,
            up: z(t * c.intermediate_size)?,
            act: z(t * c.intermediate_size)?,
            proj: z(t * c.hidden_size)?,
            lora: LoraActs::default(),
        })
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

/// What the backward pass of every layer of a packed batch shares.
struct BackPass<'a> {
    layout: &'a AttnLayout,
    table: &'a RopeTable,
    lora: &'a LoraCtx<'a>,
}

/// How the queries of one decoder layer attend: the one step in which the packed and the
/// cached forward differ.
enum Attend<'s, 'c> {
    /// A packed batch of whole sequences (training, scoring): each token attends to the
    /// earlier tokens of its sequence in the batch; the log-sum-exps are kept in
    /// [`LayerActs`] for the backward pass.
    Packed(&'s AttnLayout),
    /// The new tokens of sequences with KV caches (generation), their rows one after the
    /// other: sequence `i`'s at positions `starts[i]..`. Each sequence's keys and values
    /// are appended to its cache and its queries attend to that cache.
    Cached {
        seqs: &'s mut [CachedSeq<'c>],
        starts: &'s [usize],
    },
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
    pub(crate) fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let h = self.config.hidden_size;
        let e = self.weights.view(&self.weights.embed_tokens);
        let mut x = buffers::zeros::<f32>(tokens.len() * h, "the hidden states")?;
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            e.row(t as usize, row);
        }
        Ok(x)
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
        let mut x = self.embed(tokens)?;
        let table = RopeTable::new(&self.inv_freq, layout.positions());
        let mut s = LayerActs::sized(self, t)?;
        for li in 0..self.config.num_hidden_layers {
            cancel::check(lora.cancel)?;
            self.layer_forward(li, &mut x, &mut Attend::Packed(layout), &table, &lora, &mut s);
        }
        let mut out = buffers::zeros::<f32>(t * self.config.hidden_size, "the final hidden states")?;
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
        let mut x = self.embed(tokens)?;
        let mut layers = Vec::with_capacity(n_layers);
        let mut scratch = LayerActs::sized(self, t)?;
        for (li, &kept_here) in keep.iter().enumerate() {
            let x_in = x.clone();
            if kept_here {
                let mut acts = LayerActs::sized(self, t)?;
                self.layer_forward(li, &mut x, &mut Attend::Packed(layout), &table, &lora, &mut acts);
                acts.x_in = x_in;
                layers.push(acts);
            } else {
                self.layer_forward(li, &mut x, &mut Attend::Packed(layout), &table, &lora, &mut scratch);
                layers.push(LayerActs {
                    x_in,
                    ..Default::default()
                });
            }
        }
        let mut out = buffers::zeros::<f32>(t * self.config.hidden_size, "the final hidden states")?;
        let mut final_inv = buffers::zeros::<f32>(t, "the final norm's scales")?;
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
    pub fn backward(&self, tape: Tape, lora: LoraCtx, dh: &[f32], grads: &mut Adapter) -> Result<()> {
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
        let mut dx = buffers::zeros::<f32>(t * h, "the hidden states' gradient")?;
        rmsnorm_backward(&final_in, &self.weights.norm, &final_inv, dh, &mut dx);
        let mut scratch = BackScratch::default();
        let mut spare: Option<LayerActs> = None;
        let pass = BackPass {
            layout: &layout,
            table: &table,
            lora: &lora,
        };
        for li in (0..self.config.num_hidden_layers).rev() {
            let mut acts = std::mem::take(&mut layers[li]);
            if !keep[li] {
                // Recomputed layers share one set of activation buffers.
                let x_in = std::mem::take(&mut acts.x_in);
                acts = match spare.take() {
                    Some(acts) => acts,
                    None => LayerActs::sized(self, t)?,
                };
                let mut x = x_in.clone();
                self.layer_forward(li, &mut x, &mut Attend::Packed(&layout), &table, &lora, &mut acts);
                acts.x_in = x_in;
            }
            self.layer_backward(li, &acts, &pass, &mut dx, grads, &mut scratch);
            if !keep[li] {
                spare = Some(acts);
            }
        }
        Ok(())
    }

    /// One decoder layer in place on the residual stream x: `[T, hidden]`, its
    /// intermediates left in `s`. `attend` is the attention step; everything else is the
    /// same for every pass, so generation gets the bits of the full forward.
    fn layer_forward(
        &self,
        li: usize,
        x: &mut [f32],
        attend: &mut Attend,
        table: &RopeTable,
        lora: &LoraCtx,
        s: &mut LayerActs,
    ) {
        let cfg = &self.config;
        let l = &self.weights.layers[li];
        let eps = cfg.rms_norm_eps;
        let linear = |p: Proj| self.linear(lora, li, p);
        rmsnorm_forward(x, &l.input_layernorm, eps, &mut s.xn1, &mut s.inv1);
        linear(Proj::Q).forward(&s.xn1, &mut s.q, &mut s.lora);
        linear(Proj::K).forward(&s.xn1, &mut s.k, &mut s.lora);
        linear(Proj::V).forward(&s.xn1, &mut s.v, &mut s.lora);
        rope_forward(&mut s.q, cfg.num_attention_heads, table);
        rope_forward(&mut s.k, cfg.num_key_value_heads, table);
        self.attend(li, attend, s);
        linear(Proj::O).forward(&s.attn, &mut s.proj, &mut s.lora);
        add_into(x, &s.proj);
        s.x_mid.copy_from_slice(x);
        rmsnorm_forward(x, &l.post_attention_layernorm, eps, &mut s.xn2, &mut s.inv2);
        linear(Proj::Gate).forward(&s.xn2, &mut s.gate, &mut s.lora);
        linear(Proj::Up).forward(&s.xn2, &mut s.up, &mut s.lora);
        swiglu_forward(&s.gate, &s.up, &mut s.act);
        linear(Proj::Down).forward(&s.act, &mut s.proj, &mut s.lora);
        add_into(x, &s.proj);
    }

    /// The attention step of layer `li`: `s.attn` from `s.q`, `s.k`, `s.v` (after rope).
    fn attend(&self, li: usize, attend: &mut Attend, s: &mut LayerActs) {
        let shape = self.attn_shape();
        let (seqs, starts) = match attend {
            Attend::Packed(layout) => {
                attention_forward(&s.q, &s.k, &s.v, layout, shape, &mut s.attn, &mut s.lse);
                return;
            }
            Attend::Cached { seqs, starts } => (seqs, starts),
        };
        let (qw, kvw) = (self.config.q_dim(), self.config.kv_dim());
        // Each sequence's query rows and attention output rows.
        let mut parts = Vec::with_capacity(seqs.len());
        let (mut q, mut out) = (&s.q[..], &mut s.attn[..]);
        let mut row = 0;
        for (seq, &start) in seqs.iter_mut().zip(starts.iter()) {
            let m = seq.tokens.len();
            let rows = row * kvw..(row + m) * kvw;
            seq.cache.append(li, start, &s.k[rows.clone()], &s.v[rows]);
            let (qs, qrest) = q.split_at(m * qw);
            let (os, orest) = std::mem::take(&mut out).split_at_mut(m * qw);
            (q, out) = (qrest, orest);
            parts.push((&*seq.cache, start, qs, os));
            row += m;
        }
        parts.into_par_iter().for_each(|(cache, start, q, out)| {
            let (k, v) = cache.layer(li).expect("the cache fits the model");
            attention_cached(q, k, v, start, shape, out);
        });
    }

    /// Backward of [`Self::layer_forward`] over a packed batch: dx: `[T, hidden]` holds
    /// dL/d(layer output) and becomes dL/d(layer input); adapter gradients are added into
    /// `grads`.
    fn layer_backward(
        &self,
        li: usize,
        a: &LayerActs,
        pass: &BackPass,
        dx: &mut [f32],
        grads: &mut Adapter,
        s: &mut BackScratch,
    ) {
        let cfg = &self.config;
        let l = &self.weights.layers[li];
        let t = pass.layout.n_tokens();
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let linear = |p: Proj| self.linear(pass.lora, li, p);
        let u = &a.lora;
        // MLP: out = x_mid + down(silu(gate(xn2)) * up(xn2))
        let d_act = zeroed(&mut s.d_act, t * i);
        linear(Proj::Down).backward(&a.act, u, dx, d_act, grads);
        let (d_gate, d_up) = (zeroed(&mut s.d_gate, t * i), zeroed(&mut s.d_up, t * i));
        swiglu_backward(&a.gate, &a.up, d_act, d_gate, d_up);
        let d_xn2 = zeroed(&mut s.d_xn2, t * h);
        linear(Proj::Gate).backward(&a.xn2, u, d_gate, d_xn2, grads);
        linear(Proj::Up).backward(&a.xn2, u, d_up, d_xn2, grads);
        // dx (dL/d x_mid) = residual + norm path
        rmsnorm_backward(&a.x_mid, &l.post_attention_layernorm, &a.inv2, d_xn2, dx);
        // Attention: x_mid = x_in + o(attn(q, k, v))
        let d_attn = zeroed(&mut s.d_attn, t * cfg.q_dim());
        linear(Proj::O).backward(&a.attn, u, dx, d_attn, grads);
        let (dq, dk, dv) = (
            zeroed(&mut s.dq, t * cfg.q_dim()),
            zeroed(&mut s.dk, t * cfg.kv_dim()),
            zeroed(&mut s.dv, t * cfg.kv_dim()),
        );
        let saved = AttnSaved {
            q: &a.q,
            k: &a.k,
            v: &a.v,
            out: &a.attn,
            lse: &a.lse,
        };
        let d_qkv = AttnGrads {
            dq: &mut *dq,
            dk: &mut *dk,
            dv: &mut *dv,
        };
        attention_backward(saved, d_attn, pass.layout, self.attn_shape(), d_qkv);
        rope_backward(dq, cfg.num_attention_heads, pass.table);
        rope_backward(dk, cfg.num_key_value_heads, pass.table);
        let d_xn1 = zeroed(&mut s.d_xn1, t * h);
        linear(Proj::Q).backward(&a.xn1, u, dq, d_xn1, grads);
        linear(Proj::K).backward(&a.xn1, u, dk, d_xn1, grads);
        linear(Proj::V).backward(&a.xn1, u, dv, d_xn1, grads);
        rmsnorm_backward(&a.x_in, &l.input_layernorm, &a.inv1, d_xn1, dx);
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.config.num_attention_heads,
            n_kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
