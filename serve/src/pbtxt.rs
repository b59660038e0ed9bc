//! A small writer of protobuf text format for Triton's `config.pbtxt` (`ModelConfig` in
//! model_config.proto): nested messages, repeated fields and quoted strings, nothing else.

use std::fmt::Write as _;

/// A field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A quoted string.
    Str(String),
    /// An enum name or a number, written as is.
    Bare(String),
    /// Repeated scalars `[a, b]`.
    List(Vec<Value>),
    /// A nested message `{ ... }`.
    Msg(Message),
}

/// A message: fields in order; a repeated message field is the same name several times.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub fields: Vec<(String, Value)>,
}

impl Message {
    pub fn new() -> Message {
        Message::default()
    }

    pub fn str(mut self, name: &str, v: impl Into<String>) -> Message {
        self.fields.push((name.into(), Value::Str(v.into())));
        self
    }

    pub fn bare(mut self, name: &str, v: impl ToString) -> Message {
        self.fields.push((name.into(), Value::Bare(v.to_string())));
        self
    }

    pub fn ints(mut self, name: &str, v: &[i64]) -> Message {
        self.fields.push((name.into(), Value::List(v.iter().map(|i| Value::Bare(i.to_string())).collect())));
        self
    }

    pub fn strs(mut self, name: &str, v: &[String]) -> Message {
        self.fields.push((name.into(), Value::List(v.iter().map(|s| Value::Str(s.clone())).collect())));
        self
    }

    pub fn msg(mut self, name: &str, m: Message) -> Message {
        self.fields.push((name.into(), Value::Msg(m)));
        self
    }

    /// A `parameters { key: K value { string_value: V } }` entry (a map<string, ModelParameter>).
    pub fn parameter(self, key: &str, value: &str) -> Message {
        self.msg(
            "parameters",
            Message::new().str("key", key).msg("value", Message::new().str("string_value", value)),
        )
    }

    /// The message as text format, fields one per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = "  ".repeat(depth);
        for (name, v) in &self.fields {
            match v {
                Value::Msg(m) => {
                    let _ = writeln!(out, "{pad}{name} {{");
                    m.write(out, depth + 1);
                    let _ = writeln!(out, "{pad}}}");
                }
                v => {
                    let _ = writeln!(out, "{pad}{name}: {}", scalar(v));
                }
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Str(s) => quote(s),
        Value::Bare(s) => s.clone(),
        Value::List(items) => format!("[{}]", items.iter().map(scalar).collect::<Vec<_>>().join(", ")),
        Value::Msg(m) => format!("{{ {} }}", m.render().replace('\n', " ")),
    }
}

/// A text-format string literal: backslash, quotes and control bytes escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            other => {
                let _ = write!(out, "\\{other:03o}");
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_and_repeated_fields() {
        let m = Message::new()
            .str("name", "flux2")
            .bare("max_batch_size", 0)
            .msg(
                "input",
                Message::new().str("name", "a").bare("data_type", "TYPE_FP32").ints("dims", &[-1, 3]),
            )
            .msg("input", Message::new().str("name", "b"))
            .parameter("model_dir", "../x");
        let text = m.render();
        assert!(text.contains("name: \"flux2\"\nmax_batch_size: 0\ninput {\n  name: \"a\""), "{text}");
        assert!(text.contains("  dims: [-1, 3]\n"), "{text}");
        assert_eq!(text.matches("input {").count(), 2);
        assert!(text
            .contains("parameters {\n  key: \"model_dir\"\n  value {\n    string_value: \"../x\"\n  }\n}"));
    }

    #[test]
    fn quotes_escape_everything_that_could_break_the_file() {
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(quote("é"), "\"\\303\\251\"");
    }
}
