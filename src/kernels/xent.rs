//! Cross-entropy over the vocabulary as one op: the forward pass keeps only each row's
//! log-sum-exp (`n` floats), and the backward pass forms `softmax - onehot` once, straight
//! into the gradient. The plain path (`log_softmax` + `gather` + mean) materialises the
//! `n x vocab` log-probabilities in forward and again for their gradient.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{f32_slice, piece, run_chunks, with_f32, ROWS_PER_TASK};

struct CrossEntropy {
    targets: Arc<Vec<u32>>,
    vocab: usize,
    /// Log-sum-exp of every row, written by the forward pass for the backward pass.
    lse: Mutex<Vec<f32>>,
}

impl CrossEntropy {
    /// Log-sum-exp of every row of `x` (`n x vocab`) into `lse`; returns the summed loss.
    fn forward_rows(&self, x: &[f32], lse: &mut [f32]) -> f64 {
        let v = self.vocab;
        let parts = run_chunks(lse, ROWS_PER_TASK, |ci, lc| {
            let xc = piece(x, ci, ROWS_PER_TASK * v);
            let mut loss = 0f64;
            for (k, (l, row)) in lc.iter_mut().zip(xc.chunks_exact(v)).enumerate() {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = row.iter().map(|&a| (a - m).exp()).sum();
                *l = m + s.ln();
                let t = self.targets[ci * ROWS_PER_TASK + k] as usize;
                loss += (*l - row[t]) as f64;
            }
            loss
        });
        parts.iter().sum()
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "mmlab-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "cross_entropy")?;
        let n = self.targets.len();
        let mut lse = vec![0f32; n];
        let total = self.forward_rows(x, &mut lse);
        if let Ok(mut slot) = self.lse.lock() {
            *slot = lse;
        }
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let n = self.targets.len();
        let v = self.vocab;
        let scale = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / n as f32;
        let mut lse = match self.lse.lock() {
            Ok(slot) => slot.clone(),
            Err(_) => Vec::new(),
        };
        let dx = with_f32([x], "cross_entropy", |[xv]| {
            if lse.len() != n {
                // The forward pass's row statistics are gone (not expected): recompute them.
                lse = vec![0f32; n];
                self.forward_rows(xv, &mut lse);
            }
            let mut dx = vec![0f32; xv.len()];
            let chunk = ROWS_PER_TASK * v;
            run_chunks(&mut dx, chunk, |ci, dc| {
                let xc = piece(xv, ci, chunk);
                for (k, (dr, row)) in dc.chunks_exact_mut(v).zip(xc.chunks_exact(v)).enumerate() {
                    let r = ci * ROWS_PER_TASK + k;
                    let l = lse[r];
                    for (d, &a) in dr.iter_mut().zip(row) {
                        *d = scale * (a - l).exp();
                    }
                    dr[self.targets[r] as usize] -= scale;
                }
            });
            dx
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Mean cross-entropy of `logits` (`n x vocab`) against `targets` (`n` class ids), as a scalar
/// with its gradient: `-mean(log_softmax(logits)[i, targets[i]])`. f32 on the CPU takes the
/// fused op, anything else (or `MMLAB_PLAIN_OPS`) [`cross_entropy_plain`].
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    if n == 0 || n != targets.len() {
        candle_core::bail!(
            "cross_entropy: {} targets for {n} rows of logits",
            targets.len()
        );
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross_entropy: target {t} outside a vocabulary of {vocab}");
    }
    if !super::enabled_on(logits.device()) || logits.dtype() != candle_core::DType::F32 {
        return cross_entropy_plain(logits, targets);
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        targets: Arc::new(targets.to_vec()),
        vocab,
        lse: Mutex::new(Vec::new()),
    })
}

/// The same loss from candle's ops (the reference for the fused op, and the path for other
/// devices and dtypes).
pub fn cross_entropy_plain(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let n = targets.len();
    if n == 0 {
        candle_core::bail!("cross_entropy: no targets");
    }
    let t = Tensor::from_slice(targets, n, logits.device())?;
    let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    logp.gather(&t.unsqueeze(1)?, 1)?.sum_all()?.neg()? / n as f64
}
