//! What the dashboard shows, read from a workspace folder: model directories and presets,
//! eval result files, training logs and ablation results. Files that cannot be read are
//! listed as problems (with their path and what was wrong) rather than stopping the TUI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mmlab_eval::harness::{load_result, Metrics, TaskResult};

use crate::ablate::AblationResults;
use crate::model::io::read_config;
use crate::model::presets::{embedded, parameter_count, preset, presets, EMBEDDED};
use crate::model::Design;

/// What [`ModelEntry::weights`] holds for a shipped model compiled into the binary.
pub const EMBEDDED_WEIGHTS: &str = "(embedded)";

/// One model: a preset and/or a directory with weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    /// Name results are filed under (preset name, or the directory's name).
    pub name: String,
    /// Its design.
    pub design: Design,
    /// Total parameters.
    pub params: usize,
    /// Where the weights are ([`EMBEDDED_WEIGHTS`]: compiled into the binary; `None`: a preset
    /// not trained here).
    pub weights: Option<PathBuf>,
    /// What to pass as `--model` to load it (preset name, or the directory).
    pub spec: String,
    /// The training curve over every stage's log (empty: no log), re-read by
    /// [`Workspace::refresh_curves`] when a log grows.
    pub curve: Vec<CurvePoint>,
    /// The model directory the logs were read from, when there is one.
    pub dir: Option<PathBuf>,
    /// Size and modification time of each log, as last read.
    pub logs_seen: Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
    /// Steps the run in progress will take, from its checkpoint's settings (`None`: finished,
    /// or no checkpoint).
    pub planned_steps: Option<u64>,
    /// The scenes it was trained on (`aligned 48x48 cell 12px`), from the settings `mmlab
    /// train` writes at a run's start (`run.json`); `None` when the directory has none.
    pub trained_on: Option<String>,
}

impl ModelEntry {
    /// Training tokens over every stage (`None`: no log).
    pub fn tokens(&self) -> Option<u64> {
        self.curve.last().map(|p| p.tokens as u64)
    }

    /// Whether every line of every training log carries the FLOPs the training counted
    /// (`mmlab train` logs them; logs made before it did, or stages of such runs, do not).
    pub fn counted(&self) -> bool {
        !self.curve.is_empty() && self.curve.iter().all(|p| p.flops.is_some())
    }

    /// Training FLOPs: what the training counted, when its logs say (see
    /// [`ModelEntry::counted`]); otherwise estimated as `6 · parameters · tokens`.
    pub fn flops(&self) -> Option<f64> {
        let last = self.curve.last()?;
        Some(self.flops_of(last))
    }

    /// FLOPs at a point of the curve, by the same rule as [`ModelEntry::flops`] (one rule for
    /// the whole dashboard, and one for all of a model's points).
    pub fn flops_of(&self, p: &CurvePoint) -> f64 {
        match p.flops.filter(|_| self.counted()) {
            Some(f) => f,
            None => self.flops_at(p.tokens),
        }
    }

    /// The largest learning rate its logs record (the peak of the schedule, over all stages).
    pub fn peak_lr(&self) -> Option<f64> {
        self.curve
            .iter()
            .filter_map(|p| p.lr)
            .filter(|l| l.is_finite())
            .reduce(f64::max)
    }

    /// The estimate `6 · parameters · tokens`, for logs that do not count FLOPs.
    pub fn flops_at(&self, tokens: f64) -> f64 {
        6.0 * self.params as f64 * tokens
    }

    /// The first point whose training loss (or gradient norm) is not a finite number.
    pub fn diverged_at(&self) -> Option<&CurvePoint> {
        self.curve.iter().find(|p| p.diverged)
    }

    /// Steps per second over the last logged stretch (the last two loss lines of one stage).
    pub fn step_rate(&self) -> Option<f64> {
        let mut it = self
            .curve
            .iter()
            .rev()
            .filter(|p| p.loss.is_some() || p.diverged);
        let (b, a) = (it.next()?, it.next()?);
        let (ds, dt) = (b.step as f64 - a.step as f64, b.seconds - a.seconds);
        (ds > 0.0 && dt > 0.0).then(|| ds / dt)
    }

    /// Seconds left in the run in progress, at the current step rate.
    pub fn eta_seconds(&self) -> Option<f64> {
        let plan = self.planned_steps?;
        let step = self.curve.last()?.step;
        Some(plan.saturating_sub(step) as f64 / self.step_rate()?)
    }

    /// Whether the design is the native (early-fusion) one.
    pub fn native(&self) -> bool {
        self.design == Design::Native
    }
}

/// The latest result of one model on one task.
#[derive(Clone, Debug)]
pub struct ResultEntry {
    /// The result file.
    pub path: PathBuf,
    /// Its contents.
    pub result: TaskResult,
}

/// A column of the results table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Column {
    /// Header.
    pub header: &'static str,
    /// Long name (bar chart title).
    pub title: &'static str,
    /// The metric keys averaged for this column (see [`metric_values`]).
    pub keys: &'static [&'static str],
    /// How to rank: higher is better, lower is better, or closest to 0.5.
    pub best: Best,
}

/// Which value of a column is best.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Best {
    /// The largest.
    High,
    /// The smallest.
    Low,
    /// The closest to one half (POPE's yes-ratio).
    Half,
}

impl Best {
    /// A score where larger is better.
    pub fn score(self, v: f64) -> f64 {
        match self {
            Best::High => v,
            Best::Low => -v,
            Best::Half => -(v - 0.5).abs(),
        }
    }
}

/// The results table's columns.
pub const COLUMNS: [Column; 8] = [
    Column {
        header: "F1 rnd",
        title: "POPE random F1",
        keys: &["pope-random:f1"],
        best: Best::High,
    },
    Column {
        header: "F1 pop",
        title: "POPE popular F1",
        keys: &["pope-popular:f1"],
        best: Best::High,
    },
    Column {
        header: "F1 adv",
        title: "POPE adversarial F1",
        keys: &["pope-adversarial:f1"],
        best: Best::High,
    },
    Column {
        header: "yes",
        title: "POPE yes-ratio (mean of splits; 0.5 is unbiased)",
        keys: &[
            "pope-random:yes",
            "pope-popular:yes",
            "pope-adversarial:yes",
        ],
        best: Best::Half,
    },
    Column {
        header: "count",
        title: "counting accuracy",
        keys: &["count:acc"],
        best: Best::High,
    },
    Column {
        header: "MAE",
        title: "counting mean absolute error",
        keys: &["count:mae"],
        best: Best::Low,
    },
    Column {
        header: "aPOPE",
        title: "audio-POPE F1 (mean of splits)",
        // `audio-pope:f1`: the mean of the splits, as shipped results give it.
        keys: &[
            "audio-pope-random:f1",
            "audio-pope-popular:f1",
            "audio-pope-adversarial:f1",
            "audio-pope:f1",
        ],
        best: Best::High,
    },
    Column {
        header: "aCount",
        title: "audio counting accuracy",
        keys: &["audio-count:acc"],
        best: Best::High,
    },
];

/// The metric values of a result, keyed `<split task>:<metric>` (`pope-random:f1`, `count:mae`).
pub fn metric_values(r: &TaskResult) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    match &r.metrics {
        Metrics::Pope(p) => {
            for s in &p.splits {
                m.insert(format!("{}:f1", s.task), s.f1.value);
                m.insert(format!("{}:acc", s.task), s.accuracy.value);
                m.insert(format!("{}:yes", s.task), s.yes_ratio.value);
            }
        }
        Metrics::Count(c) => {
            m.insert(format!("{}:acc", c.task), c.accuracy.value);
            m.insert(format!("{}:mae", c.task), c.mae.value);
        }
        Metrics::Chair(_) => {}
        Metrics::Compositional(c) => {
            for s in &c.splits {
                m.insert(format!("{}:acc", s.task), s.accuracy.value);
            }
        }
    }
    m
}

/// One row of the results table: a model on one data set and run scope, with its newest value
/// per metric.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    /// Model name.
    pub model: String,
    /// Its design (`?` when the model is not one of ours, e.g. a predictions file).
    pub design: String,
    /// The scene tier the results were measured on (`aligned 48x48 cell 12px`).
    pub tier: String,
    /// How much of the data and how (`all`, `limit 100 (partial)`, `score mode`, `data 1a2b3c4d`).
    pub run: String,
    /// Metric key to value.
    pub values: BTreeMap<String, f64>,
    /// Measured results shipped with the model (`eval-metrics.json`), not a result of the user's.
    pub shipped: bool,
}

impl ResultRow {
    /// The value of a column: the mean of its keys that are present (`None`: none is).
    pub fn value(&self, c: &Column) -> Option<f64> {
        let v: Vec<f64> = c
            .keys
            .iter()
            .filter_map(|k| self.values.get(*k).copied())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// 0 native, 1 bolted-on, 2 other: the table groups rows in this order.
    pub fn group(&self) -> u8 {
        match self.design.trim_end_matches('?') {
            "native" => 0,
            "" => 2,
            _ => 1,
        }
    }
}

/// The measured results a model directory ships with (`models/<name>/eval-metrics.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct ShippedResult {
    /// The model (the directory's name).
    pub model: String,
    /// The file.
    pub path: PathBuf,
    /// The data they were measured on (the file's `data`).
    pub data: String,
    /// The scene tier they were measured on (the file's `tier`, as results label it).
    pub tier: String,
    /// Metric key to value, keyed as [`metric_values`] keys them.
    pub values: BTreeMap<String, f64>,
}

/// The [`metric_values`] key of an `eval-metrics.json` key (`pope_random_f1` ->
/// `pope-random:f1`, `count_accuracy` -> `count:acc`); `None` for keys with no column.
fn shipped_key(k: &str) -> Option<String> {
    let (task, metric) = [
        ("_yes_ratio", "yes"),
        ("_accuracy", "acc"),
        ("_f1", "f1"),
        ("_mae", "mae"),
    ]
    .iter()
    .find_map(|(suffix, m)| k.strip_suffix(suffix).map(|t| (t, *m)))?;
    Some(format!("{}:{metric}", task.replace('_', "-")))
}

/// Reads a shipped `eval-metrics.json`: numbers per metric, and the `data` and `tier` they
/// were measured on (both required). Errors name the file.
pub fn read_shipped(model: &str, path: &Path) -> Result<ShippedResult, String> {
    let err = |e: String| format!("{}: {e}", path.display());
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| err("not a JSON object".into()))?;
    let text = |k: &str| {
        obj.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| err(format!("no \"{k}\" (what the results were measured on)")))
    };
    let values: BTreeMap<String, f64> = obj
        .iter()
        .filter_map(|(k, x)| Some((shipped_key(k)?, x.as_f64()?)))
        .collect();
    if values.is_empty() {
        return Err(err("no metric the results table shows".into()));
    }
    Ok(ShippedResult {
        model: model.to_string(),
        path: path.to_path_buf(),
        data: text("data")?,
        tier: text("tier")?,
        values,
    })
}

/// One point of a training log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurvePoint {
    /// Training tokens so far (over every stage).
    pub tokens: f64,
    /// Training FLOPs so far as the training counted them (over every stage), on logs that
    /// carry them.
    pub flops: Option<f64>,
    /// The learning rate, on training lines.
    pub lr: Option<f64>,
    /// Training loss, on loss lines.
    pub loss: Option<f64>,
    /// Held-out presence accuracy, on eval lines.
    pub presence: Option<f64>,
    /// Held-out counting accuracy, on eval lines.
    pub count: Option<f64>,
    /// Held-out answer loss (teacher-forced NLL), on eval lines that log it.
    pub eval_loss: Option<f64>,
    /// The stage's step.
    pub step: u64,
    /// The stage's wall seconds so far.
    pub seconds: f64,
    /// A training line whose loss or gradient norm is not a finite number (JSON writes NaN
    /// and infinities as `null`), or an eval line whose held-out loss is not.
    pub diverged: bool,
}

/// One ablation's results.
#[derive(Clone, Debug)]
pub struct AblationEntry {
    /// `results.json`.
    pub path: PathBuf,
    /// Its contents.
    pub results: AblationResults,
}

/// One scaling study's analysis (`mmlab ablate` with a study file).
#[derive(Clone, Debug)]
pub struct StudyEntry {
    /// `analysis.json`.
    pub path: PathBuf,
    /// The study file as run (`study.json`).
    pub spec: crate::ablate::study::StudySpec,
    /// Its analysis.
    pub analysis: crate::ablate::study::report::Analysis,
    /// Its finished runs, settings beside results (`runs/*/result.json`), in id order.
    pub runs: Vec<StudyRun>,
}

/// One finished run of a study: what it was (design, size, budget, LR, tier) and what it
/// measured; the rows of the dashboard's hparams table.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct StudyRun {
    /// What the run was.
    pub settings: StudyRunSettings,
    /// Parameters of the model.
    pub parameters: usize,
    /// Training FLOPs spent.
    pub flops: f64,
    /// Wall seconds of training.
    pub train_seconds: f64,
    /// The final held-out measurement (validation seed).
    pub val: StudyRunVal,
    /// Test-seed metrics by name (`pope_accuracy`, `count_accuracy`, ...).
    pub test: BTreeMap<String, StudyMeasured>,
}

/// The part of a run's settings the table shows.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct StudyRunSettings {
    /// Its place in the study.
    pub key: crate::ablate::study::RunKey,
}

/// The held-out loss of a run.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct StudyRunVal {
    /// Held-out answer loss on the image tasks.
    pub image_loss: f64,
}

/// A test metric's value.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct StudyMeasured {
    /// The value.
    pub value: f64,
}

impl StudyRun {
    /// A test metric, when measured.
    pub fn test(&self, name: &str) -> Option<f64> {
        self.test.get(name).map(|m| m.value)
    }
}

/// Everything found in a workspace.
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    /// The folder scanned.
    pub root: PathBuf,
    /// Models: presets first (in preset order), then other model directories by name.
    pub models: Vec<ModelEntry>,
    /// Latest result per (model, task).
    pub results: Vec<ResultEntry>,
    /// Measured results shipped in model directories under `root/models`.
    pub shipped: Vec<ShippedResult>,
    /// Ablations by name.
    pub ablations: Vec<AblationEntry>,
    /// Scaling studies by name.
    pub studies: Vec<StudyEntry>,
    /// Files that could not be read, with why.
    pub problems: Vec<String>,
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The training logs of a model directory in stage order: `train-stage<N>.jsonl` by N, then
/// `train.jsonl` (the last stage).
pub fn train_logs(dir: &Path) -> Vec<PathBuf> {
    let mut staged: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| {
                    let name = p.file_name()?.to_str()?.to_string();
                    let n = name
                        .strip_prefix("train-stage")?
                        .strip_suffix(".jsonl")?
                        .parse()
                        .ok()?;
                    Some((n, p))
                })
                .collect()
        })
        .unwrap_or_default();
    staged.sort();
    let mut logs: Vec<PathBuf> = staged.into_iter().map(|(_, p)| p).collect();
    let last = dir.join("train.jsonl");
    if last.is_file() {
        logs.push(last);
    }
    logs
}

/// Reads training logs into one curve; tokens continue across stages.
pub fn read_curve(logs: &[PathBuf]) -> Result<Vec<CurvePoint>, String> {
    let mut out = Vec::new();
    let (mut offset, mut flops_offset) = (0.0, 0.0);
    for log in logs {
        let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let (mut stage_max, mut stage_flops): (f64, f64) = (0.0, 0.0);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: {e}", log.display(), i + 1))?;
            let Some(tokens) = v.get("tokens").and_then(|t| t.as_f64()) else {
                continue;
            };
            stage_max = stage_max.max(tokens);
            let eval = v.get("eval");
            let get = |k: &str| eval.and_then(|e| e.get(k)).and_then(|x| x.as_f64());
            let num = |k: &str| v.get(k).and_then(|x| x.as_f64());
            // A key that is there but holds no number: NaN or an infinity, written as null.
            let not_finite = |k: &str| {
                v.get(k)
                    .is_some_and(|x| x.as_f64().is_none_or(|f| !f.is_finite()))
            };
            let training = v.get("lr").is_some();
            let flops = num("flops").filter(|f| f.is_finite());
            stage_flops = stage_flops.max(flops.unwrap_or(0.0));
            out.push(CurvePoint {
                tokens: offset + tokens,
                flops: flops.map(|f| flops_offset + f),
                lr: num("lr"),
                loss: num("loss").filter(|l| l.is_finite()),
                presence: get("presence"),
                count: get("count"),
                eval_loss: num("eval_loss").filter(|l| l.is_finite()),
                step: v.get("step").and_then(|x| x.as_u64()).unwrap_or(0),
                seconds: num("seconds").unwrap_or(0.0),
                diverged: (training && (not_finite("loss") || not_finite("grad_norm")))
                    || not_finite("eval_loss"),
            });
        }
        offset += stage_max;
        flops_offset += stage_flops;
    }
    Ok(out)
}

/// The settings a training run wrote when it started (`run.json`).
fn read_run(dir: &Path) -> Result<crate::train::TrainConfig, String> {
    let p = dir.join("run.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

/// Size and modification time of each log.
fn log_signatures(logs: &[PathBuf]) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    logs.iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok();
            let len = m.as_ref().map_or(0, |m| m.len());
            (p.clone(), len, m.and_then(|m| m.modified().ok()))
        })
        .collect()
}

/// Whether `dir` holds a model, finished (`config.json`) or in training (`run.json` and a log).
fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        || (dir.join("run.json").is_file() && dir.join("train.jsonl").is_file())
}

/// The model directories under `root/models` and `root/runs`, finished or in training.
fn run_dirs(root: &Path) -> Vec<PathBuf> {
    ["models", "runs"]
        .iter()
        .flat_map(|f| subdirs(&root.join(f)))
        .filter(|d| is_model_dir(d))
        .collect()
}

/// The entry of a model directory, named after it and loaded by its path.
fn dir_entry(dir: &Path, problems: &mut Vec<String>) -> Option<ModelEntry> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    model_entry(name, dir.display().to_string(), dir, problems)
}

fn model_entry(
    name: String,
    spec: String,
    dir: &Path,
    problems: &mut Vec<String>,
) -> Option<ModelEntry> {
    let finished = dir.join("config.json").is_file();
    let run = read_run(dir);
    let cfg = if finished {
        read_config(dir).map_err(|e| mmlab_eval::error::error_chain(&e))
    } else {
        run.clone().map(|r| r.model)
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            problems.push(e);
            return None;
        }
    };
    let trained_on = run.as_ref().ok().and_then(|r| r.data.as_ref()).map(|d| {
        let sc = &d.scene;
        let cell = (sc.tier == mmlab_datasets::scene::Tier::Aligned).then_some(sc.cell);
        mmlab_eval::identity::SceneInfo {
            tier: sc.tier.name().to_string(),
            width: Some(sc.width),
            height: Some(sc.height),
            cell,
        }
        .to_string()
    });
    let logs = train_logs(dir);
    let curve = read_curve(&logs).unwrap_or_else(|e| {
        problems.push(e);
        Vec::new()
    });
    Some(ModelEntry {
        dir: Some(dir.to_path_buf()),
        logs_seen: log_signatures(&logs),
        planned_steps: if finished {
            None
        } else {
            run.ok().map(|r| r.steps)
        },
        name,
        design: cfg.design,
        params: parameter_count(&cfg.model),
        weights: dir
            .join("model.safetensors")
            .is_file()
            .then(|| dir.to_path_buf()),
        spec,
        curve,
        trained_on,
    })
}

impl Workspace {
    /// Re-reads the training logs of every model whose logs changed (grew, appeared, or were
    /// touched) since they were last read, and whether its run finished, and adds the model
    /// directories that appeared under `models/` and `runs/` (runs started since); returns the
    /// indices of the models that changed or are new. Cheap when nothing changed: one `stat`
    /// per log and one listing of each folder.
    pub fn refresh_curves(&mut self) -> Vec<usize> {
        let mut changed = Vec::new();
        for (i, m) in self.models.iter_mut().enumerate() {
            let Some(dir) = m.dir.clone() else { continue };
            let logs = train_logs(&dir);
            let sig = log_signatures(&logs);
            if sig == m.logs_seen {
                continue;
            }
            match read_curve(&logs) {
                Ok(c) => m.curve = c,
                // Half a line being written: read again at the next change.
                Err(_) => continue,
            }
            m.logs_seen = sig;
            if dir.join("config.json").is_file() {
                m.planned_steps = None;
                if dir.join("model.safetensors").is_file() {
                    m.weights = Some(dir.clone());
                }
            }
            changed.push(i);
        }
        // Runs started since the scan: a new model directory under `models/` or `runs/`.
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let known: Vec<PathBuf> = self
            .models
            .iter()
            .filter_map(|m| m.dir.as_deref())
            .map(canon)
            .collect();
        for dir in run_dirs(&self.root) {
            if known.contains(&canon(&dir)) {
                continue;
            }
            // Half-written settings: try again at the next look.
            let Some(e) = dir_entry(&dir, &mut Vec::new()) else {
                continue;
            };
            // An untrained preset row of that name is replaced in place (indices stay).
            match self
                .models
                .iter()
                .position(|m| m.name == e.name && m.dir.is_none() && m.weights.is_none())
            {
                Some(i) => {
                    self.models[i] = e;
                    changed.push(i);
                }
                None => {
                    self.models.push(e);
                    changed.push(self.models.len() - 1);
                }
            }
        }
        changed
    }

    /// Scans `root` (paths shown are relative to it): presets (with their shipped weights), model directories under
    /// `root/models` and `root/runs`, results under `root/results`, and ablations under
    /// `root/results/ablations` and `root/ablations/results`.
    pub fn scan(root: &Path) -> Self {
        Self::scan_with(root, true)
    }

    /// [`Workspace::scan`], optionally without the presets (tests use fixed fixtures only).
    pub fn scan_with(root: &Path, with_presets: bool) -> Self {
        let mut ws = Workspace {
            root: root.to_path_buf(),
            ..Workspace::default()
        };
        let mut seen: Vec<PathBuf> = Vec::new();
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if with_presets {
            // One row per preset: its directory under `root/models` (with the training logs)
            // when there is one, else the copy compiled into the binary, else untrained.
            for p in presets() {
                let dir = root.join("models").join(p.name);
                let name = p.name.to_string();
                if dir.join("config.json").is_file() {
                    seen.push(canon(&dir));
                    let spec = dir.display().to_string();
                    if let Some(e) = model_entry(name, spec, &dir, &mut ws.problems) {
                        ws.models.push(e);
                    }
                    continue;
                }
                let shipped = embedded(p.name);
                ws.models.push(ModelEntry {
                    name: name.clone(),
                    design: p.config.design,
                    params: parameter_count(&p.config.model),
                    weights: shipped.map(|_| PathBuf::from(EMBEDDED_WEIGHTS)),
                    spec: name,
                    curve: Vec::new(),
                    dir: None,
                    logs_seen: Vec::new(),
                    planned_steps: None,
                    trained_on: None,
                });
            }
            // Shipped models that are no preset (a study's frontier models): the compiled-in
            // copy, unless `root/models` has the directory (its row comes with the others).
            for m in EMBEDDED.iter().filter(|m| preset(m.name).is_none()) {
                if root
                    .join("models")
                    .join(m.name)
                    .join("config.json")
                    .is_file()
                {
                    continue;
                }
                match serde_json::from_slice::<crate::model::ModelDirConfig>(m.config) {
                    Ok(c) => ws.models.push(ModelEntry {
                        name: m.name.to_string(),
                        design: c.design,
                        params: parameter_count(&c.model),
                        weights: Some(PathBuf::from(EMBEDDED_WEIGHTS)),
                        spec: m.name.to_string(),
                        curve: Vec::new(),
                        dir: None,
                        logs_seen: Vec::new(),
                        planned_steps: None,
                        trained_on: None,
                    }),
                    Err(e) => ws
                        .problems
                        .push(format!("{} (compiled in): config.json: {e}", m.name)),
                }
            }
        }
        for dir in run_dirs(root) {
            if seen.contains(&canon(&dir)) {
                continue;
            }
            if let Some(e) = dir_entry(&dir, &mut ws.problems) {
                ws.models
                    .retain(|m| m.name != e.name || m.weights.is_some());
                ws.models.push(e);
            }
        }
        ws.scan_results(&root.join("results"));
        for dir in subdirs(&root.join("models")) {
            let path = dir.join("eval-metrics.json");
            let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if path.is_file() {
                match read_shipped(&name, &path) {
                    Ok(s) => ws.shipped.push(s),
                    Err(e) => ws.problems.push(e),
                }
            }
        }
        for dir in [
            root.join("results/ablations"),
            root.join("ablations/results"),
        ] {
            for d in subdirs(&dir) {
                ws.scan_study(&d);
                let path = d.join("results.json");
                if !path.is_file() {
                    continue;
                }
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                {
                    // The same ablation under results/ and as shipped: keep the first found.
                    Ok(results) => {
                        let r: &AblationResults = &results;
                        if !ws
                            .ablations
                            .iter()
                            .any(|a| a.results.spec.name == r.spec.name)
                        {
                            ws.ablations.push(AblationEntry { path, results })
                        }
                    }
                    Err(e) => ws.problems.push(format!("{}: {e}", path.display())),
                }
            }
        }
        ws
    }

    /// A study folder's `study.json` and `analysis.json`, when it has both (the first found of
    /// a name is kept).
    fn scan_study(&mut self, d: &Path) {
        let (spec_path, path) = (d.join("study.json"), d.join("analysis.json"));
        if !(spec_path.is_file() && path.is_file()) {
            return;
        }
        fn read<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
            let b = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))
        }
        match (read(&spec_path), read(&path)) {
            (Ok(spec), Ok(analysis)) => {
                let spec: crate::ablate::study::StudySpec = spec;
                if !self.studies.iter().any(|s| s.spec.name == spec.name) {
                    let mut runs = Vec::new();
                    for r in subdirs(&d.join("runs")) {
                        let p = r.join("result.json");
                        if !p.is_file() {
                            continue;
                        }
                        match read::<StudyRun>(&p) {
                            Ok(run) => runs.push(run),
                            Err(e) => self.problems.push(e),
                        }
                    }
                    self.studies.push(StudyEntry {
                        path,
                        spec,
                        analysis,
                        runs,
                    });
                }
            }
            (Err(e), _) | (_, Err(e)) => self.problems.push(e),
        }
    }

    fn scan_results(&mut self, dir: &Path) {
        let mut latest: BTreeMap<mmlab_eval::identity::ResultKey, ResultEntry> = BTreeMap::new();
        for d in subdirs(dir) {
            if d.file_name().is_some_and(|n| n == "ablations") {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "json")
                        && !p.to_string_lossy().ends_with(".samples.json")
                })
                .collect();
            files.sort();
            for path in files {
                match load_result(&path) {
                    Ok(result) => {
                        if result.config.shard.is_some() {
                            continue;
                        }
                        let key = result.key();
                        let newer = latest
                            .get(&key)
                            .is_none_or(|old| old.result.created <= result.created);
                        if newer {
                            latest.insert(key, ResultEntry { path, result });
                        }
                    }
                    Err(e) => self.problems.push(mmlab_eval::error::error_chain(&e)),
                }
            }
        }
        self.results = latest.into_values().collect();
    }

    /// A path for display: relative to the workspace folder when inside it.
    pub fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    /// The design of a model name: a known model's, else guessed from the name
    /// (`fuyu` native, `llava` / `qformer` / `flamingo`) and marked with `?`, else `?`.
    pub fn design_of(&self, model: &str) -> String {
        if let Some(m) = self.models.iter().find(|m| m.name == model) {
            return m.design.to_string();
        }
        Design::guess_from_name(model).map_or_else(|| "?".into(), |d| format!("{d}?"))
    }

    /// One row per model, data set, scope and weights, merging its newest result of every task:
    /// results on other data, of part of the data or in another mode never share a row.
    pub fn result_rows(&self) -> Vec<ResultRow> {
        // The data set a result comes from: its manifest (one per generated data set, shared
        // by all of its tasks), else the question and media hashes.
        let dataset = |r: &TaskResult| {
            r.config
                .data_identity
                .as_ref()
                .map(|d| d.manifest_sha256.clone().unwrap_or_else(|| d.id.clone()))
                .unwrap_or_default()
        };
        let run = |r: &TaskResult| {
            let mut run = mmlab_eval::report::run_scope(r);
            if r.config.mode == mmlab_eval::AnswerMode::Score {
                run.push_str(", score mode");
            }
            run
        };
        type Key = (String, String, String, String, String);
        let mut rows: BTreeMap<Key, ResultRow> = BTreeMap::new();
        for r in &self.results {
            let res = &r.result;
            let key = (
                res.model.clone(),
                res.config.tier_label(),
                run(res),
                dataset(res),
                res.model_identity.clone(),
            );
            let row = rows.entry(key).or_insert_with(|| ResultRow {
                model: res.model.clone(),
                design: self.design_of(&res.model),
                tier: res.config.tier_label(),
                run: run(res),
                values: BTreeMap::new(),
                shipped: false,
            });
            row.values.extend(metric_values(res));
        }
        // Rows that would read the same (same model, tier and scope on other data or weights)
        // say which data set and weights they are.
        let keys: Vec<Key> = rows.keys().cloned().collect();
        let mut out = Vec::with_capacity(rows.len());
        for (k, mut row) in rows {
            let twins: Vec<&Key> = keys
                .iter()
                .filter(|o| o.0 == k.0 && o.1 == k.1 && o.2 == k.2)
                .collect();
            if twins.len() > 1 {
                if twins.iter().any(|o| o.3 != k.3) {
                    row.run
                        .push_str(&format!(", data {}", &k.3[..k.3.len().min(8)]));
                }
                if twins.iter().any(|o| o.4 != k.4) {
                    let w = k.4.rsplit(['@', ':']).next().unwrap_or(&k.4);
                    row.run
                        .push_str(&format!(", weights {}", &w[..w.len().min(8)]));
                }
            }
            out.push(row);
        }
        // Shipped results, unless the user has a result of the same model on the same tier.
        for s in &self.shipped {
            if out.iter().any(|r| r.model == s.model && r.tier == s.tier) {
                continue;
            }
            out.push(ResultRow {
                model: s.model.clone(),
                design: self.design_of(&s.model),
                tier: s.tier.clone(),
                run: format!("shipped: {}", s.data),
                values: s.values.clone(),
                shipped: true,
            });
        }
        out
    }

    /// The result entries of one model (for the sample browser).
    pub fn results_of(&self, model: &str) -> Vec<&ResultEntry> {
        self.results
            .iter()
            .filter(|r| r.result.model == model)
            .collect()
    }
}
