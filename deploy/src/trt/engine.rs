//! Step 3 of `flux2 build` (needs the GPU): one TensorRT session per graph, which makes ONNX
//! Runtime build the engine into `engines/`, update the timing cache and dump an EPContext model
//! (`<graph>_ctx.onnx`, embed mode 0: the node holds the engine's relative path, so nothing has
//! to fit in a 2 GB protobuf). Everything is written into a staging folder inside `--out` and
//! moved into place only when every graph built; a failure removes the staging folder (and
//! `--out` if this build created it).
//!
//! The EPContext model must cover the whole graph (one or more `com.microsoft:EPContext` nodes and
//! nothing else): the build folder carries no weights, so a node left to another provider could
//! not run. `flux2 check` rejects what TensorRT cannot import, so this only trips on parser bugs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use flux2_graphs::onnx::ModelProto;
use prost::Message;

use super::build::{BuildPlan, GraphPlan};
use super::host::HostInfo;
use crate::lint::model::attr_str;
use flux2_runtime::providers::{session_with_provider, ProviderConfig};
use flux2_runtime::trt::cache_key::KeyParts;
use flux2_runtime::trt::manifest::{BuildManifest, BuiltGraph};
use flux2_runtime::trt::options::{EpContext, TrtOptions};
use flux2_runtime::trt::TrtError;

/// Engine folder inside a build folder (relative: ORT requires it for EPContext dumps).
pub const ENGINE_DIR: &str = "engines";

/// Build progress.
pub enum Progress<'a> {
    /// Starting graph `index` of `total` (engine builds take minutes each).
    Graph { name: &'a str, index: usize, total: usize },
    /// Graph built.
    Built { name: &'a str, seconds: f64 },
}

fn out_err(path: &Path, e: impl ToString) -> TrtError {
    TrtError::Output { path: path.to_path_buf(), msg: e.to_string() }
}

/// Builds every planned graph into `plan.request.out`.
pub fn execute(
    plan: &BuildPlan,
    host: &HostInfo,
    progress: &mut dyn FnMut(Progress),
) -> Result<BuildManifest, TrtError> {
    let out = &plan.request.out;
    let created = !out.exists();
    std::fs::create_dir_all(out).map_err(|e| out_err(out, e))?;
    let staging = out.join(format!(".flux2-build-{}", std::process::id()));
    let result = stage(plan, host, &staging, progress).and_then(|m| {
        publish(&staging, out)?;
        Ok(m)
    });
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() && created {
        let _ = std::fs::remove_dir_all(out);
    }
    result
}

fn stage(
    plan: &BuildPlan,
    host: &HostInfo,
    staging: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<BuildManifest, TrtError> {
    std::fs::create_dir_all(staging.join(ENGINE_DIR)).map_err(|e| out_err(staging, e))?;
    let staging = staging.canonicalize().map_err(|e| out_err(staging, e))?;
    let timing = match &plan.request.timing_cache {
        Some(t) => t.clone(),
        None => staging.join("timing"),
    };
    std::fs::create_dir_all(&timing).map_err(|e| out_err(&timing, e))?;
    let timing = timing.canonicalize().map_err(|e| out_err(&timing, e))?;
    let mut graphs = BTreeMap::new();
    let total = plan.graphs.len();
    for (index, g) in plan.graphs.iter().enumerate() {
        progress(Progress::Graph { name: &g.name, index, total });
        let built = build_graph(plan, host, g, &staging, &timing)?;
        progress(Progress::Built { name: &g.name, seconds: built.build_seconds });
        graphs.insert(g.name.clone(), built);
    }
    copy_support_files(&plan.request.model, &staging)?;
    let mut manifest = plan.manifest.clone();
    manifest.graphs.retain(|name, _| graphs.contains_key(name));
    for (name, entry) in manifest.graphs.iter_mut() {
        entry.file = graphs[name].context_model.clone();
        entry.weights = "engine".into();
        entry.target = "tensorrt".into();
        if let Some(g) = plan.graphs.iter().find(|g| &g.name == name) {
            entry.precision = Some(g.precision.clone());
        }
    }
    manifest.write(&staging).map_err(|e| out_err(&staging, e))?;
    let built = BuildManifest {
        tool: "flux2-deploy".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        gpu: plan.request.gpu,
        device: host.device.name.clone(),
        sm: host.device.sm(),
        tensorrt: host.tensorrt.to_string(),
        onnxruntime: host.ort_version.clone(),
        shapes: plan.request.shapes.clone(),
        graphs,
        refit_from: plan.request.refittable.then(|| {
            std::fs::canonicalize(&plan.request.model)
                .unwrap_or_else(|_| plan.request.model.clone())
                .display()
                .to_string()
        }),
    };
    built.write(&staging)?;
    Ok(built)
}

/// The provider options for one graph of a build.
pub fn graph_options(
    plan: &BuildPlan,
    g: &GraphPlan,
    key: &str,
    staging: &Path,
    timing: &Path,
) -> TrtOptions {
    let r = &plan.request;
    TrtOptions {
        device_id: r.device_id,
        fp16: g.fp16,
        bf16: g.bf16,
        int8: g.int8,
        engine_cache: Some(PathBuf::from(ENGINE_DIR)),
        engine_cache_prefix: Some(format!("{}_{}", g.name, &key[..16.min(key.len())])),
        timing_cache: Some(timing.to_path_buf()),
        profiles: g.profiles.shapes(),
        dla_core: r.dla_core,
        builder_optimization_level: r.builder_optimization_level,
        max_workspace_size: r.max_workspace_size,
        ep_context: Some(EpContext { file: staging.join(format!("{}_ctx.onnx", g.name)), embed_mode: 0 }),
        cuda_graph: false,
        detailed_build_log: false,
        weight_stripped: r.refittable,
        onnx_model_folder: None,
    }
}

fn build_graph(
    plan: &BuildPlan,
    host: &HostInfo,
    g: &GraphPlan,
    staging: &Path,
    timing: &Path,
) -> Result<BuiltGraph, TrtError> {
    let r = &plan.request;
    let key_parts = KeyParts {
        model_hash: g.model_hash.clone(),
        calibration_hash: g.calibration_hash.clone(),
        tensorrt: host.tensorrt.to_string(),
        onnxruntime: host.ort_version.clone(),
        gpu: r.gpu,
        sm: host.device.sm(),
        profiles: g.profiles.shapes(),
        precision: g.precision.clone(),
        dla_core: r.dla_core,
        builder_optimization_level: r.builder_optimization_level,
    };
    let key = key_parts.key();
    let opts = graph_options(plan, g, &key, staging, timing);
    let provider_options: Vec<(String, String)> =
        opts.provider_options()?.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let engines_dir = staging.join(ENGINE_DIR);
    let before = list(&engines_dir);
    let source = r.model.join(&g.entry.file);
    let t0 = Instant::now();
    let session =
        session_with_provider(&source, &ProviderConfig::TensorRt(Box::new(opts)), &Default::default())
            .map_err(|e| TrtError::Build { graph: g.name.clone(), msg: e.to_string() })?;
    drop(session);
    let build_seconds = t0.elapsed().as_secs_f64();
    let engines: Vec<String> = list(&engines_dir)
        .into_iter()
        .filter(|f| !before.contains(f))
        .map(|f| format!("{ENGINE_DIR}/{f}"))
        .collect();
    let context_model = format!("{}_ctx.onnx", g.name);
    finish_context_model(&staging.join(&context_model), staging, &g.name)?;
    Ok(BuiltGraph {
        source: g.entry.file.clone(),
        context_model,
        engines,
        cache_key: key,
        key_parts,
        quant: g.quant,
        profiles: g.profiles.clone(),
        provider_options,
        build_seconds,
    })
}

/// The dumped EPContext model exists, has only EPContext nodes, and each points at an engine
/// file inside the build folder by a relative path (an absolute path into the staging folder
/// would break when the folder is published or copied, so it is rewritten).
pub fn finish_context_model(path: &Path, staging: &Path, graph: &str) -> Result<(), TrtError> {
    let fail = |msg: String| TrtError::Build { graph: graph.into(), msg };
    let bytes =
        std::fs::read(path).map_err(|e| fail(format!("no EPContext model at {}: {e}", path.display())))?;
    let mut model =
        ModelProto::decode(bytes.as_slice()).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let root = staging.canonicalize().map_err(|e| fail(format!("{}: {e}", staging.display())))?;
    let mut changed = false;
    let nodes = model.graph.as_mut().map(|g| g.node.as_mut_slice()).unwrap_or_default();
    let others: Vec<String> = nodes
        .iter()
        .filter(|n| n.op_type != "EPContext")
        .map(|n| format!("{} '{}'", n.op_type, n.name))
        .collect();
    if nodes.is_empty() || !others.is_empty() {
        return Err(fail(format!(
            "TensorRT did not take the whole graph; left to other providers: {}",
            others.into_iter().take(10).collect::<Vec<_>>().join(", ")
        )));
    }
    for n in nodes.iter_mut().filter(|n| attr_int0(n, "embed_mode") == 0) {
        let Some(engine) = attr_str(n, "ep_cache_context") else { continue };
        let file = staging.join(&engine);
        let real = file.canonicalize().map_err(|e| {
            fail(format!("EPContext node '{}' points at {engine}, which was not written ({e})", n.name))
        })?;
        let rel = real.strip_prefix(&root).map_err(|_| {
            fail(format!("EPContext node '{}' points at {engine}, outside the build folder", n.name))
        })?;
        if Path::new(&engine).is_absolute() {
            for a in n.attribute.iter_mut().filter(|a| a.name == "ep_cache_context") {
                a.s = rel.to_string_lossy().into_owned().into_bytes();
                changed = true;
            }
        }
    }
    if changed {
        std::fs::write(path, model.encode_to_vec()).map_err(|e| out_err(path, e))?;
    }
    Ok(())
}

fn attr_int0(n: &flux2_graphs::onnx::NodeProto, name: &str) -> i64 {
    crate::lint::model::attr_int(n, name).unwrap_or(0)
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Copies the tokenizer, configs and anything else that is not a graph, its data or weights.
fn copy_support_files(model: &Path, staging: &Path) -> Result<(), TrtError> {
    fn skip(name: &str) -> bool {
        name.starts_with('.')
            || name.ends_with(".onnx")
            || name.ends_with(".onnx.data")
            || matches!(name, "weights" | "manifest.json" | "tensorrt.json" | "engines" | "timing")
    }
    fn copy(src: &Path, dst: &Path) -> std::io::Result<()> {
        if src.is_dir() {
            std::fs::create_dir_all(dst)?;
            for e in std::fs::read_dir(src)?.flatten() {
                copy(&e.path(), &dst.join(e.file_name()))?;
            }
            Ok(())
        } else {
            std::fs::copy(src, dst).map(|_| ())
        }
    }
    let rd = std::fs::read_dir(model).map_err(|e| out_err(model, e))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !skip(&name) {
            copy(&e.path(), &staging.join(&name)).map_err(|err| out_err(&e.path(), err))?;
        }
    }
    Ok(())
}

/// Moves every staged entry into `out`, replacing entries of the same name.
fn publish(staging: &Path, out: &Path) -> Result<(), TrtError> {
    for e in std::fs::read_dir(staging).map_err(|e| out_err(staging, e))?.flatten() {
        let dst = out.join(e.file_name());
        if dst.is_dir() {
            std::fs::remove_dir_all(&dst).map_err(|err| out_err(&dst, err))?;
        } else if dst.exists() {
            std::fs::remove_file(&dst).map_err(|err| out_err(&dst, err))?;
        }
        std::fs::rename(e.path(), &dst).map_err(|err| out_err(&dst, err))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flux2_graphs::attr;
    use flux2_graphs::onnx::{GraphProto, NodeProto};

    fn ctx_model(engine: &str, extra: Option<&str>) -> ModelProto {
        let mut node = NodeProto {
            op_type: "EPContext".into(),
            name: "ctx0".into(),
            domain: "com.microsoft".into(),
            ..Default::default()
        };
        node.attribute = vec![attr::int("embed_mode", 0), attr::string("ep_cache_context", engine)];
        let mut nodes = vec![node];
        if let Some(op) = extra {
            nodes.push(NodeProto { op_type: op.into(), name: "left_over".into(), ..Default::default() });
        }
        ModelProto { graph: Some(GraphProto { node: nodes, ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn context_models_end_up_with_relative_engine_paths() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(staging.join(ENGINE_DIR)).unwrap();
        std::fs::write(staging.join("engines/t_sm90.engine"), b"plan").unwrap();
        let path = staging.join("t_ctx.onnx");
        let abs = staging.join("engines/t_sm90.engine");
        std::fs::write(&path, ctx_model(abs.to_str().unwrap(), None).encode_to_vec()).unwrap();
        finish_context_model(&path, &staging, "t").unwrap();
        let m = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        assert_eq!(
            attr_str(&m.graph.unwrap().node[0], "ep_cache_context").as_deref(),
            Some("engines/t_sm90.engine")
        );

        std::fs::write(&path, ctx_model("engines/t_sm90.engine", None).encode_to_vec()).unwrap();
        finish_context_model(&path, &staging, "t").unwrap();
        std::fs::write(&path, ctx_model("engines/missing.engine", None).encode_to_vec()).unwrap();
        assert!(finish_context_model(&path, &staging, "t")
            .unwrap_err()
            .to_string()
            .contains("missing.engine"));
        std::fs::write(&path, ctx_model("engines/t_sm90.engine", Some("Unique")).encode_to_vec()).unwrap();
        let e = finish_context_model(&path, &staging, "t").unwrap_err().to_string();
        assert!(e.contains("Unique 'left_over'"), "{e}");
    }
}
