//! Builds the C tests of tests/c/ against the library cargo built (libnudge.so and
//! libnudge.a in target/<profile>/), runs them on the real model, and checks what the C
//! lifecycle reports against the engine called from Rust.

use engine::adapter::format::{gguf_lora, peft};
use engine::data::{Example, tokenize_row};
use engine::model::Model;
use engine::score::ScoreItem;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The real model: `NUDGE_MODEL`, default where `scripts/fetch-model.sh` puts it. A missing
/// model fails the test.
fn model_path() -> PathBuf {
    let p = match std::env::var_os("NUDGE_MODEL") {
        Some(p) => PathBuf::from(p),
        None => root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        p.exists(),
        "model not found at {} (run scripts/fetch-model.sh or set NUDGE_MODEL)",
        p.display()
    );
    p
}

/// target/<profile>/, where libnudge.so and libnudge.a are built once per test run. The
/// C library has no rlib (it would collide with the engine's), so `cargo test` does not
/// build it for this test: the test asks cargo for it, with this build's profile and target
/// folder, and so never runs the C tests against a stale library.
fn lib_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target/<profile>/deps")
                .to_path_buf();
            let target_dir = profile_dir.parent().expect("target/");
            let profile = profile_dir.file_name().and_then(|p| p.to_str()).expect("profile name");
            let profile = if profile == "debug" { "dev" } else { profile };
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--quiet", "-p", "nudge-ffi", "--lib", "--profile", profile])
                .arg("--target-dir")
                .arg(target_dir)
                .current_dir(root())
                .status()
                .expect("run cargo build -p nudge-ffi");
            assert!(status.success(), "cargo build -p nudge-ffi failed");
            for lib in ["libnudge.so", "libnudge.a"] {
                assert!(
                    profile_dir.join(lib).exists(),
                    "{} not built",
                    profile_dir.join(lib).display()
                );
            }
            profile_dir
        })
        .clone()
}

/// target/<profile>/c-tests/: the C programs and what they write.
fn out_dir() -> PathBuf {
    let dir = lib_dir().join("c-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Shared,
    Static,
    /// Shared, with the C side built with AddressSanitizer (leak checking on).
    Asan,
}

/// Compiles tests/c/<name>.c (or header.cpp) with the strict flags and links it.
fn build(name: &str, link: Link) -> PathBuf {
    let libs = lib_dir();
    let exe = out_dir().join(format!("{name}-{link:?}").to_lowercase());
    let src_dir = root().join("tests/c");
    let include = format!("-I{}", root().join("include").display());
    let mut cmd = if name == "header" {
        let mut c = Command::new("c++");
        c.args(["-std=c++11", "-Wall", "-Werror"])
            .arg(src_dir.join("header.cpp"));
        c
    } else {
        let mut c = Command::new("cc");
        c.args(["-std=c99", "-Wall", "-Wextra", "-Werror"])
            .arg(src_dir.join(format!("{name}.c")));
        c
    };
    cmd.args(["-g", &include, "-o"]).arg(&exe);
    if let Link::Asan = link {
        cmd.args(["-fsanitize=address", "-fno-omit-frame-pointer"]);
    }
    match link {
        Link::Shared | Link::Asan => {
            cmd.arg(format!("-L{}", libs.display()))
                .arg("-lnudge")
                .arg(format!("-Wl,-rpath,{}", libs.display()));
        }
        Link::Static => {
            // What a Rust static library needs from the system (rustc --print native-static-libs).
            cmd.arg(libs.join("libnudge.a"))
                .args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"]);
        }
    }
    cmd.args(["-lpthread", "-lm"]);
    let out = cmd.output().expect("run the C compiler");
    assert!(out.status.success(), "compiling {name} failed:\n{}", text(&out));
    if let Link::Static = link {
        let ldd = Command::new("ldd").arg(&exe).output().expect("ldd");
        assert!(
            !String::from_utf8_lossy(&ldd.stdout).contains("libnudge"),
            "{name} should not need libnudge.so"
        );
    }
    exe
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a C test on the model; it must exit 0 and print "<name>: ok". Returns its stdout.
fn run(exe: &Path, name: &str, extra: &[&Path]) -> String {
    let mut cmd = Command::new(exe);
    cmd.arg(model_path()).args(extra);
    cmd.env("ASAN_OPTIONS", "detect_leaks=1:exitcode=1");
    let supp = root().join("tests/c/lsan.supp");
    cmd.env(
        "LSAN_OPTIONS",
        format!("suppressions={}:print_suppressions=0", supp.display()),
    );
    let out = cmd.output().expect("run the C test");
    assert!(out.status.success(), "{name} failed:\n{}", text(&out));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("{name}: ok")) || l.starts_with("header.cpp: ok")),
        "{name} did not finish:\n{stdout}"
    );
    stdout
}

/// The `key=value` numbers of the output line that starts with `prefix`.
fn values(stdout: &str, prefix: &str) -> BTreeMap<String, f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}` in\n{stdout}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or_else(|_| panic!("{k}={v}"))))
        .collect()
}

/// The same texts as tests/c/common.h.
const PROMPT: &str = "What is the capital of France?";
const CHOSEN: &str = "The capital of France is Paris.";
const REJECTED: &str = "idk, look it up yourself";
const CHAT_PROMPT: &str = "How many legs does a cat have?";
const CHAT_CHOSEN: &str = "A cat has four legs.";

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: C API {got}, engine {want}"
    );
}

/// Scores with the engine directly: plain text the TRL way (EOS appended), and a chat
/// turn through the engine's row tokenizer.
fn engine_scores(model: &Model, adapter: Option<&engine::adapter::Adapter>) -> (f64, f64, f64) {
    let tok = &model.tokenizer;
    let text = |prompt: &str, completion: &str| {
        let p = tok.encode(prompt, false).unwrap();
        let mut c = tok.encode(completion, false).unwrap();
        c.push(tok.eos_id().unwrap());
        (p, c)
    };
    let row = json!({
        "prompt": [{"role": "user", "content": CHAT_PROMPT}],
        "completion": [{"role": "assistant", "content": CHAT_CHOSEN}],
        "label": true,
    });
    let Example::Unpaired(chat) = tokenize_row(tok, &row, Path::new("chat"), 0).unwrap() else {
        panic!("an unpaired row")
    };
    let items = [
        text(PROMPT, CHOSEN),
        text(PROMPT, REJECTED),
        (chat.prompt, chat.completion),
    ];
    let score = |(p, c): &(Vec<u32>, Vec<u32>)| {
        let item = ScoreItem {
            prompt: p,
            completions: vec![c],
        };
        model.score_packed_with(&[item], adapter).unwrap()[0][0].logp
    };
    (score(&items[0]), score(&items[1]), score(&items[2]))
}

#[test]
fn lifecycle_shared_matches_the_engine() {
    let exe = build("lifecycle", Link::Shared);
    let dir = out_dir().join("lifecycle-adapter");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = run(&exe, "lifecycle", &[&dir]);

    let model = Model::open(model_path()).unwrap();
    let c = &model.config;
    let info = values(&stdout, "info ");
    for (key, want) in [
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_layers", c.num_hidden_layers),
        ("heads", c.num_attention_heads),
        ("kv_heads", c.num_key_value_heads),
        ("head_dim", c.head_dim),
        ("context_length", c.max_position_embeddings),
        ("mapped_bytes", model.weights.mapped_bytes()),
    ] {
        assert_eq!(info[key], want as f64, "{key}");
    }
    assert_eq!(info["eos"], model.tokenizer.eos_id().unwrap() as f64);

    let base = values(&stdout, "base ");
    let (chosen, rejected, chat) = engine_scores(&model, None);
    close("base chosen", base["chosen"], chosen);
    close("base rejected", base["rejected"], rejected);
    close("base chat", base["chat"], chat);

    // The adapter the C side trained and saved, loaded and applied by the engine.
    let adapter = peft::load(&dir, &model.config).unwrap();
    assert_eq!((adapter.config.r, adapter.config.lora_alpha), (4, 8.0));
    let trained = values(&stdout, "trained ");
    let (chosen, rejected, chat) = engine_scores(&model, Some(&adapter));
    close("trained chosen", trained["chosen"], chosen);
    close("trained rejected", trained["rejected"], rejected);
    close("trained chat", trained["chat"], chat);
    assert!(trained["margin"] > 0.0);

    // The llama.cpp GGUF the C side wrote (f32) holds the same adapter.
    let from_gguf = gguf_lora::load(&dir.join("adapter.gguf"), &model.config).unwrap();
    let (chosen, rejected, chat) = engine_scores(&model, Some(&from_gguf));
    close("gguf chosen", trained["chosen"], chosen);
    close("gguf rejected", trained["rejected"], rejected);
    close("gguf chat", trained["chat"], chat);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lifecycle_static() {
    run(&build("lifecycle", Link::Static), "lifecycle", &[]);
}

#[test]
fn lifecycle_under_address_sanitizer() {
    run(&build("lifecycle", Link::Asan), "lifecycle", &[]);
}

#[test]
fn misuse_shared() {
    run(&build("misuse", Link::Shared), "misuse", &[]);
}

#[test]
fn misuse_static() {
    run(&build("misuse", Link::Static), "misuse", &[]);
}

#[test]
fn generate_shared_counts_tokens_as_the_engine_does() {
    let stdout = run(&build("generate", Link::Shared), "generate", &[]);
    let counted = values(&stdout, "tokens ");
    let model = Model::open(model_path()).unwrap();
    let tok = &model.tokenizer;
    let chat = tok
        .apply_chat_template(&[engine::tokenizer::ChatMessage::new("user", PROMPT)], true)
        .unwrap();
    assert_eq!(counted["chat"], tok.encode(&chat, false).unwrap().len() as f64);
    assert_eq!(counted["text"], tok.encode(CHOSEN, false).unwrap().len() as f64);
}

#[test]
fn generate_under_address_sanitizer() {
    run(&build("generate", Link::Asan), "generate", &[]);
}

#[test]
fn generate_batch_shared() {
    run(&build("generate_batch", Link::Shared), "generate_batch", &[]);
}

#[test]
fn generate_batch_under_address_sanitizer() {
    run(&build("generate_batch", Link::Asan), "generate_batch", &[]);
}

#[test]
fn journal_shared() {
    run(&build("journal", Link::Shared), "journal", &[]);
}

#[test]
fn journal_under_address_sanitizer() {
    run(&build("journal", Link::Asan), "journal", &[]);
}

#[test]
fn threads_shared() {
    run(&build("threads", Link::Shared), "threads", &[]);
}

#[test]
fn threads_static() {
    run(&build("threads", Link::Static), "threads", &[]);
}

#[test]
fn serving_under_address_sanitizer() {
    run(&build("serving", Link::Asan), "serving", &[]);
}

#[test]
fn header_compiles_as_cpp_and_links() {
    run(&build("header", Link::Shared), "header", &[]);
    run(&build("header", Link::Static), "header", &[]);
}

#[test]
fn the_example_personalizes_and_saves_an_adapter() {
    let exe = out_dir().join("personalize");
    let libs = lib_dir();
    let out = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(root().join("examples/c/personalize.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", libs.display()))
        .arg("-lnudge")
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .output()
        .expect("run the C compiler");
    assert!(out.status.success(), "examples/c/personalize.c:\n{}", text(&out));
    let dir = out_dir().join("personalize-out");
    let _ = std::fs::remove_dir_all(&dir);
    let model = Model::open(model_path()).unwrap();
    for (run, lines) in [
        (
            1,
            &[
                "journal: 12 thumbs (6 up, 6 down), 12 new since the last training",
                "feedback: 6 preference pairs",
                "before training:\n  Q: What is the largest ocean on Earth?\n  A: ",
                "  step 3/3",
                "3 steps in",
                "adapter saved to",
                "after training:\n  Q: ",
            ][..],
        ),
        // Run again: the 12 events after the mark are retries, the whole journal trains.
        (
            2,
            &[
                "journal: 24 thumbs (12 up, 12 down), 12 new since the last training",
                "no new feedback since the last run: training on the whole journal",
                "feedback: 6 preference pairs",
                "3 steps in",
            ][..],
        ),
    ] {
        let out = Command::new(&exe).arg(model_path()).arg(&dir).output().unwrap();
        assert!(out.status.success(), "personalize (run {run}):\n{}", text(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        for line in lines {
            assert!(stdout.contains(line), "run {run}: no `{line}` in\n{stdout}");
        }
        // Both saved adapters hold the run's training, for the engine too.
        let peft_adapter = peft::load(&dir.join("peft"), &model.config).unwrap();
        let gguf_adapter = gguf_lora::load(&dir.join("adapter.gguf"), &model.config).unwrap();
        assert_eq!(peft_adapter.config.r, 8);
        assert_eq!(gguf_adapter.config.r, 8);
        let (p, _, _) = engine_scores(&model, Some(&peft_adapter));
        let (g, _, _) = engine_scores(&model, Some(&gguf_adapter));
        let (base, _, _) = engine_scores(&model, None);
        assert!(p != base, "run {run}: the saved adapter is untrained");
        // The GGUF is f16: the same adapter up to rounding.
        assert!((p - g).abs() < 1e-2 * p.abs(), "run {run}: PEFT {p}, GGUF {g}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
