//! `nudge chat`: a conversation with the model (through adapters, to talk to the adapted
//! model) that keeps its KV cache between turns: each turn runs only its own tokens.
//! Reads one user message per line from stdin; `/undo`, `/reset`, `/quit`.

use crate::args::{AdapterArg, SamplingArgs, open_model};
use clap::Args;
use nudge::generate::Session;
use nudge::{Error, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct ChatArgs {
    /// The base model: a .gguf file or an HF model folder (with a chat template).
    #[arg(short, long)]
    model: PathBuf,
    #[command(flatten)]
    adapter: AdapterArg,
    /// The system prompt the conversation opens with.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

const HELP: &str = "one message per line; /undo drops the last turn, /reset starts over, /quit ends";

pub fn run(a: ChatArgs) -> Result<()> {
    let m = open_model(&a.model)?;
    if !m.tokenizer.has_chat_template() {
        return Err(Error::invalid(format!(
            "{}: the model has no chat template, which a conversation needs (try `nudge generate`)",
            a.model.display()
        )));
    }
    let adapter = a.adapter.load(&m)?;
    let mut opts = a.sampling.options();
    opts.validate()?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("nudge chat: {HELP}");
    }
    let mut session = Session::new(&m, a.system.as_deref());
    let mut stdout = std::io::stdout().lock();
    let out = |e| Error::io("<stdout>", e);
    let mut turn = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| Error::io("<stdin>", e))?;
        let text = line.trim();
        match text {
            "" => continue,
            "/quit" | "/exit" => break,
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            "/reset" => {
                session = Session::new(&m, a.system.as_deref());
                eprintln!("[new conversation]");
                continue;
            }
            "/undo" => {
                match session.rollback(1) {
                    Ok(_) => eprintln!("[last turn removed]"),
                    Err(e) => eprintln!("[{e}]"),
                }
                continue;
            }
            _ => {}
        }
        opts.seed = a.sampling.seed.wrapping_add(turn);
        turn += 1;
        if interactive {
            write!(stdout, "> ").map_err(out)?;
        }
        let start = Instant::now();
        let mut write_err = None;
        let reply = session.reply(&m, adapter.as_ref(), text, &opts, |_, delta| {
            match write!(stdout, "{delta}").and_then(|_| stdout.flush()) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    write_err = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        if let Some(e) = write_err {
            return Err(out(e));
        }
        writeln!(stdout).map_err(out)?;
        eprintln!(
            "[{} tokens, {}; {} tokens of the conversation reused, {} held; {:.1}s]",
            reply.ids.len(),
            reply.stop_reason.as_str(),
            session.reused_tokens(),
            session.cached_tokens(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
