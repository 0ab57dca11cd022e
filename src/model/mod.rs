//! Models: the decoder every design shares, the designs built on it (native Fuyu-style,
//! bolted-on encoder + connector, HF Fuyu weights), presets, generation and model directories.
//!
//! The composite owns the decoder: [`Model`] is a [`Fuyu`] or a [`Bolted`] model, each of
//! which embeds a batch its own way and hands the embeddings to its [`Decoder`].

pub mod bolted;
pub mod config;
pub mod connector;
pub mod decoder;
pub mod design;
pub mod encoder;
pub mod fuyu;
pub mod generate;
pub mod io;
pub mod layers;
pub mod presets;
pub mod resolve;
pub mod responder;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use bolted::Bolted;
pub use config::{Activation, BoltConfig, EncoderConfig, ModelConfig, NormKind};
pub use connector::ConnectorKind;
pub use decoder::{Decoder, ForwardOutput, KvCache, TargetLogits};
pub use design::Design;
pub use fuyu::Fuyu;
pub use io::{load_dir, LoadedModel, ModelDirConfig};

use crate::fusion::Batch;
use connector::XCtx;
use decoder::CrossAttend;
use layers::Linear;

/// Any model mmlab runs: embed the batch (each design its own way), then the decoder.
// One model is built per run and passed by reference: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Model {
    /// The native early-fusion model (ours or HF Fuyu's weights).
    Fuyu(Fuyu),
    /// A vision (and audio) encoder joined to the decoder by a connector.
    Bolted(Bolted),
}

impl Model {
    /// Builds the model `cfg` describes from `vb` (a VarMap for training, safetensors for
    /// inference): bolted-on when it has a `bolt` section, else native.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match &cfg.bolt {
            Some(b) => Model::Bolted(Bolted::new(cfg, b, vb)?),
            None => Model::Fuyu(Fuyu::new(cfg, vb)?),
        })
    }

    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        match self {
            Model::Fuyu(m) => &m.decoder,
            Model::Bolted(m) => &m.decoder,
        }
    }

    /// The bolted-on model, if this is one.
    pub fn bolted(&self) -> Option<&Bolted> {
        match self {
            Model::Bolted(m) => Some(m),
            Model::Fuyu(_) => None,
        }
    }

    /// The decoder's configuration.
    pub fn cfg(&self) -> &ModelConfig {
        &self.decoder().cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.decoder().device()
    }

    /// Input embeddings `(b, t, d)`: token embeddings with the image and audio inputs in
    /// their slots.
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.embed_with_context(batch)?.0)
    }

    /// [`Model::embed`], plus the latents a Flamingo design cross-attends to.
    pub fn embed_with_context(&self, batch: &Batch) -> Result<(Tensor, Option<XCtx>)> {
        match self {
            Model::Fuyu(m) => Ok((m.embed(batch)?, None)),
            Model::Bolted(m) => m.embed(batch),
        }
    }

    /// Runs the decoder over embeddings `x` (`b, t, d`); see [`Decoder::forward`].
    pub fn forward_embeds(
        &self,
        x: &Tensor,
        positions: &[u32],
        valid: &[u8],
        cache: Option<&mut KvCache>,
        want_attn: bool,
        xctx: Option<XCtx>,
    ) -> Result<ForwardOutput> {
        let cross = match self {
            Model::Bolted(m) => m.cross_attend(),
            Model::Fuyu(_) => CrossAttend::default(),
        };
        self.decoder()
            .forward(x, positions, valid, cache, want_attn, cross, xctx)
    }

    /// The image connector's slots' attention over patches per connector layer (Q-Former
    /// queries, perceiver latents; see [`bolted::Bolted::image_slot_attention`]); `None`
    /// for Fuyu and projectors.
    pub fn image_slot_attention(&self, batch: &Batch) -> Result<Option<Vec<Tensor>>> {
        match self {
            Model::Fuyu(_) => Ok(None),
            Model::Bolted(m) => m.image_slot_attention(batch),
        }
    }

    /// Flamingo's gated cross-attention layers: `(block each runs before, tanh(attention
    /// gate), tanh(MLP gate))`; empty for other designs.
    pub fn cross_gates(&self) -> Result<Vec<(usize, f32, f32)>> {
        let cross = match self {
            Model::Bolted(m) => m.cross_attend(),
            Model::Fuyu(_) => CrossAttend::default(),
        };
        cross
            .layers
            .iter()
            .map(|(i, l)| {
                let (a, f) = l.gates()?;
                Ok((*i, a, f))
            })
            .collect()
    }

    /// Full forward over a collated batch.
    pub fn forward(
        &self,
        batch: &Batch,
        cache: Option<&mut KvCache>,
        want_attn: bool,
    ) -> Result<ForwardOutput> {
        let (x, xctx) = self.embed_with_context(batch)?;
        self.forward_embeds(
            &x,
            &batch.positions,
            &batch.attention_mask,
            cache,
            want_attn,
            xctx,
        )
    }

    /// Vocabulary logits for hidden rows `h` (`n, d`), in f32.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        self.decoder().logits(h)
    }

    /// Logits `(b, vocab)` at the last position of every row of `hidden` (`b, t, d`).
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder().last_logits(hidden)
    }

    /// Mean cross-entropy of the answer tokens (`target_mask`), predicting each from the
    /// position before it, and how many there are.
    pub fn loss(&self, batch: &Batch) -> Result<(Tensor, usize)> {
        let out = self.forward(batch, None, false)?;
        self.decoder().loss(&out.hidden, batch)
    }
}

/// Assembles a batch's input embeddings: token embeddings first, then rows for the image and
/// audio placeholders, each put at its position.
pub(crate) struct Placer<'a> {
    decoder: &'a Decoder,
    rows: Vec<Tensor>,
    gather: Vec<u32>,
    next: usize,
    batch: (usize, usize),
}

impl<'a> Placer<'a> {
    /// Starts from the token embeddings of `batch`.
    pub(crate) fn new(decoder: &'a Decoder, batch: &Batch) -> Result<Self> {
        let n = batch.batch * batch.seq_len;
        if batch.tokens.len() != n {
            candle_core::bail!(
                "the batch holds {} tokens for {} rows of {}",
                batch.tokens.len(),
                batch.batch,
                batch.seq_len
            );
        }
        Ok(Self {
            decoder,
            rows: vec![decoder.embed_tokens(&batch.tokens)?],
            gather: (0..n as u32).collect(),
            next: n,
            batch: (batch.batch, batch.seq_len),
        })
    }

    /// Puts row `k` of `rows` at flat position `positions[k]`; `what` names them in errors.
    pub(crate) fn place(&mut self, rows: Tensor, positions: &[usize], what: &str) -> Result<()> {
        let n = self.gather.len();
        for (k, &p) in positions.iter().enumerate() {
            if p >= n {
                candle_core::bail!("{what} {p} outside the batch of {n} tokens");
            }
            self.gather[p] = (self.next + k) as u32;
        }
        self.next += positions.len();
        self.rows.push(rows);
        Ok(())
    }

    /// Embeds `data` (rows `dim` wide, one per position) with `layer` and places them.
    pub(crate) fn linear(
        &mut self,
        layer: Option<&Linear>,
        data: &[f32],
        dim: usize,
        positions: &[usize],
        what: &str,
    ) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let Some(layer) = layer else {
            candle_core::bail!(
                "this model has no {what} input, but the batch holds {} {what} rows",
                positions.len()
            );
        };
        let want = layer.weight.dim(1)?;
        if dim != want || data.len() != positions.len() * dim {
            candle_core::bail!("{what} rows are {dim} wide, the model expects {want}");
        }
        let m = Tensor::from_slice(data, (positions.len(), dim), self.decoder.device())?
            .to_dtype(layer.weight.dtype())?;
        self.place(layer.forward(&m)?, positions, &format!("{what} position"))
    }

    /// Embeds the batch's audio frames with `layer` (the linear frame embedding) and places them.
    pub(crate) fn frames(&mut self, layer: Option<&Linear>, batch: &Batch) -> Result<()> {
        let positions = &batch.frame_positions;
        self.linear(
            layer,
            &batch.frames,
            batch.frame_dim,
            positions,
            "audio frame",
        )
    }

    /// The `(b, t, d)` embeddings.
    pub(crate) fn finish(mut self) -> Result<Tensor> {
        let all = if self.rows.len() == 1 {
            self.rows.pop().unwrap_or_else(|| unreachable!())
        } else {
            Tensor::cat(&self.rows, 0)?
        };
        let n = self.gather.len();
        let gather = Tensor::from_vec(self.gather, n, self.decoder.device())?;
        let (b, t) = self.batch;
        all.index_select(&gather, 0)?
            .reshape((b, t, self.decoder.cfg.d_model))
    }
}
