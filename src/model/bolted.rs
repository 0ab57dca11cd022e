//! The bolted-on designs: a vision encoder (and optionally an audio encoder), a connector
//! that turns their features into token slots (LLaVA, Q-Former) or into latents for gated
//! cross-attention layers (Flamingo), and the decoder they feed.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{BoltConfig, ModelConfig};
use super::connector::{Connector, ConnectorOutput, ConnectorShape, GatedXAttn, XCtx};
use super::decoder::{CrossAttend, Decoder};
use super::encoder::{AudioEncoder, Encoded, VisionEncoder};
use super::layers::Linear;
use super::Placer;
use crate::fusion::Batch;

/// What the images (or clips) of a batch become.
#[derive(Debug)]
pub enum Connected {
    /// Embeddings for their token slots, row `k` for the `k`-th placeholder.
    Slots(Tensor),
    /// Latents the gated cross-attention layers attend to (the slots keep their token embedding).
    Context(XCtx),
}

/// Encoder + connector (+ audio encoder and connector, + gated cross-attention layers) and
/// the decoder.
#[derive(Clone, Debug)]
pub struct Bolted {
    /// The decoder.
    pub decoder: Decoder,
    /// The encoder and connector settings.
    pub cfg: BoltConfig,
    encoder: VisionEncoder,
    connector: Connector,
    audio: Option<(AudioEncoder, Connector)>,
    /// Linear frame embedding, when audio has no encoder (as in the native model).
    audio_embed: Option<Linear>,
    /// `(decoder block index, layer)`: the layer runs before that block.
    pub xattn: Vec<(usize, GatedXAttn)>,
}

/// One image or clip: where its slots are among the batch's placeholders.
struct Item {
    slot_start: usize,
    n_slots: usize,
}

impl Bolted {
    /// Creates the decoder at the root of `vb`, the encoder under `vision_encoder.`, the
    /// connector under `connector.`, the cross-attention layers under `xattn.<block>.`, and
    /// audio's `audio_encoder.` and `audio_connector.` (or `audio_embed.` without an encoder).
    pub fn new(cfg: &ModelConfig, bolt: &BoltConfig, vb: VarBuilder) -> Result<Self> {
        let decoder = Decoder::new(cfg, vb.clone())?;
        let eps = cfg.norm_eps;
        let shape = |e: &super::config::EncoderConfig| ConnectorShape {
            d_enc: e.d_model,
            heads: e.n_heads,
            d_ff: e.d_ff,
            n_queries: bolt.n_queries,
            layers: bolt.connector_layers,
            d_model: cfg.d_model,
        };
        let encoder = VisionEncoder::new(bolt, cfg.patch_dim, eps, vb.pp("vision_encoder"))?;
        let connector = Connector::new(
            bolt.connector,
            shape(&bolt.encoder),
            eps,
            vb.pp("connector"),
        )?;
        let audio = match &bolt.audio_encoder {
            Some(a) if cfg.frame_dim > 0 => Some((
                AudioEncoder::new(bolt, cfg.frame_dim, eps, vb.pp("audio_encoder"))?,
                Connector::new(bolt.connector, shape(a), eps, vb.pp("audio_connector"))?,
            )),
            _ => None,
        };
        let audio_embed = (cfg.frame_dim > 0 && bolt.audio_encoder.is_none())
            .then(|| Linear::new(cfg.frame_dim, cfg.d_model, true, vb.pp("audio_embed")))
            .transpose()?;
        let xattn = if bolt.connector.cross_attends() {
            (0..cfg.n_layers)
                .filter(|i| i.is_multiple_of(bolt.xattn_every))
                .map(|i| {
                    let layer = GatedXAttn::new(
                        cfg.d_model,
                        bolt.encoder.d_model,
                        cfg.n_heads,
                        bolt.xattn_d_ff,
                        eps,
                        vb.pp(format!("xattn.{i}")),
                    )?;
                    Ok((i, layer))
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            decoder,
            cfg: bolt.clone(),
            encoder,
            connector,
            audio,
            audio_embed,
            xattn,
        })
    }

    /// The vision encoder (for probing its features).
    pub fn vision_encoder(&self) -> &VisionEncoder {
        &self.encoder
    }

    /// Flamingo's gated cross-attention layers, for the decoder.
    pub fn cross_attend(&self) -> CrossAttend<'_> {
        CrossAttend {
            layers: &self.xattn,
        }
    }

    /// Input embeddings `(b, t, d)`, plus the latents a Flamingo design cross-attends to.
    pub fn embed(&self, batch: &Batch) -> Result<(Tensor, Option<XCtx>)> {
        let mut x = Placer::new(&self.decoder, batch)?;
        let mut xctx = None;
        if !batch.patch_positions.is_empty() {
            match self.image_input(batch)? {
                Connected::Slots(t) => x.place(t, &batch.patch_positions, "image slot")?,
                Connected::Context(c) => xctx = Some(c),
            }
        }
        if self.audio.is_none() {
            x.frames(self.audio_embed.as_ref(), batch)?;
        } else if !batch.frame_positions.is_empty() {
            match self.audio_input(batch)? {
                Connected::Slots(t) => x.place(t, &batch.frame_positions, "audio slot")?,
                Connected::Context(c) => {
                    xctx = Some(match xctx.take() {
                        Some(prev) => prev.extend(&c)?,
                        None => c,
                    })
                }
            }
        }
        Ok((x.finish()?, xctx))
    }

    /// Encodes the images of `batch` (which has at least one) and runs the connector.
    pub fn image_input(&self, batch: &Batch) -> Result<Connected> {
        let enc = self.encode_images(batch)?;
        let items = batch.images.iter().map(|s| (s.slot_start, s.n_slots));
        self.connect(
            &self.connector,
            &enc,
            items,
            &batch.patch_positions,
            batch,
            "image",
        )
    }

    /// The image connector's slots' attention over each image's patches, per connector layer
    /// `(n_images, heads, slots, patches)`; `None` for projectors or a batch without images.
    pub fn image_slot_attention(&self, batch: &Batch) -> Result<Option<Vec<Tensor>>> {
        if batch.images.is_empty() {
            return Ok(None);
        }
        self.connector.slot_attention(&self.encode_images(batch)?)
    }

    /// The vision encoder's features of the images of `batch`.
    fn encode_images(&self, batch: &Batch) -> Result<Encoded> {
        let patches = matrix(
            &batch.patches,
            batch.patch_dim,
            batch.images.len(),
            "image",
            self.decoder.device(),
        )?;
        self.encoder.forward(&patches, &batch.images)
    }

    /// Encodes the audio clips of `batch` (which has at least one) and runs the audio connector.
    pub fn audio_input(&self, batch: &Batch) -> Result<Connected> {
        let Some((encoder, connector)) = &self.audio else {
            candle_core::bail!("this model has no audio encoder");
        };
        let frames = matrix(
            &batch.frames,
            batch.frame_dim,
            batch.audio.len(),
            "audio",
            self.decoder.device(),
        )?;
        let enc = encoder.forward(&frames, &batch.audio)?;
        let items = batch.audio.iter().map(|s| (s.slot_start, s.n_slots));
        self.connect(
            connector,
            &enc,
            items,
            &batch.frame_positions,
            batch,
            "audio clip",
        )
    }

    /// Checks each item (`(first slot, slots)`) fills the slots this connector gives it,
    /// runs the connector and lines its output up with the placeholders `positions`.
    fn connect(
        &self,
        connector: &Connector,
        enc: &Encoded,
        items: impl Iterator<Item = (usize, usize)>,
        positions: &[usize],
        batch: &Batch,
        what: &str,
    ) -> Result<Connected> {
        let items: Vec<Item> = items
            .map(|(slot_start, n_slots)| Item {
                slot_start,
                n_slots,
            })
            .collect();
        for (i, it) in items.iter().enumerate() {
            let expected = self
                .cfg
                .connector
                .slots(enc.n_positions[i], self.cfg.n_queries);
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
        arrange(batch, connector.forward(enc)?, &items, positions, what)
    }
}

/// The batch's patch or frame rows as a `(rows, width)` tensor; `spans` items must describe them.
fn matrix(data: &[f32], width: usize, spans: usize, what: &str, device: &Device) -> Result<Tensor> {
    if spans == 0 {
        candle_core::bail!(
            "the batch has {what} inputs but no {what} spans; build it with the model's sequence builder"
        );
    }
    let rows = data.len().checked_div(width).unwrap_or(0);
    Tensor::from_slice(data, (rows, width), device)
}

/// Lines the connector's per-item output up with the placeholders: row `k` of the slots
/// feeds `positions[k]`; latents become each row's cross-attention context.
fn arrange(
    batch: &Batch,
    out: ConnectorOutput,
    items: &[Item],
    positions: &[usize],
    what: &str,
) -> Result<Connected> {
    let per_item = match out {
        ConnectorOutput::Latents(lat) => {
            return Ok(Connected::Context(context(batch, &lat, items, positions)?))
        }
        ConnectorOutput::Slots(t) => t,
    };
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
    Ok(Connected::Slots(flat.index_select(&order, 0)?))
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
