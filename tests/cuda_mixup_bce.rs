//! GPU mixup binary cross-entropy against the f64 reference (`reference::mixup_bce`): every
//! float dtype, C from 1 to 128 256 (bce_warp with 1..32 lanes per row, bce_block), batch 1 to
//! 4096, every reduction and grad_output kind, sum_classes, thresholds, weight and pos_weight,
//! views at odd offsets, in place vs out of place, forward only, masked logits (-inf and the
//! dtype's minimum, with zero targets), and determinism of the reduced loss.
//! Prints SKIPPED without a GPU (see tests/cuda_common).
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec, DevicePlan};
use mixup_kernels::{BceSpec, FloatElement, MixPlan, Reduction, bf16, f16, reference};
use rand::Rng;

struct Case {
    batch: usize,
    classes: usize,
    eps: f64,
    threshold: Option<f32>,
    weights: bool,
    sum_classes: bool,
    masked: bool,
    at: Launch,
}

impl Case {
    /// A case with eps 0.1 and no threshold, weights, sum_classes or masked classes.
    fn plain(batch: usize, classes: usize, at: Launch) -> Self {
        Self {
            batch,
            classes,
            eps: 0.1,
            threshold: None,
            weights: false,
            sum_classes: false,
            masked: false,
            at,
        }
    }
}

/// Tolerance of one gradient element: a few f32 roundings of the terms and the final rounding
/// to T.
fn grad_tol<T: FloatElement>(scale: f64, terms: f64, want: f64) -> f64 {
    scale.abs() * terms * 1e-6 + rounding_tol::<T>(want)
}

fn spec_of(r: &mut TestRng, c: &Case) -> BceSpec {
    let k = c.classes;
    let mut spec = BceSpec::new(k, c.eps, c.at.reduction)
        .unwrap()
        .with_sum_classes(c.sum_classes);
    if let Some(t) = c.threshold {
        spec = spec.with_target_threshold(t).unwrap();
    }
    if c.weights {
        let w: Vec<f32> = (0..k)
            .map(|j| {
                if j % 7 == 3 {
                    0.0
                } else {
                    r.random_range(0.0f32..2.0)
                }
            })
            .collect();
        let pw: Vec<f32> = (0..k).map(|_| r.random_range(0.25f32..3.0)).collect();
        spec = spec.with_weight(w).unwrap().with_pos_weight(pw).unwrap();
    }
    spec
}

fn run_case<T: FloatElement + cudarc_repr::Repr>(
    m: &CudaMixer,
    dplan: &mut DevicePlan,
    r: &mut TestRng,
    c: &Case,
) {
    let (b, k) = (c.batch, c.classes);
    let (mut z, labels) = logits_and_labels::<T>(r, b, k);
    let partner = permutation(r, b);
    let plan = MixPlan::from_parts(&partner, &lams(r, b)).unwrap();
    if c.masked {
        // Masked classes with no target: -inf and the dtype's minimum (with a threshold every
        // class but the labels has target 0; without, eps = 0 is needed for that).
        for i in 0..b {
            let (a, bb) = (labels[i] as usize, labels[partner[i]] as usize);
            for j in (i % 3..k).step_by(4) {
                if j != a && j != bb {
                    z[i * k + j] = if j % 2 == 0 {
                        T::from_f32(f32::NEG_INFINITY)
                    } else {
                        dtype_min::<T>()
                    };
                }
            }
        }
    }
    dplan.upload(&plan).unwrap();
    let spec = spec_of(r, c);
    let dspec = DeviceBceSpec::new(m, spec.clone()).unwrap();
    let upstream = Upstream::new(m, r, b);
    let (grad_output, host_up) = upstream.grad_outputs(c.at.reduction);
    let want = reference::mixup_bce(&plan, &spec, &z, &labels, host_up).unwrap();
    let what = format!(
        "{} B={b} C={k} eps={} {:?} thr={:?} weights={} sum_classes={} masked={} offsets ({}, {}) in_place={}",
        T::DTYPE.name(),
        c.eps,
        c.at.reduction,
        c.threshold,
        c.weights,
        c.sum_classes,
        c.masked,
        c.at.logits_off,
        c.at.grad_off,
        c.at.in_place
    );

    let kernel = DeviceLoss::Bce(&dspec);
    let (got, got_grad) = launch_case(m, dplan, kernel, &what, (&z, &labels), grad_output, c.at);

    // Per-row losses are sums of C terms of O(1..10) each.
    let row_tol = 1e-5 * k as f64;
    check_losses(
        &what,
        got,
        (want.loss, &want.losses),
        Tol::new(row_tol, 1e-5),
        Tol::new(row_tol * (b as f64).sqrt().max(1.0), 1e-5),
    );
    let factor = match c.at.reduction {
        Reduction::Mean => 1.0 / spec_count(&spec, b),
        Reduction::Sum => 0.5,
        Reduction::None => 1.0,
    };
    check_grad(&what, &got_grad, &want.grad, k, |i, idx| {
        let up = if c.at.reduction == Reduction::None {
            upstream.per_sample[i] as f64
        } else {
            factor
        };
        // |v (c σ − w t)| ≤ v (c + w t): bounded by the weights (≤ 2 · 4).
        grad_tol::<T>(up, 8.0, want.grad[idx])
    });
}

/// The dtype's most negative finite value (`torch.finfo(dtype).min`).
fn dtype_min<T: FloatElement>() -> T {
    T::from_f32(match T::DTYPE.name() {
        "f32" => f32::MIN,
        "f16" => f16::MIN.to_f32(),
        _ => bf16::MIN.to_f32(),
    })
}

/// What Mean divides by: B·C, or B with sum_classes.
fn spec_count(spec: &BceSpec, b: usize) -> f64 {
    if spec.sum_classes() {
        b as f64
    } else {
        (b * spec.num_classes()) as f64
    }
}

fn check_dtype<T: FloatElement + cudarc_repr::Repr>(m: &CudaMixer, seed: u64) {
    let mut r = rng(seed);
    let mut dplan = DevicePlan::new(m);
    let classes = [
        1usize, 2, 3, 10, 63, 100, 512, 513, 1000, 1024, 2049, 32_000, 128_256,
    ];
    for (n, k, b, i, reduction) in loss_sweep(&classes, 2049) {
        let v = i + b + n;
        let (logits_off, grad_off) = [(0, 0), (1, 1), (3, 0)][v % 3];
        let threshold = (v % 2 == 1).then_some(0.2);
        let at = Launch {
            reduction,
            logits_off,
            grad_off,
            in_place: v % 4 == 3,
        };
        let case = Case {
            eps: if i == 1 { 0.0 } else { 0.1 },
            threshold,
            weights: v % 4 < 2,
            sum_classes: v % 5 == 0,
            masked: threshold.is_some() || i == 1,
            ..Case::plain(b, k, at)
        };
        run_case::<T>(m, &mut dplan, &mut r, &case);
    }
    for (b, k) in LARGE_BATCHES {
        run_case::<T>(m, &mut dplan, &mut r, &Case::plain(b, k, Launch::MEAN));
    }
}

gpu_dtype_tests! { check_dtype:
    mixup_bce_f32 => f32, 31;
    mixup_bce_f16 => f16, 32;
    mixup_bce_bf16 => bf16, 33;
}

/// The same launch twice gives the same bits (loss, losses, gradient); forward only gives the
/// same losses.
#[test]
fn mixup_bce_is_deterministic() {
    let Some(m) = mixer("mixup_bce_is_deterministic") else {
        return;
    };
    let (b, k) = (300usize, 1000usize);
    let p = LossProblem::<f32>::new(&m, &mut rng(34), b, k);
    let dspec = DeviceBceSpec::new(&m, BceSpec::new(k, 0.1, Reduction::Mean).unwrap()).unwrap();
    let runs = launch_twice(&m, &p, DeviceLoss::Bce(&dspec));
    assert_eq!(runs[0].0, runs[1].0);
    assert_eq!(runs[0].1, runs[1].1);
    assert_eq!(runs[0].2, runs[1].2);
    let (loss, losses) = launch_forward(&m, &p, DeviceLoss::Bce(&dspec));
    assert_eq!(losses, runs[0].1);
    assert_eq!(loss, runs[0].0);
}

/// A spec (with class weights on the device) and a plan serve the mixer they were made with:
/// with another mixer, on another stream of the same device, the call is refused before any
/// work (its kernels would read the weights unordered with their copy). Then the same call
/// with the right objects runs.
#[test]
fn spec_and_plan_from_another_mixer_are_refused() {
    let Some(m) = mixer("spec_and_plan_from_another_mixer_are_refused") else {
        return;
    };
    let stream = m.stream().context().new_stream().unwrap();
    let other = CudaMixer::from_stream(stream).unwrap();
    let spec = BceSpec::new(2, 0.0, Reduction::Sum)
        .unwrap()
        .with_pos_weight(vec![1.0, 2.0])
        .unwrap();
    let (ours, theirs) = (
        DeviceBceSpec::new(&m, spec.clone()).unwrap(),
        DeviceBceSpec::new(&other, spec).unwrap(),
    );
    let plan_of = |mixer: &CudaMixer| {
        let mut p = DevicePlan::new(mixer);
        p.upload(&MixPlan::identity(2).unwrap()).unwrap();
        p
    };
    let (plan, their_plan) = (plan_of(&m), plan_of(&other));
    let s = m.stream();
    let (z, y) = (
        s.clone_htod(&[0.0f32; 4]).unwrap(),
        s.clone_htod(&[0u32, 1]).unwrap(),
    );
    let mut loss = s.clone_htod(&[7.0f32]).unwrap();
    let (zv, yv) = (z.as_view(), y.as_view());
    for (p, d, what) in [(&plan, &theirs, "spec"), (&their_plan, &ours, "plan")] {
        let r = m.mixup_bce_forward(p, d, &zv, &yv, Some(&mut loss.as_view_mut()), None);
        assert!(
            matches!(r, Err(mixup_kernels::MixError::InvalidArgument { what: w, .. }) if w == what),
            "{what}: {r:?}"
        );
    }
    assert_eq!(s.clone_dtoh(&loss).unwrap(), vec![7.0], "nothing written");
    m.mixup_bce_forward(&plan, &ours, &zv, &yv, Some(&mut loss.as_view_mut()), None)
        .unwrap();
    // Zero logits: every element's loss is ln 2 times its weight (the CPU path's value).
    let want = mixup_kernels::cpu::mixup_bce_forward(
        &MixPlan::identity(2).unwrap(),
        ours.spec(),
        &[0.0f32; 4],
        &[0u32, 1],
        None,
    )
    .unwrap()
    .expect("Sum has a reduced loss");
    let got = s.clone_dtoh(&loss).unwrap()[0];
    assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");
}

/// Logits masked with the dtype's minimum under label smoothing: each masked class adds
/// (ε/C)·|min| to its row's loss, so the rows' f32 sum passes f32::MAX while their mean fits.
/// The device reduces in f64 as the CPU path does: Mean is finite (an f32 sum gave +inf) and
/// agrees with the CPU path; Sum is +inf on both.
#[test]
fn a_mean_whose_f32_sum_would_overflow_is_finite() {
    let Some(m) = mixer("a_mean_whose_f32_sum_would_overflow_is_finite") else {
        return;
    };
    fn check<T: FloatElement + cudarc_repr::Repr>(m: &CudaMixer, r: &mut TestRng) {
        let (b, k) = (256usize, 1000usize);
        let (mut z, labels) = logits_and_labels::<T>(r, b, k);
        let plan = MixPlan::from_parts(&permutation(r, b), &lams(r, b)).unwrap();
        for i in 0..b {
            let (a, bb) = (labels[i] as usize, labels[plan.sample(i).partner] as usize);
            for j in (i % 20..k).step_by(20) {
                if j != a && j != bb {
                    z[i * k + j] = dtype_min::<T>();
                }
            }
        }
        let mut dplan = DevicePlan::new(m);
        dplan.upload(&plan).unwrap();
        let s = m.stream();
        let (dz, dy) = (s.clone_htod(&z).unwrap(), s.clone_htod(&labels).unwrap());
        let mut loss = s.clone_htod(&[0.0f32]).unwrap();
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let spec = BceSpec::new(k, 0.1, reduction).unwrap();
            let host = mixup_kernels::cpu::mixup_bce_forward(&plan, &spec, &z, &labels, None)
                .unwrap()
                .expect("a reduced loss");
            let dspec = DeviceBceSpec::new(m, spec).unwrap();
            m.mixup_bce_forward(
                &dplan,
                &dspec,
                &dz.as_view(),
                &dy.as_view(),
                Some(&mut loss.as_view_mut()),
                None,
            )
            .unwrap();
            let got = s.clone_dtoh(&loss).unwrap()[0];
            let what = format!("{} {reduction:?}", T::DTYPE.name());
            if reduction == Reduction::Mean {
                assert!(host.is_finite(), "{what}: the CPU mean {host}");
                assert!(
                    (got - host).abs() <= 1e-5 * host.abs(),
                    "{what}: {got} vs {host}"
                );
            } else {
                assert_eq!((got, host), (f32::INFINITY, f32::INFINITY), "{what}");
            }
        }
    }
    let mut r = rng(35);
    check::<f32>(&m, &mut r);
    check::<bf16>(&m, &mut r);
}
