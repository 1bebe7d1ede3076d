//! Provider parsers: turn one HTTP exchange with an LLM API or an MCP
//! server into `gen_ai.*` / `mcp.*` attributes, while the proxy streams it.
//!
//! Pure Rust, no I/O. The proxy drives one [`Exchange`] per HTTP exchange:
//!
//! ```
//! use egret::genai::{Exchange, Limits, Target};
//! use egret::record::Record;
//! use http::{HeaderMap, Method};
//!
//! // Route config may name the provider (`providers::RouteProvider`);
//! // otherwise it is found from the upstream host and path. `None` = not
//! // known yet: the request body may still show an MCP, OpenAI-style or
//! // Ollama call.
//! let target = Target::detect("api.openai.com", "/v1/chat/completions");
//! let mut ex = Exchange::new(target, Limits::default());
//!
//! let mut req_headers = HeaderMap::new();
//! req_headers.insert("content-type", "application/json".parse().unwrap());
//! let body = br#"{"model":"gpt-4o-mini","messages":[],"stream":true}"#;
//! // The captured request body prefix (the whole body when the proxy has it).
//! ex.on_request(&Method::POST, "/v1/chat/completions", &req_headers, body);
//! // Optional: ask upstream for usage the client did not request.
//! let sent = ex.rewrite_request_body(body).unwrap_or_else(|| body.to_vec());
//! assert!(sent.ends_with(br#""stream_options":{"include_usage":true}}"#));
//!
//! let mut resp_headers = HeaderMap::new();
//! resp_headers.insert("content-type", "text/event-stream".parse().unwrap());
//! ex.on_response_head(200, &resp_headers);
//! // Only after a rewrite: hides the extra usage chunk from the client.
//! let mut filter = ex.usage_filter();
//! let mut to_client = Vec::new();
//! for chunk in [
//!     &b"data: {\"id\":\"c1\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"[..],
//!     b"data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n",
//!     b"data: [DONE]\n\n",
//! ] {
//!     ex.on_response_chunk(chunk); // the upstream bytes, unfiltered
//!     match filter.as_mut() {
//!         Some(f) => f.push(chunk, &mut to_client),
//!         None => to_client.extend_from_slice(chunk),
//!     }
//! }
//! if let Some(f) = filter.as_mut() {
//!     f.finish(&mut to_client);
//! }
//! let mut record = Record::new("transaction");
//! ex.finish(&mut record);
//! assert_eq!(record.get_i64("gen_ai.usage.input_tokens"), Some(5));
//! assert_eq!(record.get_bool("egret.body.usage_visible"), Some(false));
//! assert!(!String::from_utf8_lossy(&to_client).contains("\"choices\":[]"));
//! ```
//!
//! Bounded state: request bodies are scanned in place; streamed responses go
//! through a streaming decoder (gzip / deflate / br / zstd, total decoded size
//! capped by [`Limits::max_decoded_bytes`]) into an incremental SSE parser
//! (one event at a time, at most [`Limits::max_event_bytes`]); non-streaming
//! JSON bodies are kept up to [`Limits::max_json_bytes`] and parsed once at
//! [`Exchange::finish`]. Whatever goes wrong with the *content* is never an
//! error for the proxy: it ends up as `egret.parse.error` on the record,
//! next to every attribute that could still be read.
//!
//! Names follow the OpenTelemetry GenAI semantic conventions v1.41.1:
//! `gen_ai.provider.name` well-known values `anthropic`, `openai`,
//! `gcp.gemini` (Gemini API; `gcp.vertex_ai` is Vertex AI, `gcp.gen_ai` any
//! Google endpoint); `gen_ai.operation.name` well-known values `chat`,
//! `text_completion`, `embeddings`, `generate_content`, `execute_tool`.
//! The deprecated `gen_ai.system` carries the same value as
//! `gen_ai.provider.name` for dashboards built on semconv ≤ 1.36 (records
//! keep it; OTLP sends it only with the gateway's `otlp.emitGenAiSystem`).

mod anthropic;
mod bedrock;
mod de;
pub mod decode;
pub mod eventstream;
mod google;
mod include_usage;
mod json_scan;
mod mcp;
pub mod messages;
mod ollama;
mod openai;
mod params;
pub mod realtime;
pub mod sse;
#[cfg(test)]
mod tests;
pub mod websocket;

use std::io::{self, Write};

use http::{HeaderMap, Method};

use crate::record::Record;
use crate::semconv as sc;

pub use bedrock::sigv4_signs;
pub use decode::Encoding;
pub use include_usage::{rewrite_request_for_usage, UsageChunkFilter};
pub use mcp::{
    endpoint_session_id, Answer as McpAnswer, Outcome as McpOutcome, StreamEvent,
    TRACE_CONTEXT_SKIPPED_SIGNED, TRACE_CONTEXT_SKIPPED_STREAMED, UNANSWERED as MCP_UNANSWERED,
};
pub use sse::{Block, SseEvent, SseParser};

use decode::Decoder;

pub use crate::providers::{Provider, Target};

/// The endpoint of a provider an exchange went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Anthropic `…/v1/messages`.
    AnthropicMessages,
    /// OpenAI `…/chat/completions`.
    OpenAiChat,
    /// OpenAI `…/completions` (legacy).
    OpenAiCompletions,
    /// OpenAI `…/responses`.
    OpenAiResponses,
    /// OpenAI `…/embeddings`.
    OpenAiEmbeddings,
    /// Gemini `models/{m}:generateContent`.
    GoogleGenerate,
    /// Gemini `models/{m}:streamGenerateContent`.
    GoogleStreamGenerate,
    /// Gemini `models/{m}:embedContent` / `:batchEmbedContents`.
    GoogleEmbed,
    /// Ollama `/api/chat`.
    OllamaChat,
    /// Ollama `/api/generate`.
    OllamaGenerate,
    /// Ollama `/api/embed` / `/api/embeddings`.
    OllamaEmbed,
    /// Any request to an MCP server.
    Mcp,
    /// Bedrock `/model/{id}/converse`.
    BedrockConverse,
    /// Bedrock `/model/{id}/converse-stream`.
    BedrockConverseStream,
    /// Bedrock `/model/{id}/invoke`.
    BedrockInvoke,
    /// Bedrock `/model/{id}/invoke-with-response-stream`.
    BedrockInvokeStream,
    /// OpenAI's Realtime API over WebSocket (a session's response records:
    /// [`realtime`]).
    OpenAiRealtime,
    /// OpenAI's Responses API in WebSocket mode.
    OpenAiResponsesWebSocket,
    /// Not an endpoint egret parses.
    Other,
}

impl Api {
    /// Every API egret parses, for [`Api::from_name`].
    const ALL: &'static [Api] = &[
        Api::AnthropicMessages,
        Api::OpenAiChat,
        Api::OpenAiCompletions,
        Api::OpenAiResponses,
        Api::OpenAiEmbeddings,
        Api::GoogleGenerate,
        Api::GoogleStreamGenerate,
        Api::GoogleEmbed,
        Api::OllamaChat,
        Api::OllamaGenerate,
        Api::OllamaEmbed,
        Api::Mcp,
        Api::BedrockConverse,
        Api::BedrockConverseStream,
        Api::BedrockInvoke,
        Api::BedrockInvokeStream,
        Api::OpenAiRealtime,
        Api::OpenAiResponsesWebSocket,
    ];

    /// The API's name on records (`egret.genai.api`); `None` for
    /// [`Api::Other`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Api::AnthropicMessages => "anthropic.messages",
            Api::OpenAiChat => "openai.chat_completions",
            Api::OpenAiCompletions => "openai.completions",
            Api::OpenAiResponses => "openai.responses",
            Api::OpenAiEmbeddings => "openai.embeddings",
            Api::GoogleGenerate => "gemini.generate_content",
            Api::GoogleStreamGenerate => "gemini.stream_generate_content",
            Api::GoogleEmbed => "gemini.embed_content",
            Api::OllamaChat => "ollama.chat",
            Api::OllamaGenerate => "ollama.generate",
            Api::OllamaEmbed => "ollama.embed",
            Api::Mcp => "mcp",
            Api::BedrockConverse => "bedrock.converse",
            Api::BedrockConverseStream => "bedrock.converse_stream",
            Api::BedrockInvoke => "bedrock.invoke_model",
            Api::BedrockInvokeStream => "bedrock.invoke_model_stream",
            Api::OpenAiRealtime => "openai.realtime",
            Api::OpenAiResponsesWebSocket => "openai.responses_websocket",
            Api::Other => return None,
        })
    }

    /// The API a record's `egret.genai.api` names.
    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.iter().copied().find(|a| a.name() == Some(name))
    }

    /// The endpoint for `path` (query allowed) at `provider`. Paths are
    /// matched by suffix so gateways that mount a provider's API under a
    /// prefix (`/openai/v1/chat/completions`) are recognised.
    pub fn classify(provider: Provider, path: &str) -> Api {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.strip_suffix('/').unwrap_or(path);
        let last = path.rsplit('/').next().unwrap_or("");
        match provider {
            Provider::Anthropic if path.ends_with("/v1/messages") => Api::AnthropicMessages,
            // Anthropic on Vertex AI: the model and the streaming are in
            // the path.
            Provider::Anthropic
                if path.contains("/publishers/anthropic/models/")
                    && (last.ends_with(":rawPredict") || last.ends_with(":streamRawPredict")) =>
            {
                Api::AnthropicMessages
            }
            Provider::Ollama if path.ends_with("/api/chat") => Api::OllamaChat,
            Provider::Ollama if path.ends_with("/api/generate") => Api::OllamaGenerate,
            Provider::Ollama
                if path.ends_with("/api/embed") || path.ends_with("/api/embeddings") =>
            {
                Api::OllamaEmbed
            }
            Provider::OpenAi if path.ends_with("/chat/completions") => Api::OpenAiChat,
            Provider::OpenAi if path.ends_with("/completions") => Api::OpenAiCompletions,
            Provider::OpenAi if path.ends_with("/responses") => Api::OpenAiResponses,
            Provider::OpenAi if path.ends_with("/embeddings") => Api::OpenAiEmbeddings,
            Provider::Google => match google::method_from_path(path) {
                Some("generateContent") => Api::GoogleGenerate,
                Some("streamGenerateContent") => Api::GoogleStreamGenerate,
                Some("embedContent" | "batchEmbedContents") => Api::GoogleEmbed,
                _ => Api::Other,
            },
            Provider::Mcp => Api::Mcp,
            Provider::Bedrock => bedrock::classify(path),
            _ => Api::Other,
        }
    }

    /// `gen_ai.operation.name` (MCP: decided by the JSON-RPC method).
    pub fn operation(self) -> Option<&'static str> {
        match self {
            Api::AnthropicMessages
            | Api::OpenAiChat
            | Api::OpenAiResponses
            | Api::OllamaChat
            | Api::BedrockConverse
            | Api::BedrockConverseStream
            | Api::OpenAiRealtime
            | Api::OpenAiResponsesWebSocket => Some("chat"),
            Api::OpenAiCompletions | Api::OllamaGenerate => Some("text_completion"),
            Api::OpenAiEmbeddings | Api::GoogleEmbed | Api::OllamaEmbed => Some("embeddings"),
            Api::GoogleGenerate | Api::GoogleStreamGenerate => Some("generate_content"),
            // Invoke: decided by the body (`bedrock` module docs).
            Api::BedrockInvoke | Api::BedrockInvokeStream => None,
            Api::Mcp | Api::Other => None,
        }
    }

    /// Endpoints that can stream (and so get `gen_ai.request.stream`).
    fn streams(self) -> bool {
        matches!(
            self,
            Api::AnthropicMessages
                | Api::OpenAiChat
                | Api::OpenAiCompletions
                | Api::OpenAiResponses
                | Api::GoogleGenerate
                | Api::GoogleStreamGenerate
                | Api::OllamaChat
                | Api::OllamaGenerate
                | Api::BedrockConverse
                | Api::BedrockConverseStream
                | Api::BedrockInvoke
                | Api::BedrockInvokeStream
        )
    }
}

/// Bounds on what one exchange may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest non-streaming JSON body kept for parsing (after decoding).
    /// Larger bodies are not parsed (`egret.parse.error = body_too_large`).
    pub max_json_bytes: usize,
    /// Largest single SSE event (and line). A larger event is skipped
    /// (`sse_event_too_large`); the stream goes on being parsed.
    pub max_event_bytes: usize,
    /// Largest total a `Content-Encoding` may decode to; decoding stops
    /// there (`decoded_too_large`). Identity bodies are not limited.
    pub max_decoded_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_bytes: 4 << 20,
            max_event_bytes: 4 << 20,
            max_decoded_bytes: 64 << 20,
        }
    }
}

/// Why (part of) an exchange could not be parsed: the value of
/// `egret.parse.error` (the first problem met; the attributes that could be
/// read are recorded anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A JSON body or event was not valid JSON.
    #[error("invalid_json")]
    InvalidJson,
    /// The body or stream ended early: mid-JSON, mid-event, or before the
    /// provider's end-of-stream marker.
    #[error("truncated")]
    Truncated,
    /// An SSE event exceeded [`Limits::max_event_bytes`].
    #[error("sse_event_too_large")]
    EventTooLarge,
    /// A JSON body exceeded [`Limits::max_json_bytes`].
    #[error("body_too_large")]
    BodyTooLarge,
    /// The `Content-Encoding` data was corrupt or cut short.
    #[error("decode_failed")]
    DecodeFailed,
    /// Decoding passed [`Limits::max_decoded_bytes`].
    #[error("decoded_too_large")]
    DecodedTooLarge,
    /// A `Content-Encoding` egret does not decode (stacked, `compress`, …).
    #[error("unsupported_content_encoding")]
    UnsupportedEncoding,
    /// A successful response with a content type that is neither JSON nor
    /// an event stream.
    #[error("unsupported_content_type")]
    UnsupportedContentType,
    /// An AWS event-stream message exceeded [`Limits::max_event_bytes`]
    /// (skipped; the stream goes on being parsed).
    #[error("eventstream_frame_too_large")]
    FrameTooLarge,
    /// An AWS event-stream message with a wrong CRC, malformed headers or
    /// an impossible length (or an invoke chunk that is not base64).
    #[error("eventstream_invalid_frame")]
    InvalidFrame,
}

impl ParseError {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::InvalidJson => "invalid_json",
            ParseError::Truncated => "truncated",
            ParseError::EventTooLarge => "sse_event_too_large",
            ParseError::BodyTooLarge => "body_too_large",
            ParseError::DecodeFailed => "decode_failed",
            ParseError::DecodedTooLarge => "decoded_too_large",
            ParseError::UnsupportedEncoding => "unsupported_content_encoding",
            ParseError::UnsupportedContentType => "unsupported_content_type",
            ParseError::FrameTooLarge => "eventstream_frame_too_large",
            ParseError::InvalidFrame => "eventstream_invalid_frame",
        }
    }
}

/// A `serde_json` failure as a [`ParseError`]: running out of input is
/// truncation, anything else invalid JSON.
fn json_error(e: &serde_json::Error) -> ParseError {
    if e.is_eof() {
        ParseError::Truncated
    } else {
        ParseError::InvalidJson
    }
}

/// Bytes kept from the end of a JSON body that outgrew
/// [`Limits::max_json_bytes`]: the usage objects sit at the end.
const SALVAGE_TAIL: usize = 64 * 1024;

/// Appends to a rolling tail of at most about `2 * SALVAGE_TAIL` bytes.
fn push_tail(tail: &mut Vec<u8>, buf: &[u8]) {
    if buf.len() >= SALVAGE_TAIL {
        tail.clear();
        tail.extend_from_slice(&buf[buf.len() - SALVAGE_TAIL..]);
        return;
    }
    tail.extend_from_slice(buf);
    if tail.len() > 2 * SALVAGE_TAIL {
        let cut = tail.len() - SALVAGE_TAIL;
        tail.drain(..cut);
    }
}

/// Best effort on the tail of an oversized JSON body: the value of the
/// last `"key":` occurrence that parses as `T` (searching backwards, so
/// the provider's trailing top-level field wins over text that happens to
/// contain the key).
fn salvage_value<'a, T: serde::Deserialize<'a>>(tail: &'a [u8], key: &str) -> Option<T> {
    let quoted = format!("\"{key}\"");
    for pos in memchr::memmem::rfind_iter(tail, quoted.as_bytes()) {
        let mut rest = &tail[pos + quoted.len()..];
        rest = rest.trim_ascii_start();
        let Some(after) = rest.strip_prefix(b":") else {
            continue;
        };
        let mut it =
            serde_json::Deserializer::from_slice(after.trim_ascii_start()).into_iter::<T>();
        if let Some(Ok(v)) = it.next() {
            return Some(v);
        }
    }
    None
}

/// A modality of the usage breakdown (the conventions name text, image and
/// audio; Gemini's VIDEO and DOCUMENT counts have no name there and are left
/// out of the breakdown — they stay in the totals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Modality {
    Text = 0,
    Image = 1,
    Audio = 2,
}

impl Modality {
    /// Gemini's `ModalityTokenCount.modality` (`TEXT`, `IMAGE`, `AUDIO`;
    /// `MODALITY_UNSPECIFIED` is text by the API's definition).
    pub(crate) fn from_gemini(m: &str) -> Option<Modality> {
        match m {
            "TEXT" | "MODALITY_UNSPECIFIED" => Some(Modality::Text),
            "IMAGE" => Some(Modality::Image),
            "AUDIO" => Some(Modality::Audio),
            _ => None,
        }
    }
}

/// Token counts by modality: `[text, image, audio]` for the input, the
/// cache-read part of it and the output. `None`: not reported.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct ModalityTokens {
    pub input: [Option<u64>; 3],
    pub cache_read: [Option<u64>; 3],
    pub output: [Option<u64>; 3],
}

impl ModalityTokens {
    /// Adds `n` to a slot (Gemini may list a modality more than once).
    pub(crate) fn add(slot: &mut [Option<u64>; 3], m: Modality, n: u64) {
        let s = &mut slot[m as usize];
        *s = Some(s.unwrap_or(0).saturating_add(n));
    }

    /// Writes the non-zero counts (the conventions recommend them "when
    /// reported by the provider and non-zero"; a count never reported is
    /// never written, as 0 or otherwise).
    fn write(&self, record: &mut Record) {
        for (part, names) in [&self.input, &self.cache_read, &self.output]
            .into_iter()
            .zip(sc::GEN_AI_USAGE_BY_MODALITY)
        {
            for (v, name) in part.iter().zip(names) {
                if let Some(n) = v.filter(|n| *n > 0) {
                    record.set(name, n);
                }
            }
        }
    }
}

/// What the response told, in semconv terms.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Findings {
    pub response_model: Option<String>,
    pub response_id: Option<String>,
    /// `(choice index, reason)`, one per index.
    pub finish_reasons: Vec<(u32, String)>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    /// Tokens written to the provider's prompt cache
    /// (`gen_ai.usage.cache_write.input_tokens`).
    pub cache_creation_input_tokens: Option<u64>,
    /// Of those, the ones written with a one-hour time-to-live (Anthropic's
    /// `usage.cache_creation.ephemeral_1h_input_tokens`).
    pub cache_write_1h_input_tokens: Option<u64>,
    /// Reasoning ("thinking") tokens, part of `output_tokens`.
    pub reasoning_output_tokens: Option<u64>,
    /// Usage split by modality, as the provider reported it.
    pub modality: ModalityTokens,
    /// Provider / JSON-RPC error code, for `error.type`.
    pub error_type: Option<String>,
    pub rpc_status_code: Option<String>,
    pub mcp_protocol_version: Option<String>,
    /// The provider's end marker (or a whole JSON body) was seen.
    pub complete: bool,
    /// A Chat Completions usage-only chunk (`choices: []`) was seen.
    pub usage_only_chunk: bool,
    /// `gen_ai.operation.name` decided by the response's parser (Bedrock
    /// invoke), over [`Api::operation`].
    pub operation: Option<&'static str>,
    pub error: Option<ParseError>,
}

impl Findings {
    /// Sets `slot` to `v`, allocating only when the value changes.
    fn set_str(slot: &mut Option<String>, v: &str) {
        if slot.as_deref() != Some(v) {
            *slot = Some(v.to_owned());
        }
    }

    fn set_reason(&mut self, index: u32, reason: &str) {
        if let Some(slot) = self.finish_reasons.iter_mut().find(|(i, _)| *i == index) {
            if slot.1 != reason {
                slot.1 = reason.to_owned();
            }
        } else if self.finish_reasons.len() < de::MAX_REASONS {
            self.finish_reasons.push((index, reason.to_owned()));
        }
    }

    fn flag(&mut self, e: ParseError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

/// The per-provider response accumulator.
#[derive(Debug)]
enum Parser {
    Anthropic(anthropic::State),
    Chat(openai::Chat),
    Responses(openai::Responses),
    Google(google::State),
    Ollama(ollama::State),
    Mcp(mcp::State),
    /// A legacy HTTP+SSE transport's `GET` stream.
    McpStream(mcp::Stream),
    Bedrock(bedrock::State),
}

impl Parser {
    fn event(&mut self, name: &str, data: &[u8], f: &mut Findings) {
        match self {
            Parser::Anthropic(s) => s.event(data, f),
            Parser::Chat(s) => s.event(data, f),
            Parser::Responses(s) => s.event(name, data, f),
            Parser::Google(s) => s.event(data, f),
            Parser::Ollama(s) => s.event(data, f),
            Parser::Mcp(s) => s.event(data, f),
            Parser::McpStream(s) => s.event(name, data),
            // Bedrock streams are event streams, never SSE.
            Parser::Bedrock(_) => {}
        }
    }

    fn json(&mut self, body: &[u8], f: &mut Findings) {
        match self {
            Parser::Anthropic(s) => s.json(body, f),
            Parser::Chat(s) => s.json(body, f),
            Parser::Responses(s) => s.json(body, f),
            Parser::Google(s) => s.json(body, f),
            Parser::Ollama(s) => s.json(body, f),
            Parser::Mcp(s) => s.json(body, f),
            Parser::McpStream(_) => {}
            Parser::Bedrock(s) => s.json(body, f),
        }
    }

    fn end(&mut self, f: &mut Findings) {
        match self {
            Parser::Anthropic(s) => s.end(f),
            Parser::Google(s) => s.end(f),
            Parser::Bedrock(s) => s.end(f),
            Parser::Chat(_)
            | Parser::Responses(_)
            | Parser::Ollama(_)
            | Parser::Mcp(_)
            | Parser::McpStream(_) => {}
        }
    }

    /// Best effort on an oversized JSON body: `head` is its first
    /// [`Limits::max_json_bytes`] bytes, `tail` about its last
    /// [`SALVAGE_TAIL`] bytes.
    fn salvage(&mut self, head: &[u8], tail: &[u8], f: &mut Findings) {
        if matches!(self, Parser::Mcp(_) | Parser::McpStream(_)) {
            return;
        }
        // Top-level scalars of the (truncated) head: ids and models come
        // first in OpenAI and Anthropic bodies.
        json_scan::scan(head, |h| {
            if h.parent.is_some() {
                return;
            }
            let slot = match h.key {
                b"id" | b"responseId" => &mut f.response_id,
                b"model" | b"modelVersion" => &mut f.response_model,
                _ => return,
            };
            if let Some(v) = h.value.as_str() {
                Findings::set_str(slot, &v);
            }
        });
        let tail = &tail[tail.len().saturating_sub(SALVAGE_TAIL)..];
        match self {
            Parser::Anthropic(s) => s.salvage(tail, f),
            Parser::Chat(_) | Parser::Responses(_) => openai::salvage(tail, f),
            Parser::Google(s) => s.salvage(tail, f),
            Parser::Bedrock(s) => s.salvage(tail, f),
            Parser::Ollama(_) => {
                if let Some(n) = salvage_value::<u64>(tail, "prompt_eval_count") {
                    f.input_tokens = Some(n);
                }
                if let Some(n) = salvage_value::<u64>(tail, "eval_count") {
                    f.output_tokens = Some(n);
                }
            }
            Parser::Mcp(_) | Parser::McpStream(_) => {}
        }
    }

    /// Whether a successful response must reach an end marker.
    fn expects_completion(&self) -> bool {
        match self {
            Parser::Mcp(s) => s.expects_response(),
            Parser::McpStream(_) => false,
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No content type: decided by the first non-blank byte.
    Sniff,
    Json,
    Sse,
    /// Newline-delimited JSON (Ollama's streams).
    Ndjson,
    /// AWS event stream (Bedrock).
    EventStream,
    /// Not parsed (unsupported type, or given up).
    Off,
}

/// The decoded-body side of the response pipeline: receives decoded bytes
/// (it is the decoder's [`Write`] target) and parses them.
#[derive(Debug)]
struct Sink {
    mode: Mode,
    sse: SseParser,
    frames: eventstream::Decoder,
    body: Vec<u8>,
    /// The JSON body outgrew `max_json_bytes`: only its tail is kept.
    over_cap: bool,
    tail: Vec<u8>,
    parser: Parser,
    findings: Findings,
    max_json_bytes: usize,
    /// The NDJSON line being assembled (at most `max_line_bytes`).
    line: Vec<u8>,
    /// The current NDJSON line outgrew `max_line_bytes`: skipped to its end.
    line_skip: bool,
    max_line_bytes: usize,
    /// `Some(cap)` when decoding: the decoded total is capped.
    max_decoded: Option<u64>,
    decoded: u64,
}

impl Sink {
    fn feed(&mut self, mut buf: &[u8]) {
        if self.mode == Mode::Sniff {
            let Some(i) = buf.iter().position(|b| !b.is_ascii_whitespace()) else {
                return;
            };
            buf = &buf[i..];
            self.mode = if matches!(buf[0], b'{' | b'[') {
                Mode::Json
            } else {
                Mode::Sse
            };
        }
        match self.mode {
            Mode::Json if self.over_cap => push_tail(&mut self.tail, buf),
            Mode::Json => {
                if self.body.len() + buf.len() > self.max_json_bytes {
                    self.findings.flag(ParseError::BodyTooLarge);
                    self.over_cap = true;
                    // The head is read now, then dropped: only the tail stays.
                    let room = self.max_json_bytes.saturating_sub(self.body.len());
                    self.body.extend_from_slice(&buf[..room.min(buf.len())]);
                    let head = std::mem::take(&mut self.body);
                    let Sink {
                        parser, findings, ..
                    } = self;
                    parser.salvage(&head, &[], findings);
                    push_tail(&mut self.tail, buf);
                } else {
                    self.body.extend_from_slice(buf);
                }
            }
            Mode::Sse => {
                let Sink {
                    sse,
                    parser,
                    findings,
                    ..
                } = self;
                sse.feed(buf, |block| {
                    if let Some(ev) = block.event {
                        parser.event(ev.event, ev.data, findings);
                    }
                });
            }
            Mode::Ndjson => self.ndjson(buf),
            Mode::EventStream => {
                let Sink {
                    frames,
                    parser: Parser::Bedrock(s),
                    findings,
                    ..
                } = self
                else {
                    return;
                };
                frames.feed(buf, |m| match m {
                    Ok(m) => s.message(m, findings),
                    Err(e) => s.frame_error(e, findings),
                });
            }
            Mode::Sniff | Mode::Off => {}
        }
    }

    /// Splits NDJSON into lines (bounded), each parsed as one event.
    fn ndjson(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let Some(i) = memchr::memchr(b'\n', buf) else {
                if !self.line_skip {
                    if self.line.len() + buf.len() > self.max_line_bytes {
                        self.findings.flag(ParseError::EventTooLarge);
                        self.line_skip = true;
                        self.line.clear();
                    } else {
                        self.line.extend_from_slice(buf);
                    }
                }
                return;
            };
            let part = &buf[..i];
            buf = &buf[i + 1..];
            if std::mem::take(&mut self.line_skip) {
                self.line.clear();
                continue;
            }
            if self.line.is_empty() {
                self.ndjson_line(part);
            } else if self.line.len() + part.len() > self.max_line_bytes {
                self.findings.flag(ParseError::EventTooLarge);
                self.line.clear();
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(part);
                self.ndjson_line(&line);
                line.clear();
                self.line = line;
            }
        }
    }

    fn ndjson_line(&mut self, line: &[u8]) {
        let line = line.trim_ascii();
        if !line.is_empty() {
            self.parser.event("", line, &mut self.findings);
        }
    }

    /// End of body. `ok`: the status was a success one.
    fn end(&mut self, ok: bool) {
        match self.mode {
            Mode::Sse => {
                if self.sse.has_pending() {
                    self.findings.flag(ParseError::Truncated);
                }
                let Sink {
                    sse,
                    parser,
                    findings,
                    ..
                } = self;
                sse.finish(|block| {
                    if let Some(ev) = block.event {
                        parser.event(ev.event, ev.data, findings);
                    }
                });
                if self.sse.overflowed() {
                    self.findings.flag(ParseError::EventTooLarge);
                }
            }
            Mode::Ndjson => {
                let line = std::mem::take(&mut self.line);
                if !self.line_skip {
                    self.ndjson_line(&line);
                }
            }
            Mode::EventStream if self.frames.has_pending() => {
                self.findings.flag(ParseError::Truncated);
            }
            Mode::Json if self.over_cap => {
                let tail = std::mem::take(&mut self.tail);
                self.parser.salvage(&[], &tail, &mut self.findings);
            }
            Mode::Json if !self.body.is_empty() => {
                let body = std::mem::take(&mut self.body);
                self.parser.json(&body, &mut self.findings);
            }
            _ => {}
        }
        self.parser.end(&mut self.findings);
        if ok && !self.findings.complete && self.parser.expects_completion() {
            self.findings.flag(ParseError::Truncated);
        }
    }
}

impl Sink {
    /// Decoding stopped because the decoded total passed its cap (not
    /// because the data was corrupt).
    fn over_decoded_cap(&self) -> bool {
        self.max_decoded.is_some_and(|cap| self.decoded > cap)
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(cap) = self.max_decoded {
            self.decoded = self.decoded.saturating_add(buf.len() as u64);
            if self.decoded > cap {
                self.findings.flag(ParseError::DecodedTooLarge);
                self.mode = Mode::Off;
                return Err(io::Error::other("decoded body over the cap"));
            }
        }
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Write` target that keeps at most `cap` bytes (request decoding).
struct CappedVec {
    buf: Vec<u8>,
    cap: usize,
}

impl Write for CappedVec {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let room = self.cap.saturating_sub(self.buf.len());
        if room == 0 {
            return Err(io::Error::other("request prefix over the cap"));
        }
        let n = b.len().min(room);
        self.buf.extend_from_slice(&b[..n]);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The media type of a `Content-Type` value, without parameters.
fn media_type(headers: &HeaderMap) -> Option<&str> {
    header(headers, "content-type").map(|v| v.split(';').next().unwrap_or("").trim())
}

/// The format of a POST to a host egret does not know, from its path and
/// body: an endpoint path of one of the formats, and (except for Gemini,
/// whose model is in the path) a top-level `model` in the JSON body.
fn shape_of(path_and_query: &str, body: &[u8]) -> Option<Provider> {
    let format = Provider::for_path(path_and_query)?;
    if format == Provider::Google {
        return Some(format);
    }
    let mut model = false;
    json_scan::scan(body, |h| {
        if h.parent.is_none() && h.key == b"model" && h.value.as_str().is_some() {
            model = true;
        }
    });
    model.then_some(format)
}

/// The model a path names, for APIs whose body may not: Azure OpenAI's
/// `/openai/deployments/{deployment}/…` and Vertex AI's
/// `…/models/{model}:{method}` (percent-decoded).
fn model_from_path(path_and_query: &str) -> Option<String> {
    let path = path_and_query.split(['?', '#']).next().unwrap_or("");
    let raw = match path.split_once("/deployments/") {
        Some((_, rest)) => rest.split('/').next().filter(|d| !d.is_empty())?,
        None if path.contains("/models/") => google::model_from_path(path)?,
        None => return None,
    };
    Some(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

fn is_json_type(t: &str) -> bool {
    t.eq_ignore_ascii_case("application/json")
        || t.len() > 5 && t.as_bytes()[t.len() - 5..].eq_ignore_ascii_case(b"+json")
}

/// One HTTP exchange being tapped. See the module docs for the call order.
#[derive(Debug)]
pub struct Exchange {
    limits: Limits,
    /// The wire format (found from the body when the target was unknown).
    provider: Option<Provider>,
    /// `gen_ai.provider.name` (`None`: not known, not written).
    provider_name: Option<std::borrow::Cow<'static, str>>,
    api: Api,
    request_model: Option<String>,
    request_stream: Option<bool>,
    /// `stream_options.include_usage` as the client sent it.
    include_usage: Option<bool>,
    /// Request parameters (`gen_ai.request.*`, output type, conversation).
    params: params::Params,
    mcp: Option<mcp::Request>,
    /// The request body was a JSON-RPC batch.
    mcp_batch: Option<mcp::Batch>,
    /// The first `params._meta.traceparent` the request body carried.
    mcp_meta_parent: Option<String>,
    /// `egret.mcp.trace_context`: what became of the trace context in
    /// `params._meta`.
    mcp_trace_context: Option<&'static str>,
    mcp_session_id: Option<String>,
    mcp_protocol_version: Option<String>,
    /// An MCP `GET` (a legacy HTTP+SSE stream when its answer is one): its
    /// path and query.
    mcp_get_path: Option<String>,
    /// An MCP `POST`'s path and query (a legacy endpoint, maybe).
    mcp_post_path: Option<String>,
    /// A Bedrock invoke request carried an Anthropic Messages body.
    bedrock_anthropic: bool,
    /// The request body prefix was cut before the JSON ended.
    request_truncated: bool,
    request_error: Option<ParseError>,
    rewritten: bool,
    filter_issued: bool,
    status: Option<u16>,
    response_is_sse: bool,
    response_identity: bool,
    response: Option<Decoder<Sink>>,
    /// The decoder failed: later chunks are ignored.
    response_dead: bool,
    response_error: Option<ParseError>,
    finished: bool,
}

impl Exchange {
    /// A new exchange. `target` comes from the route config
    /// ([`crate::providers::RouteProvider::target`]) or [`Target::detect`];
    /// with `None` the exchange is plain HTTP unless its body shows an MCP
    /// (JSON-RPC 2.0), OpenAI-style or Ollama call.
    pub fn new(target: Option<Target>, limits: Limits) -> Exchange {
        let (provider, provider_name) = match target {
            Some(t) => (Some(t.format), t.name),
            None => (None, None),
        };
        Exchange {
            limits,
            provider,
            provider_name,
            api: Api::Other,
            request_model: None,
            request_stream: None,
            include_usage: None,
            params: params::Params::default(),
            mcp: None,
            mcp_batch: None,
            mcp_meta_parent: None,
            mcp_trace_context: None,
            mcp_session_id: None,
            mcp_protocol_version: None,
            mcp_get_path: None,
            mcp_post_path: None,
            bedrock_anthropic: false,
            request_truncated: false,
            request_error: None,
            rewritten: false,
            filter_issued: false,
            status: None,
            response_is_sse: false,
            response_identity: true,
            response: None,
            response_dead: false,
            response_error: None,
            finished: false,
        }
    }

    /// Providers known to accept `stream_options.include_usage` (an
    /// unknown OpenAI-compatible server may reject a field it does not
    /// know, so its requests are never rewritten).
    fn rewrite_supported(&self) -> bool {
        matches!(
            self.provider_name.as_deref(),
            Some("openai" | "azure.ai.openai")
        )
    }

    /// The wire format (after [`Self::on_request`], including one found
    /// from the body).
    pub fn provider(&self) -> Option<Provider> {
        self.provider
    }

    /// The endpoint (after [`Self::on_request`]).
    pub fn api(&self) -> Api {
        self.api
    }

    /// The request line, headers and the captured start of the body
    /// (`body_prefix` may be the whole body or a prefix of it; the
    /// `Content-Length` header tells which). Call once, before forwarding.
    pub fn on_request(
        &mut self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body_prefix: &[u8],
    ) {
        // A compressed request body (rare) is decoded, bounded, for reading.
        let decoded;
        let body: &[u8] = match Encoding::from_header(header(headers, "content-encoding")) {
            Some(Encoding::Identity) => body_prefix,
            Some(enc) => {
                let mut d = Decoder::new(
                    enc,
                    CappedVec {
                        buf: Vec::new(),
                        cap: self.limits.max_json_bytes,
                    },
                );
                // Errors only mean a cut prefix or the cap: use what came out
                // (`finish` also flushes the decoder's internal buffer).
                let _ = d.write_chunk(body_prefix);
                let _ = d.finish();
                decoded = d.sink_mut().map(|s| std::mem::take(&mut s.buf));
                decoded.as_deref().unwrap_or(&[])
            }
            None => &[],
        };
        let whole = header(headers, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n == body_prefix.len());

        // MCP without a route: a JSON-RPC 2.0 POST (MCP clients always send
        // `Content-Type: application/json`).
        if self.provider.is_none()
            && method == Method::POST
            && media_type(headers).is_some_and(is_json_type)
            && mcp::looks_like_jsonrpc(body)
        {
            self.provider = Some(Provider::Mcp);
        }
        if self.provider.is_none() && method == Method::POST {
            self.provider = shape_of(path_and_query, body);
            // Ollama's native API is Ollama's alone; an OpenAI- or
            // Anthropic-style body on an unknown host says nothing of who
            // serves it (the route's `provider` may).
            if self.provider == Some(Provider::Ollama) {
                self.provider_name = Some(std::borrow::Cow::Borrowed("ollama"));
            }
        }
        let Some(provider) = self.provider else {
            return;
        };
        self.api = Api::classify(provider, path_and_query);
        if let Some(v) = header(headers, "mcp-session-id") {
            self.mcp_session_id = Some(v.to_owned());
        }
        if let Some(v) = header(headers, "mcp-protocol-version") {
            self.mcp_protocol_version = Some(v.to_owned());
        }
        if self.api == Api::Mcp {
            // The legacy transport names its session in the endpoint's query.
            if self.mcp_session_id.is_none() {
                self.mcp_session_id = mcp::endpoint_session_id(path_and_query);
            }
            if method == Method::GET {
                self.mcp_get_path = Some(path_and_query.to_owned());
            } else if method == Method::POST {
                self.mcp_post_path = Some(path_and_query.to_owned());
            }
        }

        let end = match self.api {
            Api::AnthropicMessages
            | Api::OpenAiChat
            | Api::OpenAiCompletions
            | Api::OpenAiResponses
            | Api::OpenAiEmbeddings => {
                let mut model = None;
                let mut stream = None;
                let mut include_usage = None;
                let (api, params) = (self.api, &mut self.params);
                let end = json_scan::scan(body, |h| match (h.parent, h.key) {
                    (None, b"model") => model = h.value.as_str().map(|s| s.into_owned()),
                    (None, b"stream") => stream = h.value.as_bool(),
                    (Some(b"stream_options"), b"include_usage") => {
                        include_usage = h.value.as_bool()
                    }
                    _ => params.hit(api, h, body),
                });
                // Azure's deployment and Vertex's model are in the path
                // when the body has none.
                self.request_model = model.or_else(|| model_from_path(path_and_query));
                let vertex_stream = path_and_query
                    .split('?')
                    .next()
                    .is_some_and(|p| p.ends_with(":streamRawPredict"));
                self.request_stream = match (stream, end) {
                    (Some(s), _) => Some(s),
                    _ if vertex_stream => Some(true),
                    // A complete body without `stream` does not stream.
                    (None, json_scan::ScanEnd::Complete { .. }) => Some(false),
                    (None, _) => None,
                };
                self.include_usage = include_usage;
                Some(end)
            }
            Api::GoogleGenerate | Api::GoogleStreamGenerate | Api::GoogleEmbed => {
                let path = path_and_query.split('?').next().unwrap_or("");
                self.request_model = google::model_from_path(path).map(str::to_owned);
                self.request_stream = Some(self.api == Api::GoogleStreamGenerate);
                let (api, params) = (self.api, &mut self.params);
                json_scan::scan(body, |h| params.hit(api, h, body));
                None
            }
            Api::OllamaChat | Api::OllamaGenerate | Api::OllamaEmbed => {
                let mut model = None;
                let mut stream = None;
                let (api, params) = (self.api, &mut self.params);
                let end = json_scan::scan(body, |h| match (h.parent, h.key) {
                    (None, b"model") => model = h.value.as_str().map(|s| s.into_owned()),
                    (None, b"stream") => stream = h.value.as_bool(),
                    _ => params.hit(api, h, body),
                });
                self.request_model = model;
                self.request_stream = match (stream, end) {
                    (Some(s), _) => Some(s),
                    // Ollama streams unless told not to.
                    (None, json_scan::ScanEnd::Complete { .. }) => Some(true),
                    (None, _) => None,
                };
                Some(end)
            }
            Api::Mcp if method == Method::POST && !body.is_empty() => {
                let (r, end) = mcp::Request::scan(body);
                if self.mcp_protocol_version.is_none() && r.method.as_deref() == Some("initialize")
                {
                    self.mcp_protocol_version.clone_from(&r.protocol_version);
                }
                self.mcp = Some(r);
                self.mcp_batch = mcp::Batch::scan(body);
                // A sandbox-supplied `_meta.traceparent` (read only from a
                // complete body as sent: the one that may be edited).
                if std::ptr::eq(body, body_prefix) {
                    self.mcp_meta_parent = mcp::plan_meta(body).ok().and_then(|p| p.supplied);
                }
                Some(end)
            }
            Api::BedrockConverse
            | Api::BedrockConverseStream
            | Api::BedrockInvoke
            | Api::BedrockInvokeStream => {
                let path = path_and_query.split('?').next().unwrap_or("");
                self.request_model = bedrock::model_from_path(path);
                self.request_stream = Some(matches!(
                    self.api,
                    Api::BedrockConverseStream | Api::BedrockInvokeStream
                ));
                let (anthropic, end) = bedrock::scan_request(body);
                self.bedrock_anthropic = anthropic;
                // Request parameters: Converse's `inferenceConfig`, or an
                // Anthropic body's own.
                let as_api = if anthropic {
                    Api::AnthropicMessages
                } else {
                    self.api
                };
                let params = &mut self.params;
                json_scan::scan(body, |h| params.hit(as_api, h, body));
                // Invoke bodies are the vendor's: only Converse is known JSON.
                matches!(self.api, Api::BedrockConverse | Api::BedrockConverseStream).then_some(end)
            }
            // WebSocket sessions are parsed by `realtime`, never as an HTTP body.
            Api::Mcp | Api::Other | Api::OpenAiRealtime | Api::OpenAiResponsesWebSocket => None,
        };
        match end {
            Some(json_scan::ScanEnd::Invalid) if !body.is_empty() => {
                self.request_error = Some(ParseError::InvalidJson);
            }
            Some(json_scan::ScanEnd::Truncated) => {
                self.request_truncated = true;
                if whole {
                    // The client sent all of it: the JSON itself is cut.
                    self.request_error = Some(ParseError::Truncated);
                }
            }
            _ => {}
        }
    }

    /// True for a streaming Chat Completions / Completions request that did
    /// not ask for usage (as far as the body prefix shows): the proxy may
    /// then buffer the body and call [`Self::rewrite_request_body`].
    pub fn wants_usage_rewrite(&self) -> bool {
        self.rewrite_supported()
            && matches!(self.api, Api::OpenAiChat | Api::OpenAiCompletions)
            && self.request_stream != Some(false)
            && self.include_usage.is_none()
            && (self.request_stream == Some(true) || self.request_truncated)
    }

    /// Rewrites the *whole* request body of a Chat Completions /
    /// Completions request to ask for usage
    /// ([`rewrite_request_for_usage`]). `Some(body)`: send that instead
    /// (and fix `Content-Length`); the exchange then records
    /// `egret.body.request_rewritten = true` and [`Self::usage_filter`]
    /// becomes available. `None`: send the original.
    pub fn rewrite_request_body(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        if !self.rewrite_supported()
            || !matches!(self.api, Api::OpenAiChat | Api::OpenAiCompletions)
        {
            return None;
        }
        let out = rewrite_request_for_usage(body)?;
        self.rewritten = true;
        self.request_stream = Some(true);
        Some(out)
    }

    /// The `params._meta.traceparent` the (whole, identity-encoded)
    /// request body already carried: the incoming parent when the request
    /// has no `traceparent` header. After [`Self::on_request`].
    pub fn mcp_meta_traceparent(&self) -> Option<&str> {
        self.mcp_meta_parent.as_deref()
    }

    /// For an MCP POST whose whole body the proxy holds: the body with
    /// `traceparent` (and `tracestate`) added to the `params._meta` of
    /// every message that has a `method` and no `_meta.traceparent` of its
    /// own ([`mcp::plan_meta`]); `None`: send the original (nothing to
    /// add, not MCP, or it cannot be done safely — recorded in
    /// `egret.mcp.trace_context`).
    pub fn inject_mcp_trace_context(
        &mut self,
        body: &[u8],
        encoded: bool,
        traceparent: &str,
        tracestate: Option<&str>,
    ) -> Option<Vec<u8>> {
        if self.api != Api::Mcp || self.mcp.is_none() {
            return None;
        }
        if encoded {
            self.mcp_trace_context = Some(mcp::TRACE_CONTEXT_SKIPPED_ENCODED);
            return None;
        }
        match mcp::plan_meta(body) {
            Ok(plan) if plan.inserts() > 0 => {
                self.mcp_trace_context = Some(mcp::TRACE_CONTEXT_INJECTED);
                Some(plan.apply(body, traceparent, tracestate))
            }
            Ok(plan) => {
                if plan.supplied.is_some() {
                    self.mcp_trace_context = Some(mcp::TRACE_CONTEXT_SUPPLIED);
                }
                None
            }
            Err(mcp::MetaSkip::Invalid) => {
                self.mcp_trace_context = Some(mcp::TRACE_CONTEXT_SKIPPED_INVALID);
                None
            }
            Err(mcp::MetaSkip::Unsupported) => {
                self.mcp_trace_context = Some(mcp::TRACE_CONTEXT_SKIPPED_UNSUPPORTED);
                None
            }
            Err(mcp::MetaSkip::TooManyMessages) => {
                self.mcp_trace_context = Some(mcp::TRACE_CONTEXT_SKIPPED_TOO_LARGE);
                None
            }
        }
    }

    /// An MCP POST whose trace context could not go into `params._meta`
    /// (`why`: one of the `mcp::TRACE_CONTEXT_SKIPPED_*` values).
    pub fn skip_mcp_trace_context(&mut self, why: &'static str) {
        if self.api == Api::Mcp {
            self.mcp_trace_context = Some(why);
        }
    }

    /// True when the response is a legacy MCP stream being followed (see
    /// [`Self::take_mcp_stream_events`]).
    pub fn follows_mcp_stream(&mut self) -> bool {
        self.response
            .as_mut()
            .and_then(|d| d.sink_mut())
            .is_some_and(|s| matches!(s.parser, Parser::McpStream(_)))
    }

    /// The legacy stream's events parsed since the last call (after each
    /// [`Self::on_response_chunk`]): endpoints and JSON-RPC answers.
    pub fn take_mcp_stream_events(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some(s) = self.response.as_mut().and_then(|d| d.sink_mut()) {
            if let Parser::McpStream(st) = &mut s.parser {
                st.take(out);
            }
        }
    }

    /// The legacy stream's events will not be taken (no one to pair them
    /// for): none are kept; the stream is still counted on its record.
    pub fn ignore_mcp_stream_events(&mut self) {
        if let Some(s) = self.response.as_mut().and_then(|d| d.sink_mut()) {
            if let Parser::McpStream(st) = &mut s.parser {
                st.ignore();
            }
        }
    }

    /// An MCP `POST` of one JSON-RPC request (an id and a method; not a
    /// batch): its path and query and its id — what a legacy transport's
    /// answer on the stream is matched by.
    pub fn mcp_request(&self) -> Option<(&str, &str)> {
        let r = self.mcp.as_ref()?;
        if self.mcp_batch.is_some() || !r.expects_response() {
            return None;
        }
        Some((self.mcp_post_path.as_deref()?, r.id.as_deref()?))
    }

    /// The MCP `POST`'s path and query (any JSON-RPC message).
    pub fn mcp_post_path(&self) -> Option<&str> {
        self.mcp.as_ref()?;
        self.mcp_post_path.as_deref()
    }

    /// The response status and headers.
    pub fn on_response_head(&mut self, status: u16, headers: &HeaderMap) {
        self.status = Some(status);
        if self.mcp_session_id.is_none() {
            if let Some(v) = header(headers, "mcp-session-id") {
                self.mcp_session_id = Some(v.to_owned());
            }
        }
        let parser = match self.api {
            Api::AnthropicMessages => Parser::Anthropic(anthropic::State::default()),
            Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiEmbeddings => {
                Parser::Chat(openai::Chat)
            }
            Api::OpenAiResponses => Parser::Responses(openai::Responses),
            Api::GoogleGenerate | Api::GoogleStreamGenerate | Api::GoogleEmbed => {
                Parser::Google(google::State::default())
            }
            Api::OllamaChat | Api::OllamaGenerate | Api::OllamaEmbed => {
                Parser::Ollama(ollama::State)
            }
            // 202 Accepted: nothing of the answer is in this body (a
            // notification's bare 202, or the legacy HTTP+SSE transport's
            // `Accepted`, whose answer comes on the session's SSE stream).
            Api::Mcp if status == 202 => return,
            // The legacy transport's stream: followed event by event
            // ([`Self::take_mcp_stream_events`]).
            Api::Mcp
                if self.mcp.is_none()
                    && (200..300).contains(&status)
                    && media_type(headers)
                        .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream")) =>
            {
                match &self.mcp_get_path {
                    Some(p) => Parser::McpStream(mcp::Stream::new(p)),
                    None => return,
                }
            }
            Api::Mcp => match &self.mcp {
                Some(r) => {
                    // Only requests get a response; notifications and the
                    // client's responses to server requests (no `method`)
                    // are answered with a bare 202.
                    let request = r
                        .method
                        .as_deref()
                        .is_some_and(|m| !m.starts_with("notifications/"));
                    Parser::Mcp(mcp::State {
                        request_id: r.id.clone().filter(|_| request),
                        any_id: request && r.id.is_none() && self.request_truncated,
                        method: r.method.clone(),
                        batch: self
                            .mcp_batch
                            .as_ref()
                            .map(mcp::State::for_batch)
                            .unwrap_or_default(),
                    })
                }
                None => return,
            },
            Api::BedrockConverse
            | Api::BedrockConverseStream
            | Api::BedrockInvoke
            | Api::BedrockInvokeStream => Parser::Bedrock(bedrock::State::new(
                self.api,
                self.bedrock_anthropic,
                status,
                headers,
            )),
            Api::Other | Api::OpenAiRealtime | Api::OpenAiResponsesWebSocket => return,
        };
        let ok = (200..300).contains(&status);
        let mode = match media_type(headers) {
            None | Some("") => Mode::Sniff,
            Some(t) if t.eq_ignore_ascii_case("text/event-stream") => Mode::Sse,
            Some(t) if t.eq_ignore_ascii_case("application/x-ndjson") => Mode::Ndjson,
            Some(t)
                if t.eq_ignore_ascii_case(bedrock::EVENT_STREAM)
                    && matches!(parser, Parser::Bedrock(_)) =>
            {
                Mode::EventStream
            }
            Some(t) if is_json_type(t) => Mode::Json,
            Some(_) => {
                if ok && status != 204 {
                    self.response_error = Some(ParseError::UnsupportedContentType);
                }
                return;
            }
        };
        self.response_is_sse = mode == Mode::Sse;
        let Some(encoding) = Encoding::from_header(header(headers, "content-encoding")) else {
            self.response_identity = false;
            self.response_error = Some(ParseError::UnsupportedEncoding);
            return;
        };
        self.response_identity = encoding == Encoding::Identity;
        let sink = Sink {
            mode,
            sse: SseParser::new(self.limits.max_event_bytes),
            frames: eventstream::Decoder::new(self.limits.max_event_bytes),
            body: Vec::new(),
            over_cap: false,
            tail: Vec::new(),
            parser,
            findings: Findings::default(),
            max_json_bytes: self.limits.max_json_bytes,
            line: Vec::new(),
            line_skip: false,
            max_line_bytes: self.limits.max_event_bytes,
            max_decoded: (encoding != Encoding::Identity).then_some(self.limits.max_decoded_bytes),
            decoded: 0,
        };
        self.response = Some(Decoder::new(encoding, sink));
    }

    /// The filter that hides the usage-only chunk a rewritten request
    /// caused, when one is needed: the request was rewritten and the
    /// response is a successful, identity-encoded event stream. The proxy
    /// must then pass every response byte through it (and still feed the
    /// unfiltered bytes to [`Self::on_response_chunk`]). `None`: forward
    /// unchanged (the client then sees the usage chunk, and the record says
    /// `egret.body.usage_visible = true`).
    pub fn usage_filter(&mut self) -> Option<UsageChunkFilter> {
        let ok = self.status.is_some_and(|s| (200..300).contains(&s));
        if !self.rewritten || !ok || !self.response_is_sse || !self.response_identity {
            return None;
        }
        self.filter_issued = true;
        Some(UsageChunkFilter::new(self.limits.max_event_bytes))
    }

    /// One chunk of the response body as received from upstream (still
    /// content-encoded). Never buffers beyond the limits; cheap when the
    /// exchange is not parsed.
    pub fn on_response_chunk(&mut self, chunk: &[u8]) {
        if self.response_dead {
            return;
        }
        let Some(dec) = self.response.as_mut() else {
            return;
        };
        if dec.write_chunk(chunk).is_err() {
            self.response_dead = true;
            let capped = dec.sink_mut().is_some_and(|s| s.over_decoded_cap());
            if !capped {
                self.response_error.get_or_insert(ParseError::DecodeFailed);
            }
        }
    }

    /// Ends the exchange (response complete, cut, or never received) and
    /// writes its attributes into `record`. Later calls do nothing.
    ///
    /// Written: `gen_ai.provider.name` + `gen_ai.system`,
    /// `gen_ai.operation.name`, `gen_ai.request.model`,
    /// `gen_ai.request.stream`, `gen_ai.response.model`,
    /// `gen_ai.response.id`, `gen_ai.response.finish_reasons` (provider
    /// values as sent, ordered by choice index), `gen_ai.usage.*`; for MCP
    /// `mcp.method.name`, `jsonrpc.request.id`, `gen_ai.tool.name`,
    /// `gen_ai.prompt.name`, `mcp.resource.uri`, `mcp.session.id`,
    /// `mcp.protocol.version`, `rpc.response.status_code`;
    /// `egret.parse.error`; `egret.body.request_rewritten = true` after a
    /// rewrite; `egret.body.usage_visible` whenever usage was recorded:
    /// `false` exactly when egret added `include_usage` to the request and
    /// removed the usage chunk from the response (the client never saw the
    /// numbers), `true` otherwise (the client asked for usage itself, the
    /// provider always reports it, or the usage chunk was forwarded).
    /// `error.type` is set to the provider's / JSON-RPC error code only
    /// when the record has no `error.type` yet (transport errors the proxy
    /// recorded win).
    pub fn finish(&mut self, record: &mut Record) {
        if self.finished {
            return;
        }
        self.finished = true;
        let Some(provider) = self.provider else {
            return;
        };

        let mut f = Findings::default();
        let mut batch_outcomes = None;
        if let Some(mut dec) = self.response.take() {
            if !self.response_dead && dec.finish().is_err() {
                let capped = dec.sink_mut().is_some_and(|s| s.over_decoded_cap());
                if !capped {
                    self.response_error.get_or_insert(ParseError::DecodeFailed);
                }
            }
            if let Some(sink) = dec.sink_mut() {
                let ok = self
                    .status
                    .is_some_and(|s| (200..300).contains(&s) && s != 204);
                sink.end(ok);
                f = std::mem::take(&mut sink.findings);
                match &mut sink.parser {
                    Parser::Mcp(s) => batch_outcomes = Some(std::mem::take(&mut s.batch)),
                    Parser::McpStream(s) => {
                        record.set(sc::MCP_TRANSPORT, sc::MCP_TRANSPORT_SSE);
                        if let Some(e) = &s.endpoint {
                            if self.mcp_session_id.is_none() {
                                self.mcp_session_id = mcp::endpoint_session_id(e);
                            }
                            record.set(sc::MCP_SSE_ENDPOINT, e.as_str());
                        }
                        record.set(
                            sc::MCP_SSE_MESSAGES,
                            i64::try_from(s.messages).unwrap_or(i64::MAX),
                        );
                        if s.dropped > 0 {
                            record.set(
                                sc::MCP_SSE_DROPPED,
                                i64::try_from(s.dropped).unwrap_or(i64::MAX),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }

        if let Some(name) = self.provider_name.take() {
            record.set(sc::GEN_AI_SYSTEM, name.as_ref());
            record.set(sc::GEN_AI_PROVIDER_NAME, name.into_owned());
        }
        let operation = match (self.api, &self.mcp) {
            (Api::Mcp, Some(r)) if r.method.as_deref() == Some("tools/call") => {
                Some("execute_tool")
            }
            (api, _) => f.operation.or(api.operation()),
        };
        record.set_opt(sc::GEN_AI_OPERATION_NAME, operation);
        record.set_opt(sc::GENAI_API, self.api.name());
        record.set_opt(sc::GEN_AI_REQUEST_MODEL, self.request_model.take());
        std::mem::take(&mut self.params).write(record);
        if self.api.streams() {
            record.set_opt(sc::GEN_AI_REQUEST_STREAM, self.request_stream);
        }
        record.set_opt(sc::GEN_AI_RESPONSE_MODEL, f.response_model.take());
        record.set_opt(sc::GEN_AI_RESPONSE_ID, f.response_id.take());
        if !f.finish_reasons.is_empty() {
            f.finish_reasons.sort_by_key(|(i, _)| *i);
            let reasons: Vec<String> = f.finish_reasons.drain(..).map(|(_, r)| r).collect();
            record.set(sc::GEN_AI_RESPONSE_FINISH_REASONS, reasons);
        }
        record.set_opt(sc::GEN_AI_USAGE_INPUT_TOKENS, f.input_tokens);
        record.set_opt(sc::GEN_AI_USAGE_OUTPUT_TOKENS, f.output_tokens);
        record.set_opt(
            sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
            f.cache_read_input_tokens,
        );
        // The conventions' name, and the name it had until
        // semantic-conventions-genai v0.1.0 (records keep both; OTLP sends
        // the old one while `otlp.emitLegacyCacheCreation` is on).
        record.set_opt(
            sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS,
            f.cache_creation_input_tokens,
        );
        record.set_opt(
            sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
            f.cache_creation_input_tokens,
        );
        record.set_opt(
            sc::GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
            f.reasoning_output_tokens,
        );
        record.set_opt(
            sc::USAGE_CACHE_WRITE_1H_INPUT_TOKENS,
            f.cache_write_1h_input_tokens,
        );
        f.modality.write(record);

        if let Some(r) = self.mcp.take() {
            record.set_opt(sc::MCP_METHOD_NAME, r.method);
            record.set_opt(sc::JSONRPC_REQUEST_ID, r.id);
            record.set_opt(sc::GEN_AI_TOOL_NAME, r.tool_name);
            record.set_opt(sc::GEN_AI_PROMPT_NAME, r.prompt_name);
            record.set_opt(sc::MCP_RESOURCE_URI, r.resource_uri);
        }
        if provider == Provider::Mcp {
            record.set_opt(sc::MCP_SESSION_ID, self.mcp_session_id.take());
            let version = self
                .mcp_protocol_version
                .take()
                .or(f.mcp_protocol_version.take());
            record.set_opt(sc::MCP_PROTOCOL_VERSION, version);
            record.set_opt(sc::RPC_RESPONSE_STATUS_CODE, f.rpc_status_code.take());
            record.set_opt(sc::MCP_TRACE_CONTEXT, self.mcp_trace_context);
        }
        if let Some(b) = self.mcp_batch.take() {
            let outcomes = batch_outcomes
                .filter(|o| o.len() == b.messages.len())
                .unwrap_or_else(|| mcp::State::for_batch(&b));
            write_batch(record, &b, &outcomes);
        }

        if self.rewritten {
            record.set(sc::BODY_REQUEST_REWRITTEN, true);
        }
        let has_usage = f.input_tokens.is_some() || f.output_tokens.is_some();
        if has_usage {
            let hidden = self.rewritten && self.filter_issued && f.usage_only_chunk;
            record.set(sc::BODY_USAGE_VISIBLE, !hidden);
        }

        let error = self.response_error.or(f.error).or(self.request_error);
        record.set_opt(sc::PARSE_ERROR, error.map(ParseError::as_str));
        if record.get(sc::ERROR_TYPE).is_none() {
            record.set_opt(sc::ERROR_TYPE, f.error_type.take());
        }
    }
}

/// `egret.mcp.batch.*` of a batch request: its size, then one entry per
/// recorded message in each parallel array (`""` where a message has no
/// such value), and the messages beyond the bound.
fn write_batch(record: &mut Record, b: &mcp::Batch, outcomes: &[(Option<String>, mcp::Outcome)]) {
    let col = |f: &dyn Fn(&mcp::Request) -> Option<&str>| -> Vec<String> {
        b.messages
            .iter()
            .map(|m| f(m).unwrap_or("").to_owned())
            .collect()
    };
    record.set(
        sc::MCP_BATCH_SIZE,
        i64::try_from(b.size).unwrap_or(i64::MAX),
    );
    record.set(sc::MCP_BATCH_METHOD_NAMES, col(&|m| m.method.as_deref()));
    record.set(sc::MCP_BATCH_REQUEST_IDS, col(&|m| m.id.as_deref()));
    record.set(sc::MCP_BATCH_TARGETS, col(&|m| m.target()));
    let errors: Vec<String> = outcomes
        .iter()
        .map(|(_, o)| o.error_type().to_owned())
        .collect();
    record.set(sc::MCP_BATCH_ERROR_TYPES, errors);
    let unrecorded = b.size.saturating_sub(b.messages.len());
    if unrecorded > 0 {
        record.set(
            sc::MCP_BATCH_UNRECORDED,
            i64::try_from(unrecorded).unwrap_or(i64::MAX),
        );
    }
}
