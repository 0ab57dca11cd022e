//! Training: AdamW with warm-up and cosine decay, gradient clipping, loss on answer
//! tokens only, periodic held-out eval, atomic checkpoints and exact resume.

pub mod contrastive;
pub mod data;
pub mod optim;
pub mod recipe;
pub mod step;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::fusion::{collate, PadSide, TextTokenizer};
use crate::io::atomic_write;
use crate::model::checkpoint::{save_dir, tensors_to_bytes, CheckpointError, ModelDirConfig};
use crate::model::native::loss_rows;
use crate::model::NativeModel;
use data::{Example, Factory, Source, SyntheticData};
use optim::{lr_at, AdamW, AdamWConfig};

/// Errors that stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing the output directory failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A tensor op failed (its message and causes are candle's).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// Building a sample failed (its message names the file or input).
    #[error(transparent)]
    Data(#[from] crate::fusion::FusionError),
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("loss is {loss} at step {step}; stopped. The last good checkpoint (step {last_good}) in {dir} is kept; lower the learning rate and resume")]
    NonFinite {
        /// Step.
        step: u64,
        /// The loss value.
        loss: f32,
        /// Step of the last checkpoint written.
        last_good: u64,
        /// The output directory.
        dir: PathBuf,
    },
    /// The run's settings are inconsistent.
    #[error("{0}")]
    Config(String),
    /// No preset has this name.
    #[error("unknown preset {0:?}; `mmlab models` lists them")]
    UnknownPreset(String),
    /// Neither generated data nor a dataset folder is set.
    #[error("no training data given")]
    NoData,
    /// A dataset folder's records could not be read (the message names the file and line).
    #[error(transparent)]
    Records(#[from] mmlab_datasets::DatasetError),
    /// A tokenizer file could not be loaded.
    #[error("loading {}", path.display())]
    Tokenizer {
        /// The `tokenizer.json`.
        path: PathBuf,
        /// What went wrong.
        source: crate::fusion::FusionError,
    },
    /// I/O on a file (the cause is the error's source).
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl From<crate::io::FileError> for TrainError {
    fn from(e: crate::io::FileError) -> Self {
        TrainError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything that defines a training run (saved with every checkpoint).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Model to train.
    pub model: ModelDirConfig,
    /// Synthetic data settings (`None` when training from a dataset folder).
    pub data: Option<SyntheticData>,
    /// Dataset folder, when not synthetic.
    pub data_dir: Option<PathBuf>,
    /// Total optimiser steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    /// Warm-up steps.
    pub warmup: u64,
    /// Final LR as a share of the peak.
    pub min_lr_ratio: f64,
    /// Optimiser settings.
    pub optim: AdamWConfig,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f64,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Log every this many steps.
    pub log_every: u64,
    /// Held-out eval every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub ckpt_every: u64,
    /// Held-out eval batches.
    pub eval_batches: u64,
    /// Start from the weights of this model directory (a warm start: fresh optimiser and
    /// schedule) instead of a seeded initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Components kept frozen (`encoder`, `connector`, `decoder`; see [`component`]): the
    /// optimiser never touches their weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
    /// With `init_from`: copy only these components (say `decoder`, to start a bolted design
    /// from another model's decoder); empty copies everything and needs identical settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_parts: Vec<String>,
    /// Load the vision encoder (`vision_encoder.*`) from this contrastive pre-training output
    /// (`mmlab pretrain-encoder`: a folder with `encoder.safetensors`, or the file itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_encoder: Option<PathBuf>,
    /// Load the audio encoder (`audio_encoder.*`) from a sound–caption pre-training output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_audio_encoder: Option<PathBuf>,
}

impl TrainConfig {
    /// A run of `model` for `steps` steps of `batch_size` sequences at peak learning rate `lr`,
    /// seeded with `seed`, with no data yet (set `data` or `data_dir`) and the shared defaults:
    /// no warm-up, cosine decay to 5% of the peak, AdamW's defaults, gradients clipped at 1.0,
    /// a log line every 20 steps, eval and checkpoint every 500, [`EVAL_BATCHES`] held-out
    /// batches, a seeded initialisation and nothing frozen.
    pub fn new(model: ModelDirConfig, steps: u64, batch_size: usize, lr: f64, seed: u64) -> Self {
        TrainConfig {
            model,
            data: None,
            data_dir: None,
            steps,
            batch_size,
            warmup: 0,
            min_lr_ratio: 0.05,
            optim: AdamWConfig {
                lr,
                ..AdamWConfig::default()
            },
            grad_clip: 1.0,
            seed,
            log_every: 20,
            eval_every: 500,
            ckpt_every: 500,
            eval_batches: EVAL_BATCHES,
            init_from: None,
            freeze: Vec::new(),
            init_parts: Vec::new(),
            init_encoder: None,
            init_audio_encoder: None,
        }
    }
}

/// Held-out eval batches of a run unless it says otherwise.
pub const EVAL_BATCHES: u64 = 8;

/// Component names `freeze` accepts.
pub const COMPONENTS: [&str; 3] = ["encoder", "connector", "decoder"];

/// The component a variable belongs to: `encoder` (the vision and audio encoders), `connector`
/// (connectors, Flamingo's cross-attention layers, and the native model's linear patch and
/// frame embeddings, its only modality adapters) or `decoder` (everything else).
pub fn component(name: &str) -> &'static str {
    if name.starts_with("vision_encoder.") || name.starts_with("audio_encoder.") {
        "encoder"
    } else if [
        "connector.",
        "audio_connector.",
        "xattn.",
        "vision_embed.",
        "audio_embed.",
    ]
    .iter()
    .any(|p| name.starts_with(p))
    {
        "connector"
    } else {
        "decoder"
    }
}

/// Progress and metrics state saved in a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Steps done.
    pub step: u64,
    /// Tokens processed.
    pub tokens: u64,
    /// Answer tokens the loss saw.
    pub target_tokens: u64,
    /// Training seconds so far.
    pub seconds: f64,
    /// Optimiser step counter.
    pub adam_t: u64,
    /// The logged-loss window not yet written to `train.jsonl` (restored on resume so the
    /// log after a resume equals the uninterrupted run's).
    #[serde(default)]
    pub window: LossWindow,
}

/// Sums over the steps since the last `train.jsonl` loss line.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LossWindow {
    /// Sum of the per-step losses.
    pub loss_sum: f64,
    /// Steps summed.
    pub steps: u64,
}

/// A line of `train.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    /// Step.
    pub step: u64,
    /// Mean training loss since the last line (absent on eval lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Gradient norm before clipping at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Tokens processed so far.
    pub tokens: u64,
    /// Throughput since the last line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Wall seconds of training so far.
    pub seconds: f64,
    /// Held-out answer accuracy per question kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<BTreeMap<String, f64>>,
    /// Held-out loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

/// Builds a model and its variables, initialised deterministically from `seed`.
pub fn init_model(
    cfg: &ModelDirConfig,
    seed: u64,
    device: &Device,
) -> Result<(NativeModel, VarMap), TrainError> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
    let model = NativeModel::new(&cfg.model, vb)?;
    reinit(&vm, seed)?;
    Ok((model, vm))
}

/// Overwrites every variable with a seeded draw: normal(0, 0.02) for the token embedding,
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for other matrices, ones for norm weights, zeros for biases.
pub fn reinit(vm: &VarMap, seed: u64) -> Result<(), TrainError> {
    use rand::{Rng, SeedableRng};
    use rand_distr_lite::normal;
    let data = vm
        .data()
        .lock()
        .map_err(|_| TrainError::Config("variable map lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let n = var.elem_count();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(1_000_003).wrapping_add(k as u64),
        );
        let vals: Vec<f32> = if name.ends_with("embed_tokens.weight") {
            (0..n).map(|_| 0.02 * normal(&mut rng)).collect()
        } else if name.ends_with("_gate") {
            // Flamingo's tanh gates start closed.
            vec![0.0; n]
        } else if name.contains("layernorm") && name.ends_with("weight") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let fan_in = *var.dims().last().unwrap_or(&1) as f32;
            let bound = 1.0 / fan_in.sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        var.set(&candle_core::Tensor::from_vec(
            vals,
            var.shape().clone(),
            var.device(),
        )?)?;
    }
    Ok(())
}

/// A standard normal draw without pulling in `rand_distr`.
mod rand_distr_lite {
    use rand::Rng;
    /// Box-Muller.
    pub fn normal<R: Rng>(rng: &mut R) -> f32 {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// Named variables of a VarMap, sorted.
pub fn named_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let data = match vm.data().lock() {
        Ok(d) => d,
        Err(p) => p.into_inner(),
    };
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Teacher-forced answer accuracy and loss of `model` on `batches`, per question kind.
pub fn evaluate(
    model: &NativeModel,
    batches: &[Vec<Example>],
    pad: u32,
) -> Result<(BTreeMap<String, f64>, f64), TrainError> {
    let mut right: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut loss_sum = 0.0;
    let mut loss_n = 0usize;
    for ex in batches {
        let seqs: Vec<_> = ex.iter().map(|e| e.seq.clone()).collect();
        let batch =
            collate(&seqs, pad, PadSide::Right).map_err(|e| TrainError::Config(e.to_string()))?;
        let out = model.forward(&batch, None, false)?;
        let (rows, targets) = loss_rows(&batch);
        let d = model.cfg.d_model;
        let h = out.hidden.reshape((batch.batch * batch.seq_len, d))?;
        let idx = candle_core::Tensor::from_slice(&rows, rows.len(), model.device())?;
        let logits = model.logits(&h.index_select(&idx, 0)?)?;
        if !rows.is_empty() {
            let mean = crate::kernels::cross_entropy(&logits, &targets)?;
            loss_sum += mean.to_scalar::<f32>()? as f64 * rows.len() as f64;
        }
        loss_n += rows.len();
        let pred = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        // Rows are in sequence order: group them back by sequence.
        let t = batch.seq_len;
        for (i, e) in ex.iter().enumerate() {
            let ok = rows
                .iter()
                .zip(&pred)
                .zip(&targets)
                .filter(|((r, _), _)| (**r as usize) / t == i)
                .all(|((_, p), tg)| p == tg);
            let entry = right.entry(e.kind.name().to_string()).or_default();
            entry.0 += u64::from(ok);
            entry.1 += 1;
        }
    }
    let acc = right
        .into_iter()
        .map(|(k, (r, n))| (k, r as f64 / n.max(1) as f64))
        .collect();
    Ok((acc, loss_sum / loss_n.max(1) as f64))
}

/// What a finished or interrupted run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Final state.
    pub state: TrainState,
    /// Last held-out eval.
    pub eval: BTreeMap<String, f64>,
}

/// Options that are not part of the run's identity.
pub struct RunControl<'a> {
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// Called after every step with (step, total, loss, tokens/s).
    pub progress: &'a dyn Fn(u64, u64, f64, f64),
    /// Stop after this step (to simulate an interruption in tests); the checkpoint at that step is written.
    pub stop_after: Option<u64>,
}

fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

fn write_checkpoint(
    out: &Path,
    cfg: &TrainConfig,
    vm: &VarMap,
    opt: &AdamW,
    state: &TrainState,
) -> Result<(), TrainError> {
    let tmp = out.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let w = crate::model::checkpoint::safetensors_bytes(vm, DType::F32)
        .map_err(|msg| TrainError::Config(format!("saving weights: {msg}")))?;
    std::fs::write(tmp.join("model.safetensors"), w).map_err(io_err(&tmp))?;
    let mut moments = Vec::new();
    for s in &opt.slots {
        let n = s.m.len();
        moments.push((
            format!("{}.m", s.name),
            candle_core::Tensor::from_slice(&s.m, n, &Device::Cpu)?,
        ));
        moments.push((
            format!("{}.v", s.name),
            candle_core::Tensor::from_slice(&s.v, n, &Device::Cpu)?,
        ));
    }
    let ob = tensors_to_bytes(&moments)
        .map_err(|msg| TrainError::Config(format!("saving optimiser: {msg}")))?;
    std::fs::write(tmp.join("optimizer.safetensors"), ob).map_err(io_err(&tmp))?;
    let meta = serde_json::json!({ "config": cfg, "state": state });
    std::fs::write(
        tmp.join("state.json"),
        serde_json::to_vec_pretty(&meta).unwrap_or_default(),
    )
    .map_err(io_err(&tmp))?;
    let dst = checkpoint_dir(out);
    let old = out.join("checkpoint.old");
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(&dst, &old).map_err(io_err(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&tmp))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The settings and progress saved in the checkpoint of the run in `out` (the directory of
/// the last complete checkpoint).
pub fn checkpoint_meta(out: &Path) -> Result<(TrainConfig, TrainState), TrainError> {
    let dir = resume_dir(out);
    let sp = dir.join("state.json");
    if !sp.is_file() {
        return Err(TrainError::Config(format!(
            "{}: no checkpoint to resume from ({} is missing)",
            out.display(),
            sp.display()
        )));
    }
    let text = std::fs::read_to_string(&sp).map_err(io_err(&sp))?;
    #[derive(Deserialize)]
    struct Meta {
        config: TrainConfig,
        state: TrainState,
    }
    let meta: Meta = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}", sp.display())))?;
    Ok((meta.config, meta.state))
}

/// The checkpoint directory a resume reads: `checkpoint`, or `checkpoint.old` when a crash
/// came between the two renames of [`write_checkpoint`].
fn resume_dir(out: &Path) -> PathBuf {
    let dir = checkpoint_dir(out);
    if !dir.exists() && out.join("checkpoint.old").exists() {
        out.join("checkpoint.old")
    } else {
        dir
    }
}

/// Refuses to resume the run in `out` with settings other than its checkpoint's, naming each
/// setting that differs.
pub fn check_resume(out: &Path, cfg: &TrainConfig) -> Result<TrainState, TrainError> {
    if !out.is_dir() {
        return Err(TrainError::Config(format!(
            "cannot resume: {} does not exist",
            out.display()
        )));
    }
    let (saved, state) = checkpoint_meta(out)?;
    let diff = settings_diff(&saved, cfg);
    if !diff.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: the checkpoint was made with different settings ({}); resume with the settings it was made with, or start a new run",
            checkpoint_dir(out).display(),
            diff.join("; ")
        )));
    }
    Ok(state)
}

/// The settings that differ between `old` and `new`, one `path: OLD -> NEW` entry each
/// (`optim.lr: 0.003 -> 0.001`); empty when they are equal.
pub fn settings_diff<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let (a, b) = match (serde_json::to_value(old), serde_json::to_value(new)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return vec!["settings that cannot be written as JSON".into()],
    };
    let mut out = Vec::new();
    json_diff("", &a, &b, &mut out);
    out
}

fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    if a == b {
        return;
    }
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for k in keys {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            json_diff(
                &p,
                x.get(k).unwrap_or(&Value::Null),
                y.get(k).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    let show = |v: &Value| match v {
        Value::Null => "none".to_string(),
        v => v.to_string(),
    };
    let name = if path.is_empty() { "settings" } else { path };
    out.push(format!("{name}: {} -> {}", show(a), show(b)));
}

fn read_checkpoint(
    out: &Path,
    vm: &VarMap,
    opt: &mut AdamW,
) -> Result<(TrainConfig, TrainState), TrainError> {
    let (config, state) = checkpoint_meta(out)?;
    let dir = resume_dir(out);
    load_vars(&dir.join("model.safetensors"), vm)?;
    let op = dir.join("optimizer.safetensors");
    let o = candle_core::safetensors::load(&op, &Device::Cpu)
        .map_err(|e| TrainError::Config(format!("{}: {e}", op.display())))?;
    for s in &mut opt.slots {
        let get = |k: String| -> Result<Vec<f32>, TrainError> {
            let t = o.get(&k).ok_or_else(|| {
                TrainError::Config(format!("{}: missing tensor {k}", op.display()))
            })?;
            Ok(t.to_vec1::<f32>()?)
        };
        s.m = get(format!("{}.m", s.name))?;
        s.v = get(format!("{}.v", s.name))?;
    }
    opt.t = state.adam_t;
    Ok((config, state))
}

/// Copies the weights of the model directory `dir` into `vm` (a warm start); the
/// directory's model settings must equal `model`.
fn load_weights(dir: &Path, model: &ModelDirConfig, vm: &VarMap) -> Result<(), TrainError> {
    let cp = dir.join("config.json");
    let text = std::fs::read_to_string(&cp).map_err(io_err(&cp))?;
    let theirs: ModelDirConfig = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("{}: {e}", cp.display())))?;
    if theirs.model != model.model || theirs.image != model.image || theirs.audio != model.audio {
        return Err(TrainError::Config(format!(
            "{}: its model, image or audio settings differ from the preset being trained",
            cp.display()
        )));
    }
    load_vars(&dir.join("model.safetensors"), vm)
}

/// Sets the variables of `vm` that belong to `parts` (see [`component`]) from the
/// safetensors file `wp`; each must be there with the same shape.
fn load_parts(wp: &Path, vm: &VarMap, parts: &[&str]) -> Result<(), TrainError> {
    load_matching(wp, vm, &format!("{parts:?}"), &|n| {
        parts.contains(&component(n))
    })
}

/// Sets the variables of `vm` whose names pass `keep` from the safetensors file `wp`.
fn load_matching(
    wp: &Path,
    vm: &VarMap,
    what: &str,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(), TrainError> {
    let w = candle_core::safetensors::load(wp, &Device::Cpu)
        .map_err(|e| TrainError::Config(format!("{}: {e}", wp.display())))?;
    let mut n = 0;
    for (name, var) in named_vars(vm) {
        if !keep(&name) {
            continue;
        }
        let t = w.get(&name).ok_or_else(|| {
            TrainError::Config(format!(
                "{}: missing tensor {name} (needed for the {what} weights)",
                wp.display()
            ))
        })?;
        if t.dims() != var.dims() {
            return Err(TrainError::Config(format!(
                "{}: tensor {name} has shape {:?}, the model needs {:?}",
                wp.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
        n += 1;
    }
    if n == 0 {
        return Err(TrainError::Config(format!(
            "{}: the model has no {what} weights to load",
            wp.display()
        )));
    }
    Ok(())
}

/// Sets every variable of `vm` from the safetensors file `wp` (names and shapes must match).
fn load_vars(wp: &Path, vm: &VarMap) -> Result<(), TrainError> {
    let w = candle_core::safetensors::load(wp, &Device::Cpu)
        .map_err(|e| TrainError::Config(format!("{}: {e}", wp.display())))?;
    for (name, var) in named_vars(vm) {
        let t = w.get(&name).ok_or_else(|| {
            TrainError::Config(format!("{}: missing tensor {name}", wp.display()))
        })?;
        if t.dims() != var.dims() {
            return Err(TrainError::Config(format!(
                "{}: tensor {name} has shape {:?}, the model needs {:?}",
                wp.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// Keeps only the `train.jsonl` lines up to `step` (after a resume).
fn truncate_log(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<LogLine>(l)
                .map(|x| x.step <= step)
                .unwrap_or(false)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    atomic_write(path, kept.as_bytes())?;
    Ok(())
}

/// The files a training run writes into its directory, other than `tokenizer.json` (which the
/// caller may have written for this run).
pub const RUN_FILES: [&str; 6] = [
    "train.jsonl",
    "checkpoint",
    "checkpoint.old",
    "checkpoint.tmp",
    "model.safetensors",
    "config.json",
];

/// Removes what an earlier run left in `out` (see [`RUN_FILES`]), so that a fresh run is
/// never mistaken for it: no stale checkpoint to resume, no stale model beside a new log.
fn clear_run(out: &Path) -> Result<(), TrainError> {
    Ok(crate::io::remove_all(out, &RUN_FILES)?)
}

/// Trains `cfg` into the model directory `out` with `tokenizer`; returns the final state.
///
/// Without `ctl.resume` a run already in `out` is replaced (callers that must not lose it, like
/// `mmlab train`, check first); with it, `out` must hold a checkpoint made with `cfg`.
pub fn train(
    cfg: &TrainConfig,
    tokenizer: TextTokenizer,
    out: &Path,
    ctl: &RunControl,
) -> Result<TrainSummary, TrainError> {
    let device = crate::device::current();
    if cfg.batch_size == 0 || cfg.steps == 0 {
        return Err(TrainError::Config(
            "steps and batch_size must be positive".into(),
        ));
    }
    if tokenizer.vocab_size() > cfg.model.model.vocab_size {
        return Err(TrainError::Config(format!(
            "tokenizer has {} tokens but the model's vocab_size is {}",
            tokenizer.vocab_size(),
            cfg.model.model.vocab_size
        )));
    }
    if ctl.resume {
        // Before any work, and without creating `out`.
        check_resume(out, cfg)?;
    } else {
        // A fresh run clears `out`: it must not be where its starting weights come from.
        for from in [&cfg.init_from, &cfg.init_encoder, &cfg.init_audio_encoder]
            .into_iter()
            .flatten()
        {
            let same = |p: &Path| std::fs::canonicalize(p).ok();
            let from_dir = if from.is_dir() {
                from.as_path()
            } else {
                from.parent().unwrap_or(from)
            };
            if same(from_dir).is_some() && same(from_dir) == same(out) {
                return Err(TrainError::Config(format!(
                    "{}: a run cannot start from weights in its own output directory; pick another output directory",
                    from.display()
                )));
            }
        }
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        clear_run(out)?;
    }
    let (model, vm) = init_model(&cfg.model, cfg.seed, &device)?;
    for f in cfg.freeze.iter().chain(&cfg.init_parts) {
        if !COMPONENTS.contains(&f.as_str()) {
            return Err(TrainError::Config(format!(
                "unknown component {f:?}: components are {COMPONENTS:?}"
            )));
        }
    }
    if !ctl.resume {
        if let Some(dir) = &cfg.init_from {
            if cfg.init_parts.is_empty() {
                load_weights(dir, &cfg.model, &vm)?;
            } else {
                let parts: Vec<&str> = cfg.init_parts.iter().map(|s| s.as_str()).collect();
                load_parts(&dir.join("model.safetensors"), &vm, &parts)?;
            }
        }
        if cfg.model.model.bolt.is_none() && cfg.init_encoder.is_some() {
            return Err(TrainError::Config(
                "init_encoder: a native model has no vision encoder to load".into(),
            ));
        }
        for (from, what, prefix) in [
            (&cfg.init_encoder, "vision encoder", "vision_encoder."),
            (&cfg.init_audio_encoder, "audio encoder", "audio_encoder."),
        ] {
            if let Some(p) = from {
                // A `mmlab pretrain-encoder` folder, or the weights file itself.
                let file = if p.is_dir() {
                    p.join("encoder.safetensors")
                } else {
                    p.clone()
                };
                load_matching(&file, &vm, what, &|n| n.starts_with(prefix))?;
            }
        }
    }
    let trainable: Vec<(String, Var)> = named_vars(&vm)
        .into_iter()
        .filter(|(n, _)| !cfg.freeze.iter().any(|f| f == component(n)))
        .collect();
    if trainable.is_empty() {
        return Err(TrainError::Config(format!(
            "freezing {:?} leaves nothing to train",
            cfg.freeze
        )));
    }
    let mut opt = AdamW::new(trainable, cfg.optim.clone());
    let vars = opt.vars();
    let threads = crate::kernels::num_threads();
    let log_path = out.join("train.jsonl");
    let mut state = TrainState {
        step: 0,
        tokens: 0,
        target_tokens: 0,
        seconds: 0.0,
        adam_t: 0,
        window: LossWindow::default(),
    };
    if ctl.resume {
        let (saved, st) = read_checkpoint(out, &vm, &mut opt)?;
        if &saved != cfg {
            return Err(TrainError::Config(format!(
                "{}: the checkpoint changed while resuming",
                checkpoint_dir(out).display()
            )));
        }
        state = st;
        truncate_log(&log_path, state.step)?;
    }
    let tok = Arc::new(tokenizer);
    let pad = tok.specials.pad;
    let builder = cfg.model.builder(tok.clone());
    // Synthetic data: the held-out eval uses another seed of the generators. A dataset
    // folder: the last 5% of its records (at least one, when there are two or more) are held
    // out of training and used for the eval.
    let (source, eval_source) = match (&cfg.data, &cfg.data_dir) {
        (Some(d), _) => (Source::Synthetic(d.clone()), None),
        (None, Some(dir)) => {
            let p = dir.join("train.jsonl");
            let mut records = mmlab_datasets::load_train(&p)?;
            if records.is_empty() {
                return Err(TrainError::Config(format!(
                    "{}: no training records",
                    p.display()
                )));
            }
            let held = if records.len() >= 2 {
                (records.len() / 20).max(1)
            } else {
                0
            };
            let eval_records = records.split_off(records.len() - held);
            let eval = (!eval_records.is_empty()).then(|| Source::Folder {
                dir: dir.clone(),
                records: eval_records,
            });
            (
                Source::Folder {
                    dir: dir.clone(),
                    records,
                },
                eval,
            )
        }
        (None, None) => return Err(TrainError::NoData),
    };
    let factory = Factory::new(source, cfg.seed, cfg.batch_size, builder.clone());
    let eval_seed = cfg.seed ^ 0x0000_E7A1_5EED;
    let eval_sets: Vec<Vec<Example>> = match eval_source {
        Some(src) => {
            let ef = Factory::new(src, eval_seed, cfg.batch_size, builder);
            (0..cfg.eval_batches)
                .map(|i| ef.batch_from(eval_seed, i))
                .collect::<Result<_, _>>()?
        }
        None => (0..cfg.eval_batches)
            .map(|i| factory.batch_from(eval_seed, i))
            .collect::<Result<_, _>>()?,
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&log_path))?;
    let mut write_log = |line: &LogLine| -> Result<(), TrainError> {
        let s = serde_json::to_string(line).unwrap_or_default();
        writeln!(log, "{s}")
            .and_then(|_| log.flush())
            .map_err(io_err(&log_path))
    };
    let t0 = Instant::now();
    let secs0 = state.seconds;
    // Throughput is wall-clock: measured over this process's steps only.
    let (mut window_start, mut tps_tokens) = (Instant::now(), 0u64);
    let mut last_eval = BTreeMap::new();
    let mut last_good = state.step;
    while state.step < cfg.steps {
        let step = state.step;
        let lr = lr_at(step, cfg.steps, cfg.warmup, cfg.optim.lr, cfg.min_lr_ratio);
        opt.lr = lr;
        let examples = factory.batch(step)?;
        let seqs: Vec<_> = examples.into_iter().map(|e| e.seq).collect();
        let shards = step::collate_shards(&seqs, step::shard_count(seqs.len(), threads), pad)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let step::StepGrads {
            loss: loss_v,
            n_targets,
            grads,
            ..
        } = step::gradients(&model, &shards, &vars)?;
        if !loss_v.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                loss: loss_v,
                last_good,
                dir: out.to_path_buf(),
            });
        }
        let norm = opt.grad_norm(&grads)?;
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                loss: norm as f32,
                last_good,
                dir: out.to_path_buf(),
            });
        }
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            cfg.grad_clip / norm
        } else {
            1.0
        };
        opt.step(&grads, scale)?;
        let real: u64 = shards
            .iter()
            .flat_map(|b| &b.attention_mask)
            .map(|&m| m as u64)
            .sum();
        state.step += 1;
        state.tokens += real;
        state.target_tokens += n_targets as u64;
        state.adam_t = opt.t;
        state.seconds = secs0 + t0.elapsed().as_secs_f64();
        state.window.loss_sum += loss_v as f64;
        state.window.steps += 1;
        tps_tokens += real;
        let tps = tps_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
        (ctl.progress)(state.step, cfg.steps, loss_v as f64, tps);
        let done = state.step == cfg.steps;
        if state.step.is_multiple_of(cfg.log_every.max(1)) || done {
            write_log(&LogLine {
                step: state.step,
                loss: Some(state.window.loss_sum / state.window.steps as f64),
                lr: Some(lr),
                grad_norm: Some(norm),
                tokens: state.tokens,
                tokens_per_s: Some(tps),
                seconds: state.seconds,
                eval: None,
                eval_loss: None,
            })?;
            state.window = LossWindow::default();
            (window_start, tps_tokens) = (Instant::now(), 0);
        }
        if (cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) || done {
            let (acc, el) = evaluate(&model, &eval_sets, pad)?;
            write_log(&LogLine {
                step: state.step,
                loss: None,
                lr: None,
                grad_norm: None,
                tokens: state.tokens,
                tokens_per_s: None,
                seconds: state.seconds,
                eval: Some(acc.clone()),
                eval_loss: Some(el),
            })?;
            tracing::info!(step = state.step, eval_loss = el, ?acc, "held-out eval");
            last_eval = acc;
        }
        let stop_here = ctl.stop_after == Some(state.step);
        if (cfg.ckpt_every > 0 && state.step.is_multiple_of(cfg.ckpt_every)) || done || stop_here {
            write_checkpoint(out, cfg, &vm, &opt, &state)?;
            last_good = state.step;
        }
        if stop_here {
            break;
        }
    }
    if state.step == cfg.steps {
        save_dir(out, &cfg.model, &vm, DType::F32, &tok)?;
    }
    Ok(TrainSummary {
        state,
        eval: last_eval,
    })
}
