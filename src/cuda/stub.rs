//! The CUDA API of a build without the `cuda` feature: the same names and signatures, so code
//! written against the GPU path compiles either way; every call returns
//! [`MixError::Unsupported`]. Constructors fail, so the methods taking a mixer can never run.
//!
//! The cudarc types the real API takes (`CudaView`, `CudaStream`, ...) are uninhabited
//! placeholders here.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::TargetSpec;
use crate::dtype::{DType, Element, FloatElement};
use crate::error::{MixError, Result};
use crate::plan::MixPlan;
use crate::spec::{CeSpec, Layout};

fn unsupported<T>() -> Result<T> {
    Err(MixError::Unsupported(
        "mixup-kernels was built without the `cuda` feature; rebuild with `--features cuda` \
         (on by default) to use the GPU"
            .into(),
    ))
}

/// Placeholder for cudarc's `CudaContext` (no value exists in this build).
#[derive(Debug)]
pub struct CudaContext(Infallible);
/// Placeholder for cudarc's `CudaStream`.
#[derive(Debug)]
pub struct CudaStream(Infallible);
/// Placeholder for cudarc's `CudaSlice`.
#[derive(Debug)]
pub struct CudaSlice<T>(Infallible, PhantomData<T>);
/// Placeholder for cudarc's `CudaView`.
#[derive(Debug)]
pub struct CudaView<'a, T>(Infallible, PhantomData<&'a T>);
/// Placeholder for cudarc's `CudaViewMut`.
#[derive(Debug)]
pub struct CudaViewMut<'a, T>(Infallible, PhantomData<&'a mut T>);

/// Options for [`CudaMixer::with_options`] (unused in this build).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitSource {
    /// Compiled by NVRTC.
    Compiled,
    /// Loaded from the on-disk cache.
    DiskCache,
}

/// One kernel unit's first load.
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
#[derive(Debug)]
pub struct CudaMixer {
    never: Infallible,
}

/// The gradient arriving from above the loss, on the device side.
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
    pub fn new(ordinal: usize) -> Result<Self> {
        let _ = ordinal;
        unsupported()
    }

    /// Fails: built without the `cuda` feature.
    pub fn with_options(ordinal: usize, options: CudaMixerOptions) -> Result<Self> {
        let _ = (ordinal, options);
        unsupported()
    }

    /// Fails: built without the `cuda` feature.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let _ = stream;
        unsupported()
    }

    /// Fails: built without the `cuda` feature.
    ///
    /// # Safety
    /// None needed in this build; the real one documents its contract.
    pub unsafe fn from_raw_stream(ordinal: usize, stream: raw::CUstream) -> Result<Self> {
        let _ = (ordinal, stream);
        unsupported()
    }

    /// Fails: built without the `cuda` feature.
    pub fn from_stream_with(stream: Arc<CudaStream>, options: CudaMixerOptions) -> Result<Self> {
        let _ = (stream, options);
        unsupported()
    }

    /// The stream (unreachable: no mixer exists in this build).
    pub fn stream(&self) -> &Arc<CudaStream> {
        match self.never {}
    }

    /// Compute capability (unreachable).
    pub fn compute_capability(&self) -> u32 {
        match self.never {}
    }

    /// Target architecture (unreachable).
    pub fn target_arch(&self) -> String {
        match self.never {}
    }

    /// NVRTC version (unreachable).
    pub fn nvrtc_version(&self) -> (i32, i32) {
        match self.never {}
    }

    /// Multiprocessors (unreachable).
    pub fn multiprocessors(&self) -> u32 {
        match self.never {}
    }

    /// Cache folder (unreachable).
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        match self.never {}
    }

    /// Unreachable.
    pub fn preload(&self, dtype: DType) -> Result<()> {
        let _ = dtype;
        match self.never {}
    }

    /// Unreachable.
    pub fn load_report(&self) -> Vec<UnitLoad> {
        match self.never {}
    }

    /// Unreachable.
    pub fn check_labels(&self) -> Result<()> {
        match self.never {}
    }

    /// Unreachable.
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
}

/// The plan on the device; cannot be created in this build.
#[derive(Debug)]
pub struct DevicePlan {
    never: Infallible,
}

impl DevicePlan {
    /// Unreachable (needs a mixer).
    pub fn new(mixer: &CudaMixer) -> Self {
        match mixer.never {}
    }

    /// Unreachable (needs a mixer).
    pub fn with_pinned_staging(mixer: &CudaMixer) -> Self {
        match mixer.never {}
    }

    /// Unreachable.
    pub fn upload(&mut self, plan: &MixPlan) -> Result<()> {
        let _ = plan;
        match self.never {}
    }

    /// Unreachable.
    pub fn len(&self) -> usize {
        match self.never {}
    }

    /// Unreachable.
    pub fn is_empty(&self) -> bool {
        match self.never {}
    }

    /// Unreachable.
    pub fn plan(&self) -> &MixPlan {
        match self.never {}
    }

    /// Unreachable.
    pub fn capacity(&self) -> usize {
        match self.never {}
    }
}

/// The raw-pointer API (every call fails in this build).
pub mod raw {
    use super::*;

    /// A device address.
    pub type CUdeviceptr = u64;
    /// A raw CUDA stream handle.
    pub type CUstream = *mut std::ffi::c_void;

    /// Upstream gradient as device addresses.
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

    /// Unreachable (needs a mixer).
    ///
    /// # Safety
    /// None in this build.
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
}

/// Unfused baselines (every call fails in this build).
pub mod naive {
    use super::*;

    /// Scratch of the naive kernels.
    #[derive(Debug)]
    pub struct NaiveBuffers {
        never: Infallible,
    }

    impl NaiveBuffers {
        /// Unreachable (needs a mixer).
        pub fn new(mixer: &CudaMixer, batch: usize, classes: usize) -> Result<Self> {
            let _ = (batch, classes);
            match mixer.never {}
        }
    }

    /// Unreachable (needs a mixer).
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
