//! AdamW (PyTorch's formulation) with state we can save, the LR schedule, and gradient clipping.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

use crate::kernels::AdamWStep;

/// AdamW hyper-parameters.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay, applied to rank-2 weights except the token embedding.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One parameter with its moments.
pub struct Slot {
    /// Name in the checkpoint.
    pub name: String,
    /// The parameter.
    pub var: Var,
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
    /// Whether weight decay applies (rank-2 weights).
    pub decay: bool,
}

/// AdamW over named parameters, with PyTorch's update rule:
/// `p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
///  p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`.
pub struct AdamW {
    /// Hyper-parameters (the LR is changed by the schedule).
    pub cfg: AdamWConfig,
    /// Current learning rate.
    pub lr: f64,
    /// Steps taken.
    pub t: u64,
    /// Parameters in name order.
    pub slots: Vec<Slot>,
}

impl AdamW {
    /// Creates the optimiser over `vars` (name, var), sorted by name.
    pub fn new(mut vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                let decay = var.rank() == 2 && !name.contains("embed_tokens");
                Slot {
                    name,
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    decay,
                }
            })
            .collect();
        Self {
            lr: cfg.lr,
            cfg,
            t: 0,
            slots,
        }
    }

    /// The parameters it updates, in name order.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                if fused(g) {
                    total += crate::kernels::sum_squares(g)?;
                    continue;
                }
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update; gradients are multiplied by `grad_scale` first (for clipping).
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let c = &self.cfg;
        let (b1, b2) = (c.beta1, c.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        let step_size = (self.lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1f, b2f, eps, gs) = (b1 as f32, b2 as f32, c.eps as f32, grad_scale as f32);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let decay = if s.decay {
                (1.0 - self.lr * c.weight_decay) as f32
            } else {
                1.0
            };
            let rule = AdamWStep {
                b1: b1f,
                b2: b2f,
                eps,
                grad_scale: gs,
                decay,
                step_size,
                bc2_sqrt,
            };
            if fused(s.var.as_tensor()) && fused(g) {
                // In place on the parameter's storage (`kernels::adamw_update`).
                crate::kernels::adamw_update(s.var.as_tensor(), g, &mut s.m, &mut s.v, rule)?;
                continue;
            }
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let mut p = s.var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            for i in 0..p.len() {
                p[i] = rule.apply(p[i], g[i], &mut s.m[i], &mut s.v[i]);
            }
            let shape = s.var.shape().clone();
            s.var.set(&Tensor::from_vec(p, shape, s.var.device())?)?;
        }
        Ok(())
    }
}

/// Whether the fused CPU update applies to `t` (f32 on the CPU, fused ops not switched off).
fn fused(t: &Tensor) -> bool {
    crate::kernels::enabled_on(t.device()) && t.dtype() == candle_core::DType::F32
}

/// Linear warm-up to the peak LR, then cosine decay to `min_ratio * peak` at `total` steps.
pub fn lr_at(step: u64, total: u64, warmup: u64, peak: f64, min_ratio: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cos)
}
