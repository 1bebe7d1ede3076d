//! The proxy: where the kernel sends captured sandbox connections, and
//! where trusted dialers bring theirs.
//!
//! By stage:
//! * [`listen`] — the redirect listeners per netns (ztunnel-style) and the
//!   kernel link lookup that gives an accepted connection its [`Origin`];
//!   a connection the kernel did not redirect is refused — egret is never
//!   an open proxy;
//! * [`trusted`] — the trusted-dialer listeners: the [`Origin`] comes from
//!   a PROXY protocol v2 header (`crate::proxy_protocol`); the redirect
//!   listeners never parse one;
//! * [`detect`] — the first bytes decide the path ([`Proxy::dispatch`]): a
//!   TLS ClientHello is terminated (`http::serve_tls`), an HTTP request line
//!   served as plain HTTP (`http::serve_plain`), anything else spliced to
//!   the original destination or refused, per the gateway's `nonHttp`;
//! * [`http`] — one transaction per request, [`refusal`] the answers egret
//!   gives itself; [`upstream`] the provider leg, dialled inside the
//!   sandbox's netns so the original destination means what it meant there;
//! * [`websocket`] — WebSocket upgrades: relayed frame by frame after the
//!   provider's 101, parsed on the side into one record per model response;
//! * [`drain`] — graceful shutdown of every connection.
//!
//! This module holds what the stages share: [`L7`], [`Origin`], [`Proxy`].
pub mod admission;
pub mod destination;
pub mod detect;
pub mod drain;
pub mod http;
pub mod io;
pub mod listen;
pub mod mcp_legacy;
pub mod refusal;
pub mod tap;
pub mod trusted;
pub mod upstream;
pub mod websocket;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use egret_common::SockTag;
use tokio::io::{AsyncRead, AsyncWrite};

use self::detect::Protocol;
pub use self::drain::{Drain, DrainOutcome};
use crate::ratelimit::{Reason, LOG};
use crate::{
    attribution::{Attribution, Registry},
    bpf::Kernel,
    budget::Budgets,
    config::NonHttpPolicy,
    credentials::KeyHasher,
    policy::Policy,
    record::Record,
    tls::{Terminator, UpstreamTls},
};

/// Everything the L7 path shares across connections.
pub struct L7 {
    pub policy: arc_swap::ArcSwap<Policy>,
    /// The price table behind `egret.cost.usd` (swapped on reload).
    pub prices: arc_swap::ArcSwap<crate::cost::Prices>,
    pub budgets: Arc<Budgets>,
    pub terminator: Arc<Terminator>,
    pub upstream_tls: Arc<UpstreamTls>,
    pub keys: Arc<KeyHasher>,
    pub records: tokio::sync::mpsc::Sender<Record>,
    /// The recorder's counters: each sandbox's share of the record queue
    /// (the recorder releases) and the records the queue refused.
    pub record_stats: Arc<crate::record::RecordStats>,
    /// The node's resolver, for plain-HTTP destination checks.
    pub resolver: destination::Resolver,
    /// Per-sandbox connection, request and buffer budgets.
    pub admission: Arc<admission::Admission>,
    /// Shutdown state shared by every connection.
    pub drain: Drain,
    /// MCP's legacy HTTP+SSE transport: requests awaiting their answer on
    /// the session's stream.
    pub mcp: mcp_legacy::Registry,
}

impl L7 {
    /// Hands a record to the recorder without ever blocking the data path.
    pub fn emit(&self, rec: Record) {
        // The sandbox's share of the queue first: one sandbox's volume
        // never decides what another loses.
        if !self.record_stats.queue.admit(&rec) {
            crate::limited!(QueueShare, warn, "a sandbox had its share of the record queue queued: transaction record dropped (egret_records_over_sandbox_share_total)");
            return;
        }
        if let Err(e) = self.records.try_send(rec) {
            let rec = match e {
                tokio::sync::mpsc::error::TrySendError::Full(r)
                | tokio::sync::mpsc::error::TrySendError::Closed(r) => r,
            };
            self.record_stats.queue.release(&rec);
            let n = self
                .record_stats
                .queue_dropped
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "record queue full: transaction records dropped"
                );
            }
        }
    }
}

/// Where a connection's attribution came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributionSource {
    /// The kernel tag of the sandbox socket (redirect listener).
    Kernel,
    /// A trusted dialer's PROXY protocol v2 header (`crate::proxy_protocol`).
    ProxyProtocol,
}

impl AttributionSource {
    /// The value of `egret.attribution.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttributionSource::Kernel => crate::semconv::ATTRIBUTION_SOURCE_KERNEL,
            AttributionSource::ProxyProtocol => crate::semconv::ATTRIBUTION_SOURCE_PROXY_PROTOCOL,
        }
    }
}

/// Where an accepted connection really came from: per the kernel, or per a
/// trusted dialer's PROXY header (then `cookie` is 0 and `tag` empty).
#[derive(Debug, Clone)]
pub struct Origin {
    pub cookie: u64,
    pub tag: SockTag,
    pub dst: SocketAddr,
    pub attribution: Option<Attribution>,
    pub netns: Option<PathBuf>,
    pub source: AttributionSource,
    /// Host name of the original request when the dialer said (PROXY
    /// AUTHORITY TLV): the fallback for a ClientHello without SNI.
    pub authority: Option<String>,
}

#[derive(Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub refused_unlinked: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub bytes_upstream: AtomicU64,
    pub bytes_downstream: AtomicU64,
}

pub struct Proxy {
    kernel: Arc<Kernel>,
    registry: Arc<Registry>,
    l7: Arc<L7>,
    port: u16,
    /// Open listener pairs by network namespace identity (the nsfs inode
    /// of the netns; the agent's own is key 0), with the sandboxes using
    /// each: a pair closes when its last sandbox goes.
    listeners: Mutex<HashMap<u64, listen::NetnsListeners>>,
    pub stats: ProxyStats,
}

impl Proxy {
    pub fn new(kernel: Arc<Kernel>, registry: Arc<Registry>, l7: Arc<L7>, port: u16) -> Arc<Proxy> {
        Arc::new(Proxy {
            kernel,
            registry,
            l7,
            port,
            listeners: Mutex::new(HashMap::new()),
            stats: ProxyStats::default(),
        })
    }

    /// Serves a connection whose origin is known, by what its first bytes
    /// are: TLS is terminated, HTTP served, anything else spliced or
    /// refused per the gateway's `nonHttp`.
    pub(crate) async fn dispatch<S>(&self, stream: S, origin: Origin, protocol: Protocol)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(_conn) = self.l7.admission.connection(admission::key_of(&origin)) else {
            crate::limited!(SandboxLimit, warn, dst = %origin.dst, "a sandbox at its connection limit: connection closed");
            return;
        };
        match protocol {
            Protocol::Tls => http::serve_tls(self.l7.clone(), stream, origin).await,
            Protocol::Http => http::serve_plain(self.l7.clone(), stream, origin).await,
            Protocol::Other => {
                let decision = self
                    .l7
                    .policy
                    .load()
                    .decide(origin.attribution.as_ref(), None);
                let refuse = decision
                    .gateway
                    .as_ref()
                    .is_none_or(|g| g.non_http == NonHttpPolicy::Refuse);
                if refuse {
                    if let Some(suppressed) = LOG.check(Reason::RefusedNonHttp) {
                        tracing::info!(dst = %origin.dst, suppressed, "refused a non-HTTP connection on a captured port");
                    }
                    return;
                }
                self.splice(stream, &origin).await;
            }
        }
    }

    async fn splice<S>(&self, mut client: S, origin: &Origin)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut upstream = match upstream::dial(origin.netns.as_deref(), origin.dst).await {
            Ok(s) => s,
            Err(e) => {
                self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = LOG.check(Reason::UpstreamConnect) {
                    tracing::info!(dst = %origin.dst, suppressed, "upstream connect failed: {e}");
                }
                return;
            }
        };
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                self.stats.bytes_upstream.fetch_add(up, Ordering::Relaxed);
                self.stats
                    .bytes_downstream
                    .fetch_add(down, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(dst = %origin.dst, "splice ended: {e}"),
        }
    }
}

impl crate::admin::Report for Proxy {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        let p = &self.stats;
        m.counter(
            "egret_proxy_connections",
            "Connections the redirect listener handled, by result",
            &[
                (
                    vec![("result", "accepted".into())],
                    p.accepted.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "refused_unlinked".into())],
                    p.refused_unlinked.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "upstream_error".into())],
                    p.upstream_errors.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "malformed_request".into())],
                    http::MALFORMED_REQUESTS.load(Ordering::Relaxed),
                ),
            ],
        )?;
        let st = &self.l7.mcp.stats;
        let outcome = |name: &'static str, c: &AtomicU64| {
            (vec![("outcome", name.into())], c.load(Ordering::Relaxed))
        };
        m.counter(
            "egret_mcp_sse_requests",
            "MCP HTTP+SSE requests followed to their answer on the session's stream, by outcome (overflow, id_reused: not followed)",
            &[
                outcome("answered", &st.answered),
                outcome("timeout", &st.timeout),
                outcome("stream_closed", &st.stream_closed),
                outcome("agent_shutdown", &st.agent_shutdown),
                outcome("overflow", &st.overflow),
                outcome("id_reused", &st.id_reused),
                outcome("session_refused", &st.sessions_refused),
            ],
        )?;
        m.gauge(
            "egret_mcp_sse_pending_requests",
            "MCP HTTP+SSE requests awaiting their answer",
            &[(
                vec![],
                i64::try_from(self.l7.mcp.pending()).unwrap_or(i64::MAX),
            )],
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        let p = &self.stats;
        s.insert(
            "proxy".into(),
            serde_json::json!({
                "accepted": p.accepted.load(Ordering::Relaxed),
                "refused_unlinked": p.refused_unlinked.load(Ordering::Relaxed),
                "upstream_errors": p.upstream_errors.load(Ordering::Relaxed),
                "malformed_requests": http::MALFORMED_REQUESTS.load(Ordering::Relaxed),
                // Sandboxes using each open listener pair (the agent's own: 1).
                "listener_holders": self.listener_holders(),
            }),
        );
    }
}
