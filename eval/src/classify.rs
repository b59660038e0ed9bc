//! A deterministic classifier of a flux2-shapes picture, from the vocabulary's palette alone.
//!
//! 1. Every pixel takes the label of its nearest palette colour (squared RGB distance; ties to
//!    the first name in sorted order).
//! 2. The background is the most common label on the image border.
//! 3. The shape is the largest 4-connected region of non-background pixels; below 1 % of the
//!    image there is no shape. Its colour is the most common label inside it.
//! 4. Its kind comes from its bounding box (w × h, aspect within [0.6, 1/0.6]) and how much of
//!    the box it fills: a square fills it (≥ 0.88), a circle π/4 ≈ 0.785 (0.66–0.88), a
//!    triangle 1/2 (0.35–0.66), upright only, i.e. at most 40 % of its area in the upper half
//!    of the box (an upright triangle has 1/4 there). Anything else is no shape.
//!
//! Anti-aliased or slightly blurred edges do not matter: step 1 snaps them to one side.

use std::collections::VecDeque;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::vocabulary::Vocabulary;

/// The shape kinds the classifier knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

impl FromStr for Shape {
    type Err = crate::EvalError;
    fn from_str(s: &str) -> crate::Result<Shape> {
        Shape::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| crate::EvalError::Option {
            name: format!("shape \"{s}\""),
            msg: "unknown; the classifier knows circle, square, triangle".into(),
        })
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb {
    /// A `width × height` image filled with `color`.
    pub fn filled(width: usize, height: usize, color: [u8; 3]) -> Rgb {
        Rgb { width, height, data: color.repeat(width * height) }
    }

    /// From a runtime [3, H, W] image in [0, 1], rounded as the PNG writer rounds.
    pub fn from_chw(img: &flux2_runtime::images::Chw) -> Rgb {
        let (w, h) = (img.width, img.height);
        let mut data = vec![0u8; w * h * 3];
        for (i, px) in data.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = (img.data[c * w * h + i].clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        Rgb { width: w, height: h, data }
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// What the classifier sees; `None` where it sees nothing it can name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    pub color: Option<String>,
    pub shape: Option<Shape>,
    pub background: Option<String>,
}

/// Smallest shape, as a fraction of the image.
pub const MIN_AREA: f64 = 0.01;
/// Bounding-box aspect ratio range of a shape (w / h within [MIN_ASPECT, 1 / MIN_ASPECT]).
pub const MIN_ASPECT: f64 = 0.6;
/// Fill-ratio thresholds: square ≥ SQUARE_FILL > circle ≥ CIRCLE_FILL > triangle ≥ TRIANGLE_FILL.
pub const SQUARE_FILL: f64 = 0.88;
pub const CIRCLE_FILL: f64 = 0.66;
pub const TRIANGLE_FILL: f64 = 0.35;
/// Largest share of an upright triangle's area in the upper half of its box.
pub const UPRIGHT_TOP_SHARE: f64 = 0.4;

/// Labels each pixel with the index of its nearest palette colour.
fn labels(img: &Rgb, palette: &[[u8; 3]]) -> Vec<usize> {
    img.data
        .chunks_exact(3)
        .map(|p| {
            let d = |c: &[u8; 3]| (0..3).map(|k| (p[k] as i32 - c[k] as i32).pow(2)).sum::<i32>();
            (0..palette.len()).min_by_key(|&i| (d(&palette[i]), i)).unwrap_or(0)
        })
        .collect()
}

/// The most common value (ties to the smallest), or None for no values.
fn mode(values: impl Iterator<Item = usize>, n: usize) -> Option<usize> {
    let mut count = vec![0usize; n];
    let mut any = false;
    for v in values {
        count[v] += 1;
        any = true;
    }
    any.then(|| (0..n).max_by_key(|&i| (count[i], std::cmp::Reverse(i))).unwrap_or(0))
}

/// The largest 4-connected region of `mask` (pixel indices; ties to the first found).
fn largest_region(mask: &[bool], w: usize, h: usize) -> Vec<usize> {
    let mut seen = vec![false; mask.len()];
    let mut best: Vec<usize> = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        let mut region = vec![];
        let mut queue = VecDeque::from([start]);
        seen[start] = true;
        while let Some(i) = queue.pop_front() {
            region.push(i);
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if mask[j] && !seen[j] {
                    seen[j] = true;
                    queue.push_back(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if region.len() > best.len() {
            best = region;
        }
    }
    best
}

/// The kind of a region from its geometry (see the module docs).
pub fn shape_of(region: &[usize], w: usize) -> Option<Shape> {
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for &i in region {
        let (x, y) = (i % w, i / w);
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let (bw, bh) = ((x1 + 1 - x0) as f64, (y1 + 1 - y0) as f64);
    let aspect = bw / bh;
    if !(MIN_ASPECT..=1.0 / MIN_ASPECT).contains(&aspect) {
        return None;
    }
    let fill = region.len() as f64 / (bw * bh);
    if fill >= SQUARE_FILL {
        return Some(Shape::Square);
    }
    if fill >= CIRCLE_FILL {
        return Some(Shape::Circle);
    }
    if fill < TRIANGLE_FILL {
        return None;
    }
    // rows strictly above the box's middle line count as the upper half (half a row each way
    // for an odd height)
    let mid2 = y0 + y1; // twice the middle row
    let top = region
        .iter()
        .map(|&i| i / w)
        .map(|y| {
            if 2 * y < mid2 {
                2
            } else if 2 * y == mid2 {
                1
            } else {
                0
            }
        })
        .sum::<usize>();
    let top_share = top as f64 / (2 * region.len()) as f64;
    (top_share <= UPRIGHT_TOP_SHARE).then_some(Shape::Triangle)
}

/// Classifies `img` against the vocabulary's palette.
pub fn classify(img: &Rgb, vocab: &Vocabulary) -> Prediction {
    let names = vocab.color_names();
    let palette: Vec<[u8; 3]> = names.iter().map(|n| vocab.colors[*n]).collect();
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 || img.data.len() != w * h * 3 {
        return Prediction { color: None, shape: None, background: None };
    }
    let lab = labels(img, &palette);
    let border = (0..w).flat_map(|x| [x, (h - 1) * w + x]).chain((0..h).flat_map(|y| [y * w, y * w + w - 1]));
    let bg = mode(border.map(|i| lab[i]), names.len());
    let Some(bg) = bg else { return Prediction { color: None, shape: None, background: None } };
    let mask: Vec<bool> = lab.iter().map(|&l| l != bg).collect();
    let region = largest_region(&mask, w, h);
    let background = Some(names[bg].to_string());
    if (region.len() as f64) < MIN_AREA * (w * h) as f64 {
        return Prediction { color: None, shape: None, background };
    }
    let color = mode(region.iter().map(|&i| lab[i]), names.len()).map(|c| names[c].to_string());
    Prediction { color, shape: shape_of(&region, w), background }
}
