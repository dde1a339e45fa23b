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

/// Single-answer thumbs trained with KTO, over two rounds as an app would run them: each
/// round's thumbs go through the journal, the second round samples from the adapted model
/// and trains only on what is new, and each round ends with a training mark. A reduced
/// budget (a couple of minutes): this checks the loop, not the size of the effect.
#[test]
fn unpaired_thumbs_over_two_rounds_train_only_what_is_new() {
    let model = Model::open(common::model_path()).expect("model opens");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-unpaired");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = DemoConfig {
        unpaired: true,
        loss: Loss::parse("kto", 0.1).unwrap(),
        rounds: 2,
        train_prompts: 12,
        samples: 2,
        heldout_prompts: 6,
        max_new_tokens: 48,
        epochs: 1,
        lr: 2e-4,
        ..DemoConfig::default()
    };
    let journal = dir.join("feedback.journal");
    let run = demo::run(&model, &cfg, &journal, &mut Quiet).expect("the demo runs");
    assert_eq!(run.rounds.len(), 2);

    let (j, _) = Journal::open_read_only(&journal).unwrap();
    let thumbs: Vec<u64> = j
        .entries()
        .iter()
        .filter(|e| matches!(e.record, Record::Thumbs(_)))
        .map(|e| e.seq)
        .collect();
    let marks: Vec<u64> = j
        .entries()
        .iter()
        .filter_map(|e| match &e.record {
            Record::TrainingMark(m) => Some(m.up_to_sequence),
            _ => None,
        })
        .collect();
    let per_round: Vec<usize> = run.rounds.iter().map(|r| r.thumbs_up + r.thumbs_down).collect();
    assert_eq!(thumbs.len(), per_round.iter().sum::<usize>());
    assert_eq!(marks.len(), 2, "one training mark per round");
    for (i, r) in run.rounds.iter().enumerate() {
        assert!(r.thumbs_up > 0 && r.thumbs_down > 0, "round {i}: {r:?}");
        // KTO trains each thumb of the round once: the round's own thumbs, none older.
        assert_eq!(r.rows, per_round[i], "round {i} trained on other rows than its own");
        assert_eq!(r.steps.len(), r.rows.div_ceil(cfg.batch_pairs), "round {i}");
        assert!(r.steps.iter().all(|s| s.loss.is_finite()), "round {i}");
    }
    // The first mark covers exactly the first round's thumbs, the second all of them.
    assert_eq!(marks[0], thumbs[per_round[0] - 1]);
    assert_eq!(marks[1], *thumbs.last().unwrap());
    assert!(
        j.entries()
            .iter()
            .filter(|e| matches!(e.record, Record::Thumbs(_)))
            .all(|e| !j.is_new(e.seq)),
        "thumbs left untrained"
    );

    let e = &run.eval;
    assert_eq!(e.taste_metric_base.values.len(), cfg.heldout_prompts);
    assert_eq!(e.wins + e.losses + e.ties, cfg.heldout_prompts);
    assert!(e.neutral_loglik_change.is_finite());
    assert!(e.neutral_loglik_change.abs() <= 0.10, "{}", e.neutral_loglik_change);
}
