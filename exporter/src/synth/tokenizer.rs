//! A small Qwen3-style tokenizer folder for the built-in checkpoint: `tokenizer.json`
//! (byte-level BPE in the Qwen2 pipeline: NFC, the Qwen pre-tokenizer regex, ByteLevel),
//! `tokenizer_config.json` (pad `<|endoftext|>`, right padding and truncation, as Qwen3-4B) and
//! the verbatim Qwen3 `chat_template.jinja` (`add_generation_prompt`, `enable_thinking`).
//!
//! The vocabulary is the 256 byte tokens (GPT-2 byte-to-unicode alphabet), then `merges` BPE
//! merges learned here from a fixed corpus, then `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`
//! (special) and the added tokens `<think>`, `</think>` (not special), in Qwen3's order. Any
//! text encodes (every byte has a token); the merges only make common words shorter. The
//! training is deterministic (ties go to the smallest pair), so the files are byte-identical
//! on every run. Format: Hugging Face `tokenizers` 0.22 JSON.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// The Qwen2/Qwen3 pre-tokenizer regex (`tokenizer.json` of Qwen/Qwen3-4B).
pub const QWEN_PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen3 chat template (Qwen3-4B `tokenizer_config.json`), verbatim.
pub const QWEN3_CHAT_TEMPLATE: &str = include_str!("qwen3_chat_template.jinja");

/// Special tokens appended to the BPE vocabulary, then the non-special added tokens.
const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const ADDED: [&str; 2] = ["<think>", "</think>"];

/// Text the merges are learned from: chat scaffolding and typical prompts.
const CORPUS: &[&str] = &[
    "<|im_start|>user\n",
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "a photo of a red fox sitting in the snow, soft morning light",
    "a watercolor painting of a small wooden boat on a calm lake at sunrise",
    "an astronaut riding a horse on the moon, digital art, highly detailed",
    "a cat and a dog sitting on a wooden table in the garden",
    "a portrait of an old man with a beard, dramatic lighting, studio photo",
    "a city street at night with neon signs and rain, cinematic",
    "mountains and pine trees in the background, blue sky with clouds",
    "The quick brown fox jumps over the lazy dog.",
];

/// The three files of a tokenizer folder.
pub struct TokenizerFiles {
    pub tokenizer_json: String,
    pub tokenizer_config_json: String,
    pub chat_template: String,
}

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 on.
pub fn byte_to_unicode() -> [char; 256] {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('?');
    }
    table
}

/// Splits text roughly as the Qwen regex does (letters with one leading non-letter, single
/// digits, punctuation runs with an optional leading space, whitespace runs); only used to
/// count pairs for training, the real split happens in the tokenizer.
fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let class = |c: char| {
        if c.is_alphabetic() {
            0
        } else if c.is_numeric() {
            1
        } else if c.is_whitespace() {
            2
        } else {
            3
        }
    };
    for c in text.chars() {
        let joins = match cur.chars().last() {
            None => true,
            Some(p) => {
                let (pc, cc) = (class(p), class(c));
                (pc == cc && cc != 1) || (p == ' ' && cur.chars().count() == 1 && cc != 2)
            }
        };
        if !joins {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Learns `n` BPE merges on [`CORPUS`]: repeatedly merge the most frequent adjacent pair
/// (ties: the lexicographically smallest pair). Returns the merges in order.
fn train(n: usize) -> Vec<(String, String)> {
    let table = byte_to_unicode();
    let mut freq: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for text in CORPUS {
        // special tokens are never split, so they never contribute merges
        let mut plain = text.to_string();
        for s in SPECIAL.iter().chain(&ADDED) {
            plain = plain.replace(s, " ");
        }
        for w in words(&plain) {
            let symbols = w.bytes().map(|b| table[b as usize].to_string()).collect();
            *freq.entry(symbols).or_default() += 1;
        }
    }
    let mut merges = Vec::with_capacity(n);
    while merges.len() < n {
        let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (w, f) in &freq {
            for p in w.windows(2) {
                *pairs.entry((p[0].as_str(), p[1].as_str())).or_default() += f;
            }
        }
        // the most frequent pair; ties go to the smallest pair
        let best = pairs.iter().max_by(|x, y| x.1.cmp(y.1).then_with(|| y.0.cmp(x.0)));
        let Some((&(a, b), _)) = best else { break };
        let (a, b) = (a.to_string(), b.to_string());
        let merged = format!("{a}{b}");
        freq = freq.into_iter().fold(BTreeMap::new(), |mut acc, (w, f)| {
            let mut out: Vec<String> = Vec::with_capacity(w.len());
            let mut i = 0;
            while i < w.len() {
                if i + 1 < w.len() && w[i] == a && w[i + 1] == b {
                    out.push(merged.clone());
                    i += 2;
                } else {
                    out.push(w[i].clone());
                    i += 1;
                }
            }
            *acc.entry(out).or_default() += f;
            acc
        });
        merges.push((a, b));
    }
    merges
}

/// Number of token ids the tokenizer uses (vocabulary + added tokens); the text encoder's
/// `vocab_size` must be at least this.
pub fn token_count(merges: usize) -> usize {
    256 + train(merges).len() + SPECIAL.len() + ADDED.len()
}

/// Builds the tokenizer folder's files with `merges` learned merges.
pub fn qwen_like(merges: usize) -> TokenizerFiles {
    let table = byte_to_unicode();
    let mut chars: Vec<char> = table.to_vec();
    chars.sort_unstable();
    let mut vocab = serde_json::Map::new();
    for c in chars {
        let id = vocab.len();
        vocab.insert(c.to_string(), id.into());
    }
    let learned = train(merges);
    for (a, b) in &learned {
        let id = vocab.len();
        vocab.entry(format!("{a}{b}")).or_insert(id.into());
    }
    let mut added = Vec::new();
    // <|endoftext|>, <|im_start|>, <|im_end|> end the BPE vocabulary; <think> and </think>
    // exist only as added tokens, with the ids after it.
    for (i, t) in SPECIAL.iter().chain(&ADDED).enumerate() {
        let special = i < SPECIAL.len();
        let id = if special {
            let id = vocab.len();
            vocab.insert(t.to_string(), id.into());
            id
        } else {
            vocab.len() + (i - SPECIAL.len())
        };
        added.push(json!({
            "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }
    let merges: Vec<Value> = learned.iter().map(|(a, b)| json!([a, b])).collect();
    let byte_level = |prefix: bool, trim: bool| json!({"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": trim, "use_regex": false});
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level(false, false),
        ]},
        "post_processor": byte_level(false, false),
        "decoder": byte_level(false, false),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let config = json!({
        "add_prefix_space": false,
        "backend": "tokenizers",
        "bos_token": null,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "tokenizer_class": "Qwen2Tokenizer",
        "truncation_side": "right",
        "unk_token": null,
    });
    TokenizerFiles {
        tokenizer_json: pretty(&tokenizer),
        tokenizer_config_json: pretty(&config),
        chat_template: QWEN3_CHAT_TEMPLATE.to_string(),
    }
}

pub(crate) fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = byte_to_unicode();
        let mut c: Vec<char> = t.to_vec();
        c.sort_unstable();
        c.dedup();
        assert_eq!(c.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn training_is_deterministic_and_merges_chain() {
        let m = train(64);
        assert_eq!(m.len(), 64);
        assert_eq!(m, train(64));
        // every merge's parts exist before it: bytes or earlier merges
        let mut known: Vec<String> = byte_to_unicode().iter().map(|c| c.to_string()).collect();
        for (a, b) in &m {
            assert!(known.contains(a) && known.contains(b), "merge ({a}, {b}) uses an unknown token");
            known.push(format!("{a}{b}"));
        }
    }
}
