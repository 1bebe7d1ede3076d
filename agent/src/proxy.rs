//! The redirect listener: where the kernel sends captured sandbox connections.
//!
//! One listener pair (127.0.0.1 and ::1 on `node.listenPort`) lives in the
//! agent's netns and one in every registered sandbox netns, ztunnel-style.
//! Each accepted connection is matched to the sandbox socket that made it
//! through the kernel's link map (client address inside that netns); a
//! connection with no link was not redirected by the kernel and is refused —
//! egret is never an open proxy. The upstream socket is created inside the
//! sandbox's netns, so the original destination means what it meant there.
//!
//! After the origin is known the first bytes decide the path: a TLS
//! ClientHello is terminated (`http::serve_tls`), an HTTP request line is
//! served as plain HTTP (`http::serve_plain`), anything else is spliced to
//! the original destination or refused, per the gateway's `nonHttp`.
//!
//! This listener never parses PROXY protocol headers: those are only read
//! on the trusted-dialer listeners (`crate::proxy_protocol`), which hand
//! their connections to [`Proxy::dispatch`] with the header's attribution.
pub mod admission;
pub mod destination;
pub mod http;
pub mod io;
pub mod tap;
pub mod upstream;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use egret_common::{LinkKey, SockTag, AF_INET, AF_INET6};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::ratelimit::{Reason, LOG};
use crate::{
    attribution::{Attribution, Registry},
    bpf::Kernel,
    budget::Budgets,
    config::NonHttpPolicy,
    credentials::KeyHasher,
    flow::orig_dst,
    netns,
    policy::Policy,
    record::Record,
    tls::{Terminator, UpstreamTls},
};

/// How long a connection may stay silent before its protocol is known;
/// server-speaks-first protocols are then spliced.
pub(crate) const SNIFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the L7 path shares across connections.
pub struct L7 {
    pub policy: arc_swap::ArcSwap<Policy>,
    pub budgets: Arc<Budgets>,
    pub terminator: Arc<Terminator>,
    pub upstream_tls: Arc<UpstreamTls>,
    pub keys: Arc<KeyHasher>,
    pub records: tokio::sync::mpsc::Sender<Record>,
    pub dropped_records: AtomicU64,
    /// The node's resolver, for plain-HTTP destination checks.
    pub resolver: destination::Resolver,
    /// Each sandbox's share of the record queue (the recorder releases).
    pub queue_shares: Arc<crate::record::QueueShares>,
    /// Per-sandbox connection, request and buffer budgets.
    pub admission: Arc<admission::Admission>,
    /// Shutdown state shared by every connection.
    pub drain: Drain,
}

/// Graceful shutdown, after ztunnel's drain: stop accepting, let every
/// connection finish what it is doing (HTTP/1 completes the exchange in
/// flight and closes, HTTP/2 sends GOAWAY and completes its open streams),
/// and after a bound close what is left. Transactions cut that way are
/// recorded with `error.type = agent_shutdown`.
#[derive(Debug, Default)]
pub struct Drain {
    /// Fired when draining starts.
    pub started: CancellationToken,
    /// Fired when the bound is reached: remaining connections are closed.
    pub forced: CancellationToken,
    /// Every accepted connection's task.
    tasks: TaskTracker,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Connections open when draining started.
    pub in_flight: usize,
    /// Of those, still open at the bound and closed.
    pub forced: usize,
}

impl Drain {
    /// Stops accepting and waits up to `grace` for connections to finish;
    /// closes the rest.
    pub async fn run(&self, grace: Duration) -> DrainOutcome {
        self.started.cancel();
        self.tasks.close();
        let in_flight = self.tasks.len();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return DrainOutcome {
                in_flight,
                forced: 0,
            };
        }
        let forced = self.tasks.len();
        self.forced.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        DrainOutcome { in_flight, forced }
    }
}

impl L7 {
    /// Hands a record to the recorder without ever blocking the data path.
    pub fn emit(&self, rec: Record) {
        // The sandbox's share of the queue first: one sandbox's volume
        // never decides what another loses.
        if !self.queue_shares.admit(&rec) {
            crate::limited!(QueueShare, warn, "a sandbox had its share of the record queue queued: transaction record dropped (egret_records_over_sandbox_share_total)");
            return;
        }
        if let Err(e) = self.records.try_send(rec) {
            let rec = match e {
                tokio::sync::mpsc::error::TrySendError::Full(r)
                | tokio::sync::mpsc::error::TrySendError::Closed(r) => r,
            };
            self.queue_shares.release(&rec);
            let n = self.dropped_records.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "record queue full: transaction records dropped"
                );
            }
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One netns's redirect listeners and the sandboxes that use them.
struct NetnsListeners {
    tasks: Vec<JoinHandle<()>>,
    holders: std::collections::HashSet<String>,
}

/// A netns's identity: the inode of its nsfs file (the same for every path
/// naming it); 0 for the agent's own.
fn netns_key(netns: Option<&Path>) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    match netns {
        None => Ok(0),
        Some(p) => Ok(std::fs::metadata(p)?.ino()),
    }
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
    listeners: Mutex<HashMap<u64, NetnsListeners>>,
    pub stats: ProxyStats,
}

fn words_v4(ip: std::net::Ipv4Addr) -> [u32; 4] {
    [u32::from_ne_bytes(ip.octets()), 0, 0, 0]
}

fn words_v6(ip: std::net::Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    let mut w = [0u32; 4];
    for (i, c) in o.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

/// Link-map keys a peer address may have been stored under.
fn link_keys(netns_cookie: u64, peer: SocketAddr) -> [LinkKey; 2] {
    let port = u32::from(peer.port());
    match peer.ip() {
        IpAddr::V4(v4) => [
            LinkKey {
                netns_cookie,
                addr: words_v4(v4),
                port,
                family: u32::from(AF_INET),
            },
            // An AF_INET6 client socket talking to a v4-mapped destination.
            LinkKey {
                netns_cookie,
                addr: words_v6(v4.to_ipv6_mapped()),
                port,
                family: u32::from(AF_INET6),
            },
        ],
        IpAddr::V6(v6) => {
            let k = LinkKey {
                netns_cookie,
                addr: words_v6(v6),
                port,
                family: u32::from(AF_INET6),
            };
            [k, k]
        }
    }
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

    /// Opens the listener pair in `netns` (None = the agent's own, held
    /// for the agent's life) for `holder` (a sandbox id), or adds `holder`
    /// to the pair already open there — under whatever path the netns is
    /// named.
    pub fn ensure_listeners(
        self: &Arc<Self>,
        netns: Option<&Path>,
        holder: &str,
    ) -> std::io::Result<()> {
        let key = netns_key(netns)?;
        let mut map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&key) {
            open.holders.insert(holder.to_owned());
            return Ok(());
        }
        let port = self.port;
        let path = netns.map(Path::to_owned);
        let bound = netns::run_in(netns, move || {
            let v4 = bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
            let v6 = bind(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).ok();
            Ok((v4, v6))
        })?;
        let mut tasks = Vec::new();
        for l in [Some(bound.0), bound.1].into_iter().flatten() {
            let cookie = netns::socket_netns_cookie(&l)?;
            let listener = TcpListener::from_std(l)?;
            let me = self.clone();
            let ns = path.clone();
            tasks.push(tokio::spawn(async move {
                me.accept_loop(listener, cookie, ns).await
            }));
        }
        tracing::info!(netns = ?path, port, "redirect listeners open");
        map.insert(
            key,
            NetnsListeners {
                tasks,
                holders: std::iter::once(holder.to_owned()).collect(),
            },
        );
        Ok(())
    }

    /// `holder` no longer uses the listeners of `netns`; the last one out
    /// closes them (connections already accepted go on). A netns that is
    /// gone already closed its listeners' sockets with it.
    pub fn release_listeners(&self, netns: &Path, holder: &str) {
        let mut map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let key = match netns_key(Some(netns)) {
            Ok(k) => Some(k),
            // The netns file is gone: find the holder wherever it is.
            Err(_) => map
                .iter()
                .find(|(k, l)| **k != 0 && l.holders.contains(holder))
                .map(|(k, _)| *k),
        };
        let Some(key) = key.filter(|k| *k != 0) else {
            return;
        };
        if let Some(open) = map.get_mut(&key) {
            open.holders.remove(holder);
            if open.holders.is_empty() {
                for t in &open.tasks {
                    t.abort();
                }
                map.remove(&key);
            }
        }
    }

    /// Network namespaces with listeners open, and how many sandboxes use
    /// each (for `/status` and tests).
    pub fn listener_holders(&self) -> Vec<usize> {
        let map = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|l| l.holders.len()).collect()
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        netns_cookie: u64,
        netns: Option<PathBuf>,
    ) {
        let drain = &self.l7.drain;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // Draining: the listener closes, new connects are refused.
                _ = drain.started.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    // Responses go out as several writes (h2 HEADERS then
                    // DATA, TLS records): with Nagle on, a small second
                    // write waits for the sandbox's delayed ACK (~40 ms).
                    let _ = stream.set_nodelay(true);
                    let me = self.clone();
                    let ns = netns.clone();
                    drain.tasks.spawn(async move {
                        let forced = me.l7.drain.forced.clone();
                        tokio::select! {
                            biased;
                            () = me.serve(stream, peer, netns_cookie, ns) => {}
                            // Backstop for connections not served by hyper
                            // (sniffing, TLS handshake, splice).
                            () = forced.cancelled() => {}
                        }
                    });
                }
                Err(e) => {
                    if let Some(suppressed) = LOG.check(Reason::Accept) {
                        tracing::warn!(suppressed, "accept: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Finds the sandbox socket behind an accepted connection.
    pub fn origin(
        &self,
        netns_cookie: u64,
        peer: SocketAddr,
        netns: Option<PathBuf>,
    ) -> Option<Origin> {
        let cookie = link_keys(netns_cookie, peer)
            .iter()
            .find_map(|k| self.kernel.maps.link(k))?;
        let tag = self.kernel.maps.tag(cookie)?;
        Some(Origin {
            cookie,
            dst: orig_dst(&tag),
            attribution: self.registry.resolve(tag.attr),
            tag,
            netns,
            source: AttributionSource::Kernel,
            authority: None,
        })
    }

    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        netns_cookie: u64,
        netns: Option<PathBuf>,
    ) {
        let Some(origin) = self.origin(netns_cookie, peer, netns) else {
            self.stats.refused_unlinked.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = LOG.check(Reason::RefusedUnlinked) {
                tracing::warn!(%peer, suppressed, "refused a connection the kernel did not redirect");
            }
            return;
        };
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let sniffed = sniff(&stream).await;
        self.dispatch(stream, origin, sniffed).await;
    }

    /// Serves a connection whose origin is known, by what its first bytes
    /// are: TLS is terminated, HTTP served, anything else spliced or
    /// refused per the gateway's `nonHttp`.
    pub(crate) async fn dispatch<S>(&self, stream: S, origin: Origin, sniffed: Sniffed)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(_conn) = self.l7.admission.connection(admission::key_of(&origin)) else {
            crate::limited!(SandboxLimit, warn, dst = %origin.dst, "a sandbox at its connection limit: connection closed");
            return;
        };
        match sniffed {
            Sniffed::Tls => http::serve_tls(self.l7.clone(), stream, origin).await,
            Sniffed::Http => http::serve_plain(self.l7.clone(), stream, origin).await,
            Sniffed::Other => {
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
        let mut upstream = match dial(origin.netns.as_deref(), origin.dst).await {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Tls,
    Http,
    Other,
}

/// Bytes of the first segment(s) looked at.
const SNIFF_BYTES: usize = 8;

/// Looks at the first bytes without consuming them, waiting (up to
/// [`SNIFF_TIMEOUT`]) while they could still be the start of an HTTP request
/// line: a client that sends "G", then "ET / HTTP/1.1…" is served as HTTP,
/// never spliced past the policy. Silence is `Other` (server-speaks-first).
async fn sniff(stream: &TcpStream) -> Sniffed {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; SNIFF_BYTES];
    let mut pause = Duration::from_millis(5);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Sniffed::Other,
        };
        if n == 0 {
            return Sniffed::Other;
        }
        if let Some(kind) = classify(&buf[..n]) {
            return kind;
        }
        // An HTTP-looking prefix: wait for more (peek returns at once while
        // the same bytes are queued, so pause between looks).
        if tokio::time::Instant::now() + pause >= deadline {
            return Sniffed::Http;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Decides on the first bytes; None while they may still be an HTTP method.
pub(crate) fn classify(b: &[u8]) -> Option<Sniffed> {
    if b.first() == Some(&0x16) {
        return Some(Sniffed::Tls);
    }
    // An HTTP/1 request line starts with an upper-case method token (h2
    // prior knowledge: "PRI * HTTP/2.0").
    let method_len = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    if method_len == b.len() {
        return (method_len >= SNIFF_BYTES).then_some(Sniffed::Http);
    }
    if method_len >= 3 && b[method_len] == b' ' {
        return Some(Sniffed::Http);
    }
    Some(Sniffed::Other)
}

/// Fuzzing hook: the classification of a connection's first bytes (only
/// the first 8 count, as the proxy peeks no more): `"tls"`, `"http"` or
/// `"other"`.
#[doc(hidden)]
pub fn sniff_bytes(b: &[u8]) -> &'static str {
    if b.is_empty() {
        return "other";
    }
    match classify(&b[..b.len().min(SNIFF_BYTES)]) {
        Some(Sniffed::Tls) => "tls",
        // Undecided (a short upper-case prefix): `sniff` waits for more and
        // serves it as HTTP when nothing decides it before the deadline.
        Some(Sniffed::Http) | None => "http",
        Some(Sniffed::Other) => "other",
    }
}

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Connects to `dst` from inside `netns` (None = the agent's own).
pub async fn dial(netns: Option<&Path>, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = netns::run_in(netns, move || {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(dst),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_nonblocking(true)?;
        s.set_tcp_nodelay(true)?;
        Ok(s)
    })?;
    let sock = TcpSocket::from_std_stream(sock.into());
    tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(dst))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_connections_then_closes_what_is_left() {
        let drain = Arc::new(Drain::default());
        // Finishes soon after draining starts (an exchange completing).
        let d = drain.clone();
        drain.tasks.spawn(async move {
            d.started.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        // Never finishes on its own (a long stream).
        let d = drain.clone();
        drain.tasks.spawn(async move {
            tokio::select! {
                () = std::future::pending::<()>() => {}
                () = d.forced.cancelled() => {}
            }
        });
        let t0 = std::time::Instant::now();
        let out = drain.run(Duration::from_millis(300)).await;
        assert_eq!(
            out,
            DrainOutcome {
                in_flight: 2,
                forced: 1
            }
        );
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(drain.tasks.is_empty());
        // Nothing in flight: returns at once.
        let idle = Drain::default();
        let out = idle.run(Duration::from_secs(30)).await;
        assert_eq!(
            out,
            DrainOutcome {
                in_flight: 0,
                forced: 0
            }
        );
    }

    #[test]
    fn first_bytes_decide_only_when_they_can() {
        assert_eq!(classify(&[0x16, 3, 1]), Some(Sniffed::Tls));
        assert_eq!(classify(b"GET / HT"), Some(Sniffed::Http));
        assert_eq!(classify(b"PRI * HT"), Some(Sniffed::Http));
        assert_eq!(classify(b"PROPFIND"), Some(Sniffed::Http));
        assert_eq!(classify(b"SSH-2.0-"), Some(Sniffed::Other));
        assert_eq!(classify(b"\0GET / "), Some(Sniffed::Other));
        assert_eq!(classify(b"get / ht"), Some(Sniffed::Other));
        // Split request lines are not decided yet (not spliced past policy).
        assert_eq!(classify(b"G"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET"), None);
        assert_eq!(classify(b"GET "), Some(Sniffed::Http));
    }
}
