//! The fused mixup binary cross-entropy as a candle op (CPU tensors, and CUDA tensors with the
//! `candle-cuda` feature).

use std::borrow::Cow;

use candle_core::{Result, Tensor};

use super::{check_loss_args, loss};
use crate::plan::MixPlan;
use crate::spec::{BceSpec, LossSpec};

/// The mixup binary cross-entropy of `logits` (`[B, C]`, f32, f16 or bf16) against the soft
/// targets of `labels` (`[B]` class indices, u32 or i64; u8 is taken too) mixed by `plan`: timm's `BinaryCrossEntropy` on
/// timm's `Mixup` target, as [`BceSpec`] describes it, fused (no target tensor is built).
///
/// Returns a scalar for [`Reduction::Mean`](crate::Reduction::Mean) and [`Reduction::Sum`](crate::Reduction::Sum), the per-sample losses
/// `[B]` (each the sum over classes) for [`Reduction::None`](crate::Reduction::None), in f32 whatever the logits' dtype
/// (a sum over classes overflows f16 quickly: 256 × 1000 elements of `ln 2` is 177 000, past
/// f16's 65 504; PyTorch's autocast runs this loss in f32 too).
/// `loss.backward()` gives the logits' gradient. On the CPU the forward pass computes it in the
/// same pass as the loss for an upstream gradient of 1 and keeps it, and any other grad_output
/// gradient recomputes it in one pass, so every element is rounded once.
///
/// With the `candle-cuda` feature, tensors on a CUDA device run the crate's CUDA kernel on the
/// device's own stream, as [`mixup_cross_entropy`](super::mixup_cross_entropy) does: the forward
/// pass computes the loss only, and `backward()` runs the fused kernel once, reading the grad_output
/// gradient from device memory (the host never waits; a non-finite upstream is not checked
/// there, it gives a non-finite gradient). Labels are converted to u32 on the device (candle's
/// `to_dtype`, see `mixup_cross_entropy` for i64) and a label out of range is counted by the
/// kernel and reported by [`check_device_labels`](super::check_device_labels). The spec's
/// `weight` and `pos_weight` go to the device with the first call on each device (and host
/// thread, on candle's per-thread stream) and stay there while the calls pass an equal spec: a
/// new spec uploads its two `[C]` arrays again, with asynchronous copies on the same stream (no
/// host synchronization).
///
/// # Errors
/// Those of [`mixup_cross_entropy`](super::mixup_cross_entropy), the same checks: candle's
/// shape, rank, dtype and device errors for tensors that do not fit; the crate's
/// [`MixError`](crate::MixError) (wrapped) for a plan of another batch, a spec other than the
/// plan's and labels out of range or negative (on the CPU, before any work; on a GPU, labels out
/// of range are reported by `check_device_labels` instead);
/// [`MixError::Unsupported`](crate::MixError::Unsupported) for tensors on a GPU when the crate
/// was built without the `candle-cuda` feature (move the logits to the CPU, or enable it), and
/// for devices other than the CPU and CUDA.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use mixup_kernels::candle::mixup_binary_cross_entropy;
/// use mixup_kernels::{BceSpec, MixPlan, Reduction};
/// # fn main() -> candle_core::Result<()> {
/// let logits = Var::new(&[[2f32, 0., -1.], [0., 1., 0.]], &Device::Cpu)?;
/// let labels = Tensor::new(&[0u32, 1], &Device::Cpu)?;
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let spec = BceSpec::new(3, 0.1, Reduction::Mean)?;
/// let loss = mixup_binary_cross_entropy(&plan, &spec, logits.as_tensor(), &labels)?;
/// let grad = loss.backward()?.remove(logits.as_tensor()).unwrap();
/// assert_eq!(grad.dims(), [2, 3]);
/// # Ok(())
/// # }
/// ```
pub fn mixup_binary_cross_entropy(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "mixup_kernels::mixup_binary_cross_entropy";
    check_loss_args(plan, spec.targets(), logits, labels, OP)?;
    let spec = LossSpec::Bce(Cow::Owned(spec.clone()));
    loss::apply(plan, spec, logits, labels)
}
