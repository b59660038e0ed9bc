//! The CPU a figure was measured on: model name, logical CPU count and the instruction sets
//! that decide ONNX Runtime's CPU kernels (AVX2; AVX-512 F/BW/VL; VNNI for INT8 dot
//! products; AMX tiles; BF16), read from `/proc/cpuinfo`.
//!
//! Speed figures from different machines are only comparable with this next to them: the
//! same INT8 graph is several times faster with VNNI than on an AVX2-only CPU, so `flux2
//! bench`, `flux2 doctor` and the benchmark scripts print [`CpuInfo::summary`] with every
//! figure. The parser takes the file's text, so it is tested on samples from other machines.

use std::collections::BTreeSet;

/// x86 flags worth reporting, in the order printed: (flag in /proc/cpuinfo, label).
const X86_FLAGS: &[(&str, &str)] = &[
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512F"),
    ("avx512bw", "AVX-512BW"),
    ("avx512vl", "AVX-512VL"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("amx_tile", "AMX-TILE"),
    ("amx_int8", "AMX-INT8"),
    ("amx_bf16", "AMX-BF16"),
];

/// Arm flags worth reporting (Jetson, Graviton): NEON, int8 dot product, int8 matmul, BF16, SVE.
const ARM_FLAGS: &[(&str, &str)] =
    &[("asimd", "NEON"), ("asimddp", "DOTPROD"), ("i8mm", "I8MM"), ("bf16", "BF16"), ("sve", "SVE")];

/// What `/proc/cpuinfo` says about the CPU.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CpuInfo {
    /// `model name` (x86), else the Arm implementer/part, else `unknown`.
    pub model: String,
    /// x86 `cpu family` / `model` / `stepping` numbers (a generic model name such as `AMD
    /// EPYC` in a VM still tells Zen 3 from Zen 4 by them), when reported.
    pub family: Option<String>,
    /// Number of `processor` entries (logical CPUs the kernel reports).
    pub logical_cpus: usize,
    /// The reported instruction-set labels present (e.g. `AVX2`, `AVX-512 VNNI`), in a fixed order.
    pub isa: Vec<String>,
    /// The labels checked and absent, so "no AVX-512" is explicit in a figure.
    pub missing: Vec<String>,
}

impl CpuInfo {
    /// Parses the text of `/proc/cpuinfo` (the first processor's model and flags).
    pub fn parse(text: &str) -> CpuInfo {
        let field = |key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        let logical_cpus =
            text.lines().filter(|l| l.split_once(':').is_some_and(|(k, _)| k.trim() == "processor")).count();
        let (flags, table) = match field("flags") {
            Some(f) => (f, X86_FLAGS),
            None => (field("Features").unwrap_or_default(), ARM_FLAGS),
        };
        let present: BTreeSet<&str> = flags.split_whitespace().collect();
        let (mut isa, mut missing) = (Vec::new(), Vec::new());
        for (flag, label) in table {
            if present.contains(flag) { &mut isa } else { &mut missing }.push(label.to_string());
        }
        let arm = || match (field("CPU implementer"), field("CPU part")) {
            (Some(i), Some(p)) => Some(format!("Arm implementer {i} part {p}")),
            _ => None,
        };
        let family = match (field("cpu family"), field("model"), field("stepping")) {
            (Some(f), Some(m), Some(s)) => Some(format!("family {f} model {m} stepping {s}")),
            (Some(f), Some(m), None) => Some(format!("family {f} model {m}")),
            _ => None,
        };
        let model =
            field("model name").or_else(arm).filter(|m| !m.is_empty()).unwrap_or_else(|| "unknown".into());
        CpuInfo { model, family, logical_cpus, isa, missing }
    }

    /// This machine's CPU (`/proc/cpuinfo`; on systems without it, the model is `unknown`
    /// and the logical CPU count comes from the standard library).
    pub fn detect() -> CpuInfo {
        match std::fs::read_to_string("/proc/cpuinfo") {
            Ok(text) if !text.trim().is_empty() => CpuInfo::parse(&text),
            _ => CpuInfo {
                model: format!("unknown {} CPU (no /proc/cpuinfo)", std::env::consts::ARCH),
                family: None,
                logical_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                isa: vec![],
                missing: vec![],
            },
        }
    }

    /// Whether a label (as in [`CpuInfo::isa`], e.g. `AVX-512 VNNI`) is present.
    pub fn has(&self, label: &str) -> bool {
        self.isa.iter().any(|l| l == label)
    }

    /// One line for a figure, e.g. `AMD EPYC (family 25 model 17 stepping 1, 2 logical CPUs);
    /// AVX2 FMA; without AVX-512F ...`.
    pub fn summary(&self) -> String {
        let family = self.family.as_ref().map(|f| format!("{f}, ")).unwrap_or_default();
        let mut s = format!("{} ({family}{} logical CPUs)", self.model, self.logical_cpus);
        if !self.isa.is_empty() {
            s += &format!("; {}", self.isa.join(" "));
        }
        if !self.missing.is_empty() {
            s += &format!("; without {}", self.missing.join(" "));
        }
        s
    }
}

#[cfg(test)]
#[path = "cpu_tests.rs"]
mod tests;
