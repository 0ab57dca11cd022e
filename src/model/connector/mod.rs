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
use super::encoder::{AudioEncoder, EncodedImages, VisionEncoder};
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

/// Vision encoder + connector (+ gated cross-attention layers, + audio encoder and connector).
#[derive(Clone, Debug)]
pub struct Bolted {
    /// The configuration.
    pub cfg: BoltConfig,
    encoder: VisionEncoder,
    connector: Connector,
    audio: Option<(AudioEncoder, Connector)>,
    /// `(decoder block index, layer)`: the layer runs before that block.
    pub xattn: Vec<(usize, GatedXAttn)>,
}

/// One image or clip: where its slots are, as the connector sees it.
struct Item {
    slot_start: usize,
    n_slots: usize,
}

impl Item {
    fn new(slot_start: usize, n_slots: usize) -> Self {
        Self {
            slot_start,
            n_slots,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_connector(
    kind: ConnectorKind,
    d_enc: usize,
    heads: usize,
    d_ff: usize,
    n_queries: usize,
    layers: usize,
    d_model: usize,
    eps: f64,
    vb: VarBuilder,
) -> Result<Connector> {
    Ok(match kind {
        ConnectorKind::Linear => Connector::Linear(LinearConnector::new(d_enc, d_model, vb)?),
        ConnectorKind::Mlp => Connector::Mlp(MlpConnector::new(d_enc, d_model, vb)?),
        ConnectorKind::QFormer => Connector::QFormer(QFormer::new(
            d_enc, heads, d_ff, n_queries, layers, d_model, eps, vb,
        )?),
        ConnectorKind::Perceiver => Connector::Perceiver(Perceiver::new(
            d_enc, heads, d_ff, n_queries, layers, eps, vb,
        )?),
    })
}

impl Bolted {
    /// Creates the encoder under `vision_encoder.`, the connector under `connector.`, the
    /// cross-attention layers under `xattn.<block>.`, and (with an audio encoder)
    /// `audio_encoder.` and `audio_connector.`.
    pub fn new(cfg: &ModelConfig, bolt: &BoltConfig, vb: VarBuilder) -> Result<Self> {
        let e = &bolt.encoder;
        let eps = cfg.norm_eps;
        let encoder = VisionEncoder::new(bolt, cfg.patch_dim, eps, vb.pp("vision_encoder"))?;
        let connector = build_connector(
            bolt.connector,
            e.d_model,
            e.n_heads,
            e.d_ff,
            bolt.n_queries,
            bolt.connector_layers,
            cfg.d_model,
            eps,
            vb.pp("connector"),
        )?;
        let audio = match &bolt.audio_encoder {
            Some(a) if cfg.frame_dim > 0 => Some((
                AudioEncoder::new(bolt, cfg.frame_dim, eps, vb.pp("audio_encoder"))?,
                build_connector(
                    bolt.connector,
                    a.d_model,
                    a.n_heads,
                    a.d_ff,
                    bolt.n_queries,
                    bolt.connector_layers,
                    cfg.d_model,
                    eps,
                    vb.pp("audio_connector"),
                )?,
            )),
            _ => None,
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
            audio,
            xattn,
        })
    }

    /// True when audio goes through an audio encoder (not the linear frame embedding).
    pub fn has_audio_encoder(&self) -> bool {
        self.audio.is_some()
    }

    /// Encodes the images of `batch` (which has at least one) and runs the connector.
    pub fn visual_input(&self, batch: &Batch) -> Result<VisualInput> {
        let patches = self.matrix(&batch.patches, batch.patch_dim, batch.images.len(), "image")?;
        let enc = self.encoder.forward(&patches, &batch.images)?;
        let items: Vec<Item> = batch
            .images
            .iter()
            .map(|s| Item::new(s.slot_start, s.n_slots))
            .collect();
        self.connect(
            &self.connector,
            &enc,
            &items,
            &batch.patch_positions,
            batch,
            "image",
        )
    }

    /// Encodes the audio clips of `batch` (which has at least one) and runs the audio connector.
    pub fn audio_input(&self, batch: &Batch) -> Result<VisualInput> {
        let Some((encoder, connector)) = &self.audio else {
            candle_core::bail!("this model has no audio encoder");
        };
        let frames = self.matrix(&batch.frames, batch.frame_dim, batch.audio.len(), "audio")?;
        let enc = encoder.forward(&frames, &batch.audio)?;
        let items: Vec<Item> = batch
            .audio
            .iter()
            .map(|s| Item::new(s.slot_start, s.n_slots))
            .collect();
        self.connect(
            connector,
            &enc,
            &items,
            &batch.frame_positions,
            batch,
            "audio clip",
        )
    }

    /// The batch's patch or frame rows as a `(rows, width)` tensor; `spans` items must describe them.
    fn matrix(&self, data: &[f32], width: usize, spans: usize, what: &str) -> Result<Tensor> {
        if spans == 0 {
            candle_core::bail!(
                "the batch has {what} inputs but no {what} spans; build it with the model's sequence builder"
            );
        }
        let rows = data.len().checked_div(width).unwrap_or(0);
        Tensor::from_slice(data, (rows, width), &self.encoder.device())
    }

    /// Runs `connector` on encoded items and lines its outputs up with `positions`.
    fn connect(
        &self,
        connector: &Connector,
        enc: &EncodedImages,
        items: &[Item],
        positions: &[usize],
        batch: &Batch,
        what: &str,
    ) -> Result<VisualInput> {
        for (i, it) in items.iter().enumerate() {
            let expected = match self.cfg.connector {
                ConnectorKind::Linear | ConnectorKind::Mlp => enc.n_patches[i],
                ConnectorKind::QFormer => self.cfg.n_queries,
                ConnectorKind::Perceiver => 1,
            };
            if it.n_slots != expected {
                candle_core::bail!(
                    "an {what} fills {} token slots but this {} model needs {expected}; build sequences with the model's own sequence builder",
                    it.n_slots,
                    self.cfg.connector.name()
                );
            }
            if it.slot_start + it.n_slots > positions.len() {
                candle_core::bail!("{what} slots outside the batch's placeholder list");
            }
        }
        let per_item = match connector {
            Connector::Linear(c) => c.forward(&enc.feats)?,
            Connector::Mlp(c) => c.forward(&enc.feats)?,
            Connector::QFormer(c) => c.forward(enc)?,
            Connector::Perceiver(c) => {
                let lat = c.forward(enc)?;
                return Ok(VisualInput::Context(context(
                    batch, &lat, items, positions,
                )?));
            }
        };
        // Row `k` of the result feeds placeholder `positions[k]`.
        let s = per_item.dim(1)?;
        let d = per_item.dim(2)?;
        let flat = per_item.reshape((items.len() * s, d))?;
        let mut order = vec![0u32; positions.len()];
        let mut seen = vec![false; positions.len()];
        for (i, it) in items.iter().enumerate() {
            for j in 0..it.n_slots {
                order[it.slot_start + j] = (i * s + j) as u32;
                seen[it.slot_start + j] = true;
            }
        }
        if seen.iter().any(|x| !x) {
            candle_core::bail!("some {what} placeholders belong to no {what}");
        }
        let order = Tensor::from_vec(order, positions.len(), flat.device())?;
        Ok(VisualInput::Slots(flat.index_select(&order, 0)?))
    }
}

/// Gathers each row's latents, tagged with the position id of their item's slot.
fn context(batch: &Batch, lat: &Tensor, items: &[Item], positions: &[usize]) -> Result<XCtx> {
    let (n_items, nl, d) = lat.dims3()?;
    let t = batch.seq_len.max(1);
    let mut per_row: Vec<Vec<(usize, u32)>> = vec![Vec::new(); batch.batch];
    for (i, it) in items.iter().enumerate() {
        let flat = positions[it.slot_start];
        per_row[flat / t].push((i, batch.positions[flat]));
    }
    let m = per_row.iter().map(|r| r.len()).max().unwrap_or(0) * nl;
    let pad = (n_items * nl) as u32;
    let mut gather = vec![pad; batch.batch * m];
    let mut key_pos = vec![u32::MAX; batch.batch * m];
    for (r, its) in per_row.iter().enumerate() {
        for (k, &(i, pos)) in its.iter().enumerate() {
            for j in 0..nl {
                gather[r * m + k * nl + j] = (i * nl + j) as u32;
                key_pos[r * m + k * nl + j] = pos;
            }
        }
    }
    let device = lat.device();
    let flat = Tensor::cat(
        &[
            &lat.reshape((n_items * nl, d))?,
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
