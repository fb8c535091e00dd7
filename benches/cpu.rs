//! CPU benchmarks: every op beside a plain parallel copy moving the same number of bytes.
//!
//! `Throughput::Bytes` is the op's byte floor (`/work/shared/REFERENCE.md`): the bytes it must
//! read plus the bytes it must write. The copy of each group moves the same total (it reads and
//! writes `floor / 2` bytes, with `copy_from_slice` over rayon's threads), so the ratio of the
//! two throughputs is how close the op gets to the machine's copy bandwidth.
//!
//! `cargo bench --bench cpu` (about four minutes on 2 cores). Filter with a group name, e.g.
//! `cargo bench --bench cpu -- ce_fwd_bwd`.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use mixup_kernels::ImageSize;
use mixup_kernels::{
    BceSpec, CeSpec, Element, FloatElement, GradOutput, MemoryFormat, MixConfig, MixPlan, Mode,
    Normalize, PartnerRule, Reduction, SampleShape, Sampler, bf16, cpu,
};
use rayon::prelude::*;

const B: usize = 256;
const C_IMG: usize = 3;
const H: usize = 224;
const W: usize = 224;

/// Values in [-1, 1) rounded to T, from a cheap deterministic hash (setup time matters at
/// 4096×32000).
fn data<T: Element>(n: usize, seed: u64) -> Vec<T> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut z = (i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z ^= z >> 29;
            z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^= z >> 32;
            T::from_f32((z >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// The comparison: a parallel copy of `bytes / 2` bytes (so `bytes` move in total).
fn bench_copy(g: &mut BenchmarkGroup<'_, WallTime>, bytes: usize) {
    let n = bytes / 2 / 4;
    let src: Vec<f32> = data(n, 1);
    let mut dst = vec![0.0f32; n];
    // Pieces of 1 MiB at most and at least 4 per thread, as the ops' own tasks.
    let piece = n
        .div_ceil(4 * rayon::current_num_threads())
        .clamp(1, 1 << 18);
    g.bench_function("copy", |b| {
        b.iter(|| {
            dst.par_chunks_mut(piece)
                .zip(src.par_chunks(piece))
                .for_each(|(d, s)| d.copy_from_slice(s));
            black_box(&mut dst);
        })
    });
}

/// `MIXUP_BENCH_QUICK=1`: 0.15 s of warm-up and 0.6 s of measurement per large benchmark instead of
/// 0.5 s and 3 s (the GPU machine's CPU rows, scripts/gpu/run.sh, where time is counted).
fn quick() -> bool {
    std::env::var_os("MIXUP_BENCH_QUICK").is_some_and(|v| v == "1")
}

fn big_group<'a>(c: &'a mut Criterion, name: &str, floor: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    let (warm_up, measure) = if quick() { (150, 600) } else { (500, 3000) };
    // Flat sampling: every sample runs the same number of iterations, so 10 samples of a
    // 100 ms op take about a second instead of the 55 iterations of linear sampling.
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(warm_up))
        .measurement_time(Duration::from_millis(measure))
        .throughput(Throughput::Bytes(floor as u64));
    g
}

fn plan(partner: PartnerRule, mixup: f64, cutmix: f64, batch: usize) -> MixPlan {
    let cfg = MixConfig {
        mixup_alpha: mixup,
        cutmix_alpha: cutmix,
        mode: Mode::Elem,
        partner,
        ..MixConfig::timm(1000)
    };
    Sampler::new(cfg, 0)
        .unwrap()
        .plan_images(
            0,
            batch,
            ImageSize {
                height: H,
                width: W,
            },
        )
        .unwrap()
        // Benchmarked with several class counts: forget the config's spec.
        .with_targets(None)
}

fn mix_inputs<T: Element>(c: &mut Criterion) {
    let name = T::DTYPE.name();
    let layout = SampleShape::channels_first(C_IMG, H, W);
    let n = B * C_IMG * H * W;
    let bytes = n * std::mem::size_of::<T>();
    let x: Vec<T> = data(n, 7);

    // Random pairs (an involution), MixUp, in place: read each row once, write it once.
    let pairs = plan(PartnerRule::RandomPairs, 1.0, 0.0, B);
    let mut g = big_group(c, &format!("mix_pairs_in_place_{name}"), 2 * bytes);
    let mut y = x.clone();
    g.bench_function("op", |b| {
        b.iter(|| cpu::mix_in_place(&pairs, &layout, black_box(&mut y)).unwrap())
    });
    bench_copy(&mut g, 2 * bytes);
    g.finish();
    drop(y);

    // A random permutation, MixUp, out of place: two reads and one write per element.
    let perm = plan(PartnerRule::Permutation, 1.0, 0.0, B);
    let mut out = vec![T::default(); n];
    let mut g = big_group(c, &format!("mix_perm_{name}"), 3 * bytes);
    g.bench_function("op", |b| {
        b.iter(|| cpu::mix(&perm, &layout, black_box(&x), &mut out).unwrap())
    });
    bench_copy(&mut g, 3 * bytes);
    g.finish();

    // CutMix per sample (elem mode), permutation, NCHW, out of place: every output element
    // comes from exactly one input element, so one read and one write.
    let cut = plan(PartnerRule::Permutation, 0.0, 1.0, B);
    let mut g = big_group(c, &format!("mix_cutmix_nchw_{name}"), 2 * bytes);
    g.bench_function("op", |b| {
        b.iter(|| cpu::mix(&cut, &layout, black_box(&x), &mut out).unwrap())
    });
    bench_copy(&mut g, 2 * bytes);
    g.finish();
}

fn mix_inputs_f32(c: &mut Criterion) {
    mix_inputs::<f32>(c);
}

fn mix_inputs_bf16(c: &mut Criterion) {
    mix_inputs::<bf16>(c);
}

fn soft_targets(c: &mut Criterion) {
    let classes = 1000;
    let p = plan(PartnerRule::Permutation, 1.0, 0.0, B);
    let labels: Vec<u32> = (0..B as u32).map(|i| i * 7 % classes as u32).collect();
    let spec = MixConfig::timm(classes).target_spec().unwrap();
    let mut out = vec![0.0f32; B * classes];
    let floor = B * classes * 4;
    let mut g = c.benchmark_group("soft_targets_256x1000_f32");
    g.sample_size(50)
        .throughput(Throughput::Bytes(floor as u64));
    g.bench_function("op", |b| {
        b.iter(|| cpu::soft_targets(&p, &spec, &labels, black_box(&mut out)).unwrap())
    });
    bench_copy(&mut g, floor);
    g.finish();
}

/// A fused loss (forward + backward) at `batch × classes` beside the copy of its floor (one read
/// of the logits, one write of the gradient).
fn loss_bench<T: FloatElement>(
    c: &mut Criterion,
    what: &str,
    batch: usize,
    classes: usize,
    mut op: impl FnMut(&MixPlan, &[T], &[u32], &mut [T]),
) {
    let p = plan(PartnerRule::Permutation, 1.0, 0.0, batch);
    let labels: Vec<u32> = (0..batch as u32)
        .map(|i| (i * 7919) % classes as u32)
        .collect();
    // Logits of a trained-looking scale: [-8, 8).
    let logits: Vec<T> = data::<f32>(batch * classes, 3)
        .into_par_iter()
        .map(|v| T::from_f32(8.0 * v))
        .collect();
    let mut grad = vec![T::default(); logits.len()];
    let s = std::mem::size_of::<T>();
    let floor = batch * classes * 2 * s;
    let name = format!("{what}_fwd_bwd_{batch}x{classes}_{}", T::DTYPE.name());
    let mut g = if batch * classes > 1 << 24 {
        big_group(c, &name, floor)
    } else {
        let mut g = c.benchmark_group(&name);
        g.sample_size(50)
            .throughput(Throughput::Bytes(floor as u64));
        g
    };
    g.bench_function("op", |b| {
        b.iter(|| op(&p, black_box(&logits), &labels, &mut grad))
    });
    bench_copy(&mut g, floor);
    g.finish();
}

fn ce<T: FloatElement>(c: &mut Criterion, batch: usize, classes: usize) {
    let spec = CeSpec::new(classes, 0.1, Reduction::Mean).unwrap();
    loss_bench::<T>(c, "ce", batch, classes, |p, z, labels, grad| {
        cpu::mixup_ce(p, &spec, z, labels, GradOutput::default(), None, grad)
            .unwrap()
            .unwrap();
    });
}

/// timm's DeiT III / RSB setting: smoothing 0.1 in the mixed target, no threshold or weights.
fn bce<T: FloatElement>(c: &mut Criterion, batch: usize, classes: usize) {
    let spec = BceSpec::new(classes, 0.1, Reduction::Mean).unwrap();
    loss_bench::<T>(c, "bce", batch, classes, |p, z, labels, grad| {
        cpu::mixup_bce(p, &spec, z, labels, GradOutput::default(), None, grad)
            .unwrap()
            .unwrap();
    });
}

fn cross_entropy(c: &mut Criterion) {
    ce::<f32>(c, 256, 1000);
    ce::<bf16>(c, 256, 1000);
    ce::<f32>(c, 4096, 32000);
    ce::<bf16>(c, 4096, 32000);
}

fn binary_cross_entropy(c: &mut Criterion) {
    bce::<f32>(c, 256, 1000);
    bce::<bf16>(c, 256, 1000);
    bce::<f32>(c, 4096, 32000);
    bce::<bf16>(c, 4096, 32000);
}

/// The fused pixels → model input op at 256×224×224×3: decoded u8 channels-last images, timm's
/// plan (flip partner, MixUp or CutMix per sample), ImageNet constants, into an NCHW batch.
/// The floor reads the u8 batch once (the flip is an involution: each pair is read once) and
/// writes the output once. Beside it: the crate's own unfused sequence (mix the u8 batch, then
/// normalize it in a second pass) and the copy of the floor. PyTorch's CPU sequence:
/// `benches/mix_normalize_torch.py`.
fn fused_input<O: FloatElement>(c: &mut Criterion, out_format: MemoryFormat, rint: bool) {
    let cfg = MixConfig {
        mixup_alpha: 0.8,
        cutmix_alpha: 1.0,
        mode: Mode::Elem,
        partner: PartnerRule::Flip,
        ..MixConfig::timm(1000)
    };
    let p = Sampler::new(cfg, 0)
        .unwrap()
        .plan_images(
            0,
            B,
            ImageSize {
                height: H,
                width: W,
            },
        )
        .unwrap();
    let layout = SampleShape::channels_last(H, W, C_IMG);
    let n = B * C_IMG * H * W;
    let x: Vec<u8> = data::<f32>(n, 5)
        .into_par_iter()
        .map(|v| (v * 127.5 + 127.5) as u8)
        .collect();
    let norm = Normalize::imagenet_u8().with_u8_rounding(rint);
    let mut out = vec![O::default(); n];
    let floor = n * (1 + std::mem::size_of::<O>());
    let name = format!(
        "mix_normalize_{B}x{H}x{W}x{C_IMG}_u8_nhwc_to_{}_{}{}",
        out_format.name().to_lowercase(),
        O::DTYPE.name(),
        if rint { "_rint" } else { "" }
    );
    let mut g = big_group(c, &name, floor);
    g.bench_function("fused", |b| {
        b.iter(|| {
            cpu::mix_normalize(&p, &layout, &norm, black_box(&x), out_format, &mut out).unwrap()
        })
    });
    let identity = MixPlan::identity(B).unwrap();
    let mut mixed = vec![0u8; n];
    g.bench_function("unfused_mix_then_normalize", |b| {
        b.iter(|| {
            cpu::mix(&p, &layout, black_box(&x), &mut mixed).unwrap();
            cpu::mix_normalize(&identity, &layout, &norm, &mixed, out_format, &mut out).unwrap()
        })
    });
    bench_copy(&mut g, floor);
    g.finish();
}

fn mix_normalize(c: &mut Criterion) {
    fused_input::<f32>(c, MemoryFormat::ChannelsFirst, true);
    fused_input::<f32>(c, MemoryFormat::ChannelsFirst, false);
    fused_input::<bf16>(c, MemoryFormat::ChannelsFirst, false);
    fused_input::<f32>(c, MemoryFormat::ChannelsLast, false);
}

criterion_group!(
    benches,
    mix_inputs_f32,
    mix_inputs_bf16,
    soft_targets,
    cross_entropy,
    binary_cross_entropy,
    mix_normalize
);
criterion_main!(benches);
