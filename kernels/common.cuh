// common.cuh: prepended to every kernel module before NVRTC sees it (build.rs does the
// concatenation), so the kernels need no header from a CUDA toolkit. NVRTC 13.0 ships no
// cuda_fp16.h / cuda_bf16.h: f16 and bf16 travel as raw 16-bit values and are converted here
// with inline PTX.
//
// Conventions shared by every module:
// - All arithmetic is f32; a value is widened exactly, combined, and rounded once to its storage
//   type (round to nearest even; u8 also clamps to 0..255 and maps NaN to 0), as
//   `Element::from_f32` does on the host.
// - Indices into tensors are 64-bit (`u64`): B*C and B*D may exceed 2^32.
// - Rows move in aligned 16-byte slots with one vector access each; the few elements before the
//   first and after the last 16-byte boundary of a row go element by element (see `Geom`), so
//   nothing outside the row is ever read or written.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define DEV __device__ __forceinline__

// The plan as the host lays it out (src/plan.rs `PlanEntry`, 32 bytes).
struct PlanEntry {
    u32 partner;
    float lam;
    u32 cut;  // 0 MixUp, 1 CutMix
    u32 y0, y1, x0, x1;
    u32 pad;
};
static_assert(sizeof(PlanEntry) == 32, "PlanEntry must match the host layout");

// 16 bytes, the unit of every vector access.
struct alignas(16) v16 {
    u32 w[4];
};

// ---------------------------------------------------------------------------------------------
// PTX conversions, one function per instruction. On the device, inline PTX; in the host
// emulation (kernels/emu, MIXUP_HOST_EMU), host versions of the same instructions (emu::cvt_*
// in kernels/emu/shim.h: round to nearest even, overflow to inf, subnormals kept, any NaN to the
// canonical 0x7fff as the device gives it), so the emulation takes the same sm_75 and sm_80+
// branches below as the device: scripts/emulate.sh builds it once per __CUDA_ARCH__ (750, 800,
// 900). The sm_80 instructions exist only for sm_80+, in the emulation as on the device, so a
// use on the sm_75 path fails to build in both.

#ifdef MIXUP_HOST_EMU
#ifndef __CUDA_ARCH__
#error "the emulation builds each kernel unit for one __CUDA_ARCH__ (scripts/emulate.sh)"
#endif
DEV float ptx_cvt_f32_f16(u16 h) { return emu::cvt_f32_f16(h); }
DEV u16 ptx_cvt_rn_f16_f32(float f) { return emu::cvt_rn_f16_f32(f); }
#if __CUDA_ARCH__ >= 800
DEV u16 ptx_cvt_rn_bf16_f32(float f) { return emu::cvt_rn_bf16_f32(f); }
// PTX's operand order: `a` goes to the upper half of the result, `b` to the lower.
DEV u32 ptx_cvt_rn_f16x2_f32(float a, float b) { return emu::cvt_rn_f16x2_f32(a, b); }
DEV u32 ptx_cvt_rn_bf16x2_f32(float a, float b) { return emu::cvt_rn_bf16x2_f32(a, b); }
#endif
#else
DEV float ptx_cvt_f32_f16(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
DEV u16 ptx_cvt_rn_f16_f32(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#if __CUDA_ARCH__ >= 800
DEV u16 ptx_cvt_rn_bf16_f32(float f) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}
// PTX's operand order: `a` goes to the upper half of the result, `b` to the lower.
DEV u32 ptx_cvt_rn_f16x2_f32(float a, float b) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(a), "f"(b));
    return r;
}
DEV u32 ptx_cvt_rn_bf16x2_f32(float a, float b) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(a), "f"(b));
    return r;
}
#endif
#endif

// ---------------------------------------------------------------------------------------------
// Conversions.

DEV float f16_to_f32(u16 h) { return ptx_cvt_f32_f16(h); }
DEV u16 f32_to_f16(float f) { return ptx_cvt_rn_f16_f32(f); }

// bf16 -> f32 is exact: the bf16 bits are the high half of the f32 bits.
DEV float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }

DEV u16 f32_to_bf16(float f) {
#if __CUDA_ARCH__ >= 800
    return ptx_cvt_rn_bf16_f32(f);
#else
    // sm_75 has no bf16 conversion instruction: round to nearest even in integer arithmetic,
    // exactly as the `half` crate does (NaN stays NaN: keep the high bits, set the quiet bit;
    // sm_80's instruction gives the canonical 0x7fff instead, also a NaN).
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x40u);
    return (u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
#endif
}

// Two f32 to a packed pair (lo in bits 0..15, hi in bits 16..31).
DEV u32 pack_f16x2(float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    return ptx_cvt_rn_f16x2_f32(hi, lo);
#else
    return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16);
#endif
}

DEV u32 pack_bf16x2(float lo, float hi) {
#if __CUDA_ARCH__ >= 800
    return ptx_cvt_rn_bf16x2_f32(hi, lo);
#else
    return (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16);
#endif
}

// u8 -> f32 without an I2F: 2^23 + b has b in its low mantissa bits.
DEV float u8_to_f32(u32 b) { return __uint_as_float(0x4b000000u | (b & 0xffu)) - 8388608.0f; }

// f32 -> u8 as `u8::from_f32`: NaN -> 0, clamp to [0, 255], round half to even. fmaxf(NaN, 0)
// is 0; adding 2^23 to a value in [0, 255] rounds it to an integer, ties to even.
DEV u32 f32_to_u8(float f) {
    f = fminf(fmaxf(f, 0.0f), 255.0f);
    return __float_as_uint(f + 8388608.0f) & 0xffu;
}

// ---------------------------------------------------------------------------------------------
// Element types: storage, width, and access to element j of a 16-byte slot (j is a
// compile-time constant after unrolling, so the register array is never indexed at run time).

// `B` is the unsigned integer the value is stored as (its bits); kernels take `const E::B*`.
struct F32 {
    typedef u32 B;
    static constexpr int VE = 4;
    DEV static float from_bits(B b) { return __uint_as_float(b); }
    DEV static B to_bits(float v) { return __float_as_uint(v); }
    DEV static float get(const v16& s, int j) { return __uint_as_float(s.w[j]); }
    // Sets elements j and j+1 (j even).
    DEV static void set2(v16& s, int j, float lo, float hi) {
        s.w[j] = __float_as_uint(lo);
        s.w[j + 1] = __float_as_uint(hi);
    }
};

struct F16 {
    typedef u16 B;
    static constexpr int VE = 8;
    DEV static float from_bits(B b) { return f16_to_f32(b); }
    DEV static B to_bits(float v) { return f32_to_f16(v); }
    DEV static float get(const v16& s, int j) {
        return f16_to_f32((u16)((j & 1) ? (s.w[j >> 1] >> 16) : (s.w[j >> 1] & 0xffffu)));
    }
    DEV static void set2(v16& s, int j, float lo, float hi) { s.w[j >> 1] = pack_f16x2(lo, hi); }
};

struct BF16 {
    typedef u16 B;
    static constexpr int VE = 8;
    DEV static float from_bits(B b) { return bf16_to_f32(b); }
    DEV static B to_bits(float v) { return f32_to_bf16(v); }
    DEV static float get(const v16& s, int j) {
        return __uint_as_float((j & 1) ? (s.w[j >> 1] & 0xffff0000u) : (s.w[j >> 1] << 16));
    }
    DEV static void set2(v16& s, int j, float lo, float hi) { s.w[j >> 1] = pack_bf16x2(lo, hi); }
};

struct U8 {
    typedef u8 B;
    static constexpr int VE = 16;
    DEV static float from_bits(B b) { return u8_to_f32(b); }
    DEV static B to_bits(float v) { return (u8)f32_to_u8(v); }
    DEV static float get(const v16& s, int j) { return u8_to_f32(s.w[j >> 2] >> (8 * (j & 3))); }
    DEV static void set2(v16& s, int j, float lo, float hi) {
        const u32 pair = f32_to_u8(lo) | (f32_to_u8(hi) << 8);
        const u32 shift = 8 * (j & 3);  // j even: 0 or 16
        s.w[j >> 2] = (s.w[j >> 2] & ~(0xffffu << shift)) | (pair << shift);
    }
};

// ---------------------------------------------------------------------------------------------
// 16-byte global accesses. `ld_v16` is coherent (safe when the same kernel writes the buffer,
// as in-place kernels do); `ld_v16_nc` goes through the read-only path for buffers the kernel
// never writes.

#ifdef MIXUP_HOST_EMU
DEV v16 ld_v16(const void* p) {
    emu_check_aligned(p);
    v16 v;
    memcpy(&v, p, 16);
    return v;
}
DEV v16 ld_v16_nc(const void* p) { return ld_v16(p); }
DEV void st_v16(void* p, const v16& v) {
    emu_check_aligned(p);
    memcpy(p, &v, 16);
}
DEV float ld_cg_f32(const float* p) { return *p; }
#else
DEV v16 ld_v16(const void* p) {
    v16 v;
    asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3])
                 : "l"(p));
    return v;
}

DEV v16 ld_v16_nc(const void* p) {
    v16 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3])
                 : "l"(p));
    return v;
}

DEV void st_v16(void* p, const v16& v) {
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.w[0]), "r"(v.w[1]),
                 "r"(v.w[2]), "r"(v.w[3])
                 : "memory");
}

// A load that bypasses L1 (for values other blocks wrote in this launch, after a fence).
DEV float ld_cg_f32(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}
#endif

DEV v16 zero_v16() {
    v16 v;
    v.w[0] = v.w[1] = v.w[2] = v.w[3] = 0u;
    return v;
}

// Geometry of one row of `len` elements: `head` elements up to the first 16-byte boundary, then
// `nfull` full 16-byte slots, then `tail` elements. Slot v covers elements
// [head + v*VE, head + (v+1)*VE). The head and tail (at most VE-1 each) go element by element;
// extra element x (0 <= x < head + tail) is element `extra_elem(x)` of the row.
struct Geom {
    u32 head, tail;
    u64 nfull;
};

template <class E>
DEV Geom geom_of(const typename E::B* row, u64 len) {
    Geom g;
    const u32 lead = (u32)(((u64)row & 15u) / sizeof(typename E::B));
    const u64 h = (u64)((E::VE - lead) % E::VE);
    g.head = (u32)(h < len ? h : len);
    g.nfull = (len - g.head) / E::VE;
    g.tail = (u32)(len - g.head - g.nfull * E::VE);
    return g;
}

DEV u32 extras_of(const Geom& g) { return g.head + g.tail; }

template <class E>
DEV u64 extra_elem(const Geom& g, u32 x) {
    return x < g.head ? (u64)x : (u64)g.head + g.nfull * E::VE + (x - g.head);
}

// Element index of the first element of slot v.
template <class E>
DEV u64 slot_elem(const Geom& g, u64 v) {
    return (u64)g.head + v * E::VE;
}

// K slots of a row into registers: slots first, first + step, ...; zero past the full slots.
template <class E, int K, class B>
DEV void load_slots(v16 (&va)[K], const B* zrow, const Geom& ge, u64 first, u64 step) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const u64 v = first + (u64)k * step;
        va[k] = v < ge.nfull ? ld_v16(zrow + slot_elem<E>(ge, v)) : zero_v16();
    }
}

// Whether two pointers sit at the same offset from a 16-byte boundary (then rows of the same
// length have the same geometry and their slots line up).
DEV bool same_offset(const void* p, const void* q) { return (((u64)p ^ (u64)q) & 15u) == 0; }

// 64-bit division where both operands usually fit in 32 bits.
DEV u64 div_u64(u64 a, u64 b) {
    if (((a | b) >> 32) == 0) return (u64)((u32)a / (u32)b);
    return a / b;
}

// Offset of element e of a sample stored as rows of `seg` elements `pitch` apart (a pitched
// tensor: burn's CUDA tensors pad each row of their last dimension); e itself when dense. The
// division is 32-bit when both operands fit (an image sample always does: the host limits it to
// 2^32 elements).
DEV u64 pitched_at(u64 e, u64 seg, u64 pitch) {
    if (pitch == seg) return e;
    return e + div_u64(e, seg) * (pitch - seg);
}

// Element j of a slot with j known only at run time (selects, no local memory).
DEV u32 word_dyn(const v16& s, u32 w) {
    const u32 a = (w & 1u) ? s.w[1] : s.w[0];
    const u32 b = (w & 1u) ? s.w[3] : s.w[2];
    return (w & 2u) ? b : a;
}

template <class E>
DEV float get_dyn(const v16& s, u32 j) {
    constexpr u32 BITS = 128 / E::VE;
    const u32 bitpos = j * BITS;
    const u32 bits = word_dyn(s, bitpos >> 5) >> (bitpos & 31u);
    return E::from_bits((typename E::B)(BITS == 32 ? bits : bits & ((1u << (BITS & 31u)) - 1u)));
}

// ---------------------------------------------------------------------------------------------
// Math in f32. exp2 and log2 by the special-function unit; the relative error of ex2.approx is
// about 2^-22, far below what a loss or a bf16 gradient can show.

#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

#ifdef MIXUP_HOST_EMU
DEV float ex2(float x) { return exp2f(x); }
#else
DEV float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#endif

DEV float neg_inf() { return __int_as_float(0xff800000); }

// The soft target of classes a and b of one sample (src/cpu/soft_targets.rs `Targets::pair`):
// keep * lam + off and keep * (1 - lam) + off, or keep * (lam + (1 - lam)) + off for both when
// a == b; each product and sum rounded once in f32 (no FMA), as the CPU path does.
DEV void soft_pair(float keep, float off, float lam, bool same, float& ta, float& tb) {
    const float mu = __fsub_rn(1.0f, lam);
    if (same) {
        ta = tb = __fadd_rn(__fmul_rn(keep, __fadd_rn(lam, mu)), off);
    } else {
        ta = __fadd_rn(__fmul_rn(keep, lam), off);
        tb = __fadd_rn(__fmul_rn(keep, mu), off);
    }
}

// Sum over the block, the same value in every thread, in a fixed order; `part` holds 32
// entries, free again when it returns. T: float, or double for the reduced loss.
template <class T>
DEV T sum_block(T v, T* part) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    T r = part[0];
    for (u32 w = 1; w < (blockDim.x >> 5); ++w) r += part[w];
    __syncthreads();
    return r;
}

// The reduced loss of a fused loss launch (CE, BCE): the last block to finish sums the
// per-row losses `losses[0..batch)` in a fixed order and writes the total (reduction 1, Sum)
// or total / count (Mean) to `loss`. Nothing under Reduction::None: `loss` is 0 and the
// per-sample losses are the result. `flags[1]` counts the blocks done; the last one resets it,
// ready for the next launch (and the next replay of a captured graph).
// The sum and the division are in f64, rounded once to f32, as the CPU path reduces
// (src/spec.rs `reduce`): an f32 sum overflows where the mean fits, e.g. rows of logits masked
// with the dtype's minimum under label smoothing, each adding (eps / C) |min| to its row's
// loss. B values only: the f64 adds cost nothing beside the rows' work.
DEV void finish_reduced_loss(u64 loss, u64 flags_addr, u64 losses_addr, u64 batch, u32 reduction,
                             double count) {
    if (loss == 0) return;
    __shared__ u32 last;
    __shared__ double part[32];
    __threadfence();
    __syncthreads();
    u32* flags = (u32*)flags_addr;
    if (threadIdx.x == 0) last = atomicAdd(flags + 1, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float* losses = (const float*)losses_addr;
    double acc = 0.0;
    for (u64 i = threadIdx.x; i < batch; i += blockDim.x) acc += (double)ld_cg_f32(losses + i);
    const double total = sum_block(acc, part);
    if (threadIdx.x == 0) {
        ((float*)loss)[0] = (float)(reduction == 1 ? total : total / count);
        flags[1] = 0;
    }
}
