//! `mmlab ablate FILE.toml`: train and evaluate several designs ("arms") under one matched
//! training budget, over several seeds, and write `results.json`, `report.md` and plots.
//!
//! Budget: every arm gets the same number of training FLOPs, all its stages counted. FLOPs
//! per step are estimated from the arm's own batches: for each component (vision encoder,
//! connector, decoder) `k · N · tokens`, with `N` its matmul parameters (the token embedding
//! is a lookup and is left out), `tokens` the patches (encoder, connector), audio frames
//! (the audio frame embedding) or real sequence tokens (decoder) of a step, and `k = 6` when the component trains, 4 when it is frozen
//! but gradients flow through it to a trainable part before it, 2 when it only runs forward.
//! Contrastive pre-training counts `6 · N` over patches (image tower) and caption tokens
//! (text tower). Each stage gets its share of the budget and as many steps as fit.
//!
//! Finished stages and evaluations are kept on disk and not redone on a second run, as long
//! as they were made with the settings the spec asks for now: each stage stores them in its
//! `stage.json`, and a stage whose settings changed, or that has none (made before mmlab
//! stored them), is set aside under `runs/<arm>-s<seed>/superseded/` and retrained with every
//! later stage of that arm and seed, and the arm is re-evaluated.

pub mod plot;
pub mod study;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::fusion::TextTokenizer;
use crate::model::presets::preset;
use crate::model::ModelDirConfig;
use crate::train::contrastive::{pretrain, ContrastiveLoss, PretrainConfig};
use crate::train::data::{Factory, Source, SyntheticData};
pub use crate::train::flops::{train_step_flops, StepShape};
use crate::train::tokenizer::synthetic_tokenizer;
use crate::train::{init_model, train, RunControl, TrainConfig};

/// An ablation file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AblationSpec {
    /// Name; results go to `results/ablations/<name>/`.
    pub name: String,
    /// Seeds every arm is run with.
    pub seeds: Vec<u64>,
    /// Training FLOPs every arm gets (all stages).
    pub train_flops: f64,
    /// Sequences (or image–caption pairs) per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Evaluation settings.
    #[serde(default)]
    pub eval: EvalSpec,
    /// The designs compared.
    pub arms: Vec<ArmSpec>,
}

fn default_batch() -> usize {
    32
}

/// What each trained model is evaluated on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Questions per task (per POPE split); `None`: all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Also evaluate the audio tasks.
    #[serde(default = "yes")]
    pub audio: bool,
}

fn yes() -> bool {
    true
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            limit: None,
            audio: true,
        }
    }
}

/// One design and its recipe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    /// Name in tables and plots.
    pub name: String,
    /// Preset.
    pub preset: String,
    /// Stages in order; each warm-starts from the one before.
    pub stages: Vec<StageSpec>,
}

/// One stage of a recipe.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// `train` (question answering), `pretrain` (contrastive encoder pre-training) or `text`
    /// (text-only decoder pre-training: scenes and sounds given as captions in words; the
    /// first `train` stage then starts from this decoder).
    #[serde(default = "train_kind")]
    pub kind: String,
    /// Share of the arm's budget.
    pub share: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Components kept frozen (train stages).
    #[serde(default)]
    pub freeze: Vec<String>,
    /// Contrastive loss (pretrain stages).
    #[serde(default)]
    pub loss: Option<ContrastiveLoss>,
}

fn train_kind() -> String {
    "train".into()
}

impl AblationSpec {
    /// Reads and checks an ablation file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let spec: Self = toml::from_str(&text)
            .with_context(|| format!("{}: invalid ablation file", path.display()))?;
        spec.validate()
            .with_context(|| format!("{}: invalid ablation file", path.display()))?;
        Ok(spec)
    }

    /// Checks names, shares, presets and stages.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "name {:?} must be non-empty letters, digits, '-' or '_'",
                self.name
            );
        }
        if self.seeds.is_empty() || self.arms.is_empty() {
            bail!("need at least one seed and one arm");
        }
        if !(self.train_flops.is_finite() && self.train_flops > 0.0) {
            bail!("train_flops must be a positive number");
        }
        if self.batch_size < 2 {
            bail!("batch_size must be at least 2");
        }
        let mut names = std::collections::BTreeSet::new();
        for a in &self.arms {
            if !names.insert(a.name.clone()) {
                bail!("two arms are called {:?}", a.name);
            }
            let Some(p) = preset(&a.preset) else {
                bail!("arm {:?}: unknown preset {:?}", a.name, a.preset);
            };
            if a.stages.is_empty() {
                bail!("arm {:?} has no stages", a.name);
            }
            let total: f64 = a.stages.iter().map(|s| s.share).sum();
            if a.stages.iter().any(|s| s.share.is_nan() || s.share <= 0.0)
                || (total - 1.0).abs() > 1e-6
            {
                bail!(
                    "arm {:?}: stage shares must be positive and sum to 1 (they sum to {total})",
                    a.name
                );
            }
            for (i, s) in a.stages.iter().enumerate() {
                if !(s.lr.is_finite() && s.lr > 0.0) {
                    bail!("arm {:?} stage {i}: lr must be positive", a.name);
                }
                match s.kind.as_str() {
                    "train" => {
                        for f in &s.freeze {
                            if !crate::train::COMPONENTS.contains(&f.as_str()) {
                                bail!("arm {:?} stage {i}: cannot freeze {f:?}", a.name);
                            }
                        }
                    }
                    "pretrain" | "text" => {
                        if s.kind == "pretrain" && p.config.model.bolt.is_none() {
                            bail!(
                                "arm {:?} stage {i}: {} has no vision encoder to pre-train",
                                a.name,
                                a.preset
                            );
                        }
                        if a.stages[..i].iter().any(|x| x.kind == "train") {
                            bail!(
                                "arm {:?}: {} stages must come before the train stages",
                                a.name,
                                s.kind
                            );
                        }
                        if a.stages[..i].iter().any(|x| x.kind == s.kind) {
                            bail!("arm {:?}: more than one {} stage", a.name, s.kind);
                        }
                    }
                    k => bail!(
                        "arm {:?} stage {i}: unknown kind {k:?} (train, pretrain or text)",
                        a.name
                    ),
                }
            }
            if a.stages.iter().all(|s| s.kind != "train") {
                bail!("arm {:?} has no train stage", a.name);
            }
        }
        Ok(())
    }
}

/// Matmul parameters per component of a fresh `cfg` model and its total parameter count
/// (see [`crate::train::flops::component_params_of`]).
pub fn component_params(
    cfg: &ModelDirConfig,
) -> anyhow::Result<(BTreeMap<&'static str, usize>, usize)> {
    let (_m, vm) = init_model(cfg, 0, &Device::Cpu)?;
    Ok(crate::train::flops::component_params_of(&vm))
}

pub(crate) fn step_shape(
    cfg: &ModelDirConfig,
    data: &SyntheticData,
    tok: Arc<TextTokenizer>,
    batch: usize,
) -> anyhow::Result<StepShape> {
    let f = Factory::new(
        Source::Synthetic(data.clone()),
        12_345,
        batch,
        cfg.builder(tok),
    );
    let steps = data.audio_every.max(1) * 2;
    let (mut p, mut t, mut fr) = (0usize, 0usize, 0usize);
    for s in 0..steps {
        for e in f.batch(s)? {
            p += e.seq.patches.len() / e.seq.patch_dim.max(1);
            t += e.seq.len();
            fr += e.seq.n_frames();
        }
    }
    Ok(StepShape {
        patches: p as f64 / steps as f64,
        tokens: t as f64 / steps as f64,
        frames: fr as f64 / steps as f64,
    })
}

/// Metrics of one trained model.
pub type RunMetrics = BTreeMap<String, f64>;

/// One stage as run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageRun {
    /// Kind.
    pub kind: String,
    /// Steps it ran.
    pub steps: u64,
    /// Estimated FLOPs per step.
    pub flops_per_step: f64,
    /// Estimated FLOPs spent.
    pub flops: f64,
    /// Wall seconds (as logged by the stage).
    pub seconds: f64,
    /// The settings the stage's weights were trained with, read back from its `stage.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<StageSettings>,
}

/// Everything that decides a stage's weights, stored in its directory as `stage.json` when
/// it starts; a rerun whose settings differ retrains that stage and every later one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageSettings {
    /// The arm's preset.
    pub preset: String,
    /// The stage as the ablation file gives it (kind, share, lr, freeze, loss).
    pub stage: StageSpec,
    /// The full training settings of a `train` or `text` stage (steps, batch, schedule, seed,
    /// data, model, freezing, warm start; stage directories named relative to the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainConfig>,
    /// The full settings of a contrastive `pretrain` stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainConfig>,
}

/// The file in a stage directory that holds its [`StageSettings`].
pub const STAGE_SETTINGS: &str = "stage.json";

/// The file in an arm's `eval` directory that names the stages and eval settings it measured.
const EVALUATED: &str = "evaluated.json";

impl StageSettings {
    /// The settings stored in `dir`: `None` when the directory has none (made before mmlab
    /// stored them); an error text when the file is unreadable.
    fn read(dir: &Path) -> Option<Result<Self, String>> {
        let p = dir.join(STAGE_SETTINGS);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(Err(format!("{}: {e}", p.display()))),
        };
        Some(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display())))
    }

    /// What changed from `old` to `self`, in the ablation file's terms where the file
    /// changed (`lr: 0.003 -> 0.001`), else in the derived settings (`train.steps: 40 -> 30`).
    fn changes_from(&self, old: &Self) -> Vec<String> {
        let all = crate::train::settings_diff(old, self);
        let spec: Vec<String> = all
            .iter()
            .filter(|d| d.starts_with("stage.") || d.starts_with("preset"))
            .map(|d| d.trim_start_matches("stage.").to_string())
            .collect();
        let mut shown = if spec.is_empty() { all } else { spec };
        if shown.len() > 4 {
            let more = shown.len() - 4;
            shown.truncate(4);
            shown.push(format!("{more} more"));
        }
        shown
    }
}

/// Whether `dir` exists and holds anything.
pub(crate) fn non_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Moves `dir` to `<run_dir>/superseded/<name>.<k>` (the first free `k`) and returns the new
/// place: work that no longer matches the spec is kept, never deleted.
pub(crate) fn set_aside(run_dir: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let aside = run_dir.join("superseded");
    std::fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stage".into());
    let mut k = 1;
    let dst = loop {
        let d = aside.join(format!("{name}.{k}"));
        if !d.exists() {
            break d;
        }
        k += 1;
    };
    std::fs::rename(dir, &dst)
        .with_context(|| format!("moving {} to {}", dir.display(), dst.display()))?;
    Ok(dst)
}

/// Writes `value` as pretty JSON to `path` atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    crate::io::atomic_write(path, serde_json::to_string_pretty(value)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// One arm and seed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SeedRun {
    /// Seed.
    pub seed: u64,
    /// Its stages.
    pub stages: Vec<StageRun>,
    /// Metrics of the final model.
    pub metrics: RunMetrics,
    /// Held-out curve: (cumulative FLOPs, held-out presence accuracy, counting accuracy).
    pub curve: Vec<(f64, f64, f64)>,
}

/// Mean and 95% interval (Student t over seeds).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Mean over seeds.
    pub mean: f64,
    /// Half-width of the 95% interval (0 with one seed).
    pub half_width: f64,
    /// Seeds.
    pub n: usize,
}

/// One arm's results.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArmResult {
    /// Arm name.
    pub name: String,
    /// Preset.
    pub preset: String,
    /// Total parameters.
    pub parameters: usize,
    /// Training FLOPs spent (mean over seeds).
    pub flops_spent: f64,
    /// Per seed.
    pub runs: Vec<SeedRun>,
    /// Per metric.
    pub summary: BTreeMap<String, Summary>,
}

/// `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AblationResults {
    /// The spec as run.
    pub spec: AblationSpec,
    /// Per arm.
    pub arms: Vec<ArmResult>,
}

/// The metrics reported, in table order, with their labels.
pub const METRICS: [(&str, &str); 9] = [
    ("pope_random_f1", "POPE random F1"),
    ("pope_popular_f1", "POPE popular F1"),
    ("pope_adversarial_f1", "POPE adversarial F1"),
    ("pope_random_accuracy", "POPE random acc."),
    ("pope_popular_accuracy", "POPE popular acc."),
    ("pope_adversarial_accuracy", "POPE adversarial acc."),
    ("count_accuracy", "counting accuracy"),
    ("audio_pope_f1", "audio-POPE F1 (mean)"),
    ("audio_count_accuracy", "audio counting accuracy"),
];

/// Two-sided 95% Student t quantile for `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    match df {
        0 => 0.0,
        d if d <= 10 => T[d - 1],
        d if d <= 30 => 2.042 + (2.228 - 2.042) * (30 - d) as f64 / 20.0,
        _ => 1.96,
    }
}

/// Mean and t-interval of `xs`.
pub fn summarize(xs: &[f64]) -> Summary {
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
    let half_width = if n < 2 {
        0.0
    } else {
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        t975(n - 1) * (var / n as f64).sqrt()
    };
    Summary {
        mean,
        half_width,
        n,
    }
}

fn evaluate(
    model_dir: &Path,
    eval_dir: &Path,
    spec: &EvalSpec,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<RunMetrics> {
    let done = eval_dir.join("metrics.json");
    if let Ok(text) = std::fs::read_to_string(&done) {
        if let Ok(m) = serde_json::from_str::<RunMetrics>(&text) {
            // Kept unless it predates a metric this build reports.
            if METRICS
                .iter()
                .filter(|(k, _)| spec.audio || !k.starts_with("audio"))
                .all(|(k, _)| m.contains_key(*k))
            {
                return Ok(m);
            }
        }
    }
    std::fs::create_dir_all(eval_dir)
        .with_context(|| format!("creating {}", eval_dir.display()))?;
    let loaded = crate::model::load_dir(model_dir, &Device::Cpu)?;
    let mut resp =
        crate::model::responder::ModelResponder::new(loaded, model_dir.display().to_string());
    let mut m = RunMetrics::new();
    for (t, r) in test_tasks(&mut resp, model_dir, eval_dir, "small", spec, None, say)? {
        let audio = t.starts_with("audio");
        match &r.metrics {
            mmlab_eval::Metrics::Pope(p) => {
                if audio {
                    let f1 = p.splits.iter().map(|s| s.f1.value).sum::<f64>()
                        / p.splits.len().max(1) as f64;
                    m.insert("audio_pope_f1".into(), f1);
                } else {
                    for s in &p.splits {
                        m.insert(format!("pope_{}_f1", s.split), s.f1.value);
                        m.insert(format!("pope_{}_accuracy", s.split), s.accuracy.value);
                    }
                }
            }
            mmlab_eval::Metrics::Count(c) => {
                let key = if audio {
                    "audio_count_accuracy"
                } else {
                    "count_accuracy"
                };
                m.insert(key.into(), c.accuracy.value);
            }
            _ => {}
        }
    }
    crate::io::atomic_write(&done, serde_json::to_string_pretty(&m)?.as_bytes())?;
    Ok(m)
}

/// POPE and counting (and, with `spec.audio`, the audio tasks) of `resp` on the test set of
/// scene tier `tier`, results written under `eval_dir`; each task with its run. `resamples`
/// sets the bootstrap (`None`: the harness default).
pub(crate) fn test_tasks(
    resp: &mut crate::model::responder::ModelResponder,
    model_dir: &Path,
    eval_dir: &Path,
    tier: &str,
    spec: &EvalSpec,
    resamples: Option<usize>,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Vec<(&'static str, mmlab_eval::TaskResult)>> {
    let mut tasks = vec!["pope", "count"];
    if spec.audio {
        tasks.extend(["audio-pope", "audio-count"]);
    }
    let mut out = Vec::new();
    for t in tasks {
        let audio = t.starts_with("audio");
        let data = crate::eval_data::test_data(tier, audio, &|e| {
            if let Some(line) = e.message() {
                say(&line);
            }
        })?;
        let mut opts = mmlab_eval::RunOptions {
            limit: spec.limit,
            results_dir: eval_dir.to_path_buf(),
            cache_dir: eval_dir.join(".cache"),
            use_cache: false,
            synonyms: Some(mmlab_eval::default_synonyms()),
            ..mmlab_eval::RunOptions::default()
        };
        if let Some(n) = resamples {
            opts.bootstrap.resamples = n;
        }
        let r = mmlab_eval::run_task(t, &data, resp, &opts)
            .with_context(|| format!("evaluating {} on {t}", model_dir.display()))?;
        out.push((t, r));
    }
    Ok(out)
}

/// Everything `run` needs to know about one arm before training.
struct ArmPlan {
    cfg: ModelDirConfig,
    data: SyntheticData,
    per: BTreeMap<&'static str, usize>,
    total: usize,
    stage_flops: Vec<f64>,
}

fn plan(spec: &AblationSpec, arm: &ArmSpec, tok: &Arc<TextTokenizer>) -> anyhow::Result<ArmPlan> {
    let p = preset(&arm.preset).with_context(|| format!("unknown preset {}", arm.preset))?;
    let mut cfg = p.config.clone();
    cfg.model.vocab_size = cfg.model.vocab_size.max(tok.vocab_size());
    let data = SyntheticData::sized_for(&cfg.image);
    let (per, total) = component_params(&cfg)?;
    let shape = step_shape(&cfg, &data, tok.clone(), spec.batch_size)?;
    let mut text_data = data.clone();
    text_data.text_only = true;
    let text_shape = step_shape(&cfg, &text_data, tok.clone(), spec.batch_size)?;
    let mut stage_flops = Vec::new();
    for s in &arm.stages {
        stage_flops.push(if s.kind == "text" {
            train_step_flops(&per, &text_shape, &[])
        } else if s.kind == "pretrain" {
            // Image tower over the patches of `batch` scenes, text tower over about 12
            // caption tokens each (both towers have the encoder's block shape).
            let enc = *per.get("encoder").unwrap_or(&0) as f64;
            let patches_per_scene =
                (cfg.image.max_height / cfg.image.patch) * (cfg.image.max_width / cfg.image.patch);
            6.0 * enc * spec.batch_size as f64 * (patches_per_scene as f64 + 12.0)
        } else {
            train_step_flops(&per, &shape, &s.freeze)
        });
    }
    Ok(ArmPlan {
        cfg,
        data,
        per,
        total,
        stage_flops,
    })
}

/// What a stage's `train.jsonl` says, read once: the last step and wall seconds, the
/// tokens seen by then, and the held-out evals as (tokens, presence, count).
#[derive(Default)]
struct StageLog {
    steps: Option<u64>,
    seconds: f64,
    tokens: u64,
    evals: Vec<(u64, f64, f64)>,
}

impl StageLog {
    /// Reads `dir/train.jsonl` (train and pre-train stages both write one); missing: empty.
    fn read(dir: &Path) -> Self {
        let mut log = StageLog::default();
        let Ok(text) = std::fs::read_to_string(dir.join("train.jsonl")) else {
            return log;
        };
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let step = v.get("step").and_then(|x| x.as_u64());
            if step >= log.steps {
                log.steps = step;
                log.seconds = v.get("seconds").and_then(|x| x.as_f64()).unwrap_or(0.0);
                log.tokens = v.get("tokens").and_then(|x| x.as_u64()).unwrap_or(0);
            }
            let eval = v.get("eval");
            let acc = |k: &str| eval.and_then(|e| e.get(k)).and_then(|x| x.as_f64());
            if let (Some(p), Some(c)) = (acc("presence"), acc("count")) {
                let t = v.get("tokens").and_then(|x| x.as_u64()).unwrap_or(0);
                log.evals.push((t, p, c));
            }
        }
        log
    }
}

/// Trains (or finds finished) every stage of one arm and seed, then evaluates the model.
///
/// A finished stage is kept only when the settings stored with it equal the ones the spec
/// asks for now; otherwise (or when it has none: made before mmlab stored them) it and every
/// later stage are set aside under `superseded/` and retrained, and the arm is re-evaluated.
#[allow(clippy::too_many_arguments)]
fn run_unit(
    spec: &AblationSpec,
    arm: &ArmSpec,
    plan: &ArmPlan,
    seed: u64,
    out: &Path,
    tok: &Arc<TextTokenizer>,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<SeedRun> {
    let run_dir = out
        .join("runs")
        .join(format!("{}-s{seed}", slug(&arm.name)));
    // Stage directories are named relative to the run in the stored settings, so a moved
    // results folder still matches.
    let rel =
        |p: Option<PathBuf>| p.map(|p| p.strip_prefix(&run_dir).map(PathBuf::from).unwrap_or(p));
    let mut stages = Vec::new();
    let mut all_settings = Vec::new();
    let mut prev_model: Option<PathBuf> = None;
    let mut encoder: Option<PathBuf> = None;
    let mut decoder: Option<PathBuf> = None;
    let mut curve = Vec::new();
    let mut spent = 0.0;
    let mut retraining = false;
    for (i, (s, &fps)) in arm.stages.iter().zip(&plan.stage_flops).enumerate() {
        let dir = run_dir.join(format!("stage{i}-{}", s.kind));
        let steps = ((s.share * spec.train_flops / fps).floor() as u64).max(1);
        let mut settings = StageSettings {
            preset: arm.preset.clone(),
            stage: s.clone(),
            train: None,
            pretrain: None,
        };
        // The settings this stage is trained with, and its finished marker.
        let marker = if s.kind == "pretrain" {
            settings.pretrain = Some(PretrainConfig {
                model: plan.cfg.clone(),
                data: plan.data.clone(),
                loss: s.loss.unwrap_or(ContrastiveLoss::Siglip),
                steps,
                batch_size: spec.batch_size,
                lr: s.lr,
                seed,
                eval_pairs: 128,
                modality: Default::default(),
            });
            dir.join("encoder.safetensors")
        } else if s.kind == "text" {
            let mut data = plan.data.clone();
            data.text_only = true;
            settings.train = Some(stage_config(
                spec,
                plan,
                data,
                steps,
                s,
                seed,
                i,
                None,
                Vec::new(),
                None,
            ));
            dir.join("model.safetensors")
        } else {
            let (init, parts, enc) = match &prev_model {
                Some(m) => (Some(m.clone()), Vec::new(), None),
                None => (
                    decoder.clone(),
                    if decoder.is_some() {
                        vec!["decoder".to_string()]
                    } else {
                        Vec::new()
                    },
                    encoder.clone(),
                ),
            };
            settings.train = Some(stage_config(
                spec,
                plan,
                plan.data.clone(),
                steps,
                s,
                seed,
                i,
                init,
                parts,
                enc,
            ));
            dir.join("model.safetensors")
        };
        let mut stored = settings.clone();
        if let Some(tc) = stored.train.as_mut() {
            tc.init_from = rel(tc.init_from.take());
            tc.init_encoder = rel(tc.init_encoder.take());
        }
        // Anything already in the directory is kept only if it was made with these settings
        // (and from the very stages before it).
        if non_empty(&dir) {
            let why = if retraining {
                Some("an earlier stage is retrained".to_string())
            } else {
                match StageSettings::read(&dir) {
                    None => Some(
                        "no stored settings (made before mmlab stored them), so it cannot be trusted"
                            .to_string(),
                    ),
                    Some(Err(e)) => Some(format!("unreadable settings ({e})")),
                    Some(Ok(old)) => {
                        let d = stored.changes_from(&old);
                        (!d.is_empty()).then(|| format!("changed {}", d.join(", ")))
                    }
                }
            };
            if let Some(why) = why {
                let to = set_aside(&run_dir, &dir)?;
                say(&format!(
                    "arm {} seed {seed} stage {i}: {why}; retraining stages {i}.. (the old stage is kept at {})",
                    arm.name,
                    to.display()
                ));
                retraining = true;
            }
        }
        // A stage trained now makes every later one stale.
        retraining |= !marker.is_file();
        if !marker.is_file() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_json(&dir.join(STAGE_SETTINGS), &stored)?;
        }
        if let Some(pc) = settings.pretrain.as_ref() {
            if !marker.is_file() {
                say(&format!(
                    "{} seed {seed}: stage {i} contrastive pre-training, {steps} steps",
                    arm.name
                ));
                pretrain(pc, tok, &dir, &|_, _, _| {})
                    .with_context(|| format!("{}: pre-training", dir.display()))?;
            }
            encoder = Some(dir.clone());
        } else if let Some(tc) = settings.train.as_ref() {
            if !marker.is_file() {
                say(&format!(
                    "{} seed {seed}: stage {i} {}, {steps} steps",
                    arm.name,
                    if s.kind == "text" {
                        "text-only decoder pre-training".to_string()
                    } else if s.freeze.is_empty() {
                        "training".to_string()
                    } else {
                        format!("training (frozen: {})", s.freeze.join(", "))
                    }
                ));
                run_stage(tc, tok, &dir)?;
            }
            if s.kind == "text" {
                decoder = Some(dir.clone());
            } else {
                prev_model = Some(dir.clone());
            }
        }
        // What the weights were trained with, as stored beside them.
        let trained = match StageSettings::read(&dir) {
            Some(Ok(x)) => x,
            Some(Err(e)) => bail!("{e}"),
            None => bail!("{}: {STAGE_SETTINGS} is missing", dir.display()),
        };
        all_settings.push(trained.clone());
        let log = StageLog::read(&dir);
        if s.kind == "train" {
            // Held-out curve on the FLOPs axis: this stage's FLOPs per logged token.
            let steps_done = log.steps.unwrap_or(0).max(1) as f64;
            let per_token = if log.tokens > 0 {
                fps * steps_done / log.tokens as f64
            } else {
                0.0
            };
            curve.extend(
                log.evals
                    .iter()
                    .map(|&(t, p, c)| (spent + t as f64 * per_token, p, c)),
            );
        }
        let seconds = log.seconds;
        // The steps the stage really ran.
        let steps = log.steps.unwrap_or(steps);
        stages.push(StageRun {
            kind: s.kind.clone(),
            steps,
            flops_per_step: fps,
            flops: steps as f64 * fps,
            seconds,
            settings: Some(trained),
        });
        spent += steps as f64 * fps;
    }
    let model_dir = prev_model.context("arm has no train stage")?;
    // The evaluation is kept only if it measured these very stages with these eval settings.
    let eval_dir = run_dir.join("eval");
    let identity = serde_json::json!({ "stages": all_settings, "eval": spec.eval });
    if non_empty(&eval_dir) {
        let old = std::fs::read_to_string(eval_dir.join(EVALUATED))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        // A stage trained in this run is new weights, whatever its settings.
        if retraining || old.as_ref() != Some(&identity) {
            let to = set_aside(&run_dir, &eval_dir)?;
            say(&format!(
                "arm {} seed {seed}: the evaluation is not of these stages or eval settings; re-evaluating (the old one is kept at {})",
                arm.name,
                to.display()
            ));
        }
    }
    say(&format!("{} seed {seed}: evaluating", arm.name));
    let metrics = evaluate(&model_dir, &eval_dir, &spec.eval, say)?;
    write_json(&eval_dir.join(EVALUATED), &identity)?;
    Ok(SeedRun {
        seed,
        stages,
        metrics,
        curve,
    })
}

/// Runs (or resumes) the ablation into `out`; `say` gets one line per event.
///
/// `jobs` (arm, seed) units train at the same time, each on its own thread. A unit's own ops
/// are kept to that thread ([`crate::kernels::serial`]: one shard per batch, no op split across
/// threads), so `jobs` = cores uses the machine and a unit's numbers do not depend on `jobs`.
pub fn run(
    spec: &AblationSpec,
    out: &Path,
    jobs: usize,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<AblationResults> {
    spec.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::io::atomic_write(
        &out.join("spec.json"),
        serde_json::to_string_pretty(spec)?.as_bytes(),
    )?;
    // One tokenizer for every arm and seed, so text handling is not a difference.
    let tok_path = out.join("tokenizer.json");
    let tok = if tok_path.is_file() {
        TextTokenizer::from_file(&tok_path)?
    } else {
        let t = synthetic_tokenizer(
            &SyntheticData::small(),
            0,
            &crate::fusion::ImageConfig::default(),
        )?;
        t.save(&tok_path)?;
        t
    };
    let tok = Arc::new(tok);
    let plans: Vec<ArmPlan> = spec
        .arms
        .iter()
        .map(|a| plan(spec, a, &tok))
        .collect::<anyhow::Result<_>>()?;
    // Every (arm, seed) is one unit of work; `jobs` workers take them in order.
    let units: Vec<(usize, u64)> = (0..spec.arms.len())
        .flat_map(|a| spec.seeds.iter().map(move |&s| (a, s)))
        .collect();
    let done = work_pool(units.len(), jobs, &|k| {
        let (ai, seed) = units[k];
        run_unit(spec, &spec.arms[ai], &plans[ai], seed, out, &tok, say)
    })?;
    let mut done: BTreeMap<(usize, u64), SeedRun> = units
        .iter()
        .zip(done)
        .filter_map(|(u, r)| r.map(|r| (*u, r)))
        .collect();
    let mut arms = Vec::new();
    for (ai, arm) in spec.arms.iter().enumerate() {
        let plan = &plans[ai];
        let runs: Vec<SeedRun> = spec
            .seeds
            .iter()
            .map(|seed| {
                done.remove(&(ai, *seed))
                    .context("a unit of the ablation did not finish")
            })
            .collect::<anyhow::Result<_>>()?;
        let mut summary = BTreeMap::new();
        for (k, _) in METRICS {
            let xs: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.metrics.get(k).copied())
                .collect();
            if !xs.is_empty() {
                summary.insert(k.to_string(), summarize(&xs));
            }
        }
        let flops_spent = runs
            .iter()
            .map(|r| r.stages.iter().map(|s| s.flops).sum::<f64>())
            .sum::<f64>()
            / runs.len().max(1) as f64;
        let _ = &plan.per;
        arms.push(ArmResult {
            name: arm.name.clone(),
            preset: arm.preset.clone(),
            parameters: plan.total,
            flops_spent,
            runs,
            summary,
        });
    }
    let results = AblationResults {
        spec: spec.clone(),
        arms,
    };
    crate::io::atomic_write(
        &out.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    plot::write_plots(&results, out)?;
    crate::io::atomic_write(&out.join("report.md"), report(&results).as_bytes())?;
    Ok(results)
}

/// Runs `work(0..n)` on `jobs` threads, each item with its ops kept to its own thread
/// ([`crate::kernels::serial`]), items taken in order. The first error stops new items from
/// starting and is returned once the running ones end; otherwise each item's result, in order.
pub(crate) fn work_pool<T: Send>(
    n: usize,
    jobs: usize,
    work: &(dyn Fn(usize) -> anyhow::Result<T> + Sync),
) -> anyhow::Result<Vec<Option<T>>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: std::sync::Mutex<Vec<Option<T>>> =
        std::sync::Mutex::new((0..n).map(|_| None).collect());
    let failed = std::sync::Mutex::new(Vec::<anyhow::Error>::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, n.max(1)) {
            scope.spawn(|| loop {
                if failed.lock().map(|f| !f.is_empty()).unwrap_or(true) {
                    break;
                }
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if k >= n {
                    break;
                }
                match crate::kernels::serial(|| work(k)) {
                    Ok(r) => {
                        if let Ok(mut d) = done.lock() {
                            d[k] = Some(r);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failed.lock() {
                            f.push(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a worker panicked"))?
        .into_iter()
        .next()
    {
        return Err(e);
    }
    done.into_inner()
        .map_err(|_| anyhow::anyhow!("a worker panicked"))
}

/// Held-out eval batches of a stage (the CLI's default is [`crate::train::EVAL_BATCHES`]):
/// finished stages store the settings they were trained with, and a different value would
/// make every stored stage count as changed and be retrained.
const STAGE_EVAL_BATCHES: u64 = 4;

/// The training settings of one stage.
#[allow(clippy::too_many_arguments)]
fn stage_config(
    spec: &AblationSpec,
    plan: &ArmPlan,
    data: SyntheticData,
    steps: u64,
    s: &StageSpec,
    seed: u64,
    i: usize,
    init_from: Option<PathBuf>,
    init_parts: Vec<String>,
    init_encoder: Option<PathBuf>,
) -> TrainConfig {
    let base = TrainConfig::new(
        plan.cfg.clone(),
        steps,
        spec.batch_size,
        s.lr,
        seed.wrapping_mul(1000).wrapping_add(i as u64),
    );
    TrainConfig {
        data: Some(data),
        warmup: (steps / 20).clamp(1, 200),
        eval_every: (steps / 8).max(1),
        eval_batches: STAGE_EVAL_BATCHES,
        freeze: s.freeze.clone(),
        init_from,
        init_parts,
        init_encoder,
        ..base
    }
}

/// Trains one stage into `dir`, resuming an interrupted one, and drops its checkpoint.
pub(crate) fn run_stage(tc: &TrainConfig, tok: &TextTokenizer, dir: &Path) -> anyhow::Result<()> {
    let quiet = |_: u64, _: u64, _: f64, _: f64| {};
    let resume = dir.join("checkpoint").join("state.json").is_file();
    train(
        tc,
        tok.clone(),
        dir,
        &RunControl {
            resume,
            progress: &quiet,
            stop_after: None,
        },
    )
    .with_context(|| format!("{}: training", dir.display()))?;
    let _ = std::fs::remove_dir_all(dir.join("checkpoint"));
    Ok(())
}

/// A file-name-safe version of an arm name.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// `report.md`.
pub fn report(r: &AblationResults) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Ablation `{}`\n", r.spec.name);
    let _ = writeln!(
        s,
        "Every arm: {:.3e} training FLOPs (all stages), batch {}, seeds {:?}. Cells: mean ± 95% interval over seeds (Student t; ± 0 with one seed).\n",
        r.spec.train_flops, r.spec.batch_size, r.spec.seeds
    );
    let _ = write!(s, "| arm | params |");
    for (_, label) in METRICS {
        let _ = write!(s, " {label} |");
    }
    let _ = writeln!(s);
    let _ = write!(s, "|---|---|");
    for _ in METRICS {
        let _ = write!(s, "---|");
    }
    let _ = writeln!(s);
    for a in &r.arms {
        let _ = write!(s, "| {} (`{}`) | {} |", a.name, a.preset, a.parameters);
        for (k, _) in METRICS {
            match a.summary.get(k) {
                Some(x) => {
                    let best = r
                        .arms
                        .iter()
                        .filter_map(|b| b.summary.get(k).map(|y| y.mean))
                        .fold(f64::MIN, f64::max);
                    if (x.mean - best).abs() < 1e-12 {
                        let _ = write!(s, " **{:.3} ± {:.3}** |", x.mean, x.half_width);
                    } else {
                        let _ = write!(s, " {:.3} ± {:.3} |", x.mean, x.half_width);
                    }
                }
                None => {
                    let _ = write!(s, " — |");
                }
            }
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n## Budgets actually spent\n");
    let _ = writeln!(
        s,
        "| arm | seed | stage | steps | FLOPs/step | FLOPs | seconds |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for a in &r.arms {
        for run in &a.runs {
            for (i, st) in run.stages.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {i} {} | {} | {:.3e} | {:.3e} | {:.0} |",
                    a.name, run.seed, st.kind, st.steps, st.flops_per_step, st.flops, st.seconds
                );
            }
        }
    }
    let _ = writeln!(s, "\n## Plots\n");
    let _ = writeln!(
        s,
        "![held-out presence accuracy vs training FLOPs](curve_presence.svg)\n"
    );
    let _ = writeln!(
        s,
        "![held-out counting accuracy vs training FLOPs](curve_count.svg)\n"
    );
    let _ = writeln!(s, "![metrics per task](bars.svg)\n");
    let _ = writeln!(
        s,
        "PNG copies sit next to the SVGs. FLOPs are estimates (see `mmlab ablate --help`)."
    );
    s
}
