//! LayerNorm and RMSNorm over the last dimension with their affine parameters, as one op:
//! forward normalises each row in one pass, backward recomputes the row's statistics and
//! writes `dx` while summing `dw` / `db` per block of rows.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{dot_lanes, f32_slice, piece, run_chunks, sum_lanes, with_f32, ROWS_PER_TASK};

struct LayerNormOp {
    eps: f32,
    rms: bool,
}

impl LayerNormOp {
    /// Writes the normalised row `(x - mean) * rstd` into `xhat` and returns `rstd`.
    #[inline(always)]
    fn normalise(&self, row: &[f32], xhat: &mut [f32]) -> f32 {
        let d = row.len() as f32;
        let mean = if self.rms { 0.0 } else { sum_lanes(row) / d };
        for (h, &v) in xhat.iter_mut().zip(row) {
            *h = v - mean;
        }
        let rstd = 1.0 / (dot_lanes(xhat, xhat) / d + self.eps).sqrt();
        for h in xhat.iter_mut() {
            *h *= rstd;
        }
        rstd
    }

    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        let chunk = d * ROWS_PER_TASK;
        run_chunks(&mut out, chunk, |ci, oc| {
            let xc = piece(x, ci, chunk);
            for (o, row) in oc.chunks_exact_mut(d).zip(xc.chunks_exact(d)) {
                self.normalise(row, o);
                match b {
                    Some(b) => {
                        for ((o, &w), &b) in o.iter_mut().zip(w).zip(b) {
                            *o = *o * w + b;
                        }
                    }
                    None => {
                        for (o, &w) in o.iter_mut().zip(w) {
                            *o *= w;
                        }
                    }
                }
            }
        });
        out
    }

    /// Gradients of x, w and b.
    fn backward(&self, x: &[f32], w: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = w.len();
        let df = d as f32;
        let chunk = d * ROWS_PER_TASK;
        let mut dx = vec![0f32; x.len()];
        let partial: Vec<(Vec<f32>, Vec<f32>)> = run_chunks(&mut dx, chunk, |ci, dxc| {
            let (xc, gc) = (piece(x, ci, chunk), piece(g, ci, chunk));
            let mut dw = vec![0f32; d];
            let mut db = vec![0f32; d];
            let mut xhat = vec![0f32; d];
            let mut gw = vec![0f32; d];
            for ((dxr, xr), gr) in dxc
                .chunks_exact_mut(d)
                .zip(xc.chunks_exact(d))
                .zip(gc.chunks_exact(d))
            {
                let rstd = self.normalise(xr, &mut xhat);
                for i in 0..d {
                    gw[i] = gr[i] * w[i];
                    dw[i] += gr[i] * xhat[i];
                    db[i] += gr[i];
                }
                let m_gwx = dot_lanes(&gw, &xhat) / df;
                let m_gw = if self.rms { 0.0 } else { sum_lanes(&gw) / df };
                for i in 0..d {
                    dxr[i] = rstd * (gw[i] - m_gw - xhat[i] * m_gwx);
                }
            }
            (dw, db)
        });
        let mut dw = vec![0f32; d];
        let mut db = vec![0f32; d];
        for (pw, pb) in partial {
            for i in 0..d {
                dw[i] += pw[i];
                db[i] += pb[i];
            }
        }
        (dx, dw, db)
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "mmlab-layer-norm"
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
        let x = f32_slice(s1, l1, "layer_norm")?;
        let w = f32_slice(s2, l2, "layer_norm")?;
        let b = f32_slice(s3, l3, "layer_norm")?;
        Ok((
            CpuStorage::F32(self.forward(x, w, Some(b))),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = with_f32([x, w, grad], "layer_norm", |[x, w, g]| {
            self.backward(x, w, g)
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

impl CustomOp2 for LayerNormOp {
    fn name(&self) -> &'static str {
        "mmlab-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "rms_norm")?;
        let w = f32_slice(s2, l2, "rms_norm")?;
        Ok((
            CpuStorage::F32(self.forward(x, w, None)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = with_f32([x, w, grad], "rms_norm", |[x, w, g]| self.backward(x, w, g))?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

fn check_norm_args(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<()> {
    let d = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [d] || b.is_some_and(|b| b.dims() != [d]) {
        candle_core::bail!(
            "norm: weight {:?} / bias {:?} for rows of {d}",
            w.dims(),
            b.map(|b| b.dims().to_vec())
        );
    }
    Ok(())
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    check_norm_args(x, w, Some(b))?;
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp {
            eps: eps as f32,
            rms: false,
        },
    )
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    check_norm_args(x, w, None)?;
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        LayerNormOp {
            eps: eps as f32,
            rms: true,
        },
    )
}
