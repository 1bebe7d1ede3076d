//! The direct tier's harness: the real [`L7`] (policy, budgets, TLS
//! termination, upstream TLS, key hashing, admission, drain) built from a
//! YAML config the way `app::build_l7` builds it, a mock provider on
//! 127.0.0.1 (hyper + rustls, its certificates from a test CA) and a
//! sandbox side that is an in-memory stream into
//! [`egret::proxy::http::serve_tls`] / [`egret::proxy::http::serve_plain`].
//!
//! No kernel, cgroup, netns or root: the [`Origin`] the redirect listener
//! would read from the kernel is written by the test. What the proxy
//! records arrives on the records channel; tests wait for it with a
//! deadline ([`Harness::record`]), never with sleeps.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use egret::{
    attribution::Attribution,
    budget::Budgets,
    config::Config,
    credentials::KeyHasher,
    policy::Policy,
    proxy::{admission::Admission, http as proxy_http, AttributionSource, Origin, L7},
    record::{Record, RecordStats},
    tls::{Ca, Terminator, UpstreamTls, UpstreamTlsOptions},
};
use egret_common::SockTag;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::{
    io::DuplexStream,
    net::TcpListener,
    sync::{mpsc, Notify},
    task::JoinHandle,
};

/// How long a test waits for something the proxy does.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Bodies on both sides of the proxy in these tests.
pub type TestBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed_unsync()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A body of `chunks` sent one frame at a time, with no length known in
/// advance (HTTP/1.1: chunked).
pub fn chunked(chunks: Vec<&'static str>) -> TestBody {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c.as_bytes()))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    egret::tls::crypto_provider()
}

// ---- the mock provider's certificates ---------------------------------------

/// A CA of the test's own and one leaf for the provider names the tests
/// use (and 127.0.0.1), as the privileged suite's mock provider has.
pub struct UpstreamPki {
    pub ca_pem: String,
    pub leaf: CertificateDer<'static>,
    pub key: Vec<u8>,
}

pub const UPSTREAM_NAMES: &[&str] = &[
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
    "localhost",
];

impl UpstreamPki {
    pub fn new() -> UpstreamPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
            KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
        };
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "egret direct-test provider CA");
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf = CertificateParams::new(
            UPSTREAM_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        UpstreamPki {
            ca_pem: ca_cert.pem(),
            leaf: leaf.der().clone(),
            key: key.serialize_der(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.leaf.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

// ---- the mock provider ------------------------------------------------------

/// One request as the provider received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
pub struct UpstreamState {
    pub seen: Mutex<Vec<Seen>>,
    /// A gated stream (`x-test-gate` on the request) sends its first event,
    /// then waits for this before the rest.
    pub gate: Notify,
}

/// A provider on 127.0.0.1: TLS (h2 and http/1.1 by ALPN) and plain HTTP.
///
/// Paths:
/// * `POST /v1/messages` — an Anthropic Message, or its event stream when
///   the body asks for `"stream": true`;
/// * `POST /v1/chat/completions` — an OpenAI chat completion, or its
///   stream (with the usage chunk only when
///   `stream_options.include_usage` is asked for);
/// * `GET /headers` — the request's headers as a JSON object;
/// * `GET /gzip` — a gzip-encoded JSON body;
/// * `GET /big/{n}` — a JSON string of exactly `n` bytes.
pub struct Upstream {
    pub tls_addr: SocketAddr,
    pub plain_addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Upstream {
    pub async fn start(pki: &UpstreamPki) -> Upstream {
        let state = Arc::new(UpstreamState::default());
        let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tls_addr, plain_addr) = (tls.local_addr().unwrap(), plain.local_addr().unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let st = state.clone();
        let t1 = tokio::spawn(async move {
            while let Ok((tcp, _)) = tls.accept().await {
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    if let Ok(s) = acceptor.accept(tcp).await {
                        serve_upstream(TokioIo::new(s), st).await;
                    }
                });
            }
        });
        let st = state.clone();
        let t2 = tokio::spawn(async move {
            while let Ok((tcp, _)) = plain.accept().await {
                tokio::spawn(serve_upstream(TokioIo::new(tcp), st.clone()));
            }
        });
        Upstream {
            tls_addr,
            plain_addr,
            state,
            tasks: vec![t1, t2],
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn serve_upstream<I>(io: I, st: Arc<UpstreamState>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(answer(req, st).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

pub const ANTHROPIC_MESSAGE: &str = r#"{"id":"msg_01direct","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Herons wade."}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":16}}"#;

pub const OPENAI_COMPLETION: &str = r#"{"id":"chatcmpl-direct","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Egrets."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#;

/// The Anthropic event stream: 12 input tokens, 16 output tokens.
pub fn anthropic_events() -> Vec<String> {
    let ev = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
    vec![
        ev(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_02stream","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        ),
        ev(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Herons"}}"#,
        ),
        ev(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        ev(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":16}}"#,
        ),
        ev("message_stop", r#"{"type":"message_stop"}"#),
    ]
}

/// The OpenAI chunk stream; the usage chunk (9 in, 3 out) only when asked.
pub fn openai_events(include_usage: bool) -> Vec<String> {
    let data = |d: &str| format!("data: {d}\n\n");
    let mut v = vec![
        data(
            r#"{"id":"chatcmpl-stream","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"role":"assistant","content":"Egr"},"finish_reason":null}]}"#,
        ),
        data(
            r#"{"id":"chatcmpl-stream","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"ets."},"finish_reason":null}]}"#,
        ),
        data(
            r#"{"id":"chatcmpl-stream","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ),
    ];
    if include_usage {
        v.push(data(
            r#"{"id":"chatcmpl-stream","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}"#,
        ));
    }
    v.push(data("[DONE]"));
    v
}

fn respond(status: u16, content_type: &str, body: TestBody) -> http::Response<TestBody> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body)
        .unwrap()
}

/// An event stream; with `gate`, the first event goes out at once and the
/// rest only once the test opens the gate.
fn event_stream(events: Vec<String>, gate: Option<Arc<UpstreamState>>) -> TestBody {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            if i == 1 {
                if let Some(st) = &gate {
                    st.gate.notified().await;
                }
            }
            if tx.send(Bytes::from(e)).await.is_err() {
                return;
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    StreamBody::new(frames).boxed_unsync()
}

async fn answer(req: http::Request<Incoming>, st: Arc<UpstreamState>) -> http::Response<TestBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    st.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let streamed = json["stream"] == true;
    let gate = parts
        .headers
        .contains_key("x-test-gate")
        .then(|| st.clone());
    match (parts.method.as_str(), path.as_str()) {
        ("POST", "/v1/messages") if streamed => respond(
            200,
            "text/event-stream",
            event_stream(anthropic_events(), gate),
        ),
        ("POST", "/v1/messages") => respond(200, "application/json", full(ANTHROPIC_MESSAGE)),
        ("POST", "/v1/chat/completions") if streamed => {
            let usage = json["stream_options"]["include_usage"] == true;
            respond(
                200,
                "text/event-stream",
                event_stream(openai_events(usage), gate),
            )
        }
        ("POST", "/v1/chat/completions") => {
            respond(200, "application/json", full(OPENAI_COMPLETION))
        }
        ("GET", "/headers") => {
            let mut m = serde_json::Map::new();
            for (k, v) in &parts.headers {
                m.insert(
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or("?").to_owned().into(),
                );
            }
            respond(
                200,
                "application/json",
                full(serde_json::Value::Object(m).to_string()),
            )
        }
        ("GET", "/gzip") => {
            let mut r = respond(200, "application/json", full(gzip(GZIP_JSON.as_bytes())));
            r.headers_mut()
                .insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
            r
        }
        ("GET", p) if p.starts_with("/big/") => {
            let n: usize = p["/big/".len()..].parse().unwrap();
            let s = format!("\"{}\"", "a".repeat(n - 2));
            respond(200, "application/json", full(s))
        }
        _ => respond(404, "text/plain", full("no such mock path")),
    }
}

pub const GZIP_JSON: &str =
    r#"{"object":"list","data":["little egret","great egret","cattle egret","snowy egret"]}"#;

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

// ---- the agent side -----------------------------------------------------------

/// The sandbox the tests speak for: what the kernel tag would resolve to.
pub fn attribution() -> Attribution {
    Attribution {
        invocation_id: "inv-direct-1".into(),
        agent_kind: "coder".into(),
        agent_namespace: "tests".into(),
        agent_name: "agent-a".into(),
        ..Default::default()
    }
}

/// The real L7 path over a mock provider, and the sandbox's end of it.
pub struct Harness {
    pub l7: Arc<L7>,
    pub records: mpsc::Receiver<Record>,
    pub upstream: Upstream,
    /// What sandbox clients trust: the agent's CA.
    roots: Arc<rustls::RootCertStore>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// `config` is an egret config file's text (`gateways:` …).
    pub async fn new(config: &str) -> Harness {
        let cfg = Config::parse(config, Path::new("direct-test.yaml")).expect("test config");
        let dir = tempfile::tempdir().unwrap();
        let pki = UpstreamPki::new();
        let upstream = Upstream::start(&pki).await;
        let ca_file = dir.path().join("provider-ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();

        // As `app::build_l7`, with the test's trust and no state files.
        let ca = Arc::new(Ca::init(&dir.path().join("ca")).expect("agent CA"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let upstream_tls = UpstreamTls::new(&UpstreamTlsOptions {
            system_roots: false,
            extra_root_files: vec![ca_file],
        })
        .unwrap();
        let (tx, records) = mpsc::channel(1024);
        let l7 = Arc::new(L7 {
            policy: arc_swap::ArcSwap::from_pointee(Policy::new(&cfg)),
            prices: arc_swap::ArcSwap::from_pointee(
                egret::cost::Prices::new(&cfg.pricing).unwrap(),
            ),
            budgets: Arc::new(Budgets::open(None)),
            terminator: Arc::new(Terminator::with_ca(ca).unwrap()),
            upstream_tls: Arc::new(upstream_tls),
            keys: Arc::new(KeyHasher::with_secret([7; 32])),
            records: tx,
            record_stats: Arc::new(RecordStats::default()),
            resolver: Default::default(),
            admission: Admission::new(cfg.node.limits.clone()),
            drain: Default::default(),
            mcp: egret::proxy::mcp_legacy::Registry::new(&cfg.node.mcp),
        });
        Harness {
            l7,
            records,
            upstream,
            roots: Arc::new(roots),
            _dir: dir,
        }
    }

    /// The origin the redirect listener would give a connection of the
    /// test sandbox to `dst`.
    pub fn origin(&self, dst: SocketAddr, attribution: Option<Attribution>) -> Origin {
        Origin {
            cookie: 4242,
            tag: SockTag {
                cgroup_id: 77,
                ..Default::default()
            },
            dst,
            attribution,
            netns: None,
            source: AttributionSource::Kernel,
            authority: None,
        }
    }

    /// A sandbox connection to the TLS provider, served by
    /// `proxy::http::serve_tls`; its task ends when the connection does.
    pub fn serve_tls(&self, origin: Origin) -> (DuplexStream, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(proxy_http::serve_tls(self.l7.clone(), server, origin));
        (client, task)
    }

    /// A sandbox connection to the plain-HTTP provider, served by
    /// `proxy::http::serve_plain`.
    pub fn serve_plain(&self, origin: Origin) -> (DuplexStream, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(proxy_http::serve_plain(self.l7.clone(), server, origin));
        (client, task)
    }

    /// An HTTPS client of the sandbox to `sni` (ALPN `alpn`), attributed to
    /// the test sandbox.
    pub async fn tls_client(&self, sni: &str, alpn: &[&[u8]]) -> Client {
        let origin = self.origin(self.upstream.tls_addr, Some(attribution()));
        self.tls_client_from(origin, sni, alpn).await
    }

    pub async fn tls_client_from(&self, origin: Origin, sni: &str, alpn: &[&[u8]]) -> Client {
        let (stream, task) = self.serve_tls(origin);
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), stream)
            .await
            .expect("TLS handshake with the proxy");
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Client::handshake(TokioIo::new(tls), h2, sni.to_owned(), task).await
    }

    /// A plain-HTTP client of the sandbox, attributed to the test sandbox.
    pub async fn plain_client(&self) -> Client {
        let origin = self.origin(self.upstream.plain_addr, Some(attribution()));
        let (stream, task) = self.serve_plain(origin);
        let host = self.upstream.plain_addr.to_string();
        Client::handshake(TokioIo::new(stream), false, host, task).await
    }

    /// The next record the proxy emits, within [`DEADLINE`].
    pub async fn record(&mut self) -> Record {
        tokio::time::timeout(DEADLINE, self.records.recv())
            .await
            .expect("timed out waiting for a transaction record")
            .expect("record channel closed")
    }
}

/// A sandbox's HTTP client over one proxied connection.
pub struct Client {
    sender: Sender,
    /// Host (h1) or authority (h2) the requests name.
    pub host: String,
    /// The proxy's task serving this connection.
    pub served: JoinHandle<()>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

impl Client {
    async fn handshake<I>(io: I, h2: bool, host: String, served: JoinHandle<()>) -> Client
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let sender = if h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Client {
            sender,
            host,
            served,
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// A request to `path` on this connection's host.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let b = http::Request::builder().method(method);
        if self.is_h2() {
            b.uri(format!("https://{}{path}", self.host))
        } else {
            b.uri(path).header(http::header::HOST, &self.host)
        }
    }

    pub async fn send(&mut self, req: http::Request<TestBody>) -> http::Response<Incoming> {
        let sent = async {
            match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
            }
        };
        tokio::time::timeout(DEADLINE, sent)
            .await
            .expect("timed out waiting for the response head")
            .expect("response")
    }

    /// Sends `req` and reads the whole response.
    pub async fn exchange(
        &mut self,
        req: http::Request<TestBody>,
    ) -> (http::response::Parts, Bytes) {
        let resp = self.send(req).await;
        read(resp).await
    }

    /// A clone of the h2 sender, for concurrent streams on this connection.
    pub fn h2_sender(&self) -> hyper::client::conn::http2::SendRequest<TestBody> {
        match &self.sender {
            Sender::H2(s) => s.clone(),
            Sender::H1(_) => panic!("not an h2 connection"),
        }
    }

    /// Waits for the proxy to end the connection on its own (the client
    /// keeps its end open).
    pub async fn closed_by_proxy(&mut self) {
        tokio::time::timeout(DEADLINE, &mut self.served)
            .await
            .expect("the proxy kept the connection open")
            .expect("serving task");
    }

    /// Closes the connection and waits for the proxy to finish serving it
    /// (every record of the connection has been emitted then).
    pub async fn close(self) {
        drop(self.sender);
        tokio::time::timeout(DEADLINE, self.served)
            .await
            .expect("the proxy did not end the connection")
            .expect("serving task");
    }
}

/// The whole response: head and body.
pub async fn read(resp: http::Response<Incoming>) -> (http::response::Parts, Bytes) {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("timed out reading the response body")
        .expect("response body")
        .to_bytes();
    (parts, body)
}
