//! Exchange-level tests on fixtures written in each provider's documented
//! wire format (`agent/tests/fixtures/genai/`).

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::decode::tests::{brotli, gzip, raw_deflate, zlib, zstd};
use super::*;
use crate::record::AttrValue;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/genai/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

const SSE: &[(&str, &str)] = &[("content-type", "text/event-stream; charset=utf-8")];
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// One exchange to replay.
#[derive(Clone)]
struct Case {
    provider: Option<Provider>,
    method: Method,
    path: &'static str,
    req_headers: Vec<(&'static str, String)>,
    req_body: Vec<u8>,
    status: u16,
    resp_headers: Vec<(&'static str, String)>,
    resp_body: Vec<u8>,
    limits: Limits,
}

impl Case {
    fn new(host: &str, path: &'static str, req_body: Vec<u8>) -> Case {
        let len = req_body.len().to_string();
        Case {
            provider: Provider::detect(host, path),
            method: Method::POST,
            path,
            req_headers: vec![
                ("content-type", "application/json".to_owned()),
                ("content-length", len),
            ],
            req_body,
            status: 200,
            resp_headers: Vec::new(),
            resp_body: Vec::new(),
            limits: Limits::default(),
        }
    }

    fn respond(mut self, status: u16, hdrs: &[(&'static str, &str)], body: Vec<u8>) -> Case {
        self.status = status;
        self.resp_headers = hdrs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.resp_body = body;
        self
    }

    fn start(&self) -> Exchange {
        let mut ex = Exchange::new(self.provider, self.limits);
        let rh: Vec<(&str, &str)> = self
            .req_headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        ex.on_request(&self.method, self.path, &headers(&rh), &self.req_body);
        let rh: Vec<(&str, &str)> = self
            .resp_headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        ex.on_response_head(self.status, &headers(&rh));
        ex
    }

    /// Replays the response in the given chunks.
    fn run_chunks<'a>(&self, chunks: impl IntoIterator<Item = &'a [u8]>) -> Record {
        let mut ex = self.start();
        for c in chunks {
            ex.on_response_chunk(c);
        }
        let mut r = Record::default();
        ex.finish(&mut r);
        r
    }

    fn run(&self) -> Record {
        self.run_chunks([self.resp_body.as_slice()])
    }

    /// The record is the same whatever the chunking: split at every byte
    /// offset, and byte by byte.
    fn assert_chunking_invariant(&self) -> Record {
        let whole = self.run();
        let body = &self.resp_body;
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            assert_eq!(self.run_chunks([a, b]), whole, "split at {i}");
        }
        assert_eq!(self.run_chunks(body.chunks(1)), whole, "byte by byte");
        assert_eq!(self.run_chunks(body.chunks(7)), whole, "7-byte chunks");
        whole
    }
}

fn s(r: &Record, k: &str) -> Option<String> {
    r.get_str(k).map(str::to_owned)
}

fn reasons(r: &Record) -> Vec<String> {
    match r.get(sc::GEN_AI_RESPONSE_FINISH_REASONS) {
        Some(AttrValue::StrArray(v)) => v.clone(),
        other => panic!("finish reasons: {other:?}"),
    }
}

fn anthropic_stream_case() -> Case {
    Case::new(
        "api.anthropic.com",
        "/v1/messages",
        fixture("anthropic_request.json"),
    )
    .respond(200, SSE, fixture("anthropic_stream.sse"))
}

fn openai_usage_stream_case() -> Case {
    Case::new(
        "api.openai.com:443",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(200, SSE, fixture("openai_chat_stream_usage.sse"))
}

fn responses_stream_case() -> Case {
    Case::new(
        "api.openai.com",
        "/v1/responses",
        br#"{"model":"gpt-4.1","input":"Tell me a three sentence bedtime story about a unicorn.","stream":true}"#.to_vec(),
    )
    .respond(200, SSE, fixture("openai_responses_stream.sse"))
}

fn google_stream_case() -> Case {
    Case::new(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        fixture("google_request.json"),
    )
    .respond(
        200,
        &[("content-type", "text/event-stream")],
        fixture("google_stream.sse"),
    )
}

fn mcp_tools_call_case() -> Case {
    let mut c = Case::new(
        "mcp.internal.example",
        "/mcp",
        fixture("mcp_tools_call_request.json"),
    );
    c.req_headers.push((
        "mcp-session-id",
        "1868a90c-3b5a-4c2e-9d3c-2f4f1b0c9e11".to_owned(),
    ));
    c.req_headers
        .push(("mcp-protocol-version", "2025-06-18".to_owned()));
    c.respond(200, SSE, fixture("mcp_tools_call_response.sse"))
}

// ---------------------------------------------------------------- detection

#[test]
fn provider_detection_needs_host_and_endpoint() {
    use Provider::*;
    let cases = [
        ("api.anthropic.com", "/v1/messages", Some(Anthropic)),
        (
            "API.Anthropic.com.",
            "/v1/messages?beta=true",
            Some(Anthropic),
        ),
        ("api.anthropic.com", "/v1/messages/count_tokens", None),
        ("api.openai.com", "/v1/chat/completions", Some(OpenAi)),
        ("api.openai.com:443", "/v1/responses", Some(OpenAi)),
        ("api.openai.com", "/v1/embeddings", Some(OpenAi)),
        ("api.openai.com", "/v1/completions", Some(OpenAi)),
        ("api.openai.com", "/v1/files", None),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            Some(Google),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            Some(Google),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/text-embedding-004:embedContent",
            Some(Google),
        ),
        ("generativelanguage.googleapis.com", "/v1beta/models", None),
        ("api.anthropic.com.evil.example", "/v1/messages", None),
        ("example.com", "/v1/chat/completions", None),
    ];
    for (host, path, want) in cases {
        assert_eq!(Provider::detect(host, path), want, "{host}{path}");
    }
    for p in Provider::ALL {
        assert_eq!(Provider::from_name(p.name()), Some(p));
    }
    assert_eq!(Provider::from_name("Gemini"), Some(Google));
    assert_eq!(Provider::from_name("gcp.gemini"), Some(Google));
    assert_eq!(Provider::from_name("bedrock"), None);
    assert_eq!(Google.semconv_name(), Some("gcp.gemini"));
    assert_eq!(Mcp.semconv_name(), None);
    // Routes may mount an API under a prefix.
    assert_eq!(
        Api::classify(OpenAi, "/openai/v1/chat/completions"),
        Api::OpenAiChat
    );
}

#[test]
fn unknown_traffic_records_nothing() {
    let mut c = Case::new("example.com", "/upload", br#"{"a":1}"#.to_vec()).respond(
        200,
        JSON,
        br#"{"ok":true}"#.to_vec(),
    );
    c.provider = None;
    assert_eq!(c.run(), Record::default());
    // JSON-RPC is MCP only as JSON.
    let mut rpc = Case::new(
        "example.com",
        "/rpc",
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec(),
    )
    .respond(
        200,
        JSON,
        br#"{"jsonrpc":"2.0","id":1,"result":{}}"#.to_vec(),
    );
    rpc.provider = None;
    assert_eq!(
        rpc.run().get_str(sc::MCP_METHOD_NAME),
        Some("ping"),
        "application/json JSON-RPC is MCP"
    );
    rpc.req_headers[0].1 = "text/plain".into();
    assert_eq!(rpc.run(), Record::default());
    // A plain GET never becomes MCP.
    c.method = Method::GET;
    c.req_body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec();
    assert_eq!(c.run(), Record::default());
}

// ---------------------------------------------------------------- anthropic

#[test]
fn anthropic_stream() {
    let r = anthropic_stream_case().assert_chunking_invariant();
    assert_eq!(
        s(&r, sc::GEN_AI_PROVIDER_NAME).as_deref(),
        Some("anthropic")
    );
    assert_eq!(s(&r, sc::GEN_AI_SYSTEM).as_deref(), Some("anthropic"));
    assert_eq!(s(&r, sc::GEN_AI_OPERATION_NAME).as_deref(), Some("chat"));
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("claude-sonnet-4-5-20250929")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("msg_014p7gG3wDgGV9EUtLvnow3U")
    );
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
    assert_eq!(reasons(&r), vec!["end_turn"]);
    // input = 21 + 300 (cache read) + 1500 (cache creation)
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(1821));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(15));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        Some(300)
    );
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        Some(1500)
    );
    assert_eq!(r.get_bool(sc::BODY_USAGE_VISIBLE), Some(true));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    assert_eq!(r.get(sc::BODY_REQUEST_REWRITTEN), None);
}

#[test]
fn anthropic_message_delta_with_cumulative_input_usage_wins() {
    let body = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-opus-4-1\",\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"input_tokens\":6,\"cache_read_input_tokens\":40,\"output_tokens\":21}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let r = Case::new(
        "api.anthropic.com",
        "/v1/messages",
        br#"{"model":"claude-opus-4-1","stream":true}"#.to_vec(),
    )
    .respond(200, SSE, body.as_bytes().to_vec())
    .run();
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(46));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(21));
    assert_eq!(reasons(&r), vec!["tool_use"]);
}

#[test]
fn anthropic_json() {
    let mut c = Case::new(
        "api.anthropic.com",
        "/v1/messages",
        br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"primes?"}]}"#.to_vec(),
    )
    .respond(200, JSON, fixture("anthropic_message.json"));
    let r = c.assert_chunking_invariant();
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(false));
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("msg_01XFDUDYJgAACzvnptvVoYEL")
    );
    assert_eq!(reasons(&r), vec!["end_turn"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(12 + 2048));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(9));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        Some(2048)
    );
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        Some(0)
    );
    assert_eq!(r.get(sc::PARSE_ERROR), None);

    // Error body: error.type from the provider, no parse error.
    c = c.respond(529, JSON, fixture("anthropic_error.json"));
    let r = c.run();
    assert_eq!(s(&r, sc::ERROR_TYPE).as_deref(), Some("overloaded_error"));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    assert_eq!(r.get(sc::GEN_AI_USAGE_INPUT_TOKENS), None);
    // ...unless the proxy already recorded one.
    let mut ex = c.start();
    ex.on_response_chunk(&c.resp_body);
    let mut rec = Record::default();
    rec.set(sc::ERROR_TYPE, "529");
    ex.finish(&mut rec);
    assert_eq!(s(&rec, sc::ERROR_TYPE).as_deref(), Some("529"));
}

// ---------------------------------------------------------------- openai

#[test]
fn openai_chat_stream_with_usage() {
    let r = openai_usage_stream_case().assert_chunking_invariant();
    assert_eq!(s(&r, sc::GEN_AI_PROVIDER_NAME).as_deref(), Some("openai"));
    assert_eq!(s(&r, sc::GEN_AI_OPERATION_NAME).as_deref(), Some("chat"));
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("chatcmpl-7Hq3xYz")
    );
    assert_eq!(reasons(&r), vec!["stop"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(19));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(3));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS), Some(0));
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
    // Not rewritten: the client saw what it got.
    assert_eq!(r.get_bool(sc::BODY_USAGE_VISIBLE), Some(true));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn openai_chat_stream_without_usage() {
    let c = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(200, SSE, fixture("openai_chat_stream.sse"));
    let r = c.assert_chunking_invariant();
    assert_eq!(reasons(&r), vec!["stop"]);
    assert_eq!(r.get(sc::GEN_AI_USAGE_INPUT_TOKENS), None);
    assert_eq!(r.get(sc::BODY_USAGE_VISIBLE), None);
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn openai_chat_json_with_two_choices() {
    let r = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        br#"{"model":"gpt-4o-mini","n":2,"messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
    )
    .respond(200, JSON, fixture("openai_chat.json"))
    .assert_chunking_invariant();
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(false));
    assert_eq!(reasons(&r), vec!["stop", "length"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(1117));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(46));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        Some(1024)
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG")
    );
}

#[test]
fn openai_error_json() {
    let r = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(429, JSON, fixture("openai_error.json"))
    .run();
    assert_eq!(
        s(&r, sc::ERROR_TYPE).as_deref(),
        Some("rate_limit_exceeded")
    );
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("gpt-4o-mini")
    );
}

#[test]
fn openai_legacy_completions_stream() {
    let r = Case::new(
        "api.openai.com",
        "/v1/completions",
        br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Once","max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}"#.to_vec(),
    )
    .respond(200, SSE, fixture("openai_completions_stream.sse"))
    .assert_chunking_invariant();
    assert_eq!(
        s(&r, sc::GEN_AI_OPERATION_NAME).as_deref(),
        Some("text_completion")
    );
    assert_eq!(reasons(&r), vec!["length"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(4));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(2));
}

#[test]
fn openai_responses_stream() {
    let r = responses_stream_case().assert_chunking_invariant();
    assert_eq!(s(&r, sc::GEN_AI_OPERATION_NAME).as_deref(), Some("chat"));
    assert_eq!(s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(), Some("gpt-4.1"));
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("gpt-4.1-2025-04-14")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b")
    );
    assert_eq!(reasons(&r), vec!["completed"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(36));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(87));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        Some(12)
    );
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn openai_responses_json_and_incomplete() {
    let r = Case::new(
        "api.openai.com",
        "/v1/responses",
        br#"{"model":"gpt-4.1","input":"hi"}"#.to_vec(),
    )
    .respond(200, JSON, fixture("openai_responses.json"))
    .run();
    assert_eq!(reasons(&r), vec!["completed"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(87));
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(false));

    let incomplete = br#"{"id":"resp_1","object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"o4-mini","usage":{"input_tokens":10,"output_tokens":64,"output_tokens_details":{"reasoning_tokens":64}}}"#;
    let r = Case::new(
        "api.openai.com",
        "/v1/responses",
        br#"{"model":"o4-mini","input":"hi"}"#.to_vec(),
    )
    .respond(200, JSON, incomplete.to_vec())
    .run();
    assert_eq!(reasons(&r), vec!["max_output_tokens"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(64));
}

#[test]
fn openai_embeddings() {
    let r = Case::new(
        "api.openai.com",
        "/v1/embeddings",
        br#"{"input":"The food was delicious","model":"text-embedding-3-small","encoding_format":"float"}"#.to_vec(),
    )
    .respond(200, JSON, fixture("openai_embeddings.json"))
    .run();
    assert_eq!(
        s(&r, sc::GEN_AI_OPERATION_NAME).as_deref(),
        Some("embeddings")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("text-embedding-3-small")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("text-embedding-3-small")
    );
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(8));
    assert_eq!(r.get(sc::GEN_AI_USAGE_OUTPUT_TOKENS), None);
    assert_eq!(r.get(sc::GEN_AI_REQUEST_STREAM), None);
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

// ---------------------------------------------------------------- google

#[test]
fn google_stream_crlf() {
    let r = google_stream_case().assert_chunking_invariant();
    assert_eq!(
        s(&r, sc::GEN_AI_PROVIDER_NAME).as_deref(),
        Some("gcp.gemini")
    );
    assert_eq!(s(&r, sc::GEN_AI_SYSTEM).as_deref(), Some("gcp.gemini"));
    assert_eq!(
        s(&r, sc::GEN_AI_OPERATION_NAME).as_deref(),
        Some("generate_content")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("gemini-2.5-flash")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("gemini-2.5-flash")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("mKZ1aL2pJd7Yz7IPx8uEiAU")
    );
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
    assert_eq!(reasons(&r), vec!["STOP"]);
    // The last cumulative usageMetadata: 6 candidates + 20 thoughts.
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(10));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(26));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS), Some(4));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn google_stream_as_json_array() {
    let mut c = google_stream_case();
    c.path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let r = c
        .respond(200, JSON, fixture("google_stream_array.json"))
        .assert_chunking_invariant();
    assert_eq!(reasons(&r), vec!["STOP"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(26));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn google_generate_json_and_errors() {
    let c = Case::new(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.0-flash:generateContent",
        fixture("google_request.json"),
    );
    let r = c
        .clone()
        .respond(200, JSON, fixture("google_generate.json"))
        .run();
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(false));
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("gemini-2.0-flash")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("gemini-2.0-flash-001")
    );
    assert_eq!(reasons(&r), vec!["STOP", "MAX_TOKENS"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(7));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(9));
    assert_eq!(r.get(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS), None);

    let r = c.respond(429, JSON, fixture("google_error.json")).run();
    assert_eq!(s(&r, sc::ERROR_TYPE).as_deref(), Some("RESOURCE_EXHAUSTED"));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn google_embed() {
    let r = Case::new(
        "generativelanguage.googleapis.com",
        "/v1beta/models/text-embedding-004:embedContent",
        br#"{"model":"models/text-embedding-004","content":{"parts":[{"text":"hello"}]}}"#.to_vec(),
    )
    .respond(200, JSON, fixture("google_embed.json"))
    .run();
    assert_eq!(
        s(&r, sc::GEN_AI_OPERATION_NAME).as_deref(),
        Some("embeddings")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("text-embedding-004")
    );
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

// ---------------------------------------------------------------- mcp

#[test]
fn mcp_tools_call_over_sse_found_from_the_body() {
    let c = mcp_tools_call_case();
    assert_eq!(c.provider, None, "no route: detected from the body");
    let r = c.assert_chunking_invariant();
    assert_eq!(s(&r, sc::MCP_METHOD_NAME).as_deref(), Some("tools/call"));
    assert_eq!(
        s(&r, sc::GEN_AI_OPERATION_NAME).as_deref(),
        Some("execute_tool")
    );
    assert_eq!(s(&r, sc::GEN_AI_TOOL_NAME).as_deref(), Some("get_weather"));
    assert_eq!(s(&r, sc::JSONRPC_REQUEST_ID).as_deref(), Some("42"));
    assert_eq!(
        s(&r, sc::MCP_SESSION_ID).as_deref(),
        Some("1868a90c-3b5a-4c2e-9d3c-2f4f1b0c9e11")
    );
    assert_eq!(
        s(&r, sc::MCP_PROTOCOL_VERSION).as_deref(),
        Some("2025-06-18")
    );
    assert_eq!(r.get(sc::GEN_AI_PROVIDER_NAME), None);
    assert_eq!(r.get(sc::ERROR_TYPE), None);
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn mcp_initialize_json_with_session_from_response() {
    let mut c = Case::new(
        "tools.example",
        "/mcp",
        fixture("mcp_initialize_request.json"),
    )
    .respond(
        200,
        &[
            ("content-type", "application/json"),
            ("mcp-session-id", "sess-7f3a"),
        ],
        fixture("mcp_initialize_response.json"),
    );
    c.provider = Provider::from_name("mcp");
    let r = c.assert_chunking_invariant();
    assert_eq!(s(&r, sc::MCP_METHOD_NAME).as_deref(), Some("initialize"));
    assert_eq!(s(&r, sc::JSONRPC_REQUEST_ID).as_deref(), Some("init-1"));
    assert_eq!(s(&r, sc::MCP_SESSION_ID).as_deref(), Some("sess-7f3a"));
    assert_eq!(
        s(&r, sc::MCP_PROTOCOL_VERSION).as_deref(),
        Some("2025-06-18")
    );
    assert_eq!(r.get(sc::GEN_AI_OPERATION_NAME), None);
    assert_eq!(
        r.get(sc::GEN_AI_TOOL_NAME),
        None,
        "clientInfo.name is no tool"
    );
}

#[test]
fn mcp_errors_and_notifications() {
    let base = Case::new(
        "tools.example",
        "/mcp",
        fixture("mcp_tools_call_request.json"),
    );
    let r = base
        .clone()
        .respond(200, JSON, fixture("mcp_tool_error_response.json"))
        .run();
    assert_eq!(s(&r, sc::ERROR_TYPE).as_deref(), Some("tool_error"));
    assert_eq!(r.get(sc::RPC_RESPONSE_STATUS_CODE), None);

    let r = base
        .clone()
        .respond(200, JSON, fixture("mcp_rpc_error_response.json"))
        .run();
    assert_eq!(s(&r, sc::ERROR_TYPE).as_deref(), Some("-32602"));
    assert_eq!(
        s(&r, sc::RPC_RESPONSE_STATUS_CODE).as_deref(),
        Some("-32602")
    );

    // A notification: 202 without body, nothing is due.
    let r = Case::new(
        "tools.example",
        "/mcp",
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
    )
    .respond(202, &[], Vec::new())
    .run();
    assert_eq!(
        s(&r, sc::MCP_METHOD_NAME).as_deref(),
        Some("notifications/initialized")
    );
    assert_eq!(r.get(sc::JSONRPC_REQUEST_ID), None);
    assert_eq!(r.get(sc::PARSE_ERROR), None);

    // The client answering a server request (no method): 202, nothing due.
    let mut c = Case::new(
        "tools.example",
        "/mcp",
        br#"{"jsonrpc":"2.0","id":"srv-9","result":{"roots":[]}}"#.to_vec(),
    )
    .respond(202, &[], Vec::new());
    c.provider = Some(Provider::Mcp);
    let r = c.run();
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    assert_eq!(r.get(sc::MCP_METHOD_NAME), None);

    // A request whose response stream ends before the response: truncated.
    let progress_only = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
    let r = base.respond(200, SSE, progress_only.to_vec()).run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("truncated"));
    assert_eq!(s(&r, sc::GEN_AI_TOOL_NAME).as_deref(), Some("get_weather"));
}

#[test]
fn mcp_resources_and_prompts() {
    let r = Case::new(
        "tools.example",
        "/mcp",
        br#"{"jsonrpc":"2.0","id":"r1","method":"resources/read","params":{"uri":"file:///srv/notes.md"}}"#.to_vec(),
    )
    .respond(200, JSON, br#"{"jsonrpc":"2.0","id":"r1","result":{"contents":[]}}"#.to_vec())
    .run();
    assert_eq!(
        s(&r, sc::MCP_RESOURCE_URI).as_deref(),
        Some("file:///srv/notes.md")
    );
    let r = Case::new(
        "tools.example",
        "/mcp",
        br#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"code_review","arguments":{}}}"#.to_vec(),
    )
    .respond(200, JSON, br#"{"jsonrpc":"2.0","id":3,"result":{"messages":[]}}"#.to_vec())
    .run();
    assert_eq!(
        s(&r, sc::GEN_AI_PROMPT_NAME).as_deref(),
        Some("code_review")
    );
    assert_eq!(r.get(sc::GEN_AI_TOOL_NAME), None);
}

// ---------------------------------------------------------------- errors

#[test]
fn malformed_json_body_keeps_request_attrs() {
    let r = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(
        200,
        JSON,
        b"{\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o\",,}".to_vec(),
    )
    .run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("invalid_json"));
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(s(&r, sc::GEN_AI_PROVIDER_NAME).as_deref(), Some("openai"));
}

#[test]
fn truncated_json_body() {
    let full = fixture("anthropic_message.json");
    let r = Case::new(
        "api.anthropic.com",
        "/v1/messages",
        br#"{"model":"claude-sonnet-4-5"}"#.to_vec(),
    )
    .respond(200, JSON, full[..full.len() / 2].to_vec())
    .run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("truncated"));
    // An empty 200 is truncated too.
    let r = Case::new(
        "api.anthropic.com",
        "/v1/messages",
        br#"{"model":"claude-sonnet-4-5"}"#.to_vec(),
    )
    .respond(200, JSON, Vec::new())
    .run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("truncated"));
}

/// Cutting any stream anywhere before its end marker gives a record with
/// the error flag and whatever was read so far; never a panic.
#[test]
fn every_truncation_of_every_stream_is_flagged() {
    for case in [
        anthropic_stream_case(),
        openai_usage_stream_case(),
        responses_stream_case(),
        google_stream_case(),
        mcp_tools_call_case(),
    ] {
        let body = case.resp_body.clone();
        // Where the end marker's event starts: any cut before its end is truncation.
        for cut in 0..body.len() {
            let r = case.run_chunks([&body[..cut]]);
            let complete_events = r.get(sc::PARSE_ERROR).is_none();
            if complete_events {
                // Only acceptable when the cut falls after the final event's
                // data (just its trailing blank line is missing).
                let tail = &body[cut..];
                assert!(
                    tail.iter().all(|b| *b == b'\n' || *b == b'\r'),
                    "{} cut at {cut}: no error flag",
                    case.path
                );
            } else {
                assert_eq!(
                    s(&r, sc::PARSE_ERROR).as_deref(),
                    Some("truncated"),
                    "{} cut {cut}",
                    case.path
                );
            }
        }
    }
}

#[test]
fn truncated_stream_keeps_what_was_read() {
    let c = anthropic_stream_case();
    let body = String::from_utf8(c.resp_body.clone()).unwrap();
    let cut = body.find("event: message_delta").unwrap();
    let r = c.run_chunks([&c.resp_body[..cut]]);
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("truncated"));
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("msg_014p7gG3wDgGV9EUtLvnow3U")
    );
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(1821));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(1));
}

#[test]
fn malformed_sse_event_is_flagged_and_the_rest_parsed() {
    let body = concat!(
        "data: {\"id\":\"chatcmpl-2\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-2\",\"choices\":[{\"index\":0,\"delta\":{\"content\n\n",
        "data: {\"id\":\"chatcmpl-2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"id\":\"chatcmpl-2\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );
    let r = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(200, SSE, body.as_bytes().to_vec())
    .run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("truncated"));
    assert_eq!(reasons(&r), vec!["length"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(7));

    let garbage = b"data: not json at all\n\ndata: [DONE]\n\n";
    let r = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(200, SSE, garbage.to_vec())
    .run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("invalid_json"));
}

#[test]
fn oversized_event_and_body_are_bounded() {
    let mut c = responses_stream_case();
    c.limits.max_event_bytes = 800; // response.completed is larger
    let r = c.run();
    assert_eq!(
        s(&r, sc::PARSE_ERROR).as_deref(),
        Some("sse_event_too_large")
    );
    // What came before is still there.
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("gpt-4.1-2025-04-14")
    );

    let mut c = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(200, JSON, fixture("openai_chat.json"));
    c.limits.max_json_bytes = 100;
    let r = c.run_chunks(c.resp_body.chunks(10));
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("body_too_large"));
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("gpt-4o-mini")
    );
}

#[test]
fn garbage_never_panics() {
    // Pseudo-random bytes through every parser, as JSON and as SSE.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut noise = Vec::with_capacity(4096);
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(match x % 8 {
            0 => b'\n',
            1 => b'{',
            2 => b'"',
            3 => b':',
            _ => (x >> 8) as u8,
        });
    }
    let mut prefixed = b"data: ".to_vec();
    prefixed.extend_from_slice(&noise);
    for case in [
        anthropic_stream_case(),
        openai_usage_stream_case(),
        responses_stream_case(),
        google_stream_case(),
        mcp_tools_call_case(),
    ] {
        for (hdrs, body) in [
            (SSE, &noise),
            (JSON, &noise),
            (SSE, &prefixed),
            (&[][..], &prefixed),
        ] {
            let c = case.clone().respond(200, hdrs, body.clone());
            let r = c.run_chunks(body.chunks(13));
            assert!(r.get(sc::PARSE_ERROR).is_some(), "{}", c.path);
            let mut gz = c.clone();
            gz.resp_headers.push(("content-encoding", "gzip".into()));
            gz.run();
        }
    }
    // Garbage requests too.
    let mut c = anthropic_stream_case();
    c.req_body = noise.clone();
    c.run();
}

// ---------------------------------------------------------------- encodings

#[test]
fn encoded_responses_are_decoded() {
    let base = openai_usage_stream_case();
    let want = base.run();
    for (name, body) in [
        ("gzip", gzip(&base.resp_body)),
        ("deflate", zlib(&base.resp_body)),
        ("deflate", raw_deflate(&base.resp_body)),
        ("br", brotli(&base.resp_body)),
        ("zstd", zstd(&base.resp_body)),
    ] {
        let mut c = base.clone();
        c.resp_headers.push(("content-encoding", name.into()));
        c.resp_body = body;
        assert_eq!(c.run(), want, "{name}");
        assert_eq!(
            c.run_chunks(c.resp_body.chunks(1)),
            want,
            "{name} byte by byte"
        );
    }
    // Gzip-encoded JSON, split at every byte.
    let mut c = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(200, JSON, fixture("openai_chat.json"));
    let plain = c.run();
    c.resp_headers.push(("content-encoding", "gzip".into()));
    c.resp_body = gzip(&c.resp_body);
    assert_eq!(c.assert_chunking_invariant(), plain);
}

#[test]
fn corrupt_truncated_and_unsupported_encodings() {
    let base = google_stream_case();
    let mut c = base.clone();
    c.resp_headers.push(("content-encoding", "gzip".into()));
    let gz = gzip(&base.resp_body);
    c.resp_body = gz[..gz.len() - 10].to_vec();
    let r = c.run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("decode_failed"));
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("mKZ1aL2pJd7Yz7IPx8uEiAU")
    );

    c.resp_body = b"this is not gzip at all".to_vec();
    assert_eq!(
        s(&c.run(), sc::PARSE_ERROR).as_deref(),
        Some("decode_failed")
    );

    let mut c = base.clone();
    c.resp_headers.push(("content-encoding", "compress".into()));
    let r = c.run();
    assert_eq!(
        s(&r, sc::PARSE_ERROR).as_deref(),
        Some("unsupported_content_encoding")
    );
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("gemini-2.5-flash")
    );
}

#[test]
fn compression_bomb_is_bounded() {
    // 16 MiB of zeros compresses to ~16 KiB (gzip) / a few bytes (br).
    let zeros = vec![0u8; 16 << 20];
    for (name, bomb) in [("gzip", gzip(&zeros)), ("br", brotli(&zeros))] {
        assert!(bomb.len() < 200_000, "{name}: {}", bomb.len());
        let mut c = Case::new(
            "api.openai.com",
            "/v1/chat/completions",
            fixture("openai_chat_request.json"),
        )
        .respond(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", name),
            ],
            bomb,
        );
        c.limits.max_decoded_bytes = 1 << 20;
        c.limits.max_json_bytes = 8 << 20;
        let r = c.run_chunks(c.resp_body.chunks(16 * 1024));
        assert_eq!(
            s(&r, sc::PARSE_ERROR).as_deref(),
            Some("decoded_too_large"),
            "{name}"
        );
        // The JSON cap bounds memory as well, whatever the decoded cap.
        c.limits.max_decoded_bytes = u64::MAX;
        c.limits.max_json_bytes = 1 << 20;
        let r = c.run_chunks(c.resp_body.chunks(16 * 1024));
        assert_eq!(
            s(&r, sc::PARSE_ERROR).as_deref(),
            Some("body_too_large"),
            "{name}"
        );
        // Both caps passed (the defaults' order: JSON cap, then decoded
        // cap): the first problem is reported, not a decoding failure.
        c.limits.max_decoded_bytes = 4 << 20;
        c.limits.max_json_bytes = 1 << 20;
        let r = c.run_chunks(c.resp_body.chunks(16 * 1024));
        assert_eq!(
            s(&r, sc::PARSE_ERROR).as_deref(),
            Some("body_too_large"),
            "{name}"
        );
    }
    // A JSON-looking bomb: `[` followed by whitespace.
    let mut doc = b"[".to_vec();
    doc.extend(std::iter::repeat_n(b' ', 8 << 20));
    let mut c = Case::new(
        "api.openai.com",
        "/v1/chat/completions",
        fixture("openai_chat_request.json"),
    )
    .respond(
        200,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gzip(&doc),
    );
    c.limits.max_json_bytes = 1 << 20;
    let r = c.run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("body_too_large"));
}

// ---------------------------------------------------------------- rewrite

#[test]
fn include_usage_rewrite_and_strip_end_to_end() {
    let case = openai_usage_stream_case();
    let req = fixture("openai_chat_request.json");
    let mut ex = Exchange::new(case.provider, Limits::default());
    let len = req.len().to_string();
    ex.on_request(
        &Method::POST,
        case.path,
        &headers(&[
            ("content-type", "application/json"),
            ("content-length", &len),
        ]),
        &req,
    );
    assert!(ex.wants_usage_rewrite());
    let sent = ex.rewrite_request_body(&req).expect("rewritten");
    let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["model"], "gpt-4o-mini");

    ex.on_response_head(200, &headers(SSE));
    let mut filter = ex.usage_filter().expect("filter");
    let mut client = Vec::new();
    for c in case.resp_body.chunks(11) {
        ex.on_response_chunk(c);
        filter.push(c, &mut client);
    }
    filter.finish(&mut client);
    assert_eq!(filter.stripped(), 1);
    let client = String::from_utf8(client).unwrap();
    assert!(!client.contains("\"choices\":[]"), "{client}");
    assert!(client.ends_with("data: [DONE]\n\n"));
    let full = String::from_utf8(fixture("openai_chat_stream_usage.sse")).unwrap();
    let usage_event = full
        .split_inclusive("\n\n")
        .find(|e| e.contains("\"choices\":[]"))
        .unwrap();
    assert_eq!(client, full.replace(usage_event, ""));

    let mut r = Record::default();
    ex.finish(&mut r);
    assert_eq!(r.get_bool(sc::BODY_REQUEST_REWRITTEN), Some(true));
    assert_eq!(r.get_bool(sc::BODY_USAGE_VISIBLE), Some(false));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(19));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(3));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn rewrite_only_where_it_applies() {
    // Client asked for usage itself: nothing to do, usage visible.
    let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let mut ex = Exchange::new(Some(Provider::OpenAi), Limits::default());
    ex.on_request(&Method::POST, "/v1/chat/completions", &headers(JSON), body);
    assert!(!ex.wants_usage_rewrite());
    assert_eq!(ex.rewrite_request_body(body), None);

    // Not streaming.
    let body = br#"{"model":"gpt-4o","messages":[]}"#;
    let mut ex = Exchange::new(Some(Provider::OpenAi), Limits::default());
    ex.on_request(&Method::POST, "/v1/chat/completions", &headers(JSON), body);
    assert!(!ex.wants_usage_rewrite());
    assert_eq!(ex.rewrite_request_body(body), None);

    // Other APIs are never rewritten.
    let body = br#"{"model":"claude","stream":true}"#;
    let mut ex = Exchange::new(Some(Provider::Anthropic), Limits::default());
    ex.on_request(&Method::POST, "/v1/messages", &headers(JSON), body);
    assert!(!ex.wants_usage_rewrite());
    assert_eq!(ex.rewrite_request_body(body), None);

    // Rewritten, but the response is compressed: no filter, usage visible.
    let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let mut ex = Exchange::new(Some(Provider::OpenAi), Limits::default());
    ex.on_request(&Method::POST, "/v1/chat/completions", &headers(JSON), body);
    assert!(ex.rewrite_request_body(body).is_some());
    let stream = fixture("openai_chat_stream_usage.sse");
    ex.on_response_head(
        200,
        &headers(&[
            ("content-type", "text/event-stream"),
            ("content-encoding", "gzip"),
        ]),
    );
    assert!(ex.usage_filter().is_none());
    ex.on_response_chunk(&gzip(&stream));
    let mut r = Record::default();
    ex.finish(&mut r);
    assert_eq!(r.get_bool(sc::BODY_REQUEST_REWRITTEN), Some(true));
    assert_eq!(r.get_bool(sc::BODY_USAGE_VISIBLE), Some(true));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(3));
}

// ---------------------------------------------------------------- requests

#[test]
fn request_prefix_cut_before_the_model() {
    // The OpenAI SDK sends `messages` first: a short capture misses `model`.
    let mut body = br#"{"messages":[{"role":"user","content":""#.to_vec();
    body.extend(std::iter::repeat_n(b'x', 1000));
    body.extend_from_slice(br#""}],"model":"gpt-4o","stream":true}"#);
    let prefix = &body[..200];
    let len = body.len().to_string();
    let mut ex = Exchange::new(Some(Provider::OpenAi), Limits::default());
    ex.on_request(
        &Method::POST,
        "/v1/chat/completions",
        &headers(&[
            ("content-type", "application/json"),
            ("content-length", &len),
        ]),
        prefix,
    );
    // Unknown stream flag: the proxy may still try the rewrite on the full body.
    assert!(ex.wants_usage_rewrite());
    assert!(ex.rewrite_request_body(&body).is_some());
    let mut r = Record::default();
    ex.finish(&mut r);
    assert_eq!(r.get(sc::GEN_AI_REQUEST_MODEL), None);
    assert_eq!(
        r.get(sc::PARSE_ERROR),
        None,
        "a short capture is not an error"
    );

    // The same cut with Content-Length equal to the prefix: the client sent broken JSON.
    let mut ex = Exchange::new(Some(Provider::OpenAi), Limits::default());
    let len = prefix.len().to_string();
    ex.on_request(
        &Method::POST,
        "/v1/chat/completions",
        &headers(&[
            ("content-type", "application/json"),
            ("content-length", &len),
        ]),
        prefix,
    );
    let mut r = Record::default();
    ex.finish(&mut r);
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("truncated"));

    // A gzip-compressed request body is read too.
    let plain = fixture("anthropic_request.json");
    let mut ex = Exchange::new(Some(Provider::Anthropic), Limits::default());
    ex.on_request(
        &Method::POST,
        "/v1/messages",
        &headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]),
        &gzip(&plain),
    );
    let mut r = Record::default();
    ex.finish(&mut r);
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
}

#[test]
fn finish_is_idempotent_and_works_without_a_response() {
    let mut ex = Exchange::new(Some(Provider::Anthropic), Limits::default());
    ex.on_request(
        &Method::POST,
        "/v1/messages",
        &headers(JSON),
        br#"{"model":"claude-haiku-4-5","stream":true}"#,
    );
    let mut r = Record::default();
    ex.finish(&mut r);
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("claude-haiku-4-5")
    );
    assert_eq!(
        r.get(sc::PARSE_ERROR),
        None,
        "no response: the proxy records the error"
    );
    let mut again = Record::default();
    ex.finish(&mut again);
    assert_eq!(again, Record::default());
}

#[test]
fn unexpected_content_type_on_success() {
    let r = Case::new(
        "api.anthropic.com",
        "/v1/messages",
        br#"{"model":"m"}"#.to_vec(),
    )
    .respond(
        200,
        &[("content-type", "text/html")],
        b"<html>captive portal</html>".to_vec(),
    )
    .run();
    assert_eq!(
        s(&r, sc::PARSE_ERROR).as_deref(),
        Some("unsupported_content_type")
    );
    // Missing content type: sniffed.
    let r = Case::new(
        "api.anthropic.com",
        "/v1/messages",
        br#"{"model":"m"}"#.to_vec(),
    )
    .respond(200, &[], fixture("anthropic_message.json"))
    .run();
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(9));
}

#[test]
fn oversized_json_bodies_still_give_their_usage() {
    // A large embeddings batch: usage comes last, after megabytes of floats.
    let mut body = String::from(r#"{"object":"list","data":["#);
    for i in 0..2000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"object":"embedding","index":{i},"embedding":[0.0023064255,-0.009327292,0.015797347,-0.0077780345]}}"#
        ));
    }
    body.push_str(
        r#"],"model":"text-embedding-3-large","usage":{"prompt_tokens":4096,"total_tokens":4096}}"#,
    );
    let mut c = Case::new(
        "api.openai.com",
        "/v1/embeddings",
        br#"{"model":"text-embedding-3-large","input":["a","b"]}"#.to_vec(),
    )
    .respond(200, JSON, body.into_bytes());
    c.limits.max_json_bytes = 16 * 1024;
    for chunk in [1000, 100_000, usize::MAX] {
        let r = c.run_chunks(c.resp_body.chunks(chunk.min(c.resp_body.len())));
        assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("body_too_large"));
        assert_eq!(
            r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS),
            Some(4096),
            "chunk {chunk}"
        );
        assert_eq!(
            s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
            Some("text-embedding-3-large")
        );
    }

    // Anthropic: id and model from the head, usage and stop reason from the tail.
    let long_text = "word \\\"usage\\\": {} ".repeat(5000);
    let body = format!(
        r#"{{"id":"msg_big","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{{"type":"text","text":"{long_text}"}}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":8192}}}}"#
    );
    let mut c = Case::new(
        "api.anthropic.com",
        "/v1/messages",
        br#"{"model":"claude-sonnet-4-5"}"#.to_vec(),
    )
    .respond(200, JSON, body.into_bytes());
    c.limits.max_json_bytes = 8 * 1024;
    let r = c.run_chunks(c.resp_body.chunks(4096));
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("body_too_large"));
    assert_eq!(s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(), Some("msg_big"));
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_MODEL).as_deref(),
        Some("claude-sonnet-4-5-20250929")
    );
    assert_eq!(reasons(&r), vec!["max_tokens"]);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(15));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(8192));

    // Gemini: usageMetadata, modelVersion and responseId trail the candidates.
    let mut c = Case::new(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.0-flash:generateContent",
        fixture("google_request.json"),
    )
    .respond(200, JSON, fixture("google_generate.json"));
    c.limits.max_json_bytes = 200;
    let r = c.run();
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("body_too_large"));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(7));
    assert_eq!(
        s(&r, sc::GEN_AI_RESPONSE_ID).as_deref(),
        Some("Xb9zaPq3MvK7nvgPwqnI8AQ")
    );
}

#[test]
fn taps_can_move_between_tasks() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Exchange>();
    assert_send::<UsageChunkFilter>();
    assert_send::<SseParser>();
}
