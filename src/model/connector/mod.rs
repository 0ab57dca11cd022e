//! The bolted-on side of the comparison: a vision encoder joined to the decoder by a
//! connector. Each connector is its own short file; [`Bolted`] holds the encoder, the
//! connector and (Flamingo) the gated cross-attention layers the decoder runs.

pub mod linear;
pub mod mlp;
pub mod perceiver;
pub mod qformer;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BoltConfig, ConnectorKind, ModelConfig};
use super::encoder::VisionEncoder;
use crate::fusion::Batch;
pub use linear::LinearConnector;
pub use mlp::MlpConnector;
pub use perceiver::{GatedXAttn, Perceiver, XCtx};
pub use qformer::QFormer;

/// One of the four connectors.
#[derive(Clone, Debug)]
pub enum Connector {
    /// LLaVA-1.0.
    Linear(LinearConnector),
    /// LLaVA-1.5.
    Mlp(MlpConnector),
    /// BLIP-2.
    QFormer(QFormer),
    /// Flamingo.
    Perceiver(Perceiver),
}

/// What the images of a batch become.
#[derive(Debug)]
pub enum VisualInput {
    /// Embeddings for the image slots, row `k` for `batch.patch_positions[k]`.
    Slots(Tensor),
    /// Latents the gated cross-attention layers attend to (the slots keep their token embedding).
    Context(XCtx),
}

/// Vision encoder + connector (+ gated cross-attention layers).
#[derive(Clone, Debug)]
pub struct Bolted {
    /// The configuration.
    pub cfg: BoltConfig,
    encoder: VisionEncoder,
    connector: Connector,
    /// `(decoder block index, layer)`: the layer runs before that block.
    pub xattn: Vec<(usize, GatedXAttn)>,
}

impl Bolted {
    /// Creates the encoder under `vision_encoder.`, the connector under `connector.` and the
    /// cross-attention layers under `xattn.<block>.`.
    pub fn new(cfg: &ModelConfig, bolt: &BoltConfig, vb: VarBuilder) -> Result<Self> {
        let e = &bolt.encoder;
        let eps = cfg.norm_eps;
        let encoder = VisionEncoder::new(bolt, cfg.patch_dim, eps, vb.pp("vision_encoder"))?;
        let cvb = vb.pp("connector");
        let connector = match bolt.connector {
            ConnectorKind::Linear => {
                Connector::Linear(LinearConnector::new(e.d_model, cfg.d_model, cvb)?)
            }
            ConnectorKind::Mlp => Connector::Mlp(MlpConnector::new(e.d_model, cfg.d_model, cvb)?),
            ConnectorKind::QFormer => Connector::QFormer(QFormer::new(
                e.d_model,
                e.n_heads,
                e.d_ff,
                bolt.n_queries,
                bolt.connector_layers,
                cfg.d_model,
                eps,
                cvb,
            )?),
            ConnectorKind::Perceiver => Connector::Perceiver(Perceiver::new(
                e.d_model,
                e.n_heads,
                e.d_ff,
                bolt.n_queries,
                bolt.connector_layers,
                eps,
                cvb,
            )?),
        };
        let xattn = if bolt.connector == ConnectorKind::Perceiver {
            (0..cfg.n_layers)
                .filter(|i| i.is_multiple_of(bolt.xattn_every))
                .map(|i| {
                    Ok((
                        i,
                        GatedXAttn::new(
                            cfg.d_model,
                            e.d_model,
                            cfg.n_heads,
                            bolt.xattn_d_ff,
                            eps,
                            vb.pp(format!("xattn.{i}")),
                        )?,
                    ))
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            cfg: bolt.clone(),
            encoder,
            connector,
            xattn,
        })
    }

    /// Encodes the images of `batch` (which has at least one) and runs the connector.
    pub fn visual_input(&self, batch: &Batch) -> Result<VisualInput> {
        let device = self.encoder_device();
        let n_rows = if batch.patch_dim == 0 {
            0
        } else {
            batch.patches.len() / batch.patch_dim
        };
        let patches = Tensor::from_slice(&batch.patches, (n_rows, batch.patch_dim), &device)?;
        if batch.images.is_empty() {
            candle_core::bail!(
                "the batch has image patches but no image spans; build it with the model's sequence builder"
            );
        }
        let enc = self.encoder.forward(&patches, &batch.images)?;
        let want = self.cfg.image_tokens();
        for s in &batch.images {
            let expected = want.unwrap_or(s.n_patches());
            if s.n_slots != expected {
                candle_core::bail!(
                    "an image fills {} token slots but this {} model needs {expected}; build sequences with the model's own sequence builder",
                    s.n_slots,
                    self.cfg.connector.name()
                );
            }
            if s.slot_start + s.n_slots > batch.patch_positions.len() {
                candle_core::bail!("image slots outside the batch's placeholder list");
            }
        }
        let per_image = match &self.connector {
            Connector::Linear(c) => c.forward(&enc.feats)?,
            Connector::Mlp(c) => c.forward(&enc.feats)?,
            Connector::QFormer(c) => c.forward(&enc)?,
            Connector::Perceiver(c) => {
                let lat = c.forward(&enc)?;
                return Ok(VisualInput::Context(self.context(batch, &lat)?));
            }
        };
        // Row `k` of the result feeds placeholder `batch.patch_positions[k]`.
        let s = per_image.dim(1)?;
        let d = per_image.dim(2)?;
        let flat = per_image.reshape((batch.images.len() * s, d))?;
        let mut order = vec![0u32; batch.patch_positions.len()];
        let mut seen = vec![false; batch.patch_positions.len()];
        for (i, span) in batch.images.iter().enumerate() {
            for j in 0..span.n_slots {
                order[span.slot_start + j] = (i * s + j) as u32;
                seen[span.slot_start + j] = true;
            }
        }
        if seen.iter().any(|x| !x) {
            candle_core::bail!("some image placeholders belong to no image span");
        }
        let order = Tensor::from_vec(order, batch.patch_positions.len(), &device)?;
        Ok(VisualInput::Slots(flat.index_select(&order, 0)?))
    }

    /// Gathers each row's latents, tagged with the position id of their image's slot.
    fn context(&self, batch: &Batch, lat: &Tensor) -> Result<XCtx> {
        let (n_img, nl, d) = lat.dims3()?;
        let t = batch.seq_len.max(1);
        let mut per_row: Vec<Vec<(usize, u32)>> = vec![Vec::new(); batch.batch];
        for (i, span) in batch.images.iter().enumerate() {
            let flat = batch.patch_positions[span.slot_start];
            per_row[flat / t].push((i, batch.positions[flat]));
        }
        let m = per_row.iter().map(|r| r.len()).max().unwrap_or(0) * nl;
        let pad = (n_img * nl) as u32;
        let mut gather = vec![pad; batch.batch * m];
        let mut key_pos = vec![u32::MAX; batch.batch * m];
        for (r, imgs) in per_row.iter().enumerate() {
            for (k, &(i, pos)) in imgs.iter().enumerate() {
                for j in 0..nl {
                    gather[r * m + k * nl + j] = (i * nl + j) as u32;
                    key_pos[r * m + k * nl + j] = pos;
                }
            }
        }
        let device = lat.device();
        let flat = Tensor::cat(
            &[
                &lat.reshape((n_img * nl, d))?,
                &Tensor::zeros((1, d), lat.dtype(), device)?,
            ],
            0,
        )?;
        let g = Tensor::from_vec(gather, batch.batch * m, device)?;
        Ok(XCtx {
            latents: flat.index_select(&g, 0)?.reshape((batch.batch, m, d))?,
            key_pos,
        })
    }

    fn encoder_device(&self) -> candle_core::Device {
        self.encoder.device()
    }
}
