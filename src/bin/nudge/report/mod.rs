//! The HTML page of `nudge demo`: the settings, what the adapter changed (taste metric,
//! the simulated user's verdict, held-out reward accuracy, neutral text, fluency), the
//! training curves and the taste metric's histograms as inline SVG drawn with plotters,
//! the loss comparison when there is one, and base and adapted answers side by side.
//!
//! The page is one file with no external asset or script. Plot text is written as SVG
//! `<text>` elements that the browser lays out with its own sans-serif font: plotters runs
//! without a font feature (its SVG backend only estimates text extents), so the report
//! needs no font file and no system font library.

use charts::{taste_histogram, training_plots};
use nudge::demo::{DemoConfig, EvalReport, Fluency, LossResult, RoundReport};
use std::fmt::Write as _;
use std::path::Path;

/// Writes a self-contained HTML page (inline SVG plots, no external assets or scripts).
/// `title` names the run (e.g. the model); `eval` is the held-out comparison of a demo
/// run, `losses` the results of a loss comparison (empty for a plain run).
pub fn write_html(
    path: &Path,
    title: &str,
    cfg: &DemoConfig,
    rounds: &[RoundReport],
    eval: Option<&EvalReport>,
    losses: &[LossResult],
) -> nudge::Result<()> {
    let html = render(title, cfg, rounds, eval, losses)?;
    nudge::fsutil::write_atomic(path, html.as_bytes())
}

mod charts;
#[cfg(test)]
mod tests;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;\
padding:0 1rem;color:#222;line-height:1.4}\
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.25rem .6rem;\
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}\
th{background:#f4f4f4}dl.settings{display:grid;grid-template-columns:max-content auto;\
gap:.1rem 1rem}dl.settings dt{font-weight:600}dl.settings dd{margin:0}\
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.9rem}\
.pair{display:grid;grid-template-columns:1fr 1fr;gap:.8rem;margin-bottom:1.5rem}\
.answer{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85rem;\
background:#f8f8f8;border:1px solid #ddd;padding:.5rem;overflow-wrap:anywhere}\
.prompt{white-space:pre-wrap;font-weight:600;margin:.5rem 0}.note{color:#555}";

/// The whole page as a string.
fn render(
    title: &str,
    cfg: &DemoConfig,
    rounds: &[RoundReport],
    eval: Option<&EvalReport>,
    losses: &[LossResult],
) -> nudge::Result<String> {
    let mut h = String::new();
    let page_title = if title.is_empty() {
        "nudge demo".to_string()
    } else {
        format!("nudge demo: {title}")
    };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = esc(&page_title)
    );
    settings(&mut h, cfg);
    if let Some(e) = eval {
        summary(&mut h, cfg, e);
    }
    if !rounds.is_empty() {
        rounds_table(&mut h, rounds);
        training_plots(&mut h, rounds)?;
    }
    if let Some(e) = eval {
        h.push_str("<h2>Taste metric over held-out answers</h2>\n");
        let svg = taste_histogram(e)?;
        figure(
            &mut h,
            &svg,
            &format!(
                "How many held-out answers have each value of the taste metric ({}), base \
                 and adapted model.",
                e.taste_metric
            ),
        );
    }
    if !losses.is_empty() {
        loss_comparison(&mut h, cfg, losses)?;
    }
    if let Some(e) = eval {
        side_by_side(&mut h, e);
    }
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number with `digits` decimals, or a dash when it is not finite.
fn num(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".to_string()
    }
}

/// A share as a percentage with one decimal.
fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "–".to_string()
    }
}

/// A relative change as a signed percentage.
fn signed_pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.2}%", 100.0 * x)
    } else {
        "–".to_string()
    }
}

fn settings(h: &mut String, cfg: &DemoConfig) {
    let rows: Vec<(&str, String)> = vec![
        ("taste", format!("{}: {}", cfg.taste.name(), cfg.taste.description())),
        (
            "loss",
            format!(
                "{}{}",
                cfg.loss,
                if cfg.unpaired {
                    " (single-answer thumbs)"
                } else {
                    " (pairs)"
                }
            ),
        ),
        ("rounds", cfg.rounds.to_string()),
        ("training prompts per round", cfg.train_prompts.to_string()),
        ("samples per prompt", cfg.samples.to_string()),
        ("held-out prompts", cfg.heldout_prompts.to_string()),
        ("answer limit", format!("{} tokens", cfg.max_new_tokens)),
        (
            "sampling",
            format!("temperature {}, top-p {}", cfg.temperature, cfg.top_p),
        ),
        ("learning rate", format!("{:e}", cfg.lr)),
        ("epochs", cfg.epochs.to_string()),
        ("batch", format!("{} rows", cfg.batch_pairs)),
        ("LoRA", format!("r {}, alpha {}", cfg.lora.r, cfg.lora.lora_alpha)),
        ("seed", cfg.seed.to_string()),
    ];
    h.push_str("<h2>Settings</h2>\n<dl class=\"settings\">\n");
    for (k, v) in rows {
        let _ = writeln!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v));
    }
    h.push_str("</dl>\n");
}

fn row3(h: &mut String, what: &str, base: &str, adapted: &str) {
    let _ = writeln!(
        h,
        "<tr><th>{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        esc(what),
        esc(base),
        esc(adapted)
    );
}

fn row_span(h: &mut String, what: &str, value: &str) {
    let _ = writeln!(
        h,
        "<tr><th>{}</th><td class=\"n\" colspan=\"2\">{}</td></tr>",
        esc(what),
        esc(value)
    );
}

fn of_answers(n: usize, f: &Fluency) -> String {
    format!("{n} / {}", f.answers)
}

fn summary(h: &mut String, cfg: &DemoConfig, e: &EvalReport) {
    let direction = if cfg.taste.metric_higher_is_better() {
        "higher is the taste"
    } else {
        "lower is the taste"
    };
    h.push_str("<h2>Summary</h2>\n<table class=\"summary\">\n");
    h.push_str("<tr><th></th><th>base</th><th>adapted</th></tr>\n");
    let metric = format!("{} ({direction})", e.taste_metric);
    row3(
        h,
        &format!("taste metric mean: {metric}"),
        &num(e.taste_metric_base.mean, 2),
        &num(e.taste_metric_adapted.mean, 2),
    );
    row3(
        h,
        &format!("taste metric median: {metric}"),
        &num(e.taste_metric_base.median, 2),
        &num(e.taste_metric_adapted.median, 2),
    );
    row_span(
        h,
        "win rate of adapted over base (ties half)",
        &format!(
            "{} ({} wins / {} losses / {} ties)",
            pct(e.win_rate),
            e.wins,
            e.losses,
            e.ties
        ),
    );
    row_span(
        h,
        "held-out reward accuracy",
        &format!("{} of {} pairs", pct(e.heldout_reward_accuracy), e.heldout_pairs),
    );
    row_span(
        h,
        "neutral text log-likelihood change",
        &format!(
            "{} ({} → {})",
            signed_pct(e.neutral_loglik_change),
            num(e.neutral_loglik_base, 1),
            num(e.neutral_loglik_adapted, 1)
        ),
    );
    let (b, a) = (&e.fluency_base, &e.fluency_adapted);
    row3(
        h,
        "repeated 4-gram share",
        &pct(b.repeated_ngram_share),
        &pct(a.repeated_ngram_share),
    );
    row3(
        h,
        "answers cut at the limit",
        &of_answers(b.cut_at_limit, b),
        &of_answers(a.cut_at_limit, a),
    );
    row3(
        h,
        "base-model NLL per token (perplexity)",
        &format!("{} ({})", num(b.base_nll, 3), num(b.base_nll.exp(), 1)),
        &format!("{} ({})", num(a.base_nll, 3), num(a.base_nll.exp(), 1)),
    );
    row3(h, "broken answers", &of_answers(b.broken, b), &of_answers(a.broken, a));
    h.push_str("</table>\n");
}

fn rounds_table(h: &mut String, rounds: &[RoundReport]) {
    h.push_str(
        "<h2>Rounds</h2>\n<table class=\"rounds\">\n<tr><th>round</th><th>thumbs up</th>\
         <th>thumbs down</th><th>ties</th><th>training rows</th><th>answers</th>\
         <th>cut at limit</th><th>sampling tokens/s</th><th>steps</th><th>last loss</th></tr>\n",
    );
    for r in rounds {
        let last = r.steps.last().map_or(f64::NAN, |s| s.loss);
        let _ = writeln!(
            h,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            r.round,
            r.thumbs_up,
            r.thumbs_down,
            r.ties,
            r.rows,
            r.answers,
            r.answers_cut,
            num(r.sampling_tokens_per_s, 1),
            r.steps.len(),
            num(last, 4)
        );
    }
    h.push_str("</table>\n");
}

fn figure(h: &mut String, svg: &str, caption: &str) {
    let _ = write!(
        h,
        "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        esc(caption)
    );
}

fn loss_comparison(h: &mut String, cfg: &DemoConfig, losses: &[LossResult]) -> nudge::Result<()> {
    h.push_str("<h2>Loss comparison</h2>\n");
    let _ = writeln!(
        h,
        "<p class=\"note\">The same collected feedback trained through each loss from a fresh \
         adapter, each evaluated on the same held-out prompts (taste: {}).</p>",
        esc(cfg.taste.name())
    );
    if let Some(first) = losses.first() {
        let _ = writeln!(
            h,
            "<p class=\"note\">Base model: taste metric ({}) mean {}, median {}; {} broken \
             answers of {}.</p>",
            esc(&first.eval.taste_metric),
            num(first.eval.taste_metric_base.mean, 2),
            num(first.eval.taste_metric_base.median, 2),
            first.eval.fluency_base.broken,
            first.eval.fluency_base.answers
        );
    }
    h.push_str(
        "<table class=\"losses\">\n<tr><th>loss</th><th>learning rate</th><th>win rate (wins / losses / ties)</th>\
         <th>taste metric mean</th><th>taste metric median</th><th>neutral change</th>\
         <th>reward accuracy</th><th>broken answers</th></tr>\n",
    );
    for l in losses {
        let e = &l.eval;
        let _ = writeln!(
            h,
            "<tr><th>{}</th><td class=\"n\">{:.0e}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            esc(&l.loss),
            l.lr,
            esc(&format!("{} ({} / {} / {})", pct(e.win_rate), e.wins, e.losses, e.ties)),
            num(e.taste_metric_adapted.mean, 2),
            num(e.taste_metric_adapted.median, 2),
            signed_pct(e.neutral_loglik_change),
            pct(e.heldout_reward_accuracy),
            esc(&of_answers(e.fluency_adapted.broken, &e.fluency_adapted))
        );
    }
    h.push_str("</table>\n");

    charts::loss_plots(h, losses)
}

fn side_by_side(h: &mut String, e: &EvalReport) {
    if e.examples.is_empty() {
        return;
    }
    h.push_str("<h2>Answers side by side</h2>\n");
    for ex in &e.examples {
        let _ = write!(
            h,
            "<div class=\"prompt\">{}</div>\n<div class=\"pair\">\n\
             <div><div class=\"note\">base</div><div class=\"answer\">{}</div></div>\n\
             <div><div class=\"note\">adapted</div><div class=\"answer\">{}</div></div>\n\
             </div>\n",
            esc(&ex.prompt),
            esc(&ex.base),
            esc(&ex.adapted)
        );
    }
}
