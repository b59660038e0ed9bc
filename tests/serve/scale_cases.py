"""Serving at scale (issue 27) against a real Triton server: dynamic batching, the text encoder as
its own model behind a cache, streaming progress with cancellation, warm start, custom metrics,
and a long run of good and bad requests (see test_serve.py).

One server serves every check of `test_scale_server` (a start costs more than the checks):
`flux2` with the dynamic batcher and the encoder model through BLS, `flux2_stream`,
`flux2_text_encoder` with Triton's response cache, a warm-up request, metrics on.
"""

import os
import queue
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serve_cases import BASE, ROOT, assert_same
from triton_cases import TIMEOUT, parse_config, repository
from triton_server import TritonServer

SCALE_ARGS = ["--instances", "1", "--threads", "1", "--dynamic-batching", "--max-batch-size", "8",
              "--max-queue-delay-us", "150000", "--text-encoder", "model", "--response-cache", "--stream", "--warmup"]
FAST = dict(BASE, steps=1)  # the long run: one sampling step per image


def inputs(batched=True, prompt=None, prompt_bytes=None, **scalars):
    """gRPC inputs; `batched`: with Triton's leading batch dimension of 1."""
    lead = [1] if batched else []
    ins = []

    def add(name, array, dtype):
        array = array.reshape(lead + list(array.shape))
        i = grpcclient.InferInput(name, list(array.shape), dtype)
        i.set_data_from_numpy(array)
        ins.append(i)

    if prompt is not None or prompt_bytes is not None:
        add("prompt", np.array([prompt_bytes if prompt_bytes is not None else prompt.encode()], np.object_), "BYTES")
    types_ = {"seed": (np.int64, "INT64"), "guidance": (np.float32, "FP32")}
    for name, value in scalars.items():
        if isinstance(value, str):
            add(name, np.array([value.encode()], np.object_), "BYTES")
            continue
        np_type, dtype = types_.get(name, (np.int32, "INT32"))
        add(name, np.array([value], np_type), dtype)
    return ins


def infer(server, model="flux2", batched=True, **kw):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        result = client.infer(model, inputs(batched, **kw), outputs=[grpcclient.InferRequestedOutput("image")],
                              client_timeout=TIMEOUT)
        image = result.as_numpy("image")
        return image[0] if batched else image
    finally:
        client.close()


def stats(server, model):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        s = client.get_inference_statistics(model_name=model, as_json=True)["model_stats"][0]
    finally:
        client.close()
    count = lambda d: int(d.get("count", 0))  # noqa: E731
    return dict(executions=int(s.get("execution_count", 0)), inferences=int(s.get("inference_count", 0)),
                success=count(s["inference_stats"].get("success", {})),
                cache_hits=count(s["inference_stats"].get("cache_hit", {})))


def settled_stats(server, model, before, requests, timeout=10.0):
    """The model's statistics once they count `requests` more inferences than `before`: Triton
    records a request's statistics when it releases the request, which may come after the client
    has its response (a run once read both counts unchanged right after 8 answered requests)."""
    deadline = time.monotonic() + timeout
    while True:
        now = stats(server, model)
        if now["inferences"] - before["inferences"] >= requests or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_scale_repository_configs_and_refusals(ctx):
    repo = repository(ctx, "repo-scale-schema", *SCALE_ARGS, "--preferred-batch-sizes", "4,8")
    assert sorted(os.listdir(repo)) == ["flux2", "flux2_stream", "flux2_text_encoder", "text_encoder", "transformer",
                                        "vae_decoder", "vae_encoder"], os.listdir(repo)
    cfg = parse_config(os.path.join(repo, "flux2", "config.pbtxt"))
    assert cfg.max_batch_size == 8 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8], cfg
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 150000
    assert cfg.parameters["text_encoder"].string_value == "flux2_text_encoder"
    assert cfg.parameters["warmup"].string_value == "true"
    assert cfg.parameters["step_cache"].string_value == "off" and "cache" in {i.name for i in cfg.input}
    stream = parse_config(os.path.join(repo, "flux2_stream", "config.pbtxt"))
    assert stream.model_transaction_policy.decoupled and stream.max_batch_size == 0
    assert {"step", "total", "seconds", "image"} <= {o.name for o in stream.output}
    enc = parse_config(os.path.join(repo, "flux2_text_encoder", "config.pbtxt"))
    assert enc.response_cache.enable and [i.name for i in enc.input] == ["prompt", "max_sequence_length"]
    before = sorted(os.listdir(ctx.tmp))
    for extra, needle in [(["--max-queue-delay-us", "5"], "--dynamic-batching"),
                          (["--dynamic-batching", "--preferred-batch-sizes", "16"], "--preferred-batch-sizes"),
                          (["--dynamic-batching", "--max-batch-size", "0"], "--max-batch-size"),
                          (["--response-cache"], "--text-encoder model"),
                          (["--text-encoder", "remote"], "remote"),
                          (["--cache", "warp:1"], "--cache")]:
        p = ctx.run("triton", "--model", ctx.model(), "--out", os.path.join(ctx.tmp, "repo-refused"), *extra, check=False)
        assert p.returncode != 0 and needle in p.stderr, (extra, p.stderr)
    assert sorted(os.listdir(ctx.tmp)) == before, "a refused `flux2 triton` left files behind"


def load_encoder_module():
    """serve/src/encoder.py with a stand-in for the backend's utilities (its cache is plain Python)."""
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("flux2_encoder_model", os.path.join(ROOT, "serve", "src", "encoder.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prompt_cache_is_lru_bounded_in_bytes(ctx):
    cache = load_encoder_module().PromptCache(3 * 400)
    a, b, c, d = (np.full(100, i, np.float32) for i in range(4))  # 400 bytes each
    for key, value in [("a", a), ("b", b), ("c", c)]:
        cache.put(key, value)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("d", d)  # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("a") is a and cache.get("c") is c and cache.get("d") is d
    assert cache.bytes == 1200
    cache.put("big", np.zeros(1000, np.float32))  # larger than the whole cache: not kept
    assert cache.get("big") is None and cache.bytes == 1200


def check_batching(ctx, server, singles):
    """8 concurrent requests: fewer executions than requests, every image its single's."""
    before = stats(server, "flux2")
    jobs = [dict(BASE, seed=s, prompt=p) for s, p in singles]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        images = list(pool.map(lambda kw: infer(server, **kw), jobs))
    after = settled_stats(server, "flux2", before, len(jobs))
    requests, executions = after["inferences"] - before["inferences"], after["executions"] - before["executions"]
    assert requests == 8 and executions < requests, f"{executions} executions for {requests} requests: no batching"
    for (seed, prompt), image in zip(singles, images):
        assert_same(image, singles[(seed, prompt)], f"batched request seed {seed} {prompt!r}")
    return executions


def check_encoder_cache(ctx, server):
    prompt = "a lighthouse on a cliff at dusk"
    before = stats(server, "flux2_text_encoder")
    first = infer(server, **dict(BASE, prompt=prompt, seed=11))
    mid = stats(server, "flux2_text_encoder")
    again = infer(server, **dict(BASE, prompt=prompt, seed=11))
    after = stats(server, "flux2_text_encoder")
    assert mid["executions"] - before["executions"] == 1, (before, mid)
    assert after["executions"] == mid["executions"], f"the repeated prompt ran the encoder: {mid} -> {after}"
    assert after["cache_hits"] - mid["cache_hits"] >= 2, (mid, after)  # the prompt and the empty negative
    assert_same(again, first, "repeated prompt")
    assert_same(first, ctx.cli_image(**dict(BASE, prompt=prompt, seed=11)), "encoder model vs flux2 generate")


def stream(server, request_id, cancel_after=None, **kw):
    """Responses of one flux2_stream request: (progress list, image or None, error or None)."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    q = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    client.async_stream_infer("flux2_stream", inputs(False, **kw), request_id=request_id)
    progress, image, error = [], None, None
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            result, err = q.get(timeout=max(1, deadline - time.monotonic()))
            if err is not None:
                error = err
                break
            out = {o.name for o in result.get_response().outputs}
            if "image" in out:
                image = result.as_numpy("image")
                break
            progress.append((int(result.as_numpy("step")[0]), int(result.as_numpy("total")[0]),
                             float(result.as_numpy("seconds")[0])))
            if cancel_after is not None and len(progress) >= cancel_after:
                client.stop_stream(cancel_requests=True)
                return progress, None, None
    finally:
        client.stop_stream()
        client.close()
    return progress, image, error


def check_streaming(ctx, server):
    progress, image, error = stream(server, "stream-1", **BASE)
    assert error is None, error
    steps = BASE["steps"]
    assert [(p[0], p[1]) for p in progress] == [(k, steps) for k in range(1, steps + 1)], progress
    assert all(a[2] <= b[2] for a, b in zip(progress, progress[1:])), progress
    assert_same(image, ctx.cli_image(**BASE), "streamed image")
    progress, _, _ = stream(server, "cancel-stream", cancel_after=2, **dict(BASE, steps=5000))
    assert len(progress) >= 2
    deadline = time.monotonic() + 120
    while "cancelled before sampling step" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = server.log_text()
    assert "cancel-stream" in log and "cancelled before sampling step" in log, f"stream not stopped:\n{log[-3000:]}"
    progress, image, error = stream(server, "after-cancel", **BASE)  # one instance: it must be free again
    assert error is None and len(progress) == steps, (progress, error)
    assert_same(image, ctx.cli_image(**BASE), "stream after a cancelled one")


BAD = [  # (inputs, what the error must mention, whose message)
    (lambda: inputs(**dict(FAST, width=100000)), ["--width", "4096"], "flux2"),
    (lambda: inputs(**dict(FAST, steps=-3)), ["--steps", "negative"], "flux2"),
    (lambda: inputs(prompt_bytes=b"\xff\xfe a fox", **{k: v for k, v in FAST.items() if k != "prompt"}),
     ["prompt", "UTF-8"], "flux2"),
    (lambda: [i for i in inputs(**FAST) if i.name() != "seed"] + [float_seed()], ["seed", "FP32"], "triton"),
    (lambda: inputs(**{k: v for k, v in FAST.items() if k != "prompt"}), ["prompt"], "triton"),
    (lambda: [i for i in inputs(**FAST) if i.name() != "steps"] + [two_steps()], ["steps", "shape"], "triton"),
    (lambda: two_items(), ["prompt", "expected one value", "[2, 1]"], "flux2"),
]


def float_seed():
    i = grpcclient.InferInput("seed", [1, 1], "FP32")
    i.set_data_from_numpy(np.array([[5.0]], np.float32))
    return i


def two_steps():
    i = grpcclient.InferInput("steps", [1, 2], "INT32")  # dims [1] with two values: refused
    i.set_data_from_numpy(np.array([[1, 2]], np.int32))
    return i


def two_items():
    """A request of batch 2 (every input [2, 1]): reaches the model, which makes one item per request."""
    ins = []
    for name, array, dtype in [("prompt", np.array([[b"a"], [b"b"]], np.object_), "BYTES"),
                               ("steps", np.array([[1], [1]], np.int32), "INT32")]:
        i = grpcclient.InferInput(name, list(array.shape), dtype)
        i.set_data_from_numpy(array)
        ins.append(i)
    return ins


def check_long_run(ctx, server):
    """200 requests, every 4th good (one a 20,000-character prompt): each answered, the bad
    with the message of whoever refused it, memory flat from the 20th to the 200th."""
    good = infer(server, **FAST)
    long_prompt = ("a red fox in the snow " * 1000)[:20000]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    rss, answered = {}, 0
    try:
        for n in range(1, 201):
            if n % 4 == 0:
                kw = dict(FAST, prompt=long_prompt) if n % 20 == 0 else FAST
                image = client.infer("flux2", inputs(**kw), client_timeout=TIMEOUT).as_numpy("image")[0]
                if n % 20 != 0:
                    assert_same(image, good, f"good request {n}")
                answered += 1
            else:
                make, needles, who = BAD[n % len(BAD)]
                try:
                    client.infer("flux2", make(), client_timeout=TIMEOUT)
                    raise AssertionError(f"bad request {n} ({needles}) was accepted")
                except InferenceServerException as e:
                    msg = str(e)
                    assert all(s in msg for s in needles), f"request {n}: {msg!r} lacks {needles} ({who})"
                    answered += 1
            if n in (20, 200):
                rss[n] = server.rss_bytes()
    finally:
        client.close()
    assert answered == 200
    growth = (rss[200] - rss[20]) / rss[20]
    print(f"    long run: server + stubs RSS {rss[20] / 2**20:.1f} MiB at request 20, "
          f"{rss[200] / 2**20:.1f} MiB at 200 ({100 * growth:+.2f} %)", flush=True)
    assert growth <= 0.05, f"memory grew {100 * growth:.1f} % from request 20 to 200"


def check_step_cache(ctx, server):
    """The `cache` request input: the image `flux2 generate --cache` makes; "off" the uncached
    one; a policy flux2 refuses gets its message naming the policy."""
    kw = dict(BASE, steps=8, seed=21)
    assert_same(infer(server, **kw, cache="fbc:0.3"), ctx.cli_image(**kw, cache="fbc:0.3"), "cache input vs generate --cache")
    assert_same(infer(server, **kw, cache="off"), ctx.cli_image(**kw), "cache off vs uncached generate")
    try:
        infer(server, **kw, cache="warp:1")
        raise AssertionError("cache 'warp:1' was accepted")
    except InferenceServerException as e:
        assert "warp" in str(e) and "fbc:" in str(e), str(e)


def check_metrics(server):
    text = server.metrics_text()
    for name in ["flux2_stage_seconds_total", "flux2_dit_evaluations_total", "flux2_requests_total",
                 "flux2_batch_wait_seconds_total", "flux2_text_encoder_runs_total", "flux2_prompt_cache_misses_total"]:
        assert name in text, f"metric {name} missing"
    line = next(l for l in text.splitlines() if l.startswith("flux2_dit_evaluations_total{") and 'model="flux2"' in l)
    assert float(line.split()[-1]) > 0, line


def test_scale_server(ctx):
    repo = repository(ctx, "repo-scale", *SCALE_ARGS)
    prompts = ["a red fox in the snow", "a blue square on a green background"]
    singles_keys = [(5 + k, prompts[k % 2]) for k in range(8)]
    for seed, prompt in singles_keys[:2]:
        ctx.cli_image(**dict(BASE, seed=seed, prompt=prompt))  # before the server takes the cores
    ctx.cli_image(**BASE)
    server = TritonServer(repo, ctx.server_env, models=["flux2", "flux2_stream", "flux2_text_encoder"],
                          log_path=os.path.join(ctx.tmp, "triton-scale.log"), metrics=True,
                          extra_args=["--cache-config=local,size=67108864"])
    t = time.monotonic()
    server.start()
    try:
        first = infer(server, **BASE)
        first_seconds = time.monotonic() - t
        print(f"    start to ready {server.ready_seconds:.1f}s (warm-up included), "
              f"to the first answered request {first_seconds:.1f}s", flush=True)
        assert_same(first, ctx.cli_image(**BASE), "first request (encoder model, batched model)")
        assert "warm-up" in server.log_text()
        singles = {}
        for seed, prompt in singles_keys:
            singles[(seed, prompt)] = infer(server, **dict(BASE, seed=seed, prompt=prompt))
        for seed, prompt in singles_keys[:2]:
            assert_same(singles[(seed, prompt)], ctx.cli_image(**dict(BASE, seed=seed, prompt=prompt)), "single vs CLI")
        executions = check_batching(ctx, server, singles)
        print(f"    8 concurrent requests: {executions} executions", flush=True)
        check_encoder_cache(ctx, server)
        check_streaming(ctx, server)
        check_step_cache(ctx, server)
        check_long_run(ctx, server)
        check_metrics(server)
    finally:
        code = server.stop()
    log = server.log_text()
    server.cleanup()
    assert code == 0, f"tritonserver exited with {code}:\n{log[-3000:]}"


TESTS = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
