//! `genai_exchange` and `mcp`: whole exchanges through
//! [`egret::genai::Exchange`], as the proxy drives it (request head and
//! body, optional usage rewrite, response head, response chunks with the
//! optional usage filter, `finish` into a record).
//!
//! `genai_exchange` layout: 12 control bytes, a chunking [`Plan`], then
//! `request body` [`SEP`] `response body` (without a separator the payload
//! is all response):
//!
//! | byte | meaning |
//! |---|---|
//! | 0 | provider (mod 7): 0 none, 1 detect from host (high nibble) + path, 2 anthropic, 3 openai, 4 google, 5 ollama, 6 mcp |
//! | 1 | path ([`PATHS`]) |
//! | 2 | method (POST, GET, PUT, DELETE) + request content type (high nibble) |
//! | 3 | request content-encoding ([`ENCODINGS`]) + bit 4: really compress + bits 5-6: content-length exact / +1 / none |
//! | 4 | flags: bit 0 rewrite for usage when asked, bit 1 use the usage filter, bit 2 request mcp-session-id, bit 3 response mcp-session-id, bit 4 mcp-protocol-version |
//! | 5 | status ([`STATUSES`]) |
//! | 6 | response content type ([`CONTENT_TYPES`]) |
//! | 7 | response content-encoding ([`ENCODINGS`]) + bit 4: really compress |
//! | 8 | `max_json_bytes` = 2^(6 + b % 15) |
//! | 9 | `max_event_bytes` = 2^(4 + b % 14) |
//! | 10 | `max_decoded_bytes` = 2^(8 + b % 19) |
//! | 11 | reserved |
//!
//! `mcp` layout: 4 control bytes (provider: even → none, so MCP must be
//! recognised from the body; odd → a route naming `mcp`; response content
//! type; status; flags as byte 4 above, plus bit 5: a `GET /sse`, the
//! legacy HTTP+SSE transport's stream, followed event by event), a
//! [`Plan`], then request [`SEP`] response.
//!
//! Invariants (both): no panic; heap use bounded by the limits, never by
//! how much the response decodes to; `finish` is idempotent; provider and
//! token attributes well-formed; `egret.parse.error` one of the documented
//! values; a usage rewrite yields valid JSON that asks for usage and keeps
//! every other top-level field; the request fields the lax scanner reports
//! (`model`, MCP `method`, `id`, tool/prompt/resource names) equal what a
//! full JSON parser reads from a valid body ([`TopLevel`]).
use std::io::Write;

use egret::genai::{Api, Exchange, Limits, Provider, Target, UsageChunkFilter};
use egret::record::Record;
use egret::semconv as sc;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::input::{two_parts, Plan, Reader};
use crate::oracle::{Scalar, TopLevel};
use crate::track;

pub const PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/messages",
    "/v1beta/models/gemini-2.5-flash:generateContent",
    "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    "/v1beta/models/text-embedding-004:embedContent",
    "/mcp",
    "/openai/v1/chat/completions/?x=1",
    "/v1beta/models/:generateContent",
    "/",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/v1/projects/p/locations/l/publishers/anthropic/models/c%40v:streamRawPredict",
    "/openai/deployments/d/chat/completions?api-version=2024-10-21",
    "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse",
    "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream",
    "/model/us.anthropic.claude-3-5-haiku-20241022-v1:0/invoke",
    "/model/meta.llama3-8b-instruct-v1%3A0/invoke-with-response-stream",
];

const HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com:443",
    "generativelanguage.googleapis.com.",
    "API.OPENAI.COM",
    "example.com",
    "ollama.com",
    "us-east5-aiplatform.googleapis.com",
    "egret.openai.azure.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
];

/// `(header value, how to really encode the body)`.
pub const ENCODINGS: &[(Option<&str>, Codec)] = &[
    (None, Codec::Identity),
    (Some("gzip"), Codec::Gzip),
    (Some("deflate"), Codec::Zlib),
    (Some("deflate"), Codec::RawDeflate),
    (Some("br"), Codec::Brotli),
    (Some("identity"), Codec::Identity),
    (Some("x-gzip"), Codec::Gzip),
    (Some("compress"), Codec::Identity),
    (Some("gzip, br"), Codec::Gzip),
    (Some(" GZIP "), Codec::Gzip),
];

pub const STATUSES: &[u16] = &[
    200, 200, 200, 201, 202, 204, 400, 401, 404, 429, 500, 503, 101, 304, 299, 599,
];

pub const CONTENT_TYPES: &[Option<&str>] = &[
    Some("text/event-stream"),
    Some("application/json"),
    None,
    Some("text/event-stream; charset=utf-8"),
    Some("application/problem+json"),
    Some("text/plain"),
    Some(""),
    Some("TEXT/EVENT-STREAM"),
    Some("application/x-ndjson"),
    Some("application/vnd.amazon.eventstream"),
];

const REQUEST_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    None,
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Identity,
    Gzip,
    Zlib,
    RawDeflate,
    Brotli,
}

impl Codec {
    pub fn encode(self, data: &[u8]) -> Vec<u8> {
        use flate2::{write, Compression};
        let c = Compression::fast();
        match self {
            Codec::Identity => data.to_vec(),
            Codec::Gzip => {
                let mut e = write::GzEncoder::new(Vec::new(), c);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::Zlib => {
                let mut e = write::ZlibEncoder::new(Vec::new(), c);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::RawDeflate => {
                let mut e = write::DeflateEncoder::new(Vec::new(), c);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::Brotli => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 1, 22);
                    w.write_all(data).unwrap();
                }
                out
            }
        }
    }
}

fn pick<T: Copy>(table: &[T], b: u8) -> T {
    table[usize::from(b) % table.len()]
}

fn header(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.append(HeaderName::from_static(name), v);
    }
}

/// One exchange to drive.
pub struct Case<'a> {
    pub provider: Option<Target>,
    pub method: Method,
    pub path: &'a str,
    pub req_headers: HeaderMap,
    /// The body as the client wrote it (before any content-encoding).
    pub req_plain: &'a [u8],
    /// The body as sent (encoded when the case says so).
    pub req_sent: Vec<u8>,
    pub rewrite: bool,
    pub filter: bool,
    pub status: u16,
    pub resp_headers: HeaderMap,
    pub resp_sent: Vec<u8>,
    pub plan: Plan<'a>,
    pub limits: Limits,
}

/// What the run produced.
pub struct Outcome {
    pub record: Record,
    pub api: Api,
    pub provider: Option<Provider>,
    pub rewritten: Option<Vec<u8>>,
    pub filtered: bool,
}

pub fn drive(case: &Case<'_>) -> Outcome {
    let chunks = case.plan.split(&case.resp_sent);
    let base = track::start();

    let mut ex = Exchange::new(case.provider.clone(), case.limits);
    ex.on_request(&case.method, case.path, &case.req_headers, &case.req_sent);
    let mut rewritten = None;
    if case.rewrite && ex.wants_usage_rewrite() {
        rewritten = ex.rewrite_request_body(&case.req_sent);
    }
    ex.on_response_head(case.status, &case.resp_headers);
    let mut filter: Option<UsageChunkFilter> = if case.filter { ex.usage_filter() } else { None };
    let filtered = filter.is_some();
    let mut to_client = Vec::new();
    for c in &chunks {
        ex.on_response_chunk(c);
        match filter.as_mut() {
            Some(f) => f.push(c, &mut to_client),
            None => to_client.extend_from_slice(c),
        }
    }
    if let Some(f) = filter.as_mut() {
        f.finish(&mut to_client);
    }
    let mut record = Record::new("transaction");
    ex.finish(&mut record);

    let peak = track::peak_above(base);
    let l = case.limits;
    // Brotli's window (at most 16 MiB) and the decoders' fixed buffers, the
    // kept JSON body and SSE buffers (with Vec growth), up to 64 finish
    // reasons of one event each, and what is proportional to the input
    // (the client's copy, a rewritten request, strings read from it).
    let bound = (17 << 20)
        + 4 * l.max_json_bytes
        + 140 * l.max_event_bytes
        + 4 * (case.req_sent.len() + case.resp_sent.len())
        + (1 << 20);
    assert!(
        peak <= bound,
        "exchange held {peak} bytes (bound {bound}) for limits {l:?}"
    );
    assert!(to_client.len() <= case.resp_sent.len());
    if !filtered {
        assert!(to_client == case.resp_sent, "forwarded bytes changed");
    }

    let snapshot = record.clone();
    ex.finish(&mut record);
    assert_eq!(record, snapshot, "a second finish changed the record");

    Outcome {
        record,
        api: ex.api(),
        provider: ex.provider(),
        rewritten,
        filtered,
    }
}

const PARSE_ERRORS: &[&str] = &[
    "invalid_json",
    "truncated",
    "sse_event_too_large",
    "body_too_large",
    "decode_failed",
    "decoded_too_large",
    "unsupported_content_encoding",
    "unsupported_content_type",
    "eventstream_frame_too_large",
    "eventstream_invalid_frame",
];

/// Checks that hold for every exchange.
fn check_common(case: &Case<'_>, out: &Outcome) {
    let rec = &out.record;
    // The target's name; without one, only Ollama's own API names itself.
    let name = match &case.provider {
        Some(t) => t.name.as_deref(),
        None => (out.provider == Some(Provider::Ollama)).then_some("ollama"),
    };
    match name {
        Some(name) => {
            assert_eq!(rec.get_str(sc::GEN_AI_PROVIDER_NAME), Some(name));
            assert_eq!(rec.get_str(sc::GEN_AI_SYSTEM), Some(name));
        }
        None => assert_eq!(rec.get(sc::GEN_AI_PROVIDER_NAME), None),
    }
    if out.provider.is_none() {
        // Plain HTTP: the parsers write nothing.
        let written: Vec<&str> = rec
            .iter()
            .map(|(k, _)| k)
            .filter(|k| {
                k.starts_with("gen_ai.") || k.starts_with("mcp.") || k.starts_with("egret.parse")
            })
            .collect();
        assert!(written.is_empty(), "plain HTTP got {written:?}");
    }
    for key in [
        sc::GEN_AI_USAGE_INPUT_TOKENS,
        sc::GEN_AI_USAGE_OUTPUT_TOKENS,
        sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    ] {
        if let Some(v) = rec.get(key) {
            assert!(v.as_i64().is_some_and(|n| n >= 0), "{key} = {v:?}");
        }
    }
    if let Some(e) = rec.get(sc::PARSE_ERROR) {
        assert!(
            e.as_str().is_some_and(|e| PARSE_ERRORS.contains(&e)),
            "parse error {e:?}"
        );
    }
    if rec.get_bool(sc::BODY_USAGE_VISIBLE) == Some(false) {
        assert!(
            out.rewritten.is_some() && out.filtered,
            "usage hidden without a rewrite"
        );
    }
    if let Some(new) = &out.rewritten {
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(new).is_ok(),
            "a rewritten body is valid JSON"
        );
        if let (Some(old), Some(top)) = (TopLevel::parse(&case.req_sent), TopLevel::parse(new)) {
            assert_eq!(
                top.get(Some("stream_options"), "include_usage"),
                Some(&Scalar::Bool(true))
            );
            let keep = |t: &TopLevel| -> Vec<_> {
                t.fields
                    .iter()
                    .filter(|(p, k, _)| {
                        p.as_deref() != Some("stream_options") && k != "stream_options"
                    })
                    .cloned()
                    .collect()
            };
            assert_eq!(keep(&old), keep(&top), "the rewrite changed other fields");
        }
    }
    // The lax request scanner agrees with a full parser on valid bodies.
    let identity = case
        .req_headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity"));
    let top = if identity {
        TopLevel::parse(case.req_plain)
    } else {
        None
    };
    let Some(top) = top else { return };
    match out.api {
        Api::AnthropicMessages
        | Api::OpenAiChat
        | Api::OpenAiCompletions
        | Api::OpenAiResponses
        | Api::OpenAiEmbeddings => {
            assert_eq!(
                rec.get_str(sc::GEN_AI_REQUEST_MODEL),
                top.get(None, "model").and_then(Scalar::as_str),
                "request model"
            );
        }
        Api::Mcp if case.method == Method::POST && !case.req_plain.is_empty() => {
            let method = top.get(None, "method").and_then(Scalar::as_str);
            assert_eq!(rec.get_str(sc::MCP_METHOD_NAME), method, "mcp method");
            assert_eq!(
                rec.get_str(sc::JSONRPC_REQUEST_ID).map(str::to_owned),
                top.get(None, "id").and_then(Scalar::as_id),
                "json-rpc id"
            );
            let name = top.get(Some("params"), "name").and_then(Scalar::as_str);
            let uri = top.get(Some("params"), "uri").and_then(Scalar::as_str);
            let (tool, prompt) = match method {
                Some("tools/call") => (name, None),
                Some("prompts/get") => (None, name),
                _ => (None, None),
            };
            assert_eq!(rec.get_str(sc::GEN_AI_TOOL_NAME), tool, "tool name");
            assert_eq!(rec.get_str(sc::GEN_AI_PROMPT_NAME), prompt, "prompt name");
            let resource = matches!(
                method,
                Some(
                    "resources/read"
                        | "resources/subscribe"
                        | "resources/unsubscribe"
                        | "notifications/resources/updated"
                )
            );
            assert_eq!(
                rec.get_str(sc::MCP_RESOURCE_URI),
                uri.filter(|_| resource),
                "resource uri"
            );
        }
        _ => {}
    }
}

fn limits(r: &mut Reader<'_>) -> Limits {
    Limits {
        max_json_bytes: 1 << (6 + r.byte() % 15),
        max_event_bytes: 1 << (4 + r.byte() % 14),
        max_decoded_bytes: 1 << (8 + r.byte() % 19),
    }
}

fn content_length(h: &mut HeaderMap, mode: u8, len: usize) {
    match mode % 4 {
        0 => header(h, "content-length", &len.to_string()),
        1 => header(h, "content-length", &(len + 1).to_string()),
        _ => {}
    }
}

pub fn genai_exchange(data: &[u8]) {
    let mut r = Reader::new(data);
    let p = r.byte();
    let path = pick(PATHS, r.byte());
    let m = r.byte();
    let req_enc = r.byte();
    let flags = r.byte();
    let status = pick(STATUSES, r.byte());
    let resp_type = pick(CONTENT_TYPES, r.byte());
    let resp_enc = r.byte();
    let limits = limits(&mut r);
    let _reserved = r.byte();
    let plan = Plan::read(&mut r);
    let (req, resp) = two_parts(r.rest());

    let provider = match p % 7 {
        0 => None,
        1 => Target::detect(pick(HOSTS, p >> 4), path),
        2 => Some(Provider::Anthropic.into()),
        3 => Some(Provider::OpenAi.into()),
        4 => Some(Provider::Google.into()),
        5 => Some(Provider::Ollama.into()),
        _ => Some(Provider::Mcp.into()),
    };
    let method =
        [Method::POST, Method::GET, Method::PUT, Method::DELETE][usize::from(m & 3)].clone();
    let mut req_headers = HeaderMap::new();
    if let Some(t) = pick(REQUEST_TYPES, m >> 4) {
        header(&mut req_headers, "content-type", t);
    }
    let (enc_name, codec) = pick(ENCODINGS, req_enc & 0x0f);
    if let Some(e) = enc_name {
        header(&mut req_headers, "content-encoding", e);
    }
    let req_sent = if req_enc & 0x10 != 0 {
        codec.encode(req)
    } else {
        req.to_vec()
    };
    content_length(&mut req_headers, req_enc >> 5, req_sent.len());
    if flags & 4 != 0 {
        header(&mut req_headers, "mcp-session-id", "s-1");
    }
    if flags & 16 != 0 {
        header(&mut req_headers, "mcp-protocol-version", "2025-06-18");
    }
    let mut resp_headers = HeaderMap::new();
    if let Some(t) = resp_type {
        header(&mut resp_headers, "content-type", t);
    }
    let (enc_name, codec) = pick(ENCODINGS, resp_enc & 0x0f);
    if let Some(e) = enc_name {
        header(&mut resp_headers, "content-encoding", e);
    }
    if flags & 8 != 0 {
        header(&mut resp_headers, "mcp-session-id", "s-2");
    }
    let resp_sent = if resp_enc & 0x10 != 0 {
        codec.encode(resp)
    } else {
        resp.to_vec()
    };

    let case = Case {
        provider,
        method,
        path,
        req_headers,
        req_plain: req,
        req_sent,
        rewrite: flags & 1 != 0,
        filter: flags & 2 != 0,
        status,
        resp_headers,
        resp_sent,
        plan,
        limits,
    };
    let out = drive(&case);
    check_common(&case, &out);
}

pub fn mcp(data: &[u8]) {
    let mut r = Reader::new(data);
    let p = r.byte();
    let resp_type = pick(CONTENT_TYPES, r.byte());
    let status = pick(STATUSES, r.byte());
    let flags = r.byte();
    let plan = Plan::read(&mut r);
    let (req, resp) = two_parts(r.rest());

    let provider = (p & 1 == 1).then_some(Target::from(Provider::Mcp));
    let mut req_headers = HeaderMap::new();
    header(&mut req_headers, "content-type", "application/json");
    header(
        &mut req_headers,
        "accept",
        "application/json, text/event-stream",
    );
    content_length(&mut req_headers, (p >> 1) & 3, req.len());
    if flags & 4 != 0 {
        header(&mut req_headers, "mcp-session-id", "s-1");
    }
    if flags & 16 != 0 {
        header(&mut req_headers, "mcp-protocol-version", "2025-06-18");
    }
    let mut resp_headers = HeaderMap::new();
    if let Some(t) = resp_type {
        header(&mut resp_headers, "content-type", t);
    }
    if flags & 8 != 0 {
        header(&mut resp_headers, "mcp-session-id", "s-2");
    }
    let legacy = flags & 32 != 0;
    let case = Case {
        provider: provider.clone(),
        method: if legacy { Method::GET } else { Method::POST },
        path: if legacy { "/sse" } else { "/mcp" },
        req_headers,
        req_plain: req,
        req_sent: req.to_vec(),
        rewrite: false,
        filter: false,
        status,
        resp_headers,
        resp_sent: resp.to_vec(),
        plan,
        limits: Limits::default(),
    };
    let out = drive(&case);
    check_common(&case, &out);

    // Without a route, a POST is MCP exactly when its body is a JSON-RPC
    // 2.0 request (messages are only ever POSTed; an unrouted GET with a
    // body — the legacy flag without a route — is not MCP).
    if provider.is_none() && !legacy {
        if let Some(top) = TopLevel::parse(req) {
            let jsonrpc = top.get(None, "jsonrpc") == Some(&Scalar::Str("2.0".into()));
            let method = top.get(None, "method").and_then(Scalar::as_str).is_some();
            assert_eq!(
                out.provider == Some(Provider::Mcp),
                jsonrpc && method,
                "MCP detection on a valid body"
            );
        }
    }
    // A routed GET answered with a stream is followed as a legacy stream.
    let sse = resp_type.is_some_and(|t| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("text/event-stream")
    });
    if legacy && provider.is_some() && sse && (200..300).contains(&status) && status != 202 {
        let rec = &out.record;
        assert_eq!(rec.get_str(sc::MCP_TRANSPORT), Some("sse"));
        assert!(rec.get_i64(sc::MCP_SSE_MESSAGES).is_some_and(|n| n >= 0));
        if let Some(e) = rec.get_str(sc::MCP_SSE_ENDPOINT) {
            assert!(e.starts_with('/'), "endpoint {e:?}");
        }
    }
    if out.provider == Some(Provider::Mcp) {
        let rec = &out.record;
        assert_eq!(rec.get(sc::GEN_AI_PROVIDER_NAME), None);
        if let Some(code) = rec.get_str(sc::RPC_RESPONSE_STATUS_CODE) {
            assert!(
                code == "error" || code.parse::<i64>().is_ok(),
                "rpc status code {code:?}"
            );
        }
        let session = rec.get_str(sc::MCP_SESSION_ID);
        if flags & 4 != 0 {
            assert_eq!(session, Some("s-1"));
        } else if flags & 8 != 0 {
            assert_eq!(session, Some("s-2"));
        }
    }
}
