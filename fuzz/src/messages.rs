//! `messages`: [`egret::genai::messages::assemble`] over arbitrary request
//! and response bodies, for every API.
//!
//! Layout: `[api][truncated][request length: u16 LE][request…][response…]`.
//!
//! Invariants:
//! - never panics, whatever the bytes;
//! - every attribute it yields is valid JSON of the documented shape: an
//!   array (an object for the parameters), every message with a `role` and
//!   `parts`, every output message with a `finish_reason`, every part with
//!   a `type`;
//! - a cut body is never reported complete.
use egret::genai::{
    messages::{assemble, Bodies},
    Api,
};
use serde_json::Value;

use crate::input::Reader;

const APIS: &[&str] = &[
    "openai.chat_completions",
    "openai.completions",
    "openai.responses",
    "anthropic.messages",
    "gemini.generate_content",
    "gemini.stream_generate_content",
    "ollama.chat",
    "ollama.generate",
    "bedrock.converse",
    "openai.embeddings",
    "mcp",
];

pub fn messages(data: &[u8]) {
    let mut r = Reader::new(data);
    let api = Api::from_name(APIS[usize::from(r.byte()) % APIS.len()]).expect("a known API");
    let truncated = r.byte() & 1 == 1;
    let len = usize::from(u16::from_le_bytes([r.byte(), r.byte()]));
    let rest = r.rest();
    let (req, resp) = rest.split_at(len.min(rest.len()));
    let req = String::from_utf8_lossy(req);
    let resp = String::from_utf8_lossy(resp);
    let Some(c) = assemble(
        api,
        Bodies {
            request: Some(&req),
            response: Some(&resp),
            truncated,
        },
    ) else {
        return;
    };
    assert!(!(truncated && c.complete), "a cut body reported complete");
    let parse = |j: Option<String>| j.map(|j| serde_json::from_str::<Value>(&j).expect("JSON"));
    let parts_ok = |parts: &Value| {
        parts
            .as_array()
            .expect("parts array")
            .iter()
            .all(|p| p["type"].is_string())
    };
    for (msgs, output) in [
        (parse(c.input_json()), false),
        (parse(c.output_json()), true),
    ] {
        for m in msgs
            .iter()
            .flat_map(|m| m.as_array().expect("array").iter())
        {
            assert!(m["role"].is_string(), "{m}");
            assert!(parts_ok(&m["parts"]), "{m}");
            if output {
                assert!(m["finish_reason"].is_string(), "{m}");
            }
        }
    }
    if let Some(s) = parse(c.system_json()) {
        assert!(parts_ok(&s), "{s}");
    }
    if let Some(t) = parse(c.tools_json()) {
        assert!(t
            .as_array()
            .expect("array")
            .iter()
            .all(|t| t["name"].is_string()));
    }
    if let Some(p) = parse(c.parameters_json()) {
        assert!(p.is_object(), "{p}");
    }
}
