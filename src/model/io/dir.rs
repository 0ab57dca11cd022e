//! Our model directories: `config.json`, `model.safetensors`, `tokenizer.json`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::{hf_fuyu, io_err as io, parse_weights, safetensors_bytes, CheckpointError};
use crate::fusion::audio::AudioConfig;
use crate::fusion::image::ImageConfig;
use crate::fusion::text::TextTokenizer;
use crate::model::config::ModelConfig;
use crate::model::design::Design;
use crate::model::Model;

/// Everything in `config.json`: the decoder and how inputs are tokenised.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelDirConfig {
    /// Model design.
    pub design: Design,
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
    pub model: Model,
    /// The text tokenizer.
    pub tokenizer: TextTokenizer,
    /// sha256 of `model.safetensors`, hex (identity for caches).
    pub weights_sha256: String,
    /// Where prompts put `<bos>`: first (our models) or after the leading images (HF Fuyu).
    pub bos: crate::fusion::BosPlacement,
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
    if hf_fuyu::is_hf_fuyu_json(bytes) {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| config_err(e.to_string()))?;
        return hf_fuyu::HfFuyuConfig::from_json(&v)
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
    if !Design::OURS.contains(&cfg.design) {
        // `hf-fuyu` names a HF directory's own config.json, never ours.
        return Err(config_err(format!(
            "unknown design {:?} (expected one of {:?})",
            cfg.design.name(),
            Design::OURS.map(Design::name)
        )));
    }
    cfg.design
        .check(cfg.model.bolt.as_ref())
        .map_err(config_err)?;
    Ok(cfg)
}

/// Loads a model directory onto `device` in f32 (ours, or a HF Fuyu directory).
pub fn load_dir(dir: &Path, device: &Device) -> Result<LoadedModel, CheckpointError> {
    if hf_fuyu::is_hf_fuyu_dir(dir) {
        return hf_fuyu::load_hf_fuyu(dir, device, DType::F32);
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
    let model = Model::new(&config.model, vb).map_err(|e| werr(e.to_string()))?;
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
    crate::io::atomic_write(&wpath, &bytes)?;
    let cpath = dir.join("config.json");
    let json = serde_json::to_vec_pretty(config).map_err(|e| CheckpointError::Config {
        path: cpath.clone(),
        msg: e.to_string(),
    })?;
    crate::io::atomic_write(&cpath, &json)?;
    let tpath = dir.join("tokenizer.json");
    tokenizer
        .save(&tpath)
        .map_err(|e| CheckpointError::Tokenizer {
            path: tpath.clone(),
            msg: e.to_string(),
        })?;
    Ok(())
}
