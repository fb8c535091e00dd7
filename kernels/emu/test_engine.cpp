// The engine itself (engine.cpp): warp shuffles against the CUDA Programming Guide's rules,
// barriers and shared memory, the scheduling policies, and the misuse it must report.
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

}  // namespace

void test_engine() {
    test_shuffles();
    test_barriers();
    test_misuse();
}
