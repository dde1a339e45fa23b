//! What the fuzz targets share: a scratch folder per process, the tiny model that fuzzed
//! files are put beside, and short uses of what a parser returned (a forward pass, a
//! tokenization, a chat rendering), so that values a parser let through are also used.
//!
//! Every library call's `Err` is an accepted outcome; only panics, aborts, hangs, running
//! out of memory and sanitizer reports are findings. The harness itself may panic only on
//! failures of its own scratch folder.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nudge::data::{PreferenceSet, Truncation};
use nudge::tokenizer::{ChatMessage, SpecialTokens, TextTokenizer};
use nudge::{Adapter, Model, ScoreItem, TrainConfig, Trainer};

/// The tiny Llama of `fixtures/tiny_llama` (vocabulary of the test models, hidden size 8,
/// one layer). Compiled in, so that a target binary and its reproducers run from anywhere.
pub const TINY_MODEL: &[(&str, &[u8])] = &[
    ("config.json", include_bytes!("../fixtures/tiny_llama/config.json")),
    (
        "model.safetensors",
        include_bytes!("../fixtures/tiny_llama/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../fixtures/tiny_llama/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../fixtures/tiny_llama/tokenizer_config.json"),
    ),
    (
        "chat_template.jinja",
        include_bytes!("../fixtures/tiny_llama/chat_template.jinja"),
    ),
];

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// This process's scratch folder: under `$NUDGE_FUZZ_TMP` when set (scripts/fuzz.sh
/// removes that folder whatever happens), else in RAM under /dev/shm. Removed at a normal
/// exit; a crash leaves it for the script to remove.
pub fn scratch() -> &'static Path {
    SCRATCH.get_or_init(|| {
        let base = match std::env::var_os("NUDGE_FUZZ_TMP") {
            Some(dir) => PathBuf::from(dir),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("nudge-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch folder");
        // SAFETY: registers a plain function; libFuzzer ends a run with exit().
        unsafe { atexit(remove_scratch) };
        dir
    })
}

/// Lets a panic that the library catches itself unwind to its `catch_unwind`, for the
/// targets whose entry point does that (`tokenizer.json` parsing, src/tokenizer/hf_dir.rs:
/// the `tokenizers` crate's deserializers panic on some input, which the library turns into
/// an error). libfuzzer-sys's hook aborts at every panic, before unwinding, so such a panic
/// would count as a crash. A panic that leaves the target still aborts, in libfuzzer-sys's
/// `catch_unwind` around it, after this hook printed where it came from.
pub fn allow_caught_panics() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{info}");
        let trace = std::backtrace::Backtrace::capture();
        if trace.status() == std::backtrace::BacktraceStatus::Captured {
            eprintln!("{trace}");
        }
    }));
}

/// Writes `bytes` to `dir/name` (the harness's own failure, not a finding, if it cannot).
pub fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write into the scratch folder");
    path
}

/// A folder `name` in the scratch folder holding the tiny model's files except `without`,
/// whose place the fuzzed file takes.
pub fn tiny_model_dir(name: &str, without: &[&str]) -> PathBuf {
    let dir = scratch().join(name);
    std::fs::create_dir_all(&dir).expect("create a model folder");
    for (file, bytes) in TINY_MODEL {
        if !without.contains(file) {
            put(&dir, file, bytes);
        }
    }
    dir
}

/// The tiny model, opened once per process (the base that adapters, checkpoints, journals
/// and JSONL rows are checked against).
pub fn tiny_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::open(tiny_model_dir("tiny", &[])).expect("the tiny model opens"))
}

/// One short forward pass through `model` (and `adapter`): the weights, shapes and factors
/// a file supplied reach the kernels.
pub fn forward(model: &Model, adapter: Option<&Adapter>) {
    let vocab = model.config.vocab_size.max(1) as u32;
    let ids: Vec<u32> = [1, 5, 9, 2].iter().map(|id| id % vocab).collect();
    let items = [ScoreItem {
        prompt: &ids[..2],
        completions: vec![&ids[2..]],
    }];
    let _ = model.score_packed_with(&items, adapter);
}

/// One DPO step on the tiny model, continuing `adapter` (what `nudge train --adapter`
/// does with an adapter file): its ranks and shapes reach the backward pass too.
pub fn train_step(adapter: Adapter) {
    static DATA: OnceLock<PreferenceSet> = OnceLock::new();
    let data = DATA.get_or_init(|| training_data(TRAIN_PAIRS));
    let config = TrainConfig {
        batch_size: 2,
        micro_batch_size: 2,
        ..Default::default()
    };
    if let Ok(mut trainer) = Trainer::new(tiny_model(), adapter, config, data.clone()) {
        let _ = trainer.train_step();
    }
}

/// Text with the special tokens, digits, an accent, an emoji and a lone newline.
const SAMPLE: &str = "Hi <|im_start|>user\n12345 caf\u{e9} \u{1f600}<|im_end|>\n";

/// A conversation with a system turn, an assistant turn and an empty message.
pub fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi <|im_end|> there"),
        ChatMessage::new("assistant", ""),
        ChatMessage::new("user", "2+2?"),
    ]
}

/// Encodes, decodes and renders a chat with a tokenizer a file described.
pub fn use_tokenizer(tok: &TextTokenizer) {
    for special in [false, true] {
        if let Ok(ids) = tok.encode(SAMPLE, special) {
            let _ = tok.decode(&ids, special);
        }
    }
    let _ = tok.decode(&[0, 1, 2, u32::MAX], false);
    for id in [0, 1, 2, tok.vocab_size() as u32] {
        let _ = tok.id_to_token(id);
    }
    let _ = (tok.bos_id(), tok.eos_id(), tok.token_to_id("<|im_end|>"));
    for add_generation_prompt in [false, true] {
        let _ = tok.apply_chat_template(&conversation(), add_generation_prompt);
    }
}

/// The special tokens of the tiny model's `tokenizer_config.json`.
pub fn tiny_special_tokens() -> SpecialTokens {
    SpecialTokens {
        bos: Some("<|im_start|>".into()),
        eos: Some("<|im_end|>".into()),
        unk: None,
        pad: Some("<|endoftext|>".into()),
    }
}

/// The JSONL that the checkpoint seeds were trained on (see fuzz/make_seeds.sh): a resume
/// needs the same data, tokenized the same way, as the run it continues.
pub const TRAIN_PAIRS: &str = include_str!("../fixtures/train_pairs.jsonl");
pub const TRAIN_THUMBS: &str = include_str!("../fixtures/train_thumbs.jsonl");

/// `text` as `nudge train` reads it for the tiny model (default truncation: the context).
pub fn training_data(text: &str) -> PreferenceSet {
    let model = tiny_model();
    let limits = Truncation::max_length(model.config.max_position_embeddings);
    PreferenceSet::from_jsonl_text(&model.tokenizer, text, Path::new("train.jsonl"), &limits)
        .expect("the training data tokenizes")
}
