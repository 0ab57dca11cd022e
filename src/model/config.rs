//! Decoder configuration: the research knobs of the native model and the baselines.

use serde::{Deserialize, Serialize};

pub use super::connector::ConnectorKind;
use super::connector::ConnectorShape;

/// Normalisation layer used in the decoder blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// LayerNorm with weight and bias.
    LayerNorm,
    /// RMSNorm with weight only.
    RmsNorm,
}

/// Activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `relu(x)^2`, as in Persimmon / Fuyu.
    Relu2,
    /// GELU (tanh approximation).
    Gelu,
    /// SwiGLU: `silu(x W_gate) * (x W_up)`.
    SwiGlu,
}

/// Shape and options of a decoder-only Transformer with linear patch / frame embeddings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Text vocabulary size (special tokens included).
    pub vocab_size: usize,
    /// Hidden width.
    pub d_model: usize,
    /// Number of decoder blocks.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention when < `n_heads`).
    pub n_kv_heads: usize,
    /// MLP inner width.
    pub d_ff: usize,
    /// Longest sequence the rotary tables cover.
    pub max_seq_len: usize,
    /// Normalisation layer.
    pub norm: NormKind,
    /// Epsilon of the normalisation layers.
    pub norm_eps: f64,
    /// LayerNorm over the head dimension of queries and keys before rotary (Persimmon).
    pub qk_norm: bool,
    /// Rotary base.
    pub rope_theta: f64,
    /// Share of each head's dimensions that is rotated (Persimmon: 0.5).
    pub partial_rotary_factor: f64,
    /// MLP activation.
    pub activation: Activation,
    /// Width of one flattened image patch (`patch * patch * 3`), 0 for no image input.
    pub patch_dim: usize,
    /// Width of one audio frame, 0 for no audio input.
    pub frame_dim: usize,
    /// Share the token embedding with the LM head.
    pub tie_embeddings: bool,
    /// A bolted-on design: images go through a vision encoder and a connector instead of
    /// the native linear patch embedding (`None`: the native Fuyu-style model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bolt: Option<BoltConfig>,
}

/// A ViT-style vision encoder: linear patch embedding, learned row and column position
/// embeddings, bidirectional pre-norm Transformer blocks, final LayerNorm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Hidden width.
    pub d_model: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// MLP inner width.
    pub d_ff: usize,
    /// Largest number of patch rows or columns an image may have.
    pub max_grid: usize,
}

/// The encoder and connector of a bolted-on design.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoltConfig {
    /// The vision encoder.
    pub encoder: EncoderConfig,
    /// The connector.
    pub connector: ConnectorKind,
    /// Learned queries (Q-Former) or latents (perceiver) per image.
    #[serde(default)]
    pub n_queries: usize,
    /// Layers of the Q-Former or perceiver resampler.
    #[serde(default)]
    pub connector_layers: usize,
    /// A gated cross-attention layer before every `xattn_every`-th decoder block (perceiver).
    #[serde(default)]
    pub xattn_every: usize,
    /// MLP width of the gated cross-attention layers.
    #[serde(default)]
    pub xattn_d_ff: usize,
    /// A Whisper-style audio encoder (stride-2 convolution over frames, then Transformer
    /// blocks; `max_grid` is its longest output) with its own connector of the same kind.
    /// `None`: audio reaches the decoder through the linear frame embedding, as in native.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_encoder: Option<EncoderConfig>,
}

impl BoltConfig {
    /// Token slots one image fills (`None`: one per patch, with row newlines, as native).
    pub fn image_tokens(&self) -> Option<usize> {
        self.connector.image_slots(self.n_queries)
    }

    /// Token slots one audio clip fills.
    pub fn audio_slots(&self) -> crate::fusion::AudioSlots {
        match &self.audio_encoder {
            None => crate::fusion::AudioSlots::PerFrame,
            Some(_) => self.connector.clip_slots(self.n_queries),
        }
    }

    /// The encoder's blocks described as a decoder configuration (no rotary, GELU MLP).
    pub fn encoder_block_config(&self, eps: f64) -> ModelConfig {
        block_config(&self.encoder, eps)
    }

    /// The audio encoder's blocks as a decoder configuration.
    pub fn audio_block_config(&self, eps: f64) -> Option<ModelConfig> {
        self.audio_encoder.as_ref().map(|e| block_config(e, eps))
    }
}

fn block_config(e: &EncoderConfig, eps: f64) -> ModelConfig {
    {
        ModelConfig {
            vocab_size: 1,
            d_model: e.d_model,
            n_layers: e.n_layers.max(1),
            n_heads: e.n_heads,
            n_kv_heads: e.n_heads,
            d_ff: e.d_ff,
            max_seq_len: 1,
            norm: NormKind::LayerNorm,
            norm_eps: eps,
            qk_norm: false,
            rope_theta: 10_000.0,
            partial_rotary_factor: 0.0,
            activation: Activation::Gelu,
            patch_dim: 0,
            frame_dim: 0,
            tie_embeddings: true,
            bolt: None,
        }
    }
}

impl BoltConfig {
    fn validate(&self, decoder_layers: usize) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        for (what, e) in std::iter::once(("encoder", &self.encoder))
            .chain(self.audio_encoder.as_ref().map(|a| ("audio encoder", a)))
        {
            if e.d_model == 0 || e.d_ff == 0 || e.max_grid == 0 || e.max_grid > 4096 {
                return err(format!(
                    "{what} d_model, d_ff must be positive and max_grid in 1..=4096"
                ));
            }
            for (field, value, max) in [
                ("d_model", e.d_model, MAX_WIDTH),
                ("d_ff", e.d_ff, MAX_WIDTH),
                ("n_layers", e.n_layers, MAX_LAYERS),
            ] {
                if value > max {
                    return err(format!("{what} {field} {value} is over the limit of {max}"));
                }
            }
            if e.n_heads == 0 || !e.d_model.is_multiple_of(e.n_heads) {
                return err(format!(
                    "{what} d_model {} is not divisible by n_heads {}",
                    e.d_model, e.n_heads
                ));
            }
        }
        if let (Some(a), ConnectorKind::Perceiver) = (&self.audio_encoder, self.connector) {
            if a.d_model != self.encoder.d_model {
                return err(format!(
                    "perceiver: the audio encoder width {} must equal the vision encoder width {} (both feed the same cross-attention)",
                    a.d_model, self.encoder.d_model
                ));
            }
        }
        if self.connector.resamples()
            && (self.n_queries == 0
                || self.n_queries > 4096
                || self.connector_layers == 0
                || self.connector_layers > MAX_LAYERS)
        {
            return err(format!(
                "{} needs n_queries in 1..=4096 and connector_layers in 1..={MAX_LAYERS}",
                self.connector.name()
            ));
        }
        if self.xattn_d_ff > MAX_WIDTH {
            return err(format!(
                "xattn_d_ff {} is over the limit of {MAX_WIDTH}",
                self.xattn_d_ff
            ));
        }
        if self.connector.cross_attends()
            && (self.xattn_every == 0 || self.xattn_every > decoder_layers || self.xattn_d_ff == 0)
        {
            return err(format!(
                "perceiver needs xattn_every in 1..={decoder_layers} and xattn_d_ff > 0"
            ));
        }
        Ok(())
    }
}

/// An impossible or inconsistent configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid model config: {0}")]
pub struct ConfigError(pub String);

impl ModelConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Number of rotated dimensions per head (even).
    pub fn rotary_dim(&self) -> usize {
        let r = (self.head_dim() as f64 * self.partial_rotary_factor).round() as usize;
        r - r % 2
    }

    /// Checks that the numbers describe a model that can exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.vocab_size == 0 || self.d_model == 0 || self.n_layers == 0 || self.d_ff == 0 {
            return err("vocab_size, d_model, n_layers and d_ff must be positive".into());
        }
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return err(format!(
                "d_model {} is not divisible by n_heads {}",
                self.d_model, self.n_heads
            ));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return err(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !(0.0..=1.0).contains(&self.partial_rotary_factor) {
            return err(format!(
                "partial_rotary_factor {} is outside [0, 1]",
                self.partial_rotary_factor
            ));
        }
        if self.max_seq_len == 0 || self.max_seq_len > 1 << 20 {
            return err(format!(
                "max_seq_len {} is outside 1..=1048576",
                self.max_seq_len
            ));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 || self.norm_eps >= 1.0 {
            return err(format!("norm_eps {} is outside (0, 1)", self.norm_eps));
        }
        if !self.rope_theta.is_finite() || self.rope_theta <= 1.0 {
            return err(format!(
                "rope_theta {} must be a finite number > 1",
                self.rope_theta
            ));
        }
        for (field, value, max) in [
            ("vocab_size", self.vocab_size, MAX_WIDTH),
            ("d_model", self.d_model, MAX_WIDTH),
            ("d_ff", self.d_ff, MAX_WIDTH),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("patch_dim", self.patch_dim, MAX_PATCH_DIM),
            ("frame_dim", self.frame_dim, MAX_FRAME_DIM),
        ] {
            if value > max {
                return err(format!("{field} {value} is over the limit of {max}"));
            }
        }
        // Both rotary tables (cos, sin) are allocated whole when the model is built.
        let rotary = self.max_seq_len.checked_mul(self.rotary_dim());
        if rotary.is_none_or(|n| n > MAX_ROTARY_TABLE) {
            return err(format!(
                "max_seq_len {} x rotary dims {} is over the limit of {MAX_ROTARY_TABLE} table entries",
                self.max_seq_len,
                self.rotary_dim()
            ));
        }
        if let Some(b) = &self.bolt {
            if self.patch_dim == 0 {
                return err("a bolted-on design needs image input (patch_dim > 0)".into());
            }
            b.validate(self.n_layers)?;
        }
        match self.parameter_count() {
            Some(n) if n <= MAX_PARAMETERS => Ok(()),
            Some(n) => err(format!(
                "{n} parameters is more than this workbench will allocate (at most {MAX_PARAMETERS})"
            )),
            None => err("the parameter count overflows: the sizes are absurdly large".into()),
        }
    }

    /// Number of trainable parameters, or `None` when the count overflows `usize`.
    pub fn parameter_count(&self) -> Option<usize> {
        let d = Sz::of(self.d_model);
        let norm = match self.norm {
            NormKind::LayerNorm => d * 2,
            NormKind::RmsNorm => d,
        };
        let vision = match &self.bolt {
            Some(b) => bolt_params(self, b),
            None if self.patch_dim > 0 => Sz::of(self.patch_dim) * d + d,
            None => Sz::of(0),
        };
        let audio_encoded = self
            .bolt
            .as_ref()
            .is_some_and(|b| b.audio_encoder.is_some());
        let frames = if self.frame_dim > 0 && !audio_encoded {
            Sz::of(self.frame_dim) * d + d
        } else {
            Sz::of(0)
        };
        let head = if self.tie_embeddings {
            Sz::of(0)
        } else {
            d * self.vocab_size
        };
        (d * self.vocab_size + vision + frames + block_params(self) * self.n_layers + norm + head).0
    }
}

/// Largest vocabulary or layer width a config may ask for (16M).
pub const MAX_WIDTH: usize = 1 << 24;
/// Largest number of layers a config may ask for.
pub const MAX_LAYERS: usize = 4096;
/// Largest flattened patch (`image.patch` is at most 1024: 1024 x 1024 x 3).
pub const MAX_PATCH_DIM: usize = 1024 * 1024 * 3;
/// Largest audio frame (`audio` front-ends give at most 256 mel bins x 100 frames).
pub const MAX_FRAME_DIM: usize = 25_600;
/// Largest rotary table (`max_seq_len x rotary dims`): 1 GiB for cos and sin in f32.
pub const MAX_ROTARY_TABLE: usize = 1 << 27;
/// Largest model this workbench will allocate.
pub const MAX_PARAMETERS: usize = 100_000_000_000;

/// A size computed from numbers read from a file: `None` once it overflows `usize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sz(Option<usize>);

impl Sz {
    fn of(n: usize) -> Self {
        Sz(Some(n))
    }
}

impl std::ops::Add for Sz {
    type Output = Sz;
    fn add(self, o: Sz) -> Sz {
        Sz(self.0.zip(o.0).and_then(|(a, b)| a.checked_add(b)))
    }
}

impl std::ops::Add<usize> for Sz {
    type Output = Sz;
    fn add(self, o: usize) -> Sz {
        self + Sz::of(o)
    }
}

impl std::ops::Mul for Sz {
    type Output = Sz;
    fn mul(self, o: Sz) -> Sz {
        Sz(self.0.zip(o.0).and_then(|(a, b)| a.checked_mul(b)))
    }
}

impl std::ops::Mul<usize> for Sz {
    type Output = Sz;
    fn mul(self, o: usize) -> Sz {
        self * Sz::of(o)
    }
}

/// Parameters of one decoder block of `cfg`.
fn block_params(cfg: &ModelConfig) -> Sz {
    let d = Sz::of(cfg.d_model);
    let hd = Sz::of(cfg.head_dim());
    let (nh, nkv, ff) = (
        Sz::of(cfg.n_heads),
        Sz::of(cfg.n_kv_heads),
        Sz::of(cfg.d_ff),
    );
    let norm = |n: Sz| match cfg.norm {
        NormKind::LayerNorm => n * 2,
        NormKind::RmsNorm => n,
    };
    let attn = d * nh * hd + nh * hd // q
        + (d * nkv * hd + nkv * hd) * 2 // k, v
        + nh * hd * d + d // dense
        + if cfg.qk_norm { hd * 4 } else { Sz::of(0) };
    let mlp = d * ff
        + ff
        + ff * d
        + d
        + if cfg.activation == Activation::SwiGlu {
            d * ff + ff
        } else {
            Sz::of(0)
        };
    norm(d) * 2 + attn + mlp
}

/// Parameters of the vision encoder, connector and cross-attention layers of a bolted design.
fn bolt_params(cfg: &ModelConfig, b: &BoltConfig) -> Sz {
    let d = Sz::of(cfg.d_model);
    let de = Sz::of(b.encoder.d_model);
    let xa = |dq: Sz, dkv: Sz| (dq * dq + dq) * 2 + (dkv * dq + dq) * 2;
    let mlp = |w: Sz, f: Sz| w * f * 2 + f + w;
    let encoder = Sz::of(cfg.patch_dim) * de
        + de
        + de * b.encoder.max_grid * 2
        + block_params(&b.encoder_block_config(cfg.norm_eps)) * b.encoder.n_layers
        + de * 2;
    let connector_of = |e: &EncoderConfig| {
        Sz(b.connector.parameter_count(ConnectorShape {
            d_enc: e.d_model,
            heads: e.n_heads,
            d_ff: e.d_ff,
            n_queries: b.n_queries,
            layers: b.connector_layers,
            d_model: cfg.d_model,
        }))
    };
    let connector = connector_of(&b.encoder);
    let audio = match (&b.audio_encoder, b.audio_block_config(cfg.norm_eps)) {
        (Some(a), Some(bc)) if cfg.frame_dim > 0 => {
            let da = Sz::of(a.d_model);
            da * cfg.frame_dim * 3
                + da
                + da * a.max_grid
                + block_params(&bc) * a.n_layers
                + da * 2
                + connector_of(a)
        }
        _ => Sz::of(0),
    };
    let xattn = if b.connector.cross_attends() {
        // Layers 0, k, 2k, ... below n_layers.
        let layers = cfg.n_layers.div_ceil(b.xattn_every.max(1));
        (d * 4 + xa(d, de) + mlp(d, Sz::of(b.xattn_d_ff)) + 2) * layers
    } else {
        Sz::of(0)
    };
    encoder + connector + xattn + audio
}
