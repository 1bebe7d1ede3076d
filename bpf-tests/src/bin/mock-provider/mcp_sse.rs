//! MCP's legacy HTTP+SSE transport (protocol revision 2024-11-05), as the
//! official Python SDK's `mcp.server.sse.SseServerTransport` speaks it:
//!
//! * `GET /sse` opens the session's stream (`text/event-stream;
//!   charset=utf-8`, `\r\n` line ends as sse-starlette writes them); its
//!   first event is `event: endpoint` with `data: /messages/?session_id=<32
//!   hex digits>`.
//! * `POST /messages/?session_id=…` carries one JSON-RPC message: `400`
//!   without or with a malformed session id or body, `404` for an unknown
//!   session, else `202` with the body `Accepted`; a request's response is
//!   then sent on the stream as `event: message` / `data: {json}`.
//!
//! Tools: those of the streamable endpoint, plus `fail` (a result with
//! `isError: true`) and `stall` (never answered: for clients' and proxies'
//! timeouts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::mcp::{answer, result, rpc_error, tool_error, tools, METHOD_NOT_FOUND};
use crate::shared::{query_param, respond, State};
use crate::sse::ChannelBody;
use crate::{RespBody, MAX_REQUEST_BODY, MCP_DEFAULT_VERSION, MCP_VERSIONS};

/// Between keep-alive comments on a stream.
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Open streams by session id (hex).
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, mpsc::Sender<Bytes>>>);

impl Sessions {
    fn get(&self, id: &str) -> Option<mpsc::Sender<Bytes>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

fn sse_message(m: &Value) -> Bytes {
    Bytes::from(format!("event: message\r\ndata: {m}\r\n\r\n"))
}

/// `GET /sse`.
pub(crate) fn stream(state: &Arc<State>) -> Response<RespBody> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (tx, rx) = mpsc::channel(64);
    let endpoint = format!("event: endpoint\r\ndata: /messages/?session_id={id}\r\n\r\n");
    // Room for it: the channel is new.
    let _ = tx.try_send(Bytes::from(endpoint));
    // The stream lives as long as the client reads it: the keep-alive
    // comments (sse-starlette's `: ping - <time>`, every 15 s there, every
    // second here) find out when it left, and the session goes.
    state
        .legacy
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id.clone(), tx.clone());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PING_INTERVAL).await;
            let ping = format!(": ping - {}\r\n\r\n", crate::shared::unix_now());
            if tx.send(Bytes::from(ping)).await.is_err() {
                break;
            }
        }
        st.legacy
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// `POST /messages/?session_id=…`.
pub(crate) async fn message(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<&str>,
) -> Response<RespBody> {
    let text = "text/plain; charset=utf-8";
    if req.method() != Method::POST {
        let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, text, "");
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("POST"));
        return r;
    }
    let Some(sid) = query_param(query, "session_id") else {
        return respond(StatusCode::BAD_REQUEST, text, "session_id is required");
    };
    if sid.len() != 32 || !sid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return respond(StatusCode::BAD_REQUEST, text, "Invalid session ID");
    }
    let sid = sid.to_ascii_lowercase();
    let Some(tx) = state.legacy.get(&sid) else {
        return respond(StatusCode::NOT_FOUND, text, "Could not find session");
    };
    let bytes = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => return respond(StatusCode::PAYLOAD_TOO_LARGE, text, "Payload too large"),
    };
    let msg: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) if v["jsonrpc"] == "2.0" => v,
        _ => return respond(StatusCode::BAD_REQUEST, text, "Could not parse message"),
    };
    // A request (id and method) gets its answer on the stream, after the
    // `202` (as the SDK's transport: the response first, then the message
    // to the session).
    if let (Some(id), Some(method)) = (msg.get("id"), msg["method"].as_str()) {
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        if let Some(reply) = legacy_answer(id, method, &params) {
            let state = state.clone();
            tokio::spawn(async move {
                if tx.send(sse_message(&reply)).await.is_err() {
                    state
                        .legacy
                        .0
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&sid);
                }
            });
        }
    }
    respond(StatusCode::ACCEPTED, text, "Accepted")
}

/// The reply to a request; `None` for the one never answered.
fn legacy_answer(id: &Value, method: &str, params: &Value) -> Option<Value> {
    Some(match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked
                .filter(|v| MCP_VERSIONS.contains(v))
                .unwrap_or(MCP_DEFAULT_VERSION);
            result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "egret-mock-mcp-sse", "version": env!("CARGO_PKG_VERSION")},
                }),
            )
        }
        "tools/list" => {
            let mut list = tools().as_array().cloned().unwrap_or_default();
            for (name, description) in [
                ("fail", "Always fails (a result with isError: true)."),
                ("stall", "Never answers."),
            ] {
                list.push(json!({
                    "name": name,
                    "description": description,
                    "inputSchema": {"type": "object", "properties": {}},
                }));
            }
            result(id, json!({"tools": list}))
        }
        "tools/call" => match params.get("name").and_then(Value::as_str) {
            Some("stall") => return None,
            Some("fail") => tool_error(id, "fail: this tool always fails".into()),
            _ => answer(id, method, params),
        },
        "ping" => answer(id, method, params),
        other => rpc_error(id, METHOD_NOT_FOUND, &format!("Method not found: {other}")),
    })
}
