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
//!   generativelanguage.googleapis.com,
//!   bedrock-runtime.us-east-1.amazonaws.com, mcp.local, localhost,
//!   127.0.0.1, ::1.
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
//! * OpenAI over WebSocket: `GET /v1/realtime?model=…` (Realtime:
//!   `session.created`, then per `response.create` the `response.created` …
//!   `response.output_text.delta` … `response.done` sequence with usage) and
//!   `GET /v1/responses` (Responses WebSocket mode: per `response.create`
//!   the SSE stream's events as text messages); see `websocket.rs`.
//! * Tool calls: a Chat Completions or Messages request that offers `tools`
//!   (and whose last message is not a tool's result) is answered with a
//!   call of the first tool, arguments `{"query": <first three words of the
//!   last user text>, "limit": 3}`: OpenAI `tool_calls` / `finish_reason:
//!   tool_calls` (streamed: id and name first, then the arguments in 7-char
//!   fragments), Anthropic a `tool_use` block / `stop_reason: tool_use`
//!   (streamed: `input_json_delta` fragments).
//! * Google: `POST /v1beta/models/{model}:generateContent` and
//!   `:streamGenerateContent?alt=sse` (`\r\n\r\n` separators, cumulative
//!   `usageMetadata` in every chunk). Without `alt=sse` the stream is a JSON
//!   array, as the real API does.
//! * Ollama: `POST /api/chat`, `/api/generate` (NDJSON streams unless
//!   `"stream": false`), `/api/embed`.
//! * The same APIs where clouds and compatible servers mount them:
//!   `/openai/v1/…` (Groq, Azure v1), `/api/v1/…` (OpenRouter),
//!   `/inference/v1/…` (Fireworks), `/openai/deployments/{d}/…?api-version=`
//!   (Azure; model = deployment when the body has none), Vertex AI's
//!   `/v1*/projects/{p}/locations/{l}/publishers/google/models/{m}:{method}`,
//!   `…/publishers/anthropic/models/{m}:rawPredict|streamRawPredict`
//!   (requires `anthropic_version`) and `…/endpoints/openapi/chat/completions`.
//! * AWS Bedrock Runtime: `POST /model/{modelId}/converse`,
//!   `/converse-stream` (AWS event-stream framing), `/invoke` and
//!   `/invoke-with-response-stream` (Anthropic models), each request
//!   SigV4-verified with fixed test credentials (403 on a mismatch, as AWS
//!   answers); see `bedrock.rs` for the token rule and the wire details.
//! * MCP streamable HTTP at `/mcp`: POST `initialize` (answers with an
//!   `Mcp-Session-Id` header), notifications and client responses (202),
//!   `ping`, `tools/list`, `tools/call` (tools `echo` and `add`); DELETE ends
//!   the session; GET answers 405 (no server-initiated stream). Requests get
//!   an SSE stream when the client's Accept allows `text/event-stream`,
//!   otherwise JSON; `/mcp?format=json` forces JSON. `server/discover` is
//!   answered with method-not-found, so newer SDKs fall back to `initialize`.
//! * MCP's legacy HTTP+SSE transport (2024-11-05): `GET /sse` (the
//!   session's stream: `event: endpoint` first, then `event: message` with
//!   each answer) and `POST /messages/?session_id=…` (`202 Accepted`); tools
//!   `echo`, `add`, `fail` (isError) and `stall` (never answered); see
//!   `mcp_sse.rs`.
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

mod anthropic;
mod bedrock;
mod encoding;
mod google;
mod mcp;
mod mcp_sse;
mod ollama;
mod openai;
mod routing;
mod server;
mod shared;
mod sse;
mod tls;
mod tokens;
mod utility;
mod websocket;

use std::fs;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use http_body_util::combinators::BoxBody;

use crate::server::serve;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = BoxBody<Bytes, BoxError>;

const DEFAULT_NAMES: &str = "api.anthropic.com,api.openai.com,generativelanguage.googleapis.com,bedrock-runtime.us-east-1.amazonaws.com,mcp.local,localhost,127.0.0.1,::1";
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
    about = "Local HTTPS stand-in for the Anthropic, OpenAI, Google GenAI and AWS Bedrock APIs and an MCP server"
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
