//! WebSocket sessions: relayed byte for byte after the upgrade, parsed on
//! the side.
//!
//! A WebSocket upgrade (HTTP/1.1 `GET` with `Upgrade: websocket` and
//! `Connection: upgrade`) goes through the same steps as any request
//! (`proxy::http`: route, policy, budget, attribution, trace context) and
//! is forwarded upstream with its upgrade headers, less
//! `Sec-WebSocket-Extensions` (see below). The provider's refusal (any
//! status but 101) goes back like any response. Its 101 goes back to the
//! sandbox, and both connections are handed over (`hyper::upgrade::on`) to
//! [`relay`]: each direction's bytes are written on as soon as they are
//! read, and a copy goes through a passive frame parser
//! ([`crate::genai::websocket`]) into the session parser
//! ([`crate::genai::realtime`]) when the session is an OpenAI Realtime or
//! Responses one.
//!
//! Records: one per model response, written when the response ends (its
//! terminal event) or when the session does (then `egret.parse.error =
//! truncated`), with the session's attribution, trace id and route; and
//! the upgrade's own transaction record (status 101), written when the
//! session ends, with the session's bytes (`egret.req.bytes` /
//! `egret.resp.bytes`: everything after the upgrade, per direction) and
//! L4 window. `egret.websocket.session_id` links them. When the route
//! captures JSON bodies, each response's record also carries its messages'
//! text as its bodies (bounded, see [`crate::genai::realtime`]); the
//! session's record carries none.
//!
//! `permessage-deflate` is not offered upstream: egret removes the
//! sandbox's `Sec-WebSocket-Extensions` from the upgrade request, so the
//! provider answers without extensions and the session is uncompressed —
//! every message parses, with no per-session inflate state (two 32 KiB
//! windows with context takeover) and no compression bomb to bound. The
//! cost is the compression itself, which the official OpenAI SDKs do not
//! ask for anyway (they connect with `compression=None`).
//!
//! Not supported: WebSocket over HTTP/2 (RFC 8441 extended CONNECT) — the
//! sandbox's HTTP/2 connections do not advertise
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`, so clients fall back to HTTP/1.1 —
//! and h2c upgrades and CONNECT, which are refused (501).
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    http::{idle_watch, new_span_id, Conn, Outbound},
    tap::Capture,
    upstream::{full, strip_hop_by_hop, ProxyBody},
};
use crate::{
    budget,
    genai::{
        realtime::{Flavor, Session, Turn},
        websocket::{Event, FrameParser, Kind},
    },
    record::Record,
    semconv as sc,
};

/// Largest message (payload) the parser keeps; larger ones are relayed
/// and counted (`egret.websocket.messages_skipped`) but not parsed.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Read size per direction.
const CHUNK: usize = 16 << 10;

/// True for a WebSocket opening handshake (RFC 6455 §4.1): HTTP/1.1 `GET`
/// with `Upgrade: websocket` and `Connection: upgrade` (tokens, any case).
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let has_token = |name: http::header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && has_token(http::header::UPGRADE, "websocket")
        && has_token(http::header::CONNECTION, "upgrade")
}

/// A WebSocket upgrade on its way upstream.
pub struct Upgrade {
    /// The sandbox's side, once the 101 is written.
    pub downstream: OnUpgrade,
    /// What the session speaks and its `gen_ai.provider.name`, when
    /// egret parses it.
    pub flavor: Option<(Flavor, Option<String>)>,
    pub path_and_query: String,
    /// Message text kept per response and direction, when the route
    /// captures JSON bodies (`captureBody.maxBytes`).
    pub capture: Option<usize>,
}

impl Upgrade {
    /// Takes the sandbox's connection from `req` (before the request is
    /// consumed).
    pub fn take<B>(
        req: &mut Request<B>,
        flavor: Option<(Flavor, Option<String>)>,
        capture: Option<usize>,
    ) -> Upgrade {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        Upgrade {
            downstream: hyper::upgrade::on(req),
            flavor,
            path_and_query,
            capture,
        }
    }

    /// The request as it goes upstream: no extensions offered (the
    /// session stays uncompressed, see the module docs).
    pub fn prepare(headers: &mut http::HeaderMap) -> HeaderValue {
        headers.remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
        HeaderValue::from_static("websocket")
    }
}

/// The provider accepted the upgrade (`resp` is its 101): the 101 for the
/// sandbox, and the session relayed from now on (a task the connection
/// waits for before it ends).
pub(super) fn accepted(
    conn: &Arc<Conn>,
    mut resp: Response<Incoming>,
    mut out: Outbound,
    up: Upgrade,
) -> Response<ProxyBody> {
    let upstream = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    parts
        .headers
        .insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    let session_id = out.rec.id().to_owned();
    out.rec.set(sc::WEBSOCKET_SESSION_ID, session_id.as_str());
    // The responses' records start from the upgrade's.
    let base = out.rec.clone();
    out.rec.set(sc::HTTP_RESPONSE_STATUS_CODE, 101u16);
    out.rec.set(sc::WEBSOCKET_KIND, "session");
    let mut txn = out.into_transaction(Capture::new(0, false), None);
    txn.first_byte = Some(std::time::Instant::now());
    let task = tokio::spawn(relay(conn.clone(), up, upstream, txn, base));
    conn.relays
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(task);
    Response::from_parts(parts, full(Bytes::new()))
}

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Sandbox → provider.
    Client,
    /// Provider → sandbox.
    Server,
}

/// What both directions' parsers share.
struct Parse {
    client: FrameParser,
    server: FrameParser,
    session: Option<Session>,
    skipped: u64,
    close_code: Option<u16>,
    /// A close frame went each way (client, server): the session ended
    /// cleanly, whatever the transports did after.
    closed: (bool, bool),
    frame_error: Option<&'static str>,
}

impl Parse {
    /// Parses a chunk of `side`; returns the responses it ended.
    fn feed(&mut self, side: Side, chunk: &[u8]) -> Vec<Turn> {
        let mut turns = Vec::new();
        let Parse {
            client,
            server,
            session,
            skipped,
            close_code,
            closed,
            frame_error,
        } = self;
        let parser = match side {
            Side::Client => client,
            Side::Server => server,
        };
        let mut done = |t: Turn| turns.push(t);
        parser.feed(chunk, |ev| match ev {
            Event::Message { kind, data, wire } => {
                let text = kind == Kind::Text;
                if let Some(s) = session.as_mut() {
                    match side {
                        Side::Client => s.on_client(text, data, wire, &mut done),
                        Side::Server => s.on_server(text, data, wire, &mut done),
                    }
                }
            }
            Event::Skipped { wire, .. } => {
                *skipped += 1;
                if let Some(s) = session.as_mut() {
                    match side {
                        Side::Client => s.on_client_skipped(wire),
                        Side::Server => s.on_server_skipped(wire),
                    }
                }
            }
            Event::Ping { wire, .. } => {
                if let (Some(s), Side::Server) = (session.as_mut(), side) {
                    s.on_server_other(wire);
                }
            }
            Event::Close { code, wire } => {
                close_code.get_or_insert(code.unwrap_or(1005));
                match side {
                    Side::Client => closed.0 = true,
                    Side::Server => closed.1 = true,
                }
                if let (Some(s), Side::Server) = (session.as_mut(), side) {
                    s.on_server_other(wire);
                }
            }
            Event::Error(e) => {
                frame_error.get_or_insert(e.as_str());
                if let Some(s) = session.as_mut() {
                    s.on_frame_error();
                }
            }
        });
        turns
    }
}

/// The session: both directions relayed until both ended (or either
/// failed, or the agent's drain bound, or the connection's idle bound),
/// then the open responses and the upgrade's own record are written.
async fn relay(
    conn: Arc<Conn>,
    up: Upgrade,
    upstream: OnUpgrade,
    mut txn: super::tap::Transaction,
    base: Record,
) {
    let parse = Mutex::new(Parse {
        client: FrameParser::new(MAX_MESSAGE),
        server: FrameParser::new(MAX_MESSAGE),
        session: up
            .flavor
            .map(|(f, name)| Session::new(f, name, &up.path_and_query).capturing(up.capture)),
        skipped: 0,
        close_code: None,
        closed: (false, false),
        frame_error: None,
    });
    let emit = |turns: Vec<Turn>| {
        for t in turns {
            emit_turn(&conn, &base, t);
        }
    };
    let mut client_total = 0u64;
    let mut server_total = 0u64;
    match tokio::try_join!(up.downstream, upstream) {
        Err(e) => {
            tracing::debug!("WebSocket upgrade did not complete: {e}");
            txn.error = Some("upgrade_failed");
        }
        Ok((down, upc)) => {
            let (dr, dw) = tokio::io::split(TokioIo::new(down));
            let (ur, uw) = tokio::io::split(TokioIo::new(upc));
            let counted_c = std::sync::atomic::AtomicU64::new(0);
            let counted_s = std::sync::atomic::AtomicU64::new(0);
            // A direction that fails stops the other at its next read, not
            // mid-chunk: every chunk forwarded is also parsed.
            let stop = tokio_util::sync::CancellationToken::new();
            let both = async {
                let (c, s) = tokio::join!(
                    pump(dr, uw, Side::Client, &parse, &counted_c, &emit, &stop),
                    pump(ur, dw, Side::Server, &parse, &counted_s, &emit, &stop),
                );
                c.and(s)
            };
            let idle = conn.l7.admission.limits().idle_timeout;
            let ended = tokio::select! {
                r = both => r.err().and_then(|e| {
                    tracing::debug!("WebSocket session ended: {e}");
                    // Once a close frame went either way, a transport that
                    // ends without its own close (no TLS close_notify, a
                    // reset) is not an error of the session.
                    let closed = parse.lock().unwrap_or_else(|p| p.into_inner()).closed;
                    (closed == (false, false)).then_some("websocket_io_error")
                }),
                () = idle_watch(&conn.downstream, idle) => None,
                _ = conn.l7.drain.forced.cancelled() => Some("agent_shutdown"),
            };
            txn.error = ended;
            client_total = counted_c.load(std::sync::atomic::Ordering::Relaxed);
            server_total = counted_s.load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    // The responses still open: written, truncated.
    let (turns, parse) = {
        let mut p = parse.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut turns = Vec::new();
        if let Some(s) = p.session.as_mut() {
            s.finish(&mut |t| turns.push(t));
        }
        (turns, p)
    };
    emit(turns);
    // The session's bytes, per direction (its messages' text is on the
    // responses' records).
    let mut sent = Capture::new(0, false);
    sent.total = client_total;
    *txn.request.lock().unwrap_or_else(|p| p.into_inner()) = sent;
    txn.response = Capture::new(0, false);
    txn.response.total = server_total;
    let rec = &mut txn.rec;
    rec.set(sc::WEBSOCKET_MESSAGES_SKIPPED, parse.skipped);
    rec.set(
        sc::WEBSOCKET_RESPONSES,
        parse.session.as_ref().map_or(0, |s| s.turns),
    );
    rec.set_opt(sc::WEBSOCKET_CLOSE_CODE, parse.close_code);
    rec.set_opt(sc::PARSE_ERROR, parse.frame_error);
    let fin = txn.finisher.clone();
    fin.finish(txn);
}

/// One direction: every read is written on at once, then parsed. Ends at
/// the source's end (the other direction goes on: half-close), at an I/O
/// error (which stops the other direction at its next read), or when
/// `stop` is cancelled while waiting for bytes.
async fn pump<R, W>(
    mut r: R,
    mut w: W,
    side: Side,
    parse: &Mutex<Parse>,
    total: &std::sync::atomic::AtomicU64,
    emit: &impl Fn(Vec<Turn>),
    stop: &tokio_util::sync::CancellationToken,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let failed = |e: std::io::Error| {
        stop.cancel();
        e
    };
    loop {
        let n = tokio::select! {
            r = r.read(&mut buf) => r.map_err(failed)?,
            () = stop.cancelled() => return Ok(()),
        };
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await.map_err(failed)?;
        w.flush().await.map_err(failed)?;
        total.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        let turns = parse
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .feed(side, &buf[..n]);
        if !turns.is_empty() {
            emit(turns);
        }
    }
}

/// Writes one response's record: the upgrade's base record (attribution,
/// route, trace id, session id) with a record id and span of its own, the
/// response's attributes, and its tokens added to the token budget.
fn emit_turn(conn: &Conn, base: &Record, turn: Turn) {
    let mut rec = base.clone();
    rec.set(sc::RECORD_ID, uuid::Uuid::now_v7().to_string());
    if let Some(span) = base.get_str(sc::SPAN_ID) {
        rec.set(sc::PARENT_SPAN_ID, span.to_owned());
    }
    rec.set(sc::SPAN_ID, new_span_id());
    rec.set(sc::WEBSOCKET_KIND, "response");
    turn.write(&mut rec);
    conn.l7.prices.load().apply(&mut rec);
    let charge = budget::charge_of(&rec);
    let decision = conn
        .l7
        .policy
        .load()
        .decide(conn.origin.attribution.as_ref(), base.get_str(sc::DST_NAME));
    if let (Some(gw), Some(a)) = (&decision.gateway, &conn.origin.attribution) {
        if let Some(st) = conn
            .l7
            .budgets
            .add(gw, &a.agent_namespace, &a.agent_name, charge)
        {
            budget::annotate(&mut rec, &st, Some(charge));
        }
    }
    conn.l7.emit(rec);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, version: http::Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .version(version)
            .uri("/v1/realtime");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_http1_get_websocket_upgrades_are_relayed() {
        let h11 = http::Version::HTTP_11;
        let ws = [("upgrade", "websocket"), ("connection", "Upgrade")];
        assert!(is_websocket_upgrade(&req("GET", h11, &ws)));
        assert!(is_websocket_upgrade(&req(
            "GET",
            h11,
            &[
                ("upgrade", "WebSocket"),
                ("connection", "keep-alive, Upgrade")
            ]
        )));
        assert!(!is_websocket_upgrade(&req("POST", h11, &ws)));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            http::Version::HTTP_10,
            &ws
        )));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            h11,
            &[
                ("upgrade", "h2c"),
                ("connection", "Upgrade, HTTP2-Settings")
            ]
        )));
        assert!(!is_websocket_upgrade(&req(
            "GET",
            h11,
            &[("upgrade", "websocket")]
        )));
    }

    #[test]
    fn the_extension_offer_is_removed() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
        );
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(Upgrade::prepare(&mut h), "websocket");
        assert!(h.get("sec-websocket-extensions").is_none());
        assert!(h.get("sec-websocket-key").is_some());
    }
}
