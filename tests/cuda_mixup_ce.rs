//! GPU mixup cross-entropy against the f64 reference: every float dtype, C from 1 to 256 000
//! (every row strategy: warp, block, block + shared memory, online), batch 1 to 4096, every
//! reduction and grad_output kind, views at odd offsets (misaligned rows, gradient rows at another
//! alignment than the logits), in place vs out of place, forward only, determinism of the
//! reduced loss, device labels out of range, and the benchmark's shapes.
//! Prints SKIPPED without a GPU (see tests/cuda_common).
#![cfg(feature = "cuda")]

mod cuda_common;

use cuda_common::*;
use mixup_kernels::cuda::{CudaMixer, DeviceGradOutput, DevicePlan};
use mixup_kernels::{
    CeSpec, FloatElement, GradOutput, MixError, MixPlan, Reduction, bf16, f16, reference,
};
use rand::Rng;

struct Case {
    batch: usize,
    classes: usize,
    eps: f64,
    reduction: Reduction,
    logits_off: usize,
    grad_off: usize,
}

/// Tolerance of one gradient element: the error of p = softmax (relative, from exp2/log2 in
/// f32) and the final rounding to T.
fn grad_tol<T: FloatElement>(scale: f64, p: f64, want: f64) -> f64 {
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
    scale.abs() * (1e-4 * p + 1e-7) + out * want.abs() + sub
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
    if b > 2 {
        // One row of large logits: the max subtraction must keep exp finite.
        for v in &mut z[k..2 * k] {
            *v = T::from_f32(v.to_f32() * 8.0 + 30.0);
        }
    }
    let labels: Vec<u32> = (0..b).map(|_| r.random_range(0..k as u32)).collect();
    let plan = MixPlan::from_parts(&permutation(r, b), &lams(r, b)).unwrap();
    dplan.upload(&plan).unwrap();
    let spec = CeSpec::new(k, c.eps, c.reduction).unwrap();
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
    let want = reference::mixup_ce(&plan, &spec, &z, &labels, host_up).unwrap();
    let targets = reference::soft_targets(&plan, spec.targets(), &labels).unwrap();
    let what = format!(
        "{} B={b} C={k} eps={} {:?} offsets ({}, {})",
        T::DTYPE.name(),
        c.eps,
        c.reduction,
        c.logits_off,
        c.grad_off
    );

    let zs = upload_at(m, &z, c.logits_off, T::from_f32(1.0));
    let ls = m.stream().clone_htod(&labels).unwrap();
    let mut grad = upload_at(m, &vec![T::from_f32(-9.0); n], c.grad_off, T::from_f32(3.0));
    let mut loss = m.stream().clone_htod(&[5.0f32]).unwrap();
    let mut losses = m.stream().clone_htod(&vec![5.0f32; b.max(1)]).unwrap();
    m.mixup_ce(
        dplan,
        &spec,
        &view(&zs, c.logits_off, n),
        &ls.as_view(),
        grad_output,
        // Reduction::None has no reduced loss (as PyTorch): its slot must stay untouched.
        (c.reduction != Reduction::None).then_some(&mut loss.as_view_mut()),
        Some(&mut losses.slice_mut(0..b)),
        &mut view_mut(&mut grad, c.grad_off, n),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    m.check_labels().unwrap();
    let got_loss = m.stream().clone_dtoh(&loss).unwrap()[0] as f64;
    let got_losses: Vec<f64> = m.stream().clone_dtoh(&losses).unwrap()[..b]
        .iter()
        .map(|&v| v as f64)
        .collect();
    let got_grad = download(m, &grad);
    assert!(
        got_grad[..c.grad_off].iter().all(|v| v.to_f32() == 3.0),
        "{what}: wrote before grad"
    );
    assert_eq!(
        got_grad[c.grad_off + n].to_f32(),
        3.0,
        "{what}: wrote after grad"
    );
    let got_grad = widen(&got_grad[c.grad_off..c.grad_off + n]);

    // Per-row losses are O(lse) ~ 40 here; f32 keeps ~1e-6 of that.
    assert_close(
        &format!("{what} losses"),
        &got_losses,
        &want.losses,
        Tol::new(2e-4, 2e-5),
    );
    let sum_tol = 2e-4 * (b as f64).sqrt().max(1.0);
    match want.loss {
        Some(w) => assert_close(
            &format!("{what} loss"),
            &[got_loss],
            &[w],
            Tol::new(sum_tol, 2e-5),
        ),
        None => assert_eq!(
            got_loss, 5.0,
            "{what}: Reduction::None wrote a reduced loss"
        ),
    }
    for (i, &ps) in per_sample.iter().enumerate() {
        let up = match c.reduction {
            Reduction::Mean => 1.0 / b as f64,
            Reduction::Sum => 0.5,
            Reduction::None => ps as f64,
        };
        for j in 0..k {
            let idx = i * k + j;
            let p = want.grad[idx] / up + targets[idx];
            let tol = grad_tol::<T>(up, p, want.grad[idx]);
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

fn classes() -> Vec<usize> {
    vec![
        1, 2, 3, 10, 63, 100, 512, 513, 1000, 1024, 2049, 4097, 32_000, 50_257, 64_000, 128_256,
        256_000,
    ]
}

fn check_dtype<T: FloatElement + cudarc_repr::Repr>(m: &CudaMixer, seed: u64) {
    let mut r = rng(seed);
    let mut dplan = DevicePlan::new(m);
    for k in classes() {
        let batches: &[usize] = if k <= 4097 { &[1, 3, 64] } else { &[1, 3] };
        for &b in batches {
            for (i, reduction) in [Reduction::Mean, Reduction::Sum, Reduction::None]
                .into_iter()
                .enumerate()
            {
                let (logits_off, grad_off) = [(0, 0), (1, 1), (3, 0)][(i + b) % 3];
                run_case::<T>(
                    m,
                    &mut dplan,
                    &mut r,
                    &Case {
                        batch: b,
                        classes: k,
                        eps: if i == 1 { 0.0 } else { 0.1 },
                        reduction,
                        logits_off,
                        grad_off,
                    },
                );
            }
        }
    }
    // Large batches where the warp and block paths pack many rows.
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
                logits_off: 0,
                grad_off: 0,
            },
        );
    }
}

#[test]
fn mixup_ce_f32() {
    if let Some(m) = mixer("mixup_ce_f32") {
        check_dtype::<f32>(&m, 21);
    }
}

#[test]
fn mixup_ce_f16() {
    if let Some(m) = mixer("mixup_ce_f16") {
        check_dtype::<f16>(&m, 22);
    }
}

#[test]
fn mixup_ce_bf16() {
    if let Some(m) = mixer("mixup_ce_bf16") {
        check_dtype::<bf16>(&m, 23);
    }
}

/// Runs the loss twice and in place; returns (loss bits, losses bits, grad bits) of each.
fn bits_of_runs<T: FloatElement + cudarc_repr::Repr>(m: &CudaMixer, b: usize, k: usize, seed: u64) {
    let mut r = rng(seed);
    let z: Vec<T> = random(&mut r, b * k);
    let labels: Vec<u32> = (0..b).map(|_| r.random_range(0..k as u32)).collect();
    let plan = MixPlan::from_parts(&pairs(&mut r, b), &lams(&mut r, b)).unwrap();
    let mut dplan = DevicePlan::new(m);
    dplan.upload(&plan).unwrap();
    let spec = CeSpec::new(k, 0.1, Reduction::Mean).unwrap();
    let zs = m.stream().clone_htod(&z).unwrap();
    let ls = m.stream().clone_htod(&labels).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut grad = m.stream().clone_htod(&vec![T::default(); b * k]).unwrap();
        let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
        let mut losses = m.stream().alloc_zeros::<f32>(b).unwrap();
        m.mixup_ce(
            &dplan,
            &spec,
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
    let mut zi = m.stream().clone_htod(&z).unwrap();
    let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
    m.mixup_ce_in_place(
        &dplan,
        &spec,
        &mut zi.as_view_mut(),
        &ls.as_view(),
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
    let mut lf = m.stream().alloc_zeros::<f32>(1).unwrap();
    let mut lsf = m.stream().alloc_zeros::<f32>(b).unwrap();
    m.mixup_ce_forward(
        &dplan,
        &spec,
        &zs.as_view(),
        &ls.as_view(),
        Some(&mut lf.as_view_mut()),
        Some(&mut lsf.as_view_mut()),
    )
    .unwrap();
    let f: Vec<f64> = m
        .stream()
        .clone_dtoh(&lsf)
        .unwrap()
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
    // Sum over no sample is 0.
    m.mixup_ce_forward(
        &dplan,
        &CeSpec::new(4, 0.0, Reduction::Sum).unwrap(),
        &z.slice(0..0),
        &ls.slice(0..0),
        Some(&mut loss.as_view_mut()),
        None,
    )
    .unwrap();
    assert_eq!(m.stream().clone_dtoh(&loss).unwrap(), vec![0.0]);
    // Mean over no sample is refused.
    assert!(matches!(
        m.mixup_ce_forward(
            &dplan,
            &CeSpec::new(4, 0.0, Reduction::Mean).unwrap(),
            &z.slice(0..0),
            &ls.slice(0..0),
            Some(&mut loss.as_view_mut()),
            None
        ),
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
    // A per-sample grad_output needs Reduction::None.
    assert!(matches!(
        m.mixup_ce(
            &dplan,
            &CeSpec::new(4, 0.0, Reduction::Mean).unwrap(),
            &z.as_view(),
            &ls.as_view(),
            DeviceGradOutput::PerSample(ups.as_view()),
            Some(&mut loss.as_view_mut()),
            None,
            &mut grad.as_view_mut()
        ),
        Err(MixError::InvalidArgument {
            what: "grad_output",
            ..
        })
    ));
    assert!(matches!(
        m.mixup_ce(
            &dplan,
            &CeSpec::new(4, 0.0, Reduction::Mean).unwrap(),
            &z.as_view(),
            &ls.as_view(),
            DeviceGradOutput::Scalar(f32::NAN),
            Some(&mut loss.as_view_mut()),
            None,
            &mut grad.as_view_mut()
        ),
        Err(MixError::InvalidArgument {
            what: "grad_output",
            ..
        })
    ));
    assert!(matches!(
        m.mixup_ce(
            &dplan,
            &CeSpec::new(3, 0.0, Reduction::Mean).unwrap(),
            &z.as_view(),
            &ls.as_view(),
            DeviceGradOutput::Scalar(1.0),
            Some(&mut loss.as_view_mut()),
            None,
            &mut grad.as_view_mut()
        ),
        Err(MixError::LengthMismatch { what: "logits", .. })
    ));
    assert!(matches!(
        m.mixup_ce(
            &dplan,
            &CeSpec::new(4, 0.0, Reduction::Mean).unwrap(),
            &z.as_view(),
            &ls.as_view(),
            DeviceGradOutput::Scalar(1.0),
            Some(&mut loss.as_view_mut()),
            None,
            &mut grad.slice_mut(0..7)
        ),
        Err(MixError::LengthMismatch { what: "grad", .. })
    ));
    assert!(matches!(
        m.mixup_ce(
            &dplan,
            &CeSpec::new(4, 1.5, Reduction::Mean).unwrap(),
            &z.as_view(),
            &ls.as_view(),
            DeviceGradOutput::Scalar(1.0),
            Some(&mut loss.as_view_mut()),
            None,
            &mut grad.as_view_mut()
        ),
        Err(MixError::InvalidConfig { .. })
    ));
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
        let z: Vec<f32> = random(&mut r, b * k);
        let labels: Vec<u32> = (0..b).map(|_| r.random_range(0..k as u32)).collect();
        let plan = MixPlan::from_parts(&pairs(&mut r, b), &lams(&mut r, b)).unwrap();
        let mut dplan = DevicePlan::new(&m);
        dplan.upload(&plan).unwrap();
        let spec = CeSpec::new(k, 0.1, Reduction::Mean).unwrap();
        let want = reference::mixup_ce(&plan, &spec, &z, &labels, GradOutput::Scalar(1.0)).unwrap();
        let zs = m.stream().clone_htod(&z).unwrap();
        let ls = m.stream().clone_htod(&labels).unwrap();
        let mut loss = m.stream().alloc_zeros::<f32>(1).unwrap();
        let mut grad = m.stream().alloc_zeros::<f32>(b * k).unwrap();
        m.mixup_ce(
            &dplan,
            &spec,
            &zs.as_view(),
            &ls.as_view(),
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
