//! Several adapters applied together, each with its own weight, as one adapter: the exact
//! sum of their updates, with no SVD (PEFT's `add_weighted_adapter(...,
//! combination_type="cat")`).
//!
//! Per projection, `ΔW = Σ_i w_i · scale_i · B_i A_i = B_cat A_cat` with
//! `A_cat = [A_1; A_2; …]` (`[Σ r_i, in]`) and `B_cat = [w_1 scale_1 B_1 | w_2 scale_2 B_2 | …]`
//! (`[out, Σ r_i]`). The result has `r = lora_alpha = Σ r_i` and no rsLoRA, so its own scale
//! is exactly 1 and `B_cat A_cat` is the update itself. Where an input has no pair for a
//! projection its rows of A and columns of B are zero, so its term is zero there.
//!
//! One input with weight w is that adapter scaled at inference: `w · scale · B A`.

use super::{Adapter, LoraConfig, LoraPair, MAX_RANK};
use crate::error::{Error, Result};
use crate::model::weights::Proj;

/// One adapter of a stack and the weight its update is multiplied by.
#[derive(Clone, Copy, Debug)]
pub struct Stacked<'a> {
    pub adapter: &'a Adapter,
    pub weight: f32,
}

/// The adapter whose update is `Σ_i w_i · scale_i · B_i A_i`. The inputs must have the
/// same layer count and, per projection, the same shape; every weight must be finite.
/// The result records the first input's base model (and its fingerprint, if every input
/// records the same one).
pub fn stack(inputs: &[Stacked]) -> Result<Adapter> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::invalid("a stack needs at least one adapter"))?;
    let n_layers = first.adapter.layers.len();
    for (i, s) in inputs.iter().enumerate() {
        if !s.weight.is_finite() {
            return Err(Error::invalid(format!(
                "adapter {i} of the stack: weight {} is not a finite number",
                s.weight
            )));
        }
        if s.adapter.layers.len() != n_layers {
            return Err(Error::invalid(format!(
                "adapter {i} of the stack has {} layers, adapter 0 has {n_layers}",
                s.adapter.layers.len()
            )));
        }
    }
    let r: usize = inputs.iter().map(|s| s.adapter.config.r).sum();
    if r > MAX_RANK {
        return Err(Error::invalid(format!(
            "the stack's ranks add up to {r}, above the largest rank {MAX_RANK}"
        )));
    }
    let targets: Vec<Proj> = Proj::ALL
        .into_iter()
        .filter(|p| inputs.iter().any(|s| s.adapter.config.target_modules.contains(p)))
        .collect();
    let mut layers = Vec::with_capacity(n_layers);
    for li in 0..n_layers {
        let mut layer: [Option<LoraPair>; 7] = Default::default();
        for &p in &targets {
            layer[p as usize] = stack_pair(inputs, li, p, r)?;
        }
        layers.push(layer);
    }
    let fingerprint = first.adapter.base_fingerprint.clone();
    let same_base = inputs.iter().all(|s| s.adapter.base_fingerprint == fingerprint);
    Ok(Adapter {
        config: LoraConfig {
            r,
            lora_alpha: r as f32,
            target_modules: targets,
            use_rslora: false,
            lora_dropout: 0.0,
            init: first.adapter.config.init,
        },
        layers,
        base_model_name: first.adapter.base_model_name.clone(),
        base_fingerprint: if same_base { fingerprint } else { None },
    })
}

/// The pair of projection `p` in layer `li`: `A_cat` `[r, in]`, `B_cat` `[out, r]`; `None`
/// where no input adapts it in this layer.
fn stack_pair(inputs: &[Stacked], li: usize, p: Proj, r: usize) -> Result<Option<LoraPair>> {
    let mut shape = None;
    for (i, s) in inputs.iter().enumerate() {
        if let Some(pair) = s.adapter.get(li, p) {
            let this = (pair.out_features, pair.in_features);
            match shape {
                None => shape = Some(this),
                Some(first) if first != this => {
                    return Err(Error::invalid(format!(
                        "adapter {i} of the stack adapts layer {li} {p:?} as [{}, {}], an earlier one as [{}, {}]",
                        this.0, this.1, first.0, first.1
                    )));
                }
                Some(_) => {}
            }
        }
    }
    let Some((out, inp)) = shape else { return Ok(None) };
    let mut a = crate::buffers::zeros(r * inp, "a stacked adapter's A matrix")?;
    let mut b = crate::buffers::zeros(out * r, "a stacked adapter's B matrix")?;
    let mut k0 = 0; // first rank row of this input in A_cat, column in B_cat
    for s in inputs {
        let ri = s.adapter.config.r;
        if let Some(pair) = s.adapter.get(li, p) {
            if pair.a.len() != ri * inp || pair.b.len() != out * ri {
                return Err(Error::invalid(format!(
                    "layer {li} {p:?}: a pair of rank {ri} holds {} values of A and {} of B",
                    pair.a.len(),
                    pair.b.len()
                )));
            }
            a[k0 * inp..(k0 + ri) * inp].copy_from_slice(&pair.a);
            let w = s.weight * s.adapter.scale();
            for o in 0..out {
                let dst = &mut b[o * r + k0..o * r + k0 + ri];
                for (d, &x) in dst.iter_mut().zip(&pair.b[o * ri..(o + 1) * ri]) {
                    *d = w * x;
                }
            }
        }
        k0 += ri;
    }
    Ok(Some(LoraPair {
        a,
        b,
        in_features: inp,
        out_features: out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Config;

    fn config() -> Config {
        let v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16,
            "max_position_embeddings": 32, "rms_norm_eps": 1e-5
        });
        Config::from_hf_value(&v, std::path::Path::new("config.json")).unwrap()
    }

    fn trained(cfg: &Config, r: usize, targets: Vec<Proj>, seed: u64) -> Adapter {
        let c = LoraConfig {
            r,
            lora_alpha: 3.0,
            target_modules: targets,
            ..LoraConfig::default()
        };
        let mut a = Adapter::new(cfg, c, seed, "tiny").unwrap();
        let mut rng = crate::rng::Rng::new(seed + 100);
        for pair in a.layers.iter_mut().flatten().flatten() {
            pair.b.iter_mut().for_each(|x| *x = rng.uniform(-0.5, 0.5));
        }
        a
    }

    #[test]
    fn the_stack_update_is_the_weighted_sum_of_the_updates() {
        let cfg = config();
        let a1 = trained(&cfg, 2, vec![Proj::Q, Proj::Down], 1);
        let a2 = trained(&cfg, 3, vec![Proj::Q, Proj::V], 2);
        let (w1, w2) = (0.5, -1.25);
        let s = stack(&[
            Stacked {
                adapter: &a1,
                weight: w1,
            },
            Stacked {
                adapter: &a2,
                weight: w2,
            },
        ])
        .unwrap();
        assert_eq!(s.config.r, 5);
        assert_eq!(s.scale(), 1.0);
        assert_eq!(s.config.target_modules, vec![Proj::Q, Proj::V, Proj::Down]);
        s.check_fits(&cfg, std::path::Path::new("stack")).unwrap();
        for li in 0..2 {
            for p in [Proj::Q, Proj::V, Proj::Down] {
                let got = s.get(li, p).unwrap().delta_weight(s.scale());
                let mut want = got.clone() * 0.0;
                if let Some(x) = a1.get(li, p) {
                    want = want + x.delta_weight(w1 * a1.scale());
                }
                if let Some(x) = a2.get(li, p) {
                    want = want + x.delta_weight(w2 * a2.scale());
                }
                let err = (&got - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(err < 1e-5, "layer {li} {p:?}: off by {err}");
            }
            assert!(s.get(li, Proj::K).is_none());
        }
    }

    #[test]
    fn bad_stacks_are_refused_with_the_reason() {
        let cfg = config();
        let a1 = trained(&cfg, 2, vec![Proj::Q], 1);
        let e = stack(&[]).unwrap_err().to_string();
        assert!(e.contains("at least one"), "{e}");
        let e = stack(&[Stacked {
            adapter: &a1,
            weight: f32::NAN,
        }])
        .unwrap_err()
        .to_string();
        assert!(e.contains("adapter 0") && e.contains("finite"), "{e}");
        let mut short = a1.clone();
        short.layers.pop();
        let e = stack(&[
            Stacked {
                adapter: &a1,
                weight: 1.0,
            },
            Stacked {
                adapter: &short,
                weight: 1.0,
            },
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("adapter 1") && e.contains("1 layers"), "{e}");
    }
}
