//! Scaled dot-product attention: the compact mask ([`AttnMask`], `mask.rs`), the tiled CPU
//! kernel (`cpu.rs`) and the CUDA FlashAttention kernels (`super::cuda`, feature `cuda`), picked
//! from the tensors' device.

use candle_core::{Result, Tensor};

#[cfg(feature = "cuda")]
use super::cuda;

mod cpu;
mod mask;

pub use mask::AttnMask;

/// True when attention over `q` (`b, h, t, hd`) runs on the CUDA kernels: the `cuda` feature is
/// built in, `q` is on a CUDA device in f32 or bf16, and its head dim is compiled.
pub fn cuda_attention(q: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        q.device().is_cuda()
            && matches!(
                q.dtype(),
                candle_core::DType::F32 | candle_core::DType::BF16
            )
            && q.dims()
                .last()
                .is_some_and(|&hd| cuda::supports_head_dim(hd))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = q;
        false
    }
}

/// Scaled dot-product attention of `q` (`b, h, tq, hd`) over `k`, `v` (`b, kv_heads, tk, hd`)
/// with the compact `mask` (see [`AttnMask`]); query head `j` reads KV head
/// `j / (h / kv_heads)`. Returns `(b, tq, h * hd)`: the heads already concatenated.
///
/// CUDA tensors go to the FlashAttention kernels (`cuda` feature) when [`cuda_attention`] says
/// so, with the mask in its compact form ([`cuda::CudaMask`], built here; a model that calls the
/// kernels from every layer builds it once per forward and calls [`cuda::attention`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
) -> Result<Tensor> {
    let (b, _, tq, _) = q.dims4()?;
    let (_, _, tk, _) = k.dims4()?;
    if (mask.b(), mask.tq(), mask.tk()) != (b, tq, tk) {
        candle_core::bail!(
            "attention: mask for {} x {} queries and {} keys, q {:?} and {tk} keys",
            mask.b(),
            mask.tq(),
            mask.tk(),
            q.dims()
        );
    }
    #[cfg(feature = "cuda")]
    if cuda_attention(q) {
        let keys = cuda::CudaMask::from_attn(mask, q.device())?;
        return cuda::attention(q, k, v, keys.as_ref(), scale, mask.is_causal());
    }
    cpu::tiled(q, k, v, mask, scale)
}
