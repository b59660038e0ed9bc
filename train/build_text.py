#!/usr/bin/env python3
"""Builds the tokenizer and the frozen random Qwen3 text encoder (see textenc.py) into DIR.

    python train/build_text.py --out train/cache/text --seed 0 [--routed]

--routed: attention routed by token kind (textenc.route_attention), so only the three content
words differ between captions and the DiT trains on 4 text tokens instead of 22.
"""

import argparse
from pathlib import Path

import torch

import common
import textenc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--routed", action="store_true", help="fillers see fillers, content words see content words (see textenc.route_attention)")
    a = ap.parse_args()
    common.setup_threads()
    tok = textenc.build_tokenizer(a.out / "tokenizer")
    enc = textenc.build_text_encoder(len(tok), a.seed, textenc.content_token_ids(tok) if a.routed else None)
    enc.save_pretrained(a.out / "text_encoder")
    feats = (a.out / "features.pt")
    if feats.exists():
        feats.unlink()
    print(f"tokenizer: {len(tok)} tokens; text encoder: {sum(p.numel() for p in enc.parameters())/1e6:.2f}M parameters")
    text = tok.apply_chat_template([{"role": "user", "content": "a red circle on a blue background"}], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    print(repr(text), tok(text)["input_ids"])


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
