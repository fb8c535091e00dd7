//! The CPU path: every operation, multi-threaded, f32/f16/bf16 storage with f32 arithmetic.
//!
//! Each function validates all its arguments before writing anything: on error the caller's
//! buffers are untouched.

use crate::config::TargetSpec;
use crate::dtype::{Element, FloatElement};
use crate::error::Result;
use crate::plan::MixPlan;
use crate::spec::{CeSpec, Layout, Upstream};

/// Mixes `x` into `out` (both `[B, sample]` in `layout`): MixUp lerp or CutMix paste per the plan.
pub fn mix<T: Element>(plan: &MixPlan, layout: &Layout, x: &[T], out: &mut [T]) -> Result<()> {
    let _ = (plan, layout, x, out);
    todo!("cpu::mix")
}

/// Mixes `x` in place; the plan must be an involution (each pair is read before it is written).
pub fn mix_in_place<T: Element>(plan: &MixPlan, layout: &Layout, x: &mut [T]) -> Result<()> {
    let _ = (plan, layout, x);
    todo!("cpu::mix_in_place")
}

/// Writes the soft targets `[B, C]` of the plan and the labels.
pub fn soft_targets<T: FloatElement>(
    plan: &MixPlan,
    labels: &[u32],
    spec: &TargetSpec,
    out: &mut [T],
) -> Result<()> {
    let _ = (plan, labels, spec, out);
    todo!("cpu::soft_targets")
}

/// Loss only (evaluation): returns the reduced loss, writes per-sample losses if asked.
pub fn mixup_ce_forward<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[u32],
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    let _ = (plan, spec, logits, labels, losses);
    todo!("cpu::mixup_ce_forward")
}

/// Loss and gradient in one pass per row; the gradient goes to `grad` (`[B, C]`).
pub fn mixup_ce<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &[T],
    labels: &[u32],
    upstream: Upstream<'_>,
    losses: Option<&mut [f32]>,
    grad: &mut [T],
) -> Result<f32> {
    let _ = (plan, spec, logits, labels, upstream, losses, grad);
    todo!("cpu::mixup_ce")
}

/// Loss and gradient, the gradient written over the logits.
pub fn mixup_ce_in_place<T: FloatElement>(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &mut [T],
    labels: &[u32],
    upstream: Upstream<'_>,
    losses: Option<&mut [f32]>,
) -> Result<f32> {
    let _ = (plan, spec, logits, labels, upstream, losses);
    todo!("cpu::mixup_ce_in_place")
}
