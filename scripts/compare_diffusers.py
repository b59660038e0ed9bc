#!/usr/bin/env python3
"""Speed of flux2 (ONNX Runtime, CPU) against diffusers 0.42.1 (PyTorch, CPU) on the same weights.

    scripts/compare_diffusers.sh            # builds the release binary, then runs this
    .venv-ref/bin/python scripts/compare_diffusers.py --flux2 target/release/flux2

On a fresh machine, make the reference environment first (PyTorch, diffusers, transformers):

    python3 -m venv .venv-ref && .venv-ref/bin/pip install -r tests/fixtures/requirements.txt
    FLUX2_REF_PYTHON=.venv-ref/bin/python scripts/compare_diffusers.sh

What it does:

1. Builds a medium random FLUX.2 [klein]-architecture checkpoint with diffusers/transformers and
   `save_pretrained` (diffusers layout, float32): DiT 4 heads x 128 (hidden 512), 2 double + 4 single
   blocks, RoPE axes (32,32,32,32); the released VAE topology (AutoencoderKLFlux2: 4 levels, 2
   resnets each, mid attention, 32 latent channels) at widths 32,64,128,128 (`--vae-widths`;
   128,256,512,512 is the released one); a 28-layer Qwen3 text encoder (hidden 256, 4/2 heads of
   64), so that the pipeline's default text layers 9/18/27 apply; the tokenizer of
   tests/fixtures/text/qwen3.
   Why the narrow VAE by default: in the real klein 4B at 1024x1024 and 4 steps the DiT does ~92%
   of the arithmetic, the VAE decoder ~6% and the text encoder ~2%. With a 512-wide DiT at 256x256
   the released-width VAE decoder (617 GFLOP) would be ~70% of the work and the comparison would
   measure little but 3x3 convolutions; widths 32,64,128,128 (~39 GFLOP) keep it at ~13% (DiT ~229 GFLOP for 4 steps).
   Weights: N(0, 1/fan_in) matrices and convolutions, N(0, 1) embeddings, 1 + 0.1 N(0, 1) norms.
2. Times `Flux2KleinPipeline.__call__` end to end (text prompt, `--width` x `--height`, `--steps`,
   `output_type="pt"`), with `torch.set_num_threads(--threads)`, `--warmup` untimed runs, then the
   median of `--runs`. Stage times come from wrappers around `encode_prompt`, the transformer's
   forward and `vae.decode`.
3. Exports the same folder with `flux2 export` and runs `flux2 bench` with the same prompt, size,
   steps, thread count, warm-up and runs (sessions created once, as the diffusers pipeline is loaded
   once).
4. Checks that both compute the same image: one diffusers run and one `flux2 generate` from the same
   noise tensor and prompt, compared by PSNR.
5. Unless --no-int8: `flux2 calibrate --precision int8` with default options (every component:
   text encoder, DiT, VAE; its wall time is reported), `flux2 bench --against` the INT8 folder
   (f32 and INT8 timed by one process, image PSNR of INT8 vs f32 on the same seed) and the same
   same-noise check of the INT8 image against diffusers.
6. Prints all of it side by side (diffusers f32, flux2 f32, flux2 INT8), the speed-ups, the share
   of flux2's time outside ONNX Runtime calls, and the CPU with its instruction sets, and writes
   everything to WORK/compare.json.
"""

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests" / "fixtures" / "text" / "qwen3" / "tokenizer"
SCHEDULER = dict(
    num_train_timesteps=1000,
    use_dynamic_shifting=True,
    time_shift_type="exponential",
    shift=3.0,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flux2", default=str(ROOT / "target" / "release" / "flux2"), help="flux2 binary (release)")
    p.add_argument("--work", default=str(ROOT / "target" / "compare-diffusers"), help="work folder")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch threads = ONNX Runtime intra-op threads")
    p.add_argument("--prompt", default="a red fox sitting in the snow, soft morning light")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--double", type=int, default=2)
    p.add_argument("--single", type=int, default=4)
    p.add_argument("--text-hidden", type=int, default=256)
    p.add_argument("--text-layers", type=int, default=28)
    p.add_argument("--vae-widths", default="32,64,128,128", help="VAE block_out_channels (released: 128,256,512,512)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 calibration and its timing")
    p.add_argument("--reuse-int8", action="store_true", help="time the INT8 folder of an earlier run (WORK/int8) instead of calibrating again")
    return p.parse_args()


def cpu_info() -> str:
    """CPU model and the instruction sets INT8 speed depends on (from /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    want = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"]
    return f"{model} ({', '.join(f for f in want if f in flags) or 'no AVX2'})"


def config_of(a) -> dict:
    hd, th = a.head_dim, a.text_hidden
    return dict(
        transformer=dict(
            patch_size=1, in_channels=128, out_channels=None, num_layers=a.double, num_single_layers=a.single,
            attention_head_dim=hd, num_attention_heads=a.heads, joint_attention_dim=3 * th,
            timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=[hd // 4] * 4, rope_theta=2000,
            eps=1e-6, guidance_embeds=False,
        ),
        vae=dict(block_out_channels=[int(w) for w in a.vae_widths.split(",")], norm_num_groups=32),
        text=dict(
            vocab_size=512, hidden_size=th, intermediate_size=3 * th, num_hidden_layers=a.text_layers,
            num_attention_heads=4, num_key_value_heads=2, head_dim=th // 4, hidden_act="silu",
            max_position_embeddings=40960, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6}, attention_bias=False,
            use_sliding_window=False, sliding_window=None, tie_word_embeddings=True,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        ),
        seed=a.seed,
    )


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=g)
        if "embed_tokens" in name:
            p.copy_(z)
        elif p.ndim >= 2:
            p.copy_(z / math.sqrt(p[0].numel()))
        elif name.endswith("bias"):
            p.copy_(0.02 * z)
        else:
            p.copy_(1.0 + 0.1 * z)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(torch.exp(0.2 * torch.randn(b.shape, generator=g)))
    return model


def build_checkpoint(folder: Path, cfg: dict):
    stamp = folder / "compare_config.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == cfg:
        print(f"checkpoint: reusing {folder}")
        return
    t = time.perf_counter()
    s = cfg["seed"]
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=randomize_(AutoencoderKLFlux2(**cfg["vae"]).eval(), s + 1),
        text_encoder=randomize_(Qwen3ForCausalLM(Qwen3Config(**cfg["text"])).eval().float(), s + 2),
        tokenizer=AutoTokenizer.from_pretrained(TOKENIZER),
        transformer=randomize_(Flux2Transformer2DModel(**cfg["transformer"]).eval(), s + 3),
        is_distilled=True,
    )
    if folder.exists():
        shutil.rmtree(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    shutil.rmtree(tmp / "tokenizer")
    shutil.copytree(TOKENIZER, tmp / "tokenizer")
    (tmp / "compare_config.json").write_text(json.dumps(cfg, indent=1))
    tmp.rename(folder)
    n = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("transformer", "vae", "text_encoder")}
    print(f"checkpoint: wrote {folder} in {time.perf_counter() - t:.1f}s; parameters {n}")


class StageTimer:
    """Wall time of encode_prompt, each transformer forward and vae.decode, per pipeline call."""

    def __init__(self, pipe):
        self.samples = {"text_encoder": [], "dit_call": [], "vae_decode": []}
        self._wrap(pipe, "encode_prompt", "text_encoder")
        self._wrap(pipe.transformer, "forward", "dit_call")
        self._wrap(pipe.vae, "decode", "vae_decode")

    def _wrap(self, obj, attr, key):
        inner = getattr(obj, attr)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.samples[key].append(time.perf_counter() - t)

        setattr(obj, attr, timed)

    def clear(self):
        for v in self.samples.values():
            v.clear()


def stats(xs):
    xs = sorted(xs)
    if not xs:
        return None
    p90 = xs[min(len(xs), max(1, math.ceil(0.9 * len(xs)))) - 1]
    return dict(n=len(xs), min=xs[0], median=statistics.median(xs), p90=p90)


def time_diffusers(folder: Path, a):
    torch.set_num_threads(a.threads)
    pipe = Flux2KleinPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    timer = StageTimer(pipe)
    kw = dict(prompt=a.prompt, width=a.width, height=a.height, num_inference_steps=a.steps, output_type="pt")
    with torch.inference_mode():
        for _ in range(a.warmup):
            pipe(**kw, generator=torch.Generator().manual_seed(0))
        timer.clear()
        totals = []
        for i in range(a.runs):
            t = time.perf_counter()
            pipe(**kw, generator=torch.Generator().manual_seed(i))
            totals.append(time.perf_counter() - t)
    return dict(end_to_end=stats(totals), **{k: stats(v) for k, v in timer.samples.items()}), pipe


def run(cmd):
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def same_image_check(pipe, work: Path, onnx: Path, a, tag="flux2") -> float:
    """One diffusers image and one flux2 image (of the export `onnx`) from the same noise and
    prompt: their PSNR."""
    g = torch.Generator().manual_seed(99)
    noise = torch.randn(1, 128, a.height // 16, a.width // 16, generator=g)
    save_file({"noise": noise.contiguous()}, str(work / "noise.safetensors"))
    with torch.inference_mode():
        ref = pipe(prompt=a.prompt, width=a.width, height=a.height, num_inference_steps=a.steps,
                   latents=noise, output_type="pt").images
    run([a.flux2, "generate", "--model", onnx, "--prompt", a.prompt, "--noise", work / "noise.safetensors",
         "--width", a.width, "--height", a.height, "--steps", a.steps, "--out", work / f"{tag}.png",
         "--save-tensor", work / f"{tag}.safetensors"])
    ours = load_file(str(work / f"{tag}.safetensors"))["image"]
    return psnr(ref.float().numpy(), ours.numpy())


def main():
    a = parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not Path(a.flux2).is_file():
        sys.exit(f"no flux2 binary at {a.flux2}: run `cargo build --release -p flux2-cli` (or scripts/compare_diffusers.sh)")
    cfg = config_of(a)
    ckpt, onnx = work / "checkpoint", work / "onnx"
    build_checkpoint(ckpt, cfg)

    print(f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{a.threads} threads: {a.warmup} warm-up + {a.runs} timed runs ...", flush=True)
    ref, pipe = time_diffusers(ckpt, a)

    t = time.perf_counter()
    run([a.flux2, "export", "--checkpoint", ckpt, "--out", onnx])
    export_s = time.perf_counter() - t
    int8, calib_s = work / "int8", None
    if not a.no_int8 and not (a.reuse_int8 and (int8 / "manifest.json").is_file()):
        if int8.exists():
            shutil.rmtree(int8)
        t = time.perf_counter()
        run([a.flux2, "calibrate", "--model", onnx, "--precision", "int8", "--out", int8, "--threads", a.threads])
        calib_s = time.perf_counter() - t
    bench_json = work / "bench.json"
    against = [] if a.no_int8 else ["--against", int8]
    run([a.flux2, "bench", "--model", onnx, "--prompt", a.prompt, "--width", a.width, "--height", a.height,
         "--steps", a.steps, "--runs", a.runs, "--warmup", a.warmup, "--threads", a.threads,
         "--json", bench_json, "--plot", work / "bench.png", *against])
    ours = json.loads(bench_json.read_text())
    quality = same_image_check(pipe, work, onnx, a)
    quality_int8 = None if a.no_int8 else same_image_check(pipe, work, int8, a, tag="flux2-int8")
    q8 = (ours.get("against") or {}).get("median_seconds", {})

    st = ours["stages"]
    ours_e2e = st["end_to_end"]["stats"]["median"]
    ref_e2e = ref["end_to_end"]["median"]
    outside = ours["outside_ort_fraction"]["stats"]["median"]
    rows = [
        ("text encoder", ref["text_encoder"], st["text_encoder"]["stats"]),
        ("DiT step", ref["dit_call"], st["dit_step"]["stats"]),
        ("VAE decode", ref["vae_decode"], st["vae_decode"]["stats"]),
        ("end to end", ref["end_to_end"], st["end_to_end"]["stats"]),
    ]
    keys = {"text encoder": "text_encoder", "DiT step": "dit_step", "VAE decode": "vae_decode",
            "end to end": "end_to_end"}
    cpu = ours.get("cpu_summary") or cpu_info()  # flux2 bench reads the same /proc/cpuinfo
    print(f"\n{a.width}x{a.height}, {a.steps} steps, {a.threads} threads, medians of {a.runs} runs (seconds); {cpu}")
    print(f"{'stage':<14}{'diffusers':>12}{'flux2 f32':>12}{'speed-up':>10}{'flux2 int8':>12}{'speed-up':>10}")
    for name, r, o in rows:
        i8 = q8.get(keys[name], {}).get("against")
        tail = f"{i8:>12.3f}{r['median'] / i8:>9.2f}x" if i8 else ""
        print(f"{name:<14}{r['median']:>12.3f}{o['median']:>12.3f}{r['median'] / o['median']:>9.2f}x{tail}")
    print(f"flux2 time outside ONNX Runtime calls: {100 * outside:.2f}% of end to end (target <= 2%)")
    print(f"end-to-end speed-up f32: {ref_e2e / ours_e2e:.2f}x; same-noise image PSNR vs diffusers {quality:.1f} dB")
    int8_e2e = q8.get("end_to_end", {}).get("against")
    if int8_e2e:
        psnr_f32 = ours["against"]["image_psnr_db"]
        print(f"end-to-end speed-up int8: {ref_e2e / int8_e2e:.2f}x (target >= 2x); same-noise image PSNR vs "
              f"diffusers {quality_int8:.1f} dB (target >= 30), vs flux2 f32 {psnr_f32:.1f} dB; "
              f"calibration {'reused (--reuse-int8)' if calib_s is None else f'{calib_s:.0f} s'}")
    summary = dict(
        config=cfg, width=a.width, height=a.height, steps=a.steps, runs=a.runs, warmup=a.warmup, threads=a.threads,
        versions=dict(diffusers=diffusers.__version__, transformers=transformers.__version__, torch=torch.__version__),
        diffusers=ref, flux2=ours, export_seconds=export_s, speedup_end_to_end=ref_e2e / ours_e2e,
        speedup_end_to_end_min=ref["end_to_end"]["min"] / st["end_to_end"]["stats"]["min"],
        flux2_outside_ort_fraction=outside, same_noise_psnr_db=quality, cpu=cpu,
        int8=None if a.no_int8 else dict(
            calibrate_seconds=calib_s, median_seconds=q8, same_noise_psnr_db=quality_int8,
            psnr_vs_f32_db=ours["against"]["image_psnr_db"],
            speedup_end_to_end=ref_e2e / int8_e2e if int8_e2e else None),
    )
    (work / "compare.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {work / 'compare.json'}")


if __name__ == "__main__":
    main()
