#!/usr/bin/env python3
"""Puts a decoder-fine-tuned VAE (train_vae.py --decoder-from) into a saved model folder, after
checking that its encoder and BN statistics are exactly the ones the DiT was trained on.

    python train/assemble.py --model train/runs/shipped/checkpoint --vae train/cache/vae-final
"""

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--vae", type=Path, required=True)
    a = ap.parse_args()
    name = "diffusion_pytorch_model.safetensors"
    old, new = load_file(a.model / "vae" / name), load_file(a.vae / name)
    if set(old) != set(new):
        raise SystemExit(f"{a.vae}: tensor names differ from {a.model / 'vae'}")
    fixed = [k for k in old if not k.startswith(("decoder.", "post_quant_conv."))]
    changed = [k for k in fixed if not (old[k] == new[k]).all()]
    if changed:
        raise SystemExit(f"{a.vae}: encoder/BN tensors differ from the DiT's VAE: {changed[:5]}")
    tmp = a.model / "vae.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for f in ("config.json", name):  # not the latent caches train_dit.py keeps beside the VAE
        shutil.copy2(a.vae / f, tmp / f)
    shutil.rmtree(a.model / "vae")
    tmp.rename(a.model / "vae")
    print(f"{a.model}/vae <- {a.vae} ({len(fixed)} encoder/BN tensors identical)")


if __name__ == "__main__":
    main()
