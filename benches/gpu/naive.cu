// naive.cu: the same operations unfused, one element per thread, the way a first port (or
// PyTorch eager) computes them. Not part of the library: the benchmark's baseline (loaded by
// benches/gpu/naive.rs), which the fused kernels are measured against. benches/gpu.rs checks
// each op's output against the fused kernel's once before timing it, so the comparison is
// between two correct programs.
//
// mix:          gather (tmp[i] = x[partner(i)])  ->  lerp (out = lam x + (1 - lam) tmp; CutMix
//               samples and samples that are their own partner copy x)  ->  paste (CutMix
//               boxes from tmp)
// soft targets: one_hot(labels) and one_hot(labels[partner]) as f32  ->  blend
// mixup CE:     the soft targets as above  ->  log_softmax  ->  per-row loss  ->  reduction
//               ->  gradient (exp(logp) - t) * scale

#define NAIVE_NT 256

#define NAIVE_LOOP(n) for (u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x; idx < (n); idx += (u64)gridDim.x * blockDim.x)

template <class E>
DEV void naive_gather(const typename E::B* x, typename E::B* tmp, const PlanEntry* plan, u64 D, u64 n) {
    NAIVE_LOOP(n) {
        const u64 i = idx / D, k = idx - i * D;
        tmp[idx] = x[(u64)plan[i].partner * D + k];
    }
}

template <class E>
DEV void naive_lerp(const typename E::B* x, const typename E::B* tmp, typename E::B* out, const PlanEntry* plan,
                    u64 D, u64 n, u32 image) {
    NAIVE_LOOP(n) {
        const u64 i = idx / D;
        const PlanEntry pe = plan[i];
        if ((image && pe.cut) || pe.partner == i) {
            out[idx] = x[idx];
        } else {
            const float lam = pe.lam;
            const float v = __fadd_rn(__fmul_rn(lam, E::from_bits(x[idx])),
                                      __fmul_rn(__fsub_rn(1.0f, lam), E::from_bits(tmp[idx])));
            out[idx] = E::to_bits(v);
        }
    }
}

// layout: 1 NCHW, 2 NHWC.
template <class E>
DEV void naive_paste(const typename E::B* tmp, typename E::B* out, const PlanEntry* plan, u64 D, u64 n,
                     u32 layout, u32 channels, u32 height, u32 width) {
    NAIVE_LOOP(n) {
        const u64 i = idx / D, k = idx - i * D;
        const PlanEntry pe = plan[i];
        if (!pe.cut) continue;
        u64 pix = layout == 1 ? k % ((u64)height * width) : k / channels;
        const u32 y = (u32)(pix / width), xx = (u32)(pix % width);
        if (y >= pe.y0 && y < pe.y1 && xx >= pe.x0 && xx < pe.x1) out[idx] = tmp[idx];
    }
}

// y[i][c] = c == labels[src] ? on : off, src = partner(i) when use_partner, else i.
extern "C" __global__ void naive_one_hot(float* y, const u32* labels, const PlanEntry* plan, u64 C, u64 n,
                                         float off, float on, u32 use_partner) {
    NAIVE_LOOP(n) {
        const u64 i = idx / C, c = idx - i * C;
        const u32 src = use_partner ? plan[i].partner : (u32)i;
        y[idx] = (u64)labels[src] == c ? on : off;
    }
}

template <class E>
DEV void naive_blend(const float* y1, const float* y2, typename E::B* out, const PlanEntry* plan, u64 C, u64 n) {
    NAIVE_LOOP(n) {
        const float lam = plan[idx / C].lam;
        out[idx] = E::to_bits(__fadd_rn(__fmul_rn(lam, y1[idx]), __fmul_rn(__fsub_rn(1.0f, lam), y2[idx])));
    }
}

DEV float naive_block_max(float v, float* sh) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = sh[0];
    for (u32 w = 1; w < (blockDim.x >> 5); ++w) r = fmaxf(r, sh[w]);
    __syncthreads();
    return r;
}

DEV float naive_block_sum(float v, float* sh) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = sh[0];
    for (u32 w = 1; w < (blockDim.x >> 5); ++w) r += sh[w];
    __syncthreads();
    return r;
}

// One block per row: max, sum of exp, then logp = z - m - log(sum), three passes over the row.
template <class E>
DEV void naive_log_softmax(const typename E::B* z, float* logp, u64 C, u64 rows) {
    __shared__ float sh[32];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const typename E::B* zr = z + row * C;
        float m = neg_inf();
        for (u64 c = threadIdx.x; c < C; c += blockDim.x) m = fmaxf(m, E::from_bits(zr[c]));
        m = naive_block_max(m, sh);
        float s = 0.0f;
        for (u64 c = threadIdx.x; c < C; c += blockDim.x) s += expf(E::from_bits(zr[c]) - m);
        s = naive_block_sum(s, sh);
        const float ls = logf(s);
        for (u64 c = threadIdx.x; c < C; c += blockDim.x) logp[row * C + c] = E::from_bits(zr[c]) - m - ls;
    }
}

// losses[row] = -sum_c t * logp, one block per row.
extern "C" __global__ void naive_row_loss(const float* logp, const float* t, float* losses, u64 C, u64 rows) {
    __shared__ float sh[32];
    for (u64 row = blockIdx.x; row < rows; row += gridDim.x) {
        float acc = 0.0f;
        for (u64 c = threadIdx.x; c < C; c += blockDim.x) acc -= t[row * C + c] * logp[row * C + c];
        acc = naive_block_sum(acc, sh);
        if (threadIdx.x == 0) losses[row] = acc;
    }
}

// loss[0] = sum (or mean) of the per-row losses, one block.
extern "C" __global__ void naive_reduce(const float* losses, float* loss, u64 rows, u32 mean) {
    __shared__ float sh[32];
    float acc = 0.0f;
    for (u64 i = threadIdx.x; i < rows; i += blockDim.x) acc += losses[i];
    acc = naive_block_sum(acc, sh);
    if (threadIdx.x == 0) loss[0] = mean ? acc / (float)rows : acc;
}

// grad = (exp(logp) - t) * scale.
template <class E>
DEV void naive_grad(const float* logp, const float* t, typename E::B* grad, float scale, u64 n) {
    NAIVE_LOOP(n) { grad[idx] = E::to_bits((expf(logp[idx]) - t[idx]) * scale); }
}

#define NAIVE_MIX(E, dt)                                                                               \
    extern "C" __global__ void naive_gather_##dt(const E::B* x, E::B* tmp, const PlanEntry* plan, u64 D, \
                                                 u64 n) {                                              \
        naive_gather<E>(x, tmp, plan, D, n);                                                           \
    }                                                                                                  \
    extern "C" __global__ void naive_lerp_##dt(const E::B* x, const E::B* tmp, E::B* out,              \
                                               const PlanEntry* plan, u64 D, u64 n, u32 image) {       \
        naive_lerp<E>(x, tmp, out, plan, D, n, image);                                                 \
    }                                                                                                  \
    extern "C" __global__ void naive_paste_##dt(const E::B* tmp, E::B* out, const PlanEntry* plan, u64 D, \
                                                u64 n, u32 layout, u32 channels, u32 height, u32 width) { \
        naive_paste<E>(tmp, out, plan, D, n, layout, channels, height, width);                         \
    }

#define NAIVE_FLOAT(E, dt)                                                                             \
    extern "C" __global__ void naive_blend_##dt(const float* y1, const float* y2, E::B* out,          \
                                                const PlanEntry* plan, u64 C, u64 n) {                 \
        naive_blend<E>(y1, y2, out, plan, C, n);                                                       \
    }                                                                                                  \
    extern "C" __global__ void naive_log_softmax_##dt(const E::B* z, float* logp, u64 C, u64 rows) {  \
        naive_log_softmax<E>(z, logp, C, rows);                                                        \
    }                                                                                                  \
    extern "C" __global__ void naive_grad_##dt(const float* logp, const float* t, E::B* grad, float scale, \
                                               u64 n) {                                                \
        naive_grad<E>(logp, t, grad, scale, n);                                                        \
    }

// Entries. The benchmark compiles them all at once (-DMIXUP_ALL=1); -DMIXUP_ONLY_naive_<dt>=1
// selects one dtype, with the dtype-free ones above.
#if MIXUP_ALL || MIXUP_ONLY_naive_f32
NAIVE_MIX(F32, f32)
NAIVE_FLOAT(F32, f32)
#endif
#if MIXUP_ALL || MIXUP_ONLY_naive_f16
NAIVE_MIX(F16, f16)
NAIVE_FLOAT(F16, f16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_naive_bf16
NAIVE_MIX(BF16, bf16)
NAIVE_FLOAT(BF16, bf16)
#endif
#if MIXUP_ALL || MIXUP_ONLY_naive_u8
NAIVE_MIX(U8, u8)
#endif
