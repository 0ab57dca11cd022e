//! Fused CPU ops with their backward, as candle `CustomOp`s, and the CUDA kernels; one op per
//! file, mirroring `kernels/*.cu`. This file holds the thread policy, the helpers the ops share
//! and the re-exports.
//!
//! candle builds LayerNorm, softmax and `Linear` from many small ops; on the training step of
//! `fuyu-small` that made backward 80% of the time (profile in the issue note): every
//! broadcast of a parameter (a bias, a norm weight, `Linear`'s weight broadcast over the
//! batch) is reduced in backward by candle's generic strided sum, which is slow. The ops here
//! compute forward and backward in one pass over contiguous rows:
//!
//! - [`linear`] (`linear.rs`): `x W^T + b` as one 2-D matmul (so `dW` is one matmul too) and a
//!   fused bias; the model's `Linear` layer (`model::layers`) is built on it;
//! - [`layer_norm`] / [`rms_norm`] (`norm.rs`): the norm with its affine parameters;
//! - [`softmax_last`] (`softmax.rs`): softmax over the last dimension, `dx = y (g - sum(g y))`;
//! - [`attention()`] (`attention/`): scaled dot-product attention in tiles of 64 query rows, each
//!   tile's scores, probabilities and gradients computed with block matrix products
//!   (O(tile x keys) memory per thread); its mask is the compact [`AttnMask`] (O(batch x keys),
//!   not a dense `queries x keys`). A model layer calls [`attend`], the one entry point that
//!   picks this kernel, the CUDA kernels or candle's ops;
//! - [`rotary`] (`rotary.rs`): rotate-half positions, backward the inverse rotation; [`qk_prep`]
//!   readies q and k for attention (norm, rotary, head transpose);
//! - [`cross_entropy`] (`xent.rs`): mean cross-entropy over the vocabulary, keeping only each
//!   row's log-sum-exp between forward and backward;
//! - [`adamw_update`] (`adamw.rs`): the AdamW step in place on a parameter's storage.
//!
//! All are f32 (the models train and run in f32); tests compare them with the plain candle
//! path, forward and gradients (`tests/kernels.rs`).
//!
//! Threads: an op splits its work across threads only when [`num_threads`] allows more than
//! one and the work is worth a hand-off; inside one shard of a data-parallel training step
//! ([`serial`], `train::step`) every op stays on its thread.
//!
//! CUDA: `kernels/*.cu` ([`sources`]) are compiled at run time with NVRTC and launched through
//! cudarc on candle's CUDA device (`cuda/`, cargo feature `cuda`); [`attend`], [`qk_prep`] and
//! [`linear_then`] send CUDA tensors there. Without the feature the CPU ops are all there is;
//! the kernels themselves still run on every test run, on the CPU emulator of `kernels/emu/`
//! (`tests/cuda_emulated.rs`), with the launch plans of [`sources`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Tensor};
use rayon::prelude::*;

mod adamw;
pub mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
mod linear;
mod norm;
mod rotary;
mod softmax;
pub mod sources;
mod xent;

pub use adamw::{adamw_update, sum_squares, AdamWStep};
pub use attention::{attend, attention, cuda_attention, AttnMask, LayerMask};
pub use linear::{cuda_relu2, linear, linear_then, Epilogue};
pub use norm::{layer_norm, rms_norm};
pub use rotary::{cuda_qk_prep, qk_prep, rotary};
pub use softmax::softmax_last;
pub use xent::{cross_entropy, cross_entropy_plain};

/// False when `MMLAB_PLAIN_OPS` is set: the model then uses candle's plain ops everywhere
/// (for before/after measurements and for debugging a fused op).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MMLAB_PLAIN_OPS").is_none())
}

/// True when the fused CPU ops should run on tensors living on `dev`: they have no CUDA
/// implementation, so on a GPU the model takes candle's plain ops (and [`attend`] its
/// CUDA kernels).
pub fn enabled_on(dev: &candle_core::Device) -> bool {
    enabled() && dev.is_cpu()
}

/// Rows handled per parallel task; small tensors stay on one thread.
const ROWS_PER_TASK: usize = 256;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: only f32 is supported, got {:?}", s.dtype());
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

thread_local! {
    /// Set while this thread computes one shard of a data-parallel step (`train::step`).
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Threads an op may split its work across: candle's budget (`RAYON_NUM_THREADS`), or 1 on a
/// thread that already runs one shard of a data-parallel step, where the shards are the
/// parallelism and splitting again would only add hand-offs.
pub fn num_threads() -> usize {
    if SERIAL.with(|s| s.get()) {
        1
    } else {
        candle_core::utils::get_num_threads()
    }
}

/// Runs `f` with this thread's ops kept to one thread (see [`num_threads`]).
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _reset = Reset(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Runs `f(index, chunk)` over `chunk`-sized pieces of `out`, in parallel when more than one
/// thread is allowed ([`num_threads`]), so the op keeps to the thread budget.
fn run_chunks<R: Send>(
    out: &mut [f32],
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) -> R + Sync + Send,
) -> Vec<R> {
    let chunk = chunk.max(1);
    // Below a few tasks' worth of work the hand-off to other threads costs more than it saves.
    if num_threads() > 1 && out.len() > chunk.max(1 << 16) {
        out.par_chunks_mut(chunk)
            .enumerate()
            .map(|(i, c)| f(i, c))
            .collect()
    } else {
        out.chunks_mut(chunk)
            .enumerate()
            .map(|(i, c)| f(i, c))
            .collect()
    }
}

/// The `i`-th `chunk`-sized piece of `v`.
fn piece(v: &[f32], i: usize, chunk: usize) -> &[f32] {
    &v[i * chunk..((i + 1) * chunk).min(v.len())]
}

fn contiguous_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Runs `f` on the f32 data of CPU tensors `ts`, borrowed in place (a tensor that is not
/// contiguous is copied once); backward passes read their inputs this way instead of copying
/// every one into a new `Vec`.
fn with_f32<const N: usize, R>(
    ts: [&Tensor; N],
    what: &str,
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Result<R> {
    let owned = ts.map(|t| t.contiguous());
    let mut cs = Vec::with_capacity(N);
    for t in owned {
        cs.push(t?);
    }
    let guards: Vec<_> = cs.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slot, (s, l)) in slices.iter_mut().zip(&guards) {
        let candle_core::Storage::Cpu(c) = &**s else {
            candle_core::bail!("{what}: the CPU op got a tensor on another device");
        };
        *slot = f32_slice(c, l, what)?;
    }
    Ok(f(slices))
}

/// Sum of `x` with eight running partial sums, so the compiler can keep them in vector lanes
/// (a plain `iter().sum()` is one serial chain of adds, since f32 addition is not associative).
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// Dot product of `a` and `b` with eight running partial sums (see [`sum_lanes`]).
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}
