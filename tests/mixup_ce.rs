//! The fused mixup cross-entropy (forward only, forward + backward, in place) against the f64
//! reference, over awkward shapes, reductions, smoothing, upstream gradients and element types.

#![cfg(feature = "cpu")]

mod common;

use common::*;
use mixup_kernels::{
    CeSpec, FloatElement, GradOutput, MixError, MixPlan, Reduction, bf16, cpu, f16, reference,
};

/// Tolerance of a per-sample (or reduced) loss. The loss is `ln s - (1-ε)(λ d_a + (1-λ) d_b)
/// - (ε/C) Σ d` with `d = z - max z`. `s` sums C values of `e^d`, each within 1 ulp, in 8 f32
/// lanes of 64 adds per block: its relative error, which is the absolute error of `ln s`, is a
/// few 1e-7 and grows with the number of adds, hence the `ln C` widening; `d` is one f32
/// subtraction (error ≤ 2^-24·|d| ≤ 2^-23·R for logits in [-R, R]) and `Σ d` accumulates
/// like `s`. So `abs = 1e-6·(1 + ln C)·(1 + R)`, and `rel = 1e-5` of the loss for the rest.
fn loss_tol(classes: usize, range: f64) -> Tol {
    Tol::new(1e-6 * (1.0 + (classes as f64).ln()) * (1.0 + range), 1e-5)
}

/// Tolerance of a gradient element `(p - t)·scale`: `p = e^d·(1/s)` carries the error of `e^d`
/// (1 ulp), of `s` (above: ≤ 1e-6 relative here) and two roundings, so `|Δp| ≤ 1e-6` for
/// `p ≤ 1`; `p - t` and `·scale` add two roundings relative to the result. Hence
/// `abs = 1e-6·|scale|`, `rel = 1e-5`, then half an ulp of T for the stored value.
fn grad_tol<T: FloatElement>(scale: f64) -> Tol {
    Tol::new(1e-6 * scale.abs(), 1e-5).stored_as::<T>()
}

type Case<'a, T> = LossCase<'a, CeSpec, T>;

/// Runs all three entry points and checks them against the reference and each other.
fn check<T: FloatElement>(c: &Case<'_, T>) {
    let (b, classes) = (c.plan.len(), c.spec.num_classes());
    let want = reference::mixup_ce(c.plan, &c.spec, c.logits, c.labels, c.grad_output).unwrap();
    let ltol = loss_tol(classes, c.range);

    // Forward + backward into a separate buffer.
    let (loss, losses, grad) = c.run(cpu::mixup_ce, c.spec.reduction());
    let what = &c.what;
    assert_eq!(want.loss.is_none(), loss.is_none(), "{what}: reference");
    if let (Some(l), Some(w)) = (loss, want.loss) {
        assert_close(&format!("{what}: reduced loss"), &[l as f64], &[w], ltol);
    }
    assert_close(
        &format!("{what}: losses"),
        &to_f64(&losses),
        &want.losses,
        ltol,
    );
    // Per-row scales: the tolerance of row i's gradient follows its own upstream value.
    c.assert_grad_rows(&grad, &want.grad, classes, |up| {
        let scale = if c.spec.reduction() == Reduction::Mean {
            up / b as f64
        } else {
            up
        };
        grad_tol::<T>(scale)
    });
    // The reduced loss is the f64 sum of the per-sample f32 losses, in index order.
    let sum: f64 = losses.iter().map(|&l| l as f64).sum();
    let expected = match c.spec.reduction() {
        Reduction::Sum => Some(sum as f32),
        Reduction::Mean => Some((sum / b.max(1) as f64) as f32),
        Reduction::None => None,
    };
    assert_eq!(
        loss.map(f32::to_bits),
        expected.map(f32::to_bits),
        "{what}: reduction order"
    );

    // Without the per-sample output: same loss, or an error naming `losses` under
    // Reduction::None (whose result they are), with nothing written.
    let mut grad2 = vec![T::from_f32(-5.0); c.logits.len()];
    let r2 = cpu::mixup_ce(
        c.plan,
        &c.spec,
        c.logits,
        c.labels,
        c.grad_output,
        None,
        &mut grad2,
    );
    if c.spec.reduction() == Reduction::None {
        assert!(
            matches!(r2, Err(MixError::InvalidArgument { what: "losses", .. })),
            "{what}: {r2:?}"
        );
        assert!(
            grad2.iter().all(|g| g.to_f32() == -5.0),
            "{what}: written on error"
        );
    } else {
        assert_eq!(
            r2.unwrap().map(f32::to_bits),
            loss.map(f32::to_bits),
            "{what}: loss without losses"
        );
        assert_same_bits(&format!("{what}: grad without losses"), &grad2, &grad);
    }

    // In place: identical bits.
    let mut z = c.logits.to_vec();
    let mut losses3 = vec![-1.0f32; b];
    let loss3 = cpu::mixup_ce_in_place(
        c.plan,
        &c.spec,
        &mut z,
        c.labels,
        c.grad_output,
        Some(&mut losses3),
    )
    .unwrap();
    assert_eq!(
        loss3.map(f32::to_bits),
        loss.map(f32::to_bits),
        "{what}: in-place loss"
    );
    assert_same_bits(&format!("{what}: in-place grad"), &z, &grad);
    assert_eq!(losses3, losses, "{what}: in-place losses");

    // Forward only: the same per-sample losses, bit for bit.
    let mut losses4 = vec![-1.0f32; b];
    let loss4 =
        cpu::mixup_ce_forward(c.plan, &c.spec, c.logits, c.labels, Some(&mut losses4)).unwrap();
    assert_eq!(
        loss4.map(f32::to_bits),
        loss.map(f32::to_bits),
        "{what}: forward loss"
    );
    assert_eq!(losses4, losses, "{what}: forward losses");
    let r5 = cpu::mixup_ce_forward(c.plan, &c.spec, c.logits, c.labels, None);
    if c.spec.reduction() == Reduction::None {
        assert!(matches!(
            r5,
            Err(MixError::InvalidArgument { what: "losses", .. })
        ));
    } else {
        assert_eq!(
            r5.unwrap().map(f32::to_bits),
            loss4.map(f32::to_bits),
            "{what}: forward without losses"
        );
    }
}

fn plans(batch: usize) -> Vec<(String, MixPlan)> {
    // One plan per partner rule and the hand-built extremes (λ = 0 and 1, cycles, identity).
    let mut out: Vec<_> = sampler_plans(batch, (4, 4))
        .into_iter()
        .filter(|(n, _)| n.ends_with("step 0") && (n.contains("Elem") || n.contains("Flip/B")))
        .collect();
    out.extend(
        hand_plans(batch, 4, 4)
            .into_iter()
            .filter(|(n, _)| n.ends_with("mixup")),
    );
    out
}

fn check_all<T: FloatElement>() {
    for batch in BATCHES {
        for classes in CLASSES {
            let range = 8.0;
            let logits: Vec<T> =
                random_vec(batch * classes, (batch * 31 + classes) as u64, -8.0, 8.0);
            let label_sets = [
                random_labels(batch, classes, classes as u64),
                vec![(classes - 1) as u32; batch],
            ];
            let per_sample: Vec<f32> = (0..batch).map(|i| 0.5 - i as f32 * 0.75).collect();
            let mut all_plans = plans(batch);
            let mut cases = vec![
                (Reduction::Mean, GradOutput::Scalar(1.0)),
                (Reduction::Sum, GradOutput::Scalar(-0.37)),
                (Reduction::None, GradOutput::Scalar(2.0)),
                (Reduction::None, GradOutput::PerSample(&per_sample)),
            ];
            let (mut label_sets, mut smoothings) = (&label_sets[..], &[0.0, 0.1][..]);
            if classes >= 1000 {
                // Long rows: the per-row logic is the same, so fewer combinations (the debug
                // build's f64 reference is the slow part).
                all_plans.truncate(2);
                cases.remove(1);
                cases.remove(1);
                label_sets = &label_sets[..1];
                smoothings = &[0.1];
            }
            for (pname, plan) in &all_plans {
                for (li, labels) in label_sets.iter().enumerate() {
                    for &smoothing in smoothings {
                        for &(reduction, grad_output) in &cases {
                            if batch == 0 && reduction == Reduction::Mean {
                                continue; // an error, tested in tests/errors.rs
                            }
                            check(&Case {
                                what: format!(
                                    "{:?} B={batch} C={classes} {pname} labels#{li} ε={smoothing} \
                                     {reduction:?} {grad_output:?}",
                                    T::DTYPE
                                ),
                                plan,
                                spec: CeSpec::new(classes, smoothing, reduction).unwrap(),
                                logits: &logits,
                                labels,
                                grad_output,
                                range,
                            });
                        }
                    }
                }
            }
        }
    }
}

tests_per_dtype!(check_all:
    matches_reference_f32 => f32,
    matches_reference_f16 => f16,
    matches_reference_bf16 => bf16,
);

/// Logits of ±1e4 (and exactly equal maxima): everything stays finite and matches the reference.
fn huge<T: FloatElement>() {
    for classes in [2, 3, 1000] {
        let batch = 5;
        let mut logits: Vec<T> = random_vec(batch * classes, classes as u64, -1e4, 1e4);
        // Row 0: two equal maxima; row 1: all equal; row 2: one huge winner among -1e4.
        logits[0] = T::from_f32(1e4);
        logits[1] = T::from_f32(1e4);
        for v in &mut logits[classes..2 * classes] {
            *v = T::from_f32(-1e4);
        }
        for v in &mut logits[2 * classes..3 * classes] {
            *v = T::from_f32(-1e4);
        }
        logits[2 * classes + classes / 2] = T::from_f32(1e4);
        let labels = random_labels(batch, classes, 11);
        let plan = MixPlan::from_parts(&[1, 0, 3, 2, 4], &[0.3, 0.9, 0.5, 1.0, 1.0]).unwrap();
        for smoothing in [0.0, 0.1] {
            let case = Case {
                what: format!("{:?} huge logits C={classes} ε={smoothing}", T::DTYPE),
                plan: &plan,
                spec: CeSpec::new(classes, smoothing, Reduction::Mean).unwrap(),
                logits: &logits,
                labels: &labels,
                grad_output: GradOutput::default(),
                range: 1e4,
            };
            let (loss, losses, grad) = case.run(cpu::mixup_ce, Reduction::Mean);
            assert!(loss.unwrap().is_finite() && losses.iter().all(|l| l.is_finite()));
            assert!(grad.iter().all(|g| g.to_f32().is_finite()));
            check(&case);
        }
    }
}

// f16 tops out at 65504: ±1e4 is representable.
tests_per_dtype!(huge:
    huge_logits_f32 => f32,
    huge_logits_bf16 => bf16,
    huge_logits_f16 => f16,
);

/// The largest class count the issue names, in f32 and bf16 (rows of 1 MB and 512 KB).
#[test]
fn classes_256k() {
    let (batch, classes) = (3, 256_000);
    let labels = vec![0, 255_999, 77_777];
    let plan = MixPlan::from_parts(&[2, 1, 0], &[0.6, 1.0, 0.8]).unwrap();
    let logits: Vec<f32> = random_vec(batch * classes, 1, -4.0, 4.0);
    let lb: Vec<bf16> = random_vec(batch * classes, 2, -4.0, 4.0);
    for reduction in [Reduction::Mean, Reduction::None] {
        let spec = CeSpec::new(classes, 0.1, reduction).unwrap();
        check(&Case {
            what: format!("f32 C=256000 {reduction:?}"),
            plan: &plan,
            spec,
            logits: &logits,
            labels: &labels,
            grad_output: GradOutput::Scalar(1.0),
            range: 4.0,
        });
        check(&Case {
            what: format!("bf16 C=256000 {reduction:?}"),
            plan: &plan,
            spec,
            logits: &lb,
            labels: &labels,
            grad_output: GradOutput::Scalar(1.0),
            range: 4.0,
        });
    }
}

/// The target-class gradient `p - t` is formed in f32 before the bf16 rounding: with a
/// confident correct prediction, `p - 1` is a small negative number that bf16 keeps to 8 bits,
/// where rounding `p` first would give exactly 0.
#[test]
fn target_gradient_is_formed_before_rounding() {
    let plan = MixPlan::identity(1).unwrap();
    let spec = CeSpec::new(4, 0.0, Reduction::Sum).unwrap();
    let logits: Vec<bf16> = [9.0f32, 0.0, 0.0, 0.0]
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let mut grad = vec![bf16::from_f32(0.0); 4];
    cpu::mixup_ce(
        &plan,
        &spec,
        &logits,
        &[0u32],
        GradOutput::default(),
        None,
        &mut grad,
    )
    .unwrap();
    // p_0 = 1/(1 + 3e^-9) ≈ 1 - 3.7e-4: bf16(p_0) = 1, so rounding p first would give 0.
    let want = -3.0 * (-9.0f64).exp() / (1.0 + 3.0 * (-9.0f64).exp());
    let got = grad[0].to_f32() as f64;
    assert!(
        got != 0.0 && (got - want).abs() <= want.abs() * 2f64.powi(-8),
        "{got} vs {want}"
    );
}

/// Empty batches: Sum reduces to 0, None to no per-sample loss; nothing is written.
#[test]
fn empty_batch_sum_and_none() {
    let plan = MixPlan::identity(0).unwrap();
    for (reduction, want) in [(Reduction::Sum, Some(0.0)), (Reduction::None, None)] {
        let spec = CeSpec::new(10, 0.1, reduction).unwrap();
        let mut grad: Vec<f32> = vec![];
        let none: &[u32] = &[];
        let loss = cpu::mixup_ce(
            &plan,
            &spec,
            &[],
            none,
            GradOutput::default(),
            Some(&mut []),
            &mut grad,
        );
        assert_eq!(loss, Ok(want));
        assert_eq!(
            cpu::mixup_ce_forward::<f32, u32>(&plan, &spec, &[], &[], Some(&mut [])),
            Ok(want)
        );
    }
}

/// The loss does not depend on how many threads compute it.
#[test]
fn result_is_independent_of_thread_count() {
    let (batch, classes) = (67, 333);
    let logits: Vec<f32> = random_vec(batch * classes, 4, -5.0, 5.0);
    let labels = random_labels(batch, classes, 4);
    let plan = sampler_plans(batch, (4, 4)).remove(0).1;
    let spec = CeSpec::new(classes, 0.1, Reduction::Mean).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut grad = vec![0.0f32; logits.len()];
            let up = GradOutput::default();
            let loss = cpu::mixup_ce(&plan, &spec, &logits, &labels, up, None, &mut grad).unwrap();
            (loss.unwrap().to_bits(), grad)
        })
    };
    let (l1, g1) = run(1);
    for t in [2, 3, 8] {
        let (lt, gt) = run(t);
        assert_eq!(lt, l1, "{t} threads");
        assert_same_bits(&format!("{t} threads"), &gt, &g1);
    }
}
