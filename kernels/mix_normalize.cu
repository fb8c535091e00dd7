// mix_normalize.cu: the fused "decoded pixels -> model input" op (src/normalize.rs has the
// formula and its source: timm's FastCollateMixup + PrefetchLoader). Per element, in f32:
//   v = lam * a + (1 - lam) * b      (MixUp: two rounded products, a rounded sum, no FMA)
//     = b inside a CutMix box, a outside it and for a sample that is its own partner
//   v = rint(v)                      (u8 rounding, MixUp samples only: timm's np.rint)
//   out = (v - mean_c) / std_c       (a rounded subtraction and an IEEE division, as torch's
//                                     sub_(mean).div_(std)), rounded once to the output type.
// The same operations in the same order as src/cpu/mix_normalize.rs: the two paths agree bit
// for bit.
//
// The work is cut into items, `tiles` per sample (grid-stride over `batch * tiles` items on a
// one-dimensional grid, as kernels/mix.cu does). In the tiled launch (tile_px > 0) an item is
// a tile of `tile_px` pixels (all channels) of a sample, and of its partner too when the
// partner is its partner's partner (an involution: timm's flip, random pairs), so each input
// element is read once; a sample whose partner is not an involution reads its partner's tile a
// second time (the op's byte floor counts it). The block reads its tiles in the input's order,
// one contiguous run per channel (channels-first) or one run of tile_px * C values
// (channels-last), so reads are coalesced; each result goes to shared memory at its place in
// the output's order, and after a barrier the block writes the output runs, coalesced too. A
// launch with tile_px = 0 (more channels than a tile holds) skips shared memory: an item is
// MN_DIRECT output elements of a sample, each thread computing the elements at its own indices.
//
// The input may be pitched (MixNormArgs::pitch: burn's CUDA tensors pad each row of their last
// dimension, read in place instead of copied dense first); the output is dense.

#ifndef MN_NT
#define MN_NT 256
#endif
// f32 results per sample tile in shared memory (16 KiB; two tiles for a pair).
#ifndef MN_TILE
#define MN_TILE 4096
#endif
// Output elements per item of the direct launch.
#ifndef MN_DIRECT
#define MN_DIRECT 2048
#endif

struct MixNormArgs {
    const void* x;           // [B, D] input, D = C * H * W
    void* out;               // [B, D] output
    const PlanEntry* plan;   // [B]
    const float* ms;         // [2C]: mean_c, then std_c (input units)
    u64 batch;
    u64 items;     // batch * tiles
    u64 tiles;     // items per sample
    u32 channels, height, width;
    u32 in_last;   // 1: input [H, W, C] per sample; 0: [C, H, W]
    u32 out_last;  // 1: output [H, W, C] per sample; 0: [C, H, W]
    u32 rint;      // 1: MixUp rounds to an integer (u8 pixels) before normalizing
    u32 tile_px;   // pixels per tile; 0: the direct launch
    u32 pad;
    // The input's rows: element i of a sample at pitched_at(i, seg, pitch) from its start,
    // samples x_row elements apart (a pitched tensor; dense: seg = pitch = x_row = D).
    u64 seg;       // elements per input row (W channels-first, C channels-last)
    u64 pitch;     // elements from one input row to the next (>= seg)
    u64 x_row;     // elements from one input sample to the next
};
static_assert(sizeof(MixNormArgs) == 112, "MixNormArgs must match the host layout");

// The mixed, normalized value of element (c, p) of sample n (entry e), given its own value a
// and its partner's b. The box test is on the pixel's row and column.
DEV float mn_value(const MixNormArgs& g, const PlanEntry& e, u64 n, u32 c, u32 p, float a, float b) {
    float v;
    if ((u64)e.partner == n) {
        v = a;
    } else if (e.cut) {
        const u32 y = p / g.width, x = p - y * g.width;
        v = (y >= e.y0 && y < e.y1 && x >= e.x0 && x < e.x1) ? b : a;
    } else {
        v = __fadd_rn(__fmul_rn(e.lam, a), __fmul_rn(__fsub_rn(1.0f, e.lam), b));
        if (g.rint) v = __fsub_rn(__fadd_rn(v, 8388608.0f), 8388608.0f);
    }
    return __fdiv_rn(__fsub_rn(v, g.ms[c]), g.ms[g.channels + c]);
}

// Element index within a sample of (channel c, pixel p) in a format.
DEV u64 mn_index(u32 last, u32 C, u64 P, u32 c, u64 p) {
    return last ? p * C + c : (u64)c * P + p;
}

// The tiled launch. Every thread of a block takes the same branches (the item, the pair test),
// so the barriers are reached by all.
template <class I, class O>
DEV void mix_normalize_tiled(const MixNormArgs& g) {
    typedef typename I::B IB;
    typedef typename O::B OB;
    __shared__ float tile_a[MN_TILE];
    __shared__ float tile_b[MN_TILE];
    const IB* x = (const IB*)g.x;
    OB* out = (OB*)g.out;
    const u32 C = g.channels;
    const u64 P = (u64)g.height * g.width;
    const u64 D = P * C;
    for (u64 it = blockIdx.x; it < g.items; it += gridDim.x) {
        const u64 n = it / g.tiles;
        const u64 p0 = (it - n * g.tiles) * g.tile_px;
        const u32 np = (u32)((P - p0) < g.tile_px ? (P - p0) : g.tile_px);
        const u32 count = np * C;
        const PlanEntry en = g.plan[n];
        const u64 m = en.partner;
        // An involution pair is done by the item of its lower sample, both outputs at once.
        const bool pair = m != n && g.plan[m].partner == n;
        if (pair && m < n) continue;
        const PlanEntry em = g.plan[m];
        const IB* xa = x + n * g.x_row;
        const IB* xb = x + m * g.x_row;
        // Read in the input's order (k walks the input run), store at the output's order.
        for (u32 k = threadIdx.x; k < count; k += MN_NT) {
            u32 c, q;
            if (g.in_last) {
                q = k / C;
                c = k - q * C;
            } else {
                c = k / np;
                q = k - c * np;
            }
            const u64 p = p0 + q;
            const u64 i = pitched_at(mn_index(g.in_last, C, P, c, p), g.seg, g.pitch);
            const float a = I::from_bits(xa[i]);
            const float b = m == n ? a : I::from_bits(xb[i]);
            const u32 s = g.out_last ? q * C + c : c * np + q;
            tile_a[s] = mn_value(g, en, n, c, (u32)p, a, b);
            if (pair) tile_b[s] = mn_value(g, em, m, c, (u32)p, b, a);
        }
        __syncthreads();
        // Write in the output's order.
        for (u32 k = threadIdx.x; k < count; k += MN_NT) {
            u64 o;
            if (g.out_last) {
                o = p0 * C + k;
            } else {
                const u32 c = k / np;
                o = (u64)c * P + p0 + (k - c * np);
            }
            out[n * D + o] = O::to_bits(tile_a[k]);
            if (pair) out[m * D + o] = O::to_bits(tile_b[k]);
        }
        __syncthreads();
    }
}

// The direct launch: each thread computes output elements at its own indices (coalesced
// writes; reads coalesced when the formats agree).
template <class I, class O>
DEV void mix_normalize_direct(const MixNormArgs& g) {
    typedef typename I::B IB;
    typedef typename O::B OB;
    const IB* x = (const IB*)g.x;
    OB* out = (OB*)g.out;
    const u32 C = g.channels;
    const u64 P = (u64)g.height * g.width;
    const u64 D = P * C;
    for (u64 it = blockIdx.x; it < g.items; it += gridDim.x) {
        const u64 n = it / g.tiles;
        const u64 r0 = (it - n * g.tiles) * MN_DIRECT;
        const u64 r1 = D - r0 < MN_DIRECT ? D : r0 + MN_DIRECT;
        const PlanEntry en = g.plan[n];
        const u64 m = en.partner;
        for (u64 r = r0 + threadIdx.x; r < r1; r += MN_NT) {
            u64 p;
            u32 c;
            if (g.out_last) {
                p = r / C;
                c = (u32)(r - p * C);
            } else {
                c = (u32)(r / P);
                p = r - (u64)c * P;
            }
            const u64 i = pitched_at(mn_index(g.in_last, C, P, c, p), g.seg, g.pitch);
            const float a = I::from_bits(x[n * g.x_row + i]);
            const float b = m == n ? a : I::from_bits(x[m * g.x_row + i]);
            out[n * D + r] = O::to_bits(mn_value(g, en, n, c, (u32)p, a, b));
        }
    }
}

template <class I, class O>
DEV void mix_normalize(const MixNormArgs& g) {
    if (g.tile_px) {
        mix_normalize_tiled<I, O>(g);
    } else {
        mix_normalize_direct<I, O>(g);
    }
}

// Entries `mix_normalize_<input>_<output>`, one family per input dtype (the host's kernel
// table: a family per input, a slot per output dtype).
#define MIX_NORMALIZE_U8(O, dt)                                                                   \
    extern "C" __global__ void __launch_bounds__(MN_NT)                                           \
        mix_normalize_u8_##dt(const MixNormArgs g) { mix_normalize<U8, O>(g); }
#define MIX_NORMALIZE_F32(O, dt)                                                                  \
    extern "C" __global__ void __launch_bounds__(MN_NT)                                           \
        mix_normalize_f32_##dt(const MixNormArgs g) { mix_normalize<F32, O>(g); }
#define MIX_NORMALIZE_F16(O, dt)                                                                  \
    extern "C" __global__ void __launch_bounds__(MN_NT)                                           \
        mix_normalize_f16_##dt(const MixNormArgs g) { mix_normalize<F16, O>(g); }
#define MIX_NORMALIZE_BF16(O, dt)                                                                 \
    extern "C" __global__ void __launch_bounds__(MN_NT)                                           \
        mix_normalize_bf16_##dt(const MixNormArgs g) { mix_normalize<BF16, O>(g); }

// The host compiles one entry at a time (-DMIXUP_ONLY_<entry>=1); -DMIXUP_ALL=1 compiles them
// all (tests/kernels_compile*.rs, the host emulation).
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_u8_f32
MIX_NORMALIZE_U8(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_u8_f16
MIX_NORMALIZE_U8(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_u8_bf16
MIX_NORMALIZE_U8(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_f32_f32
MIX_NORMALIZE_F32(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_f32_f16
MIX_NORMALIZE_F32(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_f32_bf16
MIX_NORMALIZE_F32(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_f16_f32
MIX_NORMALIZE_F16(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_f16_f16
MIX_NORMALIZE_F16(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_f16_bf16
MIX_NORMALIZE_F16(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_bf16_f32
MIX_NORMALIZE_BF16(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_bf16_f16
MIX_NORMALIZE_BF16(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_mix_normalize_bf16_bf16
MIX_NORMALIZE_BF16(BF16, bf16)
#endif
