//! `report.json` and `report.md`: what a calibration did and how close the quantised model
//! stays to float.
//!
//! Per component: the held-out NMSE / cosine of its output against the float graph, the
//! layer counts, the layers kept in float, the sensitivity search and (when measured) ONNX
//! Runtime CPU latency. Per full generation (fixed prompts, sizes and seeds): PSNR and SSIM of
//! the quantised pipeline's image against the float pipeline's. The quality gate
//! (`--max-psnr-drop D`) passes when every generation has PSNR ≥ 58.92 − D dB, 58.92 dB being
//! the PSNR that 8-bit output rounding alone gives ([`crate::metrics::psnr_8bit_floor`]).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::artifacts::KeptLayer;
use crate::sensitivity::Selection;

/// ONNX Runtime CPU latency of one graph call, median over runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub float_ms: f64,
    pub quantized_ms: f64,
    pub runs: usize,
    /// What was timed (input shapes).
    pub input: String,
}

impl Latency {
    pub fn speedup(&self) -> f64 {
        self.float_ms / self.quantized_ms
    }
}

/// One calibrated graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComponentReport {
    pub graph: String,
    pub calibration_samples: usize,
    pub heldout_samples: usize,
    /// Where the inputs came from (trajectories, prompts, random embeddings...).
    pub data: String,
    pub layers_total: usize,
    pub layers_quantized: usize,
    pub kept_float: Vec<KeptLayer>,
    /// Held-out NMSE / cosine of the output against float (mean over samples and worst sample).
    pub nmse: f64,
    pub nmse_worst: f64,
    pub cosine: f64,
    pub cosine_worst: f64,
    pub sensitivity: Selection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

/// One full generation compared with float.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationReport {
    pub prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub seed: u64,
    pub psnr_db: f64,
    pub ssim: f64,
    /// PSNR below the 8-bit floor (0 when at or above it).
    pub psnr_drop_db: f64,
}

/// The quality gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub max_psnr_drop_db: Option<f64>,
    pub psnr_floor_db: f64,
    pub worst_psnr_drop_db: Option<f64>,
    pub passed: bool,
    pub reason: String,
}

/// One round of the image-PSNR budget: the NMSE budget every graph was selected under and
/// what the full generations gave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetRound {
    pub budget_nmse: f64,
    /// Layers quantised, over all calibrated graphs.
    pub layers_quantized: usize,
    pub worst_psnr_db: f64,
}

/// The image-PSNR budget (`--min-psnr`): the primary criterion when full generations run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageBudget {
    pub min_psnr_db: f64,
    /// Rounds in order; the last one is the model written.
    pub rounds: Vec<BudgetRound>,
    pub met: bool,
}

/// `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub tool_version: String,
    pub precision: String,
    pub calibrator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothquant_alpha: Option<f32>,
    pub seed: u64,
    pub components: BTreeMap<String, ComponentReport>,
    pub generations: Vec<GenerationReport>,
    pub gate: Gate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_budget: Option<ImageBudget>,
    /// Whether a usable model folder was written (false when the gate failed).
    pub model_written: bool,
    pub notes: Vec<String>,
    /// Wall time of each stage of the run, in order (a stage seen twice is summed).
    #[serde(default)]
    pub stage_seconds: Vec<(String, f64)>,
}

fn sci(v: f64) -> String {
    format!("{v:.3e}")
}

impl Report {
    /// The human-readable summary.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let verdict = if self.gate.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(s, "# Calibration report: {} ({verdict})\n", self.precision.to_uppercase());
        let sq = self.smoothquant_alpha.map(|a| format!(", SmoothQuant α = {a}")).unwrap_or_default();
        let _ =
            writeln!(s, "Calibrator `{}`{sq}, seed {}. {}\n", self.calibrator, self.seed, self.gate.reason);
        let _ = writeln!(s, "## Components (held-out samples, output vs float)\n");
        let _ = writeln!(s, "| graph | layers quantised | kept float | NMSE (mean / worst) | cosine (mean / worst) | budget | CPU latency float → quantised |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for c in self.components.values() {
            let lat = c
                .latency
                .as_ref()
                .map(|l| format!("{:.1} → {:.1} ms ({:.2}×)", l.float_ms, l.quantized_ms, l.speedup()))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {} / {} | {:.6} / {:.6} | {} | {lat} |",
                c.graph,
                c.layers_quantized,
                c.layers_total,
                c.kept_float.len(),
                sci(c.nmse),
                sci(c.nmse_worst),
                c.cosine,
                c.cosine_worst,
                sci(c.sensitivity.budget_nmse)
            );
        }
        for c in self.components.values() {
            let _ = writeln!(
                s,
                "\n### {}\n\nData: {} ({} calibration, {} held-out samples).",
                c.graph, c.data, c.calibration_samples, c.heldout_samples
            );
            let sel = &c.sensitivity;
            let _ = writeln!(s, "All layers quantised: NMSE {}.", sci(sel.all_quantized_nmse));
            if !sel.per_layer.is_empty() || !sel.per_group.is_empty() {
                let _ = writeln!(
                    s,
                    "Sensitivity search: {} probe graphs ({} blocks ranked, {} layers ranked; a layer's NMSE is \
                     with it quantised alone, or on top of every layer outside the kept blocks when blocks were ranked).",
                    sel.measurements,
                    sel.per_group.len(),
                    sel.per_layer.len()
                );
            }
            if !c.kept_float.is_empty() {
                let _ = writeln!(s, "\nKept in float:\n");
                for k in &c.kept_float {
                    let alone = k
                        .nmse_alone
                        .map(|v| format!(" (NMSE with it quantised: {})", sci(v)))
                        .unwrap_or_default();
                    let _ = writeln!(s, "- `{}`: {}{alone}", k.layer, k.reason);
                }
            }
        }
        if !self.generations.is_empty() {
            let _ = writeln!(s, "\n## Full generations vs float\n");
            let _ = writeln!(s, "| prompt | size | steps | seed | PSNR dB | drop dB | SSIM |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for g in &self.generations {
                let _ = writeln!(
                    s,
                    "| {} | {}×{} | {} | {} | {:.2} | {:.2} | {:.4} |",
                    g.prompt.replace('|', "\\|"),
                    g.width,
                    g.height,
                    g.steps,
                    g.seed,
                    g.psnr_db,
                    g.psnr_drop_db,
                    g.ssim
                );
            }
        }
        if let Some(b) = &self.image_budget {
            let _ = writeln!(
                s,
                "\n## Image budget: worst PSNR ≥ {} dB against float ({})\n",
                b.min_psnr_db,
                if b.met { "met" } else { "not met: every layer the search may keep in float is float" }
            );
            let _ = writeln!(s, "| round | NMSE budget per graph | layers quantised | worst PSNR dB |");
            let _ = writeln!(s, "|---|---|---|---|");
            for (i, r) in b.rounds.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} |",
                    i + 1,
                    sci(r.budget_nmse),
                    r.layers_quantized,
                    r.worst_psnr_db
                );
            }
        }
        if !self.stage_seconds.is_empty() {
            let total: f64 = self.stage_seconds.iter().map(|(_, t)| t).sum();
            let _ = writeln!(s, "\n## Time per stage\n");
            let _ = writeln!(s, "| stage | seconds | share |");
            let _ = writeln!(s, "|---|---|---|");
            for (label, t) in &self.stage_seconds {
                let _ = writeln!(s, "| {label} | {t:.1} | {:.0} % |", 100.0 * t / total.max(1e-9));
            }
            let _ = writeln!(s, "| total | {total:.1} | |");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}
