//! GPU targets of `flux2 build` and what each one accepts.
//!
//! Compute capabilities from NVIDIA's CUDA GPU list and the TensorRT 10.x support matrix:
//! Hopper sm90 (H100, H200, GH200), Ada sm89 (L40S, L4, RTX 4090), Ampere sm80/sm86 (A100,
//! A10, A40, RTX 3090), Jetson Orin sm87 (AGX Orin, Orin NX/Nano), Jetson Thor sm110 (CUDA 13
//! numbering; sm101 under CUDA 12.8/12.9).
//!
//! Precision rules (TensorRT "Hardware and Precision" table; ModelOpt #70 "Networks with FP8
//! Q/DQ layers require hardware with FP8 support"; Jetson AI Lab #343):
//! - FP8 (E4M3) tensor cores exist from sm89 on: Ada, Hopper, Thor. Ampere and Orin have none,
//!   so FP8 Q/DQ graphs are refused there before any build starts.
//! - INT8 and FP16 run everywhere; BF16 on every target here (sm80+).
//! - DLA exists only on Orin (AGX Orin and Orin NX; Orin Nano has none) and runs FP16/INT8 only.
//!   TensorRT 11.0–11.3 dropped DLA; 11.4.1 restores it on AGX Orin (JetPack 7.2.2+).

use std::fmt;
use std::str::FromStr;

use super::TrtError;

/// A deployment GPU family.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuTarget {
    Hopper,
    Ada,
    Ampere,
    Orin,
    Thor,
}

/// The quantized type of a graph's Q/DQ nodes (none: a float graph).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    None,
    Int8,
    Fp8,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::None => "none",
            Quant::Int8 => "int8",
            Quant::Fp8 => "fp8",
        }
    }
}

/// Precision of the layers that are not quantized.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatPrecision {
    Fp32,
    Fp16,
    Bf16,
}

impl FromStr for FloatPrecision {
    type Err = TrtError;
    fn from_str(s: &str) -> Result<Self, TrtError> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(FloatPrecision::Fp32),
            "fp16" | "f16" => Ok(FloatPrecision::Fp16),
            "bf16" => Ok(FloatPrecision::Bf16),
            other => Err(TrtError::Option {
                name: "--float".into(),
                msg: format!("'{other}' is not one of fp16, bf16, fp32"),
            }),
        }
    }
}

impl fmt::Display for FloatPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FloatPrecision::Fp32 => "fp32",
            FloatPrecision::Fp16 => "fp16",
            FloatPrecision::Bf16 => "bf16",
        })
    }
}

impl GpuTarget {
    pub const ALL: [GpuTarget; 5] =
        [GpuTarget::Hopper, GpuTarget::Ada, GpuTarget::Ampere, GpuTarget::Orin, GpuTarget::Thor];

    pub fn name(self) -> &'static str {
        match self {
            GpuTarget::Hopper => "hopper",
            GpuTarget::Ada => "ada",
            GpuTarget::Ampere => "ampere",
            GpuTarget::Orin => "orin",
            GpuTarget::Thor => "thor",
        }
    }

    /// Compute capabilities (major*10 + minor) of the family.
    pub fn sm(self) -> &'static [u32] {
        match self {
            GpuTarget::Hopper => &[90],
            GpuTarget::Ada => &[89],
            GpuTarget::Ampere => &[80, 86],
            GpuTarget::Orin => &[87],
            GpuTarget::Thor => &[110, 101],
        }
    }

    /// Example parts, for messages and `--help`.
    pub fn examples(self) -> &'static str {
        match self {
            GpuTarget::Hopper => "H100, H200, GH200",
            GpuTarget::Ada => "L40S, L4, RTX 4090",
            GpuTarget::Ampere => "A100, A10, A40, RTX 3090",
            GpuTarget::Orin => "Jetson AGX Orin, Orin NX, Orin Nano",
            GpuTarget::Thor => "Jetson AGX Thor",
        }
    }

    /// The family of a device with compute capability `major.minor`.
    pub fn from_compute_capability(major: u32, minor: u32) -> Option<GpuTarget> {
        let sm = major * 10 + minor;
        GpuTarget::ALL.into_iter().find(|g| g.sm().contains(&sm))
    }

    pub fn supports_fp8(self) -> bool {
        matches!(self, GpuTarget::Hopper | GpuTarget::Ada | GpuTarget::Thor)
    }

    pub fn has_dla(self) -> bool {
        self == GpuTarget::Orin
    }

    pub fn is_jetson(self) -> bool {
        matches!(self, GpuTarget::Orin | GpuTarget::Thor)
    }

    /// The quantized type this target is meant to run (FP8 where the tensor cores have it).
    pub fn preferred_quant(self) -> Quant {
        if self.supports_fp8() {
            Quant::Fp8
        } else {
            Quant::Int8
        }
    }

    /// Refuses a quantized type the GPU cannot run; `what` names the graph for the message.
    ///
    /// ```
    /// use flux2_runtime::trt::{GpuTarget, Quant};
    /// assert!(GpuTarget::Hopper.check_quant(Quant::Fp8, "transformer.onnx").is_ok());
    /// assert!(GpuTarget::Orin.check_quant(Quant::Fp8, "transformer.onnx").is_err());
    /// ```
    pub fn check_quant(self, quant: Quant, what: &str) -> Result<(), TrtError> {
        if quant == Quant::Fp8 && !self.supports_fp8() {
            return Err(TrtError::Refused {
                gpu: self.name().into(),
                msg: format!(
                    "{what} has FP8 (E4M3) Q/DQ nodes, but {} GPUs (sm{}, {}) have no FP8 tensor cores \
                     and TensorRT rejects FP8 Q/DQ there (\"Networks with FP8 Q/DQ layers require \
                     hardware with FP8 support\"). Calibrate this model for INT8 instead \
                     (`flux2 calibrate --precision int8`), or build for hopper, ada or thor",
                    self.name(),
                    self.sm()[0],
                    self.examples()
                ),
            });
        }
        Ok(())
    }

    /// Refuses DLA where there is none, and DLA with precisions it cannot run.
    pub fn check_dla(self, float: FloatPrecision, quant: Quant) -> Result<(), TrtError> {
        if !self.has_dla() {
            return Err(TrtError::Refused {
                gpu: self.name().into(),
                msg: format!(
                    "--dla: {} GPUs ({}) have no Deep Learning Accelerator; DLA exists only on \
                     Jetson AGX Orin and Orin NX",
                    self.name(),
                    self.examples()
                ),
            });
        }
        if float != FloatPrecision::Fp16 || quant == Quant::Fp8 {
            return Err(TrtError::Refused {
                gpu: self.name().into(),
                msg: format!(
                    "--dla: the DLA runs FP16 and INT8 only, not {}{}; use --float fp16",
                    float,
                    if quant == Quant::Fp8 { " with FP8" } else { "" }
                ),
            });
        }
        Ok(())
    }
}

impl fmt::Display for GpuTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GpuTarget {
    type Err = TrtError;
    fn from_str(s: &str) -> Result<Self, TrtError> {
        let t = s.trim().to_ascii_lowercase();
        Ok(match t.as_str() {
            "hopper" | "h100" | "h200" | "gh200" | "sm90" => GpuTarget::Hopper,
            "ada" | "l40s" | "l40" | "l4" | "rtx4090" | "sm89" => GpuTarget::Ada,
            "ampere" | "a100" | "a10" | "a40" | "sm80" | "sm86" => GpuTarget::Ampere,
            "orin" | "jetson-orin" | "agx-orin" | "sm87" => GpuTarget::Orin,
            "thor" | "jetson-thor" | "agx-thor" | "sm110" | "sm101" => GpuTarget::Thor,
            _ => {
                return Err(TrtError::Option {
                    name: "--gpu".into(),
                    msg: format!("'{s}' is not one of hopper, ada, ampere, orin, thor"),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_only_where_the_tensor_cores_have_it() {
        for g in GpuTarget::ALL {
            let r = g.check_quant(Quant::Fp8, "transformer.onnx");
            assert_eq!(r.is_ok(), matches!(g, GpuTarget::Hopper | GpuTarget::Ada | GpuTarget::Thor), "{g}");
            assert!(g.check_quant(Quant::Int8, "x").is_ok(), "{g}: int8");
        }
        let msg = GpuTarget::Orin.check_quant(Quant::Fp8, "transformer.onnx").unwrap_err().to_string();
        assert!(msg.contains("transformer.onnx") && msg.contains("orin") && msg.contains("INT8"), "{msg}");
    }

    #[test]
    fn dla_only_on_orin_with_fp16() {
        assert!(GpuTarget::Orin.check_dla(FloatPrecision::Fp16, Quant::Int8).is_ok());
        assert!(GpuTarget::Orin.check_dla(FloatPrecision::Bf16, Quant::None).is_err());
        assert!(GpuTarget::Thor.check_dla(FloatPrecision::Fp16, Quant::None).is_err());
        assert!(GpuTarget::Hopper.check_dla(FloatPrecision::Fp16, Quant::None).is_err());
    }

    #[test]
    fn names_and_compute_capabilities_round_trip() {
        for g in GpuTarget::ALL {
            assert_eq!(g.name().parse::<GpuTarget>().unwrap(), g);
            for sm in g.sm() {
                assert_eq!(GpuTarget::from_compute_capability(sm / 10, sm % 10), Some(g));
            }
        }
        assert_eq!(GpuTarget::from_compute_capability(7, 5), None);
        assert!("volta".parse::<GpuTarget>().unwrap_err().to_string().contains("--gpu"));
    }
}
