//! BLIP-2's connector: learned queries that self-attend, cross-attend to the encoder features
//! and go through an MLP, layer after layer; then one projection to decoder width. The
//! number of tokens the decoder sees is the number of queries, whatever the image size.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::config::NormKind;
use super::super::encoder::Encoded;
use super::super::layers::{learned, CrossAttention, Mlp, Norm};
use crate::model::layers::Linear;

#[derive(Clone, Debug)]
struct QFormerLayer {
    self_norm: Norm,
    self_attn: CrossAttention,
    cross_norm: Norm,
    cross_attn: CrossAttention,
    mlp_norm: Norm,
    mlp: Mlp,
}

/// The Q-Former.
#[derive(Clone, Debug)]
pub struct QFormer {
    queries: Tensor,
    layers: Vec<QFormerLayer>,
    out_norm: Norm,
    proj: Linear,
}

impl QFormer {
    /// `n_queries` queries of encoder width `d`, `layers` layers, projecting to `d_model`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d: usize,
        heads: usize,
        d_ff: usize,
        n_queries: usize,
        layers: usize,
        d_model: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let norm = |name: String| Norm::new(NormKind::LayerNorm, d, eps, vb.pp(name));
        let layers = (0..layers)
            .map(|i| {
                let p = format!("layers.{i}");
                Ok(QFormerLayer {
                    self_norm: norm(format!("{p}.self_layernorm"))?,
                    self_attn: CrossAttention::new(d, d, heads, vb.pp(format!("{p}.self_attn")))?,
                    cross_norm: norm(format!("{p}.cross_layernorm"))?,
                    cross_attn: CrossAttention::new(d, d, heads, vb.pp(format!("{p}.cross_attn")))?,
                    mlp_norm: norm(format!("{p}.mlp_layernorm"))?,
                    mlp: Mlp::gelu(d, d_ff, vb.pp(format!("{p}.mlp")))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            queries: learned(&vb, (n_queries, d), "queries")?,
            layers,
            out_norm: norm("out_layernorm".into())?,
            proj: Linear::new(d, d_model, true, vb.pp("proj"))?,
        })
    }

    /// `(n_images, n_queries, d_model)` token embeddings from the encoded images.
    pub fn forward(&self, enc: &Encoded) -> Result<Tensor> {
        Ok(self.forward_traced(enc, false)?.0)
    }

    /// [`QFormer::forward`]; with `trace`, also each layer's cross-attention of the queries
    /// over the features, `(n_images, heads, n_queries, p)`.
    pub fn forward_traced(&self, enc: &Encoded, trace: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let n = enc.feats.dim(0)?;
        let (nq, d) = self.queries.dims2()?;
        let mut q = self
            .queries
            .unsqueeze(0)?
            .broadcast_as((n, nq, d))?
            .contiguous()?;
        let mut traced = Vec::new();
        for l in &self.layers {
            let h = l.self_norm.forward(&q)?;
            q = (&q + l.self_attn.forward(&h, &h, None)?)?;
            let h = l.cross_norm.forward(&q)?;
            let (a, probs) = l
                .cross_attn
                .forward_probs(&h, &enc.feats, Some(&enc.key_mask))?;
            if trace {
                traced.push(probs);
            }
            q = (&q + a)?;
            q = (&q + l.mlp.forward(&l.mlp_norm.forward(&q)?)?)?;
        }
        Ok((self.proj.forward(&self.out_norm.forward(&q)?)?, traced))
    }
}
