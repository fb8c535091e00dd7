//! Property tests over the public API (proptest): random shapes (0, 1, odd, large; the empty
//! batch for mixing and soft targets, the losses' in tests/mixup_ce.rs and tests/errors.rs), plans from
//! every partner rule and mode (boxes touching the edges come naturally from small images),
//! every dtype, logits with masked, huge and subnormal values, and invalid arguments. Every
//! result equals the f64 reference within the tolerances of the per-op tests, no call panics,
//! and on error every output buffer is untouched. Shrunk failures are kept in
//! `tests/properties.proptest-regressions` and replayed first on every run.

#![cfg(feature = "cpu")]

mod common;

use common::*;
use mixup_kernels::{
    BceSpec, CeSpec, Element, FloatElement, GradOutput, MixConfig, MixPlan, Mode, PartnerRule,
    Reduction, SampleShape, Sampler, TargetSpec, bf16, cpu, f16, reference, timm_rand_bbox,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

const RULES: [PartnerRule; 4] = [
    PartnerRule::Flip,
    PartnerRule::Permutation,
    PartnerRule::RandomPairs,
    PartnerRule::Roll,
];
const MODES: [Mode; 3] = [Mode::Batch, Mode::Pair, Mode::Elem];

/// A plan from the sampler: MixUp and CutMix both on, `prob` < 1. Pair mode needs an involution,
/// so it falls back to Elem for permutations.
fn sampler_plan(
    rule: usize,
    mode: usize,
    batch: usize,
    image: (usize, usize),
    step: u64,
) -> MixPlan {
    let partner = RULES[rule];
    let mut mode = MODES[mode];
    if mode == Mode::Pair && !partner.is_involution() {
        mode = Mode::Elem;
    }
    let cfg = MixConfig {
        mixup_alpha: 0.8,
        cutmix_alpha: 1.0,
        prob: 0.9,
        mode,
        partner,
        ..MixConfig::timm(10)
    };
    let size = common::image(image.0, image.1);
    // Forget the config's spec: the properties pair the plan with any class count.
    Sampler::new(cfg, 3)
        .unwrap()
        .plan_images(step, batch, size)
        .unwrap()
        .with_targets(None)
}

fn layout(kind: usize, channels: usize, h: usize, w: usize) -> SampleShape {
    match kind {
        0 => SampleShape::rows(channels * h * w),
        1 => SampleShape::channels_first(channels, h, w),
        _ => SampleShape::channels_last(h, w, channels),
    }
}

fn check_mix<T: Element>(plan: &MixPlan, layout: &SampleShape, seed: u64) {
    let n = plan.len() * layout.sample_len().unwrap();
    let x: Vec<T> = random_vec(n, seed, -100.0, 100.0);
    let want = reference::mix(plan, layout, &x).unwrap();
    let mut out = vec![T::default(); n];
    cpu::mix(plan, layout, &x, &mut out).unwrap();
    let scale = if T::DTYPE == mixup_kernels::ScalarType::U8 {
        255.0
    } else {
        100.0
    };
    let f32_err = if T::DTYPE == mixup_kernels::ScalarType::U8 {
        1e-4
    } else {
        5e-7 * scale
    };
    let tol = Tol::new(f32_err, 0.0).stored_as::<T>();
    assert_close(
        &format!("{:?} mix {layout:?}", T::DTYPE),
        &to_f64(&out),
        &want,
        tol,
    );
    if plan.is_involution() {
        let mut y = x.clone();
        cpu::mix_in_place(plan, layout, &mut y).unwrap();
        assert_same_bits(&format!("{:?} in place", T::DTYPE), &y, &out);
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Mixing (out of place, and in place for involutions) equals the reference for every rule,
    /// mode, layout and dtype, odd and one-pixel images included.
    #[test]
    fn mix_matches_reference(
        rule in 0usize..4, mode in 0usize..3, batch in 0usize..24,
        h in 1usize..9, w in 1usize..9, channels in 1usize..5, kind in 0usize..3,
        step in 0u64..1000, seed in any::<u64>(),
    ) {
        let plan = sampler_plan(rule, mode, batch, (h, w), step);
        let layout = layout(kind, channels, h, w);
        check_mix::<f32>(&plan, &layout, seed);
        check_mix::<bf16>(&plan, &layout, seed);
        check_mix::<u8>(&plan, &layout, seed);
    }

    /// Soft targets equal the reference in every float dtype.
    #[test]
    fn soft_targets_match_reference(
        rule in 0usize..4, mode in 0usize..3, batch in 0usize..24, classes in 1usize..300,
        eps in prop_oneof![Just(0.0f64), 0.0f64..0.99], step in 0u64..1000,
    ) {
        let plan = sampler_plan(rule, mode, batch, (5, 7), step);
        let spec = TargetSpec::new(classes, eps).unwrap();
        let labels = random_labels(batch, classes, step);
        let want = reference::soft_targets(&plan, &spec, &labels).unwrap();
        fn run<T: FloatElement>(plan: &MixPlan, labels: &[u32], spec: &TargetSpec, want: &[f64]) {
            let mut out = vec![T::default(); want.len()];
            cpu::soft_targets(plan, spec, labels, &mut out).unwrap();
            assert_close("targets", &to_f64(&out), want, Tol::new(4e-7, 0.0).stored_as::<T>());
        }
        run::<f32>(&plan, &labels, &spec, &want);
        run::<f16>(&plan, &labels, &spec, &want);
        run::<bf16>(&plan, &labels, &spec, &want);
    }
}

/// What a logit may be: ordinary, masked (the dtype's minimum or −inf), huge, subnormal.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Plain,
    Min,
    NegInf,
    Huge,
    Subnormal,
}

fn logit_kinds() -> impl Strategy<Value = Vec<Kind>> {
    proptest::collection::vec(
        prop_oneof![
            20 => Just(Kind::Plain),
            2 => Just(Kind::Min),
            2 => Just(Kind::NegInf),
            1 => Just(Kind::Huge),
            1 => Just(Kind::Subnormal),
        ],
        1..64,
    )
}

/// Logits `[B, C]`: plain values in [-8, 8], and the special kinds at the positions the pattern
/// (repeated along the batch) puts them. Returns the logits and the largest finite |value|
/// that is not a masked minimum (for the tolerance).
fn logits<T: FloatElement>(b: usize, c: usize, kinds: &[Kind], seed: u64) -> (Vec<T>, f64) {
    let mut z: Vec<T> = random_vec(b * c, seed, -8.0, 8.0);
    let min = match T::DTYPE {
        mixup_kernels::ScalarType::F16 => f16::MIN.to_f32(),
        mixup_kernels::ScalarType::BF16 => bf16::MIN.to_f32(),
        _ => f32::MIN,
    };
    let huge = if T::DTYPE == mixup_kernels::ScalarType::F16 {
        6e4
    } else {
        1e4
    };
    let mut range = 8.0f64;
    for (j, v) in z.iter_mut().enumerate() {
        let k = kinds[(j * 7 + j / c) % kinds.len()];
        *v = match k {
            Kind::Plain => *v,
            Kind::Min => T::from_f32(min),
            Kind::NegInf => T::from_f32(f32::NEG_INFINITY),
            Kind::Huge => {
                range = range.max(f64::from(huge));
                T::from_f32(if j % 2 == 0 { huge } else { -huge })
            }
            Kind::Subnormal => T::from_f32(1e-40),
        };
    }
    (z, range)
}

/// A loss value against the reference: NaN for NaN, the same infinity, else within tolerance.
fn loss_ok(got: f32, want: f64, abs: f64, rel: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        f64::from(got) == want
    } else {
        // A finite value at the edge of f32's range may round to the infinity of its sign.
        let edge = want.abs() >= f64::from(f32::MAX) * (1.0 - rel);
        (f64::from(got) - want).abs() <= abs + rel * want.abs()
            || (edge && got.is_infinite() && (got > 0.0) == (want > 0.0))
    }
}

/// The reduced loss (Mean, Sum) against the reference's: a mean is within a row's tolerance, a
/// sum within `B` of them. The reduced loss is the reduction of the f32 per-sample losses (as
/// PyTorch reduces its `reduction='none'` output): where a row's loss overflowed to an infinity
/// (`loss_ok`'s edge rule: its exact value is beyond f32's range), the reduced loss is that
/// infinity, even when the reference's exact mean is finite.
fn check_reduced(
    what: &str,
    (got, rows): (Option<f32>, &[f32]),
    want: Option<f64>,
    r: Reduction,
    b: usize,
    abs: f64,
) {
    let overflowed = |inf: f32| rows.contains(&inf);
    if let (Some(g), Some(w)) = (got, want)
        && g.is_infinite()
        && w.is_finite()
        && overflowed(g)
    {
        assert!((g > 0.0) == (w > 0.0), "{what} {r:?} loss: {g} vs {w}");
        return;
    }
    let (Some(got), Some(want)) = (got, want) else {
        assert_eq!(
            got.is_none(),
            want.is_none(),
            "{what}: reduced loss {got:?} vs {want:?}"
        );
        return;
    };
    let abs = if r == Reduction::Sum {
        abs * b as f64
    } else {
        abs
    };
    assert!(
        loss_ok(got, want, abs, 1e-5),
        "{what} {r:?} loss: {got} vs {want}"
    );
}

fn check_ce<T: FloatElement>(plan: &MixPlan, spec: &CeSpec, kinds: &[Kind], seed: u64) {
    let (b, c) = (plan.len(), spec.num_classes());
    let (z, range) = logits::<T>(b, c, kinds, seed);
    let labels = random_labels(b, c, seed);
    let up = GradOutput::Scalar(1.0);
    let want = reference::mixup_ce(plan, spec, &z, &labels, up).unwrap();
    let mut grad = vec![T::default(); z.len()];
    let mut losses = vec![0.0f32; b];
    let loss = cpu::mixup_ce(plan, spec, &z, &labels, up, Some(&mut losses), &mut grad).unwrap();
    // A scalar exactly for Mean and Sum.
    assert_eq!(loss.is_none(), spec.reduction() == Reduction::None);
    let abs = 1e-6 * (1.0 + (c as f64).ln()) * (1.0 + range);
    for (i, (&l, &w)) in losses.iter().zip(&want.losses).enumerate() {
        assert!(
            loss_ok(l, w, abs, 1e-5),
            "{:?} CE loss {i}: {l} vs {w}",
            T::DTYPE
        );
    }
    check_reduced("CE", (loss, &losses), want.loss, spec.reduction(), b, abs);
    // The gradient is finite wherever the reference's is (a row with all classes masked or a
    // +inf logit is NaN in both).
    let scale = if spec.reduction() == Reduction::Mean {
        1.0 / b as f64
    } else {
        1.0
    };
    for (j, (&g, &w)) in grad.iter().zip(&want.grad).enumerate() {
        let g = f64::from(g.to_f32());
        if w.is_nan() {
            assert!(g.is_nan(), "{:?} CE grad {j}: {g}, reference NaN", T::DTYPE);
            continue;
        }
        let t = Tol::new(1e-6 * scale, 1e-5).stored_as::<T>();
        assert!(
            (g - w).abs() <= t.abs + t.rel * w.abs(),
            "{:?} CE grad {j}: {g} vs {w}",
            T::DTYPE
        );
    }
}

fn check_bce<T: FloatElement>(plan: &MixPlan, spec: &BceSpec, kinds: &[Kind], seed: u64) {
    let (b, c) = (plan.len(), spec.num_classes());
    let (z, range) = logits::<T>(b, c, kinds, seed);
    let labels = random_labels(b, c, seed);
    let ups: Vec<f32> = (0..b).map(|i| 0.5 + (i % 3) as f32).collect();
    let up = if spec.reduction() == Reduction::None {
        GradOutput::PerSample(&ups)
    } else {
        GradOutput::Scalar(1.5)
    };
    let wmax = spec
        .weight()
        .map_or(1.0, |v| v.iter().fold(1.0f64, |a, &x| a.max(f64::from(x))))
        * spec
            .pos_weight()
            .map_or(1.0, |v| v.iter().fold(1.0f64, |a, &x| a.max(f64::from(x))));
    let want = reference::mixup_bce(plan, spec, &z, &labels, up).unwrap();
    let mut grad = vec![T::default(); z.len()];
    let mut losses = vec![0.0f32; b];
    let loss = cpu::mixup_bce(plan, spec, &z, &labels, up, Some(&mut losses), &mut grad).unwrap();
    assert_eq!(loss.is_none(), spec.reduction() == Reduction::None);
    let abs = 1e-6 * c as f64 * (1.0 + range) * wmax;
    for (i, (&l, &w)) in losses.iter().zip(&want.losses).enumerate() {
        assert!(
            loss_ok(l, w, abs, 1e-5),
            "{:?} BCE loss {i}: {l} vs {w}",
            T::DTYPE
        );
    }
    check_reduced("BCE", (loss, &losses), want.loss, spec.reduction(), b, abs);
    let factor = match spec.reduction() {
        Reduction::Mean if spec.sum_classes() => 1.0 / b as f64,
        Reduction::Mean => 1.0 / (b * c) as f64,
        _ => 1.0,
    } * 2.5;
    let t = Tol::new(1e-6 * factor * wmax, 1e-6).stored_as::<T>();
    for (j, (&g, &w)) in grad.iter().zip(&want.grad).enumerate() {
        let g = f64::from(g.to_f32());
        assert!(
            (g - w).abs() <= t.abs + t.rel * w.abs() || (w.is_nan() && g.is_nan()),
            "{:?} BCE grad {j}: {g} vs {w}",
            T::DTYPE
        );
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// The fused CE on hostile logits equals the reference wherever the reference is finite
    /// (and is the same infinity or NaN where it is not), in every dtype.
    #[test]
    fn ce_matches_reference(
        rule in 0usize..4, mode in 0usize..3, batch in 1usize..12,
        classes in prop_oneof![1usize..40, 900usize..1100, Just(4099usize)],
        eps in prop_oneof![Just(0.0f64), 0.0f64..0.5], sum in any::<bool>(),
        kinds in logit_kinds(), seed in any::<u64>(),
    ) {
        let plan = sampler_plan(rule, mode, batch, (4, 4), seed % 1000);
        let red = if sum { Reduction::Sum } else { Reduction::Mean };
        let spec = CeSpec::new(classes, eps, red).unwrap();
        check_ce::<f32>(&plan, &spec, &kinds, seed);
        check_ce::<f16>(&plan, &spec, &kinds, seed);
        check_ce::<bf16>(&plan, &spec, &kinds, seed);
    }

    /// The fused BCE likewise, with thresholds, weights and `sum_classes` off (they are
    /// covered in tests/mixup_bce.rs; here the logits are the point).
    #[test]
    fn bce_matches_reference(
        rule in 0usize..4, mode in 0usize..3, batch in 1usize..12,
        classes in prop_oneof![1usize..40, 900usize..1100],
        eps in prop_oneof![Just(0.0f64), 0.0f64..0.5], thr in prop::option::of(0.0f32..1.0),
        red in 0usize..3, weights in 0usize..4, sum_classes in any::<bool>(),
        kinds in logit_kinds(), seed in any::<u64>(),
    ) {
        let plan = sampler_plan(rule, mode, batch, (4, 4), seed % 1000);
        let red = [Reduction::Mean, Reduction::Sum, Reduction::None][red];
        let mut spec = BceSpec::new(classes, eps, red).unwrap().with_sum_classes(sum_classes);
        if let Some(t) = thr {
            spec = spec.with_target_threshold(t).unwrap();
        }
        let per_class = |k: u64| -> Vec<f32> {
            (0..classes).map(|c| [0.0, 0.5, 1.0, 2.0, 3.0][(c as u64 * 7 + k) as usize % 5]).collect()
        };
        if weights & 1 != 0 {
            spec = spec.with_weight(per_class(seed)).unwrap();
        }
        if weights & 2 != 0 {
            spec = spec.with_pos_weight(per_class(seed + 1)).unwrap();
        }
        check_bce::<f32>(&plan, &spec, &kinds, seed);
        check_bce::<f16>(&plan, &spec, &kinds, seed);
        check_bce::<bf16>(&plan, &spec, &kinds, seed);
    }

    /// Wrong lengths, labels out of range and bad upstream gradients are errors that leave
    /// every output untouched; nothing panics.
    #[test]
    fn bad_arguments_are_errors_and_write_nothing(
        batch in 1usize..10, classes in 1usize..20, dz in -2isize..3, dg in -2isize..3,
        dl in -1isize..2, bad_label in any::<bool>(), up in prop_oneof![Just(1.0f32), Just(f32::NAN), Just(f32::INFINITY)],
        seed in any::<u64>(),
    ) {
        let plan = sampler_plan(0, 2, batch, (4, 4), seed % 100);
        let n = batch * classes;
        let len = |d: isize| (n as isize + d).max(0) as usize;
        let z: Vec<f32> = random_vec(len(dz), seed, -3.0, 3.0);
        let mut labels = random_labels(batch, classes, seed);
        if bad_label {
            labels[seed as usize % batch] = classes as u32 + (seed % 3) as u32;
        }
        let mut losses = vec![9.0f32; (batch as isize + dl).max(0) as usize];
        let mut grad = vec![7.0f32; len(dg)];
        let valid = dz == 0 && dg == 0 && dl == 0 && !bad_label && up.is_finite();
        let ce = CeSpec::new(classes, 0.1, Reduction::Mean).unwrap();
        let r = cpu::mixup_ce(&plan, &ce, &z, &labels, GradOutput::Scalar(up), Some(&mut losses), &mut grad);
        prop_assert_eq!(r.is_ok(), valid);
        if !valid {
            prop_assert!(grad.iter().all(|&g| g == 7.0) && losses.iter().all(|&l| l == 9.0));
        }
        let mut grad = vec![7.0f32; len(dg)];
        let mut losses = vec![9.0f32; (batch as isize + dl).max(0) as usize];
        let bce = BceSpec::new(classes, 0.1, Reduction::Mean).unwrap();
        let r = cpu::mixup_bce(&plan, &bce, &z, &labels, GradOutput::Scalar(up), Some(&mut losses), &mut grad);
        prop_assert_eq!(r.is_ok(), valid);
        if !valid {
            prop_assert!(grad.iter().all(|&g| g == 7.0) && losses.iter().all(|&l| l == 9.0));
        }
        let mut zg = z.clone();
        let r = cpu::mixup_ce_in_place(&plan, &ce, &mut zg, &labels, GradOutput::Scalar(up), None);
        prop_assert_eq!(r.is_ok(), dz == 0 && !bad_label && up.is_finite());
        if r.is_err() {
            prop_assert_eq!(zg, z);
        }
        let mut t = vec![5.0f32; len(dg)];
        let r = cpu::soft_targets(&plan, ce.targets(), &labels, &mut t);
        prop_assert_eq!(r.is_ok(), dg == 0 && !bad_label);
        if r.is_err() {
            prop_assert!(t.iter().all(|&v| v == 5.0));
        }
    }

    /// Mixing with a buffer of the wrong size or a plan for another image is an error that
    /// writes nothing.
    #[test]
    fn bad_mix_arguments_write_nothing(
        batch in 1usize..8, h in 1usize..6, w in 1usize..6, dx in -1isize..2, dout in -1isize..2,
        other_image in any::<bool>(), seed in any::<u64>(),
    ) {
        let plan = sampler_plan(2, 2, batch, (h, w), seed % 100);
        let (lh, lw) = if other_image { (h + 1, w) } else { (h, w) };
        let layout = SampleShape::channels_first(2, lh, lw);
        let n = (batch * 2 * lh * lw) as isize;
        let x: Vec<f32> = random_vec((n + dx).max(0) as usize, seed, 0.0, 1.0);
        let mut out = vec![3.0f32; (n + dout).max(0) as usize];
        let r = cpu::mix(&plan, &layout, &x, &mut out);
        let image_ok = plan.image_size().is_none_or(|s| (s.height, s.width) == (lh, lw));
        prop_assert_eq!(r.is_ok(), dx == 0 && dout == 0 && image_ok);
        if r.is_err() {
            prop_assert!(out.iter().all(|&v| v == 3.0));
        }
    }

    /// Hand-made plans: any partner and λ vectors are either a valid plan or an error.
    #[test]
    fn from_parts_never_panics(
        partner in proptest::collection::vec(0usize..20, 0..16),
        lam in proptest::collection::vec(prop_oneof![-1.0f32..2.0, Just(f32::NAN), Just(1.0)], 0..16),
    ) {
        match MixPlan::from_parts(&partner, &lam) {
            Ok(p) => {
                prop_assert_eq!(p.len(), partner.len());
                prop_assert!(p.samples().all(|s| s.partner < partner.len() && (0.0..=1.0).contains(&s.lam)));
            }
            Err(_) => prop_assert!(
                partner.len() != lam.len()
                    || partner.iter().any(|&q| q >= partner.len())
                    || lam.iter().any(|l| !(0.0..=1.0).contains(l))
            ),
        }
    }

    /// timm's box for any arguments: a typed error, or an ordered box inside the image.
    #[test]
    fn timm_box_is_inside_or_an_error(
        h in prop_oneof![0usize..300, Just(u32::MAX as usize), Just(usize::MAX)],
        w in prop_oneof![0usize..300, Just(u32::MAX as usize + 1)],
        lam in prop_oneof![-1.0f64..2.0, Just(f64::NAN), Just(f64::INFINITY)],
        cy in prop_oneof![0usize..300, Just(usize::MAX)], cx in prop_oneof![0usize..300, Just(usize::MAX)],
    ) {
        let valid = (1..=u32::MAX as usize).contains(&h)
            && (1..=u32::MAX as usize).contains(&w)
            && cy < h
            && cx < w
            && !lam.is_nan();
        match timm_rand_bbox(h, w, lam, cy, cx) {
            Ok(b) => {
                prop_assert!(valid);
                prop_assert!(b.y0 <= b.y1 && b.x0 <= b.x1);
                prop_assert!(b.y1 as usize <= h && b.x1 as usize <= w);
            }
            Err(_) => prop_assert!(!valid, "valid arguments rejected"),
        }
    }
}
