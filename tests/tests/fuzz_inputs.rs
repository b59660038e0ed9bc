//! Property-based fuzzing (proptest, stable Rust) of every reader that takes a user's file:
//! the safetensors header reader, the sharded index reader, the export manifest reader, the
//! tensor files of `--prompt-embeds` / `--noise`, reference-image decoding, and GGUF files
//! (header, tensor infos, dequantisation, the checkpoint view with llama.cpp renaming).
//!
//! For arbitrary bytes and for mutations of valid files (byte flips, truncation, spliced
//! numbers), each reader must
//! * never panic (proptest fails the case on a panic),
//! * never allocate more than [`bound`]: 64 × the input size + 4 MiB (images: plus the
//!   decoder limit `MAX_DECODE_ALLOC`), measured by a counting global allocator on the
//!   calling thread,
//! * and on failure, return an error whose message names the file it could not use.
//!
//! Cases per property: `FUZZ_CASES` (default 400, a few seconds for all of them); the long
//! run is `scripts/fuzz_long.sh`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Counts live and peak bytes allocated by the current thread.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the bookkeeping touches only const-initialised
// thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        track(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        track(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak bytes it allocated on this thread.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(|p| p.get()) - base;
    (out, peak.max(0) as usize)
}

/// The allocation bound every reader must keep to, for an input of `size` bytes.
fn bound(size: usize) -> usize {
    64 * size + (4 << 20)
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() })
}

/// Checks one outcome: bounded allocation, and an error (if any) naming `culprit`.
fn check<T, E: std::fmt::Display>(
    what: &str,
    result: Result<T, E>,
    peak: usize,
    limit: usize,
    culprits: &[&Path],
) -> Result<(), TestCaseError> {
    prop_assert!(peak <= limit, "{what}: allocated {peak} bytes, over the bound {limit}");
    if let Err(e) = result {
        let msg = e.to_string();
        prop_assert!(
            culprits.iter().any(|c| msg.contains(&c.display().to_string())),
            "{what}: error does not name the file: {msg}"
        );
    }
    Ok(())
}

/// A valid safetensors file with a few small tensors.
fn valid_safetensors(names: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|(n, s)| {
            let k: usize = s.iter().product();
            (n.to_string(), s.clone(), (0..k).flat_map(|i| (i as f32 * 0.25).to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b))
        })
        .map(|(n, v)| (n, v.expect("valid view")))
        .collect();
    safetensors::tensor::serialize(views, None).expect("serialise")
}

/// Arbitrary bytes, or a valid file mutated: flipped bytes, a truncation, or a digit run
/// replaced by a huge or negative number (the header lengths and shapes readers trust).
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    let v1 = valid.clone();
    let v2 = valid.clone();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec((0..n, any::<u8>()), 1..8).prop_map(move |flips| {
            let mut b = v1.clone();
            for (i, x) in flips {
                b[i] = x;
            }
            b
        }),
        (0..n).prop_map(move |k| valid[..k].to_vec()),
        (
            0..n,
            prop_oneof![
                Just("18446744073709551615".to_string()),
                Just("-1".to_string()),
                Just("4294967296".to_string()),
                Just("1e300".to_string()),
                (0u64..u64::MAX).prop_map(|x| x.to_string())
            ]
        )
            .prop_map(move |(at, num)| splice_number(&v2, at, &num)),
    ]
}

/// Replaces the first run of ASCII digits at or after `at` with `num`.
fn splice_number(b: &[u8], at: usize, num: &str) -> Vec<u8> {
    let Some(start) = (at..b.len()).find(|&i| b[i].is_ascii_digit()) else { return b.to_vec() };
    let end = (start..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
    let mut out = b[..start].to_vec();
    out.extend_from_slice(num.as_bytes());
    out.extend_from_slice(&b[end..]);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write case");
    p
}

#[test]
fn safetensors_header_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let valid = valid_safetensors(&[("a.weight", vec![4, 3]), ("b.bias", vec![5])]);
    runner()
        .run(&mutated(valid), |bytes| {
            let p = write(dir.path(), "x.safetensors", &bytes);
            let (r, peak) =
                measured(|| flux2_exporter::safetensors::SafeFile::open(&p).map(|f| f.tensors.len()));
            check("SafeFile::open", r, peak, bound(bytes.len()), &[&p])
        })
        .expect("safetensors reader");
}

#[test]
fn sharded_index_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("s-1.safetensors"), valid_safetensors(&[("a.weight", vec![2, 2])]))
        .expect("shard");
    std::fs::write(dir.path().join("s-2.safetensors"), valid_safetensors(&[("b.weight", vec![3])]))
        .expect("shard");
    let valid = br#"{"metadata": {"total_size": 28}, "weight_map": {"a.weight": "s-1.safetensors", "b.weight": "s-2.safetensors"}}"#.to_vec();
    let names = prop_oneof![
        Just("s-1.safetensors".to_string()),
        Just("../s-1.safetensors".to_string()),
        Just("/etc/passwd".to_string()),
        Just("missing.safetensors".to_string()),
        Just(".".to_string()),
        "[a-z./-]{0,12}",
    ];
    let structured = proptest::collection::btree_map("[ab]\\.[a-z]{1,6}", names, 0..5)
        .prop_map(|m| serde_json::to_vec(&serde_json::json!({ "weight_map": m })).expect("json"));
    runner()
        .run(&prop_oneof![mutated(valid), structured], |bytes| {
            let p = write(dir.path(), "model.safetensors.index.json", &bytes);
            let (r, peak) = measured(|| flux2_exporter::Checkpoint::open(&p).map(|c| c.tensors.len()));
            // an index error names the index; a damaged shard's names the shard
            let shards = [dir.path().to_path_buf()];
            check("Checkpoint::open(index)", r, peak, bound(bytes.len() + 256), &[&p, &shards[0]])
        })
        .expect("index reader");
}

#[test]
fn manifest_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let valid = manifest_example();
    runner()
        .run(&mutated(valid), |bytes| {
            let p = write(dir.path(), "manifest.json", &bytes);
            let (r, peak) = measured(|| {
                flux2_runtime::model_dir::ModelDir::open(dir.path())
                    .and_then(|m| m.graph("transformer").map(|_| ()))
            });
            check("ModelDir::open", r, peak, bound(bytes.len()), &[dir.path(), &p])
        })
        .expect("manifest reader");
}

/// A manifest as the exporter writes it, with one graph.
fn manifest_example() -> Vec<u8> {
    let io = |name: &str, shape: &[&str]| flux2_exporter::manifest::IoSpec {
        name: name.into(),
        dtype: "f32".into(),
        shape: shape.iter().map(|s| s.to_string()).collect(),
    };
    let mut m = flux2_exporter::manifest::Manifest::new();
    m.variant = "klein-4b".into();
    m.pipeline.insert("is_distilled".into(), true.into());
    m.graphs.insert(
        "transformer".into(),
        flux2_exporter::manifest::GraphEntry {
            file: "transformer.onnx".into(),
            component: "transformer".into(),
            dtype: "f32".into(),
            weights: "copy".into(),
            target: "ort".into(),
            parameters: 123,
            inputs: vec![io("hidden_states", &["B", "S", "128"]), io("timestep", &["B"])],
            outputs: vec![io("velocity", &["B", "S", "128"])],
            dim_ranges: Default::default(),
            precision: None,
        },
    );
    serde_json::to_vec_pretty(&m).unwrap_or_default()
}

#[test]
fn tensor_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let valid = valid_safetensors(&[("prompt_embeds", vec![1, 3, 4]), ("noise", vec![1, 2, 1, 1])]);
    runner()
        .run(&(mutated(valid), prop_oneof![Just("prompt_embeds"), Just("noise")]), |(bytes, name)| {
            let p = write(dir.path(), "t.safetensors", &bytes);
            let (r, peak) = measured(|| flux2_runtime::tensor_file::read_tensor(&p, name));
            check("read_tensor", r, peak, bound(bytes.len()), &[&p])
        })
        .expect("tensor file reader");
}

/// A valid PNG and JPEG of `w`×`h`.
fn encoded_images(w: u32, h: u32) -> (Vec<u8>, Vec<u8>) {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, (x ^ y) as u8]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).expect("png");
    let mut jpg = std::io::Cursor::new(Vec::new());
    img.write_to(&mut jpg, image::ImageFormat::Jpeg).expect("jpeg");
    (png.into_inner(), jpg.into_inner())
}

#[test]
fn reference_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (png, jpg) = encoded_images(64, 80);
    let limit = |n: usize| bound(n) + flux2_runtime::images::MAX_DECODE_ALLOC as usize;
    runner()
        .run(&prop_oneof![mutated(png), mutated(jpg)], |bytes| {
            let p = write(dir.path(), "ref.png", &bytes);
            let (r, peak) = measured(|| flux2_runtime::images::load_reference(&p).map(|c| c.width));
            check("load_reference", r, peak, limit(bytes.len()), &[&p])
        })
        .expect("image decoding");
}

/// The bound is only a check if the counter sees allocations: a 1 MiB vector must register,
/// and so must the allocation of a reader that loads a whole file.
#[test]
fn the_allocation_counter_counts() {
    let (v, peak) = measured(|| vec![1u8; 1 << 20]);
    assert_eq!(v.len(), 1 << 20);
    assert!(peak >= 1 << 20, "peak {peak}");
    let dir = tempfile::tempdir().expect("tempdir");
    let p =
        write(dir.path(), "big.safetensors", &valid_safetensors(&[("prompt_embeds", vec![1, 256, 1024])]));
    let (r, peak) = measured(|| flux2_runtime::tensor_file::read_tensor(&p, "prompt_embeds"));
    assert!(r.is_ok());
    assert!(peak >= 2 * 256 * 1024 * 4, "reading 1 MiB of data and its f32 copy registers {peak} bytes");
}

/// A small valid GGUF v3 file: metadata of several value types (llama.cpp text names, so the
/// checkpoint path renames and un-permutes) and tensors of a float, a legacy and a K type.
fn valid_gguf() -> Vec<u8> {
    fn s(b: &mut Vec<u8>, x: &str) {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(3u64.to_le_bytes()); // tensors
    b.extend(4u64.to_le_bytes()); // metadata
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "llama.attention.head_count");
    b.extend(4u32.to_le_bytes());
    b.extend(2u32.to_le_bytes());
    s(&mut b, "llama.rope.freq_base");
    b.extend(6u32.to_le_bytes());
    b.extend(10000f32.to_le_bytes());
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    s(&mut b, "a");
    s(&mut b, "bc");
    // (name, dims innermost first, type, bytes)
    let tensors: [(&str, Vec<u64>, u32, usize); 3] = [
        ("output_norm.weight", vec![8], 0, 32),
        ("blk.0.attn_q.weight", vec![32, 4], 8, 4 * 34),
        ("blk.0.ffn_down.weight", vec![256, 1], 12, 144),
    ];
    let mut off = 0u64;
    for (name, dims, ty, len) in &tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
        off += (*len as u64).div_ceil(32) * 32;
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    for (i, (_, _, _, len)) in tensors.iter().enumerate() {
        let start = b.len();
        b.extend((0..*len).map(|k| ((k * 7 + i * 13) % 251) as u8 & 0x3f));
        while !(b.len() - start).is_multiple_of(32) {
            b.push(0);
        }
    }
    b
}

/// GGUF mutations: the generic ones plus a header field overwritten with an extreme number.
fn gguf_mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let v = valid.clone();
    let n = valid.len();
    let extreme = prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 62),
        Just(1u64 << 32),
        Just(0u64),
        Just(13u64),
        any::<u64>()
    ];
    prop_oneof![
        mutated(valid),
        (0..n.min(400), extreme, prop_oneof![Just(4usize), Just(8usize)]).prop_map(move |(at, x, w)| {
            let mut b = v.clone();
            let end = (at + w).min(b.len());
            b[at..end].copy_from_slice(&x.to_le_bytes()[..end - at]);
            b
        }),
    ]
}

#[test]
fn gguf_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let valid = valid_gguf();
    flux2_exporter::gguf::GgufFile::open(&write(dir.path(), "ok.gguf", &valid))
        .expect("the valid file opens");
    runner()
        .run(&gguf_mutated(valid), |bytes| {
            let p = write(dir.path(), "x.gguf", &bytes);
            let (r, peak) = measured(|| {
                // open, then decode every tensor (the reads an export makes)
                let g = flux2_exporter::gguf::GgufFile::open(&p)?;
                let mut n = 0;
                for t in &g.tensors {
                    n += g.dequantize(t)?.len();
                }
                Ok::<usize, flux2_exporter::gguf::GgufError>(n)
            });
            check("GgufFile::open", r, peak, bound(bytes.len()), &[&p])?;
            let (r, peak) = measured(|| {
                let ck = flux2_exporter::Checkpoint::open(&p)?;
                let mut n = 0;
                for t in ck.tensors.values() {
                    n += ck.bytes(t)?.len();
                }
                Ok::<usize, flux2_exporter::ExportError>(n)
            });
            check("Checkpoint::open (GGUF)", r, peak, bound(bytes.len()), &[&p])
        })
        .expect("GGUF reader");
}
