//! Soft targets `[B, C]`: `t_ic = (1-ε)(λ_i [c = a] + (1-λ_i) [c = b]) + ε/C`, with
//! `a = y_i`, `b = y_partner(i)`; the two weights add when `a == b`.

use rayon::prelude::*;

use super::lanes::narrow;
use crate::config::TargetSpec;
use crate::dtype::FloatElement;
use crate::error::{Result, Rows, check_rows};
use crate::plan::MixPlan;
use crate::spec::check_labels;

/// The soft target of one sample, in f32, exactly as both the target op and the loss use it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Targets {
    /// `1 - ε`.
    keep: f32,
    /// `ε / C`, the target of every other class.
    pub(crate) off: f32,
}

impl Targets {
    pub(crate) fn new(spec: &TargetSpec) -> Self {
        Self {
            keep: 1.0 - spec.smoothing_f32(),
            off: spec.off_f32(),
        }
    }

    /// `(t_a, t_b)`: `t = (1-ε)·w + ε/C` with `w_a = λ`, `w_b = 1-λ`, or `w = λ + (1-λ)` for
    /// both when the classes are the same (then `t_a == t_b`). All in f32.
    #[inline]
    pub(crate) fn pair(&self, lam: f32, same: bool) -> (f32, f32) {
        let mu = 1.0 - lam;
        if same {
            let t = self.keep * (lam + mu) + self.off;
            (t, t)
        } else {
            (self.keep * lam + self.off, self.keep * mu + self.off)
        }
    }
}

/// Rows per task: about 16 Ki elements, so small C does not pay one task per row.
pub(crate) fn rows_per_task(classes: usize) -> usize {
    ((1 << 14) / classes.max(1)).max(1)
}

pub(crate) fn soft_targets<T: FloatElement>(
    plan: &MixPlan,
    labels: &[u32],
    spec: &TargetSpec,
    out: &mut [T],
) -> Result<()> {
    check_labels(plan, labels, spec)?;
    let c = spec.num_classes();
    // check_labels bounds C by u32::MAX and the plan by u32::MAX samples: no overflow on 64-bit
    // targets, but the product is still checked for 32-bit ones.
    check_rows("out", Rows::Classes, plan.len(), c, out.len())?;
    let t = Targets::new(spec);
    let off: T = narrow(t.off);
    let entries = plan.entries();
    out.par_chunks_mut(c)
        .with_min_len(rows_per_task(c))
        .enumerate()
        .for_each(|(i, row)| {
            let e = &entries[i];
            let (a, b) = (labels[i] as usize, labels[e.partner as usize] as usize);
            let (ta, tb) = t.pair(e.lam, a == b);
            row.fill(off);
            row[b] = narrow(tb);
            row[a] = narrow(ta);
        });
    Ok(())
}
