//! Google Gemini API (`generativelanguage.googleapis.com`):
//! `models/{model}:generateContent`, `:streamGenerateContent`,
//! `:embedContent`, `:batchEmbedContents`.
//!
//! A `GenerateContentResponse` has `candidates[]` (`index`,
//! `finishReason`), `usageMetadata` (`promptTokenCount`,
//! `candidatesTokenCount`, `cachedContentTokenCount`,
//! `thoughtsTokenCount`, `toolUsePromptTokenCount`, `totalTokenCount`),
//! `modelVersion` and `responseId`. Streaming with `?alt=sse` sends one
//! response per `data:` event, separated by `\r\n\r\n`, each carrying the
//! *cumulative* `usageMetadata`, so the last one wins. Without `alt=sse`,
//! `streamGenerateContent` answers with a JSON array of responses, which is
//! parsed the same way. Errors are `{"error":{"code","message","status"}}`.
//!
//! Usage mapping: input = `promptTokenCount` (already includes cached
//! content) + `toolUsePromptTokenCount`; output = `candidatesTokenCount` +
//! `thoughtsTokenCount` (thinking tokens are billed as output, as they are
//! in OpenAI's `completion_tokens` and Anthropic's `output_tokens`);
//! cache read = `cachedContentTokenCount`. The modality split comes from
//! `promptTokensDetails`, `cacheTokensDetails` and `candidatesTokensDetails`
//! (`[{modality, tokenCount}]`). There is no end-of-stream
//! marker: a stream counts as complete once a candidate reported a
//! `finishReason` (or the prompt was blocked).

use serde::Deserialize;

use super::de::{BStr, HasReason, Reasons};
use super::{json_error, salvage_value, Findings, Modality, ModalityTokens};

#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata<'a> {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    tool_use_prompt_token_count: Option<u64>,
    #[serde(borrow, default)]
    prompt_tokens_details: Option<Vec<ModalityTokenCount<'a>>>,
    #[serde(borrow, default)]
    cache_tokens_details: Option<Vec<ModalityTokenCount<'a>>>,
    #[serde(borrow, default)]
    candidates_tokens_details: Option<Vec<ModalityTokenCount<'a>>>,
}

/// `{modality, tokenCount}` of `promptTokensDetails`, `cacheTokensDetails`
/// and `candidatesTokensDetails`.
#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct ModalityTokenCount<'a> {
    #[serde(borrow)]
    modality: Option<BStr<'a>>,
    token_count: Option<u64>,
}

/// A details list into a `[text, image, audio]` slot (None when absent).
fn by_modality(list: &Option<Vec<ModalityTokenCount<'_>>>) -> [Option<u64>; 3] {
    let mut slot = [None; 3];
    for e in list.iter().flatten() {
        let m = e
            .modality
            .as_ref()
            .map_or(Some(Modality::Text), |m| Modality::from_gemini(m.as_str()));
        if let (Some(m), Some(n)) = (m, e.token_count) {
            ModalityTokens::add(&mut slot, m, n);
        }
    }
    slot
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    finish_reason: Option<BStr<'a>>,
}

impl<'a> HasReason<'a> for Candidate<'a> {
    fn index(&self) -> Option<u32> {
        self.index
    }
    fn take_reason(self) -> Option<BStr<'a>> {
        self.finish_reason
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow)]
    block_reason: Option<BStr<'a>>,
}

#[derive(Deserialize)]
struct ApiError<'a> {
    #[serde(borrow)]
    status: Option<BStr<'a>>,
    code: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse<'a> {
    #[serde(borrow)]
    candidates: Option<Reasons<'a, Candidate<'a>>>,
    #[serde(borrow)]
    usage_metadata: Option<UsageMetadata<'a>>,
    #[serde(borrow)]
    model_version: Option<BStr<'a>>,
    #[serde(borrow)]
    response_id: Option<BStr<'a>>,
    #[serde(borrow)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(borrow)]
    error: Option<ApiError<'a>>,
}

/// Accumulated state of one response.
#[derive(Debug, Default)]
pub struct State {
    usage: Option<UsageMetadataSnapshot>,
}

#[derive(Debug, Clone, Copy)]
struct UsageMetadataSnapshot {
    prompt: Option<u64>,
    candidates: Option<u64>,
    cached: Option<u64>,
    thoughts: Option<u64>,
    tool_prompt: Option<u64>,
    modality: ModalityTokens,
}

impl State {
    fn apply(&mut self, r: GenerateResponse<'_>, f: &mut Findings) {
        if let Some(e) = &r.error {
            match (&e.status, e.code) {
                (Some(s), _) => Findings::set_str(&mut f.error_type, s.as_str()),
                (None, Some(c)) => f.error_type = Some(c.to_string()),
                (None, None) => Findings::set_str(&mut f.error_type, "error"),
            }
            f.complete = true;
        }
        if let Some(v) = &r.model_version {
            Findings::set_str(&mut f.response_model, v.as_str());
        }
        if let Some(id) = &r.response_id {
            Findings::set_str(&mut f.response_id, id.as_str());
        }
        if let Some(c) = r.candidates {
            for (i, reason) in &c.reasons {
                f.set_reason(*i, reason.as_str());
                f.complete = true;
            }
        }
        if r.prompt_feedback
            .as_ref()
            .is_some_and(|p| p.block_reason.is_some())
        {
            f.complete = true;
        }
        if let Some(u) = r.usage_metadata {
            // Cumulative: the latest report replaces the previous one.
            self.usage = Some(UsageMetadataSnapshot {
                prompt: u.prompt_token_count,
                candidates: u.candidates_token_count,
                cached: u.cached_content_token_count,
                thoughts: u.thoughts_token_count,
                tool_prompt: u.tool_use_prompt_token_count,
                modality: ModalityTokens {
                    input: by_modality(&u.prompt_tokens_details),
                    cache_read: by_modality(&u.cache_tokens_details),
                    output: by_modality(&u.candidates_tokens_details),
                },
            });
        }
    }

    /// One SSE event (`alt=sse`).
    pub fn event(&mut self, data: &[u8], f: &mut Findings) {
        match serde_json::from_slice::<GenerateResponse<'_>>(data) {
            Ok(r) => self.apply(r, f),
            Err(e) => f.flag(json_error(&e)),
        }
    }

    /// A whole body: one response object, or an array of them
    /// (`streamGenerateContent` without `alt=sse`). Embedding responses
    /// parse as an object without any field we record.
    pub fn json(&mut self, body: &[u8], f: &mut Findings) {
        let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first == Some(b'[') {
            match serde_json::from_slice::<Vec<GenerateResponse<'_>>>(body) {
                Ok(list) => {
                    for r in list {
                        self.apply(r, f);
                    }
                    f.complete = true;
                }
                Err(e) => f.flag(json_error(&e)),
            }
        } else {
            match serde_json::from_slice::<GenerateResponse<'_>>(body) {
                Ok(r) => {
                    self.apply(r, f);
                    f.complete = true;
                }
                Err(e) => f.flag(json_error(&e)),
            }
        }
    }

    /// The tail of an oversized non-streaming body.
    pub fn salvage(&mut self, tail: &[u8], f: &mut Findings) {
        if let Some(u) = salvage_value::<UsageMetadata>(tail, "usageMetadata") {
            self.apply(
                GenerateResponse {
                    candidates: None,
                    usage_metadata: Some(u),
                    model_version: salvage_value(tail, "modelVersion"),
                    response_id: salvage_value(tail, "responseId"),
                    prompt_feedback: None,
                    error: None,
                },
                f,
            );
        }
    }

    pub fn end(&mut self, f: &mut Findings) {
        let Some(u) = self.usage else { return };
        if u.prompt.is_some() || u.tool_prompt.is_some() {
            f.input_tokens = Some(
                u.prompt
                    .unwrap_or(0)
                    .saturating_add(u.tool_prompt.unwrap_or(0)),
            );
        }
        if u.candidates.is_some() || u.thoughts.is_some() {
            f.output_tokens = Some(
                u.candidates
                    .unwrap_or(0)
                    .saturating_add(u.thoughts.unwrap_or(0)),
            );
        }
        f.cache_read_input_tokens = u.cached;
        f.reasoning_output_tokens = u.thoughts;
        f.modality = u.modality;
    }
}

/// The model named in a Gemini path: the last segment's part before `:`
/// (`/v1beta/models/gemini-2.5-flash:generateContent` → `gemini-2.5-flash`;
/// also `tunedModels/…` and Vertex-style `publishers/google/models/…`).
pub fn model_from_path(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    let (model, _method) = last.split_once(':')?;
    (!model.is_empty()).then_some(model)
}

/// The method named in a Gemini path (`generateContent`, …).
pub fn method_from_path(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    last.split_once(':').map(|(_, m)| m)
}
