//! The low-level API: the same operations over raw device addresses, for code whose tensors
//! are not cudarc slices (tch-rs / PyTorch, burn, custom allocators).
//!
//! Build the mixer on the framework's stream with [`CudaMixer::from_raw_stream`] (PyTorch:
//! `torch.cuda.current_stream().cuda_stream`), so the plan upload and the kernels are ordered
//! with the framework's own work; then pass `tensor.data_ptr()` addresses here.
//!
//! # Safety contract (every function here)
//! - Each address points to device memory of the mixer's device (or is accessible from it),
//!   holding at least the number of elements stated for it, of the stated dtype, aligned to
//!   its element size, and stays valid until the enqueued kernel has finished.
//! - Outputs do not overlap inputs, except where a function says it works in place.
//! - Nothing else writes these buffers while the kernel runs (the caller orders other streams
//!   against the mixer's stream).
//!
//! Under that contract the functions check everything else exactly as the safe API does
//! (plan, shapes, dtype, smoothing, reduction) before enqueuing anything, and return an error
//! rather than panic. Labels stay on the device: out-of-range labels are counted by the kernel
//! and reported by [`CudaMixer::check_labels`].
//!
//! The safe API is built on these functions, so the GPU tests exercise them.

use crate::config::TargetSpec;
use crate::dtype::DType;
use crate::error::Result;
use crate::spec::{CeSpec, Layout};

use super::{CudaMixer, DevicePlan};

/// A device address (`CUdeviceptr`).
pub type CUdeviceptr = u64;

/// The gradient arriving from above the loss, as device addresses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawUpstream {
    /// One host value.
    Scalar(f32),
    /// One f32 on the device.
    Device(CUdeviceptr),
    /// `B` f32 on the device; only with `Reduction::None`.
    PerSample(CUdeviceptr),
}

/// The buffers of a cross-entropy call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CeBuffers {
    /// Logits `[B, C]` of the call's dtype.
    pub logits: CUdeviceptr,
    /// Labels `[B]`, u32.
    pub labels: CUdeviceptr,
    /// Gradient `[B, C]` of the logits' dtype: `None` for the loss only; `Some(logits)` writes
    /// it over the logits (in place is allowed here).
    pub grad: Option<CUdeviceptr>,
    /// The reduced loss, one f32.
    pub loss: CUdeviceptr,
    /// Per-sample losses `[B]` f32, if wanted.
    pub losses: Option<CUdeviceptr>,
}

/// Mixes `x` into `out`, each `len` elements of `dtype` (`[B, sample]` in `layout`).
///
/// # Safety
/// See the module's contract; `out` does not overlap `x`.
pub unsafe fn mix(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    layout: &Layout,
    dtype: DType,
    x: CUdeviceptr,
    out: CUdeviceptr,
    len: usize,
) -> Result<()> {
    // SAFETY: forwarded.
    unsafe { super::mix::launch(mixer, plan, layout, dtype, x, out, len, false) }
}

/// Mixes `x` (`len` elements of `dtype`) in place; the plan must be an involution.
///
/// # Safety
/// See the module's contract.
pub unsafe fn mix_in_place(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    layout: &Layout,
    dtype: DType,
    x: CUdeviceptr,
    len: usize,
) -> Result<()> {
    // SAFETY: forwarded.
    unsafe { super::mix::launch(mixer, plan, layout, dtype, x, x, len, true) }
}

/// Writes soft targets (`out_len` = B·C elements of `dtype`) from `labels` (`[B]` u32).
///
/// # Safety
/// See the module's contract.
pub unsafe fn soft_targets(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    spec: &TargetSpec,
    dtype: DType,
    labels: CUdeviceptr,
    out: CUdeviceptr,
    out_len: usize,
) -> Result<()> {
    // SAFETY: forwarded.
    unsafe { super::soft_targets::launch(mixer, plan, spec, dtype, labels, out, out_len) }
}

/// The fused mixup cross-entropy over `logits_len` = B·C logits of `dtype` (see
/// [`CeBuffers`]).
///
/// # Safety
/// See the module's contract.
pub unsafe fn mixup_ce(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    spec: &CeSpec,
    dtype: DType,
    logits_len: usize,
    buffers: &CeBuffers,
    upstream: RawUpstream,
) -> Result<()> {
    // SAFETY: forwarded.
    unsafe { super::mixup_ce::launch(mixer, plan, spec, dtype, logits_len, buffers, upstream) }
}
