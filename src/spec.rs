//! Argument types shared by every backend (CPU, reference, CUDA, candle), and the checks that
//! go with them, written once so each backend rejects bad input the same way.

use crate::config::TargetSpec;
use crate::dtype::Label;
use crate::error::{MixError, Result, Rows, check_len, check_rows, checked_product};
use crate::plan::MixPlan;
use crate::sampler::ImageSize;

/// The order of an image's dimensions in memory: PyTorch's `torch.memory_format`
/// (`contiguous_format` / `channels_last`). The one enum that names NCHW and NHWC, used by
/// [`SampleShape::Image`] and by the candle functions.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{MemoryFormat, SampleShape};
/// assert_eq!(
///     SampleShape::channels_last(32, 24, 3),
///     SampleShape::Image { format: MemoryFormat::ChannelsLast, channels: 3, height: 32, width: 24 }
/// );
/// // The image size of a rank-4 batch, `[B, C, H, W]` or `[B, H, W, C]`.
/// assert_eq!(MemoryFormat::ChannelsFirst.image_size(&[8, 3, 32, 24])?.height, 32);
/// assert_eq!(MemoryFormat::ChannelsLast.image_size(&[8, 32, 24, 3])?.width, 24);
/// assert!(MemoryFormat::ChannelsLast.image_size(&[8, 784]).is_err());
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryFormat {
    /// NCHW: `[C, H, W]` per sample (PyTorch's default, candle-nn's convolutions).
    ChannelsFirst,
    /// NHWC: `[H, W, C]` per sample (`torch.channels_last`).
    ChannelsLast,
}

impl MemoryFormat {
    /// `"NCHW"` or `"NHWC"`.
    ///
    /// ```
    /// use mixup_kernels::MemoryFormat;
    /// assert_eq!(MemoryFormat::ChannelsFirst.name(), "NCHW");
    /// assert_eq!(MemoryFormat::ChannelsLast.name(), "NHWC");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            MemoryFormat::ChannelsFirst => "NCHW",
            MemoryFormat::ChannelsLast => "NHWC",
        }
    }

    /// The `[batch, …]` shape of a rank-4 batch, in this format: `(B, C, H, W)`.
    fn split(self, dims: &[usize]) -> Option<(usize, usize, usize, usize)> {
        match (self, dims) {
            (MemoryFormat::ChannelsFirst, &[b, c, h, w])
            | (MemoryFormat::ChannelsLast, &[b, h, w, c]) => Some((b, c, h, w)),
            _ => None,
        }
    }

    /// The shape `[B, C, H, W]` (channels first) or `[B, H, W, C]` (channels last) spelled out,
    /// for error messages.
    pub(crate) fn pattern(self) -> &'static str {
        match self {
            MemoryFormat::ChannelsFirst => "[B, C, H, W] (MemoryFormat::ChannelsFirst, NCHW)",
            MemoryFormat::ChannelsLast => "[B, H, W, C] (MemoryFormat::ChannelsLast, NHWC)",
        }
    }

    /// The image size of a rank-4 batch whose dimensions `dims` are in this format: the size
    /// to give [`Sampler::plan_images`](crate::Sampler::plan_images).
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`] (`dims`) unless `dims` has 4 entries.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{ImageSize, MemoryFormat};
    /// let size = MemoryFormat::ChannelsFirst.image_size(&[16, 3, 28, 20])?;
    /// assert_eq!(size, ImageSize { height: 28, width: 20 });
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn image_size(self, dims: &[usize]) -> Result<crate::ImageSize> {
        match self.split(dims) {
            Some((_, _, height, width)) => Ok(crate::ImageSize { height, width }),
            None => Err(MixError::InvalidArgument {
                what: "dims",
                reason: format!("an image batch is {}, got {dims:?}", self.pattern()),
            }),
        }
    }

    /// The per-sample shape of a rank-4 batch in this format, `None` for another rank.
    #[cfg_attr(not(feature = "candle"), allow(dead_code))]
    pub(crate) fn sample_shape(self, dims: &[usize]) -> Option<SampleShape> {
        self.split(dims)
            .map(|(_, channels, height, width)| SampleShape::Image {
                format: self,
                channels,
                height,
                width,
            })
    }
}

/// The shape of one sample of a batch (the batch dimension is outermost): a flat row, or an
/// image in a [`MemoryFormat`].
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, CutBox, ImageSize, MixPlan, SampleShape};
/// // Two 1×2 single-channel images; sample 0 pastes column 1 of sample 1.
/// let b = CutBox { y0: 0, y1: 1, x0: 1, x1: 2 };
/// let image = ImageSize { height: 1, width: 2 };
/// let plan = MixPlan::with_boxes(&[1, 0], &[0.5, 1.0], &[Some(b), None], image).unwrap();
/// let x = [1.0f32, 2.0, 3.0, 4.0];
/// let img = SampleShape::channels_first(1, 1, 2);
/// assert_eq!(reference::mix(&plan, &img, &x).unwrap(), [1.0, 4.0, 3.0, 4.0]);
/// // As rows the same sample is lerped with its λ instead.
/// assert_eq!(reference::mix(&plan, &SampleShape::rows(2), &x).unwrap(), [2.0, 3.0, 3.0, 4.0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleShape {
    /// A flat row of `len` elements per sample. Every sample is lerped with its λ, CutMix
    /// samples included: this is how soft targets, features and embeddings mix. Use
    /// [`SampleShape::Image`] for pixels.
    Rows(usize),
    /// An image of `channels × height × width` elements in `format`.
    Image {
        /// The order of the dimensions in memory.
        format: MemoryFormat,
        /// Channels C.
        channels: usize,
        /// Height H, in pixels.
        height: usize,
        /// Width W, in pixels.
        width: usize,
    },
}

impl SampleShape {
    /// A flat row of `len` elements per sample.
    ///
    /// ```
    /// use mixup_kernels::SampleShape;
    /// assert_eq!(SampleShape::rows(10), SampleShape::Rows(10));
    /// ```
    pub const fn rows(len: usize) -> Self {
        SampleShape::Rows(len)
    }

    /// A channels-first (NCHW) image: `[C, H, W]` per sample, PyTorch's default.
    ///
    /// ```
    /// use mixup_kernels::{MemoryFormat, SampleShape};
    /// let s = SampleShape::channels_first(3, 32, 24);
    /// assert_eq!(s, SampleShape::Image { format: MemoryFormat::ChannelsFirst, channels: 3, height: 32, width: 24 });
    /// ```
    pub const fn channels_first(channels: usize, height: usize, width: usize) -> Self {
        SampleShape::Image {
            format: MemoryFormat::ChannelsFirst,
            channels,
            height,
            width,
        }
    }

    /// A channels-last (NHWC) image: `[H, W, C]` per sample (the arguments in memory order).
    ///
    /// ```
    /// use mixup_kernels::{ImageSize, SampleShape};
    /// let size = ImageSize { height: 32, width: 24 };
    /// assert_eq!(SampleShape::channels_last(32, 24, 3).image_size(), Some(size));
    /// ```
    pub const fn channels_last(height: usize, width: usize, channels: usize) -> Self {
        SampleShape::Image {
            format: MemoryFormat::ChannelsLast,
            channels,
            height,
            width,
        }
    }

    /// Elements per sample.
    ///
    /// # Errors
    /// [`MixError::SizeOverflow`] when `C·H·W` does not fit in `usize`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixError, SampleShape};
    /// assert_eq!(SampleShape::channels_last(4, 5, 3).sample_len(), Ok(60));
    /// assert_eq!(SampleShape::rows(7).sample_len(), Ok(7));
    /// let huge = SampleShape::channels_first(usize::MAX, 2, 1);
    /// assert!(matches!(huge.sample_len(), Err(MixError::SizeOverflow { .. })));
    /// ```
    pub fn sample_len(&self) -> Result<usize> {
        match *self {
            SampleShape::Rows(len) => Ok(len),
            SampleShape::Image {
                channels,
                height,
                width,
                ..
            } => checked_product("sample size", &[channels, height, width]),
        }
    }

    /// `(height, width)` of an image, `None` for rows.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{ImageSize, SampleShape};
    /// let size = ImageSize { height: 32, width: 24 };
    /// assert_eq!(SampleShape::channels_first(3, 32, 24).image_size(), Some(size));
    /// assert_eq!(SampleShape::rows(10).image_size(), None);
    /// ```
    pub fn image_size(&self) -> Option<ImageSize> {
        match *self {
            SampleShape::Rows(_) => None,
            SampleShape::Image { height, width, .. } => Some(ImageSize { height, width }),
        }
    }

    /// The pixel `(y, x)` that element `k` of a sample (`k < sample_len`) belongs to, in the
    /// shape's memory format; `None` for rows. CutMix pastes element `k` from the partner
    /// exactly when its pixel is inside the box ([`CutBox::contains`](crate::CutBox::contains)).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::SampleShape;
    /// // [C, H, W] = [3, 4, 5]: element 27 is channel 1, pixel (1, 2).
    /// assert_eq!(SampleShape::channels_first(3, 4, 5).pixel_of(27), Some((1, 2)));
    /// // [H, W, C]: element 27 is pixel 9 = (1, 4), channel 0.
    /// assert_eq!(SampleShape::channels_last(4, 5, 3).pixel_of(27), Some((1, 4)));
    /// assert_eq!(SampleShape::rows(60).pixel_of(27), None);
    /// ```
    pub fn pixel_of(&self, k: usize) -> Option<(usize, usize)> {
        let SampleShape::Image {
            format,
            channels,
            height,
            width,
        } = *self
        else {
            return None;
        };
        let pix = match format {
            MemoryFormat::ChannelsFirst => k % (height * width),
            MemoryFormat::ChannelsLast => k / channels,
        };
        Some((pix / width, pix % width))
    }
}

/// How per-sample losses are reduced: PyTorch's `reduction` (`'mean'`, `'sum'`, `'none'`,
/// `torch.nn.functional.cross_entropy`), fastai's `reduce_loss`.
///
/// The loss functions return `Some(reduced)` for `Mean` and `Sum`, and `None` for `None`, whose
/// result is the per-sample losses (written to the `losses` buffer every host entry point then
/// requires; candle returns them as a `[B]` tensor).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, CeSpec, GradOutput, MixPlan, Reduction};
/// let plan = MixPlan::identity(2)?;
/// let logits = [0.0f32, 0.0, 0.0, 0.0]; // [2, 2]: every loss is ln 2
/// let run = |r| {
///     let spec = CeSpec::new(2, 0.0, r).unwrap();
///     reference::mixup_ce(&plan, &spec, &logits, &[0u32, 1], GradOutput::Scalar(1.0)).unwrap()
/// };
/// let ln2 = std::f64::consts::LN_2;
/// assert!((run(Reduction::Mean).loss.unwrap() - ln2).abs() < 1e-12);
/// assert!((run(Reduction::Sum).loss.unwrap() - 2.0 * ln2).abs() < 1e-12);
/// let none = run(Reduction::None);
/// assert_eq!(none.loss, None); // no scalar: the per-sample losses are the result
/// assert!(none.losses.iter().all(|l| (l - ln2).abs() < 1e-12));
/// assert_eq!(Reduction::default(), Reduction::Mean);
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// Mean over the batch; the gradient is scaled by `1/B`.
    #[default]
    Mean,
    /// Sum over the batch.
    Sum,
    /// No reduction: the per-sample losses `[B]` are the result, and there is no scalar.
    None,
}

/// The gradient of the final loss with respect to this loss's output, `∂L_total/∂loss`:
/// PyTorch's `grad_output` (the argument of an autograd `backward`).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, CeSpec, GradOutput, MixError, MixPlan, Reduction};
/// let plan = MixPlan::identity(2)?;
/// let logits = [0.0f32; 4];
/// let spec = CeSpec::new(2, 0.0, Reduction::None)?;
/// // Sample 1's loss is weighted 0 from above: its gradient row is zero.
/// let r = reference::mixup_ce(&plan, &spec, &logits, &[0u32, 1], GradOutput::PerSample(&[1.0, 0.0]))?;
/// assert_eq!(r.grad[2..], [0.0, 0.0]);
/// assert_eq!(GradOutput::default(), GradOutput::Scalar(1.0));
/// // Per-sample values only go with the per-sample losses of Reduction::None.
/// let mean = CeSpec::new(2, 0.0, Reduction::Mean)?;
/// let err = reference::mixup_ce(&plan, &mean, &logits, &[0u32, 1], GradOutput::PerSample(&[1.0, 0.0]));
/// assert!(matches!(err, Err(MixError::InvalidArgument { what: "grad_output", .. })));
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradOutput<'a> {
    /// One value for the reduced loss (1.0 for a plain `loss.backward()`), or the same value
    /// for every sample under [`Reduction::None`].
    Scalar(f32),
    /// One value per sample, `[B]`; only with [`Reduction::None`].
    PerSample(&'a [f32]),
}

impl Default for GradOutput<'_> {
    fn default() -> Self {
        GradOutput::Scalar(1.0)
    }
}

impl Reduction {
    /// The factor applied to every sample's gradient before `grad_output`: `1/B` for the mean,
    /// 1 otherwise.
    #[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
    pub(crate) fn grad_factor(self, batch: usize) -> f32 {
        match self {
            Reduction::Mean => 1.0 / batch as f32,
            Reduction::Sum | Reduction::None => 1.0,
        }
    }

    /// The reduced loss as the API returns it: `None` under [`Reduction::None`].
    pub(crate) fn reported<T>(self, reduced: T) -> Option<T> {
        match self {
            Reduction::None => None,
            Reduction::Mean | Reduction::Sum => Some(reduced),
        }
    }
}

/// Under [`Reduction::None`] the per-sample losses are the result: the `losses` buffer must be
/// given.
#[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
pub(crate) fn check_losses_given(reduction: Reduction, given: bool) -> Result<()> {
    if reduction == Reduction::None && !given {
        return Err(MixError::InvalidArgument {
            what: "losses",
            reason: "Reduction::None returns the per-sample losses: pass a [B] `losses` buffer \
                     (or use Reduction::Mean or Sum for a scalar)"
                .into(),
        });
    }
    Ok(())
}

/// Checks the outputs of a device loss call. The reduced `loss` (`[1]`) exists under
/// [`Reduction::Mean`] and [`Reduction::Sum`] and not under [`Reduction::None`] (PyTorch's
/// `reduction='none'` returns the per-sample losses only). A call without a gradient must write
/// its result somewhere: `loss` under Mean and Sum, `losses` under None. A call with a gradient
/// may leave out both (a backward pass wants the gradient only).
#[cfg(mixup_cuda)]
pub(crate) fn check_loss_outputs(
    reduction: Reduction,
    grad: bool,
    loss: bool,
    losses: bool,
) -> Result<()> {
    if reduction == Reduction::None && loss {
        return Err(MixError::InvalidArgument {
            what: "loss",
            reason: "Reduction::None has no reduced loss (as PyTorch's reduction='none'): pass \
                     None for `loss`; the per-sample losses go to `losses`"
                .into(),
        });
    }
    if grad {
        return Ok(());
    }
    match reduction {
        Reduction::None => check_losses_given(reduction, losses),
        Reduction::Mean | Reduction::Sum if !loss => Err(MixError::InvalidArgument {
            what: "loss",
            reason: "a loss-only call under Reduction::Mean or Sum writes the reduced loss: pass \
                     a [1] f32 `loss` buffer"
                .into(),
        }),
        _ => Ok(()),
    }
}

/// Checks a mixing call; returns the number of elements per sample.
pub(crate) fn check_mix(
    plan: &MixPlan,
    shape: &SampleShape,
    len: usize,
    what: &'static str,
) -> Result<usize> {
    let row = shape.sample_len()?;
    check_rows(what, Rows::Samples, plan.len(), row, len)?;
    if let Some(image) = shape.image_size() {
        plan.check_image(image.height, image.width)?;
    }
    Ok(row)
}

/// Checks a target spec against the plan: valid, and the spec the plan was drawn for (if the
/// plan remembers one).
pub(crate) fn check_targets(plan: &MixPlan, spec: &TargetSpec) -> Result<()> {
    spec.validate()?;
    plan.check_targets(spec)
}

/// Checks host labels against the plan and the class count (negative labels included).
pub(crate) fn check_labels<L: Label>(
    plan: &MixPlan,
    labels: &[L],
    spec: &TargetSpec,
) -> Result<()> {
    check_targets(plan, spec)?;
    plan.check_batch("labels", labels.len())?;
    check_label_values(labels, spec.num_classes())
}

/// Fails with [`MixError::LabelOutOfRange`] for the first label outside `0..num_classes`.
pub(crate) fn check_label_values<L: Label>(labels: &[L], c: usize) -> Result<()> {
    match labels.iter().position(|&l| !l.in_range(c)) {
        Some(index) => Err(MixError::LabelOutOfRange {
            index,
            label: labels[index].to_i64(),
            num_classes: c,
        }),
        None => Ok(()),
    }
}

/// Checks a loss call's shapes (`logits` is `[B, C]`), its spec against the plan's, and
/// `grad_output`; returns B·C.
pub(crate) fn check_ce(
    plan: &MixPlan,
    spec: &CeSpec,
    logits_len: usize,
    grad_output: &GradOutput<'_>,
) -> Result<usize> {
    let reduction = spec.reduction;
    let spec = &spec.targets;
    check_targets(plan, spec)?;
    let total = check_rows(
        "logits",
        Rows::Classes,
        plan.len(),
        spec.num_classes(),
        logits_len,
    )?;
    if reduction == Reduction::Mean && plan.is_empty() {
        return Err(MixError::EmptyShape {
            what: "batch (the mean over no samples is undefined)",
        });
    }
    match *grad_output {
        GradOutput::Scalar(g) if !g.is_finite() => Err(MixError::InvalidArgument {
            what: "grad_output",
            reason: format!("must be finite, got {g}"),
        }),
        GradOutput::PerSample(_) if reduction != Reduction::None => {
            Err(MixError::InvalidArgument {
                what: "grad_output",
                reason: "one value per sample goes with Reduction::None (per-sample losses); \
                         a reduced loss takes GradOutput::Scalar"
                    .into(),
            })
        }
        GradOutput::PerSample(g) => {
            check_len("grad_output", plan.len(), g.len())?;
            match g.iter().position(|v| !v.is_finite()) {
                Some(i) => Err(MixError::InvalidArgument {
                    what: "grad_output",
                    reason: format!("must be finite, got {} for sample {i}", g[i]),
                }),
                None => Ok(()),
            }
        }
        GradOutput::Scalar(_) => Ok(()),
    }?;
    Ok(total)
}

/// The getters both loss specs share: the targets (classes, smoothing) and the reduction.
macro_rules! target_getters {
    () => {
        /// Classes and label smoothing.
        pub fn targets(&self) -> &TargetSpec {
            &self.targets
        }
        /// Number of classes C.
        pub fn num_classes(&self) -> usize {
            self.targets.num_classes()
        }
        /// Label smoothing ε, in `[0, 1)`.
        pub fn label_smoothing(&self) -> f64 {
            self.targets.label_smoothing()
        }
        /// The reduction.
        pub fn reduction(&self) -> Reduction {
            self.reduction
        }
    };
}

/// What the mixup cross-entropy computes: the soft target it compares against (classes and
/// label smoothing, a [`TargetSpec`]) and the reduction. Built validated, so a spec that exists
/// is usable with logits of its class count; build it from the sampler's config with
/// [`MixConfig::ce_spec`](crate::MixConfig::ce_spec) so the loss uses the smoothing the plan was
/// drawn with (a different spec is an error when the loss runs).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{CeSpec, MixConfig, Reduction};
/// let spec = CeSpec::new(10, 0.1, Reduction::Sum)?;
/// assert_eq!((spec.num_classes(), spec.label_smoothing()), (10, 0.1));
/// assert_eq!(spec.reduction(), Reduction::Sum);
/// assert_eq!(MixConfig::timm(10).ce_spec(Reduction::Sum)?, spec); // timm's 0.1 smoothing
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CeSpec {
    targets: TargetSpec,
    reduction: Reduction,
}

impl CeSpec {
    /// A spec for `num_classes` classes with label smoothing `label_smoothing` (ε, timm's
    /// `label_smoothing`, PyTorch's `cross_entropy(label_smoothing=…)`) and a reduction.
    ///
    /// # Errors
    /// As [`TargetSpec::new`]: [`MixError::EmptyShape`] for 0 classes,
    /// [`MixError::SizeOverflow`] past `u32::MAX` classes, [`MixError::InvalidArgument`]
    /// (`label_smoothing`) for ε outside `[0, 1)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{CeSpec, MixError, Reduction};
    /// assert!(CeSpec::new(1000, 0.1, Reduction::Mean).is_ok());
    /// assert!(matches!(CeSpec::new(0, 0.0, Reduction::Mean), Err(MixError::EmptyShape { .. })));
    /// assert!(matches!(
    ///     CeSpec::new(10, 1.0, Reduction::Mean),
    ///     Err(MixError::InvalidArgument { what: "label_smoothing", .. })
    /// ));
    /// ```
    pub fn new(num_classes: usize, label_smoothing: f64, reduction: Reduction) -> Result<Self> {
        Ok(Self::from_targets(
            TargetSpec::new(num_classes, label_smoothing)?,
            reduction,
        ))
    }

    /// A spec from a validated [`TargetSpec`] (cannot fail).
    pub(crate) const fn from_targets(targets: TargetSpec, reduction: Reduction) -> Self {
        Self { targets, reduction }
    }

    target_getters!();
}

/// What the mixup binary cross-entropy computes: timm's `BinaryCrossEntropy` on the mixed soft
/// target, with its `target_threshold`, per-class `weight` and `pos_weight`, `sum_classes` and
/// reduction (timm `timm/loss/binary_cross_entropy.py`, used by the DeiT III and "ResNet strikes
/// back" recipes).
///
/// Per element, with the soft target `t` of [`TargetSpec`] (smoothing applied as timm's
/// `Mixup` applies it), `t ← [t > threshold]` when a threshold is set, `w` the class's
/// `pos_weight` (1 without) and `v` its `weight` (1 without):
/// `ℓ = v·((1 − t)·z + (1 + (w − 1)·t)·softplus(−z))`, `∂ℓ/∂z = v·((1 + (w − 1)·t)·σ(z) − w·t)`
/// (PyTorch's `binary_cross_entropy_with_logits`). The per-sample loss is `L_i = Σ_c ℓ_ic`.
/// [`Reduction::Mean`] averages over all `B·C` elements, or over the `B` samples with
/// `sum_classes`; `Sum` adds the `L_i`; `None` keeps the `L_i` (timm's `'none'` keeps the
/// `[B, C]` elements, which [`reference::mixup_bce`](crate::reference::mixup_bce) returns) and
/// reports no scalar.
///
/// Two points where timm's own choices show (checked against timm 1.0.31 in
/// `tests/parity.rs`): with `sum_classes=True` timm ignores its `reduction` and always takes
/// the batch mean; here `Sum` and `None` keep their meaning, and `Mean` gives timm's value. A
/// `target_threshold` decides on the soft target as timm rounds it in f32 (see
/// `tests/fixtures/bce.json`), so targets one rounding from the threshold go the same way.
/// timm's `BinaryCrossEntropy(smoothing=…)` does not smooth a dense (mixed) target unless
/// `smooth_dense=True`; the smoothing here is the `Mixup`'s, applied once.
///
/// Built validated: every setter checks its argument, so a spec that exists is usable with
/// logits of its class count.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{BceSpec, Reduction};
/// let spec = BceSpec::new(3, 0.1, Reduction::Mean)?
///     .with_target_threshold(0.2)?
///     .with_pos_weight(vec![1.0, 2.0, 0.5])?
///     .with_sum_classes(true);
/// assert_eq!((spec.num_classes(), spec.label_smoothing()), (3, 0.1));
/// assert!(BceSpec::new(3, 0.0, Reduction::Sum)?.with_weight(vec![1.0]).is_err()); // not 3 values
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BceSpec {
    targets: TargetSpec,
    reduction: Reduction,
    threshold: Option<f32>,
    weight: Option<Vec<f32>>,
    pos_weight: Option<Vec<f32>>,
    sum_classes: bool,
    /// timm's `(on_value, off_value)` rounded to f32, for the threshold decision.
    timm_on_off: (f32, f32),
}

impl BceSpec {
    /// A spec for `num_classes` classes with label smoothing `label_smoothing` (ε) and a
    /// reduction; no threshold, no class weights, classes averaged (timm's defaults but for its
    /// smoothing, which is given here).
    ///
    /// # Errors
    /// As [`TargetSpec::new`]: [`MixError::EmptyShape`] for 0 classes,
    /// [`MixError::SizeOverflow`] past `u32::MAX`, [`MixError::InvalidArgument`]
    /// (`label_smoothing`) for ε outside `[0, 1)`.
    pub fn new(num_classes: usize, label_smoothing: f64, reduction: Reduction) -> Result<Self> {
        let targets = TargetSpec::new(num_classes, label_smoothing)?;
        // timm's `on_value` and `off_value` are Python doubles rounded to f32 by the target
        // tensor: form them in f64 from the same double ε.
        let eps = label_smoothing;
        let off = eps / num_classes as f64;
        Ok(Self {
            targets,
            reduction,
            threshold: None,
            weight: None,
            pos_weight: None,
            sum_classes: false,
            timm_on_off: ((1.0 - eps + off) as f32, off as f32),
        })
    }

    /// timm's `target_threshold`: targets above it become 1, the others 0.
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`] (`target_threshold`) if it is not finite.
    pub fn with_target_threshold(mut self, threshold: f32) -> Result<Self> {
        if !threshold.is_finite() {
            return Err(MixError::InvalidArgument {
                what: "target_threshold",
                reason: format!("must be finite, got {threshold}"),
            });
        }
        self.threshold = Some(threshold);
        Ok(self)
    }

    /// PyTorch's `weight`: one factor per class, `[C]`, applied to loss and gradient.
    ///
    /// # Errors
    /// [`MixError::LengthMismatch`] unless it holds `C` values; [`MixError::InvalidArgument`]
    /// (`weight`) if one is not finite.
    pub fn with_weight(mut self, weight: Vec<f32>) -> Result<Self> {
        self.check_per_class("weight", &weight)?;
        self.weight = Some(weight);
        Ok(self)
    }

    /// PyTorch's `pos_weight`: the weight of the positive term per class, `[C]`.
    ///
    /// # Errors
    /// As [`with_weight`](Self::with_weight), naming `pos_weight`.
    pub fn with_pos_weight(mut self, pos_weight: Vec<f32>) -> Result<Self> {
        self.check_per_class("pos_weight", &pos_weight)?;
        self.pos_weight = Some(pos_weight);
        Ok(self)
    }

    /// timm's `sum_classes`: sum the classes of each sample before the batch mean.
    pub fn with_sum_classes(mut self, sum_classes: bool) -> Self {
        self.sum_classes = sum_classes;
        self
    }

    fn check_per_class(&self, what: &'static str, v: &[f32]) -> Result<()> {
        check_len(what, self.targets.num_classes(), v.len())?;
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(MixError::InvalidArgument {
                what,
                reason: format!("must be finite, got {} for class {i}", v[i]),
            }),
            None => Ok(()),
        }
    }

    target_getters!();
    /// The target threshold, if any.
    pub fn target_threshold(&self) -> Option<f32> {
        self.threshold
    }
    /// The per-class weights, if any (`[C]`).
    pub fn weight(&self) -> Option<&[f32]> {
        self.weight.as_deref()
    }
    /// The per-class positive weights, if any (`[C]`).
    pub fn pos_weight(&self) -> Option<&[f32]> {
        self.pos_weight.as_deref()
    }
    /// Whether classes are summed before the batch mean.
    pub fn sum_classes(&self) -> bool {
        self.sum_classes
    }

    /// With a threshold, the thresholded targets of a sample with weight `lam` on its own label:
    /// `(t_other, t_a, t_b)`, each 0 or 1 (`t_a == t_b` when `same`). The soft target is
    /// rounded as timm's `mixup_target` rounds it in f32, `y1·λ + y2·(1 − λ)` with `y` one-hot
    /// rows of `f32(1 − ε + ε/C)` and `f32(ε/C)`, each product and the sum rounded once, so that
    /// `t > threshold` decides as timm does even for a target one rounding from the threshold.
    /// (timm's batch mode forms `1 − λ` in f64 from its f64 λ; the plan holds the f32 λ, so
    /// there the decision can still differ for λ within an f32 ulp of the boundary.)
    pub(crate) fn thresholded(&self, lam: f32, same: bool) -> Option<(f32, f32, f32)> {
        let thr = self.threshold?;
        let (on, off) = self.timm_on_off;
        let mu = 1.0 - lam;
        let t = |y1: f32, y2: f32| {
            let (p, q) = (y1 * lam, y2 * mu);
            f32::from(u8::from(p + q > thr))
        };
        let ta = if same { t(on, on) } else { t(on, off) };
        let tb = if same { ta } else { t(off, on) };
        Some((t(off, off), ta, tb))
    }

    /// timm's `(on_value, off_value)` in f32, as [`thresholded`](Self::thresholded) uses them
    /// (for the CUDA kernel, which decides on the device).
    #[cfg_attr(not(mixup_cuda), allow(dead_code))]
    pub(crate) fn timm_on_off(&self) -> (f32, f32) {
        self.timm_on_off
    }

    /// The number of elements the mean divides by: `B·C`, or `B` with `sum_classes`.
    pub(crate) fn mean_count(&self, batch: usize) -> f64 {
        if self.sum_classes {
            batch as f64
        } else {
            batch as f64 * self.targets.num_classes() as f64
        }
    }

    /// The reduced loss from the per-sample sums `Σ L_i`.
    pub(crate) fn reduce(&self, sum: f64, batch: usize) -> f64 {
        match self.reduction {
            Reduction::Sum => sum,
            Reduction::Mean | Reduction::None => sum / self.mean_count(batch).max(1.0),
        }
    }

    /// The factor of every element's gradient before `grad_output`.
    #[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
    pub(crate) fn grad_factor(&self, batch: usize) -> f32 {
        match self.reduction {
            Reduction::Mean => (1.0 / self.mean_count(batch)) as f32,
            Reduction::Sum | Reduction::None => 1.0,
        }
    }
}

/// Checks a BCE call like [`check_ce`] does a CE call; returns B·C.
pub(crate) fn check_bce(
    plan: &MixPlan,
    spec: &BceSpec,
    logits_len: usize,
    grad_output: &GradOutput<'_>,
) -> Result<usize> {
    let ce = CeSpec::from_targets(spec.targets, spec.reduction);
    check_ce(plan, &ce, logits_len, grad_output)
}

/// Which of the two fused losses a call runs, with its spec: the one "which loss" of the CUDA
/// path, the candle ops and the burn ops. The BCE spec (class weights) is borrowed where a call
/// runs at once and owned (`LossSpec<'static>`) where an op keeps it (candle's).
#[cfg(any(feature = "candle", feature = "burn", mixup_cuda))]
#[derive(Debug, Clone)]
pub(crate) enum LossSpec<'a> {
    Ce(CeSpec),
    Bce(std::borrow::Cow<'a, BceSpec>),
}

#[cfg(any(feature = "candle", feature = "burn", mixup_cuda))]
impl<'a> LossSpec<'a> {
    /// The BCE, its spec borrowed.
    pub(crate) fn bce(spec: &'a BceSpec) -> Self {
        LossSpec::Bce(std::borrow::Cow::Borrowed(spec))
    }

    pub(crate) fn num_classes(&self) -> usize {
        self.targets().num_classes()
    }

    /// Classes and label smoothing.
    pub(crate) fn targets(&self) -> &TargetSpec {
        match self {
            LossSpec::Ce(s) => s.targets(),
            LossSpec::Bce(s) => s.targets(),
        }
    }

    pub(crate) fn reduction(&self) -> Reduction {
        match self {
            LossSpec::Ce(s) => s.reduction(),
            LossSpec::Bce(s) => s.reduction(),
        }
    }

    /// [`check_ce`] / [`check_bce`]; returns B·C.
    pub(crate) fn check(
        &self,
        plan: &MixPlan,
        logits_len: usize,
        grad_output: &GradOutput<'_>,
    ) -> Result<usize> {
        match self {
            LossSpec::Ce(s) => check_ce(plan, s, logits_len, grad_output),
            LossSpec::Bce(s) => check_bce(plan, s, logits_len, grad_output),
        }
    }
}

#[cfg(all(test, mixup_cuda))]
mod tests {
    use super::*;

    #[test]
    fn the_reduced_loss_exists_under_mean_and_sum_only() {
        let what = |r: Result<()>| match r {
            Err(MixError::InvalidArgument { what, .. }) => Some(what),
            Ok(()) => None,
            Err(e) => panic!("{e}"),
        };
        for r in [Reduction::Mean, Reduction::Sum] {
            for grad in [false, true] {
                assert_eq!(what(check_loss_outputs(r, grad, true, false)), None);
                assert_eq!(what(check_loss_outputs(r, grad, true, true)), None);
            }
            // A loss-only call needs somewhere to write; a gradient call does not.
            assert_eq!(
                what(check_loss_outputs(r, false, false, true)),
                Some("loss")
            );
            assert_eq!(what(check_loss_outputs(r, true, false, false)), None);
        }
        let none = Reduction::None;
        for grad in [false, true] {
            assert_eq!(what(check_loss_outputs(none, grad, false, true)), None);
            assert_eq!(
                what(check_loss_outputs(none, grad, true, true)),
                Some("loss")
            );
        }
        assert_eq!(
            what(check_loss_outputs(none, false, false, false)),
            Some("losses")
        );
        assert_eq!(what(check_loss_outputs(none, true, false, false)), None);
    }
}
