//! Bad input: every CPU entry point returns the right `MixError` variant and leaves every
//! output buffer bit-identical (each is filled with a sentinel first and compared after).

#![cfg(feature = "cpu")]

mod common;

use common::{assert_same_bits, cut, image};
use mixup_kernels::{
    BceSpec, CeSpec, GradOutput, MixConfig, MixError, MixPlan, Reduction, SampleShape, Sampler,
    TargetSpec, bf16, cpu, reference,
};

/// A value no op would write.
const SENTINEL: f32 = -12345.0;

fn sentinel(n: usize) -> Vec<f32> {
    vec![SENTINEL; n]
}

/// Asserts the error variant (by a pattern) and that `buf` still holds its sentinel.
macro_rules! assert_err {
    ($result:expr, $pattern:pat, $buf:expr) => {{
        let r = $result;
        assert!(
            matches!(r, Err($pattern)),
            "expected {}, got {:?}",
            stringify!($pattern),
            r
        );
        let before = sentinel($buf.len());
        assert_same_bits("buffer after the error", &$buf[..], &before[..]);
    }};
}

fn pairs(batch: usize) -> MixPlan {
    let partner: Vec<usize> = (0..batch).map(|i| i ^ 1).collect();
    MixPlan::from_parts(&partner, &vec![0.7; batch]).unwrap()
}

fn boxed_4x4() -> MixPlan {
    let b = cut(1..3, 0..4);
    MixPlan::with_boxes(&[1, 0], &[0.5, 0.5], &[Some(b), None], image(4, 4)).unwrap()
}

#[test]
fn mix_lengths() {
    let plan = pairs(2);
    let x = vec![1.0f32; 8];
    let mut out = sentinel(8);
    assert_err!(
        cpu::mix(&plan, &SampleShape::rows(4), &x[..7], &mut out),
        MixError::ShapeMismatch {
            what: "x",
            shape: "[B, sample size]",
            batch: 2,
            per_sample: 4,
            got: 7
        },
        out
    );
    let mut short = sentinel(6);
    assert_err!(
        cpu::mix(&plan, &SampleShape::rows(4), &x, &mut short),
        MixError::LengthMismatch {
            what: "out",
            expected: 8,
            got: 6
        },
        short
    );
    // A batch of 3 rows given to a plan of 2: the lengths disagree with the shape, and the
    // message says which extent is off.
    let mut three = sentinel(12);
    assert_err!(
        cpu::mix_in_place(&plan, &SampleShape::rows(4), &mut three),
        MixError::ShapeMismatch {
            what: "x",
            batch: 2,
            per_sample: 4,
            got: 12,
            ..
        },
        three
    );
    let msg = cpu::mix_in_place(&plan, &SampleShape::rows(4), &mut three)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "`x` has 12 elements, but [B, sample size] = [2, 4] needs 8 (B is the plan's batch); \
         it holds 3 rows of 4 (a plan for another batch?) or 2 rows of 6 (another size per \
         sample?)"
    );
}

#[test]
fn mix_image_size_mismatch() {
    let plan = boxed_4x4();
    let layout = SampleShape::channels_first(2, 5, 5);
    let x = vec![0.5f32; 2 * 2 * 25];
    let mut out = sentinel(x.len());
    assert_err!(
        cpu::mix(&plan, &layout, &x, &mut out),
        MixError::ImageSizeMismatch {
            plan: (4, 4),
            data: (5, 5)
        },
        out
    );
    let layout = SampleShape::channels_last(4, 5, 2);
    let mut y = sentinel(2 * 2 * 20);
    assert_err!(
        cpu::mix_in_place(&plan, &layout, &mut y),
        MixError::ImageSizeMismatch { .. },
        y
    );
}

/// The memory-format hint appears when the channel axis was probably read as a side (one side
/// in common, the other smaller than the image), not for an image of just another size.
#[test]
fn image_size_hint_only_for_a_likely_swap() {
    let hinted = |data: (usize, usize)| {
        let e = MixError::ImageSizeMismatch {
            plan: (32, 32),
            data,
        };
        e.to_string().contains("the memory format may be wrong")
    };
    assert!(hinted((32, 3)));
    assert!(hinted((3, 32)));
    assert!(!hinted((32, 64)));
    assert!(!hinted((64, 32)));
    assert!(!hinted((28, 28)));
}

#[test]
fn mix_size_overflow() {
    let plan = pairs(2);
    let x = vec![0.0f32; 4];
    let mut out = sentinel(4);
    assert_err!(
        cpu::mix(&plan, &SampleShape::rows(usize::MAX), &x, &mut out),
        MixError::SizeOverflow { .. },
        out
    );
    let big = SampleShape::channels_first(usize::MAX / 2, 3, 1);
    assert_err!(
        cpu::mix(&plan, &big, &x, &mut out),
        MixError::SizeOverflow { .. },
        out
    );
    let mut y = sentinel(4);
    assert_err!(
        cpu::mix_in_place(&plan, &SampleShape::rows(usize::MAX), &mut y),
        MixError::SizeOverflow { .. },
        y
    );
}

#[test]
fn mix_in_place_needs_an_involution() {
    let cycle = MixPlan::from_parts(&[1, 2, 0], &[0.5; 3]).unwrap();
    let mut x = sentinel(9);
    assert_err!(
        cpu::mix_in_place(&cycle, &SampleShape::rows(3), &mut x),
        MixError::NotInvolution {
            index: 0,
            partner: 1
        },
        x
    );
    // The same plan is fine out of place.
    let mut out = vec![0.0f32; 9];
    assert!(cpu::mix(&cycle, &SampleShape::rows(3), &x, &mut out).is_ok());
    // u8 and bf16 buffers are left alone too.
    let mut pixels = vec![7u8; 9];
    assert!(matches!(
        cpu::mix_in_place(&cycle, &SampleShape::rows(3), &mut pixels),
        Err(MixError::NotInvolution { .. })
    ));
    assert_eq!(pixels, vec![7u8; 9]);
    let mut halfs = vec![bf16::from_f32(SENTINEL); 9];
    assert!(cpu::mix_in_place(&cycle, &SampleShape::rows(3), &mut halfs).is_err());
    assert!(halfs.iter().all(|&v| v == bf16::from_f32(SENTINEL)));
}

#[test]
fn soft_target_errors() {
    let plan = pairs(2);
    let spec = TargetSpec::new(3, 0.1).unwrap();
    let mut out = sentinel(6);
    assert_err!(
        cpu::soft_targets(&plan, &spec, &[0u32, 3], &mut out),
        MixError::LabelOutOfRange {
            index: 1,
            label: 3,
            num_classes: 3
        },
        out
    );
    assert_err!(
        cpu::soft_targets(&plan, &spec, &[0u32, 1, 2], &mut out),
        MixError::BatchMismatch {
            what: "labels",
            plan: 2,
            data: 3
        },
        out
    );
    let mut short = sentinel(5);
    assert_err!(
        cpu::soft_targets(&plan, &spec, &[0u32, 1], &mut short),
        MixError::ShapeMismatch { what: "out", .. },
        short
    );
    // Negative i64 labels are typed errors, not wrap-arounds.
    assert_err!(
        cpu::soft_targets(&plan, &spec, &[0i64, -1], &mut out),
        MixError::LabelOutOfRange {
            index: 1,
            label: -1,
            num_classes: 3
        },
        out
    );
    assert_err!(
        cpu::soft_targets(&plan, &spec, &[i64::MAX, 0], &mut out),
        MixError::LabelOutOfRange {
            index: 0,
            label: i64::MAX,
            num_classes: 3
        },
        out
    );
}

/// Specs are validated when they are built: a spec that exists is usable.
#[test]
fn spec_errors_at_construction() {
    assert!(matches!(
        TargetSpec::new(0, 0.1),
        Err(MixError::EmptyShape { .. })
    ));
    assert!(matches!(
        CeSpec::new(0, 0.1, Reduction::Mean),
        Err(MixError::EmptyShape { .. })
    ));
    for eps in [1.0, -0.1, -0.5, f64::NAN, f64::INFINITY] {
        for r in [
            TargetSpec::new(3, eps).map(|_| ()),
            CeSpec::new(3, eps, Reduction::Sum).map(|_| ()),
            BceSpec::new(3, eps, Reduction::Sum).map(|_| ()),
        ] {
            assert!(
                matches!(
                    r,
                    Err(MixError::InvalidArgument {
                        what: "label_smoothing",
                        ..
                    })
                ),
                "{eps}: {r:?}"
            );
        }
    }
    let huge = u32::MAX as usize + 1;
    assert!(matches!(
        TargetSpec::new(huge, 0.0),
        Err(MixError::SizeOverflow { .. })
    ));
    assert!(matches!(
        CeSpec::new(huge, 0.0, Reduction::Sum),
        Err(MixError::SizeOverflow { .. })
    ));
    let bad = MixConfig {
        label_smoothing: 1.5,
        ..MixConfig::timm(10)
    };
    assert!(bad.ce_spec(Reduction::Mean).is_err());
    assert!(bad.target_spec().is_err());
}

/// A plan drawn by a sampler remembers its config's classes and smoothing: soft targets and
/// both losses given another spec fail naming both, and write nothing.
#[test]
fn spec_other_than_the_plans_is_an_error() {
    let config = MixConfig::timm(1000); // label smoothing 0.1
    let plan = Sampler::new(config.clone(), 0).unwrap().plan(0, 2).unwrap();
    let is_spec_error = |e: &MixError| {
        matches!(e, MixError::InvalidArgument { what: "spec", .. })
            && e.to_string()
                .contains("1000 classes with label_smoothing 0.1")
            && e.to_string().contains("10 classes with label_smoothing 0")
    };
    let other = TargetSpec::new(10, 0.0).unwrap();
    let mut out = sentinel(20);
    let r = cpu::soft_targets(&plan, &other, &[0u32, 1], &mut out);
    assert!(matches!(&r, Err(e) if is_spec_error(e)), "{r:?}");
    assert_same_bits("out", &out, &sentinel(20));
    assert!(matches!(
        reference::soft_targets(&plan, &other, &[0u32, 1]),
        Err(e) if is_spec_error(&e)
    ));
    // The README's old mistake: timm's config beside a spec without its 0.1 smoothing.
    let no_smoothing = CeSpec::new(1000, 0.0, Reduction::Mean).unwrap();
    let logits = vec![0.0f32; 2000];
    let mut grad = sentinel(2000);
    let (y, g) = ([0u32, 1], GradOutput::default());
    let r = cpu::mixup_ce(&plan, &no_smoothing, &logits, &y, g, None, &mut grad);
    assert!(
        matches!(&r, Err(MixError::InvalidArgument { what: "spec", .. })),
        "{r:?}"
    );
    assert_same_bits("grad", &grad, &sentinel(2000));
    let ten = CeSpec::new(10, 0.0, Reduction::Mean).unwrap();
    let r = cpu::mixup_ce_forward(&plan, &ten, &logits[..20], &[0u32, 1], None);
    assert!(matches!(&r, Err(e) if is_spec_error(e)), "{r:?}");
    let bce = BceSpec::new(10, 0.0, Reduction::Mean).unwrap();
    let r = cpu::mixup_bce_forward(&plan, &bce, &logits[..20], &[0u32, 1], None);
    assert!(matches!(&r, Err(e) if is_spec_error(e)), "{r:?}");
    let r = reference::mixup_ce(&plan, &ten, &logits[..20], &y, g);
    assert!(matches!(&r, Err(e) if is_spec_error(e)), "{r:?}");
    // The config's own specs pass; a hand-built or rebound plan takes any spec.
    let own = config.ce_spec(Reduction::Mean).unwrap();
    assert!(cpu::mixup_ce_forward(&plan, &own, &logits, &[0u32, 1], None).is_ok());
    let own_bce = config.bce_spec(Reduction::Mean).unwrap();
    assert!(cpu::mixup_bce_forward(&plan, &own_bce, &logits, &[0u32, 1], None).is_ok());
    let rebound = plan.clone().with_targets(None);
    assert!(cpu::mixup_ce_forward(&rebound, &ten, &logits[..20], &[0u32, 1], None).is_ok());
}

/// Reduction::None returns the per-sample losses and no scalar: every loss entry point wants
/// the `losses` buffer, and says so when it is missing.
#[test]
fn reduction_none_requires_losses() {
    let plan = pairs(2);
    let none = CeSpec::new(3, 0.1, Reduction::None).unwrap();
    let logits = vec![0.5f32; 6];
    let mut grad = sentinel(6);
    let (g, y) = (GradOutput::default(), [0u32, 1]);
    let bce = BceSpec::new(3, 0.1, Reduction::None).unwrap();
    let mut z = logits.clone();
    let results = [
        cpu::mixup_ce(&plan, &none, &logits, &y, g, None, &mut grad),
        cpu::mixup_ce_forward(&plan, &none, &logits, &y, None),
        cpu::mixup_ce_in_place(&plan, &none, &mut z, &y, g, None),
        cpu::mixup_bce(&plan, &bce, &logits, &y, g, None, &mut grad),
        cpu::mixup_bce_forward(&plan, &bce, &logits, &y, None),
    ];
    for r in results {
        assert!(
            matches!(r, Err(MixError::InvalidArgument { what: "losses", .. })),
            "{r:?}"
        );
    }
    assert_eq!(z, logits);
    assert_same_bits("grad", &grad, &sentinel(6));
    // With the buffer: None, and the losses match the reference.
    let mut losses = [0.0f32; 2];
    let y64 = [0i64, 1];
    let r = cpu::mixup_ce(&plan, &none, &logits, &y64, g, Some(&mut losses), &mut grad);
    assert_eq!(r, Ok(None));
    let want = reference::mixup_ce(&plan, &none, &logits, &y64, g).unwrap();
    assert_eq!(want.loss, None);
    for (l, w) in losses.iter().zip(&want.losses) {
        assert!((f64::from(*l) - w).abs() < 1e-6);
    }
    let r = cpu::mixup_bce_forward(&plan, &bce, &logits, &y, Some(&mut losses));
    assert_eq!(r, Ok(None));
    let want = reference::mixup_bce(&plan, &bce, &logits, &y, g).unwrap();
    assert_eq!(want.loss, None);
    for (l, w) in losses.iter().zip(&want.losses) {
        assert!((f64::from(*l) - w).abs() < 1e-5 * w.abs().max(1.0));
    }
}

/// i64 labels (PyTorch's dtype) give the same results as u32, and a negative one is a typed
/// error before any work, in every loss entry point.
#[test]
fn i64_labels() {
    let plan = pairs(2);
    let spec = CeSpec::new(3, 0.1, Reduction::Sum).unwrap();
    let logits = [0.3f32, -1.0, 2.0, 0.5, 0.0, -0.25];
    let (mut g32, mut g64) = ([0.0f32; 6], [0.0f32; 6]);
    let g = GradOutput::default();
    let a = cpu::mixup_ce(&plan, &spec, &logits, &[2u32, 0], g, None, &mut g32).unwrap();
    let b = cpu::mixup_ce(&plan, &spec, &logits, &[2i64, 0], g, None, &mut g64).unwrap();
    assert_eq!((a, g32), (b, g64));
    let bce = BceSpec::new(3, 0.1, Reduction::Sum).unwrap();
    let a = cpu::mixup_bce_forward(&plan, &bce, &logits, &[2u32, 0], None).unwrap();
    let b = cpu::mixup_bce_forward(&plan, &bce, &logits, &[2i64, 0], None).unwrap();
    assert_eq!(a, b);
    let negative = MixError::LabelOutOfRange {
        index: 1,
        label: -3,
        num_classes: 3,
    };
    let mut grad = sentinel(6);
    let r = cpu::mixup_ce(&plan, &spec, &logits, &[2i64, -3], g, None, &mut grad);
    assert_eq!(r, Err(negative.clone()));
    assert_same_bits("grad", &grad, &sentinel(6));
    assert_eq!(
        cpu::mixup_ce_forward(&plan, &spec, &logits, &[2i64, -3], None),
        Err(negative.clone())
    );
    let r = cpu::mixup_bce(&plan, &bce, &logits, &[2i64, -3], g, None, &mut grad);
    assert_eq!(r, Err(negative.clone()));
    assert_eq!(
        reference::mixup_ce(&plan, &spec, &logits, &[2i64, -3], g).unwrap_err(),
        negative
    );
    assert!(negative.to_string().contains("-3"));
}

/// Runs the three loss entry points with the same arguments; checks the variant each returns
/// and that grad, logits (in place) and losses keep their sentinels.
fn ce_case(
    plan: &MixPlan,
    spec: CeSpec,
    logits_len: usize,
    labels: &[u32],
    grad_output: GradOutput<'_>,
    losses_len: usize,
    expect: fn(&MixError) -> bool,
) {
    let c = spec.num_classes();
    let grad_len = plan.len().saturating_mul(c).min(1 << 20);
    let logits = vec![0.25f32; logits_len];
    let mut grad = sentinel(grad_len);
    let mut losses = sentinel(losses_len);
    let r = cpu::mixup_ce(
        &plan.clone(),
        &spec,
        &logits,
        labels,
        grad_output,
        Some(&mut losses),
        &mut grad,
    );
    assert!(matches!(&r, Err(e) if expect(e)), "mixup_ce: {r:?}");
    assert_same_bits("grad", &grad, &sentinel(grad_len));
    assert_same_bits("losses", &losses, &sentinel(losses_len));

    let mut z = sentinel(logits_len);
    let r = cpu::mixup_ce_in_place(plan, &spec, &mut z, labels, grad_output, Some(&mut losses));
    assert!(
        matches!(&r, Err(e) if expect(e)),
        "mixup_ce_in_place: {r:?}"
    );
    assert_same_bits("logits", &z, &sentinel(logits_len));
    assert_same_bits("losses", &losses, &sentinel(losses_len));

    // Forward only has no grad_output: skip cases that are only about it.
    if matches!(grad_output, GradOutput::Scalar(g) if g == 1.0) {
        let r = cpu::mixup_ce_forward(plan, &spec, &logits, labels, Some(&mut losses));
        assert!(matches!(&r, Err(e) if expect(e)), "mixup_ce_forward: {r:?}");
        assert_same_bits("losses", &losses, &sentinel(losses_len));
    }
}

#[test]
fn ce_errors() {
    let plan = pairs(2);
    let mean = CeSpec::new(3, 0.1, Reduction::Mean).unwrap();
    let none = CeSpec::new(3, 0.1, Reduction::None).unwrap();
    let one = GradOutput::Scalar(1.0);
    // Lengths vs shape: logits, losses.
    ce_case(&plan, mean, 5, &[0, 1], one, 2, |e| {
        matches!(
            e,
            MixError::ShapeMismatch {
                what: "logits",
                shape: "[B, C]",
                batch: 2,
                per_sample: 3,
                got: 5
            }
        )
    });
    ce_case(&plan, mean, 6, &[0, 1], one, 3, |e| {
        matches!(e, MixError::LengthMismatch { what: "losses", .. })
    });
    // Labels: too many, out of range.
    ce_case(&plan, mean, 6, &[0, 1, 1], one, 2, |e| {
        matches!(
            e,
            MixError::BatchMismatch {
                what: "labels",
                plan: 2,
                data: 3
            }
        )
    });
    ce_case(&plan, mean, 6, &[5, 1], one, 2, |e| {
        matches!(
            e,
            MixError::LabelOutOfRange {
                index: 0,
                label: 5,
                ..
            }
        )
    });
    // GradOutput: NaN, infinite, per-sample with Mean, per-sample wrong length or NaN.
    let bad_grad_output: fn(&MixError) -> bool = |e| {
        matches!(
            e,
            MixError::InvalidArgument {
                what: "grad_output",
                ..
            }
        )
    };
    for (spec, up) in [
        (mean, GradOutput::Scalar(f32::NAN)),
        (mean, GradOutput::Scalar(f32::INFINITY)),
        (mean, GradOutput::PerSample(&[1.0, 1.0])),
        (none, GradOutput::PerSample(&[1.0, f32::NAN])),
    ] {
        ce_case(&plan, spec, 6, &[0, 1], up, 2, bad_grad_output);
    }
    let short = GradOutput::PerSample(&[1.0]);
    ce_case(&plan, none, 6, &[0, 1], short, 2, |e| {
        matches!(
            e,
            MixError::LengthMismatch {
                what: "grad_output",
                ..
            }
        )
    });
    // The mean over an empty batch is undefined.
    let empty = MixPlan::identity(0).unwrap();
    ce_case(&empty, mean, 0, &[], one, 0, |e| {
        matches!(e, MixError::EmptyShape { .. })
    });
}

#[test]
fn ce_grad_length() {
    let plan = pairs(2);
    let spec = CeSpec::new(3, 0.0, Reduction::Mean).unwrap();
    let logits = vec![0.0f32; 6];
    let mut grad = sentinel(7);
    let mut losses = sentinel(2);
    let (y, g) = ([0u32, 1], GradOutput::default());
    let r = cpu::mixup_ce(&plan, &spec, &logits, &y, g, Some(&mut losses), &mut grad);
    assert!(
        matches!(
            r,
            Err(MixError::ShapeMismatch {
                what: "grad",
                batch: 2,
                per_sample: 3,
                got: 7,
                ..
            })
        ),
        "{r:?}"
    );
    assert_same_bits("grad", &grad, &sentinel(7));
    assert_same_bits("losses", &losses, &sentinel(2));
}

/// Garbage values (not shapes) are not errors and must not panic: NaN and infinite logits
/// give NaN or infinite losses; NaN pixels mix to NaN (or 0 for u8).
#[test]
fn non_finite_values_do_not_panic() {
    let plan = pairs(2);
    let spec = CeSpec::new(3, 0.1, Reduction::Mean).unwrap();
    let logits = [f32::NAN, 0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, 0.0];
    let mut grad = vec![0.0f32; 6];
    let (y, g) = ([0u32, 1], GradOutput::default());
    let loss = cpu::mixup_ce(&plan, &spec, &logits, &y, g, None, &mut grad);
    let loss = loss.unwrap().unwrap();
    assert!(!loss.is_finite());
    let x = [f32::NAN, 1.0, f32::INFINITY, 2.0];
    let mut out = [0.0f32; 4];
    cpu::mix(&plan, &SampleShape::rows(2), &x, &mut out).unwrap();
    assert!(out[0].is_nan() && out[2].is_nan());
}

/// A `[B, C]` length error gives B and C, and says which extent the given length fits.
#[test]
fn shape_mismatch_names_b_and_c() {
    let plan = pairs(2);
    let spec = CeSpec::new(3, 0.0, Reduction::Sum).unwrap();
    let msg = |n: usize| {
        cpu::mixup_ce_forward(&plan, &spec, &vec![0.0f32; n], &[0u32, 1], None)
            .unwrap_err()
            .to_string()
    };
    let head = |n: usize| {
        format!("`logits` has {n} elements, but [B, C] = [2, 3] needs 6 (B is the plan's batch)")
    };
    // 9 = 3 rows of C: another batch.
    assert_eq!(
        msg(9),
        head(9) + "; it holds 3 rows of 3: is the plan for this batch?"
    );
    // 8 = B rows of 4: another class count.
    assert_eq!(msg(8), head(8) + "; it holds 2 rows of 4, not 3");
    // 7 fits neither.
    assert_eq!(msg(7), head(7));
    // 12 fits both readings, and both are named.
    assert_eq!(
        msg(12),
        head(12)
            + "; it holds 4 rows of 3 (a plan for another batch?) or 2 rows of 6 (another size \
               per sample?)"
    );
    let mut t = vec![0.0f32; 5];
    let e = cpu::soft_targets(&plan, spec.targets(), &[0u32, 1], &mut t).unwrap_err();
    assert!(
        matches!(
            e,
            MixError::ShapeMismatch {
                what: "out",
                got: 5,
                ..
            }
        ),
        "{e:?}"
    );
}
