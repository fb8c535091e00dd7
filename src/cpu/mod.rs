//! The CPU path: every operation, multi-threaded, f32/f16/bf16 storage with f32 arithmetic.
//!
//! Each function validates all its arguments before writing anything: on error the caller's
//! buffers are untouched. Work is spread over rayon's global pool (samples, pairs, or rows;
//! long rows of small batches are split so every core works); the loss's jobs of up to 4 Mi
//! logits also run on the calling thread, which works beside the pool instead of waiting.
//! Results do not depend on the number of threads: every output element and every per-sample
//! loss is computed by one thread in a fixed order, and the reduced loss sums per-sample losses
//! in index order.
//!
//! Labels are `[B]` class indices, `u32` or `i64` ([`Label`]); the losses return
//! `Some(reduced)` for [`Reduction::Mean`](crate::Reduction::Mean) and
//! [`Reduction::Sum`](crate::Reduction::Sum), and `None` for
//! [`Reduction::None`](crate::Reduction::None), which writes the per-sample losses to the
//! `losses` buffer it requires.
//!
//! # Examples
//!
//! One training step's worth of work on host buffers:
//!
//! ```
//! use mixup_kernels::{cpu, GradOutput, ImageSize, MixConfig, Reduction, SampleShape, Sampler};
//! let (batch, classes) = (4, 10);
//! let config = MixConfig::timm(classes);
//! let spec = config.ce_spec(Reduction::Mean)?; // the config's classes and label smoothing
//! let sampler = Sampler::new(config, 0)?;
//! let plan = sampler.plan_images(0, batch, ImageSize { height: 8, width: 8 })?;
//! let mut images = vec![0.5f32; batch * 3 * 8 * 8];
//! cpu::mix_in_place(&plan, &SampleShape::channels_first(3, 8, 8), &mut images)?;
//! // ... the model turns `images` into logits ...
//! let mut logits = vec![0.0f32; batch * classes];
//! let labels = [3u32, 1, 4, 1];
//! let loss = cpu::mixup_ce_in_place(&plan, &spec, &mut logits, &labels, GradOutput::Scalar(1.0), None)?;
//! assert!((loss.unwrap() - (classes as f32).ln()).abs() < 1e-5); // uniform logits: ln C
//! // `logits` now holds the gradient of the mean loss.
//! # Ok::<(), mixup_kernels::MixError>(())
//! ```

mod lanes;
mod math;
mod mix;
mod mix_normalize;
mod mixup_bce;
mod mixup_ce;
mod pool;
mod soft_targets;

pub use mix_normalize::mix_normalize;

use crate::config::TargetSpec;
use crate::dtype::{Element, FloatElement, Label, as_u32s};
use crate::error::Result;
use crate::plan::MixPlan;
use crate::spec::{BceSpec, CeSpec, GradOutput, SampleShape, check_labels, check_losses_given};

/// Mixes `x` into `out` (both `[B, sample]` of `shape`): MixUp lerp or CutMix paste per the plan.
///
/// Per element, in f32 with one rounding to `T` at the end (round half to even, also for `u8`):
/// `out_i = lam_i * x_i + (1 - lam_i) * x_partner(i)` (no fused multiply-add); for an image a
/// CutMix sample takes `x_partner(i)` inside its box and `x_i` outside. A sample that is its
/// own partner is copied unchanged. Any plan; `out` must not be `x`.
///
/// # Errors
/// [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) unless `x` is `[B, shape]`,
/// [`MixError::LengthMismatch`](crate::MixError::LengthMismatch) unless `out` is as long as
/// `x`; [`MixError::ImageSizeMismatch`](crate::MixError::ImageSizeMismatch) for images of another
/// size than the plan's boxes; [`MixError::SizeOverflow`](crate::MixError::SizeOverflow).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{bf16, cpu, MixError, MixPlan, SampleShape};
/// let plan = MixPlan::from_parts(&[1, 2, 0], &[0.5, 0.75, 1.0]).unwrap(); // a 3-cycle is fine
/// let x = [2.0f32, 4.0, 8.0].map(bf16::from_f32);
/// let mut out = [bf16::ZERO; 3];
/// cpu::mix(&plan, &SampleShape::rows(1), &x, &mut out).unwrap();
/// assert_eq!(out.map(bf16::to_f32), [3.0, 5.0, 8.0]);
/// let err = cpu::mix(&plan, &SampleShape::rows(2), &x, &mut out).unwrap_err();
/// assert!(matches!(err, MixError::ShapeMismatch { what: "x", .. }));
/// ```
pub fn mix<T: Element>(plan: &MixPlan, shape: &SampleShape, x: &[T], out: &mut [T]) -> Result<()> {
    mix::mix(plan, shape, x, out)
}

/// Mixes `x` in place; the plan must be an involution (each pair is read before it is written).
///
/// Gives the same bits as [`mix`].
///
/// # Errors
/// Those of [`mix`], and [`MixError::NotInvolution`](crate::MixError::NotInvolution) (with `x`
/// untouched) for other plans, such as random permutations or torchvision's roll.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{cpu, MixError, MixPlan, SampleShape};
/// let pairs = MixPlan::from_parts(&[1, 0], &[0.75, 0.75]).unwrap();
/// let mut x = [0u8, 200];
/// cpu::mix_in_place(&pairs, &SampleShape::rows(1), &mut x).unwrap();
/// assert_eq!(x, [50, 150]);
/// let cycle = MixPlan::from_parts(&[1, 2, 0], &[0.5; 3]).unwrap();
/// let mut y = [1.0f32, 2.0, 3.0];
/// let err = cpu::mix_in_place(&cycle, &SampleShape::rows(1), &mut y).unwrap_err();
/// assert!(matches!(err, MixError::NotInvolution { .. }));
/// assert_eq!(y, [1.0, 2.0, 3.0]); // untouched
/// ```
pub fn mix_in_place<T: Element>(plan: &MixPlan, shape: &SampleShape, x: &mut [T]) -> Result<()> {
    mix::mix_in_place(plan, shape, x)
}

/// Writes the soft targets `[B, C]` of the plan and the labels (timm's `mixup_target`).
///
/// `t_ic = (1-ε)·w_ic + ε/C` in f32, `w` = λ_i at `y_i`, `1-λ_i` at `y_partner(i)` (summed when
/// the classes are equal), 0 elsewhere; rounded once to `T`.
///
/// # Errors
/// [`MixError::LabelOutOfRange`](crate::MixError::LabelOutOfRange) (negative labels included),
/// [`MixError::BatchMismatch`](crate::MixError::BatchMismatch),
/// [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) unless `out` is `[B, C]`,
/// [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) (`spec`) for a spec other
/// than the one the plan was drawn for. Nothing is written on error.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{cpu, MixPlan, TargetSpec};
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.75]).unwrap();
/// let spec = TargetSpec::new(4, 0.2).unwrap();
/// let mut t = [0.0f32; 8];
/// cpu::soft_targets(&plan, &spec, &[0u32, 3], &mut t).unwrap();
/// // "75% class 0, 25% class 3", smoothed: 0.8·w + 0.05.
/// let want = [0.65, 0.05, 0.05, 0.25, 0.25, 0.05, 0.05, 0.65];
/// assert!(t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
/// ```
pub fn soft_targets<T: FloatElement, L: Label>(
    plan: &MixPlan,
    spec: &TargetSpec,
    labels: &[L],
    out: &mut [T],
) -> Result<()> {
    check_labels(plan, labels, spec)?;
    soft_targets::soft_targets(plan, &as_u32s(labels), spec, out)
}

/// Loss only (evaluation): returns the reduced loss, writes per-sample losses if asked.
///
/// The loss is timm's `SoftTargetCrossEntropy` on timm's `mixup_target(y, C, λ, ε)`
/// (`timm/loss/cross_entropy.py`, `timm/data/mixup.py`; Zhang et al. 2018, "mixup"), which equals
/// fastai's stacked `λ·CE(z, y_a) + (1−λ)·CE(z, y_b)` with label smoothing:
/// `L_i = lse(z_i) − Σ_c t_ic z_ic`, `t_ic = (1−ε)(λ_i [c = y_i] + (1−λ_i) [c = y_partner(i)]) + ε/C`.
/// `logits` is `[B, C]` (f32, f16 or bf16), `labels` `[B]` class indices (`u32` or `i64`),
/// `losses`, if given, `[B]` (f32). Returns `Some(mean)` for
/// [`Reduction::Mean`](crate::Reduction::Mean), `Some(sum)` for `Sum`, and `None` for
/// [`Reduction::None`](crate::Reduction::None), whose result is `losses` (then required).
///
/// # Errors
/// [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) when `logits` is not `[B, C]`,
/// [`MixError::LengthMismatch`](crate::MixError::LengthMismatch) when `losses` is not `[B]`;
/// [`MixError::BatchMismatch`](crate::MixError::BatchMismatch) when the labels do not match the plan; [`MixError::LabelOutOfRange`](crate::MixError::LabelOutOfRange)
/// (a negative label included); [`MixError::EmptyShape`](crate::MixError::EmptyShape) for the
/// mean of an empty batch; [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) for a
/// spec other than the plan's (`spec`) or no `losses` under `Reduction::None` (`losses`).
/// Nothing is written on error.
///
/// # Masked classes and non-finite logits
///
/// Class masks and vocabulary padding write the dtype's minimum (`masked_fill(mask,
/// finfo.min)`) or −inf into logits. Whenever the f64 [`reference`](crate::reference) gives a
/// finite loss, so does this function (and [`mixup_ce`], [`mixup_ce_in_place`], the CUDA
/// kernels and the candle op), with a finite gradient:
/// - a −inf logit whose class has zero target weight (no smoothing, neither the sample's nor
///   its partner's label) adds nothing: finite loss, gradient 0 there, as PyTorch's
///   index-target `cross_entropy`;
/// - with label smoothing ε > 0 every class has weight ε/C, so a −inf logit gives a loss of
///   +inf (PyTorch does the same); its gradient stays finite (`-ε/C · scale`);
/// - a NaN logit gives a NaN loss for its sample; a +inf logit gives NaN (`inf - inf`), and so
///   does a row whose logits are all −inf.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{cpu, CeSpec, MixPlan, Reduction};
/// let plan = MixPlan::identity(2)?;
/// let spec = CeSpec::new(2, 0.0, Reduction::Sum)?;
/// let mut losses = [0.0f32; 2];
/// let total = cpu::mixup_ce_forward(&plan, &spec, &[0.0f32; 4], &[0u32, 1], Some(&mut losses))?;
/// let ln2 = std::f32::consts::LN_2;
/// assert!(losses.iter().all(|l| (l - ln2).abs() < 1e-6));
/// assert!((total.unwrap() - 2.0 * ln2).abs() < 1e-6);
/// // Reduction::None: the per-sample losses are the result, and there is no scalar.
/// let none = CeSpec::new(2, 0.0, Reduction::None)?;
/// assert_eq!(cpu::mixup_ce_forward(&plan, &none, &[0.0f32; 4], &[0i64, 1], Some(&mut losses))?, None);
/// assert!(cpu::mixup_ce_forward(&plan, &none, &[0.0f32; 4], &[0u32, 1], None).is_err());
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
pub fn mixup_ce_forward<T: FloatElement, L: Label>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[L],
    losses: Option<&mut [f32]>,
) -> Result<Option<f32>> {
    let spec_of = (spec.targets(), spec.reduction());
    loss_call(plan, spec_of, losses.is_some(), labels, |y| {
        mixup_ce::mixup_ce_forward(plan, spec, logits, y, losses)
    })
}

/// Loss and gradient in one pass per row; the gradient goes to `grad` (`[B, C]`).
///
/// `grad_ic = (softmax(z_i)_c - t_ic) · grad_output_i` (÷ B for the mean), computed in f32 and
/// rounded once; the loss and the returned value are as in [`mixup_ce_forward`], masked and
/// non-finite logits too.
///
/// # Errors
/// Those of [`mixup_ce_forward`], and [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch)
/// for `grad`, [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) (`grad_output`)
/// for a non-finite `grad_output` or a per-sample one without
/// [`Reduction::None`](crate::Reduction::None).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{cpu, reference, CeSpec, GradOutput, MixPlan, Reduction};
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let spec = CeSpec::new(3, 0.1, Reduction::Mean)?;
/// let (logits, labels) = ([1.0f32, -1.0, 0.5, 0.0, 2.0, -0.5], [0u32, 2]);
/// let mut grad = [0.0f32; 6];
/// let loss = cpu::mixup_ce(&plan, &spec, &logits, &labels, GradOutput::Scalar(1.0), None, &mut grad)?;
/// let want = reference::mixup_ce(&plan, &spec, &logits, &labels, GradOutput::Scalar(1.0))?;
/// assert!((f64::from(loss.unwrap()) - want.loss.unwrap()).abs() < 1e-6);
/// assert!(grad.iter().zip(&want.grad).all(|(g, w)| (f64::from(*g) - w).abs() < 1e-6));
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
pub fn mixup_ce<T: FloatElement, L: Label>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[L],
    grad_output: GradOutput<'_>,
    losses: Option<&mut [f32]>,
    grad: &mut [T],
) -> Result<Option<f32>> {
    let spec_of = (spec.targets(), spec.reduction());
    loss_call(plan, spec_of, losses.is_some(), labels, |y| {
        mixup_ce::mixup_ce(plan, spec, logits, y, grad_output, losses, grad)
    })
}

/// Loss and gradient, the gradient written over the logits (same bits as [`mixup_ce`]).
///
/// # Errors
/// Those of [`mixup_ce`] (nothing is written on error).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{cpu, f16, CeSpec, GradOutput, MixPlan, Reduction};
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let spec = CeSpec::new(3, 0.0, Reduction::Sum)?;
/// let logits = [1.0f32, -1.0, 0.5, 0.0, 2.0, -0.5].map(f16::from_f32);
/// let mut grad = [f16::ZERO; 6];
/// let g = GradOutput::Scalar(2.0);
/// let a = cpu::mixup_ce(&plan, &spec, &logits, &[0u32, 2], g, None, &mut grad)?;
/// let mut z = logits;
/// let b = cpu::mixup_ce_in_place(&plan, &spec, &mut z, &[0u32, 2], g, None)?;
/// assert_eq!((a, z), (b, grad)); // same loss, same gradient bits
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
pub fn mixup_ce_in_place<T: FloatElement, L: Label>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &mut [T],
    labels: &[L],
    grad_output: GradOutput<'_>,
    losses: Option<&mut [f32]>,
) -> Result<Option<f32>> {
    let spec_of = (spec.targets(), spec.reduction());
    loss_call(plan, spec_of, losses.is_some(), labels, |y| {
        mixup_ce::mixup_ce_in_place(plan, spec, logits, y, grad_output, losses)
    })
}

/// The mixup binary cross-entropy (timm's `BinaryCrossEntropy` on the mixed soft target, as
/// [`BceSpec`] describes it), loss only: returns the reduced loss (`None` for
/// [`Reduction::None`](crate::Reduction::None)) and writes the per-sample losses
/// `L_i = Σ_c ℓ_ic` (`[B]`, f32) if asked (required under `Reduction::None`).
///
/// One read of the logits, no target in memory. Per element in f32 (about 3 ulp); each row's
/// sum in 16 f32 lanes flushed to f64 every 512 classes, across rows in f64.
/// Masked logits follow the rules of [`mixup_ce_forward`]: a −inf logit whose target is 0 adds
/// nothing; with smoothing (every target positive) it makes the loss +inf; NaN gives NaN. A
/// class of `weight` 0 adds nothing (loss and gradient 0), whatever its logit, except NaN.
///
/// # Errors
/// [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) when `logits` is not
/// `[B, C]`, [`MixError::LengthMismatch`](crate::MixError::LengthMismatch) when `losses` is not
/// `[B]`; [`MixError::LabelOutOfRange`](crate::MixError::LabelOutOfRange);
/// [`MixError::BatchMismatch`](crate::MixError::BatchMismatch) when the labels do not match the
/// plan; [`MixError::EmptyShape`](crate::MixError::EmptyShape) for the mean of an empty batch;
/// [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) for a spec other than the
/// plan's (`spec`) or no `losses` under `Reduction::None` (`losses`). Nothing is written on
/// error.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{cpu, reference, BceSpec, GradOutput, MixPlan, Reduction};
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let spec = BceSpec::new(3, 0.1, Reduction::Mean)?;
/// let (logits, labels) = ([1.0f32, -1.0, 0.5, 0.0, 2.0, -0.5], [0u32, 2]);
/// let loss = cpu::mixup_bce_forward(&plan, &spec, &logits, &labels, None)?;
/// let want = reference::mixup_bce(&plan, &spec, &logits, &labels, GradOutput::Scalar(1.0))?;
/// assert!((f64::from(loss.unwrap()) - want.loss.unwrap()).abs() < 1e-6);
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
pub fn mixup_bce_forward<T: FloatElement, L: Label>(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: &[T],
    labels: &[L],
    losses: Option<&mut [f32]>,
) -> Result<Option<f32>> {
    let spec_of = (spec.targets(), spec.reduction());
    loss_call(plan, spec_of, losses.is_some(), labels, |y| {
        mixup_bce::mixup_bce_forward(plan, spec, logits, y, losses)
    })
}

/// The mixup binary cross-entropy, loss and gradient in one pass: `grad` (`[B, C]`) receives
/// `∂L/∂z · grad_output` (÷ `B·C` for the mean, ÷ `B` with `sum_classes`), formed in f32 and
/// rounded once. Loss, per-sample losses and errors as in [`mixup_bce_forward`].
///
/// # Errors
/// Those of [`mixup_bce_forward`], and [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch)
/// for `grad`, [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) (`grad_output`)
/// for a non-finite `grad_output` or a per-sample one without
/// [`Reduction::None`](crate::Reduction::None).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{cpu, reference, BceSpec, GradOutput, MixPlan, Reduction};
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let spec = BceSpec::new(3, 0.0, Reduction::Sum)?.with_target_threshold(0.2)?;
/// let (logits, labels) = ([1.0f32, -1.0, 0.5, 0.0, 2.0, -0.5], [0i64, 2]);
/// let mut grad = [0.0f32; 6];
/// let g = GradOutput::Scalar(1.0);
/// let loss = cpu::mixup_bce(&plan, &spec, &logits, &labels, g, None, &mut grad)?;
/// let want = reference::mixup_bce(&plan, &spec, &logits, &labels, g)?;
/// assert!((f64::from(loss.unwrap()) - want.loss.unwrap()).abs() < 1e-5);
/// assert!(grad.iter().zip(&want.grad).all(|(g, w)| (f64::from(*g) - w).abs() < 1e-6));
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
pub fn mixup_bce<T: FloatElement, L: Label>(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: &[T],
    labels: &[L],
    grad_output: GradOutput<'_>,
    losses: Option<&mut [f32]>,
    grad: &mut [T],
) -> Result<Option<f32>> {
    let spec_of = (spec.targets(), spec.reduction());
    loss_call(plan, spec_of, losses.is_some(), labels, |y| {
        mixup_bce::mixup_bce(plan, spec, logits, y, grad_output, losses, grad)
    })
}

/// The frame of every public loss call: `losses` is given where the reduction needs it, the
/// labels (`u32` or `i64`) are class indices for the plan's batch; the kernel then gets them
/// as `u32`, and its loss is reported as the reduction says (`None` under
/// [`Reduction::None`](crate::Reduction::None)).
fn loss_call<L: Label>(
    plan: &MixPlan,
    (targets, reduction): (&TargetSpec, crate::Reduction),
    losses_given: bool,
    labels: &[L],
    kernel: impl FnOnce(&[u32]) -> Result<f32>,
) -> Result<Option<f32>> {
    check_losses_given(reduction, losses_given)?;
    check_labels(plan, labels, targets)?;
    let loss = kernel(&as_u32s(labels))?;
    Ok(reduction.reported(loss))
}

/// A fused loss on host slices, as the candle and burn ops run it: the loss values (the reduced
/// loss, or the per-sample losses under [`Reduction::None`](crate::Reduction::None)) and, when
/// `grad` is given, the gradient for `grad_output` written there.
#[cfg(any(feature = "candle", feature = "burn"))]
pub(crate) fn run_loss<T: FloatElement>(
    plan: &MixPlan,
    spec: &crate::spec::LossSpec<'_>,
    logits: &[T],
    labels: &[u32],
    grad_output: GradOutput<'_>,
    grad: Option<&mut [T]>,
) -> Result<Vec<f32>> {
    use crate::spec::LossSpec;
    let mut losses = vec![0f32; plan.len()];
    let per_sample = spec.reduction() == crate::Reduction::None;
    let out = per_sample.then_some(losses.as_mut_slice());
    let (z, y, up) = (logits, labels, grad_output);
    let loss = match (spec, grad) {
        (LossSpec::Ce(s), Some(g)) => mixup_ce(plan, s, z, y, up, out, g)?,
        (LossSpec::Ce(s), None) => mixup_ce_forward(plan, s, z, y, out)?,
        (LossSpec::Bce(s), Some(g)) => mixup_bce(plan, s, z, y, up, out, g)?,
        (LossSpec::Bce(s), None) => mixup_bce_forward(plan, s, z, y, out)?,
    };
    // `None` exactly for Reduction::None, whose result is the per-sample losses.
    Ok(loss.map_or(losses, |l| vec![l]))
}
