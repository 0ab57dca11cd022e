//! mmlab's CUDA kernels on candle's CUDA device (cargo feature `cuda`): the NVRTC plumbing and
//! launch helpers here, one op per file, each mirroring its source in `kernels/`:
//!
//! - `attention.rs`: FlashAttention-2-style attention, forward and backward (`flash_attn.cu`);
//! - `qk_prep.rs`: QK-LayerNorm, rotary and the head transpose of q or k (`qk_prep.cu`);
//! - `relu2.rs`: bias + relu² after the MLP's matmul (`mlp_act.cu`).
//!
//! Each source is compiled at run time with NVRTC for the device's compute capability (once per
//! process and architecture), loaded into candle's `CudaDevice` as a custom module and launched
//! through cudarc (the cudarc candle itself uses, re-exported by `candle_core::cuda_backend`),
//! with the launch plans of [`super::sources`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute_enum;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{Layout, Result, Shape, Storage, Tensor};
use half::bf16;

use super::sources::{self, Elem};

mod attention;
mod qk_prep;
mod relu2;

pub use attention::{attention, backward, forward, forward_tiled, supports_head_dim, CudaMask};
pub use qk_prep::qk_norm_rope;
pub use relu2::bias_relu2;

/// A CUDA source file and the name of its module in candle's per-device module cache.
struct Source {
    file: &'static str,
    module: &'static str,
    src: &'static str,
}

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

/// The kernel `name` of `source` on `dev`, compiling and loading the module on first use.
fn kernel(dev: &CudaDevice, source: &Source, name: &str) -> Result<CudaFunction> {
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

/// The CUDA storage behind a tensor's storage guard.
fn cuda_of<'a>(s: &'a Storage, what: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("{what} is not on a CUDA device"),
    }
}

/// A fused CUDA op's switch, read once per process.
pub(super) type Switch = std::sync::OnceLock<std::result::Result<bool, String>>;

/// True when `x` is on a CUDA device in f32 or bf16 and the switch `var` (read once into
/// `cell`) is on: unset, empty or `fused`; `plain` turns it off (candle's ops, to compare); any
/// other value is an error naming the variable.
pub(super) fn cuda_fusion(x: &Tensor, cell: &'static Switch, var: &str) -> Result<bool> {
    let on = cell
        .get_or_init(|| match std::env::var(var).as_deref() {
            Err(_) | Ok("") | Ok("fused") => Ok(true),
            Ok("plain") => Ok(false),
            Ok(other) => Err(format!("{var}={other}: expected fused or plain")),
        })
        .clone()
        .map_err(candle_core::Error::msg)?;
    Ok(on
        && x.device().is_cuda()
        && matches!(
            x.dtype(),
            candle_core::DType::F32 | candle_core::DType::BF16
        ))
}
