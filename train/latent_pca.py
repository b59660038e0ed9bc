#!/usr/bin/env python3
"""Diagnosis: where does a VAE put the shape in its latent space? Principal components of the
normalised, patchified latents of N training pictures (the DiT's data), then the classifier on
held-out pictures decoded from their latents projected on the top k components.

A DiT trained with an MSE loss under isotropic noise learns high-variance directions first; if
the shape needs many low-variance components while colour fills the top ones, the shape is the
last thing it learns (train/README.md).

    python train/latent_pca.py --vae train/cache/vae2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2

import classify
import common
import shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", type=Path, required=True, help="saved AutoencoderKLFlux2 folder")
    ap.add_argument("--images", type=int, default=3000, help="pictures for the principal components")
    ap.add_argument("--held-out", type=int, default=96, help="pictures decoded from projections")
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    common.setup_threads()
    torch.set_grad_enabled(False)
    vae = AutoencoderKLFlux2.from_pretrained(a.vae).eval()
    imgs, _ = shapes.dataset(a.images, a.size, 12345)
    x = common.encode_latents(vae, common.to_pixels(imgs)).reshape(a.images, -1).double()
    mean = x.mean(0)
    _, s, v = torch.linalg.svd(x - mean, full_matrices=False)
    cum = (s**2).cumsum(0) / (s**2).sum()
    dims = x.shape[1]
    ks = [k for k in (8, 16, 32, 64, 128, 256, 512) if k < min(dims, a.images)] + [dims]
    for k in ks:
        print(f"top {k:4d} components: {cum[k - 1]:.4f} of the variance", flush=True)

    tokens = a.size // 16
    held, labels = shapes.dataset(a.held_out, a.size, 777)
    z = common.encode_latents(vae, common.to_pixels(held)).reshape(a.held_out, -1).double()
    for k in ks:
        p = v[:k]
        zk = ((z - mean) @ p.T @ p + mean).float().reshape(a.held_out, tokens * tokens, -1)
        c, sh, bg, al = classify.hit_counts(common.decode_tokens(vae, zk, tokens, tokens), labels) / a.held_out
        print(f"decoded from top {k:4d}: colour {c:.3f} shape {sh:.3f} background {bg:.3f} all {al:.3f}", flush=True)


if __name__ == "__main__":
    main()
