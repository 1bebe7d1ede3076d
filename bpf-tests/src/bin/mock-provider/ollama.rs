//! Ollama's native API: `POST /api/chat`, `/api/generate`, `/api/embed`.
//!
//! As Ollama does: requests stream unless `"stream": false`; a stream is
//! NDJSON (`application/x-ndjson`), one object per line with `done: false`,
//! then a last line with `done: true`, `done_reason` and the counts
//! (`prompt_eval_count` = input tokens, `eval_count` = output tokens, by
//! the mock's word rule). Errors are `{"error": "…"}`.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::routing::{bad_request, Call, Reject};
use crate::shared::{json_response, unix_now, State};
use crate::sse::stream_response;
use crate::tokens::{
    model_of, output_tokens, reply_deltas, reply_text, text_words, u64_field, words,
};
use crate::RespBody;

/// Which endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Generate,
}

fn created_at() -> String {
    // RFC 3339 in UTC, seconds precision (enough for the SDK's parser).
    let secs = unix_now();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn generate(_state: &State, call: &Call, api: Api) -> Result<Response<RespBody>, Reject> {
    let body = &call.body;
    let model = model_of(body)?;
    let input = match api {
        Api::Chat => match body.get("messages") {
            Some(Value::Array(m)) => m
                .iter()
                .map(|m| text_words(m.get("content").unwrap_or(&Value::Null)))
                .sum(),
            _ => return Err(bad_request("messages: field required")),
        },
        Api::Generate => match body.get("prompt") {
            Some(Value::String(p)) => words(p),
            _ => return Err(bad_request("prompt: field required")),
        },
    };
    let limit = body
        .get("options")
        .map(|o| u64_field(o, "num_predict"))
        .transpose()?
        .flatten();
    let (output, cut) = output_tokens(call, limit);
    let done_reason = if cut { "length" } else { "stop" };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let piece = |text: &str| match api {
        Api::Chat => json!({"message": {"role": "assistant", "content": text}}),
        Api::Generate => json!({"response": text}),
    };
    let line = |text: &str, done: bool| {
        let mut v = json!({"model": model, "created_at": created_at(), "done": done});
        for (k, x) in piece(text).as_object().unwrap() {
            v[k] = x.clone();
        }
        if done {
            v["done_reason"] = json!(done_reason);
            v["total_duration"] = json!(1_000_000u64 * (output + 1));
            v["load_duration"] = json!(1_000u64);
            v["prompt_eval_count"] = json!(input);
            v["prompt_eval_duration"] = json!(10_000u64);
            v["eval_count"] = json!(output);
            v["eval_duration"] = json!(1_000_000u64 * output);
        }
        v
    };
    if !stream {
        return Ok(json_response(
            StatusCode::OK,
            &line(&reply_text(output), true),
        ));
    }
    let mut lines: Vec<Bytes> = reply_deltas(output)
        .iter()
        .map(|d| Bytes::from(format!("{}\n", line(d, false))))
        .collect();
    lines.push(Bytes::from(format!("{}\n", line("", true))));
    Ok(stream_response("application/x-ndjson", lines, call.delay))
}

pub fn embed(_state: &State, call: &Call) -> Result<Response<RespBody>, Reject> {
    let body = &call.body;
    let model = model_of(body)?;
    let inputs: Vec<&str> = match body.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(bad_request("input: field required")),
    };
    let embeddings: Vec<Vec<f32>> = inputs
        .iter()
        .map(|t| (0..8).map(|i| ((t.len() + i) % 7) as f32 / 7.0).collect())
        .collect();
    let count: u64 = inputs.iter().map(|t| words(t)).sum();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "model": model,
            "embeddings": embeddings,
            "total_duration": 1_000_000u64,
            "load_duration": 1_000u64,
            "prompt_eval_count": count,
        }),
    ))
}
