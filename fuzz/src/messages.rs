//! `messages`: [`egret::genai::messages::assemble`] over arbitrary request
//! and response bodies, for every API.
//!
//! Layout: `[api][flags][request length: u16 LE][request…][response…]`;
//! flags bit 0: the bodies were cut; bit 1: the response is binary (it is
//! base64-encoded here, as the record holds it, so the fuzzer drives the
//! AWS event-stream bytes Bedrock's stream APIs are read from).
//!
//! Invariants:
//! - never panics, whatever the bytes;
//! - every attribute it yields is valid JSON of the documented shape: an
//!   array (an object for the parameters), every message with a `role` and
//!   `parts`, an output message's `finish_reason` (when there is one) a
//!   string, every part with a `type`;
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
    "bedrock.converse_stream",
    "bedrock.invoke_model",
    "bedrock.invoke_model_stream",
    "openai.embeddings",
    "mcp",
];

pub fn messages(data: &[u8]) {
    let mut r = Reader::new(data);
    let api = Api::from_name(APIS[usize::from(r.byte()) % APIS.len()]).expect("a known API");
    let flags = r.byte();
    let truncated = flags & 1 == 1;
    let binary = flags & 2 == 2;
    let len = usize::from(u16::from_le_bytes([r.byte(), r.byte()]));
    let rest = r.rest();
    let (req, resp) = rest.split_at(len.min(rest.len()));
    let req = String::from_utf8_lossy(req);
    let resp = if binary {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(resp)
    } else {
        String::from_utf8_lossy(resp).into_owned()
    };
    let Some(c) = assemble(
        api,
        Bodies {
            request: Some(&req),
            response: Some(&resp),
            response_base64: binary,
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
                assert!(
                    m.get("finish_reason").is_none_or(Value::is_string),
                    "{m}"
                );
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
