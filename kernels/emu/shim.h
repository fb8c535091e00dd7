// Host emulation of the CUDA built-ins the kernels use, so every kernel in kernels/*.cu can run
// on a machine without a GPU (kernels/emu/*.cpp, scripts/emulate.sh), under AddressSanitizer
// and UBSan, with every 16-byte access checked for 16-byte alignment.
//
// Execution model (engine.cpp):
// - Blocks run one after another, in natural, reversed or shuffled order (the last-block-done
//   reduction must give the same bits in every order).
// - The threads of a block are cooperative fibers on their own stacks: a thread runs until it
//   reaches a barrier or a warp shuffle, then the next ready thread runs: round robin, always
//   the lowest or the highest ready thread (one warp runs as far ahead of the others as the
//   barriers allow, which exposes a missing barrier or a reused buffer), or at random. `__syncthreads()` is a block barrier; a shuffle is a rendezvous of the
//   lanes named in its mask, which exchange values through the engine. Misuse the hardware
//   leaves undefined is reported as a failure and the launch abandoned: a thread missing from a
//   barrier or a shuffle (deadlock), a barrier reached after a thread of the block exited, lanes
//   of one shuffle with different masks, a lane reading from a lane outside the mask.
// - Static `__shared__` variables are function-local statics: blocks run one at a time, so one
//   copy is one block's. They are not cleared between blocks (GCC ignores `section` attributes
//   on statics of function templates, so they cannot be found to be poisoned); the order
//   permutations give stale data a chance to show. Dynamic shared memory (`extern __shared__`,
//   hooked in the kernels under MIXUP_HOST_EMU) is a heap buffer of exactly the launch's size,
//   filled with 0x7b bytes (a huge finite value in f32, f16 and bf16) before each block, so ASan
//   catches any access past it and a read of a slot never filled shows in the results.
// - `cp.async` (hooked under MIXUP_HOST_EMU) reads its 16-byte source when issued, fills the
//   destination with 0x7b bytes and copies at the thread's `cp.async.wait_all`, so a read
//   before the wait sees garbage; a copy never waited for is a failure.
// - `__CUDA_ARCH__` is set per build (scripts/emulate.sh: 750, 800, 900), so the kernels take
//   the branches a T4, an A100 or an H100/H200 takes; the PTX instructions of those branches
//   (conversions, cp.async) have host versions below and in the engine.
// - Atomics are plain read-modify-writes (one thread runs at a time).
// - exp2 / log2 / exp / log are libm's (the device uses approximations with relative error
//   about 2^-22: the tests' tolerances allow for that, so the same bounds hold on the device).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#define MIXUP_HOST_EMU 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static

struct EmuDim {
    unsigned x, y, z;
};
// Set by the engine before it resumes a thread (only one runs at a time).
inline EmuDim threadIdx, blockIdx, blockDim, gridDim;

inline void emu_check_aligned(const void* p) {
    if (((uintptr_t)p & 15u) != 0) {
        std::fprintf(stderr, "misaligned 16-byte access at %p\n", p);
        std::abort();
    }
}

// Compiled with -ffp-contract=off: each of these is one IEEE operation, as on the device.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p += v;
    return old;
}
inline void __threadfence() {}

namespace emu {

// What one launch looks like (the host's grid, block and dynamic shared memory) and how the
// engine orders it.
struct Launch {
    unsigned grid = 1, block = 1;
    size_t smem = 0;      // dynamic shared memory, bytes
    int block_order = 0;  // 0 natural, 1 reversed, 2 shuffled
    // Which ready thread runs next: 0 round robin, 1 always the lowest (a warp runs as far
    // ahead of the others as the barriers allow), 2 always the highest, 3 at random.
    int thread_order = 0;
    uint64_t seed = 1;
};

// Runs `kernel` for every thread of every block. Returns false (and prints why) if the launch
// misused a barrier or a shuffle; the launch is then abandoned.
bool launch(const Launch& l, const std::function<void()>& kernel);

// The engine's primitives behind the built-ins below.
void syncthreads();
uint32_t shfl(uint32_t mask, uint32_t v, int mode, int arg, int width);
void* dynamic_smem();
void cp_async_16(void* dst, const void* src);
void cp_async_wait_all();
// Failures reported by the engine since the start (each also printed unless quiet: the
// engine's own tests misuse barriers on purpose).
int failures();
void set_quiet(bool quiet);

enum { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_XOR = 3 };

// The PTX conversions kernels/common.cuh uses (ptx_cvt_*), bit for bit as the device runs them:
// round to nearest even, overflow to inf, subnormals kept (no .ftz), and any NaN to the
// canonical NaN (f16 and bf16 0x7fff, f32 0x7fffffff; the device's cvt does this, and
// cuda_fp16.hpp / cuda_bf16.hpp's host conversions reproduce it). Checked against a rounding
// computed in f64 in test_engine.cpp.
inline uint32_t f32_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    return x;
}
inline bool f32_is_nan(float f) { return (f32_bits(f) & 0x7fffffffu) > 0x7f800000u; }
// cvt.f32.f16 (exact).
inline float cvt_f32_f16(uint16_t h) {
    if ((h & 0x7fffu) > 0x7c00u) {
        const uint32_t nan = 0x7fffffffu;
        float f;
        std::memcpy(&f, &nan, 4);
        return f;
    }
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}
// cvt.rn.f16.f32: the compiler's _Float16 conversion rounds to nearest even (IEEE 754).
inline uint16_t cvt_rn_f16_f32(float f) {
    if (f32_is_nan(f)) return 0x7fffu;
    const _Float16 v = (_Float16)f;
    uint16_t h;
    std::memcpy(&h, &v, 2);
    return h;
}
// cvt.rn.bf16.f32 (sm_80+): bf16 is the high half of an f32, so rounding to nearest even is an
// integer add of 0x7fff plus the lowest kept bit; a carry into the exponent gives inf correctly.
inline uint16_t cvt_rn_bf16_f32(float f) {
    if (f32_is_nan(f)) return 0x7fffu;
    const uint32_t x = f32_bits(f);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
// cvt.rn.f16x2.f32 d, a, b / cvt.rn.bf16x2.f32 d, a, b (sm_80+): a to the upper half of d.
inline uint32_t cvt_rn_f16x2_f32(float a, float b) {
    return ((uint32_t)cvt_rn_f16_f32(a) << 16) | cvt_rn_f16_f32(b);
}
inline uint32_t cvt_rn_bf16x2_f32(float a, float b) {
    return ((uint32_t)cvt_rn_bf16_f32(a) << 16) | cvt_rn_bf16_f32(b);
}

}  // namespace emu

inline void __syncthreads() { emu::syncthreads(); }

template <class T>
inline T emu_shfl(unsigned mask, T v, int mode, int arg, int width) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "32- or 64-bit shuffles");
    if constexpr (sizeof(T) == 4) {
        uint32_t b;
        std::memcpy(&b, &v, 4);
        b = emu::shfl(mask, b, mode, arg, width);
        std::memcpy(&v, &b, 4);
    } else {
        // As the CUDA headers do: two 32-bit shuffles.
        uint32_t b[2];
        std::memcpy(b, &v, 8);
        b[0] = emu::shfl(mask, b[0], mode, arg, width);
        b[1] = emu::shfl(mask, b[1], mode, arg, width);
        std::memcpy(&v, b, 8);
    }
    return v;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return emu_shfl(mask, v, emu::SHFL_IDX, src, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return emu_shfl(mask, v, emu::SHFL_UP, (int)d, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return emu_shfl(mask, v, emu::SHFL_DOWN, (int)d, width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu_shfl(mask, v, emu::SHFL_XOR, lane_mask, width);
}

inline void* emu_dynamic_smem() { return emu::dynamic_smem(); }
