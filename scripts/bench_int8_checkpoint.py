#!/usr/bin/env python3
"""A random medium-size FLUX.2 [klein]-style DiT checkpoint for the INT8 benchmark.

    .venv-ref/bin/python scripts/bench_int8_checkpoint.py --out target/bench-int8/ckpt

Builds `diffusers.Flux2Transformer2DModel` (diffusers 0.42.1) with a medium config (default:
4 heads x 128 = hidden 512, 2 double + 4 single blocks, context width 1536, no guidance
embedding), fills every matrix with N(0, 1/fan_in) and every norm scale with 1 + 0.1 N(0, 1)
from a seeded generator, and saves it in the diffusers layout (`transformer/` + a
`model_index.json` of a distilled `Flux2KleinPipeline`). Nothing is committed; the benchmark
script exports and calibrates it. Random weights have no activation outliers, so the INT8
error measured on them is a lower bound for a trained model; the speed is what matters here.
"""

import argparse
import json
import math
from pathlib import Path

import torch
from diffusers import Flux2Transformer2DModel


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--context", type=int, default=1536)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.head_dim % 4 or (a.head_dim // 4) % 2:
        raise SystemExit("--head-dim must split into 4 even RoPE axes")
    axis = a.head_dim // 4
    config = dict(
        patch_size=1,
        in_channels=128,
        out_channels=None,
        num_layers=a.double,
        num_single_layers=a.single,
        attention_head_dim=a.head_dim,
        num_attention_heads=a.heads,
        joint_attention_dim=a.context,
        timestep_guidance_channels=256,
        mlp_ratio=3.0,
        axes_dims_rope=(axis, axis, axis, axis),
        rope_theta=2000,
        eps=1e-6,
        guidance_embeds=False,
    )
    torch.manual_seed(a.seed)
    model = Flux2Transformer2DModel(**config).eval()
    g = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    a.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(a.out / "transformer", safe_serialization=True)
    index = {
        "_class_name": "Flux2KleinPipeline",
        "_diffusers_version": "0.42.1",
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "is_distilled": True,
    }
    (a.out / "model_index.json").write_text(json.dumps(index, indent=2))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.out} ({n / 1e6:.1f} M parameters, hidden {a.heads * a.head_dim})")


if __name__ == "__main__":
    main()
