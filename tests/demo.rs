//! The feedback loop end to end on the real model, as `nudge demo` runs it: a simulated user
//! who likes short answers rates sampled answers, the thumbs go through the journal, DPO
//! trains an adapter, and on held-out prompts the adapted model answers visibly shorter
//! without breaking: no more loops, cut-offs or broken answers than the base, and the
//! neutral text's log-likelihood within 10%.

mod common;

use nudge::demo::{self, DemoConfig, Quiet};
use nudge::journal::{Journal, Record};
use nudge::model::Model;
use nudge::objective::Loss;

#[test]
fn thumbs_for_short_answers_make_held_out_answers_shorter_and_keep_them_sound() {
    let model = Model::open(common::model_path()).expect("model opens");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The demo's own settings: the test proves what `nudge demo` shows (about 10 minutes
    // on 2 cores; every figure is deterministic for a given seed).
    let cfg = DemoConfig::default();
    assert_eq!(cfg.loss, Loss::Sigmoid { beta: 0.1 });
    let journal = dir.join("feedback.journal");
    let run = demo::run(&model, &cfg, &journal, &mut Quiet).expect("the demo runs");

    // The thumbs went through the journal as an app's would, and the run marked them trained.
    let (j, _) = Journal::open_read_only(&journal).unwrap();
    let thumbs = j
        .entries()
        .iter()
        .filter(|e| matches!(e.record, Record::Thumbs(_)))
        .count();
    let r = &run.rounds[0];
    assert_eq!(thumbs, r.thumbs_up + r.thumbs_down);
    assert!(r.rows >= 8, "too few pairs to learn from: {r:?}");
    assert!(j.last_mark().is_some(), "no training mark");
    let untrained = j
        .entries()
        .iter()
        .filter(|e| matches!(e.record, Record::Thumbs(_)) && j.is_new(e.seq))
        .count();
    assert_eq!(untrained, 0, "thumbs left untrained");

    let e = &run.eval;
    eprintln!("{}", serde_json::to_string_pretty(e).unwrap());
    let (base, adapted) = (e.taste_metric_base.median, e.taste_metric_adapted.median);
    assert!(
        adapted <= 0.7 * base,
        "median words {base} -> {adapted}: not 30% shorter"
    );
    assert!(e.win_rate >= 0.8, "win rate {}", e.win_rate);
    assert!(
        e.neutral_loglik_change.abs() <= 0.10,
        "neutral text moved {}",
        e.neutral_loglik_change
    );
    let (fb, fa) = (&e.fluency_base, &e.fluency_adapted);
    assert!(fa.cut_at_limit <= fb.cut_at_limit, "{fb:?} -> {fa:?}");
    assert!(fa.broken <= fb.broken, "{fb:?} -> {fa:?}");
    // Repetition measured as a share of repeated 4-grams: at most the base's (plus one
    // repeated phrase's worth in one answer of sixteen).
    assert!(
        fa.repeated_ngram_share <= fb.repeated_ngram_share + 0.01,
        "{fb:?} -> {fa:?}"
    );
}
