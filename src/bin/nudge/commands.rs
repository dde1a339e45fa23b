//! The inspection, conversion and scoring commands.

use crate::args::{AdapterArg, open_model};
use nudge::Result;
use nudge::convert::{FloatType, convert_to_hf};
use nudge::data::{Example, read_jsonl, tokenize_row};
use nudge::score::ScoreItem;
use nudge::tokenizer::ChatMessage;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub fn info(path: &Path, as_json: bool) -> Result<()> {
    let m = open_model(path)?;
    let c = &m.config;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for t in m.weights.matrices() {
        *dtypes.entry(t.dtype.name().to_string()).or_default() += 1;
    }
    let v = json!({
        "path": m.path.display().to_string(),
        "name": m.name(),
        "fingerprint": m.fingerprint(),
        "format": format!("{:?}", m.format),
        "architecture": c.architecture.gguf_name(),
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "matrix_dtypes": dtypes,
        "bytes_mapped": m.weights.mapped_bytes(),
        "chat_template": m.tokenizer.has_chat_template(),
        "kernels": nudge::isa::Isa::best().name(),
    });
    if as_json {
        println!("{v}");
    } else {
        for (k, val) in v.as_object().expect("object") {
            println!("{k:>24}: {val}");
        }
    }
    Ok(())
}

pub fn tokenize(path: &Path, chat: bool, special: bool, text: &str) -> Result<()> {
    let m = open_model(path)?;
    let text = if chat {
        m.tokenizer
            .apply_chat_template(&[ChatMessage::new("user", text)], true)?
    } else {
        text.to_string()
    };
    let ids = m.tokenizer.encode(&text, special)?;
    let tokens: Vec<String> = ids
        .iter()
        .map(|&i| m.tokenizer.id_to_token(i).unwrap_or_default())
        .collect();
    println!("{}", json!({"ids": ids, "tokens": tokens, "text": text}));
    Ok(())
}

pub fn convert(path: &Path, out: &Path, dtype: FloatType) -> Result<()> {
    let m = open_model(path)?;
    convert_to_hf(&m, out, dtype)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

pub fn score(path: &Path, data: &Path, adapter: &AdapterArg) -> Result<()> {
    let m = open_model(path)?;
    let adapter = adapter.load(&m)?;
    let adapter = adapter.as_ref();
    let rows = read_jsonl(data)?;
    let bar = progress(rows.len() as u64);
    let mut stdout = std::io::stdout().lock();
    for (row, v) in rows {
        let line = match tokenize_row(&m.tokenizer, &v, data, row)? {
            Example::Pair(p) => {
                let item = ScoreItem {
                    prompt: &p.prompt,
                    completions: vec![&p.chosen, &p.rejected],
                };
                let s = m.score_packed_with(&[item], adapter)?.remove(0);
                json!({
                    "row": row,
                    "chosen_logp": s[0].logp,
                    "rejected_logp": s[1].logp,
                    "prompt_tokens": p.prompt.len(),
                    "chosen_tokens": p.chosen.len(),
                    "rejected_tokens": p.rejected.len(),
                })
            }
            Example::Unpaired(u) => {
                let item = ScoreItem {
                    prompt: &u.prompt,
                    completions: vec![&u.completion],
                };
                let s = m.score_packed_with(&[item], adapter)?.remove(0).remove(0);
                json!({
                    "row": row,
                    "logp": s.logp,
                    "label": u.label,
                    "prompt_tokens": u.prompt.len(),
                    "completion_tokens": u.completion.len(),
                })
            }
        };
        writeln!(stdout, "{line}").map_err(|e| nudge::Error::io("<stdout>", e))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// A progress bar on a terminal; hidden otherwise (CI, pipes).
pub fn progress(n: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(n);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
                .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    }
}
