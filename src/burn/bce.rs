//! The fused mixup binary cross-entropy as a burn autodiff op.

use burn::tensor::{Int, Tensor};

use super::loss;
use crate::error::Result;
use crate::plan::MixPlan;
use crate::spec::{BceSpec, LossSpec};

/// The mixup binary cross-entropy of `logits` (`[B, C]`, f32, f16 or bf16) against the soft
/// targets of `labels` (`[B]` class indices, any int dtype) mixed by `plan`: timm's
/// `BinaryCrossEntropy` on timm's `Mixup` target as [`BceSpec`] describes it
/// (`target_threshold`, `weight`, `pos_weight`, `sum_classes`), fused (no target tensor).
///
/// Returns `[1]` for [`Reduction::Mean`](crate::Reduction::Mean) and [`Reduction::Sum`](crate::Reduction::Sum), the per-sample losses `[B]`
/// (each the sum over classes) for [`Reduction::None`](crate::Reduction::None), in f32 whatever the logits' dtype (a sum
/// over classes overflows f16 quickly). On an autodiff device `loss.backward()` gives the logits'
/// gradient, computed with the loss in one pass (as [`mixup_cross_entropy`](super::mixup_cross_entropy)).
///
/// # Errors
/// As [`mixup_cross_entropy`](super::mixup_cross_entropy).
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use mixup_kernels::burn::mixup_binary_cross_entropy;
/// use mixup_kernels::{BceSpec, MixPlan, Reduction};
/// # fn main() -> Result<(), mixup_kernels::MixError> {
/// let device = Device::flex().autodiff();
/// let logits = Tensor::<2>::from_data([[2f32, 0., -1.], [0., 1., 0.]], &device).require_grad();
/// let labels = Tensor::<1, Int>::from_data([0, 1], &device);
/// let plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
/// let spec = BceSpec::new(3, 0.1, Reduction::Mean)?;
/// let loss = mixup_binary_cross_entropy(&plan, &spec, logits.clone(), labels)?;
/// let grad = logits.grad(&loss.backward()).unwrap();
/// assert_eq!(grad.dims(), [2, 3]);
/// # Ok(())
/// # }
/// ```
pub fn mixup_binary_cross_entropy(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
) -> Result<Tensor<1>> {
    const OP: &str = "mixup_kernels::burn::mixup_binary_cross_entropy";
    loss(plan, LossSpec::bce(spec), logits, labels, OP)
}
