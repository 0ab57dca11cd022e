//! Turning a `--model` argument (preset name or directory) into a loaded model.

use std::path::{Path, PathBuf};

use super::checkpoint::{load_dir, CheckpointError, LoadedModel};
use super::presets::{preset, presets, shipped_dir};

/// Errors resolving `--model`.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Neither a directory with `config.json` nor a known preset.
    #[error("no model {0:?}: not a directory with config.json, and not a preset (presets: {1})")]
    Unknown(String, String),
    /// A preset without trained weights in this checkout.
    #[error("preset {0} has no trained weights here (looked in {1}); train it with `mmlab train --model {0} --out DIR` and pass --model DIR")]
    Untrained(String, PathBuf),
    /// The directory could not be loaded.
    #[error(transparent)]
    Load(#[from] CheckpointError),
}

/// The model directory a `--model` argument names.
pub fn model_dir(arg: &str) -> Result<PathBuf, ResolveError> {
    let p = Path::new(arg);
    if p.join("config.json").is_file() {
        return Ok(p.to_path_buf());
    }
    if preset(arg).is_some() {
        return shipped_dir(arg).ok_or_else(|| {
            ResolveError::Untrained(
                arg.to_string(),
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("models")
                    .join(arg),
            )
        });
    }
    let names: Vec<&str> = presets().iter().map(|p| p.name).collect();
    Err(ResolveError::Unknown(arg.to_string(), names.join(", ")))
}

/// Loads the model a `--model` argument names onto the selected device (`--device`, default
/// the CPU).
pub fn load_model(arg: &str) -> Result<LoadedModel, ResolveError> {
    Ok(load_dir(&model_dir(arg)?, &crate::device::current())?)
}
