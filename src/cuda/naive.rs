//! Unfused baselines (`kernels/naive.cu`), for the benchmark: the same operations written the
//! way a first port (or PyTorch eager) computes them, one launch per step and every
//! intermediate in device memory. Not for training: use [`CudaMixer`]'s methods.
//!
//! - mix: gather `tmp[i] = x[partner(i)]`, lerp (CutMix samples copy `x`), paste the boxes.
//! - soft targets: two f32 one-hot tensors, then a blend.
//! - mixup CE: soft targets as above (f32), log-softmax, per-row loss, reduction, gradient.
//!
//! # Examples
//!
//! ```
//! use mixup_kernels::cuda::{naive, CudaMixer, DevicePlan};
//! use mixup_kernels::{Layout, MixPlan};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let Ok(mixer) = CudaMixer::new(0) else { return Ok(()) }; // no GPU here: nothing to run
//! let s = mixer.stream();
//! let mut plan = DevicePlan::new(&mixer);
//! plan.upload(&MixPlan::from_parts(&[1, 0], &[0.75, 0.75])?)?;
//! let x = s.clone_htod(&vec![4.0f32, 0.0])?;
//! let (mut tmp, mut out, mut fused) = (s.alloc_zeros::<f32>(2)?, s.alloc_zeros::<f32>(2)?, s.alloc_zeros::<f32>(2)?);
//! naive::mix(&mixer, &plan, &Layout::Rows(1), &x.as_view(), &mut tmp.as_view_mut(), &mut out.as_view_mut())?;
//! mixer.mix(&plan, &Layout::Rows(1), &x.as_view(), &mut fused.as_view_mut())?;
//! assert_eq!(s.clone_dtoh(&out)?, s.clone_dtoh(&fused)?); // same result, more launches
//! # Ok(())
//! # }
//! ```

use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

use crate::config::TargetSpec;
use crate::dtype::{DType, Element, FloatElement};
use crate::error::{check_len, checked_product, MixError, Result};
use crate::spec::{check_ce, check_mix, CeSpec, Layout, Reduction, Upstream};

use super::context::{driver_err, CudaMixer};
use super::entries::Kernel;
use super::mix::MAX_GRID;
use super::plan::DevicePlan;

fn elementwise(n: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_row(rows: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Scratch tensors of the naive soft targets and cross-entropy (all f32, `[B, C]` or `[B]`).
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{naive::NaiveBuffers, CudaMixer};
/// if let Ok(mixer) = CudaMixer::new(0) {
///     let _scratch = NaiveBuffers::new(&mixer, 256, 1000).unwrap(); // five f32 buffers
/// }
/// ```
pub struct NaiveBuffers {
    y1: CudaSlice<f32>,
    y2: CudaSlice<f32>,
    t: CudaSlice<f32>,
    logp: CudaSlice<f32>,
    losses: CudaSlice<f32>,
}

impl NaiveBuffers {
    /// Allocates the scratch for `batch` rows of `classes`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::{naive::NaiveBuffers, CudaMixer};
    /// use mixup_kernels::MixError;
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     let too_big = NaiveBuffers::new(&mixer, usize::MAX, 2);
    ///     assert!(matches!(too_big, Err(MixError::SizeOverflow { .. })));
    /// }
    /// ```
    pub fn new(mixer: &CudaMixer, batch: usize, classes: usize) -> Result<Self> {
        let n = checked_product("batch × classes", &[batch, classes])?.max(1);
        let s = mixer.stream();
        let alloc = |len: usize| {
            s.alloc_zeros::<f32>(len)
                .map_err(driver_err("allocating naive scratch"))
        };
        Ok(Self {
            y1: alloc(n)?,
            y2: alloc(n)?,
            t: alloc(n)?,
            logp: alloc(n)?,
            losses: alloc(batch.max(1))?,
        })
    }
}

/// Gather, lerp and paste: three launches (two for [`Layout::Rows`]). `tmp` is scratch of the
/// size of `x`.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{naive, CudaMixer, DevicePlan};
/// use mixup_kernels::{Layout, MixPlan};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let Ok(mixer) = CudaMixer::new(0) else { return Ok(()) }; // no GPU here: nothing to run
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.75, 0.75])?)?;
/// let x = s.clone_htod(&vec![4.0f32, 0.0])?;
/// let (mut tmp, mut out) = (s.alloc_zeros::<f32>(2)?, s.alloc_zeros::<f32>(2)?);
/// naive::mix(&mixer, &plan, &Layout::Rows(1), &x.as_view(), &mut tmp.as_view_mut(), &mut out.as_view_mut())?;
/// assert_eq!(s.clone_dtoh(&out)?, [3.0, 1.0]);
/// # Ok(())
/// # }
/// ```
pub fn mix<T: Element>(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    layout: &Layout,
    x: &CudaView<'_, T>,
    tmp: &mut CudaViewMut<'_, T>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    let d = check_mix(plan.plan(), layout, x.len(), "x")? as u64;
    check_len("out", x.len(), out.len())?;
    check_len("tmp", x.len(), tmp.len())?;
    let n = x.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let s = mixer.stream();
    let pp = plan.device_ptr_for(mixer)?;
    let (xp, _a) = x.device_ptr(s);
    let (tp, _b) = tmp.device_ptr_mut(s);
    let (op, _c) = out.device_ptr_mut(s);
    // The fused kernels' argument checks (an image sample is indexed in 32 bits on the
    // device), so the dimensions below fit their u32 kernel parameters.
    let a = super::mix::mix_args(layout, T::DTYPE, plan.len(), plan.len())?;
    let (layout_code, c, h, w) = (a.layout, a.channels, a.height, a.width);
    let image = u32::from(layout_code != 0);
    let gather = mixer.function(Kernel::NaiveGather, T::DTYPE)?;
    let lerp = mixer.function(Kernel::NaiveLerp, T::DTYPE)?;
    // SAFETY: argument lists match kernels/naive.cu; buffers hold n elements each.
    unsafe {
        s.launch_builder(&gather)
            .arg(&xp)
            .arg(&tp)
            .arg(&pp)
            .arg(&d)
            .arg(&n)
            .launch(elementwise(n))
            .map_err(driver_err("launching naive gather"))?;
        s.launch_builder(&lerp)
            .arg(&xp)
            .arg(&tp)
            .arg(&op)
            .arg(&pp)
            .arg(&d)
            .arg(&n)
            .arg(&image)
            .launch(elementwise(n))
            .map_err(driver_err("launching naive lerp"))?;
        if image != 0 && plan.plan().has_cutmix() {
            let paste = mixer.function(Kernel::NaivePaste, T::DTYPE)?;
            s.launch_builder(&paste)
                .arg(&tp)
                .arg(&op)
                .arg(&pp)
                .arg(&d)
                .arg(&n)
                .arg(&layout_code)
                .arg(&c)
                .arg(&h)
                .arg(&w)
                .launch(elementwise(n))
                .map_err(driver_err("launching naive paste"))?;
        }
    }
    Ok(())
}

/// One-hot of the labels and of the partners' labels (f32, in `bufs`), then `out = λ y1 + (1-λ) y2`.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{naive, CudaMixer, DevicePlan};
/// use mixup_kernels::{MixPlan, TargetSpec};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let Ok(mixer) = CudaMixer::new(0) else { return Ok(()) }; // no GPU here: nothing to run
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.75, 0.75])?)?;
/// let labels = s.clone_htod(&vec![0u32, 2])?;
/// let mut bufs = naive::NaiveBuffers::new(&mixer, 2, 3)?;
/// let mut t = s.alloc_zeros::<f32>(6)?;
/// naive::soft_targets(&mixer, &plan, &labels.as_view(), &TargetSpec::new(3, 0.0)?, &mut bufs, &mut t.as_view_mut())?;
/// assert_eq!(s.clone_dtoh(&t)?, [0.75, 0.0, 0.25, 0.25, 0.0, 0.75]);
/// # Ok(())
/// # }
/// ```
pub fn soft_targets<T: FloatElement>(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    labels: &CudaView<'_, u32>,
    spec: &TargetSpec,
    bufs: &mut NaiveBuffers,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    spec.validate()?;
    plan.plan().check_batch(labels.len())?;
    let n = checked_product("batch × classes", &[plan.len(), spec.num_classes])?;
    check_len("out", n, out.len())?;
    if bufs.y1.len() < n || bufs.losses.len() < plan.len() {
        return Err(MixError::InvalidArgument {
            what: "bufs",
            reason: "the naive buffers were made for a smaller batch".into(),
        });
    }
    let s = mixer.stream();
    let (op, _o) = out.device_ptr_mut(s);
    one_hots(mixer, plan, labels, spec, bufs)?;
    let blend = mixer.function(Kernel::NaiveBlend, T::DTYPE)?;
    let (y1, _a) = bufs.y1.device_ptr(s);
    let (y2, _b) = bufs.y2.device_ptr(s);
    let pp = plan.device_ptr_for(mixer)?;
    let (c, n) = (spec.num_classes as u64, n as u64);
    // SAFETY: as above.
    unsafe {
        s.launch_builder(&blend)
            .arg(&y1)
            .arg(&y2)
            .arg(&op)
            .arg(&pp)
            .arg(&c)
            .arg(&n)
            .launch(elementwise(n))
            .map_err(driver_err("launching naive blend"))?;
    }
    Ok(())
}

fn one_hots(
    mixer: &CudaMixer,
    plan: &DevicePlan,
    labels: &CudaView<'_, u32>,
    spec: &TargetSpec,
    bufs: &mut NaiveBuffers,
) -> Result<()> {
    let s = mixer.stream();
    let f = mixer.function(Kernel::NaiveOneHot, DType::F32)?;
    let (lp, _l) = labels.device_ptr(s);
    let pp = plan.device_ptr_for(mixer)?;
    let c = spec.num_classes as u64;
    let n = plan.len() as u64 * c;
    let off = spec.off_value();
    let on = 1.0 - spec.smoothing + off;
    for (buf, partner) in [(&mut bufs.y1, 0u32), (&mut bufs.y2, 1u32)] {
        let (yp, _y) = buf.device_ptr_mut(s);
        // SAFETY: as above.
        unsafe {
            s.launch_builder(&f)
                .arg(&yp)
                .arg(&lp)
                .arg(&pp)
                .arg(&c)
                .arg(&n)
                .arg(&off)
                .arg(&on)
                .arg(&partner)
                .launch(elementwise(n))
                .map_err(driver_err("launching naive one-hot"))?;
        }
    }
    Ok(())
}

/// Soft targets, log-softmax, per-row loss, reduction, gradient: seven launches. Mean or Sum
/// reduction, upstream 1.
///
/// # Examples
///
/// ```
/// use mixup_kernels::cuda::{naive, CudaMixer, DevicePlan};
/// use mixup_kernels::{CeSpec, MixPlan, Reduction};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let Ok(mixer) = CudaMixer::new(0) else { return Ok(()) }; // no GPU here: nothing to run
/// let s = mixer.stream();
/// let mut plan = DevicePlan::new(&mixer);
/// plan.upload(&MixPlan::identity(2)?)?;
/// let (z, y) = (s.clone_htod(&vec![0.0f32; 4])?, s.clone_htod(&vec![0u32, 1])?);
/// let mut bufs = naive::NaiveBuffers::new(&mixer, 2, 2)?;
/// let (mut loss, mut grad) = (s.alloc_zeros::<f32>(1)?, s.alloc_zeros::<f32>(4)?);
/// let spec = CeSpec::new(2, 0.0, Reduction::Mean);
/// naive::mixup_ce(&mixer, &plan, &spec, &z.as_view(), &y.as_view(), &mut bufs,
///     &mut loss.as_view_mut(), &mut grad.as_view_mut())?;
/// assert!((s.clone_dtoh(&loss)?[0] - std::f32::consts::LN_2).abs() < 1e-5);
/// # Ok(())
/// # }
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
    check_ce(plan.plan(), spec, logits.len(), &Upstream::Scalar(1.0))?;
    plan.plan().check_batch(labels.len())?;
    check_len("grad", logits.len(), grad.len())?;
    check_len("loss", 1, loss.len())?;
    if spec.reduction == Reduction::None {
        return Err(MixError::Unsupported(
            "the naive baseline implements Mean and Sum only".into(),
        ));
    }
    let n = plan.len() * spec.targets.num_classes; // no overflow: checked by `check_ce`
    if bufs.y1.len() < n || bufs.losses.len() < plan.len() {
        return Err(MixError::InvalidArgument {
            what: "bufs",
            reason: "the naive buffers were made for a smaller batch".into(),
        });
    }
    let s = mixer.stream();
    if plan.is_empty() {
        // Sum over no sample (Mean was rejected by `check_ce`): 0, as the fused kernel writes.
        let (lossp, _ls) = loss.device_ptr_mut(s);
        // SAFETY: `lossp` addresses the one f32 of `loss`.
        unsafe { cudarc::driver::result::memset_d8_async(lossp, 0, 4, s.cu_stream()) }
            .map_err(driver_err("writing the loss"))?;
        return Ok(());
    }
    let dt = T::DTYPE;
    let (b, c) = (plan.len() as u64, spec.targets.num_classes as u64);
    let n = b * c;
    // Soft targets in f32: one-hot twice, blend into `t`.
    one_hots(mixer, plan, labels, &spec.targets, bufs)?;
    let blend = mixer.function(Kernel::NaiveBlend, DType::F32)?;
    let (lp, _l) = logits.device_ptr(s);
    let (gp, _g) = grad.device_ptr_mut(s);
    let (lossp, _ls) = loss.device_ptr_mut(s);
    let (y1, _a) = bufs.y1.device_ptr(s);
    let (y2, _b) = bufs.y2.device_ptr(s);
    let (tp, _t) = bufs.t.device_ptr_mut(s);
    let (logp, _p) = bufs.logp.device_ptr_mut(s);
    let (losses, _r) = bufs.losses.device_ptr_mut(s);
    let pp = plan.device_ptr_for(mixer)?;
    let log_softmax = mixer.function(Kernel::NaiveLogSoftmax, dt)?;
    let row_loss = mixer.function(Kernel::NaiveRowLoss, dt)?;
    let reduce = mixer.function(Kernel::NaiveReduce, dt)?;
    let gradk = mixer.function(Kernel::NaiveGrad, dt)?;
    let mean = u32::from(spec.reduction == Reduction::Mean);
    let scale = spec.reduction.grad_factor(plan.len());
    // SAFETY: argument lists match kernels/naive.cu; buffers hold B·C (or B) elements.
    unsafe {
        s.launch_builder(&blend)
            .arg(&y1)
            .arg(&y2)
            .arg(&tp)
            .arg(&pp)
            .arg(&c)
            .arg(&n)
            .launch(elementwise(n))
            .map_err(driver_err("launching naive blend"))?;
        s.launch_builder(&log_softmax)
            .arg(&lp)
            .arg(&logp)
            .arg(&c)
            .arg(&b)
            .launch(per_row(b))
            .map_err(driver_err("launching naive log-softmax"))?;
        s.launch_builder(&row_loss)
            .arg(&logp)
            .arg(&tp)
            .arg(&losses)
            .arg(&c)
            .arg(&b)
            .launch(per_row(b))
            .map_err(driver_err("launching naive row loss"))?;
        s.launch_builder(&reduce)
            .arg(&losses)
            .arg(&lossp)
            .arg(&b)
            .arg(&mean)
            .launch(LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            })
            .map_err(driver_err("launching naive reduce"))?;
        s.launch_builder(&gradk)
            .arg(&logp)
            .arg(&tp)
            .arg(&gp)
            .arg(&scale)
            .arg(&n)
            .launch(elementwise(n))
            .map_err(driver_err("launching naive gradient"))?;
    }
    Ok(())
}
