//! Scaled dot-product attention. [`attend`] is the one entry point a model layer calls: it picks
//! the CUDA FlashAttention kernels (`super::cuda`, feature `cuda`) or the tiled CPU kernel
//! (`cpu.rs`) from the tensors' device, and candle's ops where neither applies or the
//! probabilities are wanted. The masks are in `mask.rs`: the compact [`AttnMask`] and one
//! forward's [`LayerMask`], which builds the dense and CUDA forms once for every layer.

use candle_core::{DType, Result, Tensor, D};

use super::{enabled_on, softmax_last};

#[cfg(feature = "cuda")]
use super::cuda;

mod cpu;
mod mask;

pub use mask::{AttnMask, LayerMask};

/// True when attention over `q` (`b, h, t, hd`) runs on the CUDA kernels: the `cuda` feature is
/// built in, `q` is on a CUDA device in f32 or bf16, and its head dim is compiled.
pub fn cuda_attention(q: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        q.device().is_cuda()
            && matches!(
                q.dtype(),
                candle_core::DType::F32 | candle_core::DType::BF16
            )
            && q.dims()
                .last()
                .is_some_and(|&hd| cuda::supports_head_dim(hd))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = q;
        false
    }
}

/// Query x key count from which [`attend`] takes the tiled CPU kernel: one query tile of it.
/// Below that, candle's batched matmuls and the kernel's tiles are the same products. Measured
/// on `fuyu-small` training (seq ~40, 1 thread, three alternating runs): 29.0k / 29.2k / 28.3k
/// tokens/s with the fused op, 29.7k / 30.0k / 28.1k plain, a tie; from seq 128 the fused op is
/// faster (2048: 0.29 s against 1.78 s, `benches/attention.rs`) and keeps no `seq x seq` score,
/// probability or gradient matrix.
pub const FUSED_ATTENTION_MIN_SCORES: usize = 64 * 64;

/// A model layer's attention, the one entry point: `q` (`b, h, tq, hd`) over `k`, `v`
/// (`b, kv_heads, tk, hd`) with one forward's `mask`; query head `j` reads KV head
/// `j / (h / kv_heads)`. Returns `(b, tq, h * hd)`, the heads concatenated, and, when
/// `want_probs`, the probabilities `(b, h, tq, tk)`.
///
/// Picks from the tensors' device and the switches that exist: the CUDA kernels when
/// [`cuda_attention`] holds; on the CPU the tiled kernel for f32 with at least
/// [`FUSED_ATTENTION_MIN_SCORES`] scores, unless `MMLAB_PLAIN_OPS` is set; candle's ops over the
/// dense mask otherwise, and whenever the probabilities are wanted (the fused kernels never hold
/// them).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &LayerMask,
    scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (tq, tk) = (q.dim(2)?, k.dim(2)?);
    let fused_cpu =
        enabled_on(q.device()) && q.dtype() == DType::F32 && tq * tk >= FUSED_ATTENTION_MIN_SCORES;
    if !want_probs && (fused_cpu || cuda_attention(q)) {
        // Grouped KV heads handled inside, heads concatenated on output: memory O(keys) per
        // query row instead of the full score matrix, and the compact mask instead of a dense one.
        return Ok((fused(q, k, v, mask, scale)?, None));
    }
    plain(q, k, v, mask, scale, want_probs)
}

/// Scaled dot-product attention of `q` (`b, h, tq, hd`) over `k`, `v` (`b, kv_heads, tk, hd`)
/// with the compact `mask` (see [`AttnMask`]) on the fused kernels, whatever the size: the CUDA
/// kernels when [`cuda_attention`] says so, else the tiled CPU kernel. Returns
/// `(b, tq, h * hd)`: the heads already concatenated. The CUDA kernels' form of the mask is
/// built here; a model layer calls [`attend`], whose [`LayerMask`] builds it once per forward.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<Tensor> {
    fused(
        q,
        k,
        v,
        &LayerMask::new(mask.clone(), q.device(), q.dtype()),
        scale,
    )
}

/// The fused kernels: CUDA when [`cuda_attention`] holds, else the tiled CPU kernel.
fn fused(q: &Tensor, k: &Tensor, v: &Tensor, mask: &LayerMask, scale: f64) -> Result<Tensor> {
    let m = mask.mask();
    let (b, _, tq, _) = q.dims4()?;
    let (_, _, tk, _) = k.dims4()?;
    if (m.b(), m.tq(), m.tk()) != (b, tq, tk) {
        candle_core::bail!(
            "attention: mask for {} x {} queries and {} keys, q {:?} and {tk} keys",
            m.b(),
            m.tq(),
            m.tk(),
            q.dims()
        );
    }
    #[cfg(feature = "cuda")]
    if cuda_attention(q) {
        return cuda::attention(q, k, v, mask.cuda_keys()?, scale, m.is_causal());
    }
    cpu::tiled(q, k, v, m, scale)
}

/// Attention from candle's ops (the reference for the fused kernels): KV heads repeated, scores
/// plus the dense mask, softmax (the fused CPU softmax for f32 on the CPU; f32 for half
/// precision, as HF's attention does), then the values.
fn plain(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &LayerMask,
    scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, h, tq, hd) = q.dims4()?;
    let kvh = k.dim(1)?;
    if kvh == 0 || h % kvh != 0 {
        candle_core::bail!(
            "attention: {h} query heads over {kvh} KV heads (q {:?}, k {:?})",
            q.dims(),
            k.dims()
        );
    }
    let rep = h / kvh;
    let (k, v) = if rep > 1 {
        (repeat_kv(k, rep)?, repeat_kv(v, rep)?)
    } else {
        (k.clone(), v.clone())
    };
    let scores = (q.contiguous()?.matmul(&k.t()?)? * scale)?.broadcast_add(&mask.dense()?)?;
    let probs = if enabled_on(scores.device()) && scores.dtype() == DType::F32 {
        softmax_last(&scores)?
    } else if scores.dtype() != DType::F32 {
        // Half precision: softmax in f32, as HF's attention does.
        candle_nn::ops::softmax(&scores.to_dtype(DType::F32)?, D::Minus1)?
            .to_dtype(scores.dtype())?
    } else {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    };
    let out = probs
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, tq, h * hd))?;
    Ok((out, want_probs.then_some(probs)))
}

/// Repeats each KV head `rep` times along the head axis.
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, h, rep, t, d))?
        .reshape((b, h * rep, t, d))
}
