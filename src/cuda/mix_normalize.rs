//! The fused "decoded pixels → model input" op on the device: `kernels/mix_normalize.cu`
//! (`mix_normalize_<input>_<output>`). The formula, its rounding and its source (timm's
//! `FastCollateMixup` + `PrefetchLoader`) are [`Normalize`]'s.

use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
};

use crate::dtype::{Element, FloatElement, ScalarType};
use crate::error::{MixError, Result};
use crate::normalize::{ImageDims, Normalize, check_mix_normalize};
use crate::plan::MixPlan;
use crate::spec::{MemoryFormat, SampleShape};

use super::context::{CudaMixer, check_made_for, driver_err};
use super::entries::Kernel;
use super::plan::DevicePlan;
use super::soft_targets::require_float;
use super::tuning::{KernelTuning, LaunchEnv};

/// Kernel arguments (`struct MixNormArgs` in kernels/mix_normalize.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct MixNormArgs {
    pub x: u64,
    pub out: u64,
    pub plan: u64,
    pub ms: u64,
    pub batch: u64,
    pub items: u64,
    pub tiles: u64,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub in_last: u32,
    pub out_last: u32,
    pub rint: u32,
    pub tile_px: u32,
    pub pad: u32,
    /// Elements per input row (the last dimension; the sample when dense).
    pub seg: u64,
    /// Elements from one input row to the next (`seg` when dense).
    pub pitch: u64,
    /// Elements from one input sample to the next.
    pub x_row: u64,
}

// SAFETY: repr(C) of u64/u32 fields without padding (112 bytes), mirrored by the kernel's struct.
unsafe impl DeviceRepr for MixNormArgs {}

/// A [`Normalize`] with its per-channel constants on the device (`[2C]` f32: the means, then
/// the standard deviations, in the input's units), uploaded once, so a call of
/// [`CudaMixer::mix_normalize`] copies nothing from the host. It belongs to the mixer (stream)
/// it was made with, as a [`DevicePlan`] does.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::{CudaMixer, DeviceNormalize};
/// use mixup_kernels::Normalize;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let norm = DeviceNormalize::new(&mixer, Normalize::imagenet_u8().with_u8_rounding(true))?;
/// assert_eq!(norm.normalize().channels(), 3);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DeviceNormalize {
    norm: Normalize,
    ms: CudaSlice<f32>,
    /// The stream of the mixer it was made with (the constants are used on that one only).
    stream: Arc<CudaStream>,
    /// The host thread whose per-thread default stream `stream` is, if it is one.
    owner: Option<std::thread::ThreadId>,
}

impl DeviceNormalize {
    /// Uploads `norm`'s means and standard deviations (one asynchronous copy of `2C` f32 on the
    /// mixer's stream).
    ///
    /// # Errors
    /// [`MixError::Driver`] if the allocation or the copy fails.
    pub fn new(mixer: &CudaMixer, norm: Normalize) -> Result<Self> {
        let mut v = norm.mean().to_vec();
        v.extend_from_slice(norm.std());
        let ms = mixer
            .stream()
            .clone_htod(&v)
            .map_err(driver_err("uploading the normalization constants"))?;
        Ok(Self {
            norm,
            ms,
            stream: mixer.stream().clone(),
            owner: mixer.owner(),
        })
    }

    /// The host constants.
    pub fn normalize(&self) -> &Normalize {
        &self.norm
    }
}

/// The kernel family reading `input`.
fn kernel_for(input: ScalarType) -> Kernel {
    match input {
        ScalarType::U8 => Kernel::MixNormalizeU8,
        ScalarType::F32 => Kernel::MixNormalizeF32,
        ScalarType::F16 => Kernel::MixNormalizeF16,
        ScalarType::BF16 => Kernel::MixNormalizeBf16,
    }
}

/// The kernel arguments (without addresses) for `batch` samples of `dims`, or why the kernel
/// cannot index them.
pub(crate) fn mix_normalize_args(
    dims: &ImageDims,
    batch: usize,
    rint: bool,
    out_format: MemoryFormat,
    tuning: &KernelTuning,
) -> Result<MixNormArgs> {
    let (tile, direct) = (u64::from(tuning.mn_tile), u64::from(tuning.mn_direct));
    let (c, h, w) = (dims.channels as u64, dims.height as u64, dims.width as u64);
    let d = c * h * w; // checked against overflow by `check_mix_normalize`
    if d >= 1 << 32 {
        // Pixel positions and tile offsets are 32-bit on the device.
        return Err(MixError::SizeOverflow {
            what: "image sample size (the GPU kernels index an image sample in 32 bits)",
        });
    }
    let tile_px = tile / c;
    let tiles = if tile_px > 0 {
        (h * w).div_ceil(tile_px)
    } else {
        d.div_ceil(direct)
    };
    let items = (batch as u64)
        .checked_mul(tiles)
        .ok_or(MixError::SizeOverflow {
            what: "mix_normalize work items",
        })?;
    Ok(MixNormArgs {
        batch: batch as u64,
        items,
        tiles,
        channels: c as u32,
        height: h as u32,
        width: w as u32,
        in_last: u32::from(dims.format == MemoryFormat::ChannelsLast),
        out_last: u32::from(out_format == MemoryFormat::ChannelsLast),
        rint: u32::from(rint),
        tile_px: tile_px as u32,
        seg: d,
        pitch: d,
        x_row: d,
        ..MixNormArgs::default()
    })
}

/// The kernel, its arguments and its launch configuration for a checked call with at least one
/// element (`plan_ptr`: the staged plan, `ms`: the device constants) under `env`'s tuning,
/// the input's rows given by [`input_rows`](super::mix::input_rows).
/// [`launch`] launches it; the host emulation's cases (`kernels::emulated`) run it on the CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mix_normalize_call(
    host: &MixPlan,
    dims: &ImageDims,
    rint: bool,
    input: ScalarType,
    out_format: MemoryFormat,
    x: u64,
    out: u64,
    plan_ptr: u64,
    ms: u64,
    (seg, pitch, x_row): (u64, u64, u64),
    env: &LaunchEnv<'_>,
) -> Result<(Kernel, MixNormArgs, LaunchConfig)> {
    let mut args = mix_normalize_args(dims, host.len(), rint, out_format, env.tuning)?;
    (args.seg, args.pitch, args.x_row) = (seg, pitch, x_row);
    args.x = x;
    args.out = out;
    args.plan = plan_ptr;
    args.ms = ms;
    let cfg = LaunchConfig {
        grid_dim: (env.tuning.grid(args.items, env.sms), 1, 1),
        block_dim: (env.tuning.mn_threads, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((kernel_for(input), args, cfg))
}

/// The checks of a call: the shape, channels, rounding and lengths ([`check_mix_normalize`]),
/// and a float output. `None` when there is nothing to launch.
pub(crate) fn check_call(
    host: &MixPlan,
    shape: &SampleShape,
    norm: &Normalize,
    input: ScalarType,
    output: ScalarType,
    x_len: usize,
    out_len: usize,
) -> Result<Option<ImageDims>> {
    require_float(output, "out")?;
    let dims = check_mix_normalize(host, shape, norm, input, x_len, out_len)?;
    Ok((x_len > 0).then_some(dims))
}

/// Validates and launches the kernel on raw device addresses: the one launch behind
/// [`CudaMixer::mix_normalize`] and [`CudaMixer::mix_normalize_raw`].
///
/// `pitch`: the input's rows (of its last dimension) that many elements apart (a pitched
/// tensor: burn's CUDA tensors; `None`: dense); `x_len` counts the elements, not the padding.
///
/// # Safety
/// `x` addresses `x_len` elements of `input` (the span [`input_rows`](super::mix::input_rows)
/// gives when pitched), `out` addresses `out_len` elements of `output`, on the mixer's device,
/// not overlapping.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch(
    m: &CudaMixer,
    plan: &DevicePlan,
    shape: &SampleShape,
    norm: &DeviceNormalize,
    input: ScalarType,
    (x, x_len, pitch): (u64, usize, Option<usize>),
    out_format: MemoryFormat,
    output: ScalarType,
    out: u64,
    out_len: usize,
) -> Result<()> {
    let host = plan.plan();
    let nm = &norm.norm;
    check_made_for(
        (&norm.stream, norm.owner),
        m,
        "normalize",
        "DeviceNormalize",
    )?;
    let Some(dims) = check_call(host, shape, nm, input, output, x_len, out_len)? else {
        return Ok(());
    };
    let rows = super::mix::input_rows(shape, host.len(), pitch, false)?;
    let (ms, _read) = norm.ms.device_ptr(m.stream());
    let (kernel, args, cfg) = mix_normalize_call(
        host,
        &dims,
        nm.u8_rounding(),
        input,
        out_format,
        x,
        out,
        plan.device_ptr_for(m)?,
        ms,
        rows,
        &m.launch_env(),
    )?;
    let what = "launching the mix_normalize kernel";
    // SAFETY: `args` is the kernel's `MixNormArgs`; the addresses are valid per the contract,
    // the plan buffer holds the plan and `ms` its `2C` constants.
    unsafe { m.enqueue(kernel, output, &args, cfg, what) }
}

impl CudaMixer {
    /// The fused "decoded pixels → model input" op: mixes `x` by the plan (MixUp lerp in f32,
    /// or CutMix paste), optionally rounds the lerp to u8 (timm's `FastCollateMixup`), then
    /// writes `(v − mean_c) / std_c` rounded once to `O`, in `out_format`, in one pass: each
    /// input element is read once (twice when the plan's partner of a sample is not an
    /// involution), each output element written once. Formula and source: [`Normalize`] (timm
    /// `timm/data/mixup.py` `FastCollateMixup`, `timm/data/loader.py` `PrefetchLoader`).
    ///
    /// - `shape`: an image shape, `SampleShape::channels_last(H, W, C)` (`x` is `[B, H, W, C]`)
    ///   or `SampleShape::channels_first(C, H, W)` (`[B, C, H, W]`); `B` is the plan's batch.
    /// - `x`: u8 pixels, or f32/f16/bf16 values already in `norm`'s units.
    /// - `out`: `B·C·H·W` elements of f32, f16 or bf16, `[B, C, H, W]` for
    ///   [`MemoryFormat::ChannelsFirst`], `[B, H, W, C]` for [`MemoryFormat::ChannelsLast`];
    ///   it must not overlap `x` (borrowing rules out an overlap here).
    ///
    /// Bit-identical to `cpu::mix_normalize` (same operations in the same order, no FMA), but
    /// for the payload of a NaN (a float input's NaN comes out as the canonical NaN). Enqueued
    /// on the mixer's stream: no host synchronization, no allocation, and no compilation after
    /// the first call of an (input, output) dtype pair.
    /// Channels-last in and channels-first out (or the reverse) go through shared-memory tiles
    /// so that reads and writes stay coalesced.
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`] for a `Rows` shape (`shape`), channels other than `norm`'s
    /// or u8 rounding on a float input (`normalize`); [`MixError::ShapeMismatch`] (`x`: not
    /// the plan's batch × `C·H·W`), [`MixError::LengthMismatch`] (`out`: not `x`'s length) or
    /// [`MixError::ImageSizeMismatch`]
    /// (CutMix boxes drawn for another image size); [`MixError::SizeOverflow`] for a sample of
    /// 2³² elements or more; [`MixError::CudaUnavailable`] or [`MixError::Compile`] if the
    /// kernel cannot be compiled, [`MixError::Driver`] if it cannot be launched;
    /// [`MixError::InvalidArgument`] (`plan`) for a plan of another mixer's stream or never
    /// uploaded, (`normalize`) for a `norm` made with another mixer's stream.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DeviceNormalize, DevicePlan};
    /// use mixup_kernels::{MemoryFormat, MixPlan, Normalize, SampleShape};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.5, 0.5])?)?;
    /// let norm = DeviceNormalize::new(&mixer, Normalize::new(&[0.0], &[2.0], 1.0)?)?;
    /// // Two 1×2 grey images, u8, channels-last.
    /// let x = s.clone_htod(&vec![0u8, 4, 8, 12])?;
    /// let mut out = s.alloc_zeros::<f32>(4)?;
    /// let shape = SampleShape::channels_last(1, 2, 1);
    /// mixer.mix_normalize(&plan, &shape, &norm, &x.as_view(), MemoryFormat::ChannelsFirst, &mut out.as_view_mut())?;
    /// assert_eq!(s.clone_dtoh(&out)?, [2.0, 4.0, 2.0, 4.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mix_normalize<I: Element, O: FloatElement>(
        &self,
        plan: &DevicePlan,
        shape: &SampleShape,
        norm: &DeviceNormalize,
        x: &CudaView<'_, I>,
        out_format: MemoryFormat,
        out: &mut CudaViewMut<'_, O>,
    ) -> Result<()> {
        let out_len = out.len();
        let (xp, _rx) = x.device_ptr(self.stream());
        let (op, _wo) = out.device_ptr_mut(self.stream());
        // SAFETY: the views hold their lengths of I and O on this mixer's stream and do not
        // overlap (one is borrowed mutably).
        unsafe {
            launch(
                self,
                plan,
                shape,
                norm,
                I::DTYPE,
                (xp, x.len(), None),
                out_format,
                O::DTYPE,
                op,
                out_len,
            )
        }
    }

    /// [`CudaMixer::mix_normalize`] on raw device addresses (tch-rs, burn, custom allocators):
    /// `x` holds `len` elements of `input` (u8, f32, f16 or bf16), `out` `len` elements of
    /// `output` (f32, f16 or bf16). The same checks and errors, plus
    /// [`MixError::InvalidArgument`] (`out`) for a u8 `output`.
    ///
    /// # Safety
    /// The contract of [`raw`](super::raw): both addresses are device memory of the mixer's
    /// device holding `len` elements of their dtype, aligned to it, valid until the kernel has
    /// run, not overlapping, and not written by anything else meanwhile.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
    /// use mixup_kernels::cuda::{CudaMixer, DeviceNormalize, DevicePlan};
    /// use mixup_kernels::{MemoryFormat, MixPlan, Normalize, SampleShape, ScalarType};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(1)?)?;
    /// let norm = DeviceNormalize::new(&mixer, Normalize::imagenet_u8())?;
    /// let x = s.alloc_zeros::<u8>(3 * 4 * 4)?;
    /// let mut out = s.alloc_zeros::<half::bf16>(3 * 4 * 4)?;
    /// let (xp, _r) = x.device_ptr(s);
    /// let (op, _w) = out.device_ptr_mut(s);
    /// let shape = SampleShape::channels_last(4, 4, 3);
    /// // SAFETY: both buffers hold 48 elements of their dtype and outlive the kernel.
    /// unsafe {
    ///     mixer.mix_normalize_raw(&plan, &shape, &norm, ScalarType::U8, xp,
    ///         MemoryFormat::ChannelsFirst, ScalarType::BF16, op, 48)
    /// }?;
    /// # Ok(())
    /// # }
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn mix_normalize_raw(
        &self,
        plan: &DevicePlan,
        shape: &SampleShape,
        norm: &DeviceNormalize,
        input: ScalarType,
        x: u64,
        out_format: MemoryFormat,
        output: ScalarType,
        out: u64,
        len: usize,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe {
            let x = (x, len, None);
            launch(
                self, plan, shape, norm, input, x, out_format, output, out, len,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(format: MemoryFormat, c: usize, h: usize, w: usize) -> ImageDims {
        ImageDims {
            channels: c,
            height: h,
            width: w,
            format,
        }
    }

    #[test]
    fn args_are_112_bytes() {
        assert_eq!(std::mem::size_of::<MixNormArgs>(), 112);
    }

    #[test]
    fn tiles_cover_every_pixel() {
        let last = MemoryFormat::ChannelsLast;
        let t = KernelTuning::default();
        let a = mix_normalize_args(
            &dims(last, 3, 224, 224),
            256,
            true,
            MemoryFormat::ChannelsFirst,
            &t,
        )
        .unwrap();
        // 4096 / 3 = 1365 pixels a tile, 37 tiles a sample.
        assert_eq!((a.tile_px, a.tiles, a.items), (1365, 37, 256 * 37));
        assert_eq!((a.in_last, a.out_last, a.rint), (1, 0, 1));
        let b = mix_normalize_args(&dims(last, 1, 1, 1), 5, false, last, &t).unwrap();
        assert_eq!((b.tile_px, b.tiles, b.items), (4096, 1, 5));
        // More channels than a tile holds: the direct launch, 2048 outputs an item.
        let c = mix_normalize_args(&dims(last, 5000, 1, 3), 2, false, last, &t).unwrap();
        assert_eq!((c.tile_px, c.tiles), (0, 15000u64.div_ceil(2048)));
        // And under a smaller tile: 64 f32, 100 outputs a direct item.
        let small = KernelTuning {
            mn_tile: 64,
            mn_direct: 100,
            ..t
        };
        for tuning in [t, small] {
            let (tile, direct) = (u64::from(tuning.mn_tile), u64::from(tuning.mn_direct));
            for (ch, h, w) in [(1, 7, 9), (4, 1, 1), (3, 33, 17), (65, 2, 2), (4097, 1, 1)] {
                let a = mix_normalize_args(&dims(last, ch, h, w), 3, false, last, &tuning).unwrap();
                if a.tile_px > 0 {
                    assert!(a.tiles * u64::from(a.tile_px) >= (h * w) as u64);
                    assert!(u64::from(a.tile_px) * ch as u64 <= tile);
                } else {
                    assert!(ch as u64 > tile);
                    assert!(a.tiles * direct >= (ch * h * w) as u64);
                }
            }
        }
        assert!(matches!(
            mix_normalize_args(&dims(last, 3, 1 << 16, 1 << 16), 1, false, last, &t),
            Err(MixError::SizeOverflow { .. })
        ));
    }
}
