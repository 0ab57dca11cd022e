//! The training loop: a run from its settings to a model directory, with periodic logs,
//! held-out evals and checkpoints, resumable at any checkpoint.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Var};
use candle_nn::VarMap;

use super::checkpoint::{self, check_resume};
use super::data::{Example, Factory, Source};
use super::optim::{lr_at, AdamW};
use super::{
    component, evaluate, init_model, io_err, named_vars, step, LogLine, LossWindow, TrainConfig,
    TrainError, TrainState, COMPONENTS,
};
use crate::fusion::TextTokenizer;
use crate::model::io::save_dir;
use crate::model::Model;

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

/// The files a training run writes into its directory, other than `tokenizer.json` (which the
/// caller may have written for this run).
pub const RUN_FILES: [&str; 7] = [
    "train.jsonl",
    "run.json",
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
    check_sizes(cfg, &tokenizer)?;
    if ctl.resume {
        // Before any work, and without creating `out`.
        check_resume(out, cfg)?;
    } else {
        refuse_own_output(cfg, out)?;
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        clear_run(out)?;
        // The run's settings from its first step, for whoever watches it (the dashboard's live
        // view: total steps for the ETA, the model for its size).
        let settings = serde_json::to_vec_pretty(cfg).unwrap_or_default();
        crate::io::atomic_write(&out.join("run.json"), &settings)?;
    }
    let (model, vm) = init_model(&cfg.model, cfg.seed, &device)?;
    for f in cfg.freeze.iter().chain(&cfg.init_parts) {
        if !COMPONENTS.contains(&f.as_str()) {
            return Err(TrainError::UnknownComponent { name: f.clone() });
        }
    }
    if !ctl.resume {
        checkpoint::warm_start(cfg, &vm)?;
    }
    let mut opt = optimiser(cfg, &vm)?;
    let threads = crate::kernels::num_threads();
    let state = if ctl.resume {
        checkpoint::resume(out, cfg, &vm, &mut opt)?
    } else {
        TrainState {
            flops: Some(0.0),
            ..TrainState::default()
        }
    };
    let (components, _) = super::flops::component_params_of(&vm);
    let tok = Arc::new(tokenizer);
    let (factory, eval_sets) = data_streams(cfg, tok.clone())?;
    let run = Run {
        cfg,
        out,
        ctl,
        vars: opt.vars(),
        model,
        vm,
        opt,
        factory,
        eval_sets,
        pad: tok.specials.pad,
        threads,
        log: RunLog::open(out.join("train.jsonl"))?,
        state,
        components,
    };
    let (state, vm, last_eval) = run.run()?;
    if state.step == cfg.steps {
        save_dir(out, &cfg.model, &vm, DType::F32, &tok)?;
    }
    Ok(TrainSummary {
        state,
        eval: last_eval,
    })
}

/// Refuses a run of no steps or batches, or a tokenizer larger than the model's vocabulary.
fn check_sizes(cfg: &TrainConfig, tokenizer: &TextTokenizer) -> Result<(), TrainError> {
    if cfg.batch_size == 0 || cfg.steps == 0 {
        return Err(TrainError::NoSteps);
    }
    if tokenizer.vocab_size() > cfg.model.model.vocab_size {
        return Err(TrainError::VocabTooSmall {
            tokenizer: tokenizer.vocab_size(),
            model: cfg.model.model.vocab_size,
        });
    }
    Ok(())
}

/// A fresh run clears `out`: it must not be where its starting weights come from.
fn refuse_own_output(cfg: &TrainConfig, out: &Path) -> Result<(), TrainError> {
    let same = |p: &Path| std::fs::canonicalize(p).ok();
    for from in [&cfg.init_from, &cfg.init_encoder, &cfg.init_audio_encoder]
        .into_iter()
        .flatten()
    {
        let from_dir = if from.is_dir() {
            from.as_path()
        } else {
            from.parent().unwrap_or(from)
        };
        if same(from_dir).is_some() && same(from_dir) == same(out) {
            return Err(TrainError::InitFromOutput { path: from.clone() });
        }
    }
    Ok(())
}

/// AdamW over the variables of `vm` that are not frozen.
fn optimiser(cfg: &TrainConfig, vm: &VarMap) -> Result<AdamW, TrainError> {
    let trainable: Vec<(String, Var)> = named_vars(vm)
        .into_iter()
        .filter(|(n, _)| !cfg.freeze.iter().any(|f| f == component(n)))
        .collect();
    if trainable.is_empty() {
        return Err(TrainError::NothingToTrain {
            freeze: cfg.freeze.clone(),
        });
    }
    Ok(AdamW::new(trainable, cfg.optim.clone()))
}

/// The training batches and the held-out eval batches of `cfg`.
///
/// Synthetic data: the held-out eval uses another seed of the generators. A dataset folder:
/// the last 5% of its records (at least one, when there are two or more) are held out of
/// training and used for the eval.
fn data_streams(
    cfg: &TrainConfig,
    tok: Arc<TextTokenizer>,
) -> Result<(Factory, Vec<Vec<Example>>), TrainError> {
    let builder = cfg.model.builder(tok);
    let (source, eval_source) = match (&cfg.data, &cfg.data_dir) {
        (Some(d), _) => (Source::Synthetic(d.clone()), None),
        (None, Some(dir)) => {
            let p = dir.join("train.jsonl");
            let mut records = mmlab_datasets::load_train(&p)?;
            if records.is_empty() {
                return Err(TrainError::NoRecords { path: p });
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
    let eval_seed = cfg.eval_seed.unwrap_or(cfg.seed ^ 0x0000_E7A1_5EED);
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
    Ok((factory, eval_sets))
}

/// `train.jsonl`, appended to line by line.
struct RunLog {
    path: PathBuf,
    file: std::fs::File,
}

impl RunLog {
    fn open(path: PathBuf) -> Result<Self, TrainError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Self { path, file })
    }

    fn write(&mut self, line: &LogLine) -> Result<(), TrainError> {
        let s = serde_json::to_string(line).unwrap_or_default();
        writeln!(self.file, "{s}")
            .and_then(|_| self.file.flush())
            .map_err(io_err(&self.path))
    }
}

/// A run being trained: the model, its optimiser, data and log, and its progress.
struct Run<'a> {
    cfg: &'a TrainConfig,
    out: &'a Path,
    ctl: &'a RunControl<'a>,
    model: Model,
    vm: VarMap,
    opt: AdamW,
    vars: Vec<Var>,
    factory: Factory,
    eval_sets: Vec<Vec<Example>>,
    pad: u32,
    /// Threads a batch is sharded over.
    threads: usize,
    log: RunLog,
    state: TrainState,
    /// Matmul parameters per component, for counting FLOPs.
    components: std::collections::BTreeMap<&'static str, usize>,
}

/// What one optimiser step did.
struct StepDone {
    loss: f32,
    lr: f64,
    grad_norm: f64,
    /// Real (unpadded) tokens of the batch.
    tokens: u64,
    /// Tokens the loss saw.
    targets: u64,
    /// Training FLOPs of the step, as counted (see [`super::flops`]).
    flops: f64,
}

impl Run<'_> {
    /// Steps until the end of the run (or `ctl.stop_after`), logging, evaluating and
    /// checkpointing as `cfg` says; returns the final state, the weights and the last eval.
    fn run(mut self) -> Result<(TrainState, VarMap, BTreeMap<String, f64>), TrainError> {
        let cfg = self.cfg;
        let t0 = Instant::now();
        let secs0 = self.state.seconds;
        // Throughput is wall-clock: measured over this process's steps only.
        let (mut window_start, mut tps_tokens) = (Instant::now(), 0u64);
        let mut last_eval = BTreeMap::new();
        let mut last_good = self.state.step;
        while self.state.step < cfg.steps {
            let d = self.step(last_good)?;
            let state = &mut self.state;
            state.step += 1;
            state.tokens += d.tokens;
            state.target_tokens += d.targets;
            state.flops = state.flops.map(|f| f + d.flops);
            state.adam_t = self.opt.t;
            state.seconds = secs0 + t0.elapsed().as_secs_f64();
            state.window.loss_sum += d.loss as f64;
            state.window.steps += 1;
            tps_tokens += d.tokens;
            let tps = tps_tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
            (self.ctl.progress)(state.step, cfg.steps, d.loss as f64, tps);
            let done = state.step == cfg.steps;
            if state.step.is_multiple_of(cfg.log_every.max(1)) || done {
                let line = LogLine {
                    loss: Some(state.window.loss_sum / state.window.steps as f64),
                    lr: Some(d.lr),
                    grad_norm: Some(d.grad_norm),
                    tokens_per_s: Some(tps),
                    ..LogLine::at(state)
                };
                state.window = LossWindow::default();
                self.log.write(&line)?;
                (window_start, tps_tokens) = (Instant::now(), 0);
            }
            if (cfg.eval_every > 0 && self.state.step.is_multiple_of(cfg.eval_every)) || done {
                last_eval = self.eval()?;
            }
            let stop_here = self.ctl.stop_after == Some(self.state.step);
            if (cfg.ckpt_every > 0 && self.state.step.is_multiple_of(cfg.ckpt_every))
                || done
                || stop_here
            {
                checkpoint::write_checkpoint(self.out, cfg, &self.vm, &self.opt, &self.state)?;
                last_good = self.state.step;
            }
            if stop_here {
                break;
            }
        }
        Ok((self.state, self.vm, last_eval))
    }

    /// One optimiser step on the batch of step `state.step` (`last_good`: the step of the last
    /// checkpoint, named when the loss is not finite).
    fn step(&mut self, last_good: u64) -> Result<StepDone, TrainError> {
        let cfg = self.cfg;
        let step = self.state.step;
        let lr = lr_at(step, cfg.steps, cfg.warmup, cfg.optim.lr, cfg.min_lr_ratio);
        self.opt.lr = lr;
        let examples = self.factory.batch(step)?;
        let seqs: Vec<_> = examples.into_iter().map(|e| e.seq).collect();
        let shape = super::flops::StepShape {
            patches: seqs
                .iter()
                .map(|s| s.patches.len() / s.patch_dim.max(1))
                .sum::<usize>() as f64,
            tokens: seqs.iter().map(|s| s.len()).sum::<usize>() as f64,
            frames: seqs.iter().map(|s| s.n_frames()).sum::<usize>() as f64,
        };
        let flops = super::flops::train_step_flops(&self.components, &shape, &cfg.freeze);
        let shards =
            step::collate_shards(&seqs, step::shard_count(seqs.len(), self.threads), self.pad)?;
        let step::StepGrads {
            loss,
            n_targets,
            grads,
            ..
        } = step::gradients(&self.model, &shards, &self.vars)?;
        let non_finite = |loss: f32| TrainError::NonFinite {
            step,
            loss,
            last_good,
            dir: self.out.to_path_buf(),
        };
        if !loss.is_finite() {
            return Err(non_finite(loss));
        }
        let grad_norm = self.opt.grad_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(non_finite(grad_norm as f32));
        }
        let scale = if cfg.grad_clip > 0.0 && grad_norm > cfg.grad_clip {
            cfg.grad_clip / grad_norm
        } else {
            1.0
        };
        self.opt.step(&grads, scale)?;
        let tokens: u64 = shards
            .iter()
            .flat_map(|b| &b.attention_mask)
            .map(|&m| m as u64)
            .sum();
        Ok(StepDone {
            loss,
            lr,
            grad_norm,
            tokens,
            targets: n_targets as u64,
            flops,
        })
    }

    /// The held-out eval now, logged.
    fn eval(&mut self) -> Result<BTreeMap<String, f64>, TrainError> {
        let h = evaluate(&self.model, &self.eval_sets, self.pad)?;
        self.log.write(&LogLine {
            eval: Some(h.accuracy.clone()),
            eval_loss: Some(h.loss),
            eval_losses: Some(h.losses),
            ..LogLine::at(&self.state)
        })?;
        tracing::info!(
            step = self.state.step,
            eval_loss = h.loss,
            acc = ?h.accuracy,
            "held-out eval"
        );
        Ok(h.accuracy)
    }
}
