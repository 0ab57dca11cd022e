//! Turning a `--model` argument (preset name or directory) into a loaded model.

use std::path::{Path, PathBuf};

use candle_core::DType;

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
    /// A compute dtype the model cannot load in.
    #[error("{0}: only HF Fuyu directories load in {1}; our models compute in f32")]
    Dtype(String, String),
}

/// Parses a `--dtype` value: `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(format!("unknown dtype {s:?} (expected f32, bf16 or f16)")),
    }
}

/// HF Fuyu checkpoints placed under the repository's `models/` (e.g. `models/fuyu-8b`),
/// sorted by name; `--model fuyu-8b` finds them by directory name.
pub fn hf_dirs() -> Vec<PathBuf> {
    hf_dirs_in(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// The HF Fuyu checkpoint directories directly under `root`, sorted.
pub fn hf_dirs_in(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| super::hf_fuyu::is_hf_fuyu_dir(p))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The model directory a `--model` argument names: a directory, a preset with weights, or
/// a HF Fuyu checkpoint under `models/` by name.
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
    if let Some(d) = hf_dirs()
        .into_iter()
        .find(|d| d.file_name() == Some(arg.as_ref()))
    {
        return Ok(d);
    }
    let names: Vec<&str> = presets().iter().map(|p| p.name).collect();
    Err(ResolveError::Unknown(arg.to_string(), names.join(", ")))
}

/// Loads the model a `--model` argument names onto the selected device (`--device`, default
/// the CPU).
pub fn load_model(arg: &str) -> Result<LoadedModel, ResolveError> {
    Ok(load_dir(&model_dir(arg)?, &crate::device::current())?)
}

/// Loads the model a `--model` argument names onto the selected device with weights and compute in
/// `dtype`: f32 for every model, bf16 or f16 for HF Fuyu directories.
pub fn load_model_as(arg: &str, dtype: DType) -> Result<LoadedModel, ResolveError> {
    let dir = model_dir(arg)?;
    if dtype == DType::F32 {
        return Ok(load_dir(&dir, &crate::device::current())?);
    }
    if !super::hf_fuyu::is_hf_fuyu_dir(&dir) {
        return Err(ResolveError::Dtype(
            arg.to_string(),
            format!("{dtype:?}").to_lowercase(),
        ));
    }
    Ok(super::hf_fuyu::load_hf_fuyu(
        &dir,
        &crate::device::current(),
        dtype,
    )?)
}
