//! candle integration (feature `candle`): mix `candle_core::Tensor` batches with a
//! [`MixPlan`], build soft targets, and train with the fused mixup cross-entropy as a candle op
//! whose backward pass hands `loss.backward()` the logits' gradient computed in the same pass as
//! the loss.
//!
//! Tensors on the CPU run the crate's `cpu` path. With the `candle-cuda` feature, tensors on a
//! CUDA device run the crate's CUDA kernels on the device's own stream, without a copy (candle
//! 0.11 and this crate share `cudarc` 0.19 and `half` 2).
//!
//! A training step, in a few lines:
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use mixup_kernels::candle::{mix_images, mixup_cross_entropy};
//! use mixup_kernels::{MemoryFormat, MixConfig, Reduction, Sampler};
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let (batch, classes) = (4, 10);
//! let images = Tensor::rand(0f32, 1., (batch, 1, 8, 8), &dev)?;   // NCHW
//! let labels = Tensor::new(&[3u32, 8, 1, 3], &dev)?;              // or i64
//! let weights = Var::zeros((64, classes), DType::F32, &dev)?;     // a linear "model"
//!
//! let config = MixConfig::fastai_v2_mixup(classes);
//! let spec = config.ce_spec(Reduction::Mean)?;                    // the config's smoothing
//! let sampler = Sampler::new(config, 0)?;
//! for step in 0..2u64 {
//!     let plan = sampler.plan(step, batch)?;                      // who mixes with whom, λ
//!     let x = mix_images(&plan, MemoryFormat::ChannelsFirst, &images)?; // mixed inputs
//!     let logits = x.flatten_from(1)?.matmul(weights.as_tensor())?;
//!     let loss = mixup_cross_entropy(&plan, &spec, &logits, &labels)?; // vs. mixed targets
//!     let grads = loss.backward()?;                               // fused gradient
//!     assert!(grads.get(&weights).is_some());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Every function takes the plan first, then what describes the data (the memory format, the
//! loss spec), then the tensors.
//!
//! Errors are candle's own: shapes, ranks, dtypes and devices that do not fit give the matching
//! [`candle_core::Error`] variant; problems the crate detects (a plan for another batch, labels
//! out of range, bad λ...) are a [`MixError`] wrapped with [`candle_core::Error::wrap`], so the
//! message names the problem. `?` converts a [`MixError`] into a candle error (there is a
//! `From` impl), so `sampler.plan(...)?` works inside a function that returns
//! `candle_core::Result`. No function here panics on user input.

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, DType, Device, Error, Layout as CLayout, Result, Shape, Tensor,
};

use crate::config::TargetSpec;
use crate::dtype::{Element, FloatElement};
use crate::error::MixError;
use crate::plan::MixPlan;
use crate::spec::{CeSpec, LossSpec, MemoryFormat, SampleShape};

mod bce;
#[cfg(feature = "candle-cuda")]
mod cuda;
mod loss;
mod mix_normalize;

pub use bce::mixup_binary_cross_entropy;
pub use mix_normalize::mix_normalize;

impl From<MixError> for Error {
    /// Wraps the crate's error (its message is kept) and captures a backtrace when
    /// `RUST_BACKTRACE` asks for one, as [`Error::wrap`] does.
    fn from(e: MixError) -> Self {
        Error::wrap(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------

/// Mixes a batch of images: MixUp samples become `λ x_i + (1-λ) x_partner(i)`, CutMix samples
/// take the partner's pixels inside their box (see [`MixPlan`]). Returns a new tensor of the
/// same shape, dtype and device; `images` is left as it is.
///
/// `images` is rank 4 in `format` (`[B, C, H, W]` for [`MemoryFormat::ChannelsFirst`],
/// `[B, H, W, C]` for [`MemoryFormat::ChannelsLast`]), of dtype f32, f16, bf16 or u8 (u8 rounds
/// half to even, as timm's collate path does). A non-contiguous tensor is made contiguous first
/// (a copy). The result does not track gradients: mixing is a data-side operation.
///
/// # Errors
/// A rank other than 4 ([`Error::UnexpectedNumberOfDims`]), another dtype
/// ([`Error::UnsupportedDTypeForOp`]), each with a line naming `images` and what is accepted;
/// a plan for another batch or another image size ([`MixError`], wrapped; when one side matches
/// and the other is smaller than the plan's image, as when the channel axis is read as a side,
/// the message says that the memory format may be wrong); a device other than the CPU or CUDA
/// (CUDA only with the `candle-cuda` feature): [`MixError::Unsupported`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use mixup_kernels::candle::mix_images;
/// use mixup_kernels::{MemoryFormat, MixPlan};
/// # fn main() -> candle_core::Result<()> {
/// // Two 1x1x2 "images"; sample 0 keeps 70% of itself and takes 30% of sample 1, and back.
/// let x = Tensor::new(&[[[[0f32, 10.]]], [[[20., 30.]]]], &Device::Cpu)?;
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let y = mix_images(&plan, MemoryFormat::ChannelsFirst, &x)?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [6., 16., 14., 24.]);
/// # Ok(())
/// # }
/// ```
pub fn mix_images(plan: &MixPlan, format: MemoryFormat, images: &Tensor) -> Result<Tensor> {
    const OP: &str = "mixup_kernels::mix_images";
    let dims = images.dims();
    let Some(shape) = format.sample_shape(dims) else {
        let e = Error::UnexpectedNumberOfDims {
            expected: 4,
            got: dims.len(),
            shape: images.shape().clone(),
        }
        .bt();
        return Err(e.context(format!(
            "{OP}: images must be a rank-4 batch {}, got shape {:?} (rows, features and \
             soft targets mix with mix_rows)",
            format.pattern(),
            images.shape()
        )));
    };
    check_device(images.device(), "images", OP)?;
    check_dtype(
        images.dtype(),
        &[DType::F32, DType::F16, DType::BF16, DType::U8],
        OP,
    )
    .map_err(|e| {
        e.context(format!(
            "{OP}: images must be f32, f16, bf16 or u8, got {:?}",
            images.dtype()
        ))
    })?;
    plan.check_batch("images", dims[0])?;
    let op = MixOp {
        plan: plan.clone(),
        shape,
    };
    if let Err(e) = op.check(images.elem_count()) {
        // The error says what is off, and (`MixError::ImageSizeMismatch`) whether the memory
        // format may be wrong; the context adds how the tensor was read.
        return Err(e.context(format!(
            "{OP}: images of shape {:?} read as {}",
            images.shape(),
            format.pattern()
        )));
    }
    images.contiguous()?.apply_op1_no_bwd(&op)
}

/// Mixes rows: `[B, ...]` (any rank ≥ 1) becomes `λ_i x_i + (1-λ_i) x_partner(i)` for every
/// sample, CutMix samples included (with their plan λ: the box's kept area when the plan was drawn
/// with `correct_lam` or `cutmix_minmax`, as timm mixes targets). Use it for already-soft targets,
/// features or embeddings; images take [`mix_images`].
///
/// # Errors
/// A scalar `x` ([`Error::UnexpectedNumberOfDims`]), a dtype other than f32, f16, bf16 and u8
/// ([`Error::UnsupportedDTypeForOp`]), a plan for another batch ([`MixError`], wrapped), a
/// device other than the CPU or CUDA ([`MixError::Unsupported`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use mixup_kernels::candle::mix_rows;
/// use mixup_kernels::MixPlan;
/// # fn main() -> candle_core::Result<()> {
/// let soft = Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu)?;
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.5])?;
/// let mixed = mix_rows(&plan, &soft)?;
/// assert_eq!(mixed.to_vec2::<f32>()?, [[0.75, 0.25], [0.5, 0.5]]);
/// # Ok(())
/// # }
/// ```
pub fn mix_rows(plan: &MixPlan, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "mixup_kernels::mix_rows";
    let dims = x.dims();
    if dims.is_empty() {
        let e = Error::UnexpectedNumberOfDims {
            expected: 1,
            got: 0,
            shape: x.shape().clone(),
        }
        .bt();
        return Err(e.context(format!("{OP}: x must be [batch, ...], got a scalar")));
    }
    check_device(x.device(), "x", OP)?;
    check_dtype(
        x.dtype(),
        &[DType::F32, DType::F16, DType::BF16, DType::U8],
        OP,
    )
    .map_err(|e| {
        e.context(format!(
            "{OP}: x must be f32, f16, bf16 or u8, got {:?}",
            x.dtype()
        ))
    })?;
    let op = MixOp {
        plan: plan.clone(),
        shape: SampleShape::rows(dims[1..].iter().product()),
    };
    plan.check_batch("x", dims[0])?;
    op.check(x.elem_count())?;
    x.contiguous()?.apply_op1_no_bwd(&op)
}

/// Soft targets `[B, C]` of `dtype` (f32, f16 or bf16) on the labels' device:
/// `t_ic = (1-ε)(λ_i [c = y_i] + (1-λ_i) [c = y_partner(i)]) + ε/C`, the weights adding up when
/// a sample and its partner share a class.
///
/// The loss never needs them ([`mixup_cross_entropy`] works from the labels); they are here for
/// users who combine targets with their own loss. `labels` is `[B]`, u32 or i64 (u8 is taken
/// too; see [`mixup_cross_entropy`] for the label rules).
///
/// # Errors
/// As [`mixup_cross_entropy`] for the labels; [`Error::UnsupportedDTypeForOp`] for a `dtype`
/// other than f32, f16 and bf16; [`MixError::InvalidArgument`] (`spec`) for a spec other than
/// the one the plan was drawn for.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use mixup_kernels::candle::soft_targets;
/// use mixup_kernels::{MixPlan, TargetSpec};
/// # fn main() -> candle_core::Result<()> {
/// let labels = Tensor::new(&[0u32, 2], &Device::Cpu)?;
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let t = soft_targets(&plan, &TargetSpec::new(3, 0.0)?, &labels, DType::F32)?;
/// let t = t.to_vec2::<f32>()?;
/// assert!((t[0][0] - 0.7).abs() < 1e-6 && (t[0][2] - 0.3).abs() < 1e-6); // "70% 0, 30% 2"
/// # Ok(())
/// # }
/// ```
pub fn soft_targets(
    plan: &MixPlan,
    spec: &TargetSpec,
    labels: &Tensor,
    dtype: DType,
) -> Result<Tensor> {
    const OP: &str = "mixup_kernels::soft_targets";
    check_dtype(dtype, &[DType::F32, DType::F16, DType::BF16], OP).map_err(|e| {
        e.context(format!(
            "{OP}: the targets' dtype must be f32, f16 or bf16, got {dtype:?}"
        ))
    })?;
    crate::spec::check_targets(plan, spec)?;
    check_device(labels.device(), "labels", OP)?;
    check_labels_tensor(labels, plan, OP)?;
    let op = SoftTargetsOp {
        plan: plan.clone(),
        spec: *spec,
        dtype,
    };
    device_labels(labels)?.apply_op1_no_bwd(&op)
}

/// Mixup cross-entropy of `logits` (`[B, C]`) against the plan's soft targets, as a candle op:
/// the loss in the logits' dtype (a scalar for [`Reduction::Mean`](crate::Reduction::Mean) and [`Reduction::Sum`](crate::Reduction::Sum), the
/// `[B]` per-sample losses for [`Reduction::None`](crate::Reduction::None)), and a backward pass that hands
/// `loss.backward()` the gradient `(softmax(z) - t) · scale` computed in the same pass as the
/// loss. The soft target never exists in memory. Under [`Reduction::None`](crate::Reduction::None) the result is the
/// `[B]` losses, as PyTorch's `cross_entropy(reduction='none')`, and its backward takes one
/// gradient per sample (a weighted sum of the losses, say).
///
/// Per row: `L = lse(z) - (1-ε)(λ z_a + (1-λ) z_b) - (ε/C) Σ_c z_c` with `a` the sample's label,
/// `b` its partner's, `λ` its weight and `ε` the label smoothing of `spec`; f32 arithmetic
/// whatever the storage type. A plan drawn by a [`Sampler`](crate::Sampler) remembers its
/// config's classes and smoothing: build `spec` with
/// [`MixConfig::ce_spec`](crate::MixConfig::ce_spec), another spec is an error.
///
/// - `labels`: `[B]` class indices on the logits' device, u32 or i64 (candle-nn's habit; u8 is
///   taken too). On the CPU a negative label or one `≥ C` is
///   [`MixError::LabelOutOfRange`] before any work. On a GPU, labels are converted to u32 and a label out of range is counted
///   by the kernel (never read through) and reported by [`check_device_labels`] when the caller
///   asks (it waits for the stream, so call it where you already synchronize, e.g. when the loss
///   is logged). The conversion is candle's `to_dtype`, which keeps the low 32 bits of an i64:
///   a negative label becomes `≥ 2³¹` and is reported, but a label `≥ 2³²` wraps and is not
///   (pass u32 labels on a GPU when labels come from untrusted data).
/// - The loss is computed in f32 and returned in the logits' dtype (candle's `to_dtype`, so the
///   gradient of the output reaches the op in f32).
/// - On the CPU the gradient is computed during the forward pass for a `grad_output` of 1
///   and kept with the op; `backward()` returns it as it is when `grad_output` is 1 (a plain
///   `loss.backward()`), and otherwise recomputes it in one fused pass with the real `grad_output`,
///   so every element is rounded once. On a GPU the forward pass computes the loss only and
///   `backward()` runs the fused kernel once, reading the upstream gradient from device memory
///   (the logits are read twice, the gradient written once, and the host never waits). When
///   `logits` does not track gradients (evaluation), no gradient is computed at all.
/// - Gradients flow to `logits` only (labels are integers; the plan is data).
///
/// The loss is timm's `SoftTargetCrossEntropy` on `mixup_target` (see
/// [`cpu::mixup_ce_forward`](crate::cpu::mixup_ce_forward), which also gives the rules for masked
/// and non-finite logits).
///
/// # Errors
/// candle's own for tensors that do not fit, each with a context line naming the tensor, what is
/// accepted and the likely mistake: [`Error::UnexpectedNumberOfDims`] (logits not rank 2, labels
/// not rank 1: `[B, 1]` labels, swapped arguments), [`Error::UnsupportedDTypeForOp`] (logits not
/// f32/f16/bf16, labels not u32/i64/u8), [`Error::UnexpectedShape`] (a class count other than
/// the spec's), [`Error::DeviceMismatchBinaryOp`]; the crate's [`MixError`], wrapped, for a plan
/// of another batch, labels out of range or negative, a spec other than the plan's;
/// [`MixError::Unsupported`] for tensors on a GPU when the crate was built without the
/// `candle-cuda` feature, and for devices other than the CPU and CUDA.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use mixup_kernels::candle::mixup_cross_entropy;
/// use mixup_kernels::{CeSpec, MixPlan, Reduction};
/// # fn main() -> candle_core::Result<()> {
/// let logits = Var::new(&[[2f32, 0., 0.], [0., 1., 0.]], &Device::Cpu)?;
/// let labels = Tensor::new(&[0i64, 1], &Device::Cpu)?;
/// let plan = MixPlan::identity(2)?; // no mixing: plain cross-entropy
/// let spec = CeSpec::new(3, 0.0, Reduction::Mean)?;
/// let loss = mixup_cross_entropy(&plan, &spec, logits.as_tensor(), &labels)?;
/// let expected = candle_nn::loss::cross_entropy(logits.as_tensor(), &labels)?;
/// assert!((loss.to_scalar::<f32>()? - expected.to_scalar::<f32>()?).abs() < 1e-6);
/// let grad = loss.backward()?.remove(logits.as_tensor()).unwrap();
/// assert_eq!(grad.dims(), [2, 3]);
/// // Reduction::None: the [B] losses, as PyTorch's reduction='none'.
/// let none = CeSpec::new(3, 0.0, Reduction::None)?;
/// let losses = mixup_cross_entropy(&plan, &none, logits.as_tensor(), &labels)?;
/// assert_eq!(losses.dims(), [2]);
/// # Ok(())
/// # }
/// ```
pub fn mixup_cross_entropy(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "mixup_kernels::mixup_cross_entropy";
    check_loss_args(plan, spec.targets(), logits, labels, OP)?;
    let loss = loss::apply(plan, LossSpec::Ce(*spec), logits, labels)?;
    if loss.elem_count() == 0 && loss.dtype() != logits.dtype() && !loss.device().is_cpu() {
        // No sample under Reduction::None: candle's cast would allocate zero bytes on the GPU
        // (and there is no gradient to hand back).
        return empty(logits.dtype(), loss.device());
    }
    // f32 inside (the loss is accumulated in f32); the caller gets the logits' dtype, and
    // candle's `to_dtype` hands the upstream gradient back to the op as f32.
    loss.to_dtype(logits.dtype())
}

/// Reports labels that the CUDA kernels found outside `0..num_classes` on `device` since the last
/// check, as an error ([`MixError::DeviceLabelOutOfRange`], wrapped); waits for the device's
/// stream, so call it where the loop already synchronizes (when the loss is logged, say): the
/// training step itself never waits for the GPU. A no-op on the CPU, where labels are checked
/// before any work, and in builds without `candle-cuda`. On `Device::new_cuda` (a stream per
/// host thread) the count is per thread: call it from the thread that ran the ops.
///
/// ```
/// use candle_core::Device;
/// mixup_kernels::candle::check_device_labels(&Device::Cpu).unwrap();
/// ```
pub fn check_device_labels(device: &Device) -> Result<()> {
    #[cfg(feature = "candle-cuda")]
    cuda::check_labels(device)?;
    let _ = device;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Logits must be `[batch, num_classes]` in f32, f16 or bf16; the error says so, names the
/// shape, and points at swapped arguments (rank-1 logits beside rank-2 labels).
fn check_logits(logits: &Tensor, labels: &Tensor, op: &'static str) -> Result<()> {
    if logits.rank() != 2 {
        let swapped = logits.rank() == 1 && labels.rank() == 2;
        let e = Error::UnexpectedNumberOfDims {
            expected: 2,
            got: logits.rank(),
            shape: logits.shape().clone(),
        }
        .bt();
        return Err(e.context(format!(
            "{op}: logits must be [batch, num_classes], got shape {:?}{}",
            logits.shape(),
            if swapped {
                " (logits and labels look swapped: the call is (plan, spec, logits, labels))"
            } else {
                ""
            }
        )));
    }
    check_dtype(logits.dtype(), &[DType::F32, DType::F16, DType::BF16], op).map_err(|e| {
        e.context(format!(
            "{op}: logits must be f32, f16 or bf16, got {:?}",
            logits.dtype()
        ))
    })
}

/// The checks of both losses: the spec against the plan's, the logits (`[B, num_classes]` of
/// the spec, a float dtype), the plan's batch, the labels (`[B]`, an index dtype), one device
/// for both, and one the ops run on.
fn check_loss_args(
    plan: &MixPlan,
    targets: &TargetSpec,
    logits: &Tensor,
    labels: &Tensor,
    op: &'static str,
) -> Result<()> {
    // The spec against the plan first: a spec built for another class count would otherwise be
    // reported as logits of the wrong shape (the logits are right, the spec is not).
    crate::spec::check_targets(plan, targets)?;
    let num_classes = targets.num_classes();
    check_logits(logits, labels, op)?;
    let (b, c) = (logits.dims()[0], logits.dims()[1]);
    if c != num_classes {
        return Err(Error::UnexpectedShape {
            msg: format!(
                "{op}: logits must be [batch, num_classes] with num_classes = {num_classes}"
            ),
            expected: Shape::from((b, num_classes)),
            got: logits.shape().clone(),
        }
        .bt());
    }
    plan.check_batch("logits", b)?;
    check_labels_tensor(labels, plan, op)?;
    same_device(logits, labels, op)?;
    check_device(logits.device(), "logits", op)
}

/// The ops run on CPU tensors, and on CUDA tensors with the `candle-cuda` feature; another
/// device is [`MixError::Unsupported`], saying what to do for CUDA.
fn check_device(device: &Device, what: &str, op: &'static str) -> Result<()> {
    if device.is_cpu() || (cfg!(feature = "candle-cuda") && device.is_cuda()) {
        return Ok(());
    }
    let how = if device.is_cuda() {
        "; build mixup-kernels with the `candle-cuda` feature for CUDA tensors"
    } else {
        ""
    };
    Err(MixError::Unsupported(format!(
        "{op} runs on CPU and CUDA tensors (`{what}` is on {:?}){how}",
        device.location()
    ))
    .into())
}

fn check_dtype(got: DType, allowed: &[DType], op: &'static str) -> Result<()> {
    if allowed.contains(&got) {
        Ok(())
    } else {
        Err(Error::UnsupportedDTypeForOp(got, op).bt())
    }
}

fn same_device(a: &Tensor, b: &Tensor, op: &'static str) -> Result<()> {
    if a.device().same_device(b.device()) {
        Ok(())
    } else {
        Err(Error::DeviceMismatchBinaryOp {
            lhs: a.device().location(),
            rhs: b.device().location(),
            op,
        }
        .bt())
    }
}

fn check_labels_tensor(labels: &Tensor, plan: &MixPlan, op: &'static str) -> Result<()> {
    if labels.rank() != 1 {
        let column = labels.rank() == 2 && labels.dims()[1] == 1;
        let e = Error::UnexpectedNumberOfDims {
            expected: 1,
            got: labels.rank(),
            shape: labels.shape().clone(),
        }
        .bt();
        let hint = if column {
            " (squeeze the last dimension: labels.squeeze(1))"
        } else if labels.rank() == 2 {
            " (class indices, not one-hot or soft targets: labels.argmax(1))"
        } else {
            ""
        };
        return Err(e.context(format!(
            "{op}: labels must be [batch] class indices (u32 or i64), got shape {:?}{hint}",
            labels.shape(),
        )));
    }
    check_dtype(labels.dtype(), &[DType::U32, DType::I64, DType::U8], op).map_err(|e| {
        let hint = if labels.dtype().is_float() {
            " (class indices, not one-hot or soft targets: to_dtype(DType::U32) if they hold whole numbers)"
        } else {
            ""
        };
        e.context(format!(
            "{op}: labels must be class indices of dtype u32 or i64 (u8 is taken too), got \
             {:?}{hint}",
            labels.dtype()
        ))
    })?;
    plan.check_batch("labels", labels.dims()[0])?;
    Ok(())
}

/// Labels ready for an op: contiguous, and u32 on a GPU (the kernels read u32; a negative i64
/// wraps to a huge value there, which the kernel counts as out of range). On the host, i64 and
/// u8 are converted and checked inside the op.
fn device_labels(labels: &Tensor) -> Result<Tensor> {
    if labels.device().is_cpu() || labels.dtype() == DType::U32 {
        labels.contiguous()
    } else if labels.elem_count() == 0 {
        // An empty batch: candle's cast would allocate zero bytes on the GPU.
        empty(DType::U32, labels.device())
    } else {
        labels.to_dtype(DType::U32)
    }
}

/// A `[0]` tensor of `dtype` on `device`. The CUDA driver rejects a zero-byte allocation, so
/// it is a view of no element into a one-element buffer.
fn empty(dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    Tensor::zeros(1, dtype, device)?.narrow(0, 0, 0)
}

/// The contiguous part of a storage vector that a layout covers.
fn contiguous<'a, T>(v: &'a [T], l: &CLayout, op: &'static str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) if end <= v.len() => Ok(&v[start..end]),
        _ => Err(Error::RequiresContiguous { op }.bt()),
    }
}

/// Host labels as u32: borrowed when they already are, converted otherwise; a negative i64 (or
/// one past u32, which no class count reaches) is [`MixError::LabelOutOfRange`] instead of a
/// wrap-around.
fn host_labels<'a>(
    s: &'a CpuStorage,
    l: &CLayout,
    num_classes: usize,
    op: &'static str,
) -> Result<Cow<'a, [u32]>> {
    Ok(match s {
        CpuStorage::U32(v) => Cow::Borrowed(contiguous(v, l, op)?),
        CpuStorage::U8(v) => Cow::Owned(
            contiguous(v, l, op)?
                .iter()
                .map(|&x| u32::from(x))
                .collect(),
        ),
        CpuStorage::I64(v) => {
            let v = contiguous(v, l, op)?;
            crate::spec::check_label_values(v, num_classes)?;
            crate::dtype::as_u32s(v)
        }
        other => return Err(Error::UnsupportedDTypeForOp(other.dtype(), op).bt()),
    })
}

// ---------------------------------------------------------------------------------------------
// The ops
// ---------------------------------------------------------------------------------------------

/// Out-of-place mixing of a contiguous batch.
pub(crate) struct MixOp {
    pub(crate) plan: MixPlan,
    pub(crate) shape: SampleShape,
}

impl MixOp {
    /// The crate's shared checks, before any work is launched.
    fn check(&self, len: usize) -> Result<()> {
        crate::spec::check_mix(&self.plan, &self.shape, len, "images")?;
        Ok(())
    }
}

fn mix_vec<T: Element>(op: &MixOp, x: &[T]) -> Result<Vec<T>> {
    let mut out = vec![T::default(); x.len()];
    crate::cpu::mix(&op.plan, &op.shape, x, &mut out)?;
    Ok(out)
}

impl CustomOp1 for MixOp {
    fn name(&self) -> &'static str {
        "mixup-kernels-mix"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &CLayout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(mix_vec(self, contiguous(v, l, name)?)?),
            CpuStorage::F16(v) => CpuStorage::F16(mix_vec(self, contiguous(v, l, name)?)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(mix_vec(self, contiguous(v, l, name)?)?),
            CpuStorage::U8(v) => CpuStorage::U8(mix_vec(self, contiguous(v, l, name)?)?),
            other => return Err(Error::UnsupportedDTypeForOp(other.dtype(), name).bt()),
        };
        Ok((out, l.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &CLayout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::mix(self, s, l)
    }
}

/// Soft targets from labels.
pub(crate) struct SoftTargetsOp {
    pub(crate) plan: MixPlan,
    pub(crate) spec: TargetSpec,
    pub(crate) dtype: DType,
}

fn targets_vec<T: FloatElement>(op: &SoftTargetsOp, labels: &[u32]) -> Result<Vec<T>> {
    let n = labels
        .len()
        .checked_mul(op.spec.num_classes())
        .ok_or(MixError::SizeOverflow {
            what: "batch × num_classes",
        })?;
    let mut out = vec![T::default(); n];
    crate::cpu::soft_targets(&op.plan, &op.spec, labels, &mut out)?;
    Ok(out)
}

impl CustomOp1 for SoftTargetsOp {
    fn name(&self) -> &'static str {
        "mixup-kernels-soft-targets"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &CLayout) -> Result<(CpuStorage, Shape)> {
        let labels = host_labels(s, l, self.spec.num_classes(), self.name())?;
        let out = match self.dtype {
            DType::F32 => CpuStorage::F32(targets_vec(self, &labels)?),
            DType::F16 => CpuStorage::F16(targets_vec(self, &labels)?),
            DType::BF16 => CpuStorage::BF16(targets_vec(self, &labels)?),
            other => return Err(Error::UnsupportedDTypeForOp(other, self.name()).bt()),
        };
        Ok((out, Shape::from((labels.len(), self.spec.num_classes()))))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &CLayout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::soft_targets(self, s, l)
    }
}
