//! Shared by the integration tests: where the golden reference and the real model are.
#![allow(dead_code)]

pub mod tiny;

use serde_json::Value;
use std::path::PathBuf;

/// The golden reference directory: `NUDGE_GOLDEN_DIR`, default `tests/data/golden/smollm2`.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("NUDGE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/smollm2"),
    }
}

/// The real model: `NUDGE_MODEL`, default where `scripts/fetch-model.sh` puts it.
/// A missing model fails the test (run the fetch script), it never skips it.
pub fn model_path() -> PathBuf {
    let p = match std::env::var_os("NUDGE_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        p.exists(),
        "model not found at {} (run scripts/fetch-model.sh or set NUDGE_MODEL)",
        p.display()
    );
    p
}

pub fn golden_json() -> Value {
    let p = golden_dir().join("golden.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("golden.json parses")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("number list")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Reads a safetensors file holding f32 tensors: name → (shape, values).
pub fn read_f32_safetensors(path: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (v.shape().to_vec(), vals))
        })
        .collect()
}

/// The chat rules' shared cases, `tests/data/chat_rules.jsonl`, which the library, the CLI
/// and the C API must all accept or all refuse: (case, prompt, completion, accepted).
pub fn chat_rule_cases() -> Vec<(String, Value, Value, bool)> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_rules.jsonl");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON case");
            let case = v["case"].as_str().expect("case").to_string();
            (
                case,
                v["prompt"].clone(),
                v["completion"].clone(),
                v["ok"].as_bool().expect("ok"),
            )
        })
        .collect()
}
