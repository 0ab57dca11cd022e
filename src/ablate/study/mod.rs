//! Scaling studies (`mmlab ablate STUDY.toml` with `budgets`): native against bolted-on
//! designs the way Shukor et al. 2025 compare fusion designs — a grid of training budgets ×
//! model sizes (IsoFLOP) × designs × scene tiers, every run with its own full learning-rate
//! schedule ending at its budget, then power-law fits of held-out loss against compute, the
//! IsoFLOP minima, and the compute each design needs to reach an accuracy target.
//!
//! The recipe is the same for every design: one stage, every component trained from a seeded
//! initialisation (no frozen encoder, no alignment to a frozen random decoder, no text-only
//! decoder start), the same data stream and the same held-out set. Each design's learning rate
//! comes from a sweep at the lowest budget, chosen on the validation seed's held-out loss.
//!
//! Seeds: training streams use `seed`; the held-out loss (all choices: learning rate, which
//! size is on the frontier) uses `val_seed`; the final POPE / counting / audio accuracies use
//! the default test set's seed ([`DEFAULT_EVAL_SEED`]), which no choice reads.
//!
//! A run's directory under `runs/` holds `settings.json` (what decides it), `train.jsonl` and,
//! once finished, `result.json`: a run whose `result.json` was made with the settings asked
//! for now is never redone, so the study can be finished over several sessions or machines
//! (`--shard i/n`, then `mmlab ablate merge`). Weights stay out of git except the frontier's.

pub mod fit;
pub mod plot;
pub mod probe;
pub mod report;
pub mod ship;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::Device;
use serde::{Deserialize, Serialize};

pub(crate) use super::write_json;
use super::{component_params, non_empty, set_aside, step_shape, train_step_flops};
use crate::eval_data::DEFAULT_EVAL_SEED;
use crate::fusion::TextTokenizer;
use crate::model::design::Design;
use crate::model::presets::sized;
use crate::model::ModelDirConfig;
use crate::train::data::{Factory, Source, SyntheticData};
use crate::train::{evaluate, HeldOut, TrainConfig};

/// A scaling-study file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StudySpec {
    /// Name; results go to `ablations/results/<name>/` unless `--out` says otherwise.
    pub name: String,
    /// Training-FLOP budgets (ascending), each run's whole schedule.
    pub budgets: Vec<f64>,
    /// Decoder widths of the size ladder ([`sized`]); every design runs every width.
    pub widths: Vec<usize>,
    /// Scene tiers (scene presets: `small` is the aligned tier, `free-small` free placement).
    pub tiers: Vec<String>,
    /// Budgets at which the designs with an audio encoder run (first tier only).
    #[serde(default)]
    pub audio_budgets: Vec<f64>,
    /// Sequences per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seed of every run's initialisation and training stream.
    #[serde(default)]
    pub seed: u64,
    /// Seed of the held-out (validation) set every run is measured on during training.
    #[serde(default = "default_val_seed")]
    pub val_seed: u64,
    /// Held-out batches (of `batch_size`; every fifth is audio).
    #[serde(default = "default_val_batches")]
    pub val_batches: u64,
    /// Held-out evaluations per run, evenly spaced in steps (so in FLOPs).
    #[serde(default = "default_evals")]
    pub evals_per_run: u64,
    /// The learning-rate sweep.
    pub sweep: SweepSpec,
    /// Final evaluation on the test set.
    #[serde(default)]
    pub eval: super::EvalSpec,
    /// The designs compared.
    pub designs: Vec<DesignSpec>,
}

/// Sequences per step of a study run unless its file sets `batch_size`.
pub const DEFAULT_BATCH: usize = 64;

fn default_batch() -> usize {
    DEFAULT_BATCH
}
fn default_val_seed() -> u64 {
    1_000_000_009
}
fn default_val_batches() -> u64 {
    10
}
fn default_evals() -> u64 {
    8
}

/// The learning-rate sweep: every design (without `lr` or `lr_from`) at one budget and the
/// middle width, first tier; the rate with the lowest held-out image loss (validation seed) is
/// used at every budget and width.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Peak learning rates tried.
    pub lrs: Vec<f64>,
    /// The budget it runs at (default: the lowest of the grid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
}

/// One design of the study.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DesignSpec {
    /// Name in tables and plots (also in run names: letters, digits, '-').
    pub name: String,
    /// The design (`native`, `llava`, `qformer`, `flamingo`).
    pub design: Design,
    /// A Whisper-style audio encoder (the `-audio-` presets); such designs run only at
    /// `audio_budgets`.
    #[serde(default)]
    pub audio_encoder: bool,
    /// A fixed learning rate instead of the sweep's choice.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Take the sweep's choice for this other design instead of sweeping (an `-audio` design
    /// takes its image-only twin's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_from: Option<String>,
}

/// Which part of the study a run belongs to.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The learning-rate sweep.
    Sweep,
    /// The budget × size × design × tier grid.
    Grid,
}

/// What identifies one run of the study.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunKey {
    /// Sweep or grid.
    pub phase: Phase,
    /// Scene tier (scene preset name).
    pub tier: String,
    /// Design name (the study file's).
    pub design: String,
    /// Decoder width.
    pub width: usize,
    /// Training FLOPs.
    pub budget: f64,
    /// The learning rate (sweep runs: the one tried; grid runs: the design's).
    pub lr: f64,
}

impl RunKey {
    /// The run's directory name: `small-native-d64-1e13`, `sweep-native-d64-1e12-lr0.004`.
    pub fn id(&self) -> String {
        match self.phase {
            Phase::Grid => format!(
                "{}-{}-d{}-{:e}",
                self.tier, self.design, self.width, self.budget
            ),
            Phase::Sweep => format!(
                "sweep-{}-d{}-{:e}-lr{}",
                self.design, self.width, self.budget, self.lr
            ),
        }
    }
}

/// The tier's label in reports: `aligned` for `small`, `free` for `free-small`, else the name.
pub fn tier_label(tier: &str) -> String {
    match tier {
        "small" => "aligned (small)".into(),
        "free-small" => "free (free-small)".into(),
        t => t.into(),
    }
}

impl StudySpec {
    /// Reads and checks a study file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}: invalid study file", path.display()))
    }

    /// Parses and checks a study file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let spec: Self = toml::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Whether a TOML file's text is a study (it has `budgets`) rather than an ablation.
    pub fn is_study(text: &str) -> bool {
        toml::from_str::<toml::Table>(text)
            .map(|t| t.contains_key("budgets"))
            .unwrap_or(false)
    }

    /// Checks names, budgets, widths, tiers, seeds and designs.
    pub fn validate(&self) -> anyhow::Result<()> {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.name) {
            bail!("name {:?} must be letters, digits, '-' or '_'", self.name);
        }
        let ascending = |xs: &[f64], what: &str| -> anyhow::Result<()> {
            if xs.iter().any(|b| !(b.is_finite() && *b > 0.0)) {
                bail!("{what} must be positive numbers");
            }
            if xs.windows(2).any(|w| w[0] >= w[1]) {
                bail!("{what} must be strictly ascending");
            }
            Ok(())
        };
        if self.budgets.is_empty() {
            bail!("budgets is empty");
        }
        ascending(&self.budgets, "budgets")?;
        ascending(&self.audio_budgets, "audio_budgets")?;
        if self.widths.is_empty() {
            bail!("widths is empty");
        }
        if self.widths.windows(2).any(|w| w[0] >= w[1]) {
            bail!("widths must be strictly ascending");
        }
        for &w in &self.widths {
            sized(Design::Native, w, false).map_err(|e| anyhow::anyhow!(e))?;
        }
        if self.tiers.is_empty() {
            bail!("tiers is empty");
        }
        for t in &self.tiers {
            if mmlab_datasets::SceneConfig::preset(t).is_none() {
                bail!(
                    "unknown tier {t:?} (scene presets: {})",
                    mmlab_datasets::SceneConfig::PRESETS.join(", ")
                );
            }
        }
        if self.batch_size < 2 {
            bail!("batch_size must be at least 2");
        }
        if self.val_batches == 0 || self.evals_per_run == 0 {
            bail!("val_batches and evals_per_run must be positive");
        }
        if self.val_seed == self.seed || self.val_seed == DEFAULT_EVAL_SEED {
            bail!(
                "val_seed {} must differ from the training seed and the test seed {DEFAULT_EVAL_SEED}",
                self.val_seed
            );
        }
        if self.sweep.lrs.iter().any(|l| !(l.is_finite() && *l > 0.0)) {
            bail!("sweep.lrs must be positive");
        }
        if self.designs.is_empty() {
            bail!("no designs");
        }
        let mut names = std::collections::BTreeSet::new();
        for d in &self.designs {
            if !name_ok(&d.name) || d.name.contains('_') {
                bail!("design name {:?} must be letters, digits or '-'", d.name);
            }
            if !names.insert(d.name.clone()) {
                bail!("two designs are called {:?}", d.name);
            }
            if d.design == Design::HfFuyu {
                bail!("design {:?}: hf-fuyu cannot be trained here", d.name);
            }
            for &w in &self.widths {
                sized(d.design, w, d.audio_encoder)
                    .map_err(|e| anyhow::anyhow!("design {:?}: {e}", d.name))?;
            }
            if d.audio_encoder && self.audio_budgets.is_empty() {
                bail!(
                    "design {:?} has an audio encoder but audio_budgets is empty",
                    d.name
                );
            }
            match (d.lr, &d.lr_from) {
                (Some(_), Some(_)) => bail!("design {:?}: give lr or lr_from, not both", d.name),
                (Some(l), None) if !(l.is_finite() && l > 0.0) => {
                    bail!("design {:?}: lr must be positive", d.name)
                }
                (None, Some(from)) => {
                    let ok = self
                        .designs
                        .iter()
                        .any(|o| o.name == *from && o.lr_from.is_none() && o.name != d.name);
                    if !ok {
                        bail!(
                            "design {:?}: lr_from {from:?} must name another design that has its own rate",
                            d.name
                        );
                    }
                }
                (None, None) if self.sweep.lrs.is_empty() => {
                    bail!("design {:?} has no lr and sweep.lrs is empty", d.name)
                }
                _ => {}
            }
        }
        if self.designs.iter().all(|d| d.audio_encoder) {
            bail!("every design has an audio encoder: nothing runs at the budgets");
        }
        Ok(())
    }

    /// The design called `name`.
    pub fn design(&self, name: &str) -> Option<&DesignSpec> {
        self.designs.iter().find(|d| d.name == name)
    }

    /// The width the learning-rate sweep runs at (the middle of the ladder).
    pub fn sweep_width(&self) -> usize {
        self.widths[(self.widths.len() - 1) / 2]
    }

    /// The sweep's runs: every design without a fixed or borrowed rate × every rate.
    pub fn sweep_runs(&self) -> Vec<RunKey> {
        let budget = self.sweep_budget();
        self.designs
            .iter()
            .filter(|d| d.lr.is_none() && d.lr_from.is_none())
            .flat_map(|d| {
                self.sweep.lrs.iter().map(move |&lr| RunKey {
                    phase: Phase::Sweep,
                    tier: self.tiers[0].clone(),
                    design: d.name.clone(),
                    width: self.sweep_width(),
                    budget,
                    lr,
                })
            })
            .collect()
    }

    /// The budget the sweep runs at (`sweep.budget`, else the lowest of the grid).
    pub fn sweep_budget(&self) -> f64 {
        if let Some(b) = self.sweep.budget {
            return b;
        }
        let mut b = self.budgets[0];
        if let Some(&a) = self.audio_budgets.first() {
            b = b.min(a);
        }
        b
    }

    /// The grid's runs, cheapest budgets first; `lr` gives each design's learning rate.
    pub fn grid_runs(&self, lr: &dyn Fn(&DesignSpec) -> f64) -> Vec<RunKey> {
        let mut budgets: Vec<f64> = self
            .budgets
            .iter()
            .chain(&self.audio_budgets)
            .copied()
            .collect();
        budgets.sort_by(f64::total_cmp);
        budgets.dedup();
        let mut out = Vec::new();
        for &b in &budgets {
            for (ti, t) in self.tiers.iter().enumerate() {
                for d in &self.designs {
                    let runs = if d.audio_encoder {
                        ti == 0 && self.audio_budgets.contains(&b)
                    } else {
                        self.budgets.contains(&b)
                    };
                    if !runs {
                        continue;
                    }
                    for &w in &self.widths {
                        out.push(RunKey {
                            phase: Phase::Grid,
                            tier: t.clone(),
                            design: d.name.clone(),
                            width: w,
                            budget: b,
                            lr: lr(d),
                        });
                    }
                }
            }
        }
        out
    }
}

/// One held-out measurement during a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    /// Training FLOPs spent by then.
    pub flops: f64,
    /// Held-out answer loss over all tasks.
    pub loss: f64,
    /// Held-out answer loss per task.
    pub losses: BTreeMap<String, f64>,
    /// Held-out answer accuracy per task.
    pub accuracy: BTreeMap<String, f64>,
}

/// A test-set measurement with the number of questions behind it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    /// The value.
    pub value: f64,
    /// Questions it was measured on.
    pub n: u64,
}

/// The final held-out (validation) measurement of a run, with each example's loss.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ValResult {
    /// Answer loss over presence and counting (the image tasks): the study's loss.
    pub image_loss: f64,
    /// Answer loss over all tasks.
    pub loss: f64,
    /// Answer loss per task.
    pub losses: BTreeMap<String, f64>,
    /// Answer accuracy per task.
    pub accuracy: BTreeMap<String, f64>,
    /// Each example's (task, answer tokens, summed loss), in held-out order (the same
    /// examples for every run, so resampling them pairs the runs).
    pub examples: Vec<(String, u32, f64)>,
}

impl ValResult {
    fn new(h: HeldOut) -> Self {
        let (mut l, mut n) = (0.0, 0u64);
        for (k, c, s) in &h.examples {
            if IMAGE_TASKS.contains(&k.as_str()) {
                l += s;
                n += *c as u64;
            }
        }
        ValResult {
            image_loss: l / n.max(1) as f64,
            loss: h.loss,
            losses: h.losses,
            accuracy: h.accuracy,
            examples: h
                .examples
                .into_iter()
                .map(|(k, c, s)| (k, c, (s * 1e5).round() / 1e5))
                .collect(),
        }
    }

    /// The image loss with example `i` counted `weights[i]` times (a bootstrap resample).
    pub fn image_loss_weighted(&self, weights: &[u32]) -> f64 {
        let (mut l, mut n) = (0.0, 0.0);
        for ((k, c, s), &w) in self.examples.iter().zip(weights) {
            if IMAGE_TASKS.contains(&k.as_str()) {
                l += s * w as f64;
                n += *c as f64 * w as f64;
            }
        }
        l / n.max(1.0)
    }
}

/// The held-out tasks whose loss is the study's loss (the image tasks).
pub const IMAGE_TASKS: [&str; 2] = ["presence", "count"];

/// Everything that decides a run's result, stored as `settings.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSettings {
    /// The run.
    pub key: RunKey,
    /// The design as the study file gives it.
    pub design: DesignSpec,
    /// The training run.
    pub train: TrainConfig,
    /// The final evaluation.
    pub eval: super::EvalSpec,
    /// The test set's seed.
    pub test_seed: u64,
}

/// A finished run, stored as `result.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// What it was run with.
    pub settings: RunSettings,
    /// Total parameters.
    pub parameters: usize,
    /// Matmul parameters per component (token embedding excluded).
    pub matmul_parameters: BTreeMap<String, usize>,
    /// Estimated training FLOPs per step.
    pub flops_per_step: f64,
    /// Steps run.
    pub steps: u64,
    /// Training FLOPs spent.
    pub flops: f64,
    /// Real tokens trained on.
    pub tokens: u64,
    /// Wall seconds of training (one thread).
    pub train_seconds: f64,
    /// Wall seconds of the final evaluations.
    pub eval_seconds: f64,
    /// Held-out measurements during training.
    pub curve: Vec<CurvePoint>,
    /// The final held-out measurement.
    pub val: ValResult,
    /// Test-set metrics (`pope_random_accuracy`, `pope_random_f1`, `pope_random_yes_ratio`, ...,
    /// `pope_accuracy` (mean of the splits), `count_accuracy`, `audio_pope_accuracy`,
    /// `audio_pope_f1`, `audio_count_accuracy`).
    pub test: BTreeMap<String, Measured>,
    /// A linear probe of the final encoder's per-patch features (bolted-on designs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<probe::ProbeResult>,
    /// The same probe of the encoder at its seeded initialisation (what training added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_init: Option<probe::ProbeResult>,
}

/// The file a finished run writes.
pub const RESULT: &str = "result.json";
/// The file a run's settings are stored in when it starts.
pub const SETTINGS: &str = "settings.json";

/// Reads a finished run's result (None: not finished, or unreadable).
pub fn read_result(dir: &Path) -> Option<RunResult> {
    let text = std::fs::read_to_string(dir.join(RESULT)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The study's one tokenizer: read from `out/tokenizer.json`, else built and written there.
pub fn study_tokenizer(out: &Path) -> anyhow::Result<TextTokenizer> {
    let p = out.join("tokenizer.json");
    if p.is_file() {
        return Ok(TextTokenizer::from_file(&p)?);
    }
    let t = crate::train::tokenizer::synthetic_tokenizer(
        &SyntheticData::small(),
        0,
        &crate::fusion::ImageConfig::default(),
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    t.save(&p)?;
    Ok(t)
}

/// The model and data of a run.
pub fn run_model(
    spec: &StudySpec,
    key: &RunKey,
    tok: &TextTokenizer,
) -> anyhow::Result<(ModelDirConfig, SyntheticData)> {
    let d = spec
        .design(&key.design)
        .with_context(|| format!("no design {:?} in the study", key.design))?;
    let mut cfg = sized(d.design, key.width, d.audio_encoder).map_err(|e| anyhow::anyhow!(e))?;
    cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
    let mut data = SyntheticData::sized_for(&cfg.image);
    let scene = mmlab_datasets::SceneConfig::preset(&key.tier)
        .with_context(|| format!("unknown tier {:?}", key.tier))?;
    data.scene = mmlab_datasets::SceneConfig {
        width: data.scene.width,
        height: data.scene.height,
        ..scene
    };
    Ok((cfg, data))
}

/// The settings of a run (its training run fully spelled out).
pub fn run_settings(
    spec: &StudySpec,
    key: &RunKey,
    tok: &Arc<TextTokenizer>,
) -> anyhow::Result<(RunSettings, f64, BTreeMap<&'static str, usize>, usize)> {
    let (cfg, data) = run_model(spec, key, tok)?;
    let (per, total) = component_params(&cfg)?;
    let shape = step_shape(&cfg, &data, tok.clone(), spec.batch_size)?;
    let fps = train_step_flops(&per, &shape, &[]);
    let steps = ((key.budget / fps).floor() as u64).max(1);
    let base = TrainConfig::new(cfg, steps, spec.batch_size, key.lr, spec.seed);
    let train = TrainConfig {
        data: Some(data),
        warmup: (steps / 20).clamp(1, 200),
        log_every: (steps / 100).max(1),
        eval_every: (steps / spec.evals_per_run).max(1),
        ckpt_every: (steps / 4).max(1),
        eval_batches: spec.val_batches,
        eval_seed: Some(spec.val_seed),
        ..base
    };
    let design = spec
        .design(&key.design)
        .with_context(|| format!("no design {:?}", key.design))?
        .clone();
    Ok((
        RunSettings {
            key: key.clone(),
            design,
            train,
            eval: spec.eval.clone(),
            test_seed: DEFAULT_EVAL_SEED,
        },
        fps,
        per,
        total,
    ))
}

/// Trains (or resumes, or finds finished) one run into `out/runs/<id>/` and measures it.
pub fn run_one(
    spec: &StudySpec,
    key: &RunKey,
    out: &Path,
    tok: &Arc<TextTokenizer>,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<RunResult> {
    let id = key.id();
    let dir = out.join("runs").join(&id);
    let (settings, fps, per, total) = run_settings(spec, key, tok)?;
    match read_result(&dir) {
        Some(r) if r.settings == settings => return Ok(r),
        None if dir.join(RESULT).is_file() => say(&format!(
            "{id}: {} cannot be read as a run result; the run is measured (or trained) again",
            dir.join(RESULT).display()
        )),
        _ => {}
    }
    if let Some(r) = reuse_sweep_run(spec, key, &settings, out)? {
        say(&format!(
            "{id}: the same run as the sweep's; its result is reused"
        ));
        return Ok(r);
    }
    let stored = std::fs::read_to_string(dir.join(SETTINGS))
        .ok()
        .and_then(|t| serde_json::from_str::<RunSettings>(&t).ok());
    let mut resume = false;
    if non_empty(&dir) {
        if stored.as_ref() == Some(&settings) {
            resume = dir.join("checkpoint").join("state.json").is_file();
        } else {
            let why = match &stored {
                None => "no readable settings.json".to_string(),
                Some(old) => {
                    let d = crate::train::settings_diff(old, &settings);
                    format!("changed {}", d.join(", "))
                }
            };
            let runs = out.join("runs");
            let to = set_aside(&runs, &dir)?;
            say(&format!(
                "{id}: {why}; training it anew (the old run is kept at {})",
                to.display()
            ));
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Weights made with these settings and no checkpoint left: trained, only measuring is missing.
    let trained =
        dir.join("model.safetensors").is_file() && stored.as_ref() == Some(&settings) && !resume;
    if !trained {
        write_json(&dir.join(SETTINGS), &settings)?;
        say(&format!(
            "{id}: {} {} steps ({:.2e} FLOPs/step)",
            if resume { "resuming," } else { "training" },
            settings.train.steps,
            fps,
        ));
        // Resumes from the checkpoint, which is there only when the stored settings matched.
        super::run_stage(&settings.train, tok, &dir)?;
    }
    say(&format!("{id}: measuring"));
    let t0 = std::time::Instant::now();
    let log = read_log(&dir, fps)?;
    let loaded = crate::model::load_dir(&dir, &Device::Cpu)
        .with_context(|| format!("loading {}", dir.display()))?;
    let val = validation(&settings.train, &loaded)?;
    let (probe, probe_init) = if settings.design.design.is_native() {
        (None, None)
    } else {
        let image = &loaded.config.image;
        let (init, _vm) =
            crate::train::init_model(&settings.train.model, settings.train.seed, &Device::Cpu)?;
        (
            Some(probe::probe(
                &loaded.model,
                image,
                &key.tier,
                spec.val_seed,
            )?),
            Some(probe::probe(&init, image, &key.tier, spec.val_seed)?),
        )
    };
    let (_, test) = test_metrics(
        &dir,
        &dir.join("eval"),
        &dir.display().to_string(),
        loaded,
        &key.tier,
        &spec.eval,
        say,
    )?;
    let result = RunResult {
        settings,
        parameters: total,
        matmul_parameters: per.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        flops_per_step: fps,
        steps: log.steps,
        flops: log.steps as f64 * fps,
        tokens: log.tokens,
        train_seconds: log.seconds,
        eval_seconds: t0.elapsed().as_secs_f64(),
        curve: log.curve,
        val,
        test,
        probe,
        probe_init,
    };
    write_json(&dir.join(RESULT), &result)?;
    Ok(result)
}

/// A grid run whose training and measurement are exactly a finished sweep run's (the sweep's
/// chosen rate at the sweep's budget, width and tier): that run's log and result, copied into
/// the grid run's directory under the grid run's key, so it is not trained twice.
fn reuse_sweep_run(
    spec: &StudySpec,
    key: &RunKey,
    settings: &RunSettings,
    out: &Path,
) -> anyhow::Result<Option<RunResult>> {
    if key.phase != Phase::Grid {
        return Ok(None);
    }
    let twin = RunKey {
        phase: Phase::Sweep,
        ..key.clone()
    };
    if !spec.sweep_runs().contains(&twin) {
        return Ok(None);
    }
    let src = out.join("runs").join(twin.id());
    let Some(mut r) = read_result(&src) else {
        return Ok(None);
    };
    let same = r.settings.train == settings.train
        && r.settings.eval == settings.eval
        && r.settings.test_seed == settings.test_seed
        && r.settings.design == settings.design;
    if !same {
        return Ok(None);
    }
    r.settings.key = key.clone();
    let dir = out.join("runs").join(key.id());
    if non_empty(&dir) {
        set_aside(&out.join("runs"), &dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = src.join("train.jsonl");
    let bytes = std::fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
    crate::io::atomic_write(&dir.join("train.jsonl"), &bytes)?;
    write_json(&dir.join(SETTINGS), &r.settings)?;
    write_json(&dir.join(RESULT), &r)?;
    Ok(Some(r))
}

/// What a run's `train.jsonl` says.
struct RunLog {
    steps: u64,
    tokens: u64,
    seconds: f64,
    curve: Vec<CurvePoint>,
}

fn read_log(dir: &Path, fps: f64) -> anyhow::Result<RunLog> {
    let p = dir.join("train.jsonl");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut log = RunLog {
        steps: 0,
        tokens: 0,
        seconds: 0.0,
        curve: Vec::new(),
    };
    for (i, l) in text.lines().enumerate() {
        let v: crate::train::LogLine = serde_json::from_str(l)
            .with_context(|| format!("{} line {}: not a log line", p.display(), i + 1))?;
        if v.step >= log.steps {
            log.steps = v.step;
            log.tokens = v.tokens;
            log.seconds = v.seconds;
        }
        if let (Some(loss), Some(acc)) = (v.eval_loss, v.eval) {
            // A resumed run may log an eval twice at one step: keep the last.
            let flops = v.step as f64 * fps;
            log.curve.retain(|c| c.flops != flops);
            log.curve.push(CurvePoint {
                flops,
                loss,
                losses: v.eval_losses.unwrap_or_default(),
                accuracy: acc,
            });
        }
    }
    Ok(log)
}

/// The held-out sets of a run, as its training built them.
fn val_sets(
    tc: &TrainConfig,
    tok: Arc<TextTokenizer>,
) -> anyhow::Result<Vec<Vec<crate::train::data::Example>>> {
    let data = tc.data.clone().context("a study run has synthetic data")?;
    let seed = tc.eval_seed.context("a study run has a held-out seed")?;
    let f = Factory::new(
        Source::Synthetic(data),
        tc.seed,
        tc.batch_size,
        tc.model.builder(tok),
    );
    (0..tc.eval_batches)
        .map(|i| f.batch_from(seed, i).map_err(anyhow::Error::from))
        .collect()
}

fn validation(tc: &TrainConfig, loaded: &crate::model::LoadedModel) -> anyhow::Result<ValResult> {
    let tok = Arc::new(loaded.tokenizer.clone());
    let sets = val_sets(tc, tok.clone())?;
    let h = evaluate(&loaded.model, &sets, tok.specials.pad)?;
    Ok(ValResult::new(h))
}

/// POPE (three splits), counting and the audio tasks on the test set of `tier`.
/// Also returns the tier's label as the image results name it (`aligned 48x48 cell 12px`).
/// Result files go to `eval_dir`; `name` is the model's name in them.
fn test_metrics(
    dir: &Path,
    eval_dir: &Path,
    name: &str,
    loaded: crate::model::LoadedModel,
    tier: &str,
    spec: &super::EvalSpec,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<(String, BTreeMap<String, Measured>)> {
    let mut resp = crate::model::responder::ModelResponder::new(loaded, name.to_string());
    let mut m = BTreeMap::new();
    let mut label = tier.to_string();
    for (t, r) in super::test_tasks(&mut resp, dir, eval_dir, tier, spec, Some(0), say)? {
        let audio = t.starts_with("audio");
        let prefix = if audio { "audio_" } else { "" };
        if !audio {
            label = r.config.tier_label();
        }
        match &r.metrics {
            mmlab_eval::Metrics::Pope(p) => {
                let (mut acc, mut f1, mut n) = (0.0, 0.0, 0u64);
                for s in &p.splits {
                    let put = |m: &mut BTreeMap<String, Measured>, k: &str, v: f64| {
                        m.insert(
                            format!("{prefix}pope_{}_{k}", s.split),
                            Measured { value: v, n: s.n },
                        );
                    };
                    put(&mut m, "accuracy", s.accuracy.value);
                    put(&mut m, "f1", s.f1.value);
                    put(&mut m, "yes_ratio", s.yes_ratio.value);
                    acc += s.accuracy.value * s.n as f64;
                    f1 += s.f1.value;
                    n += s.n;
                }
                let k = p.splits.len().max(1) as f64;
                m.insert(
                    format!("{prefix}pope_accuracy"),
                    Measured {
                        value: acc / n.max(1) as f64,
                        n,
                    },
                );
                m.insert(format!("{prefix}pope_f1"), Measured { value: f1 / k, n });
            }
            mmlab_eval::Metrics::Count(c) => {
                m.insert(
                    format!("{prefix}count_accuracy"),
                    Measured {
                        value: c.accuracy.value,
                        n: c.n,
                    },
                );
            }
            _ => {}
        }
    }
    Ok((label, m))
}

/// Each design's learning rate: fixed in the file, the sweep's choice (`None` until the
/// design's sweep runs are all finished in `out`), or, for a design with `lr_from`, the rate of
/// the design it names.
pub fn chosen_lrs(spec: &StudySpec, out: &Path) -> BTreeMap<String, Option<f64>> {
    resolve_lrs(spec, &|d| sweep_choice(spec, out, d).map(|c| c.0))
}

/// [`chosen_lrs`] with the sweep's choice per design given by `swept`.
fn resolve_lrs(
    spec: &StudySpec,
    swept: &dyn Fn(&str) -> Option<f64>,
) -> BTreeMap<String, Option<f64>> {
    let own = |d: &DesignSpec| d.lr.or_else(|| swept(&d.name));
    spec.designs
        .iter()
        .map(|d| {
            let lr = match &d.lr_from {
                // `validate` checked that `from` names a design with a rate of its own.
                Some(from) => spec.designs.iter().find(|o| o.name == *from).and_then(own),
                None => own(d),
            };
            (d.name.clone(), lr)
        })
        .collect()
}

/// The sweep's choice for `design` and every rate's held-out image loss (`None` until all its
/// sweep runs are finished with the settings asked for now).
pub fn sweep_choice(spec: &StudySpec, out: &Path, design: &str) -> Option<(f64, Vec<(f64, f64)>)> {
    let mut tried = Vec::new();
    for k in spec.sweep_runs().iter().filter(|k| k.design == design) {
        let r = read_result(&out.join("runs").join(k.id()))?;
        if r.settings.key != *k {
            return None;
        }
        tried.push((k.lr, r.val.image_loss));
    }
    // Lowest held-out loss; a NaN loss never wins; ties go to the lower rate.
    let best = tried
        .iter()
        .filter(|(_, l)| l.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)))?
        .0;
    Some((best, tried))
}

/// `i/n`: this process runs the runs whose index in the study's list is `i` modulo `n`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shard {
    /// This shard (0-based).
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard {s:?}: expected I/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("shard {s:?}: I is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("shard {s:?}: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {s:?}: need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}

/// `--only`: run ids matching any of a comma-separated list of glob patterns
/// (`free-small-*`, `*-3e13`, `small-native-d32-1e13`).
#[derive(Clone, Debug)]
pub struct RunFilter {
    text: String,
    patterns: Vec<glob::Pattern>,
}

impl RunFilter {
    /// Whether run `id` is one the filter asks for.
    pub fn matches(&self, id: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(id))
    }
}

impl std::str::FromStr for RunFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let patterns = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| glob::Pattern::new(p).map_err(|e| format!("--only {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err("--only: give at least one pattern of run ids, e.g. 'free-small-*'".into());
        }
        Ok(RunFilter {
            text: s.to_string(),
            patterns,
        })
    }
}

/// Which of the study's runs a process runs: a shard of the list, and of those the ones an
/// `--only` filter matches (default: all).
#[derive(Clone, Debug, Default)]
pub struct Slice {
    /// `--shard I/N`.
    pub shard: Option<Shard>,
    /// `--only PATTERNS`.
    pub only: Option<RunFilter>,
}

impl From<Option<Shard>> for Slice {
    fn from(shard: Option<Shard>) -> Self {
        Slice { shard, only: None }
    }
}

/// What [`run_study`] did.
#[derive(Debug)]
pub struct StudyRun {
    /// Runs finished (now or before) of those this process was asked for.
    pub finished: usize,
    /// Runs this process was asked for.
    pub asked: usize,
    /// Why some runs could not start yet (the sweep of their design is not finished).
    pub waiting: Vec<String>,
}

/// Runs (or resumes) the study's runs of `slice` into `out`, `jobs` at a time (one thread each):
/// first the learning-rate sweep, then the grid, cheapest budgets first.
pub fn run_study(
    spec: &StudySpec,
    out: &Path,
    jobs: usize,
    slice: impl Into<Slice>,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<StudyRun> {
    let Slice { shard, only } = slice.into();
    spec.validate()?;
    std::fs::create_dir_all(out.join("runs"))
        .with_context(|| format!("creating {}", out.join("runs").display()))?;
    write_json(&out.join("study.json"), spec)?;
    let tok = Arc::new(study_tokenizer(out)?);
    let in_shard = |i: usize| shard.is_none_or(|s| i % s.count == s.index);
    let wanted = |k: &RunKey| only.as_ref().is_none_or(|f| f.matches(&k.id()));
    let sweep = spec.sweep_runs();
    if let Some(f) = &only {
        // Grid ids do not carry the rate: no need to read the sweep's results here.
        let all = spec.grid_runs(&|_| f64::NAN);
        if !sweep.iter().chain(&all).any(|k| f.matches(&k.id())) {
            bail!(
                "--only {:?} matches none of the study's runs (ids look like {} and {})",
                f.text,
                all.first().map(|k| k.id()).unwrap_or_default(),
                sweep.first().map(|k| k.id()).unwrap_or_default()
            );
        }
    }
    let sweep_mine: Vec<RunKey> = sweep
        .iter()
        .enumerate()
        .filter(|(i, k)| in_shard(*i) && wanted(k))
        .map(|(_, k)| k.clone())
        .collect();
    let mut finished = 0;
    finished += run_pool(spec, &sweep_mine, out, jobs, &tok, say)?;
    let lrs = chosen_lrs(spec, out);
    let waiting: Vec<String> = lrs
        .iter()
        .filter(|(_, l)| l.is_none())
        .map(|(d, _)| d.clone())
        .collect();
    let all = spec.grid_runs(&|d| lrs.get(&d.name).copied().flatten().unwrap_or(f64::NAN));
    let grid_mine: Vec<RunKey> = all
        .iter()
        .enumerate()
        .filter(|(i, k)| in_shard(sweep.len() + *i) && wanted(k))
        .map(|(_, k)| k.clone())
        .collect();
    let ready: Vec<RunKey> = grid_mine
        .iter()
        .filter(|k| k.lr.is_finite())
        .cloned()
        .collect();
    if !waiting.is_empty() && shard.is_none() && only.is_none() {
        // Every sweep run of these designs ran here: none gave a finite held-out loss.
        bail!(
            "the learning-rate sweep of {} gave no rate with a finite held-out loss: widen sweep.lrs (see their runs under {})",
            waiting.join(", "),
            out.join("runs").display()
        );
    }
    if !waiting.is_empty() {
        say(&format!(
            "the learning-rate sweep of {} is not finished (other shards run it, or --only left it out): their grid runs wait; run this again once the sweep is finished (a shard: once `mmlab ablate merge` has gathered it)",
            waiting.join(", ")
        ));
    }
    finished += run_pool(spec, &ready, out, jobs, &tok, say)?;
    Ok(StudyRun {
        finished,
        asked: sweep_mine.len() + grid_mine.len(),
        waiting,
    })
}

/// Runs `keys` with `jobs` workers; returns how many finished. The first error stops new runs
/// from starting and is returned once the running ones end.
fn run_pool(
    spec: &StudySpec,
    keys: &[RunKey],
    out: &Path,
    jobs: usize,
    tok: &Arc<TextTokenizer>,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<usize> {
    let done = super::work_pool(keys.len(), jobs, &|k| {
        let key = &keys[k];
        let r = run_one(spec, key, out, tok, say).with_context(|| format!("run {}", key.id()))?;
        say(&format!(
            "{}: done — held-out image loss {:.4}, test POPE acc. {:.3}, counting {:.3} ({:.0} s training)",
            key.id(),
            r.val.image_loss,
            r.test.get("pope_accuracy").map(|m| m.value).unwrap_or(f64::NAN),
            r.test.get("count_accuracy").map(|m| m.value).unwrap_or(f64::NAN),
            r.train_seconds
        ));
        Ok(())
    })?;
    Ok(done.iter().flatten().count())
}

/// Every finished run in `out/runs` that the study asks for now (settings equal), by id.
pub fn finished_runs(spec: &StudySpec, out: &Path) -> anyhow::Result<BTreeMap<String, RunResult>> {
    let tok = Arc::new(study_tokenizer(out)?);
    let lrs = chosen_lrs(spec, out);
    let mut keys = spec.sweep_runs();
    keys.extend(
        spec.grid_runs(&|d| lrs.get(&d.name).copied().flatten().unwrap_or(f64::NAN))
            .into_iter()
            .filter(|k| k.lr.is_finite()),
    );
    let mut m = BTreeMap::new();
    for k in keys {
        let dir = out.join("runs").join(k.id());
        let Some(r) = read_result(&dir) else { continue };
        let (want, ..) = run_settings(spec, &k, &tok)?;
        if r.settings == want {
            m.insert(k.id(), r);
        }
    }
    Ok(m)
}

/// Copies the finished runs of each `from` study folder (another shard's `--out`) into `out`;
/// a run finished in both with different results is refused, naming it. Returns the number of
/// runs copied.
pub fn merge(out: &Path, from: &[PathBuf]) -> anyhow::Result<usize> {
    std::fs::create_dir_all(out.join("runs"))
        .with_context(|| format!("creating {}", out.join("runs").display()))?;
    // One tokenizer for the whole study: every shard must have used the same.
    let mut copied = 0;
    for f in from {
        let t = f.join("tokenizer.json");
        let mine = out.join("tokenizer.json");
        if t.is_file() {
            if mine.is_file() {
                if std::fs::read(&t)? != std::fs::read(&mine)? {
                    bail!(
                        "{} differs from {}: the shards did not share one tokenizer",
                        t.display(),
                        mine.display()
                    );
                }
            } else {
                std::fs::copy(&t, &mine).with_context(|| format!("copying {}", t.display()))?;
            }
        }
        let runs = f.join("runs");
        let rd = std::fs::read_dir(&runs).with_context(|| format!("reading {}", runs.display()))?;
        for e in rd {
            let e = e.with_context(|| format!("reading {}", runs.display()))?;
            let src = e.path();
            let Some(r) = read_result(&src) else { continue };
            let name = e.file_name();
            let dst = out.join("runs").join(&name);
            if let Some(mine) = read_result(&dst) {
                if mine.settings != r.settings {
                    bail!(
                        "{}: finished with other settings than {}",
                        src.display(),
                        dst.display()
                    );
                }
                continue;
            }
            if non_empty(&dst) {
                set_aside(&out.join("runs"), &dst)?;
            }
            std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
            // The result last: a run is finished in `out` only once everything else is there.
            for file in [SETTINGS, "train.jsonl", RESULT] {
                let s = src.join(file);
                if s.is_file() {
                    let bytes =
                        std::fs::read(&s).with_context(|| format!("reading {}", s.display()))?;
                    crate::io::atomic_write(&dst.join(file), &bytes)?;
                }
            }
            copied += 1;
        }
    }
    Ok(copied)
}

/// A small study with an audio design that takes its image twin's rate (unit tests).
#[cfg(test)]
pub(crate) const TEST_AUDIO_SPEC: &str = r#"
name = "t"
budgets = [1e12, 3e12]
widths = [32]
tiers = ["small"]
audio_budgets = [1e12, 3e12]
[sweep]
lrs = [1e-3, 2e-3]
[[designs]]
name = "native"
design = "native"
lr = 5e-4
[[designs]]
name = "qformer"
design = "qformer"
[[designs]]
name = "qformer-audio"
design = "qformer"
audio_encoder = true
lr_from = "qformer"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_design_with_lr_from_takes_the_rate_of_the_design_it_names() {
        let spec = StudySpec::parse(TEST_AUDIO_SPEC).unwrap();
        // Before qformer's sweep is finished, its audio twin waits with it.
        let none = resolve_lrs(&spec, &|_| None);
        assert_eq!(none["qformer"], None);
        assert_eq!(none["qformer-audio"], None);
        assert_eq!(none["native"], Some(5e-4));
        // Once it is, both run at the chosen rate and the grid holds the audio runs.
        let swept = resolve_lrs(&spec, &|d| (d == "qformer").then_some(2e-3));
        assert_eq!(swept["qformer-audio"], Some(2e-3));
        let grid = spec.grid_runs(&|d| swept[&d.name].unwrap_or(f64::NAN));
        let audio: Vec<&RunKey> = grid
            .iter()
            .filter(|k| k.design == "qformer-audio")
            .collect();
        assert_eq!(audio.len(), 2);
        assert!(audio.iter().all(|k| k.lr == 2e-3));
        assert!(grid.iter().all(|k| k.lr.is_finite()), "{grid:?}");
    }
}
