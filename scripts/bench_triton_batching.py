"""Throughput of the `flux2` Triton model with Triton's dynamic batcher on and off
(scripts/bench_triton_batching.sh drives it).

For each setting: writes a repository with `flux2 triton` (one instance, --threads T), starts
a real tritonserver (nvidia-pytriton, loopback), warms it, then runs ROUNDS bursts of C
concurrent same-shape requests (gRPC, different seeds) and reports images/s (median over the
bursts), the executions per burst from the server's statistics, and p50 latency. The two
settings alternate (on, off, on, off, ...) so both see the same machine noise.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "serve"))
sys.path.insert(0, os.path.dirname(__file__))
from bench_triton import cpu_model  # noqa: E402
from triton_server import TritonServer  # noqa: E402


def request(args, seed, batched):
    lead = [1] if batched else []
    ins = []
    for name, value, dtype in [("prompt", np.array([args.prompt.encode()], np.object_), "BYTES"),
                               ("seed", np.array([seed], np.int64), "INT64"),
                               ("steps", np.array([args.steps], np.int32), "INT32"),
                               ("width", np.array([args.width], np.int32), "INT32"),
                               ("height", np.array([args.height], np.int32), "INT32")]:
        value = value.reshape(lead + [1])
        i = grpcclient.InferInput(name, list(value.shape), dtype)
        i.set_data_from_numpy(value)
        ins.append(i)
    return ins


def executions(server):
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        return int(c.get_inference_statistics(model_name="flux2", as_json=True)["model_stats"][0].get("execution_count", 0))
    finally:
        c.close()


def burst(server, args, batched, seed0):
    def one(seed):
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        t = time.perf_counter()
        c.infer("flux2", request(args, seed, batched), client_timeout=3600)
        c.close()
        return time.perf_counter() - t

    before = executions(server)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        latencies = list(pool.map(one, range(seed0, seed0 + args.concurrency)))
    wall = time.perf_counter() - start
    return args.concurrency / wall, executions(server) - before, latencies


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flux2", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--server-env", required=True)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompt", default="a yellow triangle on a purple background")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-queue-delay-us", type=int, default=100000)
    ap.add_argument("--json")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="flux2-bench-batching-")
    print(f"CPU: {cpu_model(args.flux2)}\nmodel {args.model}, {args.width}x{args.height}, {args.steps} steps, "
          f"{args.concurrency} concurrent requests, 1 instance x {args.threads} threads", flush=True)
    settings = {"off": [], "on": ["--dynamic-batching", "--max-batch-size", str(args.concurrency),
                                  "--max-queue-delay-us", str(args.max_queue_delay_us)]}
    results = {k: [] for k in settings}
    servers = {}
    try:
        for name, extra in settings.items():
            repo = os.path.join(work, f"repo-{name}")
            subprocess.run([args.flux2, "triton", "--model", args.model, "--out", repo, "--instances", "1",
                            "--threads", str(args.threads), *extra], check=True, capture_output=True)
            servers[name] = repo
        for r in range(args.rounds):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                with TritonServer(servers[name], args.server_env, models=["flux2"]) as server:
                    burst(server, args, name == "on", 1000)  # warm-up burst
                    ips, execs, lat = burst(server, args, name == "on", 1 + 100 * r)
                results[name].append(dict(images_per_s=ips, executions=execs, p50=statistics.median(lat)))
                print(f"round {r + 1} batching {name:3}: {ips:.3f} images/s, {execs} executions for "
                      f"{args.concurrency} requests, p50 latency {statistics.median(lat):.3f}s", flush=True)
    finally:
        pass
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in results.items()}
    print(f"median images/s: batching on {med['on']:.3f}, off {med['off']:.3f} ({med['on'] / med['off']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_model(args.flux2), args=vars(args), results=results, median=med), f, indent=1)


if __name__ == "__main__":
    main()
