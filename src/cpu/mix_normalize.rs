//! The fused "decoded pixels → model input" op on the CPU: mix, (round to u8), normalize, change
//! the memory format and the dtype in one pass (formula: [`crate::Normalize`]).
//!
//! Work is cut into tasks of whole image lines of one sample (a whole sample when the batch
//! keeps every thread busy), taken in partner-chain order (`mix::chain_order`) so a partner's
//! pixels are mostly still in cache when they are read.
//!
//! - Channels-first output ([`PlaneTask`]): a line is computed channel by channel, each
//!   channel's `W` values on the vector level's lanes with its mean and std as scalars, written
//!   straight into the output plane. A channels-last input line is first split into `C` planes
//!   (three u8 channels: `vpshufb`, 32 pixels per step).
//! - Channels-last output: a line is computed in the input's order against mean and std repeated
//!   in that order (one contiguous loop that LLVM vectorizes); a channels-first input line goes
//!   through a small buffer and is interleaved into the output.

use pulp::Simd;
use rayon::prelude::*;

use super::lanes::{Isa, Kernel, Lanes, narrow, read, widen, width};
#[cfg(target_arch = "x86_64")]
use super::mix::StreamOut;
use super::mix::{STREAM_MIN_BYTES, chain_order};
use crate::dtype::{Element, FloatElement, ScalarType};
use crate::error::Result;
use crate::normalize::{ImageDims, Normalize, check_mix_normalize};
use crate::plan::{MixPlan, PlanEntry};
use crate::spec::{MemoryFormat, SampleShape};

/// Smallest piece of work handed to a thread, in elements (as `mix::MIN_TASK`).
const MIN_TASK: usize = 1 << 14;

/// What one image line of a sample holds.
#[derive(Debug, Clone, Copy)]
enum LineRule {
    /// The sample's own pixels.
    Own,
    /// `λ·own + (1−λ)·partner`.
    Lerp(f32),
    /// The partner's pixels in columns `x0..x1`, the sample's own elsewhere.
    Boxed(usize, usize),
}

impl LineRule {
    fn new(index: usize, e: &PlanEntry, y: usize) -> Self {
        if e.partner as usize == index {
            LineRule::Own
        } else if e.cut == 0 {
            LineRule::Lerp(e.lam)
        } else if (e.y0 as usize..e.y1 as usize).contains(&y) && e.x0 < e.x1 {
            LineRule::Boxed(e.x0 as usize, e.x1 as usize)
        } else {
            LineRule::Own
        }
    }
}

/// What every task shares.
struct Ctx<'a, I> {
    x: &'a [I],
    entries: &'a [PlanEntry],
    dims: ImageDims,
    out_format: MemoryFormat,
    /// Mean and std repeated in the input's order over one line: `[C][W]` channels-first,
    /// `[W][C]` channels-last (for a channels-last output; empty for a channels-first one).
    mean: Vec<f32>,
    std: Vec<f32>,
    /// Mean and std per channel.
    mean_c: Vec<f32>,
    std_c: Vec<f32>,
    rint: bool,
    /// The vector level of [`PlaneTask`] and of the 16-bit outputs' narrowing ([`Narrow`]).
    isa: Isa,
    /// Write a channels-last output with non-temporal stores (x86-64, outputs of at least
    /// `mix::STREAM_MIN_BYTES`: they do not fit in the last-level cache, so caching them only
    /// costs a read for ownership of every line written). A channels-first output is written
    /// with ordinary stores straight from the registers: staging it for non-temporal stores
    /// made the bf16 row 1.3–1.7× slower on the 2-core Zen 3 of `BENCHMARKS.md` (2026-12-01).
    stream: bool,
}

impl<I> Ctx<'_, I> {
    /// Values in one image line: `W·C`.
    #[inline(always)]
    fn line_len(&self) -> usize {
        self.dims.width * self.dims.channels
    }

    /// Sample `i`'s plan entry, its values and its partner's.
    #[inline(always)]
    fn pair(&self, i: usize) -> (&PlanEntry, &[I], &[I]) {
        let row = self.dims.sample_len();
        let e = &self.entries[i];
        let p = e.partner as usize;
        (
            e,
            &self.x[i * row..(i + 1) * row],
            &self.x[p * row..(p + 1) * row],
        )
    }
}

/// Rows `y0..y1` of sample `i`; `out` holds the task's part of each output plane
/// (channels-first, `C` slices of `(y1−y0)·W`) or of the interleaved output (one slice).
struct Task<'o, O> {
    i: usize,
    y0: usize,
    y1: usize,
    out: Vec<&'o mut [O]>,
}

/// `out = (a − m) / s`, element-wise.
#[inline(always)]
fn norm_own<I: Element, O: Element>(a: &[I], m: &[f32], s: &[f32], out: &mut [O]) {
    let n = out.len();
    let (a, m, s) = (&a[..n], &m[..n], &s[..n]);
    for k in 0..n {
        out[k] = narrow((widen(a[k]) - m[k]) / s[k]);
    }
}

/// `v = λ·a + (1−λ)·b` in f32 (`mu` = 1 − λ; two products and a sum, never contracted), rounded
/// half to even when `RINT` (u8 pixels only: `v` is in `[0, 255]`, where adding and removing
/// 2^23 rounds to an integer).
#[inline(always)]
fn lerp_value<I: Element, const RINT: bool>(lam: f32, mu: f32, a: I, b: I) -> f32 {
    let v = lam * widen(a) + mu * widen(b);
    if RINT { (v + ROUND) - ROUND } else { v }
}

/// 2^23: `(v + ROUND) − ROUND` rounds `v` in `[0, 2^22]` to an integer, half to even.
const ROUND: f32 = 8_388_608.0;

/// `out = (v − m) / s` with `v` = [`lerp_value`], element-wise.
#[inline(always)]
fn norm_lerp<I: Element, O: Element, const RINT: bool>(
    lam: f32,
    a: &[I],
    b: &[I],
    m: &[f32],
    s: &[f32],
    out: &mut [O],
) {
    let n = out.len();
    let (a, b, m, s) = (&a[..n], &b[..n], &m[..n], &s[..n]);
    for k in 0..n {
        out[k] = narrow((lerp_value::<I, RINT>(lam, 1.0 - lam, a[k], b[k]) - m[k]) / s[k]);
    }
}

/// One run of a line (`W` values of a channel, or `W·C` interleaved values, `group` per column).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run_line<I: Element, O: Element, const RINT: bool>(
    rule: LineRule,
    group: usize,
    a: &[I],
    b: &[I],
    m: &[f32],
    s: &[f32],
    out: &mut [O],
) {
    match rule {
        LineRule::Own => norm_own(a, m, s, out),
        LineRule::Lerp(lam) => norm_lerp::<I, O, RINT>(lam, a, b, m, s, out),
        LineRule::Boxed(x0, x1) => {
            let (k0, k1) = (x0 * group, x1 * group);
            norm_own(&a[..k0], &m[..k0], &s[..k0], &mut out[..k0]);
            norm_own(&b[k0..k1], &m[k0..k1], &s[k0..k1], &mut out[k0..k1]);
            norm_own(&a[k1..], &m[k1..], &s[k1..], &mut out[k1..]);
        }
    }
}

/// `[C][W]` planes → `[W][C]` pixels.
#[inline(always)]
fn interleave<O: Copy, const C: usize>(src: &[O], w: usize, dst: &mut [O]) {
    let planes: [&[O]; C] = std::array::from_fn(|ch| &src[ch * w..(ch + 1) * w]);
    for (x, px) in dst[..w * C].chunks_exact_mut(C).enumerate() {
        for ch in 0..C {
            px[ch] = planes[ch][x];
        }
    }
}

/// `[W][C]` pixels → `[C][W]` planes, in one pass over the pixels (every member of the
/// interleaved group used, so LLVM vectorizes the loads with shuffles instead of one strided
/// pass per plane).
#[inline(always)]
fn deinterleave<O: Copy, const C: usize>(src: &[O], w: usize, dst: &mut [O]) {
    let mut rest = &mut dst[..w * C];
    let planes: [&mut [O]; C] = std::array::from_fn(|_| {
        let (p, r) = std::mem::take(&mut rest).split_at_mut(w);
        rest = r;
        p
    });
    for (x, px) in src[..w * C].chunks_exact(C).enumerate() {
        for ch in 0..C {
            planes[ch][x] = px[ch];
        }
    }
}

/// AVX2 present (detected once, cached by std).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[inline(always)]
fn interleave_any<O: Copy>(src: &[O], c: usize, w: usize, dst: &mut [O]) {
    match c {
        1 => dst[..w].copy_from_slice(&src[..w]),
        2 => interleave::<O, 2>(src, w, dst),
        3 => interleave::<O, 3>(src, w, dst),
        4 => interleave::<O, 4>(src, w, dst),
        _ => {
            for (x, px) in dst[..w * c].chunks_exact_mut(c).enumerate() {
                for (ch, v) in px.iter_mut().enumerate() {
                    *v = src[ch * w + x];
                }
            }
        }
    }
}

/// `pshufb` masks that gather channel `ch` of 16 RGB pixels (48 bytes) from the 16 bytes
/// `16·v..16·v + 16` of them: output byte `j` is input byte `3j + ch` where it falls in that
/// vector, zero (mask bit 7) elsewhere.
#[cfg(target_arch = "x86_64")]
const SPLIT3_MASKS: [[[u8; 16]; 3]; 3] = {
    let mut m = [[[0x80u8; 16]; 3]; 3];
    let mut ch = 0;
    while ch < 3 {
        let mut v = 0;
        while v < 3 {
            let mut j = 0;
            while j < 16 {
                let k = 3 * j + ch;
                if k >= 16 * v && k < 16 * v + 16 {
                    m[ch][v][j] = (k - 16 * v) as u8;
                }
                j += 1;
            }
            v += 1;
        }
        ch += 1;
    }
    m
};

/// [`deinterleave`] for three u8 channels, 32 pixels per step (AVX2): each 128-bit half of
/// the three registers holds 16 pixels (48 bytes), the low half pixels `x..x + 16` and the
/// high half `x + 16..x + 32`, so `vpshufb`, which shuffles within halves, gathers 32 values
/// of a channel in order with the same masks in both halves. LLVM's loop for the byte case fell
/// back to one byte at a time (perf annotate, 2026-12-01).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn split3_u8(src: &[u8], w: usize, dst: &mut [u8]) {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu2_m128i, _mm256_or_si256, _mm256_shuffle_epi8, _mm256_storeu_si256,
    };
    let (src, dst) = (&src[..3 * w], &mut dst[..3 * w]);
    let full = w / 32 * 32;
    // SAFETY: each mask is 16 bytes, loaded into both halves.
    let masks: [[__m256i; 3]; 3] = std::array::from_fn(|ch| {
        std::array::from_fn(|v| unsafe {
            let p = SPLIT3_MASKS[ch][v].as_ptr().cast();
            _mm256_loadu2_m128i(p, p)
        })
    });
    for x in (0..full).step_by(32) {
        let g = &src[3 * x..3 * x + 96];
        // SAFETY: `g` is 96 bytes; each plane's 32 bytes at `x` lie inside `dst` (x + 32 ≤ w).
        unsafe {
            let v: [__m256i; 3] = std::array::from_fn(|k| {
                _mm256_loadu2_m128i(
                    g[48 + 16 * k..].as_ptr().cast(),
                    g[16 * k..].as_ptr().cast(),
                )
            });
            for ch in 0..3 {
                let p = _mm256_or_si256(
                    _mm256_or_si256(
                        _mm256_shuffle_epi8(v[0], masks[ch][0]),
                        _mm256_shuffle_epi8(v[1], masks[ch][1]),
                    ),
                    _mm256_shuffle_epi8(v[2], masks[ch][2]),
                );
                _mm256_storeu_si256(dst[ch * w + x..].as_mut_ptr().cast(), p);
            }
        }
    }
    for x in full..w {
        for ch in 0..3 {
            dst[ch * w + x] = src[3 * x + ch];
        }
    }
}

#[inline(always)]
fn deinterleave_any<O: Copy + 'static>(src: &[O], c: usize, w: usize, dst: &mut [O]) {
    #[cfg(target_arch = "x86_64")]
    if c == 3 && std::any::TypeId::of::<O>() == std::any::TypeId::of::<u8>() && avx2() {
        // SAFETY: `O` is u8 (checked above), so the slices are byte slices of the same lengths;
        // the CPU has AVX2 (checked above).
        unsafe {
            let src = std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), src.len());
            let dst = std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len());
            return split3_u8(src, w, dst);
        }
    }
    match c {
        1 => dst[..w].copy_from_slice(&src[..w]),
        2 => deinterleave::<O, 2>(src, w, dst),
        3 => deinterleave::<O, 3>(src, w, dst),
        4 => deinterleave::<O, 4>(src, w, dst),
        _ => {
            for (ch, plane) in dst[..w * c].chunks_exact_mut(w).enumerate() {
                for (d, px) in plane.iter_mut().zip(src.chunks_exact(c)) {
                    *d = px[ch];
                }
            }
        }
    }
}

/// Computes lines `y0..y1` of sample `i` for a channels-last output, in `L` values, and hands
/// each whole `W·C` line to `put(ly, line)` (`ly` counted from `y0`). With `direct` (a
/// channels-last input, `L` the output type, the output cached), lines are computed straight
/// into the output and `put` is not called.
#[inline(always)]
fn for_each_line<I: Element, L: Element, const RINT: bool>(
    ctx: &Ctx<'_, I>,
    (i, y0, y1): (usize, usize, usize),
    mut direct: Option<&mut [L]>,
    mut put: impl FnMut(usize, &[L]),
) {
    let ImageDims {
        channels: c,
        height: h,
        width: w,
        format,
    } = ctx.dims;
    let n = w * c;
    let (e, own, other) = ctx.pair(i);
    // Otherwise a line is computed into `line` (input order) and, for a channels-first input,
    // interleaved into `moved`.
    let mut line = vec![L::default(); if direct.is_some() { 0 } else { n }];
    let interleaved = format == MemoryFormat::ChannelsFirst;
    let mut moved = vec![L::default(); if interleaved { n } else { 0 }];
    for y in y0..y1 {
        let rule = LineRule::new(i, e, y);
        let ly = y - y0;
        match format {
            MemoryFormat::ChannelsFirst => {
                for ch in 0..c {
                    let off = (ch * h + y) * w;
                    let (a, b) = (&own[off..off + w], &other[off..off + w]);
                    let (m, s) = (&ctx.mean[ch * w..][..w], &ctx.std[ch * w..][..w]);
                    let dst = &mut line[ch * w..(ch + 1) * w];
                    run_line::<I, L, RINT>(rule, 1, a, b, m, s, dst);
                }
            }
            MemoryFormat::ChannelsLast => {
                let off = y * n;
                let (a, b) = (&own[off..off + n], &other[off..off + n]);
                let dst = match direct.as_deref_mut() {
                    Some(out) => &mut out[ly * n..(ly + 1) * n],
                    None => &mut line[..],
                };
                run_line::<I, L, RINT>(rule, c, a, b, &ctx.mean, &ctx.std, dst);
            }
        }
        if direct.is_some() {
            continue;
        }
        if interleaved {
            interleave_any(&line, c, w, &mut moved);
            put(ly, &moved);
        } else {
            put(ly, &line);
        }
    }
}

/// The f32 channels-last output: computed straight into the output when the input is
/// channels-last too and the output is cached, else through a line buffer, copied or streamed.
#[inline(always)]
fn run_task<I: Element, O: Element, const RINT: bool>(ctx: &Ctx<'_, I>, t: &mut Task<'_, O>) {
    let span = (t.i, t.y0, t.y1);
    let out = &mut *t.out[0];
    if ctx.dims.format == MemoryFormat::ChannelsLast && !ctx.stream {
        return for_each_line::<I, O, RINT>(ctx, span, Some(out), |_, _| {});
    }
    #[cfg(target_arch = "x86_64")]
    if ctx.stream {
        let mut sink = StreamOut::new(out);
        for_each_line::<I, O, RINT>(ctx, span, None, |_, src| sink.push(src));
        return sink.finish();
    }
    let n = ctx.line_len();
    for_each_line::<I, O, RINT>(ctx, span, None, |ly, src| {
        out[ly * n..(ly + 1) * n].copy_from_slice(src)
    });
}

/// f32 values rounded to `O` through the vector level's stores (`Lanes::store`: for bf16 the
/// integer rounding on whole vectors, or `vcvtneps2bf16`), bit for bit [`narrow`]'s.
struct Narrow<'a, O> {
    src: &'a [f32],
    dst: &'a mut [O],
}

impl<O: Element> Kernel for Narrow<'_, O> {
    type Output = ();
    #[inline(always)]
    fn run<S: Lanes>(self, s: S) {
        let lanes = width::<S>();
        let n = self.dst.len().min(self.src.len());
        let full = n / lanes * lanes;
        let (src, dst) = (&self.src[..n], &mut self.dst[..n]);
        for (d, x) in dst[..full]
            .chunks_exact_mut(lanes)
            .zip(src[..full].chunks_exact(lanes))
        {
            s.store(d, read::<S>(x));
        }
        for (d, &x) in dst[full..].iter_mut().zip(&src[full..]) {
            *d = narrow(x);
        }
    }
}

/// [`run_task`] for the 16-bit outputs: a line is computed in f32 (the f32 path's loops, which
/// vectorize), interleaved in f32 for a channels-first input, and rounded to `O` once per line
/// by [`Narrow`]. The same bits as narrowing each value where it is computed, at about the f32
/// path's cost instead of a scalar rounding per element.
///
/// `inline(always)` like [`run_task`], so that it is compiled inside [`run`]'s AVX2 copy: an
/// outlined generic function gets the baseline target (SSE2, 4 lanes), which made this path
/// 4–5× slower than the f32 one (perf annotate, 2026-12-01).
#[inline(always)]
fn run_task_narrow<I: Element, O: Element, const RINT: bool>(
    ctx: &Ctx<'_, I>,
    t: &mut Task<'_, O>,
) {
    let span = (t.i, t.y0, t.y1);
    let out = &mut *t.out[0];
    #[cfg(target_arch = "x86_64")]
    if ctx.stream {
        let mut sink = StreamOut::new(out);
        let mut staged = vec![O::default(); ctx.line_len()];
        for_each_line::<I, f32, RINT>(ctx, span, None, |_, src| {
            let dst = &mut staged;
            ctx.isa.run(Narrow { src, dst });
            sink.push(&staged);
        });
        return sink.finish();
    }
    let n = ctx.line_len();
    for_each_line::<I, f32, RINT>(ctx, span, None, |ly, src| {
        let dst = &mut out[ly * n..(ly + 1) * n];
        ctx.isa.run(Narrow { src, dst });
    });
}

/// A channels-first output task: each line's channels are computed plane by plane (a
/// channels-last input line is first split into `C` planes of its own type), on the vector
/// level's lanes, straight into the output planes. One [`Kernel`] per task, so the vector level
/// is dispatched once per task, not once per line.
struct PlaneTask<'a, 't, 'o, I, O, const RINT: bool> {
    ctx: &'a Ctx<'a, I>,
    t: &'t mut Task<'o, O>,
}

/// Fills `out` from `$vec(j)`, the vector of positions `j..j + $lanes` (`$lanes` = the width
/// of `$l`), two vectors per store ([`Lanes::store2`]; `$finite` as there), and its last
/// `n mod lanes` positions from `$one(k)`. A macro rather than a function taking closures: a
/// closure is not inlined into the caller's vector level (it would be compiled for the baseline
/// target, SSE2).
macro_rules! plane_fill {
    ($l:expr, $lanes:expr, $out:expr, $finite:expr, |$j:ident| $vec:expr, |$k:ident| $one:expr) => {{
        let lanes = $lanes;
        let out = $out;
        let n = out.len();
        let mut at = 0;
        while at + 2 * lanes <= n {
            let lo = {
                let $j = at;
                $vec
            };
            let hi = {
                let $j = at + lanes;
                $vec
            };
            $l.store2(&mut out[at..at + 2 * lanes], lo, hi, $finite);
            at += 2 * lanes;
        }
        if at + lanes <= n {
            let v = {
                let $j = at;
                $vec
            };
            $l.store(&mut out[at..at + lanes], v);
            at += lanes;
        }
        for $k in at..n {
            out[$k] = $one;
        }
    }};
}

/// `out = (a − m) / s` on one plane piece.
///
/// At the baseline level (one lane: aarch64, x86-64 without AVX2 and FMA) a plain loop, which
/// LLVM vectorizes for the build's target (SSE2, NEON); the one-lane pulp loop would not be
/// (3× slower, review of 2026-12-01).
#[inline(always)]
fn plane_own<L: Lanes, I: Element, O: Element>(l: L, a: &[I], m: f32, s: f32, out: &mut [O]) {
    let a = &a[..out.len()];
    let lanes = width::<L>();
    if lanes == 1 {
        for (o, &x) in out.iter_mut().zip(a) {
            *o = narrow((widen(x) - m) / s);
        }
        return;
    }
    let v = l.simd();
    let (vm, vs) = (v.splat_f32s(m), v.splat_f32s(s));
    // u8 input: no value is NaN (std is normal and positive, mean finite: `Normalize::new`).
    let finite = I::DTYPE == ScalarType::U8;
    plane_fill!(
        l,
        lanes,
        out,
        finite,
        |j| v.div_f32s(v.sub_f32s(l.load(&a[j..j + lanes]), vm), vs),
        |k| narrow((widen(a[k]) - m) / s)
    );
}

/// `out = (v − m) / s`, `v = λ·a + (1−λ)·b` (rounded half to even when `RINT`, as
/// [`norm_lerp`]), on one plane piece.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn plane_lerp<L: Lanes, I: Element, O: Element, const RINT: bool>(
    l: L,
    lam: f32,
    a: &[I],
    b: &[I],
    m: f32,
    s: f32,
    out: &mut [O],
) {
    let mu = 1.0 - lam;
    let (a, b) = (&a[..out.len()], &b[..out.len()]);
    let lanes = width::<L>();
    if lanes == 1 {
        // The baseline level: a loop LLVM vectorizes (see `plane_own`).
        for (k, o) in out.iter_mut().enumerate() {
            *o = narrow((lerp_value::<I, RINT>(lam, mu, a[k], b[k]) - m) / s);
        }
        return;
    }
    let v = l.simd();
    let (vl, vu) = (v.splat_f32s(lam), v.splat_f32s(mu));
    let (vm, vs, vr) = (v.splat_f32s(m), v.splat_f32s(s), v.splat_f32s(ROUND));
    // u8 input: no value is NaN (λ is finite and in [0, 1]; see `plane_own`).
    let finite = I::DTYPE == ScalarType::U8;
    plane_fill!(
        l,
        lanes,
        out,
        finite,
        |j| {
            let (x, y) = (l.load(&a[j..j + lanes]), l.load(&b[j..j + lanes]));
            let t = v.add_f32s(v.mul_f32s(vl, x), v.mul_f32s(vu, y));
            let t = if RINT {
                v.sub_f32s(v.add_f32s(t, vr), vr)
            } else {
                t
            };
            v.div_f32s(v.sub_f32s(t, vm), vs)
        },
        |k| narrow((lerp_value::<I, RINT>(lam, mu, a[k], b[k]) - m) / s)
    );
}

/// One channel's `W` columns of one line, as `rule` says.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn plane_line<L: Lanes, I: Element, O: Element, const RINT: bool>(
    l: L,
    rule: LineRule,
    a: &[I],
    b: &[I],
    m: f32,
    s: f32,
    out: &mut [O],
) {
    match rule {
        LineRule::Own => plane_own(l, a, m, s, out),
        LineRule::Lerp(lam) => plane_lerp::<L, I, O, RINT>(l, lam, a, b, m, s, out),
        LineRule::Boxed(x0, x1) => {
            let (lo, rest) = out.split_at_mut(x0);
            let (mid, hi) = rest.split_at_mut(x1 - x0);
            plane_own(l, &a[..x0], m, s, lo);
            plane_own(l, &b[x0..x1], m, s, mid);
            plane_own(l, &a[x1..], m, s, hi);
        }
    }
}

impl<I: Element, O: Element, const RINT: bool> Kernel for PlaneTask<'_, '_, '_, I, O, RINT> {
    type Output = ();
    #[inline(always)]
    fn run<L: Lanes>(self, l: L) {
        let PlaneTask { ctx, t } = self;
        let ImageDims {
            channels: c,
            height: h,
            width: w,
            format,
        } = ctx.dims;
        let (e, own, other) = ctx.pair(t.i);
        let split = format == MemoryFormat::ChannelsLast && c > 1;
        let mut pa = vec![I::default(); if split { c * w } else { 0 }];
        let mut pb = vec![I::default(); if split { c * w } else { 0 }];
        for y in t.y0..t.y1 {
            let rule = LineRule::new(t.i, e, y);
            let ly = y - t.y0;
            if split {
                deinterleave_any(&own[y * w * c..(y + 1) * w * c], c, w, &mut pa);
                if !matches!(rule, LineRule::Own) {
                    deinterleave_any(&other[y * w * c..(y + 1) * w * c], c, w, &mut pb);
                }
            }
            for ch in 0..c {
                let (a, b) = if split {
                    (&pa[ch * w..(ch + 1) * w], &pb[ch * w..(ch + 1) * w])
                } else {
                    let off = (ch * h + y) * w;
                    (&own[off..off + w], &other[off..off + w])
                };
                let (m, s) = (ctx.mean_c[ch], ctx.std_c[ch]);
                let out = &mut t.out[ch][ly * w..(ly + 1) * w];
                plane_line::<L, I, O, RINT>(l, rule, a, b, m, s, out);
            }
        }
    }
}

#[inline(always)]
fn run_any<I: Element, O: Element>(ctx: &Ctx<'_, I>, t: &mut Task<'_, O>) {
    if ctx.out_format == MemoryFormat::ChannelsFirst {
        return match ctx.rint {
            true => ctx.isa.run(PlaneTask::<I, O, true> { ctx, t }),
            false => ctx.isa.run(PlaneTask::<I, O, false> { ctx, t }),
        };
    }
    let f32_out = O::DTYPE == ScalarType::F32;
    match (f32_out, ctx.rint) {
        (true, true) => run_task::<I, O, true>(ctx, t),
        (true, false) => run_task::<I, O, false>(ctx, t),
        (false, true) => run_task_narrow::<I, O, true>(ctx, t),
        (false, false) => run_task_narrow::<I, O, false>(ctx, t),
    }
}

/// [`run_any`] compiled for AVX2 and FMA when the CPU has both (detected once, cached; the bits
/// are the same either way: every operation is an exactly rounded IEEE one, never contracted).
fn run<I: Element, O: Element>(ctx: &Ctx<'_, I>, t: &mut Task<'_, O>) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<I: Element, O: Element>(ctx: &Ctx<'_, I>, t: &mut Task<'_, O>) {
            run_any(ctx, t)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(ctx, t) };
        }
    }
    run_any(ctx, t)
}

/// The fused "decoded pixels → model input" operation: mixes `x` by the plan, normalizes each
/// channel and writes `out` in `out_format` and `O`'s precision, in one pass over the batch.
///
/// `x` is `[B, C, H, W]` or `[B, H, W, C]` as `shape` says (an image; `B` is the plan's batch,
/// `plan.len()`): u8 pixels, or f32/f16/bf16 values already in the units of `norm`. `out` has
/// as many elements, `[B, C, H, W]` for [`MemoryFormat::ChannelsFirst`] or `[B, H, W, C]` for
/// [`MemoryFormat::ChannelsLast`], in f32, f16 or bf16. Per element, in f32 (see
/// [`Normalize`] for the formula and its source, timm's `FastCollateMixup` and
/// `PrefetchLoader`): `v` = MixUp lerp, CutMix paste, or the sample's own value; rounded to u8
/// under [`Normalize::with_u8_rounding`]; then `(v − mean_c) / std_c`, rounded once to `O`
/// (f16 and bf16: the f32 result rounded to nearest even, `O::from_f32`).
/// Any plan (a non-involution reads its partners a second time); `out` is never `x`.
/// Multi-threaded; the result does not depend on the number of threads.
///
/// # Errors
/// [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) naming `shape` (rows, not
/// an image) or `normalize` (channels differ from the images', or u8 rounding on a float
/// input); [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) for `x` (not `B` samples
/// of the shape), [`MixError::LengthMismatch`](crate::MixError::LengthMismatch) for `out` (not
/// `x`'s length); [`MixError::ImageSizeMismatch`](crate::MixError::ImageSizeMismatch) when the
/// plan's boxes were drawn for another image size. Nothing is written on error.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{cpu, reference, SampleShape, MemoryFormat, MixPlan, Normalize};
/// // Decoded RGB images (channels-last u8), timm's pipeline, into an NCHW f32 batch.
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7]).unwrap();
/// let img = SampleShape::channels_last(2, 2, 3);
/// let x: Vec<u8> = (0..24).map(|v| (v * 10) as u8).collect();
/// let norm = Normalize::imagenet_u8().with_u8_rounding(true);
/// let mut out = vec![0.0f32; x.len()];
/// cpu::mix_normalize(&plan, &img, &norm, &x, MemoryFormat::ChannelsFirst, &mut out).unwrap();
/// let want = reference::mix_normalize(&plan, &img, &norm, &x, MemoryFormat::ChannelsFirst).unwrap();
/// assert!(out.iter().zip(&want).all(|(o, w)| (f64::from(*o) - w).abs() < 1e-6));
/// ```
pub fn mix_normalize<I: Element, O: FloatElement>(
    plan: &MixPlan,
    shape: &SampleShape,
    norm: &Normalize,
    x: &[I],
    out_format: MemoryFormat,
    out: &mut [O],
) -> Result<()> {
    mix_normalize_on(Isa::detect(), plan, shape, norm, x, out_format, out)
}

/// [`mix_normalize`] at a given vector level (the tests run every level this CPU has).
fn mix_normalize_on<I: Element, O: FloatElement>(
    isa: Isa,
    plan: &MixPlan,
    shape: &SampleShape,
    norm: &Normalize,
    x: &[I],
    out_format: MemoryFormat,
    out: &mut [O],
) -> Result<()> {
    let dims = check_mix_normalize(plan, shape, norm, I::DTYPE, x.len(), out.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let (c, h, w) = (dims.channels, dims.height, dims.width);
    let row = dims.sample_len();
    let entries = plan.entries();
    let repeat = |v: &[f32]| -> Vec<f32> {
        match dims.format {
            MemoryFormat::ChannelsFirst => {
                v.iter().flat_map(|&m| std::iter::repeat_n(m, w)).collect()
            }
            MemoryFormat::ChannelsLast => (0..w).flat_map(|_| v.iter().copied()).collect(),
        }
    };
    let ctx = Ctx {
        x,
        entries,
        dims,
        out_format,
        // Only the channels-last output's loops read the repeated mean and std.
        mean: match out_format {
            MemoryFormat::ChannelsLast => repeat(norm.mean()),
            MemoryFormat::ChannelsFirst => Vec::new(),
        },
        std: match out_format {
            MemoryFormat::ChannelsLast => repeat(norm.std()),
            MemoryFormat::ChannelsFirst => Vec::new(),
        },
        mean_c: norm.mean().to_vec(),
        std_c: norm.std().to_vec(),
        rint: norm.u8_rounding(),
        isa,
        stream: cfg!(target_arch = "x86_64") && std::mem::size_of_val(out) >= STREAM_MIN_BYTES,
    };
    // Whole samples when there are enough of them to keep every thread busy; otherwise groups
    // of lines, never under MIN_TASK elements.
    let want = 4 * rayon::current_num_threads();
    let parts = want.div_ceil(entries.len()).min(row / MIN_TASK).clamp(1, h);
    let lines = h.div_ceil(parts);
    let min_tasks = (MIN_TASK / (lines * w * c)).max(1);
    let mut samples: Vec<Option<&mut [O]>> = out.chunks_mut(row).map(Some).collect();
    let mut tasks = Vec::with_capacity(entries.len() * parts);
    for i in chain_order(entries) {
        let Some(sample) = samples[i].take() else {
            continue;
        };
        match out_format {
            MemoryFormat::ChannelsFirst => {
                let mut planes: Vec<_> = sample
                    .chunks_mut(h * w)
                    .map(|p| p.chunks_mut(lines * w))
                    .collect();
                for y0 in (0..h).step_by(lines) {
                    let out: Vec<&mut [O]> = planes.iter_mut().filter_map(Iterator::next).collect();
                    let y1 = (y0 + lines).min(h);
                    tasks.push(Task { i, y0, y1, out });
                }
            }
            MemoryFormat::ChannelsLast => {
                for (k, piece) in sample.chunks_mut(lines * w * c).enumerate() {
                    let y0 = k * lines;
                    let y1 = (y0 + lines).min(h);
                    tasks.push(Task {
                        i,
                        y0,
                        y1,
                        out: vec![piece],
                    });
                }
            }
        }
    }
    tasks
        .into_par_iter()
        .with_min_len(min_tasks)
        .for_each(|mut t| run(&ctx, &mut t));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Calls `f(norm, shape, fin, fout, rint)` for `C×H×W` images in both input formats, both
    /// output formats and each of `rints`, with a different mean and std per channel.
    fn each_case(
        (c, h, w): (usize, usize, usize),
        scale: f64,
        rints: &[bool],
        mut f: impl FnMut(&Normalize, &SampleShape, MemoryFormat, MemoryFormat, bool),
    ) {
        let mean: Vec<f64> = (0..c).map(|k| 0.4 + 0.01 * k as f64).collect();
        let std: Vec<f64> = (0..c).map(|k| 0.2 + 0.01 * k as f64).collect();
        for &rint in rints {
            let norm = Normalize::new(&mean, &std, scale)
                .unwrap()
                .with_u8_rounding(rint);
            for fin in [MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast] {
                let shape = match fin {
                    MemoryFormat::ChannelsFirst => SampleShape::channels_first(c, h, w),
                    MemoryFormat::ChannelsLast => SampleShape::channels_last(h, w, c),
                };
                for fout in [MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast] {
                    f(&norm, &shape, fin, fout, rint);
                }
            }
        }
    }

    /// The 16-bit outputs (a channels-first output rounded in the vector stores of
    /// `PlaneTask`; a channels-last one computed in f32 lines and rounded per line by `Narrow`)
    /// are the f32 output rounded element by element, bit for bit: every format pair, channel
    /// counts that leave tails of every length, MixUp with and without rounding, CutMix, and an
    /// output large enough for the channels-last output's non-temporal stores.
    fn narrow_matches<O: FloatElement>() {
        let sizes = [
            (3usize, 5usize, 7usize, 3usize),
            (1, 9, 13, 2),
            (4, 3, 17, 5),
            (5, 2, 31, 1),
        ];
        // 3 × 512 × 512 × 12 bf16 outputs: 18 MiB, above `STREAM_MIN_BYTES`.
        let big = (3usize, 512usize, 512usize, 12usize);
        for (c, h, w, b) in sizes.into_iter().chain([big]) {
            let n = b * c * h * w;
            let x: Vec<u8> = (0..n).map(|k| (k * 7919 % 251) as u8).collect();
            let partner: Vec<usize> = (0..b).rev().collect();
            let lam: Vec<f32> = (0..b).map(|i| 0.3 + 0.05 * (i % 10) as f32).collect();
            let boxes: Vec<Option<crate::CutBox>> = (0..b)
                .map(|i| {
                    (i % 2 == 1).then_some(crate::CutBox {
                        y0: 0,
                        y1: (h / 2) as u32 + 1,
                        x0: 1.min(w as u32 - 1),
                        x1: w as u32,
                    })
                })
                .collect();
            let plan = MixPlan::with_boxes(
                &partner,
                &lam,
                &boxes,
                crate::ImageSize {
                    height: h,
                    width: w,
                },
            )
            .unwrap();
            each_case(
                (c, h, w),
                255.0,
                &[false, true],
                |norm, shape, fin, fout, rint| {
                    let mut wide = vec![0f32; n];
                    mix_normalize(&plan, shape, norm, &x, fout, &mut wide).unwrap();
                    let mut got = vec![O::default(); n];
                    mix_normalize(&plan, shape, norm, &x, fout, &mut got).unwrap();
                    let bad = (0..n).find(|&k| {
                        O::from_f32(wide[k]).to_f32().to_bits() != got[k].to_f32().to_bits()
                    });
                    assert!(
                        bad.is_none(),
                        "{c}x{h}x{w} B {b} {fin:?} -> {fout:?} rint {rint}: [{bad:?}]"
                    );
                },
            );
        }
    }

    /// The AVX2 split of three u8 channels gives the planes of the plain loop at every width
    /// (whole 32-pixel steps, tails of every length, none).
    #[test]
    fn three_channel_byte_split_matches_the_plain_loop() {
        for w in 0..=100 {
            let src: Vec<u8> = (0..3 * w).map(|k| (k * 37 % 256) as u8).collect();
            let mut got = vec![0u8; 3 * w];
            deinterleave_any(&src, 3, w, &mut got);
            let want: Vec<u8> = (0..3)
                .flat_map(|ch| (0..w).map(move |x| (ch, x)))
                .map(|(ch, x)| src[3 * x + ch])
                .collect();
            assert_eq!(got, want, "width {w}");
        }
    }

    /// Every vector level this CPU has (the baseline's plain loops, AVX2, AVX-512) gives the
    /// baseline's bits: u8 and f32 inputs (no NaN: which payload survives a lerp of two NaNs is
    /// not specified), every output type, 1–5 channels, widths with tails of every kind, both
    /// formats in and out, MixUp with and without rounding, CutMix boxes at the edges.
    #[test]
    fn every_vector_level_gives_the_same_bits() {
        fn run<I: Element, O: FloatElement>(x_of: impl Fn(usize) -> I, rints: &[bool]) {
            for (c, h, w) in [
                (1, 3, 40),
                (2, 2, 17),
                (3, 3, 33),
                (3, 2, 67),
                (4, 2, 9),
                (5, 1, 8),
            ] {
                let b = 4;
                let n = b * c * h * w;
                let x: Vec<I> = (0..n).map(&x_of).collect();
                let boxes = [
                    None,
                    Some(crate::CutBox {
                        y0: 0,
                        y1: h as u32,
                        x0: 0,
                        x1: 1,
                    }),
                    Some(crate::CutBox {
                        y0: 1,
                        y1: h as u32,
                        x0: 3.min(w as u32 - 1),
                        x1: w as u32,
                    }),
                    None,
                ];
                let size = crate::ImageSize {
                    height: h,
                    width: w,
                };
                let plan = MixPlan::with_boxes(&[3, 2, 1, 0], &[0.3, 0.6, 0.45, 1.0], &boxes, size)
                    .unwrap();
                let scale = if I::DTYPE == ScalarType::U8 {
                    255.0
                } else {
                    1.0
                };
                each_case((c, h, w), scale, rints, |norm, shape, fin, fout, rint| {
                    let mut want = vec![O::default(); n];
                    let base = Isa::scalar();
                    mix_normalize_on(base, &plan, shape, norm, &x, fout, &mut want).unwrap();
                    for isa in Isa::all() {
                        let mut got = vec![O::default(); n];
                        mix_normalize_on(isa, &plan, shape, norm, &x, fout, &mut got).unwrap();
                        let bad = (0..n)
                            .find(|&k| got[k].to_f32().to_bits() != want[k].to_f32().to_bits());
                        assert!(
                            bad.is_none(),
                            "{isa:?} {:?}->{:?} {c}x{h}x{w} {fin:?}->{fout:?} rint {rint}: \
                             [{bad:?}]",
                            I::DTYPE,
                            O::DTYPE
                        );
                    }
                });
            }
        }
        let byte = |k: usize| (k * 7919 % 256) as u8;
        let float = |k: usize| (k * 7919 % 1013) as f32 / 97.0 - 4.0;
        run::<u8, f32>(byte, &[false, true]);
        run::<u8, bf16>(byte, &[false, true]);
        run::<u8, f16>(byte, &[false, true]);
        run::<f32, f32>(float, &[false]);
        run::<f32, bf16>(float, &[false]);
    }

    #[test]
    fn bf16_output_is_the_f32_output_rounded() {
        narrow_matches::<bf16>();
    }

    #[test]
    fn f16_output_is_the_f32_output_rounded() {
        narrow_matches::<f16>();
    }
}
