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
    })
}
