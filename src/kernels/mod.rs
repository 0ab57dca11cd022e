//! Fused CPU ops with their backward, as candle `CustomOp`s.
//!
//! candle builds LayerNorm, softmax and `Linear` from many small ops; on the training step of
//! `fuyu-small` that made backward 80% of the time (profile in the issue note): every
//! broadcast of a parameter (a bias, a norm weight, `Linear`'s weight broadcast over the
//! batch) is reduced in backward by candle's generic strided sum, which is slow. The ops here
//! compute forward and backward in one pass over contiguous rows:
//!
//! - [`linear`]: `x W^T + b` as one 2-D matmul (so `dW` is one matmul too) and a fused bias;
//! - [`layer_norm`] / [`rms_norm`]: the norm with its affine parameters;
//! - [`softmax_last`]: softmax over the last dimension, `dx = y (g - sum(g y))`;
//! - [`attention`]: scaled dot-product attention in tiles of 64 query rows, each tile's scores,
//!   probabilities and gradients computed with block matrix products (O(tile x keys) memory
//!   per thread); its mask is the compact [`AttnMask`] (O(batch x keys), not a dense
//!   `queries x keys`);
//! - [`rotary`]: rotate-half positions, backward the inverse rotation;
//! - [`cross_entropy`]: mean cross-entropy over the vocabulary, keeping only each row's
//!   log-sum-exp between forward and backward;
//! - [`adamw_update`]: the AdamW step in place on a parameter's storage.
//!
//! All are f32 (the models train and run in f32); tests compare them with the plain candle
//! path, forward and gradients (`tests/kernels.rs`).
//!
//! Threads: an op splits its work across threads only when [`num_threads`] allows more than
//! one and the work is worth a hand-off; inside one shard of a data-parallel training step
//! ([`serial`], `train::step`) every op stays on its thread.
//!
//! CUDA: `kernels/*.cu` ([`sources`]) are compiled at run time with NVRTC and launched through
//! cudarc on candle's CUDA device (`cuda` module, cargo feature `cuda`); [`attention`] sends
//! CUDA tensors there. Without the feature the CPU ops are all there is; the kernels themselves
//! still run on every test run, on the CPU emulator of `kernels/emu/` (`tests/cuda_emulated.rs`),
//! with the launch plans of [`sources`].

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

mod adamw;
#[cfg(feature = "cuda")]
pub mod cuda;
mod linear;
mod norm;
mod rotary;
mod softmax;
pub mod sources;
mod xent;

pub use adamw::{adamw_update, sum_squares, AdamWStep};
pub use linear::{cuda_relu2, linear, linear_then, Epilogue, Linear};
pub use norm::{layer_norm, rms_norm};
pub use rotary::rotary;
pub use softmax::softmax_last;
pub use xent::{cross_entropy, cross_entropy_plain};

/// False when `MMLAB_PLAIN_OPS` is set: the model then uses candle's plain ops everywhere
/// (for before/after measurements and for debugging a fused op).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MMLAB_PLAIN_OPS").is_none())
}

/// True when the fused CPU ops should run on tensors living on `dev`: they have no CUDA
/// implementation, so on a GPU the model takes candle's plain ops (and [`attention`] its
/// CUDA kernels).
pub fn enabled_on(dev: &candle_core::Device) -> bool {
    enabled() && dev.is_cpu()
}

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

/// A fused CUDA op's switch, read once per process.
#[cfg(feature = "cuda")]
type Switch = std::sync::OnceLock<std::result::Result<bool, String>>;

/// True when `x` is on a CUDA device in f32 or bf16 and the switch `var` (read once into
/// `cell`) is on: unset, empty or `fused`; `plain` turns it off (candle's ops, to compare); any
/// other value is an error naming the variable.
#[cfg(feature = "cuda")]
fn cuda_fusion(x: &Tensor, cell: &'static Switch, var: &str) -> Result<bool> {
    let on = cell
        .get_or_init(|| match std::env::var(var).as_deref() {
            Err(_) | Ok("") | Ok("fused") => Ok(true),
            Ok("plain") => Ok(false),
            Ok(other) => Err(format!("{var}={other}: expected fused or plain")),
        })
        .clone()
        .map_err(candle_core::Error::msg)?;
    Ok(on
        && x.device().is_cuda()
        && matches!(
            x.dtype(),
            candle_core::DType::F32 | candle_core::DType::BF16
        ))
}

/// True when q and k of a head-split projection `x` (`b, t, n, hd`) are prepared by the fused
/// CUDA kernel ([`cuda::qk_norm_rope`]: QK-LayerNorm, rotary and the head transpose in one
/// pass): the `cuda` feature is built in, `x` is on a CUDA device in f32 or bf16, `hd` is at
/// most 256, and `MMLAB_QK_PREP` is unset or `fused` (`plain` keeps candle's ops, to compare;
/// any other value is an error naming the variable).
pub fn cuda_qk_prep(x: &Tensor) -> Result<bool> {
    #[cfg(feature = "cuda")]
    {
        static SWITCH: Switch = Switch::new();
        Ok(cuda_fusion(x, &SWITCH, "MMLAB_QK_PREP")?
            && x.dims()
                .last()
                .is_some_and(|&hd| hd <= sources::QK_PREP_MAX_HD))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        Ok(false)
    }
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

// ---------------------------------------------------------------------------------------
// attention

/// Which keys every query row of one attention call sees, in O(`b x keys`) memory: the rule a
/// dense `(b, 1, tq, tk)` additive mask would spell out entry by entry, kept as per-key flags.
///
/// Key `ki` is visible to query `qi` of batch row `bi` when `key_valid[bi * tk + ki] != 0`
/// (padding) and, for a causal mask, `ki <= past + qi` (a KV cache of `past` positions before
/// the `tq` queries; `tk = past + tq`). A query row that would see no key at all (a padded row)
/// sees its own key `past + qi` instead, so softmax stays finite.
///
/// Cheap to clone (the flags are shared); [`AttnMask::dense`] materialises the additive tensor
/// for paths that need it (candle's plain ops, the CUDA kernels).
#[derive(Clone, Debug)]
pub struct AttnMask {
    b: usize,
    tq: usize,
    past: usize,
    causal: bool,
    /// `b x tk` flags, nonzero for real keys.
    key_valid: std::sync::Arc<Vec<u8>>,
    /// The first valid key of every batch row (`tk` when it has none): a query row sees
    /// nothing exactly when this is at or past its causal limit.
    first_valid: std::sync::Arc<Vec<usize>>,
}

impl AttnMask {
    /// The decoder's mask: causal with a KV-cache offset `past` (queries are keys
    /// `past..past + t`), padded keys hidden. `key_valid` holds `b * (past + t)` flags.
    pub fn causal(b: usize, t: usize, past: usize, key_valid: &[u8]) -> Result<Self> {
        Self::new(b, t, past, key_valid, true)
    }

    /// An encoder's mask: every query sees every valid key of its batch row (no causal
    /// limit); `key_valid` holds `b * (past + t)` flags.
    pub fn bidirectional(b: usize, t: usize, past: usize, key_valid: &[u8]) -> Result<Self> {
        Self::new(b, t, past, key_valid, false)
    }

    fn new(b: usize, tq: usize, past: usize, key_valid: &[u8], causal: bool) -> Result<Self> {
        let want = past.checked_add(tq).and_then(|tk| tk.checked_mul(b));
        if want != Some(key_valid.len()) {
            candle_core::bail!(
                "attention mask: {} key flags for {b} rows of {past} + {tq} keys",
                key_valid.len()
            );
        }
        let tk = past + tq;
        let first_valid = (0..b)
            .map(|bi| {
                key_valid[bi * tk..(bi + 1) * tk]
                    .iter()
                    .position(|&x| x != 0)
                    .unwrap_or(tk)
            })
            .collect();
        Ok(Self {
            b,
            tq,
            past,
            causal,
            key_valid: std::sync::Arc::new(key_valid.to_vec()),
            first_valid: std::sync::Arc::new(first_valid),
        })
    }

    /// Batch rows.
    pub fn b(&self) -> usize {
        self.b
    }

    /// Query rows per batch row.
    pub fn tq(&self) -> usize {
        self.tq
    }

    /// Keys per batch row: `past + tq`.
    pub fn tk(&self) -> usize {
        self.past + self.tq
    }

    /// Keys before the first query (the KV cache).
    pub fn past(&self) -> usize {
        self.past
    }

    /// Whether keys after a query's own position are hidden.
    pub fn is_causal(&self) -> bool {
        self.causal
    }

    /// One past the last key query `qi` may see: `past + qi + 1` when causal, else `tk`.
    pub fn key_limit(&self, qi: usize) -> usize {
        if self.causal {
            (self.past + qi + 1).min(self.tk())
        } else {
            self.tk()
        }
    }

    /// The `b x tk` key flags, nonzero for real keys.
    pub fn key_valid(&self) -> &[u8] {
        &self.key_valid
    }

    /// The first real key of every batch row (`tk` when it has none).
    pub fn first_valid(&self) -> &[usize] {
        &self.first_valid
    }

    /// The `tk` key flags of batch row `bi` (empty when out of range).
    pub fn key_valid_row(&self, bi: usize) -> &[u8] {
        let tk = self.tk();
        self.key_valid
            .get(bi * tk..(bi + 1) * tk)
            .unwrap_or_default()
    }

    /// True when query `qi` of batch row `bi` has no valid key within its limit, so that it
    /// sees only its own key `past + qi`.
    pub fn sees_nothing(&self, bi: usize, qi: usize) -> bool {
        self.first_valid
            .get(bi)
            .is_none_or(|&f| f >= self.key_limit(qi))
    }

    /// Whether key `ki` is visible to query `qi` of batch row `bi` (false out of range).
    pub fn visible(&self, bi: usize, qi: usize, ki: usize) -> bool {
        if bi >= self.b || qi >= self.tq || ki >= self.tk() {
            return false;
        }
        if self.sees_nothing(bi, qi) {
            return ki == self.past + qi;
        }
        ki < self.key_limit(qi) && self.key_valid_row(bi)[ki] != 0
    }

    /// Heap bytes the mask holds: `b * tk` flags plus one index per batch row.
    pub fn bytes(&self) -> usize {
        self.key_valid.len() + self.first_valid.len() * std::mem::size_of::<usize>()
    }

    /// The dense additive mask `(b, 1, tq, tk)`: 0 where [`AttnMask::visible`], `-inf`
    /// elsewhere, built in f32 and converted to `dtype` on `device`. O(`b x tq x tk`).
    pub fn dense(&self, device: &candle_core::Device, dtype: candle_core::DType) -> Result<Tensor> {
        let (b, tq, tk) = (self.b, self.tq, self.tk());
        let mut m = vec![f32::NEG_INFINITY; b * tq * tk];
        if tk > 0 {
            for (r, row) in m.chunks_exact_mut(tk).enumerate() {
                let (bi, qi) = (r / tq, r % tq);
                if self.sees_nothing(bi, qi) {
                    row[self.past + qi] = 0.0;
                    continue;
                }
                let n = self.key_limit(qi);
                for (slot, &ok) in row[..n].iter_mut().zip(self.key_valid_row(bi)) {
                    if ok != 0 {
                        *slot = 0.0;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, tq, tk), device)?.to_dtype(dtype)
    }
}

/// Query rows per tile of the fused attention.
const ATTN_BLOCK: usize = 64;

/// Fused multi-head attention, tiled: each block of [`ATTN_BLOCK`] query rows computes its
/// scores against the keys it may see with one matrix product, turns them into probabilities
/// in place and multiplies them into the values with another. Memory is O(block x keys) per
/// thread, never `queries x keys`; backward recomputes the probabilities block by block. The
/// mask is the compact [`AttnMask`] (O(`b x keys`)); keys past a block's causal limit are not
/// visited.
#[derive(Clone)]
struct AttentionOp {
    b: usize,
    h: usize,
    kvh: usize,
    tq: usize,
    tk: usize,
    hd: usize,
    scale: f32,
    /// Which keys each query row sees, shared by all heads.
    mask: AttnMask,
}

impl AttentionOp {
    /// Turns the raw scores `q_i . k_j` of query row `i` of batch `bi` (in `s`, one per key
    /// from 0) into softmax probabilities in place: masked keys and keys past the row's limit
    /// get 0.
    fn probs_row(&self, bi: usize, i: usize, s: &mut [f32]) {
        let n = self.mask.key_limit(i).min(s.len());
        s[n..].iter_mut().for_each(|x| *x = 0.0);
        let p = &mut s[..n];
        if self.mask.sees_nothing(bi, i) {
            // The dense mask's single finite entry: softmax gives it exactly 1.
            p.iter_mut().for_each(|x| *x = 0.0);
            if let Some(x) = p.get_mut(self.mask.past() + i) {
                *x = 1.0;
            }
            return;
        }
        let valid = self.mask.key_valid_row(bi);
        let mut m = f32::NEG_INFINITY;
        for (x, &ok) in p.iter_mut().zip(valid) {
            if ok == 0 {
                *x = f32::NEG_INFINITY;
            } else {
                *x *= self.scale;
                m = m.max(*x);
            }
        }
        if m == f32::NEG_INFINITY {
            p.iter_mut().for_each(|x| *x = 0.0);
            return;
        }
        let mut sum = 0f32;
        for x in p.iter_mut() {
            *x = if *x == f32::NEG_INFINITY {
                0.0
            } else {
                (*x - m).exp()
            };
            sum += *x;
        }
        let inv = 1.0 / sum;
        p.iter_mut().for_each(|x| *x *= inv);
    }

    /// Query blocks of one head: `(first row, rows, keys the block may see)`.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.tq).step_by(ATTN_BLOCK).map(|i0| {
            let rows = ATTN_BLOCK.min(self.tq - i0);
            (i0, rows, self.mask.key_limit(i0 + rows - 1).min(self.tk))
        })
    }

    /// Probabilities of query rows `i0..i0 + rows` (`q`: those rows, `hd` apart) against the
    /// first `n` keys, into `p` (`rows x n`).
    fn block_probs(
        &self,
        bi: usize,
        (i0, rows, n): (usize, usize, usize),
        q: &[f32],
        k: &[f32],
        p: &mut [f32],
    ) -> Result<()> {
        let hd = self.hd;
        // p = q k^T: k's rows are read as columns.
        linear::matmul((rows, n, hd), p, false, q, (hd, 1), k, (1, hd))?;
        for (r, row) in p.chunks_exact_mut(n).enumerate() {
            self.probs_row(bi, i0 + r, row);
        }
        Ok(())
    }

    /// Output rows (`tq x hd`) of batch `bi` for one query head.
    fn head_forward(
        &self,
        bi: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let hd = self.hd;
        let mut p = Vec::new();
        for blk @ (i0, rows, n) in self.blocks() {
            if n == 0 {
                out[i0 * hd..(i0 + rows) * hd].fill(0.0);
                continue;
            }
            p.resize(rows * n, 0.0);
            self.block_probs(bi, blk, &q[i0 * hd..(i0 + rows) * hd], k, &mut p)?;
            linear::matmul(
                (rows, hd, n),
                &mut out[i0 * hd..(i0 + rows) * hd],
                false,
                &p,
                (n, 1),
                v,
                (hd, 1),
            )?;
        }
        Ok(())
    }

    fn head_slices<'a>(
        &self,
        t: &'a [f32],
        bi: usize,
        head: usize,
        heads: usize,
        len: usize,
    ) -> &'a [f32] {
        let o = (bi * heads + head) * len * self.hd;
        &t[o..o + len * self.hd]
    }

    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let (tq, hd, h) = (self.tq, self.hd, self.h);
        let rep = h / self.kvh;
        // Computed in (b, h, tq, hd), then laid out as (b, tq, h * hd).
        let mut bh = vec![0f32; self.b * h * tq * hd];
        // Heads run in parallel; within one, the products stay on its thread.
        run_chunks(&mut bh, tq * hd, |idx, out| {
            let (bi, hi) = (idx / h, idx % h);
            let kv = hi / rep;
            serial(|| {
                self.head_forward(
                    bi,
                    self.head_slices(q, bi, hi, h, tq),
                    self.head_slices(k, bi, kv, self.kvh, self.tk),
                    self.head_slices(v, bi, kv, self.kvh, self.tk),
                    out,
                )
            })
        })
        .into_iter()
        .collect::<Result<()>>()?;
        let mut out = vec![0f32; bh.len()];
        for bi in 0..self.b {
            for hi in 0..h {
                for i in 0..tq {
                    let src = ((bi * h + hi) * tq + i) * hd;
                    let dst = ((bi * tq + i) * h + hi) * hd;
                    out[dst..dst + hd].copy_from_slice(&bh[src..src + hd]);
                }
            }
        }
        Ok(out)
    }

    /// Gradients of q, k, v for one (batch, KV head) group: `(dq of its rep query heads, dk, dv)`.
    ///
    /// Per query block: `dv += p^T do`, `dp = do v^T`, `ds = p (dp - rowsum(p dp)) scale`,
    /// `dq = ds k`, `dk += ds^T q`, five products on the block's `rows x n` tile.
    fn group_backward(
        &self,
        bi: usize,
        kv: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (tq, tk, hd, h) = (self.tq, self.tk, self.hd, self.h);
        let rep = h / self.kvh;
        let ks = self.head_slices(k, bi, kv, self.kvh, tk);
        let vs = self.head_slices(v, bi, kv, self.kvh, tk);
        let mut dq = vec![0f32; rep * tq * hd];
        let mut dk = vec![0f32; tk * hd];
        let mut dv = vec![0f32; tk * hd];
        let (mut p, mut dp) = (Vec::new(), Vec::new());
        // Rows of the output gradient of one head are `h * hd` apart in (b, tq, h * hd).
        let g_rs = h * hd;
        for r in 0..rep {
            let hi = kv * rep + r;
            let qs = self.head_slices(q, bi, hi, h, tq);
            for blk @ (i0, rows, n) in self.blocks() {
                if n == 0 {
                    continue;
                }
                let qb = &qs[i0 * hd..(i0 + rows) * hd];
                let go = (bi * tq + i0) * g_rs + hi * hd;
                let gb = &g[go..];
                p.resize(rows * n, 0.0);
                dp.resize(rows * n, 0.0);
                self.block_probs(bi, blk, qb, ks, &mut p)?;
                // dv[..n] += p^T do
                linear::matmul(
                    (n, hd, rows),
                    &mut dv[..n * hd],
                    true,
                    &p,
                    (1, n),
                    gb,
                    (g_rs, 1),
                )?;
                // dp = do v^T
                linear::matmul((rows, n, hd), &mut dp, false, gb, (g_rs, 1), vs, (1, hd))?;
                // ds = p (dp - sum_j p_j dp_j) scale, in place of dp.
                for (pr, dr) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
                    let d = dot_lanes(pr, dr);
                    for (x, &pj) in dr.iter_mut().zip(pr) {
                        *x = pj * (*x - d) * self.scale;
                    }
                }
                // dq = ds k
                linear::matmul(
                    (rows, hd, n),
                    &mut dq[(r * tq + i0) * hd..(r * tq + i0 + rows) * hd],
                    false,
                    &dp,
                    (n, 1),
                    ks,
                    (hd, 1),
                )?;
                // dk[..n] += ds^T q
                linear::matmul(
                    (n, hd, rows),
                    &mut dk[..n * hd],
                    true,
                    &dp,
                    (1, n),
                    qb,
                    (hd, 1),
                )?;
            }
        }
        Ok((dq, dk, dv))
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "mmlab-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = f32_slice(s1, l1, "attention")?;
        let k = f32_slice(s2, l2, "attention")?;
        let v = f32_slice(s3, l3, "attention")?;
        Ok((
            CpuStorage::F32(self.forward(q, k, v)?),
            Shape::from((self.b, self.tq, self.h * self.hd)),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (qv, kv_, vv, g) = (
            contiguous_vec(q)?,
            contiguous_vec(k)?,
            contiguous_vec(v)?,
            contiguous_vec(grad)?,
        );
        let groups = self.b * self.kvh;
        // Groups run in parallel; within one, the products stay on its thread.
        let work = |idx: usize| {
            serial(|| self.group_backward(idx / self.kvh, idx % self.kvh, &qv, &kv_, &vv, &g))
        };
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = if num_threads() > 1 && groups > 1 {
            (0..groups)
                .into_par_iter()
                .map(work)
                .collect::<Result<_>>()?
        } else {
            (0..groups).map(work).collect::<Result<_>>()?
        };
        // Each group's dq covers `rep` consecutive query heads of one batch row, so in the
        // (b, h, tq, hd) layout the groups are consecutive: concatenation is the layout.
        let mut dq = Vec::with_capacity(qv.len());
        let mut dk = Vec::with_capacity(kv_.len());
        let mut dv = Vec::with_capacity(vv.len());
        for (a, b, c) in parts {
            dq.extend(a);
            dk.extend(b);
            dv.extend(c);
        }
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), q.device())?),
            Some(Tensor::from_vec(dk, k.shape(), k.device())?),
            Some(Tensor::from_vec(dv, v.shape(), v.device())?),
        ))
    }
}

/// Scaled dot-product attention of `q` (`b, h, tq, hd`) over `k`, `v` (`b, kv_heads, tk, hd`)
/// with the compact `mask` (see [`AttnMask`]); query head `j` reads KV head
/// `j / (h / kv_heads)`. Returns `(b, tq, h * hd)`: the heads already concatenated.
///
/// CUDA tensors go to the FlashAttention kernels (`cuda` feature) when [`cuda_attention`] says
/// so, with the mask in its compact form ([`cuda::CudaMask`], built here; a model that calls the
/// kernels from every layer builds it once per forward and calls [`cuda::attention`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, tq, hd) = q.dims4()?;
    let (bk, kvh, tk, hdk) = k.dims4()?;
    if (mask.b(), mask.tq(), mask.tk()) != (b, tq, tk) {
        candle_core::bail!(
            "attention: mask for {} x {} queries and {} keys, q {:?} and {tk} keys",
            mask.b(),
            mask.tq(),
            mask.tk(),
            q.dims()
        );
    }
    #[cfg(feature = "cuda")]
    if cuda_attention(q) {
        let keys = cuda::CudaMask::from_attn(mask, q.device())?;
        return cuda::attention(q, k, v, keys.as_ref(), scale, mask.is_causal());
    }
    if bk != b || hdk != hd || v.dims() != k.dims() || kvh == 0 || h % kvh != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let op = AttentionOp {
        b,
        h,
        kvh,
        tq,
        tk,
        hd,
        scale: scale as f32,
        mask: mask.clone(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}
