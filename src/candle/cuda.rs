//! CUDA storage for the candle ops (feature `candle-cuda`): the crate's NVRTC kernels run on
//! the candle device's own stream, reading and writing candle's `CudaSlice`s in place (candle
//! 0.11 and this crate share cudarc 0.19, so the buffers are used without a copy).
//!
//! One [`CudaMixer`] per candle device (per device and host thread on candle's default
//! per-thread stream), created on first use and kept for the process (it holds the compiled
//! kernels). So on `Device::new_cuda` every new host thread that runs an op pays once for its
//! own state (the kernels loaded from the disk cache, a plan buffer, flags, scratch), and the
//! state stays after the thread ends: run the ops from long-lived threads (the training loop's),
//! not from a thread per step; a device made with one real stream
//! (`CudaDevice::new_with_stream`) has one state for all threads. A plan is uploaded with one
//! asynchronous copy when it differs from the last one; so are the BCE's per-class weights (a
//! [`DeviceBceSpec`], kept while the ops pass an equal [`BceSpec`]).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::cuda::{CudaDType, DeviceId};
use candle_core::{
    CudaDevice, CudaStorage, DType, Device, Error, Layout as CLayout, Result, Shape,
};

use super::loss::MixupLossOp;
use super::mix_normalize::MixNormalizeOp;
use super::{MixOp, SoftTargetsOp};
use crate::cuda::context::PER_THREAD_STREAM;
use crate::cuda::loss::DeviceLoss;
use crate::cuda::{CudaMixer, DeviceBceSpec, DeviceGradOutput, DeviceNormalize, DevicePlan};
use crate::spec::{BceSpec, LossSpec, Reduction};
use crate::{bf16, f16};

/// What the crate keeps per candle stream: the mixer (compiled kernels), one device plan
/// buffer, reused by every op, and the BCE spec last used, its class weights on the device. All
/// ops of one state run on one stream, so an upload is ordered after the kernels that read the
/// previous plan: reusing the buffer is safe, and the per-step path allocates nothing once the
/// largest batch has been seen. A replaced BCE spec frees its buffers on that stream too, after
/// the kernels that read them.
struct PerDevice {
    mixer: CudaMixer,
    plan: Mutex<DevicePlan>,
    bce: Mutex<Option<DeviceBceSpec>>,
    norm: Mutex<Option<DeviceNormalize>>,
}

/// A candle device, and the host thread when the device's stream is per thread.
type Key = (DeviceId, Option<std::thread::ThreadId>);

/// The states made so far (kept for the process: they hold the compiled kernels).
type Mixers = Mutex<Vec<(Key, Arc<PerDevice>)>>;

/// The state of `dev` for this thread, made on first use.
///
/// `Device::new_cuda` enqueues on `CU_STREAM_PER_THREAD`: each host thread has its own stream
/// there, so the plan buffer, the label flags and the loss scratch of one mixer must not be
/// shared between threads (two threads' kernels could run at once and read a plan being
/// replaced). Such a device gets one state per thread; a device with one real stream
/// (`CudaDevice::new_with_stream`) gets one state for all threads.
fn per_device(dev: &CudaDevice) -> Result<Arc<PerDevice>> {
    static MIXERS: OnceLock<Mixers> = OnceLock::new();
    let per_thread = dev.cuda_stream().cu_stream() as usize == PER_THREAD_STREAM;
    let key: Key = (dev.id(), per_thread.then(|| std::thread::current().id()));
    let mut all = MIXERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = all.iter().find(|(k, _)| *k == key) {
        return Ok(m.clone());
    }
    let mixer = CudaMixer::from_stream(dev.cuda_stream())?;
    let plan = Mutex::new(DevicePlan::new(&mixer));
    let m = Arc::new(PerDevice {
        mixer,
        plan,
        bce: Mutex::new(None),
        norm: Mutex::new(None),
    });
    all.push((key, m.clone()));
    Ok(m)
}

/// The device's reused plan buffer, locked, holding `plan`. The ops of a step (mix, loss
/// forward, loss backward) share one plan: it is uploaded once, when it changes. Every op locks
/// the plan first, then its constants (the BCE's spec, the normalization).
fn plan_buffer<'a>(d: &'a PerDevice, plan: &crate::MixPlan) -> Result<MutexGuard<'a, DevicePlan>> {
    // A poisoned lock only means another thread panicked between uploads; the buffer is whole.
    let mut dp = d.plan.lock().unwrap_or_else(|p| p.into_inner());
    if !dp.holds(plan) {
        dp.upload(plan)?;
    }
    Ok(dp)
}

/// Runs `f` with the device's mixer and `plan` in its reused plan buffer.
fn with_plan<R>(
    dev: &CudaDevice,
    plan: &crate::MixPlan,
    f: impl FnOnce(&CudaMixer, &DevicePlan) -> Result<R>,
) -> Result<R> {
    let d = per_device(dev)?;
    let dp = plan_buffer(&d, plan)?;
    f(&d.mixer, &dp)
}

/// [`with_plan`] with `spec`'s class weights on the device as well: uploaded (two `[C]` arrays at
/// most, asynchronous copies on the device's stream, no host synchronization) only when `spec`
/// differs from the spec of the last BCE op on this stream, so a training loop with one spec
/// uploads them once.
fn with_bce_spec<R>(
    dev: &CudaDevice,
    plan: &crate::MixPlan,
    spec: &BceSpec,
    f: impl FnOnce(&CudaMixer, &DevicePlan, &DeviceBceSpec) -> Result<R>,
) -> Result<R> {
    let d = per_device(dev)?;
    let dp = plan_buffer(&d, plan)?;
    // A poisoned lock holds a whole value.
    let mut ds = d.bce.lock().unwrap_or_else(|p| p.into_inner());
    let dspec = match &mut *ds {
        Some(s) if s.spec() == spec => s,
        slot => slot.insert(DeviceBceSpec::new(&d.mixer, spec.clone())?),
    };
    f(&d.mixer, &dp, dspec)
}

/// [`with_plan`] with the loss's spec as the kernels read it.
fn with_loss<R>(
    dev: &CudaDevice,
    plan: &crate::MixPlan,
    spec: &LossSpec<'_>,
    f: impl FnOnce(&CudaMixer, &DevicePlan, DeviceLoss<'_>) -> Result<R>,
) -> Result<R> {
    match spec {
        LossSpec::Ce(s) => with_plan(dev, plan, |m, dp| f(m, dp, DeviceLoss::Ce(s))),
        LossSpec::Bce(s) => with_bce_spec(dev, plan, s, |m, dp, d| f(m, dp, DeviceLoss::Bce(d))),
    }
}

/// Reports labels that the kernels found out of range on `device` since the last check (waits
/// for the stream). A no-op on the CPU.
pub(super) fn check_labels(device: &Device) -> Result<()> {
    match device {
        Device::Cuda(d) => Ok(per_device(d)?.mixer.check_labels()?),
        _ => Ok(()),
    }
}

fn range(l: &CLayout, op: &'static str) -> Result<std::ops::Range<usize>> {
    l.contiguous_offsets()
        .map(|(a, b)| a..b)
        .ok_or_else(|| Error::RequiresContiguous { op }.bt())
}

fn wrap<T: CudaDType>(s: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(s, dev.clone())
}

/// A new, uninitialized device buffer for `n` elements that a kernel writes. It holds at least
/// one element: the driver rejects a zero-byte allocation (`cuMemAlloc`: invalid value), and an
/// empty batch (a `narrow` to no sample) must give an empty result, not a driver error. The
/// kernel gets the first `n` elements (`slice_mut(..n)`); the tensor's shape has `n`.
///
/// # Safety
/// The caller has the kernel write every one of the first `n` elements before anyone reads
/// them.
unsafe fn output<T: CudaDType + DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: forwarded.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

pub(super) fn mix(op: &MixOp, s: &CudaStorage, l: &CLayout) -> Result<(CudaStorage, Shape)> {
    const NAME: &str = "mixup-kernels-mix";
    let dev = s.device().clone();
    with_plan(&dev, &op.plan, |m, plan| {
        let r = range(l, NAME)?;
        macro_rules! run {
            ($t:ty) => {{
                let x = s.as_cuda_slice::<$t>()?.slice(r.clone());
                // SAFETY: the kernel writes every element of `out` before anyone reads it.
                let mut out = unsafe { output::<$t>(&dev, r.len())? };
                m.mix(&plan, &op.shape, &x, &mut out.slice_mut(..r.len()))?;
                wrap(out, &dev)
            }};
        }
        let out = match s.dtype() {
            DType::F32 => run!(f32),
            DType::F16 => run!(f16),
            DType::BF16 => run!(bf16),
            DType::U8 => run!(u8),
            other => return Err(Error::UnsupportedDTypeForOp(other, NAME).bt()),
        };
        Ok((out, l.shape().clone()))
    })
}

pub(super) fn soft_targets(
    op: &SoftTargetsOp,
    s: &CudaStorage,
    l: &CLayout,
) -> Result<(CudaStorage, Shape)> {
    const NAME: &str = "mixup-kernels-soft-targets";
    let dev = s.device().clone();
    with_plan(&dev, &op.plan, |m, plan| {
        let labels = s.as_cuda_slice::<u32>()?.slice(range(l, NAME)?);
        let n = labels.len() * op.spec.num_classes();
        macro_rules! run {
            ($t:ty) => {{
                // SAFETY: the kernel writes all `n` elements.
                let mut out = unsafe { output::<$t>(&dev, n)? };
                m.soft_targets(&plan, &op.spec, &labels, &mut out.slice_mut(..n))?;
                wrap(out, &dev)
            }};
        }
        let out = match op.dtype {
            DType::F32 => run!(f32),
            DType::F16 => run!(f16),
            DType::BF16 => run!(bf16),
            other => return Err(Error::UnsupportedDTypeForOp(other, NAME).bt()),
        };
        Ok((out, Shape::from((labels.len(), op.spec.num_classes()))))
    })
}

/// The loss op's forward pass: the loss only. On a GPU the op never keeps a gradient (the
/// forward pass computes one for the CPU only, see `loss::apply`): the backward pass runs the
/// fused kernel with the upstream gradient read on the device (`loss_grad`).
pub(super) fn loss_fwd(
    op: &MixupLossOp,
    s1: &CudaStorage,
    l1: &CLayout,
    s2: &CudaStorage,
    l2: &CLayout,
) -> Result<(CudaStorage, Shape)> {
    let name = op.spec.name();
    let dev = s1.device().clone();
    with_loss(&dev, &op.plan, &op.spec, |m, plan, spec| {
        let labels = s2.as_cuda_slice::<u32>()?.slice(range(l2, name)?);
        let r = range(l1, name)?;
        let b = op.plan.len();
        // The op's output: the per-sample losses under Reduction::None, else the reduced loss
        // (at least one element: see `output`).
        let len = match op.spec.reduction() {
            Reduction::None => b,
            Reduction::Mean | Reduction::Sum => 1,
        };
        let mut out = dev.alloc_zeros::<f32>(len.max(1))?;
        let (mut loss, mut per) = match op.spec.reduction() {
            Reduction::None => (None, Some(out.slice_mut(..len))),
            Reduction::Mean | Reduction::Sum => (Some(out.slice_mut(..len)), None),
        };
        macro_rules! run {
            ($t:ty) => {{
                let z = s1.as_cuda_slice::<$t>()?.slice(r.clone());
                let (loss, per) = (loss.as_mut(), per.as_mut());
                match spec {
                    DeviceLoss::Ce(s) => m.mixup_ce_forward(plan, s, &z, &labels, loss, per)?,
                    DeviceLoss::Bce(s) => m.mixup_bce_forward(plan, s, &z, &labels, loss, per)?,
                }
            }};
        }
        match s1.dtype() {
            DType::F32 => run!(f32),
            DType::F16 => run!(f16),
            DType::BF16 => run!(bf16),
            other => return Err(Error::UnsupportedDTypeForOp(other, name).bt()),
        }
        Ok((wrap(out, &dev), op.out_shape()))
    })
}

/// The loss's gradient alone, for the upstream gradient in `s3` (f32 on the device: one value,
/// or one per sample under Reduction::None).
pub(super) fn loss_grad(
    op: &MixupLossOp,
    s1: &CudaStorage,
    l1: &CLayout,
    s2: &CudaStorage,
    l2: &CLayout,
    s3: &CudaStorage,
    l3: &CLayout,
) -> Result<(CudaStorage, Shape)> {
    let name = op.spec.grad_name();
    let dev = s1.device().clone();
    with_loss(&dev, &op.plan, &op.spec, |m, plan, spec| {
        let labels = s2.as_cuda_slice::<u32>()?.slice(range(l2, name)?);
        let up = s3.as_cuda_slice::<f32>()?.slice(range(l3, name)?);
        let grad_output = match op.spec.reduction() {
            Reduction::None => DeviceGradOutput::PerSample(up),
            Reduction::Mean | Reduction::Sum => DeviceGradOutput::Device(up),
        };
        let r = range(l1, name)?;
        macro_rules! run {
            ($t:ty) => {{
                let z = s1.as_cuda_slice::<$t>()?.slice(r.clone());
                // SAFETY: the kernel writes every gradient element.
                let mut g = unsafe { output::<$t>(&dev, r.len())? };
                // The backward pass wants the gradient only: no loss, no per-sample losses.
                let (up, gv) = (grad_output, &mut g.slice_mut(..r.len()));
                match spec {
                    DeviceLoss::Ce(s) => m.mixup_ce(plan, s, &z, &labels, up, None, None, gv)?,
                    DeviceLoss::Bce(s) => m.mixup_bce(plan, s, &z, &labels, up, None, None, gv)?,
                }
                wrap(g, &dev)
            }};
        }
        let out = match s1.dtype() {
            DType::F32 => run!(f32),
            DType::F16 => run!(f16),
            DType::BF16 => run!(bf16),
            other => return Err(Error::UnsupportedDTypeForOp(other, name).bt()),
        };
        Ok((out, l1.shape().clone()))
    })
}

/// `mix_normalize` on the device's stream, on candle's buffers without a copy; the constants
/// (like the BCE's class weights) are uploaded only when they differ from the last call's.
pub(super) fn mix_normalize(
    op: &MixNormalizeOp,
    s: &CudaStorage,
    l: &CLayout,
) -> Result<(CudaStorage, Shape)> {
    const NAME: &str = "mixup-kernels-mix-normalize";
    let dev = s.device().clone();
    let r = range(l, NAME)?;
    let d = per_device(&dev)?;
    let dp = plan_buffer(&d, &op.plan)?;
    // A poisoned lock holds a whole value.
    let mut dn = d.norm.lock().unwrap_or_else(|p| p.into_inner());
    let norm = match &mut *dn {
        Some(n) if n.normalize() == &op.norm => n,
        slot => slot.insert(DeviceNormalize::new(&d.mixer, op.norm.clone())?),
    };
    macro_rules! run {
        ($i:ty, $o:ty) => {{
            let x = s.as_cuda_slice::<$i>()?.slice(r.clone());
            // SAFETY: the kernel writes every element of `out` before anyone reads it.
            let mut out = unsafe { output::<$o>(&dev, r.len())? };
            let mut view = out.slice_mut(..r.len());
            d.mixer
                .mix_normalize(&dp, &op.shape, norm, &x, op.out_format, &mut view)?;
            wrap(out, &dev)
        }};
    }
    macro_rules! to {
        ($i:ty) => {
            match op.dtype {
                DType::F32 => run!($i, f32),
                DType::F16 => run!($i, f16),
                DType::BF16 => run!($i, bf16),
                other => return Err(Error::UnsupportedDTypeForOp(other, NAME).bt()),
            }
        };
    }
    let out = match s.dtype() {
        DType::U8 => to!(u8),
        DType::F32 => to!(f32),
        DType::F16 => to!(f16),
        DType::BF16 => to!(bf16),
        other => return Err(Error::UnsupportedDTypeForOp(other, NAME).bt()),
    };
    Ok((out, op.out_shape.clone()))
}
