//! Argument types shared by every backend (CPU, reference, CUDA, candle), and the checks that
//! go with them, written once so each backend rejects bad input the same way.

use crate::config::TargetSpec;
use crate::error::{check_len, checked_product, MixError, Result};
use crate::plan::MixPlan;

/// How one sample of a batch is laid out in memory (the batch dimension is outermost).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, CutBox, Layout, MixPlan};
/// // Two 1×2 single-channel images; sample 0 pastes column 1 of sample 1.
/// let b = CutBox { y0: 0, y1: 1, x0: 1, x1: 2 };
/// let plan = MixPlan::with_boxes(&[1, 0], &[0.5, 1.0], &[Some(b), None], 1, 2).unwrap();
/// let x = [1.0f32, 2.0, 3.0, 4.0];
/// let img = Layout::Nchw { channels: 1, height: 1, width: 2 };
/// assert_eq!(reference::mix(&plan, &img, &x).unwrap(), [1.0, 4.0, 3.0, 4.0]);
/// // Under `Rows` the same sample is lerped with its λ instead.
/// assert_eq!(reference::mix(&plan, &Layout::Rows(2), &x).unwrap(), [2.0, 3.0, 3.0, 4.0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// A flat row of `len` elements per sample. Every sample is lerped with its λ, CutMix
    /// samples included: this is how soft targets, features and embeddings mix. Use an image
    /// layout for pixels.
    Rows(usize),
    /// `[C, H, W]` per sample (PyTorch's default).
    Nchw {
        /// Channels.
        channels: usize,
        /// Height.
        height: usize,
        /// Width.
        width: usize,
    },
    /// `[H, W, C]` per sample (channels-last).
    Nhwc {
        /// Height.
        height: usize,
        /// Width.
        width: usize,
        /// Channels.
        channels: usize,
    },
}

impl Layout {
    /// Elements per sample, or [`MixError::SizeOverflow`].
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{Layout, MixError};
    /// assert_eq!(Layout::Nhwc { height: 4, width: 5, channels: 3 }.sample_len(), Ok(60));
    /// assert_eq!(Layout::Rows(7).sample_len(), Ok(7));
    /// let huge = Layout::Nchw { channels: usize::MAX, height: 2, width: 1 };
    /// assert!(matches!(huge.sample_len(), Err(MixError::SizeOverflow { .. })));
    /// ```
    pub fn sample_len(&self) -> Result<usize> {
        match *self {
            Layout::Rows(len) => Ok(len),
            Layout::Nchw {
                channels,
                height,
                width,
            }
            | Layout::Nhwc {
                height,
                width,
                channels,
            } => checked_product("sample size", &[channels, height, width]),
        }
    }

    /// `(height, width)` for image layouts.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::Layout;
    /// assert_eq!(Layout::Nchw { channels: 3, height: 32, width: 24 }.image_size(), Some((32, 24)));
    /// assert_eq!(Layout::Rows(10).image_size(), None);
    /// ```
    pub fn image_size(&self) -> Option<(usize, usize)> {
        match *self {
            Layout::Rows(_) => None,
            Layout::Nchw { height, width, .. } | Layout::Nhwc { height, width, .. } => {
                Some((height, width))
            }
        }
    }
}

/// The order of an image batch's dimensions in memory.
///
/// # Examples
///
/// ```
/// use mixup_kernels::MemoryFormat;
/// assert_eq!(MemoryFormat::ChannelsFirst.name(), "NCHW");
/// assert_eq!(MemoryFormat::ChannelsLast.name(), "NHWC");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryFormat {
    /// `[B, C, H, W]`: PyTorch's default (`torch.contiguous_format`).
    ChannelsFirst,
    /// `[B, H, W, C]`: what image decoders produce (`torch.channels_last`).
    ChannelsLast,
}

impl MemoryFormat {
    /// `"NCHW"` or `"NHWC"`.
    ///
    /// ```
    /// use mixup_kernels::MemoryFormat;
    /// assert_eq!(MemoryFormat::ChannelsLast.name(), "NHWC");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            MemoryFormat::ChannelsFirst => "NCHW",
            MemoryFormat::ChannelsLast => "NHWC",
        }
    }
}

/// How per-sample losses are reduced (fastai's `reduce_loss`, PyTorch's `reduction`).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, CeSpec, MixPlan, Reduction, Upstream};
/// let plan = MixPlan::identity(2).unwrap();
/// let logits = [0.0f32, 0.0, 0.0, 0.0]; // [2, 2]: every loss is ln 2
/// let loss = |r| {
///     let spec = CeSpec::new(2, 0.0, r);
///     reference::mixup_ce(&plan, &spec, &logits, &[0, 1], Upstream::Scalar(1.0)).unwrap().loss
/// };
/// let ln2 = std::f64::consts::LN_2;
/// assert!((loss(Reduction::Mean) - ln2).abs() < 1e-12);
/// assert!((loss(Reduction::Sum) - 2.0 * ln2).abs() < 1e-12);
/// assert!((loss(Reduction::None) - ln2).abs() < 1e-12); // the mean, for logging
/// assert_eq!(Reduction::default(), Reduction::Mean);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reduction {
    /// Mean over the batch; the gradient is scaled by `1/B`.
    #[default]
    Mean,
    /// Sum over the batch.
    Sum,
    /// No reduction: per-sample losses are the output.
    None,
}

/// The gradient arriving from above the loss (`dL_total/dL`).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, CeSpec, MixError, MixPlan, Reduction, Upstream};
/// let plan = MixPlan::identity(2).unwrap();
/// let logits = [0.0f32; 4];
/// let spec = CeSpec::new(2, 0.0, Reduction::None);
/// // Sample 1's loss is weighted 0 from above: its gradient row is zero.
/// let r = reference::mixup_ce(&plan, &spec, &logits, &[0, 1], Upstream::PerSample(&[1.0, 0.0])).unwrap();
/// assert_eq!(r.grad[2..], [0.0, 0.0]);
/// assert_eq!(Upstream::default(), Upstream::Scalar(1.0));
/// // Per-sample weights only make sense without a reduction.
/// let mean = CeSpec::new(2, 0.0, Reduction::Mean);
/// let err = reference::mixup_ce(&plan, &mean, &logits, &[0, 1], Upstream::PerSample(&[1.0, 0.0]));
/// assert!(matches!(err, Err(MixError::InvalidArgument { what: "upstream", .. })));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Upstream<'a> {
    /// One scalar for the reduced loss (1.0 for a plain `loss.backward()`), or for every sample
    /// under [`Reduction::None`].
    Scalar(f32),
    /// One value per sample; only with [`Reduction::None`].
    PerSample(&'a [f32]),
}

impl Default for Upstream<'_> {
    fn default() -> Self {
        Upstream::Scalar(1.0)
    }
}

impl Reduction {
    /// The factor applied to every sample's gradient before the upstream gradient: `1/B` for
    /// the mean, 1 otherwise.
    #[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
    pub(crate) fn grad_factor(self, batch: usize) -> f32 {
        match self {
            Reduction::Mean => 1.0 / batch as f32,
            Reduction::Sum | Reduction::None => 1.0,
        }
    }
}

/// Checks a mixing call; returns the number of elements per sample.
pub(crate) fn check_mix(
    plan: &MixPlan,
    layout: &Layout,
    len: usize,
    what: &'static str,
) -> Result<usize> {
    let row = layout.sample_len()?;
    let total = checked_product("batch × sample size", &[plan.len(), row])?;
    check_len(what, total, len)?;
    if let Some((h, w)) = layout.image_size() {
        plan.check_image(h, w)?;
    }
    Ok(row)
}

/// Checks host labels against the plan and the class count.
pub(crate) fn check_labels(plan: &MixPlan, labels: &[u32], spec: &TargetSpec) -> Result<()> {
    spec.validate()?;
    plan.check_batch(labels.len())?;
    match labels.iter().position(|&l| l as usize >= spec.num_classes) {
        Some(index) => Err(MixError::LabelOutOfRange {
            index,
            label: labels[index],
            num_classes: spec.num_classes,
        }),
        None => Ok(()),
    }
}

/// Checks a loss call's shapes (`logits` is `[B, C]`) and upstream gradient; returns B·C.
pub(crate) fn check_ce(
    plan: &MixPlan,
    spec: &CeSpec,
    logits_len: usize,
    upstream: &Upstream<'_>,
) -> Result<usize> {
    let reduction = spec.reduction;
    let spec = &spec.targets;
    spec.validate()?;
    let total = checked_product("batch × num_classes", &[plan.len(), spec.num_classes])?;
    check_len("logits", total, logits_len)?;
    if reduction == Reduction::Mean && plan.is_empty() {
        return Err(MixError::EmptyShape {
            what: "batch (the mean over no samples is undefined)",
        });
    }
    match *upstream {
        Upstream::Scalar(g) if !g.is_finite() => Err(MixError::InvalidArgument {
            what: "upstream",
            reason: format!("the upstream gradient must be finite, got {g}"),
        }),
        Upstream::PerSample(_) if reduction != Reduction::None => Err(MixError::InvalidArgument {
            what: "upstream",
            reason: "a per-sample upstream gradient needs Reduction::None".into(),
        }),
        Upstream::PerSample(g) => {
            check_len("upstream", plan.len(), g.len())?;
            match g.iter().position(|v| !v.is_finite()) {
                Some(i) => Err(MixError::InvalidArgument {
                    what: "upstream",
                    reason: format!(
                        "the upstream gradient must be finite, got {} for sample {i}",
                        g[i]
                    ),
                }),
                None => Ok(()),
            }
        }
        Upstream::Scalar(_) => Ok(()),
    }?;
    Ok(total)
}

/// What the mixup cross-entropy computes: the soft target it compares against and the
/// reduction.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{CeSpec, Reduction, TargetSpec};
/// let spec = CeSpec::new(10, 0.1, Reduction::Sum);
/// assert_eq!(spec.targets, TargetSpec { num_classes: 10, smoothing: 0.1 });
/// assert_eq!(spec.reduction, Reduction::Sum);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CeSpec {
    /// Classes and label smoothing.
    pub targets: TargetSpec,
    /// How per-sample losses are reduced.
    pub reduction: Reduction,
}

impl CeSpec {
    /// A spec with the given classes, smoothing and reduction (validated when used).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{reference, CeSpec, MixError, MixPlan, Reduction, Upstream};
    /// let spec = CeSpec::new(0, 0.0, Reduction::Mean); // accepted here...
    /// let plan = MixPlan::identity(1).unwrap();
    /// let r = reference::mixup_ce::<f32>(&plan, &spec, &[], &[0], Upstream::Scalar(1.0));
    /// assert!(matches!(r, Err(MixError::EmptyShape { .. }))); // ...rejected when used
    /// ```
    pub fn new(num_classes: usize, smoothing: f32, reduction: Reduction) -> Self {
        Self {
            targets: TargetSpec {
                num_classes,
                smoothing,
            },
            reduction,
        }
    }
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
/// reports the `Mean` value for logging.
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
/// assert_eq!(spec.targets().num_classes, 3);
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
    /// A spec for `num_classes` classes with label smoothing `smoothing` and a reduction; no
    /// threshold, no class weights, classes averaged (timm's defaults but for its smoothing,
    /// which is given here).
    ///
    /// # Errors
    /// As [`TargetSpec::validate`]: [`MixError::EmptyShape`] for 0 classes,
    /// [`MixError::SizeOverflow`] past `u32::MAX`, [`MixError::InvalidArgument`] for a
    /// smoothing outside `[0, 1)`.
    pub fn new(num_classes: usize, smoothing: f32, reduction: Reduction) -> Result<Self> {
        let targets = TargetSpec::new(num_classes, smoothing)?;
        // timm's smoothing is a Python double (0.1), ours the f32 nearest to it: go back to the
        // shortest decimal that gives this f32 (what the user wrote), so that `on` and `off`
        // are timm's doubles rounded to f32. Widening the f32 instead (0.100000001…) rounds
        // them differently for many C (15, 23, 27, 33... at ε = 0.1).
        let eps: f64 = smoothing
            .to_string()
            .parse()
            .unwrap_or(f64::from(smoothing));
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
        check_len(what, self.targets.num_classes, v.len())?;
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(MixError::InvalidArgument {
                what,
                reason: format!("must be finite, got {} for class {i}", v[i]),
            }),
            None => Ok(()),
        }
    }

    /// Classes and label smoothing.
    pub fn targets(&self) -> &TargetSpec {
        &self.targets
    }
    /// The reduction.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }
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
            batch as f64 * self.targets.num_classes as f64
        }
    }

    /// The reduced loss from the per-sample sums `Σ L_i`.
    pub(crate) fn reduce(&self, sum: f64, batch: usize) -> f64 {
        match self.reduction {
            Reduction::Sum => sum,
            Reduction::Mean | Reduction::None => sum / self.mean_count(batch).max(1.0),
        }
    }

    /// The factor of every element's gradient before the upstream gradient.
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
    upstream: &Upstream<'_>,
) -> Result<usize> {
    let ce = CeSpec {
        targets: spec.targets,
        reduction: spec.reduction,
    };
    check_ce(plan, &ce, logits_len, upstream)
}
