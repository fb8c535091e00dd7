//! The CUDA API of a build without the `cuda` feature: the same names and signatures, so code
//! written against the GPU path compiles either way; every call returns
//! [`MixError::Unsupported`]. Constructors fail, so the methods taking a mixer can never run.
//!
//! The cudarc types the real API takes (`CudaView`, `CudaStream`, ...) are uninhabited
//! placeholders here.
//!
//! # Examples
//!
//! ```
//! use mixup_kernels::cuda::CudaMixer;
//! use mixup_kernels::MixError;
//! // The usual pattern: try the GPU, fall back to the CPU path.
//! match CudaMixer::new(0) {
//!     Ok(_mixer) => unreachable!("no CUDA in this build"),
//!     Err(MixError::Unsupported(msg)) => assert!(msg.contains("--features cuda")),
//!     Err(e) => panic!("unexpected error: {e}"),
//! }
//! ```

use std::convert::Infallible;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::TargetSpec;
use crate::dtype::{DType, Element, FloatElement};
use crate::error::{MixError, Result};
use crate::plan::MixPlan;
use crate::spec::{BceSpec, CeSpec, Layout};

fn unsupported<T>() -> Result<T> {
    Err(MixError::Unsupported(
        "mixup-kernels was built without the `cuda` feature; rebuild with `--features cuda` \
         (on by default) to use the GPU"
            .into(),
    ))
}

/// Placeholder for cudarc's `CudaContext` (no value exists in this build).
///
/// # Examples
///
/// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
///
/// ```
/// use mixup_kernels::cuda::{CudaContext, CudaMixer};
/// // The name exists, so signatures mentioning it compile; no value can be made.
/// fn _takes(_: &CudaContext) {}
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug)]
pub struct CudaContext(Infallible);
/// Placeholder for cudarc's `CudaStream`.
///
/// # Examples
///
/// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
///
/// ```
/// use std::sync::Arc;
/// use mixup_kernels::cuda::{CudaMixer, CudaStream};
/// fn _wrap(s: Arc<CudaStream>) -> mixup_kernels::Result<CudaMixer> { CudaMixer::from_stream(s) }
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug)]
pub struct CudaStream(Infallible);
/// Placeholder for cudarc's `CudaSlice`.
///
/// # Examples
///
/// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, CudaSlice};
/// fn _takes(_: &CudaSlice<f32>) {}
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug)]
pub struct CudaSlice<T>(Infallible, PhantomData<T>);
/// Placeholder for cudarc's `CudaView`.
///
/// # Examples
///
/// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, CudaView};
/// fn _takes(_: &CudaView<'_, u32>) {}
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug)]
pub struct CudaView<'a, T>(Infallible, PhantomData<&'a T>);
/// Placeholder for cudarc's `CudaViewMut`.
///
/// # Examples
///
/// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, CudaViewMut};
/// fn _takes(_: &mut CudaViewMut<'_, f32>) {}
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug)]
pub struct CudaViewMut<'a, T>(Infallible, PhantomData<&'a mut T>);

/// Options for [`CudaMixer::with_options`] (unused in this build).
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, CudaMixerOptions};
/// use mixup_kernels::MixError;
/// let options = CudaMixerOptions { disk_cache: false, ..Default::default() };
/// assert!(matches!(CudaMixer::with_options(0, options), Err(MixError::Unsupported(_))));
/// ```
#[derive(Debug, Clone)]
pub struct CudaMixerOptions {
    /// Whether compiled kernels are kept on disk.
    pub disk_cache: bool,
    /// Folder of the on-disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Extra NVRTC options.
    pub nvrtc_options: Vec<String>,
}

impl Default for CudaMixerOptions {
    fn default() -> Self {
        Self {
            disk_cache: true,
            cache_dir: None,
            nvrtc_options: Vec::new(),
        }
    }
}

/// How a kernel unit was obtained.
///
/// # Examples
///
/// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, UnitSource};
/// fn compiled(m: &CudaMixer) -> usize {
///     m.load_report().iter().filter(|l| l.source == UnitSource::Compiled).count()
/// }
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitSource {
    /// Compiled by NVRTC.
    Compiled,
    /// Loaded from the on-disk cache.
    DiskCache,
}

/// One kernel unit's first load.
///
/// # Examples
///
/// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, UnitLoad};
/// fn slowest(m: &CudaMixer) -> Option<UnitLoad> { m.load_report().into_iter().max_by_key(|l| l.time) }
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct UnitLoad {
    /// The unit.
    pub unit: &'static str,
    /// Compiled or read from disk.
    pub source: UnitSource,
    /// Wall time.
    pub time: Duration,
}

/// The CUDA mixer; cannot be created in this build.
///
/// # Examples
///
/// Every constructor fails with [`MixError::Unsupported`], so a program can fall back to the CPU:
///
/// ```
/// use mixup_kernels::{cuda::CudaMixer, MixError};
/// match CudaMixer::new(0) {
///     Ok(_) => unreachable!(),
///     Err(e) => assert!(matches!(e, MixError::Unsupported(_))), // "rebuild with --features cuda"
/// }
/// ```
#[derive(Debug)]
pub struct CudaMixer {
    never: Infallible,
}

/// The gradient arriving from above the loss, on the device side.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, DeviceUpstream};
/// let up = DeviceUpstream::Scalar(1.0); // the host variant can be made; the others need a device
/// assert!(matches!(up, DeviceUpstream::Scalar(g) if g == 1.0));
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug)]
pub enum DeviceUpstream<'a> {
    /// One host value.
    Scalar(f32),
    /// One device value `[1]`.
    Device(CudaView<'a, f32>),
    /// One device value per sample `[B]`.
    PerSample(CudaView<'a, f32>),
}

impl CudaMixer {
    /// Fails: built without the `cuda` feature.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{cuda::CudaMixer, MixError};
    /// assert!(matches!(CudaMixer::new(0), Err(MixError::Unsupported(_))));
    /// ```
    pub fn new(ordinal: usize) -> Result<Self> {
        let _ = ordinal;
        unsupported()
    }

    /// Fails: built without the `cuda` feature.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaMixerOptions};
    /// use mixup_kernels::MixError;
    /// let r = CudaMixer::with_options(0, CudaMixerOptions::default());
    /// assert!(matches!(r, Err(MixError::Unsupported(_))));
    /// ```
    pub fn with_options(ordinal: usize, options: CudaMixerOptions) -> Result<Self> {
        let _ = (ordinal, options);
        unsupported()
    }

    /// Fails: built without the `cuda` feature.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mixup_kernels::cuda::{CudaMixer, CudaStream};
    /// fn wrap(stream: Arc<CudaStream>) -> mixup_kernels::Result<CudaMixer> { CudaMixer::from_stream(stream) }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let _ = stream;
        unsupported()
    }

    /// Fails: built without the `cuda` feature.
    ///
    /// # Safety
    /// None needed in this build; the real one documents its contract.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{cuda::CudaMixer, MixError};
    /// // SAFETY: nothing is dereferenced in this build (a real stream is needed with `cuda`).
    /// let r = unsafe { CudaMixer::from_raw_stream(0, std::ptr::null_mut()) };
    /// assert!(matches!(r, Err(MixError::Unsupported(_))));
    /// ```
    pub unsafe fn from_raw_stream(ordinal: usize, stream: raw::CUstream) -> Result<Self> {
        let _ = (ordinal, stream);
        unsupported()
    }

    /// Fails: built without the `cuda` feature.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mixup_kernels::cuda::{CudaMixer, CudaMixerOptions, CudaStream};
    /// fn wrap(stream: Arc<CudaStream>) -> mixup_kernels::Result<CudaMixer> {
    ///     CudaMixer::from_stream_with(stream, CudaMixerOptions::default())
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn from_stream_with(stream: Arc<CudaStream>, options: CudaMixerOptions) -> Result<Self> {
        let _ = (stream, options);
        unsupported()
    }

    /// The stream (unreachable: no mixer exists in this build).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// fn same(a: &CudaMixer, b: &CudaMixer) -> bool { std::sync::Arc::ptr_eq(a.stream(), b.stream()) }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn stream(&self) -> &Arc<CudaStream> {
        match self.never {}
    }

    /// Compute capability (unreachable).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// fn cc(m: &CudaMixer) -> u32 { m.compute_capability() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn compute_capability(&self) -> u32 {
        match self.never {}
    }

    /// Target architecture (unreachable).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// fn arch(m: &CudaMixer) -> String { m.target_arch() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn target_arch(&self) -> String {
        match self.never {}
    }

    /// NVRTC version (unreachable).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// fn nvrtc(m: &CudaMixer) -> (i32, i32) { m.nvrtc_version() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn nvrtc_version(&self) -> (i32, i32) {
        match self.never {}
    }

    /// Multiprocessors (unreachable).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// fn sms(m: &CudaMixer) -> u32 { m.multiprocessors() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn multiprocessors(&self) -> u32 {
        match self.never {}
    }

    /// Cache folder (unreachable).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// fn cached(m: &CudaMixer) -> bool { m.cache_dir().is_some() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::{cuda::CudaMixer, DType, Result};
    /// fn warm_up(m: &CudaMixer) -> Result<()> { m.preload(DType::BF16) }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn preload(&self, dtype: DType) -> Result<()> {
        let _ = dtype;
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// fn units(m: &CudaMixer) -> usize { m.load_report().len() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn load_report(&self) -> Vec<UnitLoad> {
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::{cuda::CudaMixer, Result};
    /// fn log_step(m: &CudaMixer) -> Result<()> { m.check_labels() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn check_labels(&self) -> Result<()> {
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DevicePlan};
    /// use mixup_kernels::{Layout, Result};
    /// fn step(m: &CudaMixer, p: &DevicePlan, x: &CudaView<'_, f32>, out: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     m.mix(p, &Layout::Rows(16), x, out)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn mix<T: Element>(
        &self,
        plan: &DevicePlan,
        layout: &Layout,
        x: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let _ = (plan, layout, x, out);
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaViewMut, DevicePlan};
    /// use mixup_kernels::{Layout, Result};
    /// fn step(m: &CudaMixer, p: &DevicePlan, x: &mut CudaViewMut<'_, u8>) -> Result<()> {
    ///     m.mix_in_place(p, &Layout::Nhwc { height: 32, width: 32, channels: 3 }, x)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn mix_in_place<T: Element>(
        &self,
        plan: &DevicePlan,
        layout: &Layout,
        x: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let _ = (plan, layout, x);
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DevicePlan};
    /// use mixup_kernels::{bf16, Result, TargetSpec};
    /// fn targets(m: &CudaMixer, p: &DevicePlan, y: &CudaView<'_, u32>, t: &mut CudaViewMut<'_, bf16>) -> Result<()> {
    ///     m.soft_targets(p, y, &TargetSpec::new(1000, 0.1)?, t)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn soft_targets<T: FloatElement>(
        &self,
        plan: &DevicePlan,
        labels: &CudaView<'_, u32>,
        spec: &TargetSpec,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let _ = (plan, labels, spec, out);
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DevicePlan};
    /// use mixup_kernels::{CeSpec, Reduction, Result};
    /// fn eval(m: &CudaMixer, p: &DevicePlan, z: &CudaView<'_, f32>, y: &CudaView<'_, u32>,
    ///         loss: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     m.mixup_ce_forward(p, &CeSpec::new(10, 0.0, Reduction::Mean), z, y, loss, None)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn mixup_ce_forward<T: FloatElement>(
        &self,
        plan: &DevicePlan,
        spec: &CeSpec,
        logits: &CudaView<'_, T>,
        labels: &CudaView<'_, u32>,
        loss: &mut CudaViewMut<'_, f32>,
        losses: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let _ = (plan, spec, logits, labels, loss, losses);
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DevicePlan, DeviceUpstream};
    /// use mixup_kernels::{CeSpec, Reduction, Result};
    /// fn train(m: &CudaMixer, p: &DevicePlan, z: &CudaView<'_, f32>, y: &CudaView<'_, u32>,
    ///          loss: &mut CudaViewMut<'_, f32>, grad: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     let spec = CeSpec::new(10, 0.1, Reduction::Mean);
    ///     m.mixup_ce(p, &spec, z, y, DeviceUpstream::Scalar(1.0), loss, None, grad)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn mixup_ce<T: FloatElement>(
        &self,
        plan: &DevicePlan,
        spec: &CeSpec,
        logits: &CudaView<'_, T>,
        labels: &CudaView<'_, u32>,
        upstream: DeviceUpstream<'_>,
        loss: &mut CudaViewMut<'_, f32>,
        losses: Option<&mut CudaViewMut<'_, f32>>,
        grad: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let _ = (plan, spec, logits, labels, upstream, loss, losses, grad);
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DevicePlan, DeviceUpstream};
    /// use mixup_kernels::{CeSpec, Reduction, Result};
    /// fn train(m: &CudaMixer, p: &DevicePlan, z: &mut CudaViewMut<'_, f32>, y: &CudaView<'_, u32>,
    ///          loss: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     let spec = CeSpec::new(10, 0.1, Reduction::Mean);
    ///     m.mixup_ce_in_place(p, &spec, z, y, DeviceUpstream::Scalar(1.0), loss, None)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn mixup_ce_in_place<T: FloatElement>(
        &self,
        plan: &DevicePlan,
        spec: &CeSpec,
        logits: &mut CudaViewMut<'_, T>,
        labels: &CudaView<'_, u32>,
        upstream: DeviceUpstream<'_>,
        loss: &mut CudaViewMut<'_, f32>,
        losses: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let _ = (plan, spec, logits, labels, upstream, loss, losses);
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DeviceBceSpec, DevicePlan};
    /// use mixup_kernels::Result;
    /// fn eval(m: &CudaMixer, p: &DevicePlan, s: &DeviceBceSpec, z: &CudaView<'_, f32>,
    ///         y: &CudaView<'_, u32>, loss: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     m.mixup_bce_forward(p, s, z, y, loss, None)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn mixup_bce_forward<T: FloatElement>(
        &self,
        plan: &DevicePlan,
        spec: &DeviceBceSpec,
        logits: &CudaView<'_, T>,
        labels: &CudaView<'_, u32>,
        loss: &mut CudaViewMut<'_, f32>,
        losses: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let _ = (plan, spec, logits, labels, loss, losses);
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DeviceBceSpec, DevicePlan, DeviceUpstream};
    /// use mixup_kernels::Result;
    /// fn train(m: &CudaMixer, p: &DevicePlan, s: &DeviceBceSpec, z: &CudaView<'_, f32>,
    ///          y: &CudaView<'_, u32>, loss: &mut CudaViewMut<'_, f32>,
    ///          grad: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     m.mixup_bce(p, s, z, y, DeviceUpstream::Scalar(1.0), loss, None, grad)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn mixup_bce<T: FloatElement>(
        &self,
        plan: &DevicePlan,
        spec: &DeviceBceSpec,
        logits: &CudaView<'_, T>,
        labels: &CudaView<'_, u32>,
        upstream: DeviceUpstream<'_>,
        loss: &mut CudaViewMut<'_, f32>,
        losses: Option<&mut CudaViewMut<'_, f32>>,
        grad: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let _ = (plan, spec, logits, labels, upstream, loss, losses, grad);
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DeviceBceSpec, DevicePlan, DeviceUpstream};
    /// use mixup_kernels::Result;
    /// fn train(m: &CudaMixer, p: &DevicePlan, s: &DeviceBceSpec, z: &mut CudaViewMut<'_, f32>,
    ///          y: &CudaView<'_, u32>, loss: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     m.mixup_bce_in_place(p, s, z, y, DeviceUpstream::Scalar(1.0), loss, None)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn mixup_bce_in_place<T: FloatElement>(
        &self,
        plan: &DevicePlan,
        spec: &DeviceBceSpec,
        logits: &mut CudaViewMut<'_, T>,
        labels: &CudaView<'_, u32>,
        upstream: DeviceUpstream<'_>,
        loss: &mut CudaViewMut<'_, f32>,
        losses: Option<&mut CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let _ = (plan, spec, logits, labels, upstream, loss, losses);
        match self.never {}
    }
}

/// A BCE spec with its class weights on the device; cannot be created in this build.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec};
/// use mixup_kernels::{BceSpec, Reduction};
/// // The name exists, so signatures mentioning it compile; no mixer exists to make one.
/// fn _upload(m: &CudaMixer, s: BceSpec) -> mixup_kernels::Result<DeviceBceSpec> {
///     DeviceBceSpec::new(m, s)
/// }
/// assert!(CudaMixer::new(0).is_err());
/// # let _ = BceSpec::new(2, 0.0, Reduction::Mean);
/// ```
#[derive(Debug)]
pub struct DeviceBceSpec {
    never: Infallible,
}

impl DeviceBceSpec {
    /// Unreachable: no mixer exists in this build.
    pub fn new(mixer: &CudaMixer, spec: BceSpec) -> Result<Self> {
        let _ = spec;
        match mixer.never {}
    }

    /// Unreachable.
    pub fn spec(&self) -> &BceSpec {
        match self.never {}
    }
}

/// The plan on the device; cannot be created in this build.
///
/// # Examples
///
/// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
/// use mixup_kernels::{MixPlan, Result};
/// fn upload(m: &CudaMixer, plan: &MixPlan) -> Result<DevicePlan> {
///     let mut d = DevicePlan::new(m);
///     d.upload(plan)?;
///     Ok(d)
/// }
/// assert!(CudaMixer::new(0).is_err());
/// ```
#[derive(Debug)]
pub struct DevicePlan {
    never: Infallible,
}

impl DevicePlan {
    /// Unreachable (needs a mixer).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// fn make(m: &CudaMixer) -> DevicePlan { DevicePlan::new(m) }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn new(mixer: &CudaMixer) -> Self {
        match mixer.never {}
    }

    /// Unreachable (needs a mixer).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// fn make(m: &CudaMixer) -> DevicePlan { DevicePlan::with_pinned_staging(m) }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn with_pinned_staging(mixer: &CudaMixer) -> Self {
        match mixer.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{MixPlan, Result};
    /// fn step(d: &mut DevicePlan, p: &MixPlan) -> Result<()> { d.upload(p) }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn upload(&mut self, plan: &MixPlan) -> Result<()> {
        let _ = plan;
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// fn batch(d: &DevicePlan) -> usize { d.len() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn len(&self) -> usize {
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// fn empty(d: &DevicePlan) -> bool { d.is_empty() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn is_empty(&self) -> bool {
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// fn first_lam(d: &DevicePlan) -> Option<f32> { d.plan().samples().next().map(|s| s.lam) }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn plan(&self) -> &MixPlan {
        match self.never {}
    }

    /// Unreachable.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// fn cap(d: &DevicePlan) -> usize { d.capacity() }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn capacity(&self) -> usize {
        match self.never {}
    }
}

/// The raw-pointer API (every call fails in this build).
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::raw::{CeBuffers, RawUpstream};
/// // The argument types exist, so code written for the GPU compiles.
/// let bufs = CeBuffers { logits: 0x1000, labels: 0x2000, grad: None, loss: 0x3000, losses: None };
/// assert_eq!(bufs.grad, None);
/// assert_eq!(RawUpstream::Scalar(1.0), RawUpstream::Scalar(1.0));
/// ```
pub mod raw {
    use super::*;

    /// A device address.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::CUdeviceptr;
    /// let ptr: CUdeviceptr = 0x7f00_0000_0000; // PyTorch: `tensor.data_ptr()`
    /// assert_eq!(ptr % 256, 0);
    /// ```
    pub type CUdeviceptr = u64;
    /// A raw CUDA stream handle.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::{raw::CUstream, CudaMixer};
    /// let legacy_default: CUstream = std::ptr::null_mut();
    /// // SAFETY: nothing is dereferenced in this build.
    /// assert!(unsafe { CudaMixer::from_raw_stream(0, legacy_default) }.is_err());
    /// ```
    pub type CUstream = *mut std::ffi::c_void;

    /// Upstream gradient as device addresses.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::RawUpstream;
    /// assert_ne!(RawUpstream::Scalar(1.0), RawUpstream::Device(0x7f00_0000_0000));
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum RawUpstream {
        /// One host value.
        Scalar(f32),
        /// One f32 on the device.
        Device(CUdeviceptr),
        /// `B` f32 on the device.
        PerSample(CUdeviceptr),
    }

    /// The buffers of a cross-entropy call.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::CeBuffers;
    /// # let (logits, labels, loss) = (0x1000u64, 0x2000u64, 0x3000u64);
    /// let bufs = CeBuffers { logits, labels, grad: Some(logits), loss, losses: None };
    /// assert_eq!(CeBuffers { grad: None, ..bufs }.grad, None);
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct CeBuffers {
        /// Logits.
        pub logits: CUdeviceptr,
        /// Labels.
        pub labels: CUdeviceptr,
        /// Gradient, if wanted.
        pub grad: Option<CUdeviceptr>,
        /// Reduced loss.
        pub loss: CUdeviceptr,
        /// Per-sample losses, if wanted.
        pub losses: Option<CUdeviceptr>,
    }

    /// Unreachable (needs a mixer).
    ///
    /// # Safety
    /// None in this build.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::{self, CUdeviceptr};
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{DType, Layout, Result};
    /// /// # Safety
    /// /// `x` and `out` hold `n` f32 each on the mixer's device and do not overlap.
    /// unsafe fn step(m: &CudaMixer, p: &DevicePlan, x: CUdeviceptr, out: CUdeviceptr, n: usize) -> Result<()> {
    ///     // SAFETY: forwarded to the caller.
    ///     unsafe { raw::mix(m, p, &Layout::Rows(n / p.len()), DType::F32, x, out, n) }
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub unsafe fn mix(
        mixer: &CudaMixer,
        plan: &DevicePlan,
        layout: &Layout,
        dtype: DType,
        x: CUdeviceptr,
        out: CUdeviceptr,
        len: usize,
    ) -> Result<()> {
        let _ = (plan, layout, dtype, x, out, len);
        match mixer.never {}
    }

    /// Unreachable (needs a mixer).
    ///
    /// # Safety
    /// None in this build.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::{self, CUdeviceptr};
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{DType, Layout, Result};
    /// /// # Safety
    /// /// `x` holds `n` bf16 on the mixer's device.
    /// unsafe fn step(m: &CudaMixer, p: &DevicePlan, x: CUdeviceptr, n: usize) -> Result<()> {
    ///     // SAFETY: forwarded to the caller.
    ///     unsafe { raw::mix_in_place(m, p, &Layout::Rows(n / p.len()), DType::BF16, x, n) }
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub unsafe fn mix_in_place(
        mixer: &CudaMixer,
        plan: &DevicePlan,
        layout: &Layout,
        dtype: DType,
        x: CUdeviceptr,
        len: usize,
    ) -> Result<()> {
        let _ = (plan, layout, dtype, x, len);
        match mixer.never {}
    }

    /// Unreachable (needs a mixer).
    ///
    /// # Safety
    /// None in this build.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::{self, CUdeviceptr};
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{DType, Result, TargetSpec};
    /// /// # Safety
    /// /// `y` holds B u32 and `t` B·10 f32 on the mixer's device.
    /// unsafe fn targets(m: &CudaMixer, p: &DevicePlan, y: CUdeviceptr, t: CUdeviceptr) -> Result<()> {
    ///     // SAFETY: forwarded to the caller.
    ///     unsafe { raw::soft_targets(m, p, &TargetSpec::new(10, 0.0)?, DType::F32, y, t, p.len() * 10) }
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub unsafe fn soft_targets(
        mixer: &CudaMixer,
        plan: &DevicePlan,
        spec: &TargetSpec,
        dtype: DType,
        labels: CUdeviceptr,
        out: CUdeviceptr,
        out_len: usize,
    ) -> Result<()> {
        let _ = (plan, spec, dtype, labels, out, out_len);
        match mixer.never {}
    }

    /// The buffers of a binary cross-entropy call (those of a cross-entropy call).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::BceBuffers;
    /// # let (logits, labels, loss) = (0x1000u64, 0x2000u64, 0x3000u64);
    /// let bufs = BceBuffers { logits, labels, grad: Some(logits), loss, losses: None };
    /// assert_eq!(BceBuffers { grad: None, ..bufs }.grad, None);
    /// ```
    pub type BceBuffers = CeBuffers;

    /// Unreachable (needs a mixer).
    ///
    /// # Safety
    /// None in this build.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::{self, CeBuffers, RawUpstream};
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{CeSpec, DType, Reduction, Result};
    /// /// # Safety
    /// /// `b` holds buffers for B rows of 10 f32 logits on the mixer's device.
    /// unsafe fn loss(m: &CudaMixer, p: &DevicePlan, b: &CeBuffers) -> Result<()> {
    ///     let spec = CeSpec::new(10, 0.0, Reduction::Mean);
    ///     // SAFETY: forwarded to the caller.
    ///     unsafe { raw::mixup_ce(m, p, &spec, DType::F32, p.len() * 10, b, RawUpstream::Scalar(1.0)) }
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub unsafe fn mixup_ce(
        mixer: &CudaMixer,
        plan: &DevicePlan,
        spec: &CeSpec,
        dtype: DType,
        logits_len: usize,
        buffers: &CeBuffers,
        upstream: RawUpstream,
    ) -> Result<()> {
        let _ = (plan, spec, dtype, logits_len, buffers, upstream);
        match mixer.never {}
    }

    /// Unreachable (needs a mixer).
    ///
    /// # Safety
    /// None in this build.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::raw::{self, BceBuffers, RawUpstream};
    /// use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec, DevicePlan};
    /// use mixup_kernels::{DType, Result};
    /// /// # Safety
    /// /// `b` holds buffers for B rows of 10 f32 logits on the mixer's device.
    /// unsafe fn loss(m: &CudaMixer, p: &DevicePlan, s: &DeviceBceSpec, b: &BceBuffers) -> Result<()> {
    ///     // SAFETY: forwarded to the caller.
    ///     unsafe { raw::mixup_bce(m, p, s, DType::F32, p.len() * 10, b, RawUpstream::Scalar(1.0)) }
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub unsafe fn mixup_bce(
        mixer: &CudaMixer,
        plan: &DevicePlan,
        spec: &DeviceBceSpec,
        dtype: DType,
        logits_len: usize,
        buffers: &BceBuffers,
        upstream: RawUpstream,
    ) -> Result<()> {
        let _ = (plan, spec, dtype, logits_len, buffers, upstream);
        match mixer.never {}
    }
}

/// Unfused baselines (every call fails in this build).
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{naive::NaiveBuffers, CudaMixer};
/// // Benchmarks written for the GPU compile; without a mixer they report the error instead.
/// if let Err(e) = CudaMixer::new(0).and_then(|m| NaiveBuffers::new(&m, 256, 1000)) {
///     eprintln!("skipping the naive baselines: {e}");
/// }
/// ```
pub mod naive {
    use super::*;

    /// Scratch of the naive kernels.
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{naive::NaiveBuffers, CudaMixer};
    /// fn scratch(m: &CudaMixer) -> mixup_kernels::Result<NaiveBuffers> { NaiveBuffers::new(m, 256, 1000) }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    #[derive(Debug)]
    pub struct NaiveBuffers {
        never: Infallible,
    }

    impl NaiveBuffers {
        /// Unreachable (needs a mixer).
        ///
        /// # Examples
        ///
        /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
        ///
        /// ```
        /// use mixup_kernels::cuda::{naive::NaiveBuffers, CudaMixer};
        /// fn scratch(m: &CudaMixer) -> mixup_kernels::Result<NaiveBuffers> { NaiveBuffers::new(m, 256, 1000) }
        /// assert!(CudaMixer::new(0).is_err());
        /// ```
        pub fn new(mixer: &CudaMixer, batch: usize, classes: usize) -> Result<Self> {
            let _ = (batch, classes);
            match mixer.never {}
        }
    }

    /// Unreachable (needs a mixer).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaView, CudaViewMut, DevicePlan};
    /// use mixup_kernels::{Layout, Result};
    /// fn step(m: &CudaMixer, p: &DevicePlan, x: &CudaView<'_, f32>, tmp: &mut CudaViewMut<'_, f32>,
    ///         out: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     mixup_kernels::cuda::naive::mix(m, p, &Layout::Rows(16), x, tmp, out)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn mix<T: Element>(
        mixer: &CudaMixer,
        plan: &DevicePlan,
        layout: &Layout,
        x: &CudaView<'_, T>,
        tmp: &mut CudaViewMut<'_, T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let _ = (plan, layout, x, tmp, out);
        match mixer.never {}
    }

    /// Unreachable (needs a mixer).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{naive, CudaMixer, CudaView, CudaViewMut, DevicePlan};
    /// use mixup_kernels::{Result, TargetSpec};
    /// fn targets(m: &CudaMixer, p: &DevicePlan, y: &CudaView<'_, u32>, b: &mut naive::NaiveBuffers,
    ///            t: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     naive::soft_targets(m, p, y, &TargetSpec::new(10, 0.1)?, b, t)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    pub fn soft_targets<T: FloatElement>(
        mixer: &CudaMixer,
        plan: &DevicePlan,
        labels: &CudaView<'_, u32>,
        spec: &TargetSpec,
        bufs: &mut NaiveBuffers,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let _ = (mixer, plan, labels, spec, out);
        match bufs.never {}
    }

    /// Unreachable (needs a mixer).
    ///
    /// # Examples
    ///
    /// Code written against the GPU API compiles in this build; it never runs, as no mixer exists:
    ///
    /// ```
    /// use mixup_kernels::cuda::{naive, CudaMixer, CudaView, CudaViewMut, DevicePlan};
    /// use mixup_kernels::{CeSpec, Reduction, Result};
    /// fn train(m: &CudaMixer, p: &DevicePlan, z: &CudaView<'_, f32>, y: &CudaView<'_, u32>,
    ///          b: &mut naive::NaiveBuffers, loss: &mut CudaViewMut<'_, f32>, g: &mut CudaViewMut<'_, f32>) -> Result<()> {
    ///     naive::mixup_ce(m, p, &CeSpec::new(10, 0.0, Reduction::Mean), z, y, b, loss, g)
    /// }
    /// assert!(CudaMixer::new(0).is_err());
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn mixup_ce<T: FloatElement>(
        mixer: &CudaMixer,
        plan: &DevicePlan,
        spec: &CeSpec,
        logits: &CudaView<'_, T>,
        labels: &CudaView<'_, u32>,
        bufs: &mut NaiveBuffers,
        loss: &mut CudaViewMut<'_, f32>,
        grad: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let _ = (mixer, plan, spec, logits, labels, loss, grad);
        match bufs.never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constructor_says_why() {
        for r in [
            CudaMixer::new(0).map(|_| ()),
            CudaMixer::with_options(0, CudaMixerOptions::default()).map(|_| ()),
            unsafe { CudaMixer::from_raw_stream(0, std::ptr::null_mut()) }.map(|_| ()),
        ] {
            match r {
                Err(MixError::Unsupported(m)) => assert!(m.contains("`cuda` feature"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
