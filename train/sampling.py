#!/usr/bin/env python3
"""Sampling with a (compressed-text) klein-style DiT: the FLUX.2 empirical schedule, Euler steps
with true CFG, and the Python adherence check used while training. Split out of train_dit.py so
the training script and the diagnosis scripts share one sampler."""

from __future__ import annotations

import math

import numpy as np
import torch

import classify
import common
import textenc

# The CFG scale the model is meant to run at (written to vocabulary.json; the python checks use
# it too). `flux2 eval` of the v1 model: guidance 1.5 / 2 / 2.5 / 3 / 4 gave 77 / 81 / 74 / 75 /
# 65 % all three on 96 captions (train/results/sampling-sweep.txt).
GUIDANCE = 2.0


def empirical_mu(seq_len: int, steps: int) -> float:
    """compute_empirical_mu of the FLUX.2 pipelines (flux2-arch.md §6.3)."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    if seq_len > 4300:
        return a2 * seq_len + b2
    m200, m10 = a2 * seq_len + b2, a1 * seq_len + b1
    return m10 + (steps - 10) * (m200 - m10) / 190.0


def sigmas(seq_len: int, steps: int, alpha: float | None = None) -> list[float]:
    """The noise levels of `steps` Euler steps: t shifted by alpha (FLUX.2's empirical
    exp(mu) when None), as `flux2 schedule --shift empirical|fixed:ALPHA`."""
    mu = empirical_mu(seq_len, steps) if alpha is None else math.log(alpha)
    t = np.linspace(1.0, 1.0 / steps, steps)
    s = math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))
    return [float(v) for v in s] + [0.0]


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


def sample(dit, ctx, uncond, h, w, steps, seed, real, guidance=GUIDANCE, alpha=None):
    """The klein-base sampler: pure noise, Euler on the shifted schedule with true CFG."""
    x = torch.randn(ctx.shape[0], h * w, 128, generator=torch.Generator().manual_seed(seed))
    return euler_cfg(dit, x, ctx, uncond, sigmas(h * w, steps, alpha), real, guidance)


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
