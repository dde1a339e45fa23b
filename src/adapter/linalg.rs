//! Adapter arithmetic with LAPACK (cargo feature `linalg`): several adapters combined with
//! weights into one adapter of a chosen rank, and an adapter's rank shrunk, both through the
//! SVD of the summed update, as PEFT's `add_weighted_adapter(..., combination_type="svd")`.
//!
//! Per adapted projection, `ΔW = Σ_i w_i · scale_i · B_i A_i` (`[out, in]`, in f64). With
//! `U S Vᵀ = svd(ΔW)` and rank k: `B' = U[:, :k] · diag(S[:k])`, `A' = Vᵀ[:k, :]` (PEFT puts S
//! into B, so the rows of A' stay orthonormal). By Eckart–Young, `B'A'` is the rank-k matrix
//! closest to ΔW in Frobenius norm, and `‖ΔW − B'A'‖²_F = Σ_{j≥k} S_j²`.
//!
//! Where this differs from PEFT, on purpose:
//! - The result has `r = lora_alpha = k` (as in PEFT) and never rsLoRA, so its scale is exactly
//!   1 and `B'A'` is the update itself. PEFT copied the first input's `use_rslora`, which
//!   scaled its result by √k.
//! - Each input's scale counts once. PEFT's svd path multiplies `get_delta_weight` (which
//!   already holds the scale) by `weight · scale` again; for inputs whose scale is 1
//!   (`lora_alpha = r`) both give the same adapter.
//! - One input goes through the SVD too (PEFT falls back to `linear`): that shrinks a rank.
//! - `svd_clamp` is [`SvdOptions::clamp`]; off by default, as in PEFT.
//!
//! The result targets the union of the inputs' projections; where an input has no pair, its
//! term is zero. Singular values past the rank of ΔW are zero; when the chosen rank exceeds
//! it, the extra columns of B' are zero and the extra rows of A' complete an orthonormal set
//! (as PEFT's full SVD does), so the adapter can still be trained from there.
//!
//! `ΔW = B_cat A_cat` has rank at most `R = Σ r_i`, so the SVD goes through thin QR factors:
//! `B_cat = Q_b R_b`, `A_catᵀ = Q_a R_a`, `ΔW = Q_b (R_b R_aᵀ) Q_aᵀ`, and the SVD of the
//! `R × R` core gives ΔW's singular values and vectors exactly, in O((out + in) R²) time
//! instead of O(out · in · min(out, in)).

use super::format::peft::tensor_name;
use super::{Adapter, LoraConfig, LoraPair};
use crate::error::{Error, Result};
use crate::model::weights::Proj;
use ndarray::{Array2, Axis, s};
use ndarray_linalg::error::LinalgError;
use ndarray_linalg::{QRInto, SVDInto};

/// One input of a merge.
#[derive(Clone, Copy, Debug)]
pub struct Weighted<'a> {
    /// Names the adapter in errors (its directory, say).
    pub name: &'a str,
    pub adapter: &'a Adapter,
    pub weight: f32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SvdOptions {
    /// Rank of the result; `None` takes the largest input rank (PEFT's `svd_rank=None`).
    pub rank: Option<usize>,
    /// PEFT's `svd_clamp`: per projection, every value of B' and A' is clamped to
    /// `[-h, h]`, h the q-quantile (linear interpolation, as `torch.quantile`) of those
    /// values. `None`, PEFT's default, keeps the SVD factors as they are.
    pub clamp: Option<f32>,
}

/// The spectrum of one merged projection.
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrum {
    pub layer: usize,
    pub proj: Proj,
    /// ΔW's singular values, descending: all that can be nonzero (at most `Σ r_i` of them;
    /// the rest of the spectrum is exactly zero).
    pub singular_values: Vec<f64>,
    /// How many of them the result keeps.
    pub kept: usize,
}

impl Spectrum {
    /// `‖ΔW‖²_F`.
    pub fn energy(&self) -> f64 {
        self.singular_values.iter().map(|s| s * s).sum()
    }

    /// `‖ΔW − B'A'‖²_F` of the unclamped result: the discarded singular values squared.
    pub fn discarded_energy(&self) -> f64 {
        self.singular_values.iter().skip(self.kept).map(|s| s * s).sum()
    }
}

/// A merged adapter and the spectrum of each of its projections (layer-major order).
#[derive(Clone, Debug)]
pub struct Merged {
    pub adapter: Adapter,
    pub spectra: Vec<Spectrum>,
}

impl Merged {
    /// Fraction of the summed update's squared Frobenius norm the result keeps (1 if ΔW = 0).
    pub fn kept_energy_fraction(&self) -> f64 {
        let total: f64 = self.spectra.iter().map(Spectrum::energy).sum();
        let lost: f64 = self.spectra.iter().map(Spectrum::discarded_energy).sum();
        if total > 0.0 { 1.0 - lost / total } else { 1.0 }
    }
}

/// `Σ_i weight_i · ΔW_i` of `inputs` as one adapter of rank `opts.rank` (see the module docs).
pub fn merge_svd(inputs: &[Weighted], opts: &SvdOptions) -> Result<Merged> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::invalid("a merge needs at least one adapter"))?;
    let n_layers = first.adapter.layers.len();
    let mut scales = Vec::with_capacity(inputs.len());
    for w in inputs {
        if !w.weight.is_finite() {
            return Err(Error::invalid(format!(
                "weight {} of adapter `{}` is not a finite number",
                w.weight, w.name
            )));
        }
        let scale = w.adapter.scale();
        if !scale.is_finite() {
            return Err(Error::field(
                w.name,
                "lora_alpha",
                format!(
                    "the scale of r = {}, lora_alpha = {} is not a finite number",
                    w.adapter.config.r, w.adapter.config.lora_alpha
                ),
            ));
        }
        scales.push(f64::from(w.weight) * f64::from(scale));
        if w.adapter.layers.len() != n_layers {
            return Err(Error::field(
                w.name,
                "layers",
                format!(
                    "the adapter has {} layers, `{}` has {n_layers}: they are not for the same base model",
                    w.adapter.layers.len(),
                    first.name
                ),
            ));
        }
    }
    let rank = match opts.rank {
        Some(k) => k,
        None => inputs.iter().map(|w| w.adapter.config.r).max().unwrap_or(0),
    };
    if rank == 0 {
        return Err(Error::invalid("the rank of a merged adapter must be at least 1"));
    }
    let clamp = match opts.clamp {
        None => None,
        Some(q) if q > 0.0 && q <= 1.0 => Some(f64::from(q)),
        Some(q) => return Err(Error::invalid(format!("clamp quantile {q} must be in (0, 1]"))),
    };

    let mut layers = Vec::with_capacity(n_layers);
    let mut spectra = Vec::new();
    let mut targets: Vec<Proj> = Vec::new();
    for li in 0..n_layers {
        let mut out_layer: [Option<LoraPair>; 7] = Default::default();
        for p in Proj::ALL {
            let terms = layer_terms(inputs, &scales, li, p)?;
            let Some(&(_, pair0, _)) = terms.first() else {
                continue;
            };
            let (out, inp) = (pair0.out_features, pair0.in_features);
            let tensor = tensor_name(li, p, "lora_B");
            if rank > out.min(inp) {
                return Err(Error::invalid(format!(
                    "rank {rank} exceeds {}, the smaller dimension of the [{out}, {inp}] projection `{tensor}`",
                    out.min(inp)
                )));
            }
            let (mut b, mut a, sv) = truncated_svd(&terms, rank, &tensor)?;
            if let Some(q) = clamp {
                clamp_to_quantile(&mut b, &mut a, q);
            }
            spectra.push(Spectrum {
                layer: li,
                proj: p,
                kept: rank.min(sv.len()),
                singular_values: sv,
            });
            out_layer[p as usize] = Some(LoraPair {
                a: a.iter().map(|&x| x as f32).collect(),
                b: b.iter().map(|&x| x as f32).collect(),
                in_features: inp,
                out_features: out,
            });
            if !targets.contains(&p) {
                targets.push(p);
            }
        }
        layers.push(out_layer);
    }
    targets.sort();
    let config = LoraConfig {
        r: rank,
        // alpha = r and no rsLoRA: scale 1, so B'A' is the merged update.
        lora_alpha: rank as f32,
        target_modules: targets,
        use_rslora: false,
        ..first.adapter.config.clone()
    };
    Ok(Merged {
        adapter: Adapter {
            config,
            layers,
            base_model_name: first.adapter.base_model_name.clone(),
            base_fingerprint: first.adapter.base_fingerprint.clone(),
        },
        spectra,
    })
}

/// An adapter of rank `rank` whose update is the best rank-`rank` approximation of
/// `adapter`'s (a merge of one adapter with weight 1).
pub fn shrink_rank(adapter: &Adapter, rank: usize) -> Result<Merged> {
    merge_svd(
        &[Weighted {
            name: "adapter",
            adapter,
            weight: 1.0,
        }],
        &SvdOptions {
            rank: Some(rank),
            clamp: None,
        },
    )
}

/// The inputs' pairs at one projection of one layer, with their rank and `weight · scale`,
/// after checking that they agree in shape and hold finite values.
fn layer_terms<'a>(
    inputs: &[Weighted<'a>],
    scales: &[f64],
    layer: usize,
    p: Proj,
) -> Result<Vec<(usize, &'a LoraPair, f64)>> {
    let mut terms: Vec<(usize, &LoraPair, f64)> = Vec::new();
    let mut shape_of: Option<(usize, usize, &str)> = None;
    for (w, &c) in inputs.iter().zip(scales) {
        let Some(pair) = w.adapter.get(layer, p) else {
            continue;
        };
        let name_a = || tensor_name(layer, p, "lora_A");
        let name_b = || tensor_name(layer, p, "lora_B");
        let (out, inp) = (pair.out_features, pair.in_features);
        if let Some((o0, i0, n0)) = shape_of
            && (o0, i0) != (out, inp)
        {
            return Err(Error::tensor(
                w.name,
                name_b(),
                format!(
                    "adapts a [{out}, {inp}] projection, `{n0}` a [{o0}, {i0}] one: they are not for the same base model"
                ),
            ));
        }
        shape_of.get_or_insert((out, inp, w.name));
        let r = pair.a.len().checked_div(inp).unwrap_or(0);
        if r == 0 || Some(pair.a.len()) != r.checked_mul(inp) {
            return Err(Error::tensor(
                w.name,
                name_a(),
                format!("{} values do not make [r, {inp}] with r ≥ 1", pair.a.len()),
            ));
        }
        if Some(pair.b.len()) != out.checked_mul(r) {
            return Err(Error::tensor(
                w.name,
                name_b(),
                format!("{} values, expected [{out}, {r}]", pair.b.len()),
            ));
        }
        if pair.a.iter().any(|x| !x.is_finite()) {
            return Err(Error::tensor(w.name, name_a(), "holds a non-finite value"));
        }
        if pair.b.iter().any(|x| !x.is_finite()) {
            return Err(Error::tensor(w.name, name_b(), "holds a non-finite value"));
        }
        terms.push((r, pair, c));
    }
    Ok(terms)
}

fn lapack(tensor: &str, what: &str, e: LinalgError) -> Error {
    Error::invalid(format!("`{tensor}`: LAPACK {what} failed: {e}"))
}

/// `x = q · r` with q's columns orthonormal: a thin QR when x is tall, else the identity
/// basis (`None`) and x itself, since a QR would not make anything smaller.
fn basis(x: Array2<f64>, tensor: &str) -> Result<(Option<Array2<f64>>, Array2<f64>)> {
    if x.ncols() >= x.nrows() {
        return Ok((None, x));
    }
    let (q, r) = x.qr_into().map_err(|e| lapack(tensor, "QR", e))?;
    Ok((Some(q), r))
}

/// B' `[out, k]`, A' `[k, in]` and the singular values of `Σ c_i B_i A_i`.
fn truncated_svd(
    terms: &[(usize, &LoraPair, f64)],
    k: usize,
    tensor: &str,
) -> Result<(Array2<f64>, Array2<f64>, Vec<f64>)> {
    let (out, inp) = (terms[0].1.out_features, terms[0].1.in_features);
    let big_r: usize = terms.iter().map(|t| t.0).sum();
    // B_cat [out, R] = [c_1 B_1 | c_2 B_2 | ...]; A_catᵀ [in, R] = [A_1ᵀ | A_2ᵀ | ...].
    let mut b_cat = Array2::<f64>::zeros((out, big_r));
    let mut at_cat = Array2::<f64>::zeros((inp, big_r));
    let mut col = 0;
    for &(r, pair, c) in terms {
        for o in 0..out {
            for j in 0..r {
                b_cat[[o, col + j]] = c * f64::from(pair.b[o * r + j]);
            }
        }
        for j in 0..r {
            for i in 0..inp {
                at_cat[[i, col + j]] = f64::from(pair.a[j * inp + i]);
            }
        }
        col += r;
    }
    let (q_b, r_b) = basis(b_cat, tensor)?; // Q_b [out, p], R_b [p, R]
    let (q_a, r_a) = basis(at_cat, tensor)?; // Q_a [in, q], R_a [q, R]
    let core = r_b.dot(&r_a.t()); // [p, q]
    let (u, sv, vt) = core.svd_into(true, true).map_err(|e| lapack(tensor, "SVD", e))?;
    let (Some(u), Some(vt)) = (u, vt) else {
        return Err(Error::invalid(format!(
            "`{tensor}`: LAPACK SVD returned no singular vectors"
        )));
    };
    let kk = k.min(sv.len());
    let u_k = u.slice(s![.., ..kk]);
    let u_k = match &q_b {
        Some(q) => q.dot(&u_k),
        None => u_k.to_owned(),
    }; // [out, kk]
    let vt_k = vt.slice(s![..kk, ..]);
    let vt_k = match &q_a {
        Some(q) => vt_k.dot(&q.t()),
        None => vt_k.to_owned(),
    }; // [kk, in]
    let mut b = Array2::<f64>::zeros((out, k));
    let mut a = Array2::<f64>::zeros((k, inp));
    for j in 0..kk {
        b.column_mut(j).assign(&(&u_k.column(j) * sv[j]));
        a.row_mut(j).assign(&vt_k.row(j));
    }
    complete_rows(&mut a, kk);
    Ok((b, a, sv.to_vec()))
}

/// Fills rows `from..` of `a` (`[k, in]`, k ≤ in, rows before `from` orthonormal) with unit
/// vectors orthogonal to every row above: each starts from the coordinate axis the rows so far
/// cover least, which keeps at least 1/in of its squared length after projection.
fn complete_rows(a: &mut Array2<f64>, from: usize) {
    let (k, inp) = a.dim();
    let mut cover = vec![0.0f64; inp];
    for row in a.axis_iter(Axis(0)).take(from) {
        for (c, x) in cover.iter_mut().zip(row) {
            *c += x * x;
        }
    }
    for r in from..k {
        let axis = (0..inp).min_by(|&i, &j| cover[i].total_cmp(&cover[j])).unwrap_or(0);
        let mut v = ndarray::Array1::<f64>::zeros(inp);
        v[axis] = 1.0;
        // Twice: one pass of Gram-Schmidt leaves rounding-sized components behind.
        for _ in 0..2 {
            for row in a.axis_iter(Axis(0)).take(r) {
                let d = v.dot(&row);
                v.scaled_add(-d, &row);
            }
        }
        let norm = v.dot(&v).sqrt();
        v /= norm;
        for (c, x) in cover.iter_mut().zip(&v) {
            *c += x * x;
        }
        a.row_mut(r).assign(&v);
    }
}

/// PEFT's `svd_clamp`: the q-quantile h of B' and A' together, then both clamped to `[-h, h]`.
fn clamp_to_quantile(b: &mut Array2<f64>, a: &mut Array2<f64>, q: f64) {
    let mut all: Vec<f64> = b.iter().chain(a.iter()).copied().collect();
    all.sort_by(f64::total_cmp);
    let Some(last) = all.len().checked_sub(1) else {
        return;
    };
    let pos = q * last as f64;
    let lo = (pos.floor() as usize).min(last);
    let hi = (pos.ceil() as usize).min(last);
    let h = all[lo] + (all[hi] - all[lo]) * (pos - lo as f64);
    for x in b.iter_mut().chain(a.iter_mut()) {
        *x = x.max(-h).min(h);
    }
}
