"""The Python package against the `flux2` CLI: same pixels, same messages (see test_serve.py)."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image

import flux2

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "pipeline")
REF = os.path.join(FIXTURES, "ref1.png")
# klein base: true CFG, so the negative prompt and guidance change the image
BASE = dict(prompt="a red fox in the snow", width=64, height=48, steps=3, seed=5)


class Context:
    """The binary, a scratch folder, and exports made once and shared by the tests."""

    def __init__(self, flux2_bin, tmp, server_env):
        self.bin, self.tmp, self.server_env = flux2_bin, tmp, server_env
        self._models, self._pipes, self._cli = {}, {}, {}

    def run(self, *args, check=True):
        p = subprocess.run([self.bin, *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"flux2 {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
        return p

    def model(self, name="klein_base"):
        """A full export (text encoder, DiT, VAE) of fixture `name`."""
        if name not in self._models:
            out = os.path.join(self.tmp, f"export-{name}")
            self.run("export", "--checkpoint", os.path.join(FIXTURES, name), "--out", out, "--text-layers", "1,2,3")
            self._models[name] = out
        return self._models[name]

    def pipe(self, name="klein_base"):
        if name not in self._pipes:
            self._pipes[name] = flux2.Pipeline(self.model(name), threads=1)
        return self._pipes[name]

    def cli_image(self, model="klein_base", refs=(), **kw):
        """The PNG `flux2 generate` writes, as uint8 [H, W, 3] (memoised per arguments)."""
        key = (model, tuple(refs), tuple(sorted(kw.items())))
        if key not in self._cli:
            out = os.path.join(self.tmp, f"cli-{len(self._cli)}.png")
            args = ["generate", "--model", self.model(model), "--out", out]
            for k, v in kw.items():
                args += [f"--{k.replace('_', '-')}", v]
            for r in refs:
                args += ["--ref", r]
            self.run(*args)
            self._cli[key] = np.asarray(Image.open(out).convert("RGB"))
        return self._cli[key]


def assert_same(got, want, what):
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8, f"{what}: {type(got)} {getattr(got, 'dtype', '')}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    diff = np.count_nonzero(got != want)
    assert diff == 0, f"{what}: {diff} of {got.size} values differ from flux2 generate's PNG"


def test_text_and_cfg_match_cli(ctx):
    want = ctx.cli_image(**BASE)
    assert_same(ctx.pipe().generate(**BASE), want, "text prompt")
    neg = dict(BASE, negative_prompt="blurry, dark", guidance=2.5)
    want_neg = ctx.cli_image(**neg)
    assert np.count_nonzero(want_neg != want) > 0, "the negative prompt and guidance changed nothing"
    assert_same(ctx.pipe().generate(**neg), want_neg, "negative prompt + guidance")
    other = dict(BASE, seed=2**63 + 11, shift="fixed:2.5", steps=2)
    assert_same(ctx.pipe().generate(**other), ctx.cli_image(**other), "big seed, fixed shift")


def test_distilled_defaults_match_cli(ctx):
    kw = dict(prompt="a lighthouse", width=48, height=32, seed=1)
    assert_same(ctx.pipe("klein").generate(**kw), ctx.cli_image("klein", **kw), "distilled klein, default steps")


def test_references_as_path_bytes_array(ctx):
    kw = dict(prompt="make it night", steps=2, seed=9)
    want = ctx.cli_image(refs=[REF], **kw)
    with open(REF, "rb") as f:
        encoded = f.read()
    pixels = np.asarray(Image.open(REF).convert("RGB"))
    for what, ref in [("path", REF), ("os.PathLike", __import__("pathlib").Path(REF)), ("bytes", encoded), ("array", pixels)]:
        assert_same(ctx.pipe().generate(references=[ref], **kw), want, f"reference as {what}")
    two = ctx.cli_image(refs=[REF, os.path.join(FIXTURES, "ref2.png")], **kw)
    assert_same(ctx.pipe().generate(references=[encoded, os.path.join(FIXTURES, "ref2.png")], **kw), two, "two references")


def cli_error(ctx, *args):
    p = ctx.run("generate", "--model", ctx.model(), "--out", os.path.join(ctx.tmp, "never.png"), *args, check=False)
    assert p.returncode != 0, f"flux2 generate {args} succeeded"
    assert not os.path.exists(os.path.join(ctx.tmp, "never.png"))
    return p.stderr.strip().removeprefix("error: ")


def expect_value_error(fn, *needles):
    try:
        fn()
    except ValueError as e:
        msg = str(e)
        for n in needles:
            assert n in msg, f"ValueError {msg!r} does not mention {n!r}"
        return msg
    raise AssertionError(f"no ValueError (expected one mentioning {needles})")


def test_bad_arguments_raise_value_error_with_cli_message(ctx):
    pipe = ctx.pipe()
    for args, kw, needles in [
        (["--prompt", "x", "--width", "100"], dict(width=100), ["--width", "multiple of 16", "try 96"]),
        (["--prompt", "x", "--steps", "0"], dict(steps=0), ["--steps", "at least 1"]),
        (["--prompt", "x", "--shift", "fixed:-2"], dict(shift="fixed:-2"), ["--shift", "-2"]),
        (["--prompt", "x", "--ref", "/nonexistent/ref.png"], dict(references=["/nonexistent/ref.png"]), ["/nonexistent/ref.png"]),
    ]:
        msg = expect_value_error(lambda: pipe.generate("x", **kw), *needles)
        assert msg in cli_error(ctx, *args), f"Python {msg!r} vs CLI {cli_error(ctx, *args)!r}"
    expect_value_error(lambda: pipe.generate("x", references=[b"not an image"]), "references[0]", "not a readable image")
    expect_value_error(lambda: pipe.generate("x", references=[np.zeros((64, 64), np.uint8)]), "references[0]", "[H, W, 3]")
    expect_value_error(lambda: pipe.generate("x", references=[np.zeros((32, 64, 3), np.uint8)]), "too small")
    expect_value_error(lambda: pipe.generate("x", references=[3.5]), "references[0]", "float")
    expect_value_error(lambda: pipe.generate("x", width=-32), "--width")
    expect_value_error(lambda: pipe.generate("x", seed=-1), "--seed")
    expect_value_error(lambda: pipe.generate(None), "--prompt")
    expect_value_error(lambda: flux2.Pipeline(os.path.join(ctx.tmp, "nope")), "nope", "does not exist")
    os.makedirs(os.path.join(ctx.tmp, "empty"), exist_ok=True)
    expect_value_error(lambda: flux2.Pipeline(os.path.join(ctx.tmp, "empty")), "manifest.json")
    expect_value_error(lambda: flux2.Pipeline(ctx.model(), provider="rocm"), "--provider", "rocm")
    expect_value_error(lambda: flux2.Pipeline(ctx.model(), threads=0), "--threads")
    # the pipeline still works after refusing requests
    assert_same(pipe.generate(**BASE), ctx.cli_image(**BASE), "after errors")


def test_progress_and_cancellation(ctx):
    events = []
    ctx.pipe().generate(progress=lambda *e: events.append(e), **BASE)
    steps = [e for e in events if e[0] == "denoise"]
    assert [s[1] for s in steps] == [0, 1, 2] and all(s[2] == 3 for s in steps), events
    assert events[0][0] == "loading models" and events[-1][0] == "vae decode", events
    seen = []

    def stop_at_second_step(stage, step, total):
        seen.append((stage, step))
        return not (stage == "denoise" and step == 1)

    try:
        ctx.pipe().generate(progress=stop_at_second_step, **BASE)
        raise AssertionError("not cancelled")
    except flux2.CancelledError as e:
        assert "sampling step 2 of 3" in str(e), e
        assert isinstance(e, RuntimeError)
    assert seen[-1] == ("denoise", 1), seen

    def boom(stage, step, total):
        raise KeyError("from the callback")

    try:
        ctx.pipe().generate(progress=boom, **BASE)
        raise AssertionError("callback exception swallowed")
    except KeyError as e:
        assert "from the callback" in str(e)
    assert_same(ctx.pipe().generate(**BASE), ctx.cli_image(**BASE), "after cancellation")


def test_num_images_is_one_batch_equal_to_single_runs(ctx):
    pipe = ctx.pipe()
    images = pipe.generate(num_images=3, **BASE)
    assert isinstance(images, list) and len(images) == 3, type(images)
    for k, image in enumerate(images):
        seed = BASE["seed"] + k
        assert_same(image, ctx.cli_image(**dict(BASE, seed=seed)), f"image {k} of the batch (seed {seed})")
    assert len(pipe.last_timings["dit_steps"]) == 3, "one DiT call per step for the whole batch"
    one = pipe.generate(num_images=1, **BASE)
    assert isinstance(one, list) and len(one) == 1, type(one)
    assert_same(one[0], ctx.cli_image(**BASE), "a batch of one")
    expect_value_error(lambda: pipe.generate("x", num_images=0), "--num-images", "at least 1")
    expect_value_error(lambda: pipe.generate("x", num_images=-2), "--num-images", "negative")


def test_encode_embeddings_and_seeds_batch_independent_requests(ctx):
    pipe = ctx.pipe()
    fox, other = BASE["prompt"], "a lighthouse on a cliff"
    emb = pipe.encode([fox, other, ""])
    assert emb.dtype == np.float32 and emb.ndim == 3 and emb.shape[0] == 3, (emb.dtype, emb.shape)
    assert np.array_equal(pipe.encode(fox)[0], emb[0]), "a text's embeddings depend on the others in the call"
    rest = {k: v for k, v in BASE.items() if k != "prompt"}
    want = ctx.cli_image(**BASE)
    assert_same(pipe.generate(prompt_embeds=emb[:1], negative_prompt_embeds=emb[2:], **rest), want,
                "embeddings arrays instead of the texts")
    size = {k: v for k, v in rest.items() if k != "seed"}
    images = pipe.generate(prompt_embeds=emb[:2], negative_prompt_embeds=np.concatenate([emb[2:], emb[2:]]),
                           seeds=[BASE["seed"], 9], **size)
    assert isinstance(images, list) and len(images) == 2
    assert_same(images[0], want, "batch row 0 (its own prompt and seed)")
    assert_same(images[1], ctx.cli_image(**dict(size, prompt=other, seed=9)), "batch row 1 (its own prompt and seed)")
    expect_value_error(lambda: pipe.generate(prompt_embeds=emb[:2], seeds=[1, 2, 3], **size), "--prompt-embeds", "[3, L, ctx]")
    expect_value_error(lambda: pipe.generate("x", seeds=[1, 2], num_images=3), "seeds", "num_images=3")
    expect_value_error(lambda: pipe.generate("x", prompt_embeds=emb[:1]), "--prompt", "not both")
    expect_value_error(lambda: pipe.generate(prompt_embeds=emb[:1].astype(np.float64)), "prompt_embeds", "float32")
    expect_value_error(lambda: pipe.generate("x", seeds=[-1]), "--seed")
    expect_value_error(lambda: pipe.encode([]), "--prompt")


def test_last_timings(ctx):
    pipe = flux2.Pipeline(ctx.model(), threads=1)
    assert pipe.last_timings is None
    pipe.generate(**BASE)
    t = pipe.last_timings
    for k in ["load", "text_encoder", "vae_encode", "denoise", "dit_steps", "vae_decode", "total", "ort"]:
        assert k in t, t
    assert len(t["dit_steps"]) == 3 and abs(sum(t["dit_steps"]) - t["denoise"]) < 1e-9, t
    assert 0 < t["ort"] <= t["total"] and t["load"] > 0, t


def test_gil_released_and_threads(ctx):
    pipe = ctx.pipe()
    want = ctx.cli_image(**BASE)
    results, ticks = [None, None], [0]

    def worker(i):
        results[i] = pipe.generate(**BASE)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        ticks[0] += 1  # runs only while the workers do not hold the GIL
        time.sleep(0.001)
    for t in threads:
        t.join()
    for r in results:
        assert_same(r, want, "concurrent generate")
    assert ticks[0] > 50, f"main thread ran {ticks[0]} times during two generations: GIL held?"


def test_schedule_matches_cli(ctx):
    for w, h, n, shift in [(1024, 1024, 4, None), (1360, 768, 50, "resolution"), (512, 256, 28, "fixed:3")]:
        args = ["schedule", "--width", w, "--height", h, "--steps", n] + (["--shift", shift] if shift else [])
        want = json.loads(ctx.run(*args).stdout)
        got = flux2.schedule(w, h, n, shift=shift)
        assert got.keys() == want.keys(), (got.keys(), want.keys())
        for k, v in want.items():
            if k in ("sigmas", "timesteps"):  # float32 values: the CLI prints their shortest form
                assert np.array_equal(np.float32(got[k]), np.float32(v)), (k, got[k], v)
            else:
                assert got[k] == v, (k, got[k], v)
    expect_value_error(lambda: flux2.schedule(100, 64, 4), "--width", "multiple of 16")
    expect_value_error(lambda: flux2.schedule(64, 64, 0), "--steps")


def test_export_matches_cli(ctx):
    out_py, out_cli = os.path.join(ctx.tmp, "export-py"), os.path.join(ctx.tmp, "export-cli")
    src = os.path.join(FIXTURES, "klein")
    m = flux2.export(src, out_py, components=["vae", "transformer"], dtype="f32")
    ctx.run("export", "--checkpoint", src, "--out", out_cli, "--components", "vae,transformer")
    parts = {"dit_embed", "dit_head", "dit_body", "dit_tail"}  # step-caching parts of the DiT
    assert set(m["graphs"]) == {"vae_encoder", "vae_decoder", "transformer"} | parts, m["graphs"].keys()
    for g in m["graphs"].values():
        with open(os.path.join(out_py, g["file"]), "rb") as a, open(os.path.join(out_cli, g["file"]), "rb") as b:
            assert a.read() == b.read(), f"{g['file']} differs from the CLI's"
    expect_value_error(lambda: flux2.export(src, out_py, dtype="f64"), "--dtype", "f64")
    expect_value_error(lambda: flux2.export(src, out_py, components="unet"), "unet")
    expect_value_error(lambda: flux2.export(os.path.join(ctx.tmp, "none"), out_py), "none")
    try:
        flux2.export(src, out_py, colour="red")
        raise AssertionError("unknown option accepted")
    except TypeError as e:
        assert "colour" in str(e)


ORT_PROCESS = r"""
import os, sys, numpy as np, onnxruntime
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1.31.1")
sess = onnxruntime.InferenceSession(os.path.join(sys.argv[1], "vae_decoder.onnx"), providers=["CPUExecutionProvider"])
import flux2
assert flux2.ort_library() == os.path.realpath(capi), (flux2.ort_library(), capi)
img = flux2.Pipeline(sys.argv[1], threads=1).generate("a red fox in the snow", width=64, height=48, steps=3, seed=5)
sess.run(None, {"latents": np.zeros((1, 128, 2, 2), np.float32)})
maps = open("/proc/self/maps").read()
libs = {l.split()[-1] for l in maps.splitlines() if "libonnxruntime.so" in l}
assert len(libs) == 1, libs
np.save(sys.argv[2], img)
"""


def test_process_that_imported_onnxruntime(ctx):
    out = os.path.join(ctx.tmp, "ort-process.npy")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
    p = subprocess.run([sys.executable, "-c", ORT_PROCESS, ctx.model(), out], capture_output=True, text=True, env=env, cwd="/")
    assert p.returncode == 0, p.stderr
    assert_same(np.load(out), ctx.cli_image(**BASE), "after import onnxruntime")


TESTS = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
