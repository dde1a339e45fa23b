//! Data rows and PEFT adapter files: round trips, and typed errors naming what is wrong.

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::adapter::format::peft;
use nudge::adapter::{Adapter, LoraConfig, LoraInit};
use nudge::data::{Example, PreferenceSet, read_jsonl, tokenize_row};
use nudge::model::Model;
use nudge::model::weights::Proj;
use std::path::Path;

fn tiny(name: &str, spec: &TinySpec) -> Model {
    let d = fresh_dir(name);
    write_model(&d, spec);
    Model::open(&d).expect("opens")
}

fn row_err(m: &Model, json: &str) -> Error {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    match tokenize_row(&m.tokenizer, &v, Path::new("data.jsonl"), 7) {
        Ok(e) => panic!("{json} was accepted: {e:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_rows_name_the_file_and_row() {
    let m = tiny("rows-bad", &TinySpec::default());
    for json in [
        r#"{"prompt": "t3 t4", "rejected": "t5"}"#,
        r#"{"prompt_ids": [1, 2], "chosen_ids": [3, 640], "rejected_ids": [4]}"#,
        r#"{"prompt_ids": [1, 2], "chosen_ids": [3, -1], "rejected_ids": [4]}"#,
        r#"{"prompt": "t3", "completion": "t4"}"#,
        r#"{"prompt": "t3", "completion": "t4", "label": "yes"}"#,
        r#"{"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "t4"}], "rejected": []}"#,
        r#"{"prompt": "t3", "chosen": "t4", "rejected": "t5", "margin": "big"}"#,
    ] {
        let e = row_err(&m, json);
        assert!(
            matches!(&e, Error::Row { row: 7, file, .. } if file.ends_with("data.jsonl")),
            "{json}: {e}"
        );
    }
}

#[test]
fn rows_of_every_format_tokenize() {
    let m = tiny("rows-ok", &TinySpec::default());
    let v: serde_json::Value =
        serde_json::from_str(r#"{"prompt": "t3 t4", "chosen": "t5", "rejected": "t6 t7", "weight": 2}"#).unwrap();
    match tokenize_row(&m.tokenizer, &v, Path::new("x"), 1).unwrap() {
        Example::Pair(p) => {
            assert_eq!(p.prompt, vec![3, 4]);
            // TRL appends EOS to a standard completion.
            assert_eq!(p.chosen, vec![5, 2]);
            assert_eq!(p.rejected, vec![6, 7, 2]);
            assert_eq!(p.weight, Some(2.0));
        }
        e => panic!("{e:?}"),
    }
    let v: serde_json::Value =
        serde_json::from_str(r#"{"prompt_ids": [1, 3], "completion_ids": [4, 2], "label": false}"#).unwrap();
    match tokenize_row(&m.tokenizer, &v, Path::new("x"), 1).unwrap() {
        Example::Unpaired(u) => assert!(!u.label && u.completion == vec![4, 2]),
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_broken_json_line_names_its_line() {
    let d = fresh_dir("rows-json");
    let f = d.join("x.jsonl");
    std::fs::write(&f, "{\"prompt_ids\": [1]}\n\n{oops\n").unwrap();
    let e = read_jsonl(&f).unwrap_err();
    assert!(matches!(e, Error::Row { row: 3, .. }), "{e}");
    let e = PreferenceSet::from_jsonl(
        &tiny("rows-json-m", &TinySpec::default()).tokenizer,
        &d.join("missing.jsonl"),
        &nudge::data::Truncation::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

fn random_adapter(m: &Model, targets: Vec<Proj>, rslora: bool) -> Adapter {
    let mut a = Adapter::new(
        &m.config,
        LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: targets,
            use_rslora: rslora,
            lora_dropout: 0.0,
            init: LoraInit::Gaussian,
        },
        5,
        "tiny-base",
    )
    .unwrap();
    for (i, p) in a.params_mut().into_iter().enumerate() {
        for (j, x) in p.iter_mut().enumerate() {
            *x = ((i * 31 + j * 7) % 13) as f32 * 0.01 - 0.06;
        }
    }
    a
}

#[test]
fn peft_round_trip_is_identical() {
    let m = tiny("peft-rt", &TinySpec::default());
    for (targets, rslora) in [(Proj::ALL.to_vec(), false), (vec![Proj::Q, Proj::V, Proj::Down], true)] {
        let a = random_adapter(&m, targets, rslora);
        let d = fresh_dir("peft-rt-out");
        peft::save(&a, &d).unwrap();
        let b = peft::load(&d, &m.config).unwrap();
        assert_eq!(a, b);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["task_type"], "CAUSAL_LM");
        assert_eq!(cfg["use_rslora"], rslora);
        assert_eq!(cfg["base_model_name_or_path"], "tiny-base");
    }
}

#[test]
fn an_adapter_for_another_base_is_refused() {
    let m = tiny("peft-base-a", &TinySpec::default());
    let other = tiny(
        "peft-base-b",
        &TinySpec {
            hidden: 48,
            heads: 4,
            ..TinySpec::default()
        },
    );
    let a = random_adapter(&m, Proj::ALL.to_vec(), false);
    let d = fresh_dir("peft-other");
    peft::save(&a, &d).unwrap();
    let e = peft::load(&d, &other.config).unwrap_err();
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor.contains("lora_") && what.contains("shape")),
        "{e}"
    );
    let deeper = tiny(
        "peft-base-c",
        &TinySpec {
            layers: 3,
            ..TinySpec::default()
        },
    );
    let e = peft::load(&d, &deeper.config).unwrap_err();
    assert!(
        matches!(&e, Error::Tensor { what, .. } if what.contains("missing")),
        "{e}"
    );
    let shallower = tiny(
        "peft-base-d",
        &TinySpec {
            layers: 1,
            ..TinySpec::default()
        },
    );
    let e = peft::load(&d, &shallower.config).unwrap_err();
    assert!(
        matches!(&e, Error::Tensor { what, .. } if what.contains("not part of")),
        "{e}"
    );
}

#[test]
fn unsupported_peft_options_name_the_field() {
    let m = tiny("peft-opts", &TinySpec::default());
    let a = random_adapter(&m, Proj::ALL.to_vec(), false);
    for (field, value) in [
        ("use_dora", serde_json::json!(true)),
        ("rank_pattern", serde_json::json!({"q_proj": 2})),
        ("target_modules", serde_json::json!(["q_proj", "lm_head"])),
        ("peft_type", serde_json::json!("IA3")),
        ("r", serde_json::json!(0)),
    ] {
        let d = fresh_dir("peft-opts-out");
        peft::save(&a, &d).unwrap();
        let p = d.join("adapter_config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg[field] = value;
        std::fs::write(&p, cfg.to_string()).unwrap();
        let e = peft::load(&d, &m.config).unwrap_err();
        assert!(
            matches!(&e, Error::Field { field: f, .. } if f == field),
            "{field}: {e}"
        );
    }
}

#[test]
fn the_adapter_changes_scores_and_zero_b_changes_nothing() {
    let m = tiny("peft-score", &TinySpec::default());
    let zero = Adapter::new(&m.config, LoraConfig::default(), 3, "x").unwrap();
    let item = || {
        vec![nudge::score::ScoreItem {
            prompt: &[1, 5, 6][..],
            completions: vec![&[7, 8, 2][..]],
        }]
    };
    let base = m.score_packed(&item()).unwrap();
    let with_zero = m.score_packed_with(&item(), Some(&zero)).unwrap();
    assert_eq!(base, with_zero, "B = 0 must leave the model unchanged, bit for bit");
    let a = random_adapter(&m, Proj::ALL.to_vec(), false);
    let with_a = m.score_packed_with(&item(), Some(&a)).unwrap();
    assert_ne!(base[0][0].token_logps, with_a[0][0].token_logps);
}

#[test]
fn one_set_of_chat_rules_for_rows_and_events() {
    use nudge::data::chat;
    let m = tiny("rows-chat", &TinySpec::default());
    for (case, prompt, completion, ok) in common::chat_rule_cases() {
        let got = chat::parse(&prompt, &[("completion", &completion)]);
        assert_eq!(got.is_ok(), ok, "{case}: {got:?}");
        // A dataset row is read by the same rules: its errors name the file and row.
        let row = serde_json::json!({"prompt": prompt, "completion": completion, "label": true});
        if !ok {
            let e = tokenize_row(&m.tokenizer, &row, Path::new("data.jsonl"), 3).unwrap_err();
            assert!(matches!(e, Error::Row { row: 3, .. }), "{case}: {e}");
        }
    }
}
