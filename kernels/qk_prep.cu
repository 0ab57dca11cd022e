// Query/key preparation before attention, fused: the optional QK-LayerNorm over the head dim,
// the rotary position embedding (GPT-NeoX / Persimmon halves on the first `rot` channels,
// the rest passed through) and the move from the projection's layout to the attention kernels'
// one. candle's ops take about sixteen passes over q or k for the same (the norm's mean,
// centring, variance, scaling, weight and bias; rotary's narrows, four products, sums and
// concatenation; the transpose copy); here each row is read once and written once. Compiled
// at run time with NVRTC (src/kernels/cuda/qk_prep.rs), checked for spills with the other kernels
// (tests/cuda_nvrtc.rs) and on the CPU emulator (tests/cuda_emulated.rs).
//
// Layouts (contiguous, row-major):
//   x, dx      (b, t, n, hd)  T   the projection's output, heads not split out yet
//   y, dy      (b, n, t, hd)  T   as the attention kernels take q and k
//   cosv, sinv (b, t, rot/2)  T   rotary tables gathered for each position (rot = 0: none)
//   w, bias    (hd)           T   LayerNorm weight and bias; w == nullptr: no norm
//   dwb        (gridDim.x, 2, hd) f32   per-block sums of dw (row 0) and dbias (row 1); the
//                                       caller adds the blocks up (no atomics: the result does
//                                       not depend on scheduling)
// T: float, or bf16 carried as unsigned short; arithmetic in f32, rounded once on store.
// One warp per row, any head dim up to QP_MAX_HD. Dynamic shared memory: a row of floats per
// warp, plus, in the backward, 2 x hd floats per warp for the block's dw / dbias sums.
//
// Backward: the rotation is orthogonal, so its gradient is the inverse rotation of dy; then
// LayerNorm's: with u the un-rotated gradient and xh = (x - mean) * rstd (recomputed from x),
//   dw += u * xh, dbias += u, dx = rstd * (u*w - mean(u*w) - xh * mean(u*w*xh)).

#define QP_MAX_HD 256
#define QP_PER_LANE (QP_MAX_HD / 32)

#ifndef FA_EMU
#define QP_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

__device__ __forceinline__ unsigned short qp_f32_to_bf16(float f) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}
#else
#define QP_DYNAMIC_SMEM(name) FA_DYNAMIC_SMEM(name)
inline unsigned short qp_f32_to_bf16(float f) { return f32_to_bf16(f); }
#endif

__device__ __forceinline__ float qp_load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float qp_load(const unsigned short* p, long long i) {
    return __uint_as_float(((unsigned)p[i]) << 16);
}
__device__ __forceinline__ void qp_store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void qp_store(unsigned short* p, long long i, float v) {
    p[i] = qp_f32_to_bf16(v);
}

__device__ __forceinline__ float qp_warp_sum(float v) {
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

// Row r of the output order (bi, hi, ti) -> offset of its row in x's (b, t, n, hd) layout, and
// of its rotary tables.
struct QpRow {
    long long x_off;
    long long tab_off;
};

__device__ __forceinline__ QpRow qp_row(long long r, int t, int n, int hd, int half) {
    const long long ti = r % t;
    const long long bh = r / t;
    const long long hi = bh % n;
    const long long bi = bh / n;
    return QpRow{((bi * t + ti) * n + hi) * hd, (bi * t + ti) * half};
}

// Mean and 1 / sqrt(var + eps) of the row held in `row` (every lane's elements), as
// LayerNorm computes them (biased variance).
__device__ __forceinline__ void qp_moments(const float* row, int hd, float eps, int lane,
                                           float& mean, float& rstd) {
    float s = 0.f;
    for (int i = lane; i < hd; i += 32) s += row[i];
    mean = qp_warp_sum(s) / (float)hd;
    float s2 = 0.f;
    for (int i = lane; i < hd; i += 32) {
        const float d = row[i] - mean;
        s2 += d * d;
    }
    rstd = 1.f / sqrtf(qp_warp_sum(s2) / (float)hd + eps);
}

template <typename T>
__device__ __forceinline__ void qp_fwd(const T* __restrict__ x, const T* __restrict__ w,
                                       const T* __restrict__ bias, const T* __restrict__ cosv,
                                       const T* __restrict__ sinv, T* __restrict__ y, int b, int t,
                                       int n, int hd, int rot, float eps) {
    QP_DYNAMIC_SMEM(smem);
    const int warps = blockDim.x / 32;
    const int lane = threadIdx.x % 32;
    float* row = reinterpret_cast<float*>(smem) + (threadIdx.x / 32) * hd;
    const long long rows = (long long)b * n * t;
    const long long r = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (r >= rows) return;  // the whole warp: no block-wide barrier below
    const int half = rot / 2;
    const QpRow at = qp_row(r, t, n, hd, half);

    for (int i = lane; i < hd; i += 32) row[i] = qp_load(x, at.x_off + i);
    if (w != nullptr) {
        float mean, rstd;
        qp_moments(row, hd, eps, lane, mean, rstd);
        for (int i = lane; i < hd; i += 32) {
            const float bi = bias != nullptr ? qp_load(bias, i) : 0.f;
            row[i] = (row[i] - mean) * rstd * qp_load(w, i) + bi;
        }
    }
    __syncwarp();  // the rotation reads its partner channel, written by another lane
    for (int i = lane; i < hd; i += 32) {
        float v = row[i];
        if (i < half) {
            v = v * qp_load(cosv, at.tab_off + i) - row[i + half] * qp_load(sinv, at.tab_off + i);
        } else if (i < rot) {
            const int j = i - half;
            v = v * qp_load(cosv, at.tab_off + j) + row[j] * qp_load(sinv, at.tab_off + j);
        }
        qp_store(y, r * hd + i, v);
    }
}

template <typename T>
__device__ __forceinline__ void qp_bwd(const T* __restrict__ x, const T* __restrict__ w,
                                       const T* __restrict__ cosv, const T* __restrict__ sinv,
                                       const T* __restrict__ dy, T* __restrict__ dx,
                                       float* __restrict__ dwb, int b, int t, int n, int hd,
                                       int rot, float eps) {
    QP_DYNAMIC_SMEM(smem);
    const int warps = blockDim.x / 32;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    float* row = reinterpret_cast<float*>(smem) + warp * hd;
    float* part = reinterpret_cast<float*>(smem) + warps * hd;  // (warps, 2, hd)
    const long long rows = (long long)b * n * t;
    const int half = rot / 2;
    const bool norm = w != nullptr;

    float dw_acc[QP_PER_LANE], db_acc[QP_PER_LANE];
#pragma unroll
    for (int m = 0; m < QP_PER_LANE; ++m) dw_acc[m] = db_acc[m] = 0.f;

    for (long long r = (long long)blockIdx.x * warps + warp; r < rows;
         r += (long long)gridDim.x * warps) {
        const QpRow at = qp_row(r, t, n, hd, half);
        __syncwarp();  // every lane is done with the previous row's `row`
        for (int i = lane; i < hd; i += 32) row[i] = qp_load(dy, r * hd + i);
        __syncwarp();
        // u: dy rotated back (the transpose of the forward's rotation).
        float u[QP_PER_LANE];
#pragma unroll
        for (int m = 0; m < QP_PER_LANE; ++m) {
            const int i = lane + 32 * m;
            if (i >= hd) break;
            float v = row[i];
            if (i < half) {
                v = v * qp_load(cosv, at.tab_off + i) + row[i + half] * qp_load(sinv, at.tab_off + i);
            } else if (i < rot) {
                const int j = i - half;
                v = v * qp_load(cosv, at.tab_off + j) - row[j] * qp_load(sinv, at.tab_off + j);
            }
            u[m] = v;
        }
        if (!norm) {
#pragma unroll
            for (int m = 0; m < QP_PER_LANE; ++m) {
                const int i = lane + 32 * m;
                if (i >= hd) break;
                qp_store(dx, at.x_off + i, u[m]);
            }
            continue;
        }
        __syncwarp();  // `row` now takes x
        for (int i = lane; i < hd; i += 32) row[i] = qp_load(x, at.x_off + i);
        float mean, rstd;
        qp_moments(row, hd, eps, lane, mean, rstd);
        float sa = 0.f, sb = 0.f;
#pragma unroll
        for (int m = 0; m < QP_PER_LANE; ++m) {
            const int i = lane + 32 * m;
            if (i >= hd) break;
            const float xh = (row[i] - mean) * rstd;
            const float g = u[m] * qp_load(w, i);
            dw_acc[m] += u[m] * xh;
            db_acc[m] += u[m];
            sa += g;
            sb += g * xh;
        }
        sa = qp_warp_sum(sa) / (float)hd;
        sb = qp_warp_sum(sb) / (float)hd;
#pragma unroll
        for (int m = 0; m < QP_PER_LANE; ++m) {
            const int i = lane + 32 * m;
            if (i >= hd) break;
            const float xh = (row[i] - mean) * rstd;
            qp_store(dx, at.x_off + i, rstd * (u[m] * qp_load(w, i) - sa - xh * sb));
        }
    }
    if (!norm) return;  // uniform over the block
#pragma unroll
    for (int m = 0; m < QP_PER_LANE; ++m) {
        const int i = lane + 32 * m;
        if (i >= hd) break;
        part[(warp * 2) * hd + i] = dw_acc[m];
        part[(warp * 2 + 1) * hd + i] = db_acc[m];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * hd; i += blockDim.x) {
        float s = 0.f;
        for (int k = 0; k < warps; ++k) s += part[k * 2 * hd + i];
        dwb[(long long)blockIdx.x * 2 * hd + i] = s;
    }
}

#define QP_KERNELS(TN, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(128) qp_fwd_##TN(                                 \
        const T* x, const T* w, const T* bias, const T* cosv, const T* sinv, T* y, int b, int t,   \
        int n, int hd, int rot, float eps) {                                                       \
        qp_fwd<T>(x, w, bias, cosv, sinv, y, b, t, n, hd, rot, eps);                               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(128) qp_bwd_##TN(                                 \
        const T* x, const T* w, const T* cosv, const T* sinv, const T* dy, T* dx, float* dwb,      \
        int b, int t, int n, int hd, int rot, float eps) {                                         \
        qp_bwd<T>(x, w, cosv, sinv, dy, dx, dwb, b, t, n, hd, rot, eps);                           \
    }

QP_KERNELS(f32, float)
QP_KERNELS(bf16, unsigned short)
