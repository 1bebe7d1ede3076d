//! Model Context Protocol over Streamable HTTP: JSON-RPC 2.0 messages
//! `POST`ed to the MCP endpoint.
//!
//! Request: `{"jsonrpc":"2.0","id":…,"method":"tools/call","params":{"name":…}}`
//! (a notification has no `id`). Headers: `Mcp-Session-Id` (assigned by
//! the server in the `initialize` response, echoed by the client after),
//! `MCP-Protocol-Version`.
//!
//! Response: `202 Accepted` without body for notifications; otherwise
//! either `application/json` with the JSON-RPC response, or
//! `text/event-stream` whose events carry JSON-RPC messages (server
//! notifications and requests may precede the response whose `id`
//! matches). Batches (JSON arrays) of protocol revision 2025-03-26 are
//! accepted: the first request of a batch is recorded.
//!
//! Attributes (OTel MCP semconv): `mcp.method.name`, `jsonrpc.request.id`,
//! `gen_ai.tool.name` (tools/call), `gen_ai.prompt.name` (prompts/get),
//! `mcp.resource.uri` (resources/*), `mcp.session.id`,
//! `mcp.protocol.version`, `gen_ai.operation.name = execute_tool` for
//! tools/call only; on a JSON-RPC error `error.type` and
//! `rpc.response.status_code` are the error code, and a tool result with
//! `isError: true` gives `error.type = tool_error`.

use serde::Deserialize;

use super::de::{BStr, RpcId};
use super::json_scan::{self, Hit, ScanEnd};
use super::{json_error, Findings};

/// What the request body told.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    /// `"jsonrpc": "2.0"` was seen.
    pub is_jsonrpc: bool,
    pub method: Option<String>,
    pub id: Option<String>,
    pub tool_name: Option<String>,
    pub prompt_name: Option<String>,
    pub resource_uri: Option<String>,
    pub protocol_version: Option<String>,
}

impl Request {
    /// Reads a (possibly truncated) request body.
    pub fn scan(body: &[u8]) -> (Request, ScanEnd) {
        let mut r = Request::default();
        let end = json_scan::scan(body, |h: &Hit<'_>| {
            let s = || h.value.as_str().map(|c| c.into_owned());
            match (h.parent, h.key) {
                (None, b"jsonrpc") => r.is_jsonrpc = h.value.as_str().as_deref() == Some("2.0"),
                (None, b"method") => r.method = s(),
                (None, b"id") => r.id = h.value.as_id(),
                (Some(b"params"), b"name") => r.tool_name = s(),
                (Some(b"params"), b"uri") => r.resource_uri = s(),
                (Some(b"params"), b"protocolVersion") => r.protocol_version = s(),
                _ => {}
            }
        });
        match r.method.as_deref() {
            Some("tools/call") => {}
            Some("prompts/get") => r.prompt_name = r.tool_name.take(),
            _ => r.tool_name = None,
        }
        if !matches!(
            r.method.as_deref(),
            Some(
                "resources/read"
                    | "resources/subscribe"
                    | "resources/unsubscribe"
                    | "notifications/resources/updated"
            )
        ) {
            r.resource_uri = None;
        }
        (r, end)
    }
}

/// A quick test for JSON-RPC 2.0 in a request body prefix: used to detect
/// MCP on routes that did not name a provider.
pub fn looks_like_jsonrpc(body: &[u8]) -> bool {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'{' | b'[')) {
        return false;
    }
    let (r, end) = Request::scan(body);
    r.is_jsonrpc && r.method.is_some() && !matches!(end, ScanEnd::Invalid)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RpcResult<'a> {
    is_error: Option<bool>,
    #[serde(borrow)]
    protocol_version: Option<BStr<'a>>,
}

#[derive(Deserialize)]
struct RpcError {
    code: Option<i64>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default)]
    id: RpcId,
    #[serde(borrow)]
    result: Option<RpcResult<'a>>,
    error: Option<RpcError>,
}

/// Response-side state: looks for the response to `request_id`.
#[derive(Debug, Default)]
pub struct State {
    /// The id of the request, when it had one (else no response is due).
    pub request_id: Option<String>,
    /// The request carried an id we could not read (the body prefix was
    /// cut before it): take the first response.
    pub any_id: bool,
    pub method: Option<String>,
}

impl State {
    fn message(&mut self, m: Message<'_>, f: &mut Findings) {
        if m.result.is_none() && m.error.is_none() {
            return; // a request or notification from the server
        }
        let matches = match (&self.request_id, &m.id.0) {
            (Some(want), Some(got)) => want == got,
            (None, _) => self.any_id,
            // An error response may carry a null id (parse errors).
            (Some(_), None) => m.error.is_some(),
        };
        if !matches || f.complete {
            return;
        }
        f.complete = true;
        if let Some(e) = m.error {
            let code = e.code.map_or_else(|| "error".to_owned(), |c| c.to_string());
            f.rpc_status_code = Some(code.clone());
            f.error_type = Some(code);
        }
        if let Some(r) = m.result {
            if r.is_error == Some(true) {
                Findings::set_str(&mut f.error_type, "tool_error");
            }
            if let Some(v) = &r.protocol_version {
                if self.method.as_deref() == Some("initialize") {
                    Findings::set_str(&mut f.mcp_protocol_version, v.as_str());
                }
            }
        }
    }

    fn value(&mut self, data: &[u8], f: &mut Findings) {
        let first = data.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'[') {
            match serde_json::from_slice::<Vec<Message<'_>>>(data) {
                Ok(list) => list.into_iter().for_each(|m| self.message(m, f)),
                Err(e) => f.flag(json_error(&e)),
            }
        } else {
            match serde_json::from_slice::<Message<'_>>(data) {
                Ok(m) => self.message(m, f),
                Err(e) => f.flag(json_error(&e)),
            }
        }
    }

    /// One SSE event.
    pub fn event(&mut self, data: &[u8], f: &mut Findings) {
        if data.trim_ascii().is_empty() {
            return; // priming event (id only, empty data)
        }
        self.value(data, f);
    }

    /// A JSON body.
    pub fn json(&mut self, body: &[u8], f: &mut Findings) {
        self.value(body, f);
    }

    /// True when no response is due (a notification, or a response).
    pub fn expects_response(&self) -> bool {
        self.request_id.is_some() || self.any_id
    }
}
