//! # mixup-kernels
//!
//! Mixup and CutMix for Rust trainers: a seeded [`Sampler`] that draws who mixes with whom and
//! how much exactly as timm and fastai define it, and every mixing operation on three backends:
//!
//! - [`reference`](mod@reference): plain f64 code written to be obviously right (the oracle of the tests);
//! - `cpu` (feature `cpu`): the multi-threaded fallback, f32/f16/bf16 (and u8 pixels);
//! - `cuda` (feature `cuda`, on by default): fused kernels compiled at run time through NVRTC;
//!   [`check_cuda`] says whether they can run here (in every build);
//! - `candle` (feature `candle`): the same operations on `candle_core::Tensor`s, the loss as a
//!   candle op with a backward pass;
//! - `burn` (feature `burn`): the same on burn 0.22 tensors, the losses as burn autodiff ops.
//!
//! The operations: mix a batch of inputs (MixUp lerp and CutMix paste, NCHW or NHWC), build
//! soft targets with label smoothing, the fused mixup cross-entropy (loss and gradient in
//! one pass, no dense target in memory), and `mix_normalize`: decoded u8 pixels mixed,
//! normalized per channel ([`Normalize`]), put in the wanted [`MemoryFormat`] and dtype in one
//! pass (timm's `FastCollateMixup` + `PrefetchLoader`).
//!
//! Every call takes the plan first, then what describes the data (its shape, or the loss
//! spec), then the data, then the outputs.
//!
//! ```
//! use mixup_kernels::{reference, MixConfig, Sampler, SampleShape};
//! let sampler = Sampler::new(MixConfig::timm(10), 0)?;
//! let plan = sampler.plan(0, 4)?; // step 0, 4 samples
//! let x: Vec<f32> = (0..4 * 3 * 2 * 2).map(|v| v as f32).collect();
//! let mixed = reference::mix(&plan, &SampleShape::channels_first(3, 2, 2), &x)?;
//! assert_eq!(mixed.len(), x.len());
//! # Ok::<(), mixup_kernels::MixError>(())
//! ```
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bbox;
mod config;
mod dtype;
mod error;
mod normalize;
mod plan;
mod sampler;
mod spec;

pub mod reference;

#[cfg(feature = "cpu")]
#[cfg_attr(docsrs, doc(cfg(feature = "cpu")))]
pub mod cpu;

#[cfg(feature = "candle")]
#[cfg_attr(docsrs, doc(cfg(feature = "candle")))]
pub mod candle;

#[cfg(feature = "burn")]
#[cfg_attr(docsrs, doc(cfg(feature = "burn")))]
pub mod burn;

// `mixup_cuda` is set by build.rs for the `cuda` feature and for `candle-cuda`.
#[cfg(mixup_cuda)]
#[cfg_attr(docsrs, doc(cfg(any(feature = "cuda", feature = "candle-cuda"))))]
pub mod cuda;

pub use bbox::timm_rand_bbox;
pub use config::{BoxRule, MixConfig, Mode, PartnerRule, TargetSpec};
pub use dtype::{Element, FloatElement, Label, ScalarType};
pub use error::{MixError, Result};
pub use normalize::Normalize;
pub use plan::{CutBox, MixPlan, SampleMix};
pub use sampler::{ImageSize, Sampler};
pub use spec::{BceSpec, CeSpec, GradOutput, MemoryFormat, Reduction, SampleShape};

// The README's code blocks are compiled and run as doctests (its candle blocks only with the
// `candle` feature: build.rs writes the copy this includes).
#[cfg(doctest)]
#[doc = include_str!(concat!(env!("OUT_DIR"), "/README.md"))]
pub struct ReadmeDoctests;

/// Re-exports of the element types the crate stores (from the `half` crate), so callers need
/// no direct dependency on `half`.
///
/// ```
/// use mixup_kernels::{bf16, f16, Element};
/// assert_eq!(f16::from_f32(0.5).to_f32(), 0.5);
/// assert_eq!(<bf16 as Element>::DTYPE.name(), "bf16");
/// ```
pub use half::{bf16, f16};

/// Whether the CUDA path can run here on device `ordinal`, and if not, why: the one question to
/// ask before choosing between `cuda` and `cpu` (available in every build; it never panics).
///
/// # Errors
/// - [`MixError::Unsupported`]: the crate was built without the `cuda` feature (nor
///   `candle-cuda`); the message says which feature to turn on.
/// - [`MixError::CudaUnavailable`]: libcuda (the NVIDIA driver) or libnvrtc cannot be loaded;
///   the message names the library, where it was looked for and how to install it.
/// - [`MixError::Driver`]: the driver found no device, or no device `ordinal` (its result code is
///   the error's [`source`](std::error::Error::source)).
///
/// # Examples
///
/// ```
/// use mixup_kernels::MixError;
/// match mixup_kernels::check_cuda(0) {
///     Ok(()) => println!("using the GPU"),
///     Err(e @ (MixError::Unsupported(_) | MixError::CudaUnavailable(_) | MixError::Driver { .. })) => {
///         println!("using the CPU: {e}")
///     }
///     Err(e) => panic!("unexpected: {e}"),
/// }
/// ```
pub fn check_cuda(ordinal: usize) -> Result<()> {
    #[cfg(mixup_cuda)]
    return cuda::context::check_device(ordinal);
    #[cfg(not(mixup_cuda))]
    {
        let _ = ordinal;
        Err(MixError::Unsupported(
            "mixup-kernels was built without the `cuda` feature; rebuild with `--features cuda` \
             (on by default) to use the GPU"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_cuda_says_why_and_never_panics() {
        match super::check_cuda(0) {
            #[cfg(not(mixup_cuda))]
            Err(crate::MixError::Unsupported(m)) => assert!(m.contains("`cuda` feature"), "{m}"),
            #[cfg(mixup_cuda)]
            Ok(()) | Err(crate::MixError::Driver { .. }) => {}
            #[cfg(mixup_cuda)]
            Err(crate::MixError::CudaUnavailable(m)) => {
                assert!(m.contains("libcuda") || m.contains("NVRTC"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        #[cfg(mixup_cuda)]
        if super::check_cuda(0).is_ok() {
            // Past the last device: the driver's answer, not a panic.
            assert!(super::check_cuda(1 << 20).is_err());
        }
    }
}
