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
