//! The command line as a user meets it: help, errors that name the fix, nothing dropped in
//! silence, files that mean what they say. Runs the `nudge` binary on tiny models.

mod common;

use common::tiny::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `nudge args` with `env` added to its environment.
fn nudge_env(args: &[&str], env: &[(&str, &str)]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("runs nudge");
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn nudge(args: &[&str]) -> Out {
    nudge_env(args, &[])
}

/// [`nudge`] with `NUDGE_NO_SIMD=1` in its environment.
fn nudge_scalar(args: &[&str]) -> Out {
    nudge_env(args, &[("NUDGE_NO_SIMD", "1")])
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A tiny model folder named `name` (its name is what adapters record).
fn model(dir: &str, seed: u64) -> PathBuf {
    let d = fresh_dir(dir).join("tiny-base");
    std::fs::create_dir_all(&d).unwrap();
    write_model(
        &d,
        &TinySpec {
            seed,
            ..TinySpec::default()
        },
    );
    d
}

const PAIRS: &str = "{\"prompt\": \"t3 t4\", \"chosen\": \"t5 t6\", \"rejected\": \"t7 t8 t9\"}\n\
                     {\"prompt\": \"t10 t4\", \"chosen\": \"t5 t6\", \"rejected\": \"t7 t8 t9\"}\n\
                     {\"prompt\": \"t11 t4\", \"chosen\": \"t5 t6\", \"rejected\": \"t7 t8 t9\"}\n\
                     {\"prompt\": \"t12 t4\", \"chosen\": \"t5 t6\", \"rejected\": \"t7 t8 t9\"}\n";

fn train(m: &Path, data: &Path, out: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "train",
        "-m",
        s(m),
        "--data",
        s(data),
        "-o",
        s(out),
        "--lora-r",
        "2",
        "--lr",
        "1e-2",
        "--batch-pairs",
        "2",
    ];
    args.extend_from_slice(extra);
    nudge(&args)
}

#[test]
fn help_lists_closed_choices_and_short_flags() {
    let h = nudge(&["train", "--help"]).stdout;
    for want in [
        "-m, --model",
        "-o, --out",
        "-t, --threads",
        "possible values: dpo,",
        "kto",
        "simpo",
        "keep_end",
        "cosine",
        "gaussian",
    ] {
        assert!(h.contains(want), "`{want}` missing from train --help:\n{h}");
    }
    let h = nudge(&["generate", "--help"]).stdout;
    for want in ["-p, --prompt", "-n, --max-new-tokens", "--allow-other-base"] {
        assert!(h.contains(want), "`{want}` missing from generate --help:\n{h}");
    }
    let h = nudge(&["export", "--help"]).stdout;
    assert!(h.contains("peft") && h.contains("merged") && h.contains("bf16"), "{h}");
    #[cfg(not(feature = "linalg"))]
    assert!(nudge(&["--help"]).stdout.contains("not in this build"));
}

#[test]
fn bad_numbers_are_refused_naming_the_flag() {
    let d = fresh_dir("cli-numbers");
    let m = model("cli-numbers-model", 7);
    let data = d.join("pairs.jsonl");
    std::fs::write(&data, PAIRS).unwrap();
    for (flags, want) in [
        (vec!["--threads", "100000"], "--threads 100000"),
        (vec!["--batch-pairs", "0"], "--batch-pairs"),
        (vec!["--lora-r", "100000000000"], "--lora-r"),
        (vec!["--lora-r", "0"], "--lora-r"),
        (vec!["--lora-alpha=-1"], "--lora-alpha"),
        (vec!["--lr", "nan"], "--lr"),
        (vec!["--epochs", "0"], "--epochs"),
        (vec!["--max-steps", "0"], "--max-steps"),
        (vec!["--loss", "sigmoidd"], "--loss"),
        (vec!["--eval-fraction", "1.5"], "--eval-fraction"),
    ] {
        let o = train(&m, &data, &d.join("out"), &flags);
        assert!(!o.ok, "{flags:?} accepted");
        assert!(o.stderr.contains(want), "{flags:?}: {}", o.stderr);
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    }
    // `dpo` is another name for sigmoid.
    let o = train(&m, &data, &d.join("dpo"), &["--loss", "dpo", "--max-steps", "1"]);
    assert!(o.ok, "{}", o.stderr);
}

#[test]
fn training_reports_every_row_it_leaves_out_and_writes_trl_names() {
    let d = fresh_dir("cli-report");
    let m = model("cli-report-model", 7);
    let data = d.join("mixed.jsonl");
    // Pairs, an unpaired thumb (as `journal export` writes them), a row of an unknown
    // format, and a row longer than --max-length.
    let long_prompt: String = (0..40).map(|i| format!("t{} ", 3 + i % 50)).collect();
    std::fs::write(
        &data,
        format!(
            "{PAIRS}{{\"prompt\": \"t3\", \"completion\": \"t5\", \"label\": true}}\n\
             {{\"question\": \"t3\"}}\n\
             {{\"prompt\": \"{long_prompt}\", \"chosen\": \"t5\", \"rejected\": \"t6\"}}\n"
        ),
    )
    .unwrap();
    let out = d.join("adapter");
    let o = train(
        &m,
        &data,
        &out,
        &[
            "--max-length",
            "12",
            "--eval-fraction",
            "0.25",
            "--max-steps",
            "3",
            "--schedule",
            "linear",
        ],
    );
    assert!(o.ok, "{}", o.stderr);
    let file = s(&data);
    for want in [
        format!("{file}: row 5: an unpaired thumb"),
        "--loss kto".to_string(),
        format!("{file}: row 6: not a row of a known format"),
        format!("{file}: row 7: truncated (keep_end): prompt"),
    ] {
        assert!(o.stderr.contains(&want), "`{want}` missing:\n{}", o.stderr);
    }
    let skipped = std::fs::read_to_string(out.join("skipped_rows.jsonl")).unwrap();
    assert_eq!(skipped.lines().count(), 2, "{skipped}");
    // --max-steps beats --epochs (1 by default): 3 steps.
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "3 steps and the held-out record:\n{log}");
    for l in &lines[..3] {
        for k in [
            "loss",
            "grad_norm",
            "learning_rate",
            "rewards/chosen",
            "rewards/margins",
            "logps/rejected",
        ] {
            assert!(l.get(k).is_some(), "{k} missing from {l}");
        }
        assert!(l.get("rewards_chosen").is_none() && l.get("kl").is_none(), "{l}");
    }
    // The linear schedule reaches its end at the last step that runs.
    let lr: Vec<f64> = lines[..3]
        .iter()
        .map(|l| l["learning_rate"].as_f64().unwrap())
        .collect();
    assert!((lr[2] - 1e-2 / 3.0).abs() < 1e-12, "{lr:?}");
    let eval = &lines[3];
    assert!(
        eval.get("eval_loss").is_some() && eval.get("eval_rewards/accuracies").is_some(),
        "{eval}"
    );
    assert!(
        eval.get("grad_norm").is_none() && eval.get("learning_rate").is_none(),
        "{eval}"
    );

    // The adapter names its base by name, never by a local path.
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "tiny-base");
}

#[test]
fn an_adapter_for_another_base_is_refused_unless_allowed_and_both_formats_load() {
    let d = fresh_dir("cli-base");
    let m = model("cli-base-a", 7);
    let other = model("cli-base-b", 8); // same shape, other weights
    let data = d.join("pairs.jsonl");
    std::fs::write(&data, PAIRS).unwrap();
    let out = d.join("adapter");
    assert!(train(&m, &data, &out, &["--max-steps", "2"]).ok);
    let gguf = d.join("adapter.gguf");
    let e = nudge(&[
        "export",
        "-m",
        s(&m),
        "--adapter",
        s(&out),
        "--format",
        "gguf",
        "-o",
        s(&gguf),
    ]);
    assert!(e.ok, "{}", e.stderr);
    for adapter in [&out, &gguf] {
        let ok = nudge(&["score", "-m", s(&m), "--data", s(&data), "--adapter", s(adapter)]);
        assert!(ok.ok, "{}", ok.stderr);
        let reply = nudge(&[
            "generate",
            "-m",
            s(&m),
            "--adapter",
            s(adapter),
            "-p",
            "t3 t4",
            "-n",
            "3",
        ]);
        assert!(reply.ok, "generate with {}: {}", adapter.display(), reply.stderr);
        let refused = nudge(&["score", "-m", s(&other), "--data", s(&data), "--adapter", s(adapter)]);
        assert!(!refused.ok);
        assert!(
            refused.stderr.contains("trained on the base model `tiny-base`")
                && refused.stderr.contains("--allow-other-base"),
            "{}",
            refused.stderr
        );
        let allowed = nudge(&[
            "score",
            "-m",
            s(&other),
            "--data",
            s(&data),
            "--adapter",
            s(adapter),
            "--allow-other-base",
        ]);
        assert!(allowed.ok, "{}", allowed.stderr);
    }
    // Continuing training on another base is refused the same way.
    let cont = train(&other, &data, &d.join("cont"), &["--adapter", s(&out)]);
    assert!(
        !cont.ok && cont.stderr.contains("--allow-other-base"),
        "{}",
        cont.stderr
    );
}

#[test]
fn errors_name_the_fix() {
    let d = fresh_dir("cli-errors");
    let m = model("cli-errors-model", 7);
    // An empty folder as a model.
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = nudge(&["info", s(&empty)]);
    assert!(
        !o.ok && o.stderr.contains("a model is a .gguf file or an HF model folder"),
        "{}",
        o.stderr
    );
    // --resume with no checkpoint.
    let data = d.join("pairs.jsonl");
    std::fs::write(&data, PAIRS).unwrap();
    let o = train(&m, &data, &d.join("fresh"), &["--resume"]);
    assert!(!o.ok && o.stderr.contains("--checkpoint-every"), "{}", o.stderr);
    // A journal in a missing folder names the folder, not a temporary file.
    let missing = d.join("nope").join("j.nj");
    let o = nudge(&[
        "journal",
        "add",
        "--journal",
        s(&missing),
        "-p",
        "hi",
        "--completion",
        "yo",
        "--up",
    ]);
    assert!(
        !o.ok && o.stderr.contains("does not exist") && !o.stderr.contains(".new"),
        "{}",
        o.stderr
    );
    // A damaged journal suggests the repair.
    let j = d.join("j.nj");
    for p in ["a", "b", "c"] {
        assert!(
            nudge(&[
                "journal",
                "add",
                "--journal",
                s(&j),
                "-p",
                p,
                "--completion",
                "x",
                "--up"
            ])
            .ok
        );
    }
    let mut bytes = std::fs::read(&j).unwrap();
    bytes[60] ^= 0xff; // inside the first record
    std::fs::write(&j, bytes).unwrap();
    let o = nudge(&["journal", "list", "--journal", s(&j)]);
    assert!(
        !o.ok && o.stderr.contains("nudge journal repair --journal"),
        "{}",
        o.stderr
    );
    // Nothing to train on says so and lists what was left out.
    let thumbs = d.join("thumbs.jsonl");
    std::fs::write(
        &thumbs,
        "{\"prompt\": \"t3\", \"completion\": \"t5\", \"label\": true}\n",
    )
    .unwrap();
    let o = train(&m, &thumbs, &d.join("none"), &[]);
    assert!(!o.ok && o.stderr.contains("nothing to train on"), "{}", o.stderr);
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let d = fresh_dir("cli-pipe");
    let m = model("cli-pipe-model", 7);
    let data = d.join("pairs.jsonl");
    std::fs::write(&data, PAIRS.repeat(50)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(["score", "-m", s(&m), "--data", s(&data)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe as `head -1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Ended by SIGPIPE (or done before the pipe closed), never exit 101.
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn demo_settings_are_checked_before_any_work() {
    let m = model("cli-demo-model", 7);
    let out = fresh_dir("cli-demo-out");
    let o = nudge(&["demo", "-m", s(&m), "-o", s(&out), "--samples", "1"]);
    assert!(!o.ok && o.stderr.contains("at least 2 samples"), "{}", o.stderr);
    let o = nudge(&["demo", "-m", s(&m), "-o", s(&out), "--taste", "loud"]);
    assert!(
        !o.ok && o.stderr.contains("short") && o.stderr.contains("no-lists"),
        "{}",
        o.stderr
    );
    let o = nudge(&["demo", "-m", s(&m), "-o", s(&out), "--unpaired", "--loss", "ipo"]);
    assert!(!o.ok && o.stderr.contains("kto"), "{}", o.stderr);
    let h = nudge(&["demo", "--help"]).stdout;
    for want in ["--taste", "--unpaired", "--losses", "--json", "fetched from PyPI"] {
        assert!(h.contains(want), "`{want}` missing from demo --help:\n{h}");
    }
}

/// One switch, `NUDGE_NO_SIMD`, turns every vector path off (block expansion, matrix
/// products, attention, element-wise kernels, the optimizer), and the results keep their
/// bits: the same log-probs from a quantized model, the same trained adapter.
#[test]
fn the_portable_kernels_give_the_same_bits() {
    let info = |o: Out| -> Value {
        assert!(o.ok, "{}", o.stderr);
        serde_json::from_str(&o.stdout).expect("json")
    };
    let q4 = Path::new("tests/data/tiny/llama_q4_0.gguf");
    let scalar = info(nudge_scalar(&["info", "--json", s(q4)]));
    assert_eq!(scalar["kernels"], "scalar");
    let best = info(nudge(&["info", "--json", s(q4)]));
    assert!(best["kernels"].is_string());

    let dir = fresh_dir("cli-no-simd");
    let rows = dir.join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"prompt\": \"hello there\", \"chosen\": \"a b c\", \"rejected\": \"d e\"}\n",
    )
    .unwrap();
    let scores = [
        nudge(&["score", "-m", s(q4), "--data", s(&rows)]),
        nudge_scalar(&["score", "-m", s(q4), "--data", s(&rows)]),
    ];
    assert!(scores.iter().all(|o| o.ok), "{}", scores[1].stderr);
    assert!(scores[0].stdout.contains("chosen_logp"));
    assert_eq!(scores[0].stdout, scores[1].stdout);
    // --no-mmap reads the weights instead of mapping them: the same scores.
    let read = nudge(&["score", "--no-mmap", "-m", s(q4), "--data", s(&rows)]);
    assert!(read.ok, "{}", read.stderr);
    assert_eq!(read.stdout, scores[0].stdout);

    let m = model("cli-no-simd-model", 7);
    let data = dir.join("pairs.jsonl");
    std::fs::write(&data, PAIRS).unwrap();
    let (fast, slow) = (dir.join("fast"), dir.join("slow"));
    let t = train(&m, &data, &fast, &[]);
    assert!(t.ok, "{}", t.stderr);
    let args = [
        "train",
        "-m",
        s(&m),
        "--data",
        s(&data),
        "-o",
        s(&slow),
        "--lora-r",
        "2",
        "--lr",
        "1e-2",
        "--batch-pairs",
        "2",
    ];
    let t = nudge_scalar(&args);
    assert!(t.ok, "{}", t.stderr);
    let weights = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).expect("adapter written");
    assert_eq!(
        weights(&fast),
        weights(&slow),
        "training without SIMD gives the same adapter"
    );
}

#[test]
fn journal_ingest_follows_the_shared_chat_rules() {
    // The same cases as the library (tests/data_and_adapters.rs) and the C API
    // (ffi/src/journal.rs): one set of rules everywhere.
    let dir = fresh_dir("cli-chat-rules");
    for (i, (case, prompt, completion, ok)) in common::chat_rule_cases().into_iter().enumerate() {
        let j = dir.join(format!("{i}.nj"));
        let line = serde_json::json!({"prompt": prompt, "completion": completion, "label": true});
        let mut child = Command::new(env!("CARGO_BIN_EXE_nudge"))
            .args(["journal", "ingest", "--journal", s(&j)])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs nudge");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{line}\n").as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.success(), ok, "{case}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// `chosen_logp` of each row `nudge score` prints.
fn chosen_logps(o: &Out) -> Vec<f64> {
    assert!(o.ok, "{}", o.stderr);
    o.stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["chosen_logp"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn repeated_adapters_add_up_with_their_weights() {
    let d = fresh_dir("cli-stack");
    let m = model("cli-stack-model", 7);
    let data = d.join("pairs.jsonl");
    std::fs::write(&data, PAIRS).unwrap();
    let out = d.join("adapter");
    assert!(train(&m, &data, &out, &["--max-steps", "2"]).ok);
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "-m", s(&m), "--data", s(&data)];
        args.extend_from_slice(extra);
        chosen_logps(&nudge(&args))
    };
    let once = score(&["--adapter", s(&out)]);
    let base = score(&[]);
    // The same adapter twice at half weight is the adapter once; weight 0 is the base.
    let halves = score(&[
        "--adapter",
        s(&out),
        "--adapter",
        s(&out),
        "--adapter-weight",
        "0.5",
        "--adapter-weight",
        "0.5",
    ]);
    let off = score(&["--adapter", s(&out), "--adapter-weight", "0"]);
    let negative = score(&["--adapter", s(&out), "--adapter-weight", "-1"]);
    for i in 0..once.len() {
        assert!(
            (halves[i] - once[i]).abs() < 1e-4,
            "row {i}: {} vs {}",
            halves[i],
            once[i]
        );
        assert!((off[i] - base[i]).abs() < 1e-6, "row {i}: weight 0 is the base");
        assert!(
            (once[i] - base[i]).abs() > 1e-3,
            "row {i}: the adapter changes the score"
        );
        // Against the trained direction: the chosen answer gets less likely than the base.
        assert!((negative[i] - base[i]) * (once[i] - base[i]) < 0.0, "row {i}");
    }
    let e = nudge(&[
        "score",
        "-m",
        s(&m),
        "--data",
        s(&data),
        "--adapter",
        s(&out),
        "--adapter-weight",
        "1",
        "--adapter-weight",
        "1",
    ]);
    assert!(
        !e.ok && e.stderr.contains("2 --adapter-weight values for 1 --adapter"),
        "{}",
        e.stderr
    );
}

#[test]
fn chat_keeps_the_conversation_and_undo_drops_a_turn() {
    let m = common::model_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args([
            "chat",
            "-m",
            s(&m),
            "--system",
            "Answer in one short sentence.",
            "-n",
            "16",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"Name a fruit.\nAnd a color?\n/undo\nAnd a color?\n/quit\nnot read\n")
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    let replies: Vec<&str> = stdout.lines().collect();
    assert_eq!(replies.len(), 3, "three replies: {stdout:?}");
    // After /undo the same question in the same conversation gets the same (greedy) reply.
    assert_eq!(replies[1], replies[2]);
    assert!(stderr.contains("[last turn removed]"), "{stderr}");
    // The second turn ran only its own tokens: the first came from the cache.
    let reused: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.split("tokens, ").nth(1))
        .filter_map(|l| l.split(' ').nth(1).and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(reused.len(), 3, "{stderr}");
    assert!(
        reused[0] == 0 && reused[1] > 20 && reused[2] > 20,
        "{reused:?}: {stderr}"
    );

    let tiny = model("cli-chat-tiny", 7);
    let e = nudge(&["chat", "-m", s(&tiny)]);
    assert!(!e.ok && e.stderr.contains("no chat template"), "{}", e.stderr);
}

#[test]
fn random_models_have_the_shape_asked_for_in_both_formats() {
    let d = fresh_dir("cli-random-model");
    let (gguf, hf) = (d.join("smol.gguf"), d.join("smol-bf16"));
    let donor = common::model_path();
    let made = nudge(&[
        "bench",
        "random-model",
        "--shape",
        "smollm2-135m",
        "-o",
        s(&gguf),
        "--hf-bf16",
        s(&hf),
        "--donor",
        s(&donor),
    ]);
    assert!(made.ok, "{}", made.stderr);
    assert!(made.stderr.contains("0.13 B parameters"), "{}", made.stderr);
    let info = |p: &Path| -> Value {
        let o = nudge(&["info", s(p), "--json"]);
        assert!(o.ok, "{}", o.stderr);
        serde_json::from_str(&o.stdout).unwrap()
    };
    let (real, q, b) = (info(&donor), info(&gguf), info(&hf));
    for k in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
    ] {
        assert_eq!(q[k], real[k], "{k}: the shape is SmolLM2-135M's");
        assert_eq!(b[k], real[k], "{k}: the bf16 folder has the same shape");
    }
    assert_eq!(q["matrix_dtypes"], serde_json::json!({"Q4_1": 211}));
    assert_eq!(b["matrix_dtypes"], serde_json::json!({"BF16": 211}));
    // The same weights, rounded to bf16's 8 significant bits: the log-probs agree closely.
    let data = d.join("pairs.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"Hi\", \"chosen\": \"Hello there\", \"rejected\": \"No\"}\n",
    )
    .unwrap();
    let score = |m: &Path| chosen_logps(&nudge(&["score", "-m", s(m), "--data", s(&data)]))[0];
    let (sq, sb) = (score(&gguf), score(&hf));
    assert!((sq - sb).abs() < 0.05 * sq.abs(), "{sq} vs {sb}");
    let e = nudge(&["bench", "random-model", "--shape", "gpt-5", "-o", s(&d.join("x.gguf"))]);
    assert!(!e.ok && e.stderr.contains("unknown shape `gpt-5`"), "{}", e.stderr);
}

/// `nudge bench matmul` reports every stored weight format's two frozen-weight products
/// and the LoRA products, with 256-wide block formats measured only where the model's
/// inputs are whole blocks (SmolLM2's 576 is not; its 1536 is).
#[test]
fn bench_matmul_reports_every_weight_format_at_the_model_shapes() {
    let model = common::model_path();
    let o = nudge(&[
        "bench",
        "matmul",
        "-m",
        s(&model),
        "--rows",
        "8",
        "--reps",
        "1",
        "--json",
    ]);
    assert!(o.ok, "{}", o.stderr);
    let figures: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let find = |dtype: &str, product: &str| {
        figures
            .iter()
            .find(|f| f["dtype"] == dtype && f["product"] == product)
            .unwrap_or_else(|| panic!("no {dtype} {product} in {}", o.stdout))
    };
    for dtype in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"] {
        for product in ["X·Wᵀ", "dY·W"] {
            assert_eq!(find(dtype, product)["projections"], 7, "{dtype} {product}");
        }
    }
    for dtype in ["Q4_K", "Q6_K"] {
        assert_eq!(find(dtype, "dY·W")["projections"], 1, "only down_proj's 1536 inputs");
    }
    for product in ["LoRA forward", "LoRA backward"] {
        find("F32", product);
    }
    for product in ["X·Wᵀ + LoRA", "dY·W + LoRA"] {
        assert_eq!(find("Q4_1", product)["projections"], 7, "{product}");
    }
    assert_eq!(figures.len(), 8 * 2 + 4);
    for f in &figures {
        let (g, frac) = (f["gflops"].as_f64().unwrap(), f["peak_fraction"].as_f64().unwrap());
        assert!(g > 0.0 && g.is_finite() && frac > 0.0, "{f}");
        assert_eq!(f["rows"], 8);
    }
}

#[test]
fn precision_bf16_runs_where_the_cpu_has_it_and_is_refused_otherwise() {
    use nudge::kernels::matmul::Precision;
    let m = model("cli-bf16", 11);
    let args = [
        "--precision",
        "bf16",
        "bench",
        "score",
        "-m",
        s(&m),
        "--seq-len",
        "40",
        "--reps",
        "1",
        "--json",
    ];
    // Without SIMD there is no bf16 kernel: a named error, whatever the CPU.
    let off = nudge_scalar(&args);
    assert!(!off.ok && off.stderr.contains("AVX512-BF16"), "{}", off.stderr);
    assert!(!off.stderr.contains("panicked"), "{}", off.stderr);
    let on = nudge(&args);
    if Precision::Bf16.check().is_ok() {
        assert!(on.ok, "{}", on.stderr);
        assert!(on.stdout.contains("\"precision\":\"bf16\""), "{}", on.stdout);
    } else {
        assert!(!on.ok && on.stderr.contains("AVX512-BF16"), "{}", on.stderr);
    }
    let f32 = nudge(&[
        "bench",
        "score",
        "-m",
        s(&m),
        "--seq-len",
        "40",
        "--reps",
        "1",
        "--json",
    ]);
    assert!(f32.ok && f32.stdout.contains("\"precision\":\"f32\""), "{}", f32.stderr);
}

/// `NUDGE_ISA` picks a unit the CPU has (here every one it lists), and the tokens a model
/// generates keep their bits on each (the decoding kernels of AVX2 and AVX-512 and the
/// portable path); a name that is no unit, or a unit the CPU lacks, is refused by name.
#[test]
fn nudge_isa_picks_a_unit_and_refuses_what_the_cpu_lacks() {
    let q4 = Path::new("tests/data/tiny/llama_q4_0.gguf");
    let gen_args = ["generate", "-m", s(q4), "-p", "hello there", "-n", "12"];
    let want = nudge(&gen_args);
    assert!(want.ok, "{}", want.stderr);
    assert!(!want.stdout.trim().is_empty());
    for isa in nudge::isa::Isa::supported() {
        let info = nudge_env(&["info", "--json", s(q4)], &[("NUDGE_ISA", isa.name())]);
        assert!(info.ok, "{}", info.stderr);
        let v: Value = serde_json::from_str(&info.stdout).expect("json");
        assert_eq!(v["kernels"], isa.name());
        let got = nudge_env(&gen_args, &[("NUDGE_ISA", isa.name())]);
        assert!(got.ok, "{}", got.stderr);
        assert_eq!(got.stdout, want.stdout, "the tokens generated on {}", isa.name());
    }
    let bad = nudge_env(&["info", s(q4)], &[("NUDGE_ISA", "sse9")]);
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("NUDGE_ISA=\"sse9\"") && bad.stderr.contains("avx2"),
        "{}",
        bad.stderr
    );
    let missing = [nudge::isa::Isa::Avx2, nudge::isa::Isa::Avx512, nudge::isa::Isa::Neon]
        .into_iter()
        .find(|isa| !isa.is_supported())
        .expect("a unit of the other architecture");
    let lacks = nudge_env(&["info", s(q4)], &[("NUDGE_ISA", missing.name())]);
    assert!(!lacks.ok);
    assert!(lacks.stderr.contains("lacks"), "{}", lacks.stderr);
}
