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
from timesteps import TimestepDist

# The CFG scale the model is meant to run at (written to vocabulary.json; the python checks use
# it too). `flux2 eval` of the shipped run: guidance 1.5 / 2 / 2.5 / 3 / 4 gave 77 / 81 / 74 / 75 /
# 65 % all three on 96 captions (train/results/sampling-sweep.txt); that run's own python checks
# were logged at 4.0, before this was measured.
GUIDANCE = 2.0
CAPTION_DROPOUT = 0.1


def empirical_mu(seq_len: int, steps: int) -> float:
    """compute_empirical_mu of the FLUX.2 pipelines (flux2-arch.md §6.3)."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    if seq_len > 4300:
        return a2 * seq_len + b2
    m200, m10 = a2 * seq_len + b2, a1 * seq_len + b1
    return m10 + (steps - 10) * (m200 - m10) / 190.0


def sigmas(seq_len: int, steps: int) -> list[float]:
    mu = empirical_mu(seq_len, steps)
    t = np.linspace(1.0, 1.0 / steps, steps)
    s = math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))
    return [float(v) for v in s] + [0.0]


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


def pad_bias(b: int, real: int, total: int, img_tokens: int) -> torch.Tensor:
    """Additive attention mask over [real text, one pad, image] keys: log(multiplicity) on the pad."""
    bias = torch.zeros(b, 1, 1, real + 1 + img_tokens)
    bias[..., real] = math.log(total - real)
    return bias


def dit_call(dit, x, ctx, t, real, total=textenc.MAX_LENGTH):
    """The DiT on compressed text ctx = [real tokens, one pad] standing for `total` tokens."""
    s = x.shape[1]
    h = w = int(round(math.sqrt(s)))
    kw = {"attention_mask": pad_bias(x.shape[0], real, total, s)}
    return dit(hidden_states=x, encoder_hidden_states=ctx, timestep=t, img_ids=common.img_ids(h, w), txt_ids=common.txt_ids(real + 1), joint_attention_kwargs=kw).sample


@torch.no_grad()
def euler_cfg(dit, x, ctx, uncond, sig, real, guidance=GUIDANCE):
    """Euler steps from sig[0] down the noise levels `sig` with true CFG (empty negative prompt)."""
    b = ctx.shape[0]
    both = torch.cat([ctx, uncond.expand(b, -1, -1)])
    for i in range(len(sig) - 1):
        v = dit_call(dit, torch.cat([x, x]), both, torch.full((2 * b,), sig[i]), real)
        vc, vu = v[:b], v[b:]
        x = x + (sig[i + 1] - sig[i]) * (vu + guidance * (vc - vu))
    return x


def denoise_from(dit, z0, t0, ctx, uncond, steps, seed, real, guidance=GUIDANCE):
    """Clean tokens z0 noised to t0 (noise seed `seed`), then the sampler's remaining steps below t0."""
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    sig = [t0] + [s for s in sigmas(z0.shape[1], steps) if s < t0]
    return euler_cfg(dit, (1 - t0) * z0 + t0 * eps, ctx, uncond, sig, real, guidance)


def sample(dit, ctx, uncond, h, w, steps, seed, real, guidance=GUIDANCE):
    """The klein-base sampler: pure noise, Euler on the shifted schedule with true CFG."""
    x = torch.randn(ctx.shape[0], h * w, 128, generator=torch.Generator().manual_seed(seed))
    return euler_cfg(dit, x, ctx, uncond, sigmas(h * w, steps), real, guidance)


def adherence(dit, vae, feats, uncond, triples, size, steps, seed, real, guidance=GUIDANCE):
    """Fractions right (colour, shape, background, all three) of the Python classifier on the
    captions `triples` (contexts `feats`), 16 per batch, batch i with noise seed `seed + i`."""
    h = w = size // 16
    ok = np.zeros(4)
    for i in range(0, len(triples), 16):
        idx = list(range(i, min(i + 16, len(triples))))
        x = sample(dit, feats[idx], uncond, h, w, steps, seed + i, real, guidance)
        ok += classify.hit_counts(common.decode_tokens(vae, x, h, w), [triples[j] for j in idx])
    return ok / len(triples)


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


def save_pipeline(out: Path, dit, vae, enc, tok, size: int, steps: int, meta: dict, guidance: float = GUIDANCE):
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
    common.write_json(tmp / "vocabulary.json", shapes.vocabulary(size, steps, guidance, textenc.TEXT_LAYERS))
    common.write_json(tmp / "training.json", meta)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dist", choices=["ts", "ln", "pln"], default="ln")
    ap.add_argument("--alpha", type=float, default=1.0, help="training alpha-shift")
    ap.add_argument("--mu", type=float, default=0.0)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--size", type=int, default=64)
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
    run_steps = a.run_steps or a.sample_steps
    common.setup_threads()
    timer = common.Timer()
    dist = TimestepDist(a.dist, a.alpha, a.mu, a.sigma)
    vae = AutoencoderKLFlux2.from_pretrained(a.vae).eval()
    tok, enc = load_text(a.text)
    full, triples = full_text_features(tok, enc, a.text)
    feats, real = compress(full)
    uncond = feats[-1:]
    data = latents(vae, a.vae, a.images, a.size, 12345, shape_mix(a.shape_mix))
    lat, labels = data["latents"], data["labels"]
    index = {t: i for i, t in enumerate(triples)}
    cap_idx = torch.tensor([index[tuple(l)] for l in labels])
    print(f"data ready in {timer():.0f}s: {len(lat)} latents {tuple(lat.shape[1:])}, {len(triples)} captions, {real} + 1 text tokens", flush=True)

    torch.manual_seed(a.seed)
    if a.init:
        dit = Flux2Transformer2DModel.from_pretrained(a.init / "transformer")
    else:
        shape = {"num_attention_heads": a.heads, "num_layers": a.double_blocks, "num_single_layers": a.single_blocks}
        dit = Flux2Transformer2DModel(**{**common.DIT_CONFIG, **shape})
        if a.zero_init:
            zero_init(dit)
    blind_to_text_positions(dit)
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
    h = w = a.size // 16
    print(f"dit: {n_params/1e6:.2f}M parameters, t ~ {dist.describe()}", flush=True)
    eval_prompts = [triples[i] for i in torch.randperm(len(triples), generator=torch.Generator().manual_seed(99))[: a.eval_prompts]]
    eval_feats = feats[[index[t] for t in eval_prompts]]
    log = []
    train_start = timer()
    for step in range(a.steps):
        idx = torch.randint(0, len(lat), (a.batch,), generator=g)
        x0 = lat[idx]
        ci = cap_idx[idx].clone()
        drop = torch.rand(a.batch, generator=g) < CAPTION_DROPOUT
        ci[drop] = len(feats) - 1
        ctx = feats[ci]
        t = dist.sample(a.batch, g, a.stratified)
        eps = torch.randn(x0.shape, generator=g)
        tt = t.view(-1, 1, 1)
        xt = (1 - tt) * x0 + tt * eps
        v = dit_call(fwd, xt, ctx, t, real)
        loss = ((v - (eps - x0)) ** 2).mean()
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
            print(f"step {step:5d} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} ({timer() - train_start:.0f}s)", flush=True)
        over = a.max_minutes > 0 and (timer() - train_start) > 60 * a.max_minutes
        last = step == a.steps - 1 or over
        if (a.eval_every and step > 0 and step % a.eval_every == 0) or last:
            acc = adherence(ema, vae, eval_feats, uncond, eval_prompts, a.size, a.sample_steps, 7, real, a.guidance)
            log.append({"step": step, "seconds": round(timer() - train_start), "color": acc[0], "shape": acc[1], "background": acc[2], "all": acc[3]})
            print(f"  adherence (python check, {len(eval_prompts)} prompts) color {acc[0]:.2f} shape {acc[1]:.2f} bg {acc[2]:.2f} all {acc[3]:.2f}", flush=True)
            if not last:  # an intermediate model to look at (or continue with --init) while training goes on
                save_pipeline(a.out.with_name(a.out.name + "-latest"), ema, vae, enc, tok, a.size, run_steps, {"step": step, "python_checks": log}, a.guidance)
        if last:
            break
    steps_done = step + 1
    train_s = timer() - train_start
    meta = {
        "dist": a.dist, "alpha": a.alpha, "mu": a.mu, "sigma": a.sigma, "seed": a.seed, "steps": steps_done, "steps_requested": a.steps,
        "batch": a.batch, "lr": a.lr, "images": a.images, "shape_mix": a.shape_mix, "size": a.size, "dit_parameters": n_params,
        "dit_train_seconds": round(train_s), "python_checks": log,
        "text_encoder": "frozen Qwen3 from build_text.py (see train/textenc.py)", "init": str(a.init) if a.init else None,
        "heads": a.heads, "double_blocks": dit.config.num_layers, "single_blocks": dit.config.num_single_layers, "cosine": a.cosine, "stratified": a.stratified, "zero_init": a.zero_init, "compile": a.compile, "save_dtype": a.save_dtype,
    }
    check_uncompressed(ema, full, feats, real)
    if a.save_dtype == "bf16":
        ema = ema.to(torch.bfloat16)
    save_pipeline(a.out, ema, vae, enc, tok, a.size, run_steps, meta, a.guidance)
    print(f"saved {a.out} (DiT trained in {train_s:.0f}s, total {timer():.0f}s)", flush=True)


if __name__ == "__main__":
    main()
