//! The low-level API: the same operations over raw device addresses, for code whose tensors
//! are not cudarc slices (tch-rs / PyTorch, burn, custom allocators).
//!
//! Build the mixer on the framework's stream with [`CudaMixer::from_raw_stream`] (PyTorch:
//! `torch.cuda.current_stream().cuda_stream`), so the plan upload and the kernels are ordered
//! with the framework's own work; then pass `tensor.data_ptr()` addresses here.
//!
//! # Safety contract (every function here)
//! - Each address points to device memory of the mixer's device (or is accessible from it),
//!   holding at least the number of elements stated for it, of the stated dtype, aligned to
//!   its element size, and stays valid until the enqueued kernel has finished.
//! - Outputs do not overlap inputs, except where a function says it works in place.
//! - Nothing else writes these buffers while the kernel runs (the caller orders other streams
//!   against the mixer's stream).
//!
//! Under that contract the functions check everything else exactly as the safe API does
//! (plan, shapes, dtype, smoothing, reduction) before enqueuing anything, and return an error
//! rather than panic. What an address itself can show is checked too: 0 for a buffer that
//! holds elements, or an address that is not a multiple of its element's size, is
//! [`MixError::InvalidArgument`] naming the buffer (`x`, `out`, `labels`, `logits`, `grad`,
//! `loss`, `losses`, `grad_output`): a misaligned access would be a sticky error that ends the
//! CUDA context. Labels stay on the device: out-of-range labels are counted by the kernel and
//! reported by [`CudaMixer::check_labels`].
//!
//! The safe API and these functions share each operation's launch (its checks, its kernel
//! choice), so the GPU tests exercise them.
//!
//! # Examples
//!
//! A training step over addresses that another framework owns (here cudarc buffers stand in
//! for them):
//!
//! ```no_run
//! use mixup_kernels::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
//! use mixup_kernels::cuda::raw::{self, CeBuffers, RawGradOutput};
//! use mixup_kernels::cuda::{CudaContext, CudaMixer, DevicePlan};
//! use mixup_kernels::{CeSpec, ImageSize, MixConfig, Reduction, SampleShape, Sampler, ScalarType};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (batch, classes) = (8, 1000);
//! let ctx = CudaContext::new(0)?;
//! let theirs = ctx.new_stream()?; // the framework's stream
//! // SAFETY: `theirs` belongs to device 0's primary context and outlives the mixer.
//! let mixer = unsafe { CudaMixer::from_raw_stream(0, theirs.cu_stream()) }?;
//! let mut x = theirs.alloc_zeros::<f32>(batch * 3 * 32 * 32)?;
//! let mut logits = theirs.alloc_zeros::<f32>(batch * classes)?;
//! let labels = theirs.alloc_zeros::<u32>(batch)?;
//! let mut loss = theirs.alloc_zeros::<f32>(1)?;
//!
//! let sampler = Sampler::new(MixConfig::timm(classes), 0)?;
//! let mut plan = DevicePlan::new(&mixer);
//! plan.upload(&sampler.plan_images(0, batch, ImageSize { height: 32, width: 32 })?)?;
//! let layout = SampleShape::channels_first(3, 32, 32);
//! let (xp, _x) = x.device_ptr_mut(&theirs);
//! // SAFETY: `xp` holds batch·3·32·32 f32 on the mixer's device and stays alive until the
//! // stream has run the kernel; nothing else writes it meanwhile.
//! unsafe { raw::mix_in_place(&mixer, &plan, &layout, ScalarType::F32, xp, batch * 3 * 32 * 32) }?;
//! // ... the forward pass writes `logits` ...
//! let (zp, _z) = logits.device_ptr_mut(&theirs);
//! let (yp, _y) = labels.device_ptr(&theirs);
//! let (lp, _l) = loss.device_ptr_mut(&theirs);
//! let bufs = CeBuffers { logits: zp, labels: yp, grad: Some(zp), loss: Some(lp), losses: None };
//! let spec = CeSpec::new(classes, 0.1, Reduction::Mean).unwrap();
//! // SAFETY: as above; `grad` = `logits` is the in-place case this function allows.
//! unsafe { raw::mixup_ce(&mixer, &plan, &spec, ScalarType::F32, batch * classes, &bufs, RawGradOutput::Scalar(1.0)) }?;
//! # Ok(())
//! # }
//! ```

use crate::config::TargetSpec;
use crate::dtype::ScalarType;
use crate::error::{MixError, Result};
use crate::spec::{CeSpec, SampleShape};

use super::loss::DeviceLoss;
pub use super::mixup_ce::{CeBuffers, RawGradOutput};
use super::{CudaMixer, DeviceBceSpec, DevicePlan};

/// A device address (`CUdeviceptr`).
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::cudarc::driver::DevicePtr;
/// use mixup_kernels::cuda::raw::CUdeviceptr;
/// use mixup_kernels::cuda::CudaContext;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let stream = CudaContext::new(0)?.default_stream();
/// let buf = stream.alloc_zeros::<f32>(16)?;
/// let (ptr, _sync): (CUdeviceptr, _) = buf.device_ptr(&stream); // PyTorch: `tensor.data_ptr()`
/// assert_ne!(ptr, 0);
/// # Ok(())
/// # }
/// ```
pub type CUdeviceptr = u64;

/// A raw CUDA stream handle (cudarc's `CUstream`), as [`CudaMixer::from_raw_stream`] takes it.
///
/// The same name exists in builds without the `cuda` feature, so code naming it compiles
/// either way.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::{raw::CUstream, CudaMixer};
/// let legacy_default: CUstream = std::ptr::null_mut(); // PyTorch: `stream.cuda_stream`
/// // SAFETY: the null stream (the legacy default stream) is valid on every context.
/// let mixer = unsafe { CudaMixer::from_raw_stream(0, legacy_default) };
/// # let _ = mixer;
/// ```
pub type CUstream = cudarc::driver::sys::CUstream;

/// The buffers of a binary cross-entropy call: the same addresses as a cross-entropy call
/// ([`CeBuffers`]: logits `[B, C]`, labels `[B]` u32, gradient `[B, C]` or `None`, the reduced
/// loss, per-sample losses `[B]` or `None`), the gradient again allowed over the logits.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::raw::BceBuffers;
/// # let (logits, labels, loss) = (0x1000u64, 0x2000u64, 0x3000u64);
/// let bufs = BceBuffers { logits, labels, grad: Some(logits), loss: Some(loss), losses: None };
/// assert_eq!(BceBuffers { grad: None, ..bufs }.grad, None);
/// ```
pub type BceBuffers = CeBuffers;

/// Refuses an address the kernels cannot use for `n` elements of `elem` bytes: 0, or not a
/// multiple of `elem` (an empty buffer may have any address, as PyTorch's empty tensors
/// have 0).
fn check_address(what: &'static str, addr: CUdeviceptr, elem: usize, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let reason = if addr == 0 {
        format!("is 0 (null) for {n} elements")
    } else if !addr.is_multiple_of(elem as u64) {
        format!("{addr:#x} is not aligned to its {elem}-byte elements")
    } else {
        return Ok(());
    };
    Err(MixError::InvalidArgument { what, reason })
}

/// The addresses of a loss call (`n` = B·C logits of `dtype`, `c` classes).
fn check_loss_addresses(
    dtype: ScalarType,
    n: usize,
    c: usize,
    b: &CeBuffers,
    up: &RawGradOutput,
) -> Result<()> {
    let rows = n / c.max(1);
    check_address("logits", b.logits, dtype.size(), n)?;
    check_address("labels", b.labels, 4, rows)?;
    if let Some(g) = b.grad {
        check_address("grad", g, dtype.size(), n)?;
    }
    if let Some(l) = b.loss {
        check_address("loss", l, 4, 1)?;
    }
    if let Some(l) = b.losses {
        check_address("losses", l, 4, rows)?;
    }
    match *up {
        RawGradOutput::Scalar(_) => Ok(()),
        RawGradOutput::Device(p) => check_address("grad_output", p, 4, rows.min(1)),
        RawGradOutput::PerSample(p) => check_address("grad_output", p, 4, rows),
    }
}

/// Mixes `x` into `out`, each `len` elements of `dtype` (`[B, sample]` in `layout`).
///
/// # Safety
/// See the module's contract; `out` does not overlap `x`.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
/// use mixup_kernels::cuda::{raw, CudaMixer, DevicePlan};
/// use mixup_kernels::{ScalarType, SampleShape, MixPlan};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::from_parts(&[1, 2, 0], &[0.5; 3])?)?;
/// let x = s.clone_htod(&vec![1.0f32; 3 * 64])?;
/// let mut out = s.alloc_zeros::<f32>(3 * 64)?;
/// let (xp, _r) = x.device_ptr(s);
/// let (op, _w) = out.device_ptr_mut(s);
/// // SAFETY: both hold 3·64 f32 on the mixer's device, do not overlap, and live until the
/// // kernel has run (`_r` and `_w` order their release after it).
/// unsafe { raw::mix(&mixer, &plan, &SampleShape::rows(64), ScalarType::F32, xp, op, 3 * 64) }?;
/// # Ok(())
/// # }
/// ```
pub unsafe fn mix(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    layout: &SampleShape,
    dtype: ScalarType,
    x: CUdeviceptr,
    out: CUdeviceptr,
    len: usize,
) -> Result<()> {
    check_address("x", x, dtype.size(), len)?;
    check_address("out", out, dtype.size(), len)?;
    // SAFETY: forwarded.
    unsafe { super::mix::launch(mixer, plan, layout, dtype, (x, None), out, len, false) }
}

/// Mixes `x` (`len` elements of `dtype`) in place; the plan must be an involution.
///
/// # Safety
/// See the module's contract.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::cudarc::driver::DevicePtrMut;
/// use mixup_kernels::cuda::{raw, CudaMixer, DevicePlan};
/// use mixup_kernels::{bf16, ScalarType, SampleShape, MixPlan};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?)?; // an involution
/// let layout = SampleShape::channels_last(8, 8, 3);
/// let mut x = s.alloc_zeros::<bf16>(2 * 8 * 8 * 3)?;
/// let (xp, _w) = x.device_ptr_mut(s);
/// // SAFETY: `xp` holds 2·8·8·3 bf16 on the mixer's device, alive until the kernel has run.
/// unsafe { raw::mix_in_place(&mixer, &plan, &layout, ScalarType::BF16, xp, 2 * 8 * 8 * 3) }?;
/// # Ok(())
/// # }
/// ```
pub unsafe fn mix_in_place(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    layout: &SampleShape,
    dtype: ScalarType,
    x: CUdeviceptr,
    len: usize,
) -> Result<()> {
    check_address("x", x, dtype.size(), len)?;
    // SAFETY: forwarded.
    unsafe { super::mix::launch(mixer, plan, layout, dtype, (x, None), x, len, true) }
}

/// Writes soft targets (`out_len` = B·C elements of `dtype`) from `labels` (`[B]` u32).
///
/// # Safety
/// See the module's contract.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
/// use mixup_kernels::cuda::{raw, CudaMixer, DevicePlan};
/// use mixup_kernels::{ScalarType, MixPlan, TargetSpec};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?)?;
/// let labels = s.clone_htod(&vec![3u32, 5])?;
/// let mut t = s.alloc_zeros::<f32>(2 * 10)?;
/// let (yp, _r) = labels.device_ptr(s);
/// let (tp, _w) = t.device_ptr_mut(s);
/// let spec = TargetSpec::new(10, 0.1)?;
/// // SAFETY: `yp` holds 2 u32 and `tp` 2·10 f32 on the mixer's device, alive until the kernel
/// // has run, not overlapping.
/// unsafe { raw::soft_targets(&mixer, &plan, &spec, ScalarType::F32, yp, tp, 2 * 10) }?;
/// mixer.check_labels()?; // out-of-range labels are counted on the device
/// # Ok(())
/// # }
/// ```
pub unsafe fn soft_targets(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    spec: &TargetSpec,
    dtype: ScalarType,
    labels: CUdeviceptr,
    out: CUdeviceptr,
    out_len: usize,
) -> Result<()> {
    check_address("labels", labels, 4, out_len / spec.num_classes().max(1))?;
    check_address("out", out, dtype.size(), out_len)?;
    // SAFETY: forwarded.
    unsafe { super::soft_targets::launch(mixer, plan, spec, dtype, labels, out, out_len) }
}

/// The fused mixup cross-entropy over `logits_len` = B·C logits of `dtype` (see
/// [`CeBuffers`]).
///
/// # Safety
/// See the module's contract.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
/// use mixup_kernels::cuda::raw::{self, CeBuffers, RawGradOutput};
/// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
/// use mixup_kernels::{CeSpec, ScalarType, MixPlan, Reduction};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?)?;
/// let z = s.alloc_zeros::<f32>(2 * 10)?;
/// let y = s.clone_htod(&vec![3u32, 5])?;
/// let (mut g, mut losses) = (s.alloc_zeros::<f32>(20)?, s.alloc_zeros::<f32>(2)?);
/// let up = s.clone_htod(&vec![1.0f32, 0.5])?; // per-sample weights from above
/// let (zp, _a) = z.device_ptr(s);
/// let (yp, _b) = y.device_ptr(s);
/// let (gp, _c) = g.device_ptr_mut(s);
/// let (sp, _e) = losses.device_ptr_mut(s);
/// let (up, _f) = up.device_ptr(s);
/// // Reduction::None: the per-sample losses are the result, there is no reduced loss.
/// let bufs = CeBuffers { logits: zp, labels: yp, grad: Some(gp), loss: None, losses: Some(sp) };
/// let spec = CeSpec::new(10, 0.0, Reduction::None).unwrap();
/// // SAFETY: every address holds what `CeBuffers` states for B = 2, C = 10, on the mixer's
/// // device, alive until the kernel has run; the gradient does not overlap the other buffers.
/// unsafe { raw::mixup_ce(&mixer, &plan, &spec, ScalarType::F32, 20, &bufs, RawGradOutput::PerSample(up)) }?;
/// # Ok(())
/// # }
/// ```
pub unsafe fn mixup_ce(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    spec: &CeSpec,
    dtype: ScalarType,
    logits_len: usize,
    buffers: &CeBuffers,
    grad_output: RawGradOutput,
) -> Result<()> {
    check_loss_addresses(dtype, logits_len, spec.num_classes(), buffers, &grad_output)?;
    let spec = DeviceLoss::Ce(spec);
    let (n, up) = (logits_len, grad_output);
    // SAFETY: forwarded; dense rows.
    unsafe { super::loss::launch(mixer, plan, spec, dtype, n, buffers, up, None) }
}

/// The fused mixup binary cross-entropy over `logits_len` = B·C logits of `dtype` (see
/// [`BceBuffers`]), with the per-class weights of `spec` already on the device (upload them once
/// with [`DeviceBceSpec::new`] on the mixer, and reuse the spec every step: the call copies
/// nothing).
///
/// # Safety
/// See the module's contract.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
/// use mixup_kernels::cuda::raw::{self, BceBuffers, RawGradOutput};
/// use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec, DevicePlan};
/// use mixup_kernels::{BceSpec, ScalarType, MixPlan, Reduction};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?)?;
/// // The class weights go to the device once, with the spec.
/// let spec = BceSpec::new(10, 0.1, Reduction::Mean)?.with_pos_weight(vec![2.0; 10])?;
/// let dspec = DeviceBceSpec::new(&mixer, spec)?;
/// let mut z = s.alloc_zeros::<f32>(2 * 10)?;
/// let y = s.clone_htod(&vec![3u32, 5])?;
/// let mut loss = s.alloc_zeros::<f32>(1)?;
/// let (zp, _a) = z.device_ptr_mut(s);
/// let (yp, _b) = y.device_ptr(s);
/// let (lp, _c) = loss.device_ptr_mut(s);
/// let bufs = BceBuffers { logits: zp, labels: yp, grad: Some(zp), loss: Some(lp), losses: None };
/// // SAFETY: every address holds what `BceBuffers` states for B = 2, C = 10, on the mixer's
/// // device, alive until the kernel has run; `grad` = `logits` is the in-place case allowed.
/// unsafe { raw::mixup_bce(&mixer, &plan, &dspec, ScalarType::F32, 20, &bufs, RawGradOutput::Scalar(1.0)) }?;
/// # Ok(())
/// # }
/// ```
pub unsafe fn mixup_bce(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    spec: &DeviceBceSpec,
    dtype: ScalarType,
    logits_len: usize,
    buffers: &BceBuffers,
    grad_output: RawGradOutput,
) -> Result<()> {
    let c = spec.spec().num_classes();
    check_loss_addresses(dtype, logits_len, c, buffers, &grad_output)?;
    let spec = DeviceLoss::Bce(spec);
    let (n, up) = (logits_len, grad_output);
    // SAFETY: forwarded; dense rows.
    unsafe { super::loss::launch(mixer, plan, spec, dtype, n, buffers, up, None) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<()>) -> Option<&'static str> {
        match r {
            Err(MixError::InvalidArgument { what, .. }) => Some(what),
            Ok(()) => None,
            Err(e) => panic!("another error: {e}"),
        }
    }

    /// Null and misaligned addresses are refused by name; an empty buffer may be anywhere.
    #[test]
    fn addresses_are_checked() {
        assert_eq!(refused(check_address("x", 0x1000, 4, 8)), None);
        assert_eq!(refused(check_address("x", 0x1002, 2, 8)), None);
        assert_eq!(refused(check_address("x", 0x1002, 4, 8)), Some("x"));
        assert_eq!(refused(check_address("out", 0, 1, 1)), Some("out"));
        assert_eq!(refused(check_address("x", 0, 4, 0)), None);
        assert_eq!(refused(check_address("x", 0x1001, 4, 0)), None);
        let ok = CeBuffers {
            logits: 0x1000,
            labels: 0x2000,
            grad: Some(0x3000),
            loss: Some(0x4000),
            losses: Some(0x5000),
        };
        let up = RawGradOutput::PerSample(0x6000);
        let check = |b: &CeBuffers, up: &RawGradOutput| {
            refused(check_loss_addresses(ScalarType::BF16, 20, 10, b, up))
        };
        assert_eq!(check(&ok, &up), None);
        for (b, what) in [
            (
                CeBuffers {
                    logits: 0x1001,
                    ..ok
                },
                "logits",
            ),
            (
                CeBuffers {
                    labels: 0x2002,
                    ..ok
                },
                "labels",
            ),
            (
                CeBuffers {
                    grad: Some(0x3001),
                    ..ok
                },
                "grad",
            ),
            (
                CeBuffers {
                    loss: Some(0),
                    ..ok
                },
                "loss",
            ),
            (
                CeBuffers {
                    losses: Some(0x5006),
                    ..ok
                },
                "losses",
            ),
        ] {
            assert_eq!(check(&b, &up), Some(what));
        }
        assert_eq!(
            check(&ok, &RawGradOutput::Device(0x6001)),
            Some("grad_output")
        );
        assert_eq!(check(&ok, &RawGradOutput::Scalar(1.0)), None);
        // An empty batch: null logits, labels and gradient are fine; the loss is still written.
        let empty = CeBuffers {
            logits: 0,
            labels: 0,
            grad: Some(0),
            ..ok
        };
        assert_eq!(
            refused(check_loss_addresses(ScalarType::F32, 0, 10, &empty, &up)),
            None
        );
        let no_loss = CeBuffers {
            loss: Some(0),
            ..empty
        };
        assert_eq!(
            refused(check_loss_addresses(ScalarType::F32, 0, 10, &no_loss, &up)),
            Some("loss")
        );
    }
}
