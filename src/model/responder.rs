//! The eval harness's model interface for our models, with prefix caching:
//! the image (or audio) part of a prompt is run once for all questions about it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::D;
use mmlab_eval::{EvalError, Request, Responder, Response};

use super::generate::{generate, generate_with_prefixes, GenerateOptions};
use super::io::LoadedModel;
use crate::fusion::{
    collate, AudioInput, ImageInput, MultimodalSequence, PadSide, Segment, SequenceBuilder,
};

/// The segments of a request's media, image before audio (the order every prompt uses).
pub fn media_segments(image: &Option<PathBuf>, audio: &Option<PathBuf>) -> Vec<Segment> {
    let mut segs = Vec::new();
    if let Some(i) = image {
        segs.push(Segment::Image(ImageInput::Path(i.clone())));
    }
    if let Some(a) = audio {
        segs.push(Segment::Audio(AudioInput::Path(a.clone())));
    }
    segs
}

/// Answers eval requests with a loaded model.
pub struct ModelResponder {
    /// The model.
    pub model: LoadedModel,
    /// Display name (preset or directory name).
    pub display: String,
    /// Decoding settings.
    pub opts: GenerateOptions,
    /// Run each distinct image/audio prefix once and share its KV cache.
    pub prefix_cache: bool,
    /// Requests per call.
    pub batch: usize,
    builder: SequenceBuilder,
}

impl ModelResponder {
    /// Wraps an error of this model as an [`EvalError`] naming the model as the user asked
    /// for it, with the error's whole chain of causes.
    fn err<E: std::error::Error>(&self) -> impl Fn(E) -> EvalError + '_ {
        move |e| EvalError::Responder {
            identity: self.display.clone(),
            message: mmlab_eval::error::error_chain(&e),
        }
    }

    /// Wraps a loaded model; greedy decoding of up to 8 tokens.
    pub fn new(model: LoadedModel, display: String) -> Self {
        let tok = Arc::new(model.tokenizer.clone());
        let builder = model.config.builder(tok.clone());
        let opts = GenerateOptions {
            max_new_tokens: 8,
            stop_tokens: vec![tok.specials.eos, tok.specials.pad],
            ..Default::default()
        };
        Self {
            model,
            display,
            opts,
            prefix_cache: true,
            batch: 192,
            builder,
        }
    }

    /// The media of a request with `<bos>` where the model wants it (no text, no `<boa>`).
    fn prefix(
        &self,
        image: &Option<PathBuf>,
        audio: &Option<PathBuf>,
    ) -> Result<MultimodalSequence, EvalError> {
        let segs = media_segments(image, audio);
        let mut seq = self
            .builder
            .build_placed(&segs, self.model.bos)
            .map_err(self.err())?;
        // The builder closes every prompt with <boa>; a prefix stops before it.
        if seq.tokens.last() == Some(&self.builder.tokenizer.specials.boa) {
            seq.tokens.pop();
            seq.modality.pop();
            seq.positions.pop();
            seq.target_mask.pop();
        }
        Ok(seq)
    }

    /// The question's ids followed by `<boa>`.
    fn suffix(&self, prompt: &str) -> Result<Vec<u32>, EvalError> {
        let mut ids = self.builder.tokenizer.encode(prompt).map_err(self.err())?;
        ids.push(self.builder.tokenizer.specials.boa);
        Ok(ids)
    }

    fn full(&self, r: &Request, answer: Option<&str>) -> Result<MultimodalSequence, EvalError> {
        let mut segs = media_segments(&r.image, &r.audio);
        segs.push(Segment::Text(r.prompt.clone()));
        if let Some(a) = answer {
            segs.push(Segment::Answer(a.to_string()));
        }
        self.builder
            .build_placed(&segs, self.model.bos)
            .map_err(self.err())
    }

    /// Sum of log-probabilities of each candidate answer (and `<eos>`) after the prompt.
    fn score(&self, r: &Request, cands: &[String]) -> Result<Vec<f32>, EvalError> {
        let seqs = cands
            .iter()
            .map(|c| self.full(r, Some(c)))
            .collect::<Result<Vec<_>, _>>()?;
        let pad = self.builder.tokenizer.specials.pad;
        let batch = collate(&seqs, pad, PadSide::Right).map_err(self.err())?;
        let m = &self.model.model;
        let out = m.forward(&batch, None, false).map_err(self.err())?;
        let t = m
            .decoder()
            .target_logits(&out.hidden, &batch)
            .map_err(self.err())?;
        let logp = candle_nn::ops::log_softmax(&t.logits, D::Minus1)
            .and_then(|l| l.to_vec2::<f32>())
            .map_err(self.err())?;
        // Rows are in sequence order: add each sequence's answer-token log-probabilities.
        let mut sums = vec![0f32; seqs.len()];
        for ((row, target), lp) in t.rows.iter().zip(&t.targets).zip(&logp) {
            sums[*row as usize / batch.seq_len] += lp[*target as usize];
        }
        Ok(sums)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, EvalError> {
        self.builder
            .tokenizer
            .decode(ids)
            .map(|s| s.trim().to_string())
            .map_err(self.err())
    }
}

impl Responder for ModelResponder {
    fn identity(&self) -> String {
        format!("{}@{}", self.display, &self.model.weights_sha256[..16])
    }

    fn name(&self) -> String {
        self.display.clone()
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    /// Decoding and input settings: part of the cache key and recorded in every result.
    fn settings(&self) -> serde_json::Value {
        let img = &self.model.config.image;
        serde_json::json!({
            "max_new_tokens": self.opts.max_new_tokens,
            "temperature": self.opts.temperature,
            "top_k": self.opts.top_k,
            "seed": self.opts.seed,
            "image_patch": img.patch,
            "image_box": [img.max_height, img.max_width],
        })
    }

    fn respond(&mut self, batch: &[Request]) -> Result<Vec<Response>, EvalError> {
        let mut out = vec![Response::default(); batch.len()];
        let mut gen_idx = Vec::new();
        for (i, r) in batch.iter().enumerate() {
            match &r.candidates {
                Some(c) if !c.is_empty() => {
                    let scores = self.score(r, c)?;
                    let best = mmlab_eval::responder::argmax(&scores).unwrap_or(0);
                    out[i] = Response {
                        answer: c[best].clone(),
                        scores: Some(scores),
                        ..Default::default()
                    };
                }
                _ => gen_idx.push(i),
            }
        }
        let pad = self.builder.tokenizer.specials.pad;
        let m = &self.model.model;
        if self.prefix_cache {
            // Group by media; prefixes of equal length share one prefix batch.
            let mut keys: HashMap<(Option<PathBuf>, Option<PathBuf>), usize> = HashMap::new();
            let mut prefixes = Vec::new();
            let mut suffixes = Vec::new();
            for &i in &gen_idx {
                let r = &batch[i];
                let key = (r.image.clone(), r.audio.clone());
                let p = match keys.get(&key) {
                    Some(&p) => p,
                    None => {
                        prefixes.push(self.prefix(&r.image, &r.audio)?);
                        keys.insert(key, prefixes.len() - 1);
                        prefixes.len() - 1
                    }
                };
                suffixes.push((p, self.suffix(&r.prompt)?));
            }
            if !suffixes.is_empty() {
                let ids = generate_with_prefixes(m, &prefixes, &suffixes, pad, &self.opts)
                    .map_err(self.err())?;
                for (k, &i) in gen_idx.iter().enumerate() {
                    out[i].answer = self.decode(&ids[k])?;
                }
            }
        } else if !gen_idx.is_empty() {
            let seqs = gen_idx
                .iter()
                .map(|&i| self.full(&batch[i], None))
                .collect::<Result<Vec<_>, _>>()?;
            let ids = generate(m, &seqs, pad, &self.opts).map_err(self.err())?;
            for (k, &i) in gen_idx.iter().enumerate() {
                out[i].answer = self.decode(&ids[k])?;
            }
        }
        Ok(out)
    }
}
