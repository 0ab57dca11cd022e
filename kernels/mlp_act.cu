// The MLP's activation after its up-projection, fused: y = relu(z + bias)^2 (Persimmon's and
// Fuyu's relu²) in one pass over the matmul output z, where candle's ops make three (bias add,
// relu, square) forward and about six backward. Compiled at run time with NVRTC
// (src/kernels/cuda/relu2.rs), checked for spills (tests/cuda_nvrtc.rs) and on the CPU emulator
// (tests/cuda_emulated.rs).
//
// Layouts (contiguous, row-major):
//   z, y, dy, dz  (rows, cols)  T    the matmul output, the activation, their gradients
//   bias          (cols)        T    nullptr: none
//   dbias_part    (gridDim.y, cols) f32   per-block-row sums of dz over rows; the caller adds
//                                         the gridDim.y rows up (no atomics: the result does
//                                         not depend on scheduling)
// T: float, or bf16 carried as unsigned short; arithmetic in f32, rounded once on store.
//
// Forward: one thread per element, grid-stride. Backward: blocks of 32 x 8 threads; x walks 32
// columns (coalesced), y the rows with stride 8 * gridDim.y; dz = 2 * relu(z + bias) * dy.

#ifndef FA_EMU
__device__ __forceinline__ unsigned short ma_f32_to_bf16(float f) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}
#else
inline unsigned short ma_f32_to_bf16(float f) { return f32_to_bf16(f); }
#endif

__device__ __forceinline__ float ma_load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ma_load(const unsigned short* p, long long i) {
    return __uint_as_float(((unsigned)p[i]) << 16);
}
__device__ __forceinline__ void ma_store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void ma_store(unsigned short* p, long long i, float v) {
    p[i] = ma_f32_to_bf16(v);
}

#define MA_BWD_COLS 32
#define MA_BWD_ROWS 8

template <typename T>
__device__ __forceinline__ void ma_relu2_fwd(const T* __restrict__ z, const T* __restrict__ bias,
                                             T* __restrict__ y, long long rows, int cols) {
    const long long n = rows * cols;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float v = ma_load(z, i);
        if (bias != nullptr) v += ma_load(bias, i % cols);
        v = v > 0.f ? v : 0.f;
        ma_store(y, i, v * v);
    }
}

template <typename T>
__device__ __forceinline__ void ma_relu2_bwd(const T* __restrict__ z, const T* __restrict__ bias,
                                             const T* __restrict__ dy, T* __restrict__ dz,
                                             float* __restrict__ dbias_part, long long rows,
                                             int cols) {
    __shared__ float part[MA_BWD_ROWS][MA_BWD_COLS];
    const int c = blockIdx.x * MA_BWD_COLS + threadIdx.x;
    const bool live = c < cols;
    const float b = live && bias != nullptr ? ma_load(bias, c) : 0.f;
    float acc = 0.f;
    if (live) {
        for (long long r = (long long)blockIdx.y * MA_BWD_ROWS + threadIdx.y; r < rows;
             r += (long long)gridDim.y * MA_BWD_ROWS) {
            const long long i = r * cols + c;
            float s = ma_load(z, i) + b;
            s = s > 0.f ? s : 0.f;
            const float g = 2.f * s * ma_load(dy, i);
            ma_store(dz, i, g);
            acc += g;
        }
    }
    if (dbias_part == nullptr) return;  // uniform over the block
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && live) {
        float s = 0.f;
        for (int k = 0; k < MA_BWD_ROWS; ++k) s += part[k][threadIdx.x];
        dbias_part[(long long)blockIdx.y * cols + c] = s;
    }
}

#define MA_KERNELS(TN, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) ma_relu2_fwd_##TN(                           \
        const T* z, const T* bias, T* y, long long rows, int cols) {                               \
        ma_relu2_fwd<T>(z, bias, y, rows, cols);                                                   \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) ma_relu2_bwd_##TN(                           \
        const T* z, const T* bias, const T* dy, T* dz, float* dbias_part, long long rows,          \
        int cols) {                                                                                \
        ma_relu2_bwd<T>(z, bias, dy, dz, dbias_part, rows, cols);                                  \
    }

MA_KERNELS(f32, float)
MA_KERNELS(bf16, unsigned short)
