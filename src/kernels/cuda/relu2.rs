//! Bias + relu² over the MLP's matmul output in one kernel (`kernels/mlp_act.cu`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use super::super::sources;
use super::{config, cuda_err, cuda_of, int, kernel, tensor_from, view, Elt, Source};

const MLP_ACT: Source = Source {
    file: "mlp_act.cu",
    module: "mmlab_mlp_act",
    src: sources::MLP_ACT_SRC,
};

/// relu(z + bias)² over a `(rows, cols)` matmul output in one kernel (`kernels/mlp_act.cu`).
#[derive(Clone, Copy)]
struct Relu2 {
    rows: usize,
    cols: usize,
}

impl Relu2 {
    fn fwd_typed<T: Elt>(
        &self,
        z: (&CudaStorage, &Layout),
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> Result<CudaStorage> {
        let dev = z.0.device().clone();
        let zv = view::<T>(z.0, z.1, "relu2: input")?;
        let bv = bias
            .map(|(s, l)| view::<T>(s, l, "relu2: bias"))
            .transpose()?;
        let mut y = dev.alloc_zeros::<T>(self.rows * self.cols)?;
        let plan = sources::relu2_launch(T::ELEM, true, self.rows, self.cols).map_err(cuda_err)?;
        let func = kernel(&dev, &MLP_ACT, &plan.kernel)?;
        let (rows, cols) = (self.rows as i64, int(self.cols, "columns")?);
        let null = 0u64;
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&func);
        bld.arg(&zv);
        match &bv {
            Some(b) => bld.arg(b),
            None => bld.arg(&null),
        };
        bld.arg(&mut y).arg(&rows).arg(&cols);
        // SAFETY: the arguments match ma_relu2_fwd's signature; z and y hold rows*cols
        // elements, the bias cols (checked in `bias_relu2`).
        unsafe { bld.launch(config(&plan)) }.map_err(cuda_err)?;
        drop(bld);
        Ok(CudaStorage::wrap_cuda_slice(y, dev))
    }

    /// dz and, with a bias, dbias.
    fn bwd_typed<T: Elt>(
        &self,
        z: &Tensor,
        bias: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let dev = z.device().as_cuda_device()?.clone();
        let grad = grad.contiguous()?;
        let plan = sources::relu2_launch(T::ELEM, false, self.rows, self.cols).map_err(cuda_err)?;
        let func = kernel(&dev, &MLP_ACT, &plan.kernel)?;
        let (zs, zl) = z.storage_and_layout();
        let zv = view::<T>(cuda_of(&zs, "relu2: input")?, zl, "relu2: input")?;
        let (gs, gl) = grad.storage_and_layout();
        let gv = view::<T>(cuda_of(&gs, "relu2: gradient")?, gl, "relu2: gradient")?;
        let b_guard = bias.map(|b| b.storage_and_layout());
        let bv = match &b_guard {
            Some((bs, bl)) => Some(view::<T>(cuda_of(bs, "relu2: bias")?, bl, "relu2: bias")?),
            None => None,
        };
        let mut dz = dev.alloc_zeros::<T>(self.rows * self.cols)?;
        let row_blocks = plan.grid[1] as usize;
        let mut parts = dev.alloc_zeros::<f32>(if bias.is_some() {
            row_blocks * self.cols
        } else {
            1
        })?;
        let (rows, cols) = (self.rows as i64, int(self.cols, "columns")?);
        let null = 0u64;
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&func);
        bld.arg(&zv);
        match &bv {
            Some(b) => bld.arg(b),
            None => bld.arg(&null),
        };
        bld.arg(&gv).arg(&mut dz);
        if bias.is_some() {
            bld.arg(&mut parts);
        } else {
            bld.arg(&null);
        }
        bld.arg(&rows).arg(&cols);
        // SAFETY: the arguments match ma_relu2_bwd's signature; `parts` holds the plan's
        // block rows x cols f32.
        unsafe { bld.launch(config(&plan)) }.map_err(cuda_err)?;
        drop(bld);
        let dz = tensor_from(dz, &dev, Shape::from((self.rows, self.cols)));
        let db = match bias {
            Some(b) => Some(
                tensor_from(parts, &dev, Shape::from((row_blocks, self.cols)))
                    .sum(0)?
                    .to_dtype(b.dtype())?,
            ),
            None => None,
        };
        Ok((dz, db))
    }

    fn bwd_any(
        &self,
        z: &Tensor,
        bias: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if grad.dims() != [self.rows, self.cols] {
            candle_core::bail!(
                "relu2 backward: gradient {:?} for output {:?}",
                grad.dims(),
                [self.rows, self.cols]
            );
        }
        match z.dtype() {
            DType::F32 => self.bwd_typed::<f32>(z, bias, grad),
            DType::BF16 => self.bwd_typed::<bf16>(z, bias, grad),
            dt => candle_core::bail!("relu2: f32 or bf16 only, got {dt:?}"),
        }
    }

    fn fwd_any(
        &self,
        z: (&CudaStorage, &Layout),
        bias: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let out = match z.0.dtype() {
            DType::F32 => self.fwd_typed::<f32>(z, bias)?,
            DType::BF16 => self.fwd_typed::<bf16>(z, bias)?,
            dt => candle_core::bail!("relu2: f32 or bf16 only, got {dt:?}"),
        };
        Ok((out, Shape::from((self.rows, self.cols))))
    }
}

const RELU2_ON_CPU: &str = "relu2 (CUDA) called on CPU tensors: use kernels::linear_then";

impl candle_core::CustomOp1 for Relu2 {
    fn name(&self) -> &'static str {
        "mmlab-relu2"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{RELU2_ON_CPU}")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.fwd_any((s, l), None)
    }

    fn bwd(&self, z: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.bwd_any(z, None, grad)?.0))
    }
}

impl candle_core::CustomOp2 for Relu2 {
    fn name(&self) -> &'static str {
        "mmlab-bias-relu2"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{RELU2_ON_CPU}")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.fwd_any((s1, l1), Some((s2, l2)))
    }

    fn bwd(
        &self,
        z: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dz, db) = self.bwd_any(z, Some(bias), grad)?;
        Ok((Some(dz), db))
    }
}

/// relu(z + bias)² over a matmul output `z` (`rows, cols`) in one CUDA kernel, forward and
/// backward (gradients to `z` and `bias`); the same values as candle's
/// `z.broadcast_add(bias)?.relu()?.sqr()`. f32 or bf16, on a CUDA device.
pub fn bias_relu2(z: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (rows, cols) = z.dims2()?;
    if !z.device().is_cuda() {
        candle_core::bail!("{RELU2_ON_CPU}");
    }
    if rows == 0 || cols == 0 {
        return Ok(z.clone());
    }
    let op = Relu2 { rows, cols };
    let z = z.contiguous()?;
    match bias {
        None => z.apply_op1(op),
        Some(b) => {
            if b.dims() != [cols] {
                candle_core::bail!("relu2: bias {:?} for {cols} columns", b.dims());
            }
            let b = b.to_dtype(z.dtype())?.contiguous()?;
            z.apply_op2(&b, op)
        }
    }
}
