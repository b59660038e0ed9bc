//! The session cache with weight-only low-bit graphs at `MatMulNBits` accuracy level 4 (INT8
//! activations; the runtime's default on CPUs with INT8 dot products). ONNX Runtime 1.31.1
//! crashed running a level-4 DiT reloaded from an entry that held its pre-packed weights, so
//! such entries are written unpacked; this checks that a second pipeline loads them and makes
//! the image of an uncached pipeline bit for bit, for INT8 and INT4 weights.
//!
//! Its own test binary: the accuracy level is fixed once per process.

use std::path::Path;

use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::lowbit::{Bits, LowbitOptions};
use flux2_exporter::{ModelSource, WeightMode};
use flux2_graphs::Target;
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::session_cache::{cache_counts, CacheCounts};
use flux2_runtime::SessionOptions;
use flux2_tests::export::options;
use flux2_tests::fixture;

fn export_lowbit(out: &Path, bits: Bits) {
    let source = ModelSource::open(&fixture("pipeline/klein")).unwrap_or_else(|e| panic!("{e}"));
    let mut opts = options(Target::Ort, None);
    opts.text_layers = Some(vec![1, 2, 3]); // the fixture's text encoder has 4 layers
    let mut req = ExportRequest::new(None, opts, WeightMode::Copy);
    req.lowbit = Some(LowbitOptions::fixed(bits, 32, false));
    export(&source, out, &req, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
}

fn image(dir: &Path, cache: bool) -> Vec<u32> {
    let opts = SessionOptions { intra_threads: 2, cache, ..SessionOptions::default() };
    let mut p = Pipeline::new(dir, flux2_runtime::cpu_factory(opts)).unwrap_or_else(|e| panic!("{e}"));
    let mut req = Request::new(PromptSource::Text("a fox in the snow".into()));
    (req.width, req.height, req.steps, req.max_sequence_length) = (Some(64), Some(64), Some(2), 32);
    p.generate(&req, &mut |_| {})
        .unwrap_or_else(|e| panic!("{e}"))
        .image
        .data
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn level_4_low_bit_graphs_load_from_the_cache_and_make_the_same_image() {
    assert_eq!(flux2_runtime::ort_env::pin_nbits_accuracy_level("4"), "4");
    for bits in [Bits::Int8, Bits::Int4] {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("m");
        export_lowbit(&dir, bits);
        let plain = image(&dir, false);
        let first = image(&dir, true);
        let second = image(&dir, true);
        for g in ["text_encoder", "transformer"] {
            let c = cache_counts(&dir.join(format!("{g}.onnx")));
            assert_eq!(c, CacheCounts { hits: 1, writes: 1, rejected: 0 }, "{bits:?} {g}");
        }
        assert_eq!(plain, first, "{bits:?}: writing the cache changed the image");
        assert_eq!(plain, second, "{bits:?}: the cached graphs changed the image");
    }
}
