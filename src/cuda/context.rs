//! [`CudaMixer`]: the device, its stream, the compiled kernels and the small device buffers the
//! operations share; [`CudaError`], the result code behind a device error.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use cudarc::nvrtc::result::NvrtcError;

use crate::dtype::ScalarType;
use crate::error::{MixError, Result};

use super::cache::DiskCache;
use super::entries::{Kernel, SLOTS};
use super::nvrtc::{self, Target};
use super::tuning::{KernelTuning, LaunchEnv};

/// The result code of the CUDA library call behind a [`MixError::Driver`] or
/// [`MixError::Compile`] (their `source` field).
///
/// [`std::error::Error::source`] of such a `MixError` returns the cudarc error itself, for code
/// that downcasts.
///
/// # Examples
///
/// ```
/// use std::error::Error as _;
/// use mixup_kernels::cuda::cudarc::nvrtc::{result::NvrtcError, sys::nvrtcResult};
/// use mixup_kernels::cuda::kernels::{compile, options, ModuleSource, Target};
/// use mixup_kernels::cuda::CudaError;
/// use mixup_kernels::MixError;
/// static BROKEN: ModuleSource = ModuleSource { name: "broken", source: "int x = ;", hash: 0 };
/// let target = Target::Sm(90);
/// // NVRTC runs on the CPU; without libnvrtc the call says so instead.
/// match compile(&BROKEN, "broken", target, &options(target, "MIXUP_ALL", &[])) {
///     Err(e @ MixError::Compile { .. }) => {
///         let code = NvrtcError(nvrtcResult::NVRTC_ERROR_COMPILATION);
///         assert!(matches!(e, MixError::Compile { source: CudaError::Nvrtc(c), .. } if c == code));
///         assert_eq!(e.source().and_then(|s| s.downcast_ref::<NvrtcError>()), Some(&code));
///     }
///     Err(e) => assert!(matches!(e, MixError::CudaUnavailable(_)), "{e}"),
///     Ok(_) => unreachable!("the source does not compile"),
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaError {
    /// A driver call's `CUresult`.
    Driver(DriverError),
    /// An NVRTC call's `nvrtcResult`.
    Nvrtc(NvrtcError),
}

impl CudaError {
    /// The cudarc error, as [`std::error::Error::source`] returns it.
    pub(crate) fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            CudaError::Driver(e) => e,
            CudaError::Nvrtc(e) => e,
        }
    }
}

/// The driver's text for `e` (`cuGetErrorString`), or the code's name when libcuda is not
/// loaded (asking the driver would panic then).
fn describe(e: DriverError) -> String {
    if driver_present() {
        e.to_string()
    } else {
        format!("{:?}", e.0)
    }
}

/// Maps a cudarc driver error to [`MixError::Driver`], keeping its result code.
/// `CU_STREAM_PER_THREAD`: the handle of each host thread's own default stream (candle's
/// `Device::new_cuda` enqueues on it).
pub(crate) const PER_THREAD_STREAM: usize = 0x2;

/// The host thread that `stream`'s handle means a stream of: the calling thread when it is
/// `CU_STREAM_PER_THREAD` (the same handle is another stream on another thread), else none.
pub(crate) fn stream_owner(stream: &CudaStream) -> Option<ThreadId> {
    (stream.cu_stream() as usize == PER_THREAD_STREAM).then(|| std::thread::current().id())
}

/// Refuses to use `what`, made on host thread `owner`'s per-thread default stream, from another
/// host thread, where the same stream handle is another stream: its work would not be ordered
/// with the owner's (the plan copy, the flags, the scratch losses).
///
/// # Errors
/// [`MixError::InvalidArgument`] naming `what`.
pub(crate) fn check_owner(owner: Option<ThreadId>, what: &'static str) -> Result<()> {
    match owner {
        Some(t) if t != std::thread::current().id() => Err(MixError::InvalidArgument {
            what,
            reason: format!(
                "made on host thread {t:?} for CUDA's per-thread default stream \
                 (CU_STREAM_PER_THREAD), which is another stream on this thread ({:?}): make \
                 one per thread",
                std::thread::current().id()
            ),
        }),
        _ => Ok(()),
    }
}

/// Refuses a device object (`what`: `plan`, `normalize`, `spec`; a `kind` such as `DevicePlan`)
/// made with another mixer, whose stream (or device) is not `m`'s, or with a mixer on another
/// host thread's per-thread default stream: its buffers were copied and are freed in that
/// stream's order, unordered with `m`'s kernels (on another device, not even addressable).
///
/// # Errors
/// [`MixError::InvalidArgument`] naming `what`.
pub(crate) fn check_made_for(
    (stream, owner): (&CudaStream, Option<ThreadId>),
    m: &CudaMixer,
    what: &'static str,
    kind: &str,
) -> Result<()> {
    if *stream != **m.stream() || owner != m.owner() {
        return Err(MixError::InvalidArgument {
            what,
            reason: format!(
                "the {kind} was made for another CudaMixer's stream (or for another host \
                 thread's per-thread default stream): make it with the mixer it is used with"
            ),
        });
    }
    Ok(())
}

pub(crate) fn driver_err(context: &'static str) -> impl Fn(DriverError) -> MixError {
    move |e| MixError::Driver {
        context,
        message: describe(e),
        source: CudaError::Driver(e),
    }
}

/// Maps an NVRTC error (other than a rejected source) to [`MixError::Driver`].
pub(crate) fn nvrtc_err(context: &'static str) -> impl Fn(NvrtcError) -> MixError {
    move |e| MixError::Driver {
        context,
        message: format!("{:?}", e.0),
        source: CudaError::Nvrtc(e),
    }
}

/// The message a panic carried (`panic!` with a string or a format), for an error.
pub(crate) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic inside cudarc (a library or one of its symbols missing) into
/// [`MixError::CudaUnavailable`].
pub(crate) fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f))
        .map_err(|p| MixError::CudaUnavailable(format!("{what}: {}", panic_message(p))))
}

#[cfg(mixup_cuda_dynload)]
fn candidates(lib: &str) -> String {
    let mut seen = Vec::new();
    for c in cudarc::get_lib_name_candidates(lib) {
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    seen.join(", ")
}

/// Whether libcuda can be loaded (always, when it is linked: `candle-cuda`).
fn driver_present() -> bool {
    #[cfg(mixup_cuda_dynload)]
    {
        static PRESENT: OnceLock<bool> = OnceLock::new();
        // SAFETY: only tries to dlopen the library names cudarc would use.
        *PRESENT.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() })
    }
    #[cfg(not(mixup_cuda_dynload))]
    true
}

/// The driver library, or a clear error naming it and how to point to it.
pub(crate) fn require_driver() -> Result<()> {
    #[cfg(mixup_cuda_dynload)]
    if !driver_present() {
        return Err(MixError::CudaUnavailable(format!(
            "the CUDA driver library (libcuda) was not found; searched: {}. It comes with \
             the NVIDIA driver: install the driver, or add the folder holding libcuda.so.1 \
             to LD_LIBRARY_PATH (in containers, run with the NVIDIA container toolkit)",
            candidates("cuda")
        )));
    }
    Ok(())
}

/// NVRTC, or a clear error naming it and how to install it.
pub(crate) fn require_nvrtc() -> Result<()> {
    #[cfg(mixup_cuda_dynload)]
    {
        static PRESENT: OnceLock<bool> = OnceLock::new();
        // SAFETY: only tries to dlopen the library names cudarc would use.
        if !*PRESENT.get_or_init(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }) {
            return Err(MixError::CudaUnavailable(format!(
                "NVRTC (libnvrtc, which compiles the kernels at run time) was not found; \
                 searched: {}. Install it with `pip install nvidia-cuda-nvrtc==13.0.*` (or the \
                 CUDA toolkit) and add the folder holding libnvrtc.so.13 (for pip: \
                 <site-packages>/nvidia/cu13/lib) to LD_LIBRARY_PATH",
                candidates("nvrtc")
            )));
        }
    }
    Ok(())
}

/// [`crate::check_cuda`]: both libraries, then the driver's own answer for device `ordinal`.
pub(crate) fn check_device(ordinal: usize) -> Result<()> {
    require_driver()?;
    require_nvrtc()?;
    let what = "initializing the CUDA driver";
    guard(what, cudarc::driver::result::init)?.map_err(driver_err(what))?;
    let ordinal = i32::try_from(ordinal).unwrap_or(i32::MAX);
    let what = "opening the CUDA device";
    guard(what, || cudarc::driver::result::device::get(ordinal))?.map_err(driver_err(what))?;
    Ok(())
}

/// Options for [`CudaMixer::with_options`]: where compiled kernels are cached, extra NVRTC
/// options, the kernels' tuning.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{CudaMixer, CudaMixerOptions, KernelTuning};
/// // No disk cache, line info for compute-sanitizer, 512-thread mix blocks.
/// let options = CudaMixerOptions {
///     disk_cache: false,
///     nvrtc_options: vec!["-lineinfo".into()],
///     tuning: KernelTuning { mix_threads: 512, ..Default::default() },
///     ..Default::default()
/// };
/// match CudaMixer::new(0) {
///     Ok(mixer) => {
///         let mixer = mixer.with_options(options).expect("a valid tuning");
///         assert_eq!(mixer.cache_dir(), None);
///         assert_eq!(mixer.tuning().mix_threads, 512);
///     }
///     Err(e) => eprintln!("no GPU here: {e}"),
/// }
/// ```
#[derive(Debug, Clone)]
pub struct CudaMixerOptions {
    /// Whether compiled kernels are kept on disk (see [`cache_dir`](Self::cache_dir)).
    pub disk_cache: bool,
    /// Folder of the on-disk cache; `None`: `$MIXUP_KERNELS_CACHE`, else
    /// `$XDG_CACHE_HOME/mixup-kernels`, else `~/.cache/mixup-kernels`.
    pub cache_dir: Option<PathBuf>,
    /// Extra NVRTC options (e.g. `-lineinfo` for compute-sanitizer); part of the cache key.
    /// None may define or undefine a tuning define or unit selector (`-DMIX_NT=512`,
    /// `-UCE_K`, `-DMIXUP_ALL`; use [`tuning`](Self::tuning)), loosen the float arithmetic
    /// (`--use_fast_math`, `--ftz=true`, `--prec-div=false`, `--prec-sqrt=false`) or set
    /// `--fmad` (the crate gives `--fmad=false`): [`CudaMixer::with_options`] rejects them.
    pub nvrtc_options: Vec<String>,
    /// The kernels' tuning knobs (block sizes, unrolling, CE strategy thresholds, grid cap):
    /// read by the launches and passed to NVRTC as defines (so part of the cache key).
    /// Default: the shipped tuning.
    pub tuning: KernelTuning,
}

impl Default for CudaMixerOptions {
    fn default() -> Self {
        Self {
            disk_cache: true,
            cache_dir: None,
            nvrtc_options: Vec::new(),
            tuning: KernelTuning::default(),
        }
    }
}

impl CudaMixerOptions {
    /// Checks the options as [`CudaMixer::with_options`] does, without a device: a
    /// configuration can be refused when it is read, before any GPU is touched.
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`] naming the [`KernelTuning`] field out of range
    /// ([`KernelTuning::validate`]), or naming `nvrtc_options` when one of them defines or
    /// undefines a tuning define or unit selector, loosens the float arithmetic or sets
    /// `--fmad` ([`nvrtc_options`](Self::nvrtc_options)).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixerOptions, KernelTuning};
    /// assert!(CudaMixerOptions::default().validate().is_ok());
    /// let fast = CudaMixerOptions {
    ///     nvrtc_options: vec!["--use_fast_math".into()],
    ///     ..Default::default()
    /// };
    /// assert!(fast.validate().unwrap_err().to_string().contains("nvrtc_options"));
    /// let odd = CudaMixerOptions {
    ///     tuning: KernelTuning { mix_threads: 100, ..Default::default() },
    ///     ..Default::default()
    /// };
    /// assert!(odd.validate().unwrap_err().to_string().contains("mix_threads"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.tuning.validate()?;
        super::tuning::check_nvrtc_options(&self.nvrtc_options)
    }

    fn cache(&self) -> DiskCache {
        match (self.disk_cache, &self.cache_dir) {
            (false, _) => DiskCache::at(None),
            (true, Some(d)) => DiskCache::at(Some(d.clone())),
            (true, None) => DiskCache::from_env(),
        }
    }
}

/// The CUDA side of the crate: one device, one stream, the kernels compiled for the device's
/// architecture, and the device buffers the operations share.
///
/// Every operation is enqueued on [`stream`](CudaMixer::stream) and returns without waiting
/// for the device. Each kernel is compiled on its first use (one NVRTC compilation per kernel
/// and dtype, for `sm_XY` of the device), kept for this mixer and cached on disk for the next
/// process. [`preload`](CudaMixer::preload) compiles ahead of time (before capturing a graph).
///
/// Labels read on the device are not range-checked before the launch (that would need a
/// synchronization): a kernel counts labels `>= num_classes` in a device flag and never reads
/// memory through them; [`check_labels`](CudaMixer::check_labels) reports the count.
///
/// # Examples
///
/// Without a GPU (or without NVRTC) the constructors return an error, never panic:
///
/// ```
/// use mixup_kernels::cuda::CudaMixer;
/// match CudaMixer::new(0) {
///     Ok(mixer) => println!("kernels for {} on {} SMs", mixer.target_arch(), mixer.multiprocessors()),
///     Err(e) => eprintln!("falling back to the CPU: {e}"),
/// }
/// ```
pub struct CudaMixer {
    stream: Arc<CudaStream>,
    cc: u32,
    target: Target,
    nvrtc: (i32, i32),
    sms: u32,
    smem_optin: u32,
    cache: DiskCache,
    extra: Vec<String>,
    tuning: KernelTuning,
    /// One slot per (kernel, dtype) ([`Kernel::slot`]): a launch reads its function without a
    /// lock once it is loaded.
    funcs: [OnceLock<CudaFunction>; SLOTS],
    /// Held while compiling: two threads asking for the same kernel compile it once.
    compiling: Mutex<()>,
    /// `[0]`: labels found out of range; `[1]`: blocks done (cross-entropy's last-block sum).
    flags: CudaSlice<u32>,
    scratch: Mutex<Option<CudaSlice<f32>>>,
    /// The host thread whose per-thread default stream `stream` is, if it is one
    /// ([`stream_owner`]): every launch checks it.
    owner: Option<ThreadId>,
}

impl Drop for CudaMixer {
    /// Waits for the mixer's queued work first (as `with_options` does): its fields then unload
    /// the modules and free the flags and scratch buffers. Not a per-step cost: a mixer lives
    /// for the training run.
    fn drop(&mut self) {
        let waited = self.settle();
        self.stream.context().record_err(waited);
    }
}

impl std::fmt::Debug for CudaMixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaMixer")
            .field("ordinal", &self.stream.context().ordinal())
            .field("arch", &self.target.arch())
            .field("nvrtc", &self.nvrtc)
            .field("sms", &self.sms)
            .finish()
    }
}

impl CudaMixer {
    /// A mixer on device `ordinal`'s primary context and its default stream.
    ///
    /// # Errors
    /// As [`check_cuda`](crate::check_cuda): [`MixError::CudaUnavailable`] when libcuda or
    /// libnvrtc cannot be loaded (the message says where they were looked for, and how to
    /// install them) or NVRTC cannot target the device; [`MixError::Driver`] when there is no
    /// device `ordinal` or it cannot be opened.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{cuda::CudaMixer, MixError};
    /// match CudaMixer::new(0) {
    ///     Ok(mixer) => println!("{mixer:?}"),
    ///     Err(e) => assert!(matches!(e, MixError::CudaUnavailable(_) | MixError::Driver { .. })),
    /// }
    /// ```
    pub fn new(ordinal: usize) -> Result<Self> {
        check_device(ordinal)?;
        let what = "creating the CUDA context";
        let ctx = guard(what, || CudaContext::new(ordinal))?.map_err(driver_err(what))?;
        Self::from_stream(ctx.default_stream())
    }

    /// A mixer enqueuing on `stream` (its device and context), e.g. candle's
    /// `CudaDevice::cuda_stream()`.
    ///
    /// # Errors
    /// [`MixError::CudaUnavailable`] without libnvrtc or when NVRTC cannot target the device;
    /// [`MixError::Driver`] when the device cannot be queried.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use mixup_kernels::cuda::CudaMixer;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let first = CudaMixer::new(0)?;
    /// // A second mixer on a stream of its own (same device), e.g. to overlap with other work.
    /// let stream = first.stream().context().new_stream()?;
    /// let second = CudaMixer::from_stream(stream.clone())?;
    /// assert!(Arc::ptr_eq(second.stream(), &stream));
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        require_nvrtc()?;
        let ctx = stream.context().clone();
        let (major, minor) = guard("reading the device", || ctx.compute_capability())?
            .map_err(driver_err("reading the compute capability"))?;
        let cc = (major * 10 + minor) as u32;
        let attr = |a| -> Result<u32> {
            Ok(guard("reading the device", || ctx.attribute(a))?
                .map_err(driver_err("reading a device attribute"))?
                .max(0) as u32)
        };
        let sms = attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let smem_optin = attr(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let nvrtc_version = guard("asking NVRTC its version", nvrtc::version)??;
        let archs = guard("asking NVRTC its architectures", nvrtc::supported_archs)??;
        let target = nvrtc::target_for(cc, &archs)?;
        let flags = stream
            .alloc_zeros::<u32>(2)
            .map_err(driver_err("allocating the label flags"))?;
        let options = CudaMixerOptions::default();
        let owner = stream_owner(&stream);
        Ok(Self {
            stream,
            cc,
            target,
            nvrtc: nvrtc_version,
            sms,
            smem_optin,
            cache: options.cache(),
            extra: options.nvrtc_options,
            tuning: options.tuning,
            funcs: std::array::from_fn(|_| OnceLock::new()),
            compiling: Mutex::new(()),
            flags,
            scratch: Mutex::new(None),
            owner,
        })
    }

    /// A mixer on a stream owned by another library (PyTorch through tch-rs, burn, ...): the
    /// primary context of device `ordinal` and the raw `CUstream`.
    ///
    /// # Errors
    /// As [`new`](CudaMixer::new).
    ///
    /// # Safety
    /// `stream` must be a valid stream of device `ordinal`'s primary context (or null for the
    /// legacy default stream) and must outlive the mixer and everything enqueued through it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaContext, CudaMixer};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Stands for a stream another library owns (`torch.cuda.current_stream().cuda_stream`).
    /// let ctx = CudaContext::new(0)?;
    /// let theirs = ctx.new_stream()?;
    /// // SAFETY: `theirs` is a stream of device 0's primary context (cudarc retains the primary
    /// // context) and it outlives the mixer: it is dropped after it, at the end of the scope.
    /// let mixer = unsafe { CudaMixer::from_raw_stream(0, theirs.cu_stream()) }?;
    /// assert_eq!(mixer.stream().cu_stream(), theirs.cu_stream());
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn from_raw_stream(
        ordinal: usize,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<Self> {
        check_device(ordinal)?;
        let what = "creating the CUDA context";
        let ctx = guard(what, || CudaContext::new(ordinal))?.map_err(driver_err(what))?;
        // SAFETY: forwarded to the caller.
        let stream = unsafe { ctx.wrap_borrowed_stream(stream) };
        Self::from_stream(stream)
    }

    /// The same mixer with `options` (cache folder, NVRTC options, tuning). Kernels loaded so
    /// far are dropped, so the next call compiles (or reads from the cache) with the new
    /// options; each kernel is then compiled once for this mixer, not per launch.
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`] from [`CudaMixerOptions::validate`] (checked before the
    /// mixer is touched): naming the [`KernelTuning`] field out of range
    /// ([`KernelTuning::validate`]), or naming `nvrtc_options` when one of them defines or
    /// undefines a tuning define (`-DMIX_NT=512`: set [`CudaMixerOptions::tuning`] instead, which
    /// the launches read too) or a unit selector (`MIXUP_ONLY_*`, `MIXUP_ALL`), loosens the
    /// float arithmetic (`--use_fast_math`, ...) or sets `--fmad`
    /// ([`CudaMixerOptions::nvrtc_options`]); [`MixError::Driver`] if waiting for the work the
    /// mixer queued with its old kernels fails. On every error the mixer is dropped (it was
    /// taken by value): make a new one with [`CudaMixer::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, CudaMixerOptions, KernelTuning};
    /// let dir = std::env::temp_dir().join("mixup-kernels-doc-cache");
    /// let options = CudaMixerOptions { cache_dir: Some(dir.clone()), ..Default::default() };
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     let mixer = mixer.with_options(options).expect("the default tuning is valid");
    ///     assert_eq!(mixer.cache_dir(), Some(dir.as_path()));
    ///     let odd = KernelTuning { mix_threads: 100, ..Default::default() };
    ///     let e = mixer.with_options(CudaMixerOptions { tuning: odd, ..Default::default() });
    ///     assert!(e.unwrap_err().to_string().contains("mix_threads"));
    /// }
    /// ```
    pub fn with_options(mut self, options: CudaMixerOptions) -> Result<Self> {
        options.validate()?;
        self.cache = options.cache();
        self.extra = options.nvrtc_options;
        self.tuning = options.tuning;
        // The old functions' modules are unloaded below: no launch of theirs may be queued.
        self.settle()
            .map_err(driver_err("waiting for the mixer's queued work"))?;
        self.funcs = std::array::from_fn(|_| OnceLock::new());
        Ok(self)
    }

    /// Waits until no work this mixer queued can still run: before its modules are unloaded
    /// (CUDA does not say that `cuModuleUnload` waits for queued launches) and its buffers
    /// freed. The mixer's stream on its own thread; the whole context elsewhere, where a
    /// per-thread stream handle would name the calling thread's stream (and a buffer would be
    /// freed in that stream's order). An error recorded on the context earlier (cudarc's drops
    /// record theirs) is taken off first, or cudarc's synchronize would return it without
    /// waiting, and put back after.
    fn settle(&self) -> std::result::Result<(), cudarc::driver::DriverError> {
        let ctx = self.stream.context();
        let earlier = ctx.check_err();
        let waited = match self.owner {
            Some(t) if t != std::thread::current().id() => ctx.synchronize(),
            _ => self.stream.synchronize(),
        };
        ctx.record_err(earlier);
        waited
    }

    /// The kernels' tuning (see [`CudaMixerOptions::tuning`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, KernelTuning};
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     assert_eq!(*mixer.tuning(), KernelTuning::default());
    /// }
    /// ```
    pub fn tuning(&self) -> &KernelTuning {
        &self.tuning
    }

    /// What the launches' shapes depend on besides the call: the tuning, the SM count and the
    /// opt-in shared memory.
    pub(crate) fn launch_env(&self) -> LaunchEnv<'_> {
        LaunchEnv {
            tuning: &self.tuning,
            sms: self.sms,
            smem_optin: self.smem_optin,
        }
    }

    /// The stream every operation is enqueued on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::CudaMixer;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let x = s.clone_htod(&vec![1.0f32, 2.0])?; // device buffers for the operations
    /// assert_eq!(s.clone_dtoh(&x)?, [1.0, 2.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Compute capability as `major * 10 + minor` (90 for H100).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     assert!(mixer.compute_capability() >= 75); // NVRTC 13 needs sm_75 or newer
    /// }
    /// ```
    pub fn compute_capability(&self) -> u32 {
        self.cc
    }

    /// What the kernels are compiled for: `sm_XY` (CUBIN), or `compute_XY` (PTX, JIT-compiled
    /// by the driver) when the device is newer than this NVRTC.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     let arch = mixer.target_arch(); // "sm_90" on an H100
    ///     assert!(arch.starts_with("sm_") || arch.starts_with("compute_"));
    /// }
    /// ```
    pub fn target_arch(&self) -> String {
        self.target.arch()
    }

    /// NVRTC's version, `(major, minor)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     let (major, minor) = mixer.nvrtc_version();
    ///     assert!(major >= 11, "NVRTC {major}.{minor}");
    /// }
    /// ```
    pub fn nvrtc_version(&self) -> (i32, i32) {
        self.nvrtc
    }

    /// Number of streaming multiprocessors.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     assert!(mixer.multiprocessors() > 0); // 132 on an H100 SXM
    /// }
    /// ```
    pub fn multiprocessors(&self) -> u32 {
        self.sms
    }

    /// Where compiled kernels are cached on disk, if anywhere.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::CudaMixer;
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     // $MIXUP_KERNELS_CACHE, else $XDG_CACHE_HOME/mixup-kernels, else ~/.cache/mixup-kernels
    ///     println!("kernel cache: {:?}", mixer.cache_dir());
    /// }
    /// ```
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache.dir()
    }

    /// Compiles (or loads from the disk cache) every kernel the operations use for `dtype`,
    /// so the first training step does not pay for it (and before capturing a CUDA graph).
    ///
    /// # Errors
    /// [`MixError::Compile`] if NVRTC rejects a kernel (with its log), [`MixError::Driver`] if
    /// the driver rejects a compiled kernel.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::{cuda::CudaMixer, ScalarType};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let t0 = std::time::Instant::now();
    /// mixer.preload(ScalarType::BF16)?; // NVRTC, or the disk cache of an earlier process
    /// println!("bf16 kernels ready in {:?}", t0.elapsed());
    /// mixer.preload(ScalarType::BF16)?; // a second call finds everything loaded
    /// # Ok(())
    /// # }
    /// ```
    pub fn preload(&self, dtype: ScalarType) -> Result<()> {
        for &kernel in Kernel::ALL {
            if kernel.name(dtype).is_some() {
                self.function(kernel, dtype)?;
            }
        }
        Ok(())
    }

    /// Waits for the stream, then reports labels that device kernels found out of range since
    /// the last check (and clears the count): [`MixError::DeviceLabelOutOfRange`]. The outputs
    /// of the launches that saw them are not meaningful.
    ///
    /// # Errors
    /// [`MixError::DeviceLabelOutOfRange`] as above; [`MixError::InvalidArgument`] naming
    /// `mixer` when a mixer on CUDA's per-thread default stream is asked from another thread
    /// than its own; [`MixError::Driver`] if the read or the clear fails.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{MixError, MixPlan, TargetSpec};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(2)?)?;
    /// let labels = s.clone_htod(&vec![0u32, 7])?; // 7 is out of range for 3 classes
    /// let mut t = s.alloc_zeros::<f32>(2 * 3)?;
    /// let spec = TargetSpec::new(3, 0.0)?;
    /// mixer.soft_targets(&plan, &spec, &labels.as_view(), &mut t.as_view_mut())?; // enqueued
    /// assert!(matches!(mixer.check_labels(), Err(MixError::DeviceLabelOutOfRange { .. })));
    /// mixer.check_labels()?; // the count was cleared
    /// # Ok(())
    /// # }
    /// ```
    pub fn check_labels(&self) -> Result<()> {
        // On another thread a per-thread stream handle is that thread's stream: the read would
        // not wait for this mixer's kernels, and the clear would race them.
        check_owner(self.owner, "mixer")?;
        let flags = self
            .stream
            .clone_dtoh(&self.flags)
            .map_err(driver_err("reading the label flags"))?;
        if flags[0] == 0 {
            return Ok(());
        }
        let (ptr, _record) = self.flags.device_ptr(&self.stream);
        // SAFETY: `ptr` addresses flags[0] (4 bytes) of a live allocation; the memset is ordered
        // on our stream after every kernel that counted into it.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0, 4, self.stream.cu_stream()) }
            .map_err(driver_err("clearing the label flags"))?;
        Err(MixError::DeviceLabelOutOfRange { count: flags[0] })
    }

    /// Device address of the flags (`[0]` label count, `[1]` block counter).
    pub(crate) fn flags_ptr(&self) -> u64 {
        let (ptr, _record) = self.flags.device_ptr(&self.stream);
        ptr
    }

    /// A device buffer of at least `n` f32 for per-row losses the caller did not ask for.
    /// Allocates only when a larger batch than any before arrives.
    ///
    /// Keep the returned guard until the kernel using the address is enqueued: another thread
    /// growing the buffer meanwhile would free it (in stream order, so after any kernel already
    /// enqueued, but before one enqueued later).
    pub(crate) fn scratch_f32(
        &self,
        n: usize,
    ) -> Result<(u64, MutexGuard<'_, Option<CudaSlice<f32>>>)> {
        let mut s = lock(&self.scratch);
        let ptr = match s.as_ref() {
            Some(b) if b.len() >= n => b.device_ptr(&self.stream).0,
            _ => {
                // SAFETY: kernels write every element they later read.
                let buf = unsafe { self.stream.alloc::<f32>(n.next_power_of_two().max(256)) }
                    .map_err(driver_err("allocating the per-sample loss buffer"))?;
                let ptr = buf.device_ptr(&self.stream).0;
                *s = Some(buf);
                ptr
            }
        };
        Ok((ptr, s))
    }

    /// The function of `kernel` for `dtype`, compiled or read from the disk cache on first use.
    /// Once loaded: one atomic load, no lock, no allocation.
    pub(crate) fn function(&self, kernel: Kernel, dtype: ScalarType) -> Result<&CudaFunction> {
        match self.funcs[kernel.slot(dtype)].get() {
            Some(f) => Ok(f),
            None => self.load(kernel, dtype),
        }
    }

    /// Enqueues `kernel` for `dtype` on the stream with its argument struct and launch
    /// configuration; `what` names the launch in a driver error.
    ///
    /// # Safety
    /// `args` is the kernel's argument struct, every address in it valid for what the kernel
    /// reads and writes until it has run.
    pub(crate) unsafe fn enqueue<A: DeviceRepr>(
        &self,
        kernel: Kernel,
        dtype: ScalarType,
        args: &A,
        cfg: LaunchConfig,
        what: &'static str,
    ) -> Result<()> {
        check_owner(self.owner, "mixer")?;
        let f = self.function(kernel, dtype)?;
        // SAFETY: per the contract.
        unsafe { self.stream().launch_builder(f).arg(args).launch(cfg) }
            .map_err(driver_err(what))?;
        Ok(())
    }

    /// The host thread whose per-thread default stream the mixer's stream is, if it is one.
    pub(crate) fn owner(&self) -> Option<ThreadId> {
        self.owner
    }

    #[cold]
    fn load(&self, kernel: Kernel, dtype: ScalarType) -> Result<&CudaFunction> {
        let Some(name) = kernel.name(dtype) else {
            return Err(MixError::Unsupported(format!(
                "no `{}` kernel for {}",
                kernel.prefix(),
                dtype.name()
            )));
        };
        let slot = &self.funcs[kernel.slot(dtype)];
        let _compiling = lock(&self.compiling);
        if let Some(f) = slot.get() {
            return Ok(f); // another thread compiled it meanwhile
        }
        let module = kernel.module();
        let options = unit_options(self.target, name, module.name, &self.tuning, &self.extra);
        let path = self
            .cache
            .path(name, module.hash, self.target, self.nvrtc, &options);
        let cached = path.as_deref().and_then(DiskCache::load);
        let f = match cached.map(|img| self.load_image(kernel, name, img)) {
            Some(Ok(f)) => f,
            // Absent, or present but rejected by the driver (corrupt in a way the checksum
            // cannot see, e.g. written by another driver): compile and overwrite.
            _ => {
                let compiled = guard("compiling with NVRTC", || {
                    nvrtc::compile(module, name, self.target, &options)
                })??;
                if let Some(p) = &path {
                    DiskCache::store(p, &compiled.image);
                }
                self.load_image(kernel, name, compiled.image)?
            }
        };
        Ok(slot.get_or_init(|| f))
    }

    fn load_image(&self, kernel: Kernel, name: &str, image: Vec<u8>) -> Result<CudaFunction> {
        let ptx = match self.target {
            Target::Sm(_) => Ptx::from_binary(image),
            Target::Compute(_) => {
                let end = image.iter().position(|&b| b == 0).unwrap_or(image.len());
                Ptx::from_src(String::from_utf8_lossy(&image[..end]).into_owned())
            }
        };
        let ctx = self.stream.context();
        let what = "loading a kernel module";
        let module = guard(what, || ctx.load_module(ptx))?.map_err(|e| MixError::Driver {
            context: what,
            message: format!(
                "{} (kernel `{name}` for {}; a driver older than NVRTC {}.{} may reject its \
                 output: update the driver or use an NVRTC no newer than it)",
                describe(e),
                self.target.arch(),
                self.nvrtc.0,
                self.nvrtc.1
            ),
            source: CudaError::Driver(e),
        })?;
        let f = module
            .load_function(name)
            .map_err(driver_err("finding a kernel in its module"))?;
        if kernel == Kernel::CeBlock {
            // The block kernel keeps part of a row in dynamic shared memory: allow up to the
            // device's opt-in limit (minus the kernel's static shared memory).
            let static_smem = f.shared_size_bytes().unwrap_or(0).max(0) as u32;
            let dynamic = self.smem_optin.saturating_sub(static_smem);
            f.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                dynamic as i32,
            )
            .map_err(driver_err("raising the shared-memory limit"))?;
        }
        Ok(f)
    }
}

/// The NVRTC options of entry `name` of `module`: the unit's define, the tuning's defines for
/// the module, then the user's options. Also the disk cache key's options, so each tuning has
/// its own cached images.
pub(crate) fn unit_options(
    target: Target,
    name: &str,
    module: &str,
    tuning: &KernelTuning,
    user: &[String],
) -> Vec<String> {
    let mut extra = tuning.defines(module);
    extra.extend(user.iter().cloned());
    nvrtc::options(target, &format!("MIXUP_ONLY_{name}"), &extra)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (maps and buffers are
    // replaced whole), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_thread_stream_objects_stay_on_their_thread() {
        // Not on a per-thread stream: any thread.
        assert!(check_owner(None, "mixer").is_ok());
        // Made on this thread: fine here, refused on another, naming the object.
        let here = std::thread::current().id();
        assert!(check_owner(Some(here), "plan").is_ok());
        let there = std::thread::spawn(move || check_owner(Some(here), "plan"))
            .join()
            .unwrap();
        match there {
            Err(MixError::InvalidArgument {
                what: "plan",
                reason,
            }) => {
                assert!(reason.contains("CU_STREAM_PER_THREAD"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tunings_are_compile_options_and_cache_keys() {
        let d = KernelTuning::default();
        let t = KernelTuning {
            mix_threads: 512,
            ..d
        };
        let user = ["-lineinfo".to_string()];
        let a = unit_options(Target::Sm(90), "mix_pairs_f32", "mix", &d, &user);
        let b = unit_options(Target::Sm(90), "mix_pairs_f32", "mix", &t, &user);
        assert!(a.contains(&"-DMIX_NT=256".into()) && b.contains(&"-DMIX_NT=512".into()));
        assert!(a.contains(&"-DMIXUP_ONLY_mix_pairs_f32=1".into()));
        assert_eq!(a.last(), Some(&user[0]), "the user's options come last");
        let cache = DiskCache::at(Some(PathBuf::from("/cache")));
        let key = |o: &[String]| cache.path("mix_pairs_f32", 1, Target::Sm(90), (13, 0), o);
        assert_ne!(key(&a), key(&b), "another tuning is another cached image");
        // A knob of another module changes neither the options nor the key.
        let ce = KernelTuning {
            ce_slots: 2,
            ce_warp_max_row_bytes: 1024,
            ..d
        };
        let c = unit_options(Target::Sm(90), "mix_pairs_f32", "mix", &ce, &user);
        assert_eq!(key(&a), key(&c));
        let ce_a = unit_options(Target::Sm(90), "ce_warp_f32", "mixup_ce", &d, &[]);
        let ce_b = unit_options(Target::Sm(90), "ce_warp_f32", "mixup_ce", &ce, &[]);
        assert!(ce_b.contains(&"-DCE_K=2".into()));
        assert_ne!(key(&ce_a), key(&ce_b));
    }

    #[test]
    fn no_driver_is_a_clear_error_not_a_panic() {
        // On a machine without libcuda (CI) the mixer explains what is missing; with a GPU it
        // simply works.
        match CudaMixer::new(0) {
            Ok(_) => {}
            Err(MixError::CudaUnavailable(m)) => {
                assert!(m.contains("libcuda") || m.contains("NVRTC"), "{m}")
            }
            Err(MixError::Driver { .. }) => {} // a driver without a device
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[test]
    fn device_errors_keep_their_result_code() {
        use cudarc::driver::sys::CUresult;
        use cudarc::nvrtc::sys::nvrtcResult;
        use std::error::Error as _;
        let code = DriverError(CUresult::CUDA_ERROR_INVALID_DEVICE);
        let e = driver_err("opening the CUDA device")(code);
        assert!(matches!(e, MixError::Driver { source: CudaError::Driver(c), .. } if c == code));
        let s = e.source().expect("a driver error has a source");
        assert_eq!(s.downcast_ref::<DriverError>(), Some(&code));
        assert!(e.to_string().contains("opening the CUDA device"), "{e}");
        let code = NvrtcError(nvrtcResult::NVRTC_ERROR_INVALID_INPUT);
        let e = nvrtc_err("calling NVRTC")(code);
        assert_eq!(
            e.source().and_then(|s| s.downcast_ref::<NvrtcError>()),
            Some(&code)
        );
        assert!(e.to_string().contains("NVRTC_ERROR_INVALID_INPUT"), "{e}");
        // Errors of the crate's own checks have none.
        assert!(MixError::EmptyShape { what: "x" }.source().is_none());
    }

    /// Re-runs this test binary with LD_LIBRARY_PATH emptied, so libnvrtc cannot be found,
    /// and checks the child's error (the presence check is cached per process).
    #[test]
    #[cfg(mixup_cuda_dynload)]
    fn missing_nvrtc_is_a_clear_error() {
        if std::env::var_os("MIXUP_NVRTC_CHILD").is_some() {
            // SAFETY: only probes library names.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                println!("{SYSTEM_WIDE}");
                return;
            }
            match require_nvrtc() {
                Err(MixError::CudaUnavailable(m)) => {
                    assert!(m.contains("pip install nvidia-cuda-nvrtc==13.0.*"), "{m}");
                    assert!(m.contains("LD_LIBRARY_PATH"), "{m}");
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                nvrtc::version(),
                Err(MixError::CudaUnavailable(_))
            ));
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cuda::context::tests::missing_nvrtc_is_a_clear_error",
                "--nocapture",
            ])
            .env("MIXUP_NVRTC_CHILD", "1")
            .env("LD_LIBRARY_PATH", "")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
        if text.contains(SYSTEM_WIDE) {
            // Nothing was checked: say so where test output is read, as the GPU tests do.
            eprintln!("SKIPPED: missing_nvrtc_is_a_clear_error: {SYSTEM_WIDE}");
        }
    }

    /// What the child prints when libnvrtc is found without `LD_LIBRARY_PATH` (the system's
    /// library path): the missing-library error cannot be produced there.
    #[cfg(mixup_cuda_dynload)]
    const SYSTEM_WIDE: &str = "libnvrtc is installed system-wide; nothing to check";
}
