//! burn's CUDA backend without a host copy (feature `burn-cuda`): the crate's NVRTC kernels read
//! the tensors' own device memory and write new burn tensors (only the `[B]` labels go through
//! the host).
//!
//! burn 0.22's `Cube` backend is one type for every cubecl runtime; this feature turns burn's
//! `fusion` on, so a tensor's primitive is a fusion handle.
//!
//! - **Inputs** are resolved through their fusion client to the `CubeTensor` underneath. cubecl
//!   allocates CUDA tensors *pitched* (each row of the last dimension padded to a multiple of
//!   its byte width's next power of two, between 16 bytes and the device's alignment: cubecl's
//!   `optimal_align`, docs/burn.md); the kernels read such rows in
//!   place, given the pitch ([`super::row_pitch`]; the losses' `ld`, the mixing kernels'
//!   `pitch`). An input in another layout (a transposed or broadcast view; a `[B, d1, d2]`
//!   tensor mixed as rows of `d1·d2`) is first made contiguous on the device by burn's own
//!   kernel (one device copy, no host transfer).
//! - **Outputs** are allocated dense (`empty_device_contiguous_dtype`) on the device's cubecl
//!   client, written by the kernel, and registered with the fusion client as new tensors (an
//!   `Init` operation, as burn's own `from_data` does), so burn sees them like any other.
//! - **Addresses** come from the compute client (`client.get_resource::<CudaServer>(handle)`),
//!   which keeps each allocation in place while the address is held and, for memory allocated
//!   on another host thread's stream, queues a wait for that stream up to the allocation (the
//!   case below is the limit of that).
//! - **Ordering.** cubecl exposes no CUDA stream, so a call is ordered by two host
//!   synchronizations: `device.sync()` after the addresses are taken (burn's queue, the fusion
//!   queue and those cross-stream waits have run) and before the kernel, and a synchronize of
//!   our own stream after it (also after a failed launch), before burn may read the outputs or
//!   reuse the inputs' memory. That is the price of not sharing a stream (docs/burn.md).
//! - **Labels** are read to the host (`[B]` integers), checked there as on every other backend,
//!   and uploaded as u32 into a buffer the per-device state keeps.
//!
//! One case is not covered: an input that another host thread rewrote *in place* on its own
//! stream after the two threads' streams last synchronized (cubecl decides the cross-stream wait
//! when the memory is allocated, not on each write). cubecl's own cross-stream reads share that
//! limit; hand tensors between threads after `device.sync()` on the producing thread.
//!
//! Calls from several host threads on one device take turns (one state per device, locked for
//! the call). [`ordinal`] answers `None` for every device but a CUDA one of burn's cubecl
//! backend, so nothing else reaches this module.

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
use burn::backend::fusion::stream::StreamId;
use burn::backend::fusion::{FusionBackend, FusionTensor, NoOp, get_client};
use burn::backend::ir::{BackendIr, InitOperationIr, OperationIr, OperationOutput};
use burn::backend::{
    Autodiff, AutodiffBackend, BackendTensor, Cube, DispatchDevice, DispatchTensorKind,
    GradientCheckpointingStrategy,
};
use burn::tensor::kind::Basic;
use burn::tensor::{DType, Device, Shape, Tensor};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use cubecl_runtime::runtime::Runtime;
use cudarc::driver::{CudaSlice, DevicePtr};

use super::invalid;
use crate::config::TargetSpec;
use crate::cuda::context::{check_device, driver_err, guard, panic_message};
use crate::cuda::loss::DeviceLoss;
use crate::cuda::raw::{self, CeBuffers, RawGradOutput};
use crate::cuda::{CudaMixer, DeviceBceSpec, DeviceNormalize, DevicePlan};
use crate::cuda::{mix, mix_normalize};
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

thread_local! {
    /// Calls on this host thread that ran on burn's device memory (see [`super::device_calls`]).
    static CALLS: Cell<usize> = const { Cell::new(0) };
    /// Inputs on this host thread that burn copied on the device before a kernel read them
    /// (see [`super::device_copies`]).
    static COPIES: Cell<usize> = const { Cell::new(0) };
}

pub(super) fn calls() -> usize {
    CALLS.with(Cell::get)
}

pub(super) fn copies() -> usize {
    COPIES.with(Cell::get)
}

/// What the crate keeps per CUDA device: the mixer (compiled kernels, its own stream), the plan
/// buffer, the labels as u32, the BCE's class weights and the normalization constants last
/// used. Every call ends with a synchronize of the stream, so each buffer is free for reuse by
/// the next call; once the largest batch has been seen nothing is allocated per call but the
/// outputs.
struct State {
    ordinal: usize,
    mixer: CudaMixer,
    plan: DevicePlan,
    labels: Option<CudaSlice<u32>>,
    bce: Option<DeviceBceSpec>,
    norm: Option<DeviceNormalize>,
}

/// The states made so far, one per device ordinal (kept for the process: they hold the kernels).
type States = Mutex<Vec<(usize, Arc<Mutex<State>>)>>;

/// Device `ordinal`'s state, made on first use.
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
        ordinal,
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

    /// `labels` (checked on the host) in the label buffer; its address. The buffer is only
    /// read by this call's kernel, which [`launch_on`] waits for.
    fn upload_labels(&mut self, labels: &[u32]) -> Result<u64> {
        let s = self.mixer.stream().clone();
        let n = labels.len().max(1); // cuMemAlloc rejects 0 bytes
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

    /// A new dense tensor of `shape` and `dtype` on this device's cubecl client (uninitialized:
    /// the kernel writes every element).
    fn output(
        &self,
        shape: &[usize],
        dtype: DType,
        what: &'static str,
        op: &str,
    ) -> Result<CubeTensor> {
        let device = CudaDevice {
            index: self.ordinal,
        };
        caught(what, op, "allocating an output", || {
            let client = CudaRuntime::client(&device);
            empty_device_contiguous_dtype(
                client,
                CubeDevice::Cuda(device),
                Shape::from(shape),
                dtype,
            )
        })
    }
}

/// Runs `f`, a call into burn or cubecl that panics on a failed device or a poisoned tensor,
/// and reports such a panic as an error naming the operand.
fn caught<T>(what: &'static str, op: &str, doing: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let why = panic_message(e);
        invalid(
            what,
            format!("{op}: burn failed {doing} for `{what}`: {why}"),
        )
    })
}

/// The `CubeTensor` under `x` (a fusion handle on burn's CUDA device, float or int, with or
/// without autodiff) and its row pitch (elements from one row of the last dimension to the
/// next). With `pitched`, a tensor stored as padded rows (cubecl's layout of CUDA tensors) is
/// taken as it is, its pitch given; otherwise, and for any other layout, the tensor is made
/// dense (itself when dense, else a device copy) and the pitch is its last dimension.
fn resolve<const D: usize, K: Basic>(
    x: &Tensor<D, K>,
    what: &'static str,
    op: &str,
    pitched: bool,
) -> Result<(CubeTensor, usize)> {
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
    let (t, pitch, copied) = caught(what, op, "resolving the tensor", move || {
        let client = fused.client.clone();
        let t = if int {
            client.resolve_tensor_int::<CubeBackend>(fused)
        } else {
            client.resolve_tensor_float::<CubeBackend>(fused)
        };
        // The allocation burn holds the data in: another one after the calls below means a copy.
        let stored = t.handle.memory.descriptor().id;
        let (t, p) = 'layout: {
            let t = if pitched {
                // Padded rows stay as they are (a transposed input becomes padded rows: one copy).
                let t = burn_cubecl::kernel::into_contiguous_aligned(t);
                if let Some(p) = super::row_pitch(&t.meta.shape()[..], &t.meta.strides()[..]) {
                    break 'layout (t, p);
                }
                t
            } else {
                t
            };
            let t = burn_cubecl::kernel::into_contiguous(t);
            let last = t.meta.shape().last().copied().unwrap_or(1);
            (t, last)
        };
        let copied = t.handle.memory.descriptor().id != stored;
        (t, p, copied)
    })?;
    if copied {
        COPIES.with(|c| c.set(c.get() + 1));
    }
    Ok((t, pitch))
}

/// `t`, written by a kernel, as a burn tensor on `device`: registered with the fusion client
/// as a new tensor (burn's own `from_data` does the same with the tensor it uploads).
fn into_burn<const D: usize>(t: CubeTensor, device: &Device, op: &str) -> Result<Tensor<D>> {
    Ok(leaf(into_fused(t, op)?, device))
}

/// A fusion primitive as a burn tensor on `device`: on an autodiff device a leaf (no gradient
/// tracked) of the device's gradient-checkpointing strategy.
pub(super) fn leaf<const D: usize>(fused: Fused, device: &Device) -> Tensor<D> {
    match device.gradient_checkpointing_strategy() {
        None => Tensor::from_primitive::<Cube>(fused),
        Some(GradientCheckpointingStrategy::Balanced) => {
            type Ad = Autodiff<Cube, BalancedCheckpointing>;
            Tensor::from_primitive::<Ad>(<Ad as AutodiffBackend>::from_inner(fused))
        }
        Some(GradientCheckpointingStrategy::Disabled) => {
            type Ad = Autodiff<Cube, NoCheckpointing>;
            Tensor::from_primitive::<Ad>(<Ad as AutodiffBackend>::from_inner(fused))
        }
    }
}

/// `t` registered with its device's fusion client as a new tensor.
fn into_fused(t: CubeTensor, op: &str) -> Result<Fused> {
    caught("out", op, "registering an output", move || {
        let shape = t.meta.shape().clone();
        let dtype = t.dtype;
        let client = get_client::<CubeBackend>(&t.device);
        let handle = <CubeBackend as BackendIr>::float_tensor_handle(t);
        let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
        client
            .register(
                StreamId::current(),
                OperationIr::Init(desc),
                NoOp::<CubeBackend>::new(),
            )
            .output()
    })
}

/// The device address of `t`'s first element, checked to hold `bytes`, and the guard that keeps
/// the allocation in place until it is dropped (after [`launch_on`]).
fn address(
    t: &CubeTensor,
    bytes: usize,
    what: &'static str,
    op: &str,
) -> Result<(u64, impl Sized + use<>)> {
    let r = caught(what, op, "giving the device address", || {
        t.client.get_resource::<CudaServer>(t.handle.clone())
    })?
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

/// Waits for burn's queued work on `device` (the fusion queue included, and the cross-stream
/// waits that taking the addresses queued).
fn sync(device: &Device, what: &'static str, op: &str) -> Result<()> {
    let r = caught(what, op, "synchronizing the device", || device.sync())?;
    r.map_err(|e| {
        invalid(
            what,
            format!("{op}: burn's queued work on {device:?} failed: {e:?}"),
        )
    })
}

/// The kernels' element type for a dtype the caller has checked.
fn scalar(dtype: DType, what: &'static str, op: &str) -> Result<ScalarType> {
    super::scalar_type(dtype).ok_or_else(|| {
        invalid(
            what,
            format!("{op}: `{what}` must be f32, f16, bf16 (or u8 pixels), got {dtype:?}"),
        )
    })
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
    let st_dtype = scalar(dtype, "images", OP)?;
    let dims = x.dims();
    let n = x.shape().num_elements();
    let st = state(ordinal)?;
    let mut st = lock(&st);
    // Padded rows (cubecl pads a 224-wide f32 image row to 256) are read in place when the
    // tensor's last dimension is the layout's input row (not for `[B, d1, d2]` mixed as rows).
    let pitched = dims.last() == Some(&mix::input_row(shape));
    let (xin, pitch) = resolve(&x, "images", OP, pitched)?;
    let pitch = pitched.then_some(pitch); // else dense
    let span = mix::input_span(shape, dims[0], pitch)?;
    let xout = st.output(&dims, dtype, "images", OP)?;
    let (xp, _rx) = address(&xin, span.saturating_mul(dtype.size()), "images", OP)?;
    let (op, _ro) = address(&xout, n * dtype.size(), "images", OP)?;
    sync(&device, "images", OP)?;
    st.upload_plan(plan)?;
    // SAFETY: the input address holds its span and the output `n` dense elements of `dtype`
    // on this device (checked above), in allocations kept in place by `_rx`/`_ro` until after
    // `launch_on` has waited for the kernel; the output is a new allocation, so they do not
    // overlap; burn's queue has drained and nothing else writes them meanwhile.
    launch_on(&st.mixer, || unsafe {
        mix::launch(
            &st.mixer,
            &st.plan,
            shape,
            st_dtype,
            (xp, pitch),
            op,
            n,
            false,
        )
    })?;
    into_burn(xout, &device, OP)
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
    let st_dtype = scalar(dtype, "dtype", OP)?;
    let shape = [plan.len(), spec.num_classes()];
    let n = shape[0] * shape[1];
    let st = state(ordinal)?;
    let mut st = lock(&st);
    let t = st.output(&shape, dtype, "dtype", OP)?;
    let (tp, _rt) = address(&t, n * dtype.size(), "dtype", OP)?;
    sync(device, "labels", OP)?;
    st.upload_plan(plan)?;
    let yp = st.upload_labels(labels)?;
    // SAFETY: `yp` holds `B` u32 labels, `tp` `B·C` dense elements of `dtype` (checked), both
    // kept until `launch_on` has waited for the kernel, and distinct.
    launch_on(&st.mixer, || unsafe {
        raw::soft_targets(&st.mixer, &st.plan, spec, st_dtype, yp, tp, n)
    })?;
    into_burn(t, device, OP)
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
    let (input, output) = (scalar(in_dtype, "images", OP)?, scalar(dtype, "dtype", OP)?);
    let n = out_dims.iter().product::<usize>();
    let st = state(ordinal)?;
    let mut st = lock(&st);
    // Padded rows (cubecl pads 224 u8 pixels of a channels-first row to 256) are read in place.
    let (xin, pitch) = resolve(images, "images", OP, true)?;
    let pitch = Some(pitch);
    let span = mix::input_span(shape, out_dims[0], pitch)?;
    let xout = st.output(&out_dims, dtype, "dtype", OP)?;
    let (xp, _rx) = address(&xin, span.saturating_mul(in_dtype.size()), "images", OP)?;
    let (op, _ro) = address(&xout, n * dtype.size(), "dtype", OP)?;
    sync(&device, "images", OP)?;
    st.upload_plan(plan)?;
    let st = &mut *st;
    let dnorm = match &mut st.norm {
        Some(d) if d.normalize() == norm => d,
        slot => slot.insert(DeviceNormalize::new(&st.mixer, norm.clone())?),
    };
    let (mixer, dplan) = (&st.mixer, &st.plan);
    let run = || {
        // SAFETY: the input's span and `n` dense output elements at the addresses (checked),
        // kept in place until `launch_on` has waited for the kernel; the output is a new
        // allocation.
        unsafe {
            let x = (xp, n, pitch);
            mix_normalize::launch(
                mixer, dplan, shape, dnorm, input, x, out_format, output, op, n,
            )
        }
    };
    launch_on(mixer, run)?;
    into_burn(xout, &device, OP)
}

/// Runs `enqueue` (the call's one kernel launch on `mixer`'s stream), then waits for the stream
/// whether the launch succeeded or not: the kernel has run (burn may read the outputs and reuse
/// the inputs) before the caller drops the address guards. The launch's error comes first.
fn launch_on(mixer: &CudaMixer, enqueue: impl FnOnce() -> Result<()>) -> Result<()> {
    let launched = enqueue();
    let waited = mixer
        .stream()
        .synchronize()
        .map_err(driver_err("waiting for the mixup kernels"));
    launched?;
    waited?;
    CALLS.with(|c| c.set(c.get() + 1));
    Ok(())
}

/// The fused loss on the device: the loss (`[1]` f32, or `[B]` under `Reduction::None`) and,
/// when `grad` is asked for, the gradient for an upstream of 1 (`[B, C]`, the logits' dtype),
/// both as fusion primitives of the inner (non-autodiff) backend.
pub(super) fn loss(
    ordinal: usize,
    logits: &Tensor<2>,
    (spec, plan, labels, op): (&LossSpec<'_>, &MixPlan, &[u32], &'static str),
    grad: bool,
) -> Result<(Fused, Option<Fused>)> {
    let device = logits.device();
    let dtype = logits.dtype();
    let st_dtype = scalar(dtype, "logits", op)?;
    let dims = logits.dims();
    let n = dims[0] * dims[1];
    let rows = match spec.reduction() {
        Reduction::None => dims[0],
        Reduction::Mean | Reduction::Sum => 1,
    };
    let st = state(ordinal)?;
    let mut st = lock(&st);
    // Padded rows (cubecl pads 1 000 f32 logits to 1 024) are read in place: no copy.
    let (z, ld) = resolve(logits, "logits", op, true)?;
    // The logits' span: B rows `ld` apart, the last one unpadded.
    let z_len = mix::input_span(&SampleShape::rows(dims[1]), dims[0], Some(ld))?;
    let l = st.output(&[rows], DType::F32, "logits", op)?;
    let g = match grad {
        true => Some(st.output(&dims, dtype, "logits", op)?),
        false => None,
    };
    let (zp, _rz) = address(&z, z_len.saturating_mul(dtype.size()), "logits", op)?;
    let (lp, _rl) = address(&l, rows * 4, "logits", op)?;
    let (gp, _rg) = match &g {
        Some(g) => {
            let (p, r) = address(g, n * dtype.size(), "logits", op)?;
            (Some(p), Some(r))
        }
        None => (None, None),
    };
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
    let (mixer, dplan) = (&st.mixer, &st.plan);
    let one = RawGradOutput::Scalar(1.0);
    let run = || {
        // SAFETY: every address holds what the kernel reads or writes for `B` rows of `C`
        // classes (sizes checked above: the logits' rows `ld` apart, the outputs dense), kept
        // in place until `launch_on` has waited for the kernel; the outputs are new
        // allocations.
        unsafe {
            let ld = Some(ld);
            crate::cuda::loss::launch(mixer, dplan, dspec, st_dtype, n, &bufs, one, ld)
        }
    };
    launch_on(mixer, run)?;
    let loss = into_fused(l, op)?;
    let grad = g.map(|g| into_fused(g, op)).transpose()?;
    Ok((loss, grad))
}
