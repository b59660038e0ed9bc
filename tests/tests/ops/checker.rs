//! `onnx.checker.check_model(full_check=True)` (strict shape inference included) on one
//! graph per target that uses every op emitter. Python with `onnx` is found through
//! `FLUX2_PYTHON` or `<repo>/.venv/bin/python` (made by scripts/setup.sh); without it the
//! test prints a note and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use flux2_graphs::ops::RopeStyle;
use flux2_graphs::{shape, DType, Graph, Model, Target};

/// A graph touching every emitter: conv / norm / resize / space-depth on an NCHW input, and
/// a GQA attention block with RMSNorm, both RoPE styles and a mask on a token input.
fn every_op(target: Target, dt: DType) -> flux2_graphs::Result<Model> {
    let g = Graph::new(target, dt);
    g.dim_range("B", 1, 1, 2);
    let img = g.input("img", dt, shape!["B", 4, "H", "W"])?;
    let tok = g.input("tok", dt, shape!["B", "S", 8])?;
    let mask = g.input("mask", dt, shape!["B", 1, "S", "S"])?;
    let cos = g.input("cos", dt, shape!["S", 2])?;
    let sin = g.input("sin", dt, shape!["S", 2])?;
    let idx = g.input("idx", DType::I64, shape!["N"])?;

    // NCHW path
    let x = {
        let _s = g.scope("down");
        let x = g.pad2d(img, 0, 1, 0, 1)?; // [B,4,H+1,W+1]
        let x = g.conv2d(x, "conv", (4, 8), 3, 2, 0)?; // [B,8,H/2,W/2]
        let x = g.group_norm(x, "norm", 2, 8, 1e-6)?;
        let x = g.silu(x)?;
        let x = g.depth_to_space_crd(x, 2)?; // [B,2,H,W]
        let x = g.space_to_depth(x, 2)?; // [B,8,H/2,W/2]
        g.upsample_nearest2x(x)? // [B,8,H,W]
    };
    g.output(x, "img_out")?;

    // token path: attention with GQA (4 query heads, 2 kv heads, Dh 4)
    let _s = g.scope("blk");
    let t = g.layer_norm(tok, 1e-6)?;
    let q0 = g.reshape(g.linear(t, "to_q", 8, 16, true)?, &[0, 0, 4, -1])?; // [B,S,4,4]
    let kv = g.reshape(g.linear(t, "to_kv", 8, 16, false)?, &[0, 0, 4, 4])?; // [B,S,4,4]
    let q = g.transpose(g.rms_norm(q0, "norm_q.weight", 1e-6)?, &[0, 2, 1, 3])?; // [B,4,S,4]
    let kv = g.transpose(kv, &[0, 2, 1, 3])?; // [B,4,S,4]
    let kvs = g.split(kv, 1, &[2, 2])?;
    let k = g.rope(kvs[0], cos, sin, RopeStyle::Halves)?;
    let q = g.rope(q, cos, sin, RopeStyle::Interleaved)?;
    let a = g.attention(q, k, kvs[1], Some(mask), 0.5)?; // [B,4,S,4]
    let a = g.reshape_like(g.transpose(a, &[0, 2, 1, 3])?, q0)?; // [B,S,4,4]
    let a = g.reshape(a, &[0, 0, -1])?; // [B,S,16]
    let parts = g.split(a, -1, &[8, 8])?;
    let h = g.swiglu(parts[0], parts[1])?;
    let h = g.concat(&[h, g.slice(tok, 1, 0, i64::MAX)?], 1)?; // [B,S+S,8]
    let h = g.gather(h, idx, 1)?; // [B,N,8]
    let h = g.squeeze(g.unsqueeze(h, &[1])?, &[1])?;
    let w = g.weight("gate", &[8, 8])?;
    let h = g.matmul(h, w)?;
    let m = g.reduce_mean(h, &[-1], true)?;
    let c = g.less(h, m)?;
    let h = g.where_(c, g.sub(h, m)?, g.div(h, g.add(m, g.scalar(2.0))?)?)?;
    let h = g.softmax(g.mul(h, g.cast(g.cast(h, DType::I64), dt))?, -1);
    g.output(h, "tok_out")?;
    let mut model = g.finish("every_op")?;
    model.inline_weights(|w| {
        Some((0..w.shape.iter().product()).map(|i| (i % 7) as f32 * 0.1 + 0.5).collect())
    })?;
    Ok(model)
}

/// `FLUX2_PYTHON`, else `<repo>/.venv/bin/python`, if it can import onnx.
fn python_with_onnx() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let py = std::env::var_os("FLUX2_PYTHON").map(PathBuf::from).unwrap_or(repo.join(".venv/bin/python"));
    let ok = Command::new(&py).args(["-c", "import onnx"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

#[test]
fn every_op_passes_onnx_checker() {
    let Some(py) = python_with_onnx() else {
        eprintln!("SKIPPED every_op_passes_onnx_checker: no python with onnx (set FLUX2_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    // Opset 21 (the TensorRT target) has no bf16 Conv, InstanceNormalization, Sin or Cos
    // (they gained it in opset 22), so bf16 is checked for the ONNX Runtime target only.
    let cases = [
        (Target::Ort, DType::F32),
        (Target::Ort, DType::F16),
        (Target::Ort, DType::BF16),
        (Target::TensorRt, DType::F32),
        (Target::TensorRt, DType::F16),
    ];
    for (target, dt) in cases {
        let model = every_op(target, dt).unwrap_or_else(|e| panic!("{target:?} {dt}: wiring: {e}"));
        let path = dir.path().join(format!("every_op_{}_{dt}.onnx", target.name()));
        std::fs::write(&path, model.to_bytes()).expect("write model");
        let code = "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)";
        let out = Command::new(&py).args(["-c", code]).arg(&path).output().expect("run python");
        if !out.status.success() {
            failures.push(format!("{target:?} {dt}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(failures.is_empty(), "onnx.checker rejected:\n{}", failures.join("\n"));
}
