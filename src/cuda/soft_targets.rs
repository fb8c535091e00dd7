//! Soft targets on the device: `kernels/soft_targets.cu` (`soft_targets_<dt>`).

use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};

use crate::config::TargetSpec;
use crate::dtype::{FloatElement, ScalarType};
use crate::error::{MixError, Result, Rows, check_rows};

use super::context::CudaMixer;
use super::entries::Kernel;
use super::mix::chunks_per_row;
use super::plan::DevicePlan;
use super::tuning::LaunchEnv;

/// Kernel arguments (`struct SoftArgs` in kernels/soft_targets.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct SoftArgs {
    pub out: u64,
    pub labels: u64,
    pub plan: u64,
    pub flags: u64,
    pub items: u64,
    pub classes: u64,
    pub chunks: u64,
    pub eps: f32,
    pub off: f32,
}

// SAFETY: repr(C), 64 bytes without padding, mirrored by the kernel's struct.
unsafe impl DeviceRepr for SoftArgs {}

pub(crate) fn require_float(dtype: ScalarType, what: &'static str) -> Result<()> {
    if dtype == ScalarType::U8 {
        return Err(MixError::InvalidArgument {
            what,
            reason: "must be f32, f16 or bf16".into(),
        });
    }
    Ok(())
}

/// The arguments and launch configuration of `soft_targets_<dt>` for a checked call of `b > 0`
/// rows, every address given, under `env`'s tuning. [`launch`] launches it; the host
/// emulation's cases (`kernels::emulated`) run it on the CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn soft_targets_call(
    spec: &TargetSpec,
    dtype: ScalarType,
    b: usize,
    labels: u64,
    out: u64,
    plan: u64,
    flags: u64,
    env: &LaunchEnv<'_>,
) -> Result<(SoftArgs, LaunchConfig)> {
    let c = spec.num_classes();
    let t = env.tuning;
    // A work item: SOFT_NT * SOFT_UNROLL slots of a row.
    let chunk_slots = u64::from(t.soft_threads) * u64::from(t.soft_unroll);
    let chunks = chunks_per_row(c as u64, dtype, chunk_slots);
    let args = SoftArgs {
        out,
        labels,
        plan,
        flags,
        items: (b as u64)
            .checked_mul(chunks)
            .ok_or(MixError::SizeOverflow {
                what: "soft-target work items",
            })?,
        classes: c as u64,
        chunks,
        eps: spec.smoothing_f32(),
        off: spec.off_f32(),
    };
    let cfg = LaunchConfig {
        grid_dim: (t.grid(args.items, env.sms), 1, 1),
        block_dim: (t.soft_threads, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((args, cfg))
}

/// Validates and launches the soft-target kernel on raw device addresses: the one launch
/// behind [`CudaMixer::soft_targets`] and [`super::raw::soft_targets`].
///
/// # Safety
/// `labels` addresses `plan.len()` u32 and `out` addresses `out_len` elements of `dtype`, on
/// the mixer's device.
pub(crate) unsafe fn launch(
    m: &CudaMixer,
    plan: &DevicePlan,
    spec: &TargetSpec,
    dtype: ScalarType,
    labels: u64,
    out: u64,
    out_len: usize,
) -> Result<()> {
    require_float(dtype, "out")?;
    crate::spec::check_targets(plan.plan(), spec)?;
    let b = plan.len();
    let c = spec.num_classes();
    check_rows("out", Rows::Classes, b, c, out_len)?;
    if b == 0 {
        return Ok(());
    }
    let (args, cfg) = soft_targets_call(
        spec,
        dtype,
        b,
        labels,
        out,
        plan.device_ptr_for(m)?,
        m.flags_ptr(),
        &m.launch_env(),
    )?;
    let what = "launching the soft-target kernel";
    // SAFETY: `args` is `SoftArgs`; addresses valid per the contract.
    unsafe { m.enqueue(Kernel::SoftTargets, dtype, &args, cfg, what) }
}

impl CudaMixer {
    /// Writes the soft targets `[B, C]` of the plan and the device labels `[B]`:
    /// `t = (1-ε)(λ [c = y_i] + (1-λ) [c = y_partner]) + ε/C`, weights adding when the two
    /// labels agree. A label `>= C` is counted, not read through: see
    /// [`check_labels`](CudaMixer::check_labels).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{bf16, MixPlan, TargetSpec};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.75, 0.75])?)?;
    /// let labels = s.clone_htod(&vec![0u32, 2])?;
    /// let mut t = s.alloc_zeros::<bf16>(2 * 3)?;
    /// mixer.soft_targets(&plan, &TargetSpec::new(3, 0.0)?, &labels.as_view(), &mut t.as_view_mut())?;
    /// let t: Vec<f32> = s.clone_dtoh(&t)?.into_iter().map(f32::from).collect();
    /// assert_eq!(t, [0.75, 0.0, 0.25, 0.25, 0.0, 0.75]);
    /// mixer.check_labels()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn soft_targets<T: FloatElement>(
        &self,
        plan: &DevicePlan,
        spec: &TargetSpec,
        labels: &CudaView<'_, u32>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        crate::spec::check_targets(plan.plan(), spec)?;
        plan.plan().check_batch("labels", labels.len())?;
        let n = out.len();
        let (lp, _rl) = labels.device_ptr(self.stream());
        let (op, _wo) = out.device_ptr_mut(self.stream());
        // SAFETY: `labels` holds B u32 (checked) and `out` holds `n` elements of T.
        unsafe { launch(self, plan, spec, T::DTYPE, lp, op, n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_64_bytes() {
        assert_eq!(std::mem::size_of::<SoftArgs>(), 64);
    }

    #[test]
    fn u8_targets_are_rejected() {
        assert!(matches!(
            require_float(ScalarType::U8, "out"),
            Err(MixError::InvalidArgument { what: "out", .. })
        ));
        assert!(require_float(ScalarType::BF16, "out").is_ok());
    }
}
