//! `cpu::mix` and `cpu::mix_in_place` against the f64 reference and against the shared f32
//! formula (bit for bit), over awkward shapes, every plan kind, both image layouts and all
//! element types.

#![cfg(feature = "cpu")]

mod common;

use common::*;
use mixup_kernels::{Element, MixPlan, SampleShape, bf16, cpu, f16, reference};

/// The shared f32 semantics, written as plainly as possible with `Element`'s own conversions:
/// `from_f32(lam * a + (1 - lam) * b)`, partner's value inside a CutMix box of an image layout,
/// own value outside it, self-partnered samples copied. The CPU path must match it bit for bit.
fn formula<T: Element>(plan: &MixPlan, layout: &SampleShape, x: &[T]) -> Vec<T> {
    let row = layout.sample_len().unwrap();
    let mut out = x.to_vec();
    for (i, s) in plan.samples().enumerate() {
        if s.partner == i {
            continue;
        }
        for k in 0..row {
            let (a, b) = (x[i * row + k], x[s.partner * row + k]);
            let inside = in_box(layout, s.cut, k);
            out[i * row + k] = match inside {
                None => T::from_f32(s.lam * a.to_f32() + (1.0 - s.lam) * b.to_f32()),
                Some(true) => b,
                Some(false) => a,
            };
        }
    }
    out
}

/// Tolerance against the f64 reference. Inputs lie in [-1, 1) (u8: 0..=255). The f32 formula
/// rounds `λa`, `1-λ`, `(1-λ)b` and the sum: at most 4 roundings of 2^-24 relative to
/// magnitudes ≤ max|x|, so |error| ≤ 4·2^-24·max|x| ≈ 2.4e-7 for max|x| = 1; we allow 5e-7
/// (relative tolerance 0: outputs near 0 come from cancellation, where only an absolute bound
/// holds). Then the one rounding to T adds half an ulp of T; for u8, that is 0.5 absolute on top
/// of 4·2^-24·255 ≈ 6e-5.
fn tol<T: Element>() -> Tol {
    let f32_err = if T::DTYPE == mixup_kernels::ScalarType::U8 {
        1e-4
    } else {
        5e-7
    };
    Tol::new(f32_err, 0.0).stored_as::<T>()
}

/// Runs out of place and in place (for involutions) and checks both against the formula
/// (bits) and the reference (tolerance).
fn check<T: Element>(what: &str, plan: &MixPlan, layout: &SampleShape, x: &[T]) {
    let want_bits = formula(plan, layout, x);
    let want = reference::mix(plan, layout, x).unwrap();
    let mut out = vec![T::from_f32(77.0); x.len()];
    cpu::mix(plan, layout, x, &mut out).unwrap();
    assert_same_bits(
        &format!("{what}: out of place vs f32 formula"),
        &out,
        &want_bits,
    );
    assert_close(
        &format!("{what}: out of place vs f64 reference"),
        &to_f64(&out),
        &want,
        tol::<T>(),
    );
    if plan.is_involution() {
        let mut y = x.to_vec();
        cpu::mix_in_place(plan, layout, &mut y).unwrap();
        assert_same_bits(&format!("{what}: in place vs out of place"), &y, &out);
    }
}

fn rows_all_plans<T: Element>() {
    for batch in BATCHES {
        for row in ROWS {
            let x: Vec<T> = random_vec(batch * row, (batch * 1000 + row) as u64, -1.0, 1.0);
            // The image size only shapes the boxes; Rows lerps CutMix samples too.
            let plans = sampler_plans(batch, (4, 6))
                .into_iter()
                .chain(hand_plans(batch, 4, 6));
            for (name, plan) in plans {
                let what = format!("{:?} B={batch} rows={row} {name}", T::DTYPE);
                check(&what, &plan, &SampleShape::rows(row), &x);
            }
        }
    }
}

/// Image shapes `(C, H, W)`: single pixel, odd sides, one channel, many channels (NHWC lines
/// longer than NCHW ones), non-square.
const IMAGES: [(usize, usize, usize); 5] =
    [(1, 1, 1), (3, 5, 7), (1, 8, 3), (4, 6, 6), (3, 13, 17)];

fn images_all_plans<T: Element>() {
    for batch in BATCHES {
        for (c, h, w) in IMAGES {
            let x: Vec<T> =
                random_vec(batch * c * h * w, (batch * 7 + h * 3 + w) as u64, -1.0, 1.0);
            let layouts = [
                SampleShape::channels_first(c, h, w),
                SampleShape::channels_last(h, w, c),
            ];
            let plans = sampler_plans(batch, (h, w))
                .into_iter()
                .chain(hand_plans(batch, h, w));
            for (name, plan) in plans {
                for layout in &layouts {
                    let what = format!("{:?} B={batch} {layout:?} {name}", T::DTYPE);
                    check(&what, &plan, layout, &x);
                }
            }
        }
    }
}

#[test]
fn rows_f32() {
    rows_all_plans::<f32>();
}
#[test]
fn rows_f16() {
    rows_all_plans::<f16>();
}
#[test]
fn rows_bf16() {
    rows_all_plans::<bf16>();
}
#[test]
fn rows_u8() {
    rows_all_plans::<u8>();
}
#[test]
fn images_f32() {
    images_all_plans::<f32>();
}
#[test]
fn images_f16() {
    images_all_plans::<f16>();
}
#[test]
fn images_bf16() {
    images_all_plans::<bf16>();
}
#[test]
fn images_u8() {
    images_all_plans::<u8>();
}

/// Rows long enough that a batch of 1 or 2 is split across threads (segments of a row on
/// different threads, boundaries in the middle of image lines and box segments).
#[test]
fn long_rows_split_across_threads() {
    for batch in [1, 2, 3] {
        let (c, h, w) = (3, 128, 111);
        let x: Vec<f32> = random_vec(batch * c * h * w, 99 + batch as u64, -1.0, 1.0);
        let xb: Vec<bf16> = random_vec(batch * c * h * w, 98, -1.0, 1.0);
        let mut plans = sampler_plans(batch, (h, w));
        let mut rng = TestRng::new(5);
        let partner = random_pairs(batch, &mut rng);
        let boxes: Vec<_> = (0..batch)
            .map(|i| Some(cut(3 + i as u32..100, 1..110 - i as u32)))
            .collect();
        plans.push((
            "hand boxes".into(),
            MixPlan::with_boxes(&partner, &vec![0.3; batch], &boxes, image(h, w)).unwrap(),
        ));
        for (name, plan) in plans {
            for layout in [
                SampleShape::rows(c * h * w),
                SampleShape::channels_first(c, h, w),
                SampleShape::channels_last(h, w, c),
            ] {
                check(
                    &format!("f32 B={batch} {layout:?} {name}"),
                    &plan,
                    &layout,
                    &x,
                );
                check(
                    &format!("bf16 B={batch} {layout:?} {name}"),
                    &plan,
                    &layout,
                    &xb,
                );
            }
        }
    }
}

/// u8 pixels: f32 arithmetic, then round half to even (numpy's `rint`), as timm's collate.
#[test]
fn u8_rounds_half_to_even() {
    // Sample 0 mixes with 1 at λ = 0.5: (1+2)/2 = 1.5 → 2, (2+3)/2 = 2.5 → 2, (0+255)/2 → 128.
    let plan = MixPlan::from_parts(&[1, 0], &[0.5, 0.25]).unwrap();
    let x: Vec<u8> = vec![1, 2, 0, 10, 2, 3, 255, 13];
    let mut out = vec![0u8; 8];
    cpu::mix(&plan, &SampleShape::rows(4), &x, &mut out).unwrap();
    // Sample 1: 0.25·own + 0.75·partner: 0.25·2+0.75·1 = 1.25 → 1; 0.25·3 + 0.75·2 = 2.25 → 2;
    // 0.25·255 + 0 = 63.75 → 64; 0.25·13 + 0.75·10 = 10.75 → 11.
    assert_eq!(out, vec![2, 2, 128, 12, 1, 2, 64, 11]);
    let mut y = x.clone();
    cpu::mix_in_place(&plan, &SampleShape::rows(4), &mut y).unwrap();
    assert_eq!(y, out);
}

/// A hand-computed CutMix on a 1-channel 3×4 image in both layouts, in and out of place.
#[test]
fn cutmix_pastes_the_partner_box() {
    let b = cut(1..3, 2..4);
    let plan = MixPlan::with_boxes(&[1, 0], &[0.5, 0.75], &[Some(b), None], image(3, 4)).unwrap();
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let layout = SampleShape::channels_first(1, 3, 4);
    let mut out = vec![0.0f32; 24];
    cpu::mix(&plan, &layout, &x, &mut out).unwrap();
    #[rustfmt::skip]
    let want0 = [0., 1., 2., 3.,
                 4., 5., 18., 19.,
                 8., 9., 22., 23.];
    assert_eq!(&out[..12], &want0);
    // Sample 1 is MixUp: 0.75·x1 + 0.25·x0 = x1 - 3.
    let want1: Vec<f32> = (12..24).map(|v| v as f32 - 3.0).collect();
    assert_eq!(&out[12..], &want1[..]);
    let mut y = x.clone();
    cpu::mix_in_place(&plan, &layout, &mut y).unwrap();
    assert_eq!(y, out);
}

/// Mixing a batch of already-soft targets is the same operation under `Layout::Rows`.
#[test]
fn soft_target_rows_mix_like_inputs() {
    let plan = MixPlan::from_parts(&[2, 1, 0], &[0.6, 1.0, 0.9]).unwrap();
    let t: Vec<f32> = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
    let mut out = vec![0.0; 9];
    cpu::mix(&plan, &SampleShape::rows(3), &t, &mut out).unwrap();
    assert_eq!(&out[..3], &[0.6, 0.0, 1.0 - 0.6f32]);
    assert_eq!(&out[3..6], &[0.0, 1.0, 0.0]);
    assert_eq!(&out[6..], &[1.0 - 0.9f32, 0.0, 0.9]);
}
