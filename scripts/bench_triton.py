"""Throughput and latency of the `flux2` Triton model (scripts/bench_triton.sh drives it).

For each instance count: writes a repository with `flux2 triton`, starts a real tritonserver
(nvidia-pytriton), warms every instance, then for each concurrency C runs C client threads
(gRPC) that send requests back to back, and reports images/s and p50/p99 latency. Then the
Triton path's overhead at concurrency 1 against `flux2 bench` on the same model, size, steps
and threads (median end to end), measured alternately to share the machine's noise.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "serve"))
from triton_server import TritonServer  # noqa: E402


def request(width, height, steps, seed):
    ins = []
    for name, value, dtype in [("prompt", np.array([b"a red fox sitting in the snow, soft morning light"], np.object_), "BYTES"),
                               ("seed", np.array([seed], np.int64), "INT64"), ("steps", np.array([steps], np.int32), "INT32"),
                               ("width", np.array([width], np.int32), "INT32"), ("height", np.array([height], np.int32), "INT32")]:
        i = grpcclient.InferInput(name, list(value.shape), dtype)
        i.set_data_from_numpy(value)
        ins.append(i)
    return ins


def percentile(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def load(server, args, concurrency, total):
    """`total` requests from `concurrency` threads: (images/s, latencies)."""
    latencies, lock, counter = [], threading.Lock(), [0]

    def worker():
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        while True:
            with lock:
                if counter[0] >= total:
                    break
                counter[0] += 1
                seed = counter[0]
            t = time.perf_counter()
            client.infer("flux2", request(args.width, args.height, args.steps, seed), client_timeout=3600)
            with lock:
                latencies.append(time.perf_counter() - t)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert len(latencies) == total, f"{len(latencies)} of {total} answered"
    return total / wall, latencies


def flux2_bench(args, model, threads, runs):
    out = os.path.join(tempfile.mkdtemp(), "bench.json")
    cmd = [args.flux2, "bench", "--model", model, "--width", str(args.width), "--height", str(args.height),
           "--steps", str(args.steps), "--runs", str(runs), "--warmup", "1", "--threads", str(threads), "--json", out]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(out) as f:
        data = json.load(f)
    return data["stages"]["end_to_end"]["stats"]["median"]


def run_instances(args, n):
    threads = max(1, args.cores // n)
    repo = os.path.join(args.work, f"repo-{n}")
    subprocess.run([args.flux2, "triton", "--model", args.model, "--out", repo, "--instances", str(n),
                    "--threads", str(threads), "--force"], check=True, capture_output=True)
    rows = []
    with TritonServer(repo, args.server_env, models=["flux2"]) as server:
        load(server, args, n, 2 * n)  # warm every instance (sessions, allocator)
        for c in args.concurrency:
            ips, lat = load(server, args, c, max(args.requests, 2 * c))
            rows.append(dict(instances=n, threads=threads, concurrency=c, images_per_s=ips,
                             p50=percentile(lat, 50), p99=percentile(lat, 99), requests=len(lat)))
            print(f"instances {n} (threads {threads}) concurrency {c}: {ips:.3f} images/s, "
                  f"p50 {rows[-1]['p50']:.3f}s, p99 {rows[-1]['p99']:.3f}s ({len(lat)} requests)", flush=True)
        overhead = []
        if n == 1:
            for _ in range(args.rounds):
                _, lat = load(server, args, 1, args.requests)
                bench = flux2_bench(args, args.model, threads, args.requests)
                overhead.append((statistics.median(lat), bench))
                print(f"  concurrency 1: Triton median {overhead[-1][0]:.3f}s, flux2 bench median {bench:.3f}s", flush=True)
    return rows, overhead


def cpu_model(flux2_bin):
    """The CPU line of `flux2 doctor --cpu` (model, AVX2 / AVX-512 / VNNI / AMX / BF16), as
    `flux2 bench` prints it, so figures from different machines can be told apart."""
    p = subprocess.run([flux2_bin, "doctor", "--cpu"], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flux2", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--server-env", required=True)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--requests", type=int, default=8, help="requests per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="alternating Triton / flux2 bench rounds")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--instances", default="1,2")
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--json")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.work = tempfile.mkdtemp(prefix="flux2-bench-triton-")
    print(f"CPU: {cpu_model(args.flux2)}\nmodel {args.model}, {args.width}x{args.height}, {args.steps} steps", flush=True)
    rows, overhead = [], []
    for n in [int(i) for i in args.instances.split(",")]:
        r, o = run_instances(args, n)
        rows += r
        overhead += o
    if overhead:
        t, b = statistics.median(x[0] for x in overhead), statistics.median(x[1] for x in overhead)
        print(f"Triton overhead at concurrency 1: {t:.3f}s vs flux2 bench {b:.3f}s = {100 * (t - b) / b:+.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_model(args.flux2), rows=rows, overhead=overhead), f, indent=1)


if __name__ == "__main__":
    main()
