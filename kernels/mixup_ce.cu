// mixup_ce.cu: mixup cross-entropy, forward and backward in one launch.
//
// Row i of the logits z (C classes), a = labels[i], b = labels[partner(i)], lam = plan[i].lam,
// all in f32:
//   off = eps / C,  wa = (1 - eps) * lam,  wb = (1 - eps) * (1 - lam)
//   t_c = t_a, t_b or off, rounded as the CPU path and soft_targets.cu do (`soft_pair`; the
//         soft target is never stored)
//   lse = m + log(sum_c exp(z_c - m)),  m = max_c z_c
//   L_i = lse - (wa z_a + wb z_b + off sum_c z_c)             (= lse - sum_c t_c z_c)
//   grad_ic = (exp(z_c - lse) - t_c) * scale_i,  scale_i = upstream_i * (1/B for Mean, else 1)
// The target-class gradient is computed in f32 and rounded once to the storage type.
//
// Masked classes (../shared/REFERENCE.md, "Masked classes"; trainers write -inf or the dtype's
// minimum into the logits of classes they mask): a term of L whose weight is exactly 0 is left
// out (eps = 0: no sum_c z_c term; lam = 1: no z_b term; eps = 1: no z_a, z_b terms), so a -inf
// logit of a class with no target weight adds nothing (0 * -inf would be NaN) and its gradient
// is p - t = 0 - 0. With eps > 0 every class has weight eps/C and a -inf logit gives +inf, as
// PyTorch does. sum_c z_c is accumulated as sum_c z_c 2^-40 (`CE_SZ_SCALE`): every partial sum
// is then bounded by max|z| (2^40 >= any C that fits in device memory), so dtype-min logits
// cannot overflow it to -inf; scaling by a power of two is exact outside the subnormal range,
// and one FMA per element adds it (same cost as the plain add). off * 2^40 undoes the scale.
// A row whose max is -inf (every class -inf) gives NaN or inf, as in PyTorch; NaN logits give NaN.
//
// The shift: every exp2 takes (z - mn) log2e - sub (`ex_arg`), mn = m = max z in natural units
// (`shift_nat`; 0 for a row or thread whose max is -inf, so its terms are exp2(-inf) = 0, not
// NaN), so s = sum_c exp(z_c - m) and the gradient is exp2((z - m) log2e - log2 s) - t. z - m is
// exact where it matters (Sterbenz), so the argument's error is about ulp((z - m) log2e), small
// where exp(z - m) is not. (Until 2026-12-02, below |m| = 2^24 the log2-domain form exp2(z log2e
// - f32(m log2e)) was used, one FMA per element: its shift was off by up to half an ulp of
// m log2e, the same factor on every p of the row, and the gradient's shift f32(m log2e + log2 s)
// added a second such rounding: a relative error of p of 6e-4 at m = 1e4 and 7e-2 at 1e6; at
// m = -3.4e38, m log2e overflows. The extra FADD per element costs nothing beside the ex2 on the
// quarter-rate special-function unit.)
//
// Far maxima (|m| >= CE_FAR, finite; `far_max`): the loss is formed relative to m, as the
// reference forms it: ln s - sum_c t_c (z_c - m) (sum_c t_c = 1), since lse = m + ln s - tz
// in f32 loses about ulp(m) to cancellation (1e-3 at m = 1e4, 2 at 1e7; ln s entirely past
// 2^24). sum_c (z_c - m) then needs m first: a second pass over the row (registers, shared
// memory; in ce_online during the gradient's read of the row, or a read of its own for the
// loss alone), only with eps > 0. Below CE_FAR the loss is lse - tz, tz = wa z_a + wb z_b +
// off sum z, from the first pass (error a few ulp(64), about 3e-5 at most). Clamping the max
// instead would leave every exp2 argument of a row masked with the dtype's minimum at -inf or
// garbage (s = 0), and clamping the logits would merge distinct logits below the clamp.
// The reduced loss (sum for Sum, mean for Mean; none under None) is summed on the device in a
// fixed order by the last block to finish (per-row losses -> one block, strided then a fixed tree), so the same
// inputs give the same bits on every run.
//
// Row strategies (the host picks one from C and the dtype, see src/cuda/mixup_ce.rs; a "slot"
// is 16 bytes: 4 f32 or 8 f16/bf16):
// Row i of the logits starts at logits + i * ld (ld >= C: burn's pitched CUDA tensors are read
// without a copy); the gradient is always dense, row i at grad + i * C.
//
//   ce_warp_<dt>:   G lanes per row (G = 1..32), rows packed into 256-thread blocks, K = 4 slots
//                   per lane in registers: C*s <= 2 KB.
//   ce_block_<dt>:  one block of T threads (64..1024) per row, K = 4 slots per thread in
//                   registers (64 KB at T = 1024) plus S slots per thread in dynamic shared
//                   memory (16 KB each at T = 1024, filled by cp.async on sm_80+; S <= 13 on
//                   H100, 9 on A100, 5 on L40/RTX 4090, 3 on T4): C*s <= 64 KB + S * 16 KB.
//   ce_online_<dt>: one block per row, online (max, sum) over the row, then a second read for
//                   the gradient (2 reads + 1 write; the second read mostly hits L2). Any C;
//                   also the forward-only kernel for C beyond the warp kernel.
// ce_warp and ce_block read the logits once and write the gradient once.
//
// Labels: a label >= C matches no class (no memory is indexed by a label) and is counted in
// flags[0]; the host reports it at the next `check_labels`.

#ifndef CE_WARP_NT
#define CE_WARP_NT 256
#endif
#ifndef CE_K
#define CE_K 4
#endif
#ifndef CE_ONLINE_U
#define CE_ONLINE_U 4
#endif
// Largest block of ce_block and ce_online (their __launch_bounds__).
#ifndef CE_BLOCK_NT
#define CE_BLOCK_NT 1024
#endif
#define CE_SZ_SCALE 0x1p-40f  // sum_c z_c is accumulated times this (see above)
#define CE_SZ_UNSCALE 0x1p40f
#define CE_FAR 0x1p6f         // |max z| from which the loss is formed relative to it (see above)

struct CeArgs {
    u64 logits;    // const E::B*, [B, C]
    u64 grad;      // E::B*, [B, C]; 0 for forward only; may equal logits
    u64 labels;    // const u32*, [B]
    u64 plan;      // const PlanEntry*, [B]
    u64 losses;    // float*, [B]: per-sample losses; 0 for a gradient-only call (no loss wanted)
    u64 loss;      // float*, [1]: the reduced loss; 0 under Reduction::None
    u64 upstream;  // const float*: [1] device scalar or [B] per sample; 0: use `up`
    u64 flags;     // u32*: [0] out-of-range labels, [1] blocks done (reset by the last block)
    u64 batch;     // B
    u64 classes;   // C
    float eps;
    float off;     // eps / C
    float up;      // upstream gradient when `upstream` is 0
    float factor;  // 1/B for Mean, 1 otherwise
    u32 up_kind;   // 0: `up`, 1: upstream[0], 2: upstream[row]
    u32 reduction; // 0 Mean, 1 Sum, 2 None (no reduced value: `loss` is 0)
    u32 group;     // ce_warp: lanes per row
    u32 smem_slots;// ce_block_smem: shared-memory slots per thread
    u64 ld;        // elements from one row of the logits to the next (>= C: a pitched tensor's
                   // padded rows are read in place); the gradient is dense ([B, C]), and
                   // ld == C whenever grad == logits
};
static_assert(sizeof(CeArgs) == 120, "CeArgs must match the host layout");

// Per-row partial statistics: max m = max z (natural units) and s = sum exp(z - m), sum of
// z * CE_SZ_SCALE, and z_a, z_b (0 where the class is not held).
struct Stats {
    float m, s, sz, za, zb;
};

DEV Stats stats_empty() {
    Stats st;
    st.m = neg_inf();
    st.s = 0.0f;
    st.sz = 0.0f;
    st.za = 0.0f;
    st.zb = 0.0f;
    return st;
}

// Symmetric in its arguments, bit for bit (max and + commute), so every lane of a butterfly
// ends with the same value.
DEV void stats_merge(Stats& x, const Stats& y) {
    const float mm = fmaxf(x.m, y.m);
    if (mm == neg_inf()) {
        // No finite element on either side: both sums are 0, or NaN where a part held only
        // NaN (fmaxf skips NaN, so its max stayed -inf): the NaN must reach the loss.
        x.s = __fadd_rn(x.s, y.s);
    } else {
        // Two rounded products and a rounded sum: symmetric bit for bit (a contracted
        // s * e + s2 * e2 would be fma(s, e, s2 * e2) on one lane of a butterfly and
        // fma(s2, e2, s * e) on its partner).
        x.s = __fadd_rn(__fmul_rn(x.s, ex2(__fmul_rn(x.m - mm, LOG2E_F))),
                        __fmul_rn(y.s, ex2(__fmul_rn(y.m - mm, LOG2E_F))));
    }
    x.m = mm;
    x.sz = x.sz + y.sz;
    x.za = x.za + y.za;
    x.zb = x.zb + y.zb;
}

DEV Stats stats_shfl(u32 mask, const Stats& x, int off, int width) {
    Stats y;
    y.m = __shfl_xor_sync(mask, x.m, off, width);
    y.s = __shfl_xor_sync(mask, x.s, off, width);
    y.sz = __shfl_xor_sync(mask, x.sz, off, width);
    y.za = __shfl_xor_sync(mask, x.za, off, width);
    y.zb = __shfl_xor_sync(mask, x.zb, off, width);
    return y;
}

// Butterfly over `width` lanes (a power of two <= 32): every lane gets the merged value.
DEV void stats_reduce_lanes(Stats& st, u32 mask, int width) {
    for (int off = width >> 1; off > 0; off >>= 1) stats_merge(st, stats_shfl(mask, st, off, width));
}

// Block-wide merge; every thread gets the same value. `red` holds 32 entries; the caller
// alternates between two such buffers from row to row, so one barrier per row suffices.
DEV Stats stats_reduce_block(Stats st, Stats* red) {
    stats_reduce_lanes(st, 0xffffffffu, 32);
    const u32 warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) red[warp] = st;
    __syncthreads();
    const u32 nw = blockDim.x >> 5;
    Stats r = red[0];
    for (u32 w = 1; w < nw; ++w) stats_merge(r, red[w]);
    return r;
}

// What every thread of a row needs.
struct Row {
    u32 a, b;
    float wa, wb;  // loss weights of z_a and z_b
    float ta, tb;  // targets of classes a and b (equal when a == b)
    float scale;
    bool bad;
};

DEV Row row_of(const CeArgs& g, u64 row) {
    const PlanEntry pe = ((const PlanEntry*)g.plan)[row];
    const u32* labels = (const u32*)g.labels;
    Row r;
    r.a = labels[row];
    r.b = labels[pe.partner];
    r.bad = (u64)r.a >= g.classes || (u64)r.b >= g.classes;
    const float om = __fsub_rn(1.0f, g.eps);
    r.wa = __fmul_rn(om, pe.lam);
    r.wb = __fmul_rn(om, __fsub_rn(1.0f, pe.lam));
    soft_pair(om, g.off, pe.lam, r.a == r.b, r.ta, r.tb);
    const float* up = (const float*)g.upstream;
    const float u = g.up_kind == 0 ? g.up : (g.up_kind == 1 ? up[0] : up[row]);
    r.scale = __fmul_rn(u, g.factor);
    return r;
}

// Whether the loss is formed relative to the max (|m| >= CE_FAR, m finite; "Far maxima" at
// the top).
DEV bool far_max(float m) { return fabsf(m) >= CE_FAR && fabsf(m) < -neg_inf(); }

// The argument of exp2 for exp(z - mn) / 2^sub: (z - mn) log2e - sub, one FADD and one FMA
// (sub = 0 in the sums, log2 s in the gradient).
DEV float ex_arg(float z, float mn, float sub) { return fmaf(__fsub_rn(z, mn), LOG2E_F, -sub); }

// The shift of exp for a max m ("The shift" at the top): m itself, or 0 when m is -inf (no
// finite element: exp2(-inf) = 0 instead of -inf - (-inf) = NaN). A +inf or NaN m gives NaN.
DEV float shift_nat(float m) { return m == neg_inf() ? 0.0f : m; }

// Writes the row's loss; flags a bad label once per row. tz = wa z_a + wb z_b + off sum z with
// each zero-weight term left out (a masked class with no weight adds nothing; see the top). For
// a far max, relative to m: ln s - (wa (z_a - m) + wb (z_b - m) + off dz), dz = sum_c (z_c - m)
// (held times CE_SZ_SCALE).
DEV void row_finish(const CeArgs& g, u64 row, const Row& r, const Stats& st, float dz) {
    float loss;
    if (far_max(st.m)) {
        float tz = 0.0f;
        if (r.wa != 0.0f) tz = __fmul_rn(r.wa, __fsub_rn(st.za, st.m));
        if (r.wb != 0.0f) tz = __fadd_rn(tz, __fmul_rn(r.wb, __fsub_rn(st.zb, st.m)));
        if (g.off != 0.0f) tz = __fadd_rn(tz, __fmul_rn(__fmul_rn(g.off, CE_SZ_UNSCALE), dz));
        loss = __fsub_rn(__fmul_rn(log2f(st.s), LN2_F), tz);
    } else {
        // lse = m + ln s, each step rounded once (no contraction into an FMA, whose result
        // the host emulation, compiled without contraction, would not reproduce).
        const float lse = __fadd_rn(st.m, __fmul_rn(log2f(st.s), LN2_F));
        float tz = 0.0f;
        if (r.wa != 0.0f) tz = __fmul_rn(r.wa, st.za);
        if (r.wb != 0.0f) tz = __fadd_rn(tz, __fmul_rn(r.wb, st.zb));
        if (g.off != 0.0f) tz = __fadd_rn(tz, __fmul_rn(__fmul_rn(g.off, CE_SZ_UNSCALE), st.sz));
        loss = __fsub_rn(lse, tz);
    }
    if (g.losses != 0) ((float*)g.losses)[row] = loss;
    if (r.bad) atomicAdd((u32*)g.flags, 1u);
}

// The shift of a row's gradient: p = exp2(ex_arg(z, m, sub)).
struct GradShift {
    float m, sub;
};

DEV GradShift grad_shift(const Stats& st) {
    GradShift s;
    s.m = shift_nat(st.m);
    s.sub = log2f(st.s);
    return s;
}

// ---------------------------------------------------------------------------------------------
// Per-slot and per-element work. Slots are full 16-byte slots (see `Geom`); the row's head and
// tail elements ("extras") are read one by one, before the reduction and again for the gradient
// (only the thread that writes an extra ever reads it, so the re-read is safe in place).

template <class E>
DEV void slot_max(const v16& s, float& mz) {
#pragma unroll
    for (int j = 0; j < E::VE; ++j) mz = fmaxf(mz, E::get(s, j));
}

// Adds one element at class e to the sums shifted by mn (`shift_nat` of the max: a thread
// whose elements are all -inf, or that holds none, keeps the empty pair (-inf, 0)), and picks
// it as z_a / z_b.
DEV void elem_sum(float z, u64 e, float mn, const Row& r, Stats& st) {
    st.s += ex2(ex_arg(z, mn, 0.0f));
    st.sz = fmaf(z, CE_SZ_SCALE, st.sz);
    if (e == r.a) st.za = z;
    if (e == r.b) st.zb = z;
}

// Sum of exp(z - m) and of z over a slot starting at class e0; picks z_a, z_b.
template <class E>
DEV void slot_sum(const v16& s, u64 e0, float mn, const Row& r, Stats& st) {
    float acc = 0.0f, sz = 0.0f;
#pragma unroll
    for (int j = 0; j < E::VE; ++j) {
        const float z = E::get(s, j);
        acc += ex2(ex_arg(z, mn, 0.0f));
        sz = fmaf(z, CE_SZ_SCALE, sz);
    }
    st.s += acc;
    st.sz += sz;
    const u64 ia = (u64)r.a - e0, ib = (u64)r.b - e0;  // huge when the class is before e0
    if (ia < E::VE) st.za = get_dyn<E>(s, (u32)ia);
    if (ib < E::VE) st.zb = get_dyn<E>(s, (u32)ib);
}

DEV float target(u64 e, const Row& r, float off) { return e == r.a ? r.ta : (e == r.b ? r.tb : off); }

// The same shifted by its own max m.
template <class E>
DEV void slot_sum_any(const v16& s, u64 e0, float m, const Row& r, Stats& st) {
    slot_sum<E>(s, e0, shift_nat(m), r, st);
}

// (z - m) * CE_SZ_SCALE: the far-max loss sums these (see row_finish), scaled as sum_c z_c is
// so that C values near -3.4e38 cannot overflow the sum.
DEV float dev_add(float z, float m, float acc) { return fmaf(__fsub_rn(z, m), CE_SZ_SCALE, acc); }

template <class E>
DEV float slot_dev(const v16& s, float m) {
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < E::VE; ++j) acc = dev_add(E::get(s, j), m, acc);
    return acc;
}

DEV float elem_grad(float z, u64 e, const Row& r, const GradShift& sh, float off) {
    const float p = ex2(ex_arg(z, sh.m, sh.sub));
    return __fmul_rn(__fsub_rn(p, target(e, r, off)), r.scale);
}

template <class E>
DEV v16 slot_grad(const v16& s, u64 e0, const Row& r, const GradShift& sh, float off) {
    const u64 ia = (u64)r.a - e0, ib = (u64)r.b - e0;
    v16 o;
#pragma unroll
    for (int j = 0; j < E::VE; j += 2) {
        const float p0 = ex2(ex_arg(E::get(s, j), sh.m, sh.sub));
        const float p1 = ex2(ex_arg(E::get(s, j + 1), sh.m, sh.sub));
        const float t0 = ia == (u64)j ? r.ta : (ib == (u64)j ? r.tb : off);
        const float t1 = ia == (u64)(j + 1) ? r.ta : (ib == (u64)(j + 1) ? r.tb : off);
        E::set2(o, j, __fmul_rn(__fsub_rn(p0, t0), r.scale), __fmul_rn(__fsub_rn(p1, t1), r.scale));
    }
    return o;
}

// Stores a gradient slot into a row at the same 16-byte offset as the logits (one vector
// store) or at another one (element by element).
template <class E>
DEV void store_grad(typename E::B* grow, bool congruent, u64 e0, const v16& o) {
    if (congruent) {
        st_v16(grow + e0, o);
        return;
    }
#pragma unroll
    for (int j = 0; j < E::VE; ++j) {
        const int bitpos = j * 8 * (int)sizeof(typename E::B);
        grow[e0 + j] = (typename E::B)(o.w[bitpos >> 5] >> (bitpos & 31));
    }
}

// The sums of a thread's K register slots and its extras, shifted by its max m.
template <class E, int K>
DEV void regs_sums(const v16 (&va)[K], const typename E::B* zrow, const Geom& ge, u32 t, u32 T, const Row& r,
                   float mn, Stats& st) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const u64 v = (u64)k * T + t;
        if (v < ge.nfull) slot_sum<E>(va[k], slot_elem<E>(ge, v), mn, r, st);
    }
    for (u32 x = t; x < extras_of(ge); x += T) {
        const u64 e = extra_elem<E>(ge, x);
        elem_sum(E::from_bits(zrow[e]), e, mn, r, st);
    }
}

// Local statistics of a thread: its K register slots (slot v = k*T + t), then its extras.
template <class E, int K>
DEV Stats regs_stats(const v16 (&va)[K], const typename E::B* zrow, const Geom& ge, u32 t, u32 T,
                     const Row& r) {
    float mz = neg_inf();
#pragma unroll
    for (int k = 0; k < K; ++k)
        if ((u64)k * T + t < ge.nfull) slot_max<E>(va[k], mz);
    for (u32 x = t; x < extras_of(ge); x += T) mz = fmaxf(mz, E::from_bits(zrow[extra_elem<E>(ge, x)]));
    Stats st = stats_empty();
    st.m = mz;
    regs_sums<E, K>(va, zrow, ge, t, T, r, shift_nat(mz), st);
    return st;
}

// Sum of z - m over a thread's K register slots and extras (the far-max loss).
template <class E, int K>
DEV float regs_dev(const v16 (&va)[K], const typename E::B* zrow, const Geom& ge, u32 t, u32 T, float m) {
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k)
        if ((u64)k * T + t < ge.nfull) acc += slot_dev<E>(va[k], m);
    for (u32 x = t; x < extras_of(ge); x += T) acc = dev_add(E::from_bits(zrow[extra_elem<E>(ge, x)]), m, acc);
    return acc;
}

template <class E, int K>
DEV void regs_grad(const CeArgs& g, const v16 (&va)[K], const typename E::B* zrow, u64 row, const Geom& ge,
                   u32 t, u32 T, const Row& r, const GradShift& sh) {
    typedef typename E::B B;
    B* grow = (B*)g.grad + row * g.classes;
    const bool congruent = same_offset(grow, zrow);
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const u64 v = (u64)k * T + t;
        if (v < ge.nfull) {
            const u64 e0 = slot_elem<E>(ge, v);
            store_grad<E>(grow, congruent, e0, slot_grad<E>(va[k], e0, r, sh, g.off));
        }
    }
    for (u32 x = t; x < extras_of(ge); x += T) {
        const u64 e = extra_elem<E>(ge, x);
        grow[e] = E::to_bits(elem_grad(E::from_bits(zrow[e]), e, r, sh, g.off));
    }
}

// ---------------------------------------------------------------------------------------------
// The reduced loss (common.cuh `finish_reduced_loss`); Mean divides by B.

DEV void ce_finish(const CeArgs& g) {
    finish_reduced_loss(g.loss, g.flags, g.losses, g.batch, g.reduction, (double)g.batch);
}

// ---------------------------------------------------------------------------------------------
// ce_warp: G lanes per row, CE_WARP_NT / G rows per block.

template <class E>
DEV void ce_warp(const CeArgs& g) {
    typedef typename E::B B;
    const u32 G = g.group;
    const u32 t = threadIdx.x & (G - 1);
    const u32 lane = threadIdx.x & 31;
    const u32 mask = G == 32 ? 0xffffffffu : (((1u << G) - 1u) << (lane & ~(G - 1)));
    const u32 rows_per_block = CE_WARP_NT / G;
    const u64 C = g.classes;

    for (u64 row0 = (u64)blockIdx.x * rows_per_block; row0 < g.batch;
         row0 += (u64)gridDim.x * rows_per_block) {
        const u64 row = row0 + threadIdx.x / G;
        if (row >= g.batch) continue;  // whole groups only: shuffles stay within a group
        const B* zrow = (const B*)g.logits + row * g.ld;
        const Geom ge = geom_of<E>(zrow, C);
        const Row r = row_of(g, row);
        v16 va[CE_K];
        load_slots<E>(va, zrow, ge, t, G);
        Stats st = regs_stats<E, CE_K>(va, zrow, ge, t, G, r);
        stats_reduce_lanes(st, mask, (int)G);
        const bool far = far_max(st.m);  // the same in every lane of the group
        float dz = 0.0f;
        if (far && g.off != 0.0f) {
            dz = regs_dev<E, CE_K>(va, zrow, ge, t, G, st.m);
            for (u32 off = G >> 1; off > 0; off >>= 1) dz += __shfl_xor_sync(mask, dz, (int)off, (int)G);
        }
        if (t == 0) row_finish(g, row, r, st, dz);
        if (g.grad != 0) {
            const GradShift sh = grad_shift(st);
            regs_grad<E, CE_K>(g, va, zrow, row, ge, t, G, r, sh);
        }
    }
    ce_finish(g);
}

// ---------------------------------------------------------------------------------------------
// ce_block: one row per block of T threads; slots [0, K*T) in registers, and with S > 0 the next
// S*T slots in dynamic shared memory (slot K*T + j*T + t at index j*T + t: consecutive threads
// touch consecutive 16 bytes, so no bank conflicts). Each thread reads back only what it
// stored, so the shared slots need no barrier, only the thread's own cp.async completion.

#ifdef MIXUP_HOST_EMU
// Host emulation (kernels/emu): the launch's dynamic shared memory, a buffer of exactly its size.
#define ce_smem ((v16*)emu_dynamic_smem())
#else
extern __shared__ v16 ce_smem[];
#endif

// cp.async (sm_80+): in the emulation, the engine's model of it (the source read when issued,
// the destination garbage until the thread's wait; kernels/emu/shim.h).
#if __CUDA_ARCH__ >= 800
#ifdef MIXUP_HOST_EMU
DEV void ptx_cp_async_cg_16(v16* dst, const void* src) { emu::cp_async_16(dst, src); }
DEV void ptx_cp_async_wait_all() { emu::cp_async_wait_all(); }
#else
DEV void ptx_cp_async_cg_16(v16* dst, const void* src) {
    u64 a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((u32)a), "l"(src) : "memory");
}
DEV void ptx_cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
#endif
#endif

DEV void smem_fill(const void* src, v16* dst) {
#if __CUDA_ARCH__ >= 800
    ptx_cp_async_cg_16(dst, src);  // the destination is valid after smem_wait
#else
    *dst = ld_v16(src);
#endif
}

DEV void smem_wait() {
#if __CUDA_ARCH__ >= 800
    ptx_cp_async_wait_all();
#endif
}

template <class E>
DEV void ce_block(const CeArgs& g) {
    typedef typename E::B B;
    __shared__ Stats red[2][32];
    __shared__ float part[32];
    const u32 t = threadIdx.x, T = blockDim.x;
    const u32 S = g.smem_slots;
    const u64 C = g.classes;
    const u64 reg_slots = (u64)CE_K * T;
    u32 parity = 0;
    for (u64 row = blockIdx.x; row < g.batch; row += gridDim.x, parity ^= 1u) {
        const B* zrow = (const B*)g.logits + row * g.ld;
        const Geom ge = geom_of<E>(zrow, C);
        const Row r = row_of(g, row);
        v16 va[CE_K];
        load_slots<E>(va, zrow, ge, t, T);
        for (u32 j = 0; j < S; ++j) {
            const u64 v = reg_slots + (u64)j * T + t;
            if (v < ge.nfull) smem_fill(zrow + slot_elem<E>(ge, v), &ce_smem[j * T + t]);
        }
        // Register slots and extras first (the shared-memory copies land meanwhile).
        Stats st = regs_stats<E, CE_K>(va, zrow, ge, t, T, r);
        smem_wait();
        float mz2 = neg_inf();
        for (u32 j = 0; j < S; ++j)
            if (reg_slots + (u64)j * T + t < ge.nfull) slot_max<E>(ce_smem[j * T + t], mz2);
        Stats sm = stats_empty();
        sm.m = mz2;
        for (u32 j = 0; j < S; ++j) {
            const u64 v = reg_slots + (u64)j * T + t;
            if (v < ge.nfull) slot_sum_any<E>(ce_smem[j * T + t], slot_elem<E>(ge, v), mz2, r, sm);
        }
        stats_merge(st, sm);
        st = stats_reduce_block(st, red[parity]);
        const bool far = far_max(st.m);  // the same in every thread
        float dz = 0.0f;
        if (far && g.off != 0.0f) {
            dz = regs_dev<E, CE_K>(va, zrow, ge, t, T, st.m);
            for (u32 j = 0; j < S; ++j)
                if (reg_slots + (u64)j * T + t < ge.nfull) dz += slot_dev<E>(ce_smem[j * T + t], st.m);
            dz = sum_block(dz, part);
        }
        if (t == 0) row_finish(g, row, r, st, dz);
        if (g.grad != 0) {
            const GradShift sh = grad_shift(st);
            regs_grad<E, CE_K>(g, va, zrow, row, ge, t, T, r, sh);
            B* grow = (B*)g.grad + row * C;
            const bool congruent = same_offset(grow, zrow);
            for (u32 j = 0; j < S; ++j) {
                const u64 v = reg_slots + (u64)j * T + t;
                if (v < ge.nfull) {
                    const u64 e0 = slot_elem<E>(ge, v);
                    store_grad<E>(grow, congruent, e0, slot_grad<E>(ce_smem[j * T + t], e0, r, sh, g.off));
                }
            }
        }
    }
    ce_finish(g);
}

// ---------------------------------------------------------------------------------------------
// ce_online: one row per block, any C. Pass 1 folds each slot into a running (max, sum);
// pass 2 (only with a gradient) reads the row again.

template <class E>
DEV void ce_online(const CeArgs& g) {
    typedef typename E::B B;
    __shared__ Stats red[2][32];
    __shared__ float part[32];
    const u32 t = threadIdx.x, T = blockDim.x;
    const u64 C = g.classes;
    u32 parity = 0;
    for (u64 row = blockIdx.x; row < g.batch; row += gridDim.x, parity ^= 1u) {
        const B* zrow = (const B*)g.logits + row * g.ld;
        const Geom ge = geom_of<E>(zrow, C);
        const Row r = row_of(g, row);
        Stats st = stats_empty();
        for (u64 base = t; base < ge.nfull; base += (u64)T * CE_ONLINE_U) {
            v16 va[CE_ONLINE_U];
            load_slots<E>(va, zrow, ge, base, T);
#pragma unroll
            for (int k = 0; k < CE_ONLINE_U; ++k) {
                const u64 v = base + (u64)k * T;
                if (v < ge.nfull) {
                    float mz = neg_inf();
                    slot_max<E>(va[k], mz);
                    Stats sl = stats_empty();
                    sl.m = mz;
                    slot_sum_any<E>(va[k], slot_elem<E>(ge, v), mz, r, sl);
                    stats_merge(st, sl);
                }
            }
        }
        for (u32 x = t; x < extras_of(ge); x += T) {
            const u64 e = extra_elem<E>(ge, x);
            const float z = E::from_bits(zrow[e]);
            Stats sl = stats_empty();
            sl.m = z;
            elem_sum(z, e, shift_nat(z), r, sl);
            stats_merge(st, sl);
        }
        st = stats_reduce_block(st, red[parity]);
        // A far row's loss with smoothing needs sum_c (z_c - m) (`dev`): summed during the
        // gradient's read of the row, or for the loss alone by a read of its own. All uniform
        // in the block (st.m is the same in every thread), so every thread reaches sum_block.
        const bool dev = far_max(st.m) && g.off != 0.0f;
        float dz = 0.0f;
        if (dev && g.grad == 0) {
            for (u64 v = t; v < ge.nfull; v += T) dz += slot_dev<E>(ld_v16(zrow + slot_elem<E>(ge, v)), st.m);
            for (u32 x = t; x < extras_of(ge); x += T)
                dz = dev_add(E::from_bits(zrow[extra_elem<E>(ge, x)]), st.m, dz);
            dz = sum_block(dz, part);
        }
        if (t == 0 && !(dev && g.grad != 0)) row_finish(g, row, r, st, dz);
        if (g.grad != 0) {
            const GradShift sh = grad_shift(st);
            B* grow = (B*)g.grad + row * C;
            const bool congruent = same_offset(grow, zrow);
            for (u64 base = t; base < ge.nfull; base += (u64)T * CE_ONLINE_U) {
                v16 va[CE_ONLINE_U];
                load_slots<E>(va, zrow, ge, base, T);
#pragma unroll
                for (int k = 0; k < CE_ONLINE_U; ++k) {
                    const u64 v = base + (u64)k * T;
                    if (v < ge.nfull) {
                        const u64 e0 = slot_elem<E>(ge, v);
                        if (dev) dz += slot_dev<E>(va[k], st.m);  // read before the slot is written
                        store_grad<E>(grow, congruent, e0, slot_grad<E>(va[k], e0, r, sh, g.off));
                    }
                }
            }
            for (u32 x = t; x < extras_of(ge); x += T) {
                const u64 e = extra_elem<E>(ge, x);
                const float z = E::from_bits(zrow[e]);
                if (dev) dz = dev_add(z, st.m, dz);
                grow[e] = E::to_bits(elem_grad(z, e, r, sh, g.off));
            }
            if (dev) {
                dz = sum_block(dz, part);
                if (t == 0) row_finish(g, row, r, st, dz);
            }
        }
    }
    ce_finish(g);
}

#define CE_WARP(E, dt)                                                                            \
    extern "C" __global__ void __launch_bounds__(CE_WARP_NT) ce_warp_##dt(const CeArgs g) { ce_warp<E>(g); }
#define CE_BLOCK(E, dt)                                                                           \
    extern "C" __global__ void __launch_bounds__(CE_BLOCK_NT) ce_block_##dt(const CeArgs g) { ce_block<E>(g); }
#define CE_ONLINE(E, dt)                                                                          \
    extern "C" __global__ void __launch_bounds__(CE_BLOCK_NT) ce_online_##dt(const CeArgs g) { ce_online<E>(g); }

// Entries, one per kernel and dtype. The host compiles one at a time (-DMIXUP_ONLY_<entry>=1,
// src/cuda/context.rs) so that a first call compiles only the kernel it runs; -DMIXUP_ALL=1
// compiles them all (tests/kernels_compile.rs).
#if MIXUP_ALL || MIXUP_ONLY_ce_warp_f32
CE_WARP(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_ce_block_f32
CE_BLOCK(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_ce_online_f32
CE_ONLINE(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_ce_warp_f16
CE_WARP(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_ce_block_f16
CE_BLOCK(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_ce_online_f16
CE_ONLINE(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_ce_warp_bf16
CE_WARP(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_ce_block_bf16
CE_BLOCK(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_ce_online_bf16
CE_ONLINE(BF16, bf16)
#endif
