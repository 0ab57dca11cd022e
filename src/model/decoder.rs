//! The decoder-only Transformer every design shares: embeddings in, logits out. Its only
//! knowledge of other inputs is Flamingo's hook: gated cross-attention layers that run before
//! some blocks and attend to image or audio latents.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::ModelConfig;
use super::connector::{GatedXAttn, XCtx};
use super::layers::{learned, Block, LayerCache, LayerMask, Linear, Norm, Rotary};
use crate::fusion::Batch;
use crate::kernels::AttnMask;

/// Keys and values of every layer for the tokens seen so far, plus which keys are real.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// One slot per layer.
    pub layers: Vec<Option<LayerCache>>,
    /// `batch * len` flags, 1 for real keys, row-major.
    pub key_valid: Vec<u8>,
    /// Batch size.
    pub batch: usize,
    /// Number of cached positions per row.
    pub len: usize,
    /// Next position id of every row.
    pub next_pos: Vec<u32>,
    /// Latents the gated cross-attention layers attend to (Flamingo designs).
    pub xctx: Option<XCtx>,
}

impl KvCache {
    /// Appends `t` new key flags per row.
    fn push_valid(&mut self, new_valid: &[u8], t: usize) {
        let mut kv = Vec::with_capacity(self.batch * (self.len + t));
        for b in 0..self.batch {
            kv.extend_from_slice(&self.key_valid[b * self.len..(b + 1) * self.len]);
            kv.extend_from_slice(&new_valid[b * t..(b + 1) * t]);
        }
        self.key_valid = kv;
        self.len += t;
    }

    /// A cache whose row `i` is a copy of row `rows[i]` of `self`.
    pub fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let device = self
            .layers
            .iter()
            .flatten()
            .next()
            .map(|c| c.k.device().clone())
            .unwrap_or(Device::Cpu);
        let idx = Tensor::from_slice(rows, rows.len(), &device)?;
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some(c) => Ok(Some(LayerCache {
                    k: c.k.index_select(&idx, 0)?,
                    v: c.v.index_select(&idx, 0)?,
                })),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut key_valid = Vec::with_capacity(rows.len() * self.len);
        let mut next_pos = Vec::with_capacity(rows.len());
        for &r in rows {
            let r = r as usize;
            key_valid.extend_from_slice(&self.key_valid[r * self.len..(r + 1) * self.len]);
            next_pos.push(self.next_pos[r]);
        }
        let xctx = self
            .xctx
            .as_ref()
            .map(|c| c.select_rows(rows))
            .transpose()?;
        Ok(Self {
            layers,
            key_valid,
            batch: rows.len(),
            len: self.len,
            next_pos,
            xctx,
        })
    }
}

/// Output of a forward pass over a batch.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Final hidden states after the last norm, `(b, t, d)`.
    pub hidden: Tensor,
    /// Attention probabilities per layer `(b, h, t, keys)`, when asked for.
    pub attentions: Vec<Tensor>,
    /// Flamingo's gated cross-attention, when asked for: `(block it runs before, (b, h, t,
    /// latents) probabilities)`, zero for tokens that see no image.
    pub cross_attentions: Vec<(usize, Tensor)>,
}

/// Flamingo's hook: `(block index, layer)` pairs, each layer run before that block, and the
/// latents they attend to.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrossAttend<'a> {
    /// The gated cross-attention layers.
    pub layers: &'a [(usize, GatedXAttn)],
}

/// The logits of the positions that predict an answer token, with those tokens.
#[derive(Debug)]
pub struct TargetLogits {
    /// Flat `b * t` rows whose next token is a target, in sequence order.
    pub rows: Vec<u32>,
    /// The target token of each row.
    pub targets: Vec<u32>,
    /// `(rows, vocab)` logits in f32.
    pub logits: Tensor,
}

/// The decoder: token embeddings, pre-norm blocks with rotary attention, final norm, LM head.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// Its configuration.
    pub cfg: ModelConfig,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    final_norm: Norm,
    lm_head: Option<Linear>,
    rotary: Rotary,
    device: Device,
}

impl Decoder {
    /// Creates the decoder's parameters at the root of `vb` (`embed_tokens`, `layers.N`,
    /// `final_layernorm`, `lm_head`).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let device = vb.device().clone();
        let embed_tokens = learned(&vb, (cfg.vocab_size, cfg.d_model), "embed_tokens.weight")?;
        let blocks = (0..cfg.n_layers)
            .map(|i| Block::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = Norm::new(
            cfg.norm,
            cfg.d_model,
            cfg.norm_eps,
            vb.pp("final_layernorm"),
        )?;
        let lm_head = (!cfg.tie_embeddings)
            .then(|| Linear::new(cfg.d_model, cfg.vocab_size, false, vb.pp("lm_head")))
            .transpose()?;
        let rotary = Rotary::new(cfg.rotary_dim(), cfg.max_seq_len, cfg.rope_theta, &device)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            blocks,
            final_norm,
            lm_head,
            rotary,
            device,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token embeddings `(n, d)` of `tokens`; an id outside the vocabulary is an error.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<Tensor> {
        if tokens.iter().any(|&id| id as usize >= self.cfg.vocab_size) {
            candle_core::bail!(
                "token id out of range for vocabulary of {}",
                self.cfg.vocab_size
            );
        }
        let ids = Tensor::from_slice(tokens, tokens.len(), &self.device)?;
        self.embed_tokens.index_select(&ids, 0)
    }

    /// Runs the blocks over embeddings `x` (`b, t, d`) with `positions` (`b*t`) and per-token
    /// validity; `cross` and `xctx` are Flamingo's layers and the latents they attend to.
    ///
    /// With a cache, the new keys are appended to it and attention sees the cached ones too.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        positions: &[u32],
        valid: &[u8],
        cache: Option<&mut KvCache>,
        want_attn: bool,
        cross: CrossAttend<'_>,
        xctx: Option<XCtx>,
    ) -> Result<ForwardOutput> {
        let (b, t, _) = x.dims3()?;
        if positions
            .iter()
            .any(|&p| p as usize >= self.cfg.max_seq_len)
        {
            candle_core::bail!("sequence longer than max_seq_len {}", self.cfg.max_seq_len);
        }
        let pos = Tensor::from_slice(positions, (b, t), &self.device)?;
        let (cos, sin) = self.rotary.tables(&pos)?;
        // Half-precision weights (HF checkpoints loaded as bf16/f16) compute in their dtype.
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let mut attentions = Vec::new();
        let mut cross_attentions = Vec::new();
        let mut x = x.clone();
        let mut cross_attend = |i: usize, x: &Tensor, ctx: Option<&XCtx>| -> Result<Tensor> {
            let layer = cross.layers.iter().find(|(at, _)| *at == i);
            match (layer, ctx) {
                (Some((_, layer)), Some(ctx)) => {
                    let (y, p) = layer.forward_traced(x, ctx, positions, want_attn)?;
                    cross_attentions.extend(p.map(|p| (i, p)));
                    Ok(y)
                }
                _ => Ok(x.clone()),
            }
        };
        match cache {
            Some(cache) => {
                if cache.layers.is_empty() {
                    cache.layers = vec![None; self.blocks.len()];
                    cache.batch = b;
                    cache.next_pos = vec![0; b];
                }
                if cache.batch != b {
                    candle_core::bail!("cache holds {} rows, input has {b}", cache.batch);
                }
                let past = cache.len;
                cache.push_valid(valid, t);
                let mask = LayerMask::new(
                    AttnMask::causal(b, t, past, &cache.key_valid)?,
                    &self.device,
                    x.dtype(),
                );
                if let Some(c) = xctx {
                    cache.xctx = Some(match cache.xctx.take() {
                        Some(prev) => prev.extend(&c)?,
                        None => c,
                    });
                }
                for (i, (block, slot)) in
                    self.blocks.iter().zip(cache.layers.iter_mut()).enumerate()
                {
                    x = cross_attend(i, &x, cache.xctx.as_ref())?;
                    let (y, p) = block.forward(
                        &x,
                        &self.rotary,
                        &cos,
                        &sin,
                        &mask,
                        Some(slot),
                        want_attn,
                    )?;
                    x = y;
                    attentions.extend(p);
                }
                for bi in 0..b {
                    let last = (0..t).rev().find(|&i| valid[bi * t + i] == 1);
                    if let Some(i) = last {
                        cache.next_pos[bi] = positions[bi * t + i] + 1;
                    }
                }
            }
            None => {
                let mask =
                    LayerMask::new(AttnMask::causal(b, t, 0, valid)?, &self.device, x.dtype());
                for (i, block) in self.blocks.iter().enumerate() {
                    x = cross_attend(i, &x, xctx.as_ref())?;
                    let (y, p) =
                        block.forward(&x, &self.rotary, &cos, &sin, &mask, None, want_attn)?;
                    x = y;
                    attentions.extend(p);
                }
            }
        }
        Ok(ForwardOutput {
            hidden: self.final_norm.forward(&x)?,
            attentions,
            cross_attentions,
        })
    }

    /// Vocabulary logits for hidden rows `h` (`n, d`), in f32 whatever the weights' dtype.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => h.matmul(&self.embed_tokens.t()?),
        }?
        .to_dtype(DType::F32)
    }

    /// Logits `(b, vocab)` at the last position of every row of `hidden` (`b, t, d`).
    pub fn last_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = hidden.dim(1)?;
        self.logits(&hidden.i((.., t - 1, ..))?.contiguous()?)
    }

    /// The logits of the positions of `hidden` (`b, t, d`) that predict an answer token of
    /// `batch`: only those rows go through the LM head.
    pub fn target_logits(&self, hidden: &Tensor, batch: &Batch) -> Result<TargetLogits> {
        let (rows, targets) = loss_rows(batch);
        let logits = self.logits_at(hidden, &rows)?;
        Ok(TargetLogits {
            rows,
            targets,
            logits,
        })
    }

    /// Mean cross-entropy of the answer tokens of `batch` given the hidden states, and how
    /// many there are.
    pub fn loss(&self, hidden: &Tensor, batch: &Batch) -> Result<(Tensor, usize)> {
        let (rows, targets) = loss_rows(batch);
        if rows.is_empty() {
            candle_core::bail!("batch has no answer tokens to learn from");
        }
        let logits = self.logits_at(hidden, &rows)?;
        let loss = crate::kernels::cross_entropy(&logits, &targets)?;
        Ok((loss, rows.len()))
    }

    /// Logits of flat rows `rows` of `hidden` (`b, t, d`).
    fn logits_at(&self, hidden: &Tensor, rows: &[u32]) -> Result<Tensor> {
        let (b, t, d) = hidden.dims3()?;
        let h = hidden.reshape((b * t, d))?;
        let idx = Tensor::from_slice(rows, rows.len(), &self.device)?;
        self.logits(&h.index_select(&idx, 0)?)
    }
}

/// Flat rows whose next token is a target (`batch.target_mask`), and those target ids: the
/// one place that decides which positions carry the loss.
pub fn loss_rows(batch: &Batch) -> (Vec<u32>, Vec<u32>) {
    let t = batch.seq_len;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch.batch {
        for i in 1..t {
            let j = b * t + i;
            if batch.target_mask[j] {
                rows.push((j - 1) as u32);
                targets.push(batch.tokens[j]);
            }
        }
    }
    (rows, targets)
}
