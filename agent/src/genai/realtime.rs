//! OpenAI over WebSocket: the Realtime API (`GET /v1/realtime?model=…`)
//! and the Responses API's WebSocket mode (`GET /v1/responses`). One
//! [`Session`] per relayed WebSocket session turns its messages (JSON text
//! messages, whole, from [`super::websocket::FrameParser`]) into one
//! [`Turn`] per model response.
//!
//! Realtime: the server's `session.created` / `session.updated` carry
//! `session.model`; a response is `response.created` … deltas …
//! `response.done`, whose `response` has `id`, `status` (`completed`,
//! `cancelled`, `failed`, `incomplete`), `status_details` (`reason`,
//! `error`) and `usage` (`input_tokens`, `output_tokens`, `total_tokens`,
//! `input_token_details.cached_tokens`). The client asks with
//! `response.create`; the server may also start responses itself (voice
//! activity detection).
//!
//! Responses over WebSocket: the client sends `response.create` events
//! whose body is a Responses request (`model`, `input`, …); the server
//! answers with the same events as the SSE stream (`response.created` …
//! `response.completed` / `response.incomplete` / `response.failed`, or
//! `error`), parsed by the SSE stream's parser ([`super::openai::Responses`]).
//!
//! Attribution of bytes: the client's messages since the previous response
//! started (its `response.create`, the conversation items it added) belong
//! to the next response; the server's messages while a response is in
//! flight belong to it (to the newest when several are). Messages outside
//! any response (session events) belong to none, so the responses' bytes
//! add up to at most the session's.
//!
//! Text: when the route captures bodies ([`Session::capturing`]), the same
//! attribution decides which messages become a response's bodies
//! ([`Frames`]: whole JSON messages, one per line, within the bound), read
//! by the exporters into structured content (`messages::websocket`).
//!
//! Bounded: at most [`MAX_OPEN`] requests and responses are tracked at
//! once; past that the oldest is written as truncated. Kept text: at most
//! `captureBody.maxBytes` per response and direction, [`HELD_FACTOR`] ×
//! that per session.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Deserialize;

use super::de::BStr;
use super::openai::{self, Responses};
use super::{Api, Findings, ParseError, Provider, Target};
use crate::providers::Known;
use crate::record::{now_unix_nanos, Record};
use crate::semconv as sc;

/// Requests (or responses) tracked at once in one session.
pub const MAX_OPEN: usize = 64;

/// `egret.parse.error` of a response one of whose messages was larger
/// than the parser's cap (relayed, not parsed).
pub const MESSAGE_TOO_LARGE: &str = "websocket_message_too_large";

/// Which API a WebSocket session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `…/realtime`.
    Realtime,
    /// `…/responses`.
    Responses,
}

impl Flavor {
    /// The API of a WebSocket upgrade to `path` (query allowed), and the
    /// `gen_ai.provider.name` to report: the route's target when it has one
    /// in the OpenAI format, else a known provider of that format at
    /// `host` (OpenAI, Azure OpenAI, …). `None` when the session is only
    /// relayed.
    pub fn detect(
        target: Option<&Target>,
        host: &str,
        path: &str,
    ) -> Option<(Flavor, Option<String>)> {
        let name = match target {
            Some(t) if t.format == Provider::OpenAi => t.name.as_deref().map(str::to_owned),
            Some(_) => return None,
            None => match Known::by_host(host) {
                Some(k) if k.format == Provider::OpenAi => Some(k.name.to_owned()),
                _ => return None,
            },
        };
        let p = path.split(['?', '#']).next().unwrap_or("");
        let p = p.strip_suffix('/').unwrap_or(p);
        let flavor = if p.ends_with("/realtime") {
            Flavor::Realtime
        } else if p.ends_with("/responses") {
            Flavor::Responses
        } else {
            return None;
        };
        Some((flavor, name))
    }
}

/// A `response.create` the server has not answered yet.
#[derive(Debug)]
struct Request {
    model: Option<String>,
    client_bytes: u64,
    /// The client's messages since the previous request, this one's last.
    client: Frames,
    error: Option<&'static str>,
    started: Instant,
    started_ns: i64,
}

/// One model response of a session, finished or cut.
#[derive(Debug)]
pub struct Turn {
    pub(crate) findings: Findings,
    /// `gen_ai.provider.name` (the session's).
    provider: Option<String>,
    /// The model the request named (Responses), else the session's.
    pub request_model: Option<String>,
    /// Bytes of the frames that made up the response, per direction.
    pub client_bytes: u64,
    pub server_bytes: u64,
    /// The frames' text (when the route captures bodies), per direction.
    client: Frames,
    server: Frames,
    /// `egret.genai.api`: the session's API.
    api: Option<Api>,
    /// `egret.parse.error`, when the response could not be read whole.
    pub error: Option<&'static str>,
    started: Instant,
    started_ns: i64,
}

impl Turn {
    fn new(req: Option<Request>, pending_client: u64, pending: Frames) -> Turn {
        let (model, client_bytes, client, error, started, started_ns) = match req {
            Some(r) => (
                r.model,
                r.client_bytes,
                r.client,
                r.error,
                r.started,
                r.started_ns,
            ),
            None => (
                None,
                pending_client,
                pending,
                None,
                Instant::now(),
                now_unix_nanos(),
            ),
        };
        Turn {
            findings: Findings::default(),
            provider: None,
            request_model: model,
            client_bytes,
            server_bytes: 0,
            client,
            server: Frames::default(),
            api: None,
            error,
            started,
            started_ns,
        }
    }

    fn flag(&mut self, e: &'static str) {
        self.error.get_or_insert(e);
    }

    /// Writes the response's attributes: `gen_ai.*` (provider, operation
    /// `chat`, models, id, finish reason = the response status, usage,
    /// `request.stream = true`), its frames' bytes (`egret.req.bytes` /
    /// `egret.resp.bytes`) and text (the request and response bodies, see
    /// [`Frames`]), times, `egret.parse.error` and the provider's error
    /// code as `error.type` (when the record has none).
    pub fn write(mut self, rec: &mut Record) {
        rec.set_opt(sc::GENAI_API, self.api.and_then(Api::name));
        let client = std::mem::take(&mut self.client);
        let server = std::mem::take(&mut self.server);
        let cut = client.cut || server.cut;
        let kept = client.write(
            rec,
            sc::REQUEST_BODY,
            sc::REQUEST_BODY_B64,
            sc::REQ_TRUNCATED,
        ) + server.write(
            rec,
            sc::RESPONSE_BODY,
            sc::RESPONSE_BODY_B64,
            sc::RESP_TRUNCATED,
        );
        rec.set(sc::BODY_TRUNCATED, cut);
        rec.set(sc::BODY_BYTES, kept);
        let f = &mut self.findings;
        if let Some(p) = self.provider.take() {
            rec.set(sc::GEN_AI_SYSTEM, p.clone());
            rec.set(sc::GEN_AI_PROVIDER_NAME, p);
        }
        rec.set(sc::GEN_AI_OPERATION_NAME, "chat");
        rec.set_opt(sc::GEN_AI_REQUEST_MODEL, self.request_model.take());
        rec.set(sc::GEN_AI_REQUEST_STREAM, true);
        rec.set_opt(sc::GEN_AI_RESPONSE_MODEL, f.response_model.take());
        rec.set_opt(sc::GEN_AI_RESPONSE_ID, f.response_id.take());
        if !f.finish_reasons.is_empty() {
            f.finish_reasons.sort_by_key(|(i, _)| *i);
            let reasons: Vec<String> = f.finish_reasons.drain(..).map(|(_, r)| r).collect();
            rec.set(sc::GEN_AI_RESPONSE_FINISH_REASONS, reasons);
        }
        rec.set_opt(sc::GEN_AI_USAGE_INPUT_TOKENS, f.input_tokens);
        rec.set_opt(sc::GEN_AI_USAGE_OUTPUT_TOKENS, f.output_tokens);
        rec.set_opt(
            sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
            f.cache_read_input_tokens,
        );
        rec.set_opt(
            sc::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
            f.reasoning_output_tokens,
        );
        f.modality.write(rec);
        rec.set(sc::REQ_BYTES, self.client_bytes);
        rec.set(sc::RESP_BYTES, self.server_bytes);
        rec.set(sc::START_TIME, self.started_ns);
        rec.set(sc::END_TIME, now_unix_nanos());
        rec.set(sc::DURATION_MS, self.started.elapsed().as_secs_f64() * 1e3);
        let error = self.error.or(f.error.map(ParseError::as_str));
        rec.set_opt(sc::PARSE_ERROR, error);
        if rec.get(sc::ERROR_TYPE).is_none() {
            rec.set_opt(sc::ERROR_TYPE, f.error_type.take());
        }
    }
}

/// How much message text a session keeps for the records' bodies:
/// `max` per response and direction (`captureBody.maxBytes`), and at most
/// [`HELD_FACTOR`] × `max` across every response of the session not yet
/// written.
#[derive(Debug, Clone, Copy)]
struct Keep {
    max: usize,
    held: usize,
}

/// Bound on a session's kept text, in units of `captureBody.maxBytes`.
pub const HELD_FACTOR: usize = 4;

/// One direction's messages of one response, as the record's body: whole
/// JSON messages, one per line (NDJSON), as sent — a JSON text holds no
/// line break but as whitespace, which becomes a space. A message that
/// does not fit is not kept, nor is any after it (`cut`): the body is a
/// prefix of the messages, each line whole JSON.
#[derive(Debug, Default)]
pub struct Frames {
    text: String,
    cut: bool,
}

impl Frames {
    /// Keeps `data` (a whole JSON message) when it fits.
    fn keep(&mut self, data: &[u8], keep: &mut Option<Keep>) {
        let Some(k) = keep.as_mut() else {
            return;
        };
        let need = data.len() + usize::from(!self.text.is_empty());
        let fits = self.text.len() + need <= k.max && k.held + need <= HELD_FACTOR * k.max;
        let Ok(s) = std::str::from_utf8(data) else {
            self.cut = true;
            return;
        };
        if self.cut || !fits {
            self.cut = true;
            return;
        }
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        let at = self.text.len();
        self.text.push_str(s);
        if s.contains(['\n', '\r']) {
            let tail: String = self.text[at..]
                .chars()
                .map(|c| if matches!(c, '\n' | '\r') { ' ' } else { c })
                .collect();
            self.text.truncate(at);
            self.text.push_str(&tail);
        }
        k.held += need;
    }

    /// A message of this direction was not kept (too large to parse, not
    /// JSON).
    fn lost(&mut self, keep: &Option<Keep>) {
        if keep.is_some() {
            self.cut = true;
        }
    }

    /// Moves the frames out (for a request that becomes a response).
    fn take(&mut self) -> Frames {
        std::mem::take(self)
    }

    fn held(&self) -> usize {
        self.text.len()
    }

    /// The body attributes of one direction; returns the bytes kept.
    fn write(
        self,
        rec: &mut Record,
        body: &'static str,
        b64: &'static str,
        truncated: &'static str,
    ) -> u64 {
        rec.set(truncated, self.cut);
        if self.text.is_empty() {
            return 0;
        }
        let n = self.text.len() as u64;
        rec.set(body, self.text);
        rec.set(b64, false);
        n
    }
}

/// An event's type and what the session reads from it.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<BStr<'a>>,
    #[serde(borrow)]
    model: Option<BStr<'a>>,
    #[serde(borrow)]
    session: Option<SessionObj<'a>>,
    #[serde(borrow)]
    response: Option<RtResponse<'a>>,
    #[serde(borrow)]
    error: Option<RtError<'a>>,
    /// `error` events of the SSE shape carry the code at the top level.
    #[serde(borrow, default, deserialize_with = "code")]
    code: Option<BStr<'a>>,
}

#[derive(Deserialize)]
struct SessionObj<'a> {
    #[serde(borrow)]
    model: Option<BStr<'a>>,
}

/// A Realtime `response` object (and, for `response.create` from a
/// Responses client, nothing we read).
#[derive(Deserialize)]
struct RtResponse<'a> {
    #[serde(borrow)]
    id: Option<BStr<'a>>,
    #[serde(borrow)]
    status: Option<BStr<'a>>,
    #[serde(borrow)]
    status_details: Option<RtStatus<'a>>,
    usage: Option<RtUsage>,
}

#[derive(Deserialize)]
struct RtStatus<'a> {
    #[serde(borrow)]
    reason: Option<BStr<'a>>,
    #[serde(borrow)]
    error: Option<RtError<'a>>,
}

#[derive(Deserialize)]
struct RtError<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<BStr<'a>>,
    #[serde(borrow, default, deserialize_with = "code")]
    code: Option<BStr<'a>>,
}

impl RtError<'_> {
    fn error_type(&self) -> &str {
        self.code
            .as_ref()
            .or(self.kind.as_ref())
            .map_or("error", BStr::as_str)
    }
}

/// `code` as a string; anything else (null, a number) is none.
fn code<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BStr<'a>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum C<'a> {
        S(#[serde(borrow)] BStr<'a>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<C<'a>>::deserialize(d)? {
        Some(C::S(s)) => Some(s),
        _ => None,
    })
}

#[derive(Deserialize, Clone, Copy)]
struct RtUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_token_details: Option<openai::Details>,
    output_token_details: Option<openai::OutputDetails>,
}

impl RtResponse<'_> {
    fn apply(&self, f: &mut Findings) {
        if let Some(id) = &self.id {
            Findings::set_str(&mut f.response_id, id.as_str());
        }
        let reason = self.status_details.as_ref().and_then(|d| d.reason.as_ref());
        match self.status.as_ref().map(BStr::as_str) {
            Some("incomplete") => {
                f.set_reason(0, reason.map_or("incomplete", BStr::as_str));
            }
            Some(s @ ("completed" | "failed" | "cancelled")) => f.set_reason(0, s),
            _ => {}
        }
        if let Some(e) = self.status_details.as_ref().and_then(|d| d.error.as_ref()) {
            Findings::set_str(&mut f.error_type, e.error_type());
        }
        if let Some(u) = self.usage {
            f.input_tokens = u.input_tokens.or(f.input_tokens);
            f.output_tokens = u.output_tokens.or(f.output_tokens);
            if let Some(d) = u.input_token_details {
                if let Some(n) = d.cached_tokens {
                    f.cache_read_input_tokens = Some(n);
                }
                d.modality(&mut f.modality);
            }
            if let Some(d) = u.output_token_details {
                d.modality(&mut f.modality);
            }
        }
    }
}

/// One WebSocket session's parse state. See the module docs.
#[derive(Debug)]
pub struct Session {
    flavor: Flavor,
    provider: Option<String>,
    /// `?model=` of the upgrade (Realtime).
    query_model: Option<String>,
    /// The model `session.created` / `session.updated` named.
    session_model: Option<String>,
    requested: VecDeque<Request>,
    /// Responses started and not done, oldest first.
    open: VecDeque<Turn>,
    /// Client bytes not yet attributed to a response.
    client_bytes: u64,
    /// A client message too large to parse since the last request.
    client_error: Option<&'static str>,
    /// The client's messages not yet attributed to a request.
    client_frames: Frames,
    /// The text bound, when the route captures bodies.
    keep: Option<Keep>,
    responses: Responses,
    /// Turns written so far.
    pub turns: u64,
    /// Messages skipped for their size.
    pub skipped: u64,
}

impl Session {
    /// A session of `flavor` with `provider` (`gen_ai.provider.name`),
    /// upgraded at `path_and_query`.
    pub fn new(flavor: Flavor, provider: Option<String>, path_and_query: &str) -> Session {
        let query_model = path_and_query
            .split_once('?')
            .and_then(|(_, q)| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("model="))
                    .map(percent_decode)
            })
            .filter(|m| !m.is_empty());
        Session {
            flavor,
            provider,
            query_model,
            session_model: None,
            requested: VecDeque::new(),
            open: VecDeque::new(),
            client_bytes: 0,
            client_error: None,
            client_frames: Frames::default(),
            keep: None,
            responses: Responses,
            turns: 0,
            skipped: 0,
        }
    }

    /// Keeps the messages' text for the records' bodies, up to `max` bytes
    /// per response and direction (`captureBody.maxBytes`; see [`Frames`]).
    pub fn capturing(mut self, max: Option<usize>) -> Session {
        self.keep = max.map(|max| Keep { max, held: 0 });
        self
    }

    /// The session's API.
    pub fn api(&self) -> Api {
        match self.flavor {
            Flavor::Realtime => Api::OpenAiRealtime,
            Flavor::Responses => Api::OpenAiResponsesWebSocket,
        }
    }

    /// A whole message from the client (`text`: a text message).
    pub fn on_client(&mut self, text: bool, data: &[u8], wire: u64, done: &mut impl FnMut(Turn)) {
        self.client_bytes += wire;
        if !text {
            return;
        }
        let Ok(ev) = serde_json::from_slice::<Event<'_>>(data) else {
            self.client_frames.lost(&self.keep);
            return;
        };
        self.client_frames.keep(data, &mut self.keep);
        if ev.kind.as_ref().map(BStr::as_str) != Some("response.create") {
            return;
        }
        let model = match self.flavor {
            Flavor::Responses => ev.model.map(|m| m.0.into_owned()),
            Flavor::Realtime => None,
        };
        if self.requested.len() >= MAX_OPEN {
            if let Some(r) = self.requested.pop_front() {
                self.emit_cut(Turn::new(Some(r), 0, Frames::default()), done);
            }
        }
        self.requested.push_back(Request {
            model,
            client_bytes: std::mem::take(&mut self.client_bytes),
            client: self.client_frames.take(),
            error: self.client_error.take(),
            started: Instant::now(),
            started_ns: now_unix_nanos(),
        });
    }

    /// A client message too large to parse (relayed whole).
    pub fn on_client_skipped(&mut self, wire: u64) {
        self.client_bytes += wire;
        self.client_frames.lost(&self.keep);
        self.skipped += 1;
        self.client_error = Some(MESSAGE_TOO_LARGE);
    }

    /// A server message too large to parse (relayed whole).
    pub fn on_server_skipped(&mut self, wire: u64) {
        self.skipped += 1;
        if let Some(t) = self.open.back_mut() {
            t.server_bytes += wire;
            t.server.lost(&self.keep);
            t.flag(MESSAGE_TOO_LARGE);
        }
    }

    /// Any other server frame (control frames, binary messages).
    pub fn on_server_other(&mut self, wire: u64) {
        if let Some(t) = self.open.back_mut() {
            t.server_bytes += wire;
        }
    }

    /// A whole message from the server; `done` gets the responses it ends.
    pub fn on_server(&mut self, text: bool, data: &[u8], wire: u64, done: &mut impl FnMut(Turn)) {
        if !text {
            return self.on_server_other(wire);
        }
        let ev = match serde_json::from_slice::<Event<'_>>(data) {
            Ok(ev) => ev,
            Err(_) => {
                if let Some(t) = self.open.back_mut() {
                    t.server_bytes += wire;
                    t.server.lost(&self.keep);
                    t.findings.flag(ParseError::InvalidJson);
                }
                return;
            }
        };
        let kind = ev.kind.as_ref().map_or("", BStr::as_str);
        match kind {
            "session.created" | "session.updated" => {
                if let Some(m) = ev.session.as_ref().and_then(|s| s.model.as_ref()) {
                    Findings::set_str(&mut self.session_model, m.as_str());
                }
            }
            "response.created" => {
                if self.open.len() >= MAX_OPEN {
                    if let Some(t) = self.open.pop_front() {
                        self.emit_cut(t, done);
                    }
                }
                let req = self.requested.pop_front();
                let (pending, frames) = if req.is_none() {
                    (
                        std::mem::take(&mut self.client_bytes),
                        self.client_frames.take(),
                    )
                } else {
                    (0, Frames::default())
                };
                let mut t = Turn::new(req, pending, frames);
                t.server_bytes = wire;
                t.server.keep(data, &mut self.keep);
                self.apply(&mut t, kind, data, ev.response.as_ref());
                self.open.push_back(t);
                return;
            }
            _ => {}
        }
        let terminal = match self.flavor {
            Flavor::Realtime => kind == "response.done",
            Flavor::Responses => matches!(
                kind,
                "response.completed" | "response.incomplete" | "response.failed"
            ),
        };
        if terminal {
            // The response it names, else the newest.
            let id = ev.response.as_ref().and_then(|r| r.id.as_ref());
            let at = id
                .and_then(|id| {
                    self.open
                        .iter()
                        .position(|t| t.findings.response_id.as_deref() == Some(id.as_str()))
                })
                .or_else(|| self.open.len().checked_sub(1));
            let mut t = match at.and_then(|i| self.open.remove(i)) {
                Some(t) => t,
                // Never saw it start: the request it answers, if any.
                None => match self.requested.pop_front() {
                    Some(r) => Turn::new(Some(r), 0, Frames::default()),
                    None => Turn::new(
                        None,
                        std::mem::take(&mut self.client_bytes),
                        self.client_frames.take(),
                    ),
                },
            };
            t.server_bytes += wire;
            t.server.keep(data, &mut self.keep);
            self.apply(&mut t, kind, data, ev.response.as_ref());
            return self.emit(t, done);
        }
        if kind == "error" {
            let code = ev
                .error
                .as_ref()
                .map(RtError::error_type)
                .or(ev.code.as_ref().map(BStr::as_str))
                .unwrap_or("error");
            // Responses: an error ends the response in flight (as in the
            // SSE stream). Either API: an error with no response started
            // answers the oldest request.
            let t = match self.flavor {
                Flavor::Responses => self.open.pop_back(),
                Flavor::Realtime => None,
            };
            let t = t.or_else(|| {
                if self.open.is_empty() {
                    self.requested
                        .pop_front()
                        .map(|r| Turn::new(Some(r), 0, Frames::default()))
                } else {
                    None
                }
            });
            if let Some(mut t) = t {
                t.server_bytes += wire;
                t.server.keep(data, &mut self.keep);
                Findings::set_str(&mut t.findings.error_type, code);
                return self.emit(t, done);
            }
            if let Some(t) = self.open.back_mut() {
                t.server.keep(data, &mut self.keep);
            }
            return self.on_server_other(wire);
        }
        if let Some(t) = self.open.back_mut() {
            t.server_bytes += wire;
            t.server.keep(data, &mut self.keep);
            if self.flavor == Flavor::Responses && !kind.ends_with(".delta") {
                self.responses.event(kind, data, &mut t.findings);
            }
        }
    }

    fn apply(&mut self, t: &mut Turn, kind: &str, data: &[u8], rt: Option<&RtResponse<'_>>) {
        match self.flavor {
            Flavor::Realtime => {
                if let Some(r) = rt {
                    r.apply(&mut t.findings);
                }
            }
            Flavor::Responses => self.responses.event(kind, data, &mut t.findings),
        }
    }

    /// The direction from `client` (or the server) stopped being parsed.
    pub fn on_frame_error(&mut self) {
        for t in &mut self.open {
            t.findings.flag(ParseError::InvalidJson);
        }
    }

    fn emit(&mut self, mut t: Turn, done: &mut impl FnMut(Turn)) {
        t.provider.clone_from(&self.provider);
        t.api = Some(self.api());
        if let Some(k) = self.keep.as_mut() {
            k.held = k.held.saturating_sub(t.client.held() + t.server.held());
        }
        if t.request_model.is_none() {
            t.request_model = self
                .query_model
                .clone()
                .or_else(|| self.session_model.clone());
        }
        if t.findings.response_model.is_none() && self.flavor == Flavor::Realtime {
            t.findings.response_model = self.session_model.clone();
        }
        self.turns += 1;
        done(t);
    }

    fn emit_cut(&mut self, mut t: Turn, done: &mut impl FnMut(Turn)) {
        t.flag(ParseError::Truncated.as_str());
        self.emit(t, done);
    }

    /// The session ended: every response still open, and every request
    /// never answered, is written as truncated.
    pub fn finish(&mut self, done: &mut impl FnMut(Turn)) {
        while let Some(t) = self.open.pop_front() {
            self.emit_cut(t, done);
        }
        while let Some(r) = self.requested.pop_front() {
            self.emit_cut(Turn::new(Some(r), 0, Frames::default()), done);
        }
    }
}

/// `%XX` escapes of a query value decoded (`+` is a space); invalid
/// escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn run(flavor: Flavor, path: &str, script: &[(bool, &str)]) -> (Vec<Record>, Session) {
        run_capturing(flavor, path, script, None)
    }

    pub(crate) fn run_capturing(
        flavor: Flavor,
        path: &str,
        script: &[(bool, &str)],
        capture: Option<usize>,
    ) -> (Vec<Record>, Session) {
        let mut s = Session::new(flavor, Some("openai".into()), path).capturing(capture);
        let mut turns = Vec::new();
        let mut done = |t: Turn| turns.push(t);
        for (client, msg) in script {
            let wire = msg.len() as u64 + 2;
            if *client {
                s.on_client(true, msg.as_bytes(), wire, &mut done);
            } else {
                s.on_server(true, msg.as_bytes(), wire, &mut done);
            }
        }
        s.finish(&mut done);
        let recs = turns
            .into_iter()
            .map(|t| {
                let mut r = Record::new("transaction");
                t.write(&mut r);
                r
            })
            .collect();
        (recs, s)
    }

    const DONE: &str = r#"{"type":"response.done","event_id":"e9","response":{"object":"realtime.response","id":"resp_1","status":"completed","status_details":null,"output":[],"usage":{"total_tokens":30,"input_tokens":12,"output_tokens":18,"input_token_details":{"cached_tokens":4,"text_tokens":12,"audio_tokens":0},"output_token_details":{"text_tokens":18,"audio_tokens":0}}}}"#;

    #[test]
    fn realtime_responses_get_the_session_model_and_usage() {
        let script = [
            (
                false,
                r#"{"type":"session.created","event_id":"e1","session":{"type":"realtime","model":"gpt-realtime-2025-08-28","output_modalities":["audio"]}}"#,
            ),
            (
                true,
                r#"{"type":"session.update","session":{"type":"realtime","output_modalities":["text"]}}"#,
            ),
            (
                false,
                r#"{"type":"session.updated","event_id":"e2","session":{"type":"realtime","model":"gpt-realtime-2025-08-28"}}"#,
            ),
            (
                true,
                r#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hi there"}]}}"#,
            ),
            (true, r#"{"type":"response.create"}"#),
            (
                false,
                r#"{"type":"response.created","event_id":"e3","response":{"id":"resp_1","status":"in_progress","usage":null}}"#,
            ),
            (
                false,
                r#"{"type":"response.output_text.delta","event_id":"e4","response_id":"resp_1","delta":"Hello"}"#,
            ),
            (false, DONE),
            (
                true,
                r#"{"type":"response.create","response":{"output_modalities":["text"]}}"#,
            ),
            (
                false,
                r#"{"type":"response.created","event_id":"e5","response":{"id":"resp_2","status":"in_progress"}}"#,
            ),
            (
                false,
                r#"{"type":"response.done","event_id":"e6","response":{"id":"resp_2","status":"incomplete","status_details":{"type":"incomplete","reason":"max_output_tokens"},"usage":{"input_tokens":40,"output_tokens":2}}}"#,
            ),
        ];
        let (recs, s) = run(Flavor::Realtime, "/v1/realtime?model=gpt-realtime", &script);
        assert_eq!(recs.len(), 2);
        assert_eq!(s.turns, 2);
        let r = &recs[0];
        assert_eq!(r.get_str(sc::GEN_AI_PROVIDER_NAME), Some("openai"));
        assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"));
        assert_eq!(r.get_str(sc::GEN_AI_REQUEST_MODEL), Some("gpt-realtime"));
        assert_eq!(
            r.get_str(sc::GEN_AI_RESPONSE_MODEL),
            Some("gpt-realtime-2025-08-28")
        );
        assert_eq!(r.get_str(sc::GEN_AI_RESPONSE_ID), Some("resp_1"));
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(12));
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(18));
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS), Some(4));
        // The modality split: text as reported, audio reported as 0 is
        // left out (the conventions: "when reported and non-zero").
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_TEXT_INPUT_TOKENS), Some(12));
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_TEXT_OUTPUT_TOKENS), Some(18));
        assert_eq!(r.get(sc::GEN_AI_USAGE_AUDIO_INPUT_TOKENS), None);
        assert_eq!(r.get(sc::GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS), None);
        assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
        assert!(r.get(sc::PARSE_ERROR).is_none());
        // Client bytes: session.update, the item and response.create.
        let client: u64 = script[1..5]
            .iter()
            .filter(|(c, _)| *c)
            .map(|(_, m)| m.len() as u64 + 2)
            .sum();
        assert_eq!(r.get_i64(sc::REQ_BYTES), Some(client as i64));
        let server: u64 = script[5..8].iter().map(|(_, m)| m.len() as u64 + 2).sum();
        assert_eq!(r.get_i64(sc::RESP_BYTES), Some(server as i64));
        let r = &recs[1];
        assert_eq!(r.get_str(sc::GEN_AI_RESPONSE_ID), Some("resp_2"));
        assert_eq!(
            r.get(sc::GEN_AI_RESPONSE_FINISH_REASONS),
            Some(&vec!["max_output_tokens".to_owned()].into())
        );
    }

    #[test]
    fn responses_over_websocket_reuse_the_stream_parser() {
        let script = [
            (
                true,
                r#"{"type":"response.create","model":"gpt-4.1-mini","input":"two words"}"#,
            ),
            (
                false,
                r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_a","object":"response","model":"gpt-4.1-mini-2025-04-14","status":"in_progress","usage":null}}"#,
            ),
            (
                false,
                r#"{"type":"response.output_text.delta","sequence_number":1,"delta":"Hi"}"#,
            ),
            (
                false,
                r#"{"type":"response.completed","sequence_number":2,"response":{"id":"resp_a","object":"response","model":"gpt-4.1-mini-2025-04-14","status":"completed","usage":{"input_tokens":2,"output_tokens":1,"total_tokens":3,"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}}}}"#,
            ),
            (
                true,
                r#"{"type":"response.create","model":"gpt-4.1","input":"x"}"#,
            ),
            (
                false,
                r#"{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"model_not_found","message":"no"}}"#,
            ),
            (
                true,
                r#"{"type":"response.create","model":"gpt-4.1-mini","input":"cut"}"#,
            ),
            (
                false,
                r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_c","model":"gpt-4.1-mini","status":"in_progress"}}"#,
            ),
        ];
        let (recs, _) = run(Flavor::Responses, "/v1/responses", &script);
        assert_eq!(recs.len(), 3);
        let r = &recs[0];
        assert_eq!(r.get_str(sc::GEN_AI_REQUEST_MODEL), Some("gpt-4.1-mini"));
        assert_eq!(
            r.get_str(sc::GEN_AI_RESPONSE_MODEL),
            Some("gpt-4.1-mini-2025-04-14")
        );
        assert_eq!(r.get_str(sc::GEN_AI_RESPONSE_ID), Some("resp_a"));
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(2));
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(1));
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS), Some(0));
        assert!(r.get(sc::PARSE_ERROR).is_none());
        // The failed request: its error code.
        let r = &recs[1];
        assert_eq!(r.get_str(sc::GEN_AI_REQUEST_MODEL), Some("gpt-4.1"));
        assert_eq!(r.get_str(sc::ERROR_TYPE), Some("model_not_found"));
        // The session ended mid-response: a record, truncated.
        let r = &recs[2];
        assert_eq!(r.get_str(sc::GEN_AI_RESPONSE_ID), Some("resp_c"));
        assert_eq!(r.get_str(sc::PARSE_ERROR), Some("truncated"));
        assert!(r.get(sc::GEN_AI_USAGE_INPUT_TOKENS).is_none());
    }

    #[test]
    fn oversized_messages_flag_their_response() {
        let mut s = Session::new(Flavor::Realtime, None, "/v1/realtime?model=m%2Dx");
        let mut turns = Vec::new();
        s.on_client(true, br#"{"type":"response.create"}"#, 30, &mut |t| {
            turns.push(t)
        });
        s.on_server(
            true,
            br#"{"type":"response.created","response":{"id":"r"}}"#,
            50,
            &mut |t| turns.push(t),
        );
        s.on_server_skipped(1 << 20);
        s.on_server(true, DONE.replace("resp_1", "r").as_bytes(), 10, &mut |t| {
            turns.push(t)
        });
        assert_eq!(s.skipped, 1);
        let t = turns.pop().unwrap();
        assert_eq!(t.server_bytes, 50 + (1 << 20) + 10);
        assert_eq!(t.error, Some(MESSAGE_TOO_LARGE));
        let mut r = Record::new("transaction");
        t.write(&mut r);
        assert_eq!(r.get_str(sc::GEN_AI_REQUEST_MODEL), Some("m-x"));
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(18));
        // A request never answered is not a silent gap either.
        s.on_client(true, br#"{"type":"response.create"}"#, 30, &mut |t| {
            turns.push(t)
        });
        s.finish(&mut |t| turns.push(t));
        assert_eq!(turns.len(), 1);
        assert_eq!(turns[0].error, Some("truncated"));
    }

    #[test]
    fn flavors_are_detected_for_openai_format_providers_only() {
        let d = |t: Option<Target>, host: &str, path: &str| Flavor::detect(t.as_ref(), host, path);
        let openai = Some("openai".to_owned());
        assert_eq!(
            d(None, "api.openai.com", "/v1/realtime?model=x"),
            Some((Flavor::Realtime, openai.clone()))
        );
        assert_eq!(
            d(None, "api.openai.com:443", "/v1/responses"),
            Some((Flavor::Responses, openai.clone()))
        );
        assert_eq!(d(None, "example.com", "/v1/realtime"), None);
        assert_eq!(
            d(
                Some(Target::from(Provider::OpenAi)),
                "gw.local",
                "/openai/v1/realtime"
            ),
            Some((Flavor::Realtime, openai))
        );
        assert_eq!(
            d(
                Some(Target::from(Provider::Anthropic)),
                "api.openai.com",
                "/v1/realtime"
            ),
            None
        );
        assert_eq!(d(None, "api.openai.com", "/v1/chat/completions"), None);
        assert_eq!(d(None, "api.anthropic.com", "/v1/realtime"), None);
    }

    fn lines(r: &Record, key: &str) -> Vec<serde_json::Value> {
        r.get_str(key)
            .unwrap_or("")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each kept line is JSON"))
            .collect()
    }

    #[test]
    fn each_response_keeps_its_messages_one_per_line_within_the_bound() {
        let script = [
            (
                false,
                r#"{"type":"session.created","event_id":"e1","session":{"model":"gpt-realtime"}}"#,
            ),
            (true, r#"{"type":"session.update","session":{"instructions":"Be brief."}}"#),
            // Pretty-printed: its line breaks are whitespace, kept as spaces.
            (
                true,
                "{\"type\":\"conversation.item.create\",\r\n \"item\":{\"type\":\"message\",\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"a\\nb\"}]}}",
            ),
            (true, r#"{"type":"response.create"}"#),
            (
                false,
                r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#,
            ),
            (
                false,
                r#"{"type":"response.output_text.delta","response_id":"resp_1","delta":"Hi"}"#,
            ),
            (
                false,
                r#"{"type":"response.done","response":{"id":"resp_1","status":"completed"}}"#,
            ),
            (true, r#"{"type":"response.create"}"#),
            (
                false,
                r#"{"type":"response.created","response":{"id":"resp_2","status":"in_progress"}}"#,
            ),
            (
                false,
                r#"{"type":"response.done","response":{"id":"resp_2","status":"completed"}}"#,
            ),
        ];
        let (recs, s) = run_capturing(
            Flavor::Realtime,
            "/v1/realtime?model=gpt-realtime",
            &script,
            Some(4096),
        );
        assert_eq!(recs.len(), 2);
        let r = &recs[0];
        assert_eq!(r.get_str(sc::GENAI_API), Some("openai.realtime"));
        let sent = lines(r, sc::REQUEST_BODY);
        let kinds: Vec<&str> = sent.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "session.update",
                "conversation.item.create",
                "response.create"
            ]
        );
        // The string's escaped newline is untouched.
        assert_eq!(sent[1]["item"]["content"][0]["text"], "a\nb");
        let got = lines(r, sc::RESPONSE_BODY);
        let kinds: Vec<&str> = got.iter().map(|v| v["type"].as_str().unwrap()).collect();
        // session.created came before any response: it belongs to none.
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.output_text.delta",
                "response.done"
            ]
        );
        assert_eq!(r.get_bool(sc::REQ_TRUNCATED), Some(false));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(false));
        assert_eq!(r.get_bool(sc::BODY_TRUNCATED), Some(false));
        assert_eq!(r.get_bool(sc::REQUEST_BODY_B64), Some(false));
        let kept = r.get_str(sc::REQUEST_BODY).unwrap().len()
            + r.get_str(sc::RESPONSE_BODY).unwrap().len();
        assert_eq!(r.get_i64(sc::BODY_BYTES), Some(kept as i64));
        assert_eq!(lines(&recs[1], sc::REQUEST_BODY).len(), 1);
        assert_eq!(lines(&recs[1], sc::RESPONSE_BODY).len(), 2);
        // Everything written: nothing held.
        assert_eq!(s.keep.unwrap().held, 0);

        // Not captured: no bodies, nothing said cut.
        let (recs, _) = run(Flavor::Realtime, "/v1/realtime?model=m", &script);
        assert!(recs[0].get(sc::REQUEST_BODY).is_none());
        assert!(recs[0].get(sc::RESPONSE_BODY).is_none());
        assert_eq!(recs[0].get_bool(sc::REQ_TRUNCATED), Some(false));
        assert_eq!(recs[0].get_i64(sc::BODY_BYTES), Some(0));
    }

    #[test]
    fn kept_text_is_a_prefix_of_whole_messages_and_the_session_bound_holds() {
        let big = format!(
            r#"{{"type":"conversation.item.create","item":{{"type":"message","role":"user","content":[{{"type":"input_text","text":"{}"}}]}}}}"#,
            "x".repeat(300)
        );
        let script = [
            (true, r#"{"type":"session.update","session":{}}"#),
            (true, big.as_str()),
            (true, r#"{"type":"response.create"}"#),
            (
                false,
                r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#,
            ),
            (
                false,
                r#"{"type":"response.done","response":{"id":"resp_1","status":"completed"}}"#,
            ),
        ];
        let (recs, _) = run_capturing(Flavor::Realtime, "/v1/realtime", &script, Some(200));
        let r = &recs[0];
        // The message that did not fit is not cut in half, and nothing
        // after it is kept: the first message alone, marked truncated.
        let sent = lines(r, sc::REQUEST_BODY);
        assert_eq!(sent.len(), 1, "{}", r.to_json_line());
        assert_eq!(sent[0]["type"], "session.update");
        assert_eq!(r.get_bool(sc::REQ_TRUNCATED), Some(true));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(false));
        assert_eq!(r.get_bool(sc::BODY_TRUNCATED), Some(true));

        // Six requests never answered, 90 bytes each, bound 100: four fit
        // the session's 4 × 100, the fifth and sixth are cut.
        let pad = |n: usize| {
            let head = r#"{"type":"response.create","pad":""#;
            format!("{head}{}\"}}", "p".repeat(n - head.len() - 2))
        };
        let msgs: Vec<String> = (0..6).map(|_| pad(90)).collect();
        assert_eq!(msgs[0].len(), 90);
        let script: Vec<(bool, &str)> = msgs.iter().map(|m| (true, m.as_str())).collect();
        let (recs, s) = run_capturing(Flavor::Realtime, "/v1/realtime", &script, Some(100));
        let cut: Vec<bool> = recs
            .iter()
            .map(|r| r.get_bool(sc::REQ_TRUNCATED).unwrap())
            .collect();
        assert_eq!(cut, [false, false, false, false, true, true]);
        assert_eq!(s.keep.unwrap().held, 0);
    }
}
