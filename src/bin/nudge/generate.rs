//! `nudge generate`: a reply from the model (with an adapter, to see what it changed),
//! streamed to stdout; counts and speed to stderr. With `--prompts FILE.jsonl`, replies to
//! every row (several samples each), decoded together in batches, one JSON line per reply.

use crate::args::{AdapterArg, SamplingArgs, open_model};
use clap::Args;
use nudge::data::chat;
use nudge::fsutil::AtomicFile;
use nudge::generate::{BatchOptions, GenerateOptions, GenerateRequest, Generated, generate, generate_batch_with};
use nudge::model::Model;
use nudge::tokenizer::ChatMessage;
use nudge::{Error, Result};
use serde_json::Value;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct GenerateArgs {
    /// The base model: a .gguf file or an HF model folder.
    #[arg(short, long)]
    model: PathBuf,
    #[command(flatten)]
    adapter: AdapterArg,
    /// Render the prompt as one user message with the chat template and generation prompt
    /// (with --prompts: the rows whose `prompt` is a string).
    #[arg(long)]
    chat: bool,
    /// A system prompt before the user's message (implies --chat; with --prompts, for the
    /// rows whose `prompt` is a string).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// One prompt; the reply is streamed to stdout.
    #[arg(short, long, required_unless_present = "prompts", conflicts_with = "prompts")]
    prompt: Option<String>,
    /// A JSONL file of prompts, one per line: `{"prompt": "text"}` or `{"messages":
    /// [{"role": .., "content": ..}, ..]}` (always rendered with the chat template), with
    /// optional `max_new_tokens`, `temperature`, `top_k`, `top_p`, `seed` overriding the
    /// flags. Writes one JSON line per reply: row, sample, prompt, text, tokens, stop_reason.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Replies per prompt (with --prompts; default 1); sample k draws with seed + k.
    #[arg(long)]
    samples: Option<usize>,
    /// Where the JSON lines go (with --prompts; default stdout).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// The most replies decoded together (with --prompts; default 16).
    #[arg(long)]
    batch: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

impl GenerateArgs {
    fn options(&self) -> GenerateOptions {
        self.sampling.options()
    }

    /// A text prompt as chat messages (with --chat or --system), or None for raw text.
    fn messages(&self, text: &str) -> Option<Vec<ChatMessage>> {
        let system = self.system.as_ref().map(|s| ChatMessage::new("system", s.as_str()));
        (self.chat || system.is_some()).then(|| system.into_iter().chain([ChatMessage::new("user", text)]).collect())
    }
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let m = open_model(&a.model)?;
    let adapter = a.adapter.load(&m)?;
    match (&a.prompt, &a.prompts) {
        (_, Some(file)) => run_batch(&a, &m, adapter.as_ref(), file),
        (Some(prompt), None) => {
            if a.samples.is_some() || a.out.is_some() || a.batch.is_some() {
                return Err(Error::invalid(
                    "--samples, --out and --batch go with --prompts FILE.jsonl",
                ));
            }
            run_one(&a, &m, adapter.as_ref(), prompt)
        }
        (None, None) => Err(Error::invalid("give --prompt TEXT or --prompts FILE.jsonl")),
    }
}

/// Token ids of a text prompt: as a user message (after the system prompt, if any)
/// through the chat template, or as it is. A rendered chat already holds its special
/// tokens; a raw prompt gets the tokenizer's (e.g. BOS), as transformers does.
fn text_prompt(m: &Model, text: &str, a: &GenerateArgs) -> Result<Vec<u32>> {
    match a.messages(text) {
        Some(messages) => chat_prompt(m, &messages),
        None => m.tokenizer.encode(text, true),
    }
}

fn chat_prompt(m: &Model, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    let text = m.tokenizer.apply_chat_template(messages, true)?;
    m.tokenizer.encode(&text, false)
}

fn run_one(a: &GenerateArgs, m: &Model, adapter: Option<&nudge::adapter::Adapter>, prompt: &str) -> Result<()> {
    let prompt = text_prompt(m, prompt, a)?;
    let opts = a.options();
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let start = Instant::now();
    let mut first = None; // when the first new token (prefill + one sample) was ready
    let mut streamed = 0usize;
    let out = generate(m, &prompt, &opts, adapter, |_, delta| {
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

/// One output line of `--prompts`, fields in this order.
#[derive(serde::Serialize)]
struct ReplyLine<'a> {
    row: usize,
    sample: usize,
    prompt: &'a Value,
    text: &'a str,
    tokens: usize,
    stop_reason: &'static str,
}

/// One row of a prompts file, tokenized, with its settings.
struct PromptRow {
    line: usize,
    prompt: Value,
    ids: Vec<u32>,
    opts: GenerateOptions,
}

const ROW_KEYS: [&str; 7] = [
    "prompt",
    "messages",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
];

fn parse_row(
    m: &Model,
    v: &Value,
    defaults: &GenerateOptions,
    a: &GenerateArgs,
) -> std::result::Result<PromptRow, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    if let Some(k) = obj.keys().find(|k| !ROW_KEYS.contains(&k.as_str())) {
        return Err(format!("unknown field `{k}` (known: {})", ROW_KEYS.join(", ")));
    }
    let messages = |v: &Value, key: &str| chat::messages(v, key).map_err(|e| e.to_string());
    let (prompt, ids) = match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(s)), None) => (v["prompt"].clone(), text_prompt(m, s, a)),
        // TRL's conversational prompt: a message list under `prompt`.
        (Some(p @ Value::Array(_)), None) => (p.clone(), chat_prompt(m, &messages(p, "prompt")?)),
        (None, Some(p)) => (p.clone(), chat_prompt(m, &messages(p, "messages")?)),
        (Some(_), None) => return Err("`prompt` is neither a string nor a list of chat messages".into()),
        (Some(_), Some(_)) => return Err("both `prompt` and `messages`: give one".into()),
        (None, None) => return Err("no `prompt` or `messages`".into()),
    };
    let ids = ids.map_err(|e| e.to_string())?;
    let uint = |k: &str, d: u64| -> std::result::Result<u64, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(x) => x.as_u64().ok_or(format!("`{k}` is not a non-negative integer")),
        }
    };
    let float = |k: &str, d: f32| -> std::result::Result<f32, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(x) => x.as_f64().map(|f| f as f32).ok_or(format!("`{k}` is not a number")),
        }
    };
    let opts = GenerateOptions {
        max_new_tokens: uint("max_new_tokens", defaults.max_new_tokens as u64)? as usize,
        temperature: float("temperature", defaults.temperature)?,
        top_k: uint("top_k", defaults.top_k as u64)? as usize,
        top_p: float("top_p", defaults.top_p)?,
        seed: uint("seed", defaults.seed)?,
        stop_tokens: None,
        stop_strings: defaults.stop_strings.clone(),
    };
    opts.validate().map_err(|e| e.to_string())?;
    Ok(PromptRow {
        line: 0,
        prompt,
        ids,
        opts,
    })
}

fn run_batch(a: &GenerateArgs, m: &Model, adapter: Option<&nudge::adapter::Adapter>, file: &Path) -> Result<()> {
    let samples = a.samples.unwrap_or(1);
    if samples == 0 {
        return Err(Error::invalid("--samples must be at least 1"));
    }
    if a.batch == Some(0) {
        return Err(Error::invalid("--batch must be at least 1"));
    }
    let defaults = a.options();
    defaults.validate()?;
    let rows = nudge::data::read_jsonl(file)?
        .into_iter()
        .map(|(line, v)| {
            let mut r = parse_row(m, &v, &defaults, a).map_err(|what| Error::row(file, line, what))?;
            r.line = line;
            Ok(r)
        })
        .collect::<Result<Vec<_>>>()?;
    // Request i is sample i % samples of row i / samples.
    let requests: Vec<GenerateRequest> = rows
        .iter()
        .flat_map(|r| {
            (0..samples).map(|k| GenerateRequest {
                prompt: r.ids.clone(),
                opts: GenerateOptions {
                    seed: r.opts.seed.wrapping_add(k as u64),
                    ..r.opts.clone()
                },
            })
        })
        .collect();
    for (i, r) in requests.iter().enumerate().step_by(samples) {
        r.check(m)
            .map_err(|e| Error::row(file, rows[i / samples].line, e.to_string()))?;
    }
    // A file appears whole once every reply is in (a failed run leaves none).
    let staged = a.out.as_deref().map(AtomicFile::new).transpose()?;
    let (out_name, mut out): (PathBuf, Box<dyn Write + '_>) = match &staged {
        Some(f) => (f.path().to_path_buf(), Box::new(std::io::BufWriter::new(f.file()))),
        None => ("<stdout>".into(), Box::new(std::io::stdout().lock())),
    };
    let line = |i: usize, g: &Generated| {
        let r = &rows[i / samples];
        let reply = ReplyLine {
            row: r.line,
            sample: i % samples,
            prompt: &r.prompt,
            text: &g.text,
            tokens: g.ids.len(),
            stop_reason: g.stop_reason.as_str(),
        };
        serde_json::to_string(&reply).expect("a reply serializes")
    };
    let bar = crate::commands::progress(requests.len() as u64);
    let batch = BatchOptions {
        max_rows: a.batch.unwrap_or(16),
        ..BatchOptions::default()
    };
    // Replies are written in request order, each as soon as it and those before it ended.
    let mut ready: Vec<Option<String>> = vec![None; requests.len()];
    let mut next = 0;
    let mut write_err = None;
    let start = Instant::now();
    let result = generate_batch_with(m, &requests, adapter, &batch, |p| {
        for (i, g) in p.finished {
            ready[*i] = Some(line(*i, g));
        }
        while let Some(v) = ready.get_mut(next).and_then(Option::take) {
            if let Err(e) = writeln!(out, "{v}") {
                write_err = Some(e);
                return ControlFlow::Break(());
            }
            next += 1;
        }
        bar.set_position(p.done as u64);
        let secs = start.elapsed().as_secs_f64();
        bar.set_message(format!(
            "{} rows, {:.1} tokens/s",
            p.rows,
            p.generated as f64 / secs.max(1e-9)
        ));
        ControlFlow::Continue(())
    });
    bar.finish_and_clear();
    let replies = result.map_err(|e| match e {
        Error::Request { index, source } => Error::row(file, rows[index / samples].line, source.to_string()),
        e => e,
    })?;
    if let Some(e) = write_err {
        return Err(Error::io(&out_name, e));
    }
    // The rest: replies that ended before any step (nothing to generate).
    for (i, g) in replies.iter().enumerate().skip(next) {
        writeln!(out, "{}", line(i, g)).map_err(|e| Error::io(&out_name, e))?;
    }
    out.flush().map_err(|e| Error::io(&out_name, e))?;
    drop(out);
    if let Some(f) = staged {
        f.commit()?;
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens: usize = replies.iter().map(|g| g.ids.len()).sum();
    eprintln!(
        "{} rows x {} samples: {} replies, {tokens} new tokens in {secs:.1} s, {:.1} tokens/s ({} rows at a time)",
        rows.len(),
        samples,
        replies.len(),
        tokens as f64 / secs.max(1e-9),
        batch.max_rows
    );
    Ok(())
}
