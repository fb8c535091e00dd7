//! Element types: one trait, so each op is written once and instantiated per dtype.
//!
//! Arithmetic is always in f32: a value is widened with [`Element::to_f32`], combined, and
//! rounded once with [`Element::from_f32`] (round to nearest even for every type).

use half::{bf16, f16};

/// The element types the crate stores.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{bf16, DType, Element};
/// assert_eq!(<bf16 as Element>::DTYPE, DType::BF16);
/// assert_eq!((DType::BF16.size(), DType::BF16.name()), (2, "bf16"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// Unsigned 8-bit pixels (inputs only, as timm's collate path mixes them).
    U8,
}

impl DType {
    /// Bytes per element.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::DType;
    /// assert_eq!([DType::F32, DType::F16, DType::U8].map(DType::size), [4, 2, 1]);
    /// ```
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// Short name used in kernel entry points and benchmark labels (`f32`, `f16`, `bf16`, `u8`).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::DType;
    /// assert_eq!(DType::F16.name(), "f16");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U8 => "u8",
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
    /// use mixup_kernels::{DType, Element};
    /// assert_eq!(<u8 as Element>::DTYPE, DType::U8);
    /// ```
    const DTYPE: DType;
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
/// fn targets<T: FloatElement>(plan: &MixPlan, labels: &[u32], spec: &TargetSpec) -> Vec<T> {
///     let t = reference::soft_targets(plan, labels, spec).unwrap();
///     t.iter().map(|&v| T::from_f32(v as f32)).collect()
/// }
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.75]).unwrap();
/// let t: Vec<bf16> = targets(&plan, &[0, 1], &TargetSpec::new(2, 0.0).unwrap());
/// assert_eq!(t[0].to_f32(), 0.75);
/// ```
pub trait FloatElement: Element {}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
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
    const DTYPE: DType = DType::F16;
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
    const DTYPE: DType = DType::BF16;
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
    const DTYPE: DType = DType::U8;
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
    fn half_types_round_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even mantissa (1.0).
        assert_eq!(bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(f16::from_f32(1.0 + 1.0 / 2048.0).to_f32(), 1.0);
        assert_eq!(DType::BF16.size(), 2);
    }
}
