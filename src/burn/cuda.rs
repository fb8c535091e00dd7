//! burn's CUDA backend without a copy (feature `burn-cuda`): the crate's NVRTC kernels read and
//! write the tensors' own device memory.
//!
//! burn 0.22's `Cube` backend is one type for every cubecl runtime; this feature turns burn's
//! `fusion` on, so a tensor's primitive is a fusion handle. Each operand is resolved through
//! its fusion client to the `CubeTensor` underneath (made contiguous on the device when it is a
//! strided view), and its device address comes from the compute client
//! (`client.get_resource::<CudaServer>(handle)`), which keeps the allocation in place while
//! the address is held. Outputs are fresh burn tensors (`Tensor::empty`) on the caller's
//! device, written the same way.
//!
//! **Ordering.** cubecl exposes no CUDA stream, so a call is ordered by two host
//! synchronizations: `device.sync()` (burn's queued work, the fusion queue included, has run)
//! before the kernels, and a synchronize of our own stream after them, before burn may touch
//! the outputs or reuse the inputs' memory. That is the price of not sharing a stream, stated
//! in docs/burn.md; the work itself is the kernel's. Calls from several host threads on one
//! device take turns (one state per device, locked for the call).
//!
//! **Labels** are read to the host (`[B]` integers, a few hundred bytes), checked there as on
//! every other backend (negatives and out-of-range values are errors before any work), and
//! uploaded as u32 into a buffer the state keeps. Images and logits, the large operands, never
//! leave the device.
//!
//! A tensor whose primitive cannot be resolved this way (another backend) never reaches this
//! module: [`ordinal`] answers `None` for every device but a CUDA one of burn's cubecl backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use burn::backend::{BackendTensor, DispatchDevice, DispatchTensorKind};
use burn::tensor::kind::Basic;
use burn::tensor::{DType, Device, Tensor};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use burn_fusion::{FusionBackend, FusionTensor};
use cubecl_runtime::runtime::Runtime;
use cudarc::driver::{CudaSlice, DevicePtr};

use super::invalid;
use crate::config::TargetSpec;
use crate::cuda::context::{check_device, driver_err, guard};
use crate::cuda::loss::DeviceLoss;
use crate::cuda::raw::{self, CeBuffers, RawGradOutput};
use crate::cuda::{CudaMixer, DeviceBceSpec, DeviceNormalize, DevicePlan};
use crate::dtype::ScalarType;
use crate::error::Result;
use crate::normalize::Normalize;
use crate::plan::MixPlan;
use crate::spec::{LossSpec, MemoryFormat, Reduction, SampleShape};

/// A `Cube` tensor primitive with burn's `fusion` on.
type Fused = FusionTensor<<CubeBackend as FusionBackend>::FusionRuntime>;
/// cubecl's CUDA compute server, whose storage hands out device addresses.
type CudaServer = <CudaRuntime as Runtime>::Server;

/// The CUDA ordinal of `device` when it is a CUDA device of burn's cubecl backend (with or
/// without autodiff); `None` for every other device (Flex, wgpu, ...), which takes the host path.
pub(super) fn ordinal(device: &Device) -> Option<usize> {
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Cube(CubeDevice::Cuda(d)) => Some(d.index),
        _ => None,
    }
}

/// Calls that ran on burn's device memory (see [`super::device_calls`]).
static CALLS: AtomicUsize = AtomicUsize::new(0);

pub(super) fn calls() -> usize {
    CALLS.load(Ordering::Relaxed)
}

/// What the crate keeps per CUDA device: the mixer (compiled kernels, its own stream), the plan
/// buffer, the labels as u32, the BCE's class weights and the normalization constants last
/// used. Every call ends with a synchronize of the stream, so each buffer is free for reuse by
/// the next call; once the largest batch has been seen nothing is allocated per call.
struct State {
    mixer: CudaMixer,
    plan: DevicePlan,
    labels: Option<CudaSlice<u32>>,
    bce: Option<DeviceBceSpec>,
    norm: Option<DeviceNormalize>,
}

/// The states made so far, one per device ordinal (kept for the process: they hold the kernels).
type States = Mutex<Vec<(usize, Arc<Mutex<State>>)>>;

/// Device `ordinal`'s state, made on first use, locked for the caller's whole call.
fn state(ordinal: usize) -> Result<Arc<Mutex<State>>> {
    static STATES: OnceLock<States> = OnceLock::new();
    // A poisoned lock holds a whole list.
    let mut all = STATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some((_, s)) = all.iter().find(|(o, _)| *o == ordinal) {
        return Ok(s.clone());
    }
    check_device(ordinal)?;
    let what = "creating the CUDA context";
    // The primary context, the one cubecl-cuda retains too: its addresses are valid here.
    let ctx =
        guard(what, || cudarc::driver::CudaContext::new(ordinal))?.map_err(driver_err(what))?;
    let what = "creating a stream for the burn ops";
    let stream = guard(what, || ctx.new_stream())?.map_err(driver_err(what))?;
    let mixer = CudaMixer::from_stream(stream)?;
    let plan = DevicePlan::new(&mixer);
    let s = Arc::new(Mutex::new(State {
        mixer,
        plan,
        labels: None,
        bce: None,
        norm: None,
    }));
    all.push((ordinal, s.clone()));
    Ok(s)
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    // A poisoned lock only means a panic between two calls; every call re-uploads what it reads.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// `plan` in the plan buffer (uploaded when it differs from the one held).
    fn upload_plan(&mut self, plan: &MixPlan) -> Result<()> {
        if !self.plan.holds(plan) {
            self.plan.upload(plan)?;
        }
        Ok(())
    }

    /// `labels` (checked on the host) in the label buffer; its address.
    fn upload_labels(&mut self, labels: &[u32]) -> Result<u64> {
        let s = self.mixer.stream().clone();
        let n = labels.len().max(1);
        let buf = match &mut self.labels {
            Some(b) if b.len() >= n => b,
            slot => {
                let what = "allocating the label buffer";
                // Grown to the largest batch seen; freed on the stream after earlier kernels.
                slot.insert(s.alloc_zeros::<u32>(n).map_err(driver_err(what))?)
            }
        };
        if !labels.is_empty() {
            let mut view = buf.slice_mut(..labels.len());
            s.memcpy_htod(labels, &mut view)
                .map_err(driver_err("uploading the labels"))?;
        }
        let (ptr, _record) = buf.device_ptr(&s);
        Ok(ptr)
    }

    /// Waits for the stream: the kernels of this call have run (burn may read the outputs and
    /// reuse the inputs), or their launch error is reported.
    fn finish(&self) -> Result<()> {
        self.mixer
            .stream()
            .synchronize()
            .map_err(driver_err("waiting for the mixup kernels"))?;
        CALLS.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The `CubeTensor` under `x` (a fusion handle on burn's CUDA device, float or int, with or
/// without autodiff), made contiguous on the device when it is a strided view.
fn resolve<const D: usize, K: Basic>(
    x: &Tensor<D, K>,
    what: &'static str,
    op: &str,
) -> Result<CubeTensor> {
    let kind = match x.clone().into_dispatch().kind {
        DispatchTensorKind::Autodiff(inner) => *inner,
        kind => kind,
    };
    let (fused, int): (Fused, bool) = match kind {
        DispatchTensorKind::Cube(BackendTensor::Float(t)) => (t, false),
        DispatchTensorKind::Cube(BackendTensor::Autodiff(t)) => (t.into_primitive(), false),
        DispatchTensorKind::Cube(BackendTensor::Int(t)) => (t, true),
        _ => {
            return Err(invalid(
                what,
                format!(
                    "{op}: `{what}` ({:?}) is on a CUDA device but is not a float or int tensor \
                     of burn's cubecl backend",
                    x.dtype()
                ),
            ));
        }
    };
    let client = fused.client.clone();
    let t = if int {
        client.resolve_tensor_int::<CubeBackend>(fused)
    } else {
        client.resolve_tensor_float::<CubeBackend>(fused)
    };
    Ok(burn_cubecl::kernel::into_contiguous(t))
}

/// The device address of `t`'s first element, checked to hold `bytes`, and the guard that keeps
/// the allocation in place until it is dropped (after [`State::finish`]).
fn address(
    t: &CubeTensor,
    bytes: usize,
    what: &'static str,
    op: &str,
) -> Result<(u64, impl Sized + use<>)> {
    let r = t
        .client
        .get_resource::<CudaServer>(t.handle.clone())
        .map_err(|e| {
            invalid(
                what,
                format!("{op}: burn could not give the device address of `{what}`: {e:?}"),
            )
        })?;
    let res = r.resource();
    if (res.size as usize) < bytes {
        return Err(invalid(
            what,
            format!(
                "{op}: `{what}`'s buffer holds {} bytes, the operation needs {bytes}",
                res.size
            ),
        ));
    }
    Ok((res.ptr, r))
}

/// Waits for burn's queued work on `device` (the fusion queue included).
fn sync(device: &Device, what: &'static str, op: &str) -> Result<()> {
    device.sync().map_err(|e| {
        invalid(
            what,
            format!("{op}: burn's queued work on {device:?} failed: {e:?}"),
        )
    })
}

fn scalar(dtype: DType) -> ScalarType {
    match dtype {
        DType::F16 => ScalarType::F16,
        DType::BF16 => ScalarType::BF16,
        DType::U8 => ScalarType::U8,
        _ => ScalarType::F32,
    }
}

/// Mixes `x` (`[B, ...]`, f32/f16/bf16, checked by the caller) into a new tensor on its device.
pub(super) fn mix<const D: usize>(
    ordinal: usize,
    plan: &MixPlan,
    shape: &SampleShape,
    x: Tensor<D>,
) -> Result<Tensor<D>> {
    const OP: &str = "mixup_kernels::burn::mix";
    let device = x.device();
    let dtype = x.dtype();
    let n = x.shape().num_elements();
    let bytes = n * dtype.size();
    let out = Tensor::<D>::empty(x.shape(), (&device, dtype));
    let st = state(ordinal)?;
    let mut st = lock(&st);
    let xin = resolve(&x, "images", OP)?;
    let xout = resolve(&out, "images", OP)?;
    sync(&device, "images", OP)?;
    st.upload_plan(plan)?;
    let (xp, _rx) = address(&xin, bytes, "images", OP)?;
    let (op, _ro) = address(&xout, bytes, "images", OP)?;
    // SAFETY: both addresses hold `n` elements of `dtype` on this device (checked above), in
    // allocations kept in place by `_rx`/`_ro` until after `finish`; `out` is a fresh tensor,
    // so they do not overlap; burn's queue has drained and nothing else writes them meanwhile.
    unsafe { raw::mix(&st.mixer, &st.plan, shape, scalar(dtype), xp, op, n) }?;
    st.finish()?;
    Ok(out)
}

/// Soft targets `[B, C]` of `dtype` on `device` from checked host labels.
pub(super) fn soft_targets(
    ordinal: usize,
    plan: &MixPlan,
    spec: &TargetSpec,
    labels: &[u32],
    device: &Device,
    dtype: DType,
) -> Result<Tensor<2>> {
    const OP: &str = "mixup_kernels::burn::soft_targets";
    let shape = [plan.len(), spec.num_classes()];
    let n = shape[0] * shape[1];
    let out = Tensor::<2>::empty(shape, (device, dtype));
    let st = state(ordinal)?;
    let mut st = lock(&st);
    let t = resolve(&out, "dtype", OP)?;
    sync(device, "labels", OP)?;
    st.upload_plan(plan)?;
    let yp = st.upload_labels(labels)?;
    let (tp, _rt) = address(&t, n * dtype.size(), "dtype", OP)?;
    // SAFETY: `yp` holds `B` u32 labels, `tp` `B·C` elements of `dtype` (checked), both live
    // until after `finish` and distinct.
    unsafe { raw::soft_targets(&st.mixer, &st.plan, spec, scalar(dtype), yp, tp, n) }?;
    st.finish()?;
    Ok(out)
}

/// `mix_normalize` of u8 (`Int`) or float images into a new float tensor of `dtype`
/// (`out_dims`, `out_format`); the arguments are checked by the caller.
pub(super) fn mix_normalize<K: Basic>(
    ordinal: usize,
    images: &Tensor<4, K>,
    (plan, shape, norm, out_format, out_dims, dtype): (
        &MixPlan,
        &SampleShape,
        &Normalize,
        MemoryFormat,
        [usize; 4],
        DType,
    ),
) -> Result<Tensor<4>> {
    const OP: &str = "mixup_kernels::burn::mix_normalize";
    let device = images.device();
    let in_dtype = images.dtype();
    let n = out_dims.iter().product::<usize>();
    let out = Tensor::<4>::empty(out_dims, (&device, dtype));
    let st = state(ordinal)?;
    let mut st = lock(&st);
    let xin = resolve(images, "images", OP)?;
    let xout = resolve(&out, "dtype", OP)?;
    sync(&device, "images", OP)?;
    st.upload_plan(plan)?;
    let st = &mut *st;
    let dnorm = match &mut st.norm {
        Some(d) if d.normalize() == norm => d,
        slot => slot.insert(DeviceNormalize::new(&st.mixer, norm.clone())?),
    };
    let (xp, _rx) = address(&xin, n * in_dtype.size(), "images", OP)?;
    let (op, _ro) = address(&xout, n * dtype.size(), "dtype", OP)?;
    // SAFETY: `n` elements of each dtype at each address (checked), kept in place until after
    // `finish`; the output is a fresh tensor, distinct from the input.
    unsafe {
        st.mixer.mix_normalize_raw(
            &st.plan,
            shape,
            dnorm,
            scalar(in_dtype),
            xp,
            out_format,
            scalar(dtype),
            op,
            n,
        )
    }?;
    st.finish()?;
    Ok(out)
}

/// The fused loss on the device: the loss (`[1]` f32, or `[B]` under `Reduction::None`) on
/// `loss_device`, and, when `grad_device` is given, the gradient for an upstream of 1
/// (`[B, C]`, the logits' dtype) there.
pub(super) fn loss(
    ordinal: usize,
    logits: &Tensor<2>,
    (spec, plan, labels, op): (&LossSpec<'_>, &MixPlan, &[u32], &'static str),
    loss_device: &Device,
    grad_device: Option<&Device>,
) -> Result<(Tensor<1>, Option<Tensor<2>>)> {
    let device = logits.device();
    let dtype = logits.dtype();
    let dims = logits.dims();
    let n = dims[0] * dims[1];
    let rows = match spec.reduction() {
        Reduction::None => dims[0],
        Reduction::Mean | Reduction::Sum => 1,
    };
    let loss = Tensor::<1>::empty([rows], (loss_device, DType::F32));
    let grad = grad_device.map(|d| Tensor::<2>::empty(dims, (d, dtype)));
    let st = state(ordinal)?;
    let mut st = lock(&st);
    let z = resolve(logits, "logits", op)?;
    let l = resolve(&loss, "logits", op)?;
    let g = grad
        .as_ref()
        .map(|g| resolve(g, "logits", op))
        .transpose()?;
    sync(&device, "logits", op)?;
    st.upload_plan(plan)?;
    let yp = st.upload_labels(labels)?;
    let st = &mut *st;
    let dspec = match spec {
        LossSpec::Ce(s) => DeviceLoss::Ce(s),
        LossSpec::Bce(s) => DeviceLoss::Bce(match &mut st.bce {
            Some(d) if d.spec() == s.as_ref() => d,
            slot => slot.insert(DeviceBceSpec::new(&st.mixer, s.as_ref().clone())?),
        }),
    };
    let (zp, _rz) = address(&z, n * dtype.size(), "logits", op)?;
    let (lp, _rl) = address(&l, rows * 4, "logits", op)?;
    let (gp, _rg) = match &g {
        Some(g) => {
            let (p, r) = address(g, n * dtype.size(), "logits", op)?;
            (Some(p), Some(r))
        }
        None => (None, None),
    };
    let (loss_ptr, losses_ptr) = match spec.reduction() {
        Reduction::None => (None, Some(lp)),
        Reduction::Mean | Reduction::Sum => (Some(lp), None),
    };
    let bufs = CeBuffers {
        logits: zp,
        labels: yp,
        grad: gp,
        loss: loss_ptr,
        losses: losses_ptr,
    };
    let one = RawGradOutput::Scalar(1.0);
    // SAFETY: every address holds what the kernel reads or writes for `B` rows of `C` classes
    // (sizes checked above), kept in place until after `finish`; the outputs are fresh tensors.
    unsafe { crate::cuda::loss::launch(&st.mixer, &st.plan, dspec, scalar(dtype), n, &bufs, one) }?;
    st.finish()?;
    Ok((loss, grad))
}
