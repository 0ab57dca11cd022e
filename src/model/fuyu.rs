//! The native (Fuyu-style) early-fusion model: each image patch and audio frame goes through
//! one linear layer straight into its slot of the token stream, then the decoder runs.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::decoder::Decoder;
use super::layers::Linear;
use super::Placer;
use crate::fusion::Batch;

/// Linear patch and frame embeddings and the decoder they feed.
#[derive(Clone, Debug)]
pub struct Fuyu {
    /// The decoder.
    pub decoder: Decoder,
    vision_embed: Option<Linear>,
    audio_embed: Option<Linear>,
}

impl Fuyu {
    /// Creates the parameters: the decoder's, `vision_embed` (with image input) and
    /// `audio_embed` (with audio input).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let decoder = Decoder::new(cfg, vb.clone())?;
        let vision_embed = (cfg.patch_dim > 0)
            .then(|| Linear::new(cfg.patch_dim, cfg.d_model, true, vb.pp("vision_embed")))
            .transpose()?;
        let audio_embed = (cfg.frame_dim > 0)
            .then(|| Linear::new(cfg.frame_dim, cfg.d_model, true, vb.pp("audio_embed")))
            .transpose()?;
        Ok(Self {
            decoder,
            vision_embed,
            audio_embed,
        })
    }

    /// Input embeddings `(b, t, d)`: token embeddings, with the embedded patch and frame rows
    /// at their placeholders.
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        let mut x = Placer::new(&self.decoder, batch)?;
        x.linear(
            self.vision_embed.as_ref(),
            &batch.patches,
            batch.patch_dim,
            &batch.patch_positions,
            "image patch",
        )?;
        x.frames(self.audio_embed.as_ref(), batch)?;
        x.finish()
    }
}
