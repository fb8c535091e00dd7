//! The plan: for each sample, its partner, its own weight λ and, for CutMix, the pasted box.

use std::fmt;

use crate::config::TargetSpec;
use crate::error::{MixError, Result};
use crate::sampler::ImageSize;

/// A CutMix box, half-open: rows `y0..y1`, columns `x0..x1`. Inside it a sample takes its
/// partner's pixels; outside it keeps its own.
///
/// # Examples
///
/// ```
/// use mixup_kernels::CutBox;
/// let b = CutBox { y0: 1, y1: 3, x0: 0, x1: 2 }; // rows 1..3, columns 0..2
/// assert_eq!(b.area(), 4);
/// assert!(b.contains(2, 1) && !b.contains(3, 1));
/// assert_eq!(b.kept_fraction(4, 4), 0.75);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CutBox {
    /// First row.
    pub y0: u32,
    /// One past the last row.
    pub y1: u32,
    /// First column.
    pub x0: u32,
    /// One past the last column.
    pub x1: u32,
}

impl CutBox {
    /// Number of pixels inside the box (0 for an empty box).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::CutBox;
    /// assert_eq!(CutBox { y0: 0, y1: 2, x0: 1, x1: 4 }.area(), 6);
    /// assert_eq!(CutBox::default().area(), 0);
    /// ```
    pub fn area(&self) -> u64 {
        u64::from(self.y1.saturating_sub(self.y0)) * u64::from(self.x1.saturating_sub(self.x0))
    }

    /// Whether pixel `(y, x)` lies inside the box.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::CutBox;
    /// let b = CutBox { y0: 0, y1: 2, x0: 1, x1: 4 };
    /// assert!(b.contains(0, 1) && b.contains(1, 3));
    /// assert!(!b.contains(2, 1) && !b.contains(0, 4)); // the ends are excluded
    /// ```
    #[inline]
    pub fn contains(&self, y: usize, x: usize) -> bool {
        (self.y0 as usize..self.y1 as usize).contains(&y)
            && (self.x0 as usize..self.x1 as usize).contains(&x)
    }

    /// `1 - area/(H·W)`: the weight the sample keeps, as timm's `correct_lam` computes it.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::CutBox;
    /// let b = CutBox { y0: 0, y1: 16, x0: 0, x1: 16 };
    /// assert_eq!(b.kept_fraction(32, 32), 0.75);
    /// ```
    pub fn kept_fraction(&self, height: usize, width: usize) -> f64 {
        1.0 - self.area() as f64 / (height as f64 * width as f64)
    }

    fn check(&self, index: usize, height: usize, width: usize) -> Result<()> {
        let reason = if self.y0 > self.y1 || self.x0 > self.x1 {
            Some(format!("{self:?} has its start after its end"))
        } else if self.y1 as usize > height || self.x1 as usize > width {
            Some(format!("{self:?} extends past the {height}x{width} image"))
        } else {
            None
        };
        match reason {
            Some(reason) => Err(MixError::InvalidBox { index, reason }),
            None => Ok(()),
        }
    }
}

/// One sample's entry of a plan, as the caller sees it.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{CutBox, ImageSize, MixPlan, SampleMix};
/// let b = CutBox { y0: 0, y1: 1, x0: 0, x1: 2 };
/// let image = ImageSize { height: 2, width: 2 };
/// let plan = MixPlan::with_boxes(&[1, 0], &[0.5, 0.8], &[Some(b), None], image).unwrap();
/// assert_eq!(plan.sample(0), SampleMix { partner: 1, lam: 0.5, cut: Some(b) });
/// assert_eq!(plan.sample(1).cut, None); // MixUp
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleMix {
    /// Index of the partner sample.
    pub partner: usize,
    /// Weight of the sample itself: `out = λ·x + (1-λ)·x[partner]`, target weight of its label.
    pub lam: f32,
    /// `Some(box)` for CutMix: the box is pasted from the partner, λ weighs the labels only.
    pub cut: Option<CutBox>,
}

/// The plan as it is laid out for kernels: 32 bytes per sample, uploaded with one copy.
///
/// `cut` is 0 for MixUp and 1 for CutMix; the box fields are 0 for MixUp.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct PlanEntry {
    pub partner: u32,
    pub lam: f32,
    pub cut: u32,
    pub y0: u32,
    pub y1: u32,
    pub x0: u32,
    pub x1: u32,
    pub pad: u32,
}

impl PlanEntry {
    pub(crate) fn sample(&self) -> SampleMix {
        SampleMix {
            partner: self.partner as usize,
            lam: self.lam,
            cut: (self.cut != 0).then_some(CutBox {
                y0: self.y0,
                y1: self.y1,
                x0: self.x0,
                x1: self.x1,
            }),
        }
    }

    pub(crate) fn new(partner: usize, lam: f32, cut: Option<CutBox>) -> Self {
        let b = cut.unwrap_or_default();
        Self {
            partner: partner as u32,
            lam,
            cut: cut.is_some() as u32,
            y0: b.y0,
            y1: b.y1,
            x0: b.x0,
            x1: b.x1,
            pad: 0,
        }
    }
}

/// How a batch is mixed: drawn by a [`Sampler`](crate::Sampler) or brought by the caller with
/// [`MixPlan::from_parts`], [`MixPlan::from_boxes`] or [`MixPlan::with_boxes`].
///
/// A drawn plan remembers its config's [`TargetSpec`] (classes and label smoothing,
/// [`MixPlan::targets`]): soft targets and losses given another spec fail with
/// [`MixError::InvalidArgument`] (`spec`) instead of silently using it. A hand-built plan
/// remembers none and takes any spec.
///
/// Its [`Display`](std::fmt::Display) prints one line per sample (partner, λ, kind), handy for
/// logging.
///
/// # Examples
///
/// ```
/// use mixup_kernels::MixPlan;
/// let plan = MixPlan::from_parts(&[1, 0, 2], &[0.7, 0.6, 1.0]).unwrap();
/// assert!(plan.is_involution());
/// assert_eq!(plan.sample(0).partner, 1);
/// assert!(plan.to_string().contains("mixup"));
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MixPlan {
    pub(crate) entries: Vec<PlanEntry>,
    /// `(height, width)` the boxes were drawn for; `None` when no sample is CutMix.
    pub(crate) image: Option<(usize, usize)>,
    pub(crate) involution: bool,
    /// The spec of the config the plan was drawn with (`None` for hand-built plans).
    pub(crate) targets: Option<TargetSpec>,
}

impl MixPlan {
    /// A plan that leaves each of `batch` samples unmixed (partner itself, λ = 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{reference, MixPlan, SampleShape};
    /// let plan = MixPlan::identity(2).unwrap();
    /// assert!(plan.samples().all(|s| s.lam == 1.0));
    /// let x = [1.0f32, 2.0, 3.0, 4.0];
    /// assert_eq!(reference::mix(&plan, &SampleShape::rows(2), &x).unwrap(), [1.0, 2.0, 3.0, 4.0]);
    /// ```
    pub fn identity(batch: usize) -> Result<Self> {
        let partner: Vec<usize> = (0..batch).collect();
        Self::from_parts(&partner, &vec![1.0; batch])
    }

    /// A MixUp-only plan from partner indices and per-sample λ (the weight of the sample itself).
    /// Checked: equal lengths, partners inside the batch, λ finite in `[0, 1]`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixError, MixPlan};
    /// let plan = MixPlan::from_parts(&[2, 0, 1], &[0.6, 0.7, 0.8]).unwrap();
    /// assert!(!plan.is_involution()); // a 3-cycle: mix out of place
    /// assert!(matches!(
    ///     MixPlan::from_parts(&[1, 0], &[0.5, 1.5]),
    ///     Err(MixError::InvalidLambda { index: 1, .. })
    /// ));
    /// ```
    pub fn from_parts(partner: &[usize], lam: &[f32]) -> Result<Self> {
        Self::build(partner, lam, None, None)
    }

    /// A plan with CutMix boxes and λ as given: `boxes[i] = Some(b)` pastes `b` from the
    /// partner into sample `i` (λ then weighs only the labels and is kept as given, not
    /// recomputed from the box: see [`MixPlan::from_boxes`] for that), `None` lerps with λ.
    /// Boxes are checked against the image size (`height × width`).
    ///
    /// # Errors
    /// [`MixError::LengthMismatch`] unless `lam` and `boxes` have one entry per partner,
    /// [`MixError::PartnerOutOfRange`], [`MixError::InvalidLambda`], [`MixError::InvalidBox`]
    /// (reversed, or past the image), [`MixError::SizeOverflow`] past `u32::MAX` samples.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{CutBox, ImageSize, MixError, MixPlan};
    /// let b = CutBox { y0: 0, y1: 2, x0: 0, x1: 2 };
    /// // Sample 0 pastes a 2×2 box of sample 1 into a 4×4 image; λ = 0.75 weighs the labels.
    /// let image = ImageSize { height: 4, width: 4 };
    /// let plan = MixPlan::with_boxes(&[1, 0], &[0.75, 1.0], &[Some(b), None], image).unwrap();
    /// assert_eq!(plan.image_size(), Some(image));
    /// let too_big = CutBox { y0: 0, y1: 5, x0: 0, x1: 2 };
    /// assert!(matches!(
    ///     MixPlan::with_boxes(&[1, 0], &[0.75, 1.0], &[Some(too_big), None], image),
    ///     Err(MixError::InvalidBox { index: 0, .. })
    /// ));
    /// ```
    pub fn with_boxes(
        partner: &[usize],
        lam: &[f32],
        boxes: &[Option<CutBox>],
        image: ImageSize,
    ) -> Result<Self> {
        Self::build(partner, lam, Some(boxes), Some((image.height, image.width)))
    }

    /// A CutMix plan from boxes, λ set from each box as the sampler sets it: every sample `i`
    /// pastes `boxes[i]` from `partner[i]` and keeps the weight `λ_i = 1 − area_i/(H·W)` of the
    /// pixels it keeps (timm's `correct_lam`, `timm/data/mixup.py` `cutmix_bbox_and_lam`; fastai's
    /// and torchvision's CutMix compute λ the same way). An empty box keeps λ = 1.
    ///
    /// # Errors
    /// [`MixError::EmptyShape`] for an image with no pixels; [`MixError::LengthMismatch`]
    /// unless `boxes` has one entry per partner; [`MixError::PartnerOutOfRange`];
    /// [`MixError::InvalidBox`] for a box reversed or past `height × width`;
    /// [`MixError::SizeOverflow`] past `u32::MAX` samples.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{CutBox, ImageSize, MixPlan};
    /// // A 2×2 box of a 4×4 image: sample 0 keeps 12 of its 16 pixels, so λ = 0.75.
    /// let b = CutBox { y0: 0, y1: 2, x0: 0, x1: 2 };
    /// let image = ImageSize { height: 4, width: 4 };
    /// let plan = MixPlan::from_boxes(&[1, 0], &[b, CutBox::default()], image)?;
    /// assert_eq!((plan.sample(0).lam, plan.sample(1).lam), (0.75, 1.0));
    /// assert_eq!(plan.sample(0).cut, Some(b));
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn from_boxes(partner: &[usize], boxes: &[CutBox], image: ImageSize) -> Result<Self> {
        let ImageSize { height, width } = image;
        if height == 0 || width == 0 {
            return Err(MixError::EmptyShape {
                what: "image height and width",
            });
        }
        crate::error::check_len("boxes", partner.len(), boxes.len())?;
        for (i, b) in boxes.iter().enumerate() {
            b.check(i, height, width)?;
        }
        let lam: Vec<f32> = boxes
            .iter()
            .map(|b| (b.kept_fraction(height, width) as f32).clamp(0.0, 1.0))
            .collect();
        let cuts: Vec<Option<CutBox>> = boxes.iter().copied().map(Some).collect();
        Self::build(partner, &lam, Some(&cuts), Some((height, width)))
    }

    fn build(
        partner: &[usize],
        lam: &[f32],
        boxes: Option<&[Option<CutBox>]>,
        image: Option<(usize, usize)>,
    ) -> Result<Self> {
        let batch = partner.len();
        crate::error::check_len("lam", batch, lam.len())?;
        if let Some(b) = boxes {
            crate::error::check_len("boxes", batch, b.len())?;
        }
        if batch > u32::MAX as usize {
            return Err(MixError::SizeOverflow { what: "batch" });
        }
        let mut entries = Vec::with_capacity(batch);
        for (i, (&p, &l)) in partner.iter().zip(lam).enumerate() {
            if p >= batch {
                return Err(MixError::PartnerOutOfRange {
                    index: i,
                    partner: p,
                    batch,
                });
            }
            if !(l.is_finite() && (0.0..=1.0).contains(&l)) {
                return Err(MixError::InvalidLambda { index: i, value: l });
            }
            let cut = boxes.and_then(|b| b[i]);
            if let (Some(cb), Some((h, w))) = (cut, image) {
                cb.check(i, h, w)?;
            }
            entries.push(PlanEntry::new(p, l, cut));
        }
        let mut plan = Self {
            entries,
            image: None,
            involution: false,
            targets: None,
        };
        plan.finish(image);
        Ok(plan)
    }

    /// Derives the cached facts (image size kept only when a box exists; involution flag).
    pub(crate) fn finish(&mut self, image: Option<(usize, usize)>) {
        self.image = image.filter(|_| self.entries.iter().any(|e| e.cut != 0));
        self.involution = self
            .entries
            .iter()
            .enumerate()
            .all(|(i, e)| self.entries[e.partner as usize].partner as usize == i);
    }

    /// Batch size.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::MixPlan;
    /// assert_eq!(MixPlan::identity(5).unwrap().len(), 5);
    /// ```
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the plan covers no samples.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::MixPlan;
    /// assert!(MixPlan::identity(0).unwrap().is_empty());
    /// assert!(!MixPlan::identity(1).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sample `i`'s partner, λ and box. Panics if `i >= len()`, like slice indexing.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::MixPlan;
    /// let plan = MixPlan::from_parts(&[1, 0], &[0.6, 0.9]).unwrap();
    /// let s = plan.sample(1);
    /// assert_eq!((s.partner, s.lam, s.cut), (0, 0.9, None));
    /// ```
    pub fn sample(&self, i: usize) -> SampleMix {
        self.entries[i].sample()
    }

    /// Every sample's entry, in batch order.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::MixPlan;
    /// let plan = MixPlan::from_parts(&[1, 0, 2], &[0.6, 0.9, 1.0]).unwrap();
    /// let lams: Vec<f32> = plan.samples().map(|s| s.lam).collect();
    /// assert_eq!(lams, [0.6, 0.9, 1.0]);
    /// ```
    pub fn samples(&self) -> impl ExactSizeIterator<Item = SampleMix> + '_ {
        self.entries.iter().map(PlanEntry::sample)
    }

    /// The image size the CutMix boxes were drawn for, if the plan has any box.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{ImageSize, MixConfig, Sampler};
    /// let size = ImageSize { height: 32, width: 24 };
    /// let cutmix = Sampler::new(MixConfig::fastai_v2_cutmix(10), 0).unwrap();
    /// assert_eq!(cutmix.plan_images(0, 8, size).unwrap().image_size(), Some(size));
    /// let mixup = Sampler::new(MixConfig::timm(10), 0).unwrap();
    /// assert_eq!(mixup.plan_images(0, 8, size).unwrap().image_size(), None);
    /// ```
    pub fn image_size(&self) -> Option<ImageSize> {
        self.image
            .map(|(height, width)| ImageSize { height, width })
    }

    /// The soft-target spec (classes, label smoothing) of the config the plan was drawn with;
    /// `None` for a hand-built plan.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, MixPlan, Sampler, TargetSpec};
    /// let plan = Sampler::new(MixConfig::timm(1000), 0)?.plan(0, 8)?;
    /// assert_eq!(plan.targets(), Some(&TargetSpec::new(1000, 0.1)?));
    /// assert_eq!(MixPlan::identity(8)?.targets(), None);
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn targets(&self) -> Option<&TargetSpec> {
        self.targets.as_ref()
    }

    /// The plan bound to another soft-target spec, or to none (`None`: any spec is accepted,
    /// as for a hand-built plan). For a second head trained on other labels with the same
    /// mixing (a coarse and a fine label set, say): the plan's partners, λ and boxes are kept.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{reference, MixConfig, MixError, Sampler, TargetSpec};
    /// let plan = Sampler::new(MixConfig::timm(1000), 0)?.plan(0, 2)?;
    /// let coarse = TargetSpec::new(10, 0.0)?;
    /// let err = reference::soft_targets(&plan, &coarse, &[3u32, 7]).unwrap_err();
    /// assert!(matches!(err, MixError::InvalidArgument { what: "spec", .. }));
    /// let coarse_plan = plan.clone().with_targets(Some(coarse));
    /// assert!(reference::soft_targets(&coarse_plan, &coarse, &[3u32, 7]).is_ok());
    /// # Ok::<(), MixError>(())
    /// ```
    pub fn with_targets(mut self, targets: Option<TargetSpec>) -> Self {
        self.targets = targets;
        self
    }

    /// Whether `partner(partner(i)) == i` for every sample, which in-place mixing needs.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::MixPlan;
    /// assert!(MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap().is_involution());
    /// assert!(!MixPlan::from_parts(&[1, 2, 0], &[0.5; 3]).unwrap().is_involution());
    /// ```
    pub fn is_involution(&self) -> bool {
        self.involution
    }

    /// Whether any sample is CutMix.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{CutBox, ImageSize, MixPlan};
    /// assert!(!MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap().has_cutmix());
    /// let b = CutBox { y0: 0, y1: 1, x0: 0, x1: 1 };
    /// let image = ImageSize { height: 2, width: 2 };
    /// let plan = MixPlan::with_boxes(&[1, 0], &[0.75, 0.75], &[Some(b), Some(b)], image).unwrap();
    /// assert!(plan.has_cutmix());
    /// ```
    pub fn has_cutmix(&self) -> bool {
        self.image.is_some()
    }

    /// The packed entries, as kernels read them.
    // Used by the CPU and CUDA paths; the bare crate (no features) has neither.
    #[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
    pub(crate) fn entries(&self) -> &[PlanEntry] {
        &self.entries
    }

    /// Fails unless `what`'s batch (`data` samples) equals the plan's.
    pub(crate) fn check_batch(&self, what: &'static str, data: usize) -> Result<()> {
        if data == self.len() {
            Ok(())
        } else {
            Err(MixError::BatchMismatch {
                what,
                plan: self.len(),
                data,
            })
        }
    }

    /// Fails unless the plan's boxes (if any) were drawn for `height × width`.
    pub(crate) fn check_image(&self, height: usize, width: usize) -> Result<()> {
        match self.image {
            Some(p) if p != (height, width) => Err(MixError::ImageSizeMismatch {
                plan: p,
                data: (height, width),
            }),
            _ => Ok(()),
        }
    }

    /// Fails unless `spec` is the spec the plan was drawn for (any spec for a hand-built plan).
    pub(crate) fn check_targets(&self, spec: &TargetSpec) -> Result<()> {
        match &self.targets {
            Some(drawn) if drawn != spec => Err(MixError::InvalidArgument {
                what: "spec",
                reason: format!(
                    "the plan was drawn for {}; the spec says {}: build the spec from the \
                     sampler's config (MixConfig::ce_spec, bce_spec, target_spec)",
                    drawn.describe(),
                    spec.describe()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Fails unless the plan is an involution (for in-place mixing).
    // Used by the CPU and CUDA paths; the bare crate (no features) has neither.
    #[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
    pub(crate) fn check_involution(&self) -> Result<()> {
        if self.involution {
            return Ok(());
        }
        let (index, e) = self
            .entries
            .iter()
            .enumerate()
            .find(|(i, e)| self.entries[e.partner as usize].partner as usize != *i)
            .expect("a non-involution plan has a witness");
        Err(MixError::NotInvolution {
            index,
            partner: e.partner as usize,
        })
    }
}

impl fmt::Display for MixPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:>6} {:>8} {:>8}  kind", "sample", "partner", "lambda")?;
        for (i, s) in self.samples().enumerate() {
            write!(f, "{i:>6} {:>8} {:>8.4}  ", s.partner, s.lam)?;
            match s.cut {
                Some(b) if s.partner != i => {
                    writeln!(f, "cutmix rows {}..{} cols {}..{}", b.y0, b.y1, b.x0, b.x1)?
                }
                None if s.partner != i && s.lam < 1.0 => writeln!(f, "mixup")?,
                _ => writeln!(f, "unmixed")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The image size `height × width` (tests/common's `image`).
    pub(crate) fn image(height: usize, width: usize) -> ImageSize {
        ImageSize { height, width }
    }

    /// The CutMix box of pixel `rows` × `cols`, half-open (tests/common's `cut`).
    pub(crate) fn cut(rows: std::ops::Range<u32>, cols: std::ops::Range<u32>) -> CutBox {
        CutBox {
            y0: rows.start,
            y1: rows.end,
            x0: cols.start,
            x1: cols.end,
        }
    }

    #[test]
    fn entry_is_32_bytes() {
        assert_eq!(std::mem::size_of::<PlanEntry>(), 32);
    }

    #[test]
    fn from_parts_validates() {
        assert!(matches!(
            MixPlan::from_parts(&[0, 2], &[1.0, 1.0]),
            Err(MixError::PartnerOutOfRange {
                index: 1,
                partner: 2,
                batch: 2
            })
        ));
        assert!(matches!(
            MixPlan::from_parts(&[0, 1], &[1.0]),
            Err(MixError::LengthMismatch { what: "lam", .. })
        ));
        for bad in [f32::NAN, f32::INFINITY, -0.1, 1.1] {
            assert!(matches!(
                MixPlan::from_parts(&[1, 0], &[0.5, bad]),
                Err(MixError::InvalidLambda { index: 1, .. })
            ));
        }
        let b = cut(0..5, 0..2);
        assert!(matches!(
            MixPlan::with_boxes(&[1, 0], &[0.5, 0.5], &[Some(b), None], image(4, 4)),
            Err(MixError::InvalidBox { index: 0, .. })
        ));
        // A box whose rows start after they end.
        let rev = CutBox {
            y0: 3,
            ..cut(0..1, 0..2)
        };
        assert!(matches!(
            MixPlan::with_boxes(&[1, 0], &[0.5, 0.5], &[None, Some(rev)], image(4, 4)),
            Err(MixError::InvalidBox { index: 1, .. })
        ));
    }

    #[test]
    fn involution_is_detected() {
        assert!(
            MixPlan::from_parts(&[1, 0, 2], &[0.5, 0.5, 1.0])
                .unwrap()
                .is_involution()
        );
        let cyc = MixPlan::from_parts(&[1, 2, 0], &[0.5; 3]).unwrap();
        assert!(!cyc.is_involution());
        assert!(matches!(
            cyc.check_involution(),
            Err(MixError::NotInvolution {
                index: 0,
                partner: 1
            })
        ));
        assert!(MixPlan::identity(0).unwrap().is_involution());
    }

    #[test]
    fn from_boxes_sets_lambda_to_the_kept_area() {
        let b = cut(1..3, 0..3);
        // 6 of 12 pixels pasted: λ = 0.5; the empty box keeps everything.
        let p = MixPlan::from_boxes(&[2, 2, 0], &[b, CutBox::default(), b], image(3, 4)).unwrap();
        let lams: Vec<f32> = p.samples().map(|s| s.lam).collect();
        assert_eq!(lams, [0.5, 1.0, 0.5]);
        assert!(p.samples().all(|s| s.cut.is_some()));
        assert_eq!(p.image_size(), Some(image(3, 4)));
        assert_eq!(p.targets(), None);
        assert!(matches!(
            MixPlan::from_boxes(&[1, 0], &[b, b], image(2, 4)),
            Err(MixError::InvalidBox { index: 0, .. })
        ));
        assert!(matches!(
            MixPlan::from_boxes(&[1, 0], &[b], image(3, 4)),
            Err(MixError::LengthMismatch { what: "boxes", .. })
        ));
        assert!(matches!(
            MixPlan::from_boxes(&[1, 0], &[b, b], image(0, 4)),
            Err(MixError::EmptyShape { .. })
        ));
        assert!(matches!(
            MixPlan::from_boxes(&[1, 5], &[b, b], image(3, 4)),
            Err(MixError::PartnerOutOfRange { index: 1, .. })
        ));
    }

    #[test]
    fn image_size_kept_only_with_boxes() {
        let b = cut(1..3, 0..2);
        let p =
            MixPlan::with_boxes(&[1, 0], &[0.75, 0.75], &[Some(b), Some(b)], image(4, 4)).unwrap();
        assert_eq!(p.image_size(), Some(image(4, 4)));
        assert!(p.check_image(4, 4).is_ok());
        assert!(matches!(
            p.check_image(4, 5),
            Err(MixError::ImageSizeMismatch { .. })
        ));
        let q = MixPlan::with_boxes(&[1, 0], &[0.75, 0.75], &[None, None], image(4, 4)).unwrap();
        assert_eq!(q.image_size(), None);
        assert_eq!(b.area(), 4);
        assert_eq!(b.kept_fraction(4, 4), 0.75);
    }
}
