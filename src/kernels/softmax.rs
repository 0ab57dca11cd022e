//! Softmax over the last dimension with its backward `dx = y (g - sum(g y))`, rows split
//! across threads in blocks of [`ROWS_PER_TASK`].

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{f32_slice, piece, run_chunks, with_f32, ROWS_PER_TASK};

struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "mmlab-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax_last")?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = x.to_vec();
        run_chunks(&mut out, d * ROWS_PER_TASK, |_, chunk| {
            for row in chunk.chunks_exact_mut(d) {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0f32;
                for v in row.iter_mut() {
                    // Masked scores (-inf) are exactly 0 without calling exp.
                    *v = if *v == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (*v - m).exp()
                    };
                    s += *v;
                }
                let inv = 1.0 / s;
                for v in row.iter_mut() {
                    *v *= inv;
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = res.dim(candle_core::D::Minus1)?.max(1);
        let dx = with_f32([res, grad], "softmax_last", |[y, g]| {
            softmax_backward(y, g, d)
        })?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

/// `dx = y (g - sum(g y))` per row of `d`.
fn softmax_backward(y: &[f32], g: &[f32], d: usize) -> Vec<f32> {
    let mut dx = vec![0f32; y.len()];
    let chunk = d * ROWS_PER_TASK;
    run_chunks(&mut dx, chunk, |ci, dc| {
        let (yc, gc) = (piece(y, ci, chunk), piece(g, ci, chunk));
        for ((dr, yr), gr) in dc
            .chunks_exact_mut(d)
            .zip(yc.chunks_exact(d))
            .zip(gc.chunks_exact(d))
        {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for i in 0..d {
                dr[i] = yr[i] * (gr[i] - dot);
            }
        }
    });
    dx
}

/// Softmax over the last dimension (rows of `-inf` only are not allowed).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxLast)
}
