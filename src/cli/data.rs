//! `mmlab data`: write procedural datasets and rebuild POPE from COCO annotations.

use std::path::PathBuf;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use mmlab_datasets::{
    write_pope_from_coco, write_shapes, write_sounds, PopeConfig, SceneConfig, ShapesDatasetConfig,
    SoundsDatasetConfig,
};

/// Arguments of `mmlab data`.
#[derive(Clone, Debug, clap::Args)]
pub struct DataArgs {
    /// Which dataset to write.
    #[command(subcommand)]
    pub kind: DataKind,
}

/// Dataset kinds.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum DataKind {
    /// Coloured-shape scenes with POPE, counting, CHAIR and training questions.
    Shapes {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Images in the POPE split (3 yes + 3 no questions each, per split).
        #[arg(long, default_value_t = 500)]
        images: usize,
        /// Images in the training mixture.
        #[arg(long, default_value_t = 2000)]
        train_images: usize,
        /// Generator preset: small (48x48 aligned), medium, free-small, free-medium, occlusion-medium.
        #[arg(long, default_value = "small")]
        scenes: String,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Sound clips with audio POPE, counting and training questions.
    Sounds {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Clips in the POPE split.
        #[arg(long, default_value_t = 500)]
        clips: usize,
        /// Clips in the training mixture.
        #[arg(long, default_value_t = 2000)]
        train_clips: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Rebuild POPE's three splits from a COCO instances file.
    Pope {
        /// COCO `instances_*.json`.
        #[arg(long)]
        annotations: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Images to sample.
        #[arg(long, default_value_t = 500)]
        images: usize,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn bar(total: u64) -> ProgressBar {
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} items  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// Writes the dataset and prints its counts.
pub fn run(args: &DataArgs) -> anyhow::Result<()> {
    let manifest = match &args.kind {
        DataKind::Shapes {
            out,
            images,
            train_images,
            scenes,
            seed,
        } => {
            let Some(scene) = SceneConfig::preset(scenes) else {
                bail!("unknown scene preset {scenes:?} (small, medium, free-small, free-medium, occlusion-medium)");
            };
            let cfg = ShapesDatasetConfig {
                seed: *seed,
                scene,
                pope_images: *images,
                train_images: *train_images,
                ..ShapesDatasetConfig::default()
            };
            let b = bar(cfg.total_items());
            let m = write_shapes(out, &cfg, &|n| b.inc(n))
                .with_context(|| format!("writing {}", out.display()))?;
            b.finish();
            m
        }
        DataKind::Sounds {
            out,
            clips,
            train_clips,
            seed,
        } => {
            let cfg = SoundsDatasetConfig {
                seed: *seed,
                pope_clips: *clips,
                train_clips: *train_clips,
                ..SoundsDatasetConfig::default()
            };
            let b = bar(cfg.total_items());
            let m = write_sounds(out, &cfg, &|n| b.inc(n))
                .with_context(|| format!("writing {}", out.display()))?;
            b.finish();
            m
        }
        DataKind::Pope {
            annotations,
            out,
            images,
            seed,
        } => {
            let cfg = PopeConfig {
                images: *images,
                seed: *seed,
                ..PopeConfig::default()
            };
            let b = bar(*images as u64);
            let m = write_pope_from_coco(annotations, out, &cfg, &|n| b.inc(n))
                .with_context(|| format!("rebuilding POPE from {}", annotations.display()))?;
            b.finish();
            m
        }
    };
    for (k, v) in &manifest.counts {
        println!("{k:<28} {v}");
    }
    Ok(())
}
