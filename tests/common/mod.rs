//! Shared test helpers: tolerance checks, deterministic data, awkward shapes and plans.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use mixup_kernels::ImageSize;
use mixup_kernels::{
    CutBox, Element, GradOutput, MemoryFormat, MixConfig, MixPlan, Mode, Normalize, PartnerRule,
    Reduction, SampleShape, Sampler, ScalarType,
};

/// The image size `height × width` (pixels).
pub fn image(height: usize, width: usize) -> ImageSize {
    ImageSize { height, width }
}

/// The CutMix box of pixel `rows` × `cols` (half-open ranges).
pub fn cut(rows: std::ops::Range<u32>, cols: std::ops::Range<u32>) -> CutBox {
    CutBox {
        y0: rows.start,
        y1: rows.end,
        x0: cols.start,
        x1: cols.end,
    }
}

/// Batch sizes every op is tried with (0 only where the op allows it).
pub const BATCHES: [usize; 5] = [0, 1, 2, 5, 7];
/// Row lengths: a single element, shorter than a vector, just under a multiple of the 16 lanes,
/// and longer than a task boundary is not (4097 = 2^12 + 1).
pub const ROWS: [usize; 4] = [1, 3, 63, 4097];
/// Class counts for the targets and the loss.
pub const CLASSES: [usize; 5] = [1, 2, 3, 1000, 50_000];

/// The tests' one generator (SplitMix64): deterministic, independent of `rand`'s algorithms.
/// It implements `rand::RngCore`, so `rand::Rng`'s methods (`random_range`...) work on it.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x005E_ED0F_7E57)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`, as f32.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit() as f32
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}

impl rand::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        (TestRng::next_u64(self) >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        TestRng::next_u64(self)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let v = TestRng::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `n` values uniform in `[lo, hi)`, rounded to `T` (for `u8`: integers 0..=255).
pub fn random_vec<T: Element>(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<T> {
    let mut rng = TestRng::new(seed);
    (0..n)
        .map(|_| {
            if T::DTYPE == ScalarType::U8 {
                T::from_f32(rng.below(256) as f32)
            } else {
                T::from_f32(rng.range(lo, hi))
            }
        })
        .collect()
}

/// `n` labels in `0..classes`.
pub fn random_labels(n: usize, classes: usize, seed: u64) -> Vec<u32> {
    let mut rng = TestRng::new(seed);
    (0..n).map(|_| rng.below(classes) as u32).collect()
}

/// Widens a slice to f64 (exact for every element type).
pub fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| f64::from(x.to_f32())).collect()
}

/// A tolerance `|got - want| <= abs + rel·|want|`.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub abs: f64,
    pub rel: f64,
}

impl Tol {
    pub const fn new(abs: f64, rel: f64) -> Self {
        Self { abs, rel }
    }

    /// This tolerance widened by the rounding of an f32 result to `T` (half an ulp of `T`).
    pub fn stored_as<T: Element>(self) -> Self {
        let s = storage_tol::<T>();
        Self::new(self.abs + s.abs, self.rel + s.rel)
    }
}

/// Half an ulp of `T`, relative (for normals) and absolute (for subnormals): the error of
/// rounding an exact value to `T`. f16 keeps 11 significant bits (half ulp ≤ 2^-11 of the
/// value) and its subnormals are spaced 2^-24; bf16 keeps 8 bits (≤ 2^-8) with f32's range.
pub fn storage_tol<T: Element>() -> Tol {
    match T::DTYPE {
        ScalarType::F32 => Tol::new(0.0, 0.0),
        ScalarType::F16 => Tol::new(2f64.powi(-25), 2f64.powi(-11)),
        ScalarType::BF16 => Tol::new(1e-38, 2f64.powi(-8)),
        ScalarType::U8 => Tol::new(0.5, 0.0),
    }
}

/// What [`assert_close`] allows at each index: a [`Tol`], or a closure
/// `|index, want| -> allowed absolute error` for tolerances that vary along the data.
pub trait Tolerance {
    /// The allowed `|got - want|` at `index`.
    fn bound(&self, index: usize, want: f64) -> f64;
}

impl Tolerance for Tol {
    fn bound(&self, _index: usize, want: f64) -> f64 {
        self.abs + self.rel * want.abs()
    }
}

impl<F: Fn(usize, f64) -> f64> Tolerance for F {
    fn bound(&self, index: usize, want: f64) -> f64 {
        self(index, want)
    }
}

/// Asserts `got ≈ want` element-wise (the one comparison of every test binary); the message
/// names the first failing index, both values, the bound and how many elements fail. A NaN
/// always fails; an infinity passes only against the same infinity (whatever the tolerance: a
/// relative bound against an infinite `want` would otherwise be infinite too).
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: impl Tolerance) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut first = None;
    let mut count = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let bound = tol.bound(i, w);
        let err = (g - w).abs();
        // NaN never passes: an op returning NaN where the reference is finite is a failure.
        let ok = if g.is_infinite() || w.is_infinite() {
            g == w
        } else {
            err <= bound
        };
        if !ok {
            count += 1;
            if first.is_none() {
                first = Some((i, g, w, err, bound));
            }
        }
    }
    if let Some((i, g, w, err, bound)) = first {
        panic!(
            "{what}: {count} of {} elements out of tolerance; first at index {i}: got {g:e}, \
             expected {w:e}, error {err:e} > {bound:e}",
            got.len(),
        );
    }
}

/// One test binary's `#[test]` per element type, each running `$run::<T>()`:
/// `tests_per_dtype!(sweep: matches_reference_f32 => f32, ...)`.
#[macro_export]
macro_rules! tests_per_dtype {
    ($run:ident: $($name:ident => $t:ty),+ $(,)?) => {$(
        #[test]
        fn $name() {
            $run::<$t>();
        }
    )+};
}

/// A loss entry point of the CPU path (`cpu::mixup_ce`, `cpu::mixup_bce`) for the spec type `S`.
pub type CpuLoss<S, T> = fn(
    &MixPlan,
    &S,
    &[T],
    &[u32],
    GradOutput<'_>,
    Option<&mut [f32]>,
    &mut [T],
) -> mixup_kernels::Result<Option<f32>>;

/// A forward-only loss entry point of the CPU path (`cpu::mixup_ce_forward`,
/// `cpu::mixup_bce_forward`) for the spec type `S`.
pub type CpuForward<S, T> =
    fn(&MixPlan, &S, &[T], &[u32], Option<&mut [f32]>) -> mixup_kernels::Result<Option<f32>>;

/// One call of a loss (`S`: `CeSpec` or `BceSpec`) to check against the reference.
pub struct LossCase<'a, S, T> {
    pub what: String,
    pub plan: &'a MixPlan,
    pub spec: S,
    pub logits: &'a [T],
    pub labels: &'a [u32],
    pub grad_output: GradOutput<'a>,
    /// Largest |logit|, for the loss tolerance.
    pub range: f64,
}

impl<S, T: Element> LossCase<'_, S, T> {
    /// Runs `op` (the gradient filled with 123 and the per-sample losses with -1 first, so an
    /// element left unwritten shows) and checks that it gives a reduced loss exactly under Mean
    /// and Sum, not under `reduction` None. Returns the reduced loss, the per-sample losses and
    /// the gradient.
    pub fn run(&self, op: CpuLoss<S, T>, reduction: Reduction) -> (Option<f32>, Vec<f32>, Vec<T>) {
        let mut grad = vec![T::from_f32(123.0); self.logits.len()];
        let mut losses = vec![-1.0f32; self.plan.len()];
        let (plan, spec, up) = (self.plan, &self.spec, self.grad_output);
        let loss = op(
            plan,
            spec,
            self.logits,
            self.labels,
            up,
            Some(&mut losses),
            &mut grad,
        )
        .unwrap();
        let what = &self.what;
        // A scalar exactly for Mean and Sum; under Reduction::None the per-sample losses.
        assert_eq!(loss.is_none(), reduction == Reduction::None, "{what}");
        (loss, losses, grad)
    }

    /// Checks a `[B, classes]` gradient row by row against the reference's, row i within
    /// `tol(up)`, `up` being row i's upstream gradient.
    pub fn assert_grad_rows(
        &self,
        grad: &[T],
        want: &[f64],
        classes: usize,
        tol: impl Fn(f64) -> Tol,
    ) {
        for i in 0..self.plan.len() {
            let up = match self.grad_output {
                GradOutput::Scalar(g) => g as f64,
                GradOutput::PerSample(g) => g[i] as f64,
            };
            let row = i * classes..(i + 1) * classes;
            assert_close(
                &format!("{}: grad row {i}", self.what),
                &to_f64(&grad[row.clone()]),
                &want[row],
                tol(up),
            );
        }
    }
}

/// Asserts two slices have identical bits.
#[track_caller]
pub fn assert_same_bits<T: Element>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (gb, wb) = (g.to_f32().to_bits(), w.to_f32().to_bits());
        assert!(
            gb == wb,
            "{what}: index {i} differs: got {g:?} ({gb:#x}), expected {w:?} ({wb:#x})"
        );
    }
}

/// Image shapes `(channels, height, width)` every mix + normalize test tries: odd sizes, a
/// single pixel, 4 channels, and one channel of prime sides.
pub const SMALL_IMAGES: [(usize, usize, usize); 4] = [(3, 5, 7), (1, 1, 1), (4, 3, 2), (1, 13, 17)];

/// Both memory formats, for the mix + normalize tests' inputs and outputs.
pub const FORMATS: [MemoryFormat; 2] = [MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast];

/// The image layout of `c` channels of `h` × `w` pixels in `format`.
pub fn layout(format: MemoryFormat, c: usize, h: usize, w: usize) -> SampleShape {
    match format {
        MemoryFormat::ChannelsFirst => SampleShape::channels_first(c, h, w),
        MemoryFormat::ChannelsLast => SampleShape::channels_last(h, w, c),
    }
}

/// Normalize constants for `c` channels in `[0, 1]` units, scaled to the input's (255 for u8):
/// ImageNet's for 3 channels, else means from 0.1307 up and stds from 0.3081 down by `steps`
/// (mean, std) a channel, cycling every 50 (means) and 100 (stds) channels so that thousands of
/// channels keep a positive std.
pub fn norm_with_steps(c: usize, scale: f64, (mean_step, std_step): (f64, f64)) -> Normalize {
    if c == 3 {
        return Normalize::new(&Normalize::IMAGENET_MEAN, &Normalize::IMAGENET_STD, scale).unwrap();
    }
    let mean: Vec<f64> = (0..c)
        .map(|k| 0.1307 + mean_step * (k % 50) as f64)
        .collect();
    let std: Vec<f64> = (0..c)
        .map(|k| 0.3081 - std_step * (k % 100) as f64)
        .collect();
    Normalize::new(&mean, &std, scale).unwrap()
}

/// [`norm_with_steps`] with steps small enough for the thousands of channels the kernel
/// tests use.
pub fn norm_for(c: usize, scale: f64) -> Normalize {
    norm_with_steps(c, scale, (0.01, 0.002))
}

/// The error bound of mix + normalize computed in f32: the lerp (two products, a sum and
/// `1 − λ`, each rounded: 4 u of the larger input), the subtraction (u of `|v| + |mean|`) and
/// the division (u of the result), all divided by the channel's std; then half an ulp of `O`.
/// `max_in` is the largest input magnitude. Loose enough for any correct order of f32
/// operations, tight enough that a wrong channel constant, a wrong pixel or a wrong box column
/// fails by orders of magnitude.
pub fn norm_tol<O: Element>(norm: &Normalize, max_in: f64) -> Tol {
    let u = 2f64.powi(-24);
    let worst = (0..norm.channels())
        .map(|c| {
            let (m, s) = (f64::from(norm.mean()[c]), f64::from(norm.std()[c]));
            (6.0 * u * (max_in + m.abs())) / s
        })
        .fold(0.0, f64::max);
    Tol::new(worst, 2.0 * u).stored_as::<O>()
}

/// The layouts the mix kernels are tried on: rows of 1, 3, 63 and 4097 elements (a single
/// element, less than a vector, one short of a multiple of 16 lanes, longer than a task
/// boundary), small and 32×32 images in both memory formats, images longer than one chunk of
/// a mix kernel's row (3×40×40, 37×29×5: CutMix boxes beside chunk boundaries and head/tail
/// elements under the default tuning), and odd ones (1×1 with one channel, one column, five
/// channels).
pub fn mix_layouts() -> Vec<SampleShape> {
    vec![
        SampleShape::rows(1),
        SampleShape::rows(3),
        SampleShape::rows(63),
        SampleShape::rows(4097),
        SampleShape::channels_first(3, 5, 7),
        SampleShape::channels_last(5, 7, 3),
        SampleShape::channels_first(3, 32, 32),
        SampleShape::channels_last(17, 9, 4),
        SampleShape::channels_first(3, 40, 40),
        SampleShape::channels_last(37, 29, 5),
        SampleShape::channels_last(1, 1, 1),
        SampleShape::channels_first(1, 3, 1),
        SampleShape::channels_last(2, 9, 5),
    ]
}

/// A deterministic pseudo-random vector in `[-scale, scale)` (xorshift; no dependence on a
/// framework's generator).
pub fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// An elem-mode plan of `b` samples of `h × w` images with both MixUp and CutMix samples, so
/// both code paths run in one call.
pub fn mixed_plan(b: usize, h: usize, w: usize, seed: u64) -> MixPlan {
    let cfg = MixConfig {
        mixup_alpha: 1.0,
        cutmix_alpha: 1.0,
        switch_prob: 0.5,
        mode: Mode::Elem,
        ..MixConfig::timm(10)
    };
    let sampler = Sampler::new(cfg, seed).unwrap();
    // Draw until the plan holds both kinds (the draw is deterministic, so this is too).
    (0..64)
        .map(|step| sampler.plan_images(step, b, image(h, w)).unwrap())
        .find(|p| p.has_cutmix() && p.samples().any(|s| s.cut.is_none() && s.lam < 1.0))
        .expect("a plan with both MixUp and CutMix samples")
}

/// Whether element `k` of a sample of `shape` lies inside the CutMix box `cut`: `None` when the
/// sample lerps (no box, or rows), else `Some(inside)`.
pub fn in_box(shape: &SampleShape, cut: Option<CutBox>, k: usize) -> Option<bool> {
    cut.zip(shape.pixel_of(k))
        .map(|(bx, (y, x))| bx.contains(y, x))
}

/// The sampler configuration behind [`sampler_plans`]: MixUp and CutMix both on, chosen per
/// batch/pair/sample by the mode, and `prob` < 1 so some samples stay unmixed.
pub fn config(partner: PartnerRule, mode: Mode) -> MixConfig {
    MixConfig {
        mixup_alpha: 0.8,
        cutmix_alpha: 1.0,
        prob: 0.9,
        switch_prob: 0.5,
        mode,
        partner,
        ..MixConfig::timm(10)
    }
}

/// A sampler of fastai's v2 MixUp for `classes` classes with label smoothing `smoothing`: the
/// training loops of the candle and burn tests.
pub fn fastai_sampler(classes: usize, smoothing: f64, seed: u64) -> Sampler {
    let config = MixConfig {
        label_smoothing: smoothing,
        ..MixConfig::fastai_v2_mixup(classes)
    };
    Sampler::new(config, seed).unwrap()
}

/// Plans from the sampler for every partner rule and mode (Pair needs an involution), two
/// steps each, for `batch` samples of `image` pixels. The plans forget their config's target
/// spec (`with_targets(None)`), so the op tests can pair them with any class count.
pub fn sampler_plans(batch: usize, image: (usize, usize)) -> Vec<(String, MixPlan)> {
    let mut out = Vec::new();
    for partner in [
        PartnerRule::Flip,
        PartnerRule::Permutation,
        PartnerRule::RandomPairs,
        PartnerRule::Roll,
    ] {
        for mode in [Mode::Batch, Mode::Pair, Mode::Elem] {
            if mode == Mode::Pair && !partner.is_involution() {
                continue;
            }
            let sampler = Sampler::new(config(partner, mode), 7).expect("valid config");
            for step in 0..2 {
                let size = ImageSize {
                    height: image.0,
                    width: image.1,
                };
                let plan = sampler
                    .plan_images(step, batch, size)
                    .expect("plan")
                    .with_targets(None);
                out.push((format!("{partner:?}/{mode:?}/step {step}"), plan));
            }
        }
    }
    out
}

/// Only the plans whose partner is an involution (usable in place).
pub fn involution_plans(batch: usize, image: (usize, usize)) -> Vec<(String, MixPlan)> {
    sampler_plans(batch, image)
        .into_iter()
        .chain(hand_plans(batch, image.0, image.1))
        .filter(|(_, p)| p.is_involution())
        .collect()
}

/// A random involution on `0..n` (pairs neighbours of a shuffle; odd n leaves one fixed).
pub fn random_pairs(n: usize, rng: &mut TestRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut partner: Vec<usize> = (0..n).collect();
    for k in 0..n / 2 {
        let (a, b) = (order[2 * k], order[2 * k + 1]);
        partner[a] = b;
        partner[b] = a;
    }
    partner
}

/// A random cycle `i → i+1 mod n` after a shuffle: a permutation that is not an involution for
/// n ≥ 3.
pub fn random_cycle(n: usize, rng: &mut TestRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut partner = vec![0; n];
    for k in 0..n {
        partner[order[k]] = order[(k + 1) % n];
    }
    partner
}

/// Hand-built plans with the boxes samplers rarely draw: touching each edge, empty (zero rows
/// or zero columns), the full image, a single pixel, next to MixUp samples and self-partnered
/// ones, with pair and cycle partners and λ from 0 to 1.
pub fn hand_plans(batch: usize, height: usize, width: usize) -> Vec<(String, MixPlan)> {
    let (h, w) = (height as u32, width as u32);
    let boxes = [
        Some(cut(0..h, 0..w)),                         // full image
        Some(cut(0..h.div_ceil(2), 0..w.div_ceil(2))), // top-left corner
        Some(cut(h / 2..h, w / 2..w)),                 // bottom-right corner
        Some(cut(0..0, 0..w)),                         // no rows
        Some(cut(0..h, w / 2..w / 2)),                 // no columns
        None,                                          // MixUp
        Some(cut(h / 2..h / 2 + 1, 0..w)),             // one full line
        Some(cut(h - 1..h, w - 1..w)),                 // last pixel
        Some(cut(0..h, 0..1)),                         // left column
    ];
    let mut rng = TestRng::new(batch as u64 * 31 + u64::from(h) * 7 + u64::from(w));
    // λ 0 and 1, 0.5 and 0.25 (lerps of u8 values on .5 ties: rounded to even in the u8
    // modes, as numpy's `rint`), and random ones.
    let lam: Vec<f32> = (0..batch)
        .map(|i| match i % 8 {
            0 | 4 => 0.0,
            1 | 5 => 1.0,
            2 => 0.5,
            6 => 0.25,
            _ => rng.range(0.0, 1.0),
        })
        .collect();
    let mut out = Vec::new();
    for (name, partner) in [
        ("pairs", random_pairs(batch, &mut rng)),
        ("cycle", random_cycle(batch, &mut rng)),
        ("identity", (0..batch).collect()),
    ] {
        for shift in 0..2 {
            let b: Vec<Option<CutBox>> = (0..batch)
                .map(|i| boxes[(i + shift * 3) % boxes.len()])
                .collect();
            let plan = MixPlan::with_boxes(&partner, &lam, &b, ImageSize { height, width })
                .expect("valid plan");
            out.push((format!("hand {name} boxes+{shift}"), plan));
        }
        // Every sample with the full-image box, and a MixUp-only plan.
        let full = vec![boxes[0]; batch];
        out.push((
            format!("hand {name} all full"),
            MixPlan::with_boxes(&partner, &lam, &full, ImageSize { height, width })
                .expect("valid plan"),
        ));
        out.push((
            format!("hand {name} mixup"),
            MixPlan::from_parts(&partner, &lam).expect("valid plan"),
        ));
    }
    out
}

/// The devices the candle tests compute on: the CPU, and with the `candle-cuda` feature the first
/// CUDA device (one for the process). Without one, the CUDA half says SKIPPED (once), unless
/// `MIXUP_REQUIRE_GPU=1`, where it fails.
#[cfg(feature = "candle")]
pub fn candle_devices() -> Vec<candle_core::Device> {
    #[allow(unused_mut)]
    let mut out = vec![candle_core::Device::Cpu];
    #[cfg(feature = "candle-cuda")]
    {
        static CUDA: std::sync::OnceLock<Option<candle_core::Device>> = std::sync::OnceLock::new();
        let cuda = CUDA.get_or_init(|| match candle_core::Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) if std::env::var("MIXUP_REQUIRE_GPU").as_deref() == Ok("1") => {
                panic!("MIXUP_REQUIRE_GPU=1 but no usable CUDA device: {e}")
            }
            Err(e) => {
                // To the process's stderr: libtest captures `eprintln!` of a passing test.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: the CUDA half of the candle tests: no CUDA device ({e})"
                );
                None
            }
        });
        out.extend(cuda.clone());
    }
    out
}
