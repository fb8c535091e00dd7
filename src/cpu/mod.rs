//! The CPU path: every operation, multi-threaded, f32/f16/bf16 storage with f32 arithmetic.
//!
//! Each function validates all its arguments before writing anything: on error the caller's
//! buffers are untouched. Work is spread over rayon's global pool (samples, pairs, or rows;
//! long rows of small batches are split so every core works). Results do not depend on the
//! number of threads: every output element and every per-sample loss is computed by one
//! thread in a fixed order, and the reduced loss sums per-sample losses in index order.

mod lanes;
mod math;
mod mix;
mod mixup_ce;
mod soft_targets;

use crate::config::TargetSpec;
use crate::dtype::{Element, FloatElement};
use crate::error::Result;
use crate::plan::MixPlan;
use crate::spec::{CeSpec, Layout, Upstream};

/// Mixes `x` into `out` (both `[B, sample]` in `layout`): MixUp lerp or CutMix paste per the plan.
///
/// Per element, in f32 with one rounding to `T` at the end (round half to even, also for `u8`):
/// `out_i = lam_i * x_i + (1 - lam_i) * x_partner(i)` (no fused multiply-add); under an image
/// layout a CutMix sample takes `x_partner(i)` inside its box and `x_i` outside. A sample that
/// is its own partner is copied unchanged. Any plan; `out` must not be `x`.
pub fn mix<T: Element>(plan: &MixPlan, layout: &Layout, x: &[T], out: &mut [T]) -> Result<()> {
    mix::mix(plan, layout, x, out)
}

/// Mixes `x` in place; the plan must be an involution (each pair is read before it is written).
///
/// Gives the same bits as [`mix`]. Fails with [`MixError::NotInvolution`](crate::MixError)
/// (and leaves `x` untouched) for other plans, such as random permutations.
pub fn mix_in_place<T: Element>(plan: &MixPlan, layout: &Layout, x: &mut [T]) -> Result<()> {
    mix::mix_in_place(plan, layout, x)
}

/// Writes the soft targets `[B, C]` of the plan and the labels.
///
/// `t_ic = (1-ε)·w_ic + ε/C` in f32, `w` = λ_i at `y_i`, `1-λ_i` at `y_partner(i)` (summed when
/// the classes are equal), 0 elsewhere; rounded once to `T`.
pub fn soft_targets<T: FloatElement>(
    plan: &MixPlan,
    labels: &[u32],
    spec: &TargetSpec,
    out: &mut [T],
) -> Result<()> {
    soft_targets::soft_targets(plan, labels, spec, out)
}

/// Loss only (evaluation): returns the reduced loss, writes per-sample losses if asked.
///
/// `losses`, if given, must hold B values. The returned value is the mean for
/// [`Reduction::Mean`](crate::Reduction) and [`Reduction::None`](crate::Reduction) (for
/// logging), the sum for `Sum`.
pub fn mixup_ce_forward<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[u32],
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    mixup_ce::mixup_ce_forward(plan, spec, logits, labels, losses)
}

/// Loss and gradient in one pass per row; the gradient goes to `grad` (`[B, C]`).
///
/// `grad_ic = (softmax(z_i)_c - t_ic) · upstream_i` (÷ B for the mean), computed in f32 and
/// rounded once; the loss is as in [`mixup_ce_forward`].
pub fn mixup_ce<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[u32],
    upstream: Upstream<'_>,
    losses: Option<&mut [f32]>,
    grad: &mut [T],
) -> Result<f32> {
    mixup_ce::mixup_ce(plan, spec, logits, labels, upstream, losses, grad)
}

/// Loss and gradient, the gradient written over the logits (same bits as [`mixup_ce`]).
pub fn mixup_ce_in_place<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &mut [T],
    labels: &[u32],
    upstream: Upstream<'_>,
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    mixup_ce::mixup_ce_in_place(plan, spec, logits, labels, upstream, losses)
}
