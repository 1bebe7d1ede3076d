//! OpenAI: Chat Completions (`/v1/chat/completions`), legacy Completions
//! (`/v1/completions`), the Responses API (`/v1/responses`) and Embeddings
//! (`/v1/embeddings`).
//!
//! Chat / Completions streams are bare `data:` lines of
//! `chat.completion.chunk` (`text_completion`) objects ending with
//! `data: [DONE]`. Usage arrives only when the request set
//! `stream_options.include_usage`: then one extra chunk with `"choices": []`
//! and a `usage` object comes before `[DONE]` (every other chunk has
//! `"usage": null`). Finish reasons arrive per choice (`choices[].index`,
//! `choices[].finish_reason`).
//!
//! Responses API streams are `event:` + `data:` pairs whose data carries
//! `type` (`response.created`, `response.output_text.delta`, …). The
//! terminal event is `response.completed`, `response.incomplete` or
//! `response.failed`, each carrying the full `response` object with
//! `usage` (`input_tokens`, `output_tokens`,
//! `input_tokens_details.cached_tokens`). The Responses API has no finish
//! reason: egret records the response `status` (`completed`, `failed`, …),
//! or for `incomplete` the `incomplete_details.reason`
//! (e.g. `max_output_tokens`).
//!
//! OpenAI's `prompt_tokens` / `input_tokens` already include cached tokens,
//! matching `gen_ai.usage.input_tokens`; the cached part goes to
//! `gen_ai.usage.cache_read.input_tokens`.

use serde::Deserialize;

use super::de::{BStr, HasReason, Reasons};
use super::{json_error, salvage_value, Findings, Modality, ModalityTokens};

/// A per-modality split (`text_tokens`, `image_tokens`, `audio_tokens`),
/// where OpenAI reports one: Chat Completions' `prompt_tokens_details` and
/// `completion_tokens_details` (`audio_tokens`), the Realtime API's
/// `input_token_details` / `output_token_details` and their
/// `cached_tokens_details`, the image APIs' `input_tokens_details`.
#[derive(Deserialize, Clone, Copy, Default)]
pub(super) struct Split {
    text_tokens: Option<u64>,
    image_tokens: Option<u64>,
    audio_tokens: Option<u64>,
}

impl Split {
    /// Into a `[text, image, audio]` slot of [`ModalityTokens`].
    pub(super) fn put(&self, slot: &mut [Option<u64>; 3]) {
        for (m, v) in [
            (Modality::Text, self.text_tokens),
            (Modality::Image, self.image_tokens),
            (Modality::Audio, self.audio_tokens),
        ] {
            if let Some(n) = v {
                slot[m as usize] = Some(n);
            }
        }
    }
}

/// `prompt_tokens_details` / `input_tokens_details` (also the Realtime
/// API's `input_token_details`).
#[derive(Deserialize, Clone, Copy)]
pub(super) struct Details {
    pub(super) cached_tokens: Option<u64>,
    text_tokens: Option<u64>,
    image_tokens: Option<u64>,
    audio_tokens: Option<u64>,
    cached_tokens_details: Option<Split>,
}

impl Details {
    /// The modality split of the input and of its cache-read part.
    pub(super) fn modality(&self, m: &mut ModalityTokens) {
        Split {
            text_tokens: self.text_tokens,
            image_tokens: self.image_tokens,
            audio_tokens: self.audio_tokens,
        }
        .put(&mut m.input);
        if let Some(c) = &self.cached_tokens_details {
            c.put(&mut m.cache_read);
        }
    }
}

/// `completion_tokens_details` / `output_tokens_details`.
#[derive(Deserialize, Clone, Copy)]
pub(super) struct OutputDetails {
    reasoning_tokens: Option<u64>,
    text_tokens: Option<u64>,
    image_tokens: Option<u64>,
    audio_tokens: Option<u64>,
}

impl OutputDetails {
    /// The modality split of the output.
    pub(super) fn modality(&self, m: &mut ModalityTokens) {
        Split {
            text_tokens: self.text_tokens,
            image_tokens: self.image_tokens,
            audio_tokens: self.audio_tokens,
        }
        .put(&mut m.output);
    }
}

/// Chat/Completions usage (`prompt_tokens`…) and Responses usage
/// (`input_tokens`…) share one shape here.
#[derive(Deserialize, Clone, Copy)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<OutputDetails>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<OutputDetails>,
}

impl Usage {
    fn apply(self, f: &mut Findings) {
        if let Some(n) = self.prompt_tokens.or(self.input_tokens) {
            f.input_tokens = Some(n);
        }
        if let Some(n) = self.completion_tokens.or(self.output_tokens) {
            f.output_tokens = Some(n);
        }
        let input = self.prompt_tokens_details.or(self.input_tokens_details);
        if let Some(n) = input.and_then(|d| d.cached_tokens) {
            f.cache_read_input_tokens = Some(n);
        }
        if let Some(d) = input {
            d.modality(&mut f.modality);
        }
        let output = self
            .completion_tokens_details
            .or(self.output_tokens_details);
        // Reasoning tokens are part of the output count already.
        if let Some(n) = output.and_then(|d| d.reasoning_tokens) {
            f.reasoning_output_tokens = Some(n);
        }
        if let Some(d) = output {
            d.modality(&mut f.modality);
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ApiError<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<BStr<'a>>,
    #[serde(borrow, default, deserialize_with = "lenient_code")]
    code: Option<BStr<'a>>,
}

/// `error.code` is a string, a number or null depending on the endpoint.
fn lenient_code<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BStr<'a>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code<'a> {
        S(#[serde(borrow)] BStr<'a>),
        N(i64),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Code<'a>>::deserialize(d)? {
        Some(Code::S(s)) => Some(s),
        Some(Code::N(n)) => Some(BStr(n.to_string().into())),
        _ => None,
    })
}

impl ApiError<'_> {
    fn apply(&self, f: &mut Findings) {
        let v = self
            .code
            .as_ref()
            .or(self.kind.as_ref())
            .map_or("error", BStr::as_str);
        Findings::set_str(&mut f.error_type, v);
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    finish_reason: Option<BStr<'a>>,
}

impl<'a> HasReason<'a> for Choice<'a> {
    fn index(&self) -> Option<u32> {
        self.index
    }
    fn take_reason(self) -> Option<BStr<'a>> {
        self.finish_reason
    }
}

/// A chat completion (chunk), a text completion (chunk) or an embeddings
/// list: the fields we read are common to all of them.
#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow)]
    id: Option<BStr<'a>>,
    #[serde(borrow)]
    model: Option<BStr<'a>>,
    #[serde(borrow)]
    choices: Option<Reasons<'a, Choice<'a>>>,
    usage: Option<Usage>,
    #[serde(borrow)]
    error: Option<ApiError<'a>>,
}

impl Completion<'_> {
    fn apply(self, f: &mut Findings) {
        if let Some(e) = &self.error {
            e.apply(f);
        }
        if let Some(id) = &self.id {
            Findings::set_str(&mut f.response_id, id.as_str());
        }
        if let Some(m) = &self.model {
            Findings::set_str(&mut f.response_model, m.as_str());
        }
        let mut no_choices = false;
        if let Some(c) = self.choices {
            no_choices = c.len == 0;
            for (i, r) in &c.reasons {
                f.set_reason(*i, r.as_str());
            }
        }
        if let Some(u) = self.usage {
            if no_choices {
                f.usage_only_chunk = true;
            }
            u.apply(f);
        }
    }
}

/// True for the usage-only chunk of a Chat/Completions stream:
/// `"choices": []` and a non-null `usage`.
pub fn is_usage_only_chunk(data: &[u8]) -> bool {
    // Cheap pre-check before a JSON parse: such a chunk names `usage`.
    if memchr::memmem::find(data, b"\"usage\"").is_none() {
        return false;
    }
    match serde_json::from_slice::<Completion<'_>>(data) {
        Ok(c) => c.usage.is_some() && c.choices.is_some_and(|c| c.len == 0),
        Err(_) => false,
    }
}

/// The tail of an oversized non-streaming body (a large embeddings list,
/// typically): its trailing `usage`.
pub fn salvage(tail: &[u8], f: &mut Findings) {
    if let Some(u) = salvage_value::<Usage>(tail, "usage") {
        u.apply(f);
    }
    if let Some(m) = salvage_value::<BStr<'_>>(tail, "model") {
        Findings::set_str(&mut f.response_model, m.as_str());
    }
}

/// Chat Completions and legacy Completions.
#[derive(Debug, Default)]
pub struct Chat;

impl Chat {
    pub fn event(&mut self, data: &[u8], f: &mut Findings) {
        if data.trim_ascii() == b"[DONE]" {
            f.complete = true;
            return;
        }
        match serde_json::from_slice::<Completion<'_>>(data) {
            Ok(c) => {
                if c.error.is_some() {
                    // A mid-stream error ends the stream.
                    f.complete = true;
                }
                c.apply(f)
            }
            Err(e) => f.flag(json_error(&e)),
        }
    }

    /// A non-streaming completion, an embeddings list or an error body.
    pub fn json(&mut self, body: &[u8], f: &mut Findings) {
        match serde_json::from_slice::<Completion<'_>>(body) {
            Ok(c) => {
                f.complete = true;
                c.apply(f);
            }
            Err(e) => f.flag(json_error(&e)),
        }
    }
}

#[derive(Deserialize)]
struct Incomplete<'a> {
    #[serde(borrow)]
    reason: Option<BStr<'a>>,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    id: Option<BStr<'a>>,
    #[serde(borrow)]
    model: Option<BStr<'a>>,
    #[serde(borrow)]
    status: Option<BStr<'a>>,
    #[serde(borrow)]
    incomplete_details: Option<Incomplete<'a>>,
    usage: Option<Usage>,
    #[serde(borrow)]
    error: Option<ApiError<'a>>,
}

impl Response<'_> {
    fn apply(self, f: &mut Findings) {
        if let Some(id) = &self.id {
            Findings::set_str(&mut f.response_id, id.as_str());
        }
        if let Some(m) = &self.model {
            Findings::set_str(&mut f.response_model, m.as_str());
        }
        if let Some(e) = &self.error {
            e.apply(f);
        }
        let status = self.status.as_ref().map(BStr::as_str);
        match status {
            Some("incomplete") => {
                let reason = self
                    .incomplete_details
                    .as_ref()
                    .and_then(|d| d.reason.as_ref())
                    .map_or("incomplete", BStr::as_str);
                f.set_reason(0, reason);
            }
            Some(s @ ("completed" | "failed" | "cancelled")) => f.set_reason(0, s),
            _ => {}
        }
        if let Some(u) = self.usage {
            u.apply(f);
        }
    }
}

/// One Responses API stream event.
#[derive(Deserialize)]
struct ResponsesEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<BStr<'a>>,
    #[serde(borrow)]
    response: Option<Response<'a>>,
    // `error` events carry code/message at the top level.
    #[serde(borrow, default, deserialize_with = "lenient_code")]
    code: Option<BStr<'a>>,
}

/// The Responses API.
#[derive(Debug, Default)]
pub struct Responses;

impl Responses {
    pub fn event(&mut self, name: &str, data: &[u8], f: &mut Findings) {
        // Events that cannot matter are skipped without parsing: deltas are
        // by far the most frequent.
        if name.ends_with(".delta") {
            return;
        }
        let ev: ResponsesEvent<'_> = match serde_json::from_slice(data) {
            Ok(ev) => ev,
            Err(e) => return f.flag(json_error(&e)),
        };
        let kind = ev.kind.as_ref().map_or(name, BStr::as_str);
        match kind {
            "response.completed" | "response.incomplete" | "response.failed" => {
                f.complete = true;
                if let Some(r) = ev.response {
                    r.apply(f);
                }
            }
            "response.created" | "response.in_progress" | "response.queued" => {
                if let Some(r) = ev.response {
                    r.apply(f);
                }
            }
            "error" => {
                f.complete = true;
                Findings::set_str(
                    &mut f.error_type,
                    ev.code.as_ref().map_or("error", BStr::as_str),
                );
            }
            _ => {}
        }
    }

    pub fn json(&mut self, body: &[u8], f: &mut Findings) {
        match serde_json::from_slice::<Response<'_>>(body) {
            Ok(r) => {
                f.complete = true;
                r.apply(f);
            }
            Err(e) => f.flag(json_error(&e)),
        }
    }
}
