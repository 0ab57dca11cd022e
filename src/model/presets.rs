//! Named model presets (`<design>-<size>`) and where their weights live.

use super::config::{Activation, BoltConfig, ConnectorKind, EncoderConfig, ModelConfig, NormKind};
use super::design::Design;
use super::io::ModelDirConfig;
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
        design: Design::Native,
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
            bolt: None,
        },
        image,
        audio,
    }
}

/// A bolted-on preset: the native preset's decoder and image settings with a ViT and a connector.
#[allow(clippy::too_many_arguments)]
fn bolted(
    name: &'static str,
    base: ModelDirConfig,
    connector: ConnectorKind,
    encoder: EncoderConfig,
    n_queries: usize,
    connector_layers: usize,
    xattn_d_ff: usize,
    decoder_d_ff: usize,
    audio_encoder: Option<EncoderConfig>,
) -> ModelDirConfig {
    let mut c = base;
    c.design = connector.design();
    c.preset = Some(name.into());
    c.model.d_ff = decoder_d_ff;
    c.model.bolt = Some(BoltConfig {
        encoder,
        connector,
        n_queries,
        connector_layers,
        xattn_every: if connector == ConnectorKind::Perceiver {
            2.min(c.model.n_layers)
        } else {
            0
        },
        xattn_d_ff,
        audio_encoder,
    });
    c
}

fn enc(d: usize, layers: usize, heads: usize, ff: usize, max_grid: usize) -> EncoderConfig {
    EncoderConfig {
        d_model: d,
        n_layers: layers,
        n_heads: heads,
        d_ff: ff,
        max_grid,
    }
}

/// A bolted-on preset sized to match the native preset of the same size (`-small`: within
/// 2% of fuyu-small's parameters; the decoder's MLP width absorbs the difference).
fn bolted_preset(
    name: &'static str,
    about: &'static str,
    kind: ConnectorKind,
    audio: bool,
) -> Preset {
    let small = name.ends_with("-small");
    let mut base = if small {
        native("fuyu-small", 64, 2, 4, 256, 12, 48)
    } else {
        native("fuyu-tiny", 32, 1, 2, 64, 12, 48)
    };
    if audio {
        // Whisper's input: 80-bin log-mel, two 10 ms frames per token; the encoder's
        // stride-2 convolution then gives one feature per 40 ms, as native's raw frames.
        base.audio = AudioConfig::logmel(80, 2);
        base.model.frame_dim = base.audio.frame_dim();
    }
    let (e, a) = if small {
        (enc(32, 1, 4, 64, 8), enc(32, 1, 4, 64, 128))
    } else {
        (enc(16, 1, 2, 32, 8), enc(16, 1, 2, 32, 128))
    };
    let (queries, layers) = match kind {
        ConnectorKind::QFormer | ConnectorKind::Perceiver => (if small { 8 } else { 4 }, 1),
        _ => (0, 0),
    };
    let xattn_ff = if kind == ConnectorKind::Perceiver {
        if small {
            64
        } else {
            32
        }
    } else {
        0
    };
    let d_ff = match (small, kind, audio) {
        (false, _, _) => 64,
        (true, ConnectorKind::Mlp, false) => 240,
        (true, ConnectorKind::Linear, false) => 256,
        (true, ConnectorKind::QFormer, false) => 200,
        (true, ConnectorKind::Perceiver, false) => 160,
        (true, ConnectorKind::Mlp, true) => 276,
        (true, ConnectorKind::Linear, true) => 292,
        (true, ConnectorKind::QFormer, true) => 206,
        (true, ConnectorKind::Perceiver, true) => 173,
    };
    Preset {
        name,
        about,
        config: bolted(
            name,
            base,
            kind,
            e,
            queries,
            layers,
            xattn_ff,
            d_ff,
            audio.then_some(a),
        ),
    }
}

/// A model of `design` at decoder width `d` — the size ladder of scaling studies. Every size
/// has 2 decoder layers, heads of 16 and an MLP of 4·d; a bolted-on design adds a one-layer
/// ViT of width d/2 (heads of 8, MLP d) and its connector (8 queries for the Q-Former and the
/// perceiver; Flamingo's cross-attention MLP is d wide). `audio_encoder` gives the bolted-on
/// design a Whisper-style audio encoder of the same width over 80-bin log-mel (the `-audio-`
/// presets at that width); the native model always embeds raw frames. At d = 64 the native
/// model is `fuyu-small`. Names follow the presets: `fuyu-d64`, `llava-d64`, `llava-audio-d64`.
pub fn sized(design: Design, d: usize, audio_encoder: bool) -> Result<ModelDirConfig, String> {
    if d < 32 || !d.is_multiple_of(16) {
        return Err(format!(
            "width {d}: a sized model needs a width that is a multiple of 16, at least 32"
        ));
    }
    let mut base = native("sized", d, 2, d / 16, 4 * d, 12, 48);
    let kind = match design {
        Design::Native => {
            if audio_encoder {
                return Err("the native design has no audio encoder".into());
            }
            base.preset = Some(format!("fuyu-d{d}"));
            return Ok(base);
        }
        Design::Llava => ConnectorKind::Mlp,
        Design::QFormer => ConnectorKind::QFormer,
        Design::Flamingo => ConnectorKind::Perceiver,
        Design::HfFuyu => return Err("HF Fuyu has no sized variant".into()),
    };
    if audio_encoder {
        base.audio = AudioConfig::logmel(80, 2);
        base.model.frame_dim = base.audio.frame_dim();
    }
    let e = d / 2;
    let queries = if kind == ConnectorKind::Mlp { 0 } else { 8 };
    let layers = usize::from(queries > 0);
    let xattn_ff = if kind == ConnectorKind::Perceiver {
        d
    } else {
        0
    };
    let mut c = bolted(
        "sized",
        base,
        kind,
        enc(e, 1, e / 8, 2 * e, 8),
        queries,
        layers,
        xattn_ff,
        4 * d,
        audio_encoder.then(|| enc(e, 1, e / 8, 2 * e, 128)),
    );
    c.preset = Some(format!(
        "{}{}-d{d}",
        design.name(),
        if audio_encoder { "-audio" } else { "" }
    ));
    Ok(c)
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
        bolted_preset(
            "llava-small",
            "ViT + 2-layer MLP projector (LLaVA-1.5); fuyu-small decoder",
            ConnectorKind::Mlp,
            false,
        ),
        bolted_preset(
            "llava-linear-small",
            "ViT + linear projector (LLaVA-1.0); fuyu-small decoder",
            ConnectorKind::Linear,
            false,
        ),
        bolted_preset(
            "qformer-small",
            "ViT + Q-Former, 8 queries (BLIP-2); fuyu-small decoder",
            ConnectorKind::QFormer,
            false,
        ),
        bolted_preset(
            "flamingo-small",
            "ViT + perceiver + gated cross-attention (Flamingo)",
            ConnectorKind::Perceiver,
            false,
        ),
        bolted_preset(
            "llava-audio-small",
            "llava-small with a Whisper-style audio encoder + MLP",
            ConnectorKind::Mlp,
            true,
        ),
        bolted_preset(
            "qformer-audio-small",
            "qformer-small with an audio encoder + audio Q-Former",
            ConnectorKind::QFormer,
            true,
        ),
        bolted_preset(
            "flamingo-audio-small",
            "flamingo-small with an audio encoder + perceiver",
            ConnectorKind::Perceiver,
            true,
        ),
        bolted_preset(
            "llava-tiny",
            "seconds to train; for tests",
            ConnectorKind::Mlp,
            false,
        ),
        bolted_preset(
            "qformer-tiny",
            "seconds to train; for tests",
            ConnectorKind::QFormer,
            false,
        ),
        bolted_preset(
            "flamingo-tiny",
            "seconds to train; for tests",
            ConnectorKind::Perceiver,
            false,
        ),
        bolted_preset(
            "llava-audio-tiny",
            "seconds to train; for tests",
            ConnectorKind::Mlp,
            true,
        ),
        bolted_preset(
            "qformer-audio-tiny",
            "seconds to train; for tests",
            ConnectorKind::QFormer,
            true,
        ),
        bolted_preset(
            "flamingo-audio-tiny",
            "seconds to train; for tests",
            ConnectorKind::Perceiver,
            true,
        ),
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

/// A shipped model compiled into the binary: the three files of its `models/<name>` directory.
#[derive(Clone, Copy)]
pub struct EmbeddedModel {
    /// Preset name, e.g. `fuyu-small`.
    pub name: &'static str,
    /// `config.json`.
    pub config: &'static [u8],
    /// `model.safetensors`.
    pub weights: &'static [u8],
    /// `tokenizer.json`.
    pub tokenizer: &'static [u8],
}

impl std::fmt::Debug for EmbeddedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EmbeddedModel({}, {} bytes of weights)",
            self.name,
            self.weights.len()
        )
    }
}

impl PartialEq for EmbeddedModel {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl EmbeddedModel {
    /// The bytes of the model directory's file called `file_name`, if it is one of the three.
    pub fn file(&self, file_name: &str) -> Option<&'static [u8]> {
        match file_name {
            "config.json" => Some(self.config),
            "model.safetensors" => Some(self.weights),
            "tokenizer.json" => Some(self.tokenizer),
            _ => None,
        }
    }
}

/// `models/<name>` of the source tree, read at compile time.
macro_rules! shipped {
    ($name:literal) => {
        EmbeddedModel {
            name: $name,
            config: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/",
                $name,
                "/config.json"
            )),
            weights: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/",
                $name,
                "/model.safetensors"
            )),
            tokenizer: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/",
                $name,
                "/tokenizer.json"
            )),
        }
    };
}

/// The shipped models, compiled into every build (0.3–0.9 MB each): `--model fuyu-small`
/// works from any directory with nothing but the binary. The `-3e13` ones are the scaling
/// study's frontier models at its top budget (`mmlab ablate ship`), trained with equal compute;
/// `native-free-1e13` is native's frontier on the free tier at its top finished budget.
pub const EMBEDDED: [EmbeddedModel; 7] = [
    shipped!("fuyu-small"),
    shipped!("llava-small"),
    shipped!("qformer-small"),
    shipped!("flamingo-small"),
    shipped!("native-3e13"),
    shipped!("llava-3e13"),
    shipped!("native-free-1e13"),
];

/// The compiled-in copy of preset `name`, if it ships with weights.
pub fn embedded(name: &str) -> Option<&'static EmbeddedModel> {
    EMBEDDED.iter().find(|m| m.name == name)
}

/// Number of trainable parameters of a configuration (`usize::MAX` when the count
/// overflows, which [`ModelConfig::validate`] refuses).
pub fn parameter_count(cfg: &ModelConfig) -> usize {
    cfg.parameter_count().unwrap_or(usize::MAX)
}
