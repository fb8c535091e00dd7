// Helpers of the checks written in C++ (kernels/emu/test_engine.cpp, test_naive.cpp): pass/fail
// counting, exactly sized buffers (so ASan sees any access past a tensor), host conversions
// written independently of kernels/common.cuh.
#pragma once
#include "shim.h"

#include <algorithm>
#include <cstdarg>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

// Counts (defined in main.cpp).
extern int g_passed, g_failed;

inline void check(bool ok, const std::string& what) {
    if (ok) {
        ++g_passed;
    } else {
        ++g_failed;
        if (g_failed <= 40) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    }
}

// Runs a launch through the engine; a misused barrier or shuffle counts as a failure. Successive
// calls cycle through the block orders and thread-scheduling policies (these kernels' results
// must not depend on them).
inline void run(emu::Launch l, const std::function<void()>& k, const std::string& what) {
    static unsigned n = 0;
    l.block_order = (int)(n % 3);
    l.thread_order = (int)(n / 3 % 4);
    l.seed = ++n;
    check(emu::launch(l, k), what + ": the launch broke a barrier or shuffle rule (see EMU FAIL above)");
}
// The same, in the launch's own orders.
inline void run_as(const emu::Launch& l, const std::function<void()>& k, const std::string& what) {
    check(emu::launch(l, k), what + ": the launch broke a barrier or shuffle rule (see EMU FAIL above)");
}

// The grid of the element-wise kernels (src/cuda/mix.rs, src/cuda/soft_targets.rs,
// src/cuda/naive.rs): one block per item, at most 2^31 - 1.
inline unsigned grid_for(uint64_t items) {
    return (unsigned)std::min<uint64_t>(std::max<uint64_t>(items, 1), (1ull << 31) - 1);
}

// Host conversions (as the `half` crate and `u8::from_f32` define them).
struct HF32 {
    typedef uint32_t B;
    static constexpr int VE = 4;
    static float f(B b) { float v; std::memcpy(&v, &b, 4); return v; }
    static B r(float v) { B b; std::memcpy(&b, &v, 4); return b; }
    static const char* name() { return "f32"; }
    // Rounding to storage: relative half-ulp and the absolute error below the normal range.
    static constexpr double rnd_rel = 0.0, rnd_abs = 0.0;
};
struct HF16 {
    typedef uint16_t B;
    static constexpr int VE = 8;
    static float f(B b) { _Float16 h; std::memcpy(&h, &b, 2); return (float)h; }
    static B r(float v) { _Float16 h = (_Float16)v; B b; std::memcpy(&b, &h, 2); return b; }
    static const char* name() { return "f16"; }
    static constexpr double rnd_rel = 0x1p-11, rnd_abs = 0x1p-25;
};
struct HBF16 {
    typedef uint16_t B;
    static constexpr int VE = 8;
    static float f(B b) { uint32_t x = (uint32_t)b << 16; float v; std::memcpy(&v, &x, 4); return v; }
    static B r(float v) {
        uint32_t x;
        std::memcpy(&x, &v, 4);
        if ((x & 0x7fffffffu) > 0x7f800000u) return (B)((x >> 16) | 0x40u);
        const uint32_t rb = 0x8000u;
        return (B)(((x & rb) && (x & (3 * rb - 1))) ? (x >> 16) + 1 : (x >> 16));
    }
    static const char* name() { return "bf16"; }
    static constexpr double rnd_rel = 0x1p-8, rnd_abs = 0x1p-134;
};
struct HU8 {
    typedef uint8_t B;
    static constexpr int VE = 16;
    static float f(B b) { return (float)b; }
    static B r(float v) {
        if (std::isnan(v)) return 0;
        float q = std::nearbyint(v);
        return (B)std::min(255.0f, std::max(0.0f, q));
    }
    static const char* name() { return "u8"; }
};

// A buffer of exactly `off + n` elements, 16-byte aligned, so ASan catches any access past the
// end; the view starts at `off`.
template <class B>
struct Buf {
    B* base;
    size_t off, n;
    Buf(size_t off_, size_t n_, B fill) : off(off_), n(n_) {
        if (off + n > PTRDIFF_MAX / sizeof(B)) std::abort();
        base = (B*)std::malloc(std::max<size_t>(1, (off + n) * sizeof(B)));
        if (((uintptr_t)base & 15u) != 0) std::abort();
        for (size_t i = 0; i < off + n; ++i) base[i] = fill;
    }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
    ~Buf() { std::free(base); }
    B* v() { return base + off; }
};

// `|a - e| <= tol` with NaN failing; prints nothing (the caller names the index).
inline bool close(double a, double e, double tol) { return std::fabs(a - e) <= tol; }

inline std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
inline std::string fmt(const char* f, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, f);
    std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

// The checks written here: the engine's own, and the naive kernels'.
void test_engine();
void test_naive();
