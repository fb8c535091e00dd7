//! Properties of the seeded sampler: determinism, partner structure, λ distribution, boxes.

use approx::{assert_abs_diff_eq, assert_relative_eq};
mod common;

use common::image;
use mixup_kernels::{BoxRule, MixConfig, MixError, MixPlan, Mode, PartnerRule, Sampler};

fn sampler(cfg: MixConfig) -> Sampler {
    Sampler::new(cfg, 1234).expect("valid config")
}

fn elem(alpha: f64, partner: PartnerRule) -> MixConfig {
    MixConfig {
        mixup_alpha: alpha,
        mode: Mode::Elem,
        partner,
        ..MixConfig::timm(10)
    }
}

/// timm's defaults with MixUp off, drawn per sample.
fn cutmix_elem() -> MixConfig {
    MixConfig {
        mixup_alpha: 0.0,
        mode: Mode::Elem,
        ..MixConfig::timm(10)
    }
}

/// Mean and variance of a sample.
fn moments(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

fn lambdas(s: &Sampler, steps: u64, batch: usize) -> Vec<f64> {
    (0..steps)
        .flat_map(|step| {
            let plan = s.plan_images(step, batch, image(16, 16)).unwrap();
            plan.samples().map(|m| m.lam as f64).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn same_arguments_same_plan_across_threads() {
    let cfg = MixConfig {
        cutmix_alpha: 1.0,
        mode: Mode::Elem,
        partner: PartnerRule::RandomPairs,
        ..MixConfig::timm(10)
    };
    let s = sampler(cfg);
    let expected: Vec<MixPlan> = (0..8)
        .map(|step| {
            s.clone()
                .with_rank(3)
                .plan_images(step, 33, image(24, 20))
                .unwrap()
        })
        .collect();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            // Each thread asks for the steps in a different order.
            std::thread::spawn(move || {
                let mut order: Vec<u64> = (0..8).collect();
                order.rotate_left(t * 3 % 8);
                order
                    .into_iter()
                    .map(|step| {
                        (
                            step,
                            s.clone()
                                .with_rank(3)
                                .plan_images(step, 33, image(24, 20))
                                .unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for (step, plan) in h.join().unwrap() {
            assert_eq!(plan, expected[step as usize], "step {step}");
        }
    }
    // A fresh sampler with the same seed agrees too (no hidden state).
    let again = sampler(s.config().clone());
    assert_eq!(
        again
            .clone()
            .with_rank(3)
            .plan_images(5, 33, image(24, 20))
            .unwrap(),
        expected[5]
    );
}

#[test]
fn ranks_steps_and_seeds_give_different_plans() {
    let s = sampler(elem(1.0, PartnerRule::Permutation));
    let base = s.plan(0, 64).unwrap();
    assert_ne!(base, s.clone().with_rank(1).plan(0, 64).unwrap(), "rank");
    assert_ne!(base, s.plan(1, 64).unwrap(), "step");
    let other = Sampler::new(s.config().clone(), 1235).unwrap();
    assert_ne!(base, other.plan(0, 64).unwrap(), "seed");
}

#[test]
fn plan_into_reuses_storage_and_matches_plan() {
    let s = sampler(elem(0.4, PartnerRule::Permutation));
    let mut plan = s.plan(0, 100).unwrap();
    plan = {
        let mut p = plan.clone();
        s.plan_into(9, 40, None, &mut p).unwrap();
        assert_eq!(p, s.plan(9, 40).unwrap());
        p
    };
    // On error the plan is left as it was.
    let before = plan.clone();
    let cut = sampler(MixConfig {
        cutmix_alpha: 1.0,
        ..elem(0.4, PartnerRule::Flip)
    });
    assert!(matches!(
        cut.plan_into(0, 8, Some(image(0, 0)), &mut plan),
        Err(MixError::EmptyShape { .. })
    ));
    assert_eq!(plan, before);
}

#[test]
fn partners_follow_the_rule() {
    for batch in [0usize, 1, 2, 3, 7, 64, 129] {
        for rule in [
            PartnerRule::Flip,
            PartnerRule::Permutation,
            PartnerRule::RandomPairs,
        ] {
            let s = sampler(elem(1.0, rule));
            for step in 0..20 {
                let plan = s.plan(step, batch).unwrap();
                assert_eq!(plan.len(), batch);
                let partners: Vec<usize> = plan.samples().map(|m| m.partner).collect();
                let mut sorted = partners.clone();
                sorted.sort_unstable();
                assert_eq!(
                    sorted,
                    (0..batch).collect::<Vec<_>>(),
                    "{rule:?} is a permutation"
                );
                if rule.is_involution() {
                    assert!(plan.is_involution(), "{rule:?} b={batch}");
                    let fixed = (0..batch).filter(|&i| partners[i] == i).count();
                    assert_eq!(fixed, batch % 2, "{rule:?} b={batch}: fixed points");
                }
                if rule == PartnerRule::Flip {
                    assert!(
                        partners
                            .iter()
                            .enumerate()
                            .all(|(i, &p)| p == batch - 1 - i)
                    );
                }
                // A sample that is its own partner is unmixed.
                for (i, m) in plan.samples().enumerate() {
                    if m.partner == i {
                        assert_eq!((m.lam, m.cut), (1.0, None), "{rule:?} b={batch} i={i}");
                    }
                }
            }
        }
    }
}

#[test]
fn random_pairs_and_permutations_are_not_degenerate() {
    // Over many draws, every partner position appears: the matching is really random.
    let s = sampler(elem(1.0, PartnerRule::RandomPairs));
    let mut seen = [[false; 6]; 6];
    for step in 0..400 {
        for (i, m) in s.plan(step, 6).unwrap().samples().enumerate() {
            seen[i][m.partner] = true;
        }
    }
    for (i, row) in seen.iter().enumerate() {
        for (j, &hit) in row.iter().enumerate() {
            assert_eq!(hit, i != j, "pair ({i}, {j})");
        }
    }
    let p = sampler(elem(1.0, PartnerRule::Permutation));
    let mut cycles_longer_than_two = 0;
    for step in 0..100 {
        let plan = p.plan(step, 8).unwrap();
        if !plan.is_involution() {
            cycles_longer_than_two += 1;
        }
    }
    assert!(cycles_longer_than_two > 80, "{cycles_longer_than_two}");
}

#[test]
fn lambda_moments_match_the_beta() {
    // Beta(α, α): mean 1/2, variance 1/(4(2α+1)). With N draws the sample mean has standard
    // error sqrt(var/N); allow 5 of them (and 10% on the variance, ~5 standard errors at N=40k).
    for alpha in [0.2, 0.4, 1.0, 2.0] {
        let s = sampler(elem(alpha, PartnerRule::Flip));
        let lam = lambdas(&s, 625, 64);
        let var = 1.0 / (4.0 * (2.0 * alpha + 1.0));
        let (m, v) = moments(&lam);
        let se = (var / lam.len() as f64).sqrt();
        assert_abs_diff_eq!(m, 0.5, epsilon = 5.0 * se);
        assert_relative_eq!(v, var, max_relative = 0.1);
    }
}

#[test]
fn max_rule_keeps_lambda_in_upper_half() {
    let s = sampler(MixConfig {
        partner: PartnerRule::RandomPairs,
        ..MixConfig::fastai_v2_mixup(10)
    });
    let lam = lambdas(&s, 400, 64);
    assert!(lam.iter().all(|&l| (0.5..=1.0).contains(&l)));
    // With α = 1 (uniform), max(λ, 1-λ) is uniform on [1/2, 1]: mean 3/4, variance 1/48.
    let s = sampler(MixConfig {
        mixup_alpha: 1.0,
        partner: PartnerRule::RandomPairs,
        ..MixConfig::fastai_v2_mixup(10)
    });
    let (m, v) = moments(&lambdas(&s, 400, 64));
    assert_abs_diff_eq!(m, 0.75, epsilon = 0.005);
    assert_abs_diff_eq!(v, 1.0 / 48.0, epsilon = 0.002);
}

#[test]
fn prob_and_switch_prob_are_respected() {
    let cfg = MixConfig {
        mixup_alpha: 1.0,
        cutmix_alpha: 1.0,
        prob: 0.7,
        switch_prob: 0.25,
        mode: Mode::Elem,
        ..MixConfig::timm(10)
    };
    let s = sampler(cfg);
    let (mut unmixed, mut cut, mut n) = (0usize, 0usize, 0usize);
    for step in 0..200 {
        for m in s.plan_images(step, 64, image(32, 32)).unwrap().samples() {
            n += 1;
            match m.cut {
                Some(_) => cut += 1,
                None if m.lam == 1.0 => unmixed += 1,
                None => {}
            }
        }
    }
    let (fu, fc) = (unmixed as f64 / n as f64, cut as f64 / n as f64);
    // Binomial standard errors at n = 12 800 are below 0.005.
    assert_abs_diff_eq!(fu, 0.3, epsilon = 0.02); // unmixed fraction
    assert_abs_diff_eq!(fc, 0.7 * 0.25, epsilon = 0.02); // CutMix fraction
}

#[test]
fn batch_mode_shares_one_decision_and_pair_mode_one_per_pair() {
    let both = MixConfig {
        cutmix_alpha: 1.0,
        ..MixConfig::timm(10)
    };
    let s = sampler(both.clone());
    for step in 0..50 {
        let plan = s.plan_images(step, 9, image(12, 10)).unwrap();
        let first = plan.sample(0);
        for (i, m) in plan.samples().enumerate() {
            if i != 4 {
                assert_eq!(
                    (m.lam, m.cut),
                    (first.lam, first.cut),
                    "step {step} sample {i}"
                );
            }
        }
    }
    let s = sampler(MixConfig {
        mode: Mode::Pair,
        partner: PartnerRule::RandomPairs,
        ..both
    });
    let mut distinct = std::collections::HashSet::new();
    for step in 0..50 {
        let plan = s.plan_images(step, 10, image(12, 10)).unwrap();
        for (i, m) in plan.samples().enumerate() {
            let p = plan.sample(m.partner);
            assert_eq!(
                (m.lam, m.cut),
                (p.lam, p.cut),
                "step {step} pair ({i}, {})",
                m.partner
            );
            distinct.insert(m.lam.to_bits());
        }
    }
    assert!(
        distinct.len() > 100,
        "pairs draw independently: {} distinct λ",
        distinct.len()
    );
}

#[test]
fn corrected_lambda_equals_the_box_area() {
    for rule in [BoxRule::Timm, BoxRule::Fastai] {
        for correct_lam in [true, false] {
            let cfg = MixConfig {
                cutmix_alpha: 1.0,
                correct_lam,
                box_rule: rule,
                ..cutmix_elem()
            };
            let (h, w) = (37usize, 23usize);
            let s = sampler(cfg);
            let mut uncorrected_differs = false;
            for step in 0..100 {
                for (i, m) in s
                    .plan_images(step, 16, image(h, w))
                    .unwrap()
                    .samples()
                    .enumerate()
                {
                    let b = m
                        .cut
                        .unwrap_or_else(|| panic!("sample {i} of step {step} is CutMix"));
                    assert!(
                        b.y0 <= b.y1 && b.y1 as usize <= h && b.x0 <= b.x1 && b.x1 as usize <= w
                    );
                    let kept = b.kept_fraction(h, w) as f32;
                    if correct_lam {
                        assert_eq!(m.lam, kept, "{rule:?} step {step} sample {i}");
                    } else {
                        uncorrected_differs |= m.lam != kept;
                        // The unclipped box has side int(side·sqrt(1-λ)) (timm) or the rounded
                        // value (fastai), so its area is at most (1-λ)HW up to one row/column.
                        let max_area = (1.0 - m.lam as f64) * (h * w) as f64 + (h + w) as f64 + 1.0;
                        assert!((b.area() as f64) <= max_area, "{rule:?} {b:?} λ={}", m.lam);
                    }
                }
            }
            assert_eq!(uncorrected_differs, !correct_lam);
        }
    }
}

#[test]
fn minmax_boxes_follow_timm_ranges() {
    let cfg = MixConfig {
        cutmix_minmax: Some((0.2, 0.6)),
        correct_lam: false, // timm corrects λ anyway when minmax is set
        ..cutmix_elem()
    };
    let (h, w) = (50usize, 30usize);
    let s = sampler(cfg);
    // timm >= 1.0.29 draws the offset with randint(0, H - cut + 1): the far edge is reachable.
    let mut touches_edge = false;
    for step in 0..50 {
        for m in s.plan_images(step, 16, image(h, w)).unwrap().samples() {
            let b = m.cut.expect("minmax forces CutMix");
            let (ch, cw) = ((b.y1 - b.y0) as usize, (b.x1 - b.x0) as usize);
            assert!((10..30).contains(&ch) && (6..18).contains(&cw), "{b:?}");
            assert!((b.y1 as usize) <= h && (b.x1 as usize) <= w, "{b:?}");
            touches_edge |= b.y1 as usize == h || b.x1 as usize == w;
            assert_eq!(m.lam, b.kept_fraction(h, w) as f32);
        }
    }
    assert!(
        touches_edge,
        "no box reached the bottom or right edge in 800 draws"
    );
    assert!(matches!(
        s.plan_images(0, 4, image(1, 30)),
        Err(MixError::InvalidArgument { .. })
    ));
}

#[test]
fn odd_flip_batch_leaves_the_middle_unmixed() {
    let s = sampler(MixConfig::timm(10));
    let plan = s.plan(0, 5).unwrap();
    assert_eq!(plan.sample(2).partner, 2);
    assert_eq!(plan.sample(2).lam, 1.0);
    assert!(plan.sample(0).lam < 1.0);
}

#[test]
fn prob_zero_gives_identity_and_display_says_so() {
    let s = sampler(MixConfig {
        prob: 0.0,
        ..MixConfig::timm(10)
    });
    let plan = s.plan(0, 4).unwrap();
    assert!(plan.samples().all(|m| m.lam == 1.0 && m.cut.is_none()));
    let text = plan.to_string();
    assert_eq!(text.matches("unmixed").count(), 4, "{text}");
}

/// torchvision v2's partner rule: the batch rolled by one, `partner(i) = (i + B − 1) mod B`;
/// with one sample the sample is left unmixed. Not an involution, so Pair mode refuses it.
#[test]
fn roll_partner_is_torchvisions() {
    for batch in [1usize, 2, 3, 8] {
        let s = sampler(elem(1.0, PartnerRule::Roll));
        let plan = s.plan(0, batch).unwrap();
        for (i, m) in plan.samples().enumerate() {
            assert_eq!(m.partner, (i + batch - 1) % batch, "B={batch} sample {i}");
        }
        if batch == 1 {
            assert_eq!(plan.sample(0).lam, 1.0);
        }
        assert_eq!(plan.is_involution(), batch <= 2);
    }
    assert!(!PartnerRule::Roll.is_involution());
    let pair = MixConfig {
        mode: Mode::Pair,
        partner: PartnerRule::Roll,
        ..MixConfig::timm(10)
    };
    assert!(matches!(
        Sampler::new(pair, 0),
        Err(MixError::InvalidConfig { field: "mode", .. })
    ));
}

/// `plan` is for rows and MixUp-only configs: with CutMix enabled it fails naming
/// `plan_images`; `plan_images` and `plan_into(.., Some(size), ..)` draw the same plan, and a
/// MixUp-only config ignores the size.
#[test]
fn plan_needs_the_image_size_only_for_cutmix() {
    let cut = sampler(MixConfig::fastai_v2_cutmix(10));
    let err = cut.plan(0, 8).unwrap_err();
    assert!(
        matches!(
            err,
            MixError::InvalidArgument {
                what: "image_size",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("plan_images"), "{err}");
    let mut p = MixPlan::default();
    assert!(cut.plan_into(0, 8, None, &mut p).is_err());
    assert_eq!(p, MixPlan::default(), "left unchanged on error");
    let size = image(12, 9);
    cut.plan_into(3, 8, Some(size), &mut p).unwrap();
    assert_eq!(p, cut.plan_images(3, 8, size).unwrap());
    assert_eq!(p.image_size(), Some(size));
    let mixup = sampler(MixConfig::timm(10));
    assert_eq!(
        mixup.plan(3, 8).unwrap(),
        mixup.plan_images(3, 8, size).unwrap()
    );
    assert_eq!(mixup.plan(3, 8).unwrap().image_size(), None);
}

/// The rank is set once; rank 0 is the default, and each rank draws its own plans.
#[test]
fn rank_is_set_once() {
    let s = sampler(MixConfig::fastai_v2_mixup(10));
    assert_eq!(s.rank(), 0);
    assert_eq!(
        s.clone().with_rank(0).plan(5, 16).unwrap(),
        s.plan(5, 16).unwrap()
    );
    let r2 = s.clone().with_rank(2);
    assert_eq!(r2.rank(), 2);
    assert_ne!(r2.plan(5, 16).unwrap(), s.plan(5, 16).unwrap());
    assert_eq!(r2.plan(5, 16).unwrap(), r2.plan(5, 16).unwrap());
}

/// A drawn plan carries its config's classes and label smoothing (one source of truth); a
/// hand-built plan carries none.
#[test]
fn drawn_plans_remember_the_target_spec() {
    let cfg = MixConfig {
        label_smoothing: 0.2,
        ..MixConfig::timm(37)
    };
    let plan = sampler(cfg.clone()).plan(0, 4).unwrap();
    let t = plan.targets().expect("drawn plans remember their spec");
    assert_eq!((t.num_classes(), t.label_smoothing()), (37, 0.2));
    assert_eq!(*t, cfg.target_spec().unwrap());
    assert_eq!(
        MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap().targets(),
        None
    );
    assert_eq!(plan.clone().with_targets(None).targets(), None);
}

/// `MixPlan::from_boxes` sets λ to the kept area as the sampler does with `correct_lam`: a
/// sampler's CutMix plan rebuilt from its own boxes is the same plan.
#[test]
fn from_boxes_matches_the_samplers_lambda() {
    let size = image(32, 24);
    for step in 0..20 {
        let plan = sampler(MixConfig::fastai_v2_cutmix(10))
            .plan_images(step, 6, size)
            .unwrap()
            .with_targets(None);
        let partner: Vec<usize> = plan.samples().map(|s| s.partner).collect();
        let boxes: Vec<_> = plan.samples().map(|s| s.cut.unwrap_or_default()).collect();
        let rebuilt = MixPlan::from_boxes(&partner, &boxes, image(32, 24)).unwrap();
        for (i, (a, b)) in plan.samples().zip(rebuilt.samples()).enumerate() {
            if a.partner == i {
                continue; // unmixed: the sampler drops the box
            }
            assert_eq!(a.cut, b.cut, "step {step} sample {i}");
            assert_eq!(a.lam, b.lam, "step {step} sample {i}");
        }
    }
}
