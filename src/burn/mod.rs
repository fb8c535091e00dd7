//! burn integration (feature `burn`, burn 0.22): mix burn [`Tensor`] batches with a
//! [`MixPlan`] (or turn decoded u8 pixels into the mixed model input, [`mix_normalize`]), build
//! soft targets, and train with the fused mixup cross-entropy (and the mixup
//! BCE) as burn autodiff ops: `loss.backward()` gets the logits' gradient computed in the same
//! pass as the loss.
//!
//! burn 0.22 has one `Tensor<D, K>` type; the backend is chosen at run time by the tensor's
//! [`Device`]. These functions work on every backend burn was built with:
//!
//! - **Where the work runs.** On burn's CUDA backend (feature `burn-cuda`): the crate's CUDA
//!   kernels, on the tensors' own device memory, no copy (rows that burn padded are read in
//!   place; a transposed or broadcast view is made contiguous on the device first; the outputs
//!   are new device tensors handed to burn; two host synchronizations per call order the work
//!   with burn's queue, a third reads the labels of a loss or `soft_targets` to the host,
//!   docs/burn.md).
//!   Everywhere else: the crate's CPU kernels (the `cpu` module), on the host copy of the
//!   tensor that burn's own `into_data` gives: for burn's CPU backends (`Flex`,
//!   `NdArray`) that is a memory copy out and one back in (`Tensor::from_data`), on another GPU
//!   backend a device → host → device round trip. Involution plans (timm's flip) mix that host
//!   copy in place; other plans write a new buffer. burn's `fusion` wrapper needs nothing
//!   special: reading the data flushes the fused graph first, as any `into_data` does.
//! - **The losses** are autodiff ops (burn's `Backward` trait) on `Autodiff<Flex>`, the CPU
//!   backend this feature builds (and on burn's CUDA backend, `Autodiff<Cube>`, with the
//!   `burn-cuda` feature): the forward pass computes the loss and the gradient for an
//!   upstream of 1 in one pass and keeps the gradient; the backward pass hands burn the kept
//!   gradient times the upstream gradient (one multiply). On any other autodiff backend (enabled
//!   in burn by the application: `ndarray`, `wgpu`, or burn's `cuda` without this crate's
//!   `burn-cuda` feature, which then takes the host round trip) the same kernel computes loss and
//!   gradient and the result is attached with burn's own ops, `(s − detach(s)) + loss` with
//!   `s = (x·G).sum()`, whose backward is `G ×` upstream as well (three small extra ops per step).
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use mixup_kernels::burn::{mix_images, mixup_cross_entropy};
//! use mixup_kernels::{MemoryFormat, MixConfig, Reduction, Sampler};
//!
//! # fn main() -> Result<(), mixup_kernels::MixError> {
//! let device = Device::flex().autodiff();
//! let (batch, classes) = (4, 10);
//! let images = Tensor::<4>::ones([batch, 1, 8, 8], &device);
//! let labels = Tensor::<1, Int>::from_data([3, 8, 1, 3], &device);
//! let weights = Tensor::<2>::zeros([64, classes], &device).require_grad(); // a linear "model"
//!
//! let config = MixConfig::fastai_v2_mixup(classes);
//! let spec = config.ce_spec(Reduction::Mean)?;
//! let sampler = Sampler::new(config, 0)?;
//! for step in 0..2u64 {
//!     let plan = sampler.plan(step, batch)?;
//!     let x = mix_images(&plan, MemoryFormat::ChannelsFirst, images.clone())?;
//!     let logits = x.flatten::<2>(1, 3).matmul(weights.clone());
//!     let loss = mixup_cross_entropy(&plan, &spec, logits, labels.clone())?;
//!     let grads = loss.backward();
//!     assert!(weights.grad(&grads).is_some());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Every function takes the plan first, then what describes the data (the memory format, the
//! loss spec), then the tensors (by value, as burn's own ops do; clone a tensor to keep it).
//!
//! Errors: burn's own operations panic on tensors that do not fit; these return the crate's
//! [`MixError`] instead, naming the tensor, its shape or dtype and what is accepted (ranks,
//! dtypes, a class count other than the spec's, devices that differ, a plan for another batch,
//! labels out of range or negative). Nothing here panics on user input.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, DispatchKindConversion, DispatchTensor, Flex, TensorMetadata,
};
use burn::tensor::{DType, Device, FloatDType, Int, Shape, Tensor, TensorData};

use crate::config::TargetSpec;
use crate::dtype::{Element, FloatElement};
use crate::error::{MixError, Result};
use crate::plan::MixPlan;
use crate::spec::{CeSpec, GradOutput, LossSpec, MemoryFormat, SampleShape};

mod bce;
#[cfg(feature = "burn-cuda")]
mod cuda;
mod mix_normalize;

pub use bce::mixup_binary_cross_entropy;
pub use mix_normalize::mix_normalize;

/// How many calls of this module on the current host thread ran the crate's CUDA kernels on
/// burn's own device memory (the no-copy path of burn's CUDA backend). For tests and the GPU
/// script, which tell that path from the host round trip with it (per thread, so tests running
/// in parallel do not count each other's calls).
///
/// ```
/// # #[cfg(feature = "burn-cuda")]
/// assert_eq!(mixup_kernels::burn::device_calls(), 0); // nothing has run on a CUDA device yet
/// ```
#[cfg(feature = "burn-cuda")]
#[doc(hidden)]
pub fn device_calls() -> usize {
    cuda::calls()
}

/// How many inputs of those calls (on the current host thread) burn first copied on the device
/// because their layout could not be read in place (a transposed or broadcast view, rows that
/// must be dense): for tests and the GPU script, which check that padded rows, dense tensors
/// and aligned slices are read where they are.
///
/// ```
/// # #[cfg(feature = "burn-cuda")]
/// assert_eq!(mixup_kernels::burn::device_copies(), 0);
/// ```
#[cfg(feature = "burn-cuda")]
#[doc(hidden)]
pub fn device_copies() -> usize {
    cuda::copies()
}

// ---------------------------------------------------------------------------------------------
// Mixing
// ---------------------------------------------------------------------------------------------

/// Mixes a batch of images: MixUp samples become `λ x_i + (1-λ) x_partner(i)`, CutMix samples
/// take the partner's pixels inside their box (see [`MixPlan`]). Returns a new tensor of the
/// same shape, dtype (f32, f16 or bf16) and device, which does not track gradients (mixing is a
/// data-side operation).
///
/// `images` is `[B, C, H, W]` for [`MemoryFormat::ChannelsFirst`], `[B, H, W, C]` for
/// [`MemoryFormat::ChannelsLast`].
///
/// # Errors
/// [`MixError::InvalidArgument`] for another dtype; [`MixError::BatchMismatch`] /
/// [`MixError::ImageSizeMismatch`] for a plan of another batch or image size (the message says
/// when the memory format looks wrong).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use mixup_kernels::burn::mix_images;
/// use mixup_kernels::{MemoryFormat, MixPlan};
/// # fn main() -> Result<(), mixup_kernels::MixError> {
/// let x = Tensor::<4>::from_data([[[[0f32, 10.]]], [[[20., 30.]]]], &Device::flex());
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let y = mix_images(&plan, MemoryFormat::ChannelsFirst, x)?;
/// assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), [6., 16., 14., 24.]);
/// # Ok(())
/// # }
/// ```
pub fn mix_images(plan: &MixPlan, format: MemoryFormat, images: Tensor<4>) -> Result<Tensor<4>> {
    const OP: &str = "mixup_kernels::burn::mix_images";
    let dims = images.dims();
    let shape = format
        .sample_shape(&dims)
        .ok_or_else(|| invalid("images", format!("{OP}: shape {dims:?} is not rank 4")))?;
    float_dtype(images.dtype(), "images", OP)?;
    plan.check_batch("images", dims[0])?;
    if let Err(e) = crate::spec::check_mix(plan, &shape, images.shape().num_elements(), "images") {
        if let (Some(p), Some(d)) = (plan.image_size(), shape.image_size())
            && crate::error::likely_format_swap((p.height, p.width), (d.height, d.width))
        {
            return Err(invalid(
                "images",
                format!(
                    "{OP}: the plan was drawn for {}x{} images, but the tensor {dims:?} read as \
                     {} is {}x{}: the memory format may be wrong (MemoryFormat::ChannelsFirst for \
                     [B, C, H, W], MemoryFormat::ChannelsLast for [B, H, W, C])",
                    p.height,
                    p.width,
                    format.pattern(),
                    d.height,
                    d.width
                ),
            ));
        }
        return Err(e);
    }
    mix_tensor(plan, &shape, images)
}

/// Mixes rows: `[B, ...]` becomes `λ_i x_i + (1-λ_i) x_partner(i)` for every sample, CutMix
/// samples included (with their plan λ). For soft targets, features or embeddings; images take
/// [`mix_images`]. f32, f16 or bf16; the result does not track gradients.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use mixup_kernels::burn::mix_rows;
/// use mixup_kernels::MixPlan;
/// # fn main() -> Result<(), mixup_kernels::MixError> {
/// let soft = Tensor::<2>::from_data([[1f32, 0.], [0., 1.]], &Device::flex());
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.5])?;
/// let mixed = mix_rows(&plan, soft)?;
/// assert_eq!(mixed.into_data().try_to_vec::<f32>().unwrap(), [0.75, 0.25, 0.5, 0.5]);
/// # Ok(())
/// # }
/// ```
pub fn mix_rows<const D: usize>(plan: &MixPlan, x: Tensor<D>) -> Result<Tensor<D>> {
    const OP: &str = "mixup_kernels::burn::mix_rows";
    let dims = x.dims();
    float_dtype(x.dtype(), "x", OP)?;
    let Some((&batch, rest)) = dims.split_first() else {
        return Err(invalid("x", format!("{OP}: x must be [batch, ...]")));
    };
    plan.check_batch("x", batch)?;
    let shape = SampleShape::rows(rest.iter().product());
    crate::spec::check_mix(plan, &shape, x.shape().num_elements(), "x")?;
    mix_tensor(plan, &shape, x)
}

/// Soft targets `[B, C]` of `dtype` (f32, f16 or bf16) on the labels' device:
/// `t_ic = (1-ε)(λ_i [c = y_i] + (1-λ_i) [c = y_partner(i)]) + ε/C`. The losses never need them
/// (they work from the labels); they are for a loss of your own.
///
/// ```
/// use burn::tensor::{DType, Device, Int, Tensor};
/// use mixup_kernels::burn::soft_targets;
/// use mixup_kernels::{MixPlan, TargetSpec};
/// # fn main() -> Result<(), mixup_kernels::MixError> {
/// let labels = Tensor::<1, Int>::from_data([0, 1], &Device::flex());
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.75])?;
/// let t = soft_targets(&plan, &TargetSpec::new(2, 0.0)?, labels, DType::F32)?;
/// assert_eq!(t.into_data().try_to_vec::<f32>().unwrap(), [0.75, 0.25, 0.25, 0.75]);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`mixup_cross_entropy`] for the labels; [`MixError::InvalidArgument`] for another `dtype`
/// or a spec other than the plan's.
pub fn soft_targets(
    plan: &MixPlan,
    spec: &TargetSpec,
    labels: Tensor<1, Int>,
    dtype: DType,
) -> Result<Tensor<2>> {
    const OP: &str = "mixup_kernels::burn::soft_targets";
    float_dtype(dtype, "dtype", OP)?;
    crate::spec::check_targets(plan, spec)?;
    let device = labels.device();
    let labels = host_labels(labels, plan, spec.num_classes(), OP)?;
    #[cfg(feature = "burn-cuda")]
    if let Some(ordinal) = cuda::ordinal(&device) {
        return cuda::soft_targets(ordinal, plan, spec, &labels, &device, dtype);
    }
    let shape = [plan.len(), spec.num_classes()];
    let n = crate::error::checked_product("batch × num_classes", &shape)?;
    fn run<T: FloatElement + burn::tensor::Element>(
        plan: &MixPlan,
        spec: &TargetSpec,
        labels: &[u32],
        n: usize,
        shape: [usize; 2],
    ) -> Result<TensorData> {
        let mut out = vec![T::default(); n];
        crate::cpu::soft_targets(plan, spec, labels, &mut out)?;
        Ok(TensorData::new(out, shape))
    }
    let data = match dtype {
        DType::F16 => run::<crate::f16>(plan, spec, &labels, n, shape)?,
        DType::BF16 => run::<crate::bf16>(plan, spec, &labels, n, shape)?,
        _ => run::<f32>(plan, spec, &labels, n, shape)?,
    };
    Ok(Tensor::from_data(data, (&device, dtype)))
}

// ---------------------------------------------------------------------------------------------
// The cross-entropy
// ---------------------------------------------------------------------------------------------

/// The mixup cross-entropy of `logits` (`[B, C]`, f32, f16 or bf16) against the soft targets of
/// `labels` (`[B]` class indices, any int dtype) mixed by `plan`, with the spec's label
/// smoothing: timm's `SoftTargetCrossEntropy` on timm's `Mixup` target, fused (no target tensor
/// is built). Returns `[1]` for [`Reduction::Mean`](crate::Reduction::Mean) and
/// [`Reduction::Sum`](crate::Reduction::Sum) (burn's own losses return `[1]`), the per-sample
/// losses `[B]` for [`Reduction::None`](crate::Reduction::None), in f32.
///
/// On an autodiff device (`device.autodiff()`), `loss.backward()` gives the logits' gradient:
/// the forward pass computes it with the loss in one pass of the crate's fused kernel (the CUDA
/// kernel on burn's CUDA device, the CPU kernel elsewhere), and the
/// backward pass multiplies it by the upstream gradient (see the [module](self) docs for the
/// backends). Without autodiff, or when the logits are not tracked, only the loss is computed.
///
/// # Errors
/// [`MixError::InvalidArgument`] naming the tensor for logits that are not f32/f16/bf16, a class
/// count other than the spec's, labels that are not an int tensor of `[B]`, labels on another
/// device; [`MixError::BatchMismatch`], [`MixError::LabelOutOfRange`] (negative labels
/// included) and a spec other than the plan's, all before any work.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use mixup_kernels::burn::mixup_cross_entropy;
/// use mixup_kernels::{CeSpec, MixPlan, Reduction};
/// # fn main() -> Result<(), mixup_kernels::MixError> {
/// let device = Device::flex().autodiff();
/// let logits = Tensor::<2>::from_data([[2f32, 0., 0.], [0., 1., 0.]], &device).require_grad();
/// let labels = Tensor::<1, Int>::from_data([0, 1], &device);
/// let plan = MixPlan::identity(2)?; // no mixing: plain cross-entropy
/// let spec = CeSpec::new(3, 0.0, Reduction::Mean)?;
/// let loss = mixup_cross_entropy(&plan, &spec, logits.clone(), labels)?;
/// let grad = logits.grad(&loss.backward()).unwrap();
/// assert_eq!(grad.dims(), [2, 3]);
/// # Ok(())
/// # }
/// ```
pub fn mixup_cross_entropy(
    plan: &MixPlan,
    spec: &CeSpec,
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
) -> Result<Tensor<1>> {
    const OP: &str = "mixup_kernels::burn::mixup_cross_entropy";
    loss(plan, LossSpec::Ce(*spec), logits, labels, OP)
}

// ---------------------------------------------------------------------------------------------
// Shared machinery
// ---------------------------------------------------------------------------------------------

/// Both losses after their public function: the checks (the tensors, the spec against the
/// plan, the labels' values), then the fused kernel on the host copy of the logits.
fn loss(
    plan: &MixPlan,
    spec: LossSpec<'_>,
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    op: &'static str,
) -> Result<Tensor<1>> {
    // The spec against the plan first: a spec built for another class count would otherwise be
    // reported as logits of the wrong shape (the logits are right, the spec is not).
    crate::spec::check_targets(plan, spec.targets())?;
    let c = spec.num_classes();
    check_loss_args(plan, c, &logits, &labels, op)?;
    let n = logits.shape().num_elements();
    spec.check(plan, n, &GradOutput::Scalar(1.0))?;
    let labels = host_labels(labels, plan, c, op)?;
    fused_loss(logits, op, &spec, plan, &labels)
}

/// Runs the fused loss kernel on the host copy of `logits` and returns the loss tensor, attached
/// to the autodiff graph when the logits are tracked (the kernel then also writes the gradient
/// for an upstream of 1).
fn fused_loss(
    logits: Tensor<2>,
    op: &'static str,
    spec: &LossSpec<'_>,
    plan: &MixPlan,
    labels: &[u32],
) -> Result<Tensor<1>> {
    let device = logits.device();
    let dims = logits.dims();
    let tracked = logits.is_autodiff() && logits.is_tracked();
    #[cfg(feature = "burn-cuda")]
    if let Some(ordinal) = cuda::ordinal(&device) {
        return device_loss(ordinal, logits, tracked, (spec, plan, labels, op));
    }
    let data = read(logits.clone(), "logits", op)?;
    let dtype = data.dtype();
    let call = (spec, plan, labels, op, dims);
    let (values, grad) = match dtype {
        DType::F32 => host_loss::<f32>(&data, tracked, call)?,
        DType::F16 => host_loss::<crate::f16>(&data, tracked, call)?,
        DType::BF16 => host_loss::<crate::bf16>(&data, tracked, call)?,
        other => return Err(bad_dtype("logits", other, op)),
    };
    drop(data);
    let n = values.len();
    let loss = TensorData::new(values, [n]);
    let Some(grad) = grad else {
        return Ok(Tensor::from_data(loss, (&device, DType::F32)));
    };
    // The backends this feature builds get burn's `Backward` op; any other one the surrogate.
    let mut data = Some((loss, grad));
    let attached = attach::<Flex, NoCheckpointing>(&logits, &mut data)
        .or_else(|| attach::<Flex, BalancedCheckpointing>(&logits, &mut data));
    #[cfg(feature = "burn-cuda")]
    let attached = attached
        .or_else(|| attach::<burn::backend::Cube, NoCheckpointing>(&logits, &mut data))
        .or_else(|| attach::<burn::backend::Cube, BalancedCheckpointing>(&logits, &mut data));
    if let Some(t) = attached {
        return Ok(t);
    }
    // Only a successful attach takes the data, so it is still here.
    let (loss, grad) = data.ok_or_else(|| invalid("logits", format!("{op}: internal")))?;
    Ok(surrogate(logits, loss, grad, &device))
}

/// The kernel of [`fused_loss`] on the logits' host copy `data`, of type `T`: the loss values
/// and, when the logits are `tracked`, the gradient `[B, C]` for an upstream of 1.
fn host_loss<T: FloatElement + burn::tensor::Element>(
    data: &TensorData,
    tracked: bool,
    (spec, plan, labels, op, dims): (&LossSpec<'_>, &MixPlan, &[u32], &'static str, [usize; 2]),
) -> Result<(Vec<f32>, Option<TensorData>)> {
    let x = data
        .as_slice::<T>()
        .map_err(|e| read_err("logits", op, e))?;
    let mut g = tracked.then(|| vec![T::default(); x.len()]);
    let one = GradOutput::Scalar(1.0);
    let values = crate::cpu::run_loss(plan, spec, x, labels, one, g.as_deref_mut())?;
    Ok((values, g.map(|g| TensorData::new(g, dims))))
}

/// The backward step of a fused loss: the gradient kept by the forward pass times the upstream
/// gradient (one value for a reduced loss, one per sample for `Reduction::None`).
#[derive(Debug)]
struct FusedLossBackward;

impl<B: Backend> Backward<B, 1> for FusedLossBackward {
    /// The gradient for an upstream of 1, `[B, C]`, in the logits' dtype.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<B>(&ops.node);
        let [parent] = ops.parents;
        let Some(parent) = parent else { return };
        let grad = ops.state;
        let shape = grad.shape();
        let rows = upstream.shape().num_elements();
        let mut upstream = B::float_reshape(upstream, Shape::new([rows, 1]));
        if upstream.dtype() != grad.dtype() {
            upstream = B::float_cast(upstream, FloatDType::from(grad.dtype()));
        }
        let upstream = B::float_expand(upstream, shape);
        grads.register::<B>(parent.id, B::float_mul(grad, upstream));
    }
}

/// The loss as the output of a [`FusedLossBackward`] op on `Autodiff<B, C>`, when the logits
/// live there (`data`, the loss and the gradient, is taken then); `None` otherwise.
fn attach<B: Backend, C: CheckpointStrategy>(
    logits: &Tensor<2>,
    data: &mut Option<(TensorData, TensorData)>,
) -> Option<Tensor<1>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<B, C>>,
{
    let x = logits.clone().try_into_primitive::<Autodiff<B, C>>().ok()?;
    let (loss, grad) = data.take()?;
    let device = x.primitive().device();
    let out = B::float_from_data(loss, &device);
    Some(backward_op::<B, C>(x, out, || {
        B::float_from_data(grad, &device)
    }))
}

/// `out` (the loss, a `B` primitive) as the output of a [`FusedLossBackward`] op whose parent is
/// the logits `x` and whose state is `grad()` (made only when the logits are tracked).
fn backward_op<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    out: FloatTensor<B>,
    grad: impl FnOnce() -> FloatTensor<B>,
) -> Tensor<1>
where
    DispatchTensor: DispatchKindConversion<Autodiff<B, C>>,
{
    let out = match FusedLossBackward
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(grad(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive::<Autodiff<B, C>>(out)
}

/// The fused loss on burn's CUDA device, on the logits' own memory (see `cuda.rs`): the loss
/// as a new tensor on the logits' device, attached as a [`FusedLossBackward`] op with the
/// gradient the same kernel wrote when the logits are tracked.
#[cfg(feature = "burn-cuda")]
fn device_loss(
    ordinal: usize,
    logits: Tensor<2>,
    tracked: bool,
    call: (&LossSpec<'_>, &MixPlan, &[u32], &'static str),
) -> Result<Tensor<1>> {
    use burn::backend::Cube;
    let op = call.3;
    let device = logits.device();
    let (loss, grad) = cuda::loss(ordinal, &logits, call, tracked)?;
    let Some(grad) = grad else {
        return Ok(cuda::leaf(loss, &device));
    };
    if let Ok(x) = logits
        .clone()
        .try_into_primitive::<Autodiff<Cube, NoCheckpointing>>()
    {
        return Ok(backward_op::<Cube, NoCheckpointing>(x, loss, || grad));
    }
    if let Ok(x) = logits.try_into_primitive::<Autodiff<Cube, BalancedCheckpointing>>() {
        return Ok(backward_op::<Cube, BalancedCheckpointing>(x, loss, || grad));
    }
    Err(invalid(
        "logits",
        format!("{op}: tracked logits on {device:?} are not an autodiff cubecl tensor"),
    ))
}

/// Any other autodiff backend: `(s − detach(s)) + loss` with `s = Σ_c x·G` (per row for
/// `Reduction::None`, over everything otherwise), whose value is the loss exactly and whose
/// gradient with respect to `x` is `G ×` upstream.
fn surrogate(logits: Tensor<2>, loss: TensorData, grad: TensorData, device: &Device) -> Tensor<1> {
    let n = loss.num_elements();
    let dtype = grad.dtype();
    let g = Tensor::<2>::from_data(grad, (device, dtype));
    let loss = Tensor::<1>::from_data(loss, (device, DType::F32));
    let s = (logits * g).sum_dim(1).cast(DType::F32);
    let s: Tensor<1> = if n == 1 { s.sum() } else { s.reshape([n]) };
    // `s − detach(s)` first: exactly 0 for finite `s`, so the value is the loss's own bits.
    (s.clone() - s.detach()) + loss
}

/// Checks the logits and labels of a loss: ranks, dtypes, class count, batch, device.
pub(crate) fn check_loss_args(
    plan: &MixPlan,
    num_classes: usize,
    logits: &Tensor<2>,
    labels: &Tensor<1, Int>,
    op: &'static str,
) -> Result<()> {
    let [b, c] = logits.dims();
    float_dtype(logits.dtype(), "logits", op)?;
    if c != num_classes {
        return Err(invalid(
            "logits",
            format!(
                "{op}: logits must be [batch, {num_classes}] (the spec's classes), got [{b}, {c}]"
            ),
        ));
    }
    plan.check_batch("logits", b)?;
    let [lb] = labels.dims();
    if lb != b {
        return Err(invalid(
            "labels",
            format!(
                "{op}: labels must be [{b}] (one class index per row of the logits), got [{lb}]"
            ),
        ));
    }
    if logits.device().inner() != labels.device().inner() {
        return Err(invalid(
            "labels",
            format!(
                "{op}: labels are on {:?}, the logits on {:?}: move them to one device",
                labels.device(),
                logits.device()
            ),
        ));
    }
    Ok(())
}

/// Host labels as u32, checked against the plan and `0..num_classes` (negative ones included).
pub(crate) fn host_labels(
    labels: Tensor<1, Int>,
    plan: &MixPlan,
    num_classes: usize,
    op: &'static str,
) -> Result<Vec<u32>> {
    let data = read(labels, "labels", op)?;
    let v: Vec<i64> = data.iter::<i64>().collect();
    plan.check_batch("labels", v.len())?;
    crate::spec::check_label_values(&v, num_classes)?;
    Ok(v.into_iter().map(|l| l as u32).collect())
}

fn mix_tensor<const D: usize>(
    plan: &MixPlan,
    shape: &SampleShape,
    x: Tensor<D>,
) -> Result<Tensor<D>> {
    const OP: &str = "mixup_kernels::burn::mix";
    let device = x.device();
    #[cfg(feature = "burn-cuda")]
    if let Some(ordinal) = cuda::ordinal(&device) {
        return cuda::mix(ordinal, plan, shape, x);
    }
    let mut data = read(x, "images", OP)?;
    let dtype = data.dtype();
    let dims = data.shape().clone();
    // The host copy is ours: an involution plan (timm's flip, random pairs) mixes it in place,
    // any other plan into a new buffer.
    fn run<T: Element + burn::tensor::Element>(
        plan: &MixPlan,
        shape: &SampleShape,
        data: &mut TensorData,
        dims: Shape,
    ) -> Result<Option<TensorData>> {
        if plan.is_involution() {
            let x = data
                .as_mut_slice::<T>()
                .map_err(|e| read_err("images", OP, e))?;
            crate::cpu::mix_in_place(plan, shape, x)?;
            return Ok(None);
        }
        let x = data
            .as_slice::<T>()
            .map_err(|e| read_err("images", OP, e))?;
        let mut out = vec![T::default(); x.len()];
        crate::cpu::mix(plan, shape, x, &mut out)?;
        Ok(Some(TensorData::new(out, dims)))
    }
    let out = match dtype {
        DType::F32 => run::<f32>(plan, shape, &mut data, dims)?,
        DType::F16 => run::<crate::f16>(plan, shape, &mut data, dims)?,
        DType::BF16 => run::<crate::bf16>(plan, shape, &mut data, dims)?,
        other => return Err(bad_dtype("images", other, OP)),
    };
    let out = out.unwrap_or(data);
    // Mixed data does not track gradients: on an autodiff device it is a fresh leaf.
    Ok(Tensor::from_data(out, (&device, dtype)))
}

fn read<const D: usize, K>(
    x: Tensor<D, K>,
    what: &'static str,
    op: &'static str,
) -> Result<TensorData>
where
    K: burn::tensor::kind::Basic,
{
    x.try_into_data().map_err(|e| read_err(what, op, e))
}

fn read_err(what: &'static str, op: &'static str, e: impl std::fmt::Debug) -> MixError {
    invalid(
        what,
        format!("{op}: burn could not read `{what}` back to the host: {e:?}"),
    )
}

/// The crate's element type for a burn dtype the kernels take (f32, f16, bf16, u8 pixels).
pub(crate) fn scalar_type(dtype: DType) -> Option<crate::dtype::ScalarType> {
    use crate::dtype::ScalarType;
    match dtype {
        DType::F32 => Some(ScalarType::F32),
        DType::F16 => Some(ScalarType::F16),
        DType::BF16 => Some(ScalarType::BF16),
        DType::U8 => Some(ScalarType::U8),
        _ => None,
    }
}

fn float_dtype(dtype: DType, what: &'static str, op: &'static str) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => Err(bad_dtype(what, other, op)),
    }
}

fn bad_dtype(what: &'static str, dtype: DType, op: &'static str) -> MixError {
    invalid(
        what,
        format!("{op}: `{what}` must be f32, f16 or bf16, got {dtype:?}"),
    )
}

fn invalid(what: &'static str, reason: String) -> MixError {
    MixError::InvalidArgument { what, reason }
}

/// The row pitch (elements from one row of the last dimension to the next) of a tensor of
/// `shape` and `strides` (in elements) stored as row-major rows padded at their end, as cubecl
/// allocates CUDA tensors (`is_contiguous_pitched`); the last dimension itself when dense.
/// `None` for any other layout (transposed, broadcast, overlapping rows), which the CUDA path
/// makes dense first.
#[cfg_attr(not(feature = "burn-cuda"), allow(dead_code))]
pub(crate) fn row_pitch(shape: &[usize], strides: &[usize]) -> Option<usize> {
    let r = shape.len();
    if r == 0 || strides.len() != r || strides[r - 1] != 1 {
        return None;
    }
    let last = shape[r - 1];
    if r == 1 {
        return Some(last);
    }
    let pitch = strides[r - 2];
    // Outer dimensions nest on the padded rows, as a row-major layout would.
    let nested = (0..r - 2).all(|i| Some(strides[i]) == shape[i + 1].checked_mul(strides[i + 1]));
    (pitch >= last && nested).then_some(pitch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_pitch_of_cubecl_layouts() {
        // Dense, and cubecl's pitched rows: 1000 f32 logits padded to 1024, NCHW 224 -> 256.
        assert_eq!(row_pitch(&[4, 1000], &[1000, 1]), Some(1000));
        assert_eq!(row_pitch(&[4, 1000], &[1024, 1]), Some(1024));
        let nchw = [2, 3, 224, 224];
        assert_eq!(
            row_pitch(&nchw, &[3 * 224 * 256, 224 * 256, 256, 1]),
            Some(256)
        );
        assert_eq!(
            row_pitch(&nchw, &[3 * 224 * 224, 224 * 224, 224, 1]),
            Some(224)
        );
        assert_eq!(row_pitch(&[7], &[1]), Some(7));
        // Not rows padded at their end: transposed, broadcast, overlapping, outer dims apart.
        assert_eq!(row_pitch(&[4, 1000], &[1, 4]), None);
        assert_eq!(row_pitch(&[4, 1000], &[0, 1]), None);
        assert_eq!(row_pitch(&[4, 1000], &[999, 1]), None);
        assert_eq!(
            row_pitch(&nchw, &[3 * 224 * 256 + 8, 224 * 256, 256, 1]),
            None
        );
        assert_eq!(row_pitch(&nchw, &[3 * 224 * 256, 224 * 256, 256, 2]), None);
        assert_eq!(row_pitch(&[], &[]), None);
        assert_eq!(row_pitch(&[2, 3], &[3]), None);
    }

    /// On `Autodiff<Flex>` the loss is attached as burn's `Backward` op (not the surrogate), and
    /// the surrogate used for other backends gives the same value and the same gradient.
    #[test]
    fn backward_op_on_flex_and_the_surrogate_agree() {
        let dev = Device::flex().autodiff();
        let x = TensorData::new(vec![1f32, -2., 0.5, 3., 0., -1.], [2, 3]);
        let g = TensorData::new(vec![0.1f32, -0.2, 0.1, 0.3, -0.1, -0.2], [2, 3]);
        for rows in [1usize, 2] {
            let loss = TensorData::new(vec![0.75f32; rows], [rows]);
            let up = TensorData::new(
                (0..rows).map(|i| 2.0 + i as f32).collect::<Vec<_>>(),
                [rows],
            );
            let mut out = Vec::new();
            for op in [true, false] {
                let logits = Tensor::<2>::from_data(x.clone(), &dev).require_grad();
                let l = if op {
                    attach::<Flex, NoCheckpointing>(&logits, &mut Some((loss.clone(), g.clone())))
                        .expect("Autodiff<Flex> takes the Backward op")
                } else {
                    surrogate(logits.clone(), loss.clone(), g.clone(), &dev)
                };
                let value: Vec<f32> = l.to_data().iter::<f32>().collect();
                assert_eq!(value, vec![0.75; rows]);
                let w = Tensor::<1>::from_data(up.clone(), &dev);
                let grad = logits.grad(&(l * w).sum().backward()).expect("a gradient");
                out.push(grad.to_data().iter::<f32>().collect::<Vec<f32>>());
            }
            let gv: Vec<f32> = g.iter::<f32>().collect();
            let ups: Vec<f32> = up.iter::<f32>().collect();
            let want: Vec<f32> = (0..6)
                .map(|k| gv[k] * if rows == 1 { ups[0] } else { ups[k / 3] })
                .collect();
            assert_eq!(out[0], want, "Backward op, {rows} rows");
            for (a, b) in out[1].iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6, "surrogate {:?} vs {want:?}", out[1]);
            }
        }
        // A plain (non-autodiff) tensor is not taken by the op.
        let plain = Tensor::<2>::from_data(x.clone(), &Device::flex());
        let loss = TensorData::new(vec![0f32], [1]);
        let mut data = Some((loss, g));
        assert!(attach::<Flex, NoCheckpointing>(&plain, &mut data).is_none());
        assert!(data.is_some(), "the data is kept for the next attempt");
    }
}
