#!/usr/bin/env python3
"""Adherence of a saved shapes model, judged in Python: the study's fast counterpart of
`flux2 eval` (same report.json fields the study tables read).

It samples each caption with the klein-base sampler (true CFG, empty negative prompt) on the
exactly compressed text features (train_dit.py: 3 content tokens + 1 filler standing for 509,
the same function as the 512-token pipeline to 1e-5), decodes with the model's VAE and judges
with classify.py, the Python mirror of the Rust classifier. That makes a 192-caption judgement
take seconds instead of the ~25 minutes `flux2 eval` spends running the 512-token text
sequence through every DiT step on this 2-core CPU. Captions: all of the vocabulary's in an
order fixed by --seed, cycled to --prompts; image i uses noise seed --seed + i.

    python train/judge.py --model runs/v2/checkpoint --size 128 --prompts 192 --shift fixed:6 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
from PIL import Image

import classify
import common
import sampling
import train_dit


def parse_shift(text: str) -> float | None:
    if text == "empirical":
        return None
    kind, _, val = text.partition(":")
    if kind != "fixed" or not val:
        raise SystemExit(f"--shift {text!r}: give empirical or fixed:ALPHA")
    return float(val)


def captions(triples: list, n: int, seed: int) -> list:
    order = [triples[i] for i in torch.randperm(len(triples), generator=torch.Generator().manual_seed(seed))]
    return [order[i % len(order)] for i in range(n)]


def judge(dit, vae, feats, index, want, size, steps, seed, real, guidance, alpha, batch=16):
    """Verdicts of every caption of `want`, and the first batch's pictures."""
    h = w = size // 16
    items, first = [], None
    for i in range(0, len(want), batch):
        part = want[i : i + batch]
        ctx = feats[[index[t] for t in part]]
        x = sampling.sample(dit, ctx, feats[-1:], h, w, steps, seed + i, real, guidance, alpha)
        imgs = common.decode_tokens(vae, x, h, w)
        first = imgs if first is None else first
        for k, img in enumerate(imgs):
            got = classify.classify(img)
            hits = [got[j] == part[k][j] for j in range(3)]
            items.append({"expected": {"color": part[k][0], "shape": part[k][1], "background": part[k][2]},
                          "predicted": list(got), "color": hits[0], "shape": hits[1], "background": hits[2], "all": all(hits)})
    return items, first


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a saved model folder (diffusers layout + vocabulary.json)")
    ap.add_argument("--text", type=Path, help="folder with tokenizer/ and text_encoder/ (default: --model)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--shift", default="empirical", help="empirical (FLUX.2's mu, flux2's default) or fixed:ALPHA")
    ap.add_argument("--prompts", type=int, default=192)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True, help="folder for report.json")
    a = ap.parse_args()
    common.setup_threads()
    t0 = time.time()
    vae = AutoencoderKLFlux2.from_pretrained(a.model / "vae").eval()
    dit = Flux2Transformer2DModel.from_pretrained(a.model / "transformer").eval().float()
    tok, enc = train_dit.load_text(a.text or a.model)
    feats, triples, real = train_dit.text_features(tok, enc, a.text or a.model)
    index = {t: i for i, t in enumerate(triples)}
    want = captions(triples, a.prompts, a.seed)
    items, first = judge(dit, vae, feats, index, want, a.size, a.steps, a.seed, real, a.guidance, parse_shift(a.shift))
    acc = {k: float(np.mean([it[k] for it in items])) for k in ("color", "shape", "background", "all")}
    report = {"model": str(a.model), "judge": "train/judge.py (classify.py)", "prompts": a.prompts, "seed": a.seed,
              "width": a.size, "height": a.size, "steps": a.steps, "guidance": a.guidance, "shift": a.shift,
              "accuracy": acc, "seconds": round(time.time() - t0, 1), "items": items}
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = a.out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.rename(a.out / "report.json")
    Image.fromarray(np.concatenate(list(first[:8]), axis=1)).save(a.out / "first.png")
    print(f"{a.model} {a.size}px shift {a.shift}: all {acc['all']:.3f} shape {acc['shape']:.3f} color {acc['color']:.3f} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
