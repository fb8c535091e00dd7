//! Per-channel normalization for the fused "decoded pixels → model input" operation
//! (`mix_normalize` in [`reference`](crate::reference), `cpu`, [`cuda`](crate::cuda) and
//! `candle`).
//!
//! # The operation
//!
//! Input: a batch of images, u8 pixels (as decoders produce them) or floats already scaled,
//! channels-last `[B, H, W, C]` or channels-first `[B, C, H, W]`; a [`MixPlan`](crate::MixPlan);
//! a [`Normalize`]. Output: f32, f16 or bf16, channels-first or channels-last. Per element, in
//! f32 (`a` the sample's value, `b` its partner's at the same place):
//!
//! 1. `v = λ·a + (1−λ)·b` for a MixUp sample (two rounded products and a rounded sum, no FMA,
//!    as numpy and torch compute it); `v = b` inside a CutMix box, `v = a` outside it and for a
//!    sample that is its own partner;
//! 2. with [`Normalize::with_u8_rounding`], `v = rint(v)` (half to even) for MixUp samples:
//!    timm's `FastCollateMixup` stores the mixed image as u8;
//! 3. `out = (v − mean_c) / std_c` (a subtraction and a true division, both rounded in f32, as
//!    torch's `sub_(mean).div_(std)`), rounded once to the output type.
//!
//! `mean_c` and `std_c` are stored in the input's units, rounded once to f32 from the f64
//! product `mean·scale` (timm's `PrefetchLoader` builds `torch.tensor([x * 255 for x in mean])`
//! the same way). With u8 rounding and an f32 output this is timm's collate + prefetch path bit
//! for bit (timm `timm/data/mixup.py` `FastCollateMixup`, `timm/data/loader.py`
//! `PrefetchLoader`) wherever timm's lerp weights are the plan's `(λ, 1 − λ)` in f32 (timm's
//! `elem` and `pair` modes; in `batch` mode a few pixels per million differ by one level:
//! `Normalize::with_u8_rounding`, where `tests/parity.rs` holds them to one level). Without u8
//! rounding the mixed value keeps its fraction, which is closer to the mixup of the
//! real-valued images. The op reads each input element once (twice for a partner that is not
//! an involution) and writes each output element once, where timm's path takes 3–5 passes.

use crate::dtype::ScalarType;
use crate::error::{MixError, Result, check_len};
use crate::plan::MixPlan;
use crate::spec::{MemoryFormat, SampleShape, check_mix};

/// Per-channel `mean` and `std` for [`mix_normalize`](crate::reference::mix_normalize), in the
/// units of the input, and whether MixUp rounds to u8 first.
///
/// Built from constants in any unit and a `scale` that brings them to the input's: ImageNet's
/// `mean = (0.485, 0.456, 0.406)` is in `[0, 1]` units; for u8 pixels `scale = 255` (what timm's
/// `PrefetchLoader` does), for a float input already in `[0, 1]` `scale = 1`, for constants
/// already in pixel units (`123.675`, …) `scale = 1`.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{MixError, Normalize};
/// let n = Normalize::imagenet_u8();
/// assert_eq!(n.mean(), [123.675f32, 116.28, 103.53]);
/// assert_eq!(n.std()[0], (0.229f64 * 255.0) as f32);
/// // The same constants in pixel units, given directly.
/// let p = Normalize::new(&[123.675, 116.28, 103.53], &[58.395, 57.12, 57.375], 1.0).unwrap();
/// assert_eq!(p.mean(), n.mean());
/// // Validated: one std per mean, each positive and finite in f32.
/// let bad = Normalize::new(&[0.5, 0.5], &[0.2, 0.0], 255.0).unwrap_err();
/// assert!(matches!(bad, MixError::InvalidArgument { what: "std", .. }));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
    u8_rounding: bool,
}

impl Normalize {
    /// ImageNet's per-channel mean (RGB) in `[0, 1]` units (timm `IMAGENET_DEFAULT_MEAN`).
    pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
    /// ImageNet's per-channel standard deviation (RGB) in `[0, 1]` units (timm
    /// `IMAGENET_DEFAULT_STD`).
    pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

    /// Per-channel constants: `mean` and `std` (one each per channel) in units that `scale`
    /// brings to the input's: the op uses `f32(mean_c · scale)` and `f32(std_c · scale)`, the
    /// products taken in f64 and rounded once.
    ///
    /// # Errors
    /// [`MixError::EmptyShape`] (`mean`) for no channels; [`MixError::LengthMismatch`] (`std`)
    /// when the lengths differ; [`MixError::InvalidArgument`] naming `scale` (not finite and
    /// positive), `mean` (a scaled mean not finite in f32) or `std` (a scaled std that is not a
    /// positive normal f32: zero, negative, subnormal or too large).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::Normalize;
    /// // A single-channel dataset (MNIST's statistics) on u8 pixels.
    /// let n = Normalize::new(&[0.1307], &[0.3081], 255.0).unwrap();
    /// assert_eq!((n.channels(), n.mean()[0]), (1, (0.1307f64 * 255.0) as f32));
    /// ```
    pub fn new(mean: &[f64], std: &[f64], scale: f64) -> Result<Self> {
        if mean.is_empty() {
            return Err(MixError::EmptyShape { what: "mean" });
        }
        check_len("std", mean.len(), std.len())?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(MixError::InvalidArgument {
                what: "scale",
                reason: format!("must be finite and positive, got {scale}"),
            });
        }
        let mut m = Vec::with_capacity(mean.len());
        let mut s = Vec::with_capacity(std.len());
        for (c, (&mc, &sc)) in mean.iter().zip(std).enumerate() {
            let mv = (mc * scale) as f32;
            if !mv.is_finite() {
                return Err(MixError::InvalidArgument {
                    what: "mean",
                    reason: format!("channel {c}: {mc} × scale {scale} is not a finite f32"),
                });
            }
            let sv = (sc * scale) as f32;
            if !(sv.is_normal() && sv > 0.0) {
                return Err(MixError::InvalidArgument {
                    what: "std",
                    reason: format!(
                        "channel {c}: {sc} × scale {scale} must be a positive normal f32, \
                         got {sv:e}"
                    ),
                });
            }
            m.push(mv);
            s.push(sv);
        }
        Ok(Self {
            mean: m,
            std: s,
            u8_rounding: false,
        })
    }

    /// ImageNet's constants for u8 pixels (`scale = 255`): timm's `PrefetchLoader` defaults.
    ///
    /// ```
    /// use mixup_kernels::Normalize;
    /// assert_eq!(Normalize::imagenet_u8().channels(), 3);
    /// ```
    pub fn imagenet_u8() -> Self {
        Self::new(&Self::IMAGENET_MEAN, &Self::IMAGENET_STD, 255.0)
            .expect("ImageNet's constants are valid")
    }

    /// ImageNet's constants for a float input already in `[0, 1]` (`scale = 1`): torchvision's
    /// `ToTensor` + `Normalize`.
    ///
    /// ```
    /// use mixup_kernels::Normalize;
    /// assert_eq!(Normalize::imagenet().mean()[0], 0.485);
    /// ```
    pub fn imagenet() -> Self {
        Self::new(&Self::IMAGENET_MEAN, &Self::IMAGENET_STD, 1.0)
            .expect("ImageNet's constants are valid")
    }

    /// Rounds the MixUp lerp to the nearest u8 (half to even) before normalizing, as timm's
    /// `FastCollateMixup` does (`np.rint`, then `astype(np.uint8)`): with an f32 output the op
    /// then gives timm's collate + `PrefetchLoader` bits exactly wherever timm's lerp weights
    /// are the plan's `(λ, 1 − λ)` in f32: always in timm's `elem` and `pair` modes (a float32
    /// λ per sample). In its default `batch` mode λ is a Python float and `1 − λ` is formed in
    /// f64 before numpy rounds it to f32, which differs from `1 − f32(λ)` for about 40 % of λ
    /// values; then about 3 pixels in a million land one u8 level apart (a lerp within an ulp
    /// of a .5 tie; `scripts/golden_timm.py` `weights_bit_exact`). Off by default: the
    /// unrounded value is the more accurate mix. u8 inputs only (a float input with it is an
    /// error).
    ///
    /// ```
    /// use mixup_kernels::{reference, SampleShape, MemoryFormat, MixPlan, Normalize};
    /// let plan = MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap();
    /// let img = SampleShape::channels_first(1, 1, 1);
    /// let n = Normalize::new(&[0.0], &[1.0], 1.0).unwrap();
    /// let first = MemoryFormat::ChannelsFirst;
    /// let exact = reference::mix_normalize(&plan, &img, &n, &[0u8, 5], first).unwrap();
    /// assert_eq!(exact, [2.5, 2.5]);
    /// let timm = n.with_u8_rounding(true);
    /// assert_eq!(reference::mix_normalize(&plan, &img, &timm, &[0u8, 5], first).unwrap(), [2.0, 2.0]);
    /// ```
    pub fn with_u8_rounding(mut self, on: bool) -> Self {
        self.u8_rounding = on;
        self
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// The per-channel means in the input's units (`f32(mean_c · scale)`).
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The per-channel standard deviations in the input's units (`f32(std_c · scale)`).
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// Whether MixUp rounds to u8 before normalizing ([`Normalize::with_u8_rounding`]).
    pub fn u8_rounding(&self) -> bool {
        self.u8_rounding
    }
}

/// An image batch's dimensions as `mix_normalize` sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageDims {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// The input's memory format.
    pub format: MemoryFormat,
}

impl ImageDims {
    /// Elements per sample.
    pub(crate) fn sample_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// Checks a `mix_normalize` call: an image shape whose channels match `norm`, u8 rounding only
/// on u8 input, lengths (`x` and `out`, `batch × sample`) and the plan's batch and image size.
pub(crate) fn check_mix_normalize(
    plan: &MixPlan,
    shape: &SampleShape,
    norm: &Normalize,
    input: ScalarType,
    x_len: usize,
    out_len: usize,
) -> Result<ImageDims> {
    let dims = match *shape {
        SampleShape::Rows(_) => {
            return Err(MixError::InvalidArgument {
                what: "shape",
                reason: "mix_normalize needs an image shape (SampleShape::Image), got Rows".into(),
            });
        }
        SampleShape::Image {
            format,
            channels,
            height,
            width,
        } => ImageDims {
            channels,
            height,
            width,
            format,
        },
    };
    if dims.channels != norm.channels() {
        return Err(MixError::InvalidArgument {
            what: "normalize",
            reason: format!(
                "has mean and std for {} channel{}, the images have {}",
                norm.channels(),
                if norm.channels() == 1 { "" } else { "s" },
                dims.channels
            ),
        });
    }
    if norm.u8_rounding() && input != ScalarType::U8 {
        return Err(MixError::InvalidArgument {
            what: "normalize",
            reason: format!(
                "u8 rounding (timm's FastCollateMixup) applies to u8 pixels; the input is {}",
                input.name()
            ),
        });
    }
    // The output has the input's element count (check_mix checks that B × sample size fits).
    check_mix(plan, shape, x_len, "x")?;
    check_len("out", x_len, out_len)?;
    Ok(dims)
}
