//! The fused mixup cross-entropy on the device: `kernels/mixup_ce.cu`.
//!
//! Which kernel runs for which C (s = bytes per element, a slot = 16 bytes = 16/s elements;
//! limits for H100, whose blocks may use 227 KB of shared memory):
//!
//! | path | C·s | why |
//! |---|---|---|
//! | `ce_warp`, G lanes per row | ≤ 2 KB (C ≤ 512 f32, 1024 bf16) | a row fits in 4 slots × 32 lanes of registers; small rows share a warp (G = 1..32 lanes each), so 256×1000 is one launch of a few blocks |
//! | `ce_block`, registers | ≤ 64 KB (C ≤ 16 384 f32, 32 768 bf16) | one block of 64..1024 threads per row, 4 slots per thread in registers: the row is read once and the gradient written once |
//! | `ce_block`, + shared memory | ≤ 64 KB + S·16 KB, S ≤ 14 (≤ 288 KB: C ≤ 73 728 f32, 147 456 bf16) | 1024 threads, the rest of the row in dynamic shared memory (cp.async): still one read, one write. 256 000 f32 = 1 MB fits in neither |
//! | `ce_online` | any | online (max, sum) pass, then a second read for the gradient (2R + 1W, the re-read mostly from L2); also every forward-only call beyond the warp path |
//!
//! Smaller GPUs have less shared memory (A100 163 KB: S ≤ 9; L40 / RTX 4090 99 KB: S ≤ 5; T4
//! 64 KB: S ≤ 3), so the online path starts earlier there.
//!
//! The table is for the default [`KernelTuning`]: its `ce_warp_max_row_bytes` (2 KB),
//! `ce_slots` (4 register slots), `ce_block_max_threads` (1024) and `ce_block_max_row_bytes`
//! (no limit but shared memory's) set the thresholds, `ce_warp_threads` the warp kernel's block.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaView, DeviceRepr, LaunchConfig};

use crate::dtype::ScalarType;
use crate::spec::{CeSpec, Reduction};

use super::entries::Kernel;
use super::loss::loss_entry_points;
use super::tuning::{KernelTuning, LaunchEnv};

/// Shared memory kept back from the opt-in limit for the kernel's static shared memory
/// (about 1.5 KB: 1.4 KB reported by ptxas before the reduced loss's `double part[32]`) and
/// the driver.
pub(crate) const CE_SMEM_RESERVE: u32 = 2048;

/// The gradient arriving from above the loss, on the device side.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::{CudaMixer, DevicePlan, DeviceGradOutput};
/// use mixup_kernels::{CeSpec, MixPlan, Reduction};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::identity(2)?)?;
/// let spec = CeSpec::new(2, 0.0, Reduction::Mean).unwrap();
/// let (z, y) = (s.clone_htod(&vec![0.0f32; 4])?, s.clone_htod(&vec![0u32, 1])?);
/// let (mut loss, mut grad) = (s.alloc_zeros::<f32>(1)?, s.alloc_zeros::<f32>(4)?);
/// // dL_total/dL = 2, read from device memory (an autograd upstream that lives on the GPU).
/// let up = s.clone_htod(&vec![2.0f32])?;
/// mixer.mixup_ce(&plan, &spec, &z.as_view(), &y.as_view(), DeviceGradOutput::Device(up.as_view()),
///     Some(&mut loss.as_view_mut()), None, &mut grad.as_view_mut())?;
/// let want = [-0.5, 0.5, 0.5, -0.5]; // (softmax - t) · 2 / B
/// assert!(s.clone_dtoh(&grad)?.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub enum DeviceGradOutput<'a> {
    /// One host value (1.0 for a plain `loss.backward()`), baked into the launch.
    Scalar(f32),
    /// One device value `[1]` (an autograd upstream that lives on the GPU).
    Device(CudaView<'a, f32>),
    /// One device value per sample `[B]`; only with [`Reduction::None`].
    PerSample(CudaView<'a, f32>),
}

/// The gradient arriving from above the loss, as device addresses.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::raw::RawGradOutput;
/// let plain = RawGradOutput::Scalar(1.0); // `loss.backward()`
/// let on_device = RawGradOutput::Device(0x7f00_0000_0000); // one f32 the autograd engine wrote
/// assert_ne!(plain, on_device);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawGradOutput {
    /// One host value.
    Scalar(f32),
    /// One f32 on the device.
    Device(CUdeviceptr),
    /// `B` f32 on the device; only with `Reduction::None`.
    PerSample(CUdeviceptr),
}

/// The buffers of a cross-entropy call.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::raw::CeBuffers;
/// # let (logits, labels, loss) = (0x1000u64, 0x2000u64, 0x3000u64);
/// // Loss and gradient, the gradient written over the logits; no per-sample losses.
/// let bufs = CeBuffers { logits, labels, grad: Some(logits), loss: Some(loss), losses: None };
/// // Loss only (evaluation).
/// let eval = CeBuffers { grad: None, ..bufs };
/// assert_eq!(eval.grad, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CeBuffers {
    /// Logits `[B, C]` of the call's dtype.
    pub logits: CUdeviceptr,
    /// Labels `[B]`, u32.
    pub labels: CUdeviceptr,
    /// Gradient `[B, C]` of the logits' dtype: `None` for the loss only; `Some(logits)` writes
    /// it over the logits (in place is allowed here).
    pub grad: Option<CUdeviceptr>,
    /// The reduced loss, one f32: required under [`Reduction::Mean`] and [`Reduction::Sum`],
    /// `None` under [`Reduction::None`] (whose result is `losses`).
    pub loss: Option<CUdeviceptr>,
    /// Per-sample losses `[B]` f32: required under [`Reduction::None`], optional otherwise.
    pub losses: Option<CUdeviceptr>,
}

/// The eight addresses that open both loss kernels' argument structs (`struct CeArgs` in
/// kernels/mixup_ce.cu and `struct BceArgs` in kernels/mixup_bce.cu), in their order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LossAddrs {
    pub logits: u64,
    pub grad: u64,
    pub labels: u64,
    pub plan: u64,
    pub losses: u64,
    pub loss: u64,
    pub grad_output: u64,
    pub flags: u64,
}

impl LossAddrs {
    /// The addresses of a call (`losses` resolved to the scratch buffer when the caller gave
    /// none but wants the reduced loss; 0 for the gradient only), and the kernel's `up_kind` and `up` for its grad_output.
    pub(crate) fn new(
        bufs: &CeBuffers,
        losses: u64,
        plan: u64,
        flags: u64,
        grad_output: &RawGradOutput,
    ) -> (Self, u32, f32) {
        use RawGradOutput::*;
        let (up_kind, up_ptr, up) = match *grad_output {
            Scalar(g) => (0, 0, g),
            Device(p) => (1, p, 1.0),
            PerSample(p) => (2, p, 1.0),
        };
        let addrs = LossAddrs {
            logits: bufs.logits,
            grad: bufs.grad.unwrap_or(0),
            labels: bufs.labels,
            plan,
            losses,
            loss: bufs.loss.unwrap_or(0),
            grad_output: up_ptr,
            flags,
        };
        (addrs, up_kind, up)
    }
}

/// The kernels' `reduction` code: 0 Mean, 1 Sum, 2 None.
pub(crate) fn reduction_code(r: Reduction) -> u32 {
    match r {
        Reduction::Mean => 0,
        Reduction::Sum => 1,
        Reduction::None => 2,
    }
}

/// Kernel arguments (`struct CeArgs` in kernels/mixup_ce.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CeArgs {
    pub addrs: LossAddrs,
    pub batch: u64,
    pub classes: u64,
    pub eps: f32,
    pub off: f32,
    pub up: f32,
    pub factor: f32,
    pub up_kind: u32,
    pub reduction: u32,
    pub group: u32,
    pub smem_slots: u32,
    /// Elements from one logits row to the next (C, or a pitched tensor's row pitch).
    pub ld: u64,
}

// SAFETY: repr(C), 120 bytes without padding, mirrored by the kernel's struct.
unsafe impl DeviceRepr for CeArgs {}

/// The row strategy for C classes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CeStrategy {
    /// `group` lanes per row (power of two, 1..=32).
    Warp { group: u32 },
    /// One block of `threads` per row, `smem_slots` shared-memory slots per thread.
    Block { threads: u32, smem_slots: u32 },
    /// One block of `threads` per row, two reads.
    Online { threads: u32 },
}

impl CeStrategy {
    /// Kernel family (`ce_warp`, `ce_block`, `ce_online`).
    pub(crate) fn kernel(&self) -> Kernel {
        match self {
            CeStrategy::Warp { .. } => Kernel::CeWarp,
            CeStrategy::Block { .. } => Kernel::CeBlock,
            CeStrategy::Online { .. } => Kernel::CeOnline,
        }
    }

    /// `CeArgs::group`: lanes per row of the warp kernel (32, unused, otherwise).
    pub(crate) fn group(&self) -> u32 {
        match *self {
            CeStrategy::Warp { group } => group,
            _ => 32,
        }
    }

    /// `CeArgs::smem_slots`: shared-memory slots per thread of the block kernel.
    pub(crate) fn smem_slots(&self) -> u32 {
        match *self {
            CeStrategy::Block { smem_slots, .. } => smem_slots,
            _ => 0,
        }
    }

    /// Grid, block and dynamic shared memory for `batch` rows under `env`'s tuning (the warp
    /// kernel's block size and the grid cap).
    pub(crate) fn launch_config(&self, batch: u64, env: &LaunchEnv<'_>) -> LaunchConfig {
        let nt = env.tuning.ce_warp_threads;
        let (rows_per_block, threads, smem) = match *self {
            CeStrategy::Warp { group } => ((nt / group) as u64, nt, 0),
            CeStrategy::Block {
                threads,
                smem_slots,
            } => (1, threads, smem_slots * threads * 16),
            CeStrategy::Online { threads } => (1, threads, 0),
        };
        rows_launch(batch, rows_per_block, threads, smem, env)
    }
}

/// The launch configuration of a loss kernel for `batch` rows, `rows_per_block` to a block of
/// `threads` with `smem` bytes of dynamic shared memory (the kernels loop over the rows past the
/// grid, which `env`'s tuning may cap at a multiple of the SM count).
pub(crate) fn rows_launch(
    batch: u64,
    rows_per_block: u64,
    threads: u32,
    smem: u32,
    env: &LaunchEnv<'_>,
) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            env.tuning.grid(batch.div_ceil(rows_per_block), env.sms),
            1,
            1,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// Threads (whole warps, 64 to `max`) for `slots` slots at `per_thread` slots a thread.
pub(crate) fn threads_for(slots: u64, per_thread: u64, max: u32) -> u32 {
    (slots.div_ceil(per_thread).next_multiple_of(32)).clamp(64, u64::from(max)) as u32
}

/// Picks the row strategy for `classes` elements of `elem_size` bytes under `t`'s thresholds,
/// on a device whose blocks may opt in to `smem_optin` bytes of shared memory.
pub(crate) fn ce_strategy(
    classes: u64,
    elem_size: usize,
    smem_optin: u32,
    forward_only: bool,
    t: &KernelTuning,
) -> CeStrategy {
    let ve = 16 / elem_size as u64;
    let (k, u, max_t) = (
        u64::from(t.ce_slots),
        u64::from(t.ce_online_unroll),
        t.ce_block_max_threads,
    );
    // Full slots of a row: at most C / VE, whatever the row's alignment.
    let slots = classes / ve;
    if slots * 16 <= u64::from(t.ce_warp_max_row_bytes) {
        // At most 32 K slots (`KernelTuning::validate`): G <= 32 lanes.
        let group = slots.div_ceil(k).max(1).next_power_of_two() as u32;
        return CeStrategy::Warp { group };
    }
    let online = CeStrategy::Online {
        threads: threads_for(slots, u, max_t),
    };
    if forward_only || slots.saturating_mul(16) > t.ce_block_max_row_bytes {
        return online;
    }
    let threads = threads_for(slots, k, max_t);
    if threads as u64 * k >= slots {
        return CeStrategy::Block {
            threads,
            smem_slots: 0,
        };
    }
    let in_smem = slots - u64::from(max_t) * k;
    let s = in_smem.div_ceil(max_t.into());
    if s * u64::from(max_t) * 16 <= smem_optin.saturating_sub(CE_SMEM_RESERVE) as u64 {
        return CeStrategy::Block {
            threads: max_t,
            smem_slots: s as u32,
        };
    }
    online
}

/// The launch [`launch`](super::loss::launch) makes for `batch` rows of `classes` elements of
/// `elem_size` bytes on a device with `smem_optin` bytes of opt-in shared memory per block and
/// `sms` SMs, under `tuning`: the kernel family (`ce_warp`, `ce_block`, `ce_online`),
/// `CeArgs::group`, `CeArgs::smem_slots`, and the grid, block and dynamic shared memory. For
/// the host emulation of the kernels (tests/kernels_emulated), which checks that it agrees
/// with the launch it runs.
#[doc(hidden)]
pub fn ce_launch(
    classes: u64,
    elem_size: usize,
    (smem_optin, sms): (u32, u32),
    forward_only: bool,
    batch: u64,
    tuning: &KernelTuning,
) -> (&'static str, u32, u32, LaunchConfig) {
    let env = LaunchEnv {
        tuning,
        sms,
        smem_optin,
    };
    let s = ce_strategy(classes, elem_size, smem_optin, forward_only, tuning);
    (
        s.kernel().prefix(),
        s.group(),
        s.smem_slots(),
        s.launch_config(batch, &env),
    )
}

/// The kernel, its arguments and its launch configuration for a checked call of `b > 0` rows,
/// every address given (`losses` resolved to the scratch buffer when the caller gave none but
/// wants the reduced loss; 0 for the gradient only), the logits' rows `ld` elements apart (checked by [`row_stride`](super::loss::row_stride)),
/// under `env` (tuning, SMs, opt-in shared memory). [`launch`](super::loss::launch) launches
/// it; the host emulation's cases (`kernels::emulated`) run it on the CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ce_call(
    spec: &CeSpec,
    dtype: ScalarType,
    b: usize,
    env: &LaunchEnv<'_>,
    bufs: &CeBuffers,
    losses: u64,
    plan: u64,
    flags: u64,
    grad_output: &RawGradOutput,
    ld: u64,
) -> (Kernel, CeArgs, LaunchConfig) {
    let c = spec.num_classes();
    let forward_only = bufs.grad.is_none();
    let strategy = ce_strategy(
        c as u64,
        dtype.size(),
        env.smem_optin,
        forward_only,
        env.tuning,
    );
    let (addrs, up_kind, up) = LossAddrs::new(bufs, losses, plan, flags, grad_output);
    let args = CeArgs {
        addrs,
        batch: b as u64,
        classes: c as u64,
        eps: spec.targets().smoothing_f32(),
        off: spec.targets().off_f32(),
        up,
        factor: spec.reduction().grad_factor(b),
        up_kind,
        reduction: reduction_code(spec.reduction()),
        group: strategy.group(),
        smem_slots: strategy.smem_slots(),
        ld,
    };
    (
        strategy.kernel(),
        args,
        strategy.launch_config(b as u64, env),
    )
}

// `CudaMixer::mixup_ce_forward`, `mixup_ce` and `mixup_ce_in_place`: the entry points
// `loss_entry_points` makes for every loss, with their docs here.
loss_entry_points! {
    CeSpec => Ce;
    /// Loss only (evaluation): writes the reduced loss to `loss` (`[1]`) under
    /// [`Reduction::Mean`] and [`Reduction::Sum`], and the per-sample losses to `losses` (`[B]`)
    /// if given. Under [`Reduction::None`] the per-sample losses are the result, as in PyTorch:
    /// `losses` is required and `loss` must be `None`. Device labels are `u32`. Reads the logits
    /// once.
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) `loss` (missing under
    /// Mean/Sum, given under None) or `losses` (missing under None);
    /// [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) for `logits` not `[B, C]`,
    /// [`MixError::LengthMismatch`](crate::MixError::LengthMismatch) for `loss` or `losses` of
    /// the wrong length; [`MixError::Driver`](crate::MixError::Driver) from the launch.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{CeSpec, MixPlan, Reduction};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(2)?)?;
    /// let spec = CeSpec::new(2, 0.0, Reduction::None).unwrap();
    /// let (z, y) = (s.clone_htod(&vec![0.0f32; 4])?, s.clone_htod(&vec![0u32, 1])?);
    /// let mut losses = s.alloc_zeros::<f32>(2)?;
    /// mixer.mixup_ce_forward(&plan, &spec, &z.as_view(), &y.as_view(), None,
    ///     Some(&mut losses.as_view_mut()))?;
    /// let ln2 = std::f32::consts::LN_2;
    /// assert!(s.clone_dtoh(&losses)?.iter().all(|l| (l - ln2).abs() < 1e-6));
    /// # Ok(())
    /// # }
    /// ```
    mixup_ce_forward;
    /// Loss and gradient in one launch: the gradient `(softmax - t) · scale` goes to `grad`
    /// (`[B, C]`), the reduced loss to `loss` (`[1]`; Mean and Sum only) and the per-sample
    /// losses to `losses` (`[B]`) if given. A backward pass that wants only the gradient passes
    /// `None` for both.
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) `loss` when given under
    /// [`Reduction::None`] (it has no reduced loss), `grad_output` for a per-sample grad_output
    /// without Reduction::None or a non-finite one;
    /// [`MixError::ShapeMismatch`](crate::MixError::ShapeMismatch) for `logits` or `grad` not
    /// `[B, C]`, [`MixError::LengthMismatch`](crate::MixError::LengthMismatch) for `loss` or
    /// `losses` of the wrong length; [`MixError::Driver`](crate::MixError::Driver) from the
    /// launch.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan, DeviceGradOutput};
    /// use mixup_kernels::{reference, CeSpec, MixPlan, Reduction, GradOutput};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let host_plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&host_plan)?;
    /// let spec = CeSpec::new(3, 0.1, Reduction::Mean).unwrap();
    /// let (logits, labels) = (vec![1.0f32, -1.0, 0.5, 0.0, 2.0, -0.5], vec![0u32, 2]);
    /// let (z, y) = (s.clone_htod(&logits)?, s.clone_htod(&labels)?);
    /// let (mut loss, mut grad) = (s.alloc_zeros::<f32>(1)?, s.alloc_zeros::<f32>(6)?);
    /// mixer.mixup_ce(&plan, &spec, &z.as_view(), &y.as_view(), DeviceGradOutput::Scalar(1.0),
    ///     Some(&mut loss.as_view_mut()), None, &mut grad.as_view_mut())?;
    /// let want = reference::mixup_ce(&host_plan, &spec, &logits, &labels, GradOutput::Scalar(1.0))?;
    /// assert!((f64::from(s.clone_dtoh(&loss)?[0]) - want.loss.unwrap()).abs() < 1e-5);
    /// let grad = s.clone_dtoh(&grad)?;
    /// assert!(grad.iter().zip(&want.grad).all(|(g, w)| (f64::from(*g) - w).abs() < 1e-6));
    /// # Ok(())
    /// # }
    /// ```
    mixup_ce;
    /// Loss and gradient, the gradient written over the logits.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan, DeviceGradOutput};
    /// use mixup_kernels::{f16, CeSpec, MixPlan, Reduction};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(2)?)?;
    /// let spec = CeSpec::new(2, 0.0, Reduction::Sum).unwrap();
    /// let mut z = s.clone_htod(&vec![f16::ZERO; 4])?;
    /// let y = s.clone_htod(&vec![0u32, 1])?;
    /// let mut loss = s.alloc_zeros::<f32>(1)?;
    /// mixer.mixup_ce_in_place(&plan, &spec, &mut z.as_view_mut(), &y.as_view(),
    ///     DeviceGradOutput::Scalar(1.0), Some(&mut loss.as_view_mut()), None)?;
    /// let grad: Vec<f32> = s.clone_dtoh(&z)?.into_iter().map(f32::from).collect();
    /// let want = [-0.5, 0.5, 0.5, -0.5]; // softmax - t, no 1/B for a sum
    /// assert!(grad.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-3));
    /// # Ok(())
    /// # }
    /// ```
    mixup_ce_in_place;
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: u32 = 232_448;
    const CE_K: u64 = 4;

    fn env(t: &KernelTuning) -> LaunchEnv<'_> {
        LaunchEnv {
            tuning: t,
            sms: 132,
            smem_optin: H100,
        }
    }

    #[test]
    fn args_are_120_bytes() {
        assert_eq!(std::mem::size_of::<CeArgs>(), 120);
    }

    #[test]
    fn strategy_by_classes() {
        use CeStrategy::*;
        let block = |threads, smem_slots| Block {
            threads,
            smem_slots,
        };
        // (C, bytes per element, opt-in shared memory, forward only, the strategy)
        let cases = [
            // Tiny rows: one lane per row.
            (1, 4, H100, false, Warp { group: 1 }),
            (10, 4, H100, false, Warp { group: 1 }),
            (100, 4, H100, false, Warp { group: 8 }),
            (512, 4, H100, false, Warp { group: 32 }),
            (1024, 2, H100, false, Warp { group: 32 }),
            // 256x1000 f32: 250 slots -> a block of 64 threads per row.
            (1000, 4, H100, false, block(64, 0)),
            (1000, 2, H100, false, Warp { group: 32 }),
            // 4096x32000 bf16: 4000 slots -> 1000 -> 1024 threads, registers only.
            (32_000, 2, H100, false, block(1024, 0)),
            (32_000, 4, H100, false, block(1024, 4)),
            (50_257, 4, H100, false, block(1024, 9)),
            (64_000, 4, H100, false, block(1024, 12)),
            (128_256, 2, H100, false, block(1024, 12)),
            (128_256, 4, H100, false, Online { threads: 1024 }),
            (256_000, 2, H100, false, Online { threads: 1024 }),
            // Less shared memory (A100, T4): the online path starts earlier.
            (128_256, 2, 166_912, false, Online { threads: 1024 }),
            (20_000, 4, 65_536, false, block(1024, 1)),
            (32_000, 4, 65_536, false, Online { threads: 1024 }),
            (50_257, 4, 65_536, false, Online { threads: 1024 }),
            // Forward only reads once whatever the path: online beyond the warp kernel.
            (10, 2, H100, true, Warp { group: 1 }),
            (32_000, 2, H100, true, Online { threads: 1024 }),
            (2_000, 4, H100, true, Online { threads: 128 }),
        ];
        for (c, s, smem, forward_only, want) in cases {
            let got = ce_strategy(c, s, smem, forward_only, &KernelTuning::default());
            assert_eq!(got, want, "C = {c}, {s} B, {smem} B shared, {forward_only}");
        }
    }

    #[test]
    fn every_strategy_holds_its_row() {
        for c in [
            1u64, 7, 129, 1000, 4097, 32_000, 50_257, 64_000, 100_000, 128_256, 256_000,
        ] {
            for s in [2usize, 4] {
                let slots = c / (16 / s as u64);
                match ce_strategy(c, s, H100, false, &KernelTuning::default()) {
                    CeStrategy::Warp { group } => {
                        assert!(group.is_power_of_two() && group <= 32);
                        assert!(group as u64 * CE_K >= slots, "{c} {s}");
                    }
                    CeStrategy::Block {
                        threads,
                        smem_slots,
                    } => {
                        assert!(threads % 32 == 0 && (64..=1024).contains(&threads));
                        assert!(
                            (threads as u64) * (CE_K + smem_slots as u64) >= slots,
                            "{c} {s}"
                        );
                        assert!(smem_slots * threads * 16 + CE_SMEM_RESERVE <= H100);
                    }
                    CeStrategy::Online { threads } => assert!(threads % 32 == 0),
                }
            }
        }
    }

    #[test]
    fn grids_for_huge_batches() {
        let t = KernelTuning::default();
        let env = env(&t);
        let w = CeStrategy::Warp { group: 1 };
        let cfg = w.launch_config(1 << 40, &env);
        assert_eq!(cfg.grid_dim.0, (1u32 << 31) - 1);
        assert_eq!(w.launch_config(256, &env).grid_dim.0, 1);
        assert_eq!(
            CeStrategy::Warp { group: 32 }
                .launch_config(256, &env)
                .grid_dim
                .0,
            32
        );
        let b = CeStrategy::Block {
            threads: 1024,
            smem_slots: 12,
        };
        let cfg = b.launch_config(4096, &env);
        assert_eq!(
            (cfg.grid_dim.0, cfg.block_dim.0, cfg.shared_mem_bytes),
            (4096, 1024, 196_608)
        );
        assert_eq!(b.launch_config(u64::MAX, &env).grid_dim.0, (1u32 << 31) - 1);
        // Capped at 2 blocks per SM, a 128-thread warp kernel (16 rows of 8 lanes a block).
        let capped = KernelTuning {
            grid_sm_multiple: 2,
            ce_warp_threads: 128,
            ..t
        };
        let cfg = CeStrategy::Warp { group: 8 }.launch_config(1 << 20, &env_of(&capped));
        assert_eq!((cfg.grid_dim.0, cfg.block_dim.0), (264, 128));
        let cfg = CeStrategy::Warp { group: 8 }.launch_config(100, &env_of(&capped));
        assert_eq!(cfg.grid_dim.0, 7);
    }

    fn env_of(t: &KernelTuning) -> LaunchEnv<'_> {
        env(t)
    }

    #[test]
    fn thresholds_follow_the_tuning() {
        use CeStrategy::*;
        let d = KernelTuning::default();
        // Warp up to 1 KB rows, 2 register slots a thread, blocks of at most 512 threads,
        // nothing above 32 KB in ce_block.
        let t = KernelTuning {
            ce_slots: 2,
            ce_warp_max_row_bytes: 1024,
            ce_block_max_threads: 512,
            ce_block_max_row_bytes: 32 * 1024,
            ce_online_unroll: 8,
            ..d
        };
        let cases = [
            (256, 4, Warp { group: 32 }),
            (
                260,
                4,
                Block {
                    threads: 64,
                    smem_slots: 0,
                },
            ),
            // 512 threads x 2 slots = 16 KB in registers, then shared memory.
            (
                4096,
                4,
                Block {
                    threads: 512,
                    smem_slots: 0,
                },
            ),
            (
                4100,
                4,
                Block {
                    threads: 512,
                    smem_slots: 1,
                },
            ),
            (
                8192,
                4,
                Block {
                    threads: 512,
                    smem_slots: 2,
                },
            ),
            // Over 32 KB: online, sized for 8 slots a step.
            (8196, 4, Online { threads: 288 }),
            (256_000, 2, Online { threads: 512 }),
        ];
        for (c, s, want) in cases {
            assert_eq!(ce_strategy(c, s, H100, false, &t), want, "C = {c}, {s} B");
        }
        assert_eq!(ce_strategy(260, 4, H100, false, &d), Warp { group: 32 });
        // With no warp rows at all, every row with a slot goes to the block kernel.
        let no_warp = KernelTuning {
            ce_warp_max_row_bytes: 0,
            ..d
        };
        assert_eq!(ce_strategy(3, 4, H100, false, &no_warp), Warp { group: 1 });
        assert_eq!(
            ce_strategy(4, 4, H100, false, &no_warp),
            Block {
                threads: 64,
                smem_slots: 0
            }
        );
    }
}
