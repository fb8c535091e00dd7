//! The fused pixels → model input op on burn tensors (formula: [`Normalize`]).

use burn::tensor::kind::Basic;
use burn::tensor::{DType, Tensor, TensorData};

use super::{bad_dtype, float_dtype, invalid, read, read_err};
use crate::dtype::{Element, FloatElement};
use crate::error::Result;
use crate::normalize::{Normalize, check_mix_normalize};
use crate::plan::MixPlan;
use crate::spec::{MemoryFormat, SampleShape};

const OP: &str = "mixup_kernels::burn::mix_normalize";

/// Mixes a batch of images by the plan, normalizes each channel and returns the model's input
/// in `out_format` and `dtype` (f32, f16 or bf16), in one pass of the crate's kernel (the CUDA
/// kernel on burn's CUDA backend with the `burn-cuda` feature, the CPU kernel elsewhere; see
/// [`Normalize`] for the formula and its source: timm's `FastCollateMixup` +
/// `PrefetchLoader`).
///
/// `images` is rank 4 in `format`: decoded pixels as a `Tensor<4, Int>` of dtype u8 (burn keeps
/// u8 in int tensors), or a float tensor (f32, f16, bf16) already in `norm`'s units. The result
/// is a float tensor on the same device; it does not track gradients.
///
/// # Errors
/// [`MixError::InvalidArgument`](crate::MixError::InvalidArgument) for another input or output
/// dtype; the crate's errors for a plan of another batch or image size, channels other than
/// `norm`'s, or u8 rounding on a float input.
///
/// ```
/// use burn::tensor::{DType, Device, Int, Tensor, TensorData};
/// use mixup_kernels::burn::mix_normalize;
/// use mixup_kernels::{MemoryFormat, MixPlan, Normalize};
/// # fn main() -> Result<(), mixup_kernels::MixError> {
/// // Two decoded 1x2 RGB images (u8, channels-last) into a normalized NCHW f32 batch.
/// let px = TensorData::new(vec![0u8, 0, 0, 255, 255, 255, 255, 0, 0, 0, 255, 0], [2, 1, 2, 3]);
/// let pixels = Tensor::<4, Int>::from_data(px, (&Device::flex(), DType::U8));
/// let plan = MixPlan::identity(2)?;
/// let norm = Normalize::new(&[0.5; 3], &[0.5; 3], 255.0)?; // to [-1, 1]
/// let first = MemoryFormat::ChannelsFirst;
/// let x = mix_normalize(&plan, MemoryFormat::ChannelsLast, &norm, pixels, first, DType::F32)?;
/// assert_eq!(x.dims(), [2, 3, 1, 2]);
/// let v: Vec<f32> = x.into_data().iter::<f32>().take(6).collect();
/// assert_eq!(v, [-1., 1., -1., 1., -1., 1.]);
/// # Ok(())
/// # }
/// ```
pub fn mix_normalize<K: Basic>(
    plan: &MixPlan,
    format: MemoryFormat,
    norm: &Normalize,
    images: Tensor<4, K>,
    out_format: MemoryFormat,
    dtype: DType,
) -> Result<Tensor<4>> {
    float_dtype(dtype, "dtype", OP)?;
    let dims = images.dims();
    let shape = format
        .sample_shape(&dims)
        .ok_or_else(|| invalid("images", format!("{OP}: shape {dims:?} is not rank 4")))?;
    let input = match super::scalar_type(images.dtype()) {
        Some(t) => t,
        None => {
            let other = images.dtype();
            return Err(invalid(
                "images",
                format!(
                    "{OP}: `images` must be u8 pixels or f32, f16, bf16, got {other:?} (burn \
                     makes Int tensors I32 by default: build u8 pixels with \
                     `Tensor::<4, Int>::from_data(data, (&device, DType::U8))`)"
                ),
            ));
        }
    };
    let n = images.shape().num_elements();
    plan.check_batch("images", dims[0])?;
    check_mix_normalize(plan, &shape, norm, input, n, n)?;
    let [b, d1, d2, d3] = dims;
    let out_dims = match (format, out_format) {
        (MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsFirst)
        | (MemoryFormat::ChannelsLast, MemoryFormat::ChannelsLast) => [b, d1, d2, d3],
        (MemoryFormat::ChannelsFirst, MemoryFormat::ChannelsLast) => [b, d2, d3, d1],
        (MemoryFormat::ChannelsLast, MemoryFormat::ChannelsFirst) => [b, d3, d1, d2],
    };
    let device = images.device();
    #[cfg(feature = "burn-cuda")]
    if let Some(ordinal) = super::cuda::ordinal(&device) {
        let call = (plan, &shape, norm, out_format, out_dims, dtype);
        return super::cuda::mix_normalize(ordinal, &images, call);
    }
    let data = read(images, "images", OP)?;
    let call = Call {
        plan,
        shape: &shape,
        norm,
        out_format,
        out_dims,
    };
    let out = match data.dtype() {
        DType::U8 => call.to::<u8>(&data, dtype)?,
        DType::F32 => call.to::<f32>(&data, dtype)?,
        DType::F16 => call.to::<crate::f16>(&data, dtype)?,
        DType::BF16 => call.to::<crate::bf16>(&data, dtype)?,
        other => return Err(bad_dtype("images", other, OP)),
    };
    Ok(Tensor::from_data(out, (&device, dtype)))
}

/// A checked call's arguments besides the pixels and the output dtype.
struct Call<'a> {
    plan: &'a MixPlan,
    shape: &'a SampleShape,
    norm: &'a Normalize,
    out_format: MemoryFormat,
    out_dims: [usize; 4],
}

impl Call<'_> {
    /// The kernel on `data` (of type `I`) into a new buffer of the output type `dtype`.
    fn to<I: Element + burn::tensor::Element>(
        &self,
        data: &TensorData,
        dtype: DType,
    ) -> Result<TensorData> {
        match dtype {
            DType::F16 => self.run::<I, crate::f16>(data),
            DType::BF16 => self.run::<I, crate::bf16>(data),
            _ => self.run::<I, f32>(data),
        }
    }

    fn run<I: Element + burn::tensor::Element, O: FloatElement + burn::tensor::Element>(
        &self,
        data: &TensorData,
    ) -> Result<TensorData> {
        let x = data
            .as_slice::<I>()
            .map_err(|e| read_err("images", OP, e))?;
        let mut out = vec![O::default(); x.len()];
        let (plan, shape, norm) = (self.plan, self.shape, self.norm);
        crate::cpu::mix_normalize(plan, shape, norm, x, self.out_format, &mut out)?;
        Ok(TensorData::new(out, self.out_dims))
    }
}
