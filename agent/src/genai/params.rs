//! Request parameters as the client sent them: `gen_ai.request.*`
//! (max tokens, sampling, stop sequences, seed, penalties, choice count),
//! `gen_ai.output.type` and `gen_ai.conversation.id`, read from the request
//! body prefix by the same scan that finds the model.
//!
//! Where each format keeps them:
//! - OpenAI: top-level `max_tokens` / `max_completion_tokens` (Chat) /
//!   `max_output_tokens` (Responses), `temperature`, `top_p`, `seed`,
//!   `frequency_penalty`, `presence_penalty`, `n`, `stop` (string or
//!   array); `response_format.type` (Chat) or `text.format.type`
//!   (Responses) for the output type; Responses `conversation` (an id or
//!   `{"id": …}`) for the conversation.
//! - Anthropic: `max_tokens`, `temperature`, `top_p`, `top_k`,
//!   `stop_sequences`; `output_format.type` (structured outputs).
//! - Gemini: `generationConfig.{maxOutputTokens, temperature, topP, topK,
//!   stopSequences, seed, frequencyPenalty, presencePenalty,
//!   candidateCount, responseMimeType}`.
//! - Ollama: `options.{num_predict, temperature, top_p, top_k, seed, stop,
//!   frequency_penalty, presence_penalty}`; `format` (`"json"` or a schema).
//! - Bedrock Converse: `inferenceConfig.{maxTokens, temperature, topP,
//!   stopSequences}`; Bedrock invoke with an Anthropic body: as Anthropic.
//!
//! Only what the request says is written: a parameter the client left to
//! the provider's default is absent, never the default guessed.
//! `gen_ai.request.choice.count` is written only when it is not 1, as the
//! conventions ask.

use super::json_scan::{Hit, Value};
use super::Api;
use crate::record::Record;
use crate::semconv as sc;

/// The parameters found so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Params {
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<f64>,
    stop_sequences: Option<Vec<String>>,
    seed: Option<i64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    choice_count: Option<i64>,
    output_type: Option<&'static str>,
    conversation_id: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    OpenAi,
    Anthropic,
    Google,
    Ollama,
    Converse,
}

fn num(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Num(raw) => std::str::from_utf8(raw).ok()?.parse().ok(),
        _ => None,
    }
}

fn int(v: &Value<'_>) -> Option<i64> {
    match v {
        Value::Num(raw) => std::str::from_utf8(raw).ok()?.parse().ok(),
        _ => None,
    }
}

/// A string, or an array of strings (its span parsed).
fn strings(v: &Value<'_>, span: &[u8]) -> Option<Vec<String>> {
    match v {
        Value::Str { .. } => v.as_str().map(|s| vec![s.into_owned()]),
        Value::Array => serde_json::from_slice(span).ok(),
        _ => None,
    }
}

/// `type` of an object value (its span parsed).
fn type_of(span: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: Option<String>,
        id: Option<String>,
    }
    let t: Typed = serde_json::from_slice(span).ok()?;
    t.kind.or(t.id)
}

/// A format's own output type → the conventions' value.
fn output_type(t: &str) -> Option<&'static str> {
    match t {
        "text" | "text/plain" => Some("text"),
        "json_object" | "json_schema" | "json" | "application/json" => Some("json"),
        "text/x.enum" => Some("text"),
        _ => None,
    }
}

impl Params {
    /// One field of the request body (`body` is what the scan walks).
    pub fn hit(&mut self, api: Api, h: &Hit<'_>, body: &[u8]) {
        let family = match api {
            Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiResponses => Family::OpenAi,
            Api::AnthropicMessages => Family::Anthropic,
            Api::GoogleGenerate | Api::GoogleStreamGenerate => Family::Google,
            Api::OllamaChat | Api::OllamaGenerate => Family::Ollama,
            Api::BedrockConverse | Api::BedrockConverseStream => Family::Converse,
            _ => return,
        };
        let v = &h.value;
        let span = body.get(h.start..h.end).unwrap_or(&[]);
        let key = h.key;
        match (family, h.parent) {
            (Family::OpenAi | Family::Anthropic, None) => match key {
                b"max_tokens" | b"max_completion_tokens" | b"max_output_tokens" => {
                    self.max_tokens = int(v).or(self.max_tokens)
                }
                b"temperature" => self.temperature = num(v),
                b"top_p" => self.top_p = num(v),
                b"top_k" if family == Family::Anthropic => self.top_k = num(v),
                b"seed" if family == Family::OpenAi => self.seed = int(v),
                b"frequency_penalty" if family == Family::OpenAi => self.frequency_penalty = num(v),
                b"presence_penalty" if family == Family::OpenAi => self.presence_penalty = num(v),
                b"n" if family == Family::OpenAi => self.choice_count = int(v),
                b"stop" if family == Family::OpenAi => self.stop_sequences = strings(v, span),
                b"stop_sequences" if family == Family::Anthropic => {
                    self.stop_sequences = strings(v, span)
                }
                b"conversation" if family == Family::OpenAi => {
                    self.conversation_id = match v {
                        Value::Str { .. } => v.as_str().map(|s| s.into_owned()),
                        Value::Object => type_of(span),
                        _ => None,
                    }
                }
                _ => {}
            },
            (Family::OpenAi, Some(b"response_format"))
            | (Family::Anthropic, Some(b"output_format"))
                if key == b"type" =>
            {
                self.output_type = v.as_str().and_then(|t| output_type(&t));
            }
            (Family::OpenAi, Some(b"text")) if key == b"format" => {
                self.output_type = type_of(span).as_deref().and_then(output_type);
            }
            (Family::Google, Some(b"generationConfig" | b"generation_config")) => match key {
                b"maxOutputTokens" | b"max_output_tokens" => self.max_tokens = int(v),
                b"temperature" => self.temperature = num(v),
                b"topP" | b"top_p" => self.top_p = num(v),
                b"topK" | b"top_k" => self.top_k = num(v),
                b"seed" => self.seed = int(v),
                b"frequencyPenalty" | b"frequency_penalty" => self.frequency_penalty = num(v),
                b"presencePenalty" | b"presence_penalty" => self.presence_penalty = num(v),
                b"candidateCount" | b"candidate_count" => self.choice_count = int(v),
                b"stopSequences" | b"stop_sequences" => self.stop_sequences = strings(v, span),
                b"responseMimeType" | b"response_mime_type" => {
                    self.output_type = v.as_str().and_then(|t| output_type(&t))
                }
                _ => {}
            },
            (Family::Converse, Some(b"inferenceConfig")) => match key {
                b"maxTokens" => self.max_tokens = int(v),
                b"temperature" => self.temperature = num(v),
                b"topP" => self.top_p = num(v),
                b"stopSequences" => self.stop_sequences = strings(v, span),
                _ => {}
            },
            (Family::Ollama, Some(b"options")) => match key {
                b"num_predict" => self.max_tokens = int(v),
                b"temperature" => self.temperature = num(v),
                b"top_p" => self.top_p = num(v),
                b"top_k" => self.top_k = num(v),
                b"seed" => self.seed = int(v),
                b"frequency_penalty" => self.frequency_penalty = num(v),
                b"presence_penalty" => self.presence_penalty = num(v),
                b"stop" => self.stop_sequences = strings(v, span),
                _ => {}
            },
            (Family::Ollama, None) if key == b"format" => {
                self.output_type = match v {
                    Value::Str { .. } => v.as_str().and_then(|t| output_type(&t)),
                    // A JSON schema.
                    Value::Object => Some("json"),
                    _ => None,
                }
            }
            _ => {}
        }
    }

    /// Writes what was found.
    pub fn write(self, record: &mut Record) {
        record.set_opt(sc::GEN_AI_REQUEST_MAX_TOKENS, self.max_tokens);
        record.set_opt(sc::GEN_AI_REQUEST_TEMPERATURE, self.temperature);
        record.set_opt(sc::GEN_AI_REQUEST_TOP_P, self.top_p);
        record.set_opt(sc::GEN_AI_REQUEST_TOP_K, self.top_k);
        record.set_opt(sc::GEN_AI_REQUEST_STOP_SEQUENCES, self.stop_sequences);
        record.set_opt(sc::GEN_AI_REQUEST_SEED, self.seed);
        record.set_opt(sc::GEN_AI_REQUEST_FREQUENCY_PENALTY, self.frequency_penalty);
        record.set_opt(sc::GEN_AI_REQUEST_PRESENCE_PENALTY, self.presence_penalty);
        record.set_opt(
            sc::GEN_AI_REQUEST_CHOICE_COUNT,
            self.choice_count.filter(|n| *n != 1),
        );
        record.set_opt(sc::GEN_AI_OUTPUT_TYPE, self.output_type);
        record.set_opt(sc::GEN_AI_CONVERSATION_ID, self.conversation_id);
    }
}
