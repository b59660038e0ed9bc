//! `--cache` values: `fbc:T`, `mag:T[,MAX_SKIP[,RETENTION]]`, `taylor:N[,ORDER[,BEFORE[,AFTER]]]`,
//! `tea:T` (defaults: diffusers 0.42.1's), parsed with errors that name the option and the bad
//! part, and turned into per-branch policy states.

use super::calibration::CacheCalibration;
use super::policies::{Fbc, Mag, Policy, Record, Tea};
use super::taylor::Taylor;
use crate::RuntimeError;

/// A step-caching policy and its settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "policy", rename_all = "lowercase")]
pub enum CacheSpec {
    Fbc {
        threshold: f32,
    },
    Mag {
        threshold: f32,
        max_skip: usize,
        retention: f64,
    },
    Taylor {
        interval: usize,
        order: usize,
        before: usize,
        after: Option<usize>,
    },
    Tea {
        threshold: f64,
    },
    /// Never skips; records MagCache ratios and TeaCache pairs (the calibration run) of a
    /// DiT of hidden size `hidden`.
    Record {
        hidden: usize,
    },
}

fn bad(msg: String) -> RuntimeError {
    RuntimeError::Input { name: "--cache".into(), msg }
}

fn num<T: std::str::FromStr>(s: &str, what: &str, whole: &str) -> Result<T, RuntimeError> {
    s.trim().parse().map_err(|_| bad(format!("'{s}' in '{whole}' is not a valid {what}")))
}

impl std::str::FromStr for CacheSpec {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<CacheSpec, RuntimeError> {
        let usage = "use fbc:THRESHOLD, mag:THRESHOLD[,MAX_SKIP[,RETENTION]], \
                     taylor:INTERVAL[,ORDER[,BEFORE[,AFTER]]] or tea:THRESHOLD";
        let (kind, args) =
            s.split_once(':').ok_or_else(|| bad(format!("'{s}' has no ':' and no settings; {usage}")))?;
        let a: Vec<&str> = args.split(',').collect();
        let at = |i: usize| a.get(i).copied().filter(|v| !v.trim().is_empty());
        let max_args = |n: usize| {
            if a.len() > n {
                Err(bad(format!("'{s}': {kind} takes at most {n} values, got {}", a.len())))
            } else {
                Ok(())
            }
        };
        let threshold = |what: &str| -> Result<f64, RuntimeError> {
            let t: f64 = num(at(0).unwrap_or(""), &format!("{what} threshold"), s)?;
            if !(t.is_finite() && t >= 0.0) {
                return Err(bad(format!("threshold {t} in '{s}' must be a finite number ≥ 0")));
            }
            Ok(t)
        };
        let spec = match kind.trim() {
            "fbc" => {
                max_args(1)?;
                CacheSpec::Fbc { threshold: threshold("fbc")? as f32 }
            }
            "mag" => {
                max_args(3)?;
                let max_skip = at(1).map(|v| num(v, "max skip count", s)).transpose()?.unwrap_or(3);
                let retention: f64 = at(2).map(|v| num(v, "retention ratio", s)).transpose()?.unwrap_or(0.2);
                if !(0.0..=1.0).contains(&retention) {
                    return Err(bad(format!("retention ratio {retention} in '{s}' is not in [0, 1]")));
                }
                CacheSpec::Mag { threshold: threshold("mag")? as f32, max_skip, retention }
            }
            "taylor" => {
                max_args(4)?;
                let interval: usize = num(at(0).unwrap_or(""), "interval", s)?;
                let order = at(1).map(|v| num(v, "order", s)).transpose()?.unwrap_or(1);
                let before = at(2).map(|v| num(v, "disable-before step", s)).transpose()?.unwrap_or(3);
                let after = at(3).map(|v| num(v, "disable-after step", s)).transpose()?;
                if interval == 0 {
                    return Err(bad(format!("interval 0 in '{s}': must be at least 1")));
                }
                if !(1..=4).contains(&order) {
                    return Err(bad(format!("order {order} in '{s}' must be 1 to 4")));
                }
                CacheSpec::Taylor { interval, order, before, after }
            }
            "tea" => {
                max_args(1)?;
                CacheSpec::Tea { threshold: threshold("tea")? }
            }
            other => return Err(bad(format!("unknown policy '{other}' in '{s}'; {usage}"))),
        };
        Ok(spec)
    }
}

impl CacheSpec {
    /// Whether the policy decides from the `dit_embed` probe before any block runs.
    pub fn needs_probe(&self) -> bool {
        matches!(self, CacheSpec::Tea { .. } | CacheSpec::Record { .. })
    }

    /// Fresh per-branch state for a generation of `steps` steps.
    pub fn policy(
        &self,
        steps: usize,
        calibration: Option<&CacheCalibration>,
    ) -> Result<Box<dyn Policy>, RuntimeError> {
        let need = |what: &str| {
            calibration.ok_or_else(|| {
                bad(format!(
                    "{} needs the model's {what}: run `flux2 calibrate-cache --model DIR` \
                     on this export first",
                    self.name()
                ))
            })
        };
        Ok(match *self {
            CacheSpec::Fbc { threshold } => Box::new(Fbc::new(threshold)),
            CacheSpec::Mag { threshold, max_skip, retention } => {
                let ratios = need("MagCache ratios")?.mag_ratios(steps).map_err(bad)?;
                Box::new(Mag::new(threshold, max_skip, retention, steps, ratios))
            }
            CacheSpec::Taylor { interval, order, before, after } => {
                Box::new(Taylor::new(interval, order, before, after))
            }
            CacheSpec::Tea { threshold } => {
                let c = need("TeaCache coefficients")?.tea_coefficients.clone();
                if c.is_empty() {
                    return Err(bad("the calibration file has no TeaCache coefficients".into()));
                }
                Box::new(Tea::new(threshold, c, steps))
            }
            CacheSpec::Record { hidden } => Box::new(Record::with_dim(hidden)),
        })
    }

    /// `fbc`, `mag`, `taylor`, `tea` or `record`.
    pub fn name(&self) -> &'static str {
        match self {
            CacheSpec::Fbc { .. } => "fbc",
            CacheSpec::Mag { .. } => "mag",
            CacheSpec::Taylor { .. } => "taylor",
            CacheSpec::Tea { .. } => "tea",
            CacheSpec::Record { .. } => "record",
        }
    }
}
