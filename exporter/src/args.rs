//! An export request as its callers spell it (`flux2 export` options, `flux2.export(...)`
//! keyword arguments): components, dtype, weights, target as text. One parser, one set of
//! messages for every front end.

use std::path::PathBuf;

use flux2_graphs::{DType, Target};

use crate::export::ExportRequest;
use crate::lowbit::{Bits, LowbitOptions, BLOCK_SIZES};
use crate::models::ExportOptions;
use crate::{ExportError, Kind, WeightMode};

/// The export options, as given (see `flux2 export --help`).
#[derive(Clone, Debug)]
pub struct ExportArgs {
    /// vae, transformer, text-encoder (None: every component found).
    pub components: Option<Vec<String>>,
    /// f32, f16 or bf16.
    pub dtype: String,
    /// copy or link.
    pub weights: String,
    /// ort or tensorrt.
    pub target: String,
    pub text_layers: Option<Vec<usize>>,
    /// A config.json overriding the detected one.
    pub config: Option<PathBuf>,
    /// Export weights with NaN/Inf values instead of refusing them.
    pub allow_nonfinite: bool,
    /// Link mode: read every linked tensor and refuse non-finite values.
    pub verify: bool,
    /// Link mode: what to do where a hard link is impossible (`copy`).
    pub link_fallback: Option<String>,
    /// float, int8, int4 or gguf: how the DiT's and text encoder's linear weights are stored.
    pub weights_precision: String,
    /// Input channels per weight scale for int8/int4 (16, 32, 64, 128 or 256).
    pub block_size: usize,
    /// int8/int4: also quantise the DiT's embedders, modulation and final layer.
    pub quantize_all: bool,
    /// dequantize (standard DequantizeLinear → MatMul) or matmulnbits (ONNX Runtime's kernel).
    pub lowbit_op: String,
}

impl Default for ExportArgs {
    fn default() -> Self {
        ExportArgs {
            components: None,
            dtype: "f32".into(),
            weights: "copy".into(),
            target: "ort".into(),
            text_layers: None,
            config: None,
            allow_nonfinite: false,
            verify: false,
            link_fallback: None,
            weights_precision: "float".into(),
            block_size: 128,
            quantize_all: false,
            lowbit_op: "dequantize".into(),
        }
    }
}

/// `--weights-precision`, `--block-size` and `--quantize-all` as low-bit options (None: float).
pub fn parse_lowbit(
    precision: &str,
    block_size: usize,
    all: bool,
) -> Result<Option<LowbitOptions>, ExportError> {
    let bits = match precision.to_ascii_lowercase().as_str() {
        "gguf" | "keep" => {
            if all {
                return Err(opt(
                    "--quantize-all",
                    "does not apply to --weights-precision gguf, which follows the file: every quantised \
                     GGUF tensor of a linear gets its type's low-bit form, float tensors stay float",
                ));
            }
            return Ok(Some(LowbitOptions {
                bits: Bits::Int8,
                block_size: 32,
                include_all: true,
                from_gguf: true,
                nbits_op: false,
            }));
        }
        "float" | "f" | "none" => {
            if all {
                return Err(opt("--quantize-all", "applies to --weights-precision int8 or int4 only"));
            }
            return Ok(None);
        }
        "int8" | "i8" | "w8" => Bits::Int8,
        "int4" | "i4" | "w4" => Bits::Int4,
        other => {
            return Err(opt(
                "--weights-precision",
                format!("'{other}' is not one of float, int8, int4, gguf"),
            ))
        }
    };
    if !BLOCK_SIZES.contains(&block_size) {
        let list: Vec<String> = BLOCK_SIZES.iter().map(|b| b.to_string()).collect();
        return Err(opt("--block-size", format!("{block_size} is not one of {}", list.join(", "))));
    }
    Ok(Some(LowbitOptions::fixed(bits, block_size, all)))
}

fn opt(name: &str, msg: impl Into<String>) -> ExportError {
    ExportError::Option { name: name.into(), msg: msg.into() }
}

/// A component name: vae, transformer (dit), text-encoder (te).
pub fn parse_kind(s: &str) -> Result<Kind, ExportError> {
    Ok(match s.trim().replace('_', "-").as_str() {
        "vae" => Kind::Vae,
        "transformer" | "dit" => Kind::Transformer,
        "text-encoder" | "te" => Kind::TextEncoder,
        other => {
            return Err(opt(
                "--components",
                format!("unknown component '{other}' (expected vae, transformer, text-encoder)"),
            ))
        }
    })
}

/// `--dtype`, `--target`, `--text-layers` and `--config` as graph options.
pub fn parse_options(
    dtype: &str,
    target: &str,
    text_layers: Option<Vec<usize>>,
    config: Option<&PathBuf>,
) -> Result<ExportOptions, ExportError> {
    let dtype = match DType::parse(dtype) {
        Some(d @ (DType::F32 | DType::F16 | DType::BF16)) => d,
        _ => return Err(opt("--dtype", format!("'{dtype}' is not one of f32, f16, bf16"))),
    };
    let target = match target {
        "ort" | "onnxruntime" => Target::Ort,
        "tensorrt" | "trt" => Target::TensorRt,
        other => return Err(opt("--target", format!("'{other}' is not one of ort, tensorrt"))),
    };
    let config_override = match config {
        Some(p) => {
            let at = |msg: String| opt("--config", format!("{}: {msg}", p.display()));
            let text = std::fs::read_to_string(p).map_err(|e| at(e.to_string()))?;
            Some(serde_json::from_str(&text).map_err(|e| at(format!("not JSON: {e}")))?)
        }
        None => None,
    };
    Ok(ExportOptions { dtype, target, text_layers, config_override })
}

impl ExportArgs {
    /// Checks every option and builds the exporter's request.
    pub fn into_request(self) -> Result<ExportRequest, ExportError> {
        let weights = match self.weights.as_str() {
            "copy" => WeightMode::Copy,
            "link" => WeightMode::Link,
            other => return Err(opt("--weights", format!("'{other}' is not one of copy, link"))),
        };
        let components = match &self.components {
            Some(list) => Some(list.iter().map(|s| parse_kind(s)).collect::<Result<Vec<_>, _>>()?),
            None => None,
        };
        let link_fallback_copy = match self.link_fallback.as_deref() {
            None => false,
            Some("copy") if weights == WeightMode::Link => true,
            Some("copy") => return Err(opt("--link-fallback", "copy only applies to --weights link")),
            Some(other) => {
                return Err(opt(
                    "--link-fallback",
                    format!("'{other}' is not supported (the only fallback is copy)"),
                ))
            }
        };
        let options = parse_options(&self.dtype, &self.target, self.text_layers, self.config.as_ref())?;
        let mut req = ExportRequest::new(components, options, weights);
        req.allow_nonfinite = self.allow_nonfinite;
        req.verify = self.verify;
        req.link_fallback_copy = link_fallback_copy;
        req.lowbit = parse_lowbit(&self.weights_precision, self.block_size, self.quantize_all)?;
        match (self.lowbit_op.to_ascii_lowercase().as_str(), req.lowbit.as_mut()) {
            ("dequantize" | "dq", _) => {}
            ("matmulnbits" | "nbits", Some(lo)) if self.target.eq_ignore_ascii_case("ort") => {
                lo.nbits_op = true
            }
            ("matmulnbits" | "nbits", Some(_)) => {
                return Err(opt(
                    "--lowbit-op",
                    "matmulnbits is ONNX Runtime's operator: use it with --target ort",
                ))
            }
            ("matmulnbits" | "nbits", None) => {
                return Err(opt("--lowbit-op", "applies to --weights-precision int8, int4 or gguf"))
            }
            (other, _) => {
                return Err(opt("--lowbit-op", format!("'{other}' is not one of dequantize, matmulnbits")))
            }
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_name_the_culprit() {
        let cases = [
            (ExportArgs { dtype: "f64".into(), ..Default::default() }, "--dtype"),
            (ExportArgs { weights: "move".into(), ..Default::default() }, "--weights"),
            (ExportArgs { target: "tflite".into(), ..Default::default() }, "--target"),
            (ExportArgs { weights_precision: "int3".into(), ..Default::default() }, "--weights-precision"),
            (
                ExportArgs { weights_precision: "int4".into(), block_size: 48, ..Default::default() },
                "--block-size",
            ),
            (ExportArgs { quantize_all: true, ..Default::default() }, "--quantize-all"),
            (ExportArgs { lowbit_op: "matmulnbits".into(), ..Default::default() }, "--lowbit-op"),
            (
                ExportArgs {
                    lowbit_op: "matmulnbits".into(),
                    weights_precision: "int4".into(),
                    target: "tensorrt".into(),
                    ..Default::default()
                },
                "--lowbit-op",
            ),
            (ExportArgs { lowbit_op: "qlinear".into(), ..Default::default() }, "--lowbit-op"),
            (ExportArgs { components: Some(vec!["unet".into()]), ..Default::default() }, "unet"),
            (
                ExportArgs { config: Some("/nonexistent/config.json".into()), ..Default::default() },
                "--config",
            ),
        ];
        for (args, culprit) in cases {
            let e = args.into_request().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(culprit), "{culprit}: {e}");
        }
        let ok = ExportArgs { components: Some(vec!["dit".into(), "te".into()]), ..Default::default() };
        let r = ok.into_request().expect("valid options");
        assert_eq!(r.components, Some(vec![Kind::Transformer, Kind::TextEncoder]));
        assert_eq!(r.lowbit, None, "float weights by default");
        let w4 = ExportArgs { weights_precision: "int4".into(), block_size: 64, ..Default::default() };
        let lo = w4.into_request().expect("valid options").lowbit;
        assert_eq!(lo, Some(LowbitOptions::fixed(Bits::Int4, 64, false)));
        let g = ExportArgs { weights_precision: "gguf".into(), ..Default::default() };
        assert!(g.into_request().expect("valid options").lowbit.is_some_and(|lo| lo.from_gguf));
    }
}
