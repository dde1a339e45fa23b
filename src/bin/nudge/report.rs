//! The HTML page of `nudge demo`: the settings, what the adapter changed (taste metric,
//! the simulated user's verdict, held-out reward accuracy, neutral text, fluency), the
//! training curves and the taste metric's histograms as inline SVG drawn with plotters,
//! the loss comparison when there is one, and base and adapted answers side by side.
//!
//! The page is one file with no external asset or script. Plot text is written as SVG
//! `<text>` elements that the browser lays out with its own sans-serif font: plotters runs
//! without a font feature (its SVG backend only estimates text extents), so the report
//! needs no font file and no system font library.

// `nudge demo` is the caller; until it lands only the tests call the page.

use nudge::demo::{DemoConfig, EvalReport, Fluency, LossResult, RoundReport};
use nudge::train::StepMetrics;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
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

const BASE: RGBColor = RGBColor(0x5b, 0x7d, 0xb1);
const ADAPTED: RGBColor = RGBColor(0xe0, 0x7b, 0x24);
const MARK: RGBColor = RGBColor(0x66, 0x66, 0x66);
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
const FONT: &str = "sans-serif";
const WIDTH: u32 = 760;

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

/// Draws into an SVG string of `w` x `h` pixels.
fn svg(
    w: u32,
    h: u32,
    what: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), Box<dyn std::error::Error>>,
) -> nudge::Result<String> {
    let mut buf = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| nudge::Error::invalid(format!("report: plot of {what}: {e}")))?;
    Ok(buf)
}

/// A finite range that holds every finite value, padded; `fallback` when none is finite.
fn range(values: impl Iterator<Item = f64>, fallback: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return fallback;
    }
    if hi - lo < 1e-9 {
        let pad = (lo.abs() * 0.1).max(0.5);
        return (lo - pad, hi + pad);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

/// An axis label for a count or a step: whole numbers only (no label between them).
fn whole(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        // Adding 0.0 turns -0 into 0.
        format!("{:.0}", v.round() + 0.0)
    } else {
        String::new()
    }
}

/// An axis label for a measured value: at most 3 decimals, trailing zeros dropped.
fn decimal(v: &f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_string() } else { s.to_string() }
}

/// One named line: (x, y) points.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

/// A line chart of `series` with dashed vertical lines at `marks` (x, label).
#[allow(clippy::too_many_arguments)]
fn line_chart(
    area: &DrawingArea<SVGBackend, Shift>,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    marks: &[Mark],
    y_fixed: Option<(f64, f64)>,
    legend: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(points().map(|p| p.0), (0.0, 1.0));
    let (y0, y1) = y_fixed.unwrap_or_else(|| range(points().map(|p| p.1), (0.0, 1.0)));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_label_formatter(&whole)
        .y_label_formatter(&decimal)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(TRANSPARENT)
        .draw()?;
    for (x, label) in marks {
        chart.draw_series(DashedLineSeries::new([(*x, y0), (*x, y1)], 4, 4, MARK.stroke_width(1)))?;
        chart.draw_series(std::iter::once(Text::new(
            label.clone(),
            (*x, y1),
            (FONT, 14).into_font().color(&MARK).pos(Pos::new(HPos::Left, VPos::Top)),
        )))?;
    }
    for s in series {
        let finite: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        let color = s.color;
        let anno = chart.draw_series(LineSeries::new(finite, color.stroke_width(2)))?;
        if legend {
            anno.label(s.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0xcc, 0xcc, 0xcc))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

/// The steps of all rounds in sequence (x = 1, 2, ...) and, when there are several
/// rounds, where each round that trained starts.
/// Where a vertical mark stands on the x axis, and its label.
type Mark = (f64, String);

fn steps_in_sequence(rounds: &[RoundReport]) -> (Vec<(f64, &StepMetrics)>, Vec<Mark>) {
    let mut steps = Vec::new();
    let mut marks = Vec::new();
    for r in rounds {
        let x = steps.len() as f64 + 0.5;
        if rounds.len() > 1 && !r.steps.is_empty() {
            marks.push((x, format!(" round {}", r.round)));
        }
        for s in &r.steps {
            steps.push((steps.len() as f64 + 1.0, s));
        }
    }
    (steps, marks)
}

fn training_plots(h: &mut String, rounds: &[RoundReport]) -> nudge::Result<()> {
    let (steps, marks) = steps_in_sequence(rounds);
    if steps.is_empty() {
        return Ok(());
    }
    h.push_str("<h2>Training</h2>\n");
    let loss = Series {
        name: "loss".into(),
        points: steps.iter().map(|(x, s)| (*x, s.loss)).collect(),
        color: PALETTE[0],
    };
    let svg_loss = svg(WIDTH, 320, "training loss", |root| {
        line_chart(
            root,
            "Training loss",
            "training step (all rounds)",
            "loss",
            &[loss],
            &marks,
            None,
            false,
        )
    })?;
    figure(
        h,
        &svg_loss,
        "The loss of each optimizer step; dashed lines mark where a round starts.",
    );

    let margin = Series {
        name: "reward margin".into(),
        points: steps.iter().map(|(x, s)| (*x, s.rewards_margins)).collect(),
        color: PALETTE[2],
    };
    let accuracy = Series {
        name: "reward accuracy".into(),
        points: steps.iter().map(|(x, s)| (*x, s.rewards_accuracies)).collect(),
        color: PALETTE[4],
    };
    let svg_rewards = svg(WIDTH, 300, "rewards", |root| {
        let (left, right) = root.split_horizontally(WIDTH / 2);
        line_chart(
            &left,
            "Reward margin",
            "training step",
            "chosen − rejected reward",
            &[margin],
            &marks,
            None,
            false,
        )?;
        line_chart(
            &right,
            "Reward accuracy",
            "training step",
            "share of rows ranked right",
            &[accuracy],
            &marks,
            Some((-0.02, 1.02)),
            false,
        )
    })?;
    figure(
        h,
        &svg_rewards,
        "The implicit reward's margin between chosen and rejected answers, and the share \
         of the batch whose chosen answer has the larger reward, by step.",
    );
    Ok(())
}

/// Bin counts of `values` over `bins` equal bins of `[lo, hi]`.
fn bin_counts(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<usize> {
    let mut counts = vec![0; bins];
    let width = (hi - lo) / bins as f64;
    for &v in values.iter().filter(|v| v.is_finite()) {
        let i = ((v - lo) / width).floor();
        let i = (i.max(0.0) as usize).min(bins - 1);
        counts[i] += 1;
    }
    counts
}

fn taste_histogram(e: &EvalReport) -> nudge::Result<String> {
    let base = &e.taste_metric_base.values;
    let adapted = &e.taste_metric_adapted.values;
    let all = || base.iter().chain(adapted).copied().filter(|v| v.is_finite());
    let (mut lo, mut hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    let n = all().count().max(1);
    let distinct_small = all().all(|v| v.fract() == 0.0) && hi - lo <= 20.0;
    // Whole numbers over a small span (e.g. 0/1): one bin per value.
    let bins = if distinct_small {
        let bins = (hi - lo) as usize + 1;
        lo -= 0.5;
        hi += 0.5;
        bins
    } else {
        if hi - lo < 1e-9 {
            lo -= 0.5;
            hi += 0.5;
        }
        ((n as f64).sqrt().ceil() as usize).clamp(5, 25)
    };
    let cb = bin_counts(base, lo, hi, bins);
    let ca = bin_counts(adapted, lo, hi, bins);
    let top = cb.iter().chain(&ca).copied().max().unwrap_or(1).max(1) as f64 * 1.3;
    let width = (hi - lo) / bins as f64;
    svg(WIDTH, 340, "taste metric", |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Taste metric: {}", e.taste_metric), (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(if distinct_small { &whole } else { &decimal })
            .y_label_formatter(&whole)
            .x_desc(e.taste_metric.as_str())
            .y_desc("held-out answers")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(TRANSPARENT)
            .draw()?;
        for (k, (counts, color, name)) in [(&cb, BASE, "base"), (&ca, ADAPTED, "adapted")].into_iter().enumerate() {
            // Each bin holds the base bar on its left half, the adapted bar on its right.
            let bars = counts.iter().enumerate().filter(|(_, c)| **c > 0).map(move |(i, &c)| {
                let x0 = lo + width * (i as f64 + 0.05 + 0.45 * k as f64);
                Rectangle::new([(x0, 0.0), (x0 + 0.45 * width, c as f64)], color.filled())
            });
            chart
                .draw_series(bars)?
                .label(format!(
                    "{name} (mean {})",
                    num(
                        if k == 0 {
                            e.taste_metric_base.mean
                        } else {
                            e.taste_metric_adapted.mean
                        },
                        2
                    )
                ))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0xcc, 0xcc, 0xcc))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    })
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

    let names: Vec<String> = losses.iter().map(|l| l.loss.clone()).collect();
    let rates: Vec<f64> = losses.iter().map(|l| l.eval.win_rate).collect();
    let bars = svg(WIDTH, 340, "win rate per loss", |root| {
        let n = names.len();
        let mut chart = ChartBuilder::on(root)
            .caption("Win rate of the adapted model per loss", (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            // A range of whole numbers holds both ends: `0..n - 1` is n segments.
            .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => names.get(*i).cloned().unwrap_or_default(),
                SegmentValue::Last => String::new(),
            })
            .y_label_formatter(&|y| format!("{:.0}%", 100.0 * y))
            .x_desc("loss")
            .y_desc("win rate over base (ties half)")
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(TRANSPARENT)
            .draw()?;
        chart.draw_series(rates.iter().enumerate().map(|(i, &r)| {
            let r = if r.is_finite() { r.clamp(0.0, 1.0) } else { 0.0 };
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), r)],
                PALETTE[i % PALETTE.len()].filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))?;
        chart.draw_series(rates.iter().enumerate().map(|(i, &r)| {
            let y = if r.is_finite() { r.clamp(0.0, 0.93) } else { 0.0 };
            Text::new(
                pct(r),
                (SegmentValue::CenterOf(i), y + 0.02),
                TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
        chart.draw_series(DashedLineSeries::new(
            [(SegmentValue::Exact(0), 0.5), (SegmentValue::Last, 0.5)],
            5,
            4,
            MARK.stroke_width(1),
        ))?;
        Ok(())
    })?;
    figure(
        h,
        &bars,
        "Share of held-out prompts whose adapted answer the simulated user prefers to the \
         base's (ties count half); the dashed line is 50%, no change.",
    );

    let curves: Vec<Series> = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.steps.is_empty())
        .map(|(i, l)| Series {
            name: l.loss.clone(),
            points: l
                .steps
                .iter()
                .enumerate()
                .map(|(k, s)| (k as f64 + 1.0, s.loss))
                .collect(),
            color: PALETTE[i % PALETTE.len()],
        })
        .collect();
    if !curves.is_empty() {
        let svg_curves = svg(WIDTH, 320, "training loss per loss", |root| {
            line_chart(
                root,
                "Training loss per loss",
                "training step",
                "loss",
                &curves,
                &[],
                None,
                true,
            )
        })?;
        figure(
            h,
            &svg_curves,
            "Each loss's training curve (the losses' scales differ: compare shapes).",
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use nudge::demo::{SideBySide, Summary};

    fn step(step: usize, loss: f64, margin: f64, acc: f64) -> StepMetrics {
        StepMetrics {
            step,
            loss,
            rewards_margins: margin,
            rewards_accuracies: acc,
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
}
