//! LoRA adapters: parameters on any subset of the seven projections of every layer and
//! their initialization: the adapter the model's forward applies. Its files (PEFT,
//! llama.cpp's GGUF adapters) and the merged model are in [`format`](mod@format).

pub mod format;
#[cfg(feature = "linalg")]
pub mod linalg;
pub mod stack;

pub use format::{BaseCheck, gguf_lora, load, load_for, merge, peft};
pub use stack::{Stacked, stack};

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::weights::Proj;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

/// The largest LoRA rank accepted: far above what preference tuning uses (4 to 64), and
/// low enough that a rank from a file or a caller cannot ask for absurd memory.
pub const MAX_RANK: usize = 1024;

/// How A is initialized (B always starts at zero, so a new adapter changes nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LoraInit {
    /// PEFT's default: Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)).
    #[default]
    KaimingUniform,
    /// PEFT's `init_lora_weights="gaussian"`: N(0, 1/r).
    Gaussian,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f32,
    pub target_modules: Vec<Proj>,
    /// Scale alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
    /// Dropout on the adapter's input during training (0 = off).
    pub lora_dropout: f32,
    pub init: LoraInit,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            target_modules: Proj::ALL.to_vec(),
            use_rslora: false,
            lora_dropout: 0.0,
            init: LoraInit::KaimingUniform,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f32).sqrt()
        } else {
            self.lora_alpha / self.r as f32
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 || self.r > MAX_RANK {
            return Err(Error::invalid(format!(
                "LoRA rank r {} must be between 1 and {MAX_RANK}",
                self.r
            )));
        }
        if !self.lora_alpha.is_finite() || self.lora_alpha <= 0.0 {
            return Err(Error::invalid(format!(
                "lora_alpha {} must be a positive number",
                self.lora_alpha
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::invalid(format!(
                "lora_dropout {} must be in [0, 1)",
                self.lora_dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(Error::invalid("LoRA needs at least one target module"));
        }
        Ok(())
    }
}

/// One adapted projection: `W' = W + scale * B A`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    /// `[r, in]`
    pub a: Vec<f32>,
    /// `[out, r]`
    pub b: Vec<f32>,
    pub in_features: usize,
    pub out_features: usize,
}

impl LoraPair {
    /// `A` as a matrix: `[r, in]`.
    pub fn lora_a(&self) -> ArrayView2<'_, f32> {
        let r = self.a.len() / self.in_features.max(1);
        ArrayView2::from_shape((r, self.in_features), &self.a).expect("A holds r × in values")
    }

    /// `B` as a matrix: `[out, r]`.
    pub fn lora_b(&self) -> ArrayView2<'_, f32> {
        let r = self.b.len() / self.out_features.max(1);
        ArrayView2::from_shape((self.out_features, r), &self.b).expect("B holds out × r values")
    }

    /// The change this pair makes to its base weight, `scale · B · A`: `[out, in]` (PEFT's
    /// `get_delta_weight`, with `scale` from [`Adapter::scale`]).
    pub fn delta_weight(&self, scale: f32) -> Array2<f32> {
        self.lora_b().dot(&self.lora_a()) * scale
    }
}

/// A LoRA adapter for one base model shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub config: LoraConfig,
    /// Per layer, per projection (indexed by `Proj as usize`).
    pub layers: Vec<[Option<LoraPair>; 7]>,
    /// The base model's name ([`crate::Model::name`]), recorded as `base_model_name_or_path`.
    pub base_model_name: String,
    /// The base model's [`crate::Model::fingerprint`], when known: an adapter trained here
    /// records the base it was trained on, and loading it over another base is refused.
    pub base_fingerprint: Option<String>,
}

/// (out_features, in_features) of a projection for a model config.
pub fn proj_shape(cfg: &Config, p: Proj) -> (usize, usize) {
    let (h, i, q, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim());
    match p {
        Proj::Q => (q, h),
        Proj::K | Proj::V => (kv, h),
        Proj::O => (h, q),
        Proj::Gate | Proj::Up => (i, h),
        Proj::Down => (h, i),
    }
}

impl Adapter {
    /// A fresh adapter: A initialized from `seed`, B zero.
    pub fn new(model: &Config, config: LoraConfig, seed: u64, base_model_name: impl Into<String>) -> Result<Adapter> {
        config.validate()?;
        let mut rng = crate::rng::Rng::new(seed);
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for _ in 0..model.num_hidden_layers {
            let mut l: [Option<LoraPair>; 7] = Default::default();
            for p in Proj::ALL {
                if !config.target_modules.contains(&p) {
                    continue;
                }
                let (out, inp) = proj_shape(model, p);
                let a = match config.init {
                    LoraInit::KaimingUniform => {
                        let bound = 1.0 / (inp as f32).sqrt();
                        (0..config.r * inp).map(|_| rng.uniform(-bound, bound)).collect()
                    }
                    LoraInit::Gaussian => {
                        let std = 1.0 / (config.r as f32).sqrt();
                        (0..config.r * inp).map(|_| rng.normal() * std).collect()
                    }
                };
                l[p as usize] = Some(LoraPair {
                    a,
                    b: crate::buffers::zeros(out * config.r, "an adapter's B matrix")?,
                    in_features: inp,
                    out_features: out,
                });
            }
            layers.push(l);
        }
        Ok(Adapter {
            config,
            layers,
            base_model_name: base_model_name.into(),
            base_fingerprint: None,
        })
    }

    pub fn scale(&self) -> f32 {
        self.config.scale()
    }

    pub fn get(&self, layer: usize, p: Proj) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|l| l[p as usize].as_ref())
    }

    /// Checks that the adapter fits a model: layer count, every pair's shape, and that
    /// every pair holds `r * in` values of A and `out * r` of B for the configured rank
    /// (so no consumer of the pairs can index out of bounds).
    pub fn check_fits(&self, model: &Config, file: &std::path::Path) -> Result<()> {
        if self.layers.len() != model.num_hidden_layers {
            return Err(Error::field(
                file,
                "layers",
                format!(
                    "the adapter has {} layers, the model {}",
                    self.layers.len(),
                    model.num_hidden_layers
                ),
            ));
        }
        for (li, l) in self.layers.iter().enumerate() {
            for p in Proj::ALL {
                if let Some(pair) = &l[p as usize] {
                    let (out, inp) = proj_shape(model, p);
                    if (pair.out_features, pair.in_features) != (out, inp) {
                        return Err(Error::tensor(
                            file,
                            format::peft::tensor_name(li, p, "lora_B"),
                            format!(
                                "adapter is for a [{}, {}] projection, the model's is [{out}, {inp}]",
                                pair.out_features, pair.in_features
                            ),
                        ));
                    }
                    let r = self.config.r;
                    for (m, len, want, what) in [
                        ("lora_A", pair.a.len(), r.saturating_mul(inp), "r x in"),
                        ("lora_B", pair.b.len(), out.saturating_mul(r), "out x r"),
                    ] {
                        if len != want {
                            return Err(Error::tensor(
                                file,
                                format::peft::tensor_name(li, p, m),
                                format!("{len} values, rank {r} needs {what} = {want}"),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.a.len() + p.b.len())
            .sum()
    }

    /// Every parameter tensor under its PEFT name, in a fixed order (layer, projection,
    /// A then B), as PEFT shapes it: `lora_A` `[r, in]`, `lora_B` `[out, r]`. A gradient
    /// (an adapter from [`Adapter::zeros_like`] that a step filled) reads the same way.
    pub fn tensors(&self) -> Vec<(String, ArrayView2<'_, f32>)> {
        let mut v = Vec::new();
        for (li, l) in self.layers.iter().enumerate() {
            for p in Proj::ALL {
                if let Some(pair) = &l[p as usize] {
                    v.push((format::peft::tensor_name(li, p, "lora_A"), pair.lora_a()));
                    v.push((format::peft::tensor_name(li, p, "lora_B"), pair.lora_b()));
                }
            }
        }
        v
    }
}

impl Adapter {
    /// An adapter of the same shape with every value zero (a gradient or moment buffer).
    pub fn zeros_like(&self) -> Adapter {
        let mut z = self.clone();
        for pair in z.layers.iter_mut().flatten().flatten() {
            pair.a.fill(0.0);
            pair.b.fill(0.0);
        }
        z
    }
}

impl Adapter {
    /// Every parameter tensor, mutable, in the order of [`Adapter::tensors`].
    pub fn params_mut(&mut self) -> Vec<&mut [f32]> {
        let mut v = Vec::new();
        for l in self.layers.iter_mut() {
            for pair in l.iter_mut().flatten() {
                v.push(&mut pair.a[..]);
                v.push(&mut pair.b[..]);
            }
        }
        v
    }

    /// Every parameter tensor in the order of [`Adapter::tensors`].
    pub fn params(&self) -> Vec<&[f32]> {
        self.layers
            .iter()
            .flat_map(|l| l.iter().flatten().flat_map(|p| [&p.a[..], &p.b[..]]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_reads_as_matrices_and_its_delta_is_scaled_b_times_a() {
        let (r, inp, out) = (3, 5, 4);
        let pair = LoraPair {
            a: (0..r * inp).map(|i| i as f32 * 0.25 - 1.0).collect(),
            b: (0..out * r).map(|i| 0.5 - i as f32 * 0.125).collect(),
            in_features: inp,
            out_features: out,
        };
        assert_eq!(pair.lora_a().dim(), (r, inp));
        assert_eq!(pair.lora_b().dim(), (out, r));
        assert_eq!(pair.lora_a()[[1, 2]], pair.a[inp + 2]);
        assert_eq!(pair.lora_b()[[3, 1]], pair.b[3 * r + 1]);
        let delta = pair.delta_weight(2.0);
        assert_eq!(delta.dim(), (out, inp));
        for o in 0..out {
            for i in 0..inp {
                let want: f32 = (0..r).map(|k| pair.b[o * r + k] * pair.a[k * inp + i]).sum::<f32>() * 2.0;
                assert!((delta[[o, i]] - want).abs() <= 1e-5 * want.abs().max(1.0), "[{o}, {i}]");
            }
        }
    }
}
