//! Real-size checkpoints without the real weights: a diffusers folder of FLUX.2 [dev],
//! [klein] 4B or [klein] 9B with the released tensor names, shapes and dtype (bf16) and the
//! released sharding, written as **sparse** files. Each safetensors header is real; the data
//! is a hole (reads as zeros, takes no disk space), so a 64 GB [dev] transformer costs a few
//! hundred kilobytes. It makes real-size export timing and tests possible on any machine
//! (`flux2 synth-checkpoint`, `scripts/export_speed.sh`).
//!
//! Components: `transformer/` (diffusers `Flux2Transformer2DModel` names), `vae/`
//! (`AutoencoderKLFlux2`), and `text_encoder/` (Qwen3-4B for klein-4B, Qwen3-8B for klein-9B,
//! the Mistral-Small-3.2 language model in the transformers-5 `Mistral3` layout for dev). Shards
//! follow `save_pretrained`'s defaults (10 GB diffusers, 5 GB transformers), with an index
//! when there is more than one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use flux2_graphs::models::dit::{build_transformer, DitConfig};
use flux2_graphs::models::text::{build_text_encoder, TextConfig};
use flux2_graphs::models::vae::{build_decoder, build_encoder, VaeConfig};
use flux2_graphs::{DType, Target, WeightDecl};
use serde_json::{json, Value};

use super::configs;
use super::tokenizer::pretty;
use crate::{io_err, ExportError, Result};

/// The released models this writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Variant {
    Dev,
    Klein4b,
    Klein9b,
}

impl Variant {
    /// Parses `dev`, `klein-4b`, `klein-9b`.
    pub fn parse(s: &str) -> Option<Variant> {
        Some(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "dev" => Variant::Dev,
            "klein-4b" | "klein4b" => Variant::Klein4b,
            "klein-9b" | "klein9b" => Variant::Klein9b,
            _ => return None,
        })
    }

    fn transformer(self) -> DitConfig {
        match self {
            Variant::Dev => DitConfig::dev(),
            Variant::Klein4b => DitConfig::klein_4b(),
            Variant::Klein9b => DitConfig::klein_9b(),
        }
    }

    fn text(self) -> TextConfig {
        match self {
            Variant::Dev => TextConfig::mistral_small_3_2(),
            Variant::Klein4b => TextConfig::qwen3_4b(),
            // Qwen3-8B: https://huggingface.co/Qwen/Qwen3-8B/blob/main/config.json
            Variant::Klein9b => {
                TextConfig { hidden: 4096, intermediate: 12288, num_layers: 36, ..TextConfig::qwen3_4b() }
            }
        }
    }
}

/// One tensor: name, shape (bf16).
pub type Decl = (String, Vec<usize>);

/// What [`write_sparse_checkpoint`] wrote: component -> (files, bytes of tensor data).
pub type SparseReport = BTreeMap<String, (Vec<PathBuf>, u64)>;

/// Writes the sparse checkpoint of `variant` into the new folder `out` (which must not
/// exist): built in a sibling folder and renamed into place when complete.
pub fn write_sparse_checkpoint(variant: Variant, out: &Path) -> Result<SparseReport> {
    if out.exists() {
        return Err(ExportError::Output { path: out.to_path_buf(), msg: "exists; not replacing it".into() });
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ckpt".into());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let staging = parent.join(format!(".{name}.sparse-{}", std::process::id()));
    let result = write_folder(variant, &staging).and_then(|report| {
        std::fs::rename(&staging, out).map_err(io_err(out))?;
        // report the final paths
        Ok(report
            .into_iter()
            .map(|(k, (files, n))| {
                let files = files.iter().map(|f| out.join(f.strip_prefix(&staging).unwrap_or(f))).collect();
                (k, (files, n))
            })
            .collect())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn write_folder(variant: Variant, out: &Path) -> Result<SparseReport> {
    let dit = variant.transformer();
    let text = variant.text();
    let mut report = SparseReport::new();
    let class = if variant == Variant::Dev { "Flux2Pipeline" } else { "Flux2KleinPipeline" };
    let mut index = configs::model_index();
    index["_class_name"] = class.into();
    if variant == Variant::Dev {
        index["text_encoder"] = json!(["transformers", "Mistral3ForConditionalGeneration"]);
        index["tokenizer"] = json!(["transformers", "PixtralProcessor"]);
        if let Some(o) = index.as_object_mut() {
            o.remove("is_distilled");
        }
    }
    write_json(&out.join("model_index.json"), &index)?;
    write_json(&out.join("scheduler/scheduler_config.json"), &configs::scheduler())?;
    write_json(&out.join("transformer/config.json"), &configs::transformer(&dit))?;
    let tensors = names(&build_transformer(&dit, Target::Ort, DType::BF16)?.weights);
    let written =
        write_component(&out.join("transformer"), "diffusion_pytorch_model", 10_000_000_000, &tensors)?;
    report.insert("transformer".into(), written);
    let vae = VaeConfig::flux2();
    write_json(&out.join("vae/config.json"), &configs::vae(&vae))?;
    let mut vt = names(&build_encoder(&vae, Target::Ort, DType::BF16)?.weights);
    vt.extend(names(&build_decoder(&vae, Target::Ort, DType::BF16)?.weights));
    vt.sort();
    vt.dedup();
    let written = write_component(&out.join("vae"), "diffusion_pytorch_model", 10_000_000_000, &vt)?;
    report.insert("vae".into(), written);
    let (config, tt) = text_encoder(variant, &text)?;
    write_json(&out.join("text_encoder/config.json"), &config)?;
    let written = write_component(&out.join("text_encoder"), "model", 5_000_000_000, &tt)?;
    report.insert("text_encoder".into(), written);
    Ok(report)
}

/// The DiT's tensors of `variant` (diffusers names, row-major shapes).
pub(super) fn transformer_decls(variant: Variant) -> Result<Vec<Decl>> {
    Ok(names(&build_transformer(&variant.transformer(), Target::Ort, DType::BF16)?.weights))
}

/// The text encoder of `variant` in transformers' language-model names (`model.layers.N...`,
/// no `language_model` prefix), with its llama.cpp architecture name and its config.
pub(super) fn text_decls(variant: Variant) -> Result<(&'static str, Vec<Decl>, TextConfig)> {
    let text = variant.text();
    let (_, mut tensors) = text_encoder(variant, &text)?;
    for (n, _) in &mut tensors {
        if let Some(rest) = n.strip_prefix("model.language_model.") {
            *n = format!("model.{rest}");
        }
    }
    let arch = if variant == Variant::Dev { "llama" } else { "qwen3" };
    Ok((arch, tensors, text))
}

fn names(weights: &[WeightDecl]) -> Vec<Decl> {
    weights.iter().map(|w| (w.name.clone(), w.shape.clone())).collect()
}

/// The text encoder's config and tensors: the whole language model (every layer, final
/// norm, LM head where untied), under the released checkpoint's key prefix.
fn text_encoder(variant: Variant, text: &TextConfig) -> Result<(Value, Vec<Decl>)> {
    let full = TextConfig { hidden_layers: vec![text.num_layers], ..text.clone() };
    let mut tensors = names(&build_text_encoder(&full, Target::Ort, DType::BF16)?.weights);
    let lm_head = ("lm_head.weight".to_string(), vec![text.vocab, text.hidden]);
    match variant {
        Variant::Dev => {
            for (n, _) in &mut tensors {
                *n = format!("model.language_model.{}", n.strip_prefix("model.").unwrap_or(n));
            }
            tensors.push(lm_head);
            let mut tc = configs::text_encoder(text);
            tc["model_type"] = "mistral".into();
            tc["architectures"] = Value::Null;
            tc["head_dim"] = text.head_dim.into();
            tc["tie_word_embeddings"] = false.into();
            let config = json!({
                "architectures": ["Mistral3ForConditionalGeneration"],
                "model_type": "mistral3",
                "text_config": tc,
                "transformers_version": "5.23.0",
            });
            Ok((config, tensors))
        }
        Variant::Klein4b => Ok((configs::text_encoder(text), tensors)),
        Variant::Klein9b => {
            tensors.push(lm_head);
            let mut config = configs::text_encoder(text);
            config["tie_word_embeddings"] = false.into();
            Ok((config, tensors))
        }
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    std::fs::write(path, pretty(v)).map_err(io_err(path))
}

/// Splits `tensors` (in name order) into shards of at most `max_shard` bytes and writes them
/// as `<stem>.safetensors` or `<stem>-0000i-of-0000n.safetensors` + index.
fn write_component(dir: &Path, stem: &str, max_shard: u64, tensors: &[Decl]) -> Result<(Vec<PathBuf>, u64)> {
    let mut sorted: Vec<&Decl> = tensors.iter().collect();
    sorted.sort();
    let mut shards: Vec<Vec<&Decl>> = vec![vec![]];
    let mut size = 0u64;
    for t in sorted {
        let n = bytes(t);
        if size > 0 && size + n > max_shard {
            shards.push(vec![]);
            size = 0;
        }
        size += n;
        if let Some(s) = shards.last_mut() {
            s.push(t);
        }
    }
    let count = shards.len();
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let name = if count == 1 {
            format!("{stem}.safetensors")
        } else {
            format!("{stem}-{:05}-of-{count:05}.safetensors", i + 1)
        };
        let path = dir.join(&name);
        total += write_sparse_file(&path, shard)?;
        for (n, _) in shard {
            weight_map.insert(n.clone(), name.clone().into());
        }
        files.push(path);
    }
    if count > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join(format!("{stem}.safetensors.index.json")), &index)?;
    }
    Ok((files, total))
}

fn bytes((_, shape): &Decl) -> u64 {
    shape.iter().product::<usize>() as u64 * 2
}

/// Writes a safetensors header for bf16 `tensors` and extends the file over their data
/// without writing it (a hole). Returns the data size.
pub fn write_sparse_file(path: &Path, tensors: &[&Decl]) -> Result<u64> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0u64;
    for t in tensors {
        let end = off + bytes(t);
        header.insert(t.0.clone(), json!({"dtype": "BF16", "shape": t.1, "data_offsets": [off, end]}));
        off = end;
    }
    let mut text = serde_json::to_string(&Value::Object(header)).unwrap_or_default().into_bytes();
    text.resize(text.len().div_ceil(8) * 8, b' '); // data 8-byte aligned, as safetensors writes it
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(&(text.len() as u64).to_le_bytes()).map_err(io_err(path))?;
    f.write_all(&text).map_err(io_err(path))?;
    f.set_len(8 + text.len() as u64 + off).map_err(io_err(path))?;
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse() {
        assert_eq!(Variant::parse("klein-4b"), Some(Variant::Klein4b));
        assert_eq!(Variant::parse("KLEIN_9B"), Some(Variant::Klein9b));
        assert_eq!(Variant::parse("dev"), Some(Variant::Dev));
        assert_eq!(Variant::parse("schnell"), None);
        assert!(flux2_graphs::models::text::Family::Qwen3 == Variant::Klein9b.text().family);
    }
}
