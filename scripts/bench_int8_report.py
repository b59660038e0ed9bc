#!/usr/bin/env python3
"""Checks and times a calibrated DiT against its float export (ONNX Runtime CPU).

    .venv/bin/python scripts/bench_int8_report.py FLOAT_DIR QUANT_DIR [--runs 9] [--tokens 1024] [--text 512]

* onnx.checker.check_model(full_check=True) on the quantised graph;
* the Q/DQ element types present (int8 / float8e4m3fn) and whether every INT8 weight DQ is
  per-channel (axis set, one scale per output channel);
* which kernels ONNX Runtime's optimizer made of it (MatMulIntegerToFloat = fused INT8);
* latency: float and quantised sessions run alternately on the same inputs (1 warm-up each,
  then --runs rounds), median wall time and median process CPU time per call, so that load
  from other processes on a shared machine hits both alike;
* output NMSE and cosine of the quantised velocity against float on those inputs.
"""

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def session(path, threads, optimized=None, qdq_fusion=True):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if not qdq_fusion:  # FP8 graphs (FP8 attention Q/DQ): what flux2's runtime does too
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if optimized:
        so.optimized_model_filepath = optimized
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def inputs(sess, tokens, text, seed):
    rng = np.random.default_rng(seed)
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    side = int(round(tokens**0.5))
    h, w = side, tokens // side
    feed = {
        "hidden_states": rng.standard_normal((1, h * w, shapes["hidden_states"][2]), dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((1, text, shapes["encoder_hidden_states"][2]), dtype=np.float32),
        "timestep": np.array([0.7], np.float32),
        "img_ids": np.array([[0, i // w, i % w, 0] for i in range(h * w)], np.int64)[None],
        "txt_ids": np.array([[0, 0, 0, l] for l in range(text)], np.int64)[None],
    }
    if "guidance" in shapes:
        feed["guidance"] = np.array([4.0], np.float32)
    return feed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("float_dir", type=Path)
    ap.add_argument("quant_dir", type=Path)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=1024, help="image tokens (512x512 = 1024)")
    ap.add_argument("--text", type=int, default=512, help="text tokens")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    fp = a.float_dir / "transformer.onnx"
    qp = a.quant_dir / "transformer.onnx"
    onnx.checker.check_model(str(qp), full_check=True)
    m = onnx.load(str(qp), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    elem = collections.Counter()
    per_channel_ok = True
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            elem[onnx.TensorProto.DataType.Name(inits[n.input[2]].data_type)] += 1
        if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized"):
            w, s = inits[n.input[0]], inits[n.input[1]]
            if w.data_type == onnx.TensorProto.INT8:
                axis = next((x.i for x in n.attribute if x.name == "axis"), None)
                per_channel_ok &= axis is not None and list(s.dims) == [w.dims[axis]]
    threads = a.threads or None
    manifest = json.loads((a.quant_dir / "manifest.json").read_text())
    fusion = manifest["graphs"]["transformer"].get("precision") != "fp8"
    with tempfile.TemporaryDirectory() as tmp:
        opt = str(Path(tmp) / "opt.onnx")
        session(qp, threads or 0, opt, fusion)
        kernels = collections.Counter(n.op_type for n in onnx.load(opt, load_external_data=False).graph.node)
    fs, qs = session(fp, threads or 0), session(qp, threads or 0, qdq_fusion=fusion)
    feed = inputs(fs, a.tokens, a.text, 0)
    ref, got = fs.run(None, feed)[0], qs.run(None, feed)[0]
    wall, cpu = ([], []), ([], [])
    for _ in range(a.runs):
        for k, s in enumerate((fs, qs)):
            c, t = time.process_time(), time.perf_counter()
            s.run(None, feed)
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    med = lambda v: sorted(v)[len(v) // 2] * 1e3  # noqa: E731
    nmse = float(((ref - got) ** 2).sum() / (ref**2).sum())
    cos = float((ref * got).sum() / np.sqrt((ref**2).sum() * (got**2).sum()))
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    simd = [f for f in flags if f.startswith(("avx512", "avx2", "avx_vnni", "amx"))]
    result = {
        "checker": "ok",
        "qdq_zero_point_types": dict(elem),
        "int8_weights_per_channel": bool(per_channel_ok),
        "fused_kernels": {k: v for k, v in kernels.items() if k in ("MatMulIntegerToFloat", "QLinearMatMul", "MatMul", "DequantizeLinear", "QuantizeLinear")},
        "inputs": f"{a.tokens} image + {a.text} text tokens",
        "float_ms": med(wall[0]),
        "quantized_ms": med(wall[1]),
        "speedup_wall": med(wall[0]) / med(wall[1]),
        "float_cpu_ms": med(cpu[0]),
        "quantized_cpu_ms": med(cpu[1]),
        "speedup_cpu": med(cpu[0]) / med(cpu[1]),
        "nmse": nmse,
        "cosine": cos,
        "cpu_simd": simd,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
