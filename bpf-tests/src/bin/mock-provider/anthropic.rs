//! Anthropic Messages API.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::routing::{bad_request, Call, Reject};
use crate::shared::{json_response, State};
use crate::sse::{sse_event, sse_response};
use crate::tokens::{
    is_stream, model_of, output_tokens, reply_deltas, reply_text, text_words, u64_field, words,
    ToolCall,
};
use crate::RespBody;

/// (uncached input words, words in blocks marked with cache_control)
fn count_input(body: &Value) -> (u64, u64) {
    let mut plain = 0;
    let mut cached = 0;
    let mut blocks = |content: &Value| match content {
        Value::Array(items) => {
            for block in items {
                let w = text_words(block);
                if block.get("cache_control").is_some_and(|c| !c.is_null()) {
                    cached += w;
                } else {
                    plain += w;
                }
            }
        }
        other => plain += text_words(other),
    };
    if let Some(system) = body.get("system") {
        blocks(system);
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            if let Some(content) = m.get("content") {
                blocks(content);
            }
        }
    }
    (plain, cached)
}

pub fn messages(state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
    let model = model_of(&call.body)?;
    let reply = reply(state, call, &model)?;
    if !is_stream(&call.body) {
        return Ok(json_response(StatusCode::OK, &reply.message));
    }
    let events = reply
        .events
        .iter()
        .map(|e| sse_event(e["type"].as_str().unwrap_or("message"), e))
        .collect();
    Ok(sse_response(events, call.delay))
}

/// An answer that uses a tool: one `tool_use` block, `stop_reason:
/// tool_use`; streamed, the block starts with an empty `input` and the
/// arguments follow as `input_json_delta` fragments, as Anthropic sends
/// them.
fn tool_use(state: &State, tool: &ToolCall, id: &str, model: &str, input: u64) -> Reply {
    let tool_id = state.id("toolu_01");
    let output = words(&tool.arguments).max(1) + 4;
    let usage = json!({
        "input_tokens": input,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
        "service_tier": "standard",
    });
    let args: Value = serde_json::from_str(&tool.arguments).unwrap_or(Value::Null);
    let message = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "tool_use", "id": tool_id, "name": tool.name, "input": args}],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": usage,
    });
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": start_usage,
        }}),
        json!({"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": tool_id, "name": tool.name, "input": {},
        }}),
    ];
    for f in tool.fragments() {
        events.push(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": f}}));
    }
    events.push(json!({"type": "content_block_stop", "index": 0}));
    events.push(json!({
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": null},
        "usage": {"output_tokens": output},
    }));
    events.push(json!({"type": "message_stop"}));
    Reply {
        message,
        events,
        input,
        output,
    }
}

/// One answer to a Messages request: the non-streaming message, the
/// streaming events (each with its `type`) and the counts.
pub(crate) struct Reply {
    pub(crate) message: Value,
    pub(crate) events: Vec<Value>,
    /// Uncached input tokens (`input_tokens`).
    pub(crate) input: u64,
    pub(crate) output: u64,
}

/// Validates a Messages body (without looking at `model`) and answers it
/// as `model`. Anthropic-on-Bedrock uses it too.
pub(crate) fn reply(state: &State, call: &Call, model: &str) -> Result<Reply, Reject> {
    let body = &call.body;
    let max_tokens =
        u64_field(body, "max_tokens")?.ok_or_else(|| bad_request("max_tokens: field required"))?;
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => return Err(bad_request("messages: at least one message is required")),
    }
    let (input, cached) = count_input(body);
    let create = call
        .headers
        .get("x-mock-cache")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"create"));
    let (cache_read, cache_creation) = if create { (0, cached) } else { (cached, 0) };
    let (output, cut) = output_tokens(call, Some(max_tokens));
    let stop_reason = if cut { "max_tokens" } else { "end_turn" };
    let id = state.id("msg_01");
    if let Some(tool) = ToolCall::wanted(body) {
        return Ok(tool_use(state, &tool, &id, model, input));
    }

    let message = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply_text(output)}],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": input,
            "cache_creation_input_tokens": cache_creation,
            "cache_read_input_tokens": cache_read,
            "output_tokens": output,
            "service_tier": "standard",
        },
    });

    let mut events = Vec::new();
    events.push(json!({
        "type": "message_start",
        "message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {
                "input_tokens": input,
                "cache_creation_input_tokens": cache_creation,
                "cache_read_input_tokens": cache_read,
                "output_tokens": output.min(1),
                "service_tier": "standard",
            },
        },
    }));
    events.push(
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    events.push(json!({"type": "ping"}));
    for delta in reply_deltas(output) {
        events.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}}));
    }
    events.push(json!({"type": "content_block_stop", "index": 0}));
    events.push(json!({
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null},
        "usage": {
            "input_tokens": input,
            "cache_creation_input_tokens": cache_creation,
            "cache_read_input_tokens": cache_read,
            "output_tokens": output,
        },
    }));
    events.push(json!({"type": "message_stop"}));
    Ok(Reply {
        message,
        events,
        input,
        output,
    })
}
