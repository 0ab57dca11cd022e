//! The audio encoder of the bolted-on designs, Whisper-style.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::Encoded;
use crate::fusion::AudioSpan;
use crate::model::config::BoltConfig;
use crate::model::layers::{learned, EncoderStack, Linear};

/// The audio encoder of the bolted-on designs, Whisper-style: a stride-2 convolution
/// (kernel 3) over the frames with GELU, learned positions, bidirectional blocks, LayerNorm.
/// A clip of `n` frames gives `ceil(n / 2)` features.
#[derive(Clone, Debug)]
pub struct AudioEncoder {
    conv: Linear,
    pos_embed: Tensor,
    stack: EncoderStack,
    max_len: usize,
    frame_dim: usize,
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
            pos_embed: learned(&vb, (e.max_grid, e.d_model), "pos_embed.weight")?,
            stack: EncoderStack::new(&block_cfg, e.n_layers, vb.clone())?,
            max_len: e.max_grid,
            frame_dim,
            device,
        })
    }

    /// Encodes every clip of `spans` from the frame matrix `frames` (`n, frame_dim`).
    pub fn forward(&self, frames: &Tensor, spans: &[AudioSpan]) -> Result<Encoded> {
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
        let x = self
            .conv
            .forward(&windows)?
            .gelu()?
            .broadcast_add(&self.pos_embed.index_select(&pos, 0)?)?;
        // Bidirectional: every position sees the real ones of its row.
        let key_valid: Vec<u8> = mask.iter().map(|&v| u8::from(v == 0.0)).collect();
        let feats = self.stack.forward(&x, &key_valid)?;
        let key_mask = Tensor::from_vec(mask, (spans.len(), 1, 1, m), &self.device)?;
        Ok(Encoded {
            feats,
            key_mask,
            n_positions: outs,
        })
    }
}
