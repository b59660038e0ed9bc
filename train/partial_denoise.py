#!/usr/bin/env python3
"""Where does a trained DiT decide the shape? Noises real latents to t0, samples back to 0 with
their true captions (the klein-base sampler, true CFG), and counts how often the classifier still
sees the original shape. High counts at t0 = 0.7 and low ones at t0 = 1 mean the model refines
shapes it is given but does not create them from noise.

    python train/partial_denoise.py --model train/runs/shipped/checkpoint --vae train/cache/vae2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

import classify
import common
import train_dit as T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="saved pipeline folder (its transformer/ is used)")
    ap.add_argument("--vae", type=Path, required=True, help="the VAE the DiT was trained on (with its cached latents)")
    ap.add_argument("--text", type=Path, default=common.CACHE / "text")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--guidance", type=float, default=T.GUIDANCE)
    ap.add_argument("--t0", default="0.3,0.5,0.7,0.9,1.0")
    ap.add_argument("--shape", help="only pictures of this shape (e.g. square)")
    a = ap.parse_args()
    common.setup_threads()
    torch.set_grad_enabled(False)
    vae = AutoencoderKLFlux2.from_pretrained(a.vae).eval()
    dit = Flux2Transformer2DModel.from_pretrained(a.model / "transformer").eval().float()
    tok, enc = T.load_text(a.text)
    feats, triples, real = T.text_features(tok, enc, a.text)
    cached = sorted(a.vae.glob("latents-*-64-*.pt"))
    if not cached:
        raise SystemExit(f"no cached 64x64 latents in {a.vae}: run train_dit.py with this VAE first")
    data = torch.load(cached[0])
    keep = [i for i, l in enumerate(data["labels"]) if a.shape is None or l[1] == a.shape][: a.n]
    if not keep:
        raise SystemExit(f"no cached picture of shape {a.shape!r}")
    lat, labels = data["latents"][keep], [data["labels"][i] for i in keep]
    index = {t: i for i, t in enumerate(triples)}
    ctx, unc = feats[[index[tuple(l)] for l in labels]], feats[-1:]
    b = len(lat)
    for t0 in (float(v) for v in a.t0.split(",")):
        x = T.denoise_from(dit, lat, t0, ctx, unc, a.steps, 0, real, a.guidance)
        kept = sum(classify.classify(img)[1] == want[1] for img, want in zip(common.decode_tokens(vae, x, 4, 4), labels))
        print(f"t0 {t0:.2f}: shape kept {kept}/{b}", flush=True)


if __name__ == "__main__":
    main()
