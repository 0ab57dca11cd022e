//! Named model presets (`<design>-<size>`) and where their weights live.

use std::path::PathBuf;

use super::checkpoint::ModelDirConfig;
use super::config::{Activation, ModelConfig, NormKind};
use crate::fusion::{AudioConfig, ImageConfig};

/// A named model shape with its input processing.
#[derive(Clone, Debug)]
pub struct Preset {
    /// Name, e.g. `fuyu-small`.
    pub name: &'static str,
    /// One line on what it is for.
    pub about: &'static str,
    /// The configuration (vocabulary size is the BPE size the trainer builds).
    pub config: ModelDirConfig,
}

/// Vocabulary size of the BPE our presets train.
pub const PRESET_VOCAB: usize = 384;

fn native(
    name: &'static str,
    d: usize,
    layers: usize,
    heads: usize,
    ff: usize,
    patch: usize,
    image: usize,
) -> ModelDirConfig {
    let image = ImageConfig {
        patch,
        max_height: image,
        max_width: image,
    };
    let audio = AudioConfig::raw(640);
    ModelDirConfig {
        design: "native".into(),
        preset: Some(name.into()),
        model: ModelConfig {
            vocab_size: PRESET_VOCAB,
            d_model: d,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: heads,
            d_ff: ff,
            max_seq_len: 1024,
            norm: NormKind::LayerNorm,
            norm_eps: 1e-5,
            qk_norm: true,
            rope_theta: 25_000.0,
            partial_rotary_factor: 0.5,
            activation: Activation::Relu2,
            patch_dim: image.patch_dim(),
            frame_dim: audio.frame_dim(),
            tie_embeddings: false,
        },
        image,
        audio,
    }
}

/// All presets this build knows.
pub fn presets() -> Vec<Preset> {
    vec![
        Preset {
            name: "fuyu-tiny",
            about: "seconds to train; for tests",
            config: native("fuyu-tiny", 32, 1, 2, 64, 12, 48),
        },
        Preset {
            name: "fuyu-small",
            about: "the default research model (48x48 scenes, 12-px patches)",
            config: native("fuyu-small", 64, 2, 4, 256, 12, 48),
        },
        Preset {
            name: "fuyu-base",
            about: "a wider, deeper native model for 96x96 scenes",
            config: native("fuyu-base", 256, 4, 8, 1024, 12, 96),
        },
    ]
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}

/// Where the shipped weights of a preset live (`models/<name>` in the repository), if present.
pub fn shipped_dir(name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
    dir.join("model.safetensors").exists().then_some(dir)
}

/// Number of trainable parameters of a configuration.
pub fn parameter_count(cfg: &ModelConfig) -> usize {
    let d = cfg.d_model;
    let hd = cfg.head_dim();
    let norm = |n: usize| match cfg.norm {
        NormKind::LayerNorm => 2 * n,
        NormKind::RmsNorm => n,
    };
    let attn = d * cfg.n_heads * hd + cfg.n_heads * hd // q
        + 2 * (d * cfg.n_kv_heads * hd + cfg.n_kv_heads * hd) // k, v
        + cfg.n_heads * hd * d + d // dense
        + if cfg.qk_norm { 4 * hd } else { 0 };
    let mlp = d * cfg.d_ff
        + cfg.d_ff
        + cfg.d_ff * d
        + d
        + if cfg.activation == Activation::SwiGlu {
            d * cfg.d_ff + cfg.d_ff
        } else {
            0
        };
    let block = norm(d) * 2 + attn + mlp;
    let embed = cfg.vocab_size * d
        + if cfg.patch_dim > 0 {
            cfg.patch_dim * d + d
        } else {
            0
        }
        + if cfg.frame_dim > 0 {
            cfg.frame_dim * d + d
        } else {
            0
        };
    let head = if cfg.tie_embeddings {
        0
    } else {
        d * cfg.vocab_size
    };
    embed + cfg.n_layers * block + norm(d) + head
}
