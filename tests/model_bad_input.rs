//! Broken model directories and inputs give typed errors that name what is wrong.

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::model::Model;

fn open_err(dir: &std::path::Path) -> Error {
    match Model::open(dir) {
        Ok(_) => panic!("{} opened but is broken", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn tiny_model_opens_and_scores() {
    let d = fresh_dir("bad-ok");
    write_model(&d, &TinySpec::default());
    let m = Model::open(&d).expect("opens");
    let s = m.score(&[1, 5, 6], &[7, 8, 2]).expect("scores");
    assert_eq!(s.token_logps.len(), 3);
    assert!(s.token_logps.iter().all(|x| x.is_finite() && *x < 0.0));
}

#[test]
fn sizes_that_would_overflow_and_scaling_that_would_give_nan_are_refused() {
    let s = TinySpec::default();
    let cases: [(&str, &str, serde_json::Value); 5] = [
        ("head_dim", "head_dim", serde_json::json!(9223372036854775824u64)),
        ("heads", "num_attention_heads", serde_json::json!(1u64 << 40)),
        ("positions", "max_position_embeddings", serde_json::json!(1u64 << 50)),
        (
            "linear0",
            "rope_scaling.factor",
            serde_json::json!({"rope_type": "linear", "factor": 0.0}),
        ),
        (
            "llama3",
            "rope_scaling.high_freq_factor",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        ),
    ];
    for (name, field, value) in cases {
        let d = fresh_dir(&format!("bad-config-size-{name}"));
        write_model(&d, &s);
        let mut c = config_json(&s);
        let key = if field.starts_with("rope_scaling") {
            "rope_scaling"
        } else {
            field
        };
        c[key] = value;
        std::fs::write(d.join("config.json"), c.to_string()).unwrap();
        let e = open_err(&d);
        assert!(matches!(&e, Error::Field { field: f, .. } if f == field), "{name}: {e}");
    }
}

#[test]
fn malformed_config_json() {
    let d = fresh_dir("bad-config-json");
    write_model(&d, &TinySpec::default());
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    let e = open_err(&d);
    assert!(
        matches!(&e, Error::Format { file, .. } if file.ends_with("config.json")),
        "{e}"
    );
}

#[test]
fn config_field_missing_or_wrong() {
    let s = TinySpec::default();
    for (field, value) in [
        ("hidden_size", serde_json::Value::Null),
        ("num_attention_heads", serde_json::json!("nine")),
        ("num_key_value_heads", serde_json::json!(3)),
        ("rms_norm_eps", serde_json::json!(-1.0)),
    ] {
        let d = fresh_dir(&format!("bad-config-{field}"));
        write_model(&d, &s);
        let mut c = config_json(&s);
        if value.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = value;
        }
        std::fs::write(d.join("config.json"), c.to_string()).unwrap();
        let e = open_err(&d);
        assert!(
            matches!(&e, Error::Field { field: f, .. } if f == field),
            "{field}: {e}"
        );
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let s = TinySpec::default();
    let d = fresh_dir("bad-arch");
    write_model(&d, &s);
    let mut c = config_json(&s);
    c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    c["model_type"] = "gpt2".into();
    std::fs::write(d.join("config.json"), c.to_string()).unwrap();
    let e = open_err(&d);
    assert!(
        matches!(&e, Error::UnsupportedArchitecture { arch, .. } if arch == "GPT2LMHeadModel"),
        "{e}"
    );
}

#[test]
fn safetensors_header_past_end() {
    let d = fresh_dir("bad-st-header");
    write_model(&d, &TinySpec::default());
    let p = d.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let past_end = (b.len() as u64 * 2).to_le_bytes();
    b[..8].copy_from_slice(&past_end);
    std::fs::write(&p, &b).unwrap();
    let e = open_err(&d);
    assert!(
        matches!(&e, Error::Format { file, .. } if file.ends_with("model.safetensors")),
        "{e}"
    );
}

#[test]
fn safetensors_truncated() {
    let d = fresh_dir("bad-st-trunc");
    write_model(&d, &TinySpec::default());
    let p = d.join("model.safetensors");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    let e = open_err(&d);
    assert!(matches!(&e, Error::Format { .. }), "{e}");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let s = TinySpec::default();
    let name = "model.layers.1.mlp.up_proj.weight";
    let d = fresh_dir("bad-missing");
    write_model(&d, &s);
    let t: Vec<_> = tensors(&s).into_iter().filter(|(n, _, _)| n != name).collect();
    write_safetensors(&d.join("model.safetensors"), &t);
    let e = open_err(&d);
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor == name && what.contains("missing")),
        "{e}"
    );

    let d = fresh_dir("bad-shape");
    write_model(&d, &s);
    let t: Vec<_> = tensors(&s)
        .into_iter()
        .map(|(n, sh, v)| {
            if n == name {
                (n, vec![sh[1], sh[0]], v)
            } else {
                (n, sh, v)
            }
        })
        .collect();
    write_safetensors(&d.join("model.safetensors"), &t);
    let e = open_err(&d);
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor == name && what.contains("shape")),
        "{e}"
    );
}

#[test]
fn unsupported_tensor_dtype_is_named() {
    let s = TinySpec::default();
    let d = fresh_dir("bad-dtype");
    write_model(&d, &s);
    let name = "model.norm.weight";
    let mut owned: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = Vec::new();
    for (n, sh, v) in tensors(&s) {
        if n == name {
            let b = v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect();
            owned.push((n, sh, safetensors::Dtype::I32, b));
        } else {
            owned.push((
                n,
                sh,
                safetensors::Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, sh, dt, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, sh.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &d.join("model.safetensors")).unwrap();
    let e = open_err(&d);
    assert!(matches!(&e, Error::Tensor { tensor, .. } if tensor == name), "{e}");
}

#[test]
fn vocabulary_larger_than_embeddings_is_refused() {
    let s = TinySpec::default();
    let d = fresh_dir("bad-vocab");
    write_model(&d, &s);
    std::fs::write(d.join("tokenizer.json"), tokenizer_json(s.vocab + 10).to_string()).unwrap();
    let e = open_err(&d);
    assert!(e.to_string().contains("vocab"), "{e}");
}

#[test]
fn token_ids_outside_vocabulary_and_long_sequences() {
    let s = TinySpec::default();
    let d = fresh_dir("bad-ids");
    write_model(&d, &s);
    let m = Model::open(&d).expect("opens");
    let e = m.score(&[1, 2, s.vocab as u32], &[3]).unwrap_err();
    assert!(
        matches!(e, Error::TokenOutOfVocabulary { id, position: 2, .. } if id == s.vocab as u32),
        "{e}"
    );
    let long: Vec<u32> = (0..s.max_pos as u32).map(|i| 3 + i % 10).collect();
    let e = m.score(&long, &[3]).unwrap_err();
    assert!(
        matches!(e, Error::SequenceTooLong { len, max } if len == s.max_pos + 1 && max == s.max_pos),
        "{e}"
    );
}

// ---- GGUF models that parse as GGUF but do not make a model ----

use nudge::gguf::GgufValue;

fn open_gguf_err(p: &std::path::Path) -> Error {
    match Model::open(p) {
        Ok(_) => panic!("{} opened but is broken", p.display()),
        Err(e) => e,
    }
}

#[test]
fn gguf_unmodified_copy_opens() {
    let p = edited_gguf("gguf-ok", |_, _| {});
    Model::open(&p).expect("a faithful copy opens");
}

#[test]
fn gguf_unsupported_architecture_is_named() {
    let p = edited_gguf("gguf-arch", |meta, _| {
        for (k, v) in meta.iter_mut() {
            if k == "general.architecture" {
                *v = GgufValue::String("falcon".into());
            }
        }
    });
    let e = open_gguf_err(&p);
    assert!(
        matches!(&e, Error::UnsupportedArchitecture { arch, .. } if arch == "falcon"),
        "{e}"
    );
}

#[test]
fn gguf_missing_tensor_is_named_by_its_gguf_name() {
    let p = edited_gguf("gguf-missing", |_, t| t.retain(|x| x.0 != "blk.0.ffn_up.weight"));
    let e = open_gguf_err(&p);
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor.contains("blk.0.ffn_up.weight") && what.contains("missing")),
        "{e}"
    );
}

#[test]
fn gguf_tensor_of_the_wrong_shape_is_named() {
    let p = edited_gguf("gguf-shape", |_, t| {
        let k = t.iter_mut().find(|x| x.0 == "blk.0.attn_k.weight").expect("k tensor");
        let (cols, rows) = (k.2[0], k.2[1]);
        k.1 = nudge::quant::DType::F32;
        k.2 = vec![cols, rows + 2];
        k.3 = vec![0u8; cols * (rows + 2) * 4];
    });
    let e = open_gguf_err(&p);
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor.contains("blk.0.attn_k.weight") && what.contains("shape")),
        "{e}"
    );
}

#[test]
fn gguf_metadata_of_the_wrong_type_names_the_key() {
    let p = edited_gguf("gguf-field", |meta, _| {
        for (k, v) in meta.iter_mut() {
            if k == "llama.block_count" {
                *v = GgufValue::String("two".into());
            }
        }
    });
    let e = open_gguf_err(&p);
    assert!(
        matches!(&e, Error::Field { field, .. } if field == "llama.block_count"),
        "{e}"
    );
}

#[test]
fn gguf_vocabulary_larger_than_the_embeddings_is_refused() {
    let p = edited_gguf("gguf-vocab", |meta, _| {
        for (k, v) in meta.iter_mut() {
            match k.as_str() {
                "tokenizer.ggml.tokens" => {
                    if let GgufValue::Array(a) = v {
                        for i in 0..50 {
                            a.push(GgufValue::String(format!("extra{i}")));
                        }
                    }
                }
                "tokenizer.ggml.token_type" => {
                    if let GgufValue::Array(a) = v {
                        for _ in 0..50 {
                            a.push(GgufValue::I32(1));
                        }
                    }
                }
                _ => {}
            }
        }
    });
    let e = open_gguf_err(&p);
    assert!(
        matches!(&e, Error::Field { what, .. } if what.contains("tokenizer")),
        "{e}"
    );
}
