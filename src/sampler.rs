//! The seeded sampler: (config, seed, rank, step, batch, image size) → [`MixPlan`].
//!
//! Each plan is drawn from its own ChaCha8 stream keyed by `(seed, rank, step)`, so the plan
//! depends on nothing else: not on a global generator, the calling thread, the data-loader
//! worker, or the order in which steps are asked for.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};

use crate::bbox::{draw_box, draw_minmax_box, minmax_range};
use crate::config::{MixConfig, Mode, PartnerRule};
use crate::error::{MixError, Result};
use crate::plan::{CutBox, MixPlan, PlanEntry};

/// Draws [`MixPlan`]s from a validated [`MixConfig`] and a seed.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{MixConfig, Sampler};
/// let sampler = Sampler::new(MixConfig::fastai_v2_mixup(10), 42).unwrap();
/// let plan = sampler.plan(0, 7, 8, (32, 32)).unwrap();
/// assert_eq!(plan, sampler.plan(0, 7, 8, (32, 32)).unwrap()); // same arguments, same plan
/// assert!(plan.samples().all(|s| s.lam >= 0.5));              // fastai's max rule
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    config: MixConfig,
    seed: u64,
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
    /// Validates `config` and builds a sampler.
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
        let mixup = beta(config.mixup_alpha, "mixup_alpha")?;
        let cutmix = beta(config.effective_cutmix_alpha(), "cutmix_alpha")?;
        Ok(Self {
            config,
            seed,
            mixup,
            cutmix,
        })
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

    /// Draws the plan of data-parallel `rank` at training `step` for a batch of `batch` samples
    /// of `image = (height, width)` pixels. The image size is only used for CutMix boxes; pass
    /// `(1, 1)` for data that is not an image when CutMix is off.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, MixError, Sampler};
    /// let sampler = Sampler::new(MixConfig::timm(10), 7).unwrap();
    /// let plan = sampler.plan(0, 100, 16, (224, 224)).unwrap();
    /// assert_eq!(plan.len(), 16);
    /// // Another rank or step draws another plan; the same arguments the same one.
    /// assert_ne!(plan, sampler.plan(1, 100, 16, (224, 224)).unwrap());
    /// assert_eq!(plan, sampler.plan(0, 100, 16, (224, 224)).unwrap());
    /// // CutMix needs a real image size.
    /// let cutmix = Sampler::new(MixConfig::fastai_v2_cutmix(10), 7).unwrap();
    /// assert!(matches!(cutmix.plan(0, 0, 16, (0, 0)), Err(MixError::EmptyShape { .. })));
    /// ```
    pub fn plan(
        &self,
        rank: u32,
        step: u64,
        batch: usize,
        image: (usize, usize),
    ) -> Result<MixPlan> {
        let mut plan = MixPlan::default();
        self.plan_into(rank, step, batch, image, &mut plan)?;
        Ok(plan)
    }

    /// As [`Sampler::plan`], reusing `plan`'s storage (no allocation once it is large enough).
    /// On error `plan` is left unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, MixPlan, Sampler};
    /// let sampler = Sampler::new(MixConfig::timm(10), 7).unwrap();
    /// let mut plan = MixPlan::default();
    /// for step in 0..3 {
    ///     sampler.plan_into(0, step, 32, (1, 1), &mut plan).unwrap();
    ///     assert_eq!(plan, sampler.plan(0, step, 32, (1, 1)).unwrap());
    /// }
    /// ```
    pub fn plan_into(
        &self,
        rank: u32,
        step: u64,
        batch: usize,
        image: (usize, usize),
        plan: &mut MixPlan,
    ) -> Result<()> {
        let cfg = &self.config;
        if batch > u32::MAX as usize {
            return Err(MixError::SizeOverflow { what: "batch" });
        }
        let (height, width) = image;
        let mut minmax = None;
        if self.cutmix.is_some() {
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
        }

        let mut rng = stream(self.seed, rank, step);
        let entries = &mut plan.entries;
        entries.clear();
        entries.extend((0..batch).map(|i| PlanEntry::new(i, 1.0, None)));
        self.draw_partners(&mut rng, entries);

        let decide = |rng: &mut ChaCha8Rng| self.decide(rng, image, minmax);
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
        plan.finish(Some(image));
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
