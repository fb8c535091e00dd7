//! The crate's one error type.
//!
//! Every public function validates its arguments before touching the caller's buffers and
//! returns one of these variants, naming what was wrong. Nothing in the public API panics on
//! user input.

use std::fmt;

/// Result alias used throughout the crate.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{MixConfig, MixPlan, Result, Sampler};
/// fn first_plan(classes: usize) -> Result<MixPlan> {
///     Sampler::new(MixConfig::timm(classes), 0)?.plan(0, 4)
/// }
/// assert!(first_plan(10).is_ok());
/// assert!(first_plan(0).is_err());
/// ```
pub type Result<T, E = MixError> = std::result::Result<T, E>;

/// Everything that can go wrong in `mixup-kernels`.
///
/// Each variant names what was wrong; [`Display`](std::fmt::Display) gives a readable message.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, MixError, MixPlan, SampleShape};
/// let plan = MixPlan::identity(2).unwrap();
/// let err = reference::mix(&plan, &SampleShape::rows(3), &[0.0f32; 5]).unwrap_err();
/// assert!(matches!(err, MixError::ShapeMismatch { what: "x", batch: 2, per_sample: 3, got: 5, .. }));
/// assert_eq!(
///     err.to_string(),
///     "`x` has 5 elements, but [B, sample size] = [2, 3] needs 6 (B is the plan's batch)"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MixError {
    /// A [`MixConfig`](crate::MixConfig) field is out of its domain.
    InvalidConfig {
        /// The field, by its timm name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A buffer's length disagrees with the shape it is used with.
    LengthMismatch {
        /// Which buffer.
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A `[B, …]` buffer (logits, images, soft targets) does not hold the plan's batch of
    /// samples of the expected size: its length is not `batch × per_sample`.
    ShapeMismatch {
        /// Which buffer.
        what: &'static str,
        /// The shape the operation reads, in the field's letters: `"[B, C]"` for logits and
        /// targets (C classes), `"[B, sample size]"` for images and rows.
        shape: &'static str,
        /// B: the plan's batch size.
        batch: usize,
        /// Elements per sample (C, or the sample's `C·H·W`).
        per_sample: usize,
        /// The length given.
        got: usize,
    },
    /// A buffer or tensor holds another number of samples than the plan's batch.
    BatchMismatch {
        /// Which buffer or tensor (`labels`, `images`, `logits`, `x`).
        what: &'static str,
        /// Batch size of the plan.
        plan: usize,
        /// Batch size of the data.
        data: usize,
    },
    /// The plan's boxes were drawn for another image size.
    ImageSizeMismatch {
        /// `(height, width)` the plan's boxes were drawn for.
        plan: (usize, usize),
        /// `(height, width)` of the data.
        data: (usize, usize),
    },
    /// A class label is negative or not below the number of classes.
    LabelOutOfRange {
        /// Sample index.
        index: usize,
        /// The label (an `i64` holds every `u32` and `i64` label).
        label: i64,
        /// Number of classes.
        num_classes: usize,
    },
    /// A plan entry names a partner outside the batch.
    PartnerOutOfRange {
        /// Sample index.
        index: usize,
        /// The partner it names.
        partner: usize,
        /// Batch size.
        batch: usize,
    },
    /// λ is NaN, infinite or outside `[0, 1]`.
    InvalidLambda {
        /// Sample index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A CutMix box is empty-ordered or extends past the image.
    InvalidBox {
        /// Sample index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// In-place mixing needs `partner[partner[i]] == i` for every `i`.
    NotInvolution {
        /// First sample where the rule fails.
        index: usize,
        /// Its partner.
        partner: usize,
    },
    /// A shape has a zero (or otherwise unusable) extent where the operation needs one.
    EmptyShape {
        /// Which extent.
        what: &'static str,
    },
    /// The product of the extents does not fit in `usize` (or in the device's index type).
    SizeOverflow {
        /// Which size.
        what: &'static str,
    },
    /// An argument is outside what the operation accepts (named, with the reason).
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A CUDA library (libcuda or libnvrtc) could not be found or loaded.
    CudaUnavailable(String),
    /// A CUDA driver (or NVRTC) call failed. Its result code is the error's
    /// [`source`](std::error::Error::source): cudarc's `DriverError` or `NvrtcError`.
    #[non_exhaustive]
    Driver {
        /// What the crate was doing.
        context: &'static str,
        /// The driver's own message.
        message: String,
        /// The failed call's result code.
        #[cfg(mixup_cuda)]
        source: crate::cuda::CudaError,
    },
    /// NVRTC rejected a kernel source. Its result code is the error's
    /// [`source`](std::error::Error::source): cudarc's `NvrtcError`.
    #[non_exhaustive]
    Compile {
        /// The kernel module.
        module: String,
        /// NVRTC's log.
        log: String,
        /// The failed call's result code.
        #[cfg(mixup_cuda)]
        source: crate::cuda::CudaError,
    },
    /// A device kernel flagged labels outside `0..num_classes`; the outputs of that launch are
    /// not meaningful.
    DeviceLabelOutOfRange {
        /// How many labels were out of range.
        count: u32,
    },
    /// The operation is not available in this build (a feature is off).
    Unsupported(String),
}

impl fmt::Display for MixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MixError::*;
        match self {
            InvalidConfig { field, reason } => write!(f, "invalid mix config: `{field}` {reason}"),
            LengthMismatch {
                what,
                expected,
                got,
            } => {
                write!(f, "`{what}` has {got} elements, the shape needs {expected}")
            }
            ShapeMismatch {
                what,
                shape,
                batch,
                per_sample,
                got,
            } => {
                let (b, n) = (*batch, *per_sample);
                write!(
                    f,
                    "`{what}` has {got} elements, but {shape} = [{b}, {n}] needs {} (B is the \
                     plan's batch)",
                    b.saturating_mul(n)
                )?;
                // Say which extent is off when the length factors through one of them.
                if *got == 0 {
                    write!(f, "; it is empty")
                } else {
                    // Both readings when both fit (800 = 80 rows of 10 = 8 rows of 100).
                    match (n > 0 && got % n == 0, b > 0 && got % b == 0) {
                        (true, true) => write!(
                            f,
                            "; it holds {} rows of {n} (a plan for another batch?) or {b} rows \
                             of {} (another size per sample?)",
                            got / n,
                            got / b
                        ),
                        (true, false) => write!(
                            f,
                            "; it holds {} rows of {n}: is the plan for this batch?",
                            got / n
                        ),
                        (false, true) => write!(f, "; it holds {b} rows of {}, not {n}", got / b),
                        (false, false) => Ok(()),
                    }
                }
            }
            BatchMismatch { what, plan, data } => write!(
                f,
                "`{what}` has {data} samples, but the plan is for a batch of {plan}"
            ),
            ImageSizeMismatch { plan, data } => {
                write!(
                    f,
                    "the plan's CutMix boxes were drawn for {}x{} images, the shape given \
                     describes {}x{} images",
                    plan.0, plan.1, data.0, data.1
                )?;
                if likely_format_swap(*plan, *data) {
                    write!(
                        f,
                        "; the memory format may be wrong: channels-first is [C, H, W] per \
                         sample (MemoryFormat::ChannelsFirst), channels-last [H, W, C] \
                         (MemoryFormat::ChannelsLast)"
                    )?;
                }
                Ok(())
            }
            LabelOutOfRange {
                index,
                label,
                num_classes,
            } => write!(
                f,
                "label {label} of sample {index} is not a class index: labels must be in \
                 0..{num_classes} ({num_classes} classes)"
            ),
            PartnerOutOfRange {
                index,
                partner,
                batch,
            } => write!(
                f,
                "partner {partner} of sample {index} is outside the batch of {batch}"
            ),
            InvalidLambda { index, value } => {
                write!(
                    f,
                    "lambda {value} of sample {index} is not a finite value in [0, 1]"
                )
            }
            InvalidBox { index, reason } => write!(f, "CutMix box of sample {index}: {reason}"),
            NotInvolution { index, partner } => write!(
                f,
                "in-place mixing needs partner[partner[i]] == i, but sample {index} pairs with \
                 {partner} whose partner is another sample; use the out-of-place call"
            ),
            EmptyShape { what } => write!(f, "`{what}` must not be zero"),
            SizeOverflow { what } => write!(f, "`{what}` overflows the index type"),
            InvalidArgument { what, reason } => write!(f, "`{what}`: {reason}"),
            CudaUnavailable(msg) => write!(f, "CUDA is unavailable: {msg}"),
            Driver {
                context, message, ..
            } => {
                write!(f, "CUDA driver error while {context}: {message}")
            }
            Compile { module, log, .. } => {
                write!(
                    f,
                    "NVRTC failed to compile kernel module `{module}`:\n{log}"
                )
            }
            DeviceLabelOutOfRange { count } => write!(
                f,
                "{count} device label(s) were outside 0..num_classes; the outputs of that launch \
                 are not meaningful"
            ),
            Unsupported(msg) => write!(f, "unsupported: {msg}"),
        }
    }
}

impl std::error::Error for MixError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(mixup_cuda)]
            MixError::Driver { source, .. } | MixError::Compile { source, .. } => {
                Some(source.as_error())
            }
            _ => None,
        }
    }
}

/// Multiplies extents, failing with [`MixError::SizeOverflow`] instead of wrapping.
pub(crate) fn checked_product(what: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or(MixError::SizeOverflow { what })
}

/// Whether an image-size mismatch looks like a wrong memory format rather than another image
/// size: one side in common and the other smaller than the plan's image (32x32 read as 32x3
/// or 3x32: the channel axis was read as a side). 32x32 against 32x64 is another size; so is
/// 224x160 against 160x224 (height and width swapped is not a memory-format mistake).
pub(crate) fn likely_format_swap(plan: (usize, usize), data: (usize, usize)) -> bool {
    let (sides, small) = ([plan.0, plan.1], plan.0.min(plan.1));
    let swapped = |kept: usize, other: usize| sides.contains(&kept) && other < small;
    swapped(data.0, data.1) || swapped(data.1, data.0)
}

/// The `[B, …]` shapes [`check_rows`] checks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows {
    /// `[B, C]`: logits, gradients, soft targets.
    Classes,
    /// `[B, sample size]`: images and feature rows.
    Samples,
}

impl Rows {
    /// The shape in the field's letters ([`MixError::ShapeMismatch`]'s `shape`).
    fn shape(self) -> &'static str {
        match self {
            Rows::Classes => "[B, C]",
            Rows::Samples => "[B, sample size]",
        }
    }
    /// What [`MixError::SizeOverflow`] names when `B × per-sample` overflows.
    fn product(self) -> &'static str {
        match self {
            Rows::Classes => "batch × num_classes",
            Rows::Samples => "batch × sample size",
        }
    }
}

/// Checks that a `[B, …]` buffer holds `batch` samples of `per_sample` elements; returns the
/// length. [`MixError::SizeOverflow`] if the product overflows, else
/// [`MixError::ShapeMismatch`].
pub(crate) fn check_rows(
    what: &'static str,
    rows: Rows,
    batch: usize,
    per_sample: usize,
    got: usize,
) -> Result<usize> {
    let total = checked_product(rows.product(), &[batch, per_sample])?;
    if total == got {
        Ok(total)
    } else {
        Err(MixError::ShapeMismatch {
            what,
            shape: rows.shape(),
            batch,
            per_sample,
            got,
        })
    }
}

/// Checks a buffer length against the shape's.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(MixError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}
