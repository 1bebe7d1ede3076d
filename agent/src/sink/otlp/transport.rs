//! OTLP requests: bodies in the three protocols, bounded retries with backoff.
//!
//! - `http/protobuf` and `http/json`: POSTs over one hyper-util legacy
//!   client (connection pool, HTTP/1.1).
//! - `grpc`: unary `Export` calls over a second client speaking HTTP/2 only
//!   (h2c for `http://`, ALPN `h2` for `https://`): the 5-byte gRPC length
//!   prefix, `te: trailers`, `grpc-status` / `grpc-message` from the
//!   trailers (or a trailers-only response).
//!
//! Both over rustls (ring) with the system roots, or with the CA and client
//! certificate of the signal's settings. Retried: transport errors,
//! timeouts, HTTP 429, 502, 503, 504 (honouring `Retry-After`, seconds or
//! HTTP date, capped), and the gRPC codes the OTLP specification calls
//! retryable (`RESOURCE_EXHAUSTED` only with a `RetryInfo` delay, which is
//! honoured like `Retry-After`). Anything else fails the batch at once.
use std::{
    hash::{BuildHasher, Hasher},
    io::Write,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use prost::Message;
use serde::Serialize;

use super::settings::{Compression, FileSetting, Protocol, Signal, SignalTarget, TlsFiles};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};

/// Response bodies read at most (partial-success messages are small).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const USER_AGENT: &str = concat!("egret/", env!("CARGO_PKG_VERSION"));

/// How failed exports are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per batch, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles per retry.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured (longer ones are cut to this).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Sleep before retry number `retry` (1-based): exponential, with
    /// "equal jitter" (half fixed, half random).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = 2u32.saturating_pow(retry.saturating_sub(1));
        let base = self
            .initial_backoff
            .saturating_mul(exp)
            .min(self.max_backoff);
        let half = base / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if nanos == 0 { 0 } else { random_u64() % nanos };
        half + Duration::from_nanos(jitter)
    }
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

/// Parses `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(v: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Link state shown on the status endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The last export was accepted.
    Connected,
    /// Not reached (no export yet, or the last failed in transport:
    /// connect, TLS, timeout).
    Disconnected,
    /// The endpoint answered with an error status (or rejected data).
    Error,
}

/// Counters and state of one signal of one exporter.
#[derive(Debug)]
pub struct SignalStats {
    pub signal: Signal,
    pub endpoint: String,
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
    sent: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
    /// Unix milliseconds of the last accepted export (0: none yet).
    last_success_ms: AtomicU64,
}

impl SignalStats {
    pub fn new(signal: Signal, endpoint: String) -> SignalStats {
        SignalStats {
            signal,
            endpoint,
            state: AtomicU8::new(LinkState::Disconnected as u8),
            last_error: Mutex::new(None),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(0),
        }
    }
    /// When the receiver last accepted an export.
    pub fn last_success(&self) -> Option<SystemTime> {
        match self.last_success_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
    fn set_success(&self) {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(1);
        self.last_success_ms.store(ms.max(1), Ordering::Relaxed);
    }
    pub fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            x if x == LinkState::Connected as u8 => LinkState::Connected,
            x if x == LinkState::Error as u8 => LinkState::Error,
            _ => LinkState::Disconnected,
        }
    }
    fn set_state(&self, s: LinkState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn set_error(&self, state: LinkState, msg: String) {
        self.set_state(state);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
    fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("building the request: {0}")]
    Request(String),
    #[error("gRPC status {code} ({}){}", grpc_code_name(*.code), if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Grpc {
        code: u32,
        message: String,
        /// From a `google.rpc.RetryInfo` in `grpc-status-details-bin`.
        retry_after: Option<Duration>,
    },
}

/// The name of a gRPC status code.
pub fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "unknown code",
    }
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Transport(_) | AttemptError::Timeout(_) => true,
            AttemptError::Status { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            AttemptError::Request(_) => false,
            // The OTLP specification's retryable codes; RESOURCE_EXHAUSTED
            // only when the server says when to come back.
            AttemptError::Grpc {
                code, retry_after, ..
            } => match code {
                1 | 4 | 10 | 11 | 14 | 15 => true,
                8 => retry_after.is_some(),
                _ => false,
            },
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } | AttemptError::Grpc { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
    fn state(&self) -> LinkState {
        match self {
            AttemptError::Transport(_) | AttemptError::Timeout(_) => LinkState::Disconnected,
            _ => LinkState::Error,
        }
    }
}

/// Gzip (flate2, default level).
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::default(),
    );
    enc.write_all(data)?;
    enc.finish()
}

fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_RESPONSE_BYTES as u64)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// One export request, before encoding.
#[derive(Debug)]
pub enum ExportRequest {
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

impl ExportRequest {
    fn protobuf(&self) -> Vec<u8> {
        match self {
            ExportRequest::Traces(r) => r.encode_to_vec(),
            ExportRequest::Logs(r) => r.encode_to_vec(),
            ExportRequest::Metrics(r) => r.encode_to_vec(),
        }
    }
    /// The OTLP/JSON encoding (hex ids, 64-bit integers as strings, enums
    /// as numbers, lowerCamelCase names).
    fn json(&self) -> serde_json::Result<Vec<u8>> {
        match self {
            ExportRequest::Traces(r) => serde_json::to_vec(r),
            ExportRequest::Logs(r) => serde_json::to_vec(r),
            ExportRequest::Metrics(r) => serde_json::to_vec(r),
        }
    }
}

/// Why a request body could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("gzip: {0}")]
    Gzip(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The request body of `req` for `target`'s protocol and compression
/// (for gRPC: the length-prefixed message).
pub fn encode_body(req: &ExportRequest, target: &SignalTarget) -> Result<Bytes, EncodeError> {
    let raw = match target.protocol {
        Protocol::HttpJson => req.json()?,
        Protocol::HttpProtobuf | Protocol::Grpc => req.protobuf(),
    };
    let (data, compressed) = match target.compression {
        Compression::Gzip => (gzip(&raw)?, true),
        Compression::None => (raw, false),
    };
    if target.protocol != Protocol::Grpc {
        return Ok(Bytes::from(data));
    }
    let mut framed = BytesMut::with_capacity(data.len() + 5);
    framed.put_u8(u8::from(compressed));
    framed.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    framed.extend_from_slice(&data);
    Ok(framed.freeze())
}

type HyperClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a signal's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{source_name} ({path}): {source}", source_name = .file.source, path = .file.path.display())]
    File {
        file: FileSetting,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("{source_name} ({path}): no PEM private key found", source_name = .file.source, path = .file.path.display())]
    NoKey { file: FileSetting },
    #[error("{source_name} ({path}): {reason}", source_name = .file.source, path = .file.path.display())]
    BadKey { file: FileSetting, reason: String },
    #[error("client certificate: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The HTTP clients exporters share: HTTP/1.1 for OTLP/HTTP, HTTP/2 for
/// OTLP/gRPC, over the same TLS settings.
#[derive(Clone)]
pub struct HttpClient {
    h1: HyperClient,
    h2: HyperClient,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

fn system_roots() -> rustls::RootCertStore {
    let loaded = rustls_native_certs::load_native_certs();
    for e in &loaded.errors {
        tracing::warn!(error = %e, "otlp: loading system root certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (ok, bad) = roots.add_parsable_certificates(loaded.certs);
    if bad > 0 {
        tracing::debug!(ok, bad, "otlp: some system root certificates were skipped");
    }
    roots
}

fn hyper_client(tls: rustls::ClientConfig, h2: bool) -> HyperClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if h2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(2);
    if h2 {
        b.http2_only(true);
    }
    b.build(https)
}

impl HttpClient {
    /// A client trusting the system roots (rustls-native-certs). Roots that
    /// fail to load are logged; `http://` endpoints work regardless.
    pub fn new() -> Result<HttpClient, rustls::Error> {
        HttpClient::with_roots(system_roots())
    }

    /// A client trusting exactly `roots`.
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<HttpClient, rustls::Error> {
        HttpClient::build(roots, None)
    }

    fn build(
        roots: rustls::RootCertStore,
        client_auth: Option<(
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
    ) -> Result<HttpClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let tls = match client_auth {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        Ok(HttpClient {
            h1: hyper_client(tls.clone(), false),
            h2: hyper_client(tls, true),
        })
    }

    /// The client for `tls`: this one when the files are the defaults,
    /// else a new one trusting the CA file (instead of the system roots)
    /// and presenting the client certificate.
    pub fn for_tls(&self, tls: &TlsFiles) -> Result<HttpClient, Box<TlsSetupError>> {
        if tls.is_default() {
            return Ok(self.clone());
        }
        let roots = match &tls.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs =
                    crate::tls::load_pem_certs(&ca.path).map_err(|source| TlsSetupError::File {
                        file: ca.clone(),
                        source,
                    })?;
                for c in certs {
                    roots.add(c).map_err(|e| TlsSetupError::BadKey {
                        file: ca.clone(),
                        reason: format!("not usable as a root: {e}"),
                    })?;
                }
                roots
            }
            None => system_roots(),
        };
        let client_auth = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => {
                let chain = crate::tls::load_pem_certs(&cert.path).map_err(|source| {
                    TlsSetupError::File {
                        file: cert.clone(),
                        source,
                    }
                })?;
                let pem = std::fs::read(&key.path).map_err(|e| TlsSetupError::BadKey {
                    file: key.clone(),
                    reason: e.to_string(),
                })?;
                use rustls::pki_types::pem::PemObject;
                let k = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).map_err(
                    |e| match e {
                        rustls::pki_types::pem::Error::NoItemsFound => {
                            TlsSetupError::NoKey { file: key.clone() }
                        }
                        e => TlsSetupError::BadKey {
                            file: key.clone(),
                            reason: e.to_string(),
                        },
                    },
                )?;
                Some((chain, k))
            }
            _ => None,
        };
        HttpClient::build(roots, client_auth).map_err(|e| Box::new(TlsSetupError::from(e)))
    }

    /// One request of an already encoded body. `Ok` carries the response
    /// message (bounded; for gRPC without its prefix) for partial-success
    /// parsing.
    pub async fn post(
        &self,
        target: &SignalTarget,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, AttemptError> {
        let mut req = Request::post(target.url.clone())
            .body(Full::new(body))
            .map_err(|e| AttemptError::Request(e.to_string()))?;
        let grpc = target.protocol == Protocol::Grpc;
        let h = req.headers_mut();
        h.extend(target.headers.clone());
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let gzip = target.compression == Compression::Gzip;
        if grpc {
            *req.version_mut() = http::Version::HTTP_2;
            let h = req.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(header::TE, HeaderValue::from_static("trailers"));
            if gzip {
                h.insert("grpc-encoding", HeaderValue::from_static("gzip"));
            }
            h.insert("grpc-accept-encoding", HeaderValue::from_static("gzip"));
            h.insert(
                "grpc-timeout",
                // At most 8 digits (the gRPC wire format).
                HeaderValue::from_str(&format!("{}m", timeout.as_millis().clamp(1, 99_999_999)))
                    .map_err(|e| AttemptError::Request(e.to_string()))?,
            );
        } else {
            let h = req.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(if target.protocol == Protocol::HttpJson {
                    "application/json"
                } else {
                    "application/x-protobuf"
                }),
            );
            if gzip {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
        }
        let client = if grpc { &self.h2 } else { &self.h1 };
        let fut = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| AttemptError::Transport(error_chain(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let headers = resp.headers().clone();
            let collected = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await;
            let (body, trailers) = match collected {
                Ok(c) => {
                    let trailers = c.trailers().cloned();
                    (c.to_bytes(), trailers)
                }
                Err(e) if grpc && status.is_success() => {
                    return Err(AttemptError::Transport(error_chain(&*e)))
                }
                Err(_) => (Bytes::new(), None),
            };
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(256)])
                    .trim()
                    .to_owned();
                return Err(AttemptError::Status {
                    status,
                    retry_after,
                    body: text,
                });
            }
            if grpc {
                grpc_outcome(&headers, trailers.as_ref(), body)
            } else {
                Ok(body)
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(AttemptError::Timeout(timeout)),
        }
    }

    /// Sends `body` with retries, keeping `stats` current. Returns whether
    /// the batch was accepted; on success, `items` are counted sent (minus
    /// any the receiver reports rejected, counted dropped), on failure
    /// dropped. `budget` bounds the whole export (attempts and waits).
    pub async fn export(
        &self,
        target: &SignalTarget,
        body: Bytes,
        items: u64,
        retry: &RetryPolicy,
        stats: &SignalStats,
        budget: Option<Duration>,
    ) -> bool {
        let started = tokio::time::Instant::now();
        let attempts = retry.max_attempts.max(1);
        for attempt in 1..=attempts {
            let left = budget.map(|b| b.saturating_sub(started.elapsed()));
            let timeout = match left {
                Some(l) => target.timeout.min(l).max(Duration::from_millis(1)),
                None => target.timeout,
            };
            match self.post(target, body.clone(), timeout).await {
                Ok(resp) => {
                    let (rejected, msg) = partial_success(stats.signal, target.protocol, &resp);
                    let rejected = rejected.min(items);
                    stats.add_sent(items - rejected);
                    stats.set_success();
                    if rejected > 0 {
                        stats.add_dropped(rejected);
                        stats.set_error(
                            LinkState::Error,
                            format!("receiver rejected {rejected} of {items}: {msg}"),
                        );
                    } else {
                        stats.set_state(LinkState::Connected);
                    }
                    return true;
                }
                Err(e) => {
                    let wait = match e.retry_after() {
                        Some(ra) => ra.min(retry.max_retry_after),
                        None => retry.backoff(attempt),
                    };
                    let out_of_time = budget.is_some_and(|b| started.elapsed() + wait >= b);
                    let give_up = !e.retryable() || attempt == attempts || out_of_time;
                    stats.set_error(e.state(), e.to_string());
                    tracing::debug!(signal = %stats.signal, endpoint = %stats.endpoint,
                        attempt, error = %e, "otlp export attempt failed");
                    if give_up {
                        tracing::warn!(signal = %stats.signal, endpoint = %stats.endpoint,
                            attempts = attempt, items, error = %e, out_of_time,
                            "otlp export dropped a batch");
                        stats.add_dropped(items);
                        return false;
                    }
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        false
    }
}

/// A gRPC call's outcome from its headers and trailers (a trailers-only
/// response carries the status in the headers); `Ok` is the response
/// message without its prefix (decompressed).
fn grpc_outcome(
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
    body: Bytes,
) -> Result<Bytes, AttemptError> {
    let get = |name: &str| {
        trailers
            .and_then(|t| t.get(name))
            .or_else(|| headers.get(name))
    };
    let code = match get("grpc-status").and_then(|v| v.to_str().ok()) {
        Some(c) => c.trim().parse::<u32>().unwrap_or(2),
        None => {
            return Err(AttemptError::Grpc {
                code: 2,
                message: "no grpc-status in the response".into(),
                retry_after: None,
            })
        }
    };
    if code != 0 {
        let message = get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(|m| {
                percent_encoding::percent_decode_str(m)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let retry_after = get("grpc-status-details-bin").and_then(retry_info);
        return Err(AttemptError::Grpc {
            code,
            message,
            retry_after,
        });
    }
    // The message: flag, length, bytes.
    if body.len() < 5 {
        return Ok(Bytes::new());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let msg = body.slice(5..(5 + len).min(body.len()));
    if body[0] == 1 {
        let gz = get("grpc-encoding").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        if !gz {
            return Ok(Bytes::new());
        }
        return Ok(gunzip(&msg).map(Bytes::from).unwrap_or_default());
    }
    Ok(msg)
}

/// `google.rpc.Status` (only what a `RetryInfo` needs).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The `RetryInfo` delay in a `grpc-status-details-bin` value (base64 of
/// a `google.rpc.Status`, padded or not).
fn retry_info(v: &HeaderValue) -> Option<Duration> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let raw = engine.decode(v.as_bytes()).ok()?;
    let status = RpcStatus::decode(raw.as_slice()).ok()?;
    status
        .details
        .iter()
        .filter(|d| d.type_url == RETRY_INFO_TYPE)
        .find_map(|d| RetryInfo::decode(d.value.as_slice()).ok()?.retry_delay)
        .map(|d| {
            Duration::from_secs(u64::try_from(d.seconds).unwrap_or(0))
                + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0))
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Rejected item count and message from an `Export*ServiceResponse`
/// (protobuf, or OTLP/JSON for `http/json`).
fn partial_success(signal: Signal, protocol: Protocol, body: &[u8]) -> (u64, String) {
    use opentelemetry_proto::tonic::collector::{
        logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
        trace::v1::ExportTraceServiceResponse,
    };
    if body.is_empty() {
        return (0, String::new());
    }
    if protocol == Protocol::HttpJson {
        // 64-bit integers are strings in OTLP/JSON; numbers are accepted too.
        let field = match signal {
            Signal::Traces => "rejectedSpans",
            Signal::Logs => "rejectedLogRecords",
            Signal::Metrics => "rejectedDataPoints",
        };
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let p = &v["partialSuccess"];
        let n = match &p[field] {
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
            serde_json::Value::String(s) => s.parse().unwrap_or(0),
            _ => 0,
        };
        let msg = p["errorMessage"].as_str().unwrap_or_default().to_owned();
        return (n, msg);
    }
    let r = match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| (p.rejected_spans, p.error_message)),
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| (p.rejected_log_records, p.error_message)),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| (p.rejected_data_points, p.error_message)),
    };
    match r {
        Some((n, msg)) => (u64::try_from(n).unwrap_or(0), msg),
        None => (0, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            let b10 = p.backoff(10);
            assert!(b10 >= Duration::from_millis(500) && b10 <= Duration::from_millis(1000));
        }
        let huge = p.backoff(u32::MAX);
        assert!(huge >= Duration::from_millis(500) && huge <= Duration::from_millis(1000));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("7"), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_str(&later).unwrap(), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_str(&past).unwrap(), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("soon"), now),
            None
        );
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let data = b"hello hello hello hello".repeat(100);
        let z = gzip(&data).unwrap();
        assert!(z.len() < data.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(z.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn partial_success_is_read() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        let body = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            partial_success(Signal::Traces, Protocol::HttpProtobuf, &body),
            (2, "too old".to_owned())
        );
        assert_eq!(
            partial_success(Signal::Traces, Protocol::HttpProtobuf, b"{}"),
            (0, String::new())
        );
        assert_eq!(
            partial_success(Signal::Logs, Protocol::HttpProtobuf, &[]),
            (0, String::new())
        );
        assert_eq!(
            partial_success(
                Signal::Logs,
                Protocol::HttpJson,
                br#"{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"bad"}}"#
            ),
            (3, "bad".to_owned())
        );
    }
}
