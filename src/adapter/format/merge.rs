//! The merged model: the base with `scale * B A` added to every adapted matrix, written as
//! a new HF directory (f32, f16 or bf16) for apps that cannot apply adapters.
//!
//! Matrices are expanded, merged and encoded one at a time while the safetensors file is
//! written, so the export holds one f32 matrix beside the memory-mapped base, never the
//! whole model. Merging happens in HF row order (the weight views undo a GGUF base's Q/K
//! permutation), the order the adapter is in.

use crate::adapter::{Adapter, LoraPair};
use crate::convert::{MatrixEdit, hf_tensors_with, write_hf_dir};
use crate::error::Result;
use crate::model::Model;
use crate::model::weights::Proj;
use crate::quant::FloatType;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Adds `scale * B A` to `w`, row by row. w: `[out, in]` (HF order).
///
/// Each element's delta `sum_k B[o,k] A[k,i]` is accumulated in f64 and rounded once, so
/// the merged f32 weight is the exact sum to within one rounding of each term.
pub fn merge_into(w: &mut [f32], pair: &LoraPair, scale: f32) {
    let (inp, out) = (pair.in_features, pair.out_features);
    let r = pair.a.len() / inp.max(1);
    debug_assert_eq!(w.len(), out * inp);
    let scale = scale as f64;
    w.par_chunks_mut(inp.max(1)).enumerate().for_each(|(o, row)| {
        let b = &pair.b[o * r..(o + 1) * r];
        let mut delta = vec![0f64; inp];
        for (k, &bk) in b.iter().enumerate() {
            let bk = bk as f64;
            for (d, &a) in delta.iter_mut().zip(&pair.a[k * inp..(k + 1) * inp]) {
                *d += bk * a as f64;
            }
        }
        for (x, d) in row.iter_mut().zip(delta) {
            *x = (*x as f64 + scale * d) as f32;
        }
    });
}

/// Writes `model` with `adapter` merged in as an HF directory `dir` (config, tokenizer,
/// chat template, `model.safetensors` in `dtype`).
pub fn export_merged(model: &Model, adapter: &Adapter, dir: &Path, dtype: FloatType) -> Result<()> {
    adapter.config.validate()?;
    adapter.check_fits(&model.config, Path::new("<adapter>"))?;
    let scale = adapter.scale();
    type Edit<'a> = Box<dyn Fn(&mut [f32]) + Sync + 'a>;
    let mut edits: HashMap<String, Edit> = HashMap::new();
    for (li, layer) in model.weights.layers.iter().enumerate() {
        for p in Proj::ALL {
            if let Some(pair) = adapter.get(li, p) {
                edits.insert(
                    layer.proj(p).name.clone(),
                    Box::new(move |w: &mut [f32]| merge_into(w, pair, scale)),
                );
            }
        }
    }
    let edit_for = |name: &str| -> Option<MatrixEdit> { edits.get(name).map(|e| &**e as MatrixEdit) };
    write_hf_dir(model, dir, dtype, hf_tensors_with(model, dtype, &edit_for))
}
