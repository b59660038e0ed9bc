#!/usr/bin/env python3
"""Stage 1: train the FLUX.2 VAE architecture (`AutoencoderKLFlux2`, reduced widths, 32 latent
channels, 2x2 patching) on freshly drawn shape images, then set its batch-norm statistics to the
exact mean/variance of the patchified latents of a held-out set (what `bn` normalises with).

Loss: L1 + MSE on pixels in [-1, 1], plus a small L2 pull on the latent mean (keeps the latent
scale bounded; FLUX.2 uses the mode, never samples). Gaussian noise (`--latent-noise`, std
relative to the batch's latent std) is added to the latent before decoding for a fraction
(`--noise-frac`) of each batch. Besides making the decoder tolerate the imprecise latents a
few-step sampler produces, noise at a fixed signal-to-noise ratio regularises the latent space the
way a KL term does: the encoder must carry the picture's content (colour, shape outline) in
directions that survive the noise, which makes the latents easier for the DiT to learn (the
seed's fidelity-vs-learnability trade-off: an unregularised latent reconstructs well and generates
blobs).

GroupNorm uses one group (`norm_num_groups=1`, read from config.json by `flux2 export`). With
one channel per group (the released 32 groups on our 32-wide top level) or even four, a GroupNorm
maps any two-colour picture to the same normalised pattern whatever its two colours are (it only
keeps the shape mask), so the decoder's last norm erased the colours and training stalled at
~60/255 mean error with every picture purple-ish. One group keeps the pattern across channels.
Training uses random 32x32 crops (the VAE is convolutional; 4x cheaper than full pictures).

`--target pool4` (tried, not shipped: train/README.md) gives the latent a prescribed meaning
instead of leaving it free: the encoder is trained to output the picture's 4x4-pixel box averages
(a 16x16 RGB image at 64x64; each 8x8 latent pixel holds its 2x2 cells, 12 numbers, spread over
the 32 channels by a fixed seeded orthonormal 32x12 matrix so every channel has variance), and
the decoder to rebuild the full picture from that target with noise added. The idea: a free
latent puts the shape's outline in small principal components (the top 64 carry 97 % of the
variance but decode to the right shape only 84 % of the time; colour fills the rest,
latent_pca.py), which isotropic diffusion noise drowns first and an MSE-trained DiT fits last; a
box-average latent is a small picture whose cell coverages still fix each edge for the decoder.
Result: a 99 % reconstruction ceiling, but the spectrum was no more concentrated and the DiT
did not learn faster on it.

    python train/train_vae.py --out train/cache/vae --steps 200 --seed 0
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLFlux2

import classify
import common
import shapes


@torch.no_grad()
def reconstruction_adherence(vae, size: int, seed: int, n: int = 200) -> dict:
    """Colour / shape / background / all-three accuracy of the classifier on encoded-then-decoded
    pictures: no DiT can score above this with this VAE."""
    rng = np.random.default_rng(seed)
    samples = [shapes.sample(rng, size) for _ in range(n)]
    x = common.to_pixels(np.stack([s[0] for s in samples]))
    rec = common.decode_tokens(vae, common.encode_latents(vae, x), size // 16, size // 16)
    ok = classify.hit_counts(rec, [want for _, _, want in samples])
    return dict(zip(["color", "shape", "background", "all"], (ok / n).round(3).tolist()))


@functools.cache
def mixing(seed: int = 0) -> torch.Tensor:
    """Fixed orthonormal 32x12 matrix: the 12 box averages of a latent pixel -> 32 channels."""
    q, _ = torch.linalg.qr(torch.randn(32, 12, generator=torch.Generator().manual_seed(seed)))
    return q


def pool4_target(x: torch.Tensor) -> torch.Tensor:
    """Pixels (B,3,H,W) in [-1,1] -> the latent target (B,32,H/8,W/8): 4x4 box averages, 2x2 cells
    per latent pixel stacked by channel (space-to-depth), mixed to 32 channels."""
    cells = torch.nn.functional.avg_pool2d(x, 4)  # (B,3,H/4,W/4)
    b, c, h, w = cells.shape
    s2d = cells.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
    return torch.einsum("kc,bchw->bkhw", mixing(), s2d)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--crop", type=int, default=32, help="train on random CROPxCROP crops (the VAE is convolutional)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latent-noise", type=float, default=0.1, help="std of the Gaussian noise added to the latent before decoding, relative to the batch's latent std")
    ap.add_argument("--noise-frac", type=float, default=0.5, help="fraction of each batch decoded from noisy latents")
    ap.add_argument("--target", choices=["free", "pool4"], default="free", help="free: the latent is whatever the autoencoder learns; pool4: the encoder is trained to output 4x4 box averages of the picture and the decoder to draw from them (see above)")
    ap.add_argument("--decoder-from", type=Path, help="continue a trained VAE, decoder only: the encoder, its latent space and the BN statistics stay as they are (so a DiT trained on them meanwhile stays valid)")
    a = ap.parse_args()
    common.setup_threads()
    torch.manual_seed(a.seed)
    if a.decoder_from:
        vae = AutoencoderKLFlux2.from_pretrained(a.decoder_from)
        for n, p in vae.named_parameters():
            p.requires_grad_(n.startswith(("decoder.", "post_quant_conv.")))
    else:
        vae = AutoencoderKLFlux2(**common.VAE_CONFIG)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.05)
    rng = np.random.default_rng(a.seed + 1000)
    timer = common.Timer()
    for step in range(a.steps):
        imgs = np.stack([shapes.sample(rng, a.size)[0] for _ in range(a.batch)])
        if a.crop < a.size:
            ox, oy = rng.integers(0, a.size - a.crop + 1, size=2)
            imgs = imgs[:, oy : oy + a.crop, ox : ox + a.crop]
        x = common.to_pixels(imgs)
        with torch.set_grad_enabled(not a.decoder_from):
            z = vae.encode(x).latent_dist.mode()
        enc_loss = torch.zeros(())
        if a.target == "pool4":  # encoder matches the target; the decoder draws from the target itself
            target = pool4_target(x)
            enc_loss = ((z - target) ** 2).mean() / target.var()
            z = target
        half = int(round(a.batch * a.noise_frac))
        noise = torch.randn_like(z[:half]) * a.latent_noise * z.detach().std()
        zin = torch.cat([z[:half] + noise, z[half:]])
        y = vae.decode(zin).sample
        rec = (y - x).abs().mean() + ((y - x) ** 2).mean()
        loss = rec + 1e-4 * (z**2).mean() + enc_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == a.steps - 1:
            print(f"vae step {step:5d} loss {loss.item():.4f} rec {rec.item():.4f} enc {enc_loss.item():.4f} ({timer():.0f}s)", flush=True)

    vae.eval()
    imgs, _ = shapes.dataset(256, a.size, a.seed + 2000)
    x = common.to_pixels(imgs)
    with torch.no_grad():
        zs = torch.cat([common.patchify(vae.encode(x[i : i + 64]).latent_dist.mode()) for i in range(0, 256, 64)])
        if not a.decoder_from:
            vae.bn.running_mean.copy_(zs.mean(dim=(0, 2, 3)))
            vae.bn.running_var.copy_(zs.var(dim=(0, 2, 3)))
            vae.bn.num_batches_tracked.fill_(1)
        y = vae.decode(common.unpatchify(zs)).sample
        err = ((y.clamp(-1, 1) - x) / 2).abs().mean().item() * 255
    print(f"vae: held-out mean abs error {err:.2f}/255; trained in {timer():.0f}s", flush=True)
    print(f"vae: classifier on held-out reconstructions (the DiT's ceiling): {reconstruction_adherence(vae, a.size, a.seed + 3000)}", flush=True)
    vae.save_pretrained(a.out)


if __name__ == "__main__":
    main()
