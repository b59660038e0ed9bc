//! Reading an exported ONNX model with its external data, and writing a rewritten one.
//!
//! Exported graphs keep their weights outside the protobuf (`<stem>.onnx.data`, or byte ranges
//! of hard-linked safetensors under `weights/<stem>/`). Reading resolves each
//! `external_data` entry against the model's folder and refuses locations that are absolute,
//! contain `..`, or resolve outside that folder (the rule ONNX Runtime applies too).
//!
//! Writing has two modes ([`DataMode`]):
//! * `SelfContained`: every initializer of 1 KiB or more goes into a fresh `<stem>.onnx.data`
//!   (bytes copied from wherever they live now); the result depends on nothing else.
//! * `KeepExternal`: initializers that are already external keep pointing at their files (the
//!   caller links those files beside the new model); only inline tensors move into the new
//!   data file. Used for the temporary models of statistics and sensitivity runs, which share
//!   the original weights instead of copying them each time.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use flux2_graphs::onnx::{self, GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use prost::Message;

use crate::error::{io_err, CalibError, Result};

/// ONNX data types, by `TensorProto.DataType` code.
pub use flux2_graphs::onnx_dtype as dtype;

/// Bytes per element of an ONNX data type (None for strings and unknown codes).
pub fn elem_size(data_type: i32) -> Option<usize> {
    Some(match data_type {
        2 | 3 | 9 | 17..=20 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 => 8,
        _ => return None,
    })
}

/// An ONNX model file and the folder its external data is relative to.
#[derive(Clone, Debug)]
pub struct OnnxFile {
    pub path: PathBuf,
    pub proto: ModelProto,
}

/// How [`write_model`] stores initializers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DataMode {
    SelfContained,
    KeepExternal,
}

/// Tensors at least this large go to the external data file.
const EXTERNAL_MIN_BYTES: usize = 1024;

impl OnnxFile {
    /// Decodes `path` (external data is read lazily, per tensor).
    pub fn read(path: &Path) -> Result<OnnxFile> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let proto = ModelProto::decode(bytes.as_slice())
            .map_err(|e| CalibError::BadModel { path: path.to_path_buf(), msg: e.to_string() })?;
        if proto.graph.is_none() {
            return Err(CalibError::BadModel { path: path.to_path_buf(), msg: "no graph".into() });
        }
        Ok(OnnxFile { path: path.to_path_buf(), proto })
    }

    /// The folder external data locations are relative to.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub fn graph(&self) -> &GraphProto {
        // `read` refuses models without a graph
        self.proto.graph.as_ref().unwrap_or_else(|| unreachable!("checked in OnnxFile::read"))
    }

    /// The initializer called `name`.
    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.graph().initializer.iter().find(|t| t.name == name)
    }

    fn tensor_err(&self, t: &TensorProto, msg: impl Into<String>) -> CalibError {
        CalibError::Tensor { name: t.name.clone(), path: self.path.clone(), msg: msg.into() }
    }

    /// Number of elements of `t` from its dims.
    pub fn numel(t: &TensorProto) -> usize {
        t.dims.iter().map(|&d| d.max(0) as usize).product()
    }

    /// The little-endian bytes of `t`, wherever they are stored.
    pub fn tensor_bytes(&self, t: &TensorProto) -> Result<Vec<u8>> {
        // INT4 / UINT4 (weight-only low-bit exports) pack two elements per byte
        let packed4 = matches!(t.data_type, 21 | 22);
        let size = if packed4 { Some(1) } else { elem_size(t.data_type) }
            .ok_or_else(|| self.tensor_err(t, format!("unsupported data type {}", t.data_type)))?;
        let want = if packed4 { Self::numel(t).div_ceil(2) } else { Self::numel(t) * size };
        let bytes = if t.data_location == onnx::tensor_proto::DataLocation::External as i32 {
            self.read_external(t, want)?
        } else {
            flux2_graphs::inline_tensor_bytes(t, size).ok_or_else(|| self.tensor_err(t, "no data"))?
        };
        if bytes.len() != want {
            return Err(
                self.tensor_err(t, format!("{} bytes for dims {:?}, expected {want}", bytes.len(), t.dims))
            );
        }
        Ok(bytes)
    }

    fn read_external(&self, t: &TensorProto, want: usize) -> Result<Vec<u8>> {
        let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
        let location =
            get("location").ok_or_else(|| self.tensor_err(t, "external data without a location"))?;
        let num = |k: &str| -> Result<Option<u64>> {
            get(k)
                .map(|v| v.parse::<u64>().map_err(|_| self.tensor_err(t, format!("bad external {k} '{v}'"))))
                .transpose()
        };
        let offset = num("offset")?.unwrap_or(0);
        let length = num("length")?.unwrap_or(want as u64);
        if length != want as u64 {
            return Err(
                self.tensor_err(t, format!("external length {length} != {want} bytes for dims {:?}", t.dims))
            );
        }
        let file = resolve_location(self.dir(), location).map_err(|msg| self.tensor_err(t, msg))?;
        let f = std::fs::File::open(&file).map_err(io_err(&file))?;
        let mut buf = vec![0u8; want];
        f.read_exact_at(&mut buf, offset).map_err(io_err(&file))?;
        Ok(buf)
    }

    /// `t` as f32 values (f32, f64, f16 and bf16 tensors).
    pub fn tensor_f32(&self, t: &TensorProto) -> Result<Vec<f32>> {
        let b = self.tensor_bytes(t)?;
        Ok(match t.data_type {
            dtype::FLOAT => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            dtype::DOUBLE => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            dtype::FLOAT16 => {
                b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            dtype::BFLOAT16 => {
                b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => return Err(self.tensor_err(t, format!("data type {other} is not a float type"))),
        })
    }

    /// `t` as i64 values (int64 and int32 tensors).
    pub fn tensor_i64(&self, t: &TensorProto) -> Result<Vec<i64>> {
        let b = self.tensor_bytes(t)?;
        Ok(match t.data_type {
            dtype::INT64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            dtype::INT32 => {
                b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()
            }
            other => return Err(self.tensor_err(t, format!("data type {other} is not an integer type"))),
        })
    }

    /// Every external-data location the model's initializers use.
    pub fn external_locations(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for t in &self.graph().initializer {
            if t.data_location == onnx::tensor_proto::DataLocation::External as i32 {
                if let Some(e) = t.external_data.iter().find(|e| e.key == "location") {
                    out.insert(e.value.clone());
                }
            }
        }
        out
    }
}

/// Checks that `location` is relative, has no `..`, and stays inside `dir`; returns the path.
pub fn resolve_location(dir: &Path, location: &str) -> std::result::Result<PathBuf, String> {
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("external data location '{location}' must be a plain relative path"));
    }
    let path = dir.join(rel);
    let (real, root) = (path.canonicalize(), dir.canonicalize());
    match (real, root) {
        (Ok(real), Ok(root)) if real.starts_with(&root) => Ok(path),
        (Ok(_), Ok(_)) => {
            Err(format!("external data location '{location}' resolves outside {}", dir.display()))
        }
        (Err(e), _) => Err(format!("external data file {}: {e}", path.display())),
        (_, Err(e)) => Err(format!("model folder {}: {e}", dir.display())),
    }
}

/// Makes the external files of `src` available under `dst` at the same relative paths:
/// hard links where possible, copies otherwise.
pub fn link_external_files(src: &OnnxFile, dst: &Path) -> Result<()> {
    for loc in src.external_locations() {
        let from = resolve_location(src.dir(), &loc)
            .map_err(|msg| CalibError::BadModel { path: src.path.clone(), msg })?;
        let to = dst.join(&loc);
        if to.exists() {
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io_err(&to))?;
        }
    }
    Ok(())
}

/// Writes `proto` as `<dir>/<stem>.onnx` (+ `<stem>.onnx.data`); tensor bytes that are still
/// external are read relative to `source` (the model the proto was derived from).
pub fn write_model(
    proto: &ModelProto,
    source: &OnnxFile,
    dir: &Path,
    stem: &str,
    mode: DataMode,
) -> Result<PathBuf> {
    let mut proto = proto.clone();
    let data_name = format!("{stem}.onnx.data");
    let data_path = dir.join(&data_name);
    let onnx_path = dir.join(format!("{stem}.onnx"));
    let file = std::fs::File::create(&data_path).map_err(io_err(&data_path))?;
    let mut out = std::io::BufWriter::with_capacity(8 << 20, file);
    let mut pos = 0u64;
    let external = onnx::tensor_proto::DataLocation::External as i32;
    let graph = proto.graph.get_or_insert_with(Default::default);
    for t in graph.initializer.iter_mut() {
        let is_external = t.data_location == external;
        if is_external && mode == DataMode::KeepExternal {
            continue;
        }
        let size = elem_size(t.data_type).unwrap_or(1) * OnnxFile::numel(t);
        if !is_external && size < EXTERNAL_MIN_BYTES {
            continue;
        }
        let bytes = source.tensor_bytes(t)?;
        let align: u64 = if bytes.len() >= 1 << 20 { 4096 } else { 64 };
        let pad = (align - pos % align) % align;
        out.write_all(&vec![0u8; pad as usize]).map_err(io_err(&data_path))?;
        pos += pad;
        out.write_all(&bytes).map_err(io_err(&data_path))?;
        let kv = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
        t.external_data = vec![
            kv("location", data_name.clone()),
            kv("offset", pos.to_string()),
            kv("length", bytes.len().to_string()),
        ];
        t.data_location = external;
        t.raw_data.clear();
        t.float_data.clear();
        t.int32_data.clear();
        t.int64_data.clear();
        pos += bytes.len() as u64;
    }
    out.flush().map_err(io_err(&data_path))?;
    std::fs::write(&onnx_path, proto.encode_to_vec()).map_err(io_err(&onnx_path))?;
    Ok(onnx_path)
}
