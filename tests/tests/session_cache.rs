//! The session cache (fast cold start, `flux2_runtime::session_cache`): the first CPU session
//! on a graph writes ONNX Runtime's optimised graph into the export folder, later ones load
//! it; images are the same bit for bit with and without it; a changed key (source graph,
//! session options) or a damaged entry is never loaded but rebuilt.

use std::path::{Path, PathBuf};

use flux2_exporter::WeightMode;
use flux2_graphs::Target;
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::session_cache::{cache_counts, CacheCounts, CACHE_DIR};
use flux2_runtime::tensors::{run, Input};
use flux2_runtime::{cpu_session, SessionOptions};
use flux2_tests::export::{export_to, options};
use flux2_tests::fixture;

fn export_pipeline(out: &Path) {
    let mut opts = options(Target::Ort, None);
    opts.text_layers = Some(vec![1, 2, 3]); // the fixture's text encoder has 4 layers
    export_to(&fixture("pipeline/klein"), out, None, opts, WeightMode::Copy)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn sess(cache: bool, threads: usize) -> SessionOptions {
    SessionOptions { intra_threads: threads, cache, ..SessionOptions::default() }
}

fn image(dir: &Path, opts: SessionOptions) -> Vec<f32> {
    let mut p = Pipeline::new(dir, flux2_runtime::cpu_factory(opts)).unwrap_or_else(|e| panic!("{e}"));
    generate(&mut p, 32)
}

/// An image of the fixed request, its prompt padded to `max_len` tokens.
fn generate(p: &mut Pipeline, max_len: usize) -> Vec<f32> {
    let mut req = Request::new(PromptSource::Text("a fox in the snow".into()));
    (req.width, req.height, req.steps, req.max_sequence_length) = (Some(64), Some(64), Some(2), max_len);
    p.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{e}")).image.data
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const GRAPHS: [&str; 3] = ["text_encoder", "transformer", "vae_decoder"];

fn counts(dir: &Path) -> Vec<CacheCounts> {
    GRAPHS.iter().map(|g| cache_counts(&dir.join(format!("{g}.onnx")))).collect()
}

fn entries(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir.join(CACHE_DIR)) else { return vec![] };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{stem}-")))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn second_pipeline_loads_cached_graphs_and_makes_the_same_image() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("m");
    export_pipeline(&dir);
    let plain = image(&dir, sess(false, 2));
    assert!(!dir.join(CACHE_DIR).exists(), "cache off writes nothing");
    assert!(counts(&dir).iter().all(|c| *c == CacheCounts::default()));

    let first = image(&dir, sess(true, 2));
    for (g, c) in GRAPHS.iter().zip(counts(&dir)) {
        assert_eq!(c, CacheCounts { hits: 0, writes: 1, rejected: 0 }, "{g}");
        assert_eq!(entries(&dir, g).len(), 1, "{g}: one entry");
    }
    let second = image(&dir, sess(true, 2));
    for (g, c) in GRAPHS.iter().zip(counts(&dir)) {
        assert_eq!(c, CacheCounts { hits: 1, writes: 1, rejected: 0 }, "{g}");
    }
    assert_eq!(bits(&plain), bits(&first), "writing the cache changed the image");
    assert_eq!(bits(&plain), bits(&second), "the cached graphs changed the image");
    // no temporary folder is left behind
    let leftovers = std::fs::read_dir(dir.join(CACHE_DIR)).unwrap_or_else(|e| panic!("{e}")).flatten();
    assert!(leftovers.into_iter().all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")));
}

/// A cached text-encoder session has its padded length fixed (ONNX Runtime plans memory for
/// concrete shapes: a faster creation); a request padded to another length gets a session made
/// again for it, with the same image as a fresh pipeline.
#[test]
fn text_encoder_sessions_follow_the_padded_length() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("m");
    export_pipeline(&dir);
    let fresh = |len| {
        let mut p =
            Pipeline::new(&dir, flux2_runtime::cpu_factory(sess(false, 2))).unwrap_or_else(|e| panic!("{e}"));
        bits(&generate(&mut p, len))
    };
    let (plain32, plain24) = (fresh(32), fresh(24));
    assert_ne!(plain32, plain24, "the padded length should change this fixture's image");
    let te = dir.join("text_encoder.onnx");
    let mut p =
        Pipeline::new(&dir, flux2_runtime::cpu_factory(sess(true, 2))).unwrap_or_else(|e| panic!("{e}"));
    let created = |want: usize| {
        let c = cache_counts(&te);
        assert_eq!(c.hits + c.writes, want, "text-encoder sessions made: {c:?}");
    };
    assert_eq!(bits(&generate(&mut p, 32)), plain32);
    created(1);
    assert_eq!(bits(&generate(&mut p, 32)), plain32);
    created(1);
    assert_eq!(bits(&generate(&mut p, 24)), plain24, "a session fixed at 32 tokens ran 24");
    created(2);
    assert_eq!(bits(&generate(&mut p, 32)), plain32);
    created(3);
    // the cached session reports the fixed length as its input's size
    let spec = flux2_runtime::SessionSpec { overrides: vec![], fixed_dims: vec![("L".into(), 32)] };
    let s = flux2_runtime::cpu_session_spec(&te, &sess(true, 2), &spec).unwrap_or_else(|e| panic!("{e}"));
    let ids = s.inputs().iter().find(|i| i.name() == "input_ids").unwrap_or_else(|| panic!("no input_ids"));
    let shape = ids.dtype().tensor_shape().unwrap_or_else(|| panic!("input_ids is not a tensor"));
    assert_eq!(shape.last().copied(), Some(32), "input_ids shape {shape:?}");
}

/// Output of one session on the VAE decoder.
fn decode(path: &Path, opts: &SessionOptions) -> Vec<u32> {
    let mut s = cpu_session(path, opts).unwrap_or_else(|e| panic!("{e}"));
    let shape = [1usize, 128, 4, 4];
    let x = flux2_runtime::noise::noise(7, &shape);
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), x).unwrap_or_else(|e| panic!("{e}"));
    let o = run(&mut s, vec![("latents", Input::F32(a))]).unwrap_or_else(|e| panic!("{e}"));
    bits(o["image"].as_slice().unwrap_or_else(|| panic!("image not contiguous")))
}

#[test]
fn key_changes_and_damaged_entries_are_rebuilt_never_loaded() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("m");
    export_pipeline(&dir);
    let g = dir.join("vae_decoder.onnx");
    let reference = decode(&g, &sess(false, 2));
    let c = |h, w, r| CacheCounts { hits: h, writes: w, rejected: r };

    assert_eq!(decode(&g, &sess(true, 2)), reference);
    assert_eq!(decode(&g, &sess(true, 2)), reference);
    assert_eq!(cache_counts(&g), c(1, 1, 0));
    let first = entries(&dir, "vae_decoder");
    assert_eq!(first.len(), 1);

    // other session options: another key, a new entry replaces the old one
    assert_eq!(decode(&g, &sess(true, 1)), decode(&g, &sess(false, 1)));
    assert_eq!(cache_counts(&g), c(1, 2, 0));
    let second = entries(&dir, "vae_decoder");
    assert!(second.len() == 1 && second != first, "{first:?} -> {second:?}");

    // the source graph changed (rewritten: new modification time): the entry is stale
    let bytes = std::fs::read(&g).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&g, &bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decode(&g, &sess(true, 1)), decode(&g, &sess(false, 1)));
    assert_eq!(cache_counts(&g), c(1, 3, 0), "a changed source is a miss, not a hit");

    // damaged weights in the entry (same size): rejected, rebuilt, same output
    let entry = entries(&dir, "vae_decoder").remove(0);
    let data = entry.join("model.onnx.data");
    let mut w = std::fs::read(&data).unwrap_or_else(|e| panic!("{e}"));
    let n = w.len();
    w[n / 2..n / 2 + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    w[..64].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(&data, &w).unwrap_or_else(|e| panic!("{e}"));
    let reference1 = decode(&g, &sess(false, 1));
    assert_eq!(decode(&g, &sess(true, 1)), reference1);
    assert_eq!(cache_counts(&g), c(1, 4, 1));

    // a truncated graph file in the entry: the same
    let entry = entries(&dir, "vae_decoder").remove(0);
    let model = entry.join("model.onnx");
    let m = std::fs::read(&model).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&model, &m[..m.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decode(&g, &sess(true, 1)), reference1);
    assert_eq!(cache_counts(&g), c(1, 5, 2));
    // and the rebuilt entry is used again
    assert_eq!(decode(&g, &sess(true, 1)), reference1);
    assert_eq!(cache_counts(&g), c(2, 5, 2));
}
