//! The per-preset training recipes, and the run settings `mmlab train` and `mmlab bench`
//! start from.

use std::path::PathBuf;

use super::data::SyntheticData;
use super::{TrainConfig, TrainError};
use crate::model::presets::preset;

/// How a preset is trained by default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    /// Optimiser steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps (at most a tenth of the run, see [`Recipe::warmup_for`]).
    pub warmup: u64,
}

impl Recipe {
    /// The warm-up of a run of `steps` steps: the recipe's, but at most a tenth of the run.
    pub fn warmup_for(&self, steps: u64) -> u64 {
        self.warmup.min(steps / 10)
    }
}

/// The default recipe of the preset `name`, by its size suffix (`-tiny`, `-small`, else larger).
pub fn recipe(name: &str) -> Recipe {
    let (steps, batch_size, lr, warmup) = match name.rsplit('-').next() {
        Some("tiny") => (200, 32, 3e-3, 20),
        Some("small") => (7000, 64, 4e-3, 200),
        _ => (20000, 64, 1e-3, 500),
    };
    Recipe {
        steps,
        batch_size,
        lr,
        warmup,
    }
}

/// The settings of a recipe a run may override (`None` keeps the recipe's).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RecipeOverrides {
    /// Optimiser steps.
    pub steps: Option<u64>,
    /// Sequences per step.
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    pub lr: Option<f64>,
}

/// A run of the preset `name` with its recipe (as overridden by `over`) and seed `seed`: on
/// the dataset folder `data_dir`, else on scenes generated on the fly at the preset's image
/// size (`text_only`: given as captions in words). The other settings are
/// [`TrainConfig::new`]'s defaults.
pub fn preset_config(
    name: &str,
    data_dir: Option<PathBuf>,
    text_only: bool,
    over: RecipeOverrides,
    seed: u64,
) -> Result<TrainConfig, TrainError> {
    let p = preset(name).ok_or_else(|| TrainError::UnknownPreset(name.to_string()))?;
    let r = recipe(p.name);
    let steps = over.steps.unwrap_or(r.steps);
    let mut data = SyntheticData::sized_for(&p.config.image);
    data.text_only = text_only;
    Ok(TrainConfig {
        data: data_dir.is_none().then_some(data),
        data_dir,
        warmup: r.warmup_for(steps),
        ..TrainConfig::new(
            p.config,
            steps,
            over.batch_size.unwrap_or(r.batch_size),
            over.lr.unwrap_or(r.lr),
            seed,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_follow_the_size_suffix_and_warmup_is_at_most_a_tenth() {
        assert_eq!(recipe("fuyu-tiny").steps, 200);
        assert_eq!(recipe("llava-small").batch_size, 64);
        assert_eq!(recipe("fuyu-base").lr, 1e-3);
        let r = recipe("fuyu-small");
        assert_eq!(r.warmup_for(7000), 200);
        assert_eq!(r.warmup_for(50), 5);
    }

    #[test]
    fn a_preset_run_takes_the_recipe_unless_overridden() {
        let c = preset_config("fuyu-tiny", None, false, RecipeOverrides::default(), 3).unwrap();
        assert_eq!((c.steps, c.batch_size, c.warmup, c.seed), (200, 32, 20, 3));
        assert_eq!(c.optim.lr, 3e-3);
        let over = RecipeOverrides {
            steps: Some(30),
            batch_size: Some(4),
            lr: Some(1e-3),
        };
        let c = preset_config("fuyu-tiny", None, true, over, 0).unwrap();
        assert_eq!((c.steps, c.batch_size, c.warmup), (30, 4, 3));
        assert!(c.data.unwrap().text_only);
        let e = preset_config("gpt-9", None, false, over, 0).unwrap_err();
        assert!(e.to_string().contains("unknown preset \"gpt-9\""), "{e}");
    }
}
