//! GPU mixup cross-entropy against the f64 reference: every float dtype, C from 1 to 256 000
//! (every row strategy: warp, block, block + shared memory, online), batch 1 to 4096, every
//! reduction and grad_output kind, views at odd offsets (misaligned rows, gradient rows at another
//! alignment than the logits), in place vs out of place, forward only, determinism of the
//! reduced loss, device labels out of range, and the benchmark's shapes.
//! Prints SKIPPED without a GPU (see tests/cuda_common).
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use mixup_kernels::cuda::{CudaMixer, CudaSlice, DeviceGradOutput, DevicePlan};
use mixup_kernels::{
    CeSpec, FloatElement, GradOutput, MixError, MixPlan, Reduction, bf16, f16, reference,
};

struct Case {
    batch: usize,
    classes: usize,
    eps: f64,
    at: Launch,
}

impl Case {
    fn new(batch: usize, classes: usize, eps: f64, at: Launch) -> Self {
        Self {
            batch,
            classes,
            eps,
            at,
        }
    }
}

/// Tolerance of one gradient element: the error of p = softmax (relative, from exp2/log2 in
/// f32) and the final rounding to T.
fn grad_tol<T: FloatElement>(scale: f64, p: f64, want: f64) -> f64 {
    scale.abs() * (1e-4 * p + 1e-7) + rounding_tol::<T>(want)
}

fn run_case<T: FloatElement + cudarc_repr::Repr>(
    m: &CudaMixer,
    dplan: &mut DevicePlan,
    r: &mut TestRng,
    c: &Case,
) {
    let (b, k) = (c.batch, c.classes);
    let (mut z, labels) = logits_and_labels::<T>(r, b, k);
    if b > 2 {
        // One row of large logits: the max subtraction must keep exp finite.
        for v in &mut z[k..2 * k] {
            *v = T::from_f32(v.to_f32() * 8.0 + 30.0);
        }
    }
    if b > 3 {
        // One row near 1e4: the shift by the max must not lose accuracy with the max's size
        // (the log2-domain shift of the kernels before 2026-12-02 was off by 6e-4 of p here).
        for v in &mut z[2 * k..3 * k] {
            *v = T::from_f32(v.to_f32() * 4.0 + 1e4);
        }
    }
    let plan = MixPlan::from_parts(&permutation(r, b), &lams(r, b)).unwrap();
    dplan.upload(&plan).unwrap();
    let spec = CeSpec::new(k, c.eps, c.at.reduction).unwrap();
    let upstream = Upstream::new(m, r, b);
    let (grad_output, host_up) = upstream.grad_outputs(c.at.reduction);
    let want = reference::mixup_ce(&plan, &spec, &z, &labels, host_up).unwrap();
    let targets = reference::soft_targets(&plan, spec.targets(), &labels).unwrap();
    let what = format!(
        "{} B={b} C={k} eps={} {:?} offsets ({}, {})",
        T::DTYPE.name(),
        c.eps,
        c.at.reduction,
        c.at.logits_off,
        c.at.grad_off
    );

    let kernel = DeviceLoss::Ce(&spec);
    let (got, got_grad) = launch_case(m, dplan, kernel, &what, (&z, &labels), grad_output, c.at);

    // Per-row losses are O(lse) ~ 40 here; f32 keeps ~1e-6 of that.
    check_losses(
        &what,
        got,
        (want.loss, &want.losses),
        Tol::new(2e-4, 2e-5),
        Tol::new(2e-4 * (b as f64).sqrt().max(1.0), 2e-5),
    );
    check_grad(&what, &got_grad, &want.grad, k, |i, idx| {
        let up = match c.at.reduction {
            Reduction::Mean => 1.0 / b as f64,
            Reduction::Sum => 0.5,
            Reduction::None => upstream.per_sample[i] as f64,
        };
        let p = want.grad[idx] / up + targets[idx];
        grad_tol::<T>(up, p, want.grad[idx])
    });
}

fn classes() -> Vec<usize> {
    vec![
        1, 2, 3, 10, 63, 100, 512, 513, 1000, 1024, 2049, 4097, 32_000, 50_257, 64_000, 128_256,
        256_000,
    ]
}

fn check_dtype<T: FloatElement + cudarc_repr::Repr>(m: &CudaMixer, seed: u64) {
    let mut r = rng(seed);
    let mut dplan = DevicePlan::new(m);
    for (_, k, b, i, reduction) in loss_sweep(&classes(), 4097) {
        let (logits_off, grad_off) = [(0, 0), (1, 1), (3, 0)][(i + b) % 3];
        let at = Launch {
            reduction,
            logits_off,
            grad_off,
            in_place: false,
        };
        let eps = if i == 1 { 0.0 } else { 0.1 };
        run_case::<T>(m, &mut dplan, &mut r, &Case::new(b, k, eps, at));
    }
    // Large batches where the warp and block paths pack many rows.
    for (b, k) in LARGE_BATCHES {
        run_case::<T>(m, &mut dplan, &mut r, &Case::new(b, k, 0.1, Launch::MEAN));
    }
}

gpu_dtype_tests! { check_dtype:
    mixup_ce_f32 => f32, 21;
    mixup_ce_f16 => f16, 22;
    mixup_ce_bf16 => bf16, 23;
}

/// Runs the loss twice and in place; returns (loss bits, losses bits, grad bits) of each.
fn bits_of_runs<T: FloatElement + cudarc_repr::Repr>(m: &CudaMixer, b: usize, k: usize, seed: u64) {
    let p = LossProblem::<T>::new(m, &mut rng(seed), b, k);
    let spec = CeSpec::new(k, 0.1, Reduction::Mean).unwrap();
    let runs = launch_twice(m, &p, DeviceLoss::Ce(&spec));
    let what = format!("{} B={b} C={k}", T::DTYPE.name());
    assert_eq!(
        runs[0].0, runs[1].0,
        "{what}: the reduced loss changed between runs"
    );
    assert_eq!(
        runs[0].1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        runs[1].1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "{what}: per-sample losses changed"
    );
    assert!(
        runs[0]
            .2
            .iter()
            .zip(&runs[1].2)
            .all(|(a, b)| bits(*a) == bits(*b)),
        "{what}: gradient changed"
    );
    // In place: the same kernel on the same values, so the same bits.
    let mut zi = m.stream().clone_htod(&p.z).unwrap();
    let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
    m.mixup_ce_in_place(
        &p.dplan,
        &spec,
        &mut zi.as_view_mut(),
        &p.ls.as_view(),
        DeviceGradOutput::Scalar(1.0),
        Some(&mut loss.as_view_mut()),
        None,
    )
    .unwrap();
    assert_eq!(
        m.stream().clone_dtoh(&loss).unwrap()[0].to_bits(),
        runs[0].0,
        "{what}: in-place loss"
    );
    let gi = m.stream().clone_dtoh(&zi).unwrap();
    assert!(
        gi.iter().zip(&runs[0].2).all(|(a, b)| bits(*a) == bits(*b)),
        "{what}: in-place gradient"
    );
    // Forward only: same losses within rounding (another kernel may sum in another order).
    let f: Vec<f64> = launch_forward(m, &p, DeviceLoss::Ce(&spec))
        .1
        .iter()
        .map(|&v| v as f64)
        .collect();
    let o: Vec<f64> = runs[0].1.iter().map(|&v| v as f64).collect();
    assert_close(
        &format!("{what} forward-only losses"),
        &f,
        &o,
        Tol::new(1e-4, 1e-5),
    );
}

#[test]
fn deterministic_in_place_and_forward_only() {
    let Some(m) = mixer("deterministic_in_place_and_forward_only") else {
        return;
    };
    for (b, k, seed) in [
        (256usize, 1000usize, 31u64),
        (64, 32_000, 32),
        (8, 64_000, 33),
        (4, 256_000, 34),
        (4096, 10, 35),
    ] {
        bits_of_runs::<f32>(&m, b, k, seed);
        bits_of_runs::<bf16>(&m, b, k, seed);
    }
}

/// 100 000 rows of 10 classes (391 blocks of the warp kernel) and 20 000 rows of 1000 (one row
/// per group of lanes, hundreds of blocks resident at once): the last-block reduction of the
/// loss meets truly concurrent blocks (the emulation runs them one after another); twice, same
/// bits.
/// Not under the sanitizers (their filter is `deterministic`): 1M elements would not fit their
/// time.
#[test]
fn many_rows_reduce_to_the_same_bits() {
    let Some(m) = mixer("many_rows_reduce_to_the_same_bits") else {
        return;
    };
    bits_of_runs::<f32>(&m, 100_000, 10, 36);
    bits_of_runs::<bf16>(&m, 100_000, 10, 37);
    bits_of_runs::<f32>(&m, 20_000, 1000, 38);
}

#[test]
fn device_labels_out_of_range_are_flagged() {
    let Some(m) = mixer("device_labels_out_of_range_are_flagged") else {
        return;
    };
    for k in [10usize, 5000, 200_000] {
        let mut dplan = DevicePlan::new(&m);
        dplan
            .upload(&MixPlan::from_parts(&[0, 1], &[1.0, 1.0]).unwrap())
            .unwrap();
        let z = m.stream().clone_htod(&vec![0.5f32; 2 * k]).unwrap();
        let ls = m.stream().clone_htod(&[k as u32, 0]).unwrap();
        let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
        let mut grad = m.stream().alloc_zeros::<f32>(2 * k).unwrap();
        m.mixup_ce(
            &dplan,
            &CeSpec::new(k, 0.0, Reduction::Sum).unwrap(),
            &z.as_view(),
            &ls.as_view(),
            DeviceGradOutput::Scalar(1.0),
            Some(&mut loss.as_view_mut()),
            None,
            &mut grad.as_view_mut(),
        )
        .unwrap();
        assert!(
            matches!(
                m.check_labels(),
                Err(MixError::DeviceLabelOutOfRange { count: 1 })
            ),
            "C={k}"
        );
        m.check_labels().unwrap();
    }
}

#[test]
fn empty_batch_and_argument_errors() {
    let Some(m) = mixer("empty_batch_and_argument_errors") else {
        return;
    };
    let mut dplan = DevicePlan::new(&m);
    dplan.upload(&MixPlan::identity(0).unwrap()).unwrap();
    let z = m.stream().alloc_zeros::<f32>(1).unwrap();
    let ls = m.stream().alloc_zeros::<u32>(1).unwrap();
    let mut loss = m.stream().clone_htod(&[5.0f32]).unwrap();
    // The reduced loss of no sample under `reduction`.
    let empty_forward = |reduction, loss: &mut CudaSlice<f32>| {
        let spec = CeSpec::new(4, 0.0, reduction).unwrap();
        let (zv, lv) = (z.slice(0..0), ls.slice(0..0));
        m.mixup_ce_forward(&dplan, &spec, &zv, &lv, Some(&mut loss.as_view_mut()), None)
    };
    // Sum over no sample is 0.
    empty_forward(Reduction::Sum, &mut loss).unwrap();
    assert_eq!(m.stream().clone_dtoh(&loss).unwrap(), vec![0.0]);
    // The same from a thread that never touched CUDA (no current context: the empty batch's
    // loss is written by a raw driver call, which must make the mixer's context current).
    m.stream().memcpy_htod(&[5.0f32], &mut loss).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| empty_forward(Reduction::Sum, &mut loss))
            .join()
            .unwrap()
    })
    .expect("the empty batch from a fresh thread");
    assert_eq!(m.stream().clone_dtoh(&loss).unwrap(), vec![0.0]);
    // Mean over no sample is refused.
    assert!(matches!(
        empty_forward(Reduction::Mean, &mut loss),
        Err(MixError::EmptyShape { .. })
    ));
    dplan.upload(&MixPlan::identity(2).unwrap()).unwrap();
    let z = m.stream().alloc_zeros::<f32>(8).unwrap();
    let ls = m.stream().alloc_zeros::<u32>(2).unwrap();
    let ups = m.stream().alloc_zeros::<f32>(2).unwrap();
    let mut grad = m.stream().alloc_zeros::<f32>(8).unwrap();
    // The reduced loss exists under Mean and Sum only (PyTorch's reduction='none' has none);
    // a loss-only call must be given somewhere to write; a gradient call needs no loss output.
    let mut per = m.stream().alloc_zeros::<f32>(2).unwrap();
    let none = CeSpec::new(4, 0.0, Reduction::None).unwrap();
    let mean = CeSpec::new(4, 0.0, Reduction::Mean).unwrap();
    let (zv, lv) = (z.as_view(), ls.as_view());
    let errors = [
        m.mixup_ce(
            &dplan,
            &none,
            &zv,
            &lv,
            DeviceGradOutput::Scalar(1.0),
            Some(&mut loss.as_view_mut()),
            Some(&mut per.as_view_mut()),
            &mut grad.as_view_mut(),
        ),
        m.mixup_ce_forward(&dplan, &mean, &zv, &lv, None, Some(&mut per.as_view_mut())),
        m.mixup_ce_forward(&dplan, &none, &zv, &lv, None, None),
    ];
    for (i, (r, what)) in errors
        .into_iter()
        .zip(["loss", "loss", "losses"])
        .enumerate()
    {
        assert!(
            matches!(r, Err(MixError::InvalidArgument { what: w, .. }) if w == what),
            "case {i}: {r:?}"
        );
    }
    m.mixup_ce(
        &dplan,
        &mean,
        &zv,
        &lv,
        DeviceGradOutput::Scalar(1.0),
        None,
        None,
        &mut grad.as_view_mut(),
    )
    .expect("a gradient-only call");
    // A gradient call on the batch of 2 × 4 that must be refused with `$err`.
    macro_rules! refused {
        ($spec:expr, $grad_output:expr, $grad:expr, $err:pat) => {
            let r = m.mixup_ce(
                &dplan,
                &$spec,
                &zv,
                &lv,
                $grad_output,
                Some(&mut loss.as_view_mut()),
                None,
                $grad,
            );
            assert!(matches!(r, $err), "{r:?}");
        };
    }
    // A per-sample grad_output needs Reduction::None.
    refused!(
        mean,
        DeviceGradOutput::PerSample(ups.as_view()),
        &mut grad.as_view_mut(),
        Err(MixError::InvalidArgument {
            what: "grad_output",
            ..
        })
    );
    refused!(
        mean,
        DeviceGradOutput::Scalar(f32::NAN),
        &mut grad.as_view_mut(),
        Err(MixError::InvalidArgument {
            what: "grad_output",
            ..
        })
    );
    refused!(
        CeSpec::new(3, 0.0, Reduction::Mean).unwrap(),
        DeviceGradOutput::Scalar(1.0),
        &mut grad.as_view_mut(),
        Err(MixError::ShapeMismatch { what: "logits", .. })
    );
    refused!(
        mean,
        DeviceGradOutput::Scalar(1.0),
        &mut grad.slice_mut(0..7),
        Err(MixError::ShapeMismatch { what: "grad", .. })
    );
    refused!(
        CeSpec::new(4, 1.5, Reduction::Mean).unwrap(),
        DeviceGradOutput::Scalar(1.0),
        &mut grad.as_view_mut(),
        Err(MixError::InvalidConfig { .. })
    );
    assert_eq!(
        m.stream().clone_dtoh(&grad).unwrap(),
        vec![0.0; 8],
        "untouched after errors"
    );
}

#[test]
fn bench_shapes_match_the_reference() {
    // The benchmark's shapes (a 256×1000-like batch, and LLM-sized rows) against the f64
    // reference, as the unfused baseline (now in benches/gpu) once was.
    let Some(m) = mixer("bench_shapes_match_the_reference") else {
        return;
    };
    let mut r = rng(41);
    for (b, k) in [(64usize, 1000usize), (3, 32_000)] {
        let p = LossProblem::<f32>::new(&m, &mut r, b, k);
        let spec = CeSpec::new(k, 0.1, Reduction::Mean).unwrap();
        let want =
            reference::mixup_ce(&p.plan, &spec, &p.z, &p.labels, GradOutput::Scalar(1.0)).unwrap();
        let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
        let mut grad = m.stream().alloc_zeros::<f32>(b * k).unwrap();
        m.mixup_ce(
            &p.dplan,
            &spec,
            &p.zs.as_view(),
            &p.ls.as_view(),
            DeviceGradOutput::Scalar(1.0),
            Some(&mut loss.as_view_mut()),
            None,
            &mut grad.as_view_mut(),
        )
        .unwrap();
        let got = m.stream().clone_dtoh(&loss).unwrap()[0] as f64;
        assert_close("loss", &[got], &[want.loss.unwrap()], Tol::new(1e-4, 1e-5));
        let g: Vec<f64> = m
            .stream()
            .clone_dtoh(&grad)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        assert_close("grad", &g, &want.grad, Tol::new(1e-7, 1e-3));
    }
}
