//! GPU mixup binary cross-entropy against the f64 reference (`reference::mixup_bce`): every
//! float dtype, C from 1 to 128 256 (bce_warp with 1..32 lanes per row, bce_block), batch 1 to
//! 4096, every reduction and grad_output kind, sum_classes, thresholds, weight and pos_weight,
//! views at odd offsets, in place vs out of place, forward only, masked logits (-inf and the
//! dtype's minimum, with zero targets), and determinism of the reduced loss.
//! Prints SKIPPED without a GPU (see tests/cuda_common).
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use mixup_kernels::cuda::{CudaMixer, DeviceBceSpec, DeviceGradOutput, DevicePlan};
use mixup_kernels::{BceSpec, FloatElement, GradOutput, MixPlan, Reduction, bf16, f16, reference};
use rand::Rng;

struct Case {
    batch: usize,
    classes: usize,
    eps: f64,
    reduction: Reduction,
    threshold: Option<f32>,
    weights: bool,
    sum_classes: bool,
    masked: bool,
    logits_off: usize,
    grad_off: usize,
    in_place: bool,
}

/// Tolerance of one gradient element: a few f32 roundings of the terms and the final rounding
/// to T.
fn grad_tol<T: FloatElement>(scale: f64, terms: f64, want: f64) -> f64 {
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
    scale.abs() * terms * 1e-6 + out * want.abs() + sub
}

fn spec_of(r: &mut TestRng, c: &Case) -> BceSpec {
    let k = c.classes;
    let mut spec = BceSpec::new(k, c.eps, c.reduction)
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
    let n = b * k;
    let mut z: Vec<T> = random(r, n);
    let labels: Vec<u32> = (0..b).map(|_| r.random_range(0..k as u32)).collect();
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
    let per_sample: Vec<f32> = (0..b).map(|_| r.random_range(0.25f32..2.0)).collect();
    let up_dev = m.stream().clone_htod(&[0.5f32]).unwrap();
    let up_ps = m.stream().clone_htod(&per_sample).unwrap();
    let (grad_output, host_up) = match c.reduction {
        Reduction::Mean => (DeviceGradOutput::Scalar(1.0), GradOutput::Scalar(1.0)),
        Reduction::Sum => (
            DeviceGradOutput::Device(up_dev.as_view()),
            GradOutput::Scalar(0.5),
        ),
        Reduction::None => (
            DeviceGradOutput::PerSample(up_ps.as_view()),
            GradOutput::PerSample(&per_sample),
        ),
    };
    let want = reference::mixup_bce(&plan, &spec, &z, &labels, host_up).unwrap();
    let what = format!(
        "{} B={b} C={k} eps={} {:?} thr={:?} weights={} sum_classes={} masked={} offsets ({}, {}) in_place={}",
        T::DTYPE.name(),
        c.eps,
        c.reduction,
        c.threshold,
        c.weights,
        c.sum_classes,
        c.masked,
        c.logits_off,
        c.grad_off,
        c.in_place
    );

    let mut zs = upload_at(m, &z, c.logits_off, T::from_f32(1.0));
    let ls = m.stream().clone_htod(&labels).unwrap();
    let mut grad = upload_at(m, &vec![T::from_f32(-9.0); n], c.grad_off, T::from_f32(3.0));
    let mut loss = m.stream().clone_htod(&[5.0f32]).unwrap();
    let mut losses = m.stream().clone_htod(&vec![5.0f32; b.max(1)]).unwrap();
    let result = if c.in_place {
        m.mixup_bce_in_place(
            dplan,
            &dspec,
            &mut view_mut(&mut zs, c.logits_off, n),
            &ls.as_view(),
            grad_output,
            (c.reduction != Reduction::None).then_some(&mut loss.as_view_mut()),
            Some(&mut losses.slice_mut(0..b)),
        )
    } else {
        m.mixup_bce(
            dplan,
            &dspec,
            &view(&zs, c.logits_off, n),
            &ls.as_view(),
            grad_output,
            (c.reduction != Reduction::None).then_some(&mut loss.as_view_mut()),
            Some(&mut losses.slice_mut(0..b)),
            &mut view_mut(&mut grad, c.grad_off, n),
        )
    };
    result.unwrap_or_else(|e| panic!("{what}: {e}"));
    m.check_labels().unwrap();
    let got_loss = m.stream().clone_dtoh(&loss).unwrap()[0] as f64;
    let got_losses: Vec<f64> = m.stream().clone_dtoh(&losses).unwrap()[..b]
        .iter()
        .map(|&v| v as f64)
        .collect();
    let (buf, off) = if c.in_place {
        (download(m, &zs), c.logits_off)
    } else {
        let g = download(m, &grad);
        assert!(
            g[..c.grad_off].iter().all(|v| v.to_f32() == 3.0),
            "{what}: wrote before grad"
        );
        assert_eq!(g[c.grad_off + n].to_f32(), 3.0, "{what}: wrote after grad");
        (g, c.grad_off)
    };
    let got_grad = widen(&buf[off..off + n]);

    // Per-row losses are sums of C terms of O(1..10) each.
    let row_tol = 1e-5 * k as f64;
    assert_close(
        &format!("{what} losses"),
        &got_losses,
        &want.losses,
        Tol::new(row_tol, 1e-5),
    );
    match want.loss {
        Some(w) => assert_close(
            &format!("{what} loss"),
            &[got_loss],
            &[w],
            Tol::new(row_tol * (b as f64).sqrt().max(1.0), 1e-5),
        ),
        // Reduction::None has no reduced loss (as PyTorch): its slot stays untouched.
        None => assert_eq!(
            got_loss, 5.0,
            "{what}: Reduction::None wrote a reduced loss"
        ),
    }
    let factor = match c.reduction {
        Reduction::Mean => 1.0 / spec_count(&spec, b),
        Reduction::Sum => 0.5,
        Reduction::None => 1.0,
    };
    for (i, &ps) in per_sample.iter().enumerate() {
        let up = if c.reduction == Reduction::None {
            ps as f64
        } else {
            factor
        };
        for j in 0..k {
            let idx = i * k + j;
            // |v (c σ − w t)| ≤ v (c + w t): bounded by the weights (≤ 2 · 4).
            let tol = grad_tol::<T>(up, 8.0, want.grad[idx]);
            let err = (got_grad[idx] - want.grad[idx]).abs();
            assert!(
                err <= tol,
                "{what} grad[{i}][{j}]: got {}, want {} (tol {tol})",
                got_grad[idx],
                want.grad[idx]
            );
        }
    }
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
    for (n, &k) in classes.iter().enumerate() {
        let batches: &[usize] = if k <= 2049 { &[1, 3, 64] } else { &[1, 3] };
        for &b in batches {
            for (i, reduction) in [Reduction::Mean, Reduction::Sum, Reduction::None]
                .into_iter()
                .enumerate()
            {
                let v = i + b + n;
                let (logits_off, grad_off) = [(0, 0), (1, 1), (3, 0)][v % 3];
                let threshold = (v % 2 == 1).then_some(0.2);
                run_case::<T>(
                    m,
                    &mut dplan,
                    &mut r,
                    &Case {
                        batch: b,
                        classes: k,
                        eps: if i == 1 { 0.0 } else { 0.1 },
                        reduction,
                        threshold,
                        weights: v % 4 < 2,
                        sum_classes: v % 5 == 0,
                        masked: threshold.is_some() || i == 1,
                        logits_off,
                        grad_off,
                        in_place: v % 4 == 3,
                    },
                );
            }
        }
    }
    for (b, k) in [(4096usize, 10usize), (4096, 1000), (1000, 3)] {
        run_case::<T>(
            m,
            &mut dplan,
            &mut r,
            &Case {
                batch: b,
                classes: k,
                eps: 0.1,
                reduction: Reduction::Mean,
                threshold: None,
                weights: false,
                sum_classes: false,
                masked: false,
                logits_off: 0,
                grad_off: 0,
                in_place: false,
            },
        );
    }
}

#[test]
fn mixup_bce_f32() {
    if let Some(m) = mixer("mixup_bce_f32") {
        check_dtype::<f32>(&m, 31);
    }
}

#[test]
fn mixup_bce_f16() {
    if let Some(m) = mixer("mixup_bce_f16") {
        check_dtype::<f16>(&m, 32);
    }
}

#[test]
fn mixup_bce_bf16() {
    if let Some(m) = mixer("mixup_bce_bf16") {
        check_dtype::<bf16>(&m, 33);
    }
}

/// The same launch twice gives the same bits (loss, losses, gradient); forward only gives the
/// same losses.
#[test]
fn mixup_bce_is_deterministic() {
    let Some(m) = mixer("mixup_bce_is_deterministic") else {
        return;
    };
    let (b, k) = (300usize, 1000usize);
    let mut r = rng(34);
    let z: Vec<f32> = random(&mut r, b * k);
    let labels: Vec<u32> = (0..b).map(|_| r.random_range(0..k as u32)).collect();
    let plan = MixPlan::from_parts(&pairs(&mut r, b), &lams(&mut r, b)).unwrap();
    let mut dplan = DevicePlan::new(&m);
    dplan.upload(&plan).unwrap();
    let spec = BceSpec::new(k, 0.1, Reduction::Mean).unwrap();
    let dspec = DeviceBceSpec::new(&m, spec).unwrap();
    let zs = m.stream().clone_htod(&z).unwrap();
    let ls = m.stream().clone_htod(&labels).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut grad = m.stream().alloc_zeros::<f32>(b * k).unwrap();
        let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
        let mut losses = m.stream().alloc_zeros::<f32>(b).unwrap();
        m.mixup_bce(
            &dplan,
            &dspec,
            &zs.as_view(),
            &ls.as_view(),
            DeviceGradOutput::Scalar(1.0),
            Some(&mut loss.as_view_mut()),
            Some(&mut losses.as_view_mut()),
            &mut grad.as_view_mut(),
        )
        .unwrap();
        runs.push((
            m.stream().clone_dtoh(&loss).unwrap()[0].to_bits(),
            m.stream().clone_dtoh(&losses).unwrap(),
            m.stream().clone_dtoh(&grad).unwrap(),
        ));
    }
    assert_eq!(runs[0].0, runs[1].0);
    assert_eq!(runs[0].1, runs[1].1);
    assert_eq!(runs[0].2, runs[1].2);
    let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
    let mut losses = m.stream().alloc_zeros::<f32>(b).unwrap();
    m.mixup_bce_forward(
        &dplan,
        &dspec,
        &zs.as_view(),
        &ls.as_view(),
        Some(&mut loss.as_view_mut()),
        Some(&mut losses.as_view_mut()),
    )
    .unwrap();
    assert_eq!(m.stream().clone_dtoh(&losses).unwrap(), runs[0].1);
    assert_eq!(
        m.stream().clone_dtoh(&loss).unwrap()[0].to_bits(),
        runs[0].0
    );
}
