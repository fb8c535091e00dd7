// Host emulation of the CUDA built-ins the mix and soft-target kernels use, so their indexing
// (slot geometry, head/tail elements, chunks, pair leaders, CutMix boxes) can be checked on a
// machine without a GPU: every thread of every block runs one after the other (these kernels
// never communicate inside a block), under AddressSanitizer, and every 16-byte access is
// checked for 16-byte alignment. See kernels/emu/emulate.cpp and scripts/emulate.sh.
//
// Not emulated: warp shuffles, barriers and shared memory (the cross-entropy kernels), and the
// hardware's exp2/log2 approximations.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define MIXUP_HOST_EMU 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

struct EmuDim {
    unsigned x, y, z;
};
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
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p += v;
    return old;
}
inline void __threadfence() {}
