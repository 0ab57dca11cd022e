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

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor};
use half::bf16;

use super::super::sources;
use super::super::AttnMask;
use super::{allow_smem, config, cuda_err, int, kernel, tensor_from, view, with_view, Elt, Source};

const FLASH_ATTN: Source = Source {
    file: "flash_attn.cu",
    module: "mmlab_flash_attn",
    src: sources::FLASH_ATTN_SRC,
};

/// The mask's views as the kernels take them: key flags and first real keys.
type Keys<'a> = Option<(CudaView<'a, u8>, CudaView<'a, u32>)>;

/// Sizes shared by the forward and backward launches.
type Dims = sources::AttnDims;

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
        let func = kernel(dev, &FLASH_ATTN, &plan.kernel)?;
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
        let pre = kernel(dev, &FLASH_ATTN, &plan.kernel)?;
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
        let dkdv = kernel(dev, &FLASH_ATTN, &plan.kernel)?;
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
        let dqk = kernel(dev, &FLASH_ATTN, &plan.kernel)?;
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
/// `(b, tq, h * hd)`, the heads concatenated, like [`crate::kernels::attention()`]; gradients
/// flow to `q`, `k`, `v`.
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
