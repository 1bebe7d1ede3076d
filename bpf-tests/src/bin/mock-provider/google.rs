//! Google Generative Language API.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::routing::{bad_request, Call, Reject};
use crate::shared::{json_response, query_param, State};
use crate::sse::{sse_response, stream_response};
use crate::tokens::{output_tokens, reply_deltas, reply_text, text_words, words};
use crate::RespBody;

const WORDS_PER_CHUNK: usize = 4;

pub fn generate(
    state: &State,
    call: &Call,
    model: &str,
    stream: bool,
) -> Result<Response<RespBody>, Reject> {
    let body = &call.body;
    if model.is_empty() {
        return Err(bad_request("model name is empty"));
    }
    let input = match body.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c.iter().map(text_words).sum::<u64>(),
        _ => {
            return Err(bad_request(
                "* GenerateContentRequest.contents: contents is not specified",
            ))
        }
    } + body
        .get("systemInstruction")
        .or(body.get("system_instruction"))
        .map_or(0, text_words);
    let limit = match body.pointer("/generationConfig/maxOutputTokens") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            bad_request("generationConfig.maxOutputTokens: expected a non-negative integer")
        })?),
    };
    let (output, cut) = output_tokens(call, limit);
    let finish = if cut { "MAX_TOKENS" } else { "STOP" };
    let response_id = state.id("");

    let chunk = |text: &str, so_far: u64, finish: Option<&str>| {
        let mut candidate = json!({
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        });
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": input,
                "candidatesTokenCount": so_far,
                "totalTokenCount": input + so_far,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input}],
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": so_far}],
            },
            "modelVersion": model,
            "responseId": response_id,
        })
    };

    if !stream {
        return Ok(json_response(
            StatusCode::OK,
            &chunk(&reply_text(output), output, Some(finish)),
        ));
    }

    let deltas = reply_deltas(output);
    let groups: Vec<String> = if deltas.is_empty() {
        vec![String::new()]
    } else {
        deltas.chunks(WORDS_PER_CHUNK).map(|c| c.concat()).collect()
    };
    let mut so_far = 0u64;
    let last = groups.len() - 1;
    let chunks: Vec<Value> = groups
        .iter()
        .enumerate()
        .map(|(i, text)| {
            so_far += words(text);
            chunk(text, so_far, (i == last).then_some(finish))
        })
        .collect();

    let sse = query_param(call.query.as_deref(), "alt") == Some("sse");
    if sse {
        let events = chunks
            .iter()
            .map(|c| Bytes::from(format!("data: {c}\r\n\r\n")))
            .collect();
        return Ok(sse_response(events, call.delay));
    }
    // Without alt=sse the API streams one JSON array.
    let n = chunks.len();
    let parts = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let open = if i == 0 { "[" } else { "" };
            let close = if i + 1 == n { "]" } else { ",\r\n" };
            Bytes::from(format!("{open}{c}{close}"))
        })
        .collect();
    Ok(stream_response(
        "application/json; charset=UTF-8",
        parts,
        call.delay,
    ))
}
