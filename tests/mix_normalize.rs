//! The fused pixels → model input op (`mix_normalize`): the CPU path against the f64 reference
//! over awkward shapes, every input and output type, both memory formats in and out, and both
//! rounding modes; the formats agreeing bit for bit; errors leaving the output untouched.
//! (Bit-for-bit parity with timm's collate + PrefetchLoader: tests/parity.rs.)
#![cfg(feature = "cpu")]

mod common;

use common::{
    FORMATS, SMALL_IMAGES, assert_close, assert_same_bits, cut, hand_plans, image, layout,
    norm_tol, norm_with_steps, random_vec, sampler_plans, to_f64,
};
use mixup_kernels::{
    CutBox, Element, FloatElement, MemoryFormat, MixError, MixPlan, Normalize, SampleShape,
    ScalarType, bf16, cpu, f16, reference,
};

/// Constants for `c` (at most a few) channels, further apart than [`common::norm_for`]'s.
fn norm_for(c: usize, scale: f64) -> Normalize {
    norm_with_steps(c, scale, (0.1, 0.05))
}

/// `[B, C, H, W]` ⇄ `[B, H, W, C]` of `b` samples.
fn permute<T: Copy>(v: &[T], from: MemoryFormat, c: usize, h: usize, w: usize) -> Vec<T> {
    let row = c * h * w;
    let mut out = v.to_vec();
    for n in 0..v.len() / row.max(1) {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let cf = n * row + (ch * h + y) * w + x;
                    let cl = n * row + (y * w + x) * c + ch;
                    match from {
                        MemoryFormat::ChannelsFirst => out[cl] = v[cf],
                        MemoryFormat::ChannelsLast => out[cf] = v[cl],
                    }
                }
            }
        }
    }
    out
}

fn check_against_reference<I: Element, O: FloatElement>(rint: bool) {
    let more = [(3, 1, 9), (3, 9, 1), (2, 6, 5), (5, 4, 3)];
    let shapes = SMALL_IMAGES.into_iter().chain(more);
    let (lo, hi, scale, max_in) = if I::DTYPE == ScalarType::U8 {
        (0.0, 255.0, 255.0, 255.0)
    } else {
        (-2.0, 3.0, 1.0, 3.0)
    };
    for (c, h, w) in shapes {
        let norm = norm_for(c, scale).with_u8_rounding(rint);
        for batch in [1, 2, 5, 7] {
            let mut plans = sampler_plans(batch, (h, w));
            plans.extend(hand_plans(batch, h, w));
            let x_cf: Vec<I> =
                random_vec(batch * c * h * w, (batch * 131 + c * 7 + h) as u64, lo, hi);
            for (name, plan) in &plans {
                for fin in FORMATS {
                    let x = match fin {
                        MemoryFormat::ChannelsFirst => x_cf.clone(),
                        MemoryFormat::ChannelsLast => {
                            permute(&x_cf, MemoryFormat::ChannelsFirst, c, h, w)
                        }
                    };
                    let lay = layout(fin, c, h, w);
                    for fout in FORMATS {
                        let what = format!(
                            "{} -> {}: {name}, B {batch}, {c}x{h}x{w} {:?} {} -> {}",
                            I::DTYPE.name(),
                            O::DTYPE.name(),
                            fin,
                            fout.name(),
                            if rint { "rint" } else { "exact" },
                        );
                        let want = reference::mix_normalize(plan, &lay, &norm, &x, fout).unwrap();
                        let mut out = vec![O::default(); x.len()];
                        cpu::mix_normalize(plan, &lay, &norm, &x, fout, &mut out).unwrap();
                        assert_close(&what, &to_f64(&out), &want, norm_tol::<O>(&norm, max_in));
                    }
                }
            }
        }
    }
}

#[test]
fn u8_to_every_float_type_matches_the_reference() {
    for rint in [false, true] {
        check_against_reference::<u8, f32>(rint);
        check_against_reference::<u8, f16>(rint);
        check_against_reference::<u8, bf16>(rint);
    }
}

#[test]
fn float_inputs_match_the_reference() {
    check_against_reference::<f32, f32>(false);
    check_against_reference::<f16, f16>(false);
    check_against_reference::<f16, f32>(false);
    check_against_reference::<bf16, bf16>(false);
    check_against_reference::<f32, bf16>(false);
}

/// Every element is computed by the same f32 operations whatever the formats: the four format
/// pairs give the same bits after permutation. Also with one sample whose long rows are split
/// into several tasks, and with a batch large enough for whole-sample tasks.
#[test]
fn formats_agree_bit_for_bit() {
    fn run<O: FloatElement>() {
        for (batch, c, h, w) in [(1, 3, 160, 150), (2, 4, 67, 61), (40, 3, 24, 24)] {
            let norm = norm_for(c, 255.0);
            let x_cf: Vec<u8> = random_vec(batch * c * h * w, 9, 0.0, 255.0);
            let x_cl = permute(&x_cf, MemoryFormat::ChannelsFirst, c, h, w);
            let mut plans = sampler_plans(batch, (h, w));
            plans.extend(hand_plans(batch, h, w));
            for (name, plan) in &plans {
                for rint in [false, true] {
                    let norm = norm.clone().with_u8_rounding(rint);
                    let go = |fin: MemoryFormat, fout: MemoryFormat| {
                        let x = if fin == MemoryFormat::ChannelsFirst {
                            &x_cf
                        } else {
                            &x_cl
                        };
                        let mut out = vec![O::default(); x.len()];
                        cpu::mix_normalize(plan, &layout(fin, c, h, w), &norm, x, fout, &mut out)
                            .unwrap();
                        if fout == MemoryFormat::ChannelsLast {
                            permute(&out, fout, c, h, w)
                        } else {
                            out
                        }
                    };
                    let base = go(MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsFirst);
                    for (fin, fout) in [
                        (MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast),
                        (MemoryFormat::ChannelsLast, MemoryFormat::ChannelsFirst),
                        (MemoryFormat::ChannelsLast, MemoryFormat::ChannelsLast),
                    ] {
                        let what = format!(
                            "{name} B {batch} {c}x{h}x{w} rint {rint}: {fin:?} -> {fout:?}"
                        );
                        assert_same_bits(&what, &go(fin, fout), &base);
                    }
                }
            }
        }
    }
    run::<f32>();
    run::<bf16>();
}

/// The op's values, spelled out for one pixel: CutMix takes the partner's value inside the box
/// (at its edges too), the lerp keeps its fraction unless rounding is asked for, and each
/// channel gets its own constants.
#[test]
fn hand_values() {
    // Two 2x3 two-channel images, channels-last; sample 0 pastes column 2 (the right edge)
    // of rows 0..2 from sample 1; sample 1 lerps with λ = 0.5.
    let b = cut(0..2, 2..3);
    let plan = MixPlan::with_boxes(&[1, 0], &[0.5, 0.5], &[Some(b), None], image(2, 3)).unwrap();
    let lay = SampleShape::channels_last(2, 3, 2);
    let x: Vec<u8> = (0..24).map(|v| v as u8 * 3).collect();
    let norm = Normalize::new(&[1.0, 2.0], &[2.0, 4.0], 1.0).unwrap();
    let mut out = vec![0.0f32; 24];
    cpu::mix_normalize(
        &plan,
        &lay,
        &norm,
        &x,
        MemoryFormat::ChannelsFirst,
        &mut out,
    )
    .unwrap();
    // Sample 0, channel 0 (values 0, 6, 12 | 18, 24, 30), column 2 from sample 1 (36 + 12,
    // 36 + 30: sample 1 starts 12 elements on).
    let c0: Vec<f32> = [0.0, 6.0, 48.0, 18.0, 24.0, 66.0]
        .iter()
        .map(|v| (v - 1.0) / 2.0)
        .collect();
    assert_eq!(&out[..6], &c0[..]);
    // Sample 0, channel 1: values 3, 9, 36 + 15 | 21, 27, 36 + 33.
    let c1: Vec<f32> = [3.0, 9.0, 51.0, 21.0, 27.0, 69.0]
        .iter()
        .map(|v| (v - 2.0) / 4.0)
        .collect();
    assert_eq!(&out[6..12], &c1[..]);
    // Sample 1 lerps: channel 1, pixel (0, 0) is (39 + 3) / 2 = 21.
    assert_eq!(out[18], (21.0 - 2.0) / 4.0);
    // A fraction (λ = 0.25), kept or rounded half to even.
    let plan = MixPlan::from_parts(&[1, 0], &[0.25, 0.25]).unwrap();
    let one = SampleShape::channels_first(1, 1, 1);
    let n = Normalize::new(&[0.0], &[1.0], 1.0).unwrap();
    let pixels_1_and_2 = |n: &Normalize| {
        let mut o = [0.0f32; 2];
        let last = MemoryFormat::ChannelsLast;
        cpu::mix_normalize(&plan, &one, n, &[1u8, 2], last, &mut o).unwrap();
        o
    };
    assert_eq!(pixels_1_and_2(&n), [1.75, 1.25]);
    let n = n.with_u8_rounding(true);
    assert_eq!(pixels_1_and_2(&n), [2.0, 1.0]); // 1.75 → 2, 1.25 → 1
}

/// timm's `PrefetchLoader` constants: `torch.tensor([x * 255 for x in mean])` rounds the f64
/// product once to f32.
#[test]
fn imagenet_constants_are_timms() {
    let n = Normalize::imagenet_u8();
    for c in 0..3 {
        assert_eq!(n.mean()[c], (Normalize::IMAGENET_MEAN[c] * 255.0) as f32);
        assert_eq!(n.std()[c], (Normalize::IMAGENET_STD[c] * 255.0) as f32);
    }
    assert_eq!(Normalize::imagenet().std(), [0.229f32, 0.224, 0.225]);
    assert!(!n.u8_rounding() && n.clone().with_u8_rounding(true).u8_rounding());
}

#[test]
fn bad_arguments_are_rejected_and_nothing_is_written() {
    let plan = MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap();
    let lay = SampleShape::channels_first(3, 2, 2);
    let norm = Normalize::imagenet_u8();
    let x = vec![7u8; 24];
    let first = MemoryFormat::ChannelsFirst;
    let untouched = |r: Result<(), MixError>, out: &[f32]| {
        assert!(out.iter().all(|&v| v == -9.0), "written on error");
        r.unwrap_err()
    };
    let refuses_normalize = |e: &MixError| {
        matches!(
            e,
            MixError::InvalidArgument {
                what: "normalize",
                ..
            }
        )
    };
    let mut out = vec![-9.0f32; 24];
    let e = untouched(
        cpu::mix_normalize(&plan, &SampleShape::Rows(12), &norm, &x, first, &mut out),
        &out,
    );
    assert!(
        matches!(e, MixError::InvalidArgument { what: "shape", .. }),
        "{e}"
    );
    let gray = SampleShape::channels_first(1, 2, 6);
    let e = untouched(
        cpu::mix_normalize(&plan, &gray, &norm, &x, first, &mut out),
        &out,
    );
    assert!(refuses_normalize(&e), "{e}");
    assert!(e.to_string().contains("3 channels"), "{e}");
    let xf = vec![0.5f32; 24];
    let rint = norm.clone().with_u8_rounding(true);
    let e = untouched(
        cpu::mix_normalize(&plan, &lay, &rint, &xf, first, &mut out),
        &out,
    );
    assert!(refuses_normalize(&e), "{e}");
    let e = untouched(
        cpu::mix_normalize(&plan, &lay, &norm, &x[..23], first, &mut out),
        &out,
    );
    assert!(
        matches!(
            e,
            MixError::ShapeMismatch {
                what: "x",
                got: 23,
                ..
            }
        ),
        "{e:?}"
    );
    let mut short = vec![-9.0f32; 23];
    let e = untouched(
        cpu::mix_normalize(&plan, &lay, &norm, &x, first, &mut short),
        &short,
    );
    assert!(
        matches!(e, MixError::LengthMismatch { what: "out", .. }),
        "{e}"
    );
    let boxed = MixPlan::with_boxes(
        &[1, 0],
        &[0.5, 0.5],
        &[Some(CutBox::default()), None],
        image(3, 3),
    )
    .unwrap();
    let e = untouched(
        cpu::mix_normalize(&boxed, &lay, &norm, &x, first, &mut out),
        &out,
    );
    assert!(matches!(e, MixError::ImageSizeMismatch { .. }), "{e}");
    let e = untouched(
        cpu::mix_normalize(
            &MixPlan::identity(3).unwrap(),
            &lay,
            &norm,
            &x,
            first,
            &mut out,
        ),
        &out,
    );
    assert!(
        matches!(e, MixError::ShapeMismatch { what: "x", .. }),
        "{e}"
    );
    // The reference checks the same way.
    assert!(matches!(
        reference::mix_normalize(&plan, &gray, &norm, &x, first),
        Err(MixError::InvalidArgument {
            what: "normalize",
            ..
        })
    ));
    // Empty batch: nothing to do.
    let empty = MixPlan::identity(0).unwrap();
    cpu::mix_normalize::<u8, f32>(&empty, &lay, &norm, &[], first, &mut []).unwrap();
}

#[test]
fn normalize_is_validated() {
    let bad = |r: Result<Normalize, MixError>| r.unwrap_err();
    assert_eq!(
        bad(Normalize::new(&[], &[], 1.0)),
        MixError::EmptyShape { what: "mean" }
    );
    assert!(matches!(
        bad(Normalize::new(&[0.5], &[0.2, 0.2], 1.0)),
        MixError::LengthMismatch { what: "std", .. }
    ));
    for scale in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            bad(Normalize::new(&[0.5], &[0.2], scale)),
            MixError::InvalidArgument { what: "scale", .. }
        ));
    }
    for m in [f64::NAN, f64::INFINITY, 1e39] {
        assert!(matches!(
            bad(Normalize::new(&[m], &[0.2], 1.0)),
            MixError::InvalidArgument { what: "mean", .. }
        ));
    }
    for s in [0.0, -0.2, f64::NAN, 1e-45, 1e39] {
        let e = bad(Normalize::new(&[0.5, 0.5], &[0.2, s], 1.0));
        assert!(
            matches!(e, MixError::InvalidArgument { what: "std", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("channel 1"), "{e}");
    }
}

/// Outputs of 16 MiB and more (a channels-last one is then written with non-temporal stores on
/// x86-64): the same values, lines starting at every alignment (odd widths), every format pair,
/// pasted boxes and lerps.
#[test]
fn large_outputs_match_the_reference() {
    fn run<O: FloatElement>(batch: usize) {
        let (c, h, w) = (3, 700, 701);
        let norm = norm_for(c, 255.0);
        let x_cf: Vec<u8> = random_vec(batch * c * h * w, 3, 0.0, 255.0);
        assert!(x_cf.len() * std::mem::size_of::<O>() >= 16 << 20);
        // Pairs; boxes at odd columns, at the right and bottom edges, MixUp between them.
        let partner: Vec<usize> = (0..batch).map(|i| i ^ 1).collect();
        let lam: Vec<f32> = (0..batch).map(|i| 0.3 + 0.1 * i as f32).collect();
        let boxes: Vec<Option<CutBox>> = (0..batch)
            .map(|i| match i % 3 {
                0 => Some(cut(13..411, 7..333)),
                1 => None,
                _ => Some(cut(300..700, 401..701)),
            })
            .collect();
        let plan = &MixPlan::with_boxes(&partner, &lam, &boxes, image(h, w)).unwrap();
        for fin in FORMATS {
            let x = match fin {
                MemoryFormat::ChannelsFirst => x_cf.clone(),
                MemoryFormat::ChannelsLast => permute(&x_cf, MemoryFormat::ChannelsFirst, c, h, w),
            };
            let lay = layout(fin, c, h, w);
            for fout in FORMATS {
                let want = reference::mix_normalize(plan, &lay, &norm, &x, fout).unwrap();
                let mut out = vec![O::default(); x.len()];
                cpu::mix_normalize(plan, &lay, &norm, &x, fout, &mut out).unwrap();
                let what = format!("{} {fin:?} -> {fout:?}", O::DTYPE.name());
                assert_close(&what, &to_f64(&out), &want, norm_tol::<O>(&norm, 255.0));
            }
        }
    }
    run::<f32>(4);
    run::<bf16>(6);
}
