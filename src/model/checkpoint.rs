//! Model directories: `config.json`, `model.safetensors`, `tokenizer.json`, `train.jsonl`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::native::NativeModel;
use crate::fusion::audio::AudioConfig;
use crate::fusion::image::ImageConfig;
use crate::fusion::text::TextTokenizer;

/// Errors reading or writing a model directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written (the cause is the error's source).
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// `config.json` is not valid.
    #[error("{path}: invalid config: {msg}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
    /// The weights file is missing tensors, has wrong shapes or is not valid safetensors.
    #[error("{path}: invalid weights: {msg}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
    /// The tokenizer could not be loaded or saved.
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
}

/// Everything in `config.json`: the decoder and how inputs are tokenised.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelDirConfig {
    /// Model design (`native` for the Fuyu-style model).
    pub design: String,
    /// Preset the model was made from, if any.
    #[serde(default)]
    pub preset: Option<String>,
    /// Decoder shape.
    pub model: ModelConfig,
    /// Image patching.
    pub image: ImageConfig,
    /// Audio front-end.
    pub audio: AudioConfig,
}

/// Designs a model directory may hold.
pub const DESIGNS: [&str; 4] = ["native", "llava", "qformer", "flamingo"];

impl ModelDirConfig {
    /// The sequence builder for this model: the native layout, or a fixed number of slots
    /// per image for resampling connectors.
    pub fn builder(
        &self,
        tokenizer: std::sync::Arc<TextTokenizer>,
    ) -> crate::fusion::SequenceBuilder {
        let mut b = crate::fusion::SequenceBuilder::new(tokenizer, self.image, self.audio);
        b.image_tokens = self.model.bolt.as_ref().and_then(|x| x.image_tokens());
        if let Some(bolt) = &self.model.bolt {
            b.audio_slots = bolt.audio_slots();
        }
        b
    }
}

/// A loaded model with its tokenizer and config.
pub struct LoadedModel {
    /// The directory it came from.
    pub dir: PathBuf,
    /// Its config.
    pub config: ModelDirConfig,
    /// The network.
    pub model: NativeModel,
    /// The text tokenizer.
    pub tokenizer: TextTokenizer,
    /// sha256 of `model.safetensors`, hex (identity for caches).
    pub weights_sha256: String,
    /// Where prompts put `<bos>`: first (our models) or after the leading images (HF Fuyu).
    pub bos: crate::fusion::BosPlacement,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and validates `dir/config.json` (a HF Fuyu config is converted, see [`super::hf_fuyu`]).
pub fn read_config(dir: &Path) -> Result<ModelDirConfig, CheckpointError> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    parse_config(&bytes, &path)
}

/// Parses and validates the bytes of a `config.json` (ours or HF Fuyu's); errors name `path`.
pub fn parse_config(bytes: &[u8], path: &Path) -> Result<ModelDirConfig, CheckpointError> {
    let path = path.to_path_buf();
    let config_err = |msg: String| CheckpointError::Config {
        path: path.clone(),
        msg,
    };
    if super::hf_fuyu::is_hf_fuyu_json(bytes) {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| config_err(e.to_string()))?;
        return super::hf_fuyu::HfFuyuConfig::from_json(&v)
            .map(|c| c.dir_config())
            .map_err(config_err);
    }
    let cfg: ModelDirConfig =
        serde_json::from_slice(bytes).map_err(|e| config_err(e.to_string()))?;
    cfg.model.validate().map_err(|e| config_err(e.0))?;
    cfg.image
        .validate()
        .map_err(|e| config_err(e.to_string()))?;
    cfg.audio
        .validate()
        .map_err(|e| config_err(e.to_string()))?;
    let m = &cfg.model;
    if m.patch_dim != 0 && m.patch_dim != cfg.image.patch_dim() {
        return Err(config_err(format!(
            "model.patch_dim {} does not match image.patch {} ({} values per patch)",
            m.patch_dim,
            cfg.image.patch,
            cfg.image.patch_dim()
        )));
    }
    if m.frame_dim != 0 && m.frame_dim != cfg.audio.frame_dim() {
        return Err(config_err(format!(
            "model.frame_dim {} does not match the audio front-end ({} values per frame)",
            m.frame_dim,
            cfg.audio.frame_dim()
        )));
    }
    if !DESIGNS.contains(&cfg.design.as_str()) {
        return Err(CheckpointError::Config {
            path,
            msg: format!(
                "unknown design {:?} (expected one of {DESIGNS:?})",
                cfg.design
            ),
        });
    }
    if (cfg.design == "native") != cfg.model.bolt.is_none() {
        return Err(CheckpointError::Config {
            path,
            msg: format!(
                "design {:?} does not match the model settings (a bolt section is {})",
                cfg.design,
                if cfg.model.bolt.is_some() {
                    "present"
                } else {
                    "missing"
                }
            ),
        });
    }
    Ok(cfg)
}

/// Loads a model directory onto `device` in f32 (ours, or a HF Fuyu directory).
pub fn load_dir(dir: &Path, device: &Device) -> Result<LoadedModel, CheckpointError> {
    if super::hf_fuyu::is_hf_fuyu_dir(dir) {
        return super::hf_fuyu::load_hf_fuyu(dir, device, DType::F32);
    }
    load_files(dir, &|p: &Path| std::fs::read(p), device)
}

/// Loads one of our models in f32 from the files `read` gives for paths under `dir`: a
/// directory on disk, or a model compiled into the binary (`dir` then only names it in errors).
pub fn load_files(
    dir: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    device: &Device,
) -> Result<LoadedModel, CheckpointError> {
    let cpath = dir.join("config.json");
    let text = read(&cpath).map_err(io(&cpath))?;
    let config = parse_config(&text, &cpath)?;
    let wpath = dir.join("model.safetensors");
    let bytes = read(&wpath).map_err(io(&wpath))?;
    let weights_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let werr = |msg: String| CheckpointError::Weights {
        path: wpath.clone(),
        msg,
    };
    let tensors = parse_weights(&bytes, &wpath, device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let model = NativeModel::new(&config.model, vb).map_err(|e| werr(e.to_string()))?;
    let tpath = dir.join("tokenizer.json");
    let terr = |msg: String| CheckpointError::Tokenizer {
        path: tpath.clone(),
        msg,
    };
    let tokenizer = tokenizers::Tokenizer::from_bytes(read(&tpath).map_err(io(&tpath))?)
        .map_err(|e| terr(e.to_string()))
        .and_then(|t| {
            TextTokenizer::with_specials(t, tpath.clone()).map_err(|e| terr(e.to_string()))
        })?;
    if tokenizer.vocab_size() > config.model.vocab_size {
        return Err(CheckpointError::Config {
            path: dir.join("config.json"),
            msg: format!(
                "tokenizer has {} tokens but vocab_size is {}",
                tokenizer.vocab_size(),
                config.model.vocab_size
            ),
        });
    }
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        config,
        model,
        tokenizer,
        weights_sha256,
        bos: crate::fusion::BosPlacement::First,
    })
}

/// Reads the bytes of a `model.safetensors` file into f32 tensors on `device`; errors name `path`.
pub fn parse_weights(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let werr = |msg: String| CheckpointError::Weights {
        path: path.to_path_buf(),
        msg,
    };
    let tensors =
        candle_core::safetensors::load_buffer(bytes, device).map_err(|e| werr(e.to_string()))?;
    tensors
        .into_iter()
        .map(|(k, v)| v.to_dtype(DType::F32).map(|v| (k, v)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| werr(e.to_string()))
}

/// Reads a `.safetensors` file into f32 tensors on `device`; errors name `path`.
pub fn read_weights(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse_weights(&bytes, path, device)
}

/// Writes `bytes` to `path` atomically (temp file + rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Serialises `vars` (sorted by name) as safetensors in `dtype`.
pub fn safetensors_bytes(vars: &VarMap, dtype: DType) -> Result<Vec<u8>, String> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| "variable map lock poisoned".to_string())?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let t = data[name]
            .as_tensor()
            .to_dtype(dtype)
            .map_err(|e| e.to_string())?;
        tensors.push((name.clone(), t));
    }
    tensors_to_bytes(&tensors)
}

/// Serialises named tensors as safetensors bytes.
pub fn tensors_to_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, String> {
    fn le<T: candle_core::WithDType>(
        t: &Tensor,
        f: impl Fn(T) -> Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        Ok(t.to_vec1::<T>()
            .map_err(|e| e.to_string())?
            .into_iter()
            .flat_map(f)
            .collect())
    }
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let flat = t.flatten_all().map_err(|e| e.to_string())?;
        let (bytes, dt) = match t.dtype() {
            DType::F32 => (
                le::<f32>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::F32,
            ),
            DType::F16 => (
                le::<half::f16>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::F16,
            ),
            DType::BF16 => (
                le::<half::bf16>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::BF16,
            ),
            DType::U32 => (
                le::<u32>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::U32,
            ),
            DType::I64 => (
                le::<i64>(&flat, |v| v.to_le_bytes().to_vec())?,
                safetensors::Dtype::I64,
            ),
            DType::U8 => (le::<u8>(&flat, |v| vec![v])?, safetensors::Dtype::U8),
            other => return Err(format!("cannot save dtype {other:?}")),
        };
        owned.push((name.clone(), bytes, t.dims().to_vec(), dt));
    }
    let views = owned
        .iter()
        .map(|(n, b, s, d)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    safetensors::tensor::serialize(views, None).map_err(|e| e.to_string())
}

/// Writes a complete model directory (config, weights, tokenizer) atomically file by file.
pub fn save_dir(
    dir: &Path,
    config: &ModelDirConfig,
    vars: &VarMap,
    dtype: DType,
    tokenizer: &TextTokenizer,
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let wpath = dir.join("model.safetensors");
    let bytes = safetensors_bytes(vars, dtype).map_err(|msg| CheckpointError::Weights {
        path: wpath.clone(),
        msg,
    })?;
    atomic_write(&wpath, &bytes)?;
    let cpath = dir.join("config.json");
    let json = serde_json::to_vec_pretty(config).map_err(|e| CheckpointError::Config {
        path: cpath.clone(),
        msg: e.to_string(),
    })?;
    atomic_write(&cpath, &json)?;
    let tpath = dir.join("tokenizer.json");
    tokenizer
        .save(&tpath)
        .map_err(|e| CheckpointError::Tokenizer {
            path: tpath.clone(),
            msg: e.to_string(),
        })?;
    Ok(())
}
