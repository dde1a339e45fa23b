//! Writes that fail part way, from the operating system, in real `nudge` processes: each
//! run gets a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored, so a write past it fails
//! with EFBIG as on a full disk). Whatever the limit, a failed save of an adapter, a
//! checkpoint, an export or the journal leaves the previous good files as they were and no
//! temporary file behind. (Failed renames and writes inside the atomic writer are tested
//! in-process in `tests/fsutil.rs`.)

mod common;

use common::tiny::*;
use nudge::train::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PAIRS: &str = "{\"prompt\": \"t3 t4\", \"chosen\": \"t5 t6\", \"rejected\": \"t7 t8 t9\"}\n\
                     {\"prompt\": \"t10 t4\", \"chosen\": \"t5 t6\", \"rejected\": \"t7 t8 t9\"}\n\
                     {\"prompt\": \"t11 t4\", \"chosen\": \"t5 t6\", \"rejected\": \"t7 t8 t9\"}\n";

/// `nudge ARGS` with every file it writes limited to `limit` bytes (None: no limit).
fn nudge_limited(limit: Option<u64>, args: &[&str]) -> Output {
    let mut c = Command::new("sh");
    // `trap "" XFSZ` ignores the signal, which `exec` keeps: the write fails instead of
    // the process being killed.
    c.arg("-c").arg("trap '' XFSZ; exec \"$@\"").arg("sh");
    if let Some(limit) = limit {
        c.args(["prlimit", &format!("--fsize={limit}"), "--"]);
    }
    c.arg(env!("CARGO_BIN_EXE_nudge")).args(args);
    c.output().expect("nudge runs")
}

/// Every file under `dir` with its bytes, sorted by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = if e.path().is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

fn temporaries(dir: &Path) -> Vec<String> {
    snapshot(dir)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.ends_with(".tmp") || n.contains("tmp-write") || n.ends_with(".compact"))
        .collect()
}

/// The limits tried: from nothing at all to just under the largest file written.
fn limits(largest: u64) -> Vec<u64> {
    let mut l = vec![0, 1, 8, 64, 512, largest / 4, largest / 2, largest - 1];
    l.retain(|&x| x < largest);
    l.dedup();
    l
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    model: PathBuf,
    data: PathBuf,
    dir: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = fresh_dir(name);
    let model = dir.join("model");
    write_model(&model, &TinySpec::default());
    let data = dir.join("pairs.jsonl");
    std::fs::write(&data, PAIRS).unwrap();
    Setup { model, data, dir }
}

fn train_args<'a>(s_: &'a Setup, out: &'a Path, seed: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "-m",
        s(&s_.model),
        "--data",
        s(&s_.data),
        "-o",
        s(out),
        "--lora-r",
        "2",
        "--batch-pairs",
        "2",
        "--max-steps",
        "2",
        "--seed",
        seed,
        "--checkpoint-every",
        "1",
    ]
}

#[test]
fn a_training_run_whose_writes_fail_keeps_the_previous_adapter_and_checkpoint() {
    let setup = setup("faults-train");
    let out = setup.dir.join("out");
    let ok = nudge_limited(None, &train_args(&setup, &out, "1"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let adapter_files = ["adapter_model.safetensors", "adapter_config.json", "checkpoint.bin"];
    let good: Vec<_> = adapter_files
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let largest = good.iter().map(|b| b.len() as u64).max().unwrap();

    for limit in limits(largest) {
        let run = nudge_limited(Some(limit), &train_args(&setup, &out, "2"));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(
            run.status.code(),
            Some(1),
            "limit {limit}: a typed failure, not a signal: {stderr}"
        );
        assert!(
            stderr.contains(s(&out)),
            "limit {limit}: the error names the file: {stderr}"
        );
        // The adapter is the previous one whole (the run failed before replacing it).
        for (f, want) in adapter_files[..2].iter().zip(&good) {
            assert_eq!(&std::fs::read(out.join(f)).unwrap(), want, "limit {limit}: {f} changed");
        }
        // The checkpoint is the previous one or a newer one that a step wrote whole.
        let ck = std::fs::read(out.join("checkpoint.bin")).unwrap();
        if ck != good[2] {
            Checkpoint::from_bytes(&ck, &out.join("checkpoint.bin"))
                .unwrap_or_else(|e| panic!("limit {limit}: a new checkpoint that does not load: {e}"));
        }
        assert_eq!(temporaries(&out), Vec::<String>::new(), "limit {limit}");
    }
    // With room to write, the same run replaces them.
    let run = nudge_limited(None, &train_args(&setup, &out, "2"));
    assert!(run.status.success());
    assert_ne!(std::fs::read(out.join(adapter_files[0])).unwrap(), good[0]);
}

#[test]
fn an_export_whose_writes_fail_keeps_the_previous_export() {
    let setup = setup("faults-export");
    let adapter = setup.dir.join("adapter");
    assert!(nudge_limited(None, &train_args(&setup, &adapter, "1")).status.success());
    for format in ["merged", "gguf", "peft"] {
        let out = setup.dir.join(format!("export-{format}"));
        let args = [
            "export",
            "-m",
            s(&setup.model),
            "--adapter",
            s(&adapter),
            "--format",
            format,
            "-o",
            s(&out),
        ];
        assert!(nudge_limited(None, &args).status.success(), "{format}");
        let folder = if out.is_dir() { out.clone() } else { setup.dir.clone() };
        let before = snapshot(&folder);
        let largest = before.iter().map(|(_, b)| b.len() as u64).max().unwrap();
        for limit in limits(largest) {
            let run = nudge_limited(Some(limit), &args);
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert_eq!(run.status.code(), Some(1), "{format}, limit {limit}: {stderr}");
            assert_eq!(
                snapshot(&folder),
                before,
                "{format}, limit {limit}: the previous export changed"
            );
        }
    }
}

#[test]
fn a_journal_whose_writes_fail_keeps_every_acknowledged_record() {
    let setup = setup("faults-journal");
    let journal = setup.dir.join("feedback.nj");
    let add = |limit: Option<u64>, i: usize| {
        let completion = format!("answer {i} {}", "x".repeat(i * 37));
        nudge_limited(
            limit,
            &[
                "journal",
                "add",
                "--journal",
                s(&journal),
                "-p",
                "a prompt",
                "--completion",
                &completion,
                if i.is_multiple_of(2) { "--up" } else { "--down" },
                "--id",
                &format!("e{i}"),
            ],
        )
    };
    for i in 0..6 {
        assert!(add(None, i).status.success());
    }
    let list = || {
        let o = nudge_limited(None, &["journal", "list", "--journal", s(&journal)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let before = list();
    let size = std::fs::metadata(&journal).unwrap().len();
    // An append that cannot be written whole is refused, and not acknowledged.
    for limit in [size, size + 1, size + 8, size + 40] {
        let run = add(Some(limit), 99);
        assert_eq!(
            run.status.code(),
            Some(1),
            "limit {limit}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(list(), before, "limit {limit}: the records changed");
        assert_eq!(temporaries(&setup.dir), Vec::<String>::new(), "limit {limit}");
    }
    // A compaction that cannot write its new file leaves the old one.
    let bytes = std::fs::read(&journal).unwrap();
    for limit in limits(size) {
        let run = nudge_limited(Some(limit), &["journal", "compact", "--journal", s(&journal)]);
        assert_eq!(run.status.code(), Some(1), "compact, limit {limit}");
        assert_eq!(std::fs::read(&journal).unwrap(), bytes, "compact, limit {limit}");
        assert_eq!(temporaries(&setup.dir), Vec::<String>::new(), "compact, limit {limit}");
    }
    assert!(add(None, 7).status.success(), "the journal takes appends again");
}
