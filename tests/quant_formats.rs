//! The dequantizers against references: small blocks expanded by the `gguf` Python
//! package (tests/data/quant, made by scripts/make_quant_refs.py), and every tensor of
//! the real model against the golden sha256 of its f32 expansion in HF layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nudge::gguf::{GgufFile, GgufTensorInfo};
use nudge::model::gguf_names::{hf_name_for_gguf, rope_unpermute_row};
use nudge::quant::{DType, dequantize_row};
use sha2::{Digest, Sha256};

use nudge::bench::weights::DTYPES as ALL_DTYPES;

fn crate_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_path(default))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn dtype_named(name: &str) -> DType {
    *ALL_DTYPES
        .iter()
        .find(|d| d.name() == name)
        .unwrap_or_else(|| panic!("no DType named {name}"))
}

#[test]
fn dequantize_row_matches_gguf_reference_bit_exactly() {
    let dir = crate_path("tests/data/quant");
    let manifest: serde_json::Value = serde_json::from_slice(&read(&dir.join("manifest.json"))).unwrap();
    let mut covered = Vec::new();
    for case in manifest["cases"].as_array().unwrap() {
        let dtype = dtype_named(case["dtype"].as_str().unwrap());
        let rows = case["rows"].as_u64().unwrap() as usize;
        let cols = case["cols"].as_u64().unwrap() as usize;
        let blocks = read(&dir.join(case["blocks"].as_str().unwrap()));
        let expected = f32s(&read(&dir.join(case["expected"].as_str().unwrap())));
        let row_bytes = dtype.row_bytes(cols).unwrap();
        assert_eq!(blocks.len(), rows * row_bytes, "{dtype}: block bytes");
        assert_eq!(expected.len(), rows * cols, "{dtype}: expected values");

        let mut got = vec![f32::NAN; cols];
        for (r, (src, want)) in blocks
            .chunks_exact(row_bytes)
            .zip(expected.chunks_exact(cols))
            .enumerate()
        {
            dequantize_row(dtype, src, &mut got).unwrap();
            for (c, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{dtype} row {r} col {c}: got {g:e}, expected {w:e}"
                );
            }
        }
        covered.push(dtype);
    }
    for d in ALL_DTYPES {
        assert!(covered.contains(&d), "no reference case for {d}");
    }
}

#[test]
fn dequantize_row_rejects_lengths_that_are_not_whole_blocks() {
    let mut out = vec![0f32; 256];
    for d in ALL_DTYPES {
        let good = vec![0u8; d.row_bytes(256).unwrap()];
        assert!(dequantize_row(d, &good, &mut out).is_ok(), "{d}");
        assert!(dequantize_row(d, &good[1..], &mut out).is_err(), "{d}: short source");
        if d.is_quantized() {
            assert!(dequantize_row(d, &good, &mut out[..255]).is_err(), "{d}: partial block");
        }
    }
}

/// The golden expansion of one tensor: HF shape and sha256 of its f32 LE bytes.
struct Golden {
    shape: Vec<usize>,
    sha256: String,
    first4: Vec<f32>,
}

fn golden_tensors(path: &Path) -> BTreeMap<String, Golden> {
    let json: serde_json::Value = serde_json::from_slice(&read(path)).unwrap();
    json["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize);
            let first4 = t["first4"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32);
            let golden = Golden {
                shape: shape.collect(),
                sha256: t["sha256_f32_le"].as_str().unwrap().to_owned(),
                first4: first4.collect(),
            };
            (name.clone(), golden)
        })
        .collect()
}

/// Hashes a tensor row by row in HF order; returns the hex sha256 and the first values.
fn hf_layout_sha256(gguf: &GgufFile, t: &GgufTensorInfo, rope_head_dim: Option<usize>) -> (String, Vec<f32>) {
    let (rows, cols) = (t.rows(), t.cols());
    let data = gguf.tensor_data(t);
    let row_bytes = t.row_bytes();
    let mut row = vec![0f32; cols];
    let mut bytes = Vec::with_capacity(cols * 4);
    let mut hasher = Sha256::new();
    let mut first = Vec::new();
    for r in 0..rows {
        let g = rope_head_dim.map_or(r, |hd| rope_unpermute_row(r, hd));
        dequantize_row(t.dtype, &data[g * row_bytes..(g + 1) * row_bytes], &mut row).unwrap();
        bytes.clear();
        bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
        hasher.update(&bytes);
        if first.len() < 4 {
            first.extend(row.iter().take(4 - first.len()));
        }
    }
    let hex = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (hex, first)
}

#[test]
fn real_model_dequantizes_to_golden_sha256_in_hf_layout() {
    let model = env_path("NUDGE_MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let golden_dir = env_path("NUDGE_GOLDEN_DIR", "tests/data/golden/smollm2");
    let gguf = GgufFile::open(&model).unwrap();
    let golden = golden_tensors(&golden_dir.join("dequant_f32_hf_layout.json"));

    let arch = gguf.architecture().unwrap().to_owned();
    let n_embd = gguf.get_usize(&format!("{arch}.embedding_length")).unwrap();
    let n_head = gguf.get_usize(&format!("{arch}.attention.head_count")).unwrap();
    let n_head_kv = gguf.get_usize(&format!("{arch}.attention.head_count_kv")).unwrap();
    let head_dim = n_embd / n_head;

    let mut checked = Vec::new();
    for t in &gguf.tensors {
        let hf = hf_name_for_gguf(&t.name).unwrap_or_else(|| panic!("no HF name for `{}`", t.name));
        let want = golden
            .get(&hf)
            .unwrap_or_else(|| panic!("`{}` ({hf}) is not in the golden file", t.name));
        let hf_shape: Vec<usize> = t.shape.iter().rev().copied().collect();
        assert_eq!(hf_shape, want.shape, "{hf}: shape");

        let heads = if t.name.ends_with(".attn_q.weight") {
            Some(n_head)
        } else if t.name.ends_with(".attn_k.weight") {
            Some(n_head_kv)
        } else {
            None
        };
        if let Some(h) = heads {
            assert_eq!(t.rows(), h * head_dim, "{hf}: rows are not whole heads");
        }
        let (sha, first4) = hf_layout_sha256(&gguf, t, heads.map(|_| head_dim));
        assert_eq!(
            sha, want.sha256,
            "{hf} ({} {}): sha256 of the f32 expansion differs; first values {first4:?}, golden {:?}",
            t.name, t.dtype, want.first4
        );
        checked.push(hf);
    }
    // Tensors the GGUF does not store (lm_head when tied) are allowed to be absent;
    // everything else in the golden file must have been checked.
    let missing: Vec<&String> = golden.keys().filter(|k| !checked.contains(k)).collect();
    let tied = gguf.tensor("output.weight").is_none();
    for m in &missing {
        assert!(
            tied && m.as_str() == "lm_head.weight",
            "golden tensor {m} has no GGUF tensor"
        );
    }
}
