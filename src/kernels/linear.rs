//! `x W^T + b` (optionally followed by relu² or GELU) as one op that calls the `gemm` crate directly:
//! the bias is written into the output before the product is accumulated onto it, and relu²
//! (or GELU) is applied while the output is still in cache, so forward is one matmul and no extra pass;
//! backward is two matmuls (`dx = g W`, `dW = g^T x`) and a column sum for `db`, with no
//! transposed copies. candle's path for the same layer is a matmul into a zeroed buffer, a
//! bias op copying the output, an activation op copying it again, and their backward ops.
//!
//! [`linear`] / [`linear_then`] run this op on the CPU in f32, the bias + relu² CUDA kernel on a
//! GPU ([`cuda_relu2`]), candle's ops otherwise; [`Linear`] is the layer built on them.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

#[cfg(feature = "cuda")]
use super::cuda;
#[cfg(feature = "cuda")]
use super::cuda::{cuda_fusion, Switch};
use super::{enabled_on, f32_slice, run_chunks, with_f32};

/// What follows the affine map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Nothing: `x W^T + b`.
    None,
    /// `relu(x W^T + b)^2` (Persimmon / Fuyu MLP).
    Relu2,
    /// GELU, tanh approximation (candle's `gelu`; the encoders' and connectors' MLPs).
    Gelu,
}

const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

impl Epilogue {
    /// The activation of the pre-activation `u`.
    #[inline(always)]
    fn apply(self, u: f32) -> f32 {
        match self {
            Epilogue::None => u,
            Epilogue::Relu2 => {
                let r = u.max(0.0);
                r * r
            }
            Epilogue::Gelu => {
                0.5 * u * (1.0 + (SQRT_TWO_OVER_PI * u * (1.0 + 0.044715 * u * u)).tanh())
            }
        }
    }

    /// Its derivative at `u`.
    #[inline(always)]
    fn slope(self, u: f32) -> f32 {
        match self {
            Epilogue::None => 1.0,
            Epilogue::Relu2 => 2.0 * u.max(0.0),
            Epilogue::Gelu => {
                let t = (SQRT_TWO_OVER_PI * u * (1.0 + 0.044715 * u * u)).tanh();
                0.5 * (1.0 + t)
                    + 0.5 * u * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * 0.044715 * u * u)
            }
        }
    }
}

/// Multiply-adds from which a product is split across threads.
const PARALLEL_MIN_MACS: usize = 1 << 22;

/// Row-major `dst (m x n) [+]= lhs (m x k) rhs (k x n)` with explicit strides
/// (`*_rs` between rows, `*_cs` between columns).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // Every element gemm touches must lie inside its slice.
    if dst.len() < m * n
        || lhs.len() <= (m - 1) * lhs_rs + (k - 1) * lhs_cs
        || rhs.len() <= (k - 1) * rhs_rs + (n - 1) * rhs_cs
    {
        candle_core::bail!(
            "linear: buffers of {} / {} / {} do not fit a {m}x{k} by {k}x{n} product",
            dst.len(),
            lhs.len(),
            rhs.len()
        );
    }
    let threads = super::num_threads();
    // Splitting a small product across threads costs more in hand-offs than it saves.
    let par = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the three buffers are valid for the index ranges checked above (dst holds m x n
    // contiguous rows), dst does not alias lhs or rhs (it is a distinct `&mut`), and f32 is a
    // type gemm supports. gemm computes dst = alpha dst + beta lhs rhs, reading dst only when
    // `accumulate` is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
    Ok(())
}

pub(super) struct LinearOp {
    epilogue: Epilogue,
    /// `x W^T + b` before the activation, kept by forward for backward (with an epilogue only).
    pre: Mutex<Vec<f32>>,
}

impl LinearOp {
    fn new(epilogue: Epilogue) -> Self {
        Self {
            epilogue,
            pre: Mutex::new(Vec::new()),
        }
    }

    fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        (rows, inp, out): (usize, usize, usize),
    ) -> Result<Vec<f32>> {
        let mut y = vec![0f32; rows * out];
        if let Some(b) = b {
            for row in y.chunks_exact_mut(out) {
                row.copy_from_slice(b);
            }
        }
        // y (rows x out) [+]= x (rows x in) . W^T (in x out); W^T[k][j] = W[j][k].
        matmul(
            (rows, out, inp),
            &mut y,
            b.is_some(),
            x,
            (inp, 1),
            w,
            (1, inp),
        )?;
        if self.epilogue != Epilogue::None {
            if let Ok(mut pre) = self.pre.lock() {
                pre.clear();
                pre.extend_from_slice(&y);
            }
            let act = self.epilogue;
            run_chunks(&mut y, 1 << 16, |_, c| {
                for v in c.iter_mut() {
                    *v = act.apply(*v);
                }
            });
        }
        Ok(y)
    }

    /// `(dx, dW, db)` from the output gradient `g` (`rows x out`).
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        g: &[f32],
        (rows, inp, out): (usize, usize, usize),
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let act_grad;
        let g = match self.epilogue {
            Epilogue::None => g,
            act => {
                let pre = match self.pre.lock() {
                    Ok(p) => p,
                    Err(_) => candle_core::bail!("linear: the forward state was poisoned"),
                };
                if pre.len() != g.len() {
                    candle_core::bail!("linear: backward without its forward pass");
                }
                let mut d = vec![0f32; g.len()];
                for ((d, &gi), &u) in d.iter_mut().zip(g).zip(pre.iter()) {
                    *d = gi * act.slope(u);
                }
                act_grad = d;
                &act_grad
            }
        };
        let mut dx = vec![0f32; rows * inp];
        // dx (rows x in) = g (rows x out) . W (out x in)
        matmul((rows, inp, out), &mut dx, false, g, (out, 1), w, (inp, 1))?;
        let mut dw = vec![0f32; out * inp];
        // dW (out x in) = g^T (out x rows) . x (rows x in); g^T[j][r] = g[r][j]
        matmul((out, inp, rows), &mut dw, false, g, (1, out), x, (inp, 1))?;
        Ok((dx, dw, column_sum(g, out)))
    }

    /// Forward on storages: `x`, `w` and the optional bias.
    fn run(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Self::dims(l1, l2)?;
        let (x, w) = (f32_slice(s1, l1, "linear")?, f32_slice(s2, l2, "linear")?);
        let b = b.map(|(s, l)| f32_slice(s, l, "linear")).transpose()?;
        if let Some(b) = b {
            if b.len() != dims.2 {
                candle_core::bail!("linear: bias of {} for {} outputs", b.len(), dims.2);
            }
        }
        let y = self.forward(x, w, b, dims)?;
        Ok((CpuStorage::F32(y), Shape::from((dims.0, dims.2))))
    }

    /// Backward on tensors: `(dx, dW, db)`, the first two as tensors shaped like `x` and `w`.
    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Vec<f32>)> {
        let (rows, inp) = x.dims2()?;
        let out = w.dim(0)?;
        let (dx, dw, db) = with_f32([x, w, grad], "linear", |[xv, wv, gv]| {
            self.backward(xv, wv, gv, (rows, inp, out))
        })??;
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, w.shape(), w.device())?,
            db,
        ))
    }

    fn dims(x: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
        let (rows, inp) = match x.dims() {
            [r, i] => (*r, *i),
            d => candle_core::bail!("linear: input {d:?} is not 2-D"),
        };
        match w.dims() {
            [o, i] if *i == inp => Ok((rows, inp, *o)),
            d => candle_core::bail!("linear: weight {d:?} for rows of {inp}"),
        }
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "mmlab-linear"
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
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.grads(x, w, grad)?;
        let db = Tensor::from_vec(db, b.shape(), b.device())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "mmlab-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The fused op on 2-D `x` (`rows x in`), `w` (`out x in`) and optional `b` (`out`).
pub(super) fn linear_2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let op = LinearOp::new(epilogue);
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// Sums the rows (`n x d`, row-major) of `g` into a `d` vector.
fn column_sum(g: &[f32], d: usize) -> Vec<f32> {
    let mut acc = vec![0f32; d];
    for row in g.chunks_exact(d) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += x;
        }
    }
    acc
}

/// `x W^T (+ b)` for `x` (`..., in`) and `W` (`out, in`), computed as one 2-D matmul.
///
/// f32 on the CPU runs the fused op above (the bias folded into the matmul's output);
/// otherwise (or with `MMLAB_PLAIN_OPS`) `candle_nn::Linear` and candle's activation ops.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_then(x, w, b, Epilogue::None)
}

/// [`linear`] followed by `epilogue`, fused into the same op on the CPU in f32.
pub fn linear_then(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&inp, lead)) = dims.split_last() else {
        candle_core::bail!("linear: scalar input");
    };
    let rows: usize = lead.iter().product();
    let x2 = x.reshape((rows, inp))?;
    let fused = enabled_on(x.device())
        && [Some(x), Some(w), b]
            .iter()
            .flatten()
            .all(|t| t.dtype() == candle_core::DType::F32);
    let y = if fused {
        linear_2d(&x2, w, b, epilogue)?
    } else if let Some(y) = cuda_linear_relu2(&x2, w, b, epilogue)? {
        y
    } else {
        use candle_core::Module;
        let y = candle_nn::Linear::new(w.clone(), b.cloned()).forward(&x2)?;
        match epilogue {
            Epilogue::None => y,
            Epilogue::Relu2 => y.relu()?.sqr()?,
            Epilogue::Gelu => y.gelu()?,
        }
    };
    let mut out = lead.to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}

/// `x2 W^T`, then bias + relu² in one CUDA kernel, when `epilogue` is relu² and
/// [`cuda_relu2`] holds; `None` otherwise (the caller runs candle's ops).
fn cuda_linear_relu2(
    x2: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    epilogue: Epilogue,
) -> Result<Option<Tensor>> {
    if epilogue != Epilogue::Relu2 || !cuda_relu2(x2)? {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    return Ok(Some(cuda::bias_relu2(&x2.matmul(&w.t()?)?, b)?));
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (w, b);
        Ok(None)
    }
}

/// True when the MLP's bias + relu² after a matmul runs as one CUDA kernel
/// ([`cuda::bias_relu2`]): the `cuda` feature is built in, `x` is on a CUDA device in f32 or
/// bf16, and `MMLAB_RELU2` is unset or `fused` (`plain` keeps candle's ops, to compare; any other
/// value is an error naming the variable).
pub fn cuda_relu2(x: &Tensor) -> Result<bool> {
    #[cfg(feature = "cuda")]
    {
        static SWITCH: Switch = Switch::new();
        cuda_fusion(x, &SWITCH, "MMLAB_RELU2")
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        Ok(false)
    }
}
