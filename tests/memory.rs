//! Opening a model maps its weights; it copies none of them into heap memory.

mod common;

use nudge::model::Model;
use std::path::PathBuf;

/// Anonymous resident memory of this process (RssAnon), in bytes.
fn rss_anon() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: usize = s
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("RssAnon line");
    kb * 1024
}

#[test]
fn opening_the_f32_safetensors_model_copies_no_weights() {
    // The f32 directory is made by the CLI in a child process, so the conversion's own
    // allocations are not in this process.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("memory-f32");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(["convert", "--dtype", "f32", "--model"])
        .arg(common::model_path())
        .arg("--out")
        .arg(&dir)
        .status()
        .expect("nudge convert runs");
    assert!(status.success());
    let file = std::fs::metadata(dir.join("model.safetensors"))
        .expect("converted")
        .len() as usize;
    let before = rss_anon();
    let m = Model::open(&dir).expect("opens");
    // Touch every weight page once, as a forward pass would.
    let s = m.score(&[1, 9690, 198], &[2683, 359]).expect("scores");
    assert!(s.logp.is_finite());
    let grown = rss_anon().saturating_sub(before);
    eprintln!(
        "anonymous memory after open + score: +{:.1} MB for a {:.1} MB file",
        grown as f64 / 1e6,
        file as f64 / 1e6
    );
    assert!(
        grown * 10 < file,
        "anonymous memory grew by {grown} bytes after opening a {file}-byte model (limit 10%)"
    );
    assert!(m.weights.mapped_bytes() >= file);
}
