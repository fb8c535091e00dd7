//! # mixup-kernels
//!
//! Mixup and CutMix for Rust trainers: a seeded [`Sampler`] that draws who mixes with whom and
//! how much exactly as timm and fastai define it, and every mixing operation on three backends:
//!
//! - [`reference`](mod@reference): plain f64 code written to be obviously right (the oracle of the tests);
//! - `cpu` (feature `cpu`): the multi-threaded fallback, f32/f16/bf16 (and u8 pixels);
//! - [`cuda`] (feature `cuda`): fused kernels compiled at run time through NVRTC (without the
//!   feature, a module with the same names whose calls return [`MixError::Unsupported`]);
//! - `candle` (feature `candle`): the same operations on `candle_core::Tensor`s, the loss as a
//!   candle op with a backward pass.
//!
//! The operations: mix a batch of inputs (MixUp lerp and CutMix paste, NCHW or NHWC), build
//! soft targets with label smoothing, and the fused mixup cross-entropy (loss and gradient in
//! one pass, no dense target in memory).
//!
//! ```
//! use mixup_kernels::{MixConfig, Sampler, Layout};
//! let sampler = Sampler::new(MixConfig::timm(10), 0).unwrap();
//! let plan = sampler.plan(0, 0, 4, (2, 2)).unwrap();
//! let x: Vec<f32> = (0..4 * 3 * 2 * 2).map(|v| v as f32).collect();
//! let mixed = mixup_kernels::reference::mix(&plan, &Layout::Nchw { channels: 3, height: 2, width: 2 }, &x).unwrap();
//! assert_eq!(mixed.len(), x.len());
//! ```
#![warn(missing_docs)]

mod bbox;
mod config;
mod dtype;
mod error;
mod plan;
mod sampler;
mod spec;

pub mod reference;

#[cfg(feature = "cpu")]
pub mod cpu;

#[cfg(feature = "candle")]
pub mod candle;

// The real CUDA module when the `cuda` (or `candle-cuda`) feature is on (cfg set by build.rs),
// else a stub with the same names whose calls return `MixError::Unsupported`.
#[cfg(mixup_cuda)]
pub mod cuda;
#[cfg(not(mixup_cuda))]
#[path = "cuda/stub.rs"]
pub mod cuda;

pub use bbox::timm_rand_bbox;
pub use config::{BoxRule, MixConfig, Mode, PartnerRule, TargetSpec};
pub use dtype::{DType, Element, FloatElement};
pub use error::{MixError, Result};
pub use plan::{CutBox, MixPlan, SampleMix};
pub use sampler::Sampler;
pub use spec::{BceSpec, CeSpec, Layout, Reduction, Upstream};

/// Re-exports of the element types the crate stores (from the `half` crate), so callers need
/// no direct dependency on `half`.
///
/// ```
/// use mixup_kernels::{bf16, f16, Element};
/// assert_eq!(f16::from_f32(0.5).to_f32(), 0.5);
/// assert_eq!(<bf16 as Element>::DTYPE.name(), "bf16");
/// ```
pub use half::{bf16, f16};
