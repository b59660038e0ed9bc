//! Writing an ONNX model with its weights as external data.
//!
//! * `copy`: weights are streamed (pread, convert, append) into `<stem>.onnx.data` beside
//!   the model, converted to the graph's dtype. Peak memory is one chunk, not the model.
//! * `link`: no weight bytes are written. External-data entries point at byte ranges of
//!   the original `.safetensors` files, which are hard-linked into `weights/<stem>/` in the
//!   output folder, because ONNX Runtime rejects external-data paths that are absolute,
//!   contain `..`, or resolve (through symlinks) outside the model's folder. Hard links
//!   need the output on the same filesystem as the checkpoint. Where the checkpoint dtype
//!   differs from the graph's, a `Cast` follows the initializer; pieces of fused tensors
//!   become a `Concat`; reinterpreted shapes a `Reshape`.

use std::io::Write;
use std::path::{Path, PathBuf};

use flux2_graphs::onnx::{self, NodeProto, StringStringEntryProto, TensorProto};
use flux2_graphs::{attr, Model, Target};

use crate::checkpoint::Checkpoint;
use crate::convert::convert;
use crate::lowbit::{self, LowbitOptions, Site};
use crate::names::{Piece, ResolvedWeight};
use crate::{io_err, ExportError, Result};

mod sites;

/// How weights reach the ONNX file.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightMode {
    Copy,
    Link,
}

/// Weights changed on their way into the export (LoRA adapters merged at export). The
/// exporter knows nothing of adapter formats: the caller plans the merge against the graph's
/// weights and the writer asks it, per weight, whether and how the values change.
pub trait WeightMerge: std::fmt::Debug + Send + Sync {
    /// Whether `weight` of graph `graph` (file stem) changes.
    fn touches(&self, graph: &str, weight: &str) -> bool;
    /// Turns the f32 values of a touched weight ([out, in], row-major) into the merged ones.
    fn apply(&self, graph: &str, weight: &str, values: &mut [f32]);
    /// What the manifest records about the merge (`adapters`).
    fn records(&self) -> Vec<flux2_runtime::lora::AdapterRecord>;
}

/// Options for [`write_model`].
#[derive(Clone, Debug)]
pub struct WriteOptions<'a> {
    pub mode: WeightMode,
    /// Copy mode: export tensors holding NaN/Inf instead of failing on them.
    pub allow_nonfinite: bool,
    /// Link mode: where a hard link is impossible (another filesystem, a file we may not
    /// link), copy this graph's weights instead of failing.
    pub link_fallback_copy: bool,
    /// Weights to merge before writing. In link mode only the touched weights are written
    /// (to `<stem>.onnx.data`, in the graph's dtype); the others stay linked.
    pub merge: Option<&'a dyn WeightMerge>,
    /// Weight-only low-bit storage of the selected linears (`--weights-precision`), for graphs
    /// of this target. Quantised weights are always written (after any merge), never linked.
    pub lowbit: Option<(LowbitOptions, Target)>,
    /// Without `lowbit`: linears whose weights are FP8 in the checkpoint stay FP8 behind a
    /// per-tensor `DequantizeLinear` (`--target tensorrt`, [`lowbit::fp8`]).
    pub fp8_dq: bool,
}

impl WriteOptions<'_> {
    /// The options of `mode` with every check on, no fallback and nothing merged.
    pub fn new(mode: WeightMode) -> WriteOptions<'static> {
        WriteOptions {
            mode,
            allow_nonfinite: false,
            link_fallback_copy: false,
            merge: None,
            lowbit: None,
            fp8_dq: false,
        }
    }
}

/// What [`write_model`] produced.
#[derive(Clone, Debug, Default)]
pub struct WriteReport {
    pub onnx: PathBuf,
    pub files: Vec<PathBuf>,
    pub bytes_written: u64,
    pub bytes_linked: u64,
    /// How the weights were stored in the end (copy after a link fallback).
    pub mode: Option<WeightMode>,
}

/// Writes `<dir>/<stem>.onnx` plus its weights. `progress` receives bytes processed.
pub fn write_model(
    model: &Model,
    weights: &[ResolvedWeight],
    ckpt: &Checkpoint,
    dir: &Path,
    stem: &str,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<WriteReport> {
    let mut proto = model.proto.clone();
    let mut report = WriteReport { onnx: dir.join(format!("{stem}.onnx")), ..Default::default() };
    let mut prelude: Vec<NodeProto> = Vec::new();
    let mut inits: Vec<TensorProto> = Vec::new();
    // Linears stored low-bit are read, merged, quantised and written; weights an adapter
    // touches are merged and written; the others are copied or linked.
    let mut sites = match &opts.lowbit {
        Some((lo, _)) => lowbit::gguf::assign(lowbit::plan(model, stem, lo), weights, ckpt, lo),
        None => Vec::new(),
    };
    let site_of = |w: &ResolvedWeight| sites.iter().position(|s| s.weight == w.decl.name);
    let (quantised, weights): (Vec<ResolvedWeight>, Vec<ResolvedWeight>) =
        weights.iter().cloned().partition(|w| site_of(w).is_some());
    let touched = |w: &ResolvedWeight| opts.merge.is_some_and(|m| m.touches(stem, &w.decl.name));
    let fp8_sites: Vec<Site> = match (&opts.lowbit, opts.fp8_dq) {
        (None, true) => lowbit::fp8::plan_fp8(model, stem, &weights, ckpt)
            .into_iter()
            .filter(|s| !weights.iter().any(|w| w.decl.name == s.weight && touched(w)))
            .collect(),
        _ => Vec::new(),
    };
    let (fp8w, weights): (Vec<ResolvedWeight>, Vec<ResolvedWeight>) =
        weights.into_iter().partition(|w| fp8_sites.iter().any(|s| s.weight == w.decl.name));
    let (merged, rest): (Vec<ResolvedWeight>, Vec<ResolvedWeight>) = weights.into_iter().partition(touched);
    match opts.mode {
        WeightMode::Copy => inits = copy_weights(&rest, ckpt, dir, stem, opts, &mut report, progress)?,
        WeightMode::Link => {
            let refs: Vec<&ResolvedWeight> = rest.iter().collect();
            let linked =
                link_weights(&refs, ckpt, dir, stem, opts, &mut inits, &mut prelude, &mut report, progress)?;
            if !linked {
                // --link-fallback copy: this graph's weights are copied instead
                let link_dir = dir.join("weights").join(stem);
                std::fs::remove_dir_all(&link_dir).map_err(io_err(&link_dir))?;
                prelude = Vec::new();
                report = WriteReport { onnx: report.onnx, ..Default::default() };
                inits = copy_weights(&rest, ckpt, dir, stem, opts, &mut report, progress)?;
                report.mode = Some(WeightMode::Copy);
            }
        }
    }
    report.mode.get_or_insert(opts.mode);
    if let (Some(m), false) = (opts.merge, merged.is_empty()) {
        // appended after the copied weights (copy mode) or alone (link mode)
        let mut data = DataFile::append(dir, stem)?;
        for w in &merged {
            write_merged(w, ckpt, stem, m, &mut data, &mut inits, progress)?;
        }
        data.finish(&mut report)?;
    }
    let out = &mut sites::Out { proto: &mut proto, inits: &mut inits, report: &mut report };
    if let (Some((lo, target)), false) = (&opts.lowbit, quantised.is_empty()) {
        sites::write_lowbit(
            model,
            stem,
            ckpt,
            dir,
            (lo, *target),
            opts.merge,
            &quantised,
            &mut sites,
            out,
            progress,
        )?;
    }
    if !fp8_sites.is_empty() {
        sites::write_fp8_sites(
            model,
            stem,
            ckpt,
            dir,
            opts.allow_nonfinite,
            &fp8w,
            &fp8_sites,
            out,
            progress,
        )?;
    }
    let graph = proto.graph.get_or_insert_with(Default::default);
    graph.initializer.extend(inits);
    prelude.append(&mut graph.node);
    graph.node = prelude;
    let bytes = prost::Message::encode_to_vec(&proto);
    std::fs::write(&report.onnx, bytes).map_err(io_err(&report.onnx))?;
    Ok(report)
}

fn external(name: &str, dtype: i32, dims: &[usize], location: &str, offset: u64, len: u64) -> TensorProto {
    let kv = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dtype,
        name: name.to_string(),
        external_data: vec![
            kv("location", location.into()),
            kv("offset", offset.to_string()),
            kv("length", len.to_string()),
        ],
        data_location: onnx::tensor_proto::DataLocation::External as i32,
        ..Default::default()
    }
}

/// `<stem>.onnx.data`, written sequentially with aligned tensor starts.
struct DataFile {
    name: String,
    path: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    pos: u64,
    /// Where this writer started (bytes of the file before it).
    start: u64,
}

impl DataFile {
    /// `<stem>.onnx.data`, continued after what the copy already wrote there.
    fn append(dir: &Path, stem: &str) -> Result<DataFile> {
        let name = format!("{stem}.onnx.data");
        let path = dir.join(&name);
        let pos = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        Ok(DataFile { path, name, out: None, pos, start: pos })
    }

    /// Starts a tensor of `bytes` bytes; returns its offset.
    fn begin(&mut self, bytes: usize) -> Result<u64> {
        if self.out.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(io_err(&self.path))?;
            self.out = Some(std::io::BufWriter::with_capacity(8 << 20, file));
        }
        let align = if bytes >= 1 << 20 { 4096 } else { 64 };
        let pad = (align - self.pos % align) % align;
        self.write(&vec![0u8; pad as usize])?;
        Ok(self.pos)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(out) = self.out.as_mut() {
            out.write_all(bytes).map_err(io_err(&self.path))?;
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn finish(mut self, report: &mut WriteReport) -> Result<()> {
        if let Some(mut out) = self.out.take() {
            out.flush().map_err(io_err(&self.path))?;
            report.bytes_written += self.pos - self.start;
            if !report.files.contains(&self.path) {
                report.files.push(self.path);
            }
        }
        Ok(())
    }
}

fn copy_weights(
    weights: &[ResolvedWeight],
    ckpt: &Checkpoint,
    dir: &Path,
    stem: &str,
    opts: &WriteOptions,
    report: &mut WriteReport,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<TensorProto>> {
    let data_name = format!("{stem}.onnx.data");
    let data_path = dir.join(&data_name);
    report.bytes_written =
        crate::copy::copy_weights(weights, ckpt, &data_path, opts.allow_nonfinite, progress)?;
    report.files.push(data_path);
    let places = crate::copy::placement(weights);
    let init = |(w, (start, len)): (&ResolvedWeight, (u64, u64))| {
        external(&w.decl.name, w.decl.dtype.onnx(), &w.decl.shape, &data_name, start, len)
    };
    Ok(weights.iter().zip(places).map(init).collect())
}

fn cannot_convert(ckpt: &Checkpoint, p: &Piece, to: flux2_graphs::DType) -> ExportError {
    ExportError::Tensor {
        name: p.tensor.clone(),
        path: ckpt.files[p.file].path.clone(),
        msg: format!("cannot convert {} to {to}", p.dtype),
    }
}

/// Reads a weight whole (its pieces in order) as f32, merging an adapter where one touches it.
fn read_merged(
    w: &ResolvedWeight,
    ckpt: &Checkpoint,
    stem: &str,
    merge: Option<&dyn WeightMerge>,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<f32>> {
    let sources = open_sources(ckpt)?;
    let mut values = Vec::with_capacity(w.decl.shape.iter().product());
    for p in &w.pieces {
        let mut raw = vec![0u8; p.len as usize];
        ckpt.read_at(p.file, &sources[p.file], &mut raw, p.offset)
            .map_err(io_err(&ckpt.files[p.file].path))?;
        let at = values.len();
        if !crate::convert::decode(p.dtype, &raw, &mut values) {
            return Err(cannot_convert(ckpt, p, flux2_graphs::DType::F32));
        }
        if let Some(s) = p.scale {
            values[at..].iter_mut().for_each(|v| *v *= s);
        }
        progress(p.len);
    }
    if let Some(m) = merge.filter(|m| m.touches(stem, &w.decl.name)) {
        m.apply(stem, &w.decl.name, &mut values);
    }
    Ok(values)
}

/// Reads a weight whole as f32, merges, and writes it in the graph's dtype.
fn write_merged(
    w: &ResolvedWeight,
    ckpt: &Checkpoint,
    stem: &str,
    merge: &dyn WeightMerge,
    data: &mut DataFile,
    inits: &mut Vec<TensorProto>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let values = read_merged(w, ckpt, stem, Some(merge), progress)?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut conv = Vec::with_capacity(bytes.len());
    if !convert(flux2_graphs::DType::F32, w.decl.dtype, &bytes, &mut conv) {
        return Err(ExportError::Tensor {
            name: w.decl.name.clone(),
            path: ckpt.origin.clone(),
            msg: format!("cannot convert the merged weight to {}", w.decl.dtype),
        });
    }
    let start = data.begin(conv.len())?;
    data.write(&conv)?;
    inits.push(external(
        &w.decl.name,
        w.decl.dtype.onnx(),
        &w.decl.shape,
        &data.name,
        start,
        conv.len() as u64,
    ));
    Ok(())
}

fn open_sources(ckpt: &Checkpoint) -> Result<Vec<std::fs::File>> {
    ckpt.files.iter().map(|f| std::fs::File::open(&f.path).map_err(io_err(&f.path))).collect()
}

#[allow(clippy::too_many_arguments)]
fn link_weights(
    weights: &[&ResolvedWeight],
    ckpt: &Checkpoint,
    dir: &Path,
    stem: &str,
    opts: &WriteOptions,
    inits: &mut Vec<TensorProto>,
    prelude: &mut Vec<NodeProto>,
    report: &mut WriteReport,
    progress: &mut dyn FnMut(u64),
) -> Result<bool> {
    let link_dir = dir.join("weights").join(stem);
    std::fs::create_dir_all(&link_dir).map_err(io_err(&link_dir))?;
    let mut locations: Vec<Option<String>> = vec![None; ckpt.files.len()];
    // FP8 weights with a scale: the stored bytes are not the values
    if let Some(p) = weights.iter().flat_map(|w| &w.pieces).find(|p| p.scale.is_some()) {
        if opts.link_fallback_copy {
            return Ok(false);
        }
        return Err(ExportError::Tensor {
            name: p.tensor.clone(),
            path: ckpt.files[p.file].path.clone(),
            msg:
                "is FP8 with a per-tensor scale: --weights link cannot apply the scale; use --weights copy, \
                  or --link-fallback copy"
                    .into(),
        });
    }
    // GGUF tensors served dequantised have no bytes in the file to point at
    if let Some(p) = weights.iter().flat_map(|w| &w.pieces).find(|p| ckpt.is_virtual(p.file, p.offset)) {
        if opts.link_fallback_copy {
            return Ok(false);
        }
        let ty = ckpt.files[p.file].gguf().and_then(|g| g.stored_type(p.offset)).unwrap_or_default();
        return Err(ExportError::Tensor {
            name: p.tensor.clone(),
            path: ckpt.files[p.file].path.clone(),
            msg: format!(
                "is {ty} in a GGUF file: --weights link can point only at F32/F16/BF16 tensors stored as \
                 they are; use --weights copy, or --link-fallback copy"
            ),
        });
    }
    for w in weights {
        let mut parts = Vec::new();
        for (i, p) in w.pieces.iter().enumerate() {
            let loc = match &locations[p.file] {
                Some(l) => l.clone(),
                None => {
                    let l = match hard_link(ckpt, p.file, &link_dir, stem, report) {
                        Ok(l) => l,
                        Err(_) if opts.link_fallback_copy => return Ok(false),
                        Err(e) => return Err(e),
                    };
                    locations[p.file] = Some(l.clone());
                    l
                }
            };
            let name = if w.is_plain() { w.decl.name.clone() } else { format!("{}.__src{i}", w.decl.name) };
            inits.push(external(&name, p.dtype.onnx(), &p.shape, &loc, p.offset, p.len));
            report.bytes_linked += p.len;
            progress(p.len);
            parts.push((name, p));
        }
        if !w.is_plain() {
            prelude.extend(assemble(w, &parts));
        }
    }
    Ok(true)
}

/// Hard-links checkpoint file `file` into `link_dir`, returning its external-data location.
/// Symlinks are resolved first (a Hugging Face cache snapshot is symlinks into `blobs/`;
/// linking the symlink itself would leave a dangling relative link in the output).
fn hard_link(
    ckpt: &Checkpoint,
    file: usize,
    link_dir: &Path,
    stem: &str,
    report: &mut WriteReport,
) -> Result<String> {
    let src = &ckpt.files[file].path;
    let real = std::fs::canonicalize(src).map_err(io_err(src))?;
    let base = src.file_name().and_then(|n| n.to_str()).unwrap_or("weights.safetensors");
    let target = link_dir.join(format!("{file:03}-{base}"));
    std::fs::hard_link(&real, &target).map_err(|e| ExportError::Output {
        // name the place in the finished folder, not in the staging folder
        path: target
            .components()
            .filter(|c| !c.as_os_str().to_string_lossy().starts_with(".flux2-staging-"))
            .collect(),
        msg: link_failure(&real, &e),
    })?;
    report.files.push(target.clone());
    Ok(format!("weights/{stem}/{}", target.file_name().and_then(|n| n.to_str()).unwrap_or(base)))
}

/// Why a hard link failed, and what to do instead.
fn link_failure(src: &Path, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::CrossesDevices => {
            "the output folder is on another filesystem than the checkpoint, and hard links cannot cross \
             filesystems"
                .to_string()
        }
        std::io::ErrorKind::PermissionDenied => {
            "the system does not let this user hard-link that file (it belongs to someone else and is not \
             writable: fs.protected_hardlinks)"
                .to_string()
        }
        _ => format!("{e}"),
    };
    format!(
        "--weights link cannot hard-link {} into the output folder: {why}. Use --weights copy, put --out on \
         the checkpoint's filesystem, or add --link-fallback copy to copy only where linking is impossible",
        src.display()
    )
}

/// Nodes that build a non-plain weight from its linked pieces: Concat, Reshape, Cast.
fn assemble(w: &ResolvedWeight, parts: &[(String, &Piece)]) -> Vec<NodeProto> {
    let mut nodes = Vec::new();
    let node = |op: &str, inputs: Vec<String>, out: String, attrs: Vec<onnx::AttributeProto>| NodeProto {
        input: inputs,
        output: vec![out.clone()],
        name: format!("{out}.{}", op.to_ascii_lowercase()),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    };
    let mut cur = parts[0].0.clone();
    if parts.len() > 1 {
        let out = format!("{}.__concat", w.decl.name);
        nodes.push(node(
            "Concat",
            parts.iter().map(|(n, _)| n.clone()).collect(),
            out.clone(),
            vec![attr::int("axis", 0)],
        ));
        cur = out;
    }
    let shape_now: Vec<usize> = if parts.len() > 1 {
        let mut s = parts[0].1.shape.clone();
        if !s.is_empty() {
            s[0] = parts.iter().map(|(_, p)| p.shape.first().copied().unwrap_or(0)).sum();
        }
        s
    } else {
        parts[0].1.shape.clone()
    };
    let needs_cast = parts[0].1.dtype != w.decl.dtype;
    if shape_now != w.decl.shape {
        let shape_name = format!("{}.__shape", w.decl.name);
        nodes.push(NodeProto {
            output: vec![shape_name.clone()],
            name: format!("{shape_name}.constant"),
            op_type: "Constant".into(),
            attribute: vec![onnx::AttributeProto {
                name: "value_ints".into(),
                r#type: onnx::attribute_proto::AttributeType::Ints as i32,
                ints: w.decl.shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let out = if needs_cast { format!("{}.__reshaped", w.decl.name) } else { w.decl.name.clone() };
        nodes.push(node("Reshape", vec![cur, shape_name], out.clone(), vec![]));
        cur = out;
    }
    if needs_cast {
        nodes.push(node(
            "Cast",
            vec![cur],
            w.decl.name.clone(),
            vec![attr::int("to", w.decl.dtype.onnx() as i64)],
        ));
    } else if cur != w.decl.name {
        nodes.push(node("Identity", vec![cur], w.decl.name.clone(), vec![]));
    }
    nodes
}
