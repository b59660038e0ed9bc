//! Prompt tokenisation parity with the Python reference (diffusers 0.42.1 / transformers 5.23.0):
//! chat-template rendering, ids and attention masks of every case in
//! `fixtures/text/{mistral,qwen3}/tokens.json`, the batched `input_ids`/`attention_mask` of each
//! `io.safetensors` (prompts and lengths read from its `fixture` metadata), and the error messages.

use flux2_runtime::tokenizer::{
    ChatTemplate, Content, Family, Message, PromptEncoder, Side, TemplateValue, TokenizerError,
    SYSTEM_MESSAGE,
};
use flux2_runtime::Input;
use flux2_tests::{fixture, load_tensors};
use serde_json::Value;
use std::path::Path;

fn encoder(model: &str) -> PromptEncoder {
    match PromptEncoder::from_model_dir(&fixture(&format!("text/{model}")), None) {
        Ok(e) => e,
        Err(e) => panic!("loading text/{model}: {e}"),
    }
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default()
}

fn ids_of(map: &std::collections::HashMap<String, Input>, name: &str) -> (Vec<i64>, Vec<usize>) {
    match map.get(name) {
        Some(Input::I64(a)) => (a.iter().copied().collect(), a.shape().to_vec()),
        _ => panic!("fixture has no i64 tensor '{name}'"),
    }
}

/// Every tokens.json case: rendered text, ids, mask, and whether truncation happened.
fn check_token_cases(model: &str) {
    let enc = encoder(model);
    let path = fixture(&format!("text/{model}/tokens.json"));
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(cases.len() >= 8, "{}: expected the 8 documented cases", path.display());
    for case in &cases {
        let prompt = case["prompt"].as_str().unwrap();
        let max_len = case["max_length"].as_u64().unwrap() as usize;
        let rendered = enc.render(prompt).unwrap();
        assert_eq!(rendered, case["rendered_text"].as_str().unwrap(), "{model}: rendered text of {prompt:?}");
        let out = enc.encode(&[prompt], max_len).unwrap();
        assert_eq!((out.batch, out.len), (1, max_len));
        assert_eq!(out.input_ids, i64s(&case["input_ids"]), "{model}: input_ids of {prompt:?}");
        assert_eq!(
            out.attention_mask,
            i64s(&case["attention_mask"]),
            "{model}: attention_mask of {prompt:?}"
        );
        let truncated = case["truncated"].as_bool().unwrap();
        assert_eq!(out.truncated[0] > 0, truncated, "{model}: truncation of {prompt:?}");
    }
}

#[test]
fn mistral_token_cases_match_reference() {
    check_token_cases("mistral");
}

#[test]
fn qwen3_token_cases_match_reference() {
    check_token_cases("qwen3");
}

/// The batched call of io.safetensors (and the single-prompt `full_*` call at 512 when present).
fn check_io_batch(enc: &PromptEncoder, io_dir: &str) {
    let path = fixture(&format!("text/{io_dir}/io.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["fixture"]).unwrap();
    let prompts: Vec<&str> = meta["prompts"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let max_len = meta["max_sequence_length"].as_u64().unwrap() as usize;
    if let Some(system) = meta.get("system_message").and_then(Value::as_str) {
        assert_eq!(system, SYSTEM_MESSAGE);
    }
    let tensors = load_tensors(&path).unwrap();

    let out = enc.encode(&prompts, max_len).unwrap();
    let (ids, shape) = ids_of(&tensors, "input_ids");
    assert_eq!(shape, [out.batch, out.len]);
    assert_eq!(out.input_ids, ids, "{io_dir}: input_ids");
    assert_eq!(out.attention_mask, ids_of(&tensors, "attention_mask").0, "{io_dir}: attention_mask");
    assert_eq!(out.truncated, vec![0; prompts.len()]);

    if let Some(full_prompt) = meta.get("full_prompt").and_then(Value::as_str) {
        let full = enc.encode(&[full_prompt], flux2_runtime::tokenizer::DEFAULT_MAX_LENGTH).unwrap();
        let (ids, shape) = ids_of(&tensors, "full_input_ids");
        assert_eq!(shape, [1, 512]);
        assert_eq!(full.input_ids, ids, "{io_dir}: full_input_ids");
        assert_eq!(
            full.attention_mask,
            ids_of(&tensors, "full_attention_mask").0,
            "{io_dir}: full_attention_mask"
        );
    }
}

#[test]
fn io_batches_match_reference() {
    check_io_batch(&encoder("mistral"), "mistral");
    check_io_batch(&encoder("mistral_wide"), "mistral_wide");
    check_io_batch(&encoder("qwen3"), "qwen3");
    // Legacy llava-layout text encoder: same tokenizer, family from its config, same expected ids.
    check_io_batch(&encoder("mistral_legacy"), "mistral");
}

#[test]
fn detects_family_and_sides_from_files() {
    let m = encoder("mistral");
    assert_eq!(
        (m.family(), m.padding_side(), m.truncation_side()),
        (Family::Mistral3, Side::Left, Side::Right)
    );
    assert_eq!(m.pad_id(), 11);
    let q = encoder("qwen3");
    assert_eq!(
        (q.family(), q.padding_side(), q.truncation_side()),
        (Family::Qwen3, Side::Right, Side::Right)
    );
    // Pointed at the tokenizer folder itself: family from ../text_encoder/config.json.
    let direct = PromptEncoder::from_model_dir(&fixture("text/qwen3/tokenizer"), None).unwrap();
    assert_eq!(direct.family(), Family::Qwen3);
    assert_eq!(direct.encode(&["a cat"], 64).unwrap(), q.encode(&["a cat"], 64).unwrap());
}

/// A scratch copy of a fixture tokenizer folder (`<tmp>/tokenizer`), optionally with a text encoder
/// `config.json` (`<tmp>/text_encoder/config.json`).
fn scratch(model: &str, encoder_config: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer");
    std::fs::create_dir(&tok).unwrap();
    for entry in std::fs::read_dir(fixture(&format!("text/{model}/tokenizer"))).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tok.join(entry.file_name())).unwrap();
    }
    if let Some(config) = encoder_config {
        std::fs::create_dir(dir.path().join("text_encoder")).unwrap();
        std::fs::write(dir.path().join("text_encoder/config.json"), config).unwrap();
    }
    dir
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn sides_follow_tokenizer_config() {
    let reference = encoder("qwen3");
    let prompt = "a red cat sitting on a mat";
    let right = reference.encode(&[prompt], 64).unwrap();
    let real = right.attention_mask.iter().filter(|&&m| m == 1).count();
    assert!(real < 64);

    let dir = scratch("qwen3", None);
    edit_json(&dir.path().join("tokenizer/tokenizer_config.json"), |c| {
        c.insert("padding_side".into(), "left".into());
        c.insert("truncation_side".into(), "left".into());
    });
    let enc = PromptEncoder::from_model_dir(dir.path(), Some(Family::Qwen3)).unwrap();
    let left = enc.encode(&[prompt], 64).unwrap();
    // Same real tokens, padding moved to the front.
    assert_eq!(left.input_ids[64 - real..], right.input_ids[..real]);
    assert!(left.input_ids[..64 - real].iter().all(|&id| id == i64::from(reference.pad_id())));
    assert_eq!(left.attention_mask[..64 - real], vec![0; 64 - real][..]);
    // Left truncation keeps the tail of the untruncated sequence.
    let cut = enc.encode(&[prompt], 8).unwrap();
    assert_eq!(cut.truncated, vec![real - 8]);
    assert_eq!(cut.input_ids[..], right.input_ids[real - 8..real]);
    assert_eq!(cut.attention_mask, vec![1; 8]);
}

#[test]
fn overlong_prompt_keeps_head_and_counts_dropped_tokens() {
    let enc = encoder("qwen3");
    let prompt = "a red cat sitting on a mat";
    let full = enc.encode(&[prompt], 64).unwrap();
    let real = full.attention_mask.iter().filter(|&&m| m == 1).count();
    let cut = enc.encode(&[prompt, ""], 10).unwrap();
    assert_eq!(cut.truncated[0], real - 10);
    assert_eq!(cut.input_ids[..10], full.input_ids[..10]);
    assert_eq!(cut.attention_mask[..10], vec![1; 10][..]);
    assert_eq!(cut.input_ids.len(), 20);
}

fn err_of(r: Result<PromptEncoder, TokenizerError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tokenizer_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let msg = err_of(PromptEncoder::from_model_dir(dir.path(), Some(Family::Qwen3)));
    assert!(
        msg.contains(&dir.path().join("tokenizer").join("tokenizer.json").display().to_string()),
        "{msg}"
    );
    let msg = err_of(PromptEncoder::from_tokenizer_dir(dir.path(), Family::Qwen3));
    assert!(msg.contains(&dir.path().join("tokenizer.json").display().to_string()), "{msg}");
}

#[test]
fn missing_template_and_bad_json_name_the_file() {
    let dir = scratch("qwen3", None);
    let tok = dir.path().join("tokenizer");
    std::fs::remove_file(tok.join("chat_template.jinja")).unwrap();
    let msg = err_of(PromptEncoder::from_model_dir(dir.path(), Some(Family::Qwen3)));
    assert!(msg.contains("chat template") && msg.contains(&tok.display().to_string()), "{msg}");

    std::fs::write(tok.join("tokenizer_config.json"), "{ not json").unwrap();
    let msg = err_of(PromptEncoder::from_model_dir(dir.path(), Some(Family::Qwen3)));
    assert!(msg.contains(&tok.join("tokenizer_config.json").display().to_string()), "{msg}");

    std::fs::write(tok.join("tokenizer.json"), "[]").unwrap();
    let msg = err_of(PromptEncoder::from_model_dir(dir.path(), Some(Family::Qwen3)));
    assert!(msg.contains(&tok.join("tokenizer.json").display().to_string()), "{msg}");
}

#[test]
fn template_from_tokenizer_config_is_used() {
    let dir = scratch("qwen3", None);
    let tok = dir.path().join("tokenizer");
    let source = std::fs::read_to_string(tok.join("chat_template.jinja")).unwrap();
    std::fs::remove_file(tok.join("chat_template.jinja")).unwrap();
    edit_json(&tok.join("tokenizer_config.json"), |c| {
        c.insert("chat_template".into(), Value::String(source));
    });
    let enc = PromptEncoder::from_model_dir(dir.path(), Some(Family::Qwen3)).unwrap();
    assert_eq!(enc.render("x").unwrap(), encoder("qwen3").render("x").unwrap());
}

#[test]
fn unknown_architecture_is_named() {
    let dir = scratch("qwen3", Some(r#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}"#));
    let msg = err_of(PromptEncoder::from_model_dir(dir.path(), None));
    assert!(msg.contains("'llama'") && msg.contains("model_type"), "{msg}");
    assert!(msg.contains(&dir.path().join("text_encoder/config.json").display().to_string()), "{msg}");

    let dir = scratch("qwen3", Some(r#"{"architectures": ["T5EncoderModel"]}"#));
    let msg = err_of(PromptEncoder::from_model_dir(dir.path(), None));
    assert!(msg.contains("T5EncoderModel"), "{msg}");

    // No text encoder config at all: ask for the family.
    let dir = scratch("qwen3", None);
    let msg = err_of(PromptEncoder::from_model_dir(dir.path(), None));
    assert!(msg.contains("family") && msg.contains("text_encoder"), "{msg}");
    assert!("t5".parse::<Family>().unwrap_err().to_string().contains("'t5'"));
    assert_eq!("klein".parse::<Family>().unwrap(), Family::Qwen3);
}

#[test]
fn missing_pad_token_is_an_error() {
    let dir = scratch("qwen3", None);
    edit_json(&dir.path().join("tokenizer/tokenizer_config.json"), |c| {
        c.remove("pad_token");
    });
    let msg = err_of(PromptEncoder::from_model_dir(dir.path(), Some(Family::Qwen3)));
    assert!(msg.contains("pad_token") && msg.contains("tokenizer_config.json"), "{msg}");
}

#[test]
fn zero_max_length_is_rejected() {
    let err = encoder("qwen3").encode(&["x"], 0).unwrap_err().to_string();
    assert!(err.contains("max sequence length"), "{err}");
}

/// The template features real HF chat templates use (namespace, reversed slices, loop controls,
/// Python string/dict methods, `tojson` options, `format`, filters, `strftime_now`,
/// `raise_exception`), rendered against transformers 5.23.0 `render_jinja_template` (expected text
/// printed by the reference with `bos_token="<s>"`, `enable_thinking=False`, `xtools=TOOLS`).
const FEATURE_TEMPLATE: &str = r#"{%- set today = strftime_now("%Y-%m-%d") %}
{{- bos_token }}
{%- set ns = namespace(count=0, last=-1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if message.role == "user" and ns.last < 0 %}{% set ns.last = index %}{% endif %}
{%- endfor %}
{%- if xtools %}
[TOOLS]{{ xtools | tojson }}[/TOOLS]
{{ xtools | tojson(indent=2) }}
{{ xtools[0] | tojson(sort_keys=true, ensure_ascii=true) }}
{% for k, v in xtools[0].items() %}{{ k }}={{ v | tojson }};{% endfor %}

{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'skip' %}{% continue %}{% endif %}
    {%- if message.role == 'stop' %}{% break %}{% endif %}
    {%- set ns.count = ns.count + 1 %}
    {%- if message['content'] is string %}
        {%- set content = message['content'] %}
    {%- else %}
        {%- set content = message['content'][0]['text'] %}
    {%- endif %}
    {%- if '</think>' in content %}
        {%- set content = content.split('</think>')[-1].lstrip('\n') %}
    {%- endif %}
<|{{ message.role | upper }}|> {{ content.strip() }}{% if loop.last %} [last {{ ns.last }}]{% endif %}
    {%- if message.role not in ['user', 'assistant', 'system', 'skip', 'stop'] %}
        {{- raise_exception('bad role ' + message.role) }}
    {%- endif %}
{% endfor %}
{%- if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}{% endif %}
count={{ ns.count }} {{ today|length }} {{ "%s-%d"|format("a", 3) }} {{ messages|map(attribute='role')|join(',') }} {{ (messages|selectattr('role','equalto','user')|list)|length }}
"#;
const FEATURE_TOOLS: &str = r#"[{"name": "get_weather", "description": "Gets \"weather\" — now\n東京", "parameters": {"type": "object", "properties": {"x": {"type": "number", "default": 1.5, "min": 1e-05, "n": 3, "flag": true, "none": null, "list": [1, 2.0, "z"], "empty": {}, "el": []}}}}]"#;
const FEATURE_EXPECTED_JSON: &str = r#""<s>[TOOLS][{\"description\": \"Gets \\\"weather\\\" — now\\n東京\", \"name\": \"get_weather\", \"parameters\": {\"properties\": {\"x\": {\"default\": 1.5, \"el\": [], \"empty\": {}, \"flag\": true, \"list\": [1, 2.0, \"z\"], \"min\": 1e-05, \"n\": 3, \"none\": null, \"type\": \"number\"}}, \"type\": \"object\"}}][/TOOLS]\n[\n  {\n    \"description\": \"Gets \\\"weather\\\" — now\\n東京\",\n    \"name\": \"get_weather\",\n    \"parameters\": {\n      \"properties\": {\n        \"x\": {\n          \"default\": 1.5,\n          \"el\": [],\n          \"empty\": {},\n          \"flag\": true,\n          \"list\": [\n            1,\n            2.0,\n            \"z\"\n          ],\n          \"min\": 1e-05,\n          \"n\": 3,\n          \"none\": null,\n          \"type\": \"number\"\n        }\n      },\n      \"type\": \"object\"\n    }\n  }\n]\n{\"description\": \"Gets \\\"weather\\\" \\u2014 now\\n\\u6771\\u4eac\", \"name\": \"get_weather\", \"parameters\": {\"properties\": {\"x\": {\"default\": 1.5, \"el\": [], \"empty\": {}, \"flag\": true, \"list\": [1, 2.0, \"z\"], \"min\": 1e-05, \"n\": 3, \"none\": null, \"type\": \"number\"}}, \"type\": \"object\"}}\ndescription=\"Gets \\\"weather\\\" — now\\n東京\";name=\"get_weather\";parameters={\"properties\": {\"x\": {\"default\": 1.5, \"el\": [], \"empty\": {}, \"flag\": true, \"list\": [1, 2.0, \"z\"], \"min\": 1e-05, \"n\": 3, \"none\": null, \"type\": \"number\"}}, \"type\": \"object\"};<|SYSTEM|> sys<|USER|> hi<|ASSISTANT|> answer<|USER|> again<|assistant|><think></think>count=4 10 a-3 system,user,skip,assistant,user,stop,user 3""#;

#[test]
fn template_environment_matches_transformers() {
    let template = ChatTemplate::from_source(
        FEATURE_TEMPLATE.into(),
        "feature.jinja".into(),
        vec![("bos_token", "<s>".into())],
    )
    .unwrap();
    let text = |role: &str, c: &str| Message { role: role.into(), content: Content::Text(c.into()) };
    let messages = [
        Message { role: "system".into(), content: Content::TextBlocks(vec!["  sys  ".into()]) },
        text("user", "hi"),
        text("skip", "x"),
        text("assistant", "<think>r</think>\n\nanswer"),
        text("user", "again"),
        text("stop", "y"),
        text("user", "never"),
    ];
    let tools: Value = serde_json::from_str(FEATURE_TOOLS).unwrap();
    let extra =
        [("enable_thinking", TemplateValue::from(false)), ("xtools", TemplateValue::from_serialize(&tools))];
    let rendered = template.render(&messages, true, &extra).unwrap();
    let expected: String = serde_json::from_str(FEATURE_EXPECTED_JSON).unwrap();
    assert_eq!(rendered, expected);

    let err = template.render(&[text("robot", "x")], false, &[]).unwrap_err().to_string();
    assert!(err.contains("bad role robot") && err.contains("feature.jinja"), "{err}");
}
