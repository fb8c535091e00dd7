//! What the CE and BCE cases share: the buffers of one loss call (as exactly sized views at
//! chosen offsets, a sentinel before the gradient's view), reading them back, and the checks
//! of the reduced loss, of what must stay untouched, and of other block and thread orders.

use mixup_kernels::cuda::kernels::emulated::Device;
use mixup_kernels::cuda::raw::{CeBuffers, RawGradOutput};
use mixup_kernels::{
    FloatElement, GradOutput, MixPlan, Reduction, SampleMix, ScalarType, bf16, f16,
};

use crate::common::TestRng as Rng;
use crate::exchange::{Buffers, Checks, Run, addr, bytes, elems};

pub const U: f64 = f32::EPSILON as f64 / 2.0;

/// `|got - want| <= tol`, false when either is NaN.
pub fn within(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Fwd,
    Grad,
    /// The gradient at another 16-byte offset than the logits.
    GradShifted,
    InPlace,
}

/// How the upstream gradient arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    Host,
    Device,
    PerSample,
}

/// An element offset of T off the 16-byte boundary: 1 for 4-byte types, else 3.
pub fn odd<T>() -> usize {
    if size_of::<T>() == 4 { 1 } else { 3 }
}

/// Seeds counting up from `base · size_of::<T>()`, so each dtype's cases get their own.
pub fn seeds<T>(base: u64) -> impl FnMut() -> u64 {
    let mut seed = base * size_of::<T>() as u64;
    move || {
        seed += 1;
        seed
    }
}

/// Normally distributed with standard deviation `sd` (Box–Muller).
pub fn normal(rng: &mut Rng, sd: f64) -> f32 {
    let (u1, u2) = (rng.unit().max(1e-300), rng.unit());
    (sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// A random permutation of `0..n`.
pub fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// What every loss case adds to its labels (of `c` classes): sample 2's partner takes its label
/// (a == b: the target weights add); with `bad`, labels just and far out of range.
pub fn special_labels(labels: &mut [u32], partner: &[usize], c: usize, bad: bool) {
    let b = labels.len();
    if b >= 3 {
        labels[partner[2]] = labels[2];
    }
    if bad {
        labels[1 % b] = c as u32; // just out of range
        if b > 3 {
            labels[3] = u32::MAX;
        }
    }
}

/// The upstream values a call stages: none for a host scalar, `up` for a device scalar, one per
/// sample (in [-2, 2)) for a per-sample grad_output.
pub fn upstream_values(kind: Up, up: f32, b: usize, rng: &mut Rng) -> Vec<f32> {
    match kind {
        Up::Host => Vec::new(),
        Up::Device => vec![up],
        Up::PerSample => (0..b).map(|_| 4.0 * rng.unit() as f32 - 2.0).collect(),
    }
}

/// The labels the reference is given: an out-of-range label (its row is not compared) stands
/// in as 0.
pub fn in_range(labels: &[u32], c: usize) -> Vec<u32> {
    labels
        .iter()
        .map(|&l| if l as usize >= c { 0 } else { l })
        .collect()
}

/// The rows whose label and whose partner's label are in range (of `c` classes), as (row, its
/// mix, label, partner's label), and how many are not: their losses are undefined, they are
/// only counted.
pub fn defined_rows(
    plan: &MixPlan,
    labels: &[u32],
    c: usize,
) -> (Vec<(usize, SampleMix, u32, u32)>, u32) {
    let mut defined = Vec::new();
    let mut bad_rows = 0;
    for i in 0..plan.len() {
        let s = plan.sample(i);
        let (a, b) = (labels[i], labels[s.partner]);
        if a as usize >= c || b as usize >= c {
            bad_rows += 1;
        } else {
            defined.push((i, s, a, b));
        }
    }
    (defined, bad_rows)
}

/// The host grad_output that means what a call's upstream (`kind`, `up`, `ups`) does.
pub fn grad_output((kind, up, ups): (Up, f32, &[f32])) -> GradOutput<'_> {
    match kind {
        Up::PerSample => GradOutput::PerSample(ups),
        _ => GradOutput::Scalar(up),
    }
}

/// The gradient scale of row `i`: its upstream value, over `mean_count` under Mean.
pub fn scale(
    (kind, up, ups): (Up, f32, &[f32]),
    i: usize,
    reduction: Reduction,
    mean_count: f64,
) -> f64 {
    let up_i = match kind {
        Up::PerSample => f64::from(ups[i]),
        _ => f64::from(up),
    };
    up_i * if reduction == Reduction::Mean {
        1.0 / mean_count
    } else {
        1.0
    }
}

pub fn from_bits<T: FloatElement + Default>(b: u32) -> T {
    elems::<T>(&b.to_le_bytes()[..size_of::<T>()])[0]
}

/// The most negative finite value of T (`finfo(dtype).min`).
pub fn dtype_min<T: FloatElement>() -> T {
    match T::DTYPE {
        ScalarType::F16 => T::from_f32(f16::MIN.to_f32()),
        ScalarType::BF16 => T::from_f32(bf16::MIN.to_f32()),
        _ => T::from_f32(f32::MIN),
    }
}

/// A NaN in f32 and f16, a huge value in bf16: never a correct gradient.
pub fn sentinel<T: FloatElement + Default>() -> T {
    from_bits(if size_of::<T>() == 4 {
        0x7fc0_dead
    } else {
        0x7e55
    })
}

/// (relative, absolute) rounding of a value to T.
pub fn rnd<T: FloatElement>() -> (f64, f64) {
    match T::DTYPE {
        ScalarType::F16 => (2f64.powi(-11), 2f64.powi(-25)),
        ScalarType::BF16 => (2f64.powi(-8), 2f64.powi(-134)),
        _ => (0.0, 0.0),
    }
}

/// Buffer indices of one loss call.
#[derive(Debug, Clone, Copy)]
pub struct Slots {
    pub z: usize,
    pub g: Option<usize>,
    pub losses: usize,
    pub loss: usize,
    pub flags: usize,
    pub zoff: usize,
    pub goff: usize,
    /// Elements after each logits row before the next (pitched rows; 0: dense).
    pub pad: usize,
    /// Classes per row.
    pub c: usize,
    pub mode: Mode,
}

/// What the host call gets: its buffers, addresses and grad_output.
pub struct Call {
    pub bufs: Buffers,
    pub slots: Slots,
    pub ce: CeBuffers,
    pub up: RawGradOutput,
    pub dev: Device,
    /// (weight, pos_weight) addresses, 0 where absent.
    pub weights: (u64, u64),
    /// The logits' row stride when they are pitched (`Some(C + pad)`), as burn's CUDA tensors.
    pub ld: Option<usize>,
}

/// `z` (rows of `c`) with `pad` sentinels after each row but the last (`pad_rows`): padding
/// that a kernel must never read into a result.
pub fn pitched<T: FloatElement + Default>(z: &[T], c: usize, pad: usize) -> Vec<T> {
    crate::exchange::pad_rows(z, c, pad, sentinel::<T>())
}

/// Lays out one call: logits at `zoff` elements into its buffer (zeros before; `pad`
/// sentinels after each row when `pad > 0`, the call then given the row stride), the gradient
/// (another buffer at `goff`, sentinels before and in it; or the logits), labels, the staged
/// plan, per-sample losses and the loss (NaN), the grad_output, the flags, the class weights.
pub fn call<T: FloatElement + Default>(
    (plan, z, labels): (&MixPlan, &[T], &[u32]),
    mode: Mode,
    (zoff, goff, pad): (usize, usize, usize),
    (up_kind, up, ups): (Up, f32, &[f32]),
    (w, pw): (Option<&[f32]>, Option<&[f32]>),
    smem_optin: u32,
) -> Call {
    let sz = size_of::<T>();
    let n = z.len();
    let b = labels.len();
    let c = n.checked_div(b).unwrap_or(0);
    let mut bufs = Buffers::default();
    let mut zb = vec![0u8; zoff * sz];
    zb.extend(bytes(&pitched(z, c, pad)));
    let zi = bufs.add(zb, true);
    let gi = matches!(mode, Mode::Grad | Mode::GradShifted)
        .then(|| bufs.add(bytes(&vec![sentinel::<T>(); goff + n]), true));
    let li = bufs.add(bytes(labels), false);
    let pi = bufs.add(
        mixup_kernels::cuda::kernels::emulated::staged_plan(plan).0,
        false,
    );
    let si = bufs.add(bytes(&vec![f32::NAN; b]), true);
    let oi = bufs.add(bytes(&[f32::NAN]), true);
    let ui = bufs.add(bytes(ups), false);
    let fi = bufs.add(bytes(&[0u32, 0]), true);
    let wi = bufs.add(bytes(w.unwrap_or(&[])), false);
    let pwi = bufs.add(bytes(pw.unwrap_or(&[])), false);
    let logits = addr(zi, zoff * sz);
    let ce = CeBuffers {
        logits,
        labels: addr(li, 0),
        grad: match mode {
            Mode::Fwd => None,
            Mode::InPlace => Some(logits),
            _ => Some(addr(gi.unwrap(), goff * sz)),
        },
        loss: Some(addr(oi, 0)),
        losses: Some(addr(si, 0)),
    };
    let up = match up_kind {
        Up::Host => RawGradOutput::Scalar(up),
        Up::Device => RawGradOutput::Device(addr(ui, 0)),
        Up::PerSample => RawGradOutput::PerSample(addr(ui, 0)),
    };
    Call {
        bufs,
        slots: Slots {
            z: zi,
            g: gi,
            losses: si,
            loss: oi,
            flags: fi,
            zoff,
            goff,
            pad,
            c,
            mode,
        },
        ce,
        up,
        dev: crate::exchange::device(addr(pi, 0), addr(fi, 0), smem_optin),
        weights: (
            if w.is_some() { addr(wi, 0) } else { 0 },
            if pw.is_some() { addr(pwi, 0) } else { 0 },
        ),
        ld: (pad > 0).then_some(c + pad),
    }
}

/// [`call`] for a case `$c` (a CE or BCE case: their common fields have the same names) and
/// its inputs `$inp`, with the class weights `$weights` and the device's `$smem_optin`; the
/// reduced loss left out under Reduction::None (per-sample losses only, as PyTorch's
/// reduction='none').
macro_rules! call_for {
    ($c:expr, $inp:expr, $weights:expr, $smem_optin:expr) => {{
        let up = ($c.up_kind, $c.up, &$inp.ups[..]);
        let (inputs, offsets) = (
            (&$inp.plan, &$inp.z[..], &$inp.labels[..]),
            ($c.zoff, $c.goff, $c.pad),
        );
        let mut call = $crate::loss::call(inputs, $c.mode, offsets, up, $weights, $smem_optin);
        if $c.reduction == mixup_kernels::Reduction::None {
            call.ce.loss = None;
        }
        if $c.grad_only {
            // The gradient only (an autograd backward pass): no loss, no per-sample losses.
            call.ce.loss = None;
            call.ce.losses = None;
        }
        call
    }};
}
pub(crate) use call_for;

/// The settings CE and BCE cases share (same field names), for a case's description: mode,
/// reduction, grad_output, ε and the offsets.
macro_rules! describe_common {
    ($c:expr) => {
        format!(
            "{:?} {:?} up {:?} {} eps {} zoff {} goff {} pad {}{}",
            $c.mode,
            $c.reduction,
            $c.up_kind,
            $c.up,
            $c.eps,
            $c.zoff,
            $c.goff,
            $c.pad,
            if $c.grad_only { " grad-only" } else { "" }
        )
    };
}
pub(crate) use describe_common;

/// Calls `$f::<T>(args)` for each float type the loss kernels take: f32, f16 and bf16.
macro_rules! for_float_types {
    ($f:ident($($arg:expr),*)) => {
        $f::<f32>($($arg),*);
        $f::<mixup_kernels::f16>($($arg),*);
        $f::<mixup_kernels::bf16>($($arg),*);
    };
}
pub(crate) use for_float_types;

/// One run's outputs.
pub struct Out<T> {
    pub loss: f32,
    pub losses: Vec<f32>,
    /// The gradient (`[B, C]`; empty for the forward only).
    pub grad: Vec<T>,
    /// The logits buffer, whole (its prefix included).
    pub logits: Vec<T>,
    /// The gradient buffer before its view.
    pub before: Vec<T>,
    pub flags: [u32; 2],
}

pub fn read<T: FloatElement + Default>(run: &Run, s: &Slots) -> Out<T> {
    let logits: Vec<T> = elems(&run.bufs[s.z]);
    let (grad, before) = match (s.mode, s.g) {
        (Mode::InPlace, _) => (logits[s.zoff..].to_vec(), Vec::new()),
        (_, Some(g)) => {
            let all: Vec<T> = elems(&run.bufs[g]);
            (all[s.goff..].to_vec(), all[..s.goff].to_vec())
        }
        _ => (Vec::new(), Vec::new()),
    };
    let flags: Vec<u32> = elems(&run.bufs[s.flags]);
    Out {
        loss: elems::<f32>(&run.bufs[s.loss])[0],
        losses: elems(&run.bufs[s.losses]),
        grad,
        logits,
        before,
        flags: [flags[0], flags[1]],
    }
}

/// Past this value a rounding to f32 gives infinity: f32::MAX and half its ulp.
pub fn f32_limit() -> f64 {
    f64::from(f32::MAX) + 2f64.powi(103)
}

/// The reduced loss against the kernel's own per-sample losses (`div`: 1 for Sum, else the
/// mean's count) and, with every row defined and finite, against the reference's sum within the
/// rows' tolerances; `threads`: the threads of the last block that sums them.
pub fn check_reduced(
    k: &mut Checks,
    o: &Out<impl Copy>,
    threads: u64,
    div: Option<f64>,
    reference: Option<(f64, f64)>,
) {
    // Reduction::None: no loss buffer was given, and its slot keeps the NaN it was filled with.
    let Some(div) = div else {
        k.check(o.loss.is_nan(), || {
            format!(
                "Reduction::None wrote {} to the reduced loss's slot",
                o.loss
            )
        });
        return;
    };
    // The kernel adds the f32 losses in f64 and rounds the total (or the mean) once to f32,
    // as the CPU path does: the f64 adds' error is far below the final rounding's.
    let b = o.losses.len() as f64;
    let n_red = (b / threads as f64).ceil() + 5.0 + threads as f64 / 32.0 + 2.0;
    let ksum: f64 = o.losses.iter().map(|&v| f64::from(v)).sum();
    let kabs: f64 = o.losses.iter().map(|&v| f64::from(v).abs()).sum();
    let want = ksum / div;
    let tol = U * want.abs() + n_red * f64::EPSILON * kabs / div + 2f64.powi(-150);
    let got = f64::from(o.loss);
    let close = (got - want).abs() <= tol;
    let lim = f32_limit();
    if !want.is_finite() {
        k.check(!got.is_finite(), || {
            format!("reduced loss {got} of non-finite losses")
        });
    } else if want.abs() - tol > lim {
        k.check(got == want.signum() * f64::INFINITY, || {
            format!("reduced loss {got}: the losses give {want}, past f32's range")
        });
    } else if want.abs() + tol >= lim {
        // On f32's rounding boundary: either is right.
        k.check(got.is_infinite() || close, || {
            format!("reduced loss {got} of losses giving {want}")
        });
    } else {
        // Finite wherever the f64 total (Sum) or mean fits f32, even when an f32 sum of the
        // losses would overflow.
        k.check(close, || {
            format!(
                "reduced loss {got}, the kernel's per-sample losses give {want} (tol {tol:.3e})"
            )
        });
    }
    if let Some((sum, sum_tol)) = reference
        && want.is_finite()
        && got.is_finite()
    {
        let r = sum / div;
        k.check((got - r).abs() <= tol + sum_tol / div, || {
            format!("reduced loss {got}, reference {r}")
        });
    }
}

/// The longest chain of dependent operations in a row's sums, for `c` classes over `lanes`
/// lanes: a lane's share of the row, `vector_steps` operations per element of a 16-byte vector
/// of T, the butterfly, the merge of the warps, and `extra` of the kernel's own.
pub fn sum_chain<T>(c: usize, lanes: u64, vector_steps: f64, extra: f64) -> f64 {
    let ve = (16 / size_of::<T>()) as f64;
    let lg = (lanes as f64).log2().ceil();
    (c as f64 / lanes as f64).ceil() + vector_steps * ve + lg + lanes as f64 / 32.0 + extra
}

/// Reports the first `limit` failures of one kind in a case (more would only repeat them) and
/// says whether there was any.
pub struct Failures {
    shown: u32,
    limit: u32,
}

impl Failures {
    pub fn new(limit: u32) -> Self {
        Self { shown: 0, limit }
    }

    /// Reports `what` unless `ok`, while fewer than `limit` failures were reported.
    pub fn check(&mut self, k: &mut Checks, ok: bool, what: impl FnOnce() -> String) {
        if !ok && self.shown < self.limit {
            self.shown += 1;
            k.check(false, what);
        }
    }

    /// No failure so far.
    pub fn none(&self) -> bool {
        self.shown == 0
    }
}

/// The checks after the rows: out-of-range labels counted once per row (`bad_rows` of them),
/// the block counter back at 0, and the reduced loss ([`check_reduced`], `mean_count`: what
/// Mean divides by).
pub fn check_totals(
    k: &mut Checks,
    o: &Out<impl Copy>,
    (bad_rows, threads): (u32, u64),
    (reduction, mean_count): (Reduction, f64),
    reference: Option<(f64, f64)>,
) {
    k.check(o.flags[0] == bad_rows, || {
        format!(
            "{} rows flagged, {bad_rows} have an out-of-range label",
            o.flags[0]
        )
    });
    k.check(o.flags[1] == 0, || {
        format!("the block counter was left at {}", o.flags[1])
    });
    let div = match reduction {
        Reduction::Sum => Some(1.0),
        Reduction::Mean => Some(mean_count),
        Reduction::None => None,
    };
    check_reduced(k, o, threads, div, reference);
}

/// A gradient-only call wrote no loss: the per-sample losses' and the reduced loss's buffers
/// (not handed to the kernel) keep the NaN they were filled with, and the block counter is back
/// at 0. The guard that matters is the emulator's: the kernel gets address 0 for both, and a
/// write through it fails the run.
pub fn check_grad_only<T>(k: &mut Checks, o: &Out<T>) {
    k.check(o.losses.iter().all(|l| l.is_nan()), || {
        "a gradient-only call wrote per-sample losses".into()
    });
    k.check(o.loss.is_nan(), || {
        format!("a gradient-only call wrote the loss {}", o.loss)
    });
    k.check(o.flags[1] == 0, || {
        format!("the block counter was left at {}", o.flags[1])
    });
}

/// Nothing written outside the outputs: the logits (unless in place) and the padding of
/// pitched rows, the zeros before their view, the sentinels before the gradient's.
pub fn check_untouched<T: FloatElement + Default>(k: &mut Checks, o: &Out<T>, z: &[T], s: &Slots) {
    if s.mode != Mode::InPlace {
        k.check(
            bytes(&o.logits[s.zoff..]) == bytes(&pitched(z, s.c, s.pad)),
            || "the logits changed".into(),
        );
    }
    let zero = bytes(&vec![T::from_f32(0.0); s.zoff]);
    let sent = bytes(&vec![sentinel::<T>(); o.before.len()]);
    k.check(
        bytes(&o.logits[..s.zoff]) == zero && bytes(&o.before) == sent,
        || "wrote before its view".into(),
    );
}

/// The other orders' runs give the same bits as the first.
pub fn check_orders<T: FloatElement + Default>(
    k: &mut Checks,
    runs: &[Run],
    s: &Slots,
    split: bool,
) {
    let o = read::<T>(&runs[0], s);
    for (v, run) in runs.iter().enumerate().skip(1) {
        let p = read::<T>(run, s);
        let loss = p.loss.to_bits() == o.loss.to_bits();
        let losses = bytes(&p.losses) == bytes(&o.losses);
        let grad = bytes(&p.grad) == bytes(&o.grad);
        let flags = p.flags[0] == o.flags[0] && p.flags[1] == 0;
        if split {
            k.check(loss, || {
                format!(
                    "reduced loss {} in order {v}, {} in the first",
                    p.loss, o.loss
                )
            });
            k.check(losses, || format!("losses differ in order {v}"));
            k.check(grad, || format!("gradient differs in order {v}"));
            k.check(flags, || format!("flags differ in order {v}"));
        } else {
            k.check(loss && losses && grad && flags, || {
                format!("results differ in order {v}")
            });
        }
    }
}

/// The first run in the natural order, and with `orders` three more: blocks reversed with the
/// lowest ready thread first, shuffled with threads at random, in order with the highest ready
/// thread first.
pub fn orders(seed: u64, more: bool) -> Vec<(u32, u32, u64)> {
    let mut v = vec![(0, 0, seed)];
    if more {
        for (i, (b, t)) in [(1, 1), (2, 3), (0, 2)].into_iter().enumerate() {
            v.push((b, t, seed * 7919 + i as u64));
        }
    }
    v
}
