//! The prompt-embedding cache: a prompt seen before skips the text encoder entirely (its
//! session is then not even created, so its weights never become resident).
//!
//! Embeddings are kept in memory (a byte budget, oldest out first) and, when a folder is
//! given, on disk: one file per prompt, named by a SHA-256 key over everything the embeddings
//! depend on: the text encoder's identity ([`model_identity`]: the manifest, the text-encoder
//! graph and its weight files by size, time, inode and content samples, the tokenizer files),
//! the prompt text and the settings (maximum sequence length; the text layers, dtype and
//! precision are in the manifest and the graph). A file is written to a temporary name and
//! renamed into place, and holds a header (magic, format, key, shape) and a SHA-256 of its
//! data: a file that is short, long, of another key or whose checksum fails is ignored (and
//! rewritten by the next encoder run), never trusted.
//!
//! The default folder is `<export>/.flux2-prompt-cache/` when the export folder can be
//! written, else `$XDG_CACHE_HOME/flux2/prompt-cache` (or `~/.cache/...`), where the key keeps
//! the models apart.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::tensor_file::Tensor;

/// The cache folder inside an export folder (hidden: `flux2 calibrate` does not copy it).
pub const CACHE_DIR: &str = ".flux2-prompt-cache";
const MAGIC: &[u8; 8] = b"F2PEMB\0\0";
/// Bumped when the file layout or the key changes.
const FORMAT: u32 = 1;
/// Header: magic, format, key (32), rank-3 shape (3 × u64), data bytes (u64); then the data
/// (f32 little-endian) and its SHA-256 (32).
const HEADER: usize = 8 + 4 + 32 + 24 + 8;

/// Hits and misses of one pipeline's cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PromptCacheCounts {
    pub memory_hits: usize,
    pub disk_hits: usize,
    pub misses: usize,
    /// Files found but refused (damaged, truncated, of another key).
    pub rejected: usize,
    pub written: usize,
}

/// A prompt-embedding cache: in memory, and optionally in a folder.
pub struct PromptCache {
    dir: Option<PathBuf>,
    budget: usize,
    used: usize,
    memory: HashMap<[u8; 32], Tensor>,
    order: VecDeque<[u8; 32]>,
    pub counts: PromptCacheCounts,
}

impl PromptCache {
    /// A cache of at most `memory_bytes` in memory and, with `dir`, on disk there.
    pub fn new(dir: Option<PathBuf>, memory_bytes: usize) -> PromptCache {
        PromptCache {
            dir,
            budget: memory_bytes,
            used: 0,
            memory: HashMap::new(),
            order: VecDeque::new(),
            counts: PromptCacheCounts::default(),
        }
    }

    /// The folder files are kept in, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The embeddings of `key`, from memory or disk.
    pub fn get(&mut self, key: &[u8; 32]) -> Option<Tensor> {
        if let Some(t) = self.memory.get(key) {
            self.counts.memory_hits += 1;
            return Some(t.clone());
        }
        let path = self.dir.as_ref()?.join(file_name(key));
        match read_entry(&path, key) {
            Ok(Some(t)) => {
                self.counts.disk_hits += 1;
                self.remember(*key, t.clone());
                Some(t)
            }
            Ok(None) => None,
            Err(why) => {
                log::warn!("prompt cache: ignoring {}: {why}", path.display());
                self.counts.rejected += 1;
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores the embeddings of `key` in memory and, with a folder, on disk (a failed write
    /// is logged and otherwise ignored: the cache only saves time).
    pub fn put(&mut self, key: [u8; 32], t: &Tensor) {
        if let Some(dir) = &self.dir {
            match write_entry(dir, &key, t) {
                Ok(()) => self.counts.written += 1,
                Err(e) => log::warn!("prompt cache: cannot write in {}: {e}", dir.display()),
            }
        }
        self.remember(key, t.clone());
    }

    fn remember(&mut self, key: [u8; 32], t: Tensor) {
        let bytes = t.data.len() * 4;
        if bytes > self.budget || self.memory.contains_key(&key) {
            return;
        }
        while self.used + bytes > self.budget {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(o) = self.memory.remove(&old) {
                self.used -= o.data.len() * 4;
            }
        }
        self.used += bytes;
        self.order.push_back(key);
        self.memory.insert(key, t);
    }
}

/// In-memory budget of the cache `flux2 generate` / `flux2 bench` use: a few dozen prompts.
pub const MEMORY_BYTES: usize = 256 << 20;

impl PromptCache {
    /// The cache a `--prompt-cache` value asks for: `off` none; `auto` in [`default_dir`] of
    /// the export (memory only when no folder can be written); anything else a folder.
    pub fn from_option(value: &str, export: &Path) -> Result<Option<PromptCache>, crate::RuntimeError> {
        match value.trim() {
            "off" | "none" | "" => Ok(None),
            "auto" => Ok(Some(PromptCache::new(default_dir(export), MEMORY_BYTES))),
            dir => {
                let dir = PathBuf::from(dir);
                if !writable(&dir) {
                    return Err(crate::RuntimeError::Input {
                        name: "--prompt-cache".into(),
                        msg: format!(
                            "{}: cannot create files there (give a writable folder, auto or off)",
                            dir.display()
                        ),
                    });
                }
                Ok(Some(PromptCache::new(Some(dir), MEMORY_BYTES)))
            }
        }
    }
}

/// The key of a prompt: SHA-256 over the format, the model identity, the settings and the text.
pub fn key(model: &str, max_len: usize, text: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [format!("flux2-prompt-cache {FORMAT}"), model.to_string(), format!("max_len={max_len}")] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.update((text.len() as u64).to_le_bytes());
    h.update(text.as_bytes());
    h.finalize().into()
}

/// The text encoder's identity in export folder `dir`: the manifest, the graph file `graph`
/// and its weight files, the tokenizer files (sizes, times, inodes, content hashes).
pub fn model_identity(dir: &Path, graph: &Path) -> String {
    let mut parts =
        vec![crate::session_cache::fingerprint(&dir.join(crate::manifest::MANIFEST)).unwrap_or_default()];
    parts.push(crate::session_cache::fingerprint(graph).unwrap_or_default());
    for (name, fp) in crate::session_cache::weight_files(graph) {
        parts.push(format!("{name} {fp}"));
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("tokenizer")) {
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            parts.push(format!(
                "{} {}",
                f.display(),
                crate::session_cache::fingerprint(&f).unwrap_or_default()
            ));
        }
    }
    parts.join("\n")
}

/// The default folder for an export: inside it when writable, else the user's cache folder.
pub fn default_dir(export: &Path) -> Option<PathBuf> {
    let inside = export.join(CACHE_DIR);
    if writable(&inside) {
        return Some(inside);
    }
    let base =
        std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache"))
        })?;
    let user = base.join("flux2").join("prompt-cache");
    writable(&user).then_some(user)
}

/// Whether files can be created in `dir` (made if missing).
fn writable(dir: &Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn file_name(key: &[u8; 32]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.emb")
}

/// Reads an entry: `Ok(None)` when absent, `Err(why)` when present but not to be trusted.
fn read_entry(path: &Path, key: &[u8; 32]) -> Result<Option<Tensor>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if bytes.len() < HEADER + 32 || &bytes[..8] != MAGIC {
        return Err(format!("{} bytes, not a prompt-cache file", bytes.len()));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    if u32::from_le_bytes(bytes[8..12].try_into().unwrap_or([0; 4])) != FORMAT || &bytes[12..44] != key {
        return Err("another format or key".into());
    }
    let shape: Vec<usize> = (0..3).map(|i| u64_at(44 + 8 * i) as usize).collect();
    let n = u64_at(68) as usize;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count.and_then(|c| c.checked_mul(4)) != Some(n) || bytes.len() != HEADER + n + 32 {
        return Err(format!("{} bytes for shape {shape:?}: truncated or padded", bytes.len()));
    }
    let data = &bytes[HEADER..HEADER + n];
    if Sha256::digest(data).as_slice() != &bytes[HEADER + n..] {
        return Err("checksum mismatch".into());
    }
    let data = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok(Some(Tensor { shape, data }))
}

/// Writes an entry to a temporary file in `dir` and renames it into place.
fn write_entry(dir: &Path, key: &[u8; 32], t: &Tensor) -> std::io::Result<()> {
    if t.shape.len() != 3 {
        return Err(std::io::Error::other(format!("embeddings of shape {:?}, not [1, L, ctx]", t.shape)));
    }
    std::fs::create_dir_all(dir)?;
    let data: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = Vec::with_capacity(HEADER + data.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(key);
    for d in &t.shape {
        out.extend_from_slice(&(*d as u64).to_le_bytes());
    }
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(&Sha256::digest(&data));
    let name = file_name(key);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&out)?;
        f.sync_all()
    });
    match result.and_then(|()| std::fs::rename(&tmp, dir.join(&name))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
#[path = "prompt_cache_tests.rs"]
mod tests;
