//! The tiled CPU attention: blocks of query rows, each with its scores, probabilities and
//! gradients computed by block matrix products, never a `queries x keys` matrix.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::super::{contiguous_vec, dot_lanes, f32_slice, linear, num_threads, run_chunks, serial};
use super::AttnMask;

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

/// The tiled op of `q` (`b, h, tq, hd`) over `k`, `v` (`b, kv_heads, tk, hd`) on the CPU, with
/// `mask` already checked against their sizes; see [`super::attention`].
pub(super) fn tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, tq, hd) = q.dims4()?;
    let (bk, kvh, tk, hdk) = k.dims4()?;
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
