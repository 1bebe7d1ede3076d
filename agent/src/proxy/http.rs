//! The sandbox leg: TLS termination (or plain HTTP), hyper server with
//! HTTP/1.1 and HTTP/2, one transaction per request.
//!
//! A request goes through `handle`'s steps: `route` (the destination's
//! true name, the policy's decision, the base record), `authorize` (name,
//! method, policy, token budget — else a [`Refusal`]), `prepare` (trace
//! context, the body read whole or tapped) and `forward` (upstream, the
//! response through a tap that completes the transaction).
use std::{
    convert::Infallible,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    destination,
    io::{ByteCounts, Counted},
    mcp_legacy::{CallKey, Expect, Scope, StreamHook},
    refusal::Refusal,
    tap::{capturable, Capture, Finisher, RequestTap, ResponseTap, Transaction},
    upstream::{full, ProxyBody, Target, Upstream},
    websocket::{self, Upgrade},
    AttributionSource, Origin, L7,
};
use crate::{
    attribution::{parse_traceparent, TraceRoot},
    budget,
    config::CaptureBodyConfig,
    credentials,
    genai::{Exchange, Limits},
    policy::Decision,
    providers::{self, RouteProvider},
    record::{now_unix_nanos, Record},
    semconv as sc,
};

/// Request bodies up to this size (with a known length) are read whole
/// before forwarding, so the provider parser sees the model and the OpenAI
/// usage rewrite can apply. Larger or unsized bodies are streamed.
const WHOLE_REQUEST_MAX: u64 = 4 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (h1 read buffer, h2 header list): larger gets 431.
const MAX_HEAD_BYTES: usize = 256 * 1024;

/// One sandbox connection being served.
pub struct Conn {
    pub l7: Arc<L7>,
    pub origin: Origin,
    /// SNI (TLS) — None for plain HTTP, where the Host header names the host.
    pub sni: Option<String>,
    pub tls: bool,
    pub upstream: Upstream,
    pub downstream: Arc<ByteCounts>,
    /// Ended transactions not sealed yet (see [`Finish`]).
    finished: Mutex<Vec<Finished>>,
    /// Held while ended transactions are sealed into `pending`.
    sealing: Mutex<()>,
    pending: Mutex<Vec<Pending>>,
    next_txn: std::sync::atomic::AtomicU64,
    /// Where the last L4 window ended (see [`Ledger`]).
    ledger: Mutex<Ledger>,
    /// WebSocket sessions relayed after an upgrade (`proxy::websocket`):
    /// the connection ends when they do.
    pub(super) relays: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The attribution's trace root, derived once for the connection (its
    /// attribution is fixed at accept) instead of on every request.
    trace_root: OnceLock<Option<TraceRoot>>,
}

/// The connection's byte streams cut into per-transaction windows.
///
/// Windows are contiguous and in transaction order, so the TLS handshake
/// (first transaction's `egret.l4.handshake_*`), the windows and what
/// follows the last one (the TLS close) add up to the connection's bytes.
/// On HTTP/1.1 each window ends where the wire says the exchange ended:
/// at the first byte the sandbox sent after the response (the next request
/// or its close), with the whole response written — so a window holds its
/// whole request and whole response. HTTP/2 streams share the connection:
/// a transaction's window is the bytes since the previous transaction's
/// record was cut, when it is cut (see `docs/attributes.md`).
#[derive(Debug, Default)]
struct Ledger {
    /// (downstream read, downstream written, upstream total) at the end of
    /// the last window.
    cut: (u64, u64, u64),
    /// The TLS handshake's bytes (read, written) until written on the
    /// first record.
    handshake: Option<(u64, u64)>,
}

/// Serves a TLS connection: terminate with a leaf for the SNI, then HTTP.
pub async fn serve_tls<S>(l7: Arc<L7>, stream: S, origin: Origin)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let downstream = Arc::new(ByteCounts::default());
    let io = Counted::tls(stream, downstream.clone());
    // No SNI: the dialer's AUTHORITY (PROXY protocol), else the address.
    let fallback = origin
        .authority
        .clone()
        .unwrap_or_else(|| origin.dst.ip().to_string());
    let accepted =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, l7.terminator.accept(io, Some(&fallback)))
            .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let dst = origin.dst;
                crate::limited!(SandboxTls, info, %dst, "TLS handshake with sandbox failed: {e}");
                return;
            }
            Err(_) => {
                let dst = origin.dst;
                crate::limited!(SandboxTls, info, %dst, "TLS handshake with sandbox timed out");
                return;
            }
        };
    let handshake = downstream.handshake_end();
    let sni = accepted.sni.clone();
    let tls_name = sni.clone().unwrap_or_else(|| fallback.clone());
    let conn = Arc::new(Conn {
        upstream: Upstream::new(
            Target {
                dst: origin.dst,
                netns: origin.netns.clone(),
                tls_name: Some(tls_name),
                h2: accepted.is_h2(),
            },
            l7.upstream_tls.clone(),
        ),
        l7,
        origin,
        sni,
        tls: true,
        downstream,
        finished: Mutex::new(Vec::new()),
        sealing: Mutex::new(()),
        pending: Mutex::new(Vec::new()),
        next_txn: Default::default(),
        relays: Mutex::default(),
        trace_root: OnceLock::new(),
        ledger: Mutex::new(Ledger {
            cut: (handshake.0, handshake.1, 0),
            handshake: Some(handshake),
        }),
    });
    serve_http(TokioIo::new(accepted.stream), conn).await;
}

/// Serves a plain-HTTP connection.
pub async fn serve_plain<S>(l7: Arc<L7>, stream: S, origin: Origin)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let downstream = Arc::new(ByteCounts::default());
    let io = Counted::new(stream, downstream.clone());
    let conn = Arc::new(Conn {
        upstream: Upstream::new(
            Target {
                dst: origin.dst,
                netns: origin.netns.clone(),
                tls_name: None,
                h2: false,
            },
            l7.upstream_tls.clone(),
        ),
        l7,
        origin,
        sni: None,
        tls: false,
        downstream,
        finished: Mutex::new(Vec::new()),
        sealing: Mutex::new(()),
        pending: Mutex::new(Vec::new()),
        next_txn: Default::default(),
        relays: Mutex::default(),
        trace_root: OnceLock::new(),
        ledger: Mutex::default(),
    });
    serve_http(TokioIo::new(io), conn).await;
}

async fn serve_http<I>(io: I, conn: Arc<Conn>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn2 = conn.clone();
    // The exchange's future is large (every step's state): boxed, so what
    // hyper moves around — HTTP/2 spawns a task per stream and tokio copies
    // a task's future as it is set up and finished — is a pointer.
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn2.clone();
        Box::pin(async move { Ok::<_, Infallible>(handle(req, conn).await) })
    });
    let limits = conn.l7.admission.limits().clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        // Slowloris bound; also closes keep-alive connections idle this long.
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        // A client that shuts down its write side after the request still
        // gets the response (hyper would otherwise drop it at EOF).
        .half_close(true);
    builder
        .http2()
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // Dead peers are found (PING) and closed; a peer that never acks
        // is gone.
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .keep_alive_timeout(H2_KEEPALIVE);
    let drain = &conn.l7.drain;
    let started = Instant::now();
    // With upgrades: a WebSocket upgrade ends the HTTP connection and
    // hands its stream to the session's relay.
    let mut served = Box::pin(builder.serve_connection_with_upgrades(io, svc));
    let idle = idle_watch(&conn.downstream, limits.idle_timeout);
    tokio::pin!(idle);
    let ended = tokio::select! {
        r = served.as_mut() => Some(r),
        () = &mut idle => {
            // Nothing moved for the idle bound: HTTP/2 sends GOAWAY and
            // lets open streams finish; HTTP/1 closes after the exchange.
            served.as_mut().graceful_shutdown();
            tokio::select! {
                r = served.as_mut() => Some(r),
                _ = drain.forced.cancelled() => None,
            }
        }
        _ = drain.started.cancelled() => {
            // Finish the exchange in flight (h2: GOAWAY, open streams
            // complete), then close; cut at the drain bound.
            served.as_mut().graceful_shutdown();
            tokio::select! {
                r = served.as_mut() => Some(r),
                _ = drain.forced.cancelled() => None,
            }
        }
    };
    match ended {
        Some(Err(e)) => {
            tracing::debug!("sandbox connection ended: {e}");
            if let Some(status) = malformed_status(&*e) {
                conn.malformed(status, started);
            }
        }
        Some(Ok(())) => {}
        None => tracing::debug!("sandbox connection closed at the drain bound"),
    }
    // Dropping the connection finishes the transactions still in flight
    // (their taps write the records) before the pending ones are flushed.
    drop(served);
    // A relayed WebSocket session owns the stream now: the connection
    // (its admission slot, its last records) ends with it.
    let relays = std::mem::take(&mut *conn.relays.lock().unwrap_or_else(|p| p.into_inner()));
    for r in relays {
        if let Err(e) = r.await {
            tracing::debug!("WebSocket relay task: {e}");
        }
    }
    conn.flush_pending(None);
}

/// Connections whose request head hyper could not parse (answered 400 or
/// 431 by hyper itself, before any request reached [`handle`]); each also
/// gets a transaction record with `error.type = malformed_request`.
pub static MALFORMED_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The status hyper answered a request head it could not parse with, if
/// that is how the connection ended.
fn malformed_status(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        Some(431)
    } else if e.is_parse() {
        Some(400)
    } else {
        None
    }
}

/// HTTP/2 PING interval and the wait for its answer.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// Resolves once no byte has crossed `counts` for `bound`.
pub(super) async fn idle_watch(counts: &ByteCounts, bound: Duration) {
    let step = (bound / 4).max(Duration::from_millis(100));
    let mut last = counts.snapshot();
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        let now = counts.snapshot();
        if now == last {
            quiet += step;
            if quiet >= bound {
                return;
            }
        } else {
            (last, quiet) = (now, Duration::ZERO);
        }
    }
}

/// A finished transaction waiting for its L4 counters to settle: the last
/// response bytes are still on their way to the sandbox when the body ends.
/// It is written when the next request on the connection starts, when the
/// connection ends, or after [`L4_SETTLE`], whichever comes first.
struct Pending {
    id: u64,
    rec: Record,
    /// HTTP/1.x: the window ends at the wire mark (see [`Ledger`]).
    h1: bool,
    /// A legacy MCP request: written once its answer is in
    /// ([`super::mcp_legacy::Registry::attach`]).
    mcp_call: Option<CallKey>,
}

/// Longest a finished transaction waits for its L4 counters.
const L4_SETTLE: Duration = Duration::from_millis(500);

impl Conn {
    /// The trace root of the connection's attribution (see
    /// [`crate::attribution::Attribution::trace_root`]).
    fn trace_root(&self) -> Option<&TraceRoot> {
        self.trace_root
            .get_or_init(|| self.origin.attribution.as_ref().map(|a| a.trace_root()))
            .as_ref()
    }

    /// Queues a record that needs no sealing (a refusal) for its L4 window,
    /// as the next transaction in order.
    fn pend(self: &Arc<Self>, rec: Record, h1: bool) {
        let id = self
            .next_txn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.downstream.arm(id);
        // Behind whatever ended before it, so windows stay in order.
        self.seal_finished();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending {
                id,
                rec,
                h1,
                mcp_call: None,
            });
        let conn = self.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(L4_SETTLE).await;
                conn.flush_pending(Some(id));
            });
        }
    }

    /// Records a request head hyper refused before egret saw a request:
    /// what is known of the connection (attribution, destination), the
    /// status hyper sent and `error.type = malformed_request`.
    fn malformed(self: &Arc<Self>, status: u16, started: Instant) {
        MALFORMED_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut rec = connection_record(self);
        let host = self
            .sni
            .clone()
            .unwrap_or_else(|| self.origin.dst.ip().to_string());
        rec.set(sc::SERVER_ADDRESS, host.as_str());
        rec.set(sc::DST_NAME, host.as_str());
        rec.set(sc::HTTP_RESPONSE_STATUS_CODE, status);
        rec.set(sc::ERROR_TYPE, "malformed_request");
        rec.set(sc::END_TIME, now_unix_nanos());
        rec.set(sc::DURATION_MS, started.elapsed().as_secs_f64() * 1e3);
        self.pend(rec, true);
    }

    /// Ends a refused request's transaction: its record waits for its L4
    /// window like any other.
    fn refused(self: &Arc<Self>, mut rec: Record, refusal: &Refusal, started: Instant, h1: bool) {
        rec.set(sc::HTTP_RESPONSE_STATUS_CODE, refusal.status().as_u16());
        rec.set(sc::ERROR_TYPE, refusal.error_type());
        rec.set(sc::END_TIME, now_unix_nanos());
        rec.set(sc::DURATION_MS, started.elapsed().as_secs_f64() * 1e3);
        self.pend(rec, h1);
    }

    /// Seals the transactions whose responses ended since the last call:
    /// provider parsing, the record, token budgets. They then wait in
    /// `pending` for their L4 window.
    ///
    /// Sealing holds `sealing` throughout, so a flush that runs while the
    /// spawned task seals (another worker thread) waits for those records
    /// to reach `pending` instead of missing them — at shutdown it is the
    /// last flush.
    fn seal_finished(&self) {
        let _sealing = self.sealing.lock().unwrap_or_else(|p| p.into_inner());
        let done = std::mem::take(&mut *self.finished.lock().unwrap_or_else(|p| p.into_inner()));
        for Finished {
            id,
            mut txn,
            gateway,
            h1,
        } in done
        {
            if txn.error == Some("client_aborted") && self.l7.drain.forced.is_cancelled() {
                // Cut by the agent at the drain bound, not by the sandbox.
                txn.error = Some("agent_shutdown");
            }
            txn.seal();
            self.l7.prices.load().apply(&mut txn.rec);
            if let (Some(gw), Some(a)) = (&gateway, &self.origin.attribution) {
                let charge = budget::charge_of(&txn.rec);
                if let Some(st) = self
                    .l7
                    .budgets
                    .add(gw, &a.agent_namespace, &a.agent_name, charge)
                {
                    budget::annotate(&mut txn.rec, &st, Some(charge));
                }
            }
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Pending {
                    id,
                    rec: txn.rec,
                    h1,
                    mcp_call: txn.mcp_call.take(),
                });
        }
    }

    /// Writes pending records whose L4 window has closed (`upto`: those
    /// up to that transaction); seals what ended first. Windows are cut in
    /// transaction order, so they stay contiguous.
    fn flush_pending(&self, upto: Option<u64>) {
        self.seal_finished();
        let mut ready: Vec<Pending> = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match upto {
                Some(id) => {
                    let (r, keep) = std::mem::take(&mut *p)
                        .into_iter()
                        .partition(|x| x.id <= id);
                    *p = keep;
                    r
                }
                None => std::mem::take(&mut *p),
            }
        };
        if ready.is_empty() {
            return;
        }
        ready.sort_by_key(|p| p.id);
        let kernel_peer = self.origin.source == AttributionSource::Kernel;
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        for mut p in ready {
            let (dr, dw) = self.downstream.snapshot();
            let up = self.upstream.counts.snapshot();
            let (end_r, end_w) = match (p.h1, self.downstream.mark(p.id)) {
                (true, Some(m)) => m,
                _ => (dr, dw),
            };
            let (cr, cw, cu) = ledger.cut;
            let end = (end_r.max(cr), end_w.max(cw), (up.0 + up.1).max(cu));
            ledger.cut = end;
            let (tx, rx) = (end.0 - cr, end.1 - cw);
            if kernel_peer {
                // The agent's accepted socket is the sandbox socket's TCP
                // peer: what it read the sandbox sent, what it wrote the
                // sandbox received (the flow record has the kernel's
                // totals for the same socket).
                p.rec.set(sc::L4_BYTES_SANDBOX_TX, tx);
                p.rec.set(sc::L4_BYTES_SANDBOX_RX, rx);
                if let Some((hr, hw)) = ledger.handshake.take() {
                    p.rec.set(sc::L4_HANDSHAKE_BYTES_SANDBOX_TX, hr);
                    p.rec.set(sc::L4_HANDSHAKE_BYTES_SANDBOX_RX, hw);
                }
            }
            p.rec.set(sc::L4_BYTES_DOWNSTREAM, tx + rx);
            p.rec.set(sc::L4_BYTES_UPSTREAM, end.2 - cu);
            match p.mcp_call.take() {
                Some(call) => {
                    let status = p
                        .rec
                        .get_i64(sc::HTTP_RESPONSE_STATUS_CODE)
                        .and_then(|s| u16::try_from(s).ok());
                    if let Some(r) = self.l7.mcp.attach(&call, p.rec, status) {
                        self.l7.emit(r);
                    }
                }
                None => self.l7.emit(p.rec),
            }
        }
    }
}

/// An ended transaction waiting to be sealed.
struct Finished {
    id: u64,
    txn: Transaction,
    gateway: Option<Arc<crate::config::GatewayConfig>>,
    h1: bool,
}

/// Counts a finished transaction's tokens and queues its record.
///
/// The response tap ends a transaction while hyper is still writing the
/// last bytes to the sandbox (h1 drops the body before flushing), so the
/// work of sealing it is not done there: the transaction is queued and a
/// task spawned now seals it once the connection's task has yielded (the
/// response is out by then). Anything that reads the queue — the next
/// request on the connection, its end — seals first, so no ordering is
/// lost.
struct Finish {
    conn: Arc<Conn>,
    decision: Decision,
    h1: bool,
    /// The request's share of its sandbox's in-flight budget.
    _inflight: Option<super::admission::Guard>,
}

impl Finisher for Finish {
    fn finish(&self, txn: Transaction) {
        let c = &self.conn;
        let id = c
            .next_txn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.downstream.arm(id);
        c.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Finished {
                id,
                txn,
                gateway: self.decision.gateway.clone(),
                h1: self.h1,
            });
        let conn = c.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    conn.seal_finished();
                    tokio::time::sleep(L4_SETTLE).await;
                    conn.flush_pending(Some(id));
                });
            }
            // Dropped outside the runtime (shutdown): write it now.
            Err(_) => conn.flush_pending(None),
        }
    }
}

/// Common attributes of every transaction on this connection.
/// A transaction record's connection part: who (the attribution), from
/// which socket, at which port.
fn connection_record(conn: &Conn) -> Record {
    let mut rec = Record::new(sc::KIND_TRANSACTION);
    rec.set(sc::COMPONENT, sc::COMPONENT_PROXY);
    rec.set(sc::START_TIME, now_unix_nanos());
    if let Some(a) = &conn.origin.attribution {
        a.apply(&mut rec);
    }
    // Kernel: only when the tag resolved. PROXY protocol: always, since the
    // dialer's header decided (even when it carried no attribution).
    if conn.origin.attribution.is_some() || conn.origin.source != AttributionSource::Kernel {
        rec.set(sc::ATTRIBUTION_SOURCE, conn.origin.source.as_str());
    }
    if conn.origin.cookie != 0 {
        rec.set(sc::SOCKET_COOKIE, conn.origin.cookie.to_string());
    }
    rec.set(sc::SERVER_PORT, conn.origin.dst.port());
    rec
}

fn base_record(conn: &Conn, req: &Request<Incoming>, host: &str, decision: &Decision) -> Record {
    let mut rec = connection_record(conn);
    rec.set(sc::HTTP_REQUEST_METHOD, req.method().as_str());
    rec.set(sc::URL_PATH, req.uri().path());
    rec.set(sc::SERVER_ADDRESS, host);
    rec.set(sc::DST_NAME, host);
    rec.set(
        sc::NETWORK_PROTOCOL_VERSION,
        match req.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        },
    );
    rec.set(sc::ROUTE_MATCHED, decision.route.is_some());
    if let Some(r) = &decision.route {
        rec.set(sc::ROUTE_NAME, r.name.as_str());
    }
    if let Some(gw) = &decision.gateway {
        rec.set(sc::GATEWAY_NAME, gw.name.as_str());
    }
    rec
}

/// W3C trace context for the outbound request: the sandbox's own header is
/// the parent when present; else the invocation's span (`root`: in the
/// registered trace, or the one derived from the invocation id), so every
/// call of an invocation is in one trace under its `invoke_agent` span;
/// else (no attribution) a new trace. Returns (trace id, span id, parent
/// span id, header).
fn trace_context(
    incoming: Option<&str>,
    root: Option<&TraceRoot>,
) -> (String, String, Option<String>, String) {
    let span = format!("{:016x}", rand_u64());
    if let Some((trace, parent, flags)) = incoming.and_then(parse_traceparent) {
        let header = format!("00-{trace}-{span}-{flags}");
        return (trace, span, Some(parent), header);
    }
    match root {
        Some(r) => {
            let header = format!("00-{}-{span}-{}", r.trace_id, r.flags);
            (r.trace_id.clone(), span, Some(r.span_id.clone()), header)
        }
        None => {
            let trace = format!("{:016x}{:016x}", rand_u64(), rand_u64());
            let header = format!("00-{trace}-{span}-01");
            (trace, span, None, header)
        }
    }
}

/// A new span id (hex), for records egret starts itself.
pub(super) fn new_span_id() -> String {
    format!("{:016x}", rand_u64())
}

/// Random ids for trace context: SplitMix64 over a per-thread state seeded
/// once from the OS. Ids must be unique and unguessable enough, not
/// cryptographic (OpenTelemetry SDKs use the same kind of generator); a
/// getrandom(2) per id was three syscalls per request in the profile.
fn rand_u64() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> =
            std::cell::Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

async fn handle(req: Request<Incoming>, conn: Arc<Conn>) -> Response<ProxyBody> {
    // The previous exchange's bytes have all arrived once the next starts.
    conn.flush_pending(None);
    let started = Instant::now();
    let h1 = req.version() != http::Version::HTTP_2;
    let mut route = route(&conn, &req).await;

    // The sandbox's requests in flight, over all its connections; held by
    // the transaction until its response ends.
    let inflight = conn
        .l7
        .admission
        .request(super::admission::key_of(&conn.origin));
    let checked = if inflight.is_none() {
        Err(Refusal::RequestLimit)
    } else {
        authorize(&conn, &req, &mut route)
    };
    let provider = match checked {
        Ok(provider) => provider,
        // A refused request ends here: its record waits for its L4 window
        // like any other (its body is read first, see `Refusal::answer`).
        Err(refusal) => {
            if refusal.policy_denied() {
                route.rec.set(sc::POLICY_DENIED, true);
            }
            let resp = refusal.answer(req).await;
            conn.refused(route.rec, &refusal, started, h1);
            return resp;
        }
    };

    let capture = route
        .decision
        .gateway
        .as_ref()
        .map(|g| g.capture_body.clone())
        .unwrap_or_default();
    // A WebSocket upgrade: the session is parsed per response (its own
    // records); the upgrade's record has no provider attributes.
    let (mut req, mut upgrade) = (req, None);
    let provider = if websocket::is_websocket_upgrade(&req) {
        let flavor =
            crate::genai::realtime::Flavor::detect(provider.as_ref(), &route.host, path_q_of(&req));
        // Its messages are JSON: kept when the route captures JSON bodies.
        let keep = capturable(Some("application/json"), &capture.include_content_types)
            .then_some(capture.max_bytes);
        upgrade = Some(Upgrade::take(&mut req, flavor, keep));
        None
    } else {
        provider
    };
    let Prepared {
        req,
        exchange,
        request,
        buffered,
    } = match prepare(&conn, req, &mut route, provider, &capture).await {
        Ok(p) => p,
        Err(refusal) => {
            conn.refused(route.rec, &refusal, started, h1);
            return refusal.response();
        }
    };
    let mcp_call = legacy_mcp_request(&conn, &route.host, &exchange, &mut route.rec, &capture);
    let outbound = Outbound {
        rec: route.rec,
        exchange,
        started,
        mcp_call,
        request,
        finisher: Arc::new(Finish {
            conn: conn.clone(),
            decision: route.decision,
            h1,
            _inflight: inflight,
        }),
    };
    let resp = forward(
        &conn,
        req,
        outbound,
        &route.host,
        route.host_header.as_deref(),
        &capture,
        upgrade,
    )
    .await;
    // A body held whole leaves the buffer budgets once the response head
    // is in.
    drop(buffered);
    resp
}

/// An MCP `POST` to the endpoint of a legacy HTTP+SSE session of the same
/// invocation: a request (id and method) is expected in the registry, to be
/// written with its answer from the stream; anything else is marked with
/// the transport.
fn legacy_mcp_request(
    conn: &Conn,
    host: &str,
    exchange: &Exchange,
    rec: &mut Record,
    capture: &CaptureBodyConfig,
) -> Option<CallKey> {
    let path = exchange.mcp_post_path()?;
    let scope = Scope::of(conn.origin.attribution.as_ref(), host)?;
    let reg = &conn.l7.mcp;
    let Some((path, id)) = exchange.mcp_request() else {
        if reg.knows(&scope, path) {
            rec.set(sc::MCP_TRANSPORT, sc::MCP_TRANSPORT_SSE);
        }
        return None;
    };
    let body_max = capturable(Some("application/json"), &capture.include_content_types)
        .then_some(capture.max_bytes);
    match reg.expect(&scope, path, id, body_max, Instant::now()) {
        Expect::Tracked(k) => Some(k),
        Expect::Untracked(why) => {
            rec.set(sc::MCP_TRANSPORT, sc::MCP_TRANSPORT_SSE);
            rec.set(sc::MCP_ANSWER, why);
            None
        }
        Expect::NoSession => None,
    }
}

/// Where a request goes, as far as the connection and its headers tell.
struct Route {
    /// The destination's name: what the policy decides on and the record
    /// names.
    host: String,
    /// The request's Host (or `:authority`).
    host_header: Option<String>,
    decision: Decision,
    /// The transaction's record so far.
    rec: Record,
    /// Set when the request names a host the connection does not go to.
    misdirected: Option<Refusal>,
}

/// Step 1: the destination's true name, the policy's decision on it and
/// the transaction's base record.
async fn route(conn: &Conn, req: &Request<Incoming>) -> Route {
    let host_header = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    // The destination's name (see `destination`): TLS — the name the
    // upstream TLS verifies (SNI, else the dialer's authority or the
    // address), and every Host/:authority the request carries must name
    // it; plain HTTP — the Host claim when the node's resolver maps it to
    // the dialled address, else the address itself.
    let dst_ip = conn.origin.dst.ip();
    let verified_name = match (&conn.sni, conn.tls) {
        (Some(sni), _) => Some(sni.clone()),
        (None, true) => Some(
            conn.origin
                .authority
                .clone()
                .unwrap_or_else(|| dst_ip.to_string()),
        ),
        (None, false) => None,
    };
    let claims: Vec<&str> = req
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .chain(req.uri().authority().map(|a| a.as_str()))
        .collect();
    let mut misdirected = None;
    let mut claimed = None;
    let host = match verified_name {
        Some(name) => {
            if let Some(c) = claims
                .iter()
                .find(|c| !destination::host_matches_sni(c, &name))
            {
                misdirected = Some(Refusal::HostSniMismatch {
                    named: destination::host_of(c),
                    host: name.clone(),
                });
            }
            name
        }
        None => match claims.first().map(|c| destination::host_of(c)) {
            Some(h) if conn.l7.resolver.resolves_to(&h, dst_ip).await => h,
            Some(h) => {
                claimed = Some(h);
                conn.origin
                    .authority
                    .clone()
                    .unwrap_or_else(|| dst_ip.to_string())
            }
            None => conn
                .origin
                .authority
                .clone()
                .unwrap_or_else(|| dst_ip.to_string()),
        },
    };
    let attr = conn.origin.attribution.as_ref();
    let policy = conn.l7.policy.load();
    let decision = policy.decide(attr, Some(&host));
    let mut rec = base_record(conn, req, &host, &decision);
    if let Some(c) = claimed {
        rec.set(sc::DST_CLAIMED_NAME, c.as_str());
        // A routed name the connection does not go to: refused.
        if policy.decide(attr, Some(&c)).route.is_some() {
            misdirected = Some(Refusal::DestinationUnverified {
                named: c,
                host: host.clone(),
            });
        }
    }
    drop(policy);
    let query = req.uri().query().map(str::to_owned);
    if let Some(key) = credentials::api_key(req.headers(), query.as_deref()) {
        rec.set(sc::API_KEY_ID, conn.l7.keys.id(key));
    }
    Route {
        host,
        host_header,
        decision,
        rec,
        misdirected,
    }
}

/// Step 2: whether the request may go where it goes — the name it uses,
/// its method, the policy, the token budget. The provider the exchange is
/// parsed as when it may.
fn authorize(
    conn: &Conn,
    req: &Request<Incoming>,
    route: &mut Route,
) -> Result<Option<providers::Target>, Refusal> {
    if let Some(refusal) = route.misdirected.take() {
        return Err(refusal);
    }
    // WebSocket upgrades are relayed (`proxy::websocket`); other
    // upgrades (h2c) and CONNECT (RFC 8441 extended CONNECT included) are
    // not.
    if req.method() == http::Method::CONNECT
        || (req.headers().contains_key(http::header::UPGRADE)
            && !websocket::is_websocket_upgrade(req))
    {
        return Err(Refusal::Upgrade);
    }
    let decision = &route.decision;
    if !decision.allowed {
        return Err(Refusal::PolicyDenied {
            host: route.host.clone(),
            reason: decision.reason,
        });
    }
    route.rec.set(sc::POLICY_DENIED, false);

    // The route's provider (validated at load; `http` = found from the
    // host, path and body).
    let provider = decision
        .route
        .as_ref()
        .and_then(|r| RouteProvider::parse(&r.provider, r.format).ok())
        .unwrap_or(RouteProvider::Auto)
        .target(&route.host, req.uri().path());
    if let (Some(gw), Some(a)) = (&decision.gateway, &conn.origin.attribution) {
        if let Some(st) = conn
            .l7
            .budgets
            .status(gw, &a.agent_namespace, &a.agent_name)
        {
            budget::annotate(&mut route.rec, &st, None);
            route.rec.set(sc::BUDGET_DENIED, st.exhausted());
            if st.exhausted() {
                return Err(Refusal::BudgetExhausted {
                    provider: provider.as_ref().map(|t| t.format.name()),
                    status: st,
                });
            }
        }
    }
    Ok(provider)
}

/// A request ready to go upstream.
struct Prepared {
    req: Request<ProxyBody>,
    exchange: Exchange,
    /// The request body's capture (filled as the body streams, or at once).
    request: Arc<Mutex<Capture>>,
    /// The buffer budgets taken by a body read whole.
    buffered: Option<super::admission::Guard>,
}

/// Step 3: the request as it goes upstream — trace context, and the body
/// read whole (within the buffer budgets) for the provider parser and the
/// usage rewrite, or streamed through a tap.
async fn prepare(
    conn: &Conn,
    req: Request<Incoming>,
    route: &mut Route,
    provider: Option<providers::Target>,
    capture: &CaptureBodyConfig,
) -> Result<Prepared, Refusal> {
    let attr = conn.origin.attribution.as_ref();
    let rec = &mut route.rec;
    let rewrite_allowed = route
        .decision
        .gateway
        .as_ref()
        .is_none_or(|g| g.rewrite_stream_usage);
    let req_ct = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    rec.set_opt(sc::REQUEST_CONTENT_TYPE, req_ct.clone());
    // Bedrock's InvokeModel APIs default `contentType` to JSON, and boto3
    // sends no Content-Type then: the body is JSON by the API's definition.
    let bedrock_default = (req_ct.is_none()
        && provider
            .as_ref()
            .is_some_and(|p| p.format == crate::genai::Provider::Bedrock))
    .then_some("application/json");
    let req_capture = Arc::new(Mutex::new(
        Capture::new(
            capture.max_bytes,
            capturable(
                req_ct.as_deref().or(bedrock_default),
                &capture.include_content_types,
            ),
        )
        .with_content_encoding(content_encoding(req.headers()).as_deref()),
    ));
    let mut exchange = Exchange::new(provider, Limits::default());

    let incoming_tp = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(http::header::EXPECT);
    let path_q = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());

    let length = body.size_hint().exact();
    // Buffered whole only within the sandbox's and the node's buffer
    // budgets; otherwise streamed (the request still goes through).
    let buffered = length.filter(|n| *n <= WHOLE_REQUEST_MAX).and_then(|n| {
        conn.l7
            .admission
            .buffer(super::admission::key_of(&conn.origin), n as usize)
    });
    if length.is_some_and(|n| n <= WHOLE_REQUEST_MAX) && buffered.is_none() {
        rec.set(sc::BODY_STREAMED_OVER_BUDGET, true);
    }
    let whole = if buffered.is_some() {
        let bytes = match Limited::new(body, WHOLE_REQUEST_MAX as usize)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                tracing::debug!("reading request body: {e}");
                return Err(Refusal::ClientBody);
            }
        };
        req_capture
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(&bytes);
        exchange.on_request(&parts.method, &path_q, &parts.headers, &bytes);
        Ok(bytes)
    } else {
        exchange.on_request(&parts.method, &path_q, &parts.headers, &[]);
        Err(body)
    };

    // Trace context, set on the outbound request: the sandbox's header, else
    // the `params._meta.traceparent` its MCP request carried, is the parent.
    let incoming_tp = incoming_tp.or_else(|| exchange.mcp_meta_traceparent().map(str::to_owned));
    let (trace_id, span_id, parent, header) =
        trace_context(incoming_tp.as_deref(), conn.trace_root());
    rec.set(sc::TRACE_ID, trace_id);
    rec.set(sc::SPAN_ID, span_id);
    rec.set_opt(sc::PARENT_SPAN_ID, parent);
    // A SigV4-signed request (AWS: Bedrock) that signed the trace headers
    // keeps them as sent: changing one would void the signature.
    // (Neither is touched then: the upstream sees the client's context.)
    let keep_trace = crate::genai::sigv4_signs(&parts.headers, "traceparent")
        || crate::genai::sigv4_signs(&parts.headers, "tracestate");
    if !keep_trace {
        if let Ok(v) = HeaderValue::from_str(&header) {
            parts.headers.insert("traceparent", v);
        }
    }
    if incoming_tp.is_none() && !keep_trace {
        if let Some(ts) = attr.and_then(|a| a.tracestate.as_deref()) {
            if let Ok(v) = HeaderValue::from_str(ts) {
                parts.headers.insert("tracestate", v);
            }
        }
    }

    let out_body: ProxyBody = match whole {
        Ok(bytes) => {
            let sent = if keep_trace {
                exchange.skip_mcp_trace_context(crate::genai::TRACE_CONTEXT_SKIPPED_SIGNED);
                None
            } else {
                let encoded = content_encoding(&parts.headers)
                    .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
                let tracestate = parts
                    .headers
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok());
                exchange.inject_mcp_trace_context(&bytes, encoded, &header, tracestate)
            };
            let sent = match sent {
                Some(b) => Some(Bytes::from(b)),
                None if rewrite_allowed && exchange.wants_usage_rewrite() => {
                    exchange.rewrite_request_body(&bytes).map(Bytes::from)
                }
                None => None,
            };
            match sent {
                Some(b) => {
                    parts.headers.insert(
                        http::header::CONTENT_LENGTH,
                        HeaderValue::from(b.len() as u64),
                    );
                    full(b)
                }
                None => full(bytes),
            }
        }
        Err(body) => {
            if parts.method == http::Method::POST {
                exchange.skip_mcp_trace_context(crate::genai::TRACE_CONTEXT_SKIPPED_STREAMED);
            }
            RequestTap::new(body, req_capture.clone()).boxed_unsync()
        }
    };
    Ok(Prepared {
        req: Request::from_parts(parts, out_body),
        exchange,
        request: req_capture,
        buffered,
    })
}

/// A forwarded request's transaction until its response (or its failure)
/// completes it.
pub(super) struct Outbound {
    pub(super) rec: Record,
    exchange: Exchange,
    started: Instant,
    /// A legacy MCP request awaiting its answer.
    mcp_call: Option<CallKey>,
    request: Arc<Mutex<Capture>>,
    finisher: Arc<Finish>,
}

impl Outbound {
    /// The transaction, with `response` capturing the response body.
    pub(super) fn into_transaction(
        self,
        response: Capture,
        error: Option<&'static str>,
    ) -> Transaction {
        Transaction {
            rec: self.rec,
            exchange: self.exchange,
            started: self.started,
            first_byte: None,
            chunks: Default::default(),
            request: self.request,
            response,
            error,
            finisher: self.finisher,
            mcp_stream: None,
            mcp_call: self.mcp_call,
        }
    }
}

/// Step 4: sends the request upstream; the response goes back to the
/// sandbox through a tap that completes the transaction.
async fn forward(
    conn: &Arc<Conn>,
    mut req: Request<ProxyBody>,
    mut out: Outbound,
    host: &str,
    host_header: Option<&str>,
    capture: &CaptureBodyConfig,
    upgrade: Option<Upgrade>,
) -> Response<ProxyBody> {
    let authority = match (&conn.sni, host_header) {
        (Some(sni), _) if conn.origin.dst.port() == 443 => sni.clone(),
        (Some(sni), _) => format!("{sni}:{}", conn.origin.dst.port()),
        (None, Some(h)) => h.to_owned(),
        (None, None) => conn.origin.dst.to_string(),
    };
    let sent = match &upgrade {
        Some(_) => {
            let u = Upgrade::prepare(req.headers_mut());
            conn.upstream.send_upgrade(req, &authority, u).await
        }
        None => conn.upstream.send(req, &authority).await,
    };
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            crate::limited!(UpstreamRequest, info, dst = %conn.origin.dst, %host, "upstream failed: {e}");
            let refusal = Refusal::Upstream {
                host: host.to_owned(),
                error: e,
            };
            let mut txn = out.into_transaction(Capture::new(0, false), Some(refusal.error_type()));
            txn.rec
                .set(sc::HTTP_RESPONSE_STATUS_CODE, refusal.status().as_u16());
            let fin = txn.finisher.clone();
            fin.finish(txn);
            return refusal.response();
        }
    };
    if let Some(up) = upgrade {
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return websocket::accepted(conn, resp, out, up);
        }
        // Refused upstream: answered and recorded like any response.
    }
    let (mut rparts, rbody) = resp.into_parts();
    super::upstream::strip_hop_by_hop(&mut rparts.headers);
    out.rec
        .set(sc::HTTP_RESPONSE_STATUS_CODE, rparts.status.as_u16());
    let resp_ct = rparts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    out.rec.set_opt(sc::RESPONSE_CONTENT_TYPE, resp_ct.clone());
    out.exchange
        .on_response_head(rparts.status.as_u16(), &rparts.headers);
    if rparts.status.is_server_error() {
        out.rec
            .set(sc::ERROR_TYPE, rparts.status.as_u16().to_string());
    }
    let response = Capture::new(
        capture.max_bytes,
        capturable(resp_ct.as_deref(), &capture.include_content_types),
    )
    .with_content_encoding(content_encoding(&rparts.headers).as_deref());
    let follows = out.exchange.follows_mcp_stream();
    let mut txn = Box::new(out.into_transaction(response, None));
    if follows {
        txn.mcp_stream = Scope::of(conn.origin.attribution.as_ref(), host)
            .map(|s| StreamHook::new(conn.l7.clone(), s));
        if txn.mcp_stream.is_none() {
            txn.exchange.ignore_mcp_stream_events();
        }
    }
    let mut tap = ResponseTap::new(rbody, txn);
    tap.prefetch().await;
    if tap.rewrites_body() {
        // The usage filter removes bytes: the length is no longer known.
        rparts.headers.remove(http::header::CONTENT_LENGTH);
    }
    Response::from_parts(rparts, tap.boxed_unsync())
}

/// The request's path and query.
fn path_q_of<B>(req: &Request<B>) -> &str {
    req.uri().path_and_query().map_or("/", |p| p.as_str())
}

/// A message's `Content-Encoding` (the capture keeps the decoded body);
/// several header lines are one stacked list.
fn content_encoding(headers: &http::HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::Attribution;

    #[test]
    fn trace_context_extends_the_sandbox_or_the_invocation_trace() {
        let client = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (t, s, p, h) = trace_context(Some(client), None);
        assert_eq!(t, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(p.as_deref(), Some("b7ad6b7169203331"));
        assert_eq!(h, format!("00-{t}-{s}-01"));
        // A registered traceparent: its trace, under the invocation span.
        let mut a = Attribution {
            invocation_id: "inv-7".into(),
            traceparent: Some("00-11111111111111111111111111111111-2222222222222222-00".into()),
            ..Attribution::default()
        };
        let root = a.trace_root();
        assert_eq!(root.parent_span_id.as_deref(), Some("2222222222222222"));
        let (t, s, p, h) = trace_context(None, Some(&root));
        assert_eq!(t, "11111111111111111111111111111111");
        assert_eq!(p.as_deref(), Some(root.span_id.as_str()));
        assert_eq!(h, format!("00-{t}-{s}-00"), "the registered flags");
        // The sandbox's own header still wins over the invocation.
        let (t, _, p, _) = trace_context(Some(client), Some(&root));
        assert_eq!(
            (t.as_str(), p.as_deref()),
            ("0af7651916cd43dd8448eb211c80319c", Some("b7ad6b7169203331"))
        );
        // No registered traceparent: the trace is the invocation's own,
        // the same for every call and derived from the invocation id only.
        a.traceparent = None;
        let root = a.trace_root();
        let (t1, s1, p1, _) = trace_context(None, Some(&root));
        let (t2, s2, p2, _) = trace_context(Some("garbage"), Some(&root));
        assert_eq!((t1.len(), s1.len()), (32, 16));
        assert_eq!((&t1, &p1), (&t2, &p2));
        assert_ne!(s1, s2, "each call its own span");
        assert_eq!(p1.as_deref(), Some(root.span_id.as_str()));
        assert_eq!(root.parent_span_id, None);
        let other = Attribution {
            invocation_id: "inv-8".into(),
            ..Attribution::default()
        };
        assert_ne!(other.trace_root().trace_id, t1);
        // Unattributed: a new trace each time.
        let (t, s, p, h) = trace_context(None, None);
        assert_eq!((t.len(), s.len(), p), (32, 16, None));
        assert!(h.ends_with("-01"));
    }

    #[test]
    fn generated_ids_differ() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| rand_u64()).collect();
        assert_eq!(ids.len(), 10_000);
        let (t1, s1, ..) = trace_context(None, None);
        let (t2, s2, ..) = trace_context(None, None);
        assert_ne!((t1, s1), (t2, s2));
    }
}
