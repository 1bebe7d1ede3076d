//! The mock provider against real clients: a Rust HTTP client (HTTP/1.1 and
//! HTTP/2 over TLS, wire-format checks) and the official Python SDKs
//! (`bpf-tests/clients/*.py`, run from the venv at `$EGRET_VENV`, default
//! `<repo>/.venv`; create it with `bpf-tests/clients/setup-venv.sh`).
//!
//! Unprivileged, loopback only. Without the venv the SDK test fails when `CI`
//! is set and is skipped (with a message) otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

const MOCK: &str = env!("CARGO_BIN_EXE_mock-provider");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "egret-mock-test-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running mock-provider on free loopback ports; killed on drop.
struct Mock {
    child: Child,
    tls: String,
    plain: String,
    ca_cert: PathBuf,
    _dir: Option<TempDir>,
}

impl Mock {
    fn start() -> Mock {
        let dir = TempDir::new("mock");
        let mut mock = Self::start_in(&dir.0);
        mock._dir = Some(dir);
        mock
    }

    /// Runs with `dir/ca` as CA directory; the caller owns `dir`.
    fn start_in(dir: &Path) -> Mock {
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(MOCK)
            .args(["--listen", "127.0.0.1:0", "--listen-plain", "127.0.0.1:0"])
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mock-provider");
        let deadline = Instant::now() + Duration::from_secs(20);
        let info: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if let Ok(v) = serde_json::from_str(&text) {
                    break v;
                }
            }
            assert!(Instant::now() < deadline, "mock-provider did not get ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        Mock {
            child,
            tls: info["tls"][0].as_str().expect("tls addr").to_string(),
            plain: info["plain"][0].as_str().expect("plain addr").to_string(),
            ca_cert: PathBuf::from(info["ca_cert"].as_str().expect("ca_cert")),
            _dir: None,
        }
    }

    fn port(&self) -> u16 {
        self.tls
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    version: http::Version,
    alpn: Option<Vec<u8>>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }
}

fn tls_connector(ca: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One request on a fresh TLS connection to the mock, as `sni`, HTTP/2 when
/// `h2` (by ALPN) else HTTP/1.1.
async fn fetch(
    mock: &Mock,
    sni: &str,
    h2: bool,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let connector = tls_connector(&mock.ca_cert, alpn);
    let tcp = tokio::net::TcpStream::connect(&mock.tls)
        .await
        .expect("connect");
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://{sni}{path}"));
    if !h2 {
        req = req.header("host", sni);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("h2 request")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        sender.send_request(req).await.expect("h1 request")
    };
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
        version,
        alpn: negotiated,
    }
}

async fn post_json(mock: &Mock, h2: bool, path: &str, body: &Value) -> Reply {
    fetch(
        mock,
        "api.openai.com",
        h2,
        Method::POST,
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

/// (event name, parsed data) of an SSE body; `data: [DONE]` gives Null data.
fn sse_events(text: &str, sep: &str) -> Vec<(Option<String>, Value)> {
    text.split(sep)
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            let data = if data == "[DONE]" {
                Value::Null
            } else {
                serde_json::from_str(&data).unwrap_or_else(|e| panic!("bad SSE data {data:?}: {e}"))
            };
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn alpn_and_protocols() {
    let mock = Mock::start();
    for sni in [
        "api.anthropic.com",
        "api.openai.com",
        "generativelanguage.googleapis.com",
        "mcp.local",
        "localhost",
    ] {
        let r = fetch(&mock, sni, true, Method::GET, "/healthz", &[], b"").await;
        assert_eq!(r.status, StatusCode::OK, "{sni}");
        assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(r.version, http::Version::HTTP_2);
    }
    let r = fetch(
        &mock,
        "api.openai.com",
        false,
        Method::GET,
        "/healthz",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.version, http::Version::HTTP_11);

    // Plain HTTP listener.
    let tcp = tokio::net::TcpStream::connect(&mock.plain).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/json/64")
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 64);
}

#[tokio::test]
async fn openai_chat_stream_usage_only_when_asked() {
    let mock = Mock::start();
    let mut req = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "one two three four"}],
    });
    for h2 in [true, false] {
        let r = post_json(&mock, h2, "/v1/chat/completions", &req).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let text = r.text();
        assert!(
            !text.contains("event:"),
            "chat streams carry bare data lines"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
        let events = sse_events(&text, "\n\n");
        assert_eq!(events.len(), 1 + 3 + 1 + 1, "role, 3 words, finish, DONE");
        assert!(events.iter().all(|(_, d)| d.get("usage").is_none()));
        assert_eq!(events[4].1["choices"][0]["finish_reason"], "length");
    }

    req["stream_options"] = json!({"include_usage": true});
    let r = post_json(&mock, true, "/v1/chat/completions", &req).await;
    let events = sse_events(&r.text(), "\n\n");
    assert_eq!(events.len(), 1 + 3 + 1 + 1 + 1);
    let usage_chunk = &events[events.len() - 2].1;
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 4);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 7);
    assert!(events[..events.len() - 2]
        .iter()
        .all(|(_, d)| d["usage"].is_null()));
}

#[tokio::test]
async fn anthropic_stream_and_cache_counts() {
    let mock = Mock::start();
    let req = json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 1000,
        "stream": true,
        "system": [
            {"type": "text", "text": "cached system prompt words", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "plain system"},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello there"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "count these five words please"},
        ],
    });
    let r = fetch(
        &mock,
        "api.anthropic.com",
        true,
        Method::POST,
        "/v1/messages",
        &[
            ("content-type", "application/json"),
            ("x-mock-output-tokens", "5"),
        ],
        req.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.contains_key("request-id"));
    let events = sse_events(&r.text(), "\n\n");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(
        &names[names.len() - 3..],
        &["content_block_stop", "message_delta", "message_stop"]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], json!(name), "event name matches data.type");
    }
    let start = &events[0].1["message"]["usage"];
    assert_eq!(start["input_tokens"], 2 + 2 + 1 + 5);
    assert_eq!(start["cache_read_input_tokens"], 4);
    assert_eq!(start["cache_creation_input_tokens"], 0);
    let delta = &events[names.len() - 2].1;
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let text: String = events
        .iter()
        .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text.split_whitespace().count(), 5);

    // x-mock-cache: create moves the marked words to cache creation.
    let mut plain = req.clone();
    plain["stream"] = json!(false);
    let r = fetch(
        &mock,
        "api.anthropic.com",
        false,
        Method::POST,
        "/v1/messages",
        &[
            ("content-type", "application/json"),
            ("x-mock-cache", "create"),
        ],
        plain.to_string().as_bytes(),
    )
    .await;
    let m = r.json();
    assert_eq!(m["usage"]["cache_creation_input_tokens"], 4);
    assert_eq!(m["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(m["usage"]["output_tokens"], 16);

    // Errors in Anthropic's shape.
    let r = post_json(
        &mock,
        true,
        "/v1/messages",
        &json!({"model": "m", "messages": []}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn responses_and_google_streams() {
    let mock = Mock::start();
    let r = post_json(&mock, true, "/v1/responses",
        &json!({"model": "gpt-4.1", "stream": true, "input": [{"role": "user", "content": [{"type": "input_text", "text": "a b c"}]}]})).await;
    let events = sse_events(&r.text(), "\n\n");
    assert_eq!(events[0].0.as_deref(), Some("response.created"));
    let (last_name, last) = events.last().unwrap();
    assert_eq!(last_name.as_deref(), Some("response.completed"));
    assert_eq!(last["response"]["usage"]["input_tokens"], 3);
    assert_eq!(last["response"]["usage"]["output_tokens"], 16);
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());

    let body = json!({
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [{"role": "user", "parts": [{"text": "one two three"}]}],
        "generationConfig": {"maxOutputTokens": 9},
    });
    let r = fetch(
        &mock,
        "generativelanguage.googleapis.com",
        true,
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    let text = r.text();
    assert!(text.ends_with("\r\n\r\n"));
    let chunks = sse_events(&text, "\r\n\r\n");
    assert_eq!(chunks.len(), 3, "4 + 4 + 1 words");
    let counts: Vec<u64> = chunks
        .iter()
        .map(|(_, c)| c["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![4, 8, 9], "cumulative usage in every chunk");
    assert!(chunks
        .iter()
        .all(|(_, c)| c["usageMetadata"]["promptTokenCount"] == 5));
    assert_eq!(chunks[2].1["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert!(chunks[0].1["candidates"][0].get("finishReason").is_none());

    let r = fetch(
        &mock,
        "generativelanguage.googleapis.com",
        false,
        Method::POST,
        "/v1beta/models/gemini-2.5-flash:generateContent",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    let v = r.json();
    assert_eq!(v["usageMetadata"]["totalTokenCount"], 14);
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");
}

#[tokio::test]
async fn mcp_streamable_http() {
    let mock = Mock::start();
    let both = "application/json, text/event-stream";
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let r = fetch(
        &mock,
        "mcp.local",
        true,
        Method::POST,
        "/mcp?format=json",
        &[("content-type", "application/json"), ("accept", both)],
        init.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let sid = r.headers["mcp-session-id"].to_str().unwrap().to_string();
    assert_eq!(r.json()["result"]["protocolVersion"], "2025-06-18");

    let h = |extra: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("content-type", "application/json".into()),
            ("accept", extra.into()),
        ]
    };
    let with_sid = |accept: &'static str| {
        let mut v = h(accept);
        v.push(("mcp-session-id", sid.clone()));
        v.push(("mcp-protocol-version", "2025-06-18".into()));
        v
    };
    let call = |hdrs: Vec<(&'static str, String)>, path: &'static str, body: Value| {
        let mock = &mock;
        async move {
            let hdrs: Vec<(&str, &str)> = hdrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            fetch(
                mock,
                "mcp.local",
                false,
                Method::POST,
                path,
                &hdrs,
                body.to_string().as_bytes(),
            )
            .await
        }
    };

    let r = call(
        with_sid(both),
        "/mcp",
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.body.is_empty());
    let r = call(
        h(both),
        "/mcp",
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "notification without session"
    );

    // SSE when the client accepts it.
    let r = call(with_sid(both), "/mcp", json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "add", "arguments": {"a": 2, "b": 3}, "_meta": {"progressToken": "p1"}}})).await;
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&r.text(), "\n\n");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].1["method"], "notifications/progress");
    assert_eq!(events[1].1["id"], 2);
    assert_eq!(events[1].1["result"]["structuredContent"]["sum"], 5);

    // JSON when it accepts only JSON.
    let r = call(
        with_sid("application/json"),
        "/mcp",
        json!({"jsonrpc": "2.0", "id": "x", "method": "tools/list"}),
    )
    .await;
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let names: Vec<String> = r.json()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["echo", "add"]);

    // Unknown method, missing and unknown sessions.
    let r = call(
        with_sid(both),
        "/mcp?format=json",
        json!({"jsonrpc": "2.0", "id": 3, "method": "nope"}),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], -32601);
    let r = call(
        h(both),
        "/mcp",
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let mut bad = h(both);
    bad.push(("mcp-session-id", "nope".into()));
    let r = call(
        bad,
        "/mcp",
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Batches: one response per request (a JSON array, or one SSE event
    // each), none for notifications; a request's `_meta` is reported back.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 10, "method": "tools/call",
         "params": {"name": "echo", "arguments": {"text": "b"}, "_meta": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "x", "method": "nope"},
        {"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1}}},
    ]);
    let r = call(with_sid(both), "/mcp?format=json", batch.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    let list = v.as_array().expect("an array of responses");
    assert_eq!(list.len(), 3, "{v}");
    assert_eq!(list[0]["id"], 10);
    assert_eq!(list[0]["result"]["content"][0]["text"], "b");
    assert_eq!(
        list[0]["result"]["_meta"]["egret.mock/seen"]["meta"]["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(list[1]["error"]["code"], -32601);
    assert_eq!(list[2]["result"]["isError"], true);
    let r = call(with_sid(both), "/mcp", batch).await;
    let events = sse_events(&r.text(), "\n\n");
    assert_eq!(events.len(), 3);
    assert_eq!(events[1].1["id"], "x");
    let r = call(
        with_sid(both),
        "/mcp",
        json!([{"jsonrpc": "2.0", "method": "notifications/initialized"}]),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = call(with_sid(both), "/mcp", json!([])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(
        h(both),
        "/mcp",
        json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "batch without session");

    let r = fetch(
        &mock,
        "mcp.local",
        true,
        Method::GET,
        "/mcp",
        &[("accept", "text/event-stream")],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = fetch(
        &mock,
        "mcp.local",
        true,
        Method::DELETE,
        "/mcp",
        &[("mcp-session-id", &sid)],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(
        with_sid(both),
        "/mcp",
        json!({"jsonrpc": "2.0", "id": 6, "method": "ping"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "session ended");
}

/// Non-streamed answers are compressed as the real front ends do, when the
/// client accepts it; streams never are; compressed requests are read.
#[tokio::test]
async fn json_answers_are_compressed_when_accepted() {
    use std::io::{Read, Write};
    let mock = Mock::start();
    let chat =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]});
    let body = chat.to_string();
    let gunzip = |b: &[u8]| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        serde_json::from_slice::<Value>(&out).unwrap()
    };
    let unbr = |b: &[u8]| {
        let mut out = Vec::new();
        brotli::Decompressor::new(b, 4096)
            .read_to_end(&mut out)
            .unwrap();
        serde_json::from_slice::<Value>(&out).unwrap()
    };
    for (sni, path, accept, want) in [
        (
            "api.openai.com",
            "/v1/chat/completions",
            Some("gzip, deflate"),
            Some("gzip"),
        ),
        (
            "api.openai.com",
            "/v1/chat/completions",
            Some("gzip, deflate, br"),
            Some("br"),
        ),
        (
            "api.openai.com",
            "/v1/chat/completions",
            Some("br;q=0, gzip"),
            Some("gzip"),
        ),
        (
            "api.openai.com",
            "/v1/chat/completions",
            Some("*"),
            Some("br"),
        ),
        (
            "api.openai.com",
            "/v1/chat/completions",
            Some("identity"),
            None,
        ),
        ("api.openai.com", "/v1/chat/completions", None, None),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some("gzip, br"),
            Some("gzip"),
        ),
    ] {
        let google = sni.starts_with("generativelanguage");
        let req_body = if google {
            json!({"contents": [{"parts": [{"text": "hi there"}]}]}).to_string()
        } else {
            body.clone()
        };
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = accept {
            headers.push(("accept-encoding", a));
        }
        for h2 in [false, true] {
            let r = fetch(
                &mock,
                sni,
                h2,
                Method::POST,
                path,
                &headers,
                req_body.as_bytes(),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{accept:?}");
            let ce = r
                .headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap());
            assert_eq!(ce, want, "{sni} {accept:?}");
            let v = match ce {
                Some("gzip") => gunzip(&r.body),
                Some("br") => unbr(&r.body),
                _ => r.json(),
            };
            let key = if google { "usageMetadata" } else { "usage" };
            assert!(v[key].is_object(), "{v}");
        }
    }
    // Streams stay uncompressed whatever the client accepts.
    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    let r = fetch(
        &mock,
        "api.openai.com",
        false,
        Method::POST,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip, br"),
        ],
        stream.to_string().as_bytes(),
    )
    .await;
    assert!(r.headers.get("content-encoding").is_none());
    assert!(std::str::from_utf8(&r.body).unwrap().starts_with("data: "));
    // Errors are JSON answers too.
    let r = fetch(
        &mock,
        "api.anthropic.com",
        false,
        Method::POST,
        "/v1/messages",
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip"),
        ],
        b"{not json",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(gunzip(&r.body)["type"], "error");
    // A gzip request body is decoded before it is read.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let r = fetch(
        &mock,
        "api.openai.com",
        false,
        Method::POST,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        &gz.finish().unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["usage"]["prompt_tokens"], 2);
}

#[tokio::test]
async fn utility_endpoints() {
    let mock = Mock::start();
    for h2 in [true, false] {
        let r = fetch(
            &mock,
            "localhost",
            h2,
            Method::GET,
            "/bytes/200000",
            &[],
            b"",
        )
        .await;
        assert_eq!(r.body.len(), 200_000);
        assert_eq!(r.headers["content-length"], "200000");
        for n in [1usize, 2, 7, 11, 12, 100_000] {
            let r = fetch(
                &mock,
                "localhost",
                h2,
                Method::GET,
                &format!("/json/{n}"),
                &[],
                b"",
            )
            .await;
            assert_eq!(r.body.len(), n);
            serde_json::from_slice::<Value>(&r.body).unwrap_or_else(|e| panic!("/json/{n}: {e}"));
        }
        let payload = vec![b'z'; 300_000];
        let r = fetch(
            &mock,
            "localhost",
            h2,
            Method::POST,
            "/echo",
            &[("content-type", "application/x-test")],
            &payload,
        )
        .await;
        assert_eq!(r.body.as_ref(), payload.as_slice());
        assert_eq!(r.headers["content-type"], "application/x-test");
        let started = Instant::now();
        let r = fetch(
            &mock,
            "localhost",
            h2,
            Method::GET,
            "/sse/5?interval_ms=20",
            &[],
            b"",
        )
        .await;
        assert!(started.elapsed() >= Duration::from_millis(80));
        let events = sse_events(&r.text(), "\n\n");
        assert_eq!(events.len(), 5);
        assert_eq!(events[4].1["seq"], 4);
    }
    let r = fetch(
        &mock,
        "localhost",
        true,
        Method::GET,
        "/bytes/nope",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = fetch(
        &mock,
        "localhost",
        true,
        Method::GET,
        "/no/such/path",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[test]
fn ca_is_reused_and_key_private() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("reuse");
    let first = Mock::start_in(&dir.0);
    let cert1 = std::fs::read(&first.ca_cert).unwrap();
    let mode = std::fs::metadata(dir.0.join("ca/ca.key")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(first);
    let second = Mock::start_in(&dir.0);
    assert_eq!(
        std::fs::read(&second.ca_cert).unwrap(),
        cert1,
        "CA kept across restarts"
    );
    // And the new leaf chains to it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(fetch(
        &second,
        "api.openai.com",
        true,
        Method::GET,
        "/healthz",
        &[],
        b"",
    ));
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn cli_errors_are_one_line() {
    let out = Command::new(MOCK).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no listener"), "{err}");

    let out = Command::new(MOCK)
        .args(["--listen", "not-an-addr"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    let out = Command::new(MOCK)
        .args(["--listen", "127.0.0.1:0", "--names", "ok.example,bad name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad name"));

    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new("busy");
    let out = Command::new(MOCK)
        .args(["--listen-plain", &addr])
        .arg("--ca-dir")
        .arg(dir.0.join("ca"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("binding") && !err.contains("panicked"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// The official Python SDKs.

fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("EGRET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join(".venv")
        });
    let python = venv.join("bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args(["-c", "import openai, anthropic, google.genai, mcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if ok {
        return Some(python);
    }
    let why = format!(
        "no SDK venv at {} (python with openai, anthropic, google-genai, mcp); \
         create it with bpf-tests/clients/setup-venv.sh or point EGRET_VENV at one",
        venv.display()
    );
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{why}");
    }
    eprintln!("skipping SDK client test: {why}");
    None
}

/// How a client script reaches the mock.
enum Target<'a> {
    /// `--base-url https://127.0.0.1:PORT` against a mock on a free port.
    BaseUrl(&'a Mock),
    /// The SDK's default base URL (real hostnames, port 443) inside a
    /// private network + mount namespace where those names map to a mock
    /// listening on 127.0.0.1:443 (needs root, `unshare` and `ip`).
    DefaultHosts { dir: &'a Path },
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Runs one client script; returns its JSON lines.
fn run_client(python: &Path, target: &Target<'_>, script: &str, extra: &[&str]) -> Vec<Value> {
    let script_path = clients_dir().join(script);
    let mut cmd = match target {
        Target::BaseUrl(mock) => {
            let mut c = Command::new(python);
            c.arg(&script_path)
                .arg("--base-url")
                .arg(format!("https://127.0.0.1:{}", mock.port()))
                .args(extra)
                .env("SSL_CERT_FILE", &mock.ca_cert);
            c
        }
        Target::DefaultHosts { dir } => {
            let hosts = dir.join("hosts");
            std::fs::write(
                &hosts,
                "127.0.0.1 localhost api.anthropic.com api.openai.com \
                 generativelanguage.googleapis.com mcp.local\n::1 localhost\n",
            )
            .expect("hosts file");
            let ready = dir.join("ready.json");
            let _ = std::fs::remove_file(&ready);
            // The mock lives and dies with this one namespace.
            let script = r#"
                set -u
                ip link set lo up || exit 97
                "$MOCK" --listen 127.0.0.1:443 --ca-dir "$DIR/ca" --ready-file "$READY" >/dev/null &
                mock=$!
                i=0
                while [ ! -s "$READY" ]; do
                    i=$((i + 1)); [ $i -gt 200 ] && { kill $mock; exit 98; }
                    sleep 0.05
                done
                mount --bind "$HOSTS" /etc/hosts || { kill $mock; exit 99; }
                "$PYTHON" "$@"
                rc=$?
                kill $mock
                exit $rc
            "#;
            let mut c = Command::new("unshare");
            c.args(["--mount", "--net", "sh", "-c", script, "sh"])
                .arg(&script_path)
                .args(extra)
                .env("MOCK", MOCK)
                .env("DIR", dir)
                .env("READY", &ready)
                .env("HOSTS", &hosts)
                .env("PYTHON", python)
                .env("SSL_CERT_FILE", dir.join("ca/ca.crt"));
            c
        }
    };
    let out = cmd
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONWARNINGS", "ignore::DeprecationWarning")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{script}: bad line {l:?}: {e}"))
        })
        .collect()
}

fn by_call<'a>(lines: &'a [Value], call: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["call"] == call)
        .unwrap_or_else(|| panic!("no line for {call}: {lines:?}"))
}

const REPLY16: &str = "Hello from the egret mock provider: this reply is deterministic so tests can assert exact counts.";

#[test]
fn official_python_sdks() {
    let Some(python) = venv_python() else { return };
    let mock = Mock::start();
    check_sdks(&python, &Target::BaseUrl(&mock));
}

/// Same, with the SDKs' default base URLs (real hostnames on port 443),
/// resolved to the mock for these processes only.
#[test]
fn official_python_sdks_default_hostnames() {
    let Some(python) = venv_python() else { return };
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let have_tools = ["unshare", "ip"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    if !is_root || !have_tools {
        eprintln!("skipping default-hostname SDK test: needs root, unshare and ip");
        return;
    }
    let dir = TempDir::new("hosts");
    check_sdks(&python, &Target::DefaultHosts { dir: &dir.0 });
}

/// Runs all four client scripts against `target` and checks what the SDKs
/// parsed against the mock's token rule.
fn check_sdks(python: &Path, target: &Target<'_>) {
    let openai = run_client(python, target, "openai_client.py", &[]);
    assert!(openai.iter().all(|l| l["ok"] == true), "{openai:?}");
    let chat = by_call(&openai, "chat");
    assert_eq!(
        chat["usage"],
        json!({"input_tokens": 13, "output_tokens": 16})
    );
    assert_eq!(chat["text"], REPLY16);
    assert_eq!(chat["finish_reason"], "stop");
    assert_eq!(chat["model"], "gpt-4o-mini");
    let s = by_call(&openai, "chat_stream");
    assert_eq!(s["usage"], Value::Null, "no usage without include_usage");
    assert_eq!(s["finish_reason"], "length");
    assert_eq!(s["text"].as_str().unwrap().split_whitespace().count(), 8);
    let s = by_call(&openai, "chat_stream_usage");
    assert_eq!(s["usage"], json!({"input_tokens": 13, "output_tokens": 8}));
    let r = by_call(&openai, "responses");
    assert_eq!(r["usage"], json!({"input_tokens": 10, "output_tokens": 16}));
    assert_eq!(r["status"], "completed");
    assert_eq!(r["text"], REPLY16);
    let r = by_call(&openai, "responses_stream");
    assert_eq!(r["usage"], json!({"input_tokens": 10, "output_tokens": 5}));
    assert_eq!(r["status"], "incomplete");
    let e = by_call(&openai, "embeddings");
    assert_eq!(e["usage"], json!({"input_tokens": 3}));
    assert_eq!(
        (e["count"].as_u64(), e["dims"].as_u64()),
        (Some(2), Some(8))
    );

    let anthropic = run_client(python, target, "anthropic_client.py", &[]);
    let m = by_call(&anthropic, "messages");
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 8, "output_tokens": 16, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 0})
    );
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["text"], REPLY16);
    let s = by_call(&anthropic, "messages_stream");
    assert_eq!(
        s["usage"],
        json!({"input_tokens": 8, "output_tokens": 8, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})
    );
    assert_eq!(s["stop_reason"], "max_tokens");
    assert_eq!(s["model"], "claude-haiku-4-5");

    let google = run_client(python, target, "google_client.py", &[]);
    let g = by_call(&google, "generate_content");
    assert_eq!(
        g["usage"],
        json!({"input_tokens": 13, "output_tokens": 16, "total_tokens": 29,
               "prompt_by_modality": {"TEXT": 13}, "candidates_by_modality": {"TEXT": 16}})
    );
    assert_eq!(g["finish_reason"], "STOP");
    assert_eq!(g["text"], REPLY16);
    let g = by_call(&google, "generate_content_stream");
    assert_eq!(
        g["usage"],
        json!({"input_tokens": 8, "output_tokens": 10, "total_tokens": 18,
               "prompt_by_modality": {"TEXT": 8}, "candidates_by_modality": {"TEXT": 10}})
    );
    assert_eq!(g["finish_reason"], "MAX_TOKENS");
    assert_eq!(g["chunks"], 3);

    for path in ["/mcp", "/mcp?format=json"] {
        let mcp = run_client(python, target, "mcp_client.py", &["--path", path]);
        assert!(mcp.iter().all(|l| l["ok"] == true), "{mcp:?}");
        assert_eq!(by_call(&mcp, "initialize")["server"], "egret-mock-mcp");
        assert_eq!(by_call(&mcp, "list_tools")["tools"], json!(["add", "echo"]));
        assert_eq!(
            by_call(&mcp, "call_tool_echo")["text"],
            "hello from the mcp client"
        );
        assert_eq!(
            by_call(&mcp, "call_tool_add")["structured"],
            json!({"sum": 42})
        );
    }
}
