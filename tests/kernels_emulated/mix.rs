//! The mix and soft-target kernels (kernels/mix.cu, kernels/soft_targets.cu): every dtype,
//! awkward row lengths, views at odd offsets, in place and out of place, permutations, pairs,
//! flips, CutMix boxes (at the edges and whole) in NCHW and NHWC; soft targets over awkward
//! class counts, with and without smoothing, and an out-of-range label. Against
//! `reference::mix` / `reference::soft_targets` within the f32 arithmetic's and the storage's
//! rounding (pasted and kept CutMix pixels exactly); both also bit for bit against the CPU path
//! (`cpu::mix`, `cpu::soft_targets`).

use std::sync::atomic::{AtomicU64, Ordering};

use mixup_kernels::cuda::kernels::emulated::{self, Device, HostLaunch};
use mixup_kernels::{
    CutBox, Element, MixPlan, SampleShape, ScalarType, TargetSpec, bf16, cpu, f16, reference,
};

use crate::common::{self, TestRng as Rng, image, mix_layouts};
use crate::exchange::{Buffers, Case, Checks, Run, Verdict, addr, bytes, elems, pad_rows, wide};
use crate::loss::within;

const U: f64 = f32::EPSILON as f64 / 2.0;

/// The engine's orders, cycled over the launches as the old C++ tests did: block order n % 3,
/// thread policy n / 3 % 4.
fn next_order() -> Vec<(u32, u32, u64)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    vec![((n % 3) as u32, (n / 3 % 4) as u32, n + 1)]
}

/// The rounding of a value to storage: (relative, absolute) half-ulp bounds; u8 rounds to an
/// integer.
fn storage(dtype: ScalarType, v: f64) -> f64 {
    match dtype {
        ScalarType::F32 => 0.0,
        ScalarType::F16 => 2f64.powi(-11) * v.abs() + 2f64.powi(-25),
        ScalarType::BF16 => 2f64.powi(-8) * v.abs() + 2f64.powi(-134),
        ScalarType::U8 => 0.5 + 1e-9,
    }
}

/// A case of this file, run in the next order ([`next_order`]).
fn case(
    group: &'static str,
    what: String,
    launch: HostLaunch,
    b: Buffers,
    verdict: Verdict,
) -> Case {
    Case {
        group,
        what,
        launch,
        orders: next_order(),
        bufs: b.0,
        verdict,
    }
}

/// The host's soft-target launch: the labels in buffer `lb`, the output `oo` elements into
/// buffer `ob`, `n` elements of it, the staged plan in `pb` and the flags in `fb`.
fn soft_launch<T: Element>(
    plan: &MixPlan,
    spec: &TargetSpec,
    (lb, ob, oo): (usize, usize, usize),
    n: usize,
    (pb, fb): (usize, usize),
) -> HostLaunch {
    let out = addr(ob, oo * size_of::<T>());
    emulated::soft_targets(plan, spec, T::DTYPE, addr(lb, 0), out, n, &dev(pb, fb))
        .unwrap()
        .expect("a launch")
}

fn dev(plan: usize, flags: usize) -> Device {
    crate::exchange::device(addr(plan, 0), addr(flags, 0), 232448)
}

fn plan_with(
    partner: &[usize],
    lam: &[f32],
    cut: &[bool],
    h: usize,
    w: usize,
    rng: &mut Rng,
) -> MixPlan {
    if !cut.iter().any(|&c| c) {
        return MixPlan::from_parts(partner, lam).unwrap();
    }
    let boxes: Vec<Option<CutBox>> = (0..partner.len())
        .map(|i| {
            cut[i].then(|| {
                if i % 5 == 1 {
                    return common::cut(0..h as u32, 0..w as u32);
                }
                let y0 = rng.below(h);
                let y1 = y0 + rng.below(h - y0 + 1);
                let x0 = rng.below(w);
                let x1 = x0 + rng.below(w - x0 + 1);
                common::cut(y0 as u32..y1 as u32, x0 as u32..x1 as u32)
            })
        })
        .collect();
    MixPlan::with_boxes(partner, lam, &boxes, image(h, w)).unwrap()
}

fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// The mix of `x` by `plan` (`out` or in place) checked against the reference.
fn judge_mix<T: Element + Default>(
    runs: &[Run],
    k: &mut Checks,
    plan: &MixPlan,
    layout: &SampleShape,
    x: &[T],
    (buf, off): (usize, usize),
    fill: T,
) {
    let got: Vec<T> = elems(&runs[0].bufs[buf][off * size_of::<T>()..]);
    let want = reference::mix(plan, layout, x).unwrap();
    let row = layout.sample_len().unwrap();
    let image = layout.image_size().is_some();
    let mut bad = 0;
    for (j, (g, w)) in wide(&got).iter().zip(&want).enumerate() {
        let s = plan.sample(j / row.max(1));
        // A pasted or kept pixel is a copy; a lerp rounds in f32, then to storage.
        let own = f64::from(x[j].to_f32());
        let other = f64::from(x[s.partner * row + j % row].to_f32());
        let tol = if image && s.cut.is_some() {
            0.0
        } else {
            4.0 * U * (own.abs() + other.abs()) + storage(T::DTYPE, *w)
        };
        // `within` is false for a NaN (a read of the NaN-filled padding).
        if !within(*g, *w, tol) && bad < 2 {
            k.check(false, || {
                format!("[{j}] is {g}, reference {w} (tol {tol:.3e})")
            });
        }
        bad += usize::from(!within(*g, *w, tol));
    }
    k.check(bad == 0, || format!("{bad} elements off the reference"));
    // The CPU path's bits (`CudaMixer::mix`'s docs promise them), in place or not.
    let mut cpu_out = vec![fill; x.len()];
    cpu::mix(plan, layout, x, &mut cpu_out).unwrap();
    let first = (0..x.len()).find(|&j| bytes(&got[j..=j]) != bytes(&cpu_out[j..=j]));
    k.check(first.is_none(), || {
        let j = first.unwrap_or(0);
        let i = j / row.max(1);
        format!(
            "not the CPU path's bits: [{j}] (sample {i}, partner {}, lam {}) is {}, the CPU's {}",
            plan.sample(i).partner,
            plan.sample(i).lam,
            got[j].to_f32(),
            cpu_out[j].to_f32()
        )
    });
    let before: Vec<T> = elems(&runs[0].bufs[buf][..off * size_of::<T>()]);
    k.check(bytes(&before) == bytes(&vec![fill; off]), || {
        "wrote before its view".into()
    });
}

/// `x` with each row of `seg` elements but the last padded to `pitch` by a value no mix gives
/// (NaN; 250 in u8, whose inputs here are below 256 but rarely 250 at a given place).
pub(crate) fn pitched<T: Element>(x: &[T], seg: usize, pitch: usize) -> Vec<T> {
    let pad = if T::DTYPE == ScalarType::U8 {
        T::from_f32(250.0)
    } else {
        T::from_f32(f32::NAN)
    };
    pad_rows(x, seg, pitch - seg, pad)
}

fn mix_cases<T: Element + Default + Send + Sync + 'static>(rng: &mut Rng, out: &mut Vec<Case>) {
    let layouts = mix_layouts();
    let sz = size_of::<T>();
    for layout in layouts {
        let d = layout.sample_len().unwrap();
        let (h, w) = layout.image_size().map_or((4, 4), |s| (s.height, s.width));
        for batch in [1usize, 2, 5, 8] {
            let n = batch * d;
            let x: Vec<T> = (0..n)
                .map(|_| {
                    if T::DTYPE == ScalarType::U8 {
                        T::from_f32(rng.below(256) as f32)
                    } else {
                        T::from_f32(rng.range(-4.0, 4.0))
                    }
                })
                .collect();
            let perm = shuffled(batch, rng);
            let order = shuffled(batch, rng);
            let mut pairs: Vec<usize> = (0..batch).collect();
            for k in (0..batch.saturating_sub(1)).step_by(2) {
                pairs[order[k]] = order[k + 1];
                pairs[order[k + 1]] = order[k];
            }
            let flip: Vec<usize> = (0..batch).rev().collect();
            let ident: Vec<usize> = (0..batch).collect();
            // λ = 1, and λ = 0.5 and 0.25, whose lerps of u8 values land on .5 ties (rounded
            // to even, as `u8::from_f32` and numpy's `rint`).
            let lam: Vec<f32> = (0..batch)
                .map(|i| match i % 7 {
                    3 => 1.0,
                    1 => 0.5,
                    4 => 0.25,
                    _ => rng.range(0.0, 1.0),
                })
                .collect();
            let none = vec![false; batch];
            let some: Vec<bool> = (0..batch).map(|i| i % 4 != 0).collect();
            let plans = [
                ("identity", plan_with(&ident, &lam, &none, h, w, rng)),
                ("perm", plan_with(&perm, &lam, &none, h, w, rng)),
                ("pairs", plan_with(&pairs, &lam, &none, h, w, rng)),
                ("flip", plan_with(&flip, &lam, &none, h, w, rng)),
                ("cut pairs", plan_with(&pairs, &lam, &some, h, w, rng)),
                ("cut perm", plan_with(&perm, &lam, &some, h, w, rng)),
            ];
            for (name, plan) in plans {
                let (staged, _) = emulated::staged_plan(&plan);
                for (xo, oo) in [(0usize, 0usize), (1, 1), (3, 1), (0, 5), (2, 0)] {
                    let what = format!(
                        "mix {:?} {name} {layout:?} B {batch} off {xo},{oo}",
                        T::DTYPE
                    );
                    let mut b = Buffers::default();
                    let mut xs = vec![T::from_f32(0.0); xo];
                    xs.extend_from_slice(&x);
                    let xb = b.add(bytes(&xs), false);
                    let fill = T::from_f32(7.0);
                    let ob = b.add(bytes(&vec![fill; oo + n]), true);
                    let pb = b.add(staged.clone(), false);
                    let launch = emulated::mix(
                        &plan,
                        &layout,
                        T::DTYPE,
                        addr(xb, xo * sz),
                        addr(ob, oo * sz),
                        n,
                        false,
                        None,
                        &dev(pb, pb),
                    )
                    .unwrap()
                    .expect("a launch");
                    let (p, l, xv) = (plan.clone(), layout, x.clone());
                    let verdict: Verdict =
                        Box::new(move |runs, k| judge_mix(runs, k, &p, &l, &xv, (ob, oo), fill));
                    out.push(case(
                        "mix",
                        what.clone() + " out of place",
                        launch,
                        b,
                        verdict,
                    ));
                    // A pitched input (burn's CUDA tensors pad each row of the last dimension):
                    // pitches of whole 16-byte slots (the slot path when the rows are whole
                    // slots too) and 3 elements past the row; the output stays dense.
                    if xo == oo {
                        let seg = emulated::input_row(&layout);
                        let ve = 16 / sz;
                        for pitch in [(seg / ve + 1) * ve, seg + 3] {
                            let mut b = Buffers::default();
                            let mut xs = vec![T::from_f32(0.0); xo];
                            xs.extend(pitched(&x, seg, pitch));
                            let xb = b.add(bytes(&xs), false);
                            let ob = b.add(bytes(&vec![fill; oo + n]), true);
                            let pb = b.add(staged.clone(), false);
                            let (xa, oa) = (addr(xb, xo * sz), addr(ob, oo * sz));
                            let launch = emulated::mix(
                                &plan,
                                &layout,
                                T::DTYPE,
                                xa,
                                oa,
                                n,
                                false,
                                Some(pitch),
                                &dev(pb, pb),
                            )
                            .unwrap()
                            .expect("a launch");
                            let (p, l, xv) = (plan.clone(), layout, x.clone());
                            let verdict: Verdict = Box::new(move |runs, k| {
                                judge_mix(runs, k, &p, &l, &xv, (ob, oo), fill)
                            });
                            let what = format!("{what} pitch {pitch}");
                            out.push(case("mix", what, launch, b, verdict));
                        }
                    }
                    if plan.is_involution() {
                        let mut b = Buffers::default();
                        let xb = b.add(bytes(&xs), true);
                        let pb = b.add(staged.clone(), false);
                        let at = addr(xb, xo * sz);
                        let launch = emulated::mix(
                            &plan,
                            &layout,
                            T::DTYPE,
                            at,
                            at,
                            n,
                            true,
                            None,
                            &dev(pb, pb),
                        )
                        .unwrap()
                        .expect("a launch");
                        let (p, l, xv) = (plan.clone(), layout, x.clone());
                        let zero = T::from_f32(0.0);
                        let verdict: Verdict = Box::new(move |runs, k| {
                            judge_mix(runs, k, &p, &l, &xv, (xb, xo), zero)
                        });
                        out.push(case("mix", what + " in place", launch, b, verdict));
                    }
                }
            }
        }
    }
}

fn soft_cases<T: mixup_kernels::FloatElement + Default + Send + Sync + 'static>(
    rng: &mut Rng,
    out: &mut Vec<Case>,
) {
    let sz = size_of::<T>();
    for c in [1usize, 2, 3, 10, 63, 1000, 4097] {
        for batch in [1usize, 2, 5] {
            for eps in [0.0f64, 0.1] {
                let labels: Vec<u32> = (0..batch)
                    .map(|i| if i % 3 == 1 { 0 } else { rng.below(c) as u32 })
                    .collect();
                let perm = shuffled(batch, rng);
                let lam: Vec<f32> = (0..batch).map(|_| rng.range(0.0, 1.0)).collect();
                let plan = MixPlan::from_parts(&perm, &lam).unwrap();
                let spec = TargetSpec::new(c, eps).unwrap();
                let (staged, _) = emulated::staged_plan(&plan);
                for oo in [0usize, 1, 3] {
                    let mut b = Buffers::default();
                    let fill = T::from_f32(5.0);
                    let ob = b.add(bytes(&vec![fill; oo + batch * c]), true);
                    let lb = b.add(bytes(&labels), false);
                    let pb = b.add(staged.clone(), false);
                    let fb = b.add(bytes(&[0u32, 0]), true);
                    let launch = soft_launch::<T>(&plan, &spec, (lb, ob, oo), batch * c, (pb, fb));
                    let (p, s, l) = (plan.clone(), spec, labels.clone());
                    let verdict: Verdict = Box::new(move |runs, k| {
                        let got: Vec<T> = elems(&runs[0].bufs[ob][oo * sz..]);
                        let want = reference::soft_targets(&p, &s, &l).unwrap();
                        // (1-ε)·λ + ε/C in f32: three roundings; then storage.
                        let bad = wide(&got)
                            .iter()
                            .zip(&want)
                            .filter(|(g, w)| {
                                !within(**g, **w, 4.0 * U * w.abs() + storage(T::DTYPE, **w))
                            })
                            .count();
                        k.check(bad == 0, || format!("{bad} targets off the reference"));
                        let mut cpu_t = vec![T::default(); want.len()];
                        cpu::soft_targets(&p, &s, &l, &mut cpu_t).unwrap();
                        k.check(bytes(&got) == bytes(&cpu_t), || {
                            "not the CPU path's bits".into()
                        });
                        let before: Vec<T> = elems(&runs[0].bufs[ob][..oo * sz]);
                        k.check(bytes(&before) == bytes(&vec![fill; oo]), || {
                            "wrote before its view".into()
                        });
                        let flags: Vec<u32> = elems(&runs[0].bufs[fb]);
                        k.check(flags[0] == 0, || "flagged a valid label".into());
                    });
                    let what = format!("soft {:?} C {c} B {batch} eps {eps} off {oo}", T::DTYPE);
                    out.push(case("soft", what, launch, b, verdict));
                }
            }
        }
    }
    // An out-of-range label is flagged (once per row it reaches) and nothing is read through it.
    let plan = MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap();
    let spec = TargetSpec::new(4, 0.0).unwrap();
    let mut b = Buffers::default();
    let ob = b.add(bytes(&[T::from_f32(0.0); 8]), false);
    let lb = b.add(bytes(&[1_000_000u32, 1]), false);
    let pb = b.add(emulated::staged_plan(&plan).0, false);
    let fb = b.add(bytes(&[0u32, 0]), true);
    let launch = soft_launch::<T>(&plan, &spec, (lb, ob, 0), 8, (pb, fb));
    let verdict: Verdict = Box::new(move |runs, k| {
        let flags: Vec<u32> = elems(&runs[0].bufs[fb]);
        k.check(flags[0] == 2, || {
            format!("{} rows flagged, 2 reach the bad label", flags[0])
        });
    });
    out.push(case(
        "soft",
        format!("soft {:?} bad label", T::DTYPE),
        launch,
        b,
        verdict,
    ));
}

pub fn cases() -> Vec<Case> {
    let mut rng = Rng::new(42);
    let mut out = Vec::new();
    mix_cases::<f32>(&mut rng, &mut out);
    mix_cases::<u8>(&mut rng, &mut out);
    mix_cases::<f16>(&mut rng, &mut out);
    mix_cases::<bf16>(&mut rng, &mut out);
    soft_cases::<f32>(&mut rng, &mut out);
    soft_cases::<f16>(&mut rng, &mut out);
    soft_cases::<bf16>(&mut rng, &mut out);
    out
}
