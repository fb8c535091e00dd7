//! The fused mixup cross-entropy on masked logits (the dtype's minimum, as `masked_fill(mask,
//! finfo.min)` writes, and −inf): every CPU entry point against the f64 reference, whose rules
//! are PyTorch's (a class with zero target weight adds nothing; with smoothing a −inf logit
//! makes the loss +inf). Masks at both ends and in every lane position of rows of many widths,
//! with and without smoothing, with a partner whose label is masked or not.

#![cfg(feature = "cpu")]

mod common;

use common::*;
use mixup_kernels::{
    CeSpec, FloatElement, GradOutput, MixPlan, Reduction, ScalarType, bf16, cpu, f16, reference,
};

/// The most negative finite value of `T`, as f32 (exact in every `T`).
fn dtype_min<T: FloatElement>() -> f32 {
    match T::DTYPE {
        ScalarType::F16 => f16::MIN.to_f32(),
        ScalarType::BF16 => bf16::MIN.to_f32(),
        _ => f32::MIN,
    }
}

/// A loss against the reference: NaN where it is NaN, the same infinity where it is infinite,
/// ±`f32::MAX` or the same infinity where it is finite but beyond f32's range, else within
/// `abs + rel·|want|`.
#[track_caller]
fn assert_loss(what: &str, got: f32, want: f64, abs: f64) {
    let ok = if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        f64::from(got) == want
    } else if want.abs() >= f64::from(f32::MAX) {
        got.abs() == f32::MAX || (got.is_infinite() && (f64::from(got) > 0.0) == (want > 0.0))
    } else {
        got.is_finite() && (f64::from(got) - want).abs() <= abs + 1e-5 * want.abs()
    };
    assert!(ok, "{what}: got {got:e}, expected {want:e}");
}

/// Runs the three CPU entry points on one batch and checks losses and gradients.
fn check<T: FloatElement>(what: &str, plan: &MixPlan, spec: &CeSpec, z: &[T], labels: &[u32]) {
    let (b, c) = (plan.len(), spec.num_classes());
    let up = GradOutput::Scalar(1.0);
    let want = reference::mixup_ce(plan, spec, z, labels, up).unwrap();
    // Unmasked logits lie in [-3, 3]; see tests/mixup_ce.rs for where these bounds come from.
    let abs = 1e-6 * (1.0 + (c as f64).ln()) * 4.0;
    let mut grad = vec![T::from_f32(7.0); z.len()];
    let mut losses = vec![-1.0f32; b];
    let loss = cpu::mixup_ce(plan, spec, z, labels, up, Some(&mut losses), &mut grad)
        .unwrap()
        .unwrap();
    for (i, (&l, &w)) in losses.iter().zip(&want.losses).enumerate() {
        assert_loss(&format!("{what}: loss {i}"), l, w, abs);
    }
    assert_loss(
        &format!("{what}: reduced loss"),
        loss,
        want.loss.unwrap(),
        abs,
    );
    // The gradient `softmax - t` is finite wherever a class is left unmasked.
    assert_close(
        &format!("{what}: grad"),
        &to_f64(&grad),
        &want.grad,
        Tol::new(1e-6 / b as f64, 1e-5).stored_as::<T>(),
    );
    let mut fwd = vec![-1.0f32; b];
    cpu::mixup_ce_forward(plan, spec, z, labels, Some(&mut fwd))
        .unwrap()
        .unwrap();
    assert_eq!(fwd, losses, "{what}: forward-only losses");
    let mut zg = z.to_vec();
    let mut inp = vec![-1.0f32; b];
    cpu::mixup_ce_in_place(plan, spec, &mut zg, labels, up, Some(&mut inp))
        .unwrap()
        .unwrap();
    assert_eq!(inp, losses, "{what}: in-place losses");
    assert_same_bits(&format!("{what}: in-place grad"), &zg, &grad);
}

/// The reduced loss of `cpu::mixup_ce` on one sample of label 1 (grad_output 1), the gradient
/// written to `g`.
fn label_1_loss<T: FloatElement>(plan: &MixPlan, spec: &CeSpec, z: &[T], g: &mut [T]) -> f32 {
    let up = GradOutput::Scalar(1.0);
    cpu::mixup_ce(plan, spec, z, &[1u32], up, None, g)
        .unwrap()
        .unwrap()
}

/// The sets of masked classes tried on rows of `c` classes: never all of them.
fn mask_sets(c: usize) -> Vec<(String, Vec<usize>)> {
    let mut sets: Vec<(String, Vec<usize>)> = Vec::new();
    if c <= 33 {
        // Every lane position, alone and with the same lane of the next 16-lane block.
        for p in 0..c {
            sets.push((format!("one at {p}"), vec![p]));
            if p + 16 < c {
                sets.push((format!("two at {p}, {}", p + 16), vec![p, p + 16]));
            }
        }
    } else {
        for p in [0, 1, 7, 8, 15, 16, 17, 31, 511, 512, c / 2, c - 2, c - 1] {
            if p < c {
                sets.push((format!("one at {p}"), vec![p]));
            }
        }
        sets.push(("two at 0, 16".into(), vec![0, 16]));
    }
    if c >= 2 {
        sets.push(("both ends".into(), vec![0, c - 1]));
        // Most classes: all but every 7th (and class 3 when there is one).
        let most: Vec<usize> = (0..c)
            .filter(|&k| k % 7 != 3 && k != 3.min(c - 1))
            .collect();
        if most.len() < c {
            sets.push(("most".into(), most));
        }
        // All but one: the survivor sits at the end of the row.
        sets.push(("all but one".into(), (0..c - 1).collect()));
    }
    sets.retain(|(_, s)| s.len() < c);
    if c == 1 {
        // The only class: with the dtype's minimum the row is finite (every d is 0); with −inf
        // it is NaN (documented), so `sweep` tries it with the minimum only.
        sets.push(("the only class".into(), vec![0]));
    }
    sets
}

/// Four samples in two pairs: sample 0 (λ = 1) has a masked partner label, sample 1 (λ = 0.6) a
/// masked label of its own, samples 2 and 3 unmasked labels (λ = 1 and 0.35).
fn batch_for<T: FloatElement>(
    c: usize,
    masked: &[usize],
    value: f32,
    seed: u64,
) -> (Vec<T>, Vec<u32>) {
    let mut z: Vec<T> = random_vec(4 * c, seed, -3.0, 3.0);
    for row in z.chunks_mut(c) {
        for &k in masked {
            row[k] = T::from_f32(value);
        }
    }
    let free = (0..c).find(|k| !masked.contains(k)).unwrap_or(0) as u32;
    let free_last = (0..c).rev().find(|k| !masked.contains(k)).unwrap_or(0) as u32;
    let labels = vec![free, masked[0] as u32, free_last, free];
    (z, labels)
}

fn sweep<T: FloatElement>(widths: &[usize]) {
    let plan = MixPlan::from_parts(&[1, 0, 3, 2], &[1.0, 0.6, 1.0, 0.35]).unwrap();
    for &c in widths {
        for (name, set) in mask_sets(c) {
            for value in [dtype_min::<T>(), f32::NEG_INFINITY] {
                if set.len() == c && value == f32::NEG_INFINITY {
                    continue;
                }
                for eps in [0.0, 0.1] {
                    let spec = CeSpec::new(c, eps, Reduction::Mean).unwrap();
                    let (z, labels) = batch_for::<T>(c, &set, value, c as u64);
                    let what = format!("{:?} C={c} {name} = {value:e} ε={eps}", T::DTYPE);
                    check(&what, &plan, &spec, &z, &labels);
                }
            }
        }
    }
}

const WIDTHS: [usize; 6] = [1, 15, 16, 17, 31, 1000];

/// One test per element type: the widths of `WIDTHS`, then the wide rows `$wide`.
macro_rules! masked_classes_tests {
    ($($name:ident => $t:ty, $wide:expr;)+) => {$(
        #[test]
        fn $name() {
            sweep::<$t>(&WIDTHS);
            sweep::<$t>(&$wide);
        }
    )+};
}

masked_classes_tests! {
    masked_classes_f32 => f32, [32_771, 100_000];
    masked_classes_f16 => f16, [32_771];
    masked_classes_bf16 => bf16, [32_771, 100_000];
}

/// The case from the issue: C = 17, no smoothing, `z[0] = z[16] = min`, label 1: the loss is
/// ln 15 on every entry point (was NaN: the two minima overflowed one f32 lane sum, and the
/// smoothing term `0 · (−inf)` was evaluated with ε = 0).
#[test]
fn two_minima_in_one_lane_give_ln_15() {
    fn case<T: FloatElement>(min: f32) {
        let mut z = vec![T::from_f32(0.0); 17];
        z[0] = T::from_f32(min);
        z[16] = T::from_f32(min);
        let plan = MixPlan::identity(1).unwrap();
        let spec = CeSpec::new(17, 0.0, Reduction::Mean).unwrap();
        let want = 15f64.ln();
        let r = reference::mixup_ce(&plan, &spec, &z, &[1u32], GradOutput::Scalar(1.0)).unwrap();
        assert!((r.loss.unwrap() - want).abs() < 1e-12);
        let fwd = cpu::mixup_ce_forward(&plan, &spec, &z, &[1u32], None)
            .unwrap()
            .unwrap();
        let mut g = vec![T::from_f32(0.0); 17];
        let full = label_1_loss(&plan, &spec, &z, &mut g);
        let mut zg = z.clone();
        let inp = cpu::mixup_ce_in_place(
            &plan,
            &spec,
            &mut zg,
            &[1u32],
            GradOutput::Scalar(1.0),
            None,
        )
        .unwrap()
        .unwrap();
        for (name, l) in [("forward", fwd), ("fwd+bwd", full), ("in place", inp)] {
            assert!(
                (f64::from(l) - want).abs() < 1e-6,
                "{:?} {name}: {l}",
                T::DTYPE
            );
        }
        assert_eq!(g[0].to_f32(), 0.0);
        assert_eq!(g[16].to_f32(), 0.0);
    }
    case::<f32>(f32::MIN);
    case::<f32>(f32::NEG_INFINITY);
    case::<bf16>(bf16::MIN.to_f32());
    case::<bf16>(f32::NEG_INFINITY);
    case::<f16>(f16::MIN.to_f32());
    case::<f16>(f32::NEG_INFINITY);
}

/// Smoothing gives every class weight: a −inf logit makes the loss +inf, as in PyTorch, while the
/// gradient stays finite; a NaN logit gives NaN; the dtype's minimum gives a huge finite loss.
#[test]
fn smoothing_infinities_and_nan() {
    let plan = MixPlan::identity(1).unwrap();
    let spec = CeSpec::new(5, 0.1, Reduction::Sum).unwrap();
    let mut g = [0.0f32; 5];
    let z = [0.0, 1.0, f32::NEG_INFINITY, 0.5, -1.0];
    let l = label_1_loss(&plan, &spec, &z, &mut g);
    assert_eq!(l, f32::INFINITY);
    assert!(g.iter().all(|v| v.is_finite()));
    assert_eq!(g[2], -0.02);
    let z = [0.0, 1.0, f32::NAN, 0.5, -1.0];
    assert!(
        cpu::mixup_ce_forward(&plan, &spec, &z, &[1u32], None)
            .unwrap()
            .unwrap()
            .is_nan()
    );
    let z = [0.0, 1.0, f32::MIN, f32::MIN, -1.0];
    let l = cpu::mixup_ce_forward(&plan, &spec, &z, &[1u32], None)
        .unwrap()
        .unwrap();
    let want = reference::mixup_ce(&plan, &spec, &z, &[1u32], GradOutput::Scalar(1.0))
        .unwrap()
        .loss
        .unwrap();
    assert!(
        l.is_finite() && (f64::from(l) - want).abs() <= 1e-6 * want,
        "{l} vs {want}"
    );
}

/// The tests' one comparison, `assert_close`, on infinities: only the same infinity passes,
/// whatever the tolerance (a relative bound against an infinite reference is infinite), and a
/// NaN never does. A masked −inf checked with it must not pass against a finite value or +inf.
#[test]
fn assert_close_passes_an_infinity_only_against_itself() {
    let passes = |got: f64, want: f64, tol: Tol| {
        std::panic::catch_unwind(|| assert_close("x", &[got], &[want], tol)).is_ok()
    };
    let (inf, loose) = (f64::INFINITY, Tol::new(1e-6, 0.5));
    assert!(passes(inf, inf, loose) && passes(-inf, -inf, Tol::new(0.0, 0.0)));
    for (got, want) in [
        (5.0, inf),
        (-inf, inf),
        (inf, -inf),
        (inf, 5.0),
        (f64::NAN, inf),
    ] {
        assert!(!passes(got, want, loose), "{got} passed against {want}");
    }
    assert!(!passes(f64::NAN, f64::NAN, loose) && !passes(f64::NAN, 1.0, loose));
    assert!(passes(1.2, 1.0, loose) && !passes(1.6, 1.0, loose));
}
