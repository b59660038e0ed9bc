#!/usr/bin/env python3
"""The end-of-training Python check (train_dit.adherence, classify.py) on a saved model folder,
e.g. after assemble.py swapped in the fine-tuned decoder.

    python train/check_model.py --model models/flux2-shapes --text train/cache/text
"""

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

import common
import train_dit


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
    common.setup_threads()
    vae = AutoencoderKLFlux2.from_pretrained(a.model / "vae").eval()
    dit = Flux2Transformer2DModel.from_pretrained(a.model / "transformer").eval().float()  # bf16 on disk
    tok, enc = train_dit.load_text(a.text)
    feats, triples, real = train_dit.text_features(tok, enc, a.text)
    index = {t: i for i, t in enumerate(triples)}
    prompts = [triples[i] for i in torch.randperm(len(triples), generator=torch.Generator().manual_seed(99))[: a.prompts]]
    acc = train_dit.adherence(dit, vae, feats[[index[t] for t in prompts]], feats[-1:], prompts, 64, a.steps, 7, real)
    print(f"{a.model}: python check, {len(prompts)} prompts, {a.steps} steps: color {acc[0]:.2f} shape {acc[1]:.2f} bg {acc[2]:.2f} all {acc[3]:.2f}")


if __name__ == "__main__":
    main()
