// mixup_bce.cu: mixup binary cross-entropy (timm `BinaryCrossEntropy` on the mixed soft target,
// timm/loss/binary_cross_entropy.py; ../shared/REFERENCE.md "Mixup binary cross-entropy"),
// forward and backward in one launch: one read of the logits, one write of the gradient.
//
// Row i of the logits z (C classes), a = labels[i], b = labels[partner(i)], lam = plan[i].lam:
//   targets: t_a, t_b and t_off = eps / C for every other class, rounded as the CPU path does
//            (`soft_pair`); with a threshold, each is [y1 lam + y2 (1 - lam) > thr] with y the
//            one-hot rows of timm's on = 1 - eps + eps/C, off = eps/C (f64 from eps as the user
//            wrote it, rounded to f32: src/spec.rs `BceSpec::new`), every product and the
//            sum rounded once in f32 (no FMA): timm's `mixup_target` in f32, src/spec.rs
//            `BceSpec::thresholded`, so a target one rounding from the threshold goes the same way.
//   per element, w = pos_weight[c] (1 without), v = weight[c] (1 without), cw = 1 + (w - 1) t,
//   e = exp(-|z|), s = e / (1 + e) = sigmoid(-|z|):
//     z >= 0:  l = (1 - t) z + cw ln(1 + e),    d = (1 - t) - cw s
//     z <  0:  l = cw ln(1 + e) - w t z,        d = cw s - w t
//     loss += v l,  grad = v d scale,  scale = upstream * factor
//   d is dl/dz = cw sigma(z) - w t with sigma(z) = 1 - s for z >= 0 written out, so that no
//   sigma near 1 is rounded before the subtraction (cw sigma - w t lost all its bits from z ~ 17
//   at t = 1: thresholded targets, or eps = 0 with lam = 1). PyTorch's
//   binary_cross_entropy_with_logits rearranged so that no inf - inf appears (the CPU path,
//   src/cpu/mixup_bce.rs, computes the same element). A product with a zero weight is left out
//   (`weighted`): a -inf (or dtype-min) logit of a class whose target is 0 adds nothing and gets
//   gradient 0; with a target > 0 the loss is +inf (PyTorch's form gives NaN there, -inf + inf);
//   a NaN logit gives NaN.
//   L_i = sum_c v_c l_ic (per-sample losses [B], written unless the call wants the gradient
//   only); the reduced loss is L_i summed (Sum), or divided by `count` (Mean): B C, or B with
//   sum_classes; none under None.
//   factor = 1 / count for Mean, else 1.
// Math in f32 with the accurate library functions (expf, log1pf: a few ulp; no __expf), the
// gradient formed in f32 and rounded once to the storage type; the row sum in f32.
// Labels: a label >= C matches no class and is counted in flags[0], as in mixup_ce.cu. The
// reduced loss is summed by the last block to finish in a fixed order (deterministic).
//
// Row strategies (src/cuda/mixup_bce.rs picks one from C and the dtype):
//   bce_warp_<dt>:  G lanes per row (G = 1..32, a power of two), BCE_NT / G rows per block.
//   bce_block_<dt>: one block of T threads (64..1024) per row.
// Both stride over the row's 16-byte slots (the element is independent of the others: nothing
// is held back), then add the lanes' sums.

#ifndef BCE_NT
#define BCE_NT 256
#endif
// Largest block of bce_block (its __launch_bounds__).
#ifndef BCE_BLOCK_NT
#define BCE_BLOCK_NT 1024
#endif

struct BceArgs {
    u64 logits;      // const E::B*, [B, C]
    u64 grad;        // E::B*, [B, C]; 0 for forward only; may equal logits
    u64 labels;      // const u32*, [B]
    u64 plan;        // const PlanEntry*, [B]
    u64 losses;      // float*, [B]: per-sample losses; 0 for a gradient-only call
    u64 loss;        // float*, [1]: the reduced loss; 0 under Reduction::None
    u64 upstream;    // const float*: [1] device scalar or [B] per sample; 0: use `up`
    u64 flags;       // u32*: [0] out-of-range labels, [1] blocks done (reset by the last block)
    u64 weight;      // const float*, [C], or 0
    u64 pos_weight;  // const float*, [C], or 0
    u64 batch;       // B
    u64 classes;     // C
    float eps;
    float off;       // eps / C (TargetSpec::off_value)
    float up;        // upstream gradient when `upstream` is 0
    float factor;    // 1 / (B C, or B with sum_classes) for Mean, 1 otherwise
    u32 sum_classes; // what Mean divides by: 1: B (BceSpec::sum_classes), 0: B C
    float thr;       // target threshold (when `thresholded`)
    float t_on;      // timm's on value in f32 (thresholding; BceSpec::timm_on_off)
    float t_off;     // timm's off value in f32
    u32 up_kind;     // 0: `up`, 1: upstream[0], 2: upstream[row]
    u32 reduction;   // 0 Mean, 1 Sum, 2 None
    u32 thresholded; // 1: targets are [t > thr]
    u32 group;       // bce_warp: lanes per row
    u64 ld;          // elements from one row of the logits to the next (>= C, pitched rows read
                     // in place); the gradient is dense, and ld == C whenever grad == logits
};
static_assert(sizeof(BceArgs) == 152, "BceArgs must match the host layout");

// What every thread of a row needs.
struct BceRow {
    u32 a, b;
    float ta, tb, toff;
    float scale;
    bool bad;
};

// [y1 lam + y2 mu > thr] as timm rounds it in f32.
DEV float bce_thr(float y1, float y2, float lam, float mu, float thr) {
    return __fadd_rn(__fmul_rn(y1, lam), __fmul_rn(y2, mu)) > thr ? 1.0f : 0.0f;
}

DEV BceRow bce_row_of(const BceArgs& g, u64 row) {
    const PlanEntry pe = ((const PlanEntry*)g.plan)[row];
    const u32* labels = (const u32*)g.labels;
    BceRow r;
    r.a = labels[row];
    r.b = labels[pe.partner];
    r.bad = (u64)r.a >= g.classes || (u64)r.b >= g.classes;
    const bool same = r.a == r.b;
    if (g.thresholded) {
        const float lam = pe.lam, mu = __fsub_rn(1.0f, lam);
        r.ta = same ? bce_thr(g.t_on, g.t_on, lam, mu, g.thr) : bce_thr(g.t_on, g.t_off, lam, mu, g.thr);
        r.tb = same ? r.ta : bce_thr(g.t_off, g.t_on, lam, mu, g.thr);
        r.toff = bce_thr(g.t_off, g.t_off, lam, mu, g.thr);
    } else {
        soft_pair(__fsub_rn(1.0f, g.eps), g.off, pe.lam, same, r.ta, r.tb);
        r.toff = g.off;
    }
    const float* up = (const float*)g.upstream;
    const float u = g.up_kind == 0 ? g.up : (g.up_kind == 1 ? up[0] : up[row]);
    r.scale = __fmul_rn(u, g.factor);
    return r;
}

// w x, but 0 when the weight is 0 and x is not NaN (a masked logit, or its loss, with no weight
// adds nothing; a NaN logit gives a NaN loss even where its weight is 0, as PyTorch's 0 * NaN,
// and as src/cpu/mixup_bce.rs `weighted`).
DEV float weighted(float w, float x) { return w == 0.0f && x == x ? 0.0f : __fmul_rn(w, x); }

// One element at class e: adds v l to `acc`, returns the gradient v d scale (0 without GRAD:
// forward only).
template <bool GRAD>
DEV float bce_elem(const BceArgs& g, const BceRow& r, u64 e, float z, float& acc) {
    const float t = e == r.a ? r.ta : (e == r.b ? r.tb : r.toff);
    const float w = g.pos_weight != 0 ? ((const float*)g.pos_weight)[e] : 1.0f;
    const float v = g.weight != 0 ? ((const float*)g.weight)[e] : 1.0f;
    const float cw = fmaf(__fsub_rn(w, 1.0f), t, 1.0f);
    const float ex = expf(-fabsf(z));
    const float sp = log1pf(ex);
    const bool pos = z >= 0.0f;
    const float wt = __fmul_rn(w, t);
    const float lin = pos ? weighted(__fsub_rn(1.0f, t), z) : -weighted(wt, z);
    const float l = fmaf(cw, sp, lin);
    acc = __fadd_rn(acc, weighted(v, l));
    if (!GRAD) return 0.0f;
    const float s = __fdiv_rn(ex, __fadd_rn(1.0f, ex));
    const float d = pos ? fmaf(-cw, s, __fsub_rn(1.0f, t)) : fmaf(cw, s, -wt);
    return __fmul_rn(v, __fmul_rn(d, r.scale));
}

// The reduced loss (common.cuh `finish_reduced_loss`); Mean divides by B C, or by B with
// sum_classes (BceSpec::mean_count), in f64.
DEV void bce_finish(const BceArgs& g) {
    const double count = g.sum_classes ? (double)g.batch : (double)g.batch * (double)g.classes;
    finish_reduced_loss(g.loss, g.flags, g.losses, g.batch, g.reduction, count);
}

// The elements of one row that lane t of L handles: slots t, t + L, ... and extras t, t + L, ...
// Returns the lane's loss sum; writes the gradient if there is one.
template <class E, bool GRAD>
DEV float bce_lane(const BceArgs& g, u64 row, const BceRow& r, u32 t, u32 L) {
    typedef typename E::B B;
    const u64 C = g.classes;
    const B* zrow = (const B*)g.logits + row * g.ld;
    B* grow = GRAD ? (B*)g.grad + row * C : (B*)0;
    const Geom ge = geom_of<E>(zrow, C);
    const bool congruent = GRAD && same_offset(grow, zrow);
    float acc = 0.0f;
    for (u64 v = t; v < ge.nfull; v += L) {
        const u64 e0 = slot_elem<E>(ge, v);
        const v16 s = ld_v16(zrow + e0);
        v16 o;
#pragma unroll
        for (int j = 0; j < E::VE; j += 2) {
            const float d0 = bce_elem<GRAD>(g, r, e0 + j, E::get(s, j), acc);
            const float d1 = bce_elem<GRAD>(g, r, e0 + j + 1, E::get(s, j + 1), acc);
            if (GRAD) E::set2(o, j, d0, d1);
        }
        if (!GRAD) continue;
        if (congruent) {
            st_v16(grow + e0, o);
        } else {
#pragma unroll
            for (int j = 0; j < E::VE; ++j) {
                const int bitpos = j * 8 * (int)sizeof(B);
                grow[e0 + j] = (B)(o.w[bitpos >> 5] >> (bitpos & 31));
            }
        }
    }
    for (u32 x = t; x < extras_of(ge); x += L) {
        const u64 e = extra_elem<E>(ge, x);
        const float d = bce_elem<GRAD>(g, r, e, E::from_bits(zrow[e]), acc);
        if (GRAD) grow[e] = E::to_bits(d);
    }
    return acc;
}

DEV void bce_row_done(const BceArgs& g, u64 row, const BceRow& r, float sum) {
    if (g.losses != 0) ((float*)g.losses)[row] = sum;
    if (r.bad) atomicAdd((u32*)g.flags, 1u);
}

// bce_warp: G lanes per row, BCE_NT / G rows per block.
template <class E>
DEV void bce_warp(const BceArgs& g) {
    const u32 G = g.group;
    const u32 t = threadIdx.x & (G - 1);
    const u32 lane = threadIdx.x & 31;
    const u32 mask = G == 32 ? 0xffffffffu : (((1u << G) - 1u) << (lane & ~(G - 1)));
    const u32 rows_per_block = BCE_NT / G;
    for (u64 row0 = (u64)blockIdx.x * rows_per_block; row0 < g.batch; row0 += (u64)gridDim.x * rows_per_block) {
        const u64 row = row0 + threadIdx.x / G;
        if (row >= g.batch) continue;  // whole groups only: shuffles stay within a group
        const BceRow r = bce_row_of(g, row);
        float acc = g.grad != 0 ? bce_lane<E, true>(g, row, r, t, G) : bce_lane<E, false>(g, row, r, t, G);
        for (u32 off = G >> 1; off > 0; off >>= 1) acc += __shfl_xor_sync(mask, acc, (int)off, (int)G);
        if (t == 0) bce_row_done(g, row, r, acc);
    }
    bce_finish(g);
}

// bce_block: one row per block of T threads.
template <class E>
DEV void bce_block(const BceArgs& g) {
    __shared__ float part[32];
    for (u64 row = blockIdx.x; row < g.batch; row += gridDim.x) {
        const BceRow r = bce_row_of(g, row);
        const float lane = g.grad != 0 ? bce_lane<E, true>(g, row, r, threadIdx.x, blockDim.x)
                                       : bce_lane<E, false>(g, row, r, threadIdx.x, blockDim.x);
        const float acc = sum_block(lane, part);
        if (threadIdx.x == 0) bce_row_done(g, row, r, acc);
    }
    bce_finish(g);
}

#define BCE_WARP(E, dt)                                                                           \
    extern "C" __global__ void __launch_bounds__(BCE_NT) bce_warp_##dt(const BceArgs g) { bce_warp<E>(g); }
#define BCE_BLOCK(E, dt)                                                                          \
    extern "C" __global__ void __launch_bounds__(BCE_BLOCK_NT) bce_block_##dt(const BceArgs g) { bce_block<E>(g); }

// Entries, one per kernel and dtype (see mixup_ce.cu).
#if MIXUP_ALL || MIXUP_ONLY_bce_warp_f32
BCE_WARP(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_bce_block_f32
BCE_BLOCK(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_bce_warp_f16
BCE_WARP(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_bce_block_f16
BCE_BLOCK(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_bce_warp_bf16
BCE_WARP(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_bce_block_bf16
BCE_BLOCK(BF16, bf16)
#endif
