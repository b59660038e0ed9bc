//! Fast cold start: an on-disk cache of the graph ONNX Runtime's CPU provider actually runs.
//!
//! Creating a CPU session spends most of its time in ONNX Runtime's graph optimisations
//! (constant folding of the exporter's weight transposes, fusions, the NCHWc layout of
//! convolutions, Q/DQ fusions) and in pre-packing weights for its GEMM kernels. The first
//! session on a graph therefore also writes ONNX Runtime's optimised model (its
//! `optimized_model_filepath`, weights as external data, with the pre-packed weights saved
//! too: `session.save_external_prepacked_constant_initializers`); later sessions, in this or
//! any other process, load that model with graph optimisations disabled, which runs the same
//! kernels on the same weights (same outputs bit for bit) without redoing the work.
//!
//! An entry is `<export>/.flux2-session-cache/<graph stem>-<key>/` holding `model.onnx`,
//! `model.onnx.data` and `entry.json`. The key hashes everything the optimised graph depends
//! on: the ONNX Runtime build (version string, library file), the CPU (model, family and
//! instruction sets from [`crate::cpu`]: the optimised graph may contain kernels chosen for
//! them), the provider and session options (threads, optimisation level, Q/DQ fusions), and
//! the source graph (name, size, modification time, inode and, when small, a SHA-256 of the
//! `.onnx` file; the same of its external weight files). An entry is written into a temporary
//! folder and renamed into place only when complete, so a crashed or concurrent writer
//! leaves nothing half-written under a valid name. Before use, `entry.json` must match the
//! key field by field, and every file its size and a SHA-256 over the graph file and over
//! samples of the weight file spread through it (a full hash of gigabytes of weights would
//! cost what the cache saves); a mismatch, a missing file or a load failure rejects the
//! entry, which is then deleted and rebuilt from the source graph: a stale or damaged entry
//! is never used. Writing a new entry removes the other entries of the same graph.
//!
//! Sessions with initializer overrides (run-time LoRA) and sessions with optimisations off
//! are never cached. `FLUX2_SESSION_CACHE=off` disables the cache; a folder that cannot be
//! written just runs uncached.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The cache folder inside an export folder (hidden: `flux2 calibrate` does not copy it).
pub const CACHE_DIR: &str = ".flux2-session-cache";
/// Bumped when the entry layout or the way sessions are built from it changes.
const FORMAT: u32 = 1;
const MODEL: &str = "model.onnx";
const DATA: &str = "model.onnx.data";
const ENTRY: &str = "entry.json";
/// Files up to this size are hashed whole, larger ones by [`SAMPLES`] pieces: the same 4 MiB
/// of hashing at most per file (a whole hash of a 50 MB INT8 graph's weights, once for the
/// source and once for the entry, took about a third of its cached session's creation).
const HASH_WHOLE_MAX: u64 = SAMPLES * SAMPLE_BYTES;
/// Samples (of [`SAMPLE_BYTES`]) hashed through a large file.
const SAMPLES: u64 = 64;
const SAMPLE_BYTES: u64 = 64 << 10;

/// What happened to the cache for one session.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Sessions loaded from a valid entry.
    pub hits: usize,
    /// Entries written (first session on a graph, or after a rejection / key change).
    pub writes: usize,
    /// Entries found but refused (stale key fields, damaged files, failed load).
    pub rejected: usize,
}

static COUNTS: Mutex<Option<HashMap<PathBuf, CacheCounts>>> = Mutex::new(None);

/// The counts for sessions of the source graph `path` in this process (for tests and logs).
pub fn cache_counts(path: &Path) -> CacheCounts {
    let key = canonical(path);
    COUNTS.lock().ok().and_then(|m| m.as_ref().and_then(|m| m.get(&key).copied())).unwrap_or_default()
}

pub(crate) fn count(path: &Path, f: impl FnOnce(&mut CacheCounts)) {
    if let Ok(mut m) = COUNTS.lock() {
        f(m.get_or_insert_with(HashMap::new).entry(canonical(path)).or_default());
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether `FLUX2_SESSION_CACHE` leaves the cache on (anything but `off`/`0`/`false`/`no`).
pub fn enabled_by_env() -> bool {
    match std::env::var("FLUX2_SESSION_CACHE") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "off" | "0" | "false" | "no"),
        Err(_) => true,
    }
}

/// The recorded form of an entry: its key fields and its files' sizes and digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EntryRecord {
    pub format: u32,
    pub key: BTreeMap<String, String>,
    /// File name → (size, SHA-256 hex: whole for the graph, sampled for the weights).
    pub files: BTreeMap<String, (u64, String)>,
}

/// A cache slot for one graph under one key.
pub(crate) struct Slot {
    /// `<export>/.flux2-session-cache`.
    pub root: PathBuf,
    /// Entry folder name, `<stem>-<key hash>`.
    pub name: String,
    pub stem: String,
    pub key: BTreeMap<String, String>,
}

impl Slot {
    /// The slot of graph `source` for the key fields `settings` (ONNX Runtime, CPU, options)
    /// plus the source's own fingerprint. None when the source cannot be read.
    pub fn new(source: &Path, settings: BTreeMap<String, String>) -> Option<Slot> {
        let dir = source.parent()?;
        let stem = source.file_stem()?.to_str()?.to_string();
        let mut key = settings;
        key.insert("format".into(), FORMAT.to_string());
        key.insert("graph".into(), fingerprint(source)?);
        for (name, fp) in weight_files(source) {
            key.insert(format!("weights:{name}"), fp);
        }
        let mut h = Sha256::new();
        for (k, v) in &key {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        let hash = hex(&h.finalize());
        Some(Slot { root: dir.join(CACHE_DIR), name: format!("{stem}-{}", &hash[..16]), stem, key })
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    /// The entry's model file when the entry exists and checks out against the key and its
    /// recorded files; `Err(reason)` when it exists but must not be used; `Ok(None)` when absent.
    pub fn check(&self) -> Result<Option<PathBuf>, String> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(dir.join(ENTRY)).map_err(|e| format!("{ENTRY}: {e}"))?;
        let rec: EntryRecord = serde_json::from_str(&text).map_err(|e| format!("{ENTRY}: {e}"))?;
        if rec.format != FORMAT || rec.key != self.key {
            return Err("its key fields differ from this session's".into());
        }
        if !rec.files.contains_key(MODEL) {
            return Err(format!("{ENTRY} lists no {MODEL}"));
        }
        for (name, want) in &rec.files {
            let got = digest(&dir.join(name)).ok_or_else(|| format!("{name} is missing"))?;
            if &got != want {
                return Err(format!("{name} does not match its recorded size and digest"));
            }
        }
        Ok(Some(dir.join(MODEL)))
    }

    /// A fresh temporary folder beside the entries for a writer to fill.
    pub fn temp_dir(&self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.root)?;
        let t = self.root.join(format!(".tmp-{}-{}-{}", self.name, std::process::id(), unique()));
        std::fs::create_dir(&t)?;
        Ok(t)
    }

    /// Records the files ONNX Runtime wrote into `tmp` and renames it into place, then removes
    /// this graph's other entries. A concurrent writer that got there first wins.
    pub fn publish(&self, tmp: &Path) -> std::io::Result<()> {
        let mut files = BTreeMap::new();
        for name in [MODEL, DATA] {
            if let Some(d) = digest(&tmp.join(name)) {
                files.insert(name.to_string(), d);
            }
        }
        if !files.contains_key(MODEL) {
            return Err(std::io::Error::other(format!("ONNX Runtime wrote no {MODEL}")));
        }
        let rec = EntryRecord { format: FORMAT, key: self.key.clone(), files };
        let text = serde_json::to_string_pretty(&rec).map_err(std::io::Error::other)?;
        std::fs::write(tmp.join(ENTRY), text)?;
        let dir = self.dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(tmp, &dir)?;
        self.remove_others();
        Ok(())
    }

    /// Deletes this graph's entries under other keys (stale ones).
    fn remove_others(&self) {
        let Ok(rd) = std::fs::read_dir(&self.root) else { return };
        let prefix = format!("{}-", self.stem);
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            let hash = n.strip_prefix(&prefix).filter(|h| h.len() == 16);
            if hash.is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())) && n != self.name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Removes this slot's entry (a rejected one).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size, modification time, inode and (up to [`HASH_WHOLE_MAX`]) content hash of a file.
pub(crate) fn fingerprint(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let content = if m.len() <= HASH_WHOLE_MAX {
        let mut h = Sha256::new();
        h.update(std::fs::read(path).ok()?);
        hex(&h.finalize())
    } else {
        digest(path)?.1
    };
    Some(format!("{} {}.{} {}:{} {content}", m.len(), m.mtime(), m.mtime_nsec(), m.dev(), m.ino()))
}

/// The external weight files of a graph ([`crate::model_dir::graph_weight_files`]), with their
/// fingerprints (size, time, inode; sampled hash).
pub(crate) fn weight_files(source: &Path) -> Vec<(String, String)> {
    let stat = |p: &Path| -> Option<String> {
        let m = std::fs::metadata(p).ok()?;
        Some(format!("{} {}.{} {}:{} {}", m.len(), m.mtime(), m.mtime_nsec(), m.dev(), m.ino(), digest(p)?.1))
    };
    crate::model_dir::graph_weight_files(source)
        .into_iter()
        .filter_map(|(n, p)| Some((n, stat(&p)?)))
        .collect()
}

/// (size, SHA-256 hex) of a file: whole up to [`HASH_WHOLE_MAX`], else of its size and
/// [`SAMPLES`] evenly spread pieces of [`SAMPLE_BYTES`] (first and last included).
pub(crate) fn digest(path: &Path) -> Option<(u64, String)> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    if len <= HASH_WHOLE_MAX {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf).ok()?;
        if buf.len() as u64 != len {
            return None;
        }
        h.update(&buf);
    } else {
        let mut buf = vec![0u8; SAMPLE_BYTES as usize];
        let span = len - SAMPLE_BYTES;
        for i in 0..SAMPLES {
            let at = span * i / (SAMPLES - 1);
            f.seek(SeekFrom::Start(at)).ok()?;
            f.read_exact(&mut buf).ok()?;
            h.update(at.to_le_bytes());
            h.update(&buf);
        }
    }
    Some((len, hex(&h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BTreeMap<String, String> {
        [("ort".to_string(), "1.31.1".to_string())].into_iter().collect()
    }

    #[test]
    fn key_follows_the_source_and_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let g = tmp.path().join("g.onnx");
        std::fs::write(&g, b"graph v1").unwrap();
        let a = Slot::new(&g, settings()).unwrap();
        assert_eq!(a.name, Slot::new(&g, settings()).unwrap().name, "same inputs, same key");
        let mut other = settings();
        other.insert("cpu".into(), "AVX-512F".into());
        assert_ne!(a.name, Slot::new(&g, other).unwrap().name, "settings are in the key");
        std::fs::write(&g, b"graph v2").unwrap();
        assert_ne!(a.name, Slot::new(&g, settings()).unwrap().name, "content is in the key");
        std::fs::write(tmp.path().join("g.onnx.data"), b"weights").unwrap();
        let b = Slot::new(&g, settings()).unwrap();
        assert!(b.key.contains_key("weights:g.onnx.data"), "{:?}", b.key);
    }

    #[test]
    fn entries_are_checked_before_use() {
        let tmp = tempfile::tempdir().unwrap();
        let g = tmp.path().join("g.onnx");
        std::fs::write(&g, b"graph").unwrap();
        let slot = Slot::new(&g, settings()).unwrap();
        assert_eq!(slot.check(), Ok(None));
        let t = slot.temp_dir().unwrap();
        std::fs::write(t.join(MODEL), b"optimised").unwrap();
        std::fs::write(t.join(DATA), vec![7u8; 1000]).unwrap();
        slot.publish(&t).unwrap();
        assert!(!t.exists(), "the temporary folder was renamed into place");
        assert_eq!(slot.check(), Ok(Some(slot.dir().join(MODEL))));
        // damaged weights (same size) are refused
        std::fs::write(slot.dir().join(DATA), vec![8u8; 1000]).unwrap();
        assert!(slot.check().unwrap_err().contains(DATA));
        // a truncated file is refused
        std::fs::write(slot.dir().join(DATA), vec![7u8; 999]).unwrap();
        assert!(slot.check().is_err());
        std::fs::write(slot.dir().join(DATA), vec![7u8; 1000]).unwrap();
        assert!(slot.check().is_ok());
        // a missing or unreadable record is refused
        std::fs::write(slot.dir().join(ENTRY), b"{not json").unwrap();
        assert!(slot.check().unwrap_err().contains(ENTRY));
    }

    #[test]
    fn a_new_entry_replaces_the_graphs_stale_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let g = tmp.path().join("g.onnx");
        std::fs::write(&g, b"graph v1").unwrap();
        let old = Slot::new(&g, settings()).unwrap();
        let t = old.temp_dir().unwrap();
        std::fs::write(t.join(MODEL), b"x").unwrap();
        old.publish(&t).unwrap();
        // another graph's entry is left alone
        let h = tmp.path().join("g2.onnx");
        std::fs::write(&h, b"other").unwrap();
        let keep = Slot::new(&h, settings()).unwrap();
        let t = keep.temp_dir().unwrap();
        std::fs::write(t.join(MODEL), b"y").unwrap();
        keep.publish(&t).unwrap();
        std::fs::write(&g, b"graph v2").unwrap();
        let new = Slot::new(&g, settings()).unwrap();
        let t = new.temp_dir().unwrap();
        std::fs::write(t.join(MODEL), b"z").unwrap();
        new.publish(&t).unwrap();
        assert!(!old.dir().exists() && new.dir().exists() && keep.dir().exists());
    }

    #[test]
    fn sampled_digest_sees_changes_through_a_large_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("big");
        let mut data = vec![0u8; (HASH_WHOLE_MAX + 12345) as usize];
        std::fs::write(&p, &data).unwrap();
        let a = digest(&p).unwrap();
        let last = data.len() - 1;
        data[last] = 1; // the last sample covers the end
        std::fs::write(&p, &data).unwrap();
        assert_ne!(a, digest(&p).unwrap());
    }
}
