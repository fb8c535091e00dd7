//! The fused mixup binary cross-entropy as a burn autodiff op.

use burn::tensor::{Int, Tensor};

use super::{HostGrad, HostLogits, check_loss_args, fused_loss, host_labels};
use crate::dtype::FloatElement;
use crate::error::Result;
use crate::plan::MixPlan;
use crate::spec::{BceSpec, GradOutput, Reduction};

/// The mixup binary cross-entropy of `logits` (`[B, C]`, f32, f16 or bf16) against the soft
/// targets of `labels` (`[B]` class indices, any int dtype) mixed by `plan`: timm's
/// `BinaryCrossEntropy` on timm's `Mixup` target as [`BceSpec`] describes it
/// (`target_threshold`, `weight`, `pos_weight`, `sum_classes`), fused (no target tensor).
///
/// Returns `[1]` for [`Reduction::Mean`] and [`Reduction::Sum`], the per-sample losses `[B]`
/// (each the sum over classes) for [`Reduction::None`], in f32 whatever the logits' dtype (a sum
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
    check_loss_args(plan, spec.num_classes(), &logits, &labels, OP)?;
    crate::spec::check_bce(
        plan,
        spec,
        logits.shape().num_elements(),
        &GradOutput::Scalar(1.0),
    )?;
    let labels = host_labels(labels, plan, spec.num_classes(), OP)?;
    let (plan, spec) = (plan.clone(), spec.clone());
    fused_loss(logits, OP, move |x, g| match x {
        HostLogits::F32(x) => bce_host(&plan, &spec, x, &labels, g.map(HostGrad::f32)),
        HostLogits::F16(x) => bce_host(&plan, &spec, x, &labels, g.map(HostGrad::f16)),
        HostLogits::BF16(x) => bce_host(&plan, &spec, x, &labels, g.map(HostGrad::bf16)),
    })
}

fn bce_host<T: FloatElement>(
    plan: &MixPlan,
    spec: &BceSpec,
    logits: &[T],
    labels: &[u32],
    grad: Option<&mut [T]>,
) -> Result<Vec<f32>> {
    let mut losses = vec![0f32; plan.len()];
    let per_sample = spec.reduction() == Reduction::None;
    let loss_out = per_sample.then_some(losses.as_mut_slice());
    let one = GradOutput::Scalar(1.0);
    let loss = match grad {
        Some(g) => crate::cpu::mixup_bce(plan, spec, logits, labels, one, loss_out, g)?,
        None => crate::cpu::mixup_bce_forward(plan, spec, logits, labels, loss_out)?,
    };
    Ok(loss.map_or(losses, |l| vec![l]))
}
