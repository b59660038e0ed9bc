//! The classifier on pictures drawn in Rust with known shape, colours, size and position,
//! including the edge cases of the training domain (smallest and largest sizes, shapes touching
//! the border, hard and anti-aliased edges, noise, blur) and pictures it must refuse.

use std::path::Path;

use crate::classify::{classify, Prediction, Rgb, Shape};
use crate::draw::{render, Picture};
use crate::prompts::captions;
use crate::run::{contact_sheet, Accuracy, Item};
use crate::vocabulary::{Caption, Vocabulary};

const VOCAB: &str = r#"{"template": "a {color} {shape} on a {background} background",
 "colors": {"red": [220, 40, 40], "green": [40, 170, 60], "blue": [40, 80, 220],
  "yellow": [240, 210, 40], "orange": [245, 140, 30], "purple": [140, 60, 180],
  "white": [245, 245, 245], "black": [20, 20, 20]},
 "shapes": ["circle", "square", "triangle"], "size": [64, 64], "steps": 28, "text_layers": [9, 18, 27]}"#;

fn vocab() -> Vocabulary {
    Vocabulary::from_json(VOCAB, Path::new("test.json")).unwrap()
}

fn picture(v: &Vocabulary, shape: Shape, color: &str, bg: &str, side: f64, x0: f64, y0: f64) -> Picture {
    Picture { shape, color: v.colors[color], background: v.colors[bg], side, x0, y0 }
}

fn expect(p: &Prediction, color: &str, shape: Shape, bg: &str, what: &str) {
    assert_eq!(
        (p.color.as_deref(), p.shape, p.background.as_deref()),
        (Some(color), Some(shape), Some(bg)),
        "{what}"
    );
}

#[test]
fn every_shape_and_colour_pair_at_both_size_limits() {
    let v = vocab();
    for c in v.all_captions() {
        for (side, x0, y0) in [(0.3 * 64.0, 20.0, 25.0), (0.7 * 64.0, 9.0, 10.0)] {
            let img = render(&picture(&v, c.shape, &c.color, &c.background, side, x0, y0), 64, 64, 4);
            expect(&classify(&img, &v), &c.color, c.shape, &c.background, &format!("{c:?} side {side}"));
        }
    }
}

#[test]
fn shapes_touching_the_border_and_corners() {
    let v = vocab();
    let side = 0.7 * 64.0;
    for shape in Shape::ALL {
        for (x0, y0) in [(0.0, 0.0), (64.0 - side, 64.0 - side), (0.0, 64.0 - side), (64.0 - side, 0.0)] {
            let img = render(&picture(&v, shape, "yellow", "blue", side, x0, y0), 64, 64, 4);
            expect(&classify(&img, &v), "yellow", shape, "blue", &format!("{shape:?} at ({x0}, {y0})"));
        }
    }
}

#[test]
fn hard_edges_small_shapes_and_other_sizes() {
    let v = vocab();
    for shape in Shape::ALL {
        for (w, side) in [(64, 19.2), (128, 40.0), (256, 170.0)] {
            let img = render(&picture(&v, shape, "black", "white", side, 3.0, 5.0), w, w, 1);
            expect(&classify(&img, &v), "black", shape, "white", &format!("{shape:?} {w}px side {side}"));
        }
    }
}

/// Deterministic ±amp noise on every channel.
fn noisy(img: &Rgb, amp: i32, seed: u64) -> Rgb {
    let mut rng = crate::prompts::SplitMix::new(seed);
    let data = img
        .data
        .iter()
        .map(|&b| (b as i32 + rng.below(2 * amp as usize + 1) as i32 - amp).clamp(0, 255) as u8)
        .collect();
    Rgb { data, ..img.clone() }
}

/// 3×3 box blur (edges clamp).
fn blurred(img: &Rgb) -> Rgb {
    let (w, h) = (img.width as i64, img.height as i64);
    let mut out = img.clone();
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0u32;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (xx, yy) = ((x + dx).clamp(0, w - 1), (y + dy).clamp(0, h - 1));
                        s += img.data[((yy * w + xx) * 3 + c) as usize] as u32;
                    }
                }
                out.data[((y * w + x) * 3 + c) as usize] = (s as f64 / 9.0).round() as u8;
            }
        }
    }
    out
}

#[test]
fn noise_and_blur_do_not_change_the_verdict() {
    let v = vocab();
    for (k, shape) in Shape::ALL.into_iter().enumerate() {
        let img = render(&picture(&v, shape, "orange", "red", 24.0, 30.0, 12.0), 64, 64, 4);
        expect(
            &classify(&noisy(&img, 25, k as u64), &v),
            "orange",
            shape,
            "red",
            &format!("noisy {shape:?}"),
        );
        expect(
            &classify(&blurred(&blurred(&img)), &v),
            "orange",
            shape,
            "red",
            &format!("blurred {shape:?}"),
        );
    }
}

#[test]
fn stray_speckles_do_not_hide_the_shape() {
    let v = vocab();
    let mut img = render(&picture(&v, Shape::Circle, "green", "purple", 30.0, 17.0, 17.0), 64, 64, 4);
    for (x, y) in [(2, 2), (60, 3), (5, 58), (61, 61), (40, 4)] {
        let i = (y * 64 + x) * 3;
        img.data[i..i + 3].copy_from_slice(&v.colors["white"]);
    }
    expect(&classify(&img, &v), "green", Shape::Circle, "purple", "speckles");
}

#[test]
fn refuses_what_is_not_a_shape_of_the_domain() {
    let v = vocab();
    let bg = v.colors["blue"];
    let none = |p: &Prediction| p.shape.is_none();
    // an empty picture: background only
    let p = classify(&Rgb::filled(64, 64, bg), &v);
    assert_eq!((p.color, p.shape, p.background.as_deref()), (None, None, Some("blue")));
    // a speck below the minimum area
    let p = classify(&render(&picture(&v, Shape::Square, "red", "blue", 5.0, 30.0, 30.0), 64, 64, 1), &v);
    assert!(p.color.is_none() && none(&p), "speck: {p:?}");
    // an upside-down triangle: rotate an upright one by 180°
    let up = render(&picture(&v, Shape::Triangle, "red", "blue", 40.0, 12.0, 12.0), 64, 64, 4);
    let mut down = up.clone();
    for (i, px) in up.data.chunks_exact(3).enumerate() {
        let j = 64 * 64 - 1 - i;
        down.data[j * 3..j * 3 + 3].copy_from_slice(px);
    }
    let p = classify(&down, &v);
    assert!(none(&p) && p.color.as_deref() == Some("red"), "inverted triangle: {p:?}");
    // a wide bar
    let mut bar = Rgb::filled(64, 64, bg);
    for y in 28..36 {
        for x in 4..60 {
            bar.data[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3].copy_from_slice(&v.colors["red"]);
        }
    }
    assert!(none(&classify(&bar, &v)), "bar");
    // a thin ring (fills too little of its box)
    let mut ring = Rgb::filled(64, 64, bg);
    for y in 0..64 {
        for x in 0..64 {
            let r = ((x as f64 - 31.5).powi(2) + (y as f64 - 31.5).powi(2)).sqrt();
            if (18.0..20.0).contains(&r) {
                ring.data[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3].copy_from_slice(&v.colors["red"]);
            }
        }
    }
    assert!(none(&classify(&ring, &v)), "ring");
}

#[test]
fn off_palette_colours_snap_to_the_nearest_name() {
    let v = vocab();
    let p = Picture {
        shape: Shape::Square,
        color: [200, 60, 50],
        background: [60, 60, 200],
        side: 30.0,
        x0: 10.0,
        y0: 10.0,
    };
    expect(&classify(&render(&p, 64, 64, 1), &v), "red", Shape::Square, "blue", "near colours");
}

#[test]
fn vocabulary_captions_round_trip_and_reject_others() {
    let v = vocab();
    let all = v.all_captions();
    assert_eq!(all.len(), 3 * 8 * 7);
    for c in &all {
        assert_eq!(&v.parse(&v.caption(c)).unwrap(), c);
    }
    let c = v.parse("  A Red   circle on a BLUE background ").unwrap();
    assert_eq!(c, Caption { color: "red".into(), shape: Shape::Circle, background: "blue".into() });
    for bad in [
        "a red circle on a red background",
        "a pink circle on a blue background",
        "a red hexagon on a blue background",
        "red circle",
    ] {
        let e = v.parse(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("circle, square, triangle"), "{e}");
    }
}

#[test]
fn vocabulary_errors_name_the_problem() {
    let p = Path::new("v.json");
    let bad = |json: &str| Vocabulary::from_json(json, p).unwrap_err().to_string();
    assert!(bad("{}").contains("v.json"));
    let base: serde_json::Value = serde_json::from_str(VOCAB).unwrap();
    let with = |k: &str, val: serde_json::Value| {
        let mut b = base.clone();
        b[k] = val;
        bad(&b.to_string())
    };
    assert!(with("template", "a {color} thing".into()).contains("{shape}"));
    assert!(with("shapes", serde_json::json!(["hexagon"])).contains("hexagon"));
    assert!(with("size", serde_json::json!([60, 64])).contains("multiples of 16"));
    assert!(with("steps", 0.into()).contains("steps"));
    assert!(with("guidance", serde_json::json!(-1.0)).contains("guidance -1"));
    let mut b = base.clone();
    b["guidance"] = serde_json::json!(2.5);
    assert_eq!(Vocabulary::from_json(&b.to_string(), p).unwrap().guidance, Some(2.5));
    b.as_object_mut().unwrap().remove("guidance");
    assert_eq!(Vocabulary::from_json(&b.to_string(), p).unwrap().guidance, None, "guidance is optional");
}

#[test]
fn seeded_captions_are_reproducible_and_valid() {
    let v = vocab();
    let a = captions(&v, 300, 5);
    assert_eq!(a, captions(&v, 300, 5));
    assert_ne!(a, captions(&v, 300, 6));
    assert!(a.iter().all(|c| c.color != c.background));
    for shape in Shape::ALL {
        let n = a.iter().filter(|c| c.shape == shape).count();
        assert!((60..140).contains(&n), "{shape:?}: {n} of 300");
    }
    for name in v.color_names() {
        assert!(a.iter().any(|c| c.background == name) && a.iter().any(|c| c.color == name), "{name}");
    }
}

#[test]
fn accuracy_and_contact_sheet() {
    let v = vocab();
    let c = Caption { color: "red".into(), shape: Shape::Square, background: "blue".into() };
    let right =
        Prediction { color: Some("red".into()), shape: Some(Shape::Square), background: Some("blue".into()) };
    let wrong_shape = Prediction { shape: Some(Shape::Circle), ..right.clone() };
    let nothing = Prediction { color: None, shape: None, background: Some("blue".into()) };
    let items: Vec<Item> = [right, wrong_shape, nothing]
        .into_iter()
        .map(|p| Item::score(v.caption(&c), 0, c.clone(), p))
        .collect();
    let a = Accuracy::of(&items);
    assert_eq!((a.color, a.shape, a.background, a.all), (2.0 / 3.0, 1.0 / 3.0, 1.0, 1.0 / 3.0));
    let img = Rgb::filled(16, 16, [1, 2, 3]);
    let sheet = contact_sheet(&[img.clone(), img.clone(), img], &[true, false, true], 2);
    assert_eq!((sheet.width, sheet.height), (2 * 20, 2 * 20));
    assert_eq!(sheet.pixel(0, 0), [30, 200, 60]);
    assert_eq!(sheet.pixel(20, 0), [230, 30, 30]);
    assert_eq!(sheet.pixel(5, 5), [1, 2, 3]);
    assert_eq!(sheet.pixel(25, 25), [255, 255, 255]);
}

#[test]
fn resolutions_override_the_defaults_per_size() {
    let with = VOCAB.replace(
        r#""text_layers": [9, 18, 27]}"#,
        r#""text_layers": [9, 18, 27], "guidance": 2.0,
           "resolutions": [{"size": [64, 64], "steps": 24}, {"size": [128, 128], "guidance": 3.0, "shift": "fixed:6"}]}"#,
    );
    let v = Vocabulary::from_json(&with, Path::new("test.json")).unwrap();
    assert_eq!(v.sizes(), vec![[64, 64], [128, 128]]);
    let at = |w, h| v.settings_at(w, h);
    assert_eq!((at(64, 64).steps, at(64, 64).guidance, at(64, 64).shift), (24, Some(2.0), None));
    assert_eq!((at(128, 128).steps, at(128, 128).guidance), (28, Some(3.0)));
    assert_eq!(at(128, 128).shift.as_deref(), Some("fixed:6"));
    assert_eq!((at(96, 96).steps, at(96, 96).guidance, at(96, 96).shift), (28, Some(2.0), None));
    assert_eq!(vocab().sizes(), vec![[64, 64]]);
    for (bad, what) in [
        (r#"[{"size": [64, 60]}]"#, "multiples of 16"),
        (r#"[{"size": [64, 64], "steps": 0}]"#, "steps"),
        (r#"[{"size": [64, 64], "guidance": -1}]"#, "guidance"),
        (r#"[{"size": [64, 64], "shift": "fixed:0"}]"#, "fixed:0"),
    ] {
        let text = VOCAB.replace(
            r#""text_layers": [9, 18, 27]}"#,
            &format!(r#""text_layers": [9, 18, 27], "resolutions": {bad}}}"#),
        );
        let err = Vocabulary::from_json(&text, Path::new("v.json")).unwrap_err().to_string();
        assert!(err.contains("v.json") && err.contains("resolutions") && err.contains(what), "{err}");
    }
}
