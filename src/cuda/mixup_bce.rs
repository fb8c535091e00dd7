//! The fused mixup binary cross-entropy on the device: `kernels/mixup_bce.cu`.
//!
//! Every element is independent of the others, so a row needs no registers held across a
//! reduction: lanes stride over its 16-byte slots, read each logit once, write its gradient
//! once, and add their losses at the end. Small rows share a warp (`bce_warp`, G = 1..32 lanes
//! per row, as the CE's warp kernel), larger ones get a block of 64..1024 threads
//! (`bce_block`, about 4 slots per thread per pass).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, SyncOnDrop};

use crate::dtype::ScalarType;
use crate::error::Result;
use crate::spec::BceSpec;

use super::context::{CudaMixer, check_made_for, driver_err};
use super::entries::Kernel;
use super::loss::loss_entry_points;
use super::mixup_ce::{
    CeBuffers, LossAddrs, RawGradOutput, reduction_code, rows_launch, threads_for,
};
use super::tuning::{KernelTuning, LaunchEnv};

/// Kernel arguments (`struct BceArgs` in kernels/mixup_bce.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct BceArgs {
    pub addrs: LossAddrs,
    pub weight: u64,
    pub pos_weight: u64,
    pub batch: u64,
    pub classes: u64,
    pub eps: f32,
    pub off: f32,
    pub up: f32,
    pub factor: f32,
    /// 1: Mean divides by B (`BceSpec::sum_classes`), 0: by B C (`BceSpec::mean_count`).
    pub sum_classes: u32,
    pub thr: f32,
    pub t_on: f32,
    pub t_off: f32,
    pub up_kind: u32,
    pub reduction: u32,
    pub thresholded: u32,
    pub group: u32,
    /// Elements from one logits row to the next (C, or a pitched tensor's row pitch).
    pub ld: u64,
}

// SAFETY: repr(C), 152 bytes without padding, mirrored by the kernel's struct.
unsafe impl DeviceRepr for BceArgs {}

/// The row strategy for C classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BceStrategy {
    /// `group` lanes per row (power of two, 1..=32).
    Warp { group: u32 },
    /// One block of `threads` per row.
    Block { threads: u32 },
}

impl BceStrategy {
    pub(crate) fn kernel(&self) -> Kernel {
        match self {
            BceStrategy::Warp { .. } => Kernel::BceWarp,
            BceStrategy::Block { .. } => Kernel::BceBlock,
        }
    }

    pub(crate) fn group(&self) -> u32 {
        match *self {
            BceStrategy::Warp { group } => group,
            BceStrategy::Block { .. } => 32,
        }
    }

    pub(crate) fn launch_config(&self, batch: u64, env: &LaunchEnv<'_>) -> LaunchConfig {
        let nt = env.tuning.bce_warp_threads;
        let (rows_per_block, threads) = match *self {
            BceStrategy::Warp { group } => ((nt / group) as u64, nt),
            BceStrategy::Block { threads } => (1, threads),
        };
        rows_launch(batch, rows_per_block, threads, 0, env)
    }
}

/// Picks the row strategy for `classes` elements of `elem_size` bytes: `t.bce_slots` slots per
/// thread, warps for rows of up to 32 such threads, blocks of up to `t.bce_block_max_threads`.
pub(crate) fn bce_strategy(classes: u64, elem_size: usize, t: &KernelTuning) -> BceStrategy {
    let slots = classes / (16 / elem_size as u64);
    let per = u64::from(t.bce_slots);
    if slots <= 32 * per {
        let group = slots.div_ceil(per).max(1).next_power_of_two() as u32;
        return BceStrategy::Warp { group };
    }
    BceStrategy::Block {
        threads: threads_for(slots, per, t.bce_block_max_threads),
    }
}

/// The launch [`launch`](super::loss::launch) makes for `batch` rows of `classes` elements of
/// `elem_size` bytes on a device of `sms` SMs under `tuning`: the kernel family (`bce_warp`,
/// `bce_block`), `BceArgs::group`, and the grid and block. For the host emulation of the
/// kernels (tests/kernels_emulated), so that it runs exactly what the host launches.
#[doc(hidden)]
pub fn bce_launch(
    classes: u64,
    elem_size: usize,
    batch: u64,
    tuning: &KernelTuning,
    sms: u32,
) -> (&'static str, u32, LaunchConfig) {
    let env = LaunchEnv {
        tuning,
        sms,
        smem_optin: 0,
    };
    let s = bce_strategy(classes, elem_size, tuning);
    (s.kernel().prefix(), s.group(), s.launch_config(batch, &env))
}

/// A [`BceSpec`] with its per-class `weight` and `pos_weight` on the device, uploaded once
/// (so a training step copies nothing).
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec};
/// use mixup_kernels::{BceSpec, Reduction};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let spec = BceSpec::new(3, 0.1, Reduction::Mean)?.with_pos_weight(vec![1.0, 2.0, 0.5])?;
/// let dspec = DeviceBceSpec::new(&mixer, spec)?;
/// assert_eq!(dspec.spec().num_classes(), 3);
/// # Ok(())
/// # }
/// ```
///
/// A spec serves the mixer it was made with: the losses refuse it with another mixer
/// (`MixError::InvalidArgument` naming `spec`), whose kernels would read the arrays unordered
/// with their copy, or on another device.
#[derive(Debug)]
pub struct DeviceBceSpec {
    spec: BceSpec,
    weight: Option<CudaSlice<f32>>,
    pos_weight: Option<CudaSlice<f32>>,
    /// The stream of the mixer it was made with, and that stream's host thread if it is
    /// per-thread ([`check_made_for`]).
    stream: Arc<CudaStream>,
    owner: Option<std::thread::ThreadId>,
}

impl DeviceBceSpec {
    /// Uploads the spec's per-class arrays on the mixer's stream.
    ///
    /// # Errors
    /// [`MixError::Driver`](crate::MixError::Driver) if the copies fail.
    pub fn new(mixer: &CudaMixer, spec: BceSpec) -> Result<Self> {
        let up = |v: Option<&[f32]>| -> Result<Option<CudaSlice<f32>>> {
            v.map(|v| {
                mixer
                    .stream()
                    .clone_htod(v)
                    .map_err(driver_err("uploading BCE class weights"))
            })
            .transpose()
        };
        Ok(Self {
            weight: up(spec.weight())?,
            pos_weight: up(spec.pos_weight())?,
            spec,
            stream: mixer.stream().clone(),
            owner: mixer.owner(),
        })
    }

    /// Refuses a mixer other than the one the spec was made with ([`check_made_for`]).
    pub(crate) fn check_for(&self, m: &CudaMixer) -> Result<()> {
        check_made_for((&self.stream, self.owner), m, "spec", "DeviceBceSpec")
    }

    /// The host spec.
    pub fn spec(&self) -> &BceSpec {
        &self.spec
    }

    /// The addresses of `weight` and `pos_weight` (0 for none), and the guards that order their
    /// reads on the mixer's stream (kept until the kernel is enqueued).
    pub(crate) fn weight_ptrs<'a>(
        &'a self,
        m: &'a CudaMixer,
    ) -> ((u64, u64), [Option<SyncOnDrop<'a>>; 2]) {
        let ptr = |w: &'a Option<CudaSlice<f32>>| match w {
            Some(w) => {
                let (p, r) = w.device_ptr(m.stream());
                (p, Some(r))
            }
            None => (0, None),
        };
        let (wp, rw) = ptr(&self.weight);
        let (pwp, rp) = ptr(&self.pos_weight);
        ((wp, pwp), [rw, rp])
    }
}

/// The kernel, its arguments and its launch configuration for a checked call of `b > 0` rows,
/// every address given: `losses` resolved to the scratch buffer when the caller gave none but
/// wants the reduced loss (0 for the gradient only), `weights` = (weight, pos_weight) (0: none),
/// `mixer` = (plan, flags), the logits' rows `ld` elements apart (checked by
/// [`row_stride`](super::loss::row_stride)), under `env`'s tuning.
/// [`launch`](super::loss::launch) launches it; the host emulation's cases (`kernels::emulated`)
/// run it on the CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bce_call(
    spec: &BceSpec,
    dtype: ScalarType,
    b: usize,
    bufs: &CeBuffers,
    losses: u64,
    (weight, pos_weight): (u64, u64),
    (plan, flags): (u64, u64),
    grad_output: &RawGradOutput,
    env: &LaunchEnv<'_>,
    ld: u64,
) -> (Kernel, BceArgs, LaunchConfig) {
    let c = spec.num_classes();
    let strategy = bce_strategy(c as u64, dtype.size(), env.tuning);
    let (addrs, up_kind, up) = LossAddrs::new(bufs, losses, plan, flags, grad_output);
    let eps = spec.targets().smoothing_f32();
    let (t_on, t_off) = spec.timm_on_off();
    let args = BceArgs {
        addrs,
        weight,
        pos_weight,
        batch: b as u64,
        classes: c as u64,
        eps,
        off: spec.targets().off_f32(),
        up,
        factor: spec.grad_factor(b),
        sum_classes: u32::from(spec.sum_classes()),
        thr: spec.target_threshold().unwrap_or(0.0),
        // The values `BceSpec::thresholded` decides with.
        t_on,
        t_off,
        up_kind,
        reduction: reduction_code(spec.reduction()),
        thresholded: u32::from(spec.target_threshold().is_some()),
        group: strategy.group(),
        ld,
    };
    (
        strategy.kernel(),
        args,
        strategy.launch_config(b as u64, env),
    )
}

// `CudaMixer::mixup_bce_forward`, `mixup_bce` and `mixup_bce_in_place`: the entry points
// `loss_entry_points` makes for every loss, with their docs here.
loss_entry_points! {
    DeviceBceSpec => Bce;
    /// Loss only (evaluation) of the mixup binary cross-entropy: the reduced loss to `loss`
    /// (`[1]`) under [`Reduction::Mean`](crate::Reduction::Mean) and [`Reduction::Sum`](crate::Reduction::Sum), the per-sample losses
    /// `Σ_c ℓ_ic` to `losses` (`[B]`) if given. Under [`Reduction::None`](crate::Reduction::None) the per-sample losses
    /// are the result, as in PyTorch: `losses` is required and `loss` must be `None`
    /// ([`MixError::InvalidArgument`](crate::MixError::InvalidArgument) `loss` or `losses`
    /// otherwise). Device labels are `u32`. Reads the logits once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec, DevicePlan};
    /// use mixup_kernels::{BceSpec, MixPlan, Reduction};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(2)?)?;
    /// let spec = DeviceBceSpec::new(&mixer, BceSpec::new(2, 0.0, Reduction::Mean)?)?;
    /// let (z, y) = (s.clone_htod(&vec![0.0f32; 4])?, s.clone_htod(&vec![0u32, 1])?);
    /// let mut loss = s.alloc_zeros::<f32>(1)?;
    /// mixer.mixup_bce_forward(&plan, &spec, &z.as_view(), &y.as_view(), Some(&mut loss.as_view_mut()), None)?;
    /// assert!((s.clone_dtoh(&loss)?[0] - std::f32::consts::LN_2).abs() < 1e-6);
    /// # Ok(())
    /// # }
    /// ```
    mixup_bce_forward;
    /// Loss and gradient in one launch: the gradient `v·((1 + (w − 1)t)·σ(z) − w·t) · scale`
    /// to `grad` (`[B, C]`), the reduced loss to `loss` (`[1]`; Mean and Sum only, an
    /// [`InvalidArgument`](crate::MixError::InvalidArgument) `loss` under None) and the
    /// per-sample losses to `losses` (`[B]`) if given. A backward pass that wants only the
    /// gradient passes `None` for both.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec, DevicePlan, DeviceGradOutput};
    /// use mixup_kernels::{reference, BceSpec, MixPlan, Reduction, GradOutput};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let host_plan = MixPlan::from_parts(&[1, 0], &[0.7, 0.7])?;
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&host_plan)?;
    /// let spec = BceSpec::new(3, 0.1, Reduction::Mean)?.with_target_threshold(0.2)?;
    /// let dspec = DeviceBceSpec::new(&mixer, spec.clone())?;
    /// let (logits, labels) = (vec![1.0f32, -1.0, 0.5, 0.0, 2.0, -0.5], vec![0u32, 2]);
    /// let (z, y) = (s.clone_htod(&logits)?, s.clone_htod(&labels)?);
    /// let (mut loss, mut grad) = (s.alloc_zeros::<f32>(1)?, s.alloc_zeros::<f32>(6)?);
    /// mixer.mixup_bce(&plan, &dspec, &z.as_view(), &y.as_view(), DeviceGradOutput::Scalar(1.0),
    ///     Some(&mut loss.as_view_mut()), None, &mut grad.as_view_mut())?;
    /// let want = reference::mixup_bce(&host_plan, &spec, &logits, &labels, GradOutput::Scalar(1.0))?;
    /// assert!((f64::from(s.clone_dtoh(&loss)?[0]) - want.loss.unwrap()).abs() < 1e-5);
    /// # Ok(())
    /// # }
    /// ```
    mixup_bce;
    /// Loss and gradient, the gradient written over the logits.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec, DevicePlan, DeviceGradOutput};
    /// use mixup_kernels::{bf16, BceSpec, MixPlan, Reduction};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(2)?)?;
    /// let spec = DeviceBceSpec::new(&mixer, BceSpec::new(2, 0.0, Reduction::Sum)?)?;
    /// let mut z = s.clone_htod(&vec![bf16::ZERO; 4])?;
    /// let y = s.clone_htod(&vec![0u32, 1])?;
    /// let mut loss = s.alloc_zeros::<f32>(1)?;
    /// mixer.mixup_bce_in_place(&plan, &spec, &mut z.as_view_mut(), &y.as_view(),
    ///     DeviceGradOutput::Scalar(1.0), Some(&mut loss.as_view_mut()), None)?;
    /// let grad: Vec<f32> = s.clone_dtoh(&z)?.into_iter().map(f32::from).collect();
    /// assert_eq!(grad, [-0.5, 0.5, 0.5, -0.5]); // σ(0) − t
    /// # Ok(())
    /// # }
    /// ```
    mixup_bce_in_place;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_152_bytes() {
        assert_eq!(std::mem::size_of::<BceArgs>(), 152);
    }

    #[test]
    fn strategy_by_classes() {
        use BceStrategy::*;
        let d = KernelTuning::default();
        let st = |c, s| bce_strategy(c, s, &d);
        assert_eq!(st(1, 4), Warp { group: 1 });
        assert_eq!(st(100, 4), Warp { group: 8 });
        assert_eq!(st(512, 4), Warp { group: 32 });
        assert_eq!(st(1000, 2), Warp { group: 32 });
        assert_eq!(st(1000, 4), Block { threads: 64 });
        assert_eq!(st(32_000, 2), Block { threads: 1024 });
        assert_eq!(st(1 << 24, 4), Block { threads: 1024 });
        let env = LaunchEnv {
            tuning: &d,
            sms: 132,
            smem_optin: 0,
        };
        let cfg = Warp { group: 8 }.launch_config(1000, &env);
        assert_eq!((cfg.grid_dim.0, cfg.block_dim.0), (32, 256));
        let cfg = Block { threads: 1024 }.launch_config(u64::MAX, &env);
        assert_eq!(cfg.grid_dim.0, (1u32 << 31) - 1);
        // Another tuning: 8 slots a thread, blocks of at most 256, 64-thread warp blocks, a grid
        // of at most one block per SM.
        let t = KernelTuning {
            bce_slots: 8,
            bce_block_max_threads: 256,
            bce_warp_threads: 64,
            grid_sm_multiple: 1,
            ..d
        };
        assert_eq!(bce_strategy(1000, 4, &t), Warp { group: 32 });
        assert_eq!(bce_strategy(1028, 4, &t), Block { threads: 64 });
        assert_eq!(bce_strategy(1 << 24, 4, &t), Block { threads: 256 });
        let env = LaunchEnv { tuning: &t, ..env };
        let cfg = Warp { group: 8 }.launch_config(1000, &env);
        assert_eq!((cfg.grid_dim.0, cfg.block_dim.0), (125, 64));
        let cfg = Block { threads: 256 }.launch_config(1000, &env);
        assert_eq!(cfg.grid_dim.0, 132);
    }
}
