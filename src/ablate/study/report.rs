//! The study's analysis and `report.md`: the compute-optimal frontier per design and tier
//! (chosen on held-out loss, validation seed), power-law fits, IsoFLOP minima, compute to
//! target with native / bolted ratios, all with bootstrap 95% intervals; plus the sweep, the
//! per-tier tables, audio, the encoder probes, and the plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::fit::{self, PowerLaw, ToTarget};
use super::probe::ProbeResult;
use super::{tier_label, Measured, Phase, RunResult, StudySpec};

/// The accuracy targets of the headline table: (test metric, target, label).
pub const TARGETS: [(&str, f64, &str); 3] = [
    ("pope_accuracy", 0.8, "POPE accuracy 0.8"),
    ("pope_accuracy", 0.9, "POPE accuracy 0.9"),
    ("count_accuracy", 0.8, "counting accuracy 0.8"),
];

/// Bootstrap resamples of the report.
pub const RESAMPLES: usize = 1000;

/// Shukor et al. 2025's fitted exponents, quoted beside ours.
pub const SHUKOR: &str = "Shukor et al. 2025 (457 models, 0.3B–4B parameters): L ∝ C^−0.049 for early and late fusion alike; N_opt ∝ C^0.53 (early) and C^0.64 (late)";

/// One budget's compute-optimal run of a design.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FrontierPoint {
    /// Training FLOPs (the budget).
    pub budget: f64,
    /// The chosen run.
    pub run: String,
    /// Its width.
    pub width: usize,
    /// Its parameters.
    pub parameters: usize,
    /// Its held-out image loss (validation seed; what chose it).
    pub loss: f64,
    /// Its test metrics.
    pub test: BTreeMap<String, Measured>,
}

/// A number with its bootstrap 95% interval (`NaN`, written as `null`, where no resample
/// gave one).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    /// The estimate on the data as measured.
    #[serde(with = "nan_as_null")]
    pub value: f64,
    /// 2.5% percentile of the bootstrap.
    #[serde(with = "nan_as_null")]
    pub low: f64,
    /// 97.5% percentile.
    #[serde(with = "nan_as_null")]
    pub high: f64,
}

/// A float that JSON writes as `null` when it is not finite, and reads back as `NaN`.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

impl Interval {
    fn new(value: f64, xs: &[f64]) -> Self {
        let (low, high) = fit::interval(xs).unwrap_or((f64::NAN, f64::NAN));
        Interval { value, low, high }
    }
}

/// Compute to one target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TargetFit {
    /// The metric.
    pub metric: String,
    /// The target.
    pub target: f64,
    /// `at`, `at_most` (reached at the lowest budget) or `beyond` (not reached).
    pub kind: String,
    /// FLOPs (the bound when not `at`), with its interval over the resamples where it is `at`.
    pub flops: Interval,
    /// Share of resamples where it was reached between budgets.
    pub reached_share: f64,
}

/// One design on one tier.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DesignFit {
    /// Tier.
    pub tier: String,
    /// Design name.
    pub design: String,
    /// The frontier, budget ascending.
    pub frontier: Vec<FrontierPoint>,
    /// `L = A·C^−α` on the frontier: α.
    pub alpha_pure: Option<Interval>,
    /// `A` of the pure law.
    pub a_pure: Option<f64>,
    /// `L = E + A·C^−α`: α.
    pub alpha: Option<Interval>,
    /// Its E.
    pub e: Option<Interval>,
    /// Its A.
    pub a: Option<f64>,
    /// IsoFLOP minimum per budget: (budget, N_opt, loss at the minimum, interior).
    pub iso: Vec<(f64, f64, f64, bool)>,
    /// `N_opt ∝ C^β`: β.
    pub beta: Option<Interval>,
    /// Compute to each target.
    pub targets: Vec<TargetFit>,
    /// The budgets where every size finished (the fits use only these).
    #[serde(default)]
    pub complete_budgets: Vec<f64>,
}

/// Native's compute over a bolted design's, for one target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RatioFit {
    /// Tier.
    pub tier: String,
    /// The bolted-on design.
    pub design: String,
    /// Target label.
    pub target: String,
    /// C_native / C_design (both reached between budgets); `None` otherwise.
    pub ratio: Option<Interval>,
    /// True when the interval excludes 1.
    pub differs: bool,
}

/// A design's held-out loss over native's at one budget, both on their frontier (equal
/// compute), with a paired bootstrap interval (the same held-out examples resampled for both).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LossRatio {
    /// Tier.
    pub tier: String,
    /// The bolted-on design.
    pub design: String,
    /// The budget (every size of both designs finished there).
    pub budget: f64,
    /// Native's frontier run and its loss.
    pub native_run: String,
    /// Native's held-out image loss.
    pub native_loss: f64,
    /// The design's frontier run.
    pub run: String,
    /// Its held-out image loss.
    pub loss: f64,
    /// L_design / L_native: below 1, the design's loss is lower.
    pub ratio: Interval,
    /// True when the interval excludes 1.
    pub differs: bool,
}

/// Everything the report says, also written as `analysis.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Analysis {
    /// Per tier and design (image designs; audio-encoder designs on their budgets).
    pub designs: Vec<DesignFit>,
    /// Native / bolted ratios.
    pub ratios: Vec<RatioFit>,
    /// Held-out loss of each design over native's at each budget both finished.
    #[serde(default)]
    pub loss_ratios: Vec<LossRatio>,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// What the finished runs cost (set by [`write_report`], which reads their logs).
    #[serde(default)]
    pub cost: Option<StudyCost>,
}

/// The compute time the finished runs took, one thread each.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StudyCost {
    /// Wall seconds of training and evaluation, summed over runs: inflated by whatever else
    /// ran on the machine at the time.
    pub wall_core_hours: f64,
    /// Each run's training tokens at the median of the rates its log recorded (robust to the
    /// stretches other work took the core), plus its evaluation: the cost on a quiet machine.
    pub steady_core_hours: f64,
}

/// Training seconds of a run at the median rate its `train.jsonl` recorded (`None` without a
/// readable log or rates).
pub fn steady_train_seconds(run_dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(run_dir.join("train.jsonl")).ok()?;
    let mut rates = Vec::new();
    let mut tokens = 0u64;
    for l in text.lines() {
        let v: crate::train::LogLine = serde_json::from_str(l).ok()?;
        tokens = tokens.max(v.tokens);
        if let Some(r) = v.tokens_per_s.filter(|r| r.is_finite() && *r > 0.0) {
            rates.push(r);
        }
    }
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    let n = rates.len();
    let median = if n % 2 == 1 {
        rates[n / 2]
    } else {
        0.5 * (rates[n / 2 - 1] + rates[n / 2])
    };
    Some(tokens as f64 / median)
}

/// Per-run resampled quantities of one bootstrap draw (or the data as measured).
struct Draw {
    loss: Vec<f64>,
    test: Vec<BTreeMap<String, Measured>>,
}

fn frontier_of(cell: &[(usize, &RunResult)], d: &Draw) -> Vec<FrontierPoint> {
    let mut by: BTreeMap<u64, (usize, &RunResult)> = BTreeMap::new();
    for &(i, r) in cell {
        let b = r.settings.key.budget.to_bits();
        match by.get(&b) {
            Some(&(j, _)) if d.loss[j].total_cmp(&d.loss[i]).is_le() => {}
            _ => {
                by.insert(b, (i, r));
            }
        }
    }
    let mut v: Vec<FrontierPoint> = by
        .into_values()
        .map(|(i, r)| FrontierPoint {
            budget: r.settings.key.budget,
            run: r.settings.key.id(),
            width: r.settings.key.width,
            parameters: r.parameters,
            loss: d.loss[i],
            test: d.test[i].clone(),
        })
        .collect();
    v.sort_by(|a, b| a.budget.total_cmp(&b.budget));
    v
}

/// Fits of one frontier (and its cell's IsoFLOP points).
struct Fits {
    pure: Option<PowerLaw>,
    full: Option<PowerLaw>,
    iso: Vec<(f64, fit::IsoMin)>,
    beta: Option<f64>,
    targets: Vec<Option<ToTarget>>,
}

fn fits_of(cell: &[(usize, &RunResult)], d: &Draw, frontier: &[FrontierPoint]) -> Fits {
    let pts: Vec<(f64, f64)> = frontier.iter().map(|p| (p.budget, p.loss)).collect();
    let mut budgets: Vec<f64> = cell.iter().map(|(_, r)| r.settings.key.budget).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    let iso: Vec<(f64, fit::IsoMin)> = budgets
        .iter()
        .filter_map(|&b| {
            let pts: Vec<(f64, f64)> = cell
                .iter()
                .filter(|(_, r)| r.settings.key.budget == b)
                .map(|&(i, r)| (r.parameters as f64, d.loss[i]))
                .collect();
            fit::iso_minimum(&pts).map(|m| (b, m))
        })
        .collect();
    let beta = fit::line(
        &iso.iter()
            .map(|(b, m)| (b.ln(), m.n_opt.ln()))
            .collect::<Vec<_>>(),
    )
    .map(|(_, s)| s);
    let targets = TARGETS
        .iter()
        .map(|(metric, t, _)| {
            let acc: Vec<(f64, f64)> = frontier
                .iter()
                .filter_map(|p| p.test.get(*metric).map(|m| (p.budget, m.value)))
                .collect();
            fit::compute_to_target(&acc, *t)
        })
        .collect();
    Fits {
        pure: fit::pure_power_law(&pts),
        full: fit::power_law(&pts),
        iso,
        beta,
        targets,
    }
}

/// Analyses the finished runs: frontier, fits, targets and ratios, with `resamples` bootstrap
/// draws (held-out examples resampled with replacement, the same draw for every run; each test
/// accuracy redrawn from its binomial sampling error).
pub fn analyse(spec: &StudySpec, runs: &[&RunResult], resamples: usize, seed: u64) -> Analysis {
    let measured = Draw {
        loss: runs.iter().map(|r| r.val.image_loss).collect(),
        test: runs.iter().map(|r| r.test.clone()).collect(),
    };
    let n_ex = runs.first().map(|r| r.val.examples.len()).unwrap_or(0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let gauss = |rng: &mut rand_chacha::ChaCha8Rng| {
        // Box–Muller.
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let draws: Vec<Draw> = (0..resamples)
        .map(|_| {
            let mut w = vec![0u32; n_ex];
            for _ in 0..n_ex {
                w[rng.random_range(0..n_ex)] += 1;
            }
            let loss = runs
                .iter()
                .map(|r| {
                    if r.val.examples.len() == n_ex {
                        r.val.image_loss_weighted(&w)
                    } else {
                        r.val.image_loss
                    }
                })
                .collect();
            let test = runs
                .iter()
                .map(|r| {
                    r.test
                        .iter()
                        .map(|(k, m)| {
                            let p = m.value;
                            let se = (p * (1.0 - p) / m.n.max(1) as f64).sqrt();
                            let v = (p + se * gauss(&mut rng)).clamp(0.0, 1.0);
                            (k.clone(), Measured { value: v, n: m.n })
                        })
                        .collect()
                })
                .collect();
            Draw { loss, test }
        })
        .collect();
    let mut designs = Vec::new();
    let mut per_cell: BTreeMap<(String, String), (Fits, Vec<Fits>)> = BTreeMap::new();
    // Per cell: the frontier as measured and in each draw, and the budgets with every size.
    type Fronts = (Vec<FrontierPoint>, Vec<Vec<FrontierPoint>>, Vec<f64>);
    let mut fronts: BTreeMap<(String, String), Fronts> = BTreeMap::new();
    for tier in &spec.tiers {
        for d in &spec.designs {
            let cell: Vec<(usize, &RunResult)> = runs
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.settings.key.phase == Phase::Grid
                        && r.settings.key.tier == *tier
                        && r.settings.key.design == d.name
                })
                .map(|(i, r)| (i, *r))
                .collect();
            if cell.is_empty() {
                continue;
            }
            let complete: Vec<f64> = spec
                .budgets
                .iter()
                .copied()
                .filter(|b| {
                    spec.widths.iter().all(|w| {
                        cell.iter()
                            .any(|(_, r)| r.settings.key.budget == *b && r.settings.key.width == *w)
                    })
                })
                .collect();
            // Fits, IsoFLOP minima and targets use only budgets where every size finished: a
            // budget with some sizes missing has no known frontier yet (it is shown, marked).
            let done: Vec<(usize, &RunResult)> = cell
                .iter()
                .copied()
                .filter(|(_, r)| complete.contains(&r.settings.key.budget))
                .collect();
            let frontier = frontier_of(&cell, &measured);
            let f0 = fits_of(&done, &measured, &frontier_of(&done, &measured));
            let (boots, boot_fronts): (Vec<Fits>, Vec<Vec<FrontierPoint>>) = draws
                .iter()
                .map(|dr| {
                    let fr = frontier_of(&done, dr);
                    (fits_of(&done, dr, &fr), fr)
                })
                .unzip();
            fronts.insert(
                (tier.clone(), d.name.clone()),
                (frontier.clone(), boot_fronts, complete.clone()),
            );
            let iv = |v: Option<f64>, get: &dyn Fn(&Fits) -> Option<f64>| {
                v.map(|v| Interval::new(v, &boots.iter().filter_map(get).collect::<Vec<f64>>()))
            };
            let targets = TARGETS
                .iter()
                .enumerate()
                .filter_map(|(k, (metric, t, _))| {
                    let tt = f0.targets[k]?;
                    let at: Vec<f64> = boots
                        .iter()
                        .filter_map(|b| match b.targets[k] {
                            Some(ToTarget::At(c)) => Some(c),
                            _ => None,
                        })
                        .collect();
                    Some(TargetFit {
                        metric: metric.to_string(),
                        target: *t,
                        kind: match tt {
                            ToTarget::At(_) => "at",
                            ToTarget::AtMost(_) => "at_most",
                            ToTarget::Beyond(_) => "beyond",
                        }
                        .into(),
                        flops: Interval::new(tt.value(), &at),
                        reached_share: at.len() as f64 / boots.len().max(1) as f64,
                    })
                })
                .collect();
            designs.push(DesignFit {
                tier: tier.clone(),
                design: d.name.clone(),
                frontier,
                alpha_pure: iv(f0.pure.map(|p| p.alpha), &|b| b.pure.map(|p| p.alpha)),
                a_pure: f0.pure.map(|p| p.a),
                alpha: iv(f0.full.map(|p| p.alpha), &|b| b.full.map(|p| p.alpha)),
                e: iv(f0.full.map(|p| p.e), &|b| b.full.map(|p| p.e)),
                a: f0.full.map(|p| p.a),
                iso: f0
                    .iso
                    .iter()
                    .map(|(b, m)| (*b, m.n_opt, m.loss, m.interior))
                    .collect(),
                beta: iv(f0.beta, &|b| b.beta),
                targets,
                complete_budgets: complete.clone(),
            });
            per_cell.insert((tier.clone(), d.name.clone()), (f0, boots));
        }
    }
    // Ratios native / bolted, per tier and target, both reached between budgets.
    let mut ratios = Vec::new();
    let native = spec
        .designs
        .iter()
        .find(|d| d.design.is_native())
        .map(|d| d.name.clone());
    if let Some(native) = native {
        for tier in &spec.tiers {
            let Some((n0, nb)) = per_cell.get(&(tier.clone(), native.clone())) else {
                continue;
            };
            for d in spec.designs.iter().filter(|d| !d.design.is_native()) {
                let Some((d0, db)) = per_cell.get(&(tier.clone(), d.name.clone())) else {
                    continue;
                };
                for (k, (_, _, label)) in TARGETS.iter().enumerate() {
                    let ratio = match (n0.targets[k], d0.targets[k]) {
                        (Some(ToTarget::At(a)), Some(ToTarget::At(b))) => {
                            let xs: Vec<f64> = nb
                                .iter()
                                .zip(db)
                                .filter_map(|(x, y)| match (x.targets[k], y.targets[k]) {
                                    (Some(ToTarget::At(a)), Some(ToTarget::At(b))) => Some(a / b),
                                    _ => None,
                                })
                                .collect();
                            Some(Interval::new(a / b, &xs))
                        }
                        _ => None,
                    };
                    let differs = ratio.is_some_and(|r| r.low > 1.0 || r.high < 1.0);
                    ratios.push(RatioFit {
                        tier: tier.clone(),
                        design: d.name.clone(),
                        target: label.to_string(),
                        ratio,
                        differs,
                    });
                }
            }
        }
    }
    let mut loss_ratios = Vec::new();
    if let Some(native) = spec.designs.iter().find(|d| d.design.is_native()) {
        for tier in &spec.tiers {
            let Some((n0, nb, nc)) = fronts.get(&(tier.clone(), native.name.clone())) else {
                continue;
            };
            for d in spec
                .designs
                .iter()
                .filter(|d| !d.design.is_native() && !d.audio_encoder)
            {
                let Some((d0, db, dc)) = fronts.get(&(tier.clone(), d.name.clone())) else {
                    continue;
                };
                for &b in nc.iter().filter(|b| dc.contains(b)) {
                    let at = |f: &[FrontierPoint]| f.iter().find(|p| p.budget == b).cloned();
                    let (Some(np), Some(dp)) = (at(n0), at(d0)) else {
                        continue;
                    };
                    let xs: Vec<f64> = nb
                        .iter()
                        .zip(db)
                        .filter_map(|(x, y)| Some(at(y)?.loss / at(x)?.loss))
                        .filter(|r| r.is_finite())
                        .collect();
                    let ratio = Interval::new(dp.loss / np.loss, &xs);
                    loss_ratios.push(LossRatio {
                        tier: tier.clone(),
                        design: d.name.clone(),
                        budget: b,
                        native_run: np.run.clone(),
                        native_loss: np.loss,
                        run: dp.run.clone(),
                        loss: dp.loss,
                        differs: ratio.low > 1.0 || ratio.high < 1.0,
                        ratio,
                    });
                }
            }
        }
    }
    Analysis {
        designs,
        ratios,
        loss_ratios,
        resamples,
        cost: None,
    }
}

fn sci(x: f64) -> String {
    if !x.is_finite() {
        return "—".into();
    }
    format!("{x:.2e}")
}

fn iv3(i: &Option<Interval>) -> String {
    match i {
        Some(i) => format!("{:.3} [{:.3}, {:.3}]", i.value, i.low, i.high),
        None => "—".into(),
    }
}

fn target_cell(t: Option<&TargetFit>) -> String {
    match t {
        None => "—".into(),
        Some(t) => match t.kind.as_str() {
            "at" => format!(
                "{} [{}, {}]",
                sci(t.flops.value),
                sci(t.flops.low),
                sci(t.flops.high)
            ),
            "at_most" => format!("≤ {}", sci(t.flops.value)),
            _ => format!("> {}", sci(t.flops.value)),
        },
    }
}

fn metric(m: &BTreeMap<String, Measured>, k: &str) -> String {
    m.get(k)
        .map(|x| format!("{:.3}", x.value))
        .unwrap_or_else(|| "—".into())
}

/// The audio designs against native's raw frames at the top audio budget (aligned tier, each
/// design's frontier run): test accuracies and their differences from native, with normal
/// 95% intervals from the test questions alone (one training seed).
fn audio_finding(spec: &StudySpec, a: &Analysis, native: Option<&str>) -> Option<String> {
    let native = native?;
    let budget = *spec.audio_budgets.last()?;
    let tier = spec.tiers.first()?;
    let at = |name: &str| {
        a.designs
            .iter()
            .find(|d| d.tier == *tier && d.design == name)
            .and_then(|d| d.frontier.iter().find(|p| p.budget == budget))
    };
    let np = at(native)?;
    let mut parts = Vec::new();
    for (key, label) in [
        ("audio_pope_accuracy", "audio-POPE accuracy"),
        ("audio_count_accuracy", "audio counting"),
    ] {
        let Some(y) = np.test.get(key) else { continue };
        let mut cells = vec![format!("{native} {:.3}", y.value)];
        for d in spec.designs.iter().filter(|d| d.audio_encoder) {
            let Some(x) = at(&d.name).and_then(|p| p.test.get(key)) else {
                continue;
            };
            let diff = x.value - y.value;
            let var = |m: &Measured| m.value * (1.0 - m.value) / (m.n.max(1) as f64);
            let half = 1.96 * (var(x) + var(y)).sqrt();
            let cell = format!("{diff:+.3} [{:+.3}, {:+.3}]", diff - half, diff + half);
            let cell = if (diff - half) * (diff + half) > 0.0 {
                format!("**{cell}**")
            } else {
                cell
            };
            cells.push(format!("{} {:.3} ({cell})", d.name, x.value));
        }
        if cells.len() > 1 {
            parts.push(format!("{label} {}", cells.join(", ")));
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "Audio at {} FLOPs ({}, each design's frontier run; in brackets the difference from {native}'s raw frames with a 95% interval from the test questions, one training seed): {}.",
        sci(budget),
        tier_label(tier),
        parts.join("; ")
    ))
}

/// The held-out loss of each design against native's at the highest budget of `tier` where both
/// have every size finished (equal compute, each on its frontier), with the paired interval.
fn loss_finding(a: &Analysis, tier: &str, native: Option<&str>) -> Option<String> {
    let native = native?;
    // Each design at its own highest budget shared with native, budgets descending.
    let mut top: BTreeMap<&str, &LossRatio> = BTreeMap::new();
    for r in a.loss_ratios.iter().filter(|r| r.tier == tier) {
        match top.get(r.design.as_str()) {
            Some(t) if t.budget >= r.budget => {}
            _ => {
                top.insert(&r.design, r);
            }
        }
    }
    let mut budgets: Vec<f64> = top.values().map(|r| r.budget).collect();
    budgets.sort_by(|x, y| y.total_cmp(x));
    budgets.dedup();
    if budgets.is_empty() {
        return None;
    }
    let groups: Vec<String> = budgets
        .iter()
        .map(|&b| {
            let at: Vec<&&LossRatio> = top.values().filter(|r| r.budget == b).collect();
            let parts: Vec<String> = at
                .iter()
                .map(|r| {
                    let iv = format!(
                        "{:.2} [{:.2}, {:.2}]",
                        r.ratio.value, r.ratio.low, r.ratio.high
                    );
                    format!(
                        "{} {:.4} ({})",
                        r.design,
                        r.loss,
                        if r.differs { format!("**{iv}**") } else { iv }
                    )
                })
                .collect();
            format!(
                "at {} FLOPs {native} {:.4}, {}",
                sci(b),
                at[0].native_loss,
                parts.join(", ")
            )
        })
        .collect();
    Some(format!(
        "{}, held-out loss at equal compute (each design at the highest budget where every size of it and of native finished, each on its frontier; in brackets its loss over native's, paired bootstrap 95% interval over the held-out examples, bold when it excludes 1): {}.",
        tier_label(tier),
        groups.join("; ")
    ))
}

/// Plain sentences: per tier and target, which design gets there with less compute and by
/// what factor (a difference only when the interval excludes 1); the exponents beside Shukor
/// et al.'s; the audio designs against raw frames; free placement against aligned at the top budget both
/// reached.
pub fn findings(spec: &StudySpec, a: &Analysis) -> Vec<String> {
    let mut out = Vec::new();
    let native = spec
        .designs
        .iter()
        .find(|d| d.design.is_native())
        .map(|d| d.name.clone());
    for tier in &spec.tiers {
        for (metric, t, label) in TARGETS {
            let mut parts = Vec::new();
            // The audio designs' image path is their image twin's: their line is the audio one.
            let audio = |name: &str| spec.design(name).is_some_and(|x| x.audio_encoder);
            for d in a
                .designs
                .iter()
                .filter(|d| d.tier == *tier && !audio(&d.design))
            {
                let tf = d
                    .targets
                    .iter()
                    .find(|x| x.metric == metric && x.target == t);
                parts.push(format!("{} {}", d.design, target_cell(tf)));
            }
            if parts.is_empty() {
                continue;
            }
            let mut line = format!("{}, {label}: {} FLOPs.", tier_label(tier), parts.join(", "));
            for r in a
                .ratios
                .iter()
                .filter(|r| r.tier == *tier && r.target == label)
            {
                if let (Some(x), Some(n)) = (r.ratio, native.as_ref()) {
                    if r.differs {
                        let (who, f) = if x.value < 1.0 {
                            (n.as_str(), 1.0 / x.value)
                        } else {
                            (r.design.as_str(), x.value)
                        };
                        let _ = write!(
                            line,
                            " {n} / {} = {:.2} [{:.2}, {:.2}]: {who} needs {f:.1}× less compute.",
                            r.design, x.value, x.low, x.high
                        );
                    } else {
                        let _ = write!(
                            line,
                            " {n} / {} = {:.2} [{:.2}, {:.2}]: no difference within the interval.",
                            r.design, x.value, x.low, x.high
                        );
                    }
                }
            }
            out.push(line);
        }
        if let Some(line) = loss_finding(a, tier, native.as_deref()) {
            out.push(line);
        }
    }
    if let Some(line) = audio_finding(spec, a, native.as_deref()) {
        out.push(line);
    }
    let alphas: Vec<String> = a
        .designs
        .iter()
        .filter_map(|d| {
            d.alpha_pure.map(|x| {
                format!(
                    "{} {} {:.3} [{:.3}, {:.3}]",
                    d.design,
                    if spec.tiers.first() == Some(&d.tier) {
                        "aligned"
                    } else {
                        "free"
                    },
                    x.value,
                    x.low,
                    x.high
                )
            })
        })
        .collect();
    if !alphas.is_empty() {
        out.push(format!(
            "Loss against compute on the frontier, L ∝ C^−α: α = {}. {SHUKOR}.",
            alphas.join("; ")
        ));
    }
    if spec.tiers.len() > 1 {
        for d in spec.designs.iter().filter(|d| !d.audio_encoder) {
            let f0 = a
                .designs
                .iter()
                .find(|x| x.tier == spec.tiers[0] && x.design == d.name);
            let f1 = a
                .designs
                .iter()
                .find(|x| x.tier == spec.tiers[1] && x.design == d.name);
            let (Some(f0), Some(f1)) = (f0, f1) else {
                continue;
            };
            let top = f0.frontier.iter().rev().find(|p| {
                // A budget with sizes missing on either tier has no known frontier yet.
                f0.complete_budgets.contains(&p.budget) && f1.complete_budgets.contains(&p.budget)
            });
            if let Some(p0) = top {
                let p1 = f1.frontier.iter().find(|q| q.budget == p0.budget);
                let v = |p: Option<&FrontierPoint>| {
                    p.and_then(|p| p.test.get("pope_accuracy"))
                        .map(|m| m.value)
                        .unwrap_or(f64::NAN)
                };
                out.push(format!(
                    "{} at {} FLOPs: POPE accuracy {:.3} on {} against {:.3} on {}.",
                    d.name,
                    sci(p0.budget),
                    v(p1),
                    tier_label(&spec.tiers[1]),
                    v(Some(p0)),
                    tier_label(&spec.tiers[0])
                ));
            }
        }
    }
    out
}

/// The file in a study's folder that keeps the probes of the encoders shipped before the study
/// (the old recipe), once measured: the study re-ships those models, so the binary no longer
/// carries the encoders the probes describe.
pub const OLD_RECIPE_PROBES: &str = "old-recipe-probes.json";

/// The bolted-on models shipped before the study, whose encoders the old recipe made.
const OLD_RECIPE: [&str; 3] = ["llava-small", "qformer-small", "flamingo-small"];

/// The probes of the old recipe's encoders (SigLIP pre-trained, then frozen) on `tier`'s scenes:
/// read from `out/old-recipe-probes.json` when it was measured on that tier, else measured on
/// the compiled-in models that are still the old recipe's (preset named as the model) and, when
/// all three were, kept there.
pub fn old_recipe_probes(
    out: &Path,
    tier: &str,
    seed: u64,
) -> Vec<(String, anyhow::Result<ProbeResult>)> {
    let path = out.join(OLD_RECIPE_PROBES);
    if let Some(kept) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<(String, ProbeResult)>>(&t).ok())
        .filter(|k| k.iter().all(|(_, p)| p.tier == tier))
    {
        return kept.into_iter().map(|(n, p)| (n, Ok(p))).collect();
    }
    let measured: Vec<(String, anyhow::Result<ProbeResult>)> = OLD_RECIPE
        .iter()
        .filter_map(|name| {
            let m = crate::model::presets::embedded(name)?;
            let r = (|| {
                let loaded = crate::model::resolve::load_embedded(m, &candle_core::Device::Cpu)?;
                if loaded.config.preset.as_deref() != Some(*name) {
                    // Re-shipped from a study: not the old recipe's encoder.
                    return Ok(None);
                }
                super::probe::probe(&loaded.model, &loaded.config.image, tier, seed).map(Some)
            })();
            match r {
                Ok(None) => None,
                Ok(Some(p)) => Some((name.to_string(), Ok(p))),
                Err(e) => Some((name.to_string(), Err(e))),
            }
        })
        .collect();
    if measured.len() == OLD_RECIPE.len() && measured.iter().all(|(_, r)| r.is_ok()) {
        let keep: Vec<(&String, &ProbeResult)> = measured
            .iter()
            .filter_map(|(n, r)| r.as_ref().ok().map(|p| (n, p)))
            .collect();
        let _ = super::write_json(&path, &keep);
    }
    measured
}

/// `report.md` from the analysis and the runs.
pub fn report(
    spec: &StudySpec,
    runs: &[&RunResult],
    a: &Analysis,
    shipped: &[(String, anyhow::Result<ProbeResult>)],
) -> String {
    let mut s = String::new();
    let grid_total = spec.grid_runs(&|_| 0.0).len();
    let grid_done = runs
        .iter()
        .filter(|r| r.settings.key.phase == Phase::Grid)
        .count();
    let sweep_total = spec.sweep_runs().len();
    let sweep_done = runs.len() - grid_done;
    let core_s: f64 = runs.iter().map(|r| r.train_seconds + r.eval_seconds).sum();
    let _ = writeln!(s, "# Scaling study `{}`\n", spec.name);
    let _ =
        writeln!(
        s,
        "Native early fusion against bolted-on designs by held-out loss against training compute, \
         the way Shukor et al. 2025 compare fusion designs. Budgets {} FLOPs; widths {:?} \
         (IsoFLOP sizes); tiers {}; batch {}; training seed {}, validation seed {} (held-out \
         loss: every choice), test seed {} (accuracies: no choice).\n",
        spec.budgets.iter().map(|b| sci(*b)).collect::<Vec<_>>().join(", "),
        spec.widths,
        spec.tiers.iter().map(|t| tier_label(t)).collect::<Vec<_>>().join(", "),
        spec.batch_size,
        spec.seed,
        spec.val_seed,
        crate::eval_data::DEFAULT_EVAL_SEED,
    );
    let _ = writeln!(
        s,
        "**Progress:** {grid_done} of {grid_total} grid runs and {sweep_done} of {sweep_total} sweep runs finished; they took {:.2} core-hours of wall time (training and evaluation, one thread each; `mmlab ablate` runs two at a time on this 2-core machine){}. Sections below use what is finished; a budget with missing sizes is marked.\n",
        core_s / 3600.0,
        match &a.cost {
            Some(c) => format!(
                ", {:.2} core-hours at each run's median logged training rate (what they cost on a quiet machine; wall time also counts the stretches other work took the core)",
                c.steady_core_hours
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(
        s,
        "**Recipe (every design):** one stage, every component trained from a seeded initialisation: no frozen encoder, no alignment to a frozen random decoder, no text-only decoder start. Same data stream, batch, warm-up (5%) and cosine schedule to 5% of the peak, each run's schedule ending at its own budget. FLOPs count every component (`mmlab ablate --help`).\n"
    );
    let _ = writeln!(s, "## What was found\n");
    for line in findings(spec, a) {
        let _ = writeln!(s, "- {line}");
    }
    let _ = writeln!(s);
    // Sweep.
    let _ = writeln!(s, "## Learning rates (sweep at {} FLOPs, width {}, {}; chosen on held-out loss, validation seed)\n", sci(spec.sweep_budget()), spec.sweep_width(), tier_label(&spec.tiers[0]));
    let _ = write!(s, "| design |");
    for l in &spec.sweep.lrs {
        let _ = write!(s, " lr {l} |");
    }
    let _ = writeln!(s, " chosen |");
    let _ = writeln!(s, "|---|{}---|", "---|".repeat(spec.sweep.lrs.len()));
    for d in &spec.designs {
        let _ = write!(s, "| {} |", d.name);
        let mut best: Option<(f64, f64)> = None;
        for &l in &spec.sweep.lrs {
            let r = runs.iter().find(|r| {
                r.settings.key.phase == Phase::Sweep
                    && r.settings.key.design == d.name
                    && r.settings.key.lr == l
            });
            match r {
                Some(r) => {
                    let _ = write!(s, " {:.4} |", r.val.image_loss);
                    if best.is_none_or(|b| r.val.image_loss < b.1) {
                        best = Some((l, r.val.image_loss));
                    }
                }
                None => {
                    let _ = write!(s, " … |");
                }
            }
        }
        let chosen = match (d.lr, best) {
            (Some(l), _) => format!("{l} (fixed)"),
            (None, _) if d.lr_from.is_some() => {
                format!("as {}", d.lr_from.as_deref().unwrap_or_default())
            }
            (None, Some((l, _)))
                if runs
                    .iter()
                    .filter(|r| {
                        r.settings.key.phase == Phase::Sweep && r.settings.key.design == d.name
                    })
                    .count()
                    == spec.sweep.lrs.len() =>
            {
                let edge = Some(&l) == spec.sweep.lrs.first() || Some(&l) == spec.sweep.lrs.last();
                format!("{l}{}", if edge { " (edge of the sweep)" } else { "" })
            }
            _ => "pending".into(),
        };
        let _ = writeln!(s, " {chosen} |");
    }
    let _ = writeln!(s);
    // Headline.
    let _ = writeln!(
        s,
        "## Compute to reach a target (test seed; frontier chosen on validation loss)\n"
    );
    let _ = writeln!(s, "Training FLOPs at which each design's compute-optimal frontier first reaches the target, interpolated in log-compute between budgets, with bootstrap 95% intervals ({} resamples: held-out examples resampled, test accuracies redrawn from their binomial error; the interval covers the resamples that cross between budgets). `≤` reached at the lowest budget, `>` not reached. The ratio is native's compute over the design's: below 1, native needs less. **Bold**: the interval excludes 1.\n", a.resamples);
    for tier in &spec.tiers {
        let _ = writeln!(s, "### {}\n", tier_label(tier));
        let _ = write!(s, "| design |");
        for (_, _, l) in TARGETS {
            let _ = write!(s, " {l} | native / design |");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "|---|{}", "---|---|".repeat(TARGETS.len()));
        for d in a.designs.iter().filter(|d| d.tier == *tier) {
            let _ = write!(s, "| {} |", d.design);
            for (metric, t, label) in TARGETS.iter() {
                let tf = d
                    .targets
                    .iter()
                    .find(|x| x.metric == *metric && x.target == *t);
                let _ = write!(s, " {} |", target_cell(tf));
                let r = a
                    .ratios
                    .iter()
                    .find(|r| r.tier == *tier && r.design == d.design && r.target == *label);
                let cell = match r.and_then(|r| r.ratio.map(|x| (x, r.differs))) {
                    Some((x, true)) => format!("**{:.2} [{:.2}, {:.2}]**", x.value, x.low, x.high),
                    Some((x, false)) => format!("{:.2} [{:.2}, {:.2}]", x.value, x.low, x.high),
                    None => "—".into(),
                };
                let _ = write!(s, " {cell} |");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s);
    }
    // Fits.
    let _ = writeln!(
        s,
        "## Fitted exponents (held-out image loss on the frontier, validation seed)\n"
    );
    let _ = writeln!(s, "`L = A·C^−α` (a line in log–log; the form Shukor et al. quote), `L = E + A·C^−α`, and `N_opt ∝ C^β` from the IsoFLOP minima (a parabola in ln N per budget; `edge`: the best size tried is the smallest or largest, so N_opt is a bound). Intervals: bootstrap 95%. Beside them, {SHUKOR}.\n");
    let _ = writeln!(
        s,
        "| tier | design | α (pure) | α (with E) | E | β (N_opt ∝ C^β) | N_opt per budget |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for d in &a.designs {
        let iso: Vec<String> = d
            .iso
            .iter()
            .map(|(b, n, _, interior)| {
                format!(
                    "{}: {}{}",
                    sci(*b),
                    sci(*n),
                    if *interior { "" } else { " (edge)" }
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            tier_label(&d.tier),
            d.design,
            iv3(&d.alpha_pure),
            iv3(&d.alpha),
            iv3(&d.e),
            iv3(&d.beta),
            iso.join("; ")
        );
    }
    let _ = writeln!(s, "\n![held-out loss against training FLOPs per design, log-log, frontier and fitted lines](frontier.svg)\n");
    let _ = writeln!(
        s,
        "![IsoFLOP curves: held-out loss against parameters, one line per budget](isoflop.svg)\n"
    );
    // Per-tier frontier tables.
    let _ = writeln!(s, "## The frontier per tier (test seed)\n");
    let _ = writeln!(s, "At each budget, each design's run with the lowest held-out loss (validation seed). POPE: mean of the three splits' accuracy / F1 and the random split's yes-ratio; counting: exact match.\n");
    for tier in &spec.tiers {
        let _ = writeln!(s, "### {}\n", tier_label(tier));
        let _ = writeln!(s, "| budget | design | width | params | held-out loss | POPE acc. | POPE F1 | yes-ratio (random) | counting | audio-POPE F1 | audio counting |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        let mut budgets: Vec<f64> = a
            .designs
            .iter()
            .filter(|d| d.tier == *tier)
            .flat_map(|d| d.frontier.iter().map(|p| p.budget))
            .collect();
        budgets.sort_by(f64::total_cmp);
        budgets.dedup();
        for b in budgets {
            for d in a.designs.iter().filter(|d| d.tier == *tier) {
                let Some(p) = d.frontier.iter().find(|p| p.budget == b) else {
                    continue;
                };
                let n_sizes = runs
                    .iter()
                    .filter(|r| {
                        r.settings.key.phase == Phase::Grid
                            && r.settings.key.tier == *tier
                            && r.settings.key.design == d.design
                            && r.settings.key.budget == b
                    })
                    .count();
                let partial = if n_sizes < spec.widths.len() {
                    format!(" ({n_sizes}/{} sizes)", spec.widths.len())
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {}{partial} | {} | {} | {} | {:.4} | {} | {} | {} | {} | {} | {} |",
                    sci(b),
                    d.design,
                    p.width,
                    p.parameters,
                    p.loss,
                    metric(&p.test, "pope_accuracy"),
                    metric(&p.test, "pope_f1"),
                    metric(&p.test, "pope_random_yes_ratio"),
                    metric(&p.test, "count_accuracy"),
                    metric(&p.test, "audio_pope_f1"),
                    metric(&p.test, "audio_count_accuracy"),
                );
            }
        }
        let _ = writeln!(s);
    }
    // Free vs aligned.
    if spec.tiers.len() > 1 {
        let (t0, t1) = (&spec.tiers[0], &spec.tiers[1]);
        let _ = writeln!(s, "## {} against {}\n", tier_label(t1), tier_label(t0));
        let _ = writeln!(s, "Each design trained and tested on each tier; frontier POPE accuracy and counting (test seed) side by side.\n");
        let _ = writeln!(s, "| budget | design | POPE acc. {t0} | POPE acc. {t1} | difference | counting {t0} | counting {t1} |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for d in spec.designs.iter().filter(|d| !d.audio_encoder) {
            let f0 = a
                .designs
                .iter()
                .find(|x| x.tier == *t0 && x.design == d.name);
            let f1 = a
                .designs
                .iter()
                .find(|x| x.tier == *t1 && x.design == d.name);
            let (Some(f0), Some(f1)) = (f0, f1) else {
                continue;
            };
            for p0 in &f0.frontier {
                let Some(p1) = f1.frontier.iter().find(|p| p.budget == p0.budget) else {
                    continue;
                };
                let v =
                    |p: &FrontierPoint, k: &str| p.test.get(k).map(|m| m.value).unwrap_or(f64::NAN);
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.3} | {:.3} | {:+.3} | {:.3} | {:.3} |",
                    sci(p0.budget),
                    d.name,
                    v(p0, "pope_accuracy"),
                    v(p1, "pope_accuracy"),
                    v(p1, "pope_accuracy") - v(p0, "pope_accuracy"),
                    v(p0, "count_accuracy"),
                    v(p1, "count_accuracy")
                );
            }
        }
        let _ = writeln!(s);
    }
    // Audio.
    if spec.designs.iter().any(|d| d.audio_encoder) {
        let _ = writeln!(
            s,
            "## Audio: raw frames (native) against audio encoders ({}, test seed)\n",
            tier_label(&spec.tiers[0])
        );
        let _ = writeln!(s, "The native model embeds raw 40 ms frames linearly; the `-audio` designs run a Whisper-style encoder over 80-bin log-mel and connect it as their images. Frontier per budget (held-out loss chooses the size).\n");
        let _ = writeln!(s, "| budget | design | width | held-out audio loss (presence / count) | audio-POPE acc. | audio-POPE F1 | audio counting |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for &b in &spec.audio_budgets {
            for d in spec
                .designs
                .iter()
                .filter(|d| d.audio_encoder || d.design.is_native())
            {
                let Some(f) = a
                    .designs
                    .iter()
                    .find(|x| x.tier == spec.tiers[0] && x.design == d.name)
                else {
                    continue;
                };
                let Some(p) = f.frontier.iter().find(|p| p.budget == b) else {
                    continue;
                };
                let r = runs.iter().find(|r| r.settings.key.id() == p.run);
                let al = r
                    .map(|r| {
                        format!(
                            "{:.4} / {:.4}",
                            r.val
                                .losses
                                .get("audio_presence")
                                .copied()
                                .unwrap_or(f64::NAN),
                            r.val.losses.get("audio_count").copied().unwrap_or(f64::NAN)
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {al} | {} | {} | {} |",
                    sci(b),
                    d.name,
                    p.width,
                    metric(&p.test, "audio_pope_accuracy"),
                    metric(&p.test, "audio_pope_f1"),
                    metric(&p.test, "audio_count_accuracy")
                );
            }
        }
        let _ = writeln!(s);
    }
    // Probes.
    let _ = writeln!(
        s,
        "## What the encoders' features carry (linear probes, {})\n",
        tier_label(&spec.tiers[0])
    );
    let _ = writeln!(s, "A ridge probe of the vision encoder's per-patch features, fitted on {} held-out scenes and scored on {} others (validation stream): the shape and colour of the object centred in the patch (object patches only) and the patch's position. Chance: the majority class, in brackets. The old recipe's encoders (the `-small` models shipped before this study: SigLIP pre-trained against captions, then frozen; their probes are kept in `{}`) against this study's (trained end to end with the decoder), at the top budget reached.\n", super::probe::FIT_SCENES, super::probe::TEST_SCENES, OLD_RECIPE_PROBES);
    let _ = writeln!(s, "| encoder | shape | colour | position |");
    let _ = writeln!(s, "|---|---|---|---|");
    let cellp = |p: &ProbeResult, k: &str| {
        p.scores
            .get(k)
            .map(|x| format!("{:.3} ({:.3})", x.accuracy, x.majority))
            .unwrap_or_else(|| "—".into())
    };
    for (name, r) in shipped {
        match r {
            Ok(p) => {
                let _ = writeln!(
                    s,
                    "| old recipe `{name}` (SigLIP, frozen) | {} | {} | {} |",
                    cellp(p, "shape"),
                    cellp(p, "colour"),
                    cellp(p, "position")
                );
            }
            Err(e) => {
                let _ = writeln!(s, "| old recipe `{name}` | could not be probed: {e} | | |");
            }
        }
    }
    for d in a.designs.iter().filter(|d| d.tier == spec.tiers[0]) {
        let Some(top) = d.frontier.last() else {
            continue;
        };
        let Some(r) = runs.iter().find(|r| r.settings.key.id() == top.run) else {
            continue;
        };
        if let (Some(p), Some(p0)) = (&r.probe, &r.probe_init) {
            let _ = writeln!(
                s,
                "| `{}` at initialisation | {} | {} | {} |",
                top.run,
                cellp(p0, "shape"),
                cellp(p0, "colour"),
                cellp(p0, "position")
            );
            let _ = writeln!(
                s,
                "| `{}` trained | {} | {} | {} |",
                top.run,
                cellp(p, "shape"),
                cellp(p, "colour"),
                cellp(p, "position")
            );
        }
    }
    let _ = writeln!(s);
    // Every run.
    let _ = writeln!(s, "## Every run\n");
    let _ = writeln!(
        s,
        "| run | params | steps | FLOPs | lr | held-out loss | POPE acc. | counting | seconds |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.4} | {} | {} | {:.0} |",
            r.settings.key.id(),
            r.parameters,
            r.steps,
            sci(r.flops),
            r.settings.key.lr,
            r.val.image_loss,
            metric(&r.test, "pope_accuracy"),
            metric(&r.test, "count_accuracy"),
            r.train_seconds + r.eval_seconds
        );
    }
    s
}

/// Reads the finished runs, analyses them, writes `report.md`, `analysis.json` and the plots
/// into `out`, and returns the report.
pub fn write_report(
    spec: &StudySpec,
    out: &Path,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<String> {
    let found = super::finished_runs(spec, out)?;
    let runs: Vec<&RunResult> = found.values().collect();
    say(&format!("{} finished runs; fitting", runs.len()));
    let mut a = analyse(spec, &runs, RESAMPLES, 0x5EED);
    let (mut wall, mut steady) = (0.0, 0.0);
    for (id, r) in &found {
        wall += r.train_seconds + r.eval_seconds;
        steady += steady_train_seconds(&out.join("runs").join(id)).unwrap_or(r.train_seconds)
            + r.eval_seconds;
    }
    a.cost = Some(StudyCost {
        wall_core_hours: wall / 3600.0,
        steady_core_hours: steady / 3600.0,
    });
    let shipped = old_recipe_probes(out, &spec.tiers[0], spec.val_seed);
    let text = report(spec, &runs, &a, &shipped);
    super::write_json(&out.join("analysis.json"), &a)?;
    super::plot::write_plots(spec, &runs, &a, out)?;
    crate::io::atomic_write(&out.join("report.md"), text.as_bytes())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::ablate::study::{run_settings, RunKey, ValResult};

    #[test]
    fn the_audio_finding_gives_differences_from_raw_frames_with_intervals() {
        let spec = StudySpec::parse(crate::ablate::study::TEST_AUDIO_SPEC).unwrap();
        let fit = |design: &str, acc: f64, count: f64| DesignFit {
            tier: "small".into(),
            design: design.into(),
            frontier: vec![FrontierPoint {
                budget: 3e12,
                run: format!("small-{design}-d32-3e12"),
                width: 32,
                parameters: 1,
                loss: 0.5,
                test: BTreeMap::from([
                    (
                        "audio_pope_accuracy".to_string(),
                        Measured {
                            value: acc,
                            n: 3000,
                        },
                    ),
                    (
                        "audio_count_accuracy".to_string(),
                        Measured {
                            value: count,
                            n: 500,
                        },
                    ),
                ]),
            }],
            alpha_pure: None,
            a_pure: None,
            alpha: None,
            e: None,
            a: None,
            iso: vec![],
            beta: None,
            targets: vec![],
            complete_budgets: vec![],
        };
        let a = Analysis {
            designs: vec![
                fit("native", 0.814, 0.626),
                fit("qformer", 0.6, 0.3),
                fit("qformer-audio", 0.883, 0.640),
            ],
            ratios: vec![],
            loss_ratios: vec![],
            resamples: 0,
            cost: None,
        };
        let line = audio_finding(&spec, &a, Some("native")).unwrap();
        assert!(line.starts_with("Audio at 3.00e12 FLOPs"), "{line}");
        // 0.883 - 0.814 over 3000 questions each: outside the interval, in bold.
        assert!(
            line.contains("qformer-audio 0.883 (**+0.069 [+0.051, +0.087]**)"),
            "{line}"
        );
        // 0.640 - 0.626 over 500 each: inside it, plain.
        assert!(
            line.contains("qformer-audio 0.640 (+0.014 [-0.046, +0.074])"),
            "{line}"
        );
        // Only audio designs are compared; image-only bolted designs stay out of this line.
        assert!(!line.contains("qformer 0.6"), "{line}");
        // Without a native design or audio budgets there is no line.
        assert!(audio_finding(&spec, &a, None).is_none());
    }

    #[test]
    fn steady_seconds_use_the_median_rate_so_a_starved_stretch_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        // 4000 tokens; three lines at 100 tokens/s and one at 2 (another job took the core).
        let lines = [(1000, 100.0), (2000, 2.0), (3000, 100.0), (4000, 100.0)]
            .iter()
            .map(|(t, r)| {
                format!(
                    "{{\"step\":{t},\"loss\":1.0,\"tokens\":{t},\"tokens_per_s\":{r},\"seconds\":1.0}}"
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("train.jsonl"), lines).unwrap();
        assert_eq!(steady_train_seconds(dir.path()), Some(40.0));
        std::fs::write(dir.path().join("train.jsonl"), "{ not json").unwrap();
        assert_eq!(steady_train_seconds(dir.path()), None);
    }

    const SPEC: &str = r#"
name = "synthetic"
budgets = [1e12, 3.1622776601683795e12, 1e13, 3.1622776601683795e13, 1e14]
widths = [32, 48]
tiers = ["small"]
[sweep]
lrs = []
[[designs]]
name = "native"
design = "native"
lr = 1e-3
"#;

    /// Runs whose held-out loss follows `L = 40·C^−0.1` (the smaller width; the larger is 20%
    /// worse), each example's loss the law times its own noise, and whose POPE accuracy rises
    /// 0.2 a decade from 0.5 at 1e12.
    fn synthetic_runs() -> Vec<RunResult> {
        let spec = StudySpec::parse(SPEC).unwrap();
        let tok = Arc::new(crate::fusion::TextTokenizer::builtin().unwrap());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut out = Vec::new();
        for &b in &spec.budgets {
            for &w in &spec.widths {
                let key = RunKey {
                    phase: Phase::Grid,
                    tier: "small".into(),
                    design: "native".into(),
                    width: w,
                    budget: b,
                    lr: 1e-3,
                };
                let (settings, fps, _, total) = run_settings(&spec, &key, &tok).unwrap();
                let law = 40.0 * b.powf(-0.1) * if w == 32 { 1.0 } else { 1.2 };
                // Exponential noise with mean 1, per example.
                let examples: Vec<(String, u32, f64)> = (0..400)
                    .map(|_| {
                        let u: f64 = rng.random::<f64>().max(1e-12);
                        ("presence".to_string(), 1, -u.ln() * law)
                    })
                    .collect();
                let val = ValResult {
                    image_loss: examples.iter().map(|e| e.2).sum::<f64>() / 400.0,
                    loss: 0.0,
                    losses: BTreeMap::new(),
                    accuracy: BTreeMap::new(),
                    examples,
                };
                let acc = 0.5 + 0.2 * (b / 1e12).log10();
                let test = [(
                    "pope_accuracy".to_string(),
                    Measured {
                        value: acc.min(1.0),
                        n: 3000,
                    },
                )]
                .into_iter()
                .collect();
                out.push(RunResult {
                    settings,
                    parameters: total,
                    matmul_parameters: BTreeMap::new(),
                    flops_per_step: fps,
                    steps: (b / fps) as u64,
                    flops: b,
                    tokens: 0,
                    train_seconds: 0.0,
                    eval_seconds: 0.0,
                    curve: Vec::new(),
                    val,
                    test,
                    probe: None,
                    probe_init: None,
                });
            }
        }
        out
    }

    #[test]
    fn the_bootstrap_fit_recovers_a_known_power_law_within_its_interval() {
        let spec = StudySpec::parse(SPEC).unwrap();
        let runs = synthetic_runs();
        let refs: Vec<&RunResult> = runs.iter().collect();
        let a = analyse(&spec, &refs, 300, 1);
        let d = &a.designs[0];
        assert!(d.frontier.iter().all(|p| p.width == 32), "{:?}", d.frontier);
        let al = d.alpha_pure.unwrap();
        assert!(al.low <= 0.1 && 0.1 <= al.high, "α = 0.1 outside {al:?}");
        assert!(
            (al.value - 0.1).abs() < 0.03 && al.high - al.low < 0.1,
            "{al:?}"
        );
        // POPE accuracy 0.8 at 10^13.5 FLOPs, by construction.
        let t = d
            .targets
            .iter()
            .find(|t| t.metric == "pope_accuracy" && t.target == 0.8)
            .unwrap();
        assert_eq!(t.kind, "at");
        assert!((t.flops.value.log10() - 13.5).abs() < 0.01, "{t:?}");
        assert!(
            t.flops.low <= t.flops.value && t.flops.value <= t.flops.high,
            "{t:?}"
        );
    }
}
