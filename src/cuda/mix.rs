//! Mixing a batch on the device: `kernels/mix.cu` (`mix_gather_<dt>`, `mix_pairs_<dt>`).

use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};

use crate::dtype::{Element, ScalarType};
use crate::error::{MixError, Result, check_len, checked_product};
use crate::spec::{MemoryFormat, SampleShape, check_mix};

use super::context::CudaMixer;
use super::entries::Kernel;
use super::plan::DevicePlan;
use super::tuning::{KernelTuning, LaunchEnv};

/// Kernel arguments (`struct MixArgs` in kernels/mix.cu).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct MixArgs {
    pub x: u64,
    pub out: u64,
    pub plan: u64,
    pub items: u64,
    pub row_len: u64,
    pub chunks: u64,
    pub plane: u64,
    pub layout: u32,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub batch: u32,
    pub pad: u32,
    /// Elements per input row (the last dimension; the sample when dense).
    pub seg: u64,
    /// Elements from one input row to the next (`seg` when dense).
    pub pitch: u64,
    /// Elements from one input sample to the next.
    pub x_row: u64,
}

// SAFETY: repr(C) of u64/u32 fields without padding (104 bytes), mirrored by the kernel's struct.
unsafe impl DeviceRepr for MixArgs {}

/// Chunks a row of `row` elements is cut into when a work item covers `chunk_slots` 16-byte
/// slots (at least 1, so chunk 0 carries the row's head and tail elements).
pub(crate) fn chunks_per_row(row: u64, dtype: ScalarType, chunk_slots: u64) -> u64 {
    let ve = 16 / dtype.size() as u64;
    row.div_ceil(chunk_slots * ve).max(1)
}

/// 16-byte slots one mix work item covers (`MIX_NT * MIX_UNROLL`).
fn mix_chunk_slots(t: &KernelTuning) -> u64 {
    u64::from(t.mix_threads) * u64::from(t.mix_unroll)
}

/// The kernel arguments for a mixing call (without pointers), or why it cannot run.
pub(crate) fn mix_args(
    layout: &SampleShape,
    dtype: ScalarType,
    batch: usize,
    rows: usize,
    tuning: &KernelTuning,
) -> Result<MixArgs> {
    let row = layout.sample_len()? as u64;
    let chunks = chunks_per_row(row, dtype, mix_chunk_slots(tuning));
    let items = (rows as u64)
        .checked_mul(chunks)
        .ok_or(MixError::SizeOverflow {
            what: "mix work items",
        })?;
    let mut a = MixArgs {
        items,
        row_len: row,
        seg: row,
        pitch: row,
        x_row: row,
        chunks,
        batch: u32::try_from(batch).map_err(|_| MixError::SizeOverflow { what: "batch" })?,
        ..MixArgs::default()
    };
    let image = |c: usize, h: usize, w: usize| -> Result<(u32, u32, u32, u64)> {
        // Pixel positions are computed in 32 bits on the device.
        let too_big = MixError::SizeOverflow {
            what: "image sample size (the GPU kernels index an image sample in 32 bits)",
        };
        let d = checked_product("sample size", &[c, h, w])?;
        if d >= 1 << 32 {
            return Err(too_big);
        }
        Ok((c as u32, h as u32, w as u32, (h * w) as u64))
    };
    match *layout {
        SampleShape::Rows(_) => {}
        SampleShape::Image {
            format,
            channels,
            height,
            width,
        } => {
            (a.channels, a.height, a.width, a.plane) = image(channels, height, width)?;
            a.layout = match format {
                MemoryFormat::ChannelsFirst => 1,
                MemoryFormat::ChannelsLast => 2,
            };
        }
    }
    Ok(a)
}

/// The checks of a mix call of `len` elements (`x`'s shape; an involution plan to mix in place):
/// `Ok(false)` when there is nothing to launch (no sample, or empty samples).
pub(crate) fn check_call(
    host: &crate::plan::MixPlan,
    layout: &SampleShape,
    len: usize,
    in_place: bool,
) -> Result<bool> {
    let row = check_mix(host, layout, len, "x")?;
    if in_place {
        host.check_involution()?;
    }
    Ok(!host.is_empty() && row != 0)
}

/// The elements of one row of a `[B, ...]` tensor's last dimension in `layout`: the width
/// (channels-first), the channels (channels-last), the whole sample (`Rows`).
pub(crate) fn input_row(layout: &SampleShape) -> usize {
    match *layout {
        SampleShape::Rows(n) => n,
        SampleShape::Image {
            format,
            channels,
            width,
            ..
        } => match format {
            MemoryFormat::ChannelsFirst => width,
            MemoryFormat::ChannelsLast => channels,
        },
    }
}

/// The input's row layout for a pitched input: each row of `layout`'s last dimension `pitch`
/// elements apart (burn's CUDA tensors pad their rows). Returns (seg, pitch, x_row): the row,
/// the pitch, and the elements from one input sample to the next; the input then spans
/// `(B - 1) · x_row + (D / seg - 1) · pitch + seg` elements.
///
/// # Errors
/// [`MixError::InvalidArgument`] `x` when the pitch is shorter than a row, or when a pitched
/// input is to be mixed in place (the output is dense); [`MixError::SizeOverflow`] when the
/// input's span overflows.
pub(crate) fn input_rows(
    layout: &SampleShape,
    batch: usize,
    pitch: Option<usize>,
    in_place: bool,
) -> Result<(u64, u64, u64)> {
    let d = layout.sample_len()?;
    let seg = input_row(layout);
    let Some(pitch) = pitch.filter(|&p| p != seg) else {
        return Ok((d as u64, d as u64, d as u64));
    };
    let bad = |reason: String| MixError::InvalidArgument { what: "x", reason };
    if pitch < seg {
        return Err(bad(format!(
            "a row pitch of {pitch} elements is shorter than a row of {seg}"
        )));
    }
    if in_place {
        return Err(bad(format!(
            "an input whose rows are {pitch} elements apart (rows of {seg}) cannot be mixed in \
             place: the output is dense"
        )));
    }
    let overflow = || MixError::SizeOverflow {
        what: "pitched input",
    };
    let rows = d / seg.max(1);
    let x_row = rows.checked_mul(pitch).ok_or_else(overflow)?;
    // The span of the whole input must be addressable.
    batch
        .saturating_sub(1)
        .checked_mul(x_row)
        .and_then(|v| v.checked_add(x_row))
        .ok_or_else(overflow)?;
    Ok((seg as u64, pitch as u64, x_row as u64))
}

/// The elements a `[B, ...]` input of `layout` spans when its rows of the last dimension are
/// `pitch` apart (`None`: dense): B samples [`input_rows`]' `x_row` apart, less the last row's
/// padding (a slice of a padded tensor ends at its last element); 0 for an empty input.
///
/// # Errors
/// As [`input_rows`] (not in place).
#[cfg_attr(not(feature = "burn-cuda"), allow(dead_code))]
pub(crate) fn input_span(
    layout: &SampleShape,
    batch: usize,
    pitch: Option<usize>,
) -> Result<usize> {
    let (seg, pitch, x_row) = input_rows(layout, batch, pitch, false)?;
    if batch == 0 || seg == 0 {
        return Ok(0);
    }
    // `input_rows` checked that B·x_row fits.
    Ok((batch as u64 * x_row - (pitch - seg)) as usize)
}

/// The kernel, its arguments and its launch configuration for a checked call with at least
/// one element (`pair_count`: the plan's pair leaders, `plan_ptr`: the staged plan) under
/// `env`'s tuning, the input's rows given by [`input_rows`]. [`launch`] launches it; the host emulation's cases (`kernels::emulated`) run
/// it on the CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mix_call(
    host: &crate::plan::MixPlan,
    layout: &SampleShape,
    dtype: ScalarType,
    pair_count: usize,
    x: u64,
    out: u64,
    plan_ptr: u64,
    (seg, pitch, x_row): (u64, u64, u64),
    env: &LaunchEnv<'_>,
) -> Result<(Kernel, MixArgs, LaunchConfig)> {
    // Involutions (random pairs, timm's flip) move each row once, in place or not.
    let pairs = host.is_involution();
    let rows = if pairs { pair_count } else { host.len() };
    let mut args = mix_args(layout, dtype, host.len(), rows, env.tuning)?;
    (args.seg, args.pitch, args.x_row) = (seg, pitch, x_row);
    args.x = x;
    args.out = out;
    args.plan = plan_ptr;
    let kernel = if pairs {
        Kernel::MixPairs
    } else {
        Kernel::MixGather
    };
    let cfg = LaunchConfig {
        grid_dim: (env.tuning.grid(args.items, env.sms), 1, 1),
        block_dim: (env.tuning.mix_threads, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((kernel, args, cfg))
}

/// Validates and launches a mixing kernel on raw device addresses: the one launch behind
/// [`CudaMixer::mix`], [`CudaMixer::mix_in_place`], [`super::raw::mix`] and
/// [`super::raw::mix_in_place`].
///
/// `pitch`: the input's rows (of its last dimension) that many elements apart (burn's padded
/// CUDA tensors; `None`: dense); the output is dense, `len` = B·D elements.
///
/// # Safety
/// `x` and `out` address `len` elements of `dtype` on the mixer's device (`x` the span
/// [`input_span`] gives when pitched); `out == x` only when `in_place`; otherwise they do not
/// overlap.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch(
    m: &CudaMixer,
    plan: &DevicePlan,
    layout: &SampleShape,
    dtype: ScalarType,
    (x, pitch): (u64, Option<usize>),
    out: u64,
    len: usize,
    in_place: bool,
) -> Result<()> {
    let host = plan.plan();
    if !check_call(host, layout, len, in_place)? {
        return Ok(());
    }
    let rows = input_rows(layout, host.len(), pitch, in_place)?;
    let (kernel, args, cfg) = mix_call(
        host,
        layout,
        dtype,
        plan.pairs(),
        x,
        out,
        plan.device_ptr_for(m)?,
        rows,
        &m.launch_env(),
    )?;
    // SAFETY: `args` is the kernel's `MixArgs`; the addresses are valid per the contract and
    // the plan buffer holds the plan and its pair leaders.
    unsafe { m.enqueue(kernel, dtype, &args, cfg, "launching the mix kernel") }
}

impl CudaMixer {
    /// Mixes `x` into `out` (both `[B, sample]` in `layout`): MixUp lerp or CutMix paste per the
    /// plan, in one pass. Bit-identical to the CPU path, but for the payload of a NaN (the
    /// device's arithmetic and conversions give the canonical NaN). Views may start at any
    /// element offset (unaligned rows go element by element).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{SampleShape, MixPlan};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::from_parts(&[1, 2, 0], &[0.5, 0.75, 1.0])?)?; // any plan
    /// let x = s.clone_htod(&vec![2.0f32, 4.0, 8.0])?;
    /// let mut out = s.alloc_zeros::<f32>(3)?;
    /// mixer.mix(&plan, &SampleShape::rows(1), &x.as_view(), &mut out.as_view_mut())?;
    /// assert_eq!(s.clone_dtoh(&out)?, [3.0, 5.0, 8.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mix<T: Element>(
        &self,
        plan: &DevicePlan,
        layout: &SampleShape,
        x: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        check_mix(plan.plan(), layout, x.len(), "x")?;
        check_len("out", x.len(), out.len())?;
        let (xp, _rx) = x.device_ptr(self.stream());
        let (op, _wo) = out.device_ptr_mut(self.stream());
        // SAFETY: both views hold `x.len()` elements of T on this mixer's stream and cannot
        // overlap (one is borrowed mutably).
        unsafe { launch(self, plan, layout, T::DTYPE, (xp, None), op, x.len(), false) }
    }

    /// Mixes `x` in place. The plan must be an involution (`partner(partner(i)) == i`, as timm's
    /// flip and random pairs are): each pair is read once and both rows written, the same bytes
    /// as a copy.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::{CutBox, ImageSize, SampleShape, MixError, MixPlan};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let s = mixer.stream();
    /// // Two 1×2 images: sample 0 pastes column 1 of sample 1, sample 1 lerps with λ = 0.75.
    /// let b = CutBox { y0: 0, y1: 1, x0: 1, x1: 2 };
    /// let mut plan = DevicePlan::new(&mixer);
    /// let image = ImageSize { height: 1, width: 2 };
    /// plan.upload(&MixPlan::with_boxes(&[1, 0], &[0.5, 0.75], &[Some(b), None], image)?)?;
    /// let mut x = s.clone_htod(&vec![0u8, 100, 200, 40])?;
    /// let layout = SampleShape::channels_last(1, 2, 1);
    /// mixer.mix_in_place(&plan, &layout, &mut x.as_view_mut())?;
    /// assert_eq!(s.clone_dtoh(&x)?, [0, 40, 150, 55]);
    /// // A 3-cycle is not an involution: mix it out of place.
    /// plan.upload(&MixPlan::from_parts(&[1, 2, 0], &[0.5; 3])?)?;
    /// let mut y = s.alloc_zeros::<f32>(3)?;
    /// let err = mixer.mix_in_place(&plan, &SampleShape::rows(1), &mut y.as_view_mut());
    /// assert!(matches!(err, Err(MixError::NotInvolution { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn mix_in_place<T: Element>(
        &self,
        plan: &DevicePlan,
        layout: &SampleShape,
        x: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let len = x.len();
        let (xp, _wx) = x.device_ptr_mut(self.stream());
        // SAFETY: the view holds `len` elements of T on this mixer's stream.
        unsafe { launch(self, plan, layout, T::DTYPE, (xp, None), xp, len, true) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_104_bytes() {
        assert_eq!(std::mem::size_of::<MixArgs>(), 104);
    }

    #[test]
    fn pitched_input_rows() {
        let nchw = SampleShape::channels_first(3, 224, 224);
        let d = 3 * 224 * 224;
        // Dense: one segment per sample, whatever `in_place`.
        assert_eq!(input_rows(&nchw, 8, None, true).unwrap(), (d, d, d));
        assert_eq!(input_rows(&nchw, 8, Some(224), false).unwrap(), (d, d, d));
        // cubecl's pitch for 224 f32: 256 elements per image row.
        let x_row = 3 * 224 * 256;
        assert_eq!(
            input_rows(&nchw, 8, Some(256), false).unwrap(),
            (224, 256, x_row)
        );
        // Channels-last rows are the channels; `Rows` samples are one row.
        let nhwc = SampleShape::channels_last(5, 7, 3);
        assert_eq!(
            input_rows(&nhwc, 2, Some(4), false).unwrap(),
            (3, 4, 5 * 7 * 4)
        );
        assert_eq!(
            input_rows(&SampleShape::rows(1000), 2, Some(1024), false).unwrap(),
            (1000, 1024, 1024)
        );
        let invalid = |r: Result<(u64, u64, u64)>| {
            matches!(r, Err(MixError::InvalidArgument { what: "x", .. }))
        };
        assert!(invalid(input_rows(&nchw, 8, Some(223), false)));
        assert!(invalid(input_rows(&nchw, 8, Some(256), true)));
        assert!(matches!(
            input_rows(&SampleShape::rows(2), usize::MAX / 2, Some(4), false),
            Err(MixError::SizeOverflow { .. })
        ));
    }

    #[test]
    fn pitched_input_span() {
        // Dense: B·D, whether the pitch is left out or given as the row itself.
        let nchw = SampleShape::channels_first(3, 5, 4);
        assert_eq!(input_span(&nchw, 6, None).unwrap(), 6 * 60);
        assert_eq!(input_span(&nchw, 6, Some(4)).unwrap(), 6 * 60);
        // Rows of 4 padded to 8: 6·15 rows of 8, less the last row's padding.
        assert_eq!(input_span(&nchw, 6, Some(8)).unwrap(), 6 * 15 * 8 - 4);
        let nhwc = SampleShape::channels_last(5, 7, 3);
        assert_eq!(input_span(&nhwc, 2, Some(4)).unwrap(), 2 * 35 * 4 - 1);
        assert_eq!(
            input_span(&SampleShape::rows(1000), 4, Some(1024)).unwrap(),
            3 * 1024 + 1000
        );
        // Nothing to read.
        assert_eq!(input_span(&nchw, 0, Some(8)).unwrap(), 0);
        assert_eq!(input_span(&SampleShape::rows(0), 4, None).unwrap(), 0);
        assert!(input_span(&nchw, 6, Some(3)).is_err());
    }

    const CHUNK: u64 = 256 * 4;

    #[test]
    fn chunking_covers_every_row() {
        // 3x224x224 f32: 150528 elements, 4096 per chunk -> 37 chunks.
        assert_eq!(mix_chunk_slots(&KernelTuning::default()), CHUNK);
        assert_eq!(chunks_per_row(150_528, ScalarType::F32, CHUNK), 37);
        assert_eq!(chunks_per_row(150_528, ScalarType::BF16, CHUNK), 19);
        assert_eq!(chunks_per_row(150_528, ScalarType::U8, CHUNK), 10);
        // Tiny rows still get one chunk (it handles the head and tail elements).
        assert_eq!(chunks_per_row(1, ScalarType::F32, CHUNK), 1);
        assert_eq!(chunks_per_row(4096, ScalarType::F32, CHUNK), 1);
        assert_eq!(chunks_per_row(4097, ScalarType::F32, CHUNK), 2);
        // Another tuning: 128 threads x 2 slots.
        assert_eq!(chunks_per_row(4097, ScalarType::F32, 256), 5);
        for slots in [32u64, 256, CHUNK, 16 * 1024] {
            for row in [1u64, 3, 63, 4097, 1 << 20, (1 << 32) + 5] {
                for dt in [ScalarType::F32, ScalarType::F16, ScalarType::U8] {
                    let ve = 16 / dt.size() as u64;
                    let c = chunks_per_row(row, dt, slots);
                    // Enough for the element-by-element path and for the slot path.
                    assert!(c * slots * ve >= row);
                    assert!(c * slots >= row / ve);
                }
            }
        }
    }

    #[test]
    fn grids_are_capped() {
        let t = KernelTuning::default();
        let a = mix_args(
            &SampleShape::rows(1 << 40),
            ScalarType::F32,
            1 << 20,
            1 << 20,
            &t,
        )
        .unwrap();
        assert!(a.items > super::super::tuning::MAX_GRID);
        assert_eq!(t.grid(a.items, 132), (1u32 << 31) - 1);
        let capped = KernelTuning {
            grid_sm_multiple: 2,
            ..t
        };
        assert_eq!(capped.grid(a.items, 132), 264);
    }

    #[test]
    fn layouts_map_to_kernel_codes() {
        let t = KernelTuning::default();
        let a = mix_args(
            &SampleShape::channels_last(5, 7, 3),
            ScalarType::U8,
            4,
            4,
            &t,
        )
        .unwrap();
        assert_eq!(
            (a.layout, a.channels, a.height, a.width, a.plane),
            (2, 3, 5, 7, 35)
        );
        assert_eq!(a.row_len, 105);
        let b = mix_args(
            &SampleShape::channels_first(3, 224, 224),
            ScalarType::BF16,
            256,
            128,
            &t,
        )
        .unwrap();
        assert_eq!((b.layout, b.plane, b.items), (1, 224 * 224, 128 * 19));
        assert!(matches!(
            mix_args(
                &SampleShape::channels_first(1 << 12, 1 << 10, 1 << 10),
                ScalarType::F32,
                1,
                1,
                &t
            ),
            Err(MixError::SizeOverflow { .. })
        ));
    }
}
