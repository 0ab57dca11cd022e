//! `mmlab pretrain-encoder`: stage 0 of the bolted-on recipe, contrastive (CLIP / SigLIP)
//! pre-training of a preset's vision encoder on image–caption pairs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::presets::preset;
use crate::train::contrastive::{
    describe, pretrain, ContrastiveLoss, PretrainConfig, PretrainModality, PRETRAIN_FILES,
};
use crate::train::data::SyntheticData;
use crate::train::tokenizer::synthetic_tokenizer;
use crate::train::TrainError;

/// Arguments of `mmlab pretrain-encoder`.
#[derive(Clone, Debug, clap::Args)]
pub struct PretrainArgs {
    /// Bolted-on preset whose vision encoder to train (`llava-small`, `qformer-small`, ...).
    #[arg(long)]
    pub model: String,
    /// The loss.
    #[arg(long, value_enum, default_value = "siglip")]
    pub loss: LossArg,
    /// Output folder (`encoder.safetensors`, `pretrain.json`, `train.jsonl`); a non-empty one
    /// is refused unless `--overwrite`.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace what a non-empty `--out` holds.
    #[arg(long)]
    pub overwrite: bool,
    /// Optimiser steps.
    #[arg(long, default_value_t = 1500)]
    pub steps: u64,
    /// Image–caption pairs per step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed of initialisation and data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out pairs for the retrieval eval.
    #[arg(long, default_value_t = 256)]
    pub eval_pairs: usize,
    /// Image–caption pairs (the vision encoder) or sound–caption pairs (the audio encoder of
    /// an `-audio-` preset).
    #[arg(long, value_enum, default_value = "image")]
    pub modality: ModalityArg,
}

/// `--loss`: the command line's spelling of [`ContrastiveLoss`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LossArg {
    /// CLIP: symmetric cross-entropy over the similarity matrix, learned temperature.
    Clip,
    /// SigLIP: a sigmoid loss on every pair, learned temperature and bias.
    Siglip,
}

impl From<LossArg> for ContrastiveLoss {
    fn from(a: LossArg) -> Self {
        match a {
            LossArg::Clip => ContrastiveLoss::Clip,
            LossArg::Siglip => ContrastiveLoss::Siglip,
        }
    }
}

/// `--modality`: the command line's spelling of [`PretrainModality`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModalityArg {
    /// The vision encoder, on image–caption pairs.
    Image,
    /// The audio encoder, on sound–caption pairs.
    Audio,
}

impl From<ModalityArg> for PretrainModality {
    fn from(a: ModalityArg) -> Self {
        match a {
            ModalityArg::Image => PretrainModality::Image,
            ModalityArg::Audio => PretrainModality::Audio,
        }
    }
}

/// Runs the pre-training and prints held-out retrieval before and after.
pub fn run(a: &PretrainArgs) -> anyhow::Result<()> {
    let p = preset(&a.model).ok_or_else(|| TrainError::UnknownPreset(a.model.clone()))?;
    if p.config.model.bolt.is_none() {
        bail!(
            "{} is a native model: it has no vision encoder to pre-train (pick a bolted-on preset)",
            a.model
        );
    }
    // The output folder is checked before any work.
    crate::cli::train::check_out_dir(&a.out, a.overwrite)?;
    if a.overwrite {
        // No stale encoder beside a new, possibly unfinished, log.
        crate::io::remove_all(&a.out, &PRETRAIN_FILES).context("removing the earlier run")?;
    }
    let data = SyntheticData::sized_for(&p.config.image);
    let tok = synthetic_tokenizer(&data, a.seed, &p.config.image)?;
    let cfg = PretrainConfig {
        model: p.config.clone(),
        data,
        loss: a.loss.into(),
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        eval_pairs: a.eval_pairs,
        modality: a.modality.into(),
    };
    let bar = ProgressBar::new(a.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = |s: u64, _t: u64, loss: f64| {
        bar.set_position(s);
        bar.set_message(format!("loss {loss:.4}"));
    };
    let r = pretrain(&cfg, &tok, &a.out, &progress)
        .with_context(|| format!("pre-training into {}", a.out.display()))?;
    bar.finish();
    println!(
        "{:?} pre-training of {}'s {} encoder: {} steps x {} pairs in {:.1} s, final loss {:.4}",
        cfg.loss,
        a.model,
        match cfg.modality {
            PretrainModality::Image => "vision",
            PretrainModality::Audio => "audio",
        },
        a.steps,
        a.batch_size,
        r.seconds,
        r.final_loss
    );
    println!("held-out retrieval ({} pairs)", r.after.pairs);
    for (k, v) in describe(&r.before) {
        println!(
            "  {k:<10} before {v:.3}  after {:.3}",
            describe(&r.after)[k]
        );
    }
    println!(
        "encoder weights: {}",
        a.out.join("encoder.safetensors").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    /// The command line spells each value as the library's serde name (ablation files) does.
    #[test]
    fn the_flag_spellings_are_the_library_names() {
        for a in LossArg::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_string();
            let lib: ContrastiveLoss = serde_json::from_value(name.into()).unwrap();
            assert_eq!(lib, ContrastiveLoss::from(*a));
        }
        for a in ModalityArg::value_variants() {
            let name = a.to_possible_value().unwrap().get_name().to_string();
            let lib: PretrainModality = serde_json::from_value(name.into()).unwrap();
            assert_eq!(lib, PretrainModality::from(*a));
        }
    }
}
