//! Bad input: every CPU entry point returns the right `MixError` variant and leaves every
//! output buffer bit-identical (each is filled with a sentinel first and compared after).

#![cfg(feature = "cpu")]

mod common;

use common::assert_same_bits;
use mixup_kernels::{
    bf16, cpu, CeSpec, CutBox, Layout, MixError, MixPlan, Reduction, TargetSpec, Upstream,
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
    let b = CutBox {
        y0: 1,
        y1: 3,
        x0: 0,
        x1: 4,
    };
    MixPlan::with_boxes(&[1, 0], &[0.5, 0.5], &[Some(b), None], 4, 4).unwrap()
}

#[test]
fn mix_lengths() {
    let plan = pairs(2);
    let x = vec![1.0f32; 8];
    let mut out = sentinel(8);
    assert_err!(
        cpu::mix(&plan, &Layout::Rows(4), &x[..7], &mut out),
        MixError::LengthMismatch {
            what: "x",
            expected: 8,
            got: 7
        },
        out
    );
    let mut short = sentinel(6);
    assert_err!(
        cpu::mix(&plan, &Layout::Rows(4), &x, &mut short),
        MixError::LengthMismatch {
            what: "out",
            expected: 8,
            got: 6
        },
        short
    );
    // A batch of 3 rows given to a plan of 2: the lengths disagree with the shape.
    let mut three = sentinel(12);
    assert_err!(
        cpu::mix_in_place(&plan, &Layout::Rows(4), &mut three),
        MixError::LengthMismatch { what: "x", .. },
        three
    );
}

#[test]
fn mix_image_size_mismatch() {
    let plan = boxed_4x4();
    let layout = Layout::Nchw {
        channels: 2,
        height: 5,
        width: 5,
    };
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
    let layout = Layout::Nhwc {
        height: 4,
        width: 5,
        channels: 2,
    };
    let mut y = sentinel(2 * 2 * 20);
    assert_err!(
        cpu::mix_in_place(&plan, &layout, &mut y),
        MixError::ImageSizeMismatch { .. },
        y
    );
}

#[test]
fn mix_size_overflow() {
    let plan = pairs(2);
    let x = vec![0.0f32; 4];
    let mut out = sentinel(4);
    assert_err!(
        cpu::mix(&plan, &Layout::Rows(usize::MAX), &x, &mut out),
        MixError::SizeOverflow { .. },
        out
    );
    let big = Layout::Nchw {
        channels: usize::MAX / 2,
        height: 3,
        width: 1,
    };
    assert_err!(
        cpu::mix(&plan, &big, &x, &mut out),
        MixError::SizeOverflow { .. },
        out
    );
    let mut y = sentinel(4);
    assert_err!(
        cpu::mix_in_place(&plan, &Layout::Rows(usize::MAX), &mut y),
        MixError::SizeOverflow { .. },
        y
    );
}

#[test]
fn mix_in_place_needs_an_involution() {
    let cycle = MixPlan::from_parts(&[1, 2, 0], &[0.5; 3]).unwrap();
    let mut x = sentinel(9);
    assert_err!(
        cpu::mix_in_place(&cycle, &Layout::Rows(3), &mut x),
        MixError::NotInvolution {
            index: 0,
            partner: 1
        },
        x
    );
    // The same plan is fine out of place.
    let mut out = vec![0.0f32; 9];
    assert!(cpu::mix(&cycle, &Layout::Rows(3), &x, &mut out).is_ok());
    // u8 and bf16 buffers are left alone too.
    let mut pixels = vec![7u8; 9];
    assert!(matches!(
        cpu::mix_in_place(&cycle, &Layout::Rows(3), &mut pixels),
        Err(MixError::NotInvolution { .. })
    ));
    assert_eq!(pixels, vec![7u8; 9]);
    let mut halfs = vec![bf16::from_f32(SENTINEL); 9];
    assert!(cpu::mix_in_place(&cycle, &Layout::Rows(3), &mut halfs).is_err());
    assert!(halfs.iter().all(|&v| v == bf16::from_f32(SENTINEL)));
}

#[test]
fn soft_target_errors() {
    let plan = pairs(2);
    let spec = TargetSpec {
        num_classes: 3,
        smoothing: 0.1,
    };
    let mut out = sentinel(6);
    assert_err!(
        cpu::soft_targets(&plan, &[0, 3], &spec, &mut out),
        MixError::LabelOutOfRange {
            index: 1,
            label: 3,
            num_classes: 3
        },
        out
    );
    assert_err!(
        cpu::soft_targets(&plan, &[0, 1, 2], &spec, &mut out),
        MixError::BatchMismatch { plan: 2, data: 3 },
        out
    );
    let mut short = sentinel(5);
    assert_err!(
        cpu::soft_targets(&plan, &[0, 1], &spec, &mut short),
        MixError::LengthMismatch { what: "out", .. },
        short
    );
    let zero = TargetSpec {
        num_classes: 0,
        smoothing: 0.1,
    };
    assert_err!(
        cpu::soft_targets(&plan, &[0, 0], &zero, &mut out),
        MixError::EmptyShape { .. },
        out
    );
    for smoothing in [1.0, -0.1, f32::NAN, f32::INFINITY] {
        let bad = TargetSpec {
            num_classes: 3,
            smoothing,
        };
        assert_err!(
            cpu::soft_targets(&plan, &[0, 1], &bad, &mut out),
            MixError::InvalidArgument {
                what: "smoothing",
                ..
            },
            out
        );
    }
    let huge = TargetSpec {
        num_classes: u32::MAX as usize + 1,
        smoothing: 0.0,
    };
    assert_err!(
        cpu::soft_targets(&plan, &[0, 1], &huge, &mut out),
        MixError::SizeOverflow { .. },
        out
    );
}

/// Runs the three loss entry points with the same arguments; checks the variant each returns
/// and that grad, logits (in place) and losses keep their sentinels.
fn ce_case(
    plan: &MixPlan,
    spec: CeSpec,
    logits_len: usize,
    labels: &[u32],
    upstream: Upstream<'_>,
    losses_len: usize,
    expect: fn(&MixError) -> bool,
) {
    let c = spec.targets.num_classes;
    let grad_len = plan.len().saturating_mul(c).min(1 << 20);
    let logits = vec![0.25f32; logits_len];
    let mut grad = sentinel(grad_len);
    let mut losses = sentinel(losses_len);
    let r = cpu::mixup_ce(
        &plan.clone(),
        &spec,
        &logits,
        labels,
        upstream,
        Some(&mut losses),
        &mut grad,
    );
    assert!(matches!(&r, Err(e) if expect(e)), "mixup_ce: {r:?}");
    assert_same_bits("grad", &grad, &sentinel(grad_len));
    assert_same_bits("losses", &losses, &sentinel(losses_len));

    let mut z = sentinel(logits_len);
    let r = cpu::mixup_ce_in_place(plan, &spec, &mut z, labels, upstream, Some(&mut losses));
    assert!(
        matches!(&r, Err(e) if expect(e)),
        "mixup_ce_in_place: {r:?}"
    );
    assert_same_bits("logits", &z, &sentinel(logits_len));
    assert_same_bits("losses", &losses, &sentinel(losses_len));

    // Forward only has no upstream: skip cases that are only about it.
    if matches!(upstream, Upstream::Scalar(g) if g == 1.0) {
        let r = cpu::mixup_ce_forward(plan, &spec, &logits, labels, Some(&mut losses));
        assert!(matches!(&r, Err(e) if expect(e)), "mixup_ce_forward: {r:?}");
        assert_same_bits("losses", &losses, &sentinel(losses_len));
    }
}

#[test]
fn ce_errors() {
    let plan = pairs(2);
    let mean = CeSpec::new(3, 0.1, Reduction::Mean);
    let none = CeSpec::new(3, 0.1, Reduction::None);
    let one = Upstream::Scalar(1.0);
    // Lengths vs shape: logits, losses.
    ce_case(&plan, mean, 5, &[0, 1], one, 2, |e| {
        matches!(
            e,
            MixError::LengthMismatch {
                what: "logits",
                expected: 6,
                got: 5
            }
        )
    });
    ce_case(&plan, mean, 6, &[0, 1], one, 3, |e| {
        matches!(e, MixError::LengthMismatch { what: "losses", .. })
    });
    // Labels: too many, out of range.
    ce_case(&plan, mean, 6, &[0, 1, 1], one, 2, |e| {
        matches!(e, MixError::BatchMismatch { plan: 2, data: 3 })
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
    // Upstream: NaN, infinite, per-sample with Mean, per-sample wrong length or NaN.
    for g in [f32::NAN, f32::INFINITY] {
        ce_case(&plan, mean, 6, &[0, 1], Upstream::Scalar(g), 2, |e| {
            matches!(
                e,
                MixError::InvalidArgument {
                    what: "upstream",
                    ..
                }
            )
        });
    }
    ce_case(
        &plan,
        mean,
        6,
        &[0, 1],
        Upstream::PerSample(&[1.0, 1.0]),
        2,
        |e| {
            matches!(
                e,
                MixError::InvalidArgument {
                    what: "upstream",
                    ..
                }
            )
        },
    );
    ce_case(
        &plan,
        none,
        6,
        &[0, 1],
        Upstream::PerSample(&[1.0]),
        2,
        |e| {
            matches!(
                e,
                MixError::LengthMismatch {
                    what: "upstream",
                    ..
                }
            )
        },
    );
    ce_case(
        &plan,
        none,
        6,
        &[0, 1],
        Upstream::PerSample(&[1.0, f32::NAN]),
        2,
        |e| {
            matches!(
                e,
                MixError::InvalidArgument {
                    what: "upstream",
                    ..
                }
            )
        },
    );
    // Classes and smoothing.
    ce_case(
        &plan,
        CeSpec::new(0, 0.1, Reduction::Mean),
        0,
        &[0, 0],
        one,
        2,
        |e| matches!(e, MixError::EmptyShape { .. }),
    );
    for eps in [1.0, -0.5, f32::NAN] {
        ce_case(
            &plan,
            CeSpec::new(3, eps, Reduction::Sum),
            6,
            &[0, 1],
            one,
            2,
            |e| {
                matches!(
                    e,
                    MixError::InvalidArgument {
                        what: "smoothing",
                        ..
                    }
                )
            },
        );
    }
    ce_case(
        &plan,
        CeSpec::new(u32::MAX as usize + 1, 0.0, Reduction::Sum),
        6,
        &[0, 1],
        one,
        2,
        |e| matches!(e, MixError::SizeOverflow { .. }),
    );
    // The mean over an empty batch is undefined.
    let empty = MixPlan::identity(0).unwrap();
    ce_case(&empty, mean, 0, &[], one, 0, |e| {
        matches!(e, MixError::EmptyShape { .. })
    });
}

#[test]
fn ce_grad_length() {
    let plan = pairs(2);
    let spec = CeSpec::new(3, 0.0, Reduction::Mean);
    let logits = vec![0.0f32; 6];
    let mut grad = sentinel(7);
    let mut losses = sentinel(2);
    let r = cpu::mixup_ce(
        &plan,
        &spec,
        &logits,
        &[0, 1],
        Upstream::default(),
        Some(&mut losses),
        &mut grad,
    );
    assert!(
        matches!(
            r,
            Err(MixError::LengthMismatch {
                what: "grad",
                expected: 6,
                got: 7
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
    let spec = CeSpec::new(3, 0.1, Reduction::Mean);
    let logits = [f32::NAN, 0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, 0.0];
    let mut grad = vec![0.0f32; 6];
    let loss = cpu::mixup_ce(
        &plan,
        &spec,
        &logits,
        &[0, 1],
        Upstream::default(),
        None,
        &mut grad,
    )
    .unwrap();
    assert!(!loss.is_finite());
    let x = [f32::NAN, 1.0, f32::INFINITY, 2.0];
    let mut out = [0.0f32; 4];
    cpu::mix(&plan, &Layout::Rows(2), &x, &mut out).unwrap();
    assert!(out[0].is_nan() && out[2].is_nan());
}
