//! LLaVA-1.5's connector: a two-layer MLP with GELU per patch feature.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::layers::Linear;

/// `d_enc -> d_model -> GELU -> d_model`, applied to every patch feature.
#[derive(Clone, Debug)]
pub struct MlpConnector {
    fc1: Linear,
    fc2: Linear,
}

impl MlpConnector {
    /// Creates `fc1` and `fc2` under `vb`.
    pub fn new(d_enc: usize, d_model: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(d_enc, d_model, true, vb.pp("fc1"))?,
            fc2: Linear::new(d_model, d_model, true, vb.pp("fc2"))?,
        })
    }

    /// `(n, p, d_enc)` features to `(n, p, d_model)` token embeddings.
    pub fn forward(&self, feats: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(feats)?.gelu()?)
    }
}
