//! The demo page's plots, drawn with plotters into inline SVG: training curves, the taste
//! metric's histograms, and the loss comparison's win rates and curves.

use super::{figure, num, pct};
use nudge::demo::{EvalReport, LossResult, RoundReport};
use nudge::train::StepMetrics;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
pub(super) struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// Where a vertical mark stands on the x axis, and its label.
pub(super) type Mark = (f64, String);

/// A line chart of `series` with dashed vertical lines at `marks`; the y range is
/// `y_fixed`, or fitted to the points.
struct LineChart<'a> {
    caption: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    series: &'a [Series],
    marks: &'a [Mark],
    y_fixed: Option<(f64, f64)>,
    legend: bool,
}

impl LineChart<'_> {
    fn draw(&self, area: &DrawingArea<SVGBackend, Shift>) -> Result<(), Box<dyn std::error::Error>> {
        let LineChart {
            caption,
            x_desc,
            y_desc,
            series,
            marks,
            y_fixed,
            legend,
        } = *self;
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
}

/// The steps of all rounds in sequence (x = 1, 2, ...) and, when there are several
/// rounds, where each round that trained starts.
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

pub(super) fn training_plots(h: &mut String, rounds: &[RoundReport]) -> nudge::Result<()> {
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
        LineChart {
            caption: "Training loss",
            x_desc: "training step (all rounds)",
            y_desc: "loss",
            series: &[loss],
            marks: &marks,
            y_fixed: None,
            legend: false,
        }
        .draw(root)
    })?;
    figure(
        h,
        &svg_loss,
        "The loss of each optimizer step; dashed lines mark where a round starts.",
    );

    let margin = Series {
        name: "reward margin".into(),
        points: steps.iter().map(|(x, s)| (*x, s.rewards.rewards_margins)).collect(),
        color: PALETTE[2],
    };
    let accuracy = Series {
        name: "reward accuracy".into(),
        points: steps.iter().map(|(x, s)| (*x, s.rewards.rewards_accuracies)).collect(),
        color: PALETTE[4],
    };
    let svg_rewards = svg(WIDTH, 300, "rewards", |root| {
        let (left, right) = root.split_horizontally(WIDTH / 2);
        LineChart {
            caption: "Reward margin",
            x_desc: "training step",
            y_desc: "chosen − rejected reward",
            series: &[margin],
            marks: &marks,
            y_fixed: None,
            legend: false,
        }
        .draw(&left)?;
        LineChart {
            caption: "Reward accuracy",
            x_desc: "training step",
            y_desc: "share of rows ranked right",
            series: &[accuracy],
            marks: &marks,
            y_fixed: Some((-0.02, 1.02)),
            legend: false,
        }
        .draw(&right)
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

pub(super) fn taste_histogram(e: &EvalReport) -> nudge::Result<String> {
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

/// The loss comparison's plots: each loss's win rate, and each loss's training curve.
pub(super) fn loss_plots(h: &mut String, losses: &[LossResult]) -> nudge::Result<()> {
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
            LineChart {
                caption: "Training loss per loss",
                x_desc: "training step",
                y_desc: "loss",
                series: &curves,
                marks: &[],
                y_fixed: None,
                legend: true,
            }
            .draw(root)
        })?;
        figure(
            h,
            &svg_curves,
            "Each loss's training curve (the losses' scales differ: compare shapes).",
        );
    }
    Ok(())
}
