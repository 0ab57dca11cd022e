//! Decoder building blocks: norms, rotary positions, attention with a KV cache, MLP, block.
//!
//! Every op here has a backward in candle (no fused `softmax_last_dim` /
//! `layer_norm`, which silently stop gradients), so the same modules train
//! and run inference.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::kernels::AttnMask;

use super::config::{Activation, ModelConfig, NormKind};

/// A learned table `name` of `shape` under `vb` (embeddings, positions, queries, latents),
/// drawn from N(0, 0.02) when created.
pub fn learned(vb: &VarBuilder, shape: (usize, usize), name: &str) -> Result<Tensor> {
    vb.get_with_hints(
        shape,
        name,
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        },
    )
}

/// A linear layer (`weight`: `out x in`, optional `bias`) using the fused [`crate::kernels::linear`].
#[derive(Clone, Debug)]
pub struct Linear {
    /// `out x in`.
    pub weight: Tensor,
    /// `out`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Creates `weight` (and `bias`) under `vb` with candle_nn's default initialisation.
    pub fn new(inp: usize, out: usize, bias: bool, vb: candle_nn::VarBuilder) -> Result<Self> {
        let l = if bias {
            candle_nn::linear(inp, out, vb)?
        } else {
            candle_nn::linear_no_bias(inp, out, vb)?
        };
        Ok(Self {
            weight: l.weight().clone(),
            bias: l.bias().cloned(),
        })
    }
}

impl Linear {
    /// The layer followed by `epilogue`, fused on the CPU in f32 ([`crate::kernels::linear_then`]).
    pub fn forward_then(&self, x: &Tensor, epilogue: crate::kernels::Epilogue) -> Result<Tensor> {
        crate::kernels::linear_then(x, &self.weight, self.bias.as_ref(), epilogue)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// LayerNorm or RMSNorm over the last dimension, built from differentiable ops.
#[derive(Clone, Debug)]
pub struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    /// Creates the norm's parameters (`weight`, and `bias` for LayerNorm) under `vb`.
    pub fn new(kind: NormKind, dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = match kind {
            NormKind::LayerNorm => {
                Some(vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?)
            }
            NormKind::RmsNorm => None,
        };
        Ok(Self { weight, bias, eps })
    }
}

impl Module for Norm {
    /// The fused op of [`crate::kernels`] for f32, the plain path otherwise.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if matches!(x.dtype(), DType::F16 | DType::BF16) {
            // Half precision (HF checkpoints loaded as bf16/f16): normalise in f32, as
            // torch does, so sums of squares neither overflow nor lose the mean.
            let up = Norm {
                weight: self.weight.to_dtype(DType::F32)?,
                bias: self
                    .bias
                    .as_ref()
                    .map(|b| b.to_dtype(DType::F32))
                    .transpose()?,
                eps: self.eps,
            };
            return up.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype());
        }
        if !crate::kernels::enabled_on(x.device())
            || x.dtype() != DType::F32
            || self.weight.dtype() != DType::F32
        {
            return self.forward_plain(x);
        }
        match &self.bias {
            Some(b) => crate::kernels::layer_norm(x, &self.weight, b, self.eps),
            None => crate::kernels::rms_norm(x, &self.weight, self.eps),
        }
    }
}

impl Norm {
    /// The norm built from candle's differentiable ops (reference for the fused op).
    pub fn forward_plain(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)? as f64;
        match &self.bias {
            Some(bias) => {
                let mean = (x.sum_keepdim(D::Minus1)? / d)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / d)?;
                let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
                xn.broadcast_mul(&self.weight)?.broadcast_add(bias)
            }
            None => {
                let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / d)?;
                x.broadcast_div(&(ms + self.eps)?.sqrt()?)?
                    .broadcast_mul(&self.weight)
            }
        }
    }
}

/// Rotary position tables (`cos`, `sin`, each `max_seq_len x rotary_dim/2`).
#[derive(Clone, Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    dim: usize,
}

impl Rotary {
    /// Precomputes the tables for `dim` rotated dimensions.
    pub fn new(dim: usize, max_seq_len: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = dim / 2;
        let mut cos = Vec::with_capacity(max_seq_len * half);
        let mut sin = Vec::with_capacity(max_seq_len * half);
        for p in 0..max_seq_len {
            for i in 0..half {
                let inv = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_seq_len, half), device)?,
            sin: Tensor::from_vec(sin, (max_seq_len, half), device)?,
            dim,
        })
    }

    /// Gathers `(b, 1, t, dim/2)` cos/sin for a `(b, t)` tensor of position ids.
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.dim / 2;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, 1, t, half))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, 1, t, half))?;
        Ok((cos, sin))
    }

    /// Rotates the first `dim` channels of `x` (`b, h, t, head_dim`), GPT-NeoX / Persimmon style.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if self.dim == 0 {
            return Ok(x.clone());
        }
        if crate::kernels::enabled_on(x.device())
            && x.dtype() == DType::F32
            && cos.dtype() == DType::F32
        {
            return crate::kernels::rotary(x, cos, sin, self.dim);
        }
        self.apply_plain(x, cos, sin)
    }

    /// [`Rotary::apply`] built from candle's ops (reference for the fused op).
    pub fn apply_plain(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if self.dim == 0 {
            return Ok(x.clone());
        }
        let hd = x.dim(D::Minus1)?;
        let half = self.dim / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        if self.dim == hd {
            Tensor::cat(&[r1, r2], D::Minus1)
        } else {
            let pass = x.narrow(D::Minus1, self.dim, hd - self.dim)?;
            Tensor::cat(&[r1, r2, pass], D::Minus1)
        }
    }
}

pub use crate::kernels::attention::{LayerMask, FUSED_ATTENTION_MIN_SCORES};

/// Cached keys and values of one layer, `(b, kv_heads, t, head_dim)` each.
#[derive(Clone, Debug)]
pub struct LayerCache {
    /// Keys after rotary.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// Multi-head self-attention with optional grouped KV heads and QK-LayerNorm.
#[derive(Clone, Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    dense: Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Creates the attention parameters under `vb`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let hd = cfg.head_dim();
        let d = cfg.d_model;
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(Norm::new(
                    NormKind::LayerNorm,
                    hd,
                    cfg.norm_eps,
                    vb.pp("q_layernorm"),
                )?),
                Some(Norm::new(
                    NormKind::LayerNorm,
                    hd,
                    cfg.norm_eps,
                    vb.pp("k_layernorm"),
                )?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: Linear::new(d, cfg.n_heads * hd, true, vb.pp("q_proj"))?,
            k_proj: Linear::new(d, cfg.n_kv_heads * hd, true, vb.pp("k_proj"))?,
            v_proj: Linear::new(d, cfg.n_kv_heads * hd, true, vb.pp("v_proj"))?,
            dense: Linear::new(cfg.n_heads * hd, d, true, vb.pp("dense"))?,
            q_norm,
            k_norm,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: hd,
        })
    }

    /// q and k (`b, t, heads, hd` from the projections) normalised (QK-LayerNorm, when the
    /// model has it), rotated and moved to the attention layout (`b, heads, t, hd`):
    /// [`crate::kernels::qk_prep`], one fused kernel per tensor on CUDA, [`Norm`] and
    /// [`Rotary::apply`] otherwise.
    fn prepare_qk(
        &self,
        q: Tensor,
        k: Tensor,
        rotary: &Rotary,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        fn norm(n: &Option<Norm>) -> Result<Option<(&Tensor, &Tensor, f64)>> {
            match n {
                Some(Norm {
                    weight,
                    bias: Some(bias),
                    eps,
                }) => Ok(Some((weight, bias, *eps))),
                Some(_) => candle_core::bail!("QK-norm without a bias: not a LayerNorm"),
                None => Ok(None),
            }
        }
        let prep = |x: &Tensor, n: &Option<Norm>| {
            crate::kernels::qk_prep(x, norm(n)?, cos, sin, rotary.dim, |x| {
                let x = match n {
                    Some(n) => n.forward(&x)?,
                    None => x,
                };
                rotary.apply(&x, cos, sin)
            })
        };
        Ok((
            prep(&q, &self.q_norm)?,
            prep(&k, &self.k_norm)?.contiguous()?,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    /// Attends `x` (`b, t, d`) to the cache plus itself; `mask` covers `b x t` queries and
    /// `t_total` keys.
    ///
    /// Returns the output and, when `want_probs`, the attention probabilities `(b, h, t, t_total)`.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        cos: &Tensor,
        sin: &Tensor,
        mask: &LayerMask,
        cache: Option<&mut Option<LayerCache>>,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = x.dims3()?;
        let hd = self.head_dim;
        let split = |y: Tensor, n: usize| y.reshape((b, t, n, hd));
        let q = split(self.q_proj.forward(x)?, self.n_heads)?;
        let k = split(self.k_proj.forward(x)?, self.n_kv_heads)?;
        let v = split(self.v_proj.forward(x)?, self.n_kv_heads)?
            .transpose(1, 2)?
            .contiguous()?;
        let (q, k) = self.prepare_qk(q, k, rotary, cos, sin)?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some(prev) => (
                        Tensor::cat(&[&prev.k, &k], 2)?,
                        Tensor::cat(&[&prev.v, &v], 2)?,
                    ),
                    None => (k, v),
                };
                *slot = Some(LayerCache {
                    k: k.clone(),
                    v: v.clone(),
                });
                (k, v)
            }
            None => (k, v),
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let (out, probs) = crate::kernels::attend(&q, &k, &v, mask, scale, want_probs)?;
        Ok((self.dense.forward(&out)?, probs))
    }
}

/// Multi-head attention of queries `x` (`b, tq, d_q`) over a separate context (`b, tk, d_kv`):
/// the cross-attention of Q-Former, perceiver and Flamingo layers (no rotary, no cache).
#[derive(Clone, Debug)]
pub struct CrossAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    dense: Linear,
    n_heads: usize,
    head_dim: usize,
}

impl CrossAttention {
    /// Projections to `d_q` wide heads (`n_heads` of them) under `vb`.
    pub fn new(d_q: usize, d_kv: usize, n_heads: usize, vb: VarBuilder) -> Result<Self> {
        if n_heads == 0 || !d_q.is_multiple_of(n_heads) {
            candle_core::bail!("cross-attention width {d_q} is not divisible by {n_heads} heads");
        }
        Ok(Self {
            q_proj: Linear::new(d_q, d_q, true, vb.pp("q_proj"))?,
            k_proj: Linear::new(d_kv, d_q, true, vb.pp("k_proj"))?,
            v_proj: Linear::new(d_kv, d_q, true, vb.pp("v_proj"))?,
            dense: Linear::new(d_q, d_q, true, vb.pp("dense"))?,
            n_heads,
            head_dim: d_q / n_heads,
        })
    }

    /// Attends `x` to `ctx`; `mask` is additive and broadcasts to `(b, h, tq, tk)`.
    pub fn forward(&self, x: &Tensor, ctx: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.forward_probs(x, ctx, mask)?.0)
    }

    /// [`CrossAttention::forward`], and the attention probabilities `(b, h, tq, tk)` it used
    /// (for the inspector; computing them costs nothing extra).
    pub fn forward_probs(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, tq, _) = x.dims3()?;
        let tk = ctx.dim(1)?;
        let (h, hd) = (self.n_heads, self.head_dim);
        let heads = |proj: &Linear, y: &Tensor, t: usize| -> Result<Tensor> {
            proj.forward(y)?
                .reshape((b, t, h, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(&self.q_proj, x, tq)?;
        let k = heads(&self.k_proj, ctx, tk)?;
        let v = heads(&self.v_proj, ctx, tk)?;
        let mut scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let probs = if crate::kernels::enabled_on(scores.device()) && scores.dtype() == DType::F32 {
            crate::kernels::softmax_last(&scores)?
        } else {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        };
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, tq, h * hd))?;
        Ok((self.dense.forward(&out)?, probs))
    }
}

/// The position-wise MLP.
#[derive(Clone, Debug)]
pub struct Mlp {
    up: Linear,
    gate: Option<Linear>,
    down: Linear,
    activation: Activation,
}

impl Mlp {
    /// A GELU MLP `d -> d_ff -> d` outside a decoder (encoders, connectors, cross-attention layers).
    pub fn gelu(d: usize, d_ff: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            up: Linear::new(d, d_ff, true, vb.pp("dense_h_to_4h"))?,
            gate: None,
            down: Linear::new(d_ff, d, true, vb.pp("dense_4h_to_h"))?,
            activation: Activation::Gelu,
        })
    }

    /// Creates the MLP parameters under `vb`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let gate = match cfg.activation {
            Activation::SwiGlu => Some(Linear::new(
                cfg.d_model,
                cfg.d_ff,
                true,
                vb.pp("gate_proj"),
            )?),
            _ => None,
        };
        Ok(Self {
            up: Linear::new(cfg.d_model, cfg.d_ff, true, vb.pp("dense_h_to_4h"))?,
            gate,
            down: Linear::new(cfg.d_ff, cfg.d_model, true, vb.pp("dense_4h_to_h"))?,
            activation: cfg.activation,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match (self.activation, &self.gate) {
            // relu² rides on the up-projection's op (one pass, no separate activation op).
            (Activation::Relu2, _) => self.up.forward_then(x, crate::kernels::Epilogue::Relu2)?,
            (Activation::Gelu, _) => self.up.forward_then(x, crate::kernels::Epilogue::Gelu)?,
            (Activation::SwiGlu, Some(g)) => {
                (candle_nn::ops::silu(&g.forward(x)?)? * self.up.forward(x)?)?
            }
            (Activation::SwiGlu, None) => candle_core::bail!("swiglu MLP without gate projection"),
        };
        self.down.forward(&h)
    }
}

/// One pre-norm decoder block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Clone, Debug)]
pub struct Block {
    input_norm: Norm,
    attn: Attention,
    post_norm: Norm,
    mlp: Mlp,
}

impl Block {
    /// Creates block `vb`'s parameters.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_norm: Norm::new(
                cfg.norm,
                cfg.d_model,
                cfg.norm_eps,
                vb.pp("input_layernorm"),
            )?,
            attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_norm: Norm::new(
                cfg.norm,
                cfg.d_model,
                cfg.norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    /// Runs the block; see [`Attention::forward`] for the arguments.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        cos: &Tensor,
        sin: &Tensor,
        mask: &LayerMask,
        cache: Option<&mut Option<LayerCache>>,
        want_probs: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (a, probs) = self.attn.forward(
            &self.input_norm.forward(x)?,
            rotary,
            cos,
            sin,
            mask,
            cache,
            want_probs,
        )?;
        let x = (x + a)?;
        let m = self.mlp.forward(&self.post_norm.forward(&x)?)?;
        Ok(((x + m)?, probs))
    }
}

/// The additive attention mask `(b, 1, t, past + t)`: causal, and `-inf` on padded keys
/// (f32, dense: [`AttnMask::causal`] materialised).
///
/// `key_valid` holds `b * (past + t)` flags (1 = real token) for every key position.
pub fn attention_mask(
    b: usize,
    t: usize,
    past: usize,
    key_valid: &[u8],
    device: &Device,
) -> Result<Tensor> {
    AttnMask::causal(b, t, past, key_valid)?.dense(device, DType::F32)
}

/// A stack of bidirectional pre-norm blocks with a final LayerNorm: the body of the ViT, the
/// audio encoder and the contrastive caption tower (weights `layers.N`, `final_layernorm`).
#[derive(Clone, Debug)]
pub struct EncoderStack {
    blocks: Vec<Block>,
    final_norm: Norm,
    rotary: Rotary,
}

impl EncoderStack {
    /// `layers` blocks shaped by `block_cfg` (no rotary, GELU MLP) under `vb`.
    pub fn new(block_cfg: &ModelConfig, layers: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            blocks: (0..layers)
                .map(|i| Block::new(block_cfg, vb.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            final_norm: Norm::new(
                NormKind::LayerNorm,
                block_cfg.d_model,
                block_cfg.norm_eps,
                vb.pp("final_layernorm"),
            )?,
            rotary: Rotary::new(0, 1, 10_000.0, vb.device())?,
        })
    }

    /// Runs `x` (`n, t, d`) through the blocks, every position seeing the real ones of its
    /// row (`key_valid`: `n * t` flags, 1 for real), then the final norm.
    pub fn forward(&self, x: &Tensor, key_valid: &[u8]) -> Result<Tensor> {
        let (n, t, _) = x.dims3()?;
        let mask = LayerMask::new(
            AttnMask::bidirectional(n, t, 0, key_valid)?,
            x.device(),
            x.dtype(),
        );
        let dummy = Tensor::zeros(1, DType::F32, x.device())?;
        let mut x = x.clone();
        for block in &self.blocks {
            x = block
                .forward(&x, &self.rotary, &dummy, &dummy, &mask, None, false)?
                .0;
        }
        self.final_norm.forward(&x)
    }
}
