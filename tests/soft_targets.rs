//! `cpu::soft_targets` against the f64 reference and the shared f32 formula.

#![cfg(feature = "cpu")]

mod common;

use common::*;
use mixup_kernels::{
    FloatElement, MixConfig, MixPlan, Mode, PartnerRule, Sampler, TargetSpec, bf16, cpu, f16,
    reference,
};

/// The shared f32 formula, plainly: `t = (1-ε)·w + ε/C` with `w = λ·[c=a] + (1-λ)·[c=b]`
/// (`λ + (1-λ)` when `a == b`), rounded once to T.
fn formula<T: FloatElement>(plan: &MixPlan, labels: &[u32], spec: &TargetSpec) -> Vec<T> {
    let c = spec.num_classes();
    let off = spec.label_smoothing() as f32 / c as f32;
    let keep = 1.0 - spec.label_smoothing() as f32;
    let mut out = Vec::with_capacity(plan.len() * c);
    for (i, s) in plan.samples().enumerate() {
        let (a, b) = (labels[i] as usize, labels[s.partner] as usize);
        for k in 0..c {
            let w = match (k == a, k == b) {
                (true, true) => s.lam + (1.0 - s.lam),
                (true, false) => s.lam,
                (false, true) => 1.0 - s.lam,
                (false, false) => 0.0,
            };
            out.push(T::from_f32(keep * w + off));
        }
    }
    out
}

/// Tolerance against the f64 reference: `1-ε`, `1-λ`, `ε/C`, the product and the sum are five
/// f32 roundings of values ≤ 1, so |error| ≤ 5·2^-24 ≈ 3e-7; we allow 4e-7 absolute, then half
/// an ulp of T for the final rounding.
fn tol<T: FloatElement>() -> Tol {
    Tol::new(4e-7, 0.0).stored_as::<T>()
}

fn plans(batch: usize, classes: usize) -> Vec<(String, MixPlan)> {
    let mut out = sampler_plans(batch, (4, 4));
    out.extend(hand_plans(batch, 4, 4));
    if classes >= 1000 {
        // Large rows: a few plans are enough to cover the per-row logic.
        out.truncate(3);
    }
    out
}

fn check_all<T: FloatElement>() {
    for batch in BATCHES {
        for classes in CLASSES {
            let label_sets = [
                ("random", random_labels(batch, classes, classes as u64 + 3)),
                // Every partner has the same class: the two weights add.
                ("same class", vec![(classes - 1) as u32; batch]),
            ];
            for smoothing in [0.0f64, 0.1, 0.5] {
                let spec = TargetSpec::new(classes, smoothing).unwrap();
                for (lname, labels) in &label_sets {
                    for (pname, plan) in plans(batch, classes) {
                        let what = format!(
                            "{:?} B={batch} C={classes} ε={smoothing} {lname} {pname}",
                            T::DTYPE
                        );
                        let mut out = vec![T::from_f32(9.0); batch * classes];
                        cpu::soft_targets(&plan, &spec, labels, &mut out).unwrap();
                        assert_same_bits(&what, &out, &formula(&plan, labels, &spec));
                        let want = reference::soft_targets(&plan, &spec, labels).unwrap();
                        assert_close(&what, &to_f64(&out), &want, tol::<T>());
                    }
                }
            }
        }
    }
}

#[test]
fn matches_reference_f32() {
    check_all::<f32>();
}

#[test]
fn matches_reference_f16() {
    check_all::<f16>();
}

#[test]
fn matches_reference_bf16() {
    check_all::<bf16>();
}

#[test]
fn same_class_partners_add_their_weights() {
    let plan = MixPlan::from_parts(&[1, 0, 2], &[0.7, 0.4, 1.0]).unwrap();
    let spec = TargetSpec::new(4, 0.2).unwrap();
    let mut out = vec![0.0f32; 12];
    cpu::soft_targets(&plan, &spec, &[3u32, 3, 1], &mut out).unwrap();
    // Sample 0 and its partner are both class 3: (1-ε)·1 + ε/C = 0.85, the rest ε/C = 0.05.
    for row in out.chunks(4) {
        let total: f32 = row.iter().sum();
        assert!((total - 1.0).abs() < 1e-6, "row sums to {total}");
    }
    assert_eq!(
        &out[..4],
        &[0.05, 0.05, 0.05, 0.8 * (0.7 + (1.0 - 0.7)) + 0.05]
    );
    assert!((out[3] - 0.85).abs() < 1e-7);
    // Sample 2 is its own partner with λ = 1.
    assert_eq!(&out[8..], &[0.05, 0.8 + 0.05, 0.05, 0.05]);
}

/// timm's `mixup_target` with the default flip and a batch λ: the target of sample i is
/// `λ·s(y_i) + (1-λ)·s(y_{B-1-i})` with `s(y) = one_hot·(1-ε+ε/C)`, `ε/C` elsewhere.
#[test]
fn timm_flip_batch_target() {
    let cfg = MixConfig {
        mode: Mode::Batch,
        partner: PartnerRule::Flip,
        ..MixConfig::timm(5)
    };
    let plan = Sampler::new(cfg.clone(), 3)
        .unwrap()
        .plan_images(0, 4, image(8, 8))
        .unwrap();
    let lam = plan.sample(0).lam as f64;
    let labels = [0u32, 1, 2, 3];
    let mut out = vec![0.0f32; 20];
    cpu::soft_targets(&plan, &cfg.target_spec().unwrap(), &labels, &mut out).unwrap();
    let (off, on) = (0.1 / 5.0, 1.0 - 0.1 + 0.1 / 5.0);
    for i in 0..4 {
        for c in 0..5 {
            let s = |y: u32| if c == y as usize { on } else { off };
            let want = lam * s(labels[i]) + (1.0 - lam) * s(labels[3 - i]);
            let got = out[i * 5 + c] as f64;
            assert!(
                (got - want).abs() < 4e-7,
                "sample {i} class {c}: {got} vs {want}"
            );
        }
    }
}
