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
//! matches). Batches (JSON arrays) of protocol revision 2025-03-26: the
//! record's own attributes are the first message's; [`Batch`] lists every
//! message (up to [`MAX_BATCH_MESSAGES`], the rest counted) and
//! [`State`] matches each response to its request by id
//! (`egret.mcp.batch.*`; one OTLP span per message).
//!
//! Trace context: [`plan_meta`] / [`MetaPlan::apply`] add the proxy's
//! `traceparent` (and `tracestate`) to `params._meta` of every message with
//! a `method`, keeping a `_meta.traceparent` the sandbox supplied (the
//! first one is then the incoming parent when the request has no header).
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
        let end = json_scan::scan(body, |h: &Hit<'_>| r.hit(h));
        r.settle();
        (r, end)
    }

    /// One field of the message object (or of its `params`).
    fn hit(&mut self, h: &Hit<'_>) {
        let s = || h.value.as_str().map(|c| c.into_owned());
        match (h.parent, h.key) {
            (None, b"jsonrpc") => self.is_jsonrpc = h.value.as_str().as_deref() == Some("2.0"),
            (None, b"method") => self.method = s(),
            (None, b"id") => self.id = h.value.as_id(),
            (Some(b"params"), b"name") => self.tool_name = s(),
            (Some(b"params"), b"uri") => self.resource_uri = s(),
            (Some(b"params"), b"protocolVersion") => self.protocol_version = s(),
            _ => {}
        }
    }

    /// Keeps the names the method gives meaning to.
    fn settle(&mut self) {
        match self.method.as_deref() {
            Some("tools/call") => {}
            Some("prompts/get") => self.prompt_name = self.tool_name.take(),
            _ => self.tool_name = None,
        }
        if !matches!(
            self.method.as_deref(),
            Some(
                "resources/read"
                    | "resources/subscribe"
                    | "resources/unsubscribe"
                    | "notifications/resources/updated"
            )
        ) {
            self.resource_uri = None;
        }
    }

    /// A request the server must answer: it has an id and a method that
    /// is not a notification's.
    pub fn expects_response(&self) -> bool {
        self.id.is_some()
            && self
                .method
                .as_deref()
                .is_some_and(|m| !m.starts_with("notifications/"))
    }

    /// The tool (tools/call) or prompt (prompts/get) it names: the
    /// `{target}` of its span name.
    pub fn target(&self) -> Option<&str> {
        self.tool_name.as_deref().or(self.prompt_name.as_deref())
    }
}

/// Most messages of one batch recorded one by one
/// (`egret.mcp.batch.*`); later ones are counted in
/// `egret.mcp.batch.unrecorded`.
pub const MAX_BATCH_MESSAGES: usize = 32;

/// A request body that was a JSON-RPC batch (a JSON array).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Messages in the batch, as far as the captured body goes.
    pub size: usize,
    /// The first [`MAX_BATCH_MESSAGES`] of them, in order (an element that
    /// is not an object gives an empty [`Request`]).
    pub messages: Vec<Request>,
}

impl Batch {
    /// Reads a batch body; `None` when the body is not a JSON array.
    pub fn scan(body: &[u8]) -> Option<Batch> {
        let mut messages: Vec<Request> = Vec::new();
        let els = json_scan::scan_elements(body, MAX_BATCH_MESSAGES, |i, h| {
            if messages.len() <= i {
                messages.resize(i + 1, Request::default());
            }
            messages[i].hit(h);
        });
        if !els.array || matches!(els.end, ScanEnd::Invalid) {
            return None;
        }
        messages.resize(els.count.min(MAX_BATCH_MESSAGES), Request::default());
        messages.iter_mut().for_each(Request::settle);
        Some(Batch {
            size: els.count,
            messages,
        })
    }
}

/// What became of one batch message's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No response is due (a notification, or a client response).
    NotDue,
    /// Due, not seen.
    Pending,
    /// A result without `isError: true`.
    Ok,
    /// The JSON-RPC error code, or `tool_error`.
    Error(String),
}

/// `error.type` of a request whose answer never came.
pub const UNANSWERED: &str = "unanswered";

impl Outcome {
    /// The `error.type` it gives (`""` for none), as recorded in
    /// `egret.mcp.batch.error_types`: a request never answered is
    /// [`UNANSWERED`].
    pub fn error_type(&self) -> &str {
        match self {
            Outcome::NotDue | Outcome::Ok => "",
            Outcome::Pending => UNANSWERED,
            Outcome::Error(e) => e,
        }
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
    /// For a batch: each recorded message's id and outcome, in order.
    pub batch: Vec<(Option<String>, Outcome)>,
}

impl State {
    /// The response-side state of a batch.
    pub fn for_batch(batch: &Batch) -> Vec<(Option<String>, Outcome)> {
        batch
            .messages
            .iter()
            .map(|m| {
                let due = if m.expects_response() {
                    Outcome::Pending
                } else {
                    Outcome::NotDue
                };
                (m.id.clone(), due)
            })
            .collect()
    }

    /// Records a response against the batch message it answers (a
    /// null-id error answers every message still pending: the server
    /// could not read the batch).
    fn batch_message(&mut self, m: &Message<'_>) {
        let outcome = match (&m.error, &m.result) {
            (Some(e), _) => {
                Outcome::Error(e.code.map_or_else(|| "error".to_owned(), |c| c.to_string()))
            }
            (None, Some(r)) if r.is_error == Some(true) => Outcome::Error("tool_error".to_owned()),
            (None, _) => Outcome::Ok,
        };
        for (id, o) in &mut self.batch {
            if *o != Outcome::Pending {
                continue;
            }
            match &m.id.0 {
                Some(got) if id.as_deref() == Some(got.as_str()) => {
                    *o = outcome;
                    return;
                }
                None if m.error.is_some() => *o = outcome.clone(),
                _ => {}
            }
        }
    }

    fn message(&mut self, m: Message<'_>, f: &mut Findings) {
        if m.result.is_none() && m.error.is_none() {
            return; // a request or notification from the server
        }
        if !self.batch.is_empty() {
            self.batch_message(&m);
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

// ---- trace context in `params._meta` ------------------------------------

/// Values of `egret.mcp.trace_context`.
pub const TRACE_CONTEXT_INJECTED: &str = "injected";
pub const TRACE_CONTEXT_SUPPLIED: &str = "supplied";
pub const TRACE_CONTEXT_SKIPPED_STREAMED: &str = "skipped_streamed";
pub const TRACE_CONTEXT_SKIPPED_ENCODED: &str = "skipped_encoded";
pub const TRACE_CONTEXT_SKIPPED_SIGNED: &str = "skipped_signed";
pub const TRACE_CONTEXT_SKIPPED_INVALID: &str = "skipped_invalid";
pub const TRACE_CONTEXT_SKIPPED_UNSUPPORTED: &str = "skipped_unsupported";
pub const TRACE_CONTEXT_SKIPPED_TOO_LARGE: &str = "skipped_too_large";

/// Most messages a body may hold for [`plan_meta`] to edit it.
pub const MAX_INJECT_MESSAGES: usize = 1024;

/// Where [`MetaPlan::apply`] inserts the trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Insert {
    /// After the message's `{`: no `params`.
    Params,
    /// After `params`' `{`: no `_meta` (`empty`: `params` is `{}`).
    Meta { empty: bool },
    /// After `_meta`'s `{`: no `traceparent` there (`state`: nor
    /// `tracestate`).
    IntoMeta { empty: bool, state: bool },
}

/// Why the trace context cannot be put in a body's `params._meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaSkip {
    /// Not one complete, valid JSON document.
    Invalid,
    /// A message's `params` or `params._meta` is not an object.
    Unsupported,
    /// More than [`MAX_INJECT_MESSAGES`] messages.
    TooManyMessages,
}

/// How to add `_meta.traceparent` to every message of a request body
/// (one JSON-RPC message or a batch) that has a `method` and lacks one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaPlan {
    /// The first `params._meta.traceparent` the body already carried (a
    /// string), in message order.
    pub supplied: Option<String>,
    inserts: Vec<(usize, Insert)>,
}

#[derive(Default, Clone, Copy)]
struct Spots {
    method: bool,
    params: Option<(json_scan::Value<'static>, usize, usize)>,
    meta: Option<(json_scan::Value<'static>, usize, usize)>,
}

fn kind(v: json_scan::Value<'_>) -> json_scan::Value<'static> {
    match v {
        json_scan::Value::Object => json_scan::Value::Object,
        json_scan::Value::Array => json_scan::Value::Array,
        json_scan::Value::Null => json_scan::Value::Null,
        json_scan::Value::Bool(b) => json_scan::Value::Bool(b),
        json_scan::Value::Num(_) => json_scan::Value::Num(b""),
        json_scan::Value::Str { .. } => json_scan::Value::Str {
            raw: b"",
            escaped: false,
        },
    }
}

#[derive(Deserialize)]
struct Meta {
    traceparent: Option<serde_json::Value>,
    tracestate: Option<serde_json::Value>,
}

fn is_empty_object(inner: &[u8]) -> bool {
    inner.iter().all(u8::is_ascii_whitespace)
}

/// Plans the `_meta` edit of a whole request body; every byte but the
/// insertions is kept.
pub fn plan_meta(body: &[u8]) -> Result<MetaPlan, MetaSkip> {
    // The lax scanner's spans are trusted only on a valid document.
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|_| MetaSkip::Invalid)?;
    let mut spots: Vec<Spots> = Vec::new();
    let els = json_scan::scan_elements(body, MAX_INJECT_MESSAGES, |i, h| {
        if spots.len() <= i {
            spots.resize(i + 1, Spots::default());
        }
        let s = &mut spots[i];
        match (h.parent, h.key) {
            (None, b"method") => s.method = true,
            (None, b"params") => s.params = Some((kind(h.value), h.start, h.end)),
            (Some(b"params"), b"_meta") => s.meta = Some((kind(h.value), h.start, h.end)),
            _ => {}
        }
    });
    if !matches!(els.end, ScanEnd::Complete { .. }) {
        return Err(MetaSkip::Invalid);
    }
    if els.count > MAX_INJECT_MESSAGES {
        return Err(MetaSkip::TooManyMessages);
    }
    let mut plan = MetaPlan {
        supplied: None,
        inserts: Vec::new(),
    };
    for (i, s) in spots.iter().enumerate() {
        let Some(Some((start, _))) = els.objects.get(i) else {
            continue;
        };
        if !s.method {
            continue; // a response to a server request: not ours to mark
        }
        use json_scan::Value as V;
        let insert = match (s.params, s.meta) {
            (None, _) => (start + 1, Insert::Params),
            (Some((V::Object, ps, pe)), None) => (
                ps + 1,
                Insert::Meta {
                    empty: is_empty_object(&body[ps + 1..pe - 1]),
                },
            ),
            (Some((V::Object, _, _)), Some((V::Object, ms, me))) => {
                let meta: Meta =
                    serde_json::from_slice(&body[ms..me]).map_err(|_| MetaSkip::Unsupported)?;
                match meta.traceparent {
                    Some(serde_json::Value::String(tp)) => {
                        plan.supplied.get_or_insert(tp);
                        continue;
                    }
                    Some(_) => return Err(MetaSkip::Unsupported),
                    None => (
                        ms + 1,
                        Insert::IntoMeta {
                            empty: is_empty_object(&body[ms + 1..me - 1]),
                            state: meta.tracestate.is_none(),
                        },
                    ),
                }
            }
            _ => return Err(MetaSkip::Unsupported),
        };
        plan.inserts.push(insert);
    }
    Ok(plan)
}

impl MetaPlan {
    /// Messages that get the trace context.
    pub fn inserts(&self) -> usize {
        self.inserts.len()
    }

    /// The body with `traceparent` (and `tracestate`, where the message
    /// has none) added to each planned message's `params._meta`.
    pub fn apply(&self, body: &[u8], traceparent: &str, tracestate: Option<&str>) -> Vec<u8> {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        let tp = format!("\"traceparent\":{}", q(traceparent));
        let with_state = match tracestate {
            Some(ts) => format!("{tp},\"tracestate\":{}", q(ts)),
            None => tp.clone(),
        };
        let mut out = Vec::with_capacity(body.len() + self.inserts.len() * (with_state.len() + 24));
        let mut at = 0;
        for (pos, insert) in &self.inserts {
            out.extend_from_slice(&body[at..*pos]);
            at = *pos;
            match insert {
                Insert::Params => {
                    out.extend_from_slice(b"\"params\":{\"_meta\":{");
                    out.extend_from_slice(with_state.as_bytes());
                    out.extend_from_slice(b"}},");
                }
                Insert::Meta { empty } => {
                    out.extend_from_slice(b"\"_meta\":{");
                    out.extend_from_slice(with_state.as_bytes());
                    out.push(b'}');
                    if !empty {
                        out.push(b',');
                    }
                }
                Insert::IntoMeta { empty, state } => {
                    let text = if *state { &with_state } else { &tp };
                    out.extend_from_slice(text.as_bytes());
                    if !empty {
                        out.push(b',');
                    }
                }
            }
        }
        out.extend_from_slice(&body[at..]);
        out
    }
}

// ---- the legacy HTTP+SSE transport (protocol revision 2024-11-05) -------

/// Most events one chunk of a legacy stream queues for the proxy before
/// [`Stream::take`]; later ones of the same chunk are counted in
/// [`Stream::dropped`] (their requests then end `unanswered`).
pub const MAX_STREAM_EVENTS: usize = 256;

/// Most answer-body bytes queued before [`Stream::take`]; answers past it
/// are counted in [`Stream::dropped`].
pub const MAX_STREAM_QUEUE_BYTES: usize = 16 << 20;

/// Longest `endpoint` URI kept; a longer one is ignored.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// What a legacy MCP stream (`GET`, `text/event-stream`) told, event by
/// event, for the proxy to act on while the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// `event: endpoint`: where the client is to `POST` its messages, as
    /// the path and query the proxy sees them (resolved against the
    /// stream's own path), and the host of an absolute URI.
    Endpoint {
        host: Option<String>,
        path_and_query: String,
    },
    /// `event: message` carrying a JSON-RPC response (to a request the
    /// client `POST`ed).
    Answer(Answer),
}

/// A JSON-RPC response seen on a legacy stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The id of the request it answers.
    pub id: String,
    /// [`Outcome::Ok`] or [`Outcome::Error`] (JSON-RPC code or
    /// `tool_error`).
    pub outcome: Outcome,
    /// The JSON-RPC error code, when it is an error response.
    pub rpc_status_code: Option<String>,
    /// `result.protocolVersion` (an `initialize` answer).
    pub protocol_version: Option<String>,
    /// The event's data (at most the SSE parser's event bound).
    pub body: Vec<u8>,
}

/// Follows a legacy stream: see [`StreamEvent`].
#[derive(Debug, Default)]
pub struct Stream {
    /// The stream's own path (a relative endpoint resolves against it).
    path: String,
    /// The last endpoint announced.
    pub endpoint: Option<String>,
    /// `event: message` events seen.
    pub messages: u64,
    /// Events not queued (over [`MAX_STREAM_EVENTS`] or
    /// [`MAX_STREAM_QUEUE_BYTES`] between two [`Stream::take`]s).
    pub dropped: u64,
    queue: Vec<StreamEvent>,
    /// Answer-body bytes in `queue`.
    queued_bytes: usize,
    /// Nobody takes the events: nothing is queued.
    ignored: bool,
}

impl Stream {
    /// Follows the stream of `GET path_and_query`.
    pub fn new(path_and_query: &str) -> Stream {
        Stream {
            path: path_and_query.to_owned(),
            ..Stream::default()
        }
    }

    /// The events queued since the last call.
    pub fn take(&mut self, out: &mut Vec<StreamEvent>) {
        out.append(&mut self.queue);
        self.queued_bytes = 0;
    }

    /// No one will take the events (the stream is only recorded).
    pub fn ignore(&mut self) {
        self.ignored = true;
        self.queue = Vec::new();
        self.queued_bytes = 0;
    }

    fn push(&mut self, e: StreamEvent) {
        if self.ignored {
            return;
        }
        let bytes = match &e {
            StreamEvent::Answer(a) => a.body.len(),
            StreamEvent::Endpoint { .. } => 0,
        };
        if self.queue.len() < MAX_STREAM_EVENTS
            && self.queued_bytes + bytes <= MAX_STREAM_QUEUE_BYTES
        {
            self.queued_bytes += bytes;
            self.queue.push(e);
        } else {
            self.dropped += 1;
        }
    }

    /// One SSE event of the stream.
    pub fn event(&mut self, name: &str, data: &[u8]) {
        match name {
            "endpoint" => {
                let Some((host, pq)) = resolve_endpoint(&self.path, data) else {
                    return;
                };
                self.endpoint = Some(pq.clone());
                self.push(StreamEvent::Endpoint {
                    host,
                    path_and_query: pq,
                });
            }
            "message" => {
                self.messages += 1;
                let first = data.iter().find(|b| !b.is_ascii_whitespace()).copied();
                if first == Some(b'[') {
                    if let Ok(list) = serde_json::from_slice::<Vec<Message<'_>>>(data) {
                        for m in list {
                            self.answer(m, data);
                        }
                    }
                } else if let Ok(m) = serde_json::from_slice::<Message<'_>>(data) {
                    self.answer(m, data);
                }
            }
            _ => {}
        }
    }

    /// Queues a response (server requests and notifications are not
    /// answers to anything the client sent).
    fn answer(&mut self, m: Message<'_>, data: &[u8]) {
        let Some(id) = m.id.0 else {
            return;
        };
        if self.ignored {
            return;
        }
        let (outcome, code) = match (&m.error, &m.result) {
            (Some(e), _) => {
                let code = e.code.map_or_else(|| "error".to_owned(), |c| c.to_string());
                (Outcome::Error(code.clone()), Some(code))
            }
            (None, Some(r)) if r.is_error == Some(true) => {
                (Outcome::Error("tool_error".to_owned()), None)
            }
            (None, Some(_)) => (Outcome::Ok, None),
            (None, None) => return,
        };
        let protocol_version = m
            .result
            .as_ref()
            .and_then(|r| r.protocol_version.as_ref())
            .map(|v| v.as_str().to_owned());
        self.push(StreamEvent::Answer(Answer {
            id,
            outcome,
            rpc_status_code: code,
            protocol_version,
            body: data.to_vec(),
        }));
    }
}

/// The `endpoint` event's URI as the path and query a `POST` to it will
/// carry: an absolute URI gives its host (lowercased, without port) and
/// path; an absolute path is taken as is; a relative one is resolved
/// against the stream's path (RFC 3986 §5.2.3, without dot segments).
pub fn resolve_endpoint(stream_path: &str, data: &[u8]) -> Option<(Option<String>, String)> {
    let uri = std::str::from_utf8(data).ok()?.trim();
    if uri.is_empty() || uri.len() > MAX_ENDPOINT_BYTES || uri.contains(char::is_whitespace) {
        return None;
    }
    let uri = uri.split('#').next().unwrap_or("");
    let lower = uri.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let rest = &uri[uri.find("//")? + 2..];
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        if host.is_empty() {
            return None;
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        return Some((Some(host.to_ascii_lowercase()), path));
    }
    if uri.starts_with("//") {
        return None; // network-path reference: not worth following
    }
    if uri.starts_with('/') {
        return Some((None, uri.to_owned()));
    }
    let base = stream_path.split(['?', '#']).next().unwrap_or("/");
    if let Some(q) = uri.strip_prefix('?') {
        return Some((None, format!("{base}?{q}")));
    }
    let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some((None, format!("{dir}{uri}")))
}

/// The value of the `session_id` query parameter of a legacy endpoint
/// (the SDKs' name for the session).
pub fn endpoint_session_id(path_and_query: &str) -> Option<String> {
    let q = path_and_query.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "session_id" || k == "sessionId")
            .then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .filter(|v| !v.is_empty())
    })
}
