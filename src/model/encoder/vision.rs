//! The vision encoder of the bolted-on designs: a small ViT over one image's patches.
//!
//! Linear patch embedding plus learned row and column position embeddings (so any grid up
//! to `max_grid x max_grid` works), then the bidirectional [`EncoderStack`].

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::Encoded;
use crate::fusion::ImageSpan;
use crate::model::config::BoltConfig;
use crate::model::layers::{learned, EncoderStack, Linear};

/// The ViT.
#[derive(Clone, Debug)]
pub struct VisionEncoder {
    patch_embed: Linear,
    row_embed: Tensor,
    col_embed: Tensor,
    stack: EncoderStack,
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
        Ok(Self {
            patch_embed: Linear::new(patch_dim, e.d_model, true, vb.pp("patch_embed"))?,
            row_embed: learned(&vb, (e.max_grid, e.d_model), "row_embed.weight")?,
            col_embed: learned(&vb, (e.max_grid, e.d_model), "col_embed.weight")?,
            stack: EncoderStack::new(&block_cfg, e.n_layers, vb.clone())?,
            max_grid: e.max_grid,
            d: e.d_model,
            device,
        })
    }

    /// Encodes every image of `spans` from the patch matrix `patches` (`n, patch_dim`).
    pub fn forward(&self, patches: &Tensor, spans: &[ImageSpan]) -> Result<Encoded> {
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
        let x = x
            .index_select(&gather, 0)?
            .reshape((spans.len(), p, self.d))?;
        // Bidirectional: every position sees the real ones of its row.
        let key_valid: Vec<u8> = mask.iter().map(|&v| u8::from(v == 0.0)).collect();
        let feats = self.stack.forward(&x, &key_valid)?;
        let key_mask = Tensor::from_vec(mask, (spans.len(), 1, 1, p), &self.device)?;
        Ok(Encoded {
            feats,
            key_mask,
            n_positions: spans.iter().map(|s| s.n_patches()).collect(),
        })
    }
}
