"""Shared pieces of the flux2-shapes training: model configs, latent packing as the FLUX.2
pipeline does it (flux2-arch.md §4.4, §6.1), token ids, saving in the diffusers layout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

TRAIN_DIR = Path(__file__).resolve().parent
CACHE = TRAIN_DIR / "cache"

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    latent_channels=32,
    norm_num_groups=1,  # see train_vae.py: per-group normalisation of a two-colour image erases its colours
    act_fn="silu",
    mid_block_add_attention=True,
    batch_norm_eps=1e-4,
    batch_norm_momentum=0.1,
    patch_size=(2, 2),
)

DIT_CONFIG = dict(
    patch_size=1,
    in_channels=128,
    out_channels=None,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=64,
    num_attention_heads=2,
    joint_attention_dim=192,
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(16, 16, 16, 16),
    rope_theta=2000,
    eps=1e-6,
    guidance_embeds=False,
)


def setup_threads():
    """One intra-op thread by default: on the shared 2-core machine (load ~9) two OpenMP threads
    ran the VAE step 7x slower than one (they spin at barriers while descheduled). Set
    TRAIN_THREADS=2 on an idle machine."""
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "1")))


def to_pixels(imgs_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float (N,3,H,W) in [-1, 1] (flux2-arch.md §4.5)."""
    x = torch.from_numpy(imgs_uint8).permute(0, 3, 1, 2).float() / 255.0
    return 2 * x - 1


def patchify(z: torch.Tensor) -> torch.Tensor:
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    b, c, h, w = z.shape
    return z.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def bn_normalize(vae, z: torch.Tensor) -> torch.Tensor:
    m = vae.bn.running_mean.view(1, -1, 1, 1)
    s = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return (z - m) / s


def bn_denormalize(vae, z: torch.Tensor) -> torch.Tensor:
    m = vae.bn.running_mean.view(1, -1, 1, 1)
    s = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return z * s + m


def pack(z: torch.Tensor) -> torch.Tensor:
    """(B,128,h,w) -> (B, h*w, 128), row-major."""
    b, c, h, w = z.shape
    return z.permute(0, 2, 3, 1).reshape(b, h * w, c)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c = x.shape
    return x.view(b, h, w, c).permute(0, 3, 1, 2)


def img_ids(h: int, w: int) -> torch.Tensor:
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    z = torch.zeros(h * w, dtype=torch.long)
    return torch.stack([z, ii.reshape(-1), jj.reshape(-1), z], dim=1).float()


def txt_ids(n: int) -> torch.Tensor:
    z = torch.zeros(n, dtype=torch.long)
    return torch.stack([z, z, z, torch.arange(n)], dim=1).float()


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Pixels [-1,1] -> patchified, BN-normalised, packed tokens (N, S, 128)."""
    out = []
    for i in range(0, len(pixels), batch):
        z = vae.encode(pixels[i : i + batch]).latent_dist.mode()
        out.append(pack(bn_normalize(vae, patchify(z))))
    return torch.cat(out)


@torch.no_grad()
def decode_tokens(vae, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Packed normalised tokens -> uint8 images (B,H,W,3), diffusers postprocessing."""
    z = unpatchify(bn_denormalize(vae, unpack(tokens, h, w)))
    x = vae.decode(z).sample
    x = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


class Timer:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self) -> float:
        return time.time() - self.t0


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
