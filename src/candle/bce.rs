//! The fused mixup binary cross-entropy as a candle op (CPU tensors, and CUDA tensors with the
//! `candle-cuda` feature).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, DType, Device, Error, Layout as CLayout, Result, Shape, Tensor,
};

use super::{
    check_labels_tensor, check_logits, contiguous, device_labels, host_labels, same_device,
};
use crate::dtype::FloatElement;
use crate::error::MixError;
use crate::plan::MixPlan;
use crate::spec::{BceSpec, GradOutput, Reduction};

/// The mixup binary cross-entropy of `logits` (`[B, C]`, f32, f16 or bf16) against the soft
/// targets of `labels` (`[B]` class indices, u32 or i64; u8 is taken too) mixed by `plan`: timm's `BinaryCrossEntropy` on
/// timm's `Mixup` target, as [`BceSpec`] describes it, fused (no target tensor is built).
///
/// Returns a scalar for [`Reduction::Mean`] and [`Reduction::Sum`], the per-sample losses
/// `[B]` (each the sum over classes) for [`Reduction::None`], in f32 whatever the logits' dtype
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
/// candle's shape, rank, dtype and device errors for tensors that do not fit; the crate's
/// [`MixError`] (wrapped) for a plan of another batch, a spec other than the plan's and labels
/// out of range or negative (on the CPU, before any work; on a GPU, labels out of range are reported by `check_device_labels` instead);
/// [`MixError::Unsupported`] for tensors on a GPU when the crate was built without the
/// `candle-cuda` feature (move the logits to the CPU, or enable it), and for devices other than
/// the CPU and CUDA.
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
    check_logits(logits, labels, OP)?;
    let dims = logits.dims();
    let c = spec.num_classes();
    if dims[1] != c {
        return Err(Error::ShapeMismatchBinaryOp {
            lhs: logits.shape().clone(),
            rhs: Shape::from((dims[0], c)),
            op: OP,
        }
        .bt());
    }
    plan.check_batch(dims[0])?;
    check_labels_tensor(labels, plan, OP)?;
    same_device(logits, labels, OP)?;
    let device = logits.device();
    if !(device.is_cpu() || (cfg!(feature = "candle-cuda") && device.is_cuda())) {
        let how = if device.is_cuda() {
            "; build mixup-kernels with the `candle-cuda` feature for CUDA tensors"
        } else {
            ""
        };
        return Err(MixError::Unsupported(format!(
            "{OP} runs on CPU and CUDA tensors (logits are on {:?}){how}",
            device.location()
        ))
        .into());
    }
    crate::spec::check_bce(plan, spec, logits.elem_count(), &GradOutput::Scalar(1.0))?;
    let logits = logits.contiguous()?;
    let labels = device_labels(labels)?;
    let track = logits.track_op();
    let op = MixupBceOp {
        plan: plan.clone(),
        spec: spec.clone(),
        // As the CE: on a GPU the forward pass computes the loss only (keeping the gradient for
        // an upstream of 1 would need the upstream on the host, a wait for the stream).
        want_grad: track && logits.device().is_cpu(),
        grad: Mutex::new(None),
    };
    if track {
        logits.apply_op2_arc(&labels, Arc::new(Box::new(op)))
    } else {
        logits.apply_op2_no_bwd(&labels, &op)
    }
}

/// The op: f32 output (see `MixupCeOp` for why), the gradient for an upstream of 1 kept from
/// the forward pass (on the CPU).
pub(super) struct MixupBceOp {
    pub(super) plan: MixPlan,
    pub(super) spec: BceSpec,
    want_grad: bool,
    grad: Mutex<Option<Tensor>>,
}

impl MixupBceOp {
    /// The output shape: a scalar, or `[B]` per-sample losses for `Reduction::None`.
    pub(super) fn out_shape(&self) -> Shape {
        match self.spec.reduction() {
            Reduction::None => Shape::from(self.plan.len()),
            Reduction::Mean | Reduction::Sum => Shape::from(()),
        }
    }

    /// Loss values (the reduced loss, or per-sample losses) and, if asked, the gradient.
    fn host<T: FloatElement>(
        &self,
        logits: &[T],
        labels: &[u32],
        grad_output: GradOutput<'_>,
        grad: Option<&mut [T]>,
    ) -> Result<Vec<f32>> {
        let (plan, spec) = (&self.plan, &self.spec);
        let mut losses = vec![0f32; plan.len()];
        let per_sample = spec.reduction() == Reduction::None;
        let out = per_sample.then_some(losses.as_mut_slice());
        let loss = match grad {
            Some(g) => crate::cpu::mixup_bce(plan, spec, logits, labels, grad_output, out, g)?,
            None => crate::cpu::mixup_bce_forward(plan, spec, logits, labels, out)?,
        };
        // `None` exactly for Reduction::None, whose result is the per-sample losses.
        Ok(loss.map_or(losses, |l| vec![l]))
    }

    fn fwd<T: FloatElement + candle_core::WithDType>(
        &self,
        logits: &[T],
        labels: &[u32],
    ) -> Result<CpuStorage> {
        let up = GradOutput::Scalar(1.0);
        let values = if self.want_grad {
            let mut grad = vec![T::default(); logits.len()];
            let v = self.host(logits, labels, up, Some(&mut grad))?;
            let shape = (self.plan.len(), self.spec.num_classes());
            *self.grad.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Tensor::from_vec(grad, shape, &Device::Cpu)?);
            v
        } else {
            self.host(logits, labels, up, None)?
        };
        Ok(CpuStorage::F32(values))
    }

    /// The gradient for another upstream gradient, recomputed from the logits in one pass.
    fn regrad<T: FloatElement + candle_core::WithDType>(
        &self,
        logits: &Tensor,
        labels: &[u32],
        up: &[f32],
    ) -> Result<Tensor> {
        let z: Vec<T> = logits.flatten_all()?.to_vec1()?;
        let grad_output = match self.spec.reduction() {
            Reduction::None => GradOutput::PerSample(up),
            Reduction::Mean | Reduction::Sum => {
                GradOutput::Scalar(up.first().copied().unwrap_or(1.0))
            }
        };
        let mut grad = vec![T::default(); z.len()];
        self.host(&z, labels, grad_output, Some(&mut grad))?;
        Tensor::from_vec(grad, logits.shape(), &Device::Cpu)
    }
}

impl CustomOp2 for MixupBceOp {
    fn name(&self) -> &'static str {
        "mixup-kernels-mixup-bce"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &CLayout,
        s2: &CpuStorage,
        l2: &CLayout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let labels = host_labels(s2, l2, self.spec.num_classes(), name)?;
        let out = match s1 {
            CpuStorage::F32(v) => self.fwd(contiguous(v, l1, name)?, &labels)?,
            CpuStorage::F16(v) => self.fwd(contiguous(v, l1, name)?, &labels)?,
            CpuStorage::BF16(v) => self.fwd(contiguous(v, l1, name)?, &labels)?,
            other => return Err(Error::UnsupportedDTypeForOp(other.dtype(), name).bt()),
        };
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
        super::cuda::mixup_bce_fwd(self, s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        #[cfg(feature = "candle-cuda")]
        if logits.device().is_cuda() {
            // One fused pass reading the upstream from device memory: no host read, no stream
            // synchronization (out-of-range labels wait for `check_device_labels`).
            let up = grad_res
                .detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .contiguous()?;
            let g = logits.detach().contiguous()?.apply_op3_no_bwd(
                &labels.contiguous()?,
                &up,
                &BceGradOp { bce: self },
            )?;
            return Ok((Some(g), None));
        }
        let up: Vec<f32> = grad_res.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let kept = self.grad.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(g) = kept.filter(|_| up.iter().all(|&u| u == 1.0)) {
            return Ok((Some(g), None));
        }
        // A non-finite upstream gradient (a diverged loss scale...) gets the same readable error
        // as a direct call, before any work.
        let grad_output = match self.spec.reduction() {
            Reduction::None => GradOutput::PerSample(&up),
            Reduction::Mean | Reduction::Sum => {
                GradOutput::Scalar(up.first().copied().unwrap_or(1.0))
            }
        };
        crate::spec::check_bce(&self.plan, &self.spec, logits.elem_count(), &grad_output)?;
        let labels = match labels.dtype() {
            DType::I64 => {
                let v: Vec<i64> = labels.to_vec1()?;
                crate::spec::check_label_values(&v, self.spec.num_classes())?;
                v.into_iter().map(|l| l as u32).collect()
            }
            _ => labels.to_dtype(DType::U32)?.to_vec1::<u32>()?,
        };
        let logits = logits.detach();
        let g = match logits.dtype() {
            DType::F32 => self.regrad::<f32>(&logits, &labels, &up)?,
            DType::F16 => self.regrad::<half::f16>(&logits, &labels, &up)?,
            DType::BF16 => self.regrad::<half::bf16>(&logits, &labels, &up)?,
            other => return Err(Error::UnsupportedDTypeForOp(other, self.name()).bt()),
        };
        Ok((Some(g), None))
    }
}

/// The gradient alone for the upstream gradient given as the third argument (f32, one value or
/// one per sample): the backward pass on a GPU.
#[cfg(feature = "candle-cuda")]
pub(super) struct BceGradOp<'a> {
    pub(super) bce: &'a MixupBceOp,
}

#[cfg(feature = "candle-cuda")]
impl candle_core::CustomOp3 for BceGradOp<'_> {
    fn name(&self) -> &'static str {
        "mixup-kernels-mixup-bce-grad"
    }

    /// The same gradient on host storage (the backward pass on the CPU does not use this op,
    /// but the result is the one the CPU path gives).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &CLayout,
        s2: &CpuStorage,
        l2: &CLayout,
        s3: &CpuStorage,
        l3: &CLayout,
    ) -> Result<(CpuStorage, Shape)> {
        fn grad<T: FloatElement + candle_core::WithDType>(
            op: &MixupBceOp,
            logits: &[T],
            labels: &[u32],
            up: &[f32],
        ) -> Result<CpuStorage> {
            let grad_output = match op.spec.reduction() {
                Reduction::None => GradOutput::PerSample(up),
                Reduction::Mean | Reduction::Sum => {
                    GradOutput::Scalar(up.first().copied().unwrap_or(1.0))
                }
            };
            let mut g = vec![T::default(); logits.len()];
            op.host(logits, labels, grad_output, Some(&mut g))?;
            Ok(T::to_cpu_storage_owned(g))
        }
        let name = self.name();
        let labels = host_labels(s2, l2, self.bce.spec.num_classes(), name)?;
        let up = match s3 {
            CpuStorage::F32(v) => contiguous(v, l3, name)?,
            other => return Err(Error::UnsupportedDTypeForOp(other.dtype(), name).bt()),
        };
        let out = match s1 {
            CpuStorage::F32(v) => grad(self.bce, contiguous(v, l1, name)?, &labels, up)?,
            CpuStorage::F16(v) => grad(self.bce, contiguous(v, l1, name)?, &labels, up)?,
            CpuStorage::BF16(v) => grad(self.bce, contiguous(v, l1, name)?, &labels, up)?,
            other => return Err(Error::UnsupportedDTypeForOp(other.dtype(), name).bt()),
        };
        Ok((out, l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &CLayout,
        s2: &candle_core::CudaStorage,
        l2: &CLayout,
        s3: &candle_core::CudaStorage,
        l3: &CLayout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::mixup_bce_grad(self.bce, s1, l1, s2, l2, s3, l3)
    }
}
