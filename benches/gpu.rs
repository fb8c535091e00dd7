//! GPU benchmark: fused kernels vs the naive unfused kernels (benches/gpu/naive.rs and
//! naive.cu, the baseline, not part of the library) vs a device-to-device copy of the same
//! bytes, in one run, on the grid of issue 3. Without a GPU it says so and exits 0, or fails
//! (exit code 1) when `MIXUP_REQUIRE_GPU=1` (the GPU session sets it).
//!
//! Before a naive op is timed, its output is compared once with the fused kernel's on the same
//! inputs (mix: bit for bit; soft targets and the CE's loss and gradient: within the f32
//! arithmetic's and the storage's rounding); a mismatch fails the row and the run (exit code 1),
//! so the fused kernels are never measured against a wrong baseline.
//!
//!     cargo bench --bench gpu                  # everything
//!     cargo bench --bench gpu -- mix           # rows whose op name contains "mix"
//!     cargo bench --bench gpu -- mix_normalize # the fused u8 → normalized input only
//!     cargo bench --bench gpu -- --quick       # fewer repetitions, smaller mix batches
//!     cargo bench --bench gpu -- --sweep [ce]  # the tuning sweep (benches/gpu/sweep.rs) only,
//!                                              # of the named families (mix, soft, ce, bce,
//!                                              # mix_normalize; none: all)
//!
//! (Or run the bench binary built by scripts/gpu-bundle.sh: `.gpu/bench-gpu [filter] [--quick]`;
//! scripts/gpu/run.sh A runs it on the GPU machine.)
//!
//! Method: CUDA events around each call, warm-up first, the median of many repetitions (each
//! synchronized, so launch latency counts as it does in a training step); inputs larger than
//! L2 are rotated between repetitions (several input sets when one set fits in L2); random
//! data, never zeros. GB/s is computed at the op's byte floor (shared/REFERENCE.md): the bytes
//! the op must move at least, whatever it actually moves, so a kernel that moves more shows a
//! lower figure. "vs copy" divides by the bandwidth of `cuMemcpyDtoD` moving the same number of
//! bytes (read + write) in the same run.

use std::sync::Arc;
use std::time::Instant;

use mixup_kernels::cuda::cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use mixup_kernels::cuda::cudarc::driver::{
    CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use mixup_kernels::cuda::cudarc::nvrtc::Ptx;
use mixup_kernels::cuda::kernels::{ModuleSource, Target, compile, options};
use mixup_kernels::cuda::{
    CudaMixer, CudaMixerOptions, DeviceBceSpec, DeviceGradOutput, DeviceNormalize, DevicePlan,
};
use mixup_kernels::{
    BceSpec, CeSpec, CutBox, Element, FloatElement, ImageSize, MemoryFormat, MixPlan, Normalize,
    Reduction, SampleShape, ScalarType, TargetSpec, bf16, f16,
};

#[path = "gpu/naive.rs"]
mod naive;
#[path = "gpu/sweep.rs"]
mod sweep;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A float dtype of the crate's ops that lives in device buffers (f32, f16, bf16).
trait DeviceFloat: FloatElement + DeviceRepr + Default {}

impl<T: FloatElement + DeviceRepr + Default> DeviceFloat for T {}

struct Bench {
    mixer: CudaMixer,
    /// The unfused baseline (benches/gpu/naive.cu); not built for `--sweep`, which never
    /// runs it.
    naive: Option<naive::Naive>,
    stream: Arc<CudaStream>,
    l2: usize,
    reps: usize,
    warmup: usize,
    filter: Vec<String>,
    quick: bool,
}

/// Median, min and max of per-call times in milliseconds.
#[derive(Clone, Copy)]
struct Timing {
    median: f64,
    min: f64,
    max: f64,
}

impl Bench {
    fn wanted(&self, op: &str) -> bool {
        self.filter.is_empty() || self.filter.iter().any(|f| op.contains(f.as_str()))
    }

    /// The naive baseline (built unless `--sweep`).
    fn naive(&self) -> &naive::Naive {
        self.naive
            .as_ref()
            .expect("the naive baseline is built unless --sweep")
    }

    /// Times `f(rep)` with events; `f` must only enqueue work on the mixer's stream.
    fn time(&self, f: impl FnMut(usize) -> Res<()>) -> Res<Timing> {
        self.time_n(1, f)
    }

    /// Times `f(k)` as [`time`](Self::time) does, but `calls` back-to-back calls per event pair
    /// (one synchronization per pair), divided by `calls`: for small shapes, so that the figure
    /// is the kernel's and not the host's launch overhead and event jitter (the sweep).
    fn time_n(&self, calls: usize, mut f: impl FnMut(usize) -> Res<()>) -> Res<Timing> {
        let ctx = self.stream.context();
        let calls = calls.max(1);
        for i in 0..self.warmup {
            f(i)?;
        }
        self.stream.synchronize()?;
        let mut ms = Vec::with_capacity(self.reps);
        for i in 0..self.reps {
            let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            start.record(&self.stream)?;
            for j in 0..calls {
                f(self.warmup + i * calls + j)?;
            }
            end.record(&self.stream)?;
            end.synchronize()?;
            ms.push(start.elapsed_ms(&end)? as f64 / calls as f64);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        Ok(Timing {
            median: ms[ms.len() / 2],
            min: ms[0],
            max: ms[ms.len() - 1],
        })
    }

    /// How many input sets of `bytes` to rotate so that they do not all fit in L2.
    fn sets(&self, bytes: usize) -> usize {
        if bytes >= 2 * self.l2 {
            1
        } else {
            (2 * self.l2).div_ceil(bytes.max(1)).clamp(2, 16)
        }
    }

    /// Device-to-device copy moving `floor_bytes` in total (half read, half written).
    fn copy(&self, floor_bytes: usize) -> Res<Timing> {
        self.copy_n(floor_bytes, 1)
    }

    /// [`copy`](Self::copy) timed `calls` back-to-back per event pair ([`time_n`](Self::time_n)).
    fn copy_n(&self, floor_bytes: usize, calls: usize) -> Res<Timing> {
        let half = (floor_bytes / 2).max(4);
        let n = self.sets(half);
        let src: Vec<CudaSlice<u8>> = (0..n)
            .map(|_| self.stream.clone_htod(&random_bytes(half)))
            .collect::<Result<_, _>>()?;
        let mut dst: Vec<CudaSlice<u8>> = (0..n)
            .map(|_| self.stream.alloc_zeros::<u8>(half))
            .collect::<Result<_, _>>()?;
        self.time_n(calls, |i| {
            let k = i % n;
            self.stream.memcpy_dtod(&src[k], &mut dst[k])?;
            Ok(())
        })
    }
}

/// The table rows of one op at one dtype and shape: each variant's time, its bandwidth at the
/// op's byte floor and that bandwidth against the copy's.
#[derive(Clone, Copy)]
struct Rows<'a> {
    op: &'a str,
    dtype: &'a str,
    shape: &'a str,
    floor: usize,
    copy: Timing,
}

impl Rows<'_> {
    /// One row per `(variant, timing)`, in order.
    fn print<V: AsRef<str>>(&self, variants: &[(V, Timing)]) {
        let Rows {
            op,
            dtype,
            shape,
            floor,
            copy,
        } = *self;
        let copy_gbs = floor as f64 / (copy.median * 1e-3) / 1e9;
        for (variant, t) in variants {
            let variant: &str = variant.as_ref();
            let gbs = floor as f64 / (t.median * 1e-3) / 1e9;
            println!(
                "| {op} | {dtype} | {shape} | {variant} | {:.1} | {:.1}–{:.1} | {gbs:.0} | {:.2} |",
                t.median * 1e3,
                t.min * 1e3,
                t.max * 1e3,
                gbs / copy_gbs
            );
        }
    }
}

/// The first element where `naive` and `fused` differ, bit for bit (as f32: exact for every
/// dtype).
fn first_bit_difference<T: Element>(naive: &[T], fused: &[T]) -> Option<usize> {
    (0..fused.len().max(naive.len())).find(|&i| match (naive.get(i), fused.get(i)) {
        (Some(a), Some(b)) => a.to_f32().to_bits() != b.to_f32().to_bits(),
        _ => true,
    })
}

/// The first element where `naive` and `fused` are further apart than `tol(fused value)`.
fn first_difference<T: Element>(
    naive: &[T],
    fused: &[T],
    tol: impl Fn(f64) -> f64,
) -> Option<usize> {
    (0..fused.len().max(naive.len())).find(|&i| match (naive.get(i), fused.get(i)) {
        (Some(a), Some(b)) => {
            let (a, b) = (f64::from(a.to_f32()), f64::from(b.to_f32()));
            // A NaN on one side only is a difference.
            (a - b).abs() > tol(b) || a.is_nan() != b.is_nan()
        }
        _ => true,
    })
}

/// Half an ulp of `dtype`'s storage at `v` (relative, plus the subnormal floor): the rounding of
/// one f32 result to the storage type.
fn storage_half_ulp(dtype: ScalarType, v: f64) -> f64 {
    match dtype {
        ScalarType::F32 | ScalarType::U8 => 0.0,
        ScalarType::F16 => 2f64.powi(-11) * v.abs() + 2f64.powi(-25),
        ScalarType::BF16 => 2f64.powi(-8) * v.abs() + 2f64.powi(-134),
    }
}

/// The error of a naive op that disagrees with the fused kernel.
fn mismatch<T: Element>(
    what: &str,
    i: usize,
    naive: &[T],
    fused: &[T],
) -> Box<dyn std::error::Error> {
    let show = |v: &[T]| {
        v.get(i)
            .map_or("missing".to_string(), |x| format!("{}", x.to_f32()))
    };
    format!(
        "the naive baseline disagrees with the fused kernel ({what}): element {i} is {} naive, {} fused",
        show(naive),
        show(fused)
    )
    .into()
}

/// The next state of a xorshift64 generator (the source of every random input here).
fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n).map(|_| (xorshift(&mut s) >> 24) as u8 | 1).collect()
}

/// Random values in [-4, 4) (pixels: 1..=255), never zero.
fn random<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            let u = (xorshift(&mut s) >> 40) as f32 / (1u64 << 24) as f32;
            if T::DTYPE == ScalarType::U8 {
                T::from_f32(1.0 + (u * 254.0).floor())
            } else {
                let v = u * 8.0 - 4.0;
                T::from_f32(if v == 0.0 { 0.5 } else { v })
            }
        })
        .collect()
}

/// A random permutation of `0..n` (Fisher–Yates).
fn random_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut s = seed | 1;
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, (xorshift(&mut s) % (i as u64 + 1)) as usize);
    }
    p
}

/// Random pairs (an involution): consecutive entries of a random permutation swap places; with
/// `n` odd the last one stays.
fn random_pairs(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for c in random_permutation(n, seed).chunks(2) {
        if let [a, b] = *c {
            p[a] = b;
            p[b] = a;
        }
    }
    p
}

fn lams(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| 0.5 + 0.45 * ((i * 7919) % 101) as f32 / 101.0)
        .collect()
}

/// CutMix with timm's flip partner (an involution: each pair read once) on `h`×`w` images: a
/// 112×112 box per sample, lower down the image from one sample to the next.
fn cutmix_flip(batch: usize, h: usize, w: usize) -> Res<MixPlan> {
    let flip: Vec<usize> = (0..batch).rev().collect();
    let boxes: Vec<Option<CutBox>> = (0..batch)
        .map(|i| {
            Some(CutBox {
                y0: (i % 50) as u32,
                y1: (i % 50 + 112) as u32,
                x0: 30,
                x1: 142,
            })
        })
        .collect();
    let size = ImageSize {
        height: h,
        width: w,
    };
    Ok(MixPlan::with_boxes(&flip, &lams(batch), &boxes, size)?)
}

/// Mixing: random pairs in place (floor 2·N·s), any permutation (3·N·s), CutMix NCHW and NHWC
/// (timm's flip in place, 2·N·s).
fn bench_mix<T: Element + DeviceRepr + Default>(b: &Bench, batch: usize) -> Res<()> {
    let (c, h, w) = (3usize, 224usize, 224usize);
    let n = batch * c * h * w;
    let s = std::mem::size_of::<T>();
    let dt = T::DTYPE.name();
    let shape = format!("{batch}x3x224x224");
    let x = b.stream.clone_htod(&random::<T>(n, 1))?;
    let mut out = b.stream.clone_htod(&random::<T>(n, 2))?;
    let mut tmp = b.stream.clone_htod(&random::<T>(n, 3))?;
    let mut xi = b.stream.clone_dtod(&x)?;
    let mut fused_out = b.stream.clone_dtod(&x)?;
    let mut plan = DevicePlan::new(&b.mixer);
    let nk = b.naive().kernels(T::DTYPE)?;
    let nchw = SampleShape::channels_first(c, h, w);
    let nhwc = SampleShape::channels_last(h, w, c);
    let cases: Vec<(&str, MixPlan, SampleShape, bool, usize)> = vec![
        (
            "random pairs, in place",
            MixPlan::from_parts(&random_pairs(batch, 7), &lams(batch))?,
            nchw,
            true,
            2,
        ),
        (
            "permutation",
            MixPlan::from_parts(&random_permutation(batch, 8), &lams(batch))?,
            nchw,
            false,
            3,
        ),
        (
            "cutmix NCHW, flip in place",
            cutmix_flip(batch, h, w)?,
            nchw,
            true,
            2,
        ),
        (
            "cutmix NHWC, flip in place",
            cutmix_flip(batch, h, w)?,
            nhwc,
            true,
            2,
        ),
    ];
    for (name, p, layout, in_place, passes) in cases {
        plan.upload(&p)?;
        let np = b.naive().plan(&p)?;
        // The naive result against the fused one (the call timed below), bit for bit, once.
        if in_place {
            b.stream.memcpy_dtod(&x, &mut fused_out)?;
            b.mixer
                .mix_in_place(&plan, &layout, &mut fused_out.as_view_mut())?;
        } else {
            b.mixer
                .mix(&plan, &layout, &x.as_view(), &mut fused_out.as_view_mut())?;
        }
        b.naive().mix(&nk, &np, &layout, &x, &mut tmp, &mut out)?;
        {
            let (nv, fv) = (b.stream.clone_dtoh(&out)?, b.stream.clone_dtoh(&fused_out)?);
            if let Some(i) = first_bit_difference(&nv, &fv) {
                return Err(mismatch(&format!("mix {dt} {shape} {name}"), i, &nv, &fv));
            }
        }
        let floor = passes * n * s;
        let copy = b.copy(floor)?;
        let fused = if in_place {
            b.time(|_| {
                Ok(b.mixer
                    .mix_in_place(&plan, &layout, &mut xi.as_view_mut())?)
            })?
        } else {
            b.time(|_| {
                Ok(b.mixer
                    .mix(&plan, &layout, &x.as_view(), &mut out.as_view_mut())?)
            })?
        };
        let unfused = b.time(|_| b.naive().mix(&nk, &np, &layout, &x, &mut tmp, &mut out))?;
        let rows = Rows {
            op: "mix",
            dtype: dt,
            shape: &shape,
            floor,
            copy,
        };
        rows.print(&[
            (format!("{name}: fused"), fused),
            (format!("{name}: naive"), unfused),
            (format!("{name}: copy"), copy),
        ]);
    }
    Ok(())
}

/// The fused mix + normalize (issue 14): u8 NHWC pixels to an f32 or bf16 model input, NCHW
/// (through the shared-memory tiles) and NHWC, random pairs with timm's u8 rounding and
/// CutMix with timm's flip (both involutions: each pixel read once). Floor: N bytes read +
/// N·s written. The output is checked once, bit for bit, against `cpu::mix_normalize` (with the
/// `cpu` feature).
fn bench_mix_normalize<O: DeviceFloat>(b: &Bench, batch: usize) -> Res<()> {
    let (c, h, w) = (3usize, 224usize, 224usize);
    let n = batch * c * h * w;
    let s = std::mem::size_of::<O>();
    let dt = format!("u8→{}", O::DTYPE.name());
    let shape = format!("{batch}x224x224x3");
    let host = random::<u8>(n, 21);
    let sets = b.sets(n);
    let xs: Vec<CudaSlice<u8>> = (0..sets)
        .map(|k| {
            let mut v = host.clone();
            v.rotate_left(k * 4099);
            b.stream.clone_htod(&v)
        })
        .collect::<Result<_, _>>()?;
    let mut out = b.stream.clone_htod(&vec![O::default(); n])?;
    let mut plan = DevicePlan::new(&b.mixer);
    let nhwc = SampleShape::channels_last(h, w, c);
    let norm = Normalize::imagenet_u8();
    let cases = [
        (
            "mixup pairs, rint",
            MixPlan::from_parts(&random_pairs(batch, 7), &lams(batch))?,
            true,
        ),
        ("cutmix flip", cutmix_flip(batch, h, w)?, false),
    ];
    let floor = n + n * s;
    let copy = b.copy(floor)?;
    let rows = Rows {
        op: "mix_normalize",
        dtype: &dt,
        shape: &shape,
        floor,
        copy,
    };
    for (name, p, rint) in cases {
        plan.upload(&p)?;
        let nm = norm.clone().with_u8_rounding(rint);
        let dn = DeviceNormalize::new(&b.mixer, nm.clone())?;
        for fout in [MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast] {
            let what = format!("{name}, NHWC→{}", fout.name());
            b.mixer.mix_normalize(
                &plan,
                &nhwc,
                &dn,
                &xs[0].as_view(),
                fout,
                &mut out.as_view_mut(),
            )?;
            #[cfg(feature = "cpu")]
            {
                let got = b.stream.clone_dtoh(&out)?;
                let mut want = vec![O::default(); n];
                mixup_kernels::cpu::mix_normalize(&p, &nhwc, &nm, &host, fout, &mut want)?;
                if let Some(i) = first_bit_difference(&got, &want) {
                    let what = format!("mix_normalize {dt} {shape} {what} vs the CPU");
                    return Err(mismatch(&what, i, &got, &want));
                }
            }
            let fused = b.time(|i| {
                Ok(b.mixer.mix_normalize(
                    &plan,
                    &nhwc,
                    &dn,
                    &xs[i % sets].as_view(),
                    fout,
                    &mut out.as_view_mut(),
                )?)
            })?;
            rows.print(&[(format!("{what}: fused"), fused)]);
        }
    }
    rows.print(&[("copy", copy)]);
    Ok(())
}

fn labels(batch: usize, classes: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..batch)
        .map(|_| (xorshift(&mut s) % classes as u64) as u32)
        .collect()
}

/// Soft targets [B, C]: floor B·C·s writes.
fn bench_soft<T: DeviceFloat>(b: &Bench, batch: usize, classes: usize) -> Res<()> {
    let s = std::mem::size_of::<T>();
    let floor = batch * classes * s;
    let sets = b.sets(floor);
    let mut outs: Vec<CudaSlice<T>> = (0..sets)
        .map(|i| b.stream.clone_htod(&random::<T>(batch * classes, i as u64)))
        .collect::<Result<_, _>>()?;
    let ls = b.stream.clone_htod(&labels(batch, classes, 3))?;
    let mut plan = DevicePlan::new(&b.mixer);
    plan.upload(&MixPlan::from_parts(&random_pairs(batch, 5), &lams(batch))?)?;
    let spec = TargetSpec::new(classes, 0.1)?;
    let copy = b.copy(floor * 2)?; // copy moves read + write; compare with the write bandwidth
    let fused = b.time(|i| {
        Ok(b.mixer.soft_targets(
            &plan,
            &spec,
            &ls.as_view(),
            &mut outs[i % sets].as_view_mut(),
        )?)
    })?;
    let mut bufs = naive::NaiveBuffers::new(&b.stream, batch, classes)?;
    let (nk, np) = (b.naive().kernels(T::DTYPE)?, b.naive().plan(plan.plan())?);
    // The naive targets against the fused ones, once: both round (1-ε)·λ + ε/C a few times in
    // f32 and once to T, in different orders.
    {
        let mut fused_t = b.stream.clone_htod(&vec![T::default(); batch * classes])?;
        let mut naive_t = b.stream.clone_dtod(&fused_t)?;
        b.mixer
            .soft_targets(&plan, &spec, &ls.as_view(), &mut fused_t.as_view_mut())?;
        b.naive()
            .soft_targets(&nk, &np, &ls, &spec, &mut bufs.y, &mut naive_t)?;
        let (nv, fv) = (
            b.stream.clone_dtoh(&naive_t)?,
            b.stream.clone_dtoh(&fused_t)?,
        );
        let tol =
            |v: f64| 8.0 * f64::from(f32::EPSILON) * v.abs() + 2.0 * storage_half_ulp(T::DTYPE, v);
        if let Some(i) = first_difference(&nv, &fv, tol) {
            return Err(mismatch(
                &format!("soft targets {} {batch}x{classes}", T::DTYPE.name()),
                i,
                &nv,
                &fv,
            ));
        }
    }
    let unfused = b.time(|i| {
        b.naive()
            .soft_targets(&nk, &np, &ls, &spec, &mut bufs.y, &mut outs[i % sets])
    })?;
    let shape = format!("{batch}x{classes}");
    let dt = T::DTYPE.name();
    // Against the copy's bandwidth (read + write bytes): a pure write stream is compared with
    // the same total byte rate.
    let half = Timing {
        median: copy.median / 2.0,
        ..copy
    };
    let rows = Rows {
        op: "soft targets",
        dtype: dt,
        shape: &shape,
        floor,
        copy: half,
    };
    rows.print(&[
        ("fused", fused),
        ("naive", unfused),
        ("copy (write half)", half),
    ]);
    Ok(())
}

/// One call of a fused loss: its inputs, the loss it writes, and the gradient when it runs
/// backward too (upstream gradient 1; no per-row losses).
struct LossCall<'a, T: DeviceRepr> {
    plan: &'a DevicePlan,
    logits: &'a CudaSlice<T>,
    labels: &'a CudaSlice<u32>,
    loss: &'a mut CudaSlice<f32>,
    grad: Option<&'a mut CudaSlice<T>>,
}

/// The crate's fused losses as the bench calls them: the CE and the BCE take the same
/// arguments but for their spec.
trait FusedLoss {
    fn call<T: FloatElement + DeviceRepr>(&self, m: &CudaMixer, c: LossCall<'_, T>) -> Res<()>;
}

/// `FusedLoss` for a spec type and its mixer methods (forward + backward, forward only).
macro_rules! fused_loss {
    ($spec:ty, $fwd_bwd:ident, $fwd:ident) => {
        impl FusedLoss for $spec {
            fn call<T: FloatElement + DeviceRepr>(
                &self,
                m: &CudaMixer,
                c: LossCall<'_, T>,
            ) -> Res<()> {
                let LossCall {
                    plan,
                    logits,
                    labels,
                    loss,
                    grad,
                } = c;
                let (z, ls) = (logits.as_view(), labels.as_view());
                let mut loss = loss.as_view_mut();
                let loss = Some(&mut loss);
                match grad {
                    Some(g) => {
                        let one = DeviceGradOutput::Scalar(1.0);
                        let g = &mut g.as_view_mut();
                        m.$fwd_bwd(plan, self, &z, &ls, one, loss, None, g)?
                    }
                    None => m.$fwd(plan, self, &z, &ls, loss, None)?,
                }
                Ok(())
            }
        }
    };
}

fused_loss!(CeSpec, mixup_ce, mixup_ce_forward);
fused_loss!(DeviceBceSpec, mixup_bce, mixup_bce_forward);

/// A loss benchmark's buffers at `batch × classes`: the logits (several sets when one fits in
/// L2), labels, the gradient and the loss, and a random-pairs plan.
struct LossBench<T: DeviceRepr> {
    batch: usize,
    classes: usize,
    logits: Vec<CudaSlice<T>>,
    labels: CudaSlice<u32>,
    grad: CudaSlice<T>,
    loss: CudaSlice<f32>,
    plan: DevicePlan,
}

/// The fused loss's timings, and the copy's of its floor.
struct LossTimes {
    copy: Timing,
    fwd_bwd: Timing,
    fwd: Timing,
}

impl<T: DeviceFloat> LossBench<T> {
    /// `seeds`: of the gradient's initial contents (the logits sets take the next ones), of the
    /// labels and of the plan's pairs.
    fn new(b: &Bench, batch: usize, classes: usize, seeds: [u64; 3]) -> Res<Self> {
        let [grad_seed, label_seed, pair_seed] = seeds;
        let n = batch * classes;
        let sets = b.sets(n * std::mem::size_of::<T>());
        let logits = (0..sets)
            .map(|i| {
                b.stream
                    .clone_htod(&random::<T>(n, grad_seed + 1 + i as u64))
            })
            .collect::<Result<_, _>>()?;
        let grad = b.stream.clone_htod(&random::<T>(n, grad_seed))?;
        let ls = b.stream.clone_htod(&labels(batch, classes, label_seed))?;
        let loss = b.stream.alloc_zeros::<f32>(1)?;
        let mut plan = DevicePlan::new(&b.mixer);
        plan.upload(&MixPlan::from_parts(
            &random_pairs(batch, pair_seed),
            &lams(batch),
        )?)?;
        Ok(Self {
            batch,
            classes,
            logits,
            labels: ls,
            grad,
            loss,
            plan,
        })
    }

    /// Forward + backward read the logits and write the gradient: floor B·C·(s_in + s_out).
    fn floor(&self) -> usize {
        2 * self.batch * self.classes * std::mem::size_of::<T>()
    }

    /// The call on the `i`-th logits set (they rotate), with the gradient when `backward`.
    fn args(&mut self, i: usize, backward: bool) -> LossCall<'_, T> {
        LossCall {
            plan: &self.plan,
            logits: &self.logits[i % self.logits.len()],
            labels: &self.labels,
            loss: &mut self.loss,
            grad: backward.then_some(&mut self.grad),
        }
    }

    /// Times the copy of the floor, then `spec`'s fused forward + backward and forward only.
    fn time_fused(&mut self, b: &Bench, spec: &impl FusedLoss) -> Res<LossTimes> {
        let copy = b.copy(self.floor())?;
        let fwd_bwd = b.time(|i| spec.call(&b.mixer, self.args(i, true)))?;
        let fwd = b.time(|i| spec.call(&b.mixer, self.args(i, false)))?;
        Ok(LossTimes { copy, fwd_bwd, fwd })
    }

    /// The rows of `mixup {loss}`: forward + backward (fused, then `naive` if there is one, then
    /// the copy), then the fused forward alone, which reads the logits once: floor B·C·s_in.
    fn print_rows(&self, loss: &str, t: &LossTimes, naive: Option<(&str, Timing)>) {
        let shape = format!("{}x{}", self.batch, self.classes);
        let op = format!("mixup {loss} fwd+bwd");
        let rows = Rows {
            op: &op,
            dtype: T::DTYPE.name(),
            shape: &shape,
            floor: self.floor(),
            copy: t.copy,
        };
        let mut variants = vec![("fused", t.fwd_bwd)];
        variants.extend(naive);
        variants.push(("copy", t.copy));
        rows.print(&variants);
        let op = format!("mixup {loss} fwd");
        let fwd = Rows {
            op: &op,
            floor: self.batch * self.classes * std::mem::size_of::<T>(),
            ..rows
        };
        fwd.print(&[("fused", t.fwd)]);
    }
}

/// Mixup CE forward + backward against the naive baseline, and forward only.
fn bench_ce<T: DeviceFloat>(b: &Bench, batch: usize, classes: usize) -> Res<()> {
    let mut lb = LossBench::<T>::new(b, batch, classes, [9, 4, 6])?;
    let spec = CeSpec::new(classes, 0.1, Reduction::Mean).unwrap();
    let times = lb.time_fused(b, &spec)?;
    let mut bufs = naive::NaiveBuffers::new(&b.stream, batch, classes)?;
    let (nk, nk32) = (
        b.naive().kernels(T::DTYPE)?,
        b.naive().kernels(ScalarType::F32)?,
    );
    let np = b.naive().plan(lb.plan.plan())?;
    // The naive loss and gradient against the fused ones, once. Both compute in f32 from the
    // same logits in different orders: the loss within 1e-4 of max(1, |loss|), each gradient element
    // within 1e-4 of its value plus 1e-5 of the scale 1/B (cancellation of p and t near 1),
    // plus the storage's rounding twice.
    {
        let mut fused_g = b.stream.clone_dtod(&lb.grad)?;
        let mut fused_loss = b.stream.alloc_zeros::<f32>(1)?;
        let (z, ls) = (&lb.logits[0], &lb.labels);
        let fused = LossCall {
            plan: &lb.plan,
            logits: z,
            labels: ls,
            loss: &mut fused_loss,
            grad: Some(&mut fused_g),
        };
        spec.call(&b.mixer, fused)?;
        b.naive().mixup_ce(
            &nk,
            &nk32,
            &np,
            &spec,
            z,
            ls,
            &mut bufs,
            &mut lb.loss,
            &mut lb.grad,
        )?;
        let what = format!("mixup CE {} {batch}x{classes}", T::DTYPE.name());
        let (nl, fl) = (
            b.stream.clone_dtoh(&lb.loss)?,
            b.stream.clone_dtoh(&fused_loss)?,
        );
        if let Some(i) = first_difference(&nl, &fl, |v| 1e-4 * v.abs().max(1.0)) {
            return Err(mismatch(&(what.clone() + ", loss"), i, &nl, &fl));
        }
        let (ng, fg) = (
            b.stream.clone_dtoh(&lb.grad)?,
            b.stream.clone_dtoh(&fused_g)?,
        );
        let scale = 1.0 / batch as f64;
        let tol = |v: f64| 1e-4 * v.abs() + 1e-5 * scale + 2.0 * storage_half_ulp(T::DTYPE, v);
        if let Some(i) = first_difference(&ng, &fg, tol) {
            return Err(mismatch(&(what + ", gradient"), i, &ng, &fg));
        }
    }
    let sets = lb.logits.len();
    let unfused = b.time(|i| {
        b.naive().mixup_ce(
            &nk,
            &nk32,
            &np,
            &spec,
            &lb.logits[i % sets],
            &lb.labels,
            &mut bufs,
            &mut lb.loss,
            &mut lb.grad,
        )
    })?;
    lb.print_rows("CE", &times, Some(("naive (7 launches)", unfused)));
    Ok(())
}

/// Mixup BCE forward + backward (timm's DeiT III settings: smoothing 0.1, threshold 0.2, Mean)
/// and forward only, with the CE's floors.
fn bench_bce<T: DeviceFloat>(b: &Bench, batch: usize, classes: usize) -> Res<()> {
    let mut lb = LossBench::<T>::new(b, batch, classes, [19, 5, 7])?;
    let spec = BceSpec::new(classes, 0.1, Reduction::Mean)?.with_target_threshold(0.2)?;
    let spec = DeviceBceSpec::new(&b.mixer, spec)?;
    let times = lb.time_fused(b, &spec)?;
    lb.print_rows("BCE", &times, None);
    Ok(())
}

/// An empty kernel's launch-to-completion time, the floor of a launch-bound op (256x1000).
fn bench_empty(b: &Bench) -> Res<()> {
    static EMPTY: ModuleSource = ModuleSource {
        name: "empty",
        source: "extern \"C\" __global__ void empty_kernel(int x) { if (x == 12345) asm volatile(\"trap;\"); }",
        hash: 0,
    };
    let cc = b.mixer.compute_capability();
    let target = Target::Sm(cc);
    let compiled = compile(&EMPTY, "empty", target, &options(target, "MIXUP_ALL", &[]))?;
    let module = b
        .stream
        .context()
        .load_module(Ptx::from_binary(compiled.image))?;
    let f = module.load_function("empty_kernel")?;
    let arg = 0i32;
    let t = b.time(|_| {
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel takes one int and touches no memory.
        unsafe { b.stream.launch_builder(&f).arg(&arg).launch(cfg)? };
        Ok(())
    })?;
    println!(
        "| empty kernel | - | 1x32 threads | launch + completion | {:.1} | {:.1}–{:.1} | - | - |",
        t.median * 1e3,
        t.min * 1e3,
        t.max * 1e3
    );
    Ok(())
}

/// NVRTC first-call cost: a fresh mixer with an empty cache folder (cold), then another fresh
/// mixer reading that folder (disk cache). Wall time of the first call, synchronized.
fn bench_first_call() -> Res<()> {
    let dir =
        std::env::temp_dir().join(format!("mixup-kernels-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("| first call | cold (NVRTC) ms | from disk cache ms |");
    println!("|---|---|---|");
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for pass in 0..2 {
        let m = CudaMixer::new(0)?.with_options(CudaMixerOptions {
            cache_dir: Some(dir.clone()),
            ..Default::default()
        })?;
        let s = m.stream().clone();
        let (batch, classes) = (256usize, 1000usize);
        let z = s.clone_htod(&random::<bf16>(batch * classes, 1))?;
        let ls = s.clone_htod(&labels(batch, classes, 2))?;
        let mut g = s.clone_htod(&random::<bf16>(batch * classes, 3))?;
        let mut loss = s.alloc_zeros::<f32>(1)?;
        let x = s.clone_htod(&random::<bf16>(8 * 3 * 32 * 32, 4))?;
        let mut out = s.clone_htod(&random::<bf16>(8 * 3 * 32 * 32, 5))?;
        let mut plan = DevicePlan::new(&m);
        plan.upload(&MixPlan::from_parts(&random_pairs(batch, 1), &lams(batch))?)?;
        let spec = CeSpec::new(classes, 0.1, Reduction::Mean).unwrap();
        let call = LossCall {
            plan: &plan,
            logits: &z,
            labels: &ls,
            loss: &mut loss,
            grad: Some(&mut g),
        };
        s.synchronize()?;
        let t0 = Instant::now();
        spec.call(&m, call)?;
        s.synchronize()?;
        let ce = t0.elapsed().as_secs_f64() * 1e3;
        let mut p8 = DevicePlan::new(&m);
        p8.upload(&MixPlan::from_parts(&random_permutation(8, 3), &lams(8))?)?;
        let t0 = Instant::now();
        m.mix(
            &p8,
            &SampleShape::channels_first(3, 32, 32),
            &x.as_view(),
            &mut out.as_view_mut(),
        )?;
        s.synchronize()?;
        let mix = t0.elapsed().as_secs_f64() * 1e3;
        // One kernel each (ce_warp_bf16, mix_gather_bf16): compiled alone on a first call.
        for (i, (op, t)) in [
            ("mixup_ce bf16 256x1000 (whole call)", ce),
            ("mix bf16 (whole call)", mix),
        ]
        .into_iter()
        .enumerate()
        {
            if pass == 0 {
                rows.push((op.to_string(), t, 0.0));
            } else {
                rows[i].2 = t;
            }
        }
    }
    for (op, cold, warm) in rows {
        println!("| {op} | {cold:.1} | {warm:.1} |");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sweep = args.iter().any(|a| a == "--sweep");
    let filter: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    let mixer = match CudaMixer::new(0) {
        Ok(m) => m,
        Err(e) => {
            if std::env::var("MIXUP_REQUIRE_GPU").as_deref() == Ok("1") {
                eprintln!("error: MIXUP_REQUIRE_GPU=1 but no usable GPU: {e}");
                std::process::exit(1);
            }
            println!("GPU benchmark SKIPPED: no CUDA device ({e})");
            return;
        }
    };
    let ctx = mixer.stream().context().clone();
    let l2 = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        .unwrap_or(50 << 20)
        .max(1) as usize;
    let name = ctx.name().unwrap_or_default();
    let (dmaj, dmin) = {
        let mut v = 0i32;
        // SAFETY: valid out-pointer.
        unsafe { mixup_kernels::cuda::cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        (v / 1000, (v % 1000) / 10)
    };
    let nv = mixer.nvrtc_version();
    println!(
        "# mixup-kernels GPU benchmark\n\ndevice: {name} ({}, {} SMs, L2 {} MB), CUDA driver {dmaj}.{dmin}, NVRTC {}.{}, kernels for {}\n",
        mixer.compute_capability(),
        mixer.multiprocessors(),
        l2 >> 20,
        nv.0,
        nv.1,
        mixer.target_arch()
    );
    // The sweep never runs the naive baseline: skip compiling naive.cu.
    let naive = if sweep {
        None
    } else {
        match naive::Naive::new(mixer.stream(), mixer.compute_capability()) {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("error: compiling the naive baseline: {e}");
                std::process::exit(1);
            }
        }
    };
    let b = Bench {
        stream: mixer.stream().clone(),
        mixer,
        naive,
        l2,
        reps: if quick { 10 } else { 50 },
        warmup: if quick { 2 } else { 5 },
        filter,
        quick,
    };
    println!("| op | dtype | shape | variant | median µs | min–max µs | GB/s at floor | vs copy |");
    println!("|---|---|---|---|---|---|---|---|");
    if sweep {
        if let Some(f) = b
            .filter
            .iter()
            .find(|f| !sweep::FAMILIES.contains(&f.as_str()))
        {
            eprintln!(
                "error: no sweep family `{f}` (families: {:?})",
                sweep::FAMILIES
            );
            std::process::exit(2);
        }
        let failed = sweep::run(&b, &b.filter);
        if failed > 0 {
            eprintln!("error: {failed} sweep point(s) or shape(s) failed (rows marked error)");
            std::process::exit(1);
        }
        return;
    }
    let errors = std::cell::Cell::new(0usize);
    let report = |what: &str, r: Res<()>| {
        if let Err(e) = r {
            errors.set(errors.get() + 1);
            println!("| {what} | error: {e} | | | | | | |");
        }
    };
    if b.wanted("empty") {
        report("empty kernel", bench_empty(&b));
    }
    if b.wanted("mix") {
        let batches: &[usize] = if b.quick { &[256] } else { &[256, 1024] };
        for &batch in batches {
            report("mix f32", bench_mix::<f32>(&b, batch));
            report("mix bf16", bench_mix::<bf16>(&b, batch));
            report("mix f16", bench_mix::<f16>(&b, batch));
        }
    }
    if b.wanted("mix_normalize") {
        report("mix_normalize u8→f32", bench_mix_normalize::<f32>(&b, 256));
        report(
            "mix_normalize u8→bf16",
            bench_mix_normalize::<bf16>(&b, 256),
        );
    }
    if b.wanted("soft") {
        report("soft targets f32", bench_soft::<f32>(&b, 1024, 1000));
        report("soft targets bf16", bench_soft::<bf16>(&b, 1024, 1000));
    }
    if b.wanted("ce") || b.wanted("CE") {
        for (batch, classes) in [
            (256usize, 1000usize),
            (4096, 32_000),
            (4096, 128_256),
            (16_384, 50_257),
        ] {
            report("mixup CE f32", bench_ce::<f32>(&b, batch, classes));
            report("mixup CE bf16", bench_ce::<bf16>(&b, batch, classes));
        }
    }
    if b.wanted("bce") || b.wanted("BCE") {
        for (batch, classes) in [(256usize, 1000usize), (4096, 32_000)] {
            report("mixup BCE f32", bench_bce::<f32>(&b, batch, classes));
            report("mixup BCE bf16", bench_bce::<bf16>(&b, batch, classes));
        }
    }
    if b.wanted("first")
        && let Err(e) = bench_first_call()
    {
        errors.set(errors.get() + 1);
        println!("first-call benchmark failed: {e}");
    }
    if errors.get() > 0 {
        eprintln!(
            "error: {} benchmark group(s) failed (rows marked error)",
            errors.get()
        );
        std::process::exit(1);
    }
}
