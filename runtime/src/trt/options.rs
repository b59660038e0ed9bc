//! Options of ONNX Runtime's TensorRT execution provider, as one validated struct.
//!
//! Key names are ORT 1.31's (`onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc`,
//! checked against the strings of `libonnxruntime_providers_tensorrt.so` in `onnxruntime-gpu==1.31.1`
//! and against `ort-2.0.0-rc.15/src/ep/tensorrt.rs`). [`TrtOptions::provider_options`] is the pure
//! mapping (unit-tested); [`TrtOptions::to_ep`] builds the same thing with ort's `with_*` methods.
//!
//! Rules enforced here (ORT TensorRT EP docs and source):
//! - `trt_int8_enable` only for graphs with explicit INT8 Q/DQ nodes; no calibration table is ever
//!   passed ("a table must not be given for QDQ models"), so there is no implicit INT8.
//! - FP8 has no switch: it comes from FLOAT8E4M3FN Q/DQ nodes in the graph.
//! - When dumping an EPContext model, `trt_engine_cache_path` must be relative (to the EPContext
//!   file's folder) and free of `..`, or ORT refuses ("for security purpose").
//! - `trt_ep_context_embed_mode` 0 keeps the engine in its own file and puts its relative path in
//!   the EPContext node: mode 1 embeds the bytes in the protobuf, which breaks above 2 GB.

use std::path::{Component, Path, PathBuf};

use super::TrtError;

/// min/opt/max shape strings in ORT's syntax: `name:1x4096x128,other:1x512`. A name repeated
/// in each string adds one optimisation profile per repetition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileShapes {
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// Where to dump the EPContext model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpContext {
    /// The `_ctx.onnx` file to write.
    pub file: PathBuf,
    /// 0: the node references the engine file by path (what we use); 1: engine bytes inline.
    pub embed_mode: u8,
}

/// Everything `flux2` sets on the TensorRT execution provider.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrtOptions {
    pub device_id: i32,
    /// FP16 kernels for layers without Q/DQ (TensorRT 10's weak typing).
    pub fp16: bool,
    pub bf16: bool,
    /// Only for graphs that carry explicit INT8 Q/DQ nodes.
    pub int8: bool,
    /// Engine cache folder (relative to the EPContext file's folder when dumping one).
    pub engine_cache: Option<PathBuf>,
    pub engine_cache_prefix: Option<String>,
    /// Timing cache folder (shared across graphs and builds on the same GPU).
    pub timing_cache: Option<PathBuf>,
    pub profiles: Option<ProfileShapes>,
    /// DLA core to run on (Jetson Orin); None: GPU.
    pub dla_core: Option<u32>,
    /// TensorRT builder optimisation level 0-5 (ORT default 3).
    pub builder_optimization_level: Option<u8>,
    /// Builder workspace limit in bytes (None: TensorRT's default, the device memory).
    pub max_workspace_size: Option<usize>,
    pub ep_context: Option<EpContext>,
    pub cuda_graph: bool,
    pub detailed_build_log: bool,
    /// Weight-stripped (refittable) engines: built without weights, refitted at load from the
    /// ONNX initializers of the same graph (`trt_weight_stripped_engine_enable`), so an export
    /// with other weights (a merged LoRA) reuses the engine instead of a rebuild.
    pub weight_stripped: bool,
    /// Folder of the ONNX model whose initializers refit a weight-stripped engine at load
    /// (`trt_onnx_model_folder_path`; the EPContext node names the file).
    pub onnx_model_folder: Option<PathBuf>,
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

fn path_str(name: &str, p: &Path) -> Result<String, TrtError> {
    let s = p.to_str().ok_or_else(|| TrtError::Option {
        name: name.into(),
        msg: format!("{} is not valid UTF-8", p.display()),
    })?;
    if s.is_empty() || s.contains('\0') {
        return Err(TrtError::Option { name: name.into(), msg: "empty path".into() });
    }
    Ok(s.to_string())
}

impl TrtOptions {
    /// The `(key, value)` list handed to `UpdateTensorRTProviderOptions`, after validation.
    ///
    /// ```
    /// use flux2_runtime::trt::TrtOptions;
    /// let o = TrtOptions { fp16: true, engine_cache: Some("engines".into()), ..Default::default() };
    /// let kv = o.provider_options().unwrap();
    /// assert!(kv.contains(&("trt_fp16_enable", "1".to_string())));
    /// assert!(kv.contains(&("trt_engine_cache_path", "engines".to_string())));
    /// ```
    pub fn provider_options(&self) -> Result<Vec<(&'static str, String)>, TrtError> {
        self.validate()?;
        let mut o: Vec<(&'static str, String)> = vec![("device_id", self.device_id.to_string())];
        o.push(("trt_fp16_enable", flag(self.fp16)));
        if self.bf16 {
            o.push(("trt_bf16_enable", flag(true)));
        }
        o.push(("trt_int8_enable", flag(self.int8)));
        if let Some(dir) = &self.engine_cache {
            o.push(("trt_engine_cache_enable", flag(true)));
            o.push(("trt_engine_cache_path", path_str("trt_engine_cache_path", dir)?));
        }
        if let Some(p) = &self.engine_cache_prefix {
            o.push(("trt_engine_cache_prefix", p.clone()));
        }
        if let Some(dir) = &self.timing_cache {
            o.push(("trt_timing_cache_enable", flag(true)));
            o.push(("trt_timing_cache_path", path_str("trt_timing_cache_path", dir)?));
        }
        if let Some(p) = &self.profiles {
            o.push(("trt_profile_min_shapes", p.min.clone()));
            o.push(("trt_profile_opt_shapes", p.opt.clone()));
            o.push(("trt_profile_max_shapes", p.max.clone()));
        }
        if let Some(core) = self.dla_core {
            o.push(("trt_dla_enable", flag(true)));
            o.push(("trt_dla_core", core.to_string()));
        }
        if let Some(level) = self.builder_optimization_level {
            o.push(("trt_builder_optimization_level", level.to_string()));
        }
        if let Some(bytes) = self.max_workspace_size {
            o.push(("trt_max_workspace_size", bytes.to_string()));
        }
        if let Some(ctx) = &self.ep_context {
            o.push(("trt_dump_ep_context_model", flag(true)));
            o.push(("trt_ep_context_file_path", path_str("trt_ep_context_file_path", &ctx.file)?));
            o.push(("trt_ep_context_embed_mode", ctx.embed_mode.to_string()));
        }
        if self.cuda_graph {
            o.push(("trt_cuda_graph_enable", flag(true)));
        }
        if self.detailed_build_log {
            o.push(("trt_detailed_build_log", flag(true)));
        }
        if self.weight_stripped {
            o.push(("trt_weight_stripped_engine_enable", flag(true)));
        }
        if let Some(dir) = &self.onnx_model_folder {
            o.push(("trt_onnx_model_folder_path", path_str("trt_onnx_model_folder_path", dir)?));
        }
        Ok(o)
    }

    fn validate(&self) -> Result<(), TrtError> {
        let bad = |name: &str, msg: String| Err(TrtError::Option { name: name.into(), msg });
        if self.fp16 && self.bf16 {
            return bad("trt_bf16_enable", "choose fp16 or bf16 for the unquantized layers, not both".into());
        }
        if let Some(p) = &self.profiles {
            for (which, s) in [("min", &p.min), ("opt", &p.opt), ("max", &p.max)] {
                if s.is_empty() || s.contains('\0') {
                    return bad(&format!("trt_profile_{which}_shapes"), "empty shape list".into());
                }
            }
        }
        if self.onnx_model_folder.is_some() && !self.weight_stripped {
            return bad(
                "trt_onnx_model_folder_path",
                "the ONNX weights folder only refits weight-stripped engines: enable trt_weight_stripped_engine_enable"
                    .into(),
            );
        }
        if let Some(level) = self.builder_optimization_level {
            if level > 5 {
                return bad("trt_builder_optimization_level", format!("{level} is not in 0..=5"));
            }
        }
        if self.dla_core.is_some() && !(self.fp16 || self.int8) {
            return bad("trt_dla_enable", "the DLA runs FP16 or INT8: enable fp16".into());
        }
        if let Some(prefix) = &self.engine_cache_prefix {
            if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return bad("trt_engine_cache_prefix", format!("'{prefix}' must be [A-Za-z0-9_-]+"));
            }
        }
        if let Some(ctx) = &self.ep_context {
            if ctx.embed_mode > 1 {
                return bad("trt_ep_context_embed_mode", format!("{} is not 0 or 1", ctx.embed_mode));
            }
            let Some(cache) = &self.engine_cache else {
                return bad(
                    "trt_dump_ep_context_model",
                    "an EPContext model needs the engine cache (its node points at the engine file)".into(),
                );
            };
            if cache.is_absolute() || cache.components().any(|c| matches!(c, Component::ParentDir)) {
                return bad(
                    "trt_engine_cache_path",
                    format!(
                        "{}: with an EPContext model the engine cache path must be relative to the \
                         EPContext file's folder and stay inside it (ONNX Runtime refuses others)",
                        cache.display()
                    ),
                );
            }
        }
        Ok(())
    }

    /// The TensorRT execution provider configured through ort's builder methods.
    pub fn to_ep(&self) -> Result<ort::ep::TensorRT, TrtError> {
        self.validate()?;
        let mut ep = ort::ep::TensorRT::default()
            .with_device_id(self.device_id)
            .with_fp16(self.fp16)
            .with_int8(self.int8);
        if self.bf16 {
            ep = ep.with_bf16(true);
        }
        if let Some(dir) = &self.engine_cache {
            ep = ep.with_engine_cache(true).with_engine_cache_path(path_str("trt_engine_cache_path", dir)?);
        }
        if let Some(p) = &self.engine_cache_prefix {
            ep = ep.with_engine_cache_prefix(p);
        }
        if let Some(dir) = &self.timing_cache {
            ep = ep.with_timing_cache(true).with_timing_cache_path(path_str("trt_timing_cache_path", dir)?);
        }
        if let Some(p) = &self.profiles {
            ep = ep
                .with_profile_min_shapes(&p.min)
                .with_profile_opt_shapes(&p.opt)
                .with_profile_max_shapes(&p.max);
        }
        if let Some(core) = self.dla_core {
            ep = ep.with_dla(true).with_dla_core(core);
        }
        if let Some(level) = self.builder_optimization_level {
            ep = ep.with_builder_optimization_level(level);
        }
        if let Some(bytes) = self.max_workspace_size {
            ep = ep.with_max_workspace_size(bytes);
        }
        if let Some(ctx) = &self.ep_context {
            ep = ep
                .with_dump_ep_context_model(true)
                .with_ep_context_file_path(path_str("trt_ep_context_file_path", &ctx.file)?)
                .with_ep_context_embed_mode(ctx.embed_mode);
        }
        if self.cuda_graph {
            ep = ep.with_cuda_graph(true);
        }
        if self.detailed_build_log {
            ep = ep.with_detailed_build_log(true);
        }
        if self.weight_stripped {
            ep = ep.with_weight_stripped_engine(true);
        }
        if let Some(dir) = &self.onnx_model_folder {
            ep = ep.with_onnx_model_folder_path(path_str("trt_onnx_model_folder_path", dir)?);
        }
        Ok(ep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_options() -> TrtOptions {
        TrtOptions {
            fp16: true,
            int8: true,
            engine_cache: Some("engines".into()),
            engine_cache_prefix: Some("transformer_0123abcd".into()),
            timing_cache: Some("/models/out/timing".into()),
            profiles: Some(ProfileShapes {
                min: "hidden_states:1x1024x128".into(),
                opt: "hidden_states:1x4096x128".into(),
                max: "hidden_states:1x8192x128".into(),
            }),
            builder_optimization_level: Some(3),
            ep_context: Some(EpContext { file: "/models/out/transformer_ctx.onnx".into(), embed_mode: 0 }),
            ..Default::default()
        }
    }

    /// The ort builder stores options in a map whose Debug form is `{"key": "value", ...}`.
    /// ort rc.15 writes booleans as "true"/"false" (its macro's `bool` arm never matches a `ty`
    /// fragment); ORT's option parser reads those like "1"/"0", so they are compared as such.
    fn ep_pairs(ep: &ort::ep::TensorRT) -> Vec<(String, String)> {
        let dbg = format!("{ep:?}");
        let body = dbg.split_once('{').and_then(|(_, r)| r.rsplit_once('}')).map(|(b, _)| b).unwrap_or("");
        body.split(", ")
            .filter_map(|kv| kv.split_once(": "))
            .map(|(k, v)| {
                let v = match v.trim_matches('"') {
                    "true" => "1",
                    "false" => "0",
                    other => other,
                };
                (k.trim_matches('"').to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn maps_every_field_to_ort_keys() {
        let o = build_options().provider_options().unwrap();
        let get = |k: &str| o.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("trt_fp16_enable"), Some("1"));
        assert_eq!(get("trt_int8_enable"), Some("1"));
        assert_eq!(get("trt_engine_cache_enable"), Some("1"));
        assert_eq!(get("trt_engine_cache_path"), Some("engines"));
        assert_eq!(get("trt_engine_cache_prefix"), Some("transformer_0123abcd"));
        assert_eq!(get("trt_timing_cache_enable"), Some("1"));
        assert_eq!(get("trt_timing_cache_path"), Some("/models/out/timing"));
        assert_eq!(get("trt_profile_min_shapes"), Some("hidden_states:1x1024x128"));
        assert_eq!(get("trt_profile_opt_shapes"), Some("hidden_states:1x4096x128"));
        assert_eq!(get("trt_profile_max_shapes"), Some("hidden_states:1x8192x128"));
        assert_eq!(get("trt_dump_ep_context_model"), Some("1"));
        assert_eq!(get("trt_ep_context_file_path"), Some("/models/out/transformer_ctx.onnx"));
        assert_eq!(get("trt_ep_context_embed_mode"), Some("0"));
        assert_eq!(get("trt_builder_optimization_level"), Some("3"));
        assert_eq!(get("trt_dla_enable"), None);
        assert_eq!(get("trt_int8_calibration_table_name"), None, "no implicit INT8 ever");
    }

    #[test]
    fn ort_builder_gets_exactly_the_same_options() {
        for opts in [
            build_options(),
            TrtOptions {
                fp16: true,
                dla_core: Some(1),
                max_workspace_size: Some(1 << 30),
                ..Default::default()
            },
            TrtOptions { bf16: true, cuda_graph: true, detailed_build_log: true, ..Default::default() },
        ] {
            let mut want: Vec<(String, String)> =
                opts.provider_options().unwrap().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let mut got = ep_pairs(&opts.to_ep().unwrap());
            want.sort();
            got.sort();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn refuses_what_ort_would_refuse() {
        let abs = TrtOptions { engine_cache: Some("/abs/engines".into()), ..build_options() };
        assert!(abs.provider_options().unwrap_err().to_string().contains("trt_engine_cache_path"));
        let up = TrtOptions { engine_cache: Some("../engines".into()), ..build_options() };
        assert!(up.provider_options().is_err());
        let no_cache = TrtOptions { engine_cache: None, ..build_options() };
        assert!(no_cache.provider_options().unwrap_err().to_string().contains("engine cache"));
        let both = TrtOptions { bf16: true, ..build_options() };
        assert!(both.provider_options().is_err());
        let dla_fp32 = TrtOptions { dla_core: Some(0), ..Default::default() };
        assert!(dla_fp32.provider_options().unwrap_err().to_string().contains("trt_dla_enable"));
        let level = TrtOptions { builder_optimization_level: Some(9), ..Default::default() };
        assert!(level.to_ep().is_err());
        let prefix = TrtOptions { engine_cache_prefix: Some("a/b".into()), ..Default::default() };
        assert!(prefix.provider_options().is_err());
    }

    #[test]
    fn weight_stripped_engines_refit_from_an_onnx_folder() {
        let o = TrtOptions {
            weight_stripped: true,
            onnx_model_folder: Some("export".into()),
            ..Default::default()
        };
        let kv = o.provider_options().unwrap();
        assert!(kv.contains(&("trt_weight_stripped_engine_enable", "1".to_string())));
        assert!(kv.contains(&("trt_onnx_model_folder_path", "export".to_string())));
        o.to_ep().unwrap();
        let plain = TrtOptions::default().provider_options().unwrap();
        assert!(!plain
            .iter()
            .any(|(k, _)| k.starts_with("trt_weight_stripped") || k.starts_with("trt_onnx_model")));
        let bad = TrtOptions { onnx_model_folder: Some("export".into()), ..Default::default() };
        let e = bad.provider_options().unwrap_err().to_string();
        assert!(e.contains("trt_onnx_model_folder_path") && e.contains("weight-stripped"), "{e}");
    }
}
