//! A vectorizable `exp` and lane-parallel reductions for the softmax rows.
//!
//! `f32::exp` calls libm once per element, which LLVM cannot vectorize. [`exp`] is a table-driven
//! `expf` (`2^(j/8)` times a short polynomial) written with fused multiply-adds (`f32::mul_add`),
//! adds, selects, a table lookup and integer bit operations (no calls into libm where the CPU has FMA, no branches); [`exp8`] is the same
//! computation on 8 lanes with AVX2 and FMA intrinsics. Every step is one correctly rounded IEEE
//! operation (a fused multiply-add rounds once), so both give the same bits, and the same bits
//! on every CPU: x86-64 with FMA, aarch64 (where `mul_add` is one instruction), and x86-64
//! without FMA, where `mul_add` is glibc's exact software `fmaf` (correct, but slower; only
//! x86 CPUs older than 2013 lack FMA).

/// Lanes of the reductions: 8 f32 lanes fill one AVX2 vector (two SSE ones). With one vector
/// per accumulator the `exp` loop fits AVX2's 16 registers; 16 lanes spilled and ran slower
/// (and the AVX-512 build of the same loops was slower still on the Zen 4 this was tuned on).
pub(crate) const LANES: usize = 8;

/// Below this, `e^x` is under f32's smallest normal (2^-126): [`exp`] returns 0.
const EXP_LO: f32 = -87.336_55;

/// `1.5 · 2^23`: adding it to a float of magnitude under 2^22 rounds it to an integer, which
/// then sits in the low mantissa bits.
const SHIFTER: f32 = 12_582_912.0;
/// `8 / ln 2` (exact scaling of f32's `log2 e` by 2^3).
const LOG2E_8: f32 = std::f32::consts::LOG2_E * 8.0;
/// ln2 / 8 = `LN2_HI_8 + LN2_LO_8` to about 2^-53: with a fused `x - n·LN2_HI_8` the product
/// is not rounded, so the high part need not have spare zero bits (as Cephes' 9-bit one has).
/// Both are the f32 split of ln 2 scaled by 2^-3, which is exact.
const LN2_HI_8: f32 = std::f32::consts::LN_2 / 8.0;
const LN2_LO_8: f32 = -1.904_654_3e-9 / 8.0;
/// `2^(j/8)` for `j = 0..8`, each rounded to nearest f32 (bit patterns from f64 `2^(j/8)`):
/// relative error at most 2^-24 / 2^(j/8), and exact for `j = 0`. Stored as those bits minus
/// `j << 20`: adding the shifter's bits shifted left by 20, `(8k + j) << 20`, then gives the bits
/// of `2^k · 2^(j/8)` in one integer add (see [`exp`]).
#[allow(clippy::identity_op)] // the j = 0 entry is written like the others
const EXP2_J8: [u32; 8] = [
    0x3F80_0000 - (0 << 20),
    0x3F8B_95C2 - (1 << 20),
    0x3F98_37F0 - (2 << 20),
    0x3FA5_FED7 - (3 << 20),
    0x3FB5_04F3 - (4 << 20),
    0x3FC5_672A - (5 << 20),
    0x3FD7_44FD - (6 << 20),
    0x3FEA_C0C7 - (7 << 20),
];
/// Taylor coefficients of `e^r = 1 + r + r²·(C2 + C3 r + C4 r²) + O(r^5)`: on `|r| ≤ ln2/16`
/// the truncation is below `r^5/120 · 1.05 < 1.4e-9` relative, about 0.02 ulp.
const C2: f32 = 0.5;
const C3: f32 = f32::from_bits(0x3E2A_AAAB); // 1/6
const C4: f32 = f32::from_bits(0x3D2A_AAAB); // 1/24
/// `e^x` in f32 for `x ≤ 88` (above, `2^k` overflows the exponent field: the softmax only
/// calls it with `x = z - max z ≤ 0`), returning 0 below `ln(2^-126) ≈ -87.34` (the exact value
/// there is under 1.2e-38) and NaN for NaN.
///
/// Table-driven: `x = (8k + j)·ln2/8 + r` with `n = 8k + j = round(x · 8/ln2)` (by the
/// 1.5·2^23 shifter, `0 ≤ j < 8`), `r` reduced with Cody–Waite's two-part `ln2/8` in two fused
/// multiply-adds (`|r| ≤ ln2/16 ≈ 0.0433`; the first one is exact, as in Cephes), then
/// `e^x = s · (1 + q)` with `s = 2^k · T_j`, `T_j = 2^(j/8)` from an 8-entry table, and
/// `q = e^r - 1` by the degree-4 Taylor polynomial, `s + s·q` as one fused multiply-add.
///
/// `s` costs one integer add: the shifter leaves `n` in the low bits of `t`'s bits, so
/// `bits(t) << 20` is `(8k + j) << 20 = (k << 23) + (j << 20)` modulo 2^32 (the shifter's own
/// bits, `0x4B4 · 2^20`, shift out), and the table holds `bits(T_j) - (j << 20)`: the sum is
/// `bits(T_j) + (k << 23)`, `T_j` with `k` added to its exponent. For `x ≥ EXP_LO`,
/// `-1008 ≤ n ≤ 1016` gives `-126 ≤ k ≤ 127`, so `s` is a normal number (below, the garbage is
/// discarded by the final select). In the vector build the table is one register, indexed by
/// `vpermd` with the low 3 bits of `n`.
///
/// Error bound, in ulps of the result `y ≈ T_j e^r`: the table entry's rounding, at most
/// `0.5 · ulp(T_j)`, which is `≤ 0.5 · e^r ≤ 0.53` ulp of `y` (`y` lies in `T_j`'s binade except
/// for `j = 0, r < 0`, where `T_0 = 1` is exact); the truncation (`< 1.4e-9` relative), the
/// rounding of `r` (`≤ 2^-29` absolute), of `r²` and of the polynomial's steps (together under
/// `2.5e-9` absolute in `q`), under `4e-9` relative, which is `< 0.07` ulp; the final rounding
/// of the fused `s + s·q`, 0.5 ulp (one rounding even where the result is subnormal, just above
/// the cut-off). Total `< 1.1` ulp. Measured against f64 `exp` (every f32 in `[-2, -0.5]`, which
/// covers every `j` and the whole range of `r`, and 4·10^6 evenly spaced points over
/// `[-87.3, 0]`): see `exp_error_is_below_1_5_ulp`, which asserts < 1.5 ulp.
///
/// History: the Cephes `expf` polynomial (degree 7 on `|r| ≤ ln2/2`) took 12 multiply-class
/// operations per 8 lanes (worst error 1.26 ulp with FMA, 0.97 ulp without); the table with
/// `2^k` assembled after the polynomial took 9 multiply-class operations and 4 integer ones; this
/// takes 8 and 3.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // No clamp: below EXP_LO the garbage `s` is discarded by the final select; NaN and -inf
    // fail every comparison or land below it, and flow through (NaN) or give 0 (-inf).
    let t = x.mul_add(LOG2E_8, SHIFTER);
    let n = t - SHIFTER;
    let r = (-n).mul_add(LN2_HI_8, x);
    let r = (-n).mul_add(LN2_LO_8, r);
    let tb = t.to_bits();
    let s = f32::from_bits(EXP2_J8[(tb & 7) as usize].wrapping_add(tb << 20));
    let r2 = r * r;
    let p = C4.mul_add(r2, C3.mul_add(r, C2));
    let q = p.mul_add(r2, r);
    let y = s.mul_add(q, s);
    // `!(x < EXP_LO)` rather than `x >= EXP_LO`, so NaN keeps `y` (NaN), as in `exp8`.
    if x < EXP_LO {
        0.0
    } else {
        y
    }
}

/// [`exp`] on 8 lanes, operation for operation (so bit for bit).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = _mm256_set1_ps;
    let shifter = c(SHIFTER);
    let t = _mm256_fmadd_ps(x, c(LOG2E_8), shifter);
    let n = _mm256_sub_ps(t, shifter);
    // fnmadd(a, b, c) = -(a·b) + c, rounded once: the same value as mul_add(-n, LN2, x).
    let r = _mm256_fnmadd_ps(n, c(LN2_HI_8), x);
    let r = _mm256_fnmadd_ps(n, c(LN2_LO_8), r);
    let tb = _mm256_castps_si256(t);
    // SAFETY: EXP2_J8 holds 8 u32s; `vpermd` uses the low 3 bits of each index lane.
    let table = unsafe { _mm256_loadu_si256(EXP2_J8.as_ptr().cast::<__m256i>()) };
    let s = _mm256_add_epi32(
        _mm256_permutevar8x32_epi32(table, tb),
        _mm256_slli_epi32::<20>(tb),
    );
    let s = _mm256_castsi256_ps(s);
    let r2 = _mm256_mul_ps(r, r);
    let p = _mm256_fmadd_ps(c(C4), r2, _mm256_fmadd_ps(c(C3), r, c(C2)));
    let q = _mm256_fmadd_ps(p, r2, r);
    let y = _mm256_fmadd_ps(s, q, s);
    // Not-less-than, unordered: true for NaN, which keeps `y` as the scalar select does.
    let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, c(EXP_LO));
    _mm256_and_ps(y, keep)
}

/// [`exp`] on 16 lanes with AVX-512, operation for operation (so bit for bit). The 8-entry
/// table fills both halves of one register (`vpermd` on 16 lanes reads the low 4 bits of `n`).
///
/// On Zen 4 a 512-bit operation takes one scheduler entry for 16 lanes where AVX2 takes two:
/// the `exp` loop is bound by how many of its long dependency chains (about 34 cycles from load
/// to store) the core keeps in flight, and 16 lanes per entry keep twice as many.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = _mm512_set1_ps;
    let shifter = c(SHIFTER);
    let t = _mm512_fmadd_ps(x, c(LOG2E_8), shifter);
    let n = _mm512_sub_ps(t, shifter);
    let r = _mm512_fnmadd_ps(n, c(LN2_HI_8), x);
    let r = _mm512_fnmadd_ps(n, c(LN2_LO_8), r);
    let tb = _mm512_castps_si512(t);
    const TABLE: [u32; 16] = {
        let mut t = [0; 16];
        let mut j = 0;
        while j < 16 {
            t[j] = EXP2_J8[j % 8];
            j += 1;
        }
        t
    };
    // SAFETY: TABLE holds 16 u32s.
    let table = unsafe { _mm512_loadu_si512(TABLE.as_ptr().cast()) };
    let s = _mm512_add_epi32(
        _mm512_permutexvar_epi32(tb, table),
        _mm512_slli_epi32::<20>(tb),
    );
    let s = _mm512_castsi512_ps(s);
    let r2 = _mm512_mul_ps(r, r);
    let p = _mm512_fmadd_ps(c(C4), r2, _mm512_fmadd_ps(c(C3), r, c(C2)));
    let q = _mm512_fmadd_ps(p, r2, r);
    let y = _mm512_fmadd_ps(s, q, s);
    // Not-less-than, unordered: true for NaN, which keeps `y` as the scalar select does.
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, c(EXP_LO));
    _mm512_maskz_mov_ps(keep, y)
}

/// The largest element, NaNs skipped (`-inf` for an empty slice or all NaN).
///
/// `if v > m { v } else { m }` is one `maxps` on x86 (a NaN `v` compares false and is skipped),
/// where `f32::max` costs three instructions per vector for its NaN rule. Which zero wins
/// between `-0.0` and `+0.0` may differ from `f32::max`; the result is only used as a shift.
#[inline(always)]
pub(crate) fn max_lanes(w: &[f32]) -> f32 {
    #[inline(always)]
    fn max(m: f32, v: f32) -> f32 {
        if v > m {
            v
        } else {
            m
        }
    }
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = w.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            acc[k] = max(acc[k], c[k]);
        }
    }
    max_fold(tail, acc)
}

/// The end of [`max_lanes`]: the tail (`< LANES` elements) folded, then the lane maxima in
/// lane order (shared with the AVX2 pass (1) of the CE so both give the same bits).
#[inline(always)]
pub(crate) fn max_fold(tail: &[f32], acc: [f32; LANES]) -> f32 {
    #[inline(always)]
    fn max(m: f32, v: f32) -> f32 {
        if v > m {
            v
        } else {
            m
        }
    }
    let mut m = tail.iter().fold(f32::NEG_INFINITY, |m, &v| max(m, v));
    for a in acc {
        m = max(m, a);
    }
    m
}

/// Elements per block of the blocked sums: each lane adds `BLOCK / lanes` values in f32 (64 with
/// 8 lanes, 32 with the CE's 16) before the block's partial sums move to f64, which bounds the
/// f32 rounding error of a sum by that many ulp of the block's magnitude, whatever the row length.
pub(crate) const BLOCK: usize = 512;

/// Sums the lane accumulators into f64 and clears them. The order is fixed (the result does
/// not depend on threads): a pairwise tree, lane `k` plus lane `k + N/2`, then `k + N/4`, ...,
/// which LLVM turns into a few vector adds (a lane-by-lane sum was 16 dependent adds, about
/// 0.1 cycle per element of a 1000-class row).
#[inline(always)]
pub(crate) fn flush<const N: usize>(acc: &mut [f32; N]) -> f64 {
    const { assert!(N.is_power_of_two()) };
    let mut v = acc.map(f64::from);
    let mut width = N / 2;
    while width > 0 {
        for k in 0..width {
            v[k] += v[k + width];
        }
        width /= 2;
    }
    *acc = [0.0; N];
    v[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_error(x: f32) -> f64 {
        let got = exp(x) as f64;
        let want = (x as f64).exp();
        // One ulp of the exact value at f32 precision.
        let ulp = (want as f32).abs();
        let ulp = f32::from_bits(ulp.to_bits() + 1) as f64 - ulp as f64;
        (got - want).abs() / ulp
    }

    #[test]
    fn exp_error_is_below_1_5_ulp() {
        let mut worst = (0.0f64, 0.0f32);
        let mut check = |x: f32| {
            let e = ulp_error(x);
            if e > worst.0 {
                worst = (e, x);
            }
        };
        // Every f32 in [-2, -0.5] (two binades: `n` runs over -23..=-6, so every table entry
        // is used with its whole range of the reduced argument) ...
        for b in (-0.5f32).to_bits()..=(-2.0f32).to_bits() {
            check(f32::from_bits(b));
        }
        // ... and evenly spaced points over the rest of the range, plus the positive side the
        // softmax never uses but the function supports.
        let n = 4_000_000;
        for k in 0..=n {
            check(-87.3 + 86.3 * k as f32 / n as f32);
        }
        for k in 0..=100_000 {
            check(88.0 * k as f32 / 100_000.0);
        }
        println!("exp: worst error {} ulp at x = {:e}", worst.0, worst.1);
        assert!(
            worst.0 < 1.5,
            "exp error {} ulp at x = {:e}",
            worst.0,
            worst.1
        );
    }

    /// The 8- and 16-lane builds give [`exp`]'s bits (NaN: a NaN), over the whole f32 range.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exps_match_scalar() {
        use std::arch::x86_64::*;
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let avx512 = avx2 && std::arch::is_x86_feature_detected!("avx512f");
        if !avx2 {
            return;
        }
        let same = |x: f32, y: f32| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan();
        // Every 257th bit pattern (all signs, exponents, NaNs, infinities), and every f32 in
        // [-1, -0.5] and around the cut-off.
        let mut xs: Vec<f32> = (0..=u32::MAX / 257)
            .map(|k| f32::from_bits(k * 257))
            .collect();
        xs.extend(((-0.5f32).to_bits()..=(-1.0f32).to_bits()).map(f32::from_bits));
        xs.extend(((-87.2f32).to_bits()..=(-87.5f32).to_bits()).map(f32::from_bits));
        for c in xs.chunks_exact(16) {
            let want: Vec<f32> = c.iter().map(|&x| exp(x)).collect();
            let mut got = [0.0f32; 16];
            // SAFETY: AVX2 and FMA checked above; 16 f32s in `c` and `got`.
            unsafe {
                _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr())));
                _mm256_storeu_ps(
                    got.as_mut_ptr().add(8),
                    exp8(_mm256_loadu_ps(c[8..].as_ptr())),
                );
            }
            for k in 0..16 {
                assert!(
                    same(want[k], got[k]),
                    "exp8({:e}) {} vs {}",
                    c[k],
                    got[k],
                    want[k]
                );
            }
            if avx512 {
                // SAFETY: AVX-512 F checked above.
                unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_loadu_ps(c.as_ptr()))) };
                for k in 0..16 {
                    assert!(
                        same(want[k], got[k]),
                        "exp16({:e}) {} vs {}",
                        c[k],
                        got[k],
                        want[k]
                    );
                }
            }
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(-1e30), 0.0);
        assert!(exp(f32::NAN).is_nan());
        // Just above the cut-off the result is a normal number near 2^-126.
        let x = -87.33f32;
        let e = exp(x);
        assert!(e.is_normal() && (e as f64 / (x as f64).exp() - 1.0).abs() < 1e-6);
        assert!(exp(88.0).is_finite());
    }

    #[test]
    fn max_skips_nan_and_handles_tails() {
        let mut v: Vec<f32> = (0..37).map(|k| k as f32 * 0.5 - 3.0).collect();
        v[20] = f32::NAN;
        assert_eq!(max_lanes(&v), 15.0);
        assert_eq!(max_lanes(&v[..3]), -2.0);
        assert_eq!(max_lanes(&[]), f32::NEG_INFINITY);
    }
}
