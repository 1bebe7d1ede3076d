//! MCP streamable HTTP.
//!
//! Batches (a JSON array of messages, protocol revision 2025-03-26) are
//! answered per JSON-RPC 2.0: one response per request, in a JSON array
//! (`?format=json`) or one SSE event each; `202` when the batch holds only
//! notifications and responses. A result whose request carried
//! `params._meta` reports what the server received in
//! `result._meta["egret.mock/seen"]`: that `_meta` and the request's
//! `traceparent` header (how tests see what a proxy changed).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use crate::shared::{json_response, query_param, respond, State};
use crate::sse::sse_response;
use crate::{RespBody, MAX_REQUEST_BODY, MCP_DEFAULT_VERSION, MCP_VERSIONS};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

pub(crate) fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn http_error(status: StatusCode, id: &Value, code: i64, message: &str) -> Response<RespBody> {
    json_response(status, &rpc_error(id, code, message))
}

pub async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<&str>,
) -> Response<RespBody> {
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match *req.method() {
        Method::POST => {}
        Method::DELETE => {
            let Some(id) = session else {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    &Value::Null,
                    INVALID_REQUEST,
                    "Bad Request: Mcp-Session-Id header is required",
                );
            };
            let removed = state
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return if removed {
                respond(StatusCode::OK, "text/plain", "")
            } else {
                http_error(
                    StatusCode::NOT_FOUND,
                    &Value::Null,
                    INVALID_REQUEST,
                    "Session not found",
                )
            };
        }
        _ => {
            let mut resp = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "this server offers no server-initiated SSE stream\n",
            );
            resp.headers_mut()
                .insert("allow", HeaderValue::from_static("POST, DELETE"));
            return resp;
        }
    }

    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let accepts_sse = accept.contains("text/event-stream");
    let accepts_json =
        accept.contains("application/json") || accept.contains("*/*") || accept.is_empty();
    if !accepts_sse && !accepts_json {
        return http_error(
            StatusCode::NOT_ACCEPTABLE,
            &Value::Null,
            INVALID_REQUEST,
            "Not Acceptable: client must accept application/json and text/event-stream",
        );
    }
    let force_json = query_param(query, "format") == Some("json");
    let use_sse = accepts_sse && !force_json;
    let version = req
        .headers()
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let bytes = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                PARSE_ERROR,
                &format!("reading body: {e}"),
            )
        }
    };
    let msg: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                PARSE_ERROR,
                &format!("Parse error: {e}"),
            )
        }
    };
    if let Some(list) = msg.as_array() {
        return batch(
            state,
            list,
            session.as_deref(),
            version.as_deref(),
            use_sse,
            traceparent.as_deref(),
        );
    }
    let Some(obj) = msg.as_object() else {
        return http_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            INVALID_REQUEST,
            "Invalid Request: expected a JSON-RPC message or a batch",
        );
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return http_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            INVALID_REQUEST,
            "Invalid Request: jsonrpc must be \"2.0\"",
        );
    }
    let id = obj.get("id").cloned();
    let method = obj.get("method").and_then(Value::as_str);

    let (id, method) = match (id, method) {
        // Notifications and client responses: accepted, no body.
        (None, Some(_)) | (Some(_), None) => {
            if let Err(resp) =
                check_session(state, session.as_deref(), version.as_deref(), &Value::Null)
            {
                return *resp;
            }
            return respond(StatusCode::ACCEPTED, "text/plain", "");
        }
        (Some(id), Some(method)) => (id, method.to_string()),
        (None, None) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                INVALID_REQUEST,
                "Invalid Request",
            );
        }
    };
    let params = obj.get("params").cloned().unwrap_or(Value::Null);

    let mut new_session = None;
    let reply = match method.as_str() {
        "initialize" => {
            let sid = uuid::Uuid::new_v4().simple().to_string();
            state
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(sid.clone());
            new_session = Some(sid);
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked
                .filter(|v| MCP_VERSIONS.contains(v))
                .unwrap_or(MCP_DEFAULT_VERSION);
            result(
                &id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "egret-mock-mcp", "title": "egret mock MCP server", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "Test server: tools echo and add.",
                }),
            )
        }
        // Pre-session probe of newer clients: not supported here, which
        // makes them fall back to the initialize handshake.
        "server/discover" => rpc_error(&id, METHOD_NOT_FOUND, "Method not found: server/discover"),
        _ => {
            if let Err(resp) = check_session(state, session.as_deref(), version.as_deref(), &id) {
                return *resp;
            }
            answer(&id, &method, &params)
        }
    };

    let mut messages = progress(&method, &params);
    messages.push(seen(reply, &params, traceparent.as_deref()));

    let mut resp = if use_sse {
        let events = messages
            .iter()
            .map(|m| Bytes::from(format!("event: message\ndata: {m}\n\n")))
            .collect();
        sse_response(events, Duration::ZERO)
    } else {
        // JSON mode carries only the response itself.
        json_response(StatusCode::OK, messages.last().unwrap_or(&Value::Null))
    };
    if let Some(sid) = new_session {
        if let Ok(v) = HeaderValue::from_str(&sid) {
            resp.headers_mut().insert(SESSION_HEADER, v);
        }
    }
    resp
}

/// The reply to a request of a live session.
pub(crate) fn answer(id: &Value, method: &str, params: &Value) -> Value {
    match method {
        "ping" => result(id, json!({})),
        "tools/list" => result(id, json!({"tools": tools()})),
        "tools/call" => call_tool(id, params),
        other => rpc_error(id, METHOD_NOT_FOUND, &format!("Method not found: {other}")),
    }
}

/// The progress notification a tools/call with a progress token gets
/// before its result.
fn progress(method: &str, params: &Value) -> Vec<Value> {
    match params.pointer("/_meta/progressToken") {
        Some(token) if method == "tools/call" => vec![json!({
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": token, "progress": 1, "total": 1, "message": "done"},
        })],
        _ => Vec::new(),
    }
}

/// A result for a request that carried `params._meta` reports it, with the
/// `traceparent` header, in `result._meta["egret.mock/seen"]`.
fn seen(mut reply: Value, params: &Value, traceparent: Option<&str>) -> Value {
    let Some(meta) = params.get("_meta") else {
        return reply;
    };
    if let Some(result) = reply.get_mut("result").and_then(Value::as_object_mut) {
        result.insert(
            "_meta".into(),
            json!({"egret.mock/seen": {"meta": meta, "traceparent": traceparent}}),
        );
    }
    reply
}

/// A JSON-RPC batch: every request answered, in order (notifications and
/// client responses get none); `initialize` may not be batched.
fn batch(
    state: &State,
    list: &[Value],
    session: Option<&str>,
    version: Option<&str>,
    use_sse: bool,
    traceparent: Option<&str>,
) -> Response<RespBody> {
    if list.is_empty() {
        return http_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            INVALID_REQUEST,
            "Invalid Request: empty batch",
        );
    }
    if let Err(resp) = check_session(state, session, version, &Value::Null) {
        return *resp;
    }
    let mut messages = Vec::new();
    for msg in list {
        let Some(obj) = msg
            .as_object()
            .filter(|o| o.get("jsonrpc").and_then(Value::as_str) == Some("2.0"))
        else {
            messages.push(rpc_error(&Value::Null, INVALID_REQUEST, "Invalid Request"));
            continue;
        };
        let (Some(id), Some(method)) = (obj.get("id"), obj.get("method").and_then(Value::as_str))
        else {
            continue; // a notification or a client response
        };
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        let reply = if method == "initialize" {
            rpc_error(id, INVALID_REQUEST, "initialize cannot be part of a batch")
        } else {
            messages.extend(progress(method, &params));
            answer(id, method, &params)
        };
        messages.push(seen(reply, &params, traceparent));
    }
    if messages.is_empty() {
        return respond(StatusCode::ACCEPTED, "text/plain", "");
    }
    if use_sse {
        let events = messages
            .iter()
            .map(|m| Bytes::from(format!("event: message\ndata: {m}\n\n")))
            .collect();
        sse_response(events, Duration::ZERO)
    } else {
        // JSON mode carries the responses only, as one array.
        let responses: Vec<Value> = messages
            .into_iter()
            .filter(|m| m.get("method").is_none())
            .collect();
        json_response(StatusCode::OK, &Value::Array(responses))
    }
}

/// Everything after `initialize` needs a live session (400 without the
/// header, 404 for an unknown or ended one) and, when the client names
/// one, a supported protocol version.
fn check_session(
    state: &State,
    session: Option<&str>,
    version: Option<&str>,
    id: &Value,
) -> Result<(), Box<Response<RespBody>>> {
    let Some(sid) = session else {
        return Err(Box::new(http_error(
            StatusCode::BAD_REQUEST,
            id,
            INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required",
        )));
    };
    let known = state
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(sid);
    if !known {
        return Err(Box::new(http_error(
            StatusCode::NOT_FOUND,
            id,
            INVALID_REQUEST,
            "Session not found",
        )));
    }
    if let Some(v) = version {
        if !MCP_VERSIONS.contains(&v) {
            return Err(Box::new(http_error(
                StatusCode::BAD_REQUEST,
                id,
                INVALID_REQUEST,
                &format!("Bad Request: unsupported MCP-Protocol-Version {v:?}"),
            )));
        }
    }
    Ok(())
}

pub(crate) fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub(crate) fn tools() -> Value {
    json!([
        {
            "name": "echo",
            "title": "Echo",
            "description": "Returns the given text unchanged.",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "description": "Text to echo"}},
                "required": ["text"],
            },
        },
        {
            "name": "add",
            "title": "Add",
            "description": "Adds two numbers.",
            "inputSchema": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
            "outputSchema": {
                "type": "object",
                "properties": {"sum": {"type": "number"}},
                "required": ["sum"],
            },
        },
    ])
}

pub(crate) fn tool_error(id: &Value, text: String) -> Value {
    result(
        id,
        json!({"content": [{"type": "text", "text": text}], "isError": true}),
    )
}

fn call_tool(id: &Value, params: &Value) -> Value {
    let name = params.get("name").and_then(Value::as_str).unwrap_or("");
    let empty = Map::new();
    let args = params
        .get("arguments")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    match name {
        "echo" => match args.get("text").and_then(Value::as_str) {
            Some(text) => result(
                id,
                json!({"content": [{"type": "text", "text": text}], "isError": false}),
            ),
            None => tool_error(id, "echo: argument 'text' (string) is required".into()),
        },
        "add" => {
            let (Some(a), Some(b)) = (args.get("a"), args.get("b")) else {
                return tool_error(
                    id,
                    "add: arguments 'a' and 'b' (numbers) are required".into(),
                );
            };
            let sum = match (a.as_i64(), b.as_i64()) {
                (Some(x), Some(y)) => x.checked_add(y).map(Value::from),
                _ => match (a.as_f64(), b.as_f64()) {
                    (Some(x), Some(y)) => serde_json::Number::from_f64(x + y).map(Value::Number),
                    _ => None,
                },
            };
            match sum {
                Some(sum) => result(
                    id,
                    json!({
                        "content": [{"type": "text", "text": sum.to_string()}],
                        "structuredContent": {"sum": sum},
                        "isError": false,
                    }),
                ),
                None => tool_error(id, "add: 'a' and 'b' must be numbers".into()),
            }
        }
        other => rpc_error(id, INVALID_PARAMS, &format!("Unknown tool: {other}")),
    }
}
