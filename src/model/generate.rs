//! Decoding with a KV cache: greedy or sampled, stop tokens, and prefix caching
//! (the image part of a prompt is computed once for all questions about it).

use candle_core::{Result, Tensor, D};
use rand::{Rng, SeedableRng};

use super::{KvCache, Model};
use crate::fusion::{collate, Batch, MultimodalSequence, PadSide, TokenKind};

/// How to pick tokens.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens per sequence.
    pub max_new_tokens: usize,
    /// 0 for greedy; otherwise softmax temperature.
    pub temperature: f64,
    /// Keep only the k most likely tokens when sampling (0 = all).
    pub top_k: usize,
    /// Seed for sampling.
    pub seed: u64,
    /// Tokens that end a sequence (not included in the output).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 16,
            temperature: 0.0,
            top_k: 0,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

/// Most new tokens one request may ask for.
pub const MAX_NEW_TOKENS: usize = 1 << 16;

/// A decoding setting outside its range; `option` is the setting's name.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid decoding option {option} = {value}: expected {expected}")]
pub struct SamplingError {
    /// The setting (`temperature`, `top_k`, `max_new_tokens`).
    pub option: &'static str,
    /// The value given, printed.
    pub value: String,
    /// What the setting accepts.
    pub expected: &'static str,
}

/// Checks a softmax temperature: finite and >= 0 (0 is greedy).
pub fn check_temperature(t: f64) -> std::result::Result<f64, SamplingError> {
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err(SamplingError {
            option: "temperature",
            value: t.to_string(),
            expected: "a finite number >= 0 (0 is greedy decoding)",
        })
    }
}

/// Checks a token budget: 1 to [`MAX_NEW_TOKENS`].
pub fn check_max_new_tokens(n: usize) -> std::result::Result<usize, SamplingError> {
    if (1..=MAX_NEW_TOKENS).contains(&n) {
        Ok(n)
    } else {
        Err(SamplingError {
            option: "max_new_tokens",
            value: n.to_string(),
            expected: "between 1 and 65536 tokens",
        })
    }
}

impl GenerateOptions {
    /// Checks every setting: temperature finite and >= 0, a budget of 1 to [`MAX_NEW_TOKENS`]
    /// tokens (`top_k` 0 keeps all tokens, any larger value keeps that many).
    pub fn validate(&self) -> std::result::Result<(), SamplingError> {
        check_temperature(self.temperature)?;
        check_max_new_tokens(self.max_new_tokens)?;
        Ok(())
    }
}

/// Picks one token from a row of logits.
fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut rand_chacha::ChaCha8Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if opts.top_k > 0 {
        idx.truncate(opts.top_k);
    }
    let max = logits[idx[0]] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / opts.temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (k, wk) in w.iter().enumerate() {
        r -= wk;
        if r <= 0.0 {
            return idx[k] as u32;
        }
    }
    idx[idx.len() - 1] as u32
}

/// A one-token-per-row step batch continuing every row of `cache`.
fn step_batch(tokens: &[u32], cache: &KvCache, done: &[bool]) -> Batch {
    let b = tokens.len();
    Batch {
        batch: b,
        seq_len: 1,
        tokens: tokens.to_vec(),
        positions: cache.next_pos.clone(),
        attention_mask: done.iter().map(|&d| u8::from(!d)).collect(),
        target_mask: vec![false; b],
        modality: vec![TokenKind::Text; b],
        ..Default::default()
    }
}

/// Continues every row of a primed cache from its last logits until a stop token or the budget.
fn decode_loop(
    model: &Model,
    mut cache: KvCache,
    mut last: Tensor,
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    let b = cache.batch;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for step in 0..opts.max_new_tokens {
        let rows = last.to_vec2::<f32>()?;
        let mut next = vec![0u32; b];
        for i in 0..b {
            if done[i] {
                continue;
            }
            let tok = pick(&rows[i], opts, &mut rng);
            if opts.stop_tokens.contains(&tok) {
                done[i] = true;
            } else {
                out[i].push(tok);
                next[i] = tok;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == opts.max_new_tokens {
            break;
        }
        let batch = step_batch(&next, &cache, &done);
        let o = model.forward(&batch, Some(&mut cache), false)?;
        last = model.last_logits(&o.hidden)?;
    }
    Ok(out)
}

/// Generates a continuation for each prompt (prompts end with `<boa>`), batched with left padding.
pub fn generate(
    model: &Model,
    prompts: &[MultimodalSequence],
    pad_id: u32,
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    opts.validate().map_err(candle_core::Error::wrap)?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let batch = collate(prompts, pad_id, PadSide::Left).map_err(candle_core::Error::wrap)?;
    let mut cache = KvCache::default();
    let o = model.forward(&batch, Some(&mut cache), false)?;
    let last = model.last_logits(&o.hidden)?;
    decode_loop(model, cache, last, opts)
}

/// Runs shared prefixes once, then continues each suffix from its prefix's cache.
///
/// `suffixes[i] = (p, ids)` continues prefix `p` with text ids `ids` (e.g. the
/// question and `<boa>`). Returns one generated id list per suffix.
pub fn generate_with_prefixes(
    model: &Model,
    prefixes: &[MultimodalSequence],
    suffixes: &[(usize, Vec<u32>)],
    pad_id: u32,
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    opts.validate().map_err(candle_core::Error::wrap)?;
    if suffixes.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((p, _)) = suffixes.iter().find(|(p, _)| *p >= prefixes.len()) {
        candle_core::bail!("suffix refers to prefix {p} of {}", prefixes.len());
    }
    let pre = collate(prefixes, pad_id, PadSide::Left).map_err(candle_core::Error::wrap)?;
    let mut pcache = KvCache::default();
    model.forward(&pre, Some(&mut pcache), false)?;
    let rows: Vec<u32> = suffixes.iter().map(|(p, _)| *p as u32).collect();
    let mut cache = pcache.select_rows(&rows)?;
    let t = suffixes.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    if t == 0 {
        candle_core::bail!("empty suffix");
    }
    let b = suffixes.len();
    let mut sb = Batch {
        batch: b,
        seq_len: t,
        tokens: vec![pad_id; b * t],
        positions: vec![0; b * t],
        attention_mask: vec![0; b * t],
        target_mask: vec![false; b * t],
        modality: vec![TokenKind::Pad; b * t],
        ..Default::default()
    };
    for (i, (_, ids)) in suffixes.iter().enumerate() {
        let off = i * t + (t - ids.len());
        for (k, &id) in ids.iter().enumerate() {
            sb.tokens[off + k] = id;
            sb.positions[off + k] = cache.next_pos[i] + k as u32;
            sb.attention_mask[off + k] = 1;
            sb.modality[off + k] = TokenKind::Text;
        }
    }
    let o = model.forward(&sb, Some(&mut cache), false)?;
    let last = model.last_logits(&o.hidden)?;
    decode_loop(model, cache, last, opts)
}

/// Log-probabilities `(n, vocab)` of the next token after each prompt (prompts end with `<boa>`).
pub fn next_token_logprobs(
    model: &Model,
    prompts: &[MultimodalSequence],
    pad_id: u32,
) -> Result<Tensor> {
    let batch = collate(prompts, pad_id, PadSide::Left).map_err(candle_core::Error::wrap)?;
    let o = model.forward(&batch, None, false)?;
    candle_nn::ops::log_softmax(&model.last_logits(&o.hidden)?, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_options_are_checked_by_name() {
        for t in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -1e-9] {
            let opts = GenerateOptions {
                temperature: t,
                ..Default::default()
            };
            let e = opts.validate().unwrap_err();
            assert_eq!(e.option, "temperature", "{t}");
            assert!(e.to_string().contains("temperature"), "{e}");
        }
        for t in [0.0, 0.7, 1.0, 100.0] {
            let opts = GenerateOptions {
                temperature: t,
                ..Default::default()
            };
            assert_eq!(opts.validate(), Ok(()), "{t}");
        }
        for n in [0, MAX_NEW_TOKENS + 1, usize::MAX] {
            let opts = GenerateOptions {
                max_new_tokens: n,
                ..Default::default()
            };
            assert_eq!(opts.validate().unwrap_err().option, "max_new_tokens", "{n}");
        }
    }

    #[test]
    fn greedy_and_sampled_picks_stay_in_the_vocabulary() {
        let logits = [0.5f32, 3.0, -1.0, 2.5];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        assert_eq!(pick(&logits, &GenerateOptions::default(), &mut rng), 1);
        let opts = GenerateOptions {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        };
        for _ in 0..200 {
            let t = pick(&logits, &opts, &mut rng);
            assert!(t == 1 || t == 3, "top-2 of {logits:?} picked {t}");
        }
    }
}
