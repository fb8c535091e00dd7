//! The one device path of the two fused losses, the cross-entropy (`mixup_ce.rs`) and the
//! binary cross-entropy (`mixup_bce.rs`): the checks made before anything is enqueued, the
//! empty batch, the scratch per-sample losses, and the buffers behind the safe entry points
//! (`CudaMixer::mixup_ce*`, `CudaMixer::mixup_bce*`). What differs between the two (the spec,
//! its host checks, its kernel and argument struct) comes in a [`DeviceLoss`].

use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};

use crate::dtype::ScalarType;
use crate::error::{MixError, Result, Rows, check_len, check_rows};
use crate::plan::MixPlan;
use crate::spec::{CeSpec, GradOutput, LossSpec, Reduction};

use super::context::{CudaMixer, check_owner, driver_err};
use super::mixup_bce::{DeviceBceSpec, bce_call};
use super::mixup_ce::{CeBuffers, DeviceGradOutput, RawGradOutput, ce_call};
use super::plan::DevicePlan;
use super::soft_targets::require_float;

impl LossSpec<'_> {
    /// The checks of [`LossSpec::check`], with a device grad_output standing in for its host
    /// form.
    pub(crate) fn check_device(
        &self,
        plan: &MixPlan,
        logits_len: usize,
        up: &RawGradOutput,
    ) -> Result<usize> {
        use RawGradOutput::*;
        let host = match *up {
            Scalar(g) => GradOutput::Scalar(g),
            Device(_) | PerSample(_) => GradOutput::Scalar(1.0),
        };
        let total = self.check(plan, logits_len, &host)?;
        if matches!(up, PerSample(_)) && self.reduction() != Reduction::None {
            // The same error the host checks give for a host per-sample grad_output.
            return Err(MixError::InvalidArgument {
                what: "grad_output",
                reason: "a per-sample grad_output (GradOutput::PerSample) needs Reduction::None"
                    .into(),
            });
        }
        Ok(total)
    }
}

/// Which loss a device call runs, with its spec as the kernel reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DeviceLoss<'a> {
    Ce(&'a CeSpec),
    /// The BCE spec with its class weights on the device.
    Bce(&'a DeviceBceSpec),
}

impl<'a> DeviceLoss<'a> {
    fn host(self) -> LossSpec<'a> {
        match self {
            DeviceLoss::Ce(s) => LossSpec::Ce(*s),
            DeviceLoss::Bce(d) => LossSpec::bce(d.spec()),
        }
    }
}

/// The logits' row stride in elements for `classes` classes: `ld` when given (a pitched
/// tensor's padded rows, read in place: burn's CUDA tensors), else C.
///
/// # Errors
/// [`MixError::InvalidArgument`] `logits` when `ld < C`, when the gradient is to be written over
/// logits whose rows are not dense (the gradient is always dense), or when `B` rows `ld` apart
/// overflow the address space.
pub(crate) fn row_stride(
    batch: usize,
    classes: usize,
    ld: Option<usize>,
    bufs: &CeBuffers,
) -> Result<u64> {
    let Some(ld) = ld else {
        return Ok(classes as u64);
    };
    let bad = |reason: String| MixError::InvalidArgument {
        what: "logits",
        reason,
    };
    if ld < classes {
        return Err(bad(format!(
            "a row stride of {ld} elements is shorter than a row of {classes} classes"
        )));
    }
    if ld != classes && bufs.grad == Some(bufs.logits) {
        return Err(bad(format!(
            "the gradient (dense, [B, C]) cannot be written over logits whose rows are {ld} \
             elements apart for {classes} classes"
        )));
    }
    batch
        .saturating_sub(1)
        .checked_mul(ld)
        .and_then(|x| x.checked_add(classes))
        .ok_or_else(|| bad(format!("{batch} rows {ld} elements apart overflow")))?;
    Ok(ld as u64)
}

/// Validates and launches a fused loss on raw device addresses: the one launch behind the safe
/// entry points of both losses and [`super::raw::mixup_ce`] / [`super::raw::mixup_bce`].
///
/// `ld`: the logits' rows that many elements apart (burn's padded CUDA tensors; `None`: dense,
/// C); the gradient is dense, and `logits_len` is B·C either way.
///
/// # Safety
/// Every address in `bufs` holds what the kernel reads or writes for `plan.len()` rows of the
/// spec's classes of `dtype` (the logits `(B - 1) · ld + C` elements), on the mixer's device;
/// the grad_output likewise (see [`super::raw::mixup_ce`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch(
    m: &CudaMixer,
    plan: &DevicePlan,
    spec: DeviceLoss<'_>,
    dtype: ScalarType,
    logits_len: usize,
    bufs: &CeBuffers,
    grad_output: RawGradOutput,
    ld: Option<usize>,
) -> Result<()> {
    require_float(dtype, "logits")?;
    // The objects' pairing first, for every batch (the empty one too): the plan and a BCE
    // spec made with this mixer, the mixer used on its own thread's stream (`enqueue` checks
    // that again, but the empty batch's memset and the scratch buffer come before it).
    check_owner(m.owner(), "mixer")?;
    if let DeviceLoss::Bce(dspec) = &spec {
        dspec.check_for(m)?;
    }
    let plan_ptr = plan.device_ptr_for(m)?;
    let host = spec.host();
    host.check_device(plan.plan(), logits_len, &grad_output)?;
    let ld = row_stride(plan.len(), host.num_classes(), ld, bufs)?;
    let outputs = (
        bufs.grad.is_some(),
        bufs.loss.is_some(),
        bufs.losses.is_some(),
    );
    crate::spec::check_loss_outputs(host.reduction(), outputs.0, outputs.1, outputs.2)?;
    let b = plan.len();
    if b == 0 {
        // Sum or None over no sample: the loss is 0 (Mean was rejected above).
        if let Some(loss) = bufs.loss {
            // A raw driver call: the context must be current on this thread (a worker thread
            // that never touched CUDA has none), as cudarc's safe calls make it.
            m.stream()
                .context()
                .bind_to_thread()
                .map_err(driver_err("binding the CUDA context"))?;
            // SAFETY: `loss` addresses one f32 per the contract.
            unsafe { cudarc::driver::result::memset_d8_async(loss, 0, 4, m.stream().cu_stream()) }
                .map_err(driver_err("writing the loss"))?;
        }
        return Ok(());
    }
    // The scratch guard lives until the launch below is enqueued (see `scratch_f32`).
    let (losses, _scratch) = match (bufs.losses, bufs.loss) {
        (Some(p), _) => (p, None),
        // The reduced loss is summed from per-sample losses: scratch ones when the caller
        // keeps none.
        (None, Some(_)) => {
            let (p, guard) = m.scratch_f32(b)?;
            (p, Some(guard))
        }
        // The gradient only: the kernels write no per-sample loss (address 0).
        (None, None) => (0, None),
    };
    match spec {
        DeviceLoss::Ce(spec) => {
            let (kernel, args, cfg) = ce_call(
                spec,
                dtype,
                b,
                &m.launch_env(),
                bufs,
                losses,
                plan_ptr,
                m.flags_ptr(),
                &grad_output,
                ld,
            );
            // SAFETY: `args` is `CeArgs`; addresses valid per the contract; the block kernel's
            // shared-memory limit was raised when it was loaded.
            unsafe {
                m.enqueue(
                    kernel,
                    dtype,
                    &args,
                    cfg,
                    "launching the cross-entropy kernel",
                )
            }
        }
        DeviceLoss::Bce(dspec) => {
            // The guards keep the class weights' reads ordered before the launch is enqueued.
            let (weights, _guards) = dspec.weight_ptrs(m);
            let (kernel, args, cfg) = bce_call(
                dspec.spec(),
                dtype,
                b,
                bufs,
                losses,
                weights,
                (plan_ptr, m.flags_ptr()),
                &grad_output,
                &m.launch_env(),
                ld,
            );
            let what = "launching the binary cross-entropy kernel";
            // SAFETY: `args` is `BceArgs`; addresses valid per the contract.
            unsafe { m.enqueue(kernel, dtype, &args, cfg, what) }
        }
    }
}

/// Pointers of the optional grad_output view (kept alive with its event guard by the caller).
fn raw_upstream<'a>(
    m: &'a CudaMixer,
    plan: &DevicePlan,
    up: &'a DeviceGradOutput<'_>,
) -> Result<(RawGradOutput, Option<cudarc::driver::SyncOnDrop<'a>>)> {
    Ok(match up {
        DeviceGradOutput::Scalar(g) => (RawGradOutput::Scalar(*g), None),
        DeviceGradOutput::Device(v) => {
            check_len("grad_output", 1, v.len())?;
            let (p, rec) = v.device_ptr(m.stream());
            (RawGradOutput::Device(p), Some(rec))
        }
        DeviceGradOutput::PerSample(v) => {
            check_len("grad_output", plan.len(), v.len())?;
            let (p, rec) = v.device_ptr(m.stream());
            (RawGradOutput::PerSample(p), Some(rec))
        }
    })
}

/// The logits of a safe call, as a device address: `len` elements of `dtype`, the gradient
/// written to `grad` (`None`: the loss only; the logits' own address: in place).
pub(crate) struct Logits {
    pub(crate) ptr: u64,
    pub(crate) len: usize,
    pub(crate) dtype: ScalarType,
    pub(crate) grad: Option<u64>,
    /// The gradient buffer's length (checked as `[B, C]` after the logits).
    pub(crate) grad_len: usize,
}

/// The safe entry points of a fused loss, written once for both losses: methods of
/// [`CudaMixer`] taking the loss's spec type (`$spec`, run as `DeviceLoss::$loss`), each given
/// with its docs and name: the loss only (`$forward`), loss and gradient into `grad` (`$fused`),
/// the gradient written over the logits (`$in_place`). They differ only in how the logits and the
/// gradient are passed; [`CudaMixer::loss_call`] does the rest.
macro_rules! loss_entry_points {
    (
        $spec:ty => $loss:ident;
        $(#[$forward_doc:meta])* $forward:ident;
        $(#[$fused_doc:meta])* $fused:ident;
        $(#[$in_place_doc:meta])* $in_place:ident;
    ) => {
        impl $crate::cuda::CudaMixer {
            $(#[$forward_doc])*
            pub fn $forward<T: $crate::dtype::FloatElement>(
                &self,
                plan: &$crate::cuda::DevicePlan,
                spec: &$spec,
                logits: &$crate::cuda::CudaView<'_, T>,
                labels: &$crate::cuda::CudaView<'_, u32>,
                loss: Option<&mut $crate::cuda::CudaViewMut<'_, f32>>,
                losses: Option<&mut $crate::cuda::CudaViewMut<'_, f32>>,
            ) -> $crate::error::Result<()> {
                use cudarc::driver::DevicePtr;
                use $crate::cuda::loss::{DeviceLoss, Logits};
                let (lp, _r) = logits.device_ptr(self.stream());
                let z = Logits { ptr: lp, len: logits.len(), dtype: T::DTYPE, grad: None, grad_len: 0 };
                let up = $crate::cuda::DeviceGradOutput::Scalar(1.0);
                self.loss_call(plan, DeviceLoss::$loss(spec), z, labels, up, loss, losses)
            }

            $(#[$fused_doc])*
            #[allow(clippy::too_many_arguments)]
            pub fn $fused<T: $crate::dtype::FloatElement>(
                &self,
                plan: &$crate::cuda::DevicePlan,
                spec: &$spec,
                logits: &$crate::cuda::CudaView<'_, T>,
                labels: &$crate::cuda::CudaView<'_, u32>,
                grad_output: $crate::cuda::DeviceGradOutput<'_>,
                loss: Option<&mut $crate::cuda::CudaViewMut<'_, f32>>,
                losses: Option<&mut $crate::cuda::CudaViewMut<'_, f32>>,
                grad: &mut $crate::cuda::CudaViewMut<'_, T>,
            ) -> $crate::error::Result<()> {
                use cudarc::driver::{DevicePtr, DevicePtrMut};
                use $crate::cuda::loss::{DeviceLoss, Logits};
                let (n, grad_len) = (logits.len(), grad.len());
                let (lp, _r) = logits.device_ptr(self.stream());
                let (gp, _w) = grad.device_ptr_mut(self.stream());
                let z = Logits { ptr: lp, len: n, dtype: T::DTYPE, grad: Some(gp), grad_len };
                let spec = DeviceLoss::$loss(spec);
                self.loss_call(plan, spec, z, labels, grad_output, loss, losses)
            }

            $(#[$in_place_doc])*
            #[allow(clippy::too_many_arguments)]
            pub fn $in_place<T: $crate::dtype::FloatElement>(
                &self,
                plan: &$crate::cuda::DevicePlan,
                spec: &$spec,
                logits: &mut $crate::cuda::CudaViewMut<'_, T>,
                labels: &$crate::cuda::CudaView<'_, u32>,
                grad_output: $crate::cuda::DeviceGradOutput<'_>,
                loss: Option<&mut $crate::cuda::CudaViewMut<'_, f32>>,
                losses: Option<&mut $crate::cuda::CudaViewMut<'_, f32>>,
            ) -> $crate::error::Result<()> {
                use cudarc::driver::DevicePtrMut;
                use $crate::cuda::loss::{DeviceLoss, Logits};
                let n = logits.len();
                let (lp, _w) = logits.device_ptr_mut(self.stream());
                let z = Logits { ptr: lp, len: n, dtype: T::DTYPE, grad: Some(lp), grad_len: n };
                let spec = DeviceLoss::$loss(spec);
                self.loss_call(plan, spec, z, labels, grad_output, loss, losses)
            }
        }
    };
}
pub(crate) use loss_entry_points;

impl CudaMixer {
    /// The checks and the launch behind every safe entry point.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn loss_call(
        &self,
        plan: &DevicePlan,
        spec: DeviceLoss<'_>,
        logits: Logits,
        labels: &CudaView<'_, u32>,
        grad_output: DeviceGradOutput<'_>,
        loss: Option<&mut CudaViewMut<'_, f32>>,
        losses: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        // Every check before anything is enqueued.
        let (up, _ru) = raw_upstream(self, plan, &grad_output)?;
        let host = spec.host();
        host.check_device(plan.plan(), logits.len, &up)?;
        if logits.grad.is_some() {
            let c = host.num_classes();
            check_rows("grad", Rows::Classes, plan.len(), c, logits.grad_len)?;
        }
        plan.plan().check_batch("labels", labels.len())?;
        let outputs = (logits.grad.is_some(), loss.is_some(), losses.is_some());
        crate::spec::check_loss_outputs(host.reduction(), outputs.0, outputs.1, outputs.2)?;
        if let Some(l) = &loss {
            check_len("loss", 1, l.len())?;
        }
        if let Some(l) = &losses {
            check_len("losses", plan.len(), l.len())?;
        }
        let (lab, _rl) = labels.device_ptr(self.stream());
        let (mut loss, mut losses) = (loss, losses);
        let lossp = loss.as_mut().map(|l| l.device_ptr_mut(self.stream()));
        let lp = losses.as_mut().map(|l| l.device_ptr_mut(self.stream()));
        let bufs = CeBuffers {
            logits: logits.ptr,
            labels: lab,
            grad: logits.grad,
            loss: lossp.as_ref().map(|(p, _)| *p),
            losses: lp.as_ref().map(|(p, _)| *p),
        };
        // SAFETY: every buffer was checked to hold what the kernel reads and writes.
        unsafe { launch(self, plan, spec, logits.dtype, logits.len, &bufs, up, None) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_stride_checks_pitched_logits() {
        let bufs = CeBuffers {
            logits: 0x1000,
            labels: 0x2000,
            grad: Some(0x3000),
            loss: Some(0x4000),
            losses: None,
        };
        // Dense rows unless a stride is given; a pitch of at least C is taken as is.
        assert_eq!(row_stride(4, 1000, None, &bufs).unwrap(), 1000);
        assert_eq!(row_stride(4, 1000, Some(1000), &bufs).unwrap(), 1000);
        assert_eq!(row_stride(4, 1000, Some(1024), &bufs).unwrap(), 1024);
        assert_eq!(row_stride(0, 1000, Some(1024), &bufs).unwrap(), 1024);
        let bad =
            |r: Result<u64>| matches!(r, Err(MixError::InvalidArgument { what: "logits", .. }));
        // Rows shorter than C overlap.
        assert!(bad(row_stride(4, 1000, Some(999), &bufs)));
        // The gradient is dense: it may go over the logits only when they are dense too.
        let in_place = CeBuffers {
            grad: Some(bufs.logits),
            ..bufs
        };
        assert_eq!(row_stride(4, 1000, Some(1000), &in_place).unwrap(), 1000);
        assert!(bad(row_stride(4, 1000, Some(1024), &in_place)));
        // B rows that far apart do not fit in an address.
        assert!(bad(row_stride(3, 10, Some(usize::MAX / 2), &bufs)));
    }
}
