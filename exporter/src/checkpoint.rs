//! A checkpoint: the union of tensors over one or more safetensors files (a single file,
//! a sharded set described by `*.safetensors.index.json`, or every shard in a folder), or
//! one GGUF file (a `.gguf` file, or a folder holding one and no safetensors).
//!
//! GGUF tensors that are not plain F32/F16/BF16 values (quantised, or permuted Q/K rows)
//! are presented as f32 at virtual offsets ([`crate::gguf::source`]); read tensor data
//! through [`Checkpoint::read_at`] or [`Checkpoint::bytes`], never by offset from the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flux2_graphs::DType;

use crate::fp8::Fp8Scales;
use crate::gguf::source::GgufSource;
use crate::safetensors::{RawTensor, SafeFile};
use crate::{io_err, ExportError, Result};

/// Largest `*.safetensors.index.json` read (released ones are well under 1 MB).
pub const MAX_INDEX: u64 = 64 << 20;

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub file: usize,
    pub raw: RawTensor,
}

impl TensorInfo {
    pub fn dtype(&self) -> DType {
        self.raw.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.raw.shape
    }
}

/// One opened checkpoint file.
pub struct CkptFile {
    pub path: PathBuf,
    /// Bytes before the data, less 8 (what [`crate::manifest::fingerprint`] reads past).
    pub header_len: u64,
    pub kind: FileKind,
}

/// The format of a checkpoint file.
pub enum FileKind {
    Safetensors(SafeFile),
    Gguf(GgufSource),
}

impl CkptFile {
    /// The GGUF source, if this is a GGUF file.
    pub fn gguf(&self) -> Option<&GgufSource> {
        match &self.kind {
            FileKind::Gguf(g) => Some(g),
            FileKind::Safetensors(_) => None,
        }
    }
}

/// Opened checkpoint files and the index of their tensors.
pub struct Checkpoint {
    /// What was opened (file, index or folder), for messages.
    pub origin: PathBuf,
    pub files: Vec<Arc<CkptFile>>,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// A config made from a GGUF file's metadata (llama.cpp text encoders), used where no
    /// `config.json` is given.
    pub gguf_config: Option<serde_json::Value>,
    /// Per-tensor scales of FP8 weights (their scale tensors are not in `tensors`).
    pub fp8: Fp8Scales,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a `.safetensors.index.json`, or a folder of shards.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        if path.is_dir() {
            return Self::open_dir(path);
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".index.json") {
            return Self::open_index(path);
        }
        if !path.exists() {
            return Err(ExportError::Io {
                path: path.to_path_buf(),
                err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        if crate::gguf::is_gguf(path) {
            return Self::open_gguf(path);
        }
        Self::from_files(path, &[path.to_path_buf()])
    }

    /// Opens one GGUF file.
    pub fn open_gguf(path: &Path) -> Result<Checkpoint> {
        let (src, raw) = GgufSource::open(path)?;
        let tensors = raw.into_iter().map(|(k, raw)| (k, TensorInfo { file: 0, raw })).collect();
        let gguf_config = src.config.clone();
        let file =
            CkptFile { path: path.to_path_buf(), header_len: src.header_len(), kind: FileKind::Gguf(src) };
        let files = vec![Arc::new(file)];
        Ok(Checkpoint { origin: path.to_path_buf(), files, tensors, gguf_config, fp8: Fp8Scales::default() })
    }

    fn open_dir(dir: &Path) -> Result<Checkpoint> {
        let mut shards = Vec::new();
        let mut indexes = Vec::new();
        let mut ggufs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let p = entry.map_err(io_err(dir))?.path();
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if n.ends_with(".safetensors.index.json") {
                indexes.push(p);
            } else if n.ends_with(".safetensors") {
                shards.push(p);
            } else if n.ends_with(".gguf") {
                ggufs.push(p);
            }
        }
        if indexes.is_empty() && shards.is_empty() {
            match ggufs.as_slice() {
                [one] => return Self::open_gguf(one),
                [] => {}
                _ => {
                    return Err(ExportError::UnknownLayout {
                        path: dir.to_path_buf(),
                        msg: format!("{} .gguf files here; a component folder holds one", ggufs.len()),
                    })
                }
            }
        }
        indexes.sort();
        shards.sort();
        match (indexes.as_slice(), shards.is_empty()) {
            ([index], _) => Self::open_index(index),
            ([], false) => Self::from_files(dir, &shards),
            ([], true) => Err(ExportError::UnknownLayout {
                path: dir.to_path_buf(),
                msg: "no .safetensors files in this folder".into(),
            }),
            _ => Err(ExportError::UnknownLayout {
                path: dir.to_path_buf(),
                msg: format!("several index files: {indexes:?}"),
            }),
        }
    }

    fn open_index(index: &Path) -> Result<Checkpoint> {
        let bad = |msg: String| ExportError::BadIndex { path: index.to_path_buf(), msg };
        let size = std::fs::metadata(index).map_err(io_err(index))?.len();
        if size > MAX_INDEX {
            return Err(bad(format!("{size} bytes is over the {MAX_INDEX}-byte limit for an index")));
        }
        let text = std::fs::read_to_string(index).map_err(io_err(index))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no 'weight_map' object".into()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<PathBuf> = Vec::new();
        for v in map.values() {
            let f = v.as_str().ok_or_else(|| bad("weight_map values must be file names".into()))?;
            if f.contains("..") || Path::new(f).is_absolute() {
                return Err(bad(format!("shard path '{f}' leaves the checkpoint folder")));
            }
            let p = dir.join(f);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        files.sort();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(bad(format!(
                "lists shard {} which {} (an unfinished download?)",
                missing.display(),
                if missing.exists() { "is not a file" } else { "does not exist" }
            )));
        }
        let ckpt = Self::from_files(index, &files)?;
        for (name, v) in map {
            let f = dir.join(v.as_str().unwrap_or_default());
            match ckpt.tensors.get(name) {
                Some(t) if ckpt.files[t.file].path == f => {}
                Some(t) => {
                    return Err(bad(format!(
                        "index puts '{name}' in {} but it is in {}",
                        f.display(),
                        ckpt.files[t.file].path.display()
                    )))
                }
                None => {
                    return Err(bad(format!("index lists '{name}' but {} does not contain it", f.display())))
                }
            }
        }
        Ok(ckpt)
    }

    fn from_files(origin: &Path, paths: &[PathBuf]) -> Result<Checkpoint> {
        let mut files = Vec::new();
        let mut tensors: BTreeMap<String, TensorInfo> = BTreeMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = SafeFile::open(p)?;
            let header_len = f.header_len;
            for (name, raw) in &f.tensors {
                if let Some(prev) = tensors.get(name) {
                    return Err(ExportError::DuplicateTensor {
                        name: name.clone(),
                        first: paths[prev.file].clone(),
                        second: p.clone(),
                    });
                }
                tensors.insert(name.clone(), TensorInfo { file: i, raw: raw.clone() });
            }
            files.push(Arc::new(CkptFile { path: p.clone(), header_len, kind: FileKind::Safetensors(f) }));
        }
        let bytes = |t: &TensorInfo| match &files[t.file].kind {
            FileKind::Safetensors(s) => s.bytes(&t.raw).to_vec(),
            FileKind::Gguf(_) => Vec::new(),
        };
        let fp8 = crate::fp8::extract(&mut tensors, &bytes, &|t| files[t.file].path.clone())?;
        Ok(Checkpoint { origin: origin.to_path_buf(), files, tensors, gguf_config: None, fp8 })
    }

    /// Looks a tensor up.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Name -> shape of every tensor (what config detection reads).
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors.iter().map(|(k, v)| (k.clone(), v.raw.shape.clone())).collect()
    }

    /// The bytes of a tensor in its [`TensorInfo::dtype`]: a slice of the mapped file, or the
    /// dequantised values of a GGUF tensor served at a virtual offset.
    pub fn bytes(&self, t: &TensorInfo) -> Result<std::borrow::Cow<'_, [u8]>> {
        let f = &self.files[t.file];
        match &f.kind {
            FileKind::Safetensors(s) => Ok(std::borrow::Cow::Borrowed(s.bytes(&t.raw))),
            FileKind::Gguf(g) if GgufSource::is_virtual(t.raw.offset) => {
                let mut buf = vec![0u8; t.raw.len as usize];
                g.read_virtual(&mut buf, t.raw.offset)?;
                Ok(std::borrow::Cow::Owned(buf))
            }
            FileKind::Gguf(g) => Ok(std::borrow::Cow::Borrowed(g.file.range(t.raw.offset, t.raw.len))),
        }
    }

    /// Reads `buf.len()` bytes of file `file` at `offset` (a tensor's offset plus a position in
    /// it), through `handle` (the file opened for reading) or, for GGUF tensors served
    /// dequantised, by dequantising. Use this instead of reading the file at the offset.
    pub fn read_at(
        &self,
        file: usize,
        handle: &std::fs::File,
        buf: &mut [u8],
        offset: u64,
    ) -> std::io::Result<()> {
        match self.files[file].gguf() {
            Some(g) if GgufSource::is_virtual(offset) => {
                g.read_virtual(buf, offset).map_err(|e| std::io::Error::other(e.to_string()))
            }
            _ => std::os::unix::fs::FileExt::read_exact_at(handle, buf, offset),
        }
    }

    /// Whether tensor data at `offset` of file `file` exists only dequantised (not as bytes of
    /// the file, so link mode cannot point at it).
    pub fn is_virtual(&self, file: usize, offset: u64) -> bool {
        self.files[file].gguf().is_some() && GgufSource::is_virtual(offset)
    }

    /// Total parameter count (elements).
    pub fn numel(&self) -> u64 {
        self.tensors.values().map(|t| t.raw.shape.iter().product::<usize>() as u64).sum()
    }

    /// Total bytes of tensor data.
    pub fn nbytes(&self) -> u64 {
        self.tensors.values().map(|t| t.raw.len).sum()
    }

    /// Histogram of dtypes (elements per dtype).
    pub fn dtypes(&self) -> BTreeMap<DType, u64> {
        let mut m = BTreeMap::new();
        for t in self.tensors.values() {
            *m.entry(t.raw.dtype).or_insert(0) += t.raw.shape.iter().product::<usize>() as u64;
        }
        m
    }
}
