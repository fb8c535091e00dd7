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

use pulp::Simd;

use super::lanes::{Isa, Kernel, Lanes, narrow, read, widen, width, write};
use super::math::{BLOCK, SUM_LANES, exp, exp_lanes, flush};
use super::pool::{self, Slab};
use super::soft_targets::{Targets, rows_per_task};
use crate::dtype::{Element, FloatElement};
use crate::error::{Result, Rows, check_len, check_rows};
use crate::plan::{MixPlan, PlanEntry};
use crate::spec::{CeSpec, GradOutput, Reduction, check_ce, check_labels};

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
        let eps = f64::from(spec.targets().smoothing_f32());
        Self {
            targets: Targets::new(spec.targets()),
            keep: 1.0 - eps,
            off: eps / spec.num_classes() as f64,
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
    if w == 0.0 { 0.0 } else { w * d }
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

/// Pass (2) over the scratch row: `w_c ← e^(w_c - m)`; returns `(Σ e, Σ (w-m))`, summed in
/// [`SUM_LANES`] lanes per block of [`BLOCK`] (the same lanes and order at every width; a
/// block's last `< 16` elements go to lanes `0..` one by one).
///
/// The forward-only loss stores `e` too although it does not need it: one L1 store per
/// element, and one loop for both.
#[inline(always)]
fn exp_sums<L: Lanes>(l: L, w: &mut [f32], m: f32, ahead: &Ahead) -> (f64, f64) {
    let s = l.simd();
    let n = width::<L>();
    let regs = SUM_LANES / n;
    let mv = s.splat_f32s(m);
    let (mut sum_e, mut sum_d) = (0.0f64, 0.0f64);
    for (nb, block) in w.chunks_mut(BLOCK).enumerate() {
        let zero = s.splat_f32s(0.0);
        let (mut ve, mut vd) = ([zero; SUM_LANES], [zero; SUM_LANES]);
        let mut chunks = block.chunks_exact_mut(SUM_LANES);
        for (nc, c) in chunks.by_ref().enumerate() {
            ahead.fetch(nb * BLOCK + nc * SUM_LANES);
            for r in 0..regs {
                let c = &mut c[r * n..];
                let d = s.sub_f32s(read::<L>(c), mv);
                let e = exp_lanes(l, d);
                write::<L>(c, e);
                vd[r] = s.add_f32s(vd[r], d);
                ve[r] = s.add_f32s(ve[r], e);
            }
        }
        let (mut acc_e, mut acc_d) = ([0.0f32; SUM_LANES], [0.0f32; SUM_LANES]);
        for r in 0..regs {
            write::<L>(&mut acc_e[r * n..], ve[r]);
            write::<L>(&mut acc_d[r * n..], vd[r]);
        }
        let tail = chunks.into_remainder();
        for ((v, ae), ad) in tail.iter_mut().zip(&mut acc_e).zip(&mut acc_d) {
            let d = *v - m;
            let e = exp(d);
            *v = e;
            *ad += d;
            *ae += e;
        }
        sum_e += flush(&mut acc_e);
        sum_d += flush(&mut acc_d);
    }
    (sum_e, sum_d)
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
        if self.worthwhile { address } else { 0 }
    }
}

/// `if v > m { v } else { m }`: one `maxps` on x86 (a NaN `v` compares false and is skipped),
/// where `f32::max` costs three instructions per vector for its NaN rule. Which zero wins between
/// `-0.0` and `+0.0` may differ from `f32::max`; the max is only used as a shift.
#[inline(always)]
fn max_of<S: Simd>(s: S, m: S::f32s, v: S::f32s) -> S::f32s {
    s.select_f32s(s.greater_than_f32s(v, m), v, m)
}

/// Pass (1): `w ← z` widened ([`Lanes::load`]); returns the largest element, NaNs skipped
/// (`-inf` for an empty row or all NaN). The max runs in [`SUM_LANES`] lanes as the sums do,
/// the row's last `< 16` elements into lanes `0..`, then the lanes in order: the same bits at
/// every width.
#[inline(always)]
fn widen_max<L: Lanes, T: Element>(l: L, z: &[T], w: &mut [f32]) -> f32 {
    let s = l.simd();
    let n = width::<L>();
    let regs = SUM_LANES / n;
    let len = z.len().min(w.len());
    let mut acc = [s.splat_f32s(f32::NEG_INFINITY); SUM_LANES];
    let mut i = 0;
    while i + SUM_LANES <= len {
        for (r, a) in acc.iter_mut().enumerate().take(regs) {
            let j = i + r * n;
            let v = l.load(&z[j..j + n]);
            write::<L>(&mut w[j..], v);
            *a = max_of(s, *a, v);
        }
        i += SUM_LANES;
    }
    let mut lanes = [f32::NEG_INFINITY; SUM_LANES];
    for r in 0..regs {
        write::<L>(&mut lanes[r * n..], acc[r]);
    }
    let one = pulp::Scalar;
    for (k, lane) in (i..len).zip(&mut lanes) {
        w[k] = one.load(&z[k..k + 1]);
        *lane = max_of(one, *lane, w[k]);
    }
    lanes
        .into_iter()
        .fold(f32::NEG_INFINITY, |m, v| max_of(one, m, v))
}

/// Pass (3): `g_c = e_c · (scale/s) - scale·ε/C` for every class (one fused multiply-add with
/// two constants each rounded once from f64), then the two target classes from their saved `e`,
/// `(e · (1/s) - t) · scale` with their own targets, formed in f32 before the one rounding.
#[inline(always)]
fn write_grad<L: Lanes, T: Element>(
    l: L,
    w: &[f32],
    st: &RowStats,
    e_ab: (f32, f32),
    Row { a, b, lam, scale }: Row,
    k: &Consts,
    g: &mut [T],
) {
    let mul = (f64::from(scale) / st.s) as f32;
    let sub = (f64::from(k.targets.off) * f64::from(scale)) as f32;
    grad_lanes(l, w, mul, sub, g);
    let inv = (1.0 / st.s) as f32;
    let (ta, tb) = k.targets.pair(lam, a == b);
    g[b] = narrow((e_ab.1 * inv - tb) * scale);
    g[a] = narrow((e_ab.0 * inv - ta) * scale);
}

/// Pass (3)'s loop: `g = e · mul - sub` (one fused multiply-add), rounded by [`Lanes::store`]
/// (bf16: `vcvtneps2bf16` where the CPU has it); the last `< width` elements one by one.
#[inline(always)]
fn grad_lanes<L: Lanes, T: Element>(l: L, w: &[f32], mul: f32, sub: f32, g: &mut [T]) {
    let s = l.simd();
    let n = width::<L>();
    let len = w.len().min(g.len());
    let (vm, vs) = (s.splat_f32s(mul), s.splat_f32s(-sub));
    let mut i = 0;
    while i + n <= len {
        l.store(&mut g[i..i + n], s.mul_add_f32s(read::<L>(&w[i..]), vm, vs));
        i += n;
    }
    for (o, &e) in g[i..len].iter_mut().zip(&w[i..len]) {
        *o = narrow(e.mul_add(mul, -sub));
    }
}

/// `z - m` in f64.
#[inline(always)]
fn d64(z: f32, m: f32) -> f64 {
    f64::from(z) - f64::from(m)
}

/// Passes (1) and (2) into the scratch row (all of a forward-only row); returns the stats and
/// `(e_a, e_b)`.
#[inline(always)]
fn scratch_row<L: Lanes, T: Element>(
    l: L,
    z: &[T],
    w: &mut [f32],
    a: usize,
    b: usize,
    ahead: &Ahead,
    k: &Consts,
) -> (RowStats, (f32, f32)) {
    let m = widen_max(l, z, w);
    let (da, db) = (d64(w[a], m), d64(w[b], m));
    let (s, mut sum_d) = exp_sums(l, w, m, ahead);
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
fn forward_kernel<L: Lanes, T: Element>(l: L, z: &[T], w: &mut [f32], row: Row, k: &Consts) -> f32 {
    scratch_row(l, z, w, row.a, row.b, &Ahead::NONE, k)
        .0
        .loss(row.lam, k)
}

/// A row forward and backward, the gradient into `g`: its loss.
#[inline(always)]
fn row_kernel<L: Lanes, T: Element>(
    l: L,
    z: &[T],
    g: &mut [T],
    w: &mut [f32],
    row: Row,
    ahead: Ahead,
    k: &Consts,
) -> f32 {
    let (st, e_ab) = scratch_row(l, z, w, row.a, row.b, &ahead, k);
    write_grad(l, w, &st, e_ab, row, k, g);
    st.loss(row.lam, k)
}

/// A row forward and backward, the gradient over the logits: its loss.
#[inline(always)]
fn row_kernel_in_place<L: Lanes, T: Element>(
    l: L,
    zg: &mut [T],
    w: &mut [f32],
    row: Row,
    ahead: Ahead,
    k: &Consts,
) -> f32 {
    // The logits are read (pass 1) before the gradient overwrites them (pass 3).
    let (st, e_ab) = scratch_row(l, &*zg, w, row.a, row.b, &ahead, k);
    write_grad(l, w, &st, e_ab, row, k, zg);
    st.loss(row.lam, k)
}

/// A row at one [`Isa`] level: the gradient into `g`, over the logits (`g` empty, `z` given
/// as the mutable `zg`), or none (forward only).
enum Job<'a, T> {
    Forward(&'a [T]),
    Grad(&'a [T], &'a mut [T], Ahead),
    InPlace(&'a mut [T], Ahead),
}

/// [`Job`] with its row, scratch row and constants: the [`Kernel`] [`Isa::run`] compiles once per
/// level.
struct RowJob<'a, T> {
    job: Job<'a, T>,
    w: &'a mut [f32],
    row: Row,
    k: &'a Consts,
}

impl<T: Element> Kernel for RowJob<'_, T> {
    type Output = f32;
    #[inline(always)]
    fn run<L: Lanes>(self, l: L) -> f32 {
        let RowJob { job, w, row, k } = self;
        match job {
            Job::Forward(z) => forward_kernel(l, z, w, row, k),
            Job::Grad(z, g, ahead) => row_kernel(l, z, g, w, row, ahead, k),
            Job::InPlace(zg, ahead) => row_kernel_in_place(l, zg, w, row, ahead, k),
        }
    }
}

/// One row at level `isa`: its loss.
#[inline(always)]
fn run_row<T: Element>(isa: Isa, job: Job<'_, T>, w: &mut [f32], row: Row, k: &Consts) -> f32 {
    isa.run(RowJob { job, w, row, k })
}

/// Jobs of up to this many logits (16 MiB of f32) run as small jobs of [`pool::for_each_row`],
/// where the caller works too and rayon's fixed cost per call (see [`pool`]) is not paid; larger ones through rayon's splitting, whose contiguous ranges keep [`Ahead`]'s next
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

/// Checks everything a loss call gets, before anything is written: the plan, spec and logits
/// (`[B, C]`), labels, upstream gradient, `losses` (`[B]`) and `grad` (`[B, C]`) if given. A
/// BCE call comes here with its spec as a [`CeSpec`] (the same targets and reduction).
/// Returns `(B, C)`.
pub(super) fn check_all(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: usize,
    labels: &[u32],
    upstream: &GradOutput<'_>,
    losses: Option<&[f32]>,
    grad: Option<usize>,
) -> Result<(usize, usize)> {
    let (b, c) = (plan.len(), spec.num_classes());
    check_ce(plan, spec, logits, upstream)?;
    check_labels(plan, labels, spec.targets())?;
    if let Some(l) = losses {
        check_len("losses", b, l.len())?;
    }
    if let Some(g) = grad {
        check_rows("grad", Rows::Classes, b, c, g)?;
    }
    Ok((b, c))
}

/// Sample `i`'s gradient scale: the upstream gradient times `1/B` for the mean.
#[inline]
pub(super) fn scale_of(upstream: &GradOutput<'_>, factor: f32, i: usize) -> f32 {
    match *upstream {
        GradOutput::Scalar(g) => g * factor,
        GradOutput::PerSample(g) => g[i] * factor,
    }
}

pub(crate) fn mixup_ce_forward<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[u32],
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    let up = GradOutput::default();
    let (batch, c) = check_all(
        plan,
        spec,
        logits.len(),
        labels,
        &up,
        losses.as_deref(),
        None,
    )?;
    let mut temp = Vec::new();
    let losses = losses_buffer(losses, batch, &mut temp);
    let call = Call::new(plan, spec, logits, labels, up);
    let rows = (Slab::of(logits, c), &mut *losses);
    pool::for_each_row(rows, rows_per_task(c), call.small, |i, (z, loss)| {
        loss[0] = call.run(Job::Forward(z.data), i);
    });
    Ok(reduce(losses, spec.reduction()))
}

pub(crate) fn mixup_ce<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[u32],
    upstream: GradOutput<'_>,
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
        Some(grad.len()),
    )?;
    let mut temp = Vec::new();
    let losses = losses_buffer(losses, batch, &mut temp);
    let call = Call::new(plan, spec, logits, labels, upstream);
    let rows = (Slab::of(logits, c), (Slab::of(grad, c), &mut *losses));
    pool::for_each_row(rows, rows_per_task(c), call.small, |i, (z, (g, loss))| {
        let out = call.addresses.when(g.data.as_ptr() as usize);
        let ahead = Ahead::new::<T, T>(call.addresses.next(i), out);
        loss[0] = call.run(Job::Grad(z.data, g.data, ahead), i);
    });
    Ok(reduce(losses, spec.reduction()))
}

pub(crate) fn mixup_ce_in_place<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &mut [T],
    labels: &[u32],
    upstream: GradOutput<'_>,
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    let (batch, c) = check_all(
        plan,
        spec,
        logits.len(),
        labels,
        &upstream,
        losses.as_deref(),
        None,
    )?;
    let mut temp = Vec::new();
    let losses = losses_buffer(losses, batch, &mut temp);
    let call = Call::new(plan, spec, logits, labels, upstream);
    let rows = (Slab::of(logits, c), &mut *losses);
    pool::for_each_row(rows, rows_per_task(c), call.small, |i, (zg, loss)| {
        // The gradient goes over the row pass (1) just read: only the next row to fetch.
        let ahead = Ahead::new::<T, T>(call.addresses.next(i), 0);
        loss[0] = call.run(Job::InPlace(zg.data, ahead), i);
    });
    Ok(reduce(losses, spec.reduction()))
}

/// What the rows of a checked call share: the constants, the vector level, the plan's
/// entries and labels, the upstream gradient and its factor (`1/B` for the mean), where the
/// logits' rows start, and whether the job is small ([`SMALL_JOB`]).
struct Call<'a> {
    c: usize,
    k: Consts,
    isa: Isa,
    factor: f32,
    entries: &'a [PlanEntry],
    labels: &'a [u32],
    upstream: GradOutput<'a>,
    addresses: RowAddresses,
    small: bool,
}

impl<'a> Call<'a> {
    fn new<T>(
        plan: &'a MixPlan,
        spec: &CeSpec,
        logits: &[T],
        labels: &'a [u32],
        upstream: GradOutput<'a>,
    ) -> Self {
        let c = spec.num_classes();
        Call {
            c,
            k: Consts::new(spec),
            isa: Isa::detect(),
            factor: spec.reduction().grad_factor(plan.len()),
            entries: plan.entries(),
            labels,
            upstream,
            addresses: RowAddresses::new(logits, c),
            small: logits.len() <= SMALL_JOB,
        }
    }

    /// Row `i`'s job on this thread's scratch row: its loss.
    #[inline(always)]
    fn run<T: Element>(&self, job: Job<'_, T>, i: usize) -> f32 {
        let scale = scale_of(&self.upstream, self.factor, i);
        let row = Row::of(self.entries, self.labels, i, scale);
        with_scratch(self.c, |w| run_row(self.isa, job, w, row, &self.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Every level the CPU has gives the baseline build's loss and gradient bits for a row.
    fn paths_agree<T: FloatElement>() {
        let c = 1000 + 7;
        let z: Vec<T> = (0..c)
            .map(|i| T::from_f32(((i * 7919) % 1000) as f32 / 50.0 - 10.0))
            .collect();
        let k = Consts::new(&CeSpec::new(c, 0.1, Reduction::Mean).unwrap());
        let row = Row {
            a: 3,
            b: 1000,
            lam: 0.37,
            scale: 0.25,
        };
        let (mut g1, mut w1) = (vec![T::default(); c], vec![0.0; c]);
        let base = Isa::scalar();
        let l1 = run_row(base, Job::Grad(&z, &mut g1, Ahead::NONE), &mut w1, row, &k);
        for isa in Isa::all() {
            let (mut g2, mut w2) = (vec![T::default(); c], vec![0.0; c]);
            let l2 = run_row(isa, Job::Grad(&z, &mut g2, Ahead::NONE), &mut w2, row, &k);
            assert_eq!(l1.to_bits(), l2.to_bits(), "{isa:?}");
            assert!(
                g1.iter()
                    .zip(&g2)
                    .all(|(x, y)| x.to_f32().to_bits() == y.to_f32().to_bits()),
                "{isa:?}"
            );
            let l3 = run_row(isa, Job::Forward(&z), &mut w2, row, &k);
            assert_eq!(l1.to_bits(), l3.to_bits(), "{isa:?}");
        }
    }

    #[test]
    fn every_level_gives_the_baseline_row() {
        paths_agree::<f32>();
        paths_agree::<bf16>();
        paths_agree::<half::f16>();
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
            let spec = CeSpec::new(c, 0.1, Reduction::None).unwrap();
            let ups: Vec<f32> = (0..batch).map(|i| 1.0 + i as f32).collect();
            let up = GradOutput::PerSample(&ups);
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
                let job = Job::Grad(&z[i * c..(i + 1) * c], &mut g, Ahead::NONE);
                let l = run_row(Isa::detect(), job, &mut w, row, &k);
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

    /// NaNs need only be NaNs: which NaN an operation on two NaNs returns depends on operand
    /// order, which the compiler may swap.
    fn same_or_nan(x: f32, y: f32) -> bool {
        same(x, y) || x.is_nan() && y.is_nan()
    }

    /// One pass at one level, for the tests.
    enum Pass<'a, T> {
        WidenMax(&'a [T], &'a mut [f32]),
        ExpSums(&'a mut [f32], f32),
        Grad(&'a [f32], f32, f32, &'a mut [T]),
    }

    impl<T: Element> Kernel for Pass<'_, T> {
        type Output = (f64, f64);
        #[inline(always)]
        fn run<L: Lanes>(self, l: L) -> (f64, f64) {
            match self {
                Pass::WidenMax(z, w) => (f64::from(widen_max(l, z, w)), 0.0),
                Pass::ExpSums(w, m) => exp_sums(l, w, m, &Ahead::NONE),
                Pass::Grad(w, mul, sub, g) => {
                    grad_lanes(l, w, mul, sub, g);
                    (0.0, 0.0)
                }
            }
        }
    }

    /// Pass (1) at every level gives the baseline's max and scratch row, bit for bit (NaNs:
    /// NaN in both, and `z - m` with the same bits), and the max skips NaNs.
    #[test]
    fn widen_max_is_the_same_at_every_level() {
        for row in odd_rows() {
            let n = row.len();
            let z: Vec<bf16> = row
                .iter()
                .map(|&v| bf16::from_bits((v.to_bits() >> 16) as u16))
                .collect();
            let mut w1 = vec![0.0; n];
            let m1 = Isa::scalar().run(Pass::WidenMax(&row, &mut w1)).0 as f32;
            let mut b1 = vec![0.0; n];
            let mb1 = Isa::scalar().run(Pass::WidenMax(&z, &mut b1)).0 as f32;
            let want = row
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            assert!(
                m1 == want || m1.is_nan() && want.is_nan(),
                "max {m1} vs {want}"
            );
            for isa in Isa::all() {
                let mut w2 = vec![0.0; n];
                let m2 = isa.run(Pass::WidenMax(&row, &mut w2)).0 as f32;
                assert!(same(m1, m2), "{isa:?}: f32 max {m1} vs {m2}, len {n}");
                assert!(
                    w1.iter().zip(&w2).all(|(&x, &y)| same(x, y)),
                    "{isa:?}: f32 row, len {n}"
                );
                let m2 = isa.run(Pass::WidenMax(&z, &mut w2)).0 as f32;
                assert!(same(mb1, m2), "{isa:?}: bf16 max {mb1} vs {m2}, len {n}");
                for (k, (&x, &y)) in b1.iter().zip(&w2).enumerate() {
                    let ok = same(x, y) || x.is_nan() && y.is_nan() && same(x - mb1, y - m2);
                    assert!(ok, "{isa:?}: bf16 w[{k}]: {x:?} vs {y:?}");
                }
            }
        }
    }

    #[test]
    fn max_skips_nan_and_handles_tails() {
        let mut v: Vec<f32> = (0..37).map(|k| k as f32 * 0.5 - 3.0).collect();
        v[20] = f32::NAN;
        let max = |z: &[f32]| {
            let mut w = vec![0.0; z.len()];
            Isa::detect().run(Pass::WidenMax(z, &mut w)).0 as f32
        };
        assert_eq!(max(&v), 15.0);
        assert_eq!(max(&v[..3]), -2.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }

    /// Pass (3) at every level gives the baseline's bits for bf16, f16 and f32: NaN lanes,
    /// subnormal results, rounding ties and overflow to infinity included.
    #[test]
    fn grad_is_the_same_at_every_level() {
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
        fn check<T: Element>(row: &[f32], mul: f32, sub: f32) {
            let n = row.len();
            let mut want = vec![T::default(); n];
            Isa::scalar().run(Pass::Grad(row, mul, sub, &mut want));
            for (o, &e) in want.iter().zip(row) {
                assert_eq!(
                    o.to_f32().to_bits(),
                    T::from_f32(e.mul_add(mul, -sub)).to_f32().to_bits()
                );
            }
            for isa in Isa::all() {
                let mut g = vec![T::default(); n];
                isa.run(Pass::Grad(row, mul, sub, &mut g));
                for k in 0..n {
                    assert_eq!(
                        want[k].to_f32().to_bits(),
                        g[k].to_f32().to_bits(),
                        "{isa:?} {:?} g[{k}] of {:e} (mul {mul}, sub {sub})",
                        T::DTYPE,
                        row[k]
                    );
                }
            }
        }
        for row in rows {
            for (mul, sub) in consts {
                check::<bf16>(&row, mul, sub);
                check::<half::f16>(&row, mul, sub);
                check::<f32>(&row, mul, sub);
            }
        }
    }

    /// Pass (2) at every level gives the baseline's values and sums, bit for bit, over rows
    /// with tails, several blocks, and values around the `exp` cut-off, NaN and infinities.
    #[test]
    fn exp_sums_are_the_same_at_every_level() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let same64 = |x: f64, y: f64| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan();
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
                let mut a = row.clone();
                let (sa, da) = Isa::scalar().run(Pass::<f32>::ExpSums(&mut a, 0.5));
                for (k, (&x, &v)) in a.iter().zip(&row).enumerate() {
                    assert!(same_or_nan(x, exp(v - 0.5)), "e[{k}]");
                }
                for isa in Isa::all() {
                    let mut b = row.clone();
                    let (sb, db) = isa.run(Pass::<f32>::ExpSums(&mut b, 0.5));
                    assert!(
                        same64(sa, sb),
                        "{isa:?}: sum {sa} vs {sb}, len {len} round {round}"
                    );
                    assert!(
                        same64(da, db),
                        "{isa:?}: sum_d {da} vs {db}, len {len} round {round}"
                    );
                    for (k, (&x, &y)) in a.iter().zip(&b).enumerate() {
                        assert!(
                            same_or_nan(x, y),
                            "{isa:?}: e[{k}] of {}: {x} vs {y}",
                            row[k]
                        );
                    }
                }
            }
        }
    }
}
