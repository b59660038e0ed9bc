"""Serving tests (issue 12), run by scripts/test_serve.sh from scripts/test.sh.

The Python package and a real Triton server against the `flux2` binary, on small exports of
the pipeline fixtures (tests/fixtures/pipeline, random weights):
- the package: `Pipeline.generate` gives the pixels `flux2 generate` writes, bit for bit
  (text, negative prompt + CFG, references as paths / bytes / arrays, shift, big seeds), in a
  process that imported `onnxruntime` too; errors are ValueError with the CLI's message;
  cancellation, timings, GIL release, threads; `schedule` and `export` equal the CLI's;
- the repository of `flux2 triton`: every config.pbtxt parses with Triton's model-config
  schema (tritonclient's model_config_pb2), stage models load through their version links;
- the server (tritonserver from nvidia-pytriton, loopback, free ports): HTTP and gRPC images
  equal the CLI's; 18 concurrent requests on two instances all answered, identical per seed;
  a bad request gets our message and the next good one succeeds; a cancelled request stops
  between sampling steps; the server stops cleanly;
- serving at scale (issue 27, scale_cases.py): dynamic batching (fewer executions than
  requests, images bit-identical to single requests), the text encoder as a model behind a
  cache (a repeated prompt does not execute it), streaming progress and cancellation, warm
  start, custom metrics, 200 good and bad requests with flat memory.

Usage: python tests/serve/test_serve.py [--flux2 BIN] [-k NAME]
"""

import argparse
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(__file__))
import serve_cases as cases  # noqa: E402
import scale_cases  # noqa: E402
import triton_cases  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flux2", default=os.environ.get("FLUX2_BIN", os.path.join(ROOT, "target", "release", "flux2")))
    ap.add_argument("--server-env", default=os.environ.get("FLUX2_TRITON_ENV", os.path.join(ROOT, ".venv-triton")),
                    help="Python environment of the Triton Python backend (numpy<2 + the flux2 package)")
    ap.add_argument("-k", default="", help="run only tests whose name contains this")
    args = ap.parse_args()
    if not os.path.isfile(args.flux2):
        sys.exit(f"flux2 binary not found at {args.flux2}: build it (cargo build --release -p flux2-cli)")
    with tempfile.TemporaryDirectory(prefix="flux2-serve-test-") as tmp:
        ctx = cases.Context(args.flux2, tmp, args.server_env)
        tests = [(n, f) for n, f in cases.TESTS + triton_cases.TESTS + scale_cases.TESTS if args.k in n]
        failed = []
        for name, fn in tests:
            t = time.monotonic()
            try:
                fn(ctx)
                print(f"ok    {name} ({time.monotonic() - t:.1f}s)", flush=True)
            except Exception:
                failed.append(name)
                print(f"FAIL  {name} ({time.monotonic() - t:.1f}s)\n{traceback.format_exc()}", flush=True)
        print(f"{len(tests) - len(failed)} passed, {len(failed)} failed")
        if failed:
            sys.exit(1)


if __name__ == "__main__":
    main()
