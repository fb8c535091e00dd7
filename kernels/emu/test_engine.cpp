// The engine itself (engine.cpp): warp shuffles against the CUDA Programming Guide's rules,
// barriers and shared memory, the scheduling policies, and the misuse it must report; and the
// host versions of the PTX conversions (shim.h), bit for bit.
#include "check.h"

#include <numeric>

namespace {

struct alignas(16) v16_host {
    unsigned char b[16];
};

// The source lane of a shuffle, from the CUDA Programming Guide's description of the width
// argument: lanes form groups of `width`; reading from a later group (or, for `up`, from
// before the group) returns the caller's own value; `idx` reads srcLane % width of its group.
unsigned guide_src(unsigned lane, int mode, unsigned arg, unsigned width) {
    const unsigned group = lane / width * width;
    switch (mode) {
        case emu::SHFL_XOR: {
            const unsigned s = lane ^ arg;
            return s >= group + width ? lane : s;
        }
        case emu::SHFL_DOWN: {
            const unsigned s = lane + arg;
            return s >= group + width ? lane : s;
        }
        case emu::SHFL_UP:
            return lane < group + arg ? lane : lane - arg;
        default:
            return group + arg % width;
    }
}

void test_shuffles() {
    const unsigned block = 64;
    for (int mode : {emu::SHFL_IDX, emu::SHFL_UP, emu::SHFL_DOWN, emu::SHFL_XOR}) {
        for (unsigned width : {1u, 2u, 4u, 8u, 16u, 32u}) {
            for (unsigned arg : {0u, 1u, 3u, 5u, 16u, 31u}) {
                std::vector<int> got(block, -1);
                emu::Launch l;
                l.block = block;
                const std::string what = fmt("shuffle mode %d width %u arg %u", mode, width, arg);
                run(l,
                    [&] {
                        const int v = 1000 + (int)threadIdx.x;
                        int r = 0;
                        if (mode == emu::SHFL_IDX) r = __shfl_sync(0xffffffffu, v, (int)arg, (int)width);
                        if (mode == emu::SHFL_UP) r = __shfl_up_sync(0xffffffffu, v, arg, (int)width);
                        if (mode == emu::SHFL_DOWN) r = __shfl_down_sync(0xffffffffu, v, arg, (int)width);
                        if (mode == emu::SHFL_XOR) r = __shfl_xor_sync(0xffffffffu, v, (int)arg, (int)width);
                        got[threadIdx.x] = r;
                    },
                    what);
                bool ok = true;
                for (unsigned t = 0; t < block; ++t)
                    ok &= got[t] == (int)(1000 + (t & ~31u) + guide_src(t & 31u, mode, arg, width));
                check(ok, what);
            }
        }
    }
    // 64-bit values go as two 32-bit shuffles.
    std::vector<double> d(32);
    emu::Launch l;
    l.block = 32;
    run(l, [&] { d[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 0.5 + threadIdx.x * 1e10, 5); }, "double shuffle");
    bool ok = true;
    for (unsigned t = 0; t < 32; ++t) ok &= d[t] == 0.5 + (t ^ 5u) * 1e10;
    check(ok, "double shuffle");
    // Groups of 8 lanes shuffling among themselves while other groups of the warp skip.
    std::vector<float> s(64, -1.0f);
    l.block = 64;
    run(l,
        [&] {
            const unsigned lane = threadIdx.x & 31u, group = lane / 8;
            if (group == 1) return;  // exited lanes outside every mask are fine
            const unsigned mask = 0xffu << (group * 8);
            float v = (float)threadIdx.x;
            for (int off = 4; off > 0; off >>= 1) v += __shfl_xor_sync(mask, v, off, 8);
            s[threadIdx.x] = v;
        },
        "group shuffles");
    ok = true;
    for (unsigned t = 0; t < 64; ++t) {
        const unsigned g0 = t & ~7u;
        const float want = ((t & 31u) / 8 == 1) ? -1.0f : (float)(8 * g0 + 28);
        ok &= s[t] == want;
    }
    check(ok, "group shuffles");
}

void test_barriers() {
    // Shared memory is per block and a barrier orders writes before reads, in every policy.
    for (int policy = 0; policy < 4; ++policy) {
        for (unsigned block : {32u, 96u, 1024u}) {
            std::vector<unsigned> got(4 * block, 0);
            emu::Launch l;
            l.grid = 4;
            l.block = block;
            l.thread_order = policy;
            l.block_order = policy % 3;
            run_as(l,
                [&] {
                    __shared__ unsigned sh[1024];
                    sh[threadIdx.x] = blockIdx.x * 10000 + threadIdx.x;
                    __syncthreads();
                    got[blockIdx.x * blockDim.x + threadIdx.x] = sh[(threadIdx.x + 1) % blockDim.x];
                    __syncthreads();
                },
                "barrier");
            bool ok = true;
            for (unsigned b = 0; b < 4; ++b)
                for (unsigned t = 0; t < block; ++t) ok &= got[b * block + t] == b * 10000 + (t + 1) % block;
            check(ok, fmt("barrier, policy %d, block %u", policy, block));
        }
    }
    // The lowest-first policy lets a warp run ahead to the next barrier: a buffer reused without
    // a barrier between its last read and the next write shows a wrong value there, not in
    // round robin. (This is what the kernels' alternating reduction buffers protect against.)
    for (int policy : {0, 1}) {
        std::vector<unsigned> got(64, 0);
        emu::Launch l;
        l.block = 64;
        l.thread_order = policy;
        run_as(l,
            [&] {
                __shared__ unsigned buf[2];
                for (unsigned row = 0; row < 2; ++row) {
                    unsigned v = row * 100 + threadIdx.x;
                    v = __shfl_xor_sync(0xffffffffu, v, 1);  // some warp-level work first
                    if ((threadIdx.x & 31u) == 0) buf[threadIdx.x >> 5] = row * 100 + (threadIdx.x >> 5);
                    __syncthreads();
                    got[threadIdx.x] += buf[1 - (threadIdx.x >> 5)] + (v & 0u);
                }
            },
            "run-ahead");
        bool exact = true;
        for (unsigned t = 0; t < 64; ++t) exact &= got[t] == 100 + 2 * (1 - (t >> 5));
        check(exact == (policy == 0), fmt("run-ahead policy %d %s the reused buffer", policy, policy ? "exposes" : "hides"));
    }
}

// Misuse the engine must report (quietly: these fail on purpose).
void test_misuse() {
    emu::set_quiet(true);
    emu::Launch l;
    l.block = 64;
    struct Bad {
        const char* what;
        std::function<void()> k;
    };
    const Bad bad[] = {
        {"barrier after some threads exited",
         [] {
             if (threadIdx.x >= 32) return;
             __syncthreads();
         }},
        {"a different number of barriers per thread",
         [] {
             for (unsigned i = 0; i < 1 + (threadIdx.x & 1u); ++i) __syncthreads();
         }},
        {"shuffle naming an exited lane",
         [] {
             if (threadIdx.x & 1u) return;
             (void)__shfl_xor_sync(0xffffffffu, 1, 2);
         }},
        {"shuffle mask without the caller", [] { (void)__shfl_xor_sync(0xfffffffeu, 1, 1); }},
        {"lane reading outside the mask",
         [] {
             if ((threadIdx.x & 31u) < 16) (void)__shfl_xor_sync(0x0000ffffu, 1, 16, 32);
         }},
        {"half a warp in a shuffle, half at a barrier",
         [] {
             if ((threadIdx.x & 31u) < 16) (void)__shfl_xor_sync(0xffffffffu, 1, 1);
             else __syncthreads();
         }},
        {"cp.async never waited for",
         [] {
             static v16_host src[64];
             emu::cp_async_16((char*)emu_dynamic_smem() + 16 * threadIdx.x, &src[threadIdx.x]);
         }},
        {"cp.async outside the dynamic shared memory",
         [] {
             static v16_host src[2], dst[2];
             emu::cp_async_16(&dst[0], &src[0]);
             emu::cp_async_wait_all();
         }},
    };
    for (const Bad& b : bad) {
        emu::Launch m = l;
        m.smem = 64 * 16;
        check(!emu::launch(m, b.k), std::string("engine reports: ") + b.what);
    }
    emu::set_quiet(false);
    // Until its wait, a cp.async destination holds garbage; after it, the source.
    std::vector<float> before(64), after(64);
    alignas(16) static float src[64 * 4];
    for (int i = 0; i < 64 * 4; ++i) src[i] = (float)i;
    emu::Launch m = l;
    m.smem = 64 * 16;
    run(m,
        [&] {
            float* dst = (float*)emu_dynamic_smem() + 4 * threadIdx.x;
            emu::cp_async_16(dst, &src[4 * threadIdx.x]);
            before[threadIdx.x] = dst[1];
            emu::cp_async_wait_all();
            after[threadIdx.x] = dst[1];
        },
        "cp.async");
    bool ok = true;
    for (unsigned t = 0; t < 64; ++t) ok &= before[t] > 1e36f && after[t] == (float)(4 * t + 1);
    check(ok, "cp.async: garbage before the wait, the source after");
}

// The host versions of the PTX conversions (shim.h emu::cvt_*) against rounding done another
// way: the two neighbours of the value among all finite f16 / bf16 values (the one past the
// largest stands for inf, as IEEE's overflow rule has it), the nearer in f64, ties to the even
// one. Edge values, every rounding tie near the ends of the ranges, and random bit patterns.
double f16_value(uint16_t h) {  // finite f16 bits -> value, decoded by hand
    const int e = (h >> 10) & 31, m = h & 1023;
    const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

uint16_t round_by_neighbours(float f, bool bf16) {
    const double v = std::fabs((double)f);
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    // Magnitudes in increasing order; index 0x7c00 (f16) / 0x7f80 (bf16) is inf, valued as the
    // next power of two past the largest finite value.
    const uint16_t inf = bf16 ? 0x7f80 : 0x7c00;
    auto value = [&](uint16_t k) -> double {
        if (k == inf) return bf16 ? std::ldexp(1.0, 128) : 65536.0;
        if (bf16) {
            uint32_t x = (uint32_t)k << 16;
            float g;
            std::memcpy(&g, &x, 4);
            return (double)g;
        }
        return f16_value(k);
    };
    if (v >= value(inf)) return sign | inf;
    uint16_t lo = 0, hi = inf;  // value(lo) <= v < value(hi)
    while (hi - lo > 1) {
        const uint16_t mid = (uint16_t)((lo + hi) / 2);
        (value(mid) <= v ? lo : hi) = mid;
    }
    const double dl = v - value(lo), dh = value(hi) - v;
    const uint16_t r = dl < dh ? lo : (dh < dl ? hi : ((lo & 1) ? hi : lo));
    return sign | r;
}

float bits_f32(uint32_t x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

void test_conversions() {
    std::vector<uint32_t> xs = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7f7fffffu, 0xff7fffffu,
                                0x00800000u, 0x00000001u, 0x807fffffu, 0x7f7f8000u, 0x7f7f7fffu, 0x7f7e8000u,
                                0x3f808000u, 0x3f818000u, 0x3f80c000u, 0x00008000u, 0x00018000u, 0x477fefffu,
                                0x477ff000u, 0x477fe000u, 0x33000000u, 0x33000001u, 0x33c00000u, 0x38800000u,
                                0x387fe000u, 0x387ff000u, 0xc77ff000u, 0x3f7fffffu};
    std::mt19937_64 rng(17);
    for (int i = 0; i < 200000; ++i) xs.push_back((uint32_t)rng());
    // Values in the f16 range with every rounding case: a random f16 and random dropped bits.
    for (int i = 0; i < 200000; ++i) {
        const uint32_t h = (uint32_t)(rng() % 0x7c00u);
        float f = (float)f16_value((uint16_t)h);
        uint32_t x;
        std::memcpy(&x, &f, 4);
        x = (x & ~0x1fffu) | (i % 4 == 0 ? 0x1000u : (uint32_t)(rng() & 0x1fffu));  // ties too
        xs.push_back(x | (rng() & 1 ? 0x80000000u : 0));
    }
    int bad_bf16 = 0, bad_f16 = 0, bad_pack = 0;
    for (const uint32_t x : xs) {
        const float f = bits_f32(x);
        const bool nan = (x & 0x7fffffffu) > 0x7f800000u;
        const uint16_t want_bf = nan ? 0x7fff : round_by_neighbours(f, true);
        const uint16_t want_h = nan ? 0x7fff : round_by_neighbours(f, false);
        if (emu::cvt_rn_bf16_f32(f) != want_bf && bad_bf16++ < 3)
            check(false, fmt("cvt.rn.bf16.f32(%08x) = %04x, expected %04x", x, emu::cvt_rn_bf16_f32(f), want_bf));
        if (emu::cvt_rn_f16_f32(f) != want_h && bad_f16++ < 3)
            check(false, fmt("cvt.rn.f16.f32(%08x) = %04x, expected %04x", x, emu::cvt_rn_f16_f32(f), want_h));
    }
    check(bad_bf16 == 0, "cvt.rn.bf16.f32 against rounding to the nearer neighbour");
    check(bad_f16 == 0, "cvt.rn.f16.f32 against rounding to the nearer neighbour");
    // Packed: a to the upper half, b to the lower.
    for (size_t i = 0; i + 1 < xs.size(); i += 97) {
        const float a = bits_f32(xs[i]), b = bits_f32(xs[i + 1]);
        bad_pack += emu::cvt_rn_f16x2_f32(a, b) != (((uint32_t)emu::cvt_rn_f16_f32(a) << 16) | emu::cvt_rn_f16_f32(b));
        bad_pack += emu::cvt_rn_bf16x2_f32(a, b) != (((uint32_t)emu::cvt_rn_bf16_f32(a) << 16) | emu::cvt_rn_bf16_f32(b));
    }
    check(emu::cvt_rn_f16x2_f32(1.0f, 2.0f) == 0x3c004000u && emu::cvt_rn_bf16x2_f32(1.0f, -2.0f) == 0x3f80c000u,
          "packed conversions put their first operand in the upper half");
    check(bad_pack == 0, "packed conversions are two scalar ones");
    // cvt.f32.f16: exact for every finite and infinite f16, NaN to the canonical f32 NaN.
    int bad_widen = 0;
    for (uint32_t h = 0; h < 0x10000u; ++h) {
        const float got = emu::cvt_f32_f16((uint16_t)h);
        uint32_t gb;
        std::memcpy(&gb, &got, 4);
        const bool nan = (h & 0x7fffu) > 0x7c00u, inf = (h & 0x7fffu) == 0x7c00u;
        const bool ok = nan ? gb == 0x7fffffffu
                            : (inf ? std::isinf(got) && std::signbit(got) == (h >> 15 == 1)
                                   : (double)got == f16_value((uint16_t)h) && std::signbit(got) == (h >> 15 == 1));
        bad_widen += !ok;
    }
    check(bad_widen == 0, fmt("cvt.f32.f16: %d of 65536 values wrong", bad_widen));
    // __fadd_rn(__fmul_rn(a, b), c) rounds twice, never contracted into an FMA (the kernels' lerp
    // relies on it for the CPU path's bits): (1 + 2^-23)(1 - 2^-24) rounds to 1, so the sum with
    // -1 is 0, where an FMA keeps 2^-24 - 2^-47.
    volatile float fa = 0x1.000002p0f, fb = 0x1.fffffep-1f, fc = -1.0f;
    check(__fadd_rn(__fmul_rn(fa, fb), fc) == 0.0f && std::fma(fa, fb, fc) != 0.0f,
          "__fadd_rn(__fmul_rn(..)) is contracted into an FMA (build with -ffp-contract=off)");
}

}  // namespace

void test_engine() {
    test_shuffles();
    test_barriers();
    test_misuse();
    test_conversions();
}
