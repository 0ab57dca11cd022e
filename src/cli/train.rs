//! `mmlab train`: train a preset (or resume a run) into a model directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::presets::parameter_count;
use crate::train::recipe::{preset_config, RecipeOverrides};
use crate::train::tokenizer::run_tokenizer;
use crate::train::{check_resume, train, RunControl, TrainConfig};

/// Arguments of `mmlab train`.
#[derive(Clone, Debug, clap::Args)]
pub struct TrainArgs {
    /// Preset to train (`mmlab models` lists them: `fuyu-small`, `llava-small`, ...).
    #[arg(long)]
    pub model: String,
    /// A dataset folder (from `mmlab data`) to train on; default: samples generated on the fly.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output model directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimiser steps (default: the preset's recipe).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sequences per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of initialisation and data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue the run in `--out` from its last checkpoint (refused when its settings differ).
    #[arg(long)]
    pub resume: bool,
    /// Replace the run in a non-empty `--out` (without it, or `--resume`, a non-empty
    /// `--out` is refused).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Warm start: begin from the weights (and tokenizer) of this model directory, with a
    /// fresh optimiser and learning-rate schedule.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 500)]
    pub ckpt_every: u64,
    /// Held-out eval every N steps.
    #[arg(long, default_value_t = 500)]
    pub eval_every: u64,
    /// Components to keep frozen, comma-separated: `encoder`, `connector`, `decoder`
    /// (stage 1 alignment of a bolted design: `--freeze encoder,decoder`).
    #[arg(long, value_delimiter = ',')]
    pub freeze: Vec<String>,
    /// With `--init`: copy only these components, comma-separated (e.g. `decoder` to start a
    /// bolted design from a native model's decoder).
    #[arg(long, value_delimiter = ',')]
    pub init_parts: Vec<String>,
    /// Load the vision encoder from a `mmlab pretrain-encoder` output folder.
    #[arg(long)]
    pub init_encoder: Option<PathBuf>,
    /// Load the audio encoder from a `mmlab pretrain-encoder --modality audio` output folder.
    #[arg(long)]
    pub init_audio_encoder: Option<PathBuf>,
    /// Text-only decoder pre-training: every image or sound is replaced by its caption in words.
    #[arg(long)]
    pub text_only: bool,
    /// Stop after this step, leaving a checkpoint to resume from.
    #[arg(long)]
    pub stop_after: Option<u64>,
}

/// Builds the run configuration from the arguments: the preset's recipe
/// ([`preset_config`]) with what the arguments set.
pub fn config(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let over = RecipeOverrides {
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
    };
    let base = preset_config(
        &args.model,
        args.data.clone(),
        args.text_only,
        over,
        args.seed,
    )?;
    if args.text_only && args.data.is_some() {
        bail!("--text-only works on the generated data, not with --data");
    }
    Ok(TrainConfig {
        eval_every: args.eval_every,
        ckpt_every: args.ckpt_every,
        init_from: args.init.clone(),
        freeze: args.freeze.clone(),
        init_parts: args.init_parts.clone(),
        init_encoder: args.init_encoder.clone(),
        init_audio_encoder: args.init_audio_encoder.clone(),
        ..base
    })
}

/// Checks an output directory before any work: it must be writable, and a non-empty one is
/// refused unless `overwrite` (what is in it would be lost). Creates it when missing.
pub fn check_out_dir(out: &Path, overwrite: bool) -> anyhow::Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {}: exists and is not a directory", out.display());
    }
    if out.is_dir() && !overwrite {
        let mut names: Vec<String> = std::fs::read_dir(out)
            .with_context(|| format!("--out {}: reading the directory", out.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !names.is_empty() {
            names.sort();
            let more = names.len().saturating_sub(4);
            names.truncate(4);
            bail!(
                "--out {} is not empty ({}{}): pass --resume to continue the run in it, --overwrite to replace it, or pick another directory",
                out.display(),
                names.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            );
        }
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: creating it", out.display()))?;
    check_writable(out)
}

/// Fails unless a file can be created in the directory `dir`.
pub fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".mmlab-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("--out {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).with_context(|| format!("removing {}", probe.display()))
}

/// Runs training with a progress bar.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let cfg = config(args)?;
    // The output directory is checked before any work.
    if args.resume {
        check_resume(&args.out, &cfg)?;
        check_writable(&args.out)?;
    } else {
        check_out_dir(&args.out, args.overwrite)?;
    }
    let tok = run_tokenizer(&cfg, &args.out, args.resume)?;
    tok.save(&args.out.join("tokenizer.json"))?;
    eprintln!(
        "training {} ({} parameters) for {} steps x {} sequences into {}",
        args.model,
        parameter_count(&cfg.model.model),
        cfg.steps,
        cfg.batch_size,
        args.out.display()
    );
    let bar = ProgressBar::new(cfg.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = |step: u64, _total: u64, loss: f64, tps: f64| {
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4}  {tps:.0} tok/s"));
    };
    let ctl = RunControl {
        resume: args.resume,
        progress: &progress,
        stop_after: args.stop_after,
    };
    let summary = train(&cfg, tok, &args.out, &ctl)?;
    bar.finish();
    let cmd: Vec<String> = std::env::args().collect();
    crate::io::atomic_write(
        &args.out.join("COMMAND"),
        format!("{}\n", cmd.join(" ")).as_bytes(),
    )
    .with_context(|| format!("writing {}", args.out.join("COMMAND").display()))?;
    eprintln!(
        "step {} / {}: {} tokens in {:.1} s; held-out answer accuracy {:?}",
        summary.state.step, cfg.steps, summary.state.tokens, summary.state.seconds, summary.eval
    );
    Ok(())
}
