//! Element types: one trait, so each op is written once and instantiated per dtype.
//!
//! Arithmetic is always in f32: a value is widened with [`Element::to_f32`], combined, and
//! rounded once with [`Element::from_f32`] (round to nearest even for every type).

use half::{bf16, f16};

/// The element types the crate stores: ATen's `ScalarType` (a tensor's `dtype` in PyTorch),
/// named so that it does not clash with candle's `DType` under glob imports.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{bf16, ScalarType, Element};
/// assert_eq!(<bf16 as Element>::DTYPE, ScalarType::BF16);
/// assert_eq!((ScalarType::BF16.size(), ScalarType::BF16.name()), (2, "bf16"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// Unsigned 8-bit pixels (inputs only, as timm's collate path mixes them).
    U8,
}

impl ScalarType {
    /// Bytes per element.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::ScalarType;
    /// assert_eq!([ScalarType::F32, ScalarType::F16, ScalarType::U8].map(ScalarType::size), [4, 2, 1]);
    /// ```
    pub const fn size(self) -> usize {
        match self {
            ScalarType::F32 => 4,
            ScalarType::F16 | ScalarType::BF16 => 2,
            ScalarType::U8 => 1,
        }
    }

    /// Short name used in kernel entry points and benchmark labels (`f32`, `f16`, `bf16`, `u8`).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::ScalarType;
    /// assert_eq!(ScalarType::F16.name(), "f16");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            ScalarType::F32 => "f32",
            ScalarType::F16 => "f16",
            ScalarType::BF16 => "bf16",
            ScalarType::U8 => "u8",
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for u8 {}
}

/// A storable element. Sealed: implemented for `f32`, `f16`, `bf16` and `u8`.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{f16, Element};
/// // The arithmetic every backend does: widen, combine in f32, round once.
/// fn lerp<T: Element>(lam: f32, a: T, b: T) -> T {
///     T::from_f32(lam * a.to_f32() + (1.0 - lam) * b.to_f32())
/// }
/// assert_eq!(lerp(0.5, 1u8, 2u8), 2); // 1.5 rounds half to even
/// assert_eq!(lerp(0.25, f16::from_f32(4.0), f16::from_f32(0.0)).to_f32(), 1.0);
/// ```
pub trait Element:
    sealed::Sealed + Copy + Send + Sync + Default + std::fmt::Debug + 'static
{
    /// The runtime tag of this type.
    ///
    /// ```
    /// use mixup_kernels::{ScalarType, Element};
    /// assert_eq!(<u8 as Element>::DTYPE, ScalarType::U8);
    /// ```
    const DTYPE: ScalarType;
    /// Widens to f32 (exact for every implementor).
    ///
    /// ```
    /// use mixup_kernels::{bf16, Element};
    /// assert_eq!(Element::to_f32(200u8), 200.0);
    /// assert_eq!(Element::to_f32(bf16::from_f32(0.5)), 0.5);
    /// ```
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type, to nearest, ties to even. `u8` also clamps to `0..=255`
    /// (NaN becomes 0).
    ///
    /// ```
    /// use mixup_kernels::Element;
    /// assert_eq!(<u8 as Element>::from_f32(2.5), 2);
    /// assert_eq!(<u8 as Element>::from_f32(300.0), 255);
    /// assert_eq!(<u8 as Element>::from_f32(f32::NAN), 0);
    /// ```
    fn from_f32(v: f32) -> Self;
}

/// The floating-point elements: logits, gradients and soft targets (`f32`, `f16`, `bf16`).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, bf16, FloatElement, MixPlan, TargetSpec};
/// // Soft targets rounded to a float storage type.
/// fn targets<T: FloatElement>(plan: &MixPlan, spec: &TargetSpec, labels: &[u32]) -> Vec<T> {
///     let t = reference::soft_targets(plan, spec, labels).unwrap();
///     t.iter().map(|&v| T::from_f32(v as f32)).collect()
/// }
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.75]).unwrap();
/// let t: Vec<bf16> = targets(&plan, &TargetSpec::new(2, 0.0).unwrap(), &[0, 1]);
/// assert_eq!(t[0].to_f32(), 0.75);
/// ```
pub trait FloatElement: Element {}

impl Element for f32 {
    const DTYPE: ScalarType = ScalarType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for f16 {
    const DTYPE: ScalarType = ScalarType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Element for bf16 {
    const DTYPE: ScalarType = ScalarType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Element for u8 {
    const DTYPE: ScalarType = ScalarType::U8;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        // numpy's `rint` then `astype(uint8)` as timm's collate does; the clamp only matters for
        // values a convex combination of pixels cannot produce.
        let r = v.round_ties_even();
        if r.is_nan() {
            0
        } else {
            r.clamp(0.0, 255.0) as u8
        }
    }
}

impl FloatElement for f32 {}
impl FloatElement for f16 {}
impl FloatElement for bf16 {}

mod sealed_label {
    use std::borrow::Cow;

    pub trait Sealed: Sized {
        /// The labels as `u32` class indices, borrowed when they already are. Only called on
        /// labels that `check_labels` accepted (each in `0..C`, C ≤ `u32::MAX`).
        fn as_u32s(labels: &[Self]) -> Cow<'_, [u32]>;
    }
    impl Sealed for u32 {
        fn as_u32s(labels: &[Self]) -> Cow<'_, [u32]> {
            Cow::Borrowed(labels)
        }
    }
    impl Sealed for i64 {
        fn as_u32s(labels: &[Self]) -> Cow<'_, [u32]> {
            Cow::Owned(labels.iter().map(|&l| l as u32).collect())
        }
    }
}

/// A class label type for host slices: `u32`, or `i64` (PyTorch's and candle-nn's label dtype).
/// Sealed.
///
/// A label is a class index in `0..C`; anything else, a negative `i64` included, is
/// [`MixError::LabelOutOfRange`](crate::MixError::LabelOutOfRange) before any work. (CUDA
/// device buffers take `u32` labels.)
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, MixError, MixPlan, TargetSpec};
/// let plan = MixPlan::identity(2)?;
/// let spec = TargetSpec::new(3, 0.0)?;
/// let a = reference::soft_targets(&plan, &spec, &[2u32, 0])?;
/// let b = reference::soft_targets(&plan, &spec, &[2i64, 0])?;
/// assert_eq!(a, b);
/// let err = reference::soft_targets(&plan, &spec, &[2i64, -1]).unwrap_err();
/// assert_eq!(err, MixError::LabelOutOfRange { index: 1, label: -1, num_classes: 3 });
/// # Ok::<(), MixError>(())
/// ```
pub trait Label: sealed_label::Sealed + Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The label as an `i64` (exact for both types), as errors report it.
    ///
    /// ```
    /// use mixup_kernels::Label;
    /// assert_eq!(u32::MAX.to_i64(), 4_294_967_295);
    /// assert_eq!((-3i64).to_i64(), -3);
    /// ```
    fn to_i64(self) -> i64;

    /// Whether the label is a class index below `num_classes`.
    ///
    /// ```
    /// use mixup_kernels::Label;
    /// assert!(2u32.in_range(3) && !3u32.in_range(3));
    /// assert!(!(-1i64).in_range(3));
    /// ```
    fn in_range(self, num_classes: usize) -> bool {
        usize::try_from(self.to_i64()).is_ok_and(|l| l < num_classes)
    }
}

impl Label for u32 {
    #[inline]
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
}

impl Label for i64 {
    #[inline]
    fn to_i64(self) -> i64 {
        self
    }
}

/// Checked labels as `u32` class indices: borrowed for `u32`, converted for `i64` (the labels
/// must have passed `spec::check_labels`).
#[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
pub(crate) fn as_u32s<L: Label>(labels: &[L]) -> std::borrow::Cow<'_, [u32]> {
    L::as_u32s(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_rounds_half_to_even_and_clamps() {
        assert_eq!(u8::from_f32(2.5), 2);
        assert_eq!(u8::from_f32(3.5), 4);
        assert_eq!(u8::from_f32(254.6), 255);
        assert_eq!(u8::from_f32(300.0), 255);
        assert_eq!(u8::from_f32(-1.0), 0);
        assert_eq!(u8::from_f32(f32::NAN), 0);
    }

    #[test]
    fn labels_convert_only_in_range() {
        assert_eq!(&*as_u32s(&[3i64, 0, 7]), &[3u32, 0, 7]);
        assert!(matches!(as_u32s(&[1u32]), std::borrow::Cow::Borrowed(_)));
        assert!(!i64::MIN.in_range(usize::MAX));
        assert!(!(1i64 << 40).in_range(10) && (1i64 << 40).in_range(usize::MAX));
        assert!(u32::MAX.in_range(u32::MAX as usize + 1));
    }

    #[test]
    fn half_types_round_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0).
        assert_eq!(bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(f16::from_f32(1.0 + 1.0 / 2048.0).to_f32(), 1.0);
        assert_eq!(ScalarType::BF16.size(), 2);
    }
}
