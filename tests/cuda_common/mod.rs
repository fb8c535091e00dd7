//! Helpers shared by the GPU tests (`tests/cuda_*.rs`).
//!
//! Without a GPU (or libcuda, or NVRTC) every GPU test prints `SKIPPED: no CUDA device (...)`
//! and passes; with `MIXUP_REQUIRE_GPU=1` (the GPU session sets it) it fails instead, so a
//! broken setup cannot pass silently.
#![allow(dead_code)]

use mixup_kernels::cuda::{
    CudaMixer, CudaMixerOptions, CudaSlice, CudaView, CudaViewMut, DeviceBceSpec, DeviceGradOutput,
    DevicePlan,
};
use mixup_kernels::{CeSpec, CutBox, Element, FloatElement, GradOutput, MixPlan, Reduction};
use rand::Rng;

// The one tolerance check and the one generator of the test suite.
#[path = "../common/mod.rs"]
mod common;
// Each GPU test binary uses some of these.
#[allow(unused_imports)]
pub use common::{
    FORMATS, SMALL_IMAGES, TestRng, Tol, assert_close, cut, image, layout, mix_layouts, norm_for,
    norm_tol,
};

/// The test mixer, or `None` (after printing why) when there is no usable GPU.
pub fn mixer(test: &str) -> Option<CudaMixer> {
    let opts = CudaMixerOptions {
        // A per-run cache folder: tests must not depend on what an earlier build left.
        cache_dir: Some(
            std::env::temp_dir().join(format!("mixup-kernels-test-{}", std::process::id())),
        ),
        // Line info for compute-sanitizer reports.
        nvrtc_options: vec!["-lineinfo".into()],
        ..CudaMixerOptions::default()
    };
    match CudaMixer::new(0) {
        Ok(m) => Some(m.with_options(opts).expect("the default tuning is valid")),
        Err(e) => {
            if std::env::var("MIXUP_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("MIXUP_REQUIRE_GPU=1 but no usable GPU: {e}");
            }
            skipped(&format!("no CUDA device ({e})"), test);
            None
        }
    }
}

/// One `#[test]` per element type, each running `$check::<T>(&mixer, seed)` on the test GPU
/// (skipped without one): `gpu_dtype_tests!(check_dtype: mix_f32 => f32, 1; ...)`.
#[macro_export]
macro_rules! gpu_dtype_tests {
    ($check:ident: $($name:ident => $t:ty, $seed:expr;)+) => {$(
        #[test]
        fn $name() {
            if let Some(m) = $crate::cuda_common::mixer(stringify!($name)) {
                $check::<$t>(&m, $seed);
            }
        }
    )+};
}

/// Says on the terminal that `test` was skipped, and why (the reason once per test binary).
///
/// Written to the process's stderr directly: libtest captures `println!`/`eprintln!` of a
/// passing test, and a skip must be visible in the CI log without `--nocapture`.
pub fn skipped(reason: &str, test: &str) {
    use std::io::Write;
    static REASON: std::sync::Once = std::sync::Once::new();
    let mut err = std::io::stderr().lock();
    REASON.call_once(|| {
        let _ = writeln!(
            err,
            "SKIPPED: {reason}; the GPU tests below pass without running"
        );
    });
    let _ = writeln!(err, "SKIPPED: {test}");
}

pub fn rng(seed: u64) -> TestRng {
    TestRng::new(seed)
}

/// Random values of T: floats in [-4, 4) (never zeros), u8 uniform.
pub fn random<T: Element>(rng: &mut TestRng, n: usize) -> Vec<T> {
    (0..n)
        .map(|_| {
            if T::DTYPE == mixup_kernels::ScalarType::U8 {
                T::from_f32(rng.random_range(0..256u32) as f32)
            } else {
                T::from_f32(rng.random_range(-4.0f32..4.0))
            }
        })
        .collect()
}

/// A random permutation of 0..n.
pub fn permutation(rng: &mut TestRng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.random_range(0..=i));
    }
    p
}

/// Random pairs (an involution; an odd batch leaves one sample with itself).
pub fn pairs(rng: &mut TestRng, n: usize) -> Vec<usize> {
    let order = permutation(rng, n);
    let mut p: Vec<usize> = (0..n).collect();
    for c in order.chunks(2) {
        if let [a, b] = *c {
            p[a] = b;
            p[b] = a;
        }
    }
    p
}

pub fn lams(rng: &mut TestRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i % 7 == 3 {
                1.0
            } else {
                rng.random_range(0.0f32..1.0)
            }
        })
        .collect()
}

/// A plan with CutMix boxes on about half the samples (some empty or full-image boxes).
pub fn cutmix_plan(rng: &mut TestRng, partner: &[usize], h: usize, w: usize) -> MixPlan {
    let n = partner.len();
    let lam = lams(rng, n);
    let boxes: Vec<Option<CutBox>> = (0..n)
        .map(|i| match i % 4 {
            0 => None,
            1 => Some(cut(0..h as u32, 0..w as u32)),
            2 if i % 8 == 2 => Some(cut(1..1, 0..w as u32)),
            _ => {
                let y0 = rng.random_range(0..h as u32);
                let x0 = rng.random_range(0..w as u32);
                Some(CutBox {
                    y0,
                    y1: rng.random_range(y0..=h as u32),
                    x0,
                    x1: rng.random_range(x0..=w as u32),
                })
            }
        })
        .collect();
    MixPlan::with_boxes(partner, &lam, &boxes, image(h, w)).unwrap()
}

/// Uploads `data` into a fresh allocation of `data.len() + offset` elements and returns it;
/// the data starts at element `offset` (so views can sit at odd addresses).
pub fn upload_at<T: cudarc_repr::Repr>(
    m: &CudaMixer,
    data: &[T],
    offset: usize,
    fill: T,
) -> CudaSlice<T> {
    let mut host = vec![fill; offset];
    host.extend_from_slice(data);
    host.push(fill);
    m.stream().clone_htod(&host).unwrap()
}

pub fn view<T>(s: &CudaSlice<T>, offset: usize, len: usize) -> CudaView<'_, T> {
    s.slice(offset..offset + len)
}

pub fn view_mut<T>(s: &mut CudaSlice<T>, offset: usize, len: usize) -> CudaViewMut<'_, T> {
    s.slice_mut(offset..offset + len)
}

pub fn download<T: cudarc_repr::Repr>(m: &CudaMixer, s: &CudaSlice<T>) -> Vec<T> {
    m.stream().clone_dtoh(s).unwrap()
}

/// Checks that a kernel wrote nothing around the `n` elements at `off` of `buf` (a download of
/// an [`upload_at`] buffer filled with 3.0) and returns those elements widened.
pub fn inner_checked<T: Element>(what: &str, buf: &[T], off: usize, n: usize) -> Vec<f64> {
    assert!(
        buf[..off].iter().all(|v| v.to_f32() == 3.0),
        "{what}: wrote before grad"
    );
    assert_eq!(buf[off + n].to_f32(), 3.0, "{what}: wrote after grad");
    widen(&buf[off..off + n])
}

/// The upstream gradients the loss tests give, one kind per reduction (Mean: the host scalar
/// 1, Sum: a device scalar 0.5, None: a device value per sample), with the host
/// [`GradOutput`] that means the same to the reference.
pub struct Upstream {
    pub per_sample: Vec<f32>,
    scalar: CudaSlice<f32>,
    rows: CudaSlice<f32>,
}

impl Upstream {
    /// Draws the per-sample values (in [0.25, 2)) of a batch of `b` and uploads them.
    pub fn new(m: &CudaMixer, r: &mut TestRng, b: usize) -> Self {
        let per_sample: Vec<f32> = (0..b).map(|_| r.random_range(0.25f32..2.0)).collect();
        let scalar = m.stream().clone_htod(&[0.5f32]).unwrap();
        let rows = m.stream().clone_htod(&per_sample).unwrap();
        Self {
            per_sample,
            scalar,
            rows,
        }
    }

    /// The device grad_output for `reduction`, and the host one the reference gets.
    pub fn grad_outputs(&self, reduction: Reduction) -> (DeviceGradOutput<'_>, GradOutput<'_>) {
        match reduction {
            Reduction::Mean => (DeviceGradOutput::Scalar(1.0), GradOutput::Scalar(1.0)),
            Reduction::Sum => (
                DeviceGradOutput::Device(self.scalar.as_view()),
                GradOutput::Scalar(0.5),
            ),
            Reduction::None => (
                DeviceGradOutput::PerSample(self.rows.as_view()),
                GradOutput::PerSample(&self.per_sample),
            ),
        }
    }
}

/// A random loss problem on the device: `b` samples × `k` classes of logits, labels, and an
/// uploaded plan of random pairs.
pub struct LossProblem<T> {
    pub z: Vec<T>,
    pub labels: Vec<u32>,
    pub plan: MixPlan,
    pub dplan: DevicePlan,
    pub zs: CudaSlice<T>,
    pub ls: CudaSlice<u32>,
}

/// Random logits (`b` × `k`, see [`random`]) and labels (in 0..k) of a loss test.
pub fn logits_and_labels<T: Element>(r: &mut TestRng, b: usize, k: usize) -> (Vec<T>, Vec<u32>) {
    let z: Vec<T> = random(r, b * k);
    let labels: Vec<u32> = (0..b).map(|_| r.random_range(0..k as u32)).collect();
    (z, labels)
}

impl<T: Element + cudarc_repr::Repr> LossProblem<T> {
    pub fn new(m: &CudaMixer, r: &mut TestRng, b: usize, k: usize) -> Self {
        let (z, labels) = logits_and_labels(r, b, k);
        let plan = MixPlan::from_parts(&pairs(r, b), &lams(r, b)).unwrap();
        let mut dplan = DevicePlan::new(m);
        dplan.upload(&plan).unwrap();
        let zs = m.stream().clone_htod(&z).unwrap();
        let ls = m.stream().clone_htod(&labels).unwrap();
        Self {
            z,
            labels,
            plan,
            dplan,
            zs,
            ls,
        }
    }
}

/// One of the two device losses, so that what the CE and BCE tests do alike is written once.
#[derive(Clone, Copy)]
pub enum DeviceLoss<'a> {
    Ce(&'a CeSpec),
    Bce(&'a DeviceBceSpec),
}

/// Calls the `CudaMixer` method of the loss `$loss` holds (`$ce` for CE, `$bce` for BCE: the
/// plain, `_in_place` or `_forward` variant) with the plan, the spec, then `$args`.
macro_rules! call_loss {
    ($m:expr, $loss:expr, $ce:ident | $bce:ident, $plan:expr; $($args:expr),* $(,)?) => {
        match $loss {
            DeviceLoss::Ce(spec) => $m.$ce($plan, spec, $($args),*),
            DeviceLoss::Bce(spec) => $m.$bce($plan, spec, $($args),*),
        }
    };
}

/// How a sweep case launches a loss: under `reduction`, the logits at element `logits_off`
/// of their allocation, the gradient at `grad_off` of its own, or into the logits when
/// `in_place`.
#[derive(Clone, Copy)]
pub struct Launch {
    pub reduction: Reduction,
    pub logits_off: usize,
    pub grad_off: usize,
    pub in_place: bool,
}

impl Launch {
    /// The plain launch: Mean, no offsets, out of place.
    pub const MEAN: Launch = Launch {
        reduction: Reduction::Mean,
        logits_off: 0,
        grad_off: 0,
        in_place: false,
    };
}

/// Launches `loss` as the sweep tests do: host logits `z` and `labels` uploaded, the
/// outputs pre-filled (gradient -9 between guards of 3, losses 5) and the reduced loss asked
/// for only where it exists (not under Reduction::None, as PyTorch). Checks the labels and that
/// nothing was written around an out-of-place gradient; returns the reduced loss and the
/// per-sample losses (see [`check_losses`]) and the gradient, widened.
pub fn launch_case<T: FloatElement + cudarc_repr::Repr>(
    m: &CudaMixer,
    dplan: &DevicePlan,
    kernel: DeviceLoss<'_>,
    what: &str,
    (z, labels): (&[T], &[u32]),
    grad_output: DeviceGradOutput<'_>,
    at: Launch,
) -> ((f64, Vec<f64>), Vec<f64>) {
    let (b, n) = (labels.len(), z.len());
    let mut zs = upload_at(m, z, at.logits_off, T::from_f32(1.0));
    let ls = m.stream().clone_htod(labels).unwrap();
    let mut grad = upload_at(
        m,
        &vec![T::from_f32(-9.0); n],
        at.grad_off,
        T::from_f32(3.0),
    );
    let mut loss = m.stream().clone_htod(&[5.0f32]).unwrap();
    let mut losses = m.stream().clone_htod(&vec![5.0f32; b.max(1)]).unwrap();
    let result = {
        let (mut loss_view, mut losses_view) = (loss.as_view_mut(), losses.slice_mut(0..b));
        // Reduction::None has no reduced loss (as PyTorch): its slot must stay untouched.
        let loss_out = (at.reduction != Reduction::None).then_some(&mut loss_view);
        let (labels, losses_out) = (&ls.as_view(), Some(&mut losses_view));
        if at.in_place {
            let logits = &mut view_mut(&mut zs, at.logits_off, n);
            call_loss!(m, kernel, mixup_ce_in_place | mixup_bce_in_place, dplan;
                logits, labels, grad_output, loss_out, losses_out)
        } else {
            let logits = &view(&zs, at.logits_off, n);
            let grad = &mut view_mut(&mut grad, at.grad_off, n);
            call_loss!(m, kernel, mixup_ce | mixup_bce, dplan;
                logits, labels, grad_output, loss_out, losses_out, grad)
        }
    };
    result.unwrap_or_else(|e| panic!("{what}: {e}"));
    m.check_labels().unwrap();
    let got = download_losses(m, &loss, &losses, b);
    let got_grad = if at.in_place {
        widen(&download(m, &zs)[at.logits_off..at.logits_off + n])
    } else {
        inner_checked(what, &download(m, &grad), at.grad_off, n)
    };
    (got, got_grad)
}

/// What one launch of a loss kernel wrote: the reduced loss's bits, the per-sample losses and
/// the gradient.
pub type LossRun<T> = (u32, Vec<f32>, Vec<T>);

/// Launches `kernel`'s loss on `p` twice (grad_output 1, into fresh zeroed outputs) and returns
/// what each launch wrote, for the determinism checks.
pub fn launch_twice<T: FloatElement + cudarc_repr::Repr>(
    m: &CudaMixer,
    p: &LossProblem<T>,
    kernel: DeviceLoss<'_>,
) -> [LossRun<T>; 2] {
    let (b, n) = (p.labels.len(), p.z.len());
    [(); 2].map(|_| {
        let mut grad = m.stream().clone_htod(&vec![T::default(); n]).unwrap();
        let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
        let mut losses = m.stream().alloc_zeros::<f32>(b).unwrap();
        {
            let (mut loss_view, mut losses_view) = (loss.as_view_mut(), losses.as_view_mut());
            call_loss!(m, kernel, mixup_ce | mixup_bce, &p.dplan;
                &p.zs.as_view(), &p.ls.as_view(), DeviceGradOutput::Scalar(1.0),
                Some(&mut loss_view), Some(&mut losses_view), &mut grad.as_view_mut())
            .unwrap();
        }
        (
            m.stream().clone_dtoh(&loss).unwrap()[0].to_bits(),
            m.stream().clone_dtoh(&losses).unwrap(),
            m.stream().clone_dtoh(&grad).unwrap(),
        )
    })
}

/// Launches `kernel`'s forward-only loss on `p`; returns the reduced loss's bits and the
/// per-sample losses.
pub fn launch_forward<T: FloatElement + cudarc_repr::Repr>(
    m: &CudaMixer,
    p: &LossProblem<T>,
    kernel: DeviceLoss<'_>,
) -> (u32, Vec<f32>) {
    let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
    let mut losses = m.stream().alloc_zeros::<f32>(p.labels.len()).unwrap();
    {
        let (mut loss_view, mut losses_view) = (loss.as_view_mut(), losses.as_view_mut());
        call_loss!(m, kernel, mixup_ce_forward | mixup_bce_forward, &p.dplan;
            &p.zs.as_view(), &p.ls.as_view(), Some(&mut loss_view), Some(&mut losses_view))
        .unwrap();
    }
    (
        m.stream().clone_dtoh(&loss).unwrap()[0].to_bits(),
        m.stream().clone_dtoh(&losses).unwrap(),
    )
}

/// Downloads the reduced loss and the first `b` per-sample losses, widened.
pub fn download_losses(
    m: &CudaMixer,
    loss: &CudaSlice<f32>,
    losses: &CudaSlice<f32>,
    b: usize,
) -> (f64, Vec<f64>) {
    let got_loss = m.stream().clone_dtoh(loss).unwrap()[0] as f64;
    let got_losses = m.stream().clone_dtoh(losses).unwrap()[..b]
        .iter()
        .map(|&v| v as f64)
        .collect();
    (got_loss, got_losses)
}

/// Checks the per-sample losses (within `row_tol`) and the reduced loss (within `sum_tol`)
/// against the reference. Reduction::None has no reduced loss (as PyTorch): `want_loss` is
/// `None` and the slot must still hold the 5.0 the tests fill it with.
pub fn check_losses(
    what: &str,
    (got_loss, got_losses): (f64, Vec<f64>),
    (want_loss, want_losses): (Option<f64>, &[f64]),
    row_tol: Tol,
    sum_tol: Tol,
) {
    assert_close(&format!("{what} losses"), &got_losses, want_losses, row_tol);
    match want_loss {
        Some(w) => assert_close(&format!("{what} loss"), &[got_loss], &[w], sum_tol),
        None => assert_eq!(
            got_loss, 5.0,
            "{what}: Reduction::None wrote a reduced loss"
        ),
    }
}

/// Checks every element of a `[B, k]` gradient against the reference, element (i, j) within
/// `tol(i, idx)` (row i, flat index idx).
pub fn check_grad(
    what: &str,
    got: &[f64],
    want: &[f64],
    k: usize,
    tol: impl Fn(usize, usize) -> f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: gradient length");
    for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (i, j) = (idx / k, idx % k);
        let tol = tol(i, idx);
        assert!(
            (g - w).abs() <= tol,
            "{what} grad[{i}][{j}]: got {g}, want {w} (tol {tol})"
        );
    }
}

/// What the final rounding of an f32 result to T may add: half an ulp of T relative to
/// `want` (2e-7 stands for f32's), plus T's smallest subnormal.
pub fn rounding_tol<T: Element>(want: f64) -> f64 {
    let out = match T::DTYPE.name() {
        "f32" => 2e-7,
        "f16" => 1.0 / 1024.0,
        _ => 1.0 / 128.0,
    };
    let sub = if T::DTYPE.name() == "f16" {
        6e-8
    } else {
        1e-30
    };
    out * want.abs() + sub
}

/// The loss tests' sweep over shapes and reductions: `(n, k, b, i, reduction)` for each class
/// count `k` (the n-th of `classes`), batches 1, 3 and, up to `small_k` classes, 64, and each
/// reduction (the i-th of Mean, Sum, None).
pub fn loss_sweep(
    classes: &[usize],
    small_k: usize,
) -> Vec<(usize, usize, usize, usize, Reduction)> {
    let mut out = Vec::new();
    for (n, &k) in classes.iter().enumerate() {
        let batches: &[usize] = if k <= small_k { &[1, 3, 64] } else { &[1, 3] };
        for &b in batches {
            for (i, reduction) in [Reduction::Mean, Reduction::Sum, Reduction::None]
                .into_iter()
                .enumerate()
            {
                out.push((n, k, b, i, reduction));
            }
        }
    }
    out
}

/// Large batches (batch, classes) where the loss kernels' warp and block paths pack many rows.
pub const LARGE_BATCHES: [(usize, usize); 3] = [(4096, 10), (4096, 1000), (1000, 3)];

/// The types the tests move to and from the device.
pub mod cudarc_repr {
    pub trait Repr: mixup_kernels::cuda::cudarc::driver::DeviceRepr + Copy + Default {}
    impl<T: mixup_kernels::cuda::cudarc::driver::DeviceRepr + Copy + Default> Repr for T {}
}

pub fn widen<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// Bits of an element, for exact comparisons.
pub fn bits<T: Element>(v: T) -> u32 {
    match T::DTYPE {
        mixup_kernels::ScalarType::U8 => v.to_f32() as u32,
        mixup_kernels::ScalarType::F32 => v.to_f32().to_bits(),
        // f16/bf16 round-trip exactly through f32, so the f32 bits identify the value.
        _ => v.to_f32().to_bits(),
    }
}
#[allow(unused_imports)]
pub use common::in_box as in_box_of;
