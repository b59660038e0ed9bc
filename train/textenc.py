"""The text side, as FLUX.2 [klein] uses it: a Qwen3-style byte-level BPE tokenizer with the
Qwen3 chat template (`enable_thinking=False`), and a small `Qwen3ForCausalLM` whose hidden states
9, 18 and 27 (klein's layers) are stacked into the DiT context.

The tokenizer is trained here (Hugging Face `tokenizers`, exact Qwen2 pipeline: NFC, the Qwen
pre-tokenizer regex, ByteLevel) on the chat scaffolding and every caption of the vocabulary, so
each vocabulary word is one token and a caption always puts its colour, shape and background
words at the same positions.

The text encoder is **frozen at random weights** (seeded, transformers' init, token embeddings
drawn with std 0.1). Why that is enough here: the prompts come from a closed vocabulary of ~20
words; the stacked hidden states are a fixed function of the token sequence that keeps each
token's identity (its own embedding row and MLP path) and its role (the causal prefix it sees,
through attention), which is all the DiT needs to learn to read. Training the encoder too would
spend CPU time without adding information the DiT can use.

Two attention set-ups, both exactly compressible for training (train_dit.compress; the DiT is
blind to text positions), while the shipped model runs the standard 512-token klein pipeline:

* q = 0 (`q_norm` weights 0; the previous model): attention weighs every visible key equally
  (a causal prefix mean). With klein's right padding, pad queries see exactly the real tokens,
  so every pad position gets the same hidden states and ~490 pads train as one token of
  multiplicity n (log n added to its logit): 21 real tokens + 1.
* routed (`route_attention`, the shipped model): every token except the colour and shape words
  is one shared *filler*, and attention lets fillers see only fillers and content words only
  content words. All 509 fillers then share one hidden state, and a caption trains as its 3
  content words + 1 filler: a DiT step on 20 tokens instead of 38 (0.17 s against 0.28 s).

Layers 9/18/27 of a 28-layer model keep klein's choice (the final norm is not part of any
output), so the checkpoint exports with flux2's klein defaults.
"""

from __future__ import annotations

import json
import math
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


def content_token_ids(tok) -> list[int]:
    """The tokens that carry a caption's content: every colour and shape word (with its space)."""
    return [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in [*shapes.PALETTE, *shapes.SHAPES]]


def build_text_encoder(vocab_size: int, seed: int, content_ids: list[int] | None = None) -> transformers.Qwen3ForCausalLM:
    """Frozen random encoder; q = 0 (prefix means) or, given `content_ids`, routed attention."""
    cfg = transformers.Qwen3Config(vocab_size=vocab_size, **TEXT_CONFIG)
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        emb = model.model.embed_tokens.weight
        emb.copy_(0.1 * torch.randn(emb.shape, generator=g))
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.zero_()
        if content_ids is not None:
            route_attention(model, content_ids)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


ROUTE_DIM = 0  # the residual-stream dimension holding the content (-1) / filler (+1) flag
ROUTE_LOGIT = 40.0  # |attention logit| between two tokens: + same kind, - different kind


@torch.no_grad()
def route_attention(model, content_ids: list[int]) -> None:
    """Every token that is not a colour or shape word (chat scaffolding, "a", "on",
    "background", the pad) becomes one and the same *filler* token, and every attention head
    lets fillers see only fillers and content words only content words (logits +-40 apart by
    kind, so the other kind's softmax weight is ~e^-80: exactly 0 in f32). Then every filler
    position has the same hidden states whatever the caption and wherever it sits, and a
    caption's context reduces to its three content words (the shape's colour; the shape, which
    also sees that colour; the background colour, which sees all three) plus one filler of
    multiplicity 509, which the DiT trains on as 4 text tokens instead of 22.

    How: residual dim ROUTE_DIM holds +1 (filler) / -1 (content) and no layer writes to it
    (o_proj and down_proj rows 0); in each head q and k read only that dim into head dim 7, the
    pair RoPE rotates slowest (5.6e-6 rad per position at theta 1e6, so the logit varies by
    < 2e-4 over 512 positions), and q_norm / k_norm weights are 0 except there."""
    emb = model.model.embed_tokens.weight
    content = torch.zeros(emb.shape[0], dtype=torch.bool)
    content[content_ids] = True
    filler = emb[~content][0].clone()
    emb[~content] = filler
    emb[:, ROUTE_DIM] = torch.where(content, -1.0, 1.0)
    cfg = model.config
    d = cfg.head_dim
    slow = d // 2 - 1  # rotate_half pairs (i, i + d/2) at frequency theta^(-2i/d)
    w = (ROUTE_LOGIT * math.sqrt(d)) ** 0.5 / math.sqrt(d)  # q_n = k_n = sqrt(d) * w on dim `slow`
    for layer in model.model.layers:
        at = layer.self_attn
        for proj, norm in ((at.q_proj, at.q_norm), (at.k_proj, at.k_norm)):
            proj.weight.zero_()
            proj.weight[slow::d, ROUTE_DIM] = 1.0
            norm.weight.zero_()
            norm.weight[slow] = w
        at.o_proj.weight[ROUTE_DIM].zero_()
        layer.mlp.down_proj.weight[ROUTE_DIM].zero_()


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
