//! Element ⇄ f32 conversions for the hot loops, written branch-free so LLVM vectorizes them.
//!
//! `Element::to_f32` / `from_f32` for `f16` go through `half`, which checks for F16C at run
//! time on every call: correct, but it stops the loop around it from vectorizing. The functions
//! here compute the same bits with integer and float operations only (selects, shifts, one
//! magic-number addition), for every element type. They are bit-identical to the `Element`
//! methods, NaN payloads included; `tests` checks that exhaustively for the 16-bit widenings
//! and on every rounding boundary for the narrowings.

use crate::dtype::{Element, ScalarType};

/// A kernel written once, generic over the vector width: [`dispatch`] runs it with the widest
/// instruction set the CPU has, as pulp's `Arch::dispatch` does for `gemm` and `faer`.
pub(crate) trait Kernel {
    type Output;
    /// The body. It must be `#[inline(always)]`, and so must everything it calls that should
    /// use the vector instructions: it is inlined into the function compiled for `S`'s target
    /// features, and only what is inlined there gets them.
    fn run<S: Lanes>(self, s: S) -> Self::Output;
}

/// The instruction set picked once per call ([`Isa::detect`]) and then used for every row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Isa {
    arch: pulp::Arch,
    /// `vcvtneps2bf16` (AVX512-BF16) usable: only asked for with AVX-512 (pulp's `V4`).
    bf16: bool,
}

impl Isa {
    /// The CPU's best level: AVX-512 (pulp's `V4`), AVX2 + FMA (`V3`), or the baseline build.
    /// `RUSTFLAGS`-free: detected at run time.
    pub(crate) fn detect() -> Self {
        let arch = pulp::Arch::new();
        #[cfg(target_arch = "x86_64")]
        let bf16 =
            matches!(arch, pulp::Arch::V4(_)) && std::arch::is_x86_feature_detected!("avx512bf16");
        #[cfg(not(target_arch = "x86_64"))]
        let bf16 = false;
        Isa { arch, bf16 }
    }

    /// The baseline build only (the oracle of the bit-identity tests).
    #[cfg(test)]
    pub(crate) fn scalar() -> Self {
        Isa {
            arch: pulp::Arch::Scalar,
            bf16: false,
        }
    }

    /// Every level this CPU can run, the baseline first (for the bit-identity tests). A CPU
    /// without AVX-512 compares fewer levels, so the list is said once on stderr, and
    /// `MIXUP_REQUIRE_ISA` (`v3`, `v4` or `v4-bf16`: AVX2 + FMA, AVX-512, AVX-512 with its bf16
    /// conversions) makes a CPU without that level fail the tests instead.
    #[cfg(test)]
    pub(crate) fn all() -> Vec<Self> {
        let out = Self::levels();
        let names: Vec<&str> = out.iter().map(|i| i.name()).collect();
        static SAID: std::sync::Once = std::sync::Once::new();
        // To the process's stderr: libtest captures `eprintln!` of a passing test.
        SAID.call_once(|| {
            use std::io::Write;
            let list = names.join(", ");
            let _ = writeln!(
                std::io::stderr(),
                "vector levels compared on this CPU: {list}"
            );
        });
        if let Ok(want) = std::env::var("MIXUP_REQUIRE_ISA") {
            assert!(
                names.contains(&want.as_str()),
                "MIXUP_REQUIRE_ISA={want}, but this CPU runs only {names:?}"
            );
        }
        out
    }

    /// The level's name in [`Isa::all`]'s list.
    #[cfg(test)]
    fn name(&self) -> &'static str {
        match self.arch {
            #[cfg(target_arch = "x86_64")]
            pulp::Arch::V4(_) if self.bf16 => "v4-bf16",
            #[cfg(target_arch = "x86_64")]
            pulp::Arch::V4(_) => "v4",
            #[cfg(target_arch = "x86_64")]
            pulp::Arch::V3(_) => "v3",
            _ => "baseline",
        }
    }

    #[cfg(test)]
    fn levels() -> Vec<Self> {
        let mut out = vec![Self::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(v3) = pulp::x86::V3::try_new() {
                out.push(Isa {
                    arch: pulp::Arch::V3(v3),
                    bf16: false,
                });
            }
            if let Some(v4) = pulp::x86::V4::try_new() {
                out.push(Isa {
                    arch: pulp::Arch::V4(v4),
                    bf16: false,
                });
                if std::arch::is_x86_feature_detected!("avx512bf16") {
                    out.push(Isa {
                        arch: pulp::Arch::V4(v4),
                        bf16: true,
                    });
                }
            }
        }
        out
    }

    /// Runs `k` compiled for this level.
    #[inline(always)]
    pub(crate) fn run<K: Kernel>(self, k: K) -> K::Output {
        /// pulp's `WithSimd` hands its body a `S: Simd`; ours wants our [`Lanes`], so the token
        /// travels beside it (the same zero-sized value).
        struct On<K, L>(K, L);
        impl<K: Kernel, L: Lanes> pulp::WithSimd for On<K, L> {
            type Output = K::Output;
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _: S) -> K::Output {
                self.0.run(self.1)
            }
        }
        match self.arch {
            #[cfg(target_arch = "x86_64")]
            pulp::Arch::V4(v4) if self.bf16 => pulp::Simd::vectorize(v4, On(k, V4Bf16(v4))),
            #[cfg(target_arch = "x86_64")]
            pulp::Arch::V4(v4) => pulp::Simd::vectorize(v4, On(k, v4)),
            #[cfg(target_arch = "x86_64")]
            pulp::Arch::V3(v3) => pulp::Simd::vectorize(v3, On(k, v3)),
            _ => pulp::Simd::vectorize(pulp::Scalar, On(k, pulp::Scalar)),
        }
    }
}

/// What the passes need beyond pulp's `Simd`: a table lookup and loads and stores that convert
/// between the element type and f32 lanes. `Simd` gives the lane arithmetic; `simd()` reaches it.
pub(crate) trait Lanes: Copy {
    type S: pulp::Simd;
    /// The lane arithmetic.
    fn simd(self) -> Self::S;
    /// `table[i & 7]` in every lane.
    fn lookup8(self, table: &[u32; 8], i: U32s<Self>) -> U32s<Self>;
    /// `F32_LANES` elements widened exactly to f32 (`src.len()` must be that). A bf16 NaN is
    /// widened by the shift alone, without [`widen`]'s quiet bit: these lanes only feed
    /// arithmetic, and x86 and aarch64 quiet a signalling NaN operand by setting that bit, so
    /// every value computed from it has the same bits either way.
    fn load<T: Element>(self, src: &[T]) -> F32s<Self>;
    /// `F32_LANES` values rounded to the element type, as [`narrow`] rounds them, bit for bit
    /// (`dst.len()` must be that).
    fn store<T: Element>(self, dst: &mut [T], v: F32s<Self>);
    /// Two vectors stored as [`store`](Lanes::store) stores them, `lo` first (`dst.len()` must
    /// be `2·F32_LANES`), the same bits; with `finite` the caller promises that no lane is NaN,
    /// which lets the bf16 rounding skip its NaN case. AVX2 packs the two bf16 halves with one
    /// `vpackusdw`.
    #[inline(always)]
    fn store2<T: Element>(self, dst: &mut [T], lo: F32s<Self>, hi: F32s<Self>, finite: bool) {
        let _ = finite;
        let n = width::<Self>();
        assert_eq!(dst.len(), 2 * n);
        self.store(&mut dst[..n], lo);
        self.store(&mut dst[n..2 * n], hi);
    }
}

/// The f32 vector of a [`Lanes`].
pub(crate) type F32s<L> = <<L as Lanes>::S as pulp::Simd>::f32s;
/// The u32 vector of a [`Lanes`].
pub(crate) type U32s<L> = <<L as Lanes>::S as pulp::Simd>::u32s;

/// Lanes of `L`'s f32 vectors.
#[inline(always)]
pub(crate) const fn width<L: Lanes>() -> usize {
    <L::S as pulp::Simd>::F32_LANES
}

/// The first `width::<L>()` values of `src` as a vector (one unaligned load).
#[inline(always)]
pub(crate) fn read<L: Lanes>(src: &[f32]) -> F32s<L> {
    assert!(src.len() >= width::<L>());
    // SAFETY: `width` f32s at `src` (asserted above); `f32s` is that many f32s, any bits valid.
    unsafe { std::ptr::read_unaligned(src.as_ptr().cast::<F32s<L>>()) }
}

/// Stores a vector into the first `width::<L>()` values of `dst` (one unaligned store).
#[inline(always)]
pub(crate) fn write<L: Lanes>(dst: &mut [f32], v: F32s<L>) {
    assert!(dst.len() >= width::<L>());
    // SAFETY: `width` f32s at `dst` (asserted above).
    unsafe { std::ptr::write_unaligned(dst.as_mut_ptr().cast::<F32s<L>>(), v) }
}

/// [`Lanes::load`] through an array, element by element: the baseline build, and f16
/// everywhere (LLVM vectorizes the loop for the level's features).
#[inline(always)]
fn load_each<L: Lanes, T: Element>(src: &[T]) -> F32s<L> {
    let mut a = [0.0f32; 16];
    for (o, &v) in a.iter_mut().zip(src) {
        *o = match T::DTYPE {
            // The same shift as the vector builds (see `Lanes::load`).
            // SAFETY: DTYPE::BF16 is implemented only by bf16, a transparent u16.
            ScalarType::BF16 => {
                f32::from_bits(u32::from(unsafe { std::mem::transmute_copy::<T, u16>(&v) }) << 16)
            }
            _ => widen(v),
        };
    }
    read::<L>(&a)
}

/// [`Lanes::store`] through an array, element by element.
#[inline(always)]
fn store_each<L: Lanes, T: Element>(dst: &mut [T], v: F32s<L>) {
    let mut a = [0.0f32; 16];
    write::<L>(&mut a, v);
    for (o, &x) in dst.iter_mut().zip(&a) {
        *o = narrow(x);
    }
}

impl Lanes for pulp::Scalar {
    type S = pulp::Scalar;
    #[inline(always)]
    fn simd(self) -> Self::S {
        self
    }
    #[inline(always)]
    fn lookup8(self, table: &[u32; 8], i: u32) -> u32 {
        table[(i & 7) as usize]
    }
    #[inline(always)]
    fn load<T: Element>(self, src: &[T]) -> f32 {
        load_each::<Self, T>(src)
    }
    #[inline(always)]
    fn store<T: Element>(self, dst: &mut [T], v: f32) {
        store_each::<Self, T>(dst, v)
    }
}

/// f32 elements as a slice of f32 (`T` must be f32).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_f32<T: Element>(src: &[T]) -> &[f32] {
    assert!(T::DTYPE == ScalarType::F32);
    // SAFETY: DTYPE::F32 is implemented only by f32.
    unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<f32>(), src.len()) }
}

/// f32 elements as a mutable slice of f32 (`T` must be f32).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_f32_mut<T: Element>(dst: &mut [T]) -> &mut [f32] {
    assert!(T::DTYPE == ScalarType::F32);
    // SAFETY: DTYPE::F32 is implemented only by f32.
    unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len()) }
}

/// bf16 bits zero-extended to u32 lanes, shifted into f32's top half.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bf16_widen<S: pulp::Simd>(s: S, h: S::u32s) -> S::f32s {
    s.transmute_f32s_u32s(s.wrapping_dyn_shl_u32s(h, s.splat_u32s(16)))
}

/// [`narrow`]'s bf16 rounding on u32 lanes, NaN included: `(x + 0x7FFF + lsb) >> 16`, or
/// `(x >> 16) | 0x40` for a NaN; returns u32 lanes holding the 16-bit results.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bf16_bits<S: pulp::Simd>(s: S, v: S::f32s) -> S::u32s {
    let x = s.transmute_u32s_f32s(v);
    let hi = s.wrapping_dyn_shr_u32s(x, s.splat_u32s(16));
    let rounded = bf16_bits_finite(s, v);
    let nan = s.not_m32s(s.equal_f32s(v, v));
    s.select_u32s(nan, s.or_u32s(hi, s.splat_u32s(0x40)), rounded)
}

/// [`bf16_bits`] for lanes that are not NaN: `(x + 0x7FFF + lsb) >> 16` (no overflow: the
/// largest finite pattern is 0xFF7F_FFFF).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bf16_bits_finite<S: pulp::Simd>(s: S, v: S::f32s) -> S::u32s {
    let x = s.transmute_u32s_f32s(v);
    let sh = s.splat_u32s(16);
    let lsb = s.and_u32s(s.wrapping_dyn_shr_u32s(x, sh), s.splat_u32s(1));
    s.wrapping_dyn_shr_u32s(s.add_u32s(s.add_u32s(x, s.splat_u32s(0x7FFF)), lsb), sh)
}

#[cfg(target_arch = "x86_64")]
impl Lanes for pulp::x86::V3 {
    type S = Self;
    #[inline(always)]
    fn simd(self) -> Self {
        self
    }
    #[inline(always)]
    fn lookup8(self, table: &[u32; 8], i: U32s<Self>) -> U32s<Self> {
        let t: pulp::u32x8 = pulp::cast(*table);
        pulp::cast(
            self.avx2
                ._mm256_permutevar8x32_epi32(pulp::cast(t), pulp::cast(i)),
        )
    }
    #[inline(always)]
    fn load<T: Element>(self, src: &[T]) -> F32s<Self> {
        assert_eq!(src.len(), 8);
        match T::DTYPE {
            ScalarType::F32 => read::<Self>(as_f32(src)),
            ScalarType::BF16 => {
                // SAFETY: 8 u16s at `src` (asserted above); unaligned load.
                let h = unsafe { std::arch::x86_64::_mm_loadu_si128(src.as_ptr().cast()) };
                bf16_widen(self, pulp::cast(self.avx2._mm256_cvtepu16_epi32(h)))
            }
            ScalarType::U8 => {
                // SAFETY: 8 u8s at `src` (asserted above); unaligned 8-byte load.
                let q = unsafe { std::arch::x86_64::_mm_loadl_epi64(src.as_ptr().cast()) };
                pulp::cast(
                    self.avx
                        ._mm256_cvtepi32_ps(self.avx2._mm256_cvtepu8_epi32(q)),
                )
            }
            _ => load_each::<Self, T>(src),
        }
    }
    #[inline(always)]
    fn store<T: Element>(self, dst: &mut [T], v: F32s<Self>) {
        assert_eq!(dst.len(), 8);
        match T::DTYPE {
            ScalarType::F32 => write::<Self>(as_f32_mut(dst), v),
            ScalarType::BF16 => {
                use std::arch::x86_64::__m256i;
                let b: __m256i = pulp::cast(bf16_bits(self, v));
                let (lo, hi) = (
                    self.avx._mm256_castsi256_si128(b),
                    self.avx2._mm256_extracti128_si256::<1>(b),
                );
                // The 16-bit results are ≤ 0xFFFF, so the unsigned saturation keeps them.
                let packed = self.sse4_1._mm_packus_epi32(lo, hi);
                // SAFETY: 8 u16s at `dst` (asserted above); unaligned store.
                unsafe { std::arch::x86_64::_mm_storeu_si128(dst.as_mut_ptr().cast(), packed) };
            }
            _ => store_each::<Self, T>(dst, v),
        }
    }
    #[inline(always)]
    fn store2<T: Element>(self, dst: &mut [T], lo: F32s<Self>, hi: F32s<Self>, finite: bool) {
        assert_eq!(dst.len(), 16);
        if T::DTYPE != ScalarType::BF16 {
            self.store(&mut dst[..8], lo);
            return self.store(&mut dst[8..16], hi);
        }
        let (lo, hi) = if finite {
            (bf16_bits_finite(self, lo), bf16_bits_finite(self, hi))
        } else {
            (bf16_bits(self, lo), bf16_bits(self, hi))
        };
        // `vpackusdw` packs within 128-bit halves (lo 0–3, hi 0–3 | lo 4–7, hi 4–7); the
        // 64-bit permute puts them in order. Every value is ≤ 0xFFFF, so nothing saturates.
        let packed = self
            .avx2
            ._mm256_packus_epi32(pulp::cast(lo), pulp::cast(hi));
        let ordered = self.avx2._mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
        // SAFETY: 16 u16s at `dst` (asserted above); unaligned store.
        unsafe { std::arch::x86_64::_mm256_storeu_si256(dst.as_mut_ptr().cast(), ordered) };
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for pulp::x86::V4 {
    type S = Self;
    #[inline(always)]
    fn simd(self) -> Self {
        self
    }
    #[inline(always)]
    fn lookup8(self, table: &[u32; 8], i: U32s<Self>) -> U32s<Self> {
        // `vpermd` on 16 lanes reads the low 4 bits of the index: the table twice.
        let t: pulp::u32x16 = pulp::cast([*table, *table]);
        pulp::cast(
            self.avx512f
                ._mm512_permutexvar_epi32(pulp::cast(i), pulp::cast(t)),
        )
    }
    #[inline(always)]
    fn load<T: Element>(self, src: &[T]) -> F32s<Self> {
        assert_eq!(src.len(), 16);
        match T::DTYPE {
            ScalarType::F32 => read::<Self>(as_f32(src)),
            ScalarType::BF16 => {
                // SAFETY: 16 u16s at `src` (asserted above); unaligned load.
                let h = unsafe { std::arch::x86_64::_mm256_loadu_si256(src.as_ptr().cast()) };
                bf16_widen(self, pulp::cast(self.avx512f._mm512_cvtepu16_epi32(h)))
            }
            ScalarType::U8 => {
                // SAFETY: 16 u8s at `src` (asserted above); unaligned load.
                let q = unsafe { std::arch::x86_64::_mm_loadu_si128(src.as_ptr().cast()) };
                pulp::cast(
                    self.avx512f
                        ._mm512_cvtepi32_ps(self.avx512f._mm512_cvtepu8_epi32(q)),
                )
            }
            _ => load_each::<Self, T>(src),
        }
    }
    #[inline(always)]
    fn store<T: Element>(self, dst: &mut [T], v: F32s<Self>) {
        assert_eq!(dst.len(), 16);
        match T::DTYPE {
            ScalarType::F32 => write::<Self>(as_f32_mut(dst), v),
            ScalarType::BF16 => {
                let h = self
                    .avx512f
                    ._mm512_cvtepi32_epi16(pulp::cast(bf16_bits(self, v)));
                // SAFETY: 16 u16s at `dst` (asserted above); unaligned store.
                unsafe { std::arch::x86_64::_mm256_storeu_si256(dst.as_mut_ptr().cast(), h) };
            }
            _ => store_each::<Self, T>(dst, v),
        }
    }
}

/// pulp's `V4` on a CPU with AVX512-BF16 (Zen 4, Sapphire Rapids): bf16 stores through
/// `vcvtneps2bf16`, one instruction for [`bf16_bits`]' eight integer operations and the pack.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct V4Bf16(pulp::x86::V4);

/// `vcvtneps2bf16` rounds to nearest even and quiets NaNs exactly as [`narrow`] does
/// (`(x >> 16) | 0x40`), but treats subnormal inputs as zero: a vector holding one
/// (`vfpclassps` class 0x20) takes [`bf16_bits`] instead, so the bits are [`narrow`]'s in every
/// case. Inline assembly, because pulp's `V4` does not enable the `avx512bf16` feature that the
/// intrinsic needs; the caller checked the CPU ([`Isa::detect`]).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn cvtneps2bf16(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
    let out: std::arch::x86_64::__m256i;
    // SAFETY: the instruction reads a register and writes one; the CPU has it (see above).
    unsafe {
        std::arch::asm!(
            "vcvtneps2bf16 {o}, {i}",
            i = in(zmm_reg) v,
            o = lateout(ymm_reg) out,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    out
}

#[cfg(target_arch = "x86_64")]
impl Lanes for V4Bf16 {
    type S = pulp::x86::V4;
    #[inline(always)]
    fn simd(self) -> Self::S {
        self.0
    }
    #[inline(always)]
    fn lookup8(self, table: &[u32; 8], i: U32s<Self>) -> U32s<Self> {
        self.0.lookup8(table, i)
    }
    #[inline(always)]
    fn load<T: Element>(self, src: &[T]) -> F32s<Self> {
        self.0.load(src)
    }
    #[inline(always)]
    fn store<T: Element>(self, dst: &mut [T], v: F32s<Self>) {
        if T::DTYPE != ScalarType::BF16 {
            return self.0.store(dst, v);
        }
        assert_eq!(dst.len(), 16);
        let x: std::arch::x86_64::__m512 = pulp::cast(v);
        if self.0.avx512dq._mm512_fpclass_ps_mask::<0x20>(x) != 0 {
            return self.0.store(dst, v);
        }
        // SAFETY: AVX-512 F is enabled in every function that runs a `V4` kernel.
        let h = unsafe { cvtneps2bf16(x) };
        // SAFETY: 16 u16s at `dst` (asserted above); unaligned store.
        unsafe { std::arch::x86_64::_mm256_storeu_si256(dst.as_mut_ptr().cast(), h) };
    }
}

/// Widens one element to f32, exactly (`Element::to_f32`, bit for bit).
#[inline(always)]
pub(crate) fn widen<T: Element>(x: T) -> f32 {
    // `Element` is sealed: `T::DTYPE` names the one type that implements it with that tag, so
    // each arm reinterprets `T` as itself. The match is on a constant and folds away.
    match T::DTYPE {
        // SAFETY: DTYPE::F32 is implemented only by f32.
        ScalarType::F32 => unsafe { std::mem::transmute_copy::<T, f32>(&x) },
        // SAFETY: DTYPE::BF16 is implemented only by bf16, a transparent u16.
        ScalarType::BF16 => bf16_to_f32(unsafe { std::mem::transmute_copy::<T, u16>(&x) }),
        // SAFETY: DTYPE::F16 is implemented only by f16, a transparent u16.
        ScalarType::F16 => f16_to_f32(unsafe { std::mem::transmute_copy::<T, u16>(&x) }),
        // SAFETY: DTYPE::U8 is implemented only by u8.
        ScalarType::U8 => f32::from(unsafe { std::mem::transmute_copy::<T, u8>(&x) }),
    }
}

/// Rounds an f32 to the element type, to nearest even (`Element::from_f32`, bit for bit).
#[inline(always)]
pub(crate) fn narrow<T: Element>(v: f32) -> T {
    match T::DTYPE {
        // SAFETY (all arms): as in `widen`, the tag names the type, whose size matches.
        ScalarType::F32 => unsafe { std::mem::transmute_copy::<f32, T>(&v) },
        ScalarType::BF16 => unsafe { std::mem::transmute_copy::<u16, T>(&f32_to_bf16(v)) },
        ScalarType::F16 => unsafe { std::mem::transmute_copy::<u16, T>(&f32_to_f16(v)) },
        ScalarType::U8 => unsafe { std::mem::transmute_copy::<u8, T>(&f32_to_u8(v)) },
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

    /// `store` and `store2` (both NaN modes) of every probe and `load` of every u8, on every
    /// vector level this CPU has, against [`narrow`] and [`widen`], bit for bit.
    #[test]
    fn vector_stores_and_u8_loads_match_the_scalar_conversions() {
        struct Check<'a>(&'a [f32]);
        impl Kernel for Check<'_> {
            type Output = ();
            #[inline(always)]
            fn run<S: Lanes>(self, s: S) {
                fn each<S: Lanes, T: Element>(s: S, src: &[f32]) {
                    let n = width::<S>();
                    for chunk in src.chunks_exact(2 * n) {
                        let (lo, hi) = (read::<S>(&chunk[..n]), read::<S>(&chunk[n..]));
                        let want: Vec<T> = chunk.iter().map(|&v| narrow::<T>(v)).collect();
                        // The NaN-free rounding only where the caller could promise it.
                        let nan_free = !chunk.iter().any(|v| v.is_nan());
                        for finite in [false, nan_free] {
                            let mut got = vec![T::default(); 2 * n];
                            s.store2(&mut got, lo, hi, finite);
                            assert!(
                                got.iter()
                                    .zip(&want)
                                    .all(|(g, w)| { same_bits(g.to_f32(), w.to_f32()) }),
                                "store2 {:?} finite {finite}: {chunk:?}",
                                T::DTYPE
                            );
                        }
                        let mut got = vec![T::default(); n];
                        s.store(&mut got, lo);
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(g, w)| same_bits(g.to_f32(), w.to_f32())),
                            "store {:?}: {chunk:?}",
                            T::DTYPE
                        );
                    }
                }
                each::<S, bf16>(s, self.0);
                each::<S, f16>(s, self.0);
                each::<S, f32>(s, self.0);
                let n = width::<S>();
                let bytes: Vec<u8> = (0..=255u8).collect();
                for chunk in bytes.chunks_exact(n) {
                    let mut got = vec![0.0f32; n];
                    write::<S>(&mut got, s.load(chunk));
                    for (g, &b) in got.iter().zip(chunk) {
                        assert!(same_bits(*g, widen(b)), "u8 {b}");
                    }
                }
            }
        }
        let mut probes = probes();
        probes.truncate(probes.len() / 32 * 32);
        for isa in Isa::all() {
            isa.run(Check(&probes));
        }
    }
}
