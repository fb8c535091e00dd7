// The block engine of the host emulation (see shim.h): blocks one after another, the threads of
// a block as cooperative fibers, barriers and warp shuffles as rendezvous between them.
#include "shim.h"

#include <sys/mman.h>

#include <cstdarg>

#include <algorithm>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

#if !defined(__x86_64__) || defined(EMU_UCONTEXT)
#include <ucontext.h>
#define EMU_USE_UCONTEXT 1
#endif

namespace emu {
namespace {

// ---------------------------------------------------------------------------------------------
// Context switching. On x86-64 a minimal switch of the callee-saved registers (a few ns; glibc's
// swapcontext makes a system call per switch, about 100x slower, and a block of 1024 threads
// switches tens of thousands of times); elsewhere ucontext.

void fiber_main();

#if defined(EMU_USE_UCONTEXT)
struct Ctx {
    ucontext_t uc;
};
void ctx_init(Ctx& c, char* stack, size_t size) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fiber_main, 0);
}
void ctx_switch(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
#else
extern "C" void emu_switch_ctx(void** save_sp, void* new_sp);
extern "C" void emu_fiber_boot();
// emu_switch_ctx(save, new): push the callee-saved registers, save the stack pointer in *save,
// load `new`, pop its registers and return into it. A new fiber's stack holds zeros for the
// registers except r13 = fiber_main, and returns into emu_fiber_boot, which calls r13 with the
// stack 16-byte aligned.
asm(R"(
    .text
    .globl emu_switch_ctx
    .type emu_switch_ctx, @function
emu_switch_ctx:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_ctx, .-emu_switch_ctx
    .globl emu_fiber_boot
    .type emu_fiber_boot, @function
emu_fiber_boot:
    callq *%r13
    ud2
    .size emu_fiber_boot, .-emu_fiber_boot
)");
struct Ctx {
    void* sp = nullptr;
};
void ctx_init(Ctx& c, char* stack, size_t size) {
    // After the 6 pops and the ret, rsp = sp + 56 must be 16-byte aligned for the call.
    const uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    void** sp = (void**)(top - 72);
    for (int i = 0; i < 9; ++i) sp[i] = nullptr;
    sp[2] = (void*)&fiber_main;      // r13
    sp[6] = (void*)&emu_fiber_boot;  // return address
    c.sp = sp;
}
void ctx_switch(Ctx& from, Ctx& to) { emu_switch_ctx(&from.sp, to.sp); }
#endif

// ---------------------------------------------------------------------------------------------
// Engine state.

enum State { READY, AT_BAR, AT_SHFL, DONE };

struct v16_bytes_t {
    unsigned char b[16];
};

struct Thread {
    Ctx ctx;
    State st = READY;
    unsigned tid = 0;
    // The shuffle this lane waits in.
    uint32_t mask = 0, val = 0, out = 0;
    int mode = 0, arg = 0, width = 32;
    // cp.async copies issued and not yet waited for: destination and the 16 bytes read.
    std::vector<std::pair<void*, v16_bytes_t>> pending;
    void* fake = nullptr;  // ASan's fake stack of this fiber while it is switched out
};

constexpr size_t STACK = 128 * 1024;  // per fiber, plus a guard page below it
constexpr size_t GUARD = 4096;
constexpr size_t TOP_FRAMES = 8192;  // more than fiber_main and to_sched use
constexpr unsigned MAX_THREADS = 1024;
// Fill of shared memory not yet written: 0x7b7b... is a huge finite value in f32 (1.3e36), bf16
// (1.3e36) and f16 (61280), so reading it moves a max as well as a sum (a NaN would vanish in
// fmaxf).
constexpr int POISON = 0x7b;

struct Engine {
    std::vector<Thread> th;
    uint64_t ready[MAX_THREADS / 64] = {};  // bit i: thread i can run
    bool quiet = false;
    char* stacks = nullptr;  // MAX_THREADS x (GUARD + STACK)
    Ctx sched;
    Thread* cur = nullptr;
    const std::function<void()>* kernel = nullptr;
    unsigned n = 0, at_bar = 0, done = 0;
    bool broken = false;
    char* smem = nullptr;
    size_t smem_size = 0;
    int fails = 0;
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
};
Engine E;

char* stack_of(unsigned i) { return E.stacks + (size_t)i * (GUARD + STACK) + GUARD; }

void set_state(Thread& t, State s) {
    t.st = s;
    const uint64_t bit = 1ull << (t.tid & 63u);
    if (s == READY) E.ready[t.tid >> 6] |= bit;
    else E.ready[t.tid >> 6] &= ~bit;
}

// The next thread to run under `policy`, or -1 if none is ready. `last` is the one that ran
// last (round robin continues after it).
int pick(int policy, int last, std::mt19937_64& rng) {
    const unsigned words = (E.n + 63) / 64;
    auto first_from = [&](unsigned from) -> int {  // first ready index >= from, circularly
        for (unsigned k = 0; k <= words; ++k) {
            const unsigned w = ((from >> 6) + k) % words;
            uint64_t bits = E.ready[w];
            if (k == 0) bits &= ~0ull << (from & 63u);
            if (k == words) bits &= (from & 63u) ? ~(~0ull << (from & 63u)) : 0ull;
            if (bits) return (int)(w * 64 + (unsigned)__builtin_ctzll(bits));
        }
        return -1;
    };
    switch (policy) {
        case 1:
            return first_from(0);
        case 2:
            for (int w = (int)words - 1; w >= 0; --w)
                if (E.ready[w]) return w * 64 + 63 - __builtin_clzll(E.ready[w]);
            return -1;
        case 3:
            return first_from((unsigned)(rng() % E.n));
        default:
            return first_from(last < 0 || (unsigned)last + 1 >= E.n ? 0u : (unsigned)last + 1);
    }
}

void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char* fmt, ...) {
    ++E.fails;
    if (E.quiet) return;
    std::fprintf(stderr, "EMU FAIL (block %u, thread %u): ", blockIdx.x, E.cur ? E.cur->tid : 0u);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
}

// Back to the scheduler; returns when resumed (never, if `exiting`).
void to_sched(Thread& t, bool exiting) {
#if defined(EMU_ASAN)
    __sanitizer_start_switch_fiber(exiting ? nullptr : &t.fake, E.sched_bottom, E.sched_size);
#else
    (void)exiting;
#endif
    ctx_switch(t.ctx, E.sched);
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(t.fake, nullptr, nullptr);
#endif
}

// Gives up the launch: the scheduler stops after this switch and never resumes the block.
[[noreturn]] void abandon() {
    E.broken = true;
    to_sched(*E.cur, true);
    std::abort();  // unreachable
}

void resume(Thread& t) {
    E.cur = &t;
    threadIdx = {t.tid, 0, 0};
#if defined(EMU_ASAN)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stack_of(t.tid), STACK);
#endif
    ctx_switch(E.sched, t.ctx);
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    E.cur = nullptr;
}

void fiber_main() {
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &E.sched_bottom, &E.sched_size);
#endif
    Thread& t = *E.cur;
    (*E.kernel)();
    if (!t.pending.empty()) {
        fail("%zu cp.async copies never waited for", t.pending.size());
        abandon();
    }
    set_state(t, DONE);
    ++E.done;
    if (E.at_bar > 0) {
        fail("exited while %u threads of its block wait at __syncthreads", E.at_bar);
        abandon();
    }
    const unsigned base = t.tid & ~31u, lane = t.tid & 31u;
    for (unsigned l = 0; l < 32 && base + l < E.n; ++l) {
        const Thread& o = E.th[base + l];
        if (o.st == AT_SHFL && ((o.mask >> lane) & 1u)) {
            fail("exited while lane %u waits for it in a shuffle (mask %08x)", l, o.mask);
            abandon();
        }
    }
    to_sched(t, true);
    std::abort();  // a finished fiber is never resumed
}

const char* state_name(State s) {
    switch (s) {
        case READY: return "ready";
        case AT_BAR: return "at __syncthreads";
        case AT_SHFL: return "in a shuffle";
        default: return "exited";
    }
}

// Source lane of lane `l` for a shuffle (PTX shfl.sync: c = ((32 - width) << 8) | 0x1f, or
// (32 - width) << 8 for `up`). A source outside the lane's segment gives its own value.
unsigned shfl_src(unsigned l, int mode, int arg, int width) {
    const unsigned segmask = (unsigned)(32 - width) & 31u;
    const unsigned min_lane = l & segmask;
    const unsigned max_lane = min_lane | (31u & ~segmask);
    const unsigned b = (unsigned)arg & 31u;
    switch (mode) {
        case SHFL_UP: {
            const int j = (int)l - (int)b;
            return j >= (int)min_lane ? (unsigned)j : l;
        }
        case SHFL_DOWN: {
            const unsigned j = l + b;
            return j <= max_lane ? j : l;
        }
        case SHFL_XOR: {
            const unsigned j = l ^ b;
            return j <= max_lane ? j : l;
        }
        default:
            return min_lane | (b & ~segmask);
    }
}

// Completes the shuffle of the lanes in `mask` of the warp at `base` if they have all arrived.
bool try_shuffle(unsigned base, const Thread& me) {
    const uint32_t mask = me.mask;
    for (unsigned l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        if (base + l >= E.n) {
            fail("shuffle mask %08x names lane %u, beyond the block", mask, l);
            abandon();
        }
        const Thread& o = E.th[base + l];
        if (o.st == DONE) {
            fail("shuffle mask %08x names lane %u, which has exited", mask, l);
            abandon();
        }
        // A lane in another shuffle (another mask) may still come: only a deadlock says no.
        if (o.st != AT_SHFL || o.mask != mask) return false;
        if (o.mode != me.mode || o.width != me.width) {
            fail("lanes %u and %u of mask %08x are in different shuffles", me.tid & 31u, l, mask);
            abandon();
        }
    }
    for (unsigned l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        Thread& o = E.th[base + l];
        const unsigned j = shfl_src(l, o.mode, o.arg, o.width);
        if (!((mask >> j) & 1u)) {
            fail("lane %u reads lane %u, outside the shuffle mask %08x", l, j, mask);
            abandon();
        }
        o.out = E.th[base + j].val;
        set_state(o, READY);
    }
    return true;
}

std::vector<unsigned> order_of(unsigned n, int how, std::mt19937_64& rng) {
    std::vector<unsigned> o(n);
    std::iota(o.begin(), o.end(), 0u);
    if (how == 1) std::reverse(o.begin(), o.end());
    if (how == 2) std::shuffle(o.begin(), o.end(), rng);
    return o;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Primitives.

void syncthreads() {
    Thread& t = *E.cur;
    if (E.done > 0) {
        fail("__syncthreads after %u threads of the block exited", E.done);
        abandon();
    }
    set_state(t, AT_BAR);
    if (++E.at_bar == E.n) {
        for (unsigned i = 0; i < E.n; ++i) set_state(E.th[i], READY);
        E.at_bar = 0;
        return;
    }
    to_sched(t, false);
}

uint32_t shfl(uint32_t mask, uint32_t v, int mode, int arg, int width) {
    Thread& t = *E.cur;
    const unsigned lane = t.tid & 31u;
    if (!((mask >> lane) & 1u)) {
        fail("lane %u calls a shuffle whose mask %08x leaves it out", lane, mask);
        abandon();
    }
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        fail("shuffle width %d is not a power of two <= 32", width);
        abandon();
    }
    t.mask = mask;
    t.val = v;
    t.mode = mode;
    t.arg = arg;
    t.width = width;
    set_state(t, AT_SHFL);
    if (!try_shuffle(t.tid & ~31u, t)) to_sched(t, false);
    return t.out;
}

void* dynamic_smem() { return E.smem; }

void cp_async_16(void* dst, const void* src) {
    emu_check_aligned(dst);
    emu_check_aligned(src);
    if (E.smem == nullptr || (char*)dst < E.smem || (char*)dst + 16 > E.smem + E.smem_size) {
        fail("cp.async destination %p is outside the dynamic shared memory", dst);
        abandon();
    }
    std::pair<void*, v16_bytes_t> p;
    p.first = dst;
    std::memcpy(p.second.b, src, 16);  // the source is read (and checked by ASan) here
    std::memset(dst, POISON, 16);       // until the wait, the destination holds garbage
    E.cur->pending.push_back(p);
}

void cp_async_wait_all() {
    for (auto& p : E.cur->pending) std::memcpy(p.first, p.second.b, 16);
    E.cur->pending.clear();
}

int failures() { return E.fails; }
void set_quiet(bool quiet) { E.quiet = quiet && std::getenv("EMU_VERBOSE") == nullptr; }

bool launch(const Launch& l, const std::function<void()>& kernel) {
    if (l.block == 0 || l.block > MAX_THREADS || l.grid == 0) {
        fail("launch of %u blocks of %u threads", l.grid, l.block);
        return false;
    }
    if (E.stacks == nullptr) {
        const size_t bytes = (size_t)MAX_THREADS * (GUARD + STACK);
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            std::perror("mmap fiber stacks");
            std::abort();
        }
        E.stacks = (char*)p;
        for (unsigned i = 0; i < MAX_THREADS; ++i) mprotect(stack_of(i) - GUARD, GUARD, PROT_NONE);
        E.th.resize(MAX_THREADS);
    }
    gridDim = {l.grid, 1, 1};
    blockDim = {l.block, 1, 1};
    E.kernel = &kernel;
    E.n = l.block;
    E.smem_size = l.smem;
    E.smem = (char*)std::malloc(l.smem);  // exactly the launch's bytes (ASan: any access past them)
    std::mt19937_64 rng(l.seed);
    const std::vector<unsigned> blocks = order_of(l.grid, l.block_order, rng);
    bool ok = true;
    for (const unsigned b : blocks) {
        blockIdx = {b, 0, 0};
        if (l.smem > 0) std::memset(E.smem, POISON, l.smem);
        std::memset(E.ready, 0, sizeof E.ready);
        for (unsigned i = 0; i < l.block; ++i) {
            Thread& t = E.th[i];
            t.tid = i;
            set_state(t, READY);
            t.pending.clear();
            t.fake = nullptr;
#if defined(EMU_ASAN)
            // The frames a finished fiber never returned from (fiber_main, to_sched) are still
            // poisoned at the top of its stack.
            __asan_unpoison_memory_region(stack_of(i) + STACK - TOP_FRAMES, TOP_FRAMES);
#endif
            ctx_init(t.ctx, stack_of(i), STACK);
        }
        E.at_bar = E.done = 0;
        E.broken = false;
        int last = -1;
        while (E.done < l.block && !E.broken) {
            const int i = pick(l.thread_order, last, rng);
            if (i < 0) {
                E.cur = nullptr;
                fail("deadlock: no thread can run");
                for (unsigned k = 0, shown = 0; k < l.block && shown < 8 && !E.quiet; ++k) {
                    const Thread& t = E.th[k];
                    if (t.st == DONE) continue;
                    std::fprintf(stderr, "  thread %u %s", k, state_name(t.st));
                    if (t.st == AT_SHFL) std::fprintf(stderr, " (mask %08x)", t.mask);
                    std::fputc('\n', stderr);
                    ++shown;
                }
                E.broken = true;
                break;
            }
            resume(E.th[i]);
            last = i;
        }
        if (E.broken) {
#if defined(EMU_ASAN)
            // The abandoned fibers' frames stay poisoned: clear them before the stacks are reused.
            for (unsigned i = 0; i < l.block; ++i) __asan_unpoison_memory_region(stack_of(i), STACK);
#endif
            ok = false;
            break;
        }
    }
    std::free(E.smem);
    E.smem = nullptr;
    E.smem_size = 0;
    E.kernel = nullptr;
    return ok;
}

}  // namespace emu
