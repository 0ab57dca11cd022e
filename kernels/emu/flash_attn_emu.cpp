// kernels/*.cu (flash_attn.cu, qk_prep.cu, mlp_act.cu) built for the CPU emulator (cuda_emu.h)
// as a shared library with one entry point, `fa_emu_launch`, which takes a kernel's name, its
// launch configuration and its arguments as cuLaunchKernel does (an array of pointers to the
// argument values).
//
//   c++ -std=c++20 -O2 -shared -fPIC -o libfa_emu.so kernels/emu/flash_attn_emu.cpp
//
// tests/cuda_emulated.rs builds and loads it.
#include "cuda_emu.h"

#include "../flash_attn.cu"
#include "../qk_prep.cu"
#include "../mlp_act.cu"

#include <cstddef>
#include <utility>

namespace {

struct Entry {
    const char* name;
    size_t nargs;
    void (*call)(void* fn, void** args);
    void* fn;
};

template <typename... A, size_t... I>
void invoke_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<A*>(args[I])...);
}

template <typename... A>
Entry entry(const char* name, void (*f)(A...)) {
    return Entry{name, sizeof...(A),
                 [](void* fn, void** args) {
                     invoke_with(reinterpret_cast<void (*)(A...)>(fn), args,
                                 std::index_sequence_for<A...>{});
                 },
                 reinterpret_cast<void*>(f)};
}

#define FA_ENTRY(name) entry(#name, name)

const Entry KERNELS[] = {
    FA_ENTRY(fa_fwd_bf16_m128_hd64), FA_ENTRY(fa_fwd_bf16_m128_hd128),
    FA_ENTRY(fa_fwd_bf16_hd32),    FA_ENTRY(fa_fwd_bf16_hd64),    FA_ENTRY(fa_fwd_bf16_hd128),
    FA_ENTRY(fa_fwd_bf16_hd16),    FA_ENTRY(fa_fwd_f32_hd16),     FA_ENTRY(fa_fwd_f32_hd32),
    FA_ENTRY(fa_fwd_f32_hd64),     FA_ENTRY(fa_fwd_f32_hd128),    FA_ENTRY(fa_bwd_pre_f32),
    FA_ENTRY(fa_bwd_pre_bf16),     FA_ENTRY(fa_bwd_dkdv_f32_hd16), FA_ENTRY(fa_bwd_dq_f32_hd16),
    FA_ENTRY(fa_bwd_dkdv_f32_hd32), FA_ENTRY(fa_bwd_dq_f32_hd32), FA_ENTRY(fa_bwd_dkdv_f32_hd64),
    FA_ENTRY(fa_bwd_dq_f32_hd64),  FA_ENTRY(fa_bwd_dkdv_f32_hd128), FA_ENTRY(fa_bwd_dq_f32_hd128),
    FA_ENTRY(fa_bwd_dkdv_bf16_hd16), FA_ENTRY(fa_bwd_dq_bf16_hd16),
    FA_ENTRY(fa_bwd_dkdv_bf16_hd32), FA_ENTRY(fa_bwd_dq_bf16_hd32),
    FA_ENTRY(fa_bwd_dkdv_bf16_hd64), FA_ENTRY(fa_bwd_dq_bf16_hd64),
    FA_ENTRY(fa_bwd_dkdv_bf16_hd128), FA_ENTRY(fa_bwd_dq_bf16_hd128),
    FA_ENTRY(qp_fwd_f32),          FA_ENTRY(qp_fwd_bf16),         FA_ENTRY(qp_bwd_f32),
    FA_ENTRY(qp_bwd_bf16),         FA_ENTRY(ma_relu2_fwd_f32),    FA_ENTRY(ma_relu2_fwd_bf16),
    FA_ENTRY(ma_relu2_bwd_f32),    FA_ENTRY(ma_relu2_bwd_bf16),
};

struct Call {
    const Entry* e;
    void** args;
};

void run_call(void* p) {
    auto* c = static_cast<Call*>(p);
    c->e->call(c->e->fn, c->args);
}

void put(char* err, size_t len, const std::string& s) {
    if (len == 0) return;
    size_t n = s.size() < len - 1 ? s.size() : len - 1;
    std::memcpy(err, s.data(), n);
    err[n] = 0;
}

}  // namespace

// Runs kernel `name` over `grid` blocks of `block` threads with `smem` bytes of dynamic shared
// memory. `args` holds `nargs` pointers to the argument values. Between synchronisation points
// threads run in lane order, or in reverse when `reverse` is nonzero. Returns 0, or -1 with a
// message in `err`.
extern "C" int fa_emu_launch(const char* name, const unsigned* grid, const unsigned* block,
                             size_t smem, void** args, size_t nargs, int reverse, char* err,
                             size_t errlen) {
    const Entry* e = nullptr;
    for (const Entry& k : KERNELS)
        if (std::strcmp(k.name, name) == 0) e = &k;
    if (e == nullptr) {
        put(err, errlen, std::string("no kernel named ") + name);
        return -1;
    }
    if (nargs != e->nargs) {
        put(err, errlen,
            std::string(name) + ": " + std::to_string(nargs) +
                " arguments given, the kernel takes " + std::to_string(e->nargs));
        return -1;
    }
    const unsigned nthreads = block[0] * block[1] * block[2];
    if (nthreads == 0 || nthreads > 1024) {
        put(err, errlen, std::string(name) + ": block of " + std::to_string(nthreads) + " threads");
        return -1;
    }
    if (smem > 227 * 1024) {
        put(err, errlen, std::string(name) + ": " + std::to_string(smem) +
                             " bytes of dynamic shared memory, over sm_90's 227 KiB");
        return -1;
    }
    static Call call;  // the emulator is single-threaded: callers serialise their launches
    call = Call{e, args};
    emu::body = run_call;
    emu::body_arg = &call;
    emu::error.clear();
    gridDim = uint3{grid[0], grid[1], grid[2]};
    blockDim = uint3{block[0], block[1], block[2]};
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                blockIdx = uint3{x, y, z};
                emu::dyn_smem.assign(smem, 0xff);
                if (!emu::run_block(nthreads, reverse != 0)) {
                    put(err, errlen, std::string(name) + ": " + emu::error);
                    return -1;
                }
            }
    return 0;
}
