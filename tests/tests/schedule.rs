//! The sampling schedule against diffusers 0.42.1 (`tests/fixtures/schedule.json`, made by
//! `tests/fixtures/gen_schedule.py`), the α-shift's properties for every `Shift`, the Euler step
//! and the error messages.

use flux2_runtime::schedule::{
    base_grid, empirical_mu, euler_step, latent_grid, Schedule, ScheduleError, Shift, DEFAULT_BASE_TOKENS,
};
use flux2_tests::fixture;
use serde_json::Value;

struct Case {
    width: usize,
    height: usize,
    steps: usize,
    grid: [usize; 2],
    image_seq_len: usize,
    mu: f64,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let text =
        std::fs::read_to_string(fixture("schedule.json")).expect("reading tests/fixtures/schedule.json");
    let doc: Value = serde_json::from_str(&text).expect("parsing schedule.json");
    let floats = |v: &Value| -> Vec<f32> {
        v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
    };
    let int = |v: &Value| v.as_u64().expect("integer") as usize;
    let cases: Vec<Case> = doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            width: int(&c["width"]),
            height: int(&c["height"]),
            steps: int(&c["steps"]),
            grid: [int(&c["latent_grid"][0]), int(&c["latent_grid"][1])],
            image_seq_len: int(&c["image_seq_len"]),
            mu: c["mu"].as_f64().expect("mu"),
            sigmas: floats(&c["sigmas"]),
            timesteps: floats(&c["timesteps"]),
        })
        .collect();
    assert!(cases.len() >= 50, "schedule.json has only {} cases", cases.len());
    cases
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

#[test]
fn empirical_matches_diffusers() {
    let cases = cases();
    assert!(cases.iter().any(|c| c.image_seq_len > 4300) && cases.iter().any(|c| c.image_seq_len <= 4300));
    for c in &cases {
        let id = format!("{}x{} N={}", c.width, c.height, c.steps);
        assert_eq!(latent_grid(c.width, c.height), c.grid, "{id}: latent grid");
        assert_eq!(c.grid[0] * c.grid[1], c.image_seq_len, "{id}: fixture tokens");
        assert!((empirical_mu(c.image_seq_len, c.steps) - c.mu).abs() <= 1e-6, "{id}: empirical_mu");

        let s = Schedule::for_tokens(c.image_seq_len, c.steps, Shift::Empirical).unwrap();
        assert!((s.mu - c.mu).abs() <= 1e-6, "{id}: mu {} vs {}", s.mu, c.mu);
        assert!((s.alpha - c.mu.exp()).abs() <= 1e-9 * s.alpha, "{id}: alpha");
        assert_eq!(s.steps(), c.steps);
        let err = max_abs(&s.sigmas, &c.sigmas);
        assert!(err <= 1e-6, "{id}: sigmas differ by {err}\n got {:?}\nwant {:?}", s.sigmas, c.sigmas);
        let err = max_abs(&s.timesteps(), &c.timesteps);
        assert!(err <= 1e-3, "{id}: timesteps (sigma*1000) differ by {err}");

        // from pixels: the same schedule for sizes the pipeline accepts, an error naming the side otherwise
        match Schedule::new(c.width, c.height, c.steps, Shift::Empirical) {
            Ok(p) => assert_eq!(p, s, "{id}: Schedule::new vs for_tokens"),
            Err(e) => {
                let bad = if !c.width.is_multiple_of(16) { ("width", c.width) } else { ("height", c.height) };
                let msg = e.to_string();
                assert!(msg.contains(bad.0) && msg.contains(&bad.1.to_string()), "{id}: error '{msg}'");
            }
        }
    }
}

/// Evaluated in float32 in the reference's operation order, the schedule is not just close but
/// identical to the float32 values diffusers produces.
#[test]
fn empirical_is_bit_exact() {
    for c in cases() {
        let s = Schedule::for_tokens(c.image_seq_len, c.steps, Shift::Empirical).unwrap();
        let id = format!("{}x{} N={}", c.width, c.height, c.steps);
        assert_eq!(s.mu, c.mu, "{id}: mu");
        assert_eq!(s.sigmas, c.sigmas, "{id}: sigmas");
        assert_eq!(s.timesteps(), c.timesteps, "{id}: timesteps");
    }
}

fn logit(x: f64) -> f64 {
    (x / (1.0 - x)).ln()
}

/// σ_0 = 1, σ_N = 0, strictly decreasing, and logit(σ_i) − logit(t_i) = ln α = μ up to float32
/// rounding: σ = α/(α + d) with d = 1/t − 1 gives logit σ = ln α − ln d exactly, and in float32 d
/// carries a relative error ≲ ε/(1−t) (cancellation), α, the sum and the quotient ε/2 each, and
/// rounding σ moves its logit by ≲ (ε/2)/(1−σ).
fn check_alpha_shift(s: &Schedule, steps: usize, id: &str) {
    assert_eq!(s.sigmas.len(), steps + 1, "{id}: length");
    assert_eq!(s.sigmas[0], 1.0, "{id}: sigma_0");
    assert_eq!(s.sigmas[steps], 0.0, "{id}: terminal sigma");
    assert!(s.sigmas.windows(2).all(|w| w[1] < w[0]), "{id}: not decreasing: {:?}", s.sigmas);
    assert!((s.mu - s.alpha.ln()).abs() <= 1e-12 * s.mu.abs().max(1.0), "{id}: mu != ln alpha");
    let eps = f32::EPSILON as f64;
    for (i, (&sg, &ti)) in s.sigmas.iter().zip(&base_grid(steps)).enumerate().skip(1) {
        let (sg, ti) = (sg as f64, ti as f64);
        let tol = 2.0 * eps / (1.0 - ti) + eps / (1.0 - sg) + 3.0 * eps;
        let d = logit(sg) - logit(ti) - s.mu;
        assert!(d.abs() <= tol, "{id}: step {i}: logit shift off by {d} (tol {tol})");
    }
}

const SIZES: [(usize, usize); 6] =
    [(64, 64), (512, 512), (1024, 1024), (1360, 768), (1152, 1152), (2048, 2048)];
const STEPS: [usize; 6] = [1, 2, 4, 9, 28, 50];

#[test]
fn resolution_shift_is_sqrt_token_ratio() {
    for base in [DEFAULT_BASE_TOKENS, 256, 4096] {
        for (w, h) in SIZES {
            for n in STEPS {
                let s = Schedule::new(w, h, n, Shift::Resolution { base_tokens: base }).unwrap();
                let m = (w / 16 * (h / 16)) as f64;
                let id = format!("resolution:{base} {w}x{h} N={n}");
                assert!((s.alpha - (m / base as f64).sqrt()).abs() <= 1e-12 * s.alpha, "{id}: alpha");
                check_alpha_shift(&s, n, &id);
            }
        }
    }
    // twice the side length doubles alpha
    let a = Schedule::new(512, 512, 4, Shift::Resolution { base_tokens: 64 }).unwrap().alpha;
    let b = Schedule::new(1024, 1024, 4, Shift::Resolution { base_tokens: 64 }).unwrap().alpha;
    assert!((b / a - 2.0).abs() < 1e-12 && (b - 8.0).abs() < 1e-12, "alphas {a} {b}");
}

#[test]
fn fixed_and_empirical_shifts_translate_logits() {
    for alpha in [0.25, 1.0, 3.0, 7.5, 40.0] {
        for n in STEPS {
            let s = Schedule::new(768, 1024, n, Shift::Fixed(alpha)).unwrap();
            assert_eq!(s.alpha, alpha);
            check_alpha_shift(&s, n, &format!("fixed:{alpha} N={n}"));
        }
    }
    for (w, h) in SIZES {
        for n in STEPS {
            let s = Schedule::new(w, h, n, Shift::Empirical).unwrap();
            check_alpha_shift(&s, n, &format!("empirical {w}x{h} N={n}"));
        }
    }
    // alpha = 1 leaves the grid alone; larger alpha means more noise at every step
    let t = base_grid(8);
    let one = Schedule::new(256, 256, 8, Shift::Fixed(1.0)).unwrap();
    assert!(max_abs(&one.sigmas[..8], &t) <= 1e-7);
    let three = Schedule::new(256, 256, 8, Shift::Fixed(3.0)).unwrap();
    assert!(three.sigmas[1..8].iter().zip(&one.sigmas[1..8]).all(|(a, b)| a > b));
}

#[test]
fn shift_parses_and_names_bad_values() {
    assert_eq!("empirical".parse::<Shift>().unwrap(), Shift::Empirical);
    assert_eq!(
        "resolution".parse::<Shift>().unwrap(),
        Shift::Resolution { base_tokens: DEFAULT_BASE_TOKENS }
    );
    assert_eq!("resolution:256".parse::<Shift>().unwrap(), Shift::Resolution { base_tokens: 256 });
    assert_eq!("fixed:3.5".parse::<Shift>().unwrap(), Shift::Fixed(3.5));
    for s in [Shift::Empirical, Shift::Resolution { base_tokens: 99 }, Shift::Fixed(2.5)] {
        assert_eq!(s.to_string().parse::<Shift>().unwrap(), s, "round trip of {s}");
    }
    for bad in
        ["", "linear", "fixed", "fixed:", "fixed:-2", "fixed:0", "fixed:inf", "fixed:abc", "resolution:0"]
    {
        let err = bad.parse::<Shift>().unwrap_err().to_string();
        assert!(err.contains(&format!("'{bad}'")), "error for '{bad}' does not name it: {err}");
    }
    let err = "resolution:-5".parse::<Shift>().unwrap_err().to_string();
    assert!(err.contains("-5") && err.contains("resolution"), "{err}");
}

#[test]
fn bad_sizes_and_steps_name_the_option() {
    let msg = |e: ScheduleError| e.to_string();
    let e = msg(Schedule::new(1000, 512, 4, Shift::Empirical).unwrap_err());
    assert!(e.contains("width") && e.contains("1000") && e.contains("992"), "{e}");
    let e = msg(Schedule::new(512, 0, 4, Shift::Empirical).unwrap_err());
    assert!(e.contains("height") && e.contains('0'), "{e}");
    let e = msg(Schedule::new(512, 8, 4, Shift::Empirical).unwrap_err());
    assert!(e.contains("height") && e.contains('8'), "{e}");
    let e = msg(Schedule::new(512, 512, 0, Shift::Empirical).unwrap_err());
    assert!(e.contains("steps"), "{e}");
    let e = msg(Schedule::for_tokens(0, 4, Shift::Empirical).unwrap_err());
    assert!(e.contains("image_seq_len"), "{e}");
}

#[test]
fn euler_step_matches_fp32_reference() {
    let v: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let x0: Vec<f32> = (0..64).map(|i| (i as f32 * 0.11).cos()).collect();
    let (sigma, sigma_next) = (0.967_384_f32, 0.908_144_f32);
    let mut x = x0.clone();
    euler_step(&mut x, &v, sigma, sigma_next).unwrap();
    let dt = sigma_next - sigma; // float32 0-d tensor arithmetic in diffusers
    for (i, ((xi, x0i), vi)) in x.iter().zip(&x0).zip(&v).enumerate() {
        assert_eq!(xi.to_bits(), (x0i + dt * vi).to_bits(), "element {i}");
    }
    let e = euler_step(&mut x, &v[..3], sigma, sigma_next).unwrap_err().to_string();
    assert!(e.contains("64") && e.contains('3'), "{e}");
}

/// On a straight path x_σ = (1−σ)·x0 + σ·ε the exact velocity is ε − x0, and Euler over any
/// schedule from σ_0 = 1 to σ_N = 0 lands on x0.
#[test]
fn euler_integrates_straight_paths_exactly() {
    let eps: Vec<f32> = flux2_runtime::noise::noise(5, &[256]);
    let x0: Vec<f32> = (0..256).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let v: Vec<f32> = eps.iter().zip(&x0).map(|(e, x)| e - x).collect();
    for shift in [Shift::Empirical, Shift::Resolution { base_tokens: 64 }, Shift::Fixed(0.5)] {
        let s = Schedule::new(1024, 768, 28, shift).unwrap();
        let mut x = eps.clone();
        for w in s.sigmas.windows(2) {
            euler_step(&mut x, &v, w[0], w[1]).unwrap();
        }
        let err = max_abs(&x, &x0);
        assert!(err < 1e-5, "{shift}: lands {err} away from x0");
    }
}
