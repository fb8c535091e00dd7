//! The tuning sweep (`bench-gpu --sweep [family ...]`, docs/gpu.md): per kernel family, a small
//! grid of [`KernelTuning`] points, each timed on one or more representative shapes against the
//! device copy of the same bytes in the same run; every point is printed, the fastest marked
//! `best`. Each point is a fresh mixer on the same stream (its kernels compiled once, into a
//! per-run cache folder); its output is first compared with the default tuning's (mix, soft
//! targets and mix_normalize bit for bit, the losses within their f32 reduction order), and
//! a point that disagrees is an error row (exit code 1), never a candidate.
//!
//! Families: `mix`, `soft`, `ce`, `bce`, `mix_normalize` (the filter matches exactly; none: all).
//! Estimated time on an H200 with `--quick`: 30–45 s, mostly NVRTC (33 points, about 50
//! kernels) and the host's random inputs (docs/gpu.md).

use super::*;
use mixup_kernels::cuda::KernelTuning;

/// One point of a family's grid: its name and tuning.
type Point = (&'static str, KernelTuning);

/// The grid of `family` (the first point is the default).
fn points(family: &str) -> Vec<Point> {
    let d = KernelTuning::default();
    let mut p: Vec<Point> = vec![("default", d)];
    match family {
        "mix" => p.extend([
            (
                "threads 128",
                KernelTuning {
                    mix_threads: 128,
                    ..d
                },
            ),
            (
                "threads 512",
                KernelTuning {
                    mix_threads: 512,
                    ..d
                },
            ),
            ("unroll 2", KernelTuning { mix_unroll: 2, ..d }),
            ("unroll 8", KernelTuning { mix_unroll: 8, ..d }),
            (
                "box hoist",
                KernelTuning {
                    mix_box_hoist: true,
                    ..d
                },
            ),
            (
                "grid 4xSM",
                KernelTuning {
                    grid_sm_multiple: 4,
                    ..d
                },
            ),
            (
                "grid 16xSM",
                KernelTuning {
                    grid_sm_multiple: 16,
                    ..d
                },
            ),
        ]),
        "soft" => p.extend([
            (
                "threads 128",
                KernelTuning {
                    soft_threads: 128,
                    ..d
                },
            ),
            (
                "threads 512, unroll 2",
                KernelTuning {
                    soft_threads: 512,
                    soft_unroll: 2,
                    ..d
                },
            ),
            (
                "unroll 1",
                KernelTuning {
                    soft_unroll: 1,
                    ..d
                },
            ),
            (
                "grid 4xSM",
                KernelTuning {
                    grid_sm_multiple: 4,
                    ..d
                },
            ),
        ]),
        "ce" => p.extend([
            (
                "warp block 128",
                KernelTuning {
                    ce_warp_threads: 128,
                    ..d
                },
            ),
            (
                "slots 2, warp ≤ 1 KB",
                KernelTuning {
                    ce_slots: 2,
                    ce_warp_max_row_bytes: 1024,
                    ..d
                },
            ),
            ("slots 8", KernelTuning { ce_slots: 8, ..d }),
            (
                "block ≤ 512",
                KernelTuning {
                    ce_block_max_threads: 512,
                    ..d
                },
            ),
            (
                "online unroll 8",
                KernelTuning {
                    ce_online_unroll: 8,
                    ..d
                },
            ),
            (
                "block ≤ 64 KB rows",
                KernelTuning {
                    ce_block_max_row_bytes: 64 * 1024,
                    ..d
                },
            ),
            (
                "grid 2xSM",
                KernelTuning {
                    grid_sm_multiple: 2,
                    ..d
                },
            ),
        ]),
        "bce" => p.extend([
            ("slots 2", KernelTuning { bce_slots: 2, ..d }),
            ("slots 8", KernelTuning { bce_slots: 8, ..d }),
            (
                "warp block 128",
                KernelTuning {
                    bce_warp_threads: 128,
                    ..d
                },
            ),
            (
                "block ≤ 512",
                KernelTuning {
                    bce_block_max_threads: 512,
                    ..d
                },
            ),
            (
                "grid 4xSM",
                KernelTuning {
                    grid_sm_multiple: 4,
                    ..d
                },
            ),
        ]),
        "mix_normalize" => p.extend([
            (
                "threads 128",
                KernelTuning {
                    mn_threads: 128,
                    ..d
                },
            ),
            (
                "threads 512",
                KernelTuning {
                    mn_threads: 512,
                    ..d
                },
            ),
            ("tile 2048", KernelTuning { mn_tile: 2048, ..d }),
            ("tile 6144", KernelTuning { mn_tile: 6144, ..d }),
            (
                "grid 4xSM",
                KernelTuning {
                    grid_sm_multiple: 4,
                    ..d
                },
            ),
        ]),
        _ => {}
    }
    p
}

/// Every family, in the order the sweep runs them.
pub(crate) const FAMILIES: [&str; 5] = ["mix", "soft", "ce", "bce", "mix_normalize"];

/// A mixer on the bench's stream with `tuning`, caching compiled kernels in `cache`.
fn mixer_for(b: &Bench, tuning: KernelTuning, cache: &std::path::Path) -> Res<CudaMixer> {
    Ok(
        CudaMixer::from_stream(b.stream.clone())?.with_options(CudaMixerOptions {
            cache_dir: Some(cache.to_path_buf()),
            tuning,
            ..Default::default()
        })?,
    )
}

/// What one shape of a family does under a mixer: run the op once (for the output check),
/// read its output back as f64, and time it.
trait Op {
    fn run(&mut self, m: &CudaMixer, i: usize) -> Res<()>;
    fn output(&mut self, b: &Bench) -> Res<Vec<f64>>;
}

/// Elements back as f64 (exact for every dtype).
fn wide<T: Element + DeviceRepr>(b: &Bench, s: &CudaSlice<T>) -> Res<Vec<f64>> {
    Ok(b.stream
        .clone_dtoh(s)?
        .iter()
        .map(|x| f64::from(x.to_f32()))
        .collect())
}

struct MixOp<T: DeviceRepr> {
    plan: DevicePlan,
    layout: SampleShape,
    x: CudaSlice<T>,
    out: CudaSlice<T>,
}

impl<T: Element + DeviceRepr> Op for MixOp<T> {
    fn run(&mut self, m: &CudaMixer, _: usize) -> Res<()> {
        // In place on the output (an involution): the same bytes as a copy. The check copies
        // x in first, so each checked call starts from the same input.
        Ok(m.mix_in_place(&self.plan, &self.layout, &mut self.out.as_view_mut())?)
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<f64>> {
        wide(b, &self.out)
    }
}

impl<T: Element + DeviceRepr> MixOp<T> {
    fn reset(&mut self, b: &Bench) -> Res<()> {
        b.stream.memcpy_dtod(&self.x, &mut self.out)?;
        Ok(())
    }
}

struct SoftOp<T: DeviceRepr> {
    plan: DevicePlan,
    spec: TargetSpec,
    labels: CudaSlice<u32>,
    outs: Vec<CudaSlice<T>>,
}

impl<T: DeviceFloat> Op for SoftOp<T> {
    fn run(&mut self, m: &CudaMixer, i: usize) -> Res<()> {
        let n = self.outs.len();
        let out = &mut self.outs[i % n];
        Ok(m.soft_targets(
            &self.plan,
            &self.spec,
            &self.labels.as_view(),
            &mut out.as_view_mut(),
        )?)
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<f64>> {
        wide(b, &self.outs[0])
    }
}

/// A fused loss at one shape: the gradient and the loss are its output.
struct LossOp<'s, T: DeviceRepr, S: FusedLoss> {
    lb: LossBench<T>,
    spec: &'s S,
}

impl<T: DeviceFloat, S: FusedLoss> Op for LossOp<'_, T, S> {
    fn run(&mut self, m: &CudaMixer, i: usize) -> Res<()> {
        self.spec.call(m, self.lb.args(i, true))
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<f64>> {
        let mut v = wide(b, &self.lb.grad)?;
        v.extend(
            b.stream
                .clone_dtoh(&self.lb.loss)?
                .iter()
                .map(|&l| f64::from(l)),
        );
        Ok(v)
    }
}

struct NormOp<O: DeviceRepr> {
    plan: DevicePlan,
    shape: SampleShape,
    norm: DeviceNormalize,
    xs: Vec<CudaSlice<u8>>,
    out: CudaSlice<O>,
}

impl<O: DeviceFloat> Op for NormOp<O> {
    fn run(&mut self, m: &CudaMixer, i: usize) -> Res<()> {
        let x = &self.xs[i % self.xs.len()];
        let nchw = MemoryFormat::ChannelsFirst;
        let out = &mut self.out.as_view_mut();
        Ok(m.mix_normalize(&self.plan, &self.shape, &self.norm, &x.as_view(), nchw, out)?)
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<f64>> {
        wide(b, &self.out)
    }
}

/// How a point's output may differ from the default tuning's: not at all, or (losses: the
/// lanes and blocks sum in another order) within `rel` of each value plus `abs`.
#[derive(Clone, Copy)]
enum Agree {
    Bits,
    Within { rel: f64, abs: f64 },
}

/// One shape of a family: every point's timing (or why it failed), then the copy, printed
/// with the fastest point marked.
#[allow(clippy::too_many_arguments)]
fn sweep_shape(
    b: &Bench,
    family: &str,
    (dtype, shape, floor): (&str, &str, usize),
    copy: Timing,
    mixers: &[(&'static str, Res<CudaMixer>)],
    op: &mut dyn Op,
    reset: &mut dyn FnMut(&Bench) -> Res<()>,
    agree: Agree,
    errors: &mut usize,
) {
    let mut want: Option<Vec<f64>> = None;
    let mut rows: Vec<(String, Res<Timing>)> = Vec::new();
    for (name, m) in mixers {
        let r = (|| -> Res<Timing> {
            let m = m.as_ref().map_err(|e| e.to_string())?;
            reset(b)?;
            op.run(m, 0)?;
            let got = op.output(b)?;
            match &want {
                None => want = Some(got),
                Some(w) => {
                    let bad = w.iter().zip(&got).position(|(a, g)| match agree {
                        Agree::Bits => a.to_bits() != g.to_bits(),
                        Agree::Within { rel, abs } => {
                            (a - g).abs() > rel * a.abs() + abs || a.is_nan() != g.is_nan()
                        }
                    });
                    if let Some(i) = bad.or((w.len() != got.len()).then_some(w.len())) {
                        return Err(format!(
                            "disagrees with the default tuning at element {i}: {:?} vs {:?}",
                            got.get(i),
                            w.get(i)
                        )
                        .into());
                    }
                }
            }
            b.time(|i| op.run(m, i))
        })();
        rows.push((name.to_string(), r));
    }
    let best = rows
        .iter()
        .filter_map(|(n, r)| r.as_ref().ok().map(|t| (n.clone(), t.median)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n);
    let op_name = format!("sweep {family}");
    let table = Rows {
        op: &op_name,
        dtype,
        shape,
        floor,
        copy,
    };
    for (name, r) in rows {
        match r {
            Ok(t) => {
                let mark = if best.as_deref() == Some(name.as_str()) {
                    " **best**"
                } else {
                    ""
                };
                table.print(&[(format!("{name}{mark}"), t)]);
            }
            Err(e) => {
                *errors += 1;
                println!("| {op_name} | {dtype} | {shape} | {name} | error: {e} | | | |");
            }
        }
    }
    table.print(&[("copy", copy)]);
}

/// Runs the sweep of `families` (all when empty); returns the number of failed points.
pub(crate) fn run(b: &Bench, families: &[String]) -> usize {
    let cache =
        std::env::temp_dir().join(format!("mixup-kernels-sweep-cache-{}", std::process::id()));
    let mut errors = 0usize;
    let t0 = Instant::now();
    for family in FAMILIES {
        if !families.is_empty() && !families.iter().any(|f| f == family) {
            continue;
        }
        let f0 = Instant::now();
        let mixers: Vec<(&'static str, Res<CudaMixer>)> = points(family)
            .into_iter()
            .map(|(n, t)| (n, mixer_for(b, t, &cache)))
            .collect();
        if let Err(e) = sweep_family(b, family, &mixers, &mut errors) {
            errors += 1;
            println!("| sweep {family} | error: {e} | | | | | | |");
        }
        eprintln!("sweep {family}: {:.1} s", f0.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&cache);
    println!("\nsweep: {:.1} s", t0.elapsed().as_secs_f64());
    errors
}

/// The shapes of one family.
fn sweep_family(
    b: &Bench,
    family: &str,
    mixers: &[(&'static str, Res<CudaMixer>)],
    errors: &mut usize,
) -> Res<()> {
    let noop = &mut |_: &Bench| -> Res<()> { Ok(()) };
    let loss_tol = Agree::Within {
        rel: 1e-5,
        abs: 1e-6,
    };
    match family {
        "mix" => {
            let (batch, c, h, w) = (256usize, 3usize, 224usize, 224usize);
            let n = batch * c * h * w;
            let nchw = SampleShape::channels_first(c, h, w);
            let plans = [
                (
                    "random pairs",
                    MixPlan::from_parts(&random_pairs(batch, 7), &lams(batch))?,
                ),
                ("cutmix flip", cutmix_flip(batch, h, w)?),
            ];
            let floor = 2 * n * 2;
            let copy = b.copy(floor)?;
            for (name, p) in plans {
                let mut plan = DevicePlan::new(&b.mixer);
                plan.upload(&p)?;
                let x = b.stream.clone_htod(&random::<bf16>(n, 1))?;
                let out = b.stream.clone_dtod(&x)?;
                let op = std::cell::RefCell::new(MixOp {
                    plan,
                    layout: nchw,
                    x,
                    out,
                });
                let shape = format!("{batch}x3x224x224 {name}, in place");
                let mut reset = |b: &Bench| op.borrow_mut().reset(b);
                let mut opm = RefOp(&op);
                let what = ("bf16", shape.as_str(), floor);
                sweep_shape(
                    b,
                    family,
                    what,
                    copy,
                    mixers,
                    &mut opm,
                    &mut reset,
                    Agree::Bits,
                    errors,
                );
            }
        }
        "soft" => {
            let (batch, classes) = (1024usize, 1000usize);
            let floor = batch * classes * 2;
            let sets = b.sets(floor);
            let mut plan = DevicePlan::new(&b.mixer);
            plan.upload(&MixPlan::from_parts(&random_pairs(batch, 5), &lams(batch))?)?;
            let mut op = SoftOp::<bf16> {
                plan,
                spec: TargetSpec::new(classes, 0.1)?,
                labels: b.stream.clone_htod(&labels(batch, classes, 3))?,
                outs: (0..sets)
                    .map(|i| {
                        b.stream
                            .clone_htod(&random::<bf16>(batch * classes, i as u64))
                    })
                    .collect::<Result<_, _>>()?,
            };
            let copy = b.copy(floor * 2)?;
            let half = Timing {
                median: copy.median / 2.0,
                ..copy
            };
            let what = ("bf16", "1024x1000", floor);
            sweep_shape(
                b,
                family,
                what,
                half,
                mixers,
                &mut op,
                noop,
                Agree::Bits,
                errors,
            );
        }
        "ce" => {
            let spec_of = |c: usize| CeSpec::new(c, 0.1, Reduction::Mean).unwrap();
            for (dt, batch, classes) in [
                ("bf16", 256usize, 1000usize),
                ("bf16", 4096, 32_000),
                ("f32", 4096, 32_000),
            ] {
                let spec = spec_of(classes);
                let shape = format!("{batch}x{classes}");
                if dt == "f32" {
                    let lb = LossBench::<f32>::new(b, batch, classes, [9, 4, 6])?;
                    let copy = b.copy(lb.floor())?;
                    let mut op = LossOp { lb, spec: &spec };
                    let what = (dt, shape.as_str(), op.lb.floor());
                    sweep_shape(
                        b, family, what, copy, mixers, &mut op, noop, loss_tol, errors,
                    );
                } else {
                    let lb = LossBench::<bf16>::new(b, batch, classes, [9, 4, 6])?;
                    let copy = b.copy(lb.floor())?;
                    let mut op = LossOp { lb, spec: &spec };
                    let what = (dt, shape.as_str(), op.lb.floor());
                    // bf16 gradients: one storage rounding apart at most.
                    let tol = Agree::Within {
                        rel: 2f64.powi(-7),
                        abs: 1e-6,
                    };
                    sweep_shape(b, family, what, copy, mixers, &mut op, noop, tol, errors);
                }
            }
        }
        "bce" => {
            for (batch, classes) in [(256usize, 1000usize), (4096, 32_000)] {
                let spec =
                    BceSpec::new(classes, 0.1, Reduction::Mean)?.with_target_threshold(0.2)?;
                let spec = DeviceBceSpec::new(&b.mixer, spec)?;
                let lb = LossBench::<bf16>::new(b, batch, classes, [19, 5, 7])?;
                let copy = b.copy(lb.floor())?;
                let shape = format!("{batch}x{classes}");
                let mut op = LossOp { lb, spec: &spec };
                let what = ("bf16", shape.as_str(), op.lb.floor());
                let tol = Agree::Within {
                    rel: 2f64.powi(-7),
                    abs: 1e-6,
                };
                sweep_shape(b, family, what, copy, mixers, &mut op, noop, tol, errors);
            }
        }
        "mix_normalize" => {
            let (batch, c, h, w) = (256usize, 3usize, 224usize, 224usize);
            let n = batch * c * h * w;
            let host = random::<u8>(n, 21);
            let sets = b.sets(n);
            let mut plan = DevicePlan::new(&b.mixer);
            plan.upload(&MixPlan::from_parts(&random_pairs(batch, 7), &lams(batch))?)?;
            let norm = Normalize::imagenet_u8().with_u8_rounding(true);
            let mut op = NormOp::<bf16> {
                plan,
                shape: SampleShape::channels_last(h, w, c),
                norm: DeviceNormalize::new(&b.mixer, norm)?,
                xs: (0..sets)
                    .map(|k| {
                        let mut v = host.clone();
                        v.rotate_left(k * 4099);
                        b.stream.clone_htod(&v)
                    })
                    .collect::<Result<_, _>>()?,
                out: b.stream.clone_htod(&vec![bf16::default(); n])?,
            };
            let floor = n + n * 2;
            let copy = b.copy(floor)?;
            let what = ("u8→bf16", "256x224x224x3 pairs rint, NHWC→NCHW", floor);
            sweep_shape(
                b,
                family,
                what,
                copy,
                mixers,
                &mut op,
                noop,
                Agree::Bits,
                errors,
            );
        }
        _ => {}
    }
    Ok(())
}

/// An [`Op`] shared with a reset closure.
struct RefOp<'a, O: Op>(&'a std::cell::RefCell<O>);

impl<O: Op> Op for RefOp<'_, O> {
    fn run(&mut self, m: &CudaMixer, i: usize) -> Res<()> {
        self.0.borrow_mut().run(m, i)
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<f64>> {
        self.0.borrow_mut().output(b)
    }
}
