//! The native (Fuyu-style) early-fusion model: linear patch and frame embeddings
//! scattered into the token stream of one decoder-only Transformer.

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::{AttnMask, Linear};

use super::config::ModelConfig;
use super::connector::{Bolted, VisualInput, XCtx};
use super::layers::{Block, LayerCache, LayerMask, Norm, Rotary};
use crate::fusion::Batch;

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
    /// Image latents the gated cross-attention layers attend to (Flamingo designs).
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
}

/// The native early-fusion decoder.
#[derive(Clone, Debug)]
pub struct NativeModel {
    /// Its configuration.
    pub cfg: ModelConfig,
    embed_tokens: Tensor,
    vision_embed: Option<Linear>,
    audio_embed: Option<Linear>,
    blocks: Vec<Block>,
    final_norm: Norm,
    lm_head: Option<Linear>,
    rotary: Rotary,
    device: Device,
    /// Vision encoder and connector of a bolted-on design (`None`: native).
    pub bolt: Option<Bolted>,
}

impl NativeModel {
    /// Builds the model's modules from `vb` (a VarMap for training, safetensors for inference).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let device = vb.device().clone();
        let embed_tokens = vb.get_with_hints(
            (cfg.vocab_size, cfg.d_model),
            "embed_tokens.weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let bolt = cfg
            .bolt
            .as_ref()
            .map(|b| Bolted::new(cfg, b, vb.clone()))
            .transpose()?;
        let vision_embed = (cfg.patch_dim > 0 && bolt.is_none())
            .then(|| Linear::new(cfg.patch_dim, cfg.d_model, true, vb.pp("vision_embed")))
            .transpose()?;
        let audio_embed = (cfg.frame_dim > 0
            && cfg.bolt.as_ref().is_none_or(|b| b.audio_encoder.is_none()))
        .then(|| Linear::new(cfg.frame_dim, cfg.d_model, true, vb.pp("audio_embed")))
        .transpose()?;
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
            vision_embed,
            audio_embed,
            blocks,
            final_norm,
            lm_head,
            rotary,
            device,
            bolt,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Input embeddings `(b, t, d)`: token embeddings with patch and frame rows put in at their placeholders.
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.embed_with_context(batch)?.0)
    }

    /// [`NativeModel::embed`], plus the image latents a Flamingo design cross-attends to.
    pub fn embed_with_context(&self, batch: &Batch) -> Result<(Tensor, Option<XCtx>)> {
        let (b, t) = (batch.batch, batch.seq_len);
        let n = b * t;
        if batch
            .tokens
            .iter()
            .any(|&id| id as usize >= self.cfg.vocab_size)
        {
            candle_core::bail!(
                "token id out of range for vocabulary of {}",
                self.cfg.vocab_size
            );
        }
        let ids = Tensor::from_slice(&batch.tokens, n, &self.device)?;
        let mut rows = vec![self.embed_tokens.index_select(&ids, 0)?];
        let mut gather: Vec<u32> = (0..n as u32).collect();
        let mut next = n;
        let mut xctx = None;
        if let (Some(bolt), false) = (&self.bolt, batch.patch_positions.is_empty()) {
            match bolt.visual_input(batch)? {
                VisualInput::Slots(t) => {
                    for (k, &p) in batch.patch_positions.iter().enumerate() {
                        if p >= n {
                            candle_core::bail!("image slot {p} outside the batch of {n} tokens");
                        }
                        gather[p] = (next + k) as u32;
                    }
                    next += batch.patch_positions.len();
                    rows.push(t);
                }
                VisualInput::Context(c) => xctx = Some(c),
            }
        }
        let audio_encoded = self.bolt.as_ref().is_some_and(|b| b.has_audio_encoder());
        if let (Some(bolt), true, false) =
            (&self.bolt, audio_encoded, batch.frame_positions.is_empty())
        {
            match bolt.audio_input(batch)? {
                VisualInput::Slots(t) => {
                    for (k, &p) in batch.frame_positions.iter().enumerate() {
                        if p >= n {
                            candle_core::bail!("audio slot {p} outside the batch of {n} tokens");
                        }
                        gather[p] = (next + k) as u32;
                    }
                    next += batch.frame_positions.len();
                    rows.push(t);
                }
                VisualInput::Context(c) => {
                    xctx = Some(match xctx.take() {
                        Some(prev) => prev.extend(&c)?,
                        None => c,
                    })
                }
            }
        }
        let mut add = |rows: &mut Vec<Tensor>,
                       layer: &Option<Linear>,
                       data: &[f32],
                       dim: usize,
                       pos: &[usize],
                       what: &str|
         -> Result<()> {
            if pos.is_empty() {
                return Ok(());
            }
            let Some(layer) = layer else {
                candle_core::bail!(
                    "this model has no {what} input, but the batch holds {} {what} rows",
                    pos.len()
                );
            };
            let want = layer.weight.dim(1)?;
            if dim != want || data.len() != pos.len() * dim {
                candle_core::bail!("{what} rows are {dim} wide, the model expects {want}");
            }
            let m = Tensor::from_slice(data, (pos.len(), dim), &self.device)?
                .to_dtype(layer.weight.dtype())?;
            rows.push(layer.forward(&m)?);
            for (k, &p) in pos.iter().enumerate() {
                if p >= n {
                    candle_core::bail!("{what} position {p} outside the batch of {n} tokens");
                }
                gather[p] = (next + k) as u32;
            }
            next += pos.len();
            Ok(())
        };
        if self.bolt.is_none() {
            add(
                &mut rows,
                &self.vision_embed,
                &batch.patches,
                batch.patch_dim,
                &batch.patch_positions,
                "image patch",
            )?;
        }
        if !audio_encoded {
            add(
                &mut rows,
                &self.audio_embed,
                &batch.frames,
                batch.frame_dim,
                &batch.frame_positions,
                "audio frame",
            )?;
        }
        let all = if rows.len() == 1 {
            rows.pop().unwrap_or_else(|| unreachable!())
        } else {
            Tensor::cat(&rows, 0)?
        };
        let gather = Tensor::from_vec(gather, n, &self.device)?;
        let x = all
            .index_select(&gather, 0)?
            .reshape((b, t, self.cfg.d_model))?;
        Ok((x, xctx))
    }

    /// Runs the decoder over embeddings `x` (`b, t, d`) with `positions` (`b*t`) and per-token validity.
    ///
    /// With a cache, the new keys are appended to it and attention sees the cached ones too.
    pub fn forward_embeds(
        &self,
        x: &Tensor,
        positions: &[u32],
        valid: &[u8],
        cache: Option<&mut KvCache>,
        want_attn: bool,
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
        let mut x = x.clone();
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
                    x = self.cross_attend(i, &x, cache.xctx.as_ref(), positions)?;
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
                    x = self.cross_attend(i, &x, xctx.as_ref(), positions)?;
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
        })
    }

    /// The gated cross-attention layer before block `i`, if the design has one and there are latents.
    fn cross_attend(
        &self,
        i: usize,
        x: &Tensor,
        ctx: Option<&XCtx>,
        positions: &[u32],
    ) -> Result<Tensor> {
        let (Some(bolt), Some(ctx)) = (&self.bolt, ctx) else {
            return Ok(x.clone());
        };
        match bolt.xattn.iter().find(|(at, _)| *at == i) {
            Some((_, layer)) => layer.forward(x, ctx, positions),
            None => Ok(x.clone()),
        }
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

    /// Mean cross-entropy of the answer tokens (`target_mask`), predicting each from the position before it.
    ///
    /// Only the positions that predict a target go through the LM head.
    pub fn loss(&self, batch: &Batch) -> Result<(Tensor, usize)> {
        let out = self.forward(batch, None, false)?;
        let (rows, targets) = loss_rows(batch);
        if rows.is_empty() {
            candle_core::bail!("batch has no answer tokens to learn from");
        }
        let d = self.cfg.d_model;
        let h = out.hidden.reshape((batch.batch * batch.seq_len, d))?;
        let idx = Tensor::from_slice(&rows, rows.len(), &self.device)?;
        let logits = self.logits(&h.index_select(&idx, 0)?)?;
        let loss = crate::kernels::cross_entropy(&logits, &targets)?;
        Ok((loss, rows.len()))
    }
}

/// Flat rows whose next token is a target, and those target ids.
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
