//! The candle integration against the f64 reference: the loss op's gradient through
//! `loss.backward()` over a few training steps, mixing in both image layouts, soft targets, and
//! the errors for inputs that do not fit (which must never panic).
//!
//! Built with `candle-cuda`, the checks that compute run on the CPU and then on the first GPU
//! (`common::candle_devices`): the same data, the same reference, tolerances that allow the CUDA kernels'
//! approximate exponential ([`on`]). This is how candle's CUDA storage is verified on the
//! GPU machine (scripts/gpu-bundle.sh links this test with `candle-cuda`; docs/gpu.md).
#![cfg(feature = "candle")]

mod common;

use candle_core::{DType, Device, Error, Tensor, Var};
use common::{
    Tol, assert_close, candle_devices as devices, fastai_sampler, image, mixed_plan, pseudo_random,
};
use mixup_kernels::candle::{mix_images, mix_rows, mixup_cross_entropy, soft_targets};
use mixup_kernels::{
    CeSpec, GradOutput, MemoryFormat, MixConfig, MixError, MixPlan, Reduction, Sampler, TargetSpec,
    reference,
};

fn host_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The logits as the reference must see them: the stored (rounded) values, widened exactly.
fn host_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Tolerances for a value computed in f32 and rounded once to `dtype`.
fn tol(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-6, 1e-5),
        DType::F16 => (1e-6, 1.5e-3), // 2^-11 relative, plus one ulp of f32 slack
        DType::BF16 => (1e-6, 1.2e-2), // 2^-8 relative, plus slack
        _ => unreachable!(),
    }
}

/// The floors the CUDA kernels need under a loss's and a gradient element's bound, `(abs,
/// rel)`: the CE kernel computes its exponentials with the special-function unit's `ex2`
/// (kernels/mixup_ce.cu), about 2 ulp, so these are the bounds of tests/cuda_mixup_ce.rs: 1e-4
/// absolute for a loss of a few units, 1e-4 of each probability for a gradient element.
const CUDA_LOSS: (f64, f64) = (1e-4, 2e-5);
const CUDA_GRAD: (f64, f64) = (2e-5, 1e-4);

/// The tolerance on `dev`: `cpu` on the CPU; on CUDA each part raised to `cuda`'s floor.
fn on(dev: &Device, cpu: (f64, f64), cuda: (f64, f64)) -> Tol {
    match dev.is_cpu() {
        true => Tol::new(cpu.0, cpu.1),
        false => Tol::new(cpu.0.max(cuda.0), cpu.1.max(cuda.1)),
    }
}

/// Root of a candle error, past the backtrace and context wrappers.
fn root(e: &Error) -> &Error {
    match e {
        Error::WithBacktrace { inner, .. } | Error::Context { inner, .. } => root(inner),
        other => other,
    }
}

/// Trains `logits` directly (as if they were the model) for a few SGD steps; at each step the
/// gradient that `backward()` returns must equal the reference gradient for the stored logits.
fn train_steps(
    dev: &Device,
    dtype: DType,
    reduction: Reduction,
    smoothing: f64,
    upstream_scale: Option<f64>,
) {
    let (b, c) = (7, 11);
    let labels: Vec<u32> = (0..b as u32).map(|i| (i * 5 + 3) % c as u32).collect();
    let labels_t = Tensor::new(labels.as_slice(), dev).unwrap();
    let init = Tensor::from_vec(pseudo_random(b * c, 1, 4.0), (b, c), dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let logits = Var::from_tensor(&init).unwrap();
    let sampler = fastai_sampler(c, smoothing, 9);
    let spec = CeSpec::new(c, smoothing, reduction).unwrap();
    let (abs, rel) = tol(dtype);
    let (loss_t, grad_t) = (
        on(dev, (abs * 10.0, rel), CUDA_LOSS),
        on(dev, (abs, rel), CUDA_GRAD),
    );
    for step in 0..4 {
        let plan = sampler.plan(step, b).unwrap();
        let loss = mixup_cross_entropy(&plan, &spec, logits.as_tensor(), &labels_t).unwrap();
        assert_eq!(loss.dtype(), dtype);
        let z = host_f32(logits.as_tensor());
        // What backward() starts from: the loss itself (grad_output 1), or a scaled / summed loss.
        let (root_t, grad_output): (Tensor, Vec<f32>) = match (reduction, upstream_scale) {
            (Reduction::None, None) => (loss.sum_all().unwrap(), vec![1.0; b]),
            (Reduction::None, Some(_)) => {
                let w: Vec<f32> = (0..b).map(|i| 0.25 + i as f32 * 0.5).collect();
                let wt = Tensor::new(w.as_slice(), dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let w_stored = host_f32(&wt);
                ((&loss * &wt).unwrap().sum_all().unwrap(), w_stored)
            }
            (_, None) => (loss.clone(), vec![1.0]),
            (_, Some(s)) => ((&loss * s).unwrap(), vec![s as f32]),
        };
        let up = if reduction == Reduction::None {
            GradOutput::PerSample(&grad_output)
        } else {
            GradOutput::Scalar(grad_output[0])
        };
        let r = reference::mixup_ce(&plan, &spec, &z, &labels, up).unwrap();
        let grads = root_t.backward().unwrap();
        let g = grads
            .get(logits.as_tensor())
            .expect("logits have a gradient");
        assert_eq!(g.dtype(), dtype);
        assert_eq!(g.dims(), [b, c]);
        let what = format!(
            "{dev:?} {dtype:?} {reduction:?} eps={smoothing} up={upstream_scale:?} step {step} grad"
        );
        assert_close(&what, &host_f64(g), &r.grad, grad_t);
        match reduction {
            Reduction::None => assert_close(
                &format!("{what}: losses"),
                &host_f64(&loss),
                &r.losses,
                loss_t,
            ),
            _ => assert_close(
                &format!("{what}: loss"),
                &host_f64(&loss),
                &[r.loss.unwrap()],
                loss_t,
            ),
        }
        // One SGD step so the next step sees other logits.
        let next = (logits.as_tensor() - (g * 0.5).unwrap()).unwrap();
        logits.set(&next).unwrap();
    }
}

#[test]
fn backward_matches_reference_all_dtypes_and_reductions() {
    for dev in devices() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                for smoothing in [0.0, 0.1] {
                    train_steps(&dev, dtype, reduction, smoothing, None);
                }
            }
        }
    }
}

#[test]
fn backward_with_an_upstream_other_than_one_recomputes_exactly() {
    for dev in devices() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                train_steps(&dev, dtype, reduction, 0.1, Some(2.5));
            }
        }
    }
}

#[test]
fn gradient_flows_through_a_model_like_candle_nn_cross_entropy() {
    for dev in devices() {
        // With no mixing and no smoothing the op is plain cross-entropy: compare the weights'
        // gradient with candle-nn's own cross_entropy differentiated by candle.
        let (b, d, c) = (5, 6, 4);
        let x = Tensor::from_vec(pseudo_random(b * d, 2, 1.0), (b, d), &dev).unwrap();
        let w = Var::from_tensor(
            &Tensor::from_vec(pseudo_random(d * c, 3, 1.0), (d, c), &dev).unwrap(),
        )
        .unwrap();
        let labels = Tensor::new(&[0u32, 3, 1, 1, 2], &dev).unwrap();
        let logits = x.matmul(w.as_tensor()).unwrap();
        let plan = MixPlan::identity(b).unwrap();
        let ours = mixup_cross_entropy(
            &plan,
            &CeSpec::new(c, 0.0, Reduction::Mean).unwrap(),
            &logits,
            &labels,
        )
        .unwrap();
        let theirs = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        // The CPU's bounds are those of f32 arithmetic; on CUDA, the approximate exponential's
        // (dW sums B rows of x·(gradient of the logits)).
        let f32_t = (1e-6, 1e-5);
        let dw_floor = (CUDA_GRAD.0 * b as f64, CUDA_GRAD.1);
        assert_close(
            &format!("{dev:?} loss"),
            &host_f64(&ours),
            &host_f64(&theirs),
            on(&dev, f32_t, CUDA_LOSS),
        );
        let g_ours = ours.backward().unwrap().remove(w.as_tensor()).unwrap();
        let g_theirs = theirs.backward().unwrap().remove(w.as_tensor()).unwrap();
        assert_close(
            &format!("{dev:?} dW"),
            &host_f64(&g_ours),
            &host_f64(&g_theirs),
            on(&dev, f32_t, dw_floor),
        );
    }
}

#[test]
fn i64_and_u8_labels_equal_u32_labels() {
    for dev in devices() {
        let logits = Tensor::from_vec(pseudo_random(4 * 3, 4, 2.0), (4, 3), &dev).unwrap();
        let plan = MixPlan::from_parts(&[1, 0, 3, 2], &[0.7, 0.7, 0.6, 0.6]).unwrap();
        let spec = CeSpec::new(3, 0.1, Reduction::None).unwrap();
        let u32s = Tensor::new(&[0u32, 2, 1, 1], &dev).unwrap();
        let want = host_f64(&mixup_cross_entropy(&plan, &spec, &logits, &u32s).unwrap());
        for labels in [
            u32s.to_dtype(DType::I64).unwrap(),
            u32s.to_dtype(DType::U8).unwrap(),
        ] {
            let got = host_f64(&mixup_cross_entropy(&plan, &spec, &logits, &labels).unwrap());
            assert_eq!(got, want, "{dev:?} {:?} labels", labels.dtype());
        }
    }
}

#[test]
fn evaluation_without_gradient_tracking_gives_the_same_loss() {
    for dev in devices() {
        let z = Tensor::from_vec(pseudo_random(6 * 5, 5, 3.0), (6, 5), &dev).unwrap();
        let var = Var::from_tensor(&z).unwrap();
        let labels = Tensor::new(&[0u32, 1, 2, 3, 4, 0], &dev).unwrap();
        let plan = Sampler::new(MixConfig::timm(5), 1)
            .unwrap()
            .plan(0, 6)
            .unwrap();
        let spec = CeSpec::new(5, 0.1, Reduction::Mean).unwrap();
        let tracked = mixup_cross_entropy(&plan, &spec, var.as_tensor(), &labels).unwrap();
        let plain = mixup_cross_entropy(&plan, &spec, &z, &labels).unwrap();
        assert_eq!(
            tracked.to_scalar::<f32>().unwrap(),
            plain.to_scalar::<f32>().unwrap(),
            "{dev:?}"
        );
        let r = reference::mixup_ce(
            &plan,
            &spec,
            &host_f32(&z),
            &[0u32, 1, 2, 3, 4, 0],
            GradOutput::Scalar(1.0),
        )
        .unwrap();
        assert_close(
            &format!("{dev:?} loss"),
            &host_f64(&plain),
            &[r.loss.unwrap()],
            on(&dev, (1e-6, 1e-5), CUDA_LOSS),
        );
    }
}

#[test]
fn mix_images_matches_reference_both_layouts_all_dtypes() {
    for dev in devices() {
        let (b, ch, h, w) = (5, 3, 7, 6);
        let plan = mixed_plan(b, h, w, 3);
        for layout in [MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast] {
            let (shape, lay) = match layout {
                MemoryFormat::ChannelsFirst => (
                    (b, ch, h, w),
                    mixup_kernels::SampleShape::channels_first(ch, h, w),
                ),
                MemoryFormat::ChannelsLast => (
                    (b, h, w, ch),
                    mixup_kernels::SampleShape::channels_last(h, w, ch),
                ),
            };
            for dtype in [DType::F32, DType::F16, DType::BF16, DType::U8] {
                let raw: Vec<f32> = pseudo_random(b * ch * h * w, 6, 1.0)
                    .into_iter()
                    .map(|v| {
                        if dtype == DType::U8 {
                            ((v + 1.0) * 127.0).round()
                        } else {
                            v
                        }
                    })
                    .collect();
                let x = Tensor::from_vec(raw, shape, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let y = mix_images(&plan, layout, &x).unwrap();
                assert_eq!((y.dims(), y.dtype()), (x.dims(), dtype));
                let stored = host_f32(&x);
                let want = reference::mix(&plan, &lay, &stored).unwrap();
                let (abs, rel) = match dtype {
                    DType::U8 => (0.5 + 1e-4, 0.0), // rounds to the nearest integer
                    d => tol(d),
                };
                assert_close(
                    &format!("{dev:?} {layout:?} {dtype:?}"),
                    &host_f64(&y),
                    &want,
                    Tol::new(abs, rel),
                );
                // The input is left alone.
                assert_eq!(host_f32(&x), stored, "{dev:?} {layout:?} {dtype:?} input");
            }
        }
    }
}

#[test]
fn mix_images_accepts_a_non_contiguous_view() {
    for dev in devices() {
        let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.75]).unwrap();
        // NCHW data viewed through a transpose of the last two axes: not contiguous.
        let x = Tensor::arange(0f32, 2. * 2. * 3., &dev)
            .unwrap()
            .reshape((2, 1, 2, 3))
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(!x.is_contiguous());
        let y = mix_images(&plan, MemoryFormat::ChannelsFirst, &x).unwrap();
        let want = reference::mix(
            &plan,
            &mixup_kernels::SampleShape::channels_first(1, 3, 2),
            &host_f32(&x),
        )
        .unwrap();
        assert_close(
            &format!("{dev:?} transposed"),
            &host_f64(&y),
            &want,
            Tol::new(1e-6, 1e-6),
        );
    }
}

#[test]
fn mix_rows_and_soft_targets_match_reference() {
    for dev in devices() {
        let plan = mixed_plan(6, 4, 4, 8);
        let spec = TargetSpec::new(10, 0.1).unwrap();
        let labels: Vec<u32> = vec![1, 9, 3, 3, 0, 7];
        let lt = Tensor::new(labels.as_slice(), &dev).unwrap();
        let want = reference::soft_targets(&plan, &spec, &labels).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let t = soft_targets(&plan, &spec, &lt, dtype).unwrap();
            assert_eq!((t.dims(), t.dtype()), (&[6usize, 10][..], dtype));
            let (abs, rel) = tol(dtype);
            assert_close(
                &format!("{dev:?} targets {dtype:?}"),
                &host_f64(&t),
                &want,
                Tol::new(abs, rel),
            );
        }
        // Rows of any rank ≥ 1: [6, 2, 5] is six rows of 10.
        let x = Tensor::from_vec(pseudo_random(60, 9, 1.0), (6, 2, 5), &dev).unwrap();
        let y = mix_rows(&plan, &x).unwrap();
        let want =
            reference::mix(&plan, &mixup_kernels::SampleShape::rows(10), &host_f32(&x)).unwrap();
        assert_close(
            &format!("{dev:?} rows"),
            &host_f64(&y),
            &want,
            Tol::new(1e-6, 1e-5),
        );
    }
}

/// The error of a call that must fail, checked to be the candle variant wanted.
fn expect_err<T: std::fmt::Debug>(r: candle_core::Result<T>, what: &str) -> Error {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_inputs_give_candle_errors() {
    // `$result` must fail with the candle error `$err` (behind any backtrace or context).
    macro_rules! fails_with {
        ($result:expr, $what:expr, $err:pat) => {
            let e = expect_err($result, $what);
            assert!(matches!(root(&e), $err), "{}: {e}", $what);
        };
    }
    let dev = Device::Cpu;
    let plan = MixPlan::from_parts(&[1, 0], &[0.6, 0.6]).unwrap();
    let logits = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
    let spec = CeSpec::new(3, 0.0, Reduction::Mean).unwrap();

    // Rank.
    fails_with!(
        mixup_cross_entropy(&plan, &spec, &logits.flatten_all().unwrap(), &labels),
        "rank-1 logits",
        Error::UnexpectedNumberOfDims {
            expected: 2,
            got: 1,
            ..
        }
    );
    fails_with!(
        mixup_cross_entropy(&plan, &spec, &logits, &labels.reshape((2, 1)).unwrap()),
        "rank-2 labels",
        Error::UnexpectedNumberOfDims {
            expected: 1,
            got: 2,
            ..
        }
    );
    fails_with!(
        mix_images(&plan, MemoryFormat::ChannelsFirst, &logits),
        "rank-2 images",
        Error::UnexpectedNumberOfDims { expected: 4, .. }
    );

    // Dtypes.
    fails_with!(
        mixup_cross_entropy(&plan, &spec, &logits.to_dtype(DType::F64).unwrap(), &labels),
        "f64 logits",
        Error::UnsupportedDTypeForOp(DType::F64, _)
    );
    fails_with!(
        mixup_cross_entropy(&plan, &spec, &logits, &labels.to_dtype(DType::F32).unwrap()),
        "f32 labels",
        Error::UnsupportedDTypeForOp(DType::F32, _)
    );
    fails_with!(
        soft_targets(&plan, spec.targets(), &labels, DType::U8),
        "u8 soft targets",
        Error::UnsupportedDTypeForOp(DType::U8, _)
    );
    let img64 = Tensor::zeros((2, 1, 2, 2), DType::F64, &dev).unwrap();
    fails_with!(
        mix_images(&plan, MemoryFormat::ChannelsFirst, &img64),
        "f64 images",
        Error::UnsupportedDTypeForOp(DType::F64, _)
    );

    // Class count.
    fails_with!(
        mixup_cross_entropy(
            &plan,
            &CeSpec::new(4, 0.0, Reduction::Mean).unwrap(),
            &logits,
            &labels,
        ),
        "C = 4 for 3 logits",
        Error::UnexpectedShape { .. }
    );

    // Plan for another batch (logits, labels, images).
    let plan3 = MixPlan::identity(3).unwrap();
    for (what, r) in [
        (
            "logits",
            mixup_cross_entropy(&plan3, &spec, &logits, &labels).map(|_| ()),
        ),
        (
            "images",
            mix_images(
                &plan3,
                MemoryFormat::ChannelsLast,
                &Tensor::zeros((2, 1, 2, 2), DType::F32, &dev).unwrap(),
            )
            .map(|_| ()),
        ),
        (
            "targets",
            soft_targets(&plan3, spec.targets(), &labels, DType::F32).map(|_| ()),
        ),
        ("rows", mix_rows(&plan3, &logits).map(|_| ())),
    ] {
        let e = expect_err(r, what);
        let msg = e.to_string();
        assert!(msg.contains("batch of 3"), "{what}: {msg}");
    }
    // Labels and logits of different batch sizes.
    let e = expect_err(
        mixup_cross_entropy(
            &plan,
            &spec,
            &logits,
            &Tensor::new(&[0u32, 1, 2], &dev).unwrap(),
        ),
        "3 labels for 2 logits",
    );
    assert!(e.to_string().contains("batch of 2"), "{e}");

    // Labels out of range: u32 too large, i64 negative.
    let e = expect_err(
        mixup_cross_entropy(
            &plan,
            &spec,
            &logits,
            &Tensor::new(&[0u32, 3], &dev).unwrap(),
        ),
        "label 3 of 3 classes",
    );
    assert!(
        e.to_string().contains(
            &MixError::LabelOutOfRange {
                index: 1,
                label: 3,
                num_classes: 3
            }
            .to_string()
        ),
        "{e}"
    );
    let e = expect_err(
        mixup_cross_entropy(
            &plan,
            &spec,
            &logits,
            &Tensor::new(&[-1i64, 0], &dev).unwrap(),
        ),
        "label -1",
    );
    assert!(e.to_string().contains("label -1 of sample 0"), "{e}");

    // CutMix boxes drawn for another image size.
    let boxed = mixed_plan(2, 4, 4, 11);
    let e = expect_err(
        mix_images(
            &boxed,
            MemoryFormat::ChannelsFirst,
            &Tensor::zeros((2, 1, 5, 4), DType::F32, &dev).unwrap(),
        ),
        "5x4 images for 4x4 boxes",
    );
    assert!(e.to_string().contains("4x4"), "{e}");

    // A bad smoothing cannot reach the op: the spec refuses it when it is built.
    assert!(matches!(
        CeSpec::new(3, 1.0, Reduction::Mean),
        Err(MixError::InvalidArgument {
            what: "label_smoothing",
            ..
        })
    ));
    // A spec other than the one the plan was drawn with (timm's smoothing dropped).
    let drawn = Sampler::new(MixConfig::timm(3), 0)
        .unwrap()
        .plan(0, 2)
        .unwrap();
    let e = expect_err(
        mixup_cross_entropy(
            &drawn,
            &CeSpec::new(3, 0.0, Reduction::Mean).unwrap(),
            &logits,
            &labels,
        ),
        "spec other than the plan's",
    );
    assert!(
        e.to_string().contains("label_smoothing 0.1") && e.to_string().contains("spec"),
        "{e}"
    );
    let own = MixConfig::timm(3).ce_spec(Reduction::Mean).unwrap();
    assert!(mixup_cross_entropy(&drawn, &own, &logits, &labels).is_ok());

    // The empty batch: a mean over nothing is refused, a sum is 0.
    let empty = MixPlan::identity(0).unwrap();
    let z0 = Tensor::zeros((0, 3), DType::F32, &dev).unwrap();
    let l0 = Tensor::zeros(0, DType::U32, &dev).unwrap();
    expect_err(
        mixup_cross_entropy(&empty, &spec, &z0, &l0),
        "mean of empty batch",
    );
    let s = mixup_cross_entropy(
        &empty,
        &CeSpec::new(3, 0.0, Reduction::Sum).unwrap(),
        &z0,
        &l0,
    )
    .unwrap();
    assert_eq!(s.to_scalar::<f32>().unwrap(), 0.0);

    // `?` turns a MixError into a candle error.
    fn via_question_mark() -> candle_core::Result<MixPlan> {
        Ok(MixPlan::from_parts(&[0, 5], &[1.0, 1.0])?)
    }
    assert!(
        via_question_mark()
            .unwrap_err()
            .to_string()
            .contains("partner 5")
    );
}

/// Masked logits through the candle op (f32, f16, bf16): the dtype's minimum and −inf in classes
/// with zero target weight give the reference's finite loss and gradient through
/// `loss.backward()` (the CPU path's NaN of issue 11 reached candle users too).
#[test]
fn masked_logits_give_the_reference_loss_and_gradient() {
    for dev in devices() {
        let (b, c) = (4usize, 17usize);
        let plan = MixPlan::from_parts(&[1, 0, 3, 2], &[1.0, 1.0, 0.7, 0.3]).unwrap();
        let labels_u32 = [1u32, 2, 3, 5];
        let spec = CeSpec::new(c, 0.0, Reduction::Mean).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for masked in [f32::MIN, f32::NEG_INFINITY] {
                let mut z = pseudo_random(b * c, 7, 3.0);
                for row in z.chunks_mut(c) {
                    // Lanes 0 and 16 (one f32 lane sum), 4 and 9: never a label with weight.
                    for k in [0, 4, 9, 16] {
                        row[k] = masked;
                    }
                }
                let logits = Var::from_tensor(
                    &Tensor::from_vec(z, (b, c), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap();
                let labels = Tensor::new(&labels_u32, &dev).unwrap();
                let loss = mixup_cross_entropy(&plan, &spec, logits.as_tensor(), &labels).unwrap();
                let stored = host_f32(logits.as_tensor());
                let want = reference::mixup_ce(
                    &plan,
                    &spec,
                    &stored,
                    &labels_u32,
                    GradOutput::Scalar(1.0),
                )
                .unwrap();
                let got = loss
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert!(
                    want.loss.unwrap().is_finite() && got.is_finite(),
                    "{dev:?} {dtype:?} {masked}: {got}"
                );
                // The loss is rounded to the logits' dtype: a value's bound on the CPU.
                let (abs, rel) = tol(dtype);
                assert_close(
                    &format!("{dev:?} {dtype:?} {masked} loss"),
                    &[got],
                    &[want.loss.unwrap()],
                    on(&dev, (abs, rel), CUDA_LOSS),
                );
                let grad = loss.backward().unwrap().remove(logits.as_tensor()).unwrap();
                assert_close(
                    &format!("{dev:?} {dtype:?} {masked} grad"),
                    &host_f64(&grad),
                    &want.grad,
                    on(&dev, (abs, rel), CUDA_GRAD),
                );
            }
        }
    }
}

/// The mixup BCE op: loss and gradient through `loss.backward()` against the reference, every
/// dtype and reduction, with thresholds, class weights and an upstream gradient other than 1.
#[test]
fn bce_backward_matches_reference() {
    for dev in devices() {
        use mixup_kernels::BceSpec;
        use mixup_kernels::candle::mixup_binary_cross_entropy;
        let (b, c) = (6usize, 11usize);
        let plan =
            MixPlan::from_parts(&[5, 4, 3, 2, 1, 0], &[0.9, 0.2, 1.0, 0.5, 0.35, 0.0]).unwrap();
        let labels_u32 = [1u32, 2, 3, 3, 10, 0];
        let weight: Vec<f32> = (0..c).map(|k| 0.5 + k as f32 / 10.0).collect();
        let specs = [
            BceSpec::new(c, 0.1, Reduction::Mean).unwrap(),
            BceSpec::new(c, 0.0, Reduction::Sum)
                .unwrap()
                .with_target_threshold(0.3)
                .unwrap(),
            BceSpec::new(c, 0.1, Reduction::None)
                .unwrap()
                .with_weight(weight.clone())
                .unwrap()
                .with_pos_weight(vec![2.0; c])
                .unwrap()
                .with_sum_classes(true),
        ];
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for spec in &specs {
                for scale in [1.0f64, 2.5] {
                    let z = pseudo_random(b * c, 3, 4.0);
                    let t = Tensor::from_vec(z, (b, c), &dev).unwrap();
                    let logits = Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
                    let labels = Tensor::new(&labels_u32, &dev).unwrap();
                    let loss = mixup_binary_cross_entropy(&plan, spec, logits.as_tensor(), &labels)
                        .unwrap();
                    let stored = host_f32(logits.as_tensor());
                    let ups = vec![scale as f32; b];
                    let up = if spec.reduction() == Reduction::None {
                        GradOutput::PerSample(&ups)
                    } else {
                        GradOutput::Scalar(scale as f32)
                    };
                    let want = reference::mixup_bce(&plan, spec, &stored, &labels_u32, up).unwrap();
                    // A loss sums C classes: C times a value's bound.
                    let (abs, rel) = tol(dtype);
                    let what = format!("{dev:?} {dtype:?} {:?} ×{scale}", spec.reduction());
                    let got = host_f64(&loss);
                    let expected = if spec.reduction() == Reduction::None {
                        want.losses.clone()
                    } else {
                        vec![want.loss.unwrap()]
                    };
                    let loss_t = on(&dev, (abs * c as f64, rel), CUDA_LOSS);
                    assert_close(&format!("{what} loss"), &got, &expected, loss_t);
                    assert_eq!(
                        loss.dtype(),
                        DType::F32,
                        "the BCE loss is f32 for any logits"
                    );
                    let scaled = (loss.clone() * scale).unwrap();
                    let total = if spec.reduction() == Reduction::None {
                        scaled.sum_all().unwrap()
                    } else {
                        scaled
                    };
                    let grad = total
                        .backward()
                        .unwrap()
                        .remove(logits.as_tensor())
                        .unwrap();
                    assert_close(
                        &format!("{what} grad"),
                        &host_f64(&grad),
                        &want.grad,
                        on(&dev, (abs, rel), CUDA_GRAD),
                    );
                }
            }
        }
    }
}

/// The errors a new user meets name the tensor, what is accepted and the likely mistake.
#[test]
fn error_messages_name_the_argument_and_the_fix() {
    let dev = Device::Cpu;
    let plan = MixPlan::from_parts(&[1, 0], &[0.6, 0.6]).unwrap();
    let logits = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
    let spec = CeSpec::new(3, 0.0, Reduction::Mean).unwrap();
    let msg = |r: candle_core::Result<Tensor>| format!("{}", expect_err(r, "error"));
    let m = msg(mixup_cross_entropy(
        &plan,
        &spec,
        &logits,
        &labels.to_dtype(DType::F32).unwrap(),
    ));
    assert!(
        m.contains("labels must be class indices of dtype u32 or i64") && m.contains("F32"),
        "{m}"
    );
    let m = msg(mixup_cross_entropy(
        &plan,
        &spec,
        &logits,
        &labels.reshape((2, 1)).unwrap(),
    ));
    assert!(
        m.contains("labels must be [batch]") && m.contains("squeeze"),
        "{m}"
    );
    let m = msg(mixup_cross_entropy(
        &plan,
        &spec,
        &labels.to_dtype(DType::F32).unwrap(),
        &logits,
    ));
    assert!(
        m.contains("logits must be [batch, num_classes]") && m.contains("swapped"),
        "{m}"
    );
    let m = msg(mixup_cross_entropy(
        &plan,
        &spec,
        &logits.to_dtype(DType::F64).unwrap(),
        &labels,
    ));
    assert!(m.contains("logits must be f32, f16 or bf16"), "{m}");
    // Rank-1 logits (flattened by mistake) beside rank-1 labels.
    let m = msg(mixup_cross_entropy(
        &plan,
        &spec,
        &logits.flatten_all().unwrap(),
        &labels,
    ));
    assert!(
        m.contains("logits must be [batch, num_classes]") && m.contains("[6]"),
        "{m}"
    );
    // A spec for another class count than the plan was drawn for: the spec is named, not the
    // logits' shape (new-user trial, 2026-12-02).
    let drawn10 = Sampler::new(MixConfig::timm(10), 0)
        .unwrap()
        .plan(0, 2)
        .unwrap();
    let logits10 = Tensor::zeros((2, 10), DType::F32, &dev).unwrap();
    let five = CeSpec::new(5, 0.1, Reduction::Mean).unwrap();
    let m = msg(mixup_cross_entropy(&drawn10, &five, &logits10, &labels));
    assert!(m.contains("spec") && !m.contains("logits must be"), "{m}");
    // One-hot labels [B, C].
    let one_hot = Tensor::zeros((2, 3), DType::U32, &dev).unwrap();
    let m = msg(mixup_cross_entropy(&plan, &spec, &logits, &one_hot));
    assert!(
        m.contains("labels must be [batch]") && m.contains("one-hot"),
        "{m}"
    );
    // A negative i64 label names the sample and the label.
    let negative = Tensor::new(&[0i64, -2], &dev).unwrap();
    let m = msg(mixup_cross_entropy(&plan, &spec, &logits, &negative));
    assert!(m.contains("label -2 of sample 1"), "{m}");
    let m = msg(mixup_kernels::candle::mixup_binary_cross_entropy(
        &plan,
        &mixup_kernels::BceSpec::new(3, 0.0, Reduction::Mean).unwrap(),
        &logits,
        &negative,
    ));
    assert!(m.contains("label -2 of sample 1"), "{m}");
    // A CutMix plan for 4x4 images used on a channels-last batch declared channels-first.
    let b = mixup_kernels::CutBox {
        y0: 0,
        y1: 2,
        x0: 0,
        x1: 2,
    };
    let cut = MixPlan::with_boxes(&[1, 0], &[0.75, 1.0], &[Some(b), None], image(4, 4)).unwrap();
    let nhwc = Tensor::zeros((2, 4, 4, 3), DType::F32, &dev).unwrap();
    let m = msg(mix_images(&cut, MemoryFormat::ChannelsFirst, &nhwc));
    assert!(
        m.contains("drawn for 4x4") && m.contains("read as [B, C, H, W]"),
        "{m}"
    );
    // The hint once, not once from the error and again from the context.
    assert_eq!(m.matches("memory format may be wrong").count(), 1, "{m}");
}

/// What only CUDA tensors do: labels are read by the kernels (the host never waits for them),
/// so one out of range is counted on the device and reported by `check_device_labels`, which
/// clears the count; a negative i64 label (cast to u32 on the device) counts too. Tensors on two
/// devices are refused before any work; an empty batch gives an empty or zero result.
#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_labels_devices_and_empty_batch() {
    use mixup_kernels::candle::check_device_labels;
    let Some(dev) = devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    let plan = MixPlan::from_parts(&[1, 0], &[0.6, 0.6]).unwrap();
    let spec = CeSpec::new(3, 0.0, Reduction::Sum).unwrap();
    let logits = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    check_device_labels(&dev).unwrap();
    let over = Tensor::new(&[0u32, 3], &dev).unwrap();
    mixup_cross_entropy(&plan, &spec, &logits, &over).unwrap();
    // The count depends on how often the kernels read the label (its sample and its partner).
    let counted = "device label(s) were outside 0..num_classes";
    let e = check_device_labels(&dev).expect_err("label 3 of 3 classes");
    assert!(e.to_string().contains(counted), "{e}");
    check_device_labels(&dev).expect("the count was cleared");
    let negative = Tensor::new(&[-1i64, 0], &dev).unwrap();
    mixup_cross_entropy(&plan, &spec, &logits, &negative).unwrap();
    let e = check_device_labels(&dev).expect_err("label -1");
    assert!(e.to_string().contains(counted), "{e}");

    // Two devices.
    let cpu_labels = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let e = expect_err(
        mixup_cross_entropy(&plan, &spec, &logits, &cpu_labels),
        "labels on the CPU, logits on CUDA",
    );
    assert!(
        matches!(root(&e), Error::DeviceMismatchBinaryOp { .. }),
        "{e}"
    );

    // The empty batch: a sum over nothing is 0, Reduction::None an empty [0], mixing a no-op.
    // candle cannot allocate an empty CUDA tensor (a zero-byte cuMemAlloc): a batch of none is
    // a `narrow` of a batch of one, as a data loader's last slice would be.
    let none_of = |shape: &[usize], dtype| {
        let mut one = shape.to_vec();
        one[0] = 1;
        Tensor::zeros(one, dtype, &dev)
            .unwrap()
            .narrow(0, 0, 0)
            .unwrap()
    };
    let empty = MixPlan::identity(0).unwrap();
    let (z0, l0) = (none_of(&[0, 3], DType::F32), none_of(&[0], DType::U32));
    let s = mixup_cross_entropy(&empty, &spec, &z0, &l0).unwrap();
    assert_eq!(
        s.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap(),
        0.0
    );
    let none = CeSpec::new(3, 0.0, Reduction::None).unwrap();
    let n = mixup_cross_entropy(&empty, &none, &none_of(&[0, 3], DType::BF16), &l0).unwrap();
    assert_eq!((n.dims(), n.dtype()), (&[0usize][..], DType::BF16));
    let i0 = mixup_cross_entropy(&empty, &spec, &z0, &none_of(&[0], DType::I64)).unwrap();
    assert_eq!(i0.to_scalar::<f32>().unwrap(), 0.0);
    let m0 = mix_images(
        &empty,
        MemoryFormat::ChannelsFirst,
        &none_of(&[0, 3, 4, 4], DType::F32),
    );
    assert_eq!(m0.unwrap().dims(), [0, 3, 4, 4]);
}

/// Two host threads at once on one candle CUDA device (`Device::new_cuda` gives each thread its
/// own stream, and the crate one state per thread): each thread's training steps give the
/// reference's losses and gradients.
#[cfg(feature = "candle-cuda")]
#[test]
fn cuda_two_host_threads_each_get_the_reference() {
    let Some(dev) = devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    std::thread::scope(|s| {
        for reduction in [Reduction::Mean, Reduction::None] {
            let dev = &dev;
            s.spawn(move || train_steps(dev, DType::F32, reduction, 0.1, None));
        }
    });
}
