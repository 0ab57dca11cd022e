//! One training step's loss and gradients, with the batch split across threads by examples.
//!
//! A small model gains little from splitting each op across threads: at `fuyu-small`'s size
//! most products are a few million multiply-adds and most other ops a few thousand
//! elements, so hand-offs cost about what the second thread saves (measured: two threads
//! trained no faster than one). Here the batch is cut into one shard of whole examples per
//! thread instead; each thread runs forward and backward of its shard alone, with its ops kept
//! serial ([`crate::kernels::serial`]), and the shards' gradients are summed.
//!
//! The result is the same step: shard `s` with `n_s` answer tokens contributes its mean loss
//! weighted by `n_s / N`, so the sum is the mean over all `N` answer tokens of the batch, as
//! with one shard. Only rounding differs, and it depends on the number of shards, not on
//! scheduling: shards are fixed slices and their gradients are added in order, so a run is
//! reproducible for a given thread count.

use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

use crate::fusion::{collate, Batch, MultimodalSequence, PadSide};
use crate::model::Model;

/// Fewest examples a shard gets; below it a thread's share is too small to pay for itself.
const MIN_SHARD_EXAMPLES: usize = 2;

/// How many shards a batch of `examples` is cut into with `threads` threads.
pub fn shard_count(examples: usize, threads: usize) -> usize {
    threads.min(examples / MIN_SHARD_EXAMPLES).max(1)
}

/// `seqs` cut into `shards` consecutive runs of examples (sizes differ by at most one), each
/// collated on its own, so each is padded only to its own longest sequence.
pub fn collate_shards(
    seqs: &[MultimodalSequence],
    shards: usize,
    pad: u32,
) -> std::result::Result<Vec<Batch>, crate::fusion::CollateError> {
    let shards = shards.clamp(1, seqs.len().max(1));
    let (base, extra) = (seqs.len() / shards, seqs.len() % shards);
    let mut out = Vec::with_capacity(shards);
    let mut start = 0;
    for s in 0..shards {
        let len = base + usize::from(s < extra);
        out.push(collate(&seqs[start..start + len], pad, PadSide::Right)?);
        start += len;
    }
    Ok(out)
}

/// What one step computed.
pub struct StepGrads {
    /// Mean cross-entropy over all answer tokens of the batch.
    pub loss: f32,
    /// Answer tokens in the batch.
    pub n_targets: usize,
    /// Gradients of `loss` for `vars` (other entries of the store may be absent).
    pub grads: GradStore,
    /// Wall time of the forward passes (all shards).
    pub forward_s: f64,
    /// Wall time of the backward passes and the sum of the shards' gradients.
    pub backward_s: f64,
}

/// Loss and gradients of `model` over the examples of `shards`, one thread per shard.
///
/// `vars` are the parameters whose gradients are summed across shards (the trainable ones).
pub fn gradients(model: &Model, shards: &[Batch], vars: &[Var]) -> Result<StepGrads> {
    let t0 = Instant::now();
    if shards.is_empty() {
        candle_core::bail!("a training step needs at least one batch");
    }
    if let [batch] = shards {
        let (loss, n_targets) = model.loss(batch)?;
        let lv = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        return Ok(StepGrads {
            loss: lv,
            n_targets,
            grads,
            forward_s: (t1 - t0).as_secs_f64(),
            backward_s: t1.elapsed().as_secs_f64(),
        });
    }
    let losses: Vec<(Tensor, usize)> = shards
        .par_iter()
        .map(|b| crate::kernels::serial(|| model.loss(b)))
        .collect::<Result<_>>()?;
    let n_total: usize = losses.iter().map(|(_, n)| n).sum();
    let mut loss = 0f64;
    for (l, n) in &losses {
        loss += l.to_scalar::<f32>()? as f64 * *n as f64;
    }
    let t1 = Instant::now();
    let stores: Vec<GradStore> = losses
        .par_iter()
        .map(|(l, n)| {
            crate::kernels::serial(|| l.affine(*n as f64 / n_total as f64, 0.0)?.backward())
        })
        .collect::<Result<_>>()?;
    let mut stores = stores.into_iter();
    let mut grads = match stores.next() {
        Some(g) => g,
        None => candle_core::bail!("no shard gradients"),
    };
    for other in stores {
        for v in vars {
            let t = v.as_tensor();
            if let Some(g) = other.get(t) {
                let sum = match grads.get(t) {
                    Some(mine) => (mine + g)?,
                    None => g.clone(),
                };
                grads.insert(t, sum);
            }
        }
    }
    Ok(StepGrads {
        loss: (loss / n_total.max(1) as f64) as f32,
        n_targets: n_total,
        grads,
        forward_s: (t1 - t0).as_secs_f64(),
        backward_s: t1.elapsed().as_secs_f64(),
    })
}
