//! Token rule.

use serde_json::Value;

use crate::routing::{bad_request, Call, Reject};
use crate::shared::header_u64;
use crate::{DEFAULT_OUTPUT_WORDS, MAX_OUTPUT_WORDS};

pub(crate) fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Words of every string under `content`, `text` and `parts` keys.
pub(crate) fn text_words(v: &Value) -> u64 {
    match v {
        Value::String(s) => words(s),
        Value::Array(items) => items.iter().map(text_words).sum(),
        Value::Object(map) => ["content", "text", "parts"]
            .iter()
            .filter_map(|k| map.get(*k))
            .map(text_words)
            .sum(),
        _ => 0,
    }
}

const REPLY_WORDS: [&str; 16] = [
    "Hello",
    "from",
    "the",
    "egret",
    "mock",
    "provider:",
    "this",
    "reply",
    "is",
    "deterministic",
    "so",
    "tests",
    "can",
    "assert",
    "exact",
    "counts.",
];

/// The reply: `n` words, cycling through [`REPLY_WORDS`].
fn reply_words(n: u64) -> impl Iterator<Item = &'static str> {
    REPLY_WORDS.iter().copied().cycle().take(n as usize)
}

pub(crate) fn reply_text(n: u64) -> String {
    reply_words(n).collect::<Vec<_>>().join(" ")
}

/// The reply as deltas: one word each, later ones with a leading space.
pub(crate) fn reply_deltas(n: u64) -> Vec<String> {
    reply_words(n)
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// Output size: (tokens, cut short by the limit).
pub(crate) fn output_tokens(call: &Call, limit: Option<u64>) -> (u64, bool) {
    let wanted = header_u64(&call.headers, "x-mock-output-tokens")
        .unwrap_or(DEFAULT_OUTPUT_WORDS)
        .min(MAX_OUTPUT_WORDS);
    match limit {
        Some(l) if l < wanted => (l, true),
        _ => (wanted, false),
    }
}

pub(crate) fn u64_field(body: &Value, key: &str) -> Result<Option<u64>, Reject> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_request(format!("{key}: expected a non-negative integer"))),
    }
}

pub(crate) fn model_of(body: &Value) -> Result<String, Reject> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        _ => Err(bad_request("model: field required")),
    }
}

pub(crate) fn is_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// A tool call the stand-in makes, as the providers do when a request
/// offers tools and the conversation does not end in a tool's result: the
/// first offered tool, with arguments derived from the last user text.
pub(crate) struct ToolCall {
    pub(crate) name: String,
    /// The arguments as JSON text.
    pub(crate) arguments: String,
}

impl ToolCall {
    /// For a request with `tools` (OpenAI `{function: {name}}` or Anthropic
    /// `{name}`) whose last message is not a tool result (OpenAI role
    /// `tool`, Anthropic a `tool_result` block).
    pub(crate) fn wanted(body: &Value) -> Option<ToolCall> {
        let tool = body.get("tools")?.as_array()?.first()?;
        let name = tool
            .pointer("/function/name")
            .or_else(|| tool.get("name"))?
            .as_str()?
            .to_owned();
        if body.get("tool_choice").and_then(Value::as_str) == Some("none") {
            return None;
        }
        let last = body.get("messages")?.as_array()?.last()?;
        let answered = last.get("role").and_then(Value::as_str) == Some("tool")
            || last
                .get("content")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                });
        if answered {
            return None;
        }
        let text = match last.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        let query: Vec<&str> = text.split_whitespace().take(3).collect();
        let arguments = serde_json::json!({"query": query.join(" "), "limit": 3}).to_string();
        Some(ToolCall { name, arguments })
    }

    /// The arguments in the fragments a stream sends them in.
    pub(crate) fn fragments(&self) -> Vec<String> {
        let chars: Vec<char> = self.arguments.chars().collect();
        chars.chunks(7).map(|c| c.iter().collect()).collect()
    }
}
