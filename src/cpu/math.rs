//! A vectorizable `exp` and lane-parallel reductions for the softmax rows.
//!
//! `f32::exp` calls libm once per element, which LLVM cannot vectorize. [`exp`] is the Cephes
//! `expf` algorithm written with fused multiply-adds (`f32::mul_add`), adds, selects and integer
//! bit operations (no calls into libm where the CPU has FMA, no branches); [`exp8`] is the same
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
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = `LN2_HI + LN2_LO` to about 2^-50: with a fused `x - n·LN2_HI` the product is not
/// rounded, so the high part need not have spare zero bits (as Cephes' 9-bit one has).
const LN2_HI: f32 = std::f32::consts::LN_2;
const LN2_LO: f32 = -1.904_654_3e-9;
/// Cephes' `expf` coefficients: `e^r ≈ 1 + r + r²·(P0 + P1 r + … + P5 r^5)` on `|r| ≤ ln2/2`.
const P: [f32; 6] = [
    0.5, // Cephes' 5.0000001e-1 rounds to 0.5 in f32
    1.666_666_5e-1,
    4.166_579_6e-2,
    8.333_452e-3,
    1.398_199_9e-3,
    1.987_569_1e-4,
];

/// `e^x` in f32 for `x ≤ 88` (above, `2^n` overflows the exponent field: the softmax only
/// calls it with `x = z - max z ≤ 0`), returning 0 below `ln(2^-126) ≈ -87.34` (the exact value
/// there is under 1.2e-38) and NaN for NaN.
///
/// `x = n·ln2 + r` with `n = round(x·log2 e)` (by the 1.5·2^23 shifter), `r` reduced with
/// Cody–Waite's two-part ln2 in two fused multiply-adds, `e^r` by Cephes' degree-7 polynomial
/// on `|r| ≤ ln2/2` (`1 + r + r²·p(r)`, `p` by Estrin's scheme), and `2^n` assembled in the
/// exponent field. Maximum error, measured against f64 `exp` over `[-87.3, 0]` (every f32 in
/// `[-1, -0.5]` and 4·10^6 evenly spaced points) in the unit test: 1.26 ulp (relative error
/// under 1.6e-7); the test asserts < 1.5 ulp. See `exp_error_is_below_1_5_ulp`.
///
/// FMA was adopted for speed (the vector loop went from 12 multiplies and 13 adds per 8 lanes
/// to 12 fused or plain multiplies and 4 adds); before it, the function used separate rounded
/// multiplies and adds, with a worst error of 0.97 ulp.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // No clamp: below EXP_LO the garbage `2^n` is discarded by the final select; NaN and
    // -inf fail every comparison or land below it, and flow through (NaN) or give 0 (-inf).
    let t = x.mul_add(LOG2E, SHIFTER);
    let n = t - SHIFTER;
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    // Estrin's scheme: three independent pairs, then r² and r⁴, which halves the dependent
    // chain of Horner's rule.
    let r2 = r * r;
    let q0 = P[1].mul_add(r, P[0]);
    let q1 = P[3].mul_add(r, P[2]);
    let q2 = P[5].mul_add(r, P[4]);
    let p = (r2 * r2).mul_add(q2, r2.mul_add(q1, q0));
    let er = p.mul_add(r2, r + 1.0);
    // n = bits(t) - bits(SHIFTER), in [-126, 127]: the biased exponent is n + 127 in [1, 254].
    let n_int = t.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    let y = er * scale;
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
    let t = _mm256_fmadd_ps(x, c(LOG2E), shifter);
    let n = _mm256_sub_ps(t, shifter);
    // fnmadd(a, b, c) = -(a·b) + c, rounded once: the same value as mul_add(-n, LN2, x).
    let r = _mm256_fnmadd_ps(n, c(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, c(LN2_LO), r);
    let r2 = _mm256_mul_ps(r, r);
    let q0 = _mm256_fmadd_ps(c(P[1]), r, c(P[0]));
    let q1 = _mm256_fmadd_ps(c(P[3]), r, c(P[2]));
    let q2 = _mm256_fmadd_ps(c(P[5]), r, c(P[4]));
    let p = _mm256_fmadd_ps(_mm256_mul_ps(r2, r2), q2, _mm256_fmadd_ps(r2, q1, q0));
    let er = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, c(1.0)));
    let n_int = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(shifter));
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(n_int, _mm256_set1_epi32(127)));
    let y = _mm256_mul_ps(er, _mm256_castsi256_ps(scale));
    // Not-less-than, unordered: true for NaN, which keeps `y` as the scalar select does.
    let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, c(EXP_LO));
    _mm256_and_ps(y, keep)
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
    let mut m = tail.iter().fold(f32::NEG_INFINITY, |m, &v| max(m, v));
    for a in acc {
        m = max(m, a);
    }
    m
}

/// Elements per block of the blocked sums: each lane adds `BLOCK / LANES` = 64 values in f32
/// before the block's partial sums move to f64, which bounds the f32 rounding error of a sum
/// by about 64 ulp of the block's magnitude, whatever the row length.
pub(crate) const BLOCK: usize = 512;

/// Sums the lane accumulators into f64 (a fixed order: the result does not depend on threads).
#[inline(always)]
pub(crate) fn flush(acc: &mut [f32; LANES]) -> f64 {
    let s = acc.iter().map(|&v| f64::from(v)).sum();
    *acc = [0.0; LANES];
    s
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
        // Every f32 in [-1, -0.5] (one binade: the reduced argument sweeps its whole range) ...
        for b in (-0.5f32).to_bits()..=(-1.0f32).to_bits() {
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
