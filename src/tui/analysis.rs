//! How a model sees one input: the fused token stream, the image as patchified, the
//! attention of every text token over every key (per layer and head), the next-token
//! candidates at every text position and the model's greedy answer.
//!
//! This is the model side of the inspector; it has no UI and runs on a worker thread.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, IndexOp, D};
use image::RgbImage;

use crate::fusion::{collate, MultimodalSequence, PadSide, Segment, TokenKind};
use crate::model::generate::{generate, GenerateOptions};
use crate::model::io::LoadedModel;
use crate::model::responder::media_segments;

/// Next-token candidates kept per position.
pub const TOP_K: usize = 5;

/// What to show the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InspectInput {
    /// An image.
    pub image: Option<PathBuf>,
    /// An audio clip.
    pub audio: Option<PathBuf>,
    /// The question.
    pub prompt: String,
    /// The right answer, when the input is a dataset sample.
    pub truth: Option<String>,
    /// The answer the eval run recorded, when the input is a dataset sample.
    pub recorded: Option<String>,
}

/// One position of the fused token stream.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenView {
    /// Vocabulary id (the placeholder id at patch and frame positions).
    pub id: u32,
    /// What the position carries.
    pub kind: TokenKind,
    /// Printable text of the token.
    pub text: String,
}

/// The image as the model received it, and how its patches map to sequence positions.
#[derive(Clone, Debug)]
pub struct ImageView {
    /// Pixels rebuilt from the patch values (resized and padded as the model saw them).
    pub pixels: RgbImage,
    /// Patch rows.
    pub rows: usize,
    /// Patch columns.
    pub cols: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Sequence position of every token slot of the image, in order.
    pub slots: Vec<usize>,
    /// Whether slot `k` is patch `k` (one token per patch; false for Q-Former / perceiver slots).
    pub per_patch: bool,
}

/// A resampling connector's slots (Q-Former queries, perceiver latents) and where on the
/// image each one looks: the only route from patches to decoder for these designs.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotView {
    /// What the slots are called (`queries`, `latents`).
    pub what: &'static str,
    /// Slots per image.
    pub n: usize,
    /// Connector layers.
    pub layers: usize,
    /// Connector heads.
    pub heads: usize,
    /// Patches of the first image.
    pub patches: usize,
    /// The slots' attention over the first image's patches, `(layers, heads, n, patches)`,
    /// row-major (for perceiver latents, the share left after their attention to each other).
    pub attn: Vec<f32>,
}

impl SlotView {
    /// Slot `s`'s attention over the patches, averaged over connector layers and heads.
    pub fn slot_over_patches(&self, s: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.patches];
        for l in 0..self.layers {
            for h in 0..self.heads {
                let o = ((l * self.heads + h) * self.n + s) * self.patches;
                for (v, a) in out.iter_mut().zip(&self.attn[o..o + self.patches]) {
                    *v += a;
                }
            }
        }
        let k = (self.layers * self.heads).max(1) as f32;
        out.iter_mut().for_each(|v| *v /= k);
        out
    }

    /// Weights over the slots carried onto the patches: `sum_s w[s] * slot_over_patches(s)`,
    /// the attention a token pays the image through the slots (one step of attention rollout).
    pub fn through(&self, w: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.patches];
        for (s, &ws) in w.iter().enumerate().take(self.n) {
            for (v, a) in out.iter_mut().zip(self.slot_over_patches(s)) {
                *v += ws * a;
            }
        }
        out
    }
}

/// `latents` -> `latent`, `queries` -> `query`.
pub fn singular(what: &str) -> &str {
    match what {
        "queries" => "query",
        "latents" => "latent",
        w => w,
    }
}

/// Flamingo's gated cross-attention: how each text token attends to the perceiver latents,
/// layer by layer, and how open each layer's gate is.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossView {
    /// The decoder block each cross-attention layer runs before.
    pub blocks: Vec<usize>,
    /// `tanh` of each layer's attention gate (0: the image does not reach the decoder).
    pub gates: Vec<f32>,
    /// `tanh` of each layer's MLP gate.
    pub ff_gates: Vec<f32>,
    /// Heads per layer.
    pub heads: usize,
    /// Latents of the first image (the first `m` keys).
    pub m: usize,
    /// Attention of the kept rows over the first image's latents, `(layers, heads, rows, m)`;
    /// zero for tokens before the image.
    pub attn: Vec<f32>,
}

/// Everything the inspector shows about one input.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// The input.
    pub input: InspectInput,
    /// The fused token stream.
    pub tokens: Vec<TokenView>,
    /// The image, if any.
    pub image: Option<ImageView>,
    /// Sequence positions of the audio slots (frames, or encoder slots), in order.
    pub audio_slots: Vec<usize>,
    /// Decoder layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// The query positions whose attention is kept (every position that is not a patch or frame).
    pub rows: Vec<usize>,
    /// Attention probabilities, `(layers, heads, rows.len(), tokens.len())`, row-major.
    pub attn: Vec<f32>,
    /// Top next-token candidates `(text, probability)` after each kept row.
    pub topk: Vec<Vec<(String, f32)>>,
    /// The model's greedy answer.
    pub answer: String,
    /// Q-Former or perceiver: where its slots look on the image.
    pub slots: Option<SlotView>,
    /// Flamingo: the gated cross-attention over the latents.
    pub cross: Option<CrossView>,
}

impl Analysis {
    /// The attention of kept row `r` over all keys at `layer` and `head`; `None` averages
    /// (over heads, and over layers when `layer` is `None`).
    pub fn attention(&self, r: usize, layer: Option<usize>, head: Option<usize>) -> Vec<f32> {
        let t = self.tokens.len();
        let n = self.rows.len();
        let row = |l: usize, h: usize| {
            let o = ((l * self.heads + h) * n + r) * t;
            &self.attn[o..o + t]
        };
        let layers: Vec<usize> = layer.map(|l| vec![l]).unwrap_or((0..self.layers).collect());
        let heads: Vec<usize> = head.map(|h| vec![h]).unwrap_or((0..self.heads).collect());
        let mut out = vec![0f32; t];
        for &l in &layers {
            for &h in &heads {
                for (o, v) in out.iter_mut().zip(row(l, h)) {
                    *o += v;
                }
            }
        }
        let k = (layers.len() * heads.len()).max(1) as f32;
        out.iter_mut().for_each(|v| *v /= k);
        out
    }

    /// Attention of kept row `r` over the image patches (`rows x cols`, row-major) or, for
    /// designs with a fixed number of image slots, over those slots.
    pub fn image_attention(
        &self,
        r: usize,
        layer: Option<usize>,
        head: Option<usize>,
    ) -> Option<Vec<f32>> {
        let img = self.image.as_ref()?;
        let a = self.attention(r, layer, head);
        Some(img.slots.iter().map(|&p| a[p]).collect())
    }

    /// How kept row `r` weighs the image's slots (Q-Former queries, perceiver latents) at
    /// decoder `layer` and `head` (`None`: mean). For Flamingo this is the gated
    /// cross-attention: at a decoder layer with no cross-attention layer before it, `None`.
    pub fn slot_weights(
        &self,
        r: usize,
        layer: Option<usize>,
        head: Option<usize>,
    ) -> Option<Vec<f32>> {
        let slots = self.slots.as_ref()?;
        let Some(x) = &self.cross else {
            return self.image_attention(r, layer, head);
        };
        let n = self.rows.len();
        let ls: Vec<usize> = match layer {
            None => (0..x.blocks.len()).collect(),
            Some(l) => vec![x.blocks.iter().position(|&b| b == l)?],
        };
        let hs: Vec<usize> = head.map_or((0..x.heads).collect(), |h| vec![h]);
        let mut out = vec![0f32; slots.n.min(x.m)];
        for &l in &ls {
            for &h in &hs {
                let o = ((l * x.heads + h) * n + r) * x.m;
                for (v, a) in out.iter_mut().zip(&x.attn[o..o + x.m]) {
                    *v += a;
                }
            }
        }
        let k = (ls.len() * hs.len()).max(1) as f32;
        out.iter_mut().for_each(|v| *v /= k);
        Some(out)
    }

    /// The heat map over the first image's patches for kept row `r`: its attention over the
    /// patches (Fuyu, projectors); through the slots (resampling connectors, `slot` `None`);
    /// or slot `slot`'s own attention over the patches.
    pub fn patch_heat(
        &self,
        r: usize,
        layer: Option<usize>,
        head: Option<usize>,
        slot: Option<usize>,
    ) -> Option<Vec<f32>> {
        let img = self.image.as_ref()?;
        if img.per_patch {
            return self.image_attention(r, layer, head);
        }
        let slots = self.slots.as_ref()?;
        match slot {
            Some(s) if s < slots.n => Some(slots.slot_over_patches(s)),
            Some(_) => None,
            None => Some(slots.through(&self.slot_weights(r, layer, head)?)),
        }
    }

    /// Attention of kept row `r` over the audio slots.
    pub fn audio_attention(&self, r: usize, layer: Option<usize>, head: Option<usize>) -> Vec<f32> {
        let a = self.attention(r, layer, head);
        self.audio_slots.iter().map(|&p| a[p]).collect()
    }

    /// The kept row of the last prompt token (the one that predicts the answer).
    pub fn last_row(&self) -> usize {
        self.rows.len().saturating_sub(1)
    }
}

/// Printable text of a token.
fn token_text(m: &LoadedModel, id: u32, kind: TokenKind) -> String {
    match kind {
        TokenKind::ImagePatch => "▪".into(),
        TokenKind::ImageNewline => "⏎".into(),
        TokenKind::AudioFrame => "♪".into(),
        TokenKind::VideoFrameSep => "|FRAME|".into(),
        TokenKind::Pad => "<pad>".into(),
        TokenKind::Text => m
            .tokenizer
            .id_to_token(id)
            .map(|s| s.replace(['▁', 'Ġ'], "·"))
            .unwrap_or_else(|| format!("#{id}")),
    }
}

/// Builds the prompt's sequence as the eval harness does (media, question, `<boa>`, with
/// `<bos>` where the model wants it).
pub fn build_sequence(m: &LoadedModel, input: &InspectInput) -> anyhow::Result<MultimodalSequence> {
    let builder = m.config.builder(Arc::new(m.tokenizer.clone()));
    let mut segs = media_segments(&input.image, &input.audio);
    segs.push(Segment::Text(input.prompt.clone()));
    Ok(builder.build_placed(&segs, m.bos)?)
}

/// Rebuilds the pixels the model saw from the first image's normalised patch values.
fn image_view(seq: &MultimodalSequence) -> Option<ImageView> {
    let span = seq.images.first()?;
    let dim = seq.patch_dim;
    let patch = ((dim / 3) as f64).sqrt().round() as usize;
    if patch == 0 || patch * patch * 3 != dim {
        return None;
    }
    let (w, h) = ((span.cols * patch) as u32, (span.rows * patch) as u32);
    let mut pixels = RgbImage::new(w, h);
    for r in 0..span.rows {
        for c in 0..span.cols {
            let k = span.patch_start + r * span.cols + c;
            let vals = seq.patches.get(k * dim..(k + 1) * dim)?;
            for y in 0..patch {
                for x in 0..patch {
                    let o = (y * patch + x) * 3;
                    let px = |v: f32| ((v * 0.5 + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8;
                    pixels.put_pixel(
                        (c * patch + x) as u32,
                        (r * patch + y) as u32,
                        image::Rgb([px(vals[o]), px(vals[o + 1]), px(vals[o + 2])]),
                    );
                }
            }
        }
    }
    let slots = seq
        .patch_positions
        .get(span.slot_start..span.slot_start + span.n_slots)?
        .to_vec();
    Some(ImageView {
        pixels,
        rows: span.rows,
        cols: span.cols,
        patch,
        per_patch: span.n_slots == span.rows * span.cols,
        slots,
    })
}

/// Runs the model over `input` and collects everything the inspector shows.
pub fn analyze(m: &LoadedModel, input: &InspectInput) -> anyhow::Result<Analysis> {
    let seq = build_sequence(m, input).context("building the input sequence")?;
    let tokens: Vec<TokenView> = seq
        .tokens
        .iter()
        .zip(&seq.modality)
        .map(|(&id, &kind)| TokenView {
            id,
            kind,
            text: token_text(m, id, kind),
        })
        .collect();
    let t = tokens.len();
    let pad = m.tokenizer.specials.pad;
    let batch = collate(std::slice::from_ref(&seq), pad, PadSide::Right)?;
    let model = &m.model;
    let out = model.forward(&batch, None, true)?;
    let rows: Vec<usize> = (0..t)
        .filter(|&i| {
            !matches!(
                seq.modality[i],
                TokenKind::ImagePatch | TokenKind::AudioFrame
            )
        })
        .collect();
    let layers = out.attentions.len();
    let heads = model.cfg().n_heads;
    let idx = candle_core::Tensor::from_vec(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        rows.len(),
        model.device(),
    )?;
    let mut attn = Vec::with_capacity(layers * heads * rows.len() * t);
    for a in &out.attentions {
        // (1, h, t, t) -> (h, rows, t)
        let a = a.i(0)?.index_select(&idx, 1)?.to_dtype(DType::F32)?;
        attn.extend(a.flatten_all()?.to_vec1::<f32>()?);
    }
    let slots = slot_view(m, &batch, &seq)?;
    let cross = cross_view(m, &out.cross_attentions, &idx, slots.as_ref())?;
    let hidden = out.hidden.i(0)?.index_select(&idx, 0)?;
    let probs = candle_nn::ops::softmax(&model.logits(&hidden)?, D::Minus1)?.to_vec2::<f32>()?;
    let topk = probs
        .iter()
        .map(|p| {
            // The k largest without sorting the whole vocabulary (262k for Fuyu-8B).
            let mut order: Vec<usize> = (0..p.len()).collect();
            let k = TOP_K.min(order.len());
            if k < order.len() {
                order.select_nth_unstable_by(k, |&a, &b| p[b].total_cmp(&p[a]));
                order.truncate(k);
            }
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            order
                .into_iter()
                .take(TOP_K)
                .map(|i| (token_text(m, i as u32, TokenKind::Text), p[i]))
                .collect()
        })
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 16,
        stop_tokens: vec![m.tokenizer.specials.eos, pad],
        ..Default::default()
    };
    let ids = generate(model, std::slice::from_ref(&seq), pad, &opts)?;
    let answer = m
        .tokenizer
        .decode(ids.first().map(Vec::as_slice).unwrap_or(&[]))?
        .trim()
        .to_string();
    let audio_slots = seq
        .audio
        .first()
        .and_then(|s| {
            seq.frame_positions
                .get(s.slot_start..s.slot_start + s.n_slots)
                .map(<[usize]>::to_vec)
        })
        .unwrap_or_default();
    Ok(Analysis {
        input: input.clone(),
        image: image_view(&seq),
        tokens,
        audio_slots,
        layers,
        heads,
        rows,
        attn,
        topk,
        answer,
        slots,
        cross,
    })
}

/// The resampling connector's slots' attention over the first image's patches.
fn slot_view(
    m: &LoadedModel,
    batch: &crate::fusion::Batch,
    seq: &MultimodalSequence,
) -> anyhow::Result<Option<SlotView>> {
    let Some(per_layer) = m.model.image_slot_attention(batch)? else {
        return Ok(None);
    };
    let Some(span) = seq.images.first() else {
        return Ok(None);
    };
    let patches = span.rows * span.cols;
    let mut attn = Vec::new();
    let (mut heads, mut n) = (0, 0);
    for a in &per_layer {
        // (n_images, h, slots, p) -> the first image's (h, slots, patches)
        let a = a.i(0)?.to_dtype(DType::F32)?;
        let (h, s, p) = a.dims3()?;
        anyhow::ensure!(
            p >= patches,
            "the connector saw {p} positions for an image of {patches} patches"
        );
        (heads, n) = (h, s);
        attn.extend(a.narrow(2, 0, patches)?.flatten_all()?.to_vec1::<f32>()?);
    }
    let what = if m.model.cross_gates()?.is_empty() {
        "queries"
    } else {
        "latents"
    };
    Ok(Some(SlotView {
        what,
        n,
        layers: per_layer.len(),
        heads,
        patches,
        attn,
    }))
}

/// Flamingo's cross-attention of the kept rows over the first image's latents, and its gates.
fn cross_view(
    m: &LoadedModel,
    cross: &[(usize, candle_core::Tensor)],
    rows: &candle_core::Tensor,
    slots: Option<&SlotView>,
) -> anyhow::Result<Option<CrossView>> {
    let gates = m.model.cross_gates()?;
    let (Some(slots), false) = (slots, gates.is_empty()) else {
        return Ok(None);
    };
    anyhow::ensure!(
        cross.len() == gates.len(),
        "{} cross-attention maps for {} layers",
        cross.len(),
        gates.len()
    );
    let mut attn = Vec::new();
    let (mut heads, mut mm) = (0, slots.n);
    for (_, a) in cross {
        // (1, h, t, keys) -> (h, rows, the first image's latents)
        let a = a.i(0)?.index_select(rows, 1)?.to_dtype(DType::F32)?;
        let (h, _, keys) = a.dims3()?;
        heads = h;
        mm = slots.n.min(keys);
        attn.extend(a.narrow(2, 0, mm)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(Some(CrossView {
        blocks: gates.iter().map(|g| g.0).collect(),
        gates: gates.iter().map(|g| g.1).collect(),
        ff_gates: gates.iter().map(|g| g.2).collect(),
        heads,
        m: mm,
        attn,
    }))
}
