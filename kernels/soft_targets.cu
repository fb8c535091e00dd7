// soft_targets.cu: labels -> mixed, smoothed one-hot targets [B, C].
//
// For sample i with a = labels[i], b = labels[partner(i)], lam = plan[i].lam, in f32:
//   off = eps / C,  wa = (1 - eps) * lam,  wb = (1 - eps) * (1 - lam)
//   t[i][c] = (off + (c == a ? wa : 0)) + (c == b ? wb : 0)
// so when a == b the two weights add (timm's formula; ffcv's assignment bug is not repeated),
// then one rounding to the output type.
//
// Work item = (row, chunk of the row); a chunk is SOFT_NT * SOFT_UNROLL 16-byte slots written
// with vector stores (the row's head and tail elements one by one, in chunk 0). A label >= C matches no
// class (nothing is indexed by it) and is counted in flags[0] for `CudaMixer::check_labels`.

#define SOFT_NT 256
#define SOFT_UNROLL 4

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
        const float wa = __fmul_rn(om, pe.lam);
        const float wb = __fmul_rn(om, __fsub_rn(1.0f, pe.lam));
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
                const float t0 = __fadd_rn(__fadd_rn(g.off, ia == j ? wa : 0.0f), ib == j ? wb : 0.0f);
                const float t1 = __fadd_rn(__fadd_rn(g.off, ia == j + 1 ? wa : 0.0f), ib == j + 1 ? wb : 0.0f);
                E::set2(s, j, t0, t1);
            }
            st_v16(o + e0, s);
        }
        if (chunk == 0) {
            for (u32 xi = threadIdx.x; xi < extras_of(ge); xi += SOFT_NT) {
                const u64 e = extra_elem<E>(ge, xi);
                o[e] = E::to_bits(__fadd_rn(__fadd_rn(g.off, e == a ? wa : 0.0f), e == b ? wb : 0.0f));
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
