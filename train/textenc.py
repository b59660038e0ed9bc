"""The text side, as FLUX.2 [klein] uses it: a Qwen3-style byte-level BPE tokenizer with the
Qwen3 chat template (`enable_thinking=False`), and a small `Qwen3ForCausalLM` whose hidden states
9, 18 and 27 (klein's layers) are stacked into the DiT context.

The tokenizer is trained here (Hugging Face `tokenizers`, exact Qwen2 pipeline: NFC, the Qwen
pre-tokenizer regex, ByteLevel) on the chat scaffolding and every caption of the vocabulary, so
each vocabulary word is one token and a caption always puts its colour, shape and background
words at the same positions.

The text encoder is **frozen at random weights** (seeded, transformers' init, token embeddings
drawn with std 0.1) with every `q_norm` weight set to 0. Why that is enough here: the prompts come
from a closed vocabulary of ~20 words; the stacked hidden states are a fixed function of the token
sequence that keeps each token's identity (its own embedding row and MLP path) and its role (the
causal prefix it sees, through attention), which is all the DiT needs to learn to read. Training
the encoder too would spend CPU time without adding information the DiT can use.

Why q = 0: attention then weighs every visible key equally (a causal prefix mean). With klein's
right padding, pad queries see exactly the real tokens, so **every pad position gets the same
hidden states**. Together with the DiT's position-free text attention (train_dit.py), that lets
training replace the ~490 identical pad tokens by one token of multiplicity n (log n added to
its attention logit) exactly, 14x less compute, while the shipped model still runs the standard
512-token klein pipeline. Layers 9/18/27 of a 28-layer model keep klein's choice (the final norm
is not part of any output), so the checkpoint exports with flux2's klein defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

import shapes

QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEXT_LAYERS = [9, 18, 27]
MAX_LENGTH = 512  # the klein pipeline's max_sequence_length default, also flux2's
TEXT_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=28,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=192,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
    attention_bias=False,
)
CHAT_TEMPLATE = (Path(__file__).resolve().parents[1] / "exporter/src/synth/qwen3_chat_template.jinja").read_text()


def corpus() -> list[str]:
    scaffold = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    texts = [shapes.caption(c, s, b) for c, s, b in shapes.all_captions()]
    return texts + [scaffold.format(t) for t in texts[:8]]


def build_tokenizer(out: Path):
    """Trains the BPE (deterministic) and saves a `Qwen2Tokenizer` folder; returns it reloaded."""
    tr = Tokenizer(models.BPE(unk_token=None))
    tr.normalizer = normalizers.NFC()
    tr.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    tr.train_from_iterator(corpus(), trainer=trainer)
    trained = json.loads(tr.to_str())["model"]
    vocab = dict(sorted(trained["vocab"].items(), key=lambda kv: kv[1]))
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[t] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = transformers.Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="right",
        truncation_side="right",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
        errors="replace",
    )
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")],
        special_tokens=True,
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for word in [*shapes.PALETTE, *shapes.SHAPES, "background"]:
        ids = tok(" " + word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"vocabulary word '{word}' is {len(ids)} tokens, expected 1")
    return tok


def build_text_encoder(vocab_size: int, seed: int) -> transformers.Qwen3ForCausalLM:
    cfg = transformers.Qwen3Config(vocab_size=vocab_size, **TEXT_CONFIG)
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        emb = model.model.embed_tokens.weight
        emb.copy_(0.1 * torch.randn(emb.shape, generator=g))
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.zero_()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def encode(model, tok, prompts: list[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Context [B, L, 3*hidden] exactly as diffusers' Flux2KleinPipeline computes it."""
    from diffusers import Flux2KleinPipeline

    out = []
    for i in range(0, len(prompts), 16):
        out.append(
            Flux2KleinPipeline._get_qwen3_prompt_embeds(
                text_encoder=model,
                tokenizer=tok,
                prompt=prompts[i : i + 16],
                dtype=torch.float32,
                device=torch.device("cpu"),
                max_sequence_length=max_length,
                hidden_states_layers=TEXT_LAYERS,
            )
        )
    return torch.cat(out)
