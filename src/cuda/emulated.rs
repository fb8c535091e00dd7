//! The host's launches without a device, for the host emulation of the kernels
//! (tests/kernels_emulated): each function makes the checks and the choices the real call
//! makes (kernel, grid, block, shared memory, every field of the arguments) through the same
//! code, and returns them, with the addresses it was given, instead of launching. Not a stable
//! API.

use cudarc::driver::LaunchConfig;

use crate::config::TargetSpec;
use crate::dtype::ScalarType;
use crate::error::{MixError, Result};
use crate::plan::MixPlan;
use crate::spec::{BceSpec, CeSpec, LossSpec, SampleShape};

use super::entries::Kernel;
use super::mixup_ce::{CeBuffers, RawGradOutput};
use super::tuning::{KernelTuning, LaunchEnv};

/// One kernel launch as the host code makes it.
#[derive(Debug, Clone)]
pub struct HostLaunch {
    /// The `extern "C"` entry (`ce_warp_bf16`).
    pub entry: &'static str,
    /// Grid, block and dynamic shared memory.
    pub config: LaunchConfig,
    /// The kernel's argument struct, byte for byte (`repr(C)`, no padding).
    pub args: Vec<u8>,
}

/// What a [`CudaMixer`](super::CudaMixer) and a [`DevicePlan`](super::DevicePlan) hold on the
/// device: the staged plan's address, the flags' address, the opt-in shared memory, the SM
/// count and the mixer's tuning.
#[derive(Debug, Clone, Copy)]
pub struct Device {
    /// Address of the plan as [`staged_plan`] lays it out.
    pub plan: u64,
    /// Address of the two `u32` flags (bad labels, the block counter).
    pub flags: u64,
    /// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`.
    pub smem_optin: u32,
    /// Streaming multiprocessors (the unit of [`KernelTuning::grid_sm_multiple`]).
    pub sms: u32,
    /// The mixer's tuning (the emulated kernels must be built with its
    /// [`all_defines`](KernelTuning::all_defines)).
    pub tuning: KernelTuning,
}

impl Device {
    fn env(&self) -> LaunchEnv<'_> {
        LaunchEnv {
            tuning: &self.tuning,
            sms: self.sms,
            smem_optin: self.smem_optin,
        }
    }
}

fn host_launch<A: Copy>(
    kernel: Kernel,
    dtype: ScalarType,
    args: &A,
    config: LaunchConfig,
) -> Result<HostLaunch> {
    let entry = kernel.name(dtype).ok_or(MixError::InvalidArgument {
        what: "dtype",
        reason: format!("no {} kernel for {dtype:?}", kernel.prefix()),
    })?;
    // SAFETY: the argument structs are `repr(C)` of u64/u32/f32 fields without padding, so every
    // byte is initialized.
    let bytes =
        unsafe { std::slice::from_raw_parts((args as *const A).cast::<u8>(), size_of::<A>()) };
    Ok(HostLaunch {
        entry,
        config,
        args: bytes.to_vec(),
    })
}

/// The plan's device buffer, byte for byte as [`DevicePlan::upload`](super::DevicePlan::upload)
/// copies it, and the number of pair leaders.
pub fn staged_plan(plan: &MixPlan) -> (Vec<u8>, usize) {
    let mut staged = Vec::new();
    let pairs = super::plan::stage(plan, &mut staged);
    let bytes = staged
        .iter()
        .flat_map(super::plan::entry_words)
        .flat_map(u32::to_le_bytes)
        .collect();
    (bytes, pairs)
}

/// The elements of one row of a `[B, ...]` tensor's last dimension in `layout` (the row a
/// pitched input pads): the width (channels-first), the channels (channels-last), the sample
/// (`Rows`).
pub fn input_row(layout: &SampleShape) -> usize {
    super::mix::input_row(layout)
}

/// [`raw::mix`](super::raw::mix) / [`raw::mix_in_place`](super::raw::mix_in_place) (`out == x`),
/// the input's rows (of its last dimension) `pitch` elements apart when given (burn's pitched
/// CUDA tensors; `None`: dense): `None` when there is nothing to launch.
#[allow(clippy::too_many_arguments)]
pub fn mix(
    plan: &MixPlan,
    layout: &SampleShape,
    dtype: ScalarType,
    x: u64,
    out: u64,
    len: usize,
    in_place: bool,
    pitch: Option<usize>,
    dev: &Device,
) -> Result<Option<HostLaunch>> {
    if !super::mix::check_call(plan, layout, len, in_place)? {
        return Ok(None);
    }
    let rows = super::mix::input_rows(layout, plan.len(), pitch, in_place)?;
    let (_, pairs) = staged_plan(plan);
    let (kernel, args, cfg) = super::mix::mix_call(
        plan,
        layout,
        dtype,
        pairs,
        x,
        out,
        dev.plan,
        rows,
        &dev.env(),
    )?;
    host_launch(kernel, dtype, &args, cfg).map(Some)
}

/// [`raw::soft_targets`](super::raw::soft_targets): `None` for an empty batch.
pub fn soft_targets(
    plan: &MixPlan,
    spec: &TargetSpec,
    dtype: ScalarType,
    labels: u64,
    out: u64,
    out_len: usize,
    dev: &Device,
) -> Result<Option<HostLaunch>> {
    super::soft_targets::require_float(dtype, "out")?;
    crate::spec::check_targets(plan, spec)?;
    let (b, c) = (plan.len(), spec.num_classes());
    crate::error::check_rows("out", crate::error::Rows::Classes, b, c, out_len)?;
    if plan.is_empty() {
        return Ok(None);
    }
    let (args, cfg) = super::soft_targets::soft_targets_call(
        spec,
        dtype,
        plan.len(),
        labels,
        out,
        dev.plan,
        dev.flags,
        &dev.env(),
    )?;
    host_launch(Kernel::SoftTargets, dtype, &args, cfg).map(Some)
}

/// The steps both losses' launches share: the checks, nothing to launch for an empty batch,
/// and `call` (the loss's own kernel, arguments and launch) given the per-sample losses'
/// address, which the emulation needs from the caller (the device's would be scratch).
#[allow(clippy::too_many_arguments)]
fn loss_launch<A: Copy>(
    plan: &MixPlan,
    spec: LossSpec<'_>,
    dtype: ScalarType,
    logits_len: usize,
    bufs: &CeBuffers,
    grad_output: &RawGradOutput,
    ld: Option<usize>,
    call: impl FnOnce(u64, u64) -> (Kernel, A, LaunchConfig),
) -> Result<Option<HostLaunch>> {
    super::soft_targets::require_float(dtype, "logits")?;
    spec.check_device(plan, logits_len, grad_output)?;
    let ld = super::loss::row_stride(plan.len(), spec.num_classes(), ld, bufs)?;
    if plan.is_empty() {
        return Ok(None);
    }
    let losses = match (bufs.losses, bufs.loss) {
        (Some(p), _) => p,
        (None, Some(_)) => {
            return Err(MixError::InvalidArgument {
                what: "losses",
                reason: "the emulated call with a reduced loss needs the per-sample losses' \
                         buffer (the device's would be scratch)"
                    .into(),
            });
        }
        // The gradient only: no per-sample loss is written, as on the device.
        (None, None) => 0,
    };
    let (kernel, args, cfg) = call(losses, ld);
    host_launch(kernel, dtype, &args, cfg).map(Some)
}

/// [`raw::mixup_ce`](super::raw::mixup_ce) (`bufs.losses` required), the logits' rows `ld`
/// elements apart when given (burn's pitched tensors; `None`: dense): `None` for an empty batch.
#[allow(clippy::too_many_arguments)]
pub fn mixup_ce(
    plan: &MixPlan,
    spec: &CeSpec,
    dtype: ScalarType,
    logits_len: usize,
    bufs: &CeBuffers,
    grad_output: RawGradOutput,
    ld: Option<usize>,
    dev: &Device,
) -> Result<Option<HostLaunch>> {
    let up = &grad_output;
    let env = dev.env();
    let call = |losses, ld| {
        let (b, addrs) = (plan.len(), (dev.plan, dev.flags));
        super::mixup_ce::ce_call(spec, dtype, b, &env, bufs, losses, addrs.0, addrs.1, up, ld)
    };
    let spec = LossSpec::Ce(*spec);
    loss_launch(plan, spec, dtype, logits_len, bufs, up, ld, call)
}

/// [`raw::mixup_bce`](super::raw::mixup_bce) with the class weights at `weights` = (weight,
/// pos_weight) (0 where the spec has none; `bufs.losses` required), the logits' rows `ld`
/// elements apart when given (`None`: dense): `None` for an empty batch.
#[allow(clippy::too_many_arguments)]
pub fn mixup_bce(
    plan: &MixPlan,
    spec: &BceSpec,
    dtype: ScalarType,
    logits_len: usize,
    bufs: &CeBuffers,
    weights: (u64, u64),
    grad_output: RawGradOutput,
    ld: Option<usize>,
    dev: &Device,
) -> Result<Option<HostLaunch>> {
    let up = &grad_output;
    let env = dev.env();
    let call = |losses, ld| {
        let (b, addrs) = (plan.len(), (dev.plan, dev.flags));
        super::mixup_bce::bce_call(spec, dtype, b, bufs, losses, weights, addrs, up, &env, ld)
    };
    loss_launch(
        plan,
        LossSpec::bce(spec),
        dtype,
        logits_len,
        bufs,
        up,
        ld,
        call,
    )
}

/// [`CudaMixer::mix_normalize_raw`](super::CudaMixer::mix_normalize_raw) with `norm`'s `2C`
/// constants at `ms` (as [`DeviceNormalize`](super::DeviceNormalize) holds them: the means,
/// then the standard deviations), the input's rows (of its last dimension) `pitch` elements
/// apart when given (`None`: dense): `None` when there is nothing to launch.
#[allow(clippy::too_many_arguments)]
pub fn mix_normalize(
    plan: &MixPlan,
    shape: &SampleShape,
    norm: &crate::Normalize,
    input: ScalarType,
    x: u64,
    out_format: crate::MemoryFormat,
    output: ScalarType,
    out: u64,
    len: usize,
    ms: u64,
    pitch: Option<usize>,
    dev: &Device,
) -> Result<Option<HostLaunch>> {
    use super::mix_normalize::{check_call, mix_normalize_call};
    let Some(dims) = check_call(plan, shape, norm, input, output, len, len)? else {
        return Ok(None);
    };
    let rows = super::mix::input_rows(shape, plan.len(), pitch, false)?;
    let (kernel, args, cfg) = mix_normalize_call(
        plan,
        &dims,
        norm.u8_rounding(),
        input,
        out_format,
        x,
        out,
        dev.plan,
        ms,
        rows,
        &dev.env(),
    )?;
    host_launch(kernel, output, &args, cfg).map(Some)
}
