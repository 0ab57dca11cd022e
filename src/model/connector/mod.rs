//! The connectors of the bolted-on designs, each in its own short file: what they are called
//! in `config.json`, how many token slots an image or clip fills with each, and the one
//! dispatch from a [`ConnectorKind`] to its module.

pub mod linear;
pub mod mlp;
pub mod perceiver;
pub mod qformer;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::design::Design;
use super::encoder::Encoded;
use crate::fusion::AudioSlots;
pub use linear::LinearConnector;
pub use mlp::MlpConnector;
pub use perceiver::{GatedXAttn, Perceiver, XCtx};
pub use qformer::QFormer;

/// How encoder features reach the decoder in a bolted-on design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorKind {
    /// One linear projection per patch feature (LLaVA-1.0); one token slot per patch.
    Linear,
    /// Two-layer MLP with GELU per patch feature (LLaVA-1.5); one token slot per patch.
    Mlp,
    /// Learned queries cross-attending to the encoder features (BLIP-2); `n_queries` slots
    /// per image whatever its size.
    QFormer,
    /// Perceiver resampler feeding gated cross-attention layers in the decoder (Flamingo);
    /// one `|IMAGE|` slot per image in the token stream.
    Perceiver,
}

impl ConnectorKind {
    /// Parameters of a connector of this kind with shape `s`, `None` when the count
    /// overflows (`mlp(w, f)`: a GELU MLP's, `xattn(dq, dkv)`: one cross-attention's).
    pub fn parameter_count(self, s: ConnectorShape) -> Option<usize> {
        let (de, d, nq, layers) = (s.d_enc, s.d_model, s.n_queries, s.layers);
        let mul = |a: usize, b: usize| a.checked_mul(b);
        let xa = |dq: usize, dkv: usize| {
            let q = mul(dq, dq)?.checked_add(dq)?;
            let kv = mul(dkv, dq)?.checked_add(dq)?;
            mul(q.checked_add(kv)?, 2)
        };
        let mlp = |w: usize, f: usize| mul(mul(w, f)?, 2)?.checked_add(f)?.checked_add(w);
        let sum = |v: &[Option<usize>]| v.iter().try_fold(0usize, |a, x| a.checked_add((*x)?));
        match self {
            ConnectorKind::Linear => sum(&[mul(de, d), Some(d)]),
            ConnectorKind::Mlp => sum(&[mul(de, d), Some(d), mul(d, d), Some(d)]),
            ConnectorKind::QFormer => {
                let layer = sum(&[mul(de, 6), mul(xa(de, de)?, 2), mlp(de, s.d_ff)])?;
                sum(&[
                    mul(nq, de),
                    mul(layer, layers),
                    mul(de, 2),
                    mul(de, d),
                    Some(d),
                ])
            }
            ConnectorKind::Perceiver => {
                let layer = sum(&[mul(de, 6), xa(de, de), mlp(de, s.d_ff)])?;
                sum(&[mul(nq, de), mul(layer, layers), mul(de, 2)])
            }
        }
    }

    /// Name used in presets and reports.
    pub fn name(self) -> &'static str {
        match self {
            ConnectorKind::Linear => "linear",
            ConnectorKind::Mlp => "mlp",
            ConnectorKind::QFormer => "qformer",
            ConnectorKind::Perceiver => "perceiver",
        }
    }

    /// The design this connector makes.
    pub fn design(self) -> Design {
        match self {
            ConnectorKind::Linear | ConnectorKind::Mlp => Design::Llava,
            ConnectorKind::QFormer => Design::QFormer,
            ConnectorKind::Perceiver => Design::Flamingo,
        }
    }

    /// True for connectors with learned queries or latents (`n_queries`, `connector_layers`).
    pub fn resamples(self) -> bool {
        matches!(self, ConnectorKind::QFormer | ConnectorKind::Perceiver)
    }

    /// True when the decoder cross-attends to the connector's output (gated layers).
    pub fn cross_attends(self) -> bool {
        self == ConnectorKind::Perceiver
    }

    /// Token slots one encoded item (image or clip) of `n` encoder positions fills.
    pub fn slots(self, n: usize, n_queries: usize) -> usize {
        match self {
            ConnectorKind::Linear | ConnectorKind::Mlp => n,
            ConnectorKind::QFormer => n_queries,
            ConnectorKind::Perceiver => 1,
        }
    }

    /// Token slots one image fills (`None`: one per patch, with row newlines, as native).
    pub fn image_slots(self, n_queries: usize) -> Option<usize> {
        match self {
            ConnectorKind::Linear | ConnectorKind::Mlp => None,
            _ => Some(self.slots(0, n_queries)),
        }
    }

    /// Token slots one audio clip fills after an audio encoder (stride-2: half the frames).
    pub fn clip_slots(self, n_queries: usize) -> AudioSlots {
        match self {
            ConnectorKind::Linear | ConnectorKind::Mlp => AudioSlots::Halved,
            _ => AudioSlots::Fixed(self.slots(0, n_queries)),
        }
    }
}

/// The sizes a connector is built from.
#[derive(Clone, Copy, Debug)]
pub struct ConnectorShape {
    /// Encoder width.
    pub d_enc: usize,
    /// Attention heads (resampling connectors).
    pub heads: usize,
    /// MLP width (resampling connectors).
    pub d_ff: usize,
    /// Learned queries or latents.
    pub n_queries: usize,
    /// Layers (resampling connectors).
    pub layers: usize,
    /// Decoder width.
    pub d_model: usize,
}

/// One of the four connectors.
#[derive(Clone, Debug)]
pub enum Connector {
    /// LLaVA-1.0.
    Linear(LinearConnector),
    /// LLaVA-1.5.
    Mlp(MlpConnector),
    /// BLIP-2.
    QFormer(QFormer),
    /// Flamingo.
    Perceiver(Perceiver),
}

/// What a connector makes of a batch of encoded items.
#[derive(Debug)]
pub enum ConnectorOutput {
    /// `(n_items, slots, d_model)` embeddings for the items' token slots.
    Slots(Tensor),
    /// `(n_items, n_latents, d_enc)` latents for the decoder's gated cross-attention.
    Latents(Tensor),
}

impl Connector {
    /// Creates a `kind` connector of `shape` under `vb`.
    pub fn new(kind: ConnectorKind, s: ConnectorShape, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            ConnectorKind::Linear => {
                Connector::Linear(LinearConnector::new(s.d_enc, s.d_model, vb)?)
            }
            ConnectorKind::Mlp => Connector::Mlp(MlpConnector::new(s.d_enc, s.d_model, vb)?),
            ConnectorKind::QFormer => Connector::QFormer(QFormer::new(
                s.d_enc,
                s.heads,
                s.d_ff,
                s.n_queries,
                s.layers,
                s.d_model,
                eps,
                vb,
            )?),
            ConnectorKind::Perceiver => Connector::Perceiver(Perceiver::new(
                s.d_enc,
                s.heads,
                s.d_ff,
                s.n_queries,
                s.layers,
                eps,
                vb,
            )?),
        })
    }

    /// Each layer's attention of a resampling connector's slots (Q-Former queries, perceiver
    /// latents) over the encoder positions, `(n_items, heads, slots, p)`; `None` for the
    /// projectors, whose slots are the positions themselves.
    pub fn slot_attention(&self, enc: &Encoded) -> Result<Option<Vec<Tensor>>> {
        Ok(match self {
            Connector::Linear(_) | Connector::Mlp(_) => None,
            Connector::QFormer(c) => Some(c.forward_traced(enc, true)?.1),
            Connector::Perceiver(c) => Some(c.forward_traced(enc, true)?.1),
        })
    }

    /// Runs the connector on encoded items.
    pub fn forward(&self, enc: &Encoded) -> Result<ConnectorOutput> {
        Ok(match self {
            Connector::Linear(c) => ConnectorOutput::Slots(c.forward(&enc.feats)?),
            Connector::Mlp(c) => ConnectorOutput::Slots(c.forward(&enc.feats)?),
            Connector::QFormer(c) => ConnectorOutput::Slots(c.forward(enc)?),
            Connector::Perceiver(c) => ConnectorOutput::Latents(c.forward(enc)?),
        })
    }
}
