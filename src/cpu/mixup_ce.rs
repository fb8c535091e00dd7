//! The fused mixup cross-entropy: loss and gradient, one row at a time, no dense target.
//!
//! With `a = y_i`, `b = y_partner(i)`, `m = max_c z_c`, `d_c = z_c - m`, `s = Σ_c e^(d_c)`:
//! - loss `L = ln s - (1-ε)(λ d_a + (1-λ) d_b) - (ε/C) Σ_c d_c`, which equals
//!   `lse - (1-ε)(λ z_a + (1-λ) z_b) - (ε/C) Σ_c z_c` because the target weights sum to 1, so the
//!   `m` terms cancel; written with `d` it never sees a large `m` (logits of ±1e4 stay exact);
//! - gradient `g_c = (e^(d_c)/s - t_c) · scale`, `t_c = ε/C` except at `a` and `b`, where the
//!   target is [`Targets::pair`]'s and `p - t` is formed in f32 before the one rounding.
//!
//! A row takes three passes, each over data that stays in the core's L2 (a 32 000-class f32 row
//! is 125 KiB): (1) widen into an f32 scratch row and take the max, (2) `e^(d)` in place with
//! `s` and `Σ d`, (3) write the gradient. Only pass (1) reads the logits from memory and only
//! pass (3) writes; the forward-only variant stops after (2). Every pass is a loop over f32
//! lanes that ends in a store, the shape LLVM vectorizes reliably (see [`exp_sums`]).
//! Sums run in 16 f32 lanes per block of 512 elements and in f64 across blocks; per-sample
//! losses are reduced in f64 in index order, so the result does not depend on the threads.

use std::cell::RefCell;

use super::lanes::{narrow, simd_fn, widen};
use super::math::{exp, flush, max_fold, max_lanes, BLOCK, LANES};
#[cfg(target_arch = "x86_64")]
use super::math::{exp16, exp8};
use super::pool::{self, Slab};
use super::soft_targets::{rows_per_task, Targets};
#[cfg(target_arch = "x86_64")]
use crate::dtype::DType;
use crate::dtype::{Element, FloatElement};
use crate::error::{check_len, Result};
use crate::plan::{MixPlan, PlanEntry};
use crate::spec::{check_ce, check_labels, CeSpec, Reduction, Upstream};

thread_local! {
    /// One f32 row per thread, grown to the largest C seen and reused across rows and calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch row of `len` elements.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        // Only reachable if `f` re-entered this function on the same thread; never the case,
        // but a fresh buffer is correct too.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// The constants of a call.
#[derive(Debug, Clone, Copy)]
struct Consts {
    targets: Targets,
    /// `1 - ε` and `ε / C` in f64 for the loss, where the identity above must hold exactly.
    keep: f64,
    off: f64,
}

impl Consts {
    fn new(spec: &CeSpec) -> Self {
        let eps = f64::from(spec.targets.smoothing);
        Self {
            targets: Targets::new(&spec.targets),
            keep: 1.0 - eps,
            off: eps / spec.targets.num_classes as f64,
        }
    }
}

/// What the loss needs from a row after passes (1) and (2).
#[derive(Debug, Clone, Copy)]
struct RowStats {
    /// `Σ e^(d_c)` (at least 1 for finite logits).
    s: f64,
    /// `Σ d_c` (−inf when a logit is −inf; see [`exact_sum_d`] for sums that overflow f32).
    sum_d: f64,
    /// `d_a`, `d_b` in f64 (`z - m` of a masked class may not fit in f32).
    da: f64,
    db: f64,
}

/// `w · d`, but 0 when the weight is 0: a class with no target weight adds nothing, even when
/// its logit is −inf (masked), where the product would be `0 · (−inf) = NaN`. This is what
/// PyTorch's index-target `cross_entropy` does for masked classes.
#[inline(always)]
fn weighted(w: f64, d: f64) -> f64 {
    if w == 0.0 {
        0.0
    } else {
        w * d
    }
}

impl RowStats {
    /// `L = ln s - (1-ε)(λ d_a + (1-λ) d_b) - (ε/C) Σ d`, in f64 then rounded once; a term
    /// whose weight is 0 is left out (see [`weighted`]).
    fn loss(&self, lam: f32, k: &Consts) -> f32 {
        let lam = f64::from(lam);
        let mix = weighted(k.keep * lam, self.da) + weighted(k.keep * (1.0 - lam), self.db);
        (self.s.ln() - mix - weighted(k.off, self.sum_d)) as f32
    }
}

/// `Σ_c (z_c - m)` in f64, straight from the logits: the slow path for rows whose f32 lane
/// sums in pass (2) overflowed (several logits near the dtype's minimum, as
/// `masked_fill(mask, finfo.min)` writes), taken only when pass (2)'s sum is not finite.
/// The terms are all ≤ 0 (`m` is the max), so an overflow shows as −inf, never as a wrong
/// finite value; a true −inf (a −inf logit) or NaN stays what it is.
#[cold]
#[inline(never)]
fn exact_sum_d<T: Element>(z: &[T], m: f32) -> f64 {
    let m = f64::from(m);
    z.iter().map(|&v| f64::from(widen(v)) - m).sum()
}

/// Pass (2) over the scratch row: `w_c ← e^(w_c - m)`; returns `(Σ e, Σ (w-m))`.
///
/// The AVX2 + FMA build ([`exp_sums_avx2`]) where the CPU has both, else [`exp_sums_scalar`];
/// they add the same values in the same lanes in the same order, so they give the same bits.
#[inline(always)]
fn exp_sums(w: &mut [f32], m: f32, ahead: &Ahead) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512 F, AVX2 and FMA, checked just above.
            return unsafe { exp_sums_avx512(w, m, ahead) };
        }
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { exp_sums_avx2(w, m, ahead) };
    }
    exp_sums_scalar(w, m, ahead)
}

/// Lanes of pass (2)'s sums: lane `k` adds the elements `≡ k (mod 16)` of a block in order. 16
/// lanes are one AVX-512 register (two AVX2 ones): one add per 16 elements per sum and no
/// shuffles, where 8 lanes cost the 16-lane build an extract and two adds.
const SUM_LANES: usize = 2 * LANES;

/// [`exp_sums`] in plain Rust, 16 lanes unrolled for LLVM's vectorizer.
///
/// The forward-only loss stores `e` too although it does not need it: the store is what lets
/// LLVM's SLP vectorizer vectorize the unrolled lanes (without it the loop stayed scalar,
/// 6× slower), and it costs one L1 store per element.
#[inline(always)]
fn exp_sums_scalar(w: &mut [f32], m: f32, ahead: &Ahead) -> (f64, f64) {
    let (mut s, mut sum_d) = (0.0f64, 0.0f64);
    for (nb, block) in w.chunks_mut(BLOCK).enumerate() {
        let (mut acc_e, mut acc_d) = ([0.0f32; SUM_LANES], [0.0f32; SUM_LANES]);
        let mut chunks = block.chunks_exact_mut(SUM_LANES);
        for (nc, c) in chunks.by_ref().enumerate() {
            ahead.fetch(nb * BLOCK + nc * SUM_LANES);
            for k in 0..SUM_LANES {
                let d = c[k] - m;
                let e = exp(d);
                c[k] = e;
                acc_d[k] += d;
                acc_e[k] += e;
            }
        }
        exp_tail(chunks.into_remainder(), m, &mut acc_e, &mut acc_d);
        s += flush(&mut acc_e);
        sum_d += flush(&mut acc_d);
    }
    (s, sum_d)
}

/// The last elements of a block (fewer than the lanes), into lanes `0..`.
#[inline(always)]
fn exp_tail(tail: &mut [f32], m: f32, acc_e: &mut [f32], acc_d: &mut [f32]) {
    for ((v, ae), ad) in tail.iter_mut().zip(acc_e).zip(acc_d) {
        let d = *v - m;
        let e = exp(d);
        *v = e;
        *ad += d;
        *ae += e;
    }
}

/// A block's last `< 16` elements with AVX2 and FMA: the first 8 (if there are 8) with one
/// [`exp8`] into lanes `0..8` of the accumulators, the rest with [`exp_tail`] into the lanes
/// that follow, as [`exp_sums_scalar`]'s tail puts them.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_rest_avx2(
    mut rest: &mut [f32],
    m: f32,
    acc_e: &mut [f32; SUM_LANES],
    acc_d: &mut [f32; SUM_LANES],
) {
    use std::arch::x86_64::*;
    let mut lane = 0;
    if rest.len() >= LANES {
        let (c, tail) = rest.split_at_mut(LANES);
        // SAFETY: `c` is 8 f32s and the accumulators hold 16; unaligned accesses.
        unsafe {
            let d = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), _mm256_set1_ps(m));
            let e = exp8(d);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            let ad = _mm256_add_ps(_mm256_loadu_ps(acc_d.as_ptr()), d);
            let ae = _mm256_add_ps(_mm256_loadu_ps(acc_e.as_ptr()), e);
            _mm256_storeu_ps(acc_d.as_mut_ptr(), ad);
            _mm256_storeu_ps(acc_e.as_mut_ptr(), ae);
        }
        rest = tail;
        lane = LANES;
    }
    exp_tail(rest, m, &mut acc_e[lane..], &mut acc_d[lane..]);
}

/// [`exp_sums_scalar`] with AVX2 and FMA intrinsics (LLVM's vectorizer split the fused loop
/// into 4-lane halves, slower than the unfused code, so the vector body is written out): each
/// 16 elements are two [`exp8`]s into two accumulators per sum, lanes `0..8` and `8..16`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sums_avx2(w: &mut [f32], m: f32, ahead: &Ahead) -> (f64, f64) {
    use std::arch::x86_64::*;
    let mv = _mm256_set1_ps(m);
    let (mut s, mut sum_d) = (0.0f64, 0.0f64);
    for (nb, block) in w.chunks_mut(BLOCK).enumerate() {
        let zero = _mm256_setzero_ps();
        let (mut ve0, mut ve1, mut vd0, mut vd1) = (zero, zero, zero, zero);
        let mut chunks = block.chunks_exact_mut(SUM_LANES);
        for (nc, c) in chunks.by_ref().enumerate() {
            ahead.fetch(nb * BLOCK + nc * SUM_LANES);
            // SAFETY: `c` is 16 f32s; unaligned loads and stores.
            unsafe {
                let p = c.as_mut_ptr();
                let d0 = _mm256_sub_ps(_mm256_loadu_ps(p), mv);
                let d1 = _mm256_sub_ps(_mm256_loadu_ps(p.add(LANES)), mv);
                let (e0, e1) = (exp8(d0), exp8(d1));
                _mm256_storeu_ps(p, e0);
                _mm256_storeu_ps(p.add(LANES), e1);
                vd0 = _mm256_add_ps(vd0, d0);
                vd1 = _mm256_add_ps(vd1, d1);
                ve0 = _mm256_add_ps(ve0, e0);
                ve1 = _mm256_add_ps(ve1, e1);
            }
        }
        let (mut acc_e, mut acc_d) = ([0.0f32; SUM_LANES], [0.0f32; SUM_LANES]);
        // SAFETY: the arrays hold 16 f32s.
        unsafe {
            _mm256_storeu_ps(acc_e.as_mut_ptr(), ve0);
            _mm256_storeu_ps(acc_e.as_mut_ptr().add(LANES), ve1);
            _mm256_storeu_ps(acc_d.as_mut_ptr(), vd0);
            _mm256_storeu_ps(acc_d.as_mut_ptr().add(LANES), vd1);
            exp_rest_avx2(chunks.into_remainder(), m, &mut acc_e, &mut acc_d);
        }
        s += flush(&mut acc_e);
        sum_d += flush(&mut acc_d);
    }
    (s, sum_d)
}

/// [`exp_sums_avx2`] with AVX-512 ([`exp16`]): the 16 lanes of each sum are one register.
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_sums_avx512(w: &mut [f32], m: f32, ahead: &Ahead) -> (f64, f64) {
    use std::arch::x86_64::*;
    let mv = _mm512_set1_ps(m);
    let (mut s, mut sum_d) = (0.0f64, 0.0f64);
    for (nb, block) in w.chunks_mut(BLOCK).enumerate() {
        let (mut ve, mut vd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut chunks = block.chunks_exact_mut(SUM_LANES);
        for (nc, c) in chunks.by_ref().enumerate() {
            ahead.fetch(nb * BLOCK + nc * SUM_LANES);
            // SAFETY: `c` is 16 f32s; unaligned loads and stores.
            let d = _mm512_sub_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, mv);
            let e = exp16(d);
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), e) };
            vd = _mm512_add_ps(vd, d);
            ve = _mm512_add_ps(ve, e);
        }
        let (mut acc_e, mut acc_d) = ([0.0f32; SUM_LANES], [0.0f32; SUM_LANES]);
        // SAFETY: the arrays hold 16 f32s; AVX2 and FMA are enabled with AVX-512 here.
        unsafe {
            _mm512_storeu_ps(acc_e.as_mut_ptr(), ve);
            _mm512_storeu_ps(acc_d.as_mut_ptr(), vd);
            exp_rest_avx2(chunks.into_remainder(), m, &mut acc_e, &mut acc_d);
        }
        s += flush(&mut acc_e);
        sum_d += flush(&mut acc_d);
    }
    (s, sum_d)
}

/// Rows the next passes read or write, fetched into cache while pass (2) computes, so memory
/// traffic overlaps the `exp` instead of stalling passes (1) and (3): the next row's logits and
/// this row's gradient. Element `i` of pass (2) fetches element `i` of each stream.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    /// `(address of element 0, bytes per element)`; address 0 for none.
    streams: [(usize, usize); 2],
}

impl Ahead {
    const NONE: Ahead = Ahead {
        streams: [(0, 0); 2],
    };

    /// Streams given by the address of their first element and the element type.
    fn new<T, U>(next: usize, out: usize) -> Self {
        Ahead {
            streams: [
                (next, std::mem::size_of::<T>()),
                (out, std::mem::size_of::<U>()),
            ],
        }
    }

    #[inline(always)]
    fn fetch(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        for &(base, size) in &self.streams {
            if base != 0 {
                // A prefetch never faults and has no effect on the program's semantics.
                let p = base.wrapping_add(i * size) as *const i8;
                // SAFETY: SSE is part of x86-64; a prefetch reads nothing the program sees and
                // never faults, whatever the address.
                unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }
}

/// Where the rows of the logits start, for [`Ahead`] (addresses only, never dereferenced).
#[derive(Debug, Clone, Copy)]
struct RowAddresses {
    base: usize,
    row_bytes: usize,
    rows: usize,
    /// Prefetching pays while the rows it brings in stay in the core's L2 (1 MiB on the Zen 4
    /// this was measured on, 256 KiB to 2 MiB elsewhere): up to 128 KiB rows.
    worthwhile: bool,
}

impl RowAddresses {
    fn new<T>(logits: &[T], classes: usize) -> Self {
        let row_bytes = classes * std::mem::size_of::<T>();
        Self {
            base: logits.as_ptr() as usize,
            row_bytes,
            rows: logits.len() / classes.max(1),
            worthwhile: (4096..=128 << 10).contains(&row_bytes),
        }
    }

    /// Address of row `i + 1`, or 0 (none) past the end or when not worthwhile.
    fn next(&self, i: usize) -> usize {
        if self.worthwhile && i + 1 < self.rows {
            self.base + (i + 1) * self.row_bytes
        } else {
            0
        }
    }

    /// `address`, or 0 when prefetching is not worthwhile.
    fn when(&self, address: usize) -> usize {
        if self.worthwhile {
            address
        } else {
            0
        }
    }
}

/// Pass (1): `w ← z` widened; returns the max.
///
/// For f32 and bf16 with AVX2 ([`widen_max_avx2`]) in one pass with the max; the same values
/// and the same max lanes in the same order as the plain loop, so the same bits.
#[inline(always)]
fn widen_max<T: Element>(z: &[T], w: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(T::DTYPE, DType::F32 | DType::BF16)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: AVX2 and FMA checked just above; T is f32 or bf16 (a transparent u16).
        return unsafe { widen_max_avx2(z, w) };
    }
    widen_max_plain(z, w)
}

/// [`widen_max`] in plain Rust (the fallback, and the oracle of the intrinsics).
#[inline(always)]
fn widen_max_plain<T: Element>(z: &[T], w: &mut [f32]) -> f32 {
    for (o, &v) in w.iter_mut().zip(z) {
        *o = widen(v);
    }
    max_lanes(w)
}

/// [`widen_max`] for f32 and bf16 with AVX2: 16 elements per step (two 8-lane loads, or two
/// `vpmovzxwd` and a shift for bf16), both maxed into one accumulator in order (`maxps(v, m)`
/// is `if v > m { v } else { m }`, [`max_lanes`]' select), the tail as [`max_lanes`] does it.
///
/// A bf16 NaN is widened by the shift alone, without [`widen`]'s quiet bit: the scratch row
/// only feeds arithmetic (`z - m`, the max skips NaN), and x86 quiets a signalling NaN operand
/// by setting that same bit, so every value computed from it has the same bits either way.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `T` must be f32 or bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn widen_max_avx2<T: Element>(z: &[T], w: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = z.len().min(w.len());
    let (zp, wp) = (z.as_ptr(), w.as_mut_ptr());
    let bf16 = T::DTYPE == DType::BF16;
    // SAFETY (the loads and stores): `i + 16 <= n`, within both slices; unaligned accesses.
    let load = |i: usize| unsafe {
        if bf16 {
            let p = zp.cast::<u16>().add(i).cast::<__m128i>();
            let a = _mm256_cvtepu16_epi32(_mm_loadu_si128(p));
            let b = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(1)));
            (
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(a)),
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(b)),
            )
        } else {
            let p = zp.cast::<f32>().add(i);
            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(LANES)))
        }
    };
    let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + 2 * LANES <= n {
        let (a, b) = load(i);
        unsafe {
            _mm256_storeu_ps(wp.add(i), a);
            _mm256_storeu_ps(wp.add(i + LANES), b);
        }
        acc = _mm256_max_ps(b, _mm256_max_ps(a, acc));
        i += 2 * LANES;
    }
    for (o, &v) in w[i..n].iter_mut().zip(&z[i..n]) {
        *o = widen(v);
    }
    // One more full 8-lane chunk may remain before the tail of `max_lanes`.
    if i + LANES <= n {
        // SAFETY: `i + 8 <= n`.
        acc = _mm256_max_ps(unsafe { _mm256_loadu_ps(wp.add(i)) }, acc);
        i += LANES;
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: 8 f32s.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    max_fold(&w[i..n], lanes)
}

/// Pass (3): `g_c = e_c · (scale/s) - scale·ε/C` for every class (one fused multiply-add with
/// two constants each rounded once from f64), then the two target classes from their saved `e`,
/// `(e · (1/s) - t) · scale` with their own targets, formed in f32 before the one rounding.
#[inline(always)]
fn write_grad<T: Element>(
    w: &[f32],
    st: &RowStats,
    e_ab: (f32, f32),
    (a, b, lam): (usize, usize, f32),
    scale: f32,
    k: &Consts,
    g: &mut [T],
) {
    let mul = (f64::from(scale) / st.s) as f32;
    let sub = (f64::from(k.targets.off) * f64::from(scale)) as f32;
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == DType::BF16 && avx512_bf16() {
        // SAFETY: the CPU's AVX-512 features checked just above; T is bf16, a transparent u16.
        unsafe { grad_bf16_avx512(w, mul, sub, g) };
    } else if T::DTYPE == DType::BF16
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: AVX2 and FMA checked just above; T is bf16, a transparent u16.
        unsafe { grad_bf16_avx2(w, mul, sub, g) };
    } else {
        grad_plain(w, mul, sub, g);
    }
    #[cfg(not(target_arch = "x86_64"))]
    grad_plain(w, mul, sub, g);
    let inv = (1.0 / st.s) as f32;
    let (ta, tb) = k.targets.pair(lam, a == b);
    g[b] = narrow((e_ab.1 * inv - tb) * scale);
    g[a] = narrow((e_ab.0 * inv - ta) * scale);
}

/// Whether the CPU has what [`grad_bf16_avx512`] uses (Zen 4 and later, Intel since Cooper
/// Lake / Sapphire Rapids). Each check is a cached atomic load.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx512_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Pass (3)'s loop in plain Rust (the fallback, and the oracle of the intrinsics).
#[inline(always)]
fn grad_plain<T: Element>(w: &[f32], mul: f32, sub: f32, g: &mut [T]) {
    for (o, &e) in g.iter_mut().zip(w) {
        *o = narrow(e.mul_add(mul, -sub));
    }
}

/// Pass (3)'s loop for bf16 with AVX-512: the same fused multiply-add, then `vcvtneps2bf16`,
/// which rounds to nearest even and quiets NaNs exactly as [`narrow`] does (`(x >> 16) | 0x40`),
/// except that it flushes subnormal inputs to zero: a block of 16 holding one (`vfpclassps`
/// class 0x20) takes [`grad_plain`] instead, so the bits are the plain loop's in every case.
/// One conversion replaces [`grad_bf16_avx2`]'s seven integer operations per 8 lanes.
///
/// # Safety
/// The CPU must support AVX-512 F, VL, DQ and BF16; `T` must be bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn grad_bf16_avx512<T: Element>(w: &[f32], mul: f32, sub: f32, g: &mut [T]) {
    use std::arch::x86_64::*;
    const N: usize = 16;
    let n = w.len().min(g.len());
    let (vm, vs) = (_mm512_set1_ps(mul), _mm512_set1_ps(-sub));
    let (wp, gp) = (w.as_ptr(), g.as_mut_ptr().cast::<u16>());
    let mut i = 0;
    while i + N <= n {
        // SAFETY: `i + 16 <= n`, within `w`; unaligned load.
        let v = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(wp.add(i)) }, vm, vs);
        if _mm512_fpclass_ps_mask::<0x20>(v) == 0 {
            let h: __m256i = unsafe { std::mem::transmute(_mm512_cvtneps_pbh(v)) };
            // SAFETY: 16 u16s at `i`, within `g`; unaligned store.
            unsafe { _mm256_storeu_si256(gp.add(i).cast::<__m256i>(), h) };
        } else {
            grad_plain(&w[i..i + N], mul, sub, &mut g[i..i + N]);
        }
        i += N;
    }
    grad_plain(&w[i..n], mul, sub, &mut g[i..n]);
}

/// Pass (3)'s loop for bf16 with AVX2: the same fused multiply-add, then [`narrow`]'s round to
/// nearest even (`(x + 0x7FFF + lsb) >> 16`), 16 lanes packed per step with `vpackusdw`. A
/// block with a NaN lane (only from NaN logits) takes [`grad_plain`], so the bits are the plain
/// loop's in every case.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `T` must be bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_bf16_avx2<T: Element>(w: &[f32], mul: f32, sub: f32, g: &mut [T]) {
    use std::arch::x86_64::*;
    const N: usize = 2 * LANES;
    let n = w.len().min(g.len());
    let (vm, vs) = (_mm256_set1_ps(mul), _mm256_set1_ps(-sub));
    let (one, half) = (_mm256_set1_epi32(1), _mm256_set1_epi32(0x7FFF));
    let (wp, gp) = (w.as_ptr(), g.as_mut_ptr().cast::<u16>());
    let round = |v: __m256| {
        let x = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), one);
        _mm256_srli_epi32::<16>(_mm256_add_epi32(_mm256_add_epi32(x, half), lsb))
    };
    let mut i = 0;
    while i + N <= n {
        // SAFETY: `i + 16 <= n`, within `w`; unaligned loads.
        let (e0, e1) = unsafe {
            (
                _mm256_loadu_ps(wp.add(i)),
                _mm256_loadu_ps(wp.add(i + LANES)),
            )
        };
        let v0 = _mm256_fmadd_ps(e0, vm, vs);
        let v1 = _mm256_fmadd_ps(e1, vm, vs);
        let nan = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_UNORD_Q>(v0, v0),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(v1, v1),
        );
        if _mm256_testz_ps(nan, nan) != 0 {
            // Packing works within 128-bit halves: (0..4, 8..12, 4..8, 12..16), reordered by
            // the 64-bit permutation.
            let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(
                round(v0),
                round(v1),
            ));
            // SAFETY: 16 u16s at `i`, within `g`.
            unsafe { _mm256_storeu_si256(gp.add(i).cast::<__m256i>(), packed) };
        } else {
            grad_plain(&w[i..i + N], mul, sub, &mut g[i..i + N]);
        }
        i += N;
    }
    grad_plain(&w[i..n], mul, sub, &mut g[i..n]);
}

/// `z - m` in f64.
#[inline(always)]
fn d64(z: f32, m: f32) -> f64 {
    f64::from(z) - f64::from(m)
}

/// Passes (1) and (2) of a forward-only row.
#[inline(always)]
fn forward_row<T: Element>(z: &[T], w: &mut [f32], a: usize, b: usize, k: &Consts) -> RowStats {
    let m = widen_max(z, w);
    let (da, db) = (d64(w[a], m), d64(w[b], m));
    let (s, mut sum_d) = exp_sums(w, m, &Ahead::NONE);
    // Only the smoothing term uses Σd: without smoothing an overflowed (or −inf) sum is unused.
    if !sum_d.is_finite() && k.off != 0.0 {
        sum_d = exact_sum_d(z, m);
    }
    RowStats { s, sum_d, da, db }
}

/// Passes (1) and (2) into the scratch row; returns the stats and `(e_a, e_b)`.
#[inline(always)]
fn scratch_row<T: Element>(
    z: &[T],
    w: &mut [f32],
    a: usize,
    b: usize,
    ahead: &Ahead,
    k: &Consts,
) -> (RowStats, (f32, f32)) {
    let m = widen_max(z, w);
    let (da, db) = (d64(w[a], m), d64(w[b], m));
    let (s, mut sum_d) = exp_sums(w, m, ahead);
    // Only the smoothing term uses Σd: without smoothing an overflowed (or −inf) sum is unused.
    if !sum_d.is_finite() && k.off != 0.0 {
        sum_d = exact_sum_d(z, m);
    }
    (RowStats { s, sum_d, da, db }, (w[a], w[b]))
}

/// One row's classes, λ and gradient scale.
#[derive(Debug, Clone, Copy)]
struct Row {
    a: usize,
    b: usize,
    lam: f32,
    scale: f32,
}

impl Row {
    /// Sample `i`'s row: its label, its partner's label and its λ from the plan.
    #[inline(always)]
    fn of(entries: &[PlanEntry], labels: &[u32], i: usize, scale: f32) -> Row {
        let e = &entries[i];
        Row {
            a: labels[i] as usize,
            b: labels[e.partner as usize] as usize,
            lam: e.lam,
            scale,
        }
    }
}

/// A forward-only row: its loss.
#[inline(always)]
fn forward_kernel<T: Element>(z: &[T], w: &mut [f32], row: Row, k: &Consts) -> f32 {
    forward_row(z, w, row.a, row.b, k).loss(row.lam, k)
}

/// A row forward and backward, the gradient into `g`: its loss.
#[inline(always)]
fn row_kernel<T: Element>(
    z: &[T],
    g: &mut [T],
    w: &mut [f32],
    row: Row,
    ahead: Ahead,
    k: &Consts,
) -> f32 {
    let (st, e_ab) = scratch_row(z, w, row.a, row.b, &ahead, k);
    write_grad(w, &st, e_ab, (row.a, row.b, row.lam), row.scale, k, g);
    st.loss(row.lam, k)
}

/// A row forward and backward, the gradient over the logits: its loss.
#[inline(always)]
fn row_kernel_in_place<T: Element>(
    zg: &mut [T],
    w: &mut [f32],
    row: Row,
    ahead: Ahead,
    k: &Consts,
) -> f32 {
    // The logits are read (pass 1) before the gradient overwrites them (pass 3).
    let (st, e_ab) = scratch_row(&*zg, w, row.a, row.b, &ahead, k);
    write_grad(w, &st, e_ab, (row.a, row.b, row.lam), row.scale, k, zg);
    st.loss(row.lam, k)
}

simd_fn! {
    /// [`forward_kernel`], with AVX2 when the CPU has it.
    fn forward_simd<T: Element>(z: &[T], w: &mut [f32], row: Row, k: &Consts) -> f32
        => forward_kernel
}

simd_fn! {
    /// [`row_kernel`], with AVX2 when the CPU has it.
    fn row_simd<T: Element>(
        z: &[T],
        g: &mut [T],
        w: &mut [f32],
        row: Row,
        ahead: Ahead,
        k: &Consts,
    ) -> f32 => row_kernel
}

simd_fn! {
    /// [`row_kernel_in_place`], with AVX2 when the CPU has it.
    fn row_in_place_simd<T: Element>(
        zg: &mut [T],
        w: &mut [f32],
        row: Row,
        ahead: Ahead,
        k: &Consts,
    ) -> f32 => row_kernel_in_place
}

/// Jobs of up to this many logits (16 MiB of f32) run as small jobs of [`pool::for_each_row`],
/// where the caller works too and rayon's fixed cost per call (about 10 µs on 2 cores) is not
/// paid; larger ones through rayon's splitting, whose contiguous ranges keep [`Ahead`]'s next
/// row on the thread that will read it.
const SMALL_JOB: usize = 1 << 22;

/// The per-sample loss buffer: the caller's, or a temporary one.
pub(super) fn losses_buffer<'a>(
    losses: Option<&'a mut [f32]>,
    batch: usize,
    temp: &'a mut Vec<f32>,
) -> &'a mut [f32] {
    match losses {
        Some(l) => l,
        None => {
            temp.resize(batch, 0.0);
            temp
        }
    }
}

/// The reduced loss: per-sample f32 losses summed in f64 in index order; the mean for
/// [`Reduction::Mean`] and (for logging) [`Reduction::None`].
fn reduce(losses: &[f32], reduction: Reduction) -> f32 {
    let sum: f64 = losses.iter().map(|&l| f64::from(l)).sum();
    match reduction {
        Reduction::Sum => sum as f32,
        Reduction::Mean | Reduction::None => (sum / losses.len().max(1) as f64) as f32,
    }
}

/// Checks everything a loss call gets; returns `(B, C)`.
fn check_all(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: usize,
    labels: &[u32],
    upstream: &Upstream<'_>,
    losses: Option<&[f32]>,
) -> Result<(usize, usize)> {
    check_ce(plan, spec, logits, upstream)?;
    check_labels(plan, labels, &spec.targets)?;
    if let Some(l) = losses {
        check_len("losses", plan.len(), l.len())?;
    }
    Ok((plan.len(), spec.targets.num_classes))
}

/// Sample `i`'s gradient scale: the upstream gradient times `1/B` for the mean.
#[inline]
pub(super) fn scale_of(upstream: &Upstream<'_>, factor: f32, i: usize) -> f32 {
    match *upstream {
        Upstream::Scalar(g) => g * factor,
        Upstream::PerSample(g) => g[i] * factor,
    }
}

pub(crate) fn mixup_ce_forward<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[u32],
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    let up = Upstream::default();
    let (batch, c) = check_all(plan, spec, logits.len(), labels, &up, losses.as_deref())?;
    let mut temp = Vec::new();
    let losses = losses_buffer(losses, batch, &mut temp);
    let k = Consts::new(spec);
    let entries = plan.entries();
    let rows = (
        Slab {
            data: logits,
            width: c,
        },
        &mut *losses,
    );
    let small = logits.len() <= SMALL_JOB;
    pool::for_each_row(rows, rows_per_task(c), small, |i, (z, loss)| {
        let row = Row::of(entries, labels, i, 0.0);
        loss[0] = with_scratch(c, |w| forward_simd(z.data, w, row, &k));
    });
    Ok(reduce(losses, spec.reduction))
}

pub(crate) fn mixup_ce<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[u32],
    upstream: Upstream<'_>,
    losses: Option<&mut [f32]>,
    grad: &mut [T],
) -> Result<f32> {
    let (batch, c) = check_all(
        plan,
        spec,
        logits.len(),
        labels,
        &upstream,
        losses.as_deref(),
    )?;
    check_len("grad", logits.len(), grad.len())?;
    let mut temp = Vec::new();
    let losses = losses_buffer(losses, batch, &mut temp);
    let k = Consts::new(spec);
    let factor = spec.reduction.grad_factor(batch);
    let entries = plan.entries();
    let addresses = RowAddresses::new(logits, c);
    let small = logits.len() <= SMALL_JOB;
    let rows = (
        Slab {
            data: logits,
            width: c,
        },
        (
            Slab {
                data: grad,
                width: c,
            },
            &mut *losses,
        ),
    );
    pool::for_each_row(rows, rows_per_task(c), small, |i, (z, (g, loss))| {
        let row = Row::of(entries, labels, i, scale_of(&upstream, factor, i));
        let ahead = Ahead::new::<T, T>(addresses.next(i), addresses.when(g.data.as_ptr() as usize));
        loss[0] = with_scratch(c, |w| row_simd(z.data, g.data, w, row, ahead, &k));
    });
    Ok(reduce(losses, spec.reduction))
}

pub(crate) fn mixup_ce_in_place<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &mut [T],
    labels: &[u32],
    upstream: Upstream<'_>,
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    let (batch, c) = check_all(
        plan,
        spec,
        logits.len(),
        labels,
        &upstream,
        losses.as_deref(),
    )?;
    let mut temp = Vec::new();
    let losses = losses_buffer(losses, batch, &mut temp);
    let k = Consts::new(spec);
    let factor = spec.reduction.grad_factor(batch);
    let entries = plan.entries();
    let addresses = RowAddresses::new(logits, c);
    let small = logits.len() <= SMALL_JOB;
    let rows = (
        Slab {
            data: logits,
            width: c,
        },
        &mut *losses,
    );
    pool::for_each_row(rows, rows_per_task(c), small, |i, (zg, loss)| {
        let row = Row::of(entries, labels, i, scale_of(&upstream, factor, i));
        // The gradient goes over the row pass (1) just read: only the next row to fetch.
        let ahead = Ahead::new::<T, T>(addresses.next(i), 0);
        loss[0] = with_scratch(c, |w| row_in_place_simd(zg.data, w, row, ahead, &k));
    });
    Ok(reduce(losses, spec.reduction))
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// The AVX2 build and the baseline build of a row give the same loss and gradient bits.
    fn paths_agree<T: FloatElement>() {
        let c = 1000 + 7;
        let z: Vec<T> = (0..c)
            .map(|i| T::from_f32(((i * 7919) % 1000) as f32 / 50.0 - 10.0))
            .collect();
        let k = Consts::new(&CeSpec::new(c, 0.1, Reduction::Mean));
        let row = Row {
            a: 3,
            b: 1000,
            lam: 0.37,
            scale: 0.25,
        };
        let (mut g1, mut g2) = (vec![T::default(); c], vec![T::default(); c]);
        let (mut w1, mut w2) = (vec![0.0; c], vec![0.0; c]);
        let l1 = row_kernel(&z, &mut g1, &mut w1, row, Ahead::NONE, &k);
        let l2 = row_simd(&z, &mut g2, &mut w2, row, Ahead::NONE, &k);
        assert_eq!(l1.to_bits(), l2.to_bits());
        assert!(g1
            .iter()
            .zip(&g2)
            .all(|(x, y)| x.to_f32().to_bits() == y.to_f32().to_bits()));
        let l3 = forward_simd(&z, &mut w2, row, &k);
        assert_eq!(l1.to_bits(), l3.to_bits());
    }

    #[test]
    fn avx2_and_baseline_paths_agree() {
        paths_agree::<f32>();
        paths_agree::<bf16>();
    }

    /// The three entry points give, row for row, the bits of the row kernel called directly:
    /// rows, partners, labels and upstream gradients reach the right row in both the small-job
    /// loop (several tasks) and rayon's iterator for jobs over [`SMALL_JOB`].
    #[test]
    fn jobs_small_and_large_route_rows_right() {
        let c_big = SMALL_JOB / 8 + 3;
        for (batch, c) in [(100, 1000), (8, c_big - 3), (9, c_big)] {
            assert_eq!(batch * c > SMALL_JOB, batch == 9);
            let z: Vec<bf16> = (0..batch * c)
                .map(|i| bf16::from_f32(((i * 7919) % 1013) as f32 / 40.0 - 12.0))
                .collect();
            let labels: Vec<u32> = (0..batch as u32).map(|i| i * 1001 % c as u32).collect();
            let partner: Vec<usize> = (0..batch).map(|i| (i + 4) % batch).collect();
            let lam: Vec<f32> = (0..batch).map(|i| i as f32 / batch as f32).collect();
            let plan = MixPlan::from_parts(&partner, &lam).unwrap();
            let spec = CeSpec::new(c, 0.1, Reduction::None);
            let ups: Vec<f32> = (0..batch).map(|i| 1.0 + i as f32).collect();
            let up = Upstream::PerSample(&ups);
            let (mut loss, mut grad) = (vec![0.0; batch], vec![bf16::ZERO; z.len()]);
            mixup_ce(&plan, &spec, &z, &labels, up, Some(&mut loss), &mut grad).unwrap();
            let mut fwd = vec![0.0; batch];
            mixup_ce_forward(&plan, &spec, &z, &labels, Some(&mut fwd)).unwrap();
            let mut in_place = z.clone();
            mixup_ce_in_place(&plan, &spec, &mut in_place, &labels, up, None).unwrap();
            let k = Consts::new(&spec);
            let (mut w, mut g) = (vec![0.0; c], vec![bf16::ZERO; c]);
            for i in 0..batch {
                let row = Row::of(plan.entries(), &labels, i, ups[i]);
                let l = row_simd(&z[i * c..(i + 1) * c], &mut g, &mut w, row, Ahead::NONE, &k);
                assert_eq!(l.to_bits(), loss[i].to_bits(), "loss {i} of {batch}x{c}");
                assert_eq!(l.to_bits(), fwd[i].to_bits(), "forward {i} of {batch}x{c}");
                let same = |o: &[bf16]| o.iter().zip(&g).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(&grad[i * c..(i + 1) * c]), "grad {i} of {batch}x{c}");
                assert!(
                    same(&in_place[i * c..(i + 1) * c]),
                    "in place {i} of {batch}x{c}"
                );
            }
        }
    }

    /// Random rows of `len` f32 values for the pass tests: ordinary values, ±0, ±inf, NaNs
    /// (quiet and signalling), subnormals, and (in round 1) arbitrary bit patterns.
    #[cfg(target_arch = "x86_64")]
    fn odd_rows() -> Vec<Vec<f32>> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut rows = Vec::new();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 31, 33, 1000, 1007] {
            for round in 0..12 {
                rows.push(
                    (0..len)
                        .map(|_| {
                            let r = next();
                            match (round, r % 61) {
                                (0, 0) => f32::NAN,
                                (0, 1) => f32::from_bits(0x7F80_0001), // signalling
                                (0, 2) => f32::NEG_INFINITY,
                                (0, 3) => f32::INFINITY,
                                (0, 4) => -0.0,
                                (0, 5) => 0.0,
                                (0, 6) => f32::from_bits(r as u32 & 0x807F_FFFF), // subnormal
                                (1, _) => f32::from_bits(r as u32),
                                (2, _) => -0.0,
                                (3, _) if r % 3 == 0 => f32::NAN,
                                (4, _) => [0.0, -0.0][(r % 2) as usize],
                                _ => (r >> 40) as f32 / (1u64 << 24) as f32 * 40.0 - 20.0,
                            }
                        })
                        .collect(),
                );
            }
        }
        rows
    }

    fn same(x: f32, y: f32) -> bool {
        x.to_bits() == y.to_bits()
    }

    /// Pass (1) with intrinsics gives the plain loop's max and scratch row, bit for bit
    /// (for bf16 NaNs: the scratch values are NaN in both, and `z - m` has the same bits).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn widen_max_intrinsics_match_plain() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        for row in odd_rows() {
            let n = row.len();
            let (mut w1, mut w2) = (vec![0.0; n], vec![0.0; n]);
            let m1 = widen_max_plain(&row, &mut w1);
            // SAFETY: AVX2 and FMA checked above.
            let m2 = unsafe { widen_max_avx2(&row, &mut w2) };
            assert!(same(m1, m2), "f32 max {m1} vs {m2}, len {n}");
            assert!(
                w1.iter().zip(&w2).all(|(&x, &y)| same(x, y)),
                "f32 row, len {n}"
            );
            let z: Vec<bf16> = row
                .iter()
                .map(|&v| bf16::from_bits((v.to_bits() >> 16) as u16))
                .collect();
            let m1 = widen_max_plain(&z, &mut w1);
            // SAFETY: AVX2 and FMA checked above.
            let m2 = unsafe { widen_max_avx2(&z, &mut w2) };
            assert!(same(m1, m2), "bf16 max {m1} vs {m2}, len {n}");
            for (k, (&x, &y)) in w1.iter().zip(&w2).enumerate() {
                let ok = same(x, y) || x.is_nan() && y.is_nan() && same(x - m1, y - m2);
                assert!(ok, "bf16 w[{k}]: {x:?} vs {y:?}");
            }
        }
    }

    /// Pass (3)'s bf16 intrinsics (AVX2, and AVX-512 where the CPU has it) give the plain
    /// loop's bits: NaN lanes, subnormal results, rounding ties and overflow to infinity
    /// included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn grad_bf16_intrinsics_match_plain() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        let mut rows = odd_rows();
        // Exact bf16 rounding ties (odd and even kept parts) and values next to them.
        rows.push(
            (0..4096u32)
                .map(|k| f32::from_bits(0x3F80_0000 + (k << 14) + (k % 3) * 0x3FFF))
                .collect(),
        );
        // (mul, sub): identity, a typical row, overflow, and results in the subnormal range.
        let consts = [
            (1.0, 0.0),
            (0.37, 1e-4),
            (3e38, 0.0),
            (1e-38, 0.0),
            (-3e-39, 1e-39),
        ];
        let avx512 = avx512_bf16();
        for row in rows {
            for (mul, sub) in consts {
                let n = row.len();
                let mut want = vec![bf16::ZERO; n];
                grad_plain(&row, mul, sub, &mut want);
                let mut got = vec![(bf16::ZERO, "avx2"); 0];
                let mut g = vec![bf16::ZERO; n];
                // SAFETY: AVX2 and FMA checked above.
                unsafe { grad_bf16_avx2(&row, mul, sub, &mut g) };
                got.extend(g.iter().map(|&v| (v, "avx2")));
                if avx512 {
                    // SAFETY: the AVX-512 features checked by `avx512_bf16`.
                    unsafe { grad_bf16_avx512(&row, mul, sub, &mut g) };
                    got.extend(g.iter().map(|&v| (v, "avx512")));
                }
                for (k, &(y, path)) in got.iter().enumerate() {
                    let x = want[k % n.max(1)];
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "{path} g[{}] of {:e} (mul {mul}, sub {sub})",
                        k % n.max(1),
                        row[k % n.max(1)]
                    );
                }
            }
        }
    }

    /// The intrinsics and the plain build of pass (2) give the same values and sums, bit for
    /// bit, over rows with tails, several blocks, and values around the `exp` cut-off, NaN and
    /// infinities.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_sums_intrinsics_match_plain() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for len in [1, 7, 8, 9, 24, 511, 512, 513, 1000, 1031, 4097] {
            for round in 0..20 {
                let row: Vec<f32> = (0..len)
                    .map(|_| {
                        let r = next();
                        match (round, r % 97) {
                            (0, 0) => f32::NAN,
                            (0, 1) => f32::NEG_INFINITY,
                            (1, _) => f32::from_bits(r as u32),
                            _ => (r >> 40) as f32 / (1u64 << 24) as f32 * -95.0,
                        }
                    })
                    .collect();
                let (mut a, mut b) = (row.clone(), row.clone());
                let (sa, da) = exp_sums_scalar(&mut a, 0.5, &Ahead::NONE);
                // SAFETY: AVX2 and FMA checked above.
                let (sb, db) = unsafe { exp_sums_avx2(&mut b, 0.5, &Ahead::NONE) };
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut c = row.clone();
                    // SAFETY: AVX-512 F checked just above, AVX2 and FMA at the top.
                    let (sc, dc) = unsafe { exp_sums_avx512(&mut c, 0.5, &Ahead::NONE) };
                    assert!(sc.to_bits() == sb.to_bits() || sc.is_nan() && sb.is_nan());
                    assert!(dc.to_bits() == db.to_bits() || dc.is_nan() && db.is_nan());
                    let same =
                        |x: &f32, y: &f32| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan();
                    assert!(
                        c.iter().zip(&b).all(|(x, y)| same(x, y)),
                        "avx512 e, len {len}"
                    );
                }
                // Which NaN an operation on two NaNs returns depends on operand order, which
                // the compiler may swap: NaNs only need to be NaNs.
                let same64 =
                    |x: f64, y: f64| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan();
                assert!(same64(sa, sb), "sum {sa} vs {sb}, len {len} round {round}");
                assert!(
                    same64(da, db),
                    "sum_d {da} vs {db}, len {len} round {round}"
                );
                for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                    let same = x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan();
                    assert!(same, "e[{k}] of {}: {x} vs {y}", row[k]);
                }
            }
        }
    }
}
