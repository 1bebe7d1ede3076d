//! mock-provider — a local stand-in for the LLM providers and an MCP server,
//! speaking their real wire formats over HTTPS (HTTP/1.1 and HTTP/2 by ALPN)
//! and optionally plain HTTP (HTTP/1.1, or HTTP/2 with prior knowledge).
//!
//! It is deliberately independent of the agent: its own CA and certificate
//! code (rcgen), its own HTTP stack, so that egret is tested against a real
//! peer and not against itself.
//!
//! # Flags
//! * `--listen ADDR` (repeatable): HTTPS listener. Port 0 picks a free port.
//! * `--listen-plain ADDR` (repeatable): plain HTTP listener.
//! * `--names a,b,c`: SANs of the server certificate (DNS names or IPs).
//!   Default: api.anthropic.com, api.openai.com,
//!   generativelanguage.googleapis.com, mcp.local, localhost, 127.0.0.1, ::1.
//! * `--ca-dir DIR`: where the mock's own CA lives (`ca.crt`, `ca.key`
//!   mode 0600). Created when absent, reused otherwise. Clients trust
//!   `DIR/ca.crt`. The server leaf is minted fresh at every start.
//! * `--ready-file PATH`: written once every listener is bound, as JSON:
//!   `{"pid":…,"tls":["127.0.0.1:PORT",…],"plain":[…],"ca_cert":"DIR/ca.crt"}`.
//! * `--stream-delay-ms N`: pause between streamed chunks (default 0);
//!   per request: header `x-mock-delay-ms: N`.
//!
//! # Endpoints
//! * Anthropic: `POST /v1/messages` (JSON, or SSE with `"stream": true`).
//! * OpenAI: `POST /v1/chat/completions` (JSON, or SSE `data:` lines ending
//!   `data: [DONE]`; a final usage chunk with empty `choices` only when
//!   `stream_options.include_usage` is true), `POST /v1/responses` (JSON, or
//!   SSE `event:`+`data:` pairs ending `response.completed`),
//!   `POST /v1/embeddings` (float or base64 encoding).
//! * Google: `POST /v1beta/models/{model}:generateContent` and
//!   `:streamGenerateContent?alt=sse` (`\r\n\r\n` separators, cumulative
//!   `usageMetadata` in every chunk). Without `alt=sse` the stream is a JSON
//!   array, as the real API does.
//! * MCP streamable HTTP at `/mcp`: POST `initialize` (answers with an
//!   `Mcp-Session-Id` header), notifications and client responses (202),
//!   `ping`, `tools/list`, `tools/call` (tools `echo` and `add`); DELETE ends
//!   the session; GET answers 405 (no server-initiated stream). Requests get
//!   an SSE stream when the client's Accept allows `text/event-stream`,
//!   otherwise JSON; `/mcp?format=json` forces JSON. `server/discover` is
//!   answered with method-not-found, so newer SDKs fall back to `initialize`.
//! * Utilities: `GET /bytes/{n}` (n bytes with content-length), `POST /echo`, `GET /headers` (request headers as JSON)
//!   (streams the request body back), `GET /sse/{n}?interval_ms=M` (n SSE
//!   events), `GET /json/{n}` (an n-byte JSON document), `GET /healthz`.
//!
//! # Token rule (deterministic, for exact assertions)
//! * Word count = number of whitespace-separated words.
//! * Input tokens = words of all message text of the request: Anthropic
//!   `system` + `messages[].content`; OpenAI chat `messages[].content`;
//!   Responses `instructions` + `input`; Google `systemInstruction` +
//!   `contents`; embeddings: words of every input string (token-id arrays:
//!   their length). Text is every string found under `content`, `text` and
//!   `parts` keys (so image/tool-use blocks count 0).
//! * Anthropic cache: text of blocks (system or message content) carrying
//!   `cache_control` is reported as `cache_read_input_tokens` instead of
//!   `input_tokens`; with request header `x-mock-cache: create` it is
//!   reported as `cache_creation_input_tokens` instead. OpenAI
//!   `cached_tokens` is always 0.
//! * Output tokens = min(wanted, limit) where wanted = 16 (or the request
//!   header `x-mock-output-tokens: N`) and limit = `max_tokens` /
//!   `max_completion_tokens` / `max_output_tokens` /
//!   `generationConfig.maxOutputTokens` when given. The reply text has
//!   exactly that many words. When the limit cut the reply short the finish
//!   reason is `max_tokens` / `length` / `incomplete` / `MAX_TOKENS`,
//!   otherwise `end_turn` / `stop` / `completed` / `STOP`.
//! * Streams emit one word per delta (Google: four words per chunk).
//! * Embeddings: `dimensions` (default 8) deterministic floats per input.
//! * Models are echoed back as sent.
//!
//! # Compression (as the real APIs' front ends do)
//! * Non-streamed provider answers (JSON, errors included) are compressed
//!   when the request's `Accept-Encoding` allows it, with
//!   `Content-Encoding` set: Anthropic and OpenAI prefer `br`, then `gzip`;
//!   Google uses `gzip`. No `Accept-Encoding` (curl without
//!   `--compressed`, hyper) or `identity` only: plain JSON. Streams (SSE,
//!   Google's JSON array stream) and the utility endpoints are never
//!   compressed.
//! * Request bodies with `Content-Encoding: gzip`, `deflate` or `br` are
//!   decoded before they are read.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = BoxBody<Bytes, BoxError>;

const DEFAULT_NAMES: &str = "api.anthropic.com,api.openai.com,generativelanguage.googleapis.com,mcp.local,localhost,127.0.0.1,::1";
/// Largest request body read by the JSON endpoints.
const MAX_REQUEST_BODY: usize = 64 << 20;
/// Largest `/bytes/{n}` and `/json/{n}` body.
const MAX_GENERATED_BODY: u64 = 16 << 30;
const DEFAULT_OUTPUT_WORDS: u64 = 16;
const MAX_OUTPUT_WORDS: u64 = 1_000_000;
const MCP_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const MCP_DEFAULT_VERSION: &str = "2025-06-18";

#[derive(Parser, Debug)]
#[command(
    name = "mock-provider",
    about = "Local HTTPS stand-in for the Anthropic, OpenAI and Google GenAI APIs and an MCP server"
)]
struct Args {
    /// HTTPS listen address (repeatable), e.g. 127.0.0.1:8443.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Plain HTTP listen address (repeatable).
    #[arg(long = "listen-plain", value_name = "ADDR")]
    listen_plain: Vec<SocketAddr>,
    /// Certificate names (SANs), comma separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_NAMES)]
    names: Vec<String>,
    /// Directory of the mock's own CA (ca.crt, ca.key); created if absent.
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// File written (JSON) once all listeners are bound.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Pause between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    stream_delay_ms: u64,
}

#[derive(Debug, thiserror::Error)]
enum MockError {
    #[error("no listener: give --listen ADDR and/or --listen-plain ADDR")]
    NoListener,
    #[error("--names is empty")]
    NoNames,
    #[error("--names: {0:?} is neither a DNS name nor an IP address")]
    BadName(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("certificate for {names:?}: {reason}")]
    Leaf { names: Vec<String>, reason: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        eprintln!("mock-provider: internal error: {msg}");
    }));
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-provider: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), MockError> {
    if args.listen.is_empty() && args.listen_plain.is_empty() {
        return Err(MockError::NoListener);
    }
    let names: Vec<String> = args
        .names
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Err(MockError::NoNames);
    }
    if let Some(bad) = names.iter().find(|n| {
        n.parse::<std::net::IpAddr>().is_err()
            && rustls::pki_types::DnsName::try_from(n.as_str()).is_err()
    }) {
        return Err(MockError::BadName(bad.clone()));
    }
    let ca_dir = args
        .ca_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("egret-mock-provider-ca"));
    let tls_config = if args.listen.is_empty() {
        None
    } else {
        let ca = tls::load_or_create_ca(&ca_dir)?;
        Some(tls::server_config(&ca, &names)?)
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(MockError::Runtime)?;
    runtime.block_on(serve(args, tls_config, ca_dir))
}

async fn serve(
    args: Args,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    ca_dir: PathBuf,
) -> Result<(), MockError> {
    let state = Arc::new(State {
        sessions: Mutex::new(HashSet::new()),
        counter: AtomicU64::new(1),
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
            ^ u64::from(std::process::id()),
        stream_delay: Duration::from_millis(args.stream_delay_ms),
    });

    let mut tls_addrs = Vec::new();
    let mut plain_addrs = Vec::new();
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| MockError::Bind {
                addr: *addr,
                source,
            })?;
        let local = l.local_addr().map_err(|source| MockError::Bind {
            addr: *addr,
            source,
        })?;
        tls_addrs.push(local.to_string());
        listeners.push((l, tls_config.clone()));
    }
    for addr in &args.listen_plain {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| MockError::Bind {
                addr: *addr,
                source,
            })?;
        let local = l.local_addr().map_err(|source| MockError::Bind {
            addr: *addr,
            source,
        })?;
        plain_addrs.push(local.to_string());
        listeners.push((l, None));
    }

    let ready = json!({
        "pid": std::process::id(),
        "tls": tls_addrs,
        "plain": plain_addrs,
        "ca_cert": ca_dir.join("ca.crt"),
    });
    println!("mock-provider ready {ready}");
    if let Some(path) = &args.ready_file {
        write_atomic(path, format!("{ready}\n").as_bytes(), 0o644)?;
    }

    for (listener, tls) in listeners {
        tokio::spawn(accept_loop(listener, tls, state.clone()));
    }

    wait_for_shutdown().await;
    Ok(())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("mock-provider: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                    Err(e) => {
                        // A client that connects and leaves (a probe, a
                        // load generator stopping) is routine.
                        if e.kind() != std::io::ErrorKind::UnexpectedEof {
                            eprintln!("mock-provider: TLS handshake with {peer}: {e}");
                        }
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(tcp), service).await,
            };
            if let Err(e) = result {
                // Clients closing mid-stream or before our close_notify (load
                // generators at the end of a timed run) are routine; report
                // the rest.
                let text = e.to_string();
                let routine = [
                    "connection reset",
                    "broken pipe",
                    "shutting down connection",
                ];
                if !routine.iter().any(|r| text.contains(r)) {
                    eprintln!("mock-provider: connection from {peer}: {text}");
                }
            }
        });
    }
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), MockError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let io = |op, e| MockError::Io {
        op,
        path: path.to_path_buf(),
        source: e,
    };
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(contents).map_err(|e| io("writing", e))?;
    fs::rename(&tmp, path).map_err(|e| io("renaming", e))
}

// ---------------------------------------------------------------------------
// TLS: the mock's own CA and leaf.

mod tls {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use time::OffsetDateTime;

    const CA_CN: &str = "egret mock provider CA";

    pub struct MockCa {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca_params() -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_CN);
        dn.push(DnType::OrganizationName, "egret tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params
    }

    /// Loads `DIR/ca.key` + `DIR/ca.crt`, or creates both. Only this mock's
    /// own CA is supported: the issuer name is the fixed one above.
    pub fn load_or_create_ca(dir: &Path) -> Result<MockCa, MockError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let ca_err = |path: &Path, reason: String| MockError::Ca {
            path: path.to_path_buf(),
            reason,
        };
        if key_path.exists() && cert_path.exists() {
            let key_pem = fs::read_to_string(&key_path).map_err(|source| MockError::Io {
                op: "reading",
                path: key_path.clone(),
                source,
            })?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| ca_err(&key_path, format!("invalid key: {e}")))?;
            let cert_pem = fs::read_to_string(&cert_path).map_err(|source| MockError::Io {
                op: "reading",
                path: cert_path.clone(),
                source,
            })?;
            // The stored certificate must carry this key (its SPKI is
            // embedded verbatim in the DER) and be the mock's own CA.
            let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| ca_err(&cert_path, format!("invalid PEM: {e}")))?;
            let spki = key.public_key_der();
            if !contains(der.as_ref(), &spki) {
                return Err(ca_err(
                    &cert_path,
                    format!("does not match {}", key_path.display()),
                ));
            }
            if !contains(der.as_ref(), CA_CN.as_bytes()) {
                return Err(ca_err(
                    &cert_path,
                    format!("not a mock-provider CA (CN {CA_CN:?} expected)"),
                ));
            }
            let cert = ca_params()
                .self_signed(&key)
                .map_err(|e| ca_err(&cert_path, e.to_string()))?;
            return Ok(MockCa { cert, key });
        }
        fs::create_dir_all(dir).map_err(|source| MockError::Io {
            op: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ca_err(&key_path, e.to_string()))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| ca_err(&cert_path, e.to_string()))?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(MockCa { cert, key })
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// A server config with one leaf for all `names`, ALPN h2 + http/1.1.
    pub fn server_config(
        ca: &MockCa,
        names: &[String],
    ) -> Result<Arc<rustls::ServerConfig>, MockError> {
        let leaf_err = |reason: String| MockError::Leaf {
            names: names.to_vec(),
            reason,
        };
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|e| leaf_err(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0].clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(30);
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| leaf_err(e.to_string()))?;
        let cert = params
            .signed_by(&key, &ca.cert, &ca.key)
            .map_err(|e| leaf_err(e.to_string()))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

// ---------------------------------------------------------------------------
// Shared state, bodies and small helpers.

struct State {
    /// Live MCP session ids.
    sessions: Mutex<HashSet<String>>,
    counter: AtomicU64,
    seed: u64,
    stream_delay: Duration,
}

impl State {
    /// A unique, provider-looking id: `prefix` + 24 base62 characters.
    fn id(&self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut x = self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut out = String::with_capacity(prefix.len() + 24);
        out.push_str(prefix);
        for _ in 0..24 {
            x = splitmix64(x);
            out.push(ALPHABET[(x % 62) as usize] as char);
        }
        out
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<RespBody> {
    let body = body.into();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<RespBody> {
    respond(status, "application/json", value.to_string())
}

/// A body fed by a task through a channel: each message is one frame, so
/// stream chunks reach the wire as they are produced.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Streams `chunks` with `delay` between them.
fn stream_response(content_type: &str, chunks: Vec<Bytes>, delay: Duration) -> Response<RespBody> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(chunk).await.is_err() {
                return; // client went away
            }
        }
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(CONTENT_TYPE, v);
    }
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

fn sse_response(chunks: Vec<Bytes>, delay: Duration) -> Response<RespBody> {
    stream_response("text/event-stream; charset=utf-8", chunks, delay)
}

/// `event: NAME` + `data: JSON` + blank line.
fn sse_event(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// A bare `data: JSON` event.
fn sse_data(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

static FILL: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// prefix + `fill` bytes of 'x' + suffix, generated on the fly with an exact
/// size hint (so large bodies never sit in memory).
struct PatternBody {
    prefix: Option<Bytes>,
    fill: u64,
    suffix: Option<Bytes>,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if self.fill > 0 {
            let n = self.fill.min(FILL.len() as u64) as usize;
            self.fill -= n as u64;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))));
        }
        Poll::Ready(self.suffix.take().map(|s| Ok(Frame::data(s))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.fill == 0 && self.suffix.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.prefix.as_ref().map_or(0, |b| b.len() as u64)
            + self.fill
            + self.suffix.as_ref().map_or(0, |b| b.len() as u64);
        SizeHint::with_exact(len)
    }
}

fn pattern_response(content_type: &'static str, body: PatternBody) -> Response<RespBody> {
    let len = body.size_hint().exact().unwrap_or(0);
    let mut resp = Response::new(body.boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn header_u64(req_headers: &http::HeaderMap, name: &str) -> Option<u64> {
    req_headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------
// Routing.

/// What the provider handlers need from the request.
struct Call {
    headers: http::HeaderMap,
    query: Option<String>,
    body: Value,
    delay: Duration,
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();

    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, ["bytes", n]) => bytes_endpoint(n),
        (&Method::GET, ["json", n]) => json_endpoint(n),
        (&Method::GET, ["sse", n]) => sse_endpoint(n, query.as_deref()),
        (&Method::POST, ["echo"]) => echo_endpoint(req),
        (&Method::GET, ["headers"]) => headers_endpoint(&req),
        (_, ["mcp"]) => mcp::handle(&state, req, query.as_deref()).await,
        (&Method::POST, ["v1", "messages"]) => {
            with_json(&state, req, query, Provider::Anthropic, anthropic::messages).await
        }
        (&Method::POST, ["v1", "chat", "completions"]) => {
            with_json(&state, req, query, Provider::OpenAi, openai::chat).await
        }
        (&Method::POST, ["v1", "responses"]) => {
            with_json(&state, req, query, Provider::OpenAi, openai::responses).await
        }
        (&Method::POST, ["v1", "embeddings"]) => {
            with_json(&state, req, query, Provider::OpenAi, openai::embeddings).await
        }
        (&Method::POST, ["v1beta" | "v1", "models", model_method]) => {
            match model_method.rsplit_once(':') {
                Some((model, "generateContent")) => {
                    let model = model.to_string();
                    with_json(&state, req, query, Provider::Google, move |s, c| {
                        google::generate(s, c, &model, false)
                    })
                    .await
                }
                Some((model, "streamGenerateContent")) => {
                    let model = model.to_string();
                    with_json(&state, req, query, Provider::Google, move |s, c| {
                        google::generate(s, c, &model, true)
                    })
                    .await
                }
                _ => not_found(&path),
            }
        }
        _ => not_found(&path),
    }
}

fn not_found(path: &str) -> Response<RespBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": {"message": format!("mock-provider: no route for {path}"), "type": "not_found"}}),
    )
}

#[derive(Clone, Copy)]
enum Provider {
    Anthropic,
    OpenAi,
    Google,
}

/// An error in the provider's own shape.
fn provider_error(provider: Provider, status: StatusCode, message: &str) -> Response<RespBody> {
    let body = match provider {
        Provider::Anthropic => json!({
            "type": "error",
            "error": {"type": anthropic_error_type(status), "message": message},
        }),
        Provider::OpenAi => json!({
            "error": {"message": message, "type": "invalid_request_error", "param": null, "code": null},
        }),
        Provider::Google => json!({
            "error": {
                "code": status.as_u16(),
                "message": message,
                "status": if status == StatusCode::PAYLOAD_TOO_LARGE { "RESOURCE_EXHAUSTED" } else { "INVALID_ARGUMENT" },
            },
        }),
    };
    json_response(status, &body)
}

fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "invalid_request_error",
    }
}

/// A request that failed validation: (status, message).
type Reject = (StatusCode, String);

fn bad_request(msg: impl Into<String>) -> Reject {
    (StatusCode::BAD_REQUEST, msg.into())
}

/// A provider endpoint: [`read_json`], then the answer compressed as the
/// provider's front end would (errors included).
async fn with_json<F>(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<String>,
    provider: Provider,
    f: F,
) -> Response<RespBody>
where
    F: FnOnce(&State, &Call) -> Result<Response<RespBody>, Reject>,
{
    let req_headers = req.headers().clone();
    let resp = read_json(state, req, query, provider, f).await;
    compress(resp, &req_headers, provider).await
}

async fn read_json<F>(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<String>,
    provider: Provider,
    f: F,
) -> Response<RespBody>
where
    F: FnOnce(&State, &Call) -> Result<Response<RespBody>, Reject>,
{
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(c) => match decode_request(&parts.headers, c.to_bytes()) {
            Ok(b) => b,
            Err(msg) => return provider_error(provider, StatusCode::BAD_REQUEST, &msg),
        },
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return provider_error(provider, status, &format!("reading request body: {e}"));
        }
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return provider_error(
                provider,
                StatusCode::BAD_REQUEST,
                "request body must be a JSON object",
            )
        }
        Err(e) => {
            return provider_error(
                provider,
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON in request body: {e}"),
            )
        }
    };
    let delay = header_u64(&parts.headers, "x-mock-delay-ms")
        .map(Duration::from_millis)
        .unwrap_or(state.stream_delay);
    let call = Call {
        headers: parts.headers,
        query,
        body,
        delay,
    };
    let request_id = state.id("req_");
    let mut resp = match f(state, &call) {
        Ok(r) => r,
        Err((status, msg)) => provider_error(provider, status, &msg),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        let name = match provider {
            Provider::Anthropic => "request-id",
            Provider::OpenAi | Provider::Google => "x-request-id",
        };
        resp.headers_mut().insert(name, v);
    }
    resp
}

// ---------------------------------------------------------------------------
// Content-Encoding.

/// The q-value `accept_encoding` gives `coding` (an explicit entry, else
/// `*`, else 0). RFC 9110 §12.5.3.
fn accept_q(accept_encoding: &str, coding: &str) -> f32 {
    let mut wildcard = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return q;
        }
        if name == "*" {
            wildcard = Some(q);
        }
    }
    wildcard.unwrap_or(0.0)
}

/// The coding a provider's front end would answer with, if any.
fn pick_coding(req_headers: &http::HeaderMap, provider: Provider) -> Option<&'static str> {
    let accept = req_headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let preferred: &[&'static str] = match provider {
        Provider::Anthropic | Provider::OpenAi => &["br", "gzip"],
        Provider::Google => &["gzip"],
    };
    preferred
        .iter()
        .copied()
        .find(|c| accept_q(&accept, c) > 0.0)
}

/// Compresses a whole (non-streamed) JSON answer when the client accepts
/// it; anything else is returned as it is.
async fn compress(
    resp: Response<RespBody>,
    req_headers: &http::HeaderMap,
    provider: Provider,
) -> Response<RespBody> {
    let whole = resp.body().size_hint().exact().is_some();
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let coding = pick_coding(req_headers, provider);
    let (Some(coding), true, true) = (coding, whole, json) else {
        return resp;
    };
    let (mut parts, body) = resp.into_parts();
    let plain = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            )
        }
    };
    let encoded = match encode(coding, &plain) {
        Ok(b) => b,
        Err(e) => {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            )
        }
    };
    parts.headers.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static(coding),
    );
    parts.headers.insert(
        http::header::VARY,
        HeaderValue::from_static("Accept-Encoding"),
    );
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, full(encoded))
}

fn encode(coding: &str, plain: &[u8]) -> std::io::Result<Vec<u8>> {
    match coding {
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(plain)?;
            }
            Ok(out)
        }
        _ => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(plain)?;
            e.finish()
        }
    }
}

/// A request body as sent, decoded per its `Content-Encoding`.
fn decode_request(headers: &http::HeaderMap, body: Bytes) -> Result<Bytes, String> {
    use std::io::Read;
    let Some(coding) = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "identity")
    else {
        return Ok(body);
    };
    let limit = MAX_REQUEST_BODY as u64 + 1;
    let mut out = Vec::new();
    let read = match coding.as_str() {
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out),
        "br" => brotli::Decompressor::new(&body[..], 4096)
            .take(limit)
            .read_to_end(&mut out),
        other => return Err(format!("unsupported Content-Encoding {other:?}")),
    };
    match read {
        Ok(n) if n as u64 >= limit => Err("decoded request body too large".to_owned()),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(format!("request body is not valid {coding}: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Token rule.

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Words of every string under `content`, `text` and `parts` keys.
fn text_words(v: &Value) -> u64 {
    match v {
        Value::String(s) => words(s),
        Value::Array(items) => items.iter().map(text_words).sum(),
        Value::Object(map) => ["content", "text", "parts"]
            .iter()
            .filter_map(|k| map.get(*k))
            .map(text_words)
            .sum(),
        _ => 0,
    }
}

const REPLY_WORDS: [&str; 16] = [
    "Hello",
    "from",
    "the",
    "egret",
    "mock",
    "provider:",
    "this",
    "reply",
    "is",
    "deterministic",
    "so",
    "tests",
    "can",
    "assert",
    "exact",
    "counts.",
];

/// The reply: `n` words, cycling through [`REPLY_WORDS`].
fn reply_words(n: u64) -> impl Iterator<Item = &'static str> {
    REPLY_WORDS.iter().copied().cycle().take(n as usize)
}

fn reply_text(n: u64) -> String {
    reply_words(n).collect::<Vec<_>>().join(" ")
}

/// The reply as deltas: one word each, later ones with a leading space.
fn reply_deltas(n: u64) -> Vec<String> {
    reply_words(n)
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// Output size: (tokens, cut short by the limit).
fn output_tokens(call: &Call, limit: Option<u64>) -> (u64, bool) {
    let wanted = header_u64(&call.headers, "x-mock-output-tokens")
        .unwrap_or(DEFAULT_OUTPUT_WORDS)
        .min(MAX_OUTPUT_WORDS);
    match limit {
        Some(l) if l < wanted => (l, true),
        _ => (wanted, false),
    }
}

fn u64_field(body: &Value, key: &str) -> Result<Option<u64>, Reject> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_request(format!("{key}: expected a non-negative integer"))),
    }
}

fn model_of(body: &Value) -> Result<String, Reject> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        _ => Err(bad_request("model: field required")),
    }
}

fn is_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Anthropic Messages API.

mod anthropic {
    use super::*;

    /// (uncached input words, words in blocks marked with cache_control)
    fn count_input(body: &Value) -> (u64, u64) {
        let mut plain = 0;
        let mut cached = 0;
        let mut blocks = |content: &Value| match content {
            Value::Array(items) => {
                for block in items {
                    let w = text_words(block);
                    if block.get("cache_control").is_some_and(|c| !c.is_null()) {
                        cached += w;
                    } else {
                        plain += w;
                    }
                }
            }
            other => plain += text_words(other),
        };
        if let Some(system) = body.get("system") {
            blocks(system);
        }
        if let Some(Value::Array(messages)) = body.get("messages") {
            for m in messages {
                if let Some(content) = m.get("content") {
                    blocks(content);
                }
            }
        }
        (plain, cached)
    }

    pub fn messages(state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
        let body = &call.body;
        let model = model_of(body)?;
        let max_tokens = u64_field(body, "max_tokens")?
            .ok_or_else(|| bad_request("max_tokens: field required"))?;
        match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => {}
            _ => return Err(bad_request("messages: at least one message is required")),
        }
        let (input, cached) = count_input(body);
        let create = call
            .headers
            .get("x-mock-cache")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"create"));
        let (cache_read, cache_creation) = if create { (0, cached) } else { (cached, 0) };
        let (output, cut) = output_tokens(call, Some(max_tokens));
        let stop_reason = if cut { "max_tokens" } else { "end_turn" };
        let id = state.id("msg_01");

        if !is_stream(body) {
            let msg = json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": reply_text(output)}],
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": input,
                    "cache_creation_input_tokens": cache_creation,
                    "cache_read_input_tokens": cache_read,
                    "output_tokens": output,
                    "service_tier": "standard",
                },
            });
            return Ok(json_response(StatusCode::OK, &msg));
        }

        let mut events = Vec::new();
        events.push(sse_event(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": input,
                        "cache_creation_input_tokens": cache_creation,
                        "cache_read_input_tokens": cache_read,
                        "output_tokens": output.min(1),
                        "service_tier": "standard",
                    },
                },
            }),
        ));
        events.push(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        events.push(sse_event("ping", &json!({"type": "ping"})));
        for delta in reply_deltas(output) {
            events.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}}),
            ));
        }
        events.push(sse_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(sse_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {
                    "input_tokens": input,
                    "cache_creation_input_tokens": cache_creation,
                    "cache_read_input_tokens": cache_read,
                    "output_tokens": output,
                },
            }),
        ));
        events.push(sse_event("message_stop", &json!({"type": "message_stop"})));
        Ok(sse_response(events, call.delay))
    }
}

// ---------------------------------------------------------------------------
// OpenAI: Chat Completions, Responses, Embeddings.

mod openai {
    use super::*;

    fn chat_input(body: &Value) -> Result<u64, Reject> {
        match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => Ok(m
                .iter()
                .map(|msg| msg.get("content").map_or(0, text_words))
                .sum()),
            _ => Err(bad_request(
                "messages: expected a non-empty array of messages",
            )),
        }
    }

    fn chat_usage(input: u64, output: u64) -> Value {
        json!({
            "prompt_tokens": input,
            "completion_tokens": output,
            "total_tokens": input + output,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }

    pub fn chat(state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
        let body = &call.body;
        let model = model_of(body)?;
        let input = chat_input(body)?;
        let limit = match u64_field(body, "max_completion_tokens")? {
            Some(l) => Some(l),
            None => u64_field(body, "max_tokens")?,
        };
        let (output, cut) = output_tokens(call, limit);
        let finish = if cut { "length" } else { "stop" };
        let id = state.id("chatcmpl-");
        let created = unix_now();

        if !is_stream(body) {
            let resp = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": reply_text(output), "refusal": null, "annotations": []},
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": chat_usage(input, output),
                "service_tier": "default",
                "system_fingerprint": "fp_egret_mock",
            });
            return Ok(json_response(StatusCode::OK, &resp));
        }

        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let chunk = |choices: Value| {
            let mut c = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_egret_mock",
                "choices": choices,
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut events = Vec::new();
        events.push(sse_data(&chunk(json!([{
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": null},
            "logprobs": null,
            "finish_reason": null,
        }]))));
        for delta in reply_deltas(output) {
            events.push(sse_data(&chunk(json!([{
                "index": 0,
                "delta": {"content": delta},
                "logprobs": null,
                "finish_reason": null,
            }]))));
        }
        events.push(sse_data(&chunk(json!([{
            "index": 0,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish,
        }]))));
        if include_usage {
            let mut last = chunk(json!([]));
            last["usage"] = chat_usage(input, output);
            events.push(sse_data(&last));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        Ok(sse_response(events, call.delay))
    }

    fn responses_input(body: &Value) -> Result<u64, Reject> {
        let input = match body.get("input") {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) => words(s),
            Some(Value::Array(items)) => items.iter().map(text_words).sum(),
            Some(_) => return Err(bad_request("input: expected a string or an array")),
        };
        let instructions = body.get("instructions").map_or(0, text_words);
        Ok(input + instructions)
    }

    pub fn responses(state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
        let body = &call.body;
        let model = model_of(body)?;
        let input = responses_input(body)?;
        let max_output = u64_field(body, "max_output_tokens")?;
        let (output, cut) = output_tokens(call, max_output);
        let id = state.id("resp_");
        let msg_id = state.id("msg_");
        let created = unix_now();
        let text = reply_text(output);

        let message = |status: &str, text: Option<&str>| {
            let content = match text {
                Some(t) => {
                    json!([{"type": "output_text", "annotations": [], "logprobs": [], "text": t}])
                }
                None => json!([]),
            };
            json!({"id": msg_id, "type": "message", "status": status, "role": "assistant", "content": content})
        };
        let response = |status: &str, output_items: Value, usage: Value| {
            json!({
                "id": id,
                "object": "response",
                "created_at": created,
                "status": status,
                "background": false,
                "error": null,
                "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
                "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
                "max_output_tokens": max_output,
                "model": model,
                "output": output_items,
                "parallel_tool_calls": true,
                "previous_response_id": body.get("previous_response_id").cloned().unwrap_or(Value::Null),
                "reasoning": {"effort": null, "summary": null},
                "store": body.get("store").and_then(Value::as_bool).unwrap_or(true),
                "temperature": 1.0,
                "text": {"format": {"type": "text"}},
                "tool_choice": "auto",
                "tools": [],
                "top_p": 1.0,
                "truncation": "disabled",
                "usage": usage,
                "user": null,
                "metadata": {},
            })
        };
        let usage = json!({
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output,
        });
        let final_status = if cut { "incomplete" } else { "completed" };
        let item_status = if cut { "incomplete" } else { "completed" };
        let final_response = response(
            final_status,
            json!([message(item_status, Some(&text))]),
            usage,
        );

        if !is_stream(body) {
            return Ok(json_response(StatusCode::OK, &final_response));
        }

        let mut seq = 0u64;
        let mut events = Vec::new();
        let mut push = |name: &str, mut data: Value| {
            data["type"] = json!(name);
            data["sequence_number"] = json!(seq);
            seq += 1;
            events.push(sse_event(name, &data));
        };
        let in_progress = response("in_progress", json!([]), Value::Null);
        push("response.created", json!({"response": in_progress}));
        push("response.in_progress", json!({"response": in_progress}));
        push(
            "response.output_item.added",
            json!({"output_index": 0, "item": message("in_progress", None)}),
        );
        push(
            "response.content_part.added",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}}),
        );
        for delta in reply_deltas(output) {
            push(
                "response.output_text.delta",
                json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}),
            );
        }
        push(
            "response.output_text.done",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        );
        push(
            "response.content_part.done",
            json!({"item_id": msg_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": text}}),
        );
        push(
            "response.output_item.done",
            json!({"output_index": 0, "item": message(item_status, Some(&text))}),
        );
        let last = if cut {
            "response.incomplete"
        } else {
            "response.completed"
        };
        push(last, json!({"response": final_response}));
        Ok(sse_response(events, call.delay))
    }

    pub fn embeddings(_state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
        let body = &call.body;
        let model = model_of(body)?;
        let dims = u64_field(body, "dimensions")?.unwrap_or(8);
        if dims == 0 || dims > 4096 {
            return Err(bad_request("dimensions: must be between 1 and 4096"));
        }
        let base64 = match body.get("encoding_format").and_then(Value::as_str) {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(bad_request(format!(
                    "encoding_format: {other:?} is not one of 'float', 'base64'"
                )))
            }
        };
        // (text identity for the vector, token count)
        let inputs: Vec<(String, u64)> = match body.get("input") {
            Some(Value::String(s)) => vec![(s.clone(), words(s))],
            Some(Value::Array(items)) if !items.is_empty() => {
                if items.iter().all(Value::is_string) {
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|s| (s.to_string(), words(s)))
                        .collect()
                } else if items.iter().all(Value::is_u64) {
                    vec![(Value::Array(items.clone()).to_string(), items.len() as u64)]
                } else if items.iter().all(Value::is_array) {
                    items
                        .iter()
                        .map(|a| (a.to_string(), a.as_array().map_or(0, Vec::len) as u64))
                        .collect()
                } else {
                    return Err(bad_request("input: expected strings or token arrays"));
                }
            }
            _ => return Err(bad_request("input: field required")),
        };
        let total: u64 = inputs.iter().map(|(_, t)| t).sum();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, (text, _))| {
                let v = vector(text, dims as usize);
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(base64_encode(&bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": total, "total_tokens": total},
            }),
        ))
    }

    /// A deterministic unit-length vector for `text`.
    fn vector(text: &str, dims: usize) -> Vec<f32> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        let mut v: Vec<f32> = (0..dims)
            .map(|i| {
                h = splitmix64(h ^ i as u64);
                ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn base64_encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            out.push(T[(n >> 18) as usize & 63] as char);
            out.push(T[(n >> 12) as usize & 63] as char);
            out.push(if chunk.len() > 1 {
                T[(n >> 6) as usize & 63] as char
            } else {
                '='
            });
            out.push(if chunk.len() > 2 {
                T[n as usize & 63] as char
            } else {
                '='
            });
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Google Generative Language API.

mod google {
    use super::*;

    const WORDS_PER_CHUNK: usize = 4;

    pub fn generate(
        state: &State,
        call: &Call,
        model: &str,
        stream: bool,
    ) -> Result<Response<RespBody>, Reject> {
        let body = &call.body;
        if model.is_empty() {
            return Err(bad_request("model name is empty"));
        }
        let input = match body.get("contents") {
            Some(Value::Array(c)) if !c.is_empty() => c.iter().map(text_words).sum::<u64>(),
            _ => {
                return Err(bad_request(
                    "* GenerateContentRequest.contents: contents is not specified",
                ))
            }
        } + body
            .get("systemInstruction")
            .or(body.get("system_instruction"))
            .map_or(0, text_words);
        let limit = match body.pointer("/generationConfig/maxOutputTokens") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                bad_request("generationConfig.maxOutputTokens: expected a non-negative integer")
            })?),
        };
        let (output, cut) = output_tokens(call, limit);
        let finish = if cut { "MAX_TOKENS" } else { "STOP" };
        let response_id = state.id("");

        let chunk = |text: &str, so_far: u64, finish: Option<&str>| {
            let mut candidate = json!({
                "content": {"parts": [{"text": text}], "role": "model"},
                "index": 0,
            });
            if let Some(f) = finish {
                candidate["finishReason"] = json!(f);
            }
            json!({
                "candidates": [candidate],
                "usageMetadata": {
                    "promptTokenCount": input,
                    "candidatesTokenCount": so_far,
                    "totalTokenCount": input + so_far,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input}],
                },
                "modelVersion": model,
                "responseId": response_id,
            })
        };

        if !stream {
            return Ok(json_response(
                StatusCode::OK,
                &chunk(&reply_text(output), output, Some(finish)),
            ));
        }

        let deltas = reply_deltas(output);
        let groups: Vec<String> = if deltas.is_empty() {
            vec![String::new()]
        } else {
            deltas.chunks(WORDS_PER_CHUNK).map(|c| c.concat()).collect()
        };
        let mut so_far = 0u64;
        let last = groups.len() - 1;
        let chunks: Vec<Value> = groups
            .iter()
            .enumerate()
            .map(|(i, text)| {
                so_far += words(text);
                chunk(text, so_far, (i == last).then_some(finish))
            })
            .collect();

        let sse = query_param(call.query.as_deref(), "alt") == Some("sse");
        if sse {
            let events = chunks
                .iter()
                .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
                .collect();
            return Ok(sse_response(events, call.delay));
        }
        // Without alt=sse the API streams one JSON array.
        let n = chunks.len();
        let parts = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let open = if i == 0 { "[" } else { "" };
                let close = if i + 1 == n { "]" } else { ",\r\n" };
                Bytes::from(format!("{open}{c}{close}"))
            })
            .collect();
        Ok(stream_response(
            "application/json; charset=UTF-8",
            parts,
            call.delay,
        ))
    }
}

// ---------------------------------------------------------------------------
// MCP streamable HTTP.

mod mcp {
    use super::*;

    const SESSION_HEADER: &str = "mcp-session-id";
    const VERSION_HEADER: &str = "mcp-protocol-version";
    const PARSE_ERROR: i64 = -32700;
    const INVALID_REQUEST: i64 = -32600;
    const METHOD_NOT_FOUND: i64 = -32601;
    const INVALID_PARAMS: i64 = -32602;

    fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
    }

    fn http_error(status: StatusCode, id: &Value, code: i64, message: &str) -> Response<RespBody> {
        json_response(status, &rpc_error(id, code, message))
    }

    pub async fn handle(
        state: &Arc<State>,
        req: Request<Incoming>,
        query: Option<&str>,
    ) -> Response<RespBody> {
        let session = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match *req.method() {
            Method::POST => {}
            Method::DELETE => {
                let Some(id) = session else {
                    return http_error(
                        StatusCode::BAD_REQUEST,
                        &Value::Null,
                        INVALID_REQUEST,
                        "Bad Request: Mcp-Session-Id header is required",
                    );
                };
                let removed = state
                    .sessions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                return if removed {
                    respond(StatusCode::OK, "text/plain", "")
                } else {
                    http_error(
                        StatusCode::NOT_FOUND,
                        &Value::Null,
                        INVALID_REQUEST,
                        "Session not found",
                    )
                };
            }
            _ => {
                let mut resp = respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    "this server offers no server-initiated SSE stream\n",
                );
                resp.headers_mut()
                    .insert("allow", HeaderValue::from_static("POST, DELETE"));
                return resp;
            }
        }

        let accept = req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let accepts_sse = accept.contains("text/event-stream");
        let accepts_json =
            accept.contains("application/json") || accept.contains("*/*") || accept.is_empty();
        if !accepts_sse && !accepts_json {
            return http_error(
                StatusCode::NOT_ACCEPTABLE,
                &Value::Null,
                INVALID_REQUEST,
                "Not Acceptable: client must accept application/json and text/event-stream",
            );
        }
        let force_json = query_param(query, "format") == Some("json");
        let use_sse = accepts_sse && !force_json;
        let version = req
            .headers()
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);

        let bytes = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    &Value::Null,
                    PARSE_ERROR,
                    &format!("reading body: {e}"),
                )
            }
        };
        let msg: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    &Value::Null,
                    PARSE_ERROR,
                    &format!("Parse error: {e}"),
                )
            }
        };
        let Some(obj) = msg.as_object() else {
            return http_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                INVALID_REQUEST,
                "Invalid Request: expected one JSON-RPC message (batches are not supported)",
            );
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return http_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                INVALID_REQUEST,
                "Invalid Request: jsonrpc must be \"2.0\"",
            );
        }
        let id = obj.get("id").cloned();
        let method = obj.get("method").and_then(Value::as_str);

        let (id, method) = match (id, method) {
            // Notifications and client responses: accepted, no body.
            (None, Some(_)) | (Some(_), None) => {
                if let Err(resp) =
                    check_session(state, session.as_deref(), version.as_deref(), &Value::Null)
                {
                    return *resp;
                }
                return respond(StatusCode::ACCEPTED, "text/plain", "");
            }
            (Some(id), Some(method)) => (id, method.to_string()),
            (None, None) => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    &Value::Null,
                    INVALID_REQUEST,
                    "Invalid Request",
                );
            }
        };
        let params = obj.get("params").cloned().unwrap_or(Value::Null);

        let mut new_session = None;
        let reply = match method.as_str() {
            "initialize" => {
                let sid = uuid::Uuid::new_v4().simple().to_string();
                state
                    .sessions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(sid.clone());
                new_session = Some(sid);
                let asked = params.get("protocolVersion").and_then(Value::as_str);
                let version = asked
                    .filter(|v| MCP_VERSIONS.contains(v))
                    .unwrap_or(MCP_DEFAULT_VERSION);
                result(
                    &id,
                    json!({
                        "protocolVersion": version,
                        "capabilities": {"tools": {"listChanged": false}},
                        "serverInfo": {"name": "egret-mock-mcp", "title": "egret mock MCP server", "version": env!("CARGO_PKG_VERSION")},
                        "instructions": "Test server: tools echo and add.",
                    }),
                )
            }
            // Pre-session probe of newer clients: not supported here, which
            // makes them fall back to the initialize handshake.
            "server/discover" => {
                rpc_error(&id, METHOD_NOT_FOUND, "Method not found: server/discover")
            }
            _ => {
                if let Err(resp) = check_session(state, session.as_deref(), version.as_deref(), &id)
                {
                    return *resp;
                }
                match method.as_str() {
                    "ping" => result(&id, json!({})),
                    "tools/list" => result(&id, json!({"tools": tools()})),
                    "tools/call" => call_tool(&id, &params),
                    other => {
                        rpc_error(&id, METHOD_NOT_FOUND, &format!("Method not found: {other}"))
                    }
                }
            }
        };

        let mut messages = Vec::new();
        if method == "tools/call" {
            if let Some(token) = params.pointer("/_meta/progressToken") {
                messages.push(json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": 1, "total": 1, "message": "done"},
                }));
            }
        }
        messages.push(reply);

        let mut resp = if use_sse {
            let events = messages
                .iter()
                .map(|m| Bytes::from(format!("event: message\ndata: {m}\n\n")))
                .collect();
            sse_response(events, Duration::ZERO)
        } else {
            // JSON mode carries only the response itself.
            json_response(StatusCode::OK, messages.last().unwrap_or(&Value::Null))
        };
        if let Some(sid) = new_session {
            if let Ok(v) = HeaderValue::from_str(&sid) {
                resp.headers_mut().insert(SESSION_HEADER, v);
            }
        }
        resp
    }

    /// Everything after `initialize` needs a live session (400 without the
    /// header, 404 for an unknown or ended one) and, when the client names
    /// one, a supported protocol version.
    fn check_session(
        state: &State,
        session: Option<&str>,
        version: Option<&str>,
        id: &Value,
    ) -> Result<(), Box<Response<RespBody>>> {
        let Some(sid) = session else {
            return Err(Box::new(http_error(
                StatusCode::BAD_REQUEST,
                id,
                INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required",
            )));
        };
        let known = state
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(sid);
        if !known {
            return Err(Box::new(http_error(
                StatusCode::NOT_FOUND,
                id,
                INVALID_REQUEST,
                "Session not found",
            )));
        }
        if let Some(v) = version {
            if !MCP_VERSIONS.contains(&v) {
                return Err(Box::new(http_error(
                    StatusCode::BAD_REQUEST,
                    id,
                    INVALID_REQUEST,
                    &format!("Bad Request: unsupported MCP-Protocol-Version {v:?}"),
                )));
            }
        }
        Ok(())
    }

    fn result(id: &Value, result: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    }

    fn tools() -> Value {
        json!([
            {
                "name": "echo",
                "title": "Echo",
                "description": "Returns the given text unchanged.",
                "inputSchema": {
                    "type": "object",
                    "properties": {"text": {"type": "string", "description": "Text to echo"}},
                    "required": ["text"],
                },
            },
            {
                "name": "add",
                "title": "Add",
                "description": "Adds two numbers.",
                "inputSchema": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"],
                },
                "outputSchema": {
                    "type": "object",
                    "properties": {"sum": {"type": "number"}},
                    "required": ["sum"],
                },
            },
        ])
    }

    fn tool_error(id: &Value, text: String) -> Value {
        result(
            id,
            json!({"content": [{"type": "text", "text": text}], "isError": true}),
        )
    }

    fn call_tool(id: &Value, params: &Value) -> Value {
        let name = params.get("name").and_then(Value::as_str).unwrap_or("");
        let empty = Map::new();
        let args = params
            .get("arguments")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        match name {
            "echo" => match args.get("text").and_then(Value::as_str) {
                Some(text) => result(
                    id,
                    json!({"content": [{"type": "text", "text": text}], "isError": false}),
                ),
                None => tool_error(id, "echo: argument 'text' (string) is required".into()),
            },
            "add" => {
                let (Some(a), Some(b)) = (args.get("a"), args.get("b")) else {
                    return tool_error(
                        id,
                        "add: arguments 'a' and 'b' (numbers) are required".into(),
                    );
                };
                let sum = match (a.as_i64(), b.as_i64()) {
                    (Some(x), Some(y)) => x.checked_add(y).map(Value::from),
                    _ => match (a.as_f64(), b.as_f64()) {
                        (Some(x), Some(y)) => {
                            serde_json::Number::from_f64(x + y).map(Value::Number)
                        }
                        _ => None,
                    },
                };
                match sum {
                    Some(sum) => result(
                        id,
                        json!({
                            "content": [{"type": "text", "text": sum.to_string()}],
                            "structuredContent": {"sum": sum},
                            "isError": false,
                        }),
                    ),
                    None => tool_error(id, "add: 'a' and 'b' must be numbers".into()),
                }
            }
            other => rpc_error(id, INVALID_PARAMS, &format!("Unknown tool: {other}")),
        }
    }
}

// ---------------------------------------------------------------------------
// Utility endpoints.

fn parse_size(n: &str) -> Option<u64> {
    n.parse::<u64>().ok().filter(|v| *v <= MAX_GENERATED_BODY)
}

fn bad_size() -> Response<RespBody> {
    respond(
        StatusCode::BAD_REQUEST,
        "text/plain",
        format!("size must be an integer between 0 and {MAX_GENERATED_BODY}\n"),
    )
}

fn bytes_endpoint(n: &str) -> Response<RespBody> {
    match parse_size(n) {
        Some(n) => pattern_response(
            "application/octet-stream",
            PatternBody {
                prefix: None,
                fill: n,
                suffix: None,
            },
        ),
        None => bad_size(),
    }
}

/// An n-byte JSON document: `{"data":"xxx…"}` (n ≥ 11), a string (n ≥ 2),
/// or `0` (n = 1).
fn json_endpoint(n: &str) -> Response<RespBody> {
    let n = match parse_size(n) {
        Some(0) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "no JSON document has 0 bytes\n",
            )
        }
        Some(n) => n,
        None => return bad_size(),
    };
    let body = match n {
        1 => PatternBody {
            prefix: Some(Bytes::from_static(b"0")),
            fill: 0,
            suffix: None,
        },
        2..=10 => PatternBody {
            prefix: Some(Bytes::from_static(b"\"")),
            fill: n - 2,
            suffix: Some(Bytes::from_static(b"\"")),
        },
        _ => PatternBody {
            prefix: Some(Bytes::from_static(b"{\"data\":\"")),
            fill: n - 11,
            suffix: Some(Bytes::from_static(b"\"}")),
        },
    };
    pattern_response("application/json", body)
}

fn sse_endpoint(n: &str, query: Option<&str>) -> Response<RespBody> {
    let n = match n.parse::<u64>() {
        Ok(n) if n <= 10_000_000 => n,
        _ => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "event count must be an integer up to 10000000\n",
            )
        }
    };
    let interval = query_param(query, "interval_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            let event = format!("id: {i}\nevent: tick\ndata: {{\"seq\":{i},\"of\":{n}}}\n\n");
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /headers`: the request headers as received (name → value), so tests
/// can check what a proxy added or removed.
fn headers_endpoint(req: &Request<Incoming>) -> Response<RespBody> {
    let mut map = serde_json::Map::new();
    for (name, value) in req.headers() {
        map.insert(
            name.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    json_response(StatusCode::OK, &Value::Object(map))
}

fn echo_endpoint(req: Request<Incoming>) -> Response<RespBody> {
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let content_length = req.headers().get(CONTENT_LENGTH).cloned();
    let body = req.into_body().map_err(|e| Box::new(e) as BoxError).boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(len) = content_length {
        resp.headers_mut().insert(CONTENT_LENGTH, len);
    }
    resp
}
