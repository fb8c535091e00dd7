//! The fused mixup binary cross-entropy kernels (kernels/mixup_bce.cu: bce_warp, bce_block)
//! against `reference::mixup_bce` (f64): every dtype; the launch the host makes and, on purpose,
//! the other strategy and other lane counts (the kernels must not depend on the host's
//! choice); forward only, gradient to another buffer (same or other 16-byte offset), in
//! place; Mean / Sum / None, sum_classes, host / device / per-sample grad_output; weight and
//! pos_weight (some zero); thresholds, with λ on the boundary; masked logits (−inf and the
//! dtype's minimum) with zero and non-zero targets; NaN logits; bad labels; grids smaller than
//! the host's; and the same launch in other block and thread orders, bit for bit.

use mixup_kernels::cuda::kernels::{bce_launch, emulated};
use mixup_kernels::{BceSpec, FloatElement, MixPlan, Reduction, reference};

use crate::common::TestRng as Rng;
use crate::exchange::{Case, Checks, Run, wide};
use crate::loss::{self, Mode, U, Up};

#[derive(Debug, Clone)]
struct BceCase {
    c: usize,
    b: usize,
    mode: Mode,
    reduction: Reduction,
    up_kind: Up,
    up: f32,
    eps: f64,
    weight: bool,
    pos_weight: bool,
    sum_classes: bool,
    bad_labels: bool,
    thr: Option<f32>,
    /// λ whose target lands on the threshold.
    boundary: bool,
    /// 0 none; 1 −inf; 2 the dtype's minimum; 3 both; 4 a NaN per row; 5 the dtype's minimum
    /// on every fifth class but the row's two labels (every row's loss finite).
    masked: u8,
    zoff: usize,
    goff: usize,
    /// Elements of padding after each logits row (a pitched tensor; 0: dense).
    pad: usize,
    /// The gradient only: no loss and no per-sample losses asked for.
    grad_only: bool,
    /// None: the host's launch; Some(false): bce_warp with `group` lanes; Some(true):
    /// bce_block of `threads`.
    kernel: Option<bool>,
    group: u32,
    threads: u32,
    force_grid: u32,
    orders: bool,
    seed: u64,
}

impl Default for BceCase {
    fn default() -> Self {
        Self {
            c: 1,
            b: 1,
            mode: Mode::Grad,
            reduction: Reduction::Mean,
            up_kind: Up::Host,
            up: 1.0,
            eps: 0.1,
            weight: false,
            pos_weight: false,
            sum_classes: false,
            bad_labels: false,
            thr: None,
            boundary: false,
            masked: 0,
            zoff: 0,
            goff: 0,
            pad: 0,
            grad_only: false,
            kernel: None,
            group: 1,
            threads: 64,
            force_grid: 0,
            orders: false,
            seed: 1,
        }
    }
}

struct Inputs<T> {
    z: Vec<T>,
    labels: Vec<u32>,
    plan: MixPlan,
    ups: Vec<f32>,
    spec: BceSpec,
}

fn make<T: FloatElement + Default>(c: &BceCase) -> Inputs<T> {
    let mut rng = Rng::new(c.seed);
    let (cc, b) = (c.c, c.b);
    let mut z: Vec<T> = (0..cc * b)
        .map(|_| {
            T::from_f32(if rng.unit() < 0.03 {
                40.0 * rng.unit() as f32 - 20.0
            } else {
                loss::normal(&mut rng, 3.0)
            })
        })
        .collect();
    let mut labels: Vec<u32> = (0..b).map(|_| rng.below(cc) as u32).collect();
    for i in (0..b).step_by(3) {
        labels[i] = if (i / 3) % 2 == 1 { cc as u32 - 1 } else { 0 };
    }
    let partner = loss::shuffled(b, &mut rng);
    loss::special_labels(&mut labels, &partner, cc, c.bad_labels);
    let mut lam: Vec<f32> = (0..b)
        .map(|i| match i {
            0 => 1.0,
            1 => 0.5,
            4 => 0.0,
            _ => rng.unit() as f32,
        })
        .collect();
    if let (true, Some(thr)) = (c.boundary, c.thr) {
        // λ whose soft target t_a = on λ + off (1 − λ) is the f32 value nearest the threshold,
        // and its neighbours: the decision then rests on timm's rounding.
        let e = c.eps; // timm's double ε
        let off = e / cc as f64;
        let on = 1.0 - e + off;
        let lam0 = ((f64::from(thr) - off) / (on - off)) as f32;
        let mut l = f32::from_bits(lam0.to_bits() - 3);
        for v in lam.iter_mut().take(7) {
            *v = l;
            l = f32::from_bits(l.to_bits() + 1);
        }
    }
    if c.masked == 4 {
        // One NaN logit per row, some at classes of weight 0 (k % 7 == 3).
        for i in 0..b {
            z[i * cc + if i % 2 == 1 { 3 % cc } else { (i * 5) % cc }] = T::from_f32(f32::NAN);
        }
    } else if c.masked == 5 {
        for i in 0..b {
            let keep = [labels[i] as usize, labels[partner[i]] as usize];
            for k in (i % 5..cc).step_by(5).filter(|k| !keep.contains(k)) {
                z[i * cc + k] = loss::dtype_min::<T>();
            }
        }
    } else if c.masked != 0 {
        // Per row a few classes masked, among them (by turns) the label, the partner's label
        // or neither, or the whole row.
        for i in 0..b {
            let (a, bl) = (labels[i] as usize, labels[partner[i]] as usize);
            let mut put = |k: usize, j: usize| {
                if k < cc {
                    let kind = if c.masked == 3 {
                        j % 2
                    } else {
                        c.masked as usize - 1
                    };
                    z[i * cc + k] = if kind == 0 {
                        T::from_f32(f32::NEG_INFINITY)
                    } else {
                        loss::dtype_min::<T>()
                    };
                }
            };
            for k in (i % 3..cc).step_by(5) {
                put(k, k);
            }
            match i % 4 {
                1 => put(a, i),
                2 => put(bl, i),
                3 => (0..cc).for_each(|k| put(k, k)),
                _ => {}
            }
        }
    }
    let mut spec = BceSpec::new(cc, c.eps, c.reduction)
        .unwrap()
        .with_sum_classes(c.sum_classes);
    if c.weight {
        let w = random_weights(&mut rng, cc, (7, 3), (0.0, 2.0));
        spec = spec.with_weight(w).unwrap();
    }
    if c.pos_weight {
        let w = random_weights(&mut rng, cc, (5, 2), (0.25, 2.75));
        spec = spec.with_pos_weight(w).unwrap();
    }
    if let Some(thr) = c.thr {
        spec = spec.with_target_threshold(thr).unwrap();
    }
    let ups = loss::upstream_values(c.up_kind, c.up, b, &mut rng);
    Inputs {
        z,
        labels,
        plan: MixPlan::from_parts(&partner, &lam).unwrap(),
        ups,
        spec,
    }
}

/// `c` class weights uniform in [lo, lo + span), but 0 for the classes k with k % m == r.
fn random_weights(
    rng: &mut Rng,
    c: usize,
    (m, r): (usize, usize),
    (lo, span): (f32, f32),
) -> Vec<f32> {
    (0..c)
        .map(|k| {
            if k % m == r {
                0.0
            } else {
                lo + span * rng.unit() as f32
            }
        })
        .collect()
}

fn push_case<T: FloatElement + Default + Send + Sync + 'static>(c: BceCase, out: &mut Vec<Case>) {
    let inp = make::<T>(&c);
    let call = loss::call_for!(c, inp, (inp.spec.weight(), inp.spec.pos_weight()), 232448);
    let n = inp.z.len();
    let mut launch = emulated::mixup_bce(
        &inp.plan,
        &inp.spec,
        T::DTYPE,
        n,
        &call.ce,
        call.weights,
        call.up,
        call.ld,
        &call.dev,
    )
    .unwrap()
    .expect("a launch");
    let (tuning, sms) = crate::exchange::tuning();
    let (kernel, group, cfg) = bce_launch(c.c as u64, size_of::<T>(), c.b as u64, &tuning, sms);
    assert!(
        launch.entry.starts_with(kernel)
            && (cfg.grid_dim, cfg.block_dim) == (launch.config.grid_dim, launch.config.block_dim),
        "{c:?}"
    );
    // `BceArgs::group` is the struct's last u32, before `ld`.
    let at = launch.args.len() - 12;
    assert_eq!(
        launch.args[at..at + 4],
        group.to_le_bytes(),
        "BceArgs::group"
    );
    let dt = launch.entry.rsplit('_').next().unwrap().to_string();
    match c.kernel {
        // Not the host's launch, on purpose: the other strategy and other lane counts.
        Some(false) => {
            launch.entry = leak(format!("bce_warp_{dt}"));
            launch.args[at..at + 4].copy_from_slice(&c.group.to_le_bytes());
            // The warp kernel's block is the tuning's (`BCE_NT`, as compiled).
            let nt = tuning.bce_warp_threads;
            let rows = (nt / c.group) as usize;
            launch.config.grid_dim.0 = c.b.div_ceil(rows).max(1) as u32;
            launch.config.block_dim.0 = nt;
        }
        Some(true) => {
            launch.entry = leak(format!("bce_block_{dt}"));
            launch.args[at..at + 4].copy_from_slice(&32u32.to_le_bytes());
            launch.config.grid_dim.0 = c.b as u32;
            // Within the kernel's `__launch_bounds__` (`BCE_BLOCK_NT`, as compiled).
            launch.config.block_dim.0 = c.threads.min(tuning.bce_block_max_threads);
        }
        None => {}
    }
    if c.force_grid != 0 {
        launch.config.grid_dim.0 = c.force_grid;
    }
    let block = launch.entry.starts_with("bce_block");
    let lanes = if block {
        launch.config.block_dim.0
    } else {
        u32::from_le_bytes(launch.args[at..at + 4].try_into().unwrap())
    } as u64;
    let threads = launch.config.block_dim.0 as u64;
    let what = format!(
        "bce {:?} C {} B {} {}{}{}{}{}{}{} [{} G {lanes} block {} grid {}{}]",
        T::DTYPE,
        c.c,
        c.b,
        loss::describe_common!(c),
        if c.weight { " weight" } else { "" },
        if c.pos_weight { " pos_weight" } else { "" },
        if c.sum_classes { " sum_classes" } else { "" },
        c.thr.map_or(String::new(), |t| format!(
            " thr {t}{}",
            if c.boundary { " (boundary λ)" } else { "" }
        )),
        if c.masked != 0 {
            format!(" masked {}", c.masked)
        } else {
            String::new()
        },
        if c.bad_labels { " bad-labels" } else { "" },
        launch.entry,
        launch.config.block_dim.0,
        launch.config.grid_dim.0,
        if c.force_grid != 0 { " forced" } else { "" },
    );
    let slots = call.slots;
    out.push(Case {
        group: "bce",
        what,
        launch,
        orders: loss::orders(c.seed, c.orders),
        bufs: call.bufs.0,
        verdict: Box::new(move |runs, k| judge::<T>(runs, k, &c, &inp, (slots, lanes, threads))),
    });
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// timm's thresholded target (f32, each product and the sum rounded once), for the bounds.
fn thr_target(y1: f32, y2: f32, lam: f32, thr: f32) -> f64 {
    let mu = 1.0 - lam;
    if y1 * lam + y2 * mu > thr { 1.0 } else { 0.0 }
}

/// The kernel's soft targets in f32 (common.cuh `soft_pair`: each product and sum rounded once,
/// no FMA): `(t_a, t_b, t_off)`.
fn kernel_targets(eps: f64, cc: usize, lam: f32, same: bool) -> (f64, f64, f64) {
    let eps32 = eps as f32;
    let (keep, off) = (1.0 - eps32, eps32 / cc as f32);
    let mu = 1.0 - lam;
    let (ta, tb) = if same {
        let t = keep * (lam + mu) + off;
        (t, t)
    } else {
        (keep * lam + off, keep * mu + off)
    };
    (f64::from(ta), f64::from(tb), f64::from(off))
}

fn judge<T: FloatElement + Default>(
    runs: &[Run],
    k: &mut Checks,
    c: &BceCase,
    inp: &Inputs<T>,
    (slots, lanes, threads): (loss::Slots, u64, u64),
) {
    let o = loss::read::<T>(&runs[0], &slots);
    let (cc, b) = (c.c, c.b);
    let (rnd_rel, rnd_abs) = loss::rnd::<T>();
    let n_ops = loss::sum_chain::<T>(cc, lanes, 2.0, 4.0);
    let eps = f64::from(c.eps as f32); // the kernel computes with f32(ε)
    let off = eps / cc as f64;
    let eps_dec = c.eps; // timm's double ε
    let off_dec = eps_dec / cc as f64;
    let (on32, off32) = ((1.0 - eps_dec + off_dec) as f32, off_dec as f32);
    let count = if c.sum_classes {
        b as f64
    } else {
        (b * cc) as f64
    };
    let fixed = loss::in_range(&inp.labels, cc);
    let up = (c.up_kind, c.up, &inp.ups[..]);
    let r =
        reference::mixup_bce(&inp.plan, &inp.spec, &inp.z, &fixed, loss::grad_output(up)).unwrap();
    let (mut ref_sum, mut ref_tol, mut ref_finite) = (0.0, 0.0, true);
    let mut rows = loss::Failures::new(3);
    let (defined, bad_rows) = loss::defined_rows(&inp.plan, &inp.labels, cc);
    for (i, s, a, bl) in defined {
        let lam = f64::from(s.lam);
        let (ta, tb, toff) = match c.thr {
            Some(thr) => {
                let ta = if a == bl {
                    thr_target(on32, on32, s.lam, thr)
                } else {
                    thr_target(on32, off32, s.lam, thr)
                };
                let tb = if a == bl {
                    ta
                } else {
                    thr_target(off32, on32, s.lam, thr)
                };
                (ta, tb, thr_target(off32, off32, s.lam, thr))
            }
            None if a == bl => ((1.0 - eps) + off, (1.0 - eps) + off, off),
            None => (
                (1.0 - eps) * lam + off,
                (1.0 - eps) * (1.0 - lam) + off,
                off,
            ),
        };
        // The targets the kernel computes with (exact 0/1 when thresholded).
        let (ka, kb, koff) = match c.thr {
            Some(_) => (ta, tb, toff),
            None => kernel_targets(c.eps, cc, s.lam, a == bl),
        };
        let scale = loss::scale(up, i, c.reduction, count);
        let (mut labs, mut lerr, mut over) = (0.0, 0.0, false);
        let mut grads = loss::Failures::new(2);
        let zr = wide(&inp.z[i * cc..(i + 1) * cc]);
        for (kk, &z) in zr.iter().enumerate() {
            let j = i * cc + kk;
            let (t, t32) = if kk == a as usize {
                (ta, ka)
            } else if kk == bl as usize {
                (tb, kb)
            } else {
                (toff, koff)
            };
            let w = inp.spec.pos_weight().map_or(1.0, |p| f64::from(p[kk]));
            let v = inp.spec.weight().map_or(1.0, |p| f64::from(p[kk]));
            let cw = 1.0 + (w - 1.0) * t;
            let e = (-z.abs()).exp();
            let sp = e.ln_1p();
            let nan = z.is_nan();
            let lin = if z >= 0.0 {
                if 1.0 - t != 0.0 { (1.0 - t) * z } else { 0.0 }
            } else if w * t != 0.0 || nan {
                -w * t * z
            } else {
                0.0
            };
            let l = cw * sp + lin;
            // An element whose unweighted loss is past the f32 range is +inf in f32, even where
            // v l would fit.
            over |= v != 0.0 && l.abs() > f64::from(f32::MAX);
            labs += r.elements[j].abs();
            if v != 0.0 {
                lerr += v.abs() * (6.0 * U * (lin.abs() + cw.abs() * sp) + 1e-38);
            }
            if c.mode == Mode::Fwd {
                continue;
            }
            let sig = if z >= 0.0 {
                1.0 / (1.0 + e)
            } else {
                e / (1.0 + e)
            };
            let gx = r.grad[j];
            let gtol = 8.0 * U * (v * scale).abs() * ((cw * sig).abs() + (w * t).abs())
                + rnd_rel * gx.abs()
                + rnd_abs
                + 1e-40;
            let got = f64::from(o.grad[j].to_f32());
            let fail = if gx.is_nan() {
                !got.is_nan()
            } else {
                !loss::within(got, gx, gtol)
            };
            grads.check(k, !fail, || format!("grad[{i}, {kk}] is {got}, expected {gx} (tol {gtol:.3e}, z {z}, t {t}, w {w}, v {v})"));
            // Against the exact gradient at the kernel's own f32 target, to a few roundings of
            // its terms: (1 − t) − c·s for z ≥ 0, c·s − w·t below (s = σ(−|z|)); an error
            // relative to 1 where the gradient is e^−z (c·σ(z) − w·t at t = 1) fails here.
            if z.is_nan() {
                continue;
            }
            let c32 = 1.0 + (w - 1.0) * t32;
            let s = e / (1.0 + e);
            let (d, terms) = if z >= 0.0 {
                ((1.0 - t32) - c32 * s, (1.0 - t32).abs() + (c32 * s).abs())
            } else {
                (c32 * s - w * t32, (c32 * s).abs() + (w * t32).abs())
            };
            let own = v * d * scale;
            let otol = 8.0 * U * (v * scale).abs() * terms
                + (4.0 * U + rnd_rel) * own.abs()
                + rnd_abs
                + 1e-40;
            grads.check(k, loss::within(got, own, otol), || {
                format!("grad[{i}, {kk}] is {got}, exact at the kernel's target t = {t32}: {own} (tol {otol:.3e}, z {z}, w {w}, v {v})")
            });
        }
        if c.mode != Mode::Fwd {
            k.check(grads.none(), || format!("gradient of row {i}"));
        }
        let want = r.losses[i];
        let tol = lerr + n_ops * U * labs + 1e-37;
        let got = f64::from(o.losses[i]);
        ref_sum += want;
        ref_tol += tol;
        if c.grad_only {
            // No loss written: checked below.
        } else if want.is_nan() {
            ref_finite = false;
            rows.check(k, got.is_nan(), || {
                format!("loss of row {i} is {got}, expected NaN")
            });
        } else if !want.is_finite() || over || want.abs() - tol > loss::f32_limit() {
            ref_finite = false;
            // +inf (a weighted −inf logit, or a sum past the f32 range).
            rows.check(k, got == f64::INFINITY, || {
                format!("loss of row {i} is {got}, expected {want}")
            });
        } else if want.abs() + tol >= loss::f32_limit() {
            // A row on f32's rounding boundary (every logit at f32::MIN, Σ t |z| ≈ f32::MAX):
            // +inf or the value.
            ref_finite = false;
            rows.check(
                k,
                got == f64::INFINITY || loss::within(got, want, tol),
                || format!("loss of row {i} is {got}, expected {want} or +inf (tol {tol:.3e})"),
            );
        } else {
            rows.check(k, loss::within(got, want, tol), || {
                format!("loss of row {i} is {got}, expected {want} (tol {tol:.3e})")
            });
        }
    }
    k.check(rows.none(), || "per-sample losses".into());
    let reference = (bad_rows == 0 && ref_finite).then_some((ref_sum, ref_tol));
    if c.grad_only {
        loss::check_grad_only(k, &o);
    } else {
        loss::check_totals(k, &o, (bad_rows, threads), (c.reduction, count), reference);
        if c.masked == 5 && loss::dtype_min::<T>().to_f32() < -1e38 {
            // The cases above, made so in f32 and bf16 (f16's minimum is -65504): the mean fits
            // f32, the sum does not.
            let finite = o.loss.is_finite();
            k.check(finite == (c.reduction == Reduction::Mean), || {
                format!("reduced loss {} under {:?}", o.loss, c.reduction)
            });
        }
    }
    loss::check_untouched(k, &o, &inp.z, &slots);
    if c.orders {
        loss::check_orders::<T>(k, runs, &slots, false);
    }
}

fn bce_cases<T: FloatElement + Default + Send + Sync + 'static>(out: &mut Vec<Case>) {
    let odd = loss::odd::<T>(); // a logits view off its 16-byte boundary
    let ve = 16 / size_of::<T>();
    let mut next = loss::seeds::<T>(3000);
    // Each case with the next seed.
    let mut add = |mut case: BceCase| {
        case.seed = next();
        push_case::<T>(case, out)
    };
    for c in [1usize, 3, 7, 8, 9, 17, 33, 100, 257, 1000, 1031, 4099] {
        let small = c <= 300;
        // The host's launch: every option once, in turns.
        for v in 0..8usize {
            let mode = [Mode::Fwd, Mode::Grad, Mode::GradShifted, Mode::InPlace][v % 4];
            let reduction = [Reduction::Mean, Reduction::Sum, Reduction::None][v % 3];
            let up_kind = match (reduction, v % 2) {
                (Reduction::None, 1) => Up::PerSample,
                (Reduction::None, _) => Up::Host,
                (_, 1) => Up::Device,
                _ => Up::Host,
            };
            let zoff = if v % 3 == 0 { odd } else { 0 };
            add(BceCase {
                c,
                b: if small { 9 } else { 5 },
                mode,
                reduction,
                up_kind,
                up: if v % 2 == 1 { 0.75 } else { 1.0 },
                eps: if v % 3 == 1 { 0.0 } else { 0.1 },
                weight: v % 2 == 0,
                pos_weight: v % 4 < 2,
                sum_classes: v % 5 == 1,
                thr: (v >= 4).then_some(if v == 7 { 0.05 } else { 0.2 }),
                boundary: v == 5 || v == 6,
                masked: (v % 4) as u8,
                zoff,
                goff: if mode == Mode::GradShifted {
                    if zoff == 0 { odd } else { 0 }
                } else {
                    zoff
                },
                // Pitched logits (burn's CUDA tensors), except in place: rows on the 16-byte
                // grid as cubecl pads them, or 3 elements off it.
                pad: match (mode, v % 3) {
                    (Mode::InPlace, _) | (_, 0) => 0,
                    (_, 1) => 3,
                    _ => ve - c % ve,
                },
                orders: v == 0 || v == 5,
                ..BceCase::default()
            });
        }
        // The gradient only (an autograd backward pass): no loss, no per-sample losses written.
        add(BceCase {
            c,
            b: 7,
            grad_only: true,
            mode: if c % 2 == 0 {
                Mode::Grad
            } else {
                Mode::GradShifted
            },
            reduction: [Reduction::Mean, Reduction::Sum, Reduction::None][c % 3],
            weight: true,
            pad: c % 3,
            ..BceCase::default()
        });
        // The other strategy and other lane counts, masked logits, weights, threshold.
        for kk in [false, true] {
            add(BceCase {
                c,
                b: 7,
                kernel: Some(kk),
                group: if c < 40 { 2 } else { 32 },
                threads: if c < 1000 { 64 } else { 256 },
                mode: if kk { Mode::InPlace } else { Mode::Grad },
                weight: true,
                pos_weight: true,
                thr: kk.then_some(0.2),
                masked: 3,
                force_grid: if kk { 2 } else { 0 },
                orders: true,
                ..BceCase::default()
            });
        }
        // NaN logits, with weights (some 0) and a threshold: NaN, never a finite loss.
        add(BceCase {
            c,
            b: 4,
            weight: true,
            pos_weight: true,
            thr: Some(0.2),
            masked: 4,
            ..BceCase::default()
        });
        // Out-of-range labels.
        add(BceCase {
            c,
            b: 5,
            bad_labels: true,
            ..BceCase::default()
        });
    }
    // A large batch through bce_warp with a smaller grid, and more rows than the last block's
    // threads (each thread of bce_finish sums several).
    add(BceCase {
        c: 10,
        b: 600,
        force_grid: 3,
        weight: true,
        ..BceCase::default()
    });
    add(BceCase {
        c: 1000,
        b: 40,
        weight: true,
        mode: Mode::InPlace,
        orders: true,
        ..BceCase::default()
    });
    // Logits masked with the dtype's minimum (not the labels) under smoothing: each row's loss
    // is about 0.2·ε·|min|, 256 of them add up past f32's range, their mean does not, so Mean
    // must be finite (the total is reduced in f64, as the CPU path does); Sum is +inf.
    for (reduction, sum_classes) in [
        (Reduction::Mean, false),
        (Reduction::Mean, true),
        (Reduction::Sum, false),
    ] {
        add(BceCase {
            c: 1000,
            b: 256,
            masked: 5,
            reduction,
            sum_classes,
            ..BceCase::default()
        });
    }
}

pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    loss::for_float_types!(bce_cases(&mut out));
    out
}
