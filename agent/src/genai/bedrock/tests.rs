//! Bedrock exchanges end to end: detection, Converse, ConverseStream,
//! InvokeModel and InvokeModelWithResponseStream, in the wire formats the
//! AWS API reference documents.

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue as HttpValue, Method};

use super::super::eventstream::{encode, HeaderValue};
use super::super::{Api, Exchange, Limits, Provider, Target};
use crate::record::{AttrValue, Record};
use crate::semconv as sc;

const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";
const HAIKU: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
const HAIKU_PATH: &str = "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HttpValue::from_str(v).unwrap(),
        );
    }
    h
}

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];
const STREAM: &[(&str, &str)] = &[("content-type", "application/vnd.amazon.eventstream")];

/// One exchange: the request, then the response in `chunks`.
fn run(
    path: &str,
    req: &str,
    status: u16,
    resp_headers: &[(&str, &str)],
    chunks: &[&[u8]],
) -> Record {
    run_with(path, req, status, resp_headers, chunks, Limits::default())
}

fn run_with(
    path: &str,
    req: &str,
    status: u16,
    resp_headers: &[(&str, &str)],
    chunks: &[&[u8]],
    limits: Limits,
) -> Record {
    let mut ex = Exchange::new(Target::detect(HOST, path), limits);
    let len = req.len().to_string();
    ex.on_request(
        &Method::POST,
        path,
        &headers(&[
            ("content-type", "application/json"),
            ("content-length", &len),
        ]),
        req.as_bytes(),
    );
    assert!(!ex.wants_usage_rewrite());
    assert_eq!(ex.rewrite_request_body(req.as_bytes()), None);
    ex.on_response_head(status, &headers(resp_headers));
    assert!(ex.usage_filter().is_none());
    for c in chunks {
        ex.on_response_chunk(c);
    }
    let mut r = Record::default();
    ex.finish(&mut r);
    r
}

fn reasons(r: &Record) -> Option<Vec<String>> {
    match r.get(sc::GEN_AI_RESPONSE_FINISH_REASONS)? {
        AttrValue::StrArray(v) => Some(v.clone()),
        other => panic!("finish reasons: {other:?}"),
    }
}

fn event(name: &str, payload: &str) -> Vec<u8> {
    encode(
        &[
            (":event-type", HeaderValue::String(name)),
            (":content-type", HeaderValue::String("application/json")),
            (":message-type", HeaderValue::String("event")),
        ],
        payload.as_bytes(),
    )
}

fn exception(kind: &str, message: &str) -> Vec<u8> {
    encode(
        &[
            (":exception-type", HeaderValue::String(kind)),
            (":content-type", HeaderValue::String("application/json")),
            (":message-type", HeaderValue::String("exception")),
        ],
        format!(r#"{{"message":"{message}"}}"#).as_bytes(),
    )
}

/// A ConverseStream answer as Bedrock sends it (the `p` padding included).
fn converse_stream() -> Vec<u8> {
    [
        event("messageStart", r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW","role":"assistant"}"#),
        event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abcdefgh"}"#),
        event("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":" there"},"p":"abcdefghijk"}"#),
        event("contentBlockStop", r#"{"contentBlockIndex":0,"p":"abcd"}"#),
        event("messageStop", r#"{"p":"abcdefghijklmnopq","stopReason":"max_tokens"}"#),
        event(
            "metadata",
            r#"{"metrics":{"latencyMs":412},"p":"abc","usage":{"cacheReadInputTokens":5,"cacheWriteInputTokens":2,"inputTokens":11,"outputTokens":2,"totalTokens":20}}"#,
        ),
    ]
    .concat()
}

fn chunk(event: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(event);
    encode(
        &[
            (":event-type", HeaderValue::String("chunk")),
            (":content-type", HeaderValue::String("application/json")),
            (":message-type", HeaderValue::String("event")),
        ],
        format!(r#"{{"bytes":"{b64}","p":"abcdefgh"}}"#).as_bytes(),
    )
}

/// An Anthropic-on-Bedrock InvokeModelWithResponseStream answer.
fn invoke_stream() -> Vec<u8> {
    [
        chunk(r#"{"type":"message_start","message":{"id":"msg_bdrk_01A","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,"cache_creation_input_tokens":0,"cache_read_input_tokens":4,"output_tokens":1}}}"#),
        chunk(r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
        chunk(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#),
        chunk(r#"{"type":"content_block_stop","index":0}"#),
        chunk(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}"#),
        chunk(r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":9,"outputTokenCount":3,"invocationLatency":512,"firstByteLatency":201}}"#),
    ]
    .concat()
}

const CONVERSE_REQ: &str = r#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":2}}"#;
const ANTHROPIC_REQ: &str = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}"#;

#[test]
fn detection_and_model_from_path() {
    let bedrock = |host: &str, path: &str| Target::detect(host, path).map(|t| (t.format, t.name));
    for host in [
        HOST,
        "bedrock-runtime.eu-central-1.amazonaws.com:443",
        "BEDROCK-RUNTIME-FIPS.us-gov-west-1.amazonaws.com.",
        "bedrock-runtime.cn-north-1.amazonaws.com.cn",
    ] {
        assert_eq!(
            bedrock(host, "/model/m/converse"),
            Some((Provider::Bedrock, Some("aws.bedrock".into()))),
            "{host}"
        );
    }
    for host in [
        "bedrock.us-east-1.amazonaws.com",
        "bedrock-runtime.amazonaws.com",
        "bedrock-runtime.us-east-1.amazonaws.com.evil.example",
        "xbedrock-runtime.us-east-1.amazonaws.com",
    ] {
        assert_eq!(bedrock(host, "/model/m/converse"), None, "{host}");
    }
    assert_eq!(bedrock(HOST, "/foundation-models"), None);
    assert_eq!(
        Api::classify(Provider::Bedrock, "/model//converse"),
        Api::Other
    );
    // An unknown host with a Bedrock path is not taken for Bedrock (its
    // body names no model): only a route or a known host says so.
    let mut ex = Exchange::new(None, Limits::default());
    ex.on_request(
        &Method::POST,
        "/model/m/converse",
        &headers(JSON),
        CONVERSE_REQ.as_bytes(),
    );
    assert_eq!(ex.provider(), None);
    for (path, api) in [
        ("/model/m/converse", Api::BedrockConverse),
        ("/model/m/converse-stream", Api::BedrockConverseStream),
        ("/model/m/invoke", Api::BedrockInvoke),
        (
            "/model/m/invoke-with-response-stream?x=1",
            Api::BedrockInvokeStream,
        ),
        ("/gw/model/m/invoke/", Api::BedrockInvoke),
        ("/model/m/count-tokens", Api::Other),
    ] {
        assert_eq!(Api::classify(Provider::Bedrock, path), api, "{path}");
    }
    for (path, model) in [
        (format!("{HAIKU_PATH}/converse"), HAIKU),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke".into(),
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0",
        ),
        // The Anthropic SDK leaves `:` unencoded.
        ("/model/us.anthropic.claude-3-5-haiku-20241022-v1:0/invoke".into(), "us.anthropic.claude-3-5-haiku-20241022-v1:0"),
        // A stray `%` stays as sent.
        ("/model/a%2/converse".into(), "a%2"),
    ] {
        assert_eq!(super::model_from_path(&path).as_deref(), Some(model), "{path}");
    }
    assert_eq!(Provider::from_name("bedrock"), Some(Provider::Bedrock));
    assert_eq!(Provider::Bedrock.semconv_name(), Some("aws.bedrock"));
    // A route's `provider: bedrock` (or `aws.bedrock`) on any host.
    for name in ["bedrock", "aws.bedrock", "AWS-Bedrock"] {
        let route = crate::providers::RouteProvider::parse(name, None).unwrap();
        let t = route.target("10.0.0.7:8443", "/model/m/invoke").unwrap();
        assert_eq!(
            (t.format, t.name.as_deref()),
            (Provider::Bedrock, Some("aws.bedrock"))
        );
    }
}

#[test]
fn sigv4_signed_headers_are_found() {
    let h = headers(&[(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;Traceparent;x-amz-date, Signature=abc",
    )]);
    assert!(super::sigv4_signs(&h, "traceparent"));
    assert!(super::sigv4_signs(&h, "host"));
    assert!(!super::sigv4_signs(&h, "tracestate"));
    let bearer = headers(&[("authorization", "Bearer SignedHeaders=traceparent")]);
    assert!(!super::sigv4_signs(&bearer, "traceparent"));
    assert!(!super::sigv4_signs(&HeaderMap::new(), "traceparent"));
}

#[test]
fn converse_json() {
    let body = r#"{"metrics":{"latencyMs":301},"output":{"message":{"content":[{"text":"Hi"}],"role":"assistant"}},"stopReason":"end_turn","usage":{"cacheReadInputTokens":7,"cacheWriteInputTokens":3,"inputTokens":12,"outputTokens":4,"totalTokens":26}}"#;
    let r = run(
        &format!("{HAIKU_PATH}/converse"),
        CONVERSE_REQ,
        200,
        JSON,
        &[body.as_bytes()],
    );
    assert_eq!(r.get_str(sc::GEN_AI_PROVIDER_NAME), Some("aws.bedrock"));
    assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"));
    assert_eq!(r.get_str(sc::GEN_AI_REQUEST_MODEL), Some(HAIKU));
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(false));
    assert_eq!(reasons(&r), Some(vec!["end_turn".to_owned()]));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(22));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(4));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS), Some(7));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        Some(3)
    );
    assert_eq!(r.get(sc::GEN_AI_RESPONSE_MODEL), None);
    assert_eq!(r.get(sc::GEN_AI_RESPONSE_ID), None);
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    assert_eq!(r.get_bool(sc::BODY_USAGE_VISIBLE), Some(true));
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(2));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS),
        Some(3)
    );
    // Without cache fields: input is inputTokens.
    let body = r#"{"output":{"message":{"content":[],"role":"assistant"}},"stopReason":"tool_use","usage":{"inputTokens":12,"outputTokens":4,"totalTokens":16}}"#;
    let r = run(
        &format!("{HAIKU_PATH}/converse"),
        CONVERSE_REQ,
        200,
        JSON,
        &[body.as_bytes()],
    );
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(12));
    assert_eq!(r.get(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS), None);
    assert_eq!(reasons(&r), Some(vec!["tool_use".to_owned()]));
    // Cut short: truncated.
    let r = run(
        &format!("{HAIKU_PATH}/converse"),
        CONVERSE_REQ,
        200,
        JSON,
        &[&body.as_bytes()[..40]],
    );
    assert_eq!(r.get_str(sc::PARSE_ERROR), Some("truncated"));
}

#[test]
fn converse_stream_at_every_split() {
    let stream = converse_stream();
    let path = format!("{HAIKU_PATH}/converse-stream");
    let check = |r: &Record, at: &str| {
        assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"), "{at}");
        assert_eq!(r.get_str(sc::GEN_AI_REQUEST_MODEL), Some(HAIKU), "{at}");
        assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true), "{at}");
        assert_eq!(reasons(r), Some(vec!["max_tokens".to_owned()]), "{at}");
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(18), "{at}");
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(2), "{at}");
        assert_eq!(
            r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
            Some(5),
            "{at}"
        );
        assert_eq!(
            r.get_i64(sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
            Some(2),
            "{at}"
        );
        assert_eq!(r.get(sc::PARSE_ERROR), None, "{at}");
        assert_eq!(r.get(sc::ERROR_TYPE), None, "{at}");
    };
    for i in 0..=stream.len() {
        let (a, b) = stream.split_at(i);
        check(
            &run(&path, CONVERSE_REQ, 200, STREAM, &[a, b]),
            &format!("split {i}"),
        );
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    check(&run(&path, CONVERSE_REQ, 200, STREAM, &bytes), "bytewise");
    // Every cut before the metadata event is truncated.
    let last = event(
        "metadata",
        r#"{"metrics":{"latencyMs":412},"p":"abc","usage":{"cacheReadInputTokens":5,"cacheWriteInputTokens":2,"inputTokens":11,"outputTokens":2,"totalTokens":20}}"#,
    );
    for i in 0..stream.len() {
        let r = run(&path, CONVERSE_REQ, 200, STREAM, &[&stream[..i]]);
        assert_eq!(r.get_str(sc::PARSE_ERROR), Some("truncated"), "cut at {i}");
        if i < stream.len() - last.len() {
            assert_eq!(r.get(sc::GEN_AI_USAGE_INPUT_TOKENS), None, "cut at {i}");
        }
    }
}

#[test]
fn stream_exceptions_and_framing_errors() {
    let path = format!("{HAIKU_PATH}/converse-stream");
    let stream = [
        event("messageStart", r#"{"role":"assistant"}"#),
        exception(
            "throttlingException",
            "Too many requests, please wait before trying again.",
        ),
    ]
    .concat();
    let r = run(&path, CONVERSE_REQ, 200, STREAM, &[&stream]);
    assert_eq!(r.get_str(sc::ERROR_TYPE), Some("throttlingException"));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    // A generic `error` message.
    let err = encode(
        &[
            (":message-type", HeaderValue::String("error")),
            (":error-code", HeaderValue::String("InternalFailure")),
            (":error-message", HeaderValue::String("boom")),
        ],
        b"",
    );
    let r = run(&path, CONVERSE_REQ, 200, STREAM, &[&err]);
    assert_eq!(r.get_str(sc::ERROR_TYPE), Some("InternalFailure"));
    // A message CRC mismatch: that event is lost, the rest parses.
    let mut bad = converse_stream();
    let first = event(
        "messageStart",
        r#"{"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW","role":"assistant"}"#,
    );
    assert!(bad.starts_with(&first));
    bad[first.len() - 8] ^= 0x01;
    let r = run(&path, CONVERSE_REQ, 200, STREAM, &[&bad]);
    assert_eq!(
        r.get_str(sc::PARSE_ERROR),
        Some("eventstream_invalid_frame")
    );
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(2));
    // An oversized frame is skipped: the usage after it is still read.
    let big = event(
        "contentBlockDelta",
        &format!(r#"{{"delta":{{"text":"{}"}}}}"#, "x".repeat(4096)),
    );
    let stream = [big, converse_stream()].concat();
    let limits = Limits {
        max_event_bytes: 1024,
        ..Limits::default()
    };
    for split in [7, 1000, stream.len()] {
        let chunks: Vec<&[u8]> = stream.chunks(split).collect();
        let r = run_with(&path, CONVERSE_REQ, 200, STREAM, &chunks, limits);
        assert_eq!(
            r.get_str(sc::PARSE_ERROR),
            Some("eventstream_frame_too_large"),
            "{split}"
        );
        assert_eq!(
            r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS),
            Some(18),
            "{split}"
        );
    }
    // Garbage in place of a prelude: the framing is lost.
    let r = run(
        &path,
        CONVERSE_REQ,
        200,
        STREAM,
        &[b"data: {}\n\n not an event stream"],
    );
    assert_eq!(
        r.get_str(sc::PARSE_ERROR),
        Some("eventstream_invalid_frame")
    );
}

#[test]
fn error_answers() {
    let r = run(
        &format!("{HAIKU_PATH}/converse"),
        CONVERSE_REQ,
        400,
        &[
            ("content-type", "application/json"),
            (
                "x-amzn-errortype",
                "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
        ],
        &[br#"{"message":"Malformed input request, please reformat your input and try again."}"#],
    );
    assert_eq!(r.get_str(sc::ERROR_TYPE), Some("ValidationException"));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    assert_eq!(r.get(sc::GEN_AI_USAGE_INPUT_TOKENS), None);
    assert_eq!(r.get_str(sc::GEN_AI_REQUEST_MODEL), Some(HAIKU));
}

#[test]
fn invoke_anthropic_json() {
    let body = r#"{"id":"msg_bdrk_01XyZ","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":9,"cache_creation_input_tokens":2,"cache_read_input_tokens":0,"output_tokens":3}}"#;
    let hdrs = [
        ("content-type", "application/json"),
        ("x-amzn-bedrock-input-token-count", "9"),
        ("x-amzn-bedrock-output-token-count", "3"),
    ];
    let r = run(
        &format!("{HAIKU_PATH}/invoke"),
        ANTHROPIC_REQ,
        200,
        &hdrs,
        &[body.as_bytes()],
    );
    assert_eq!(r.get_str(sc::GEN_AI_PROVIDER_NAME), Some("aws.bedrock"));
    assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"));
    assert_eq!(r.get_str(sc::GEN_AI_REQUEST_MODEL), Some(HAIKU));
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(false));
    assert_eq!(
        r.get_str(sc::GEN_AI_RESPONSE_MODEL),
        Some("claude-3-5-haiku-20241022")
    );
    assert_eq!(r.get_str(sc::GEN_AI_RESPONSE_ID), Some("msg_bdrk_01XyZ"));
    assert_eq!(reasons(&r), Some(vec!["end_turn".to_owned()]));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(11));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(3));
    assert_eq!(
        r.get_i64(sc::GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        Some(2)
    );
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    assert_eq!(r.get_i64(sc::GEN_AI_REQUEST_MAX_TOKENS), Some(64));
}

#[test]
fn invoke_stream_anthropic_at_every_split() {
    let stream = invoke_stream();
    let path = format!("{HAIKU_PATH}/invoke-with-response-stream");
    let check = |r: &Record, at: &str| {
        assert_eq!(r.get_str(sc::GEN_AI_OPERATION_NAME), Some("chat"), "{at}");
        assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true), "{at}");
        assert_eq!(
            r.get_str(sc::GEN_AI_RESPONSE_ID),
            Some("msg_bdrk_01A"),
            "{at}"
        );
        assert_eq!(reasons(r), Some(vec!["end_turn".to_owned()]), "{at}");
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(13), "{at}");
        assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(3), "{at}");
        assert_eq!(
            r.get_i64(sc::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
            Some(4),
            "{at}"
        );
        assert_eq!(r.get(sc::PARSE_ERROR), None, "{at}");
    };
    for i in (0..=stream.len()).step_by(3) {
        let (a, b) = stream.split_at(i);
        check(
            &run(&path, ANTHROPIC_REQ, 200, STREAM, &[a, b]),
            &format!("split {i}"),
        );
    }
    // Without the request body (streamed over budget), the chunks' `type`
    // still tells an Anthropic stream.
    check(&run(&path, "", 200, STREAM, &[&stream]), "no request body");
    // Cut before the end: truncated.
    let r = run(
        &path,
        ANTHROPIC_REQ,
        200,
        STREAM,
        &[&stream[..stream.len() - 10]],
    );
    assert_eq!(r.get_str(sc::PARSE_ERROR), Some("truncated"));
    // A model error mid-stream.
    let s = [chunk(r#"{"type":"message_start","message":{"id":"m","model":"x","usage":{"input_tokens":1}}}"#), exception("modelStreamErrorException", "boom")].concat();
    let r = run(&path, ANTHROPIC_REQ, 200, STREAM, &[&s]);
    assert_eq!(r.get_str(sc::ERROR_TYPE), Some("modelStreamErrorException"));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    // A chunk that is not base64.
    let bad = encode(
        &[
            (":event-type", HeaderValue::String("chunk")),
            (":message-type", HeaderValue::String("event")),
        ],
        br#"{"bytes":"not base64!"}"#,
    );
    let r = run(&path, ANTHROPIC_REQ, 200, STREAM, &[&bad]);
    assert_eq!(
        r.get_str(sc::PARSE_ERROR),
        Some("eventstream_invalid_frame")
    );
}

#[test]
fn invoke_other_vendors_reads_what_bedrock_counts() {
    // Meta Llama: a body shape egret does not parse; usage from headers.
    let req = r#"{"prompt":"Hello","max_gen_len":64}"#;
    let body = r#"{"generation":"Hi","prompt_token_count":5,"generation_token_count":2,"stop_reason":"stop"}"#;
    let hdrs = [
        ("content-type", "application/json"),
        ("x-amzn-bedrock-input-token-count", "5"),
        ("x-amzn-bedrock-output-token-count", "2"),
    ];
    let path = "/model/meta.llama3-8b-instruct-v1%3A0/invoke";
    let r = run(path, req, 200, &hdrs, &[body.as_bytes()]);
    assert_eq!(r.get_str(sc::GEN_AI_PROVIDER_NAME), Some("aws.bedrock"));
    assert_eq!(
        r.get_str(sc::GEN_AI_REQUEST_MODEL),
        Some("meta.llama3-8b-instruct-v1:0")
    );
    assert_eq!(r.get(sc::GEN_AI_OPERATION_NAME), None);
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(5));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(2));
    assert_eq!(r.get(sc::GEN_AI_RESPONSE_FINISH_REASONS), None);
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    // Streamed: the final chunk's invocation metrics.
    let stream = [
        chunk(r#"{"generation":"Hi","prompt_token_count":5,"generation_token_count":1,"stop_reason":null}"#),
        chunk(r#"{"generation":"","prompt_token_count":null,"generation_token_count":2,"stop_reason":"stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":5,"outputTokenCount":2,"invocationLatency":90,"firstByteLatency":40}}"#),
    ]
    .concat();
    let path = "/model/meta.llama3-8b-instruct-v1%3A0/invoke-with-response-stream";
    let r = run(path, req, 200, STREAM, &[&stream]);
    assert_eq!(r.get_bool(sc::GEN_AI_REQUEST_STREAM), Some(true));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_INPUT_TOKENS), Some(5));
    assert_eq!(r.get_i64(sc::GEN_AI_USAGE_OUTPUT_TOKENS), Some(2));
    assert_eq!(r.get(sc::PARSE_ERROR), None);
    // Without the final metrics chunk: truncated.
    let first = chunk(r#"{"generation":"Hi"}"#);
    let r = run(path, req, 200, STREAM, &[&first]);
    assert_eq!(r.get_str(sc::PARSE_ERROR), Some("truncated"));
}
