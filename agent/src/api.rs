//! The attribution API: HTTP/1.1 on a root-only unix socket.
//!
//! `PUT /v1/sandboxes/{id}`, `DELETE /v1/sandboxes/{id}`, `GET /v1/sandboxes`,
//! and `GET /v1/records/stream` (records as they are captured, NDJSON, for
//! `egret tail`; filters `invocation_id`, `agent_name`, `kind`).
//! The socket is mode 0600 and every caller's credentials are checked with
//! `SO_PEERCRED`: a process inside the sandbox tree is refused even as root,
//! so a sandbox can never (re)write its own attribution.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

use crate::{
    attribution::{Registry, Sandbox, SandboxSpec},
    bpf::Kernel,
    proxy::Proxy,
};

const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("attribution API socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("attribution API at {path} is not reachable ({source}); is `egret run` running?")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("attribution API: {0}")]
    Http(#[from] hyper::Error),
    #[error("attribution API request: {0}")]
    Request(#[from] http::Error),
    #[error("attribution API body: {0}")]
    Json(#[from] serde_json::Error),
    #[error("attribution API refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
}

pub struct ApiState {
    pub tail: tokio::sync::broadcast::Sender<Arc<crate::record::Record>>,
    pub tail_lagged: Arc<crate::record::RecordStats>,
    pub registry: Arc<Registry>,
    /// Where the invocation record goes when an unregistration ends an
    /// invocation (the recorder's queue).
    pub records: tokio::sync::mpsc::Sender<crate::record::Record>,
    pub kernel: Arc<Kernel>,
    pub proxy: Arc<Proxy>,
    /// Absolute sandbox root cgroup path relative to the cgroup mount, e.g. `/egret.slice`.
    pub sandbox_root_rel: String,
}

/// Binds the socket (0600) and serves until the task is dropped.
pub async fn serve(path: &Path, state: Arc<ApiState>) -> Result<(), ApiError> {
    let io = |source| ApiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let _ = std::fs::remove_file(path);
    // Create with a tight umask so the socket is never briefly world-writable.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("api accept: {e}");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let allowed = caller_allowed(&stream, &state.sandbox_root_rel).map_err(Arc::new);
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let allowed = allowed.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &state, allowed).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("api connection: {e}");
            }
        });
    }
}

/// Why a caller may not use the API (answered with 403).
#[derive(Debug, thiserror::Error)]
enum CallerRefused {
    #[error("peer credentials: {0}")]
    Credentials(#[source] nix::Error),
    #[error("only root may use the attribution API")]
    NotRoot,
    #[error("reading caller cgroup: {0}")]
    Cgroup(#[source] std::io::Error),
    #[error("callers inside a sandbox may not use the attribution API")]
    InSandbox,
}

/// Ok when the peer is root and not inside the sandbox tree.
fn caller_allowed(stream: &UnixStream, sandbox_root_rel: &str) -> Result<(), CallerRefused> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(CallerRefused::Credentials)?;
    if cred.uid() != 0 {
        return Err(CallerRefused::NotRoot);
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", cred.pid()))
        .map_err(CallerRefused::Cgroup)?;
    for line in cgroups.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            if path == sandbox_root_rel || path.starts_with(&format!("{sandbox_root_rel}/")) {
                return Err(CallerRefused::InSandbox);
            }
        }
    }
    Ok(())
}

type ApiBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn json(status: StatusCode, body: serde_json::Value) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// Records as they are captured, one JSON object per line, until the client
/// goes away. A client that falls behind skips records (counted).
fn record_stream(state: &ApiState, query: Option<&str>) -> Response<ApiBody> {
    let inv = query_param(query, "invocation_id").map(str::to_owned);
    let agent = query_param(query, "agent_name").map(str::to_owned);
    let kind = query_param(query, "kind").map(str::to_owned);
    let rx = state.tail.subscribe();
    let lagged = state.tail_lagged.clone();
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let (inv, agent, kind, lagged) = (inv.clone(), agent.clone(), kind.clone(), lagged.clone());
        async move {
            loop {
                match rx.recv().await {
                    Ok(rec) => {
                        let keep = inv
                            .as_deref()
                            .is_none_or(|i| rec.invocation_id() == Some(i))
                            && agent
                                .as_deref()
                                .is_none_or(|a| rec.get_str(crate::semconv::AGENT_NAME) == Some(a))
                            && kind.as_deref().is_none_or(|k| rec.kind() == k);
                        if keep {
                            let mut line = rec.to_json_line();
                            line.push('\n');
                            let frame = hyper::body::Frame::data(Bytes::from(line));
                            return Some((Ok::<_, std::convert::Infallible>(frame), rx));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        lagged
                            .tail_lagged
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(http_body_util::StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// Writes the invocation record when `un` ended its invocation. The
/// recorder's queue is bounded: the caller waits for room rather than the
/// record being lost.
async fn emit_invocation(state: &ApiState, un: &crate::attribution::Unregistered) {
    let Some(rec) = un.invocation_record(crate::record::now_unix_nanos()) else {
        return;
    };
    state.tail_lagged.queue.admit_always(&rec);
    if let Err(e) = state.records.send(rec).await {
        state.tail_lagged.queue.release(&e.0);
        tracing::warn!(
            invocation = %un.sandbox.attribution.invocation_id,
            "recorder stopped; invocation record not written"
        );
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<ApiBody> {
    json(status, serde_json::json!({ "error": message.to_string() }))
}

async fn handle(
    req: Request<Incoming>,
    state: &ApiState,
    allowed: Result<(), Arc<CallerRefused>>,
) -> Response<ApiBody> {
    if let Err(why) = allowed {
        return error(StatusCode::FORBIDDEN, why);
    }
    let path = req.uri().path().to_owned();
    let id = path.strip_prefix("/v1/sandboxes/").map(str::to_owned);
    match (req.method().clone(), path.as_str(), id) {
        (Method::GET, "/v1/records/stream", _) => record_stream(state, req.uri().query()),
        (Method::GET, "/v1/sandboxes", _) => {
            json(StatusCode::OK, serde_json::json!(state.registry.list()))
        }
        (Method::PUT, _, Some(id)) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, e),
            };
            let spec: SandboxSpec = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
            };
            let netns = spec.netns.clone();
            if let Some(ns) = &netns {
                if !ns.exists() {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("netns {} does not exist", ns.display()),
                    );
                }
            }
            // A new sandbox netns comes with a veth whose host end is a new
            // node address: guard it before the sandbox runs anything.
            if let Err(e) = state.kernel.maps.refresh_node_addrs() {
                tracing::warn!("refreshing node addresses: {e}");
            }
            let previous = state
                .registry
                .list()
                .into_iter()
                .find(|s| s.id == id)
                .and_then(|s| s.netns);
            // Validated (and persisted) first; listeners only for a
            // registration that stands.
            let (sb, replaced) = match state.registry.register(&id, spec, &state.kernel.maps) {
                Ok(r) => r,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            // Re-registered for another invocation: the one it replaced may
            // be over.
            if let Some(un) = replaced {
                emit_invocation(state, &un).await;
            }
            if let Some(ns) = &netns {
                if let Err(e) = state.proxy.ensure_listeners(Some(ns), &id) {
                    let _ = state.registry.unregister(&id, &state.kernel.maps);
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("opening listeners in netns {}: {e}", ns.display()),
                    );
                }
            }
            // Re-registered into another netns: let go of the old one.
            if let Some(old) = previous.filter(|p| Some(p) != netns.as_ref()) {
                state.proxy.release_listeners(&old, &id);
            }
            tracing::info!(sandbox = %sb.id, invocation = %sb.attribution.invocation_id, generation = sb.generation, "sandbox registered");
            json(StatusCode::OK, serde_json::json!(sb))
        }
        (Method::DELETE, _, Some(id)) => match state.registry.unregister(&id, &state.kernel.maps) {
            Ok(un) => {
                let sb = &un.sandbox;
                if let Some(ns) = &sb.netns {
                    state.proxy.release_listeners(ns, &sb.id);
                }
                tracing::info!(sandbox = %sb.id, "sandbox unregistered");
                emit_invocation(state, &un).await;
                json(StatusCode::OK, serde_json::json!(sb))
            }
            Err(e) => error(StatusCode::NOT_FOUND, e),
        },
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// A client for the API, used by `egret exec` and `egret sandbox`.
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client { path: path.into() }
    }

    /// Connects, hands the connection to hyper and sends one request.
    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>, ApiError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ApiError::Unreachable {
                    path: self.path.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "egret")
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        Ok(sender.send_request(req).await?)
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let resp = self
            .send(method, uri, Bytes::from(body.unwrap_or_default()))
            .await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ApiError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok(bytes)
    }

    pub async fn register(&self, id: &str, spec: &SandboxSpec) -> Result<Sandbox, ApiError> {
        let body = serde_json::to_vec(spec)?;
        let bytes = self
            .call(Method::PUT, &format!("/v1/sandboxes/{id}"), Some(body))
            .await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn unregister(&self, id: &str) -> Result<(), ApiError> {
        self.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
            .await
            .map(|_| ())
    }

    /// Follows `GET /v1/records/stream`, calling `on_line` for each record line.
    pub async fn stream_records(
        &self,
        query: &str,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), ApiError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v1/records/stream?{query}"),
                Bytes::new(),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(ApiError::Refused {
                status: resp.status().as_u16(),
                message: "record stream refused".into(),
            });
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(d) = frame.data_ref() {
                buf.extend_from_slice(d);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    if !on_line(String::from_utf8_lossy(&line[..i]).as_ref()) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<Sandbox>, ApiError> {
        let bytes = self.call(Method::GET, "/v1/sandboxes", None).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
