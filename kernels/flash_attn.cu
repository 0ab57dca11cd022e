// FlashAttention-2-style attention, forward and backward, compiled at run time with NVRTC
// (src/kernels/cuda/attention.rs) and checked for register spills at sm_90 on every CI run
// (tests/cuda_nvrtc.rs).
//
// Layouts (all contiguous, row-major):
//   q        (b, h,   tq, hd)      k, v (b, kvh, tk, hd); query head j reads KV head j / (h / kvh)
//   o, do    (b, tq,  h,  hd)      the heads already concatenated, as the CPU op returns them
//   lse      (b, h,   tq)   f32    natural log-sum-exp of each scaled score row (+inf: no key seen)
//   kvalid   (b, tk)        u8     optional key flags (nonzero: a real key), nullptr for none
//   kfirst   (b)            u32    with kvalid: each batch row's first real key (tk when none)
//   causal   key j is visible to query i when j <= i + (tk - tq) (aligned to the end, as with a
//            KV cache)
// Element types: float, or bf16 carried as unsigned short; accumulation is always f32.
//
// Kernels (extern "C", one per element type and head dim):
//   fa_fwd_bf16_hd{32,64,128}   tensor cores (mma.sync m16n8k16), K/V tiles double-buffered in
//                               shared memory with cp.async, online softmax in registers
//   fa_fwd_f32_hd{16,32,64,128} CUDA cores, four threads per query row (and fa_fwd_bf16_hd16:
//                               head dim 16 is too narrow for the tensor-core kernel)
//   fa_bwd_pre_{f32,bf16}       D_i = rowsum(dO_i * O_i)
//   fa_bwd_dkdv_{T}_hd{..}      one block per (batch, KV head, key tile); loops over query tiles
//                               of every query head of the group; recomputes P from the LSE:
//                               tensor cores for bf16 at head dims 32, 64, 128 (64 keys, query
//                               tiles of 32 double-buffered with cp.async), CUDA cores else
//   fa_bwd_dq_{T}_hd{..}        one block per (batch, head, query tile); loops over key tiles:
//                               tensor cores for bf16 at head dims 32, 64, 128 (64 query rows,
//                               key tiles of 32 double-buffered with cp.async), CUDA cores else
// No CUDA headers are included: bf16 conversions and the tensor-core instructions are written
// in PTX, so NVRTC needs no include path.
//
// With FA_EMU defined (kernels/emu/cuda_emu.h, tests/cuda_emulated.rs) the PTX helpers below
// come from the emulator instead, which runs this file's kernels on the CPU: one fiber per CUDA
// thread, warp-level collectives (shuffles, ldmatrix, mma) exchanged through the warp.

#define FA_INF __int_as_float(0x7f800000)
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

typedef unsigned short bf16_t;

#ifndef FA_EMU
#define FA_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

__device__ __forceinline__ float bf16_to_f32(bf16_t x) {
    return __uint_as_float(((unsigned)x) << 16);
}

#ifndef FA_EMU
__device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Two floats into one register of two bf16: `lo` at the lower address.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16 bytes global -> shared, asynchronously; zero-filled when `pred` is false.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
    int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// D += A (16x16 bf16, row) * B (16x8 bf16, col), f32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif  // FA_EMU

__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const bf16_t* p) { return bf16_to_f32(*p); }
__device__ __forceinline__ void store_f32(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f32(bf16_t* p, float v) { *p = f32_to_bf16(v); }

// True when key j is hidden from query i of batch row bi: past the end, after the query under
// the causal rule, or a padded key. `kvalid` (b x tk flags, nonzero for real keys) and `kfirst`
// (each batch row's first real key, tk when none) are both null or both set; a query with no real
// key within its causal limit sees its own key (i + off) alone, as the CPU op's mask has it.
__device__ __forceinline__ bool fa_hidden(int i, int j, int tk, int off, int causal,
                                          const unsigned char* __restrict__ kvalid,
                                          const unsigned* __restrict__ kfirst, int bi) {
    if (j >= tk) return true;
    const int lim = causal && i + off + 1 < tk ? i + off + 1 : tk;
    if (kvalid == nullptr) return j >= lim;
    if ((int)kfirst[bi] >= lim) return j != i + off;
    return j >= lim || kvalid[(size_t)bi * tk + j] == 0;
}

// ---------------------------------------------------------------------------------------------
// Forward, bf16, tensor cores.
//
// Block: 4 warps of MT x 16 query rows, key tiles of BN (the default: MT = 1, BN = 64). Shared
// memory: the Q tile and two stages each of K and V, rows padded by 8 elements so ldmatrix reads
// are free of bank conflicts. Each warp keeps its output accumulators (MT x HD/8 x 4 f32) and a
// score tile (BN/8 x 4 f32) in registers, and with MT = 1 its Q fragments (HD/16 x 4).

#define FWD_BN 64
#define FWD_THREADS 128

// `ROWS` rows of HD bf16 from `g` (rows `stride` elements apart) starting at row `row0` into
// shared memory (rows padded to HD + 8), zero-filled past `rows`.
template <int HD, int ROWS>
__device__ __forceinline__ void tc_load_rows(bf16_t* s, const bf16_t* g, size_t stride, int row0,
                                             int rows, int tid) {
    constexpr int SROW = HD + 8;
    constexpr int CPR = HD / 8;  // 16-byte chunks per row
#pragma unroll
    for (int c = tid; c < ROWS * CPR; c += FWD_THREADS) {
        int r = c / CPR, cc = c % CPR;
        bool ok = row0 + r < rows;
        const bf16_t* src = ok ? g + (size_t)(row0 + r) * stride + cc * 8 : g;
        cp_async16(s + r * SROW + cc * 8, src, ok);
    }
}

// Before key tile t of n_tiles: starts loading tile t + 1 of K and V into the other stage and
// waits for tile t (double buffering; the caller then syncs the block before reading it).
template <int HD, int BN>
__device__ __forceinline__ void tc_kv_pipeline(bf16_t* ks, bf16_t* vs, const bf16_t* kg,
                                               const bf16_t* vg, int t, int n_tiles, int tk,
                                               int tid) {
    if (t + 1 < n_tiles) {
        const int next = ((t + 1) & 1) * BN * (HD + 8);
        tc_load_rows<HD, BN>(ks + next, kg, HD, (t + 1) * BN, tk, tid);
        tc_load_rows<HD, BN>(vs + next, vg, HD, (t + 1) * BN, tk, tid);
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
}

// The A fragments (16 x HD, row-major) of this warp's 16 rows starting at `rows` (shared).
template <int HD>
__device__ __forceinline__ void tc_load_a(unsigned (&a)[HD / 16][4], const bf16_t* rows,
                                          int lane) {
    constexpr int SROW = HD + 8;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
        ldmatrix_x4(a[kk], rows + ((lane & 7) + ((lane >> 3) & 1) * 8) * SROW + kk * 16 +
                               (lane >> 4) * 8);
}

// s[nt] += A R^T for NT tiles of 8 rows of R (shared, HD wide): A is 16 x HD in fragments.
template <int HD, int NT>
__device__ __forceinline__ void tc_a_rt(float (&s)[NT][4], const unsigned (&a)[HD / 16][4],
                                        const bf16_t* rows, int lane) {
    constexpr int SROW = HD + 8;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk += 2) {
            unsigned b[4];
            ldmatrix_x4(b, rows + (nt * 8 + (lane & 7)) * SROW + kk * 16 + (lane >> 3) * 8);
            mma_bf16(s[nt], a[kk][0], a[kk][1], a[kk][2], a[kk][3], b[0], b[1]);
            mma_bf16(s[nt], a[kk + 1][0], a[kk + 1][1], a[kk + 1][2], a[kk + 1][3], b[2], b[3]);
        }
    }
}

// s[nt] += A R^T as tc_a_rt, with A's 16 rows read from shared memory (`arows`) one k-step
// pair at a time: 8 registers for A instead of HD / 4.
template <int HD, int NT>
__device__ __forceinline__ void tc_sa_rt(float (&s)[NT][4], const bf16_t* arows,
                                         const bf16_t* rows, int lane) {
    constexpr int SROW = HD + 8;
    const bf16_t* ar = arows + ((lane & 7) + ((lane >> 3) & 1) * 8) * SROW + (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk += 2) {
        unsigned a[4], c[4];
        ldmatrix_x4(a, ar + kk * 16);
        ldmatrix_x4(c, ar + (kk + 1) * 16);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            unsigned b[4];
            ldmatrix_x4(b, rows + (nt * 8 + (lane & 7)) * SROW + kk * 16 + (lane >> 3) * 8);
            mma_bf16(s[nt], a[0], a[1], a[2], a[3], b[0], b[1]);
            mma_bf16(s[nt], c[0], c[1], c[2], c[3], b[2], b[3]);
        }
    }
}

// acc += X R: X is 16 x (8 NX) in accumulator layout (rounded to bf16 as the A operand), R is
// 8 NX rows of HD (shared).
template <int HD, int NX>
__device__ __forceinline__ void tc_x_r(float (&acc)[HD / 8][4], const float (&x)[NX][4],
                                       const bf16_t* rows, int lane) {
    constexpr int SROW = HD + 8;
#pragma unroll
    for (int kk = 0; kk < NX / 2; ++kk) {
        const unsigned a0 = pack_bf16x2(x[2 * kk][0], x[2 * kk][1]);
        const unsigned a1 = pack_bf16x2(x[2 * kk][2], x[2 * kk][3]);
        const unsigned a2 = pack_bf16x2(x[2 * kk + 1][0], x[2 * kk + 1][1]);
        const unsigned a3 = pack_bf16x2(x[2 * kk + 1][2], x[2 * kk + 1][3]);
        const bf16_t* r =
            rows + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SROW + (lane >> 4) * 8;
#pragma unroll
        for (int d = 0; d < HD / 8; d += 2) {
            unsigned b[4];
            ldmatrix_x4_trans(b, r + d * 8);
            mma_bf16(acc[d], a0, a1, a2, a3, b[0], b[1]);
            mma_bf16(acc[d + 1], a0, a1, a2, a3, b[2], b[3]);
        }
    }
}

// Row `r` (0: g, 1: g + 8) of an accumulator (16 x HD) times `mul`, as bf16 into `out` (HD wide).
template <int HD>
__device__ __forceinline__ void tc_store_row(bf16_t* out, const float (&acc)[HD / 8][4], int r,
                                             float mul, int tig) {
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
        *reinterpret_cast<unsigned*>(out + d * 8 + tig * 2) =
            pack_bf16x2(acc[d][2 * r] * mul, acc[d][2 * r + 1] * mul);
}

template <int HD, int MT, int BN>
__device__ __forceinline__ void fa_fwd_bf16(const bf16_t* __restrict__ q,
                                            const bf16_t* __restrict__ k,
                                            const bf16_t* __restrict__ v, bf16_t* __restrict__ o,
                                            float* __restrict__ lse,
                                            const unsigned char* __restrict__ kvalid,
                                            const unsigned* __restrict__ kfirst, int h, int kvh,
                                            int tq, int tk, float scale, int causal) {
    constexpr int SROW = HD + 8;
    constexpr int KS = HD / 16;  // k-steps of Q K^T
    constexpr int DT = HD / 8;   // n-tiles of the output
    constexpr int NT = BN / 8;
    constexpr int BM = 64 * MT;  // 4 warps of MT x 16 rows
    FA_DYNAMIC_SMEM(fa_smem);
    bf16_t* qs = reinterpret_cast<bf16_t*>(fa_smem);
    bf16_t* ks = qs + BM * SROW;           // 2 stages
    bf16_t* vs = ks + 2 * BN * SROW;       // 2 stages

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, tig = lane % 4;
    const int bh = blockIdx.y, bi = bh / h, hi = bh % h, kvi = hi / (h / kvh);
    const int mt = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int m0 = mt * BM;
    const int off = tk - tq;
    const float sl2 = scale * FA_LOG2E;

    const bf16_t* qg = q + (size_t)bh * tq * HD;
    const bf16_t* kg = k + (size_t)(bi * kvh + kvi) * tk * HD;
    const bf16_t* vg = v + (size_t)(bi * kvh + kvi) * tk * HD;

    int n_tiles = (tk + BN - 1) / BN;
    if (causal) {
        int last = m0 + BM - 1 + off;  // the last key any row of this tile sees
        int lim = last < 0 ? 0 : last / BN + 1;
        n_tiles = n_tiles < lim ? n_tiles : lim;
    }

    tc_load_rows<HD, BM>(qs, qg, HD, m0, tq, tid);
    if (n_tiles > 0) {
        tc_load_rows<HD, BN>(ks, kg, HD, 0, tk, tid);
        tc_load_rows<HD, BN>(vs, vg, HD, 0, tk, tid);
    }
    cp_async_commit();

    // With one row tile per warp its Q fragments stay in registers; with more they are read
    // from shared memory again for every key tile (registers go to the larger accumulator).
    unsigned qf[MT == 1 ? KS : 1][4];
    float acc[MT][DT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int d = 0; d < DT; ++d)
            acc[m][d][0] = acc[m][d][1] = acc[m][d][2] = acc[m][d][3] = 0.f;
    float mrow[MT][2], lrow[MT][2];  // running max (log2 domain); this thread's part of the sum
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        mrow[m][0] = mrow[m][1] = -FA_INF;
        lrow[m][0] = lrow[m][1] = 0.f;
    }
    const int w0 = warp * 16 * MT;  // this warp's first row in the block

    for (int t = 0; t < n_tiles; ++t) {
        const int stage = t & 1;
        tc_kv_pipeline<HD, BN>(ks, vs, kg, vg, t, n_tiles, tk, tid);
        __syncthreads();
        if constexpr (MT == 1) {
            if (t == 0) tc_load_a<HD>(qf, qs + w0 * SROW, lane);
        }
        const bf16_t* kst = ks + stage * BN * SROW;
        const bf16_t* vst = vs + stage * BN * SROW;
        const int n0 = t * BN;
        const bool edge =
            kvalid != nullptr || n0 + BN > tk || (causal && n0 + BN - 1 > m0 + off);

#pragma unroll
        for (int m = 0; m < MT; ++m) {
            const int r_lo = m0 + w0 + m * 16 + g;  // global query rows of this thread
            const int r_hi = r_lo + 8;

            // S = Q K^T for these 16 rows and the tile's keys.
            float s[NT][4];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            if constexpr (MT == 1) {
                tc_a_rt<HD, NT>(s, qf, kst, lane);
            } else {
                tc_sa_rt<HD, NT>(s, qs + (w0 + m * 16) * SROW, kst, lane);
            }

            // Scale to the log2 domain; hide masked keys.
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = e < 2 ? r_lo : r_hi;
                    const int j = n0 + nt * 8 + tig * 2 + (e & 1);
                    float x = s[nt][e] * sl2;
                    if (edge && fa_hidden(i, j, tk, off, causal, kvalid, kfirst, bi)) x = -FA_INF;
                    s[nt][e] = x;
                }
            }

            // Online softmax: each row is shared by the 4 threads of a quad.
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = -FA_INF;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                    mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(mrow[m][r], mx);
                const float muse = mnew == -FA_INF ? 0.f : mnew;
                const float alpha = fa_exp2(mrow[m][r] - muse);
                mrow[m][r] = mnew;
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    s[nt][2 * r] = fa_exp2(s[nt][2 * r] - muse);
                    s[nt][2 * r + 1] = fa_exp2(s[nt][2 * r + 1] - muse);
                    sum += s[nt][2 * r] + s[nt][2 * r + 1];
                }
                lrow[m][r] = lrow[m][r] * alpha + sum;
#pragma unroll
                for (int d = 0; d < DT; ++d) {
                    acc[m][d][2 * r] *= alpha;
                    acc[m][d][2 * r + 1] *= alpha;
                }
            }

            // O += P V: the score accumulators are already laid out as the A operand.
            tc_x_r<HD, NT>(acc[m], s, vst, lane);
        }
        __syncthreads();
    }
    cp_async_wait<0>();

    // Normalise and write O (b, tq, h, hd) and the LSE.
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = lrow[m][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int i = m0 + w0 + m * 16 + g + r * 8;
            const float inv = l > 0.f ? 1.f / l : 0.f;
            if (i < tq) {
                tc_store_row<HD>(o + (((size_t)bi * tq + i) * h + hi) * HD, acc[m], r, inv, tig);
                if (tig == 0)
                    lse[(size_t)bh * tq + i] =
                        l > 0.f ? (mrow[m][r] + __log2f(l)) * FA_LN2 : FA_INF;
            }
        }
    }
}

#define FA_FWD_BF16(HD)                                                                            \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS, 2) fa_fwd_bf16_hd##HD(               \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse,                  \
        const unsigned char* kvalid, const unsigned* kfirst, int h, int kvh, int tq, int tk,       \
        float scale, int causal) {                                                                 \
        fa_fwd_bf16<HD, 1, FWD_BN>(q, k, v, o, lse, kvalid, kfirst, h, kvh, tq, tk, scale,         \
                                   causal);                                                        \
    }
FA_FWD_BF16(32)
FA_FWD_BF16(64)
FA_FWD_BF16(128)

// The same forward with 128 query rows per block (two 16-row tiles per warp, as
// FlashAttention-2 has it) and Q read from shared memory for every key tile: each K and V tile
// is read from shared memory once per 32 query rows instead of 16. Key tiles of 32 at head dim 64
// and of 16 at 128 (32 spills there). A tuning variant: `MMLAB_FA_FWD=m128` selects it, and
// examples/flash_bench.rs measures both.
#define FA_FWD_BF16_M128(HD, BN)                                                                   \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS, 1) fa_fwd_bf16_m128_hd##HD(          \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse,                  \
        const unsigned char* kvalid, const unsigned* kfirst, int h, int kvh, int tq, int tk,       \
        float scale, int causal) {                                                                 \
        fa_fwd_bf16<HD, 2, BN>(q, k, v, o, lse, kvalid, kfirst, h, kvh, tq, tk, scale, causal);    \
    }
FA_FWD_BF16_M128(64, 32)
FA_FWD_BF16_M128(128, 16)

// ---------------------------------------------------------------------------------------------
// CUDA-core kernels (f32 forward; both backward passes for f32 and bf16).
//
// A "row group" is 4 consecutive threads sharing one row (a query row or a key row); thread
// c of the group owns the channels c, c+4, c+8, ... (HD/4 of them), so when the group reads
// one shared-memory row the 4 threads touch 4 consecutive words. Dot products are reduced over
// the group with two shuffles. Tiles of 32 rows, 128 threads per block.

#define SIMT_ROWS 32
#define SIMT_THREADS 128

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    x += __shfl_xor_sync(0xffffffffu, x, 2);
    return x;
}

// Rows [row0, row0 + 32) of a (rows, HD) matrix into shared f32, zeros past the end.
template <typename T, int HD>
__device__ __forceinline__ void simt_load_tile(float* s, const T* g, int row0, int rows, int tid) {
    for (int e = tid; e < SIMT_ROWS * HD; e += SIMT_THREADS) {
        int r = e / HD, c = e % HD;
        s[e] = row0 + r < rows ? load_f32(g + (size_t)(row0 + r) * HD + c) : 0.f;
    }
}

// Forward on CUDA cores: one query row per quad, key tiles of 32 in shared memory.
template <typename T, int HD>
__device__ __forceinline__ void fa_fwd_simt(const T* __restrict__ q, const T* __restrict__ k,
                                            const T* __restrict__ v, T* __restrict__ o,
                                            float* __restrict__ lse,
                                            const unsigned char* __restrict__ kvalid,
                                            const unsigned* __restrict__ kfirst, int h, int kvh,
                                            int tq, int tk, float scale, int causal) {
    constexpr int DPT = HD / 4;
    __shared__ float ks[SIMT_ROWS * HD];
    __shared__ float vs[SIMT_ROWS * HD];
    const int tid = threadIdx.x, c = tid & 3;
    const int bh = blockIdx.y, bi = bh / h, hi = bh % h, kvi = hi / (h / kvh);
    const int mt = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int m0 = mt * SIMT_ROWS;
    const int i = m0 + tid / 4;
    const int off = tk - tq;
    const float sl2 = scale * FA_LOG2E;
    const T* kg = k + (size_t)(bi * kvh + kvi) * tk * HD;
    const T* vg = v + (size_t)(bi * kvh + kvi) * tk * HD;

    float qr[DPT], acc[DPT];
#pragma unroll
    for (int d = 0; d < DPT; ++d) {
        qr[d] = i < tq ? load_f32(q + ((size_t)bh * tq + i) * HD + 4 * d + c) * sl2 : 0.f;
        acc[d] = 0.f;
    }
    float m = -FA_INF, l = 0.f;
    int n_tiles = (tk + SIMT_ROWS - 1) / SIMT_ROWS;
    if (causal) {
        int last = m0 + SIMT_ROWS - 1 + off;
        int lim = last < 0 ? 0 : last / SIMT_ROWS + 1;
        n_tiles = n_tiles < lim ? n_tiles : lim;
    }
    for (int t = 0; t < n_tiles; ++t) {
        const int n0 = t * SIMT_ROWS;
        __syncthreads();
        simt_load_tile<T, HD>(ks, kg, n0, tk, tid);
        simt_load_tile<T, HD>(vs, vg, n0, tk, tid);
        __syncthreads();
        float s[SIMT_ROWS];
        float mx = -FA_INF;
#pragma unroll
        for (int j = 0; j < SIMT_ROWS; ++j) {
            float part = 0.f;
#pragma unroll
            for (int d = 0; d < DPT; ++d) part += qr[d] * ks[j * HD + 4 * d + c];
            float x = quad_sum(part);
            const int jj = n0 + j;
            if (fa_hidden(i, jj, tk, off, causal, kvalid, kfirst, bi)) x = -FA_INF;
            s[j] = x;
            mx = fmaxf(mx, x);
        }
        const float mnew = fmaxf(m, mx);
        const float muse = mnew == -FA_INF ? 0.f : mnew;
        const float alpha = fa_exp2(m - muse);
        m = mnew;
        l *= alpha;
#pragma unroll
        for (int d = 0; d < DPT; ++d) acc[d] *= alpha;
#pragma unroll
        for (int j = 0; j < SIMT_ROWS; ++j) {
            const float p = fa_exp2(s[j] - muse);
            l += p;
#pragma unroll
            for (int d = 0; d < DPT; ++d) acc[d] += p * vs[j * HD + 4 * d + c];
        }
    }
    if (i < tq) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T* orow = o + (((size_t)bi * tq + i) * h + hi) * HD;
#pragma unroll
        for (int d = 0; d < DPT; ++d) store_f32(orow + 4 * d + c, acc[d] * inv);
        if (c == 0) lse[(size_t)bh * tq + i] = l > 0.f ? (m + __log2f(l)) * FA_LN2 : FA_INF;
    }
}

#define FA_FWD_SIMT(TN, T, HD)                                                                     \
    extern "C" __global__ void __launch_bounds__(SIMT_THREADS) fa_fwd_##TN##_hd##HD(               \
        const T* q, const T* k, const T* v, T* o, float* lse, const unsigned char* kvalid,         \
        const unsigned* kfirst, int h, int kvh, int tq, int tk, float scale, int causal) {         \
        fa_fwd_simt<T, HD>(q, k, v, o, lse, kvalid, kfirst, h, kvh, tq, tk, scale, causal);        \
    }
FA_FWD_SIMT(f32, float, 16)
FA_FWD_SIMT(bf16, bf16_t, 16)
FA_FWD_SIMT(f32, float, 32)
FA_FWD_SIMT(f32, float, 64)
FA_FWD_SIMT(f32, float, 128)

// ---------------------------------------------------------------------------------------------
// Backward.

// D[(b, h, i)] = sum_d dO[b, i, h, d] * O[b, i, h, d]; one warp per row.
template <typename T>
__device__ __forceinline__ void fa_bwd_pre(const T* __restrict__ o, const T* __restrict__ dout,
                                           float* __restrict__ dsum, int b, int h, int tq,
                                           int hd) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= b * h * tq) return;
    const int i = row % tq, bh = row / tq, bi = bh / h, hi = bh % h;
    const size_t base = (((size_t)bi * tq + i) * h + hi) * hd;
    float acc = 0.f;
    for (int d = lane; d < hd; d += 32) acc += load_f32(o + base + d) * load_f32(dout + base + d);
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (lane == 0) dsum[row] = acc;
}

#define FA_BWD_PRE(TN, T)                                                                       \
    extern "C" __global__ void fa_bwd_pre_##TN(const T* o, const T* dout, float* dsum, int b,    \
                                               int h, int tq, int hd) {                         \
        fa_bwd_pre<T>(o, dout, dsum, b, h, tq, hd);                                             \
    }
FA_BWD_PRE(f32, float)
FA_BWD_PRE(bf16, bf16_t)

// dK, dV for 32 keys of one (batch, KV head): each quad owns one key row (k, v, dk, dv in
// registers) and walks the query rows of every query head of the group, tile by tile:
//   p = exp(q.k * scale - lse) (0 for hidden keys), dv += p dO, ds = p (dO.v - D) scale,
//   dk += ds q.
template <typename T, int HD>
__device__ __forceinline__ void fa_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k,
                                            const T* __restrict__ v, const T* __restrict__ dout,
                                            const float* __restrict__ lse,
                                            const float* __restrict__ dsum,
                                            const unsigned char* __restrict__ kvalid,
                                            const unsigned* __restrict__ kfirst, T* __restrict__ dk,
                                            T* __restrict__ dv, int h, int kvh, int tq, int tk,
                                            float scale, int causal) {
    constexpr int DPT = HD / 4;
    __shared__ float qs[SIMT_ROWS * HD];
    __shared__ float dos[SIMT_ROWS * HD];
    __shared__ float lse_s[SIMT_ROWS];
    __shared__ float d_s[SIMT_ROWS];
    const int tid = threadIdx.x, c = tid & 3;
    const int bkv = blockIdx.y, bi = bkv / kvh, kvi = bkv % kvh, rep = h / kvh;
    const int n0 = blockIdx.x * SIMT_ROWS;
    const int j = n0 + tid / 4;
    const int off = tk - tq;
    const float sl2 = scale * FA_LOG2E;
    const size_t kv_base = ((size_t)bkv * tk + j) * HD;

    float kr[DPT], vr[DPT], dkr[DPT], dvr[DPT];
#pragma unroll
    for (int d = 0; d < DPT; ++d) {
        kr[d] = j < tk ? load_f32(k + kv_base + 4 * d + c) : 0.f;
        vr[d] = j < tk ? load_f32(v + kv_base + 4 * d + c) : 0.f;
        dkr[d] = 0.f;
        dvr[d] = 0.f;
    }
    // Query rows that can see any key of this tile: i >= n0 - off under the causal rule.
    int first = 0;
    if (causal) {
        int lo = n0 - off;
        first = lo <= 0 ? 0 : (lo / SIMT_ROWS) * SIMT_ROWS;
    }
    for (int r = 0; r < rep; ++r) {
        const int hi = kvi * rep + r;
        const int bh = bi * h + hi;
        for (int m0 = first; m0 < tq; m0 += SIMT_ROWS) {
            __syncthreads();
            for (int e = tid; e < SIMT_ROWS * HD; e += SIMT_THREADS) {
                const int rr = e / HD, cc = e % HD, i = m0 + rr;
                const bool ok = i < tq;
                qs[e] = ok ? load_f32(q + ((size_t)bh * tq + i) * HD + cc) : 0.f;
                dos[e] = ok ? load_f32(dout + (((size_t)bi * tq + i) * h + hi) * HD + cc) : 0.f;
            }
            if (tid < SIMT_ROWS) {
                const int i = m0 + tid;
                lse_s[tid] = i < tq ? lse[(size_t)bh * tq + i] * FA_LOG2E : FA_INF;
                d_s[tid] = i < tq ? dsum[(size_t)bh * tq + i] : 0.f;
            }
            __syncthreads();
            for (int ii = 0; ii < SIMT_ROWS; ++ii) {
                const int i = m0 + ii;
                float part = 0.f, dpart = 0.f;
#pragma unroll
                for (int d = 0; d < DPT; ++d) {
                    part += kr[d] * qs[ii * HD + 4 * d + c];
                    dpart += vr[d] * dos[ii * HD + 4 * d + c];
                }
                const float sc = quad_sum(part);
                const float dp = quad_sum(dpart);
                float x = sc * sl2;
                if (fa_hidden(i, j, tk, off, causal, kvalid, kfirst, bi) || i >= tq) x = -FA_INF;
                const float p = x == -FA_INF ? 0.f : fa_exp2(x - lse_s[ii]);
                const float ds = p * (dp - d_s[ii]) * scale;
#pragma unroll
                for (int d = 0; d < DPT; ++d) {
                    dvr[d] += p * dos[ii * HD + 4 * d + c];
                    dkr[d] += ds * qs[ii * HD + 4 * d + c];
                }
            }
        }
    }
    if (j < tk) {
#pragma unroll
        for (int d = 0; d < DPT; ++d) {
            store_f32(dk + kv_base + 4 * d + c, dkr[d]);
            store_f32(dv + kv_base + 4 * d + c, dvr[d]);
        }
    }
}

// dQ for 32 query rows of one (batch, head): each quad owns one query row (q, dO, dq in
// registers) and walks the key tiles: ds = p (dO.v - D) scale, dq += ds k.
template <typename T, int HD>
__device__ __forceinline__ void fa_bwd_dq(const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v, const T* __restrict__ dout,
                                          const float* __restrict__ lse,
                                          const float* __restrict__ dsum,
                                          const unsigned char* __restrict__ kvalid,
                                          const unsigned* __restrict__ kfirst, T* __restrict__ dq,
                                          int h, int kvh, int tq, int tk, float scale,
                                          int causal) {
    constexpr int DPT = HD / 4;
    __shared__ float ks[SIMT_ROWS * HD];
    __shared__ float vs[SIMT_ROWS * HD];
    const int tid = threadIdx.x, c = tid & 3;
    const int bh = blockIdx.y, bi = bh / h, hi = bh % h, kvi = hi / (h / kvh);
    const int mt = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int m0 = mt * SIMT_ROWS;
    const int i = m0 + tid / 4;
    const int off = tk - tq;
    const float sl2 = scale * FA_LOG2E;
    const T* kg = k + (size_t)(bi * kvh + kvi) * tk * HD;
    const T* vg = v + (size_t)(bi * kvh + kvi) * tk * HD;

    float qr[DPT], dor[DPT], dqr[DPT];
    const bool row_ok = i < tq;
#pragma unroll
    for (int d = 0; d < DPT; ++d) {
        qr[d] = row_ok ? load_f32(q + ((size_t)bh * tq + i) * HD + 4 * d + c) : 0.f;
        dor[d] = row_ok ? load_f32(dout + (((size_t)bi * tq + i) * h + hi) * HD + 4 * d + c) : 0.f;
        dqr[d] = 0.f;
    }
    const float lse2 = row_ok ? lse[(size_t)bh * tq + i] * FA_LOG2E : FA_INF;
    const float dsi = row_ok ? dsum[(size_t)bh * tq + i] : 0.f;
    int n_tiles = (tk + SIMT_ROWS - 1) / SIMT_ROWS;
    if (causal) {
        int last = m0 + SIMT_ROWS - 1 + off;
        int lim = last < 0 ? 0 : last / SIMT_ROWS + 1;
        n_tiles = n_tiles < lim ? n_tiles : lim;
    }
    for (int t = 0; t < n_tiles; ++t) {
        const int n0 = t * SIMT_ROWS;
        __syncthreads();
        simt_load_tile<T, HD>(ks, kg, n0, tk, tid);
        simt_load_tile<T, HD>(vs, vg, n0, tk, tid);
        __syncthreads();
        for (int jj = 0; jj < SIMT_ROWS; ++jj) {
            const int j = n0 + jj;
            float part = 0.f, dpart = 0.f;
#pragma unroll
            for (int d = 0; d < DPT; ++d) {
                part += qr[d] * ks[jj * HD + 4 * d + c];
                dpart += dor[d] * vs[jj * HD + 4 * d + c];
            }
            const float sc = quad_sum(part);
            const float dp = quad_sum(dpart);
            float x = sc * sl2;
            if (fa_hidden(i, j, tk, off, causal, kvalid, kfirst, bi) || !row_ok) x = -FA_INF;
            const float p = x == -FA_INF ? 0.f : fa_exp2(x - lse2);
            const float ds = p * (dp - dsi) * scale;
#pragma unroll
            for (int d = 0; d < DPT; ++d) dqr[d] += ds * ks[jj * HD + 4 * d + c];
        }
    }
    if (row_ok) {
#pragma unroll
        for (int d = 0; d < DPT; ++d) store_f32(dq + ((size_t)bh * tq + i) * HD + 4 * d + c, dqr[d]);
    }
}

// dQ on tensor cores (bf16, head dims 32, 64, 128): one block per (batch, head, 64 query rows),
// 4 warps of 16 rows, key tiles of 32 with K and V double-buffered in shared memory (cp.async).
// Per tile, in registers: S = Q K^T, P = exp2(S scale log2e - lse2) (0 where hidden),
// dP = dO V^T, dS = P (dP - D) scale, then dQ += dS K with dS rounded to bf16 as the A operand.
#define BDQ_BM 64
#define BDQ_BN 32

template <int HD>
__device__ __forceinline__ void fa_bwd_dq_tc(const bf16_t* __restrict__ q,
                                             const bf16_t* __restrict__ k,
                                             const bf16_t* __restrict__ v,
                                             const bf16_t* __restrict__ dout,
                                             const float* __restrict__ lse,
                                             const float* __restrict__ dsum,
                                             const unsigned char* __restrict__ kvalid,
                                             const unsigned* __restrict__ kfirst,
                                             bf16_t* __restrict__ dq, int h, int kvh, int tq,
                                             int tk, float scale, int causal) {
    constexpr int SROW = HD + 8;
    constexpr int KS = HD / 16;
    constexpr int DT = HD / 8;
    constexpr int NT = BDQ_BN / 8;
    FA_DYNAMIC_SMEM(fa_smem);
    bf16_t* qs = reinterpret_cast<bf16_t*>(fa_smem);
    bf16_t* dos = qs + BDQ_BM * SROW;
    bf16_t* ks = dos + BDQ_BM * SROW;      // 2 stages
    bf16_t* vs = ks + 2 * BDQ_BN * SROW;   // 2 stages

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, tig = lane % 4;
    const int bh = blockIdx.y, bi = bh / h, hi = bh % h, kvi = hi / (h / kvh);
    const int mt = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int m0 = mt * BDQ_BM;
    const int off = tk - tq;
    const float sl2 = scale * FA_LOG2E;

    const bf16_t* qg = q + (size_t)bh * tq * HD;
    const bf16_t* dog = dout + ((size_t)bi * tq * h + hi) * HD;  // rows h * HD apart
    const bf16_t* kg = k + (size_t)(bi * kvh + kvi) * tk * HD;
    const bf16_t* vg = v + (size_t)(bi * kvh + kvi) * tk * HD;

    int n_tiles = (tk + BDQ_BN - 1) / BDQ_BN;
    if (causal) {
        int last = m0 + BDQ_BM - 1 + off;
        int lim = last < 0 ? 0 : last / BDQ_BN + 1;
        n_tiles = n_tiles < lim ? n_tiles : lim;
    }

    tc_load_rows<HD, BDQ_BM>(qs, qg, HD, m0, tq, tid);
    tc_load_rows<HD, BDQ_BM>(dos, dog, (size_t)h * HD, m0, tq, tid);
    if (n_tiles > 0) {
        tc_load_rows<HD, BDQ_BN>(ks, kg, HD, 0, tk, tid);
        tc_load_rows<HD, BDQ_BN>(vs, vg, HD, 0, tk, tid);
    }
    cp_async_commit();

    const int r_lo = m0 + warp * 16 + g;
    const int r_hi = r_lo + 8;
    float lse2[2], dd[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = r == 0 ? r_lo : r_hi;
        lse2[r] = i < tq ? lse[(size_t)bh * tq + i] * FA_LOG2E : FA_INF;
        dd[r] = i < tq ? dsum[(size_t)bh * tq + i] : 0.f;
    }

    unsigned qf[KS][4], df[KS][4];
    float acc[DT][4];
#pragma unroll
    for (int d = 0; d < DT; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.f;

    for (int t = 0; t < n_tiles; ++t) {
        const int stage = t & 1;
        tc_kv_pipeline<HD, BDQ_BN>(ks, vs, kg, vg, t, n_tiles, tk, tid);
        __syncthreads();
        if (t == 0) {
            tc_load_a<HD>(qf, qs + warp * 16 * SROW, lane);
            tc_load_a<HD>(df, dos + warp * 16 * SROW, lane);
        }
        const bf16_t* kst = ks + stage * BDQ_BN * SROW;
        const bf16_t* vst = vs + stage * BDQ_BN * SROW;
        const int n0 = t * BDQ_BN;

        // S = Q K^T and dP = dO V^T for this warp's 16 rows and the tile's keys.
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
        }
        tc_a_rt<HD, NT>(s, qf, kst, lane);
        tc_a_rt<HD, NT>(dp, df, vst, lane);

        // dS = P (dP - D) scale, in place of S.
        const bool edge = kvalid != nullptr || n0 + BDQ_BN > tk ||
                          (causal && n0 + BDQ_BN - 1 > m0 + off);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e < 2 ? 0 : 1;
                const int i = r == 0 ? r_lo : r_hi;
                const int j = n0 + nt * 8 + tig * 2 + (e & 1);
                float x = s[nt][e] * sl2;
                if (edge && fa_hidden(i, j, tk, off, causal, kvalid, kfirst, bi)) x = -FA_INF;
                const float p = x == -FA_INF ? 0.f : fa_exp2(x - lse2[r]);
                s[nt][e] = p * (dp[nt][e] - dd[r]) * scale;
            }
        }

        // dQ += dS K: dS's accumulators are already laid out as the A operand.
        tc_x_r<HD, NT>(acc, s, kst, lane);
        __syncthreads();
    }
    cp_async_wait<0>();

    // dQ (b, h, tq, hd).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = r == 0 ? r_lo : r_hi;
        if (i < tq) tc_store_row<HD>(dq + ((size_t)bh * tq + i) * HD, acc, r, 1.f, tig);
    }
}

// dK and dV on tensor cores (bf16, head dims 32, 64, 128): one block per (batch, KV head, 64
// keys), 4 warps of 16 keys; it walks the query tiles (32 rows) of every query head of the
// group, Q and dO double-buffered in shared memory (cp.async), K and V resident there. Per query
// tile, in registers (the transposed problem, keys as rows):
//   S^T = K Q^T, P^T = exp2(S^T scale log2e - lse2) (0 where hidden), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T (dP^T - D) scale, dK += dS^T Q.
#define BKV_BN 64
#define BKV_BM 32

template <int HD>
__device__ __forceinline__ void fa_bwd_dkdv_tc(const bf16_t* __restrict__ q,
                                               const bf16_t* __restrict__ k,
                                               const bf16_t* __restrict__ v,
                                               const bf16_t* __restrict__ dout,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ dsum,
                                               const unsigned char* __restrict__ kvalid,
                                               const unsigned* __restrict__ kfirst,
                                               bf16_t* __restrict__ dk, bf16_t* __restrict__ dv,
                                               int h, int kvh, int tq, int tk, float scale,
                                               int causal) {
    constexpr int SROW = HD + 8;
    constexpr int KS = HD / 16;
    constexpr int DT = HD / 8;
    constexpr int NT = BKV_BM / 8;
    FA_DYNAMIC_SMEM(fa_smem);
    bf16_t* ks = reinterpret_cast<bf16_t*>(fa_smem);
    bf16_t* vs = ks + BKV_BN * SROW;
    bf16_t* qs = vs + BKV_BN * SROW;       // 2 stages
    bf16_t* dos = qs + 2 * BKV_BM * SROW;  // 2 stages
    float* lse_s = reinterpret_cast<float*>(dos + 2 * BKV_BM * SROW);  // 2 stages
    float* d_s = lse_s + 2 * BKV_BM;                                   // 2 stages

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, tig = lane % 4;
    const int bkv = blockIdx.y, bi = bkv / kvh, kvi = bkv % kvh, rep = h / kvh;
    const int n0 = blockIdx.x * BKV_BN;
    const int off = tk - tq;
    const float sl2 = scale * FA_LOG2E;

    // Query tiles that can see a key of this block: i >= n0 - off under the causal rule.
    int first = 0;
    if (causal) {
        const int lo = n0 - off;
        first = lo <= 0 ? 0 : lo / BKV_BM;
    }
    const int q_tiles = (tq + BKV_BM - 1) / BKV_BM;
    const int per_head = q_tiles > first ? q_tiles - first : 0;
    const int total = rep * per_head;

    const bf16_t* kg = k + (size_t)bkv * tk * HD;
    const bf16_t* vg = v + (size_t)bkv * tk * HD;
    tc_load_rows<HD, BKV_BN>(ks, kg, HD, n0, tk, tid);
    tc_load_rows<HD, BKV_BN>(vs, vg, HD, n0, tk, tid);
    // Step u of the walk: query head kvi * rep + u / per_head, query tile first + u % per_head.
    auto issue = [&](int u, int stage) {
        const int hi = kvi * rep + u / per_head;
        const int m0 = (first + u % per_head) * BKV_BM;
        tc_load_rows<HD, BKV_BM>(qs + stage * BKV_BM * SROW, q + ((size_t)bi * h + hi) * tq * HD,
                                 HD, m0, tq, tid);
        tc_load_rows<HD, BKV_BM>(dos + stage * BKV_BM * SROW,
                                 dout + ((size_t)bi * tq * h + hi) * HD, (size_t)h * HD, m0, tq,
                                 tid);
    };
    if (total > 0) issue(0, 0);
    cp_async_commit();

    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int d = 0; d < DT; ++d) {
        dka[d][0] = dka[d][1] = dka[d][2] = dka[d][3] = 0.f;
        dva[d][0] = dva[d][1] = dva[d][2] = dva[d][3] = 0.f;
    }
    const int j_lo = n0 + warp * 16 + g;  // this thread's key rows
    const int arow = (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SROW + (lane >> 4) * 8;

    for (int u = 0; u < total; ++u) {
        const int stage = u & 1;
        const int hi = kvi * rep + u / per_head;
        const int bh = bi * h + hi;
        const int m0 = (first + u % per_head) * BKV_BM;
        if (u + 1 < total) {
            issue(u + 1, stage ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        if (tid < BKV_BM) {
            const int i = m0 + tid;
            lse_s[stage * BKV_BM + tid] = i < tq ? lse[(size_t)bh * tq + i] * FA_LOG2E : FA_INF;
            d_s[stage * BKV_BM + tid] = i < tq ? dsum[(size_t)bh * tq + i] : 0.f;
        }
        __syncthreads();
        const bf16_t* qst = qs + stage * BKV_BM * SROW;
        const bf16_t* dost = dos + stage * BKV_BM * SROW;
        const float* lst = lse_s + stage * BKV_BM;
        const float* dst = d_s + stage * BKV_BM;

        // S^T = K Q^T and dP^T = V dO^T: 16 keys x 32 queries per warp.
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            dp[nt][0] = dp[nt][1] = dp[nt][2] = dp[nt][3] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < KS; kk += 2) {
            unsigned ka[4], kb[4], va[4], vb[4];
            ldmatrix_x4(ka, ks + arow + kk * 16);
            ldmatrix_x4(kb, ks + arow + (kk + 1) * 16);
            ldmatrix_x4(va, vs + arow + kk * 16);
            ldmatrix_x4(vb, vs + arow + (kk + 1) * 16);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int boff = (nt * 8 + (lane & 7)) * SROW + kk * 16 + (lane >> 3) * 8;
                unsigned b[4];
                ldmatrix_x4(b, qst + boff);
                mma_bf16(s[nt], ka[0], ka[1], ka[2], ka[3], b[0], b[1]);
                mma_bf16(s[nt], kb[0], kb[1], kb[2], kb[3], b[2], b[3]);
                ldmatrix_x4(b, dost + boff);
                mma_bf16(dp[nt], va[0], va[1], va[2], va[3], b[0], b[1]);
                mma_bf16(dp[nt], vb[0], vb[1], vb[2], vb[3], b[2], b[3]);
            }
        }

        // P^T in place of S^T; dS^T in place of dP^T.
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = j_lo + (e >> 1) * 8;
                const int c = nt * 8 + tig * 2 + (e & 1);
                const int i = m0 + c;
                float x = s[nt][e] * sl2;
                if (fa_hidden(i, j, tk, off, causal, kvalid, kfirst, bi)) x = -FA_INF;
                const float p = x == -FA_INF ? 0.f : fa_exp2(x - lst[c]);
                s[nt][e] = p;
                dp[nt][e] = p * (dp[nt][e] - dst[c]) * scale;
            }
        }

        // dV += P^T dO and dK += dS^T Q: the accumulators are laid out as the A operand.
        tc_x_r<HD, NT>(dva, s, dost, lane);
        tc_x_r<HD, NT>(dka, dp, qst, lane);
        __syncthreads();
    }
    cp_async_wait<0>();

    // dK, dV (b, kvh, tk, hd).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = j_lo + r * 8;
        if (j < tk) {
            const size_t row = ((size_t)bkv * tk + j) * HD;
            tc_store_row<HD>(dk + row, dka, r, 1.f, tig);
            tc_store_row<HD>(dv + row, dva, r, 1.f, tig);
        }
    }
}

#define FA_BWD_DKDV(TN, T, HD)                                                                     \
    extern "C" __global__ void __launch_bounds__(SIMT_THREADS) fa_bwd_dkdv_##TN##_hd##HD(          \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dsum,    \
        const unsigned char* kvalid, const unsigned* kfirst, T* dk, T* dv, int h, int kvh,         \
        int tq, int tk, float scale, int causal) {                                                 \
        fa_bwd_dkdv<T, HD>(q, k, v, dout, lse, dsum, kvalid, kfirst, dk, dv, h, kvh, tq, tk,       \
                           scale, causal);                                                         \
    }
#define FA_BWD_DQ(TN, T, HD)                                                                       \
    extern "C" __global__ void __launch_bounds__(SIMT_THREADS) fa_bwd_dq_##TN##_hd##HD(            \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* dsum,    \
        const unsigned char* kvalid, const unsigned* kfirst, T* dq, int h, int kvh, int tq,        \
        int tk, float scale, int causal) {                                                         \
        fa_bwd_dq<T, HD>(q, k, v, dout, lse, dsum, kvalid, kfirst, dq, h, kvh, tq, tk, scale,      \
                         causal);                                                                  \
    }
#define FA_BWD_DQ_TC(HD)                                                                           \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS, 1) fa_bwd_dq_bf16_hd##HD(            \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,   \
        const float* dsum, const unsigned char* kvalid, const unsigned* kfirst, bf16_t* dq,        \
        int h, int kvh, int tq, int tk, float scale, int causal) {                                 \
        fa_bwd_dq_tc<HD>(q, k, v, dout, lse, dsum, kvalid, kfirst, dq, h, kvh, tq, tk, scale,      \
                         causal);                                                                  \
    }
FA_BWD_DKDV(f32, float, 16)
FA_BWD_DKDV(f32, float, 32)
FA_BWD_DKDV(f32, float, 64)
FA_BWD_DKDV(f32, float, 128)
FA_BWD_DKDV(bf16, bf16_t, 16)
#define FA_BWD_DKDV_TC(HD)                                                                         \
    extern "C" __global__ void __launch_bounds__(FWD_THREADS, 1) fa_bwd_dkdv_bf16_hd##HD(          \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,   \
        const float* dsum, const unsigned char* kvalid, const unsigned* kfirst, bf16_t* dk,        \
        bf16_t* dv, int h, int kvh, int tq, int tk, float scale, int causal) {                     \
        fa_bwd_dkdv_tc<HD>(q, k, v, dout, lse, dsum, kvalid, kfirst, dk, dv, h, kvh, tq, tk,       \
                           scale, causal);                                                         \
    }
FA_BWD_DKDV_TC(32)
FA_BWD_DKDV_TC(64)
FA_BWD_DKDV_TC(128)
FA_BWD_DQ(f32, float, 16)
FA_BWD_DQ(f32, float, 32)
FA_BWD_DQ(f32, float, 64)
FA_BWD_DQ(f32, float, 128)
FA_BWD_DQ(bf16, bf16_t, 16)
FA_BWD_DQ_TC(32)
FA_BWD_DQ_TC(64)
FA_BWD_DQ_TC(128)
