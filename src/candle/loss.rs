//! The two fused losses (the cross-entropy and the binary cross-entropy) as candle ops: one op
//! and one gradient op for both, the loss chosen by its spec ([`LossSpec`]). The public
//! functions (`mixup_cross_entropy` in mod.rs, `mixup_binary_cross_entropy` in bce.rs) check
//! their arguments and hand the tensors to [`apply`].

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Error, Layout as CLayout, Result, Shape,
    Tensor,
};

use super::{contiguous, device_labels, host_labels};
use crate::cpu::run_loss;
use crate::dtype::FloatElement;
use crate::plan::MixPlan;
use crate::spec::{GradOutput, LossSpec, Reduction};

/// The op names of a loss, and its upstream gradient as the kernels take it.
impl LossSpec<'_> {
    /// The op's name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            LossSpec::Ce(_) => "mixup-kernels-mixup-ce",
            LossSpec::Bce(_) => "mixup-kernels-mixup-bce",
        }
    }

    /// The name of the op computing the gradient alone.
    pub(crate) fn grad_name(&self) -> &'static str {
        match self {
            LossSpec::Ce(_) => "mixup-kernels-mixup-ce-grad",
            LossSpec::Bce(_) => "mixup-kernels-mixup-bce-grad",
        }
    }

    /// The upstream gradient `up` (one value, or one per sample) as the kernels take it.
    fn grad_output<'a>(&self, up: &'a [f32]) -> GradOutput<'a> {
        match self.reduction() {
            Reduction::None => GradOutput::PerSample(up),
            Reduction::Mean | Reduction::Sum => {
                GradOutput::Scalar(up.first().copied().unwrap_or(1.0))
            }
        }
    }
}

/// Applies the loss op to `logits` (`[B, C]`) and `labels` (`[B]`), whose shapes, dtypes and
/// devices the caller checked: the spec is checked against the plan here, the op is attached to
/// the graph when the logits track gradients. The output is f32.
pub(crate) fn apply(
    plan: &MixPlan,
    spec: LossSpec<'static>,
    logits: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    spec.check(plan, logits.elem_count(), &GradOutput::Scalar(1.0))?;
    let logits = logits.contiguous()?;
    let labels = device_labels(labels)?;
    let track = logits.track_op();
    let op = MixupLossOp {
        plan: plan.clone(),
        spec,
        // On the CPU the forward pass also computes the gradient for an upstream of 1 and keeps
        // it, and backward reads the upstream on the host for free. On a GPU, reading the
        // grad_output would wait for the stream every step: there the forward pass computes the
        // loss only, and backward runs the fused kernel with the upstream read on the device.
        want_grad: track && logits.device().is_cpu(),
        grad: Mutex::new(None),
    };
    if track {
        logits.apply_op2_arc(&labels, Arc::new(Box::new(op)))
    } else {
        logits.apply_op2_no_bwd(&labels, &op)
    }
}

/// A fused mixup loss. Its output is f32 (the CE's public function converts it to the logits'
/// dtype, so candle's own `to_dtype` carries the upstream gradient back as f32). On the CPU the
/// forward pass computes the loss and, when the logits track gradients, the gradient for an
/// upstream of 1 in the same pass, kept in `grad` until the backward pass asks for it.
pub(crate) struct MixupLossOp {
    pub(crate) plan: MixPlan,
    pub(crate) spec: LossSpec<'static>,
    want_grad: bool,
    grad: Mutex<Option<Tensor>>,
}

impl MixupLossOp {
    /// The output shape: a scalar, or `[B]` per-sample losses for `Reduction::None`.
    pub(crate) fn out_shape(&self) -> Shape {
        match self.spec.reduction() {
            Reduction::None => Shape::from(self.plan.len()),
            Reduction::Mean | Reduction::Sum => Shape::from(()),
        }
    }

    fn fwd_cpu<T: FloatElement + candle_core::WithDType>(
        &self,
        logits: &[T],
        labels: &[u32],
    ) -> Result<CpuStorage> {
        let (plan, spec) = (&self.plan, &self.spec);
        let up = GradOutput::Scalar(1.0);
        let values = if self.want_grad {
            let mut grad = vec![T::default(); logits.len()];
            let v = run_loss(plan, spec, logits, labels, up, Some(&mut grad))?;
            let g = Tensor::from_vec(grad, (plan.len(), spec.num_classes()), &Device::Cpu)?;
            // A poisoned lock only means another thread panicked mid-store; the value is still
            // a whole tensor or None, so take the guard either way.
            *self.grad.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
            v
        } else {
            run_loss(plan, spec, logits, labels, up, None)?
        };
        Ok(CpuStorage::F32(values))
    }

    /// The gradient alone for the upstream gradient `up`, recomputed from the logits.
    fn grad_cpu<T: FloatElement + candle_core::WithDType>(
        &self,
        logits: &[T],
        labels: &[u32],
        up: &[f32],
    ) -> Result<CpuStorage> {
        let (plan, spec) = (&self.plan, &self.spec);
        let mut grad = vec![T::default(); logits.len()];
        let up = spec.grad_output(up);
        run_loss(plan, spec, logits, labels, up, Some(&mut grad))?;
        Ok(T::to_cpu_storage_owned(grad))
    }

    /// The CPU pass of either op (`name`: the op's) on the storage of the logits, the labels
    /// and, for the gradient op, the upstream gradient (f32): the forward pass when `up` is
    /// `None`, else the gradient alone for that upstream gradient.
    fn cpu(
        &self,
        (s1, l1): (&CpuStorage, &CLayout),
        (s2, l2): (&CpuStorage, &CLayout),
        up: Option<(&CpuStorage, &CLayout)>,
        name: &'static str,
    ) -> Result<CpuStorage> {
        fn typed<T: FloatElement + candle_core::WithDType>(
            op: &MixupLossOp,
            logits: &[T],
            labels: &[u32],
            up: Option<&[f32]>,
        ) -> Result<CpuStorage> {
            match up {
                None => op.fwd_cpu(logits, labels),
                Some(up) => op.grad_cpu(logits, labels, up),
            }
        }
        let labels = &host_labels(s2, l2, self.spec.num_classes(), name)?;
        let up = match up {
            None => None,
            Some((CpuStorage::F32(v), l3)) => Some(contiguous(v, l3, name)?),
            Some((other, _)) => {
                return Err(Error::UnsupportedDTypeForOp(other.dtype(), name).bt());
            }
        };
        match s1 {
            CpuStorage::F32(v) => typed(self, contiguous(v, l1, name)?, labels, up),
            CpuStorage::F16(v) => typed(self, contiguous(v, l1, name)?, labels, up),
            CpuStorage::BF16(v) => typed(self, contiguous(v, l1, name)?, labels, up),
            other => Err(Error::UnsupportedDTypeForOp(other.dtype(), name).bt()),
        }
    }
}

impl CustomOp2 for MixupLossOp {
    fn name(&self) -> &'static str {
        self.spec.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &CLayout,
        s2: &CpuStorage,
        l2: &CLayout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.cpu((s1, l1), (s2, l2), None, self.name())?;
        Ok((out, self.out_shape()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &CLayout,
        s2: &candle_core::CudaStorage,
        l2: &CLayout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::loss_fwd(self, s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The upstream gradient has the output's shape (one value, or one per sample) and is
        // f32 (the output's dtype; the CE's `to_dtype` hands it back as f32).
        let upstream = grad_res.detach().to_dtype(DType::F32)?.flatten_all()?;
        let grad_op = LossGradOp { op: self };
        let recompute = |up: &Tensor| {
            let logits = logits.detach().contiguous()?;
            logits.apply_op3_no_bwd(&labels.contiguous()?, &up.contiguous()?, &grad_op)
        };
        if !logits.device().is_cpu() {
            // GPU: one fused pass that reads the upstream from device memory. No host read, no
            // stream synchronization: out-of-range device labels are reported by
            // `check_device_labels`, whenever the caller asks.
            return Ok((Some(recompute(&upstream)?), None));
        }
        // CPU: reading the grad_output costs nothing next to the B×C gradient.
        let up: Vec<f32> = upstream.to_vec1()?;
        let kept = self.grad.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(g) = kept.filter(|_| up.iter().all(|&u| u == 1.0)) {
            return Ok((Some(g), None));
        }
        // Any other grad_output (a weighted loss, a sum of losses...): one more fused pass with
        // the real grad_output, so each element is still rounded once, as the reference defines.
        // A non-finite one (a diverged loss scale...) gets the same readable error as a direct
        // call, before any work.
        let grad_output = self.spec.grad_output(&up);
        self.spec
            .check(&self.plan, logits.elem_count(), &grad_output)?;
        Ok((Some(recompute(&upstream)?), None))
    }
}

/// The gradient alone for the upstream gradient given as the third argument (f32, one value or
/// one per sample): the backward pass on a GPU, and on the CPU when that upstream is not 1.
pub(crate) struct LossGradOp<'a> {
    pub(crate) op: &'a MixupLossOp,
}

impl CustomOp3 for LossGradOp<'_> {
    fn name(&self) -> &'static str {
        self.op.spec.grad_name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &CLayout,
        s2: &CpuStorage,
        l2: &CLayout,
        s3: &CpuStorage,
        l3: &CLayout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self
            .op
            .cpu((s1, l1), (s2, l2), Some((s3, l3)), self.name())?;
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &CLayout,
        s2: &candle_core::CudaStorage,
        l2: &CLayout,
        s3: &candle_core::CudaStorage,
        l3: &CLayout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::loss_grad(self.op, s1, l1, s2, l2, s3, l3)
    }
}
