//! `nudge generate`: a reply from the model (with an adapter, to see what it changed),
//! streamed to stdout; counts and speed to stderr.

use crate::args::{AdapterArg, open_model};
use clap::Args;
use nudge::generate::{GenerateOptions, generate};
use nudge::tokenizer::ChatMessage;
use nudge::{Error, Result};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct GenerateArgs {
    /// The base model: a .gguf file or an HF model folder.
    #[arg(short, long)]
    model: PathBuf,
    #[command(flatten)]
    adapter: AdapterArg,
    /// Render the prompt as one user message with the chat template and generation prompt.
    #[arg(long)]
    chat: bool,
    /// The prompt text.
    #[arg(short, long)]
    prompt: String,
    /// Stop after this many new tokens.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the K most likely tokens (0 = no limit).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probabilities reach P (1 = all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let m = open_model(&a.model)?;
    let adapter = a.adapter.load(&m)?;
    // A rendered chat already holds its special tokens; a raw prompt gets the
    // tokenizer's (e.g. BOS), as transformers does.
    let prompt = if a.chat {
        let text = m
            .tokenizer
            .apply_chat_template(&[ChatMessage::new("user", &a.prompt)], true)?;
        m.tokenizer.encode(&text, false)?
    } else {
        m.tokenizer.encode(&a.prompt, true)?
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_tokens: None,
    };
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let start = Instant::now();
    let mut first = None; // when the first new token (prefill + one sample) was ready
    let mut streamed = 0usize;
    let out = generate(&m, &prompt, &opts, adapter.as_ref(), |_, delta| {
        first.get_or_insert_with(Instant::now);
        streamed += 1;
        match write!(stdout, "{delta}").and_then(|_| stdout.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    let end = Instant::now();
    if let Some(e) = write_err {
        return Err(Error::io("<stdout>", e));
    }
    writeln!(stdout).map_err(|e| Error::io("<stdout>", e))?;
    let prefill = first.map_or(end - start, |f| f - start);
    let decode = first.map(|f| end - f).unwrap_or_default();
    let tok_s = if streamed > 1 && !decode.is_zero() {
        // The first streamed token came from the prefill; the rest each from one step.
        format!("{:.1}", (out.ids.len() - 1) as f64 / decode.as_secs_f64())
    } else {
        "-".to_string()
    };
    eprintln!(
        "prompt {} tokens, prefill {:.0} ms; {} new tokens, decode {tok_s} tokens/s; stop: {}",
        prompt.len(),
        prefill.as_secs_f64() * 1e3,
        out.ids.len(),
        out.stop_reason.as_str()
    );
    Ok(())
}
