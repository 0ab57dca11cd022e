//! The vision encoder of the bolted-on designs: a small ViT over one image's patches.
//!
//! Linear patch embedding plus learned row and column position embeddings (so any grid up
//! to `max_grid x max_grid` works), bidirectional pre-norm blocks (the decoder's [`Block`]
//! with no rotary and a key-padding mask instead of the causal one), final LayerNorm.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BoltConfig, NormKind};
use super::layers::{Block, LayerMask, Norm, Rotary};
use crate::fusion::ImageSpan;
use crate::kernels::{AttnMask, Linear};

/// Features of a batch of images, padded to the longest.
#[derive(Clone, Debug)]
pub struct EncodedImages {
    /// `(n_images, p, d_enc)` features; rows past an image's patch count are padding.
    pub feats: Tensor,
    /// Additive key mask `(n_images, 1, 1, p)`: 0 on real patches, `-inf` on padding.
    pub key_mask: Tensor,
    /// Patches of each image.
    pub n_patches: Vec<usize>,
}

/// The ViT.
#[derive(Clone, Debug)]
pub struct VisionEncoder {
    patch_embed: Linear,
    row_embed: Tensor,
    col_embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Norm,
    rotary: Rotary,
    max_grid: usize,
    d: usize,
    device: Device,
}

impl VisionEncoder {
    /// Creates the encoder's parameters under `vb` for patches `patch_dim` wide.
    pub fn new(bolt: &BoltConfig, patch_dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let e = &bolt.encoder;
        let block_cfg = bolt.encoder_block_config(eps);
        let device = vb.device().clone();
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            patch_embed: Linear::new(patch_dim, e.d_model, true, vb.pp("patch_embed"))?,
            row_embed: vb.get_with_hints((e.max_grid, e.d_model), "row_embed.weight", init)?,
            col_embed: vb.get_with_hints((e.max_grid, e.d_model), "col_embed.weight", init)?,
            blocks: (0..e.n_layers)
                .map(|i| Block::new(&block_cfg, vb.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            final_norm: Norm::new(
                NormKind::LayerNorm,
                e.d_model,
                eps,
                vb.pp("final_layernorm"),
            )?,
            rotary: Rotary::new(0, 1, 10_000.0, &device)?,
            max_grid: e.max_grid,
            d: e.d_model,
            device,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device.clone()
    }

    /// Encodes every image of `spans` from the patch matrix `patches` (`n, patch_dim`).
    pub fn forward(&self, patches: &Tensor, spans: &[ImageSpan]) -> Result<EncodedImages> {
        let n_rows = patches.dim(0)?;
        let p = spans.iter().map(|s| s.n_patches()).max().unwrap_or(0);
        if spans.is_empty() || p == 0 {
            candle_core::bail!("vision encoder: no image patches to encode");
        }
        let mut rows = Vec::with_capacity(n_rows);
        let mut cols = Vec::with_capacity(n_rows);
        let mut gather = vec![n_rows as u32; spans.len() * p];
        let mut mask = vec![f32::NEG_INFINITY; spans.len() * p];
        for (i, s) in spans.iter().enumerate() {
            if s.rows > self.max_grid || s.cols > self.max_grid {
                candle_core::bail!(
                    "image of {} x {} patches is larger than the vision encoder's {} x {} grid",
                    s.rows,
                    s.cols,
                    self.max_grid,
                    self.max_grid
                );
            }
            if s.patch_start + s.n_patches() > n_rows {
                candle_core::bail!(
                    "image patches {}..{} outside the batch's {n_rows} patch rows",
                    s.patch_start,
                    s.patch_start + s.n_patches()
                );
            }
            for k in 0..s.n_patches() {
                gather[i * p + k] = (s.patch_start + k) as u32;
                mask[i * p + k] = 0.0;
            }
        }
        // Position ids of every patch row in the matrix (rows not in any span stay at 0).
        rows.resize(n_rows, 0u32);
        cols.resize(n_rows, 0u32);
        for s in spans {
            for k in 0..s.n_patches() {
                rows[s.patch_start + k] = (k / s.cols.max(1)) as u32;
                cols[s.patch_start + k] = (k % s.cols.max(1)) as u32;
            }
        }
        let rows = Tensor::from_vec(rows, n_rows, &self.device)?;
        let cols = Tensor::from_vec(cols, n_rows, &self.device)?;
        let x = self
            .patch_embed
            .forward(patches)?
            .add(&self.row_embed.index_select(&rows, 0)?)?
            .add(&self.col_embed.index_select(&cols, 0)?)?;
        let zero = Tensor::zeros((1, self.d), x.dtype(), &self.device)?;
        let x = Tensor::cat(&[&x, &zero], 0)?;
        let gather = Tensor::from_vec(gather, spans.len() * p, &self.device)?;
        let mut x = x
            .index_select(&gather, 0)?
            .reshape((spans.len(), p, self.d))?;
        // Bidirectional: every position sees the real ones of its row.
        let key_valid: Vec<u8> = mask.iter().map(|&v| u8::from(v == 0.0)).collect();
        let attn_mask = LayerMask::new(
            AttnMask::bidirectional(spans.len(), p, 0, &key_valid)?,
            &self.device,
            x.dtype(),
        );
        let key_mask = Tensor::from_vec(mask, (spans.len(), 1, 1, p), &self.device)?;
        let dummy = Tensor::zeros(1, DType::F32, &self.device)?;
        for block in &self.blocks {
            x = block
                .forward(&x, &self.rotary, &dummy, &dummy, &attn_mask, None, false)?
                .0;
        }
        Ok(EncodedImages {
            feats: self.final_norm.forward(&x)?,
            key_mask,
            n_patches: spans.iter().map(|s| s.n_patches()).collect(),
        })
    }
}

/// The audio encoder of the bolted-on designs, Whisper-style: a stride-2 convolution
/// (kernel 3) over the frames with GELU, learned positions, bidirectional blocks, LayerNorm.
/// A clip of `n` frames gives `ceil(n / 2)` features.
#[derive(Clone, Debug)]
pub struct AudioEncoder {
    conv: Linear,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Norm,
    rotary: Rotary,
    max_len: usize,
    frame_dim: usize,
    d: usize,
    device: Device,
}

impl AudioEncoder {
    /// Creates the encoder's parameters under `vb` for frames `frame_dim` wide.
    pub fn new(bolt: &BoltConfig, frame_dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let (Some(e), Some(block_cfg)) = (&bolt.audio_encoder, bolt.audio_block_config(eps)) else {
            candle_core::bail!("no audio encoder in this configuration");
        };
        let device = vb.device().clone();
        Ok(Self {
            conv: Linear::new(3 * frame_dim, e.d_model, true, vb.pp("conv"))?,
            pos_embed: vb.get_with_hints(
                (e.max_grid, e.d_model),
                "pos_embed.weight",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            blocks: (0..e.n_layers)
                .map(|i| Block::new(&block_cfg, vb.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            final_norm: Norm::new(
                NormKind::LayerNorm,
                e.d_model,
                eps,
                vb.pp("final_layernorm"),
            )?,
            rotary: Rotary::new(0, 1, 10_000.0, &device)?,
            max_len: e.max_grid,
            frame_dim,
            d: e.d_model,
            device,
        })
    }

    /// Encodes every clip of `spans` from the frame matrix `frames` (`n, frame_dim`).
    pub fn forward(
        &self,
        frames: &Tensor,
        spans: &[crate::fusion::AudioSpan],
    ) -> Result<EncodedImages> {
        let n_rows = frames.dim(0)?;
        let outs: Vec<usize> = spans.iter().map(|s| s.n_frames.div_ceil(2)).collect();
        let m = outs.iter().copied().max().unwrap_or(0);
        if spans.is_empty() || m == 0 {
            candle_core::bail!("audio encoder: no frames to encode");
        }
        if m > self.max_len {
            candle_core::bail!(
                "an audio clip of {} frames gives {m} encoder positions, more than the audio encoder's {}",
                spans.iter().map(|s| s.n_frames).max().unwrap_or(0),
                self.max_len
            );
        }
        // Row `n_rows` of the padded matrix is zeros: the convolution's padding.
        let mut gather = vec![n_rows as u32; spans.len() * m * 3];
        let mut mask = vec![f32::NEG_INFINITY; spans.len() * m];
        for (i, s) in spans.iter().enumerate() {
            if s.frame_start + s.n_frames > n_rows {
                candle_core::bail!(
                    "audio frames {}..{} outside the batch's {n_rows} frame rows",
                    s.frame_start,
                    s.frame_start + s.n_frames
                );
            }
            for j in 0..outs[i] {
                mask[i * m + j] = 0.0;
                for (k, off) in [-1i64, 0, 1].iter().enumerate() {
                    let f = 2 * j as i64 + off;
                    if f >= 0 && (f as usize) < s.n_frames {
                        gather[(i * m + j) * 3 + k] = (s.frame_start + f as usize) as u32;
                    }
                }
            }
        }
        let zero = Tensor::zeros((1, self.frame_dim), frames.dtype(), &self.device)?;
        let padded = Tensor::cat(&[frames, &zero], 0)?;
        let g = Tensor::from_vec(gather, spans.len() * m * 3, &self.device)?;
        let windows = padded
            .index_select(&g, 0)?
            .reshape((spans.len(), m, 3 * self.frame_dim))?;
        let pos = Tensor::arange(0u32, m as u32, &self.device)?;
        let mut x = self
            .conv
            .forward(&windows)?
            .gelu()?
            .broadcast_add(&self.pos_embed.index_select(&pos, 0)?)?;
        // Bidirectional: every position sees the real ones of its row.
        let key_valid: Vec<u8> = mask.iter().map(|&v| u8::from(v == 0.0)).collect();
        let attn_mask = LayerMask::new(
            AttnMask::bidirectional(spans.len(), m, 0, &key_valid)?,
            &self.device,
            x.dtype(),
        );
        let key_mask = Tensor::from_vec(mask, (spans.len(), 1, 1, m), &self.device)?;
        let dummy = Tensor::zeros(1, DType::F32, &self.device)?;
        for block in &self.blocks {
            x = block
                .forward(&x, &self.rotary, &dummy, &dummy, &attn_mask, None, false)?
                .0;
        }
        let _ = self.d;
        Ok(EncodedImages {
            feats: self.final_norm.forward(&x)?,
            key_mask,
            n_patches: outs,
        })
    }
}
