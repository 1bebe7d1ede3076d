//! Exchange-level tests on fixtures written in each provider's documented
//! wire format (`agent/tests/fixtures/genai/`).
//!
//! Most tests are tables: a [`Row`] names one exchange (a [`Case`]: the
//! request, the response and the limits), how the response body arrives
//! ([`Feed`]) and the attributes the record must then hold ([`Want`]). Rows
//! are named after what they check (`test/step`); a table test runs every
//! row and fails listing each row that did not hold, by name. What is not an
//! attribute check (detection, chunking and truncation sweeps, garbage,
//! encodings compared with the plain body, the usage rewrite) stays a test of
//! its own.

use std::panic::{self, AssertUnwindSafe};

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
    provider: Option<Target>,
    method: Method,
    path: &'static str,
    req_headers: Vec<(&'static str, String)>,
    req_body: Vec<u8>,
    status: u16,
    resp_headers: Vec<(&'static str, String)>,
    resp_body: Vec<u8>,
    limits: Limits,
    /// Attributes the proxy recorded before the exchange finishes.
    recorded: Vec<(&'static str, &'static str)>,
}

impl Case {
    fn new(host: &str, path: &'static str, req_body: impl Into<Vec<u8>>) -> Case {
        let req_body = req_body.into();
        let len = req_body.len().to_string();
        Case {
            provider: Target::detect(host, path),
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
            recorded: Vec::new(),
        }
    }

    fn respond(
        mut self,
        status: u16,
        hdrs: &[(&'static str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Case {
        self.status = status;
        self.resp_headers = hdrs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.resp_body = body.into();
        self
    }

    /// The case changed by `f` (a limit, a header, the provider...).
    fn with(mut self, f: impl FnOnce(&mut Case)) -> Case {
        f(&mut self);
        self
    }

    fn start(&self) -> Exchange {
        let mut ex = Exchange::new(self.provider.clone(), self.limits);
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
        for (k, v) in &self.recorded {
            r.set(*k, *v);
        }
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

    /// Replays the case as `feed` says; lists each attribute that is not as
    /// `expect` says.
    fn mismatches(&self, feed: Feed, expect: &[(&str, Want)]) -> Vec<String> {
        let r = match feed {
            Feed::Whole => self.run(),
            Feed::AnySplit => self.assert_chunking_invariant(),
            Feed::Chunks(n) => self.run_chunks(self.resp_body.chunks(n)),
        };
        expect
            .iter()
            .filter_map(|&(key, want)| want.mismatch(&r, key))
            .collect()
    }
}

/// How a row's response body reaches the exchange.
#[derive(Clone, Copy, Debug)]
enum Feed {
    /// In one chunk.
    Whole,
    /// In one chunk, and the record must be the same split at every byte
    /// offset, byte by byte and in 7-byte chunks
    /// ([`Case::assert_chunking_invariant`]).
    AnySplit,
    /// In chunks of this many bytes.
    Chunks(usize),
}

/// What a row expects of one attribute.
#[derive(Clone, Copy, Debug)]
enum Want {
    Str(&'static str),
    Int(i64),
    Bool(bool),
    /// A string array, in order (`gen_ai.response.finish_reasons`).
    Strs(&'static [&'static str]),
    /// Not set at all.
    Absent,
}

impl Want {
    fn mismatch(self, r: &Record, key: &str) -> Option<String> {
        let holds = match self {
            Want::Str(v) => r.get_str(key) == Some(v),
            Want::Int(v) => r.get_i64(key) == Some(v),
            Want::Bool(v) => r.get_bool(key) == Some(v),
            Want::Strs(v) => {
                matches!(r.get(key), Some(AttrValue::StrArray(a)) if a.as_slice() == v)
            }
            Want::Absent => r.get(key).is_none(),
        };
        (!holds).then(|| format!("{key}: want {self:?}, got {:?}", r.get(key)))
    }
}

use Feed::{AnySplit, Chunks, Whole};
use Want::{Absent, Bool, Int, Str, Strs};

/// One table row: an exchange, how its response arrives, what the record
/// then holds.
struct Row {
    name: &'static str,
    case: Case,
    feed: Feed,
    expect: &'static [(&'static str, Want)],
}

/// Runs every row; fails listing each row that did not hold, by name.
fn check(rows: Vec<Row>) {
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        assert!(
            rows[..i].iter().all(|r| r.name != row.name),
            "two rows named {}",
            row.name
        );
        match panic::catch_unwind(AssertUnwindSafe(|| {
            row.case.mismatches(row.feed, row.expect)
        })) {
            Ok(m) => failures.extend(m.into_iter().map(|m| format!("{}: {m}", row.name))),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("?");
                failures.push(format!("{}: panicked: {msg}", row.name));
            }
        }
    }
    assert!(failures.is_empty(), "failed rows:\n{}", failures.join("\n"));
}

fn s(r: &Record, k: &str) -> Option<String> {
    r.get_str(k).map(str::to_owned)
}

/// An Anthropic Messages exchange.
fn anthropic(req: impl Into<Vec<u8>>) -> Case {
    Case::new("api.anthropic.com", "/v1/messages", req)
}

/// An OpenAI exchange on `path`.
fn openai(path: &'static str, req: impl Into<Vec<u8>>) -> Case {
    Case::new("api.openai.com", path, req)
}

/// An OpenAI Chat Completions exchange.
fn chat(req: impl Into<Vec<u8>>) -> Case {
    openai("/v1/chat/completions", req)
}

/// A Gemini exchange on `path`.
fn gemini(path: &'static str, req: impl Into<Vec<u8>>) -> Case {
    Case::new("generativelanguage.googleapis.com", path, req)
}

/// An MCP exchange with no route: found from the body.
fn mcp(req: impl Into<Vec<u8>>) -> Case {
    Case::new("tools.example", "/mcp", req)
}

fn anthropic_stream_case() -> Case {
    anthropic(fixture("anthropic_request.json")).respond(200, SSE, fixture("anthropic_stream.sse"))
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
    openai(
        "/v1/responses",
        br#"{"model":"gpt-4.1","input":"Tell me a three sentence bedtime story about a unicorn.","stream":true}"#,
    )
    .respond(200, SSE, fixture("openai_responses_stream.sse"))
}

fn google_stream_case() -> Case {
    gemini(
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

/// An exchange that has seen only its request.
fn request(provider: Option<Provider>, path: &str, hdrs: &[(&str, &str)], body: &[u8]) -> Exchange {
    let mut ex = Exchange::new(provider.map(Target::from), Limits::default());
    ex.on_request(&Method::POST, path, &headers(hdrs), body);
    ex
}

fn finish(ex: &mut Exchange) -> Record {
    let mut r = Record::default();
    ex.finish(&mut r);
    r
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
        assert_eq!(
            Target::detect(host, path).map(|t| t.format),
            want,
            "{host}{path}"
        );
    }
    for p in Provider::ALL {
        assert_eq!(Provider::from_name(p.name()), Some(p));
    }
    assert_eq!(Provider::from_name("Gemini"), Some(Google));
    assert_eq!(Provider::from_name("gcp.gemini"), Some(Google));
    assert_eq!(Provider::from_name("not-a-provider"), None);
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
fn anthropic_cases() {
    let message_delta = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-opus-4-1\",\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"input_tokens\":6,\"cache_read_input_tokens\":40,\"output_tokens\":21}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let json = anthropic(
        br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"primes?"}]}"#,
    )
    .respond(200, JSON, fixture("anthropic_message.json"));
    let error = json
        .clone()
        .respond(529, JSON, fixture("anthropic_error.json"));
    check(vec![
        Row {
            name: "anthropic_stream",
            case: anthropic_stream_case(),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("anthropic")),
                (sc::GEN_AI_SYSTEM, Str("anthropic")),
                (sc::GEN_AI_OPERATION_NAME, Str("chat")),
                (sc::GEN_AI_REQUEST_MODEL, Str("claude-sonnet-4-5")),
                (sc::GEN_AI_RESPONSE_MODEL, Str("claude-sonnet-4-5-20250929")),
                (sc::GEN_AI_RESPONSE_ID, Str("msg_014p7gG3wDgGV9EUtLvnow3U")),
                (sc::GEN_AI_REQUEST_STREAM, Bool(true)),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["end_turn"])),
                // input = 21 + 300 (cache read) + 1500 (cache creation)
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(1821)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(15)),
                (sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, Int(300)),
                (sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, Int(1500)),
                (sc::USAGE_CACHE_WRITE_1H_INPUT_TOKENS, Absent),
                (sc::BODY_USAGE_VISIBLE, Bool(true)),
                (sc::PARSE_ERROR, Absent),
                (sc::BODY_REQUEST_REWRITTEN, Absent),
            ],
        },
        Row {
            name: "anthropic_cache_writes_split_by_ttl",
            case: anthropic(br#"{"model":"claude-haiku-4-5","max_tokens":8}"#).respond(
                200,
                JSON,
                br#"{"id":"msg_2","type":"message","model":"claude-haiku-4-5-20251001","stop_reason":"end_turn","usage":{"input_tokens":10,"cache_creation_input_tokens":3000,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":1000,"ephemeral_1h_input_tokens":2000},"output_tokens":4}}"#,
            ),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(3010)),
                (sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS, Int(3000)),
                (sc::USAGE_CACHE_WRITE_1H_INPUT_TOKENS, Int(2000)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "anthropic_message_delta_with_cumulative_input_usage_wins",
            case: anthropic(br#"{"model":"claude-opus-4-1","stream":true}"#).respond(
                200,
                SSE,
                message_delta.as_bytes(),
            ),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(46)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(21)),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["tool_use"])),
            ],
        },
        Row {
            name: "anthropic_json",
            case: json,
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_REQUEST_STREAM, Bool(false)),
                (sc::GEN_AI_RESPONSE_ID, Str("msg_01XFDUDYJgAACzvnptvVoYEL")),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["end_turn"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(12 + 2048)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(9)),
                (sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, Int(2048)),
                (sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, Int(0)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        // Error body: error.type from the provider, no parse error.
        Row {
            name: "anthropic_json/error",
            case: error.clone(),
            feed: Whole,
            expect: &[
                (sc::ERROR_TYPE, Str("overloaded_error")),
                (sc::PARSE_ERROR, Absent),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Absent),
            ],
        },
        // ...unless the proxy already recorded one.
        Row {
            name: "anthropic_json/error_already_recorded",
            case: error.with(|c| c.recorded.push((sc::ERROR_TYPE, "529"))),
            feed: Whole,
            expect: &[(sc::ERROR_TYPE, Str("529"))],
        },
    ]);
}

// ---------------------------------------------------------------- openai

#[test]
fn openai_cases() {
    check(vec![
        Row {
            name: "openai_chat_stream_with_usage",
            case: openai_usage_stream_case(),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("openai")),
                (sc::GEN_AI_OPERATION_NAME, Str("chat")),
                (sc::GEN_AI_REQUEST_MODEL, Str("gpt-4o-mini")),
                (sc::GEN_AI_RESPONSE_MODEL, Str("gpt-4o-mini-2024-07-18")),
                (sc::GEN_AI_RESPONSE_ID, Str("chatcmpl-7Hq3xYz")),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["stop"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(19)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(3)),
                (sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, Int(0)),
                (sc::GEN_AI_REQUEST_STREAM, Bool(true)),
                // Not rewritten: the client saw what it got.
                (sc::BODY_USAGE_VISIBLE, Bool(true)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "openai_chat_stream_without_usage",
            case: chat(fixture("openai_chat_request.json")).respond(
                200,
                SSE,
                fixture("openai_chat_stream.sse"),
            ),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["stop"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Absent),
                (sc::BODY_USAGE_VISIBLE, Absent),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "openai_chat_json_with_two_choices",
            case: chat(
                br#"{"model":"gpt-4o-mini","n":2,"messages":[{"role":"user","content":"hi"}]}"#,
            )
            .respond(200, JSON, fixture("openai_chat.json")),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_REQUEST_STREAM, Bool(false)),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["stop", "length"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(1117)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(46)),
                (sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, Int(1024)),
                (
                    sc::GEN_AI_RESPONSE_ID,
                    Str("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"),
                ),
            ],
        },
        Row {
            name: "openai_error_json",
            case: chat(fixture("openai_chat_request.json")).respond(
                429,
                JSON,
                fixture("openai_error.json"),
            ),
            feed: Whole,
            expect: &[
                (sc::ERROR_TYPE, Str("rate_limit_exceeded")),
                (sc::PARSE_ERROR, Absent),
                (sc::GEN_AI_REQUEST_MODEL, Str("gpt-4o-mini")),
            ],
        },
        Row {
            name: "openai_legacy_completions_stream",
            case: openai(
                "/v1/completions",
                br#"{"model":"gpt-3.5-turbo-instruct","prompt":"Once","max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}"#,
            )
            .respond(200, SSE, fixture("openai_completions_stream.sse")),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_OPERATION_NAME, Str("text_completion")),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["length"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(4)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(2)),
            ],
        },
        Row {
            name: "openai_responses_stream",
            case: responses_stream_case(),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_OPERATION_NAME, Str("chat")),
                (sc::GEN_AI_REQUEST_MODEL, Str("gpt-4.1")),
                (sc::GEN_AI_RESPONSE_MODEL, Str("gpt-4.1-2025-04-14")),
                (
                    sc::GEN_AI_RESPONSE_ID,
                    Str("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"),
                ),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["completed"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(36)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(87)),
                (sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, Int(12)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "openai_responses_json_and_incomplete",
            case: openai("/v1/responses", br#"{"model":"gpt-4.1","input":"hi"}"#).respond(
                200,
                JSON,
                fixture("openai_responses.json"),
            ),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["completed"])),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(87)),
                (sc::GEN_AI_REQUEST_STREAM, Bool(false)),
            ],
        },
        Row {
            name: "openai_responses_json_and_incomplete/incomplete",
            case: openai("/v1/responses", br#"{"model":"o4-mini","input":"hi"}"#).respond(
                200,
                JSON,
                br#"{"id":"resp_1","object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"o4-mini","usage":{"input_tokens":10,"output_tokens":64,"output_tokens_details":{"reasoning_tokens":64}}}"#,
            ),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["max_output_tokens"])),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(64)),
            ],
        },
        Row {
            name: "openai_embeddings",
            case: openai(
                "/v1/embeddings",
                br#"{"input":"The food was delicious","model":"text-embedding-3-small","encoding_format":"float"}"#,
            )
            .respond(200, JSON, fixture("openai_embeddings.json")),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_OPERATION_NAME, Str("embeddings")),
                (sc::GEN_AI_REQUEST_MODEL, Str("text-embedding-3-small")),
                (sc::GEN_AI_RESPONSE_MODEL, Str("text-embedding-3-small")),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(8)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Absent),
                (sc::GEN_AI_REQUEST_STREAM, Absent),
                (sc::PARSE_ERROR, Absent),
            ],
        },
    ]);
}

// ---------------------------------------------------------------- google

#[test]
fn google_cases() {
    let generate = gemini(
        "/v1beta/models/gemini-2.0-flash:generateContent",
        fixture("google_request.json"),
    );
    check(vec![
        Row {
            name: "google_stream_crlf",
            case: google_stream_case(),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("gcp.gemini")),
                (sc::GEN_AI_SYSTEM, Str("gcp.gemini")),
                (sc::GEN_AI_OPERATION_NAME, Str("generate_content")),
                (sc::GEN_AI_REQUEST_MODEL, Str("gemini-2.5-flash")),
                (sc::GEN_AI_RESPONSE_MODEL, Str("gemini-2.5-flash")),
                (sc::GEN_AI_RESPONSE_ID, Str("mKZ1aL2pJd7Yz7IPx8uEiAU")),
                (sc::GEN_AI_REQUEST_STREAM, Bool(true)),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["STOP"])),
                // The last cumulative usageMetadata: 6 candidates + 20 thoughts.
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(10)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(26)),
                (sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, Int(4)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "google_stream_as_json_array",
            case: google_stream_case()
                .with(|c| c.path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent")
                .respond(200, JSON, fixture("google_stream_array.json")),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["STOP"])),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(26)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "google_generate_json_and_errors",
            case: generate
                .clone()
                .respond(200, JSON, fixture("google_generate.json")),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_REQUEST_STREAM, Bool(false)),
                (sc::GEN_AI_REQUEST_MODEL, Str("gemini-2.0-flash")),
                (sc::GEN_AI_RESPONSE_MODEL, Str("gemini-2.0-flash-001")),
                (
                    sc::GEN_AI_RESPONSE_FINISH_REASONS,
                    Strs(&["STOP", "MAX_TOKENS"]),
                ),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(7)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(9)),
                (sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, Absent),
            ],
        },
        Row {
            name: "google_generate_json_and_errors/error",
            case: generate.respond(429, JSON, fixture("google_error.json")),
            feed: Whole,
            expect: &[
                (sc::ERROR_TYPE, Str("RESOURCE_EXHAUSTED")),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "google_embed",
            case: gemini(
                "/v1beta/models/text-embedding-004:embedContent",
                br#"{"model":"models/text-embedding-004","content":{"parts":[{"text":"hello"}]}}"#,
            )
            .respond(200, JSON, fixture("google_embed.json")),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_OPERATION_NAME, Str("embeddings")),
                (sc::GEN_AI_REQUEST_MODEL, Str("text-embedding-004")),
                (sc::PARSE_ERROR, Absent),
            ],
        },
    ]);
}

// ---------------------------------------------------------------- mcp

#[test]
fn mcp_cases() {
    assert_eq!(
        mcp_tools_call_case().provider,
        None,
        "no route: detected from the body"
    );
    let tools_call = mcp(fixture("mcp_tools_call_request.json"));
    // A request whose response stream ends before the response: truncated.
    let progress_only = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n";
    check(vec![
        Row {
            name: "mcp_tools_call_over_sse_found_from_the_body",
            case: mcp_tools_call_case(),
            feed: AnySplit,
            expect: &[
                (sc::MCP_METHOD_NAME, Str("tools/call")),
                (sc::GEN_AI_OPERATION_NAME, Str("execute_tool")),
                (sc::GEN_AI_TOOL_NAME, Str("get_weather")),
                (sc::JSONRPC_REQUEST_ID, Str("42")),
                (
                    sc::MCP_SESSION_ID,
                    Str("1868a90c-3b5a-4c2e-9d3c-2f4f1b0c9e11"),
                ),
                (sc::MCP_PROTOCOL_VERSION, Str("2025-06-18")),
                (sc::GEN_AI_PROVIDER_NAME, Absent),
                (sc::ERROR_TYPE, Absent),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "mcp_initialize_json_with_session_from_response",
            case: mcp(fixture("mcp_initialize_request.json"))
                .respond(
                    200,
                    &[
                        ("content-type", "application/json"),
                        ("mcp-session-id", "sess-7f3a"),
                    ],
                    fixture("mcp_initialize_response.json"),
                )
                .with(|c| c.provider = Some(Target::from(Provider::Mcp))),
            feed: AnySplit,
            expect: &[
                (sc::MCP_METHOD_NAME, Str("initialize")),
                (sc::JSONRPC_REQUEST_ID, Str("init-1")),
                (sc::MCP_SESSION_ID, Str("sess-7f3a")),
                (sc::MCP_PROTOCOL_VERSION, Str("2025-06-18")),
                (sc::GEN_AI_OPERATION_NAME, Absent),
                // clientInfo.name is no tool.
                (sc::GEN_AI_TOOL_NAME, Absent),
            ],
        },
        Row {
            name: "mcp_errors_and_notifications/tool_error",
            case: tools_call.clone().respond(
                200,
                JSON,
                fixture("mcp_tool_error_response.json"),
            ),
            feed: Whole,
            expect: &[
                (sc::ERROR_TYPE, Str("tool_error")),
                (sc::RPC_RESPONSE_STATUS_CODE, Absent),
            ],
        },
        Row {
            name: "mcp_errors_and_notifications/rpc_error",
            case: tools_call.clone().respond(
                200,
                JSON,
                fixture("mcp_rpc_error_response.json"),
            ),
            feed: Whole,
            expect: &[
                (sc::ERROR_TYPE, Str("-32602")),
                (sc::RPC_RESPONSE_STATUS_CODE, Str("-32602")),
            ],
        },
        // A notification: 202 without body, nothing is due.
        Row {
            name: "mcp_errors_and_notifications/notification",
            case: mcp(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).respond(
                202,
                &[],
                Vec::new(),
            ),
            feed: Whole,
            expect: &[
                (sc::MCP_METHOD_NAME, Str("notifications/initialized")),
                (sc::JSONRPC_REQUEST_ID, Absent),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        // The client answering a server request (no method): 202, nothing due.
        Row {
            name: "mcp_errors_and_notifications/client_response",
            case: mcp(br#"{"jsonrpc":"2.0","id":"srv-9","result":{"roots":[]}}"#)
                .respond(202, &[], Vec::new())
                .with(|c| c.provider = Some(Target::from(Provider::Mcp))),
            feed: Whole,
            expect: &[(sc::PARSE_ERROR, Absent), (sc::MCP_METHOD_NAME, Absent)],
        },
        Row {
            name: "mcp_errors_and_notifications/truncated",
            case: tools_call.respond(200, SSE, progress_only),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Str("truncated")),
                (sc::GEN_AI_TOOL_NAME, Str("get_weather")),
            ],
        },
        Row {
            name: "mcp_resources_and_prompts/resource",
            case: mcp(
                br#"{"jsonrpc":"2.0","id":"r1","method":"resources/read","params":{"uri":"file:///srv/notes.md"}}"#,
            )
            .respond(
                200,
                JSON,
                br#"{"jsonrpc":"2.0","id":"r1","result":{"contents":[]}}"#,
            ),
            feed: Whole,
            expect: &[(sc::MCP_RESOURCE_URI, Str("file:///srv/notes.md"))],
        },
        Row {
            name: "mcp_resources_and_prompts/prompt",
            case: mcp(
                br#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"code_review","arguments":{}}}"#,
            )
            .respond(
                200,
                JSON,
                br#"{"jsonrpc":"2.0","id":3,"result":{"messages":[]}}"#,
            ),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_PROMPT_NAME, Str("code_review")),
                (sc::GEN_AI_TOOL_NAME, Absent),
            ],
        },
    ]);
}

// ---------------------------------------------------------------- errors

/// A large embeddings batch: usage comes last, after megabytes of floats.
fn large_embeddings_body() -> Vec<u8> {
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
    body.into_bytes()
}

#[test]
fn error_cases() {
    let anthropic_message = fixture("anthropic_message.json");
    let malformed_sse = concat!(
        "data: {\"id\":\"chatcmpl-2\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-2\",\"choices\":[{\"index\":0,\"delta\":{\"content\n\n",
        "data: {\"id\":\"chatcmpl-2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"id\":\"chatcmpl-2\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );
    let embeddings = openai(
        "/v1/embeddings",
        br#"{"model":"text-embedding-3-large","input":["a","b"]}"#,
    )
    .respond(200, JSON, large_embeddings_body())
    .with(|c| c.limits.max_json_bytes = 16 * 1024);
    let long_text = "word \\\"usage\\\": {} ".repeat(5000);
    let large_message = format!(
        r#"{{"id":"msg_big","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{{"type":"text","text":"{long_text}"}}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":8192}}}}"#
    );
    let gzipped_google = google_stream_case().with(|c| {
        c.resp_headers.push(("content-encoding", "gzip".into()));
        let gz = gzip(&c.resp_body);
        c.resp_body = gz[..gz.len() - 10].to_vec();
    });
    const LARGE_EMBEDDINGS: &[(&str, Want)] = &[
        (sc::PARSE_ERROR, Str("body_too_large")),
        (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(4096)),
        (sc::GEN_AI_RESPONSE_MODEL, Str("text-embedding-3-large")),
    ];
    check(vec![
        Row {
            name: "malformed_json_body_keeps_request_attrs",
            case: chat(fixture("openai_chat_request.json")).respond(
                200,
                JSON,
                b"{\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o\",,}",
            ),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Str("invalid_json")),
                (sc::GEN_AI_REQUEST_MODEL, Str("gpt-4o-mini")),
                (sc::GEN_AI_PROVIDER_NAME, Str("openai")),
            ],
        },
        Row {
            name: "truncated_json_body",
            case: anthropic(br#"{"model":"claude-sonnet-4-5"}"#).respond(
                200,
                JSON,
                &anthropic_message[..anthropic_message.len() / 2],
            ),
            feed: Whole,
            expect: &[(sc::PARSE_ERROR, Str("truncated"))],
        },
        // An empty 200 is truncated too.
        Row {
            name: "truncated_json_body/empty",
            case: anthropic(br#"{"model":"claude-sonnet-4-5"}"#).respond(200, JSON, Vec::new()),
            feed: Whole,
            expect: &[(sc::PARSE_ERROR, Str("truncated"))],
        },
        Row {
            name: "truncated_stream_keeps_what_was_read",
            case: anthropic_stream_case().with(|c| {
                let body = String::from_utf8(c.resp_body.clone()).unwrap();
                let cut = body.find("event: message_delta").unwrap();
                c.resp_body.truncate(cut);
            }),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Str("truncated")),
                (sc::GEN_AI_RESPONSE_ID, Str("msg_014p7gG3wDgGV9EUtLvnow3U")),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(1821)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(1)),
            ],
        },
        Row {
            name: "malformed_sse_event_is_flagged_and_the_rest_parsed",
            case: chat(fixture("openai_chat_request.json")).respond(
                200,
                SSE,
                malformed_sse.as_bytes(),
            ),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Str("truncated")),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["length"])),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(7)),
            ],
        },
        Row {
            name: "malformed_sse_event_is_flagged_and_the_rest_parsed/garbage",
            case: chat(fixture("openai_chat_request.json")).respond(
                200,
                SSE,
                b"data: not json at all\n\ndata: [DONE]\n\n",
            ),
            feed: Whole,
            expect: &[(sc::PARSE_ERROR, Str("invalid_json"))],
        },
        Row {
            name: "oversized_event_and_body_are_bounded",
            // response.completed is larger
            case: responses_stream_case().with(|c| c.limits.max_event_bytes = 800),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Str("sse_event_too_large")),
                // What came before is still there.
                (sc::GEN_AI_RESPONSE_MODEL, Str("gpt-4.1-2025-04-14")),
            ],
        },
        Row {
            name: "oversized_event_and_body_are_bounded/json",
            case: chat(fixture("openai_chat_request.json"))
                .respond(200, JSON, fixture("openai_chat.json"))
                .with(|c| c.limits.max_json_bytes = 100),
            feed: Chunks(10),
            expect: &[
                (sc::PARSE_ERROR, Str("body_too_large")),
                (sc::GEN_AI_REQUEST_MODEL, Str("gpt-4o-mini")),
            ],
        },
        Row {
            name: "unexpected_content_type_on_success",
            case: anthropic(br#"{"model":"m"}"#).respond(
                200,
                &[("content-type", "text/html")],
                b"<html>captive portal</html>",
            ),
            feed: Whole,
            expect: &[(sc::PARSE_ERROR, Str("unsupported_content_type"))],
        },
        // Missing content type: sniffed.
        Row {
            name: "unexpected_content_type_on_success/sniffed",
            case: anthropic(br#"{"model":"m"}"#).respond(200, &[], anthropic_message.clone()),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Absent),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(9)),
            ],
        },
        Row {
            name: "oversized_json_bodies_still_give_their_usage/embeddings_1000",
            case: embeddings.clone(),
            feed: Chunks(1000),
            expect: LARGE_EMBEDDINGS,
        },
        Row {
            name: "oversized_json_bodies_still_give_their_usage/embeddings_100000",
            case: embeddings.clone(),
            feed: Chunks(100_000),
            expect: LARGE_EMBEDDINGS,
        },
        Row {
            name: "oversized_json_bodies_still_give_their_usage/embeddings_whole",
            case: embeddings,
            feed: Chunks(usize::MAX),
            expect: LARGE_EMBEDDINGS,
        },
        // Anthropic: id and model from the head, usage and stop reason from the tail.
        Row {
            name: "oversized_json_bodies_still_give_their_usage/anthropic",
            case: anthropic(br#"{"model":"claude-sonnet-4-5"}"#)
                .respond(200, JSON, large_message)
                .with(|c| c.limits.max_json_bytes = 8 * 1024),
            feed: Chunks(4096),
            expect: &[
                (sc::PARSE_ERROR, Str("body_too_large")),
                (sc::GEN_AI_RESPONSE_ID, Str("msg_big")),
                (sc::GEN_AI_RESPONSE_MODEL, Str("claude-sonnet-4-5-20250929")),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["max_tokens"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(15)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(8192)),
            ],
        },
        // Gemini: usageMetadata, modelVersion and responseId trail the candidates.
        Row {
            name: "oversized_json_bodies_still_give_their_usage/gemini",
            case: gemini(
                "/v1beta/models/gemini-2.0-flash:generateContent",
                fixture("google_request.json"),
            )
            .respond(200, JSON, fixture("google_generate.json"))
            .with(|c| c.limits.max_json_bytes = 200),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Str("body_too_large")),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(7)),
                (sc::GEN_AI_RESPONSE_ID, Str("Xb9zaPq3MvK7nvgPwqnI8AQ")),
            ],
        },
        Row {
            name: "corrupt_truncated_and_unsupported_encodings/truncated_gzip",
            case: gzipped_google.clone(),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Str("decode_failed")),
                (sc::GEN_AI_RESPONSE_ID, Str("mKZ1aL2pJd7Yz7IPx8uEiAU")),
            ],
        },
        Row {
            name: "corrupt_truncated_and_unsupported_encodings/not_gzip",
            case: gzipped_google.with(|c| c.resp_body = b"this is not gzip at all".to_vec()),
            feed: Whole,
            expect: &[(sc::PARSE_ERROR, Str("decode_failed"))],
        },
        Row {
            name: "corrupt_truncated_and_unsupported_encodings/unsupported",
            case: google_stream_case()
                .with(|c| c.resp_headers.push(("content-encoding", "compress".into()))),
            feed: Whole,
            expect: &[
                (sc::PARSE_ERROR, Str("unsupported_content_encoding")),
                (sc::GEN_AI_REQUEST_MODEL, Str("gemini-2.5-flash")),
            ],
        },
    ]);
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
    let mut c =
        chat(fixture("openai_chat_request.json")).respond(200, JSON, fixture("openai_chat.json"));
    let plain = c.run();
    c.resp_headers.push(("content-encoding", "gzip".into()));
    c.resp_body = gzip(&c.resp_body);
    assert_eq!(c.assert_chunking_invariant(), plain);
}

#[test]
fn compression_bomb_is_bounded() {
    // 16 MiB of zeros compresses to ~16 KiB (gzip) / a few bytes (br).
    let zeros = vec![0u8; 16 << 20];
    for (name, bomb) in [("gzip", gzip(&zeros)), ("br", brotli(&zeros))] {
        assert!(bomb.len() < 200_000, "{name}: {}", bomb.len());
        let mut c = chat(fixture("openai_chat_request.json")).respond(
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
    let mut c = chat(fixture("openai_chat_request.json")).respond(
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
    let len = req.len().to_string();
    let mut ex = request(
        case.provider.map(|t| t.format),
        case.path,
        &[
            ("content-type", "application/json"),
            ("content-length", &len),
        ],
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

    let r = finish(&mut ex);
    assert_eq!(r.get_bool(sc::BODY_REQUEST_REWRITTEN), Some(true));
    assert_eq!(r.get_bool(sc::BODY_USAGE_VISIBLE), Some(false));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(19));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(3));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
}

#[test]
fn rewrite_only_where_it_applies() {
    let not_rewritten: [(&str, Provider, &str, &[u8]); 3] = [
        (
            "client asked for usage itself: nothing to do, usage visible",
            Provider::OpenAi,
            "/v1/chat/completions",
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        ),
        (
            "not streaming",
            Provider::OpenAi,
            "/v1/chat/completions",
            br#"{"model":"gpt-4o","messages":[]}"#,
        ),
        (
            "other APIs are never rewritten",
            Provider::Anthropic,
            "/v1/messages",
            br#"{"model":"claude","stream":true}"#,
        ),
    ];
    for (why, provider, path, body) in not_rewritten {
        let mut ex = request(Some(provider), path, JSON, body);
        assert!(!ex.wants_usage_rewrite(), "{why}");
        assert_eq!(ex.rewrite_request_body(body), None, "{why}");
    }

    // Rewritten, but the response is compressed: no filter, usage visible.
    let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let mut ex = request(Some(Provider::OpenAi), "/v1/chat/completions", JSON, body);
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
    let r = finish(&mut ex);
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
    let mut ex = request(
        Some(Provider::OpenAi),
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("content-length", &len),
        ],
        prefix,
    );
    // Unknown stream flag: the proxy may still try the rewrite on the full body.
    assert!(ex.wants_usage_rewrite());
    assert!(ex.rewrite_request_body(&body).is_some());
    let r = finish(&mut ex);
    assert_eq!(r.get(sc::GEN_AI_REQUEST_MODEL), None);
    assert_eq!(
        r.get(sc::PARSE_ERROR),
        None,
        "a short capture is not an error"
    );

    // The same cut with Content-Length equal to the prefix: the client sent broken JSON.
    let len = prefix.len().to_string();
    let mut ex = request(
        Some(Provider::OpenAi),
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("content-length", &len),
        ],
        prefix,
    );
    let r = finish(&mut ex);
    assert_eq!(s(&r, sc::PARSE_ERROR).as_deref(), Some("truncated"));

    // A gzip-compressed request body is read too.
    let plain = fixture("anthropic_request.json");
    let mut ex = request(
        Some(Provider::Anthropic),
        "/v1/messages",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        &gzip(&plain),
    );
    let r = finish(&mut ex);
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
}

#[test]
fn finish_is_idempotent_and_works_without_a_response() {
    let mut ex = request(
        Some(Provider::Anthropic),
        "/v1/messages",
        JSON,
        br#"{"model":"claude-haiku-4-5","stream":true}"#,
    );
    let r = finish(&mut ex);
    assert_eq!(
        s(&r, sc::GEN_AI_REQUEST_MODEL).as_deref(),
        Some("claude-haiku-4-5")
    );
    assert_eq!(
        r.get(sc::PARSE_ERROR),
        None,
        "no response: the proxy records the error"
    );
    assert_eq!(finish(&mut ex), Record::default());
}

#[test]
fn taps_can_move_between_tasks() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Exchange>();
    assert_send::<UsageChunkFilter>();
    assert_send::<SseParser>();
}

// ------------------------------------------- other hosts, formats and shapes

const NDJSON: &[(&str, &str)] = &[("content-type", "application/x-ndjson")];

fn ollama_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for w in ["Herons", " and", " egrets"] {
        out.extend_from_slice(
            format!(
                "{{\"model\":\"llama3.2\",\"created_at\":\"2026-12-03T10:00:00Z\",\"message\":{{\"role\":\"assistant\",\"content\":\"{w}\"}},\"done\":false}}\n"
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(br#"{"model":"llama3.2","created_at":"2026-12-03T10:00:01Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":1234,"prompt_eval_count":26,"prompt_eval_duration":10,"eval_count":3,"eval_duration":20}
"#);
    out
}

#[test]
fn ollama_native_api_streams_and_answers() {
    let chat_req =
        br#"{"model":"llama3.2","messages":[{"role":"user","content":"Name wading birds"}]}"#;
    let ollama = |path: &'static str, req: &[u8]| {
        Case::new("ollama.local:11434", path, req.to_vec())
            .with(|c| c.provider = Some(Target::from(Provider::Ollama)))
    };
    check(vec![
        Row {
            name: "chat streams by default (NDJSON)",
            case: ollama("/api/chat", chat_req).respond(200, NDJSON, ollama_stream()),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("ollama")),
                (sc::GEN_AI_OPERATION_NAME, Str("chat")),
                (sc::GEN_AI_REQUEST_MODEL, Str("llama3.2")),
                (sc::GEN_AI_REQUEST_STREAM, Bool(true)),
                (sc::GEN_AI_RESPONSE_MODEL, Str("llama3.2")),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["stop"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(26)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(3)),
                (sc::GEN_AI_RESPONSE_ID, Absent),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "stream without its done line is truncated",
            case: ollama("/api/chat", chat_req).respond(200, NDJSON, {
                let s = ollama_stream();
                let cut = s[..s.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
                s[..cut].to_vec()
            }),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_RESPONSE_MODEL, Str("llama3.2")),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Absent),
                (sc::PARSE_ERROR, Str("truncated")),
            ],
        },
        Row {
            name: "generate, not streamed",
            case: ollama(
                "/api/generate",
                br#"{"model":"qwen3:0.6b","prompt":"Why is the sky blue?","stream":false}"#,
            )
            .respond(
                200,
                JSON,
                br#"{"model":"qwen3:0.6b","created_at":"2026-12-03T10:00:00Z","response":"Rayleigh.","done":true,"done_reason":"length","prompt_eval_count":9,"eval_count":4}"#.to_vec(),
            ),
            feed: AnySplit,
            expect: &[
                (sc::GEN_AI_OPERATION_NAME, Str("text_completion")),
                (sc::GEN_AI_REQUEST_STREAM, Bool(false)),
                (sc::GEN_AI_RESPONSE_FINISH_REASONS, Strs(&["length"])),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(9)),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(4)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "embed",
            case: ollama("/api/embed", br#"{"model":"all-minilm","input":["heron","egret"]}"#)
                .respond(
                    200,
                    JSON,
                    br#"{"model":"all-minilm","embeddings":[[0.1,0.2],[0.3,0.4]],"total_duration":5,"prompt_eval_count":4}"#.to_vec(),
                ),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_OPERATION_NAME, Str("embeddings")),
                (sc::GEN_AI_REQUEST_STREAM, Absent),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(4)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "an error line in a stream",
            case: ollama("/api/chat", chat_req).respond(
                200,
                NDJSON,
                b"{\"error\":\"model runner has unexpectedly stopped\"}\n".to_vec(),
            ),
            feed: Whole,
            expect: &[(sc::ERROR_TYPE, Str("error"))],
        },
        Row {
            name: "a line over the event cap",
            case: ollama("/api/chat", chat_req)
                .respond(200, NDJSON, {
                    let mut s = format!("{{\"model\":\"llama3.2\",\"message\":{{\"content\":\"{}\"}},\"done\":false}}\n", "x".repeat(600)).into_bytes();
                    s.extend_from_slice(&ollama_stream());
                    s
                })
                .with(|c| c.limits.max_event_bytes = 400),
            feed: Chunks(50),
            expect: &[
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(26)),
                (sc::PARSE_ERROR, Str("sse_event_too_large")),
            ],
        },
    ]);
}

#[test]
fn clouds_and_compatible_hosts_name_their_provider() {
    let chat_body = br#"{"messages":[{"role":"user","content":"hi"}],"stream":false}"#;
    let chat_answer = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-11-20","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
    let vertex_claude = br#"{"anthropic_version":"vertex-2023-10-16","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    check(vec![
        Row {
            name: "azure deployment names the model",
            case: Case::new(
                "egret-test.openai.azure.com",
                "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
                chat_body.to_vec(),
            )
            .respond(200, JSON, chat_answer.to_vec()),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("azure.ai.openai")),
                (sc::GEN_AI_SYSTEM, Str("azure.ai.openai")),
                (sc::GEN_AI_REQUEST_MODEL, Str("prod-gpt4o")),
                (sc::GEN_AI_RESPONSE_MODEL, Str("gpt-4o-2024-11-20")),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(3)),
            ],
        },
        Row {
            name: "groq",
            case: Case::new(
                "api.groq.com",
                "/openai/v1/chat/completions",
                br#"{"model":"llama-3.3-70b-versatile","messages":[]}"#.to_vec(),
            )
            .respond(200, JSON, chat_answer.to_vec()),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("groq")),
                (sc::GEN_AI_REQUEST_MODEL, Str("llama-3.3-70b-versatile")),
            ],
        },
        Row {
            name: "anthropic on vertex: model and streaming from the path",
            case: Case::new(
                "us-east5-aiplatform.googleapis.com",
                "/v1/projects/egret/locations/us-east5/publishers/anthropic/models/claude-sonnet-4%4020250514:streamRawPredict",
                vertex_claude.to_vec(),
            )
            .respond(200, SSE, fixture("anthropic_stream.sse")),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("gcp.vertex_ai")),
                (sc::GEN_AI_OPERATION_NAME, Str("chat")),
                (sc::GEN_AI_REQUEST_MODEL, Str("claude-sonnet-4@20250514")),
                (sc::GEN_AI_REQUEST_STREAM, Bool(true)),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "gemini on vertex",
            case: Case::new(
                "us-central1-aiplatform.googleapis.com",
                "/v1beta1/projects/egret/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                fixture("google_request.json"),
            )
            .respond(200, &[("content-type", "text/event-stream")], fixture("google_stream.sse")),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("gcp.vertex_ai")),
                (sc::GEN_AI_OPERATION_NAME, Str("generate_content")),
                (sc::GEN_AI_REQUEST_MODEL, Str("gemini-2.5-flash")),
                (sc::PARSE_ERROR, Absent),
            ],
        },
        Row {
            name: "an unknown host with an OpenAI-style body: format yes, name no",
            case: Case::new(
                "vllm.internal:8000",
                "/v1/chat/completions",
                br#"{"model":"Qwen/Qwen3-8B","messages":[]}"#.to_vec(),
            )
            .respond(200, JSON, chat_answer.to_vec()),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Absent),
                (sc::GEN_AI_OPERATION_NAME, Str("chat")),
                (sc::GEN_AI_REQUEST_MODEL, Str("Qwen/Qwen3-8B")),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(1)),
            ],
        },
        Row {
            name: "an unknown host with an Ollama body names Ollama",
            case: Case::new(
                "gpu-box:11434",
                "/api/chat",
                br#"{"model":"llama3.2","messages":[]}"#.to_vec(),
            )
            .respond(200, NDJSON, ollama_stream()),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_PROVIDER_NAME, Str("ollama")),
                (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(3)),
            ],
        },
        Row {
            name: "an unknown host without a model is plain HTTP",
            case: Case::new("example.com", "/v1/chat/completions", br#"{"messages":[]}"#.to_vec())
                .respond(200, JSON, chat_answer.to_vec()),
            feed: Whole,
            expect: &[
                (sc::GEN_AI_OPERATION_NAME, Absent),
                (sc::GEN_AI_USAGE_INPUT_TOKENS, Absent),
            ],
        },
    ]);
}

#[test]
fn usage_rewrite_only_where_the_provider_accepts_it() {
    let body = br#"{"model":"m","messages":[],"stream":true}"#;
    let hdrs = [("content-type", "application/json")];
    for (host, path, rewrite) in [
        ("api.openai.com", "/v1/chat/completions", true),
        (
            "x.openai.azure.com",
            "/openai/deployments/d/chat/completions?api-version=2024-10-21",
            true,
        ),
        ("api.groq.com", "/openai/v1/chat/completions", false),
        ("api.mistral.ai", "/v1/chat/completions", false),
        ("vllm.internal", "/v1/chat/completions", false),
    ] {
        let mut ex = Exchange::new(Target::detect(host, path), Limits::default());
        ex.on_request(&Method::POST, path, &headers(&hdrs), body);
        assert_eq!(ex.wants_usage_rewrite(), rewrite, "{host}");
        assert_eq!(ex.rewrite_request_body(body).is_some(), rewrite, "{host}");
    }
}

/// One SSE event far larger than any body capture (100 KiB of text) before
/// the usage: the parser sees whole events whatever the capture keeps.
#[test]
fn a_large_event_does_not_lose_the_usage() {
    let big = "w".repeat(100 * 1024);
    let mut sse = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{{\"input_tokens\":12,\"output_tokens\":1}}}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{big}\"}}}}\n\n"
    );
    sse.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":25600}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    check(vec![Row {
        name: "100 KiB event",
        case: anthropic(fixture("anthropic_request.json")).respond(200, SSE, sse.into_bytes()),
        feed: Chunks(16 * 1024),
        expect: &[
            (sc::GEN_AI_USAGE_INPUT_TOKENS, Int(12)),
            (sc::GEN_AI_USAGE_OUTPUT_TOKENS, Int(25600)),
            (sc::PARSE_ERROR, Absent),
        ],
    }]);
}

// ------------------------------------------------ request parameters, usage

#[test]
fn usage_split_by_modality_as_each_provider_reports_it() {
    let names = sc::GEN_AI_USAGE_BY_MODALITY.concat();
    let split = |r: &Record| -> Vec<(&str, i64)> {
        names
            .iter()
            .filter_map(|n| r.get_i64(n).map(|v| (*n, v)))
            .collect()
    };

    // OpenAI Chat with audio in and out (gpt-4o-audio-preview's shape):
    // only the audio parts are split out; zeros are not written.
    let audio = br#"{"id":"c","model":"gpt-4o-audio-preview","choices":[{"index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":90,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":25,"text_tokens":15,"image_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":70,"text_tokens":20,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;
    let r = chat(br#"{"model":"gpt-4o-audio-preview","messages":[]}"#.to_vec())
        .respond(200, JSON, audio.to_vec())
        .run();
    assert_eq!(
        split(&r),
        vec![
            (sc::GEN_AI_USAGE_TEXT_INPUT_TOKENS, 15),
            (sc::GEN_AI_USAGE_AUDIO_INPUT_TOKENS, 25),
            (sc::GEN_AI_USAGE_TEXT_OUTPUT_TOKENS, 20),
            (sc::GEN_AI_USAGE_AUDIO_OUTPUT_TOKENS, 70),
        ]
    );
    // Text only, as OpenAI reports it for a text model: nothing split.
    let text_only = br#"{"id":"c","model":"gpt-4o","choices":[{"index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}}"#;
    let r = chat(br#"{"model":"gpt-4o","messages":[]}"#.to_vec())
        .respond(200, JSON, text_only.to_vec())
        .run();
    assert_eq!(split(&r), vec![]);

    // Gemini: promptTokensDetails / cacheTokensDetails /
    // candidatesTokensDetails, a modality listed twice adds up, VIDEO has
    // no name in the conventions (it stays in the totals only).
    let gem = br#"{"candidates":[{"index":0,"finishReason":"STOP","content":{"role":"model","parts":[{"text":"ok"}]}}],"usageMetadata":{"promptTokenCount":1600,"candidatesTokenCount":12,"cachedContentTokenCount":1000,"totalTokenCount":1612,"promptTokensDetails":[{"modality":"TEXT","tokenCount":300},{"modality":"IMAGE","tokenCount":258},{"modality":"VIDEO","tokenCount":1000},{"modality":"TEXT","tokenCount":42}],"cacheTokensDetails":[{"modality":"VIDEO","tokenCount":900},{"modality":"TEXT","tokenCount":100}],"candidatesTokensDetails":[{"modality":"TEXT","tokenCount":12}]},"modelVersion":"gemini-2.5-flash"}"#;
    let r = gemini(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        br#"{"contents":[]}"#.to_vec(),
    )
    .respond(200, JSON, gem.to_vec())
    .run();
    assert_eq!(
        split(&r),
        vec![
            (sc::GEN_AI_USAGE_TEXT_INPUT_TOKENS, 342),
            (sc::GEN_AI_USAGE_IMAGE_INPUT_TOKENS, 258),
            (sc::GEN_AI_USAGE_TEXT_CACHE_READ_INPUT_TOKENS, 100),
            (sc::GEN_AI_USAGE_TEXT_OUTPUT_TOKENS, 12),
        ]
    );
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(1600));

    // Anthropic reports no split: nothing is invented.
    let r = anthropic(br#"{"model":"claude-sonnet-4-5","messages":[]}"#.to_vec())
        .respond(
            200,
            JSON,
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}"#.to_vec(),
        )
        .run();
    assert_eq!(split(&r), vec![]);
}

#[test]
fn request_parameters_reasoning_and_cache_write() {
    let chat_answer = br#"{"id":"c","model":"o4-mini","choices":[{"index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":50,"completion_tokens_details":{"reasoning_tokens":32}}}"#;
    let check_floats = |r: &Record, key: &str, want: f64| {
        assert_eq!(
            r.get(key),
            Some(&AttrValue::Float(want)),
            "{key}: {}",
            r.to_json_line()
        );
    };

    // OpenAI Chat: every sampling parameter, n, stop list, JSON output.
    let r = chat(
        br#"{"model":"o4-mini","messages":[],"max_completion_tokens":300,"temperature":0.2,"top_p":0.9,"seed":42,"frequency_penalty":0.5,"presence_penalty":-0.5,"n":3,"stop":["END","\n\n"],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}}}"#.to_vec(),
    )
    .respond(200, JSON, chat_answer.to_vec())
    .run();
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(300));
    check_floats(&r, sc::GEN_AI_REQUEST_TEMPERATURE, 0.2);
    check_floats(&r, sc::GEN_AI_REQUEST_TOP_P, 0.9);
    check_floats(&r, sc::GEN_AI_REQUEST_FREQUENCY_PENALTY, 0.5);
    check_floats(&r, sc::GEN_AI_REQUEST_PRESENCE_PENALTY, -0.5);
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_SEED), Some(42));
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_CHOICE_COUNT), Some(3));
    assert_eq!(
        r.get(sc::GEN_AI_REQUEST_STOP_SEQUENCES),
        Some(&AttrValue::StrArray(vec!["END".into(), "\n\n".into()]))
    );
    assert_eq!(r.get_str(sc::GEN_AI_OUTPUT_TYPE), Some("json"));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
        Some(32)
    );
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(50));

    // Nothing asked, nothing written (n = 1 is not written either).
    let r = chat(br#"{"model":"gpt-4o","messages":[],"n":1,"stop":"END"}"#.to_vec())
        .respond(200, JSON, chat_answer.to_vec())
        .run();
    for k in [
        sc::GEN_AI_REQUEST_MAX_TOKENS,
        sc::GEN_AI_REQUEST_TEMPERATURE,
        sc::GEN_AI_REQUEST_CHOICE_COUNT,
        sc::GEN_AI_OUTPUT_TYPE,
        sc::GEN_AI_CONVERSATION_ID,
    ] {
        assert_eq!(r.get(k), None, "{k}");
    }
    assert_eq!(
        r.get(sc::GEN_AI_REQUEST_STOP_SEQUENCES),
        Some(&AttrValue::StrArray(vec!["END".into()]))
    );

    // Responses: conversation and text.format; reasoning from
    // output_tokens_details.
    let r = openai(
        "/v1/responses",
        br#"{"model":"o4-mini","input":"hi","conversation":{"id":"conv_689"},"text":{"format":{"type":"text"}},"max_output_tokens":64}"#.to_vec(),
    )
    .respond(
        200,
        JSON,
        br#"{"id":"resp_1","object":"response","status":"completed","model":"o4-mini","usage":{"input_tokens":5,"output_tokens":40,"output_tokens_details":{"reasoning_tokens":24}}}"#.to_vec(),
    )
    .run();
    assert_eq!(r.get_str(sc::GEN_AI_CONVERSATION_ID), Some("conv_689"));
    assert_eq!(r.get_str(sc::GEN_AI_OUTPUT_TYPE), Some("text"));
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(64));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
        Some(24)
    );
    let r = openai(
        "/v1/responses",
        br#"{"model":"o4-mini","input":"hi","conversation":"conv_abc"}"#.to_vec(),
    )
    .run();
    assert_eq!(r.get_str(sc::GEN_AI_CONVERSATION_ID), Some("conv_abc"));

    // Anthropic: top_k, stop_sequences; cache writes under both names.
    let r = anthropic(
        br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"top_k":40,"stop_sequences":["Human:"],"messages":[]}"#.to_vec(),
    )
    .respond(
        200,
        JSON,
        br#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","stop_reason":"end_turn","usage":{"input_tokens":10,"cache_creation_input_tokens":512,"cache_read_input_tokens":0,"output_tokens":3}}"#.to_vec(),
    )
    .run();
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(1024));
    check_floats(&r, sc::GEN_AI_REQUEST_TOP_K, 40.0);
    assert_eq!(
        r.get(sc::GEN_AI_REQUEST_STOP_SEQUENCES),
        Some(&AttrValue::StrArray(vec!["Human:".into()]))
    );
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS),
        Some(512)
    );
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        Some(512)
    );
    assert_eq!(r.get(sc::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS), None);

    // Gemini: generationConfig; thoughts are the reasoning part.
    let r = gemini(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        br#"{"contents":[],"generationConfig":{"maxOutputTokens":200,"temperature":1,"topK":64,"candidateCount":2,"responseMimeType":"application/json","stopSequences":["x"]}}"#.to_vec(),
    )
    .respond(
        200,
        JSON,
        br#"{"candidates":[{"index":0,"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":10,"thoughtsTokenCount":90},"modelVersion":"gemini-2.5-flash"}"#.to_vec(),
    )
    .run();
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(200));
    check_floats(&r, sc::GEN_AI_REQUEST_TEMPERATURE, 1.0);
    check_floats(&r, sc::GEN_AI_REQUEST_TOP_K, 64.0);
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_CHOICE_COUNT), Some(2));
    assert_eq!(r.get_str(sc::GEN_AI_OUTPUT_TYPE), Some("json"));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(100));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS),
        Some(90)
    );

    // Ollama: options and format.
    let r = Case::new(
        "ollama.local",
        "/api/chat",
        br#"{"model":"llama3.2","messages":[],"format":"json","options":{"num_predict":12,"temperature":0.7,"seed":7,"stop":["\n"]}}"#.to_vec(),
    )
    .with(|c| c.provider = Some(Target::from(Provider::Ollama)))
    .respond(200, NDJSON, ollama_stream())
    .run();
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(12));
    check_floats(&r, sc::GEN_AI_REQUEST_TEMPERATURE, 0.7);
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_SEED), Some(7));
    assert_eq!(r.get_str(sc::GEN_AI_OUTPUT_TYPE), Some("json"));
}

// ---------------------------------------------------------------- mcp batches

fn strs(r: &Record, k: &str) -> Vec<String> {
    match r.get(k) {
        Some(AttrValue::StrArray(v)) => v.clone(),
        other => panic!("{k}: {other:?} in {}", r.to_json_line()),
    }
}

/// One exchange of a batch: request body, response (content type, body),
/// fed in `split`-byte chunks.
fn batch_exchange(req: &[u8], ct: &str, resp: &[u8], split: usize) -> Record {
    let mut ex = request(
        Some(Provider::Mcp),
        "/mcp",
        &[("content-type", "application/json")],
        req,
    );
    ex.on_response_head(200, &headers(&[("content-type", ct)]));
    for c in resp.chunks(split.max(1)) {
        ex.on_response_chunk(c);
    }
    finish(&mut ex)
}

const BATCH: &[u8] = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}},
 {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}},
 {"jsonrpc":"2.0","id":"b","method":"prompts/get","params":{"name":"summarize"}},
 {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add","arguments":{}}},
 {"jsonrpc":"2.0","id":4,"method":"nope"},
 {"jsonrpc":"2.0","id":5,"method":"tools/list"}]"#;

#[test]
fn mcp_batch_messages_are_recorded_one_by_one() {
    // Responses in another order than the requests, as a JSON array; the
    // request id 5 gets no answer.
    let json = br#"[{"jsonrpc":"2.0","id":4,"error":{"code":-32601,"message":"no"}},
        {"jsonrpc":"2.0","id":3,"result":{"content":[],"isError":true}},
        {"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}},
        {"jsonrpc":"2.0","id":"b","result":{"messages":[]}}]"#;
    // The same on an SSE stream, one event each, with a server notification.
    let mut sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\n".to_vec();
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    for m in v.as_array().unwrap() {
        sse.extend_from_slice(format!("event: message\ndata: {m}\n\n").as_bytes());
    }
    for (ct, body) in [
        ("application/json", &json[..]),
        ("text/event-stream", &sse[..]),
    ] {
        for split in [1, 7, body.len()] {
            let r = batch_exchange(BATCH, ct, body, split);
            let line = r.to_json_line();
            assert_eq!(r.get_i64(sc::MCP_BATCH_SIZE), Some(6), "{line}");
            assert_eq!(
                strs(&r, sc::MCP_BATCH_METHOD_NAMES),
                [
                    "tools/call",
                    "notifications/progress",
                    "prompts/get",
                    "tools/call",
                    "nope",
                    "tools/list"
                ]
            );
            assert_eq!(
                strs(&r, sc::MCP_BATCH_REQUEST_IDS),
                ["1", "", "b", "3", "4", "5"]
            );
            assert_eq!(
                strs(&r, sc::MCP_BATCH_TARGETS),
                ["echo", "", "summarize", "add", "", ""]
            );
            assert_eq!(
                strs(&r, sc::MCP_BATCH_ERROR_TYPES),
                ["", "", "", "tool_error", "-32601", "unanswered"],
                "{ct} split {split}"
            );
            assert_eq!(r.get(sc::MCP_BATCH_UNRECORDED), None);
            // The record itself is still the first request's, as before.
            assert_eq!(r.get_str(sc::MCP_METHOD_NAME), Some("tools/call"));
            assert_eq!(r.get_str(sc::GEN_AI_TOOL_NAME), Some("echo"));
            assert_eq!(r.get_str(sc::JSONRPC_REQUEST_ID), Some("1"));
            assert_eq!(r.get(sc::ERROR_TYPE), None, "{line}");
        }
    }
}

#[test]
fn mcp_batch_bounds_and_whole_batch_errors() {
    // Over the bound: the first MAX are listed, the rest counted.
    let n = mcp::MAX_BATCH_MESSAGES + 5;
    let msgs: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"ping"}}"#))
        .collect();
    let req = format!("[{}]", msgs.join(","));
    let resp: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"result":{{}}}}"#))
        .collect();
    let r = batch_exchange(
        req.as_bytes(),
        "application/json",
        format!("[{}]", resp.join(",")).as_bytes(),
        4096,
    );
    assert_eq!(r.get_i64(sc::MCP_BATCH_SIZE), Some(n as i64));
    assert_eq!(r.get_i64(sc::MCP_BATCH_UNRECORDED), Some(5));
    let errors = strs(&r, sc::MCP_BATCH_ERROR_TYPES);
    assert_eq!(errors.len(), mcp::MAX_BATCH_MESSAGES);
    assert!(errors.iter().all(String::is_empty), "{errors:?}");

    // The server could not read the batch: one error with a null id
    // answers every request; notifications stay without error.
    let r = batch_exchange(
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
        "application/json",
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request"}}"#,
        64,
    );
    assert_eq!(strs(&r, sc::MCP_BATCH_ERROR_TYPES), ["-32600", ""]);

    // A single message (no array) records no batch attributes.
    let r = batch_exchange(
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
        "application/json",
        br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        64,
    );
    assert_eq!(r.get(sc::MCP_BATCH_SIZE), None);
    assert_eq!(r.get(sc::MCP_BATCH_METHOD_NAMES), None);

    // No response at all (upstream failed): every request is unanswered.
    let mut ex = request(Some(Provider::Mcp), "/mcp", &[], BATCH);
    let r = finish(&mut ex);
    assert_eq!(
        strs(&r, sc::MCP_BATCH_ERROR_TYPES),
        [
            "unanswered",
            "",
            "unanswered",
            "unanswered",
            "unanswered",
            "unanswered"
        ]
    );
}

#[test]
fn mcp_trace_context_goes_into_params_meta() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let inject = |body: &[u8], ts: Option<&str>| -> (Option<serde_json::Value>, Record) {
        let mut ex = request(
            Some(Provider::Mcp),
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("content-length", &body.len().to_string()),
            ],
            body,
        );
        let out = ex.inject_mcp_trace_context(body, false, tp, ts);
        let v = out.map(|b| {
            serde_json::from_slice::<serde_json::Value>(&b)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)))
        });
        (v, finish(&mut ex))
    };
    // One request without params, one with params but no _meta, one with
    // an empty _meta, one whose _meta has its own traceparent (kept), a
    // notification (gets it too), a client response (no method: untouched).
    let body = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}},
        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","_meta":{ }}},
        {"jsonrpc":"2.0","id":4,"method":"ping","params":{"_meta":{"traceparent":"00-11111111111111111111111111111111-2222222222222222-01","x":1}}},
        {"jsonrpc":"2.0","method":"notifications/initialized","params":{}},
        {"jsonrpc":"2.0","id":"s1","result":{}}]"#;
    let (v, r) = inject(body, Some("vendor=x"));
    let v = v.expect("rewritten");
    let meta = |i: usize| v[i]["params"]["_meta"].clone();
    for i in [0, 1, 2, 4] {
        assert_eq!(meta(i)["traceparent"], tp, "{i}: {v}");
        assert_eq!(meta(i)["tracestate"], "vendor=x", "{i}: {v}");
    }
    assert_eq!(v[1]["params"]["name"], "echo");
    assert_eq!(
        meta(3),
        serde_json::json!({"traceparent":"00-11111111111111111111111111111111-2222222222222222-01","x":1})
    );
    assert_eq!(
        v[5],
        serde_json::json!({"jsonrpc":"2.0","id":"s1","result":{}})
    );
    assert_eq!(r.get_str(sc::MCP_TRACE_CONTEXT), Some("injected"));

    // The supplied traceparent is offered as the incoming parent.
    let ex = request(
        Some(Provider::Mcp),
        "/mcp",
        &[("content-length", &body.len().to_string())],
        body,
    );
    assert_eq!(
        ex.mcp_meta_traceparent(),
        Some("00-11111111111111111111111111111111-2222222222222222-01")
    );

    // Single message: every other byte is kept.
    let single = br#"{"jsonrpc":"2.0", "id":7, "method":"tools/call", "params": {"name":"echo"}}"#;
    let (v, _) = inject(single, None);
    let v = v.unwrap();
    assert_eq!(v["params"]["_meta"], serde_json::json!({"traceparent": tp}));
    // Already there everywhere: nothing to send differently.
    let own = br#"{"jsonrpc":"2.0","id":7,"method":"ping","params":{"_meta":{"traceparent":"00-11111111111111111111111111111111-2222222222222222-01"}}}"#;
    let (v, r) = inject(own, None);
    assert!(v.is_none());
    assert_eq!(r.get_str(sc::MCP_TRACE_CONTEXT), Some("supplied"));
    // Unsafe: skipped and flagged, never a broken body.
    for (body, why) in [
        (
            &br#"{"jsonrpc":"2.0","id":7,"method":"x","params":[1,2]}"#[..],
            "skipped_unsupported",
        ),
        (
            br#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"_meta":null}}"#,
            "skipped_unsupported",
        ),
        (
            br#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"_meta":{"traceparent":5}}}"#,
            "skipped_unsupported",
        ),
        (
            br#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"a":1}"#,
            "skipped_invalid",
        ),
    ] {
        let (v, r) = inject(body, None);
        assert!(v.is_none(), "{}", String::from_utf8_lossy(body));
        assert_eq!(r.get_str(sc::MCP_TRACE_CONTEXT), Some(why));
    }
    // An encoded body is not edited.
    let mut ex = request(Some(Provider::Mcp), "/mcp", &[], single);
    assert!(ex
        .inject_mcp_trace_context(single, true, tp, None)
        .is_none());
    assert_eq!(
        finish(&mut ex).get_str(sc::MCP_TRACE_CONTEXT),
        Some("skipped_encoded")
    );
    // Too many messages to edit.
    let many = format!(
        "[{}]",
        vec![r#"{"jsonrpc":"2.0","method":"notifications/x"}"#; mcp::MAX_INJECT_MESSAGES + 1]
            .join(",")
    );
    let (v, r) = inject(many.as_bytes(), None);
    assert!(v.is_none());
    assert_eq!(r.get_str(sc::MCP_TRACE_CONTEXT), Some("skipped_too_large"));
    // Not MCP: nothing happens, nothing recorded.
    let mut ex = request(Some(Provider::OpenAi), "/v1/chat/completions", &[], single);
    assert!(ex
        .inject_mcp_trace_context(single, false, tp, None)
        .is_none());
    assert_eq!(finish(&mut ex).get(sc::MCP_TRACE_CONTEXT), None);
}

/// The legacy HTTP+SSE transport answers a POSTed request with `202
/// Accepted` (text/plain) and sends the JSON-RPC answer on the session's
/// SSE stream: the POST is recorded with its request, without a parse error.
#[test]
fn mcp_legacy_sse_post_accepted_is_not_a_parse_error() {
    let mut ex = request(
        Some(Provider::Mcp),
        "/messages/?session_id=4f2a",
        &[("content-type", "application/json")],
        br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo"}}"#,
    );
    ex.on_response_head(
        202,
        &headers(&[("content-type", "text/plain; charset=utf-8")]),
    );
    ex.on_response_chunk(b"Accepted");
    let r = finish(&mut ex);
    assert_eq!(r.get_str(sc::MCP_METHOD_NAME), Some("tools/call"));
    assert_eq!(r.get_str(sc::GEN_AI_TOOL_NAME), Some("echo"));
    assert_eq!(r.get(sc::PARSE_ERROR), None, "{}", r.to_json_line());
    assert_eq!(r.get(sc::ERROR_TYPE), None);
}

/// Whatever the body, the `_meta` edit either declines or yields valid
/// JSON in which every message with a method carries a traceparent, and
/// everything else as it was.
#[test]
fn mcp_meta_edit_is_valid_json_or_nothing() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let bodies: [&[u8]; 4] = [
        br#"[{"jsonrpc":"2.0","id":1,"method":"a","params":{"x":{"_meta":1},"_meta":{"k":"\"}"}}},{"jsonrpc":"2.0","method":"b"}, 3, {"id":2,"result":{}}]"#,
        br#" { "method" : "tools/call" , "params" : { } } "#,
        br#"{"method":"x","params":{"_meta":{ "tracestate":"a=b" }}}"#,
        br#"[{"method":"m","params":{"_meta":{"traceparent":"t"}}},{"method":"n"}]"#,
    ];
    for body in bodies {
        let mut variants: Vec<Vec<u8>> = (0..=body.len()).map(|i| body[..i].to_vec()).collect();
        for i in 0..body.len() {
            for b in [b'{', b'}', b'"', b',', b'[', b' '] {
                let mut v = body.to_vec();
                v[i] = b;
                variants.push(v);
            }
        }
        for v in variants {
            let Ok(plan) = mcp::plan_meta(&v) else {
                continue;
            };
            let out = plan.apply(&v, tp, Some("k=v"));
            let got: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!(
                    "{e}: {} -> {}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(&out)
                )
            });
            let before: serde_json::Value = serde_json::from_slice(&v).unwrap();
            let (got, before) = match (got, before) {
                (serde_json::Value::Array(a), serde_json::Value::Array(b)) => (a, b),
                (a, b) => (vec![a], vec![b]),
            };
            assert_eq!(got.len(), before.len());
            for (g, b) in got.iter().zip(&before) {
                if b.get("method").is_some() && b.is_object() {
                    assert!(g["params"]["_meta"]["traceparent"].is_string(), "{g}");
                    let mut g = g.clone();
                    let mut b = b.clone();
                    for m in [&mut g, &mut b] {
                        if let Some(p) = m.get_mut("params").and_then(|p| p.as_object_mut()) {
                            if let Some(meta) = p.get_mut("_meta").and_then(|x| x.as_object_mut()) {
                                meta.remove("traceparent");
                                meta.remove("tracestate");
                                if meta.is_empty() {
                                    p.remove("_meta");
                                }
                            }
                            if p.is_empty() {
                                m.as_object_mut().unwrap().remove("params");
                            }
                        }
                    }
                    assert_eq!(g, b);
                } else {
                    assert_eq!(g, b);
                }
            }
        }
    }
}

// ------------------------------------------- MCP legacy HTTP+SSE transport

/// The stream of the official SDK's `SseServerTransport` (`mcp` 1.x): the
/// endpoint first, then JSON-RPC messages, `\r\n` line ends.
const LEGACY_STREAM: &[u8] = b"event: endpoint\r\ndata: /messages/?session_id=9f2c\r\n\r\n\
: ping - 2026-12-03 21:40:00\r\n\r\n\
event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"protocolVersion\":\"2024-11-05\",\"capabilities\":{}}}\r\n\r\n\
event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\r\n\r\n\
event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\n\r\n\
event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"content\":[],\"isError\":true}}\r\n\r\n\
event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"s-3\",\"error\":{\"code\":-32601,\"message\":\"no\"}}\r\n\r\n";

#[test]
fn a_legacy_stream_is_followed_event_by_event_at_any_chunking() {
    for split in 1..LEGACY_STREAM.len() {
        let mut ex = Exchange::new(Some(Target::from(Provider::Mcp)), Limits::default());
        ex.on_request(
            &Method::GET,
            "/sse",
            &headers(&[("accept", "text/event-stream")]),
            b"",
        );
        ex.on_response_head(
            200,
            &headers(&[("content-type", "text/event-stream; charset=utf-8")]),
        );
        assert!(ex.follows_mcp_stream());
        let mut events = Vec::new();
        let (a, b) = LEGACY_STREAM.split_at(split);
        ex.on_response_chunk(a);
        ex.take_mcp_stream_events(&mut events);
        let first = events.len();
        ex.on_response_chunk(b);
        ex.take_mcp_stream_events(&mut events);
        // The endpoint comes out as soon as its blank line passed, not at
        // the end of the stream.
        let endpoint_end = LEGACY_STREAM
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        assert_eq!(first > 0, split >= endpoint_end - 1, "split {split}");
        assert_eq!(events.len(), 4, "split {split}: {events:?}");
        assert_eq!(
            events[0],
            StreamEvent::Endpoint {
                host: None,
                path_and_query: "/messages/?session_id=9f2c".into()
            }
        );
        let answers: Vec<(String, McpOutcome, Option<String>)> = events[1..]
            .iter()
            .map(|e| match e {
                StreamEvent::Answer(a) => {
                    (a.id.clone(), a.outcome.clone(), a.rpc_status_code.clone())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            answers,
            vec![
                ("0".into(), McpOutcome::Ok, None),
                ("2".into(), McpOutcome::Error("tool_error".into()), None),
                (
                    "s-3".into(),
                    McpOutcome::Error("-32601".into()),
                    Some("-32601".into())
                ),
            ]
        );
        let StreamEvent::Answer(init) = &events[1] else {
            unreachable!()
        };
        assert_eq!(init.protocol_version.as_deref(), Some("2024-11-05"));
        assert!(init.body.starts_with(b"{\"jsonrpc\""));
        let r = finish(&mut ex);
        assert_eq!(s(&r, sc::MCP_TRANSPORT).as_deref(), Some("sse"));
        assert_eq!(
            s(&r, sc::MCP_SSE_ENDPOINT).as_deref(),
            Some("/messages/?session_id=9f2c")
        );
        assert_eq!(s(&r, sc::MCP_SESSION_ID).as_deref(), Some("9f2c"));
        assert_eq!(r.get_i64(sc::MCP_SSE_MESSAGES), Some(5));
        assert!(r.get(sc::PARSE_ERROR).is_none(), "{}", r.to_json_line());
    }
}

#[test]
fn a_legacy_post_is_a_request_to_match_and_streamable_http_is_not_followed() {
    let mut ex = request(
        Some(Provider::Mcp),
        "/messages/?session_id=9f2c",
        &[("content-type", "application/json")],
        br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo"}}"#,
    );
    assert_eq!(ex.mcp_request(), Some(("/messages/?session_id=9f2c", "4")));
    ex.on_response_head(202, &headers(&[("content-type", "text/plain")]));
    assert!(!ex.follows_mcp_stream());
    let r = finish(&mut ex);
    assert_eq!(s(&r, sc::MCP_SESSION_ID).as_deref(), Some("9f2c"));
    // Notifications, client responses and batches are not matched.
    for body in [
        &br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#[..],
        br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
    ] {
        let ex = request(Some(Provider::Mcp), "/messages/", &[], body);
        assert_eq!(ex.mcp_request(), None, "{}", String::from_utf8_lossy(body));
    }
    // A streamable-HTTP POST answered with a stream is parsed as before.
    let mut ex = request(
        Some(Provider::Mcp),
        "/mcp",
        &[("content-type", "application/json")],
        br#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#,
    );
    ex.on_response_head(200, &headers(&[("content-type", "text/event-stream")]));
    assert!(!ex.follows_mcp_stream());
}

#[test]
fn legacy_endpoints_resolve_like_a_browser_would() {
    let r = |base: &str, data: &str| mcp::resolve_endpoint(base, data.as_bytes());
    assert_eq!(
        r("/sse", "/messages/?session_id=a"),
        Some((None, "/messages/?session_id=a".into()))
    );
    assert_eq!(
        r("/v1/sse?x=1", "messages?session_id=a"),
        Some((None, "/v1/messages?session_id=a".into()))
    );
    assert_eq!(r("/sse", "?s=1"), Some((None, "/sse?s=1".into())));
    assert_eq!(
        r("/sse", "https://MCP.example:8443/rpc?s=1"),
        Some((Some("mcp.example".into()), "/rpc?s=1".into()))
    );
    assert_eq!(
        r("/sse", "http://[::1]:80?s=1"),
        Some((Some("::1".into()), "/?s=1".into()))
    );
    assert_eq!(r("/sse", "//evil.example/x"), None);
    assert_eq!(r("/sse", ""), None);
    assert_eq!(r("/sse", "/a b"), None);
    assert_eq!(r("/sse", &"/x".repeat(2000)), None);
    assert_eq!(
        mcp::endpoint_session_id("/messages/?a=1&session_id=ab%20c"),
        Some("ab c".into())
    );
    assert_eq!(mcp::endpoint_session_id("/messages/?session_id="), None);
}

#[test]
fn a_legacy_stream_queues_a_bounded_number_of_events() {
    let mut st = mcp::Stream::new("/sse");
    for i in 0..(mcp::MAX_STREAM_EVENTS + 10) {
        st.event(
            "message",
            format!(r#"{{"jsonrpc":"2.0","id":{i},"result":{{}}}}"#).as_bytes(),
        );
    }
    let mut out = Vec::new();
    st.take(&mut out);
    assert_eq!(out.len(), mcp::MAX_STREAM_EVENTS);
    assert_eq!(st.dropped, 10);
    // A stream no one pairs keeps nothing.
    let mut quiet = mcp::Stream::new("/sse");
    quiet.ignore();
    quiet.event("endpoint", b"/m?s=1");
    quiet.event("message", br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
    let mut none = Vec::new();
    quiet.take(&mut none);
    assert!(none.is_empty());
    assert_eq!(quiet.messages, 1);
    assert_eq!(quiet.endpoint.as_deref(), Some("/m?s=1"));
    st.event("message", b"not json");
    st.event(
        "message",
        br#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"error":{}}]"#,
    );
    out.clear();
    st.take(&mut out);
    assert_eq!(out.len(), 2);
}
