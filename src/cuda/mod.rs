//! The CUDA path: fused kernels compiled at run time through NVRTC, enqueued on your stream.
//!
//! ```no_run
//! use mixup_kernels::cuda::{CudaMixer, DevicePlan, DeviceGradOutput};
//! use mixup_kernels::{CeSpec, ImageSize, MixConfig, Reduction, SampleShape, Sampler};
//!
//! # fn main() -> mixup_kernels::Result<()> {
//! let mixer = CudaMixer::new(0)?; // clear error without a driver or NVRTC
//! let stream = mixer.stream().clone();
//! let sampler = Sampler::new(MixConfig::timm(1000), 42)?;
//! let mut plan = DevicePlan::new(&mixer);
//! # let (images, labels, logits): (Vec<f32>, Vec<u32>, Vec<f32>) = (vec![0.0; 8 * 3 * 4 * 4], vec![0; 8], vec![0.0; 8 * 1000]);
//! let mut x = stream.clone_htod(&images).unwrap();
//! let y = stream.clone_htod(&labels).unwrap();
//! let mut z = stream.clone_htod(&logits).unwrap();
//! let mut loss = stream.alloc_zeros::<f32>(1).unwrap();
//!
//! // One training step: upload the plan (one async copy), mix in place, then the loss.
//! plan.upload(&sampler.plan_images(0, 8, ImageSize { height: 4, width: 4 })?)?;
//! let layout = SampleShape::channels_first(3, 4, 4);
//! mixer.mix_in_place(&plan, &layout, &mut x.as_view_mut())?;
//! // ... forward pass producing `z` ...
//! let spec = CeSpec::new(1000, 0.1, Reduction::Mean).unwrap();
//! mixer.mixup_ce_in_place(&plan, &spec, &mut z.as_view_mut(), &y.as_view(),
//!     DeviceGradOutput::Scalar(1.0), Some(&mut loss.as_view_mut()), None)?;
//! mixer.check_labels()?; // the one synchronizing call, when you want it
//! # Ok(()) }
//! ```
//!
//! - [`CudaMixer`]: device, stream, compiled kernels; the operations are its methods
//!   (`mix`, `mix_in_place`, `soft_targets`, `mixup_ce`, `mixup_ce_in_place`,
//!   `mixup_ce_forward`, `mixup_bce`, `mixup_bce_in_place`, `mixup_bce_forward`,
//!   `check_labels`, `mix_normalize`, `mix_normalize_raw`).
//! - [`DeviceNormalize`]: a [`Normalize`](crate::Normalize) with its constants on the device.
//! - [`DeviceBceSpec`]: a BCE spec with its class weights on the device.
//! - [`DevicePlan`]: the plan on the device, one asynchronous copy per step.
//! - [`raw`]: the same operations on raw device addresses (tch-rs, burn, custom code).
//! - [`CudaError`]: the driver's or NVRTC's result code behind a device error.
//!
//! Nothing in a step synchronizes with the host or allocates once warmed up (the first call of
//! each kernel compiles it, the first batch of a new maximum size grows a buffer), so a step can
//! be captured in a CUDA graph; see [`DevicePlan`] for the plan upload around a graph (and
//! [`DevicePlan::with_pinned_staging`] for an upload that is asynchronous by guarantee, not
//! just in practice).
//!
//! A mixer belongs to one stream. On `CU_STREAM_PER_THREAD` (candle's default stream) each host
//! thread has its own stream: give each thread its own mixer and plan, since the loss
//! reduction's block counter and the scratch buffers of one mixer assume one stream order. A
//! mixer, [`DevicePlan`], [`DeviceNormalize`] or [`DeviceBceSpec`] made on that handle refuses to
//! be used from another host thread (`MixError::InvalidArgument` naming `mixer`, `plan`,
//! `normalize` or `spec`); a plan, normalization or BCE spec also refuses a mixer other than the
//! one it was made with. Dropping a mixer (or replacing its options) first waits for the work it
//! queued, since its kernel modules and buffers go with it.
//!
//! The module exists with the `cuda` feature (on by default; or `candle-cuda`). Code that also
//! builds without it asks [`check_cuda`](crate::check_cuda), present in every build, and keeps
//! its GPU branch behind `#[cfg(feature = "cuda")]`.

mod cache;
pub(crate) mod context;
mod emulated;
mod entries;
pub(crate) mod loss;
pub(crate) mod mix;
pub(crate) mod mix_normalize;
mod mixup_bce;
mod mixup_ce;
mod nvrtc;
mod plan;
pub mod raw;
mod soft_targets;
mod tuning;

pub use context::{CudaError, CudaMixer, CudaMixerOptions};
pub use mix_normalize::DeviceNormalize;
pub use mixup_bce::DeviceBceSpec;
pub use mixup_ce::DeviceGradOutput;
pub use plan::DevicePlan;
pub use tuning::KernelTuning;

/// The cudarc version the API is written against (0.19), for building slices and streams.
///
/// # Examples
///
/// ```no_run
/// // Raw device addresses of cudarc buffers, for the `raw` API.
/// use mixup_kernels::cuda::cudarc::driver::DevicePtr;
/// use mixup_kernels::cuda::CudaContext;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let stream = CudaContext::new(0)?.default_stream();
/// let buf = stream.alloc_zeros::<f32>(8)?;
/// let (ptr, _sync) = buf.device_ptr(&stream);
/// assert_ne!(ptr, 0);
/// # Ok(())
/// # }
/// ```
pub use cudarc;
/// The cudarc types the operations take: a context per device, streams, and device buffers
/// with their borrowed views.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::{CudaMixer, CudaSlice, CudaView};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // `CudaContext::new` panics without libcuda: ask through the mixer first.
/// let mixer = CudaMixer::new(0)?;
/// let buf: CudaSlice<f32> = mixer.stream().alloc_zeros(16)?;
/// let view: CudaView<'_, f32> = buf.as_view();
/// assert_eq!(view.len(), 16);
/// # Ok(())
/// # }
/// ```
pub use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut};

/// Kernel sources, names and the NVRTC compiler, for tests and tools (not a stable API).
#[doc(hidden)]
pub mod kernels {
    pub use super::entries::{Kernel, entries};
    /// The host's launches without a device, for the host emulation of the kernels.
    pub mod emulated {
        pub use super::super::emulated::*;
    }
    pub use super::mixup_bce::bce_launch;
    pub use super::mixup_ce::ce_launch;
    pub use super::nvrtc::{
        Compiled, MODULES, ModuleSource, Target, compile, defines_entry, options, supported_archs,
        version,
    };
}
