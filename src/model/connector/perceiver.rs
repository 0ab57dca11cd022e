//! Flamingo's connector: a perceiver resampler turns each image's features into a fixed
//! number of latents, and gated cross-attention layers inserted in the decoder let text
//! tokens attend to the latents of the images before them. The `tanh` gates start at zero,
//! so a fresh Flamingo model computes exactly what its decoder computed alone.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::config::NormKind;
use super::super::encoder::Encoded;
use super::super::layers::{learned, CrossAttention, Mlp, Norm};

#[derive(Clone, Debug)]
struct ResamplerLayer {
    feat_norm: Norm,
    latent_norm: Norm,
    attn: CrossAttention,
    mlp_norm: Norm,
    mlp: Mlp,
}

/// The perceiver resampler.
#[derive(Clone, Debug)]
pub struct Perceiver {
    latents: Tensor,
    layers: Vec<ResamplerLayer>,
    out_norm: Norm,
}

impl Perceiver {
    /// `n_latents` latents of encoder width `d` and `layers` layers.
    pub fn new(
        d: usize,
        heads: usize,
        d_ff: usize,
        n_latents: usize,
        layers: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let norm = |name: String| Norm::new(NormKind::LayerNorm, d, eps, vb.pp(name));
        let layers = (0..layers)
            .map(|i| {
                let p = format!("layers.{i}");
                Ok(ResamplerLayer {
                    feat_norm: norm(format!("{p}.feat_layernorm"))?,
                    latent_norm: norm(format!("{p}.latent_layernorm"))?,
                    attn: CrossAttention::new(d, d, heads, vb.pp(format!("{p}.attn")))?,
                    mlp_norm: norm(format!("{p}.mlp_layernorm"))?,
                    mlp: Mlp::gelu(d, d_ff, vb.pp(format!("{p}.mlp")))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            latents: learned(&vb, (n_latents, d), "latents")?,
            layers,
            out_norm: norm("out_layernorm".into())?,
        })
    }

    /// `(n_images, n_latents, d)`: latents attend to the features and to themselves.
    pub fn forward(&self, enc: &Encoded) -> Result<Tensor> {
        Ok(self.forward_traced(enc, false)?.0)
    }

    /// [`Perceiver::forward`]; with `trace`, also each layer's attention of the latents over
    /// the features, `(n_images, heads, n_latents, p)` (the share each latent gives the
    /// encoder positions; the rest of its attention goes to the latents themselves).
    pub fn forward_traced(&self, enc: &Encoded, trace: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let n = enc.feats.dim(0)?;
        let (nl, d) = self.latents.dims2()?;
        let mut lat = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((n, nl, d))?
            .contiguous()?;
        let open = Tensor::zeros((n, 1, 1, nl), enc.key_mask.dtype(), enc.key_mask.device())?;
        let mask = Tensor::cat(&[&enc.key_mask, &open], 3)?;
        let p = enc.feats.dim(1)?;
        let mut traced = Vec::new();
        for l in &self.layers {
            let h = l.latent_norm.forward(&lat)?;
            let kv = Tensor::cat(&[&l.feat_norm.forward(&enc.feats)?, &h], 1)?;
            let (a, probs) = l.attn.forward_probs(&h, &kv, Some(&mask))?;
            if trace {
                traced.push(probs.narrow(3, 0, p)?);
            }
            lat = (&lat + a)?;
            lat = (&lat + l.mlp.forward(&l.mlp_norm.forward(&lat)?)?)?;
        }
        Ok((self.out_norm.forward(&lat)?, traced))
    }
}

/// What the gated cross-attention layers attend to: the latents of every image of each row.
#[derive(Clone, Debug)]
pub struct XCtx {
    /// `(b, m, d_enc)` latents; `m` is the most latents any row has.
    pub latents: Tensor,
    /// `b * m` position ids of the image slot each latent belongs to (`u32::MAX`: padding).
    pub key_pos: Vec<u32>,
}

impl XCtx {
    /// Latents per row.
    pub fn width(&self) -> usize {
        self.key_pos.len() / self.latents.dim(0).unwrap_or(1).max(1)
    }

    /// Rows `rows` of the context, in that order.
    pub fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let m = self.width();
        let idx = Tensor::from_slice(rows, rows.len(), self.latents.device())?;
        let mut key_pos = Vec::with_capacity(rows.len() * m);
        for &r in rows {
            key_pos.extend_from_slice(&self.key_pos[r as usize * m..(r as usize + 1) * m]);
        }
        Ok(Self {
            latents: self.latents.index_select(&idx, 0)?,
            key_pos,
        })
    }

    /// This context followed by `other`'s latents (images seen later in the same rows).
    pub fn extend(&self, other: &XCtx) -> Result<Self> {
        let (b, ma, mb) = (self.latents.dim(0)?, self.width(), other.width());
        if other.latents.dim(0)? != b {
            candle_core::bail!(
                "cross-attention context rows differ ({b} vs {})",
                other.latents.dim(0)?
            );
        }
        let mut key_pos = Vec::with_capacity(b * (ma + mb));
        for r in 0..b {
            key_pos.extend_from_slice(&self.key_pos[r * ma..(r + 1) * ma]);
            key_pos.extend_from_slice(&other.key_pos[r * mb..(r + 1) * mb]);
        }
        Ok(Self {
            latents: Tensor::cat(&[&self.latents, &other.latents], 1)?,
            key_pos,
        })
    }

    /// Additive mask `(b, 1, t, m)` (a query sees the latents of images at or before its
    /// position) and a `(b, t, 1)` factor that zeroes queries that see no image.
    pub fn mask(&self, positions: &[u32], t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let m = self.width();
        let b = self.latents.dim(0)?;
        if positions.len() != b * t {
            candle_core::bail!(
                "cross-attention: {} positions for {b} x {t} tokens",
                positions.len()
            );
        }
        let mut mask = vec![f32::NEG_INFINITY; b * t * m];
        let mut any = vec![0f32; b * t];
        for r in 0..b {
            for q in 0..t {
                let qp = positions[r * t + q];
                let row = &mut mask[(r * t + q) * m..(r * t + q + 1) * m];
                for (k, slot) in row.iter_mut().enumerate() {
                    let kp = self.key_pos[r * m + k];
                    if kp != u32::MAX && kp <= qp {
                        *slot = 0.0;
                        any[r * t + q] = 1.0;
                    }
                }
                if any[r * t + q] == 0.0 {
                    row.fill(0.0);
                }
            }
        }
        Ok((
            Tensor::from_vec(mask, (b, 1, t, m), device)?,
            Tensor::from_vec(any, (b, t, 1), device)?,
        ))
    }
}

/// A Flamingo layer: `x + tanh(a) * xattn(norm(x), latents)`, then `x + tanh(b) * mlp(norm(x))`.
#[derive(Clone, Debug)]
pub struct GatedXAttn {
    attn_norm: Norm,
    attn: CrossAttention,
    attn_gate: Tensor,
    ff_norm: Norm,
    ff: Mlp,
    ff_gate: Tensor,
}

impl GatedXAttn {
    /// Decoder width `d_model`, latent width `d_enc`.
    pub fn new(
        d_model: usize,
        d_enc: usize,
        heads: usize,
        d_ff: usize,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let zero = candle_nn::Init::Const(0.0);
        Ok(Self {
            attn_norm: Norm::new(NormKind::LayerNorm, d_model, eps, vb.pp("attn_layernorm"))?,
            attn: CrossAttention::new(d_model, d_enc, heads, vb.pp("attn"))?,
            attn_gate: vb.get_with_hints(1, "attn_gate", zero)?,
            ff_norm: Norm::new(NormKind::LayerNorm, d_model, eps, vb.pp("ff_layernorm"))?,
            ff: Mlp::gelu(d_model, d_ff, vb.pp("ff"))?,
            ff_gate: vb.get_with_hints(1, "ff_gate", zero)?,
        })
    }

    /// Applies the layer to `x` (`b, t, d_model`) at position ids `positions`.
    pub fn forward(&self, x: &Tensor, ctx: &XCtx, positions: &[u32]) -> Result<Tensor> {
        Ok(self.forward_traced(x, ctx, positions, false)?.0)
    }

    /// `(tanh(attention gate), tanh(MLP gate))`: how far the layer is open (0: closed).
    pub fn gates(&self) -> Result<(f32, f32)> {
        let g = |t: &Tensor| -> Result<f32> {
            t.tanh()?
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .get(0)?
                .to_scalar()
        };
        Ok((g(&self.attn_gate)?, g(&self.ff_gate)?))
    }

    /// [`GatedXAttn::forward`]; with `trace`, also the attention of every token over the
    /// latents, `(b, heads, t, m)`, zero for tokens that see no image yet.
    pub fn forward_traced(
        &self,
        x: &Tensor,
        ctx: &XCtx,
        positions: &[u32],
        trace: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let t = x.dim(1)?;
        let (mask, any) = ctx.mask(positions, t, x.device())?;
        let (a, probs) =
            self.attn
                .forward_probs(&self.attn_norm.forward(x)?, &ctx.latents, Some(&mask))?;
        let a = a.broadcast_mul(&any)?;
        let probs = if trace {
            Some(probs.broadcast_mul(&any.unsqueeze(1)?.to_dtype(probs.dtype())?)?)
        } else {
            None
        };
        let x = (x + a.broadcast_mul(&self.attn_gate.tanh()?)?)?;
        let f = self
            .ff
            .forward(&self.ff_norm.forward(&x)?)?
            .broadcast_mul(&any)?;
        Ok(((&x + f.broadcast_mul(&self.ff_gate.tanh()?)?)?, probs))
    }
}
