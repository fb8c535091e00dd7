//! The fused pixels → model input op on candle tensors (formula: [`Normalize`]).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Error, Layout as CLayout, Result, Shape, Tensor};

use super::{check_device, check_dtype, contiguous};
use crate::dtype::{Element, FloatElement, ScalarType};
use crate::normalize::{Normalize, check_mix_normalize};
use crate::plan::MixPlan;
use crate::spec::{MemoryFormat, SampleShape};

/// Mixes a batch of images by the plan, normalizes each channel and returns the model's input
/// in `out_format` and `dtype`, in one pass (see [`Normalize`] for the formula and its source:
/// timm's `FastCollateMixup` + `PrefetchLoader`).
///
/// `images` is rank 4 in `format` (`[B, C, H, W]` channels-first or `[B, H, W, C]`
/// channels-last), of dtype u8 (pixels) or f32/f16/bf16 (values already in `norm`'s units). The
/// result is `[B, C, H, W]` or `[B, H, W, C]` as `out_format` says, of `dtype` (f32, f16 or
/// bf16), on the same device; it does not track gradients (a data-side operation). A
/// non-contiguous tensor is made contiguous first (a copy). CPU tensors run the crate's `cpu`
/// path; with the `candle-cuda` feature, CUDA tensors run the crate's kernel
/// ([`CudaMixer::mix_normalize`](crate::cuda::CudaMixer::mix_normalize)) on the device's
/// stream, reading candle's buffer in place (the plan and the constants uploaded with one
/// asynchronous copy each when they change, no host synchronization); tensors on another
/// device are refused ([`MixError::Unsupported`](crate::MixError::Unsupported)).
///
/// Errors: rank other than 4 ([`Error::UnexpectedNumberOfDims`]), another input or output
/// dtype ([`Error::UnsupportedDTypeForOp`]); wrapped [`MixError`](crate::MixError)s for a plan of
/// another batch or image size, channels that differ from `norm`'s, or u8 rounding on a float
/// input.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use mixup_kernels::candle::mix_normalize;
/// use mixup_kernels::{MemoryFormat, MixPlan, Normalize};
/// # fn main() -> candle_core::Result<()> {
/// // Two decoded 1x2 RGB images (u8, channels-last) into a normalized NCHW f32 batch.
/// let pixels = Tensor::new(&[[[[0u8, 0, 0], [255, 255, 255]]], [[[255u8, 0, 0], [0, 255, 0]]]], &Device::Cpu)?;
/// let plan = MixPlan::identity(2)?;
/// let norm = Normalize::new(&[0.5; 3], &[0.5; 3], 255.0)?; // to [-1, 1]
/// let x = mix_normalize(&plan, MemoryFormat::ChannelsLast, &norm, &pixels, MemoryFormat::ChannelsFirst, DType::F32)?;
/// assert_eq!(x.dims(), [2, 3, 1, 2]);
/// assert_eq!(x.get(0)?.flatten_all()?.to_vec1::<f32>()?, [-1., 1., -1., 1., -1., 1.]);
/// # Ok(())
/// # }
/// ```
pub fn mix_normalize(
    plan: &MixPlan,
    format: MemoryFormat,
    norm: &Normalize,
    images: &Tensor,
    out_format: MemoryFormat,
    dtype: DType,
) -> Result<Tensor> {
    const OP: &str = "mixup_kernels::mix_normalize";
    let dims = images.dims();
    let &[b, d1, d2, d3] = dims else {
        return Err(Error::UnexpectedNumberOfDims {
            expected: 4,
            got: dims.len(),
            shape: images.shape().clone(),
        }
        .bt());
    };
    check_dtype(
        images.dtype(),
        &[DType::U8, DType::F32, DType::F16, DType::BF16],
        OP,
    )?;
    check_dtype(dtype, &[DType::F32, DType::F16, DType::BF16], OP)?;
    let (c, h, w) = match format {
        MemoryFormat::ChannelsFirst => (d1, d2, d3),
        MemoryFormat::ChannelsLast => (d3, d1, d2),
    };
    let shape = SampleShape::Image {
        format,
        channels: c,
        height: h,
        width: w,
    };
    let input = match images.dtype() {
        DType::U8 => ScalarType::U8,
        DType::F16 => ScalarType::F16,
        DType::BF16 => ScalarType::BF16,
        _ => ScalarType::F32,
    };
    let n = images.elem_count();
    if let Err(e) = plan
        .check_batch("images", b)
        .and_then(|()| check_mix_normalize(plan, &shape, norm, input, n, n))
    {
        return Err(Error::wrap(e).context(format!(
            "{OP}: images of shape {:?} read as {}",
            images.shape(),
            format.name()
        )));
    }
    check_device(images.device(), "images", OP)?;
    let out_shape = match out_format {
        MemoryFormat::ChannelsFirst => Shape::from((b, c, h, w)),
        MemoryFormat::ChannelsLast => Shape::from((b, h, w, c)),
    };
    let op = MixNormalizeOp {
        plan: plan.clone(),
        shape,
        norm: norm.clone(),
        out_format,
        dtype,
        out_shape,
    };
    images.contiguous()?.apply_op1_no_bwd(&op)
}

pub(super) struct MixNormalizeOp {
    pub(super) plan: MixPlan,
    pub(super) shape: SampleShape,
    pub(super) norm: Normalize,
    pub(super) out_format: MemoryFormat,
    pub(super) dtype: DType,
    pub(super) out_shape: Shape,
}

impl MixNormalizeOp {
    fn run<I: Element, O: FloatElement>(&self, x: &[I]) -> Result<Vec<O>> {
        let mut out = vec![O::default(); x.len()];
        crate::cpu::mix_normalize(
            &self.plan,
            &self.shape,
            &self.norm,
            x,
            self.out_format,
            &mut out,
        )?;
        Ok(out)
    }

    fn to<I: Element>(&self, x: &[I]) -> Result<CpuStorage> {
        Ok(match self.dtype {
            DType::F32 => CpuStorage::F32(self.run(x)?),
            DType::F16 => CpuStorage::F16(self.run(x)?),
            DType::BF16 => CpuStorage::BF16(self.run(x)?),
            other => return Err(Error::UnsupportedDTypeForOp(other, self.name()).bt()),
        })
    }
}

impl CustomOp1 for MixNormalizeOp {
    fn name(&self) -> &'static str {
        "mixup-kernels-mix-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &CLayout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let out = match s {
            CpuStorage::U8(v) => self.to(contiguous(v, l, name)?)?,
            CpuStorage::F32(v) => self.to(contiguous(v, l, name)?)?,
            CpuStorage::F16(v) => self.to(contiguous(v, l, name)?)?,
            CpuStorage::BF16(v) => self.to(contiguous(v, l, name)?)?,
            other => return Err(Error::UnsupportedDTypeForOp(other.dtype(), name).bt()),
        };
        Ok((out, self.out_shape.clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &CLayout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::mix_normalize(self, s, l)
    }
}
