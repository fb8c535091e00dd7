//! The fused mix + normalize kernel (kernels/mix_normalize.cu): awkward shapes (odd sizes, 1
//! and 4 channels, 1×1 images, a sample split over several shared-memory tiles with a partial
//! last one, more channels than a tile holds: the direct launch), both memory formats in and
//! out, every input and output dtype, timm's u8 rounding, plans with involution pairs (one
//! block writes both samples), cycles (the partner read a second time), self-partnered samples
//! and CutMix boxes at the edges, empty, one line, one pixel and whole. Judged against
//! `reference::mix_normalize` (f64) within the f32 arithmetic's and the storage's rounding
//! (the bound of tests/mix_normalize.rs), and bit for bit against `cpu::mix_normalize`, the
//! promise of `CudaMixer::mix_normalize`; the elements around the output are checked untouched.

use std::sync::atomic::{AtomicU64, Ordering};

use mixup_kernels::cuda::kernels::emulated;
use mixup_kernels::{
    Element, FloatElement, MemoryFormat, MixPlan, Normalize, SampleShape, ScalarType, bf16, cpu,
    f16, reference,
};

use crate::common::{FORMATS, TestRng as Rng, Tolerance, hand_plans, layout, norm_for, norm_tol};
use crate::exchange::{Buffers, Case, Checks, Run, addr, bytes, elems, wide};

/// Block order n % 3, thread policy n / 3 % 4, cycled over the launches (as mix.rs does).
fn next_order() -> Vec<(u32, u32, u64)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    vec![((n % 3) as u32, (n / 3 % 4) as u32, n + 101)]
}

/// What one case runs: the input, the plan, the shapes and the output.
struct Spec<I> {
    plan: MixPlan,
    shape: SampleShape,
    norm: Normalize,
    x: Vec<I>,
    out_format: MemoryFormat,
    /// Output elements before the output's view (the kernel must not write them).
    off: usize,
    /// Elements of padding after each input row (a pitched tensor, as burn's CUDA tensors
    /// are; 0: dense).
    pad: usize,
    max_in: f64,
    /// Special values in the input (NaN, infinities, values that overflow or tie in the
    /// output type): judged against the CPU path's bits only (not the reference), and they
    /// must reach a NaN and an infinity in the output.
    specials: bool,
}

fn judge<I: Element, O: FloatElement + Default>(
    runs: &[Run],
    k: &mut Checks,
    s: &Spec<I>,
    buf: usize,
    fill: O,
) {
    let sz = size_of::<O>();
    let n = s.x.len();
    let all: Vec<O> = elems(&runs[0].bufs[buf]);
    let got = &all[s.off..s.off + n];
    if !s.specials {
        let want =
            reference::mix_normalize(&s.plan, &s.shape, &s.norm, &s.x, s.out_format).unwrap();
        let bound = norm_tol::<O>(&s.norm, s.max_in);
        let mut bad = 0;
        for (j, (g, w)) in wide(got).iter().zip(&want).enumerate() {
            let tol = bound.bound(j, *w);
            // A NaN is off too.
            let off = (g - w).abs().partial_cmp(&tol) != Some(std::cmp::Ordering::Less)
                && (g - w).abs() != tol;
            if off && bad < 2 {
                k.check(false, || {
                    format!("[{j}] is {g}, reference {w} (tol {tol:.3e})")
                });
            }
            bad += usize::from(off);
        }
        k.check(bad == 0, || {
            format!("{bad} of {n} elements off the reference")
        });
    }
    // The CPU path's bits, any NaN matching any NaN (the device gives the canonical NaN; the
    // CPU's conversion keeps the payload).
    let mut cpu_out = vec![O::default(); n];
    cpu::mix_normalize(&s.plan, &s.shape, &s.norm, &s.x, s.out_format, &mut cpu_out).unwrap();
    let same = |j: usize| {
        let (g, c) = (got[j].to_f32(), cpu_out[j].to_f32());
        (g.is_nan() && c.is_nan()) || bytes(&got[j..=j]) == bytes(&cpu_out[j..=j])
    };
    let bad: Vec<usize> = (0..n).filter(|&j| !same(j)).collect();
    k.check(bad.is_empty(), || {
        let j = bad[0];
        format!(
            "{} elements not the CPU path's bits, first [{j}]: {} (bits {:?}), the CPU's {} ({:?})",
            bad.len(),
            got[j].to_f32(),
            bytes(&got[j..=j]),
            cpu_out[j].to_f32(),
            bytes(&cpu_out[j..=j])
        )
    });
    if s.specials {
        let nans = (0..n).filter(|&j| cpu_out[j].to_f32().is_nan()).count();
        let infs = (0..n)
            .filter(|&j| cpu_out[j].to_f32().is_infinite())
            .count();
        k.check(nans > 0 && infs > 0, || {
            format!("the specials reached no NaN ({nans}) or no infinity ({infs})")
        });
    }
    let around: Vec<u8> = bytes(&all[..s.off])
        .into_iter()
        .chain(bytes(&all[s.off + n..]))
        .collect();
    let fills = bytes(&vec![fill; all.len() - n]);
    k.check(around == fills, || {
        format!(
            "wrote outside its view ({} bytes around it)",
            fills.len() / sz
        )
    });
}

/// Adds the case of `s` with output dtype `O`.
fn push<I, O>(s: Spec<I>, what: String, out: &mut Vec<Case>)
where
    I: Element + Send + Sync + 'static,
    O: FloatElement + Default + Send + Sync + 'static,
{
    let n = s.x.len();
    let mut b = Buffers::default();
    let seg = emulated::input_row(&s.shape);
    let xb = b.add(bytes(&crate::mix::pitched(&s.x, seg, seg + s.pad)), false);
    let fill = O::from_f32(-77.0);
    // The view, with `off` elements before it and 3 after.
    let ob = b.add(bytes(&vec![fill; s.off + n + 3]), true);
    let pb = b.add(emulated::staged_plan(&s.plan).0, false);
    let mut ms = s.norm.mean().to_vec();
    ms.extend_from_slice(s.norm.std());
    let mb = b.add(bytes(&ms), false);
    let dev = crate::exchange::device(addr(pb, 0), addr(pb, 0), 232_448);
    let launch = emulated::mix_normalize(
        &s.plan,
        &s.shape,
        &s.norm,
        I::DTYPE,
        addr(xb, 0),
        s.out_format,
        O::DTYPE,
        addr(ob, s.off * size_of::<O>()),
        n,
        addr(mb, 0),
        (s.pad > 0).then_some(seg + s.pad),
        &dev,
    )
    .unwrap()
    .expect("a launch");
    out.push(Case {
        group: "mixnorm",
        what,
        launch,
        orders: next_order(),
        bufs: b.0,
        verdict: Box::new(move |runs, k| judge(runs, k, &s, ob, fill)),
    });
}

/// The cases of input type `I` for one shape, batch, plan and formats, output `o` (and u8
/// rounding when `rint`).
#[allow(clippy::too_many_arguments)]
fn case<I: Element + Send + Sync + 'static>(
    rng: &mut Rng,
    (c, h, w): (usize, usize, usize),
    plan: &MixPlan,
    name: &str,
    (fin, fout): (MemoryFormat, MemoryFormat),
    o: ScalarType,
    rint: bool,
    (off, pad): (usize, usize),
    out: &mut Vec<Case>,
) {
    let u8_in = I::DTYPE == ScalarType::U8;
    let (lo, hi, scale, max_in) = if u8_in {
        (0.0, 255.0, 255.0, 255.0)
    } else {
        (-2.0, 3.0, 1.0, 3.0)
    };
    let n = plan.len() * c * h * w;
    let x: Vec<I> = (0..n)
        .map(|_| {
            if u8_in {
                I::from_f32(rng.below(256) as f32)
            } else {
                I::from_f32(rng.range(lo, hi))
            }
        })
        .collect();
    let s = Spec {
        plan: plan.clone(),
        shape: layout(fin, c, h, w),
        norm: norm_for(c, scale).with_u8_rounding(rint),
        x,
        out_format: fout,
        off,
        pad,
        max_in,
        specials: false,
    };
    let what = format!(
        "mix_normalize {} -> {}{}: {name}, B {}, {c}x{h}x{w} {} -> {}, off {off}, pad {pad}",
        I::DTYPE.name(),
        o.name(),
        if rint { " rint" } else { "" },
        plan.len(),
        fin.name(),
        fout.name()
    );
    match o {
        ScalarType::F32 => push::<I, f32>(s, what, out),
        ScalarType::F16 => push::<I, f16>(s, what, out),
        _ => push::<I, bf16>(s, what, out),
    }
}

/// The dtype variants: every (input, output) pair, and u8 with rounding to each output.
const VARIANTS: [(ScalarType, ScalarType, bool); 15] = {
    use ScalarType::{BF16, F16, F32, U8};
    [
        (U8, F32, false),
        (U8, F16, false),
        (U8, BF16, false),
        (U8, F32, true),
        (U8, F16, true),
        (U8, BF16, true),
        (F32, F32, false),
        (F32, F16, false),
        (F32, BF16, false),
        (F16, F32, false),
        (F16, F16, false),
        (F16, BF16, false),
        (BF16, F32, false),
        (BF16, F16, false),
        (BF16, BF16, false),
    ]
};

#[allow(clippy::too_many_arguments)]
fn variant(
    v: (ScalarType, ScalarType, bool),
    rng: &mut Rng,
    dims: (usize, usize, usize),
    plan: &MixPlan,
    name: &str,
    formats: (MemoryFormat, MemoryFormat),
    off: (usize, usize),
    out: &mut Vec<Case>,
) {
    let (i, o, rint) = v;
    match i {
        ScalarType::U8 => case::<u8>(rng, dims, plan, name, formats, o, rint, off, out),
        ScalarType::F32 => case::<f32>(rng, dims, plan, name, formats, o, rint, off, out),
        ScalarType::F16 => case::<f16>(rng, dims, plan, name, formats, o, rint, off, out),
        ScalarType::BF16 => case::<bf16>(rng, dims, plan, name, formats, o, rint, off, out),
    }
}

/// The last dimension of an input of `(c, h, w)` in `format`.
fn input_row(format: MemoryFormat, (c, _, w): (usize, usize, usize)) -> usize {
    match format {
        MemoryFormat::ChannelsFirst => w,
        MemoryFormat::ChannelsLast => c,
    }
}

pub fn cases() -> Vec<Case> {
    let mut rng = Rng::new(14);
    let mut out = Vec::new();
    let mut k = 0usize;
    // Awkward shapes, every plan of `hand_plans` (pairs with a self-partnered sample at odd
    // batches, a 3+-cycle, identity; boxes at the edges, empty, one line, one pixel, whole),
    // every pair of formats; the dtype variants in rotation.
    type Dims = (usize, usize, usize);
    let shapes: [(Dims, &[usize]); 7] = [
        ((3, 5, 7), &[1, 5]),
        ((1, 1, 1), &[1, 5]),
        ((4, 3, 2), &[2, 5]),
        ((1, 9, 13), &[3]),
        // 1600 pixels: two tiles of 1365, the last partial.
        ((3, 40, 40), &[3]),
        // 1155 pixels: two tiles of 1024.
        ((4, 33, 35), &[3]),
        // More channels than a tile holds: the direct launch, 4 items a sample.
        ((4097, 1, 2), &[3]),
    ];
    for (dims, batches) in shapes {
        for &batch in batches {
            for (name, plan) in hand_plans(batch, dims.1, dims.2) {
                for fin in FORMATS {
                    for fout in FORMATS {
                        let v = VARIANTS[k % VARIANTS.len()];
                        variant(
                            v,
                            &mut rng,
                            dims,
                            &plan,
                            &name,
                            (fin, fout),
                            // Output offset; input rows dense, padded by 3 elements, or to a
                            // multiple of 16 elements (u8: 16 bytes, as cubecl pads them).
                            (k % 2, [0, 3, 16 - input_row(fin, dims) % 16][k % 3]),
                            &mut out,
                        );
                        k += 1;
                    }
                }
            }
        }
    }
    // Every dtype variant in every pair of formats on a pair plan with boxes and a cycle of
    // MixUp samples.
    let plans = hand_plans(5, 5, 7);
    for v in VARIANTS {
        for (name, plan) in plans
            .iter()
            .filter(|(n, _)| n.as_str() == "hand pairs boxes+0" || n.as_str() == "hand cycle mixup")
        {
            for fin in FORMATS {
                for fout in FORMATS {
                    variant(
                        v,
                        &mut rng,
                        (3, 5, 7),
                        plan,
                        name,
                        (fin, fout),
                        (0, 0),
                        &mut out,
                    );
                }
            }
        }
    }
    specials(&mut out);
    out
}

/// The case of `specials` with input `x`: mean 0, std 1, dense, no offset.
fn special_spec<I>(
    plan: &MixPlan,
    (c, h, w): (usize, usize, usize),
    (fin, fout): (MemoryFormat, MemoryFormat),
    x: Vec<I>,
) -> Spec<I> {
    Spec {
        plan: plan.clone(),
        shape: layout(fin, c, h, w),
        norm: Normalize::new(&[0.0; 3], &[1.0; 3], 1.0).unwrap(),
        x,
        out_format: fout,
        off: 0,
        pad: 0,
        max_in: 0.0,
        specials: true,
    }
}

/// f32 and f16 inputs holding special values (NaN, ±inf, the f32 maximum, 65520 and 65504 (f16
/// overflow), bf16 rounding ties 0x3f808000 and 0x3f818000, subnormals of every type, ±0)
/// through mean 0 and std 1 (the value itself in f32) to every output type, both formats, on
/// plans with self-partnered, λ = 1, MixUp and CutMix samples: each output element the CPU
/// path's bits (NaN as NaN). The f16 and bf16 conversions on sm_75 are integer code.
fn specials(out: &mut Vec<Case>) {
    let values: [f32; 16] = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        65520.0,
        65504.0,
        -65520.0,
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        f32::from_bits(0x0000_0001),
        f32::from_bits(0x0080_0000),
        5.96e-8,
        -1.0e-40,
        0.0,
        -0.0,
    ];
    let (c, h, w) = (3, 4, 5);
    for (pi, (name, plan)) in hand_plans(5, h, w).into_iter().enumerate() {
        if !(name.ends_with("boxes+0") || name.ends_with("mixup")) {
            continue;
        }
        for (oi, o) in [ScalarType::F32, ScalarType::F16, ScalarType::BF16]
            .into_iter()
            .enumerate()
        {
            let fin = FORMATS[(pi + oi) % 2];
            let fout = FORMATS[pi % 2];
            let n = plan.len() * c * h * w;
            let x: Vec<f32> = (0..n)
                .map(|j| values[(j * 7 + pi) % values.len()])
                .collect();
            let what = |i: &str| {
                format!(
                    "mix_normalize {i} -> {} specials: {name}, {c}x{h}x{w} {} -> {}",
                    o.name(),
                    fin.name(),
                    fout.name()
                )
            };
            let spec = |x| special_spec(&plan, (c, h, w), (fin, fout), x);
            let spec16 = |x| special_spec(&plan, (c, h, w), (fin, fout), x);
            let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            match o {
                ScalarType::F32 => {
                    push::<f32, f32>(spec(x.clone()), what("f32"), out);
                    push::<f16, f32>(spec16(x16.clone()), what("f16"), out);
                }
                ScalarType::F16 => {
                    push::<f32, f16>(spec(x.clone()), what("f32"), out);
                    push::<f16, f16>(spec16(x16.clone()), what("f16"), out);
                }
                _ => {
                    push::<f32, bf16>(spec(x.clone()), what("f32"), out);
                    push::<f16, bf16>(spec16(x16.clone()), what("f16"), out);
                }
            }
        }
    }
}
