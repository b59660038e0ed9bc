//! Draws flux2-shapes pictures in Rust, with the training set's geometry (train/shapes.py):
//! a circle (diameter `side`), an axis-aligned square, or an upright isosceles triangle (base
//! `side` at the bottom, apex at the top centre, height `side`), in the box
//! [x0, x0 + side] × [y0, y0 + side], anti-aliased by `ss × ss` supersampling. Used to test the
//! classifier on known pictures; `ss = 1` gives hard edges.

use crate::classify::{Rgb, Shape};

/// Whether the point (u, v) of the unit box (v downwards) is inside `shape`.
pub fn inside(shape: Shape, u: f64, v: f64) -> bool {
    let in_box = (0.0..=1.0).contains(&u) && (0.0..=1.0).contains(&v);
    match shape {
        Shape::Square => in_box,
        Shape::Circle => (u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.25,
        Shape::Triangle => in_box && (u - 0.5).abs() <= 0.5 * v,
    }
}

/// A picture of `shape` in `color` on `background`.
#[derive(Clone, Copy, Debug)]
pub struct Picture {
    pub shape: Shape,
    pub color: [u8; 3],
    pub background: [u8; 3],
    pub side: f64,
    pub x0: f64,
    pub y0: f64,
}

/// Renders `p` on a `width × height` canvas with `ss × ss` samples per pixel (ss ≥ 1).
pub fn render(p: &Picture, width: usize, height: usize, ss: usize) -> Rgb {
    let ss = ss.max(1);
    let mut img = Rgb::filled(width, height, p.background);
    for y in 0..height {
        for x in 0..width {
            let mut hits = 0usize;
            for sy in 0..ss {
                for sx in 0..ss {
                    let px = x as f64 + (sx as f64 + 0.5) / ss as f64;
                    let py = y as f64 + (sy as f64 + 0.5) / ss as f64;
                    hits += inside(p.shape, (px - p.x0) / p.side, (py - p.y0) / p.side) as usize;
                }
            }
            let a = hits as f64 / (ss * ss) as f64;
            let i = (y * width + x) * 3;
            for c in 0..3 {
                let v = a * p.color[c] as f64 + (1.0 - a) * p.background[c] as f64;
                img.data[i + c] = v.round() as u8;
            }
        }
    }
    img
}
