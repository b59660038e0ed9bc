#!/usr/bin/env python3
"""Diagnosis: do the DiT's samples carry the caption's shape? Fits a linear map and a one-layer
MLP from sampled latents (flattened tokens) to the caption's shape on the first --train samples
and reports the accuracy on the rest. Reads the latents tune_decoder.py --cache saved.

    python train/latent_probe.py --cache train/runs/tune/gen.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import shapes


def fit(net, x, y, steps=300):
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--train", type=int, default=2048)
    a = ap.parse_args()
    torch.manual_seed(0)
    saved = torch.load(a.cache)
    x = saved["tokens"].reshape(len(saved["tokens"]), -1)
    y = torch.tensor([shapes.SHAPES.index(w[1]) for w in saved["wants"]])
    mu, sd = x[: a.train].mean(0), x[: a.train].std(0) + 1e-6
    x = (x - mu) / sd
    d = x.shape[1]
    for name, net in [("linear", torch.nn.Linear(d, 3)), ("mlp", torch.nn.Sequential(torch.nn.Linear(d, 256), torch.nn.GELU(), torch.nn.Linear(256, 3)))]:
        fit(net, x[: a.train], y[: a.train])
        with torch.no_grad():
            p, yt = net(x[a.train :]).argmax(1), y[a.train :]
        per = {s: round(((p == yt) & (yt == k)).sum().item() / max(1, (yt == k).sum().item()), 3) for k, s in enumerate(shapes.SHAPES)}
        print(f"{name}: shape from the latent, held-out accuracy {(p == yt).float().mean().item():.3f} {per} ({len(yt)} samples)")


if __name__ == "__main__":
    main()
