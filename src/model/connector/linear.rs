//! LLaVA-1.0's connector: one linear projection from encoder width to decoder width per patch.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::layers::Linear;

/// `d_enc -> d_model`, applied to every patch feature.
#[derive(Clone, Debug)]
pub struct LinearConnector {
    proj: Linear,
}

impl LinearConnector {
    /// Creates `proj` under `vb`.
    pub fn new(d_enc: usize, d_model: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            proj: Linear::new(d_enc, d_model, true, vb.pp("proj"))?,
        })
    }

    /// `(n, p, d_enc)` features to `(n, p, d_model)` token embeddings.
    pub fn forward(&self, feats: &Tensor) -> Result<Tensor> {
        self.proj.forward(feats)
    }
}
