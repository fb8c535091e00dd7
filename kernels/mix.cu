// mix.cu: MixUp lerp and CutMix paste of a batch, one fused pass.
//
// For sample i with partner p = plan[i].partner and weight lam = plan[i].lam, element k:
//   MixUp (and every sample under Layout::Rows):
//       out[i][k] = round(lam * x[i][k] + (1 - lam) * x[p][k])
//     as two rounded f32 products and one rounded f32 sum (__fmul_rn/__fadd_rn: no FMA, so the
//     bits equal the CPU path's), then one rounding to the storage type.
//   A sample that is its own partner (p == i) is copied unchanged, as the CPU path copies it:
//     the formula's value, lam x + (1 - lam) x = x, without its f32 rounding.
//   CutMix (image layouts), element k at pixel (y, x):
//       out[i][k] = (y0 <= y < y1 && x0 <= x < x1) ? x[p][k] : x[i][k]   (bits copied)
//
// Two kernels per dtype:
//   mix_gather_<dt>: any permutation, out of place. Work item = (sample, chunk of its row):
//     reads the sample's row and its partner's row, writes the output row (2 reads + 1 write;
//     a CutMix sample reads only what its box needs).
//   mix_pairs_<dt>: involutions (partner[partner[i]] == i), in place or out of place. Work item =
//     (pair, chunk): reads both rows of the pair once and writes both outputs, so the whole batch
//     moves 1 read + 1 write, the same bytes as a copy. The pair leaders (i <= partner[i]) follow
//     the plan entries in the plan buffer.
//
// Rows whose pointers (own, partner, output) share their offset from a 16-byte boundary move in
// 16-byte slots; other rows (odd row lengths with unequal offsets) go element by element.
//
// The input may be pitched (MixArgs::pitch: each row of its last dimension padded, as burn's CUDA
// tensors are, read in place instead of copied dense first); the output is dense. Slots are
// used for a pitched input only when its rows and pitch are whole slots (`slots_ok`).

#ifndef MIX_NT
#define MIX_NT 256
#endif
#ifndef MIX_UNROLL
#define MIX_UNROLL 4
#endif
// 1: a CutMix slot is judged from its first and last pixel (see box_mask).
#ifndef MIX_BOX_HOIST
#define MIX_BOX_HOIST 0
#endif

#define LAYOUT_ROWS 0u
#define LAYOUT_NCHW 1u
#define LAYOUT_NHWC 2u

// Kernel arguments, passed by value (mirrored by `MixArgs` in src/cuda/mix.rs).
struct MixArgs {
    u64 x;         // const E::B*, [B, D]
    u64 out;       // E::B*, [B, D]; may equal x for mix_pairs
    u64 plan;      // const PlanEntry*, [B], then the pair leaders as u32
    u64 items;     // work items: rows (or pairs) times chunks
    u64 row_len;   // D, elements per sample
    u64 chunks;    // chunks per row
    u64 plane;     // H * W
    u32 layout;    // LAYOUT_*
    u32 channels;  // C of the image layout
    u32 height;
    u32 width;
    u32 batch;
    u32 pad;
    // The input's rows (a pitched tensor: burn's CUDA tensors pad each row of their last
    // dimension): element e of a sample is at e + (e / seg) (pitch - seg) from the sample's
    // start, and samples are x_row elements apart. Dense: seg = pitch = row_len = x_row. The
    // output is always dense, and a pitched input is never mixed in place.
    u64 seg;       // elements per input row (the last dimension)
    u64 pitch;     // elements from one input row to the next (>= seg)
    u64 x_row;     // elements from one input sample to the next
};
static_assert(sizeof(MixArgs) == 104, "MixArgs must match the host layout");

// Offset of element e of a sample in the input (see MixArgs::pitch).
DEV u64 in_at(const MixArgs& g, u64 e) { return pitched_at(e, g.seg, g.pitch); }

// Whether the 16-byte slots of a row pair (input at a, output at o) can be used: the same
// offset from a 16-byte boundary (dense), or, for a pitched input, both rows on the boundary
// and input rows and pitch whole slots, so that no slot straddles two input rows.
template <class E>
DEV bool slots_ok(const MixArgs& g, const void* a, const void* o) {
    if (!same_offset(a, o)) return false;
    if (g.pitch == g.seg) return true;
    constexpr u64 S = sizeof(typename E::B);
    return ((u64)a & 15u) == 0 && (g.seg * S) % 16 == 0 && (g.pitch * S) % 16 == 0;
}

struct Pos {
    u32 y, x, c;
};

// Pixel of element e of a sample. Image samples have fewer than 2^32 elements (the host checks),
// so pixel arithmetic is 32-bit.
DEV Pos pos_of(const MixArgs& g, u32 e) {
    Pos p;
    u32 pix;
    if (g.layout == LAYOUT_NCHW) {
        pix = e % (u32)g.plane;
        p.c = 0;
    } else {
        pix = e / g.channels;
        p.c = e - pix * g.channels;
    }
    p.y = pix / g.width;
    p.x = pix - p.y * g.width;
    return p;
}

// Advances to the next element of the sample.
DEV void pos_next(const MixArgs& g, Pos& p) {
    if (g.layout == LAYOUT_NHWC) {
        if (++p.c < g.channels) return;
        p.c = 0;
    }
    if (++p.x == g.width) {
        p.x = 0;
        if (++p.y == g.height) p.y = 0;
    }
}

// What one output sample does: lerp with (lam, 1 - lam), or paste a box. A sample that is its
// own partner keeps its own values: a "paste" whose box is empty (`own`: no box is looked up).
struct Rule {
    float lam, oml;
    bool own;
    bool cut;
    u32 y0, h, x0, w;  // box origin and extent
};

// The rule of sample `index`, whose plan entry is `e`.
DEV Rule rule_of(const PlanEntry& e, u32 index, u32 layout) {
    Rule r;
    r.lam = e.lam;
    r.oml = __fsub_rn(1.0f, e.lam);
    r.own = e.partner == index;
    r.cut = r.own || (e.cut != 0 && layout != LAYOUT_ROWS);
    r.y0 = e.y0;
    r.h = e.y1 - e.y0;
    r.x0 = e.x0;
    r.w = e.x1 - e.x0;
    return r;
}

DEV bool inside(const Rule& r, const Pos& p) { return (p.y - r.y0 < r.h) && (p.x - r.x0 < r.w); }

DEV float lerp_rn(float lam, float oml, float a, float b) {
    return __fadd_rn(__fmul_rn(lam, a), __fmul_rn(oml, b));
}

// Bit j set when element e0 + j (a full slot) is inside the box. Not inlined: CutMix slots are
// a minority and one copy keeps the kernels small (NVRTC compile time).
__device__ __noinline__ u32 box_mask(u32 layout, u32 plane, u32 channels, u32 height, u32 width, u32 y0,
                                     u32 h, u32 x0, u32 w, u32 e0, u32 n) {
    MixArgs g;
    g.layout = layout;
    g.plane = plane;
    g.channels = channels;
    g.height = height;
    g.width = width;
    Rule r;
    r.y0 = y0;
    r.h = h;
    r.x0 = x0;
    r.w = w;
    Pos p = pos_of(g, e0);
#if MIX_BOX_HOIST
    // The box test hoisted out of the element loop: when the slot's first and last elements
    // are pixels of one image row (channels-first: of one plane too), every element lies on
    // that row between those two pixels, so one test of the row and of the two columns decides
    // the whole slot unless it straddles a vertical edge of the box.
    if (n > 1) {
        const Pos q = pos_of(g, e0 + n - 1);
        const bool one_row = layout == LAYOUT_NCHW ? (q.y == p.y && q.x >= p.x && q.x - p.x == n - 1)
                                                   : (q.y == p.y && q.x >= p.x && (e0 + n - 1) / channels - e0 / channels == q.x - p.x);
        if (one_row) {
            const u32 full = n == 32 ? 0xffffffffu : (1u << n) - 1u;
            if (p.y - y0 >= h) return 0u;
            const bool first_in = p.x - x0 < w, last_in = q.x - x0 < w;
            if (first_in && last_in) return full;
            // Both outside, on the same side of the box: no element inside.
            if (!first_in && !last_in && (q.x < x0 || p.x >= x0 + w)) return 0u;
        }
    }
#endif
    u32 m = 0;
    for (u32 j = 0; j < n; ++j) {
        if (inside(r, p)) m |= 1u << j;
        pos_next(g, p);
    }
    return m;
}

template <class E>
DEV u32 slot_box_mask(const MixArgs& g, const Rule& r, u64 e0) {
    if (r.own) return 0u;
    return box_mask(g.layout, (u32)g.plane, g.channels, g.height, g.width, r.y0, r.h, r.x0, r.w, (u32)e0, E::VE);
}

// Bitwise select: element j from b where bit j of m is set, else from a.
template <class E>
DEV v16 blend_bits(const v16& a, const v16& b, u32 m) {
    constexpr int BITS = 128 / E::VE;  // bits per element: 32, 16, 8
    v16 o;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        u32 sel = 0;
#pragma unroll
        for (int k = 0; k < 32 / BITS; ++k) {
            const int j = w * (32 / BITS) + k;
            if ((m >> j) & 1u) sel |= (0xffffffffu >> (32 - BITS)) << (k * BITS);
        }
        o.w[w] = (a.w[w] & ~sel) | (b.w[w] & sel);
    }
    return o;
}

template <class E>
DEV v16 lerp_slot(const Rule& r, const v16& a, const v16& b) {
    v16 o;
#pragma unroll
    for (int j = 0; j < E::VE; j += 2) {
        const float lo = lerp_rn(r.lam, r.oml, E::get(a, j), E::get(b, j));
        const float hi = lerp_rn(r.lam, r.oml, E::get(a, j + 1), E::get(b, j + 1));
        E::set2(o, j, lo, hi);
    }
    return o;
}

// One element (head/tail elements, and rows that cannot use slots).
template <class E>
DEV typename E::B mix_scalar(const MixArgs& g, const Rule& r, u64 e, typename E::B a,
                             typename E::B b) {
    if (r.cut) {
        if (r.own) return a;
        return box_mask(g.layout, (u32)g.plane, g.channels, g.height, g.width, r.y0, r.h, r.x0, r.w, (u32)e, 1)
                   ? b
                   : a;
    }
    return E::to_bits(lerp_rn(r.lam, r.oml, E::from_bits(a), E::from_bits(b)));
}

// ---------------------------------------------------------------------------------------------
// Any permutation, out of place.

template <class E>
DEV void mix_gather(const MixArgs& g) {
    typedef typename E::B B;
    const B* x = (const B*)g.x;
    B* out = (B*)g.out;
    const PlanEntry* plan = (const PlanEntry*)g.plan;
    const u64 D = g.row_len;
    constexpr u64 CS = MIX_NT * MIX_UNROLL;  // slots per chunk

    for (u64 item = blockIdx.x; item < g.items; item += gridDim.x) {
        const u64 row = div_u64(item, g.chunks);
        const u64 chunk = item - row * g.chunks;
        const PlanEntry pe = plan[row];
        const Rule r = rule_of(pe, (u32)row, g.layout);
        const B* a = x + row * g.x_row;
        const B* b = x + (u64)pe.partner * g.x_row;
        B* o = out + row * D;

        if (same_offset(a, b) && slots_ok<E>(g, a, o)) {
            const Geom ge = geom_of<E>(a, D);
            const u64 first = chunk * CS + threadIdx.x;
            // Box masks first (see mix_pairs), then the loads.
            u32 mask[MIX_UNROLL];
#pragma unroll
            for (int k = 0; k < MIX_UNROLL; ++k) {
                const u64 v = first + (u64)k * MIX_NT;
                mask[k] = v < ge.nfull && r.cut ? slot_box_mask<E>(g, r, slot_elem<E>(ge, v)) : 0u;
            }
            v16 va[MIX_UNROLL], vb[MIX_UNROLL];
#pragma unroll
            for (int k = 0; k < MIX_UNROLL; ++k) {
                const u64 v = first + (u64)k * MIX_NT;
                if (v < ge.nfull) {
                    const u64 e0 = slot_elem<E>(ge, v);
                    // A CutMix slot reads only the rows its box needs.
                    const u32 full = (1u << E::VE) - 1u;
                    const u64 i0 = in_at(g, e0);
                    va[k] = (!r.cut || mask[k] != full) ? ld_v16_nc(a + i0) : zero_v16();
                    vb[k] = (!r.cut || mask[k] != 0u) ? ld_v16_nc(b + i0) : zero_v16();
                }
            }
#pragma unroll
            for (int k = 0; k < MIX_UNROLL; ++k) {
                const u64 v = first + (u64)k * MIX_NT;
                if (v < ge.nfull) {
                    const u64 e0 = slot_elem<E>(ge, v);
                    st_v16(o + e0, r.cut ? blend_bits<E>(va[k], vb[k], mask[k]) : lerp_slot<E>(r, va[k], vb[k]));
                }
            }
            if (chunk == 0) {
                for (u32 xi = threadIdx.x; xi < extras_of(ge); xi += MIX_NT) {
                    const u64 e = extra_elem<E>(ge, xi);
                    const u64 i = in_at(g, e);
                    o[e] = mix_scalar<E>(g, r, e, a[i], b[i]);
                }
            }
        } else {
            // Element by element, coalesced across the block.
            const u64 base = chunk * CS * E::VE;
#pragma unroll 2
            for (u32 k = 0; k < CS * E::VE / MIX_NT; ++k) {
                const u64 e = base + (u64)k * MIX_NT + threadIdx.x;
                if (e < D) {
                    const u64 i = in_at(g, e);
                    o[e] = mix_scalar<E>(g, r, e, a[i], b[i]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Involutions: one work item mixes both rows of a pair; in place when out == x.

template <class E>
DEV void mix_pairs(const MixArgs& g) {
    typedef typename E::B B;
    const B* x = (const B*)g.x;
    B* out = (B*)g.out;
    const PlanEntry* plan = (const PlanEntry*)g.plan;
    const u32* leaders = (const u32*)(plan + g.batch);
    const u64 D = g.row_len;
    constexpr u64 CS = MIX_NT * MIX_UNROLL;

    for (u64 item = blockIdx.x; item < g.items; item += gridDim.x) {
        const u64 pair = div_u64(item, g.chunks);
        const u64 chunk = item - pair * g.chunks;
        const u32 i = leaders[pair];
        const PlanEntry pi = plan[i];
        const u32 p = pi.partner;
        const bool two = p != i;
        const Rule ri = rule_of(pi, i, g.layout);
        const Rule rp = rule_of(plan[p], p, g.layout);
        const B* a = x + (u64)i * g.x_row;
        const B* b = x + (u64)p * g.x_row;
        B* oa = out + (u64)i * D;
        B* ob = out + (u64)p * D;

        if (same_offset(a, b) && slots_ok<E>(g, a, oa) && same_offset(a, ob)) {
            const Geom ge = geom_of<E>(a, D);
            const u64 first = chunk * CS + threadIdx.x;
            // Box masks first: the (non-inlined) mask routine then runs while no loaded data is
            // live, so the call needs no spills.
            u32 mi[MIX_UNROLL], mp[MIX_UNROLL];
#pragma unroll
            for (int k = 0; k < MIX_UNROLL; ++k) {
                const u64 v = first + (u64)k * MIX_NT;
                const bool ok = v < ge.nfull;
                mi[k] = ok && ri.cut ? slot_box_mask<E>(g, ri, slot_elem<E>(ge, v)) : 0u;
                mp[k] = ok && two && rp.cut ? slot_box_mask<E>(g, rp, slot_elem<E>(ge, v)) : 0u;
            }
            v16 va[MIX_UNROLL], vb[MIX_UNROLL];
#pragma unroll
            for (int k = 0; k < MIX_UNROLL; ++k) {
                const u64 v = first + (u64)k * MIX_NT;
                if (v < ge.nfull) {
                    const u64 i0 = in_at(g, slot_elem<E>(ge, v));
                    va[k] = ld_v16(a + i0);
                    vb[k] = two ? ld_v16(b + i0) : va[k];
                }
            }
#pragma unroll
            for (int k = 0; k < MIX_UNROLL; ++k) {
                const u64 v = first + (u64)k * MIX_NT;
                if (v < ge.nfull) {
                    const u64 e0 = slot_elem<E>(ge, v);
                    if (two) {
                        st_v16(ob + e0, rp.cut ? blend_bits<E>(vb[k], va[k], mp[k]) : lerp_slot<E>(rp, vb[k], va[k]));
                    }
                    st_v16(oa + e0, ri.cut ? blend_bits<E>(va[k], vb[k], mi[k]) : lerp_slot<E>(ri, va[k], vb[k]));
                }
            }
            if (chunk == 0) {
                for (u32 xi = threadIdx.x; xi < extras_of(ge); xi += MIX_NT) {
                    const u64 e = extra_elem<E>(ge, xi);
                    const u64 ix = in_at(g, e);
                    const B ea = a[ix], eb = b[ix];
                    oa[e] = mix_scalar<E>(g, ri, e, ea, eb);
                    if (two) ob[e] = mix_scalar<E>(g, rp, e, eb, ea);
                }
            }
        } else {
            const u64 base = chunk * CS * E::VE;
#pragma unroll 2
            for (u32 k = 0; k < CS * E::VE / MIX_NT; ++k) {
                const u64 e = base + (u64)k * MIX_NT + threadIdx.x;
                if (e < D) {
                    const u64 ix = in_at(g, e);
                    const B ea = a[ix], eb = b[ix];
                    oa[e] = mix_scalar<E>(g, ri, e, ea, eb);
                    if (two) ob[e] = mix_scalar<E>(g, rp, e, eb, ea);
                }
            }
        }
    }
}

#define MIX_GATHER(E, dt)                                                                         \
    extern "C" __global__ void __launch_bounds__(MIX_NT) mix_gather_##dt(const MixArgs g) { mix_gather<E>(g); }
#define MIX_PAIRS(E, dt)                                                                          \
    extern "C" __global__ void __launch_bounds__(MIX_NT) mix_pairs_##dt(const MixArgs g) { mix_pairs<E>(g); }

// Entries, one per kernel and dtype. The host compiles one at a time (-DMIXUP_ONLY_<entry>=1,
// src/cuda/context.rs) so that a first call compiles only the kernel it runs; -DMIXUP_ALL=1
// compiles them all (tests/kernels_compile.rs).
#if MIXUP_ALL || MIXUP_ONLY_mix_gather_f32
MIX_GATHER(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_pairs_f32
MIX_PAIRS(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_gather_f16
MIX_GATHER(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_pairs_f16
MIX_PAIRS(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_gather_bf16
MIX_GATHER(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_pairs_bf16
MIX_PAIRS(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_gather_u8
MIX_GATHER(U8, u8)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_pairs_u8
MIX_PAIRS(U8, u8)
#endif
