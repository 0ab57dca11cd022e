//! The CUDA sources (`kernels/*.cu`) and the kernels the `cuda` feature launches from them.
//!
//! Compiled into every build (no CUDA needed) so that the NVRTC check on CI
//! (`tests/cuda_nvrtc.rs`) and the CUDA ops (`src/kernels/cuda.rs`) agree on names and sizes.

/// `kernels/flash_attn.cu`: FlashAttention-2-style forward and backward.
pub const FLASH_ATTN_SRC: &str = include_str!("../../kernels/flash_attn.cu");

/// Head dims the attention kernels are instantiated for (16: the shipped `fuyu-small`).
pub const HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];

/// Query rows per block of the bf16 (tensor-core) forward.
pub const FWD_BF16_BLOCK_M: usize = 64;
/// Keys per tile of the bf16 forward (two stages of K and V are kept in shared memory).
pub const FWD_BF16_BLOCK_N: usize = 64;
/// Rows per block (query rows or key rows) of the CUDA-core kernels.
pub const SIMT_ROWS: usize = 32;
/// Threads per block of every attention kernel but the backward pre-pass.
pub const THREADS: u32 = 128;

/// The element types the kernels take, by their suffix in kernel names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// `float`.
    F32,
    /// bf16 carried as `unsigned short`, f32 accumulation.
    Bf16,
}

impl Elem {
    /// The suffix used in kernel names.
    pub fn suffix(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "bf16",
        }
    }
}

/// Name of the forward kernel for `elem` and head dim `hd`.
pub fn fwd_kernel(elem: Elem, hd: usize) -> String {
    format!("fa_fwd_{}_hd{hd}", elem.suffix())
}

/// Name of the backward pre-pass (`D = rowsum(dO * O)`) for `elem`.
pub fn bwd_pre_kernel(elem: Elem) -> String {
    format!("fa_bwd_pre_{}", elem.suffix())
}

/// Name of the dK/dV backward kernel for `elem` and head dim `hd`.
pub fn bwd_dkdv_kernel(elem: Elem, hd: usize) -> String {
    format!("fa_bwd_dkdv_{}_hd{hd}", elem.suffix())
}

/// Name of the dQ backward kernel for `elem` and head dim `hd`.
pub fn bwd_dq_kernel(elem: Elem, hd: usize) -> String {
    format!("fa_bwd_dq_{}_hd{hd}", elem.suffix())
}

/// True when the forward for `elem` and `hd` is the tensor-core kernel (bf16, head dim a
/// multiple of 32); otherwise it is the CUDA-core kernel.
pub fn fwd_tensor_cores(elem: Elem, hd: usize) -> bool {
    elem == Elem::Bf16 && hd.is_multiple_of(32)
}

/// Query rows per block of the forward for `elem` and `hd`.
pub fn fwd_block_rows(elem: Elem, hd: usize) -> usize {
    if fwd_tensor_cores(elem, hd) {
        FWD_BF16_BLOCK_M
    } else {
        SIMT_ROWS
    }
}

/// Dynamic shared memory (bytes) a forward kernel launch needs: the tensor-core kernel keeps
/// the Q tile and two stages of K and V (rows padded by 8 elements); the CUDA-core kernel uses
/// static shared memory only.
pub fn fwd_dynamic_smem(elem: Elem, hd: usize) -> usize {
    if fwd_tensor_cores(elem, hd) {
        (FWD_BF16_BLOCK_M + 4 * FWD_BF16_BLOCK_N) * (hd + 8) * 2
    } else {
        0
    }
}

/// Every kernel `src/kernels/cuda.rs` may launch from `flash_attn.cu`.
pub fn flash_attn_kernels() -> Vec<String> {
    let mut names = Vec::new();
    for elem in [Elem::F32, Elem::Bf16] {
        names.push(bwd_pre_kernel(elem));
        for hd in HEAD_DIMS {
            names.push(fwd_kernel(elem, hd));
            names.push(bwd_dkdv_kernel(elem, hd));
            names.push(bwd_dq_kernel(elem, hd));
        }
    }
    names
}
