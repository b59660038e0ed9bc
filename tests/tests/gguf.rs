//! The GGUF reader: every type decodes bit for bit like `gguf.quants.dequantize` of the
//! `gguf` 0.19.0 package (tests/fixtures/gguf/types.gguf, written by gen_gguf.py with that
//! package), every metadata value type reads back, dims come out row-major, version 2 files
//! read like version 3; damaged files (truncated, misaligned, unknown type, wrong shape,
//! absurd counts) are errors naming the file, the tensor and the type.

use std::path::{Path, PathBuf};

use flux2_exporter::gguf::{GgmlType, GgufFile, Value};
use flux2_tests::fixture;

fn types_file() -> PathBuf {
    fixture("gguf/types.gguf")
}

#[test]
fn every_type_matches_the_gguf_package_bit_for_bit() {
    let g = GgufFile::open(&types_file()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 64);
    let mut seen = Vec::new();
    for t in g.tensors.iter().filter(|t| !t.name.ends_with(".ref") && t.name != "f32_3d") {
        let r = g.tensor(&format!("{}.ref", t.name)).expect("reference tensor");
        assert_eq!(r.ty, GgmlType::F32);
        assert_eq!((t.shape.as_slice(), r.shape.as_slice()), (&[3, 512][..], &[3, 512][..]), "{}", t.name);
        let want: Vec<u32> =
            g.bytes(r).chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let got: Vec<u32> = g.dequantize(t).unwrap().iter().map(|v| v.to_bits()).collect();
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            diff,
            0,
            "{} ({}): {diff} of {} values differ from gguf.quants.dequantize",
            t.name,
            t.ty,
            want.len()
        );
        // a row-aligned slice decodes the same as the whole
        let mut row = vec![0f32; 512];
        g.dequantize_into(t, 512, &mut row).unwrap();
        assert!(row.iter().zip(&want[512..1024]).all(|(a, b)| a.to_bits() == *b), "{} row 1", t.name);
        seen.push(t.ty);
    }
    seen.sort();
    let mut all = GgmlType::ALL.to_vec();
    all.sort();
    assert_eq!(seen, all, "every decodable type is in the fixture");
}

#[test]
fn dims_are_reversed_to_row_major() {
    let g = GgufFile::open(&types_file()).unwrap();
    let t = g.tensor("f32_3d").unwrap();
    assert_eq!(t.shape, vec![2, 3, 32]);
    let v = g.dequantize(t).unwrap();
    assert!(v.iter().enumerate().all(|(i, x)| *x == i as f32));
}

fn json_matches(v: &Value, want: &serde_json::Value) -> bool {
    match (v, want) {
        (Value::Array(items), serde_json::Value::Array(w)) => {
            items.len() == w.len() && items.iter().zip(w).all(|(a, b)| json_matches(a, b))
        }
        (Value::String(s), serde_json::Value::String(w)) => s == w,
        (Value::Bool(b), serde_json::Value::Bool(w)) => b == w,
        (Value::U64(n), w) => w.as_u64() == Some(*n),
        (Value::F32(x), w) => w.as_f64().map(|w| w as f32) == Some(*x),
        (v, w) => v.as_f64().is_some() && v.as_f64() == w.as_f64(),
    }
}

#[test]
fn metadata_of_every_value_type() {
    let g = GgufFile::open(&types_file()).unwrap();
    let want: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("gguf/types.json")).unwrap()).unwrap();
    assert_eq!(g.architecture(), Some("test"));
    for (key, w) in &want {
        let v = g.metadata.get(key).unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(v.type_name(), w["type"].as_str().unwrap(), "{key}");
        assert!(json_matches(v, &w["value"]), "{key}: {v:?} vs {}", w["value"]);
    }
}

/// A copy of types.gguf edited by `edit`, in a temp dir.
fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("edited.gguf");
    let mut bytes = std::fs::read(types_file()).unwrap();
    edit(&mut bytes);
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

/// Byte offset of the tensor info of `name` (just after its name).
fn info_at(bytes: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    pat.extend_from_slice(&2u32.to_le_bytes()); // 2 dims
    bytes.windows(pat.len()).position(|w| w == pat.as_slice()).expect("tensor info") + pat.len()
}

fn open_err(p: &Path) -> String {
    match GgufFile::open(p) {
        Ok(_) => panic!("{} opened", p.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&p.display().to_string()), "names the file: {msg}");
            msg
        }
    }
}

#[test]
fn version_2_reads_like_version_3() {
    let (_d, p) = edited(|b| b[4..8].copy_from_slice(&2u32.to_le_bytes()));
    let (v2, v3) = (GgufFile::open(&p).unwrap(), GgufFile::open(&types_file()).unwrap());
    assert_eq!(v2.version, 2);
    assert_eq!(v2.tensors, v3.tensors);
    assert_eq!(v2.metadata, v3.metadata);
    let (_d, p) = edited(|b| b[4..8].copy_from_slice(&1u32.to_le_bytes()));
    assert!(open_err(&p).contains("version 1"));
    let (_d, p) = edited(|b| b[4..8].copy_from_slice(&3u32.to_be_bytes()));
    assert!(open_err(&p).contains("big-endian"));
    let (_d, p) = edited(|b| b[0] = b'X');
    assert!(open_err(&p).contains("magic"));
}

#[test]
fn truncated_data_names_the_tensor_and_type() {
    let (_d, p) = edited(|b| b.truncate(b.len() - 100));
    let e = open_err(&p);
    assert!(e.contains("'f32_3d'") && e.contains("F32") && e.contains("truncated"), "{e}");
    // cut inside the header
    let (_d, p) = edited(|b| b.truncate(300));
    let e = open_err(&p);
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn misaligned_offset_is_refused() {
    let (_d, p) = edited(|b| {
        let at = info_at(b, "q4_k") + 16 + 4; // dims, type
        let off = u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) + 32;
        b[at..at + 8].copy_from_slice(&off.to_le_bytes());
    });
    let e = open_err(&p);
    assert!(e.contains("'q4_k'") && e.contains("Q4_K") && e.contains("alignment 64"), "{e}");
}

#[test]
fn unknown_and_unsupported_types_are_named() {
    for (id, name) in [(99u32, "unknown type id 99"), (16, "IQ2_XXS")] {
        let (_d, p) = edited(|b| {
            let at = info_at(b, "q6_k") + 16;
            b[at..at + 4].copy_from_slice(&id.to_le_bytes());
        });
        let e = open_err(&p);
        assert!(e.contains("'q6_k'") && e.contains(name) && e.contains("not supported"), "{e}");
    }
}

#[test]
fn shape_and_size_mismatches_are_refused() {
    // a row that is not whole blocks
    let (_d, p) = edited(|b| {
        let at = info_at(b, "q8_0");
        b[at..at + 8].copy_from_slice(&500u64.to_le_bytes());
    });
    let e = open_err(&p);
    assert!(e.contains("'q8_0'") && e.contains("Q8_0") && e.contains("blocks of 32"), "{e}");
    // more rows than the data holds
    let (_d, p) = edited(|b| {
        let at = info_at(b, "f16") + 8;
        b[at..at + 8].copy_from_slice(&4000u64.to_le_bytes());
    });
    let e = open_err(&p);
    assert!(e.contains("'f16'") && e.contains("F16") && e.contains("beyond the end"), "{e}");
    // dims whose product overflows
    let (_d, p) = edited(|b| {
        let at = info_at(b, "bf16");
        b[at..at + 16].copy_from_slice(&[0xff; 16]);
    });
    let e = open_err(&p);
    assert!(e.contains("'bf16'") && e.contains("more elements"), "{e}");
}

#[test]
fn absurd_counts_fail_without_allocating() {
    // tensor count, metadata count and a string length of 2^60
    for at in [8usize, 16, 24] {
        let (_d, p) = edited(|b| b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes()));
        let e = open_err(&p);
        assert!(e.contains("cannot fit"), "{e}");
    }
}

#[test]
fn duplicate_tensor_names_are_refused() {
    let (_d, p) = edited(|b| {
        let at = info_at(b, "q5_0") - 4 - 4; // "q5_0" -> "q4_0"
        b[at..at + 4].copy_from_slice(b"q4_0");
    });
    let e = open_err(&p);
    assert!(e.contains("'q4_0'") && e.contains("twice"), "{e}");
}

#[test]
fn exact_types_reexpress_code_for_code() {
    use flux2_exporter::gguf::reexpress::{exact_form, reexpress};
    let g = GgufFile::open(&types_file()).unwrap();
    for name in ["q8_0", "q4_0", "q5_0", "q6_k", "q3_k"] {
        let t = g.tensor(name).unwrap();
        let form = exact_form(t.ty).expect("an exact form");
        let r = reexpress(&g, t, form).unwrap();
        let values = g.dequantize(t).unwrap();
        assert!(r.exact && r.added_rms == 0.0, "{name}: added {}", r.added_rms);
        assert!(r.zero_points.is_none());
        let lim = 1i16 << (form.bits - 1);
        assert!(r.codes.iter().all(|&c| (-lim..lim).contains(&c)), "{name}: codes fit {} bits", form.bits);
        // equal values (a zero scale cannot carry the sign of a zero: -0 and +0 compare equal)
        assert!((0..values.len()).all(|i| r.value(i) == values[i]), "{name}");
        assert_eq!(r.scales.len(), values.len() / form.block);
    }
    // Q8_0 and Q4_0 are INT8 / INT4 block 32 with the file's f16 scales
    let q8 = reexpress(&g, g.tensor("q8_0").unwrap(), exact_form(GgmlType::Q8_0).unwrap()).unwrap();
    assert_eq!((q8.form.bits, q8.form.block, q8.scales_f16), (8, 32, true));
    let q4 = reexpress(&g, g.tensor("q4_0").unwrap(), exact_form(GgmlType::Q4_0).unwrap()).unwrap();
    assert_eq!((q4.form.bits, q4.form.block, q4.scales_f16), (4, 32, true));
}

#[test]
fn approximate_types_report_their_added_error() {
    use flux2_exporter::gguf::reexpress::{exact_form, reexpress, Form};
    let g = GgufFile::open(&types_file()).unwrap();
    for name in ["q4_1", "q5_1", "q2_k", "q4_k", "q5_k"] {
        let t = g.tensor(name).unwrap();
        assert!(exact_form(t.ty).is_none(), "{name}");
        let values = g.dequantize(t).unwrap();
        let mut errs = Vec::new();
        for (bits, symmetric) in [(8, false), (8, true), (4, false), (4, true)] {
            let r = reexpress(&g, t, Form { bits, symmetric, block: 32 }).unwrap();
            // the reported error is the RMS of the reconstruction's difference
            let e2: f64 =
                (0..values.len()).map(|i| (f64::from(r.value(i)) - f64::from(values[i])).powi(2)).sum();
            let rms = (e2 / values.len() as f64).sqrt();
            assert!((rms - r.added_rms).abs() <= 1e-12 * (1.0 + rms), "{name}: {rms} vs {}", r.added_rms);
            assert!(!r.exact && r.added_rms > 0.0, "{name} {bits} {symmetric}");
            assert_eq!(r.zero_points.is_some(), !symmetric);
            let max = if symmetric { (1i16 << (bits - 1)) - 1 } else { (1i16 << bits) - 1 };
            let min = if symmetric { -max - 1 } else { 0 };
            assert!(r.codes.iter().all(|&c| (min..=max).contains(&c)), "{name}: codes in range");
            errs.push(r.added_rms);
        }
        eprintln!(
            "{name}: INT8 asym/sym {:.2e}/{:.2e}, INT4 asym/sym {:.2e}/{:.2e}",
            errs[0], errs[1], errs[2], errs[3]
        );
        assert!(errs[0] < errs[2] && errs[1] < errs[3], "{name}: 8 bits beat 4 bits");
    }
}
