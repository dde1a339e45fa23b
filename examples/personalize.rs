//! Personalize a model from a JSONL of preference pairs, through the library in a few
//! lines: open the base, read the pairs (TRL's format), train a LoRA adapter with DPO,
//! save it as a PEFT folder, and compare a pair's log-probs before and after.
//!
//! ```sh
//! cargo run --release --example personalize -- MODEL PAIRS.jsonl OUT_DIR
//! ```

use nudge::{Adapter, Control, LoraConfig, Model, PreferenceSet, ScoreItem, TrainConfig, Trainer, Truncation};
use std::path::Path;

/// What a run did: steps taken, and the first pair's (chosen - rejected) log-prob margin
/// under the base and the adapted model.
#[derive(Debug)]
pub struct Outcome {
    pub steps: usize,
    pub margin_base: f64,
    pub margin_adapted: f64,
}

pub fn personalize(model: &Path, pairs: &Path, out: &Path, config: TrainConfig) -> nudge::Result<Outcome> {
    let model = Model::open(model)?;
    let limits = Truncation::max_length(model.config.max_position_embeddings);
    let data = PreferenceSet::from_jsonl(&model.tokenizer, pairs, &limits)?;
    let first = data
        .pairs
        .first()
        .cloned()
        .ok_or_else(|| nudge::Error::invalid("no preference pair in the data"))?;
    let adapter = Adapter::new(&model.config, LoraConfig::default(), 42, model.name())?;
    let mut trainer = Trainer::new(&model, adapter, config, data)?;
    let mut steps = 0;
    trainer.run(&mut |m| {
        println!(
            "step {}: loss {:.4}, reward accuracy {:.2}",
            m.step, m.loss, m.rewards.rewards_accuracies
        );
        steps += 1;
        Control::Continue
    })?;
    nudge::adapter::peft::save(&trainer.adapter, out)?;

    let item = ScoreItem {
        prompt: &first.prompt,
        completions: vec![&first.chosen, &first.rejected],
    };
    let margin = |s: &[nudge::Scored]| s[0].logp - s[1].logp;
    let base = model.score_packed(std::slice::from_ref(&item))?;
    let adapted = model.score_packed_with(&[item], Some(&trainer.adapter))?;
    Ok(Outcome {
        steps,
        margin_base: margin(&base[0]),
        margin_adapted: margin(&adapted[0]),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, pairs, out] = args.as_slice() else {
        eprintln!("usage: personalize MODEL PAIRS.jsonl OUT_DIR");
        std::process::exit(2);
    };
    match personalize(model.as_ref(), pairs.as_ref(), out.as_ref(), TrainConfig::default()) {
        Ok(o) => println!(
            "{} steps; the first pair's margin went from {:.3} to {:.3}; adapter in {out}",
            o.steps, o.margin_base, o.margin_adapted
        ),
        Err(e) => {
            eprintln!("personalize: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example runs as written on a tiny model shipped with the tests.
    #[test]
    fn personalizes_a_tiny_model() {
        let dir = std::env::temp_dir().join(format!("nudge-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pairs = dir.join("pairs.jsonl");
        let row = r#"{"prompt": "hello there", "chosen": "a b c", "rejected": "d e f g"}"#;
        std::fs::write(&pairs, format!("{row}\n{row}\n")).unwrap();
        let out = dir.join("adapter");
        let config = TrainConfig {
            optimizer: nudge::AdamWConfig {
                lr: 1e-2,
                ..TrainConfig::default().optimizer
            },
            epochs: 3,
            ..TrainConfig::default()
        };
        let o = personalize(Path::new("tests/data/tiny/qwen2"), &pairs, &out, config).expect("runs");
        assert_eq!(o.steps, 3);
        assert!(o.margin_adapted > o.margin_base, "{o:?}");
        assert!(out.join("adapter_model.safetensors").is_file());
        assert!(out.join("adapter_config.json").is_file());
        std::fs::remove_dir_all(&dir).ok();
    }
}
