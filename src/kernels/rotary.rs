//! Rotary positions (GPT-NeoX rotate-half) as one op; backward is the inverse rotation. And
//! [`qk_prep`], the one entry point that readies q or k for attention: QK-LayerNorm, rotary and
//! the head transpose in one CUDA kernel (`super::cuda::qk_norm_rope`) where it applies, the
//! caller's CPU path otherwise.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

#[cfg(feature = "cuda")]
use super::cuda;
#[cfg(feature = "cuda")]
use super::sources;
use super::{f32_slice, run_chunks, with_f32};

/// GPT-NeoX rotary on the first `dim` channels of every head row; `cos` / `sin` are
/// `b x t x dim/2`, shared by the heads.
struct RotaryOp {
    h: usize,
    t: usize,
    hd: usize,
    dim: usize,
    cos: std::sync::Arc<Vec<f32>>,
    sin: std::sync::Arc<Vec<f32>>,
}

impl RotaryOp {
    /// Rotates every row of `x` by `+angle` (forward) or `-angle` (backward, `sign = -1`).
    fn rotate(&self, x: &[f32], sign: f32) -> Vec<f32> {
        let (hd, half, t) = (self.hd, self.dim / 2, self.t);
        let mut out = x.to_vec();
        let rows_per_head = t;
        run_chunks(&mut out, rows_per_head * hd, |idx, chunk| {
            let bi = idx / self.h;
            for (ti, row) in chunk.chunks_exact_mut(hd).enumerate() {
                let o = (bi * t + ti) * half;
                let (c, s) = (&self.cos[o..o + half], &self.sin[o..o + half]);
                for i in 0..half {
                    let (x1, x2) = (row[i], row[half + i]);
                    let si = sign * s[i];
                    row[i] = x1 * c[i] - x2 * si;
                    row[half + i] = x2 * c[i] + x1 * si;
                }
            }
        });
        out
    }
}

impl CustomOp1 for RotaryOp {
    fn name(&self) -> &'static str {
        "mmlab-rotary"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "rotary")?;
        Ok((CpuStorage::F32(self.rotate(x, 1.0)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32([grad], "rotary", |[g]| self.rotate(g, -1.0))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Rotary positions (GPT-NeoX rotate-half) on the first `dim` channels of `x`
/// (`b, h, t, hd`), with `cos` / `sin` of shape `(b, 1, t, dim/2)`.
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor, dim: usize) -> Result<Tensor> {
    let (b, h, t, hd) = x.dims4()?;
    let half = dim / 2;
    if !dim.is_multiple_of(2)
        || dim > hd
        || cos.dims() != [b, 1, t, half]
        || sin.dims() != cos.dims()
    {
        candle_core::bail!(
            "rotary: x {:?}, cos {:?}, sin {:?} for {dim} rotated channels",
            x.dims(),
            cos.dims(),
            sin.dims()
        );
    }
    let op = RotaryOp {
        h,
        t,
        hd,
        dim,
        cos: std::sync::Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
        sin: std::sync::Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
    };
    x.contiguous()?.apply_op1(op)
}

/// True when q and k of a head-split projection `x` (`b, t, n, hd`) are prepared by the fused
/// CUDA kernel ([`cuda::qk_norm_rope`]: QK-LayerNorm, rotary and the head transpose in one
/// pass): the `cuda` feature is built in, `x` is on a CUDA device in f32 or bf16, `hd` is at
/// most 256, and `MMLAB_QK_PREP` is unset or `fused` (`plain` keeps candle's ops, to compare;
/// any other value is an error naming the variable).
pub fn cuda_qk_prep(x: &Tensor) -> Result<bool> {
    #[cfg(feature = "cuda")]
    {
        use cuda::{cuda_fusion, Switch};
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

/// q or k for attention from a head-split projection `x` (`b, t, n, hd`), in the attention
/// layout `(b, n, t, hd)`: QK-LayerNorm when `norm` is `Some((weight, bias, eps))`, then rotary on
/// the first `rot` channels with the tables `cos`, `sin` (`(b, 1, t, rot/2)`). One CUDA kernel
/// ([`cuda::qk_norm_rope`]) when [`cuda_qk_prep`] holds; otherwise `cpu` on `x.transpose(1, 2)`:
/// the caller's norm and rotary (the fused CPU ops or candle's).
pub fn qk_prep(
    x: &Tensor,
    norm: Option<(&Tensor, &Tensor, f64)>,
    cos: &Tensor,
    sin: &Tensor,
    rot: usize,
    cpu: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cuda_qk_prep(x)? {
        return cuda::qk_norm_rope(x, norm, cos, sin, rot);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (norm, cos, sin, rot);
    cpu(x.transpose(1, 2)?)
}
