#!/usr/bin/env python3
"""How does a trained model's adherence depend on the sampling options? Runs the klein-base
sampler (true CFG, empty negative prompt) of a saved model folder on N seeded captions for each
guidance scale and step count asked, and prints the Python classifier's accuracy per attribute.
A quick look before the Rust `flux2 eval` (which runs the exported graphs) confirms a choice.

    python train/guidance_sweep.py --model models/flux2-shapes --guidance 2,4,6,8 --steps 12
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

import common
import train_dit as T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="saved pipeline folder (transformer, vae, text_encoder, tokenizer)")
    ap.add_argument("--text", type=Path, help="folder with tokenizer/ and text_encoder/ (default: --model); features.pt is cached there")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--guidance", default="4")
    ap.add_argument("--steps", default="12")
    a = ap.parse_args()
    common.setup_threads()
    torch.set_grad_enabled(False)
    vae = AutoencoderKLFlux2.from_pretrained(a.model / "vae").eval()
    dit = Flux2Transformer2DModel.from_pretrained(a.model / "transformer").eval().float()
    text = a.text or a.model
    tok, enc = T.load_text(text)
    feats, triples, real = T.text_features(tok, enc, text)
    size = json.loads((a.model / "vocabulary.json").read_text())["size"][0]
    rng = np.random.default_rng(a.seed)
    pick = rng.integers(0, len(triples), a.n)
    want = [triples[i] for i in pick]
    ctx, unc = feats[torch.from_numpy(pick)], feats[-1:]
    for steps in (int(s) for s in a.steps.split(",")):
        for g in (float(v) for v in a.guidance.split(",")):
            acc = T.adherence(dit, vae, ctx, unc, want, size, steps, a.seed, real, g)
            print(f"steps {steps:3d} guidance {g:4.1f}: colour {acc[0]:.3f} shape {acc[1]:.3f} bg {acc[2]:.3f} all {acc[3]:.3f}", flush=True)


if __name__ == "__main__":
    main()
