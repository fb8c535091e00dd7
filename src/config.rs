//! What a user asks for: timm's `Mixup` arguments, fastai's max rule and partner choice.

use crate::error::{MixError, Result};

/// How λ (and the MixUp/CutMix choice) is shared across the batch (timm's `mode`).
///
/// # Examples
///
/// ```
/// use mixup_kernels::{MixConfig, Mode, Sampler};
/// // One λ per sample: with fastai's max rule every λ is at least 0.5, and they differ.
/// let cfg = MixConfig { mode: Mode::Elem, lam_max: true, ..MixConfig::timm(10) };
/// let plan = Sampler::new(cfg, 3).unwrap().plan(0, 8).unwrap();
/// let lams: Vec<f32> = plan.samples().map(|s| s.lam).collect();
/// assert!(lams.iter().all(|&l| l >= 0.5));
/// assert!(lams.iter().any(|&l| l != lams[0]));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One λ and one MixUp/CutMix choice (and one box) for the whole batch.
    Batch,
    /// One λ per pair `(i, partner(i))`; both samples of a pair share λ and the box. Needs an
    /// involution partner rule ([`PartnerRule::Flip`] or [`PartnerRule::RandomPairs`]).
    Pair,
    /// One λ, one choice and one box per sample.
    Elem,
}

/// Who mixes with whom.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{MixConfig, PartnerRule, Sampler};
/// // timm's flip: sample i mixes with sample B-1-i.
/// let plan = Sampler::new(MixConfig::timm(10), 0).unwrap().plan(0, 4).unwrap();
/// let partners: Vec<usize> = plan.samples().map(|s| s.partner).collect();
/// assert_eq!(partners, [3, 2, 1, 0]);
/// assert!(PartnerRule::Flip.is_involution() && !PartnerRule::Permutation.is_involution());
/// // torchvision's roll: sample i mixes with sample i-1.
/// let cfg = MixConfig { partner: PartnerRule::Roll, ..MixConfig::timm(10) };
/// let plan = Sampler::new(cfg, 0).unwrap().plan(0, 4).unwrap();
/// let partners: Vec<usize> = plan.samples().map(|s| s.partner).collect();
/// assert_eq!(partners, [3, 0, 1, 2]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartnerRule {
    /// timm: `partner(i) = B-1-i`. With an odd batch the middle sample is its own partner and is
    /// left unmixed (λ = 1), where timm rejects odd batches.
    Flip,
    /// fastai: a uniformly random permutation (`randperm`). Fixed points are possible; such a
    /// sample is left unmixed (λ = 1). Not an involution, so mixing is out of place.
    Permutation,
    /// A uniformly random perfect matching: `partner(partner(i)) == i`, no fixed points except
    /// one sample of an odd batch, left unmixed (λ = 1). Mixing can run in place.
    RandomPairs,
    /// torchvision v2's `MixUp`/`CutMix` (`torchvision/transforms/v2/_augment.py`): the batch
    /// rolled by one, `batch.roll(1, 0)`, so `partner(i) = (i + B − 1) mod B` (sample 0 mixes
    /// with sample B−1). Not an involution for B ≥ 3, so mixing is out of place. With one sample
    /// the sample is its own partner and is left unmixed.
    Roll,
}

impl PartnerRule {
    /// Whether every plan drawn with this rule satisfies `partner(partner(i)) == i`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::PartnerRule;
    /// assert!(PartnerRule::RandomPairs.is_involution());
    /// assert!(!PartnerRule::Permutation.is_involution()); // fastai's randperm
    /// ```
    pub const fn is_involution(self) -> bool {
        matches!(self, PartnerRule::Flip | PartnerRule::RandomPairs)
    }
}

/// Which formula turns λ and a center into a CutMix box.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{BoxRule, ImageSize, MixConfig, Sampler};
/// let cfg = MixConfig { box_rule: BoxRule::Fastai, ..MixConfig::fastai_v2_cutmix(10) };
/// let size = ImageSize { height: 32, width: 32 };
/// let plan = Sampler::new(cfg, 0).unwrap().plan_images(0, 4, size).unwrap();
/// // Every sample is CutMix; with `correct_lam` its λ is the share of pixels it keeps.
/// for s in plan.samples().filter(|s| s.cut.is_some()) {
///     let kept = s.cut.unwrap().kept_fraction(32, 32) as f32;
///     assert!((s.lam - kept).abs() < 1e-6);
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BoxRule {
    /// timm's `rand_bbox`: `cut = int(side·sqrt(1-λ))`, box `[c - cut//2, c + (cut+1)//2)`
    /// clipped to the image. See [`timm_rand_bbox`](crate::timm_rand_bbox).
    Timm,
    /// fastai v2 `CutMix.rand_bbox`: `cut = round(side·sqrt(1-λ))` (ties to even),
    /// box `[c - cut//2, c + cut//2)` clipped to the image.
    Fastai,
}

/// Mixing configuration. Field names and meanings follow timm's `Mixup`; `lam_max`, `partner`
/// and `box_rule` cover fastai. [`Default`] is timm's defaults with 1000 classes.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{MixConfig, Mode};
/// let cfg = MixConfig { mixup_alpha: 0.8, cutmix_alpha: 1.0, mode: Mode::Elem, ..MixConfig::timm(100) };
/// cfg.validate().unwrap();
/// assert!(cfg.cutmix_enabled());
/// assert_eq!(MixConfig::default(), MixConfig::timm(1000));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MixConfig {
    /// α of the MixUp `Beta(α, α)`; 0 disables MixUp.
    pub mixup_alpha: f64,
    /// α of the CutMix `Beta(α, α)`; 0 disables CutMix (unless `cutmix_minmax` is set).
    pub cutmix_alpha: f64,
    /// CutMix box sides drawn uniformly in `[min, max)` of the image side instead of from λ.
    /// As in timm, setting it enables CutMix with α = 1 and always corrects λ to the box.
    pub cutmix_minmax: Option<(f64, f64)>,
    /// Chance that mixing is applied (per batch in `Batch` mode, per pair or sample otherwise).
    pub prob: f64,
    /// Chance of CutMix instead of MixUp when both are enabled.
    pub switch_prob: f64,
    /// How λ is shared.
    pub mode: Mode,
    /// Recompute λ from the clipped box area: `λ = 1 - box_area / (H·W)`.
    pub correct_lam: bool,
    /// Label smoothing ε of the soft targets and the loss, in `[0, 1)`. The plans a sampler
    /// draws carry it (with `num_classes`) to the targets and the loss; build the loss spec with
    /// [`MixConfig::ce_spec`] / [`MixConfig::bce_spec`].
    pub label_smoothing: f64,
    /// Number of classes C.
    pub num_classes: usize,
    /// fastai's rule `λ = max(λ, 1-λ)`, applied to each drawn λ, so a sample always dominates
    /// its mix.
    pub lam_max: bool,
    /// Who mixes with whom.
    pub partner: PartnerRule,
    /// CutMix box formula.
    pub box_rule: BoxRule,
}

impl Default for MixConfig {
    fn default() -> Self {
        Self::timm(1000)
    }
}

/// The soft target shared by the target and loss operations, timm's `mixup_target`
/// (`timm/data/mixup.py`): `t = (1-ε)(λ e_a + (1-λ) e_b) + ε/C` for a sample of label `a`, its
/// partner's label `b`, its weight λ, C classes and label smoothing ε.
///
/// Built validated ([`TargetSpec::new`]); a [`MixPlan`](crate::MixPlan) drawn by a
/// [`Sampler`](crate::Sampler) remembers its config's spec, and the soft targets and losses
/// reject another one.
///
/// # Examples
///
/// ```
/// use mixup_kernels::{reference, MixPlan, TargetSpec};
/// let spec = TargetSpec::new(4, 0.2)?;
/// let plan = MixPlan::from_parts(&[1, 0], &[0.75, 0.75])?;
/// let t = reference::soft_targets(&plan, &spec, &[0u32, 3])?;
/// // Row 0: 0.8·0.75 + 0.05 at class 0, 0.8·0.25 + 0.05 at class 3, 0.05 elsewhere.
/// let want = [0.65, 0.05, 0.05, 0.25];
/// assert!(t[..4].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12));
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetSpec {
    num_classes: usize,
    label_smoothing: f64,
}

impl TargetSpec {
    /// A spec for `num_classes` classes (C ≥ 1, at most `u32::MAX`) with label smoothing
    /// `label_smoothing` (ε in `[0, 1)`, timm's `label_smoothing`).
    ///
    /// # Errors
    /// [`MixError::EmptyShape`] (`num_classes`) for 0 classes, [`MixError::SizeOverflow`] past
    /// `u32::MAX`, [`MixError::InvalidArgument`] (`label_smoothing`) for ε outside `[0, 1)` or
    /// NaN.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixError, TargetSpec};
    /// assert_eq!(TargetSpec::new(10, 0.1)?.num_classes(), 10);
    /// assert!(matches!(TargetSpec::new(0, 0.1), Err(MixError::EmptyShape { .. })));
    /// assert!(matches!(
    ///     TargetSpec::new(10, 1.0),
    ///     Err(MixError::InvalidArgument { what: "label_smoothing", .. })
    /// ));
    /// # Ok::<(), MixError>(())
    /// ```
    pub fn new(num_classes: usize, label_smoothing: f64) -> Result<Self> {
        let spec = Self {
            num_classes,
            label_smoothing,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Number of classes C.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Label smoothing ε, in `[0, 1)`.
    pub fn label_smoothing(&self) -> f64 {
        self.label_smoothing
    }

    /// Checks `num_classes ≥ 1` (and fits in `u32`) and `0 ≤ ε < 1`. Every spec that exists
    /// passes (the constructor runs it); the ops keep the call as their first check.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.num_classes == 0 {
            return Err(MixError::EmptyShape {
                what: "num_classes",
            });
        }
        if self.num_classes > u32::MAX as usize {
            return Err(MixError::SizeOverflow {
                what: "num_classes",
            });
        }
        if !(self.label_smoothing.is_finite() && (0.0..1.0).contains(&self.label_smoothing)) {
            return Err(MixError::InvalidArgument {
                what: "label_smoothing",
                reason: format!("must be in [0, 1), got {}", self.label_smoothing),
            });
        }
        Ok(())
    }

    /// `ε / C`, the weight every class receives (timm's `off_value`).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::TargetSpec;
    /// assert_eq!(TargetSpec::new(4, 0.2)?.off_value(), 0.05);
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn off_value(&self) -> f64 {
        self.label_smoothing / self.num_classes as f64
    }

    /// ε as the f32 the CPU and CUDA passes compute with.
    #[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
    pub(crate) fn smoothing_f32(&self) -> f32 {
        self.label_smoothing as f32
    }

    /// `ε / C` in f32, as the CPU and CUDA passes form it (`f32(ε) / C`).
    #[cfg_attr(not(any(feature = "cpu", mixup_cuda)), allow(dead_code))]
    pub(crate) fn off_f32(&self) -> f32 {
        self.smoothing_f32() / self.num_classes as f32
    }

    /// One line for error messages: "1000 classes with label_smoothing 0.1".
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} classes with label_smoothing {}",
            self.num_classes, self.label_smoothing
        )
    }
}

fn bad(field: &'static str, reason: String) -> MixError {
    MixError::InvalidConfig { field, reason }
}

fn check_prob(field: &'static str, p: f64) -> Result<()> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("must be a probability in [0, 1], got {p}"),
        ))
    }
}

fn check_alpha(field: &'static str, a: f64) -> Result<()> {
    if a.is_finite() && a >= 0.0 {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("must be > 0 to enable or 0 to disable, got {a}"),
        ))
    }
}

impl MixConfig {
    /// timm's `Mixup` defaults: MixUp α = 1, no CutMix, batch mode, flip partner, λ corrected,
    /// smoothing 0.1.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Mode, PartnerRule};
    /// let cfg = MixConfig::timm(100);
    /// assert_eq!((cfg.mixup_alpha, cfg.cutmix_alpha, cfg.label_smoothing), (1.0, 0.0, 0.1));
    /// assert_eq!((cfg.mode, cfg.partner), (Mode::Batch, PartnerRule::Flip));
    /// cfg.validate().unwrap();
    /// ```
    pub fn timm(num_classes: usize) -> Self {
        Self {
            mixup_alpha: 1.0,
            cutmix_alpha: 0.0,
            cutmix_minmax: None,
            prob: 1.0,
            switch_prob: 0.5,
            mode: Mode::Batch,
            correct_lam: true,
            label_smoothing: 0.1,
            num_classes,
            lam_max: false,
            partner: PartnerRule::Flip,
            box_rule: BoxRule::Timm,
        }
    }

    /// fastai v1 `MixUpCallback(alpha=0.4, stack_x=False, stack_y=True)`: per-sample
    /// `λ ~ Beta(0.4, 0.4)`, `λ = max(λ, 1-λ)`, random permutation, no smoothing (the stacked
    /// loss equals cross-entropy against the unsmoothed soft target).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Mode, PartnerRule};
    /// let cfg = MixConfig::fastai_v1_mixup(10);
    /// assert_eq!((cfg.mixup_alpha, cfg.mode, cfg.partner), (0.4, Mode::Elem, PartnerRule::Permutation));
    /// assert!(cfg.lam_max && !cfg.cutmix_enabled());
    /// ```
    pub fn fastai_v1_mixup(num_classes: usize) -> Self {
        Self {
            mixup_alpha: 0.4,
            cutmix_alpha: 0.0,
            cutmix_minmax: None,
            prob: 1.0,
            switch_prob: 0.0,
            mode: Mode::Elem,
            correct_lam: false,
            label_smoothing: 0.0,
            num_classes,
            lam_max: true,
            partner: PartnerRule::Permutation,
            box_rule: BoxRule::Fastai,
        }
    }

    /// fastai v2 `MixUp(alpha=0.4)`: the same draw as v1 (per-sample λ with the max rule,
    /// random permutation).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::MixConfig;
    /// assert_eq!(MixConfig::fastai_v2_mixup(10), MixConfig::fastai_v1_mixup(10));
    /// ```
    pub fn fastai_v2_mixup(num_classes: usize) -> Self {
        Self::fastai_v1_mixup(num_classes)
    }

    /// fastai v2 `CutMix(alpha=1.0)`: one λ per batch, one fastai box, λ corrected to the box
    /// area, random permutation.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{BoxRule, MixConfig, Mode};
    /// let cfg = MixConfig::fastai_v2_cutmix(10);
    /// assert_eq!((cfg.mixup_alpha, cfg.cutmix_alpha), (0.0, 1.0));
    /// assert_eq!((cfg.mode, cfg.box_rule), (Mode::Batch, BoxRule::Fastai));
    /// assert!(cfg.correct_lam && cfg.cutmix_enabled());
    /// ```
    pub fn fastai_v2_cutmix(num_classes: usize) -> Self {
        Self {
            mixup_alpha: 0.0,
            cutmix_alpha: 1.0,
            mode: Mode::Batch,
            correct_lam: true,
            lam_max: false,
            ..Self::fastai_v1_mixup(num_classes)
        }
    }

    /// The CutMix α actually used: 1 when `cutmix_minmax` is set (as timm forces), else
    /// `cutmix_alpha`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::MixConfig;
    /// let cfg = MixConfig { cutmix_alpha: 0.0, cutmix_minmax: Some((0.2, 0.8)), ..MixConfig::timm(10) };
    /// assert_eq!(cfg.effective_cutmix_alpha(), 1.0);
    /// assert_eq!(MixConfig::timm(10).effective_cutmix_alpha(), 0.0);
    /// ```
    pub fn effective_cutmix_alpha(&self) -> f64 {
        if self.cutmix_minmax.is_some() {
            1.0
        } else {
            self.cutmix_alpha
        }
    }

    /// Whether any sample can be drawn as CutMix (so plans need the image size).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::MixConfig;
    /// assert!(!MixConfig::timm(10).cutmix_enabled());
    /// assert!(MixConfig::fastai_v2_cutmix(10).cutmix_enabled());
    /// ```
    pub fn cutmix_enabled(&self) -> bool {
        self.effective_cutmix_alpha() > 0.0
    }

    /// The soft-target spec of this config: `num_classes` and `label_smoothing`.
    ///
    /// # Errors
    /// As [`TargetSpec::new`] (the config's fields are public, so they are checked here).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, TargetSpec};
    /// assert_eq!(MixConfig::timm(10).target_spec()?, TargetSpec::new(10, 0.1)?);
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn target_spec(&self) -> Result<TargetSpec> {
        TargetSpec::new(self.num_classes, self.label_smoothing)
    }

    /// The cross-entropy spec that goes with this config: its class count and label smoothing
    /// (so the loss uses timm's `label_smoothing` instead of a second copy), and `reduction`.
    ///
    /// # Errors
    /// As [`TargetSpec::new`]: a class count of 0 or past `u32::MAX`, a smoothing outside
    /// `[0, 1)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Reduction};
    /// let spec = MixConfig::timm(1000).ce_spec(Reduction::Mean)?;
    /// assert_eq!((spec.num_classes(), spec.label_smoothing()), (1000, 0.1));
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn ce_spec(&self, reduction: crate::Reduction) -> Result<crate::CeSpec> {
        crate::CeSpec::new(self.num_classes, self.label_smoothing, reduction)
    }

    /// The binary cross-entropy spec that goes with this config (class count, label smoothing,
    /// `reduction`; add a threshold or weights with its builder methods).
    ///
    /// # Errors
    /// As [`BceSpec::new`](crate::BceSpec::new): a class count of 0 or past `u32::MAX`, a
    /// smoothing outside `[0, 1)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, Reduction};
    /// let bce = MixConfig::timm(1000).bce_spec(Reduction::Mean)?.with_target_threshold(0.2)?;
    /// assert_eq!(bce.label_smoothing(), 0.1);
    /// # Ok::<(), mixup_kernels::MixError>(())
    /// ```
    pub fn bce_spec(&self, reduction: crate::Reduction) -> Result<crate::BceSpec> {
        crate::BceSpec::new(self.num_classes, self.label_smoothing, reduction)
    }

    /// Checks every field; the error names the first bad one.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixup_kernels::{MixConfig, MixError};
    /// let cfg = MixConfig { prob: 1.5, ..MixConfig::timm(10) };
    /// assert!(matches!(cfg.validate(), Err(MixError::InvalidConfig { field: "prob", .. })));
    /// ```
    pub fn validate(&self) -> Result<()> {
        check_alpha("mixup_alpha", self.mixup_alpha)?;
        check_alpha("cutmix_alpha", self.cutmix_alpha)?;
        if let Some((lo, hi)) = self.cutmix_minmax
            && !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi && hi <= 1.0)
        {
            return Err(bad(
                "cutmix_minmax",
                format!("must satisfy 0 <= min < max <= 1, got ({lo}, {hi})"),
            ));
        }
        if self.mixup_alpha == 0.0 && !self.cutmix_enabled() {
            return Err(bad(
                "mixup_alpha",
                "and cutmix_alpha are both 0: nothing is enabled (use prob = 0 to turn mixing off)"
                    .into(),
            ));
        }
        check_prob("prob", self.prob)?;
        check_prob("switch_prob", self.switch_prob)?;
        if !(self.label_smoothing.is_finite() && (0.0..1.0).contains(&self.label_smoothing)) {
            return Err(bad(
                "label_smoothing",
                format!("must be in [0, 1), got {}", self.label_smoothing),
            ));
        }
        if self.num_classes == 0 {
            return Err(bad("num_classes", "must be at least 1".into()));
        }
        if self.num_classes > u32::MAX as usize {
            return Err(bad("num_classes", "must fit in u32".into()));
        }
        if self.mode == Mode::Pair && !self.partner.is_involution() {
            return Err(bad(
                "mode",
                format!(
                    "Pair needs a partner rule that pairs samples (Flip or RandomPairs), got {:?}",
                    self.partner
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(cfg: MixConfig) -> &'static str {
        match cfg.validate() {
            Err(MixError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn presets_validate() {
        for cfg in [
            MixConfig::default(),
            MixConfig::timm(10),
            MixConfig::fastai_v1_mixup(10),
            MixConfig::fastai_v2_mixup(10),
            MixConfig::fastai_v2_cutmix(10),
        ] {
            cfg.validate().unwrap();
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let base = MixConfig::timm(10);
        assert_eq!(
            field_of(MixConfig {
                mixup_alpha: -1.0,
                ..base.clone()
            }),
            "mixup_alpha"
        );
        assert_eq!(
            field_of(MixConfig {
                mixup_alpha: f64::NAN,
                ..base.clone()
            }),
            "mixup_alpha"
        );
        assert_eq!(
            field_of(MixConfig {
                cutmix_alpha: -0.5,
                ..base.clone()
            }),
            "cutmix_alpha"
        );
        assert_eq!(
            field_of(MixConfig {
                mixup_alpha: 0.0,
                ..base.clone()
            }),
            "mixup_alpha"
        );
        assert_eq!(
            field_of(MixConfig {
                prob: 1.5,
                ..base.clone()
            }),
            "prob"
        );
        assert_eq!(
            field_of(MixConfig {
                switch_prob: -0.1,
                ..base.clone()
            }),
            "switch_prob"
        );
        assert_eq!(
            field_of(MixConfig {
                cutmix_minmax: Some((0.8, 0.2)),
                ..base.clone()
            }),
            "cutmix_minmax"
        );
        assert_eq!(
            field_of(MixConfig {
                cutmix_minmax: Some((0.2, 1.2)),
                ..base.clone()
            }),
            "cutmix_minmax"
        );
        assert_eq!(
            field_of(MixConfig {
                label_smoothing: 1.0,
                ..base.clone()
            }),
            "label_smoothing"
        );
        assert_eq!(
            field_of(MixConfig {
                num_classes: 0,
                ..base.clone()
            }),
            "num_classes"
        );
        assert_eq!(
            field_of(MixConfig {
                mode: Mode::Pair,
                partner: PartnerRule::Permutation,
                ..base
            }),
            "mode"
        );
    }

    #[test]
    fn minmax_enables_cutmix_with_alpha_one() {
        let cfg = MixConfig {
            mixup_alpha: 0.0,
            cutmix_minmax: Some((0.2, 0.8)),
            ..MixConfig::timm(10)
        };
        cfg.validate().unwrap();
        assert_eq!(cfg.effective_cutmix_alpha(), 1.0);
    }

    #[test]
    fn target_spec_rejects_bad_values() {
        assert!(TargetSpec::new(0, 0.1).is_err());
        assert!(TargetSpec::new(10, -0.1).is_err());
        assert!(TargetSpec::new(10, 1.0).is_err());
        assert!(TargetSpec::new(10, f64::NAN).is_err());
        assert!((TargetSpec::new(10, 0.1).unwrap().off_value() - 0.01).abs() < 1e-15);
    }
}
