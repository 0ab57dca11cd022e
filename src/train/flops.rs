//! Training FLOPs as counted: for each component (vision encoder, connector, decoder) `k · N ·
//! tokens`, with `N` its matmul parameters (the token embedding is a lookup and is left out),
//! `tokens` the patches (encoder, connector), audio frames (the audio frame embedding) or real
//! sequence tokens (decoder) of a step, and `k = 6` when the component trains, 4 when it is
//! frozen but gradients flow through it to a trainable part before it, 2 when it only runs
//! forward. `mmlab ablate` sizes its budgets with it; `mmlab train` logs the running total.

use std::collections::BTreeMap;

use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::{component, named_vars};

/// Matmul parameters per component (`encoder`, `connector`, `decoder`, and `audio_adapter`,
/// the audio frame embedding, which freezes with the connector; the token embedding excluded)
/// and the total parameter count, of a model's variables.
pub fn component_params_of(vm: &VarMap) -> (BTreeMap<&'static str, usize>, usize) {
    let mut per = BTreeMap::new();
    let mut total = 0;
    for (name, var) in named_vars(vm) {
        total += var.elem_count();
        if name.ends_with("embed_tokens.weight") {
            continue;
        }
        let key = if name.starts_with("audio_embed.") {
            "audio_adapter"
        } else {
            component(&name)
        };
        *per.entry(key).or_insert(0) += var.elem_count();
    }
    (per, total)
}

/// Patches, real tokens and audio frames of a step (or their mean over an arm's steps).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepShape {
    /// Image patches per step.
    pub patches: f64,
    /// Real (unpadded) sequence tokens per step.
    pub tokens: f64,
    /// Audio frames per step.
    #[serde(default)]
    pub frames: f64,
}

/// Training FLOPs of one step (see the module docs).
pub fn train_step_flops(
    per: &BTreeMap<&'static str, usize>,
    shape: &StepShape,
    freeze: &[String],
) -> f64 {
    let frozen = |c: &str| freeze.iter().any(|f| f == c);
    let k = |trains: bool, upstream: bool| {
        if trains {
            6.0
        } else if upstream {
            4.0
        } else {
            2.0
        }
    };
    let n = |c: &str| *per.get(c).unwrap_or(&0) as f64;
    // Image path: encoder -> connector -> decoder; audio path: frame embedding -> decoder.
    let enc_trains = !frozen("encoder") && n("encoder") > 0.0;
    let conn_trains = !frozen("connector");
    let mut flops = k(enc_trains, false) * n("encoder") * shape.patches;
    flops += k(conn_trains, enc_trains) * n("connector") * shape.patches;
    flops += k(conn_trains, false) * n("audio_adapter") * shape.frames;
    let upstream = enc_trains || (conn_trains && n("connector") + n("audio_adapter") > 0.0);
    flops += k(!frozen("decoder"), upstream) * n("decoder") * shape.tokens;
    flops
}
