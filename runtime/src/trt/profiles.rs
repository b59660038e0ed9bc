//! TensorRT optimisation profiles (min/opt/max of every dynamic input) from resolution
//! buckets and the number of reference images.
//!
//! The graphs name their dynamic axes (manifest `inputs[].shape`) and export ranges for them
//! (`dim_ranges`). Buckets narrow those ranges to what will actually run:
//! - `B`: 1..=`max_batch` (the pipelines run CFG as two batch-1 calls, diffusers
//!   `pipeline_flux2_klein.py`);
//! - `H`, `W` (VAE encoder, pixels) and `h`, `w` (VAE decoder, latent = pixels / 16);
//! - `S` (DiT image tokens) = (H/16)(W/16) of the output plus up to 4096 tokens per reference:
//!   diffusers `pipeline_flux2.py` resizes a reference above 1024² pixels down to that area, and
//!   16 pixels make one token (8x VAE downsampling, 2x2 patchify);
//! - everything else (`L`, the text length) keeps its exported range.
//!
//! References keep their own aspect ratio, so with `max_refs > 0` the VAE encoder profile spans
//! its whole exported H/W range. A derived range outside the exported one is an error naming the
//! bucket: the engine could not serve it.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::manifest::{DimRange, GraphEntry};

use super::options::ProfileShapes;
use super::TrtError;

/// Pixels per latent token along one side.
pub const TOKEN_PIXELS: u32 = 16;
/// Largest reference image area in pixels (diffusers `Flux2Pipeline.__call__`, step 4).
pub const REF_MAX_AREA: u64 = 1024 * 1024;
/// Tokens of one reference at most.
pub const REF_MAX_TOKENS: i64 = (REF_MAX_AREA / (TOKEN_PIXELS as u64 * TOKEN_PIXELS as u64)) as i64;
/// Buckets used when `--buckets` is not given (all multiples of 16, ~0.25 to 1 megapixel).
pub const DEFAULT_BUCKETS: &[&str] =
    &["1024x1024", "512x512", "768x768", "1360x768", "768x1360", "1152x896", "896x1152"];

/// An output resolution, `WxH` in pixels.
///
/// ```
/// use flux2_runtime::trt::Bucket;
/// let b: Bucket = "1360x768".parse().unwrap();
/// assert_eq!(b.tokens(), 85 * 48);
/// assert!("1000x1000".parse::<Bucket>().is_err()); // not a multiple of 16
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    pub width: u32,
    pub height: u32,
}

impl Bucket {
    /// Image tokens of the DiT at this size.
    pub fn tokens(self) -> i64 {
        (self.width / TOKEN_PIXELS) as i64 * (self.height / TOKEN_PIXELS) as i64
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Bucket {
    type Err = TrtError;
    fn from_str(s: &str) -> Result<Self, TrtError> {
        let bad = |msg: String| TrtError::Bucket { value: s.to_string(), msg };
        let (w, h) =
            s.trim().split_once(['x', 'X']).ok_or_else(|| bad("expected WxH, e.g. 1024x768".into()))?;
        let parse =
            |v: &str| v.trim().parse::<u32>().map_err(|_| bad(format!("'{v}' is not a whole number")));
        let (width, height) = (parse(w)?, parse(h)?);
        for (side, v) in [("width", width), ("height", height)] {
            if v == 0 || v % TOKEN_PIXELS != 0 {
                return Err(bad(format!("{side} {v} must be a positive multiple of {TOKEN_PIXELS}")));
            }
        }
        Ok(Bucket { width, height })
    }
}

/// What the engines must serve.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShapePlan {
    pub buckets: Vec<Bucket>,
    /// The shape TensorRT tunes for.
    pub opt: Bucket,
    pub max_refs: u32,
    pub max_batch: i64,
    /// One optimisation profile per bucket instead of one spanning all of them.
    pub per_bucket: bool,
}

impl ShapePlan {
    /// Checks the plan; `opt` defaults to 1024x1024 when listed, else the first bucket.
    pub fn new(
        buckets: Vec<Bucket>,
        opt: Option<Bucket>,
        max_refs: u32,
        max_batch: i64,
        per_bucket: bool,
    ) -> Result<ShapePlan, TrtError> {
        let mut unique: Vec<Bucket> = Vec::new();
        for b in buckets {
            if !unique.contains(&b) {
                unique.push(b);
            }
        }
        let Some(first) = unique.first().copied() else {
            return Err(TrtError::Bucket { value: String::new(), msg: "no buckets given".into() });
        };
        let square = Bucket { width: 1024, height: 1024 };
        let opt = opt.unwrap_or(if unique.contains(&square) { square } else { first });
        if !unique.contains(&opt) {
            return Err(TrtError::Bucket {
                value: opt.to_string(),
                msg: "--opt must be one of --buckets".into(),
            });
        }
        if max_batch < 1 {
            return Err(TrtError::Option {
                name: "--max-batch".into(),
                msg: format!("{max_batch} is below 1"),
            });
        }
        Ok(ShapePlan { buckets: unique, opt, max_refs, max_batch, per_bucket })
    }
}

/// min/opt/max of one input in one profile.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputShape {
    pub name: String,
    pub min: Vec<i64>,
    pub opt: Vec<i64>,
    pub max: Vec<i64>,
}

/// The profiles of one graph (empty when every input is static).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GraphProfiles {
    pub profiles: Vec<Vec<InputShape>>,
}

impl GraphProfiles {
    /// ORT's `trt_profile_{min,opt,max}_shapes` strings; None for a fully static graph.
    pub fn shapes(&self) -> Option<ProfileShapes> {
        let join = |f: &dyn Fn(&InputShape) -> &Vec<i64>| {
            let parts: Vec<String> = self
                .profiles
                .iter()
                .flatten()
                .map(|s| {
                    let dims: Vec<String> = f(s).iter().map(|d| d.to_string()).collect();
                    format!("{}:{}", s.name, dims.join("x"))
                })
                .collect();
            parts.join(",")
        };
        if self.profiles.iter().all(|p| p.is_empty()) {
            return None;
        }
        Some(ProfileShapes { min: join(&|s| &s.min), opt: join(&|s| &s.opt), max: join(&|s| &s.max) })
    }
}

/// Profiles of graph `graph` (manifest key) for `plan`.
pub fn graph_profiles(graph: &str, entry: &GraphEntry, plan: &ShapePlan) -> Result<GraphProfiles, TrtError> {
    let groups: Vec<Vec<Bucket>> = if plan.per_bucket {
        plan.buckets.iter().map(|b| vec![*b]).collect()
    } else {
        vec![plan.buckets.clone()]
    };
    let mut profiles = Vec::new();
    for group in &groups {
        let opt = if group.contains(&plan.opt) { plan.opt } else { group[0] };
        let mut ranges: BTreeMap<String, DimRange> = BTreeMap::new();
        let mut shapes = Vec::new();
        for input in &entry.inputs {
            if input.name.contains([':', ',']) {
                return Err(TrtError::Profile {
                    graph: graph.into(),
                    input: input.name.clone(),
                    msg: "input names with ':' or ',' cannot be written in ORT's profile syntax".into(),
                });
            }
            let mut s = InputShape { name: input.name.clone(), min: vec![], opt: vec![], max: vec![] };
            let mut dynamic = false;
            for dim in &input.shape {
                let r = match dim.parse::<i64>() {
                    Ok(n) => DimRange { min: n, opt: n, max: n },
                    Err(_) => {
                        dynamic = true;
                        if !ranges.contains_key(dim) {
                            let r = symbol_range(graph, &input.name, dim, entry, plan, group, opt)?;
                            ranges.insert(dim.clone(), r);
                        }
                        ranges[dim]
                    }
                };
                s.min.push(r.min);
                s.opt.push(r.opt);
                s.max.push(r.max);
            }
            if dynamic {
                shapes.push(s);
            }
        }
        profiles.push(shapes);
    }
    Ok(GraphProfiles { profiles })
}

/// The range of one named axis, derived from the buckets where the axis is a resolution.
fn symbol_range(
    graph: &str,
    input: &str,
    symbol: &str,
    entry: &GraphEntry,
    plan: &ShapePlan,
    group: &[Bucket],
    opt: Bucket,
) -> Result<DimRange, TrtError> {
    let err = |msg: String| TrtError::Profile { graph: graph.into(), input: input.into(), msg };
    let exported = entry.dim_ranges.get(symbol).ok_or_else(|| {
        err(format!(
            "axis '{symbol}' has no exported range in the manifest (dim_ranges), so it has no profile"
        ))
    })?;
    let over = |f: &dyn Fn(Bucket) -> i64| DimRange {
        min: group.iter().map(|b| f(*b)).min().unwrap_or(0),
        opt: f(opt),
        max: group.iter().map(|b| f(*b)).max().unwrap_or(0),
    };
    let encoder_refs = plan.max_refs > 0 && graph == "vae_encoder";
    let derived = match symbol {
        "B" => DimRange { min: 1, opt: 1, max: plan.max_batch },
        "H" | "W" if encoder_refs => {
            let side = |b: Bucket| if symbol == "H" { b.height as i64 } else { b.width as i64 };
            DimRange {
                min: exported.min,
                opt: side(opt).clamp(exported.min, exported.max),
                max: exported.max,
            }
        }
        "H" => over(&|b| b.height as i64),
        "W" => over(&|b| b.width as i64),
        "h" => over(&|b| (b.height / TOKEN_PIXELS) as i64),
        "w" => over(&|b| (b.width / TOKEN_PIXELS) as i64),
        "S" => {
            let r = over(&|b| b.tokens());
            DimRange { max: r.max + plan.max_refs as i64 * REF_MAX_TOKENS, ..r }
        }
        _ => *exported,
    };
    if derived.min < exported.min || derived.max > exported.max {
        let what = match symbol {
            "B" => format!("--max-batch {}", plan.max_batch),
            "S" if plan.max_refs > 0 => {
                format!("buckets {} with {} reference(s)", list(group), plan.max_refs)
            }
            _ => format!("buckets {}", list(group)),
        };
        return Err(err(format!(
            "{what} need {symbol} in {}..={}, but the graph was exported for {symbol} in {}..={}",
            derived.min, derived.max, exported.min, exported.max
        )));
    }
    if !(1 <= derived.min && derived.min <= derived.opt && derived.opt <= derived.max) {
        return Err(err(format!(
            "axis '{symbol}' range min {} opt {} max {} is not ordered",
            derived.min, derived.opt, derived.max
        )));
    }
    Ok(derived)
}

fn list(buckets: &[Bucket]) -> String {
    buckets.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::IoSpec;

    fn entry(inputs: &[(&str, &[&str])], ranges: &[(&str, i64, i64, i64)]) -> GraphEntry {
        GraphEntry {
            file: "g.onnx".into(),
            component: "transformer".into(),
            dtype: "f32".into(),
            weights: "copy".into(),
            target: "tensorrt".into(),
            parameters: 0,
            inputs: inputs
                .iter()
                .map(|(n, s)| IoSpec {
                    name: n.to_string(),
                    dtype: "f32".into(),
                    shape: s.iter().map(|d| d.to_string()).collect(),
                })
                .collect(),
            outputs: vec![],
            dim_ranges: ranges
                .iter()
                .map(|(k, min, opt, max)| (k.to_string(), DimRange { min: *min, opt: *opt, max: *max }))
                .collect(),
            precision: None,
        }
    }

    fn buckets(s: &[&str]) -> Vec<Bucket> {
        s.iter().map(|b| b.parse().unwrap()).collect()
    }

    #[test]
    fn dit_tokens_cover_buckets_and_references() {
        let e = entry(
            &[
                ("hidden_states", &["B", "S", "128"]),
                ("encoder_hidden_states", &["B", "L", "64"]),
                ("t", &["1"]),
            ],
            &[("B", 1, 1, 4), ("S", 1, 4096, 20480), ("L", 1, 512, 512)],
        );
        let plan = ShapePlan::new(buckets(&["512x512", "1360x768", "1024x1024"]), None, 2, 1, false).unwrap();
        let p = graph_profiles("transformer", &e, &plan).unwrap().shapes().unwrap();
        // 512² = 1024 tokens; 1360x768 = 85*48 = 4080; 1024² = 4096 (+ 2 refs of 4096)
        assert_eq!(p.min, "hidden_states:1x1024x128,encoder_hidden_states:1x1x64");
        assert_eq!(p.opt, "hidden_states:1x4096x128,encoder_hidden_states:1x512x64");
        assert_eq!(p.max, "hidden_states:1x12288x128,encoder_hidden_states:1x512x64");
    }

    #[test]
    fn vae_profiles_per_bucket() {
        let e = entry(
            &[("latents", &["B", "128", "h", "w"])],
            &[("B", 1, 1, 4), ("h", 4, 64, 128), ("w", 4, 64, 128)],
        );
        let plan = ShapePlan::new(buckets(&["1024x768", "768x1024"]), None, 0, 2, true).unwrap();
        let p = graph_profiles("vae_decoder", &e, &plan).unwrap().shapes().unwrap();
        assert_eq!(p.min, "latents:1x128x48x64,latents:1x128x64x48");
        assert_eq!(p.opt, "latents:1x128x48x64,latents:1x128x64x48");
        assert_eq!(p.max, "latents:2x128x48x64,latents:2x128x64x48");
    }

    #[test]
    fn out_of_range_buckets_and_missing_ranges_are_named() {
        let e = entry(
            &[("latents", &["B", "128", "h", "w"])],
            &[("B", 1, 1, 4), ("h", 4, 64, 128), ("w", 4, 64, 128)],
        );
        let plan = ShapePlan::new(buckets(&["4096x1024"]), None, 0, 1, false).unwrap();
        let msg = graph_profiles("vae_decoder", &e, &plan).unwrap_err().to_string();
        assert!(
            msg.contains("4096x1024") && msg.contains("latents") && msg.contains("w in 4..=128"),
            "{msg}"
        );
        let e = entry(&[("latents", &["B", "128", "h", "w"])], &[("B", 1, 1, 4), ("h", 4, 64, 128)]);
        let plan = ShapePlan::new(buckets(&["1024x1024"]), None, 0, 1, false).unwrap();
        let msg = graph_profiles("vae_decoder", &e, &plan).unwrap_err().to_string();
        assert!(msg.contains("'w'") && msg.contains("latents"), "{msg}");
    }

    #[test]
    fn bucket_syntax() {
        assert_eq!("1360x768".parse::<Bucket>().unwrap(), Bucket { width: 1360, height: 768 });
        for bad in ["1000x1000", "1024", "0x16", "axb", "1024x-16"] {
            let e = bad.parse::<Bucket>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert!(ShapePlan::new(vec![], None, 0, 1, false).is_err());
        assert!(
            ShapePlan::new(buckets(&["512x512"]), Some("1024x1024".parse().unwrap()), 0, 1, false).is_err()
        );
    }
}
