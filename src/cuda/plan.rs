//! The plan on the device: one asynchronous copy per step into a buffer that is reused.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, DevicePtr, DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};

use crate::error::{MixError, Result};
use crate::plan::{MixPlan, PlanEntry};

use super::context::{CudaMixer, check_made_for, check_owner, driver_err};

// SAFETY: PlanEntry is `repr(C)`, 32 bytes of u32/f32 fields with no padding, mirrored by
// `struct PlanEntry` in kernels/common.cuh; all-zero bits are a valid entry.
unsafe impl DeviceRepr for PlanEntry {}
unsafe impl ValidAsZeroBits for PlanEntry {}

/// Entries per 32-byte slot of pair leaders appended after the plan (8 `u32` per entry).
const LEADERS_PER_ENTRY: usize = 8;

/// A [`MixPlan`] uploaded to the device, for [`CudaMixer`]'s operations.
///
/// [`upload`](DevicePlan::upload) sends the plan with **one** asynchronous host-to-device copy
/// on the mixer's stream, into a device buffer that is kept and reused; it grows (one
/// allocation) only when a larger batch arrives. A host copy of the plan stays here, so every
/// argument check of the operations runs on the host, with no synchronization.
///
/// Layout of the device buffer: the `B` entries, then the pair leaders (samples `i` with
/// `i <= partner(i)`, as `u32`, 8 per entry slot) that in-place mixing of involutions uses.
///
/// ## Host memory and CUDA graphs
/// By default the copy reads from a pageable `Vec`: the driver copies it into its own staging
/// memory before `upload` returns, so the host plan can change right after. For a few KB this
/// is normally immediate, but CUDA only promises that such a copy *may* return before the
/// device has run it: the driver is allowed to wait for the stream. For a guarantee, use
/// [`DevicePlan::with_pinned_staging`]: the copy reads from page-locked memory and is truly
/// asynchronous; two staging buffers alternate, and writing one waits (on an event recorded
/// after the copy, not on the whole device) for the copy made from it two uploads ago, which
/// has long finished in a training loop. A host running more than two uploads ahead of the
/// device blocks there instead of overwriting a plan whose copy is still queued.
///
/// A failed `upload` (out of memory, say) leaves the plan unusable: operations refuse it until
/// an upload succeeds.
///
/// To capture a training step in a CUDA graph, keep the upload **outside** the graph: upload
/// each step's plan on the mixer's stream, then launch the graph. The captured kernels read the
/// device buffer, whose address does not change while the batch size does not grow. (A
/// pageable copy cannot be captured at all.) Call every operation once before capturing, so
/// kernels are compiled and scratch buffers exist.
///
/// # Examples
///
/// ```no_run
/// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
/// use mixup_kernels::{ImageSize, MixConfig, SampleShape, Sampler};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mixer = CudaMixer::new(0)?;
/// let sampler = Sampler::new(MixConfig::timm(10), 0)?;
/// let mut x = mixer.stream().alloc_zeros::<f32>(8 * 3 * 4 * 4)?;
/// let mut plan = DevicePlan::new(&mixer); // one per training loop, reused every step
/// for step in 0..3 {
///     let image = ImageSize { height: 4, width: 4 };
///     plan.upload(&sampler.plan_images(step, 8, image)?)?; // one async copy, no sync
///     let layout = SampleShape::channels_first(3, 4, 4);
///     mixer.mix_in_place(&plan, &layout, &mut x.as_view_mut())?;
/// }
/// assert_eq!(plan.len(), 8);
/// # Ok(())
/// # }
/// ```
pub struct DevicePlan {
    stream: Arc<CudaStream>,
    buf: Option<CudaSlice<PlanEntry>>,
    host: MixPlan,
    staging: Vec<PlanEntry>,
    pinned: Option<[Option<Staging>; 2]>,
    next_pinned: usize,
    pairs: usize,
    /// Whether the last upload succeeded (operations refuse the plan otherwise).
    valid: bool,
    /// The host thread whose per-thread default stream `stream` is, if it is one: uploads and
    /// launches from another thread are refused (`check_owner`).
    owner: Option<std::thread::ThreadId>,
}

impl std::fmt::Debug for DevicePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePlan")
            .field("len", &self.host.len())
            .field("capacity", &self.capacity())
            .field("involution", &self.host.is_involution())
            .field("image_size", &self.host.image_size())
            .field("pinned", &self.pinned.is_some())
            .finish()
    }
}

/// A page-locked staging buffer and an event recorded on the stream after each copy that reads
/// it.
///
/// The event is ours because cudarc 0.19 records a `PinnedHostSlice`'s own event only when the
/// context is in multi-stream mode (after `CudaContext::new_stream`); on a context's default
/// stream, waiting on that event returns at once, and the host could rewrite the buffer while
/// its copy is still queued.
struct Staging {
    host: PinnedHostSlice<PlanEntry>,
    /// Recorded after the last copy from `host`; never recorded: complete.
    read: CudaEvent,
}

impl Staging {
    fn new(stream: &Arc<CudaStream>, len: usize) -> Result<Self> {
        let what = "allocating pinned staging memory";
        // Blocking sync, as cudarc's own pinned event: a host far ahead sleeps instead of
        // spinning a core the data loader may want.
        let read = stream
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .map_err(driver_err(what))?;
        // SAFETY: zero-filled below before anything reads it.
        let mut host =
            unsafe { stream.context().alloc_pinned::<PlanEntry>(len) }.map_err(driver_err(what))?;
        let ptr = host.as_mut_ptr().map_err(driver_err(what))?;
        // SAFETY: `ptr` addresses `len` entries of a fresh allocation; all-zero bits are a valid
        // PlanEntry.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(Self { host, read })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The page-locked memory is freed right after this: no copy may still read it.
        let ctx = self.read.context().clone();
        ctx.record_err(self.read.synchronize());
    }
}

/// Pair leaders of an involution: `i` with `i <= partner(i)`, ascending. Empty for other plans.
fn pair_leaders(entries: &[PlanEntry], involution: bool) -> impl Iterator<Item = u32> + '_ {
    let n = if involution { entries.len() } else { 0 };
    (0..n as u32).filter(|&i| i <= entries[i as usize].partner)
}

/// An entry as the eight u32 words the device reads (what `stage` packs leaders into).
pub(crate) fn entry_words(e: &PlanEntry) -> [u32; 8] {
    [
        e.partner,
        e.lam.to_bits(),
        e.cut,
        e.y0,
        e.y1,
        e.x0,
        e.x1,
        e.pad,
    ]
}

/// Entries plus leader slots, as uploaded.
#[cfg(test)]
pub(crate) fn staged_len(batch: usize, pairs: usize) -> usize {
    batch + pairs.div_ceil(LEADERS_PER_ENTRY)
}

/// Writes the plan and its leaders into `out` (cleared first; no allocation once `out` has
/// grown to the batch). Returns the number of leaders.
pub(crate) fn stage(plan: &MixPlan, out: &mut Vec<PlanEntry>) -> usize {
    let slot = |w: [u32; LEADERS_PER_ENTRY]| PlanEntry {
        partner: w[0],
        lam: f32::from_bits(w[1]),
        cut: w[2],
        y0: w[3],
        y1: w[4],
        x0: w[5],
        x1: w[6],
        pad: w[7],
    };
    out.clear();
    out.extend_from_slice(plan.entries());
    let mut w = [0u32; LEADERS_PER_ENTRY];
    let mut count = 0;
    for i in pair_leaders(plan.entries(), plan.is_involution()) {
        w[count % LEADERS_PER_ENTRY] = i;
        count += 1;
        if count % LEADERS_PER_ENTRY == 0 {
            out.push(slot(w));
            w = [0; LEADERS_PER_ENTRY];
        }
    }
    if count % LEADERS_PER_ENTRY != 0 {
        out.push(slot(w));
    }
    count
}

impl DevicePlan {
    /// An empty plan for `mixer`'s stream (nothing is allocated until the first upload).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// if let Ok(mixer) = CudaMixer::new(0) {
    ///     let plan = DevicePlan::new(&mixer);
    ///     assert!(plan.is_empty() && plan.capacity() == 0);
    /// }
    /// ```
    pub fn new(mixer: &CudaMixer) -> Self {
        Self {
            stream: mixer.stream().clone(),
            buf: None,
            host: MixPlan::default(),
            staging: Vec::new(),
            pinned: None,
            next_pinned: 0,
            pairs: 0,
            valid: false,
            owner: mixer.owner(),
        }
    }

    /// Like [`new`](DevicePlan::new), uploading from page-locked staging memory (see the type
    /// docs).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::MixPlan;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let mut plan = DevicePlan::with_pinned_staging(&mixer);
    /// for _ in 0..3 {
    ///     plan.upload(&MixPlan::from_parts(&[1, 0], &[0.6, 0.6])?)?; // truly asynchronous
    /// }
    /// assert_eq!(plan.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_pinned_staging(mixer: &CudaMixer) -> Self {
        let mut p = Self::new(mixer);
        p.pinned = Some([None, None]);
        p
    }

    /// Sends `plan` to the device with one asynchronous copy on the mixer's stream. Kernels
    /// launched on that stream afterwards see it; kernels launched before still see the
    /// previous plan (stream order).
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`] `plan` when the plan's mixer is on CUDA's per-thread
    /// default stream (`CU_STREAM_PER_THREAD`, candle's) of another host thread: there this
    /// thread's copy would not be ordered with that thread's kernels (make one plan per
    /// thread); [`MixError::Driver`] from the allocation or the copy (the plan is then refused
    /// until an upload succeeds).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::MixPlan;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let mut plan = DevicePlan::new(&mixer);
    /// let host = MixPlan::from_parts(&[1, 0, 2], &[0.6, 0.6, 1.0])?;
    /// plan.upload(&host)?;
    /// assert_eq!(plan.plan(), &host);
    /// # Ok(())
    /// # }
    /// ```
    pub fn upload(&mut self, plan: &MixPlan) -> Result<()> {
        check_owner(self.owner, "plan")?;
        // Until this upload has succeeded no operation may use the plan: the host copy (which
        // the operations validate against) would no longer match the device buffer.
        self.valid = false;
        self.pairs = stage(plan, &mut self.staging);
        let n = self.staging.len();
        if n > 0 {
            self.copy_staged(n)?;
        }
        // Host copy last (reusing its allocation), once the device has the same plan queued.
        self.host.entries.clone_from(&plan.entries);
        self.host.image = plan.image;
        self.host.involution = plan.involution;
        self.valid = true;
        Ok(())
    }

    /// Enqueues the copy of the `n` staged entries into the device buffer, growing it first if
    /// needed.
    fn copy_staged(&mut self, n: usize) -> Result<()> {
        // Both buffers grow to `n.next_power_of_two().max(64)` entries, the smallest such size
        // holding `n`.
        let grown = |n: usize| n.next_power_of_two().max(64);
        if self.buf.as_ref().is_none_or(|b| b.len() < n) {
            // Grow with headroom so a slowly growing batch does not reallocate every step. The
            // old buffer is freed in stream order, after the kernels that read it.
            // SAFETY: every element a kernel reads is written by the copy below first.
            let buf = unsafe { self.stream.alloc::<PlanEntry>(grown(n)) }
                .map_err(driver_err("allocating the device plan"))?;
            self.buf = Some(buf);
        }
        let Some(buf) = self.buf.as_mut() else {
            unreachable!("allocated above")
        };
        let Some(mut dst) = buf.try_slice_mut(0..n) else {
            unreachable!("the buffer holds at least `n` entries")
        };
        let copy_err = driver_err("copying the plan to the device");
        let Some(bufs) = self.pinned.as_mut() else {
            // Pageable: the driver has taken the bytes when this returns.
            return self
                .stream
                .memcpy_htod(&self.staging[..], &mut dst)
                .map_err(copy_err);
        };
        let slot = &mut bufs[self.next_pinned];
        self.next_pinned ^= 1;
        if slot.as_ref().is_none_or(|p| p.host.len() < n) {
            // Dropping the old buffer waits for its last copy.
            *slot = None;
            *slot = Some(Staging::new(&self.stream, grown(n))?);
        }
        let Some(st) = slot.as_mut() else {
            unreachable!("allocated above")
        };
        // The copy made from this buffer two uploads ago must have run before it is rewritten.
        st.read
            .synchronize()
            .map_err(driver_err("waiting for the previous plan copy"))?;
        let host = st
            .host
            .as_mut_slice()
            .map_err(driver_err("waiting for the previous plan copy"))?;
        host[..n].copy_from_slice(&self.staging);
        // From page-locked memory the driver does not take the bytes now: the DMA reads them
        // when the stream reaches the copy, which is what `read` (recorded next) tells.
        self.stream
            .memcpy_htod(&host[..n], &mut dst)
            .map_err(copy_err)?;
        st.read
            .record(&self.stream)
            .map_err(driver_err("recording the plan copy"))
    }

    /// Batch size of the uploaded plan.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::MixPlan;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(5)?)?;
    /// assert_eq!(plan.len(), 5);
    /// # Ok(())
    /// # }
    /// ```
    pub fn len(&self) -> usize {
        self.host.len()
    }

    /// Whether the uploaded plan has no samples.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::MixPlan;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(0)?)?; // an empty batch is a valid upload
    /// assert!(plan.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// The host copy of the uploaded plan.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::MixPlan;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::from_parts(&[1, 0], &[0.6, 0.8])?)?;
    /// assert_eq!(plan.plan().sample(1).lam, 0.8); // no device read needed
    /// # Ok(())
    /// # }
    /// ```
    pub fn plan(&self) -> &MixPlan {
        &self.host
    }

    /// Plan entries the device buffer can hold without growing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use mixup_kernels::cuda::{CudaMixer, DevicePlan};
    /// use mixup_kernels::MixPlan;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mixer = CudaMixer::new(0)?;
    /// let mut plan = DevicePlan::new(&mixer);
    /// plan.upload(&MixPlan::identity(100)?)?;
    /// let cap = plan.capacity();
    /// assert!(cap >= 100);
    /// plan.upload(&MixPlan::identity(50)?)?; // a smaller batch reuses the buffer
    /// assert_eq!(plan.capacity(), cap);
    /// # Ok(())
    /// # }
    /// ```
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    /// Whether the device buffer holds `plan` (the last upload succeeded and was this plan).
    #[cfg_attr(not(feature = "candle-cuda"), allow(dead_code))]
    pub(crate) fn holds(&self, plan: &MixPlan) -> bool {
        self.valid && self.host == *plan
    }

    /// Number of pairs (`i <= partner(i)`) of an involution, 0 otherwise.
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }

    /// Device address of the entries, checked to belong to `mixer`'s stream and to hold a plan.
    pub(crate) fn device_ptr_for(&self, mixer: &CudaMixer) -> Result<u64> {
        check_made_for((&self.stream, self.owner), mixer, "plan", "DevicePlan")?;
        if !self.valid {
            return Err(MixError::InvalidArgument {
                what: "plan",
                reason: "nothing was uploaded to this DevicePlan yet, or the last upload failed"
                    .into(),
            });
        }
        match &self.buf {
            // Kernels only run for a non-empty batch, which has a buffer.
            None => Ok(0),
            Some(b) => {
                let (ptr, _record) = b.device_ptr(&self.stream);
                Ok(ptr)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_follow_the_entries() {
        // Pairs (0,3), (1,1) self, (2,4); 5 samples.
        let plan = MixPlan::from_parts(&[3, 1, 4, 0, 2], &[0.5, 1.0, 0.25, 0.5, 0.75]).unwrap();
        assert!(plan.is_involution());
        let mut staged = Vec::new();
        let pairs = stage(&plan, &mut staged);
        assert_eq!(pairs, 3);
        assert_eq!(staged.len(), staged_len(5, 3));
        assert_eq!(staged.len(), 6);
        assert_eq!(&staged[..5], plan.entries());
        let l = staged[5];
        assert_eq!((l.partner, l.lam.to_bits(), l.cut), (0, 1, 2));
    }

    #[test]
    fn permutations_have_no_leaders() {
        let plan = MixPlan::from_parts(&[1, 2, 0], &[0.5; 3]).unwrap();
        let mut staged = Vec::new();
        assert_eq!(stage(&plan, &mut staged), 0);
        assert_eq!(staged.len(), 3);
        // 17 pairs need 3 leader slots.
        assert_eq!(staged_len(34, 17), 37);
    }

    #[test]
    fn leaders_fill_slots_of_eight() {
        // 34 samples in 17 pairs (i, 33 - i): leaders 0..=16, in slots of 8, 8 and 1.
        let partner: Vec<usize> = (0..34).map(|i| 33 - i).collect();
        let plan = MixPlan::from_parts(&partner, &[0.5; 34]).unwrap();
        let mut staged = Vec::new();
        assert_eq!(stage(&plan, &mut staged), 17);
        assert_eq!(staged.len(), staged_len(34, 17));
        let words: Vec<u32> = staged[34..].iter().flat_map(entry_words).collect();
        let mut want: Vec<u32> = (0..17).collect();
        want.resize(24, 0);
        assert_eq!(words, want);
        // Staging again reuses the allocation.
        let cap = staged.capacity();
        stage(&plan, &mut staged);
        assert_eq!(staged.capacity(), cap);
    }
}
