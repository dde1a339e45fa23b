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
use crate::buffers::{self, add_into};
use crate::cancel::{self, Cancel};
use crate::error::{Error, Result};
use crate::kernels::attention::{
    AttnGrads, AttnInputs, AttnLayout, AttnShape, attention_backward_with_delta, attention_delta, attention_forward,
};
use crate::kernels::attention_cached::attention_cached;
use crate::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::kernels::rope::{RopeTable, rope_backward, rope_forward};
use crate::kernels::swiglu::{swiglu_backward_in_place, swiglu_forward};
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

/// Every intermediate of one layer for `T` tokens (the backward pass's inputs); the MLP's
/// for `mlp.rows` of them at a time.
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
    mlp: MlpActs,    // all T rows in a layer kept for the backward pass, else a chunk
    lora: LoraActs,  // the LoRA branches' intermediates
}

/// The MLP half's intermediates for `rows` tokens. The MLP works on each token alone, so a
/// pass that does not keep them runs it a chunk of rows at a time: its `[T, intermediate]`
/// buffers, the widest of a layer, never exist for the whole sequence.
#[derive(Default)]
struct MlpActs {
    rows: usize,
    xn2: Vec<f32>,  // [rows, hidden] post_attention_layernorm output
    inv2: Vec<f32>, // [rows]
    gate: Vec<f32>, // [rows, intermediate]
    up: Vec<f32>,   // [rows, intermediate]
    act: Vec<f32>,  // [rows, intermediate]
    down: Vec<f32>, // [rows, hidden] scratch: the down projection's output
}

/// The same rows of each of [`MlpActs`]'s buffers.
struct MlpRows<'a> {
    xn2: &'a mut [f32],
    inv2: &'a mut [f32],
    gate: &'a mut [f32],
    up: &'a mut [f32],
    act: &'a mut [f32],
    down: &'a mut [f32],
}

impl MlpActs {
    fn sized(model: &Model, rows: usize) -> Result<Self> {
        let c = &model.config;
        let z = |n: usize| buffers::zeros::<f32>(n, "the MLP's activations");
        Ok(MlpActs {
            rows,
            xn2: z(rows * c.hidden_size)?,
            inv2: z(rows)?,
            gate: z(rows * c.intermediate_size)?,
            up: z(rows * c.intermediate_size)?,
            act: z(rows * c.intermediate_size)?,
            down: z(rows * c.hidden_size)?,
        })
    }

    /// Rows `rows` of every buffer.
    fn rows_mut(&mut self, rows: std::ops::Range<usize>) -> MlpRows<'_> {
        let h = self.xn2.len() / self.rows.max(1);
        let i = self.gate.len() / self.rows.max(1);
        let (r0, r1) = (rows.start, rows.end);
        MlpRows {
            xn2: &mut self.xn2[r0 * h..r1 * h],
            inv2: &mut self.inv2[r0..r1],
            gate: &mut self.gate[r0 * i..r1 * i],
            up: &mut self.up[r0 * i..r1 * i],
            act: &mut self.act[r0 * i..r1 * i],
            down: &mut self.down[r0 * h..r1 * h],
        }
    }
}

/// Rows of the MLP's working buffers in a pass that does not keep its intermediates: the
/// matrix kernel's own task height, enough to amortize expanding quantized weights (a 1B
/// model's MLP scores at the speed of whole sequences from 128 rows, 15% slower at 64).
const MLP_CHUNK_ROWS: usize = 128;

impl LayerActs {
    /// Buffers for `t` tokens, the MLP's for `mlp_rows` of them.
    fn sized(model: &Model, t: usize, mlp_rows: usize) -> Result<Self> {
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
            mlp: MlpActs::sized(model, mlp_rows.min(t))?,
            lora: LoraActs::default(),
        })
    }

    /// [`Self::sized`] for a layer recomputed in the backward pass: `xn1`'s buffer also holds
    /// `x_mid` (see [`Model::attention_half`]), and the MLP has none of its own (the refill
    /// forwards borrow the backward pass's chunk).
    fn sized_for_recompute(model: &Model, t: usize) -> Result<Self> {
        let mut s = Self::sized(model, t, 0)?;
        s.x_mid = Vec::new();
        Ok(s)
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

/// Gradient buffers of one layer's backward pass, reused from layer to layer, and the MLP
/// intermediates of the chunk of rows being differentiated when the layer did not keep them.
#[derive(Default)]
struct BackScratch {
    d_attn: Vec<f32>, // also d_xn1, once attention's backward is done with it
    delta: Vec<f32>,  // [T, heads] rowsum(d_attn ⊙ attn)
    dk: Vec<f32>,
    dv: Vec<f32>,
    mlp: MlpActs,
    lora: LoraActs,
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

/// What the backward pass needs from a training forward pass.
pub struct Tape {
    layout: AttnLayout,
    table: RopeTable,
    /// Per layer: all activations, its input alone (a checkpoint), or nothing (its input is
    /// recomputed from the checkpoint below it during the backward pass).
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
    /// Keep whole layers while they fit in this many bytes, recompute the others from
    /// checkpoints of their inputs: every recomputed layer's input when those fit in the
    /// budget too, else about √(2n) of them (see [`RecomputePlan::is_checkpoint`]), each
    /// segment between two checkpoints being run forward once more to rebuild its inputs.
    Budget(usize),
}

/// What a training pass over `T` tokens keeps, from [`Recompute`] and the model's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecomputePlan {
    /// Layers (the last ones) whose activations are all kept.
    pub kept: usize,
    /// Layers recomputed from a checkpoint: the first `num_hidden_layers - kept`.
    pub recomputed: usize,
    /// The most layer inputs held at once by the recomputation: 1 when every recomputed
    /// layer's input is a checkpoint, else P, the least with P(P+1)/2 ≥ `recomputed`.
    pub longest_segment: usize,
}

impl RecomputePlan {
    /// Whether layer `l`'s input is kept by the forward pass. The segments between
    /// checkpoints shrink going up, P, P−1, …: the backward pass rebuilds a segment's inputs
    /// while the checkpoints below it are held, so segment j (from the bottom) holds j
    /// checkpoints and P − j rebuilt inputs, never more than P in all.
    pub fn is_checkpoint(&self, l: usize) -> bool {
        if l >= self.recomputed {
            return false;
        }
        let (mut start, mut len) = (0, self.longest_segment.max(1));
        while start < l {
            start += len;
            len = (len - 1).max(1);
        }
        start == l
    }

    /// Layer forwards run again to rebuild the inputs of the layers between checkpoints.
    pub fn refill_forwards(&self) -> usize {
        (0..self.recomputed).filter(|&l| !self.is_checkpoint(l)).count()
    }
}

/// `v` resized to `n` zeros (its allocation is kept across calls).
fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buffers::refill(v, n, 0.0)
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
        let mut s = LayerActs::sized(self, t, self.mlp_chunk_rows())?;
        for li in 0..self.config.num_hidden_layers {
            cancel::check(lora.cancel)?;
            self.layer_forward(li, &mut x, &mut Attend::Packed(layout), &table, &lora, &mut s);
        }
        let mut out = buffers::zeros::<f32>(t * self.config.hidden_size, "the final hidden states")?;
        rmsnorm_forward(&x, &self.weights.norm, self.config.rms_norm_eps, &mut out, &mut s.inv1);
        Ok(out)
    }

    /// Rows of the MLP's working buffers in a pass that does not keep its intermediates.
    pub(crate) fn mlp_chunk_rows(&self) -> usize {
        self.mlp_chunk_rows.unwrap_or(MLP_CHUNK_ROWS).max(1)
    }

    /// What a training pass over `t` tokens with LoRA rank `r` keeps under `recompute`.
    pub fn recompute_plan(&self, t: usize, r: usize, recompute: Recompute) -> RecomputePlan {
        let n = self.config.num_hidden_layers;
        let per_layer = LayerActs::bytes_for(self, t, r);
        let kept = match recompute {
            Recompute::Never => n,
            Recompute::Always => 0,
            Recompute::Budget(b) => (b / per_layer.max(1)).min(n),
        };
        let recomputed = n - kept;
        let inputs = recomputed * t * self.config.hidden_size * 4;
        let longest_segment = match recompute {
            Recompute::Budget(b) if inputs > b => (1..).find(|p| p * (p + 1) / 2 >= recomputed).unwrap_or(1),
            _ => 1,
        };
        RecomputePlan {
            kept,
            recomputed,
            longest_segment,
        }
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
        let plan = self.recompute_plan(t, r, recompute);
        // The last layers are kept: their backward runs first, before any recomputation.
        let keep: Vec<bool> = (0..n_layers).map(|l| l >= plan.recomputed).collect();
        let table = RopeTable::new(&self.inv_freq, layout.positions());
        let mut x = self.embed(tokens)?;
        let mut layers = Vec::with_capacity(n_layers);
        let mut scratch = LayerActs::sized(self, t, self.mlp_chunk_rows())?;
        for (li, &kept_here) in keep.iter().enumerate() {
            if kept_here {
                let mut acts = LayerActs::sized(self, t, t)?;
                let x_in = buffers::copied(&x, "a layer's input")?;
                self.layer_forward(li, &mut x, &mut Attend::Packed(layout), &table, &lora, &mut acts);
                acts.x_in = x_in;
                layers.push(acts);
            } else {
                let x_in = if plan.is_checkpoint(li) {
                    buffers::copied(&x, "a layer's input")?
                } else {
                    Vec::new()
                };
                self.layer_forward(li, &mut x, &mut Attend::Packed(layout), &table, &lora, &mut scratch);
                layers.push(LayerActs {
                    x_in,
                    ..Default::default()
                });
            }
        }
        drop(scratch);
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
    /// derivative with respect to the final hidden states is `dh`: `[T, hidden]` (freed as
    /// soon as it has been read, like the tape's layers).
    pub fn backward(&self, tape: Tape, lora: LoraCtx, dh: Vec<f32>, grads: &mut Adapter) -> Result<()> {
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
        rmsnorm_backward(&final_in, &self.weights.norm, &final_inv, &dh, &mut dx);
        drop((final_in, dh));
        let chunk = self.mlp_chunk_rows().min(t.max(1));
        let mut scratch = BackScratch {
            mlp: MlpActs::sized(self, chunk)?,
            ..Default::default()
        };
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
                let mut fresh = match spare.take() {
                    Some(acts) => acts,
                    None => LayerActs::sized_for_recompute(self, t)?,
                };
                let x_in = match std::mem::take(&mut acts.x_in) {
                    x_in if !x_in.is_empty() => x_in,
                    _ => {
                        // The refill's MLP borrows the backward pass's chunk buffers.
                        std::mem::swap(&mut fresh.mlp, &mut scratch.mlp);
                        let x = self.refill_inputs(li, &mut layers, &layout, &table, &lora, &mut fresh);
                        std::mem::swap(&mut fresh.mlp, &mut scratch.mlp);
                        x?
                    }
                };
                self.attention_half(li, &x_in, &mut Attend::Packed(&layout), &table, &lora, &mut fresh);
                fresh.x_in = x_in;
                acts = fresh;
            }
            cancel::check(lora.cancel)?;
            self.layer_backward(li, &mut acts, &pass, &mut dx, grads, &mut scratch);
            if !keep[li] {
                // Its input is done with: the next refill must not find it still held.
                acts.x_in = Vec::new();
                spare = Some(acts);
            }
        }
        Ok(())
    }

    /// Layer `li`'s input, rebuilt by running forward from the nearest checkpoint below it;
    /// the inputs of the layers in between are stored in `layers` on the way (their
    /// backward comes next).
    fn refill_inputs(
        &self,
        li: usize,
        layers: &mut [LayerActs],
        layout: &AttnLayout,
        table: &RopeTable,
        lora: &LoraCtx,
        s: &mut LayerActs,
    ) -> Result<Vec<f32>> {
        let c = (0..li)
            .rev()
            .find(|&j| !layers[j].x_in.is_empty())
            .expect("the first layer's input is always a checkpoint");
        let mut x = buffers::copied(&layers[c].x_in, "a layer's input")?;
        for j in c..li {
            self.layer_forward(j, &mut x, &mut Attend::Packed(layout), table, lora, s);
            if j + 1 < li {
                layers[j + 1].x_in = buffers::copied(&x, "a layer's input")?;
            }
        }
        Ok(x)
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
        self.attention_half(li, x, attend, table, lora, s);
        x.copy_from_slice(&s.x_mid[..x.len()]);
        let rows = s.mlp.rows.max(1);
        let h = self.config.hidden_size;
        for (c, xr) in x.chunks_mut(rows * h).enumerate() {
            self.mlp_forward(li, xr, c * rows, lora, &mut s.mlp, &mut s.lora);
        }
    }

    /// The attention half of layer `li` on its input x: `[T, hidden]`, leaving
    /// `s.x_mid` = x + o(attention(…)), the residual stream after attention. Activations
    /// made by [`LayerActs::sized_for_recompute`] have one buffer for `xn1` and `x_mid`:
    /// `xn1` is done with once q, k and v are made, and is rebuilt from `x_in` for the
    /// backward pass once `x_mid` is done with.
    fn attention_half(
        &self,
        li: usize,
        x: &[f32],
        attend: &mut Attend,
        table: &RopeTable,
        lora: &LoraCtx,
        s: &mut LayerActs,
    ) {
        let cfg = &self.config;
        let l = &self.weights.layers[li];
        let linear = |p: Proj| self.linear(lora, li, p);
        if s.xn1.is_empty() {
            std::mem::swap(&mut s.xn1, &mut s.x_mid);
        }
        rmsnorm_forward(x, &l.input_layernorm, cfg.rms_norm_eps, &mut s.xn1, &mut s.inv1);
        linear(Proj::Q).forward(&s.xn1, &mut s.q, &mut s.lora, 0);
        linear(Proj::K).forward(&s.xn1, &mut s.k, &mut s.lora, 0);
        linear(Proj::V).forward(&s.xn1, &mut s.v, &mut s.lora, 0);
        if s.x_mid.is_empty() {
            std::mem::swap(&mut s.xn1, &mut s.x_mid);
        }
        rope_forward(&mut s.q, cfg.num_attention_heads, table);
        rope_forward(&mut s.k, cfg.num_key_value_heads, table);
        self.attend(li, attend, s);
        linear(Proj::O).forward(&s.attn, &mut s.x_mid, &mut s.lora, 0);
        // o + x: addition commutes, so these are the bits of x + o.
        add_into(&mut s.x_mid, x);
    }

    /// The MLP half of layer `li` in place on rows `row0..` of the residual stream,
    /// x: `[n, hidden]` (n at most `m.rows`): x += down(silu(gate(xn2)) * up(xn2)).
    fn mlp_forward(&self, li: usize, x: &mut [f32], row0: usize, lora: &LoraCtx, m: &mut MlpActs, u: &mut LoraActs) {
        let n = x.len() / self.config.hidden_size;
        let mut m = m.rows_mut(0..n);
        self.mlp_activation(li, x, row0, lora, &mut m, u);
        self.linear(lora, li, Proj::Down).forward(m.act, m.down, u, row0);
        add_into(x, m.down);
    }

    /// The MLP of layer `li` up to the down projection, for rows `row0..` of the residual
    /// stream x_mid: `[n, hidden]`: `m`'s xn2, inv2, gate, up and act.
    fn mlp_activation(&self, li: usize, x_mid: &[f32], row0: usize, lora: &LoraCtx, m: &mut MlpRows, u: &mut LoraActs) {
        let l = &self.weights.layers[li];
        let linear = |p: Proj| self.linear(lora, li, p);
        rmsnorm_forward(
            x_mid,
            &l.post_attention_layernorm,
            self.config.rms_norm_eps,
            m.xn2,
            m.inv2,
        );
        linear(Proj::Gate).forward(m.xn2, m.gate, u, row0);
        linear(Proj::Up).forward(m.xn2, m.up, u, row0);
        swiglu_forward(m.gate, m.up, m.act);
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
    /// `grads`. The MLP runs a chunk of rows at a time: from `a`'s intermediates when the
    /// layer kept them all, else recomputed from `a.x_mid`.
    fn layer_backward(
        &self,
        li: usize,
        a: &mut LayerActs,
        pass: &BackPass,
        dx: &mut [f32],
        grads: &mut Adapter,
        s: &mut BackScratch,
    ) {
        let cfg = &self.config;
        let l = &self.weights.layers[li];
        let t = pass.layout.n_tokens();
        let h = cfg.hidden_size;
        let linear = |p: Proj| self.linear(pass.lora, li, p);
        let kept = a.mlp.rows >= t;
        let chunk = s.mlp.rows.max(1);
        for r0 in (0..t).step_by(chunk) {
            let r1 = (r0 + chunk).min(t);
            let n = r1 - r0;
            let x_mid = &a.x_mid[r0 * h..r1 * h];
            // The chunk's intermediates, which its backward overwrites with gradients: the
            // layer's own rows when it kept them all, else recomputed from x_mid.
            let (m, lora_u, u_rows) = if kept {
                (a.mlp.rows_mut(r0..r1), &a.lora, r0..r1)
            } else {
                let mut m = s.mlp.rows_mut(0..n);
                self.mlp_activation(li, x_mid, r0, pass.lora, &mut m, &mut s.lora);
                // The down projection's output is not needed again, only its branch's u.
                linear(Proj::Down).forward_lora_u(m.act, &mut s.lora, r0);
                (m, &s.lora, 0..n)
            };
            let u = |p: Proj| linear(p).u_rows(lora_u, u_rows.clone());
            let dxr = &mut dx[r0 * h..r1 * h];
            // act becomes d_act; gate and up become d_gate and d_up; down's buffer takes d_xn2.
            linear(Proj::Down).backward_in_place(m.act, u(Proj::Down), dxr, grads, r0);
            swiglu_backward_in_place(m.gate, m.up, m.act);
            let d_xn2 = m.down;
            d_xn2.fill(0.0);
            linear(Proj::Gate).backward(m.xn2, u(Proj::Gate), m.gate, d_xn2, grads, r0);
            linear(Proj::Up).backward(m.xn2, u(Proj::Up), m.up, d_xn2, grads, r0);
            // dx (dL/d x_mid) = residual + norm path
            rmsnorm_backward(x_mid, &l.post_attention_layernorm, m.inv2, d_xn2, dxr);
        }
        if a.xn1.is_empty() {
            // xn1 shares x_mid's buffer, which the MLP is done with: rebuilt, the same bits.
            std::mem::swap(&mut a.xn1, &mut a.x_mid);
            rmsnorm_forward(&a.x_in, &l.input_layernorm, cfg.rms_norm_eps, &mut a.xn1, &mut a.inv1);
        }
        // Attention: x_mid = x_in + o(attn(q, k, v))
        let u = |p: Proj| linear(p).u_rows(&a.lora, 0..t);
        let d_attn = zeroed(&mut s.d_attn, t * cfg.q_dim());
        linear(Proj::O).backward(&a.attn, u(Proj::O), dx, d_attn, grads, 0);
        let shape = self.attn_shape();
        let delta = zeroed(&mut s.delta, t * cfg.num_attention_heads);
        attention_delta(&a.attn, d_attn, t, shape, delta);
        // Attention's output is done with: its buffer takes dq (and is handed back below).
        let mut dq_buf = std::mem::take(&mut a.attn);
        let dq = zeroed(&mut dq_buf, t * cfg.q_dim());
        let (dk, dv) = (zeroed(&mut s.dk, t * cfg.kv_dim()), zeroed(&mut s.dv, t * cfg.kv_dim()));
        let saved = AttnInputs {
            q: &a.q,
            k: &a.k,
            v: &a.v,
            lse: &a.lse,
        };
        let d_qkv = AttnGrads {
            dq: &mut *dq,
            dk: &mut *dk,
            dv: &mut *dv,
        };
        attention_backward_with_delta(saved, &s.delta, d_attn, pass.layout, shape, d_qkv);
        rope_backward(dq, cfg.num_attention_heads, pass.table);
        rope_backward(dk, cfg.num_key_value_heads, pass.table);
        let d_xn1 = zeroed(&mut s.d_attn, t * h);
        linear(Proj::Q).backward(&a.xn1, u(Proj::Q), dq, d_xn1, grads, 0);
        linear(Proj::K).backward(&a.xn1, u(Proj::K), dk, d_xn1, grads, 0);
        linear(Proj::V).backward(&a.xn1, u(Proj::V), dv, d_xn1, grads, 0);
        rmsnorm_backward(&a.x_in, &l.input_layernorm, &a.inv1, d_xn1, dx);
        a.attn = dq_buf;
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.config.num_attention_heads,
            n_kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }
}
