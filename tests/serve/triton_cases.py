"""`flux2 triton` repositories in a real Triton server with the real clients (see test_serve.py)."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from serve_cases import BASE, FIXTURES, REF, assert_same
from triton_server import TritonServer

TIMEOUT = 600  # seconds a client waits for one answer (requests queue behind each other)


def repository(ctx, name="repo", *extra):
    out = os.path.join(ctx.tmp, name)
    ctx.run("triton", "--model", ctx.model(), "--out", out, *extra)
    return out


def parse_config(path):
    with open(path) as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


def test_repository_configs_parse_with_triton_schema(ctx):
    repo = repository(ctx, "repo-schema", "--instances", "3", "--threads", "2")
    models = sorted(os.listdir(repo))
    assert models == ["flux2", "text_encoder", "transformer", "vae_decoder", "vae_encoder"], models
    cfg = parse_config(os.path.join(repo, "flux2", "config.pbtxt"))
    assert cfg.backend == "python" and cfg.max_batch_size == 0
    types = {i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in cfg.input}
    assert types == {
        "prompt": ("TYPE_STRING", [1], False),
        "seed": ("TYPE_INT64", [1], True),
        "steps": ("TYPE_INT32", [1], True),
        "width": ("TYPE_INT32", [1], True),
        "height": ("TYPE_INT32", [1], True),
        "guidance": ("TYPE_FP32", [1], True),
        "negative_prompt": ("TYPE_STRING", [1], True),
        "references": ("TYPE_STRING", [-1], True),
        "num_images": ("TYPE_INT32", [1], True),
        "cache": ("TYPE_STRING", [1], True),
    }, types
    outs = [(o.name, model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output]
    assert outs == [("image", "TYPE_UINT8", [-1, -1, 3]), ("images", "TYPE_UINT8", [-1, -1, -1, 3])], outs
    assert [g.count for g in cfg.instance_group] == [3]
    assert cfg.parameters["threads"].string_value == "2"
    model_dir = os.path.normpath(os.path.join(repo, "flux2", cfg.parameters["model_dir"].string_value))
    assert os.path.samefile(model_dir, ctx.model()), model_dir
    for stage in models[1:]:
        c = parse_config(os.path.join(repo, stage, "config.pbtxt"))
        assert c.platform == "onnxruntime_onnx" and c.max_batch_size == 0, c
        version = os.path.join(repo, stage, "1")
        assert os.path.islink(version), f"{version} is not a link: weights would be copied"
        sess = onnxruntime.InferenceSession(os.path.join(version, c.default_model_filename), providers=["CPUExecutionProvider"])
        got = {i.name: [d if isinstance(d, int) else -1 for d in i.shape] for i in sess.get_inputs()}
        assert got == {i.name: list(i.dims) for i in c.input}, (stage, got, c.input)
        assert [o.name for o in sess.get_outputs()] == [o.name for o in c.output]


def test_repository_errors_leave_nothing(ctx):
    repo = repository(ctx, "repo-errors")
    before = sorted(os.listdir(ctx.tmp))
    for args, needle in [
        (["--model", ctx.model(), "--out", repo], "--force"),
        (["--model", ctx.model(), "--out", repo + "2", "--instances", "0"], "--instances"),
        (["--model", os.path.join(ctx.tmp, "missing"), "--out", repo + "3"], "missing"),
        (["--model", ctx.model(), "--out", repo + "4", "--provider", "tensorrt"], "--engines"),
    ]:
        p = ctx.run("triton", *args, check=False)
        assert p.returncode != 0 and needle in p.stderr, (args, p.stderr)
    assert sorted(os.listdir(ctx.tmp)) == before, "a failed `flux2 triton` left files behind"
    ctx.run("triton", "--model", ctx.model(), "--out", repo, "--force", "--instances", "2")
    assert parse_config(os.path.join(repo, "flux2", "config.pbtxt")).instance_group[0].count == 2


def request_inputs(mod, prompt=None, seed=None, steps=None, width=None, height=None, guidance=None,
                   negative_prompt=None, references=None, num_images=None):
    ins = []

    def add(name, array, dtype):
        i = mod.InferInput(name, list(array.shape), dtype)
        i.set_data_from_numpy(array)
        ins.append(i)

    if prompt is not None:
        add("prompt", np.array([prompt.encode()], dtype=np.object_), "BYTES")
    if negative_prompt is not None:
        add("negative_prompt", np.array([negative_prompt.encode()], dtype=np.object_), "BYTES")
    for name, value, dtype, np_type in [("seed", seed, "INT64", np.int64), ("steps", steps, "INT32", np.int32),
                                        ("width", width, "INT32", np.int32), ("height", height, "INT32", np.int32),
                                        ("guidance", guidance, "FP32", np.float32),
                                        ("num_images", num_images, "INT32", np.int32)]:
        if value is not None:
            add(name, np.array([value], dtype=np_type), dtype)
    if references is not None:
        add("references", np.array(references, dtype=np.object_), "BYTES")
    return ins


class Clients:
    def __init__(self, server):
        self.server = server

    def http(self):
        return httpclient.InferenceServerClient(f"127.0.0.1:{self.server.http_port}", network_timeout=TIMEOUT,
                                                connection_timeout=TIMEOUT)

    def grpc(self):
        return grpcclient.InferenceServerClient(f"127.0.0.1:{self.server.grpc_port}")

    def infer(self, protocol, output="image", **kw):
        mod = httpclient if protocol == "http" else grpcclient
        client = self.http() if protocol == "http" else self.grpc()
        try:
            args = dict(outputs=[mod.InferRequestedOutput(output)])
            if protocol == "grpc":
                args["client_timeout"] = TIMEOUT
            return client.infer("flux2", request_inputs(mod, **kw), **args).as_numpy(output)
        finally:
            client.close()


def expect_server_error(fn, *needles):
    try:
        fn()
    except InferenceServerException as e:
        msg = str(e)
        for n in needles:
            assert n in msg, f"server error {msg!r} does not mention {n!r}"
        return msg
    raise AssertionError(f"no error (expected one mentioning {needles})")


def stub_pids(server):
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if server.work.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def check_images(ctx, c):
    want = ctx.cli_image(**BASE)
    for protocol in ["http", "grpc"]:
        assert_same(c.infer(protocol, **BASE), want, f"Triton over {protocol}")
    neg = dict(BASE, negative_prompt="blurry, dark", guidance=2.5)
    assert_same(c.infer("grpc", **neg), ctx.cli_image(**neg), "negative prompt + guidance over gRPC")
    kw = dict(prompt="make it night", steps=2, seed=9)
    with open(REF, "rb") as f, open(os.path.join(FIXTURES, "ref2.png"), "rb") as g:
        refs = [f.read(), g.read()]
    want_refs = ctx.cli_image(refs=[REF, os.path.join(FIXTURES, "ref2.png")], **kw)
    assert_same(c.infer("http", references=refs, **kw), want_refs, "two references over HTTP")
    batch = c.infer("grpc", output="images", num_images=2, **BASE)
    assert batch.shape[0] == 2, batch.shape
    for k in range(2):
        seed = BASE["seed"] + k
        assert_same(batch[k], ctx.cli_image(**dict(BASE, seed=seed)), f"batch image {k} (seed {seed}) over gRPC")


def check_bad_requests(ctx, c):
    want = ctx.cli_image(**BASE)
    for protocol in ["http", "grpc"]:
        expect_server_error(lambda: c.infer(protocol, **dict(BASE, width=100)), "--width", "multiple of 16")
        assert_same(c.infer(protocol, **BASE), want, f"good request after a bad one ({protocol})")
    expect_server_error(lambda: c.infer("grpc", **dict(BASE, steps=0)), "--steps")
    expect_server_error(lambda: c.infer("http", **dict(BASE, references=[b"not an image"])), "references[0]")
    expect_server_error(lambda: c.infer("grpc", seed=1, steps=1), "prompt")


def check_concurrent_load(ctx, c):
    seeds = [5, 6, 7]
    jobs = [(("http", "grpc")[i % 2], seeds[i % 3]) for i in range(18)]
    with ThreadPoolExecutor(max_workers=18) as pool:
        futures = [pool.submit(c.infer, proto, **dict(BASE, seed=s)) for proto, s in jobs]
        images = [f.result(timeout=TIMEOUT) for f in futures]
    assert len(images) == 18 and all(i is not None for i in images)
    for s in seeds:
        want = ctx.cli_image(**dict(BASE, seed=s))
        for (proto, seed), img in zip(jobs, images):
            if seed == s:
                assert_same(img, want, f"concurrent request, seed {s}, {proto}")


def check_cancellation(ctx, c, server):
    client = c.grpc()
    done = threading.Event()
    outcome = {}

    def callback(result, error):
        outcome["result"], outcome["error"] = result, error
        done.set()

    long = dict(BASE, steps=5000)
    ctx_call = client.async_infer("flux2", request_inputs(grpcclient, **long), callback, request_id="cancel-me")
    time.sleep(3.0)  # the instance is warm: the request is sampling by now
    ctx_call.cancel()
    # the client's future completes as cancelled (tritonclient may or may not call back)
    if done.wait(30):
        assert outcome["error"] is not None and "CANCEL" in str(outcome["error"]).upper(), outcome
    deadline = time.monotonic() + 120
    while "cancelled before" not in server.log_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    log = server.log_text()
    assert "cancel-me" in log and "cancelled before sampling step" in log, f"model did not stop:\n{log[-3000:]}"
    client.close()
    assert_same(c.infer("grpc", **BASE), ctx.cli_image(**BASE), "after a cancelled request")


def test_triton_server_end_to_end(ctx):
    repo = repository(ctx, "repo-serve", "--instances", "2", "--threads", "1")
    for seed in (BASE["seed"], BASE["seed"] + 1):
        ctx.cli_image(**dict(BASE, seed=seed))  # references first: the CLI runs beside an idle server
    server = TritonServer(repo, ctx.server_env, models=["flux2"], log_path=os.path.join(ctx.tmp, "triton.log"))
    server.start()
    try:
        c = Clients(server)
        stubs = stub_pids(server)
        assert len(stubs) >= 2, f"expected two stub processes (instances), found {stubs}"
        check_images(ctx, c)
        check_bad_requests(ctx, c)
        check_concurrent_load(ctx, c)
        check_cancellation(ctx, c, server)
    finally:
        code = server.stop()
    log = server.log_text()
    server.cleanup()
    assert code == 0, f"tritonserver exited with {code}:\n{log[-3000:]}"
    left = [p for p in stubs if os.path.exists(f"/proc/{p}")]
    assert not left, f"stub processes still running after the server stopped: {left}"


TESTS = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
