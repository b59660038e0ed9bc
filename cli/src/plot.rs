//! A small raster plotter that writes PNG charts: filled bars (histograms, benchmark latencies) and
//! polylines (densities, curves) on linear axes with ticks and numeric tick labels. The labels use
//! a built-in 3×5 pixel digit font, so no system fonts are read and a chart looks the same on
//! every machine.
//!
//! ```ignore
//! Figure::new(800, 500)
//!     .x_range(0.0, 1.0)
//!     .bars(histogram(&samples, 0.0, 1.0, 50), plot::BLUE)
//!     .line(curve, plot::RED)
//!     .write_png(Path::new("density.png"))?;
//! ```

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;

/// An sRGB colour.
pub type Rgb = [u8; 3];

pub const BLUE: Rgb = [120, 160, 220];
pub const RED: Rgb = [200, 30, 30];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [228, 228, 228];

/// One bar spanning [x0, x1] on the x axis, from 0 up to `height`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub x0: f64,
    pub x1: f64,
    pub height: f64,
}

/// A density histogram of `samples` on [lo, hi] with `bins` equal bins: bar areas sum to the
/// fraction of samples inside [lo, hi], so it overlays a pdf directly.
#[cfg(feature = "full")]
pub fn histogram(samples: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<Bar> {
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for &s in samples.iter().filter(|s| (lo..=hi).contains(*s)) {
        counts[(((s - lo) / width) as usize).min(bins - 1)] += 1;
    }
    let scale = 1.0 / (samples.len().max(1) as f64 * width);
    let edge = |i: usize| lo + i as f64 * width;
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| Bar { x0: edge(i), x1: edge(i + 1), height: c as f64 * scale })
        .collect()
}

enum Layer {
    Bars(Vec<Bar>, Rgb),
    Line(Vec<(f64, f64)>, Rgb),
}

/// A chart: layers drawn in order over axes. Ranges default to the data (y from 0).
pub struct Figure {
    width: usize,
    height: usize,
    x: Option<(f64, f64)>,
    y: Option<(f64, f64)>,
    layers: Vec<Layer>,
}

/// Pixel margins around the plot area: room for tick labels on the left and below.
const LEFT: usize = 60;
const BOTTOM: usize = 32;
const TOP: usize = 14;
const RIGHT: usize = 18;

impl Figure {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width: width.max(LEFT + RIGHT + 16),
            height: height.max(TOP + BOTTOM + 16),
            x: None,
            y: None,
            layers: vec![],
        }
    }

    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x = Some((lo, hi));
        self
    }

    #[cfg(feature = "full")]
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y = Some((lo, hi));
        self
    }

    pub fn bars(mut self, bars: Vec<Bar>, color: Rgb) -> Self {
        self.layers.push(Layer::Bars(bars, color));
        self
    }

    pub fn line(mut self, points: Vec<(f64, f64)>, color: Rgb) -> Self {
        self.layers.push(Layer::Line(points, color));
        self
    }

    /// The data extent over all layers, as ((x_lo, x_hi), (y_lo, y_hi)), y including 0.
    fn extent(&self) -> ((f64, f64), (f64, f64)) {
        let (mut x, mut y) = ((f64::INFINITY, f64::NEG_INFINITY), (0.0f64, f64::NEG_INFINITY));
        let mut add = |px: f64, py: f64| {
            if px.is_finite() && py.is_finite() {
                x = (x.0.min(px), x.1.max(px));
                y = (y.0.min(py), y.1.max(py));
            }
        };
        for layer in &self.layers {
            match layer {
                Layer::Bars(bars, _) => bars.iter().for_each(|b| {
                    add(b.x0, b.height);
                    add(b.x1, b.height)
                }),
                Layer::Line(points, _) => points.iter().for_each(|&(px, py)| add(px, py)),
            }
        }
        let x = self.x.unwrap_or(x);
        let y = self.y.unwrap_or((y.0, y.0 + (y.1 - y.0) * 1.05));
        (widen(x), widen(y))
    }

    /// Draws the chart into an RGB buffer (row-major, 3 bytes a pixel).
    pub fn render(&self) -> Canvas {
        let mut c =
            Canvas { width: self.width, height: self.height, rgb: vec![255; self.width * self.height * 3] };
        let ((x0, x1), (y0, y1)) = self.extent();
        let (pw, ph) = ((self.width - LEFT - RIGHT) as f64, (self.height - TOP - BOTTOM) as f64);
        let px = |x: f64| LEFT as f64 + (x - x0) / (x1 - x0) * pw;
        let py = |y: f64| TOP as f64 + ph - (y - y0) / (y1 - y0) * ph;
        let clip = ((LEFT as f64, TOP as f64), (LEFT as f64 + pw, TOP as f64 + ph));
        let (xt, yt) = (ticks(x0, x1), ticks(y0, y1));
        for &t in &yt {
            c.hline(px(x0), px(x1), py(t), GRID);
        }
        for layer in &self.layers {
            match layer {
                Layer::Bars(bars, color) => {
                    for b in bars {
                        let base = py(0.0f64.clamp(y0, y1));
                        c.fill(px(b.x0), px(b.x1), py(b.height), base, *color, clip);
                        let dark = color.map(|v| v / 2);
                        c.outline(px(b.x0), px(b.x1), py(b.height), base, dark, clip);
                    }
                }
                Layer::Line(points, color) => {
                    for w in points.windows(2) {
                        c.segment((px(w[0].0), py(w[0].1)), (px(w[1].0), py(w[1].1)), *color, clip);
                    }
                }
            }
        }
        // Axes, ticks and labels.
        let (ax, ay) = (LEFT as f64 - 1.0, TOP as f64 + ph);
        c.hline(ax, px(x1), ay, BLACK);
        c.vline(ax, TOP as f64, ay, BLACK);
        let (xs, ys) = (step(x0, x1), step(y0, y1));
        for &t in &xt {
            c.vline(px(t), ay, ay + 5.0, BLACK);
            c.text(&label(t, xs), px(t) as i64, (ay + 8.0) as i64, Align::Center);
        }
        for &t in &yt {
            c.hline(ax - 5.0, ax, py(t), BLACK);
            c.text(&label(t, ys), ax as i64 - 8, py(t) as i64 - 5, Align::Right);
        }
        c
    }

    /// Renders and writes a PNG at `path`, atomically: a temporary file beside it, then a rename.
    pub fn write_png(&self, path: &Path) -> anyhow::Result<()> {
        let canvas = self.render();
        let name =
            path.file_name().with_context(|| format!("plot path {} has no file name", path.display()))?;
        let tmp = path.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
        let write = || -> anyhow::Result<()> {
            let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
            let mut enc = png::Encoder::new(&mut out, canvas.width as u32, canvas.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header()?.write_image_data(&canvas.rgb)?;
            out.flush()?;
            Ok(())
        };
        write()
            .and_then(|()| Ok(std::fs::rename(&tmp, path)?))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
            .with_context(|| format!("writing plot {}", path.display()))
    }
}

/// A range that is never empty: a point becomes ±0.5 around it (or ±5% of its size).
fn widen((lo, hi): (f64, f64)) -> (f64, f64) {
    match (lo.is_finite() && hi.is_finite(), hi > lo) {
        (true, true) => (lo, hi),
        (true, false) => (lo - 0.5f64.max(lo.abs() * 0.05), lo + 0.5f64.max(lo.abs() * 0.05)),
        (false, _) => (0.0, 1.0),
    }
}

/// A 1-2-5 tick step giving about five ticks on [lo, hi].
fn step(lo: f64, hi: f64) -> f64 {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    mag * if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    }
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let s = step(lo, hi);
    let first = (lo / s).ceil() as i64;
    (first..).map(|k| k as f64 * s).take_while(|&t| t <= hi + s * 1e-9).take(50).collect()
}

/// A tick label with as many decimals as the step needs; exponent form for huge or tiny values.
fn label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        return format!("{v:.1e}");
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

enum Align {
    Center,
    Right,
}

/// An RGB image being drawn.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

type Clip = ((f64, f64), (f64, f64));

impl Canvas {
    fn put(&mut self, x: i64, y: i64, color: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&color);
        }
    }

    fn hline(&mut self, x0: f64, x1: f64, y: f64, color: Rgb) {
        for x in x0.round() as i64..=x1.round() as i64 {
            self.put(x, y.round() as i64, color);
        }
    }

    fn vline(&mut self, x: f64, y0: f64, y1: f64, color: Rgb) {
        for y in y0.min(y1).round() as i64..=y0.max(y1).round() as i64 {
            self.put(x.round() as i64, y, color);
        }
    }

    /// Fills the rectangle between pixel columns x0..x1 and rows top..bottom, inside `clip`.
    fn fill(&mut self, x0: f64, x1: f64, top: f64, bottom: f64, color: Rgb, clip: Clip) {
        let ((cx0, cy0), (cx1, cy1)) = clip;
        let (ya, yb) = (top.min(bottom).max(cy0), top.max(bottom).min(cy1));
        for y in ya.round() as i64..yb.round() as i64 {
            for x in x0.max(cx0).round() as i64..x1.min(cx1).round() as i64 {
                self.put(x, y, color);
            }
        }
    }

    fn outline(&mut self, x0: f64, x1: f64, top: f64, bottom: f64, color: Rgb, clip: Clip) {
        let ((cx0, cy0), (cx1, cy1)) = clip;
        let top = top.clamp(cy0, cy1);
        if top >= bottom - 0.5 {
            return;
        }
        self.hline(x0.max(cx0), (x1 - 1.0).min(cx1), top, color);
        for x in [x0, x1 - 1.0] {
            if (cx0..=cx1).contains(&x) {
                self.vline(x, top, bottom - 1.0, color);
            }
        }
    }

    /// A 2-pixel-wide segment, sampled densely and clipped to the plot area.
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), color: Rgb, clip: Clip) {
        if !(a.0.is_finite() && a.1.is_finite() && b.0.is_finite() && b.1.is_finite()) {
            return;
        }
        let ((cx0, cy0), (cx1, cy1)) = clip;
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).clamp(1, 100_000) * 2;
        for i in 0..=n {
            let f = i as f64 / n as f64;
            let (x, y) = (a.0 + f * (b.0 - a.0), a.1 + f * (b.1 - a.1));
            if (cx0..=cx1).contains(&x) && (cy0..=cy1).contains(&y) {
                let (xi, yi) = (x.round() as i64, y.round() as i64);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    self.put(xi + dx, yi + dy, color);
                }
            }
        }
    }

    /// Draws `s` at scale 2 (6×10 px glyphs, 8 px advance) with its top at `y`.
    fn text(&mut self, s: &str, x: i64, y: i64, align: Align) {
        let w = s.chars().count() as i64 * 8 - 2;
        let left = match align {
            Align::Center => x - w / 2,
            Align::Right => x - w,
        };
        for (k, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        let (gx, gy) = (left + k as i64 * 8 + col * 2, y + r as i64 * 2);
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.put(gx + dx, gy + dy, BLACK);
                        }
                    }
                }
            }
        }
    }
}

/// 3×5 bitmaps (rows top to bottom, bit 2 = left column) for the characters tick labels use.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => [0; 5],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_a_density() {
        let samples: Vec<f64> = (0..1000).map(|i| (i as f64 + 0.5) / 1000.0).collect();
        let bars = histogram(&samples, 0.0, 1.0, 20);
        let area: f64 = bars.iter().map(|b| (b.x1 - b.x0) * b.height).sum();
        assert!((area - 1.0).abs() < 1e-12);
        assert!(bars.iter().all(|b| (b.height - 1.0).abs() < 1e-12));
    }

    #[test]
    fn ticks_and_labels_are_round() {
        let labels: Vec<String> = ticks(0.0, 1.0).iter().map(|&t| label(t, step(0.0, 1.0))).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(label(250.0, 50.0), "250");
        assert_eq!(label(2e-5, 1e-5), "2.0e-5");
    }

    #[test]
    fn renders_bars_and_line_inside_the_frame() {
        let fig = Figure::new(200, 120)
            .bars(vec![Bar { x0: 0.0, x1: 1.0, height: 2.0 }], BLUE)
            .line(vec![(0.0, 0.0), (1.0, 2.0)], RED);
        let c = fig.render();
        assert_eq!(c.rgb.len(), 200 * 120 * 3);
        let count = |rgb: Rgb| c.rgb.chunks(3).filter(|p| *p == rgb).count();
        assert!(count(BLUE) > 1000 && count(RED) > 100 && count(BLACK) > 100);
    }
}
