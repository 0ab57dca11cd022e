//! The study's plots (plotters, SVG and PNG): the frontier — held-out loss against training
//! FLOPs per design, log–log, every run faint, the frontier bold with its fitted power law — one
//! panel per tier; and the IsoFLOP curves — held-out loss against parameters, one line per
//! budget — one panel per design and tier.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::Analysis;
use super::{tier_label, Phase, RunResult, StudySpec};
use crate::ablate::plot::{err, register_font, PALETTE};

/// Log-axis range around `xs` (a factor of `pad` on each side).
fn log_range(xs: impl Iterator<Item = f64>, pad: f64) -> std::ops::Range<f64> {
    let (lo, hi) = xs
        .filter(|x| x.is_finite() && *x > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return 1.0..10.0;
    }
    let hi = if hi <= lo { lo * 10.0 } else { hi };
    lo / pad..hi * pad
}

fn draw_frontier<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    spec: &StudySpec,
    runs: &[&RunResult],
    a: &Analysis,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, spec.tiers.len().max(1)));
    let grid: Vec<&&RunResult> = runs
        .iter()
        .filter(|r| r.settings.key.phase == Phase::Grid)
        .collect();
    let xr = log_range(grid.iter().map(|r| r.settings.key.budget), 1.6);
    let yr = log_range(grid.iter().map(|r| r.val.image_loss), 1.15);
    for (panel, tier) in panels.into_iter().zip(&spec.tiers) {
        let mut chart = ChartBuilder::on(&panel)
            .caption(
                format!("held-out loss vs training FLOPs — {}", tier_label(tier)),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xr.clone().log_scale(), yr.clone().log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("training FLOPs")
            .y_desc("held-out answer loss (image tasks)")
            .x_label_formatter(&|x| format!("{x:.0e}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .map_err(err)?;
        for (i, d) in spec.designs.iter().filter(|d| !d.audio_encoder).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts = grid
                .iter()
                .filter(|r| r.settings.key.tier == *tier && r.settings.key.design == d.name);
            chart
                .draw_series(pts.map(|r| {
                    Circle::new(
                        (r.settings.key.budget, r.val.image_loss),
                        3,
                        color.mix(0.35).filled(),
                    )
                }))
                .map_err(err)?;
            let Some(f) = a
                .designs
                .iter()
                .find(|x| x.tier == *tier && x.design == d.name)
            else {
                continue;
            };
            let fr: Vec<(f64, f64)> = f.frontier.iter().map(|p| (p.budget, p.loss)).collect();
            chart
                .draw_series(LineSeries::new(fr.clone(), color.stroke_width(1)))
                .map_err(err)?;
            let series = chart
                .draw_series(
                    fr.iter()
                        .map(|&p| TriangleMarker::new(p, 6, color.filled())),
                )
                .map_err(err)?;
            let label = match &f.alpha_pure {
                Some(al) => format!("{} (α = {:.3})", d.name, al.value),
                None => d.name.clone(),
            };
            series
                .label(label)
                .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, color.filled()));
            if let (Some(al), Some(aa)) = (&f.alpha_pure, f.a_pure) {
                let (c0, c1) = (xr.start, xr.end);
                let line: Vec<(f64, f64)> = (0..=40)
                    .map(|k| {
                        let c = (c0.ln() + (c1.ln() - c0.ln()) * k as f64 / 40.0).exp();
                        (c, aa * c.powf(-al.value))
                    })
                    .filter(|(_, l)| *l >= yr.start && *l <= yr.end)
                    .collect();
                chart
                    .draw_series(DashedLineSeries::new(line, 6, 4, color.stroke_width(1)))
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_isoflop<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    spec: &StudySpec,
    runs: &[&RunResult],
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let designs: Vec<_> = spec.designs.iter().filter(|d| !d.audio_encoder).collect();
    let panels = root.split_evenly((spec.tiers.len().max(1), designs.len().max(1)));
    let grid: Vec<&&RunResult> = runs
        .iter()
        .filter(|r| r.settings.key.phase == Phase::Grid)
        .collect();
    let xr = log_range(grid.iter().map(|r| r.parameters as f64), 1.3);
    let yr = log_range(grid.iter().map(|r| r.val.image_loss), 1.1);
    let mut budgets: Vec<f64> = spec.budgets.clone();
    budgets.sort_by(f64::total_cmp);
    let mut it = panels.into_iter();
    for tier in &spec.tiers {
        for d in &designs {
            let Some(panel) = it.next() else { break };
            let mut chart = ChartBuilder::on(&panel)
                .caption(
                    format!("{} — {}", d.name, tier_label(tier)),
                    ("sans-serif", 14),
                )
                .margin(6)
                .x_label_area_size(30)
                .y_label_area_size(45)
                .build_cartesian_2d(xr.clone().log_scale(), yr.clone().log_scale())
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("parameters")
                .x_labels(4)
                .y_labels(5)
                .x_label_formatter(&|x| format!("{x:.0e}"))
                .y_label_formatter(&|y| format!("{y:.2}"))
                .draw()
                .map_err(err)?;
            for (bi, b) in budgets.iter().enumerate() {
                let color = PALETTE[bi % PALETTE.len()];
                let mut pts: Vec<(f64, f64)> = grid
                    .iter()
                    .filter(|r| {
                        r.settings.key.tier == *tier
                            && r.settings.key.design == d.name
                            && r.settings.key.budget == *b
                    })
                    .map(|r| (r.parameters as f64, r.val.image_loss))
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(format!("{b:.0e}"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Writes `frontier` and `isoflop` as `.svg` and `.png` into `out`.
pub fn write_plots(
    spec: &StudySpec,
    runs: &[&RunResult],
    a: &Analysis,
    out: &Path,
) -> anyhow::Result<()> {
    register_font();
    let n_designs = spec.designs.iter().filter(|d| !d.audio_encoder).count() as u32;
    let tiers = spec.tiers.len() as u32;
    for stem in ["frontier", "isoflop"] {
        let size = if stem == "frontier" {
            (620 * tiers.max(1), 520u32)
        } else {
            (300 * n_designs.max(1), 260 * tiers.max(1))
        };
        let svg = out.join(format!("{stem}.svg"));
        {
            let root = SVGBackend::new(&svg, size).into_drawing_area();
            if stem == "frontier" {
                draw_frontier(root, spec, runs, a)?;
            } else {
                draw_isoflop(root, spec, runs)?;
            }
        }
        let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
            if stem == "frontier" {
                draw_frontier(root, spec, runs, a)?;
            } else {
                draw_isoflop(root, spec, runs)?;
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
