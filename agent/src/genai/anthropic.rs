//! Anthropic Messages API (`POST /v1/messages`).
//!
//! Non-streaming: one `Message` JSON object (`id`, `model`, `stop_reason`,
//! `usage`) or an error object (`{"type":"error","error":{"type":…}}`).
//!
//! Streaming (`"stream": true`): `event:` + `data:` pairs — `message_start`
//! (the `Message` with empty content and the input-side usage:
//! `input_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens`,
//! an initial `output_tokens`), `content_block_*`, `ping`, one or more
//! `message_delta` (`delta.stop_reason`; `usage` with the *cumulative*
//! `output_tokens`, and on newer API versions cumulative input/cache counts
//! too), `message_stop` (the end) and possibly `error`.
//!
//! Usage mapping (OTel GenAI semconv, Anthropic section):
//! `gen_ai.usage.input_tokens = input_tokens + cache_read_input_tokens +
//! cache_creation_input_tokens` (Anthropic's `input_tokens` excludes cached
//! tokens); the cache counts go to their own attributes.

use serde::Deserialize;

use super::de::BStr;
use super::{json_error, salvage_value, Findings};

#[derive(Deserialize, Default, Clone, Copy)]
struct Usage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    /// The cache writes split by time-to-live (priced differently).
    cache_creation: Option<CacheCreation>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct CacheCreation {
    ephemeral_1h_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<BStr<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    id: Option<BStr<'a>>,
    #[serde(borrow)]
    model: Option<BStr<'a>>,
    #[serde(borrow)]
    stop_reason: Option<BStr<'a>>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    stop_reason: Option<BStr<'a>>,
}

/// A stream event or a whole non-streaming body: both carry `type`.
#[derive(Deserialize)]
struct Object<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<BStr<'a>>,
    // Non-streaming `Message` fields (also the shape of `message_start.message`).
    #[serde(borrow)]
    id: Option<BStr<'a>>,
    #[serde(borrow)]
    model: Option<BStr<'a>>,
    #[serde(borrow)]
    stop_reason: Option<BStr<'a>>,
    // Stream events.
    #[serde(borrow)]
    message: Option<Message<'a>>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    usage: Option<Usage>,
    #[serde(borrow)]
    error: Option<ErrorBody<'a>>,
}

/// Accumulated state of one response.
#[derive(Debug, Default)]
pub struct State {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    cache_creation_1h: Option<u64>,
}

impl State {
    fn usage(&mut self, u: Usage) {
        // Counts are cumulative: a later report replaces an earlier one.
        self.input = u.input_tokens.or(self.input);
        self.output = u.output_tokens.or(self.output);
        self.cache_read = u.cache_read_input_tokens.or(self.cache_read);
        self.cache_creation = u.cache_creation_input_tokens.or(self.cache_creation);
        self.cache_creation_1h = u
            .cache_creation
            .and_then(|c| c.ephemeral_1h_input_tokens)
            .or(self.cache_creation_1h);
    }

    fn error(&mut self, e: Option<ErrorBody<'_>>, f: &mut Findings) {
        let kind = e.and_then(|e| e.kind);
        Findings::set_str(
            &mut f.error_type,
            kind.as_ref().map_or("error", BStr::as_str),
        );
    }

    /// One SSE event's data.
    pub fn event(&mut self, data: &[u8], f: &mut Findings) {
        let ev: Object<'_> = match serde_json::from_slice(data) {
            Ok(ev) => ev,
            Err(e) => return f.flag(json_error(&e)),
        };
        match ev.kind.as_ref().map(BStr::as_str) {
            Some("message_start") => {
                if let Some(m) = ev.message {
                    if let Some(id) = &m.id {
                        Findings::set_str(&mut f.response_id, id.as_str());
                    }
                    if let Some(model) = &m.model {
                        Findings::set_str(&mut f.response_model, model.as_str());
                    }
                    if let Some(r) = &m.stop_reason {
                        f.set_reason(0, r.as_str());
                    }
                    if let Some(u) = m.usage {
                        self.usage(u);
                    }
                }
            }
            Some("message_delta") => {
                if let Some(r) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_ref()) {
                    f.set_reason(0, r.as_str());
                }
                if let Some(u) = ev.usage {
                    self.usage(u);
                }
            }
            Some("message_stop") => f.complete = true,
            Some("error") => {
                self.error(ev.error, f);
                // An error event ends the stream: nothing was cut short.
                f.complete = true;
            }
            _ => {}
        }
    }

    /// A whole non-streaming body.
    pub fn json(&mut self, body: &[u8], f: &mut Findings) {
        let m: Object<'_> = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(e) => return f.flag(json_error(&e)),
        };
        f.complete = true;
        if m.kind.as_ref().map(BStr::as_str) == Some("error") || m.error.is_some() {
            return self.error(m.error, f);
        }
        if let Some(id) = &m.id {
            Findings::set_str(&mut f.response_id, id.as_str());
        }
        if let Some(model) = &m.model {
            Findings::set_str(&mut f.response_model, model.as_str());
        }
        if let Some(r) = &m.stop_reason {
            f.set_reason(0, r.as_str());
        }
        if let Some(u) = m.usage {
            self.usage(u);
        }
    }

    /// The tail of an oversized non-streaming body.
    pub fn salvage(&mut self, tail: &[u8], f: &mut Findings) {
        if let Some(u) = salvage_value::<Usage>(tail, "usage") {
            self.usage(u);
        }
        if let Some(r) = salvage_value::<BStr<'_>>(tail, "stop_reason") {
            f.set_reason(0, r.as_str());
        }
    }

    /// Writes the usage into `f`.
    pub fn end(&mut self, f: &mut Findings) {
        if self.input.is_some() || self.cache_read.is_some() || self.cache_creation.is_some() {
            f.input_tokens = Some(
                self.input
                    .unwrap_or(0)
                    .saturating_add(self.cache_read.unwrap_or(0))
                    .saturating_add(self.cache_creation.unwrap_or(0)),
            );
        }
        f.output_tokens = self.output;
        f.cache_read_input_tokens = self.cache_read;
        f.cache_creation_input_tokens = self.cache_creation;
        f.cache_write_1h_input_tokens = self.cache_creation_1h;
    }
}
