#!/usr/bin/env python3
"""Stage 2: train a klein-style `Flux2Transformer2DModel` (no guidance embedding) with rectified
flow on the VAE's normalised latents, and save the whole model in the diffusers layout.

Rectified flow (the seed's CFM loss): x_t = (1 - t) x0 + t eps, the DiT predicts v = eps - x0,
loss = |v_pred - v|^2. t is drawn from our ts / ln / pln distributions (timesteps.py, the same
formulas and parameters as calib/src/timesteps.rs) with the training alpha-shift `--alpha`.
10 % of captions are replaced by the empty prompt, so the model also runs klein-base style with
true classifier-free guidance (negative prompt "").

Exact text compression. The frozen text encoder gives many positions the same hidden states
(every pad; with the routed encoder every token but the colour and shape words, textenc.py), and
the DiT is made blind to text positions: the RMSNorm weights of q and k (image and text, double
and single blocks) are 0 on the head dims that RoPE rotates by the text axis l (the last
`axes_dims_rope[3]` dims), so RoPE on l acts on zeros. Then identical text tokens stay identical
through every block, and attention over n of them equals attention over one with log(n) added
to its logit. Training feeds [distinct tokens, one filler] with that bias (an additive attention
mask) instead of 512 tokens: the same function, 14x (q = 0 encoder) or 25x (routed) cheaper. The
shipped weights run unchanged in the standard 512-token pipeline (checked at the end against the
uncompressed forward on the real 512-token features).

    python train/train_dit.py --vae train/cache/vae --text train/cache/text \
        --dist ln --alpha 3 --seed 0 --steps 2000 --out models/flux2-shapes
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
from diffusers import Flux2Transformer2DModel
import transformers

import classify
import common
import shapes
import textenc
from sampling import GUIDANCE, adherence, denoise_from, dit_call, empirical_mu, euler_cfg, sample, sigmas  # noqa: F401 (re-exported)
from timesteps import TimestepDist

CAPTION_DROPOUT = 0.1


def text_blind_dims(dit) -> list[torch.nn.Parameter]:
    """The q/k RMSNorm weights of every attention (image and text streams)."""
    return [p for n, p in dit.named_parameters() if n.rsplit(".", 2)[-2] in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")]


@torch.no_grad()
def zero_init(dit) -> None:
    """adaLN-Zero (the DiT paper's initialisation): every modulation starts at shift = scale =
    gate = 0, so each block starts as the identity, and the output projection starts at 0."""
    for m in (dit.double_stream_modulation_img, dit.double_stream_modulation_txt, dit.single_stream_modulation):
        m.linear.weight.zero_()
    dit.proj_out.weight.zero_()


@torch.no_grad()
def blind_to_text_positions(dit) -> None:
    """Zeroes the head dims RoPE rotates by the text axis l (see the module docs)."""
    n_l = dit.config.axes_dims_rope[3]
    for p in text_blind_dims(dit):
        p[-n_l:] = 0


@torch.no_grad()
def check_uncompressed(dit, full, feats, real):
    """The compressed forward equals the standard 512-token one (what flux2 runs), on the first
    caption and the empty prompt with their real, uncompressed text features."""
    rows = [0, len(full) - 1]
    x, t = torch.randn(2, 16, 128, generator=torch.Generator().manual_seed(1)), torch.tensor([0.3, 0.8])
    a = dit(hidden_states=x, encoder_hidden_states=full[rows], timestep=t, img_ids=common.img_ids(4, 4), txt_ids=common.txt_ids(full.shape[1])).sample
    b = dit_call(dit, x, feats[rows], t, real, full.shape[1])
    err = (a - b).abs().max().item()
    print(f"compressed vs {full.shape[1]}-token forward: max abs diff {err:.2e}", flush=True)
    if err > 1e-4 * (1 + a.abs().max().item()):
        raise RuntimeError(f"compressed training forward differs from the {full.shape[1]}-token one by {err}")


def load_text(text_dir: Path):
    tok = transformers.AutoTokenizer.from_pretrained(text_dir / "tokenizer")
    enc = transformers.Qwen3ForCausalLM.from_pretrained(text_dir / "text_encoder").eval()
    saved = next(enc.parameters()).dtype
    # f32 compute whatever the saved dtype, as `flux2 export` runs it (bf16 weights upcast exactly);
    # save_pipeline writes the encoder back in the dtype it was saved in
    enc = enc.float()
    enc.saved_dtype = saved
    return tok, enc


def full_text_features(tok, enc, text_dir: Path):
    """Context [N, 512, ctx] of every caption and of "" (last row), as the klein pipeline
    computes it (cached in text_dir/features.pt), and the caption triples."""
    path = text_dir / "features.pt"
    triples = shapes.all_captions()
    if path.exists():
        return torch.load(path), triples
    feats = textenc.encode(enc, tok, [shapes.caption(*t) for t in triples] + [""])
    torch.save(feats, path)
    return feats, triples


def compress(full: torch.Tensor, tol: float = 1e-5):
    """Exact text compression: the positions whose hidden states equal the last position's (a
    pad, so a filler) form one group; each row keeps its other tokens in order, then filler
    copies up to the longest row's R, then one filler that stands for all the rest (dit_call
    adds log(512 - R) to its logit). Returns ([N, R+1, ctx], R)."""
    filler = full[:, -1:]
    scale = 1 + filler.abs().amax(dim=(1, 2), keepdim=True)[..., 0]
    distinct = (full - filler).abs().amax(-1) > tol * scale  # [N, L]
    r = int(distinct.sum(1).max())
    out = filler.expand(-1, r + 1, -1).clone()
    for i in range(len(full)):
        idx = distinct[i].nonzero()[:, 0]
        out[i, : len(idx)] = full[i, idx]
    return out.contiguous(), r


def text_features(tok, enc, text_dir: Path):
    """Compressed contexts of every caption and of "" (last row): (features [N, R+1, ctx],
    triples, R); R is 21 with the q = 0 encoder, 3 with the routed one (textenc.py)."""
    full, triples = full_text_features(tok, enc, text_dir)
    feats, r = compress(full)
    return feats, triples, r


def latents(vae, vae_dir: Path, n: int, size: int, seed: int, shape_p: list[float] | None = None):
    mix = "" if shape_p is None else "-mix" + "-".join(f"{v:g}" for v in shape_p)
    path = vae_dir / f"latents-{n}-{size}-{seed}{mix}.pt"
    if path.exists():
        return torch.load(path)
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for _ in range(n):
        img, _, lab = shapes.sample(rng, size, shape_p)
        imgs.append(img)
        labels.append(lab)
    lat = common.encode_latents(vae, common.to_pixels(np.stack(imgs)))
    data = {"latents": lat, "labels": labels}
    torch.save(data, path)
    return data


def shape_mix(text: str | None) -> list[float] | None:
    """--shape-mix "0.25,0.45,0.3" (circle, square, triangle) -> probabilities; None: uniform."""
    if not text:
        return None
    p = [float(v) for v in text.split(",")]
    if len(p) != len(shapes.SHAPES) or min(p) < 0 or sum(p) <= 0:
        raise SystemExit(f"--shape-mix {text!r}: give {len(shapes.SHAPES)} non-negative weights for {', '.join(shapes.SHAPES)}")
    return [v / sum(p) for v in p]


def save_pipeline(out: Path, dit, vae, enc, tok, sizes: list[int], steps: int, meta: dict, guidance: float = GUIDANCE, default_size: int | None = None):
    """The whole model in the diffusers layout, plus vocabulary.json (default size: `default_size`,
    else the largest of `sizes`; one `resolutions` entry per trained size) and training.json."""
    sched = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )
    enc = copy.deepcopy(enc).to(getattr(enc, "saved_dtype", torch.float32))
    pipe = Flux2KleinPipeline(scheduler=sched, vae=vae, text_encoder=enc, tokenizer=tok, transformer=dit, is_distilled=False)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    vocab = shapes.vocabulary(default_size or max(sizes), steps, guidance, textenc.TEXT_LAYERS)
    if len(sizes) > 1:
        vocab["resolutions"] = [{"size": [s, s], "steps": steps, "guidance": guidance} for s in sorted(sizes)]
    common.write_json(tmp / "vocabulary.json", vocab)
    common.write_json(tmp / "training.json", meta)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dist", choices=["ts", "ln", "pln"], default="ln")
    ap.add_argument("--alpha", type=float, default=1.0, help="training alpha-shift at the base size (--base-size)")
    ap.add_argument("--mu", type=float, default=0.0)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32, help="batch at the base size; a size with k times the pixels trains on batch / k pictures")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--images", type=int, default=3000, help="training pictures per size")
    ap.add_argument("--size", type=int, default=64, help="one training size (see --sizes)")
    ap.add_argument("--sizes", type=int_list, help="several training sizes, e.g. 64,128: each batch is one size, drawn by --size-weights")
    ap.add_argument("--size-weights", type=float_list, help="how often each of --sizes is drawn (default: equal)")
    ap.add_argument("--base-size", type=int, help="the size --alpha applies to (default: the smallest); at size r the shift is alpha * sqrt(m/n) = alpha * r / base (the FLUX.2 notes)")
    ap.add_argument("--fixed-alpha", action="store_true", help="the same --alpha at every size (the study's no-alpha-scaling arm)")
    ap.add_argument("--default-size", type=int, help="the size vocabulary.json says the model runs at (default: the largest)")
    ap.add_argument("--shape-mix", help="training share of circle,square,triangle pictures, e.g. 0.25,0.45,0.3 (default: uniform); a caption's shape is always the picture's")
    ap.add_argument("--sample-steps", type=int, default=28, help="sampling steps of the python checks")
    ap.add_argument("--run-steps", type=int, help="steps vocabulary.json says the model runs at (default: --sample-steps)")
    ap.add_argument("--guidance", type=float, default=GUIDANCE, help="CFG scale of the python checks and of vocabulary.json")
    ap.add_argument("--eval-every", type=int, default=0, help="python adherence check every N steps (0: end only)")
    ap.add_argument("--eval-prompts", type=int, default=48)
    ap.add_argument("--init", type=Path, help="start from this saved model's transformer (continue a run)")
    ap.add_argument("--max-minutes", type=float, default=0, help="stop the DiT early after this many minutes (0: no cap)")
    ap.add_argument("--heads", type=int, default=common.DIT_CONFIG["num_attention_heads"], help="attention heads of 64 dims (hidden = 64 x heads)")
    ap.add_argument("--double-blocks", type=int, default=common.DIT_CONFIG["num_layers"], help="double-stream (MM-DiT) blocks")
    ap.add_argument("--single-blocks", type=int, default=common.DIT_CONFIG["num_single_layers"], help="single-stream blocks")
    ap.add_argument("--cosine", action="store_true", help="cosine learning-rate decay to 5 %% over --steps, or over --max-minutes of wall time when set")
    ap.add_argument("--zero-init", action="store_true", help="adaLN-Zero start: modulations (shift, scale, gate) and the output projection at 0")
    ap.add_argument("--stratified", action="store_true", help="one timestep per equal-probability stratum of the distribution in each batch")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward (faster steps after a one-off compile)")
    ap.add_argument("--save-dtype", choices=["f32", "bf16"], default="f32", help="dtype of the saved transformer weights (bf16 halves its size)")
    a = ap.parse_args()
    a.sizes = a.sizes or [a.size]
    a.size_weights = a.size_weights or [1.0] * len(a.sizes)
    if len(a.size_weights) != len(a.sizes) or min(a.size_weights) < 0 or sum(a.size_weights) <= 0:
        raise SystemExit(f"--size-weights {a.size_weights}: give one non-negative weight per size of --sizes {a.sizes}")
    if any(s <= 0 or s % 16 for s in a.sizes):
        raise SystemExit(f"--sizes {a.sizes}: every size must be a positive multiple of 16")
    a.base_size = a.base_size or min(a.sizes)
    a.run_steps = a.run_steps or a.sample_steps
    return a


class Resolution:
    """One training size: its latents, caption indices, timestep distribution and batch."""

    def __init__(self, a, vae, size: int, index: dict):
        self.size, self.h = size, size // 16
        self.alpha = a.alpha if a.fixed_alpha else a.alpha * size / a.base_size
        self.dist = TimestepDist(a.dist, self.alpha, a.mu, a.sigma)
        self.batch = max(1, round(a.batch * (a.base_size / size) ** 2)) if size != a.base_size else a.batch
        data = latents(vae, a.vae, a.images, size, 12345, shape_mix(a.shape_mix))
        self.lat = data["latents"]
        self.cap_idx = torch.tensor([index[tuple(l)] for l in data["labels"]])

    def describe(self) -> str:
        return f"{self.size}px: {len(self.lat)} latents {tuple(self.lat.shape[1:])}, batch {self.batch}, t ~ {self.dist.describe()}"


def build_dit(a):
    torch.manual_seed(a.seed)
    if a.init:
        dit = Flux2Transformer2DModel.from_pretrained(a.init / "transformer").float()
    else:
        shape = {"num_attention_heads": a.heads, "num_layers": a.double_blocks, "num_single_layers": a.single_blocks}
        dit = Flux2Transformer2DModel(**{**common.DIT_CONFIG, **shape})
        if a.zero_init:
            zero_init(dit)
    blind_to_text_positions(dit)
    return dit


def train_step(fwd, res: Resolution, feats, real, g, stratified: bool) -> torch.Tensor:
    """The rectified-flow loss of one batch at one resolution: x_t = (1 - t) x0 + t eps, v = eps - x0."""
    idx = torch.randint(0, len(res.lat), (res.batch,), generator=g)
    x0 = res.lat[idx]
    ci = res.cap_idx[idx].clone()
    ci[torch.rand(res.batch, generator=g) < CAPTION_DROPOUT] = len(feats) - 1
    t = res.dist.sample(res.batch, g, stratified)
    eps = torch.randn(x0.shape, generator=g)
    tt = t.view(-1, 1, 1)
    v = dit_call(fwd, (1 - tt) * x0 + tt * eps, feats[ci], t, real)
    return ((v - (eps - x0)) ** 2).mean()


def check_all(a, ema, vae, eval_feats, uncond, eval_prompts, real, step, seconds) -> dict:
    """The Python adherence check at every training size."""
    entry = {"step": step, "seconds": round(seconds)}
    for size in a.sizes:
        acc = adherence(ema, vae, eval_feats, uncond, eval_prompts, size, a.sample_steps, 7, real, a.guidance)
        key = "" if len(a.sizes) == 1 else f"_{size}"
        entry.update({f"color{key}": acc[0], f"shape{key}": acc[1], f"background{key}": acc[2], f"all{key}": acc[3]})
        print(f"  adherence {size}px (python check, {len(eval_prompts)} prompts) color {acc[0]:.2f} shape {acc[1]:.2f} bg {acc[2]:.2f} all {acc[3]:.2f}", flush=True)
    return entry


def main():
    a = parse_args()
    common.setup_threads()
    timer = common.Timer()
    vae = AutoencoderKLFlux2.from_pretrained(a.vae).eval()
    tok, enc = load_text(a.text)
    full, triples = full_text_features(tok, enc, a.text)
    feats, real = compress(full)
    uncond = feats[-1:]
    index = {t: i for i, t in enumerate(triples)}
    res = [Resolution(a, vae, s, index) for s in a.sizes]
    print(f"data ready in {timer():.0f}s: {len(triples)} captions, {real} + 1 text tokens", flush=True)
    for r in res:
        print("  " + r.describe(), flush=True)

    dit = build_dit(a)
    ema = copy.deepcopy(dit).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in dit.parameters())
    ema_params, dit_params = list(ema.parameters()), list(dit.parameters())
    fwd = torch.compile(dit) if a.compile else dit
    opt = torch.optim.AdamW(dit.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.99))
    warm = max(1, min(100, a.steps // 10))
    clock = common.Timer()

    def lr_at(s: int) -> float:
        """Linear warm-up, then constant (EMA averages) or a cosine decay to 5 % of --lr."""
        if not a.cosine:
            return min(1.0, (s + 1) / warm)
        done = clock() / (60 * a.max_minutes) if a.max_minutes > 0 else s / a.steps
        return min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(a.seed)
    pick = torch.tensor(a.size_weights, dtype=torch.float64)
    print(f"dit: {n_params/1e6:.2f}M parameters", flush=True)
    eval_prompts = [triples[i] for i in torch.randperm(len(triples), generator=torch.Generator().manual_seed(99))[: a.eval_prompts]]
    eval_feats = feats[[index[t] for t in eval_prompts]]
    log, counts = [], [0] * len(res)
    train_start, cpu_start = timer(), time.process_time()
    for step in range(a.steps):
        k = int(torch.multinomial(pick, 1, generator=g)) if len(res) > 1 else 0
        counts[k] += 1
        loss = train_step(fwd, res[k], feats, real, g, a.stratified)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        sched.step()
        blind_to_text_positions(dit)
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, dit_params, 1 - decay)
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step:5d} [{res[k].size}px] loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} ({timer() - train_start:.0f}s)", flush=True)
        over = a.max_minutes > 0 and (timer() - train_start) > 60 * a.max_minutes
        last = step == a.steps - 1 or over
        if (a.eval_every and step > 0 and step % a.eval_every == 0) or last:
            log.append(check_all(a, ema, vae, eval_feats, uncond, eval_prompts, real, step, timer() - train_start))
            if not last:  # an intermediate model to look at (or continue with --init) while training goes on
                save_pipeline(a.out.with_name(a.out.name + "-latest"), ema, vae, enc, tok, a.sizes, a.run_steps, {"step": step, "python_checks": log}, a.guidance, a.default_size)
        if last:
            break
    train_s, cpu_s = timer() - train_start, time.process_time() - cpu_start
    meta = {
        "dist": a.dist, "alpha": a.alpha, "mu": a.mu, "sigma": a.sigma, "seed": a.seed, "steps": step + 1, "steps_requested": a.steps,
        "batch": a.batch, "lr": a.lr, "images": a.images, "shape_mix": a.shape_mix, "size": a.default_size or max(a.sizes), "dit_parameters": n_params,
        "sizes": a.sizes, "size_weights": a.size_weights, "base_size": a.base_size, "fixed_alpha": a.fixed_alpha,
        "alpha_per_size": {str(r.size): r.alpha for r in res}, "batch_per_size": {str(r.size): r.batch for r in res}, "steps_per_size": {str(r.size): c for r, c in zip(res, counts)},
        "dit_train_seconds": round(train_s), "dit_train_cpu_seconds": round(cpu_s), "torch_threads": torch.get_num_threads(), "python_checks": log,
        "text_encoder": "frozen Qwen3 from build_text.py (see train/textenc.py)", "init": str(a.init) if a.init else None,
        "heads": dit.config.num_attention_heads, "double_blocks": dit.config.num_layers, "single_blocks": dit.config.num_single_layers, "cosine": a.cosine, "stratified": a.stratified, "zero_init": a.zero_init, "compile": a.compile, "save_dtype": a.save_dtype,
    }
    check_uncompressed(ema, full, feats, real)
    if a.save_dtype == "bf16":
        ema = ema.to(torch.bfloat16)
    save_pipeline(a.out, ema, vae, enc, tok, a.sizes, a.run_steps, meta, a.guidance, a.default_size)
    print(f"saved {a.out} (DiT trained in {train_s:.0f}s, total {timer():.0f}s)", flush=True)


if __name__ == "__main__":
    main()
