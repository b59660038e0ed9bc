#!/usr/bin/env python3
"""Text-encoder forward time at 512 tokens: f32 against weight-only INT8 / INT4 exports
(issue 26: "the INT8/INT4 weight-only text encoder at 512 tokens is not slower than f32").

Each export folder's text_encoder.onnx runs on ONNX Runtime's CPU provider with flux2's
session settings (all graph optimisations, so DequantizeLinear + MatMul becomes MatMulNBits;
`session.qdq_matmulnbits_accuracy_level` 0 and 4), batch 1, 512 tokens; median of RUNS timed
runs after one warm-up. Prints the CPU's instruction sets with the figures.

    .venv/bin/python scripts/te_lowbit_speed.py target/te-lowbit/te-f32 target/te-lowbit/te-int8 ...
"""

import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def cpu() -> str:
    flags, name = set(), "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and name == "?":
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8"] if f in flags]
    return f"{name}, {os.cpu_count()} logical CPUs, {' '.join(isa)}"


def timed(path: str, level: str, threads: int, runs: int) -> tuple[float, int]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.zeros((1, 512), np.int64), "attention_mask": np.ones((1, 512), np.int64)}
    s.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def main() -> None:
    threads, runs = int(os.environ.get("THREADS", "2")), int(os.environ.get("RUNS", "5"))
    print(f"CPU: {cpu()}; ONNX Runtime {ort.__version__}, {threads} threads, median of {runs}")
    base = None
    for d in sys.argv[1:]:
        levels = ["0"] if d.rstrip("/").endswith("f32") else ["0", "4"]
        for lv in levels:
            t, _ = timed(os.path.join(d, "text_encoder.onnx"), lv, threads, runs)
            base = base or t
            print(f"{d}: accuracy level {lv}: {1000 * t:.0f} ms ({base / t:.2f}x of the first)", flush=True)


if __name__ == "__main__":
    main()
