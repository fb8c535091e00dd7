//! The demo's two pictures, drawn with `plotters` into an RGB buffer and written with `png`:
//! a grid of mixed samples with their soft labels, and the validation curves of the runs.
//!
//! Text uses DejaVu Sans built into the binary (`fonts/`), registered with plotters' `ab_glyph`
//! backend: no system font and no fontconfig are needed.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor, register_font};

const FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
const SANS: &str = "sans-serif";

/// matplotlib's first three "tab10" colours: blue, orange, green.
pub const PALETTE: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
const AXIS: RGBColor = RGBColor(90, 90, 90);

/// Registers the embedded font under "sans-serif" (once; later calls do nothing).
fn fonts() -> Result<()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut ok = true;
    ONCE.call_once(|| ok = register_font(SANS, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font did not load"))
    }
}

/// An RGB picture being drawn (white to start with).
struct Picture {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Picture {
    fn new(w: u32, h: u32) -> Result<Self> {
        fonts()?;
        Ok(Self {
            w,
            h,
            px: vec![255; (w * h * 3) as usize],
        })
    }

    fn area(&mut self) -> DrawingArea<BitMapBackend<'_>, plotters::coord::Shift> {
        BitMapBackend::with_buffer(&mut self.px, (self.w, self.h)).into_drawing_area()
    }

    fn save(&self, path: &Path) -> Result<()> {
        let file = BufWriter::new(File::create(path)?);
        let mut enc = png::Encoder::new(file, self.w, self.h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&self.px)?;
        writer.finish()?;
        Ok(())
    }
}

/// plotters' errors carry the backend's error type; keep the message only.
fn e<E: std::fmt::Display>(err: E) -> anyhow::Error {
    anyhow!("drawing: {err}")
}

/// One mixed sample for the grid: its pixels (0..=1 ink, `side × side`) and its soft label as
/// (class name, weight) pairs, largest first.
pub struct Cell {
    pub pixels: Vec<f32>,
    pub label: Vec<(String, f32)>,
}

/// A block of cells under a title (one block per mixing method).
pub struct Block {
    pub title: String,
    pub cells: Vec<Cell>,
}

/// The mixed samples, `per_row` cells a row, each image scaled to about 112 pixels, with one
/// caption line per class of its soft label ("62% Coat").
pub fn sample_grid(blocks: &[Block], per_row: usize, side: usize, path: &Path) -> Result<()> {
    let scale = (112 / side).max(1) as i32;
    let img = side as i32 * scale;
    let (gap, caption_h, title_h, margin) = (18i32, 44i32, 40i32, 16i32);
    let cell_w = img + gap;
    let rows_of = |b: &Block| b.cells.len().div_ceil(per_row) as i32;
    let w = margin * 2 + per_row as i32 * cell_w - gap;
    let h = margin
        + blocks
            .iter()
            .map(|b| title_h + rows_of(b) * (img + caption_h + 8))
            .sum::<i32>()
        + margin;
    let mut pic = Picture::new(w as u32, h as u32)?;
    {
        let root = pic.area();
        let title_font = (SANS, 21).into_font().color(&BLACK);
        let caption_font = (SANS, 16).into_font().color(&BLACK);
        let mut y = margin;
        for b in blocks {
            root.draw(&Text::new(
                b.title.as_str(),
                (margin, y + 8),
                title_font.clone(),
            ))
            .map_err(e)?;
            y += title_h;
            for (k, cell) in b.cells.iter().enumerate() {
                let x0 = margin + (k % per_row) as i32 * cell_w;
                let y0 = y + (k / per_row) as i32 * (img + caption_h + 8);
                for (i, &v) in cell.pixels.iter().enumerate() {
                    let grey = (255.0 * (1.0 - v.clamp(0.0, 1.0))).round() as u8;
                    let (px, py) = ((i % side) as i32 * scale, (i / side) as i32 * scale);
                    root.draw(&Rectangle::new(
                        [(x0 + px, y0 + py), (x0 + px + scale, y0 + py + scale)],
                        RGBColor(grey, grey, grey).filled(),
                    ))
                    .map_err(e)?;
                }
                root.draw(&Rectangle::new(
                    [(x0 - 1, y0 - 1), (x0 + img, y0 + img)],
                    AXIS.stroke_width(1),
                ))
                .map_err(e)?;
                for (j, (name, weight)) in cell.label.iter().take(2).enumerate() {
                    let text = format!("{:.0}% {name}", weight * 100.0);
                    root.draw(&Text::new(
                        text,
                        (x0, y0 + img + 5 + j as i32 * 19),
                        caption_font.clone(),
                    ))
                    .map_err(e)?;
                }
            }
            y += rows_of(b) * (img + caption_h + 8);
        }
        root.present().map_err(e)?;
    }
    pic.save(path)
}

/// One line of a panel: its name, and per epoch the mean and its standard error over seeds.
pub struct Series {
    pub name: &'static str,
    pub mean: Vec<f64>,
    pub se: Vec<f64>,
}

/// One panel of the curves picture.
pub struct Panel {
    pub title: &'static str,
    pub series: Vec<Series>,
}

/// The panels side by side (x: epoch; from 10 epochs on without the first fifth), a shaded
/// band of ± one standard error when there are several seeds, a legend in the first panel and
/// `title` above all.
pub fn curves(panels: &[Panel], title: &str, path: &Path) -> Result<()> {
    let (pw, ph, head) = (440u32, 360u32, 44u32);
    let mut pic = Picture::new(pw * panels.len() as u32, ph + head)?;
    {
        let root = pic.area();
        let (top, body) = root.split_vertically(head);
        top.draw(&Text::new(
            title,
            (14, 14),
            (SANS, 18).into_font().color(&BLACK),
        ))
        .map_err(e)?;
        let areas = body.split_evenly((1, panels.len()));
        for (p, (panel, area)) in panels.iter().zip(&areas).enumerate() {
            draw_panel(panel, area, p == 0)?;
        }
        root.present().map_err(e)?;
    }
    pic.save(path)
}

fn draw_panel(
    panel: &Panel,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    legend: bool,
) -> Result<()> {
    let epochs = panel.series.iter().map(|s| s.mean.len()).max().unwrap_or(1);
    // From ten epochs on, the first fifth is left out: the early values (accuracy at 10%, loss
    // at 2.3) would squeeze the end of training, where the runs differ, into a few pixels.
    let skip = if epochs >= 10 { epochs / 5 } else { 0 };
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in &panel.series {
        for (m, se) in s.mean.iter().zip(&s.se).skip(skip) {
            lo = lo.min(m - se);
            hi = hi.max(m + se);
        }
    }
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.06).max(1e-3);
    let (lo, hi) = (lo - pad, hi + pad);
    let x_max = epochs.max(2) as f64;

    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (SANS, 19).into_font().color(&BLACK))
        .margin(12)
        .margin_right(20)
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d((skip + 1) as f64..x_max, lo..hi)
        .map_err(e)?;
    let tick = (SANS, 14).into_font().color(&AXIS);
    chart
        .configure_mesh()
        .x_desc("epoch")
        .axis_desc_style((SANS, 15).into_font().color(&BLACK))
        .x_labels((epochs - skip).clamp(2, 8))
        .y_labels(7)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if hi - lo < 0.05 {
                format!("{y:.3}")
            } else {
                format!("{y:.2}")
            }
        })
        .label_style(tick)
        .axis_style(AXIS)
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .draw()
        .map_err(e)?;

    for (k, s) in panel.series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let xs = || (skip..s.mean.len()).map(|e| e as f64 + 1.0);
        if s.se.iter().any(|&v| v > 0.0) {
            let mut band: Vec<(f64, f64)> = xs()
                .zip(s.mean.iter().zip(&s.se).skip(skip).map(|(m, d)| m + d))
                .collect();
            let lower: Vec<(f64, f64)> = xs()
                .zip(s.mean.iter().zip(&s.se).skip(skip).map(|(m, d)| m - d))
                .collect();
            band.extend(lower.into_iter().rev());
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.18).filled(),
                )))
                .map_err(e)?;
        }
        chart
            .draw_series(LineSeries::new(
                xs().zip(s.mean.iter().skip(skip).copied()),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
            });
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((SANS, 15).into_font().color(&BLACK))
            .background_style(WHITE.mix(0.85))
            .border_style(AXIS)
            .draw()
            .map_err(e)?;
    }
    Ok(())
}
