//! The AdamW update as one in-place pass over each parameter: it reads the gradient where it
//! lies, updates the moments and writes the parameter's own storage. The plain path copies the
//! gradient and the parameter out to vectors and the result back into a new tensor.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

use super::{f32_slice, with_f32};

/// The per-step constants of PyTorch's AdamW rule
/// `p = p * decay - step_size * m / (sqrt(v) / bc2_sqrt + eps)` after the moment updates.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// `beta1`.
    pub b1: f32,
    /// `beta2`.
    pub b2: f32,
    /// `eps`.
    pub eps: f32,
    /// Factor applied to the gradient first (clipping).
    pub grad_scale: f32,
    /// `1 - lr * weight_decay` (1 for parameters without decay).
    pub decay: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bc2_sqrt: f32,
}

impl AdamWStep {
    /// One element: updates `m`, `v` and returns the new parameter value.
    #[inline(always)]
    pub fn apply(&self, p: f32, g: f32, m: &mut f32, v: &mut f32) -> f32 {
        let gi = g * self.grad_scale;
        *m = self.b1 * *m + (1.0 - self.b1) * gi;
        *v = self.b2 * *v + (1.0 - self.b2) * gi * gi;
        p * self.decay - self.step_size * *m / (v.sqrt() / self.bc2_sqrt + self.eps)
    }
}

struct Update<'a> {
    step: AdamWStep,
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "mmlab-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let g = f32_slice(s2, l2, "adamw")?;
        let CpuStorage::F32(p) = s1 else {
            candle_core::bail!("adamw: only f32 parameters are supported");
        };
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("adamw: the parameter must be contiguous");
        };
        let p = &mut p[a..b];
        let (mut m, mut v) = (self.m.borrow_mut(), self.v.borrow_mut());
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "adamw: {} parameters, {} gradients, {} / {} moments",
                p.len(),
                g.len(),
                m.len(),
                v.len()
            );
        }
        for (((pi, &gi), mi), vi) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *pi = self.step.apply(*pi, gi, mi, vi);
        }
        Ok(())
    }
}

/// Applies one AdamW step to the parameter `p` in place (CPU, f32, contiguous), with its
/// gradient `g` and moments `m`, `v`.
pub fn adamw_update(
    p: &Tensor,
    g: &Tensor,
    m: &mut [f32],
    v: &mut [f32],
    step: AdamWStep,
) -> Result<()> {
    if p.shape() != g.shape() {
        candle_core::bail!(
            "adamw: gradient {:?} for parameter {:?}",
            g.dims(),
            p.dims()
        );
    }
    let op = Update {
        step,
        m: RefCell::new(m),
        v: RefCell::new(v),
    };
    p.inplace_op2(&g.contiguous()?, &op)
}

/// Sum of squares of a CPU f32 tensor's elements, in f64 (for the global gradient norm).
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    with_f32([t], "sum_squares", |[x]| {
        x.chunks(4096)
            .map(|c| c.iter().map(|&a| (a * a) as f64).sum::<f64>())
            .sum()
    })
}
