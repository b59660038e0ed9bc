//! Decisions of every policy on synthetic residual sequences, spec parsing and its errors,
//! diffusers' ratio resampling and the polynomial fit.

use super::calibration::{nearest_interp, polyfit};
use super::policies::{poly, Fbc, Mag, Policy, Record, Start, Tea};
use super::taylor::Taylor;
use super::CacheSpec;

/// Runs `policy` over `steps` steps where the first block's image residual is `head(step)` and
/// the remaining blocks add `body(step)`; returns the steps that ran every block.
fn full_steps(
    policy: &mut dyn Policy,
    steps: usize,
    head: impl Fn(usize) -> Vec<f32>,
    body: impl Fn(usize) -> Vec<f32>,
) -> Vec<usize> {
    let mut full = vec![];
    for s in 0..steps {
        let img_in = vec![0.0; head(s).len()];
        let img = head(s);
        let start = policy.start(s, Some(&img)); // probe: any signal that changes like the head
        let run_body = match start {
            Start::Full => true,
            Start::Head => policy.after_head(s, &img_in, &img),
            Start::Skip => false,
        };
        if run_body {
            let out: Vec<f32> = img.iter().zip(body(s)).map(|(a, b)| a + b).collect();
            policy.full(s, &img_in, &img, &out);
            full.push(s);
        } else {
            let head = (start == Start::Head).then_some((&img_in[..], &img[..]));
            assert!(policy.reuse(s, head).is_ok(), "step {s}: nothing to reuse");
        }
    }
    full
}

#[test]
fn fbc_compares_against_the_last_full_step() {
    // the head residual grows 3 % per step: the drift from the last full step accumulates
    let head = |s: usize| vec![1.03f32.powi(s as i32); 8];
    let body = |_| vec![0.5f32; 8];
    let got = full_steps(&mut Fbc::new(0.05), 10, head, body);
    // step 0 computes; 1 (3 %) skips; 2 (6.1 % > 5 %) computes; then every second step
    assert_eq!(got, vec![0, 2, 4, 6, 8]);
    assert_eq!(full_steps(&mut Fbc::new(0.0), 5, head, body), vec![0, 1, 2, 3, 4]);
    assert_eq!(full_steps(&mut Fbc::new(1.0), 5, head, body), vec![0]);
}

#[test]
fn fbc_skip_adds_the_cached_remaining_residual_to_the_new_first_block() {
    let mut p = Fbc::new(0.5);
    let (x, h) = (vec![1.0f32, 2.0], vec![1.5f32, 2.5]);
    assert!(p.after_head(0, &x, &h));
    p.full(0, &x, &h, &[3.0, 5.0]); // body residual (1.5, 2.5)
    let (x2, h2) = (vec![2.0f32, 2.0], vec![2.6f32, 2.4]); // head residual (0.6, 0.4): 20 % change
    assert!(!p.after_head(1, &x2, &h2));
    let r = p.reuse(1, Some((&x2, &h2))).unwrap();
    assert!((r[0] - 2.1).abs() < 1e-6 && (r[1] - 2.9).abs() < 1e-6, "{r:?}");
}

#[test]
fn mag_follows_diffusers_accumulation_retention_and_max_skip() {
    let steps = 10;
    // ratios 1.0 except step 6; retention 0.2·10 + 0.5 → 2 steps always computed
    let mut ratios = vec![1.0f32; steps];
    ratios[6] = 0.9;
    let mut p = Mag::new(0.06, 3, 0.2, steps, ratios.clone());
    let got = full_steps(&mut p, steps, |_| vec![1.0; 4], |_| vec![1.0; 4]);
    // 2: first accumulating step skips (err 0 ≤ 0.06, residual from step 1); 2,3,4 skip (3 in a
    // row), 5 computes (4th); 6: err 0.1 > 0.06 computes; 7, 8, 9 skip
    assert_eq!(got, vec![0, 1, 5, 6]);
    let mut p = Mag::new(0.06, 1, 0.2, steps, ratios);
    let got = full_steps(&mut p, steps, |_| vec![1.0; 4], |_| vec![1.0; 4]);
    assert_eq!(got, vec![0, 1, 3, 5, 6, 8]);
}

#[test]
fn mag_discards_the_ratio_of_the_step_that_computes() {
    // every ratio 0.97: err 0.03 (skip), then 0.03 + 0.0591 > 0.06 (compute, reset)
    let mut p = Mag::new(0.06, 3, 0.0, 8, vec![0.97; 8]);
    let got = full_steps(&mut p, 8, |_| vec![1.0; 4], |_| vec![1.0; 4]);
    assert_eq!(got, vec![0, 2, 4, 6]);
}

#[test]
fn taylor_schedule_matches_diffusers() {
    let t = Taylor::new(2, 1, 3, None);
    let full: Vec<usize> = (0..24).filter(|&s| t.computes(s)).collect();
    assert_eq!(full, vec![0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]);
    let t = Taylor::new(3, 1, 3, Some(20));
    let full: Vec<usize> = (0..24).filter(|&s| t.computes(s)).collect();
    assert_eq!(full, vec![0, 1, 2, 4, 7, 10, 13, 16, 19, 20, 21, 22, 23]);
}

#[test]
fn taylor_extrapolates_a_linear_feature_exactly_at_order_1() {
    let mut p = Taylor::new(2, 1, 3, None);
    let body = |s: usize| vec![2.0 + 0.5 * s as f32, -(s as f32)];
    for s in 0..3 {
        assert_eq!(p.start(s, None), Start::Full);
        p.full(s, &[0.0, 0.0], &[0.0, 0.0], &body(s));
    }
    assert_eq!(p.start(3, None), Start::Head);
    assert!(!p.after_head(3, &[0.0, 0.0], &[1.0, 1.0]));
    let r = p.reuse(3, Some((&[0.0, 0.0], &[1.0, 1.0]))).unwrap();
    // first block residual (1, 1) + extrapolated body (3.5, -3)
    assert_eq!(r, vec![4.5, -2.0]);
}

#[test]
fn tea_accumulates_the_rescaled_change_and_always_computes_first_and_last() {
    // identity polynomial: accumulated = sum of relative input changes; 2 % per step
    let coef = vec![0.0, 0.0, 0.0, 1.0, 0.0];
    let head = |s: usize| vec![1.02f32.powi(s as i32); 4];
    let got = full_steps(&mut Tea::new(0.05, coef.clone(), 10), 10, head, |_| vec![1.0; 4]);
    // steps 1, 2 accumulate ≈ 0.0196 each; 3 passes 0.05 and computes; …; 9 is the last
    assert_eq!(got, vec![0, 3, 6, 9]);
    assert_eq!(poly(&[498.65, -283.78, 55.86, -3.82, 0.264], 0.0), 0.264);
}

#[test]
fn record_gives_diffusers_magnitude_ratios() {
    let mut p = Record::with_dim(2);
    let zero = [0.0f32; 4];
    p.start(0, Some(&[1.0; 4]));
    p.full(0, &zero, &zero, &[3.0, 4.0, 0.0, 1.0]); // token norms 5, 1
    p.start(1, Some(&[1.0; 4]));
    p.full(1, &zero, &zero, &[6.0, 8.0, 0.0, 0.5]); // 10, 0.5: ratios 2, 0.5
    let r = p.records().unwrap();
    assert_eq!(r.mag_ratios.len(), 2);
    assert_eq!(r.mag_ratios[0], 1.0);
    assert!((r.mag_ratios[1] - 1.25).abs() < 1e-6, "{:?}", r.mag_ratios);
}

#[test]
fn nearest_interp_is_diffusers() {
    let src: Vec<f32> = (0..5).map(|i| i as f32).collect();
    // scale 4/8 = 0.5: round-half-even of 0, .5, 1, 1.5, 2, ... → 0 0 1 2 2 2 3 4 4
    assert_eq!(nearest_interp(&src, 9), vec![0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 3.0, 4.0, 4.0]);
    assert_eq!(nearest_interp(&src, 1), vec![4.0]);
    assert_eq!(nearest_interp(&src, 5), src);
}

#[test]
fn polyfit_recovers_a_polynomial() {
    let c = [3.0, -2.0, 0.5, 0.1, 0.01];
    let pts: Vec<(f64, f64)> = (0..30).map(|i| i as f64 * 0.01).map(|x| (x, poly(&c, x))).collect();
    let got = polyfit(&pts, 4).unwrap();
    for (g, w) in got.iter().zip(c) {
        assert!((g - w).abs() < 1e-6 * w.abs().max(1.0), "{got:?}");
    }
    assert!(polyfit(&pts[..3], 4).is_err());
}

#[test]
fn specs_parse_with_defaults_and_errors_name_the_bad_part() {
    assert_eq!("fbc:0.08".parse::<CacheSpec>().unwrap(), CacheSpec::Fbc { threshold: 0.08 });
    assert_eq!(
        "mag:0.06".parse::<CacheSpec>().unwrap(),
        CacheSpec::Mag { threshold: 0.06, max_skip: 3, retention: 0.2 }
    );
    assert_eq!(
        "mag:0.24,5".parse::<CacheSpec>().unwrap(),
        CacheSpec::Mag { threshold: 0.24, max_skip: 5, retention: 0.2 }
    );
    assert_eq!(
        "taylor:2".parse::<CacheSpec>().unwrap(),
        CacheSpec::Taylor { interval: 2, order: 1, before: 3, after: None }
    );
    assert_eq!("tea:0.4".parse::<CacheSpec>().unwrap(), CacheSpec::Tea { threshold: 0.4 });
    for (bad, part) in [
        ("fbc", "no ':'"),
        ("fbc:x", "'x'"),
        ("fbc:-1", "-1"),
        ("mag:0.1,a", "'a'"),
        ("mag:0.1,3,2", "retention ratio 2"),
        ("mag:0.1,3,0.2,9", "at most 3"),
        ("taylor:0", "interval 0"),
        ("taylor:2,9", "order 9"),
        ("zip:1", "unknown policy 'zip'"),
    ] {
        let e = bad.parse::<CacheSpec>().unwrap_err().to_string();
        assert!(e.contains("--cache") && e.contains(part), "{bad}: {e}");
    }
}

#[test]
fn mag_and_tea_need_the_calibration() {
    let e = "mag:0.1".parse::<CacheSpec>().unwrap().policy(24, None).err().unwrap().to_string();
    assert!(e.contains("calibrate-cache"), "{e}");
    assert!("fbc:0.1".parse::<CacheSpec>().unwrap().policy(24, None).is_ok());
}
