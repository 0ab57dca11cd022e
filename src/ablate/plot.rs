//! Plots of an ablation (plotters): held-out accuracy vs training FLOPs per arm, and bars
//! per task with 95% intervals. Each is written as SVG and PNG.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{AblationResults, METRICS};

pub(crate) const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Which held-out curve.
#[derive(Clone, Copy)]
enum Curve {
    Presence,
    Count,
}

fn draw_curve<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    r: &AblationResults,
    which: Curve,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let max_x = r
        .arms
        .iter()
        .flat_map(|a| a.runs.iter().flat_map(|s| s.curve.iter().map(|c| c.0)))
        .fold(1.0f64, f64::max);
    let title = match which {
        Curve::Presence => "held-out presence accuracy vs training FLOPs",
        Curve::Count => "held-out counting accuracy vs training FLOPs",
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_x * 1.02, 0.0..1.0f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training FLOPs (all stages)")
        .y_desc("accuracy")
        .x_label_formatter(&|x| format!("{x:.1e}"))
        .draw()
        .map_err(err)?;
    for (i, a) in r.arms.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for (k, run) in a.runs.iter().enumerate() {
            let pts: Vec<(f64, f64)> = run
                .curve
                .iter()
                .map(|c| {
                    (
                        c.0,
                        match which {
                            Curve::Presence => c.1,
                            Curve::Count => c.2,
                        },
                    )
                })
                .collect();
            let series = chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(err)?;
            if k == 0 {
                series.label(a.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn draw_bars<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    r: &AblationResults,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let tasks: Vec<(&str, &str)> = METRICS
        .iter()
        .copied()
        .filter(|(k, _)| r.arms.iter().any(|a| a.summary.contains_key(*k)))
        .collect();
    let n_arms = r.arms.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "final metrics per task (mean, 95% interval over seeds)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..tasks.len() as f64 - 0.5, 0.0..1.0f64)
        .map_err(err)?;
    let labels: Vec<String> = tasks
        .iter()
        .map(|(_, l)| l.replace("accuracy", "acc.").replace(" (mean)", ""))
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_style(("sans-serif", 12))
        .x_labels(tasks.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc("score")
        .draw()
        .map_err(err)?;
    let width = 0.8 / n_arms as f64;
    for (ai, a) in r.arms.iter().enumerate() {
        let color = PALETTE[ai % PALETTE.len()];
        let mut first = true;
        for (ti, (k, _)) in tasks.iter().enumerate() {
            let Some(s) = a.summary.get(*k) else { continue };
            let x0 = ti as f64 - 0.4 + ai as f64 * width;
            let bar = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, s.mean)],
                    color.filled(),
                )))
                .map_err(err)?;
            if first {
                bar.label(a.name.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
                first = false;
            }
            let xc = x0 + width * 0.45;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (xc, (s.mean - s.half_width).max(0.0)),
                        (xc, (s.mean + s.half_width).min(1.0)),
                    ],
                    BLACK.stroke_width(2),
                )))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes `curve_presence`, `curve_count` and `bars` as `.svg` and `.png` into `out`.
pub fn write_plots(r: &AblationResults, out: &Path) -> anyhow::Result<()> {
    register_font();
    for (stem, which) in [
        ("curve_presence", Some(Curve::Presence)),
        ("curve_count", Some(Curve::Count)),
        ("bars", None),
    ] {
        let size = if which.is_none() {
            (1400u32, 560u32)
        } else {
            (960u32, 540u32)
        };
        let svg = out.join(format!("{stem}.svg"));
        {
            let root = SVGBackend::new(&svg, size).into_drawing_area();
            match which {
                Some(c) => draw_curve(root, r, c)?,
                None => draw_bars(root, r)?,
            }
        }
        let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            match which {
                Some(c) => draw_curve(root, r, c)?,
                None => draw_bars(root, r)?,
            }
        }
        let png = out.join(format!("{stem}.png"));
        image::RgbImage::from_raw(size.0, size.1, buf)
            .ok_or_else(|| anyhow!("plot buffer has the wrong size"))?
            .save(&png)
            .map_err(|e| anyhow!("{}: {e}", png.display()))?;
    }
    Ok(())
}
