//! The seeded sampler: (config, seed, rank, step, batch size, image size) → [`MixPlan`].
//!
//! Each plan is drawn from its own ChaCha8 stream keyed by `(seed, rank, step)`, so the plan
//! depends on nothing else: not on a global generator, the calling thread, the data-loader
//! worker, or the order in which steps are asked for.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

use crate::bbox::{draw_box, draw_minmax_box, minmax_range};
use crate::config::{MixConfig, Mode, PartnerRule, TargetSpec};
use crate::error::{MixError, Result};
use crate::plan::{CutBox, MixPlan, PlanEntry};

/// The size of the images of a batch, in pixels: what CutMix boxes are drawn for.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{ImageSize, MemoryFormat};
/// let size = ImageSize { height: 224, width: 160 };
/// assert_eq!(MemoryFormat::ChannelsFirst.image_size(&[32, 3, 224, 160])?, size);
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageSize {
    /// Height H, in pixels.
    pub height: usize,
    /// Width W, in pixels.
    pub width: usize,
}

/// Draws [`MixPlan`]s from a validated [`MixConfig`], a seed and a data-parallel rank.
///
/// A plan is a pure function of `(config, seed, rank, step, batch_size, image size)`.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{MixConfig, Sampler};
/// let sampler = Sampler::new(MixConfig::fastai_v2_mixup(10), 42)?;
/// let plan = sampler.plan(7, 8)?;                      // step 7, 8 samples
/// assert_eq!(plan, sampler.plan(7, 8)?);               // same arguments, same plan
/// assert!(plan.samples().all(|s| s.lam >= 0.5));       // fastai's max rule
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    config: MixConfig,
    targets: TargetSpec,
    seed: u64,
    rank: u32,
    mixup: Option<Beta<f64>>,
    cutmix: Option<Beta<f64>>,
}

/// One mixing decision, shared by a batch, a pair or a sample depending on the mode.
#[derive(Debug, Clone, Copy)]
struct Decision {
    lam: f32,
    cut: Option<CutBox>,
}

const UNMIXED: Decision = Decision {
    lam: 1.0,
    cut: None,
};

fn beta(alpha: f64, field: &'static str) -> Result<Option<Beta<f64>>> {
    if alpha == 0.0 {
        return Ok(None);
    }
    Beta::new(alpha, alpha)
        .map(Some)
        .map_err(|e| MixError::InvalidConfig {
            field,
            reason: format!("Beta({alpha}, {alpha}) is not a distribution: {e}"),
        })
}

/// SplitMix64: a bijective mixer, so distinct inputs give distinct, well-spread keys.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator for one plan. The 256-bit key chains SplitMix64 over seed, rank and step.
fn stream(seed: u64, rank: u32, step: u64) -> ChaCha8Rng {
    let a = splitmix64(seed);
    let b = splitmix64(a ^ u64::from(rank).wrapping_mul(0xD605_BBB5_8C8A_BBDB));
    let c = splitmix64(b ^ step);
    let d = splitmix64(c ^ 0x6D69_7875_702D_6B65); // "mixup-ke"
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([a, b, c, d]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

impl Sampler {
    /// Validates `config` and builds a sampler for rank 0 (see [`Sampler::with_rank`]).
    ///
    /// # Errors
    /// [`MixError::InvalidConfig`] naming the first bad field of `config`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, MixError, Sampler};
    /// assert!(Sampler::new(MixConfig::timm(10), 0).is_ok());
    /// let bad = MixConfig { num_classes: 0, ..MixConfig::timm(10) };
    /// assert!(matches!(Sampler::new(bad, 0), Err(MixError::InvalidConfig { field: "num_classes", .. })));
    /// ```
    pub fn new(config: MixConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let targets = config.target_spec()?;
        let mixup = beta(config.mixup_alpha, "mixup_alpha")?;
        let cutmix = beta(config.effective_cutmix_alpha(), "cutmix_alpha")?;
        Ok(Self {
            config,
            targets,
            seed,
            rank: 0,
            mixup,
            cutmix,
        })
    }

    /// The sampler of data-parallel process `rank` (0 by default): each rank draws its own
    /// plans from the same seed, so ranks do not mix their shards alike.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Sampler};
    /// let rank0 = Sampler::new(MixConfig::timm(10), 7)?;
    /// let rank1 = rank0.clone().with_rank(1);
    /// assert_eq!(rank1.rank(), 1);
    /// assert_ne!(rank0.plan(100, 16)?, rank1.plan(100, 16)?);
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn with_rank(mut self, rank: u32) -> Self {
        self.rank = rank;
        self
    }

    /// The configuration.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Sampler};
    /// let sampler = Sampler::new(MixConfig::timm(10), 0).unwrap();
    /// assert_eq!(sampler.config().num_classes, 10);
    /// ```
    pub fn config(&self) -> &MixConfig {
        &self.config
    }

    /// The seed.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Sampler};
    /// assert_eq!(Sampler::new(MixConfig::timm(10), 42).unwrap().seed(), 42);
    /// ```
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The data-parallel rank.
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Sampler};
    /// assert_eq!(Sampler::new(MixConfig::timm(10), 42).unwrap().rank(), 0);
    /// ```
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Draws the plan of training `step` for a batch of `batch_size` samples that are not
    /// images, or images mixed by MixUp only (no CutMix box to draw).
    ///
    /// # Errors
    /// [`MixError::InvalidArgument`] (`image_size`) when the config enables CutMix: its boxes
    /// need the image size, use [`Sampler::plan_images`]; [`MixError::SizeOverflow`] past
    /// `u32::MAX` samples.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, MixError, Sampler};
    /// let sampler = Sampler::new(MixConfig::timm(10), 7)?;
    /// let plan = sampler.plan(100, 16)?;
    /// assert_eq!(plan.len(), 16);
    /// // Another step draws another plan; the same arguments the same one.
    /// assert_ne!(plan, sampler.plan(101, 16)?);
    /// assert_eq!(plan, sampler.plan(100, 16)?);
    /// // CutMix needs the image size.
    /// let cutmix = Sampler::new(MixConfig::fastai_v2_cutmix(10), 7)?;
    /// let err = cutmix.plan(0, 16).unwrap_err();
    /// assert!(err.to_string().contains("plan_images"));
    /// # Ok::<(), MixError>(())
    /// ```
    pub fn plan(&self, step: u64, batch_size: usize) -> Result<MixPlan> {
        let mut plan = MixPlan::default();
        self.plan_into(step, batch_size, None, &mut plan)?;
        Ok(plan)
    }

    /// Draws the plan of training `step` for a batch of `batch_size` images of `image` pixels
    /// (the size CutMix boxes are drawn for; a MixUp-only config ignores it).
    ///
    /// # Errors
    /// [`MixError::EmptyShape`] for an image without pixels and [`MixError::SizeOverflow`]
    /// for a side past `u32::MAX` (when CutMix is enabled); [`MixError::InvalidArgument`] when
    /// `cutmix_minmax` leaves no box side for this size; [`MixError::SizeOverflow`] past
    /// `u32::MAX` samples.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{ImageSize, MixConfig, MixError, Sampler};
    /// let sampler = Sampler::new(MixConfig::fastai_v2_cutmix(10), 7)?;
    /// let plan = sampler.plan_images(0, 16, ImageSize { height: 32, width: 32 })?;
    /// assert!(plan.has_cutmix()); // every sample not its own partner pastes a box
    /// assert_eq!(plan.image_size(), Some(ImageSize { height: 32, width: 32 }));
    /// let empty = ImageSize { height: 0, width: 0 };
    /// assert!(matches!(sampler.plan_images(0, 16, empty), Err(MixError::EmptyShape { .. })));
    /// # Ok::<(), MixError>(())
    /// ```
    pub fn plan_images(&self, step: u64, batch_size: usize, image: ImageSize) -> Result<MixPlan> {
        let mut plan = MixPlan::default();
        self.plan_into(step, batch_size, Some(image), &mut plan)?;
        Ok(plan)
    }

    /// As [`Sampler::plan`] (`image: None`) or [`Sampler::plan_images`] (`Some(size)`), reusing
    /// `plan`'s storage (no allocation once it is large enough). On error `plan` is left
    /// unchanged.
    ///
    /// # Errors
    /// Those of [`Sampler::plan`] and [`Sampler::plan_images`].
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, MixPlan, Sampler};
    /// let sampler = Sampler::new(MixConfig::timm(10), 7)?;
    /// let mut plan = MixPlan::default();
    /// for step in 0..3 {
    ///     sampler.plan_into(step, 32, None, &mut plan)?;
    ///     assert_eq!(plan, sampler.plan(step, 32)?);
    /// }
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn plan_into(
        &self,
        step: u64,
        batch_size: usize,
        image: Option<ImageSize>,
        plan: &mut MixPlan,
    ) -> Result<()> {
        let cfg = &self.config;
        let batch = batch_size;
        if batch > u32::MAX as usize {
            return Err(MixError::SizeOverflow { what: "batch" });
        }
        let mut minmax = None;
        let mut size = (0, 0);
        if self.cutmix.is_some() {
            let Some(ImageSize { height, width }) = image else {
                return Err(MixError::InvalidArgument {
                    what: "image_size",
                    reason: "CutMix is enabled (cutmix_alpha or cutmix_minmax), and its boxes \
                             need the image size: call plan_images(step, batch_size, \
                             ImageSize { height, width })"
                        .into(),
                });
            };
            if height == 0 || width == 0 {
                return Err(MixError::EmptyShape {
                    what: "image height and width (CutMix is enabled)",
                });
            }
            if height > u32::MAX as usize || width > u32::MAX as usize {
                return Err(MixError::SizeOverflow { what: "image size" });
            }
            if let Some(mm) = cfg.cutmix_minmax {
                minmax = Some((
                    minmax_range(height, mm, "image height")?,
                    minmax_range(width, mm, "image width")?,
                ));
            }
            size = (height, width);
        }

        let mut rng = stream(self.seed, self.rank, step);
        let entries = &mut plan.entries;
        entries.clear();
        entries.extend((0..batch).map(|i| PlanEntry::new(i, 1.0, None)));
        self.draw_partners(&mut rng, entries);

        let decide = |rng: &mut ChaCha8Rng| self.decide(rng, size, minmax);
        match cfg.mode {
            Mode::Batch => {
                let d = decide(&mut rng);
                for e in entries.iter_mut() {
                    apply(e, d);
                }
            }
            // Pairs draw in the order of their first member, so the plan is independent of how
            // the pair is listed.
            Mode::Pair => {
                for i in 0..batch {
                    let p = entries[i].partner as usize;
                    if p > i {
                        let d = decide(&mut rng);
                        apply(&mut entries[i], d);
                        apply(&mut entries[p], d);
                    }
                }
            }
            Mode::Elem => {
                for e in entries.iter_mut() {
                    let d = decide(&mut rng);
                    apply(e, d);
                }
            }
        }
        // A sample that is its own partner is unmixed whatever was drawn.
        for (i, e) in entries.iter_mut().enumerate() {
            if e.partner as usize == i {
                *e = PlanEntry::new(i, 1.0, None);
            }
        }
        plan.finish(self.cutmix.is_some().then_some(size));
        plan.targets = Some(self.targets);
        Ok(())
    }

    fn draw_partners(&self, rng: &mut ChaCha8Rng, entries: &mut [PlanEntry]) {
        let batch = entries.len();
        match self.config.partner {
            PartnerRule::Flip => {
                for (i, e) in entries.iter_mut().enumerate() {
                    e.partner = (batch - 1 - i) as u32;
                }
            }
            PartnerRule::Roll => {
                // torchvision's `batch.roll(1, 0)`: sample i meets the sample before it.
                for (i, e) in entries.iter_mut().enumerate() {
                    e.partner = ((i + batch - 1) % batch) as u32;
                }
            }
            PartnerRule::Permutation => {
                // Fisher–Yates over the partner column itself: no allocation per step.
                for i in (1..batch).rev() {
                    let j = rng.random_range(0..=i);
                    let (a, b) = (entries[i].partner, entries[j].partner);
                    entries[i].partner = b;
                    entries[j].partner = a;
                }
            }
            PartnerRule::RandomPairs => {
                // Shuffle 0..B in the (otherwise unused) padding column, then pair neighbours of
                // the shuffle. With an odd batch the last one keeps itself as partner.
                for (i, e) in entries.iter_mut().enumerate() {
                    e.pad = i as u32;
                }
                for i in (1..batch).rev() {
                    let j = rng.random_range(0..=i);
                    let (a, b) = (entries[i].pad, entries[j].pad);
                    entries[i].pad = b;
                    entries[j].pad = a;
                }
                for k in 0..batch / 2 {
                    let (a, b) = (entries[2 * k].pad, entries[2 * k + 1].pad);
                    entries[a as usize].partner = b;
                    entries[b as usize].partner = a;
                }
                for e in entries.iter_mut() {
                    e.pad = 0;
                }
            }
        }
    }

    /// One decision: applied with `prob`; CutMix with `switch_prob` when both are enabled;
    /// λ from the chosen Beta (max rule if asked); a box for CutMix; λ corrected to the box.
    fn decide(
        &self,
        rng: &mut ChaCha8Rng,
        (height, width): (usize, usize),
        minmax: Option<((usize, usize), (usize, usize))>,
    ) -> Decision {
        let cfg = &self.config;
        // Draw the coin even when prob is 1, so streams keep their shape across configs.
        let applied = rng.random::<f64>() < cfg.prob;
        let use_cut = match (&self.mixup, &self.cutmix) {
            (Some(_), Some(_)) => rng.random::<f64>() < cfg.switch_prob,
            (None, Some(_)) => true,
            _ => false,
        };
        let dist = if use_cut { &self.cutmix } else { &self.mixup };
        let Some(dist) = dist else { return UNMIXED };
        let mut lam: f64 = dist.sample(rng);
        if !lam.is_finite() {
            lam = 1.0;
        }
        if cfg.lam_max {
            lam = lam.max(1.0 - lam);
        }
        if !applied {
            return UNMIXED;
        }
        if !use_cut {
            return Decision {
                lam: lam as f32,
                cut: None,
            };
        }
        let cut = match minmax {
            Some((hr, wr)) => draw_minmax_box(rng, height, width, hr, wr),
            None => draw_box(rng, cfg.box_rule, height, width, lam),
        };
        if cfg.correct_lam || minmax.is_some() {
            lam = cut.kept_fraction(height, width);
        }
        Decision {
            lam: (lam as f32).clamp(0.0, 1.0),
            cut: Some(cut),
        }
    }
}

fn apply(e: &mut PlanEntry, d: Decision) {
    *e = PlanEntry::new(e.partner as usize, d.lam, d.cut);
}
