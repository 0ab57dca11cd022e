// A CPU emulator of the parts of CUDA that kernels/*.cu use, so their kernels run and
// are checked against the CPU attention on machines without a GPU (tests/cuda_emulated.rs).
//
// Model:
// - Every CUDA thread of a block is a fiber (its own stack) on one OS thread; blocks run one after
//   another. A fiber runs until it reaches a synchronisation point: `__syncthreads()` (all
//   threads of the block that have not exited) or a warp collective (`__syncwarp`,
//   `__shfl_xor_sync`, `ldmatrix`, `mma`: all 32 lanes of the warp). Whatever cannot be released is reported as a
//   deadlock (divergent barriers), and a warp collective with an exited lane is an error.
// - Between synchronisation points fibers run in lane order, or in reverse order
//   (`fa_emu_launch(..., reverse = 1)`): a kernel whose result depends on that order has a race.
// - `cp.async` copies are deferred until the issuing thread's `cp.async.wait_group` lets them
//   complete, so a read of shared memory before the wait sees stale bytes, as it may on a GPU.
//   Its addresses must be 16-byte aligned, as must every `ldmatrix` row address.
// - Dynamic shared memory is filled with 0xff bytes (NaN as f32 and as bf16) before each block.
// - `mma.m16n8k16` (bf16 in, f32 accumulate) and `ldmatrix .x4 [.trans]` follow the fragment
//   layouts of the PTX ISA (Warp-level matrix fragments); `ex2.approx` is `exp2f`, and bf16
//   conversions round to nearest even.
// - `__shared__` variables are function statics, shared by the blocks, which run in turn.
#pragma once

#include <ucontext.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#define FA_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};

inline uint3 threadIdx, blockIdx, blockDim, gridDim;

inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline float __log2f(float x) { return std::log2(x); }

// Context switches. On x86-64 a hand-written switch (callee-saved registers, MXCSR and the x87
// control word, as the System V ABI requires): ucontext's swapcontext also saves the signal
// mask with a system call per switch, which made the emulator several times slower.
#if defined(__x86_64__) && !defined(FA_EMU_UCONTEXT)
#define FA_EMU_FAST_SWITCH 1
extern "C" void fa_emu_switch(void** save_sp, void* new_sp);
asm(R"(
    .text
    .p2align 4
    .globl fa_emu_switch
    .hidden fa_emu_switch
    .type fa_emu_switch, @function
fa_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fa_emu_switch, .-fa_emu_switch
)");
#endif

namespace emu {

enum class State { Ready, WaitWarp, WaitBlock, Done, Failed };

struct Copy {
    void* dst;
    const void* src;
    int n;  // bytes copied; the rest of the 16 are zero-filled
};

struct Fiber {
#ifdef FA_EMU_FAST_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    std::unique_ptr<char[]> stack;
    uint3 tid;
    unsigned lin;
    State state;
    std::vector<Copy> open;                  // issued, not committed
    std::vector<std::vector<Copy>> groups;   // committed, oldest first
};

// Per-warp exchange area for collectives.
struct WarpScratch {
    unsigned words[32][8];
    float f[32];
    const void* ptr[32];
};

constexpr size_t STACK = 256 * 1024;

#ifdef FA_EMU_FAST_SWITCH
inline void* sched_sp;
#else
inline ucontext_t sched_ctx;
#endif
inline std::vector<Fiber> fibers;
inline Fiber* cur = nullptr;
inline std::vector<WarpScratch> scratch;
inline std::vector<unsigned char> dyn_smem;
inline void (*body)(void*) = nullptr;
inline void* body_arg = nullptr;
inline std::string error;

// From the running fiber back to the scheduler.
inline void to_scheduler() {
#ifdef FA_EMU_FAST_SWITCH
    fa_emu_switch(&cur->sp, sched_sp);
#else
    swapcontext(&cur->ctx, &sched_ctx);
#endif
}

// From the scheduler into fiber `f`.
inline void resume(Fiber& f) {
#ifdef FA_EMU_FAST_SWITCH
    fa_emu_switch(&sched_sp, f.sp);
#else
    swapcontext(&sched_ctx, &f.ctx);
#endif
}

inline void fail(const std::string& what) {
    if (error.empty()) {
        char where[96];
        std::snprintf(where, sizeof where, " (block %u,%u,%u thread %u)", blockIdx.x, blockIdx.y,
                      blockIdx.z, cur ? cur->lin : 0u);
        error = what + where;
    }
    cur->state = State::Failed;
    to_scheduler();  // never resumed
}

inline void wait(State s) {
    cur->state = s;
    to_scheduler();
}

inline unsigned lane() { return cur->lin % 32; }
inline WarpScratch& warp_scratch() { return scratch[cur->lin / 32]; }

inline void fiber_main() {
    body(body_arg);
    cur->state = State::Done;
#ifdef FA_EMU_FAST_SWITCH
    to_scheduler();  // never resumed
    __builtin_trap();
#endif
    // ucontext: returns to uc_link (the scheduler).
}

// A fresh fiber whose first resume enters fiber_main.
inline void start(Fiber& f) {
#ifdef FA_EMU_FAST_SWITCH
    // The stack as fa_emu_switch leaves it: MXCSR and x87 control word, r15..r12, rbx, rbp,
    // then the return address (fiber_main), then a slot standing in for fiber_main's own return
    // address, so that it starts with the stack aligned as after a call.
    auto top = reinterpret_cast<uintptr_t>(f.stack.get() + STACK) & ~uintptr_t(15);
    auto* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;
    *--sp = reinterpret_cast<uint64_t>(&fiber_main);
    for (int r = 0; r < 6; ++r) *--sp = 0;
    *--sp = 0x1f80ull | (0x037full << 32);  // MXCSR default; x87 control word default
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = STACK;
    f.ctx.uc_link = &sched_ctx;
    makecontext(&f.ctx, fiber_main, 0);
#endif
}

// Runs one block of the current launch. Returns false with `error` set on failure.
inline bool run_block(unsigned nthreads, bool reverse) {
    if (fibers.size() < nthreads) fibers.resize(nthreads);
    scratch.assign((nthreads + 31) / 32, WarpScratch{});
    for (unsigned t = 0; t < nthreads; ++t) {
        Fiber& f = fibers[t];
        if (!f.stack) f.stack.reset(new char[STACK]);
        f.lin = t;
        f.tid = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
        f.state = State::Ready;
        f.open.clear();
        f.groups.clear();
        start(f);
    }
    if (nthreads % 32 != 0) {
        error = "block size is not a multiple of the warp size";
        return false;
    }
    for (;;) {
        for (unsigned n = 0; n < nthreads; ++n) {
            Fiber& f = fibers[reverse ? nthreads - 1 - n : n];
            if (f.state != State::Ready) continue;
            cur = &f;
            threadIdx = f.tid;
            resume(f);
            cur = nullptr;
            if (f.state == State::Failed) return false;
        }
        // Every fiber is now waiting or done: release what can be released.
        bool released = false, all_done = true;
        for (unsigned w = 0; w < nthreads / 32; ++w) {
            unsigned waiting = 0, done = 0;
            for (unsigned l = 0; l < 32; ++l) {
                State s = fibers[w * 32 + l].state;
                waiting += s == State::WaitWarp;
                done += s == State::Done;
            }
            if (waiting == 32) {
                for (unsigned l = 0; l < 32; ++l) fibers[w * 32 + l].state = State::Ready;
                released = true;
            } else if (waiting > 0 && done > 0) {
                char buf[96];
                std::snprintf(buf, sizeof buf,
                              "warp %u: a warp collective with %u exited lanes (block %u,%u,%u)",
                              w, done, blockIdx.x, blockIdx.y, blockIdx.z);
                error = buf;
                return false;
            }
        }
        unsigned live = 0, at_barrier = 0;
        for (unsigned t = 0; t < nthreads; ++t) {
            State s = fibers[t].state;
            if (s != State::Done) {
                all_done = false;
                ++live;
                at_barrier += s == State::WaitBlock;
            }
        }
        if (all_done) return true;
        if (!released && live > 0 && at_barrier == live) {
            for (unsigned t = 0; t < nthreads; ++t)
                if (fibers[t].state == State::WaitBlock) fibers[t].state = State::Ready;
            released = true;
        }
        if (!released) {
            char buf[160];
            std::snprintf(buf, sizeof buf,
                          "deadlock: %u threads at __syncthreads, %u live, the rest at a warp "
                          "collective (block %u,%u,%u)",
                          at_barrier, live, blockIdx.x, blockIdx.y, blockIdx.z);
            error = buf;
            return false;
        }
    }
}

}  // namespace emu

inline void __syncthreads() { emu::wait(emu::State::WaitBlock); }

// A warp barrier: every lane of the warp arrives before any goes on.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu::fail("__syncwarp with a partial mask");
    emu::wait(emu::State::WaitWarp);
}

inline float __shfl_xor_sync(unsigned mask, float x, int m) {
    if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync with a partial mask");
    if (m < 0 || m >= 32) emu::fail("__shfl_xor_sync lane mask out of range");
    auto& ws = emu::warp_scratch();
    const unsigned l = emu::lane();
    ws.f[l] = x;
    emu::wait(emu::State::WaitWarp);
    const float y = ws.f[l ^ (unsigned)m];
    emu::wait(emu::State::WaitWarp);
    return y;
}

// ----- the PTX helpers of flash_attn.cu -----

typedef unsigned short bf16_t;

#define FA_DYNAMIC_SMEM(name) unsigned char* name = emu::dyn_smem.data()

inline float fa_exp2(float x) { return std::exp2(x); }

inline bf16_t f32_to_bf16(float f) {
    unsigned u = std::bit_cast<unsigned>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

inline unsigned pack_bf16x2(float lo, float hi) {
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

inline void cp_async16(void* dst, const void* src, bool pred) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
        emu::fail("cp.async with an address not 16-byte aligned");
    const unsigned char* lo = emu::dyn_smem.data();
    const unsigned char* d = static_cast<const unsigned char*>(dst);
    if (d < lo || d + 16 > lo + emu::dyn_smem.size())
        emu::fail("cp.async destination outside dynamic shared memory");
    emu::cur->open.push_back(emu::Copy{dst, src, pred ? 16 : 0});
}

inline void cp_async_commit() {
    emu::cur->groups.push_back(std::move(emu::cur->open));
    emu::cur->open.clear();
}

template <int N>
inline void cp_async_wait() {
    auto& g = emu::cur->groups;
    while (g.size() > (size_t)N) {
        for (const emu::Copy& c : g.front()) {
            std::memset(c.dst, 0, 16);
            if (c.n > 0) std::memcpy(c.dst, c.src, (size_t)c.n);
        }
        g.erase(g.begin());
    }
}

inline bf16_t emu_b16_at(const void* row, unsigned col) {
    return static_cast<const bf16_t*>(row)[col];
}

inline void emu_ldmatrix(unsigned (&r)[4], const void* p, bool trans) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
        emu::fail("ldmatrix row address not 16-byte aligned");
    const unsigned char* lo = emu::dyn_smem.data();
    const unsigned char* b = static_cast<const unsigned char*>(p);
    if (b < lo || b + 16 > lo + emu::dyn_smem.size())
        emu::fail("ldmatrix row outside dynamic shared memory");
    auto& ws = emu::warp_scratch();
    const unsigned l = emu::lane();
    ws.ptr[l] = p;
    emu::wait(emu::State::WaitWarp);
    const unsigned g = l / 4, t = l % 4;
    for (unsigned m = 0; m < 4; ++m) {
        unsigned lo16, hi16;
        if (!trans) {
            // Row g of matrix m, columns 2t and 2t + 1.
            lo16 = emu_b16_at(ws.ptr[8 * m + g], 2 * t);
            hi16 = emu_b16_at(ws.ptr[8 * m + g], 2 * t + 1);
        } else {
            // Column g of matrix m, rows 2t and 2t + 1.
            lo16 = emu_b16_at(ws.ptr[8 * m + 2 * t], g);
            hi16 = emu_b16_at(ws.ptr[8 * m + 2 * t + 1], g);
        }
        r[m] = lo16 | (hi16 << 16);
    }
    emu::wait(emu::State::WaitWarp);
}

inline void ldmatrix_x4(unsigned (&r)[4], const void* p) { emu_ldmatrix(r, p, false); }
inline void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) { emu_ldmatrix(r, p, true); }

inline float emu_half(unsigned w, unsigned k) {
    return std::bit_cast<float>(((k & 1u) ? (w >> 16) : (w & 0xffffu)) << 16);
}

// D += A (16x16, row) B (16x8, col). Fragments (PTX ISA, mma.m16n8k16 .bf16), g = lane / 4,
// t = lane % 4: A regs a0..a3 hold (row g, cols 2t..2t+1), (g+8, 2t..), (g, 2t+8..),
// (g+8, 2t+8..); B regs b0, b1 hold (rows 2t..2t+1, col g), (rows 2t+8.., col g); D holds
// (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
inline void mma_bf16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                     unsigned b0, unsigned b1) {
    auto& ws = emu::warp_scratch();
    const unsigned l = emu::lane();
    ws.words[l][0] = a0;
    ws.words[l][1] = a1;
    ws.words[l][2] = a2;
    ws.words[l][3] = a3;
    ws.words[l][4] = b0;
    ws.words[l][5] = b1;
    emu::wait(emu::State::WaitWarp);
    auto A = [&](unsigned row, unsigned k) {
        const unsigned src = (row % 8) * 4 + (k % 8) / 2;
        const unsigned reg = (row >= 8 ? 1u : 0u) + (k >= 8 ? 2u : 0u);
        return emu_half(ws.words[src][reg], k);
    };
    auto B = [&](unsigned k, unsigned n) {
        const unsigned src = n * 4 + (k % 8) / 2;
        const unsigned reg = 4 + (k >= 8 ? 1u : 0u);
        return emu_half(ws.words[src][reg], k);
    };
    const unsigned g = l / 4, t = l % 4;
    float out[4];
    for (unsigned e = 0; e < 4; ++e) {
        const unsigned row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float acc = d[e];
        for (unsigned k = 0; k < 16; ++k) acc = std::fma(A(row, k), B(k, col), acc);
        out[e] = acc;
    }
    emu::wait(emu::State::WaitWarp);
    for (unsigned e = 0; e < 4; ++e) d[e] = out[e];
}
