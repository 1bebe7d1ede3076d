//! OpenAI over WebSocket: the Realtime API (`GET /v1/realtime?model=…`)
//! and the Responses API's WebSocket mode (`GET /v1/responses`), with
//! their real event sequences (tokio-tungstenite does the framing: a peer
//! independent of egret's own frame parser).
//!
//! Realtime: `session.created` at once; `session.update` →
//! `session.updated`; `conversation.item.create` →
//! `conversation.item.added` + `conversation.item.done`; `response.create` →
//! `response.created`, `response.output_item.added`,
//! `response.content_part.added`, one `response.output_text.delta` per
//! word, `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`, `response.done` with `usage`; when the
//! session (or the response) offers tools and the conversation's last item
//! is not a tool's result, a `function_call` item instead (the first tool,
//! as over HTTP): `response.output_item.added`, one
//! `response.function_call_arguments.delta` per fragment,
//! `response.function_call_arguments.done`, `response.output_item.done`,
//! `response.done`. Input tokens
//! = words of the session's instructions and of every conversation item so
//! far (the assistant's replies join the conversation, as on the real
//! API); output tokens as for HTTP (`x-mock-output-tokens` on the upgrade,
//! `max_output_tokens` of the response or the session). Anything else →
//! an `error` event.
//!
//! Responses: each `response.create` (the `POST /v1/responses` body plus
//! `type`) is answered with the same events as the SSE stream; a bad one
//! with an `error` event.
//!
//! The 101 carries `x-mock-extensions-offered` with the client's
//! `Sec-WebSocket-Extensions` (so tests see whether an offer reached the
//! provider); the mock negotiates no extension.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
use tokio_tungstenite::WebSocketStream;

use crate::openai::responses_events;
use crate::routing::Call;
use crate::shared::{full, header_u64, json_response, query_param, State};
use crate::tokens::{output_tokens, reply_deltas, reply_text, text_words, words, ToolCall};
use crate::RespBody;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Which API the upgrade asked for.
#[derive(Clone, Copy)]
pub(crate) enum Api {
    Realtime,
    Responses,
}

/// True for a WebSocket opening handshake.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    let has = |name: &str, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has("upgrade", "websocket") && has("connection", "upgrade")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<RespBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    )
}

/// Answers the upgrade (101, or the API's refusal) and runs the session.
pub(crate) fn upgrade(
    state: Arc<State>,
    mut req: Request<Incoming>,
    api: Api,
) -> Response<RespBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_handshake",
            "Sec-WebSocket-Key missing",
        );
    };
    let query = req.uri().query().map(str::to_string);
    let model = query_param(query.as_deref(), "model").map(str::to_string);
    if matches!(api, Api::Realtime) && model.as_deref().is_none_or(str::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_model",
            "model: query parameter required",
        );
    }
    let offered = req.headers().get("sec-websocket-extensions").cloned();
    let delay = header_u64(req.headers(), "x-mock-delay-ms")
        .map(Duration::from_millis)
        .unwrap_or(state.stream_delay);
    let call = Call {
        headers: req.headers().clone(),
        query,
        body: Value::Null,
        delay,
    };
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on.await {
            Ok(u) => u,
            Err(e) => {
                eprintln!("mock-provider: WebSocket upgrade: {e}");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let r = match api {
            Api::Realtime => realtime(ws, &state, model.unwrap_or_default(), call).await,
            Api::Responses => responses(ws, &state, call).await,
        };
        if let Err(e) = r {
            let text = e.to_string();
            if !text.contains("reset") && !text.contains("closed") {
                eprintln!("mock-provider: WebSocket session: {text}");
            }
        }
    });
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    if let Some(o) = offered {
        h.insert("x-mock-extensions-offered", o);
    }
    resp
}

type WsResult = Result<(), tokio_tungstenite::tungstenite::Error>;

/// Sends events as text messages, `delay` apart.
async fn send_all(ws: &mut Ws, events: Vec<Value>, delay: Duration) -> WsResult {
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        ws.send(Message::text(e.to_string())).await?;
    }
    Ok(())
}

/// The next text message, or None at the end of the session.
async fn next_text(ws: &mut Ws) -> Result<Option<Value>, tokio_tungstenite::tungstenite::Error> {
    while let Some(m) = ws.next().await {
        match m? {
            Message::Text(t) => {
                return Ok(Some(
                    serde_json::from_str(t.as_str()).unwrap_or(Value::Null),
                ))
            }
            Message::Binary(_) => return Ok(Some(Value::Null)),
            Message::Close(_) => {
                // Sends the close reply tungstenite queued.
                let _ = ws.flush().await;
                return Ok(None);
            }
            _ => {}
        }
    }
    Ok(None)
}

fn error_event(state: &State, code: &str, message: &str, event_id: Option<&Value>) -> Value {
    json!({
        "type": "error",
        "event_id": state.id("event_"),
        "error": {"type": "invalid_request_error", "code": code, "message": message, "param": null,
                  "event_id": event_id.cloned().unwrap_or(Value::Null)},
    })
}

async fn realtime(mut ws: Ws, state: &State, model: String, call: Call) -> WsResult {
    let session_id = state.id("sess_");
    let mut session = json!({
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": null},
                  "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
    });
    let created =
        json!({"type": "session.created", "event_id": state.id("event_"), "session": session});
    send_all(&mut ws, vec![created], Duration::ZERO).await?;
    // Words of every conversation item so far.
    let mut conversation = 0u64;
    let mut previous_item: Option<String> = None;
    // The conversation's last item, for the tool-call rule.
    let mut last_item = Value::Null;
    while let Some(ev) = next_text(&mut ws).await? {
        let event_id = ev.get("event_id");
        match ev.get("type").and_then(Value::as_str) {
            Some("session.update") => {
                if let Some(Value::Object(update)) = ev.get("session") {
                    for (k, v) in update {
                        if k != "type" && k != "model" {
                            session[k] = v.clone();
                        }
                    }
                }
                let out = json!({"type": "session.updated", "event_id": state.id("event_"), "session": session});
                send_all(&mut ws, vec![out], Duration::ZERO).await?;
            }
            Some("conversation.item.create") => {
                let mut item = ev.get("item").cloned().unwrap_or(Value::Null);
                conversation += text_words(&item);
                last_item = item.clone();
                let id = state.id("item_");
                item["id"] = json!(id);
                item["object"] = json!("realtime.item");
                item["status"] = json!("completed");
                let added = json!({"type": "conversation.item.added", "event_id": state.id("event_"),
                                   "previous_item_id": previous_item, "item": item});
                let done = json!({"type": "conversation.item.done", "event_id": state.id("event_"),
                                  "previous_item_id": previous_item, "item": item});
                previous_item = Some(id);
                send_all(&mut ws, vec![added, done], Duration::ZERO).await?;
            }
            Some("response.create") => {
                let params = ev.get("response").cloned().unwrap_or(json!({}));
                let limit = params
                    .get("max_output_tokens")
                    .or_else(|| session.get("max_output_tokens"))
                    .and_then(Value::as_u64);
                let (output, cut) = output_tokens(&call, limit);
                let instructions = params
                    .get("instructions")
                    .or_else(|| session.get("instructions"))
                    .and_then(Value::as_str)
                    .map_or(0, words);
                let input = conversation + instructions;
                let modalities = params
                    .get("output_modalities")
                    .or_else(|| session.get("output_modalities"))
                    .cloned()
                    .unwrap_or(json!(["audio"]));
                let tools = params
                    .get("tools")
                    .or_else(|| session.get("tools"))
                    .cloned()
                    .unwrap_or(Value::Null);
                // The response joins the conversation (its words).
                let events = match realtime_tool_call(&tools, &last_item) {
                    Some(tool) => {
                        let (events, item) = realtime_function_call(state, input, &tool);
                        conversation += words(&tool.arguments).max(1);
                        last_item = item;
                        events
                    }
                    None => {
                        last_item = json!({"type": "message", "role": "assistant"});
                        conversation += output;
                        realtime_response(state, input, output, cut, modalities)
                    }
                };
                send_all(&mut ws, events, call.delay).await?;
            }
            Some(other) => {
                let e = error_event(
                    state,
                    "unknown_event",
                    &format!("mock-provider: event {other} is not supported"),
                    event_id,
                );
                send_all(&mut ws, vec![e], Duration::ZERO).await?;
            }
            None => {
                let e = error_event(
                    state,
                    "invalid_json",
                    "expected a JSON event with a type",
                    None,
                );
                send_all(&mut ws, vec![e], Duration::ZERO).await?;
            }
        }
    }
    Ok(())
}

/// The tool call the HTTP stand-ins would make for `tools` (Realtime's
/// `{type, name, …}`) after `last` (a conversation item).
fn realtime_tool_call(tools: &Value, last: &Value) -> Option<ToolCall> {
    let role = match last.get("type").and_then(Value::as_str) {
        Some("function_call_output") => json!("tool"),
        _ => last.get("role").cloned().unwrap_or(json!("user")),
    };
    let message =
        json!({"role": role, "content": last.get("content").cloned().unwrap_or(Value::Null)});
    ToolCall::wanted(&json!({"tools": tools, "messages": [message]}))
}

/// One Realtime response that calls `tool`; and the call's item.
fn realtime_function_call(state: &State, input: u64, tool: &ToolCall) -> (Vec<Value>, Value) {
    let id = state.id("resp_");
    let item_id = state.id("item_");
    let call_id = state.id("call_");
    let output = words(&tool.arguments).max(1) + 4;
    let ev = |kind: &str, mut v: Value| {
        v["type"] = json!(kind);
        v["event_id"] = json!(state.id("event_"));
        v
    };
    let item = |status: &str, arguments: &str| {
        json!({"id": item_id, "object": "realtime.item", "type": "function_call", "status": status,
               "name": tool.name, "call_id": call_id, "arguments": arguments})
    };
    let response = |status: &str, output_items: Value, usage: Value| {
        json!({"object": "realtime.response", "id": id, "status": status, "status_details": null,
               "output": output_items, "conversation_id": state.id("conv_"),
               "output_modalities": ["text"], "max_output_tokens": "inf", "usage": usage,
               "metadata": null})
    };
    let at = |mut v: Value| {
        v["response_id"] = json!(id);
        v["item_id"] = json!(item_id);
        v["output_index"] = json!(0);
        v["call_id"] = json!(call_id);
        v
    };
    let usage = json!({
        "total_tokens": input + output, "input_tokens": input, "output_tokens": output,
        "input_token_details": {"text_tokens": input, "audio_tokens": 0, "image_tokens": 0,
                                "cached_tokens": 0},
        "output_token_details": {"text_tokens": output, "audio_tokens": 0},
    });
    let mut events = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.output_item.added",
            json!({"response_id": id, "output_index": 0, "item": item("in_progress", "")}),
        ),
    ];
    for f in tool.fragments() {
        events.push(ev(
            "response.function_call_arguments.delta",
            at(json!({"delta": f})),
        ));
    }
    events.push(ev(
        "response.function_call_arguments.done",
        at(json!({"name": tool.name, "arguments": tool.arguments})),
    ));
    let done_item = item("completed", &tool.arguments);
    events.push(ev(
        "response.output_item.done",
        json!({"response_id": id, "output_index": 0, "item": done_item}),
    ));
    events.push(ev(
        "response.done",
        json!({"response": response("completed", json!([done_item]), usage)}),
    ));
    (events, done_item)
}

/// One Realtime response's events (text output).
fn realtime_response(
    state: &State,
    input: u64,
    output: u64,
    cut: bool,
    modalities: Value,
) -> Vec<Value> {
    let id = state.id("resp_");
    let item_id = state.id("item_");
    let conversation_id = state.id("conv_");
    let text = reply_text(output);
    let ev = |kind: &str, mut v: Value| {
        v["type"] = json!(kind);
        v["event_id"] = json!(state.id("event_"));
        v
    };
    let item = |status: &str, text: Option<&str>| {
        let content = match text {
            Some(t) => json!([{"type": "output_text", "text": t}]),
            None => json!([]),
        };
        json!({"id": item_id, "object": "realtime.item", "type": "message", "status": status,
               "role": "assistant", "content": content})
    };
    let response = |status: &str, details: Value, output_items: Value, usage: Value| {
        json!({
            "object": "realtime.response",
            "id": id,
            "status": status,
            "status_details": details,
            "output": output_items,
            "conversation_id": conversation_id,
            "output_modalities": modalities,
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
            "usage": usage,
            "metadata": null,
        })
    };
    let (status, details) = if cut {
        (
            "incomplete",
            json!({"type": "incomplete", "reason": "max_output_tokens"}),
        )
    } else {
        ("completed", Value::Null)
    };
    let usage = json!({
        "total_tokens": input + output,
        "input_tokens": input,
        "output_tokens": output,
        "input_token_details": {
            "text_tokens": input, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output, "audio_tokens": 0},
    });
    let part = |t: &str| json!({"type": "text", "text": t});
    let at = |mut v: Value| {
        v["response_id"] = json!(id);
        v["item_id"] = json!(item_id);
        v["output_index"] = json!(0);
        v["content_index"] = json!(0);
        v
    };
    let mut events = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", Value::Null, json!([]), Value::Null)}),
        ),
        ev(
            "response.output_item.added",
            json!({"response_id": id, "output_index": 0, "item": item("in_progress", None)}),
        ),
        ev("response.content_part.added", at(json!({"part": part("")}))),
    ];
    for d in reply_deltas(output) {
        events.push(ev("response.output_text.delta", at(json!({"delta": d}))));
    }
    let item_status = if cut { "incomplete" } else { "completed" };
    events.push(ev("response.output_text.done", at(json!({"text": text}))));
    events.push(ev(
        "response.content_part.done",
        at(json!({"part": part(&text)})),
    ));
    events.push(ev(
        "response.output_item.done",
        json!({"response_id": id, "output_index": 0, "item": item(item_status, Some(&text))}),
    ));
    events.push(ev(
        "response.done",
        json!({"response": response(status, details, json!([item(item_status, Some(&text))]), usage)}),
    ));
    events
}

async fn responses(mut ws: Ws, state: &State, mut call: Call) -> WsResult {
    while let Some(ev) = next_text(&mut ws).await? {
        let event_id = ev.get("event_id").cloned();
        match ev.get("type").and_then(Value::as_str) {
            Some("response.create") => {
                call.body = ev;
                match responses_events(state, &call) {
                    Ok((_, events)) => send_all(&mut ws, events, call.delay).await?,
                    Err((status, message)) => {
                        let e = json!({"type": "error", "status": status.as_u16(),
                                       "error": {"type": "invalid_request_error", "code": "invalid_request",
                                                 "message": message, "param": null}});
                        send_all(&mut ws, vec![e], Duration::ZERO).await?;
                    }
                }
            }
            other => {
                let e = error_event(
                    state,
                    "unknown_event",
                    &format!("mock-provider: event {other:?} is not supported"),
                    event_id.as_ref(),
                );
                send_all(&mut ws, vec![e], Duration::ZERO).await?;
            }
        }
    }
    Ok(())
}
