//! A vectorizable `exp` and the blocked sums of the softmax rows.
//!
//! `f32::exp` calls libm once per element, which LLVM cannot vectorize. [`exp_lanes`] is a
//! table-driven `expf` (`2^(j/8)` times a short polynomial) written once over pulp's lanes
//! ([`Lanes`]): fused multiply-adds, adds, selects, an 8-entry table lookup and integer bit
//! operations, no calls into libm where the CPU has FMA, no branches. Every step is one
//! correctly rounded IEEE operation (a fused multiply-add rounds once), so every vector width
//! gives the same bits, on every CPU: x86-64 with FMA, aarch64 (where `mul_add` is one
//! instruction), and x86-64 without FMA, where `mul_add` is the exact software `fmaf` (correct,
//! but slower; only x86 CPUs older than 2013 lack FMA).

use super::lanes::{F32s, Lanes};
use pulp::Simd;

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
    exp_lanes(pulp::Scalar, x)
}

/// [`exp`] on every lane of `x`, operation for operation (so bit for bit). In the vector
/// builds the table is one register, indexed by `vpermd` with the low 3 bits of `n`.
#[inline(always)]
pub(crate) fn exp_lanes<L: Lanes>(l: L, x: F32s<L>) -> F32s<L> {
    let s = l.simd();
    let c = |v: f32| s.splat_f32s(v);
    // No clamp: below EXP_LO the garbage `s` is discarded by the final select; NaN and -inf
    // fail every comparison or land below it, and flow through (NaN) or give 0 (-inf).
    let t = s.mul_add_f32s(x, c(LOG2E_8), c(SHIFTER));
    let n = s.sub_f32s(t, c(SHIFTER));
    // -(n·c) + x rounded once: the value of `mul_add(-n, c, x)`.
    let r = s.negate_mul_add_f32s(n, c(LN2_HI_8), x);
    let r = s.negate_mul_add_f32s(n, c(LN2_LO_8), r);
    let tb = s.transmute_u32s_f32s(t);
    let scale = s.add_u32s(
        l.lookup8(&EXP2_J8, tb),
        s.wrapping_dyn_shl_u32s(tb, s.splat_u32s(20)),
    );
    let scale = s.transmute_f32s_u32s(scale);
    let r2 = s.mul_f32s(r, r);
    let p = s.mul_add_f32s(c(C4), r2, s.mul_add_f32s(c(C3), r, c(C2)));
    let q = s.mul_add_f32s(p, r2, r);
    let y = s.mul_add_f32s(scale, q, scale);
    // `x < EXP_LO` is false for NaN, which keeps `y` (NaN).
    s.select_f32s(s.less_than_f32s(x, c(EXP_LO)), c(0.0), y)
}

/// Lanes of the blocked sums: lane `k` adds the elements `≡ k (mod 16)` of a block in order, at
/// every vector width (one AVX-512 register, two AVX2 ones, 16 scalars), so every width adds
/// the same values in the same order and gives the same bits.
pub(crate) const SUM_LANES: usize = 16;

/// Elements per block of the blocked sums: each lane adds 32 values in f32 before the block's partial sums move to f64, which bounds the
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
    use crate::cpu::lanes::{Isa, Kernel, read, width, write};

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
            assert!(!e.is_nan(), "exp({x:e}) = {} (NaN error)", exp(x));
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

    /// `exp_lanes` over a slice at one level (the tail, if any, left as it is).
    struct ExpAll<'a>(&'a mut [f32]);
    impl Kernel for ExpAll<'_> {
        type Output = ();
        #[inline(always)]
        fn run<L: Lanes>(self, l: L) {
            for c in self.0.chunks_exact_mut(width::<L>()) {
                write::<L>(c, exp_lanes(l, read::<L>(c)));
            }
        }
    }

    /// Every level the CPU has (the baseline, AVX2, AVX-512) gives [`exp`]'s bits (NaN: a
    /// NaN), over the whole f32 range.
    #[test]
    fn every_level_matches_scalar_exp() {
        let same = |x: f32, y: f32| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan();
        // Every 257th bit pattern (all signs, exponents, NaNs, infinities), and every f32 in
        // [-1, -0.5] and around the cut-off; a multiple of 16 long.
        let mut xs: Vec<f32> = (0..=u32::MAX / 257)
            .map(|k| f32::from_bits(k * 257))
            .collect();
        xs.extend(((-0.5f32).to_bits()..=(-1.0f32).to_bits()).map(f32::from_bits));
        xs.extend(((-87.2f32).to_bits()..=(-87.5f32).to_bits()).map(f32::from_bits));
        xs.truncate(xs.len() / 16 * 16);
        let want: Vec<f32> = xs.iter().map(|&x| exp(x)).collect();
        for isa in Isa::all() {
            let mut got = xs.clone();
            isa.run(ExpAll(&mut got));
            for k in 0..xs.len() {
                assert!(
                    same(want[k], got[k]),
                    "{isa:?}: exp({:e}) {} vs {}",
                    xs[k],
                    got[k],
                    want[k]
                );
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
}
