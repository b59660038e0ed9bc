//! The stage models of the repository: one model per exported stage for Triton's native backends
//! (`onnxruntime_onnx` from an export folder, `tensorrt_plan` from a `flux2 build` folder),
//! their inputs and outputs taken from the manifest.

use flux2_runtime::model_dir::ModelDir;

use crate::pbtxt::Message;
use crate::ServeError;

/// Stage graphs that become models of their own, in pipeline order.
pub const STAGES: [&str; 4] = ["text_encoder", "transformer", "vae_encoder", "vae_decoder"];

/// Triton's data type for a manifest dtype (`f32`, `i64`, ...).
pub fn triton_type(dtype: &str) -> Option<&'static str> {
    Some(match dtype {
        "f32" => "TYPE_FP32",
        "f16" => "TYPE_FP16",
        "bf16" => "TYPE_BF16",
        "f64" => "TYPE_FP64",
        "i64" => "TYPE_INT64",
        "i32" => "TYPE_INT32",
        "i8" => "TYPE_INT8",
        "u8" => "TYPE_UINT8",
        "bool" => "TYPE_BOOL",
        _ => return None,
    })
}

fn tensor(name: &str, dtype: &str, dims: &[i64]) -> Message {
    Message::new().str("name", name).bare("data_type", dtype).ints("dims", dims)
}

/// Dims of a manifest shape: numbers as they are, axis names as -1.
fn dims(shape: &[String]) -> Vec<i64> {
    shape.iter().map(|d| d.parse::<i64>().unwrap_or(-1)).collect()
}

/// Inputs and outputs of stage `name` from the manifest of `model`.
fn stage_io(model: &ModelDir, name: &str, mut m: Message) -> Result<Message, ServeError> {
    let entry = model.entry(name).ok_or_else(|| ServeError::Model {
        path: model.dir.clone(),
        msg: format!("no {name} graph in manifest.json"),
    })?;
    for (field, list) in [("input", &entry.inputs), ("output", &entry.outputs)] {
        for io in list.iter() {
            let ty = triton_type(&io.dtype).ok_or_else(|| ServeError::Model {
                path: model.dir.join("manifest.json"),
                msg: format!("{name} {field} '{}': dtype '{}' has no Triton type", io.name, io.dtype),
            })?;
            m = m.msg(field, tensor(&io.name, ty, &dims(&io.shape)));
        }
    }
    Ok(m)
}

/// config.pbtxt of an `onnxruntime_onnx` stage model whose version folder is the export
/// folder itself (`default_model_filename` names the graph in it).
pub fn onnx_stage_config(model: &ModelDir, name: &str, instances: usize) -> Result<Message, ServeError> {
    let file = &model.entry(name).map(|e| e.file.clone()).unwrap_or_default();
    let m = Message::new()
        .str("name", name)
        .str("platform", "onnxruntime_onnx")
        .bare("max_batch_size", 0)
        .str("default_model_filename", file.as_str());
    let m = stage_io(model, name, m)?;
    Ok(m.msg("instance_group", Message::new().bare("count", instances)))
}

/// config.pbtxt of a `tensorrt_plan` stage model: the engine of a `flux2 build` folder, its
/// optimisation profiles (from tensorrt.json) selectable by every instance.
pub fn plan_stage_config(
    build: &ModelDir,
    name: &str,
    engine_file: &str,
    profiles: usize,
    instances: usize,
) -> Result<Message, ServeError> {
    let m = Message::new()
        .str("name", name)
        .str("platform", "tensorrt_plan")
        .bare("max_batch_size", 0)
        .str("default_model_filename", engine_file);
    let m = stage_io(build, name, m)?;
    let mut group = Message::new().bare("count", instances).bare("kind", "KIND_GPU");
    if profiles > 0 {
        group = group.strs("profile", &(0..profiles).map(|p| p.to_string()).collect::<Vec<_>>());
    }
    Ok(m.msg("instance_group", group))
}
