//! Plain f64 implementations of every operation, written to be obviously right rather than
//! fast. They are the oracle of the crate's tests and are public so users can check their own
//! pipelines against them.
//!
//! Inputs of any element type are widened exactly to f64; outputs are f64 and never rounded.
//! Arguments are checked exactly as the fast paths check them.
//!
//! # Examples
//!
//! ```
//! use mixup_kernels::{reference, MixPlan, SampleShape};
//! let plan = MixPlan::from_parts(&[1, 0], &[0.25, 0.5]).unwrap();
//! let mixed = reference::mix(&plan, &SampleShape::rows(1), &[0u8, 100]).unwrap();
//! assert_eq!(mixed, [75.0, 50.0]); // f64, never rounded
//! ```

use crate::config::TargetSpec;
use crate::dtype::{Element, Label};
use crate::error::Result;
use crate::normalize::{Normalize, check_mix_normalize};
use crate::plan::MixPlan;
use crate::spec::{
    BceSpec, CeSpec, GradOutput, MemoryFormat, Reduction, SampleShape, check_bce, check_ce,
    check_labels, check_mix,
};

/// The mixed batch `[B, sample]`: `out_i = λ_i x_i + (1-λ_i) x_partner(i)` for MixUp samples
/// (and for every sample under [`SampleShape::Rows`]); for CutMix samples of an image, the
/// partner's pixels inside the box and the sample's own outside (timm's `Mixup`, Zhang et al.
/// 2018 "mixup"; Yun et al. 2019 "CutMix").
///
/// # Errors
/// [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) unless `x` is `[B, shape]`,
/// [`MixError::ImageSizeMismatch`](crate::MixError::ImageSizeMismatch) for an image of another
/// size than the plan's boxes, [`MixError::SizeOverflow`](crate::MixError::SizeOverflow).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, MixPlan, SampleShape};
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.75]).unwrap();
/// let x = [4.0f32, 8.0, 0.0, 0.0]; // two rows of 2
/// assert_eq!(reference::mix(&plan, &SampleShape::rows(2), &x).unwrap(), [3.0, 6.0, 1.0, 2.0]);
/// ```
pub fn mix<T: Element>(plan: &MixPlan, shape: &SampleShape, x: &[T]) -> Result<Vec<f64>> {
    let row = check_mix(plan, shape, x.len(), "x")?;
    let mut out = vec![0.0; x.len()];
    for (i, s) in plan.samples().enumerate() {
        let own = &x[i * row..(i + 1) * row];
        let other = &x[s.partner * row..(s.partner + 1) * row];
        let lam = f64::from(s.lam);
        for k in 0..row {
            let (a, b) = (own[k].to_f32() as f64, other[k].to_f32() as f64);
            // None: the sample lerps (no box, or rows); else whether k's pixel is in the box.
            let inside = s
                .cut
                .zip(shape.pixel_of(k))
                .map(|(bx, (y, x))| bx.contains(y, x));
            out[i * row + k] = match inside {
                None => lam * a + (1.0 - lam) * b,
                Some(true) => b,
                Some(false) => a,
            };
        }
    }
    Ok(out)
}

/// The fused "decoded pixels → model input" operation in f64 (see [`Normalize`] for the
/// formula and its source): mix, optionally round to u8, `(v − mean_c) / std_c`, written in
/// `out_format`. `x` is `[B, C, H, W]` or `[B, H, W, C]` as `shape` says; the result has the
/// same element count, in `out_format`, never rounded.
///
/// The lerp is exact in f64, except under [`Normalize::with_u8_rounding`]: there the pixel is
/// the one timm's f32 lerp rounds to (a discrete choice must not depend on the oracle's
/// precision). `mean_c` and `std_c` are the f32 constants the fast paths use, widened.
///
/// # Errors
/// [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) naming `shape` (not an image
/// shape) or `normalize` (its channel count differs from the images', or u8 rounding with a
/// float input); then those of [`mix`]: [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch)
/// (`x`), [`MixError::ImageSizeMismatch`](crate::MixError::ImageSizeMismatch).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, SampleShape, MemoryFormat, MixPlan, Normalize};
/// // Two 1×2 RGB images, channels-last, mixed half and half, to channels-first.
/// let plan = MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap();
/// let img = SampleShape::channels_last(1, 2, 3);
/// let x = [10u8, 20, 30, 40, 50, 60, 30, 40, 50, 60, 70, 80];
/// let n = Normalize::new(&[0.0; 3], &[10.0; 3], 1.0).unwrap();
/// let y = reference::mix_normalize(&plan, &img, &n, &x, MemoryFormat::ChannelsFirst).unwrap();
/// assert_eq!(&y[..6], &[2.0, 5.0, 3.0, 6.0, 4.0, 7.0]); // sample 0: R R G G B B
/// ```
pub fn mix_normalize<I: Element>(
    plan: &MixPlan,
    shape: &SampleShape,
    norm: &Normalize,
    x: &[I],
    out_format: MemoryFormat,
) -> Result<Vec<f64>> {
    let d = check_mix_normalize(plan, shape, norm, I::DTYPE, x.len(), x.len())?;
    let (c, h, w) = (d.channels, d.height, d.width);
    let row = d.sample_len();
    let at = |format: MemoryFormat, ch: usize, y: usize, xx: usize| match format {
        MemoryFormat::ChannelsFirst => (ch * h + y) * w + xx,
        MemoryFormat::ChannelsLast => (y * w + xx) * c + ch,
    };
    let mut out = vec![0.0; x.len()];
    for (i, s) in plan.samples().enumerate() {
        let lam = f64::from(s.lam);
        for ch in 0..c {
            let (m, sd) = (f64::from(norm.mean()[ch]), f64::from(norm.std()[ch]));
            for y in 0..h {
                for xx in 0..w {
                    let k = at(d.format, ch, y, xx);
                    let a = x[i * row + k].to_f32();
                    let b = x[s.partner * row + k].to_f32();
                    let v = match s.cut {
                        _ if s.partner == i => f64::from(a),
                        Some(bx) if bx.contains(y, xx) => f64::from(b),
                        Some(_) => f64::from(a),
                        None if norm.u8_rounding() => {
                            // timm: `a * lam + b * (1 - lam)` in f32, then `np.rint`.
                            let l = s.lam;
                            f64::from((a * l + b * (1.0 - l)).round_ties_even())
                        }
                        None => lam * f64::from(a) + (1.0 - lam) * f64::from(b),
                    };
                    out[i * row + at(out_format, ch, y, xx)] = (v - m) / sd;
                }
            }
        }
    }
    Ok(out)
}

/// Soft targets `[B, C]`, timm's `mixup_target`:
/// `t_ic = (1-ε)(λ_i [c = y_i] + (1-λ_i) [c = y_partner(i)]) + ε/C`. When a sample and its
/// partner share a class, the two weights add up. `labels` is `[B]` class indices (`u32` or
/// `i64`).
///
/// # Errors
/// [`MixError::LabelOutOfRange`](crate::MixError::LabelOutOfRange) for a negative label or one
/// `≥ C`, [`MixError::BatchMismatch`](crate::MixError::BatchMismatch) for labels of another
/// batch, [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) (`spec`) for a spec
/// other than the one the plan was drawn for.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, MixError, MixPlan, TargetSpec};
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.75]).unwrap();
/// let spec = TargetSpec::new(3, 0.0).unwrap();
/// let t = reference::soft_targets(&plan, &spec, &[0u32, 2]).unwrap();
/// assert_eq!(t, [0.75, 0.0, 0.25, 0.25, 0.0, 0.75]);
/// let bad = reference::soft_targets(&plan, &spec, &[0i64, 3]);
/// assert!(matches!(bad, Err(MixError::LabelOutOfRange { index: 1, label: 3, .. })));
/// ```
pub fn soft_targets<L: Label>(plan: &MixPlan, spec: &TargetSpec, labels: &[L]) -> Result<Vec<f64>> {
    check_labels(plan, labels, spec)?;
    let c = spec.num_classes();
    let eps = spec.label_smoothing();
    let mut out = vec![eps / c as f64; plan.len() * c];
    for (i, s) in plan.samples().enumerate() {
        let lam = f64::from(s.lam);
        out[i * c + labels[i].to_i64() as usize] += (1.0 - eps) * lam;
        out[i * c + labels[s.partner].to_i64() as usize] += (1.0 - eps) * (1.0 - lam);
    }
    Ok(out)
}

/// The mixup cross-entropy and its gradient, in f64 (see [`mixup_ce`]).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, CeSpec, GradOutput, MixPlan, Reduction};
/// let plan = MixPlan::identity(3)?;
/// let spec = CeSpec::new(4, 0.1, Reduction::Sum)?;
/// let r = reference::mixup_ce(&plan, &spec, &[0.5f32; 12], &[0u32, 1, 2], GradOutput::Scalar(1.0))?;
/// assert_eq!((r.losses.len(), r.grad.len()), (3, 12));
/// assert!((r.loss.unwrap() - r.losses.iter().sum::<f64>()).abs() < 1e-12);
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CeReference {
    /// Per-sample losses `L_i = lse_i - Σ_c t_ic z_ic`, `[B]`.
    pub losses: Vec<f64>,
    /// The reduced loss: `Some` for [`Reduction::Mean`] and [`Reduction::Sum`], `None` for
    /// [`Reduction::None`] (the per-sample `losses` are the result).
    pub loss: Option<f64>,
    /// `∂/∂z_ic = (softmax(z_i)_c - t_ic) · scale_i`, `[B, C]`, where `scale_i` is
    /// `grad_output` (its value for sample i), divided by B for [`Reduction::Mean`].
    pub grad: Vec<f64>,
}

/// Cross-entropy of `logits` (`[B, C]`) against the plan's soft targets (timm's
/// `SoftTargetCrossEntropy` on `mixup_target`), with its gradient scaled for the reduction and
/// `grad_output`. `labels` is `[B]` class indices (`u32` or `i64`).
///
/// A class with zero target weight adds nothing to the loss, even when its logit is −inf
/// (`0 · (−inf)` is taken as 0, as PyTorch's index-target `cross_entropy` does); with
/// smoothing every class has weight and a −inf logit makes the loss +inf. NaN logits, +inf
/// logits and all-(−inf) rows give NaN (the rules every path follows; see `cpu::mixup_ce_forward`).
///
/// # Errors
/// As the fast paths: [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) for logits
/// that are not `[B, C]`, [`MixError::LabelOutOfRange`](crate::MixError::LabelOutOfRange) (a
/// negative label included), [`MixError::BatchMismatch`](crate::MixError::BatchMismatch) for
/// labels of another batch, [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) for
/// a bad `grad_output` or a spec other than the plan's, [`MixError::EmptyShape`](crate::MixError::EmptyShape)
/// for the mean of an empty batch.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, CeSpec, GradOutput, MixPlan, Reduction};
/// // Uniform logits over 2 classes, no mixing: loss ln 2, gradient (softmax - onehot) / B.
/// let plan = MixPlan::identity(2)?;
/// let spec = CeSpec::new(2, 0.0, Reduction::Mean)?;
/// let r = reference::mixup_ce(&plan, &spec, &[0.0f32; 4], &[0u32, 1], GradOutput::Scalar(1.0))?;
/// assert!((r.loss.unwrap() - std::f64::consts::LN_2).abs() < 1e-12);
/// assert_eq!(r.grad, [-0.25, 0.25, 0.25, -0.25]);
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
pub fn mixup_ce<T: Element, L: Label>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[L],
    grad_output: GradOutput<'_>,
) -> Result<CeReference> {
    check_ce(plan, spec, logits.len(), &grad_output)?;
    let targets = soft_targets(plan, spec.targets(), labels)?;
    let (b, c) = (plan.len(), spec.num_classes());
    let mut losses = vec![0.0; b];
    let mut grad = vec![0.0; b * c];
    for i in 0..b {
        let z: Vec<f64> = logits[i * c..(i + 1) * c]
            .iter()
            .map(|v| v.to_f32() as f64)
            .collect();
        let t = &targets[i * c..(i + 1) * c];
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let ln_s = z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        // `lse - Σ t z = ln s - Σ t (z - m)` since the targets sum to 1: written with `z - m` so
        // that a row of huge logits (all classes at f32::MIN, say) does not lose `ln s` to the
        // cancellation of `m` against `Σ t z`. A class with zero target weight adds nothing,
        // even when its logit is −inf (masked): `0 · (−inf)` would be NaN. PyTorch's
        // index-target `cross_entropy` behaves the same.
        let dot: f64 = z
            .iter()
            .zip(t)
            .filter(|&(_, &tc)| tc != 0.0)
            .map(|(zc, tc)| (zc - m) * tc)
            .sum();
        losses[i] = ln_s - dot;
        let up = match grad_output {
            GradOutput::Scalar(g) => f64::from(g),
            GradOutput::PerSample(g) => f64::from(g[i]),
        };
        let scale = match spec.reduction() {
            Reduction::Mean => up / b as f64,
            Reduction::Sum | Reduction::None => up,
        };
        for k in 0..c {
            grad[i * c + k] = ((z[k] - m - ln_s).exp() - t[k]) * scale;
        }
    }
    let sum: f64 = losses.iter().sum();
    let loss = match spec.reduction() {
        Reduction::Sum => Some(sum),
        Reduction::Mean => Some(sum / b.max(1) as f64),
        Reduction::None => None,
    };
    Ok(CeReference { losses, loss, grad })
}

/// The mixup binary cross-entropy, its per-sample and per-element losses and its gradient, in
/// f64 (see [`mixup_bce`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BceReference {
    /// Per-element losses `ℓ_ic` (with the class weight), `[B, C]`: timm's `reduction='none'`.
    pub elements: Vec<f64>,
    /// Per-sample losses `L_i = Σ_c ℓ_ic`, `[B]`.
    pub losses: Vec<f64>,
    /// The reduced loss: `Some` for [`Reduction::Mean`] and [`Reduction::Sum`], `None` for
    /// [`Reduction::None`].
    pub loss: Option<f64>,
    /// `∂/∂z_ic`, `[B, C]`, scaled for the reduction and `grad_output`.
    pub grad: Vec<f64>,
}

/// One element of the binary cross-entropy with logits, `(ℓ, ∂ℓ/∂z)` before the class weight:
/// `ℓ = (1 − t)·z + c·softplus(−z)` with `c = 1 + (w − 1)·t`, `∂ℓ/∂z = c·σ(z) − w·t` (PyTorch's
/// `binary_cross_entropy_with_logits` with `pos_weight = w`).
///
/// Written in the form that never meets `inf − inf`: for `z ≥ 0`, `(1 − t)·z + c·ln(1 + e^−z)`;
/// for `z < 0`, `softplus(−z) = softplus(z) − z` gives `c·ln(1 + e^z) − w·t·z`. A product with a
/// zero weight is 0, so a −inf logit with `t = 0` adds nothing (and +inf with `t = 1`). The
/// gradient with `s = σ(−|z|)`: `(1 − t) − c·s` for `z ≥ 0` (`σ(z) = 1 − s` written out, so no
/// `σ` near 1 cancels against `w·t`), `c·s − w·t` for `z < 0`.
pub(crate) fn bce_element(z: f64, t: f64, w: f64) -> (f64, f64) {
    let c = 1.0 + (w - 1.0) * t;
    let e = (-z.abs()).exp();
    let sp = e.ln_1p();
    let times = |a: f64, b: f64| if a == 0.0 && !b.is_nan() { 0.0 } else { a * b };
    let s = e / (1.0 + e);
    if z >= 0.0 {
        (times(1.0 - t, z) + c * sp, (1.0 - t) - c * s)
    } else {
        // NaN lands here: every result is NaN.
        (c * sp - times(w * t, z), c * s - w * t)
    }
}

/// Binary cross-entropy of `logits` (`[B, C]`) against the plan's soft targets, timm's
/// `BinaryCrossEntropy` as [`BceSpec`] describes it, with its gradient scaled for the reduction
/// and the upstream gradient.
///
/// A −inf logit of a class whose target is 0 adds nothing (gradient 0); with smoothing every
/// target is positive and a −inf logit gives +inf. NaN logits give NaN.
///
/// # Errors
/// As the CPU op: [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) for logits that
/// are not `[B, C]`, [`MixError::LabelOutOfRange`](crate::MixError::LabelOutOfRange) (a
/// negative label included), [`MixError::BatchMismatch`](crate::MixError::BatchMismatch),
/// [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) for a bad `grad_output` or a
/// spec other than the plan's, [`MixError::EmptyShape`](crate::MixError::EmptyShape) for the
/// mean of an empty batch.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, BceSpec, GradOutput, MixPlan, Reduction};
/// // z = 0 everywhere: every element is ln 2, its gradient σ(0) − t = 0.5 − t.
/// let plan = MixPlan::identity(1)?;
/// let spec = BceSpec::new(2, 0.0, Reduction::Sum)?;
/// let r = reference::mixup_bce(&plan, &spec, &[0.0f32; 2], &[1u32], GradOutput::Scalar(1.0))?;
/// assert!((r.loss.unwrap() - 2.0 * std::f64::consts::LN_2).abs() < 1e-12);
/// assert_eq!(r.grad, [0.5, -0.5]);
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
pub fn mixup_bce<T: Element, L: Label>(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: &[T],
    labels: &[L],
    grad_output: GradOutput<'_>,
) -> Result<BceReference> {
    check_bce(plan, spec, logits.len(), &grad_output)?;
    let mut t = soft_targets(plan, spec.targets(), labels)?;
    let (b, c) = (plan.len(), spec.num_classes());
    // Thresholded targets are decided on timm's f32 rounding of the soft target (see
    // `BceSpec::thresholded`): a discrete decision must not depend on the oracle's precision.
    for (i, s) in plan.samples().enumerate() {
        let (ya, yb) = (
            labels[i].to_i64() as usize,
            labels[s.partner].to_i64() as usize,
        );
        if let Some((other, ta, tb)) = spec.thresholded(s.lam, ya == yb) {
            let row = &mut t[i * c..(i + 1) * c];
            row.fill(f64::from(other));
            row[yb] = f64::from(tb);
            row[ya] = f64::from(ta);
        }
    }
    let factor = match spec.reduction() {
        Reduction::Mean => 1.0 / spec.mean_count(b),
        Reduction::Sum | Reduction::None => 1.0,
    };
    let mut elements = vec![0.0; b * c];
    let mut losses = vec![0.0; b];
    let mut grad = vec![0.0; b * c];
    for i in 0..b {
        let up = match grad_output {
            GradOutput::Scalar(g) => f64::from(g),
            GradOutput::PerSample(g) => f64::from(g[i]),
        };
        for k in 0..c {
            let j = i * c + k;
            let w = spec.pos_weight().map_or(1.0, |p| f64::from(p[k]));
            let v = spec.weight().map_or(1.0, |p| f64::from(p[k]));
            let (l, g) = bce_element(f64::from(logits[j].to_f32()), t[j], w);
            elements[j] = if v == 0.0 && !l.is_nan() { 0.0 } else { v * l };
            grad[j] = v * g * factor * up;
        }
        losses[i] = elements[i * c..(i + 1) * c].iter().sum();
    }
    let loss = spec
        .reduction()
        .reported(spec.reduce(losses.iter().sum(), b));
    Ok(BceReference {
        elements,
        losses,
        loss,
        grad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{cut, image};

    #[test]
    fn mix_lerps_and_pastes() {
        let b = cut(0..1, 1..2);
        let plan =
            MixPlan::with_boxes(&[1, 0], &[0.75, 0.5], &[None, Some(b)], image(2, 2)).unwrap();
        let x: Vec<f32> = vec![0., 4., 8., 12., 100., 104., 108., 112.];
        let out = mix(&plan, &SampleShape::channels_first(1, 2, 2), &x).unwrap();
        assert_eq!(&out[..4], &[25., 29., 33., 37.]);
        assert_eq!(&out[4..], &[100., 4., 108., 112.]);
        let rows = mix(&plan, &SampleShape::rows(4), &x).unwrap();
        assert_eq!(&rows[4..], &[50., 54., 58., 62.]);
    }

    #[test]
    fn same_class_partners_add() {
        let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.3]).unwrap();
        let t = soft_targets(&plan, &TargetSpec::new(4, 0.0).unwrap(), &[2u32, 2]).unwrap();
        assert_eq!(&t[..4], &[0., 0., 1., 0.]);
    }

    #[test]
    fn ce_matches_hand_computation() {
        let plan = MixPlan::from_parts(&[0], &[1.0]).unwrap();
        let spec = CeSpec::new(2, 0.0, Reduction::Mean).unwrap();
        let r = mixup_ce(&plan, &spec, &[0.0f32, 0.0], &[1u32], GradOutput::default()).unwrap();
        assert!((r.loss.unwrap() - std::f64::consts::LN_2).abs() < 1e-15);
        assert_eq!(r.grad, vec![0.5, -0.5]);
    }
}
