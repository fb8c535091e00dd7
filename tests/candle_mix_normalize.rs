//! candle's `mix_normalize`: the CPU op's bits on tensors, every input/output dtype and both
//! formats, non-contiguous input, and candle errors for bad arguments. With `candle-cuda`, the
//! same on the first GPU (the CUDA kernel promises the CPU op's bits too); without one the CUDA
//! half says SKIPPED, unless `MIXUP_REQUIRE_GPU=1`, where it fails.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{candle_devices as devices, random_vec, sampler_plans};
use mixup_kernels::candle::mix_normalize;
use mixup_kernels::{
    Element, FloatElement, MemoryFormat, MixError, MixPlan, Normalize, SampleShape, bf16, cpu, f16,
};

const FORMATS: [MemoryFormat; 2] = [MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast];

fn layout(format: MemoryFormat, c: usize, h: usize, w: usize) -> SampleShape {
    match format {
        MemoryFormat::ChannelsFirst => SampleShape::channels_first(c, h, w),
        MemoryFormat::ChannelsLast => SampleShape::channels_last(h, w, c),
    }
}

fn dims(format: MemoryFormat, b: usize, c: usize, h: usize, w: usize) -> [usize; 4] {
    match format {
        MemoryFormat::ChannelsFirst => [b, c, h, w],
        MemoryFormat::ChannelsLast => [b, h, w, c],
    }
}

fn bits<T: Element>(v: &[T]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

/// The tensor op gives the CPU op's bits, with the output's shape and dtype.
fn same_as_cpu<I, O>(x: &[I], tensor: &Tensor, dtype: DType, rint: bool)
where
    I: Element,
    O: FloatElement + candle_core::WithDType,
{
    let (b, c, h, w) = (4, 3, 7, 9);
    let norm = Normalize::new(&Normalize::IMAGENET_MEAN, &Normalize::IMAGENET_STD, 255.0)
        .unwrap()
        .with_u8_rounding(rint);
    for (name, plan) in sampler_plans(b, (h, w)).iter().take(4) {
        for fin in FORMATS {
            let t = tensor.reshape(dims(fin, b, c, h, w).as_slice()).unwrap();
            for fout in FORMATS {
                let got = mix_normalize(plan, fin, &norm, &t, fout, dtype).unwrap();
                assert_eq!(got.dims(), dims(fout, b, c, h, w), "{name}");
                assert_eq!(
                    (got.dtype(), got.device().location()),
                    (dtype, t.device().location())
                );
                let got: Vec<O> = got.flatten_all().unwrap().to_vec1().unwrap();
                let mut want = vec![O::default(); x.len()];
                cpu::mix_normalize(plan, &layout(fin, c, h, w), &norm, x, fout, &mut want).unwrap();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{:?} {name} {fin:?} -> {fout:?}",
                    t.device()
                );
            }
        }
    }
}

#[test]
fn matches_the_cpu_op_for_every_dtype_and_format() {
    let n = 4 * 3 * 7 * 9;
    for dev in devices() {
        let px: Vec<u8> = random_vec(n, 1, 0.0, 255.0);
        let t = Tensor::from_vec(px.clone(), n, &dev).unwrap();
        for rint in [false, true] {
            same_as_cpu::<u8, f32>(&px, &t, DType::F32, rint);
            same_as_cpu::<u8, f16>(&px, &t, DType::F16, rint);
            same_as_cpu::<u8, bf16>(&px, &t, DType::BF16, rint);
        }
        // Float inputs already scaled to pixels' units (the Normalize is per pixel value here).
        let xf: Vec<f32> = random_vec(n, 2, 0.0, 255.0);
        let tf = Tensor::from_vec(xf.clone(), n, &dev).unwrap();
        same_as_cpu::<f32, f32>(&xf, &tf, DType::F32, false);
        let xh: Vec<f16> = xf.iter().map(|&v| f16::from_f32(v)).collect();
        let th = tf.to_dtype(DType::F16).unwrap();
        same_as_cpu::<f16, bf16>(&xh, &th, DType::BF16, false);
    }
}

/// A channels-last view of a channels-first tensor (`permute`, not contiguous) gives the same
/// result as the contiguous channels-last tensor.
#[test]
fn a_non_contiguous_view_is_accepted() {
    let (b, c, h, w) = (2, 3, 4, 5);
    for dev in devices() {
        let px: Vec<u8> = random_vec(b * c * h * w, 3, 0.0, 255.0);
        let nchw = Tensor::from_vec(px, (b, c, h, w), &dev).unwrap();
        let view = nchw.permute((0, 2, 3, 1)).unwrap();
        assert!(!view.is_contiguous());
        let plan = MixPlan::from_parts(&[1, 0], &[0.3, 0.3]).unwrap();
        let norm = Normalize::imagenet_u8();
        let last = MemoryFormat::ChannelsLast;
        let first = MemoryFormat::ChannelsFirst;
        let a = mix_normalize(&plan, last, &norm, &view, first, DType::F32).unwrap();
        let b2 = mix_normalize(&plan, first, &norm, &nchw, first, DType::F32).unwrap();
        let (a, b2): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b2.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(bits(&a), bits(&b2), "{dev:?}");
    }
}

#[test]
fn bad_arguments_give_candle_errors() {
    let dev = Device::Cpu;
    let plan = MixPlan::identity(2).unwrap();
    let norm = Normalize::imagenet_u8();
    let first = MemoryFormat::ChannelsFirst;
    let img = Tensor::zeros((2, 3, 4, 4), DType::U8, &dev).unwrap();
    let msg = |r: candle_core::Result<Tensor>| format!("{}", r.unwrap_err());
    // Rank.
    let flat = Tensor::zeros((2, 48), DType::U8, &dev).unwrap();
    assert!(msg(mix_normalize(&plan, first, &norm, &flat, first, DType::F32)).contains("rank"));
    // Input and output dtypes.
    let long = img.to_dtype(DType::I64).unwrap();
    let e = msg(mix_normalize(&plan, first, &norm, &long, first, DType::F32));
    assert!(e.contains("I64") || e.contains("i64"), "{e}");
    let e = msg(mix_normalize(&plan, first, &norm, &img, first, DType::U8));
    assert!(e.contains("U8") || e.contains("u8"), "{e}");
    // Channels read in the wrong format: [2, 3, 4, 4] as channels-last has 4 channels.
    let e = mix_normalize(
        &plan,
        MemoryFormat::ChannelsLast,
        &norm,
        &img,
        first,
        DType::F32,
    )
    .unwrap_err();
    let text = format!("{e}");
    assert!(
        text.contains("normalize") && text.contains("NHWC"),
        "{text}"
    );
    // The wrapped MixError is reachable.
    let mut found = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if let Some(m) = err.downcast_ref::<MixError>() {
            found = matches!(
                m,
                MixError::InvalidArgument {
                    what: "normalize",
                    ..
                }
            );
        }
        cur = err.source();
    }
    assert!(found || text.contains("`normalize`"), "{text}");
    // Batch, and u8 rounding on a float input.
    let three = MixPlan::identity(3).unwrap();
    assert!(msg(mix_normalize(&three, first, &norm, &img, first, DType::F32)).contains("batch"));
    let fl = img.to_dtype(DType::F32).unwrap();
    let rint = norm.clone().with_u8_rounding(true);
    let e = msg(mix_normalize(&plan, first, &rint, &fl, first, DType::F32));
    assert!(e.contains("u8 rounding") && e.contains("f32"), "{e}");
}
