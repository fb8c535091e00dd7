//! Argument types shared by every backend (CPU, reference, CUDA, candle), and the checks that
//! go with them, written once so each backend rejects bad input the same way.

use crate::config::TargetSpec;
use crate::error::{check_len, checked_product, MixError, Result};
use crate::plan::MixPlan;

/// How one sample of a batch is laid out in memory (the batch dimension is outermost).
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CeSpec {
    /// Classes and label smoothing.
    pub targets: TargetSpec,
    /// How per-sample losses are reduced.
    pub reduction: Reduction,
}

impl CeSpec {
    /// A spec with the given classes, smoothing and reduction (validated when used).
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
