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
