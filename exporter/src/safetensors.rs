//! Memory-mapped safetensors files with their header validated up front.
//!
//! Format: 8-byte little-endian header length N, N bytes of JSON
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`, then the
//! data. Offsets are relative to the end of the header; we keep absolute file offsets so
//! external-data entries can point straight into the file.
//!
//! Every number in the header is checked against the file before it is used: the header
//! length against the file size (and [`MAX_HEADER`]), shapes with overflow-checked products,
//! offsets against the data region, so a damaged or hostile file ends in an error naming it,
//! never in a panic or an allocation larger than the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flux2_graphs::DType;
use memmap2::Mmap;

use crate::{io_err, ExportError, Result};

/// One tensor's place in a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub len: u64,
}

/// An opened, validated safetensors file.
pub struct SafeFile {
    pub path: PathBuf,
    pub size: u64,
    /// Length of the JSON header (the data starts at 8 + header_len).
    pub header_len: u64,
    pub tensors: BTreeMap<String, RawTensor>,
    pub metadata: BTreeMap<String, String>,
    mmap: Mmap,
}

/// Largest JSON header accepted (the released 32B [dev] transformer's is under 1 MB).
pub const MAX_HEADER: u64 = 100 << 20;

fn bad(path: &Path, msg: impl Into<String>) -> ExportError {
    ExportError::BadSafetensors { path: path.to_path_buf(), msg: msg.into() }
}

/// Maps a safetensors dtype string to ours.
pub fn parse_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F8_E4M3" => DType::F8E4M3,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

impl SafeFile {
    /// Opens and validates `path` (header length, JSON, dtypes, offsets, sizes).
    pub fn open(path: &Path) -> Result<SafeFile> {
        if path.is_dir() {
            return Err(bad(path, "is a folder, not a .safetensors file"));
        }
        if let (false, Ok(target)) = (path.exists(), std::fs::read_link(path)) {
            return Err(bad(
                path,
                format!(
                    "is a symlink to {}, which does not exist (an unfinished Hugging Face download?)",
                    target.display()
                ),
            ));
        }
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: the map is read-only; we never hand out references that outlive it, and a
        // concurrent truncation of the file by another process is outside our contract.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let size = mmap.len() as u64;
        if size < 8 {
            return Err(bad(path, format!("file is {size} bytes, shorter than the 8-byte header length")));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&mmap[..8]);
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER {
            return Err(bad(
                path,
                format!(
                    "header length {header_len} is over the {MAX_HEADER}-byte limit; not a safetensors file?"
                ),
            ));
        }
        if header_len > size - 8 {
            return Err(bad(
                path,
                format!("header length {header_len} goes beyond the file ({size} bytes); truncated?"),
            ));
        }
        let header: serde_json::Value = serde_json::from_slice(&mmap[8..8 + header_len as usize])
            .map_err(|e| bad(path, format!("header is not JSON: {e}")))?;
        let obj = header.as_object().ok_or_else(|| bad(path, "header is not a JSON object"))?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                if let Some(m) = v.as_object() {
                    for (k, val) in m {
                        metadata.insert(k.clone(), val.as_str().unwrap_or_default().to_string());
                    }
                }
                continue;
            }
            let t = parse_entry(path, name, v, data_start, size)?;
            tensors.insert(name.clone(), t);
        }
        Ok(SafeFile { path: path.to_path_buf(), size, header_len, tensors, metadata, mmap })
    }

    /// The raw bytes of a tensor (a slice of the map).
    pub fn bytes(&self, t: &RawTensor) -> &[u8] {
        &self.mmap[t.offset as usize..(t.offset + t.len) as usize]
    }

    /// The raw JSON header bytes (for fingerprints).
    pub fn header_bytes(&self) -> &[u8] {
        &self.mmap[..(8 + self.header_len) as usize]
    }
}

fn parse_entry(
    path: &Path,
    name: &str,
    v: &serde_json::Value,
    data_start: u64,
    size: u64,
) -> Result<RawTensor> {
    let field = |k: &str| v.get(k).ok_or_else(|| bad(path, format!("tensor '{name}' has no '{k}'")));
    let dt = field("dtype")?.as_str().unwrap_or_default();
    let dtype =
        parse_dtype(dt).ok_or_else(|| bad(path, format!("tensor '{name}' has unsupported dtype '{dt}'")))?;
    let shape: Vec<usize> = field("shape")?
        .as_array()
        .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
        .ok_or_else(|| bad(path, format!("tensor '{name}' has a malformed shape")))?;
    let offs: Vec<u64> = field("data_offsets")?
        .as_array()
        .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
        .filter(|o: &Vec<u64>| o.len() == 2 && o[0] <= o[1])
        .ok_or_else(|| bad(path, format!("tensor '{name}' has malformed data_offsets")))?;
    let len = offs[1] - offs[0];
    let need = shape
        .iter()
        .try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d as u64))
        .ok_or_else(|| bad(path, format!("tensor '{name}': shape {shape:?} is too large")))?;
    if need != len {
        return Err(bad(
            path,
            format!("tensor '{name}': shape {shape:?} of {dt} needs {need} bytes, data_offsets give {len}"),
        ));
    }
    let offset =
        data_start.checked_add(offs[0]).filter(|o| o.checked_add(len).is_some_and(|end| end <= size));
    let Some(offset) = offset else {
        return Err(bad(
            path,
            format!(
                "tensor '{name}' (data_offsets {:?}) ends beyond the file ({size} bytes); truncated?",
                offs
            ),
        ));
    };
    Ok(RawTensor { dtype, shape, offset, len })
}
