//! Turning a `--model` argument (shipped preset, directory, or a name under `<root>/models`)
//! into a loaded model.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device};

use super::io::{load_dir, load_files, CheckpointError, LoadedModel};
use super::presets::{embedded, preset, presets, EmbeddedModel};

/// Errors resolving `--model`.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Not a model directory, not under `<root>/models`, and not a known preset.
    #[error("no model {0:?}: not a directory with config.json, not in {1}, and not a preset (presets: {2})")]
    Unknown(String, PathBuf, String),
    /// A preset without weights in this binary or under `<root>/models`.
    #[error("preset {0} has no trained weights here (looked in {1}); train it with `mmlab train --model {0} --out DIR` and pass --model DIR")]
    Untrained(String, PathBuf),
    /// The directory could not be loaded.
    #[error(transparent)]
    Load(#[from] CheckpointError),
    /// A compute dtype the model cannot load in.
    #[error("{0}: only HF Fuyu directories load in {1}; our models compute in f32")]
    Dtype(String, String),
}

/// Where the model a `--model` argument names comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// A shipped model compiled into this binary (see [`super::presets::EMBEDDED`]).
    Embedded(&'static EmbeddedModel),
    /// A model directory on disk (ours or HF Fuyu).
    Dir(PathBuf),
}

impl ModelSource {
    /// Where it comes from, for people: `embedded` or the directory.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Embedded(_) => "embedded".into(),
            ModelSource::Dir(d) => d.display().to_string(),
        }
    }
}

static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Makes `root` the workspace folder for the rest of the process (the CLI's `--root`; once).
pub fn set_root(root: PathBuf) {
    let _ = ROOT.set(root);
}

/// The workspace folder: `explicit` (`--root`), else `home` (`$MMLAB_HOME`, if not empty), else
/// the working directory (`.`).
pub fn choose_root(explicit: Option<PathBuf>, home: Option<OsString>) -> PathBuf {
    explicit
        .or_else(|| home.filter(|h| !h.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The workspace folder whose `models/` bare `--model` names are looked up in: `--root`, else
/// `$MMLAB_HOME`, else the working directory.
pub fn root() -> PathBuf {
    ROOT.get()
        .cloned()
        .unwrap_or_else(|| choose_root(None, std::env::var_os("MMLAB_HOME")))
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

/// The model directories (ours or HF Fuyu: a `config.json` inside) directly under
/// `<root>/models`, sorted; `--model NAME` finds `<root>/models/NAME`.
pub fn model_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("models"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The HF Fuyu checkpoint directories directly under `root`, sorted.
pub fn hf_dirs_in(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| super::io::hf_fuyu::is_hf_fuyu_dir(p))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Whether `arg` is a bare name (no path separator, not `.` or `..`) rather than a path.
fn is_bare_name(arg: &str) -> bool {
    !arg.is_empty()
        && !arg.contains('/')
        && !arg.contains(std::path::MAIN_SEPARATOR)
        && arg != "."
        && arg != ".."
}

/// Where the model a `--model` argument names comes from, in this order: a shipped preset
/// compiled into the binary (a bare name like `fuyu-small`), a model directory (any path, also
/// a relative one; `./fuyu-small` picks a directory over the shipped copy), then
/// `<root>/models/<name>` for a bare name.
pub fn locate_in(arg: &str, root: &Path) -> Result<ModelSource, ResolveError> {
    let bare = is_bare_name(arg);
    if bare {
        if let Some(m) = embedded(arg) {
            return Ok(ModelSource::Embedded(m));
        }
    }
    let p = Path::new(arg);
    if p.join("config.json").is_file() {
        return Ok(ModelSource::Dir(p.to_path_buf()));
    }
    let under_root = root.join("models").join(arg);
    if bare && under_root.join("config.json").is_file() {
        return Ok(ModelSource::Dir(under_root));
    }
    if bare && preset(arg).is_some() {
        return Err(ResolveError::Untrained(arg.to_string(), under_root));
    }
    let names: Vec<&str> = presets().iter().map(|p| p.name).collect();
    Err(ResolveError::Unknown(
        arg.to_string(),
        root.join("models"),
        names.join(", "),
    ))
}

/// [`locate_in`] the workspace folder ([`root`]).
pub fn locate(arg: &str) -> Result<ModelSource, ResolveError> {
    locate_in(arg, &root())
}

/// Loads a shipped model from the copy compiled into the binary, in f32 onto `device`.
pub fn load_embedded(m: &EmbeddedModel, device: &Device) -> Result<LoadedModel, CheckpointError> {
    let dir = PathBuf::from(format!("<embedded {}>", m.name));
    let read = |p: &Path| -> std::io::Result<Vec<u8>> {
        p.file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| m.file(f))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };
    load_files(&dir, &read, device)
}

/// Loads what `source` names in f32 onto `device`.
pub fn load_source(source: &ModelSource, device: &Device) -> Result<LoadedModel, ResolveError> {
    Ok(match source {
        ModelSource::Embedded(m) => load_embedded(m, device)?,
        ModelSource::Dir(d) => load_dir(d, device)?,
    })
}

/// Loads the model a `--model` argument names onto the selected device (`--device`, default
/// the CPU).
pub fn load_model(arg: &str) -> Result<LoadedModel, ResolveError> {
    load_source(&locate(arg)?, &crate::device::current())
}

/// Loads the model a `--model` argument names onto the selected device with weights and compute in
/// `dtype`: f32 for every model, bf16 or f16 for HF Fuyu directories.
pub fn load_model_as(arg: &str, dtype: DType) -> Result<LoadedModel, ResolveError> {
    let source = locate(arg)?;
    if dtype == DType::F32 {
        return load_source(&source, &crate::device::current());
    }
    let dir = match &source {
        ModelSource::Dir(d) if super::io::hf_fuyu::is_hf_fuyu_dir(d) => d,
        _ => {
            return Err(ResolveError::Dtype(
                arg.to_string(),
                format!("{dtype:?}").to_lowercase(),
            ))
        }
    };
    Ok(super::io::hf_fuyu::load_hf_fuyu(
        dir,
        &crate::device::current(),
        dtype,
    )?)
}
