//! The tuning sweep (`bench-gpu --sweep [family ...]`, docs/gpu.md): per kernel family, a small
//! grid of [`KernelTuning`] points, each timed on one or more representative shapes against the
//! device copy of the same bytes in the same run; every point is printed, the fastest marked
//! `best`. Each point is a fresh mixer on the same stream (its kernels compiled once, or read
//! from the disk cache, `$MIXUP_KERNELS_CACHE`: the tuning is part of the cache key, so the
//! default tuning's kernels are those the bench just cached). Its outputs are first filled
//! with a NaN sentinel (0xFF bytes; the in-place mix gets its input back instead), then
//! compared with the default tuning's (mix, soft targets and mix_normalize bit for bit, the
//! losses within their f32 reduction order: `rel × |value| + abs_of_max × max |value|` per
//! output), so an element a point leaves unwritten fails; a point that disagrees is an error
//! row (exit code 1), never a candidate. The reference is the default point's output only:
//! when the default point fails, every point of that shape is an error row. Shapes whose byte
//! floor is under 16 MB (and their copy) are timed 20 back-to-back calls per event pair,
//! divided by 20, so that the points rank the kernel, not the launch overhead.
//!
//! Families: `mix`, `soft`, `ce`, `bce`, `mix_normalize` (the filter matches exactly; none: all).
//! Estimated time on an H200 with `--quick`: 30–45 s, mostly NVRTC (33 points, about 50
//! kernels) and the host's random inputs (docs/gpu.md).

use super::*;
use mixup_kernels::cuda::KernelTuning;
use mixup_kernels::cuda::cudarc::driver::DevicePtrMut;
use mixup_kernels::cuda::cudarc::driver::result::memset_d8_async;

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
            // Both send the f32 4096x32000 rows (125 KB) to ce_online, which the default
            // thresholds never pick for the swept shapes: compare them with each other.
            (
                "block ≤ 64 KB rows, online unroll 8",
                KernelTuning {
                    ce_online_unroll: 8,
                    ce_block_max_row_bytes: 64 * 1024,
                    ..d
                },
            ),
            (
                "block ≤ 64 KB rows, online unroll 4",
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

/// A mixer on the bench's stream with `tuning`, caching compiled kernels where the bench does
/// (`$MIXUP_KERNELS_CACHE`, ...; the tuning is part of the cache key).
fn mixer_for(b: &Bench, tuning: KernelTuning) -> Res<CudaMixer> {
    Ok(
        CudaMixer::from_stream(b.stream.clone())?.with_options(CudaMixerOptions {
            cache_dir: None,
            tuning,
            ..Default::default()
        })?,
    )
}

/// What one shape of a family does under a mixer: fill the outputs the check reads with the
/// sentinel, run the op once (for the output check), read its outputs back, and time it.
trait Op {
    fn run(&mut self, m: &CudaMixer, i: usize) -> Res<()>;
    fn poison(&mut self, b: &Bench) -> Res<()>;
    fn output(&mut self, b: &Bench) -> Res<Vec<Box<dyn Host>>>;
}

/// One output read back in its own dtype; the check widens one element at a time (no f64
/// copy of a 131M-element gradient).
trait Host {
    fn len(&self) -> usize;
    /// Element `i` as f64 (exact for every dtype).
    fn at(&self, i: usize) -> f64;
}

impl<T: Element> Host for Vec<T> {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn at(&self, i: usize) -> f64 {
        f64::from(self[i].to_f32())
    }
}

/// Elements back, in their dtype.
fn back<T: Element + DeviceRepr>(b: &Bench, s: &CudaSlice<T>) -> Res<Box<dyn Host>> {
    Ok(Box::new(b.stream.clone_dtoh(s)?))
}

/// Fills `s` with 0xFF bytes: NaN in every float dtype, so an element the op leaves unwritten
/// fails the check (the sweep has no u8 outputs, for which 0xFF would be a value).
fn poison<T: DeviceRepr>(b: &Bench, s: &mut CudaSlice<T>) -> Res<()> {
    let n = s.num_bytes();
    let (ptr, _record) = s.device_ptr_mut(&b.stream);
    // SAFETY: `ptr` is `s`'s allocation of `n` bytes on this stream; any bit pattern is a
    // valid float.
    unsafe { memset_d8_async(ptr, 0xFF, n, b.stream.cu_stream()) }?;
    Ok(())
}

struct MixOp<T: DeviceRepr> {
    plan: DevicePlan,
    layout: SampleShape,
    x: CudaSlice<T>,
    out: CudaSlice<T>,
}

impl<T: Element + DeviceRepr> Op for MixOp<T> {
    fn run(&mut self, m: &CudaMixer, _: usize) -> Res<()> {
        // In place on the output (an involution): the same bytes as a copy.
        Ok(m.mix_in_place(&self.plan, &self.layout, &mut self.out.as_view_mut())?)
    }
    /// In place, the output is the input: copy x back in, so each checked call starts from
    /// the same input (an element left unwritten keeps x's value, not the mixed one).
    fn poison(&mut self, b: &Bench) -> Res<()> {
        b.stream.memcpy_dtod(&self.x, &mut self.out)?;
        Ok(())
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<Box<dyn Host>>> {
        Ok(vec![back(b, &self.out)?])
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
    fn poison(&mut self, b: &Bench) -> Res<()> {
        poison(b, &mut self.outs[0])
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<Box<dyn Host>>> {
        Ok(vec![back(b, &self.outs[0])?])
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
    fn poison(&mut self, b: &Bench) -> Res<()> {
        poison(b, &mut self.lb.grad)?;
        poison(b, &mut self.lb.loss)
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<Box<dyn Host>>> {
        Ok(vec![back(b, &self.lb.grad)?, back(b, &self.lb.loss)?])
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
    fn poison(&mut self, b: &Bench) -> Res<()> {
        poison(b, &mut self.out)
    }
    fn output(&mut self, b: &Bench) -> Res<Vec<Box<dyn Host>>> {
        Ok(vec![back(b, &self.out)?])
    }
}

/// How a point's output may differ from the default tuning's: not at all, or (losses: the
/// lanes and blocks sum in another order) within `rel` of each value plus `abs_of_max` of the
/// output's largest magnitude (per output: the gradient's scale, not the loss's).
#[derive(Clone, Copy)]
enum Agree {
    Bits,
    Within { rel: f64, abs_of_max: f64 },
}

/// The default tuning's outputs, with each one's absolute tolerance.
struct Reference {
    outs: Vec<Box<dyn Host>>,
    abs: Vec<f64>,
}

impl Reference {
    /// `outs` as the reference; an error if the default tuning left an element unwritten (the
    /// NaN sentinel: the random inputs give no NaN).
    fn new(outs: Vec<Box<dyn Host>>, agree: Agree) -> Res<Self> {
        let mut abs = Vec::with_capacity(outs.len());
        for (k, o) in outs.iter().enumerate() {
            let mut max = 0f64;
            for i in 0..o.len() {
                let v = o.at(i);
                if v.is_nan() {
                    return Err(format!(
                        "the default tuning left output {k} element {i} unwritten (NaN sentinel)"
                    )
                    .into());
                }
                max = max.max(v.abs());
            }
            abs.push(match agree {
                Agree::Bits => 0.0,
                Agree::Within { abs_of_max, .. } => abs_of_max * max,
            });
        }
        Ok(Self { outs, abs })
    }

    /// The first element of `got` that disagrees with the reference, described.
    fn disagreement(&self, got: &[Box<dyn Host>], agree: Agree) -> Option<String> {
        if got.len() != self.outs.len() {
            return Some(format!("{} outputs, not {}", got.len(), self.outs.len()));
        }
        for (k, ((w, g), &abs)) in self.outs.iter().zip(got).zip(&self.abs).enumerate() {
            if w.len() != g.len() {
                return Some(format!("output {k}: {} elements, not {}", g.len(), w.len()));
            }
            let bad = (0..w.len()).find(|&i| {
                let (a, x) = (w.at(i), g.at(i));
                match agree {
                    Agree::Bits => a.to_bits() != x.to_bits(),
                    Agree::Within { rel, .. } => {
                        a.is_nan() != x.is_nan() || (a - x).abs() > rel * a.abs() + abs
                    }
                }
            });
            if let Some(i) = bad {
                return Some(format!(
                    "output {k} element {i}: {} vs {} (default tuning)",
                    g.at(i),
                    w.at(i)
                ));
            }
        }
        None
    }
}

/// Calls per event pair for a shape of `floor` bytes: 20 under 16 MB (one launch would time
/// the host's overhead), else 1.
fn calls_for(floor: usize) -> usize {
    if floor < 16 << 20 { 20 } else { 1 }
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
    agree: Agree,
    errors: &mut usize,
) {
    let calls = calls_for(floor);
    // The reference is the default point's (index 0) output, never another point's.
    let mut want: Option<Reference> = None;
    let mut rows: Vec<(String, Res<Timing>)> = Vec::new();
    for (k, (name, m)) in mixers.iter().enumerate() {
        let r = (|| -> Res<Timing> {
            if k > 0 && want.is_none() {
                return Err("no reference: the default tuning failed on this shape".into());
            }
            let m = m.as_ref().map_err(|e| e.to_string())?;
            op.poison(b)?;
            op.run(m, 0)?;
            let got = op.output(b)?;
            match &want {
                None => want = Some(Reference::new(got, agree)?),
                Some(w) => {
                    let d = w.disagreement(&got, agree);
                    // The point's copy goes before timing (a 4096x32000 gradient is 262 MB).
                    drop(got);
                    if let Some(d) = d {
                        return Err(format!("disagrees with the default tuning: {d}").into());
                    }
                }
            }
            b.time_n(calls, |i| op.run(m, i))
        })();
        rows.push((name.to_string(), r));
    }
    let shape = if calls > 1 {
        format!("{shape} ({calls} calls per event pair)")
    } else {
        shape.to_string()
    };
    let shape = shape.as_str();
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
    let mut errors = 0usize;
    let t0 = Instant::now();
    for family in FAMILIES {
        if !families.is_empty() && !families.iter().any(|f| f == family) {
            continue;
        }
        let f0 = Instant::now();
        let mixers: Vec<(&'static str, Res<CudaMixer>)> = points(family)
            .into_iter()
            .map(|(n, t)| (n, mixer_for(b, t)))
            .collect();
        if let Err(e) = sweep_family(b, family, &mixers, &mut errors) {
            errors += 1;
            println!("| sweep {family} | error: {e} | | | | | | |");
        }
        eprintln!("sweep {family}: {:.1} s", f0.elapsed().as_secs_f64());
    }
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
    // Absolute slack relative to each output's scale (a CE Mean gradient at 4096x32000 is
    // about 1e-9, its loss about 10); unwritten elements are NaN and fail anyway.
    let loss_tol = Agree::Within {
        rel: 1e-5,
        abs_of_max: 1e-4,
    };
    // bf16 gradients: one storage rounding apart at most.
    let bf16_tol = Agree::Within {
        rel: 2f64.powi(-7),
        abs_of_max: 1e-4,
    };
    let copy_of = |floor: usize| b.copy_n(floor, calls_for(floor));
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
            let copy = copy_of(floor)?;
            // The input, generated once for both plans (each checked call copies it back in).
            let x0 = b.stream.clone_htod(&random::<bf16>(n, 1))?;
            for (name, p) in plans {
                let mut plan = DevicePlan::new(&b.mixer);
                plan.upload(&p)?;
                let mut op = MixOp {
                    plan,
                    layout: nchw,
                    x: b.stream.clone_dtod(&x0)?,
                    out: b.stream.clone_dtod(&x0)?,
                };
                let shape = format!("{batch}x3x224x224 {name}, in place");
                let what = ("bf16", shape.as_str(), floor);
                sweep_shape(b, family, what, copy, mixers, &mut op, Agree::Bits, errors);
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
            let copy = b.copy_n(floor * 2, calls_for(floor))?;
            let half = Timing {
                median: copy.median / 2.0,
                ..copy
            };
            let what = ("bf16", "1024x1000", floor);
            sweep_shape(b, family, what, half, mixers, &mut op, Agree::Bits, errors);
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
                    let copy = copy_of(lb.floor())?;
                    let mut op = LossOp { lb, spec: &spec };
                    let what = (dt, shape.as_str(), op.lb.floor());
                    sweep_shape(b, family, what, copy, mixers, &mut op, loss_tol, errors);
                } else {
                    let lb = LossBench::<bf16>::new(b, batch, classes, [9, 4, 6])?;
                    let copy = copy_of(lb.floor())?;
                    let mut op = LossOp { lb, spec: &spec };
                    let what = (dt, shape.as_str(), op.lb.floor());
                    sweep_shape(b, family, what, copy, mixers, &mut op, bf16_tol, errors);
                }
            }
        }
        "bce" => {
            for (batch, classes) in [(256usize, 1000usize), (4096, 32_000)] {
                let spec =
                    BceSpec::new(classes, 0.1, Reduction::Mean)?.with_target_threshold(0.2)?;
                let spec = DeviceBceSpec::new(&b.mixer, spec)?;
                let lb = LossBench::<bf16>::new(b, batch, classes, [19, 5, 7])?;
                let copy = copy_of(lb.floor())?;
                let shape = format!("{batch}x{classes}");
                let mut op = LossOp { lb, spec: &spec };
                let what = ("bf16", shape.as_str(), op.lb.floor());
                sweep_shape(b, family, what, copy, mixers, &mut op, bf16_tol, errors);
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
            let copy = copy_of(floor)?;
            let what = ("u8→bf16", "256x224x224x3 pairs rint, NHWC→NCHW", floor);
            sweep_shape(b, family, what, copy, mixers, &mut op, Agree::Bits, errors);
        }
        _ => {}
    }
    Ok(())
}
