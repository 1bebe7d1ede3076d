//! AWS Bedrock Runtime (`bedrock-runtime.us-east-1.amazonaws.com`):
//! Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream
//! (Anthropic models), every request SigV4-verified.
//!
//! * Authentication: `Authorization: AWS4-HMAC-SHA256 Credential=…,
//!   SignedHeaders=…, Signature=…` is recomputed over the request exactly
//!   as received (method, path, query, the signed headers, the body's
//!   SHA-256) with the fixed test credentials [`ACCESS_KEY`] /
//!   [`SECRET_KEY`], region `us-east-1`, service `bedrock`. A mismatch is
//!   answered `403` `InvalidSignatureException` as AWS does; an unknown key
//!   `403` `UnrecognizedClientException`; no signature `403`
//!   `MissingAuthenticationTokenException`. A proxy that changed one byte
//!   of the body or of a signed header fails here.
//! * Converse token rule: input = words of `system[].text` and
//!   `messages[].content[].text`; when `system` holds a `cachePoint`
//!   block, the words of the system text before it are reported as
//!   `cacheReadInputTokens` (request header `x-mock-cache: create`:
//!   `cacheWriteInputTokens`) instead of `inputTokens`, and
//!   `totalTokens` counts them. Output = the common rule with
//!   `inferenceConfig.maxTokens` as the limit; `stopReason` `max_tokens`
//!   when cut, else `end_turn`.
//! * ConverseStream: one event-stream message per event (`messageStart`,
//!   one `contentBlockDelta` per word, `contentBlockStop`, `messageStop`,
//!   `metadata`), headers `:event-type`, `:content-type`,
//!   `:message-type`, payloads padded with `p` as Bedrock pads them.
//! * InvokeModel for Anthropic models: the Messages body without `model`
//!   and with a non-empty `anthropic_version`; answered with the Anthropic message
//!   (model = the model id), and `X-Amzn-Bedrock-Input-Token-Count` /
//!   `-Output-Token-Count` / `-Invocation-Latency` headers.
//!   InvokeModelWithResponseStream: each Anthropic stream event (but
//!   `ping`) base64-wrapped in a `chunk` event; the `message_stop` one
//!   also carries `amazon-bedrock-invocationMetrics`.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::anthropic;
use crate::routing::Call;
use crate::shared::{header_u64, json_response, State};
use crate::sse::stream_response;
use crate::tokens::{output_tokens, reply_deltas, reply_text, text_words};
use crate::{RespBody, MAX_REQUEST_BODY};

/// The test credentials (AWS's documentation example key pair).
pub(crate) const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub(crate) const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const REGION: &str = "us-east-1";
const SERVICE: &str = "bedrock";
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
/// Reported `latencyMs` / `invocationLatency` (deterministic).
const LATENCY_MS: u64 = 42;

/// A failed call: status, AWS error type, message.
type AwsError = (StatusCode, &'static str, String);

fn aws_error(state: &State, (status, kind, message): AwsError) -> Response<RespBody> {
    let mut resp = json_response(status, &json!({ "message": message }));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        h.insert("x-amzn-errortype", v);
    }
    request_id(state, h);
    resp
}

fn request_id(state: &State, h: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(&state.id("")) {
        h.insert("x-amzn-requestid", v);
    }
}

fn validation(msg: impl Into<String>) -> AwsError {
    (StatusCode::BAD_REQUEST, "ValidationException", msg.into())
}

/// `POST /model/{model}/{op}` (`model` as it appears in the path).
pub(crate) async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
    model: &str,
    op: &str,
) -> Response<RespBody> {
    let model = percent_decode(model);
    let op = op.to_owned();
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return aws_error(state, validation(format!("reading request body: {e}"))),
    };
    if parts.method != Method::POST {
        let e = (
            StatusCode::METHOD_NOT_ALLOWED,
            "UnknownOperationException",
            String::new(),
        );
        return aws_error(state, e);
    }
    if let Err(e) = verify_sigv4(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        parts.uri.authority().map(|a| a.as_str()),
        &parts.headers,
        &bytes,
    ) {
        return aws_error(state, e);
    }
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return aws_error(
                state,
                validation("Malformed input request: body is not a JSON object"),
            )
        }
    };
    let delay = header_u64(&parts.headers, "x-mock-delay-ms")
        .map(std::time::Duration::from_millis)
        .unwrap_or(state.stream_delay);
    let call = Call {
        headers: parts.headers,
        query: parts.uri.query().map(str::to_owned),
        body,
        delay,
    };
    let result = match op.as_str() {
        "converse" => converse(&call, false),
        "converse-stream" => converse(&call, true),
        "invoke" => invoke(state, &call, &model, false),
        "invoke-with-response-stream" => invoke(state, &call, &model, true),
        _ => Err((
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!("mock-provider: no Bedrock operation {op}"),
        )),
    };
    match result {
        Ok(mut resp) => {
            request_id(state, resp.headers_mut());
            resp
        }
        Err(e) => aws_error(state, e),
    }
}

// ------------------------------------------------------------------ SigV4

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding of everything but the unreserved characters (and `/`
/// when `keep_slash`), upper-case hex: SigV4's `UriEncode`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the request's SigV4 signature (see the module docs). `path` and
/// `query` as received (still percent-encoded): for services other than
/// S3 the canonical URI encodes the path once more.
pub(crate) fn verify_sigv4(
    method: &str,
    path: &str,
    query: Option<&str>,
    authority: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), AwsError> {
    let denied = |kind: &'static str, msg: &str| (StatusCode::FORBIDDEN, kind, msg.to_owned());
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            denied(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        })?;
    let fields = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| denied("IncompleteSignatureException", "unsupported algorithm"))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for f in fields.split(',') {
        match f.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(denied(
            "IncompleteSignatureException",
            "Authorization header requires Credential, SignedHeaders and Signature",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(denied(
            "IncompleteSignatureException",
            "malformed Credential",
        ));
    };
    if *key != ACCESS_KEY {
        return Err(denied(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if *region != REGION || *service != SERVICE {
        return Err(denied(
            "InvalidSignatureException",
            "Credential should be scoped to a valid region and service",
        ));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.starts_with(*date))
        .ok_or_else(|| {
            denied(
                "IncompleteSignatureException",
                "missing or mismatched X-Amz-Date",
            )
        })?;
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") {
        return Err(denied("InvalidSignatureException", "host must be signed"));
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = if *name == "host" && headers.get("host").is_none() {
            // HTTP/2: the host is the `:authority`.
            authority.map(|a| vec![a.to_owned()]).unwrap_or_default()
        } else {
            headers
                .get_all(*name)
                .iter()
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let body_hash = sha256_hex(body);
    let payload = match headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some("UNSIGNED-PAYLOAD") => "UNSIGNED-PAYLOAD".to_owned(),
        Some(h) if !h.eq_ignore_ascii_case(&body_hash) => {
            return Err(denied(
                "InvalidSignatureException",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ))
        }
        _ => body_hash,
    };
    let mut query_pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    query_pairs.sort();
    let canonical_query = query_pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_uri = uri_encode(if path.is_empty() { "/" } else { path }, true);
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed}\n{payload}"
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut k = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), date.as_bytes());
    for part in [*region, *service, "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    let expected = hex(&hmac(&k, string_to_sign.as_bytes()));
    if expected != signature {
        return Err(denied(
            "InvalidSignatureException",
            &format!(
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service \
                 documentation for details.\n\nThe Canonical String for this request should have \
                 been\n'{canonical_request}'\n"
            ),
        ));
    }
    Ok(())
}

// ------------------------------------------------------- event-stream framing

/// One event-stream message with string headers (type 7).
fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 16 + h.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

/// An `event` message; `payload` gets Bedrock's `p` padding.
fn event(name: &str, mut payload: Value, n: usize) -> Bytes {
    const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0";
    if let Value::Object(m) = &mut payload {
        m.insert("p".into(), Value::from(&PAD[..(n * 7) % PAD.len() + 1]));
    }
    frame(
        &[
            (":event-type", name),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

// --------------------------------------------------------------- Converse

/// (uncached input words, cached words) of a Converse request.
fn converse_input(body: &Value) -> (u64, u64) {
    let mut plain = 0;
    let mut cached = 0;
    if let Some(Value::Array(system)) = body.get("system") {
        let cut = system.iter().position(|b| b.get("cachePoint").is_some());
        for (i, block) in system.iter().enumerate() {
            let w = block.get("text").map(text_words).unwrap_or(0);
            if cut.is_some_and(|c| i < c) {
                cached += w;
            } else {
                plain += w;
            }
        }
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            if let Some(Value::Array(blocks)) = m.get("content") {
                plain += blocks
                    .iter()
                    .filter_map(|b| b.get("text"))
                    .map(text_words)
                    .sum::<u64>();
            }
        }
    }
    (plain, cached)
}

fn converse(call: &Call, stream: bool) -> Result<Response<RespBody>, AwsError> {
    let body = &call.body;
    if body.get("model").is_some() || body.get("modelId").is_some() {
        return Err(validation("The model is given by the path"));
    }
    match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {}
        _ => return Err(validation("A conversation must start with a user message.")),
    }
    let limit = body
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64);
    let (input, cached) = converse_input(body);
    let caching = body
        .get("system")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|b| b.get("cachePoint").is_some()));
    let create = call
        .headers
        .get("x-mock-cache")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"create"));
    let (output, cut) = output_tokens(call, limit);
    let stop_reason = if cut { "max_tokens" } else { "end_turn" };
    let mut usage = json!({
        "inputTokens": input,
        "outputTokens": output,
        "totalTokens": input + output + cached,
    });
    if caching {
        usage["cacheReadInputTokens"] = json!(if create { 0 } else { cached });
        usage["cacheWriteInputTokens"] = json!(if create { cached } else { 0 });
    }
    let metrics = json!({ "latencyMs": LATENCY_MS });
    if !stream {
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "output": {"message": {"role": "assistant", "content": [{"text": reply_text(output)}]}},
                "stopReason": stop_reason,
                "usage": usage,
                "metrics": metrics,
            }),
        ));
    }
    let mut frames = vec![event("messageStart", json!({"role": "assistant"}), 0)];
    for (i, d) in reply_deltas(output).into_iter().enumerate() {
        frames.push(event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": d}}),
            i + 1,
        ));
    }
    frames.push(event(
        "contentBlockStop",
        json!({"contentBlockIndex": 0}),
        2,
    ));
    frames.push(event("messageStop", json!({"stopReason": stop_reason}), 3));
    frames.push(event(
        "metadata",
        json!({"usage": usage, "metrics": metrics}),
        4,
    ));
    Ok(stream_response(EVENT_STREAM, frames, call.delay))
}

// ----------------------------------------------------------------- Invoke

fn invoke(
    state: &State,
    call: &Call,
    model: &str,
    stream: bool,
) -> Result<Response<RespBody>, AwsError> {
    let body = &call.body;
    if !model.contains("anthropic.") {
        return Err(validation(format!(
            "mock-provider: InvokeModel speaks only Anthropic models, not {model}"
        )));
    }
    // Bedrock documents `bedrock-2023-05-31`; newer Anthropic SDKs send
    // their own API version: any non-empty string is taken.
    if body
        .get("anthropic_version")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(validation(
            "Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again.",
        ));
    }
    for key in ["model", "stream"] {
        if body.get(key).is_some() {
            return Err(validation(format!(
                "Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your input and try again."
            )));
        }
    }
    let reply = anthropic::reply(state, call, model).map_err(|(_, m)| validation(m))?;
    if !stream {
        let mut resp = json_response(StatusCode::OK, &reply.message);
        let h = resp.headers_mut();
        for (name, v) in [
            ("x-amzn-bedrock-input-token-count", reply.input),
            ("x-amzn-bedrock-output-token-count", reply.output),
            ("x-amzn-bedrock-invocation-latency", LATENCY_MS),
        ] {
            h.insert(name, HeaderValue::from(v));
        }
        return Ok(resp);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut frames = Vec::new();
    for (i, mut ev) in reply.events.into_iter().enumerate() {
        match ev["type"].as_str() {
            Some("ping") => continue,
            Some("message_stop") => {
                ev["amazon-bedrock-invocationMetrics"] = json!({
                    "inputTokenCount": reply.input,
                    "outputTokenCount": reply.output,
                    "invocationLatency": LATENCY_MS,
                    "firstByteLatency": LATENCY_MS / 2,
                });
            }
            _ => {}
        }
        frames.push(event(
            "chunk",
            json!({"bytes": b64.encode(ev.to_string())}),
            i,
        ));
    }
    let mut resp = stream_response(EVENT_STREAM, frames, call.delay);
    resp.headers_mut().insert(
        "x-amzn-bedrock-content-type",
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `get-vanilla` case of AWS's SigV4 test suite, with its
    /// documented signature, re-scoped to this mock's key: the algorithm
    /// (canonical request, string to sign, key derivation) is checked
    /// against the published vector first.
    #[test]
    fn sigv4_matches_the_published_vector() {
        let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sts = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let mut k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20150830");
        for part in ["us-east-1", "service", "aws4_request"] {
            k = hmac(&k, part.as_bytes());
        }
        assert_eq!(
            hex(&hmac(&k, sts.as_bytes())),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    fn signed(path: &str, body: &[u8]) -> HeaderMap {
        // Sign the way botocore does, with this module's own pieces.
        let date = "20260101T000000Z";
        let mut h = HeaderMap::new();
        h.insert(
            "host",
            HeaderValue::from_static("bedrock-runtime.us-east-1.amazonaws.com"),
        );
        h.insert("x-amz-date", HeaderValue::from_static(date));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let canonical = format!(
            "POST\n{}\n\ncontent-type:application/json\nhost:bedrock-runtime.us-east-1.amazonaws.com\nx-amz-date:{date}\n\ncontent-type;host;x-amz-date\n{}",
            uri_encode(path, true),
            sha256_hex(body)
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n{date}\n20260101/us-east-1/bedrock/aws4_request\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let mut k = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), b"20260101");
        for part in ["us-east-1", "bedrock", "aws4_request"] {
            k = hmac(&k, part.as_bytes());
        }
        let sig = hex(&hmac(&k, sts.as_bytes()));
        let auth = format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={sig}");
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        h
    }

    #[test]
    fn any_changed_byte_fails_the_check() {
        let path = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let h = signed(path, body);
        assert_eq!(verify_sigv4("POST", path, None, None, &h, body), Ok(()));
        let mut other = body.to_vec();
        other[20] ^= 1;
        let e = verify_sigv4("POST", path, None, None, &h, &other).unwrap_err();
        assert_eq!(
            (e.0, e.1),
            (StatusCode::FORBIDDEN, "InvalidSignatureException")
        );
        let e = verify_sigv4("POST", "/model/x/converse", None, None, &h, body).unwrap_err();
        assert_eq!(e.1, "InvalidSignatureException");
        let mut h2 = h.clone();
        h2.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(
            verify_sigv4("POST", path, None, None, &h2, body)
                .unwrap_err()
                .1,
            "InvalidSignatureException"
        );
        // Unsigned headers may change (a proxy's traceparent).
        let mut h3 = h.clone();
        h3.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert_eq!(verify_sigv4("POST", path, None, None, &h3, body), Ok(()));
        let mut h4 = h;
        h4.remove("authorization");
        assert_eq!(
            verify_sigv4("POST", path, None, None, &h4, body)
                .unwrap_err()
                .1,
            "MissingAuthenticationTokenException"
        );
    }
}
