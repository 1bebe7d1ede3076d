//! Ollama's native API: `/api/chat`, `/api/generate`, `/api/embed` (and the
//! older `/api/embeddings`).
//!
//! Requests stream **by default** (`"stream": false` turns it off). A
//! stream is NDJSON (`Content-Type: application/x-ndjson`): one JSON object
//! per line, each with `model` and `done: false`, the last with
//! `done: true`, `done_reason` (`stop`, `length`, `load`, …),
//! `prompt_eval_count` (input tokens) and `eval_count` (output tokens).
//! A non-streaming answer is that last object alone. Embeddings answer
//! `{model, embeddings, prompt_eval_count}` (no `done`). Errors are
//! `{"error": "message"}` — as the body of a 4xx/5xx, or as a line of a
//! stream that already started. Ollama reports no response id and no
//! cached tokens; those stay unset.

use serde::Deserialize;

use super::de::BStr;
use super::{json_error, Findings};

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    model: Option<BStr<'a>>,
    done: Option<bool>,
    #[serde(borrow)]
    done_reason: Option<BStr<'a>>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    #[serde(borrow)]
    error: Option<BStr<'a>>,
    /// Only embeddings answers have it (they have no `done`).
    embeddings: Option<serde::de::IgnoredAny>,
}

/// One exchange's accumulator.
#[derive(Debug, Default)]
pub(super) struct State;

impl State {
    /// One NDJSON line of a stream.
    pub fn event(&mut self, line: &[u8], f: &mut Findings) {
        match serde_json::from_slice::<Line<'_>>(line) {
            Ok(l) => apply(l, f),
            Err(e) => f.flag(json_error(&e)),
        }
    }

    /// A whole (non-streaming) body.
    pub fn json(&mut self, body: &[u8], f: &mut Findings) {
        match serde_json::from_slice::<Line<'_>>(body) {
            Ok(l) => {
                let embed = l.embeddings.is_some();
                let error = l.error.is_some();
                apply(l, f);
                // A whole embeddings answer or error is complete as it is.
                if embed || error {
                    f.complete = true;
                }
            }
            Err(e) => f.flag(json_error(&e)),
        }
    }
}

fn apply(l: Line<'_>, f: &mut Findings) {
    if let Some(m) = &l.model {
        Findings::set_str(&mut f.response_model, m.as_str());
    }
    if l.error.is_some() {
        // Ollama's errors are bare messages: no code to report but that
        // there was one. The message itself stays in the captured body.
        Findings::set_str(&mut f.error_type, "error");
    }
    if let Some(n) = l.prompt_eval_count {
        f.input_tokens = Some(n);
    }
    if let Some(n) = l.eval_count {
        f.output_tokens = Some(n);
    }
    if l.done == Some(true) {
        if let Some(r) = &l.done_reason {
            f.set_reason(0, r.as_str());
        }
        f.complete = true;
    }
}
