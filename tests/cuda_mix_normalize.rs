//! The fused mix + normalize op on the GPU (`CudaMixer::mix_normalize`, `mix_normalize_raw`):
//! every input and output dtype, both memory formats in and out, timm's u8 rounding, awkward
//! shapes (1×1 images, 1 and 4 channels, samples over several tiles, more channels than a tile
//! holds), plans with pairs, cycles, self-partnered samples and CutMix boxes at the edges, views
//! at odd element offsets; bit for bit against `cpu::mix_normalize` and within the f32 bound of
//! the f64 `reference::mix_normalize`; an ImageNet-sized batch; errors before any launch.
//! Prints SKIPPED without a GPU (see tests/cuda_common).
#![cfg(all(feature = "cuda", feature = "cpu"))]

mod cuda_common;

use cuda_common::*;
use mixup_kernels::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
use mixup_kernels::cuda::{CudaMixer, CudaSlice, DeviceNormalize, DevicePlan};
use mixup_kernels::{
    CutBox, Element, FloatElement, MemoryFormat, MixError, MixPlan, Normalize, SampleShape,
    ScalarType, bf16, cpu, f16, reference,
};

/// Identity, pairs (an odd batch leaves a sample with itself), a permutation (cycles), timm's
/// flip, CutMix with random boxes on pairs and on a permutation, and pairs with boxes at the
/// edges (whole image, last pixel, left column, last row, no rows).
fn plans(r: &mut TestRng, batch: usize, h: usize, w: usize) -> Vec<(String, MixPlan)> {
    let lam = lams(r, batch);
    let prs = pairs(r, batch);
    let perm = permutation(r, batch);
    let flip: Vec<usize> = (0..batch).rev().collect();
    let (hh, ww) = (h as u32, w as u32);
    let edges = [
        cut(0..hh, 0..ww),
        cut(hh - 1..hh, ww - 1..ww),
        cut(0..hh, 0..1),
        cut(hh - 1..hh, 0..ww),
        cut(0..0, 0..ww),
    ];
    let boxes: Vec<Option<CutBox>> = (0..batch).map(|i| Some(edges[i % edges.len()])).collect();
    let size = image(h, w);
    let edge_boxes = |partner: &[usize]| MixPlan::with_boxes(partner, &lam, &boxes, size).unwrap();
    vec![
        ("identity".into(), MixPlan::identity(batch).unwrap()),
        ("pairs".into(), MixPlan::from_parts(&prs, &lam).unwrap()),
        (
            "permutation".into(),
            MixPlan::from_parts(&perm, &lam).unwrap(),
        ),
        ("flip".into(), MixPlan::from_parts(&flip, &lam).unwrap()),
        ("cutmix pairs".into(), cutmix_plan(r, &prs, h, w)),
        ("cutmix permutation".into(), cutmix_plan(r, &perm, h, w)),
        ("edge boxes, flip".into(), edge_boxes(&flip)),
        ("edge boxes, permutation".into(), edge_boxes(&perm)),
    ]
}

fn input<I: Element>(r: &mut TestRng, n: usize) -> (Vec<I>, f64, f64) {
    if I::DTYPE == ScalarType::U8 {
        let v = (0..n).map(|_| I::from_f32(r.below(256) as f32)).collect();
        (v, 255.0, 255.0)
    } else {
        let v = (0..n).map(|_| I::from_f32(r.range(-2.0, 3.0))).collect();
        (v, 1.0, 3.0)
    }
}

/// One dtype pair over shapes, batches, plans and formats.
fn check<I: Element + cudarc_repr::Repr, O: FloatElement + cudarc_repr::Repr>(
    m: &CudaMixer,
    rint: bool,
    seed: u64,
) {
    let mut r = rng(seed);
    let mut dplan = DevicePlan::new(m);
    // Also samples over several tiles and more channels than a tile holds.
    let more = [(3, 40, 40), (4, 33, 35), (4097, 1, 2)];
    for (c, h, w) in SMALL_IMAGES.into_iter().chain(more) {
        let (_, scale, max_in) = input::<I>(&mut r, 0);
        let norm = norm_for(c, scale).with_u8_rounding(rint);
        let dnorm = DeviceNormalize::new(m, norm.clone()).unwrap();
        for batch in [1usize, 2, 5] {
            let (x, _, _) = input::<I>(&mut r, batch * c * h * w);
            for (k, (name, plan)) in plans(&mut r, batch, h, w).iter().enumerate() {
                dplan.upload(plan).unwrap();
                for fin in FORMATS {
                    let shape = layout(fin, c, h, w);
                    for fout in FORMATS {
                        let what = format!(
                            "{} -> {}{}: {name}, B {batch}, {c}x{h}x{w} {} -> {}",
                            I::DTYPE.name(),
                            O::DTYPE.name(),
                            if rint { " rint" } else { "" },
                            fin.name(),
                            fout.name()
                        );
                        let (xo, oo) = [(0, 0), (1, 3), (3, 1)][k % 3];
                        let xs = upload_at(m, &x, xo, I::from_f32(1.0));
                        let fill = O::from_f32(-77.0);
                        let mut os = upload_at(m, &vec![fill; x.len()], oo, fill);
                        m.mix_normalize(
                            &dplan,
                            &shape,
                            &dnorm,
                            &view(&xs, xo, x.len()),
                            fout,
                            &mut view_mut(&mut os, oo, x.len()),
                        )
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                        let all = download(m, &os);
                        let got = &all[oo..oo + x.len()];
                        assert!(
                            all[..oo]
                                .iter()
                                .chain(&all[oo + x.len()..])
                                .all(|v| bits(*v) == bits(fill)),
                            "{what}: wrote outside the view"
                        );
                        let mut want = vec![O::default(); x.len()];
                        cpu::mix_normalize(plan, &shape, &norm, &x, fout, &mut want).unwrap();
                        if let Some(i) = (0..x.len()).find(|&i| bits(got[i]) != bits(want[i])) {
                            panic!(
                                "{what}: [{i}] is {}, the CPU path's {}",
                                got[i].to_f32(),
                                want[i].to_f32()
                            );
                        }
                        let refv = reference::mix_normalize(plan, &shape, &norm, &x, fout).unwrap();
                        assert_close(&what, &widen(got), &refv, norm_tol::<O>(&norm, max_in));
                    }
                }
            }
        }
    }
}

/// `check::<$input, O>` for each output type O (f32, f16, bf16), with seeds from `$seed` up.
macro_rules! to_every_float_type {
    ($m:expr, $input:ty, $rint:expr, $seed:expr) => {
        check::<$input, f32>($m, $rint, $seed);
        check::<$input, f16>($m, $rint, $seed + 1);
        check::<$input, bf16>($m, $rint, $seed + 2);
    };
}

/// Asserts that `got` holds the CPU path's bits: `cpu::mix_normalize` of the pixels `x` under
/// `plan`, `shape` and `norm`, written in `fout`.
fn assert_cpu_bits<O: FloatElement>(
    what: &str,
    got: &[O],
    (plan, shape, norm): (&MixPlan, &SampleShape, &Normalize),
    x: &[u8],
    fout: MemoryFormat,
) {
    let mut want = vec![O::default(); x.len()];
    cpu::mix_normalize(plan, shape, norm, x, fout, &mut want).unwrap();
    assert!(
        got.iter().zip(&want).all(|(g, w)| bits(*g) == bits(*w)),
        "{what}: differs from the CPU path"
    );
}

/// Mixes and normalizes `xs` (the device copy of the pixels `x`) into a fresh f32 output in
/// `fout`; asserts it is the CPU path's, bit for bit.
fn f32_matches_cpu(
    (m, dplan, dnorm): (&CudaMixer, &DevicePlan, &DeviceNormalize),
    what: &str,
    host: (&MixPlan, &SampleShape, &Normalize),
    (x, xs): (&[u8], &CudaSlice<u8>),
    fout: MemoryFormat,
) {
    let mut out = m.stream().alloc_zeros::<f32>(x.len()).unwrap();
    let shape = host.1;
    m.mix_normalize(
        dplan,
        shape,
        dnorm,
        &xs.as_view(),
        fout,
        &mut out.as_view_mut(),
    )
    .unwrap();
    assert_cpu_bits(what, &download(m, &out), host, x, fout);
}

#[test]
fn u8_to_every_float_type() {
    let Some(m) = mixer("u8_to_every_float_type") else {
        return;
    };
    for rint in [false, true] {
        to_every_float_type!(&m, u8, rint, 1);
    }
}

#[test]
fn float_inputs_to_every_float_type() {
    let Some(m) = mixer("float_inputs_to_every_float_type") else {
        return;
    };
    to_every_float_type!(&m, f32, false, 4);
    to_every_float_type!(&m, f16, false, 7);
    to_every_float_type!(&m, bf16, false, 10);
}

/// 32 ImageNet-sized u8 images, channels-last to channels-first f32 (timm's rounding) and
/// channels-last bf16, through the raw entry point too.
#[test]
fn imagenet_sized_batch() {
    let Some(m) = mixer("imagenet_sized_batch") else {
        return;
    };
    let (b, c, h, w) = (32usize, 3, 224, 224);
    let mut r = rng(13);
    let (x, _, _) = input::<u8>(&mut r, b * c * h * w);
    let prs = pairs(&mut r, b);
    let plan = cutmix_plan(&mut r, &prs, h, w);
    let mut dplan = DevicePlan::new(&m);
    dplan.upload(&plan).unwrap();
    let shape = SampleShape::channels_last(h, w, c);
    let norm = Normalize::imagenet_u8().with_u8_rounding(true);
    let dnorm = DeviceNormalize::new(&m, norm.clone()).unwrap();
    let xs = m.stream().clone_htod(&x).unwrap();
    let host = (&plan, &shape, &norm);
    let first = MemoryFormat::ChannelsFirst;
    let what = "f32 channels-first";
    f32_matches_cpu((&m, &dplan, &dnorm), what, host, (&x, &xs), first);
    let mut o16 = m.stream().alloc_zeros::<bf16>(x.len()).unwrap();
    let last = MemoryFormat::ChannelsLast;
    {
        let (xp, _r) = xs.device_ptr(m.stream());
        let (op, _w) = o16.device_ptr_mut(m.stream());
        // SAFETY: both buffers hold x.len() elements of their dtype and outlive the kernel.
        unsafe {
            m.mix_normalize_raw(
                &dplan,
                &shape,
                &dnorm,
                ScalarType::U8,
                xp,
                last,
                ScalarType::BF16,
                op,
                x.len(),
            )
        }
        .unwrap();
    }
    assert_cpu_bits("bf16 channels-last", &download(&m, &o16), host, &x, last);
}

#[test]
fn bad_arguments_are_rejected_before_launch() {
    let Some(m) = mixer("mix_normalize_bad_arguments_are_rejected_before_launch") else {
        return;
    };
    let s = m.stream();
    let mut dplan = DevicePlan::new(&m);
    let plan = MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap();
    let shape = SampleShape::channels_last(2, 2, 3);
    let dnorm = DeviceNormalize::new(&m, Normalize::imagenet_u8()).unwrap();
    let x = s.clone_htod(&[9u8; 24]).unwrap();
    let mut out = s.clone_htod(&[5f32; 24]).unwrap();
    let first = MemoryFormat::ChannelsFirst;
    // Each call is refused before anything is enqueued, with the error named.
    macro_rules! refused {
        ($err:pat, $shape:expr, $norm:expr, $x:expr, $out:expr) => {{
            let e = m.mix_normalize(&dplan, $shape, $norm, $x, first, $out);
            assert!(matches!(e, Err($err)), "{e:?}");
        }};
    }
    use MixError::{InvalidArgument, LengthMismatch, ShapeMismatch};
    // Nothing uploaded yet.
    let (xv, ov) = (&x.as_view(), &mut out.as_view_mut());
    refused!(InvalidArgument { what: "plan", .. }, &shape, &dnorm, xv, ov);
    dplan.upload(&plan).unwrap();
    // A Rows shape.
    let rows = SampleShape::rows(12);
    refused!(InvalidArgument { what: "shape", .. }, &rows, &dnorm, xv, ov);
    // Channels other than the constants'.
    let four = SampleShape::channels_last(2, 3, 4);
    refused!(
        InvalidArgument {
            what: "normalize",
            ..
        },
        &four,
        &dnorm,
        xv,
        ov
    );
    // u8 rounding on a float input.
    let rn = DeviceNormalize::new(&m, Normalize::imagenet().with_u8_rounding(true)).unwrap();
    let xf = s.clone_htod(&[0.5f32; 24]).unwrap();
    refused!(
        InvalidArgument {
            what: "normalize",
            ..
        },
        &shape,
        &rn,
        &xf.as_view(),
        ov
    );
    // Constants uploaded through another mixer (stream).
    let other = CudaMixer::from_stream(s.context().new_stream().unwrap()).unwrap();
    let foreign = DeviceNormalize::new(&other, Normalize::imagenet_u8()).unwrap();
    refused!(
        InvalidArgument {
            what: "normalize",
            ..
        },
        &shape,
        &foreign,
        xv,
        ov
    );
    // Lengths.
    refused!(
        ShapeMismatch { what: "x", .. },
        &shape,
        &dnorm,
        &x.slice(..12),
        ov
    );
    refused!(
        LengthMismatch { .. },
        &shape,
        &dnorm,
        xv,
        &mut out.slice_mut(..23)
    );
    // A u8 output through the raw entry point.
    let (xp, _r) = x.device_ptr(s);
    let mut o8 = s.alloc_zeros::<u8>(24).unwrap();
    let (op, _w) = o8.device_ptr_mut(s);
    // SAFETY: refused before any launch.
    let e = unsafe {
        m.mix_normalize_raw(
            &dplan,
            &shape,
            &dnorm,
            ScalarType::U8,
            xp,
            first,
            ScalarType::U8,
            op,
            24,
        )
    };
    assert!(
        matches!(e, Err(MixError::InvalidArgument { what: "out", .. })),
        "{e:?}"
    );
    drop((_r, _w));
    // Nothing was written.
    assert!(download(&m, &out).iter().all(|&v| v == 5.0));
}

/// A small launch of each path for compute-sanitizer (scripts/gpu/run.sh: racecheck and
/// memcheck run this one): shared-memory tiles over a pair plan and a cycle, channels-last to
/// channels-first and back, and the direct launch; bit for bit against the CPU path.
#[test]
fn sanitizer_sized() {
    let Some(m) = mixer("sanitizer_sized") else {
        return;
    };
    let mut r = rng(17);
    let mut dplan = DevicePlan::new(&m);
    for (c, h, w) in [(3usize, 40usize, 40usize), (4097, 1, 2)] {
        let b = 4;
        let norm = norm_for(c, 255.0).with_u8_rounding(true);
        let dnorm = DeviceNormalize::new(&m, norm.clone()).unwrap();
        let (x, _, _) = input::<u8>(&mut r, b * c * h * w);
        let prs = pairs(&mut r, b);
        let cyc = [1usize, 2, 3, 0];
        let lam = lams(&mut r, b);
        for plan in [
            cutmix_plan(&mut r, &prs, h, w),
            MixPlan::from_parts(&prs, &lam).unwrap(),
            MixPlan::from_parts(&cyc, &lam).unwrap(),
        ] {
            dplan.upload(&plan).unwrap();
            for (fin, fout) in [
                (MemoryFormat::ChannelsLast, MemoryFormat::ChannelsFirst),
                (MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast),
            ] {
                let shape = layout(fin, c, h, w);
                let xs = m.stream().clone_htod(&x).unwrap();
                let what = format!("{c}x{h}x{w} {} -> {}", fin.name(), fout.name());
                let host = (&plan, &shape, &norm);
                f32_matches_cpu((&m, &dplan, &dnorm), &what, host, (&x, &xs), fout);
            }
        }
    }
}
