#!/usr/bin/env python3
"""Tried, not shipped (train/README.md): fine-tune the VAE decoder on what the trained DiT
actually produces.

The DiT's samples are latents the decoder never saw in training: the shape is there (position,
size, colour, and a hint of its kind), but the outline is soft, so the decoder draws wobbly
blobs with rounded corners. This stage trains the decoder (and post_quant_conv) to draw
the clean picture from them, keeping the encoder, the latent space and the BN statistics as
they are (so the DiT stays valid; assemble.py checks it):

* bbox pairs (`--pairs bbox`): captions drawn at random, sampled by the shipped sampler (pure noise, the
  FLUX.2 shifted schedule, true CFG, the model's step count); the target is the caption's shape,
  in the caption's colours, re-drawn clean on the bounding box the current decoder gives the
  sample's shape region (the same region the classifier looks at). Samples with no region are
  dropped;
* denoise pairs (`--pairs denoise`): fresh pictures noised to t0 and sampled back with their
  captions, target the picture itself (exactly aligned);
* real pairs: fresh pictures through the frozen encoder, target the picture itself, so the
  decoder remains an autoencoder's decoder (its reconstruction ceiling is printed).

A share `--gen-frac` of each batch is generated pairs, the rest real. Loss L1 + MSE on pixels
(as train_vae.py) or L1 alone. Measured on the shipped model (256 held-out samples, Python
classifier): 56.6 % all three before, 57.4-61.3 % after, within noise, while a plain MLP reads the
caption's shape from the same latents 89 % of the time (latent_probe.py).

    python train/tune_decoder.py --model models/flux2-shapes --out train/cache/vae-tuned
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

import classify
import common
import shapes
import train_dit as T
import train_vae


def clean_target(img: np.ndarray, want: tuple[str, str, str]) -> np.ndarray | None:
    """The caption's shape drawn clean on the bounding box of the sample's shape region (as the
    classifier finds it), or None when there is no region."""
    _, _, region = classify.shape_region(img)
    if region is None:
        return None
    size = img.shape[0]
    ys, xs = region[:, 0], region[:, 1]
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    side = float(np.clip((bw + bh) / 2, shapes.SIDE_RANGE[0] * size, shapes.SIDE_RANGE[1] * size))
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    x0 = float(np.clip(cx - side / 2, 0, size - side))
    y0 = float(np.clip(cy - side / 2, 0, size - side))
    color, shape, background = want
    return shapes.render(color, shape, background, size, side, x0, y0)


@torch.no_grad()
def generate(dit, feats, uncond, picks, size, steps, seed, real, batch=64):
    """Sampled tokens (N, S, 128) for the contexts feats[picks], batch i with noise seed seed + i."""
    h = size // 16
    out = []
    for i in range(0, len(picks), batch):
        idx = picks[i : i + batch]
        out.append(T.sample(dit, feats[idx], uncond, h, h, steps, seed + i, real))
    return torch.cat(out)


@torch.no_grad()
def denoise_pairs(dit, vae, feats, uncond, triples, n, size, steps, t0s, seed, real, batch=64):
    """Fresh pictures, encoded, noised to a t0 (one per batch, cycling through t0s) and sampled
    back with their captions: (tokens, target pixels). The DiT keeps where the shape is but
    softens its outline as it does from pure noise, and the target is the picture itself."""
    rng = np.random.default_rng(seed)
    index = {t: i for i, t in enumerate(triples)}
    h = size // 16
    toks, xs = [], []
    for b, i in enumerate(range(0, n, batch)):
        samples = [shapes.sample(rng, size) for _ in range(min(batch, n - i))]
        x = common.to_pixels(np.stack([s[0] for s in samples]))
        z0 = common.encode_latents(vae, x)
        t0 = t0s[b % len(t0s)]
        ctx = feats[[index[tuple(s[2])] for s in samples]]
        toks.append(T.denoise_from(dit, z0, t0, ctx, uncond, steps, seed + b, real))
        xs.append(x)
    return torch.cat(toks), torch.cat(xs)


def decode(vae, tokens: torch.Tensor, h: int) -> torch.Tensor:
    """Packed normalised tokens -> pixels in [-1, 1] (with gradients)."""
    return vae.decode(common.unpatchify(common.bn_denormalize(vae, common.unpack(tokens, h, h)))).sample


def score(vae, tokens, wants, h, batch=64) -> float:
    ok = np.zeros(4)
    for i in range(0, len(tokens), batch):
        ok += classify.hit_counts(common.decode_tokens(vae, tokens[i : i + batch], h, h), wants[i : i + batch])
    return ok / len(tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="saved pipeline folder: its transformer/ and vae/")
    ap.add_argument("--text", type=Path, default=common.CACHE / "text")
    ap.add_argument("--out", type=Path, required=True, help="where to save the tuned VAE")
    ap.add_argument("--samples", type=int, default=2048, help="generated pairs")
    ap.add_argument("--held-out", type=int, default=192, help="generated captions to judge before/after on")
    ap.add_argument("--steps", type=int, default=600, help="decoder training steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--gen-frac", type=float, default=0.75, help="share of each batch taken from the generated pairs")
    ap.add_argument("--pairs", choices=["bbox", "denoise"], default="bbox", help="bbox: samples from pure noise, target redrawn on the sample's box; denoise: real pictures noised to --t0 and sampled back, target the picture")
    ap.add_argument("--t0", default="0.6,0.7,0.8,0.9", help="noise levels of the denoise pairs")
    ap.add_argument("--loss", choices=["l1mse", "l1"], default="l1mse")
    ap.add_argument("--cache", type=Path, help="keep the sampled latents here (reused when it exists; for experiments)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    common.setup_threads()
    torch.manual_seed(a.seed)
    timer = common.Timer()
    voc = json.loads((a.model / "vocabulary.json").read_text())
    size, sample_steps = voc["size"][0], voc["steps"]
    h = size // 16
    vae = AutoencoderKLFlux2.from_pretrained(a.model / "vae")
    dit = Flux2Transformer2DModel.from_pretrained(a.model / "transformer").eval().float()
    tok, enc = T.load_text(a.text)
    feats, triples, real = T.text_features(tok, enc, a.text)
    uncond = feats[-1:]
    rng = np.random.default_rng(a.seed + 5000)
    picks = rng.integers(len(triples), size=a.samples + a.held_out).tolist()
    if a.cache and a.cache.exists():
        saved = torch.load(a.cache)
        tokens, wants = saved["tokens"], [tuple(w) for w in saved["wants"]]
    else:
        tokens = generate(dit, feats, uncond, picks, size, sample_steps, a.seed + 7000, real)
        wants = [triples[i] for i in picks]
        if a.cache:
            torch.save({"tokens": tokens, "wants": wants}, a.cache)
    print(f"tune: sampled {len(picks)} latents ({timer():.0f}s)", flush=True)
    vae.eval()
    test_tok, test_want = tokens[a.samples :], wants[a.samples :]
    before = score(vae, test_tok, test_want, h)
    if a.pairs == "bbox":
        imgs = np.concatenate([common.decode_tokens(vae, tokens[i : i + 64], h, h) for i in range(0, a.samples, 64)])
        pairs = [(i, clean_target(imgs[i], wants[i])) for i in range(a.samples)]
        pairs = [(i, t) for i, t in pairs if t is not None]
        gen_tok = tokens[[i for i, _ in pairs]]
        gen_x = common.to_pixels(np.stack([t for _, t in pairs]))
    else:
        t0s = [float(v) for v in a.t0.split(",")]
        gen_tok, gen_x = denoise_pairs(dit, vae, feats, uncond, triples, a.samples, size, sample_steps, t0s, a.seed + 9000, real)
    print(f"tune: {len(gen_tok)} {a.pairs} pairs; held-out before: {before.round(3).tolist()} ({timer():.0f}s)", flush=True)

    params = []
    for n, p in vae.named_parameters():
        p.requires_grad_(n.startswith(("decoder.", "post_quant_conv.")))
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    half = int(round(a.batch * a.gen_frac))
    warm = max(1, a.steps // 30)
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        gi = torch.from_numpy(rng.integers(len(gen_tok), size=half))
        real_imgs = np.stack([shapes.sample(rng, size)[0] for _ in range(a.batch - half)])
        xr = common.to_pixels(real_imgs)
        with torch.no_grad():
            zr = common.encode_latents(vae, xr)
        y = decode(vae, torch.cat([gen_tok[gi], zr]), h)
        x = torch.cat([gen_x[gi], xr])
        loss = (y - x).abs().mean() + (((y - x) ** 2).mean() if a.loss == "l1mse" else 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0 or step == a.steps - 1:
            print(f"tune step {step:5d} loss {loss.item():.4f} ({timer():.0f}s)", flush=True)
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    after = score(vae, test_tok, test_want, h)
    print(f"tune: held-out generated, before {before.round(3).tolist()} after {after.round(3).tolist()}", flush=True)
    print(f"tune: classifier on real reconstructions (ceiling): {train_vae.reconstruction_adherence(vae, size, a.seed + 3000)} ({timer():.0f}s)", flush=True)
    vae.save_pretrained(a.out)


if __name__ == "__main__":
    main()
