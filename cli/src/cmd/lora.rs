//! `--lora` arguments and `flux2 inspect` of an adapter file (the adapter code is
//! `flux2_runtime::lora`; the export-time merge is `flux2_exporter::lora`).

use std::path::Path;

use flux2_exporter::lora::dit_table;
use flux2_exporter::models::ExportOptions;
use flux2_exporter::ModelSource;
use flux2_graphs::{DType, Target};
use flux2_runtime::lora::{AdapterSpec, LoraFile, MergePlan};

/// Parses `--lora` arguments.
pub fn parse_specs(specs: &[String]) -> anyhow::Result<Vec<AdapterSpec>> {
    Ok(specs.iter().map(|s| AdapterSpec::parse(s)).collect::<Result<_, _>>()?)
}

/// Whether a safetensors file holds adapter tensors rather than a model.
pub fn is_adapter(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let mut len = [0u8; 8];
    if std::io::Read::read_exact(&mut f, &mut len).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(len).min(100 << 20) as usize;
    let mut header = vec![0u8; n];
    if std::io::Read::read_exact(&mut f, &mut header).is_err() {
        return false;
    }
    let text = String::from_utf8_lossy(&header);
    ["lora_A", "lora_B", "lora_down", "lora_up", ".lokr_", ".hada_", "lora_unet_"]
        .iter()
        .any(|k| text.contains(k))
}

/// `flux2 inspect ADAPTER.safetensors [--checkpoint CKPT]`.
pub fn inspect(path: &Path, checkpoint: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let file = LoraFile::open(path)?;
    let mut alphas: Vec<String> =
        file.modules.iter().filter_map(|m| m.alpha.map(|a| format!("{a}"))).collect();
    alphas.sort();
    alphas.dedup();
    let alpha = match (&file.config, alphas.is_empty()) {
        (Some(c), _) => format!("lora_alpha {} (metadata, r {}, rsLoRA {})", c.lora_alpha, c.r, c.use_rslora),
        (None, false) => format!("per module: {}", alphas.join(", ")),
        (None, true) => "none stored (alpha = rank, scale 1)".into(),
    };
    let check = checkpoint.map(|ck| -> anyhow::Result<serde_json::Value> {
        let source = ModelSource::open(ck)?;
        let opts = ExportOptions {
            dtype: DType::F32,
            target: Target::Ort,
            text_layers: None,
            config_override: None,
        };
        let table = dit_table(&source, &opts)?;
        Ok(match MergePlan::new(vec![(file.clone(), 1.0)], &table) {
            Ok(plan) => serde_json::json!({"matches": true, "record": plan.records().first()}),
            Err(e) => serde_json::json!({"matches": false, "problem": e.to_string()}),
        })
    });
    let check = check.transpose()?;
    let report = serde_json::json!({
        "file": path.display().to_string(),
        "format": file.format.name(),
        "fingerprint": file.fingerprint,
        "rank": file.rank(),
        "alpha": alpha,
        "modules": file.modules.iter().map(|m| serde_json::json!({"name": m.name, "rank": m.rank(),
            "down": [m.down.rows, m.down.cols], "up": [m.up.rows, m.up.cols]})).collect::<Vec<_>>(),
        "checkpoint": check,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}: LoRA adapter, {} format", path.display(), file.format.name());
    println!("  rank {} (most modules), alpha: {alpha}", file.rank());
    println!("  {} modules:", file.modules.len());
    for m in &file.modules {
        println!(
            "    {} (rank {}, {}×{} -> {}×{})",
            m.name,
            m.rank(),
            m.down.rows,
            m.down.cols,
            m.up.rows,
            m.up.cols
        );
    }
    if let (Some(ck), Some(c)) = (checkpoint, &report["checkpoint"].as_object()) {
        if c["matches"] == true {
            let n = c["record"]["tensors"].as_array().map_or(0, |t| t.len());
            println!("  matches {}: changes {n} DiT tensors", ck.display());
            if let Some(s) = c["record"]["skipped"].as_array() {
                println!(
                    "  skipped as diffusers does: {}",
                    s.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        } else {
            println!("  does NOT match {}: {}", ck.display(), c["problem"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}
