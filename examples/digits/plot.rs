//! The demo's two pictures, drawn on a plain RGB canvas and written with the `png` crate:
//! a grid of mixed samples with their soft labels, and the training curves of the runs.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::font;

pub type Rgb = [u8; 3];

pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [150, 150, 150];
pub const LIGHT: Rgb = [228, 228, 228];
/// matplotlib's first three "tab10" colours: blue, orange, green.
pub const PALETTE: [Rgb; 3] = [[31, 119, 180], [255, 127, 14], [44, 160, 44]];

/// An RGB image with a clip rectangle (drawing outside it is dropped).
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
    clip: (i64, i64, i64, i64),
}

impl Canvas {
    pub fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![255; w * h * 3],
            clip: (0, 0, w as i64, h as i64),
        }
    }

    /// Restricts drawing to `[x0, x1) × [y0, y1)` (within the canvas).
    pub fn set_clip(&mut self, x0: i64, y0: i64, x1: i64, y1: i64) {
        self.clip = (
            x0.max(0),
            y0.max(0),
            x1.min(self.w as i64),
            y1.min(self.h as i64),
        );
    }

    pub fn reset_clip(&mut self) {
        self.clip = (0, 0, self.w as i64, self.h as i64);
    }

    pub fn put(&mut self, x: i64, y: i64, c: Rgb) {
        let (x0, y0, x1, y1) = self.clip;
        if x >= x0 && x < x1 && y >= y0 && y < y1 {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c);
            }
        }
    }

    /// A one-pixel rectangle outline.
    pub fn frame(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        self.fill(x, y, w, 1, c);
        self.fill(x, y + h - 1, w, 1, c);
        self.fill(x, y, 1, h, c);
        self.fill(x + w - 1, y, 1, h, c);
    }

    /// A line `thick` pixels wide (a square brush walked along Bresenham's line); `dash` > 0
    /// draws `dash` pixels on, `dash` off.
    pub fn line(&mut self, a: (f64, f64), b: (f64, f64), thick: i64, c: Rgb, dash: usize) {
        let (mut x0, mut y0) = (a.0.round() as i64, a.1.round() as i64);
        let (x1, y1) = (b.0.round() as i64, b.1.round() as i64);
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        let r = thick / 2;
        for n in 0usize.. {
            if dash == 0 || (n / dash).is_multiple_of(2) {
                self.fill(x0 - r, y0 - r, thick, thick, c);
            }
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// Width in pixels of `s` drawn at `scale`.
    pub fn text_width(s: &str, scale: i64) -> i64 {
        let n = s.chars().count() as i64;
        if n == 0 {
            0
        } else {
            n * (font::W as i64 + 1) * scale - scale
        }
    }

    /// Draws `s` with its top-left corner at `(x, y)`, each font pixel `scale` pixels wide.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let gx = x + k as i64 * (font::W as i64 + 1) * scale;
            for (row, bits) in font::glyph(ch).iter().enumerate() {
                for (col, bit) in bits.chars().enumerate() {
                    if bit == '#' {
                        self.fill(
                            gx + col as i64 * scale,
                            y + row as i64 * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    /// Text centred horizontally on `cx`.
    pub fn text_centered(&mut self, cx: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        self.text(cx - Self::text_width(s, scale) / 2, y, s, scale, c);
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let file = BufWriter::new(File::create(path)?);
        let mut enc = png::Encoder::new(file, self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&self.px)?;
        writer.finish()?;
        Ok(())
    }
}

/// One mixed sample for the grid: its 8×8 pixels (0..=1 ink) and its caption.
pub struct Cell {
    pub pixels: Vec<f32>,
    pub caption: String,
}

/// A block of cells under a title (one block per mixing method).
pub struct Block {
    pub title: String,
    pub cells: Vec<Cell>,
}

/// The grid picture: each block is a title line and rows of `cols` samples, each sample an
/// 8×8 image scaled up, ink dark on white as scikit-learn shows the digits, with its soft label.
pub fn sample_grid(blocks: &[Block], cols: usize, side: usize) -> Canvas {
    const ZOOM: i64 = 16;
    const CELL_W: i64 = 172;
    const CAP_H: i64 = 30;
    const TITLE_H: i64 = 40;
    const PAD: i64 = 14;
    let img = side as i64 * ZOOM;
    let cell_h = img + CAP_H;
    let rows_of = |b: &Block| b.cells.len().div_ceil(cols) as i64;
    let height: i64 = blocks
        .iter()
        .map(|b| TITLE_H + rows_of(b) * (cell_h + PAD))
        .sum::<i64>()
        + PAD;
    let width = cols as i64 * CELL_W + 2 * PAD;
    let mut cv = Canvas::new(width as usize, height as usize);
    let mut y = PAD;
    for b in blocks {
        cv.text(PAD, y + 8, &b.title, 3, BLACK);
        y += TITLE_H;
        for (k, cell) in b.cells.iter().enumerate() {
            let (r, c) = ((k / cols) as i64, (k % cols) as i64);
            let x0 = PAD + c * CELL_W + (CELL_W - img) / 2;
            let y0 = y + r * (cell_h + PAD);
            for (p, &v) in cell.pixels.iter().enumerate() {
                let g = (255.0 * (1.0 - v.clamp(0.0, 1.0))).round() as u8;
                let (py, px) = ((p / side) as i64, (p % side) as i64);
                cv.fill(x0 + px * ZOOM, y0 + py * ZOOM, ZOOM, ZOOM, [g, g, g]);
            }
            cv.frame(x0 - 1, y0 - 1, img + 2, img + 2, GREY);
            cv.text_centered(x0 + img / 2, y0 + img + 9, &cell.caption, 2, BLACK);
        }
        y += rows_of(b) * (cell_h + PAD);
    }
    cv
}

/// One run's curve: a name and one value per epoch.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: Vec<f64>,
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Formats a tick value with just enough decimals for the step.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
    format!("{v:.decimals$}")
}

/// The y range of a panel: all values from epoch `skip` on (the first epochs of a short run sit
/// far from the rest and would squash the part worth reading; they are drawn, clipped at the
/// edge), padded by 5%, and snapped outward to ticks.
fn y_range(series: &[Series<'_>], skip: usize, clamp: Option<(f64, f64)>) -> (f64, f64, f64) {
    let vals = series
        .iter()
        .flat_map(|s| {
            s.values
                .iter()
                .skip(skip.min(s.values.len().saturating_sub(1)))
        })
        .copied()
        .filter(|v| v.is_finite());
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (mut lo, mut hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    if hi - lo < 1e-9 {
        lo -= 0.5;
        hi += 0.5;
    }
    let pad = 0.05 * (hi - lo);
    lo -= pad;
    hi += pad;
    if let Some((a, b)) = clamp {
        lo = lo.max(a);
        hi = hi.min(b);
    }
    let step = tick_step(hi - lo, 5.0);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

/// One panel: axes, ticks, grid lines, a title, and the series as lines with dots at epochs.
#[allow(clippy::too_many_arguments)]
fn panel(
    cv: &mut Canvas,
    x: i64,
    y: i64,
    w: i64,
    h: i64,
    title: &str,
    series: &[Series<'_>],
    clamp: Option<(f64, f64)>,
) {
    let epochs = series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let skip = epochs / 5;
    let (lo, hi, step) = y_range(series, skip, clamp);
    cv.text_centered(x + w / 2, y - 30, title, 2, BLACK);
    let fx = |e: usize| {
        if epochs == 1 {
            x as f64 + w as f64 / 2.0
        } else {
            x as f64 + (e as f64) / (epochs - 1) as f64 * (w - 1) as f64
        }
    };
    let fy = |v: f64| y as f64 + (hi - v) / (hi - lo) * (h - 1) as f64;
    // Horizontal grid lines and y tick labels.
    let mut t = lo;
    while t <= hi + step * 1e-6 {
        let py = fy(t).round() as i64;
        cv.fill(x, py, w, 1, LIGHT);
        let label = tick_label(t, step);
        cv.text(
            x - Canvas::text_width(&label, 2) - 8,
            py - 7,
            &label,
            2,
            BLACK,
        );
        t += step;
    }
    // X ticks at epochs (every k-th so labels do not collide).
    let every = tick_step(epochs as f64, 8.0).max(1.0) as usize;
    for e in (0..epochs).filter(|e| (e + 1) % every == 0 || *e == 0) {
        let px = fx(e).round() as i64;
        cv.fill(px, y + h, 1, 6, BLACK);
        cv.text_centered(px, y + h + 10, &(e + 1).to_string(), 2, BLACK);
    }
    cv.text_centered(x + w / 2, y + h + 34, "epoch", 2, BLACK);
    cv.frame(x, y, w, h, BLACK);
    let off_scale = series
        .iter()
        .flat_map(|s| s.values.iter())
        .any(|&v| v < lo || v > hi);
    if off_scale {
        let note = "early epochs run off the scale";
        cv.text(x + w - Canvas::text_width(note, 1), y - 11, note, 1, GREY);
    }
    cv.set_clip(x + 1, y + 1, x + w - 1, y + h - 1);
    for (k, s) in series.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        for (e, pair) in s.values.windows(2).enumerate() {
            cv.line((fx(e), fy(pair[0])), (fx(e + 1), fy(pair[1])), 3, c, 0);
        }
        for (e, &v) in s.values.iter().enumerate() {
            let (px, py) = (fx(e).round() as i64, fy(v).round() as i64);
            cv.fill(px - 3, py - 3, 7, 7, c);
        }
    }
    cv.reset_clip();
}

/// The curves picture: valid accuracy and valid loss per epoch, one line per run, a legend.
pub fn curves(acc: &[Series<'_>], loss: &[Series<'_>], subtitle: &str) -> Canvas {
    let (pw, ph) = (520i64, 360i64);
    let (left, top, gap) = (90i64, 120i64, 120i64);
    let width = left + pw + gap + pw + 30;
    let height = top + ph + 70;
    let mut cv = Canvas::new(width as usize, height as usize);
    cv.text_centered(width / 2, 12, subtitle, 2, BLACK);
    // Legend, centred under the subtitle.
    let entries: Vec<(&str, Rgb)> = acc
        .iter()
        .enumerate()
        .map(|(k, s)| (s.name, PALETTE[k % PALETTE.len()]))
        .collect();
    let item_w = |n: &str| 40 + Canvas::text_width(n, 2) + 30;
    let total: i64 = entries.iter().map(|(n, _)| item_w(n)).sum();
    let mut lx = (width - total) / 2;
    for (name, c) in entries {
        cv.line((lx as f64, 48.0), (lx as f64 + 30.0, 48.0), 3, c, 0);
        cv.fill(lx + 12, 45, 7, 7, c);
        cv.text(lx + 40, 41, name, 2, BLACK);
        lx += item_w(name);
    }
    panel(
        &mut cv,
        left,
        top,
        pw,
        ph,
        "valid accuracy",
        acc,
        Some((0.0, 1.0)),
    );
    panel(
        &mut cv,
        left + pw + gap,
        top,
        pw,
        ph,
        "valid loss",
        loss,
        Some((0.0, f64::INFINITY)),
    );
    cv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(1.0, 5.0), 0.2);
        assert_eq!(tick_step(0.07, 5.0), 0.02);
        assert_eq!(tick_label(0.95, 0.05), "0.95");
        assert_eq!(tick_label(3.0, 1.0), "3");
    }
}
