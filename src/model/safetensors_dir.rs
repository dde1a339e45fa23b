//! HF model directories: `config.json` plus `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Each shard is memory-mapped; tensors stay in the map.

use super::config::Config;
use super::weights::{Assembler, RawTensor, Weights, assemble};
use crate::error::{Error, Result};
use crate::file_bytes::{self, WeightsLoad};
use crate::kernels::matmul::RowOrder;
use crate::quant::DType;
use memmap2::Mmap;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The shard files of an HF directory, in order.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::field(&index, "weight_map", "missing or not an object"))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let f = file
            .as_str()
            .ok_or_else(|| Error::field(&index, format!("weight_map.{tensor}"), "not a file name"))?;
        if f.contains('/') || f.contains('\\') || f == ".." {
            return Err(Error::field(
                &index,
                format!("weight_map.{tensor}"),
                format!("`{f}` is not a plain file name"),
            ));
        }
        names.insert(f.to_string());
    }
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn dtype_of(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Every tensor of every shard: name → (map index, byte range, dtype, shape).
pub fn index_tensors(files: &[PathBuf], maps: &[Arc<Mmap>]) -> Result<HashMap<String, RawTensor>> {
    let mut all = HashMap::new();
    for (mi, (file, map)) in files.iter().zip(maps).enumerate() {
        let st = safetensors::SafeTensors::deserialize(map)
            .map_err(|e| Error::format(file, format!("invalid safetensors: {e}")))?;
        for (name, view) in st.tensors() {
            let dtype = dtype_of(view.dtype()).ok_or_else(|| {
                Error::tensor(
                    file,
                    &name,
                    format!("dtype {:?} is not supported (F32, F16, BF16)", view.dtype()),
                )
            })?;
            let offset = view.data().as_ptr() as usize - map.as_ptr() as usize;
            let t = RawTensor {
                map: mi,
                offset,
                len: view.data().len(),
                dtype,
                shape: view.shape().to_vec(),
                order: RowOrder::Stored,
            };
            if all.insert(name.clone(), t).is_some() {
                return Err(Error::tensor(file, &name, "appears in more than one shard"));
            }
        }
    }
    Ok(all)
}

pub fn open(dir: &Path, how: WeightsLoad) -> Result<(Config, Weights)> {
    let cfg_path = dir.join("config.json");
    let cfg = Config::from_hf_json(&cfg_path)?;
    let files = shard_files(dir)?;
    let maps = files
        .iter()
        .map(|f| file_bytes::open(f, how))
        .collect::<Result<Vec<_>>>()?;
    let tensors = index_tensors(&files, &maps)?;
    let lookup = |n: &str| tensors.get(n).cloned();
    let file_label = if files.len() == 1 {
        files[0].clone()
    } else {
        dir.to_path_buf()
    };
    let a = Assembler {
        file: &file_label,
        maps: &maps,
        lookup: &lookup,
    };
    let w = assemble(&cfg, &a, maps.clone(), files.clone())?;
    Ok((cfg, w))
}
