//! FlashAttention-2-style attention on candle's CUDA device (cargo feature `cuda`).
//!
//! `kernels/flash_attn.cu` is compiled at run time with NVRTC for the device's compute
//! capability (once per process and architecture), loaded into candle's `CudaDevice` as a
//! custom module and launched through cudarc (the cudarc candle itself uses, re-exported by
//! `candle_core::cuda_backend`). [`attention`] is a `CustomOp3` whose `cuda_fwd` writes the
//! output and the per-row log-sum-exp, and whose `bwd` runs the backward kernels (D = rowsum(dO
//! * O), then dK/dV and dQ) from that log-sum-exp, so autograd works through it.
//!
//! f32 and bf16 (f32 accumulation), head dims 16, 32, 64 and 128, grouped KV heads, a causal flag
//! and an optional padding mask in compact form ([`CudaMask`]: one flag per key and each batch
//! row's first real key, O(`b x tk`) on the device, never a dense `tq x tk` matrix).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{
    CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor, D,
};
use half::bf16;

use super::sources::{self, Elem};
use super::AttnMask;

/// The mask's views as the kernels take them: key flags and first real keys.
type Keys<'a> = Option<(CudaView<'a, u8>, CudaView<'a, u32>)>;

/// A CUDA source file and the name of its module in candle's per-device module cache.
struct Source {
    file: &'static str,
    module: &'static str,
    src: &'static str,
}

const FLASH_ATTN: Source = Source {
    file: "flash_attn.cu",
    module: "mmlab_flash_attn",
    src: sources::FLASH_ATTN_SRC,
};

const QK_PREP: Source = Source {
    file: "qk_prep.cu",
    module: "mmlab_qk_prep",
    src: sources::QK_PREP_SRC,
};

const MLP_ACT: Source = Source {
    file: "mlp_act.cu",
    module: "mmlab_mlp_act",
    src: sources::MLP_ACT_SRC,
};

fn cuda_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Cuda(e.to_string().into())
}

/// PTX per source file and compute capability.
type PtxCache = Mutex<HashMap<(&'static str, i32, i32), Arc<String>>>;

/// PTX of `source` for compute capability `cc`, compiled once per process.
fn ptx_for(source: &Source, cc: (i32, i32)) -> Result<Arc<String>> {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().map_err(|_| cuda_err("NVRTC cache poisoned"))?;
    let key = (source.file, cc.0, cc.1);
    if let Some(p) = map.get(&key) {
        return Ok(p.clone());
    }
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
            "--std=c++17".to_string(),
        ],
        name: Some(source.file.to_string()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(source.src, opts)
        .map_err(|e| cuda_err(format!("NVRTC: kernels/{}: {e}", source.file)))?;
    let ptx = Arc::new(ptx.to_src());
    map.insert(key, ptx.clone());
    Ok(ptx)
}

/// The kernel `name` (of `qk_prep.cu` when it starts with `qp_`, of `mlp_act.cu` with `ma_`,
/// else of `flash_attn.cu`) on `dev`, compiling and loading the module on first use.
fn kernel(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    let cc = dev
        .cuda_stream()
        .context()
        .compute_capability()
        .map_err(cuda_err)?;
    if cc.0 < 8 {
        candle_core::bail!(
            "mmlab's CUDA kernels need compute capability 8.0 or newer (bf16 tensor cores), got \
             {}.{}",
            cc.0,
            cc.1
        );
    }
    let source = if name.starts_with("qp_") {
        &QK_PREP
    } else if name.starts_with("ma_") {
        &MLP_ACT
    } else {
        &FLASH_ATTN
    };
    let ptx = ptx_for(source, cc)?;
    Ok(dev
        .get_or_load_custom_func(name, source.module, &ptx)?
        .into_cuda_function())
}

/// Element types the kernels take.
trait Elt: CudaDType + DeviceRepr + ValidAsZeroBits + Copy + 'static {
    const ELEM: Elem;
}
impl Elt for f32 {
    const ELEM: Elem = Elem::F32;
}
impl Elt for bf16 {
    const ELEM: Elem = Elem::Bf16;
}

/// A contiguous view of a CUDA storage as `T`.
fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("flash attention: {what} must be contiguous");
    };
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

fn tensor_from<T: Elt>(slice: CudaSlice<T>, dev: &CudaDevice, shape: Shape) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}

/// Runs `f` with a view of `t`'s CUDA storage as `T`.
fn with_view<T: CudaDType, R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(CudaView<'_, T>) -> R,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("flash attention: {what} is not on a CUDA device");
    };
    Ok(f(view::<T>(s, layout, what)?))
}

/// Sizes shared by the forward and backward launches.
type Dims = sources::AttnDims;

fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| cuda_err(format!("flash attention: {what} = {x} too large")))
}

/// Lets `func` take the plan's dynamic shared memory when that is over the default 48 KiB.
fn allow_smem(func: &CudaFunction, plan: &sources::Launch) -> Result<()> {
    if plan.smem > 48 * 1024 {
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            plan.smem as i32,
        )
        .map_err(cuda_err)?;
    }
    Ok(())
}

/// The launch configuration of a planned launch.
fn config(l: &sources::Launch) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (l.grid[0], l.grid[1], l.grid[2]),
        block_dim: (l.block[0], l.block[1], l.block[2]),
        shared_mem_bytes: l.smem,
    }
}

/// The attention op; holds the log-sum-exp of its forward for its backward.
#[derive(Clone)]
struct FlashAttn {
    d: Dims,
    scale: f32,
    causal: bool,
    /// Key flags `(b, tk)` u8 and first real keys `(b)` u32, contiguous, on the same device.
    keys: Option<(Tensor, Tensor)>,
    /// Block shape of the bf16 tensor-core forward.
    tile: sources::FwdTile,
    lse: Arc<Mutex<Option<Tensor>>>,
}

impl FlashAttn {
    #[allow(clippy::too_many_arguments)]
    fn forward<T: Elt>(
        &self,
        dev: &CudaDevice,
        q: CudaView<'_, T>,
        k: CudaView<'_, T>,
        v: CudaView<'_, T>,
        keys: Keys<'_>,
    ) -> Result<(CudaSlice<T>, CudaSlice<f32>)> {
        let Dims {
            b,
            h,
            kvh,
            tq,
            tk,
            hd,
        } = self.d;
        let out = dev.alloc_zeros::<T>(b * tq * h * hd)?;
        let lse = dev.alloc_zeros::<f32>(b * h * tq)?;
        let plan = sources::fwd_launch(T::ELEM, &self.d, self.tile).map_err(cuda_err)?;
        let func = kernel(dev, &plan.kernel)?;
        allow_smem(&func, &plan)?;
        let cfg = config(&plan);
        let (hi, kvhi, tqi, tki) = (
            int(h, "heads")?,
            int(kvh, "kv heads")?,
            int(tq, "queries")?,
            int(tk, "keys")?,
        );
        let causal = i32::from(self.causal);
        let null = 0u64;
        let mut out = out;
        let mut lse = lse;
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&func);
        bld.arg(&q).arg(&k).arg(&v).arg(&mut out).arg(&mut lse);
        match &keys {
            Some((valid, first)) => bld.arg(valid).arg(first),
            None => bld.arg(&null).arg(&null),
        };
        bld.arg(&hi)
            .arg(&kvhi)
            .arg(&tqi)
            .arg(&tki)
            .arg(&self.scale)
            .arg(&causal);
        // SAFETY: argument list and types match the kernel signature in flash_attn.cu; every
        // buffer has the size the kernel indexes (checked in `attention`).
        unsafe { bld.launch(cfg) }.map_err(cuda_err)?;
        drop(bld);
        Ok((out, lse))
    }

    /// dQ, dK, dV from the forward's inputs, output, log-sum-exp and the output gradient.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: Elt>(
        &self,
        dev: &CudaDevice,
        q: CudaView<'_, T>,
        k: CudaView<'_, T>,
        v: CudaView<'_, T>,
        o: CudaView<'_, T>,
        dout: CudaView<'_, T>,
        lse: CudaView<'_, f32>,
        keys: Keys<'_>,
    ) -> Result<(CudaSlice<T>, CudaSlice<T>, CudaSlice<T>)> {
        let Dims {
            b,
            h,
            kvh,
            tq,
            tk,
            hd,
        } = self.d;
        let (bi, hi, kvhi, tqi, tki, hdi) = (
            int(b, "batch")?,
            int(h, "heads")?,
            int(kvh, "kv heads")?,
            int(tq, "queries")?,
            int(tk, "keys")?,
            int(hd, "head dim")?,
        );
        let causal = i32::from(self.causal);
        let null = 0u64;

        // D = rowsum(dO * O), one warp per row, 4 rows per block.
        let mut dsum = dev.alloc_zeros::<f32>(b * h * tq)?;
        let plan = sources::bwd_pre_launch(T::ELEM, &self.d).map_err(cuda_err)?;
        let pre = kernel(dev, &plan.kernel)?;
        let cfg = config(&plan);
        let stream = dev.cuda_stream();
        let mut bld = stream.launch_builder(&pre);
        bld.arg(&o)
            .arg(&dout)
            .arg(&mut dsum)
            .arg(&bi)
            .arg(&hi)
            .arg(&tqi)
            .arg(&hdi);
        // SAFETY: matches fa_bwd_pre's signature; o and dout hold b*tq*h*hd elements.
        unsafe { bld.launch(cfg) }.map_err(cuda_err)?;

        let mut dq = dev.alloc_zeros::<T>(b * h * tq * hd)?;
        let mut dk = dev.alloc_zeros::<T>(b * kvh * tk * hd)?;
        let mut dv = dev.alloc_zeros::<T>(b * kvh * tk * hd)?;

        let plan = sources::bwd_dkdv_launch(T::ELEM, &self.d).map_err(cuda_err)?;
        let dkdv = kernel(dev, &plan.kernel)?;
        allow_smem(&dkdv, &plan)?;
        let cfg = config(&plan);
        let mut bld = stream.launch_builder(&dkdv);
        bld.arg(&q).arg(&k).arg(&v).arg(&dout).arg(&lse).arg(&dsum);
        match &keys {
            Some((valid, first)) => bld.arg(valid).arg(first),
            None => bld.arg(&null).arg(&null),
        };
        bld.arg(&mut dk)
            .arg(&mut dv)
            .arg(&hi)
            .arg(&kvhi)
            .arg(&tqi)
            .arg(&tki)
            .arg(&self.scale)
            .arg(&causal);
        // SAFETY: matches fa_bwd_dkdv's signature; sizes checked in `attention`.
        unsafe { bld.launch(cfg) }.map_err(cuda_err)?;

        let plan = sources::bwd_dq_launch(T::ELEM, &self.d).map_err(cuda_err)?;
        let dqk = kernel(dev, &plan.kernel)?;
        allow_smem(&dqk, &plan)?;
        let cfg = config(&plan);
        let mut bld = stream.launch_builder(&dqk);
        bld.arg(&q).arg(&k).arg(&v).arg(&dout).arg(&lse).arg(&dsum);
        match &keys {
            Some((valid, first)) => bld.arg(valid).arg(first),
            None => bld.arg(&null).arg(&null),
        };
        bld.arg(&mut dq)
            .arg(&hi)
            .arg(&kvhi)
            .arg(&tqi)
            .arg(&tki)
            .arg(&self.scale)
            .arg(&causal);
        // SAFETY: matches fa_bwd_dq's signature; sizes checked in `attention`.
        unsafe { bld.launch(cfg) }.map_err(cuda_err)?;
        drop(bld);
        Ok((dq, dk, dv))
    }

    fn fwd_typed<T: Elt>(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<CudaStorage> {
        let dev = s1.device().clone();
        let (q, k, v) = (
            view::<T>(s1, l1, "q")?,
            view::<T>(s2, l2, "k")?,
            view::<T>(s3, l3, "v")?,
        );
        let (out, lse) = match &self.keys {
            Some((valid, first)) => {
                let (vs, vl) = valid.storage_and_layout();
                let (fs, fl) = first.storage_and_layout();
                let (Storage::Cuda(vs), Storage::Cuda(fs)) = (&*vs, &*fs) else {
                    candle_core::bail!("flash attention: the mask is not on the CUDA device");
                };
                let keys = Some((
                    view::<u8>(vs, vl, "key flags")?,
                    view::<u32>(fs, fl, "first keys")?,
                ));
                self.forward::<T>(&dev, q, k, v, keys)?
            }
            None => self.forward::<T>(&dev, q, k, v, None)?,
        };
        let lse = tensor_from(lse, &dev, Shape::from((self.d.b, self.d.h, self.d.tq)));
        *self
            .lse
            .lock()
            .map_err(|_| cuda_err("flash attention: LSE slot poisoned"))? = Some(lse);
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }

    #[allow(clippy::too_many_arguments)]
    fn bwd_typed<T: Elt>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        g: &Tensor,
        lse: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let dev = q.device().as_cuda_device()?.clone();
        // The output gradient may be a view (the tensor-core kernels load dO with cp.async).
        let g = aligned(g)?;
        let o = aligned(o)?;
        let Dims {
            b,
            h,
            kvh,
            tq,
            tk,
            hd,
        } = self.d;
        let keys = self.keys.clone();
        let (dq, dk, dv) = with_view::<T, _>(q, "q", |qv| {
            with_view::<T, _>(k, "k", |kv| {
                with_view::<T, _>(v, "v", |vv| {
                    with_view::<T, _>(&o, "output", |ov| {
                        with_view::<T, _>(&g, "output gradient", |gv| {
                            with_view::<f32, _>(lse, "lse", |lv| match &keys {
                                Some((valid, first)) => {
                                    with_view::<u8, _>(valid, "key flags", |mv| {
                                        with_view::<u32, _>(first, "first keys", |fv| {
                                            self.backward::<T>(
                                                &dev,
                                                qv,
                                                kv,
                                                vv,
                                                ov,
                                                gv,
                                                lv,
                                                Some((mv, fv)),
                                            )
                                        })
                                    })??
                                }
                                None => self.backward::<T>(&dev, qv, kv, vv, ov, gv, lv, None),
                            })?
                        })?
                    })?
                })?
            })?
        })??;
        Ok((
            tensor_from(dq, &dev, Shape::from((b, h, tq, hd))),
            tensor_from(dk, &dev, Shape::from((b, kvh, tk, hd))),
            tensor_from(dv, &dev, Shape::from((b, kvh, tk, hd))),
        ))
    }

    fn bwd_any(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        g: &Tensor,
        lse: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        match q.dtype() {
            DType::F32 => self.bwd_typed::<f32>(q, k, v, o, g, lse),
            DType::BF16 => self.bwd_typed::<bf16>(q, k, v, o, g, lse),
            dt => candle_core::bail!("flash attention: f32 or bf16 only, got {dt:?}"),
        }
    }

    fn take_lse(&self) -> Result<Tensor> {
        self.lse
            .lock()
            .map_err(|_| cuda_err("flash attention: LSE slot poisoned"))?
            .clone()
            .ok_or_else(|| cuda_err("flash attention: backward before forward"))
    }
}

impl CustomOp3 for FlashAttn {
    fn name(&self) -> &'static str {
        "mmlab-flash-attention"
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
        candle_core::bail!("flash attention (CUDA) called on CPU tensors: use kernels::attention")
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
        let out = match s1.dtype() {
            DType::F32 => self.fwd_typed::<f32>(s1, l1, s2, l2, s3, l3)?,
            DType::BF16 => self.fwd_typed::<bf16>(s1, l1, s2, l2, s3, l3)?,
            dt => candle_core::bail!("flash attention: f32 or bf16 only, got {dt:?}"),
        };
        Ok((
            out,
            Shape::from((self.d.b, self.d.tq, self.d.h * self.d.hd)),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.take_lse()?;
        let (dq, dk, dv) = self.bwd_any(q, k, v, res, grad, &lse)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Padded keys in the form the kernels read: one u8 flag per key (`b, tk`, nonzero for a real
/// key) and each batch row's first real key (`b`, u32; `tk` when none), on the device. With the
/// causal flag it gives the same visibility as [`AttnMask`]: a query with no real key within
/// its causal limit sees its own key alone.
#[derive(Clone, Debug)]
pub struct CudaMask {
    valid: Tensor,
    first: Tensor,
}

impl CudaMask {
    /// `mask`'s key flags on `device`, or `None` when every key is real (the kernels then
    /// skip the check). Pass `mask.is_causal()` as the kernels' causal flag.
    pub fn from_attn(mask: &AttnMask, device: &Device) -> Result<Option<Self>> {
        if mask.key_valid().iter().all(|&x| x != 0) {
            return Ok(None);
        }
        let tk = mask.tk();
        let first: Vec<u32> = mask
            .first_valid()
            .iter()
            .map(|&f| u32::try_from(f).map_err(|_| cuda_err("flash attention: too many keys")))
            .collect::<Result<_>>()?;
        Ok(Some(Self {
            valid: Tensor::from_slice(mask.key_valid(), (mask.b(), tk), device)?,
            first: Tensor::from_vec(first, mask.b(), device)?,
        }))
    }
}

/// True when the CUDA kernels take this head dim.
pub fn supports_head_dim(hd: usize) -> bool {
    sources::HEAD_DIMS.contains(&hd)
}

/// Checks the shapes and builds the op (inputs made contiguous and 16-byte aligned).
fn prepare(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&CudaMask>,
    scale: f64,
    causal: bool,
) -> Result<(FlashAttn, Tensor, Tensor, Tensor)> {
    let (b, h, tq, hd) = q.dims4()?;
    let (bk, kvh, tk, hdk) = k.dims4()?;
    if bk != b || hdk != hd || v.dims() != k.dims() || kvh == 0 || h % kvh != 0 {
        candle_core::bail!(
            "flash attention: q {:?}, k {:?}, v {:?} do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        candle_core::bail!("flash attention: q, k, v must share one dtype");
    }
    if !supports_head_dim(hd) {
        candle_core::bail!(
            "flash attention: head dim {hd} not compiled (have {:?})",
            sources::HEAD_DIMS
        );
    }
    if b * h > 65535 {
        candle_core::bail!(
            "flash attention: batch x heads = {} over the grid limit 65535",
            b * h
        );
    }
    if !q.device().is_cuda() || !q.device().same_device(k.device()) {
        candle_core::bail!("flash attention: q, k, v must be on one CUDA device");
    }
    let keys = match mask {
        Some(m) => {
            if m.valid.dims() != [b, tk] || m.first.dims() != [b] {
                candle_core::bail!(
                    "flash attention: a mask of {:?} key flags for q {:?} and {tk} keys",
                    m.valid.dims(),
                    q.dims()
                );
            }
            if !m.valid.device().same_device(q.device()) {
                candle_core::bail!("flash attention: the mask is not on q's device");
            }
            Some((m.valid.clone(), m.first.clone()))
        }
        None => None,
    };
    let op = FlashAttn {
        d: Dims {
            b,
            h,
            kvh,
            tq,
            tk,
            hd,
        },
        scale: scale as f32,
        causal,
        keys,
        tile: env_tile()?,
        lse: Arc::new(Mutex::new(None)),
    };
    Ok((op, aligned(q)?, aligned(k)?, aligned(v)?))
}

/// `t` contiguous and starting 16-byte aligned, as the tensor-core kernels' `cp.async` loads
/// need (a fresh copy when a view starts elsewhere).
fn aligned(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if (t.layout().start_offset() * t.dtype().size_in_bytes()) % 16 == 0 {
        Ok(t)
    } else {
        t.force_contiguous()
    }
}

/// Scaled dot-product attention on a CUDA device, forward and backward: `q` (`b, h, tq, hd`),
/// `k`, `v` (`b, kv_heads, tk, hd`), f32 or bf16, with an optional padding `mask` and/or the
/// causal rule (key `j` visible to query `i` when `j <= i + tk - tq`). Returns
/// `(b, tq, h * hd)`, the heads concatenated, like [`super::attention`]; gradients flow to `q`,
/// `k`, `v`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&CudaMask>,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    let (op, q, k, v) = prepare(q, k, v, mask, scale, causal)?;
    q.apply_op3(&k, &v, op)
}

/// The forward block shape `MMLAB_FA_FWD` names, read once per process (attention runs in
/// every layer of every step; the environment does not change under it).
fn env_tile() -> Result<sources::FwdTile> {
    static TILE: OnceLock<std::result::Result<sources::FwdTile, String>> = OnceLock::new();
    TILE.get_or_init(sources::FwdTile::from_env)
        .clone()
        .map_err(cuda_err)
}

/// The forward kernels alone (no autograd): the output `(b, tq, h * hd)` and the natural
/// log-sum-exp of every scaled score row `(b, h, tq)` (`+inf` for a row that sees no key).
pub fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&CudaMask>,
    scale: f64,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    let tile = env_tile()?;
    forward_tiled(q, k, v, mask, scale, causal, tile)
}

/// [`forward`] with the bf16 tensor-core forward's block shape chosen by the caller instead of
/// `MMLAB_FA_FWD` (examples/flash_bench.rs measures both).
pub fn forward_tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&CudaMask>,
    scale: f64,
    causal: bool,
    tile: sources::FwdTile,
) -> Result<(Tensor, Tensor)> {
    let (mut op, q, k, v) = prepare(q, k, v, mask, scale, causal)?;
    op.tile = tile;
    let out = q.apply_op3_no_bwd(&k, &v, &op)?;
    Ok((out, op.take_lse()?))
}

/// The backward kernels alone: `(dq, dk, dv)` from the inputs, the [`forward`] output and
/// log-sum-exp, and the output gradient `dout` (`b, tq, h * hd`).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    mask: Option<&CudaMask>,
    scale: f64,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (op, q, k, v) = prepare(q, k, v, mask, scale, causal)?;
    let (b, h, tq, hd) = q.dims4()?;
    if out.dims() != [b, tq, h * hd] || dout.dims() != out.dims() || lse.dims() != [b, h, tq] {
        candle_core::bail!(
            "flash attention backward: output {:?}, gradient {:?}, lse {:?} for q {:?}",
            out.dims(),
            dout.dims(),
            lse.dims(),
            q.dims()
        );
    }
    let lse = lse.to_dtype(DType::F32)?.contiguous()?;
    op.bwd_any(&q, &k, &v, out, dout, &lse)
}

/// The CUDA storage behind a tensor's storage guard.
fn cuda_of<'a>(s: &'a Storage, what: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("{what} is not on a CUDA device"),
    }
}

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
        let func = kernel(&dev, &plan.kernel)?;
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
        let func = kernel(&dev, &plan.kernel)?;
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
        let func = kernel(&dev, &plan.kernel)?;
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
        let func = kernel(&dev, &plan.kernel)?;
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
