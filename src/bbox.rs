//! CutMix boxes, exactly as timm and fastai compute them.

use rand::Rng;

use crate::config::BoxRule;
use crate::error::{MixError, Result};
use crate::plan::CutBox;

/// timm's `rand_bbox` for a given center: `r = sqrt(1-λ)`, `cut_h = int(H·r)`,
/// `cut_w = int(W·r)`, `y0 = clip(cy - cut_h//2, 0, H)`, `y1 = clip(cy + (cut_h+1)//2, 0, H)`,
/// and likewise for x. The center is normally drawn uniformly from `0..H` × `0..W`.
///
/// λ outside `[0, 1]` is clamped into it (timm would produce NaN for λ > 1).
///
/// This is timm ≥ 1.0.29 (timm ≤ 1.0.28 used `cy + cut_h//2` for the far edge), computed in f64
/// as timm's batch mode does; timm's elem and pair modes hold λ as an `np.float32`, which can
/// give a box one pixel different for the same λ (checked against timm 1.0.31 fixtures).
///
/// # Errors
/// - [`MixError::SizeOverflow`] if `height` or `width` exceeds `u32::MAX` (a box holds `u32`
///   coordinates; the sampler refuses such images the same way);
/// - [`MixError::EmptyShape`] for an image with no pixels;
/// - [`MixError::InvalidArgument`] if the center lies outside the image (`cy >= height` or
///   `cx >= width`: timm never draws one there, and clipping it would give a box that is not
///   timm's) or λ is NaN.
///
/// ```
/// use mixup_kernels::{timm_rand_bbox, CutBox};
/// // λ = 0.75 on a 224×224 image: cut = int(224·0.5) = 112, centred at (100, 50).
/// let b = timm_rand_bbox(224, 224, 0.75, 100, 50)?;
/// assert_eq!(b, CutBox { y0: 44, y1: 156, x0: 0, x1: 106 });
/// assert!(timm_rand_bbox(224, 224, 0.75, 224, 50).is_err()); // center outside the image
/// # Ok::<(), mixup_kernels::MixError>(())
/// ```
pub fn timm_rand_bbox(
    height: usize,
    width: usize,
    lam: f64,
    cy: usize,
    cx: usize,
) -> Result<CutBox> {
    if height > u32::MAX as usize || width > u32::MAX as usize {
        return Err(MixError::SizeOverflow { what: "image size" });
    }
    if height == 0 || width == 0 {
        return Err(MixError::EmptyShape {
            what: "image height and width",
        });
    }
    if cy >= height || cx >= width {
        return Err(MixError::InvalidArgument {
            what: "center",
            reason: format!("({cy}, {cx}) lies outside the {height}x{width} image"),
        });
    }
    if lam.is_nan() {
        return Err(MixError::InvalidArgument {
            what: "lam",
            reason: "NaN".into(),
        });
    }
    Ok(timm_box(height, width, lam, cy, cx))
}

/// [`timm_rand_bbox`] for arguments known to be valid (sides ≤ `u32::MAX`, center inside).
fn timm_box(height: usize, width: usize, lam: f64, cy: usize, cx: usize) -> CutBox {
    let ratio = (1.0 - lam.clamp(0.0, 1.0)).sqrt();
    // numpy's `int()` truncates toward zero; both products are non-negative.
    let cut_h = (height as f64 * ratio) as i64;
    let cut_w = (width as f64 * ratio) as i64;
    let (y0, y1) = span(cy as i64, cut_h / 2, (cut_h + 1) / 2, height as i64);
    let (x0, x1) = span(cx as i64, cut_w / 2, (cut_w + 1) / 2, width as i64);
    CutBox { y0, y1, x0, x1 }
}

/// fastai v2 `CutMix.rand_bbox` for a given center: `r = sqrt(1-λ)` in f32 (fastai's λ is an f32
/// tensor), `cut = round(side·r)` ties to even, box `[c - cut//2, c + cut//2)` clipped.
pub(crate) fn fastai_rand_bbox(
    height: usize,
    width: usize,
    lam: f64,
    cy: usize,
    cx: usize,
) -> CutBox {
    let ratio = (1.0f32 - lam.clamp(0.0, 1.0) as f32).sqrt();
    let cut_h = (height as f32 * ratio).round_ties_even() as i64;
    let cut_w = (width as f32 * ratio).round_ties_even() as i64;
    let (y0, y1) = span(cy as i64, cut_h / 2, cut_h / 2, height as i64);
    let (x0, x1) = span(cx as i64, cut_w / 2, cut_w / 2, width as i64);
    CutBox { y0, y1, x0, x1 }
}

fn span(center: i64, below: i64, above: i64, side: i64) -> (u32, u32) {
    let lo = (center - below).clamp(0, side);
    let hi = (center + above).clamp(0, side);
    (lo as u32, hi as u32)
}

/// Draws a box from λ with the given rule: the center uniform over the image, then the rule.
/// The sampler has checked the sides (non-zero, at most `u32::MAX`), so the arithmetic of
/// [`span`] cannot overflow.
pub(crate) fn draw_box<R: Rng>(
    rng: &mut R,
    rule: BoxRule,
    height: usize,
    width: usize,
    lam: f64,
) -> CutBox {
    let cy = rng.random_range(0..height);
    let cx = rng.random_range(0..width);
    match rule {
        BoxRule::Timm => timm_box(height, width, lam, cy, cx),
        BoxRule::Fastai => fastai_rand_bbox(height, width, lam, cy, cx),
    }
}

/// The side range timm's `rand_bbox_minmax` draws from: `int(side·min) .. int(side·max)`
/// (upper end excluded). Fails where numpy's `randint` would (an empty range).
pub(crate) fn minmax_range(
    side: usize,
    (lo, hi): (f64, f64),
    what: &'static str,
) -> Result<(usize, usize)> {
    let a = (side as f64 * lo) as usize;
    let b = (side as f64 * hi) as usize;
    if a < b {
        Ok((a, b))
    } else {
        Err(MixError::InvalidArgument {
            what,
            reason: format!(
                "cutmix_minmax ({lo}, {hi}) leaves no box side for an image side of {side}: \
                 int({side}*{lo}) = {a} is not below int({side}*{hi}) = {b}"
            ),
        })
    }
}

/// timm's `rand_bbox_minmax` (timm ≥ 1.0.29): `cut_h ~ U{int(H·min) .. int(H·max)-1}`, likewise
/// `cut_w`, then `y0 ~ U{0 .. H-cut_h}`, `x0 ~ U{0 .. W-cut_w}` (`randint(0, H - cut_h + 1)`, so
/// the box may touch the far edge; timm ≤ 1.0.28 stopped one pixel short). Ranges come from
/// [`minmax_range`].
pub(crate) fn draw_minmax_box<R: Rng>(
    rng: &mut R,
    height: usize,
    width: usize,
    h_range: (usize, usize),
    w_range: (usize, usize),
) -> CutBox {
    let cut_h = rng.random_range(h_range.0..h_range.1);
    let cut_w = rng.random_range(w_range.0..w_range.1);
    let y0 = rng.random_range(0..=height - cut_h);
    let x0 = rng.random_range(0..=width - cut_w);
    CutBox {
        y0: y0 as u32,
        y1: (y0 + cut_h) as u32,
        x0: x0 as u32,
        x1: (x0 + cut_w) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_box_clips_at_edges() {
        // cut = int(10·sqrt(0.5)) = 7: below 3, above 4.
        assert_eq!(
            timm_rand_bbox(10, 10, 0.5, 0, 9).unwrap(),
            CutBox {
                y0: 0,
                y1: 4,
                x0: 6,
                x1: 10
            }
        );
        assert_eq!(timm_rand_bbox(10, 10, 1.0, 5, 5).unwrap().area(), 0);
        assert_eq!(
            timm_rand_bbox(10, 10, 0.0, 5, 5).unwrap(),
            CutBox {
                y0: 0,
                y1: 10,
                x0: 0,
                x1: 10
            }
        );
    }

    /// Hostile arguments give typed errors, never a reversed or truncated box or an overflow
    /// panic (debug builds panicked on `cy as i64 + half` near `usize::MAX`; release builds
    /// truncated sides ≥ 2^32 to `u32`).
    #[test]
    fn timm_box_rejects_hostile_arguments() {
        let big = u32::MAX as usize + 1;
        assert!(matches!(
            timm_rand_bbox(big, 10, 0.5, 0, 0),
            Err(MixError::SizeOverflow { .. })
        ));
        assert!(matches!(
            timm_rand_bbox(10, big, 0.5, 0, 0),
            Err(MixError::SizeOverflow { .. })
        ));
        for (cy, cx) in [(10, 0), (0, 10), (usize::MAX, 0), (0, usize::MAX)] {
            assert!(matches!(
                timm_rand_bbox(10, 10, 0.5, cy, cx),
                Err(MixError::InvalidArgument { what: "center", .. })
            ));
        }
        assert!(matches!(
            timm_rand_bbox(0, 0, 0.5, 0, 0),
            Err(MixError::EmptyShape { .. })
        ));
        assert!(timm_rand_bbox(10, 10, f64::NAN, 5, 5).is_err());
        // The largest image: the box stays inside and ordered.
        let side = u32::MAX as usize;
        let b = timm_rand_bbox(side, side, 0.0, side - 1, side - 1).unwrap();
        assert!(b.y0 <= b.y1 && b.y1 as usize == side && b.x0 <= b.x1 && b.x1 as usize == side);
        assert_eq!(b.y0 as usize, side - 1 - side / 2);
    }

    #[test]
    fn fastai_box_is_symmetric() {
        // cut = round(10·sqrt(0.5)) = 7, half 3 both ways.
        assert_eq!(
            fastai_rand_bbox(10, 10, 0.5, 5, 5),
            CutBox {
                y0: 2,
                y1: 8,
                x0: 2,
                x1: 8
            }
        );
    }

    #[test]
    fn minmax_range_rejects_empty() {
        assert_eq!(minmax_range(224, (0.2, 0.8), "h").unwrap(), (44, 179));
        assert!(minmax_range(2, (0.2, 0.3), "h").is_err());
    }
}
