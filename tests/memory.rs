//! What stays in memory: opening a model maps its weights and copies none of them into heap
//! memory; training's recomputation holds few layer inputs at once.

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

/// The backward pass rebuilds the inputs of a segment between two checkpoints while the
/// checkpoints below it are held: walking the layers down as it does, the inputs held at
/// once never exceed the plan's `longest_segment`, which is the least P with
/// P(P+1)/2 ≥ the layers recomputed, and layer 0 is always a checkpoint.
#[test]
fn recompute_plan_holds_at_most_longest_segment_inputs() {
    use nudge::model::RecomputePlan;
    for n in 1..=80usize {
        let p = (1..).find(|p: &usize| p * (p + 1) / 2 >= n).unwrap();
        let plan = RecomputePlan {
            kept: 0,
            recomputed: n,
            longest_segment: p,
        };
        assert!(plan.is_checkpoint(0), "n {n}");
        let checkpoints: Vec<usize> = (0..n).filter(|&l| plan.is_checkpoint(l)).collect();
        assert!(!plan.is_checkpoint(n), "n {n}: only recomputed layers are checkpoints");
        let mut held: Vec<bool> = (0..n).map(|l| plan.is_checkpoint(l)).collect();
        let mut most = checkpoints.len();
        for l in (0..n).rev() {
            if !held[l] {
                // Rebuild from the nearest checkpoint below: every input up to l.
                let c = (0..l).rev().find(|&j| held[j]).expect("a checkpoint below");
                for h in &mut held[c + 1..=l] {
                    *h = true;
                }
            }
            most = most.max(held.iter().filter(|&&h| h).count());
            held[l] = false; // layer l's backward is done with its input
        }
        assert!(
            most <= p,
            "n {n}: {most} inputs held at once, plan says {p} ({checkpoints:?})"
        );
        assert_eq!(plan.refill_forwards(), n - checkpoints.len());
        // Every layer a checkpoint when P = 1.
        let every = RecomputePlan {
            longest_segment: 1,
            ..plan
        };
        assert_eq!(every.refill_forwards(), 0);
    }
}
