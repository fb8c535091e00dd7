//! The fused mixup binary cross-entropy (timm's `BinaryCrossEntropy` on the mixed soft target):
//! loss and gradient per element from `(logits, labels, plan)`, no dense target in memory.
//!
//! With `t` the element's target (`ε/C` except at the sample's two labels, thresholded if asked),
//! `w` its class's `pos_weight`, `v` its `weight`, `c = 1 + (w − 1)·t` and `e = e^−|z|`:
//! - `z ≥ 0`: `ℓ = v·((1 − t)·z + c·ln(1 + e))`, `∂ℓ/∂z = v·((1 − t) − c·s)`;
//! - `z < 0`: `ℓ = v·(c·ln(1 + e) − w·t·z)`, `∂ℓ/∂z = v·(c·s − w·t)`;
//!
//! with `s = e/(1 + e) = σ(−|z|)`; the gradient times the gradient scale, formed in f32 and
//! rounded once. The gradient is `v·(c·σ(z) − w·t)` with `σ(z) = 1 − s` for `z ≥ 0` written out,
//! so no `σ` near 1 is rounded before the subtraction (`c·σ − w·t` lost every bit from `z ≈ 17`
//! at `t = 1`: thresholded targets, or `ε = 0` with `λ = 1`).
//!
//! Both forms are PyTorch's `binary_cross_entropy_with_logits` rearranged so that no `inf − inf`
//! appears, and a product with a zero weight is left out: a −inf logit of a class whose target
//! is 0 adds nothing. A row is one pass: read `z`, write `g`, per-sample sums in f64.

use super::lanes::{Isa, Kernel, Lanes, narrow, widen};
use super::math::{BLOCK, SUM_LANES, exp, flush};
use super::mixup_ce::{check_all, losses_buffer, scale_of};
use super::pool::{self, Slab};
use super::soft_targets::{Targets, rows_per_task};
use crate::dtype::{Element, FloatElement};
use crate::error::Result;
use crate::plan::MixPlan;
use crate::spec::{BceSpec, CeSpec, GradOutput};

/// `ln 2` split for an exact `k·ln2` with `k ∈ {0, 1}`: the high part has 16 significant bits.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `(ln(1 + e), 1/(1 + e))` for `e ∈ [0, 1]` (and NaN for NaN); the logarithm within 3 ulp
/// (measured: 2.4), the reciprocal correctly rounded (`σ(−|z|)` reuses it).
///
/// `u = 1 + e` rounded, `u = 2^k·v` with `v ∈ [√½, √2)` (`k ∈ {0, 1}`), `ln v = 2·atanh(s)` with
/// `s = (v − 1)/(v + 1)`, `|s| ≤ 0.1716`, by its odd series to `s^9` (truncation `< 2·s^11/11`,
/// under 1e-9 of the result), then `ln(1 + e) = k·ln2 + ln v + (e − (u − 1))·(1/u)`: the last term
/// puts back what rounding `1 + e` lost (`u − 1` is exact), so tiny `e` keep their bits.
/// Written branch-free for the vectorizer. (fdlibm's `log1pf` uses the same reduction.)
#[inline(always)]
pub(crate) fn ln_1p_unit(e: f32) -> (f32, f32) {
    let u = 1.0 + e;
    let r = 1.0 / u;
    let big = u > std::f32::consts::SQRT_2;
    let v = if big { 0.5 * u } else { u };
    let k: f32 = if big { 1.0 } else { 0.0 };
    let s = (v - 1.0) / (v + 1.0);
    let s2 = s * s;
    let p = s2.mul_add(1.0 / 9.0, 1.0 / 7.0);
    let p = s2.mul_add(p, 1.0 / 5.0);
    let p = s2.mul_add(p, 1.0 / 3.0);
    let two_s = s + s;
    let ln_v = (two_s * s2).mul_add(p, two_s);
    let corr = (e - (u - 1.0)) * r;
    (k.mul_add(LN2_HI, k.mul_add(LN2_LO, ln_v + corr)), r)
}

/// `w · x`, but 0 when the weight is 0 and `x` is infinite (a masked logit, or its loss, with
/// no weight adds nothing); NaN stays NaN (a NaN logit gives a NaN loss even where its class
/// weight is 0, as PyTorch's `0 · NaN`). A select, not a branch.
#[inline(always)]
fn weighted(w: f32, x: f32) -> f32 {
    let p = w * x;
    if w == 0.0 && !x.is_nan() { 0.0 } else { p }
}

/// One element: `(ℓ, ∂ℓ/∂z · scale)` before the class weight `v`, which the caller applies.
/// Branch-free (both forms computed, one selected) so the loop vectorizes; a zero weight
/// selects 0 instead of a product with a possibly infinite logit.
#[inline(always)]
fn element(z: f32, t: f32, w: f32, scale: f32) -> (f32, f32) {
    let c = (w - 1.0).mul_add(t, 1.0);
    let e = exp(-z.abs());
    let (sp, r) = ln_1p_unit(e);
    let pos = z >= 0.0;
    // z ≥ 0: (1 − t)·z + c·sp; z < 0 (and NaN): c·sp − w·t·z.
    let lin = if pos {
        weighted(1.0 - t, z)
    } else {
        -weighted(w * t, z)
    };
    let l = c.mul_add(sp, lin);
    let s = e * r;
    let (k, d) = if pos { (-c, 1.0 - t) } else { (c, -(w * t)) };
    (l, k.mul_add(s, d) * scale)
}

/// Per-call constants.
struct Consts<'a> {
    spec: &'a BceSpec,
    targets: Targets,
    weight: Option<&'a [f32]>,
    pos_weight: Option<&'a [f32]>,
}

/// `N` values of an optional per-class slice from `j`, or ones.
#[inline(always)]
fn lanes_of<const N: usize>(v: Option<&[f32]>, j: usize) -> [f32; N] {
    match v {
        Some(v) => v[j..j + N].try_into().expect("N values"),
        None => [1.0; N],
    }
}

/// Elements of one row that share the target `t` (`z`, `g`, and the optional positive and
/// class weights `w`, `v` sliced to them; `g` empty unless `G`): returns the sum of their
/// losses, writes their gradients if `G`. Works on fixed arrays of 16 so that LLVM vectorizes
/// it (indexing the slices element by element kept it scalar; see `BENCHMARKS.md`).
#[inline(always)]
fn span_with<T: Element, const G: bool>(
    z: &[T],
    g: &mut [T],
    t: f32,
    (w, v): (Option<&[f32]>, Option<&[f32]>),
    scale: f32,
) -> f64 {
    let n = z.len();
    let mut sum = 0.0f64;
    let mut j = 0;
    while j < n {
        let stop = (j + BLOCK).min(n);
        let mut acc = [0.0f32; SUM_LANES];
        while j + SUM_LANES <= stop {
            let zc: &[T; SUM_LANES] = z[j..j + SUM_LANES].try_into().expect("16 values");
            let (wc, vc) = (lanes_of::<SUM_LANES>(w, j), lanes_of::<SUM_LANES>(v, j));
            let mut gc = [0.0f32; SUM_LANES];
            for k in 0..SUM_LANES {
                let (l, d) = element(widen(zc[k]), t, wc[k], scale);
                acc[k] += weighted(vc[k], l);
                gc[k] = vc[k] * d;
            }
            if G {
                for (o, &x) in g[j..j + SUM_LANES].iter_mut().zip(&gc) {
                    *o = narrow(x);
                }
            }
            j += SUM_LANES;
        }
        for a in acc.iter_mut().take(stop - j) {
            let (wj, vj) = (lanes_of::<1>(w, j)[0], lanes_of::<1>(v, j)[0]);
            let (l, d) = element(widen(z[j]), t, wj, scale);
            *a += weighted(vj, l);
            if G {
                g[j] = narrow(vj * d);
            }
            j += 1;
        }
        sum += flush(&mut acc);
    }
    sum
}

/// Elements `range` of one row, all with target `t`: [`span_with`] with or without the
/// gradient.
#[inline(always)]
fn span<T: Element>(
    z: &[T],
    g: &mut Option<&mut [T]>,
    range: std::ops::Range<usize>,
    t: f32,
    k: &Consts<'_>,
    scale: f32,
) -> f64 {
    let r = range.clone();
    let weights = (
        k.pos_weight.map(|p| &p[r.clone()]),
        k.weight.map(|p| &p[r.clone()]),
    );
    match g.as_deref_mut() {
        Some(g) => span_with::<T, true>(&z[r.clone()], &mut g[r], t, weights, scale),
        None => span_with::<T, false>(&z[r], &mut [], t, weights, scale),
    }
}

/// One row: the per-sample loss `Σ_c ℓ_c`; the gradient into `g` if given. Classes `a`, `b` get
/// their own targets, every other class `ε/C`.
#[inline(always)]
fn row<T: Element>(
    z: &[T],
    mut g: Option<&mut [T]>,
    (a, b, lam): (usize, usize, f32),
    scale: f32,
    k: &Consts<'_>,
) -> f32 {
    let c = z.len();
    let (off, ta, tb) = match k.spec.thresholded(lam, a == b) {
        Some(t) => t,
        None => {
            let (ta, tb) = k.targets.pair(lam, a == b);
            (k.targets.off, ta, tb)
        }
    };
    let (lo, hi) = (a.min(b), a.max(b));
    let mut sum = span(z, &mut g, 0..lo, off, k, scale);
    sum += span(z, &mut g, (lo + 1).min(hi)..hi, off, k, scale);
    sum += span(z, &mut g, (hi + 1).min(c)..c, off, k, scale);
    sum += span(z, &mut g, a..a + 1, ta, k, scale);
    if b != a {
        sum += span(z, &mut g, b..b + 1, tb, k, scale);
    }
    sum as f32
}

/// A row as a [`Kernel`]: [`row`]'s loops are plain Rust over arrays of 16, which LLVM
/// vectorizes for the level [`Isa::run`] compiles them at (`mul_add` is then one instruction
/// instead of a call to the software `fmaf`; same bits at every level).
struct RowJob<'a, 'k, T> {
    z: &'a [T],
    g: Option<&'a mut [T]>,
    labels: (usize, usize, f32),
    scale: f32,
    k: &'a Consts<'k>,
}

impl<T: Element> Kernel for RowJob<'_, '_, T> {
    type Output = f32;
    #[inline(always)]
    fn run<L: Lanes>(self, _: L) -> f32 {
        row(self.z, self.g, self.labels, self.scale, self.k)
    }
}

/// The shared body of the forward-only and the forward + backward calls.
fn run<T: FloatElement>(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: &[T],
    labels: &[u32],
    upstream: GradOutput<'_>,
    losses: Option<&mut [f32]>,
    grad: Option<&mut [T]>,
) -> Result<f32> {
    // The CE's checks on the same targets and reduction: the BCE takes the same shapes.
    let (batch, c) = check_all(
        plan,
        &CeSpec::from_targets(*spec.targets(), spec.reduction()),
        logits.len(),
        labels,
        &upstream,
        losses.as_deref(),
        grad.as_deref().map(<[T]>::len),
    )?;
    let mut temp = Vec::new();
    let losses = losses_buffer(losses, batch, &mut temp);
    let k = Consts {
        spec,
        targets: Targets::new(spec.targets()),
        weight: spec.weight(),
        pos_weight: spec.pos_weight(),
    };
    let factor = spec.grad_factor(batch);
    let isa = Isa::detect();
    let entries = plan.entries();
    let scale = |i: usize| scale_of(&upstream, factor, i);
    let labels_of = |i: usize| {
        let e = &entries[i];
        (
            labels[i] as usize,
            labels[e.partner as usize] as usize,
            e.lam,
        )
    };
    let z = Slab::of(logits, c);
    let per = rows_per_task(c);
    let small = logits.len() <= 1 << 22;
    match grad {
        Some(grad) => {
            let g = Slab::of(grad, c);
            pool::for_each_row((z, (g, &mut *losses)), per, small, |i, (z, (g, l))| {
                l[0] = isa.run(RowJob {
                    z: z.data,
                    g: Some(g.data),
                    labels: labels_of(i),
                    scale: scale(i),
                    k: &k,
                });
            });
        }
        None => pool::for_each_row((z, &mut *losses), per, small, |i, (z, l)| {
            l[0] = isa.run(RowJob {
                z: z.data,
                g: None,
                labels: labels_of(i),
                scale: 0.0,
                k: &k,
            });
        }),
    }
    let sum: f64 = losses.iter().map(|&l| f64::from(l)).sum();
    Ok(spec.reduce(sum, batch) as f32)
}

pub(crate) fn mixup_bce_forward<T: FloatElement>(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: &[T],
    labels: &[u32],
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    run(
        plan,
        spec,
        logits,
        labels,
        GradOutput::default(),
        losses,
        None,
    )
}

pub(crate) fn mixup_bce<T: FloatElement>(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: &[T],
    labels: &[u32],
    upstream: GradOutput<'_>,
    losses: Option<&mut [f32]>,
    grad: &mut [T],
) -> Result<f32> {
    run(plan, spec, logits, labels, upstream, losses, Some(grad))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ln_1p_unit` against f64's `ln_1p` over `[0, 1]`: every f32 in `[0, 2^-20]` would take
    /// long, so a dense grid near 0 (where the correction term matters), near `√2 − 1` (the
    /// reduction's switch) and evenly over the rest; under 3 ulp.
    #[test]
    fn ln_1p_unit_is_within_3_ulp() {
        let mut worst = 0.0f64;
        let mut check = |e: f32| {
            let got = ln_1p_unit(e).0;
            let want = f64::from(e).ln_1p();
            let ulp =
                f64::from(f32::from_bits((want as f32).to_bits() + 1)) - f64::from(want as f32);
            let err = (f64::from(got) - want).abs() / ulp.max(f64::from(f32::from_bits(1)));
            // `f64::max` would drop a NaN error: a NaN result must fail.
            assert!(!err.is_nan(), "ln_1p_unit({e:e}) = {got} (NaN error)");
            worst = worst.max(err);
        };
        for i in 0..=1_000_000u32 {
            check(i as f32 / 1e6);
            check(f32::from_bits(i * 1000)); // 0, subnormals, small normals up to ~5e-3
            check((std::f32::consts::SQRT_2 - 1.0) + (i as f32 - 5e5) * 1e-9);
        }
        check(1.0);
        assert!(worst < 3.0, "worst error {worst} ulp");
        assert!(ln_1p_unit(f32::NAN).0.is_nan());
        assert_eq!(ln_1p_unit(0.0), (0.0, 1.0));
    }

    /// The gradient where it is small: `c·σ(z) − w·t` for large `z ≥ 0` (at `t = 1` it is
    /// `−c·σ(−z)`; and for large `−z` with `t = 0`, `c·σ(z)`) to a few roundings of itself, here
    /// and in the f64 reference. The form `c·σ − w·t` with `σ` rounded near 1 lost every bit
    /// from `z ≈ 17` (gradient 0), and the reference's from `z ≈ 37`.
    #[test]
    fn small_gradients_keep_their_bits() {
        for w in [1.0f32, 0.3, 2.5] {
            for t in [1.0f32, 0.0] {
                for m in 1..=85 {
                    let z = if t == 1.0 { m as f32 } else { -(m as f32) };
                    let (wd, td, zd) = (f64::from(w), f64::from(t), f64::from(z));
                    let c = 1.0 + (wd - 1.0) * td;
                    // c·σ(z) − w·t, exactly: −c·σ(−z) at t = 1, c·σ(z) at t = 0.
                    let s = (-zd.abs()).exp() / (1.0 + (-zd.abs()).exp());
                    let want = if t == 1.0 { -c * s } else { c * s };
                    let got = f64::from(element(z, t, w, 1.0).1);
                    assert!(
                        (got - want).abs() <= 8.0 * f64::from(f32::EPSILON) * want.abs(),
                        "CPU: z {z}, t {t}, w {w}: {got} vs {want}"
                    );
                    let r = crate::reference::bce_element(zd, td, wd).1;
                    assert!(
                        (r - want).abs() <= 8.0 * f64::EPSILON * want.abs(),
                        "reference: z {z}, t {t}, w {w}: {r} vs {want}"
                    );
                }
            }
        }
    }
}
