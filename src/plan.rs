//! The plan: for each sample, its partner, its own weight λ and, for CutMix, the pasted box.

use std::fmt;

use crate::error::{MixError, Result};

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
/// use mixup_kernels::{CutBox, MixPlan, SampleMix};
/// let b = CutBox { y0: 0, y1: 1, x0: 0, x1: 2 };
/// let plan = MixPlan::with_boxes(&[1, 0], &[0.5, 0.8], &[Some(b), None], 2, 2).unwrap();
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
/// [`MixPlan::from_parts`] / [`MixPlan::with_boxes`].
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
}

impl MixPlan {
    /// A plan that leaves each of `batch` samples unmixed (partner itself, λ = 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{reference, Layout, MixPlan};
    /// let plan = MixPlan::identity(2).unwrap();
    /// assert!(plan.samples().all(|s| s.lam == 1.0));
    /// let x = [1.0f32, 2.0, 3.0, 4.0];
    /// assert_eq!(reference::mix(&plan, &Layout::Rows(2), &x).unwrap(), [1.0, 2.0, 3.0, 4.0]);
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

    /// A plan with CutMix boxes: `boxes[i] = Some(b)` pastes `b` from the partner into sample `i`
    /// (λ then weighs only the labels: it is not recomputed from the box), `None` lerps with λ.
    /// Boxes are checked against `height × width`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{CutBox, MixError, MixPlan};
    /// let b = CutBox { y0: 0, y1: 2, x0: 0, x1: 2 };
    /// // Sample 0 pastes a 2×2 box of sample 1 into a 4×4 image; λ = 0.75 weighs the labels.
    /// let plan = MixPlan::with_boxes(&[1, 0], &[0.75, 1.0], &[Some(b), None], 4, 4).unwrap();
    /// assert_eq!(plan.image_size(), Some((4, 4)));
    /// let too_big = CutBox { y0: 0, y1: 5, x0: 0, x1: 2 };
    /// assert!(matches!(
    ///     MixPlan::with_boxes(&[1, 0], &[0.75, 1.0], &[Some(too_big), None], 4, 4),
    ///     Err(MixError::InvalidBox { index: 0, .. })
    /// ));
    /// ```
    pub fn with_boxes(
        partner: &[usize],
        lam: &[f32],
        boxes: &[Option<CutBox>],
        height: usize,
        width: usize,
    ) -> Result<Self> {
        Self::build(partner, lam, Some(boxes), Some((height, width)))
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

    /// `(height, width)` the CutMix boxes were drawn for, if the plan has any box.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Sampler};
    /// let cutmix = Sampler::new(MixConfig::fastai_v2_cutmix(10), 0).unwrap();
    /// assert_eq!(cutmix.plan(0, 0, 8, (32, 24)).unwrap().image_size(), Some((32, 24)));
    /// let mixup = Sampler::new(MixConfig::timm(10), 0).unwrap();
    /// assert_eq!(mixup.plan(0, 0, 8, (32, 24)).unwrap().image_size(), None);
    /// ```
    pub fn image_size(&self) -> Option<(usize, usize)> {
        self.image
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
    /// use mixup_kernels::{CutBox, MixPlan};
    /// assert!(!MixPlan::from_parts(&[1, 0], &[0.5, 0.5]).unwrap().has_cutmix());
    /// let b = CutBox { y0: 0, y1: 1, x0: 0, x1: 1 };
    /// let plan = MixPlan::with_boxes(&[1, 0], &[0.75, 0.75], &[Some(b), Some(b)], 2, 2).unwrap();
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

    /// Fails unless the data's batch equals the plan's.
    pub(crate) fn check_batch(&self, data: usize) -> Result<()> {
        if data == self.len() {
            Ok(())
        } else {
            Err(MixError::BatchMismatch {
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
mod tests {
    use super::*;

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
        let b = CutBox {
            y0: 0,
            y1: 5,
            x0: 0,
            x1: 2,
        };
        assert!(matches!(
            MixPlan::with_boxes(&[1, 0], &[0.5, 0.5], &[Some(b), None], 4, 4),
            Err(MixError::InvalidBox { index: 0, .. })
        ));
        let rev = CutBox {
            y0: 3,
            y1: 1,
            x0: 0,
            x1: 2,
        };
        assert!(matches!(
            MixPlan::with_boxes(&[1, 0], &[0.5, 0.5], &[None, Some(rev)], 4, 4),
            Err(MixError::InvalidBox { index: 1, .. })
        ));
    }

    #[test]
    fn involution_is_detected() {
        assert!(MixPlan::from_parts(&[1, 0, 2], &[0.5, 0.5, 1.0])
            .unwrap()
            .is_involution());
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
    fn image_size_kept_only_with_boxes() {
        let b = CutBox {
            y0: 1,
            y1: 3,
            x0: 0,
            x1: 2,
        };
        let p = MixPlan::with_boxes(&[1, 0], &[0.75, 0.75], &[Some(b), Some(b)], 4, 4).unwrap();
        assert_eq!(p.image_size(), Some((4, 4)));
        assert!(p.check_image(4, 4).is_ok());
        assert!(matches!(
            p.check_image(4, 5),
            Err(MixError::ImageSizeMismatch { .. })
        ));
        let q = MixPlan::with_boxes(&[1, 0], &[0.75, 0.75], &[None, None], 4, 4).unwrap();
        assert_eq!(q.image_size(), None);
        assert_eq!(b.area(), 4);
        assert_eq!(b.kept_fraction(4, 4), 0.75);
    }
}
