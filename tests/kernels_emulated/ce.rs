//! The fused mixup cross-entropy kernels (kernels/mixup_ce.cu: ce_warp, ce_block with and
//! without shared memory, ce_online) with the launches the host makes, against
//! `reference::mixup_ce` (f64): every dtype, forward only and forward + backward (gradient to
//! another buffer at the same or another 16-byte offset, or in place), Mean / Sum / None, host
//! scalar / device scalar / per-sample grad_output, logits views at odd offsets, huge logits,
//! out-of-range labels, every strategy boundary (on H100, A100, L40 and T4 shared memory),
//! masked classes (−inf, the dtype's minimum, NaN, all −inf rows), far maxima (rows at the
//! dtype's minimum), grids smaller than the host's (grid-stride loops), and the same launch in
//! other block and thread orders, bit for bit.
//!
//! The bounds: per row the longest chain of dependent operations in the kernel's sums (a lane's
//! slots, the butterfly, the merge of the warps) times one rounding and one `ex2.approx` (the
//! device's, relative error 2^-22) each; the gradient from the error of `lse`; then the storage
//! rounding.

use mixup_kernels::cuda::kernels::{ce_launch, emulated};
use mixup_kernels::{CeSpec, FloatElement, MixPlan, Reduction, bf16, reference};

use crate::common::TestRng as Rng;
use crate::exchange::{Case, Checks, Run, wide};
use crate::loss::{self, Mode, U, Up};

/// Relative error of one `ex2.approx.ftz.f32` on the device.
const EX2: f64 = 1.0 / (1u64 << 22) as f64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    Normal,
    Huge,
    /// Every logit near one large value (1e6; f16: 3e4): in f32 every class has a share of the
    /// softmax, so an error in the shift that grows with the max shows in every gradient (in
    /// f16 and bf16 most logits round to a few values there, still with shares of p).
    Shifted,
    Masked,
}

/// One row of a masked-class case: label, partner, λ, and the classes whose logits become −inf
/// (kind 0), the dtype's minimum (1), both alternately (2), NaN (3), or the minimum except the
/// first masked class, which gets 0.88 times it (4) or half of it (5).
#[derive(Debug, Clone, Default)]
struct MaskRow {
    label: u32,
    partner: usize,
    lam: f32,
    kind: u8,
    masked: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Gpu {
    name: &'static str,
    optin: u32,
}
/// A device by its name and opt-in shared memory per block (bytes).
const fn gpu(name: &'static str, optin: u32) -> Gpu {
    Gpu { name, optin }
}
const H100: Gpu = gpu("H100", 232448);
const A100: Gpu = gpu("A100", 166912);
const L40: Gpu = gpu("L40", 101376);
const T4: Gpu = gpu("T4", 65536);

#[derive(Debug, Clone)]
struct CeCase {
    c: usize,
    b: usize,
    gpu: Gpu,
    mode: Mode,
    reduction: Reduction,
    up_kind: Up,
    up: f32,
    eps: f64,
    zoff: usize,
    goff: usize,
    /// Elements of padding after each logits row (a pitched tensor; 0: dense).
    pad: usize,
    /// The gradient only: no loss and no per-sample losses asked for.
    grad_only: bool,
    data: Data,
    bad_labels: bool,
    orders: bool,
    /// 0: the host's grid; else fewer blocks (the grid-stride loops).
    force_grid: u32,
    seed: u64,
    rows: Vec<MaskRow>,
}

impl Default for CeCase {
    fn default() -> Self {
        Self {
            c: 1,
            b: 1,
            gpu: H100,
            mode: Mode::Grad,
            reduction: Reduction::Mean,
            up_kind: Up::Host,
            up: 1.0,
            eps: 0.1,
            zoff: 0,
            goff: 0,
            pad: 0,
            grad_only: false,
            data: Data::Normal,
            bad_labels: false,
            orders: false,
            force_grid: 0,
            seed: 1,
            rows: Vec::new(),
        }
    }
}

struct Inputs<T> {
    z: Vec<T>,
    labels: Vec<u32>,
    plan: MixPlan,
    ups: Vec<f32>,
}

fn make_inputs<T: FloatElement + Default>(c: &CeCase) -> Inputs<T> {
    let mut rng = Rng::new(c.seed);
    let (cc, b) = (c.c, c.b);
    let ve = 16 / size_of::<T>();
    let mut z: Vec<T> = (0..cc * b)
        .map(|_| {
            // About 2% of the classes stand out, so a class the kernel skips moves the loss.
            let x = if c.data == Data::Huge {
                if rng.unit() < 0.02 {
                    1e4 - 5.0 * rng.unit() as f32
                } else {
                    2e4 * rng.unit() as f32 - 1e4
                }
            } else if c.data == Data::Shifted {
                let shift = if T::DTYPE == mixup_kernels::ScalarType::F16 {
                    3e4
                } else {
                    1e6
                };
                shift + loss::normal(&mut rng, 1.5)
            } else if rng.unit() < 0.02 {
                6.0 + rng.unit() as f32
            } else {
                loss::normal(&mut rng, 1.5)
            };
            T::from_f32(x)
        })
        .collect();
    if c.data == Data::Masked && cc >= 4 {
        // Half of each row in one run (whole threads of −inf) and 5% elsewhere; class 0 finite.
        for i in 0..b {
            for k in 1..cc {
                if (cc / 4..3 * cc / 4).contains(&k) || rng.unit() < 0.05 {
                    z[i * cc + k] = T::from_f32(f32::NEG_INFINITY);
                }
            }
        }
    }
    let mut labels: Vec<u32> = (0..b).map(|_| rng.below(cc) as u32).collect();
    // Labels at the edges of a row and of its 16-byte slots.
    let edges = [0, cc - 1, (cc - 1).min(ve - 1), (cc - 1).min(ve), cc / 2];
    for i in (0..b).step_by(3) {
        labels[i] = edges[(i / 3) % 5] as u32;
    }
    let mut partner = loss::shuffled(b, &mut rng);
    loss::special_labels(&mut labels, &partner, cc, c.bad_labels);
    let mut lam: Vec<f32> = (0..b)
        .map(|i| match i {
            0 => 1.0,
            1 => 0.5,
            _ => rng.unit() as f32,
        })
        .collect();
    if !c.rows.is_empty() {
        let lo = loss::dtype_min::<T>().to_f32();
        for (i, mr) in c.rows.iter().enumerate() {
            labels[i] = mr.label;
            partner[i] = mr.partner;
            lam[i] = mr.lam;
            for (j, &k) in mr.masked.iter().enumerate() {
                let kind = match mr.kind {
                    2 => (j % 2) as u8,
                    4 | 5 if j == 0 => mr.kind,
                    4 | 5 => 1,
                    kind => kind,
                };
                z[i * cc + k] = match kind {
                    0 => T::from_f32(f32::NEG_INFINITY),
                    1 => loss::dtype_min::<T>(),
                    3 => T::from_f32(f32::NAN),
                    4 => T::from_f32(0.88 * lo),
                    _ => T::from_f32(0.5 * lo),
                };
            }
        }
    }
    let ups = loss::upstream_values(c.up_kind, c.up, b, &mut rng);
    Inputs {
        z,
        labels,
        plan: MixPlan::from_parts(&partner, &lam).unwrap(),
        ups,
    }
}

fn push_case<T: FloatElement + Default + Send + Sync + 'static>(c: CeCase, out: &mut Vec<Case>) {
    let inp = make_inputs::<T>(&c);
    let spec = CeSpec::new(c.c, c.eps, c.reduction).unwrap();
    let call = loss::call_for!(c, inp, (None, None), c.gpu.optin);
    let n = inp.z.len();
    let mut launch = emulated::mixup_ce(
        &inp.plan,
        &spec,
        T::DTYPE,
        n,
        &call.ce,
        call.up,
        call.ld,
        &call.dev,
    )
    .unwrap()
    .expect("a launch");
    // The host's choice as `ce_launch` reports it: the same launch.
    let sz = size_of::<T>();
    let (tuning, sms) = crate::exchange::tuning();
    let fwd = c.mode == Mode::Fwd;
    let (kernel, group, smem_slots, cfg) =
        ce_launch(c.c as u64, sz, (c.gpu.optin, sms), fwd, c.b as u64, &tuning);
    assert!(
        launch.entry.starts_with(kernel)
            && (cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes)
                == (
                    launch.config.grid_dim,
                    launch.config.block_dim,
                    launch.config.shared_mem_bytes
                ),
        "{c:?}"
    );
    if c.force_grid != 0 {
        launch.config.grid_dim.0 = c.force_grid;
    }
    let what = format!(
        "ce {:?} C {} B {} {} {}{}{}{} [{} G {group} S {smem_slots} grid {} block {} smem {}]",
        T::DTYPE,
        c.c,
        c.b,
        c.gpu.name,
        loss::describe_common!(c),
        match c.data {
            Data::Normal => "",
            Data::Huge => " huge",
            Data::Shifted => " shifted",
            Data::Masked => " masked",
        },
        if c.rows.is_empty() {
            ""
        } else {
            " masked-rows"
        },
        if c.bad_labels { " bad-labels" } else { "" },
        launch.entry,
        launch.config.grid_dim.0,
        launch.config.block_dim.0,
        launch.config.shared_mem_bytes,
    );
    let lanes = if kernel == "ce_warp" {
        group
    } else {
        launch.config.block_dim.0
    } as u64;
    let threads = launch.config.block_dim.0 as u64;
    let slots = call.slots;
    out.push(Case {
        group: "ce",
        what,
        launch,
        orders: loss::orders(c.seed, c.orders),
        bufs: call.bufs.0,
        verdict: Box::new(move |runs, k| {
            judge::<T>(runs, k, &c, &inp, &spec, (slots, lanes, threads))
        }),
    });
}

fn judge<T: FloatElement + Default>(
    runs: &[Run],
    k: &mut Checks,
    c: &CeCase,
    inp: &Inputs<T>,
    spec: &CeSpec,
    (slots, lanes, threads): (loss::Slots, u64, u64),
) {
    let o = loss::read::<T>(&runs[0], &slots);
    let (cc, b) = (c.c, c.b);
    let (rnd_rel, rnd_abs) = loss::rnd::<T>();
    let n_ops = loss::sum_chain::<T>(cc, lanes, 1.0, 4.0);
    let eps_s = n_ops * (EX2 + 2.0 * U);
    // The reference over rows whose labels are in range (a bad label stands in as 0: those
    // rows are not compared).
    let fixed = loss::in_range(&inp.labels, cc);
    let up = (c.up_kind, c.up, &inp.ups[..]);
    let r = reference::mixup_ce(&inp.plan, spec, &inp.z, &fixed, loss::grad_output(up)).unwrap();
    let t = reference::soft_targets(&inp.plan, spec.targets(), &fixed).unwrap();
    let (mut ref_sum, mut ref_tol) = (0.0, 0.0);
    let mut rows = loss::Failures::new(3);
    let (defined, bad_rows) = loss::defined_rows(&inp.plan, &inp.labels, cc);
    for (i, s, a, bb) in defined {
        let zr = wide(&inp.z[i * cc..(i + 1) * cc]);
        let has_nan = zr.iter().any(|v| v.is_nan());
        let mut m = zr
            .iter()
            .fold(f64::NEG_INFINITY, |m, &z| if z > m { z } else { m });
        // A max of magnitude 64 (CE_FAR) or more: the kernel forms the loss relative to it
        // ("Far maxima"), and so do the bounds. Its exp2 arguments are relative to the max in
        // every row ("The shift"), so no bound grows with the max itself.
        let base = if m.abs() >= 64.0 && m.is_finite() {
            m
        } else {
            0.0
        };
        m -= base;
        let (mut zlive, mut sabs, mut sum, mut sz) = (0f64, 0.0, 0.0, 0.0);
        for &z in &zr {
            let z = z - base;
            sum += (z - m).exp();
            sz += z;
            if z.is_finite() {
                if z >= m - 200.0 {
                    zlive = zlive.max(z.abs());
                }
                sabs += z.abs();
            }
        }
        let lse = m + sum.ln();
        let (eps, lam) = (f64::from(c.eps as f32), f64::from(s.lam));
        let off = eps / cc as f64;
        let (wa, wb) = ((1.0 - eps) * lam, (1.0 - eps) * (1.0 - lam));
        let (za, zb) = (zr[a as usize] - base, zr[bb as usize] - base);
        let nz = |w: f64, z: f64| if w != 0.0 { w * z } else { 0.0 };
        let tz = nz(wa, za) + nz(wb, zb) + nz(off, sz);
        let wz = nz(wa, za.abs()) + nz(wb, zb.abs()) + off * sabs;
        let tol_lse = eps_s + 4.0 * U * (lse.abs() + zlive + (cc as f64).log2() + 1.0);
        let tol =
            tol_lse + 4.0 * U * wz + off * n_ops * U * sabs + 2.0 * U * (lse.abs() + tz.abs());
        let want = r.losses[i];
        ref_sum += want;
        if want.is_finite() {
            ref_tol += tol;
        }
        // A gradient-only call writes no loss (checked below): the loss checks pass as is.
        let got = if c.grad_only {
            want
        } else {
            f64::from(o.losses[i])
        };
        if want.is_nan() {
            // No finite maximum, or a NaN logit: NaN (any non-finite value without a NaN).
            let ok = if has_nan {
                got.is_nan()
            } else {
                !got.is_finite()
            };
            rows.check(k, ok, || format!("loss of row {i} is {got}, expected NaN"));
            if has_nan && c.mode != Mode::Fwd {
                // A NaN logit makes the whole row's softmax NaN, as in the reference.
                let g = &o.grad[i * cc..(i + 1) * cc];
                let finite = g.iter().position(|v| !v.to_f32().is_nan());
                rows.check(k, finite.is_none(), || {
                    format!("grad[{i}, {finite:?}] of a row with a NaN logit is not NaN")
                });
            }
            continue;
        } else if want.is_infinite() {
            rows.check(k, got == want, || {
                format!("loss of row {i} is {got}, expected {want}")
            });
        } else {
            rows.check(k, loss::within(got, want, tol), || {
                format!("loss of row {i} is {got}, expected {want} (tol {tol:.3e})")
            });
        }
        if c.mode == Mode::Fwd {
            continue;
        }
        let scale = loss::scale(up, i, c.reduction, b as f64);
        let mut grads = loss::Failures::new(2);
        for (kk, &z0) in zr.iter().enumerate() {
            let z = z0 - base;
            let tk = t[i * cc + kk];
            let d = z - lse;
            let p = d.exp();
            let got_g = f64::from(o.grad[i * cc + kk].to_f32());
            if p == 0.0 && tk == 0.0 {
                // A masked class with no weight: exactly 0.
                grads.check(k, got_g == 0.0, || {
                    format!("grad[{i}, {kk}] is {got_g}, expected exactly 0")
                });
                continue;
            }
            let gx = r.grad[i * cc + kk];
            let darg = tol_lse + 2.0 * U * (z.abs() + lse.abs()) + U * d.abs();
            let tiny = 2f64.powi(-126);
            // exp(−inf) is 0 on both sides; ex2.approx.ftz flushes results below 2^-126.
            let dp = if z.is_infinite() {
                0.0
            } else if p == 0.0 {
                tiny
            } else {
                p * (darg.exp_m1() + EX2) + tiny
            };
            let d32 = scale.abs() * (dp + 3.0 * U * tk) + 4.0 * U * gx.abs();
            let gtol = d32 + rnd_rel * (gx.abs() + d32) + rnd_abs;
            grads.check(k, loss::within(got_g, gx, gtol), || format!("grad[{i}, {kk}] is {got_g}, expected {gx} (tol {gtol:.3e}, z {z}, a {a} b {bb})"));
        }
        k.check(grads.none(), || format!("gradient of row {i}"));
    }
    k.check(rows.none(), || "per-sample losses".into());
    let reference = (bad_rows == 0).then_some((ref_sum, ref_tol));
    if c.grad_only {
        loss::check_grad_only(k, &o);
    } else {
        loss::check_totals(
            k,
            &o,
            (bad_rows, threads),
            (c.reduction, b as f64),
            reference,
        );
    }
    loss::check_untouched(k, &o, &inp.z, &slots);
    if bad_rows > 0 && c.mode != Mode::Fwd {
        // Rows with a bad label have no defined target, but their gradient is still written.
        let finite = o.grad.iter().all(|g| g.to_f32().is_finite());
        k.check(finite, || {
            "gradient of rows with a bad label not finite".into()
        });
    }
    if c.orders {
        loss::check_orders::<T>(k, runs, &slots, true);
    }
}

fn cases_for<T: FloatElement + Default + Send + Sync + 'static>(
    others: &[Gpu],
    out: &mut Vec<Case>,
) {
    let ve = 16 / size_of::<T>();
    // The largest C whose rows hold `slots` full slots at most (C / VE == slots).
    let last_c = |slots: usize| (slots + 1) * ve - 1;
    let mut cs = vec![1, 2, 3, 31, 32, 33, 1000, 2049];
    // Strategy boundaries (src/cuda/mixup_ce.rs): ce_warp lanes per row double after 4, 8, 16,
    // 32, 64 slots; ce_warp -> ce_block (ce_online forward only) after 128; 64 -> 96 threads
    // after 256; registers -> shared memory after 4096; one more shared slot after 5120; shared
    // memory -> ce_online after 4096 + 1024 S slots (S = 14 on H100).
    for s in [4, 8, 16, 32, 64, 128, 256, 4096, 5120, 18432] {
        for d in [-1i64, 0, 1] {
            cs.push((last_c(s) as i64 + d) as usize);
        }
    }
    cs.sort_unstable();
    cs.dedup();
    let odd = loss::odd::<T>(); // a logits view off its 16-byte boundary
    let mut next = loss::seeds::<T>(1000);
    // Each case with the next seed.
    let mut add = |mut case: CeCase| {
        case.seed = next();
        push_case::<T>(case, out)
    };
    for &c in &cs {
        let (small, medium) = (c <= 2100, c <= 40000);
        let base = CeCase {
            c,
            ..CeCase::default()
        };
        // Mean, gradient to another buffer, every order.
        add(CeCase {
            b: if small { 5 } else { 2 },
            orders: true,
            ..base.clone()
        });
        // The gradient only (an autograd backward pass): no loss, no per-sample losses written.
        add(CeCase {
            b: if small { 5 } else { 2 },
            grad_only: true,
            mode: if c % 2 == 0 {
                Mode::Grad
            } else {
                Mode::InPlace
            },
            reduction: if c % 3 == 0 {
                Reduction::None
            } else {
                Reduction::Mean
            },
            up_kind: if c % 3 == 0 {
                Up::PerSample
            } else {
                Up::Device
            },
            ..base.clone()
        });
        // Pitched logits (burn's CUDA tensors: rows padded, read in place; the gradient dense):
        // rows on the 16-byte grid as cubecl pads them, and rows 3 elements apart from it.
        add(CeCase {
            b: if small { 5 } else { 2 },
            pad: ve - c % ve + ve,
            orders: small,
            ..base.clone()
        });
        add(CeCase {
            b: if small { 5 } else { 2 },
            pad: 3,
            mode: if c % 2 == 0 {
                Mode::Fwd
            } else {
                Mode::GradShifted
            },
            reduction: Reduction::None,
            up_kind: if c % 2 == 0 { Up::Host } else { Up::PerSample },
            ..base.clone()
        });
        // One row, Sum, in place, device grad_output, view at offset 1, no smoothing.
        add(CeCase {
            mode: Mode::InPlace,
            reduction: Reduction::Sum,
            up_kind: Up::Device,
            up: 0.75,
            eps: 0.0,
            zoff: 1,
            ..base.clone()
        });
        // Forward only, None.
        add(CeCase {
            b: if small { 5 } else { 2 },
            mode: Mode::Fwd,
            reduction: Reduction::None,
            zoff: odd,
            orders: !medium,
            ..base.clone()
        });
        if !medium {
            continue;
        }
        // None with a per-sample grad_output, gradient at another 16-byte offset than the logits.
        add(CeCase {
            b: if small { 3 } else { 2 },
            mode: Mode::GradShifted,
            reduction: Reduction::None,
            up_kind: Up::PerSample,
            zoff: odd,
            ..base.clone()
        });
        // Huge logits.
        add(CeCase {
            b: 2,
            data: Data::Huge,
            up: -2.5,
            reduction: Reduction::Sum,
            ..base.clone()
        });
        // Logits near 1e6, forward + backward (the gradient's shift) and forward only.
        add(CeCase {
            b: 2,
            data: Data::Shifted,
            ..base.clone()
        });
        add(CeCase {
            b: 2,
            data: Data::Shifted,
            mode: Mode::Fwd,
            ..base.clone()
        });
        // Masked (−inf) logits.
        add(CeCase {
            b: 3,
            data: Data::Masked,
            ..base.clone()
        });
        // Out-of-range labels, forward + backward and forward only.
        for mode in [Mode::Grad, Mode::Fwd] {
            add(CeCase {
                b: 5,
                mode,
                bad_labels: true,
                ..base.clone()
            });
        }
        if !small {
            continue;
        }
        // A large batch, in place, every order.
        add(CeCase {
            b: 64,
            mode: Mode::InPlace,
            orders: c == 1000 || c == 2049,
            ..base.clone()
        });
        // Fewer blocks than the host launches: the grid-stride loops of every kernel (and the
        // alternating reduction buffers of ce_block / ce_online), reached for B >= 2^31.
        add(CeCase {
            b: 9,
            force_grid: 2,
            orders: true,
            ..base.clone()
        });
        // The same for ce_warp (8 rows per block at 32 lanes a row), with a device grad_output.
        add(CeCase {
            b: 64,
            up_kind: Up::Device,
            up: 3.0,
            force_grid: 3,
            ..base.clone()
        });
        // More rows than the last block has threads: each thread of ce_finish sums several.
        if c <= 600 {
            add(CeCase {
                b: if c <= 40 { 600 } else { 300 },
                mode: if c % 2 == 1 { Mode::Fwd } else { Mode::InPlace },
                reduction: [Reduction::Mean, Reduction::Sum, Reduction::None][c % 3],
                ..base.clone()
            });
        }
    }
    // Other devices: the shared-memory limit moves the ce_block -> ce_online boundary
    // (S <= 9 on A100, 6 on L40, 3 on T4).
    for &gpu in others {
        let s_max = (gpu.optin as usize - 2048) / (1024 * 16);
        for dc in [0, 1] {
            add(CeCase {
                c: last_c(4096 + 1024 * s_max) + dc,
                gpu,
                b: 2,
                mode: if dc == 1 { Mode::InPlace } else { Mode::Grad },
                zoff: dc,
                ..CeCase::default()
            });
        }
    }
    // Large rows: 100 000 classes, forward only, in place, the gradient at another offset.
    for mode in [Mode::Grad, Mode::Fwd, Mode::InPlace, Mode::GradShifted] {
        let zoff = usize::from(matches!(mode, Mode::InPlace | Mode::GradShifted));
        add(CeCase {
            c: 100000,
            b: 2,
            mode,
            zoff,
            ..CeCase::default()
        });
    }
}

/// B rows of C classes with masked classes (REFERENCE.md, "Masked classes"). Rows pair up with
/// their neighbours (2q <-> 2q+1); row i takes pattern i % 7, λ from {1, 0.5, 0, 0.3}:
///   0 one class masked, at every position of the first two 16-byte slots, both ends and the
///     middle, in turn;  1 two: both ends, or a pair;  2 most: all but about C/8 and the label;
///   3 all but the label;  4 all but another class (the label is masked);  5 the partner's
///   label;  6 every third class except the label, −inf and the minimum alternately.
fn mask_rows(c: usize, ve: usize, b: usize, seed: u64) -> Vec<MaskRow> {
    let mut rng = Rng::new(seed);
    let mut rows: Vec<MaskRow> = (0..b)
        .map(|i| MaskRow {
            label: rng.below(c) as u32,
            partner: if (i ^ 1) < b { i ^ 1 } else { i },
            lam: [1.0, 0.5, 0.0, 0.3][(i + i / 7) % 4],
            kind: ((i + i / 7) / 4 % 2) as u8,
            masked: Vec::new(),
        })
        .collect();
    let mut positions: Vec<usize> = (0..c.min(2 * ve + 1)).collect();
    for k in [c.wrapping_sub(1), c.wrapping_sub(2), c / 2] {
        if k < c {
            positions.push(k);
        }
    }
    for i in 0..b {
        let (a, bl) = (rows[i].label as usize, rows[rows[i].partner].label as usize);
        let turn = i / 7;
        let pos = positions[turn % positions.len()];
        let mut m = vec![false; c];
        match i % 7 {
            0 => m[pos] = true,
            1 => {
                if turn % 2 == 0 {
                    m[0] = true;
                    m[c - 1] = true;
                } else {
                    m[pos] = true;
                    m[(pos + 1) % c] = true;
                }
            }
            2 => m.iter_mut().for_each(|v| *v = rng.below(8) != 0),
            3 | 4 => m.fill(true),
            5 => m[if bl == a { pos } else { bl }] = true,
            _ => {
                for k in (0..c).step_by(3) {
                    m[k] = true;
                }
                rows[i].kind = 2;
            }
        }
        if i % 7 == 4 && c > 1 {
            m[(a + 1 + rng.below(c - 1)) % c] = false; // the one class left; a stays masked
        } else {
            m[a] = false;
        }
        rows[i].masked = (0..c).filter(|&k| m[k]).collect();
    }
    rows
}

/// Masked classes over the widths trainers use, for each strategy the host picks, with and
/// without smoothing; then rows with a NaN logit and an all −inf row.
fn masked_cases<T: FloatElement + Default + Send + Sync + 'static>(out: &mut Vec<Case>) {
    let ve = 16 / size_of::<T>();
    let mut seed = 5000 * size_of::<T>() as u64;
    let odd = loss::odd::<T>();
    for c in [1usize, 15, 16, 17, 31, 1000, 32771, 100000] {
        let big = c > 1000;
        let b = if c <= 31 {
            42
        } else if c == 1000 {
            14
        } else {
            7
        };
        for eps in [0.0f64, 0.1] {
            for mode in [Mode::Grad, Mode::Fwd] {
                if c == 100000 && mode == Mode::Fwd && eps == 0.0 {
                    continue; // time: one forward row set
                }
                seed += 1;
                let b = if c == 100000 { 4 } else { b };
                push_case::<T>(
                    CeCase {
                        c,
                        b,
                        mode,
                        eps,
                        reduction: sum_or_mean(eps),
                        zoff: if (eps == 0.0) == (mode == Mode::Grad) {
                            0
                        } else {
                            odd
                        },
                        seed,
                        rows: mask_rows(c, ve, b, seed),
                        ..CeCase::default()
                    },
                    out,
                );
            }
            if big {
                // The gradient through ce_online: a T4's shared memory holds too few slots.
                seed += 1;
                let b = if c == 100000 { 2 } else { 4 };
                push_case::<T>(
                    CeCase {
                        c,
                        b,
                        gpu: T4,
                        mode: Mode::InPlace,
                        eps,
                        seed,
                        rows: mask_rows(c, ve, b, seed + if eps == 0.0 { 2 } else { 0 }),
                        ..CeCase::default()
                    },
                    out,
                );
            }
        }
    }
    // NaN logits give NaN; a row of −inf only gives a non-finite loss (PyTorch: NaN).
    for c in [17usize, 1000] {
        seed += 1;
        let mut rows = mask_rows(c, ve, 4, seed);
        rows[0].kind = 3;
        rows[0].masked = vec![c / 3];
        rows[1].kind = 3;
        rows[1].masked = vec![rows[1].label as usize];
        rows[2].kind = 0;
        rows[2].masked = (0..c).collect();
        push_case::<T>(
            CeCase {
                c,
                b: 4,
                eps: 0.0,
                seed,
                rows,
                ..CeCase::default()
            },
            out,
        );
    }
    // Half of every row at the dtype's minimum (not the row's or its partner's label) under
    // smoothing: each row's loss is about (ε/2)·|min|, 64 of them add up past f32's range, their
    // mean does not. Mean must be finite (the kernel reduces in f64, as the CPU path does), Sum
    // +inf.
    for reduction in [Reduction::Mean, Reduction::Sum] {
        seed += 1;
        let (c, b) = (1000usize, 64usize);
        let mut rows = mask_rows(c, ve, b, seed);
        for i in 0..b {
            let keep = [rows[i].label as usize, rows[rows[i].partner].label as usize];
            rows[i].kind = 1;
            rows[i].masked = (i % 2..c)
                .step_by(2)
                .filter(|k| !keep.contains(k))
                .collect();
        }
        push_case::<T>(
            CeCase {
                c,
                b,
                eps: 0.1,
                reduction,
                seed,
                rows,
                ..CeCase::default()
            },
            out,
        );
    }
}

/// Rows whose every logit is at (or near) the dtype's minimum: in f32 and bf16 the max is below
/// −2^24 and the kernel shifts in natural units ("Far maxima"); every strategy, every dtype,
/// with and without smoothing. Row pattern: all at the minimum; one class at 0.88 × min; one
/// at min / 2; all at the minimum; −inf and the minimum alternately; all but the label.
fn far_max_cases<T: FloatElement + Default + Send + Sync + 'static>(out: &mut Vec<Case>) {
    let mut seed = 9000 * size_of::<T>() as u64;
    let odd = loss::odd::<T>();
    for c in [1usize, 15, 17, 1000, 2049, 32771, 100000] {
        let big = c > 2049;
        for eps in [0.0f64, 0.1] {
            for mode in [Mode::Grad, Mode::Fwd, Mode::InPlace] {
                seed += 1;
                let b = if big { 3 } else { 12 };
                let mut rng = Rng::new(seed);
                let rows = (0..b)
                    .map(|i| {
                        let label = rng.below(c) as u32;
                        let pattern = (i + c + usize::from(eps != 0.0)) % 6;
                        let first = rng.below(c); // the class of kinds 4 and 5
                        let mut masked = vec![first];
                        masked.extend(
                            (0..c)
                                .filter(|&k| k != first && !(pattern == 5 && k == label as usize)),
                        );
                        if pattern == 5 && first == label as usize {
                            masked.remove(0);
                        }
                        MaskRow {
                            label,
                            partner: if (i ^ 1) < b { i ^ 1 } else { i },
                            lam: [1.0, 0.5, 0.3, 0.0][(i / 2 + c) % 4],
                            kind: [1, 4, 5, 1, 2, 1][pattern],
                            masked,
                        }
                    })
                    .collect();
                push_case::<T>(
                    CeCase {
                        c,
                        b,
                        mode,
                        eps,
                        // T4: the gradient through ce_online.
                        gpu: if big && mode == Mode::InPlace {
                            T4
                        } else {
                            H100
                        },
                        reduction: sum_or_mean(eps),
                        zoff: if mode == Mode::Fwd { odd } else { 0 },
                        seed,
                        rows,
                        ..CeCase::default()
                    },
                    out,
                );
            }
        }
    }
}

/// Sum without smoothing, Mean with it: both reductions through the masked and far-max cases.
fn sum_or_mean(eps: f64) -> Reduction {
    if eps == 0.0 {
        Reduction::Sum
    } else {
        Reduction::Mean
    }
}

/// ce_online (C = 100 000 on an H100: beyond the block kernel's rows) with logits near 1e6
/// (`Data::Shifted`) and smoothing: the far-max loss sums Σ(z − m) during the gradient's read
/// of the row (to another buffer, in place) or in a read of its own (forward only), over
/// spread values. Row 1's first slot (the first that thread 0 folds in) is all NaN: the loss
/// and gradient of that row must be NaN, as in the reference (the merge of an all-NaN slot into
/// an empty partial dropped its NaN sum until 2026-12-02).
fn online_cases<T: FloatElement + Default + Send + Sync + 'static>(out: &mut Vec<Case>) {
    let ve = 16 / size_of::<T>();
    let runs = [
        (Mode::Grad, 0.1),
        (Mode::InPlace, 0.1),
        (Mode::Fwd, 0.1),
        // Without smoothing no Σz or Σ(z − m) carries the NaN: only the sum s can.
        (Mode::Fwd, 0.0),
    ];
    for (k, (mode, eps)) in runs.into_iter().enumerate() {
        let nan_row = MaskRow {
            label: 10,
            partner: 0,
            lam: 0.7,
            kind: 3,
            masked: (0..ve).collect(),
        };
        let plain = MaskRow {
            label: 99_999,
            partner: 1,
            lam: 0.4,
            kind: 0,
            masked: Vec::new(),
        };
        push_case::<T>(
            CeCase {
                c: 100_000,
                b: 2,
                mode,
                eps,
                reduction: sum_or_mean(eps),
                data: Data::Shifted,
                seed: 9500 + 10 * size_of::<T>() as u64 + k as u64,
                rows: vec![plain, nan_row],
                ..CeCase::default()
            },
            out,
        );
    }
}

pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    loss::for_float_types!(online_cases(&mut out));
    loss::for_float_types!(far_max_cases(&mut out));
    loss::for_float_types!(masked_cases(&mut out));
    let others = [A100, L40, T4];
    loss::for_float_types!(cases_for(&others, &mut out));
    // The largest row the issue names: 256 000 bf16 classes, ce_online.
    push_case::<bf16>(
        CeCase {
            c: 256000,
            b: 1,
            seed: 77,
            ..CeCase::default()
        },
        &mut out,
    );
    // Every kernel and dtype, and both ce_block paths, ran.
    let mut seen: Vec<(&str, bool)> = out
        .iter()
        .map(|c| (c.launch.entry, c.launch.config.shared_mem_bytes > 0))
        .collect();
    seen.sort_unstable();
    seen.dedup();
    for dt in ["f32", "f16", "bf16"] {
        for (k, smem) in [
            ("ce_warp", false),
            ("ce_block", false),
            ("ce_block", true),
            ("ce_online", false),
        ] {
            let e = format!("{k}_{dt}");
            assert!(
                seen.contains(&(e.as_str(), smem)),
                "no case launches {e} (shared memory: {smem})"
            );
        }
    }
    out
}
