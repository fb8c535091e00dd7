// soft_targets.cu: labels -> mixed, smoothed one-hot targets [B, C].
//
// For sample i with a = labels[i], b = labels[partner(i)], lam = plan[i].lam, in f32, exactly
// as the CPU path (src/cpu/soft_targets.rs `Targets::pair`) rounds it:
//   keep = 1 - eps,  off = eps / C,  mu = 1 - lam
//   a != b:  t[a] = keep * lam + off,  t[b] = keep * mu + off
//   a == b:  t[a] = keep * (lam + mu) + off      (the weights add: ffcv's bug is not repeated)
//   other classes: off
// then one rounding to the output type, so the result is bit-identical to the CPU path.
//
// Work item = (row, chunk of the row); a chunk is SOFT_NT * SOFT_UNROLL 16-byte slots written
// with vector stores (the row's head and tail elements one by one, in chunk 0). A label >= C matches no
// class (nothing is indexed by it) and is counted in flags[0] for `CudaMixer::check_labels`.

#ifndef SOFT_NT
#define SOFT_NT 256
#endif
#ifndef SOFT_UNROLL
#define SOFT_UNROLL 4
#endif

struct SoftArgs {
    u64 out;     // E::B*, [B, C]
    u64 labels;  // const u32*, [B]
    u64 plan;    // const PlanEntry*, [B]
    u64 flags;   // u32*, flags[0] counts out-of-range labels
    u64 items;   // rows times chunks
    u64 classes; // C
    u64 chunks;  // chunks per row
    float eps;
    float off;   // eps / C, rounded once on the host exactly as here
};
static_assert(sizeof(SoftArgs) == 64, "SoftArgs must match the host layout");

template <class E>
DEV void soft_targets(const SoftArgs& g) {
    typedef typename E::B B;
    B* out = (B*)g.out;
    const u32* labels = (const u32*)g.labels;
    const PlanEntry* plan = (const PlanEntry*)g.plan;
    const u64 C = g.classes;
    constexpr u64 CS = SOFT_NT * SOFT_UNROLL;
    const float om = __fsub_rn(1.0f, g.eps);

    for (u64 item = blockIdx.x; item < g.items; item += gridDim.x) {
        const u64 row = item / g.chunks;
        const u64 chunk = item - row * g.chunks;
        const PlanEntry pe = plan[row];
        const u32 a = labels[row];
        const u32 b = labels[pe.partner];
        if (chunk == 0 && threadIdx.x == 0 && ((u64)a >= C || (u64)b >= C)) {
            atomicAdd((u32*)g.flags, 1u);
        }
        float ta, tb;
        soft_pair(om, g.off, pe.lam, a == b, ta, tb);
        B* o = out + row * C;
        const Geom ge = geom_of<E>(o, C);
#pragma unroll
        for (int k = 0; k < SOFT_UNROLL; ++k) {
            const u64 v = chunk * CS + (u64)k * SOFT_NT + threadIdx.x;
            if (v >= ge.nfull) break;
            const u64 e0 = slot_elem<E>(ge, v);
            const i64 ia = (i64)a - (i64)e0;  // position of class a in this slot, if 0 <= ia < VE
            const i64 ib = (i64)b - (i64)e0;
            v16 s;
#pragma unroll
            for (int j = 0; j < E::VE; j += 2) {
                const float t0 = ia == j ? ta : (ib == j ? tb : g.off);
                const float t1 = ia == j + 1 ? ta : (ib == j + 1 ? tb : g.off);
                E::set2(s, j, t0, t1);
            }
            st_v16(o + e0, s);
        }
        if (chunk == 0) {
            for (u32 xi = threadIdx.x; xi < extras_of(ge); xi += SOFT_NT) {
                const u64 e = extra_elem<E>(ge, xi);
                o[e] = E::to_bits(e == a ? ta : (e == b ? tb : g.off));
            }
        }
    }
}

#define SOFT_ENTRY(E, dt)                                                                         \
    extern "C" __global__ void __launch_bounds__(SOFT_NT) soft_targets_##dt(const SoftArgs g) { \
        soft_targets<E>(g);                                                                     \
    }

// Entries, one per kernel and dtype. The host compiles one at a time (-DMIXUP_ONLY_<entry>=1,
// src/cuda/context.rs) so that a first call compiles only the kernel it runs; -DMIXUP_ALL=1
// compiles them all (tests/kernels_compile.rs).
#if MIXUP_ALL || MIXUP_ONLY_soft_targets_f32
SOFT_ENTRY(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_soft_targets_f16
SOFT_ENTRY(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_soft_targets_bf16
SOFT_ENTRY(BF16, bf16)
#endif
