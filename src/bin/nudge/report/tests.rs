//! The page's content: settings, summary, plots and answers, escaped, for ordinary,
//! empty and non-finite inputs.

use super::*;
use nudge::demo::{SideBySide, Summary};
use nudge::train::StepMetrics;

fn step(step: usize, loss: f64, margin: f64, acc: f64) -> StepMetrics {
    StepMetrics {
        step,
        loss,
        rewards: nudge::RewardMetrics {
            rewards_margins: margin,
            rewards_accuracies: acc,
            ..Default::default()
        },
        ..StepMetrics::default()
    }
}

fn rounds() -> Vec<RoundReport> {
    (1..=2)
        .map(|r| RoundReport {
            round: r,
            thumbs_up: 20 + r,
            thumbs_down: 11,
            ties: 3,
            rows: 17,
            answers: 128,
            answers_cut: 4,
            sampling_seconds: 12.5,
            sampling_tokens_per_s: 321.5,
            steps: (1..=6)
                .map(|s| {
                    let t = (r - 1) * 6 + s;
                    step(s, 0.7 - 0.03 * t as f64, 0.05 * t as f64, (t as f64 / 12.0).min(1.0))
                })
                .collect(),
        })
        .collect()
}

fn fluency(broken: usize) -> Fluency {
    Fluency {
        repeated_ngram_share: 0.0125,
        cut_at_limit: 3,
        base_nll: 1.25,
        broken,
        answers: 8,
    }
}

fn eval(win_rate: f64) -> EvalReport {
    EvalReport {
        taste_metric: "words".into(),
        taste_metric_base: Summary::of(vec![120.0, 95.0, 140.0, 110.0, 88.0, 131.0, 102.0, 100.0]),
        taste_metric_adapted: Summary::of(vec![60.0, 48.0, 71.0, 55.0, 89.0, 42.0, 66.0, 53.0]),
        win_rate,
        wins: 6,
        losses: 1,
        ties: 1,
        heldout_reward_accuracy: 0.8125,
        heldout_pairs: 16,
        neutral_loglik_base: -1234.5,
        neutral_loglik_adapted: -1240.0,
        neutral_loglik_change: -0.004455,
        fluency_base: fluency(1),
        fluency_adapted: fluency(2),
        examples: vec![SideBySide {
            prompt: "Is <script>alert(1)</script> safe & sound?".into(),
            base: "Line one.\n\n  - indented <b>item</b>".into(),
            adapted: "Short \"answer\".".into(),
        }],
    }
}

fn write(name: &str, eval: Option<&EvalReport>, rounds: &[RoundReport], losses: &[LossResult]) -> String {
    let path = std::env::temp_dir().join(format!("nudge-report-{}-{name}.html", std::process::id()));
    let cfg = DemoConfig {
        lr: 5e-4,
        ..DemoConfig::default()
    };
    write_html(&path, "Tiny <Model>", &cfg, rounds, eval, losses).unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    html
}

#[test]
fn report_has_settings_summary_plots_and_escaped_answers() {
    let e = eval(0.8125);
    let html = write("run", Some(&e), &rounds(), &[]);
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Self-contained: no script, no external asset.
    assert!(!html.contains("<script"), "unescaped script tag");
    assert!(!html.contains("src=") && !html.contains("href="));
    // The title is escaped too.
    assert!(html.contains("nudge demo: Tiny &lt;Model&gt;"));
    // Settings.
    assert!(html.contains("sigmoid_beta0.1 (pairs)"));
    assert!(html.contains("<dt>learning rate</dt><dd>5e-4</dd>"));
    // Summary numbers.
    assert!(html.contains("110.75"), "base mean"); // (120+95+140+110+88+131+102+100)/8
    assert!(html.contains("60.50"), "adapted mean");
    assert!(html.contains("81.2% (6 wins / 1 losses / 1 ties)"));
    assert!(html.contains("81.2% of 16 pairs"));
    assert!(html.contains("-0.45%"));
    assert!(html.contains("1.2%"), "repeated 4-gram share");
    assert!(html.contains("3 / 8") && html.contains("2 / 8"));
    assert!(html.contains("1.250 (3.5)"), "NLL and perplexity");
    // Three plots: loss, rewards, histogram; all drawn by plotters as inline SVG.
    assert_eq!(html.matches("<svg").count(), 3);
    for caption in [
        "Training loss",
        "training step (all rounds)",
        "Reward margin",
        "Reward accuracy",
        "chosen − rejected reward",
        "share of rows ranked right",
        "Taste metric: words",
        "held-out answers",
        "round 2",
        "base (mean 110.75)",
        "adapted (mean 60.50)",
    ] {
        assert!(html.contains(caption), "missing plot text {caption:?}");
    }
    assert!(html.matches("<text").count() > 20, "axis labels are text elements");
    // Rounds table.
    assert!(html.contains("<td class=\"n\">321.5</td>"));
    // Side by side, escaped, whitespace kept by the answer's style.
    assert!(html.contains("Is &lt;script&gt;alert(1)&lt;/script&gt; safe &amp; sound?"));
    assert!(html.contains("Line one.\n\n  - indented &lt;b&gt;item&lt;/b&gt;"));
    assert!(html.contains("Short &quot;answer&quot;."));
    assert!(html.contains("white-space:pre-wrap"));
    // No loss comparison without losses.
    assert!(!html.contains("Loss comparison"));
}

#[test]
fn report_has_loss_table_and_win_rate_bars() {
    let losses: Vec<LossResult> = [("sigmoid", 0.75), ("ipo<x>", 0.4375), ("kto", 0.5)]
        .into_iter()
        .map(|(name, w)| LossResult {
            loss: name.into(),
            lr: 1e-3,
            steps: rounds()[0].steps.clone(),
            eval: eval(w),
        })
        .collect();
    let html = write("losses", None, &[], &losses);
    assert!(html.contains("Loss comparison"));
    assert!(html.contains("<th>ipo&lt;x&gt;</th>"));
    assert!(!html.contains("ipo<x>"), "loss names escaped, in tables and plots");
    assert!(html.contains("75.0% (6 / 1 / 1)"));
    assert!(html.contains("43.8% (6 / 1 / 1)"));
    assert!(html.contains("<td class=\"n\">60.50</td>"));
    assert!(html.contains("<td class=\"n\">-0.45%</td>"));
    assert!(html.contains("<td class=\"n\">81.2%</td>"));
    assert!(html.contains("<td class=\"n\">2 / 8</td>"));
    assert!(html.contains("<td class=\"n\">1e-3</td>"), "each loss's learning rate");
    // The bar chart and the loss curves; no training or histogram plots without a run.
    assert_eq!(html.matches("<svg").count(), 2);
    for text in [
        "Win rate of the adapted model per loss",
        "win rate over base (ties half)",
        "Training loss per loss",
        "sigmoid",
        "kto",
        "50%",
    ] {
        assert!(html.contains(text), "missing plot text {text:?}");
    }
    assert!(!html.contains("Answers side by side"));
}

#[test]
fn report_survives_empty_and_non_finite_values() {
    let mut e = eval(f64::NAN);
    e.taste_metric_base = Summary::of(vec![]);
    e.taste_metric_adapted = Summary::of(vec![1.0, 1.0, 0.0]);
    e.neutral_loglik_change = f64::NAN;
    let mut r = rounds();
    r[0].steps[2].loss = f64::NAN;
    r[1].steps.clear();
    // One loss only, and without steps.
    let one = [LossResult {
        loss: "sigmoid".into(),
        lr: 1e-3,
        steps: vec![],
        eval: e.clone(),
    }];
    let html = write("odd", Some(&e), &r, &one);
    // Loss, rewards, histogram, win rate bars (no loss curve without steps).
    assert_eq!(html.matches("<svg").count(), 4);
    assert!(html.contains("<td class=\"n\">–</td>"));
}
