//! `nudge journal`: the feedback journal from the command line.

use clap::{Args, Subcommand, ValueEnum};
use nudge::data::chat::{self, Content};
use nudge::journal::{
    CompactOptions, Durability, Journal, PreferencePair, Prompt, Record, Recovery, Target, Thumbs, TrainingOptions,
    UnpairedPolicy,
};
use nudge::tokenizer::ChatMessage;
use nudge::{Error, Result};
use serde_json::{Value, json};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct JournalPath {
    /// The journal file (created by the commands that write when missing).
    #[arg(long)]
    journal: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DurabilityArg {
    /// fsync after every record.
    Every,
    /// fsync once at the end.
    Batch,
}

#[derive(Args)]
pub struct EventArgs {
    /// The prompt text (with --chat, the content of one user message).
    #[arg(short, long)]
    prompt: String,
    /// The prompt is one user message of a chat (rendered with the model's template).
    #[arg(long)]
    chat: bool,
    /// How strongly it was meant (1 = ordinary); the training weight.
    #[arg(long)]
    strength: Option<f32>,
    /// The app's id for the event (default: derived from its content and time).
    #[arg(long)]
    id: Option<String>,
    /// Milliseconds since the Unix epoch (default: now).
    #[arg(long)]
    timestamp_ms: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// Preference rows, plus KTO rows for thumbs without a partner (unless --unpaired keep).
    Pairs,
    /// Unpaired rows only: every thumb, and each pair as a desirable and an undesirable row.
    Kto,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum UnpairedArg {
    /// Write them as KTO rows (prompt, completion, label).
    Kto,
    /// Leave them in the journal for a later run, when a partner may have come.
    Keep,
}

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Append a thumbs-up or thumbs-down on a completion.
    Add {
        #[command(flatten)]
        path: JournalPath,
        #[command(flatten)]
        event: EventArgs,
        /// The model's answer that was rated.
        #[arg(long)]
        completion: String,
        /// Thumbs up: the user liked the answer.
        #[arg(long, conflicts_with = "down", required_unless_present = "down")]
        up: bool,
        /// Thumbs down: the user disliked the answer.
        #[arg(long)]
        down: bool,
    },
    /// Append an explicit preference: CHOSEN over REJECTED.
    AddPair {
        #[command(flatten)]
        path: JournalPath,
        #[command(flatten)]
        event: EventArgs,
        /// The answer the user preferred.
        #[arg(long)]
        chosen: String,
        /// The answer the user liked less.
        #[arg(long)]
        rejected: String,
    },
    /// Append events read from stdin as JSON lines (TRL rows: prompt/completion/label or
    /// prompt/chosen/rejected; optional id, strength, timestamp_ms). Prints each event's
    /// sequence number once it is written (and fsynced, with --durability every).
    Ingest {
        #[command(flatten)]
        path: JournalPath,
        /// When records are fsynced.
        #[arg(long, value_enum, default_value = "every")]
        durability: DurabilityArg,
    },
    /// The records, oldest first.
    List {
        #[command(flatten)]
        path: JournalPath,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only events new since the last training run.
        #[arg(long)]
        new: bool,
    },
    /// Counts: events, up, down, pairs, new since the last training run, file size.
    Stats {
        #[command(flatten)]
        path: JournalPath,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write training data as TRL JSONL for `nudge train --data`.
    Export {
        #[command(flatten)]
        path: JournalPath,
        /// The JSONL file to write.
        #[arg(short, long)]
        out: PathBuf,
        /// Which rows to write.
        #[arg(long, value_enum, default_value = "pairs")]
        format: FormatArg,
        /// Thumbs without a partner: KTO rows, or kept for a later run.
        #[arg(long, value_enum, default_value = "kto")]
        unpaired: UnpairedArg,
        /// Only events new since the last training run.
        #[arg(long)]
        only_new: bool,
        /// Also append a training mark saying this export was consumed.
        #[arg(long)]
        mark: bool,
    },
    /// Append a training mark: events up to UP_TO (default: all) were trained on.
    Mark {
        #[command(flatten)]
        path: JournalPath,
        /// The last sequence number the run trained on (default: the newest).
        #[arg(long)]
        up_to: Option<u64>,
        /// Events at or before UP_TO left for a later run (comma-separated).
        #[arg(long, value_delimiter = ',')]
        unconsumed: Vec<u64>,
    },
    /// Forget events the user asks to remove: from now on they count for nothing (training,
    /// listings); the next `compact` (or --compact) removes them from the file. Prints the
    /// sequence numbers forgotten.
    #[command(group = clap::ArgGroup::new("which").required(true).multiple(true))]
    Forget {
        #[command(flatten)]
        path: JournalPath,
        /// An event's sequence number, as `list` shows it (repeatable).
        #[arg(long = "seq", value_name = "SEQ", group = "which")]
        seqs: Vec<u64>,
        /// Every event whose prompt is this text (with --chat: this one user message).
        #[arg(long, group = "which")]
        prompt: Option<String>,
        /// The --prompt is one user message of a chat.
        #[arg(long, requires = "prompt")]
        chat: bool,
        /// Every event recorded from this time on (milliseconds since the Unix epoch),
        /// up to --to-ms.
        #[arg(long, group = "which", requires = "to_ms")]
        from_ms: Option<u64>,
        /// The end (inclusive) of the --from-ms range.
        #[arg(long, requires = "from_ms")]
        to_ms: Option<u64>,
        /// Compact right away, so that the events leave the file now.
        #[arg(long)]
        compact: bool,
    },
    /// Rewrite without retried events, forgotten events and old marks (atomically).
    Compact {
        #[command(flatten)]
        path: JournalPath,
        /// Also drop events the last training run consumed.
        #[arg(long)]
        drop_trained: bool,
    },
    /// Rewrite a journal damaged in its middle without the damaged records (reported).
    Repair {
        #[command(flatten)]
        path: JournalPath,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn report(path: &Path, r: &Option<Recovery>, cut: bool) {
    if let Some(r) = r {
        eprintln!(
            "nudge: {}: {} a torn tail of {} bytes at byte {} ({}); {} records intact",
            path.display(),
            if cut { "cut off" } else { "ignoring" },
            r.cut_bytes,
            r.offset,
            r.why,
            r.records_kept
        );
    }
}

fn open(path: &Path, durability: Durability) -> Result<Journal> {
    let (j, r) = Journal::open(path, durability)?;
    report(path, &r, true);
    Ok(j)
}

fn open_read_only(path: &Path) -> Result<Journal> {
    let (j, r) = Journal::open_read_only(path)?;
    report(path, &r, false);
    Ok(j)
}

/// An id for an event the app did not name: a hash of its content, the time and the process.
fn derived_id(record: &Record) -> String {
    use sha2::{Digest, Sha256};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(record.to_json().to_string());
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn with_id(mut record: Record, id: Option<String>) -> Record {
    let id = id.unwrap_or_else(|| derived_id(&record));
    match &mut record {
        Record::Thumbs(t) => t.id = id,
        Record::Pair(p) => p.id = id,
        Record::TrainingMark(_) | Record::Forget(_) => {}
    }
    record
}

fn prompt_of(e: &EventArgs) -> Prompt {
    if e.chat {
        Prompt::Chat(vec![ChatMessage::new("user", e.prompt.clone())])
    } else {
        Prompt::Text(e.prompt.clone())
    }
}

fn append_one(path: &Path, record: Record) -> Result<()> {
    let mut j = open(path, Durability::EveryRecord)?;
    let id = record.id().map(str::to_string);
    let seq = j.append(record)?;
    j.close()?;
    println!("{}", json!({"seq": seq, "id": id}));
    Ok(())
}

/// One stdin line as a record.
fn parse_event(v: &Value) -> std::result::Result<Record, String> {
    // Prompt and completions by the engine's chat rules (those of the C API and of JSONL).
    let field = |k: &str| v.get(k).ok_or_else(|| format!("no `{k}`"));
    let keys: &[&str] = if v.get("completion").is_some() {
        &["completion"]
    } else {
        &["chosen", "rejected"]
    };
    let completions = keys
        .iter()
        .map(|&k| Ok((k, field(k)?)))
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let (prompt, answers) = chat::parse(field("prompt")?, &completions).map_err(|e| e.to_string())?;
    let prompt = match prompt {
        Content::Text(t) => Prompt::Text(t),
        Content::Messages(m) => Prompt::Chat(m),
    };
    // One answer per key, in the order of `keys`.
    let mut answers = answers.into_iter().map(Content::into_answer);
    let mut next = || answers.next().unwrap_or_default();
    let strength = match v.get("strength") {
        None | Some(Value::Null) => None,
        Some(x) => Some(x.as_f64().ok_or("`strength` is not a number")? as f32),
    };
    let timestamp_ms = match v.get("timestamp_ms") {
        None | Some(Value::Null) => now_ms(),
        Some(x) => x.as_u64().ok_or("`timestamp_ms` is not a non-negative integer")?,
    };
    let record = if v.get("completion").is_some() {
        let up = v
            .get("label")
            .and_then(Value::as_bool)
            .ok_or("`label` is not true or false")?;
        Record::Thumbs(Thumbs {
            id: String::new(),
            prompt,
            completion: next(),
            up,
            strength,
            timestamp_ms,
        })
    } else {
        Record::Pair(PreferencePair {
            id: String::new(),
            prompt,
            chosen: next(),
            rejected: next(),
            strength,
            timestamp_ms,
        })
    };
    let id = match v.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`id` is not a string".into()),
    };
    Ok(with_id(record, id))
}

fn ingest(path: &Path, durability: Durability) -> Result<()> {
    let mut j = open(path, durability)?;
    let stdin = Path::new("<stdin>");
    let mut out = std::io::stdout().lock();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| Error::io(stdin, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| Error::row(stdin, i + 1, format!("not JSON: {e}")))?;
        let record = parse_event(&v).map_err(|e| Error::row(stdin, i + 1, e))?;
        let seq = j.append(record).map_err(|e| Error::row(stdin, i + 1, e.to_string()))?;
        writeln!(out, "{}", json!({"line": i + 1, "seq": seq}))
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("<stdout>", e))?;
    }
    j.close()
}

fn short(s: &str) -> String {
    let one_line = s.replace('\n', " ");
    match one_line.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn prompt_text(p: &Prompt) -> String {
    match p {
        Prompt::Text(t) => short(t),
        Prompt::Chat(m) => short(m.last().map(|m| m.content.as_str()).unwrap_or_default()),
    }
}

fn list(path: &Path, as_json: bool, only_new: bool) -> Result<()> {
    let j = open_read_only(path)?;
    let forgotten = j.forgotten();
    let mut out = std::io::stdout().lock();
    for e in j.entries().iter().filter(|e| !forgotten.contains(&e.seq)) {
        let is_event = e.record.is_event();
        let new = is_event && j.is_new(e.seq);
        if only_new && !new {
            continue;
        }
        let line = if as_json {
            let mut v = e.record.to_json();
            v["seq"] = json!(e.seq);
            v["offset"] = json!(e.offset);
            if is_event {
                v["new"] = json!(new);
            }
            v.to_string()
        } else {
            let flag = if new { "*" } else { " " };
            match &e.record {
                Record::Thumbs(t) => format!(
                    "{:>6}{flag} {:<5} {:<16} {} → {}",
                    e.seq,
                    if t.up { "up" } else { "down" },
                    t.id,
                    prompt_text(&t.prompt),
                    short(&t.completion)
                ),
                Record::Pair(p) => format!(
                    "{:>6}{flag} pair  {:<16} {} → {} ≻ {}",
                    e.seq,
                    p.id,
                    prompt_text(&p.prompt),
                    short(&p.chosen),
                    short(&p.rejected)
                ),
                Record::TrainingMark(m) => format!(
                    "{:>6}  trained up to {} ({} left for later)",
                    e.seq,
                    m.up_to_sequence,
                    m.unconsumed.len()
                ),
                Record::Forget(f) => format!("{:>6}  forgot {} events", e.seq, f.seqs.len()),
            }
        };
        writeln!(out, "{line}").map_err(|e| Error::io("<stdout>", e))?;
    }
    Ok(())
}

fn stats(path: &Path, as_json: bool) -> Result<()> {
    let j = open_read_only(path)?;
    let v = serde_json::to_value(j.stats()).expect("serializable");
    if as_json {
        println!("{v}");
    } else {
        for (k, val) in v.as_object().expect("object") {
            println!("{k:>20}: {val}");
        }
    }
    Ok(())
}

fn export(path: &Path, out: &Path, format: FormatArg, unpaired: UnpairedArg, only_new: bool, mark: bool) -> Result<()> {
    let opts = TrainingOptions {
        only_new,
        target: match format {
            FormatArg::Pairs => Target::Dpo,
            FormatArg::Kto => Target::Kto,
        },
        unpaired: match unpaired {
            UnpairedArg::Kto => UnpairedPolicy::Kto,
            UnpairedArg::Keep => UnpairedPolicy::Keep,
        },
        truncation: Default::default(),
    };
    let mut j = if mark {
        open(path, Durability::EveryRecord)?
    } else {
        open_read_only(path)?
    };
    let plan = j.export_jsonl(out, &opts)?;
    let marked = match (mark, plan.mark(now_ms())) {
        (true, Some(m)) => Some(j.append(Record::TrainingMark(m))?),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "out": out.display().to_string(),
            "pairs": plan.pairs.len(),
            "unpaired": plan.unpaired.len(),
            "kept": plan.kept,
            "dropped": plan.dropped.len(),
            "up_to_sequence": plan.up_to_sequence,
            "mark_sequence": marked,
        })
    );
    Ok(())
}

pub fn run(cmd: JournalCommand) -> Result<()> {
    match cmd {
        JournalCommand::Add {
            path,
            event,
            completion,
            up,
            down: _,
        } => {
            let record = Record::Thumbs(Thumbs {
                id: String::new(),
                prompt: prompt_of(&event),
                completion,
                up,
                strength: event.strength,
                timestamp_ms: event.timestamp_ms.unwrap_or_else(now_ms),
            });
            append_one(&path.journal, with_id(record, event.id))
        }
        JournalCommand::AddPair {
            path,
            event,
            chosen,
            rejected,
        } => {
            let record = Record::Pair(PreferencePair {
                id: String::new(),
                prompt: prompt_of(&event),
                chosen,
                rejected,
                strength: event.strength,
                timestamp_ms: event.timestamp_ms.unwrap_or_else(now_ms),
            });
            append_one(&path.journal, with_id(record, event.id))
        }
        JournalCommand::Ingest { path, durability } => ingest(
            &path.journal,
            match durability {
                DurabilityArg::Every => Durability::EveryRecord,
                DurabilityArg::Batch => Durability::Batch,
            },
        ),
        JournalCommand::List { path, json, new } => list(&path.journal, json, new),
        JournalCommand::Stats { path, json } => stats(&path.journal, json),
        JournalCommand::Export {
            path,
            out,
            format,
            unpaired,
            only_new,
            mark,
        } => export(&path.journal, &out, format, unpaired, only_new, mark),
        JournalCommand::Mark {
            path,
            up_to,
            unconsumed,
        } => {
            let mut j = open(&path.journal, Durability::EveryRecord)?;
            let up_to = match up_to.or_else(|| j.entries().last().map(|e| e.seq)) {
                Some(s) => s,
                None => return Err(Error::invalid("the journal is empty: nothing to mark")),
            };
            let seq = j.mark_trained(up_to, unconsumed, now_ms())?;
            j.close()?;
            println!("{}", json!({"seq": seq, "up_to_sequence": up_to}));
            Ok(())
        }
        JournalCommand::Forget {
            path,
            seqs,
            prompt,
            chat,
            from_ms,
            to_ms,
            compact,
        } => {
            let mut j = open(&path.journal, Durability::EveryRecord)?;
            let mut which = seqs;
            if let Some(p) = prompt {
                let p = if chat {
                    Prompt::Chat(vec![ChatMessage::new("user", p)])
                } else {
                    Prompt::Text(p)
                };
                which.extend(j.events_of_prompt(&p));
            }
            if let (Some(from), Some(to)) = (from_ms, to_ms) {
                which.extend(j.events_between(from, to));
            }
            let forgotten = j.forget(&which, now_ms())?;
            let compacted = if compact {
                Some(j.compact(CompactOptions::default())?)
            } else {
                None
            };
            j.close()?;
            println!("{}", json!({"forgotten": forgotten, "compacted": compacted}));
            Ok(())
        }
        JournalCommand::Compact { path, drop_trained } => {
            let mut j = open(&path.journal, Durability::EveryRecord)?;
            let r = j.compact(CompactOptions { drop_trained })?;
            j.close()?;
            println!("{}", serde_json::to_string(&r).expect("serializable"));
            Ok(())
        }
        JournalCommand::Repair { path } => {
            let (j, r) = Journal::repair(&path.journal, Durability::EveryRecord)?;
            for s in &r.skipped {
                eprintln!(
                    "nudge: {}: dropped {} damaged bytes at byte {}: {}",
                    path.journal.display(),
                    s.bytes,
                    s.offset,
                    s.why
                );
            }
            report(&path.journal, &r.tail, true);
            j.close()?;
            println!("{}", serde_json::to_string(&r).expect("serializable"));
            Ok(())
        }
    }
}
