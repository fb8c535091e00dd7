//! The burn integration: the losses' gradients through `loss.backward()` over a few training
//! steps against the f64 reference, a burn `Linear` trained with burn's SGD, every mixing entry
//! point against the CPU path, and the errors for inputs that do not fit (never a panic).
#![cfg(feature = "burn")]

mod common;

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use common::{Tol, assert_close, fastai_sampler, image, mixed_plan, pseudo_random};
use mixup_kernels::burn::{
    mix_images, mix_rows, mixup_binary_cross_entropy, mixup_cross_entropy, soft_targets,
};
use mixup_kernels::{
    BceSpec, CeSpec, GradOutput, MemoryFormat, MixConfig, MixError, MixPlan, Reduction,
    SampleShape, Sampler, TargetSpec, cpu, reference,
};

/// Step 0 of timm's sampler for `c` classes (seed `seed`), a batch of `b`.
fn timm_plan(c: usize, seed: u64, b: usize) -> MixPlan {
    Sampler::new(MixConfig::timm(c), seed)
        .unwrap()
        .plan(0, b)
        .unwrap()
}

fn device() -> Device {
    Device::flex()
}

fn host_f64<const D: usize>(t: &Tensor<D>) -> Vec<f64> {
    t.to_data().iter::<f64>().collect()
}

fn host_f32<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().iter::<f32>().collect()
}

/// Tolerances for a value computed in f32 and rounded once to `dtype`.
fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-6, 1e-5),
        DType::F16 => (1e-6, 1.5e-3),
        DType::BF16 => (1e-6, 1.2e-2),
        _ => unreachable!(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Loss {
    Ce,
    Bce,
}

/// Trains `logits` directly (as if they were the model) for a few SGD steps on an autodiff
/// device; at each step the gradient `backward()` gives must equal the f64 reference gradient
/// for the stored logits, with the upstream gradient 1 or `upstream` (a scaled loss, or weighted
/// per-sample losses).
fn train_steps(loss_kind: Loss, dtype: DType, reduction: Reduction, upstream: Option<f32>) {
    let dev = device().autodiff();
    let (b, c) = (7, 11);
    let labels: Vec<i64> = (0..b as i64).map(|i| (i * 5 + 3) % c as i64).collect();
    let labels_t = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [b]), &dev);
    let init = TensorData::new(pseudo_random(b * c, 1, 4.0), [b, c]);
    let mut logits = Tensor::<2>::from_data(init, (&dev, dtype)).require_grad();
    let smoothing = 0.1;
    let sampler = fastai_sampler(c, smoothing, 9);
    let ce = CeSpec::new(c, smoothing, reduction).unwrap();
    let bce = BceSpec::new(c, smoothing, reduction)
        .unwrap()
        .with_target_threshold(0.2)
        .unwrap();
    let (abs, rel) = tol(dtype);
    for step in 0..4 {
        let plan = sampler.plan(step, b).unwrap();
        let loss = match loss_kind {
            Loss::Ce => mixup_cross_entropy(&plan, &ce, logits.clone(), labels_t.clone()),
            Loss::Bce => mixup_binary_cross_entropy(&plan, &bce, logits.clone(), labels_t.clone()),
        }
        .unwrap();
        let n = if reduction == Reduction::None { b } else { 1 };
        assert_eq!((loss.dims(), loss.dtype()), ([n], DType::F32));
        let z = host_f32(&logits);
        let weights: Vec<f32> = match upstream {
            None => vec![1.0; n],
            Some(s) => (0..n).map(|i| s + i as f32 * 0.5).collect(),
        };
        let w = Tensor::<1>::from_data(TensorData::new(weights.clone(), [n]), &dev);
        let root = (loss.clone() * w).sum();
        let up = if reduction == Reduction::None {
            GradOutput::PerSample(&weights)
        } else {
            GradOutput::Scalar(weights[0])
        };
        let (want_grad, want_loss) = match loss_kind {
            Loss::Ce => {
                let r = reference::mixup_ce(&plan, &ce, &z, &labels, up).unwrap();
                (r.grad, r.loss.map_or(r.losses, |l| vec![l]))
            }
            Loss::Bce => {
                let r = reference::mixup_bce(&plan, &bce, &z, &labels, up).unwrap();
                (r.grad, r.loss.map_or(r.losses, |l| vec![l]))
            }
        };
        let grads = root.backward();
        let g = logits.grad(&grads).expect("logits have a gradient");
        assert_eq!((g.dims(), g.dtype()), ([b, c], dtype));
        let what = format!("{loss_kind:?} {dtype:?} {reduction:?} up={upstream:?} step {step}");
        // The stored gradient is rounded to the dtype once, then multiplied by the upstream.
        assert_close(
            &format!("{what} grad"),
            &host_f64(&g),
            &want_grad,
            Tol::new(abs, rel * 2.0),
        );
        assert_close(
            &format!("{what} loss"),
            &host_f64(&loss),
            &want_loss,
            Tol::new(1e-5, 1e-5),
        );
        // One SGD step so the next step sees other logits.
        logits = (logits.detach() - g * 0.5).detach().require_grad();
    }
}

#[test]
fn ce_backward_matches_reference_all_dtypes_and_reductions() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            train_steps(Loss::Ce, dtype, reduction, None);
        }
    }
}

#[test]
fn ce_backward_scales_by_the_upstream_gradient() {
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        train_steps(Loss::Ce, DType::F32, reduction, Some(0.75));
    }
}

#[test]
fn bce_backward_matches_reference() {
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        train_steps(Loss::Bce, DType::F32, reduction, None);
        train_steps(Loss::Bce, DType::F32, reduction, Some(2.5));
    }
    train_steps(Loss::Bce, DType::BF16, Reduction::Mean, None);
}

/// A burn `Linear` trained with burn's SGD on mixed inputs: `loss.backward()` reaches the
/// weights, and the weight gradient equals `xᵀ · G` with `G` the reference logits gradient.
#[test]
fn linear_model_trains_with_burn_sgd() {
    let dev = device().autodiff();
    let (b, side, c) = (8, 4, 5);
    let mut model = LinearConfig::new(side * side, c).init(&dev);
    let mut optim = SgdConfig::new().init();
    let config = MixConfig::fastai_v2_cutmix(c);
    let spec = config.ce_spec(Reduction::Mean).unwrap();
    let sampler = Sampler::new(config, 3).unwrap();
    let images = Tensor::<4>::from_data(
        TensorData::new(pseudo_random(b * side * side, 4, 1.0), [b, 1, side, side]),
        &dev,
    );
    let labels: Vec<i64> = (0..b as i64).map(|i| i % c as i64).collect();
    let labels_t = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [b]), &dev);
    let mut losses = Vec::new();
    for step in 0..20u64 {
        let plan = sampler.plan_images(step % 2, b, image(side, side)).unwrap();
        let x = mix_images(&plan, MemoryFormat::ChannelsFirst, images.clone())
            .unwrap()
            .flatten::<2>(1, 3);
        let logits = model.forward(x.clone());
        let z = host_f32(&logits);
        let loss = mixup_cross_entropy(&plan, &spec, logits, labels_t.clone()).unwrap();
        losses.push(host_f32(&loss)[0]);
        let grads = loss.backward();
        let wg = model
            .weight
            .grad(&grads)
            .expect("the weight has a gradient");
        let r = reference::mixup_ce(&plan, &spec, &z, &labels, GradOutput::Scalar(1.0)).unwrap();
        let xs = host_f64(&x);
        let k = side * side;
        let want: Vec<f64> = (0..k * c)
            .map(|ij| {
                let (i, j) = (ij / c, ij % c);
                (0..b).map(|s| xs[s * k + i] * r.grad[s * c + j]).sum()
            })
            .collect();
        assert_close("weight grad", &host_f64(&wg), &want, Tol::new(1e-5, 1e-4));
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(0.5, model, grads);
    }
    // Steps 0 and 1 repeat: the loss of the same plan goes down.
    assert!(
        losses[18] < losses[0] && losses[19] < losses[1],
        "{losses:?}"
    );
    assert!(model.num_params() > 0);
}

#[test]
fn evaluation_without_autodiff_gives_the_same_loss() {
    let (b, c) = (6, 9);
    let plan = timm_plan(c, 1, b);
    let spec = CeSpec::new(c, 0.1, Reduction::None).unwrap();
    let data = TensorData::new(pseudo_random(b * c, 2, 3.0), [b, c]);
    let labels = TensorData::new(vec![0i64, 8, 3, 3, 1, 5], [b]);
    let mut out = Vec::new();
    for dev in [device(), device().autodiff()] {
        let logits = Tensor::<2>::from_data(data.clone(), &dev);
        let labels = Tensor::<1, Int>::from_data(labels.clone(), &dev);
        let loss = mixup_cross_entropy(&plan, &spec, logits, labels).unwrap();
        assert_eq!(loss.device(), dev);
        out.push(host_f32(&loss));
    }
    let z: Vec<f32> = data.iter::<f32>().collect();
    let r = reference::mixup_ce(
        &plan,
        &spec,
        &z,
        &[0u32, 8, 3, 3, 1, 5],
        GradOutput::PerSample(&[1.0; 6]),
    )
    .unwrap();
    assert_eq!(out[0], out[1]);
    let got: Vec<f64> = out[0].iter().map(|&v| f64::from(v)).collect();
    assert_close("losses", &got, &r.losses, Tol::new(1e-5, 1e-5));
}

/// Asserts that `y` holds the CPU path's mix of `before` (stored as `T`), bit for bit.
fn assert_cpu_mix<T>(
    what: &str,
    (plan, shape): (&MixPlan, &SampleShape),
    before: &TensorData,
    y: &Tensor<4>,
) where
    T: mixup_kernels::Element + burn::tensor::Element + std::fmt::Debug + PartialEq,
{
    let xs = before.try_to_vec::<T>().unwrap();
    let mut want = vec![T::from_f32(0.0); xs.len()];
    cpu::mix(plan, shape, &xs, &mut want).unwrap();
    assert_eq!(y.to_data().try_to_vec::<T>().unwrap(), want, "{what}");
}

/// `mix_images` gives the CPU path's bits, in both layouts and every float dtype, on the plain
/// and the autodiff device; the input is left alone.
#[test]
fn mix_images_matches_the_cpu_path() {
    let (b, ch, h, w) = (5, 3, 7, 6);
    // timm's flip (an involution: mixed in place on the host copy) with CutMix boxes, and a
    // cycle (mixed into a new buffer).
    let flip = mixed_plan(b, h, w, 3);
    let cycle = MixPlan::from_parts(&[1, 2, 3, 4, 0], &[0.3, 0.6, 0.9, 0.5, 1.0]).unwrap();
    assert!(flip.is_involution() && !cycle.is_involution());
    let raw = pseudo_random(b * ch * h * w, 6, 1.0);
    for (dev, plan) in [
        (device(), &flip),
        (device().autodiff(), &flip),
        (device(), &cycle),
    ] {
        for format in [MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast] {
            let (dims, shape) = match format {
                MemoryFormat::ChannelsFirst => {
                    ([b, ch, h, w], SampleShape::channels_first(ch, h, w))
                }
                MemoryFormat::ChannelsLast => ([b, h, w, ch], SampleShape::channels_last(h, w, ch)),
            };
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let x = Tensor::<4>::from_data(TensorData::new(raw.clone(), dims), (&dev, dtype));
                let before = x.to_data();
                let y = mix_images(plan, format, x.clone()).unwrap();
                assert_eq!(
                    (y.dims(), y.dtype(), y.device()),
                    (dims, dtype, dev.clone())
                );
                let what = format!("{format:?} {dtype:?}");
                match dtype {
                    DType::F32 => {
                        let mut want = vec![0f32; raw.len()];
                        cpu::mix(plan, &shape, &raw, &mut want).unwrap();
                        assert_eq!(y.to_data().try_to_vec::<f32>().unwrap(), want, "{what}");
                    }
                    DType::F16 => {
                        assert_cpu_mix::<mixup_kernels::f16>(&what, (plan, &shape), &before, &y)
                    }
                    _ => assert_cpu_mix::<mixup_kernels::bf16>(&what, (plan, &shape), &before, &y),
                }
                assert_eq!(x.to_data(), before, "{what}: the input changed");
                // ... and the f64 reference agrees.
                let stored: Vec<f32> = before.iter::<f32>().collect();
                let (abs, rel) = tol(dtype);
                assert_close(
                    &what,
                    &host_f64(&y),
                    &reference::mix(plan, &shape, &stored).unwrap(),
                    Tol::new(abs, rel),
                );
            }
        }
    }
}

#[test]
fn mix_rows_and_soft_targets_match_the_cpu_path() {
    let dev = device();
    let plan = mixed_plan(6, 4, 4, 8);
    let spec = TargetSpec::new(10, 0.1).unwrap();
    let labels: Vec<u32> = vec![1, 9, 3, 3, 0, 7];
    let lt = Tensor::<1, Int>::from_data(
        TensorData::new(
            labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>(),
            [6],
        ),
        &dev,
    );
    let mut want = vec![0f32; 60];
    cpu::soft_targets(&plan, &spec, &labels, &mut want).unwrap();
    let t = soft_targets(&plan, &spec, lt.clone(), DType::F32).unwrap();
    assert_eq!((t.dims(), t.dtype()), ([6, 10], DType::F32));
    assert_eq!(t.to_data().try_to_vec::<f32>().unwrap(), want);
    let exact = reference::soft_targets(&plan, &spec, &labels).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let t = soft_targets(&plan, &spec, lt.clone(), dtype).unwrap();
        assert_eq!(t.dtype(), dtype);
        let (abs, rel) = tol(dtype);
        assert_close(
            &format!("targets {dtype:?}"),
            &host_f64(&t),
            &exact,
            Tol::new(abs, rel),
        );
    }
    // Rows of any rank ≥ 1: [6, 2, 5] is six rows of 10.
    let raw = pseudo_random(60, 9, 1.0);
    let x = Tensor::<3>::from_data(TensorData::new(raw.clone(), [6, 2, 5]), &dev);
    let y = mix_rows(&plan, x).unwrap();
    assert_eq!(y.dims(), [6, 2, 5]);
    let mut want = vec![0f32; 60];
    cpu::mix(&plan, &SampleShape::rows(10), &raw, &mut want).unwrap();
    assert_eq!(y.to_data().try_to_vec::<f32>().unwrap(), want);
}

#[track_caller]
fn expect_err<T: std::fmt::Debug>(r: Result<T, MixError>, what: &str) -> MixError {
    let e = r.expect_err(what);
    assert!(!e.to_string().is_empty());
    e
}

#[test]
fn bad_inputs_give_errors_not_panics() {
    let dev = device().autodiff();
    let (b, c) = (4, 3);
    let plan = MixPlan::from_parts(&[1, 0, 3, 2], &[0.6; 4]).unwrap();
    let spec = CeSpec::new(c, 0.0, Reduction::Mean).unwrap();
    let bce = BceSpec::new(c, 0.0, Reduction::Mean).unwrap();
    let logits = || Tensor::<2>::zeros([b, c], &dev).require_grad();
    let labels =
        |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v.clone(), [v.len()]), &dev);
    let ok = || labels(vec![0, 1, 2, 0]);

    // Class count other than the spec's.
    let e = expect_err(
        mixup_cross_entropy(&plan, &spec, Tensor::<2>::zeros([b, c + 1], &dev), ok()),
        "classes",
    );
    assert!(
        matches!(e, MixError::InvalidArgument { what: "logits", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("[4, 4]"), "{e}");
    // A plan for another batch.
    let e = expect_err(
        mixup_cross_entropy(
            &plan,
            &spec,
            Tensor::<2>::zeros([b + 1, c], &dev),
            labels(vec![0; 5]),
        ),
        "batch",
    );
    assert_eq!(
        e,
        MixError::BatchMismatch {
            what: "logits",
            plan: 4,
            data: 5
        }
    );
    // Labels of another length than the logits.
    let e = expect_err(
        mixup_cross_entropy(&plan, &spec, logits(), labels(vec![0; 3])),
        "labels len",
    );
    assert!(
        matches!(e, MixError::InvalidArgument { what: "labels", .. }),
        "{e}"
    );
    // Labels out of range, and negative, for both losses.
    for bad in [3i64, -1] {
        let e = expect_err(
            mixup_cross_entropy(&plan, &spec, logits(), labels(vec![0, bad, 2, 0])),
            "label range",
        );
        assert_eq!(
            e,
            MixError::LabelOutOfRange {
                index: 1,
                label: bad,
                num_classes: 3
            }
        );
        let e = expect_err(
            mixup_binary_cross_entropy(&plan, &bce, logits(), labels(vec![0, bad, 2, 0])),
            "bce label range",
        );
        assert!(matches!(e, MixError::LabelOutOfRange { .. }), "{e}");
    }
    // Logits of an unsupported dtype.
    let f64_logits = Tensor::<2>::zeros([b, c], (&dev, DType::F64));
    let e = expect_err(mixup_cross_entropy(&plan, &spec, f64_logits, ok()), "dtype");
    assert!(e.to_string().contains("F64"), "{e}");
    // A spec other than the plan's.
    let drawn = timm_plan(c, 0, b);
    let other = CeSpec::new(c, 0.3, Reduction::Mean).unwrap();
    expect_err(mixup_cross_entropy(&drawn, &other, logits(), ok()), "spec");
    // A spec for another class count than the plan's: the spec is named, not the (right) logits.
    let five = CeSpec::new(5, 0.1, Reduction::Mean).unwrap();
    let e = expect_err(mixup_cross_entropy(&drawn, &five, logits(), ok()), "spec C");
    assert!(
        matches!(e, MixError::InvalidArgument { what: "spec", .. }),
        "{e}"
    );
    // Images: a plan for another image size, with the memory-format hint.
    let boxed = mixed_plan(4, 6, 5, 1);
    let nhwc = Tensor::<4>::zeros([4, 6, 5, 3], &dev);
    let e = expect_err(
        mix_images(&boxed, MemoryFormat::ChannelsFirst, nhwc),
        "format",
    );
    assert!(e.to_string().contains("memory format"), "{e}");
    let e = expect_err(
        mix_images(
            &boxed,
            MemoryFormat::ChannelsFirst,
            Tensor::<4>::zeros([5, 3, 6, 5], &dev),
        ),
        "image batch",
    );
    assert_eq!(
        e,
        MixError::BatchMismatch {
            what: "images",
            plan: 4,
            data: 5
        }
    );
    // Rows of another batch; soft targets of an int dtype.
    expect_err(
        mix_rows(&plan, Tensor::<2>::zeros([3, 2], &dev)),
        "rows batch",
    );
    let e = expect_err(
        soft_targets(&plan, &TargetSpec::new(c, 0.0).unwrap(), ok(), DType::I32),
        "targets dtype",
    );
    assert!(
        matches!(e, MixError::InvalidArgument { what: "dtype", .. }),
        "{e}"
    );
    // After all that, a valid call still works.
    mixup_cross_entropy(&plan, &spec, logits(), ok())
        .unwrap()
        .backward();
}

/// Per-call cost of the burn ops against the CPU kernels they wrap, on `Flex` (not a check:
/// `cargo test --release --features burn --test burn -- --ignored --nocapture per_call_cost`).
#[test]
#[ignore = "a timing, not a check: run with --ignored --nocapture"]
fn per_call_cost() {
    use std::time::Instant;
    let dev = device().autodiff();
    let time = |f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        for _ in 0..20 {
            f();
        }
        t.elapsed().as_secs_f64() / 20.0 * 1e6
    };
    let (b, c) = (256, 1000);
    let plan = timm_plan(c, 0, b);
    let spec = MixConfig::timm(c).ce_spec(Reduction::Mean).unwrap();
    let z = pseudo_random(b * c, 3, 4.0);
    let labels: Vec<u32> = (0..b as u32).map(|i| i % c as u32).collect();
    let li: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    let mut grad = vec![0f32; b * c];
    let kernel = time(&mut || {
        cpu::mixup_ce(
            &plan,
            &spec,
            &z,
            &labels,
            GradOutput::Scalar(1.0),
            None,
            &mut grad,
        )
        .unwrap();
    });
    let logits = Tensor::<2>::from_data(TensorData::new(z.clone(), [b, c]), &dev).require_grad();
    let lt = Tensor::<1, Int>::from_data(TensorData::new(li, [b]), &dev);
    let fwd = time(&mut || {
        let _ = mixup_cross_entropy(&plan, &spec, logits.clone(), lt.clone()).unwrap();
    });
    let fwd_bwd = time(&mut || {
        let l = mixup_cross_entropy(&plan, &spec, logits.clone(), lt.clone()).unwrap();
        let _ = logits.grad(&l.backward());
    });
    println!(
        "CE {b}x{c} f32: cpu::mixup_ce {kernel:.0} µs; burn forward (loss + kept grad) {fwd:.0} µs; forward + backward {fwd_bwd:.0} µs"
    );
    let (ch, side) = (3, 224);
    let n = 64 * ch * side * side;
    let plan = timm_plan(c, 0, 64);
    let shape = SampleShape::channels_first(ch, side, side);
    let x = pseudo_random(n, 5, 1.0);
    let mut out = vec![0f32; n];
    let kernel = time(&mut || cpu::mix(&plan, &shape, &x, &mut out).unwrap());
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [64, ch, side, side]), &device());
    let op = time(&mut || {
        let _ = mix_images(&plan, MemoryFormat::ChannelsFirst, xt.clone()).unwrap();
    });
    println!("mix 64x3x224x224 f32: cpu::mix {kernel:.0} µs; burn mix_images {op:.0} µs");
}

/// burn's CUDA backend (feature `burn-cuda`, run when a GPU is lent): mixing, soft targets and
/// both losses' gradients through `backward()` on `Device::cuda(0)` equal the Flex results.
/// Skips (printing why) where `check_cuda` finds no device.
#[cfg(feature = "burn-cuda")]
#[test]
fn cuda_backend_matches_flex() {
    if !cuda_or_skip("cuda_backend_matches_flex") {
        return;
    }
    matches_flex(Device::cuda(0));
}

/// Whether device 0 can run the CUDA tests; without one, prints `SKIPPED: <test>` and the reason,
/// or fails under `MIXUP_REQUIRE_GPU=1` (the GPU script sets it), as tests/cuda_common does.
#[cfg(feature = "burn-cuda")]
fn cuda_or_skip(test: &str) -> bool {
    match mixup_kernels::check_cuda(0) {
        Ok(()) => true,
        Err(e) if std::env::var("MIXUP_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("MIXUP_REQUIRE_GPU=1 but no usable GPU: {e}")
        }
        Err(e) => {
            println!("SKIPPED: {test}: no CUDA device ({e})");
            false
        }
    }
}

/// burn's CUDA backend without a copy (feature `burn-cuda`, a GPU): every op runs the crate's
/// kernels on the tensors' own device memory (`device_calls` counts those calls; the host
/// round trip does not count), for f32, f16 and bf16, a strided (transposed) input, a slice of a
/// larger tensor (a view at an offset), u8 pixels through `mix_normalize`, a loss on a device
/// without autodiff and a tracked one in every dtype, and the results equal Flex's (the dtype's
/// tolerance). Each op's count of kernel calls and of inputs copied first (`device_copies`:
/// padded rows, dense tensors and aligned slices are read in place) is checked after all the
/// results, so a wrong count does not hide a wrong result.
#[cfg(feature = "burn-cuda")]
#[test]
fn cuda_ops_run_on_device_memory() {
    use mixup_kernels::Normalize;
    use mixup_kernels::burn::{device_calls, device_copies, mix_normalize};
    if !cuda_or_skip("cuda_ops_run_on_device_memory") {
        return;
    }
    let counts = std::cell::RefCell::new(Vec::<String>::new());
    let (b, c, h, w, ch) = (7, 13, 5, 9, 3);
    // Drawn for timm's 10 classes; the specs below are the test's own (13 classes).
    let plan = mixed_plan(b, h, w, 5).with_targets(None);
    let cuda = Device::cuda(0);
    let labels = TensorData::new(vec![1i64, 12, 3, 3, 0, 7, 5], [b]);
    let first = MemoryFormat::ChannelsFirst;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let (abs, rel) = tol(dtype);
        let close = |what: &str, got: &[f64], want: &[f64]| {
            assert_close(&format!("{what} {dtype:?}"), got, want, Tol::new(abs, rel))
        };
        // One op on both devices: (CUDA result, Flex result); the op ran on the device, with
        // `want` = (kernel calls, inputs copied first), recorded in `counts` if not.
        let both = |what: &str, want: (usize, usize), f: &dyn Fn(&Device) -> Vec<f64>| {
            let before = (device_calls(), device_copies());
            let got = f(&cuda);
            assert!(
                device_calls() > before.0,
                "{what} {dtype:?}: the op took the host path"
            );
            let seen = (device_calls() - before.0, device_copies() - before.1);
            if seen != want {
                counts.borrow_mut().push(format!(
                    "{what} {dtype:?}: (calls, copies) {seen:?}, expected {want:?}"
                ));
            }
            (got, f(&device()))
        };
        // Mixing a transposed view ([B, C, W, H] read as strided): made contiguous on the device.
        let raw = TensorData::new(pseudo_random(b * ch * w * h, 11, 1.0), [b, ch, w, h]);
        let (g, f) = both("mix_images (strided)", (1, 1), &|d| {
            let x = Tensor::<4>::from_data(raw.clone(), (d, dtype)).swap_dims(2, 3);
            host_f64(&mix_images(&plan, first, x).unwrap())
        });
        close("mix_images (strided)", &g, &f);
        // Tensors as burn stores them: 9-wide rows (channels-first) and 3 channels
        // (channels-last) padded by cubecl, read in place.
        let nchw = TensorData::new(pseudo_random(b * ch * h * w, 14, 1.0), [b, ch, h, w]);
        let (g, f) = both("mix_images (padded rows)", (1, 0), &|d| {
            let x = Tensor::<4>::from_data(nchw.clone(), (d, dtype));
            host_f64(&mix_images(&plan, first, x).unwrap())
        });
        close("mix_images (padded rows)", &g, &f);
        let nhwc = TensorData::new(pseudo_random(b * h * w * ch, 15, 1.0), [b, h, w, ch]);
        let (g, f) = both("mix_images (channels-last, padded rows)", (1, 0), &|d| {
            let x = Tensor::<4>::from_data(nhwc.clone(), (d, dtype));
            host_f64(&mix_images(&plan, MemoryFormat::ChannelsLast, x).unwrap())
        });
        close("mix_images (channels-last, padded rows)", &g, &f);
        // Rows: [B, 20] read in place (padded), [B, 4, 5] mixed as rows of 20 (made dense).
        let flat = TensorData::new(pseudo_random(b * 20, 12, 2.0), [b, 20]);
        let (g, f) = both("mix_rows (padded rows)", (1, 0), &|d| {
            let x = Tensor::<2>::from_data(flat.clone(), (d, dtype));
            host_f64(&mix_rows(&plan, x).unwrap())
        });
        close("mix_rows (padded rows)", &g, &f);
        let rows = TensorData::new(pseudo_random(b * 20, 12, 2.0), [b, 4, 5]);
        let (g, f) = both("mix_rows", (1, 1), &|d| {
            let x = Tensor::<3>::from_data(rows.clone(), (d, dtype));
            host_f64(&mix_rows(&plan, x).unwrap())
        });
        close("mix_rows", &g, &f);
        let (g, f) = both("soft_targets", (1, 0), &|d| {
            let y = Tensor::<1, Int>::from_data(labels.clone(), d);
            let spec = TargetSpec::new(c, 0.1).unwrap();
            host_f64(&soft_targets(&plan, &spec, y, dtype).unwrap())
        });
        close("soft_targets", &g, &f);
        // Losses: evaluation (no autodiff), then tracked with the gradient through backward().
        let z = TensorData::new(pseudo_random(b * c, 13, 3.0), [b, c]);
        for reduction in [Reduction::Mean, Reduction::None] {
            let ce = CeSpec::new(c, 0.1, reduction).unwrap();
            let bce = BceSpec::new(c, 0.0, reduction).unwrap();
            let (g, f) = both("losses without autodiff", (2, 0), &|d| {
                let x = Tensor::<2>::from_data(z.clone(), (d, dtype));
                let y = Tensor::<1, Int>::from_data(labels.clone(), d);
                let mut v =
                    host_f64(&mixup_cross_entropy(&plan, &ce, x.clone(), y.clone()).unwrap());
                v.extend(host_f64(
                    &mixup_binary_cross_entropy(&plan, &bce, x, y).unwrap(),
                ));
                v
            });
            close("losses without autodiff", &g, &f);
            // Each loss's gradient through its own backward(), so each is one rounding to dtype.
            let (g, f) = both("losses and gradients", (2, 0), &|d| {
                let ad = d.clone().autodiff();
                let y = Tensor::<1, Int>::from_data(labels.clone(), &ad);
                let x = Tensor::<2>::from_data(z.clone(), (&ad, dtype)).require_grad();
                let l1 = mixup_cross_entropy(&plan, &ce, x.clone(), y.clone()).unwrap();
                let mut v = host_f64(&l1);
                v.extend(host_f64(&x.grad(&(l1.sum() * 2.0).backward()).unwrap()));
                let x = Tensor::<2>::from_data(z.clone(), (&ad, dtype)).require_grad();
                let l2 = mixup_binary_cross_entropy(&plan, &bce, x.clone(), y).unwrap();
                v.extend(host_f64(&l2));
                v.extend(host_f64(&x.grad(&l2.sum().backward()).unwrap()));
                v
            });
            close("losses and gradients", &g, &f);
        }
        // A slice of a larger tensor at a row offset of 1024 bytes (a multiple of cubecl's
        // allocation alignment, so burn keeps it as a view at an offset): read in place.
        let wide = 1024 / dtype.size();
        let big = TensorData::new(pseudo_random((b + 1) * wide, 17, 2.0), [b + 1, wide]);
        let sliced =
            |d: &Device| Tensor::<2>::from_data(big.clone(), (d, dtype)).slice([1..b + 1, 0..wide]);
        let (g, f) = both("mix_rows (slice)", (1, 0), &|d| {
            host_f64(&mix_rows(&plan, sliced(d)).unwrap())
        });
        close("mix_rows (slice)", &g, &f);
        let ce_wide = CeSpec::new(wide, 0.1, Reduction::None).unwrap();
        let (g, f) = both("mixup_cross_entropy (slice)", (1, 0), &|d| {
            let y = Tensor::<1, Int>::from_data(labels.clone(), d);
            host_f64(&mixup_cross_entropy(&plan, &ce_wide, sliced(d), y).unwrap())
        });
        close("mixup_cross_entropy (slice)", &g, &f);
        // u8 pixels channels-last into the model's input, channels-first, of `dtype`.
        let px: Vec<u8> = (0..b * h * w * ch).map(|i| (i * 37 % 256) as u8).collect();
        let norm = Normalize::imagenet_u8();
        let (g, f) = both("mix_normalize u8", (1, 0), &|d| {
            let p = TensorData::new(px.clone(), [b, h, w, ch]);
            let p = Tensor::<4, Int>::from_data(p, (d, DType::U8));
            let last = MemoryFormat::ChannelsLast;
            host_f64(&mix_normalize(&plan, last, &norm, p, first, dtype).unwrap())
        });
        close("mix_normalize u8", &g, &f);
        // Dense inputs, rows cubecl leaves unpadded (8 f32 = 32 bytes, 8 f16/bf16 = 16; 16 u8
        // pixels = 16 bytes): read as dense, not as padded rows.
        let (hd, wd) = (5, 8);
        let dense_plan = mixed_plan(b, hd, wd, 6).with_targets(None);
        let xd = TensorData::new(pseudo_random(b * ch * hd * wd, 16, 1.0), [b, ch, hd, wd]);
        let (g, f) = both("mix_images (dense rows)", (1, 0), &|d| {
            let x = Tensor::<4>::from_data(xd.clone(), (d, dtype));
            host_f64(&mix_images(&dense_plan, first, x).unwrap())
        });
        close("mix_images (dense rows)", &g, &f);
        let (hu, wu) = (3, 16);
        let u8_plan = mixed_plan(b, hu, wu, 7).with_targets(None);
        let pd: Vec<u8> = (0..b * ch * hu * wu)
            .map(|i| (i * 53 % 256) as u8)
            .collect();
        let (g, f) = both("mix_normalize u8 (dense rows)", (1, 0), &|d| {
            let p = TensorData::new(pd.clone(), [b, ch, hu, wu]);
            let p = Tensor::<4, Int>::from_data(p, (d, DType::U8));
            host_f64(&mix_normalize(&u8_plan, first, &norm, p, first, dtype).unwrap())
        });
        close("mix_normalize u8 (dense rows)", &g, &f);
    }
    let counts = counts.into_inner();
    assert!(counts.is_empty(), "{}", counts.join("\n"));
}

/// burn's wgpu backend behind its `fusion` wrapper (feature `burn-wgpu`, which turns on burn's
/// `wgpu` and `fusion`): the same checks as on CUDA. The backend is `Fusion<CubeBackend>`, the
/// type burn's CUDA backend also has, so this runs the generic (non-Flex) loss path and the
/// host round trip through fusion's `into_data` on any machine with a Vulkan driver; on a
/// machine without a GPU, Mesa's CPU driver (lavapipe, Debian `mesa-vulkan-drivers`) serves.
/// Skips (printing why) where wgpu finds no adapter (burn panics creating the device).
#[cfg(feature = "burn-wgpu")]
#[test]
fn wgpu_fusion_backend_matches_flex() {
    let dev = Device::from(burn::backend::wgpu::WgpuDevice::default());
    let probe = dev.clone();
    if let Err(e) = std::panic::catch_unwind(move || Tensor::<1>::zeros([1], &probe).into_data()) {
        let why = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        println!("skipped: no wgpu adapter ({why}); Debian: apt-get install mesa-vulkan-drivers");
        return;
    }
    matches_flex(dev);
}

/// Mixing, soft targets, both losses and the logits' gradient through `backward()` on `dev`
/// equal Flex's (1e-6 abs + 1e-5 rel).
#[cfg(any(feature = "burn-cuda", feature = "burn-wgpu"))]
fn matches_flex(dev: Device) {
    let (b, c, h, w) = (6, 10, 5, 4);
    let plan = mixed_plan(b, h, w, 2);
    let raw = pseudo_random(b * 3 * h * w, 1, 1.0);
    let logits = TensorData::new(pseudo_random(b * c, 2, 3.0), [b, c]);
    let labels = TensorData::new(vec![1i64, 9, 3, 3, 0, 7], [b]);
    let ce = CeSpec::new(c, 0.1, Reduction::Mean).unwrap();
    let bce = BceSpec::new(c, 0.1, Reduction::None).unwrap();
    let run = |dev: Device| {
        let x = Tensor::<4>::from_data(TensorData::new(raw.clone(), [b, 3, h, w]), &dev);
        let mixed = mix_images(&plan, MemoryFormat::ChannelsFirst, x).unwrap();
        let y = Tensor::<1, Int>::from_data(labels.clone(), &dev);
        let t = soft_targets(&plan, plan.targets().unwrap(), y.clone(), DType::F32).unwrap();
        let z = Tensor::<2>::from_data(logits.clone(), &dev.clone().autodiff()).require_grad();
        let y = Tensor::<1, Int>::from_data(labels.clone(), &dev.clone().autodiff());
        let l1 = mixup_cross_entropy(&plan, &ce, z.clone(), y.clone()).unwrap();
        let l2 = mixup_binary_cross_entropy(&plan, &bce, z.clone(), y).unwrap();
        let g = z
            .grad(&(l1.clone() * 3.0 + l2.clone().sum()).backward())
            .unwrap();
        [
            host_f64(&mixed),
            host_f64(&t),
            host_f64(&l1),
            host_f64(&l2),
            host_f64(&g),
        ]
    };
    let want = run(device());
    let got = run(dev);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("output {k}"), g, w, Tol::new(1e-6, 1e-5));
    }
}

/// `mix_normalize` gives the CPU path's bits: u8 pixels (an `Int` tensor) channels-last into
/// f32 channels-first, and f32 input into bf16 in the same layout; errors for channels other
/// than the normalization's and a float output dtype that is not one.
#[test]
fn mix_normalize_matches_the_cpu_path() {
    use mixup_kernels::Normalize;
    use mixup_kernels::burn::mix_normalize;
    let dev = device();
    let (b, h, w, ch) = (5, 7, 6, 3);
    let plan = mixed_plan(b, h, w, 4);
    let norm = Normalize::imagenet_u8();
    let px: Vec<u8> = pseudo_random(b * h * w * ch, 8, 1.0)
        .into_iter()
        .map(|v| ((v + 1.0) * 127.0) as u8)
        .collect();
    let pixels = Tensor::<4, Int>::from_data(
        TensorData::new(px.clone(), [b, h, w, ch]),
        (&dev, DType::U8),
    );
    let (last, first) = (MemoryFormat::ChannelsLast, MemoryFormat::ChannelsFirst);
    let y = mix_normalize(&plan, last, &norm, pixels.clone(), first, DType::F32).unwrap();
    assert_eq!((y.dims(), y.dtype()), ([b, ch, h, w], DType::F32));
    let mut want = vec![0f32; px.len()];
    cpu::mix_normalize(
        &plan,
        &SampleShape::channels_last(h, w, ch),
        &norm,
        &px,
        first,
        &mut want,
    )
    .unwrap();
    assert_eq!(y.to_data().try_to_vec::<f32>().unwrap(), want);

    let scaled = Normalize::imagenet();
    let raw = pseudo_random(b * ch * h * w, 9, 1.0);
    let x = Tensor::<4>::from_data(TensorData::new(raw.clone(), [b, ch, h, w]), &dev);
    let y = mix_normalize(&plan, first, &scaled, x, first, DType::BF16).unwrap();
    assert_eq!((y.dims(), y.dtype()), ([b, ch, h, w], DType::BF16));
    let mut want = vec![mixup_kernels::bf16::ZERO; raw.len()];
    cpu::mix_normalize(
        &plan,
        &SampleShape::channels_first(ch, h, w),
        &scaled,
        &raw,
        first,
        &mut want,
    )
    .unwrap();
    assert_eq!(
        y.to_data().try_to_vec::<mixup_kernels::bf16>().unwrap(),
        want
    );

    // Errors, not panics: 3-channel constants on the channels-first reading of NHWC data (7
    // "channels"), and an int output dtype.
    expect_err(
        mix_normalize(&plan, first, &norm, pixels.clone(), first, DType::F32),
        "channels",
    );
    let e = expect_err(
        mix_normalize(&plan, last, &norm, pixels, first, DType::I64),
        "dtype",
    );
    assert!(
        matches!(e, MixError::InvalidArgument { what: "dtype", .. }),
        "{e}"
    );
}

/// Per-call cost on burn's CUDA backend (feature `burn-cuda`, a GPU), against Flex on the same
/// sizes: the time per call of the CE forward + backward and of `mix_images`, the work queued
/// by `reps` calls and then waited for once (`device.sync()`; each call on CUDA also waits for
/// burn's queue and its own kernel: the two host synchronizations docs/burn.md counts), and the
/// same with a read back to the host (`to_data`). The image rows show the three input layouts
/// cubecl gives: 224-wide f32 rows padded to 256 (read in place, 16-byte slots), 3-channel f32
/// pixels padded to 4 (read in place, element by element), 256-wide rows (dense). Then the
/// crate's mix kernel alone on the first layout's bytes (`CudaMixer` on its own buffers), waited
/// for after each call and once for all: what the burn glue adds is the difference. Checked at
/// the end: every CUDA call ran on the device (`device_calls`) and copied no input first
/// (`device_copies`).
#[cfg(feature = "burn-cuda")]
#[test]
#[ignore = "a timing on the GPU, not a check: run with --ignored --nocapture"]
fn per_call_cost_cuda() {
    use mixup_kernels::burn::{device_calls, device_copies};
    use std::time::Instant;
    if !cuda_or_skip("per_call_cost_cuda") {
        return;
    }
    let mut on_device = (0, 0);
    let (b, c) = (256, 1000);
    let plan = timm_plan(c, 0, b);
    let spec = MixConfig::timm(c).ce_spec(Reduction::Mean).unwrap();
    let z = TensorData::new(pseudo_random(b * c, 3, 4.0), [b, c]);
    let li = TensorData::new((0..b as i64).map(|i| i % c as i64).collect::<Vec<_>>(), [b]);
    let n = 64;
    let images = [
        (
            "NCHW 3x224x224 (rows padded)",
            MemoryFormat::ChannelsFirst,
            [n, 3, 224, 224],
        ),
        (
            "NHWC 224x224x3 (pixels padded)",
            MemoryFormat::ChannelsLast,
            [n, 224, 224, 3],
        ),
        (
            "NCHW 3x256x256 (dense)",
            MemoryFormat::ChannelsFirst,
            [n, 3, 256, 256],
        ),
    ];
    let img_plan = |h: usize, w: usize| {
        let sampler = Sampler::new(MixConfig::timm(c), 0).unwrap();
        sampler.plan_images(1, n, image(h, w)).unwrap()
    };
    // Microseconds per call of `f` over `reps` calls, waited for once at the end. The results
    // are kept until then (`kept`), so burn's lazy queue cannot drop work whose output nobody
    // holds (the backward multiply).
    let kept2 = std::cell::RefCell::new(Vec::<Tensor<2>>::new());
    let kept4 = std::cell::RefCell::new(Vec::<Tensor<4>>::new());
    let per_call = |dev: &Device, reps: usize, f: &dyn Fn()| {
        f();
        dev.sync().unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        dev.sync().unwrap();
        let us = t.elapsed().as_secs_f64() / reps as f64 * 1e6;
        kept2.borrow_mut().clear();
        kept4.borrow_mut().clear();
        us
    };
    let data: Vec<TensorData> = images
        .iter()
        .map(|(_, _, dims)| TensorData::new(pseudo_random(dims.iter().product(), 5, 1.0), *dims))
        .collect();
    // Fewer calls on the host backend, whose calls take milliseconds.
    for (name, dev, reps) in [("flex", device(), 2), ("cuda", Device::cuda(0), 10)] {
        let before = (device_calls(), device_copies());
        let ad = dev.clone().autodiff();
        let logits = Tensor::<2>::from_data(z.clone(), &ad).require_grad();
        let lt = Tensor::<1, Int>::from_data(li.clone(), &ad);
        let ce = || {
            let l = mixup_cross_entropy(&plan, &spec, logits.clone(), lt.clone()).unwrap();
            kept2.borrow_mut().push(logits.grad(&l.backward()).unwrap());
        };
        let ce_read = || {
            let l = mixup_cross_entropy(&plan, &spec, logits.clone(), lt.clone()).unwrap();
            logits.grad(&l.backward()).unwrap().to_data();
        };
        let (q, r) = (
            per_call(&ad, 2 * reps, &ce),
            per_call(&ad, 2 * reps, &ce_read),
        );
        println!(
            "{name}: CE {b}x{c} forward + backward {q:.0} µs per call, {r:.0} µs with the read"
        );
        for ((what, format, dims), x) in images.iter().zip(&data) {
            let (format, (h, w)) = match format {
                MemoryFormat::ChannelsFirst => (*format, (dims[2], dims[3])),
                MemoryFormat::ChannelsLast => (*format, (dims[1], dims[2])),
            };
            let p = img_plan(h, w);
            let xt = Tensor::<4>::from_data(x.clone(), &dev);
            let mix = || {
                kept4
                    .borrow_mut()
                    .push(mix_images(&p, format, xt.clone()).unwrap());
            };
            let mix_read = || {
                mix_images(&p, format, xt.clone()).unwrap().to_data();
            };
            let (q, r) = (
                per_call(&dev, reps, &mix),
                per_call(&dev, reps / 2, &mix_read),
            );
            println!("{name}: mix_images {n}x{what} {q:.0} µs per call, {r:.0} µs with the read");
        }
        let counts = (device_calls() - before.0, device_copies() - before.1);
        println!(
            "{name}: {} calls on burn's device memory, {} inputs copied first",
            counts.0, counts.1
        );
        if name == "cuda" {
            on_device = counts;
        }
    }
    // The kernel alone on the first layout's bytes: no burn, the same plan and dtype.
    {
        use mixup_kernels::SampleShape;
        use mixup_kernels::cuda::{CudaMixer, DevicePlan};
        let mixer = CudaMixer::new(0).unwrap();
        let s = mixer.stream().clone();
        let mut dplan = DevicePlan::new(&mixer);
        dplan.upload(&img_plan(224, 224)).unwrap();
        let shape = SampleShape::channels_first(3, 224, 224);
        let x = s.clone_htod(&data[0].try_to_vec::<f32>().unwrap()).unwrap();
        let mut out = s.alloc_zeros::<f32>(x.len()).unwrap();
        let mut time = |reps: usize, each: bool| {
            let t = Instant::now();
            for _ in 0..reps {
                mixer
                    .mix(&dplan, &shape, &x.as_view(), &mut out.as_view_mut())
                    .unwrap();
                if each {
                    s.synchronize().unwrap();
                }
            }
            s.synchronize().unwrap();
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        };
        time(2, true);
        let (each, queued) = (time(20, true), time(20, false));
        println!(
            "kernel alone (CudaMixer::mix {n}x3x224x224 f32): {each:.0} µs per call waited for, \
             {queued:.0} µs queued"
        );
    }
    // Every CUDA call ran on the device (2 + 2 CE rounds of 2·reps + 1, three layouts of
    // reps + 1 and reps / 2 + 1 mixes), reading its inputs in place.
    assert_eq!(
        on_device,
        (2 * (2 * 10 + 1) + 3 * (11 + 6), 0),
        "(calls, copies) on CUDA"
    );
}
