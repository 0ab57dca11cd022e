//! Training: AdamW with warm-up and cosine decay, gradient clipping, loss on answer
//! tokens only, periodic held-out eval, atomic checkpoints and exact resume.

pub mod checkpoint;
pub mod contrastive;
pub mod data;
pub mod flops;
pub mod optim;
pub mod recipe;
mod run;
pub mod step;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::fusion::{collate, PadSide};
use crate::model::io::{CheckpointError, ModelDirConfig};
use crate::model::Model;
use data::{Example, SyntheticData};
use optim::AdamWConfig;

pub use checkpoint::{check_resume, checkpoint_meta, settings_diff};
pub use run::{train, RunControl, TrainSummary, RUN_FILES};

/// Errors that stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a model directory or weights file failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A tensor op failed (its message and causes are candle's).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// Building a sample failed (its message names the file or input).
    #[error(transparent)]
    Data(#[from] crate::fusion::FusionError),
    /// Sequences could not be batched together.
    #[error(transparent)]
    Collate(#[from] crate::fusion::CollateError),
    /// A dataset folder's records could not be read (the message names the file and line).
    #[error(transparent)]
    Records(#[from] mmlab_datasets::DatasetError),
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
    /// The contrastive loss became NaN or infinite.
    #[error("contrastive loss is {loss} at step {step}; lower the learning rate")]
    NonFiniteContrastive {
        /// Step.
        step: u64,
        /// The loss value.
        loss: f64,
    },
    /// No preset has this name.
    #[error("unknown preset {0:?}; `mmlab models` lists them")]
    UnknownPreset(String),
    /// `steps` or `batch_size` is zero.
    #[error("steps and batch_size must be positive")]
    NoSteps,
    /// A contrastive run's `steps`, `batch_size` or `eval_pairs` is too small.
    #[error("steps must be positive and batch_size, eval_pairs at least 2")]
    PretrainSizes,
    /// The tokenizer has more tokens than the model's vocabulary.
    #[error("tokenizer has {tokenizer} tokens but the model's vocab_size is {model}")]
    VocabTooSmall {
        /// Tokens of the tokenizer.
        tokenizer: usize,
        /// `vocab_size` of the model.
        model: usize,
    },
    /// Neither generated data nor a dataset folder is set.
    #[error("no training data given")]
    NoData,
    /// A dataset folder's `train.jsonl` has no records.
    #[error("{}: no training records", path.display())]
    NoRecords {
        /// The `train.jsonl`.
        path: PathBuf,
    },
    /// A tokenizer file could not be loaded.
    #[error("loading {}", path.display())]
    Tokenizer {
        /// The `tokenizer.json`.
        path: PathBuf,
        /// What went wrong.
        source: crate::fusion::FusionError,
    },
    /// `freeze` or `init_parts` names no component.
    #[error("unknown component {name:?}: components are {COMPONENTS:?}")]
    UnknownComponent {
        /// The name given.
        name: String,
    },
    /// `freeze` covers every weight.
    #[error("freezing {freeze:?} leaves nothing to train")]
    NothingToTrain {
        /// The components frozen.
        freeze: Vec<String>,
    },
    /// A fresh run would clear the directory its starting weights come from.
    #[error("{}: a run cannot start from weights in its own output directory; pick another output directory", path.display())]
    InitFromOutput {
        /// The starting weights.
        path: PathBuf,
    },
    /// `init_encoder` is set for a model without a vision encoder.
    #[error("init_encoder: a native model has no vision encoder to load")]
    NoVisionEncoder,
    /// The warm start's model directory has other model, image or audio settings.
    #[error("{}: its model, image or audio settings differ from the preset being trained", path.display())]
    InitMismatch {
        /// Its `config.json`.
        path: PathBuf,
    },
    /// A weights file lacks a tensor the model needs.
    #[error("{}: missing tensor {name}{}", path.display(), needed_for.as_ref().map(|w| format!(" (needed for the {w} weights)")).unwrap_or_default())]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Which weights were being loaded, when only some were.
        needed_for: Option<String>,
    },
    /// A tensor in a weights file has another shape than the model's.
    #[error("{}: tensor {name} has shape {found:?}, the model needs {expected:?}", path.display())]
    TensorShape {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its shape in the file.
        found: Vec<usize>,
        /// The model's shape.
        expected: Vec<usize>,
    },
    /// A weights file holds none of the weights asked for.
    #[error("{}: the model has no {what} weights to load", path.display())]
    NothingToLoad {
        /// The weights file.
        path: PathBuf,
        /// The weights asked for.
        what: String,
    },
    /// Tensors could not be serialised.
    #[error("{}: saving tensors: {msg}", path.display())]
    SaveTensors {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// There is no run to resume in `out`.
    #[error("cannot resume: {} does not exist", out.display())]
    NoRun {
        /// The output directory.
        out: PathBuf,
    },
    /// The run in `out` has no complete checkpoint.
    #[error("{}: no checkpoint to resume from ({} is missing)", out.display(), missing.display())]
    NoCheckpoint {
        /// The output directory.
        out: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A checkpoint's `state.json` is not valid.
    #[error("{}: invalid checkpoint state: {msg}", path.display())]
    CheckpointState {
        /// The `state.json`.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
    /// A resume asked for other settings than the checkpoint's.
    #[error("{}: the checkpoint was made with different settings ({}); resume with the settings it was made with, or start a new run", checkpoint.display(), diff.join("; "))]
    SettingsDiffer {
        /// The checkpoint directory.
        checkpoint: PathBuf,
        /// Each setting that differs, `path: OLD -> NEW`.
        diff: Vec<String>,
    },
    /// The checkpoint was replaced between the resume check and reading it.
    #[error("{}: the checkpoint changed while resuming", dir.display())]
    CheckpointChanged {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// Another thread panicked while holding the variable map.
    #[error("variable map lock poisoned")]
    LockPoisoned,
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
    /// Seed of the held-out eval set (synthetic data); `None`: derived from `seed`. A study sets
    /// one for all its runs, so every run is measured on the same held-out examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_seed: Option<u64>,
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
            eval_seed: None,
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
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
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
    /// Training FLOPs so far, as counted by [`flops::train_step_flops`] on each step's batch
    /// (`None`: the run began before mmlab counted them, so its total is unknown).
    #[serde(default)]
    pub flops: Option<f64>,
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
    /// Training FLOPs so far, as counted (see [`flops`]); absent in logs of runs that began
    /// before mmlab counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
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
    /// Held-out loss per question kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_losses: Option<BTreeMap<String, f64>>,
}

impl LogLine {
    /// A line at `state` with only the step, tokens and seconds.
    fn at(state: &TrainState) -> Self {
        LogLine {
            step: state.step,
            loss: None,
            lr: None,
            grad_norm: None,
            tokens: state.tokens,
            flops: state.flops,
            tokens_per_s: None,
            seconds: state.seconds,
            eval: None,
            eval_loss: None,
            eval_losses: None,
        }
    }
}

/// Builds a model and its variables, initialised deterministically from `seed`.
pub fn init_model(
    cfg: &ModelDirConfig,
    seed: u64,
    device: &Device,
) -> Result<(Model, VarMap), TrainError> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
    let model = Model::new(&cfg.model, vb)?;
    reinit(&vm, seed)?;
    Ok((model, vm))
}

/// Overwrites every variable with a seeded draw: normal(0, 0.02) for the token embedding,
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for other matrices, ones for norm weights, zeros for biases.
pub fn reinit(vm: &VarMap, seed: u64) -> Result<(), TrainError> {
    use rand::{Rng, SeedableRng};
    use rand_distr_lite::normal;
    let data = vm.data().lock().map_err(|_| TrainError::LockPoisoned)?;
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

/// What the held-out eval measured: teacher-forced answer accuracy and loss, overall, per
/// question kind, and per example (for bootstrap intervals over the held-out set).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeldOut {
    /// Share of examples whose every answer token is predicted, per question kind.
    pub accuracy: BTreeMap<String, f64>,
    /// Mean answer-token loss (nats) over every answer token.
    pub loss: f64,
    /// Mean answer-token loss per question kind.
    pub losses: BTreeMap<String, f64>,
    /// Each example's (kind, answer tokens, summed answer-token loss), in held-out order.
    pub examples: Vec<(String, u32, f64)>,
}

/// Teacher-forced answer accuracy and loss of `model` on `batches`, per question kind.
pub fn evaluate(model: &Model, batches: &[Vec<Example>], pad: u32) -> Result<HeldOut, TrainError> {
    let mut right: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut loss_sum = 0.0;
    let mut loss_n = 0usize;
    let mut examples = Vec::new();
    for ex in batches {
        let seqs: Vec<_> = ex.iter().map(|e| e.seq.clone()).collect();
        let batch = collate(&seqs, pad, PadSide::Right)?;
        let out = model.forward(&batch, None, false)?;
        let crate::model::TargetLogits {
            rows,
            targets,
            logits,
        } = model.decoder().target_logits(&out.hidden, &batch)?;
        let mut row_loss = vec![0f32; rows.len()];
        if !rows.is_empty() {
            let mean = crate::kernels::cross_entropy(&logits, &targets)?;
            loss_sum += mean.to_scalar::<f32>()? as f64 * rows.len() as f64;
            // Each row's own loss: -log softmax at its target.
            let lsm = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
            let idx = candle_core::Tensor::from_slice(&targets, (targets.len(), 1), lsm.device())?;
            row_loss = lsm
                .gather(&idx, 1)?
                .flatten_all()?
                .neg()?
                .to_vec1::<f32>()?;
        }
        loss_n += rows.len();
        let pred = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        // Rows are in sequence order: group them back by sequence.
        let t = batch.seq_len;
        for (i, e) in ex.iter().enumerate() {
            let mine = || {
                rows.iter()
                    .enumerate()
                    .filter(move |(_, r)| (**r as usize) / t == i)
                    .map(|(j, _)| j)
            };
            let ok = mine().all(|j| pred[j] == targets[j]);
            let kind = e.kind.name().to_string();
            let entry = right.entry(kind.clone()).or_default();
            entry.0 += u64::from(ok);
            entry.1 += 1;
            let n = mine().count() as u32;
            let l: f64 = mine().map(|j| row_loss[j] as f64).sum();
            examples.push((kind, n, l));
        }
    }
    let accuracy = right
        .into_iter()
        .map(|(k, (r, n))| (k, r as f64 / n.max(1) as f64))
        .collect();
    let mut per: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for (k, n, l) in &examples {
        let e = per.entry(k.clone()).or_default();
        e.0 += l;
        e.1 += *n as u64;
    }
    let losses = per
        .into_iter()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(k, (l, n))| (k, l / n as f64))
        .collect();
    Ok(HeldOut {
        accuracy,
        loss: loss_sum / loss_n.max(1) as f64,
        losses,
        examples,
    })
}
