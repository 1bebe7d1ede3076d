//! AWS Bedrock Runtime (`bedrock-runtime[-fips].{region}.amazonaws.com[.cn]`,
//! `crate::providers::KNOWN`), provider `aws.bedrock`, format `bedrock`.
//!
//! Endpoints (`POST`, the model id percent-encoded in the path; it may be
//! a foundation model id `anthropic.claude-3-5-haiku-20241022-v1:0`, an
//! inference profile `us.anthropic…` or an ARN):
//!
//! | path | [`Api`] | `gen_ai.operation.name` | stream |
//! |---|---|---|---|
//! | `/model/{id}/converse` | `BedrockConverse` | `chat` | false |
//! | `/model/{id}/converse-stream` | `BedrockConverseStream` | `chat` | true |
//! | `/model/{id}/invoke` | `BedrockInvoke` | `chat` for Anthropic bodies, else unset | false |
//! | `/model/{id}/invoke-with-response-stream` | `BedrockInvokeStream` | same | true |
//!
//! `gen_ai.request.model` is the decoded model id. Bedrock puts no model
//! and no response id in Converse answers: `gen_ai.response.model` and
//! `gen_ai.response.id` stay unset (Anthropic-on-Bedrock invoke answers
//! carry the Anthropic message's `model` and `id`, which are recorded).
//!
//! **Converse** answers `{"output":{"message":…},"stopReason":…,
//! "usage":{inputTokens,outputTokens,totalTokens,cacheReadInputTokens,
//! cacheWriteInputTokens},"metrics":{"latencyMs":…}}`. **ConverseStream**
//! answers an AWS event stream ([`super::eventstream`]) of JSON events
//! named by the `:event-type` header: `messageStart`, `contentBlockStart`,
//! `contentBlockDelta`, `contentBlockStop`, `messageStop` (`stopReason`),
//! `metadata` (`usage`, `metrics`; the last event: the stream is complete
//! once it arrived).
//!
//! Usage mapping: Bedrock reports `inputTokens` *without* the prompt-cache
//! tokens (`totalTokens` = `inputTokens` + `outputTokens` +
//! `cacheReadInputTokens` + `cacheWriteInputTokens`), as Anthropic does. The semantic conventions
//! want `gen_ai.usage.input_tokens` to include cached tokens, so
//! `gen_ai.usage.input_tokens = inputTokens + cacheReadInputTokens +
//! cacheWriteInputTokens`; `cacheReadInputTokens` →
//! `gen_ai.usage.cache_read.input_tokens`, `cacheWriteInputTokens` →
//! `gen_ai.usage.cache_write.input_tokens` (and the older
//! `gen_ai.usage.cache_creation.input_tokens`: the attributes the Anthropic
//! parser uses for `cache_creation_input_tokens`). `stopReason` →
//! `gen_ai.response.finish_reasons` as sent (`end_turn`, `tool_use`,
//! `max_tokens`, `stop_sequence`, `guardrail_intervened`,
//! `content_filtered`, …).
//!
//! **InvokeModel** carries the model vendor's own body. Anthropic models
//! take the Messages API body without `model` (with
//! `anthropic_version: "bedrock-2023-05-31"`) and answer an Anthropic
//! message: parsed by the Anthropic parser (same usage mapping).
//! **InvokeModelWithResponseStream** answers an event stream of `chunk`
//! events whose payload is `{"bytes":"<base64>"}`; for Anthropic models
//! each decoded chunk is one Anthropic streaming event (fed to the
//! Anthropic parser), and the last one (`message_stop`) also carries
//! `amazon-bedrock-invocationMetrics {inputTokenCount, outputTokenCount,
//! invocationLatency, firstByteLatency}`.
//!
//! Other vendors' invoke bodies (Titan, Llama, Mistral, Cohere, …) have
//! shapes of their own. egret records what it can read without guessing:
//! the model (path), the stream flag (path), usage from the
//! `X-Amzn-Bedrock-Input-Token-Count` / `-Output-Token-Count` response
//! headers (InvokeModel) or the final chunk's
//! `amazon-bedrock-invocationMetrics` (streams) — Bedrock's own counts;
//! no operation, no finish reasons, and no parse error for a body shape it
//! does not know (only for invalid JSON or broken framing). The same counts
//! are the fallback for Anthropic bodies that reported no usage.
//!
//! Errors: a non-2xx answer's `X-Amzn-ErrorType` (`ValidationException:…`)
//! gives `error.type` (the part before `:`); in a stream, an `exception`
//! message's `:exception-type` (`throttlingException`,
//! `modelStreamErrorException`, …) or an `error` message's `:error-code`.
//!
//! Requests are SigV4-signed over the body and `Host`: egret forwards them
//! byte for byte (only the OpenAI Chat Completions usage rewrite ever
//! changes a body, and it never applies here).

use base64::Engine as _;
use http::HeaderMap;
use serde::Deserialize;

use super::de::BStr;
use super::eventstream::{FrameError, Message};
use super::{anthropic, json_error, json_scan, salvage_value, Api, Findings, ParseError};

/// True when `headers` carry an AWS SigV4 `Authorization` whose
/// `SignedHeaders` include `name`: the proxy must then leave that header
/// alone (changing it would void the signature). Presigned URLs sign in
/// the query and are not looked at.
pub fn sigv4_signs(headers: &HeaderMap, name: &str) -> bool {
    let Some(auth) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(fields) = auth.trim_start().strip_prefix("AWS4-HMAC-SHA256") else {
        return false;
    };
    fields
        .split(',')
        .filter_map(|f| f.trim().strip_prefix("SignedHeaders="))
        .flat_map(|list| list.split(';'))
        .any(|h| h.trim().eq_ignore_ascii_case(name))
}

/// The media type of an AWS event stream.
pub const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// `(encoded model id, operation)` of `/model/{id}/{operation}` (query
/// and a trailing slash allowed; a gateway prefix before `/model/` too).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.strip_suffix('/').unwrap_or(path);
    let (head, op) = path.rsplit_once('/')?;
    let id = match head.strip_prefix("/model/") {
        Some(id) => id,
        None => &head[head.find("/model/")? + "/model/".len()..],
    };
    (!id.is_empty()).then_some((id, op))
}

/// The endpoint of `path` (see the module docs).
pub fn classify(path: &str) -> Api {
    match split_path(path).map(|(_, op)| op) {
        Some("converse") => Api::BedrockConverse,
        Some("converse-stream") => Api::BedrockConverseStream,
        Some("invoke") => Api::BedrockInvoke,
        Some("invoke-with-response-stream") => Api::BedrockInvokeStream,
        _ => Api::Other,
    }
}

/// The model id of `path`, percent-decoded (`%3A` → `:`).
pub fn model_from_path(path: &str) -> Option<String> {
    let (id, _) = split_path(path)?;
    Some(
        percent_encoding::percent_decode_str(id)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// Reads a request body: `(anthropic, end)`, `anthropic` when the body
/// names `anthropic_version` at the top level (Bedrock requires it for
/// Anthropic models; the Anthropic SDK's Bedrock client always sends it).
pub fn scan_request(body: &[u8]) -> (bool, json_scan::ScanEnd) {
    let mut anthropic = false;
    let end = json_scan::scan(body, |h| {
        if h.parent.is_none() && h.key == b"anthropic_version" {
            anthropic = true;
        }
    });
    (anthropic, end)
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_write_input_tokens: Option<u64>,
}

/// A Converse answer or a ConverseStream event (`messageStop`,
/// `metadata`): the fields egret reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Converse<'a> {
    #[serde(borrow)]
    stop_reason: Option<BStr<'a>>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    bytes: Option<BStr<'a>>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct InvocationMetrics {
    input_token_count: Option<u64>,
    output_token_count: Option<u64>,
}

/// A decoded invoke chunk (or invoke body): its vendor `type`, and
/// Bedrock's metrics.
#[derive(Deserialize)]
struct Invoked<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<BStr<'a>>,
    #[serde(rename = "amazon-bedrock-invocationMetrics")]
    metrics: Option<InvocationMetrics>,
}

const METRICS_KEY: &[u8] = b"amazon-bedrock-invocationMetrics";

/// Accumulated state of one Bedrock response.
#[derive(Debug)]
pub struct State {
    api: Api,
    ok: bool,
    /// The request was an Anthropic Messages body.
    anthropic_request: bool,
    /// Anthropic events / body seen in the response.
    anthropic_seen: bool,
    anthropic: anthropic::State,
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    /// Bedrock's own counts (headers or invocation metrics): the fallback.
    counted_input: Option<u64>,
    counted_output: Option<u64>,
    error_type: Option<String>,
    /// Reused buffer for base64-decoded invoke chunks.
    decoded: Vec<u8>,
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl State {
    /// The state for a response with `status` and `headers` to a request
    /// to `api` (`anthropic_request`: its body was an Anthropic one).
    pub fn new(api: Api, anthropic_request: bool, status: u16, headers: &HeaderMap) -> State {
        let ok = (200..300).contains(&status);
        let error_type = if ok {
            None
        } else {
            headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(':').next().unwrap_or("").trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        State {
            api,
            ok,
            anthropic_request,
            anthropic_seen: false,
            anthropic: anthropic::State::default(),
            input: None,
            output: None,
            cache_read: None,
            cache_write: None,
            counted_input: header_u64(headers, "x-amzn-bedrock-input-token-count"),
            counted_output: header_u64(headers, "x-amzn-bedrock-output-token-count"),
            error_type,
            decoded: Vec::new(),
        }
    }

    fn is_invoke(&self) -> bool {
        matches!(self.api, Api::BedrockInvoke | Api::BedrockInvokeStream)
    }

    fn usage(&mut self, u: Usage) {
        self.input = u.input_tokens.or(self.input);
        self.output = u.output_tokens.or(self.output);
        self.cache_read = u.cache_read_input_tokens.or(self.cache_read);
        self.cache_write = u.cache_write_input_tokens.or(self.cache_write);
    }

    fn metrics(&mut self, m: InvocationMetrics) {
        if m.input_token_count.is_some() {
            self.counted_input = m.input_token_count;
        }
        if m.output_token_count.is_some() {
            self.counted_output = m.output_token_count;
        }
    }

    fn converse(&mut self, body: &[u8], f: &mut Findings) {
        match serde_json::from_slice::<Converse<'_>>(body) {
            Ok(c) => {
                if let Some(r) = &c.stop_reason {
                    f.set_reason(0, r.as_str());
                }
                if let Some(u) = c.usage {
                    self.usage(u);
                }
            }
            Err(e) => f.flag(json_error(&e)),
        }
    }

    /// A whole non-streaming body.
    pub fn json(&mut self, body: &[u8], f: &mut Findings) {
        f.complete = true;
        if !self.ok {
            // `{"message": …}`; the error type came with the headers.
            return;
        }
        if !self.is_invoke() {
            return self.converse(body, f);
        }
        let probe: Invoked<'_> = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return f.flag(json_error(&e)),
        };
        if let Some(m) = probe.metrics {
            self.metrics(m);
        }
        if self.anthropic_request
            || matches!(probe.kind.as_ref().map(BStr::as_str), Some("message"))
        {
            self.anthropic_seen = true;
            self.anthropic.json(body, f);
        }
    }

    /// The tail of an oversized non-streaming body.
    pub fn salvage(&mut self, tail: &[u8], f: &mut Findings) {
        if self.is_invoke() {
            self.anthropic_seen = true;
            return self.anthropic.salvage(tail, f);
        }
        if let Some(u) = salvage_value::<Usage>(tail, "usage") {
            self.usage(u);
        }
        if let Some(r) = salvage_value::<BStr<'_>>(tail, "stopReason") {
            f.set_reason(0, r.as_str());
        }
    }

    /// A framing problem of the event stream.
    pub fn frame_error(&mut self, e: FrameError, f: &mut Findings) {
        f.flag(match e {
            FrameError::TooLarge => ParseError::FrameTooLarge,
            FrameError::Invalid => ParseError::InvalidFrame,
        });
    }

    /// One event-stream message.
    pub fn message(&mut self, m: Message<'_>, f: &mut Findings) {
        match m.headers.get_str(":message-type") {
            Some("event") | None => {}
            Some("exception") => {
                let kind = m.headers.get_str(":exception-type").unwrap_or("exception");
                Findings::set_str(&mut f.error_type, kind);
                f.complete = true;
                return;
            }
            Some("error") => {
                let code = m.headers.get_str(":error-code").unwrap_or("error");
                Findings::set_str(&mut f.error_type, code);
                f.complete = true;
                return;
            }
            Some(_) => return,
        }
        let event = m.headers.get_str(":event-type").unwrap_or("");
        match (self.api, event) {
            (Api::BedrockInvoke | Api::BedrockInvokeStream, "chunk") => self.chunk(m.payload, f),
            (_, "messageStop") => self.converse(m.payload, f),
            (_, "metadata") => {
                self.converse(m.payload, f);
                f.complete = true;
            }
            // messageStart, contentBlock*: nothing egret records.
            _ => {}
        }
    }

    /// An InvokeModelWithResponseStream `chunk`: `{"bytes":"<base64>"}`.
    fn chunk(&mut self, payload: &[u8], f: &mut Findings) {
        let chunk: Chunk<'_> = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => return f.flag(json_error(&e)),
        };
        let Some(b64) = chunk.bytes else { return };
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        if base64::engine::general_purpose::STANDARD
            .decode_vec(b64.as_str(), &mut decoded)
            .is_err()
        {
            self.decoded = decoded;
            return f.flag(ParseError::InvalidFrame);
        }
        let has_metrics = memchr::memmem::find(&decoded, METRICS_KEY).is_some();
        let probe = if has_metrics || !self.anthropic_request {
            match serde_json::from_slice::<Invoked<'_>>(&decoded) {
                Ok(p) => Some((p.kind.is_some(), p.metrics)),
                Err(e) => {
                    self.decoded = decoded;
                    return f.flag(json_error(&e));
                }
            }
        } else {
            None
        };
        if let Some((_, Some(m))) = probe {
            self.metrics(m);
            // The final chunk of every vendor's stream carries the metrics.
            f.complete = true;
        }
        let anthropic = self.anthropic_request || probe.is_some_and(|(typed, _)| typed);
        if anthropic {
            self.anthropic_seen = true;
            self.anthropic.event(&decoded, f);
        }
        self.decoded = decoded;
    }

    /// Writes usage, the operation and the error type into `f`.
    pub fn end(&mut self, f: &mut Findings) {
        if self.anthropic_seen {
            self.anthropic.end(f);
        } else if self.input.is_some() || self.cache_read.is_some() || self.cache_write.is_some() {
            f.input_tokens = Some(
                self.input
                    .unwrap_or(0)
                    .saturating_add(self.cache_read.unwrap_or(0))
                    .saturating_add(self.cache_write.unwrap_or(0)),
            );
            f.cache_read_input_tokens = self.cache_read;
            f.cache_creation_input_tokens = self.cache_write;
        }
        if !self.anthropic_seen {
            f.output_tokens = f.output_tokens.or(self.output);
        }
        if f.input_tokens.is_none() && f.output_tokens.is_none() {
            f.input_tokens = self.counted_input;
            f.output_tokens = self.counted_output;
        }
        if self.is_invoke() && (self.anthropic_request || self.anthropic_seen) {
            f.operation = Some("chat");
        }
        if f.error_type.is_none() {
            f.error_type = self.error_type.take();
        }
    }
}

#[cfg(test)]
mod tests;
