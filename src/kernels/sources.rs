//! The CUDA sources (`kernels/*.cu`) and the kernels the `cuda` feature launches from them.
//!
//! Compiled into every build (no CUDA needed) so that the NVRTC check on CI
//! (`tests/cuda_nvrtc.rs`) and the CUDA ops (`src/kernels/cuda.rs`) agree on names and sizes.

/// `kernels/flash_attn.cu`: FlashAttention-2-style forward and backward.
pub const FLASH_ATTN_SRC: &str = include_str!("../../kernels/flash_attn.cu");

/// `kernels/qk_prep.cu`: QK-LayerNorm, rotary and the head transpose of q and k, fused.
pub const QK_PREP_SRC: &str = include_str!("../../kernels/qk_prep.cu");

/// `kernels/mlp_act.cu`: the MLP's bias + relu² after its up-projection, fused.
pub const MLP_ACT_SRC: &str = include_str!("../../kernels/mlp_act.cu");

/// Head dims the attention kernels are instantiated for (16: the shipped `fuyu-small`).
pub const HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];

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

/// The block shape of the bf16 tensor-core forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwdTile {
    /// 64 query rows per block (16 per warp, Q fragments kept in registers), key tiles of 64:
    /// the default.
    M64,
    /// 128 query rows per block (32 per warp, as FlashAttention-2), Q read from shared memory
    /// for every key tile, key tiles of 32 at head dim 64 and of 16 at head dim 128 (32 spills
    /// at sm_90: the two 16 x 128 accumulators take 128 registers); compiled for those two.
    M128,
}

impl FwdTile {
    /// Both shapes, for benchmarks and tests.
    pub const ALL: [FwdTile; 2] = [FwdTile::M64, FwdTile::M128];

    /// The shape `MMLAB_FA_FWD` names (`m64` or `m128`; unset: `m64`).
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("MMLAB_FA_FWD").as_deref() {
            Err(_) | Ok("") | Ok("m64") => Ok(FwdTile::M64),
            Ok("m128") => Ok(FwdTile::M128),
            Ok(other) => Err(format!("MMLAB_FA_FWD={other}: expected m64 or m128")),
        }
    }

    /// `m64` or `m128`.
    pub fn name(self) -> &'static str {
        match self {
            FwdTile::M64 => "m64",
            FwdTile::M128 => "m128",
        }
    }

    /// The shape a launch for `elem` and `hd` really uses: M128 only where it is compiled
    /// (tensor cores, head dim 64 or 128), M64 elsewhere.
    pub fn resolve(self, elem: Elem, hd: usize) -> Self {
        if self == FwdTile::M128 && tensor_cores(elem, hd) && (hd == 64 || hd == 128) {
            FwdTile::M128
        } else {
            FwdTile::M64
        }
    }

    /// Query rows per block and keys per tile of the tensor-core forward at head dim `hd`.
    fn block(self, hd: usize) -> (usize, usize) {
        match self {
            FwdTile::M64 => (64, 64),
            FwdTile::M128 if hd >= 128 => (128, 16),
            FwdTile::M128 => (128, 32),
        }
    }
}

/// Name of the forward kernel for `elem`, head dim `hd` and block shape `tile`.
pub fn fwd_kernel(elem: Elem, hd: usize, tile: FwdTile) -> String {
    match tile.resolve(elem, hd) {
        FwdTile::M64 => format!("fa_fwd_{}_hd{hd}", elem.suffix()),
        FwdTile::M128 => format!("fa_fwd_{}_m128_hd{hd}", elem.suffix()),
    }
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

/// True when the kernels for `elem` and `hd` (forward, dK/dV and dQ) are the tensor-core ones
/// (bf16, head dim a multiple of 32); otherwise they are the CUDA-core ones.
pub fn tensor_cores(elem: Elem, hd: usize) -> bool {
    elem == Elem::Bf16 && hd.is_multiple_of(32)
}

/// Query rows per block of the forward for `elem`, `hd` and `tile`.
pub fn fwd_block_rows(elem: Elem, hd: usize, tile: FwdTile) -> usize {
    if tensor_cores(elem, hd) {
        tile.resolve(elem, hd).block(hd).0
    } else {
        SIMT_ROWS
    }
}

/// Dynamic shared memory (bytes) a forward kernel launch needs: the tensor-core kernel keeps
/// the Q tile and two stages of K and V (rows padded by 8 elements); the CUDA-core kernel uses
/// static shared memory only.
pub fn fwd_dynamic_smem(elem: Elem, hd: usize, tile: FwdTile) -> usize {
    if tensor_cores(elem, hd) {
        let (bm, bn) = tile.resolve(elem, hd).block(hd);
        (bm + 4 * bn) * (hd + 8) * 2
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
            names.push(fwd_kernel(elem, hd, FwdTile::M64));
            if FwdTile::M128.resolve(elem, hd) == FwdTile::M128 {
                names.push(fwd_kernel(elem, hd, FwdTile::M128));
            }
            names.push(bwd_dkdv_kernel(elem, hd));
            names.push(bwd_dq_kernel(elem, hd));
        }
    }
    names
}

/// Sizes of one attention call: batch, query heads, KV heads, queries, keys, head dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Batch size.
    pub b: usize,
    /// Query heads.
    pub h: usize,
    /// KV heads (`h` is a multiple of it).
    pub kvh: usize,
    /// Queries per sequence.
    pub tq: usize,
    /// Keys per sequence.
    pub tk: usize,
    /// Head dim.
    pub hd: usize,
}

/// One kernel launch: the kernel, its grid and block dimensions and its dynamic shared memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The kernel's name in `flash_attn.cu`.
    pub kernel: String,
    /// Blocks along x, y, z.
    pub grid: [u32; 3],
    /// Threads per block along x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub smem: u32,
}

fn blocks(n: usize, per: usize) -> Result<u32, String> {
    u32::try_from(n.div_ceil(per))
        .map_err(|_| format!("flash attention: grid of {n}/{per} too large"))
}

/// Threads per block of the backward pre-pass (one warp per row).
pub const PRE_THREADS: u32 = 128;

/// The forward launch with block shape `tile`: one block per `fwd_block_rows` queries (x) of
/// each batch row and head (y); causal launches run the x blocks from the last query tile down.
pub fn fwd_launch(elem: Elem, d: &AttnDims, tile: FwdTile) -> Result<Launch, String> {
    Ok(Launch {
        kernel: fwd_kernel(elem, d.hd, tile),
        grid: [
            blocks(d.tq, fwd_block_rows(elem, d.hd, tile))?,
            blocks(d.b * d.h, 1)?,
            1,
        ],
        block: [THREADS, 1, 1],
        smem: u32::try_from(fwd_dynamic_smem(elem, d.hd, tile)).map_err(|e| e.to_string())?,
    })
}

/// The backward pre-pass `D = rowsum(dO * O)`: one warp per (batch, head, query) row.
pub fn bwd_pre_launch(elem: Elem, d: &AttnDims) -> Result<Launch, String> {
    Ok(Launch {
        kernel: bwd_pre_kernel(elem),
        grid: [blocks(d.b * d.h * d.tq, PRE_THREADS as usize / 32)?, 1, 1],
        block: [PRE_THREADS, 1, 1],
        smem: 0,
    })
}

/// Keys per block of the bf16 tensor-core dK/dV kernel.
pub const BWD_DKDV_BLOCK_N: usize = 64;
/// Query rows per tile of the bf16 tensor-core dK/dV kernel (two stages of Q and dO).
pub const BWD_DKDV_BLOCK_M: usize = 32;

/// Dynamic shared memory (bytes) of the dK/dV kernel: the tensor-core kernel keeps the K and V
/// tiles, two stages of Q and dO (rows padded by 8 elements) and two stages of the tile's LSE and
/// D (f32); the CUDA-core one none.
pub fn bwd_dkdv_dynamic_smem(elem: Elem, hd: usize) -> usize {
    if tensor_cores(elem, hd) {
        (2 * BWD_DKDV_BLOCK_N + 4 * BWD_DKDV_BLOCK_M) * (hd + 8) * 2 + 4 * BWD_DKDV_BLOCK_M * 4
    } else {
        0
    }
}

/// dK and dV: one block per 64 (tensor cores: bf16, head dim a multiple of 32) or `SIMT_ROWS`
/// keys (x) of each batch row and KV head (y).
pub fn bwd_dkdv_launch(elem: Elem, d: &AttnDims) -> Result<Launch, String> {
    let rows = if tensor_cores(elem, d.hd) {
        BWD_DKDV_BLOCK_N
    } else {
        SIMT_ROWS
    };
    Ok(Launch {
        kernel: bwd_dkdv_kernel(elem, d.hd),
        grid: [blocks(d.tk, rows)?, blocks(d.b * d.kvh, 1)?, 1],
        block: [THREADS, 1, 1],
        smem: u32::try_from(bwd_dkdv_dynamic_smem(elem, d.hd)).map_err(|e| e.to_string())?,
    })
}

/// Query rows per block of the bf16 tensor-core dQ kernel.
pub const BWD_DQ_BLOCK_M: usize = 64;
/// Keys per tile of the bf16 tensor-core dQ kernel (two stages of K and V in shared memory).
pub const BWD_DQ_BLOCK_N: usize = 32;

/// Dynamic shared memory (bytes) of the dQ kernel: the tensor-core kernel keeps the Q and dO
/// tiles and two stages of K and V (rows padded by 8 elements); the CUDA-core one none.
pub fn bwd_dq_dynamic_smem(elem: Elem, hd: usize) -> usize {
    if tensor_cores(elem, hd) {
        (2 * BWD_DQ_BLOCK_M + 4 * BWD_DQ_BLOCK_N) * (hd + 8) * 2
    } else {
        0
    }
}

/// dQ: one block per 64 (tensor cores: bf16, head dim a multiple of 32) or `SIMT_ROWS` queries
/// (x) of each batch row and head (y); causal launches run the x blocks from the last tile down.
pub fn bwd_dq_launch(elem: Elem, d: &AttnDims) -> Result<Launch, String> {
    let rows = if tensor_cores(elem, d.hd) {
        BWD_DQ_BLOCK_M
    } else {
        SIMT_ROWS
    };
    Ok(Launch {
        kernel: bwd_dq_kernel(elem, d.hd),
        grid: [blocks(d.tq, rows)?, blocks(d.b * d.h, 1)?, 1],
        block: [THREADS, 1, 1],
        smem: u32::try_from(bwd_dq_dynamic_smem(elem, d.hd)).map_err(|e| e.to_string())?,
    })
}

/// Every launch an attention call of head dim `hd` may make, in order: forward (both block
/// shapes; the same launch twice where only one is compiled), then the backward's pre-pass,
/// dK/dV and dQ (sizes from a small call; the kernels and shared memory
/// depend only on `elem` and `hd`).
pub fn all_launches(elem: Elem, hd: usize) -> Result<Vec<Launch>, String> {
    let d = AttnDims {
        b: 1,
        h: 1,
        kvh: 1,
        tq: 1,
        tk: 1,
        hd,
    };
    Ok(vec![
        fwd_launch(elem, &d, FwdTile::M64)?,
        fwd_launch(elem, &d, FwdTile::M128)?,
        bwd_pre_launch(elem, &d)?,
        bwd_dkdv_launch(elem, &d)?,
        bwd_dq_launch(elem, &d)?,
    ])
}

/// Largest head dim `qk_prep.cu` takes (`QP_MAX_HD`).
pub const QK_PREP_MAX_HD: usize = 256;
/// Warps (rows in flight) per block of the `qk_prep.cu` kernels.
pub const QK_PREP_WARPS: usize = 4;
/// Most blocks of the `qk_prep.cu` backward, which walks the rows grid-stride; its dw / dbias
/// partial sums are `(blocks, 2, hd)` f32.
pub const QK_PREP_BWD_MAX_BLOCKS: usize = 1024;

/// Name of the fused QK-norm + rotary forward (`fwd`) or backward for `elem`.
pub fn qk_prep_kernel(elem: Elem, fwd: bool) -> String {
    format!("qp_{}_{}", if fwd { "fwd" } else { "bwd" }, elem.suffix())
}

/// Every kernel `src/kernels/cuda.rs` may launch from `qk_prep.cu`.
pub fn qk_prep_kernels() -> Vec<String> {
    [Elem::F32, Elem::Bf16]
        .into_iter()
        .flat_map(|e| [qk_prep_kernel(e, true), qk_prep_kernel(e, false)])
        .collect()
}

/// The launch of the fused QK-norm + rotary kernel over `rows` rows of head dim `hd`: one warp
/// per row. The forward has a block per [`QK_PREP_WARPS`] rows; the backward at most
/// [`QK_PREP_BWD_MAX_BLOCKS`] blocks, each also holding its warps' dw / dbias sums.
pub fn qk_prep_launch(elem: Elem, fwd: bool, rows: usize, hd: usize) -> Result<Launch, String> {
    if hd == 0 || hd > QK_PREP_MAX_HD {
        return Err(format!(
            "fused QK-norm + rotary: head dim {hd} outside 1..={QK_PREP_MAX_HD}"
        ));
    }
    let warps = QK_PREP_WARPS;
    let per_warp = if fwd { hd } else { 3 * hd };
    let grid = if fwd {
        blocks(rows, warps)?
    } else {
        rows.div_ceil(warps).clamp(1, QK_PREP_BWD_MAX_BLOCKS) as u32
    };
    Ok(Launch {
        kernel: qk_prep_kernel(elem, fwd),
        grid: [grid, 1, 1],
        block: [32 * warps as u32, 1, 1],
        smem: (warps * per_warp * 4) as u32,
    })
}

/// Most blocks of the relu² forward, which walks the elements grid-stride.
pub const RELU2_FWD_MAX_BLOCKS: usize = 1 << 16;
/// Most block rows (`gridDim.y`) of the relu² backward, which walks the rows with that stride;
/// its dbias partial sums are `(block rows, cols)` f32.
pub const RELU2_BWD_MAX_ROW_BLOCKS: usize = 256;

/// Name of the fused bias + relu² forward (`fwd`) or backward for `elem`.
pub fn relu2_kernel(elem: Elem, fwd: bool) -> String {
    format!(
        "ma_relu2_{}_{}",
        if fwd { "fwd" } else { "bwd" },
        elem.suffix()
    )
}

/// Every kernel `src/kernels/cuda.rs` may launch from `mlp_act.cu`.
pub fn mlp_act_kernels() -> Vec<String> {
    [Elem::F32, Elem::Bf16]
        .into_iter()
        .flat_map(|e| [relu2_kernel(e, true), relu2_kernel(e, false)])
        .collect()
}

/// The launch of the fused bias + relu² over a `rows x cols` matmul output: the forward one
/// thread per element (256 per block, grid-stride past [`RELU2_FWD_MAX_BLOCKS`]); the backward
/// 32 x 8 threads per block, a block column per 32 columns and at most
/// [`RELU2_BWD_MAX_ROW_BLOCKS`] block rows.
pub fn relu2_launch(elem: Elem, fwd: bool, rows: usize, cols: usize) -> Result<Launch, String> {
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| format!("relu2: {rows} x {cols} elements overflow"))?;
    if n == 0 || i32::try_from(cols).is_err() {
        return Err(format!("relu2: {rows} x {cols} elements"));
    }
    Ok(if fwd {
        Launch {
            kernel: relu2_kernel(elem, true),
            grid: [n.div_ceil(256).min(RELU2_FWD_MAX_BLOCKS) as u32, 1, 1],
            block: [256, 1, 1],
            smem: 0,
        }
    } else {
        Launch {
            kernel: relu2_kernel(elem, false),
            grid: [
                blocks(cols, 32)?,
                rows.div_ceil(8).min(RELU2_BWD_MAX_ROW_BLOCKS) as u32,
                1,
            ],
            block: [32, 8, 1],
            smem: 0,
        }
    })
}
