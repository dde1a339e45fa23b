//! Checkpoints: a resumed run is bit-identical to one never interrupted (in-process and
//! across a fresh process), and a damaged or foreign checkpoint is refused.

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::adapter::{Adapter, LoraConfig};
use nudge::data::PreferenceSet;
use nudge::model::{Model, Recompute};
use nudge::objective::Loss;
use nudge::optim::AdamWConfig;
use nudge::train::checkpoint::FORMAT_VERSION;
use nudge::train::{Checkpoint, Control, TrainConfig, Trainer};
use std::path::Path;

fn model(name: &str, spec: &TinySpec) -> Model {
    let d = fresh_dir(name);
    write_model(&d, spec);
    Model::open(&d).expect("opens")
}

fn data(n: usize) -> PreferenceSet {
    tiny_pairs(n as u32, 0)
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        loss: Loss::Sigmoid { beta: 0.3 },
        optimizer: AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
        epochs: 10,
        max_steps: Some(steps),
        batch_size: 3,
        micro_batch_size: 2,
        eval_fraction: 0.2,
        lora_dropout: 0.05,
        recompute: Recompute::Always,
        ..TrainConfig::default()
    }
}

fn params(t: &Trainer) -> Vec<Vec<f32>> {
    t.adapter.params().into_iter().map(<[f32]>::to_vec).collect()
}

#[test]
fn resuming_in_process_is_bit_identical() {
    let m = model("ck-inproc", &TinySpec::default());
    let a = Adapter::new(&m.config, LoraConfig::default(), 9, "tiny").unwrap();
    // 10 pairs, 2 held out, 8 trained at 3 per step: the run crosses epochs.
    let mut straight = Trainer::new(&m, a.clone(), config(7), data(10)).unwrap();
    straight.run(&mut |_| Control::Continue).unwrap();

    let mut first = Trainer::new(&m, a, config(7), data(10)).unwrap();
    first
        .run(&mut |x| if x.step == 4 { Control::Stop } else { Control::Continue })
        .unwrap();
    let bytes = first.checkpoint().to_bytes().unwrap();
    drop(first);
    let ck = Checkpoint::from_bytes(&bytes, Path::new("ck")).unwrap();
    assert_eq!(ck.step, 4);
    let mut resumed = Trainer::resume(&m, ck, data(10), Path::new("ck")).unwrap();
    let s = resumed.run(&mut |_| Control::Continue).unwrap();
    assert_eq!(s.steps, 3);
    assert_eq!(params(&straight), params(&resumed));
    assert!(params(&resumed).iter().flatten().any(|&x| x != 0.0));
}

#[test]
fn a_run_whose_data_the_loss_reshapes_resumes() {
    // A DPO run over data holding a thumbs row (which it leaves out), and a KTO run over
    // pairs (which it splits): the checkpoint fingerprints the data as prepared, and a
    // resume prepares it the same way (found while fuzzing checkpoints).
    let m = model("ck-reshaped", &TinySpec::default());
    let mut mixed = data(6);
    mixed.unpaired.push(nudge::data::TokenizedUnpaired {
        row: 99,
        prompt: vec![1, 4, 20],
        completion: vec![33, 2],
        label: true,
        weight: None,
    });
    for loss in [Loss::Sigmoid { beta: 0.3 }, Loss::parse("kto", 0.1).unwrap()] {
        let cfg = TrainConfig { loss, ..config(6) };
        let a = Adapter::new(&m.config, LoraConfig::default(), 9, "tiny").unwrap();
        let mut first = Trainer::new(&m, a, cfg, mixed.clone()).unwrap();
        first
            .run(&mut |x| if x.step == 2 { Control::Stop } else { Control::Continue })
            .unwrap();
        let ck = first.checkpoint();
        let mut resumed = Trainer::resume(&m, ck, mixed.clone(), Path::new("ck")).unwrap();
        assert!(resumed.run(&mut |_| Control::Continue).unwrap().steps > 0);
    }
}

fn write_jsonl(path: &Path, set: &PreferenceSet) {
    let lines: Vec<String> = set
        .pairs
        .iter()
        .map(|p| {
            serde_json::json!({"prompt_ids": p.prompt, "chosen_ids": p.chosen, "rejected_ids": p.rejected}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `nudge train` on the tiny model with the settings every run of these tests shares.
fn train_command(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"));
    c.args([
        "train",
        "--lr",
        "0.01",
        "--batch-pairs",
        "2",
        "--seed",
        "5",
        "--lora-dropout",
        "0.1",
        // The interrupted run is played by a shorter --max-steps: only a constant rate
        // is the same over 2 planned steps as over 6 (a decay is sized to its run).
        "--schedule",
        "constant",
        "--model",
    ])
    .arg(model)
    .arg("--data")
    .arg(data)
    .arg("--out")
    .arg(out)
    .args(extra)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    c
}

fn nudge_train(model: &Path, data: &Path, out: &Path, extra: &[&str]) {
    let status = train_command(model, data, out, extra).status().expect("nudge runs");
    assert!(status.success(), "nudge train {extra:?} failed");
}

#[test]
fn resuming_in_a_fresh_process_is_bit_identical() {
    let dir = fresh_dir("ck-cli");
    let mdir = dir.join("model");
    write_model(&mdir, &TinySpec::default());
    let data_file = dir.join("pairs.jsonl");
    write_jsonl(&data_file, &data(8));
    let (straight, split) = (dir.join("straight"), dir.join("split"));
    nudge_train(&mdir, &data_file, &straight, &["--max-steps", "6", "--epochs", "3"]);
    nudge_train(
        &mdir,
        &data_file,
        &split,
        &["--max-steps", "2", "--epochs", "3", "--checkpoint-every", "2"],
    );
    nudge_train(
        &mdir,
        &data_file,
        &split,
        &["--max-steps", "6", "--epochs", "3", "--resume"],
    );
    let a = std::fs::read(straight.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(split.join("adapter_model.safetensors")).unwrap();
    assert_eq!(a, b, "resumed adapter differs from the uninterrupted one");
    let log = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6, "the resumed run continues the metrics log");
}

#[test]
fn runs_killed_at_random_and_resumed_keep_one_whole_log_line_per_step_and_the_same_adapter() {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};
    const STEPS: usize = 24;
    let dir = fresh_dir("ck-kill");
    let mdir = dir.join("model");
    write_model(&mdir, &TinySpec::default());
    let data_file = dir.join("pairs.jsonl");
    write_jsonl(&data_file, &data(8));
    let steps = STEPS.to_string();
    let common = ["--max-steps", steps.as_str(), "--epochs", "20", "--eval-fraction", "0"];
    let straight = dir.join("straight");
    let started = Instant::now();
    nudge_train(&mdir, &data_file, &straight, &common);
    // Kill moments are spread over a whole run's length as measured here (not a bound).
    let run = started.elapsed();
    let want = std::fs::read(straight.join("adapter_model.safetensors")).unwrap();

    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |below: u64| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % below.max(1)
    };
    let (mut kills, mut resumes) = (0, 0);
    for trial in 0..30 {
        let out = dir.join(format!("killed-{trial}"));
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts < 60, "trial {trial}: the run never finished");
            let mut args = common.to_vec();
            args.extend(["--checkpoint-every", "1"]);
            if out.join("checkpoint.bin").exists() {
                args.push("--resume");
                resumes += 1;
            }
            let mut child = train_command(&mdir, &data_file, &out, &args)
                .spawn()
                .expect("nudge runs");
            // Later attempts get longer, so that every trial finishes.
            let span = run.as_micros() as u64 * (1 + attempts / 4);
            std::thread::sleep(Duration::from_micros(next(span)));
            let _ = child.kill();
            let status = child.wait().unwrap();
            if status.success() {
                break;
            }
            assert_eq!(
                status.signal(),
                Some(9),
                "trial {trial}: the run failed on its own: {status}"
            );
            kills += 1;
        }
        let got = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        assert_eq!(
            got, want,
            "trial {trial}: the adapter differs from the uninterrupted run's"
        );
        let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = log
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("trial {trial}: a malformed log line {l:?}: {e}"));
                v["step"].as_u64().expect("a step")
            })
            .collect();
        assert_eq!(
            steps,
            (1..=STEPS as u64).collect::<Vec<_>>(),
            "trial {trial}: one line per step"
        );
    }
    eprintln!("{kills} kills, {resumes} resumes");
    assert!(
        kills >= 30 && resumes >= 15,
        "the kills landed: {kills} kills, {resumes} resumes"
    );
}

fn saved_checkpoint(name: &str) -> (Model, Vec<u8>) {
    let m = model(name, &TinySpec::default());
    let a = Adapter::new(&m.config, LoraConfig::default(), 1, "tiny").unwrap();
    let mut t = Trainer::new(&m, a, config(1), data(10)).unwrap();
    t.run(&mut |_| Control::Continue).unwrap();
    let b = t.checkpoint().to_bytes().unwrap();
    (m, b)
}

/// A payload behind a valid header (checksum included): what a crafted file can reach.
fn framed(payload: &[u8]) -> Vec<u8> {
    use nudge::train::checkpoint::MAGIC;
    use sha2::Digest;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha2::Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

#[test]
fn a_crafted_length_in_a_valid_checkpoint_is_an_error_not_an_allocation() {
    // Found by the checkpoint fuzz target: a string length of 2^62 and more, which bincode
    // allocated before reading (the process aborted).
    let crafted = framed(&[
        0xfd, 0xfb, 0x00, 0x45, 0xff, 0x00, 0xfc, 0x00, 0x45, 0xff, 0x1f, 0x1f, 0x02, 0x00, 0x03,
    ]);
    let e = Checkpoint::from_bytes(&crafted, Path::new("ck.bin")).unwrap_err();
    assert!(e.to_string().contains("undecodable payload"), "{e}");
    // And a genuine checkpoint still reads back through the same path.
    let (_, bytes) = saved_checkpoint("ck-crafted-len");
    Checkpoint::from_bytes(&framed(&bytes[52..]), Path::new("ck.bin")).expect("a genuine payload decodes");
}

#[test]
fn damaged_checkpoints_are_refused() {
    let (_, bytes) = saved_checkpoint("ck-damage");
    let p = Path::new("run/checkpoint.bin");
    let fails = |b: &[u8], what: &str| match Checkpoint::from_bytes(b, p) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => {
            assert!(matches!(&e, Error::Format { file, .. } if file == p), "{what}: {e}");
            e.to_string()
        }
    };
    for cut in [0, 7, 20, 52, bytes.len() / 2, bytes.len() - 1] {
        fails(&bytes[..cut], &format!("truncated at {cut}"));
    }
    // Bit flips across the header and the payload.
    let step = (bytes.len() / 97).max(1);
    for i in (0..bytes.len()).step_by(step) {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        fails(&b, &format!("bit flip at {i}"));
    }
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert!(fails(&b, "version").contains("version"));
    let mut b = bytes.clone();
    b.extend_from_slice(b"junk");
    fails(&b, "trailing bytes");
}

#[test]
fn a_checkpoint_for_another_base_or_other_data_is_refused() {
    let (_, bytes) = saved_checkpoint("ck-foreign");
    let p = Path::new("ck");
    let other = model(
        "ck-foreign-b",
        &TinySpec {
            layers: 3,
            ..TinySpec::default()
        },
    );
    let e = Trainer::resume(&other, Checkpoint::from_bytes(&bytes, p).unwrap(), data(10), p)
        .err()
        .expect("refused");
    assert!(matches!(&e, Error::Field { field, .. } if field == "base"), "{e}");
    let same = model("ck-foreign-c", &TinySpec::default());
    let e = Trainer::resume(&same, Checkpoint::from_bytes(&bytes, p).unwrap(), data(9), p)
        .err()
        .expect("refused");
    assert!(
        matches!(&e, Error::Field { field, .. } if field == "data_fingerprint"),
        "{e}"
    );
}

#[test]
fn saving_is_atomic_and_leaves_no_temporary_file() {
    let (_, bytes) = saved_checkpoint("ck-atomic");
    let d = fresh_dir("ck-atomic-out");
    let ck = Checkpoint::from_bytes(&bytes, Path::new("x")).unwrap();
    let path = d.join("checkpoint.bin");
    ck.save(&path).unwrap();
    ck.save(&path).unwrap();
    let names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("checkpoint.bin")]);
    assert_eq!(Checkpoint::load(&path).unwrap(), ck);
}
