//! OTLP/HTTP POSTs: gzip'd protobuf, bounded retries with backoff.
//!
//! One hyper-util legacy client (connection pool, HTTP/1.1) over rustls
//! (ring) with the system roots; `http://` endpoints are spoken in clear.
//! Retried: transport errors, timeouts, 429, 502, 503, 504 (honouring
//! `Retry-After`, seconds or HTTP date, capped). Anything else fails the
//! batch at once.
use std::{
    hash::{BuildHasher, Hasher},
    io::Write,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use prost::Message;
use serde::Serialize;

use super::settings::{Signal, SignalTarget};

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
        }
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
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Transport(_) | AttemptError::Timeout(_) => true,
            AttemptError::Status { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            AttemptError::Request(_) => false,
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

/// The HTTP client exporters share.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// A client trusting the system roots (rustls-native-certs). Roots that
    /// fail to load are logged; `http://` endpoints work regardless.
    pub fn new() -> Result<HttpClient, rustls::Error> {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "otlp: loading system root certificates");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (ok, bad) = roots.add_parsable_certificates(loaded.certs);
        if bad > 0 {
            tracing::debug!(ok, bad, "otlp: some system root certificates were skipped");
        }
        HttpClient::with_roots(roots)
    }

    /// A client trusting exactly `roots`.
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<HttpClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(2)
            .build(https);
        Ok(HttpClient { client })
    }

    /// One POST of an already gzip'd protobuf body. `Ok` carries the
    /// response body (bounded) for partial-success parsing.
    pub async fn post(
        &self,
        target: &SignalTarget,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, AttemptError> {
        let mut req = Request::post(target.url.clone())
            .body(Full::new(body))
            .map_err(|e| AttemptError::Request(e.to_string()))?;
        let h = req.headers_mut();
        h.extend(target.headers.clone());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| AttemptError::Transport(error_chain(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                Ok(body)
            } else {
                let text = String::from_utf8_lossy(&body[..body.len().min(256)])
                    .trim()
                    .to_owned();
                Err(AttemptError::Status {
                    status,
                    retry_after,
                    body: text,
                })
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
    /// dropped.
    pub async fn export(
        &self,
        target: &SignalTarget,
        body: Bytes,
        items: u64,
        timeout: Duration,
        retry: &RetryPolicy,
        stats: &SignalStats,
    ) -> bool {
        let attempts = retry.max_attempts.max(1);
        for attempt in 1..=attempts {
            match self.post(target, body.clone(), timeout).await {
                Ok(resp) => {
                    let (rejected, msg) = partial_success(stats.signal, &resp);
                    let rejected = rejected.min(items);
                    stats.add_sent(items - rejected);
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
                    let give_up = !e.retryable() || attempt == attempts;
                    stats.set_error(e.state(), e.to_string());
                    tracing::debug!(signal = %stats.signal, endpoint = %stats.endpoint,
                        attempt, error = %e, "otlp export attempt failed");
                    if give_up {
                        tracing::warn!(signal = %stats.signal, endpoint = %stats.endpoint,
                            attempts = attempt, items, error = %e, "otlp export dropped a batch");
                        stats.add_dropped(items);
                        return false;
                    }
                    let wait = match &e {
                        AttemptError::Status {
                            retry_after: Some(ra),
                            ..
                        } => (*ra).min(retry.max_retry_after),
                        _ => retry.backoff(attempt),
                    };
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        false
    }
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

/// Rejected item count and message from an `Export*ServiceResponse`.
fn partial_success(signal: Signal, body: &[u8]) -> (u64, String) {
    use opentelemetry_proto::tonic::collector::{
        logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
        trace::v1::ExportTraceServiceResponse,
    };
    if body.is_empty() {
        return (0, String::new());
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
            partial_success(Signal::Traces, &body),
            (2, "too old".to_owned())
        );
        assert_eq!(partial_success(Signal::Traces, b"{}"), (0, String::new()));
        assert_eq!(partial_success(Signal::Logs, &[]), (0, String::new()));
    }
}
