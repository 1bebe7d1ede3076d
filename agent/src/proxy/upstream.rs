//! The provider leg: one upstream connection per sandbox connection, dialled
//! lazily to the original destination from inside the sandbox's netns, over
//! TLS with the same SNI the sandbox asked for, HTTP/2 when the provider
//! offers it and HTTP/1.1 otherwise.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::{net::TcpStream, sync::Mutex};

use super::io::{ByteCounts, Counted};
use crate::{
    net, netns,
    tls::{UpstreamTls, ALPN_H2, ALPN_HTTP11},
};

pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A body egret writes itself (refusals, a buffered request replayed).
pub(super) fn full(body: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(body.into())
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed_unsync()
}

/// HTTP/2 flow-control windows towards providers. h2 closes a connection
/// (GOAWAY `ENHANCE_YOUR_CALM`) once the framing overhead of buffered small
/// DATA frames passes half the connection window; an SSE stream of tiny
/// events that arrives faster than a busy agent forwards it would trip that
/// with hyper's defaults (2 MiB per stream, 5 MiB per connection). A smaller
/// stream window and a larger connection window keep a stream of ~50-byte
/// events within the budget (1 MiB / 50 B × 206 B ≈ 4 MiB < 8 MiB).
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONN_WINDOW: u32 = 16 << 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `dst` from inside `netns` (None = the agent's own).
pub async fn dial(netns: Option<&Path>, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = netns::run_in(netns, move || net::tcp_socket(dst))?;
    net::connect(sock, dst, CONNECT_TIMEOUT).await
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {dst}: {source}")]
    Connect {
        dst: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS to {name}: {source}")]
    Tls {
        name: String,
        source: std::io::Error,
    },
    #[error("invalid upstream server name {0:?}")]
    Name(String),
    #[error("TLS client config: {0}")]
    Config(String),
    #[error("HTTP handshake with {dst}: {source}")]
    Handshake {
        dst: SocketAddr,
        source: hyper::Error,
    },
    #[error("upstream request: {0}")]
    Request(#[source] hyper::Error),
}

impl UpstreamError {
    /// Short machine-readable kind for `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "upstream_connect",
            UpstreamError::Tls { .. } | UpstreamError::Name(_) | UpstreamError::Config(_) => {
                "upstream_tls"
            }
            UpstreamError::Handshake { .. } => "upstream_handshake",
            UpstreamError::Request(_) => "upstream_request",
        }
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ProxyBody>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

/// Where and how to reach the provider for one sandbox connection.
pub struct Target {
    pub dst: SocketAddr,
    pub netns: Option<PathBuf>,
    /// SNI for TLS; None = plain HTTP.
    pub tls_name: Option<String>,
    /// Offer HTTP/2 upstream: only when the sandbox speaks HTTP/2 to us.
    /// An HTTP/1.1 sandbox connection carries one exchange at a time, so one
    /// HTTP/1.1 upstream connection matches it exactly — and avoids h2's
    /// extra frames and writes (HEADERS and DATA leave separately) on every
    /// request.
    pub h2: bool,
}

pub struct Upstream {
    target: Target,
    tls: Arc<UpstreamTls>,
    pub counts: Arc<ByteCounts>,
    sender: Mutex<Option<Sender>>,
}

impl Upstream {
    pub fn new(target: Target, tls: Arc<UpstreamTls>) -> Upstream {
        Upstream {
            target,
            tls,
            counts: Arc::new(ByteCounts::default()),
            sender: Mutex::new(None),
        }
    }

    /// "2" or "1.1" once connected.
    pub async fn protocol(&self) -> Option<&'static str> {
        match &*self.sender.lock().await {
            Some(Sender::H2(_)) => Some("2"),
            Some(Sender::H1(_)) => Some("1.1"),
            None => None,
        }
    }

    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let dst = self.target.dst;
        let tcp = dial(self.target.netns.as_deref(), dst)
            .await
            .map_err(|source| UpstreamError::Connect { dst, source })?;
        let tcp = Counted::new(tcp, self.counts.clone());
        let exec = TokioExecutor::new();
        match &self.target.tls_name {
            Some(name) => {
                let cfg = self
                    .tls
                    .client_config(if self.target.h2 {
                        &[ALPN_H2, ALPN_HTTP11]
                    } else {
                        &[ALPN_HTTP11]
                    })
                    .map_err(|e| UpstreamError::Config(e.to_string()))?;
                let server_name = ServerName::try_from(name.clone())
                    .map_err(|_| UpstreamError::Name(name.clone()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(server_name, tcp)
                    .await
                    .map_err(|source| UpstreamError::Tls {
                        name: name.clone(),
                        source,
                    })?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                let io = TokioIo::new(tls);
                if h2 {
                    let (s, conn) = hyper::client::conn::http2::Builder::new(exec)
                        .initial_stream_window_size(H2_STREAM_WINDOW)
                        .initial_connection_window_size(H2_CONN_WINDOW)
                        .handshake(io)
                        .await
                        .map_err(|source| UpstreamError::Handshake { dst, source })?;
                    tokio::spawn(conn);
                    Ok(Sender::H2(s))
                } else {
                    let (s, conn) = hyper::client::conn::http1::handshake(io)
                        .await
                        .map_err(|source| UpstreamError::Handshake { dst, source })?;
                    // A WebSocket upgrade hands the connection over.
                    tokio::spawn(conn.with_upgrades());
                    Ok(Sender::H1(s))
                }
            }
            None => {
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|source| UpstreamError::Handshake { dst, source })?;
                tokio::spawn(conn.with_upgrades());
                Ok(Sender::H1(s))
            }
        }
    }

    /// Sends one request, (re)connecting when needed. `authority` is the
    /// host[:port] the sandbox addressed.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        authority: &str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send_inner(req, authority, None).await
    }

    /// Sends a WebSocket upgrade request (HTTP/1.1): like [`Self::send`],
    /// but `Connection: upgrade` and `Upgrade: {upgrade}` go along. The
    /// response is the provider's 101 (take its connection with
    /// `hyper::upgrade::on`) or its refusal.
    pub async fn send_upgrade(
        &self,
        req: Request<ProxyBody>,
        authority: &str,
        upgrade: http::HeaderValue,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send_inner(req, authority, Some(upgrade)).await
    }

    async fn send_inner(
        &self,
        mut req: Request<ProxyBody>,
        authority: &str,
        upgrade: Option<http::HeaderValue>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut guard = self.sender.lock().await;
        let alive = match guard.as_mut() {
            Some(Sender::H1(s)) => s.ready().await.is_ok(),
            Some(Sender::H2(s)) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            // Boxed: the dial + TLS + HTTP handshake future is ~8 KB and
            // runs once per connection; inline it would make every
            // request's future (moved on each spawn/poll) that much bigger.
            *guard = Some(Box::pin(self.connect()).await?);
        }
        let scheme = if self.target.tls_name.is_some() {
            "https"
        } else {
            "http"
        };
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        match guard.as_mut() {
            Some(Sender::H2(s)) => {
                *req.version_mut() = http::Version::HTTP_2;
                req.headers_mut().remove(http::header::HOST);
                strip_hop_by_hop(req.headers_mut());
                *req.uri_mut() = format!("{scheme}://{authority}{pq}")
                    .parse()
                    .unwrap_or_default();
                let mut s = s.clone();
                drop(guard);
                s.send_request(req).await.map_err(UpstreamError::Request)
            }
            Some(Sender::H1(s)) => {
                *req.version_mut() = http::Version::HTTP_11;
                if !req.headers().contains_key(http::header::HOST) {
                    if let Ok(v) = http::HeaderValue::from_str(authority) {
                        req.headers_mut().insert(http::header::HOST, v);
                    }
                }
                strip_hop_by_hop(req.headers_mut());
                if let Some(u) = upgrade {
                    let h = req.headers_mut();
                    h.insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("upgrade"),
                    );
                    h.insert(http::header::UPGRADE, u);
                }
                *req.uri_mut() = pq.parse().unwrap_or_default();
                // http1: one request at a time on this connection; the lock
                // is held until the response head arrives.
                s.send_request(req).await.map_err(UpstreamError::Request)
            }
            None => unreachable!("connected above"),
        }
    }
}

/// Connection-specific headers never cross the proxy.
pub fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
    ] {
        h.remove(name);
    }
}
