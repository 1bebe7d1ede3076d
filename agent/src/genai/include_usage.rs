//! Getting usage out of OpenAI Chat Completions streams the client did not
//! ask usage for.
//!
//! A streaming Chat Completions response reports token usage only when the
//! request set `stream_options.include_usage`; the official SDKs do not set
//! it by default. The proxy may therefore
//!
//! 1. rewrite the request body with [`rewrite_request_for_usage`], adding
//!    `"stream_options":{"include_usage":true}` (only when the request
//!    streams and did not mention `include_usage` at all — an explicit
//!    `false` is respected), and
//! 2. put a [`UsageChunkFilter`] on the response path, which removes the one
//!    extra chunk this causes (`"choices": []` with `usage`) from what the
//!    client receives, so the client sees exactly the stream it asked for.
//!
//! The parsers still see the unfiltered upstream bytes (the proxy feeds
//! [`super::Exchange::on_response_chunk`] with what it received), so the
//! usage is recorded either way. The filter works on the raw
//! `text/event-stream` bytes and so only on identity-encoded responses; the
//! proxy should send rewritten requests with `Accept-Encoding: identity`.

use super::json_scan::{self, ScanEnd, Value};
use super::openai::is_usage_only_chunk;
use super::sse::SseParser;

/// What [`rewrite_request_for_usage`] inserts.
const INCLUDE_USAGE: &[u8] = br#""include_usage":true"#;

/// For a streaming Chat Completions (or legacy Completions) request body
/// without `stream_options.include_usage`, returns the body with
/// `stream_options: {"include_usage": true}` added; every other byte is
/// kept as it was (key order, spacing, number spelling). Returns `None`
/// when no rewrite applies: the body is not a valid JSON object, `stream`
/// is not `true`, `include_usage` is already present (whatever its value),
/// or `stream_options` is neither an object nor null.
pub fn rewrite_request_for_usage(body: &[u8]) -> Option<Vec<u8>> {
    // The lax scanner's spans are trusted only on a valid document.
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    let mut stream = false;
    let mut has_include_usage = false;
    let mut stream_options: Option<(Value<'_>, usize, usize)> = None;
    let end = json_scan::scan(body, |h| match (h.parent, h.key) {
        (None, b"stream") => stream = h.value == Value::Bool(true),
        (None, b"stream_options") => stream_options = Some((h.value, h.start, h.end)),
        (Some(b"stream_options"), b"include_usage") => has_include_usage = true,
        _ => {}
    });
    let ScanEnd::Complete { close: Some(close) } = end else {
        return None;
    };
    if !stream || has_include_usage {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + 48);
    match stream_options {
        None => {
            out.extend_from_slice(&body[..close]);
            out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
            out.extend_from_slice(&body[close..]);
        }
        Some((Value::Null, start, end)) => {
            out.extend_from_slice(&body[..start]);
            out.push(b'{');
            out.extend_from_slice(INCLUDE_USAGE);
            out.push(b'}');
            out.extend_from_slice(&body[end..]);
        }
        Some((Value::Object, start, end)) => {
            let inner = body.get(start + 1..end.saturating_sub(1))?;
            let empty = inner.iter().all(u8::is_ascii_whitespace);
            out.extend_from_slice(&body[..=start]);
            out.extend_from_slice(INCLUDE_USAGE);
            if !empty {
                out.push(b',');
            }
            out.extend_from_slice(&body[start + 1..]);
        }
        Some(_) => return None,
    }
    Some(out)
}

/// Removes the usage-only chunk from a Chat Completions SSE stream.
///
/// Feed every upstream chunk to [`Self::push`] and forward what it appends
/// to `out`; call [`Self::finish`] at the end of the body and forward that
/// too. Events are held back only until their terminating blank line (an
/// SSE client cannot act on a partial event anyway), and bounded: an event
/// larger than the limit is forwarded unfiltered as it arrives.
#[derive(Debug)]
pub struct UsageChunkFilter {
    parser: SseParser,
    max_event_bytes: usize,
    /// Bytes of the current block not yet forwarded.
    pending: Vec<u8>,
    /// The current block outgrew the bound: forward it as it comes.
    forwarding_block: bool,
    stripped: u32,
}

impl UsageChunkFilter {
    pub fn new(max_event_bytes: usize) -> Self {
        UsageChunkFilter {
            parser: SseParser::new(max_event_bytes),
            max_event_bytes,
            pending: Vec::new(),
            forwarding_block: false,
            stripped: 0,
        }
    }

    /// How many usage-only chunks were removed so far.
    pub fn stripped(&self) -> u32 {
        self.stripped
    }

    /// Filters one upstream chunk, appending the bytes to forward to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let UsageChunkFilter {
            parser,
            pending,
            forwarding_block,
            stripped,
            ..
        } = self;
        let mut from = 0;
        parser.feed(chunk, |block| {
            let drop = !*forwarding_block
                && *stripped == 0
                && block.event.is_some_and(|e| is_usage_only_chunk(e.data));
            if drop {
                *stripped += 1;
            } else {
                out.extend_from_slice(pending);
                out.extend_from_slice(&chunk[from..block.end]);
            }
            pending.clear();
            *forwarding_block = false;
            from = block.end;
        });
        let rest = &chunk[from..];
        if *forwarding_block {
            out.extend_from_slice(rest);
        } else if pending.len() + rest.len() > self.max_event_bytes {
            out.extend_from_slice(pending);
            out.extend_from_slice(rest);
            pending.clear();
            *forwarding_block = true;
        } else {
            pending.extend_from_slice(rest);
        }
    }

    /// Ends the stream: forwards whatever is still held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
        self.forwarding_block = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(body: &str) -> Option<String> {
        rewrite_request_for_usage(body.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn rewrite_adds_include_usage_and_keeps_the_rest() {
        let body = r#"{"messages":[{"role":"user","content":"hi }"}],"model":"gpt-4o-mini","stream":true,"temperature":0.70}"#;
        let out = rw(body).unwrap();
        assert_eq!(
            out,
            r#"{"messages":[{"role":"user","content":"hi }"}],"model":"gpt-4o-mini","stream":true,"temperature":0.70,"stream_options":{"include_usage":true}}"#
        );
        // Pretty-printed input stays valid JSON and keeps its layout.
        let pretty = "{\n  \"model\": \"gpt-4o\",\n  \"stream\": true\n}\n";
        let out = rw(pretty).unwrap();
        assert_eq!(json(&out)["stream_options"]["include_usage"], true);
        assert!(out.starts_with("{\n  \"model\": \"gpt-4o\",\n  \"stream\": true\n"));
    }

    #[test]
    fn rewrite_merges_into_existing_stream_options() {
        let out = rw(r#"{"model":"m","stream":true,"stream_options":{}}"#).unwrap();
        assert_eq!(
            out,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
        );
        let out = rw(r#"{"model":"m","stream":true,"stream_options": { "other": 1 }}"#).unwrap();
        assert_eq!(
            out,
            r#"{"model":"m","stream":true,"stream_options": {"include_usage":true, "other": 1 }}"#
        );
        let out = rw(r#"{"stream_options":null,"model":"m","stream":true}"#).unwrap();
        assert_eq!(
            out,
            r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        assert_eq!(json(&out)["stream_options"]["include_usage"], true);
    }

    #[test]
    fn rewrite_leaves_other_requests_alone() {
        for body in [
            r#"{"model":"m","stream":false}"#,
            r#"{"model":"m"}"#,
            r#"{"model":"m","stream":"true"}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"model":"m","stream":true,"stream_options":"x"}"#,
            r#"{"model":"m","stream":true"#,
            r#"[{"stream":true}]"#,
            "not json",
        ] {
            assert_eq!(rw(body), None, "{body}");
        }
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        ": keep-alive\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
        "data: [DONE]\n\n",
    );

    fn expected() -> String {
        let usage_start = STREAM.find("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],").unwrap();
        let usage_end = STREAM.find("data: [DONE]").unwrap();
        format!("{}{}", &STREAM[..usage_start], &STREAM[usage_end..])
    }

    fn run(chunks: &[&[u8]], max: usize) -> (String, u32) {
        let mut f = UsageChunkFilter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        f.finish(&mut out);
        (String::from_utf8(out).unwrap(), f.stripped())
    }

    #[test]
    fn filter_strips_the_usage_chunk_at_every_split() {
        let want = expected();
        let bytes = STREAM.as_bytes();
        assert_eq!(run(&[bytes], 1 << 20), (want.clone(), 1));
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            assert_eq!(run(&[a, b], 1 << 20), (want.clone(), 1), "split at {i}");
        }
        let ones: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&ones, 1 << 20), (want, 1));
    }

    #[test]
    fn filter_handles_crlf_and_forwards_everything_else() {
        let crlf = STREAM.replace("\n", "\r\n");
        let (out, n) = run(&[crlf.as_bytes()], 1 << 20);
        assert_eq!(n, 1);
        assert!(!out.contains("\"choices\":[]"));
        assert!(out.ends_with("data: [DONE]\r\n\r\n"));
        // A stream without a usage chunk passes through byte for byte.
        let plain = expected();
        assert_eq!(run(&[plain.as_bytes()], 1 << 20), (plain.clone(), 0));
        // Unterminated tail is forwarded at finish.
        let cut = &STREAM[..STREAM.len() - 3];
        let (out, _) = run(&[cut.as_bytes()], 1 << 20);
        assert!(out.ends_with("data: [DONE"), "{out}");
    }

    #[test]
    fn filter_is_bounded() {
        // With a tiny bound nothing is held back for long, and nothing is lost.
        let (out, n) = run(&[STREAM.as_bytes()], 64);
        assert_eq!(n, 0);
        assert_eq!(out, STREAM);
        let ones: Vec<&[u8]> = STREAM.as_bytes().chunks(5).collect();
        let (out, _) = run(&ones, 64);
        assert_eq!(out, STREAM);
    }
}
