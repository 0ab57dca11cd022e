//! Stage 0 of the bolted-on recipe: contrastive pre-training of the vision encoder on
//! image–caption pairs (CLIP's symmetric InfoNCE or SigLIP's pairwise sigmoid loss, both
//! with a learned temperature, SigLIP also with a learned bias), and zero-shot retrieval
//! (image → caption and caption → image recall@1/@5) on held-out pairs.
//!
//! The image tower is the bolted preset's [`VisionEncoder`] (mean-pooled over patches), or,
//! for sound–caption pairs, its [`AudioEncoder`] (mean-pooled over positions); the text
//! tower is a small bidirectional Transformer over the caption tokens (mean-pooled). Only
//! the tower's weights (`vision_encoder.*` / `audio_encoder.*`) are reused later, by
//! `mmlab train --init-encoder` / `--init-audio-encoder`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use mmlab_datasets::{audio_caption, caption, generate_scene, generate_sound, render, synthesise};
use serde::{Deserialize, Serialize};

use super::data::SyntheticData;
use super::optim::{lr_at, AdamW, AdamWConfig};
use super::{named_vars, reinit, TrainError};
use crate::fusion::{audio_features, patchify, AudioSpan, ImageSpan, TextTokenizer};
use crate::io::atomic_write;
use crate::model::encoder::{AudioEncoder, VisionEncoder};
use crate::model::io::ModelDirConfig;
use crate::model::layers::{learned, EncoderStack, Linear};

/// Which contrastive loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContrastiveLoss {
    /// CLIP: symmetric cross-entropy over the similarity matrix, learned temperature.
    Clip,
    /// SigLIP: a sigmoid loss on every pair, learned temperature and bias.
    Siglip,
}

/// CLIP's loss: `(CE(S, diag) + CE(Sᵀ, diag)) / 2` with `S = exp(log_scale) · îᵀt̂` over
/// L2-normalised rows of `img` and `txt` (`n, d` each); `log_scale` has one element.
pub fn clip_loss(img: &Tensor, txt: &Tensor, log_scale: &Tensor) -> Result<Tensor> {
    let s = scaled_similarity(img, txt, log_scale)?;
    let n = s.dim(0)?;
    let diag = Tensor::arange(0u32, n as u32, s.device())?.unsqueeze(1)?;
    let ce = |m: &Tensor| -> Result<Tensor> {
        let lp = candle_nn::ops::log_softmax(m, D::Minus1)?;
        lp.gather(&diag, 1)?.sum_all()?.neg()? / n as f64
    };
    (ce(&s)? + ce(&s.t()?.contiguous()?)?)? / 2.0
}

/// SigLIP's loss: `-(1/n) Σ_ij log σ(z_ij (exp(log_scale) · îᵢ·t̂ⱼ + bias))` with `z = +1` on
/// the diagonal (matching pairs) and `-1` elsewhere.
pub fn siglip_loss(
    img: &Tensor,
    txt: &Tensor,
    log_scale: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let s = scaled_similarity(img, txt, log_scale)?.broadcast_add(bias)?;
    let n = s.dim(0)?;
    let mut z = vec![-1f32; n * n];
    for i in 0..n {
        z[i * n + i] = 1.0;
    }
    let z = Tensor::from_vec(z, (n, n), s.device())?;
    // -log σ(x) = softplus(-x) = log(1 + exp(-x)), computed stably as relu(-x) + log(1 + exp(-|x|)).
    let x = (s * z)?;
    let softplus = (x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    softplus.sum_all()? / n as f64
}

fn scaled_similarity(img: &Tensor, txt: &Tensor, log_scale: &Tensor) -> Result<Tensor> {
    let l2 = |x: &Tensor| -> Result<Tensor> {
        x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?)
    };
    l2(img)?
        .matmul(&l2(txt)?.t()?)?
        .broadcast_mul(&log_scale.exp()?)
}

/// The caption tower: token + position embeddings, bidirectional blocks, LayerNorm, mean pool.
struct TextEncoder {
    embed: Tensor,
    pos: Tensor,
    stack: EncoderStack,
    max_len: usize,
}

impl TextEncoder {
    fn new(cfg: &ModelDirConfig, vocab: usize, max_len: usize, vb: VarBuilder) -> Result<Self> {
        let Some(bolt) = &cfg.model.bolt else {
            candle_core::bail!(
                "contrastive pre-training needs a bolted-on preset (one with a vision encoder)"
            );
        };
        let bc = bolt.encoder_block_config(cfg.model.norm_eps);
        let d = bolt.encoder.d_model;
        Ok(Self {
            embed: learned(&vb, (vocab, d), "embed_tokens.weight")?,
            pos: learned(&vb, (max_len, d), "pos_embed.weight")?,
            stack: EncoderStack::new(&bc, bolt.encoder.n_layers, vb.clone())?,
            max_len,
        })
    }

    /// Mean-pooled features `(n, d)` of the token lists.
    fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let n = ids.len();
        let t = ids
            .iter()
            .map(|x| x.len())
            .max()
            .unwrap_or(1)
            .clamp(1, self.max_len);
        let mut flat = vec![0u32; n * t];
        let mut valid = vec![0f32; n * t];
        let mut key_valid = vec![0u8; n * t];
        for (i, row) in ids.iter().enumerate() {
            for (k, &id) in row.iter().take(t).enumerate() {
                flat[i * t + k] = id;
                valid[i * t + k] = 1.0;
                key_valid[i * t + k] = 1;
            }
            if row.is_empty() {
                key_valid[i * t] = 1;
            }
        }
        let d = self.embed.dim(1)?;
        let ids_t = Tensor::from_vec(flat, n * t, device)?;
        let pos_ids = Tensor::arange(0u32, t as u32, device)?;
        let x = self
            .embed
            .index_select(&ids_t, 0)?
            .reshape((n, t, d))?
            .broadcast_add(&self.pos.index_select(&pos_ids, 0)?)?;
        // Bidirectional: every position sees the real ones of its row.
        let x = self.stack.forward(&x, &key_valid)?;
        let valid = Tensor::from_vec(valid, (n, t, 1), device)?;
        let count = (valid.sum(1)? + 1e-6)?;
        x.broadcast_mul(&valid)?.sum(1)?.broadcast_div(&count)
    }
}

/// Which tower the contrastive stage trains against the captions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PretrainModality {
    /// The vision encoder, on image–caption pairs.
    #[default]
    Image,
    /// The audio encoder, on sound–caption pairs.
    Audio,
}

/// The image or audio tower.
enum Tower {
    Vision(VisionEncoder),
    Audio(AudioEncoder),
}

/// Both towers and the learned temperature (and bias).
struct DualEncoder {
    tower: Tower,
    text: TextEncoder,
    img_proj: Linear,
    txt_proj: Linear,
    log_scale: Tensor,
    bias: Tensor,
}

impl DualEncoder {
    fn new(
        cfg: &ModelDirConfig,
        modality: PretrainModality,
        vocab: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let Some(bolt) = &cfg.model.bolt else {
            candle_core::bail!(
                "contrastive pre-training needs a bolted-on preset (one with a vision encoder)"
            );
        };
        let d = bolt.encoder.d_model;
        let eps = cfg.model.norm_eps;
        let (tower, d_tower) = match modality {
            PretrainModality::Image => (
                Tower::Vision(VisionEncoder::new(
                    bolt,
                    cfg.model.patch_dim,
                    eps,
                    vb.pp("vision_encoder"),
                )?),
                d,
            ),
            PretrainModality::Audio => {
                let Some(a) = &bolt.audio_encoder else {
                    candle_core::bail!(
                        "this preset has no audio encoder (pick an `-audio-` preset)"
                    );
                };
                (
                    Tower::Audio(AudioEncoder::new(
                        bolt,
                        cfg.model.frame_dim,
                        eps,
                        vb.pp("audio_encoder"),
                    )?),
                    a.d_model,
                )
            }
        };
        Ok(Self {
            tower,
            text: TextEncoder::new(cfg, vocab, 64, vb.pp("text_encoder"))?,
            img_proj: Linear::new(d_tower, d, false, vb.pp("contrastive.img_proj"))?,
            txt_proj: Linear::new(d, d, false, vb.pp("contrastive.txt_proj"))?,
            log_scale: vb.get_with_hints(
                1,
                "contrastive.logit_scale",
                candle_nn::Init::Const(0.0),
            )?,
            bias: vb.get_with_hints(1, "contrastive.logit_bias", candle_nn::Init::Const(0.0))?,
        })
    }

    /// Mean-pooled, projected tower features of every item of `pairs`.
    /// The towers for `cfg`, their variables in `vm` seeded with `cfg.seed`, the temperature
    /// and bias where the papers start them.
    fn seeded(
        cfg: &PretrainConfig,
        vocab: usize,
        vm: &VarMap,
        device: &Device,
    ) -> std::result::Result<Self, TrainError> {
        let vb = VarBuilder::from_varmap(vm, DType::F32, device);
        let model = DualEncoder::new(&cfg.model, cfg.modality, vocab, vb)?;
        reinit(vm, cfg.seed)?;
        let (t0, b0) = match cfg.loss {
            ContrastiveLoss::Clip => ((1.0f32 / 0.07).ln(), 0.0f32),
            ContrastiveLoss::Siglip => (10f32.ln(), -10.0),
        };
        set_named(vm, "contrastive.logit_scale", t0)?;
        set_named(vm, "contrastive.logit_bias", b0)?;
        Ok(model)
    }

    fn embed_items(&self, pairs: &Pairs) -> Result<Tensor> {
        let enc = match (&self.tower, &pairs.spans) {
            (Tower::Vision(v), Spans::Image(s)) => v.forward(&pairs.inputs, s)?,
            (Tower::Audio(a), Spans::Audio(s)) => a.forward(&pairs.inputs, s)?,
            _ => candle_core::bail!("pairs of the wrong modality for this tower"),
        };
        let n = enc.n_positions.len();
        // Mean over each item's real positions.
        let p = enc.feats.dim(1)?;
        let mut w = vec![0f32; n * p];
        for (i, &k) in enc.n_positions.iter().enumerate() {
            for j in 0..k {
                w[i * p + j] = 1.0 / k as f32;
            }
        }
        let w = Tensor::from_vec(w, (n, p, 1), pairs.inputs.device())?;
        self.img_proj.forward(&enc.feats.broadcast_mul(&w)?.sum(1)?)
    }

    fn embed_texts(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        self.txt_proj.forward(&self.text.forward(ids, device)?)
    }
}

/// Where each item of a batch is in its input matrix.
enum Spans {
    Image(Vec<ImageSpan>),
    Audio(Vec<AudioSpan>),
}

/// A batch of image– or sound–caption pairs: the patch or frame matrix, one span per item,
/// caption ids and texts.
struct Pairs {
    inputs: Tensor,
    spans: Spans,
    ids: Vec<Vec<u32>>,
    texts: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn make_pairs(
    cfg: &ModelDirConfig,
    modality: PretrainModality,
    data: &SyntheticData,
    tok: &TextTokenizer,
    seed: u64,
    first: u64,
    n: usize,
    device: &Device,
) -> std::result::Result<Pairs, TrainError> {
    let mut values = Vec::new();
    let mut image_spans = Vec::with_capacity(n);
    let mut audio_spans = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    let mut rows = 0usize;
    let mut width = cfg.model.patch_dim;
    for i in 0..n as u64 {
        let text = match modality {
            PretrainModality::Image => {
                let scene = generate_scene(&data.scene, seed, first + i);
                let grid = patchify(&render(&scene), &cfg.image);
                image_spans.push(ImageSpan {
                    patch_start: rows,
                    rows: grid.rows,
                    cols: grid.cols,
                    slot_start: 0,
                    n_slots: 0,
                });
                rows += grid.n_patches();
                values.extend_from_slice(&grid.data);
                caption(&scene)
            }
            PretrainModality::Audio => {
                let clip = generate_sound(&data.sound, seed, first + i);
                let f = audio_features(&synthesise(&clip), &cfg.audio)?;
                width = f.dim;
                audio_spans.push(AudioSpan {
                    frame_start: rows,
                    n_frames: f.n,
                    slot_start: 0,
                    n_slots: 0,
                });
                rows += f.n;
                values.extend_from_slice(&f.data);
                audio_caption(&clip)
            }
        };
        ids.push(tok.encode(&text)?);
        texts.push(text);
    }
    let inputs = Tensor::from_vec(values, (rows, width), device)?;
    let spans = match modality {
        PretrainModality::Image => Spans::Image(image_spans),
        PretrainModality::Audio => Spans::Audio(audio_spans),
    };
    Ok(Pairs {
        inputs,
        spans,
        ids,
        texts,
    })
}

/// Settings of a contrastive pre-training run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PretrainConfig {
    /// The bolted-on preset whose vision encoder is trained.
    pub model: ModelDirConfig,
    /// Scenes and captions.
    pub data: SyntheticData,
    /// The loss.
    pub loss: ContrastiveLoss,
    /// Optimiser steps.
    pub steps: u64,
    /// Pairs per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed of initialisation and data.
    pub seed: u64,
    /// Held-out pairs for the retrieval eval.
    pub eval_pairs: usize,
    /// Image–caption or sound–caption pairs.
    #[serde(default)]
    pub modality: PretrainModality,
}

/// Zero-shot retrieval on held-out pairs; a retrieved caption counts when its text equals
/// the true one (different scenes can share a caption).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Retrieval {
    /// Image → caption recall@1.
    pub image_to_text_r1: f64,
    /// Image → caption recall@5.
    pub image_to_text_r5: f64,
    /// Caption → image recall@1.
    pub text_to_image_r1: f64,
    /// Caption → image recall@5.
    pub text_to_image_r5: f64,
    /// Recall@1 of a random ranking (share of pairs whose caption matches a random one).
    pub chance_r1: f64,
    /// Number of held-out pairs.
    pub pairs: usize,
}

/// Ranks captions for every image (and images for every caption) by similarity.
fn retrieval(img: &Tensor, txt: &Tensor, texts: &[String]) -> Result<Retrieval> {
    let s = scaled_similarity(img, txt, &Tensor::zeros(1, DType::F32, img.device())?)?;
    let s = s.to_vec2::<f32>()?;
    let n = texts.len();
    let recall = |scores: &dyn Fn(usize, usize) -> f32, k: usize| -> f64 {
        let mut hit = 0usize;
        for i in 0..n {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| scores(i, b).total_cmp(&scores(i, a)));
            if order.iter().take(k).any(|&j| texts[j] == texts[i]) {
                hit += 1;
            }
        }
        hit as f64 / n.max(1) as f64
    };
    let i2t = |i: usize, j: usize| s[i][j];
    let t2i = |i: usize, j: usize| s[j][i];
    let same: usize = (0..n)
        .map(|i| (0..n).filter(|&j| texts[j] == texts[i]).count())
        .sum();
    Ok(Retrieval {
        image_to_text_r1: recall(&i2t, 1),
        image_to_text_r5: recall(&i2t, 5),
        text_to_image_r1: recall(&t2i, 1),
        text_to_image_r5: recall(&t2i, 5),
        chance_r1: same as f64 / (n * n).max(1) as f64,
        pairs: n,
    })
}

/// What a pre-training run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainReport {
    /// Held-out retrieval before training.
    pub before: Retrieval,
    /// Held-out retrieval after training.
    pub after: Retrieval,
    /// Final training loss (mean of the last 20 steps).
    pub final_loss: f64,
    /// Wall seconds.
    pub seconds: f64,
}

/// The files a pre-training run writes into its folder.
pub const PRETRAIN_FILES: [&str; 3] = ["encoder.safetensors", "pretrain.json", "train.jsonl"];

/// Trains the two towers; writes `encoder.safetensors` (all weights; `vision_encoder.*` is
/// what later stages load), `pretrain.json` and `train.jsonl` into `out`.
pub fn pretrain(
    cfg: &PretrainConfig,
    tok: &TextTokenizer,
    out: &Path,
    progress: &dyn Fn(u64, u64, f64),
) -> std::result::Result<PretrainReport, TrainError> {
    if cfg.steps == 0 || cfg.batch_size < 2 || cfg.eval_pairs < 2 {
        return Err(TrainError::PretrainSizes);
    }
    let device = Device::Cpu;
    std::fs::create_dir_all(out).map_err(super::io_err(out))?;
    let vm = VarMap::new();
    let model = DualEncoder::seeded(cfg, tok.vocab_size(), &vm, &device)?;
    let vars: Vec<_> = named_vars(&vm)
        .into_iter()
        .filter(|(n, _)| cfg.loss == ContrastiveLoss::Siglip || n != "contrastive.logit_bias")
        .collect();
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            lr: cfg.lr,
            ..AdamWConfig::default()
        },
    );
    let eval_seed = cfg.seed ^ 0xC0_17A5_7EED;
    let held = make_pairs(
        &cfg.model,
        cfg.modality,
        &cfg.data,
        tok,
        eval_seed,
        0,
        cfg.eval_pairs,
        &device,
    )?;
    let eval = |m: &DualEncoder| -> std::result::Result<Retrieval, TrainError> {
        let i = m.embed_items(&held)?;
        let t = m.embed_texts(&held.ids, &device)?;
        Ok(retrieval(&i, &t, &held.texts)?)
    };
    let before = eval(&model)?;
    let log_path = out.join("train.jsonl");
    let mut log = std::fs::File::create(&log_path).map_err(super::io_err(&log_path))?;
    let start = Instant::now();
    let mut recent = Vec::new();
    let warmup = (cfg.steps / 20).max(1);
    for step in 0..cfg.steps {
        opt.lr = lr_at(step, cfg.steps, warmup, cfg.lr, 0.05);
        let b = make_pairs(
            &cfg.model,
            cfg.modality,
            &cfg.data,
            tok,
            cfg.seed,
            step * cfg.batch_size as u64,
            cfg.batch_size,
            &device,
        )?;
        let i = model.embed_items(&b)?;
        let t = model.embed_texts(&b.ids, &device)?;
        let loss = match cfg.loss {
            ContrastiveLoss::Clip => clip_loss(&i, &t, &model.log_scale)?,
            ContrastiveLoss::Siglip => siglip_loss(&i, &t, &model.log_scale, &model.bias)?,
        };
        let lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(TrainError::NonFiniteContrastive { step, loss: lv });
        }
        let grads = loss.backward()?;
        let norm = opt.grad_norm(&grads)?;
        opt.step(&grads, if norm > 1.0 { 1.0 / norm } else { 1.0 })?;
        // CLIP clamps the temperature so logits stay below 100.
        let ls = model.log_scale.to_vec1::<f32>()?[0];
        if ls > 100f32.ln() {
            set_named(&vm, "contrastive.logit_scale", 100f32.ln())?;
        }
        recent.push(lv);
        if recent.len() > 20 {
            recent.remove(0);
        }
        progress(step + 1, cfg.steps, lv);
        if (step + 1) % 20 == 0 || step + 1 == cfg.steps {
            let line = serde_json::json!({
                "step": step + 1, "loss": recent.iter().sum::<f64>() / recent.len() as f64,
                "lr": opt.lr, "logit_scale": ls.exp(), "seconds": start.elapsed().as_secs_f64(),
            });
            writeln!(log, "{line}").map_err(super::io_err(&log_path))?;
        }
    }
    let after = eval(&model)?;
    let report = PretrainReport {
        before,
        after,
        final_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_outputs(out, cfg, &vm, &report)?;
    Ok(report)
}

/// Writes `encoder.safetensors` (the weights in `vm`) and `pretrain.json` (`cfg` and
/// `report`) into `out`.
fn write_outputs(
    out: &Path,
    cfg: &PretrainConfig,
    vm: &VarMap,
    report: &PretrainReport,
) -> std::result::Result<(), TrainError> {
    let wp = out.join("encoder.safetensors");
    let w = crate::model::io::safetensors_bytes(vm, DType::F32).map_err(|msg| {
        TrainError::SaveTensors {
            path: wp.clone(),
            msg,
        }
    })?;
    atomic_write(&wp, &w)?;
    let meta = serde_json::json!({ "config": cfg, "report": report });
    atomic_write(
        &out.join("pretrain.json"),
        serde_json::to_string_pretty(&meta)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(())
}

/// Sets the one-element variable `name` of `vm` to `value`.
fn set_named(vm: &VarMap, name: &str, value: f32) -> Result<()> {
    for (n, var) in named_vars(vm) {
        if n == name {
            var.set(&Tensor::new(&[value], var.device())?)?;
        }
    }
    Ok(())
}

/// Per-metric summary line for printing.
pub fn describe(r: &Retrieval) -> BTreeMap<&'static str, f64> {
    BTreeMap::from([
        ("i2t_r1", r.image_to_text_r1),
        ("i2t_r5", r.image_to_text_r5),
        ("t2i_r1", r.text_to_image_r1),
        ("t2i_r5", r.text_to_image_r5),
        ("chance_r1", r.chance_r1),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows normalise to: img = [1,0,0], [0,1,0], [1/√2,1/√2,0]; txt = [1,0,0], [0,1/√2,1/√2],
    /// [0,1,0]. So the cosine matrix is
    /// `[[1, 0, 0], [0, 1/√2, 1], [1/√2, 1/2, 1/√2]]`.
    fn pairs() -> (Tensor, Tensor) {
        let img = Tensor::new(&[[1f32, 0., 0.], [0., 2., 0.], [1., 1., 0.]], &Device::Cpu).unwrap();
        let txt = Tensor::new(&[[1f32, 0., 0.], [0., 1., 1.], [0., 1., 0.]], &Device::Cpu).unwrap();
        (img, txt)
    }

    /// The cosine matrix above, written out by hand.
    fn cosines() -> [[f64; 3]; 3] {
        let r = std::f64::consts::FRAC_1_SQRT_2;
        [[1.0, 0.0, 0.0], [0.0, r, 1.0], [r, 0.5, r]]
    }

    #[test]
    fn clip_loss_matches_the_hand_computed_value_on_a_3x3_matrix() {
        let (img, txt) = pairs();
        let scale = 10f64;
        let got = clip_loss(
            &img,
            &txt,
            &Tensor::new(&[scale.ln() as f32], &Device::Cpu).unwrap(),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
        // Row i of image->text: -log(exp(10 s_ii) / Σ_j exp(10 s_ij)); text->image uses columns.
        let s = cosines();
        let mut i2t = 0.0;
        let mut t2i = 0.0;
        #[allow(clippy::needless_range_loop)]
        for i in 0..3 {
            let row: f64 = (0..3).map(|j| (scale * s[i][j]).exp()).sum();
            let col: f64 = (0..3).map(|j| (scale * s[j][i]).exp()).sum();
            i2t += row.ln() - scale * s[i][i];
            t2i += col.ln() - scale * s[i][i];
        }
        let want = (i2t / 3.0 + t2i / 3.0) / 2.0;
        // The same number from numpy (see the doc of `pairs`): 1.148007463.
        assert!((want - 1.148_007_463).abs() < 1e-8, "{want}");
        assert!((got - want).abs() < 1e-5, "clip loss {got}, by hand {want}");
    }

    #[test]
    fn siglip_loss_matches_the_hand_computed_value_on_a_3x3_matrix() {
        let (img, txt) = pairs();
        let (scale, bias) = (10f64, -5f64);
        let got = siglip_loss(
            &img,
            &txt,
            &Tensor::new(&[scale.ln() as f32], &Device::Cpu).unwrap(),
            &Tensor::new(&[bias as f32], &Device::Cpu).unwrap(),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
        let s = cosines();
        let mut want = 0.0;
        for (i, row) in s.iter().enumerate() {
            for (j, &c) in row.iter().enumerate() {
                let z = if i == j { 1.0 } else { -1.0 };
                let x = z * (scale * c + bias);
                want += (1.0 + (-x).exp()).ln();
            }
        }
        want /= 3.0;
        // numpy gives 2.717980832 for the same inputs.
        assert!((want - 2.717_980_832).abs() < 1e-8, "{want}");
        assert!(
            (got - want).abs() < 1e-5,
            "siglip loss {got}, by hand {want}"
        );
    }

    #[test]
    fn perfectly_aligned_pairs_retrieve_perfectly() {
        let e = Tensor::new(&[[1f32, 0.], [0., 1.], [-1., 0.], [0., -1.]], &Device::Cpu).unwrap();
        let texts: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let r = retrieval(&e, &e, &texts).unwrap();
        assert_eq!(r.image_to_text_r1, 1.0);
        assert_eq!(r.text_to_image_r1, 1.0);
        assert_eq!(r.chance_r1, 0.25);
        // Swapping two captions' embeddings breaks exactly those two.
        let t = Tensor::new(&[[0f32, 1.], [1., 0.], [-1., 0.], [0., -1.]], &Device::Cpu).unwrap();
        let r = retrieval(&e, &t, &texts).unwrap();
        assert_eq!(r.image_to_text_r1, 0.5);
    }
}
