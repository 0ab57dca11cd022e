//! QK-LayerNorm, rotary and the head transpose of q or k in one kernel (`kernels/qk_prep.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use half::bf16;

use super::super::sources;
use super::{config, cuda_err, cuda_of, int, kernel, tensor_from, view, Elt, Source};

const QK_PREP: Source = Source {
    file: "qk_prep.cu",
    module: "mmlab_qk_prep",
    src: sources::QK_PREP_SRC,
};

/// QK-LayerNorm, rotary and the head transpose of q or k in one kernel (`kernels/qk_prep.cu`):
/// the forward reads each row once and writes it once, the backward likewise.
#[derive(Clone)]
struct QkPrep {
    b: usize,
    t: usize,
    n: usize,
    hd: usize,
    rot: usize,
    eps: f32,
    /// Rotary tables `(b, t, rot / 2)`, contiguous, in x's dtype (a 1-element dummy when
    /// `rot == 0`).
    cos: Tensor,
    sin: Tensor,
}

impl QkPrep {
    fn dims(&self) -> Result<[i32; 5]> {
        Ok([
            int(self.b, "batch")?,
            int(self.t, "positions")?,
            int(self.n, "heads")?,
            int(self.hd, "head dim")?,
            int(self.rot, "rotary dim")?,
        ])
    }

    /// `y` `(b, n, t, hd)` from `x` `(b, t, n, hd)` and, with a norm, its weight and bias.
    fn fwd_typed<T: Elt>(
        &self,
        x: (&CudaStorage, &Layout),
        norm: Option<[(&CudaStorage, &Layout); 2]>,
    ) -> Result<CudaStorage> {
        let dev = x.0.device().clone();
        let xv = view::<T>(x.0, x.1, "qk_prep: x")?;
        let (cs, cl) = self.cos.storage_and_layout();
        let cv = view::<T>(cuda_of(&cs, "qk_prep: cos")?, cl, "qk_prep: cos")?;
        let (ss, sl) = self.sin.storage_and_layout();
        let sv = view::<T>(cuda_of(&ss, "qk_prep: sin")?, sl, "qk_prep: sin")?;
        let rows = self.b * self.n * self.t;
        let mut y = dev.alloc_zeros::<T>(rows * self.hd)?;
        let plan = sources::qk_prep_launch(T::ELEM, true, rows, self.hd).map_err(cuda_err)?;
        let func = kernel(&dev, &QK_PREP, &plan.kernel)?;
        let null = 0u64;
        let dims = self.dims()?;
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&func);
        bld.arg(&xv);
        let wb = match norm {
            Some([(ws, wl), (bs, bl)]) => Some((
                view::<T>(ws, wl, "qk_prep: norm weight")?,
                view::<T>(bs, bl, "qk_prep: norm bias")?,
            )),
            None => None,
        };
        match &wb {
            Some((w, b)) => bld.arg(w).arg(b),
            None => bld.arg(&null).arg(&null),
        };
        bld.arg(&cv).arg(&sv).arg(&mut y);
        for d in &dims {
            bld.arg(d);
        }
        bld.arg(&self.eps);
        // SAFETY: the arguments match qp_fwd's signature in qk_prep.cu; x holds b*t*n*hd
        // elements, the tables b*t*rot/2, weight and bias hd (checked in `qk_norm_rope`).
        unsafe { bld.launch(config(&plan)) }.map_err(cuda_err)?;
        drop(bld);
        Ok(CudaStorage::wrap_cuda_slice(y, dev))
    }

    /// dx `(b, t, n, hd)` and, with a norm, (dweight, dbias) from the output gradient.
    fn bwd_typed<T: Elt>(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let dev = x.device().as_cuda_device()?.clone();
        let grad = grad.contiguous()?;
        let rows = self.b * self.n * self.t;
        let plan = sources::qk_prep_launch(T::ELEM, false, rows, self.hd).map_err(cuda_err)?;
        let func = kernel(&dev, &QK_PREP, &plan.kernel)?;
        let (xs, xl) = x.storage_and_layout();
        let xv = view::<T>(cuda_of(&xs, "qk_prep: x")?, xl, "qk_prep: x")?;
        let (gs, gl) = grad.storage_and_layout();
        let gv = view::<T>(cuda_of(&gs, "qk_prep: gradient")?, gl, "qk_prep: gradient")?;
        let (cs, cl) = self.cos.storage_and_layout();
        let cv = view::<T>(cuda_of(&cs, "qk_prep: cos")?, cl, "qk_prep: cos")?;
        let (ss, sl) = self.sin.storage_and_layout();
        let sv = view::<T>(cuda_of(&ss, "qk_prep: sin")?, sl, "qk_prep: sin")?;
        let w_guard = w.map(|w| w.storage_and_layout());
        let wv = match &w_guard {
            Some((ws, wl)) => Some(view::<T>(
                cuda_of(ws, "qk_prep: norm weight")?,
                wl,
                "qk_prep: norm weight",
            )?),
            None => None,
        };
        let mut dx = dev.alloc_zeros::<T>(rows * self.hd)?;
        let blocks = plan.grid[0] as usize;
        let mut parts =
            dev.alloc_zeros::<f32>(if w.is_some() { blocks * 2 * self.hd } else { 1 })?;
        let null = 0u64;
        let dims = self.dims()?;
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&func);
        bld.arg(&xv);
        match &wv {
            Some(w) => bld.arg(w),
            None => bld.arg(&null),
        };
        bld.arg(&cv).arg(&sv).arg(&gv).arg(&mut dx);
        if w.is_some() {
            bld.arg(&mut parts);
        } else {
            bld.arg(&null);
        }
        for d in &dims {
            bld.arg(d);
        }
        bld.arg(&self.eps);
        // SAFETY: the arguments match qp_bwd's signature; the gradient holds b*n*t*hd elements
        // (checked in `bwd`), `parts` blocks x 2 x hd f32 as the plan's grid.
        unsafe { bld.launch(config(&plan)) }.map_err(cuda_err)?;
        drop(bld);
        let dx = tensor_from(dx, &dev, Shape::from((self.b, self.t, self.n, self.hd)));
        let dwb = match w {
            Some(_) => {
                let sums = tensor_from(parts, &dev, Shape::from((blocks, 2, self.hd))).sum(0)?;
                let dt = x.dtype();
                Some((sums.get(0)?.to_dtype(dt)?, sums.get(1)?.to_dtype(dt)?))
            }
            None => None,
        };
        Ok((dx, dwb))
    }

    fn check_grad(&self, grad: &Tensor) -> Result<()> {
        if grad.dims() != [self.b, self.n, self.t, self.hd] {
            candle_core::bail!(
                "qk_prep backward: gradient {:?} for output {:?}",
                grad.dims(),
                [self.b, self.n, self.t, self.hd]
            );
        }
        Ok(())
    }

    fn bwd_any(
        &self,
        x: &Tensor,
        w: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        self.check_grad(grad)?;
        match x.dtype() {
            DType::F32 => self.bwd_typed::<f32>(x, w, grad),
            DType::BF16 => self.bwd_typed::<bf16>(x, w, grad),
            dt => candle_core::bail!("qk_prep: f32 or bf16 only, got {dt:?}"),
        }
    }

    fn out_shape(&self) -> Shape {
        Shape::from((self.b, self.n, self.t, self.hd))
    }
}

const QK_PREP_ON_CPU: &str = "qk_prep (CUDA) called on CPU tensors: use the plain path";

/// Without a norm: x only.
impl candle_core::CustomOp1 for QkPrep {
    fn name(&self) -> &'static str {
        "mmlab-qk-rotary"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{QK_PREP_ON_CPU}")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let out = match s.dtype() {
            DType::F32 => self.fwd_typed::<f32>((s, l), None)?,
            DType::BF16 => self.fwd_typed::<bf16>((s, l), None)?,
            dt => candle_core::bail!("qk_prep: f32 or bf16 only, got {dt:?}"),
        };
        Ok((out, self.out_shape()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.bwd_any(x, None, grad)?.0))
    }
}

/// With a LayerNorm: x, weight, bias.
impl CustomOp3 for QkPrep {
    fn name(&self) -> &'static str {
        "mmlab-qk-layernorm-rotary"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{QK_PREP_ON_CPU}")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let norm = Some([(s2, l2), (s3, l3)]);
        let out = match s1.dtype() {
            DType::F32 => self.fwd_typed::<f32>((s1, l1), norm)?,
            DType::BF16 => self.fwd_typed::<bf16>((s1, l1), norm)?,
            dt => candle_core::bail!("qk_prep: f32 or bf16 only, got {dt:?}"),
        };
        Ok((out, self.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dwb) = self.bwd_any(x, Some(w), grad)?;
        let (dw, db) = dwb.ok_or_else(|| cuda_err("qk_prep: no norm gradients"))?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// q or k for attention from the projection's output `x` (`b, t, n, hd`), in one CUDA kernel:
/// LayerNorm over the head dim when `norm` is `Some((weight, bias, eps))`, then rotary on the
/// first `rot` channels (GPT-NeoX halves; tables `cos`, `sin` of `b x t x rot/2` elements, e.g.
/// `(b, 1, t, rot/2)` from `Rotary::tables`), returned as `(b, n, t, hd)`, contiguous.
/// The same values as `Norm::forward_plain` and `Rotary::apply_plain` on `x.transpose(1, 2)`;
/// gradients flow to `x`, `weight` and `bias` (f32 or bf16, head dim up to 256).
pub fn qk_norm_rope(
    x: &Tensor,
    norm: Option<(&Tensor, &Tensor, f64)>,
    cos: &Tensor,
    sin: &Tensor,
    rot: usize,
) -> Result<Tensor> {
    let (b, t, n, hd) = x.dims4()?;
    if !x.device().is_cuda() {
        candle_core::bail!("{QK_PREP_ON_CPU}");
    }
    if x.elem_count() == 0 {
        return x.transpose(1, 2)?.contiguous();
    }
    if !matches!(x.dtype(), DType::F32 | DType::BF16) {
        candle_core::bail!("qk_prep: f32 or bf16 only, got {:?}", x.dtype());
    }
    if hd == 0 || hd > sources::QK_PREP_MAX_HD || !rot.is_multiple_of(2) || rot > hd {
        candle_core::bail!(
            "qk_prep: head dim {hd} (at most {}) with rotary dim {rot} (even, at most the head dim)",
            sources::QK_PREP_MAX_HD
        );
    }
    let table = |c: &Tensor, what: &str| -> Result<Tensor> {
        if rot == 0 {
            return Tensor::zeros(1, x.dtype(), x.device());
        }
        if c.elem_count() != b * t * rot / 2 || c.dim(D::Minus1)? != rot / 2 {
            candle_core::bail!(
                "qk_prep: {what} table {:?} for x {:?} and rotary dim {rot}",
                c.dims(),
                x.dims()
            );
        }
        c.to_dtype(x.dtype())?
            .reshape((b, t, rot / 2))?
            .contiguous()
    };
    let op = QkPrep {
        b,
        t,
        n,
        hd,
        rot,
        eps: norm.map_or(0.0, |n| n.2 as f32),
        cos: table(cos, "cos")?,
        sin: table(sin, "sin")?,
    };
    let x = x.contiguous()?;
    match norm {
        None => x.apply_op1(op),
        Some((w, bias, _)) => {
            if w.dims() != [hd] || bias.dims() != [hd] {
                candle_core::bail!(
                    "qk_prep: norm weight {:?} and bias {:?} for head dim {hd}",
                    w.dims(),
                    bias.dims()
                );
            }
            let w = w.to_dtype(x.dtype())?.contiguous()?;
            let bias = bias.to_dtype(x.dtype())?.contiguous()?;
            x.apply_op3(&w, &bias, op)
        }
    }
}
