//! Element ⇄ f32 conversions for the hot loops, written branch-free so LLVM vectorizes them.
//!
//! `Element::to_f32` / `from_f32` for `f16` go through `half`, which checks for F16C at run
//! time on every call: correct, but it stops the loop around it from vectorizing. The functions
//! here compute the same bits with integer and float operations only (selects, shifts, one
//! magic-number addition), for every element type. They are bit-identical to the `Element`
//! methods, NaN payloads included; `tests` checks that exhaustively for the 16-bit widenings
//! and on every rounding boundary for the narrowings.

use crate::dtype::{DType, Element};

/// Defines `fn $name<T>(args) -> R` that runs `$kernel::<T>(args)` compiled for AVX2 and FMA when
/// the CPU has both (detected at run time, the answer is cached), so the loops of the kernel
/// vectorize 8 f32 wide with cheap 16-bit packs; otherwise the baseline build runs (SSE2 on
/// x86-64, NEON on aarch64).
///
/// `$kernel` must be `#[inline(always)]`: the AVX2 function calls it directly, so LLVM inlines
/// it there and compiles its loops with AVX2. (A closure handed to a generic AVX2 function does
/// not work reliably: LLVM inlines bottom-up, the closure grows by the kernel inlined into it,
/// is then left out of line and compiled for SSE2; that made bf16 mixing 2.5× slower once.)
///
/// The bits of every result are the same either way: Rust never contracts `a * b + c` into a
/// fused multiply-add, so enabling FMA changes only what `f32::mul_add` compiles to (one
/// instruction instead of a call to the exact software `fmaf`), and every operation used is an
/// exactly rounded IEEE one.
macro_rules! simd_fn {
    (
        $(#[$meta:meta])*
        fn $name:ident<$t:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        => $kernel:ident
    ) => {
        $(#[$meta])*
        #[inline(always)]
        fn $name<$t: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2<$t: $bound>($($arg: $ty),*) $(-> $ret)? {
                    $kernel::<$t>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2::<$t>($($arg),*) };
                }
            }
            $kernel::<$t>($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// Widens one element to f32, exactly (`Element::to_f32`, bit for bit).
#[inline(always)]
pub(crate) fn widen<T: Element>(x: T) -> f32 {
    // `Element` is sealed: `T::DTYPE` names the one type that implements it with that tag, so
    // each arm reinterprets `T` as itself. The match is on a constant and folds away.
    match T::DTYPE {
        // SAFETY: DTYPE::F32 is implemented only by f32.
        DType::F32 => unsafe { std::mem::transmute_copy::<T, f32>(&x) },
        // SAFETY: DTYPE::BF16 is implemented only by bf16, a transparent u16.
        DType::BF16 => bf16_to_f32(unsafe { std::mem::transmute_copy::<T, u16>(&x) }),
        // SAFETY: DTYPE::F16 is implemented only by f16, a transparent u16.
        DType::F16 => f16_to_f32(unsafe { std::mem::transmute_copy::<T, u16>(&x) }),
        // SAFETY: DTYPE::U8 is implemented only by u8.
        DType::U8 => f32::from(unsafe { std::mem::transmute_copy::<T, u8>(&x) }),
    }
}

/// Rounds an f32 to the element type, to nearest even (`Element::from_f32`, bit for bit).
#[inline(always)]
pub(crate) fn narrow<T: Element>(v: f32) -> T {
    match T::DTYPE {
        // SAFETY (all arms): as in `widen`, the tag names the type, whose size matches.
        DType::F32 => unsafe { std::mem::transmute_copy::<f32, T>(&v) },
        DType::BF16 => unsafe { std::mem::transmute_copy::<u16, T>(&f32_to_bf16(v)) },
        DType::F16 => unsafe { std::mem::transmute_copy::<u16, T>(&f32_to_f16(v)) },
        DType::U8 => unsafe { std::mem::transmute_copy::<u8, T>(&f32_to_u8(v)) },
    }
}

/// bf16 → f32: a 16-bit shift; a NaN gets its quiet bit set, as `half` does.
#[inline(always)]
fn bf16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let nan = (h & 0x7FFF) > 0x7F80;
    f32::from_bits(if nan { (h | 0x40) << 16 } else { h << 16 })
}

/// f32 → bf16, round to nearest even: adding `0x7FFF + lsb` carries into bit 16 exactly when
/// the dropped half is above the midpoint, or at it with an odd kept part. A NaN keeps its top
/// mantissa bits and is quieted (`half`'s rule).
#[inline(always)]
fn f32_to_bf16(v: f32) -> u16 {
    let x = v.to_bits();
    let nan = (x & 0x7FFF_FFFF) > 0x7F80_0000;
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
    (if nan { (x >> 16) | 0x40 } else { rounded }) as u16
}

/// f16 → f32. Normals rebias the exponent; subnormals are `m · 2^-24`, exact in f32;
/// infinities and NaNs keep their payload with the quiet bit set (F16C's and `half`'s rule).
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7FFF;
    let normal = (em << 13) + ((127 - 15) << 23);
    let subnormal = (em as f32 * (1.0 / 16_777_216.0)).to_bits();
    let special = (em << 13) | 0x7F80_0000 | if em > 0x7C00 { 0x0040_0000 } else { 0 };
    let bits = if em < 0x0400 {
        subnormal
    } else if em >= 0x7C00 {
        special
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

/// f32 → f16, round to nearest even (after F. Giesen's `float_to_half_fast3_rtne`).
/// - results below the smallest normal: adding 0.5 aligns the 10 mantissa bits at the bottom
///   of the float and the FPU rounds them to nearest even;
/// - normals: rebias, add `0xFFF + lsb` (the rounding carry), shift; overflow lands on 0x7C00;
/// - NaN: quieted, top mantissa bits kept (`half`'s rule); ±inf and too-large values: ±inf.
#[inline(always)]
fn f32_to_f16(v: f32) -> u16 {
    const MAGIC: u32 = 126 << 23; // 0.5
    let x = v.to_bits();
    let sign = (x >> 16) & 0x8000;
    let a = x & 0x7FFF_FFFF;
    let nan = 0x7E00 | ((a & 0x007F_FFFF) >> 13);
    let subnormal = (f32::from_bits(a) + f32::from_bits(MAGIC))
        .to_bits()
        .wrapping_sub(MAGIC);
    // (15 - 127) << 23 as a wrapping addition: rebias the exponent from f32's to f16's.
    let normal = a
        .wrapping_add(0xC800_0000u32.wrapping_add(0xFFF))
        .wrapping_add((a >> 13) & 1)
        >> 13;
    let bits = if a > 0x7F80_0000 {
        nan
    } else if a >= 0x4780_0000 {
        0x7C00
    } else if a < 0x3880_0000 {
        subnormal
    } else {
        normal
    };
    (bits | sign) as u16
}

/// f32 → u8 as `Element::from_f32`: NaN → 0, clamp to `[0, 255]`, round half to even. Adding
/// 2^23 rounds to an integer (to nearest even) and leaves it in the low mantissa bits.
#[inline(always)]
fn f32_to_u8(v: f32) -> u8 {
    // `v >= 0` is false for NaN, which therefore becomes 0.
    let c = if v >= 0.0 { v } else { 0.0 };
    let c = if c <= 255.0 { c } else { 255.0 };
    ((c + 8_388_608.0).to_bits() & 0xFF) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn same_bits(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits()
    }

    #[test]
    fn widen_is_exact_for_every_16_bit_pattern() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            assert!(
                same_bits(widen(h), Element::to_f32(h)),
                "f16 {bits:#06x}: {} vs {}",
                widen(h),
                Element::to_f32(h)
            );
            let b = bf16::from_bits(bits);
            assert!(same_bits(widen(b), Element::to_f32(b)), "bf16 {bits:#06x}");
        }
        for v in 0..=u8::MAX {
            assert_eq!(widen(v), f32::from(v));
        }
    }

    /// f32 values around every 16-bit value: the value, its neighbours, the midpoints to the
    /// next value and their neighbours (the rounding boundaries), and random bit patterns.
    fn probes() -> Vec<f32> {
        let mut out = Vec::new();
        for bits in 0..=u16::MAX {
            for v in [
                f16::from_bits(bits).to_f32(),
                bf16::from_bits(bits).to_f32(),
            ] {
                out.push(v);
                let next = f32::from_bits(v.to_bits().wrapping_add(1));
                out.push(next);
                // Midpoints between this value and the next 16-bit value up in magnitude.
                for up in [
                    f16::from_bits(bits.wrapping_add(1)).to_f32(),
                    bf16::from_bits(bits.wrapping_add(1)).to_f32(),
                ] {
                    let mid = ((v as f64 + up as f64) / 2.0) as f32;
                    for d in [-1i32, 0, 1] {
                        out.push(f32::from_bits(mid.to_bits().wrapping_add_signed(d)));
                    }
                }
            }
        }
        let mut s = 0x1234_5678_9ABC_DEF0u64;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            out.push(f32::from_bits(s as u32));
        }
        out.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ]);
        out.extend([
            65504.0, 65519.99, 65520.0, 65536.0, 1e-8, -1e-8, 5.96e-8, 2.98e-8,
        ]);
        out
    }

    #[test]
    fn narrow_matches_element_from_f32() {
        for v in probes() {
            let (mine, theirs) = (narrow::<f16>(v), <f16 as Element>::from_f32(v));
            assert_eq!(
                mine.to_bits(),
                theirs.to_bits(),
                "f16 of {v:e} ({:#x})",
                v.to_bits()
            );
            let (mine, theirs) = (narrow::<bf16>(v), <bf16 as Element>::from_f32(v));
            assert_eq!(
                mine.to_bits(),
                theirs.to_bits(),
                "bf16 of {v:e} ({:#x})",
                v.to_bits()
            );
            assert_eq!(narrow::<u8>(v), <u8 as Element>::from_f32(v), "u8 of {v:e}");
            assert!(same_bits(narrow::<f32>(v), v) || v.is_nan());
        }
        // u8: every half-integer tie in range goes to the even neighbour.
        for k in 0..=255u32 {
            let v = k as f32 + 0.5;
            assert_eq!(narrow::<u8>(v), <u8 as Element>::from_f32(v), "u8 of {v}");
        }
    }
}
