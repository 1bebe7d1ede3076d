//! OpenAI: Chat Completions, Responses, Embeddings.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::routing::{bad_request, Call, Reject};
use crate::shared::{json_response, splitmix64, unix_now, State};
use crate::sse::{sse_data, sse_event, sse_response};
use crate::tokens::{
    is_stream, model_of, output_tokens, reply_deltas, reply_text, text_words, u64_field, words,
    ToolCall,
};
use crate::RespBody;

fn chat_input(body: &Value) -> Result<u64, Reject> {
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => Ok(m
            .iter()
            .map(|msg| msg.get("content").map_or(0, text_words))
            .sum()),
        _ => Err(bad_request(
            "messages: expected a non-empty array of messages",
        )),
    }
}

fn chat_usage(input: u64, output: u64) -> Value {
    json!({
        "prompt_tokens": input,
        "completion_tokens": output,
        "total_tokens": input + output,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

pub fn chat(state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
    let body = &call.body;
    let model = model_of(body)?;
    let input = chat_input(body)?;
    let limit = match u64_field(body, "max_completion_tokens")? {
        Some(l) => Some(l),
        None => u64_field(body, "max_tokens")?,
    };
    let (output, cut) = output_tokens(call, limit);
    let finish = if cut { "length" } else { "stop" };
    let id = state.id("chatcmpl-");
    let created = unix_now();
    if let Some(tool) = ToolCall::wanted(body) {
        return Ok(chat_tool_call(
            state, call, &tool, &id, created, &model, input,
        ));
    }

    if !is_stream(body) {
        let resp = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply_text(output), "refusal": null, "annotations": []},
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": chat_usage(input, output),
            "service_tier": "default",
            "system_fingerprint": "fp_egret_mock",
        });
        return Ok(json_response(StatusCode::OK, &resp));
    }

    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_egret_mock",
            "choices": choices,
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = Vec::new();
    events.push(sse_data(&chunk(json!([{
        "index": 0,
        "delta": {"role": "assistant", "content": "", "refusal": null},
        "logprobs": null,
        "finish_reason": null,
    }]))));
    for delta in reply_deltas(output) {
        events.push(sse_data(&chunk(json!([{
            "index": 0,
            "delta": {"content": delta},
            "logprobs": null,
            "finish_reason": null,
        }]))));
    }
    events.push(sse_data(&chunk(json!([{
        "index": 0,
        "delta": {},
        "logprobs": null,
        "finish_reason": finish,
    }]))));
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = chat_usage(input, output);
        events.push(sse_data(&last));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Ok(sse_response(events, call.delay))
}

/// A Chat Completions answer that calls a tool: `content: null`, one
/// `tool_calls` entry, `finish_reason: tool_calls`; streamed, the call's
/// id and name first and its arguments in fragments, as OpenAI sends them.
fn chat_tool_call(
    state: &State,
    call: &Call,
    tool: &ToolCall,
    id: &str,
    created: u64,
    model: &str,
    input: u64,
) -> Response<RespBody> {
    let call_id = state.id("call_");
    let output = words(&tool.arguments).max(1) + 4;
    if !is_stream(&call.body) {
        let resp = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "refusal": null,
                    "annotations": [],
                    "tool_calls": [{
                        "id": call_id,
                        "type": "function",
                        "function": {"name": tool.name, "arguments": tool.arguments},
                    }],
                },
                "logprobs": null,
                "finish_reason": "tool_calls",
            }],
            "usage": chat_usage(input, output),
            "system_fingerprint": "fp_egret_mock",
        });
        return json_response(StatusCode::OK, &resp);
    }
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_egret_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut events = vec![sse_data(&chunk(
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "index": 0, "id": call_id, "type": "function",
            "function": {"name": tool.name, "arguments": ""},
        }]}),
        Value::Null,
    ))];
    for f in tool.fragments() {
        events.push(sse_data(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}),
            Value::Null,
        )));
    }
    events.push(sse_data(&chunk(json!({}), json!("tool_calls"))));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_response(events, call.delay)
}

fn responses_input(body: &Value) -> Result<u64, Reject> {
    let input = match body.get("input") {
        None | Some(Value::Null) => 0,
        Some(Value::String(s)) => words(s),
        Some(Value::Array(items)) => items.iter().map(text_words).sum(),
        Some(_) => return Err(bad_request("input: expected a string or an array")),
    };
    let instructions = body.get("instructions").map_or(0, text_words);
    Ok(input + instructions)
}

pub fn responses(state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
    let (final_response, events) = responses_events(state, call)?;
    if !is_stream(&call.body) {
        return Ok(json_response(StatusCode::OK, &final_response));
    }
    let events = events
        .iter()
        .map(|e| sse_event(e["type"].as_str().unwrap_or("message"), e))
        .collect();
    Ok(sse_response(events, call.delay))
}

/// A Responses answer: the final response object and the stream events
/// (each with `type` and `sequence_number`) that lead to it — sent as SSE
/// events over HTTP, as text messages over WebSocket.
pub fn responses_events(state: &State, call: &Call) -> Result<(Value, Vec<Value>), Reject> {
    let body = &call.body;
    let model = model_of(body)?;
    let input = responses_input(body)?;
    let max_output = u64_field(body, "max_output_tokens")?;
    let (output, cut) = output_tokens(call, max_output);
    let id = state.id("resp_");
    let msg_id = state.id("msg_");
    let created = unix_now();
    let text = reply_text(output);

    let message = |status: &str, text: Option<&str>| {
        let content = match text {
            Some(t) => {
                json!([{"type": "output_text", "annotations": [], "logprobs": [], "text": t}])
            }
            None => json!([]),
        };
        json!({"id": msg_id, "type": "message", "status": status, "role": "assistant", "content": content})
    };
    let response = |status: &str, output_items: Value, usage: Value| {
        json!({
            "id": id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": max_output,
            "model": model,
            "output": output_items,
            "parallel_tool_calls": true,
            "previous_response_id": body.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "store": body.get("store").and_then(Value::as_bool).unwrap_or(true),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    };
    let usage = json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    });
    let final_status = if cut { "incomplete" } else { "completed" };
    let item_status = if cut { "incomplete" } else { "completed" };
    let final_response = response(
        final_status,
        json!([message(item_status, Some(&text))]),
        usage,
    );

    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        events.push(data);
    };
    let in_progress = response("in_progress", json!([]), Value::Null);
    push("response.created", json!({"response": in_progress}));
    push("response.in_progress", json!({"response": in_progress}));
    push(
        "response.output_item.added",
        json!({"output_index": 0, "item": message("in_progress", None)}),
    );
    push(
        "response.content_part.added",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}}),
    );
    for delta in reply_deltas(output) {
        push(
            "response.output_text.delta",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }
    push(
        "response.output_text.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
    );
    push(
        "response.content_part.done",
        json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": text}}),
    );
    push(
        "response.output_item.done",
        json!({"output_index": 0, "item": message(item_status, Some(&text))}),
    );
    let last = if cut {
        "response.incomplete"
    } else {
        "response.completed"
    };
    push(last, json!({"response": final_response.clone()}));
    Ok((final_response, events))
}

pub fn embeddings(_state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
    let body = &call.body;
    let model = model_of(body)?;
    let dims = u64_field(body, "dimensions")?.unwrap_or(8);
    if dims == 0 || dims > 4096 {
        return Err(bad_request("dimensions: must be between 1 and 4096"));
    }
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "encoding_format: {other:?} is not one of 'float', 'base64'"
            )))
        }
    };
    // (text identity for the vector, token count)
    let inputs: Vec<(String, u64)> = match body.get("input") {
        Some(Value::String(s)) => vec![(s.clone(), words(s))],
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| (s.to_string(), words(s)))
                    .collect()
            } else if items.iter().all(Value::is_u64) {
                vec![(Value::Array(items.clone()).to_string(), items.len() as u64)]
            } else if items.iter().all(Value::is_array) {
                items
                    .iter()
                    .map(|a| (a.to_string(), a.as_array().map_or(0, Vec::len) as u64))
                    .collect()
            } else {
                return Err(bad_request("input: expected strings or token arrays"));
            }
        }
        _ => return Err(bad_request("input: field required")),
    };
    let total: u64 = inputs.iter().map(|(_, t)| t).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, (text, _))| {
            let v = vector(text, dims as usize);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }),
    ))
}

/// A deterministic unit-length vector for `text`.
fn vector(text: &str, dims: usize) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut v: Vec<f32> = (0..dims)
        .map(|i| {
            h = splitmix64(h ^ i as u64);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}
