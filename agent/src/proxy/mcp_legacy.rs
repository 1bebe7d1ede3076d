//! MCP's legacy HTTP+SSE transport (protocol revision 2024-11-05): the
//! `POST`s a client sends to the session's endpoint are answered
//! `202 Accepted`, their JSON-RPC responses come later as `message`
//! events on the session's `GET` stream. [`Registry`] pairs them, so each
//! request is still **one record** with its answer, as every other
//! transaction.
//!
//! - The stream's tap ([`StreamHook`]) opens a session when the stream
//!   announces its `endpoint`, hands over each answer as it passes (the
//!   stream is never held), and closes the session when the stream ends.
//! - A `POST` of one JSON-RPC request (id and method) to an open
//!   session's endpoint is *expected* before it goes upstream; its sealed
//!   record is then *attached*. The record is written when both its answer
//!   and the record are in (whichever comes last), completed with the
//!   answer: `egret.mcp.answer = stream`, the response time as its end,
//!   `error.type` (JSON-RPC code or `tool_error`), the answer as its
//!   response body (bounded by the gateway's capture limit).
//! - Without an answer it is written with `error.type = unanswered` and
//!   `egret.mcp.answer` saying why: `timeout` (`node.mcp.unansweredTimeout`,
//!   checked by [`Registry::sweep`]), `stream_closed` (the stream ended:
//!   at once), `agent_shutdown` ([`Registry::drain`]). Nothing is dropped
//!   silently.
//! - Bounded: requests awaiting their answer per invocation and on the
//!   node (`node.mcp`), sessions per invocation and on the node; beyond
//!   them a request is recorded at once with `egret.mcp.answer = overflow`
//!   and counted.
//! - Keys: the invocation id from the connection's attribution (the
//!   kernel's tag or a trusted dialer's header, never the request), the
//!   destination host, the endpoint's path and query, the JSON-RPC id. An
//!   answer on one invocation's stream can only complete that invocation's
//!   requests, whatever the sandbox sends.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{
    config::McpConfig,
    genai::{McpAnswer, McpOutcome},
    record::{now_unix_nanos, Record},
    semconv as sc,
};

/// Open sessions (streams that announced an endpoint) per invocation.
pub const MAX_SESSIONS_PER_INVOCATION: usize = 64;
/// Open sessions on the node.
pub const MAX_SESSIONS: usize = 8192;
/// How long an expected request whose record never came is kept past the
/// timeout (its record, when it comes, is written `unanswered` anyway).
const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// Who a stream or a request belongs to: never anything the sandbox sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub invocation: Arc<str>,
    pub host: Arc<str>,
}

impl Scope {
    /// The scope of a connection's exchange with `host`; `None` without
    /// an attribution (nothing then to keep invocations apart).
    pub fn of(attribution: Option<&crate::attribution::Attribution>, host: &str) -> Option<Scope> {
        let a = attribution?;
        Some(Scope {
            invocation: Arc::from(a.invocation_id.as_str()),
            host: Arc::from(host.to_ascii_lowercase().as_str()),
        })
    }
}

/// One session: a stream's endpoint in its scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    scope: Scope,
    endpoint: Arc<str>,
}

/// An expected request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallKey {
    session: SessionKey,
    id: String,
    seq: u64,
}

/// What [`Registry::expect`] made of a `POST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Not to a known session's endpoint: recorded as any MCP `POST`.
    NoSession,
    /// Awaiting its answer.
    Tracked(CallKey),
    /// To a session, but not followed (`egret.mcp.answer` says why).
    Untracked(&'static str),
}

#[derive(Debug)]
struct Call {
    seq: u64,
    expected: Instant,
    /// Largest response body kept from the answer (`None`: not captured).
    body_max: Option<usize>,
    record: Option<Record>,
    /// The answer and when it came (unix ns).
    answer: Option<(McpAnswer, i64)>,
    /// The answer's body was cut to `body_max`.
    cut: bool,
}

#[derive(Debug, Default)]
struct Session {
    /// The stream is still open.
    open: bool,
    calls: HashMap<String, Call>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<SessionKey, Session>,
    /// Sessions and expected requests per invocation.
    sessions_of: HashMap<Arc<str>, usize>,
    calls_of: HashMap<Arc<str>, usize>,
    calls: usize,
    next_seq: u64,
    /// Shut down: nothing more is awaited.
    closed: bool,
}

/// Counters, by what became of each followed (or refused) request.
#[derive(Debug, Default)]
pub struct Stats {
    pub answered: AtomicU64,
    pub timeout: AtomicU64,
    pub stream_closed: AtomicU64,
    pub agent_shutdown: AtomicU64,
    pub overflow: AtomicU64,
    pub id_reused: AtomicU64,
    /// Streams whose session was not followed (over the session bounds).
    pub sessions_refused: AtomicU64,
}

/// The pending requests of every legacy session. See the module docs.
#[derive(Debug)]
pub struct Registry {
    timeout: Duration,
    max_per_invocation: usize,
    max_total: usize,
    inner: Mutex<Inner>,
    pub stats: Stats,
}

fn dec(map: &mut HashMap<Arc<str>, usize>, k: &Arc<str>) {
    if let Some(n) = map.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Registry {
    pub fn new(cfg: &McpConfig) -> Registry {
        Registry {
            timeout: cfg.unanswered_timeout,
            max_per_invocation: cfg.max_pending_per_invocation,
            max_total: cfg.max_pending,
            inner: Mutex::new(Inner::default()),
            stats: Stats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream of `scope` announced `endpoint` (path and query; `host`:
    /// an absolute endpoint's own host). `None`: not followed (bounds, or
    /// shutting down).
    pub fn open(&self, scope: &Scope, host: Option<&str>, endpoint: &str) -> Option<SessionKey> {
        let key = SessionKey {
            scope: Scope {
                invocation: scope.invocation.clone(),
                host: host.map_or_else(|| scope.host.clone(), Arc::from),
            },
            endpoint: Arc::from(endpoint),
        };
        let mut g = self.lock();
        if g.closed {
            return None;
        }
        if let Some(s) = g.sessions.get_mut(&key) {
            s.open = true;
            return Some(key);
        }
        let of = g
            .sessions_of
            .get(&key.scope.invocation)
            .copied()
            .unwrap_or(0);
        if of >= MAX_SESSIONS_PER_INVOCATION || g.sessions.len() >= MAX_SESSIONS {
            self.stats.sessions_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *g.sessions_of
            .entry(key.scope.invocation.clone())
            .or_default() += 1;
        g.sessions.insert(
            key.clone(),
            Session {
                open: true,
                calls: HashMap::new(),
            },
        );
        Some(key)
    }

    /// The session's stream ended: its requests whose record is in are
    /// written `unanswered` now (`reason`: `stream_closed` or
    /// `agent_shutdown`); the others are when their record comes.
    pub fn close(&self, key: &SessionKey, reason: &'static str) -> Vec<Record> {
        let mut out = Vec::new();
        let mut g = self.lock();
        let Some(s) = g.sessions.get_mut(key) else {
            return out;
        };
        s.open = false;
        let done: Vec<String> = s
            .calls
            .iter()
            .filter(|(_, c)| c.record.is_some() && c.answer.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            if let Some(c) = self.remove_call(&mut g, key, &id) {
                out.extend(c.record.map(|r| self.unanswered(r, reason)));
            }
        }
        self.prune(&mut g, key);
        out
    }

    /// A `POST` to `endpoint` (path and query) of one JSON-RPC request
    /// with `id`, before it goes upstream.
    pub fn expect(
        &self,
        scope: &Scope,
        endpoint: &str,
        id: &str,
        body_max: Option<usize>,
        now: Instant,
    ) -> Expect {
        let key = SessionKey {
            scope: scope.clone(),
            endpoint: Arc::from(endpoint),
        };
        let mut g = self.lock();
        if g.closed || !g.sessions.get(&key).is_some_and(|s| s.open) {
            return Expect::NoSession;
        }
        if g.sessions[&key].calls.contains_key(id) {
            self.stats.id_reused.fetch_add(1, Ordering::Relaxed);
            return Expect::Untracked(sc::MCP_ANSWER_ID_REUSED);
        }
        let of = g.calls_of.get(&scope.invocation).copied().unwrap_or(0);
        if of >= self.max_per_invocation || g.calls >= self.max_total {
            self.stats.overflow.fetch_add(1, Ordering::Relaxed);
            crate::limited!(McpPendingOverflow, warn, "MCP HTTP+SSE: too many requests awaiting their answer; recorded without it (egret.mcp.answer=overflow)");
            return Expect::Untracked(sc::MCP_ANSWER_OVERFLOW);
        }
        g.next_seq += 1;
        let seq = g.next_seq;
        g.calls += 1;
        *g.calls_of.entry(scope.invocation.clone()).or_default() += 1;
        if let Some(s) = g.sessions.get_mut(&key) {
            s.calls.insert(
                id.to_owned(),
                Call {
                    seq,
                    expected: now,
                    body_max,
                    record: None,
                    answer: None,
                    cut: false,
                },
            );
        }
        Expect::Tracked(CallKey {
            session: key,
            id: id.to_owned(),
            seq,
        })
    }

    /// The sealed record of an expected request (`status`: its HTTP
    /// status). Returns it when it is to be written now: completed with its
    /// answer, or `unanswered`, or as it is when the server did not accept
    /// it (`202`) — the answer then was in the response, or there is none.
    pub fn attach(&self, call: &CallKey, mut rec: Record, status: Option<u16>) -> Option<Record> {
        let now = Instant::now();
        let mut g = self.lock();
        let current = g
            .sessions
            .get(&call.session)
            .and_then(|s| s.calls.get(&call.id))
            .is_some_and(|c| c.seq == call.seq);
        if !current {
            // Swept while its record was on its way.
            self.stats.timeout.fetch_add(1, Ordering::Relaxed);
            return Some(self.unanswered(rec, sc::MCP_ANSWER_TIMEOUT));
        }
        if status != Some(202) {
            self.remove_call(&mut g, &call.session, &call.id);
            self.prune(&mut g, &call.session);
            return Some(rec);
        }
        rec.set(sc::MCP_TRANSPORT, sc::MCP_TRANSPORT_SSE);
        let open = g.sessions.get(&call.session).is_some_and(|s| s.open);
        let closed = g.closed;
        let Some(c) = g
            .sessions
            .get_mut(&call.session)
            .and_then(|s| s.calls.get_mut(&call.id))
        else {
            return Some(rec);
        };
        let expired = now.saturating_duration_since(c.expected) >= self.timeout;
        if c.answer.is_none() && open && !closed && !expired {
            c.record = Some(rec);
            return None;
        }
        let c = self.remove_call(&mut g, &call.session, &call.id)?;
        self.prune(&mut g, &call.session);
        Some(match c.answer {
            Some((a, at)) => self.complete(rec, a, at, c.body_max.map(|_| c.cut)),
            None if closed => self.unanswered(rec, sc::MCP_ANSWER_AGENT_SHUTDOWN),
            None if !open => self.unanswered(rec, sc::MCP_ANSWER_STREAM_CLOSED),
            None => self.unanswered(rec, sc::MCP_ANSWER_TIMEOUT),
        })
    }

    /// An answer on `session`'s stream, as it passes. Returns the record
    /// it completes when that record is in.
    pub fn answer(&self, session: &SessionKey, mut a: McpAnswer) -> Option<Record> {
        let at = now_unix_nanos();
        let mut g = self.lock();
        let c = g
            .sessions
            .get_mut(session)
            .and_then(|s| s.calls.get_mut(&a.id))?;
        if c.answer.is_some() {
            return None; // a second answer to one request: the first counts
        }
        // Only what the record may keep stays in memory.
        let max = c.body_max.unwrap_or(0);
        c.cut = a.body.len() > max;
        a.body.truncate(max.min(a.body.len()));
        if c.record.is_none() {
            c.answer = Some((a, at));
            return None;
        }
        let id = a.id.clone();
        let c = self.remove_call(&mut g, session, &id)?;
        self.prune(&mut g, session);
        let cut = c.cut;
        Some(self.complete(c.record?, a, at, c.body_max.map(|_| cut)))
    }

    /// Requests whose answer is overdue: written `unanswered` (`timeout`).
    pub fn sweep(&self, now: Instant) -> Vec<Record> {
        let mut out = Vec::new();
        let mut g = self.lock();
        let mut due: Vec<(SessionKey, String)> = Vec::new();
        for (k, s) in &g.sessions {
            for (id, c) in &s.calls {
                let age = now.saturating_duration_since(c.expected);
                let overdue = match (&c.record, &c.answer) {
                    (Some(_), None) => age >= self.timeout,
                    // The record never came (yet): kept a while longer.
                    (None, _) => age >= self.timeout + ORPHAN_GRACE,
                    (Some(_), Some(_)) => false,
                };
                if overdue {
                    due.push((k.clone(), id.clone()));
                }
            }
        }
        for (k, id) in due {
            if let Some(c) = self.remove_call(&mut g, &k, &id) {
                if let Some(r) = c.record {
                    out.push(self.unanswered(r, sc::MCP_ANSWER_TIMEOUT));
                }
            }
            self.prune(&mut g, &k);
        }
        out
    }

    /// Shutdown: every request whose record is in is written now
    /// (`agent_shutdown`); records still to come are written as they
    /// come. Nothing more is followed.
    pub fn drain(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let mut g = self.lock();
        g.closed = true;
        let keys: Vec<SessionKey> = g.sessions.keys().cloned().collect();
        for k in keys {
            let ids: Vec<String> = g.sessions[&k]
                .calls
                .iter()
                .filter(|(_, c)| c.record.is_some())
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                if let Some(c) = self.remove_call(&mut g, &k, &id) {
                    let Some(r) = c.record else { continue };
                    out.push(match c.answer {
                        Some((a, at)) => self.complete(r, a, at, c.body_max.map(|_| c.cut)),
                        None => self.unanswered(r, sc::MCP_ANSWER_AGENT_SHUTDOWN),
                    });
                }
            }
            if let Some(s) = g.sessions.get_mut(&k) {
                s.open = false;
            }
            self.prune(&mut g, &k);
        }
        out
    }

    /// `endpoint` is an open session's in `scope`.
    pub fn knows(&self, scope: &Scope, endpoint: &str) -> bool {
        let key = SessionKey {
            scope: scope.clone(),
            endpoint: Arc::from(endpoint),
        };
        self.lock().sessions.get(&key).is_some_and(|s| s.open)
    }

    /// Requests awaiting their answer now.
    pub fn pending(&self) -> usize {
        self.lock().calls
    }

    fn remove_call(&self, g: &mut Inner, key: &SessionKey, id: &str) -> Option<Call> {
        let c = g.sessions.get_mut(key)?.calls.remove(id)?;
        g.calls = g.calls.saturating_sub(1);
        dec(&mut g.calls_of, &key.scope.invocation);
        Some(c)
    }

    /// Forgets a closed session once nothing of it is pending.
    fn prune(&self, g: &mut Inner, key: &SessionKey) {
        if g.sessions
            .get(key)
            .is_some_and(|s| !s.open && s.calls.is_empty())
        {
            g.sessions.remove(key);
            dec(&mut g.sessions_of, &key.scope.invocation);
        }
    }

    /// The request's record completed with its answer (`at`: when it
    /// came; `captured`: `Some(cut)` when bodies are captured).
    fn complete(&self, mut rec: Record, a: McpAnswer, at: i64, captured: Option<bool>) -> Record {
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
        rec.set(sc::MCP_TRANSPORT, sc::MCP_TRANSPORT_SSE);
        rec.set(sc::MCP_ANSWER, sc::MCP_ANSWER_STREAM);
        retime(&mut rec, at);
        if let McpOutcome::Error(e) = &a.outcome {
            if rec.get(sc::ERROR_TYPE).is_none() {
                rec.set(sc::ERROR_TYPE, e.as_str());
            }
        }
        rec.set_opt(sc::RPC_RESPONSE_STATUS_CODE, a.rpc_status_code);
        if rec.get(sc::MCP_PROTOCOL_VERSION).is_none()
            && rec.get_str(sc::MCP_METHOD_NAME) == Some("initialize")
        {
            rec.set_opt(sc::MCP_PROTOCOL_VERSION, a.protocol_version);
        }
        if let Some(cut) = captured {
            let body = String::from_utf8_lossy(&a.body).into_owned();
            rec.set(sc::RESPONSE_BODY, body);
            rec.set(sc::RESPONSE_BODY_B64, false);
            rec.set(sc::RESP_TRUNCATED, cut);
            rec.remove(sc::RESPONSE_CONTENT_ENCODING);
            rec.set(sc::RESPONSE_CONTENT_TYPE, "application/json");
        }
        rec
    }

    /// The request's record without an answer (`why`: an
    /// `egret.mcp.answer` value).
    fn unanswered(&self, mut rec: Record, why: &'static str) -> Record {
        let counter = match why {
            sc::MCP_ANSWER_STREAM_CLOSED => &self.stats.stream_closed,
            sc::MCP_ANSWER_AGENT_SHUTDOWN => &self.stats.agent_shutdown,
            _ => &self.stats.timeout,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        rec.set(sc::MCP_TRANSPORT, sc::MCP_TRANSPORT_SSE);
        rec.set(sc::MCP_ANSWER, why);
        if rec.get(sc::ERROR_TYPE).is_none() {
            rec.set(sc::ERROR_TYPE, crate::genai::MCP_UNANSWERED);
        }
        retime(&mut rec, now_unix_nanos());
        rec
    }
}

/// Moves a record's end to `end` (unix ns) — the answer can beat the
/// `202`, then the `202`'s end stays —, keeping its `202` time in
/// `egret.mcp.accepted_ms`.
fn retime(rec: &mut Record, end: i64) {
    if let Some(crate::record::AttrValue::Float(ms)) = rec.get(sc::DURATION_MS) {
        let ms = *ms;
        rec.set(sc::MCP_ACCEPTED_MS, ms);
    }
    let accepted = rec.get_i64(sc::END_TIME).unwrap_or(i64::MIN);
    if let Some(start) = rec.get_i64(sc::START_TIME) {
        if end >= start && end > accepted {
            rec.set(sc::END_TIME, end);
            rec.set(sc::DURATION_MS, (end - start) as f64 / 1e6);
        }
    }
}

/// The stream side: what a legacy stream's response tap does with the
/// events its exchange parsed.
pub struct StreamHook {
    l7: Arc<super::L7>,
    scope: Scope,
    session: Option<SessionKey>,
    events: Vec<crate::genai::StreamEvent>,
}

impl StreamHook {
    pub fn new(l7: Arc<super::L7>, scope: Scope) -> StreamHook {
        StreamHook {
            l7,
            scope,
            session: None,
            events: Vec::new(),
        }
    }

    /// After each chunk: opens the session, writes the records answers
    /// complete.
    pub fn chunk(&mut self, exchange: &mut crate::genai::Exchange) {
        exchange.take_mcp_stream_events(&mut self.events);
        for e in self.events.drain(..) {
            match e {
                crate::genai::StreamEvent::Endpoint {
                    host,
                    path_and_query,
                } => {
                    let reg = &self.l7.mcp;
                    if let Some(old) = self.session.take() {
                        for r in reg.close(&old, sc::MCP_ANSWER_STREAM_CLOSED) {
                            self.l7.emit(r);
                        }
                    }
                    self.session = reg.open(&self.scope, host.as_deref(), &path_and_query);
                }
                crate::genai::StreamEvent::Answer(a) => {
                    let Some(s) = &self.session else { continue };
                    if let Some(r) = self.l7.mcp.answer(s, a) {
                        self.l7.emit(r);
                    }
                }
            }
        }
    }

    /// The stream ended.
    pub fn end(&mut self) {
        let Some(s) = self.session.take() else {
            return;
        };
        let why = if self.l7.drain.started.is_cancelled() {
            sc::MCP_ANSWER_AGENT_SHUTDOWN
        } else {
            sc::MCP_ANSWER_STREAM_CLOSED
        };
        for r in self.l7.mcp.close(&s, why) {
            self.l7.emit(r);
        }
    }
}

impl Drop for StreamHook {
    fn drop(&mut self) {
        self.end();
    }
}

/// Writes the overdue requests every second until `stop` fires; then
/// the rest ([`Registry::drain`]).
pub async fn sweeper(l7: Arc<super::L7>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for r in l7.mcp.sweep(Instant::now()) {
                    l7.emit(r);
                }
            }
            _ = stop.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(timeout: Duration, per_inv: usize, total: usize) -> McpConfig {
        McpConfig {
            unanswered_timeout: timeout,
            max_pending_per_invocation: per_inv,
            max_pending: total,
        }
    }

    fn scope(inv: &str) -> Scope {
        Scope {
            invocation: Arc::from(inv),
            host: Arc::from("mcp.local"),
        }
    }

    fn answer(id: &str, outcome: McpOutcome) -> McpAnswer {
        let code = match &outcome {
            McpOutcome::Error(c) if c != "tool_error" => Some(c.clone()),
            _ => None,
        };
        McpAnswer {
            id: id.to_owned(),
            outcome,
            rpc_status_code: code,
            protocol_version: None,
            body: format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#).into_bytes(),
        }
    }

    fn post_record(method: &str) -> Record {
        let mut r = Record::new(sc::KIND_TRANSACTION);
        r.set(sc::START_TIME, now_unix_nanos() - 5_000_000);
        r.set(sc::DURATION_MS, 2.0);
        r.set(sc::MCP_METHOD_NAME, method);
        r.set(sc::RESPONSE_BODY, "Accepted");
        r
    }

    const EP: &str = "/messages/?session_id=abc";

    fn tracked(e: Expect) -> CallKey {
        match e {
            Expect::Tracked(k) => k,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_is_held_until_its_answer_whichever_comes_first() {
        let reg = Registry::new(&McpConfig::default());
        let s = reg.open(&scope("inv-a"), None, EP).unwrap();
        let now = Instant::now();
        // Record first, answer later.
        let k1 = tracked(reg.expect(&scope("inv-a"), EP, "1", Some(1024), now));
        assert!(reg
            .attach(&k1, post_record("tools/call"), Some(202))
            .is_none());
        assert_eq!(reg.pending(), 1);
        let r = reg
            .answer(&s, answer("1", McpOutcome::Error("tool_error".into())))
            .expect("completed at the answer");
        assert_eq!(r.get_str(sc::MCP_ANSWER), Some("stream"));
        assert_eq!(r.get_str(sc::MCP_TRANSPORT), Some("sse"));
        assert_eq!(r.get_str(sc::ERROR_TYPE), Some("tool_error"));
        assert!(r.get_str(sc::RESPONSE_BODY).unwrap().contains("\"id\":1"));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(false));
        assert!(matches!(
            r.get(sc::MCP_ACCEPTED_MS),
            Some(crate::record::AttrValue::Float(f)) if *f == 2.0
        ));
        assert!(r.get_i64(sc::END_TIME).unwrap() > r.get_i64(sc::START_TIME).unwrap());
        // An answer that beat the 202's end keeps the 202's end.
        let mut late = post_record("ping");
        let end = now_unix_nanos() + 60_000_000_000;
        late.set(sc::END_TIME, end);
        retime(&mut late, now_unix_nanos());
        assert_eq!(late.get_i64(sc::END_TIME), Some(end));
        assert!(
            matches!(late.get(sc::DURATION_MS), Some(crate::record::AttrValue::Float(f)) if *f == 2.0)
        );
        // Answer first (the usual order: it beats the sealed record).
        let k2 = tracked(reg.expect(&scope("inv-a"), EP, "2", None, now));
        assert!(reg
            .answer(&s, answer("2", McpOutcome::Error("-32601".into())))
            .is_none());
        let r = reg
            .attach(&k2, post_record("tools/call"), Some(202))
            .unwrap();
        assert_eq!(r.get_str(sc::ERROR_TYPE), Some("-32601"));
        assert_eq!(r.get_str(sc::RPC_RESPONSE_STATUS_CODE), Some("-32601"));
        // Not captured: the 202's body stays.
        assert_eq!(r.get_str(sc::RESPONSE_BODY), Some("Accepted"));
        assert_eq!(reg.pending(), 0);
        assert_eq!(reg.stats.answered.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_answer_body_is_bounded_by_the_capture_limit() {
        let reg = Registry::new(&McpConfig::default());
        let s = reg.open(&scope("inv-a"), None, EP).unwrap();
        let k = tracked(reg.expect(&scope("inv-a"), EP, "1", Some(8), Instant::now()));
        assert!(reg.answer(&s, answer("1", McpOutcome::Ok)).is_none());
        let r = reg
            .attach(&k, post_record("tools/list"), Some(202))
            .unwrap();
        assert_eq!(r.get_str(sc::RESPONSE_BODY), Some("{\"jsonrp"));
        assert_eq!(r.get_bool(sc::RESP_TRUNCATED), Some(true));
        assert!(r.get(sc::ERROR_TYPE).is_none());
    }

    #[test]
    fn unanswered_requests_time_out_and_close_with_their_stream() {
        let reg = Registry::new(&cfg(Duration::from_secs(5), 10, 10));
        let s = reg.open(&scope("inv-a"), None, EP).unwrap();
        let t0 = Instant::now();
        let k = tracked(reg.expect(&scope("inv-a"), EP, "7", None, t0));
        assert!(reg
            .attach(&k, post_record("tools/call"), Some(202))
            .is_none());
        assert!(reg.sweep(t0 + Duration::from_secs(4)).is_empty());
        let out = reg.sweep(t0 + Duration::from_secs(6));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].get_str(sc::ERROR_TYPE), Some("unanswered"));
        assert_eq!(out[0].get_str(sc::MCP_ANSWER), Some("timeout"));
        // A late answer completes nothing.
        assert!(reg.answer(&s, answer("7", McpOutcome::Ok)).is_none());
        assert_eq!(reg.pending(), 0);

        // The stream ends: pending ones at once; one whose record is still
        // on its way when its record comes.
        let k8 = tracked(reg.expect(&scope("inv-a"), EP, "8", None, t0));
        let k9 = tracked(reg.expect(&scope("inv-a"), EP, "9", None, t0));
        assert!(reg.attach(&k8, post_record("ping"), Some(202)).is_none());
        let out = reg.close(&s, sc::MCP_ANSWER_STREAM_CLOSED);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].get_str(sc::MCP_ANSWER), Some("stream_closed"));
        let r = reg.attach(&k9, post_record("ping"), Some(202)).unwrap();
        assert_eq!(r.get_str(sc::MCP_ANSWER), Some("stream_closed"));
        assert_eq!(r.get_str(sc::ERROR_TYPE), Some("unanswered"));
        // The closed session is gone: later POSTs are plain.
        assert_eq!(
            reg.expect(&scope("inv-a"), EP, "10", None, t0),
            Expect::NoSession
        );
        assert_eq!(reg.pending(), 0);
    }

    #[test]
    fn a_request_the_server_did_not_accept_is_written_as_it_is() {
        let reg = Registry::new(&McpConfig::default());
        reg.open(&scope("inv-a"), None, EP).unwrap();
        let k = tracked(reg.expect(&scope("inv-a"), EP, "1", None, Instant::now()));
        let r = reg
            .attach(&k, post_record("tools/call"), Some(400))
            .unwrap();
        assert!(r.get(sc::MCP_ANSWER).is_none());
        assert!(r.get(sc::ERROR_TYPE).is_none());
        assert_eq!(reg.pending(), 0);
    }

    #[test]
    fn shutdown_writes_every_pending_request() {
        let reg = Registry::new(&McpConfig::default());
        let s = reg.open(&scope("inv-a"), None, EP).unwrap();
        let now = Instant::now();
        let k1 = tracked(reg.expect(&scope("inv-a"), EP, "1", None, now));
        let k2 = tracked(reg.expect(&scope("inv-a"), EP, "2", None, now));
        assert!(reg.attach(&k1, post_record("ping"), Some(202)).is_none());
        let out = reg.drain();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].get_str(sc::MCP_ANSWER), Some("agent_shutdown"));
        assert!(reg.answer(&s, answer("2", McpOutcome::Ok)).is_none());
        let r = reg.attach(&k2, post_record("ping"), Some(202)).unwrap();
        // Its answer came before the shutdown.
        assert_eq!(r.get_str(sc::MCP_ANSWER), Some("stream"));
        assert_eq!(
            reg.expect(&scope("inv-a"), EP, "3", None, now),
            Expect::NoSession
        );
        assert!(reg.open(&scope("inv-a"), None, "/other").is_none());
    }

    #[test]
    fn the_registry_is_bounded_per_invocation_and_in_total() {
        let reg = Registry::new(&cfg(Duration::from_secs(60), 2, 3));
        let now = Instant::now();
        for inv in ["inv-a", "inv-b"] {
            reg.open(&scope(inv), None, EP).unwrap();
        }
        tracked(reg.expect(&scope("inv-a"), EP, "1", None, now));
        tracked(reg.expect(&scope("inv-a"), EP, "2", None, now));
        assert_eq!(
            reg.expect(&scope("inv-a"), EP, "3", None, now),
            Expect::Untracked(sc::MCP_ANSWER_OVERFLOW)
        );
        // Another invocation still has room, up to the node's total.
        tracked(reg.expect(&scope("inv-b"), EP, "1", None, now));
        assert_eq!(
            reg.expect(&scope("inv-b"), EP, "2", None, now),
            Expect::Untracked(sc::MCP_ANSWER_OVERFLOW)
        );
        assert_eq!(reg.stats.overflow.load(Ordering::Relaxed), 2);
        // A reused id is not followed either.
        assert_eq!(
            reg.expect(&scope("inv-a"), EP, "1", None, now),
            Expect::Untracked(sc::MCP_ANSWER_ID_REUSED)
        );
        // Sessions per invocation are bounded too.
        for i in 0..MAX_SESSIONS_PER_INVOCATION {
            let _ = reg.open(&scope("inv-c"), None, &format!("/m?s={i}"));
        }
        assert!(reg.open(&scope("inv-c"), None, "/m?s=last").is_none());
        assert_eq!(reg.stats.sessions_refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn answers_never_cross_invocations() {
        let reg = Registry::new(&McpConfig::default());
        let now = Instant::now();
        // Both invocations use the same endpoint (a hostile sandbox that
        // learnt the other's session id, or a server that reuses them).
        let sa = reg.open(&scope("inv-a"), None, EP).unwrap();
        let sb = reg.open(&scope("inv-b"), None, EP).unwrap();
        let ka = tracked(reg.expect(&scope("inv-a"), EP, "1", None, now));
        assert!(reg
            .attach(&ka, post_record("tools/call"), Some(202))
            .is_none());
        // inv-b's stream answers id 1: nothing of inv-a's completes.
        assert!(reg.answer(&sb, answer("1", McpOutcome::Ok)).is_none());
        assert_eq!(reg.pending(), 1);
        // A POST from inv-c to inv-a's endpoint is not inv-a's.
        assert_eq!(
            reg.expect(&scope("inv-c"), EP, "1", None, now),
            Expect::NoSession
        );
        let r = reg
            .answer(&sa, answer("1", McpOutcome::Error("tool_error".into())))
            .unwrap();
        assert_eq!(r.get_str(sc::ERROR_TYPE), Some("tool_error"));
    }
}
